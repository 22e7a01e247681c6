//! Invariant 3 and issue 5's quorum approvals: no single person completes
//! any quorum operation; requests are made, approved and executed by
//! enrolled people who proved their PIN; each approval is signed with the
//! key of the certificate the approver is enrolled with, is bound to the
//! exact operation, and can be re-verified from the audit trail alone; a
//! changed policy is used only once adopted under quorum; nobody requests
//! anything while the founding is open.

use kms::audit::Outcome;
use kms::model::{Algorithm, CustodianRole, KeyUsage, Transition};
use kms::service::{check_approval_record, AuthRefusal, KeyService, Operation, ServiceError};
use kms::store::AuditFilter;
use kms_e2e::fixture::{actor, create_req, name, split, tenant, TestKms};
use kms_e2e::people::{ensure_founded, found, person, session_of, Person};

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
    assert!(
        matches!(e, ServiceError::Refused(_) | ServiceError::Auth(_)),
        "{e}"
    );
    assert!(e.to_string().contains(needle), "{e} lacks {needle:?}");
}

/// The shipped policy with a changed request lifetime, and the service
/// that adopted it through an approved ChangePolicy request.
async fn adopt_changed_policy(svc: &KeyService, text: &str) -> KeyService {
    let policy = kms::policy::KeyPolicy::parse(text).unwrap();
    let so1 = session_of(svc, "so1").await;
    let r = svc
        .request(
            &so1,
            Operation::ChangePolicy {
                sha256: policy.digest().to_owned(),
            },
        )
        .await
        .unwrap();
    person("alice").approve(svc, &r.id).await.unwrap();
    svc.execute(&so1, &r.id).await.unwrap();
    KeyService::open(svc.hsm().clone(), svc.store().clone(), policy, "test")
        .await
        .expect("an approved policy is adopted")
        .with_custodian_settings(kms_e2e::fixture::cheap_pins())
}

#[tokio::test(flavor = "multi_thread")]
async fn inv3_requester_alone_cannot_export() {
    let kms = setup().await;
    let svc = kms.svc();
    let alice = session_of(svc, "alice").await;
    let req = svc.request(&alice, export_op()).await.unwrap();
    refused(svc.execute(&alice, &req.id).await.unwrap_err(), "0 of 1");
    refused(
        person("alice").approve(svc, &req.id).await.unwrap_err(),
        "cannot approve their own",
    );
    refused(svc.execute(&alice, &req.id).await.unwrap_err(), "0 of 1");
}

#[tokio::test(flavor = "multi_thread")]
async fn inv3_no_one_person_completes_any_quorum_operation() {
    let kms = setup().await;
    let svc = kms.svc();
    let (_, kcv) = split(&[0x11; 16], Algorithm::Aes128);
    // Each quorum action but reissue (its request needs a bound SD:
    // sd_binding.rs shows the same for it), as requested by someone allowed
    // to ask for it.
    let ops = [
        ("alice", export_op()),
        (
            "alice",
            Operation::Destroy {
                tenant: "t1".into(),
                key: "k".into(),
                version: 1,
                reason: None,
            },
        ),
        (
            "alice",
            Operation::Compromise {
                tenant: "t1".into(),
                key: "k".into(),
                version: None,
                reason: "lost".into(),
            },
        ),
        (
            "alice",
            Operation::ImportKey {
                tenant: "t1".into(),
                key: "imported".into(),
                algorithm: "aes-128".into(),
                usage: "data".into(),
                exportable: false,
                kcv: kcv.to_string(),
            },
        ),
        (
            "so1",
            Operation::TrustedKek {
                tenant: "t1".into(),
                key: "kek2".into(),
                algorithm: "aes-128".into(),
                usage: "transport-kek".into(),
                kcv: None,
            },
        ),
        (
            "so1",
            Operation::EnrollCustodian {
                name: "carol".into(),
                role: "custodian".into(),
                cert_sha256: Some("AB".repeat(32)),
                login_window: None,
                idle_timeout_seconds: None,
            },
        ),
        ("so1", Operation::RemoveCustodian { name: "bob".into() }),
        (
            "so1",
            Operation::ChangePolicy {
                sha256: "CD".repeat(32),
            },
        ),
    ];
    for (who, op) in ops {
        let action = op.action();
        assert!(svc.policy().needs_approval(action), "{action}");
        let session = session_of(svc, who).await;
        let r = svc.request(&session, op).await.unwrap();
        let e = if r.operation.needs_components() {
            let (comps, _) = split(&[0x11; 16], Algorithm::Aes128);
            svc.execute_with(&session, &r.id, comps).await.unwrap_err()
        } else if r.operation.needs_initial_pin() {
            svc.execute_enrolment(&session, &r.id, kms::model::Pin::new("58203917"))
                .await
                .unwrap_err()
        } else if r.operation.needs_security_officer() {
            // Refused before the approvals are counted; the point is it
            // does not run.
            svc.execute(&session, &r.id).await.unwrap_err()
        } else {
            svc.execute(&session, &r.id).await.unwrap_err()
        };
        assert!(matches!(e, ServiceError::Refused(_)), "{action}: {e}");
        refused(
            person(who).approve(svc, &r.id).await.unwrap_err(),
            "cannot approve their own",
        );
        let after = svc.approval(&r.id).await.unwrap();
        assert_eq!(after.status, "open", "{action}");
        assert!(after.approvers.is_empty(), "{action}");
    }
    // Nothing happened to any key or person.
    assert!(svc.get(&tenant("t1"), &name("imported")).await.is_err());
    assert!(svc.get(&tenant("t1"), &name("kek2")).await.is_err());
    assert!(svc.store().custodian("carol").await.unwrap().is_none());
    assert!(!svc
        .store()
        .custodian("bob")
        .await
        .unwrap()
        .unwrap()
        .is_removed());
}

