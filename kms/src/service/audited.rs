//! Every use case goes through `audited`: invariant 4, nothing happens that
//! is not audited. A change writes its "attempt" record first and does
//! nothing if that fails (fail closed); every act, change or read, then
//! records its outcome (success, refused, failure) with the keys it touched.

use super::{Actor, AuthRefusal, KeyService, ServiceError};
use crate::audit::{AuditEvent, KeyMention, Outcome};
use crate::model::{KeyName, Tenant};
use crate::store::KeyRecord;
use std::collections::BTreeMap;
use std::future::Future;

/// What is about to happen, for the audit trail.
#[derive(Debug, Clone)]
pub(crate) struct Act {
    actor: String,
    action: &'static str,
    changes: bool,
    tenant: Option<String>,
    keys: Vec<KeyMention>,
    details: BTreeMap<String, String>,
    request_id: Option<String>,
    /// The role the actor acted in, when it is theirs rather than the
    /// service's (a custodian logging in).
    role: Option<&'static str>,
}

impl Act {
    /// An act that changes something: written ahead.
    pub(crate) fn change(actor: &Actor, action: &'static str) -> Act {
        Act {
            actor: actor.as_str().to_owned(),
            action,
            changes: true,
            tenant: None,
            keys: Vec::new(),
            details: BTreeMap::new(),
            request_id: None,
            role: None,
        }
    }

    /// Tie this act's records to `id` (chosen by the caller so that records
    /// the act writes on its own, such as `custodian.lock`, share it).
    pub(crate) fn with_request_id(mut self, id: &str) -> Act {
        self.request_id = Some(id.to_owned());
        self
    }

    /// Record the act in the actor's own role.
    pub(crate) fn role(mut self, role: &'static str) -> Act {
        self.role = Some(role);
        self
    }

    /// Use this id (a dual-control request's) to tie records together.
    pub(crate) fn correlate(mut self, id: &str) -> Act {
        self.request_id = Some(id.to_owned());
        self.details.insert("request".into(), id.to_owned());
        self
    }

    /// An act that only reads: recorded before its result is returned.
    pub(crate) fn read(actor: &Actor, action: &'static str) -> Act {
        Act {
            changes: false,
            ..Act::change(actor, action)
        }
    }

    pub(crate) fn tenant(mut self, t: &Tenant) -> Act {
        self.tenant = Some(t.to_string());
        self
    }

    pub(crate) fn key(mut self, t: &Tenant, n: &KeyName, version: Option<u32>) -> Act {
        self.tenant.get_or_insert_with(|| t.to_string());
        self.keys.push(KeyMention {
            tenant: t.to_string(),
            name: n.to_string(),
            version,
            kcv: None,
        });
        self
    }

    pub(crate) fn detail(mut self, k: &str, v: impl Into<String>) -> Act {
        self.details.insert(k.to_owned(), v.into());
        self
    }
}

/// The key mentions of a result (name, version, check value).
pub(crate) fn mention(rec: &KeyRecord) -> Vec<KeyMention> {
    let v = rec.current();
    vec![KeyMention {
        tenant: rec.tenant.to_string(),
        name: rec.name.to_string(),
        version: v.map(|v| v.version),
        kcv: v.and_then(|v| v.kcv.clone()),
    }]
}

pub(crate) fn no_mentions<T>(_: &T) -> Vec<KeyMention> {
    Vec::new()
}

fn outcome_of(e: &ServiceError) -> Outcome {
    match e {
        ServiceError::Invalid(_)
        | ServiceError::NotFound(_)
        | ServiceError::Refused(_)
        | ServiceError::Session(_)
        | ServiceError::Component(_)
        | ServiceError::Inconsistent(_) => Outcome::Refused,
        // A wrong PIN is a failed login; every other refusal of a person
        // (locked, outside their window, not enrolled) is a refusal.
        ServiceError::Auth(AuthRefusal::WrongPin { .. }) => Outcome::Failure,
        ServiceError::Auth(_) => Outcome::Refused,
        _ => Outcome::Failure,
    }
}

/// Merge mentions, the result's (with versions and KCVs) winning.
fn merge(mut before: Vec<KeyMention>, after: Vec<KeyMention>) -> Vec<KeyMention> {
    for a in after {
        match before.iter_mut().find(|b| {
            b.tenant == a.tenant
                && b.name == a.name
                && (b.version.is_none() || b.version == a.version)
        }) {
            Some(b) => *b = a,
            None => before.push(a),
        }
    }
    before
}

impl KeyService {
    pub(crate) async fn audited<T, Fut>(
        &self,
        act: Act,
        work: Fut,
        mentions: impl Fn(&T) -> Vec<KeyMention>,
    ) -> Result<T, ServiceError>
    where
        Fut: Future<Output = Result<T, ServiceError>>,
    {
        let base = AuditEvent {
            actor: act.actor.clone(),
            role: act.role.unwrap_or_else(|| self.role_name()).to_owned(),
            tenant: act.tenant.clone(),
            action: act.action.to_owned(),
            keys: act.keys.clone(),
            request_id: Some(
                act.request_id
                    .clone()
                    .or_else(|| self.caller.as_ref().map(|c| c.request_id.clone()))
                    .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            ),
            outcome: None,
            reason: None,
            source: Some(self.source.clone()),
            details: act.details.clone(),
        };
        if act.changes {
            self.audit
                .record(AuditEvent {
                    outcome: Some(Outcome::Attempt),
                    ..base.clone()
                })
                .await
                .map_err(ServiceError::Audit)?;
        }
        // The KMS's own keys (tenant `kms`: the audit MAC and checkpoint
        // keys) are managed by the KMS alone: rotating the MAC key would make
        // every earlier record unverifiable, suspending the signing key would
        // stop every command.
        let system_key = act.changes
            && act
                .keys
                .iter()
                .any(|k| k.tenant == crate::audit::SYSTEM_TENANT);
        let result = if system_key {
            Err(ServiceError::Refused(format!(
                "tenant {} holds the KMS's own keys; they are not managed through this interface",
                crate::audit::SYSTEM_TENANT
            )))
        } else {
            work.await
        };
        let (outcome, reason, keys) = match &result {
            Ok(v) => (Outcome::Success, None, merge(act.keys, mentions(v))),
            Err(e) => (outcome_of(e), Some(e.to_string()), act.keys),
        };
        let written = self
            .audit
            .record(AuditEvent {
                outcome: Some(outcome),
                reason,
                keys,
                ..base
            })
            .await;
        match (result, written) {
            (Ok(v), Ok(_)) => Ok(v),
            // A read's result is withheld; a change happened, its attempt
            // record stands, and the caller learns the outcome is unrecorded.
            (Ok(_), Err(e)) => Err(ServiceError::Audit(e)),
            (Err(e), _) => Err(e),
        }
    }
}
