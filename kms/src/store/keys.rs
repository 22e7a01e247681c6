//! Keys, versions and their events.
//!
//! Each method is one transaction. State changes are compare-and-set: the
//! UPDATE names the value it expects, and zero affected rows means another
//! writer got there first (or the caller's view was stale), reported as
//! `StoreError::Conflict` rather than silently overwritten.

use super::records::{check_kcv, format_opt_time, format_time};
use super::{
    fold_keys, records, EventRecord, KeyId, KeyRecord, NewKey, NewVersion, Presence, Store,
    StoreError, VersionRecord, SYSTEM_ACTOR,
};
use crate::model::{KeyName, KeyState, StateError, Tenant};
use sqlx::AnyConnection;
use time::{OffsetDateTime, UtcOffset};

/// `keys` joined with its versions. Aliased so that the two `created_at`
/// columns stay apart and the row decoders have one set of names.
macro_rules! select_keys {
    ($join:literal) => {
        concat!(
            "SELECT k.id AS k_id, k.tenant AS k_tenant, k.name AS k_name, ",
            "k.algorithm AS k_algorithm, k.usage AS k_usage, k.exportable AS k_exportable, ",
            "k.created_at AS k_created_at, k.created_by AS k_created_by, ",
            "v.version AS v_version, v.object_id AS v_object_id, v.state AS v_state, ",
            "v.kcv AS v_kcv, v.presence AS v_presence, v.activate_at AS v_activate_at, ",
            "v.expire_at AS v_expire_at, v.trusted AS v_trusted, ",
            "v.created_at AS v_created_at, v.updated_at AS v_updated_at ",
            "FROM keys k ",
            $join,
            " JOIN key_versions v ON v.key_id = k.id "
        )
    };
}

const FIND_KEY: &str = concat!(
    select_keys!("LEFT"),
    "WHERE k.tenant = $1 AND k.name = $2 ORDER BY v.version"
);
const LIST_KEYS: &str = concat!(select_keys!("LEFT"), "ORDER BY k.tenant, k.name, v.version");
const LIST_TENANT_KEYS: &str = concat!(
    select_keys!("LEFT"),
    "WHERE k.tenant = $1 ORDER BY k.tenant, k.name, v.version"
);

const INSERT_KEY: &str = "INSERT INTO keys \
     (id, tenant, name, algorithm, usage, exportable, created_at, created_by) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
const INSERT_VERSION: &str = "INSERT INTO key_versions \
     (key_id, version, object_id, state, kcv, presence, activate_at, expire_at, trusted, \
      created_at, updated_at) \
     VALUES ($1, $2, $3, $4, NULL, 'pending', $5, $6, $7, $8, $8)";
const INSERT_EVENT: &str = "INSERT INTO key_events \
     (key_id, version, at, actor, action, from_state, to_state, reason) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
const SELECT_EVENTS: &str = "SELECT id, key_id, version, at, actor, action, from_state, \
     to_state, reason FROM key_events WHERE key_id = $1 ORDER BY id";

const MAX_ACTOR: usize = 128;
const MAX_ACTION: usize = 32;
const MAX_REASON: usize = 1024;

/// One row of `key_events` to write.
struct Event<'a> {
    key_id: &'a KeyId,
    version: Option<u32>,
    at: &'a str,
    actor: &'a str,
    action: &'a str,
    from: Option<KeyState>,
    to: Option<KeyState>,
    reason: Option<&'a str>,
}

async fn insert_event(conn: &mut AnyConnection, e: &Event<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(INSERT_EVENT)
        .bind(e.key_id.to_string())
        .bind(e.version.map(i64::from))
        .bind(e.at)
        .bind(e.actor)
        .bind(e.action)
        .bind(e.from.map(KeyState::as_str))
        .bind(e.to.map(KeyState::as_str))
        .bind(e.reason)
        .execute(conn)
        .await?;
    Ok(())
}

async fn insert_version(
    conn: &mut AnyConnection,
    key_id: &KeyId,
    version: u32,
    v: &NewVersion,
    t: &VersionTimes,
    now: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(INSERT_VERSION)
        .bind(key_id.to_string())
        .bind(i64::from(version))
        .bind(v.object_id.to_string())
        .bind(v.state.as_str())
        .bind(t.activate_at.as_deref())
        .bind(t.expire_at.as_deref())
        .bind(false)
        .bind(now)
        .execute(conn)
        .await?;
    Ok(())
}

