//! The store behaviour suite against SQLite files, and the scan that proves
//! the metadata database holds no key material.

#![allow(clippy::unwrap_used)]

use kms::store::Store;
use kms_e2e::scan::{find_secrets_in_sqlite, suspicious_values_in_sqlite};
use kms_e2e::store_suite;
use std::path::{Path, PathBuf};

async fn store_at(dir: &Path) -> (Store, PathBuf) {
    let path = dir.join("kms.db");
    let url = format!("sqlite://{}?mode=rwc", path.display());
    (Store::connect(&url).await.unwrap(), path)
}

#[tokio::test]
async fn sqlite_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = store_at(dir.path()).await;
    store_suite::lifecycle(&store).await;
}

#[tokio::test]
async fn sqlite_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = store_at(dir.path()).await;
    store_suite::refusals(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_concurrency() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = store_at(dir.path()).await;
    store_suite::concurrency(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_two_processes_share_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = store_at(dir.path()).await;
    let (b, _) = store_at(dir.path()).await;
    store_suite::two_nodes(&a, &b).await;
}

/// REPLAY-1, TSM-DATA-1: replay cache, SCP02 counters, card challenges and
/// SD bindings, with concurrent writers; the state survives a restart and is
/// shared by two stores on one file.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_replay_1_tsm_data_1_provisioning_state() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = store_at(dir.path()).await;
    store_suite::provisioning(&store).await;
    store.close().await;

    let (a, _) = store_at(dir.path()).await;
    assert!(!a.remember_request("mallory", "dup", 5001).await.unwrap());
    assert_eq!(a.scp02_counter("race", "card").await.unwrap(), Some(119));
    assert!(!a.advance_scp02_counter("race", "card", 119).await.unwrap());
    assert!(!a.note_card_challenge("race", "card", "CAFE").await.unwrap());
    assert_eq!(a.sd_bindings("issuer-a").await.unwrap().len(), 3);
    let (b, _) = store_at(dir.path()).await;
    store_suite::provisioning_shared(&a, &b).await;
}

/// AUTH-PIN-LOCK, TSM-AC-1, TSM-AC-5: custodians at the store.
#[tokio::test]
async fn sqlite_auth_pin_lock_custodians() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = store_at(dir.path()).await;
    store_suite::custodians(&store).await;
}

/// AUTH-PIN-LOCK: 10 concurrent wrong PINs on an account with 4 failures,
/// from one store and from two on the same file: locked at exactly 5, one
/// attempt told it locked; a locked custodian stays locked across a restart
/// (the store closed and opened anew); of concurrent bootstraps one wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_auth_pin_lock_concurrent_failures_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = store_at(dir.path()).await;
    store_suite::custodians_concurrent_failures(&[&store], 10).await;
    store.close().await;
    drop(store);
    let (reopened, _) = store_at(dir.path()).await;
    store_suite::custodians_still_locked(&reopened).await;

    let dir = tempfile::tempdir().unwrap();
    let (a, _) = store_at(dir.path()).await;
    let (b, _) = store_at(dir.path()).await;
    store_suite::custodians_concurrent_bootstrap(&[&a, &b], 8).await;
    store_suite::custodians_concurrent_failures(&[&a, &b], 10).await;
}

#[tokio::test]
async fn sqlite_memory() {
    let store = Store::connect("sqlite::memory:").await.unwrap();
    store_suite::lifecycle(&store).await;
}

/// Every table, every column, after every method: only object ids, KCVs,
/// certificate fingerprints and PIN hashes look like key material, and
/// values that were never given to the store (PINs included) are nowhere in
/// its files.
#[tokio::test]
async fn no_key_material_in_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let (store, path) = store_at(dir.path()).await;
    store_suite::fill_every_method(&store).await;

    // Checked both with the pool open (data in the WAL) and after close
    // (checkpointed into the main file).
    let mut absent: Vec<&[u8]> = vec![
        b"\x00\x11\x22\x33\x44\x55\x66\x77\x88\x99\xaa\xbb\xcc\xdd\xee\xff",
        b"0123456789abcdef",
    ];
    // TSM-AC-1: custodians' PINs are stored only as Argon2id hashes.
    absent.extend(
        store_suite::PINS_GIVEN_TO_THE_HASHER
            .iter()
            .map(|p| p.as_bytes()),
    );
    for round in ["open", "closed"] {
        let suspicious = suspicious_values_in_sqlite(&path);
        assert!(suspicious.is_empty(), "{round}: {suspicious:#?}");
        let found = find_secrets_in_sqlite(&path, &absent);
        assert!(found.is_empty(), "{round}: {found:#?}");
        store.close().await;
    }
}

/// The scanners are not vacuous: a key planted in a free-text column is
/// found in every encoding the scan knows, and flagged by the heuristics.
#[tokio::test]
async fn scanners_find_a_planted_key() {
    let dir = tempfile::tempdir().unwrap();
    let (store, path) = store_at(dir.path()).await;
    let key: [u8; 16] = *b"\x9e\x1f\x00\x42\x7c\xd3\x55\xaa\x01\xfe\x10\x20\x30\x40\x50\x60";
    let k = store
        .create_key(
            &store_suite::new_key("t", "k"),
            &store_suite::new_version(kms::model::KeyState::Active),
            "a",
        )
        .await
        .unwrap();
    let hex_upper = hex::encode_upper(key);
    let decimal = key
        .iter()
        .map(|b| b.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    for reason in [
        format!("oops {hex_upper}"),
        format!("oops {}", hex::encode(key)),
        format!("[{decimal}]"),
    ] {
        store
            .record_event(&k.id, None, "a", "note", Some(&reason))
            .await
            .unwrap();
    }
    store.close().await;

    let found = find_secrets_in_sqlite(&path, &[&key]);
    let in_column: Vec<&String> = found
        .iter()
        .filter(|f| f.starts_with("key_events.reason"))
        .collect();
    assert!(
        in_column.iter().any(|f| f.ends_with("as hex")),
        "{found:#?}"
    );
    assert!(
        in_column.iter().any(|f| f.ends_with("as decimal list")),
        "{found:#?}"
    );
    assert!(found.iter().any(|f| f.starts_with("file ")), "{found:#?}");

    let suspicious = suspicious_values_in_sqlite(&path);
    assert!(
        suspicious
            .iter()
            .any(|s| s.starts_with("key_events.reason")),
        "{suspicious:#?}"
    );
}
