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

    /// Record one approval with the approver's signature and certificate
    /// (DER, stored hex). The primary key makes a second approval by the
    /// same person a `Conflict`, whatever the caller checked before.
    pub async fn add_approval(
        &self,
        id: &str,
        approver: &str,
        digest: &str,
        signature: &[u8],
        approver_cert: &[u8],
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let r = sqlx::query(
            "INSERT INTO approvals (request_id, approver, digest, at, signature, approver_cert) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id)
        .bind(approver)
        .bind(digest)
        .bind(format_time(OffsetDateTime::now_utc())?)
        .bind(hex::encode_upper(signature))
        .bind(hex::encode_upper(approver_cert))
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

/// One fact of `kms_state` (the founding, the adopted policy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateFact {
    pub value: String,
    pub set_at: String,
    pub set_by: String,
    pub request: Option<String>,
}

/// The names `kms_state` admits (its CHECK says the same).
pub(crate) const FIRST_PERSON: &str = "first-person";
pub(crate) const FOUNDING_CLOSED: &str = "founding-closed";
const POLICY: &str = "policy";
const POLICY_APPROVED: &str = "policy-approved";

impl Store {
    pub(crate) async fn state_fact(&self, name: &str) -> Result<Option<StateFact>, StoreError> {
        let Some(row) =
            sqlx::query("SELECT fact, set_at, set_by, request FROM kms_state WHERE name = $1")
                .bind(name)
                .fetch_optional(self.pool())
                .await?
        else {
            return Ok(None);
        };
        Ok(Some(StateFact {
            value: row.try_get("fact")?,
            set_at: row.try_get("set_at")?,
            set_by: row.try_get("set_by")?,
            request: row.try_get("request")?,
        }))
    }

    /// The SHA-256 of the adopted policy; None on a fresh database.
    pub async fn adopted_policy(&self) -> Result<Option<StateFact>, StoreError> {
        self.state_fact(POLICY).await
    }

    /// The policy digest an executed ChangePolicy request approved, not yet
    /// adopted.
    pub async fn approved_policy(&self) -> Result<Option<StateFact>, StoreError> {
        self.state_fact(POLICY_APPROVED).await
    }

    /// Adopt `digest` as the policy, if the adopted one is still `current`
    /// (None: nothing adopted yet). A change of policy (`current` set) must
    /// be the approved one, and uses the approval up, in the same
    /// transaction. False, changing nothing, otherwise.
    pub async fn adopt_policy(
        &self,
        current: Option<&str>,
        digest: &str,
        by: &str,
        request: Option<&str>,
    ) -> Result<bool, StoreError> {
        let now = format_time(OffsetDateTime::now_utc())?;
        let mut tx = self.begin_write().await?;
        let done = match current {
            None => sqlx::query(
                "INSERT INTO kms_state (name, fact, set_at, set_by, request) \
                 SELECT $1, $2, $3, $4, $5 WHERE NOT EXISTS (SELECT 1 FROM kms_state WHERE name = $1)",
            )
            .bind(POLICY)
            .bind(digest)
            .bind(&now)
            .bind(by)
            .bind(request)
            .execute(&mut *tx)
            .await?
            .rows_affected(),
            Some(cur) => {
                let used = sqlx::query(
                    "DELETE FROM kms_state WHERE name = $1 AND fact = $2 AND request = $3",
                )
                .bind(POLICY_APPROVED)
                .bind(digest)
                .bind(request.unwrap_or_default())
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if used != 1 {
                    return Ok(false);
                }
                sqlx::query(
                    "UPDATE kms_state SET fact = $2, set_at = $3, set_by = $4, request = $5 \
                     WHERE name = $1 AND fact = $6",
                )
                .bind(POLICY)
                .bind(digest)
                .bind(&now)
                .bind(by)
                .bind(request)
                .bind(cur)
                .execute(&mut *tx)
                .await?
                .rows_affected()
            }
        };
        if done != 1 {
            return Ok(false);
        }
        tx.commit().await?;
        Ok(true)
    }

    /// An executed ChangePolicy request: `digest` may be adopted at the
    /// next start (replacing an earlier approval not yet adopted).
    pub async fn approve_policy(
        &self,
        digest: &str,
        by: &str,
        request: &str,
    ) -> Result<(), StoreError> {
        let now = format_time(OffsetDateTime::now_utc())?;
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM kms_state WHERE name = $1")
            .bind(POLICY_APPROVED)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO kms_state (name, fact, set_at, set_by, request) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(POLICY_APPROVED)
        .bind(digest)
        .bind(&now)
        .bind(by)
        .bind(request)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}
