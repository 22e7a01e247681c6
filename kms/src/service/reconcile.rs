//! Start-up reconciliation of key metadata with the objects on the token.
//!
//! Given the write order in `service/mod.rs`, every crash leaves one of the
//! situations below. Those whose outcome was already decided are finished
//! (a creation whose object exists is confirmed; a destruction in progress is
//! completed); the others are reported and the key is refused until an
//! operator acts (`ServiceError::Inconsistent`).

use super::{KeyService, ServiceError};
use crate::store::Presence;
use std::collections::HashSet;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "finding", rename_all = "kebab-case")]
pub enum Finding {
    /// A creation was recorded, the token has the object: confirmed now.
    ConfirmedPending { key: String, version: u32 },
    /// A creation was recorded but the object never appeared: row removed.
    AbandonedPending { key: String, version: u32 },
    /// A destruction was decided; it is completed now.
    FinishedDestroy { key: String, version: u32 },
    /// The database has a live version whose object is missing from the
    /// token. The key is refused until an operator restores it from backup
    /// or records its loss.
    MissingObject {
        key: String,
        version: u32,
        object_id: String,
    },
    /// The token has one of our objects that no row names. Left untouched:
    /// deleting a key nobody can name is not ours to decide.
    OrphanObject {
        object_id: String,
        class: String,
        label: String,
    },
    /// A row says "destroy" but no approved destroy request exists for it:
    /// the database may have been edited. Nothing is destroyed.
    UnapprovedDestroy { key: String, version: u32 },
    /// A creation younger than the grace period: probably still running in
    /// another process; left alone.
    InFlight { key: String, version: u32 },
}

/// Whether reconciliation may change anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReconcileMode {
    /// Only report (`kms status`): safe while other processes work.
    Report,
    /// Finish what was decided and clean up what never happened
    /// (`kms reconcile`, `kms init`, service start-up).
    Repair,
}

/// A pending creation younger than this may still be in progress elsewhere.
const PENDING_GRACE: time::Duration = time::Duration::minutes(5);

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReconcileReport {
    /// False for a report-only run: the findings say what a repair would do.
    pub repaired: bool,
    pub versions_checked: usize,
    pub objects_on_token: usize,
    pub findings: Vec<Finding>,
}

impl ReconcileReport {
    /// Findings that need a person (the others were repaired).
    pub fn problems(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| {
            matches!(
                f,
                Finding::MissingObject { .. }
                    | Finding::OrphanObject { .. }
                    | Finding::UnapprovedDestroy { .. }
            )
        })
    }
}

impl KeyService {
    /// Destroys that dual control approved: (tenant/name, version).
    async fn approved_destroys(&self) -> Result<HashSet<(String, u32)>, ServiceError> {
        let mut out = HashSet::new();
        for row in self
            .store
            .approval_requests_in(&["executing", "executed", "failed"])
            .await?
        {
            if let Ok(super::Operation::Destroy {
                tenant,
                key,
                version,
                ..
            }) = serde_json::from_str::<super::Operation>(&row.operation)
            {
                out.insert((format!("{tenant}/{key}"), version));
            }
        }
        Ok(out)
    }

    pub async fn reconcile(&self, mode: ReconcileMode) -> Result<ReconcileReport, ServiceError> {
        self.reconcile_with_grace(mode, PENDING_GRACE).await
    }

    /// As `reconcile`, with the grace period for pending creations given
    /// (tests use zero to simulate a crash long ago).
    pub async fn reconcile_with_grace(
        &self,
        mode: ReconcileMode,
        grace: time::Duration,
    ) -> Result<ReconcileReport, ServiceError> {
        let actor = super::Actor::parse("kms")?;
        let act = match mode {
            ReconcileMode::Report => super::audited::Act::read(&actor, "reconcile.report"),
            ReconcileMode::Repair => super::audited::Act::change(&actor, "reconcile.repair"),
        };
        self.audited(
            act,
            self.reconcile_now(mode, grace),
            |r: &ReconcileReport| {
                r.findings
                    .iter()
                    .filter_map(|f| match f {
                        Finding::ConfirmedPending { key, version }
                        | Finding::AbandonedPending { key, version }
                        | Finding::FinishedDestroy { key, version }
                        | Finding::UnapprovedDestroy { key, version }
                        | Finding::InFlight { key, version }
                        | Finding::MissingObject { key, version, .. } => {
                            let (t, n) = key.split_once('/')?;
                            Some(crate::audit::KeyMention {
                                tenant: t.to_owned(),
                                name: n.to_owned(),
                                version: Some(*version),
                                kcv: None,
                            })
                        }
                        Finding::OrphanObject { .. } => None,
                    })
                    .collect()
            },
        )
        .await
    }

