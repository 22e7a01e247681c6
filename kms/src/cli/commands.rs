//! One function per command; each builds a service, calls it, prints.

use super::output::{key_detail, key_line, print};
use super::{Cli, Command, DeriveCommand, KeyCommand, KeyId, RequestCommand, SdCommand};
use anyhow::{bail, Context, Result};
use kms::config::Config;
use kms::crypto::{Component, Kcv};
use kms::derivation::{parse_psn, Kdd, Pan};
use kms::hsm::{Hsm, Role};
use kms::model::{Algorithm, KeyName, KeyUsage, Tenant, Transition};
use kms::policy::KeyPolicy;
use kms::service::{
    Actor, CreateKey, Executed, KeyService, Operation, ReconcileMode, ServiceError,
};
use kms::store::Store;
use std::sync::Arc;
use zeroize::Zeroizing;

pub(super) fn actor(cli: &Cli) -> Result<Actor> {
    let name = cli
        .actor
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "operator".into());
    Ok(Actor::parse(&name)?)
}

pub async fn service(cli: &Cli, role: Role) -> Result<KeyService> {
    let cfg = Config::load(cli.config.as_deref())?;
    let policy = KeyPolicy::load(&cfg.policy_dir)?;
    let store = Store::connect(&cfg.database_url)
        .await
        .context("opening the database")?;
    // From here on the command's outcome reaches the trail (a failed login
    // is recorded below; everything else by the service).
    OPENED_ANY.store(true, std::sync::atomic::Ordering::Relaxed);
    // A sealed deployment's user PIN comes from the custodians' shares.
    if role == Role::User {
        if let Some(svc) = super::seal::unseal_if_sealed(cli, &cfg, &store, &policy).await? {
            if let Ok(mut open) = OPENED.lock() {
                open.push(svc.clone());
            }
            return Ok(svc);
        }
    }
    let hsm_cfg = cfg.hsm(role)?;
    let opened = tokio::task::spawn_blocking(move || Hsm::open(&hsm_cfg)).await?;
    let hsm = match opened {
        Ok(h) => h,
        Err(e) => {
            // A failed login is an act too; recorded without the token.
            let event = kms::audit::AuditEvent {
                actor: actor(cli)?.as_str().to_owned(),
                role: match role {
                    Role::User => "operator".into(),
                    Role::SecurityOfficer => "security-officer".into(),
                },
                action: "hsm.login".into(),
                outcome: Some(kms::audit::Outcome::Failure),
                reason: Some(e.to_string()),
                source: Some("cli".into()),
                ..Default::default()
            };
            kms::audit::AuditLog::record_without_hsm(&store, event)
                .await
                .context("recording the failed login")?;
            return Err(anyhow::Error::new(e).context("opening the token"));
        }
    };
    let svc = KeyService::open(Arc::new(hsm), store, policy, "cli").await?;
    if let Ok(mut open) = OPENED.lock() {
        open.push(svc.clone());
    }
    Ok(svc)
}

