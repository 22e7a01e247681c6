//! Invariant 5: bad input gets a clear error and changes nothing. Each case
//! snapshots the key metadata and the token's objects before and after.

use kms::crypto::{Component, Kcv};
use kms::hsm::{Hsm, HsmError, Role};
use kms::model::{Algorithm, KeyUsage, Transition};
use kms::service::{ImportComponents, ServiceError};
use kms_e2e::fixture::{
    actor, create_req, destroy_approved, export_approved, name, split, tenant, TestKms,
};

async fn snapshot(kms: &TestKms) -> (String, usize) {
    let keys = kms.svc().list(&actor("test"), None).await.unwrap();
    let objects = kms.svc().hsm().list_objects().unwrap();
    (serde_json::to_string(&keys).unwrap(), objects.len())
}

#[tokio::test(flavor = "multi_thread")]
async fn inv5_unknown_algorithm_and_usage_are_clear_errors() {
    let e = "des-56".parse::<Algorithm>().unwrap_err().to_string();
    assert!(
        e.contains("unknown algorithm") && e.contains("aes-128"),
        "{e}"
    );
    let e = "root-key".parse::<KeyUsage>().unwrap_err().to_string();
    assert!(e.contains("unknown key usage"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn inv5_wrong_usage_for_algorithm_changes_nothing() {
    let kms = TestKms::new().await;
    let before = snapshot(&kms).await;
    let e = kms
        .svc()
        .create(
            &actor("a"),
            create_req("t1", "imk", Algorithm::Aes128, KeyUsage::ImkAc, false),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::Invalid(_)), "{e}");
    let e = kms
        .svc()
        .create(
            &actor("a"),
            create_req("t1", "kmc", Algorithm::Tdes2, KeyUsage::SdKmc, true),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, ServiceError::Refused(_)),
        "master keys are never exportable: {e}"
    );
    let mut req = create_req(
        "t1",
        "kek",
        Algorithm::Aes128,
        KeyUsage::TransportKek,
        false,
    );
    req.trusted = true;
    let e = kms.svc().create(&actor("a"), req).await.unwrap_err();
    assert!(
        matches!(e, ServiceError::Refused(_)),
        "trusted needs the SO: {e}"
    );
    assert_eq!(snapshot(&kms).await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn inv5_illegal_state_change_changes_nothing() {
    let kms = TestKms::new().await;
    let svc = kms.svc();
    svc.create(
        &actor("a"),
        create_req("t1", "k", Algorithm::Aes128, KeyUsage::Data, false),
    )
    .await
    .unwrap();
    let before = snapshot(&kms).await;
    for t in [Transition::Activate, Transition::Reactivate] {
        let e = svc
            .transition(&actor("a"), &tenant("t1"), &name("k"), None, t, None)
            .await
            .unwrap_err();
        assert!(matches!(e, ServiceError::Refused(_)), "{e}");
        assert!(e.to_string().contains("active"), "{e}");
    }
    // Destroying an active key is refused: deactivate first.
    let e = destroy_approved(svc, "t1", "k", 1).await.unwrap_err();
    assert!(e.to_string().contains("deactivate it first"), "{e}");
    // Compromise without dual control is refused.
    let e = svc
        .transition(
            &actor("a"),
            &tenant("t1"),
            &name("k"),
            None,
            Transition::Compromise,
            Some("x"),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::Refused(_)), "{e}");
    assert_eq!(snapshot(&kms).await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn inv5_destroyed_key_is_refused() {
    let mut kms = TestKms::new().await;
    kms.trusted_kek("t1", "kek", Algorithm::Aes128, &[0x21; 16])
        .await;
    let svc = kms.svc();
    svc.create(
        &actor("a"),
        create_req("t1", "k", Algorithm::Aes128, KeyUsage::Data, true),
    )
    .await
    .unwrap();
    svc.transition(
        &actor("a"),
        &tenant("t1"),
        &name("k"),
        None,
        Transition::Deactivate,
        None,
    )
    .await
    .unwrap();
    destroy_approved(svc, "t1", "k", 1).await.unwrap();
    let before = snapshot(&kms).await;
    let e = export_approved(svc, "t1", "k", "kek", None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("destroyed"), "{e}");
    let e = destroy_approved(svc, "t1", "k", 1).await.unwrap_err();
    assert!(matches!(e, ServiceError::Refused(_)), "{e}");
    assert_eq!(snapshot(&kms).await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn inv5_malformed_hex_and_wrong_kcv_change_nothing() {
    let kms = TestKms::new().await;
    let before = snapshot(&kms).await;
    let e =
        Component::parse_hex("00112233445566778899AABBCCDDEEZZ", Algorithm::Aes128).unwrap_err();
    assert!(e.to_string().contains("not a hex digit"), "{e}");
    assert!(
        !e.to_string().contains("0011"),
        "the error echoes the component: {e}"
    );
    assert!(Kcv::parse_hex("XYZ").is_err());
    assert!(kms::derivation::Kdd::parse_hex("0102").is_err());
    assert!(kms::derivation::Pan::parse("4111x").is_err());

    let value = [0x3C_u8; 16]
        .map(|b| b ^ 0x01)
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ i as u8)
        .collect::<Vec<_>>();
    let (components, _) = split(&value, Algorithm::Aes128);
    let e = kms
        .svc()
        .import_components(
            &actor("custodians"),
            ImportComponents {
                key: create_req("t1", "k", Algorithm::Aes128, KeyUsage::Data, false),
                components,
                expected_kcv: Kcv::parse_hex("000000").unwrap(),
            },
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("check value"), "{e}");
    // A wrong component KCV is refused before combination.
    let (mut components, kcv) = split(&value, Algorithm::Aes128);
    components[1].1 = Some(Kcv::parse_hex("ABCDEF").unwrap());
    let e = kms
        .svc()
        .import_components(
            &actor("custodians"),
            ImportComponents {
                key: create_req("t1", "k", Algorithm::Aes128, KeyUsage::Data, false),
                components,
                expected_kcv: kcv,
            },
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("component 2"), "{e}");
    assert_eq!(snapshot(&kms).await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn inv5_unreachable_module_and_wrong_pin_are_clear_errors() {
    let kms = TestKms::new().await;
    let mut cfg = kms.token.config(Role::User);
    cfg.module = "/nonexistent/libpkcs11.so".into();
    let e = Hsm::open(&cfg).unwrap_err();
    assert!(matches!(e, HsmError::Module { .. }), "{e}");
    assert!(e.to_string().contains("/nonexistent/libpkcs11.so"), "{e}");

    let mut kms = kms;
    kms.close();
    let mut cfg = kms.token.config(Role::User);
    cfg.pin = zeroize::Zeroizing::new("00000000".into());
    let e = Hsm::open(&cfg).unwrap_err();
    assert!(matches!(e, HsmError::WrongPin), "{e}");
    assert!(!e.to_string().contains("00000000"));
    let mut cfg = kms.token.config(Role::User);
    cfg.token_label = "no-such-token".into();
    let e = Hsm::open(&cfg).unwrap_err();
    assert!(matches!(e, HsmError::TokenNotFound(_)), "{e}");
}
