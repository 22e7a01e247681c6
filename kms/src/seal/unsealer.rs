//! Collecting shares until the token can be logged in to.
//!
//! There is no token login yet, so every presentation is recorded without
//! a MAC (`AuditLog::record_without_hsm`: the hash chain covers it), and
//! once the service is open its first acts countersign those records under
//! the audit key, as the security officer's records are.

use super::{check_share, rebuild, token_pin, SealStatus, UnsealError};
use crate::audit::{AuditEvent, AuditLog, Outcome};
use crate::crypto::Share;
use crate::hsm::{Hsm, HsmConfig, Role};
use crate::policy::KeyPolicy;
use crate::service::KeyService;
use crate::store::{SealRecord, Store};
use std::collections::BTreeMap;
use std::sync::Arc;

/// How many shares are in, of how many needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct UnsealProgress {
    pub have: u8,
    pub need: u8,
}

impl UnsealProgress {
    pub fn complete(&self) -> bool {
        self.have >= self.need
    }
}

/// A sealed deployment waiting for its custodians.
pub struct Unsealer {
    store: Store,
    record: SealRecord,
    shares: Vec<Share>,
    /// Where the presentations come from (`cli`, `server`): in each record.
    source: String,
    /// seq:hash of the records written without a MAC, to countersign.
    unmaced: Vec<String>,
}

impl std::fmt::Debug for Unsealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unsealer")
            .field("generation", &self.record.generation)
            .field("progress", &self.progress())
            .finish_non_exhaustive()
    }
}

