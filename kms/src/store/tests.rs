//! Store tests against SQLite files. The same behaviour is run against a real
//! PostgreSQL by the kms-e2e crate (tests/src/store_suite.rs).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::model::{Algorithm, KeyName, KeyState, KeyUsage, ObjectId, Tenant};
use sqlx::Row;
use time::macros::datetime;

struct TempStore {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    store: Store,
}

async fn temp_store() -> TempStore {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kms.db");
    let store = Store::connect(&sqlite_url(&path)).await.unwrap();
    TempStore {
        _dir: dir,
        path,
        store,
    }
}

fn sqlite_url(path: &std::path::Path) -> String {
    format!("sqlite://{}?mode=rwc", path.display())
}

fn new_key(tenant: &str, name: &str) -> NewKey {
    NewKey {
        tenant: Tenant::parse(tenant).unwrap(),
        name: KeyName::parse(name).unwrap(),
        algorithm: Algorithm::Aes128,
        usage: KeyUsage::Kek,
        exportable: false,
    }
}

fn new_version(state: KeyState) -> NewVersion {
    NewVersion {
        object_id: ObjectId::random(),
        state,
        activate_at: None,
        expire_at: None,
    }
}

/// A key whose version 1 is present and active.
async fn active_key(store: &Store, tenant: &str, name: &str) -> KeyRecord {
    let k = store
        .create_key(
            &new_key(tenant, name),
            &new_version(KeyState::Active),
            "alice",
        )
        .await
        .unwrap();
    store.confirm_version(&k.id, 1, "1a2b3c").await.unwrap();
    find(store, tenant, name).await
}

async fn find(store: &Store, tenant: &str, name: &str) -> KeyRecord {
    store
        .find_key(
            &Tenant::parse(tenant).unwrap(),
            &KeyName::parse(name).unwrap(),
        )
        .await
        .unwrap()
        .expect("key exists")
}

fn actions(events: &[EventRecord]) -> Vec<&str> {
    events.iter().map(|e| e.action.as_str()).collect()
}

#[tokio::test]
async fn connect_migrates_and_reopens() {
    let t = temp_store().await;
    assert_eq!(t.store.backend(), Backend::Sqlite);
    active_key(&t.store, "issuer-a", "kmc").await;
    t.store.close().await;

    // Migrations run again on every connect and must be a no-op the second time.
    let again = Store::connect(&sqlite_url(&t.path)).await.unwrap();
    assert_eq!(again.list_keys(None).await.unwrap().len(), 1);

    let mut conn = again.pool.acquire().await.unwrap();
    let mode: String = sqlx::query("PRAGMA journal_mode")
        .fetch_one(&mut *conn)
        .await
        .unwrap()
        .get(0);
    assert_eq!(mode, "wal");
    let fk: i64 = sqlx::query("PRAGMA foreign_keys")
        .fetch_one(&mut *conn)
        .await
        .unwrap()
        .get(0);
    assert_eq!(fk, 1);
    let busy: i64 = sqlx::query("PRAGMA busy_timeout")
        .fetch_one(&mut *conn)
        .await
        .unwrap()
        .get(0);
    assert_eq!(busy, i64::from(SQLITE_BUSY_TIMEOUT_MS));
}

#[tokio::test]
async fn in_memory_database_works_across_calls() {
    let store = Store::connect("sqlite::memory:").await.unwrap();
    active_key(&store, "t", "k").await;
    // Several awaits later the same single connection still holds the data.
    for _ in 0..3 {
        assert_eq!(store.list_keys(None).await.unwrap().len(), 1);
    }
}

#[tokio::test]
async fn unsupported_url_names_only_the_scheme() {
    let e = Store::connect("mysql://root:hunter2@db/kms")
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::UnsupportedUrl { .. }), "{e}");
    assert!(!e.to_string().contains("hunter2"), "{e}");
    assert_eq!(
        Backend::from_url("postgresql://x/y").unwrap(),
        Backend::Postgres
    );
}

