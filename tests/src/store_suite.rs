//! Metadata-store behaviour, written once and run against every backend
//! (tests/store_sqlite.rs, tests/store_postgres.rs). Each function wants an
//! empty store and panics on the first deviation.
//!
//! Timestamps are derived from one the store produced (this crate does not
//! depend on `time` directly); offset normalisation is covered by the kms
//! unit tests, and both backends store the same RFC 3339 text.

// Assertions on results are the point of this module.
#![allow(clippy::unwrap_used)]

use kms::model::{Algorithm, KeyName, KeyState, KeyUsage, ObjectId, Tenant};
use kms::store::{KeyId, KeyRecord, NewKey, NewVersion, Presence, Store, StoreError, SYSTEM_ACTOR};
use std::time::Duration;

const DAY: Duration = Duration::from_secs(86_400);

pub fn tenant(s: &str) -> Tenant {
    Tenant::parse(s).unwrap()
}

pub fn name(s: &str) -> KeyName {
    KeyName::parse(s).unwrap()
}

pub fn new_key(t: &str, n: &str) -> NewKey {
    NewKey {
        tenant: tenant(t),
        name: name(n),
        algorithm: Algorithm::Aes256,
        usage: KeyUsage::Kek,
        exportable: false,
    }
}

pub fn new_version(state: KeyState) -> NewVersion {
    NewVersion {
        object_id: ObjectId::random(),
        state,
        activate_at: None,
        expire_at: None,
    }
}

pub async fn find(store: &Store, t: &str, n: &str) -> KeyRecord {
    match store.find_key(&tenant(t), &name(n)).await.unwrap() {
        Some(k) => k,
        None => panic!("key {t}/{n} not found"),
    }
}

