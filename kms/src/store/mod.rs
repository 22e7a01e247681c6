//! The metadata store: which keys exist, their versions, states and history.
//!
//! It never holds key material: no table has a column for a key value, a PIN
//! or a component, and a check value longer than 5 bytes is refused. The
//! people of ceremonies (`custodians.rs`) have their PINs only as Argon2id
//! hashes, which the schema checks. The HSM
//! object of a version is found through its `object_id` (CKA_ID).
//!
//! One implementation serves SQLite (the embedded default) and PostgreSQL
//! (several KMS nodes sharing one database) through `sqlx::AnyPool`. Every
//! query is written once with `$n` placeholders, which both drivers accept;
//! only the migrations differ per backend. Timestamps are RFC 3339 text in
//! UTC because the Any driver has no date type.
//!
//! Write protocol, so that a crash at any point is recoverable at start-up:
//! a version row is written `pending` before its HSM object is created,
//! confirmed `present` afterwards, marked `destroying` before the object is
//! removed and kept as a `tombstone` (with its KCV) for ever after.

mod approvals;
mod audit;
mod custodians;
mod error;
mod keys;
mod provisioning;
mod records;
mod seal;

#[cfg(test)]
mod tests;

pub use approvals::{ApprovalRow, StateFact};
pub use audit::AuditFilter;
pub use custodians::{CustodianRecord, FailedLogin, NewCustodian, Removal, MAX_FAILED_LOGINS};
pub use error::StoreError;
pub use provisioning::{BindOutcome, SdBinding};
pub use records::{
    EventRecord, KeyId, KeyRecord, NewKey, NewVersion, Presence, PresenceError, VersionRecord,
};
pub use seal::{SealKind, SealRecord};

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::Migrator;
use sqlx::{Any, AnyPool, Transaction};
use std::fmt;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// The actor recorded for steps the KMS completes on its own (finishing a
/// destruction after a restart), as opposed to a person's decision.
pub const SYSTEM_ACTOR: &str = "kms";

/// How long a SQLite writer waits for another before giving up. Writes are
/// short single-row transactions, so seconds mean something is stuck.
const SQLITE_BUSY_TIMEOUT_MS: u32 = 5000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// Decided by URL scheme alone, before anything is opened.
    pub fn from_url(url: &str) -> Result<Backend, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            let scheme = url.split(':').next().unwrap_or_default();
            Err(StoreError::UnsupportedUrl {
                scheme: scheme.chars().take(32).collect(),
            })
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// SQLite has one writer at a time; a writer that finds the lock taken
    /// sleeps in SQLite's busy handler (1, 2, 5, ... 100 ms), which under
    /// concurrent requests made tail latency jump (p99 ~90 ms measured with
    /// 4 API clients). This process's writers instead queue here, fairly
    /// and without polling; busy_timeout still covers other processes.
    write_turn: std::sync::Arc<tokio::sync::Mutex<()>>,
}

/// A write transaction, holding this process's write turn on SQLite.
pub(crate) struct WriteTx {
    tx: Transaction<'static, Any>,
    _turn: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl WriteTx {
    pub(crate) async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

impl std::ops::Deref for WriteTx {
    type Target = <Transaction<'static, Any> as std::ops::Deref>::Target;
    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.tx
    }
}

impl Store {
    /// Opens (creating if the URL says so) and migrates the database.
    ///
    /// `sqlite://path?mode=rwc`, `sqlite::memory:` or `postgres://...`.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        let backend = Backend::from_url(url)?;
        sqlx::any::install_default_drivers();

        let mut options = AnyPoolOptions::new();
        options = match backend {
            Backend::Sqlite if is_sqlite_memory(url) => {
                // Each in-memory database lives as long as one of its
                // connections; one connection that never retires keeps it.
                options
                    .max_connections(1)
                    .min_connections(1)
                    .idle_timeout(None)
                    .max_lifetime(None)
            }
            Backend::Sqlite => options.max_connections(8),
            Backend::Postgres => options.max_connections(10),
        };
        if backend == Backend::Sqlite {
            options = options.after_connect(|conn, _meta| {
                Box::pin(async move {
                    // Foreign keys are per connection in SQLite and off by
                    // default; the schema's integrity depends on them.
                    sqlx::query("PRAGMA foreign_keys = ON")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query(&format!("PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}"))
                        .execute(&mut *conn)
                        .await?;
                    // WAL lets readers (list, show) run while a writer commits.
                    sqlx::query("PRAGMA journal_mode = WAL")
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                })
            });
        }

        let pool = options.connect(url).await?;
        match backend {
            Backend::Sqlite => SQLITE_MIGRATIONS.run(&pool).await?,
            Backend::Postgres => POSTGRES_MIGRATIONS.run(&pool).await?,
        }
        Ok(Store {
            pool,
            backend,
            write_turn: std::sync::Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Closes the pool, waiting for connections in use to be returned. SQLite
    /// checkpoints its WAL on the last close.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// A transaction that is going to write.
    ///
    /// SQLite's plain BEGIN takes a read lock first and fails with SQLITE_BUSY
    /// (without waiting) when it later needs to write while another
    /// connection has written; BEGIN IMMEDIATE takes the write lock up front,
    /// where busy_timeout applies. PostgreSQL's row locks make plain BEGIN
    /// right there.
    async fn begin_write(&self) -> Result<WriteTx, StoreError> {
        Ok(match self.backend {
            Backend::Sqlite => {
                let turn = self.write_turn.clone().lock_owned().await;
                WriteTx {
                    tx: self.pool.begin_with("BEGIN IMMEDIATE").await?,
                    _turn: Some(turn),
                }
            }
            Backend::Postgres => WriteTx {
                tx: self.pool.begin().await?,
                _turn: None,
            },
        })
    }

    fn pool(&self) -> &AnyPool {
        &self.pool
    }
}

fn is_sqlite_memory(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

/// Rows of a query that selects `keys` columns joined with `key_versions`
/// columns, ordered by key then version, folded into records.
fn fold_keys(rows: &[AnyRow]) -> Result<Vec<KeyRecord>, StoreError> {
    let mut out: Vec<KeyRecord> = Vec::new();
    for row in rows {
        let mut r = records::RowReader::new(row, "keys", String::new());
        let key = records::key_from_row(&mut r)?;
        let version = records::version_from_row(&mut r, &key.id)?;
        let same_key = out.last().is_some_and(|k| k.id == key.id);
        if !same_key {
            out.push(key);
        }
        if let (Some(v), Some(k)) = (version, out.last_mut()) {
            k.versions.push(v);
        }
    }
    Ok(out)
}