#[tokio::test]
async fn create_and_find_round_trip() {
    let t = temp_store().await;
    let mut nk = new_key("issuer-a", "kmc-2026");
    nk.algorithm = Algorithm::Tdes2;
    nk.usage = KeyUsage::SdKmc;
    nk.exportable = true;
    let mut nv = new_version(KeyState::PreActivation);
    nv.activate_at = Some(datetime!(2030-01-01 12:00 +02:00));
    nv.expire_at = Some(datetime!(2035-06-30 00:00:00.123456789 UTC));

    let created = t.store.create_key(&nk, &nv, "alice").await.unwrap();
    assert_eq!(created.versions.len(), 1);
    assert_eq!(created.versions[0].presence, Presence::Pending);
    assert_eq!(created.versions[0].version, 1);
    assert_eq!(created.created_by, "alice");

    let found = find(&t.store, "issuer-a", "kmc-2026").await;
    assert_eq!(found, created, "a read returns what create returned");
    let v = &found.versions[0];
    assert_eq!(v.object_id, nv.object_id);
    assert_eq!(v.state, KeyState::PreActivation);
    assert_eq!(v.activate_at, Some(datetime!(2030-01-01 10:00 UTC)));
    assert_eq!(v.activate_at.unwrap().offset(), time::UtcOffset::UTC);
    assert_eq!(v.expire_at, nv.expire_at);
    assert!(!v.trusted);
    assert_eq!(v.kcv, None);

    let missing = t
        .store
        .find_key(
            &Tenant::parse("issuer-b").unwrap(),
            &KeyName::parse("kmc-2026").unwrap(),
        )
        .await
        .unwrap();
    assert!(missing.is_none(), "keys are looked up by tenant and name");

    let ev = t.store.events(&created.id).await.unwrap();
    assert_eq!(actions(&ev), ["create"]);
    assert_eq!(ev[0].actor, "alice");
    assert_eq!(ev[0].version, Some(1));
    assert_eq!(ev[0].from_state, None);
    assert_eq!(ev[0].to_state, Some(KeyState::PreActivation));
}

#[tokio::test]
async fn create_key_as_names_the_action() {
    let t = temp_store().await;
    let k = t
        .store
        .create_key_as(
            &new_key("t", "imported"),
            &new_version(KeyState::Active),
            "bob",
            "import",
        )
        .await
        .unwrap();
    assert_eq!(actions(&t.store.events(&k.id).await.unwrap()), ["import"]);
    let e = t
        .store
        .create_key_as(
            &new_key("t", "x"),
            &new_version(KeyState::Active),
            "bob",
            "Import; drop",
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, StoreError::Invalid { what: "action", .. }),
        "{e}"
    );
    let e = t
        .store
        .create_key(&new_key("t", "y"), &new_version(KeyState::Active), "")
        .await
        .unwrap_err();
    assert!(
        matches!(e, StoreError::Invalid { what: "actor", .. }),
        "{e}"
    );
}

#[tokio::test]
async fn duplicates_are_refused() {
    let t = temp_store().await;
    let first = new_version(KeyState::Active);
    t.store
        .create_key(&new_key("issuer-a", "kmc"), &first, "alice")
        .await
        .unwrap();

    let e = t
        .store
        .create_key(
            &new_key("issuer-a", "kmc"),
            &new_version(KeyState::Active),
            "alice",
        )
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Duplicate { .. }), "{e}");

    // Same name under another tenant is another key.
    t.store
        .create_key(
            &new_key("issuer-b", "kmc"),
            &new_version(KeyState::Active),
            "alice",
        )
        .await
        .unwrap();

    // An object id binds exactly one version.
    let mut clash = new_version(KeyState::Active);
    clash.object_id = first.object_id;
    let e = t
        .store
        .create_key(&new_key("issuer-c", "kmc"), &clash, "alice")
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::DuplicateObjectId(_)), "{e}");
    assert!(
        t.store
            .find_key(
                &Tenant::parse("issuer-c").unwrap(),
                &KeyName::parse("kmc").unwrap()
            )
            .await
            .unwrap()
            .is_none(),
        "the failed create left no key row behind"
    );

    let k = find(&t.store, "issuer-b", "kmc").await;
    let e = t
        .store
        .add_version(&k.id, &clash, "alice", "rotate")
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::DuplicateObjectId(_)), "{e}");
    assert_eq!(t.store.list_keys(None).await.unwrap().len(), 2);
}