/// A version's optional timestamps in database form.
struct VersionTimes {
    activate_at: Option<String>,
    expire_at: Option<String>,
}

impl VersionTimes {
    fn new(v: &NewVersion) -> Result<Self, StoreError> {
        Ok(Self {
            activate_at: format_opt_time(v.activate_at)?,
            expire_at: format_opt_time(v.expire_at)?,
        })
    }
}

fn utc(t: OffsetDateTime) -> OffsetDateTime {
    t.to_offset(UtcOffset::UTC)
}

fn check_text(what: &'static str, s: &str, max: usize) -> Result<(), StoreError> {
    let why = if s.is_empty() {
        "must not be empty".to_owned()
    } else if s.chars().count() > max {
        format!("longer than {max} characters")
    } else if s.chars().any(char::is_control) {
        "must not contain control characters".to_owned()
    } else {
        return Ok(());
    };
    Err(StoreError::Invalid { what, why })
}

fn check_actor(actor: &str) -> Result<(), StoreError> {
    check_text("actor", actor, MAX_ACTOR)
}

/// Actions are short machine words so that audits can group by them.
fn check_action(action: &str) -> Result<(), StoreError> {
    check_text("action", action, MAX_ACTION)?;
    if action
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        Ok(())
    } else {
        Err(StoreError::Invalid {
            what: "action",
            why: "only lower-case letters, digits and '-' are allowed".to_owned(),
        })
    }
}

fn check_reason(reason: Option<&str>) -> Result<(), StoreError> {
    match reason {
        // Line breaks are fine in a reason; other control characters are not.
        Some(r) if r.chars().count() > MAX_REASON => Err(StoreError::Invalid {
            what: "reason",
            why: format!("longer than {MAX_REASON} characters"),
        }),
        Some(r) if r.chars().any(|c| c.is_control() && c != '\n') => Err(StoreError::Invalid {
            what: "reason",
            why: "must not contain control characters".to_owned(),
        }),
        _ => Ok(()),
    }
}

/// The raw state and presence of a version row, for diagnosing a failed
/// compare-and-set and for read-then-update steps.
struct RowStatus {
    state: String,
    presence: String,
}

async fn row_status(
    conn: &mut AnyConnection,
    key_id: &KeyId,
    version: u32,
) -> Result<Option<RowStatus>, StoreError> {
    let row =
        sqlx::query("SELECT state, presence FROM key_versions WHERE key_id = $1 AND version = $2")
            .bind(key_id.to_string())
            .bind(i64::from(version))
            .fetch_optional(conn)
            .await?;
    let Some(row) = row else { return Ok(None) };
    let r = records::RowReader::new(
        &row,
        "key_versions",
        format!("key {key_id} version {version}"),
    );
    Ok(Some(RowStatus {
        state: r.text("state")?,
        presence: r.text("presence")?,
    }))
}

/// Turns "no row updated" into the precise reason.
async fn lost_update(
    conn: &mut AnyConnection,
    key_id: &KeyId,
    version: u32,
    expected: String,
) -> StoreError {
    match row_status(conn, key_id, version).await {
        Ok(None) => StoreError::NotFound {
            key_id: *key_id,
            version: Some(version),
        },
        Ok(Some(s)) => StoreError::Conflict {
            key_id: *key_id,
            version,
            expected,
            found: format!("state {}, presence {}", s.state, s.presence),
        },
        Err(e) => e,
    }
}

/// Reads a row's status and requires it to exist and to be in `presence`.
async fn status_in(
    conn: &mut AnyConnection,
    key_id: &KeyId,
    version: u32,
    presence: Presence,
) -> Result<KeyState, StoreError> {
    let s = row_status(conn, key_id, version)
        .await?
        .ok_or(StoreError::NotFound {
            key_id: *key_id,
            version: Some(version),
        })?;
    if s.presence != presence.as_str() {
        return Err(StoreError::Conflict {
            key_id: *key_id,
            version,
            expected: format!("presence {presence}"),
            found: format!("state {}, presence {}", s.state, s.presence),
        });
    }
    s.state
        .parse()
        .map_err(|e: crate::model::ParseError| StoreError::Corrupt {
            table: "key_versions",
            column: "state",
            row: format!("key {key_id} version {version}"),
            why: e.to_string(),
        })
}

