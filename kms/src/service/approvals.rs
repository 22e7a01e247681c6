//! Dual control (invariant 3): a sensitive operation runs only after people
//! other than its requester approved exactly that operation.
//!
//! request -> approve (by N distinct others) -> execute (by the requester,
//! once). An approval is bound to the SHA-256 digest of the operation's
//! canonical JSON, so approving "export A under B" cannot be replayed for
//! anything else; requests expire. Issue 5's ceremonies bind each person to
//! a certificate and a PIN and sign each approval; here the actor is the
//! name the caller authenticated as.

use super::audited::{mention, Act};
use super::custodians::EnrolmentTerms;
use super::{Actor, KeyService, ServiceError};
use crate::hsm::WrapAlg;
use crate::model::{CustodianName, CustodianRole, KeyName, Pin, Tenant};
use crate::policy::SensitiveAction;
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
}

impl Operation {
    pub fn action(&self) -> SensitiveAction {
        match self {
            Operation::Export { .. } => SensitiveAction::Export,
            Operation::Destroy { .. } => SensitiveAction::Destroy,
            Operation::Compromise { .. } => SensitiveAction::Compromise,
            Operation::TrustedKek { .. } => SensitiveAction::Trust,
            Operation::ReleaseSd { .. } => SensitiveAction::Reissue,
            Operation::EnrollCustodian { .. } | Operation::RemoveCustodian { .. } => {
                SensitiveAction::Custodians
            }
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
        }
        Ok(())
    }

    /// Whether executing needs the security officer's login.
    pub fn needs_security_officer(&self) -> bool {
        matches!(self, Operation::TrustedKek { .. })
    }

    /// Whether executing needs key components typed by custodians.
    pub fn needs_components(&self) -> bool {
        matches!(self, Operation::TrustedKek { kcv: Some(_), .. })
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
            | Operation::TrustedKek { tenant, key, .. } => Some((tenant, Some(key))),
            Operation::ReleaseSd { tenant, .. } => Some((tenant, None)),
            Operation::EnrollCustodian { .. } | Operation::RemoveCustodian { .. } => None,
        }
    }
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
    pub approvals_needed: u32,
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
}

