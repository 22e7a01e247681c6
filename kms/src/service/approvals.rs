//! Dual control (invariant 3): a sensitive operation runs only after people
//! other than its requester approved exactly that operation.
//!
//! request -> approve (by M distinct others) -> execute (by the requester,
//! once). An approval is bound to the SHA-256 digest of the operation's
//! canonical JSON, so approving "export A under B" cannot be replayed for
//! anything else; requests expire.
//!
//! Issue 5 (quorum approvals): every step is taken by a person who proved
//! their PIN (a [`CustodianSession`], which only
//! [`KeyService::authenticate`] makes) and is in good standing. The policy
//! names, per action, how many approvals and from which roles
//! ([`crate::policy::Quorum`]). Each approver signs
//! [`crate::crypto::approval::approval_message`] with the key of the client
//! certificate they are enrolled with; the service checks the certificate
//! is theirs and the signature, and keeps both with the approval and in the
//! `request.approve` record, so the trail alone proves who agreed to what
//! ([`KeyService::verify_approvals`]). While the founding is open nothing
//! is requested: there may not yet be enough people to approve.

use super::audited::{mention, Act};
use super::custodians::{CustodianSession, EnrolmentTerms};
use super::{Actor, KeyService, ServiceError};
use crate::crypto::approval::{approval_message, verify_approval, ApprovalSignature};
use crate::hsm::WrapAlg;
use crate::model::{CustodianName, CustodianRole, KeyName, Pin, Tenant};
use crate::policy::SensitiveAction;
use crate::store::CustodianRecord;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

/// A sensitive operation, exactly as it will run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Operation {
    Export {
        tenant: String,
        key: String,
        version: Option<u32>,
        kek: String,
        wrap: Option<String>,
    },
    Destroy {
        tenant: String,
        key: String,
        version: u32,
        reason: Option<String>,
    },
    Compromise {
        tenant: String,
        key: String,
        version: Option<u32>,
        reason: String,
    },
    /// Create a KEK with CKA_TRUSTED, executed under the security officer's
    /// login: generated in the token, or, when `kcv` is given, entered as
    /// components whose combined check value must equal it.
    TrustedKek {
        tenant: String,
        key: String,
        algorithm: String,
        usage: String,
        kcv: Option<String>,
    },
    /// TSM-DATA-1: free a Security Domain bound to one card, so that it can
    /// be personalized for another (a re-issue). The binding itself stays
    /// in the audit trail.
    ReleaseSd {
        tenant: String,
        se_id: String,
        sd_aid: String,
        reason: String,
    },
    /// Issue 5: enrol a custodian, security officer or operator, bound to a
    /// client certificate, with an optional login window (TSM-AC-5) and
    /// idle timeout. The initial PIN is given when the approved request is
    /// executed (`execute_enrolment`), so it is never part of a request.
    EnrollCustodian {
        name: String,
        role: String,
        cert_sha256: Option<String>,
        login_window: Option<String>,
        idle_timeout_seconds: Option<u32>,
    },
    /// Issue 5: remove a person. Their row stays (marked removed); the last
    /// security officer able to act cannot be removed.
    RemoveCustodian { name: String },
    /// Issue 5: import a key entered as custodians' components, executed
    /// with the components (`execute_with`); the combined key's check
    /// value must equal `kcv`, the sender's.
    ImportKey {
        tenant: String,
        key: String,
        algorithm: String,
        usage: String,
        exportable: bool,
        kcv: String,
    },
    /// Issue 5: adopt the policy file whose text has this SHA-256 (upper-case
    /// hex) at the next start of the service.
    ChangePolicy { sha256: String },
    /// Issue 5, KM-2: a new key born as one XOR component per named
    /// custodian (2 or 3, distinct, enrolled custodians in good standing),
    /// for a partner with no KEK shared yet. Executed only by
    /// [`KeyService::execute_components`], which hands the components to
    /// the ceremony console and nowhere else.
    ExportComponents {
        tenant: String,
        key: String,
        algorithm: String,
        usage: String,
        exportable: bool,
        custodians: Vec<String>,
    },
    /// Issue 5, KM-2, invariant 3: the backup KEK `kms/<name>`, made in the
    /// token and imported CKA_TRUSTED under the security officer's login,
    /// its value split into `shares` Shamir shares of which `threshold`
    /// rebuild it. Executed only by [`KeyService::execute_backup_kek`],
    /// which hands the shares to the caller and nowhere else.
    BackupKek {
        name: String,
        threshold: u8,
        shares: u8,
    },
}

impl Operation {
    pub fn action(&self) -> SensitiveAction {
        match self {
            Operation::Export { .. } => SensitiveAction::Export,
            Operation::Destroy { .. } => SensitiveAction::Destroy,
            Operation::Compromise { .. } => SensitiveAction::Compromise,
            Operation::TrustedKek { .. } | Operation::BackupKek { .. } => SensitiveAction::Trust,
            Operation::ReleaseSd { .. } => SensitiveAction::Reissue,
            Operation::EnrollCustodian { .. } | Operation::RemoveCustodian { .. } => {
                SensitiveAction::Custodians
            }
            Operation::ImportKey { .. } => SensitiveAction::Import,
            Operation::ChangePolicy { .. } => SensitiveAction::Policy,
            Operation::ExportComponents { .. } => SensitiveAction::Export,
        }
    }

    /// serde_json writes struct fields in declaration order, so this is a
    /// stable canonical form for a given operation.
    pub fn canonical(&self) -> Result<String, ServiceError> {
        serde_json::to_string(self).map_err(|e| ServiceError::Internal(e.to_string()))
    }

    pub fn digest(&self) -> Result<String, ServiceError> {
        Ok(hex::encode_upper(Sha256::digest(
            self.canonical()?.as_bytes(),
        )))
    }

