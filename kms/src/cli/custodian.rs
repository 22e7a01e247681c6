//! `kms custodian`: the people of key ceremonies (issue 5). PINs come from a
//! hidden prompt, or from standard input with `--pin-stdin`; never from an
//! argument or the environment, and they are never printed.

use super::commands::{actor, person, read_secret_line, service, submit};
use super::output::print;
use super::{Cli, CustodianCommand, EnrolmentArgs};
use anyhow::{Context, Result};
use kms::hsm::Role;
use kms::model::{CustodianName, LoginWindow, Pin};
use kms::service::{Enrolment, Operation, ServiceError, DEFAULT_IDLE_TIMEOUT_SECONDS};
use kms::store::CustodianRecord;
use time::OffsetDateTime;
use zeroize::Zeroizing;

/// One PIN: hidden at a prompt, or one line of standard input. An empty
/// one is a usage error (it would only cost a login attempt).
pub(super) fn read_pin(prompt: &str, stdin: bool) -> Result<Pin> {
    let typed = if stdin {
        let line = read_secret_line()?;
        Zeroizing::new(line.strip_suffix('\r').unwrap_or(&line).to_owned())
    } else {
        Zeroizing::new(
            rpassword::prompt_password(format!("{prompt} (hidden): "))
                .context("reading the PIN")?,
        )
    };
    if typed.is_empty() {
        return Err(ServiceError::Invalid("no PIN was given".into()).into());
    }
    Ok(Pin::from(typed))
}

/// A new PIN: typed twice at a hidden prompt, or one line of standard
/// input. The policy check is the service's.
pub(super) fn read_new_pin(prompt: &str, stdin: bool) -> Result<Pin> {
    let pin = read_pin(prompt, stdin)?;
    if !stdin {
        let again = read_pin(&format!("{prompt}, again"), false)?;
        if again.expose() != pin.expose() {
            return Err(ServiceError::Invalid("the two entries of the PIN differ".into()).into());
        }
    }
    Ok(pin)
}