#[tokio::test]
async fn versions_are_numbered_in_order() {
    let t = temp_store().await;
    let k = active_key(&t.store, "t", "k").await;
    let v2 = t
        .store
        .add_version(
            &k.id,
            &new_version(KeyState::PreActivation),
            "bob",
            "rotate",
        )
        .await
        .unwrap();
    assert_eq!((v2.version, v2.presence), (2, Presence::Pending));
    let v3 = t
        .store
        .add_version(
            &k.id,
            &new_version(KeyState::PreActivation),
            "bob",
            "import",
        )
        .await
        .unwrap();
    assert_eq!(v3.version, 3);

    let found = find(&t.store, "t", "k").await;
    let numbers: Vec<u32> = found.versions.iter().map(|v| v.version).collect();
    assert_eq!(numbers, [1, 2, 3]);
    assert_eq!(found.version(2), Some(&v2));
    assert_eq!(found.current().map(|v| v.version), Some(3));
    assert_eq!(
        actions(&t.store.events(&k.id).await.unwrap()),
        ["create", "rotate", "import"]
    );

    let nobody = KeyId::new_random();
    let e = t
        .store
        .add_version(&nobody, &new_version(KeyState::Active), "bob", "rotate")
        .await
        .unwrap_err();
    assert!(
        matches!(e, StoreError::NotFound { version: None, .. }),
        "{e}"
    );
}

#[tokio::test]
async fn confirm_moves_pending_to_present_once() {
    let t = temp_store().await;
    let k = t
        .store
        .create_key(&new_key("t", "k"), &new_version(KeyState::Active), "a")
        .await
        .unwrap();
    t.store.confirm_version(&k.id, 1, "ab12ef").await.unwrap();
    let v = find(&t.store, "t", "k").await.versions[0].clone();
    assert_eq!(v.presence, Presence::Present);
    assert_eq!(v.kcv.as_deref(), Some("AB12EF"));
    assert!(v.updated_at >= v.created_at);

    let e = t
        .store
        .confirm_version(&k.id, 1, "ab12ef")
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict { version: 1, .. }), "{e}");

    let e = t
        .store
        .confirm_version(&k.id, 9, "ab12ef")
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::NotFound {
                version: Some(9),
                ..
            }
        ),
        "{e}"
    );

    // A key value passed by mistake is refused, and not echoed back.
    let key_hex = "00112233445566778899AABBCCDDEEFF";
    let e = t
        .store
        .confirm_version(&k.id, 1, key_hex)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Invalid { what: "kcv", .. }), "{e}");
    assert!(!e.to_string().contains(key_hex));
    // Key pairs have no check value.
    let pair = t
        .store
        .create_key(&new_key("t", "pair"), &new_version(KeyState::Active), "a")
        .await
        .unwrap();
    t.store.confirm_version(&pair.id, 1, "").await.unwrap();
    let v = find(&t.store, "t", "pair").await.versions[0].clone();
    assert_eq!((v.presence, v.kcv), (Presence::Present, None));

    let e = t.store.confirm_version(&k.id, 1, "xyz").await.unwrap_err();
    assert!(matches!(e, StoreError::Invalid { what: "kcv", .. }), "{e}");
}

#[tokio::test]
async fn abandoning_the_only_version_forgets_the_key() {
    let t = temp_store().await;
    let k = t
        .store
        .create_key(&new_key("t", "k"), &new_version(KeyState::Active), "a")
        .await
        .unwrap();
    t.store.abandon_pending(&k.id, 1).await.unwrap();
    assert!(t.store.list_keys(None).await.unwrap().is_empty());
    assert!(t.store.events(&k.id).await.unwrap().is_empty());
    // The name is free again.
    active_key(&t.store, "t", "k").await;
}

