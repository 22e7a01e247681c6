//! The key model: what a key is, independent of where it lives.
//!
//! Names, tenants and algorithms are validated newtypes and enums so that a
//! string from the command line or the database never reaches the HSM layer
//! unchecked.

mod algorithm;
mod custodian;
mod names;
mod pin;
mod state;
mod usage;

pub use algorithm::{Algorithm, KeyFamily};
pub use custodian::{parse_cert_sha256, CustodianName, CustodianRole, LoginWindow};
pub use names::{KeyName, ObjectId, Tenant};
pub use pin::{
    Pin, PinError, PinKind, PinPolicy, DEFAULT_MIN_PIN_DIGITS, MAX_PIN_CHARS, MIN_PASSPHRASE_CHARS,
    MIN_PIN_DIGITS,
};
pub use state::{KeyState, StateError, Transition};
pub use usage::{Capabilities, KeyUsage};

/// Why a value from outside (CLI, API, database) was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("{what} {value:?} is not valid: {why}")]
    Invalid {
        what: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("unknown {what} {value:?}; expected one of: {expected}")]
    Unknown {
        what: &'static str,
        value: String,
        expected: &'static str,
    },
}
