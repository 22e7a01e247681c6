//! Argument parsing and dispatch. Thin: every rule lives in `kms::service`.

mod audit;
mod backup;
pub(crate) mod commands;
mod custodian;
mod output;
mod seal;
mod serve;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "kms",
    version,
    about = "HSM-backed key management for OTA card provisioning"
)]
pub struct Cli {
    /// Configuration file (default: $KMS_CONFIG, then ./kms.toml).
    #[arg(long, global = true, env = "KMS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Who is acting (recorded with every change).
    #[arg(long, global = true, env = "KMS_ACTOR")]
    pub actor: Option<String>,
    /// The enrolled person taking a dual-controlled step (request, approve,
    /// execute, founding): they prove their PIN (a hidden prompt, or one
    /// line of standard input when it is not a terminal or with
    /// --pin-stdin) and are the actor of what follows.
    #[arg(long = "as", global = true, env = "KMS_AS")]
    pub as_person: Option<String>,
    /// An unseal share file, for a sealed deployment (repeat for each of
    /// the M shares; else $KMS_UNSEAL_SHARE_FILES, colon-separated, or
    /// prompts on a terminal).
    #[arg(long = "share-file", global = true)]
    pub share_file: Vec<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Prepare the database and check the token; safe to run again.
    Init,
    /// Token, database and key consistency at a glance.
    Status,
    /// Compare key metadata with the token's objects; finish interrupted work.
    Reconcile,
    /// Key lifecycle.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Dual control: show, approve or execute a request.
    #[command(subcommand)]
    Request(RequestCommand),
    /// Derive card keys inside the HSM, wrapped under a transport KEK.
    #[command(subcommand)]
    Derive(DeriveCommand),
    /// Security Domain bindings (TSM-DATA-1: one SD, one card).
    #[command(subcommand)]
    Sd(SdCommand),
    /// Custodians, security officers and operators: enrolment, PINs, lock.
    #[command(subcommand)]
    Custodian(CustodianCommand),
    /// Measure raw PKCS#11 rates beside the same work through the key layer.
    Bench(BenchArgs),
    /// The audit trail: verify, search, export, report.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Run the mTLS API (admin and provisioning listeners, kms.toml
    /// [server]) until SIGINT or SIGTERM.
    Serve,
    /// Make a development PKI (CA, server and client certificates, and a
    /// principals policy for them) unless DIR already holds one.
    DevPki {
        #[arg(long, default_value = "var/pki")]
        dir: PathBuf,
    },
    /// Print the provisioning API's OpenAPI document (also served at
    /// GET /v1/openapi.json and kept in docs/openapi.json).
    Openapi,
    /// The seal: the token's user PIN from M-of-N custodian shares.
    #[command(subcommand)]
    Seal(SealCommand),
    /// Backup and recovery of the token's keys under a backup KEK that M of
    /// N custodians' shares recover.
    #[command(subcommand)]
    Backup(backup::BackupCommand),
}

