//! Persistence of the audit chain: append under the head-row lock, read in
//! sequence, search, checkpoints.

use super::{Backend, Store, StoreError};
use crate::audit::{AuditRecord, Checkpoint, Outcome};
use sqlx::Row;
use std::future::Future;

/// What `kms audit search` filters on; every field optional.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// RFC 3339 bounds, inclusive.
    pub from: Option<String>,
    pub to: Option<String>,
    pub actor: Option<String>,
    /// Exact action, or a prefix when it ends with '*'.
    pub action: Option<String>,
    pub outcome: Option<Outcome>,
    pub request_id: Option<String>,
    /// `tenant/name` of a key the record mentions.
    pub key: Option<String>,
    pub limit: Option<u32>,
}

impl Store {
    /// Append records. `build(next_seq, prev)` makes them (hashes and HSM
    /// MACs included, chained from `prev`, numbered from `next_seq`) while
    /// this node holds the chain's head lock, so the chain stays linear
    /// across concurrent writers and nodes; they are committed in one
    /// transaction (group commit: one fsync for many records). Nothing is
    /// written if `build` fails or returns records that do not continue the
    /// chain.
    pub async fn append_audit_batch<F, Fut, E>(&self, build: F) -> Result<Vec<AuditRecord>, E>
    where
        F: FnOnce(u64, String) -> Fut,
        Fut: Future<Output = Result<Vec<AuditRecord>, E>>,
        E: From<StoreError>,
    {
        let mut tx = self.begin_write().await.map_err(E::from)?;
        let lock = match self.backend() {
            Backend::Postgres => "SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE",
            Backend::Sqlite => "SELECT seq, hash FROM audit_head WHERE id = 1",
        };
        let head = sqlx::query(lock)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| E::from(e.into()))?;
        let seq: i64 = head.try_get("seq").map_err(|e| E::from(e.into()))?;
        let prev: String = head.try_get("hash").map_err(|e| E::from(e.into()))?;
        let next = u64::try_from(seq).unwrap_or(0) + 1;
        let recs = build(next, prev.clone()).await?;
        let invalid = |why: String| {
            E::from(StoreError::Invalid {
                what: "audit record",
                why,
            })
        };
        let (mut want_seq, mut want_prev) = (next, prev);
        for rec in &recs {
            if rec.seq != want_seq || rec.prev != want_prev {
                return Err(invalid(format!(
                    "record {} does not continue the chain at {want_seq}",
                    rec.seq
                )));
            }
            let body = serde_json::to_string(rec).map_err(|e| invalid(e.to_string()))?;
            let seq_i = i64::try_from(rec.seq).map_err(|_| invalid("seq out of range".into()))?;
            sqlx::query(
                "INSERT INTO audit_records (seq, at, node, actor, action, outcome, tenant, request_id, body, prev, hash, mac) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            )
            .bind(seq_i)
            .bind(&rec.at)
            .bind(&rec.node)
            .bind(&rec.event.actor)
            .bind(&rec.event.action)
            .bind(rec.event.outcome.map(Outcome::as_str).unwrap_or("success"))
            .bind(rec.event.tenant.as_deref())
            .bind(rec.event.request_id.as_deref())
            .bind(&body)
            .bind(&rec.prev)
            .bind(&rec.hash)
            .bind(&rec.mac)
            .execute(&mut *tx)
            .await
            .map_err(|e| E::from(e.into()))?;
            want_seq += 1;
            want_prev = rec.hash.clone();
        }
        if let Some(last) = recs.last() {
            let seq_i = i64::try_from(last.seq).map_err(|_| invalid("seq out of range".into()))?;
            sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1")
                .bind(seq_i)
                .bind(&last.hash)
                .execute(&mut *tx)
                .await
                .map_err(|e| E::from(e.into()))?;
        }
        tx.commit().await.map_err(|e| E::from(e.into()))?;
        Ok(recs)
    }

    /// The chain's head as recorded: (seq, hash).
    pub async fn audit_head(&self) -> Result<(u64, String), StoreError> {
        let row = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
            .fetch_one(self.pool())
            .await?;
        let seq: i64 = row.try_get("seq")?;
        Ok((u64::try_from(seq).unwrap_or(0), row.try_get("hash")?))
    }

