//! `kms backup kek-create|kek-execute|create|kek-recover|restore` (KM-2,
//! issue 5): the automation path of the backup and recovery ceremony.
//! Creating the trusted backup KEK is dual-controlled (invariant 3): a
//! security officer requests it, others approve (`kms request approve`),
//! and the officer executes it under the token's SO login. Shares are
//! written one per file (mode 0600) and read back from files; they are
//! never printed, and neither is any key.

use super::commands::{actor, close_all, person, service};
use super::output::print;
use super::Cli;
use anyhow::{bail, Context, Result};
use clap::Subcommand;
use kms::config::Config;
use kms::crypto::Share;
use kms::hsm::{Hsm, Role};
use kms::model::KeyName;
use kms::policy::KeyPolicy;
use kms::service::{renew_lost_system_keys, BackupFile, KeyService, Operation};
use kms::store::Store;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use zeroize::Zeroizing;

#[derive(Subcommand, Debug)]
pub enum BackupCommand {
    /// Request the backup KEK (as a security officer, --as): AES-256 from
    /// the token's generator, imported trusted, its value split into N
    /// shares of which any M rebuild it. Nothing is made until others
    /// approved the request and `kek-execute` runs it.
    KekCreate {
        /// The KEK's name (in the `kms` tenant).
        #[arg(long, default_value = "backup-kek")]
        name: String,
        /// M: shares needed to recover the KEK.
        #[arg(long)]
        threshold: u8,
        /// N: shares made, one per custodian.
        #[arg(long)]
        shares: u8,
        /// Read the officer's PIN from standard input (one line).
        #[arg(long)]
        pin_stdin: bool,
    },
    /// Execute an approved backup KEK request (its requester, --as, under
    /// the security officer's login), writing the shares one file each in
    /// --share-dir.
    KekExecute {
        /// The request's id.
        id: String,
        /// A directory for the share files (created 0700 if missing).
        #[arg(long)]
        share_dir: PathBuf,
        /// Read the officer's PIN from standard input (one line).
        #[arg(long)]
        pin_stdin: bool,
    },
    /// Back up every key the policy backs up, wrapped under the backup KEK.
    Create {
        #[arg(long, default_value = "backup-kek")]
        kek: String,
        /// The backup file to write (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// Rebuild the backup KEK on a new token from M custodians' share files
    /// (security officer's login).
    KekRecover {
        #[arg(long, default_value = "backup-kek")]
        name: String,
        /// One custodian's share file (repeat for each of the M shares).
        /// Not `--share-file`, which is the unseal shares' global flag.
        #[arg(long = "kek-share", required = true)]
        kek_share: Vec<PathBuf>,
        /// The KEK's check value, as the backup file records it.
        #[arg(long)]
        expect_kcv: Option<String>,
        /// Or take the expected check value from this backup file.
        #[arg(long, conflicts_with = "expect_kcv")]
        backup: Option<PathBuf>,
    },
    /// Restore a backup file onto the token (after kek-recover).
    Restore {
        file: PathBuf,
        /// The token was replaced: first put back the KMS's own audit keys
        /// lost with the old token (the MAC key from this backup, a new
        /// checkpoint signing key), without which nothing can be audited.
        #[arg(long)]
        new_token: bool,
    },
}

pub(super) async fn run(cli: &Cli, cmd: &BackupCommand) -> Result<()> {
    let who = actor(cli)?;
    match cmd {
        BackupCommand::KekCreate {
            name,
            threshold,
            shares,
            pin_stdin,
        } => {
            let op = Operation::BackupKek {
                name: KeyName::parse(name)?.to_string(),
                threshold: *threshold,
                shares: *shares,
            };
            let svc = service(cli, Role::User).await?;
            let session = person(cli, &svc, *pin_stdin).await?;
            let req = svc.request(&session, op).await?;
            print(cli.json, &req, || {
                format!(
                    "request {} created by {}: the backup KEK kms/{name}, {threshold} of {shares} shares; it needs {} approval(s) by other people.\n\
                     Approvers confirm this digest:\n  {}\n\
                     then: kms request approve {} --digest <digest> --as <approver> --key <key.pem> --cert <cert.pem>\n\
                     and:  kms backup kek-execute {} --share-dir <dir> --as {}",
                    req.id,
                    req.requested_by,
                    req.approvals_needed,
                    req.digest,
                    req.id,
                    req.id,
                    req.requested_by
                )
            });
            Ok(())
        }
        BackupCommand::KekExecute {
            id,
            share_dir,
            pin_stdin,
        } => {
            let svc = service(cli, Role::User).await?;
            let Operation::BackupKek { name, .. } = svc.approval(id).await?.operation else {
                bail!("request {id} is not the creation of a backup KEK (kms request execute runs it)");
            };
            prepare_dir(share_dir)?;
            let session = person(cli, &svc, *pin_stdin).await?;
            drop(svc);
            close_all().await?;
            let svc = service(cli, Role::SecurityOfficer).await?;
            let made = svc.execute_backup_kek(&session, id).await;
            countersign_officer(cli, svc, None).await;
            let made = made?;
            let written = write_shares(share_dir, &made.shares)?;
            let out = serde_json::json!({
                "kek": format!("kms/{name}"),
                "kcv": made.kcv,
                "threshold": made.threshold,
                "shares": written.iter().map(|(i, cv, p)| serde_json::json!({
                    "index": i, "check_value": cv, "file": p.display().to_string(),
                })).collect::<Vec<_>>(),
            });
            print(cli.json, &out, || {
                let mut s = format!(
                    "backup KEK kms/{name} created trusted, check value {}; any {} of these {} shares recover it:\n",
                    made.kcv,
                    made.threshold,
                    written.len()
                );
                for (i, cv, p) in &written {
                    s.push_str(&format!("  share {i}: check value {cv}, {}\n", p.display()));
                }
                s.push_str("hand each file to its custodian and delete it here");
                s
            });
            Ok(())
        }
        BackupCommand::Create { kek, out } => {
            let kek = KeyName::parse(kek)?;
            let svc = service(cli, Role::User).await?;
            let file = svc.backup(&who, &kek).await?;
            write_new(out, &[file.to_json()?.as_bytes()])?;
            let summary = serde_json::json!({
                "file": out.display().to_string(),
                "digest": file.digest,
                "kek": format!("{}/{}", file.kek.tenant, file.kek.name),
                "kek_kcv": file.kek.kcv,
                "entries": file.entries.len(),
                "skipped": file.skipped,
            });
            print(cli.json, &summary, || {
                let mut s = format!(
                    "{} key versions backed up under {}/{} (check value {}) to {}\ndigest {}",
                    file.entries.len(),
                    file.kek.tenant,
                    file.kek.name,
                    file.kek.kcv,
                    out.display(),
                    file.digest
                );
                for k in &file.skipped {
                    s.push_str(&format!(
                        "\nnot backed up: {}/{} v{}: {}",
                        k.tenant, k.name, k.version, k.reason
                    ));
                }
                s
            });
            Ok(())
        }
        BackupCommand::KekRecover {
            name,
            kek_share,
            expect_kcv,
            backup,
        } => {
            let name = KeyName::parse(name)?;
            let file = backup.as_deref().map(read_backup).transpose()?;
            let expect = match (expect_kcv, &file) {
                (Some(k), _) => Some(k.clone()),
                (None, Some(f)) => Some(f.kek.kcv.clone()),
                (None, None) => None,
            };
            let shares = kek_share
                .iter()
                .map(|p| read_share(p))
                .collect::<Result<Vec<_>>>()?;
            let svc = service(cli, Role::SecurityOfficer).await?;
            let rec = svc
                .recover_backup_kek(&who, &name, shares, expect.as_deref())
                .await;
            countersign_officer(cli, svc, file.as_ref()).await;
            let rec = rec?;
            let kcv = rec
                .current()
                .and_then(|v| v.kcv.clone())
                .unwrap_or_default();
            print(cli.json, &rec, || {
                format!("backup KEK kms/{name} recovered onto this token, check value {kcv}")
            });
            Ok(())
        }
        BackupCommand::Restore { file, new_token } => {
            let backup = read_backup(file)?;
            let svc = if *new_token {
                open_on_new_token(cli, &backup).await?
            } else {
                service(cli, Role::User).await.context(
                    "opening the service (if the token was replaced, restore with --new-token)",
                )?
            };
            let report = svc.restore(&who, &backup).await;
            if *new_token {
                // Not registered with the command's other services: closed here.
                svc.close().await?;
            }
            let report = report?;
            print(cli.json, &report, || {
                format!(
                    "backup {}: {} key versions restored, {} already on the token, {} destroyed since the backup (not restored)",
                    report.digest.get(..16).unwrap_or_default(),
                    report.restored.len(),
                    report.present.len(),
                    report.destroyed_since.len()
                )
            });
            Ok(())
        }
    }
}

/// Records made under the security officer's login carry no MAC: close
/// that login and countersign them at once under the user's, as `kms
/// request execute` does. On a replacement token the user's login opens
/// only once the KMS's audit keys are back, which `backup` (the file)
/// allows right after the KEK is recovered; otherwise say what stays
/// without a countersignature (the chain and the next checkpoint cover it).
async fn countersign_officer(cli: &Cli, svc: KeyService, backup: Option<&BackupFile>) {
    let so_log = svc.audit().clone();
    drop(svc);
    if let Err(e) = super::commands::close_all().await {
        eprintln!("warning: closing the security officer's login: {e:#}");
    }
    let unmaced = so_log.take_unmaced();
    drop(so_log);
    let user = match backup {
        Some(f) => open_on_new_token(cli, f).await.map(|s| (s, true)),
        None => service(cli, Role::User).await.map(|s| (s, false)),
    };
    let done = match user {
        Ok((user, own)) => {
            let signed = user.audit().countersign(unmaced).await;
            if own {
                if let Err(e) = user.close().await {
                    eprintln!("warning: closing the user's login: {e:#}");
                }
            }
            signed.map(|_| ()).map_err(anyhow::Error::from)
        }
        Err(e) => Err(e),
    };
    if let Err(e) = done {
        eprintln!(
            "warning: the security officer's records of this command could not be countersigned: {e:#}"
        );
    }
}

/// The user's login on a replacement token: the KMS's own keys that went
/// with the old token are renewed (recorded) before the service opens,
/// since the service cannot audit anything without them.
async fn open_on_new_token(cli: &Cli, backup: &BackupFile) -> Result<KeyService> {
    let cfg = Config::load(cli.config.as_deref())?;
    let policy = KeyPolicy::load(&cfg.policy_dir)?;
    let store = Store::connect(&cfg.database_url)
        .await
        .context("opening the database")?;
    let hsm_cfg = cfg.hsm(Role::User)?;
    let hsm = tokio::task::spawn_blocking(move || Hsm::open(&hsm_cfg))
        .await?
        .context("opening the token")?;
    let hsm = Arc::new(hsm);
    let renewal = renew_lost_system_keys(hsm.clone(), &store, &actor(cli)?, Some(backup)).await?;
    for line in &renewal.done {
        eprintln!("{line}");
    }
    let svc = KeyService::open(hsm, store, policy, "cli").await?;
    renewal.countersign(&svc).await?;
    Ok(svc)
}

fn read_backup(path: &Path) -> Result<BackupFile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the backup file {}", path.display()))?;
    Ok(BackupFile::from_json(&text)?)
}

fn read_share(path: &Path) -> Result<Share> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .with_context(|| format!("reading the share file {}", path.display()))?,
    );
    Share::parse(text.trim()).with_context(|| format!("the share in {}", path.display()))
}

fn prepare_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if !dir.exists() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("setting the mode of {}", dir.display()))?;
    }
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    Ok(())
}

/// A new file, mode 0600; an existing one is never overwritten.
fn write_new(path: &Path, parts: &[&[u8]]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    parts
        .iter()
        .try_for_each(|p| f.write_all(p))
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// One file per share: (index, check value, path).
fn write_shares(dir: &Path, shares: &[Share]) -> Result<Vec<(u8, String, PathBuf)>> {
    let mut out = Vec::with_capacity(shares.len());
    for s in shares {
        let path = dir.join(format!("backup-kek-share-{}.txt", s.index()));
        // Not pushed onto the text: a growing String leaves an unwiped copy.
        let text = s.to_text();
        write_new(&path, &[text.as_bytes(), b"\n"])?;
        out.push((s.index(), s.check_value().to_string(), path));
    }
    Ok(out)
}
