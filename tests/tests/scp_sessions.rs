//! SCP02 and SCP03 session keys and cryptograms derived inside a real
//! SoftHSM2 token (`KeyService::scp02_session` / `scp03_session`), checked
//! against the known answers of shared/vectors/known-answers.json and, where
//! there are none (diversified key sets, VISA2, AES-192), against the
//! software references in `kms_e2e::reference`. Keys come in through
//! components, the transport KEK is a trusted KEK with a known value, and
//! every returned key is unwrapped in software.

use kms::audit::Outcome;
use kms::derivation::Kdd;
use kms::model::{Algorithm, KeyUsage};
use kms::service::{
    Scp02Diversification, Scp02Request, Scp02Session, Scp03Diversification, Scp03Request,
    Scp03Session, ServiceError, WrappedKey,
};
use kms::store::AuditFilter;
use kms_e2e::fixture::{actor, name, tenant, TestKms};
use kms_e2e::reference::{
    aes_kcv, aes_key_unwrap_pad, emv_cps11_diversify, kdf3_diversify, same_des_key,
    scp02_card_cryptogram, scp02_host_cryptogram, scp02_session_key, scp03_card_cryptogram,
    scp03_host_cryptogram, scp03_session_key, tdes_kcv, visa2_diversify, SdKeys, SCP02_C_MAC,
    SCP02_DEK, SCP02_R_MAC, SCP02_S_ENC, SCP03_S_ENC, SCP03_S_MAC, SCP03_S_RMAC,
};
use kms_e2e::vectors::{KnownAnswers, SdMethod};

const TENANT: &str = "issuer-a";

const TRANSPORT: [u8; 16] = [
    0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3A, 0x3B, 0x3C, 0x3D, 0x3E, 0x3F,
];

/// A card's answer to INITIALIZE UPDATE, apart from the cryptogram.
const HOST_CHALLENGE: [u8; 8] = [0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88];
const SCP02_CARD_CHALLENGE: [u8; 6] = [0xA1, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6];
const SCP03_CARD_CHALLENGE: [u8; 8] = [0xC1, 0xC2, 0xC3, 0xC4, 0xC5, 0xC6, 0xC7, 0xC8];
const SEQ: [u8; 2] = [0x00, 0x2A];

fn unwrap_key(w: &WrappedKey) -> Vec<u8> {
    aes_key_unwrap_pad(&TRANSPORT, &hex::decode(&w.wrapped).unwrap())
        .unwrap_or_else(|e| panic!("{} unwraps under the transport KEK: {e}", w.kind))
}

fn kcv_hex(w: &WrappedKey) -> String {
    w.kcv
        .clone()
        .unwrap_or_else(|| panic!("{} has a KCV", w.kind))
}

/// The returned TDES key is `want` (ignoring parity), and its KCV is right.
fn assert_tdes(w: &WrappedKey, want: &[u8], ctx: &str) {
    let got = unwrap_key(w);
    assert!(
        same_des_key(&got, want),
        "{ctx} {}: got {}, want {}",
        w.kind,
        hex::encode_upper(&got),
        hex::encode_upper(want)
    );
    assert_eq!(
        kcv_hex(w),
        hex::encode_upper(tdes_kcv(want)),
        "{ctx} {} KCV",
        w.kind
    );
}

/// The returned AES key is exactly `want`, and its KCV is right.
fn assert_aes(w: &WrappedKey, want: &[u8], ctx: &str) {
    assert_eq!(
        hex::encode_upper(unwrap_key(w)),
        hex::encode_upper(want),
        "{ctx} {}",
        w.kind
    );
    assert_eq!(
        kcv_hex(w),
        hex::encode_upper(aes_kcv(want)),
        "{ctx} {} KCV",
        w.kind
    );
}

fn kdd(bytes: &[u8; 10]) -> Kdd {
    Kdd::parse_hex(&hex::encode(bytes)).unwrap()
}

async fn kms_with_transport() -> TestKms {
    let mut kms = TestKms::new().await;
    kms.trusted_kek(TENANT, "transport", Algorithm::Aes128, &TRANSPORT)
        .await;
    kms
}

