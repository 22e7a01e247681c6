#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The provisioning API end to end, over real mTLS (TSM-DATA-4): a server
//! started in-process on 127.0.0.1 (ports chosen by the system) on a fresh
//! SoftHSM2 token and SQLite database per test, a test PKI made by rcgen,
//! and the reference client of the `kms-client` crate.
//!
//! - Known answers (KM-2): the keys of shared/vectors/known-answers.json
//!   come in through components, each endpoint is called through the
//!   reference client, and every returned key is unwrapped in software under
//!   the known transport KEK (AES-KWP) and compared with the vectors, their
//!   cryptograms and check values.
//! - INT-1: every answer, problem answers included, carries a signature over
//!   its request id and body that verifies under the key of
//!   /v1/signing-key, checked here with p256 directly, not only by the client.
//! - Refusals: each one's problem code and HTTP status, its record in the
//!   audit trail (action, outcome refused, the caller's request id), and that
//!   nothing changed (token objects, key records).
//! - KM-7: a batch of successful and refused requests leaves the token with
//!   exactly the objects it had.
//! - The OpenAPI document served is the generated one and the checked-in one.

use kms::audit::{AuditRecord, Outcome};
use kms::config::ProvisioningLimits;
use kms::model::{Algorithm, KeyFamily, KeyUsage, Transition};
use kms::server::RunningServer;
use kms::store::{AuditFilter, KeyRecord};
use kms_client::wire::{
    self, EmvCardKeysRequest, Scp02Diversification, Scp02SessionRequest, Scp02SessionResponse,
    Scp03Diversification, Scp03SessionRequest, Scp03SessionResponse, WrappedKey, Wrapping,
};
use kms_client::{ClientError, ProvisioningClient, RawReply, RawRequest, SignatureCheck};
use kms_e2e::fixture::{actor, create_req, destroy_approved, name, tenant, TestKms};
use kms_e2e::pki::{
    ClientCert, TestPki, OFFICER, OPERATOR, PROVISIONER, PROVISIONER_B, PROVISIONER_B_TENANT,
    PROVISIONER_TENANT,
};
use kms_e2e::reference::{
    aes_kcv, aes_key_unwrap_pad, emv_option_a, same_des_key, scp02_card_cryptogram,
    scp02_host_cryptogram, scp02_session_key, scp03_card_cryptogram, scp03_host_cryptogram,
    scp03_session_key, tdes_kcv, SCP02_C_MAC, SCP02_DEK, SCP02_R_MAC, SCP02_S_ENC, SCP03_S_ENC,
    SCP03_S_MAC, SCP03_S_RMAC,
};
use kms_e2e::vectors::{KnownAnswers, Scp02Vector, Scp03Vector};
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use rustls::AlertDescription;
use std::net::SocketAddr;
use std::time::Duration;
use time::OffsetDateTime;

const TENANT_A: &str = PROVISIONER_TENANT;
const TENANT_B: &str = PROVISIONER_B_TENANT;

/// Each tenant's trusted transport KEK, by this name, with a known value.
const KEK: &str = "transport";
const TRANSPORT_A: [u8; 16] = [
    0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3A, 0x3B, 0x3C, 0x3D, 0x3E, 0x3F,
];
const TRANSPORT_B: [u8; 16] = [
    0xB0, 0xB1, 0xB2, 0xB3, 0xB4, 0xB5, 0xB6, 0xB7, 0xB8, 0xB9, 0xBA, 0xBB, 0xBC, 0xBD, 0xBE, 0xBF,
];

const SCP02_PATH: &str = "/v1/sessions/scp02";
const SCP03_PATH: &str = "/v1/sessions/scp03";
const EMV_PATH: &str = "/v1/card-keys/emv";

const SCP02_ACTION: &str = "session.scp02";
const SCP03_ACTION: &str = "session.scp03";
const EMV_ACTION: &str = "derive.emv-card-keys";

/// A PAN and its PSN for the EMV tests that are not about the vectors.
const PAN_1: &str = "5413330089020011";
const PAN_2: &str = "5413330089020029";

// ---------------------------------------------------------------------------
// The server, its clients, and what the tests look at

/// A KMS with a trusted transport KEK of known value for each tenant. The
/// security officer's login is needed to make one, so this happens before
/// the server starts (the server holds the user's login).
async fn kms_with_keks(tenants: &[&str]) -> TestKms {
    let mut kms = TestKms::new().await;
    for t in tenants {
        let value = if *t == TENANT_B {
            TRANSPORT_B
        } else {
            TRANSPORT_A
        };
        kms.trusted_kek(t, KEK, Algorithm::Aes128, &value).await;
    }
    kms
}

/// What a refusal must not change: the token's objects and every key's
/// record (versions, states, presence).
#[derive(Debug, PartialEq)]
struct Snapshot {
    objects: usize,
    keys: Vec<KeyRecord>,
}

struct Prov {
    kms: TestKms,
    pki: TestPki,
    _server: RunningServer,
    addr: SocketAddr,
    /// The response-signing key as /v1/signing-key gives it, parsed here.
    signing_key: VerifyingKey,
}

impl Prov {
    async fn start(kms: TestKms) -> Prov {
        Self::start_with(kms, ProvisioningLimits::default()).await
    }

    async fn start_with(kms: TestKms, limits: ProvisioningLimits) -> Prov {
        let pki = TestPki::new();
        let server = kms::server::start(&pki.settings_with_limits(limits), kms.svc().clone())
            .await
            .expect("server starts");
        let addr = server.addr_prov;
        // The signing key, read once over an unpinned client and parsed
        // here: every later answer is checked against it independently.
        let mut first =
            ProvisioningClient::connect(pki.client_config(addr, Some(&pki.provisioner), None))
                .await
                .expect("connect");
        let r = first
            .send(RawRequest::get("/v1/signing-key"))
            .await
            .unwrap();
        assert_eq!(r.status.as_u16(), 200, "{}", r.text());
        let doc: wire::SigningKey = r.json().unwrap();
        assert_eq!(doc.algorithm, "ecdsa-p256-sha256");
        let signing_key = VerifyingKey::from_public_key_pem(&doc.public_key_pem).unwrap();
        assert_eq!(doc.key_id, key_id(&signing_key));
        assert_eq!(first.signing_key_id(), doc.key_id);
        verify_independently(&signing_key, &r);
        Prov {
            kms,
            pki,
            _server: server,
            addr,
            signing_key,
        }
    }

    /// A reference client presenting `who`, pinned to the signing key.
    async fn client(&self, who: &ClientCert) -> ProvisioningClient {
        ProvisioningClient::connect(self.pki.client_config(
            self.addr,
            Some(who),
            Some(self.signing_key),
        ))
        .await
        .expect("connect")
    }

    /// Send as given; whatever the answer, its signature must verify, both
    /// in the client and independently here.
    async fn send(&self, c: &mut ProvisioningClient, req: RawRequest) -> RawReply {
        let what = format!("{} {}", req.method, req.path);
        let r = c
            .send(req)
            .await
            .unwrap_or_else(|e| panic!("{what}: no answer: {e}"));
        assert_eq!(
            r.signature,
            SignatureCheck::Valid,
            "{what}: {} {}",
            r.status,
            r.text()
        );
        verify_independently(&self.signing_key, &r);
        r
    }

    async fn snapshot(&self) -> Snapshot {
        Snapshot {
            objects: self.kms.svc().hsm().object_count().unwrap(),
            keys: self.kms.svc().store().list_keys(None).await.unwrap(),
        }
    }

    async fn search(&self, f: AuditFilter) -> Vec<AuditRecord> {
        self.kms
            .svc()
            .audit()
            .store()
            .audit_search(&f)
            .await
            .unwrap()
    }

    /// The records of one request.
    async fn records_of(&self, rid: &str) -> Vec<AuditRecord> {
        self.search(AuditFilter {
            request_id: Some(rid.into()),
            ..Default::default()
        })
        .await
    }

    /// The one refusal of `action` recorded under `rid`; when the refusal
    /// was made before the service (admission, policy, body), its record
    /// names the problem code.
    async fn refusal(&self, action: &str, rid: &str, code: &str) -> AuditRecord {
        let mut recs = self
            .search(AuditFilter {
                action: Some(action.into()),
                outcome: Some(Outcome::Refused),
                request_id: Some(rid.into()),
                ..Default::default()
            })
            .await;
        assert_eq!(recs.len(), 1, "{action} {rid} refused once: {recs:#?}");
        let rec = recs.remove(0);
        if let Some(c) = rec.event.details.get("code") {
            assert_eq!(c, code, "{rec:#?}");
        }
        assert!(rec.event.reason.is_some(), "{rec:#?}");
        rec
    }

    async fn successes(&self, action: &str, rid: &str) -> usize {
        self.search(AuditFilter {
            action: Some(action.into()),
            outcome: Some(Outcome::Success),
            request_id: Some(rid.into()),
            ..Default::default()
        })
        .await
        .len()
    }
}

fn key_id(k: &VerifyingKey) -> String {
    wire::key_id(k.to_encoded_point(false).as_bytes())
}

