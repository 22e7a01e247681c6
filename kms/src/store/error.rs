//! Why a store operation failed.

use super::KeyId;
use crate::model::{KeyName, ObjectId, StateError, Tenant};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Only the scheme is kept: a PostgreSQL URL may carry a password.
    #[error("unsupported database URL scheme {scheme:?}; expected sqlite: or postgres://")]
    UnsupportedUrl { scheme: String },

    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),

    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),

    #[error("tenant {tenant} already has a key named {name}")]
    Duplicate { tenant: Tenant, name: KeyName },

    #[error("object id {0} is already bound to another key version")]
    DuplicateObjectId(ObjectId),

    #[error("no key {key_id}{}", version.map(|v| format!(" version {v}")).unwrap_or_default())]
    NotFound { key_id: KeyId, version: Option<u32> },

    /// A compare-and-set lost: someone else changed the row first, or the row
    /// is not in the presence/state the operation requires.
    #[error("key {key_id} version {version}: expected {expected}, found {found}")]
    Conflict {
        key_id: KeyId,
        version: u32,
        expected: String,
        found: String,
    },

    #[error(transparent)]
    IllegalTransition(#[from] StateError),

    #[error("invalid {what}: {why}")]
    Invalid { what: &'static str, why: String },

    /// A value read back from the database does not parse. `row` names the
    /// row (key id, version) so an operator can find and repair it.
    #[error("corrupt value in {table}.{column} ({row}): {why}")]
    Corrupt {
        table: &'static str,
        column: &'static str,
        row: String,
        why: String,
    },
}

impl StoreError {
    pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
        matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
    }

    pub(crate) fn is_foreign_key_violation(e: &sqlx::Error) -> bool {
        matches!(e, sqlx::Error::Database(d) if d.is_foreign_key_violation())
    }
}
