//! Metadata-store behaviour, written once and run against every backend
//! (tests/store_sqlite.rs, tests/store_postgres.rs). Each function wants an
//! empty store and panics on the first deviation.
//!
//! Timestamps are derived from one the store produced (this crate does not
//! depend on `time` directly); offset normalisation is covered by the kms
//! unit tests, and both backends store the same RFC 3339 text.

// Assertions on results are the point of this module.
#![allow(clippy::unwrap_used)]

use kms::crypto::{PinHash, PinHasher};
use kms::model::{
    Algorithm, CustodianName, CustodianRole, KeyName, KeyState, KeyUsage, LoginWindow, ObjectId,
    Pin, Tenant,
};
use kms::store::{
    BindOutcome, CustodianRecord, FailedLogin, KeyId, KeyRecord, NewCustodian, NewKey, NewVersion,
    Presence, Removal, SdBinding, Store, StoreError, MAX_FAILED_LOGINS, SYSTEM_ACTOR,
};
use std::time::Duration;
use time::OffsetDateTime;

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

    // People in every state: enrolled, PIN changed, locked, re-enabled,
    // removed (their PINs are in `PINS_GIVEN_TO_THE_HASHER`).
    custodians(store).await;
    custodians_concurrent_failures(&[store], 3).await;
}

/// The PINs the custodian suite hashes: none may appear in the database.
pub const PINS_GIVEN_TO_THE_HASHER: [&str; 3] =
    ["Kestrel on 3 wires", "Other 4 wires", "New 5 wires"];

fn binding(se: &str, sd: &str, pan_hmac: &str, psn: u8, by: &str) -> SdBinding {
    SdBinding {
        tenant: "issuer-a".to_owned(),
        se_id: se.to_owned(),
        sd_aid: sd.to_owned(),
        pan_hmac: pan_hmac.to_owned(),
        pan_masked: "411111******1111".to_owned(),
        psn,
        bound_at: "2026-03-01T10:00:00Z".to_owned(),
        bound_by: by.to_owned(),
    }
}

/// Runs `n` copies of `f` at once and counts how many returned true.
async fn race<F, Fut>(n: usize, f: F) -> usize
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<bool, StoreError>> + Send + 'static,
{
    let tasks: Vec<_> = (0..n).map(|i| tokio::spawn(f(i))).collect();
    let mut wins = 0;
    for t in tasks {
        if t.await.unwrap().unwrap() {
            wins += 1;
        }
    }
    wins
}

