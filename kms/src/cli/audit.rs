//! `kms audit ...`: verify, search, export, report, public key, checkpoint.

use super::output::print;
use super::{AuditCommand, Cli};
use anyhow::{bail, Context, Result};
use kms::audit::{
    parse_public_key, public_key_pem, render_html, stored_from_jsonl, verify_chain, AuditLog,
    AuditRecord, ChainStart, Checkpoint, Outcome, VerifyReport,
};
use kms::hsm::Role;
use kms::store::AuditFilter;

/// Exit code when verification finds damage (as for other inconsistencies).
const DAMAGED: u8 = 4;

fn show_report(cli: &Cli, r: &VerifyReport) -> Result<()> {
    print(cli.json, r, || {
        let mut s = format!(
            "{} records ({}..{}), {} of {} checkpoints verified, {} MACs verified\n",
            r.records,
            r.first_seq.map(|x| x.to_string()).unwrap_or_default(),
            r.last_seq.map(|x| x.to_string()).unwrap_or_default(),
            r.checkpoints_verified,
            r.checkpoints,
            r.macs_verified
        );
        if r.ok() && r.checkpoints_verified == 0 {
            s.push_str("VERIFIED (self-consistent only: no signed checkpoint was checked; pass --checkpoints and --public-key)");
        } else if r.ok() {
            s.push_str("VERIFIED: the chain is intact");
        } else {
            s.push_str(&format!("DAMAGED: {} finding(s)\n", r.damage.len()));
            for d in &r.damage {
                s.push_str(&format!(
                    "  record {:>8}  {:<15} {}\n",
                    d.seq,
                    format!("{:?}", d.kind),
                    d.detail
                ));
            }
        }
        s
    });
    if r.ok() {
        Ok(())
    } else {
        Err(anyhow::Error::new(AuditDamaged(r.damage.len())))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the audit chain is damaged ({0} finding(s))")]
pub struct AuditDamaged(pub usize);

pub fn damaged_exit_code(e: &anyhow::Error) -> Option<u8> {
    e.downcast_ref::<AuditDamaged>().map(|_| DAMAGED)
}

fn read_checkpoints(path: &std::path::Path) -> Result<Vec<Checkpoint>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).context("a checkpoint line"))
        .collect()
}

