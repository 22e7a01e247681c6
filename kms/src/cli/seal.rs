//! `kms seal init|status|rotate|rekey`, and unsealing for every command
//! that opens the service on a sealed deployment (KM-2, TSM-AC-3).
//!
//! Shares come from `--share-file` (repeatable), else from
//! $KMS_UNSEAL_SHARE_FILES (colon-separated paths), else, on a terminal,
//! from hidden prompts. The interactive ceremony (one custodian at a time,
//! check values read aloud) is `kms-ceremony`'s; this is the automation
//! path.

use super::output::print;
use super::{Cli, SealCommand};
use anyhow::{bail, Context, Result};
use kms::config::{Config, PinSource};
use kms::crypto::Share;
use kms::hsm::Role;
use kms::policy::KeyPolicy;
use kms::seal::{SealStatus, Unsealer};
use kms::service::KeyService;
use kms::store::Store;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// Colon-separated share files, when `--share-file` is not given.
pub const SHARE_FILES_ENV: &str = "KMS_UNSEAL_SHARE_FILES";

pub async fn run(cli: &Cli, c: &SealCommand) -> Result<()> {
    match c {
        SealCommand::Init {
            threshold,
            shares,
            share_dir,
        } => init(cli, *threshold, *shares, share_dir).await,
        SealCommand::Status => status(cli).await,
        SealCommand::Rotate {
            threshold,
            shares,
            share_dir,
        } => renew(cli, false, *threshold, *shares, share_dir).await,
        SealCommand::Rekey {
            threshold,
            shares,
            share_dir,
        } => renew(cli, true, *threshold, *shares, share_dir).await,
    }
}

/// If the deployment is sealed, collect M shares and open the service with
/// the PIN they stand for; None when it is not sealed.
pub(super) async fn unseal_if_sealed(
    cli: &Cli,
    cfg: &Config,
    store: &Store,
    policy: &KeyPolicy,
) -> Result<Option<KeyService>> {
    let Some(mut unsealer) = Unsealer::load(store.clone(), "cli").await? else {
        return Ok(None);
    };
    let actor = super::commands::actor(cli)?;
    let need = unsealer.progress().need;
    let texts = share_texts(cli, need)?;
    if texts.is_empty() {
        let why = format!(
            "the KMS is sealed: {need} unseal shares are needed (--share-file, ${SHARE_FILES_ENV}, or run on a terminal to type them)"
        );
        // Refused before any share was seen; still an act on the record.
        let event = kms::audit::AuditEvent {
            actor: actor.as_str().to_owned(),
            role: "operator".into(),
            action: "seal.unseal".into(),
            outcome: Some(kms::audit::Outcome::Refused),
            reason: Some(why.clone()),
            source: Some("cli".into()),
            ..Default::default()
        };
        kms::audit::AuditLog::record_without_hsm(store, event)
            .await
            .context("recording the refusal")?;
        bail!(why);
    }
    for text in texts.iter().take(usize::from(need)) {
        unsealer
            .present(text, actor.as_str())
            .await
            .context("unseal share")?;
    }
    let hsm = cfg.hsm_with_pin(Role::User, Zeroizing::new(String::new()));
    let svc = unsealer
        .open(hsm, policy.clone(), "cli")
        .await
        .context("unsealing")?;
    Ok(Some(svc))
}

/// The shares of this command: files, then the environment, then prompts.
fn share_texts(cli: &Cli, need: u8) -> Result<Vec<Zeroizing<String>>> {
    let files: Vec<PathBuf> = if !cli.share_file.is_empty() {
        cli.share_file.clone()
    } else {
        std::env::var(SHARE_FILES_ENV)
            .unwrap_or_default()
            .split(':')
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect()
    };
    if !files.is_empty() {
        return files.iter().map(|f| read_share(f)).collect();
    }
    if !std::io::stdin().is_terminal() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for i in 1..=need {
        let typed = Zeroizing::new(
            rpassword::prompt_password(format!("unseal share {i} of {need}: "))
                .context("reading a share from the terminal")?,
        );
        out.push(typed);
    }
    Ok(out)
}

fn read_share(path: &Path) -> Result<Zeroizing<String>> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .with_context(|| format!("reading the share file {}", path.display()))?,
    );
    Ok(Zeroizing::new(text.trim().to_owned()))
}

/// The shares given for this command, parsed (for rotate and re-key,
/// which need M current shares: the same ones that unsealed).
fn current_shares(cli: &Cli, need: u8) -> Result<Vec<Share>> {
    share_texts(cli, need)?
        .iter()
        .map(|t| Share::parse(t).map_err(anyhow::Error::from))
        .collect()
}

async fn init(cli: &Cli, m: u8, n: u8, dir: &Path) -> Result<()> {
    prepare_dir(dir, n)?;
    let cfg = Config::load(cli.config.as_deref())?;
    let svc = super::commands::service(cli, Role::User).await?;
    let actor = super::commands::actor(cli)?;
    let shares = svc.initialize_seal(&actor, m, n).await?;
    let written = write_shares(dir, &shares)?;
    let pin_file = retire_pin_source(&cfg.user_pin);
    report(cli, &svc, written, pin_file).await
}