#[tokio::test]
async fn abandoning_a_later_version_keeps_the_key() {
    let t = temp_store().await;
    let k = active_key(&t.store, "t", "k").await;
    t.store
        .add_version(&k.id, &new_version(KeyState::Active), "a", "rotate")
        .await
        .unwrap();
    t.store.abandon_pending(&k.id, 2).await.unwrap();
    let found = find(&t.store, "t", "k").await;
    assert_eq!(found.versions.len(), 1);
    let ev = t.store.events(&k.id).await.unwrap();
    assert_eq!(actions(&ev), ["create", "rotate", "abandon"]);
    assert_eq!(ev[2].actor, SYSTEM_ACTOR);

    // Only pending rows can be abandoned: a present one has an HSM object.
    let e = t.store.abandon_pending(&k.id, 1).await.unwrap_err();
    assert!(matches!(e, StoreError::Conflict { .. }), "{e}");
    let e = t.store.abandon_pending(&k.id, 2).await.unwrap_err();
    assert!(matches!(e, StoreError::NotFound { .. }), "{e}");
}

#[tokio::test]
async fn change_state_is_compare_and_set() {
    let t = temp_store().await;
    let k = active_key(&t.store, "t", "k").await;
    t.store
        .change_state(
            &k.id,
            1,
            KeyState::Active,
            KeyState::Suspended,
            "carol",
            "suspend",
            Some("incident 42"),
        )
        .await
        .unwrap();

    // A caller that still believes the key is active loses.
    let e = t
        .store
        .change_state(
            &k.id,
            1,
            KeyState::Active,
            KeyState::Deactivated,
            "dave",
            "deactivate",
            None,
        )
        .await
        .unwrap_err();
    match &e {
        StoreError::Conflict { version, found, .. } => {
            assert_eq!(*version, 1);
            assert!(found.contains("suspended"), "{found}");
        }
        other => panic!("expected a conflict, got {other}"),
    }
    assert_eq!(
        find(&t.store, "t", "k").await.versions[0].state,
        KeyState::Suspended
    );

    let ev = t.store.events(&k.id).await.unwrap();
    assert_eq!(
        actions(&ev),
        ["create", "suspend"],
        "the loser left no event"
    );
    let last = &ev[1];
    assert_eq!(last.actor, "carol");
    assert_eq!(last.from_state, Some(KeyState::Active));
    assert_eq!(last.to_state, Some(KeyState::Suspended));
    assert_eq!(last.reason.as_deref(), Some("incident 42"));

    // Transitions SP 800-57 does not allow never reach the database.
    let e = t
        .store
        .change_state(
            &k.id,
            1,
            KeyState::Suspended,
            KeyState::Destroyed,
            "dave",
            "destroy",
            None,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::IllegalTransition(_)), "{e}");

    let e = t
        .store
        .change_state(
            &k.id,
            7,
            KeyState::Suspended,
            KeyState::Active,
            "dave",
            "activate",
            None,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::NotFound { .. }), "{e}");
}

#[tokio::test]
async fn concurrent_compare_and_set_has_one_winner() {
    let t = temp_store().await;
    let k = active_key(&t.store, "t", "k").await;
    let mut tasks = Vec::new();
    for to in [
        KeyState::Suspended,
        KeyState::Deactivated,
        KeyState::Compromised,
        KeyState::Suspended,
    ] {
        let store = t.store.clone();
        let id = k.id;
        tasks.push(tokio::spawn(async move {
            store
                .change_state(&id, 1, KeyState::Active, to, "x", "change", None)
                .await
        }));
    }
    let mut wins = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(()) => wins += 1,
            Err(StoreError::Conflict { .. }) => {}
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(wins, 1);
    assert_eq!(t.store.events(&k.id).await.unwrap().len(), 2);
}