pub async fn run(cli: &Cli, cmd: &AuditCommand) -> Result<()> {
    match cmd {
        AuditCommand::Verify {
            archive: Some(dir),
            public_key,
            ..
        } => {
            let key_path = public_key
                .clone()
                .unwrap_or_else(|| dir.join(PUBLIC_KEY_FILE));
            let key = parse_public_key(
                &std::fs::read_to_string(&key_path)
                    .with_context(|| format!("reading {}", key_path.display()))?,
            )
            .map_err(|e| anyhow::anyhow!("public key: {e}"))?;
            let segments = read_archive(dir)?;
            let Some(first) = segments.first() else {
                bail!("no segments in {}", dir.display());
            };
            let start = ChainStart {
                first_seq: first.0.first_seq,
                prev_hash: first.0.prev_hash.clone(),
            };
            let (mut text, mut cps) = (String::new(), Vec::new());
            for (m, base) in &segments {
                text.push_str(&std::fs::read_to_string(base.with_extension("jsonl"))?);
                cps.extend(read_checkpoints(&base.with_extension("checkpoints.jsonl"))?);
                let _ = m;
            }
            let r = verify_chain(
                stored_from_jsonl(&text),
                &cps,
                Some(&key),
                None,
                Some(&start),
            );
            show_report(cli, &r)
        }
        AuditCommand::Verify {
            records: Some(records),
            checkpoints,
            public_key,
            ..
        } => {
            // Offline: a file and a public key; no database, no HSM.
            let text = std::fs::read_to_string(records)
                .with_context(|| format!("reading {}", records.display()))?;
            let cps = match checkpoints {
                Some(p) => read_checkpoints(p)?,
                None => Vec::new(),
            };
            let key = match public_key {
                Some(p) => Some(
                    parse_public_key(&std::fs::read_to_string(p)?)
                        .map_err(|e| anyhow::anyhow!("public key: {e}"))?,
                ),
                None if !cps.is_empty() => {
                    return Err(kms::service::ServiceError::Invalid(
                        "--public-key is needed to check checkpoints".into(),
                    )
                    .into())
                }
                None => None,
            };
            let r = verify_chain(stored_from_jsonl(&text), &cps, key.as_ref(), None, None);
            show_report(cli, &r)
        }
        AuditCommand::Verify { records: None, .. } => {
            let svc = super::commands::service(cli, Role::User).await?;
            let r = svc.audit().verify_database().await?;
            record_read(
                &svc,
                cli,
                "audit.verify",
                if r.ok() { "intact" } else { "damaged" },
            )
            .await?;
            show_report(cli, &r)
        }
        AuditCommand::Search {
            from,
            to,
            by,
            key,
            action,
            outcome,
            request_id,
            limit,
        } => {
            let svc = super::commands::service(cli, Role::User).await?;
            let filter = AuditFilter {
                from: from.clone(),
                to: to.clone(),
                actor: by.clone(),
                action: action.clone(),
                outcome: outcome
                    .as_deref()
                    .map(|o| o.parse::<Outcome>().map_err(|e| anyhow::anyhow!(e)))
                    .transpose()?,
                request_id: request_id.clone(),
                key: key.clone(),
                limit: Some(*limit),
            };
            let found = svc.audit().store().audit_search(&filter).await?;
            record_read(
                &svc,
                cli,
                "audit.search",
                &format!("{} records", found.len()),
            )
            .await?;
            for r in &found {
                let text = if cli.json {
                    serde_json::to_string(r)?
                } else {
                    line(r)
                };
                super::output::line(&text);
            }
            Ok(())
        }
        AuditCommand::Export {
            out,
            checkpoints,
            public_key,
        } => {
            let svc = super::commands::service(cli, Role::User).await?;
            // Sign the head first, so the export ends at a checkpoint and a
            // truncated copy is detectable.
            svc.audit().checkpoint_head().await?;
            let stored = AuditLog::stored(svc.audit().store()).await?;
            let mut text = String::new();
            for s in &stored {
                match &s.record {
                    Ok(r) => {
                        text.push_str(&serde_json::to_string(r)?);
                        text.push('\n');
                    }
                    Err(e) => bail!("record {} cannot be read: {e}", s.position),
                }
            }
            std::fs::write(out, &text).with_context(|| format!("writing {}", out.display()))?;
            if let Some(p) = checkpoints {
                let mut t = String::new();
                for c in svc.audit().store().checkpoints().await? {
                    t.push_str(&serde_json::to_string(&c)?);
                    t.push('\n');
                }
                std::fs::write(p, t)?;
            }
            if let Some(p) = public_key {
                let pem = public_key_pem(&svc.audit().public_key().await?)
                    .map_err(|e| anyhow::anyhow!(e))?;
                std::fs::write(p, pem)?;
            }
            record_read(
                &svc,
                cli,
                "audit.export",
                &format!("{} records", stored.len()),
            )
            .await?;
            eprintln!("exported {} records to {}", stored.len(), out.display());
            Ok(())
        }
        AuditCommand::Report { out, title } => {
            let svc = super::commands::service(cli, Role::User).await?;
            let verification = svc.audit().verify_database().await?;
            record_read(
                &svc,
                cli,
                "audit.report",
                if verification.ok() {
                    "intact"
                } else {
                    "damaged"
                },
            )
            .await?;
            let stored = AuditLog::stored(svc.audit().store()).await?;
            let records: Vec<AuditRecord> =
                stored.into_iter().filter_map(|s| s.record.ok()).collect();
            let cps = svc.audit().store().checkpoints().await?;
            let now = time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default();
            let html = render_html(title, &records, &cps, &verification, &now);
            std::fs::write(out, html).with_context(|| format!("writing {}", out.display()))?;
            eprintln!("report written to {}", out.display());
            if verification.ok() {
                Ok(())
            } else {
                // The report shows the damage; the exit code says it too.
                Err(anyhow::Error::new(AuditDamaged(verification.damage.len())))
            }
        }
        AuditCommand::Archive { through, dir } => archive(cli, *through, dir).await,
        AuditCommand::PublicKey => {
            let svc = super::commands::service(cli, Role::User).await?;
            let pem =
                public_key_pem(&svc.audit().public_key().await?).map_err(|e| anyhow::anyhow!(e))?;
            record_read(&svc, cli, "audit.public-key", "published").await?;
            print!("{pem}");
            Ok(())
        }
        AuditCommand::Checkpoint => {
            let svc = super::commands::service(cli, Role::User).await?;
            let cp = svc.audit().checkpoint_head().await?;
            record_read(&svc, cli, "audit.checkpoint", "signed").await?;
            print(cli.json, &cp, || match &cp {
                Some(c) => format!("checkpoint at record {} ({}…) signed", c.seq, &c.hash[..16]),
                None => "the chain is empty".into(),
            });
            Ok(())
        }
    }
}

/// Officers' reads of the trail are acts too.
async fn record_read(
    svc: &kms::service::KeyService,
    cli: &Cli,
    action: &str,
    what: &str,
) -> Result<()> {
    let actor = cli
        .actor
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "operator".into());
    svc.audit()
        .record(kms::audit::AuditEvent {
            actor,
            role: svc.role_name().into(),
            action: action.into(),
            outcome: Some(Outcome::Success),
            source: Some("cli".into()),
            details: [("result".to_owned(), what.to_owned())].into(),
            ..Default::default()
        })
        .await?;
    Ok(())
}

fn line(r: &AuditRecord) -> String {
    let keys: Vec<String> = r
        .event
        .keys
        .iter()
        .map(|k| {
            format!(
                "{}/{}{}",
                k.tenant,
                k.name,
                k.version.map(|v| format!(" v{v}")).unwrap_or_default()
            )
        })
        .collect();
    format!(
        "{:>7} {} {:<16} {:<18} {:<8} {} {}",
        r.seq,
        r.at,
        r.event.actor,
        r.event.action,
        r.event.outcome.map(Outcome::as_str).unwrap_or("-"),
        keys.join(","),
        r.event.reason.as_deref().unwrap_or("")
    )
}

