//! Custodians, security officers and operators: the people of key
//! ceremonies (issue 5, item 1). Requirements AUTH-PIN-LEN, AUTH-PIN-WEAK,
//! AUTH-PIN-LOCK, TSM-AC-1, TSM-AC-5.
//!
//! - **Enrolment.** The very first person is enrolled alone (the
//!   bootstrap, `custodian.enroll` with `bootstrap` `true`), and must be a
//!   security officer, so that someone can re-enable a locked person.
//!   While the *founding* is open, a security officer in good standing
//!   enrols the others alone too ([`KeyService::enroll_founding`], also
//!   `bootstrap` `true`): approvers must be enrolled people, so before
//!   there are enough of them nobody could approve anything. The founding
//!   is closed for good by [`KeyService::close_founding`], which refuses
//!   while the people enrolled could not meet every quorum of the policy;
//!   no dual-controlled request is accepted before. After it every
//!   enrolment and every removal is a dual-controlled request
//!   (`Operation::EnrollCustodian`, `Operation::RemoveCustodian`, policy
//!   action `custodians`), requested by a security officer in good standing,
//!   approved by others (not by the person concerned); the initial PIN is
//!   given when the request is executed, so it is never part of a request.
//! - **PINs.** New PINs pass [`PinPolicy`] (AUTH-PIN-LEN, AUTH-PIN-WEAK) and
//!   are stored as Argon2id hashes only (TSM-AC-1). The PIN given at
//!   enrolment must be changed at first use: [`KeyService::authenticate`]
//!   answers a session that says so, and every other act of that person is
//!   refused until [`KeyService::change_pin`].
//! - **Lock.** 5 consecutive failed logins lock the person (AUTH-PIN-LOCK;
//!   counted and locked in one statement, `Store::record_failed_login`);
//!   while locked even the right PIN is refused, without being looked at,
//!   until a security officer re-enables them ([`KeyService::unlock`]).
//! - **Login window** (TSM-AC-5): a person with a window is refused outside
//!   it, before their PIN is looked at (so no attempt is counted).
//! - **Idle timeout**: each person's, carried in their session for the
//!   ceremony runner to enforce.
//!
//! "Good standing" (needed to request, approve or unlock): enrolled, not
//! removed, not locked, initial PIN changed, inside their login window.
//! PINs appear in no error, record, row or log: errors name the person and
//! the rule, records carry names, roles, counts and outcomes.

use super::audited::{no_mentions, Act};
use super::{Actor, AuthRefusal, KeyService, ServiceError};
use crate::audit::{AuditEvent, Outcome};
use crate::crypto::{PinHash, PinHasher};
use crate::model::{parse_cert_sha256, CustodianName, CustodianRole, LoginWindow, Pin, PinPolicy};
use crate::store::{CustodianRecord, FailedLogin, NewCustodian, Removal, MAX_FAILED_LOGINS};
use std::sync::Arc;
use time::OffsetDateTime;

/// The idle timeout of a person enrolled without one: 15 minutes, as PCI DSS
/// asks of administrative sessions.
pub const DEFAULT_IDLE_TIMEOUT_SECONDS: u32 = 900;
/// Idle timeouts accepted at enrolment: 1 minute to 1 hour.
pub const IDLE_TIMEOUT_RANGE: std::ops::RangeInclusive<u32> = 60..=3600;

/// How the service checks and stores PINs.
#[derive(Debug, Clone)]
pub struct CustodianSettings {
    pub pin_policy: PinPolicy,
    pub hasher: Arc<PinHasher>,
}

impl Default for CustodianSettings {
    /// The default PIN policy and OWASP's Argon2id parameters.
    fn default() -> Self {
        CustodianSettings {
            pin_policy: PinPolicy::default(),
            hasher: Arc::new(PinHasher::owasp()),
        }
    }
}

