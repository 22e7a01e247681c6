//! HSM errors. PKCS#11 return values are translated here, and only here,
//! keeping the function that failed (as rust-cryptoki does) so an operator can
//! tell "C_Login: CKR_PIN_INCORRECT" from "C_WrapKey: CKR_KEY_UNEXTRACTABLE".

use crate::model::ObjectId;
use cryptoki::error::{Error as CkError, RvError};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HsmError {
    /// The PKCS#11 module could not be loaded or initialized.
    #[error("cannot load the PKCS#11 module {path}: {detail}")]
    Module { path: String, detail: String },
    #[error("no initialized token labelled {0:?} (run softhsm-setup/setup-token.sh or check `hsm.token_label`)")]
    TokenNotFound(String),
    #[error("the token refused the PIN (CKR_PIN_INCORRECT)")]
    WrongPin,
    #[error("the token's PIN is locked (CKR_PIN_LOCKED); the security officer must reset it")]
    PinLocked,
    #[error("cannot read the PIN: {0}")]
    PinSource(String),
    #[error("no key object with CKA_ID {0} on the token")]
    ObjectNotFound(ObjectId),
    #[error("{0} objects share CKA_ID {1}; refusing to guess which one is meant")]
    AmbiguousObject(usize, ObjectId),
    /// The token said no because the key's attributes forbid the operation.
    /// This is the invariant doing its job, so it gets its own variant.
    #[error("the token refused: {function} returned {rv:?}")]
    Refused { function: String, rv: RvError },
    #[error("{function} failed: {rv:?}")]
    Pkcs11 { function: String, rv: RvError },
    #[error("PKCS#11 call failed: {0}")]
    Library(String),
    #[error("invalid request to the HSM layer: {0}")]
    Invalid(String),
    #[error("the session pool is closed")]
    PoolClosed,
}

impl HsmError {
    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        HsmError::Invalid(msg.into())
    }
}

/// Return values that mean "the key's attributes or the token policy forbid this".
fn is_refusal(rv: RvError) -> bool {
    matches!(
        rv,
        RvError::KeyUnextractable
            | RvError::KeyNotWrappable
            | RvError::KeyFunctionNotPermitted
            | RvError::KeyTypeInconsistent
            | RvError::WrappingKeyTypeInconsistent
            | RvError::WrappingKeyHandleInvalid
            | RvError::AttributeReadOnly
            | RvError::AttributeSensitive
            | RvError::TemplateInconsistent
            | RvError::MechanismInvalid
            | RvError::ActionProhibited
    )
}

impl From<CkError> for HsmError {
    fn from(e: CkError) -> Self {
        match e {
            CkError::Pkcs11(RvError::PinIncorrect, _) => HsmError::WrongPin,
            CkError::Pkcs11(RvError::PinLocked, _) => HsmError::PinLocked,
            CkError::Pkcs11(rv, f) if is_refusal(rv) => HsmError::Refused {
                function: f.to_string(),
                rv,
            },
            CkError::Pkcs11(rv, f) => HsmError::Pkcs11 {
                function: f.to_string(),
                rv,
            },
            other => HsmError::Library(other.to_string()),
        }
    }
}

/// Translate a raw CK_RV from our own unsafe calls (see `raw.rs`).
pub(crate) fn from_raw_rv(function: &'static str, rv: cryptoki_sys::CK_RV) -> HsmError {
    let rv = match cryptoki::error::Rv::from(rv) {
        cryptoki::error::Rv::Error(e) => e,
        // Only called for a non-OK value; treat a stray OK as a general error.
        cryptoki::error::Rv::Ok => RvError::GeneralError,
    };
    if is_refusal(rv) {
        HsmError::Refused {
            function: function.to_owned(),
            rv,
        }
    } else {
        HsmError::Pkcs11 {
            function: function.to_owned(),
            rv,
        }
    }
}