#[tokio::test(flavor = "multi_thread")]
async fn inv3_approval_is_bound_to_the_exact_operation() {
    let kms = setup().await;
    let svc = kms.svc();
    let alice = session_of(svc, "alice").await;
    let bob = person("bob");
    let a = svc.request(&alice, export_op()).await.unwrap();
    let other = Operation::Destroy {
        tenant: "t1".into(),
        key: "k".into(),
        version: 1,
        reason: None,
    };
    let b = svc.request(&alice, other).await.unwrap();
    assert_ne!(a.digest, b.digest);
    // Bob's approval of A, replayed for B, is refused: with A's digest...
    refused(
        bob.approve_digest(svc, &b.id, &a.digest).await.unwrap_err(),
        "different operation",
    );
    // ... and A's signature presented with B's digest does not verify.
    let bob_session = bob.session(svc).await;
    refused(
        svc.approve(&bob_session, &b.id, &b.digest, &bob.sign(&a.id, &a.digest))
            .await
            .unwrap_err(),
        "does not verify",
    );
    assert!(svc.approval(&b.id).await.unwrap().approvers.is_empty());
    bob.approve(svc, &a.id).await.unwrap();
    refused(
        bob.approve(svc, &a.id).await.unwrap_err(),
        "already approved",
    );
    refused(
        svc.execute(&bob_session, &a.id).await.unwrap_err(),
        "only the requester",
    );
    svc.execute(&alice, &a.id).await.unwrap();
    refused(svc.execute(&alice, &a.id).await.unwrap_err(), "executed");
}