/// The provisioning API's persistent state: replay cache, SCP02 counters,
/// card challenges (REPLAY-1) and SD bindings (TSM-DATA-1). Every
/// check-and-set has exactly one winner under concurrency.
pub async fn provisioning(store: &Store) {
    // Request ids: once per principal.
    assert!(store.remember_request("alice", "r1", 1000).await.unwrap());
    assert!(!store.remember_request("alice", "r1", 1001).await.unwrap());
    assert!(store.remember_request("bob", "r1", 1000).await.unwrap());
    assert!(store.remember_request("alice", "r2", 2000).await.unwrap());
    assert!(store.remember_request("alice", "r3", 3000).await.unwrap());
    assert_eq!(store.forget_requests_before(1000).await.unwrap(), 0);
    assert_eq!(store.forget_requests_before(2001).await.unwrap(), 3);
    assert_eq!(store.forget_requests_before(2001).await.unwrap(), 0);
    assert!(
        store.remember_request("alice", "r1", 4000).await.unwrap(),
        "a forgotten id is new again"
    );
    assert!(!store.remember_request("alice", "r3", 4000).await.unwrap());
    let e = store.remember_request("", "r9", 1).await.unwrap_err();
    assert!(matches!(e, StoreError::Invalid { .. }), "{e}");

    // SCP02 counters: strictly increasing per card.
    assert_eq!(store.scp02_counter("t", "card-1").await.unwrap(), None);
    assert!(store.advance_scp02_counter("t", "card-1", 0).await.unwrap());
    assert_eq!(store.scp02_counter("t", "card-1").await.unwrap(), Some(0));
    assert!(!store.advance_scp02_counter("t", "card-1", 0).await.unwrap());
    assert!(store.advance_scp02_counter("t", "card-1", 7).await.unwrap());
    assert!(!store.advance_scp02_counter("t", "card-1", 7).await.unwrap());
    assert!(!store.advance_scp02_counter("t", "card-1", 6).await.unwrap());
    assert_eq!(store.scp02_counter("t", "card-1").await.unwrap(), Some(7));
    assert!(store
        .advance_scp02_counter("t", "card-1", u16::MAX)
        .await
        .unwrap());
    assert!(!store
        .advance_scp02_counter("t", "card-1", u16::MAX)
        .await
        .unwrap());
    assert_eq!(
        store.scp02_counter("t", "card-1").await.unwrap(),
        Some(u16::MAX)
    );
    // Cards and tenants are independent.
    assert!(store.advance_scp02_counter("t", "card-2", 3).await.unwrap());
    assert!(store.advance_scp02_counter("u", "card-1", 3).await.unwrap());
    assert_eq!(store.scp02_counter("u", "card-2").await.unwrap(), None);

    // Card challenges: once per card.
    assert!(store
        .note_card_challenge("t", "card-1", "0011")
        .await
        .unwrap());
    assert!(!store
        .note_card_challenge("t", "card-1", "0011")
        .await
        .unwrap());
    assert!(store
        .note_card_challenge("t", "card-2", "0011")
        .await
        .unwrap());
    assert!(store
        .note_card_challenge("u", "card-1", "0011")
        .await
        .unwrap());
    assert!(store
        .note_card_challenge("t", "card-1", "0012")
        .await
        .unwrap());

    // SD bindings.
    let hmac_a = "a".repeat(64);
    let hmac_b = "b".repeat(64);
    assert_eq!(
        store.sd_binding("issuer-a", "se-1", "A000").await.unwrap(),
        None
    );
    let b1 = binding("se-1", "A000", &hmac_a, 1, "alice");
    assert_eq!(store.bind_sd(&b1).await.unwrap(), BindOutcome::New);
    assert_eq!(
        store.sd_binding("issuer-a", "se-1", "A000").await.unwrap(),
        Some(b1.clone())
    );
    // The same card again, whoever asks: nothing changes.
    let again = binding("se-1", "A000", &hmac_a, 1, "bob");
    assert_eq!(store.bind_sd(&again).await.unwrap(), BindOutcome::Existing);
    // Another card, or another PSN of the same PAN: refused, shown.
    for other in [
        binding("se-1", "A000", &hmac_b, 1, "bob"),
        binding("se-1", "A000", &hmac_a, 2, "bob"),
    ] {
        assert_eq!(
            store.bind_sd(&other).await.unwrap(),
            BindOutcome::Other(b1.clone())
        );
    }
    assert_eq!(
        store.sd_binding("issuer-a", "se-1", "A000").await.unwrap(),
        Some(b1.clone())
    );
    // Timestamps are stored in UTC.
    let mut b2 = binding("se-0", "A001", &hmac_b, 0, "carol");
    b2.bound_at = "2026-03-01T12:30:00+02:00".to_owned();
    assert_eq!(store.bind_sd(&b2).await.unwrap(), BindOutcome::New);
    let b2_read = store
        .sd_binding("issuer-a", "se-0", "A001")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b2_read.bound_at, "2026-03-01T10:30:00Z");
    let b3 = binding("se-1", "A0000001", &hmac_b, 255, "carol");
    assert_eq!(store.bind_sd(&b3).await.unwrap(), BindOutcome::New);
    let mut elsewhere = b1.clone();
    elsewhere.tenant = "issuer-b".to_owned();
    assert_eq!(store.bind_sd(&elsewhere).await.unwrap(), BindOutcome::New);
    assert_eq!(
        store.sd_bindings("issuer-a").await.unwrap(),
        [b2_read.clone(), b1.clone(), b3.clone()]
    );
    assert_eq!(
        store.sd_bindings("issuer-b").await.unwrap(),
        [elsewhere.clone()]
    );
    assert!(store.sd_bindings("nobody").await.unwrap().is_empty());
    let json = serde_json::to_value(&b3).unwrap();
    assert_eq!(json["psn"], 255);
    assert_eq!(json["pan_masked"], "411111******1111");

    // Refused before anything is written: full PANs, bad timestamps, blanks.
    for (what, bad) in [
        ("pan_masked", {
            let mut b = binding("se-9", "A000", &hmac_a, 1, "x");
            b.pan_masked = "4111 1111 1111 1111".to_owned();
            b
        }),
        (
            "pan_hmac",
            binding("se-9", "A000", "4111111111111111", 1, "x"),
        ),
        ("bound_at", {
            let mut b = binding("se-9", "A000", &hmac_a, 1, "x");
            b.bound_at = "yesterday".to_owned();
            b
        }),
        ("bound_by", binding("se-9", "A000", &hmac_a, 1, "")),
    ] {
        let e = store.bind_sd(&bad).await.unwrap_err();
        assert!(
            matches!(&e, StoreError::Invalid { what: w, .. } if *w == what),
            "{what}: {e}"
        );
        assert!(!e.to_string().contains("4111 1111"), "{e}");
        assert!(!e.to_string().contains("4111111111111111"), "{e}");
    }
    assert_eq!(store.sd_bindings("issuer-a").await.unwrap().len(), 3);

    // Release: returns what was bound, once; the SD can then be rebound.
    assert_eq!(
        store.release_sd("issuer-a", "se-1", "A000").await.unwrap(),
        Some(b1.clone())
    );
    assert_eq!(
        store.release_sd("issuer-a", "se-1", "A000").await.unwrap(),
        None
    );
    assert_eq!(
        store.sd_binding("issuer-a", "se-1", "A000").await.unwrap(),
        None
    );
    assert_eq!(
        store.sd_binding("issuer-b", "se-1", "A000").await.unwrap(),
        Some(elsewhere)
    );
    let rebound = binding("se-1", "A000", &hmac_b, 4, "dave");
    assert_eq!(store.bind_sd(&rebound).await.unwrap(), BindOutcome::New);
    assert_eq!(
        store.sd_bindings("issuer-a").await.unwrap(),
        [b2_read, rebound, b3]
    );

    // Races: exactly one winner each.
    let wins = race(20, |_| {
        let store = store.clone();
        async move { store.advance_scp02_counter("race", "card", 42).await }
    })
    .await;
    assert_eq!(wins, 1, "one of 20 equal counters is accepted");
    assert_eq!(store.scp02_counter("race", "card").await.unwrap(), Some(42));

    // Increasing counters racing: the highest always ends up recorded.
    let wins = race(20, |i| {
        let store = store.clone();
        async move {
            store
                .advance_scp02_counter("race", "card", 100 + u16::try_from(i).unwrap())
                .await
        }
    })
    .await;
    assert!((1..=20).contains(&wins), "{wins}");
    assert_eq!(
        store.scp02_counter("race", "card").await.unwrap(),
        Some(119)
    );

    let wins = race(20, |_| {
        let store = store.clone();
        async move { store.remember_request("mallory", "dup", 5000).await }
    })
    .await;
    assert_eq!(wins, 1, "one of 20 equal request ids is accepted");

    let wins = race(20, |_| {
        let store = store.clone();
        async move { store.note_card_challenge("race", "card", "CAFE").await }
    })
    .await;
    assert_eq!(wins, 1, "one of 20 equal challenges is accepted");

    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let store = store.clone();
            let pan = if i % 2 == 0 { "c" } else { "d" }.repeat(64);
            tokio::spawn(async move {
                let b = binding("se-race", "A000", &pan, 1, &format!("node-{i}"));
                (b.clone(), store.bind_sd(&b).await.unwrap())
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    let winners: Vec<&SdBinding> = outcomes
        .iter()
        .filter(|(_, o)| *o == BindOutcome::New)
        .map(|(b, _)| b)
        .collect();
    assert_eq!(winners.len(), 1, "{outcomes:#?}");
    let winner = winners[0];
    for (b, o) in &outcomes {
        match o {
            BindOutcome::New => assert_eq!(b, winner),
            BindOutcome::Existing => assert_eq!(b.pan_hmac, winner.pan_hmac),
            BindOutcome::Other(shown) => {
                assert_ne!(b.pan_hmac, winner.pan_hmac);
                assert_eq!(shown, winner);
            }
        }
    }
    assert_eq!(
        store
            .sd_binding("issuer-a", "se-race", "A000")
            .await
            .unwrap()
            .as_ref(),
        Some(winner)
    );

    // Racing releases: one gets the binding.
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .release_sd("issuer-a", "se-race", "A000")
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut released = Vec::new();
    for t in tasks {
        released.extend(t.await.unwrap());
    }
    assert_eq!(released, std::slice::from_ref(winner));

    // Binds racing releases of the same SD never fail: a bind that collides
    // with a binding released before it can be read tries again.
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                if i % 2 == 0 {
                    let b = binding("se-churn", "A000", &"9a".repeat(32), 1, "churn");
                    store.bind_sd(&b).await.map(|_| ())
                } else {
                    store
                        .release_sd("issuer-a", "se-churn", "A000")
                        .await
                        .map(|_| ())
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    store
        .release_sd("issuer-a", "se-churn", "A000")
        .await
        .unwrap();
    assert_eq!(store.sd_bindings("issuer-a").await.unwrap().len(), 3);
}

/// The provisioning state is shared: what one node (or the same node before
/// a restart) recorded, another sees and cannot repeat.
pub async fn provisioning_shared(a: &Store, b: &Store) {
    assert!(a.remember_request("p", "shared-id", 10).await.unwrap());
    assert!(!b.remember_request("p", "shared-id", 11).await.unwrap());
    assert!(a.advance_scp02_counter("t", "c", 9).await.unwrap());
    assert_eq!(b.scp02_counter("t", "c").await.unwrap(), Some(9));
    assert!(!b.advance_scp02_counter("t", "c", 9).await.unwrap());
    assert!(b.advance_scp02_counter("t", "c", 10).await.unwrap());
    assert!(!a.advance_scp02_counter("t", "c", 10).await.unwrap());
    assert!(a.note_card_challenge("t", "c", "AB").await.unwrap());
    assert!(!b.note_card_challenge("t", "c", "AB").await.unwrap());
    let x = binding("se-s", "A1", &"e".repeat(64), 0, "node-a");
    assert_eq!(a.bind_sd(&x).await.unwrap(), BindOutcome::New);
    assert_eq!(
        b.sd_binding("issuer-a", "se-s", "A1").await.unwrap(),
        Some(x.clone())
    );
    let y = binding("se-s", "A1", &"f".repeat(64), 0, "node-b");
    assert_eq!(b.bind_sd(&y).await.unwrap(), BindOutcome::Other(x.clone()));
}

/// A PIN hash with cheap Argon2id parameters (the store never sees PINs).
pub fn pin_hash(pin: &str) -> PinHash {
    PinHasher::new(1024, 1, 1)
        .unwrap()
        .hash(&Pin::new(pin))
        .unwrap()
}

/// A person to enrol; `request` None makes it the bootstrap.
pub fn new_custodian(n: &str, role: CustodianRole, request: Option<&str>) -> NewCustodian {
    NewCustodian {
        name: CustodianName::parse(n).unwrap(),
        role,
        cert_sha256: Some(format!("{:0>64}", hex::encode_upper(n))),
        pin_hash: pin_hash("Kestrel on 3 wires"),
        login_window: None,
        idle_timeout_seconds: 900,
        enrolled_by: "so-1".to_owned(),
        enrolment_request: request.map(str::to_owned),
    }
}

fn utc_now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

async fn person(store: &Store, n: &str) -> CustodianRecord {
    store.custodian(n).await.unwrap().expect("enrolled")
}

/// Fails `n` logins of `who` one after the other.
async fn fail(store: &Store, who: &str, n: u32) -> Vec<FailedLogin> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(store.record_failed_login(who, utc_now()).await.unwrap());
    }
    out
}

