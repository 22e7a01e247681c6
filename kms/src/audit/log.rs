//! The audit log: appends records to the chain (write-ahead, fail-closed),
//! MACs each in the HSM, signs checkpoints in the HSM.

use super::{AuditEvent, AuditRecord, Checkpoint};
use crate::hsm::{Hsm, HsmError, KeyRef, KeySpec, MacAlg, Role, SignAlg, Trust};
use crate::model::{Algorithm, KeyName, KeyState, KeyUsage, ObjectId, Tenant};
use crate::store::{NewKey, NewVersion, Presence, Store, StoreError, SYSTEM_ACTOR};
use std::sync::Arc;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

/// The tenant of the KMS's own keys.
pub const SYSTEM_TENANT: &str = "kms";
const MAC_KEY: &str = "audit-mac";
const SIGNING_KEY: &str = "audit-signing";

const COUNTERSIGN: &str = "audit.countersign";

/// A checkpoint every this many records (and at every shutdown:
/// `KeyService::close`).
pub const CHECKPOINT_EVERY: u64 = 100;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The record could not be written: the act must not happen.
    #[error("the audit record could not be written, so nothing was done: {0}")]
    Unwritable(String),
    #[error("audit keys: {0}")]
    Keys(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Hsm(#[from] HsmError),
}

#[derive(Debug, Clone, Copy)]
struct AuditKeys {
    mac: KeyRef,
    signing: KeyRef,
}

/// The chain writer of one KMS process.
#[derive(Clone)]
pub struct AuditLog {
    store: Store,
    hsm: Arc<Hsm>,
    node: String,
    /// None under the security officer's login, which cannot use the
    /// user's private audit keys: such records carry no MAC and trigger no
    /// checkpoint; the chain and the next checkpoint cover them.
    keys: Option<AuditKeys>,
    /// seq:hash of the records this log wrote without a MAC (under the SO's
    /// login), for the user login that follows in the same process to
    /// countersign. Never read back from the database: a record whose MAC
    /// a database writer blanked must not get a countersignature.
    unmaced: Arc<std::sync::Mutex<Vec<String>>>,
    /// The group-commit writer (under the user's login, with the MAC key).
    batcher: Option<mpsc::Sender<Pending>>,
}

/// This node's name in records: $KMS_NODE, else the host name.
fn node_name() -> String {
    std::env::var("KMS_NODE").unwrap_or_else(|_| {
        std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "kms".into())
    })
}

/// Append `events` as the chain's next records, MACed in the HSM when a key
/// is given, in one transaction (the one place that builds records).
async fn append_many(
    store: &Store,
    node: &str,
    events: Vec<AuditEvent>,
    mac_key: Option<(Arc<Hsm>, KeyRef)>,
) -> Result<Vec<AuditRecord>, AuditError> {
    store
        .append_audit_batch(|first, prev| async move {
            let mut recs = Vec::with_capacity(events.len());
            let mut prev = prev;
            for (seq, event) in (first..).zip(events) {
                let at = now_rfc3339();
                let hash = AuditRecord::compute_hash(seq, &at, node, &event, &prev);
                recs.push(AuditRecord {
                    seq,
                    at,
                    node: node.to_owned(),
                    event,
                    prev: std::mem::replace(&mut prev, hash.clone()),
                    hash,
                    mac: String::new(),
                });
            }
            if let Some((hsm, key)) = mac_key {
                // One blocking call (one PKCS#11 session) for the batch.
                let hashes: Vec<String> = recs.iter().map(|r| r.hash.clone()).collect();
                let macs = tokio::task::spawn_blocking(move || {
                    hashes
                        .iter()
                        .map(|h| hsm.mac(&key, MacAlg::HmacSha256, h.as_bytes()))
                        .collect::<Result<Vec<_>, _>>()
                })
                .await
                .map_err(|e| AuditError::Unwritable(e.to_string()))??;
                for (r, m) in recs.iter_mut().zip(macs) {
                    r.mac = hex::encode_upper(m);
                }
            }
            Ok::<_, AuditError>(recs)
        })
        .await
        .map_err(|e| AuditError::Unwritable(e.to_string()))
}

/// Records waiting for the writer, and where each one's answer goes.
struct Pending {
    event: AuditEvent,
    reply: oneshot::Sender<Result<AuditRecord, String>>,
}

/// Most records committed in one transaction.
const MAX_BATCH: usize = 64;

