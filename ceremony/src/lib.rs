//! Custodian key ceremonies (issue 5): scripts in `policies/ceremonies/`,
//! run at a terminal for the people in the room or driven by an answers
//! file, each run ending in a transcript signed by the KMS and recorded in
//! its audit trail.

pub mod approval;
pub mod console;
pub mod runner;
pub mod script;
pub mod service;

pub use console::{Answers, Console, ScriptedConsole, TerminalConsole};
pub use runner::{preflight, run, run_with_clock, RunError};
pub use script::{Script, ScriptError, Step};
pub use service::{Kms, KmsAccess};
