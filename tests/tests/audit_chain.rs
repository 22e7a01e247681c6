//! The audit chain against real databases (SQLite and PostgreSQL) and a real
//! token: tampering in each way is named exactly, an untouched chain
//! verifies after thousands of concurrent writes from two nodes, and a
//! kill -9 during writes leaves a chain that verifies (TSM-AC-2).

use kms::audit::{AuditEvent, AuditLog, AuditRecord, DamageKind, Outcome, VerifyReport};
use kms_e2e::fixture::TestKms;
use kms_e2e::pg::fresh_database_url;
use sqlx::any::AnyPoolOptions;
use std::sync::Arc;

fn event(i: u64) -> AuditEvent {
    AuditEvent {
        actor: format!("actor-{i}"),
        role: "operator".into(),
        action: "test.write".into(),
        outcome: Some(Outcome::Success),
        ..Default::default()
    }
}

async fn fill(log: &AuditLog, n: u64) {
    for i in 0..n {
        log.record(event(i)).await.unwrap();
    }
}

async fn sql(url: &str, statements: &[&str]) {
    sqlx::any::install_default_drivers();
    let pool = AnyPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .unwrap();
    for s in statements {
        sqlx::query(s)
            .execute(&pool)
            .await
            .unwrap_or_else(|e| panic!("{s}: {e}"));
    }
    pool.close().await;
}

fn assert_named(r: &VerifyReport, kind: DamageKind, seq: u64) {
    assert!(
        r.damage.iter().any(|d| d.kind == kind && d.seq == seq),
        "expected {kind:?} at record {seq}, got {:?}",
        r.damage
    );
    assert!(
        r.damage.iter().all(|d| d.kind == kind),
        "only {kind:?} expected, got {:?}",
        r.damage
    );
}

/// One fresh KMS per tampering case, on the given backend.
async fn kms_on(pg: bool) -> TestKms {
    if pg {
        TestKms::with_database(&fresh_database_url()).await
    } else {
        TestKms::new().await
    }
}

async fn seq_of(log: &AuditLog, actor: &str) -> u64 {
    let f = kms::store::AuditFilter {
        actor: Some(actor.into()),
        ..Default::default()
    };
    log.store().audit_search(&f).await.unwrap()[0].seq
}

async fn case_changed(pg: bool) {
    // Changed: one record's content edited in place.
    let kms = kms_on(pg).await;
    let log = kms.svc().audit().clone();
    fill(&log, 30).await;
    let k = seq_of(&log, "actor-9").await;
    sql(
        &kms.db_url,
        &[&format!(
            "UPDATE audit_records SET body = replace(body, '\"actor\":\"actor-9\"', '\"actor\":\"mallory\"') WHERE seq = {k}"
        )],
    )
    .await;
    let r = log.verify_database().await.unwrap();
    assert_named(&r, DamageKind::Changed, k);
}

async fn case_deleted(pg: bool) {
    // Deleted: a record removed.
    let kms = kms_on(pg).await;
    let log = kms.svc().audit().clone();
    fill(&log, 30).await;
    let k = seq_of(&log, "actor-6").await;
    sql(
        &kms.db_url,
        &[&format!("DELETE FROM audit_records WHERE seq = {k}")],
    )
    .await;
    assert_named(
        &log.verify_database().await.unwrap(),
        DamageKind::Deleted,
        k,
    );
}

async fn case_inserted(pg: bool) {
    // Inserted: a well-formed forged record appended by hand.
    let kms = kms_on(pg).await;
    let log = kms.svc().audit().clone();
    fill(&log, 30).await;
    let (head, prev) = log.store().audit_head().await.unwrap();
    let forged_event = event(999);
    let at = "2026-11-25T00:00:00Z";
    let hash = AuditRecord::compute_hash(head + 1, at, "n1", &forged_event, &prev);
    let forged = AuditRecord {
        seq: head + 1,
        at: at.into(),
        node: "n1".into(),
        event: forged_event,
        prev: prev.clone(),
        hash: hash.clone(),
        mac: String::new(),
    };
    let body = serde_json::to_string(&forged).unwrap().replace('\'', "''");
    sql(
        &kms.db_url,
        &[&format!(
            "INSERT INTO audit_records (seq, at, node, actor, action, outcome, body, prev, hash, mac) \
             VALUES ({}, '{at}', 'n1', 'actor-999', 'test.write', 'success', '{body}', '{prev}', '{hash}', '')",
            head + 1
        )],
    )
    .await;
    // Named as inserted; and, having no MAC from the HSM, as such too.
    let r = log.verify_database().await.unwrap();
    assert!(
        r.damage
            .iter()
            .any(|d| d.kind == DamageKind::Inserted && d.seq == head + 1),
        "{:?}",
        r.damage
    );
    assert!(r.damage.iter().all(|d| d.seq == head + 1), "{:?}", r.damage);
}