/// Import a static key set `<prefix>-enc/-mac/-dek` from components.
async fn import_key_set(
    kms: &TestKms,
    prefix: &str,
    alg: Algorithm,
    [enc, mac, dek]: [&[u8]; 3],
    dek_exportable: bool,
) {
    for (suffix, usage, value, exportable) in [
        ("enc", KeyUsage::SdStaticEnc, enc, false),
        ("mac", KeyUsage::SdStaticMac, mac, false),
        ("dek", KeyUsage::SdStaticDek, dek, dek_exportable),
    ] {
        kms.import(
            TENANT,
            &format!("{prefix}-{suffix}"),
            alg,
            usage,
            exportable,
            value,
        )
        .await;
    }
}

#[allow(clippy::too_many_arguments)]
fn scp02_req(
    t: &str,
    key_set: &str,
    diversification: Scp02Diversification,
    kdd: Option<Kdd>,
    seq: [u8; 2],
    host: [u8; 8],
    card: [u8; 6],
    card_cryptogram: [u8; 8],
) -> Scp02Request {
    Scp02Request {
        tenant: tenant(t),
        key_set: name(key_set),
        diversification,
        kdd,
        sequence_counter: seq,
        host_challenge: host,
        card_challenge: card,
        card_cryptogram,
        transport_kek: name("transport"),
    }
}

fn scp03_req(
    t: &str,
    key_set: &str,
    diversification: Scp03Diversification,
    kdd: Option<Kdd>,
    host: [u8; 8],
    card: [u8; 8],
    card_cryptogram: [u8; 8],
) -> Scp03Request {
    Scp03Request {
        tenant: tenant(t),
        key_set: name(key_set),
        diversification,
        kdd,
        host_challenge: host,
        card_challenge: card,
        card_cryptogram,
        transport_kek: name("transport"),
    }
}

async fn scp02(kms: &TestKms, req: Scp02Request) -> Result<Scp02Session, ServiceError> {
    kms.svc().scp02_session(&actor("ota-host"), req).await
}

async fn scp03(kms: &TestKms, req: Scp03Request) -> Result<Scp03Session, ServiceError> {
    kms.svc().scp03_session(&actor("ota-host"), req).await
}

/// What a card with these static keys would answer, and what the session
/// must then return, all in software.
fn check_scp02_against_software(out: &Scp02Session, statics: &SdKeys, ctx: &str) {
    let key = |v: &[u8]| -> [u8; 16] { v.try_into().unwrap() };
    let s_enc = scp02_session_key(&key(&statics.enc), SCP02_S_ENC, SEQ);
    assert_tdes(&out.s_enc, &s_enc, ctx);
    assert_tdes(
        &out.c_mac,
        &scp02_session_key(&key(&statics.mac), SCP02_C_MAC, SEQ),
        ctx,
    );
    assert_tdes(
        &out.r_mac,
        &scp02_session_key(&key(&statics.mac), SCP02_R_MAC, SEQ),
        ctx,
    );
    assert_tdes(
        &out.dek,
        &scp02_session_key(&key(&statics.dek), SCP02_DEK, SEQ),
        ctx,
    );
    assert_eq!(
        out.host_cryptogram,
        hex::encode_upper(scp02_host_cryptogram(
            &s_enc,
            SEQ,
            &HOST_CHALLENGE,
            &SCP02_CARD_CHALLENGE
        )),
        "{ctx} host cryptogram"
    );
}

fn software_scp02_card_cryptogram(statics: &SdKeys) -> [u8; 8] {
    let enc: [u8; 16] = statics.enc.as_slice().try_into().unwrap();
    let s_enc = scp02_session_key(&enc, SCP02_S_ENC, SEQ);
    scp02_card_cryptogram(&s_enc, SEQ, &HOST_CHALLENGE, &SCP02_CARD_CHALLENGE)
}

fn check_scp03_against_software(out: &Scp03Session, statics: &SdKeys, ctx: &str) {
    let h = &HOST_CHALLENGE;
    let c = &SCP03_CARD_CHALLENGE;
    let s_mac = scp03_session_key(&statics.mac, SCP03_S_MAC, h, c);
    assert_aes(
        &out.s_enc,
        &scp03_session_key(&statics.enc, SCP03_S_ENC, h, c),
        ctx,
    );
    assert_aes(&out.s_mac, &s_mac, ctx);
    assert_aes(
        &out.s_rmac,
        &scp03_session_key(&statics.mac, SCP03_S_RMAC, h, c),
        ctx,
    );
    assert_aes(&out.static_dek, &statics.dek, ctx);
    assert_eq!(
        out.host_cryptogram,
        hex::encode_upper(scp03_host_cryptogram(&s_mac, h, c)),
        "{ctx} host cryptogram"
    );
}