async fn key_exists(conn: &mut AnyConnection, key_id: &KeyId) -> Result<bool, StoreError> {
    Ok(sqlx::query("SELECT id FROM keys WHERE id = $1")
        .bind(key_id.to_string())
        .fetch_optional(conn)
        .await?
        .is_some())
}

impl Store {
    /// Records a new key and its version 1 (`pending`), with a `create` event.
    pub async fn create_key(
        &self,
        new: &NewKey,
        first: &NewVersion,
        actor: &str,
    ) -> Result<KeyRecord, StoreError> {
        self.create_key_as(new, first, actor, "create").await
    }

    /// As [`Store::create_key`], with the event's action named by the caller
    /// (`import`, `ceremony`, ...) so the history says how the key came to be.
    pub async fn create_key_as(
        &self,
        new: &NewKey,
        first: &NewVersion,
        actor: &str,
        action: &str,
    ) -> Result<KeyRecord, StoreError> {
        check_actor(actor)?;
        check_action(action)?;
        let times = VersionTimes::new(first)?;
        let id = KeyId::new_random();
        let now = OffsetDateTime::now_utc();
        let now_s = format_time(now)?;

        let mut tx = self.begin_write().await?;
        let inserted = sqlx::query(INSERT_KEY)
            .bind(id.to_string())
            .bind(new.tenant.as_str())
            .bind(new.name.as_str())
            .bind(new.algorithm.as_str())
            .bind(new.usage.as_str())
            .bind(new.exportable)
            .bind(now_s.as_str())
            .bind(actor)
            .execute(&mut *tx)
            .await;
        match inserted {
            Err(e) if StoreError::is_unique_violation(&e) => {
                return Err(StoreError::Duplicate {
                    tenant: new.tenant.clone(),
                    name: new.name.clone(),
                })
            }
            other => other?,
        };
        match insert_version(&mut tx, &id, 1, first, &times, &now_s).await {
            Err(e) if StoreError::is_unique_violation(&e) => {
                return Err(StoreError::DuplicateObjectId(first.object_id))
            }
            other => other?,
        }
        insert_event(
            &mut tx,
            &Event {
                key_id: &id,
                version: Some(1),
                at: &now_s,
                actor,
                action,
                from: None,
                to: Some(first.state),
                reason: None,
            },
        )
        .await?;
        tx.commit().await?;

        Ok(KeyRecord {
            id,
            tenant: new.tenant.clone(),
            name: new.name.clone(),
            algorithm: new.algorithm,
            usage: new.usage,
            exportable: new.exportable,
            created_at: now,
            created_by: actor.to_owned(),
            versions: vec![pending_record(1, first, now)],
        })
    }