#[derive(Subcommand, Debug)]
pub enum SealCommand {
    /// Seal the deployment: a new unseal secret split into N shares (one
    /// file each, mode 0600, in --share-dir), the user PIN changed to the
    /// one the secret stands for, the PIN file deleted.
    Init {
        /// M: shares needed to unseal.
        #[arg(long)]
        threshold: u8,
        /// N: shares made.
        #[arg(long)]
        shares: u8,
        #[arg(long)]
        share_dir: PathBuf,
    },
    /// Whether the deployment is sealed, and with how many shares.
    Status,
    /// New shares of the same secret (M current shares via --share-file);
    /// the old shares are refused afterwards.
    Rotate {
        #[arg(long)]
        threshold: u8,
        #[arg(long)]
        shares: u8,
        #[arg(long)]
        share_dir: PathBuf,
    },
    /// A new secret, a new token PIN and new shares (M current shares via
    /// --share-file).
    Rekey {
        #[arg(long)]
        threshold: u8,
        #[arg(long)]
        shares: u8,
        #[arg(long)]
        share_dir: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Verify the chain: in the database (online, with the HSM), or an
    /// export offline with only the public key.
    Verify {
        /// A JSON Lines export to verify offline.
        #[arg(long)]
        records: Option<PathBuf>,
        /// Its checkpoints (JSON Lines), for offline verification.
        #[arg(long)]
        checkpoints: Option<PathBuf>,
        /// An archive directory (from `kms audit archive`): verify every
        /// segment in it, offline, as one chain.
        #[arg(long, conflicts_with = "records")]
        archive: Option<PathBuf>,
        /// The checkpoint public key (PEM, from `kms audit public-key`).
        #[arg(long)]
        public_key: Option<PathBuf>,
    },
    /// Search records.
    Search {
        /// RFC 3339 lower bound.
        #[arg(long)]
        from: Option<String>,
        /// RFC 3339 upper bound.
        #[arg(long)]
        to: Option<String>,
        /// Records by this actor. Not `--actor`: that global flag (and
        /// $KMS_ACTOR) names who is acting, and would silently narrow the
        /// search to the searcher's own records.
        #[arg(long = "by")]
        by: Option<String>,
        /// tenant/name of a key.
        #[arg(long)]
        key: Option<String>,
        /// Exact action, or a prefix ending in '*' (e.g. 'request.*').
        #[arg(long)]
        action: Option<String>,
        /// attempt|success|refused|failure
        #[arg(long)]
        outcome: Option<String>,
        #[arg(long)]
        request_id: Option<String>,
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    /// Export every record as JSON Lines (for a SIEM and offline verification).
    Export {
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        checkpoints: Option<PathBuf>,
        #[arg(long)]
        public_key: Option<PathBuf>,
    },
    /// A self-contained HTML report for security officers.
    Report {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "KMS audit report")]
        title: String,
    },
    /// Retention: move records up to `--through` into a signed archive
    /// segment in `--dir` (verified before they leave the database).
    Archive {
        #[arg(long)]
        through: u64,
        #[arg(long)]
        dir: PathBuf,
    },
    /// Print the checkpoint signing public key (PEM).
    PublicKey,
    /// Sign the chain's head now.
    Checkpoint,
}