#[tokio::test]
async fn concurrent_writers_wait_instead_of_failing() {
    let t = temp_store().await;
    let k = active_key(&t.store, "t", "k").await;
    let mut tasks = Vec::new();
    for i in 0..16 {
        let store = t.store.clone();
        let id = k.id;
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                store
                    .add_version(&id, &new_version(KeyState::PreActivation), "x", "rotate")
                    .await
                    .map(|_| ())
            } else {
                store
                    .create_key(
                        &new_key("t", &format!("k{i}")),
                        &new_version(KeyState::Active),
                        "x",
                    )
                    .await
                    .map(|_| ())
            }
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let found = find(&t.store, "t", "k").await;
    let numbers: Vec<u32> = found.versions.iter().map(|v| v.version).collect();
    assert_eq!(numbers, (1..=9).collect::<Vec<_>>());
    assert_eq!(t.store.list_keys(None).await.unwrap().len(), 9);
}

#[tokio::test]
async fn trust_needs_a_present_object() {
    let t = temp_store().await;
    let k = t
        .store
        .create_key(&new_key("t", "kek"), &new_version(KeyState::Active), "a")
        .await
        .unwrap();
    let e = t
        .store
        .set_trusted(&k.id, 1, true, "a", None)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict { .. }), "{e}");

    t.store.confirm_version(&k.id, 1, "00AA11").await.unwrap();
    t.store
        .set_trusted(&k.id, 1, true, "a", Some("ceremony 2026-03"))
        .await
        .unwrap();
    assert!(find(&t.store, "t", "kek").await.versions[0].trusted);
    t.store
        .set_trusted(&k.id, 1, false, "b", Some("partner changed"))
        .await
        .unwrap();
    assert!(!find(&t.store, "t", "kek").await.versions[0].trusted);

    let ev = t.store.events(&k.id).await.unwrap();
    assert_eq!(actions(&ev), ["create", "trust", "untrust"]);
    assert_eq!(ev[1].reason.as_deref(), Some("ceremony 2026-03"));
    assert_eq!(ev[2].actor, "b");

    let e = t
        .store
        .set_trusted(&k.id, 5, false, "a", None)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::NotFound { .. }), "{e}");
}

#[tokio::test]
async fn destruction_leaves_a_tombstone_with_its_kcv() {
    let t = temp_store().await;
    let k = active_key(&t.store, "t", "k").await;

    // An active key is deactivated before it may be destroyed.
    let e = t
        .store
        .mark_destroying(&k.id, 1, "a", None)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::IllegalTransition(_)), "{e}");

    t.store
        .change_state(
            &k.id,
            1,
            KeyState::Active,
            KeyState::Deactivated,
            "a",
            "deactivate",
            None,
        )
        .await
        .unwrap();
    t.store
        .mark_destroying(&k.id, 1, "a", Some("end of life"))
        .await
        .unwrap();
    let v = find(&t.store, "t", "k").await.versions[0].clone();
    assert_eq!(v.presence, Presence::Destroying);

    // No state change may slip in while the object is being removed.
    let e = t
        .store
        .change_state(
            &k.id,
            1,
            KeyState::Deactivated,
            KeyState::Compromised,
            "a",
            "compromise",
            None,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict { .. }), "{e}");
    let e = t
        .store
        .mark_destroying(&k.id, 1, "a", None)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict { .. }), "{e}");

    let e = t
        .store
        .mark_tombstone(&k.id, 1, KeyState::Deactivated)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Invalid { .. }), "{e}");

    t.store
        .mark_tombstone(&k.id, 1, KeyState::Destroyed)
        .await
        .unwrap();
    let found = find(&t.store, "t", "k").await;
    let v = &found.versions[0];
    assert_eq!(v.presence, Presence::Tombstone);
    assert_eq!(v.state, KeyState::Destroyed);
    assert_eq!(v.kcv.as_deref(), Some("1A2B3C"));
    assert_eq!(found.current(), None);

    let e = t
        .store
        .mark_tombstone(&k.id, 1, KeyState::Destroyed)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict { .. }), "{e}");

    // A destroyed key may later be found compromised.
    t.store
        .change_state(
            &k.id,
            1,
            KeyState::Destroyed,
            KeyState::DestroyedCompromised,
            "a",
            "compromise",
            None,
        )
        .await
        .unwrap();

    let ev = t.store.events(&k.id).await.unwrap();
    assert_eq!(
        actions(&ev),
        ["create", "deactivate", "destroy", "tombstone", "compromise"]
    );
    assert_eq!(ev[2].to_state, Some(KeyState::Destroyed));
    assert_eq!(ev[2].reason.as_deref(), Some("end of life"));
    assert_eq!(ev[3].actor, SYSTEM_ACTOR);
}

