//! Persistent state of the provisioning API: replay protection (REPLAY-1)
//! and the binding of security domains to cards (TSM-DATA-1).
//!
//! This state must hold across restarts and across several KMS nodes on one
//! PostgreSQL database, so every check-and-set is a single SQL statement
//! (`INSERT ... ON CONFLICT`, possibly with a conditional `DO UPDATE`) whose
//! affected-row count is the answer. Nothing is read first and written
//! after: two nodes racing on the same row cannot both win.

use super::records::{format_time, RowReader};
use super::{Store, StoreError};
use sqlx::any::AnyRow;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// How often `bind_sd` retries when the binding it collided with was
/// released before it could be read (PostgreSQL only: SQLite holds the write
/// lock throughout). One retry is nearly always enough.
const BIND_ATTEMPTS: usize = 3;

/// The active binding of one security domain on one secure element to a
/// card. The PAN is held only as an HMAC (for comparison) and a masked form
/// (for people); never in full.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SdBinding {
    pub tenant: String,
    pub se_id: String,
    pub sd_aid: String,
    pub pan_hmac: String,
    pub pan_masked: String,
    pub psn: u8,
    /// RFC 3339; stored (and read back) in UTC.
    pub bound_at: String,
    pub bound_by: String,
}

/// What `bind_sd` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindOutcome {
    /// The security domain was unbound and is now bound as asked.
    New,
    /// It was already bound to the same card (PAN HMAC and PSN); nothing
    /// changed.
    Existing,
    /// It is bound to another card, shown here; nothing changed.
    Other(SdBinding),
}

const BINDING_COLUMNS: &str =
    "tenant, se_id, sd_aid, pan_hmac, pan_masked, psn, bound_at, bound_by";

impl Store {
    /// Records that `principal` used `request_id`. True if this is the first
    /// time, false if the principal has used this id before (a replay).
    pub async fn remember_request(
        &self,
        principal: &str,
        request_id: &str,
        now_unix: i64,
    ) -> Result<bool, StoreError> {
        require("principal", principal)?;
        require("request id", request_id)?;
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "INSERT INTO replay_cache (principal, request_id, seen_at) VALUES ($1, $2, $3) \
             ON CONFLICT (principal, request_id) DO NOTHING",
        )
        .bind(principal)
        .bind(request_id)
        .bind(now_unix)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// Forgets request ids first seen before `cutoff_unix` (outside the
    /// accepted timestamp window, where the timestamp check refuses a
    /// replay on its own). Returns how many were forgotten.
    pub async fn forget_requests_before(&self, cutoff_unix: i64) -> Result<u64, StoreError> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query("DELETE FROM replay_cache WHERE seen_at < $1")
            .bind(cutoff_unix)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    /// The last SCP02 sequence counter recorded for a card, if any.
    pub async fn scp02_counter(&self, tenant: &str, card: &str) -> Result<Option<u16>, StoreError> {
        let Some(row) =
            sqlx::query("SELECT counter FROM scp02_counters WHERE tenant = $1 AND card = $2")
                .bind(tenant)
                .bind(card)
                .fetch_optional(self.pool())
                .await?
        else {
            return Ok(None);
        };
        let r = RowReader::new(&row, "scp02_counters", format!("{tenant}/{card}"));
        let v = r.int("counter")?;
        u16::try_from(v).map(Some).map_err(|_| StoreError::Corrupt {
            table: "scp02_counters",
            column: "counter",
            row: format!("{tenant}/{card}"),
            why: format!("{v} is not a 16-bit counter"),
        })
    }