impl KeyService {
    fn needed(&self) -> u32 {
        self.policy.dual_control.approvals
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
        Ok(ApprovalRequest {
            id: row.id,
            operation,
            digest: row.digest,
            requested_by: row.requested_by,
            expires_at: row.expires_at,
            status: row.status,
            approvers: row.approvers,
            approvals_needed: self.needed(),
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

    /// Ask for a sensitive operation. Nothing happens to any key yet.
    pub async fn request(
        &self,
        actor: &Actor,
        op: Operation,
    ) -> Result<ApprovalRequest, ServiceError> {
        let id = uuid::Uuid::new_v4().to_string();
        let act = op_act(Act::change(actor, "request.create"), &op)
            .correlate(&id)
            .detail("digest", op.digest()?);
        self.audited(
            act,
            self.request_now(actor, op.clone(), id.clone()),
            request_mentions,
        )
        .await
    }

    async fn request_now(
        &self,
        actor: &Actor,
        op: Operation,
        id: String,
    ) -> Result<ApprovalRequest, ServiceError> {
        op.validate()?;
        let ttl = Duration::minutes(i64::from(self.policy.dual_control.request_ttl_minutes));
        if op.custodian().is_some() {
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

    /// Approve a request. `digest` is what the approver was shown; it must
    /// match the stored operation's digest.
    pub async fn approve(
        &self,
        approver: &Actor,
        id: &str,
        digest: &str,
    ) -> Result<ApprovalRequest, ServiceError> {
        let mut act = Act::change(approver, "request.approve")
            .correlate(id)
            .detail("digest", digest);
        if let Ok(req) = self.load_request(id).await {
            act = op_act(act, &req.operation);
        }
        self.audited(
            act,
            self.approve_now(approver, id, digest),
            request_mentions,
        )
        .await
    }

    async fn approve_now(
        &self,
        approver: &Actor,
        id: &str,
        digest: &str,
    ) -> Result<ApprovalRequest, ServiceError> {
        let req = self.load_request(id).await?;
        self.check_open(&req)?;
        if !req.digest.eq_ignore_ascii_case(digest) {
            return Err(ServiceError::Refused(
                "this approval is for a different operation (digest mismatch)".into(),
            ));
        }
        if approver.as_str() == req.requested_by {
            return Err(ServiceError::Refused(
                "the requester cannot approve their own request".into(),
            ));
        }
        if req.approvers.iter().any(|a| a == approver.as_str()) {
            return Err(ServiceError::Refused(format!(
                "{approver} has already approved this request"
            )));
        }
        if let Some(person) = req.operation.custodian() {
            if approver.as_str() == person {
                return Err(ServiceError::Refused(
                    "the person enrolled or removed cannot approve it".into(),
                ));
            }
            // An enrolled approver must be in good standing (not locked,
            // initial PIN changed, inside their window).
            if let Some(rec) = self.store.custodian(approver.as_str()).await? {
                super::custodians::check_standing(&rec, OffsetDateTime::now_utc())?;
            }
        }
        self.store
            .add_approval(id, approver.as_str(), &req.digest)
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
    pub async fn execute(&self, actor: &Actor, id: &str) -> Result<Executed, ServiceError> {
        self.execute_with(actor, id, Vec::new()).await
    }

    /// As `execute`, for operations that take custodians' components
    /// (a trusted KEK entered by components).
    pub async fn execute_with(
        &self,
        actor: &Actor,
        id: &str,
        components: Vec<(crate::crypto::Component, Option<crate::crypto::Kcv>)>,
    ) -> Result<Executed, ServiceError> {
        self.execute_inputs(
            actor,
            id,
            Inputs {
                components,
                initial_pin: None,
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
        actor: &Actor,
        id: &str,
        initial_pin: Pin,
    ) -> Result<Executed, ServiceError> {
        self.execute_inputs(
            actor,
            id,
            Inputs {
                components: Vec::new(),
                initial_pin: Some(initial_pin),
            },
        )
        .await
    }

    async fn execute_inputs(
        &self,
        actor: &Actor,
        id: &str,
        inputs: Inputs,
    ) -> Result<Executed, ServiceError> {
        let mut act = Act::change(actor, "request.execute").correlate(id);
        if let Ok(req) = self.load_request(id).await {
            act = op_act(act, &req.operation)
                .detail("digest", req.digest.clone())
                .detail("requested_by", req.requested_by.clone())
                .detail("approvers", req.approvers.join(","));
        }
        self.audited(
            act,
            self.execute_now(actor, id, inputs),
            |e: &Executed| match e {
                Executed::Key(k) => mention(k),
                Executed::Released(_) | Executed::Custodian(_) => Vec::new(),
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
        actor: &Actor,
        id: &str,
        inputs: Inputs,
    ) -> Result<Executed, ServiceError> {
        let Inputs {
            components,
            initial_pin,
        } = inputs;
        let req = self.load_request(id).await?;
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
        let distinct = req
            .approvers
            .iter()
            .filter(|a| a.as_str() != req.requested_by)
            .count();
        if self.policy.needs_approval(req.operation.action()) && (distinct as u32) < self.needed() {
            return Err(ServiceError::Refused(format!(
                "{} of {} approvals so far",
                distinct,
                self.needed()
            )));
        }
        // Operations about people: the requester is still a security
        // officer in good standing, and the initial PIN passes the policy
        // (hashed now, so a weak one does not use the request up).
        let mut pin_hash = None;
        if req.operation.custodian().is_some() {
            self.require_standing(
                actor,
                Some(CustodianRole::SecurityOfficer),
                OffsetDateTime::now_utc(),
            )
            .await?;
        }
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
            .run_operation(actor, id, req.operation, &why, components, pin_hash)
            .await;
        let status = if result.is_ok() { "executed" } else { "failed" };
        self.store
            .move_approval_request(id, "executing", status)
            .await?;
        result
    }

    async fn run_operation(
        &self,
        actor: &Actor,
        id: &str,
        operation: Operation,
        why: &str,
        components: Vec<(crate::crypto::Component, Option<crate::crypto::Kcv>)>,
        pin_hash: Option<crate::crypto::PinHash>,
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

/// What an execution is given besides the request: custodians' components
/// (a trusted KEK entered by components) or a new person's initial PIN.
struct Inputs {
    components: Vec<(crate::crypto::Component, Option<crate::crypto::Kcv>)>,
    initial_pin: Option<Pin>,
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