#[tokio::test]
async fn a_compromise_is_not_downgraded_by_destruction() {
    let t = temp_store().await;
    let k = active_key(&t.store, "t", "k").await;
    t.store
        .change_state(
            &k.id,
            1,
            KeyState::Active,
            KeyState::Compromised,
            "a",
            "compromise",
            None,
        )
        .await
        .unwrap();
    t.store.mark_destroying(&k.id, 1, "a", None).await.unwrap();
    let e = t
        .store
        .mark_tombstone(&k.id, 1, KeyState::Destroyed)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::IllegalTransition(_)), "{e}");
    t.store
        .mark_tombstone(&k.id, 1, KeyState::DestroyedCompromised)
        .await
        .unwrap();
    assert_eq!(
        find(&t.store, "t", "k").await.versions[0].state,
        KeyState::DestroyedCompromised
    );
}

#[tokio::test]
async fn current_skips_tombstones_only() {
    let t = temp_store().await;
    let k = active_key(&t.store, "t", "k").await;
    t.store
        .add_version(&k.id, &new_version(KeyState::PreActivation), "a", "rotate")
        .await
        .unwrap();
    t.store.confirm_version(&k.id, 2, "0102").await.unwrap();
    let e = t
        .store
        .change_state(
            &k.id,
            2,
            KeyState::PreActivation,
            KeyState::Destroyed,
            "a",
            "x",
            None,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Invalid { .. }), "{e}");
    t.store.mark_destroying(&k.id, 2, "a", None).await.unwrap();
    t.store
        .mark_tombstone(&k.id, 2, KeyState::Destroyed)
        .await
        .unwrap();
    let found = find(&t.store, "t", "k").await;
    assert_eq!(found.current().map(|v| v.version), Some(1));
}

#[tokio::test]
async fn listing_and_reconciliation_views() {
    let t = temp_store().await;
    let a = active_key(&t.store, "issuer-b", "zeta").await;
    active_key(&t.store, "issuer-b", "alpha").await;
    active_key(&t.store, "issuer-a", "kmc").await;
    t.store
        .add_version(&a.id, &new_version(KeyState::PreActivation), "a", "rotate")
        .await
        .unwrap();

    let all = t.store.list_keys(None).await.unwrap();
    let names: Vec<String> = all
        .iter()
        .map(|k| format!("{}/{}", k.tenant, k.name))
        .collect();
    assert_eq!(names, ["issuer-a/kmc", "issuer-b/alpha", "issuer-b/zeta"]);
    assert_eq!(all[2].versions.len(), 2);

    let b = t
        .store
        .list_keys(Some(&Tenant::parse("issuer-b").unwrap()))
        .await
        .unwrap();
    assert_eq!(b.len(), 2);
    assert!(t
        .store
        .list_keys(Some(&Tenant::parse("nobody").unwrap()))
        .await
        .unwrap()
        .is_empty());

    let versions = t.store.all_versions().await.unwrap();
    assert_eq!(versions.len(), 4);
    let pending: Vec<_> = versions
        .iter()
        .filter(|(_, v)| v.presence == Presence::Pending)
        .map(|(k, v)| (k.name.to_string(), v.version))
        .collect();
    assert_eq!(pending, [("zeta".to_owned(), 2)]);
    for (k, v) in &versions {
        assert!(k.versions.contains(v));
    }
}

