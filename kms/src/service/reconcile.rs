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
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReconcileReport {
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
                Finding::MissingObject { .. } | Finding::OrphanObject { .. }
            )
        })
    }
}

impl KeyService {
    pub async fn reconcile(&self) -> Result<ReconcileReport, ServiceError> {
        let objects = self.on_hsm(|h| h.list_objects()).await?;
        let on_token: HashSet<_> = objects.iter().filter_map(|o| o.object_id).collect();
        let rows = self.store.all_versions().await?;
        let mut report = ReconcileReport {
            versions_checked: rows.len(),
            objects_on_token: objects.len(),
            findings: Vec::new(),
        };
        let mut named = HashSet::new();
        for (key, v) in &rows {
            named.insert(v.object_id);
            let label = format!("{}/{}", key.tenant, key.name);
            let present = on_token.contains(&v.object_id);
            match (v.presence, present) {
                (Presence::Pending, true) => {
                    let r = super::KeyService::key_ref_unchecked(key, v);
                    let kcv = self.on_hsm(move |h| h.kcv(&r)).await?;
                    let kcv = kcv.map(hex::encode_upper).unwrap_or_default();
                    self.store.confirm_version(&key.id, v.version, &kcv).await?;
                    report.findings.push(Finding::ConfirmedPending {
                        key: label,
                        version: v.version,
                    });
                }
                (Presence::Pending, false) => {
                    self.store.abandon_pending(&key.id, v.version).await?;
                    report.findings.push(Finding::AbandonedPending {
                        key: label,
                        version: v.version,
                    });
                }
                (Presence::Destroying, _) => {
                    let id = v.object_id;
                    self.on_hsm(move |h| h.destroy(id)).await?;
                    let final_state = v
                        .state
                        .destroyed()
                        .unwrap_or(crate::model::KeyState::Destroyed);
                    self.store
                        .mark_tombstone(&key.id, v.version, final_state)
                        .await?;
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
                    // Destroyed on paper but not on the token: finish it.
                    let id = v.object_id;
                    self.on_hsm(move |h| h.destroy(id)).await?;
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
