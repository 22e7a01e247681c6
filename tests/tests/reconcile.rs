//! The database row and the token object never silently disagree: a crash
//! at each point of the write order is finished or reported at start-up.

use kms::hsm::{KeySpec, Trust};
use kms::model::{Algorithm, KeyState, KeyUsage, ObjectId};
use kms::service::{Finding, KeyService, ReconcileMode, ServiceError};
use kms::store::{NewVersion, Presence};
use kms_e2e::fixture::{actor, create_req, name, tenant, TestKms};
use kms_e2e::people::{person, session_of};

fn spec(id: ObjectId) -> KeySpec {
    KeySpec {
        algorithm: Algorithm::Aes128,
        usage: KeyUsage::Data,
        exportable: false,
        object_id: id,
        label: "t1/x".into(),
        persistent: true,
    }
}

fn pending(id: ObjectId) -> NewVersion {
    NewVersion {
        object_id: id,
        state: KeyState::Active,
        activate_at: None,
        expire_at: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_points_are_finished_or_reported() {
    let kms = TestKms::new().await;
    let svc = kms.svc();
    let store = svc.store();
    let hsm = svc.hsm();

    // 1. Crash after the pending row, before the object: row abandoned.
    let a = svc
        .create(
            &actor("a"),
            create_req("t1", "a", Algorithm::Aes128, KeyUsage::Data, false),
        )
        .await
        .unwrap();
    store
        .add_version(&a.id, &pending(ObjectId::random()), "a", "rotate")
        .await
        .unwrap();
    // 2. Crash after the object, before confirmation: confirmed with its KCV.
    let b = svc
        .create(
            &actor("a"),
            create_req("t1", "b", Algorithm::Aes128, KeyUsage::Data, false),
        )
        .await
        .unwrap();
    let b2 = ObjectId::random();
    store
        .add_version(&b.id, &pending(b2), "a", "rotate")
        .await
        .unwrap();
    let made = hsm.generate(&spec(b2), Trust::Normal).unwrap();
    // 3. An object lost from the token: reported, key refused.
    let c = svc
        .create(
            &actor("a"),
            create_req("t1", "c", Algorithm::Aes128, KeyUsage::Data, false),
        )
        .await
        .unwrap();
    hsm.destroy(c.current().unwrap().object_id).unwrap();
    // 4. Crash during destroy (row destroying, object still there): finished.
    let d = svc
        .create(
            &actor("a"),
            create_req("t1", "d", Algorithm::Aes128, KeyUsage::Data, false),
        )
        .await
        .unwrap();
    svc.transition(
        &actor("a"),
        &tenant("t1"),
        &name("d"),
        None,
        kms::model::Transition::Deactivate,
        None,
    )
    .await
    .unwrap();
    // The destroy was approved (dual control) and claimed; then the crash.
    let op = kms::service::Operation::Destroy {
        tenant: "t1".into(),
        key: "d".into(),
        version: 1,
        reason: None,
    };
    let req = svc
        .request(&session_of(svc, "alice").await, op)
        .await
        .unwrap();
    person("bob")
        .approve_digest(svc, &req.id, &req.digest)
        .await
        .unwrap();
    assert!(store
        .move_approval_request(&req.id, "open", "executing")
        .await
        .unwrap());
    store
        .mark_destroying(&d.id, 1, "a", Some("test"))
        .await
        .unwrap();
    // 5. An object nobody names: reported, left alone.
    let orphan = ObjectId::random();
    hsm.generate(&spec(orphan), Trust::Normal).unwrap();
    // 6. A row marked for destruction by editing the database, with no
    //    approved request: reported, nothing destroyed.
    let e = svc
        .create(
            &actor("a"),
            create_req("t1", "e", Algorithm::Aes128, KeyUsage::Data, false),
        )
        .await
        .unwrap();
    svc.transition(
        &actor("a"),
        &tenant("t1"),
        &name("e"),
        None,
        kms::model::Transition::Deactivate,
        None,
    )
    .await
    .unwrap();
    store
        .mark_destroying(&e.id, 1, "mallory", None)
        .await
        .unwrap();

    // `kms status` only reports; a fresh pending row is left to its writer.
    let report = svc.reconcile(ReconcileMode::Report).await.unwrap();
    assert!(!report.repaired);
    assert!(
        report.findings.contains(&Finding::InFlight {
            key: "t1/a".into(),
            version: 2
        }),
        "{:?}",
        report.findings
    );
    let report = svc
        .reconcile_with_grace(ReconcileMode::Report, time_zero())
        .await
        .unwrap();
    assert!(report.findings.contains(&Finding::AbandonedPending {
        key: "t1/a".into(),
        version: 2
    }));
    assert!(
        svc.get(&tenant("t1"), &name("a"))
            .await
            .unwrap()
            .version(2)
            .is_some(),
        "report changed nothing"
    );

    let report = svc
        .reconcile_with_grace(ReconcileMode::Repair, time_zero())
        .await
        .unwrap();
    let f = &report.findings;
    assert!(
        f.contains(&Finding::AbandonedPending {
            key: "t1/a".into(),
            version: 2
        }),
        "{f:?}"
    );
    assert!(
        f.contains(&Finding::ConfirmedPending {
            key: "t1/b".into(),
            version: 2
        }),
        "{f:?}"
    );
    assert!(
        f.iter()
            .any(|x| matches!(x, Finding::MissingObject { key, .. } if key == "t1/c")),
        "{f:?}"
    );
    assert!(
        f.contains(&Finding::FinishedDestroy {
            key: "t1/d".into(),
            version: 1
        }),
        "{f:?}"
    );
    assert!(f.iter().any(|x| matches!(x, Finding::OrphanObject { object_id, .. } if *object_id == orphan.to_string())), "{f:?}");
    assert!(
        f.contains(&Finding::UnapprovedDestroy {
            key: "t1/e".into(),
            version: 1
        }),
        "{f:?}"
    );
    let e_obj = e.current().unwrap().object_id;
    assert!(
        hsm.exists(e_obj).unwrap(),
        "an unapproved destroy is never carried out"
    );
    assert_eq!(report.problems().count(), 3);

    let b = svc.get(&tenant("t1"), &name("b")).await.unwrap();
    assert_eq!(b.version(2).unwrap().presence, Presence::Present);
    assert_eq!(
        b.version(2)
            .unwrap()
            .kcv
            .as_deref()
            .map(hex::decode)
            .unwrap()
            .unwrap(),
        made.kcv.unwrap()
    );
    let a = svc.get(&tenant("t1"), &name("a")).await.unwrap();
    assert!(a.version(2).is_none());
    let d = svc.get(&tenant("t1"), &name("d")).await.unwrap();
    assert_eq!(d.version(1).unwrap().presence, Presence::Tombstone);
    assert!(
        hsm.exists(orphan).unwrap(),
        "orphans are reported, never deleted"
    );

    // The inconsistent key is refused with a clear error.
    let c = svc.get(&tenant("t1"), &name("c")).await.unwrap();
    let r = KeyService::key_ref(&c, c.current().unwrap()).unwrap();
    let e: ServiceError = hsm.kcv(&r).unwrap_err().into();
    assert!(matches!(e, ServiceError::Inconsistent(_)), "{e}");

    // Reconciling again repairs nothing more and reports the same problems.
    let again = svc
        .reconcile_with_grace(ReconcileMode::Repair, time_zero())
        .await
        .unwrap();
    assert_eq!(again.problems().count(), 3, "{:?}", again.findings);
    assert_eq!(again.findings.len(), 3);
}

fn time_zero() -> time::Duration {
    time::Duration::ZERO
}