#[tokio::test]
async fn recorded_events_need_an_existing_key() {
    let t = temp_store().await;
    let k = active_key(&t.store, "t", "k").await;
    t.store
        .record_event(&k.id, Some(1), "erin", "export", Some("to partner X"))
        .await
        .unwrap();
    t.store
        .record_event(&k.id, None, "erin", "inspect", None)
        .await
        .unwrap();
    let ev = t.store.events(&k.id).await.unwrap();
    assert_eq!(actions(&ev), ["create", "export", "inspect"]);
    assert_eq!(ev[1].version, Some(1));
    assert_eq!(ev[2].version, None);
    assert_eq!(ev[1].from_state, None);
    assert!(ev[1].id < ev[2].id);

    let e = t
        .store
        .record_event(&KeyId::new_random(), None, "erin", "export", None)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::NotFound { .. }), "{e}");
    let e = t
        .store
        .record_event(&k.id, Some(4), "erin", "export", None)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::NotFound { .. }), "{e}");
    let e = t
        .store
        .record_event(&k.id, Some(1), "erin", "export", Some("bell\u{7}"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, StoreError::Invalid { what: "reason", .. }),
        "{e}"
    );
}

#[tokio::test]
async fn records_serialize_for_json_output() {
    let t = temp_store().await;
    let k = active_key(&t.store, "t", "k").await;
    let json = serde_json::to_value(&k).unwrap();
    assert_eq!(json["id"], k.id.to_string());
    assert_eq!(json["algorithm"], "aes-128");
    assert_eq!(json["usage"], "kek");
    assert_eq!(json["versions"][0]["presence"], "present");
    assert_eq!(json["versions"][0]["state"], "active");
    assert_eq!(json["versions"][0]["kcv"], "1A2B3C");
    assert_eq!(
        json["versions"][0]["object_id"],
        k.versions[0].object_id.to_string()
    );
    assert!(json["versions"][0]["activate_at"].is_null());
    let created = json["created_at"].as_str().unwrap();
    assert!(created.ends_with('Z'), "{created}");
    let ev = serde_json::to_value(t.store.events(&k.id).await.unwrap()).unwrap();
    assert_eq!(ev[0]["action"], "create");
    assert_eq!(ev[0]["to_state"], "active");
}