async fn renew(cli: &Cli, rekey: bool, m: u8, n: u8, dir: &Path) -> Result<()> {
    prepare_dir(dir, n)?;
    let svc = super::commands::service(cli, Role::User).await?;
    let actor = super::commands::actor(cli)?;
    let Some(rec) = svc.seal_record().await? else {
        bail!("the KMS is not sealed; `kms seal init` first");
    };
    let current = current_shares(cli, rec.threshold)?;
    let shares = if rekey {
        svc.rekey_seal(&actor, &current, m, n).await?
    } else {
        svc.rotate_shares(&actor, &current, m, n).await?
    };
    drop(current);
    let written = write_shares(dir, &shares)?;
    report(cli, &svc, written, None).await
}

async fn report(
    cli: &Cli,
    svc: &KeyService,
    written: Vec<(u8, String, PathBuf)>,
    pin_file: Option<String>,
) -> Result<()> {
    let rec = svc.seal_record().await?;
    let status = SealStatus::of(rec.as_ref(), false, 0);
    let value = serde_json::json!({
        "seal": status,
        "share_files": written.iter().map(|(i, c, p)| serde_json::json!({
            "index": i, "check_value": c, "file": p.display().to_string()
        })).collect::<Vec<_>>(),
        "pin_source": pin_file,
    });
    print(cli.json, &value, || {
        let mut s = format!(
            "sealed: generation {}, split {}, {} of {} shares needed to unseal",
            status.generation.unwrap_or(0),
            status.split_id.clone().unwrap_or_default(),
            status.need,
            status.shares
        );
        for (i, c, p) in &written {
            s.push_str(&format!("\n  share {i}: check value {c}  {}", p.display()));
        }
        if let Some(p) = &pin_file {
            s.push_str(&format!("\n{p}"));
        }
        s.push_str("\nhand each share file to its custodian, then delete it here");
        s
    });
    Ok(())
}

async fn status(cli: &Cli) -> Result<()> {
    let cfg = Config::load(cli.config.as_deref())?;
    let store = Store::connect(&cfg.database_url)
        .await
        .context("opening the database")?;
    let rec = store.seal_current().await?;
    // This process has not unsealed anything: a configured seal means a
    // start needs shares.
    let status = SealStatus::of(rec.as_ref(), rec.is_some(), 0);
    print(cli.json, &status, || match &rec {
        None => "not sealed: the token's user PIN comes from its configured source".into(),
        Some(r) => format!(
            "sealed: generation {} ({}), split {}, {} of {} shares needed; made {} by {}",
            r.generation,
            r.kind.as_str(),
            r.split_id,
            r.threshold,
            r.shares,
            r.created_at,
            r.created_by
        ),
    });
    Ok(())
}

/// Refuse before anything changes if the shares could not be written.
fn prepare_dir(dir: &Path, n: u8) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating the share directory {}", dir.display()))?;
    set_mode(dir, 0o700)?;
    for i in 1..=n {
        let p = share_path(dir, i);
        if p.exists() {
            bail!(
                "{} exists: move earlier share files away before making new ones",
                p.display()
            );
        }
    }
    Ok(())
}

fn share_path(dir: &Path, index: u8) -> PathBuf {
    dir.join(format!("share-{index}.txt"))
}

/// One file per share, created new with mode 0600.
fn write_shares(dir: &Path, shares: &[Share]) -> Result<Vec<(u8, String, PathBuf)>> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut out = Vec::new();
    for s in shares {
        let p = share_path(dir, s.index());
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&p)
            .with_context(|| format!("creating {}", p.display()))?;
        let text = s.to_text();
        f.write_all(text.as_bytes())
            .and_then(|_| f.write_all(b"\n"))
            .and_then(|_| f.sync_all())
            .with_context(|| format!("writing {}", p.display()))?;
        out.push((s.index(), s.check_value().to_string(), p));
    }
    Ok(out)
}

fn set_mode(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", p.display()))
}

/// The old PIN opens nothing now; a file holding it is overwritten and
/// removed so it cannot mislead. Says what was done.
fn retire_pin_source(source: &PinSource) -> Option<String> {
    match source {
        PinSource::File(p) => {
            let len = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
            let wiped = std::fs::write(p, vec![0u8; usize::try_from(len).unwrap_or(0)])
                .and_then(|_| std::fs::remove_file(p));
            Some(match wiped {
                Ok(()) => format!("the user PIN file {} was overwritten and deleted", p.display()),
                Err(e) => format!(
                    "warning: the user PIN file {} could not be deleted ({e}); delete it (it opens nothing any more)",
                    p.display()
                ),
            })
        }
        PinSource::Env(v) => Some(format!(
            "the user PIN in ${v} opens nothing any more; remove it from the environment"
        )),
    }
}