    /// Records `counter` as the card's last SCP02 sequence counter if the
    /// card has none yet or its last one is strictly lower. False, changing
    /// nothing, otherwise. Of concurrent calls with the same counter exactly
    /// one gets true.
    pub async fn advance_scp02_counter(
        &self,
        tenant: &str,
        card: &str,
        counter: u16,
    ) -> Result<bool, StoreError> {
        require("tenant", tenant)?;
        require("card", card)?;
        let mut tx = self.begin_write().await?;
        // The conflicting row is locked before the WHERE is evaluated against
        // its latest committed value, on both backends.
        let done = sqlx::query(
            "INSERT INTO scp02_counters (tenant, card, counter, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (tenant, card) DO UPDATE \
             SET counter = excluded.counter, updated_at = excluded.updated_at \
             WHERE scp02_counters.counter < excluded.counter",
        )
        .bind(tenant)
        .bind(card)
        .bind(i64::from(counter))
        .bind(format_time(OffsetDateTime::now_utc())?)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records that a card presented `challenge`. True if this is the first
    /// time, false if the card has used it before (a replay).
    pub async fn note_card_challenge(
        &self,
        tenant: &str,
        card: &str,
        challenge: &str,
    ) -> Result<bool, StoreError> {
        require("tenant", tenant)?;
        require("card", card)?;
        require("challenge", challenge)?;
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "INSERT INTO card_challenges (tenant, card, challenge, seen_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (tenant, card, challenge) DO NOTHING",
        )
        .bind(tenant)
        .bind(card)
        .bind(challenge)
        .bind(format_time(OffsetDateTime::now_utc())?)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// Binds a security domain to a card unless it is bound already. See
    /// [`BindOutcome`]; only `New` changes anything. `bound_at` must be
    /// RFC 3339 and is stored in UTC.
    pub async fn bind_sd(&self, b: &SdBinding) -> Result<BindOutcome, StoreError> {
        let bound_at = check_binding(b)?;
        let mut tx = self.begin_write().await?;
        for _ in 0..BIND_ATTEMPTS {
            let done = sqlx::query(
                "INSERT INTO sd_bindings \
                 (tenant, se_id, sd_aid, pan_hmac, pan_masked, psn, bound_at, bound_by) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (tenant, se_id, sd_aid) DO NOTHING",
            )
            .bind(&b.tenant)
            .bind(&b.se_id)
            .bind(&b.sd_aid)
            .bind(&b.pan_hmac)
            .bind(&b.pan_masked)
            .bind(i64::from(b.psn))
            .bind(&bound_at)
            .bind(&b.bound_by)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 1 {
                tx.commit().await?;
                return Ok(BindOutcome::New);
            }
            // Under PostgreSQL's READ COMMITTED this statement sees the
            // committed row the insert collided with, unless it has been
            // released meanwhile; then the insert is tried again.
            let existing = sqlx::query(&format!(
                "SELECT {BINDING_COLUMNS} FROM sd_bindings \
                 WHERE tenant = $1 AND se_id = $2 AND sd_aid = $3"
            ))
            .bind(&b.tenant)
            .bind(&b.se_id)
            .bind(&b.sd_aid)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = existing {
                let existing = binding_from_row(&row)?;
                tx.commit().await?;
                return Ok(
                    if existing.pan_hmac == b.pan_hmac && existing.psn == b.psn {
                        BindOutcome::Existing
                    } else {
                        BindOutcome::Other(existing)
                    },
                );
            }
        }
        Err(StoreError::Invalid {
            what: "sd binding",
            why: format!(
                "{}/{}/{} was bound and released concurrently {BIND_ATTEMPTS} times; try again",
                b.tenant, b.se_id, b.sd_aid
            ),
        })
    }

    /// The active binding of a security domain, if any.
    pub async fn sd_binding(
        &self,
        tenant: &str,
        se_id: &str,
        sd_aid: &str,
    ) -> Result<Option<SdBinding>, StoreError> {
        sqlx::query(&format!(
            "SELECT {BINDING_COLUMNS} FROM sd_bindings \
             WHERE tenant = $1 AND se_id = $2 AND sd_aid = $3"
        ))
        .bind(tenant)
        .bind(se_id)
        .bind(sd_aid)
        .fetch_optional(self.pool())
        .await?
        .as_ref()
        .map(binding_from_row)
        .transpose()
    }

    /// Releases a security domain: deletes its binding and returns it, or
    /// None if it was not bound. Of concurrent releases one gets the binding.
    pub async fn release_sd(
        &self,
        tenant: &str,
        se_id: &str,
        sd_aid: &str,
    ) -> Result<Option<SdBinding>, StoreError> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(&format!(
            "DELETE FROM sd_bindings WHERE tenant = $1 AND se_id = $2 AND sd_aid = $3 \
             RETURNING {BINDING_COLUMNS}"
        ))
        .bind(tenant)
        .bind(se_id)
        .bind(sd_aid)
        .fetch_optional(&mut *tx)
        .await?;
        let released = row.as_ref().map(binding_from_row).transpose()?;
        tx.commit().await?;
        Ok(released)
    }

    /// A tenant's active bindings, ordered by secure element then SD AID.
    pub async fn sd_bindings(&self, tenant: &str) -> Result<Vec<SdBinding>, StoreError> {
        sqlx::query(&format!(
            "SELECT {BINDING_COLUMNS} FROM sd_bindings WHERE tenant = $1 \
             ORDER BY se_id, sd_aid"
        ))
        .bind(tenant)
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(binding_from_row)
        .collect()
    }
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

/// Checks a binding before it is written; returns `bound_at` in UTC.
///
/// A value that looks like a full PAN (12 to 19 digits, separators aside) is
/// refused in the PAN columns, so a PAN passed by mistake stays out of the
/// database. The value itself is never echoed.
fn check_binding(b: &SdBinding) -> Result<String, StoreError> {
    require("tenant", &b.tenant)?;
    require("se_id", &b.se_id)?;
    require("sd_aid", &b.sd_aid)?;
    require("pan_hmac", &b.pan_hmac)?;
    require("pan_masked", &b.pan_masked)?;
    require("bound_by", &b.bound_by)?;
    for (what, value) in [("pan_hmac", &b.pan_hmac), ("pan_masked", &b.pan_masked)] {
        if looks_like_full_pan(value) {
            return Err(StoreError::Invalid {
                what,
                why: "looks like a full PAN; only its HMAC and a masked form are stored".to_owned(),
            });
        }
    }
    let at = OffsetDateTime::parse(&b.bound_at, &Rfc3339).map_err(|e| StoreError::Invalid {
        what: "bound_at",
        why: e.to_string(),
    })?;
    format_time(at)
}

fn looks_like_full_pan(s: &str) -> bool {
    let mut digits = 0usize;
    for c in s.chars() {
        match c {
            '0'..='9' => digits += 1,
            ' ' | '-' => {}
            _ => return false,
        }
    }
    (12..=19).contains(&digits)
}

fn binding_from_row(row: &AnyRow) -> Result<SdBinding, StoreError> {
    let mut r = RowReader::new(row, "sd_bindings", String::new());
    let tenant = r.text("tenant")?;
    let se_id = r.text("se_id")?;
    let sd_aid = r.text("sd_aid")?;
    let ident = format!("{tenant}/{se_id}/{sd_aid}");
    r.set_ident("sd_bindings", ident.clone());
    let psn = r.int("psn")?;
    let psn = u8::try_from(psn).map_err(|_| StoreError::Corrupt {
        table: "sd_bindings",
        column: "psn",
        row: ident,
        why: format!("{psn} is not a PSN (0 to 255)"),
    })?;
    Ok(SdBinding {
        tenant,
        se_id,
        sd_aid,
        pan_hmac: r.text("pan_hmac")?,
        pan_masked: r.text("pan_masked")?,
        psn,
        bound_at: r.text("bound_at")?,
        bound_by: r.text("bound_by")?,
    })
}