async fn actions(store: &Store, id: &KeyId) -> Vec<String> {
    store
        .events(id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect()
}

async fn change(
    store: &Store,
    id: &KeyId,
    version: u32,
    from: KeyState,
    to: KeyState,
) -> Result<(), StoreError> {
    store
        .change_state(id, version, from, to, "tester", "change", None)
        .await
}

/// The normal life of a key: create, confirm, rotate, trust, export, destroy.
pub async fn lifecycle(store: &Store) {
    let nk = NewKey {
        tenant: tenant("issuer-a"),
        name: name("kmc-2026"),
        algorithm: Algorithm::Tdes2,
        usage: KeyUsage::SdKmc,
        exportable: true,
    };
    let other = store
        .create_key(
            &new_key("issuer-b", "kmc-2026"),
            &new_version(KeyState::Active),
            "x",
        )
        .await
        .unwrap();
    let t0 = other.created_at;
    assert_eq!(find(store, "issuer-b", "kmc-2026").await, other);

    let mut v1 = new_version(KeyState::Active);
    v1.activate_at = Some(t0 + DAY);
    v1.expire_at = Some(t0 + 1826 * DAY + Duration::from_millis(500));
    let created = store.create_key(&nk, &v1, "alice").await.unwrap();
    assert_eq!(find(store, "issuer-a", "kmc-2026").await, created);
    let id = created.id;
    let v = &created.versions[0];
    assert_eq!(
        (v.version, v.presence, v.state),
        (1, Presence::Pending, KeyState::Active)
    );
    assert_eq!(v.activate_at, v1.activate_at);
    assert_eq!(v.expire_at, v1.expire_at);
    assert!(created.created_at >= t0);

    store.confirm_version(&id, 1, "a1b2c3").await.unwrap();
    let k = find(store, "issuer-a", "kmc-2026").await;
    assert_eq!(k.versions[0].presence, Presence::Present);
    assert_eq!(k.versions[0].kcv.as_deref(), Some("A1B2C3"));
    assert_eq!(k.algorithm, Algorithm::Tdes2);
    assert_eq!(k.usage, KeyUsage::SdKmc);
    assert!(k.exportable);
    assert_eq!(k.created_by, "alice");

    // Rotation: version 2 arrives pre-active, then takes over.
    let v2 = store
        .add_version(&id, &new_version(KeyState::PreActivation), "bob", "rotate")
        .await
        .unwrap();
    assert_eq!((v2.version, v2.presence), (2, Presence::Pending));
    store.confirm_version(&id, 2, "0F0F0F").await.unwrap();
    change(store, &id, 2, KeyState::PreActivation, KeyState::Active)
        .await
        .unwrap();
    change(store, &id, 1, KeyState::Active, KeyState::Deactivated)
        .await
        .unwrap();
    let k = find(store, "issuer-a", "kmc-2026").await;
    assert_eq!(k.current().map(|v| v.version), Some(2));
    assert_eq!(k.versions[0].state, KeyState::Deactivated);
    assert_eq!(k.versions[1].state, KeyState::Active);

    store
        .set_trusted(&id, 2, true, "carol", Some("ceremony"))
        .await
        .unwrap();
    assert!(find(store, "issuer-a", "kmc-2026").await.versions[1].trusted);
    store
        .set_trusted(&id, 2, false, "carol", None)
        .await
        .unwrap();
    assert!(!find(store, "issuer-a", "kmc-2026").await.versions[1].trusted);

    store
        .record_event(&id, Some(2), "dave", "export", Some("to provisioner P"))
        .await
        .unwrap();

    store
        .mark_destroying(&id, 1, "erin", Some("retired"))
        .await
        .unwrap();
    assert_eq!(
        find(store, "issuer-a", "kmc-2026").await.versions[0].presence,
        Presence::Destroying
    );
    store
        .mark_tombstone(&id, 1, KeyState::Destroyed)
        .await
        .unwrap();
    let k = find(store, "issuer-a", "kmc-2026").await;
    let t = &k.versions[0];
    assert_eq!(
        (t.presence, t.state),
        (Presence::Tombstone, KeyState::Destroyed)
    );
    assert_eq!(
        t.kcv.as_deref(),
        Some("A1B2C3"),
        "a tombstone keeps its KCV"
    );
    assert_eq!(k.current().map(|v| v.version), Some(2));

    // A version whose object never got created is forgotten.
    store
        .add_version(&id, &new_version(KeyState::PreActivation), "bob", "rotate")
        .await
        .unwrap();
    store.abandon_pending(&id, 3).await.unwrap();
    assert_eq!(find(store, "issuer-a", "kmc-2026").await.versions.len(), 2);

    let events = store.events(&id).await.unwrap();
    let acts: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        acts,
        [
            "create",
            "rotate",
            "change",
            "change",
            "trust",
            "untrust",
            "export",
            "destroy",
            "tombstone",
            "rotate",
            "abandon"
        ]
    );
    assert!(events.windows(2).all(|w| w[0].id < w[1].id));
    assert!(events.windows(2).all(|w| w[0].at <= w[1].at));
    let destroy = &events[7];
    assert_eq!(destroy.actor, "erin");
    assert_eq!(destroy.version, Some(1));
    assert_eq!(destroy.from_state, Some(KeyState::Deactivated));
    assert_eq!(destroy.to_state, Some(KeyState::Destroyed));
    assert_eq!(destroy.reason.as_deref(), Some("retired"));
    assert_eq!(events[8].actor, SYSTEM_ACTOR);
    assert_eq!(events[6].reason.as_deref(), Some("to provisioner P"));

    // A key created and abandoned leaves nothing, and its name is free.
    let gone = store
        .create_key(
            &new_key("issuer-a", "tmp"),
            &new_version(KeyState::Active),
            "bob",
        )
        .await
        .unwrap();
    store.abandon_pending(&gone.id, 1).await.unwrap();
    assert!(store
        .find_key(&tenant("issuer-a"), &name("tmp"))
        .await
        .unwrap()
        .is_none());
    assert!(store.events(&gone.id).await.unwrap().is_empty());
    store
        .create_key(
            &new_key("issuer-a", "tmp"),
            &new_version(KeyState::Active),
            "bob",
        )
        .await
        .unwrap();

    // Listing and the reconciliation view.
    let all = store.list_keys(None).await.unwrap();
    let names: Vec<String> = all
        .iter()
        .map(|k| format!("{}/{}", k.tenant, k.name))
        .collect();
    assert_eq!(
        names,
        ["issuer-a/kmc-2026", "issuer-a/tmp", "issuer-b/kmc-2026"]
    );
    assert_eq!(
        store
            .list_keys(Some(&tenant("issuer-b")))
            .await
            .unwrap()
            .len(),
        1
    );
    let versions = store.all_versions().await.unwrap();
    assert_eq!(versions.len(), 4);
    let presences: Vec<(String, u32, Presence)> = versions
        .iter()
        .map(|(k, v)| (format!("{}/{}", k.tenant, k.name), v.version, v.presence))
        .collect();
    assert_eq!(
        presences,
        [
            ("issuer-a/kmc-2026".to_owned(), 1, Presence::Tombstone),
            ("issuer-a/kmc-2026".to_owned(), 2, Presence::Present),
            ("issuer-a/tmp".to_owned(), 1, Presence::Pending),
            ("issuer-b/kmc-2026".to_owned(), 1, Presence::Pending),
        ]
    );

    let json = serde_json::to_value(find(store, "issuer-a", "kmc-2026").await).unwrap();
    assert_eq!(json["algorithm"], "tdes-2key");
    assert_eq!(json["usage"], "sd-kmc");
    assert_eq!(json["versions"][0]["presence"], "tombstone");
    assert_eq!(json["versions"][0]["state"], "destroyed");
    for field in ["activate_at", "expire_at", "created_at", "updated_at"] {
        let s = json["versions"][0][field].as_str().unwrap_or_default();
        assert!(s.len() >= 20 && s.ends_with('Z'), "{field}: {s:?}");
    }
    assert!(json["versions"][1]["activate_at"].is_null());
}