/// The wire's rule for request ids (the server takes any other for none).
fn valid_request_id(s: &str) -> bool {
    (8..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// INT-1, checked without the client: the echoed request id is the one
/// sent, the key id is the signing key's, and the ECDSA P-256 signature
/// verifies over `signed_message(request id, body)`.
fn verify_independently(key: &VerifyingKey, r: &RawReply) {
    let rid = r
        .request_id
        .as_deref()
        .filter(|s| valid_request_id(s))
        .unwrap_or("");
    assert_eq!(r.header(wire::REQUEST_ID).unwrap_or(""), rid, "echoed id");
    assert_eq!(
        r.header(wire::SIGNATURE_KEY),
        Some(key_id(key).as_str()),
        "signing key id"
    );
    let sig = hex::decode(r.header(wire::SIGNATURE).expect("kms-signature")).unwrap();
    let sig = Signature::from_slice(&sig).expect("64-byte r || s");
    key.verify(&wire::signed_message(rid, &r.body), &sig)
        .unwrap_or_else(|e| {
            panic!(
                "the signature of the {} answer does not verify: {e}",
                r.status
            )
        });
}

/// A problem answer: status, content type, code, type, and the caller's
/// request id (when it had a valid one).
fn assert_problem(r: &RawReply, status: u16, code: &str) -> wire::Problem {
    assert_eq!(r.status.as_u16(), status, "{}", r.text());
    assert_eq!(
        r.content_type(),
        Some("application/problem+json"),
        "{}",
        r.text()
    );
    let p: wire::Problem = r.json().unwrap();
    assert_eq!(p.code, code, "{p:?}");
    assert_eq!(p.status, status, "{p:?}");
    assert_eq!(p.kind, format!("urn:kms:problem:{code}"));
    assert!(!p.title.is_empty());
    let rid = r.request_id.as_deref().filter(|s| valid_request_id(s));
    assert_eq!(p.request_id.as_deref(), rid, "{p:?}");
    p
}

/// The problem without its request id: what must be the same for two
/// requests that must not be told apart.
fn sans_id(mut p: wire::Problem) -> wire::Problem {
    p.request_id = None;
    p
}

fn ok<T: serde::de::DeserializeOwned>(r: &RawReply) -> T {
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    assert_eq!(r.content_type(), Some("application/json"));
    r.json().unwrap()
}

fn post<T: serde::Serialize>(path: &str, body: &T) -> RawRequest {
    RawRequest::post_json(path, serde_json::to_vec(body).unwrap())
}

/// A fresh request id, labelled (set explicitly, so that the request's
/// records can be found by it).
fn rid(label: &str) -> String {
    format!("{label}-{}", kms_client::client::new_request_id())
}

fn with_id(req: RawRequest, id: &str) -> RawRequest {
    req.request_id(id)
}

// ---------------------------------------------------------------------------
// Keys, requests and software checks

fn unwrap_key(kek: &[u8], w: &WrappedKey) -> Vec<u8> {
    aes_key_unwrap_pad(kek, &hex::decode(&w.wrapped).unwrap())
        .unwrap_or_else(|e| panic!("{} unwraps under the transport KEK: {e}", w.kind))
}

/// The returned TDES key is `want` (parity aside), with its check value.
fn assert_tdes(kek: &[u8], w: &WrappedKey, kind: &str, want: &[u8], ctx: &str) {
    assert_eq!(w.kind, kind, "{ctx}");
    let got = unwrap_key(kek, w);
    assert!(
        same_des_key(&got, want),
        "{ctx} {kind}: got {}, want {}",
        hex::encode_upper(&got),
        hex::encode_upper(want)
    );
    assert_eq!(
        w.kcv.as_deref(),
        Some(hex::encode_upper(tdes_kcv(want)).as_str()),
        "{ctx} {kind} KCV"
    );
}

/// The returned AES key is exactly `want`, with its check value.
fn assert_aes(kek: &[u8], w: &WrappedKey, kind: &str, want: &[u8], ctx: &str) {
    assert_eq!(w.kind, kind, "{ctx}");
    assert_eq!(
        hex::encode_upper(unwrap_key(kek, w)),
        hex::encode_upper(want),
        "{ctx} {kind}"
    );
    assert_eq!(
        w.kcv.as_deref(),
        Some(hex::encode_upper(aes_kcv(want)).as_str()),
        "{ctx} {kind} KCV"
    );
}

fn wrapping() -> Wrapping {
    Wrapping {
        transport_kek: KEK.into(),
        algorithm: "aes-kwp".into(),
    }
}

/// Import an SCP02 vector's static keys as `<prefix>-enc/-mac/-dek`.
async fn import_scp02_set(kms: &TestKms, t: &str, prefix: &str, x: &Scp02Vector) {
    for (suffix, usage, value) in [
        ("enc", KeyUsage::SdStaticEnc, &x.k_enc),
        ("mac", KeyUsage::SdStaticMac, &x.k_mac),
        ("dek", KeyUsage::SdStaticDek, &x.k_dek),
    ] {
        kms.import(
            t,
            &format!("{prefix}-{suffix}"),
            Algorithm::Tdes2,
            usage,
            false,
            value,
        )
        .await;
    }
}

/// The static DEK the SCP03 vectors lack: any AES key of the set's length.
fn scp03_dek(x: &Scp03Vector) -> Vec<u8> {
    (0..x.k_enc.len() as u8).map(|b| b ^ 0x5C).collect()
}

/// Import an SCP03 vector's static keys; the DEK leaves the token wrapped
/// (for PUT KEY), so it must be exportable.
async fn import_scp03_set(
    kms: &TestKms,
    t: &str,
    prefix: &str,
    x: &Scp03Vector,
    dek_exportable: bool,
) {
    let alg = Algorithm::secret(KeyFamily::Aes, x.k_enc.len()).unwrap();
    let dek = scp03_dek(x);
    for (suffix, usage, value, exportable) in [
        ("enc", KeyUsage::SdStaticEnc, &x.k_enc, false),
        ("mac", KeyUsage::SdStaticMac, &x.k_mac, false),
        ("dek", KeyUsage::SdStaticDek, &dek, dek_exportable),
    ] {
        kms.import(
            t,
            &format!("{prefix}-{suffix}"),
            alg,
            usage,
            exportable,
            value,
        )
        .await;
    }
}

/// Import issuer master keys `<prefix>-ac/-smi/-smc` (2-key TDES).
async fn import_imks(kms: &TestKms, t: &str, prefix: &str, [ac, smi, smc]: [&[u8; 16]; 3]) {
    for (suffix, usage, value) in [
        ("ac", KeyUsage::ImkAc, ac),
        ("smi", KeyUsage::ImkSmi, smi),
        ("smc", KeyUsage::ImkSmc, smc),
    ] {
        kms.import(
            t,
            &format!("{prefix}-{suffix}"),
            Algorithm::Tdes2,
            usage,
            false,
            value,
        )
        .await;
    }
}

fn scp02_request(key_set: &str, x: &Scp02Vector) -> Scp02SessionRequest {
    Scp02SessionRequest {
        tenant: None,
        key_set: key_set.into(),
        diversification: Scp02Diversification::None,
        kdd: None,
        sequence_counter: hex::encode_upper(x.sequence_counter),
        host_challenge: hex::encode_upper(x.host_challenge),
        card_challenge: hex::encode_upper(x.card_challenge),
        card_cryptogram: hex::encode_upper(x.card_cryptogram),
        transport_kek: KEK.into(),
    }
}

/// What a card with the vector's static keys would send for this counter
/// and card challenge (the card cryptogram computed in software).
fn scp02_card_says(
    key_set: &str,
    x: &Scp02Vector,
    seq: [u8; 2],
    card: [u8; 6],
) -> Scp02SessionRequest {
    let s_enc = scp02_session_key(&x.k_enc, SCP02_S_ENC, seq);
    Scp02SessionRequest {
        sequence_counter: hex::encode_upper(seq),
        card_challenge: hex::encode_upper(card),
        card_cryptogram: hex::encode_upper(scp02_card_cryptogram(
            &s_enc,
            seq,
            &x.host_challenge,
            &card,
        )),
        ..scp02_request(key_set, x)
    }
}

/// The session a card with the vector's static keys expects, in software.
fn check_scp02_software(
    out: &Scp02SessionResponse,
    x: &Scp02Vector,
    seq: [u8; 2],
    card: [u8; 6],
    ctx: &str,
) {
    let s_enc = scp02_session_key(&x.k_enc, SCP02_S_ENC, seq);
    let k = &TRANSPORT_A;
    assert_tdes(k, &out.s_enc, "s-enc", &s_enc, ctx);
    let c_mac = scp02_session_key(&x.k_mac, SCP02_C_MAC, seq);
    assert_tdes(k, &out.c_mac, "c-mac", &c_mac, ctx);
    let r_mac = scp02_session_key(&x.k_mac, SCP02_R_MAC, seq);
    assert_tdes(k, &out.r_mac, "r-mac", &r_mac, ctx);
    let dek = scp02_session_key(&x.k_dek, SCP02_DEK, seq);
    assert_tdes(k, &out.dek, "dek", &dek, ctx);
    assert_eq!(
        out.host_cryptogram,
        hex::encode_upper(scp02_host_cryptogram(&s_enc, seq, &x.host_challenge, &card)),
        "{ctx} host cryptogram"
    );
    assert_eq!(out.wrapping, wrapping());
}

fn seq_plus(seq: [u8; 2], n: i32) -> [u8; 2] {
    let v = i32::from(u16::from_be_bytes(seq)) + n;
    u16::try_from(v).unwrap().to_be_bytes()
}

fn scp03_request(key_set: &str, x: &Scp03Vector) -> Scp03SessionRequest {
    Scp03SessionRequest {
        tenant: None,
        key_set: key_set.into(),
        diversification: Scp03Diversification::None,
        kdd: None,
        host_challenge: hex::encode_upper(x.host_challenge),
        card_challenge: hex::encode_upper(x.card_challenge),
        card_cryptogram: hex::encode_upper(x.card_cryptogram),
        transport_kek: KEK.into(),
    }
}

/// What a card with the vector's static keys would send for this card
/// challenge.
fn scp03_card_says(key_set: &str, x: &Scp03Vector, card: [u8; 8]) -> Scp03SessionRequest {
    let s_mac = scp03_session_key(&x.k_mac, SCP03_S_MAC, &x.host_challenge, &card);
    Scp03SessionRequest {
        card_challenge: hex::encode_upper(card),
        card_cryptogram: hex::encode_upper(scp03_card_cryptogram(&s_mac, &x.host_challenge, &card)),
        ..scp03_request(key_set, x)
    }
}

fn check_scp03_software(out: &Scp03SessionResponse, x: &Scp03Vector, card: [u8; 8], ctx: &str) {
    let h = &x.host_challenge;
    let k = &TRANSPORT_A;
    let s_mac = scp03_session_key(&x.k_mac, SCP03_S_MAC, h, &card);
    assert_aes(
        k,
        &out.s_enc,
        "s-enc",
        &scp03_session_key(&x.k_enc, SCP03_S_ENC, h, &card),
        ctx,
    );
    assert_aes(k, &out.s_mac, "s-mac", &s_mac, ctx);
    assert_aes(
        k,
        &out.s_rmac,
        "s-rmac",
        &scp03_session_key(&x.k_mac, SCP03_S_RMAC, h, &card),
        ctx,
    );
    assert_aes(k, &out.static_dek, "static-dek", &scp03_dek(x), ctx);
    assert_eq!(
        out.host_cryptogram,
        hex::encode_upper(scp03_host_cryptogram(&s_mac, h, &card)),
        "{ctx} host cryptogram"
    );
    assert_eq!(out.wrapping, wrapping());
}

fn emv_request(prefix: &str, pan: &str, psn: u8, se_id: &str, sd_aid: &str) -> EmvCardKeysRequest {
    EmvCardKeysRequest {
        tenant: None,
        issuer_keys: prefix.into(),
        pan: pan.into(),
        psn,
        se_id: se_id.into(),
        sd_aid: sd_aid.into(),
        transport_kek: KEK.into(),
    }
}

const SE_1: &str = "4750100001020304";
const SD_1: &str = "A000000151535041";
const SD_2: &str = "A000000151535042";

/// A KMS and server for tenant issuer-a with SCP02 vector 0's key set
/// (`s2`), SCP03 vector 0's (`s3`), and issuer master keys (`imk`, from the
/// EMV vectors).
async fn standard(v: &KnownAnswers) -> Prov {
    let kms = kms_with_keks(&[TENANT_A]).await;
    import_scp02_set(&kms, TENANT_A, "s2", &v.scp02[0]).await;
    import_scp03_set(&kms, TENANT_A, "s3", &v.scp03[0], true).await;
    import_imks(&kms, TENANT_A, "imk", imk_values(v, 0)).await;
    Prov::start(kms).await
}

/// Three different IMK values for vector `i`'s prefix: AC is the vector's.
fn imk_values(v: &KnownAnswers, i: usize) -> [&[u8; 16]; 3] {
    let n = v.emv_option_a.len();
    [
        &v.emv_option_a[i].imk,
        &v.emv_option_a[(i + 1) % n].imk,
        &v.emv_option_a[(i + 2) % n].imk,
    ]
}

// ---------------------------------------------------------------------------
// 1. Known answers over mTLS (KM-2, TSM-DATA-4)

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn km_2_tsm_data_4_scp02_sessions_over_mtls_match_the_known_answers() {
    let v = KnownAnswers::load().unwrap();
    let kms = kms_with_keks(&[TENANT_A]).await;
    for (i, x) in v.scp02.iter().enumerate() {
        import_scp02_set(&kms, TENANT_A, &format!("scp02-{i}"), x).await;
    }
    let p = Prov::start(kms).await;
    let before = p.snapshot().await;
    let mut c = p.client(&p.pki.provisioner).await;
    for (i, x) in v.scp02.iter().enumerate() {
        let ctx = format!("scp02 vector {i}");
        let out = c
            .scp02_session(&scp02_request(&format!("scp02-{i}"), x))
            .await
            .unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let k = &TRANSPORT_A;
        assert_tdes(k, &out.s_enc, "s-enc", &x.s_enc, &ctx);
        assert_tdes(k, &out.c_mac, "c-mac", &x.s_mac, &ctx);
        assert_tdes(k, &out.r_mac, "r-mac", &x.s_rmac, &ctx);
        assert_tdes(k, &out.dek, "dek", &x.s_dek, &ctx);
        assert_eq!(
            out.host_cryptogram,
            hex::encode_upper(x.host_cryptogram),
            "{ctx}"
        );
        assert!(!out.card_challenge_reused, "{ctx}");
        assert_eq!(out.wrapping, wrapping(), "{ctx}");
        // The software reference agrees with the vector.
        check_scp02_software(&out, x, x.sequence_counter, x.card_challenge, &ctx);
    }
    // KM-7: nothing derived is left on the token; no key record changed.
    assert_eq!(p.snapshot().await, before);
    let served = p
        .search(AuditFilter {
            actor: Some(PROVISIONER.into()),
            action: Some(SCP02_ACTION.into()),
            outcome: Some(Outcome::Success),
            ..Default::default()
        })
        .await;
    assert_eq!(served.len(), v.scp02.len());
    for rec in &served {
        assert_eq!(rec.event.role, "provisioner");
        assert_eq!(rec.event.tenant.as_deref(), Some(TENANT_A));
        assert!(rec.event.request_id.is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn km_2_tsm_data_4_scp03_sessions_over_mtls_match_the_known_answers() {
    let v = KnownAnswers::load().unwrap();
    let kms = kms_with_keks(&[TENANT_A]).await;
    for (i, x) in v.scp03.iter().enumerate() {
        import_scp03_set(&kms, TENANT_A, &format!("scp03-{i}"), x, true).await;
    }
    let p = Prov::start(kms).await;
    let before = p.snapshot().await;
    let mut c = p.client(&p.pki.provisioner).await;
    for (i, x) in v.scp03.iter().enumerate() {
        let ctx = format!("scp03 vector {i} ({} bytes)", x.k_enc.len());
        let out = c
            .scp03_session(&scp03_request(&format!("scp03-{i}"), x))
            .await
            .unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let k = &TRANSPORT_A;
        assert_aes(k, &out.s_enc, "s-enc", &x.s_enc, &ctx);
        assert_aes(k, &out.s_mac, "s-mac", &x.s_mac, &ctx);
        assert_aes(k, &out.s_rmac, "s-rmac", &x.s_rmac, &ctx);
        assert_aes(k, &out.static_dek, "static-dek", &scp03_dek(x), &ctx);
        assert_eq!(
            out.host_cryptogram,
            hex::encode_upper(x.host_cryptogram),
            "{ctx}"
        );
        assert!(!out.card_challenge_reused, "{ctx}");
        assert_eq!(out.wrapping, wrapping(), "{ctx}");
        check_scp03_software(&out, x, x.card_challenge, &ctx);
    }
    assert_eq!(p.snapshot().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn km_2_tsm_data_1_emv_card_keys_over_mtls_match_the_known_answers() {
    let v = KnownAnswers::load().unwrap();
    let kms = kms_with_keks(&[TENANT_A]).await;
    for i in 0..v.emv_option_a.len() {
        import_imks(&kms, TENANT_A, &format!("emv-{i}"), imk_values(&v, i)).await;
    }
    let p = Prov::start(kms).await;
    let before = p.snapshot().await;
    let mut c = p.client(&p.pki.provisioner).await;
    for (i, x) in v.emv_option_a.iter().enumerate() {
        let ctx = format!("emv vector {i}");
        let psn: u8 = x.psn.parse().unwrap();
        let [ac, smi, smc] = imk_values(&v, i);
        // The software reference agrees with the vector.
        assert_eq!(emv_option_a(ac, &x.pan, &x.psn), x.icc_mk, "{ctx}");
        let out = c
            .emv_card_keys(&emv_request(
                &format!("emv-{i}"),
                &x.pan,
                psn,
                &format!("47501000{i:02X}"),
                SD_1,
            ))
            .await
            .unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let k = &TRANSPORT_A;
        assert_tdes(k, &out.icc_mk_ac, "icc-mk-ac", &x.icc_mk, &ctx);
        assert_eq!(
            out.icc_mk_ac.kcv.as_deref(),
            Some(hex::encode_upper(x.kcv_tdes).as_str()),
            "{ctx}: the vector's KCV"
        );
        assert_tdes(
            k,
            &out.icc_mk_smi,
            "icc-mk-smi",
            &emv_option_a(smi, &x.pan, &x.psn),
            &ctx,
        );
        assert_tdes(
            k,
            &out.icc_mk_smc,
            "icc-mk-smc",
            &emv_option_a(smc, &x.pan, &x.psn),
            &ctx,
        );
        assert_eq!(out.psn, psn);
        let n = x.pan.len();
        assert_eq!(
            out.pan_masked,
            format!("{}{}{}", &x.pan[..6], "*".repeat(n - 10), &x.pan[n - 4..])
        );
        assert_eq!(out.binding, "new", "{ctx}");
        assert_eq!(out.wrapping, wrapping(), "{ctx}");
    }
    assert_eq!(p.snapshot().await, before);
    // The trail has the PAN masked (and its keyed hash), never in clear.
    let recs = p
        .search(AuditFilter {
            action: Some(EMV_ACTION.into()),
            ..Default::default()
        })
        .await;
    assert_eq!(recs.len(), 2 * v.emv_option_a.len(), "attempt and success");
    for rec in &recs {
        let json = serde_json::to_string(&rec.event).unwrap();
        for x in &v.emv_option_a {
            assert!(!json.contains(&x.pan), "{json}");
        }
        assert!(rec.event.details.contains_key("pan_hmac"), "{json}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn km_4_key_metadata_lists_only_the_callers_tenant_and_never_a_value() {
    let v = KnownAnswers::load().unwrap();
    let kms = kms_with_keks(&[TENANT_A, TENANT_B]).await;
    let x2 = &v.scp02[0];
    let x3 = &v.scp03[0];
    import_scp02_set(&kms, TENANT_A, "s2", x2).await;
    import_scp03_set(&kms, TENANT_A, "s3", x3, true).await;
    import_imks(&kms, TENANT_A, "imk", imk_values(&v, 0)).await;
    import_scp02_set(&kms, TENANT_B, "b2", &v.scp02[1]).await;
    // Same name in both tenants: each sees its own.
    import_scp02_set(&kms, TENANT_B, "s2", &v.scp02[2]).await;
    let p = Prov::start(kms).await;
    let before = p.snapshot().await;

    // What each of issuer-a's keys is, with its value (for the KCV and for
    // making sure the value never appears).
    let dek3 = scp03_dek(x3);
    let [ac, smi, smc] = imk_values(&v, 0);
    let a_keys: Vec<(&str, &str, &str, bool, Vec<u8>)> = vec![
        (KEK, "transport-kek", "aes-128", false, TRANSPORT_A.to_vec()),
        ("s2-enc", "sd-enc", "tdes-2key", false, x2.k_enc.to_vec()),
        ("s2-mac", "sd-mac", "tdes-2key", false, x2.k_mac.to_vec()),
        ("s2-dek", "sd-dek", "tdes-2key", false, x2.k_dek.to_vec()),
        ("s3-enc", "sd-enc", "aes-128", false, x3.k_enc.clone()),
        ("s3-mac", "sd-mac", "aes-128", false, x3.k_mac.clone()),
        ("s3-dek", "sd-dek", "aes-128", true, dek3.clone()),
        ("imk-ac", "imk-ac", "tdes-2key", false, ac.to_vec()),
        ("imk-smi", "imk-smi", "tdes-2key", false, smi.to_vec()),
        ("imk-smc", "imk-smc", "tdes-2key", false, smc.to_vec()),
    ];
    let mut c = p.client(&p.pki.provisioner).await;
    let list = c.keys().await.unwrap();
    let mut names: Vec<&str> = list.keys.iter().map(|k| k.name.as_str()).collect();
    names.sort_unstable();
    let mut want: Vec<&str> = a_keys.iter().map(|k| k.0).collect();
    want.sort_unstable();
    assert_eq!(names, want);
    for (n, usage, alg, exportable, value) in &a_keys {
        let m = list.keys.iter().find(|k| k.name == *n).unwrap();
        assert_eq!(m.tenant, TENANT_A, "{m:?}");
        assert_eq!(m.usage, *usage, "{m:?}");
        assert_eq!(m.algorithm, *alg, "{m:?}");
        assert_eq!(m.exportable, *exportable, "{m:?}");
        assert_eq!(m.trusted, *n == KEK, "{m:?}");
        assert_eq!(m.state, "active");
        assert_eq!(m.version, 1);
        assert!(m.activated_at.is_some() && m.expires_at.is_some(), "{m:?}");
        let kcv = if alg.starts_with("aes") {
            aes_kcv(value)
        } else {
            tdes_kcv(value)
        };
        assert_eq!(m.kcv.as_deref(), Some(hex::encode_upper(kcv).as_str()));
        // One key: the same metadata.
        assert_eq!(&c.key(n).await.unwrap(), m);
    }
    // Never a value, in any spelling, in either answer.
    let raw = p.send(&mut c, RawRequest::get("/v1/keys")).await;
    let one = p.send(&mut c, RawRequest::get("/v1/keys/s3-dek")).await;
    for body in [raw.text(), one.text()] {
        for (_, _, _, _, value) in &a_keys {
            assert!(!body.contains(&hex::encode_upper(value)), "{body}");
            assert!(!body.contains(&hex::encode(value)), "{body}");
        }
    }
    // The read is recorded under the caller's request id.
    let rid = raw.request_id.clone().unwrap();
    assert_eq!(p.successes("key.list", &rid).await, 1);

    // issuer-b's provisioner sees issuer-b's keys only.
    let mut b = p.client(&p.pki.provisioner_b).await;
    let list_b = b.keys().await.unwrap();
    let mut names_b: Vec<&str> = list_b.keys.iter().map(|k| k.name.as_str()).collect();
    names_b.sort_unstable();
    assert_eq!(
        names_b,
        [
            "b2-dek",
            "b2-enc",
            "b2-mac",
            "s2-dek",
            "s2-enc",
            "s2-mac",
            "transport"
        ]
    );
    assert!(list_b.keys.iter().all(|k| k.tenant == TENANT_B));
    let s2_b = b.key("s2-enc").await.unwrap();
    assert_eq!(s2_b.tenant, TENANT_B);
    assert_eq!(
        s2_b.kcv.as_deref(),
        Some(hex::encode_upper(tdes_kcv(&v.scp02[2].k_enc)).as_str())
    );
    // And issuer-a cannot reach b2 by name: its own tenant has none.
    let r = p.send(&mut c, RawRequest::get("/v1/keys/b2-enc")).await;
    assert_problem(&r, 404, "unknown-key");
    assert_eq!(p.snapshot().await, before);
}

// ---------------------------------------------------------------------------
// 4. INT-1: every answer is signed over its request id and body

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn int_1_every_answer_is_signed_over_its_request_id_and_body() {
    let v = KnownAnswers::load().unwrap();
    let p = standard(&v).await;
    let mut c = p.client(&p.pki.provisioner).await;

    // The key: as /v1/signing-key says, and as the client pinned it.
    let doc = c.signing_key().await.unwrap();
    assert_eq!(doc.key_id, key_id(&p.signing_key));
    assert_eq!(c.signing_key_id(), doc.key_id);
    assert_eq!(
        VerifyingKey::from_public_key_pem(&doc.public_key_pem).unwrap(),
        p.signing_key
    );

    // Successes, each endpoint (`send` verifies each with p256 here).
    let x3 = &v.scp03[0];
    let r = p
        .send(&mut c, post(SCP03_PATH, &scp03_request("s3", x3)))
        .await;
    let _: Scp03SessionResponse = ok(&r);
    let r = p
        .send(&mut c, post(SCP02_PATH, &scp02_request("s2", &v.scp02[0])))
        .await;
    let _: Scp02SessionResponse = ok(&r);
    let r = p
        .send(
            &mut c,
            post(EMV_PATH, &emv_request("imk", PAN_1, 1, SE_1, SD_1)),
        )
        .await;
    let _: wire::EmvCardKeysResponse = ok(&r);
    let _: wire::KeyList = ok(&p.send(&mut c, RawRequest::get("/v1/keys")).await);
    let _: wire::KeyMetadata = ok(&p.send(&mut c, RawRequest::get("/v1/keys/s2-enc")).await);
    let _: wire::SigningKey = ok(&p.send(&mut c, RawRequest::get("/v1/signing-key")).await);
    let r = p.send(&mut c, RawRequest::get("/v1/openapi.json")).await;
    assert_eq!(r.status.as_u16(), 200);
    for path in ["/v1/health", "/v1/ready"] {
        let r = p.send(&mut c, RawRequest::get(path)).await;
        assert_eq!(r.status.as_u16(), 200, "{path}: {}", r.text());
    }

    // Problem answers, signed all the same: over the request id...
    let replayed = rid("replayed");
    p.send(&mut c, with_id(RawRequest::get("/v1/keys"), &replayed))
        .await;
    let r = p
        .send(&mut c, with_id(RawRequest::get("/v1/keys"), &replayed))
        .await;
    assert_problem(&r, 409, "replayed-request");
    let stale = OffsetDateTime::now_utc() - time::Duration::minutes(10);
    let r = p
        .send(
            &mut c,
            RawRequest::get("/v1/keys").timestamp_at(stale).unwrap(),
        )
        .await;
    assert_problem(&r, 409, "stale-request");
    let r = p.send(&mut c, RawRequest::post_json(SCP03_PATH, "{")).await;
    assert_problem(&r, 400, "invalid-request");
    let mut wrong = scp03_request("s3", x3);
    wrong.card_cryptogram = "0000000000000000".into();
    let r = p.send(&mut c, post(SCP03_PATH, &wrong)).await;
    assert_problem(&r, 422, "card-cryptogram");
    let r = p.send(&mut c, RawRequest::get("/v1/keys/nothing")).await;
    assert_problem(&r, 404, "unknown-key");
    let r = p.send(&mut c, RawRequest::get("/v1/nowhere")).await;
    assert_eq!(r.status.as_u16(), 404);
    let r = p
        .send(&mut c, RawRequest::post_json("/v1/keys", "{}"))
        .await;
    assert_eq!(r.status.as_u16(), 405);
    // ... and over the empty id when the request had none (or an invalid one).
    let r = p
        .send(&mut c, RawRequest::get("/v1/keys").without_request_id())
        .await;
    assert_problem(&r, 400, "invalid-envelope");
    assert_eq!(r.header(wire::REQUEST_ID), None, "no id, none echoed");
    let r = p
        .send(&mut c, RawRequest::get("/v1/keys").request_id("short"))
        .await;
    assert_problem(&r, 400, "invalid-envelope");
    // Another principal's refusal is signed too.
    let mut officer = p.client(&p.pki.officer).await;
    let r = p.send(&mut officer, RawRequest::get("/v1/keys")).await;
    assert_problem(&r, 403, "forbidden");

    // The signature binds the body and the request id: checked with p256
    // directly, a changed body or another id does not verify.
    let r = p
        .send(&mut c, post(SCP03_PATH, &scp03_request("s3", x3)))
        .await;
    let id = r.request_id.clone().unwrap();
    let sig =
        Signature::from_slice(&hex::decode(r.header(wire::SIGNATURE).unwrap()).unwrap()).unwrap();
    assert!(p
        .signing_key
        .verify(&wire::signed_message(&id, &r.body), &sig)
        .is_ok());
    let mut body = r.body.clone();
    let last = body.len() - 2;
    body[last] ^= 0x01;
    assert!(p
        .signing_key
        .verify(&wire::signed_message(&id, &body), &sig)
        .is_err());
    assert!(p
        .signing_key
        .verify(&wire::signed_message(&rid("other"), &r.body), &sig)
        .is_err());
}

// ---------------------------------------------------------------------------
// 2. Refusals

/// TSM-DATA-4: without a certificate of the CA, valid now and not revoked,
/// the provisioning listener does not even finish the handshake; each
/// refusal is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tsm_data_4_no_certificate_wrong_ca_expired_or_revoked_fail_the_handshake() {
    let v = KnownAnswers::load().unwrap();
    let p = standard(&v).await;
    let before = p.snapshot().await;
    let cases: [(Option<&ClientCert>, AlertDescription, &str); 4] = [
        (
            None,
            AlertDescription::CertificateRequired,
            "no-certificate",
        ),
        (
            Some(&p.pki.foreign),
            AlertDescription::UnknownCA,
            "unknown-issuer",
        ),
        (
            Some(&p.pki.expired),
            AlertDescription::CertificateExpired,
            "expired",
        ),
        (
            Some(&p.pki.revoked),
            AlertDescription::CertificateRevoked,
            "revoked",
        ),
    ];
    for (who, alert, label) in &cases {
        let cfg = p.pki.client_config(p.addr, *who, Some(p.signing_key));
        let res = match ProvisioningClient::connect(cfg).await {
            Ok(mut c) => c
                .scp03_session(&scp03_request("s3", &v.scp03[0]))
                .await
                .map(|_| ()),
            Err(e) => Err(e),
        };
        match res {
            Err(ClientError::Tls(rustls::Error::AlertReceived(got))) => {
                assert_eq!(got, *alert, "{label}")
            }
            other => panic!("{label}: expected a TLS alert, got {other:?}"),
        }
    }
    // Recorded just after the alert is sent: wait for the records. The
    // client retries a connection that failed before its request was sent
    // once, so each attempt is one or two refused handshakes.
    let labels: Vec<&str> = cases.iter().map(|c| c.2).collect();
    let mut recs = Vec::new();
    for _ in 0..100 {
        recs = p
            .search(AuditFilter {
                action: Some("api.tls.handshake".into()),
                outcome: Some(Outcome::Refused),
                ..Default::default()
            })
            .await;
        let all = labels.iter().all(|l| {
            recs.iter()
                .any(|r| r.event.details.get("error").map(String::as_str) == Some(*l))
        });
        if all {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        (cases.len()..=2 * cases.len()).contains(&recs.len()),
        "{recs:#?}"
    );
    for (who, _, label) in &cases {
        let mine: Vec<&AuditRecord> = recs
            .iter()
            .filter(|r| r.event.details.get("error").map(String::as_str) == Some(*label))
            .collect();
        assert!(!mine.is_empty(), "{label} recorded: {recs:#?}");
        for rec in mine {
            assert_eq!(
                rec.event.details.get("listener").map(String::as_str),
                Some("provisioning")
            );
            match who {
                None => assert_eq!(rec.event.actor, "anonymous"),
                Some(c) => {
                    assert_eq!(rec.event.actor, c.actor());
                    assert_eq!(
                        rec.event
                            .details
                            .get("presented_cert_sha256")
                            .map(String::as_str),
                        Some(c.sha256.as_str())
                    );
                }
            }
        }
    }
    // Nothing was served.
    assert!(p
        .search(AuditFilter {
            action: Some(SCP03_ACTION.into()),
            ..Default::default()
        })
        .await
        .is_empty());
    assert_eq!(p.snapshot().await, before);
}

/// TSM-AC-3: only a provisioner bound to a tenant uses the provisioning
/// API; the officer's certificate (valid on the admin listener) is refused
/// here, and so are an operator's and an unmapped one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tsm_ac_3_the_officers_certificate_on_the_provisioning_listener_is_forbidden() {
    let v = KnownAnswers::load().unwrap();
    let p = standard(&v).await;
    let before = p.snapshot().await;
    let req = scp03_request("s3", &v.scp03[0]);
    for (who, code, actor_name) in [
        (&p.pki.officer, "forbidden", OFFICER.to_owned()),
        (&p.pki.operator, "forbidden", OPERATOR.to_owned()),
        (
            &p.pki.unmapped,
            "unknown-certificate",
            p.pki.unmapped.actor(),
        ),
    ] {
        let mut c = p.client(who).await;
        let id = rid("role");
        let r = p.send(&mut c, with_id(post(SCP03_PATH, &req), &id)).await;
        assert_problem(&r, 403, code);
        let rec = p.refusal(SCP03_ACTION, &id, code).await;
        assert_eq!(rec.event.actor, actor_name);
        assert_eq!(
            rec.event.details.get("cert_sha256").map(String::as_str),
            Some(who.sha256.as_str())
        );
        assert_eq!(
            rec.event.details.get("listener").map(String::as_str),
            Some("provisioning")
        );
        // Reads too.
        let id = rid("role-read");
        let r = p
            .send(&mut c, with_id(RawRequest::get("/v1/keys"), &id))
            .await;
        assert_problem(&r, 403, code);
        p.refusal("key.list", &id, code).await;
        assert_eq!(p.snapshot().await, before);
    }
    // The same request from the provisioner is served: only the role was
    // wrong, and the refusals changed nothing (the card challenge is new).
    let mut c = p.client(&p.pki.provisioner).await;
    let out = c.scp03_session(&req).await.unwrap();
    assert!(!out.card_challenge_reused);
}

/// KM-4: a provisioner naming another tenant gets 403 other-tenant, the
/// same answer whether the key exists there or not (no oracle), on every
/// derivation; the refusal is recorded; nothing changes; and the other
/// tenant's own provisioner is served with those keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn km_4_another_tenants_key_is_refused_alike_whether_or_not_it_exists() {
    let v = KnownAnswers::load().unwrap();
    let kms = kms_with_keks(&[TENANT_A, TENANT_B]).await;
    let x2 = &v.scp02[0];
    let x3 = &v.scp03[0];
    import_scp02_set(&kms, TENANT_B, "b2", x2).await;
    import_scp03_set(&kms, TENANT_B, "b3", x3, true).await;
    import_imks(&kms, TENANT_B, "bimk", imk_values(&v, 0)).await;
    let p = Prov::start(kms).await;
    let before = p.snapshot().await;
    let mut a = p.client(&p.pki.provisioner).await;

    let other = Some(TENANT_B.to_owned());
    let cases: Vec<(&str, &str, RawRequest, RawRequest)> = vec![
        (
            SCP02_PATH,
            SCP02_ACTION,
            post(
                SCP02_PATH,
                &Scp02SessionRequest {
                    tenant: other.clone(),
                    ..scp02_request("b2", x2)
                },
            ),
            post(
                SCP02_PATH,
                &Scp02SessionRequest {
                    tenant: other.clone(),
                    ..scp02_request("ghost", x2)
                },
            ),
        ),
        (
            SCP03_PATH,
            SCP03_ACTION,
            post(
                SCP03_PATH,
                &Scp03SessionRequest {
                    tenant: other.clone(),
                    ..scp03_request("b3", x3)
                },
            ),
            post(
                SCP03_PATH,
                &Scp03SessionRequest {
                    tenant: other.clone(),
                    ..scp03_request("ghost", x3)
                },
            ),
        ),
        (
            EMV_PATH,
            EMV_ACTION,
            post(
                EMV_PATH,
                &EmvCardKeysRequest {
                    tenant: other.clone(),
                    ..emv_request("bimk", PAN_1, 1, SE_1, SD_1)
                },
            ),
            post(
                EMV_PATH,
                &EmvCardKeysRequest {
                    tenant: other.clone(),
                    ..emv_request("ghost", PAN_1, 1, SE_1, SD_1)
                },
            ),
        ),
    ];
    for (path, action, existing, missing) in cases {
        let (id1, id2) = (rid("exists"), rid("missing"));
        let r1 = p.send(&mut a, with_id(existing, &id1)).await;
        let r2 = p.send(&mut a, with_id(missing, &id2)).await;
        let p1 = assert_problem(&r1, 403, "other-tenant");
        let p2 = assert_problem(&r2, 403, "other-tenant");
        assert_eq!(sans_id(p1), sans_id(p2), "{path}: the same answer");
        for id in [&id1, &id2] {
            let rec = p.refusal(action, id, "other-tenant").await;
            assert_eq!(rec.event.actor, PROVISIONER);
            assert_eq!(rec.event.tenant.as_deref(), Some(TENANT_B));
            assert!(
                rec.event.details["policy"].contains("km-4-tenant-isolation"),
                "{rec:#?}"
            );
            // Nothing was attempted in the service.
            assert_eq!(p.records_of(id).await.len(), 1, "{path}");
        }
        assert_eq!(p.snapshot().await, before, "{path}");
    }

    // issuer-b's provisioner is served with these keys: they exist, and the
    // refusals left the card's counter and the SD unbound.
    let mut b = p.client(&p.pki.provisioner_b).await;
    let out = b.scp02_session(&scp02_request("b2", x2)).await.unwrap();
    assert_tdes(&TRANSPORT_B, &out.s_enc, "s-enc", &x2.s_enc, "issuer-b");
    let out = b.scp03_session(&scp03_request("b3", x3)).await.unwrap();
    assert!(!out.card_challenge_reused);
    assert_aes(&TRANSPORT_B, &out.s_mac, "s-mac", &x3.s_mac, "issuer-b");
    let out = b
        .emv_card_keys(&emv_request("bimk", PAN_2, 1, SE_1, SD_1))
        .await
        .unwrap();
    assert_eq!(out.binding, "new");
    // And issuer-a, naming its own tenant explicitly, has no such key.
    let r = p
        .send(
            &mut a,
            post(
                SCP03_PATH,
                &Scp03SessionRequest {
                    tenant: Some(TENANT_A.into()),
                    ..scp03_request("b3", x3)
                },
            ),
        )
        .await;
    assert_problem(&r, 404, "unknown-key");
}

/// KM-4 (policy): only active keys of the right usage, and a trusted
/// transport KEK, are used: a suspended, deactivated or destroyed key, an
/// untrusted transport KEK and a key in the wrong role get 403
/// not-permitted, recorded with the policy's digest, and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn km_4_suspended_deactivated_destroyed_or_untrusted_keys_are_not_permitted() {
    let v = KnownAnswers::load().unwrap();
    let kms = kms_with_keks(&[TENANT_A]).await;
    let x3 = &v.scp03[0];
    for set in ["suspended", "deactivated", "destroyed", "fine"] {
        import_scp03_set(&kms, TENANT_A, set, x3, true).await;
    }
    kms.svc()
        .create(
            &actor("alice"),
            create_req(
                TENANT_A,
                "untrusted",
                Algorithm::Aes128,
                KeyUsage::TransportKek,
                false,
            ),
        )
        .await
        .unwrap();
    let p = Prov::start(kms).await;
    let svc = p.kms.svc();
    let (t, who) = (tenant(TENANT_A), actor("alice"));
    svc.transition(
        &who,
        &t,
        &name("suspended-mac"),
        None,
        Transition::Suspend,
        Some("test"),
    )
    .await
    .unwrap();
    for n in ["deactivated-enc", "destroyed-dek"] {
        svc.transition(
            &who,
            &t,
            &name(n),
            None,
            Transition::Deactivate,
            Some("test"),
        )
        .await
        .unwrap();
    }
    destroy_approved(svc, TENANT_A, "destroyed-dek", 1)
        .await
        .unwrap();

    let mut c = p.client(&p.pki.provisioner).await;
    let before = p.snapshot().await;
    let mut untrusted = scp03_request("fine", x3);
    untrusted.transport_kek = "untrusted".into();
    // A static key where the transport KEK goes: the usage does not fit.
    let mut wrong_role = scp03_request("fine", x3);
    wrong_role.transport_kek = "fine-enc".into();
    let cases = [
        ("suspended", scp03_request("suspended", x3), "suspended"),
        (
            "deactivated",
            scp03_request("deactivated", x3),
            "deactivated",
        ),
        ("destroyed", scp03_request("destroyed", x3), "destroyed"),
        ("untrusted transport KEK", untrusted, "active transport-kek"),
        ("static key as KEK", wrong_role, "active sd-enc"),
    ];
    for (label, req, what) in cases {
        let id = rid("policy");
        let r = p.send(&mut c, with_id(post(SCP03_PATH, &req), &id)).await;
        let prob = assert_problem(&r, 403, "not-permitted");
        assert!(
            prob.detail.as_deref().unwrap_or_default().contains(what),
            "{label}: {prob:?}"
        );
        let rec = p.refusal(SCP03_ACTION, &id, "not-permitted").await;
        assert!(
            rec.event.details["policy"].starts_with(&format!(
                "digest {}",
                kms::authz::Authorizer::default_policies().unwrap().digest()
            )),
            "{label}: {rec:#?}"
        );
        assert_eq!(p.records_of(&id).await.len(), 1, "{label}");
        assert_eq!(p.snapshot().await, before, "{label}");
    }
    // Metadata: readable while suspended or deactivated, not once destroyed.
    let m = c.key("deactivated-enc").await.unwrap();
    assert_eq!(m.state, "deactivated");
    let m = c.key("suspended-mac").await.unwrap();
    assert_eq!(m.state, "suspended");
    let id = rid("destroyed-read");
    let r = p
        .send(
            &mut c,
            with_id(RawRequest::get("/v1/keys/destroyed-dek"), &id),
        )
        .await;
    assert_problem(&r, 403, "not-permitted");
    p.refusal("key.show", &id, "not-permitted").await;
    let list = c.keys().await.unwrap();
    assert!(list.keys.iter().all(|k| k.name != "destroyed-dek"));
    // The same card answer with an active key set is served.
    let out = c.scp03_session(&scp03_request("fine", x3)).await.unwrap();
    check_scp03_software(&out, x3, x3.card_challenge, "fine");
    assert_eq!(p.snapshot().await, before);
}

/// REPLAY-1: a request id is used once per principal, on any endpoint, and
/// across a restart (the ids are in the database). The replay is refused
/// 409 replayed-request, recorded, and not served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_1_a_replayed_request_id_is_refused_and_not_served() {
    let v = KnownAnswers::load().unwrap();
    let kms = kms_with_keks(&[TENANT_A, TENANT_B]).await;
    import_scp03_set(&kms, TENANT_A, "s3", &v.scp03[0], true).await;
    let p = Prov::start(kms).await;
    let mut c = p.client(&p.pki.provisioner).await;
    let x3 = &v.scp03[0];
    let id = rid("once");
    let r = p
        .send(
            &mut c,
            with_id(post(SCP03_PATH, &scp03_request("s3", x3)), &id),
        )
        .await;
    let _: Scp03SessionResponse = ok(&r);
    assert_eq!(p.successes(SCP03_ACTION, &id).await, 1);

    let before = p.snapshot().await;
    let r = p
        .send(
            &mut c,
            with_id(post(SCP03_PATH, &scp03_request("s3", x3)), &id),
        )
        .await;
    let prob = assert_problem(&r, 409, "replayed-request");
    assert!(prob.detail.unwrap().contains(&id));
    p.refusal(SCP03_ACTION, &id, "replayed-request").await;
    // Not served: still one session, and the card challenge was not seen
    // again (it would have been flagged).
    assert_eq!(p.successes(SCP03_ACTION, &id).await, 1);
    assert!(p
        .search(AuditFilter {
            action: Some("session.card-challenge-reused".into()),
            ..Default::default()
        })
        .await
        .is_empty());
    assert_eq!(p.snapshot().await, before);

    // Per principal, whatever the endpoint.
    let r = p
        .send(&mut c, with_id(RawRequest::get("/v1/keys"), &id))
        .await;
    assert_problem(&r, 409, "replayed-request");
    p.refusal("key.list", &id, "replayed-request").await;
    // Another principal's ids are its own.
    let mut b = p.client(&p.pki.provisioner_b).await;
    let r = p
        .send(&mut b, with_id(RawRequest::get("/v1/keys"), &id))
        .await;
    let _: wire::KeyList = ok(&r);
    let served = p
        .search(AuditFilter {
            action: Some("key.list".into()),
            outcome: Some(Outcome::Success),
            request_id: Some(id.clone()),
            ..Default::default()
        })
        .await;
    assert_eq!(served.len(), 1);
    assert_eq!(served[0].event.actor, PROVISIONER_B);

    // Across a restart of the server, on the same database.
    let Prov {
        kms,
        pki,
        _server: server,
        signing_key,
        ..
    } = p;
    server.stop().await;
    let server = kms::server::start(&pki.settings(), kms.svc().clone())
        .await
        .unwrap();
    let p = Prov {
        addr: server.addr_prov,
        _server: server,
        kms,
        pki,
        signing_key,
    };
    let mut c = p.client(&p.pki.provisioner).await;
    let r = p
        .send(
            &mut c,
            with_id(post(SCP03_PATH, &scp03_request("s3", x3)), &id),
        )
        .await;
    assert_problem(&r, 409, "replayed-request");
    assert_eq!(p.successes(SCP03_ACTION, &id).await, 1);
    assert_eq!(p.snapshot().await, before);
}

/// REPLAY-1: a timestamp outside the window (10 minutes old, or ahead) is
/// 409 stale-request, recorded, and changes nothing (not even the card's
/// sequence counter: the same exchange, sent in time, is served).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_1_a_stale_or_future_timestamp_is_refused() {
    let v = KnownAnswers::load().unwrap();
    let p = standard(&v).await;
    let mut c = p.client(&p.pki.provisioner).await;
    let before = p.snapshot().await;
    let x2 = &v.scp02[0];
    let now = OffsetDateTime::now_utc();
    for (label, at) in [
        ("ten minutes old", now - time::Duration::minutes(10)),
        ("ten minutes ahead", now + time::Duration::minutes(10)),
    ] {
        let id = rid("stale");
        let req = with_id(post(SCP02_PATH, &scp02_request("s2", x2)), &id)
            .timestamp_at(at)
            .unwrap();
        let r = p.send(&mut c, req).await;
        assert_problem(&r, 409, "stale-request");
        p.refusal(SCP02_ACTION, &id, "stale-request").await;
        assert_eq!(p.records_of(&id).await.len(), 1, "{label}");
        assert_eq!(p.snapshot().await, before, "{label}");
    }
    let out = c.scp02_session(&scp02_request("s2", x2)).await.unwrap();
    assert_tdes(&TRANSPORT_A, &out.s_enc, "s-enc", &x2.s_enc, "in time");
}

/// REPLAY-1: without kms-request-id or kms-timestamp (or with malformed
/// ones) nothing is served: 400 invalid-envelope, recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_1_missing_or_malformed_envelope_headers_are_invalid_envelope() {
    let v = KnownAnswers::load().unwrap();
    let p = standard(&v).await;
    let mut c = p.client(&p.pki.provisioner).await;
    let before = p.snapshot().await;
    let body = || post(SCP03_PATH, &scp03_request("s3", &v.scp03[0]));

    // No usable request id: recorded without one.
    for (label, req) in [
        ("no request id", body().without_request_id()),
        ("too short", body().request_id("short")),
        ("bad characters", body().request_id("has spaces in it")),
        ("too long", body().request_id("x".repeat(65))),
    ] {
        let r = p.send(&mut c, req).await;
        let prob = assert_problem(&r, 400, "invalid-envelope");
        assert!(prob.detail.unwrap().contains(wire::REQUEST_ID), "{label}");
    }
    let recs: Vec<AuditRecord> = p
        .search(AuditFilter {
            action: Some(SCP03_ACTION.into()),
            outcome: Some(Outcome::Refused),
            ..Default::default()
        })
        .await;
    assert_eq!(recs.len(), 4, "{recs:#?}");
    for rec in &recs {
        assert_eq!(rec.event.request_id, None);
        assert_eq!(rec.event.actor, PROVISIONER);
        assert_eq!(
            rec.event.details.get("code").map(String::as_str),
            Some("invalid-envelope")
        );
    }
    // A request id but no usable timestamp: recorded under the id.
    for (label, req) in [
        ("no timestamp", body().without_timestamp()),
        ("not RFC 3339", body().timestamp("yesterday")),
        ("no offset", body().timestamp("2025-01-01T10:00:00")),
    ] {
        let id = rid("ts");
        let r = p.send(&mut c, with_id(req, &id)).await;
        let prob = assert_problem(&r, 400, "invalid-envelope");
        assert!(prob.detail.unwrap().contains(wire::TIMESTAMP), "{label}");
        p.refusal(SCP03_ACTION, &id, "invalid-envelope").await;
    }
    assert!(p
        .search(AuditFilter {
            action: Some(SCP03_ACTION.into()),
            outcome: Some(Outcome::Success),
            ..Default::default()
        })
        .await
        .is_empty());
    assert_eq!(p.snapshot().await, before);
}

/// REPLAY-1: SCP02's sequence counter must increase per card: the same or
/// a lower counter (each with a valid card cryptogram) is 409
/// sequence-counter, recorded, with nothing changed; a higher one is served
/// with the session a card would compute for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_1_an_scp02_sequence_counter_that_does_not_increase_is_refused() {
    let v = KnownAnswers::load().unwrap();
    let kms = kms_with_keks(&[TENANT_A]).await;
    let x = &v.scp02[0];
    import_scp02_set(&kms, TENANT_A, "card-1", x).await;
    import_scp02_set(&kms, TENANT_A, "card-2", x).await;
    let p = Prov::start(kms).await;
    let mut c = p.client(&p.pki.provisioner).await;
    let seq = x.sequence_counter;
    let out = c.scp02_session(&scp02_request("card-1", x)).await.unwrap();
    assert_tdes(&TRANSPORT_A, &out.s_enc, "s-enc", &x.s_enc, "first");

    let before = p.snapshot().await;
    let card = [0x5A, 0x01, 0x02, 0x03, 0x04, 0x05];
    for (label, s) in [("equal", seq), ("lower", seq_plus(seq, -1))] {
        let id = rid("seq");
        let req = scp02_card_says("card-1", x, s, card);
        let r = p.send(&mut c, with_id(post(SCP02_PATH, &req), &id)).await;
        let prob = assert_problem(&r, 409, "sequence-counter");
        assert!(
            prob.detail
                .as_deref()
                .unwrap()
                .contains(&hex::encode_upper(s)),
            "{label}: {prob:?}"
        );
        let rec = p.refusal(SCP02_ACTION, &id, "sequence-counter").await;
        assert!(
            rec.event
                .reason
                .as_deref()
                .unwrap()
                .contains("does not increase"),
            "{rec:#?}"
        );
        assert_eq!(
            rec.event
                .details
                .get("sequence_counter")
                .map(String::as_str),
            Some(hex::encode_upper(s).as_str())
        );
        assert_eq!(p.snapshot().await, before, "{label}");
    }
    // A KDD the undiversified keys do not use buys no fresh counter: the
    // replay state's card is what determines the keys.
    let mut with_kdd = scp02_card_says("card-1", x, seq, card);
    with_kdd.kdd = Some("0102030405060708090A".into());
    let id = rid("seq-kdd");
    let r = p
        .send(&mut c, with_id(post(SCP02_PATH, &with_kdd), &id))
        .await;
    assert_problem(&r, 409, "sequence-counter");
    assert_eq!(p.snapshot().await, before, "kdd");
    // Higher: served, with the keys and host cryptogram of that counter.
    let higher = seq_plus(seq, 1);
    let r = p
        .send(
            &mut c,
            post(SCP02_PATH, &scp02_card_says("card-1", x, higher, card)),
        )
        .await;
    let out: Scp02SessionResponse = ok(&r);
    check_scp02_software(&out, x, higher, card, "higher counter");
    assert!(!out.card_challenge_reused);
    // Per card: another key set (card) has its own counter.
    let out = c
        .scp02_session(&scp02_card_says("card-2", x, seq_plus(seq, -5), card))
        .await
        .unwrap();
    check_scp02_software(&out, x, seq_plus(seq, -5), card, "another card");
    assert_eq!(p.snapshot().await, before);
}

/// KM-2: a card that does not prove it holds the static keys gets nothing:
/// 422 card-cryptogram, recorded (without the cryptogram), with no object
/// left and the SCP02 counter not consumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn km_2_a_wrong_card_cryptogram_is_refused_and_gives_nothing() {
    let v = KnownAnswers::load().unwrap();
    let p = standard(&v).await;
    let mut c = p.client(&p.pki.provisioner).await;
    let before = p.snapshot().await;
    let x2 = &v.scp02[0];
    let x3 = &v.scp03[0];
    let mut bad2 = scp02_request("s2", x2);
    let mut wrong = x2.card_cryptogram;
    wrong[7] ^= 0x01;
    bad2.card_cryptogram = hex::encode_upper(wrong);
    let mut bad3 = scp03_request("s3", x3);
    let mut wrong3 = x3.card_cryptogram;
    wrong3[0] ^= 0x80;
    bad3.card_cryptogram = hex::encode_upper(wrong3);
    for (label, req, action, sent) in [
        ("scp02", post(SCP02_PATH, &bad2), SCP02_ACTION, wrong),
        ("scp03", post(SCP03_PATH, &bad3), SCP03_ACTION, wrong3),
    ] {
        let id = rid("cryptogram");
        let r = p.send(&mut c, with_id(req, &id)).await;
        assert_problem(&r, 422, "card-cryptogram");
        let rec = p.refusal(action, &id, "card-cryptogram").await;
        assert!(rec
            .event
            .reason
            .as_deref()
            .unwrap()
            .contains("card cryptogram does not verify"));
        let json = serde_json::to_string(&rec.event).unwrap();
        assert!(!json.contains(&hex::encode_upper(sent)), "{label}: {json}");
        assert_eq!(p.snapshot().await, before, "{label}");
    }
    // The right cryptogram with the same counter and challenges is served.
    let out = c.scp02_session(&scp02_request("s2", x2)).await.unwrap();
    assert_tdes(&TRANSPORT_A, &out.s_enc, "s-enc", &x2.s_enc, "after");
    let out = c.scp03_session(&scp03_request("s3", x3)).await.unwrap();
    assert_aes(&TRANSPORT_A, &out.s_enc, "s-enc", &x3.s_enc, "after");
    assert_eq!(p.snapshot().await, before);
}

/// Bodies that are not the endpoint's JSON are 400 invalid-request,
/// recorded; their detail and record never echo a PAN or other value.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn int_1_malformed_json_unknown_fields_and_bad_values_are_invalid_request() {
    let v = KnownAnswers::load().unwrap();
    let p = standard(&v).await;
    let mut c = p.client(&p.pki.provisioner).await;
    let before = p.snapshot().await;
    let good3 = serde_json::to_value(scp03_request("s3", &v.scp03[0])).unwrap();
    let good2 = serde_json::to_value(scp02_request("s2", &v.scp02[0])).unwrap();
    let good_emv = serde_json::to_value(emv_request("imk", PAN_1, 1, SE_1, SD_1)).unwrap();
    let with = |base: &serde_json::Value, k: &str, val: serde_json::Value| {
        let mut b = base.clone();
        b[k] = val;
        serde_json::to_vec(&b).unwrap()
    };
    let pan_as_number: serde_json::Value = serde_json::from_str(PAN_1).unwrap();
    let cases: Vec<(&str, &str, &str, Vec<u8>)> = vec![
        ("not JSON", SCP03_PATH, SCP03_ACTION, b"{".to_vec()),
        ("empty", SCP02_PATH, SCP02_ACTION, Vec::new()),
        (
            "unknown field",
            SCP03_PATH,
            SCP03_ACTION,
            with(&good3, "extra", 1.into()),
        ),
        (
            "missing field",
            SCP03_PATH,
            SCP03_ACTION,
            serde_json::to_vec(&serde_json::json!({"key_set": "s3"})).unwrap(),
        ),
        (
            "host challenge of 7 bytes",
            SCP03_PATH,
            SCP03_ACTION,
            with(&good3, "host_challenge", "01020304050607".into()),
        ),
        (
            "card challenge of 8 bytes for SCP02",
            SCP02_PATH,
            SCP02_ACTION,
            with(&good2, "card_challenge", "0102030405060708".into()),
        ),
        (
            "sequence counter not hex",
            SCP02_PATH,
            SCP02_ACTION,
            with(&good2, "sequence_counter", "00ZZ".into()),
        ),
        (
            "odd hex",
            SCP03_PATH,
            SCP03_ACTION,
            with(&good3, "card_cryptogram", "123".into()),
        ),
        (
            "unknown diversification",
            SCP03_PATH,
            SCP03_ACTION,
            with(&good3, "diversification", "kdf9".into()),
        ),
        (
            "bad key name",
            SCP03_PATH,
            SCP03_ACTION,
            with(&good3, "key_set", "../etc".into()),
        ),
        (
            "PAN too short",
            EMV_PATH,
            EMV_ACTION,
            with(&good_emv, "pan", "54133300".into()),
        ),
        (
            "PAN as a number",
            EMV_PATH,
            EMV_ACTION,
            with(&good_emv, "pan", pan_as_number),
        ),
        (
            "PAN where the PSN goes",
            EMV_PATH,
            EMV_ACTION,
            with(&good_emv, "psn", PAN_1.into()),
        ),
        (
            "PSN over 99",
            EMV_PATH,
            EMV_ACTION,
            with(&good_emv, "psn", 100.into()),
        ),
        (
            "SD AID too short",
            EMV_PATH,
            EMV_ACTION,
            with(&good_emv, "sd_aid", "A000".into()),
        ),
    ];
    for (label, path, action, body) in cases {
        let id = rid("body");
        let r = p
            .send(&mut c, with_id(RawRequest::post_json(path, body), &id))
            .await;
        let prob = assert_problem(&r, 400, "invalid-request");
        let detail = prob.detail.unwrap_or_default();
        // Still says what is wrong (field names, never values).
        let says = match label {
            "not JSON" => "it ends early",
            "unknown field" => "unknown field `extra`",
            "missing field" => "missing field",
            "host challenge of 7 bytes" => "host_challenge must be 8 bytes",
            "PAN as a number" | "PAN where the PSN goes" => "wrong type",
            "PAN too short" => "must be 12 to 19 digits",
            "PSN over 99" => "psn must be 0 to 99",
            _ => "",
        };
        assert!(detail.contains(says), "{label}: {detail}");
        let rec = p.refusal(action, &id, "invalid-request").await;
        let json = serde_json::to_string(&rec.event).unwrap();
        for text in [&detail, &json] {
            assert!(!text.contains(PAN_1), "{label}: the PAN is echoed: {text}");
        }
        assert_eq!(p.snapshot().await, before, "{label}");
    }
    // A body of the wrong endpoint.
    let id = rid("other-endpoint");
    let r = p
        .send(
            &mut c,
            with_id(
                RawRequest::post_json(SCP02_PATH, serde_json::to_vec(&good3).unwrap()),
                &id,
            ),
        )
        .await;
    assert_problem(&r, 400, "invalid-request");
    p.refusal(SCP02_ACTION, &id, "invalid-request").await;
    assert_eq!(p.snapshot().await, before);
}