/// Group commit: one task per log appends whatever records are waiting in
/// one transaction, so N concurrent acts cost one commit (one fsync on
/// SQLite) instead of N. Each caller still gets its own record back only
/// after the commit: write-ahead and fail-closed hold per record. The task
/// holds the HSM weakly, so dropping the last log releases the token (and
/// its login) at once; it ends when the last log is dropped.
async fn writer(
    store: Store,
    node: String,
    hsm: std::sync::Weak<Hsm>,
    key: KeyRef,
    mut rx: mpsc::Receiver<Pending>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let (events, replies): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|p| (p.event, p.reply)).unzip();
        let result = match hsm.upgrade() {
            Some(h) => append_many(&store, &node, events, Some((h, key))).await,
            None => Err(AuditError::Unwritable("the HSM is closed".into())),
        };
        match result {
            Ok(recs) => {
                for (reply, rec) in replies.into_iter().zip(recs) {
                    let _ = reply.send(Ok(rec));
                }
            }
            Err(e) => {
                let why = e.to_string();
                for reply in replies {
                    let _ = reply.send(Err(why.clone()));
                }
            }
        }
    }
}

fn one(mut recs: Vec<AuditRecord>) -> Result<AuditRecord, AuditError> {
    recs.pop()
        .ok_or_else(|| AuditError::Unwritable("no record was written".into()))
}

fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

