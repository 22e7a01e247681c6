//! Issue 5, AUTH-PIN-LEN, AUTH-PIN-WEAK, TSM-AC-1: a person enrolled after
//! the founding logs in to their first ceremony with the initial PIN and
//! must change it there; a weak new PIN aborts the run and changes nothing.

mod ceremony_support;

use ceremony_support::{Room, Split};
use kms::model::{Algorithm, CustodianRole, KeyUsage, Pin};
use kms::service::ceremony::StepOutcome;
use kms::service::Operation;
use kms_e2e::people::{person, Person};

/// Enrol `p` through dual control (so1 requests, alice approves, so1
/// executes with the initial PIN): their PIN must be changed at first use.
async fn enrol_later(room: &Room, p: &Person) {
    let svc = room.kms.svc();
    let so1 = person("so1").session(svc).await;
    let req = svc
        .request(
            &so1,
            Operation::EnrollCustodian {
                name: p.name.clone(),
                role: "custodian".into(),
                cert_sha256: Some(p.cert_sha256()),
                login_window: None,
                idle_timeout_seconds: None,
            },
        )
        .await
        .expect("request");
    person("alice")
        .approve(svc, &req.id)
        .await
        .expect("approve");
    svc.execute_enrolment(&so1, &req.id, Pin::new(p.initial_pin.as_str()))
        .await
        .expect("enrol");
}

async fn room_with_dave() -> (Room, Person) {
    let room = Room::new().await;
    let dave = Person::new("dave", CustodianRole::Custodian);
    enrol_later(&room, &dave).await;
    room.kms
        .import(
            "acme",
            "old-kek",
            Algorithm::Aes128,
            KeyUsage::Kek,
            false,
            &Split::new(51).key,
        )
        .await;
    room.kms
        .svc()
        .transition(
            &kms_e2e::fixture::actor("operator"),
            &kms_e2e::fixture::tenant("acme"),
            &kms_e2e::fixture::name("old-kek"),
            Some(1),
            kms::model::Transition::Deactivate,
            Some("retired"),
        )
        .await
        .expect("deactivate");
    std::fs::write(room.files.join("dave.pin"), &dave.initial_pin).expect("pin");
    std::fs::write(room.files.join("dave.key.pem"), &dave.key_pem).expect("key");
    std::fs::write(room.files.join("dave.crt.der"), &dave.cert_der).expect("cert");
    (room, dave)
}

fn answers_for_dave(room: &Room, new_pin: &str) -> std::path::PathBuf {
    let answers = room.answers(&[("officer", &["so1"]), ("approver", &["dave"])], &[], &[]);
    std::fs::write(room.files.join("dave.new-pin"), new_pin).expect("new pin");
    let mut text = std::fs::read_to_string(&answers).expect("answers");
    text.push_str(
        "\n[people.dave]\npin = \"file:dave.pin\"\nnew_pin = \"file:dave.new-pin\"\napproval_key = \"dave.key.pem\"\napproval_cert = \"dave.crt.der\"\n",
    );
    std::fs::write(&answers, text).expect("answers");
    answers
}

const PARAMS: [(&str, &str); 3] = [("tenant", "acme"), ("key", "old-kek"), ("version", "1")];

#[tokio::test]
async fn auth_pin_len_tsm_ac_1_the_initial_pin_is_changed_at_the_first_ceremony_login() {
    let (mut room, dave) = room_with_dave().await;
    let answers = answers_for_dave(&room, &dave.pin);
    let (signed, shown) = room.run("key-destroy", &PARAMS, &answers).await;
    assert_eq!(
        signed.transcript.outcome,
        StepOutcome::Done,
        "{:?}",
        signed.transcript.abort_reason
    );
    assert!(shown.join("\n").contains("dave's PIN changed"));
    // From now on only the new PIN works.
    let svc = room.svc().await;
    let now = time::OffsetDateTime::now_utc();
    let s = svc
        .authenticate("dave", &Pin::new(dave.pin.as_str()), now)
        .await
        .expect("new PIN");
    assert!(!s.must_change_pin());
}

#[tokio::test]
async fn auth_pin_weak_a_weak_new_pin_aborts_the_ceremony_and_changes_nothing() {
    let (mut room, dave) = room_with_dave().await;
    let answers = answers_for_dave(&room, "12345678");
    let (signed, _) = room.run("key-destroy", &PARAMS, &answers).await;
    assert_eq!(signed.transcript.outcome, StepOutcome::Aborted);
    let reason = signed.transcript.abort_reason.clone().unwrap_or_default();
    assert!(!reason.contains("12345678"), "{reason}");
    let svc = room.svc().await;
    let now = time::OffsetDateTime::now_utc();
    let s = svc
        .authenticate("dave", &Pin::new(dave.initial_pin.as_str()), now)
        .await
        .expect("the initial PIN still opens");
    assert!(s.must_change_pin());
    // The key is still there: nothing after the refusal ran.
    assert!(svc
        .get(
            &kms_e2e::fixture::tenant("acme"),
            &kms_e2e::fixture::name("old-kek")
        )
        .await
        .expect("key")
        .current()
        .is_some());
}

#[tokio::test]
async fn tsm_ac_5_a_custodian_idle_past_their_timeout_types_the_pin_again() {
    let mut room = Room::new().await;
    room.kms
        .import(
            "acme",
            "old-kek",
            Algorithm::Aes128,
            KeyUsage::Kek,
            false,
            &Split::new(52).key,
        )
        .await;
    room.kms
        .svc()
        .transition(
            &kms_e2e::fixture::actor("operator"),
            &kms_e2e::fixture::tenant("acme"),
            &kms_e2e::fixture::name("old-kek"),
            Some(1),
            kms::model::Transition::Deactivate,
            Some("retired"),
        )
        .await
        .expect("deactivate");
    let answers = room.answers(&[("officer", &["so1"]), ("approver", &["bob"])], &[], &[]);
    // Every look at the clock is 10 minutes later: by the time so1
    // requests, the default 15-minute idle timeout has passed.
    let start = time::OffsetDateTime::now_utc();
    let ticks = std::sync::atomic::AtomicI64::new(0);
    let clock = move || {
        start
            + time::Duration::minutes(10 * ticks.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    };
    let (signed, shown) = room
        .run_with_clock("key-destroy", &PARAMS, &answers, &clock)
        .await;
    assert_eq!(
        signed.transcript.outcome,
        StepOutcome::Done,
        "{:?}",
        signed.transcript.abort_reason
    );
    assert!(shown
        .join("\n")
        .contains("so1 has been idle longer than their idle timeout"));
    let again = signed
        .transcript
        .steps
        .iter()
        .filter(|s| s.details.get("reason").map(String::as_str) == Some("idle timeout"))
        .count();
    assert!(again >= 1, "the re-login is in the transcript");
}