/// A body over 64 KiB is refused before it is read: 413
/// payload-too-large, signed like any answer, recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn int_1_an_oversized_body_is_payload_too_large() {
    let v = KnownAnswers::load().unwrap();
    let p = standard(&v).await;
    let before = p.snapshot().await;
    let mut big = serde_json::to_value(scp03_request("s3", &v.scp03[0])).unwrap();
    big["key_set"] = "s".repeat(65 * 1024).into();
    let body = serde_json::to_vec(&big).unwrap();
    assert!(body.len() > 64 * 1024);
    // The server answers 413 from Content-Length and closes; a client still
    // uploading may see the connection reset before it reads the answer.
    // The refusal is what is tested: retry until the answer is read.
    let mut answered = None;
    for _ in 0..10 {
        let mut c = p.client(&p.pki.provisioner).await;
        let id = rid("big");
        if let Ok(r) = c
            .send(with_id(
                RawRequest::post_json(SCP03_PATH, body.clone()),
                &id,
            ))
            .await
        {
            answered = Some((id, r));
            break;
        }
    }
    let (id, r) = answered.expect("an oversized body is answered 413 at least once in 10 tries");
    assert_eq!(r.signature, SignatureCheck::Valid);
    verify_independently(&p.signing_key, &r);
    assert_problem(&r, 413, "payload-too-large");
    p.refusal(SCP03_ACTION, &id, "payload-too-large").await;
    assert_eq!(p.snapshot().await, before);
}