/// Whether this command reached the audit trail.
static OPENED_ANY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A command that failed before it reached the service (bad input, an
/// unreadable policy) is still an act: record it without the token.
async fn record_early_failure(cli: &Cli, e: &anyhow::Error) {
    if OPENED_ANY.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let code = super::output::exit_code(e);
    let event = kms::audit::AuditEvent {
        actor: actor(cli)
            .map(|a| a.as_str().to_owned())
            .unwrap_or_else(|_| "unknown".into()),
        role: "operator".into(),
        action: format!("cli.{}", command_name(&cli.command)),
        outcome: Some(if code == 1 {
            kms::audit::Outcome::Failure
        } else {
            kms::audit::Outcome::Refused
        }),
        reason: Some(format!("{e:#}")),
        source: Some("cli".into()),
        ..Default::default()
    };
    // With the token (so the record is MACed) when it can be opened; if
    // it cannot, opening it has recorded that failure already.
    let written = match service(cli, Role::User).await {
        Ok(svc) => svc
            .audit()
            .record(event)
            .await
            .map(|_| ())
            .map_err(anyhow::Error::from),
        Err(_) => Ok(()),
    };
    if let Err(err) = written {
        eprintln!("warning: could not record the failure in the audit trail: {err}");
    }
}

fn command_name(c: &Command) -> &'static str {
    match c {
        Command::Init => "init",
        Command::Status => "status",
        Command::Reconcile => "reconcile",
        Command::Key(_) => "key",
        Command::Request(_) => "request",
        Command::Derive(_) => "derive",
        Command::Sd(_) => "sd",
        Command::Custodian(_) => "custodian",
        Command::Bench(_) => "bench",
        Command::Audit(_) => "audit",
        Command::Serve => "serve",
        Command::DevPki { .. } => "dev-pki",
        Command::Openapi => "openapi",
        #[allow(unreachable_patterns)]
        _ => "other",
    }
}

/// Services this command opened, closed (recorded, head signed) when it
/// ends. A process holds one login at a time, so a command that switches
/// to the security officer's login closes the user's service first.
static OPENED: std::sync::Mutex<Vec<KeyService>> = std::sync::Mutex::new(Vec::new());

pub async fn close_all() -> Result<()> {
    let open: Vec<KeyService> = match OPENED.lock() {
        Ok(mut o) => o.drain(..).collect(),
        Err(_) => Vec::new(),
    };
    for svc in open {
        svc.close().await?;
    }
    Ok(())
}

fn key_id(id: &KeyId) -> Result<(Tenant, KeyName)> {
    Ok((Tenant::parse(&id.tenant)?, KeyName::parse(&id.name)?))
}

pub async fn dispatch(cli: &Cli) -> Result<()> {
    let result = run_command(cli).await;
    if let Err(e) = &result {
        record_early_failure(cli, e).await;
    }
    let closed = close_all().await;
    result.and(closed)
}

async fn run_command(cli: &Cli) -> Result<()> {
    match &cli.command {
        Command::Init => init(cli).await,
        Command::Status => status(cli, ReconcileMode::Report).await,
        Command::Reconcile => status(cli, ReconcileMode::Repair).await,
        Command::Key(k) => key(cli, k).await,
        Command::Request(r) => request(cli, r).await,
        Command::Derive(d) => derive(cli, d).await,
        Command::Sd(c) => sd(cli, c).await,
        Command::Custodian(c) => super::custodian::run(cli, c).await,
        Command::Bench(b) => crate::bench::run(cli, b).await,
        Command::Audit(a) => super::audit::run(cli, a).await,
        Command::Serve => super::serve::serve(cli).await,
        Command::DevPki { dir } => super::serve::dev_pki(cli, dir),
        // A document, not an act: nothing is read from the token or the
        // database, so there is nothing to record.
        Command::Openapi => {
            print!("{}", kms::server::provisioning::openapi::document());
            Ok(())
        }
        Command::Seal(s) => super::seal::run(cli, s).await,
        Command::Backup(b) => super::backup::run(cli, b).await,
    }
}

async fn init(cli: &Cli) -> Result<()> {
    let svc = service(cli, Role::User).await?;
    let report = svc.reconcile(ReconcileMode::Repair).await?;
    print(cli.json, &report, || {
        format!(
            "database ready ({}), token logged in, {} key versions, {} objects on the token, {} findings",
            svc.store().backend(),
            report.versions_checked,
            report.objects_on_token,
            report.findings.len()
        )
    });
    Ok(())
}

