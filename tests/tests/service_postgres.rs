//! The key service with its metadata in a real PostgreSQL (started on
//! loopback by the fixture), the deployment for several KMS nodes.

use kms::model::{Algorithm, KeyState, KeyUsage, Transition};
use kms::store::Presence;
use kms_e2e::fixture::{
    actor, create_req, destroy_approved, export_approved, name, tenant, TestKms,
};
use kms_e2e::pg::fresh_database_url;

#[tokio::test(flavor = "multi_thread")]
async fn postgres_key_lifecycle_dual_control_and_reconcile() {
    let url = fresh_database_url();
    let mut kms = TestKms::with_database(&url).await;
    assert_eq!(kms.svc().store().backend(), kms::store::Backend::Postgres);
    kms.trusted_kek("issuer-a", "kek", Algorithm::Aes128, &[0x77; 16])
        .await;
    let svc = kms.svc();
    svc.create(
        &actor("alice"),
        create_req(
            "issuer-a",
            "enc",
            Algorithm::Aes128,
            KeyUsage::SdStaticEnc,
            true,
        ),
    )
    .await
    .unwrap();
    kms.import(
        "issuer-a",
        "imk",
        Algorithm::Tdes2,
        KeyUsage::ImkAc,
        false,
        &hex::decode("A132437515D0625E20A234B60BBF6823").unwrap(),
    )
    .await;
    let rec = svc
        .rotate(&actor("alice"), &tenant("issuer-a"), &name("enc"), None)
        .await
        .unwrap();
    assert_eq!(rec.version(1).unwrap().state, KeyState::Deactivated);
    export_approved(svc, "issuer-a", "enc", "kek", None)
        .await
        .unwrap();
    svc.transition(
        &actor("alice"),
        &tenant("issuer-a"),
        &name("imk"),
        None,
        Transition::Deactivate,
        None,
    )
    .await
    .unwrap();
    let gone = destroy_approved(svc, "issuer-a", "imk", 1).await.unwrap();
    assert_eq!(gone.version(1).unwrap().presence, Presence::Tombstone);
    assert_eq!(gone.version(1).unwrap().kcv.as_deref(), Some("626B60"));
    let report = svc
        .reconcile(kms::service::ReconcileMode::Repair)
        .await
        .unwrap();
    assert_eq!(report.problems().count(), 0, "{:?}", report.findings);
    assert_eq!(
        svc.list(&actor("test"), Some(&tenant("issuer-a")))
            .await
            .unwrap()
            .len(),
        3
    );
}