/// TSM-DATA-1: a Security Domain holds one card's keys: another PAN (or
/// another PSN) for a bound SD is 409 sd-bound, recorded, nothing changed;
/// the same card again is served with binding "existing".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tsm_data_1_an_sd_bound_to_another_card_is_refused_and_the_same_card_is_existing() {
    let v = KnownAnswers::load().unwrap();
    let p = standard(&v).await;
    let mut c = p.client(&p.pki.provisioner).await;
    let [ac, _, _] = imk_values(&v, 0);
    let first = c
        .emv_card_keys(&emv_request("imk", PAN_1, 1, SE_1, SD_1))
        .await
        .unwrap();
    assert_eq!(first.binding, "new");
    assert_tdes(
        &TRANSPORT_A,
        &first.icc_mk_ac,
        "icc-mk-ac",
        &emv_option_a(ac, PAN_1, "01"),
        "first",
    );

    let before = p.snapshot().await;
    for (label, pan, psn) in [("another PAN", PAN_2, 1), ("another PSN", PAN_1, 2)] {
        let id = rid("sd");
        let r = p
            .send(
                &mut c,
                with_id(
                    post(EMV_PATH, &emv_request("imk", pan, psn, SE_1, SD_1)),
                    &id,
                ),
            )
            .await;
        let prob = assert_problem(&r, 409, "sd-bound");
        let detail = prob.detail.unwrap();
        assert!(detail.contains(SD_1) && detail.contains(SE_1), "{detail}");
        let rec = p.refusal(EMV_ACTION, &id, "sd-bound").await;
        // Neither PAN in clear, in the answer or the trail.
        let json = serde_json::to_string(&rec.event).unwrap();
        for text in [&detail, &json] {
            assert!(!text.contains(PAN_1) && !text.contains(PAN_2), "{text}");
        }
        assert_eq!(p.snapshot().await, before, "{label}");
    }
    // The same card again: served, the same keys, binding "existing".
    let again = c
        .emv_card_keys(&emv_request("imk", PAN_1, 1, SE_1, SD_1))
        .await
        .unwrap();
    assert_eq!(again.binding, "existing");
    for (a, b) in [
        (&first.icc_mk_ac, &again.icc_mk_ac),
        (&first.icc_mk_smi, &again.icc_mk_smi),
        (&first.icc_mk_smc, &again.icc_mk_smc),
    ] {
        assert_eq!(unwrap_key(&TRANSPORT_A, a), unwrap_key(&TRANSPORT_A, b));
        assert_eq!(a.kcv, b.kcv);
    }
    // The other card goes into another SD (SD ids are case-insensitive hex:
    // the lower-case spelling is the same SD).
    let r = p
        .send(
            &mut c,
            post(
                EMV_PATH,
                &emv_request("imk", PAN_2, 1, SE_1, &SD_1.to_lowercase()),
            ),
        )
        .await;
    assert_problem(&r, 409, "sd-bound");
    let out = c
        .emv_card_keys(&emv_request("imk", PAN_2, 1, SE_1, SD_2))
        .await
        .unwrap();
    assert_eq!(out.binding, "new");
    assert_eq!(p.snapshot().await.objects, before.objects);
}