fn software_scp03_card_cryptogram(statics: &SdKeys) -> [u8; 8] {
    let s_mac = scp03_session_key(
        &statics.mac,
        SCP03_S_MAC,
        &HOST_CHALLENGE,
        &SCP03_CARD_CHALLENGE,
    );
    scp03_card_cryptogram(&s_mac, &HOST_CHALLENGE, &SCP03_CARD_CHALLENGE)
}

#[tokio::test(flavor = "multi_thread")]
async fn scp02_session_keys_and_cryptograms_match_known_answers() {
    let v = KnownAnswers::load().unwrap();
    let kms = kms_with_transport().await;
    let hsm = kms.svc().hsm().clone();
    for (i, x) in v.scp02.iter().enumerate() {
        let set = format!("scp02-{i}");
        import_key_set(
            &kms,
            &set,
            Algorithm::Tdes2,
            [&x.k_enc, &x.k_mac, &x.k_dek],
            false,
        )
        .await;
        let before = hsm.object_count().unwrap();
        let out = scp02(
            &kms,
            scp02_req(
                TENANT,
                &set,
                Scp02Diversification::None,
                None,
                x.sequence_counter,
                x.host_challenge,
                x.card_challenge,
                x.card_cryptogram,
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("vector {i}: {e}"));
        let ctx = format!("vector {i}");
        assert_tdes(&out.s_enc, &x.s_enc, &ctx);
        assert_tdes(&out.c_mac, &x.s_mac, &ctx);
        assert_tdes(&out.r_mac, &x.s_rmac, &ctx);
        assert_tdes(&out.dek, &x.s_dek, &ctx);
        assert_eq!(
            out.host_cryptogram,
            hex::encode_upper(x.host_cryptogram),
            "{ctx}"
        );
        // KM-7: nothing derived is left on the token.
        assert_eq!(hsm.object_count().unwrap(), before, "{ctx} objects");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn scp03_session_keys_and_cryptograms_match_known_answers() {
    let v = KnownAnswers::load().unwrap();
    let kms = kms_with_transport().await;
    let hsm = kms.svc().hsm().clone();
    for (i, x) in v.scp03.iter().enumerate() {
        let set = format!("scp03-{i}");
        let alg = Algorithm::secret(kms::model::KeyFamily::Aes, x.k_enc.len()).unwrap();
        // The vectors have no DEK; any exportable AES key of the set's length.
        let dek: Vec<u8> = (0..x.k_enc.len() as u8).map(|b| b ^ 0x5C).collect();
        import_key_set(&kms, &set, alg, [&x.k_enc, &x.k_mac, &dek], true).await;
        let before = hsm.object_count().unwrap();
        let out = scp03(
            &kms,
            scp03_req(
                TENANT,
                &set,
                Scp03Diversification::None,
                None,
                x.host_challenge,
                x.card_challenge,
                x.card_cryptogram,
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("vector {i}: {e}"));
        let ctx = format!("vector {i} ({alg})");
        assert_aes(&out.s_enc, &x.s_enc, &ctx);
        assert_aes(&out.s_mac, &x.s_mac, &ctx);
        assert_aes(&out.s_rmac, &x.s_rmac, &ctx);
        assert_aes(&out.static_dek, &dek, &ctx);
        assert_eq!(
            out.host_cryptogram,
            hex::encode_upper(x.host_cryptogram),
            "{ctx}"
        );
        assert_eq!(hsm.object_count().unwrap(), before, "{ctx} objects");
    }
}

/// AES-192 has no known answer: L = 00C0, two CMAC blocks, the token keeps
/// the first 24 bytes. Checked against the software KDF.
#[tokio::test(flavor = "multi_thread")]
async fn scp03_aes192_static_keys_match_the_software_kdf() {
    let kms = kms_with_transport().await;
    let statics = SdKeys {
        enc: (0..24u8).map(|b| b.wrapping_mul(7) ^ 0x31).collect(),
        mac: (0..24u8).map(|b| b.wrapping_mul(13) ^ 0x72).collect(),
        dek: (0..24u8).map(|b| b.wrapping_mul(29) ^ 0xA5).collect(),
    };
    let hsm = kms.svc().hsm().clone();
    import_key_set(
        &kms,
        "aes192",
        Algorithm::Aes192,
        [&statics.enc, &statics.mac, &statics.dek],
        true,
    )
    .await;
    let before = hsm.object_count().unwrap();
    let out = scp03(
        &kms,
        scp03_req(
            TENANT,
            "aes192",
            Scp03Diversification::None,
            None,
            HOST_CHALLENGE,
            SCP03_CARD_CHALLENGE,
            software_scp03_card_cryptogram(&statics),
        ),
    )
    .await
    .unwrap();
    check_scp03_against_software(&out, &statics, "AES-192");
    assert_eq!(hsm.object_count().unwrap(), before);
}

/// A transport KEK the security officer has not marked trusted cannot take
/// the session keys (they are CKA_WRAP_WITH_TRUSTED): the token refuses the
/// wrap after the card cryptogram verified and keys were derived, and that
/// error path, too, leaves no derived object behind.
#[tokio::test(flavor = "multi_thread")]
async fn an_untrusted_transport_kek_gets_nothing_and_nothing_is_left() {
    let v = KnownAnswers::load().unwrap();
    let kms = kms_with_transport().await;
    let hsm = kms.svc().hsm().clone();
    kms.svc()
        .create(
            &actor("alice"),
            kms_e2e::fixture::create_req(
                TENANT,
                "untrusted",
                Algorithm::Aes128,
                KeyUsage::TransportKek,
                false,
            ),
        )
        .await
        .unwrap();
    let x = &v.scp02[0];
    import_key_set(
        &kms,
        "s2",
        Algorithm::Tdes2,
        [&x.k_enc, &x.k_mac, &x.k_dek],
        false,
    )
    .await;
    let y = &v.scp03[0];
    import_key_set(
        &kms,
        "s3",
        Algorithm::Aes128,
        [&y.k_enc, &y.k_mac, &[0x77; 16]],
        true,
    )
    .await;
    let before = hsm.object_count().unwrap();
    let mut req = scp02_req(
        TENANT,
        "s2",
        Scp02Diversification::None,
        None,
        x.sequence_counter,
        x.host_challenge,
        x.card_challenge,
        x.card_cryptogram,
    );
    req.transport_kek = name("untrusted");
    let e = scp02(&kms, req).await.unwrap_err();
    assert!(matches!(e, ServiceError::Refused(_)), "{e:?}");
    let mut req = scp03_req(
        TENANT,
        "s3",
        Scp03Diversification::None,
        None,
        y.host_challenge,
        y.card_challenge,
        y.card_cryptogram,
    );
    req.transport_kek = name("untrusted");
    let e = scp03(&kms, req).await.unwrap_err();
    assert!(matches!(e, ServiceError::Refused(_)), "{e:?}");
    assert_eq!(hsm.object_count().unwrap(), before);
}

/// Static keys diversified from a KMC inside the token (EMV CPS 1.1 and
/// VISA2), then the session: the sd_diversification vectors' KMC and KDD,
/// the expected values from the software references.
#[tokio::test(flavor = "multi_thread")]
async fn scp02_with_diversified_static_keys_matches_software() {
    let v = KnownAnswers::load().unwrap();
    let kms = kms_with_transport().await;
    let hsm = kms.svc().hsm().clone();
    for (i, d) in v
        .sd_diversification
        .iter()
        .filter(|d| d.method == SdMethod::EmvCps11)
        .enumerate()
    {
        let kmc_name = format!("kmc-tdes-{i}");
        kms.import(
            TENANT,
            &kmc_name,
            Algorithm::Tdes2,
            KeyUsage::SdKmc,
            false,
            &d.kmc,
        )
        .await;
        let kmc: [u8; 16] = d.kmc.as_slice().try_into().unwrap();
        let cps = emv_cps11_diversify(&kmc, &d.kdd);
        // The reference diversification agrees with the known answer.
        assert_eq!((&cps.enc, &cps.mac, &cps.dek), (&d.enc, &d.mac, &d.dek));
        let visa2 = visa2_diversify(&kmc, &d.kdd);
        for (method, statics) in [
            (Scp02Diversification::EmvCps11, &cps),
            (Scp02Diversification::Visa2, &visa2),
        ] {
            let before = hsm.object_count().unwrap();
            let out = scp02(
                &kms,
                scp02_req(
                    TENANT,
                    &kmc_name,
                    method,
                    Some(kdd(&d.kdd)),
                    SEQ,
                    HOST_CHALLENGE,
                    SCP02_CARD_CHALLENGE,
                    software_scp02_card_cryptogram(statics),
                ),
            )
            .await
            .unwrap_or_else(|e| panic!("{i} {method:?}: {e}"));
            check_scp02_against_software(&out, statics, &format!("{i} {method:?}"));
            assert_eq!(
                hsm.object_count().unwrap(),
                before,
                "{i} {method:?} objects"
            );
        }
        // The two methods really differ (a mix-up would not go unnoticed).
        assert_ne!(cps.enc, visa2.enc);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn scp03_with_kdf3_diversified_static_keys_matches_software() {
    let v = KnownAnswers::load().unwrap();
    let kms = kms_with_transport().await;
    let hsm = kms.svc().hsm().clone();
    let mut kmcs: Vec<(Vec<u8>, [u8; 10])> = v
        .sd_diversification
        .iter()
        .filter(|d| d.method == SdMethod::Kdf3)
        .map(|d| {
            // The reference diversification agrees with the known answer.
            let k = kdf3_diversify(&d.kmc, &d.kdd);
            assert_eq!((&k.enc, &k.mac, &k.dek), (&d.enc, &d.mac, &d.dek));
            (d.kmc.clone(), d.kdd)
        })
        .collect();
    // Longer KMCs give longer static keys (two KDF3 blocks).
    kmcs.push(((0..32u8).map(|b| b ^ 0x6B).collect(), [0x42; 10]));
    kmcs.push(((0..24u8).map(|b| b ^ 0x19).collect(), [0x24; 10]));
    for (i, (kmc, kdd_bytes)) in kmcs.iter().enumerate() {
        let alg = Algorithm::secret(kms::model::KeyFamily::Aes, kmc.len()).unwrap();
        let kmc_name = format!("kmc-aes-{i}");
        kms.import(TENANT, &kmc_name, alg, KeyUsage::SdKmc, false, kmc)
            .await;
        let statics = kdf3_diversify(kmc, kdd_bytes);
        let before = hsm.object_count().unwrap();
        let out = scp03(
            &kms,
            scp03_req(
                TENANT,
                &kmc_name,
                Scp03Diversification::Kdf3,
                Some(kdd(kdd_bytes)),
                HOST_CHALLENGE,
                SCP03_CARD_CHALLENGE,
                software_scp03_card_cryptogram(&statics),
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("{i} {alg}: {e}"));
        check_scp03_against_software(&out, &statics, &format!("{i} {alg}"));
        assert_eq!(hsm.object_count().unwrap(), before, "{i} objects");
    }
}

async fn refusals(kms: &TestKms, action: &str) -> Vec<kms::audit::AuditRecord> {
    kms.svc()
        .store()
        .audit_search(&AuditFilter {
            action: Some(action.into()),
            outcome: Some(Outcome::Refused),
            ..Default::default()
        })
        .await
        .unwrap()
}

/// A wrong card cryptogram: refused, nothing returned, audited as refused
/// (with the public challenges, without the cryptogram), and no object left
/// on the token, for stored and diversified key sets alike.
#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_card_cryptogram_is_refused_audited_and_leaves_nothing() {
    let v = KnownAnswers::load().unwrap();
    let kms = kms_with_transport().await;
    let hsm = kms.svc().hsm().clone();
    let x = &v.scp02[0];
    import_key_set(
        &kms,
        "s2",
        Algorithm::Tdes2,
        [&x.k_enc, &x.k_mac, &x.k_dek],
        false,
    )
    .await;
    let y = &v.scp03[0];
    import_key_set(
        &kms,
        "s3",
        Algorithm::Aes128,
        [&y.k_enc, &y.k_mac, &[0x77; 16]],
        true,
    )
    .await;
    let cps = v
        .sd_diversification
        .iter()
        .find(|d| d.method == SdMethod::EmvCps11)
        .unwrap();
    kms.import(
        TENANT,
        "kmc-tdes",
        Algorithm::Tdes2,
        KeyUsage::SdKmc,
        false,
        &cps.kmc,
    )
    .await;
    let kdf3 = v
        .sd_diversification
        .iter()
        .find(|d| d.method == SdMethod::Kdf3)
        .unwrap();
    kms.import(
        TENANT,
        "kmc-aes",
        Algorithm::Aes128,
        KeyUsage::SdKmc,
        false,
        &kdf3.kmc,
    )
    .await;
    let before = hsm.object_count().unwrap();

    let mut bad = x.card_cryptogram;
    bad[7] ^= 0x01;
    let e = scp02(
        &kms,
        scp02_req(
            TENANT,
            "s2",
            Scp02Diversification::None,
            None,
            x.sequence_counter,
            x.host_challenge,
            x.card_challenge,
            bad,
        ),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            &e,
            ServiceError::Session(kms::service::SessionRefusal::CardCryptogram)
        ),
        "{e:?}"
    );
    let e = scp02(
        &kms,
        scp02_req(
            TENANT,
            "kmc-tdes",
            Scp02Diversification::Visa2,
            Some(kdd(&cps.kdd)),
            SEQ,
            HOST_CHALLENGE,
            SCP02_CARD_CHALLENGE,
            [0; 8],
        ),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            e,
            ServiceError::Session(kms::service::SessionRefusal::CardCryptogram)
        ),
        "{e:?}"
    );

    let mut bad = y.card_cryptogram;
    bad[0] ^= 0x80;
    let e = scp03(
        &kms,
        scp03_req(
            TENANT,
            "s3",
            Scp03Diversification::None,
            None,
            y.host_challenge,
            y.card_challenge,
            bad,
        ),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            &e,
            ServiceError::Session(kms::service::SessionRefusal::CardCryptogram)
        ),
        "{e:?}"
    );
    let e = scp03(
        &kms,
        scp03_req(
            TENANT,
            "kmc-aes",
            Scp03Diversification::Kdf3,
            Some(kdd(&kdf3.kdd)),
            HOST_CHALLENGE,
            SCP03_CARD_CHALLENGE,
            [0; 8],
        ),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            e,
            ServiceError::Session(kms::service::SessionRefusal::CardCryptogram)
        ),
        "{e:?}"
    );

    // KM-7 on the refusal path, diversified static keys included.
    assert_eq!(hsm.object_count().unwrap(), before);

    let r2 = refusals(&kms, "session.scp02").await;
    assert_eq!(r2.len(), 2, "{r2:#?}");
    let r3 = refusals(&kms, "session.scp03").await;
    assert_eq!(r3.len(), 2, "{r3:#?}");
    let first = r2
        .iter()
        .find(|r| r.event.details.get("key_set").map(String::as_str) == Some("s2"))
        .expect("the stored-key refusal is on record");
    assert_eq!(
        first
            .event
            .details
            .get("host_challenge")
            .map(String::as_str),
        Some(hex::encode_upper(x.host_challenge).as_str())
    );
    assert_eq!(
        first
            .event
            .details
            .get("sequence_counter")
            .map(String::as_str),
        Some(hex::encode_upper(x.sequence_counter).as_str())
    );
    assert!(first
        .event
        .reason
        .as_deref()
        .unwrap_or_default()
        .contains("card cryptogram does not verify"));
    let names: Vec<&str> = first.event.keys.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(names, ["s2-enc", "s2-mac", "s2-dek", "transport"]);
    // No cryptogram or key material in the trail.
    for r in r2.iter().chain(&r3) {
        let json = serde_json::to_string(&r.event).unwrap();
        for secret in [
            hex::encode_upper(bad),
            hex::encode_upper(x.card_cryptogram),
            hex::encode_upper(x.k_enc),
            hex::encode_upper(&y.k_mac),
        ] {
            assert!(!json.contains(&secret), "{json}");
        }
    }
}

/// KM-4: a tenant cannot open a session with another tenant's key set or
/// KMC; the key is simply not found.
#[tokio::test(flavor = "multi_thread")]
async fn another_tenants_key_set_is_not_found() {
    let v = KnownAnswers::load().unwrap();
    let mut kms = kms_with_transport().await;
    kms.trusted_kek("issuer-b", "transport", Algorithm::Aes128, &TRANSPORT)
        .await;
    let x = &v.scp02[0];
    import_key_set(
        &kms,
        "s2",
        Algorithm::Tdes2,
        [&x.k_enc, &x.k_mac, &x.k_dek],
        false,
    )
    .await;
    let y = &v.scp03[0];
    import_key_set(
        &kms,
        "s3",
        Algorithm::Aes128,
        [&y.k_enc, &y.k_mac, &[0x77; 16]],
        true,
    )
    .await;
    let kdf3 = v
        .sd_diversification
        .iter()
        .find(|d| d.method == SdMethod::Kdf3)
        .unwrap();
    kms.import(
        TENANT,
        "kmc-aes",
        Algorithm::Aes128,
        KeyUsage::SdKmc,
        false,
        &kdf3.kmc,
    )
    .await;
    // The right answers, so only the tenant is wrong.
    let e = scp02(
        &kms,
        scp02_req(
            "issuer-b",
            "s2",
            Scp02Diversification::None,
            None,
            x.sequence_counter,
            x.host_challenge,
            x.card_challenge,
            x.card_cryptogram,
        ),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, ServiceError::NotFound(_)), "{e:?}");
    let e = scp03(
        &kms,
        scp03_req(
            "issuer-b",
            "s3",
            Scp03Diversification::None,
            None,
            y.host_challenge,
            y.card_challenge,
            y.card_cryptogram,
        ),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, ServiceError::NotFound(_)), "{e:?}");
    let statics = kdf3_diversify(&kdf3.kmc, &kdf3.kdd);
    let e = scp03(
        &kms,
        scp03_req(
            "issuer-b",
            "kmc-aes",
            Scp03Diversification::Kdf3,
            Some(kdd(&kdf3.kdd)),
            HOST_CHALLENGE,
            SCP03_CARD_CHALLENGE,
            software_scp03_card_cryptogram(&statics),
        ),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, ServiceError::NotFound(_)), "{e:?}");
    // And the owner can.
    scp03(
        &kms,
        scp03_req(
            TENANT,
            "kmc-aes",
            Scp03Diversification::Kdf3,
            Some(kdd(&kdf3.kdd)),
            HOST_CHALLENGE,
            SCP03_CARD_CHALLENGE,
            software_scp03_card_cryptogram(&statics),
        ),
    )
    .await
    .unwrap();
}

