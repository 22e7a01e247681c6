//! Custodians and officers (issue 5, item 1) through the key service, with a
//! real SoftHSM2 token behind the audit trail: enrolment (a bootstrap, then
//! dual control), the initial PIN changed at first use (TSM-AC-1), weak PINs
//! refused (AUTH-PIN-LEN, AUTH-PIN-WEAK), the lock after 5 failures and its
//! release by a security officer only (AUTH-PIN-LOCK), login windows
//! (TSM-AC-5), and no PIN anywhere in the trail or the database.

use kms::audit::{AuditRecord, Outcome};
use kms::crypto::PinHasher;
use kms::hsm::Role;
use kms::model::{CustodianName, CustodianRole, LoginWindow, Pin, PinPolicy};
use kms::service::{
    ApprovalRequest, AuthRefusal, CustodianSession, CustodianSettings, Enrolment, Executed,
    KeyService, Operation, ServiceError,
};
use kms::store::{AuditFilter, CustodianRecord};
use kms_e2e::fixture::{actor, TestKms};
use kms_e2e::people::Person;
use kms_e2e::scan::{find_secrets_in_sqlite, suspicious_values_in_sqlite};
use std::sync::Arc;
use std::sync::OnceLock;
use time::macros::datetime;
use time::OffsetDateTime;

const SO_INITIAL: &str = "58203917";
const SO_PIN: &str = "Harbour lights 42";
const ALICE_INITIAL: &str = "90712846";
const ALICE_PIN: &str = "73915082";
const BOB_INITIAL: &str = "Blue heron at dawn";
const BOB_PIN: &str = "Granite quarry 7";
const WRONG: &str = "40617293";

fn cheap() -> CustodianSettings {
    CustodianSettings {
        pin_policy: PinPolicy::default(),
        hasher: Arc::new(PinHasher::new(1024, 1, 1).expect("params")),
    }
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn enrolment(name: &str, role: CustodianRole, pin: &str) -> Enrolment {
    Enrolment {
        name: CustodianName::parse(name).expect("name"),
        role,
        cert_sha256: Some(format!("{:0>64}", hex::encode_upper(name))),
        login_window: None,
        idle_timeout_seconds: Some(300),
        initial_pin: Pin::new(pin),
    }
}

fn enrol_op(name: &str, role: &str, window: Option<&str>) -> Operation {
    Operation::EnrollCustodian {
        name: name.into(),
        role: role.into(),
        cert_sha256: Some(someone(name).cert_sha256()),
        login_window: window.map(str::to_owned),
        idle_timeout_seconds: None,
    }
}

/// Everyone these tests enrol, with a real P-256 certificate (issue 5:
/// approvals are signed), their initial and working PINs.
fn someone(name: &str) -> &'static Person {
    static PEOPLE: OnceLock<Vec<Person>> = OnceLock::new();
    let people = PEOPLE.get_or_init(|| {
        [
            ("so-1", SO_INITIAL, SO_PIN),
            ("so-2", ALICE_INITIAL, ALICE_PIN),
            ("alice", ALICE_INITIAL, ALICE_PIN),
            ("bob", BOB_INITIAL, BOB_PIN),
            ("carol", ALICE_INITIAL, ALICE_PIN),
            (
                "witness",
                "Witness initial words 1",
                "Witness working words 2",
            ),
        ]
        .into_iter()
        .map(|(n, first, pin)| {
            let mut p = Person::new(n, CustodianRole::Custodian);
            p.initial_pin = first.into();
            p.pin = pin.into();
            p
        })
        .collect()
    });
    match people.iter().find(|p| p.name == name) {
        Some(p) => p,
        None => {
            // Not enrolled by these tests (mallory): a person nobody knows.
            static STRANGERS: OnceLock<Person> = OnceLock::new();
            STRANGERS.get_or_init(|| Person::new("mallory", CustodianRole::Custodian))
        }
    }
}

/// `name` logged in: with the initial PIN while it must still be changed.
async fn login(svc: &KeyService, name: &str) -> Result<CustodianSession, ServiceError> {
    let p = someone(name);
    let pin = match svc.store().custodian(name).await? {
        Some(r) if r.must_change_pin => &p.initial_pin,
        _ => &p.pin,
    };
    svc.authenticate(name, &Pin::new(pin.as_str()), now()).await
}