/// REPLAY-1: a card challenge the card used before is served (the card
/// cryptogram verified) but flagged: card_challenge_reused, and a
/// `session.card-challenge-reused` record under the request's id.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_1_a_reused_card_challenge_is_served_flagged_and_audited() {
    let v = KnownAnswers::load().unwrap();
    let p = standard(&v).await;
    let mut c = p.client(&p.pki.provisioner).await;
    let before = p.snapshot().await;
    let x3 = &v.scp03[0];
    let flagged = |rid: String| AuditFilter {
        action: Some("session.card-challenge-reused".into()),
        request_id: Some(rid),
        ..Default::default()
    };

    let id1 = rid("first");
    let r = p
        .send(
            &mut c,
            with_id(post(SCP03_PATH, &scp03_request("s3", x3)), &id1),
        )
        .await;
    let out: Scp03SessionResponse = ok(&r);
    assert!(!out.card_challenge_reused);
    assert!(p.search(flagged(id1.clone())).await.is_empty());

    let id2 = rid("again");
    let r = p
        .send(
            &mut c,
            with_id(post(SCP03_PATH, &scp03_request("s3", x3)), &id2),
        )
        .await;
    let again: Scp03SessionResponse = ok(&r);
    assert!(again.card_challenge_reused);
    check_scp03_software(&again, x3, x3.card_challenge, "reused");
    let recs = p.search(flagged(id2.clone())).await;
    assert_eq!(recs.len(), 1, "{recs:#?}");
    let rec = &recs[0];
    assert_eq!(rec.event.tenant.as_deref(), Some(TENANT_A));
    assert_eq!(
        rec.event.details.get("card_challenge").map(String::as_str),
        Some(hex::encode_upper(x3.card_challenge).as_str())
    );
    assert_eq!(
        rec.event.details.get("card").map(String::as_str),
        Some("s3")
    );
    assert_eq!(p.successes(SCP03_ACTION, &id2).await, 1);
    // A new challenge is not flagged.
    let out = c
        .scp03_session(&scp03_card_says("s3", x3, [0x42; 8]))
        .await
        .unwrap();
    assert!(!out.card_challenge_reused);
    check_scp03_software(&out, x3, [0x42; 8], "new challenge");

    // SCP02 likewise: a higher counter with the same card challenge.
    let x2 = &v.scp02[0];
    let out = c.scp02_session(&scp02_request("s2", x2)).await.unwrap();
    assert!(!out.card_challenge_reused);
    let id3 = rid("scp02-again");
    let higher = seq_plus(x2.sequence_counter, 1);
    let r = p
        .send(
            &mut c,
            with_id(
                post(
                    SCP02_PATH,
                    &scp02_card_says("s2", x2, higher, x2.card_challenge),
                ),
                &id3,
            ),
        )
        .await;
    let out: Scp02SessionResponse = ok(&r);
    assert!(out.card_challenge_reused);
    check_scp02_software(&out, x2, higher, x2.card_challenge, "scp02 reused");
    assert_eq!(p.search(flagged(id3)).await.len(), 1);
    assert_eq!(p.snapshot().await, before);
}

