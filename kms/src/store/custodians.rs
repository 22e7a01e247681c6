//! The people of key ceremonies: enrolment, PIN hashes, failed-login
//! counting and locking (AUTH-PIN-LOCK), removal.
//!
//! Every check-and-set is one SQL statement whose affected rows (or
//! `RETURNING` row) is the answer, as in `provisioning.rs`: a failed login
//! increments the counter and, at the [`MAX_FAILED_LOGINS`]th consecutive
//! failure, locks, in one `UPDATE` that only matches an unlocked row; so
//! concurrent attempts on one node or several can neither count past the
//! limit nor lock twice. A success resets the counter only if the row is
//! still unlocked and still has the hash that was verified. The lock lives
//! in the row: it survives restarts and holds on every node until a
//! security officer clears it.
//!
//! No PIN reaches this module: only [`PinHash`] values, which the schema
//! also checks (`pin_hash` must start `$argon2id$`).

use super::approvals::{StateFact, FIRST_PERSON, FOUNDING_CLOSED};
use super::records::{format_time, RowReader};
use super::{Backend, Store, StoreError};
use crate::crypto::PinHash;
use crate::model::{CustodianName, CustodianRole, LoginWindow};
use sqlx::any::AnyRow;
use time::OffsetDateTime;

/// AUTH-PIN-LOCK: this many consecutive failed logins lock a person.
pub const MAX_FAILED_LOGINS: u32 = 5;

const COLUMNS: &str = "name, role, cert_sha256, pin_hash, must_change_pin, failed_attempts, \
     locked_at, locked_reason, login_window, idle_timeout_seconds, enrolled_at, enrolled_by, \
     bootstrap, enrolment_request, pin_changed_at, last_login_at, removed_at, removed_by";

/// A person to enrol. The PIN given at enrolment is already hashed, and
/// must be changed at first use.
#[derive(Debug, Clone)]
pub struct NewCustodian {
    pub name: CustodianName,
    pub role: CustodianRole,
    /// 64 upper-case hex digits (`model::parse_cert_sha256`).
    pub cert_sha256: Option<String>,
    pub pin_hash: PinHash,
    pub login_window: Option<LoginWindow>,
    pub idle_timeout_seconds: u32,
    pub enrolled_by: String,
    /// The dual-control request that enrolled them; None for the bootstrap.
    pub enrolment_request: Option<String>,
}

/// An enrolled (or removed) person, as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CustodianRecord {
    pub name: CustodianName,
    pub role: CustodianRole,
    pub cert_sha256: Option<String>,
    /// Never serialized, never shown (its `Debug` has the parameters only).
    #[serde(skip)]
    pub(crate) pin_hash: PinHash,
    pub must_change_pin: bool,
    pub failed_attempts: u32,
    #[serde(with = "time::serde::rfc3339::option")]
    pub locked_at: Option<OffsetDateTime>,
    pub locked_reason: Option<String>,
    pub login_window: Option<LoginWindow>,
    pub idle_timeout_seconds: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub enrolled_at: OffsetDateTime,
    pub enrolled_by: String,
    pub bootstrap: bool,
    pub enrolment_request: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub pin_changed_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_login_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub removed_at: Option<OffsetDateTime>,
    pub removed_by: Option<String>,
}

impl CustodianRecord {
    /// The stored Argon2id hash, for verification (and the compare-and-set
    /// of `record_successful_login` and `change_custodian_pin`).
    pub fn pin_hash(&self) -> &PinHash {
        &self.pin_hash
    }

    pub fn is_locked(&self) -> bool {
        self.locked_at.is_some()
    }

    pub fn is_removed(&self) -> bool {
        self.removed_at.is_some()
    }
}

/// What `record_failed_login` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailedLogin {
    /// Counted; still below the limit.
    Counted { failed_attempts: u32 },
    /// Counted, and this failure locked the person.
    Locked { failed_attempts: u32 },
    /// Nothing changed: nobody by that name, removed, or already locked.
    NotCounted,
}

