//! Issue 5: a ceremony stops cleanly. A "no" at any confirmation, a
//! combined check value that differs from the sender's, a wrong PIN: no key
//! is created (none in the database, none on the token), a request already
//! made stays unexecuted, and the signed, recorded transcript says where
//! and why the run stopped.

mod ceremony_support;

use ceremony_support::{Room, Split};
use kms::service::ceremony::{SignedTranscript, StepOutcome};
use kms_e2e::fixture::{actor, name, tenant};

/// After an abort: no `acme/zmk` anywhere, the request (if one was made)
/// still open, the transcript aborted, signed and in the trail.
async fn assert_clean_abort(room: &Room, signed: &SignedTranscript, at_step: u32) {
    let t = &signed.transcript;
    assert_eq!(t.outcome, StepOutcome::Aborted);
    let last = t.steps.last().expect("steps");
    assert_eq!(last.outcome, StepOutcome::Aborted);
    assert_eq!(last.index, at_step, "{:?}", t.abort_reason);
    let svc = room.svc().await;
    assert!(
        svc.get(&tenant("acme"), &name("zmk")).await.is_err(),
        "no key record after an abort"
    );
    let objects = svc.hsm().list_objects().expect("objects");
    assert!(
        objects.iter().all(|o| !o.label.starts_with("acme/")),
        "no key object on the token after an abort: {:?}",
        objects.iter().map(|o| &o.label).collect::<Vec<_>>()
    );
    if let Some(id) = t
        .steps
        .iter()
        .find(|s| s.kind == "request")
        .and_then(|s| s.details.get("request"))
    {
        assert_eq!(svc.approval(id).await.expect("request").status, "open");
        assert!(t
            .abort_reason
            .as_deref()
            .unwrap_or_default()
            .contains("left unexecuted"));
    }
    let check = svc
        .verify_transcript(&actor("auditor"), signed)
        .await
        .expect("verify");
    assert!(
        check.ok(),
        "an aborted run's transcript is recorded too: {check:?}"
    );
}

fn import_params(kcv: &str) -> Vec<(&'static str, String)> {
    vec![
        ("tenant", "acme".into()),
        ("key", "zmk".into()),
        ("kcv", kcv.to_owned()),
    ]
}

async fn run_import(room: &mut Room, kcv: &str, answers: &std::path::Path) -> SignedTranscript {
    let params = import_params(kcv);
    let p: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
    room.run("key-import", &p, answers).await.0
}

#[tokio::test]
async fn km2_a_no_at_the_kcv_confirmation_aborts_with_no_key_and_the_request_unexecuted() {
    let mut room = Room::new().await;
    let s = Split::new(11);
    // Step 8 of key-import is confirm-kcv.
    let answers = room.answers(
        &[("officer", &["so1"]), ("custodians", &["alice", "bob"])],
        &[("alice", &s.c1), ("bob", &s.c2)],
        &[8],
    );
    let signed = run_import(&mut room, &s.kcv(), &answers).await;
    assert!(signed
        .transcript
        .abort_reason
        .as_deref()
        .unwrap_or_default()
        .contains("answered no"));
    assert_clean_abort(&room, &signed, 8).await;
}

#[tokio::test]
async fn km2_a_component_not_matching_the_senders_kcv_aborts_before_the_key_exists() {
    let mut room = Room::new().await;
    let s = Split::new(12);
    let wrong = Split::new(13).kcv();
    let answers = room.answers(
        &[("officer", &["so1"]), ("custodians", &["alice", "bob"])],
        &[("alice", &s.c1), ("bob", &s.c2)],
        &[],
    );
    let signed = run_import(&mut room, &wrong, &answers).await;
    assert!(signed
        .transcript
        .abort_reason
        .as_deref()
        .unwrap_or_default()
        .contains("differs from the sender"));
    assert_clean_abort(&room, &signed, 8).await;
}

#[tokio::test]
async fn km2_a_custodian_refusing_to_approve_aborts_before_any_component_is_typed() {
    let mut room = Room::new().await;
    let s = Split::new(14);
    // Step 5 is approve.
    let answers = room.answers(
        &[("officer", &["so1"]), ("custodians", &["alice", "bob"])],
        &[("alice", &s.c1), ("bob", &s.c2)],
        &[5],
    );
    let signed = run_import(&mut room, &s.kcv(), &answers).await;
    assert!(signed
        .transcript
        .steps
        .iter()
        .all(|s| s.kind != "component"));
    assert_clean_abort(&room, &signed, 5).await;
}

#[tokio::test]
async fn auth_pin_lock_a_wrong_pin_aborts_and_counts_towards_the_lock() {
    let mut room = Room::new().await;
    let s = Split::new(15);
    let answers = room.answers(
        &[("officer", &["so1"]), ("custodians", &["alice", "bob"])],
        &[("alice", &s.c1), ("bob", &s.c2)],
        &[],
    );
    std::fs::write(room.files.join("bob.pin"), "Not the words of bob 9").expect("pin");
    let signed = run_import(&mut room, &s.kcv(), &answers).await;
    let reason = signed.transcript.abort_reason.clone().unwrap_or_default();
    assert!(reason.contains("wrong PIN for bob"), "{reason}");
    assert!(
        !reason.contains("Not the words"),
        "a PIN never reaches a transcript"
    );
    assert_clean_abort(&room, &signed, 3).await;
    let bob = room
        .svc()
        .await
        .store()
        .custodian("bob")
        .await
        .expect("store")
        .expect("bob");
    assert_eq!(bob.failed_attempts, 1);
}

#[tokio::test]
async fn km2_the_same_custodian_cannot_take_two_places() {
    let mut room = Room::new().await;
    let s = Split::new(16);
    let answers = room.answers(
        &[("officer", &["so1"]), ("custodians", &["alice", "alice"])],
        &[("alice", &s.c1)],
        &[],
    );
    let signed = run_import(&mut room, &s.kcv(), &answers).await;
    assert!(signed
        .transcript
        .abort_reason
        .as_deref()
        .unwrap_or_default()
        .contains("already taking part"));
    assert_clean_abort(&room, &signed, 3).await;
}

#[tokio::test]
async fn tsm_ac_2_a_changed_transcript_no_longer_verifies() {
    let mut room = Room::new().await;
    let s = Split::new(17);
    let answers = room.answers(
        &[("officer", &["so1"]), ("custodians", &["alice", "bob"])],
        &[("alice", &s.c1), ("bob", &s.c2)],
        &[],
    );
    let signed = run_import(&mut room, &s.kcv(), &answers).await;
    assert_eq!(signed.transcript.outcome, StepOutcome::Done);
    let svc = room.svc().await;
    let mut forged = signed.clone();
    forged.transcript.people[1].name = "mallory".into();
    let check = svc
        .verify_transcript(&actor("auditor"), &forged)
        .await
        .expect("verify");
    assert!(!check.digest_matches && !check.ok());
    // Re-hashing does not help: the signature and the trail's record name
    // the original digest.
    forged.digest = forged.transcript.digest().expect("digest");
    let check = svc
        .verify_transcript(&actor("auditor"), &forged)
        .await
        .expect("verify");
    assert!(check.digest_matches && !check.signature_valid && check.audit_seq.is_none());
}
