//! The store behaviour suite against a real PostgreSQL server on loopback
//! (see kms_e2e::pg). Grouped into a few tests because under nextest each
//! test is a process of its own and pays for one initdb.

#![allow(clippy::unwrap_used)]

use kms::store::{Backend, Store};
use kms_e2e::pg::{fresh_database_url, PgServer};
use kms_e2e::store_suite;

async fn fresh_store() -> Store {
    let store = Store::connect(&fresh_database_url()).await.unwrap();
    assert_eq!(store.backend(), Backend::Postgres);
    store
}

#[tokio::test]
async fn pg_lifecycle() {
    store_suite::lifecycle(&fresh_store().await).await;
}

#[tokio::test]
async fn pg_refusals() {
    store_suite::refusals(&fresh_store().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_concurrency() {
    store_suite::concurrency(&fresh_store().await).await;
}

/// REPLAY-1, TSM-DATA-1: replay cache, SCP02 counters, card challenges and
/// SD bindings, with concurrent writers; two nodes on one database share
/// the state.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_replay_1_tsm_data_1_provisioning_state() {
    let url = fresh_database_url();
    let a = Store::connect(&url).await.unwrap();
    store_suite::provisioning(&a).await;
    let b = Store::connect(&url).await.unwrap();
    assert!(!b.remember_request("mallory", "dup", 5001).await.unwrap());
    assert_eq!(b.scp02_counter("race", "card").await.unwrap(), Some(119));
    assert_eq!(b.sd_bindings("issuer-a").await.unwrap().len(), 3);
    store_suite::provisioning_shared(&a, &b).await;
}

/// AUTH-PIN-LOCK, TSM-AC-1, TSM-AC-5: custodians at the store.
#[tokio::test]
async fn pg_auth_pin_lock_custodians() {
    store_suite::custodians(&fresh_store().await).await;
}

/// AUTH-PIN-LOCK: 10 concurrent wrong PINs on an account with 4 failures,
/// spread over three nodes on one database: locked at exactly 5, one
/// attempt told it locked; a locked custodian stays locked across a restart
/// (every node closed, a new one connected); of concurrent bootstraps on
/// three nodes one wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_auth_pin_lock_concurrent_failures_across_nodes_and_restart() {
    let url = fresh_database_url();
    let a = Store::connect(&url).await.unwrap();
    let b = Store::connect(&url).await.unwrap();
    let c = Store::connect(&url).await.unwrap();
    store_suite::custodians_concurrent_bootstrap(&[&a, &b, &c], 9).await;
    store_suite::custodians_concurrent_failures(&[&a, &b, &c], 10).await;
    for s in [a, b, c] {
        s.close().await;
    }
    let restarted = Store::connect(&url).await.unwrap();
    store_suite::custodians_still_locked(&restarted).await;
}

/// Several KMS nodes start together on one empty database: the migrations
/// run once (sqlx serialises them with an advisory lock) and the nodes see
/// each other's writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_nodes_share_one_database() {
    let url = fresh_database_url();
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move { Store::connect(&url).await }));
    }
    let mut nodes = Vec::new();
    for t in tasks {
        nodes.push(t.await.unwrap().unwrap());
    }
    store_suite::two_nodes(&nodes[0], &nodes[1]).await;
    assert_eq!(nodes[2].list_keys(None).await.unwrap().len(), 1);

    // A second server is independent of the shared one and goes away on drop.
    let own = PgServer::start();
    let port = own.port();
    let store = Store::connect(own.url()).await.unwrap();
    assert!(store.list_keys(None).await.unwrap().is_empty());
    store.close().await;
    drop(own);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the server stopped on drop"
    );
}