async fn case_reordered(pg: bool) {
    // Reordered: two records swap places.
    let kms = kms_on(pg).await;
    let log = kms.svc().audit().clone();
    fill(&log, 30).await;
    let k = seq_of(&log, "actor-12").await;
    sql(
        &kms.db_url,
        &[
            &format!("UPDATE audit_records SET seq = -1 WHERE seq = {k}"),
            &format!("UPDATE audit_records SET seq = {k} WHERE seq = {}", k + 1),
            &format!("UPDATE audit_records SET seq = {} WHERE seq = -1", k + 1),
        ],
    )
    .await;
    let r = log.verify_database().await.unwrap();
    assert_named(&r, DamageKind::Reordered, k);
    assert_named(&r, DamageKind::Reordered, k + 1);
}

async fn case_truncated_tail(pg: bool) {
    // Truncated tail: the last records and the head rolled back, but a
    // signed checkpoint remembers the true end.
    let kms = kms_on(pg).await;
    let log = kms.svc().audit().clone();
    fill(&log, 30).await;
    let cp = log.checkpoint_head().await.unwrap().unwrap();
    let cut = cp.seq - 5;
    let keep = log.store().audit_search(&Default::default()).await.unwrap();
    let keep_hash = &keep.iter().find(|r| r.seq == cut).unwrap().hash;
    sql(
        &kms.db_url,
        &[
            &format!("DELETE FROM audit_records WHERE seq > {cut}"),
            &format!("UPDATE audit_head SET seq = {cut}, hash = '{keep_hash}' WHERE id = 1"),
        ],
    )
    .await;
    assert_named(
        &log.verify_database().await.unwrap(),
        DamageKind::TruncatedTail,
        cut + 1,
    );
}

async fn case_bad_signature(pg: bool) {
    // A bad signature on a checkpoint.
    let kms = kms_on(pg).await;
    let log = kms.svc().audit().clone();
    fill(&log, 10).await;
    let cp = log.checkpoint_head().await.unwrap().unwrap();
    let flipped = if cp.signature.starts_with("00") {
        "11"
    } else {
        "00"
    };
    sql(
        &kms.db_url,
        &[&format!(
            "UPDATE audit_checkpoints SET signature = '{flipped}' || substr(signature, 3) WHERE seq = {}",
            cp.seq
        )],
    )
    .await;
    assert_named(
        &log.verify_database().await.unwrap(),
        DamageKind::BadSignature,
        cp.seq,
    );
}

async fn case_bad_mac(pg: bool) {
    // A record whose HSM MAC was replaced (content and chain intact).
    let kms = kms_on(pg).await;
    let log = kms.svc().audit().clone();
    fill(&log, 10).await;
    let k = seq_of(&log, "actor-3").await;
    let rec = log
        .store()
        .audit_search(&Default::default())
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.seq == k)
        .unwrap();
    let fake = "AB".repeat(rec.mac.len() / 2);
    sql(
        &kms.db_url,
        &[&format!(
            "UPDATE audit_records SET body = replace(body, '{}', '{fake}') WHERE seq = {k}",
            rec.mac
        )],
    )
    .await;
    assert_named(&log.verify_database().await.unwrap(), DamageKind::BadMac, k);
}