/// A person to enrol.
#[derive(Debug, Clone)]
pub struct Enrolment {
    pub name: CustodianName,
    pub role: CustodianRole,
    /// Their client certificate's SHA-256 fingerprint (any common spelling).
    pub cert_sha256: Option<String>,
    pub login_window: Option<LoginWindow>,
    /// Default [`DEFAULT_IDLE_TIMEOUT_SECONDS`].
    pub idle_timeout_seconds: Option<u32>,
    /// Must pass the PIN policy; must be changed at first use.
    pub initial_pin: Pin,
}

/// A person who has just proved their PIN. Only the service makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustodianSession {
    name: CustodianName,
    role: CustodianRole,
    cert_sha256: Option<String>,
    must_change_pin: bool,
    idle_timeout_seconds: u32,
    authenticated_at: OffsetDateTime,
}

impl CustodianSession {
    pub fn name(&self) -> &CustodianName {
        &self.name
    }

    /// Their name as the actor of the acts they go on to do.
    pub fn actor(&self) -> Actor {
        Actor(self.name.as_str().to_owned())
    }

    pub fn role(&self) -> CustodianRole {
        self.role
    }

    /// The certificate they are bound to: the runner checks it is the one
    /// they connected with.
    pub fn cert_sha256(&self) -> Option<&str> {
        self.cert_sha256.as_deref()
    }

    /// True after a login with the PIN given at enrolment: the only thing
    /// they may do is [`KeyService::change_pin`].
    pub fn must_change_pin(&self) -> bool {
        self.must_change_pin
    }

    /// How long the ceremony runner lets this person's session sit idle
    /// before asking for the PIN again.
    pub fn idle_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(u64::from(self.idle_timeout_seconds))
    }

    pub fn authenticated_at(&self) -> OffsetDateTime {
        self.authenticated_at
    }

    /// Whether a session last active at `last_activity` has idled out at
    /// `now`.
    pub fn idle_expired(&self, last_activity: OffsetDateTime, now: OffsetDateTime) -> bool {
        now - last_activity >= time::Duration::seconds(i64::from(self.idle_timeout_seconds))
    }
}

fn session_of(
    rec: &CustodianRecord,
    must_change_pin: bool,
    now: OffsetDateTime,
) -> CustodianSession {
    CustodianSession {
        name: rec.name.clone(),
        role: rec.role,
        cert_sha256: rec.cert_sha256.clone(),
        must_change_pin,
        idle_timeout_seconds: rec.idle_timeout_seconds,
        authenticated_at: now,
    }
}

/// A name as records and errors show it: only a valid one; anything else
/// might be a PIN typed into the wrong field.
fn shown(name: &str) -> String {
    match CustodianName::parse(name) {
        Ok(n) => n.to_string(),
        Err(_) => "(invalid name)".to_owned(),
    }
}

/// The actor of records about a name that may not be valid.
fn actor_for(name: &str) -> Actor {
    Actor(shown(name))
}

/// Checked fields of an enrolment request (`Operation::EnrollCustodian`).
pub(crate) struct EnrolmentTerms {
    pub name: CustodianName,
    pub role: CustodianRole,
    pub cert_sha256: Option<String>,
    pub login_window: Option<LoginWindow>,
    pub idle_timeout_seconds: u32,
}

impl EnrolmentTerms {
    pub(crate) fn parse(
        name: &str,
        role: &str,
        cert_sha256: Option<&str>,
        login_window: Option<&str>,
        idle_timeout_seconds: Option<u32>,
    ) -> Result<EnrolmentTerms, ServiceError> {
        let idle = idle_timeout_seconds.unwrap_or(DEFAULT_IDLE_TIMEOUT_SECONDS);
        if !IDLE_TIMEOUT_RANGE.contains(&idle) {
            return Err(ServiceError::Invalid(format!(
                "the idle timeout is {} to {} seconds",
                IDLE_TIMEOUT_RANGE.start(),
                IDLE_TIMEOUT_RANGE.end()
            )));
        }
        Ok(EnrolmentTerms {
            name: CustodianName::parse(name)?,
            role: role.parse()?,
            cert_sha256: cert_sha256.map(parse_cert_sha256).transpose()?,
            login_window: login_window.map(LoginWindow::parse).transpose()?,
            idle_timeout_seconds: idle,
        })
    }
}

