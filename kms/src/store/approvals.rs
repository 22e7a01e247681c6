//! Persistence of dual-control requests and their approvals.

use super::records::format_time;
use super::{Store, StoreError};
use sqlx::Row;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// A stored request, as read back.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ApprovalRow {
    pub id: String,
    pub operation: String,
    pub digest: String,
    pub requested_by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub requested_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    pub status: String,
    pub approvers: Vec<String>,
}

fn parse_time(s: &str, column: &'static str, id: &str) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::parse(s, &Rfc3339).map_err(|e| StoreError::Corrupt {
        table: "approval_requests",
        column,
        row: id.to_owned(),
        why: e.to_string(),
    })
}

impl Store {
    pub async fn insert_approval_request(
        &self,
        id: &str,
        operation: &str,
        digest: &str,
        requested_by: &str,
        expires_at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO approval_requests (id, operation, digest, requested_by, requested_at, expires_at, status) \
             VALUES ($1, $2, $3, $4, $5, $6, 'open')",
        )
        .bind(id)
        .bind(operation)
        .bind(digest)
        .bind(requested_by)
        .bind(format_time(OffsetDateTime::now_utc())?)
        .bind(format_time(expires_at)?)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn approval_request(&self, id: &str) -> Result<Option<ApprovalRow>, StoreError> {
        let Some(row) = sqlx::query(
            "SELECT id, operation, digest, requested_by, requested_at, expires_at, status \
             FROM approval_requests WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(self.pool())
        .await?
        else {
            return Ok(None);
        };
        let approvers =
            sqlx::query("SELECT approver FROM approvals WHERE request_id = $1 ORDER BY at")
                .bind(id)
                .fetch_all(self.pool())
                .await?
                .iter()
                .map(|r| r.try_get::<String, _>("approver"))
                .collect::<Result<Vec<_>, _>>()?;
        let requested_at: String = row.try_get("requested_at")?;
        let expires_at: String = row.try_get("expires_at")?;
        Ok(Some(ApprovalRow {
            id: row.try_get("id")?,
            operation: row.try_get("operation")?,
            digest: row.try_get("digest")?,
            requested_by: row.try_get("requested_by")?,
            requested_at: parse_time(&requested_at, "requested_at", id)?,
            expires_at: parse_time(&expires_at, "expires_at", id)?,
            status: row.try_get("status")?,
            approvers,
        }))
    }

    /// Requests in one of these states, oldest first.
    pub async fn approval_requests_in(
        &self,
        statuses: &[&str],
    ) -> Result<Vec<ApprovalRow>, StoreError> {
        let mut out = Vec::new();
        for st in statuses {
            let ids = sqlx::query(
                "SELECT id FROM approval_requests WHERE status = $1 ORDER BY requested_at",
            )
            .bind(*st)
            .fetch_all(self.pool())
            .await?;
            for r in ids {
                let id: String = r.try_get("id")?;
                if let Some(row) = self.approval_request(&id).await? {
                    out.push(row);
                }
            }
        }
        Ok(out)
    }

    /// Record one approval. The primary key makes a second approval by the
    /// same person a `Conflict`, whatever the caller checked before.
    pub async fn add_approval(
        &self,
        id: &str,
        approver: &str,
        digest: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let r = sqlx::query(
            "INSERT INTO approvals (request_id, approver, digest, at) VALUES ($1, $2, $3, $4)",
        )
        .bind(id)
        .bind(approver)
        .bind(digest)
        .bind(format_time(OffsetDateTime::now_utc())?)
        .execute(&mut *tx)
        .await;
        if let Err(e) = r {
            return Err(if StoreError::is_unique_violation(&e) {
                StoreError::Invalid {
                    what: "approval",
                    why: format!("{approver} has already approved request {id}"),
                }
            } else {
                e.into()
            });
        }
        tx.commit().await?;
        Ok(())
    }

    /// Move a request from `from` to `to` (open -> executing -> executed or
    /// failed), once. Returns false if it was not in `from`.
    pub async fn move_approval_request(
        &self,
        id: &str,
        from: &str,
        to: &str,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE approval_requests SET status = $2, closed_at = $3 WHERE id = $1 AND status = $4",
        )
        .bind(id)
        .bind(to)
        .bind(format_time(OffsetDateTime::now_utc())?)
        .bind(from)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }
}