/// TSM-AC-3 (availability): a provisioner over its rate gets 429
/// rate-limited with retry-after at once, recorded; other provisioners are
/// not affected; after the wait it is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tsm_ac_3_a_provisioner_over_its_rate_gets_429_with_retry_after() {
    let kms = kms_with_keks(&[TENANT_A, TENANT_B]).await;
    let p = Prov::start_with(
        kms,
        ProvisioningLimits {
            rate_per_principal: 1,
            burst_per_principal: 2,
            ..ProvisioningLimits::default()
        },
    )
    .await;
    let mut a = p.client(&p.pki.provisioner).await;
    let before = p.snapshot().await;
    for _ in 0..2 {
        let _: wire::KeyList = ok(&p.send(&mut a, RawRequest::get("/v1/keys")).await);
    }
    let id = rid("flood");
    let r = p
        .send(&mut a, with_id(RawRequest::get("/v1/keys"), &id))
        .await;
    assert_problem(&r, 429, "rate-limited");
    assert_eq!(r.header("retry-after"), Some("1"));
    let rec = p.refusal("key.list", &id, "rate-limited").await;
    assert_eq!(
        rec.event
            .details
            .get("suppressed_since_last")
            .map(String::as_str),
        Some("0")
    );
    // Not served.
    assert_eq!(p.successes("key.list", &id).await, 0);
    // The typed client surfaces it as a problem.
    match a.keys().await {
        Err(ClientError::Problem(prob)) => assert_eq!(prob.code, "rate-limited"),
        other => panic!("expected 429, got {other:?}"),
    }
    // Another provisioner has its own bucket.
    let mut b = p.client(&p.pki.provisioner_b).await;
    b.keys().await.unwrap();
    // After the retry-after, served again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    a.keys().await.unwrap();
    assert_eq!(p.snapshot().await, before);
}