    /// Records the next version of a key (`pending`), with an event named
    /// `action` (`rotate`, `import`, ...).
    pub async fn add_version(
        &self,
        key_id: &KeyId,
        v: &NewVersion,
        actor: &str,
        action: &str,
    ) -> Result<VersionRecord, StoreError> {
        check_actor(actor)?;
        check_action(action)?;
        let times = VersionTimes::new(v)?;
        let now = OffsetDateTime::now_utc();
        let now_s = format_time(now)?;

        let mut tx = self.begin_write().await?;
        if !key_exists(&mut tx, key_id).await? {
            return Err(StoreError::NotFound {
                key_id: *key_id,
                version: None,
            });
        }
        let taken = sqlx::query("SELECT key_id FROM key_versions WHERE object_id = $1")
            .bind(v.object_id.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        if taken.is_some() {
            return Err(StoreError::DuplicateObjectId(v.object_id));
        }
        let last = sqlx::query(
            "SELECT version FROM key_versions WHERE key_id = $1 ORDER BY version DESC LIMIT 1",
        )
        .bind(key_id.to_string())
        .fetch_optional(&mut *tx)
        .await?;
        let last = match last {
            None => 0,
            Some(row) => {
                let r = records::RowReader::new(&row, "key_versions", format!("key {key_id}"));
                r.version("version")?
            }
        };
        let next = last.checked_add(1).ok_or(StoreError::Invalid {
            what: "version",
            why: "no version numbers left".to_owned(),
        })?;

        match insert_version(&mut tx, key_id, next, v, &times, &now_s).await {
            // The object id was free above, so this is another writer adding
            // the same version number concurrently (PostgreSQL).
            Err(e) if StoreError::is_unique_violation(&e) => {
                return Err(StoreError::Conflict {
                    key_id: *key_id,
                    version: next,
                    expected: "a free version number".to_owned(),
                    found: "a version added concurrently".to_owned(),
                })
            }
            other => other?,
        }
        insert_event(
            &mut tx,
            &Event {
                key_id,
                version: Some(next),
                at: &now_s,
                actor,
                action,
                from: None,
                to: Some(v.state),
                reason: None,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(pending_record(next, v, now))
    }

    /// The HSM object exists: `pending` -> `present`, recording its check
    /// value. An empty `kcv` means the key has none (key pairs).
    pub async fn confirm_version(
        &self,
        key_id: &KeyId,
        version: u32,
        kcv: &str,
    ) -> Result<(), StoreError> {
        let kcv = if kcv.is_empty() {
            None
        } else {
            Some(check_kcv(kcv).map_err(|why| StoreError::Invalid { what: "kcv", why })?)
        };
        let now_s = format_time(OffsetDateTime::now_utc())?;
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE key_versions SET presence = 'present', kcv = $3, updated_at = $4 \
             WHERE key_id = $1 AND version = $2 AND presence = 'pending'",
        )
        .bind(key_id.to_string())
        .bind(i64::from(version))
        .bind(kcv)
        .bind(now_s)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(lost_update(&mut tx, key_id, version, "presence pending".to_owned()).await);
        }
        tx.commit().await?;
        Ok(())
    }

    /// The HSM object was never created: forget the `pending` row, and the key
    /// itself (with its events) if that was its only version, so that the name
    /// can be used again.
    pub async fn abandon_pending(&self, key_id: &KeyId, version: u32) -> Result<(), StoreError> {
        let now_s = format_time(OffsetDateTime::now_utc())?;
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "DELETE FROM key_versions WHERE key_id = $1 AND version = $2 AND presence = 'pending'",
        )
        .bind(key_id.to_string())
        .bind(i64::from(version))
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(lost_update(&mut tx, key_id, version, "presence pending".to_owned()).await);
        }
        let left = sqlx::query("SELECT version FROM key_versions WHERE key_id = $1 LIMIT 1")
            .bind(key_id.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        if left.is_none() {
            sqlx::query("DELETE FROM keys WHERE id = $1")
                .bind(key_id.to_string())
                .execute(&mut *tx)
                .await?;
        } else {
            insert_event(
                &mut tx,
                &Event {
                    key_id,
                    version: Some(version),
                    at: &now_s,
                    actor: SYSTEM_ACTOR,
                    action: "abandon",
                    from: None,
                    to: None,
                    reason: Some("token object was not created"),
                },
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The key with all its versions in ascending order.
    pub async fn find_key(
        &self,
        tenant: &Tenant,
        name: &KeyName,
    ) -> Result<Option<KeyRecord>, StoreError> {
        // One statement, so the key and its versions come from one snapshot.
        let rows = sqlx::query(FIND_KEY)
            .bind(tenant.as_str())
            .bind(name.as_str())
            .fetch_all(self.pool())
            .await?;
        Ok(fold_keys(&rows)?.into_iter().next())
    }

    /// All keys (of one tenant, if given), ordered by tenant and name.
    pub async fn list_keys(&self, tenant: Option<&Tenant>) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = match tenant {
            Some(t) => {
                sqlx::query(LIST_TENANT_KEYS)
                    .bind(t.as_str())
                    .fetch_all(self.pool())
                    .await?
            }
            None => sqlx::query(LIST_KEYS).fetch_all(self.pool()).await?,
        };
        fold_keys(&rows)
    }

    /// Compare-and-set of a version's state, with an event saying who, when
    /// and why. Refused while the version is being destroyed, so that a late
    /// change cannot be lost when the tombstone's final state is written.
    #[allow(clippy::too_many_arguments)] // the signature the service layer was promised
    pub async fn change_state(
        &self,
        key_id: &KeyId,
        version: u32,
        from: KeyState,
        to: KeyState,
        actor: &str,
        action: &str,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        // The service enforces policy; this keeps a bug there from writing a
        // history SP 800-57 does not allow.
        if !from.can_go_to(to) {
            return Err(StateError { from, to }.into());
        }
        // Destruction removes the token object, so it goes through
        // mark_destroying/mark_tombstone; a state alone must never claim it.
        if to.is_destroyed() && !from.is_destroyed() {
            return Err(StoreError::Invalid {
                what: "state change",
                why: format!("{from} -> {to} is a destruction; use mark_destroying"),
            });
        }
        check_actor(actor)?;
        check_action(action)?;
        check_reason(reason)?;
        let now_s = format_time(OffsetDateTime::now_utc())?;
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE key_versions SET state = $3, updated_at = $4 \
             WHERE key_id = $1 AND version = $2 AND state = $5 AND presence <> 'destroying'",
        )
        .bind(key_id.to_string())
        .bind(i64::from(version))
        .bind(to.as_str())
        .bind(now_s.as_str())
        .bind(from.as_str())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            let expected = format!("state {from}, presence not destroying");
            return Err(lost_update(&mut tx, key_id, version, expected).await);
        }
        insert_event(
            &mut tx,
            &Event {
                key_id,
                version: Some(version),
                at: &now_s,
                actor,
                action,
                from: Some(from),
                to: Some(to),
                reason,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Marks a KEK version trusted (or not). Only an existing HSM object can
    /// become trusted; trust can be withdrawn at any time.
    pub async fn set_trusted(
        &self,
        key_id: &KeyId,
        version: u32,
        trusted: bool,
        actor: &str,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        check_actor(actor)?;
        check_reason(reason)?;
        let now_s = format_time(OffsetDateTime::now_utc())?;
        let (sql, expected, action) = if trusted {
            (
                "UPDATE key_versions SET trusted = $3, updated_at = $4 \
                 WHERE key_id = $1 AND version = $2 AND presence = 'present'",
                "presence present",
                "trust",
            )
        } else {
            (
                "UPDATE key_versions SET trusted = $3, updated_at = $4 \
                 WHERE key_id = $1 AND version = $2",
                "",
                "untrust",
            )
        };
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(sql)
            .bind(key_id.to_string())
            .bind(i64::from(version))
            .bind(trusted)
            .bind(now_s.as_str())
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(lost_update(&mut tx, key_id, version, expected.to_owned()).await);
        }
        insert_event(
            &mut tx,
            &Event {
                key_id,
                version: Some(version),
                at: &now_s,
                actor,
                action,
                from: None,
                to: None,
                reason,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Destruction decided: `present` -> `destroying`, before the HSM object
    /// is removed. The event's `to_state` is the state the tombstone will have.
    pub async fn mark_destroying(
        &self,
        key_id: &KeyId,
        version: u32,
        actor: &str,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        check_actor(actor)?;
        check_reason(reason)?;
        let now_s = format_time(OffsetDateTime::now_utc())?;
        let mut tx = self.begin_write().await?;
        let state = status_in(&mut tx, key_id, version, Presence::Present).await?;
        // SP 800-57: an active or suspended key is deactivated first.
        let final_state = state.destroyed()?;
        let done = sqlx::query(
            "UPDATE key_versions SET presence = 'destroying', updated_at = $3 \
             WHERE key_id = $1 AND version = $2 AND presence = 'present' AND state = $4",
        )
        .bind(key_id.to_string())
        .bind(i64::from(version))
        .bind(now_s.as_str())
        .bind(state.as_str())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            let expected = format!("state {state}, presence present");
            return Err(lost_update(&mut tx, key_id, version, expected).await);
        }
        insert_event(
            &mut tx,
            &Event {
                key_id,
                version: Some(version),
                at: &now_s,
                actor,
                action: "destroy",
                from: Some(state),
                to: Some(final_state),
                reason,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The HSM object is gone: `destroying` -> `tombstone`, state :=
    /// `final_state`. The row and its KCV stay for ever.
    pub async fn mark_tombstone(
        &self,
        key_id: &KeyId,
        version: u32,
        final_state: KeyState,
    ) -> Result<(), StoreError> {
        if !final_state.is_destroyed() {
            return Err(StoreError::Invalid {
                what: "final state",
                why: format!("{final_state} is not a destroyed state"),
            });
        }
        let now_s = format_time(OffsetDateTime::now_utc())?;
        let mut tx = self.begin_write().await?;
        let state = status_in(&mut tx, key_id, version, Presence::Destroying).await?;
        // Keeps a compromise recorded before destruction from being
        // downgraded to a plain "destroyed".
        if state != final_state && !state.can_go_to(final_state) {
            return Err(StateError {
                from: state,
                to: final_state,
            }
            .into());
        }
        let done = sqlx::query(
            "UPDATE key_versions SET presence = 'tombstone', state = $3, updated_at = $4 \
             WHERE key_id = $1 AND version = $2 AND presence = 'destroying' AND state = $5",
        )
        .bind(key_id.to_string())
        .bind(i64::from(version))
        .bind(final_state.as_str())
        .bind(now_s.as_str())
        .bind(state.as_str())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            let expected = format!("state {state}, presence destroying");
            return Err(lost_update(&mut tx, key_id, version, expected).await);
        }
        insert_event(
            &mut tx,
            &Event {
                key_id,
                version: Some(version),
                at: &now_s,
                // Often completed by start-up reconciliation, not a person;
                // the person is on the preceding `destroy` event.
                actor: SYSTEM_ACTOR,
                action: "tombstone",
                from: Some(state),
                to: Some(final_state),
                reason: None,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Every version of every key, for start-up reconciliation against the
    /// token. Each pair carries the complete key record.
    pub async fn all_versions(&self) -> Result<Vec<(KeyRecord, VersionRecord)>, StoreError> {
        let keys = self.list_keys(None).await?;
        Ok(keys
            .into_iter()
            .flat_map(|k| k.versions.clone().into_iter().map(move |v| (k.clone(), v)))
            .collect())
    }

    /// A key's history, oldest first.
    pub async fn events(&self, key_id: &KeyId) -> Result<Vec<EventRecord>, StoreError> {
        let rows = sqlx::query(SELECT_EVENTS)
            .bind(key_id.to_string())
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(records::event_from_row).collect()
    }

    /// Records something that happened to a key without changing it (an
    /// export, a use worth auditing).
    pub async fn record_event(
        &self,
        key_id: &KeyId,
        version: Option<u32>,
        actor: &str,
        action: &str,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        check_actor(actor)?;
        check_action(action)?;
        check_reason(reason)?;
        let now_s = format_time(OffsetDateTime::now_utc())?;
        let mut tx = self.begin_write().await?;
        let exists = match version {
            None => key_exists(&mut tx, key_id).await?,
            Some(v) => row_status(&mut tx, key_id, v).await?.is_some(),
        };
        if !exists {
            return Err(StoreError::NotFound {
                key_id: *key_id,
                version,
            });
        }
        insert_event(
            &mut tx,
            &Event {
                key_id,
                version,
                at: &now_s,
                actor,
                action,
                from: None,
                to: None,
                reason,
            },
        )
        .await
        .map_err(|e| {
            if StoreError::is_foreign_key_violation(&e) {
                StoreError::NotFound {
                    key_id: *key_id,
                    version,
                }
            } else {
                e.into()
            }
        })?;
        tx.commit().await?;
        Ok(())
    }
}

/// The record of a version just inserted, as a later read would return it.
fn pending_record(version: u32, v: &NewVersion, now: OffsetDateTime) -> VersionRecord {
    VersionRecord {
        version,
        object_id: v.object_id,
        state: v.state,
        kcv: None,
        presence: Presence::Pending,
        activate_at: v.activate_at.map(utc),
        expire_at: v.expire_at.map(utc),
        trusted: false,
        created_at: now,
        updated_at: now,
    }
}

impl Store {
    /// Set a version's activation date and the end of its cryptoperiod
    /// (on activation: the cryptoperiod runs from activation, not creation).
    pub async fn set_activation(
        &self,
        key_id: &KeyId,
        version: u32,
        activate_at: OffsetDateTime,
        expire_at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE key_versions SET activate_at = $3, expire_at = $4, updated_at = $5 \
             WHERE key_id = $1 AND version = $2",
        )
        .bind(key_id.to_string())
        .bind(i64::from(version))
        .bind(format_time(activate_at)?)
        .bind(format_time(expire_at)?)
        .bind(format_time(OffsetDateTime::now_utc())?)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Err(StoreError::NotFound {
                key_id: *key_id,
                version: Some(version),
            });
        }
        tx.commit().await?;
        Ok(())
    }
}