impl KeyService {
    /// The same service with other PIN settings (cheaper Argon2id parameters
    /// in tests, a longer minimum PIN).
    pub fn with_custodian_settings(mut self, settings: CustodianSettings) -> KeyService {
        self.custodians = Arc::new(settings);
        self
    }

    pub fn custodian_settings(&self) -> &CustodianSettings {
        &self.custodians
    }

    /// The role a name is recorded in: theirs if enrolled.
    async fn role_of(&self, name: &str) -> Option<&'static str> {
        match self.store.custodian(name).await {
            Ok(Some(r)) => Some(r.role.as_str()),
            _ => None,
        }
    }

    /// Enrol a person alone: only the very first, the bootstrap, which must
    /// be a security officer. Everyone after is enrolled through
    /// `Operation::EnrollCustodian` under dual control.
    pub async fn enroll(
        &self,
        actor: &Actor,
        enrolment: Enrolment,
    ) -> Result<CustodianRecord, ServiceError> {
        let mut act = Act::change(actor, "custodian.enroll")
            .detail("custodian", enrolment.name.as_str())
            .detail("role", enrolment.role.as_str())
            .detail("bootstrap", "true")
            .detail(
                "idle_timeout_seconds",
                enrolment
                    .idle_timeout_seconds
                    .unwrap_or(DEFAULT_IDLE_TIMEOUT_SECONDS)
                    .to_string(),
            );
        if let Some(w) = &enrolment.login_window {
            act = act.detail("login_window", w.to_string());
        }
        if let Some(c) = &enrolment.cert_sha256 {
            act = act.detail("cert_sha256", c.clone());
        }
        self.audited(act, self.bootstrap_now(actor, enrolment), no_mentions)
            .await
    }

    async fn bootstrap_now(
        &self,
        actor: &Actor,
        enrolment: Enrolment,
    ) -> Result<CustodianRecord, ServiceError> {
        let terms = enrolment_terms(&enrolment)?;
        if terms.role != CustodianRole::SecurityOfficer {
            return Err(ServiceError::Refused(
                "the first person enrolled is a security officer (someone must be able to re-enable a locked person)".into(),
            ));
        }
        if !self.store.custodians().await?.is_empty() {
            return Err(ServiceError::Refused(
                if self.store.founding_closed().await?.is_some() {
                    "people are enrolled already; an enrolment is now a dual-controlled request (EnrollCustodian)"
                } else {
                    "people are enrolled already; during the founding a security officer enrols the others (kms custodian bootstrap --as OFFICER)"
                }
                .into(),
            ));
        }
        let new = self.enrolled_alone(enrolment, terms, actor).await?;
        self.store
            .bootstrap_custodian(&new, OffsetDateTime::now_utc())
            .await?
            .ok_or_else(|| {
                ServiceError::Refused(
                    "someone was enrolled meanwhile; an enrolment is now a dual-controlled request"
                        .into(),
                )
            })
    }

    /// The founding: while it is open, a security officer in good standing
    /// (who proved their PIN) enrols another person alone. Recorded as
    /// `custodian.enroll` with `bootstrap` `true` and the officer as actor.
    pub async fn enroll_founding(
        &self,
        officer: &CustodianSession,
        enrolment: Enrolment,
    ) -> Result<CustodianRecord, ServiceError> {
        let actor = officer.actor();
        let mut act = Act::change(&actor, "custodian.enroll")
            .role(officer.role().as_str())
            .detail("custodian", enrolment.name.as_str())
            .detail("role", enrolment.role.as_str())
            .detail("bootstrap", "true")
            .detail("founding", "true")
            .detail(
                "idle_timeout_seconds",
                enrolment
                    .idle_timeout_seconds
                    .unwrap_or(DEFAULT_IDLE_TIMEOUT_SECONDS)
                    .to_string(),
            );
        if let Some(w) = &enrolment.login_window {
            act = act.detail("login_window", w.to_string());
        }
        if let Some(c) = &enrolment.cert_sha256 {
            act = act.detail("cert_sha256", c.clone());
        }
        let work = async {
            self.require_standing(
                &actor,
                Some(CustodianRole::SecurityOfficer),
                OffsetDateTime::now_utc(),
            )
            .await?;
            if self.store.founding_closed().await?.is_some() {
                return Err(ServiceError::Refused(
                    "the founding is closed; an enrolment is a dual-controlled request (EnrollCustodian)".into(),
                ));
            }
            let terms = enrolment_terms(&enrolment)?;
            let new = self.enrolled_alone(enrolment, terms, &actor).await?;
            self.store
                .found_custodian(&new, OffsetDateTime::now_utc())
                .await
                .map_err(ServiceError::from)
        };
        self.audited(act, work, no_mentions).await
    }

    /// The row of a person enrolled without a request (the bootstrap, the
    /// founding): the initial PIN hashed now, nothing pending.
    async fn enrolled_alone(
        &self,
        enrolment: Enrolment,
        terms: EnrolmentTerms,
        by: &Actor,
    ) -> Result<NewCustodian, ServiceError> {
        let pin_hash = self.new_pin_hash(&enrolment.initial_pin).await?;
        Ok(NewCustodian {
            name: terms.name,
            role: terms.role,
            cert_sha256: terms.cert_sha256,
            pin_hash,
            login_window: enrolment.login_window,
            idle_timeout_seconds: terms.idle_timeout_seconds,
            enrolled_by: by.as_str().to_owned(),
            enrolment_request: None,
        })
    }

    /// Whether the founding is still open (people enrolled alone by a
    /// security officer; no dual-controlled request yet).
    pub async fn founding_open(&self) -> Result<bool, ServiceError> {
        Ok(self.store.founding_closed().await?.is_none())
    }

    /// Close the founding for good (`custodian.close-founding`): from now on
    /// nobody is enrolled alone, and requests are accepted. Refused unless
    /// `officer` is a security officer in good standing, and unless the
    /// people enrolled could meet every quorum of the policy (for each
    /// action: someone who may request it, and enough others bound to a
    /// certificate, in an approving role, to approve it).
    pub async fn close_founding(
        &self,
        officer: &CustodianSession,
    ) -> Result<Vec<CustodianRecord>, ServiceError> {
        let actor = officer.actor();
        let act = Act::change(&actor, "custodian.close-founding").role(officer.role().as_str());
        let work = async {
            self.require_standing(
                &actor,
                Some(CustodianRole::SecurityOfficer),
                OffsetDateTime::now_utc(),
            )
            .await?;
            if self.store.founding_closed().await?.is_some() {
                return Err(ServiceError::Refused(
                    "the founding is closed already".into(),
                ));
            }
            let people: Vec<CustodianRecord> = self
                .store
                .custodians()
                .await?
                .into_iter()
                .filter(|p| !p.is_removed() && !p.is_locked())
                .collect();
            for action in crate::policy::SensitiveAction::ALL {
                if !self.policy.needs_approval(action) {
                    continue;
                }
                let q = self.policy.quorum(action);
                let may_request = |p: &CustodianRecord| {
                    !action.officer_requests() || p.role == CustodianRole::SecurityOfficer
                };
                let may_approve =
                    |p: &CustodianRecord| p.cert_sha256.is_some() && q.roles.contains(&p.role);
                let met = people.iter().filter(|r| may_request(r)).any(|r| {
                    people
                        .iter()
                        .filter(|a| a.name != r.name && may_approve(a))
                        .count() as u32
                        >= q.approvals
                });
                if !met {
                    return Err(ServiceError::Refused(format!(
                        "the people enrolled cannot meet the quorum of {action} ({} approval(s) by {}, besides a requester{}); enrol more first",
                        q.approvals,
                        q.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(" or "),
                        if action.officer_requests() { " who is a security officer" } else { "" }
                    )));
                }
            }
            if !self
                .store
                .close_founding(actor.as_str(), OffsetDateTime::now_utc())
                .await?
            {
                return Err(ServiceError::Refused(
                    "the founding is closed already".into(),
                ));
            }
            Ok(people)
        };
        self.audited(act, work, no_mentions).await
    }

    /// Executing an approved `EnrollCustodian` request (see approvals.rs):
    /// its own `custodian.enroll` record, tied to the request.
    pub(crate) async fn enroll_approved(
        &self,
        actor: &Actor,
        request_id: &str,
        terms: EnrolmentTerms,
        pin_hash: PinHash,
    ) -> Result<CustodianRecord, ServiceError> {
        let mut act = Act::change(actor, "custodian.enroll")
            .correlate(request_id)
            .detail("custodian", terms.name.as_str())
            .detail("role", terms.role.as_str())
            .detail("bootstrap", "false")
            .detail(
                "idle_timeout_seconds",
                terms.idle_timeout_seconds.to_string(),
            );
        if let Some(w) = &terms.login_window {
            act = act.detail("login_window", w.to_string());
        }
        if let Some(c) = &terms.cert_sha256 {
            act = act.detail("cert_sha256", c.clone());
        }
        if let Some(role) = self.role_of(actor.as_str()).await {
            act = act.role(role);
        }
        let new = NewCustodian {
            name: terms.name,
            role: terms.role,
            cert_sha256: terms.cert_sha256,
            pin_hash,
            login_window: terms.login_window,
            idle_timeout_seconds: terms.idle_timeout_seconds,
            enrolled_by: actor.as_str().to_owned(),
            enrolment_request: Some(request_id.to_owned()),
        };
        let work = async {
            self.store
                .enroll_custodian(&new, OffsetDateTime::now_utc())
                .await
                .map_err(ServiceError::from)
        };
        self.audited(act, work, no_mentions).await
    }

    /// Executing an approved `RemoveCustodian` request.
    pub(crate) async fn remove_approved(
        &self,
        actor: &Actor,
        request_id: &str,
        name: &str,
    ) -> Result<CustodianRecord, ServiceError> {
        let mut act = Act::change(actor, "custodian.remove")
            .correlate(request_id)
            .detail("custodian", name);
        if let Some(role) = self.role_of(actor.as_str()).await {
            act = act.role(role);
        }
        let work = async {
            match self
                .store
                .remove_custodian(name, actor.as_str(), OffsetDateTime::now_utc())
                .await?
            {
                Removal::Removed(r) => Ok(*r),
                Removal::NotFound => Err(ServiceError::Invalid(format!("{name} is not enrolled"))),
                Removal::AlreadyRemoved => {
                    Err(ServiceError::Refused(format!("{name} was removed already")))
                }
                Removal::LastOfficer => Err(last_officer(name)),
            }
        };
        self.audited(act, work, no_mentions).await
    }

    /// A new PIN checked against the policy, hashed off the async workers.
    pub(crate) async fn new_pin_hash(&self, pin: &Pin) -> Result<PinHash, ServiceError> {
        let checked = self
            .custodians
            .pin_policy
            .check(pin.expose())
            .map_err(|e| ServiceError::Invalid(e.to_string()))?;
        let hasher = self.custodians.hasher.clone();
        tokio::task::spawn_blocking(move || hasher.hash(&checked))
            .await
            .map_err(|e| ServiceError::Internal(format!("PIN hashing task failed: {e}")))?
            .map_err(|e| ServiceError::Internal(e.to_string()))
    }

    async fn pin_matches(&self, pin: &Pin, hash: &PinHash) -> Result<bool, ServiceError> {
        let hasher = self.custodians.hasher.clone();
        let (pin, hash) = (pin.clone(), hash.clone());
        tokio::task::spawn_blocking(move || hasher.verify(&pin, &hash))
            .await
            .map_err(|e| ServiceError::Internal(format!("PIN verification task failed: {e}")))?
            .map_err(|e| ServiceError::Inconsistent(format!("stored PIN hash: {e}")))
    }

    async fn decoy(&self, pin: &Pin) {
        let hasher = self.custodians.hasher.clone();
        let pin = pin.clone();
        let _ = tokio::task::spawn_blocking(move || hasher.verify_decoy(&pin)).await;
    }

    /// Log in with a PIN at `now`. Answers a session that says whether the
    /// initial PIN must be changed first; refuses a removed or locked person
    /// (even with the right PIN) and a login outside the person's window;
    /// counts a wrong PIN and locks at the 5th in a row (a `custodian.lock`
    /// record follows the login's).
    pub async fn authenticate(
        &self,
        name: &str,
        pin: &Pin,
        now: OffsetDateTime,
    ) -> Result<CustodianSession, ServiceError> {
        let request_id = uuid::Uuid::new_v4().to_string();
        let mut act = Act::change(&actor_for(name), "custodian.login")
            .with_request_id(&request_id)
            .detail("custodian", shown(name));
        if let Some(role) = self.role_of(name).await {
            act = act.role(role);
        }
        let work = async {
            let (rec, hash) = self.check_pin(name, pin, now, &request_id).await?;
            if !self.store.record_successful_login(name, &hash, now).await? {
                return Err(self.raced(name).await);
            }
            Ok(session_of(&rec, rec.must_change_pin, now))
        };
        self.audited(act, work, no_mentions).await
    }

    /// Change a PIN: the current one is checked as at login (a wrong one
    /// counts towards the lock), the new one against the PIN policy, and it
    /// must differ. Clears `must_change_pin`; answers a fresh session.
    pub async fn change_pin(
        &self,
        name: &str,
        old: &Pin,
        new: &Pin,
        now: OffsetDateTime,
    ) -> Result<CustodianSession, ServiceError> {
        let request_id = uuid::Uuid::new_v4().to_string();
        let mut act = Act::change(&actor_for(name), "custodian.change-pin")
            .with_request_id(&request_id)
            .detail("custodian", shown(name));
        if let Some(role) = self.role_of(name).await {
            act = act.role(role);
        }
        let work = async {
            // The new PIN first: a weak one costs no attempt.
            self.custodians
                .pin_policy
                .check(new.expose())
                .map_err(|e| ServiceError::Invalid(e.to_string()))?;
            if old.expose() == new.expose() {
                return Err(ServiceError::Invalid(
                    "the new PIN must differ from the current one".into(),
                ));
            }
            let (rec, old_hash) = self.check_pin(name, old, now, &request_id).await?;
            let new_hash = self.new_pin_hash(new).await?;
            if !self
                .store
                .change_custodian_pin(name, &old_hash, &new_hash, now)
                .await?
            {
                return Err(self.raced(name).await);
            }
            Ok(session_of(&rec, false, now))
        };
        self.audited(act, work, no_mentions).await
    }

    /// Why a compare-and-set on a person's row found it changed.
    async fn raced(&self, name: &str) -> ServiceError {
        match self.store.custodian(name).await {
            Ok(Some(r)) if r.is_removed() => ServiceError::Auth(AuthRefusal::Removed {
                name: name.to_owned(),
            }),
            Ok(Some(r)) if r.is_locked() => ServiceError::Auth(locked(&r)),
            Ok(_) => ServiceError::Refused(format!("{name}'s PIN changed meanwhile; log in again")),
            Err(e) => e.into(),
        }
    }

    /// The checks of a login, in order: enrolled, not removed, not locked
    /// (the PIN is not looked at), inside the login window (nor is it), the
    /// PIN (a wrong one is counted; the 5th in a row locks). Answers the
    /// record and the hash the PIN matched.
    async fn check_pin(
        &self,
        name: &str,
        pin: &Pin,
        now: OffsetDateTime,
        request_id: &str,
    ) -> Result<(CustodianRecord, PinHash), ServiceError> {
        let rec = match CustodianName::parse(name) {
            Ok(n) => self.store.custodian(n.as_str()).await?,
            Err(_) => None,
        };
        let Some(rec) = rec else {
            // As long as a wrong PIN takes.
            self.decoy(pin).await;
            return Err(ServiceError::Auth(AuthRefusal::NotEnrolled {
                name: shown(name),
            }));
        };
        if rec.is_removed() {
            return Err(ServiceError::Auth(AuthRefusal::Removed {
                name: name.to_owned(),
            }));
        }
        if rec.is_locked() {
            return Err(ServiceError::Auth(locked(&rec)));
        }
        check_window(&rec, now)?;
        if self.pin_matches(pin, &rec.pin_hash).await? {
            let hash = rec.pin_hash.clone();
            return Ok((rec, hash));
        }
        match self.store.record_failed_login(name, now).await? {
            FailedLogin::Counted { failed_attempts } => {
                Err(ServiceError::Auth(AuthRefusal::WrongPin {
                    name: name.to_owned(),
                    failed_attempts,
                    limit: MAX_FAILED_LOGINS,
                    locked: false,
                }))
            }
            FailedLogin::Locked { failed_attempts } => {
                self.record_lock(&rec, failed_attempts, request_id).await?;
                Err(ServiceError::Auth(AuthRefusal::WrongPin {
                    name: name.to_owned(),
                    failed_attempts,
                    limit: MAX_FAILED_LOGINS,
                    locked: true,
                }))
            }
            // Locked or removed since it was read.
            FailedLogin::NotCounted => Err(self.raced(name).await),
        }
    }

    /// The `custodian.lock` record: the KMS locked a person, in the same
    /// statement that counted the failure that did it.
    async fn record_lock(
        &self,
        rec: &CustodianRecord,
        failed_attempts: u32,
        request_id: &str,
    ) -> Result<(), ServiceError> {
        self.audit
            .record(AuditEvent {
                actor: crate::store::SYSTEM_ACTOR.into(),
                role: self.system_role().into(),
                action: "custodian.lock".into(),
                request_id: Some(request_id.to_owned()),
                outcome: Some(Outcome::Success),
                reason: Some(format!(
                    "{failed_attempts} consecutive failed logins (AUTH-PIN-LOCK)"
                )),
                source: Some(self.source.clone()),
                details: [
                    ("custodian".to_owned(), rec.name.to_string()),
                    ("role".to_owned(), rec.role.to_string()),
                    ("failed_attempts".to_owned(), failed_attempts.to_string()),
                ]
                .into(),
                ..Default::default()
            })
            .await
            .map_err(ServiceError::Audit)?;
        Ok(())
    }

    /// Re-enable a locked person (AUTH-PIN-LOCK). `officer` must be a
    /// security officer in good standing, and someone else.
    pub async fn unlock(
        &self,
        officer: &Actor,
        name: &str,
        reason: &str,
    ) -> Result<CustodianRecord, ServiceError> {
        let mut act = Act::change(officer, "custodian.unlock")
            .detail("custodian", shown(name))
            .detail("reason", reason.chars().take(500).collect::<String>());
        if let Some(role) = self.role_of(officer.as_str()).await {
            act = act.role(role);
        }
        let work = async {
            if reason.trim().is_empty() {
                return Err(ServiceError::Invalid(
                    "re-enabling a person needs a reason (how their identity was verified)".into(),
                ));
            }
            self.require_standing(
                officer,
                Some(CustodianRole::SecurityOfficer),
                OffsetDateTime::now_utc(),
            )
            .await?;
            if officer.as_str() == name {
                return Err(ServiceError::Refused(
                    "a security officer cannot re-enable themselves".into(),
                ));
            }
            let target =
                self.store.custodian(name).await?.ok_or_else(|| {
                    ServiceError::Invalid(format!("{} is not enrolled", shown(name)))
                })?;
            if target.is_removed() {
                return Err(ServiceError::Refused(format!("{name} was removed")));
            }
            if !target.is_locked() {
                return Err(ServiceError::Refused(format!("{name} is not locked")));
            }
            if !self.store.unlock_custodian(name).await? {
                return Err(ServiceError::Refused(format!(
                    "{name} was re-enabled or removed meanwhile"
                )));
            }
            self.store
                .custodian(name)
                .await?
                .ok_or_else(|| ServiceError::Invalid(format!("{name} is not enrolled")))
        };
        self.audited(act, work, no_mentions).await
    }

    /// Everyone ever enrolled (no PIN hashes), recorded as a read.
    pub async fn list_custodians(
        &self,
        actor: &Actor,
    ) -> Result<Vec<CustodianRecord>, ServiceError> {
        let act = Act::read(actor, "custodian.list");
        self.audited(
            act,
            async { self.store.custodians().await.map_err(ServiceError::from) },
            no_mentions,
        )
        .await
    }

    /// Refuses unless `actor` is enrolled and in good standing now (and has
    /// `role`, when one is named).
    pub(crate) async fn require_standing(
        &self,
        actor: &Actor,
        role: Option<CustodianRole>,
        now: OffsetDateTime,
    ) -> Result<CustodianRecord, ServiceError> {
        let name = actor.as_str();
        let rec = self.store.custodian(name).await?.ok_or_else(|| {
            ServiceError::Auth(AuthRefusal::NotEnrolled {
                name: name.to_owned(),
            })
        })?;
        check_standing(&rec, now)?;
        if let Some(needed) = role {
            if rec.role != needed {
                return Err(ServiceError::Auth(AuthRefusal::Role {
                    name: name.to_owned(),
                    role: rec.role.to_string(),
                    needed: needed.to_string(),
                }));
            }
        }
        Ok(rec)
    }
}