/// TSM-AC-3 (availability): past the node's in-flight bound, requests get
/// 503 overloaded with retry-after at once (signed like any answer) rather
/// than queueing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tsm_ac_3_past_the_in_flight_bound_requests_get_503_at_once() {
    let v = KnownAnswers::load().unwrap();
    let kms = kms_with_keks(&[TENANT_A]).await;
    import_scp03_set(&kms, TENANT_A, "s3", &v.scp03[0], true).await;
    let p = std::sync::Arc::new(
        Prov::start_with(
            kms,
            ProvisioningLimits {
                max_in_flight: 1,
                ..ProvisioningLimits::default()
            },
        )
        .await,
    );
    let before = p.snapshot().await;
    let mut overloaded = 0;
    let mut served = 0;
    for _round in 0..20 {
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let p = p.clone();
            let x = v.scp03[0].clone();
            tasks.push(tokio::spawn(async move {
                let mut c = p.client(&p.pki.provisioner).await;
                let mut replies = Vec::new();
                for _ in 0..4 {
                    replies.push(
                        p.send(&mut c, post(SCP03_PATH, &scp03_request("s3", &x)))
                            .await,
                    );
                }
                replies
            }));
        }
        for t in tasks {
            for r in t.await.unwrap() {
                match r.status.as_u16() {
                    200 => served += 1,
                    503 => {
                        assert_problem(&r, 503, "overloaded");
                        assert_eq!(r.header("retry-after"), Some("1"));
                        overloaded += 1;
                    }
                    other => panic!("{other}: {}", r.text()),
                }
            }
        }
        if overloaded > 0 && served > 0 {
            break;
        }
    }
    assert!(served > 0, "some requests are served");
    assert!(overloaded > 0, "32 requests at once past a bound of 1");
    let recs = p
        .search(AuditFilter {
            action: Some("api.overloaded".into()),
            outcome: Some(Outcome::Refused),
            ..Default::default()
        })
        .await;
    assert!(!recs.is_empty());
    assert_eq!(p.snapshot().await, before);
}