#[derive(Args, Debug, Clone)]
pub struct KeyId {
    /// Tenant (Security Domain owner).
    #[arg(long, short = 't')]
    pub tenant: String,
    /// Key name.
    pub name: String,
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Generate a key inside the HSM.
    Create {
        #[command(flatten)]
        id: KeyId,
        /// aes-128|aes-192|aes-256|tdes-2key|tdes-3key|rsa-2048|rsa-3072|rsa-4096|ec-p256
        #[arg(long)]
        alg: String,
        /// kek|transport-kek|backup-kek|sd-kmc|sd-enc|sd-mac|sd-dek|imk-ac|imk-smi|imk-smc|audit|signing|mac|data
        #[arg(long)]
        usage: String,
        /// Allow export wrapped under a trusted KEK (policy permitting).
        #[arg(long)]
        exportable: bool,
        /// Create in pre-activation instead of active.
        #[arg(long)]
        pre_activation: bool,
        /// Request a trusted KEK (dual control; executed under the SO login).
        #[arg(long)]
        trusted: bool,
    },
    /// Request a key built from 2 or 3 XOR components (a quorum operation,
    /// issue 5): once approved, the requester runs `kms request execute`
    /// and each custodian types their component there (hidden input, or
    /// `--stdin`); the combined key's check value must equal `--kcv`.
    Import {
        #[command(flatten)]
        id: KeyId,
        #[arg(long)]
        alg: String,
        #[arg(long)]
        usage: String,
        #[arg(long)]
        exportable: bool,
        #[arg(long)]
        trusted: bool,
        /// Check value of the whole key, from the sender.
        #[arg(long)]
        kcv: String,
    },
    /// List keys.
    List {
        #[arg(long, short = 't')]
        tenant: Option<String>,
    },
    /// Show a key with its versions and history.
    Show {
        #[command(flatten)]
        id: KeyId,
    },
    /// Make a new version; the old one is deactivated.
    Rotate {
        #[command(flatten)]
        id: KeyId,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Change state: activate, suspend, reactivate, deactivate.
    State {
        #[command(flatten)]
        id: KeyId,
        /// activate|suspend|reactivate|deactivate
        #[arg(long)]
        to: String,
        #[arg(long)]
        version: Option<u32>,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Request destruction of a version (dual control).
    Destroy {
        #[command(flatten)]
        id: KeyId,
        #[arg(long)]
        version: u32,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Request marking a version compromised (dual control).
    Compromise {
        #[command(flatten)]
        id: KeyId,
        #[arg(long)]
        version: Option<u32>,
        #[arg(long)]
        reason: String,
    },
    /// Request export wrapped under a KEK of the same tenant (dual control).
    Export {
        #[command(flatten)]
        id: KeyId,
        #[arg(long)]
        kek: String,
        #[arg(long)]
        version: Option<u32>,
        /// aes-kw|aes-kwp|tdes-cbc|rsa-oaep-sha256 (default: by KEK type)
        #[arg(long)]
        wrap: Option<String>,
    },
    /// Read a key's attributes back from the token.
    Attributes {
        #[command(flatten)]
        id: KeyId,
        #[arg(long)]
        version: Option<u32>,
    },
}

#[derive(Subcommand, Debug)]
pub enum RequestCommand {
    /// Show a request and the digest approvers must confirm.
    Show { id: String },
    /// Approve a request (not your own), confirming its digest, as `--as`
    /// NAME: the approval is signed here with the key of the client
    /// certificate NAME is enrolled with.
    Approve {
        id: String,
        #[arg(long)]
        digest: String,
        /// The approver's private key (PKCS#8 PEM, P-256).
        #[arg(long)]
        key: PathBuf,
        /// The approver's client certificate (PEM or DER).
        #[arg(long)]
        cert: PathBuf,
        /// Read the approver's PIN from standard input (one line).
        #[arg(long)]
        pin_stdin: bool,
    },
    /// Request the adoption of a changed policy file (keys.toml), approved
    /// by its SHA-256; the service adopts it at its next start.
    PolicyChange {
        #[arg(long)]
        file: PathBuf,
    },
    /// Re-check the signature of every approval in the audit trail, from
    /// the trail alone.
    VerifyApprovals,
    /// Execute your approved request. A trusted-KEK request runs under the
    /// security officer's login; one entered by components asks for them.
    Execute {
        id: String,
        /// Number of components (2 or 3), for a key entered by components.
        #[arg(long, default_value_t = 2)]
        components: usize,
        /// Read components (and optional ",KCV") one per line from standard
        /// input, after the PINs, instead of prompting: for automation and
        /// tests.
        #[arg(long)]
        stdin: bool,
        /// Read the executor's PIN from standard input (one line) and, for
        /// an enrolment, then the new person's initial PIN (one line)
        /// instead of prompting twice, hidden; components follow.
        #[arg(long)]
        pin_stdin: bool,
    },
}

/// Who is enrolled, as `custodian bootstrap` and `custodian enroll` take it.
#[derive(Args, Debug, Clone)]
pub struct EnrolmentArgs {
    /// Lower-case name: their actor in the audit trail, never reused.
    #[arg(long)]
    pub name: String,
    /// custodian|security-officer|operator
    #[arg(long)]
    pub role: String,
    /// SHA-256 fingerprint of their client certificate (colons allowed).
    #[arg(long)]
    pub cert_sha256: Option<String>,
    /// When they may log in, e.g. "Mon-Fri 08:00-18:00 +08:00" (TSM-AC-5).
    #[arg(long)]
    pub login_window: Option<String>,
    /// Idle timeout in seconds (60 to 3600; default 900).
    #[arg(long)]
    pub idle_timeout: Option<u32>,
}

/// PINs are never arguments: a hidden prompt, or standard input with
/// `--pin-stdin` (for automation and tests).
#[derive(Subcommand, Debug)]
pub enum CustodianCommand {
    /// Enrol a person alone: the very first (a security officer), or,
    /// while the founding is open, anyone, by a security officer (`--as`
    /// OFFICER, whose PIN is asked first). The initial PIN is asked twice
    /// (hidden), and must be changed at first use.
    Bootstrap {
        #[command(flatten)]
        who: EnrolmentArgs,
        /// Read the PINs from standard input (one line each: the officer's,
        /// with --as, then the initial PIN).
        #[arg(long)]
        pin_stdin: bool,
    },
    /// Close the founding for good (`--as` a security officer): from now on
    /// every enrolment is dual-controlled. Refused while the people
    /// enrolled could not meet every quorum of the policy.
    CloseFounding {
        /// Read the officer's PIN from standard input (one line).
        #[arg(long)]
        pin_stdin: bool,
    },
    /// Request the enrolment of a person (dual control; the initial PIN is
    /// asked when the requester runs `kms request execute`).
    Enroll {
        #[command(flatten)]
        who: EnrolmentArgs,
    },
    /// Request the removal of a person (dual control).
    Remove {
        #[arg(long)]
        name: String,
    },
    /// Everyone ever enrolled, with their standing (never a PIN or hash).
    List,
    /// Check a person's PIN: exit 0 with their session (whether the PIN
    /// must be changed, the idle timeout), exit 3 when refused.
    Login {
        #[arg(long)]
        name: String,
        /// Read the PIN from standard input (one line).
        #[arg(long)]
        pin_stdin: bool,
    },
    /// Change a person's PIN (the current one, then the new one twice).
    ChangePin {
        #[arg(long)]
        name: String,
        /// Read the current and the new PIN from standard input (two lines).
        #[arg(long)]
        pin_stdin: bool,
    },
    /// Re-enable a locked person; the actor (--actor) is the security
    /// officer who does it, and cannot be the locked person.
    Unlock {
        #[arg(long)]
        name: String,
        /// How their identity was verified.
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum SdCommand {
    /// The tenant's Security Domains and the card (masked PAN, PSN) each
    /// is bound to.
    List {
        #[arg(long, short = 't')]
        tenant: String,
    },
    /// Ask to release an SD from its card so that it can be personalized
    /// for another (a re-issue). Dual control: another person approves,
    /// then the requester runs `kms request execute`.
    Release {
        #[arg(long, short = 't')]
        tenant: String,
        /// The Secure Element's id (hex).
        #[arg(long)]
        se_id: String,
        /// The Security Domain's AID (hex).
        #[arg(long)]
        sd_aid: String,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum DeriveCommand {
    /// EMV Option A ICC master key for a PAN/PSN.
    EmvCard {
        #[arg(long, short = 't')]
        tenant: String,
        #[arg(long)]
        imk: String,
        /// The PAN, or '-' to read it from standard input (so it never
        /// appears in the process list or shell history).
        #[arg(long)]
        pan: String,
        #[arg(long)]
        psn: String,
        #[arg(long)]
        kek: String,
    },
    /// A Security Domain's static ENC/MAC/DEK from its KMC.
    SdKeys {
        #[arg(long, short = 't')]
        tenant: String,
        #[arg(long)]
        kmc: String,
        /// emv-cps11|visa2|kdf3 (KDF3 keys are as long as the KMC)
        #[arg(long)]
        method: String,
        #[arg(long)]
        kdd: String,
        #[arg(long)]
        kek: String,
    },
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 2.0)]
    pub seconds: f64,
    /// Concurrent callers for the N-caller rows.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Also measure the provisioning API: POST /v1/card-keys/emv on an
    /// in-process mTLS server (temporary development PKI, loopback) driven
    /// by 1 and N reference clients, beside the raw token rate of the same
    /// work and the separately measured rates of a request's other parts.
    #[arg(long)]
    pub api: bool,
}

pub fn run() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(commands::dispatch(&cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = output::exit_code(&e);
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({"error": format!("{e:#}"), "exit_code": code})
                );
            } else {
                eprintln!("error: {e:#}");
            }
            ExitCode::from(code)
        }
    }
}