async fn status(cli: &Cli, mode: ReconcileMode) -> Result<()> {
    let svc = service(cli, Role::User).await?;
    let report = svc.reconcile(mode).await?;
    let problems = report.problems().count();
    print(cli.json, &report, || {
        let mut s = format!(
            "database {}; {} key versions; {} objects on the token\n",
            svc.store().backend(),
            report.versions_checked,
            report.objects_on_token
        );
        for f in &report.findings {
            s.push_str(&format!(
                "  {}\n",
                serde_json::to_string(f).unwrap_or_default()
            ));
        }
        s.push_str(if problems == 0 {
            "consistent"
        } else {
            "INCONSISTENT: the keys above are refused until resolved"
        });
        s
    });
    if problems > 0 {
        return Err(kms::service::ServiceError::Inconsistent(format!(
            "{problems} finding(s) need an operator"
        ))
        .into());
    }
    Ok(())
}

fn create_request(
    id: &KeyId,
    alg: &str,
    usage: &str,
    exportable: bool,
    activate: bool,
    trusted: bool,
) -> Result<CreateKey> {
    let (tenant, name) = key_id(id)?;
    Ok(CreateKey {
        tenant,
        name,
        algorithm: alg.parse::<Algorithm>()?,
        usage: usage.parse::<KeyUsage>()?,
        exportable,
        activate,
        trusted,
    })
}

/// One line from standard input, read without std's buffered `Stdin`
/// (whose internal buffer would keep a copy that is never wiped) into a
/// buffer allocated once and zeroized on drop. A component line is short;
/// anything over 1 KiB is refused rather than reallocated.
pub(super) fn read_secret_line() -> Result<Zeroizing<String>> {
    use std::io::Read;
    use std::os::fd::AsFd;
    const MAX: usize = 1024;
    let mut fd = std::fs::File::from(std::io::stdin().as_fd().try_clone_to_owned()?);
    let mut buf = Zeroizing::new(Vec::with_capacity(MAX));
    let mut byte = [0u8; 1];
    loop {
        match fd.read(&mut byte)? {
            0 => break,
            _ if byte[0] == b'\n' => break,
            _ if buf.len() == MAX => bail!("input line too long"),
            _ => buf.push(byte[0]),
        }
    }
    zeroize::Zeroize::zeroize(&mut byte);
    let text = std::str::from_utf8(&buf).map_err(|_| anyhow::anyhow!("input is not text"))?;
    Ok(Zeroizing::new(text.to_owned()))
}

/// Components come from a hidden prompt, or from stdin with --stdin. The
/// typed text lives in zeroizing buffers and is never echoed.
fn read_components(n: usize, alg: Algorithm, stdin: bool) -> Result<Vec<(Component, Option<Kcv>)>> {
    if !(2..=3).contains(&n) {
        bail!(kms::crypto::ComponentError::Count(n));
    }
    let mut out = Vec::with_capacity(n);
    for i in 1..=n {
        let line: Zeroizing<String> = if stdin {
            read_secret_line()?
        } else {
            Zeroizing::new(
                rpassword::prompt_password(format!("Custodian {i}: component {i} (hidden): "))
                    .context("reading the component")?,
            )
        };
        let mut parts = line.trim().splitn(2, ',');
        let comp = Component::parse_hex(parts.next().unwrap_or_default(), alg)
            .with_context(|| format!("component {i}"))?;
        let kcv = match parts.next() {
            Some(k) => Some(
                Kcv::parse_hex(k.trim()).with_context(|| format!("component {i} check value"))?,
            ),
            None if !stdin => {
                let k = rpassword::prompt_password(format!(
                    "Custodian {i}: check value of component {i}: "
                ))?;
                if k.trim().is_empty() {
                    None
                } else {
                    Some(Kcv::parse_hex(k.trim())?)
                }
            }
            None => None,
        };
        if !stdin {
            eprintln!("component {i} accepted");
        }
        out.push((comp, kcv));
    }
    Ok(out)
}

