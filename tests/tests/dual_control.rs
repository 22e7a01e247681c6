//! Invariant 3: no single person completes export, destroy or compromise.

use kms::model::{Algorithm, KeyUsage, Transition};
use kms::service::{Operation, ServiceError};
use kms_e2e::fixture::{actor, create_req, name, tenant, TestKms};

fn export_op() -> Operation {
    Operation::Export {
        tenant: "t1".into(),
        key: "k".into(),
        version: None,
        kek: "kek".into(),
        wrap: None,
    }
}

async fn setup() -> TestKms {
    let mut kms = TestKms::new().await;
    kms.trusted_kek("t1", "kek", Algorithm::Aes128, &[0x42; 16])
        .await;
    kms.svc()
        .create(
            &actor("a"),
            create_req("t1", "k", Algorithm::Aes128, KeyUsage::Data, true),
        )
        .await
        .unwrap();
    kms
}

fn refused(e: ServiceError, needle: &str) {
    assert!(matches!(e, ServiceError::Refused(_)), "{e}");
    assert!(e.to_string().contains(needle), "{e} lacks {needle:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn inv3_requester_alone_cannot_export() {
    let kms = setup().await;
    let svc = kms.svc();
    let req = svc.request(&actor("alice"), export_op()).await.unwrap();
    refused(
        svc.execute(&actor("alice"), &req.id).await.unwrap_err(),
        "0 of 1",
    );
    refused(
        svc.approve(&actor("alice"), &req.id, &req.digest)
            .await
            .unwrap_err(),
        "cannot approve their own",
    );
    refused(
        svc.execute(&actor("alice"), &req.id).await.unwrap_err(),
        "0 of 1",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn inv3_approval_is_bound_to_the_exact_operation() {
    let kms = setup().await;
    let svc = kms.svc();
    let a = svc.request(&actor("alice"), export_op()).await.unwrap();
    let other = Operation::Destroy {
        tenant: "t1".into(),
        key: "k".into(),
        version: 1,
        reason: None,
    };
    let b = svc.request(&actor("alice"), other).await.unwrap();
    assert_ne!(a.digest, b.digest);
    // Bob's approval of A, replayed for B, is refused.
    refused(
        svc.approve(&actor("bob"), &b.id, &a.digest)
            .await
            .unwrap_err(),
        "different operation",
    );
    svc.approve(&actor("bob"), &a.id, &a.digest).await.unwrap();
    refused(
        svc.approve(&actor("bob"), &a.id, &a.digest)
            .await
            .unwrap_err(),
        "already approved",
    );
    refused(
        svc.execute(&actor("bob"), &a.id).await.unwrap_err(),
        "only the requester",
    );
    svc.execute(&actor("alice"), &a.id).await.unwrap();
    refused(
        svc.execute(&actor("alice"), &a.id).await.unwrap_err(),
        "executed",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn inv3_expired_requests_fail() {
    let kms = setup().await;
    let policy = kms::policy::KeyPolicy::parse(
        &include_str!("../../policies/keys.toml")
            .replace("request_ttl_minutes = 60", "request_ttl_minutes = 0"),
    )
    .unwrap();
    let svc = kms::service::KeyService::open(
        kms.svc().hsm().clone(),
        kms.svc().store().clone(),
        policy,
        "test",
    )
    .await
    .unwrap();
    let req = svc.request(&actor("alice"), export_op()).await.unwrap();
    refused(
        svc.approve(&actor("bob"), &req.id, &req.digest)
            .await
            .unwrap_err(),
        "expired",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn inv3_compromise_and_destroy_need_approval() {
    let kms = setup().await;
    let svc = kms.svc();
    refused(
        svc.transition(
            &actor("alice"),
            &tenant("t1"),
            &name("k"),
            None,
            Transition::Compromise,
            Some("lost"),
        )
        .await
        .unwrap_err(),
        "dual control",
    );
    let op = Operation::Compromise {
        tenant: "t1".into(),
        key: "k".into(),
        version: None,
        reason: "card data breach".into(),
    };
    let req = svc.request(&actor("alice"), op).await.unwrap();
    svc.approve(&actor("bob"), &req.id, &req.digest)
        .await
        .unwrap();
    svc.execute(&actor("alice"), &req.id).await.unwrap();
    let rec = svc.get(&tenant("t1"), &name("k")).await.unwrap();
    assert_eq!(
        rec.current().unwrap().state,
        kms::model::KeyState::Compromised
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn inv3_trusted_kek_needs_approval_and_the_security_officer() {
    let mut kms = TestKms::new().await;
    let mut req = create_req("t1", "tk", Algorithm::Aes128, KeyUsage::TransportKek, false);
    req.trusted = true;
    refused(
        kms.svc().create(&actor("so"), req).await.unwrap_err(),
        "dual control",
    );
    let op = Operation::TrustedKek {
        tenant: "t1".into(),
        key: "tk".into(),
        algorithm: "aes-128".into(),
        usage: "transport-kek".into(),
        kcv: None,
    };
    let r = kms.svc().request(&actor("so"), op).await.unwrap();
    refused(
        kms.svc().execute(&actor("so"), &r.id).await.unwrap_err(),
        "security officer",
    );
    kms.svc()
        .approve(&actor("bob"), &r.id, &r.digest)
        .await
        .unwrap();
    refused(
        kms.svc().execute(&actor("so"), &r.id).await.unwrap_err(),
        "security officer",
    );
    let id = r.id.clone();
    let rec = kms
        .as_security_officer(|so| async move {
            refused(
                so.execute(&actor("mallory"), &id).await.unwrap_err(),
                "only the requester",
            );
            so.execute(&actor("so"), &id).await.unwrap()
        })
        .await;
    let kms::service::Executed::Key(rec) = rec else {
        panic!()
    };
    assert!(rec.current().unwrap().trusted);
    let attrs = kms
        .svc()
        .hsm()
        .attributes(rec.current().unwrap().object_id)
        .unwrap();
    assert!(attrs[0].trusted && attrs[0].sensitive && !attrs[0].extractable);
    // The SO's records carry no MAC; reopening under the user's login
    // countersigned them, so the whole trail verifies.
    let report = kms.svc().audit().verify_database().await.unwrap();
    assert!(report.ok(), "{:?}", report.damage);
}