/// Everything the store must refuse, and what it must say.
pub async fn refusals(store: &Store) {
    let first = new_version(KeyState::Active);
    let k = store
        .create_key(&new_key("t", "k"), &first, "alice")
        .await
        .unwrap();
    let id = k.id;

    let e = store
        .create_key(&new_key("t", "k"), &new_version(KeyState::Active), "alice")
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Duplicate { .. }), "{e}");

    let mut clash = new_version(KeyState::Active);
    clash.object_id = first.object_id;
    let e = store
        .create_key(&new_key("t", "other"), &clash, "alice")
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::DuplicateObjectId(_)), "{e}");
    assert!(store
        .find_key(&tenant("t"), &name("other"))
        .await
        .unwrap()
        .is_none());
    let e = store
        .add_version(&id, &clash, "alice", "rotate")
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::DuplicateObjectId(_)), "{e}");

    // Pending rows cannot be trusted, destroyed or confirmed twice.
    let e = store
        .set_trusted(&id, 1, true, "a", None)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict { .. }), "{e}");
    let e = store.mark_destroying(&id, 1, "a", None).await.unwrap_err();
    assert!(matches!(e, StoreError::Conflict { .. }), "{e}");
    store.confirm_version(&id, 1, "ABCDEF").await.unwrap();
    let e = store.confirm_version(&id, 1, "ABCDEF").await.unwrap_err();
    assert!(matches!(e, StoreError::Conflict { .. }), "{e}");
    let e = store.abandon_pending(&id, 1).await.unwrap_err();
    assert!(matches!(e, StoreError::Conflict { .. }), "{e}");
    let e = store
        .confirm_version(&id, 1, "00112233445566778899aabbccddeeff")
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Invalid { what: "kcv", .. }), "{e}");

    // Compare-and-set: a stale `from` loses and leaves no trace.
    change(store, &id, 1, KeyState::Active, KeyState::Suspended)
        .await
        .unwrap();
    let before = store.events(&id).await.unwrap().len();
    let e = change(store, &id, 1, KeyState::Active, KeyState::Deactivated)
        .await
        .unwrap_err();
    match &e {
        StoreError::Conflict { found, .. } => assert!(found.contains("suspended"), "{found}"),
        other => panic!("expected a conflict, got {other}"),
    }
    assert_eq!(store.events(&id).await.unwrap().len(), before);
    assert_eq!(
        find(store, "t", "k").await.versions[0].state,
        KeyState::Suspended
    );

    let e = change(store, &id, 1, KeyState::Suspended, KeyState::PreActivation)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::IllegalTransition(_)), "{e}");
    let e = store.mark_destroying(&id, 1, "a", None).await.unwrap_err();
    assert!(matches!(e, StoreError::IllegalTransition(_)), "{e}");

    // A compromise recorded before destruction survives it.
    change(store, &id, 1, KeyState::Suspended, KeyState::Compromised)
        .await
        .unwrap();
    store.mark_destroying(&id, 1, "a", None).await.unwrap();
    let e = change(
        store,
        &id,
        1,
        KeyState::Compromised,
        KeyState::DestroyedCompromised,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e, StoreError::Invalid { .. } | StoreError::Conflict { .. }),
        "{e}"
    );
    let e = store
        .mark_tombstone(&id, 1, KeyState::Destroyed)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::IllegalTransition(_)), "{e}");
    let e = store
        .mark_tombstone(&id, 1, KeyState::Compromised)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Invalid { .. }), "{e}");
    store
        .mark_tombstone(&id, 1, KeyState::DestroyedCompromised)
        .await
        .unwrap();
    let e = store
        .mark_tombstone(&id, 1, KeyState::DestroyedCompromised)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict { .. }), "{e}");

    // Unknown keys and versions.
    let nobody = KeyId::new_random();
    let e = store
        .add_version(&nobody, &new_version(KeyState::Active), "a", "rotate")
        .await
        .unwrap_err();
    assert!(
        matches!(e, StoreError::NotFound { version: None, .. }),
        "{e}"
    );
    for e in [
        store.confirm_version(&id, 9, "AB").await.unwrap_err(),
        store.abandon_pending(&id, 9).await.unwrap_err(),
        change(store, &id, 9, KeyState::Active, KeyState::Suspended)
            .await
            .unwrap_err(),
        store
            .set_trusted(&id, 9, false, "a", None)
            .await
            .unwrap_err(),
        store.mark_destroying(&id, 9, "a", None).await.unwrap_err(),
        store
            .mark_tombstone(&id, 9, KeyState::Destroyed)
            .await
            .unwrap_err(),
        store
            .record_event(&id, Some(9), "a", "export", None)
            .await
            .unwrap_err(),
        store
            .record_event(&nobody, None, "a", "export", None)
            .await
            .unwrap_err(),
    ] {
        assert!(matches!(e, StoreError::NotFound { .. }), "{e}");
    }
    assert!(store.events(&nobody).await.unwrap().is_empty());

    // Event fields are checked before anything is written.
    let e = store
        .record_event(&id, None, "", "export", None)
        .await
        .unwrap_err();
    assert!(
        matches!(e, StoreError::Invalid { what: "actor", .. }),
        "{e}"
    );
    let e = store
        .record_event(&id, None, "a", "DROP TABLE", None)
        .await
        .unwrap_err();
    assert!(
        matches!(e, StoreError::Invalid { what: "action", .. }),
        "{e}"
    );
}

