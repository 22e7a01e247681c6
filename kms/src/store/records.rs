//! What the store hands out, and how rows become records.
//!
//! Every value read back is parsed through the model's validating
//! constructors: a row edited by hand or damaged on disk becomes
//! `StoreError::Corrupt`, never a panic and never an unchecked string that
//! reaches the HSM layer.

use super::StoreError;
use crate::model::{Algorithm, KeyName, KeyState, KeyUsage, ObjectId, Tenant};
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;
use std::fmt;
use std::str::FromStr;
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

/// A key's identity in the store, independent of its (tenant, name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub uuid::Uuid);

impl KeyId {
    pub fn new_random() -> Self {
        Self(uuid::Uuid::new_v4())
    }

    pub fn parse(s: &str) -> Result<Self, uuid::Error> {
        uuid::Uuid::parse_str(s).map(Self)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Hyphenated lower case is what the database holds; keep one spelling.
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl Serialize for KeyId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Whether a version's token object exists. Rows are written before the HSM
/// object is created and kept after it is destroyed, so that a crash at any
/// point leaves a row that start-up reconciliation can finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Presence {
    /// Row written, HSM object not yet confirmed.
    Pending,
    /// HSM object confirmed.
    Present,
    /// Destruction decided, object removal in progress.
    Destroying,
    /// Object gone; the row stays for ever with its KCV.
    Tombstone,
}

impl Presence {
    pub const ALL: [Presence; 4] = [
        Presence::Pending,
        Presence::Present,
        Presence::Destroying,
        Presence::Tombstone,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Presence::Pending => "pending",
            Presence::Present => "present",
            Presence::Destroying => "destroying",
            Presence::Tombstone => "tombstone",
        }
    }
}

impl fmt::Display for Presence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown presence {0:?}; expected pending, present, destroying or tombstone")]
pub struct PresenceError(String);

impl FromStr for Presence {
    type Err = PresenceError;
    fn from_str(s: &str) -> Result<Self, PresenceError> {
        Presence::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| PresenceError(s.chars().take(64).collect()))
    }
}

/// A key to create. Its first version comes separately as a [`NewVersion`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKey {
    pub tenant: Tenant,
    pub name: KeyName,
    pub algorithm: Algorithm,
    pub usage: KeyUsage,
    pub exportable: bool,
}

/// A version to record before its HSM object is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewVersion {
    pub object_id: ObjectId,
    pub state: KeyState,
    pub activate_at: Option<OffsetDateTime>,
    pub expire_at: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyRecord {
    pub id: KeyId,
    pub tenant: Tenant,
    pub name: KeyName,
    pub algorithm: Algorithm,
    pub usage: KeyUsage,
    pub exportable: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub created_by: String,
    /// Ascending by version number.
    pub versions: Vec<VersionRecord>,
}

impl KeyRecord {
    /// The highest version whose object has not been destroyed.
    pub fn current(&self) -> Option<&VersionRecord> {
        self.versions
            .iter()
            .rev()
            .find(|v| v.presence != Presence::Tombstone)
    }