    fn validate(&self) -> Result<(), ServiceError> {
        match self {
            Operation::Export {
                tenant,
                key,
                kek,
                wrap,
                ..
            } => {
                Tenant::parse(tenant)?;
                KeyName::parse(key)?;
                KeyName::parse(kek)?;
                if let Some(w) = wrap {
                    w.parse::<WrapAlg>()?;
                }
            }
            Operation::Destroy { tenant, key, .. } => {
                Tenant::parse(tenant)?;
                KeyName::parse(key)?;
            }
            Operation::Compromise {
                tenant,
                key,
                reason,
                ..
            } => {
                Tenant::parse(tenant)?;
                KeyName::parse(key)?;
                if reason.trim().is_empty() {
                    return Err(ServiceError::Invalid("a compromise needs a reason".into()));
                }
            }
            Operation::TrustedKek {
                tenant,
                key,
                algorithm,
                usage,
                kcv,
            } => {
                Tenant::parse(tenant)?;
                KeyName::parse(key)?;
                let alg = algorithm.parse::<crate::model::Algorithm>()?;
                let usage = usage.parse::<crate::model::KeyUsage>()?;
                if !usage.is_wrapping() || !usage.allows(alg) || !alg.is_secret() {
                    return Err(ServiceError::Invalid(
                        "a trusted KEK is a secret kek, transport-kek or backup-kek".into(),
                    ));
                }
                if let Some(k) = kcv {
                    crate::crypto::Kcv::parse_hex(k)
                        .map_err(|e| ServiceError::Invalid(e.to_string()))?;
                }
            }
            Operation::ReleaseSd {
                tenant,
                se_id,
                sd_aid,
                reason,
            } => {
                Tenant::parse(tenant)?;
                super::SdRef::parse(se_id, sd_aid)?;
                if reason.trim().is_empty() {
                    return Err(ServiceError::Invalid("a re-issue needs a reason".into()));
                }
            }
            Operation::EnrollCustodian {
                name,
                role,
                cert_sha256,
                login_window,
                idle_timeout_seconds,
            } => {
                EnrolmentTerms::parse(
                    name,
                    role,
                    cert_sha256.as_deref(),
                    login_window.as_deref(),
                    *idle_timeout_seconds,
                )?;
            }
            Operation::RemoveCustodian { name } => {
                CustodianName::parse(name)?;
            }
            Operation::ImportKey {
                tenant,
                key,
                algorithm,
                usage,
                kcv,
                ..
            } => {
                Tenant::parse(tenant)?;
                KeyName::parse(key)?;
                let alg = algorithm.parse::<crate::model::Algorithm>()?;
                let usage = usage.parse::<crate::model::KeyUsage>()?;
                if !alg.is_secret() || !usage.allows(alg) {
                    return Err(ServiceError::Invalid(format!(
                        "a {usage} key cannot be {alg} entered as components"
                    )));
                }
                crate::crypto::Kcv::parse_hex(kcv)
                    .map_err(|e| ServiceError::Invalid(e.to_string()))?;
            }
            Operation::ChangePolicy { sha256 } => {
                if sha256.len() != 64
                    || !sha256
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
                {
                    return Err(ServiceError::Invalid(
                        "a policy change names the new policy's SHA-256, 64 upper-case hex digits"
                            .into(),
                    ));
                }
            }
            Operation::ExportComponents {
                tenant,
                key,
                algorithm,
                usage,
                custodians,
                ..
            } => {
                Tenant::parse(tenant)?;
                KeyName::parse(key)?;
                let alg = algorithm.parse::<crate::model::Algorithm>()?;
                let usage = usage.parse::<crate::model::KeyUsage>()?;
                if crate::crypto::KcvMethod::preferred(alg.family()).is_none()
                    || !alg.is_secret()
                    || !usage.allows(alg)
                {
                    return Err(ServiceError::Invalid(format!(
                        "a {usage} key cannot be {alg} generated as components (AES or TDES only)"
                    )));
                }
                super::components_out::check_holders(custodians)?;
            }
            Operation::BackupKek {
                name,
                threshold,
                shares,
            } => {
                KeyName::parse(name)?;
                if *threshold < 2 || shares < threshold {
                    return Err(ServiceError::Invalid(format!(
                        "a backup KEK needs 2 <= M <= N shares (M = {threshold}, N = {shares})"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Whether executing needs the security officer's login.
    pub fn needs_security_officer(&self) -> bool {
        matches!(
            self,
            Operation::TrustedKek { .. } | Operation::BackupKek { .. }
        )
    }

    /// Whether only a security officer may request and execute it: the
    /// decisions about people and the policy, and the backup KEK, whose
    /// shares the requester receives to hand out.
    pub fn officer_requests(&self) -> bool {
        self.action().officer_requests() || matches!(self, Operation::BackupKek { .. })
    }

    /// Whether executing needs key components typed by custodians.
    pub fn needs_components(&self) -> bool {
        matches!(
            self,
            Operation::TrustedKek { kcv: Some(_), .. } | Operation::ImportKey { .. }
        )
    }

    /// Whether executing hands key components out to custodians: only
    /// [`KeyService::execute_components`] runs it.
    pub fn hands_out_components(&self) -> bool {
        self.hands_out() == HandOut::Components
    }

    /// Which secrets executing hands back to the caller, if any; each kind
    /// has its own execute fn, and every other path refuses the request.
    pub fn hands_out(&self) -> HandOut {
        match self {
            Operation::ExportComponents { .. } => HandOut::Components,
            Operation::BackupKek { .. } => HandOut::BackupKekShares,
            _ => HandOut::Nothing,
        }
    }

    /// Whether executing needs the initial PIN of the person enrolled.
    pub fn needs_initial_pin(&self) -> bool {
        matches!(self, Operation::EnrollCustodian { .. })
    }

    /// The person an operation is about (the one enrolled or removed).
    pub fn custodian(&self) -> Option<&str> {
        match self {
            Operation::EnrollCustodian { name, .. } | Operation::RemoveCustodian { name } => {
                Some(name)
            }
            _ => None,
        }
    }

    /// The tenant, and the key when the operation is about one; None for
    /// operations about people.
    fn subject(&self) -> Option<(&str, Option<&str>)> {
        match self {
            Operation::Export { tenant, key, .. }
            | Operation::Destroy { tenant, key, .. }
            | Operation::Compromise { tenant, key, .. }
            | Operation::TrustedKek { tenant, key, .. }
            | Operation::ImportKey { tenant, key, .. }
            | Operation::ExportComponents { tenant, key, .. } => Some((tenant, Some(key))),
            Operation::BackupKek { name, .. } => Some((crate::audit::SYSTEM_TENANT, Some(name))),
            Operation::ReleaseSd { tenant, .. } => Some((tenant, None)),
            Operation::EnrollCustodian { .. }
            | Operation::RemoveCustodian { .. }
            | Operation::ChangePolicy { .. } => None,
        }
    }
}

/// The secrets an execution hands back to its caller (the ceremony
/// console or the CLI that writes share files), never to a record or row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandOut {
    Nothing,
    /// XOR components, one per custodian: [`KeyService::execute_components`].
    Components,
    /// The backup KEK's Shamir shares: [`KeyService::execute_backup_kek`].
    BackupKekShares,
}

/// What an execution handed back, for its dedicated execute fn.
enum HandedOut {
    Components(super::GeneratedComponents),
    BackupKek(super::BackupKek),
}

/// A request as shown to people: what, who asked, who agreed.
#[derive(Debug, Clone, Serialize)]
pub struct ApprovalRequest {
    pub id: String,
    pub operation: Operation,
    pub digest: String,
    pub requested_by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    pub status: String,
    pub approvers: Vec<String>,
    /// The quorum of the operation's action, by the running policy.
    pub approvals_needed: u32,
    pub approver_roles: Vec<CustodianRole>,
}

/// What executing a request produced.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Executed {
    Exported(super::ExportedKey),
    Key(crate::store::KeyRecord),
    /// The binding a re-issue released.
    Released(crate::store::SdBinding),
    /// The person enrolled or removed.
    Custodian(crate::store::CustodianRecord),
    /// A policy approved, to be adopted at the next start.
    Policy(PolicyApproved),
    /// A key generated as components: its record and check values only;
    /// the components went to their custodians alone.
    Components(super::ComponentsIssued),
}

/// An executed `ChangePolicy`: the service adopts the policy with this
/// digest when it next starts with it.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyApproved {
    pub sha256: String,
    pub request: String,
}

/// One `request.approve` record of the trail, re-checked from its own
/// fields: the certificate's fingerprint, and the signature over the
/// approval message under that certificate.
#[derive(Debug, Clone, Serialize)]
pub struct ApprovalCheck {
    pub seq: u64,
    pub request: String,
    pub approver: String,
    pub digest: String,
    /// None when it verifies; else why not.
    pub problem: Option<String>,
}

impl KeyService {
    fn quorum_of(&self, op: &Operation) -> crate::policy::Quorum {
        self.policy.quorum(op.action())
    }

    async fn load_request(&self, id: &str) -> Result<ApprovalRequest, ServiceError> {
        let row = self
            .store
            .approval_request(id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("approval request {id}")))?;
        let operation: Operation = serde_json::from_str(&row.operation)
            .map_err(|e| ServiceError::Inconsistent(format!("request {id}: {e}")))?;
        if operation.digest()? != row.digest {
            return Err(ServiceError::Inconsistent(format!(
                "request {id}: the stored operation does not match its digest"
            )));
        }
        let quorum = self.quorum_of(&operation);
        Ok(ApprovalRequest {
            id: row.id,
            operation,
            digest: row.digest,
            requested_by: row.requested_by,
            expires_at: row.expires_at,
            status: row.status,
            approvers: row.approvers,
            approvals_needed: quorum.approvals,
            approver_roles: quorum.roles,
        })
    }

    /// A request, unaudited: for the service's own decisions (which login
    /// to execute under). People see requests through `show_request`.
    pub async fn approval(&self, id: &str) -> Result<ApprovalRequest, ServiceError> {
        self.load_request(id).await
    }

    pub async fn show_request(
        &self,
        actor: &Actor,
        id: &str,
    ) -> Result<ApprovalRequest, ServiceError> {
        let act = Act::read(actor, "request.show").correlate(id);
        self.audited(act, self.load_request(id), request_mentions)
            .await
    }

    /// Ask for a sensitive operation, as a person who proved their PIN.
    /// Nothing happens to any key yet.
    pub async fn request(
        &self,
        who: &CustodianSession,
        op: Operation,
    ) -> Result<ApprovalRequest, ServiceError> {
        let actor = who.actor();
        let id = uuid::Uuid::new_v4().to_string();
        let act = op_act(Act::change(&actor, "request.create"), &op)
            .correlate(&id)
            .role(who.role().as_str())
            .detail("digest", op.digest()?);
        self.audited(
            act,
            self.request_now(who, op.clone(), id.clone()),
            request_mentions,
        )
        .await
    }

    /// The person behind a session, in good standing now, still bound to
    /// the certificate they logged in with.
    async fn standing_of(
        &self,
        who: &CustodianSession,
        role: Option<CustodianRole>,
    ) -> Result<CustodianRecord, ServiceError> {
        let rec = self
            .require_standing(&who.actor(), role, OffsetDateTime::now_utc())
            .await?;
        if rec.cert_sha256.as_deref() != who.cert_sha256() {
            return Err(ServiceError::Refused(format!(
                "{}'s certificate binding changed since they logged in; log in again",
                rec.name
            )));
        }
        Ok(rec)
    }

    async fn request_now(
        &self,
        who: &CustodianSession,
        op: Operation,
        id: String,
    ) -> Result<ApprovalRequest, ServiceError> {
        op.validate()?;
        let officer = op
            .officer_requests()
            .then_some(CustodianRole::SecurityOfficer);
        self.standing_of(who, officer).await?;
        if self.store.founding_closed().await?.is_none() {
            return Err(ServiceError::Refused(
                "the founding is still open: enrol the people, then close it (kms custodian close-founding) before any dual-controlled request".into(),
            ));
        }
        let actor = who.actor();
        let actor = &actor;
        let ttl = Duration::minutes(i64::from(self.policy.dual_control.request_ttl_minutes));
        if let Operation::ChangePolicy { sha256 } = &op {
            if sha256 == self.policy.digest() {
                return Err(ServiceError::Invalid(
                    "this is the policy in force already".into(),
                ));
            }
        }
        if op.subject().is_none() {
            self.check_custodian_request(actor, &op).await?;
            self.store
                .insert_approval_request(
                    &id,
                    &op.canonical()?,
                    &op.digest()?,
                    actor.as_str(),
                    OffsetDateTime::now_utc() + ttl,
                )
                .await?;
            return self.load_request(&id).await;
        }
        // Refuse requests that cannot run, before anyone is asked.
        if let Operation::ReleaseSd {
            tenant,
            se_id,
            sd_aid,
            ..
        } = &op
        {
            let sd = super::SdRef::parse(se_id, sd_aid)?;
            if self
                .store
                .sd_binding(tenant, sd.se_id(), sd.sd_aid())
                .await?
                .is_none()
            {
                return Err(ServiceError::NotFound(format!(
                    "no card is bound to SD {} on SE {} in {tenant}",
                    sd.sd_aid(),
                    sd.se_id()
                )));
            }
        }
        let Some((tenant, key)) = op.subject() else {
            return Err(ServiceError::Internal(
                "an operation about people reached the key checks".into(),
            ));
        };
        let tenant = Tenant::parse(tenant)?;
        let key = key.map(KeyName::parse).transpose()?;
        let existing = match &key {
            Some(k) => self.store.find_key(&tenant, k).await?,
            None => None,
        };
        match (&op, existing) {
            (Operation::ReleaseSd { .. }, _) => {}
            (Operation::TrustedKek { .. }, Some(_)) => {
                return Err(ServiceError::Invalid(format!(
                    "tenant {tenant} already has a key named {}",
                    key.as_ref().map(KeyName::as_str).unwrap_or_default()
                )))
            }
            (Operation::TrustedKek { .. }, None) => {}
            // Invariant 3: the trusted KEK is new, made only by this request.
            (Operation::BackupKek { name, .. }, Some(_)) => {
                return Err(ServiceError::Refused(format!(
                    "{}/{name} already exists",
                    crate::audit::SYSTEM_TENANT
                )))
            }
            (Operation::BackupKek { .. }, None) => {}
            (Operation::ImportKey { .. }, Some(_)) => {
                return Err(ServiceError::Invalid(format!(
                    "tenant {tenant} already has a key named {}",
                    key.as_ref().map(KeyName::as_str).unwrap_or_default()
                )))
            }
            (
                Operation::ImportKey {
                    usage, exportable, ..
                },
                None,
            ) => {
                let usage = usage.parse::<crate::model::KeyUsage>()?;
                if *exportable && !self.policy.may_export(usage) {
                    return Err(ServiceError::Refused(format!(
                        "policy does not allow exportable {usage} keys"
                    )));
                }
            }
            (Operation::ExportComponents { .. }, Some(_)) => {
                return Err(ServiceError::Invalid(format!(
                    "tenant {tenant} already has a key named {}",
                    key.as_ref().map(KeyName::as_str).unwrap_or_default()
                )))
            }
            (
                Operation::ExportComponents {
                    usage,
                    exportable,
                    custodians,
                    ..
                },
                None,
            ) => {
                let usage = usage.parse::<crate::model::KeyUsage>()?;
                if *exportable && !self.policy.may_export(usage) {
                    return Err(ServiceError::Refused(format!(
                        "policy does not allow exportable {usage} keys"
                    )));
                }
                self.check_component_holders(custodians).await?;
            }
            (_, None) => {
                return Err(ServiceError::NotFound(format!(
                    "{tenant}/{}",
                    key.as_ref().map(KeyName::as_str).unwrap_or_default()
                )))
            }
            (_, Some(_)) => {}
        }
        // The id was chosen by `request` so the trail can name it up front.

        self.store
            .insert_approval_request(
                &id,
                &op.canonical()?,
                &op.digest()?,
                actor.as_str(),
                OffsetDateTime::now_utc() + ttl,
            )
            .await?;
        self.load_request(&id).await
    }

    /// Approve a request, as a person who proved their PIN. `digest` is
    /// what the approver was shown; it must match the stored operation's
    /// digest. `sig` is their signature over
    /// `approval_message(id, digest, name)` and the certificate they are
    /// enrolled with; both are kept with the approval and in the record.
    pub async fn approve(
        &self,
        who: &CustodianSession,
        id: &str,
        digest: &str,
        sig: &ApprovalSignature,
    ) -> Result<ApprovalRequest, ServiceError> {
        let mut act = Act::change(&who.actor(), "request.approve")
            .correlate(id)
            .role(who.role().as_str())
            .detail("digest", digest)
            .detail("approver_cert_sha256", sig.cert_sha256())
            .detail("approval_signature", hex::encode_upper(&sig.signature))
            .detail("approver_cert", hex::encode_upper(&sig.cert_der));
        if let Ok(req) = self.load_request(id).await {
            act = op_act(act, &req.operation);
        }
        self.audited(
            act,
            self.approve_now(who, id, digest, sig),
            request_mentions,
        )
        .await
    }

    async fn approve_now(
        &self,
        who: &CustodianSession,
        id: &str,
        digest: &str,
        sig: &ApprovalSignature,
    ) -> Result<ApprovalRequest, ServiceError> {
        let approver = who.name().as_str();
        let req = self.load_request(id).await?;
        self.check_open(&req)?;
        if !req.digest.eq_ignore_ascii_case(digest) {
            return Err(ServiceError::Refused(
                "this approval is for a different operation (digest mismatch)".into(),
            ));
        }
        if approver == req.requested_by {
            return Err(ServiceError::Refused(
                "the requester cannot approve their own request".into(),
            ));
        }
        if req.approvers.iter().any(|a| a == approver) {
            return Err(ServiceError::Refused(format!(
                "{approver} has already approved this request"
            )));
        }
        if req.operation.custodian() == Some(approver) {
            return Err(ServiceError::Refused(
                "the person enrolled or removed cannot approve it".into(),
            ));
        }
        let rec = self.standing_of(who, None).await?;
        if !req.approver_roles.contains(&rec.role) {
            return Err(ServiceError::Auth(super::AuthRefusal::Role {
                name: approver.to_owned(),
                role: rec.role.to_string(),
                needed: req
                    .approver_roles
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(" or "),
            }));
        }
        // The signature proves the approval only if the certificate is the
        // one this person was enrolled with.
        match &rec.cert_sha256 {
            None => {
                return Err(ServiceError::Refused(format!(
                    "{approver} is bound to no certificate, so cannot sign an approval"
                )))
            }
            Some(bound) if !bound.eq_ignore_ascii_case(&sig.cert_sha256()) => {
                return Err(ServiceError::Refused(format!(
                    "the certificate of this approval is not the one {approver} is enrolled with"
                )))
            }
            Some(_) => {}
        }
        verify_approval(
            &sig.cert_der,
            &approval_message(id, &req.digest, approver),
            &sig.signature,
        )
        .map_err(|e| ServiceError::Refused(e.to_string()))?;
        self.store
            .add_approval(id, approver, &req.digest, &sig.signature, &sig.cert_der)
            .await?;
        self.load_request(id).await
    }

    fn check_open(&self, req: &ApprovalRequest) -> Result<(), ServiceError> {
        if req.status != "open" {
            return Err(ServiceError::Refused(format!(
                "request {} is {}",
                req.id, req.status
            )));
        }
        if req.expires_at <= OffsetDateTime::now_utc() {
            return Err(ServiceError::Refused(format!(
                "request {} has expired",
                req.id
            )));
        }
        Ok(())
    }

    /// Run an approved request, once, as its requester.
    pub async fn execute(
        &self,
        who: &CustodianSession,
        id: &str,
    ) -> Result<Executed, ServiceError> {
        self.execute_with(who, id, Vec::new()).await
    }

    /// As `execute`, for operations that take custodians' components
    /// (a trusted KEK entered by components).
    pub async fn execute_with(
        &self,
        who: &CustodianSession,
        id: &str,
        components: Vec<(crate::crypto::Component, Option<crate::crypto::Kcv>)>,
    ) -> Result<Executed, ServiceError> {
        self.execute_inputs(
            who,
            id,
            Inputs {
                components,
                initial_pin: None,
                hand_out: HandOut::Nothing,
            },
        )
        .await
    }

    /// As `execute`, for an enrolment: `initial_pin` is the new person's
    /// first PIN (checked against the PIN policy, stored only hashed, to be
    /// changed at first use). A weak PIN is refused before the request is
    /// used up.
    pub async fn execute_enrolment(
        &self,
        who: &CustodianSession,
        id: &str,
        initial_pin: Pin,
    ) -> Result<Executed, ServiceError> {
        self.execute_inputs(
            who,
            id,
            Inputs {
                components: Vec::new(),
                initial_pin: Some(initial_pin),
                hand_out: HandOut::Nothing,
            },
        )
        .await
    }

    /// Run an approved `ExportComponents` request, once, as its requester:
    /// the key is generated as components and imported, and the components
    /// are handed back to the caller (the ceremony console, which shows
    /// each to its custodian alone). They are in no record, row or
    /// [`Executed`] value; the trail holds the check values.
    pub async fn execute_components(
        &self,
        who: &CustodianSession,
        id: &str,
    ) -> Result<super::GeneratedComponents, ServiceError> {
        match self
            .execute_handing_out(who, id, HandOut::Components)
            .await?
        {
            HandedOut::Components(g) => Ok(g),
            _ => Err(ServiceError::Internal(
                "the request ran but handed out no components".into(),
            )),
        }
    }

    /// Run an approved `BackupKek` request, once, as its requester (a
    /// security officer) under the security officer's login of the token
    /// (invariant 3: nobody alone marks a KEK trusted). The shares are
    /// handed back to the caller alone, to give one to each custodian;
    /// they are in no record, row or [`Executed`] value.
    pub async fn execute_backup_kek(
        &self,
        who: &CustodianSession,
        id: &str,
    ) -> Result<super::BackupKek, ServiceError> {
        match self
            .execute_handing_out(who, id, HandOut::BackupKekShares)
            .await?
        {
            HandedOut::BackupKek(k) => Ok(k),
            _ => Err(ServiceError::Internal(
                "the request ran but handed out no backup KEK shares".into(),
            )),
        }
    }

    /// Run an approved request whose result goes to the caller alone
    /// (components, shares): what it handed out.
    async fn execute_handing_out(
        &self,
        who: &CustodianSession,
        id: &str,
        hand_out: HandOut,
    ) -> Result<HandedOut, ServiceError> {
        let mut out = None;
        self.execute_inputs_into(
            who,
            id,
            Inputs {
                components: Vec::new(),
                initial_pin: None,
                hand_out,
            },
            &mut out,
        )
        .await?;
        out.ok_or_else(|| ServiceError::Internal("the request ran but handed out nothing".into()))
    }

    async fn execute_inputs(
        &self,
        who: &CustodianSession,
        id: &str,
        inputs: Inputs,
    ) -> Result<Executed, ServiceError> {
        self.execute_inputs_into(who, id, inputs, &mut None).await
    }

    async fn execute_inputs_into(
        &self,
        who: &CustodianSession,
        id: &str,
        inputs: Inputs,
        out: &mut Option<HandedOut>,
    ) -> Result<Executed, ServiceError> {
        let actor = &who.actor();
        let mut act = Act::change(actor, "request.execute")
            .correlate(id)
            .role(who.role().as_str());
        if let Ok(req) = self.load_request(id).await {
            act = op_act(act, &req.operation)
                .detail("digest", req.digest.clone())
                .detail("requested_by", req.requested_by.clone())
                .detail("approvers", req.approvers.join(","));
        }
        self.audited(
            act,
            self.execute_now(who, id, inputs, out),
            |e: &Executed| match e {
                Executed::Key(k) => mention(k),
                Executed::Components(c) => mention(&c.key),
                Executed::Released(_) | Executed::Custodian(_) | Executed::Policy(_) => Vec::new(),
                Executed::Exported(x) => vec![
                    crate::audit::KeyMention {
                        tenant: x.tenant.to_string(),
                        name: x.name.to_string(),
                        version: Some(x.version),
                        kcv: x.kcv.clone(),
                    },
                    crate::audit::KeyMention {
                        tenant: x.tenant.to_string(),
                        name: x.kek.to_string(),
                        version: Some(x.kek_version),
                        kcv: None,
                    },
                ],
            },
        )
        .await
    }

    async fn execute_now(
        &self,
        who: &CustodianSession,
        id: &str,
        inputs: Inputs,
        out: &mut Option<HandedOut>,
    ) -> Result<Executed, ServiceError> {
        let actor = &who.actor();
        let Inputs {
            components,
            initial_pin,
            hand_out,
        } = inputs;
        let req = self.load_request(id).await?;
        // KM-2: components exist only for the console that shows each to its
        // custodian; any other execution path is refused before the request
        // is used up.
        if req.operation.hands_out() != hand_out {
            return Err(ServiceError::Invalid(match (req.operation.hands_out(), hand_out) {
                (HandOut::Components, _) => "this request generates a key as custodians' components: it runs only in the key-export-components ceremony (kms-ceremony run key-export-components)".into(),
                (HandOut::BackupKekShares, _) => "this request creates the backup KEK and its custodians' shares: it runs only as `kms backup kek-execute` or in the backup-kek ceremony".into(),
                (HandOut::Nothing, HandOut::Components) => "this request hands out no components".into(),
                (HandOut::Nothing, _) => "this request is not the creation of a backup KEK".into(),
            }));
        }
        if req.operation.needs_initial_pin() != initial_pin.is_some() {
            return Err(ServiceError::Invalid(if initial_pin.is_none() {
                "this request needs the initial PIN of the person enrolled".into()
            } else {
                "this request takes no PIN".into()
            }));
        }
        if req.operation.needs_security_officer()
            && self.hsm.role() != crate::hsm::Role::SecurityOfficer
        {
            return Err(ServiceError::Refused(
                "this request runs under the security officer's login".into(),
            ));
        }
        if req.operation.needs_components() == components.is_empty() {
            return Err(ServiceError::Invalid(if components.is_empty() {
                "this request needs the custodians' components".into()
            } else {
                "this request takes no components".into()
            }));
        }
        self.check_open(&req)?;
        if actor.as_str() != req.requested_by {
            return Err(ServiceError::Refused(
                "only the requester executes an approved request".into(),
            ));
        }
        // The requester is still in good standing (and still a security
        // officer for operations about people or the policy).
        let officer = req
            .operation
            .officer_requests()
            .then_some(CustodianRole::SecurityOfficer);
        self.standing_of(who, officer).await?;
        // Count the approvals that still stand: by enrolled people other
        // than the requester, not removed since, in a role the quorum
        // accepts (the policy may have changed since they approved).
        let mut standing = 0u32;
        for a in req.approvers.iter().filter(|a| **a != req.requested_by) {
            if let Some(rec) = self.store.custodian(a).await? {
                if !rec.is_removed() && req.approver_roles.contains(&rec.role) {
                    standing += 1;
                }
            }
        }
        if self.policy.needs_approval(req.operation.action()) && standing < req.approvals_needed {
            return Err(ServiceError::Refused(format!(
                "{} of {} approvals so far",
                standing, req.approvals_needed
            )));
        }
        // The initial PIN passes the policy (hashed now, so a weak one does
        // not use the request up).
        let mut pin_hash = None;
        if let Some(pin) = &initial_pin {
            pin_hash = Some(self.new_pin_hash(pin).await?);
        }
        // Claim it first: a request runs at most once, even if two
        // executions race; its final status says how it ended.
        if !self
            .store
            .move_approval_request(id, "open", "executing")
            .await?
        {
            return Err(ServiceError::Refused(format!(
                "request {id} is no longer open"
            )));
        }
        let why = format!("request {id} approved by {}", req.approvers.join(", "));
        let result = self
            .run_operation(actor, id, req.operation, &why, components, pin_hash, out)
            .await;
        let status = if result.is_ok() { "executed" } else { "failed" };
        self.store
            .move_approval_request(id, "executing", status)
            .await?;
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_operation(
        &self,
        actor: &Actor,
        id: &str,
        operation: Operation,
        why: &str,
        components: Vec<(crate::crypto::Component, Option<crate::crypto::Kcv>)>,
        pin_hash: Option<crate::crypto::PinHash>,
        out: &mut Option<HandedOut>,
    ) -> Result<Executed, ServiceError> {
        match operation {
            Operation::Export {
                tenant,
                key,
                version,
                kek,
                wrap,
            } => {
                let wrap = wrap.map(|w| w.parse::<WrapAlg>()).transpose()?;
                let out = self
                    .export_now(
                        actor,
                        &Tenant::parse(&tenant)?,
                        &KeyName::parse(&key)?,
                        version,
                        &KeyName::parse(&kek)?,
                        wrap,
                    )
                    .await?;
                Ok(Executed::Exported(out))
            }
            Operation::Destroy {
                tenant,
                key,
                version,
                reason,
            } => {
                let reason = format!("{}; {why}", reason.unwrap_or_else(|| "destroyed".into()));
                let rec = self
                    .destroy_now(
                        actor,
                        &Tenant::parse(&tenant)?,
                        &KeyName::parse(&key)?,
                        version,
                        Some(&reason),
                    )
                    .await?;
                Ok(Executed::Key(rec))
            }
            Operation::Compromise {
                tenant,
                key,
                version,
                reason,
            } => {
                let reason = format!("{reason}; {why}");
                let rec = self
                    .transition_now(
                        actor,
                        &Tenant::parse(&tenant)?,
                        &KeyName::parse(&key)?,
                        version,
                        crate::model::Transition::Compromise,
                        Some(&reason),
                    )
                    .await?;
                Ok(Executed::Key(rec))
            }
            Operation::TrustedKek {
                tenant,
                key,
                algorithm,
                usage,
                kcv,
            } => {
                let req = super::CreateKey {
                    tenant: Tenant::parse(&tenant)?,
                    name: KeyName::parse(&key)?,
                    algorithm: algorithm.parse()?,
                    usage: usage.parse()?,
                    exportable: false,
                    activate: true,
                    trusted: true,
                };
                let rec = match kcv {
                    None => self.create_now(actor, req).await?,
                    Some(k) => {
                        let expected_kcv = crate::crypto::Kcv::parse_hex(&k)
                            .map_err(|e| ServiceError::Invalid(e.to_string()))?;
                        self.import_components_now(
                            actor,
                            super::ImportComponents {
                                key: req,
                                components,
                                expected_kcv,
                            },
                        )
                        .await?
                        .key
                    }
                };
                self.store
                    .record_event(&rec.id, Some(1), actor.as_str(), "trust", Some(why))
                    .await?;
                Ok(Executed::Key(rec))
            }
            Operation::ReleaseSd {
                tenant,
                se_id,
                sd_aid,
                ..
            } => {
                let sd = super::SdRef::parse(&se_id, &sd_aid)?;
                match self
                    .store
                    .release_sd(&tenant, sd.se_id(), sd.sd_aid())
                    .await?
                {
                    Some(b) => Ok(Executed::Released(b)),
                    None => Err(ServiceError::NotFound(format!(
                        "no card is bound to SD {} on SE {} in {tenant} any more",
                        sd.sd_aid(),
                        sd.se_id()
                    ))),
                }
            }
            Operation::EnrollCustodian {
                name,
                role,
                cert_sha256,
                login_window,
                idle_timeout_seconds,
            } => {
                let terms = EnrolmentTerms::parse(
                    &name,
                    &role,
                    cert_sha256.as_deref(),
                    login_window.as_deref(),
                    idle_timeout_seconds,
                )?;
                let pin_hash = pin_hash.ok_or_else(|| {
                    ServiceError::Invalid(
                        "this request needs the initial PIN of the person enrolled".into(),
                    )
                })?;
                let rec = self.enroll_approved(actor, id, terms, pin_hash).await?;
                Ok(Executed::Custodian(rec))
            }
            Operation::RemoveCustodian { name } => {
                let rec = self.remove_approved(actor, id, &name).await?;
                Ok(Executed::Custodian(rec))
            }
            Operation::ImportKey {
                tenant,
                key,
                algorithm,
                usage,
                exportable,
                kcv,
            } => {
                let expected_kcv = crate::crypto::Kcv::parse_hex(&kcv)
                    .map_err(|e| ServiceError::Invalid(e.to_string()))?;
                let rec = self
                    .import_components_now(
                        actor,
                        super::ImportComponents {
                            key: super::CreateKey {
                                tenant: Tenant::parse(&tenant)?,
                                name: KeyName::parse(&key)?,
                                algorithm: algorithm.parse()?,
                                usage: usage.parse()?,
                                exportable,
                                activate: true,
                                trusted: false,
                            },
                            components,
                            expected_kcv,
                        },
                    )
                    .await?
                    .key;
                self.store
                    .record_event(&rec.id, Some(1), actor.as_str(), "import", Some(why))
                    .await?;
                Ok(Executed::Key(rec))
            }
            Operation::ChangePolicy { sha256 } => {
                self.store
                    .approve_policy(&sha256, actor.as_str(), id)
                    .await?;
                Ok(Executed::Policy(PolicyApproved {
                    sha256,
                    request: id.to_owned(),
                }))
            }
            Operation::ExportComponents {
                tenant,
                key,
                algorithm,
                usage,
                exportable,
                custodians,
            } => {
                let holders = super::components_out::check_holders(&custodians)?;
                // Standing again at execution: a holder locked or removed
                // since the request must not receive a component.
                self.check_component_holders(&custodians).await?;
                let generated = self
                    .generate_components_now(
                        actor,
                        super::CreateKey {
                            tenant: Tenant::parse(&tenant)?,
                            name: KeyName::parse(&key)?,
                            algorithm: algorithm.parse()?,
                            usage: usage.parse()?,
                            exportable,
                            activate: true,
                            trusted: false,
                        },
                        &holders,
                    )
                    .await?;
                self.store
                    .record_event(
                        &generated.key.key.id,
                        Some(1),
                        actor.as_str(),
                        "generate-components",
                        Some(&format!(
                            "{why}; one component each for {}",
                            custodians.join(", ")
                        )),
                    )
                    .await?;
                let issued = generated.issued();
                *out = Some(HandedOut::Components(generated));
                Ok(Executed::Components(issued))
            }
            Operation::BackupKek {
                name,
                threshold,
                shares,
            } => {
                // Boxed: this future nests two audited acts and would make
                // every execution's future (and stack) larger.
                let made = Box::pin(self.create_backup_kek(
                    actor,
                    id,
                    &KeyName::parse(&name)?,
                    threshold,
                    shares,
                ))
                .await?;
                self.store
                    .record_event(&made.key.id, Some(1), actor.as_str(), "trust", Some(why))
                    .await?;
                let key = made.key.clone();
                *out = Some(HandedOut::BackupKek(made));
                Ok(Executed::Key(key))
            }
        }
    }

    /// Refuse a request about people that could not run, before anyone is
    /// asked: the requester must be a security officer in good standing; an
    /// enrolment's name and certificate must be new; a removal's person
    /// must be enrolled, not removed, and not the last officer able to act.
    async fn check_custodian_request(
        &self,
        actor: &Actor,
        op: &Operation,
    ) -> Result<(), ServiceError> {
        self.require_standing(
            actor,
            Some(CustodianRole::SecurityOfficer),
            OffsetDateTime::now_utc(),
        )
        .await?;
        match op {
            Operation::EnrollCustodian {
                name,
                role,
                cert_sha256,
                login_window,
                idle_timeout_seconds,
            } => {
                let terms = EnrolmentTerms::parse(
                    name,
                    role,
                    cert_sha256.as_deref(),
                    login_window.as_deref(),
                    *idle_timeout_seconds,
                )?;
                if self.store.custodian(terms.name.as_str()).await?.is_some() {
                    return Err(ServiceError::Invalid(format!(
                        "{} is already enrolled (names are never reused)",
                        terms.name
                    )));
                }
                if let Some(c) = &terms.cert_sha256 {
                    if let Some(holder) = self.store.custodian_by_cert(c).await? {
                        return Err(ServiceError::Invalid(format!(
                            "the certificate is already bound to {}",
                            holder.name
                        )));
                    }
                }
            }
            Operation::RemoveCustodian { name } => {
                let rec = self
                    .store
                    .custodian(name)
                    .await?
                    .ok_or_else(|| ServiceError::Invalid(format!("{name} is not enrolled")))?;
                if rec.is_removed() {
                    return Err(ServiceError::Refused(format!("{name} was removed already")));
                }
                if rec.role == CustodianRole::SecurityOfficer {
                    let others = self
                        .store
                        .custodians()
                        .await?
                        .into_iter()
                        .filter(|o| {
                            o.role == CustodianRole::SecurityOfficer
                                && o.name != rec.name
                                && !o.is_removed()
                                && !o.is_locked()
                        })
                        .count();
                    if others == 0 {
                        return Err(super::custodians::last_officer(name));
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl KeyService {
    /// Adopt the running policy (issue 5, item 2: changing policy is a
    /// quorum operation). A fresh database adopts the first policy it is
    /// opened with; after that a policy whose digest differs is adopted
    /// only if an executed `ChangePolicy` request approved exactly that
    /// digest (the approval is used up), and otherwise the service refuses
    /// to open. Recorded as `policy.adopt`, refusals included.
    pub(crate) async fn adopt_policy(&self) -> Result<(), ServiceError> {
        let digest = self.policy.digest().to_owned();
        let adopted = self.store.adopted_policy().await?;
        if adopted.as_ref().is_some_and(|a| a.value == digest) {
            return Ok(());
        }
        let approved = self
            .store
            .approved_policy()
            .await?
            .filter(|a| a.value == digest);
        let kms = Actor(crate::store::SYSTEM_ACTOR.to_owned());
        let mut act = Act::change(&kms, "policy.adopt")
            .role(self.system_role())
            .detail("policy_digest", digest.clone());
        if let Some(a) = &adopted {
            act = act.detail("previous_policy_digest", a.value.clone());
        }
        if let Some(req) = approved.as_ref().and_then(|a| a.request.as_deref()) {
            act = act.correlate(req);
        }
        let work = async {
            let current = adopted.as_ref().map(|a| a.value.as_str());
            if let Some(cur) = current {
                if approved.is_none() {
                    return Err(ServiceError::Refused(format!(
                        "the policy's SHA-256 is {digest}, not the adopted {cur}; a changed policy needs an approved, executed request first (kms request policy-change)"
                    )));
                }
            }
            let request = approved.as_ref().and_then(|a| a.request.as_deref());
            if !self
                .store
                .adopt_policy(current, &digest, crate::store::SYSTEM_ACTOR, request)
                .await?
            {
                return Err(ServiceError::Refused(
                    "the adopted policy changed meanwhile (another node); start again".into(),
                ));
            }
            Ok(())
        };
        self.audited(act, work, super::audited::no_mentions).await
    }

    /// Re-check every successful `request.approve` record from the trail
    /// alone (issue 5: the trail proves who agreed to what): the recorded
    /// certificate has the recorded fingerprint, and the recorded signature
    /// verifies under it over the approval message of that request, digest
    /// and approver. Records from before signed approvals are reported as
    /// unsigned.
    pub async fn verify_approvals(
        &self,
        actor: &Actor,
    ) -> Result<Vec<ApprovalCheck>, ServiceError> {
        let act = Act::read(actor, "request.verify-approvals");
        let work = async {
            let records = self
                .store
                .audit_search(&crate::store::AuditFilter {
                    action: Some("request.approve".into()),
                    outcome: Some(crate::audit::Outcome::Success),
                    ..Default::default()
                })
                .await?;
            Ok(records.iter().map(check_approval_record).collect())
        };
        self.audited(act, work, super::audited::no_mentions).await
    }
}

/// One `request.approve` record, checked from its own fields.
pub fn check_approval_record(rec: &crate::audit::AuditRecord) -> ApprovalCheck {
    let d = &rec.event.details;
    let field = |k: &str| d.get(k).cloned().unwrap_or_default();
    let request = rec
        .event
        .request_id
        .clone()
        .or_else(|| d.get("request").cloned())
        .unwrap_or_default();
    let problem = (|| -> Result<(), String> {
        let (Some(cert), Some(sig), Some(fp)) = (
            d.get("approver_cert"),
            d.get("approval_signature"),
            d.get("approver_cert_sha256"),
        ) else {
            return Err("unsigned (recorded before signed approvals)".into());
        };
        let cert = hex::decode(cert).map_err(|_| "the recorded certificate is not hex")?;
        let sig = hex::decode(sig).map_err(|_| "the recorded signature is not hex")?;
        if !crate::crypto::approval::cert_sha256(&cert).eq_ignore_ascii_case(fp) {
            return Err("the recorded certificate does not have the recorded fingerprint".into());
        }
        let msg = approval_message(&request, &field("digest"), &rec.event.actor);
        verify_approval(&cert, &msg, &sig).map_err(|e| e.to_string())
    })()
    .err();
    ApprovalCheck {
        seq: rec.seq,
        request,
        approver: rec.event.actor.clone(),
        digest: field("digest").to_ascii_uppercase(),
        problem,
    }
}

/// What an execution is given besides the request: custodians' components
/// (a trusted KEK entered by components) or a new person's initial PIN.
struct Inputs {
    components: Vec<(crate::crypto::Component, Option<crate::crypto::Kcv>)>,
    initial_pin: Option<Pin>,
    /// Which execute fn called: only `execute_components` may generate
    /// components, only `execute_backup_kek` may make the backup KEK.
    hand_out: HandOut,
}

/// What the trail says about an operation: its kind and its key, or the
/// person it is about.
fn op_act(act: Act, op: &Operation) -> Act {
    let mut act = act.detail("operation", format!("{:?}", op.action()).to_lowercase());
    match op {
        Operation::EnrollCustodian {
            name,
            role,
            cert_sha256,
            login_window,
            idle_timeout_seconds,
        } => {
            act = act
                .detail("custodian", name.clone())
                .detail("custodian_op", "enroll")
                .detail("role", role.clone());
            if let Some(c) = cert_sha256 {
                act = act.detail("cert_sha256", c.clone());
            }
            if let Some(w) = login_window {
                act = act.detail("login_window", w.clone());
            }
            if let Some(i) = idle_timeout_seconds {
                act = act.detail("idle_timeout_seconds", i.to_string());
            }
            return act;
        }
        Operation::RemoveCustodian { name } => {
            return act
                .detail("custodian", name.clone())
                .detail("custodian_op", "remove");
        }
        Operation::ChangePolicy { sha256 } => {
            return act.detail("policy_digest", sha256.clone());
        }
        Operation::ImportKey {
            algorithm,
            usage,
            exportable,
            kcv,
            ..
        } => {
            act = act
                .detail("algorithm", algorithm.clone())
                .detail("usage", usage.clone())
                .detail("exportable", exportable.to_string())
                .detail("expected_kcv", kcv.clone());
        }
        Operation::ExportComponents {
            algorithm,
            usage,
            exportable,
            custodians,
            ..
        } => {
            act = act
                .detail("algorithm", algorithm.clone())
                .detail("usage", usage.clone())
                .detail("exportable", exportable.to_string())
                .detail("component_holders", custodians.join(","));
        }
        // Named in details, not as the act's key: an act on a `kms` tenant
        // key is refused (the KMS's own keys), and this KEK is made only
        // here, by request.
        Operation::BackupKek {
            name,
            threshold,
            shares,
        } => {
            return act
                .detail("kek", format!("{}/{name}", crate::audit::SYSTEM_TENANT))
                .detail("threshold", threshold.to_string())
                .detail("shares", shares.to_string());
        }
        _ => {}
    }
    let Some((tenant, key)) = op.subject() else {
        return act;
    };
    if let Operation::ReleaseSd {
        se_id,
        sd_aid,
        reason,
        ..
    } = op
    {
        act = act
            .detail("se_id", se_id.clone())
            .detail("sd_aid", sd_aid.clone())
            .detail("reason", reason.clone());
    }
    match (Tenant::parse(tenant), key.map(KeyName::parse)) {
        (Ok(t), Some(Ok(k))) => act.key(&t, &k, None),
        (Ok(t), None) => act.tenant(&t),
        _ => act,
    }
}

fn request_mentions(r: &ApprovalRequest) -> Vec<crate::audit::KeyMention> {
    match r.operation.subject() {
        Some((tenant, Some(key))) => vec![crate::audit::KeyMention {
            tenant: tenant.to_owned(),
            name: key.to_owned(),
            version: None,
            kcv: None,
        }],
        _ => Vec::new(),
    }
}