/// Concurrent writers: compare-and-set has one winner, version numbers stay
/// contiguous, unique names stay unique.
pub async fn concurrency(store: &Store) {
    let k = store
        .create_key(&new_key("t", "k"), &new_version(KeyState::Active), "a")
        .await
        .unwrap();
    store.confirm_version(&k.id, 1, "AABBCC").await.unwrap();

    let targets = [
        KeyState::Suspended,
        KeyState::Deactivated,
        KeyState::Compromised,
        KeyState::Suspended,
        KeyState::Deactivated,
        KeyState::Compromised,
        KeyState::Suspended,
        KeyState::Deactivated,
    ];
    let mut tasks = Vec::new();
    for to in targets {
        let store = store.clone();
        let id = k.id;
        tasks.push(tokio::spawn(async move {
            change(&store, &id, 1, KeyState::Active, to).await
        }));
    }
    let mut wins = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(()) => wins += 1,
            Err(StoreError::Conflict { .. }) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(wins, 1, "exactly one compare-and-set wins");
    assert_eq!(store.events(&k.id).await.unwrap().len(), 2);

    // Racing rotations: each either gets the next number or is told it lost.
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let store = store.clone();
        let id = k.id;
        tasks.push(tokio::spawn(async move {
            store
                .add_version(&id, &new_version(KeyState::PreActivation), "a", "rotate")
                .await
        }));
    }
    let mut added = 0u32;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => added += 1,
            Err(StoreError::Conflict { .. }) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(added >= 1);
    let numbers: Vec<u32> = find(store, "t", "k")
        .await
        .versions
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(numbers, (1..=1 + added).collect::<Vec<_>>());

    // Distinct names all succeed; one name succeeds once.
    let mut tasks = Vec::new();
    for i in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let n = if i % 2 == 0 {
                format!("n{i}")
            } else {
                "same".to_owned()
            };
            store
                .create_key(&new_key("t", &n), &new_version(KeyState::Active), "a")
                .await
                .map(|_| i % 2 == 0)
        }));
    }
    let (mut distinct, mut same, mut dups) = (0, 0, 0);
    for task in tasks {
        match task.await.unwrap() {
            Ok(true) => distinct += 1,
            Ok(false) => same += 1,
            Err(StoreError::Duplicate { .. }) => dups += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!((distinct, same, dups), (8, 1, 7));
    assert_eq!(store.list_keys(Some(&tenant("t"))).await.unwrap().len(), 10);
}

/// Two stores on one database behave like two KMS nodes: each sees the
/// other's writes and stale views lose.
pub async fn two_nodes(a: &Store, b: &Store) {
    let k = a
        .create_key(
            &new_key("t", "shared"),
            &new_version(KeyState::Active),
            "node-a",
        )
        .await
        .unwrap();
    a.confirm_version(&k.id, 1, "010203").await.unwrap();
    let seen = find(b, "t", "shared").await;
    assert_eq!(seen.id, k.id);
    assert_eq!(seen.versions[0].presence, Presence::Present);

    change(b, &k.id, 1, KeyState::Active, KeyState::Suspended)
        .await
        .unwrap();
    let e = change(a, &k.id, 1, KeyState::Active, KeyState::Deactivated)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict { .. }), "{e}");
    let v2 = b
        .add_version(
            &k.id,
            &new_version(KeyState::PreActivation),
            "node-b",
            "rotate",
        )
        .await
        .unwrap();
    let v3 = a
        .add_version(
            &k.id,
            &new_version(KeyState::PreActivation),
            "node-a",
            "rotate",
        )
        .await
        .unwrap();
    assert_eq!((v2.version, v3.version), (2, 3));
    assert_eq!(
        actions(a, &k.id).await,
        ["create", "change", "rotate", "rotate"]
    );
}

