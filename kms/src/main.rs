//! The `kms` command line: key custodians' and operators' tool.
//!
//! Exit codes: 0 success, 1 failure, 2 usage or bad input, 3 refused
//! (policy, state, dual control), 4 inconsistent metadata and token.

mod bench;
mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KMS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    cli::run()
}