/// Not removed, not locked, initial PIN changed, inside the window.
pub(crate) fn check_standing(
    rec: &CustodianRecord,
    now: OffsetDateTime,
) -> Result<(), ServiceError> {
    let name = rec.name.to_string();
    if rec.is_removed() {
        return Err(ServiceError::Auth(AuthRefusal::Removed { name }));
    }
    if rec.is_locked() {
        return Err(ServiceError::Auth(locked(rec)));
    }
    if rec.must_change_pin {
        return Err(ServiceError::Auth(AuthRefusal::MustChangePin { name }));
    }
    check_window(rec, now)
}

fn check_window(rec: &CustodianRecord, now: OffsetDateTime) -> Result<(), ServiceError> {
    match &rec.login_window {
        Some(w) if !w.contains(now) => Err(ServiceError::Auth(AuthRefusal::OutsideWindow {
            name: rec.name.to_string(),
            window: w.to_string(),
        })),
        _ => Ok(()),
    }
}

fn locked(rec: &CustodianRecord) -> AuthRefusal {
    AuthRefusal::Locked {
        name: rec.name.to_string(),
        reason: rec.locked_reason.clone().unwrap_or_else(|| "locked".into()),
    }
}

pub(crate) fn last_officer(name: &str) -> ServiceError {
    ServiceError::Refused(format!(
        "{name} is the last security officer able to act; enrol another first, or nobody could re-enable a locked person"
    ))
}

/// An enrolment's terms, checked; the login window is already parsed.
fn enrolment_terms(enrolment: &Enrolment) -> Result<EnrolmentTerms, ServiceError> {
    EnrolmentTerms::parse(
        enrolment.name.as_str(),
        enrolment.role.as_str(),
        enrolment.cert_sha256.as_deref(),
        None,
        enrolment.idle_timeout_seconds,
    )
}