/// What `remove_custodian` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    Removed(Box<CustodianRecord>),
    NotFound,
    AlreadyRemoved,
    /// Refused: they are the last security officer who is neither removed
    /// nor locked; without one nobody could re-enable a locked person.
    LastOfficer,
}

impl Store {
    /// The bootstrap: enrols `new` only if nobody was ever enrolled, in one
    /// transaction that also writes the `first-person` fact, whose primary
    /// key admits one; so of concurrent bootstraps (several nodes) one
    /// wins. None, changing nothing, if someone is enrolled already.
    pub async fn bootstrap_custodian(
        &self,
        new: &NewCustodian,
        now: OffsetDateTime,
    ) -> Result<Option<CustodianRecord>, StoreError> {
        if new.enrolment_request.is_some() {
            return Err(StoreError::Invalid {
                what: "custodian",
                why: "a bootstrap enrolment has no request".into(),
            });
        }
        let mut tx = self.begin_write().await?;
        let first = sqlx::query(
            "INSERT INTO kms_state (name, fact, set_at, set_by) VALUES ($1, $2, $3, $4)",
        )
        .bind(FIRST_PERSON)
        .bind(new.name.as_str())
        .bind(format_time(now)?)
        .bind(new.enrolled_by.as_str())
        .execute(&mut *tx)
        .await;
        match first {
            Ok(_) => {}
            Err(e) if StoreError::is_unique_violation(&e) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let done = bind_new(
            sqlx::query(
                "INSERT INTO custodians (name, role, cert_sha256, pin_hash, must_change_pin, \
                 failed_attempts, login_window, idle_timeout_seconds, enrolled_at, enrolled_by, \
                 bootstrap, enrolment_request) \
                 SELECT $1, $2, $3, $4, $5, 0, $6, $7, $8, $9, $10, $11 \
                 WHERE NOT EXISTS (SELECT 1 FROM custodians)",
            ),
            new,
            now,
        )?
        .execute(&mut *tx)
        .await;
        match done {
            Ok(d) if d.rows_affected() == 1 => {}
            Ok(_) => return Ok(None),
            Err(e) if StoreError::is_unique_violation(&e) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        tx.commit().await?;
        self.custodian(new.name.as_str()).await
    }

    /// The founding (issue 5): a security officer enrols `new` alone, only
    /// while the founding is open, checked in the same transaction as the
    /// insert. Refused if the name or the certificate was ever enrolled, or
    /// the founding is closed.
    pub async fn found_custodian(
        &self,
        new: &NewCustodian,
        now: OffsetDateTime,
    ) -> Result<CustodianRecord, StoreError> {
        if new.enrolment_request.is_some() {
            return Err(StoreError::Invalid {
                what: "custodian",
                why: "a founding enrolment has no request".into(),
            });
        }
        let mut tx = self.begin_write().await?;
        let closed = sqlx::query("SELECT 1 AS one FROM kms_state WHERE name = $1")
            .bind(FOUNDING_CLOSED)
            .fetch_optional(&mut *tx)
            .await?;
        if closed.is_some() {
            return Err(StoreError::Invalid {
                what: "custodian",
                why: "the founding is closed; an enrolment is a dual-controlled request".into(),
            });
        }
        self.insert_custodian(tx, new, now).await
    }

    /// Whether the founding was closed, and by whom.
    pub async fn founding_closed(&self) -> Result<Option<StateFact>, StoreError> {
        self.state_fact(FOUNDING_CLOSED).await
    }

    /// Close the founding for good. False if it was closed already.
    pub async fn close_founding(&self, by: &str, now: OffsetDateTime) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "INSERT INTO kms_state (name, fact, set_at, set_by) \
             SELECT $1, 'closed', $2, $3 WHERE NOT EXISTS (SELECT 1 FROM kms_state WHERE name = $1)",
        )
        .bind(FOUNDING_CLOSED)
        .bind(format_time(now)?)
        .bind(by)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Enrols `new` as approved by its dual-control request. Refused if the
    /// name or the certificate was ever enrolled.
    pub async fn enroll_custodian(
        &self,
        new: &NewCustodian,
        now: OffsetDateTime,
    ) -> Result<CustodianRecord, StoreError> {
        if new.enrolment_request.is_none() {
            return Err(StoreError::Invalid {
                what: "custodian",
                why: "only the bootstrap enrolment has no request".into(),
            });
        }
        let tx = self.begin_write().await?;
        self.insert_custodian(tx, new, now).await
    }

    async fn insert_custodian(
        &self,
        mut tx: super::WriteTx,
        new: &NewCustodian,
        now: OffsetDateTime,
    ) -> Result<CustodianRecord, StoreError> {
        let taken = sqlx::query(
            "SELECT name FROM custodians WHERE name = $1 OR (cert_sha256 IS NOT NULL AND cert_sha256 = $2)",
        )
        .bind(new.name.as_str())
        .bind(
            new.cert_sha256
                .as_deref()
                .map(str::to_ascii_uppercase)
                .unwrap_or_default(),
        )
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = taken {
            let r = RowReader::new(&row, "custodians", String::new());
            let holder = r.text("name")?;
            return Err(duplicate(new, &holder));
        }
        let done = bind_new(
            sqlx::query(
                "INSERT INTO custodians (name, role, cert_sha256, pin_hash, must_change_pin, \
                 failed_attempts, login_window, idle_timeout_seconds, enrolled_at, enrolled_by, \
                 bootstrap, enrolment_request) \
                 VALUES ($1, $2, $3, $4, $5, 0, $6, $7, $8, $9, $10, $11)",
            ),
            new,
            now,
        )?
        .execute(&mut *tx)
        .await;
        if let Err(e) = done {
            return Err(if StoreError::is_unique_violation(&e) {
                StoreError::Invalid {
                    what: "custodian",
                    why: format!(
                        "{} or their certificate was enrolled concurrently",
                        new.name
                    ),
                }
            } else {
                e.into()
            });
        }
        tx.commit().await?;
        self.custodian(new.name.as_str())
            .await?
            .ok_or_else(|| StoreError::Invalid {
                what: "custodian",
                why: format!("{} vanished after enrolment", new.name),
            })
    }

    /// A person by name, removed or not.
    pub async fn custodian(&self, name: &str) -> Result<Option<CustodianRecord>, StoreError> {
        sqlx::query(&format!("SELECT {COLUMNS} FROM custodians WHERE name = $1"))
            .bind(name)
            .fetch_optional(self.pool())
            .await?
            .as_ref()
            .map(custodian_from_row)
            .transpose()
    }

    /// The person a client certificate is bound to, removed or not.
    pub async fn custodian_by_cert(
        &self,
        cert_sha256: &str,
    ) -> Result<Option<CustodianRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM custodians WHERE cert_sha256 = $1"
        ))
        .bind(cert_sha256.to_ascii_uppercase())
        .fetch_optional(self.pool())
        .await?
        .as_ref()
        .map(custodian_from_row)
        .transpose()
    }

    /// Everyone ever enrolled, by name.
    pub async fn custodians(&self) -> Result<Vec<CustodianRecord>, StoreError> {
        sqlx::query(&format!("SELECT {COLUMNS} FROM custodians ORDER BY name"))
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(custodian_from_row)
            .collect()
    }

    /// AUTH-PIN-LOCK: counts one failed login and locks at the
    /// [`MAX_FAILED_LOGINS`]th consecutive one, in one statement that only
    /// matches an unlocked, enrolled person.
    pub async fn record_failed_login(
        &self,
        name: &str,
        now: OffsetDateTime,
    ) -> Result<FailedLogin, StoreError> {
        let mut tx = self.begin_write().await?;
        // The right-hand sides see the row as it was before this update.
        let row = sqlx::query(
            "UPDATE custodians SET failed_attempts = failed_attempts + 1, \
             locked_at = CASE WHEN failed_attempts + 1 >= $2 THEN $3 ELSE NULL END, \
             locked_reason = CASE WHEN failed_attempts + 1 >= $2 THEN $4 ELSE NULL END \
             WHERE name = $1 AND removed_at IS NULL AND locked_at IS NULL \
             RETURNING failed_attempts, locked_at",
        )
        .bind(name)
        .bind(i64::from(MAX_FAILED_LOGINS))
        .bind(format_time(now)?)
        .bind(format!("{MAX_FAILED_LOGINS} consecutive failed logins"))
        .fetch_optional(&mut *tx)
        .await?;
        let outcome = match &row {
            None => FailedLogin::NotCounted,
            Some(row) => {
                let r = RowReader::new(row, "custodians", name.to_owned());
                let failed_attempts = count(&r, name)?;
                if r.opt_text("locked_at")?.is_some() {
                    FailedLogin::Locked { failed_attempts }
                } else {
                    FailedLogin::Counted { failed_attempts }
                }
            }
        };
        tx.commit().await?;
        Ok(outcome)
    }

    /// A successful login: resets the failure counter. False, changing
    /// nothing, if meanwhile the person was locked or removed or their PIN
    /// changed (`verified` is the hash the PIN was checked against).
    pub async fn record_successful_login(
        &self,
        name: &str,
        verified: &PinHash,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE custodians SET failed_attempts = 0, last_login_at = $2 \
             WHERE name = $1 AND removed_at IS NULL AND locked_at IS NULL AND pin_hash = $3",
        )
        .bind(name)
        .bind(format_time(now)?)
        .bind(verified.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// Replaces the PIN hash `old` by `new`, clears `must_change_pin` and the
    /// failure counter. False, changing nothing, if the person is locked,
    /// removed, or no longer has `old`.
    pub async fn change_custodian_pin(
        &self,
        name: &str,
        old: &PinHash,
        new: &PinHash,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE custodians SET pin_hash = $2, must_change_pin = $3, failed_attempts = 0, \
             pin_changed_at = $4, last_login_at = $4 \
             WHERE name = $1 AND removed_at IS NULL AND locked_at IS NULL AND pin_hash = $5",
        )
        .bind(name)
        .bind(new.as_str())
        .bind(false)
        .bind(format_time(now)?)
        .bind(old.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// Re-enables a locked person (the service checks that a security
    /// officer asks): clears the lock and the failure counter. False,
    /// changing nothing, if they are not locked or are removed.
    pub async fn unlock_custodian(&self, name: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE custodians SET locked_at = NULL, locked_reason = NULL, failed_attempts = 0 \
             WHERE name = $1 AND removed_at IS NULL AND locked_at IS NOT NULL",
        )
        .bind(name)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// Removes a person (the row stays, with `removed_at`), unless they are
    /// the last security officer able to act.
    pub async fn remove_custodian(
        &self,
        name: &str,
        by: &str,
        now: OffsetDateTime,
    ) -> Result<Removal, StoreError> {
        let mut tx = self.begin_write().await?;
        if self.backend() == Backend::Postgres {
            // Two removals of the last two officers must not both see the
            // other one still there: take the officers' rows first.
            sqlx::query(
                "SELECT name FROM custodians \
                 WHERE role = 'security-officer' AND removed_at IS NULL FOR UPDATE",
            )
            .fetch_all(&mut *tx)
            .await?;
        }
        let done = sqlx::query(
            "UPDATE custodians SET removed_at = $2, removed_by = $3 \
             WHERE name = $1 AND removed_at IS NULL AND (role <> 'security-officer' OR EXISTS \
             (SELECT 1 FROM custodians o WHERE o.role = 'security-officer' \
              AND o.removed_at IS NULL AND o.locked_at IS NULL AND o.name <> $1))",
        )
        .bind(name)
        .bind(format_time(now)?)
        .bind(by)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        let now_row = self.custodian(name).await?;
        Ok(match now_row {
            None => Removal::NotFound,
            Some(r) if done.rows_affected() == 1 => Removal::Removed(Box::new(r)),
            Some(r) if r.is_removed() => Removal::AlreadyRemoved,
            Some(_) => Removal::LastOfficer,
        })
    }
}

fn duplicate(new: &NewCustodian, holder: &str) -> StoreError {
    StoreError::Invalid {
        what: "custodian",
        why: if holder == new.name.as_str() {
            format!("{} is already enrolled (names are never reused)", new.name)
        } else {
            format!("the certificate is already bound to {holder}")
        },
    }
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

fn bind_new<'q>(
    q: AnyQuery<'q>,
    new: &'q NewCustodian,
    now: OffsetDateTime,
) -> Result<AnyQuery<'q>, StoreError> {
    if new.idle_timeout_seconds == 0 {
        return Err(StoreError::Invalid {
            what: "idle timeout",
            why: "must be at least one second".into(),
        });
    }
    if let Some(c) = &new.cert_sha256 {
        if c.len() != 64 || !c.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(StoreError::Invalid {
                what: "cert_sha256",
                why: "expected 64 hex digits".into(),
            });
        }
    }
    require("enrolled_by", &new.enrolled_by)?;
    Ok(q.bind(new.name.as_str())
        .bind(new.role.as_str())
        .bind(new.cert_sha256.as_ref().map(|c| c.to_ascii_uppercase()))
        .bind(new.pin_hash.as_str())
        .bind(true)
        .bind(new.login_window.as_ref().map(ToString::to_string))
        .bind(i64::from(new.idle_timeout_seconds))
        .bind(format_time(now)?)
        .bind(new.enrolled_by.as_str())
        .bind(new.enrolment_request.is_none())
        .bind(new.enrolment_request.as_deref()))
}