/// Wrong inputs are refused before anything is derived: a non-exportable
/// static DEK for SCP03, a diversification without a KDD, a key of the
/// wrong usage, a TDES set for SCP03.
#[tokio::test(flavor = "multi_thread")]
async fn misconfigured_key_sets_are_refused() {
    let v = KnownAnswers::load().unwrap();
    let kms = kms_with_transport().await;
    let y = &v.scp03[0];
    import_key_set(
        &kms,
        "locked",
        Algorithm::Aes128,
        [&y.k_enc, &y.k_mac, &[0x77; 16]],
        false,
    )
    .await;
    let e = scp03(
        &kms,
        scp03_req(
            TENANT,
            "locked",
            Scp03Diversification::None,
            None,
            y.host_challenge,
            y.card_challenge,
            y.card_cryptogram,
        ),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, ServiceError::Refused(_)), "{e:?}");

    let x = &v.scp02[0];
    import_key_set(
        &kms,
        "tdes",
        Algorithm::Tdes2,
        [&x.k_enc, &x.k_mac, &x.k_dek],
        false,
    )
    .await;
    let e = scp03(
        &kms,
        scp03_req(
            TENANT,
            "tdes",
            Scp03Diversification::None,
            None,
            y.host_challenge,
            y.card_challenge,
            y.card_cryptogram,
        ),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, ServiceError::Invalid(_)), "{e:?}");
    // A static key is not a KMC.
    let e = scp02(
        &kms,
        scp02_req(
            TENANT,
            "tdes-enc",
            Scp02Diversification::EmvCps11,
            Some(kdd(&[0; 10])),
            SEQ,
            HOST_CHALLENGE,
            SCP02_CARD_CHALLENGE,
            [0; 8],
        ),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, ServiceError::Invalid(_)), "{e:?}");
    kms.import(
        TENANT,
        "kmc",
        Algorithm::Tdes2,
        KeyUsage::SdKmc,
        false,
        &x.k_enc,
    )
    .await;
    let e = scp02(
        &kms,
        scp02_req(
            TENANT,
            "kmc",
            Scp02Diversification::Visa2,
            None,
            SEQ,
            HOST_CHALLENGE,
            SCP02_CARD_CHALLENGE,
            [0; 8],
        ),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, ServiceError::Invalid(_)), "{e:?}");
}
