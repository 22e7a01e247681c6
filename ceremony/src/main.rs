//! `kms-ceremony`: list, show, run and verify key ceremonies.
//!
//! Exit codes: 0 done, 1 failure, 2 usage or bad script/answers, 3 the
//! ceremony was aborted (its transcript is written and recorded anyway),
//! 4 a transcript does not verify.

use anyhow::{bail, Context, Result};
use ceremony::{Answers, Console, Kms, KmsAccess, ScriptedConsole, TerminalConsole};
use clap::{Parser, Subcommand};
use kms::config::Config;
use kms::service::ceremony::{SignedTranscript, StepOutcome};
use kms::service::Actor;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "kms-ceremony",
    about = "Key ceremonies for custodians",
    version
)]
struct Cli {
    /// The KMS configuration (default $KMS_CONFIG, else ./kms.toml).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Where the scripts are (default <policy dir>/ceremonies).
    #[arg(long, global = true)]
    scripts: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The ceremonies available.
    List,
    /// What a ceremony does, who must be present, its steps.
    Show { name: String },
    /// Run a ceremony.
    Run {
        name: String,
        /// A parameter, `name=value` (repeatable).
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
        /// Drive it from an answers file instead of the terminal.
        #[arg(long)]
        answers: Option<PathBuf>,
        /// Where the signed transcript goes (default
        /// var/ceremonies/<name>-<run>.json).
        #[arg(long)]
        transcript: Option<PathBuf>,
    },
    /// Check a transcript: its digest, the KMS's signature, and that the
    /// audit trail holds it.
    Verify { transcript: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(dispatch(&cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            let usage = e.downcast_ref::<ceremony::ScriptError>().is_some()
                || e.downcast_ref::<ceremony::console::ConsoleError>()
                    .is_some();
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}

fn scripts_dir(cli: &Cli, cfg: Option<&Config>) -> PathBuf {
    if let Some(d) = &cli.scripts {
        return d.clone();
    }
    match cfg {
        Some(c) => c.policy_dir.join("ceremonies"),
        None => PathBuf::from("policies/ceremonies"),
    }
}

async fn dispatch(cli: &Cli) -> Result<u8> {
    match &cli.command {
        Command::List => {
            let cfg = Config::load(cli.config.as_deref()).ok();
            let dir = scripts_dir(cli, cfg.as_ref());
            for (name, s) in ceremony::script::load_dir(&dir)? {
                let ready = match ceremony::preflight(&s) {
                    Ok(()) => String::new(),
                    Err(e) => format!("  [{e}]"),
                };
                println!("{name:24} {}{ready}", s.title);
            }
            Ok(0)
        }
        Command::Show { name } => {
            let cfg = Config::load(cli.config.as_deref()).ok();
            let s = ceremony::script::find(&scripts_dir(cli, cfg.as_ref()), name)?;
            print!("{}", s.describe());
            Ok(0)
        }
        Command::Run {
            name,
            params,
            answers,
            transcript,
        } => run(cli, name, params, answers.as_deref(), transcript.as_deref()).await,
        Command::Verify { transcript } => verify(cli, transcript).await,
    }
}

fn parse_params(given: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for p in given {
        let Some((k, v)) = p.split_once('=') else {
            bail!(ceremony::ScriptError::Parameter(
                p.clone(),
                "give parameters as name=value".into()
            ));
        };
        out.insert(k.trim().to_owned(), v.trim().to_owned());
    }
    Ok(out)
}

async fn run(
    cli: &Cli,
    name: &str,
    params: &[String],
    answers: Option<&Path>,
    transcript: Option<&Path>,
) -> Result<u8> {
    let cfg = Config::load(cli.config.as_deref()).context("loading the KMS configuration")?;
    let script = ceremony::script::find(&scripts_dir(cli, Some(&cfg)), name)?;
    let given = parse_params(params)?;
    // Everything that can be refused without the token, before anyone types.
    ceremony::preflight(&script)?;
    script.resolve_params(&given)?;
    let mut console: Box<dyn Console> = match answers {
        Some(p) => Box::new(ScriptedConsole::new(Answers::load(p)?)),
        None => Box::new(TerminalConsole::new()),
    };
    let access = KmsAccess::from_config(&cfg)?;
    let mut kms = if script.recovers_token() {
        Kms::open_for_recovery(access).await
    } else {
        Kms::open(access).await
    }
    .context("opening the KMS")?;
    let result = ceremony::run(&script, &given, &mut kms, console.as_mut()).await;
    let closed = kms.close().await;
    let signed = result?;
    closed?;
    let path = match transcript {
        Some(p) => p.to_owned(),
        None => PathBuf::from("var/ceremonies").join(format!(
            "{}-{}.json",
            signed.transcript.ceremony, signed.transcript.run_id
        )),
    };
    write_transcript(&path, &signed)?;
    println!("Transcript written to {}", path.display());
    Ok(match signed.transcript.outcome {
        StepOutcome::Done => 0,
        _ => 3,
    })
}

fn write_transcript(path: &Path, signed: &SignedTranscript) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(signed)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

async fn verify(cli: &Cli, path: &Path) -> Result<u8> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let signed: SignedTranscript = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a transcript", path.display()))?;
    let cfg = Config::load(cli.config.as_deref()).context("loading the KMS configuration")?;
    let kms = Kms::open(KmsAccess::from_config(&cfg)?).await?;
    let who = std::env::var("USER").unwrap_or_else(|_| "officer".into());
    let check = kms
        .svc()?
        .verify_transcript(&Actor::parse(&who)?, &signed)
        .await;
    kms.close().await?;
    let check = check?;
    println!(
        "ceremony {} run {} ({}):\n  digest    {}\n  signature {}\n  trail     {}",
        signed.transcript.ceremony,
        signed.transcript.run_id,
        signed.transcript.outcome.as_str(),
        if check.digest_matches {
            "matches"
        } else {
            "DIFFERS"
        },
        if check.signature_valid {
            "valid (KMS transcript key)"
        } else {
            "INVALID"
        },
        match check.audit_seq {
            Some(s) => format!("recorded at seq {s}"),
            None => "NOT FOUND".into(),
        }
    );
    Ok(if check.ok() { 0 } else { 4 })
}