    pub fn version(&self, version: u32) -> Option<&VersionRecord> {
        self.versions.iter().find(|v| v.version == version)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionRecord {
    pub version: u32,
    #[serde(serialize_with = "serialize_display")]
    pub object_id: ObjectId,
    pub state: KeyState,
    /// Upper-case hex check value, known once the object is confirmed.
    pub kcv: Option<String>,
    pub presence: Presence,
    #[serde(with = "time::serde::rfc3339::option")]
    pub activate_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expire_at: Option<OffsetDateTime>,
    pub trusted: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventRecord {
    pub id: i64,
    pub key_id: KeyId,
    pub version: Option<u32>,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub actor: String,
    pub action: String,
    pub from_state: Option<KeyState>,
    pub to_state: Option<KeyState>,
    pub reason: Option<String>,
}

fn serialize_display<T: fmt::Display, S: serde::Serializer>(
    v: &T,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// The one spelling of a timestamp in the database: RFC 3339 in UTC.
pub(crate) fn format_time(t: OffsetDateTime) -> Result<String, StoreError> {
    t.to_offset(UtcOffset::UTC)
        .format(&Rfc3339)
        .map_err(|e| StoreError::Invalid {
            what: "timestamp",
            why: e.to_string(),
        })
}

pub(crate) fn format_opt_time(t: Option<OffsetDateTime>) -> Result<Option<String>, StoreError> {
    t.map(format_time).transpose()
}

/// A KCV is at most 5 bytes; refusing anything longer keeps a key value
/// passed by mistake out of the database.
pub(crate) fn check_kcv(kcv: &str) -> Result<String, String> {
    if !(2..=10).contains(&kcv.len()) {
        // The length only: the value might be a key handed in by mistake.
        return Err(format!(
            "expected 2 to 10 hex digits, got {} characters",
            kcv.len()
        ));
    }
    if !kcv.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("expected hex digits only".to_owned());
    }
    Ok(kcv.to_ascii_uppercase())
}

fn u32_version(v: i64) -> Option<u32> {
    u32::try_from(v).ok().filter(|v| *v >= 1)
}

/// Reads columns of one row, turning every failure into `Corrupt` with the
/// row's identity attached.
pub(crate) struct RowReader<'r> {
    row: &'r AnyRow,
    table: &'static str,
    ident: String,
}

impl<'r> RowReader<'r> {
    pub(crate) fn new(row: &'r AnyRow, table: &'static str, ident: String) -> Self {
        Self { row, table, ident }
    }

    pub(crate) fn set_ident(&mut self, table: &'static str, ident: String) {
        self.table = table;
        self.ident = ident;
    }

    fn corrupt(&self, column: &'static str, why: impl fmt::Display) -> StoreError {
        // Joined queries alias columns as k_*/v_*; report the real name.
        let column = column
            .strip_prefix("k_")
            .or_else(|| column.strip_prefix("v_"))
            .unwrap_or(column);
        StoreError::Corrupt {
            table: self.table,
            column,
            row: self.ident.clone(),
            why: why.to_string(),
        }
    }

    pub(crate) fn opt_text(&self, column: &'static str) -> Result<Option<String>, StoreError> {
        self.row
            .try_get::<Option<String>, _>(column)
            .map_err(|e| self.corrupt(column, e))
    }

    pub(crate) fn text(&self, column: &'static str) -> Result<String, StoreError> {
        self.opt_text(column)?
            .ok_or_else(|| self.corrupt(column, "unexpected NULL"))
    }

    pub(crate) fn opt_int(&self, column: &'static str) -> Result<Option<i64>, StoreError> {
        self.row
            .try_get::<Option<i64>, _>(column)
            .map_err(|e| self.corrupt(column, e))
    }

    pub(crate) fn int(&self, column: &'static str) -> Result<i64, StoreError> {
        self.opt_int(column)?
            .ok_or_else(|| self.corrupt(column, "unexpected NULL"))
    }

    /// PostgreSQL has BOOLEAN; SQLite stores 0/1 and the Any driver hands
    /// those back as integers.
    pub(crate) fn flag(&self, column: &'static str) -> Result<bool, StoreError> {
        if let Ok(b) = self.row.try_get::<bool, _>(column) {
            return Ok(b);
        }
        match self.int(column)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(self.corrupt(column, format!("{other} is not a boolean"))),
        }
    }

    pub(crate) fn parsed<T>(&self, column: &'static str) -> Result<T, StoreError>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        let s = self.text(column)?;
        s.parse().map_err(|e| self.corrupt(column, e))
    }

    pub(crate) fn opt_parsed<T>(&self, column: &'static str) -> Result<Option<T>, StoreError>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        self.opt_text(column)?
            .map(|s| s.parse().map_err(|e| self.corrupt(column, e)))
            .transpose()
    }

    pub(crate) fn with<T, E: fmt::Display>(
        &self,
        column: &'static str,
        f: impl FnOnce(&str) -> Result<T, E>,
    ) -> Result<T, StoreError> {
        let s = self.text(column)?;
        f(&s).map_err(|e| self.corrupt(column, e))
    }

    pub(crate) fn time(&self, column: &'static str) -> Result<OffsetDateTime, StoreError> {
        self.with(column, |s| OffsetDateTime::parse(s, &Rfc3339))
    }

    pub(crate) fn opt_time(
        &self,
        column: &'static str,
    ) -> Result<Option<OffsetDateTime>, StoreError> {
        self.opt_text(column)?
            .map(|s| OffsetDateTime::parse(&s, &Rfc3339).map_err(|e| self.corrupt(column, e)))
            .transpose()
    }

    pub(crate) fn version(&self, column: &'static str) -> Result<u32, StoreError> {
        let v = self.int(column)?;
        u32_version(v).ok_or_else(|| self.corrupt(column, format!("{v} is not a version number")))
    }

    pub(crate) fn opt_version(&self, column: &'static str) -> Result<Option<u32>, StoreError> {
        self.opt_int(column)?
            .map(|v| {
                u32_version(v)
                    .ok_or_else(|| self.corrupt(column, format!("{v} is not a version number")))
            })
            .transpose()
    }
}

/// Columns of `keys` as selected by [`super::keys::KEY_COLUMNS`].
pub(crate) fn key_from_row(r: &mut RowReader<'_>) -> Result<KeyRecord, StoreError> {
    let raw_id = r.text("k_id")?;
    r.set_ident("keys", format!("id {raw_id}"));
    let id = r.with("k_id", KeyId::parse)?;
    Ok(KeyRecord {
        id,
        tenant: r.with("k_tenant", Tenant::parse)?,
        name: r.with("k_name", KeyName::parse)?,
        algorithm: r.parsed("k_algorithm")?,
        usage: r.parsed("k_usage")?,
        exportable: r.flag("k_exportable")?,
        created_at: r.time("k_created_at")?,
        created_by: r.text("k_created_by")?,
        versions: Vec::new(),
    })
}

/// Columns of `key_versions` as selected by [`super::keys::VERSION_COLUMNS`];
/// `None` when a LEFT JOIN found no version.
pub(crate) fn version_from_row(
    r: &mut RowReader<'_>,
    key_id: &KeyId,
) -> Result<Option<VersionRecord>, StoreError> {
    let Some(raw_version) = r.opt_int("v_version")? else {
        return Ok(None);
    };
    r.set_ident(
        "key_versions",
        format!("key {key_id} version {raw_version}"),
    );
    let kcv = r
        .opt_text("v_kcv")?
        .map(|k| {
            check_kcv(&k).map_err(|why| StoreError::Corrupt {
                table: "key_versions",
                column: "kcv",
                row: format!("key {key_id} version {raw_version}"),
                why,
            })
        })
        .transpose()?;
    Ok(Some(VersionRecord {
        version: r.version("v_version")?,
        object_id: r.with("v_object_id", ObjectId::parse_hex)?,
        state: r.parsed("v_state")?,
        kcv,
        presence: r.parsed("v_presence")?,
        activate_at: r.opt_time("v_activate_at")?,
        expire_at: r.opt_time("v_expire_at")?,
        trusted: r.flag("v_trusted")?,
        created_at: r.time("v_created_at")?,
        updated_at: r.time("v_updated_at")?,
    }))
}

pub(crate) fn event_from_row(row: &AnyRow) -> Result<EventRecord, StoreError> {
    let mut r = RowReader::new(row, "key_events", String::new());
    let id = r.int("id")?;
    r.set_ident("key_events", format!("id {id}"));
    Ok(EventRecord {
        id,
        key_id: r.with("key_id", KeyId::parse)?,
        version: r.opt_version("version")?,
        at: r.time("at")?,
        actor: r.text("actor")?,
        action: r.text("action")?,
        from_state: r.opt_parsed("from_state")?,
        to_state: r.opt_parsed("to_state")?,
        reason: r.opt_text("reason")?,
    })
}