const PUBLIC_KEY_FILE: &str = "audit-public-key.pem";

/// What an archive segment says about itself.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub first_seq: u64,
    pub last_seq: u64,
    /// The hash the first record links to.
    pub prev_hash: String,
    pub last_hash: String,
    pub records: u64,
    pub created_at: String,
}

/// Segments of an archive directory, oldest first: (manifest, path without extension).
fn read_archive(dir: &std::path::Path) -> Result<Vec<(Manifest, std::path::PathBuf)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "json") {
            let m: Manifest = serde_json::from_str(&std::fs::read_to_string(&p)?)
                .with_context(|| format!("manifest {}", p.display()))?;
            out.push((m, p.with_extension("")));
        }
    }
    out.sort_by_key(|(m, _)| m.first_seq);
    Ok(out)
}

async fn archive(cli: &Cli, through: u64, dir: &std::path::Path) -> Result<()> {
    let svc = super::commands::service(cli, Role::User).await?;
    let store = svc.audit().store();
    let (first, prev_hash) = store.audit_chain_start().await?;
    let (head, _) = store.audit_head().await?;
    if through < first || through >= head {
        bail!(kms::service::ServiceError::Invalid(format!(
            "--through must be between {first} and {} (the head, {head}, stays)",
            head.saturating_sub(1)
        )));
    }
    // The whole database chain must be intact before any of it moves.
    let check = svc.audit().verify_database().await?;
    if !check.ok() {
        show_report(cli, &check)?;
    }
    let stored = AuditLog::stored(store).await?;
    let segment: Vec<AuditRecord> = stored
        .into_iter()
        .filter_map(|s| s.record.ok())
        .filter(|r| r.seq <= through)
        .collect();
    let last_hash = segment.last().map(|r| r.hash.clone()).unwrap_or_default();
    svc.audit().checkpoint_at(through, &last_hash).await?;
    std::fs::create_dir_all(dir)?;
    let base = dir.join(format!("segment-{first:012}-{through:012}"));
    let mut text = String::new();
    for r in &segment {
        text.push_str(&serde_json::to_string(r)?);
        text.push('\n');
    }
    let mut cps = String::new();
    for c in store
        .checkpoints()
        .await?
        .into_iter()
        .filter(|c| c.seq >= first && c.seq <= through)
    {
        cps.push_str(&serde_json::to_string(&c)?);
        cps.push('\n');
    }
    let manifest = Manifest {
        first_seq: first,
        last_seq: through,
        prev_hash,
        last_hash: last_hash.clone(),
        records: segment.len() as u64,
        created_at: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
    };
    let pem = public_key_pem(&svc.audit().public_key().await?).map_err(|e| anyhow::anyhow!(e))?;
    std::fs::write(base.with_extension("jsonl"), &text)?;
    std::fs::write(base.with_extension("checkpoints.jsonl"), &cps)?;
    std::fs::write(dir.join(PUBLIC_KEY_FILE), &pem)?;
    std::fs::write(
        base.with_extension("json"),
        serde_json::to_string_pretty(&manifest)?,
    )?;
    // Read back what was written and verify it on its own before deleting.
    let key = parse_public_key(&pem).map_err(|e| anyhow::anyhow!(e))?;
    let written = std::fs::read_to_string(base.with_extension("jsonl"))?;
    let r = verify_chain(
        stored_from_jsonl(&written),
        &read_checkpoints(&base.with_extension("checkpoints.jsonl"))?,
        Some(&key),
        Some((through, last_hash.clone())),
        Some(&ChainStart {
            first_seq: manifest.first_seq,
            prev_hash: manifest.prev_hash.clone(),
        }),
    );
    if !r.ok() || r.checkpoints_verified == 0 {
        bail!("the written segment does not verify; nothing was deleted");
    }
    store
        .archive_audit_through(
            first,
            through,
            &last_hash,
            &base.display().to_string(),
            segment.len() as u64,
        )
        .await?;
    // The trail itself says where it was cut: verification accepts a
    // chain that starts after record 1 only with this record and a signed
    // checkpoint at the cut.
    svc.audit()
        .record(kms::audit::AuditEvent {
            actor: cli
                .actor
                .clone()
                .or_else(|| std::env::var("USER").ok())
                .unwrap_or_else(|| "operator".into()),
            role: svc.role_name().into(),
            action: "audit.archive".into(),
            outcome: Some(Outcome::Success),
            source: Some("cli".into()),
            details: [
                ("first".to_owned(), first.to_string()),
                ("through".to_owned(), through.to_string()),
                ("location".to_owned(), base.display().to_string()),
            ]
            .into(),
            ..Default::default()
        })
        .await?;
    print(cli.json, &manifest, || {
        format!(
            "archived records {first}..{through} ({} records) to {}.jsonl; the database chain now starts at {}",
            manifest.records,
            base.display(),
            through + 1
        )
    });
    Ok(())
}