async fn key(cli: &Cli, cmd: &KeyCommand) -> Result<()> {
    let who = actor(cli)?;
    match cmd {
        KeyCommand::Create {
            id,
            alg,
            usage,
            exportable,
            pre_activation,
            trusted,
        } => {
            let req = create_request(id, alg, usage, *exportable, !pre_activation, *trusted)?;
            if *trusted {
                let op = Operation::TrustedKek {
                    tenant: id.tenant.clone(),
                    key: id.name.clone(),
                    algorithm: req.algorithm.as_str().into(),
                    usage: req.usage.as_str().into(),
                    kcv: None,
                };
                return submit(cli, &who, op).await;
            }
            let svc = service(cli, Role::User).await?;
            let rec = svc.create(&who, req).await?;
            print(cli.json, &rec, || key_detail(&rec));
        }
        KeyCommand::Import {
            id,
            alg,
            usage,
            exportable,
            trusted,
            kcv,
        } => {
            let req = create_request(id, alg, usage, *exportable, true, *trusted)?;
            let expected_kcv = Kcv::parse_hex(kcv).context("--kcv")?;
            if *trusted {
                // The components are entered when the approved request runs.
                let op = Operation::TrustedKek {
                    tenant: id.tenant.clone(),
                    key: id.name.clone(),
                    algorithm: req.algorithm.as_str().into(),
                    usage: req.usage.as_str().into(),
                    kcv: Some(expected_kcv.to_string()),
                };
                return submit(cli, &who, op).await;
            }
            // Issue 5: an import is a quorum operation; the components are
            // entered when the approved request runs.
            let op = Operation::ImportKey {
                tenant: id.tenant.clone(),
                key: id.name.clone(),
                algorithm: req.algorithm.as_str().into(),
                usage: req.usage.as_str().into(),
                exportable: req.exportable,
                kcv: expected_kcv.to_string(),
            };
            return submit(cli, &who, op).await;
        }
        KeyCommand::List { tenant } => {
            let tenant = tenant.as_deref().map(Tenant::parse).transpose()?;
            let svc = service(cli, Role::User).await?;
            let keys = svc.list(&who, tenant.as_ref()).await?;
            print(cli.json, &keys, || {
                keys.iter().map(key_line).collect::<Vec<_>>().join("\n")
            });
        }
        KeyCommand::Show { id } => {
            let (t, n) = key_id(id)?;
            let svc = service(cli, Role::User).await?;
            let view = svc.show(&who, &t, &n).await?;
            print(cli.json, &view, || {
                let mut s = key_detail(&view.key);
                s.push_str("history:\n");
                for e in &view.events {
                    s.push_str(&format!(
                        "  {} {:<10} v{} by {}{}\n",
                        e.at,
                        e.action,
                        e.version
                            .map(|v| v.to_string())
                            .unwrap_or_else(|| "-".into()),
                        e.actor,
                        e.reason
                            .as_deref()
                            .map(|r| format!(": {r}"))
                            .unwrap_or_default()
                    ));
                }
                s
            });
        }
        KeyCommand::Rotate { id, reason } => {
            let (t, n) = key_id(id)?;
            let svc = service(cli, Role::User).await?;
            let rec = svc.rotate(&who, &t, &n, reason.as_deref()).await?;
            print(cli.json, &rec, || key_detail(&rec));
        }
        KeyCommand::State {
            id,
            to,
            version,
            reason,
        } => {
            let (t, n) = key_id(id)?;
            let tr = to.parse::<Transition>()?;
            let svc = service(cli, Role::User).await?;
            let rec = svc
                .transition(&who, &t, &n, *version, tr, reason.as_deref())
                .await?;
            print(cli.json, &rec, || key_detail(&rec));
        }
        KeyCommand::Destroy {
            id,
            version,
            reason,
        } => {
            let op = Operation::Destroy {
                tenant: id.tenant.clone(),
                key: id.name.clone(),
                version: *version,
                reason: reason.clone(),
            };
            submit(cli, &who, op).await?;
        }
        KeyCommand::Compromise {
            id,
            version,
            reason,
        } => {
            let op = Operation::Compromise {
                tenant: id.tenant.clone(),
                key: id.name.clone(),
                version: *version,
                reason: reason.clone(),
            };
            submit(cli, &who, op).await?;
        }
        KeyCommand::Export {
            id,
            kek,
            version,
            wrap,
        } => {
            let op = Operation::Export {
                tenant: id.tenant.clone(),
                key: id.name.clone(),
                version: *version,
                kek: kek.clone(),
                wrap: wrap.clone(),
            };
            submit(cli, &who, op).await?;
        }
        KeyCommand::Attributes { id, version } => {
            let (t, n) = key_id(id)?;
            let svc = service(cli, Role::User).await?;
            let attrs = svc.attributes(&who, &t, &n, *version).await?;
            print(cli.json, &attrs, || {
                serde_json::to_string_pretty(&attrs).unwrap_or_default()
            });
        }
    }
    Ok(())
}