#[tokio::test(flavor = "multi_thread")]
async fn inv3_signature_by_another_key_or_unbound_certificate_is_refused() {
    let kms = setup().await;
    let svc = kms.svc();
    let alice = session_of(svc, "alice").await;
    let r = svc.request(&alice, export_op()).await.unwrap();
    let bob = person("bob");
    let so1 = person("so1");
    let bob_session = bob.session(svc).await;
    // so1's certificate and signature, presented by bob.
    refused(
        svc.approve(&bob_session, &r.id, &r.digest, &so1.sign(&r.id, &r.digest))
            .await
            .unwrap_err(),
        "not the one bob is enrolled with",
    );
    // Bob's certificate, but a signature by another key.
    let mut forged = bob.sign(&r.id, &r.digest);
    forged.signature = kms::crypto::approval::sign_approval(
        &so1.key_pem,
        &kms::crypto::approval::approval_message(&r.id, &r.digest, "bob"),
    )
    .unwrap();
    refused(
        svc.approve(&bob_session, &r.id, &r.digest, &forged)
            .await
            .unwrap_err(),
        "does not verify",
    );
    // A stranger's certificate (never enrolled).
    let stranger = Person::new("bob", CustodianRole::Custodian);
    refused(
        svc.approve(
            &bob_session,
            &r.id,
            &r.digest,
            &stranger.sign(&r.id, &r.digest),
        )
        .await
        .unwrap_err(),
        "not the one bob is enrolled with",
    );
    // Nothing was recorded as an approval; each refusal is in the trail.
    assert!(svc.approval(&r.id).await.unwrap().approvers.is_empty());
    let refusals = svc
        .store()
        .audit_search(&AuditFilter {
            action: Some("request.approve".into()),
            outcome: Some(Outcome::Refused),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(refusals.len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn inv3_approver_role_must_be_in_the_quorum() {
    let kms = TestKms::new().await;
    let svc = kms.svc();
    let people = found(
        svc,
        &[
            ("so1", CustodianRole::SecurityOfficer),
            ("alice", CustodianRole::Custodian),
            ("olga", CustodianRole::Operator),
        ],
    )
    .await;
    let so1 = people[0].session(svc).await;
    let r = svc
        .request(
            &so1,
            Operation::RemoveCustodian {
                name: "alice".into(),
            },
        )
        .await
        .unwrap();
    let e = people[2].approve(svc, &r.id).await.unwrap_err();
    assert!(
        matches!(e, ServiceError::Auth(AuthRefusal::Role { .. })),
        "{e}"
    );
    // The person a removal is about cannot approve it either.
    refused(
        people[1].approve(svc, &r.id).await.unwrap_err(),
        "enrolled or removed cannot approve",
    );
    assert!(svc.approval(&r.id).await.unwrap().approvers.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn inv3_expired_requests_fail_and_an_approved_policy_is_adopted() {
    let kms = setup().await;
    let text = include_str!("../../policies/keys.toml")
        .replace("request_ttl_minutes = 60", "request_ttl_minutes = 0");
    let svc = adopt_changed_policy(kms.svc(), &text).await;
    assert_eq!(svc.policy().dual_control.request_ttl_minutes, 0);
    let adopted = svc.store().adopted_policy().await.unwrap().unwrap();
    assert_eq!(adopted.value, svc.policy().digest());
    let alice = session_of(&svc, "alice").await;
    let req = svc.request(&alice, export_op()).await.unwrap();
    refused(
        person("bob").approve(&svc, &req.id).await.unwrap_err(),
        "expired",
    );
    refused(svc.execute(&alice, &req.id).await.unwrap_err(), "expired");
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_changed_without_approval_refuses_to_open() {
    let kms = setup().await;
    let svc = kms.svc();
    let text = include_str!("../../policies/keys.toml")
        .replace("request_ttl_minutes = 60", "request_ttl_minutes = 30");
    let changed = kms::policy::KeyPolicy::parse(&text).unwrap();
    let e = match KeyService::open(
        svc.hsm().clone(),
        svc.store().clone(),
        changed.clone(),
        "test",
    )
    .await
    {
        Err(e) => e,
        Ok(_) => panic!("a changed policy was used without approval"),
    };
    refused(e, "not the adopted");
    // Another policy approved is not this one.
    let other = include_str!("../../policies/keys.toml")
        .replace("request_ttl_minutes = 60", "request_ttl_minutes = 45");
    let so1 = session_of(svc, "so1").await;
    let r = svc
        .request(
            &so1,
            Operation::ChangePolicy {
                sha256: kms::policy::KeyPolicy::parse(&other)
                    .unwrap()
                    .digest()
                    .to_owned(),
            },
        )
        .await
        .unwrap();
    person("bob").approve(svc, &r.id).await.unwrap();
    svc.execute(&so1, &r.id).await.unwrap();
    assert!(
        KeyService::open(svc.hsm().clone(), svc.store().clone(), changed, "test")
            .await
            .is_err()
    );
    // The refusals are in the trail.
    let refusals = svc
        .store()
        .audit_search(&AuditFilter {
            action: Some("policy.adopt".into()),
            outcome: Some(Outcome::Refused),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(refusals.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn inv3_approval_signatures_verify_offline_and_tampering_shows() {
    let kms = setup().await;
    let svc = kms.svc();
    let checks = svc.verify_approvals(&actor("auditor")).await.unwrap();
    // The trusted KEK of the setup was approved by bob.
    assert_eq!(checks.len(), 1);
    assert!(checks.iter().all(|c| c.problem.is_none()), "{checks:?}");
    assert_eq!(checks[0].approver, "bob");
    let recs = svc
        .store()
        .audit_search(&AuditFilter {
            action: Some("request.approve".into()),
            outcome: Some(Outcome::Success),
            ..Default::default()
        })
        .await
        .unwrap();
    let rec = &recs[0];
    assert!(check_approval_record(rec).problem.is_none());
    // A record claiming another approver, another request or another
    // digest, or with a changed signature, does not verify.
    let mut other = rec.clone();
    other.event.actor = "alice".into();
    assert!(check_approval_record(&other).problem.is_some());
    let mut other = rec.clone();
    other.event.details.insert("digest".into(), "00".repeat(32));
    assert!(check_approval_record(&other).problem.is_some());
    let mut other = rec.clone();
    let sig = other.event.details["approval_signature"].clone();
    let flipped = if sig.ends_with('0') { "1" } else { "0" };
    other.event.details.insert(
        "approval_signature".into(),
        format!("{}{flipped}", &sig[..sig.len() - 1]),
    );
    assert!(check_approval_record(&other).problem.is_some());
    let mut other = rec.clone();
    other.event.request_id = Some("another-request".into());
    assert!(check_approval_record(&other).problem.is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn founding_is_closed_once_and_nothing_is_requested_before() {
    let kms = TestKms::new().await;
    let svc = kms.svc();
    let so1 = Person::new("so1", CustodianRole::SecurityOfficer);
    so1.enrol_founding(svc, None).await;
    let officer = so1.session(svc).await;
    refused(
        svc.request(&officer, export_op()).await.unwrap_err(),
        "founding is still open",
    );
    // One officer alone cannot meet any quorum: the founding stays open.
    refused(
        svc.close_founding(&officer).await.unwrap_err(),
        "cannot meet the quorum",
    );
    let alice = Person::new("alice", CustodianRole::Custodian);
    alice.enrol_founding(svc, Some(&officer)).await;
    // A custodian cannot enrol or close anything.
    let a = alice.session(svc).await;
    let carol = Person::new("carol", CustodianRole::Custodian);
    assert!(svc.enroll_founding(&a, carol.enrolment()).await.is_err());
    assert!(svc.close_founding(&a).await.is_err());
    svc.close_founding(&officer).await.unwrap();
    assert!(!svc.founding_open().await.unwrap());
    // Closed for good.
    refused(
        svc.enroll_founding(&officer, carol.enrolment())
            .await
            .unwrap_err(),
        "founding is closed",
    );
    refused(
        svc.close_founding(&officer).await.unwrap_err(),
        "closed already",
    );
    assert!(svc.store().custodian("carol").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn inv3_import_by_components_needs_quorum() {
    let kms = TestKms::new().await;
    let svc = kms.svc();
    ensure_founded(svc).await;
    let value = [0x5Au8; 16];
    let (components, kcv) = split(&value, Algorithm::Aes128);
    let alice = session_of(svc, "alice").await;
    let r = svc
        .request(
            &alice,
            Operation::ImportKey {
                tenant: "t1".into(),
                key: "imp".into(),
                algorithm: "aes-128".into(),
                usage: "data".into(),
                exportable: false,
                kcv: kcv.to_string(),
            },
        )
        .await
        .unwrap();
    person("bob").approve(svc, &r.id).await.unwrap();
    let kms::service::Executed::Key(rec) =
        svc.execute_with(&alice, &r.id, components).await.unwrap()
    else {
        panic!("an import returns the key")
    };
    let v = rec.current().unwrap();
    assert!(v.kcv.is_some());
    assert_eq!(v.state, kms::model::KeyState::Active);
    assert!(!v.trusted);
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
    let alice = session_of(svc, "alice").await;
    let req = svc.request(&alice, op).await.unwrap();
    person("bob").approve(svc, &req.id).await.unwrap();
    svc.execute(&alice, &req.id).await.unwrap();
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
    let so1 = session_of(kms.svc(), "so1").await;
    let alice = person("alice").session(kms.svc()).await;
    let r = kms.svc().request(&so1, op).await.unwrap();
    refused(
        kms.svc().execute(&so1, &r.id).await.unwrap_err(),
        "security officer",
    );
    person("bob").approve(kms.svc(), &r.id).await.unwrap();
    refused(
        kms.svc().execute(&so1, &r.id).await.unwrap_err(),
        "security officer",
    );
    let id = r.id.clone();
    let rec = kms
        .as_security_officer(|so| async move {
            refused(
                so.execute(&alice, &id).await.unwrap_err(),
                "only the requester",
            );
            so.execute(&so1, &id).await.unwrap()
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

#[tokio::test(flavor = "multi_thread")]
async fn inv3_backup_kek_needs_approval_and_the_security_officer() {
    let mut kms = TestKms::new().await;
    let op = |threshold: u8, shares: u8| Operation::BackupKek {
        name: "backup-kek".into(),
        threshold,
        shares,
    };
    let so1 = session_of(kms.svc(), "so1").await;
    let alice = person("alice").session(kms.svc()).await;
    // Only a security officer asks for it (they receive the shares), and
    // a split that could not protect the KEK is refused up front.
    assert!(kms.svc().request(&alice, op(2, 3)).await.is_err());
    let e = kms.svc().request(&so1, op(1, 3)).await.unwrap_err();
    assert!(matches!(e, ServiceError::Invalid(_)), "{e}");
    let e = kms.svc().request(&so1, op(3, 2)).await.unwrap_err();
    assert!(matches!(e, ServiceError::Invalid(_)), "{e}");
    let r = kms.svc().request(&so1, op(2, 3)).await.unwrap();
    // Under the user's login, and by every path but execute_backup_kek,
    // nothing is made and the request stays open.
    refused(
        kms.svc().execute_backup_kek(&so1, &r.id).await.unwrap_err(),
        "security officer",
    );
    let (id, requester) = (r.id.clone(), so1.clone());
    kms.as_security_officer(|so| async move {
        // The requester alone: no approval yet.
        refused(
            so.execute_backup_kek(&requester, &id).await.unwrap_err(),
            "0 of 1 approvals",
        );
    })
    .await;
    person("bob").approve(kms.svc(), &r.id).await.unwrap();
    let (id, requester) = (r.id.clone(), so1.clone());
    let made = kms
        .as_security_officer(|so| async move {
            let e = so.execute(&requester, &id).await.unwrap_err();
            assert!(e.to_string().contains("kek-execute"), "{e}");
            let e = so
                .execute_with(&requester, &id, Vec::new())
                .await
                .unwrap_err();
            assert!(e.to_string().contains("kek-execute"), "{e}");
            refused(
                so.execute_backup_kek(&alice, &id).await.unwrap_err(),
                "only the requester",
            );
            so.execute_backup_kek(&requester, &id).await.unwrap()
        })
        .await;
    assert_eq!(made.shares.len(), 3);
    assert_eq!(made.threshold, 2);
    let v = made.key.current().unwrap();
    assert!(v.trusted);
    assert_eq!(v.kcv.as_deref(), Some(made.kcv.as_str()));
    let attrs = kms.svc().hsm().attributes(v.object_id).unwrap();
    assert!(attrs[0].trusted && attrs[0].sensitive && !attrs[0].extractable);
    // Any two shares rebuild a secret; the shares are in no record.
    kms::crypto::shares::combine(&made.shares[1..]).unwrap();
    let trail = kms
        .svc()
        .store()
        .audit_search(&AuditFilter::default())
        .await
        .unwrap();
    for s in &made.shares {
        let text = s.to_text();
        assert!(trail
            .iter()
            .all(|r| !format!("{:?}", r.event).contains(text.as_str())));
    }
    let executed = kms.svc().approval(&r.id).await.unwrap();
    assert_eq!(executed.status, "executed");
    // Once only, and never a second KEK of that name.
    let e = kms.svc().request(&so1, op(2, 3)).await.unwrap_err();
    assert!(e.to_string().contains("already exists"), "{e}");
    let report = kms.svc().audit().verify_database().await.unwrap();
    assert!(report.ok(), "{:?}", report.damage);
}
