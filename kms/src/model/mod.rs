//! The key model: what a key is, independent of where it lives.
//!
//! Names, tenants and algorithms are validated newtypes and enums so that a
//! string from the command line or the database never reaches the HSM layer
//! unchecked.

mod algorithm;
mod names;
mod state;
mod usage;

pub use algorithm::{Algorithm, KeyFamily};
pub use names::{KeyName, ObjectId, Tenant};
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