async fn sd(cli: &Cli, cmd: &SdCommand) -> Result<()> {
    let who = actor(cli)?;
    match cmd {
        SdCommand::List { tenant } => {
            let svc = service(cli, Role::User).await?;
            let list = svc.sd_bindings(&who, &Tenant::parse(tenant)?).await?;
            print(cli.json, &list, || {
                if list.is_empty() {
                    return format!("no Security Domain of {tenant} is bound to a card");
                }
                list.iter()
                    .map(|b| {
                        format!(
                            "SE {}  SD {}  card {} PSN {:02}  bound {} by {}",
                            b.se_id, b.sd_aid, b.pan_masked, b.psn, b.bound_at, b.bound_by
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        SdCommand::Release {
            tenant,
            se_id,
            sd_aid,
            reason,
        } => {
            let op = Operation::ReleaseSd {
                tenant: tenant.clone(),
                se_id: se_id.to_ascii_uppercase(),
                sd_aid: sd_aid.to_ascii_uppercase(),
                reason: reason.clone(),
            };
            submit(cli, &who, op).await?;
        }
    }
    Ok(())
}

/// The `--as` person, after their PIN (one line of standard input when
/// `stdin` or when standard input is not a terminal; else a hidden prompt).
pub(super) async fn person(
    cli: &Cli,
    svc: &KeyService,
    stdin: bool,
) -> Result<kms::service::CustodianSession> {
    use std::io::IsTerminal;
    let Some(name) = cli.as_person.as_deref() else {
        return Err(ServiceError::Invalid(
            "this step is taken by an enrolled person: --as NAME (their PIN is asked)".into(),
        )
        .into());
    };
    let stdin = stdin || !std::io::stdin().is_terminal();
    let pin = super::custodian::read_pin(&format!("PIN for {name}"), stdin)?;
    let session = svc
        .authenticate(name, &pin, time::OffsetDateTime::now_utc())
        .await?;
    if session.must_change_pin() {
        return Err(
            ServiceError::Auth(kms::service::AuthRefusal::MustChangePin {
                name: name.to_owned(),
            })
            .into(),
        );
    }
    Ok(session)
}

pub(super) async fn submit(cli: &Cli, _who: &Actor, op: Operation) -> Result<()> {
    let svc = service(cli, Role::User).await?;
    let session = person(cli, &svc, false).await?;
    let req = svc.request(&session, op).await?;
    print(cli.json, &req, || {
        format!(
            "request {} created by {}; it needs {} approval(s) by other people.\n\
             Approvers confirm this digest:\n  {}\n\
             then: kms request approve {} --digest <digest> --as <approver> --key <key.pem> --cert <cert.pem>\n\
             and:  kms request execute {} --as {}",
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

async fn request(cli: &Cli, cmd: &RequestCommand) -> Result<()> {
    let who = actor(cli)?;
    let svc = service(cli, Role::User).await?;
    match cmd {
        RequestCommand::Show { id } => {
            let r = svc.show_request(&who, id).await?;
            print(cli.json, &r, || {
                format!(
                    "request {} ({}) by {}\noperation {}\ndigest {}\napprovals {}/{}: {}\nexpires {}",
                    r.id,
                    r.status,
                    r.requested_by,
                    r.operation.canonical().unwrap_or_default(),
                    r.digest,
                    r.approvers.len(),
                    r.approvals_needed,
                    r.approvers.join(", "),
                    r.expires_at
                )
            });
        }
        RequestCommand::Approve {
            id,
            digest,
            key,
            cert,
            pin_stdin,
        } => {
            use rustls_pki_types::pem::PemObject;
            let session = person(cli, &svc, *pin_stdin).await?;
            let key_pem = Zeroizing::new(
                std::fs::read_to_string(key)
                    .with_context(|| format!("reading {}", key.display()))?,
            );
            let cert_bytes =
                std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
            let cert_der = match rustls_pki_types::CertificateDer::from_pem_slice(&cert_bytes) {
                Ok(c) => c.to_vec(),
                Err(_) => cert_bytes,
            };
            let msg = kms::crypto::approval::approval_message(id, digest, session.name().as_str());
            let signature = kms::crypto::approval::sign_approval(&key_pem, &msg)
                .map_err(|e| ServiceError::Invalid(e.to_string()))?;
            drop(key_pem);
            let sig = kms::crypto::approval::ApprovalSignature {
                cert_der,
                signature,
            };
            let r = svc.approve(&session, id, digest, &sig).await?;
            let who = session.name().to_string();
            print(cli.json, &r, || {
                format!(
                    "approved (signed) by {who}; {}/{} approvals",
                    r.approvers.len(),
                    r.approvals_needed
                )
            });
        }
        RequestCommand::PolicyChange { file } => {
            let text =
                std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
            let text = String::from_utf8(text).context("the policy file is not UTF-8")?;
            // The same check the service makes at start-up, before anyone
            // is asked to approve a policy that could not be used.
            let policy = KeyPolicy::parse(&text)
                .map_err(|e| ServiceError::Invalid(format!("{}: {e}", file.display())))?;
            let op = Operation::ChangePolicy {
                sha256: policy.digest().to_owned(),
            };
            drop(svc);
            close_all().await?;
            submit(cli, &who, op).await?;
        }
        RequestCommand::VerifyApprovals => {
            let checks = svc.verify_approvals(&who).await?;
            let bad = checks.iter().filter(|c| c.problem.is_some()).count();
            print(cli.json, &checks, || {
                let mut s = String::new();
                for c in &checks {
                    s.push_str(&format!(
                        "#{} request {} approved by {}: {}\n",
                        c.seq,
                        c.request,
                        c.approver,
                        c.problem.as_deref().unwrap_or("signature verifies")
                    ));
                }
                s.push_str(&format!(
                    "{} approval(s) re-checked from the audit trail alone; {} do not verify",
                    checks.len(),
                    bad
                ));
                s
            });
            if bad > 0 {
                return Err(ServiceError::Refused(format!(
                    "{bad} approval record(s) do not verify"
                ))
                .into());
            }
        }
        RequestCommand::Execute {
            id,
            components,
            stdin,
            pin_stdin,
        } => {
            let op = svc.approval(id).await?.operation;
            let session = person(cli, &svc, *pin_stdin).await?;
            let svc = if op.needs_security_officer() {
                drop(svc);
                close_all().await?;
                service(cli, Role::SecurityOfficer).await?
            } else {
                svc
            };
            let comps = match &op {
                Operation::TrustedKek {
                    algorithm,
                    kcv: Some(_),
                    ..
                }
                | Operation::ImportKey { algorithm, .. } => {
                    read_components(*components, algorithm.parse()?, *stdin)?
                }
                _ => Vec::new(),
            };
            let executed = if op.needs_initial_pin() {
                // The new person's first PIN: asked now, never part of the
                // request; checked against the policy before it is used up.
                let pin = super::custodian::read_new_pin(
                    &format!(
                        "Initial PIN for {}",
                        op.custodian().unwrap_or("the new person")
                    ),
                    *pin_stdin,
                )?;
                svc.execute_enrolment(&session, id, pin).await
            } else {
                svc.execute_with(&session, id, comps).await
            };
            if op.needs_security_officer() {
                // Records made under the SO's login carry no MAC: close that
                // login and countersign them at once under the user's (also
                // when the execution failed: its records are in the trail).
                let so_log = svc.audit().clone();
                drop(svc);
                close_all().await?;
                let unmaced = so_log.take_unmaced();
                drop(so_log);
                let user = service(cli, Role::User).await?;
                user.audit().countersign(unmaced).await?;
            }
            let out = executed?;
            print(cli.json, &out, || {
                match &out {
                Executed::Exported(e) => format!(
                    "{}/{} v{} (kcv {}) wrapped under {} v{} with {:?}:\n{}",
                    e.tenant,
                    e.name,
                    e.version,
                    e.kcv.as_deref().unwrap_or("-"),
                    e.kek,
                    e.kek_version,
                    e.wrap_algorithm,
                    e.wrapped
                ),
                Executed::Key(k) => key_detail(k),
                Executed::Released(b) => format!(
                    "SD {} on SE {} released from card {} PSN {:02} (bound {} by {}); it may now be personalized for another card",
                    b.sd_aid, b.se_id, b.pan_masked, b.psn, b.bound_at, b.bound_by
                ),
                Executed::Custodian(c) => format!(
                    "{} ({}){}",
                    c.name,
                    c.role,
                    if c.is_removed() { " removed" } else { " enrolled" }
                ),
                Executed::Policy(p) => format!(
                    "policy {} approved (request {}); it is adopted when the service next starts with it",
                    p.sha256, p.request
                ),
                Executed::Components(c) => format!(
                    "{}/{} generated as components (check value {}), held by {}",
                    c.key.tenant,
                    c.key.name,
                    c.kcv,
                    c.components
                        .iter()
                        .map(|h| format!("{} ({})", h.custodian, h.kcv))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
            });
        }
    }
    Ok(())
}

async fn derive(cli: &Cli, cmd: &DeriveCommand) -> Result<()> {
    let who = actor(cli)?;
    let svc = service(cli, Role::User).await?;
    match cmd {
        DeriveCommand::EmvCard {
            tenant,
            imk,
            pan,
            psn,
            kek,
        } => {
            let pan = if pan == "-" {
                Pan::parse(read_secret_line()?.trim())?
            } else {
                Pan::parse(pan)?
            };
            let out = svc
                .emv_card_key(
                    &who,
                    &Tenant::parse(tenant)?,
                    &KeyName::parse(imk)?,
                    &pan,
                    parse_psn(psn)?,
                    &KeyName::parse(kek)?,
                )
                .await?;
            print(cli.json, &out, || {
                format!(
                    "{} for {}: kcv {} wrapped {}",
                    out.kind,
                    pan.masked(),
                    out.kcv.clone().unwrap_or_default(),
                    out.wrapped
                )
            });
        }
        DeriveCommand::SdKeys {
            tenant,
            kmc,
            method,
            kdd,
            kek,
        } => {
            let out = svc
                .sd_static_keys(
                    &who,
                    &Tenant::parse(tenant)?,
                    &KeyName::parse(kmc)?,
                    method.parse()?,
                    &Kdd::parse_hex(kdd)?,
                    &KeyName::parse(kek)?,
                )
                .await?;
            print(cli.json, &out, || {
                out.iter()
                    .map(|k| {
                        format!(
                            "{:<4} kcv {} wrapped {}",
                            k.kind,
                            k.kcv.clone().unwrap_or_default(),
                            k.wrapped
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
    }
    Ok(())
}