#[tokio::test(flavor = "multi_thread")]
async fn tsm_ac2_tamper_changed_is_named_sqlite() {
    case_changed(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tsm_ac2_tamper_changed_is_named_postgres() {
    case_changed(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tsm_ac2_tamper_deleted_is_named_sqlite() {
    case_deleted(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tsm_ac2_tamper_deleted_is_named_postgres() {
    case_deleted(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tsm_ac2_tamper_inserted_is_named_sqlite() {
    case_inserted(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tsm_ac2_tamper_inserted_is_named_postgres() {
    case_inserted(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tsm_ac2_tamper_reordered_is_named_sqlite() {
    case_reordered(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tsm_ac2_tamper_reordered_is_named_postgres() {
    case_reordered(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tsm_ac2_tamper_truncated_tail_is_named_sqlite() {
    case_truncated_tail(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tsm_ac2_tamper_truncated_tail_is_named_postgres() {
    case_truncated_tail(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tsm_ac2_tamper_bad_signature_is_named_sqlite() {
    case_bad_signature(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tsm_ac2_tamper_bad_signature_is_named_postgres() {
    case_bad_signature(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tsm_ac2_tamper_bad_mac_is_named_sqlite() {
    case_bad_mac(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tsm_ac2_tamper_bad_mac_is_named_postgres() {
    case_bad_mac(true).await;
}

async fn concurrent_writers(logs: Vec<AuditLog>, per_task: u64, tasks_per_log: usize) {
    let mut handles = Vec::new();
    for (n, log) in logs.into_iter().enumerate() {
        let log = Arc::new(log);
        for t in 0..tasks_per_log {
            let log = log.clone();
            handles.push(tokio::spawn(async move {
                for i in 0..per_task {
                    log.record(event((n * 1_000_000 + t * 10_000) as u64 + i))
                        .await
                        .unwrap();
                }
            }));
        }
    }
    for h in handles {
        h.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tsm_ac2_chain_stays_linear_with_concurrent_writers_sqlite() {
    let kms = TestKms::new().await;
    let log = kms.svc().audit().clone();
    let before = log.store().audit_head().await.unwrap().0;
    concurrent_writers(vec![log.clone()], 125, 16).await;
    let r = log.verify_database().await.unwrap();
    assert!(r.ok(), "{:?}", r.damage);
    assert_eq!(r.last_seq, Some(before + 2000));
    assert!(
        r.checkpoints_verified >= 20,
        "a checkpoint every 100 records"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tsm_ac2_chain_stays_linear_with_two_nodes_on_postgres() {
    let url = fresh_database_url();
    let kms = TestKms::with_database(&url).await;
    let node_a = kms.svc().audit().clone();
    // A second node: its own connection pool to the same database.
    let store_b = kms::store::Store::connect(&url).await.unwrap();
    let node_b = AuditLog::open(store_b, kms.svc().hsm().clone())
        .await
        .unwrap();
    let before = node_a.store().audit_head().await.unwrap().0;
    concurrent_writers(vec![node_a.clone(), node_b], 125, 8).await;
    let r = node_a.verify_database().await.unwrap();
    assert!(r.ok(), "{:?}", r.damage);
    assert_eq!(r.last_seq, Some(before + 2000));
}

/// Not a test on its own: the child process of the kill -9 test. It does
/// nothing unless the parent set KMS_AUDIT_WRITER.
#[tokio::test(flavor = "multi_thread")]
async fn audit_writer_child() {
    let Ok(db) = std::env::var("KMS_AUDIT_WRITER") else {
        return;
    };
    let pin = std::env::var("KMS_TEST_PIN").unwrap();
    let cfg = kms::hsm::HsmConfig {
        module: kms_e2e::token::module_path(),
        token_label: kms_e2e::token::LABEL.into(),
        pin: zeroize::Zeroizing::new(pin),
        role: kms::hsm::Role::User,
        max_sessions: 4,
    };
    let hsm = Arc::new(kms::hsm::Hsm::open(&cfg).unwrap());
    let store = kms::store::Store::connect(&db).await.unwrap();
    let log = AuditLog::open(store, hsm).await.unwrap();
    let mut i = 0;
    loop {
        log.record(event(i)).await.unwrap();
        i += 1;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tsm_ac2_kill_9_during_writes_leaves_a_verifiable_chain() {
    let kms = TestKms::new().await;
    let log = kms.svc().audit().clone();
    fill(&log, 5).await;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "audit_writer_child", "--nocapture"])
        .env("KMS_AUDIT_WRITER", &kms.db_url)
        .env("KMS_TEST_PIN", &kms.token.user_pin)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Let it write for a while, then kill it mid-stream.
    let start = log.store().audit_head().await.unwrap().0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while log.store().audit_head().await.unwrap().0 < start + 200
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let head = log.store().audit_head().await.unwrap().0;
    assert!(
        head >= start + 200,
        "the child wrote {} records",
        head - start
    );
    let r = log.verify_database().await.unwrap();
    assert!(r.ok(), "{:?}", r.damage);
    assert_eq!(r.last_seq, Some(head));
    // And the chain goes on from there.
    fill(&log, 3).await;
    assert!(log.verify_database().await.unwrap().ok());
}

/// Invariant 4: if the audit record cannot be written, the act does not
/// happen. A trigger makes the database refuse the write-ahead record of a
/// key creation; the creation must then leave no row and no token object.
#[tokio::test(flavor = "multi_thread")]
async fn inv4_no_audit_record_no_act() {
    let kms = TestKms::new().await;
    let svc = kms.svc();
    let objects = svc.hsm().object_count().unwrap();
    sql(
        &kms.db_url,
        &["CREATE TRIGGER refuse_key_create BEFORE INSERT ON audit_records \
           WHEN NEW.action = 'key.create' BEGIN SELECT RAISE(ABORT, 'audit store unavailable'); END"],
    )
    .await;
    let e = svc
        .create(
            &kms_e2e::fixture::actor("alice"),
            kms_e2e::fixture::create_req(
                "t1",
                "k",
                kms::model::Algorithm::Aes128,
                kms::model::KeyUsage::Data,
                false,
            ),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, kms::service::ServiceError::Audit(_)), "{e}");
    assert!(e.to_string().contains("nothing was done"), "{e}");
    assert!(svc
        .store()
        .find_key(
            &kms_e2e::fixture::tenant("t1"),
            &kms_e2e::fixture::name("k")
        )
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        svc.hsm().object_count().unwrap(),
        objects,
        "no object was made"
    );
    // Reads whose record cannot be written return nothing either.
    sql(
        &kms.db_url,
        &[
            "CREATE TRIGGER refuse_reads BEFORE INSERT ON audit_records \
           WHEN NEW.action = 'key.list' BEGIN SELECT RAISE(ABORT, 'audit store unavailable'); END",
        ],
    )
    .await;
    assert!(svc
        .list(&kms_e2e::fixture::actor("alice"), None)
        .await
        .is_err());
}

/// A record cannot shed its MAC by claiming the security officer's role:
/// records without a MAC pass only when a MACed countersignature lists them.
#[tokio::test(flavor = "multi_thread")]
async fn tsm_ac2_blanked_mac_is_named_even_for_an_officer_record() {
    let kms = TestKms::new().await;
    let log = kms.svc().audit().clone();
    fill(&log, 5).await;
    let rec = log
        .record(AuditEvent {
            role: "security-officer".into(),
            ..event(77)
        })
        .await
        .unwrap();
    fill(&log, 3).await;
    sql(
        &kms.db_url,
        &[&format!(
            "UPDATE audit_records SET body = replace(body, '\"mac\":\"{}\"', '\"mac\":\"\"') WHERE seq = {}",
            rec.mac, rec.seq
        )],
    )
    .await;
    assert_named(
        &log.verify_database().await.unwrap(),
        DamageKind::BadMac,
        rec.seq,
    );
    // A later login (here: a new service on the same database) does not
    // countersign what a database writer blanked.
    let again = kms::service::KeyService::open(
        kms.svc().hsm().clone(),
        kms.svc().store().clone(),
        kms::policy::KeyPolicy::builtin(),
        "test",
    )
    .await
    .unwrap();
    assert_named(
        &again.audit().verify_database().await.unwrap(),
        DamageKind::BadMac,
        rec.seq,
    );
}

/// Deleting the oldest records up to a checkpoint is not an archive: without
/// the trail's own `audit.archive` record the missing prefix is named.
#[tokio::test(flavor = "multi_thread")]
async fn tsm_ac2_deleted_prefix_is_not_an_archive() {
    let kms = TestKms::new().await;
    let log = kms.svc().audit().clone();
    fill(&log, 20).await;
    let cp = log.checkpoint_head().await.unwrap().unwrap();
    fill(&log, 5).await;
    sql(
        &kms.db_url,
        &[&format!(
            "DELETE FROM audit_records WHERE seq <= {}",
            cp.seq
        )],
    )
    .await;
    let r = log.verify_database().await.unwrap();
    assert!(
        r.damage
            .iter()
            .any(|d| d.kind == DamageKind::Deleted && d.seq == 1),
        "{:?}",
        r.damage
    );
}
