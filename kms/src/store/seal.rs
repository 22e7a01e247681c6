//! The seal's configuration (issue 5, `crate::seal`): per generation, M, N,
//! the split id, the check value of the unseal secret and each share's
//! index and check value. Never the secret, a share or the token PIN: the
//! check values are 3-byte public fingerprints, and the schema refuses
//! anything longer.
//!
//! A generation is inserted, never changed: the highest one is in force.
//! Its primary key makes two concurrent initializations (or rotations from
//! the same generation, on several nodes) end with one winner.

use super::records::{format_time, RowReader};
use super::{Store, StoreError};
use crate::crypto::CheckValue;
use sqlx::any::AnyRow;
use time::OffsetDateTime;

/// What made a generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SealKind {
    Initialize,
    Rotate,
    Rekey,
}

impl SealKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SealKind::Initialize => "initialize",
            SealKind::Rotate => "rotate",
            SealKind::Rekey => "rekey",
        }
    }

    fn parse(s: &str) -> Result<SealKind, String> {
        match s {
            "initialize" => Ok(SealKind::Initialize),
            "rotate" => Ok(SealKind::Rotate),
            "rekey" => Ok(SealKind::Rekey),
            other => Err(format!("{other:?} is not a seal kind")),
        }
    }
}

/// One generation of the seal.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SealRecord {
    pub generation: u32,
    pub kind: SealKind,
    /// M: shares needed to unseal.
    pub threshold: u8,
    /// N: shares made.
    pub shares: u8,
    /// `crypto::shares::SplitId` as written on every share of this split.
    pub split_id: String,
    pub secret_check: CheckValue,
    /// (index, check value) of each share, by index.
    pub share_checks: Vec<(u8, CheckValue)>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub created_by: String,
}

impl SealRecord {
    /// The recorded check value of share `index`, if this split has one.
    pub fn share_check(&self, index: u8) -> Option<CheckValue> {
        self.share_checks
            .iter()
            .find(|(i, _)| *i == index)
            .map(|(_, c)| *c)
    }
}

impl Store {
    /// The generation in force, if the deployment is sealed.
    pub async fn seal_current(&self) -> Result<Option<SealRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT generation, kind, threshold, shares, split_id, whole_check, created_at, \
             created_by FROM seal_generations ORDER BY generation DESC LIMIT 1",
        )
        .fetch_optional(self.pool())
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let mut rec = seal_from_row(&row)?;
        let shares = sqlx::query(
            "SELECT share_index, share_check FROM seal_shares WHERE generation = $1 \
             ORDER BY share_index",
        )
        .bind(i64::from(rec.generation))
        .fetch_all(self.pool())
        .await?;
        for s in &shares {
            let r = RowReader::new(s, "seal_shares", rec.generation.to_string());
            let index = r.int("share_index")?;
            let index = u8::try_from(index).map_err(|_| corrupt("share_index", index))?;
            let check = r.with("share_check", CheckValue::parse_hex)?;
            rec.share_checks.push((index, check));
        }
        if rec.share_checks.len() != usize::from(rec.shares) {
            return Err(StoreError::Corrupt {
                table: "seal_shares",
                column: "share_index",
                row: rec.generation.to_string(),
                why: format!(
                    "{} share rows for a split of {}",
                    rec.share_checks.len(),
                    rec.shares
                ),
            });
        }
        Ok(Some(rec))
    }

    /// Add generation `rec.generation`; it must follow the one in force
    /// (1 when there is none). False, changing nothing, when another
    /// initialization, rotation or re-key got there first.
    pub async fn insert_seal(&self, rec: &SealRecord) -> Result<bool, StoreError> {
        let invalid = |why: String| StoreError::Invalid { what: "seal", why };
        if rec.threshold < 2 || rec.threshold > rec.shares {
            return Err(invalid(format!(
                "{} of {} is not a threshold",
                rec.threshold, rec.shares
            )));
        }
        if rec.share_checks.len() != usize::from(rec.shares) {
            return Err(invalid("one check value per share is needed".into()));
        }
        if rec.created_by.is_empty() {
            return Err(invalid("created_by must not be empty".into()));
        }
        let mut tx = self.begin_write().await?;
        let latest = sqlx::query("SELECT MAX(generation) AS g FROM seal_generations")
            .fetch_one(&mut *tx)
            .await?;
        let latest = RowReader::new(&latest, "seal_generations", String::new()).opt_int("g")?;
        if latest.unwrap_or(0) + 1 != i64::from(rec.generation) {
            return Ok(false);
        }
        let inserted = sqlx::query(
            "INSERT INTO seal_generations (generation, kind, threshold, shares, split_id, \
             whole_check, created_at, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(i64::from(rec.generation))
        .bind(rec.kind.as_str())
        .bind(i64::from(rec.threshold))
        .bind(i64::from(rec.shares))
        .bind(rec.split_id.as_str())
        .bind(rec.secret_check.to_string())
        .bind(format_time(rec.created_at)?)
        .bind(rec.created_by.as_str())
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if StoreError::is_unique_violation(&e) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        for (index, check) in &rec.share_checks {
            sqlx::query(
                "INSERT INTO seal_shares (generation, share_index, share_check) \
                 VALUES ($1, $2, $3)",
            )
            .bind(i64::from(rec.generation))
            .bind(i64::from(*index))
            .bind(check.to_string())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }
}

fn corrupt(column: &'static str, v: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        table: "seal_generations",
        column,
        row: String::new(),
        why: format!("{v} is out of range"),
    }
}

fn seal_from_row(row: &AnyRow) -> Result<SealRecord, StoreError> {
    let r = RowReader::new(row, "seal_generations", String::new());
    let generation = r.int("generation")?;
    let threshold = r.int("threshold")?;
    let shares = r.int("shares")?;
    Ok(SealRecord {
        generation: u32::try_from(generation).map_err(|_| corrupt("generation", generation))?,
        kind: r.with("kind", SealKind::parse)?,
        threshold: u8::try_from(threshold).map_err(|_| corrupt("threshold", threshold))?,
        shares: u8::try_from(shares).map_err(|_| corrupt("shares", shares))?,
        split_id: r.text("split_id")?,
        secret_check: r.with("whole_check", CheckValue::parse_hex)?,
        share_checks: Vec::new(),
        created_at: r.time("created_at")?,
        created_by: r.text("created_by")?,
    })
}