impl AuditLog {
    /// Open the log; under the user's login, create the audit keys in the
    /// HSM on first use (HMAC-SHA256 for record MACs, ECDSA P-256 for
    /// checkpoints).
    pub async fn open(store: Store, hsm: Arc<Hsm>) -> Result<AuditLog, AuditError> {
        let node = node_name();
        let mut log = AuditLog {
            store,
            hsm,
            node,
            keys: None,
            unmaced: Arc::new(std::sync::Mutex::new(Vec::new())),
            batcher: None,
        };
        if log.hsm.role() == Role::User {
            let mac = log
                .system_key(MAC_KEY, Algorithm::HmacSha256, KeyUsage::Audit)
                .await?;
            let signing = log
                .system_key(SIGNING_KEY, Algorithm::EcP256, KeyUsage::Signing)
                .await?;
            log.keys = Some(AuditKeys { mac, signing });
            let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
            tokio::spawn(writer(
                log.store.clone(),
                log.node.clone(),
                Arc::downgrade(&log.hsm),
                mac,
                rx,
            ));
            log.batcher = Some(tx);
        }
        Ok(log)
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Find or create one of the KMS's own keys (same write order as any
    /// key: pending row, token object, confirmed row).
    pub(crate) async fn system_key(
        &self,
        name: &str,
        algorithm: Algorithm,
        usage: KeyUsage,
    ) -> Result<KeyRef, AuditError> {
        let bad = |e: crate::model::ParseError| AuditError::Keys(e.to_string());
        let tenant = Tenant::parse(SYSTEM_TENANT).map_err(bad)?;
        let key_name = KeyName::parse(name).map_err(bad)?;
        if let Some(rec) = self.store.find_key(&tenant, &key_name).await? {
            let v = rec
                .current()
                .filter(|v| v.presence == Presence::Present && v.state == KeyState::Active)
                .ok_or_else(|| {
                    AuditError::Keys(format!(
                        "{SYSTEM_TENANT}/{name} has no active version on the token (run `kms reconcile`)"
                    ))
                })?;
            return Ok(KeyRef {
                object_id: v.object_id,
                algorithm,
            });
        }
        let version = NewVersion {
            object_id: ObjectId::random(),
            state: KeyState::Active,
            activate_at: Some(OffsetDateTime::now_utc()),
            expire_at: None,
        };
        let new = NewKey {
            tenant: tenant.clone(),
            name: key_name,
            algorithm,
            usage,
            exportable: false,
        };
        let rec = self.store.create_key(&new, &version, SYSTEM_ACTOR).await?;
        let spec = KeySpec {
            algorithm,
            usage,
            // The MAC key is in every backup (wrapped by the trusted backup
            // KEK only: CKA_WRAP_WITH_TRUSTED), so the trail's MACs still
            // verify after the token is lost (service/backup.rs). The
            // signing key is a private key: never extractable.
            exportable: name == MAC_KEY,
            object_id: version.object_id,
            label: format!("{SYSTEM_TENANT}/{name}"),
            persistent: true,
        };
        let hsm = self.hsm.clone();
        let made = tokio::task::spawn_blocking(move || hsm.generate(&spec, Trust::Normal))
            .await
            .map_err(|e| AuditError::Keys(e.to_string()))?;
        match made {
            Ok(k) => {
                let kcv = k.kcv.map(hex::encode_upper).unwrap_or_default();
                self.store.confirm_version(&rec.id, 1, &kcv).await?;
            }
            Err(e) => {
                self.store.abandon_pending(&rec.id, 1).await?;
                return Err(e.into());
            }
        }
        Ok(KeyRef {
            object_id: version.object_id,
            algorithm,
        })
    }

    async fn on_hsm<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Hsm) -> Result<T, HsmError> + Send + 'static,
    ) -> Result<T, AuditError> {
        let hsm = self.hsm.clone();
        tokio::task::spawn_blocking(move || f(&hsm))
            .await
            .map_err(|e| AuditError::Unwritable(e.to_string()))?
            .map_err(AuditError::from)
    }

    /// Append one record. Fail closed: an error here means the caller must
    /// not go on with the act.
    pub async fn record(&self, event: AuditEvent) -> Result<AuditRecord, AuditError> {
        let rec = match &self.batcher {
            Some(tx) => {
                let stopped = || AuditError::Unwritable("the audit writer stopped".into());
                let (reply, answer) = oneshot::channel();
                tx.send(Pending { event, reply })
                    .await
                    .map_err(|_| stopped())?;
                answer
                    .await
                    .map_err(|_| stopped())?
                    .map_err(AuditError::Unwritable)?
            }
            None => one(append_many(&self.store, &self.node, vec![event], None).await?)?,
        };
        if rec.mac.is_empty() {
            if let Ok(mut u) = self.unmaced.lock() {
                u.push(format!("{}:{}", rec.seq, rec.hash));
            }
        }
        if rec.seq % CHECKPOINT_EVERY == 0 {
            // A failed checkpoint does not undo the record; the next one covers it.
            if let Err(e) = self.checkpoint(rec.seq, &rec.hash).await {
                tracing::warn!("audit checkpoint at {} failed: {e}", rec.seq);
            }
        }
        Ok(rec)
    }

    /// Append a record without the HSM: for acts where the token could not
    /// be opened (a failed login, an unreachable module). It carries no MAC;
    /// the chain and the next signed checkpoint cover it.
    pub async fn record_without_hsm(
        store: &Store,
        event: AuditEvent,
    ) -> Result<AuditRecord, AuditError> {
        one(append_many(store, &node_name(), vec![event], None).await?)
    }

    /// A keyed hash of a PAN (HMAC in the HSM under the audit key), so a
    /// card's history can be followed without the PAN in the trail.
    pub async fn pan_hash(&self, pan_digits: &str) -> Result<String, AuditError> {
        let keys = self
            .keys
            .ok_or_else(|| AuditError::Keys("no audit key under this login".into()))?;
        let msg = format!("pan:{pan_digits}").into_bytes();
        let mac = self
            .on_hsm(move |hsm| hsm.mac(&keys.mac, MacAlg::HmacSha256, &msg))
            .await?;
        Ok(hex::encode_upper(&mac[..16]))
    }

    async fn checkpoint(&self, seq: u64, hash: &str) -> Result<Option<Checkpoint>, AuditError> {
        let Some(keys) = self.keys else {
            return Ok(None);
        };
        let at = now_rfc3339();
        let msg = Checkpoint::message(seq, hash, &at, &self.node);
        let sig = self
            .on_hsm(move |hsm| hsm.sign(&keys.signing, SignAlg::EcdsaP256Sha256, &msg))
            .await?;
        let cp = Checkpoint {
            seq,
            hash: hash.to_owned(),
            at,
            node: self.node.clone(),
            signature: hex::encode_upper(sig),
        };
        self.store.insert_checkpoint(&cp).await?;
        Ok(Some(cp))
    }

    /// Sign the chain at a given record (the end of an archive segment).
    pub async fn checkpoint_at(
        &self,
        seq: u64,
        hash: &str,
    ) -> Result<Option<Checkpoint>, AuditError> {
        self.checkpoint(seq, hash).await
    }

    /// Sign the current head (at shutdown, before an export, on demand).
    pub async fn checkpoint_head(&self) -> Result<Option<Checkpoint>, AuditError> {
        let (seq, hash) = self.store.audit_head().await?;
        if seq == 0 {
            return Ok(None);
        }
        self.checkpoint(seq, &hash).await
    }

    /// The checkpoint signing key's public point (SEC1 uncompressed).
    pub async fn public_key(&self) -> Result<Vec<u8>, AuditError> {
        let keys = self
            .keys
            .ok_or_else(|| AuditError::Keys("no audit key under this login".into()))?;
        self.on_hsm(move |hsm| hsm.public_key(&keys.signing)).await
    }

    /// Verify the MAC of each record in the HSM (online verification).
    /// A record without a MAC (written under the SO's login, or a failed
    /// login) passes only if a later `audit.countersign` record, whose own
    /// MAC verifies, lists its seq and hash: a role field can be rewritten,
    /// a countersignature cannot.
    pub async fn check_macs(
        &self,
        records: Vec<AuditRecord>,
    ) -> Result<Vec<(u64, bool)>, AuditError> {
        let keys = self
            .keys
            .ok_or_else(|| AuditError::Keys("no audit key under this login".into()))?;
        self.on_hsm(move |hsm| {
            let mut verdicts = Vec::with_capacity(records.len());
            let mut countersigned = std::collections::HashSet::new();
            for r in &records {
                if r.mac.is_empty() {
                    continue;
                }
                let mac = hex::decode(&r.mac).unwrap_or_default();
                let ok = hsm.verify_mac(&keys.mac, MacAlg::HmacSha256, r.hash.as_bytes(), &mac)?;
                if ok && r.event.action == COUNTERSIGN {
                    if let Some(list) = r.event.details.get("record_hashes") {
                        countersigned.extend(list.split(',').map(str::to_owned));
                    }
                }
                verdicts.push((r.seq, ok));
            }
            for r in records.iter().filter(|r| r.mac.is_empty()) {
                // A failed login is recorded without the token, and its
                // process ends there: nobody can countersign it.
                let failed_login = r.event.action == "hsm.login"
                    && r.event.outcome == Some(super::Outcome::Failure);
                let ok = failed_login || countersigned.contains(&format!("{}:{}", r.seq, r.hash));
                verdicts.push((r.seq, ok));
            }
            verdicts.sort_by_key(|v| v.0);
            Ok(verdicts)
        })
        .await
    }

    /// The records this log wrote without a MAC, taken (once).
    pub fn take_unmaced(&self) -> Vec<String> {
        self.unmaced
            .lock()
            .map(|mut u| std::mem::take(&mut *u))
            .unwrap_or_default()
    }

    /// Countersign, under this login's MAC key, the records another log of
    /// this same process wrote without a MAC (`take_unmaced`): one
    /// `audit.countersign` record listing their seq:hash.
    pub async fn countersign(
        &self,
        records: Vec<String>,
    ) -> Result<Option<AuditRecord>, AuditError> {
        if self.keys.is_none() || records.is_empty() {
            return Ok(None);
        }
        let event = AuditEvent {
            actor: "kms".into(),
            role: "system".into(),
            action: COUNTERSIGN.into(),
            outcome: Some(super::Outcome::Success),
            details: [("record_hashes".to_owned(), records.join(","))].into(),
            ..Default::default()
        };
        Ok(Some(self.record(event).await?))
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Every stored record, in seq-column order, with its column seq.
    pub async fn stored(store: &Store) -> Result<Vec<super::Stored>, AuditError> {
        let mut out = Vec::new();
        let mut after = 0;
        loop {
            let page = store.audit_rows(after, 5000).await?;
            let Some((last, _)) = page.last() else { break };
            after = *last;
            for (col, body) in page {
                out.push(super::Stored {
                    position: col,
                    column_seq: Some(col),
                    record: serde_json::from_str(&body).map_err(|e| e.to_string()),
                });
            }
        }
        Ok(out)
    }

    /// Verify the chain in the database: hashes, links, sequence, tail,
    /// checkpoint signatures (with the HSM's public key) and, online, every
    /// record's HSM MAC.
    pub async fn verify_database(&self) -> Result<super::VerifyReport, AuditError> {
        let stored = Self::stored(&self.store).await?;
        let records: Vec<AuditRecord> = stored
            .iter()
            .filter_map(|s| s.record.as_ref().ok().cloned())
            .collect();
        let checkpoints = self.store.checkpoints().await?;
        let head = self.store.audit_head().await?;
        let key = super::parse_public_key(&hex::encode(self.public_key().await?))
            .map_err(AuditError::Keys)?;
        // Where the chain starts is not taken from the audit_archives table
        // (anyone who can write the database could forge a row there): it is
        // inferred from the first record and must be vouched for by a signed
        // checkpoint (see verify::infer_start).
        let mut report = super::verify_chain(stored, &checkpoints, Some(&key), Some(head), None);
        for (seq, ok) in self.check_macs(records).await? {
            report.macs_verified += 1;
            if !ok {
                report.damage.push(super::Damage {
                    kind: super::DamageKind::BadMac,
                    seq,
                    detail: "the HSM MAC does not verify (or, for a record without one, no countersignature)".into(),
                });
            }
        }
        report.damage.sort_by_key(|d| d.seq);
        Ok(report)
    }
}