// ---------------------------------------------------------------------------
// 3. KM-7: nothing derived outlives its request

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn km_7_after_successes_and_refusals_the_token_holds_the_same_objects() {
    let v = KnownAnswers::load().unwrap();
    let kms = kms_with_keks(&[TENANT_A, TENANT_B]).await;
    import_scp02_set(&kms, TENANT_A, "s2", &v.scp02[0]).await;
    import_scp03_set(&kms, TENANT_A, "s3", &v.scp03[0], true).await;
    import_scp03_set(&kms, TENANT_A, "locked", &v.scp03[1], false).await;
    import_imks(&kms, TENANT_A, "imk", imk_values(&v, 0)).await;
    import_scp03_set(&kms, TENANT_B, "b3", &v.scp03[0], true).await;
    let p = Prov::start(kms).await;
    let mut c = p.client(&p.pki.provisioner).await;
    let before = p.snapshot().await;
    let x2 = &v.scp02[0];
    let x3 = &v.scp03[0];
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for i in 0..6u8 {
        let seq = seq_plus(x2.sequence_counter, i32::from(i));
        let card2 = [i, 1, 2, 3, 4, 5];
        let card3 = [i, 9, 8, 7, 6, 5, 4, 3];
        let mut bad2 = scp02_card_says("s2", x2, seq_plus(seq, 100), card2);
        bad2.card_cryptogram = "0000000000000000".into();
        let mut bad3 = scp03_card_says("s3", x3, card3);
        bad3.card_cryptogram = "FFFFFFFFFFFFFFFF".into();
        let pan = format!("54133300890{i:05}");
        let requests = vec![
            post(SCP02_PATH, &scp02_card_says("s2", x2, seq, card2)),
            post(SCP02_PATH, &bad2),
            post(SCP02_PATH, &scp02_card_says("s2", x2, seq, card2)), // counter
            post(SCP03_PATH, &scp03_card_says("s3", x3, card3)),
            post(SCP03_PATH, &bad3),
            post(SCP03_PATH, &scp03_request("locked", &v.scp03[1])), // DEK not exportable
            post(
                SCP03_PATH,
                &Scp03SessionRequest {
                    tenant: Some(TENANT_B.into()),
                    ..scp03_request("b3", x3)
                },
            ),
            post(EMV_PATH, &emv_request("imk", &pan, i, SE_1, SD_1)), // bound after the first
            post(
                EMV_PATH,
                &emv_request("imk", &pan, i, &format!("{SE_1}{i:02X}"), SD_1),
            ),
            RawRequest::post_json(SCP03_PATH, "{\"key_set\":"),
            RawRequest::get("/v1/keys"),
        ];
        for req in requests {
            let r = p.send(&mut c, req).await;
            *statuses.entry(r.status.as_u16()).or_default() += 1;
            // After each request, not only at the end.
            assert_eq!(
                p.kms.svc().hsm().object_count().unwrap(),
                before.objects,
                "{} {}",
                r.status,
                r.text()
            );
        }
    }
    // Both kinds really happened: successes and each kind of refusal.
    for code in [200, 400, 403, 409, 422] {
        assert!(statuses.get(&code).is_some_and(|n| *n > 0), "{statuses:?}");
    }
    assert_eq!(p.snapshot().await, before);
}

// ---------------------------------------------------------------------------
// 5. The OpenAPI document

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn int_1_the_served_openapi_document_is_the_generated_and_checked_in_one() {
    let kms = kms_with_keks(&[]).await;
    let p = Prov::start(kms).await;
    let mut c = p.client(&p.pki.provisioner).await;
    let r = p.send(&mut c, RawRequest::get("/v1/openapi.json")).await;
    assert_eq!(r.status.as_u16(), 200);
    assert_eq!(r.content_type(), Some("application/json"));
    let generated = kms::server::provisioning::openapi::document();
    assert!(
        r.text() == generated,
        "GET /v1/openapi.json differs from openapi::document()"
    );
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
    let checked_in =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        checked_in == generated,
        "docs/openapi.json is not the document the server serves; \
         run `cargo run -p kms -- openapi > docs/openapi.json` and commit it"
    );
    // A valid OpenAPI document with every endpoint.
    let doc: serde_json::Value = serde_json::from_str(&generated).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        SCP02_PATH,
        SCP03_PATH,
        EMV_PATH,
        "/v1/keys",
        "/v1/keys/{name}",
        "/v1/signing-key",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} in the document");
    }
}