    async fn reconcile_now(
        &self,
        mode: ReconcileMode,
        grace: time::Duration,
    ) -> Result<ReconcileReport, ServiceError> {
        let repair = mode == ReconcileMode::Repair;
        let approved = self.approved_destroys().await?;
        let now = time::OffsetDateTime::now_utc();
        let objects = self.on_hsm(|h| h.list_objects()).await?;
        let on_token: HashSet<_> = objects.iter().filter_map(|o| o.object_id).collect();
        let rows = self.store.all_versions().await?;
        let mut report = ReconcileReport {
            repaired: repair,
            versions_checked: rows.len(),
            objects_on_token: objects.len(),
            findings: Vec::new(),
        };
        let mut named = HashSet::new();
        for (key, v) in &rows {
            named.insert(v.object_id);
            let label = format!("{}/{}", key.tenant, key.name);
            let present = on_token.contains(&v.object_id);
            let version = v.version;
            if v.presence == Presence::Pending && now - v.updated_at < grace {
                report.findings.push(Finding::InFlight {
                    key: label,
                    version,
                });
                continue;
            }
            let destroy_approved = approved.contains(&(label.clone(), version));
            match (v.presence, present) {
                (Presence::Destroying, _) | (Presence::Tombstone, true) if !destroy_approved => {
                    report.findings.push(Finding::UnapprovedDestroy {
                        key: label,
                        version,
                    });
                }
                (Presence::Pending, true) => {
                    if repair {
                        let r = super::KeyService::key_ref_unchecked(key, v);
                        let kcv = self.on_hsm(move |h| h.kcv(&r)).await?;
                        let kcv = kcv.map(hex::encode_upper).unwrap_or_default();
                        self.store.confirm_version(&key.id, v.version, &kcv).await?;
                    }
                    report.findings.push(Finding::ConfirmedPending {
                        key: label,
                        version: v.version,
                    });
                }
                (Presence::Pending, false) => {
                    if repair {
                        self.store.abandon_pending(&key.id, v.version).await?;
                    }
                    report.findings.push(Finding::AbandonedPending {
                        key: label,
                        version: v.version,
                    });
                }
                (Presence::Destroying, _) => {
                    if repair {
                        let id = v.object_id;
                        self.on_hsm(move |h| h.destroy(id)).await?;
                        let final_state = v
                            .state
                            .destroyed()
                            .unwrap_or(crate::model::KeyState::Destroyed);
                        self.store
                            .mark_tombstone(&key.id, v.version, final_state)
                            .await?;
                    }
                    report.findings.push(Finding::FinishedDestroy {
                        key: label,
                        version: v.version,
                    });
                }
                (Presence::Present, false) => report.findings.push(Finding::MissingObject {
                    key: label,
                    version: v.version,
                    object_id: v.object_id.to_string(),
                }),
                (Presence::Present, true) | (Presence::Tombstone, false) => {}
                (Presence::Tombstone, true) => {
                    // Destroyed on paper (and approved) but not on the token: finish it.
                    if repair {
                        let id = v.object_id;
                        self.on_hsm(move |h| h.destroy(id)).await?;
                    }
                    report.findings.push(Finding::FinishedDestroy {
                        key: label,
                        version: v.version,
                    });
                }
            }
        }
        for o in &objects {
            if let Some(id) = o.object_id {
                if !named.contains(&id) {
                    report.findings.push(Finding::OrphanObject {
                        object_id: id.to_string(),
                        class: o.class.to_owned(),
                        label: o.label.clone(),
                    });
                }
            }
        }
        Ok(report)
    }
}

impl KeyService {
    pub(crate) fn key_ref_unchecked(
        rec: &crate::store::KeyRecord,
        v: &crate::store::VersionRecord,
    ) -> crate::hsm::KeyRef {
        crate::hsm::KeyRef {
            object_id: v.object_id,
            algorithm: rec.algorithm,
        }
    }
}