pub(super) async fn run(cli: &Cli, cmd: &CustodianCommand) -> Result<()> {
    let who = actor(cli)?;
    match cmd {
        CustodianCommand::Bootstrap {
            who: args,
            pin_stdin,
        } => {
            let name = CustodianName::parse(&args.name)?;
            let login_window = args
                .login_window
                .as_deref()
                .map(LoginWindow::parse)
                .transpose()?;
            let svc = service(cli, Role::User).await?;
            // During the founding an officer enrols the others: their PIN
            // first, then the new person's.
            let officer = match cli.as_person {
                Some(_) => Some(person(cli, &svc, *pin_stdin).await?),
                None => None,
            };
            let enrolment = Enrolment {
                name: name.clone(),
                role: args.role.parse()?,
                cert_sha256: args.cert_sha256.clone(),
                login_window,
                idle_timeout_seconds: args.idle_timeout,
                initial_pin: read_new_pin(&format!("Initial PIN for {name}"), *pin_stdin)?,
            };
            let rec = match &officer {
                Some(o) => svc.enroll_founding(o, enrolment).await?,
                None => svc.enroll(&who, enrolment).await?,
            };
            print(cli.json, &rec, || {
                format!(
                    "{} enrolled as {} (bootstrap); the initial PIN must be changed at first use:\n  kms custodian change-pin --name {}",
                    rec.name, rec.role, rec.name
                )
            });
        }
        CustodianCommand::Enroll { who: args } => {
            submit(cli, &who, enrol_operation(args)).await?;
        }
        CustodianCommand::Remove { name } => {
            submit(cli, &who, Operation::RemoveCustodian { name: name.clone() }).await?;
        }
        CustodianCommand::CloseFounding { pin_stdin } => {
            let svc = service(cli, Role::User).await?;
            let officer = person(cli, &svc, *pin_stdin).await?;
            let people = svc.close_founding(&officer).await?;
            print(cli.json, &people, || {
                format!(
                    "the founding is closed by {} with {} people enrolled; from now on every enrolment is dual-controlled",
                    officer.name(),
                    people.len()
                )
            });
        }
        CustodianCommand::List => {
            let svc = service(cli, Role::User).await?;
            let people = svc.list_custodians(&who).await?;
            print(cli.json, &people, || {
                if people.is_empty() {
                    return "nobody is enrolled (kms custodian bootstrap enrols the first security officer)".into();
                }
                people
                    .iter()
                    .map(person_line)
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        CustodianCommand::Login { name, pin_stdin } => {
            let pin = read_pin(&format!("PIN for {name}"), *pin_stdin)?;
            let svc = service(cli, Role::User).await?;
            let session = svc
                .authenticate(name, &pin, OffsetDateTime::now_utc())
                .await?;
            drop(pin);
            let idle = session.idle_timeout().as_secs();
            let value = serde_json::json!({
                "name": session.name(),
                "role": session.role().as_str(),
                "cert_sha256": session.cert_sha256(),
                "must_change_pin": session.must_change_pin(),
                "idle_timeout_seconds": idle,
            });
            print(cli.json, &value, || {
                let mut s = format!(
                    "{} ({}) authenticated; idle timeout {idle} s",
                    session.name(),
                    session.role()
                );
                if session.must_change_pin() {
                    s.push_str(&format!(
                        "\nthe initial PIN must be changed before anything else:\n  kms custodian change-pin --name {}",
                        session.name()
                    ));
                }
                s
            });
        }
        CustodianCommand::ChangePin { name, pin_stdin } => {
            let old = read_pin(&format!("Current PIN for {name}"), *pin_stdin)?;
            let new = read_new_pin(&format!("New PIN for {name}"), *pin_stdin)?;
            let svc = service(cli, Role::User).await?;
            let session = svc
                .change_pin(name, &old, &new, OffsetDateTime::now_utc())
                .await?;
            drop((old, new));
            let value = serde_json::json!({
                "name": session.name(),
                "role": session.role().as_str(),
                "must_change_pin": session.must_change_pin(),
                "idle_timeout_seconds": session.idle_timeout().as_secs(),
            });
            print(cli.json, &value, || {
                format!("{}'s PIN changed", session.name())
            });
        }
        CustodianCommand::Unlock { name, reason } => {
            let svc = service(cli, Role::User).await?;
            let rec = svc.unlock(&who, name, reason).await?;
            print(cli.json, &rec, || {
                format!("{} ({}) re-enabled by {who}", rec.name, rec.role)
            });
        }
    }
    Ok(())
}

fn enrol_operation(args: &EnrolmentArgs) -> Operation {
    Operation::EnrollCustodian {
        name: args.name.clone(),
        role: args.role.clone(),
        cert_sha256: args.cert_sha256.clone(),
        login_window: args.login_window.clone(),
        idle_timeout_seconds: args.idle_timeout,
    }
}

/// One person, as `custodian list` shows them: standing, never a hash.
fn person_line(p: &CustodianRecord) -> String {
    let standing = if p.is_removed() {
        "removed".to_owned()
    } else if p.is_locked() {
        format!(
            "LOCKED ({})",
            p.locked_reason.as_deref().unwrap_or("locked")
        )
    } else if p.must_change_pin {
        "must change PIN".to_owned()
    } else {
        "active".to_owned()
    };
    let idle = if p.idle_timeout_seconds == DEFAULT_IDLE_TIMEOUT_SECONDS {
        String::new()
    } else {
        format!("  idle {} s", p.idle_timeout_seconds)
    };
    format!(
        "{:<20} {:<16} {:<28} failed {}  enrolled {} by {}{}{}{}",
        p.name.as_str(),
        p.role.as_str(),
        standing,
        p.failed_attempts,
        p.enrolled_at,
        p.enrolled_by,
        p.login_window
            .as_ref()
            .map(|w| format!("  window {w}"))
            .unwrap_or_default(),
        idle,
        p.cert_sha256
            .as_deref()
            .map(|c| format!("  cert {c}"))
            .unwrap_or_default(),
    )
}