async fn request_as(
    svc: &KeyService,
    who: &str,
    op: Operation,
) -> Result<ApprovalRequest, ServiceError> {
    svc.request(&login(svc, who).await?, op).await
}

async fn appr(
    svc: &KeyService,
    who: &str,
    id: &str,
    digest: &str,
) -> Result<ApprovalRequest, ServiceError> {
    let session = login(svc, who).await?;
    svc.approve(&session, id, digest, &someone(who).sign(id, digest))
        .await
}

async fn exe(svc: &KeyService, who: &str, id: &str) -> Result<Executed, ServiceError> {
    svc.execute(&login(svc, who).await?, id).await
}

async fn exe_pin(
    svc: &KeyService,
    who: &str,
    id: &str,
    pin: Pin,
) -> Result<Executed, ServiceError> {
    svc.execute_enrolment(&login(svc, who).await?, id, pin)
        .await
}

/// A KMS whose service hashes PINs cheaply.
async fn setup() -> (TestKms, KeyService) {
    let kms = TestKms::new().await;
    let svc = kms.svc().clone().with_custodian_settings(cheap());
    (kms, svc)
}

/// so-1 bootstrapped and with their own PIN; witness (a custodian) enrolled
/// during the founding, which so-1 then closes (issue 5).
async fn with_officer(svc: &KeyService) {
    svc.enroll(
        &actor("installer"),
        Enrolment {
            cert_sha256: Some(someone("so-1").cert_sha256()),
            ..enrolment("so-1", CustodianRole::SecurityOfficer, SO_INITIAL)
        },
    )
    .await
    .expect("bootstrap");
    let so1 = svc
        .change_pin("so-1", &Pin::new(SO_INITIAL), &Pin::new(SO_PIN), now())
        .await
        .expect("so-1 changes the initial PIN");
    let w = someone("witness");
    svc.enroll_founding(
        &so1,
        Enrolment {
            cert_sha256: Some(w.cert_sha256()),
            ..enrolment("witness", CustodianRole::Custodian, &w.initial_pin)
        },
    )
    .await
    .expect("witness");
    svc.change_pin(
        "witness",
        &Pin::new(w.initial_pin.as_str()),
        &Pin::new(w.pin.as_str()),
        now(),
    )
    .await
    .expect("witness's PIN");
    svc.close_founding(&so1).await.expect("close the founding");
}

/// Enrol `name` through dual control: so-1 requests, `approver` approves,
/// so-1 executes with the initial PIN.
async fn enrol_approved(
    svc: &KeyService,
    op: Operation,
    approver: &str,
    initial: &str,
) -> Result<CustodianRecord, ServiceError> {
    let r = request_as(svc, "so-1", op).await?;
    appr(svc, approver, &r.id, &r.digest).await?;
    match exe_pin(svc, "so-1", &r.id, Pin::new(initial)).await? {
        Executed::Custodian(c) => Ok(c),
        other => panic!("enrolment returned {other:?}"),
    }
}

/// so-1, then alice (custodian) and bob (custodian), each with their own PIN.
async fn with_people(svc: &KeyService) {
    with_officer(svc).await;
    enrol_approved(
        svc,
        enrol_op("alice", "custodian", None),
        "witness",
        ALICE_INITIAL,
    )
    .await
    .expect("alice");
    svc.change_pin(
        "alice",
        &Pin::new(ALICE_INITIAL),
        &Pin::new(ALICE_PIN),
        now(),
    )
    .await
    .expect("alice's PIN");
    enrol_approved(
        svc,
        enrol_op("bob", "custodian", None),
        "witness",
        BOB_INITIAL,
    )
    .await
    .expect("bob");
    svc.change_pin("bob", &Pin::new(BOB_INITIAL), &Pin::new(BOB_PIN), now())
        .await
        .expect("bob's PIN");
}

async fn records(svc: &KeyService, action: &str) -> Vec<AuditRecord> {
    svc.store()
        .audit_search(&AuditFilter {
            action: Some(action.into()),
            ..Default::default()
        })
        .await
        .expect("search")
}

async fn person(svc: &KeyService, name: &str) -> CustodianRecord {
    svc.store()
        .custodian(name)
        .await
        .expect("read")
        .expect("enrolled")
}

fn auth(e: ServiceError) -> AuthRefusal {
    match e {
        ServiceError::Auth(a) => a,
        other => panic!("expected an authentication refusal, got {other}"),
    }
}

