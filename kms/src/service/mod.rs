//! Use cases: policy -> HSM -> store, in one place that the CLI (and later
//! the API and ceremonies) call. Handlers stay thin; every rule about keys
//! is enforced here or below.
//!
//! Write order, chosen so that a crash at any point leaves a state that
//! start-up reconciliation (`reconcile.rs`) can finish or report:
//! create: row `pending` -> token object -> row `present`;
//! destroy: row `destroying` -> object removed -> row `tombstone`.
//! The database never claims an object the token might not have without
//! saying so, and the token never holds an object we cannot name.

mod approvals;
mod audited;
mod backup;
mod cardkeys;
pub mod ceremony;
mod components_out;
mod custodians;
mod error;
mod keys;
mod reconcile;
mod seal;
mod sessions;

pub use approvals::{
    check_approval_record, ApprovalCheck, ApprovalRequest, Executed, HandOut, Operation,
    PolicyApproved,
};
pub use backup::{
    renew_lost_system_keys, BackupEntry, BackupFile, BackupKek, BackupKekRef, CheckMethod,
    RestoreReport, SkippedVersion, SystemKeysRenewal, BACKUP_FORMAT, BACKUP_KEK_ALGORITHM,
};
pub(crate) use cardkeys::issuer_key_names;
pub use cardkeys::{
    EmvCardKeys, EmvCardKeysRequest, SdBindingState, SdDiversification, SdRef, WrappedKey,
};
pub use components_out::{ComponentHolder, ComponentsIssued, GeneratedComponents, IssuedComponent};
pub use custodians::{
    CustodianSession, CustodianSettings, Enrolment, DEFAULT_IDLE_TIMEOUT_SECONDS,
    IDLE_TIMEOUT_RANGE,
};
pub use error::{AuthRefusal, ServiceError, SessionRefusal};
pub use keys::{CreateKey, ExportedKey, ImportComponents, ImportedKey, KeyView};
pub use reconcile::{Finding, ReconcileMode, ReconcileReport};
pub(crate) use sessions::key_set_names;
pub use sessions::{
    Scp02Diversification, Scp02Request, Scp02Session, Scp03Diversification, Scp03Request,
    Scp03Session,
};

use crate::audit::AuditLog;
use crate::hsm::{Hsm, HsmError};
use crate::policy::KeyPolicy;
use crate::store::Store;
use std::sync::Arc;

/// The person or system on whose behalf an operation runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor(String);

impl Actor {
    pub fn parse(s: &str) -> Result<Actor, ServiceError> {
        let ok =
            !s.is_empty() && s.len() <= 128 && s.chars().all(|c| c.is_ascii_graphic() || c == ' ');
        if ok {
            Ok(Actor(s.to_owned()))
        } else {
            Err(ServiceError::Invalid(
                "actor must be 1-128 printable ASCII characters".into(),
            ))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The key service.
#[derive(Clone)]
pub struct KeyService {
    hsm: Arc<Hsm>,
    store: Store,
    policy: Arc<KeyPolicy>,
    audit: AuditLog,
    /// Where acts come from, for the audit trail (`cli`, a peer address).
    source: String,
    /// Set by [`KeyService::on_behalf`] for one API request: the caller's
    /// role and request id in every record the request causes.
    caller: Option<Caller>,
    /// PIN policy and hasher for custodians and officers.
    custodians: Arc<custodians::CustodianSettings>,
}

/// Who an API request's acts are recorded as.
#[derive(Clone, Debug)]
struct Caller {
    role: &'static str,
    request_id: String,
}

impl KeyService {
    /// Open the service: the audit log (creating the audit keys on first
    /// use) and a first record saying who started it, with which policy.
    pub async fn open(
        hsm: Arc<Hsm>,
        store: Store,
        policy: KeyPolicy,
        source: &str,
    ) -> Result<Self, ServiceError> {
        let audit = AuditLog::open(store.clone(), hsm.clone())
            .await
            .map_err(ServiceError::Audit)?;
        let svc = Self {
            hsm,
            store,
            policy: Arc::new(policy),
            audit,
            source: source.to_owned(),
            caller: None,
            custodians: Arc::new(custodians::CustodianSettings::default()),
        };
        svc.audit
            .record(crate::audit::AuditEvent {
                actor: "kms".into(),
                role: svc.system_role().into(),
                action: "service.open".into(),
                outcome: Some(crate::audit::Outcome::Success),
                source: Some(svc.source.clone()),
                details: [
                    ("login".to_owned(), svc.role_name().to_owned()),
                    ("policy_digest".to_owned(), svc.policy.digest().to_owned()),
                ]
                .into(),
                ..Default::default()
            })
            .await
            .map_err(ServiceError::Audit)?;
        // Issue 5: a policy is used only once adopted under quorum.
        svc.adopt_policy().await?;

        Ok(svc)
    }

    /// The same service, recording its acts as done by an API caller: `role`
    /// (provisioner, ...) from `source` (the peer address), tied to the
    /// caller's `request_id`, so an officer finds every record of a request.
    pub fn on_behalf(&self, role: &'static str, source: String, request_id: &str) -> KeyService {
        KeyService {
            source,
            caller: Some(Caller {
                role,
                request_id: request_id.to_owned(),
            }),
            ..self.clone()
        }
    }

    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// Stop: record it, and sign the chain's head (a checkpoint at every
    /// shutdown, so a truncated tail is always detectable).
    pub async fn close(&self) -> Result<(), ServiceError> {
        self.audit
            .record(crate::audit::AuditEvent {
                actor: "kms".into(),
                role: self.system_role().into(),
                action: "service.close".into(),
                outcome: Some(crate::audit::Outcome::Success),
                source: Some(self.source.clone()),
                ..Default::default()
            })
            .await
            .map_err(ServiceError::Audit)?;
        self.audit
            .checkpoint_head()
            .await
            .map_err(ServiceError::Audit)?;
        Ok(())
    }

    /// The role of the KMS's own records (start, stop): "system", or the
    /// security officer's under that login, whose records carry no MAC.
    fn system_role(&self) -> &'static str {
        match self.hsm.role() {
            crate::hsm::Role::User => "system",
            crate::hsm::Role::SecurityOfficer => "security-officer",
        }
    }

    /// The role the service's acts are recorded in: an API caller's, or the
    /// login's.
    pub fn role_name(&self) -> &'static str {
        if let Some(c) = &self.caller {
            return c.role;
        }
        match self.hsm.role() {
            crate::hsm::Role::User => "operator",
            crate::hsm::Role::SecurityOfficer => "security-officer",
        }
    }

    pub fn hsm(&self) -> &Arc<Hsm> {
        &self.hsm
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn policy(&self) -> &KeyPolicy {
        &self.policy
    }

    /// Run a blocking HSM call off the async workers (PKCS#11 calls block).
    pub(crate) async fn on_hsm<T, F>(&self, f: F) -> Result<T, ServiceError>
    where
        T: Send + 'static,
        F: FnOnce(&Hsm) -> Result<T, HsmError> + Send + 'static,
    {
        let hsm = self.hsm.clone();
        tokio::task::spawn_blocking(move || f(&hsm))
            .await
            .map_err(|e| ServiceError::Internal(format!("HSM task failed: {e}")))?
            .map_err(ServiceError::from)
    }
}
