//! Service errors, grouped by what the caller should do about them.

use crate::crypto::ComponentError;
use crate::hsm::HsmError;
use crate::model::ParseError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The request itself is wrong (bad value, wrong usage for an algorithm).
    #[error("{0}")]
    Invalid(String),
    #[error("no key {0}")]
    NotFound(String),
    /// Policy, state or dual control says no. Nothing was changed.
    #[error("refused: {0}")]
    Refused(String),
    /// The key's metadata and the token disagree; the key is not used until
    /// an operator resolves it (see `kms reconcile`).
    #[error("inconsistent: {0}")]
    Inconsistent(String),
    #[error(transparent)]
    Component(#[from] ComponentError),
    #[error("HSM: {0}")]
    Hsm(HsmError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
    /// A provisioning request the card-session rules refuse (REPLAY-1,
    /// TSM-DATA-1, a card cryptogram that does not verify). Nothing was
    /// given out and nothing changed.
    #[error("refused: {0}")]
    Session(SessionRefusal),
    /// A person's login or act was refused (issue 5: AUTH-PIN-LOCK,
    /// TSM-AC-5, the initial PIN not yet changed). Never carries a PIN.
    #[error("refused: {0}")]
    Auth(AuthRefusal),
    /// Fail closed: the audit record could not be written.
    #[error(transparent)]
    Audit(crate::audit::AuditError),
}

/// Why a card session or card-key request was refused; each has a stable
/// API error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionRefusal {
    /// The card did not prove it holds the static keys.
    #[error("card cryptogram does not verify")]
    CardCryptogram,
    /// SCP02: the card's sequence counter must increase from session to
    /// session (REPLAY-1).
    #[error("sequence counter {got:04X} does not increase past {last:04X} for this card")]
    SequenceCounter { got: u16, last: u16 },
    /// TSM-DATA-1: this Security Domain already holds another card's keys.
    #[error("Security Domain {sd_aid} on SE {se_id} is bound to another card ({bound_to}); a re-issue needs a dual-controlled release")]
    SdBound {
        se_id: String,
        sd_aid: String,
        bound_to: String,
    },
}

/// Why a custodian, security officer or operator was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthRefusal {
    #[error("{name} is not enrolled")]
    NotEnrolled { name: String },
    #[error("{name} was removed")]
    Removed { name: String },
    /// AUTH-PIN-LOCK: counted; `locked` when this failure locked them.
    #[error("wrong PIN for {name} ({failed_attempts} consecutive failures of {limit}){}",
        if *locked { "; now locked until a security officer re-enables them" } else { "" })]
    WrongPin {
        name: String,
        failed_attempts: u32,
        limit: u32,
        locked: bool,
    },
    /// AUTH-PIN-LOCK: refused without looking at the PIN.
    #[error("{name} is locked ({reason}) until a security officer re-enables them")]
    Locked { name: String, reason: String },
    /// TSM-AC-5.
    #[error("{name} may log in only {window}")]
    OutsideWindow { name: String, window: String },
    /// TSM-AC-1: the PIN given at enrolment must be changed first.
    #[error("{name} must change the initial PIN before doing anything else")]
    MustChangePin { name: String },
    /// The act needs another role.
    #[error("{name} is {role}; this needs {needed}")]
    Role {
        name: String,
        role: String,
        needed: String,
    },
}

impl AuthRefusal {
    /// A stable code, for the API to come.
    pub fn code(&self) -> &'static str {
        match self {
            AuthRefusal::NotEnrolled { .. } => "not-enrolled",
            AuthRefusal::Removed { .. } => "removed",
            AuthRefusal::WrongPin { .. } => "wrong-pin",
            AuthRefusal::Locked { .. } => "locked",
            AuthRefusal::OutsideWindow { .. } => "outside-login-window",
            AuthRefusal::MustChangePin { .. } => "must-change-pin",
            AuthRefusal::Role { .. } => "wrong-role",
        }
    }
}

impl SessionRefusal {
    /// The API's problem code.
    pub fn code(&self) -> &'static str {
        match self {
            SessionRefusal::CardCryptogram => "card-cryptogram",
            SessionRefusal::SequenceCounter { .. } => "sequence-counter",
            SessionRefusal::SdBound { .. } => "sd-bound",
        }
    }
}

impl From<ParseError> for ServiceError {
    fn from(e: ParseError) -> Self {
        ServiceError::Invalid(e.to_string())
    }
}

impl From<HsmError> for ServiceError {
    fn from(e: HsmError) -> Self {
        match e {
            HsmError::Refused { .. } => ServiceError::Refused(e.to_string()),
            HsmError::Invalid(m) => ServiceError::Invalid(m),
            HsmError::ObjectNotFound(id) => ServiceError::Inconsistent(format!(
                "the token has no object {id}, though the database has a live version for it"
            )),
            other => ServiceError::Hsm(other),
        }
    }
}

impl ServiceError {
    /// Exit code class for the CLI: 2 usage/input, 3 refused, 1 failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            ServiceError::Invalid(_) | ServiceError::NotFound(_) | ServiceError::Component(_) => 2,
            ServiceError::Refused(_) | ServiceError::Session(_) | ServiceError::Auth(_) => 3,
            ServiceError::Store(
                StoreError::Duplicate { .. }
                | StoreError::Invalid { .. }
                | StoreError::NotFound { .. },
            ) => 2,
            ServiceError::Store(StoreError::Conflict { .. })
            | ServiceError::Store(StoreError::IllegalTransition(_)) => 3,
            _ => 1,
        }
    }
}