/// Custodians at the store (issue 5; AUTH-PIN-LOCK, TSM-AC-1, TSM-AC-5):
/// one bootstrap ever, enrolment by request, names and certificates never
/// reused, failure counting that locks at the 5th and stops counting,
/// success and PIN changes as compare-and-set, unlock, removal that keeps
/// the last officer able to act.
pub async fn custodians(store: &Store) {
    let t0 = utc_now();
    assert!(store.custodians().await.unwrap().is_empty());

    // The bootstrap, once; never with a request, never without one after.
    let so = store
        .bootstrap_custodian(
            &new_custodian("so-1", CustodianRole::SecurityOfficer, None),
            t0,
        )
        .await
        .unwrap()
        .expect("the first enrolment is the bootstrap");
    assert!(so.bootstrap && so.must_change_pin && so.enrolment_request.is_none());
    assert_eq!(so.failed_attempts, 0);
    assert_eq!(so.idle_timeout_seconds, 900);
    assert!(!so.is_locked() && !so.is_removed());
    assert!(so.enrolled_at >= t0 - Duration::from_secs(1));
    assert!(store
        .bootstrap_custodian(
            &new_custodian("so-2", CustodianRole::SecurityOfficer, None),
            t0
        )
        .await
        .unwrap()
        .is_none());
    assert!(store.custodian("so-2").await.unwrap().is_none());
    let e = store
        .enroll_custodian(
            &new_custodian("so-2", CustodianRole::SecurityOfficer, None),
            t0,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Invalid { .. }), "{e}");
    let e = store
        .bootstrap_custodian(
            &new_custodian("so-2", CustodianRole::SecurityOfficer, Some("r0")),
            t0,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Invalid { .. }), "{e}");

    // Enrolment by request; the window is stored in canonical form.
    let mut alice = new_custodian("alice", CustodianRole::Custodian, Some("r1"));
    alice.login_window = Some(LoginWindow::parse("mon-fri 08:00-18:00 +08:00").unwrap());
    alice.cert_sha256 = Some("ab".repeat(32));
    let a = store.enroll_custodian(&alice, t0).await.unwrap();
    assert_eq!(a.role, CustodianRole::Custodian);
    assert_eq!(a.cert_sha256.as_deref(), Some("AB".repeat(32).as_str()));
    assert_eq!(
        a.login_window.as_ref().map(ToString::to_string).as_deref(),
        Some("Mon-Fri 08:00-18:00 +08:00")
    );
    assert!(!a.bootstrap && a.must_change_pin);
    assert_eq!(a.enrolment_request.as_deref(), Some("r1"));
    assert_eq!(
        store
            .custodian_by_cert(&"ab".repeat(32))
            .await
            .unwrap()
            .map(|c| c.name.to_string()),
        Some("alice".to_owned())
    );
    // Names and certificates are never reused.
    for dup in [
        new_custodian("alice", CustodianRole::Operator, Some("r2")),
        NewCustodian {
            cert_sha256: Some("AB".repeat(32)),
            ..new_custodian("alicia", CustodianRole::Custodian, Some("r2"))
        },
    ] {
        let e = store.enroll_custodian(&dup, t0).await.unwrap_err();
        assert!(matches!(e, StoreError::Invalid { .. }), "{e}");
    }
    assert!(store.custodian("alicia").await.unwrap().is_none());
    let mut bad = new_custodian("zed", CustodianRole::Custodian, Some("r3"));
    bad.cert_sha256 = Some("not hex".into());
    assert!(store.enroll_custodian(&bad, t0).await.is_err());
    bad.cert_sha256 = None;
    bad.idle_timeout_seconds = 0;
    assert!(store.enroll_custodian(&bad, t0).await.is_err());
    let names: Vec<String> = store
        .custodians()
        .await
        .unwrap()
        .iter()
        .map(|c| c.name.to_string())
        .collect();
    assert_eq!(names, ["alice", "so-1"]);

    // AUTH-PIN-LOCK: 4 failures count, the 5th locks, then nothing counts.
    let counted = fail(store, "alice", 4).await;
    assert_eq!(
        counted,
        (1..=4)
            .map(|n| FailedLogin::Counted { failed_attempts: n })
            .collect::<Vec<_>>()
    );
    // A success resets the counter (only with the hash that is stored).
    let hash = person(store, "alice").await.pin_hash().clone();
    assert!(!store
        .record_successful_login("alice", &pin_hash("Other 4 wires"), t0)
        .await
        .unwrap());
    assert_eq!(person(store, "alice").await.failed_attempts, 4);
    assert!(store
        .record_successful_login("alice", &hash, t0)
        .await
        .unwrap());
    let a = person(store, "alice").await;
    assert_eq!(a.failed_attempts, 0);
    assert!(a.last_login_at.is_some());
    let outcomes = fail(store, "alice", 7).await;
    assert_eq!(
        outcomes[4],
        FailedLogin::Locked { failed_attempts: 5 },
        "{outcomes:?}"
    );
    assert!(outcomes[5..].iter().all(|o| *o == FailedLogin::NotCounted));
    let a = person(store, "alice").await;
    assert!(a.is_locked());
    assert_eq!(a.failed_attempts, MAX_FAILED_LOGINS);
    assert_eq!(
        a.locked_reason.as_deref(),
        Some("5 consecutive failed logins")
    );
    // Locked: the right PIN resets nothing, the PIN cannot change.
    assert!(!store
        .record_successful_login("alice", &hash, t0)
        .await
        .unwrap());
    assert!(!store
        .change_custodian_pin("alice", &hash, &pin_hash("New 5 wires"), t0)
        .await
        .unwrap());
    assert!(person(store, "alice").await.is_locked());
    // Unknown and removed people are not counted.
    assert_eq!(fail(store, "nobody", 1).await, [FailedLogin::NotCounted]);

    // Unlock clears the lock and the counter, once.
    assert!(store.unlock_custodian("alice").await.unwrap());
    assert!(!store.unlock_custodian("alice").await.unwrap());
    assert!(!store.unlock_custodian("nobody").await.unwrap());
    let a = person(store, "alice").await;
    assert!(!a.is_locked() && a.locked_reason.is_none());
    assert_eq!(a.failed_attempts, 0);

    // A PIN change is a compare-and-set on the old hash.
    let new = pin_hash("New 5 wires");
    assert!(!store
        .change_custodian_pin("alice", &new, &new, t0)
        .await
        .unwrap());
    fail(store, "alice", 2).await;
    assert!(store
        .change_custodian_pin("alice", &hash, &new, t0)
        .await
        .unwrap());
    let a = person(store, "alice").await;
    assert!(!a.must_change_pin);
    assert_eq!(a.failed_attempts, 0);
    assert!(a.pin_changed_at.is_some());
    assert_eq!(a.pin_hash(), &new);
    assert!(!store
        .change_custodian_pin("alice", &hash, &new, t0)
        .await
        .unwrap());

    // Removal: the row stays; the last officer able to act stays.
    assert_eq!(
        store.remove_custodian("so-1", "x", t0).await.unwrap(),
        Removal::LastOfficer
    );
    let so2 = store
        .enroll_custodian(
            &new_custodian("so-2", CustodianRole::SecurityOfficer, Some("r4")),
            t0,
        )
        .await
        .unwrap();
    // A locked officer cannot re-enable anyone: so-2 locked leaves so-1 last.
    fail(store, "so-2", MAX_FAILED_LOGINS).await;
    assert_eq!(
        store.remove_custodian("so-1", "x", t0).await.unwrap(),
        Removal::LastOfficer
    );
    assert!(store.unlock_custodian("so-2").await.unwrap());
    match store.remove_custodian("so-1", "so-2", t0).await.unwrap() {
        Removal::Removed(r) => {
            assert!(r.is_removed());
            assert_eq!(r.removed_by.as_deref(), Some("so-2"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        store.remove_custodian("so-1", "so-2", t0).await.unwrap(),
        Removal::AlreadyRemoved
    );
    assert_eq!(
        store.remove_custodian("nobody", "so-2", t0).await.unwrap(),
        Removal::NotFound
    );
    assert_eq!(
        store
            .remove_custodian(so2.name.as_str(), "x", t0)
            .await
            .unwrap(),
        Removal::LastOfficer
    );
    assert!(matches!(
        store.remove_custodian("alice", "so-2", t0).await.unwrap(),
        Removal::Removed(_)
    ));
    // A removed person is not counted, logs in nowhere, keeps their name.
    assert_eq!(fail(store, "alice", 1).await, [FailedLogin::NotCounted]);
    assert!(!store
        .record_successful_login("alice", &new, t0)
        .await
        .unwrap());
    let e = store
        .enroll_custodian(
            &new_custodian("alice", CustodianRole::Custodian, Some("r5")),
            t0,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Invalid { .. }), "{e}");
    assert_eq!(store.custodians().await.unwrap().len(), 3);
}

/// AUTH-PIN-LOCK under concurrency: `n` wrong PINs at once on an account
/// with 4 failures already, split over the given stores (one node or
/// several): it ends locked with exactly 5 failures, and exactly one of the
/// attempts is told it locked.
pub async fn custodians_concurrent_failures(nodes: &[&Store], n: usize) {
    let first = nodes[0];
    if first.custodians().await.unwrap().is_empty() {
        first
            .bootstrap_custodian(
                &new_custodian("so-1", CustodianRole::SecurityOfficer, None),
                utc_now(),
            )
            .await
            .unwrap();
    }
    first
        .enroll_custodian(
            &new_custodian("racer", CustodianRole::Custodian, Some("r-race")),
            utc_now(),
        )
        .await
        .unwrap();
    fail(first, "racer", 4).await;
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let store = nodes[i % nodes.len()].clone();
            tokio::spawn(async move { store.record_failed_login("racer", utc_now()).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap().unwrap());
    }
    let locked = outcomes
        .iter()
        .filter(|o| matches!(o, FailedLogin::Locked { failed_attempts: 5 }))
        .count();
    assert_eq!(locked, 1, "{outcomes:?}");
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, FailedLogin::Locked { .. } | FailedLogin::NotCounted)),
        "{outcomes:?}"
    );
    for node in nodes {
        let r = person(node, "racer").await;
        assert!(r.is_locked());
        assert_eq!(r.failed_attempts, MAX_FAILED_LOGINS);
    }
}

