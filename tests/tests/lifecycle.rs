//! Key lifecycle against a real token: SP 800-57 states, rotation, destroy
//! with tombstone, who/when/why on every change.

use kms::model::{Algorithm, KeyState, KeyUsage, Transition};
use kms::service::{KeyService, ServiceError};
use kms::store::Presence;
use kms_e2e::fixture::{
    actor, create_req, destroy_approved, export_approved, name, tenant, TestKms,
};

#[tokio::test(flavor = "multi_thread")]
async fn km1_every_algorithm_is_generated_in_the_token() {
    let kms = TestKms::new().await;
    for (i, (alg, usage)) in [
        (Algorithm::Aes128, KeyUsage::Kek),
        (Algorithm::Aes192, KeyUsage::Data),
        (Algorithm::Aes256, KeyUsage::Mac),
        (Algorithm::Tdes2, KeyUsage::SdKmc),
        (Algorithm::Tdes3, KeyUsage::Kek),
        (Algorithm::Rsa2048, KeyUsage::Signing),
        (Algorithm::Rsa2048, KeyUsage::Kek),
        (Algorithm::EcP256, KeyUsage::Signing),
    ]
    .into_iter()
    .enumerate()
    {
        let rec = kms
            .svc()
            .create(
                &actor("a"),
                create_req("t1", &format!("k{i}"), alg, usage, false),
            )
            .await
            .unwrap_or_else(|e| panic!("{alg}: {e}"));
        let v = rec.current().unwrap();
        assert_eq!(v.state, KeyState::Active);
        assert_eq!(v.presence, Presence::Present);
        assert_eq!(
            v.kcv.is_some() && !v.kcv.as_deref().unwrap_or("").is_empty(),
            alg.is_secret(),
            "{alg}"
        );
        assert!(v.expire_at.is_some(), "cryptoperiod set");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sp800_57_states_rotation_and_destroy_with_tombstone() {
    let mut kms = TestKms::new().await;
    kms.trusted_kek("t1", "kek", Algorithm::Aes128, &[0x24; 16])
        .await;
    let svc = kms.svc();
    let (t, n) = (tenant("t1"), name("enc"));
    let mut req = create_req("t1", "enc", Algorithm::Aes128, KeyUsage::SdStaticEnc, true);
    req.activate = false;
    let rec = svc.create(&actor("alice"), req).await.unwrap();
    assert_eq!(rec.current().unwrap().state, KeyState::PreActivation);
    assert!(rec.current().unwrap().activate_at.is_none());
    // A pre-activation key protects nothing.
    let e = export_approved(svc, "t1", "enc", "kek", None)
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::Refused(_)), "{e}");

    svc.transition(
        &actor("alice"),
        &t,
        &n,
        None,
        Transition::Activate,
        Some("go live"),
    )
    .await
    .unwrap();
    let active = svc.get(&t, &n).await.unwrap();
    let v = active.current().unwrap();
    let (on, until) = (v.activate_at.unwrap(), v.expire_at.unwrap());
    // The cryptoperiod (730 days for sd-enc in policies/keys.toml) runs from activation.
    assert_eq!((until - on).whole_days(), 730);
    svc.transition(
        &actor("bob"),
        &t,
        &n,
        None,
        Transition::Suspend,
        Some("investigation"),
    )
    .await
    .unwrap();
    svc.transition(&actor("bob"), &t, &n, None, Transition::Reactivate, None)
        .await
        .unwrap();
    let v1_kcv = svc
        .get(&t, &n)
        .await
        .unwrap()
        .current()
        .unwrap()
        .kcv
        .clone();

    let rotated = svc
        .rotate(&actor("alice"), &t, &n, Some("annual"))
        .await
        .unwrap();
    assert_eq!(rotated.versions.len(), 2);
    assert_eq!(rotated.version(1).unwrap().state, KeyState::Deactivated);
    assert_eq!(rotated.version(2).unwrap().state, KeyState::Active);
    assert_ne!(
        rotated.version(2).unwrap().object_id,
        rotated.version(1).unwrap().object_id
    );
    assert_eq!(rotated.current().unwrap().version, 2);

    // Destroy version 1: object gone from the token, row kept with its KCV.
    let v1_obj = rotated.version(1).unwrap().object_id;
    let after = destroy_approved(svc, "t1", "enc", 1).await.unwrap();
    let v1 = after.version(1).unwrap();
    assert_eq!(v1.state, KeyState::Destroyed);
    assert_eq!(v1.presence, Presence::Tombstone);
    assert_eq!(v1.kcv, v1_kcv);
    assert!(!svc.hsm().exists(v1_obj).unwrap());
    assert!(
        KeyService::key_ref(&after, v1).is_err(),
        "a destroyed version has no handle"
    );

    // History: who, when, why.
    let view = svc.show(&actor("test"), &t, &n).await.unwrap();
    let actions: Vec<_> = view.events.iter().map(|e| e.action.as_str()).collect();
    for a in [
        "create",
        "activate",
        "suspend",
        "reactivate",
        "rotate",
        "deactivate",
        "destroy",
    ] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
    let suspend = view.events.iter().find(|e| e.action == "suspend").unwrap();
    assert_eq!(suspend.actor, "bob");
    assert_eq!(suspend.reason.as_deref(), Some("investigation"));
}

#[tokio::test(flavor = "multi_thread")]
async fn km4_keys_of_one_tenant_are_invisible_to_another() {
    let mut kms = TestKms::new().await;
    kms.trusted_kek("issuer-b", "kek", Algorithm::Aes128, &[0x33; 16])
        .await;
    let svc = kms.svc();
    svc.create(
        &actor("a"),
        create_req("issuer-a", "data", Algorithm::Aes128, KeyUsage::Data, true),
    )
    .await
    .unwrap();
    // issuer-b's KEK cannot take issuer-a's key: the lookup is per tenant.
    let e = export_approved(svc, "issuer-b", "data", "kek", None)
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::NotFound(_)), "{e}");
    let e = export_approved(svc, "issuer-a", "data", "kek", None)
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::NotFound(_)), "{e}");
    assert_eq!(
        svc.list(&actor("test"), Some(&tenant("issuer-b")))
            .await
            .unwrap()
            .len(),
        1
    );
}