impl Unsealer {
    /// The unsealer of this deployment, or None when it is not sealed.
    pub async fn load(store: Store, source: &str) -> Result<Option<Unsealer>, UnsealError> {
        Ok(store.seal_current().await?.map(|record| Unsealer {
            store,
            record,
            shares: Vec::new(),
            source: source.to_owned(),
            unmaced: Vec::new(),
        }))
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn record(&self) -> &SealRecord {
        &self.record
    }

    pub fn progress(&self) -> UnsealProgress {
        UnsealProgress {
            have: u8::try_from(self.shares.len()).unwrap_or(u8::MAX),
            need: self.record.threshold,
        }
    }

    pub fn status(&self) -> SealStatus {
        SealStatus::of(Some(&self.record), true, self.progress().have)
    }

    /// Take one custodian's share (its text form). Refused, changing
    /// nothing: unparsable text, a share of another split or generation, a
    /// share whose check value is not the recorded one, an index presented
    /// already, or a share past the M needed. Accepted or refused, it is
    /// recorded (`seal.unseal-share`, with the index, never the share);
    /// a share whose acceptance cannot be recorded does not count.
    pub async fn present(
        &mut self,
        share_text: &str,
        presenter: &str,
    ) -> Result<UnsealProgress, UnsealError> {
        let verdict = Share::parse(share_text)
            .map_err(UnsealError::Unparsable)
            .and_then(|share| self.admissible(share));
        let index = match &verdict {
            Ok(s) => Some(s.index()),
            Err(UnsealError::OtherSplit { index, .. })
            | Err(UnsealError::OtherThreshold { index, .. })
            | Err(UnsealError::WrongShare { index })
            | Err(UnsealError::Duplicate { index }) => Some(*index),
            Err(_) => None,
        };
        let have_after = self.progress().have + u8::from(verdict.is_ok());
        let mut details = self.details(have_after);
        if let Some(i) = index {
            details.insert("share_index".into(), i.to_string());
        }
        let (outcome, reason) = match &verdict {
            Ok(_) => (Outcome::Success, None),
            Err(e) => (Outcome::Refused, Some(e.to_string())),
        };
        self.write(presenter, "seal.unseal-share", outcome, reason, details)
            .await?;
        let share = verdict?;
        self.shares.push(share);
        Ok(self.progress())
    }

    fn admissible(&self, share: Share) -> Result<Share, UnsealError> {
        let progress = self.progress();
        if progress.complete() {
            return Err(UnsealError::Enough {
                need: progress.need,
            });
        }
        check_share(&self.record, &share)?;
        if self.shares.iter().any(|s| s.index() == share.index()) {
            return Err(UnsealError::Duplicate {
                index: share.index(),
            });
        }
        Ok(share)
    }

    /// With M shares in: combine them, confirm the secret's check value,
    /// derive the PIN, log in to the token with it (`hsm`'s own PIN is
    /// ignored) and open the service. On any failure the shares presented
    /// are dropped (which one was wrong cannot be told) and the custodians
    /// start again; the failure is recorded.
    pub async fn open(
        &mut self,
        hsm: HsmConfig,
        policy: KeyPolicy,
        source: &str,
    ) -> Result<KeyService, UnsealError> {
        let progress = self.progress();
        if !progress.complete() {
            return Err(UnsealError::TooFew {
                have: progress.have,
                need: progress.need,
            });
        }
        let shares = std::mem::take(&mut self.shares);
        let opened = self.login(&shares, hsm).await;
        drop(shares);
        let hsm = match opened {
            Ok(h) => h,
            Err(e) => {
                let details = self.details(0);
                self.write(
                    "kms",
                    "seal.unsealed",
                    Outcome::Failure,
                    Some(e.to_string()),
                    details,
                )
                .await?;
                return Err(e);
            }
        };
        let svc = KeyService::open(Arc::new(hsm), self.store.clone(), policy, source).await?;
        let audit = svc.audit();
        audit
            .countersign(std::mem::take(&mut self.unmaced))
            .await
            .map_err(UnsealError::Audit)?;
        audit
            .record(AuditEvent {
                actor: "kms".into(),
                role: "system".into(),
                action: "seal.unsealed".into(),
                outcome: Some(Outcome::Success),
                source: Some(self.source.clone()),
                details: self.details(progress.have),
                ..Default::default()
            })
            .await?;
        Ok(svc)
    }

    async fn login(&self, shares: &[Share], mut hsm: HsmConfig) -> Result<Hsm, UnsealError> {
        // Another node may have rotated or re-keyed since these were taken.
        match self.store.seal_current().await? {
            Some(now) if now.generation == self.record.generation => {}
            _ => return Err(UnsealError::Changed),
        }
        let secret = rebuild(&self.record, shares)?;
        hsm.pin = token_pin(&secret);
        drop(secret);
        hsm.role = Role::User;
        tokio::task::spawn_blocking(move || Hsm::open(&hsm))
            .await
            .map_err(|e| {
                UnsealError::Service(crate::service::ServiceError::Internal(format!(
                    "token login task failed: {e}"
                )))
            })?
            .map_err(UnsealError::Login)
    }

    fn details(&self, have: u8) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("generation".to_owned(), self.record.generation.to_string()),
            ("split_id".to_owned(), self.record.split_id.clone()),
            ("have".to_owned(), have.to_string()),
            ("need".to_owned(), self.record.threshold.to_string()),
        ])
    }

    async fn write(
        &mut self,
        actor: &str,
        action: &str,
        outcome: Outcome,
        reason: Option<String>,
        details: BTreeMap<String, String>,
    ) -> Result<(), UnsealError> {
        let rec = AuditLog::record_without_hsm(
            &self.store,
            AuditEvent {
                actor: actor.to_owned(),
                role: if actor == "kms" {
                    "system"
                } else {
                    "custodian"
                }
                .into(),
                action: action.to_owned(),
                request_id: Some(uuid::Uuid::new_v4().to_string()),
                outcome: Some(outcome),
                reason,
                source: Some(self.source.clone()),
                details,
                ..Default::default()
            },
        )
        .await?;
        self.unmaced.push(format!("{}:{}", rec.seq, rec.hash));
        Ok(())
    }
}
