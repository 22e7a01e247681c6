//! The known answers of shared/vectors/known-answers.json, reproduced by keys
//! imported from components into a real SoftHSM2 token, with every
//! derivation done inside the token and the results unwrapped in software
//! with the known transport KEK.

use kms::derivation::{parse_psn, Kdd, Pan};
use kms::model::{Algorithm, KeyUsage};
use kms::service::{Executed, ImportComponents, Operation, SdDiversification};
use kms_e2e::fixture::{actor, create_req, name, tenant, TestKms};
use kms_e2e::people::{person, session_of};
use kms_e2e::reference::{aes_key_unwrap_pad, same_des_key};
use kms_e2e::vectors::{KnownAnswers, SdMethod, VectorAlg};

const TRANSPORT: [u8; 16] = [
    0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3A, 0x3B, 0x3C, 0x3D, 0x3E, 0x3F,
];

fn unwrap_hex(wrapped: &str) -> Vec<u8> {
    aes_key_unwrap_pad(&TRANSPORT, &hex::decode(wrapped).unwrap())
        .expect("unwraps under the transport KEK")
}

#[tokio::test(flavor = "multi_thread")]
async fn km1_kcv_known_answers_through_component_import() {
    let v = KnownAnswers::load().unwrap();
    let kms = TestKms::new().await;
    for (i, k) in v.kcv.iter().enumerate() {
        let alg = match k.alg {
            VectorAlg::Tdes => Algorithm::secret(kms::model::KeyFamily::Tdes, k.key.len()),
            VectorAlg::Aes => Algorithm::secret(kms::model::KeyFamily::Aes, k.key.len()),
        }
        .unwrap();
        let components = k
            .components
            .iter()
            .map(|c| (kms::crypto::Component::from_bytes(c, alg).unwrap(), None))
            .collect();
        // TDES: the 3-byte TDES KCV; AES: alternate between X9.24 CMAC and GP.
        let expected = match (k.alg, i % 2) {
            (VectorAlg::Tdes, _) => k.kcv_tdes.clone().unwrap(),
            (VectorAlg::Aes, 0) => k.kcv_aes_cmac.clone().unwrap(),
            (VectorAlg::Aes, _) => k.kcv_aes_gp.clone().unwrap(),
        };
        let rec = kms
            .svc()
            .import_components(
                &actor("custodians"),
                ImportComponents {
                    key: create_req("issuer-a", &format!("k{i}"), alg, KeyUsage::Data, false),
                    components,
                    expected_kcv: kms::crypto::Kcv::from_bytes(&expected).unwrap(),
                },
            )
            .await
            .unwrap();
        // The token's own check value (E(zero block)) agrees with software,
        // and the other methods agree with the known answers.
        let token_kcv = rec.key.current().unwrap().kcv.clone().unwrap();
        if let Some(cmac) = &k.kcv_aes_cmac {
            assert_eq!(rec.check_values["aes-cmac"], hex::encode_upper(cmac));
            assert_eq!(
                rec.check_values["aes-gp"],
                hex::encode_upper(k.kcv_aes_gp.clone().unwrap())
            );
        }
        let soft = match k.alg {
            VectorAlg::Tdes => hex::encode_upper(kms::crypto::tdes_kcv(&k.key).unwrap()),
            VectorAlg::Aes => hex::encode_upper(kms::crypto::aes_kcv(&k.key).unwrap()),
        };
        assert_eq!(token_kcv, soft, "vector {i}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn km2_sd_diversification_in_token_matches_known_answers() {
    let v = KnownAnswers::load().unwrap();
    let mut kms = TestKms::new().await;
    kms.trusted_kek("issuer-a", "transport", Algorithm::Aes128, &TRANSPORT)
        .await;
    for (i, d) in v.sd_diversification.iter().enumerate() {
        let (alg, method) = match d.method {
            SdMethod::EmvCps11 => (Algorithm::Tdes2, SdDiversification::EmvCps11),
            SdMethod::Kdf3 => (Algorithm::Aes128, SdDiversification::Kdf3),
        };
        let kmc = format!("kmc{i}");
        kms.import("issuer-a", &kmc, alg, KeyUsage::SdKmc, false, &d.kmc)
            .await;
        let keys = kms
            .svc()
            .sd_static_keys(
                &actor("provisioner"),
                &tenant("issuer-a"),
                &name(&kmc),
                method,
                &Kdd::parse_hex(&hex::encode(d.kdd)).unwrap(),
                &name("transport"),
            )
            .await
            .unwrap();
        for (got, want) in keys.iter().zip([&d.enc, &d.mac, &d.dek]) {
            let clear = unwrap_hex(&got.wrapped);
            match d.method {
                // The vectors are not parity-adjusted; the token sets parity.
                SdMethod::EmvCps11 => assert!(same_des_key(&clear, want), "{i} {}", got.kind),
                SdMethod::Kdf3 => assert_eq!(&clear, want, "{i} {}", got.kind),
            }
            let soft = match d.method {
                SdMethod::EmvCps11 => hex::encode_upper(kms::crypto::tdes_kcv(want).unwrap()),
                SdMethod::Kdf3 => hex::encode_upper(kms::crypto::aes_kcv(want).unwrap()),
            };
            assert_eq!(
                got.kcv.as_deref(),
                Some(soft.as_str()),
                "{i} {} kcv",
                got.kind
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn km2_emv_option_a_in_token_matches_known_answers() {
    let v = KnownAnswers::load().unwrap();
    let mut kms = TestKms::new().await;
    kms.trusted_kek("issuer-a", "transport", Algorithm::Aes128, &TRANSPORT)
        .await;
    for (i, e) in v.emv_option_a.iter().enumerate() {
        let imk = format!("imk-ac-{i}");
        kms.import(
            "issuer-a",
            &imk,
            Algorithm::Tdes2,
            KeyUsage::ImkAc,
            false,
            &e.imk,
        )
        .await;
        let out = kms
            .svc()
            .emv_card_key(
                &actor("provisioner"),
                &tenant("issuer-a"),
                &name(&imk),
                &Pan::parse(&e.pan).unwrap(),
                parse_psn(&e.psn).unwrap(),
                &name("transport"),
            )
            .await
            .unwrap();
        assert_eq!(unwrap_hex(&out.wrapped), e.icc_mk.to_vec(), "vector {i}");
        assert_eq!(
            out.kcv.as_deref().map(hex::decode).unwrap().unwrap(),
            e.kcv_tdes.to_vec()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn km2_aes_key_wrap_known_answers_through_dual_control_export() {
    let v = KnownAnswers::load().unwrap();
    for (i, w) in v.aes_key_wrap.iter().enumerate() {
        let mut kms = TestKms::new().await;
        let alg = Algorithm::secret(kms::model::KeyFamily::Aes, w.kek.len()).unwrap();
        kms.trusted_kek("issuer-a", "partner-kek", alg, &w.kek)
            .await;
        let kalg = Algorithm::secret(kms::model::KeyFamily::Aes, w.key.len()).unwrap();
        kms.import("issuer-a", "payload", kalg, KeyUsage::Data, true, &w.key)
            .await;
        for (wrap, want) in [("aes-kw", &w.rfc3394), ("aes-kwp", &w.rfc5649)] {
            let op = Operation::Export {
                tenant: "issuer-a".into(),
                key: "payload".into(),
                version: None,
                kek: "partner-kek".into(),
                wrap: Some(wrap.into()),
            };
            let svc = kms.svc();
            let req = svc
                .request(&session_of(svc, "alice").await, op)
                .await
                .unwrap();
            person("bob")
                .approve_digest(svc, &req.id, &req.digest)
                .await
                .unwrap();
            let Executed::Exported(out) = svc
                .execute(&session_of(svc, "alice").await, &req.id)
                .await
                .unwrap()
            else {
                panic!("export returns the wrapped key")
            };
            assert_eq!(out.wrapped, hex::encode_upper(want), "vector {i} {wrap}");
        }
    }
}

/// KM-7: derived keys are session objects destroyed in the same call;
/// after many derivations the token holds exactly what it held before.
#[tokio::test(flavor = "multi_thread")]
async fn km7_no_derived_key_outlives_its_request() {
    let v = KnownAnswers::load().unwrap();
    let mut kms = TestKms::new().await;
    kms.trusted_kek("issuer-a", "transport", Algorithm::Aes128, &TRANSPORT)
        .await;
    let e = &v.emv_option_a[0];
    kms.import(
        "issuer-a",
        "imk",
        Algorithm::Tdes2,
        KeyUsage::ImkAc,
        false,
        &e.imk,
    )
    .await;
    let d = v
        .sd_diversification
        .iter()
        .find(|d| d.method == SdMethod::Kdf3)
        .unwrap();
    kms.import(
        "issuer-a",
        "kmc",
        Algorithm::Aes128,
        KeyUsage::SdKmc,
        false,
        &d.kmc,
    )
    .await;
    let hsm = kms.svc().hsm().clone();
    let before = hsm.object_count().unwrap();
    for i in 0..25u64 {
        let pan = Pan::parse(&format!("{}", 4_000_000_000_000_000u64 + i)).unwrap();
        kms.svc()
            .emv_card_key(
                &actor("provisioner"),
                &tenant("issuer-a"),
                &name("imk"),
                &pan,
                1,
                &name("transport"),
            )
            .await
            .unwrap();
        kms.svc()
            .sd_static_keys(
                &actor("provisioner"),
                &tenant("issuer-a"),
                &name("kmc"),
                SdDiversification::Kdf3,
                &Kdd::parse_hex(&hex::encode(d.kdd)).unwrap(),
                &name("transport"),
            )
            .await
            .unwrap();
    }
    // A refused derivation leaves nothing either.
    assert!(kms
        .svc()
        .emv_card_key(
            &actor("provisioner"),
            &tenant("issuer-a"),
            &name("imk"),
            &Pan::parse("4000000000000001").unwrap(),
            1,
            &name("imk")
        )
        .await
        .is_err());
    assert_eq!(hsm.object_count().unwrap(), before);
    // Control: the count does see session objects.
    let probe = kms::hsm::KeySpec {
        algorithm: Algorithm::Aes128,
        usage: KeyUsage::Data,
        exportable: false,
        object_id: kms::model::ObjectId::random(),
        label: "probe".into(),
        persistent: false,
    };
    hsm.generate(&probe, kms::hsm::Trust::Normal).unwrap();
    assert_eq!(hsm.object_count().unwrap(), before + 1);
    hsm.destroy(probe.object_id).unwrap();
}

/// `derive sd-keys` offers what the sessions offer: VISA2 for a TDES KMC,
/// and KDF3 static keys as long as the AES KMC (here AES-192 and AES-256),
/// checked against the software references.
#[tokio::test(flavor = "multi_thread")]
async fn km2_sd_keys_visa2_and_long_kdf3_match_the_software_references() {
    use kms_e2e::reference::{kdf3_diversify, visa2_diversify};
    let mut kms = TestKms::new().await;
    kms.trusted_kek("issuer-a", "transport", Algorithm::Aes128, &TRANSPORT)
        .await;
    let kdd: [u8; 10] = [0x00, 0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88];
    let tdes_kmc: [u8; 16] = [
        0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4A, 0x4B, 0x4C, 0x4D, 0x4E,
        0x4F,
    ];
    let aes192: Vec<u8> = (0x10u8..0x28).collect();
    let aes256: Vec<u8> = (0x30u8..0x50).collect();
    let cases: [(&str, Algorithm, &[u8], SdDiversification); 3] = [
        (
            "kmc-v2",
            Algorithm::Tdes2,
            &tdes_kmc,
            SdDiversification::Visa2,
        ),
        (
            "kmc-192",
            Algorithm::Aes192,
            &aes192,
            SdDiversification::Kdf3,
        ),
        (
            "kmc-256",
            Algorithm::Aes256,
            &aes256,
            SdDiversification::Kdf3,
        ),
    ];
    for (n, alg, value, method) in cases {
        kms.import("issuer-a", n, alg, KeyUsage::SdKmc, false, value)
            .await;
        let keys = kms
            .svc()
            .sd_static_keys(
                &actor("provisioner"),
                &tenant("issuer-a"),
                &name(n),
                method,
                &Kdd::parse_hex(&hex::encode(kdd)).unwrap(),
                &name("transport"),
            )
            .await
            .unwrap();
        let want = match method {
            SdDiversification::Visa2 => visa2_diversify(&tdes_kmc, &kdd),
            _ => kdf3_diversify(value, &kdd),
        };
        for (got, want) in keys.iter().zip([&want.enc, &want.mac, &want.dek]) {
            let clear = unwrap_hex(&got.wrapped);
            if method == SdDiversification::Visa2 {
                assert!(same_des_key(&clear, want), "{n} {}", got.kind);
            } else {
                assert_eq!(
                    clear.len(),
                    value.len(),
                    "{n} {}: as long as the KMC",
                    got.kind
                );
                assert_eq!(&clear, want, "{n} {}", got.kind);
            }
        }
    }
}