fn refused(e: ServiceError, needle: &str) {
    assert!(matches!(e, ServiceError::Refused(_)), "{e}");
    assert!(e.to_string().contains(needle), "{e} lacks {needle:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn issue5_the_first_enrolment_is_a_bootstrap_then_enrolment_is_dual_controlled() {
    let (_kms, svc) = setup().await;
    // The bootstrap is a security officer.
    refused(
        svc.enroll(
            &actor("installer"),
            enrolment("alice", CustodianRole::Custodian, ALICE_INITIAL),
        )
        .await
        .unwrap_err(),
        "security officer",
    );
    let so = svc
        .enroll(
            &actor("installer"),
            enrolment("so-1", CustodianRole::SecurityOfficer, SO_INITIAL),
        )
        .await
        .unwrap();
    assert!(so.bootstrap && so.must_change_pin);
    assert_eq!(so.enrolled_by, "installer");
    let boot = records(&svc, "custodian.enroll").await;
    let last = boot.last().unwrap();
    assert_eq!(last.event.outcome, Some(Outcome::Success));
    assert_eq!(last.event.details["bootstrap"], "true");
    assert_eq!(last.event.details["custodian"], "so-1");

    // Nobody else is enrolled alone.
    refused(
        svc.enroll(
            &actor("so-1"),
            enrolment("so-2", CustodianRole::SecurityOfficer, ALICE_INITIAL),
        )
        .await
        .unwrap_err(),
        "people are enrolled already",
    );
    assert!(svc.store().custodian("so-2").await.unwrap().is_none());

    // The officer must change the initial PIN before requesting anything.
    assert!(matches!(
        auth(
            request_as(&svc, "so-1", enrol_op("alice", "custodian", None))
                .await
                .unwrap_err()
        ),
        AuthRefusal::MustChangePin { .. }
    ));
    let so1 = svc
        .change_pin("so-1", &Pin::new(SO_INITIAL), &Pin::new(SO_PIN), now())
        .await
        .unwrap();
    // Issue 5: the founding (a witness who can approve), then closed.
    let w = someone("witness");
    svc.enroll_founding(
        &so1,
        Enrolment {
            cert_sha256: Some(w.cert_sha256()),
            ..enrolment("witness", CustodianRole::Custodian, &w.initial_pin)
        },
    )
    .await
    .unwrap();
    svc.change_pin(
        "witness",
        &Pin::new(w.initial_pin.as_str()),
        &Pin::new(w.pin.as_str()),
        now(),
    )
    .await
    .unwrap();
    svc.close_founding(&so1).await.unwrap();

    // Only a security officer in good standing requests; bad terms are
    // refused before anyone is asked.
    assert!(matches!(
        auth(
            request_as(&svc, "mallory", enrol_op("alice", "custodian", None))
                .await
                .unwrap_err()
        ),
        AuthRefusal::NotEnrolled { .. }
    ));
    for bad in [
        enrol_op("Alice", "custodian", None),
        enrol_op("alice", "provisioner", None),
        enrol_op(
            "alice",
            "custodian",
            Some("Mon-Fri 08:00-18:00 Asia/Taipei"),
        ),
        enrol_op("so-1", "custodian", None),
    ] {
        let e = request_as(&svc, "so-1", bad).await.unwrap_err();
        assert!(matches!(e, ServiceError::Invalid(_)), "{e}");
    }

    // The request, approved by someone other than the requester and the
    // person enrolled, executed by the requester with the initial PIN.
    let req = request_as(&svc, "so-1", enrol_op("alice", "custodian", None))
        .await
        .unwrap();
    refused(
        exe_pin(&svc, "so-1", &req.id, Pin::new(ALICE_INITIAL))
            .await
            .unwrap_err(),
        "0 of 1",
    );
    refused(
        appr(&svc, "so-1", &req.id, &req.digest).await.unwrap_err(),
        "cannot approve their own",
    );
    // The person being enrolled cannot approve: not enrolled yet, they
    // cannot even log in (issue 5: approvers are authenticated people; the
    // person a removal is about is refused in dual_control.rs).
    assert!(matches!(
        auth(appr(&svc, "alice", &req.id, &req.digest).await.unwrap_err()),
        AuthRefusal::NotEnrolled { .. }
    ));
    appr(&svc, "witness", &req.id, &req.digest).await.unwrap();
    // Without the PIN, with a weak one, or by someone else: refused, and the
    // request is still open.
    let e = exe(&svc, "so-1", &req.id).await.unwrap_err();
    assert!(matches!(e, ServiceError::Invalid(_)), "{e}");
    let e = exe_pin(&svc, "so-1", &req.id, Pin::new("123456"))
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::Invalid(_)), "{e}");
    refused(
        exe_pin(&svc, "witness", &req.id, Pin::new(ALICE_INITIAL))
            .await
            .unwrap_err(),
        "only the requester",
    );
    assert_eq!(svc.approval(&req.id).await.unwrap().status, "open");
    let alice = match exe_pin(&svc, "so-1", &req.id, Pin::new(ALICE_INITIAL))
        .await
        .unwrap()
    {
        Executed::Custodian(c) => c,
        other => panic!("{other:?}"),
    };
    assert!(!alice.bootstrap && alice.must_change_pin);
    assert_eq!(alice.enrolment_request.as_deref(), Some(req.id.as_str()));
    assert_eq!(alice.enrolled_by, "so-1");
    assert_eq!(svc.approval(&req.id).await.unwrap().status, "executed");
    // The trail ties the enrolment to its request and its approver.
    let enrolled: Vec<_> = records(&svc, "custodian.enroll")
        .await
        .into_iter()
        .filter(|r| r.event.details.get("custodian").map(String::as_str) == Some("alice"))
        .collect();
    let done = enrolled.last().unwrap();
    assert_eq!(done.event.outcome, Some(Outcome::Success));
    assert_eq!(done.event.details["bootstrap"], "false");
    assert_eq!(done.event.request_id.as_deref(), Some(req.id.as_str()));
    assert_eq!(done.event.role, "security-officer");
    let executed = records(&svc, "request.execute").await;
    let executed = executed.last().unwrap();
    assert_eq!(executed.event.details["operation"], "custodians");
    assert_eq!(executed.event.details["approvers"], "witness");
    // Executed once.
    refused(
        exe_pin(&svc, "so-1", &req.id, Pin::new(ALICE_INITIAL))
            .await
            .unwrap_err(),
        "is executed",
    );
    // The same name again is refused at request time.
    let e = request_as(&svc, "so-1", enrol_op("alice", "operator", None))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("already enrolled"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tsm_ac_1_the_initial_pin_must_be_changed_at_first_use() {
    let (_kms, svc) = setup().await;
    with_officer(&svc).await;
    enrol_approved(
        &svc,
        enrol_op("alice", "custodian", None),
        "witness",
        ALICE_INITIAL,
    )
    .await
    .unwrap();

    let s = svc
        .authenticate("alice", &Pin::new(ALICE_INITIAL), now())
        .await
        .unwrap();
    assert!(s.must_change_pin());
    assert_eq!(s.role(), CustodianRole::Custodian);
    assert_eq!(s.idle_timeout().as_secs(), 900);
    assert_eq!(s.actor().as_str(), "alice");
    // Until she changes it, alice may do nothing else: approving is refused.
    let req = request_as(&svc, "so-1", enrol_op("bob", "custodian", None))
        .await
        .unwrap();
    assert!(matches!(
        auth(appr(&svc, "alice", &req.id, &req.digest).await.unwrap_err()),
        AuthRefusal::MustChangePin { .. }
    ));

    // The same PIN, a weak one: refused, no attempt counted.
    for (new, why) in [
        (ALICE_INITIAL, "must differ"),
        ("12345678", "consecutive"),
        ("55555555", "repeats"),
        ("2580", "at least 6"),
    ] {
        let e = svc
            .change_pin("alice", &Pin::new(ALICE_INITIAL), &Pin::new(new), now())
            .await
            .unwrap_err();
        assert!(matches!(e, ServiceError::Invalid(_)), "{e}");
        assert!(e.to_string().contains(why), "{e}");
        assert!(!e.to_string().contains(new), "{e}");
    }
    assert_eq!(person(&svc, "alice").await.failed_attempts, 0);
    // A wrong current PIN counts.
    assert!(matches!(
        auth(
            svc.change_pin("alice", &Pin::new(WRONG), &Pin::new(ALICE_PIN), now())
                .await
                .unwrap_err()
        ),
        AuthRefusal::WrongPin {
            failed_attempts: 1,
            locked: false,
            ..
        }
    ));
    let s = svc
        .change_pin(
            "alice",
            &Pin::new(ALICE_INITIAL),
            &Pin::new(ALICE_PIN),
            now(),
        )
        .await
        .unwrap();
    assert!(!s.must_change_pin());
    let a = person(&svc, "alice").await;
    assert!(!a.must_change_pin && a.pin_changed_at.is_some());
    assert_eq!(a.failed_attempts, 0);
    // The initial PIN is gone; the new one works; alice may now approve.
    assert!(matches!(
        auth(
            svc.authenticate("alice", &Pin::new(ALICE_INITIAL), now())
                .await
                .unwrap_err()
        ),
        AuthRefusal::WrongPin { .. }
    ));
    let s = svc
        .authenticate("alice", &Pin::new(ALICE_PIN), now())
        .await
        .unwrap();
    assert!(!s.must_change_pin());
    assert_eq!(person(&svc, "alice").await.failed_attempts, 0);
    appr(&svc, "alice", &req.id, &req.digest).await.unwrap();
    let changes = records(&svc, "custodian.change-pin").await;
    let outcomes: Vec<_> = changes.iter().filter_map(|r| r.event.outcome).collect();
    assert!(outcomes.contains(&Outcome::Refused));
    assert!(outcomes.contains(&Outcome::Failure));
    assert!(outcomes.contains(&Outcome::Success));
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_pin_len_auth_pin_weak_weak_pins_are_refused_and_never_echoed() {
    let (_kms, svc) = setup().await;
    for weak in [
        "123", "2580", "12345", "123456", "654321", "111111", "121212", "147258", "19999990",
        "password", "Kestre!",
    ] {
        let e = svc
            .enroll(
                &actor("installer"),
                enrolment("so-1", CustodianRole::SecurityOfficer, weak),
            )
            .await
            .unwrap_err();
        assert!(matches!(e, ServiceError::Invalid(_)), "{e}");
        assert!(!e.to_string().contains(weak), "{e}");
    }
    assert!(svc.store().custodians().await.unwrap().is_empty());
    // A stricter policy applies to every new PIN.
    let strict = svc.clone().with_custodian_settings(CustodianSettings {
        pin_policy: PinPolicy::new(8).unwrap(),
        ..cheap()
    });
    let e = strict
        .enroll(
            &actor("installer"),
            enrolment("so-1", CustodianRole::SecurityOfficer, "5820391"),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("at least 8"), "{e}");
    strict
        .enroll(
            &actor("installer"),
            enrolment("so-1", CustodianRole::SecurityOfficer, SO_INITIAL),
        )
        .await
        .unwrap();
    // Every refusal is in the trail, without the PIN.
    let refusals: Vec<_> = records(&svc, "custodian.enroll")
        .await
        .into_iter()
        .filter(|r| r.event.outcome == Some(Outcome::Refused))
        .collect();
    assert_eq!(refusals.len(), 12);
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_pin_lock_five_failures_lock_until_a_security_officer_re_enables() {
    let (_kms, svc) = setup().await;
    with_people(&svc).await;

    for n in 1..=4 {
        let a = auth(
            svc.authenticate("alice", &Pin::new(WRONG), now())
                .await
                .unwrap_err(),
        );
        assert_eq!(
            a,
            AuthRefusal::WrongPin {
                name: "alice".into(),
                failed_attempts: n,
                limit: 5,
                locked: false
            }
        );
    }
    assert!(records(&svc, "custodian.lock").await.is_empty());
    let e = svc
        .authenticate("alice", &Pin::new(WRONG), now())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("now locked"), "{e}");
    assert!(matches!(
        auth(e),
        AuthRefusal::WrongPin {
            failed_attempts: 5,
            locked: true,
            ..
        }
    ));
    let locks = records(&svc, "custodian.lock").await;
    assert_eq!(locks.len(), 1);
    assert_eq!(locks[0].event.details["custodian"], "alice");
    assert_eq!(locks[0].event.details["failed_attempts"], "5");
    assert_eq!(locks[0].event.actor, "kms");
    // The lock record shares the failed login's request id.
    let logins = records(&svc, "custodian.login").await;
    let last_failure = logins
        .iter()
        .rev()
        .find(|r| r.event.outcome == Some(Outcome::Failure))
        .unwrap();
    assert_eq!(last_failure.event.request_id, locks[0].event.request_id);
    assert_eq!(last_failure.event.role, "custodian");

    // Locked: the right PIN is refused, nothing more is counted, the PIN
    // cannot be changed, alice approves nothing.
    assert!(matches!(
        auth(
            svc.authenticate("alice", &Pin::new(ALICE_PIN), now())
                .await
                .unwrap_err()
        ),
        AuthRefusal::Locked { .. }
    ));
    assert!(matches!(
        auth(
            svc.change_pin(
                "alice",
                &Pin::new(ALICE_PIN),
                &Pin::new("Fresh paint 88"),
                now()
            )
            .await
            .unwrap_err()
        ),
        AuthRefusal::Locked { .. }
    ));
    let a = person(&svc, "alice").await;
    assert!(a.is_locked());
    assert_eq!(a.failed_attempts, 5);
    let req = request_as(&svc, "so-1", enrol_op("carol", "custodian", None))
        .await
        .unwrap();
    assert!(matches!(
        auth(appr(&svc, "alice", &req.id, &req.digest).await.unwrap_err()),
        AuthRefusal::Locked { .. }
    ));

    // Only a security officer in good standing, not alice herself, and with
    // a reason, re-enables her.
    assert!(matches!(
        auth(
            svc.unlock(&actor("bob"), "alice", "I know her")
                .await
                .unwrap_err()
        ),
        AuthRefusal::Role { .. }
    ));
    assert!(matches!(
        auth(
            svc.unlock(&actor("mallory"), "alice", "trust me")
                .await
                .unwrap_err()
        ),
        AuthRefusal::NotEnrolled { .. }
    ));
    assert!(matches!(
        auth(
            svc.unlock(&actor("alice"), "alice", "it is me")
                .await
                .unwrap_err()
        ),
        AuthRefusal::Locked { .. }
    ));
    let e = svc.unlock(&actor("so-1"), "alice", " ").await.unwrap_err();
    assert!(matches!(e, ServiceError::Invalid(_)), "{e}");
    refused(
        svc.unlock(&actor("so-1"), "bob", "not locked")
            .await
            .unwrap_err(),
        "not locked",
    );
    assert!(person(&svc, "alice").await.is_locked());
    let a = svc
        .unlock(
            &actor("so-1"),
            "alice",
            "identity checked against badge 1187",
        )
        .await
        .unwrap();
    assert!(!a.is_locked());
    assert_eq!(a.failed_attempts, 0);
    let unlocks = records(&svc, "custodian.unlock").await;
    let ok = unlocks.last().unwrap();
    assert_eq!(ok.event.outcome, Some(Outcome::Success));
    assert_eq!(ok.event.role, "security-officer");
    assert_eq!(
        ok.event.details["reason"],
        "identity checked against badge 1187"
    );
    assert_eq!(
        unlocks
            .iter()
            .filter(|r| r.event.outcome == Some(Outcome::Refused))
            .count(),
        5
    );
    svc.authenticate("alice", &Pin::new(ALICE_PIN), now())
        .await
        .unwrap();

    // Every login outcome is in the trail.
    let outcomes: Vec<_> = records(&svc, "custodian.login")
        .await
        .iter()
        .filter_map(|r| r.event.outcome)
        .collect();
    for o in [Outcome::Success, Outcome::Refused, Outcome::Failure] {
        assert!(outcomes.contains(&o), "{o:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn auth_pin_lock_concurrent_wrong_pins_lock_once_and_the_lock_survives_a_restart() {
    let (mut kms, svc) = setup().await;
    with_people(&svc).await;
    for _ in 0..4 {
        svc.authenticate("alice", &Pin::new(WRONG), now())
            .await
            .unwrap_err();
    }
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move {
                svc.authenticate("alice", &Pin::new(WRONG), now())
                    .await
                    .unwrap_err()
            })
        })
        .collect();
    let mut locked_now = 0;
    for t in tasks {
        match auth(t.await.unwrap()) {
            AuthRefusal::WrongPin {
                failed_attempts: 5,
                locked: true,
                ..
            } => locked_now += 1,
            AuthRefusal::Locked { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(locked_now, 1);
    let a = person(&svc, "alice").await;
    assert!(a.is_locked());
    assert_eq!(a.failed_attempts, 5);
    assert_eq!(records(&svc, "custodian.lock").await.len(), 1);

    // Restart: the service and its store closed, a new one opened on the
    // same database and token.
    svc.close().await.unwrap();
    let store = svc.store().clone();
    drop(svc);
    kms.close();
    store.close().await;
    let reopened = TestKms::service(&kms.token, &kms.db_url, Role::User)
        .await
        .with_custodian_settings(cheap());
    assert!(matches!(
        auth(
            reopened
                .authenticate("alice", &Pin::new(ALICE_PIN), now())
                .await
                .unwrap_err()
        ),
        AuthRefusal::Locked { .. }
    ));
    assert_eq!(person(&reopened, "alice").await.failed_attempts, 5);
    reopened
        .unlock(&actor("so-1"), "alice", "identity checked in person")
        .await
        .unwrap();
    reopened
        .authenticate("alice", &Pin::new(ALICE_PIN), now())
        .await
        .unwrap();
    let report = reopened.audit().verify_database().await.unwrap();
    assert!(report.ok(), "{report:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tsm_ac_5_a_login_outside_the_window_is_refused_and_not_counted() {
    let (_kms, svc) = setup().await;
    with_officer(&svc).await;
    let window = "Mon-Fri 08:00-18:00 +08:00";
    let carol = enrol_approved(
        &svc,
        enrol_op("carol", "custodian", Some("mon-fri 08:00-18:00 +08:00")),
        "witness",
        ALICE_INITIAL,
    )
    .await
    .unwrap();
    assert_eq!(
        carol.login_window,
        Some(LoginWindow::parse(window).unwrap())
    );

    // Monday 10:00 in Taipei is 02:00 UTC; Sunday and 18:00 are outside.
    let monday = datetime!(2026-03-02 02:00 UTC);
    let sunday = datetime!(2026-03-01 02:00 UTC);
    let evening = datetime!(2026-03-02 10:00 UTC);
    for at in [sunday, evening] {
        for pin in [ALICE_INITIAL, WRONG] {
            let a = auth(
                svc.authenticate("carol", &Pin::new(pin), at)
                    .await
                    .unwrap_err(),
            );
            assert_eq!(
                a,
                AuthRefusal::OutsideWindow {
                    name: "carol".into(),
                    window: window.into()
                }
            );
        }
        assert!(matches!(
            auth(
                svc.change_pin("carol", &Pin::new(ALICE_INITIAL), &Pin::new(ALICE_PIN), at)
                    .await
                    .unwrap_err()
            ),
            AuthRefusal::OutsideWindow { .. }
        ));
    }
    assert_eq!(person(&svc, "carol").await.failed_attempts, 0);
    svc.change_pin(
        "carol",
        &Pin::new(ALICE_INITIAL),
        &Pin::new(ALICE_PIN),
        monday,
    )
    .await
    .unwrap();
    let s = svc
        .authenticate("carol", &Pin::new(ALICE_PIN), monday)
        .await
        .unwrap();
    assert_eq!(s.authenticated_at(), monday);
    assert!(!s.idle_expired(monday, monday + time::Duration::minutes(14)));
    assert!(s.idle_expired(monday, monday + time::Duration::minutes(15)));
    let refused_logins = records(&svc, "custodian.login")
        .await
        .into_iter()
        .filter(|r| r.event.outcome == Some(Outcome::Refused))
        .count();
    assert_eq!(refused_logins, 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn issue5_removal_is_dual_controlled_and_keeps_an_officer() {
    let (_kms, svc) = setup().await;
    with_people(&svc).await;
    // The only officer cannot be removed.
    refused(
        request_as(
            &svc,
            "so-1",
            Operation::RemoveCustodian {
                name: "so-1".into(),
            },
        )
        .await
        .unwrap_err(),
        "last security officer",
    );
    let op = Operation::RemoveCustodian {
        name: "alice".into(),
    };
    // Custodians do not request; the person concerned does not approve.
    assert!(matches!(
        auth(request_as(&svc, "bob", op.clone()).await.unwrap_err()),
        AuthRefusal::Role { .. }
    ));
    let req = request_as(&svc, "so-1", op).await.unwrap();
    refused(exe(&svc, "so-1", &req.id).await.unwrap_err(), "0 of 1");
    refused(
        appr(&svc, "alice", &req.id, &req.digest).await.unwrap_err(),
        "cannot approve",
    );
    appr(&svc, "bob", &req.id, &req.digest).await.unwrap();
    let removed = match exe(&svc, "so-1", &req.id).await.unwrap() {
        Executed::Custodian(c) => c,
        other => panic!("{other:?}"),
    };
    assert!(removed.is_removed());
    assert_eq!(removed.removed_by.as_deref(), Some("so-1"));
    assert!(matches!(
        auth(
            svc.authenticate("alice", &Pin::new(ALICE_PIN), now())
                .await
                .unwrap_err()
        ),
        AuthRefusal::Removed { .. }
    ));
    let rec = records(&svc, "custodian.remove").await;
    let last = rec.last().unwrap();
    assert_eq!(last.event.outcome, Some(Outcome::Success));
    assert_eq!(last.event.request_id.as_deref(), Some(req.id.as_str()));
    // The name is never reused.
    let e = request_as(&svc, "so-1", enrol_op("alice", "custodian", None))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("never reused"), "{e}");
    let all = svc.list_custodians(&actor("so-1")).await.unwrap();
    // so-1, witness (the founding), alice.
    assert_eq!(all.len(), 3 + 1);
    assert_eq!(records(&svc, "custodian.list").await.len(), 1);
}

/// TSM-AC-1, AUTH-PIN-*: after a tour of every custodian act with the
/// production Argon2id parameters, no PIN (initial, changed, wrong or weak)
/// is in the audit trail, the errors, or anywhere in the database files;
/// the PIN hashes are Argon2id PHC strings and nothing else looks like a
/// secret.
#[tokio::test(flavor = "multi_thread")]
async fn tsm_ac_1_pins_never_appear_in_the_trail_or_the_database() {
    let kms = TestKms::new().await;
    let svc = kms.svc().clone();
    let mut errors = Vec::new();
    with_people(&svc).await;
    for _ in 0..5 {
        errors.push(
            svc.authenticate("bob", &Pin::new(WRONG), now())
                .await
                .unwrap_err()
                .to_string(),
        );
    }
    errors.push(
        svc.authenticate("bob", &Pin::new(BOB_PIN), now())
            .await
            .unwrap_err()
            .to_string(),
    );
    svc.unlock(&actor("so-1"), "bob", "identity checked in person")
        .await
        .unwrap();
    let weak = "87654321";
    errors.push(
        svc.change_pin("bob", &Pin::new(BOB_PIN), &Pin::new(weak), now())
            .await
            .unwrap_err()
            .to_string(),
    );
    errors.push(
        svc.enroll(
            &actor("so-1"),
            enrolment("dave", CustodianRole::Custodian, "Dave's pass 9"),
        )
        .await
        .unwrap_err()
        .to_string(),
    );
    // A PIN typed into the name field is neither taken for a name nor
    // recorded.
    for (typed_name, pin) in [(ALICE_PIN, ALICE_PIN), (BOB_PIN, BOB_PIN)] {
        let a = auth(
            svc.authenticate(typed_name, &Pin::new(pin), now())
                .await
                .unwrap_err(),
        );
        assert_eq!(
            a,
            AuthRefusal::NotEnrolled {
                name: "(invalid name)".into()
            }
        );
    }
    svc.authenticate("bob", &Pin::new(BOB_PIN), now())
        .await
        .unwrap();
    svc.close().await.unwrap();

    let pins = [
        SO_INITIAL,
        SO_PIN,
        ALICE_INITIAL,
        ALICE_PIN,
        BOB_INITIAL,
        BOB_PIN,
        WRONG,
        weak,
        "Dave's pass 9",
    ];
    for e in &errors {
        for p in pins {
            assert!(!e.contains(p), "{e}");
        }
    }
    let trail = records(&svc, "*").await;
    assert!(trail.len() > 40, "{}", trail.len());
    for r in &trail {
        let line = serde_json::to_string(r).unwrap();
        for p in pins {
            assert!(!line.contains(p), "a PIN in record {}: {line}", r.seq);
        }
    }
    // Every stored hash is Argon2id with OWASP's parameters.
    for c in svc.store().custodians().await.unwrap() {
        assert!(c
            .pin_hash()
            .as_str()
            .starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(!format!("{c:?}").contains(c.pin_hash().as_str()));
        assert!(!serde_json::to_string(&c).unwrap().contains("argon2"));
    }
    let store = svc.store().clone();
    drop(svc);
    let mut kms = kms;
    kms.close();
    store.close().await;
    let forbidden: Vec<&[u8]> = pins.iter().map(|p| p.as_bytes()).collect();
    let found = find_secrets_in_sqlite(&kms.db_path, &forbidden);
    assert!(found.is_empty(), "PINs in the database: {found:#?}");
    let suspicious = suspicious_values_in_sqlite(&kms.db_path);
    assert!(suspicious.is_empty(), "{suspicious:#?}");
}