/// Calls every method, leaving versions in every presence and events of
/// every kind, for the scans that look for key material.
pub async fn fill_every_method(store: &Store) {
    let mut t0 = None;
    for (i, usage) in [
        KeyUsage::Kek,
        KeyUsage::SdKmc,
        KeyUsage::ImkAc,
        KeyUsage::Data,
    ]
    .into_iter()
    .enumerate()
    {
        let nk = NewKey {
            tenant: tenant(&format!("tenant-{}", i % 2)),
            name: name(&format!("key-{i}")),
            algorithm: if usage == KeyUsage::ImkAc {
                Algorithm::Tdes2
            } else {
                Algorithm::Aes128
            },
            usage,
            exportable: i % 2 == 0,
        };
        let mut v = new_version(KeyState::Active);
        if let Some(t0) = t0 {
            v.activate_at = Some(t0 + DAY);
            v.expire_at = Some(t0 + 365 * DAY);
        }
        let k = store
            .create_key_as(&nk, &v, "ceremony-officer", "import")
            .await
            .unwrap();
        t0 = Some(k.created_at);
        store.confirm_version(&k.id, 1, "C0FFEE").await.unwrap();
        store
            .set_trusted(&k.id, 1, true, "security-officer", Some("dual control"))
            .await
            .unwrap();
        store
            .record_event(&k.id, Some(1), "operator", "export", Some("wrapped for P"))
            .await
            .unwrap();
        store
            .add_version(
                &k.id,
                &new_version(KeyState::PreActivation),
                "operator",
                "rotate",
            )
            .await
            .unwrap();
        if i == 0 {
            // v2 stays pending; v3 is abandoned.
            store
                .add_version(
                    &k.id,
                    &new_version(KeyState::PreActivation),
                    "operator",
                    "rotate",
                )
                .await
                .unwrap();
            store.abandon_pending(&k.id, 3).await.unwrap();
            continue;
        }
        store.confirm_version(&k.id, 2, "ABCDEF0123").await.unwrap();
        change(store, &k.id, 2, KeyState::PreActivation, KeyState::Active)
            .await
            .unwrap();
        change(store, &k.id, 1, KeyState::Active, KeyState::Deactivated)
            .await
            .unwrap();
        store
            .set_trusted(&k.id, 1, false, "operator", None)
            .await
            .unwrap();
        store
            .mark_destroying(&k.id, 1, "operator", Some("rotated out"))
            .await
            .unwrap();
        if i == 1 {
            continue; // left destroying
        }
        store
            .mark_tombstone(&k.id, 1, KeyState::Destroyed)
            .await
            .unwrap();
    }
    let abandoned = store
        .create_key(
            &new_key("tenant-0", "never"),
            &new_version(KeyState::Active),
            "x",
        )
        .await
        .unwrap();
    store.abandon_pending(&abandoned.id, 1).await.unwrap();

    let all = store.all_versions().await.unwrap();
    for p in Presence::ALL {
        assert!(
            all.iter().any(|(_, v)| v.presence == p),
            "no version is {p}"
        );
    }
}