/// A locked custodian stays locked across restarts: after
/// `custodians_concurrent_failures`, a store opened anew on the same
/// database still has `racer` locked and counts nothing more.
pub async fn custodians_still_locked(store: &Store) {
    let r = person(store, "racer").await;
    assert!(
        r.is_locked(),
        "AUTH-PIN-LOCK: the lock survived the restart"
    );
    assert_eq!(r.failed_attempts, MAX_FAILED_LOGINS);
    assert_eq!(fail(store, "racer", 1).await, [FailedLogin::NotCounted]);
    assert!(!store
        .record_successful_login("racer", r.pin_hash(), utc_now())
        .await
        .unwrap());
}

/// One bootstrap ever, even when several nodes try at once on an empty
/// database: exactly one of `n` concurrent bootstraps enrols anyone.
pub async fn custodians_concurrent_bootstrap(nodes: &[&Store], n: usize) {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let store = nodes[i % nodes.len()].clone();
            tokio::spawn(async move {
                store
                    .bootstrap_custodian(
                        &new_custodian(&format!("so-{i}"), CustodianRole::SecurityOfficer, None),
                        utc_now(),
                    )
                    .await
            })
        })
        .collect();
    let mut enrolled = 0;
    for t in tasks {
        if t.await.unwrap().unwrap().is_some() {
            enrolled += 1;
        }
    }
    assert_eq!(enrolled, 1);
    let all = nodes[0].custodians().await.unwrap();
    assert_eq!(all.len(), 1);
    assert!(all[0].bootstrap);
}