fn require(what: &'static str, value: &str) -> Result<(), StoreError> {
    if value.is_empty() {
        return Err(StoreError::Invalid {
            what,
            why: "must not be empty".to_owned(),
        });
    }
    Ok(())
}

fn count(r: &RowReader<'_>, name: &str) -> Result<u32, StoreError> {
    let v = r.int("failed_attempts")?;
    u32::try_from(v).map_err(|_| StoreError::Corrupt {
        table: "custodians",
        column: "failed_attempts",
        row: name.to_owned(),
        why: format!("{v} is not a count"),
    })
}

fn custodian_from_row(row: &AnyRow) -> Result<CustodianRecord, StoreError> {
    let mut r = RowReader::new(row, "custodians", String::new());
    let raw_name = r.text("name")?;
    r.set_ident("custodians", raw_name.clone());
    let corrupt = |column: &'static str, why: String| StoreError::Corrupt {
        table: "custodians",
        column,
        row: raw_name.clone(),
        why,
    };
    let failed_attempts = r.int("failed_attempts")?;
    let idle = r.int("idle_timeout_seconds")?;
    Ok(CustodianRecord {
        name: r.with("name", CustodianName::parse)?,
        role: r.parsed("role")?,
        cert_sha256: r.opt_text("cert_sha256")?,
        pin_hash: r.with("pin_hash", PinHash::parse)?,
        must_change_pin: r.flag("must_change_pin")?,
        failed_attempts: u32::try_from(failed_attempts).map_err(|_| {
            corrupt(
                "failed_attempts",
                format!("{failed_attempts} is not a count"),
            )
        })?,
        locked_at: r.opt_time("locked_at")?,
        locked_reason: r.opt_text("locked_reason")?,
        login_window: r
            .opt_text("login_window")?
            .map(|w| LoginWindow::parse(&w).map_err(|e| corrupt("login_window", e.to_string())))
            .transpose()?,
        idle_timeout_seconds: u32::try_from(idle)
            .ok()
            .filter(|s| *s > 0)
            .ok_or_else(|| corrupt("idle_timeout_seconds", format!("{idle} is not a timeout")))?,
        enrolled_at: r.time("enrolled_at")?,
        enrolled_by: r.text("enrolled_by")?,
        bootstrap: r.flag("bootstrap")?,
        enrolment_request: r.opt_text("enrolment_request")?,
        pin_changed_at: r.opt_time("pin_changed_at")?,
        last_login_at: r.opt_time("last_login_at")?,
        removed_at: r.opt_time("removed_at")?,
        removed_by: r.opt_text("removed_by")?,
    })
}