    /// Stored rows in `seq` order, from `after` (exclusive): the seq column
    /// and the body, unparsed, so verification can tell a changed body from
    /// a moved row.
    pub async fn audit_rows(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<Vec<(u64, String)>, StoreError> {
        let rows =
            sqlx::query("SELECT seq, body FROM audit_records WHERE seq > $1 ORDER BY seq LIMIT $2")
                .bind(i64::try_from(after).unwrap_or(i64::MAX))
                .bind(i64::from(limit))
                .fetch_all(self.pool())
                .await?;
        rows.iter()
            .map(|r| {
                let s: i64 = r.try_get("seq")?;
                Ok((u64::try_from(s).unwrap_or(0), r.try_get("body")?))
            })
            .collect()
    }

    pub async fn audit_search(&self, f: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
        let mut sql = String::from("SELECT body FROM audit_records WHERE 1 = 1");
        let mut args: Vec<String> = Vec::new();
        let mut push = |cond: &str, v: String, sql: &mut String| {
            args.push(v);
            sql.push_str(&format!(" AND {cond} ${}", args.len()));
        };
        if let Some(v) = &f.from {
            push("at >=", v.clone(), &mut sql);
        }
        if let Some(v) = &f.to {
            push("at <=", v.clone(), &mut sql);
        }
        if let Some(v) = &f.actor {
            push("actor =", v.clone(), &mut sql);
        }
        if let Some(v) = &f.action {
            match v.strip_suffix('*') {
                Some(prefix) => push(
                    "action LIKE",
                    format!("{}%", prefix.replace(['%', '_'], "")),
                    &mut sql,
                ),
                None => push("action =", v.clone(), &mut sql),
            }
        }
        if let Some(v) = f.outcome {
            push("outcome =", v.as_str().to_owned(), &mut sql);
        }
        if let Some(v) = &f.request_id {
            push("request_id =", v.clone(), &mut sql);
        }
        sql.push_str(" ORDER BY seq");
        let mut q = sqlx::query(&sql);
        for a in &args {
            q = q.bind(a);
        }
        let rows = q.fetch_all(self.pool()).await?;
        let mut out = Vec::new();
        for r in rows {
            let body: String = r.try_get("body")?;
            let rec: AuditRecord =
                serde_json::from_str(&body).map_err(|e| StoreError::Corrupt {
                    table: "audit_records",
                    column: "body",
                    row: String::new(),
                    why: e.to_string(),
                })?;
            if let Some(k) = &f.key {
                if !rec
                    .event
                    .keys
                    .iter()
                    .any(|m| format!("{}/{}", m.tenant, m.name) == *k)
                {
                    continue;
                }
            }
            out.push(rec);
            if f.limit.is_some_and(|l| out.len() >= l as usize) {
                break;
            }
        }
        Ok(out)
    }

    pub async fn insert_checkpoint(&self, cp: &Checkpoint) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO audit_checkpoints (seq, hash, at, node, signature) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (seq) DO NOTHING",
        )
        .bind(i64::try_from(cp.seq).unwrap_or(i64::MAX))
        .bind(&cp.hash)
        .bind(&cp.at)
        .bind(&cp.node)
        .bind(&cp.signature)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, hash, at, node, signature FROM audit_checkpoints ORDER BY seq",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let s: i64 = r.try_get("seq")?;
                Ok(Checkpoint {
                    seq: u64::try_from(s).unwrap_or(0),
                    hash: r.try_get("hash")?,
                    at: r.try_get("at")?,
                    node: r.try_get("node")?,
                    signature: r.try_get("signature")?,
                })
            })
            .collect()
    }

    /// Where the chain in the database starts: after the last archived
    /// record, linking to its hash; (1, GENESIS) when nothing was archived.
    pub async fn audit_chain_start(&self) -> Result<(u64, String), StoreError> {
        let row = sqlx::query(
            "SELECT through_seq, last_hash FROM audit_archives ORDER BY through_seq DESC LIMIT 1",
        )
        .fetch_optional(self.pool())
        .await?;
        Ok(match row {
            Some(r) => {
                let s: i64 = r.try_get("through_seq")?;
                (u64::try_from(s).unwrap_or(0) + 1, r.try_get("last_hash")?)
            }
            None => (1, crate::audit::GENESIS.to_owned()),
        })
    }

    /// Remove records up to `through` (already written to `location` and
    /// verified there) and remember where the chain now starts, in one
    /// transaction. Checkpoints stay: they are small and prove the past.
    pub async fn archive_audit_through(
        &self,
        first: u64,
        through: u64,
        last_hash: &str,
        location: &str,
        records: u64,
    ) -> Result<(), StoreError> {
        let to_i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO audit_archives (through_seq, first_seq, last_hash, at, location, records) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(to_i(through))
        .bind(to_i(first))
        .bind(last_hash)
        .bind(super::records::format_time(time::OffsetDateTime::now_utc())?)
        .bind(location)
        .bind(to_i(records))
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM audit_records WHERE seq <= $1")
            .bind(to_i(through))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records without an HSM MAC: (seq, hash).
    pub async fn audit_unmaced(&self) -> Result<Vec<(u64, String)>, StoreError> {
        let rows = sqlx::query("SELECT seq, hash FROM audit_records WHERE mac = '' ORDER BY seq")
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| {
                let s: i64 = r.try_get("seq")?;
                Ok((u64::try_from(s).unwrap_or(0), r.try_get("hash")?))
            })
            .collect()
    }
}