/// Rewrites one column of one table behind the store's back.
async fn corrupt(store: &Store, sql: &str) {
    let mut conn = store.pool.acquire().await.unwrap();
    // Some damage is only possible past the schema's CHECK constraints,
    // exactly as a hand edit or a disk fault could.
    sqlx::query("PRAGMA ignore_check_constraints = ON")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query(sql).execute(&mut *conn).await.unwrap();
    sqlx::query("PRAGMA ignore_check_constraints = OFF")
        .execute(&mut *conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn corrupt_rows_are_reported_not_trusted() {
    let cases: &[(&str, &str, &str)] = &[
        ("keys", "algorithm", "UPDATE keys SET algorithm = 'des-56'"),
        ("keys", "usage", "UPDATE keys SET usage = 'root'"),
        ("keys", "tenant", "UPDATE keys SET tenant = 'a b'"),
        (
            "keys",
            "created_at",
            "UPDATE keys SET created_at = 'yesterday'",
        ),
        ("keys", "exportable", "UPDATE keys SET exportable = 7"),
        (
            "key_versions",
            "object_id",
            "UPDATE key_versions SET object_id = 'ZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZ'",
        ),
        (
            "key_versions",
            "state",
            "UPDATE key_versions SET state = 'zombie'",
        ),
        (
            "key_versions",
            "presence",
            "UPDATE key_versions SET presence = 'lost'",
        ),
        (
            "key_versions",
            "kcv",
            "UPDATE key_versions SET kcv = 'KCV!'",
        ),
        (
            "key_versions",
            "trusted",
            "UPDATE key_versions SET trusted = 2",
        ),
        (
            "key_versions",
            "expire_at",
            "UPDATE key_versions SET expire_at = '2030-13-01T00:00:00Z'",
        ),
        (
            "key_versions",
            "version",
            "UPDATE key_versions SET version = 0",
        ),
    ];
    for (table, column, sql) in cases {
        let t = temp_store().await;
        active_key(&t.store, "t", "k").await;
        corrupt(&t.store, sql).await;
        let e = t.store.list_keys(None).await.unwrap_err();
        match &e {
            StoreError::Corrupt {
                table: tb,
                column: c,
                row,
                ..
            } => {
                assert_eq!((*tb, *c), (*table, *column), "{e}");
                assert!(!row.is_empty());
            }
            other => panic!("{sql}: expected Corrupt, got {other}"),
        }
        let e = t.store.all_versions().await.unwrap_err();
        assert!(matches!(e, StoreError::Corrupt { .. }), "{sql}: {e}");
    }
}

#[tokio::test]
async fn corrupt_events_are_reported() {
    for sql in [
        "UPDATE key_events SET from_state = 'zombie'",
        "UPDATE key_events SET at = 'noon'",
        "UPDATE key_events SET key_id = 'not-a-uuid'",
    ] {
        let t = temp_store().await;
        let k = active_key(&t.store, "t", "k").await;
        t.store
            .change_state(
                &k.id,
                1,
                KeyState::Active,
                KeyState::Suspended,
                "a",
                "suspend",
                None,
            )
            .await
            .unwrap();
        // The foreign key would stop the key_id edit; the damage is the point.
        let mut conn = t.store.pool.acquire().await.unwrap();
        sqlx::query("PRAGMA foreign_keys = OFF")
            .execute(&mut *conn)
            .await
            .unwrap();
        sqlx::query(sql).execute(&mut *conn).await.unwrap();
        sqlx::query("PRAGMA foreign_keys = ON")
            .execute(&mut *conn)
            .await
            .unwrap();
        drop(conn);
        if sql.contains("key_id") {
            // The events are no longer the key's; they must not appear as its.
            assert!(t.store.events(&k.id).await.unwrap().is_empty());
            continue;
        }
        let e = t.store.events(&k.id).await.unwrap_err();
        assert!(
            matches!(
                e,
                StoreError::Corrupt {
                    table: "key_events",
                    ..
                }
            ),
            "{sql}: {e}"
        );
    }
}

#[tokio::test]
async fn schema_has_no_place_for_secrets() {
    let t = temp_store().await;
    let rows = sqlx::query(
        "SELECT m.name AS t, p.name AS c, p.type AS ty FROM sqlite_master m \
         JOIN pragma_table_info(m.name) p WHERE m.type = 'table' \
         AND m.name NOT LIKE 'sqlite_%' AND m.name <> '_sqlx_migrations'",
    )
    .fetch_all(&t.store.pool)
    .await
    .unwrap();
    for row in &rows {
        let (table, column, ty): (String, String, String) =
            (row.get("t"), row.get("c"), row.get("ty"));
        assert_ne!(ty.to_uppercase(), "BLOB", "{table}.{column}");
        // The PIN columns hold an Argon2id hash (checked by the schema, see
        // the next test), a flag and a timestamp.
        if table == "custodians"
            && matches!(
                column.as_str(),
                "pin_hash" | "must_change_pin" | "pin_changed_at"
            )
        {
            continue;
        }
        for word in ["value", "secret", "pin", "component", "material", "plain"] {
            assert!(!column.contains(word), "{table}.{column}");
        }
    }
    assert!(rows.len() >= 25, "all three tables were inspected");
}

/// TSM-AC-1: the custodians table takes only Argon2id PHC strings as PIN
/// hashes; a PIN written there by mistake fails loudly.
#[tokio::test]
async fn tsm_ac_1_the_pin_hash_column_refuses_anything_but_argon2id() {
    let t = temp_store().await;
    let insert = |hash: &'static str| {
        sqlx::query(
            "INSERT INTO custodians (name, role, pin_hash, must_change_pin, failed_attempts, \
             idle_timeout_seconds, enrolled_at, enrolled_by, bootstrap) \
             VALUES ('x', 'custodian', $1, 1, 0, 900, '2026-01-01T00:00:00Z', 'so', 1)",
        )
        .bind(hash)
        .execute(&t.store.pool)
    };
    for bad in [
        "583140",
        "$argon2i$v=19$m=1024,t=1,p=1$c2FsdHNhbHQ$aGFzaA",
        "$2b$12$x",
    ] {
        let e = insert(bad).await.unwrap_err();
        assert!(e.to_string().contains("CHECK"), "{e}");
    }
    insert("$argon2id$v=19$m=1024,t=1,p=1$c2FsdHNhbHQ$aGFzaA")
        .await
        .unwrap();
}
