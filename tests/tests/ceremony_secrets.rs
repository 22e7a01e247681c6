//! Issue 5, KM-2: after a full ceremony, neither the database (every cell,
//! and the raw files with their free pages and WAL), nor the signed
//! transcript, nor anything the console showed holds a component, the key
//! they make, or a PIN, in any common encoding.

mod ceremony_support;

use ceremony_support::{Room, Split};
use kms::service::ceremony::StepOutcome;
use kms_e2e::scan::{encodings, find_secrets_in_sqlite};

fn find_in_text(text: &str, forbidden: &[&[u8]]) -> Vec<String> {
    let lower = text.to_lowercase();
    let mut found = Vec::new();
    for (i, secret) in forbidden.iter().enumerate() {
        for (enc, needle) in encodings(secret) {
            let needle = String::from_utf8_lossy(&needle).to_lowercase();
            if lower.contains(&needle) {
                found.push(format!("forbidden value #{i} as {enc}"));
            }
        }
    }
    found
}

#[tokio::test]
async fn km2_no_component_key_or_pin_in_database_transcript_or_output_after_a_full_ceremony() {
    let mut room = Room::new().await;
    let s = Split::new(21);
    let answers = room.answers(
        &[("officer", &["so1"]), ("custodians", &["alice", "bob"])],
        &[("alice", &s.c1), ("bob", &s.c2)],
        &[],
    );
    let kcv = s.kcv();
    let (signed, shown) = room
        .run(
            "key-import",
            &[("tenant", "acme"), ("key", "zmk"), ("kcv", &kcv)],
            &answers,
        )
        .await;
    assert_eq!(signed.transcript.outcome, StepOutcome::Done);
    let pins: Vec<Vec<u8>> = room
        .people
        .iter()
        .flat_map(|p| [p.pin.as_bytes().to_vec(), p.initial_pin.as_bytes().to_vec()])
        .collect();
    let mut forbidden: Vec<&[u8]> = vec![&s.key, &s.c1, &s.c2];
    forbidden.extend(pins.iter().map(Vec::as_slice));

    // Close every login so the database files are complete on disk.
    drop(room.svc().await);
    let in_db = find_secrets_in_sqlite(&room.kms.db_path, &forbidden);
    assert!(in_db.is_empty(), "database: {in_db:?}");
    let transcript = serde_json::to_string_pretty(&signed).expect("json");
    let in_transcript = find_in_text(&transcript, &forbidden);
    assert!(in_transcript.is_empty(), "transcript: {in_transcript:?}");
    let output = shown.join("\n");
    let in_output = find_in_text(&output, &forbidden);
    assert!(in_output.is_empty(), "console output: {in_output:?}");
    // The check values, which are public, are there.
    assert!(
        transcript.contains(&Split::component_kcv(&s.c1)),
        "{transcript}"
    );
    assert!(output.contains(&kcv));
}
