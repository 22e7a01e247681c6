//! `kms serve` and `kms dev-pki`.

use super::output::print;
use super::Cli;
use anyhow::{Context, Result};
use kms::audit::{AuditEvent, Outcome};
use kms::config::Config;
use kms::hsm::Role;
use std::path::Path;

/// Open the service under the user's login, serve until a signal, then let
/// the requests in flight finish. The service is closed (`service.close`,
/// head signed) by `dispatch`, like every service a command opens.
pub async fn serve(cli: &Cli) -> Result<()> {
    let cfg = Config::load(cli.config.as_deref())?;
    let signal = kms::server::shutdown_signal()?;
    if let Some(running) = start_sealed(&cfg).await? {
        eprintln!(
            "kms serve: SEALED; custodians present their shares with POST https://{}/v1/seal/shares; \
             provisioning on https://{} answers 503 until then",
            running.addr_admin, running.addr_prov
        );
        let signal = signal.await;
        eprintln!("kms serve: {signal}: no new connections; finishing the requests in flight");
        // Opened by the unseal, not by this command: closed here.
        running.shutdown().await.context("stopping the server")?;
        eprintln!("kms serve: stopped");
        return Ok(());
    }
    let svc = super::commands::service(cli, Role::User).await?;
    let audit = svc.audit().clone();
    let running = match kms::server::start(&cfg.server, svc).await {
        Ok(r) => r,
        Err(e) => {
            // A server that does not come up is an act too: say why in the
            // trail (file paths, addresses, policy errors; never a secret),
            // not only on this terminal.
            let recorded = audit
                .record(AuditEvent {
                    actor: "kms".into(),
                    role: "system".into(),
                    action: "server.start".into(),
                    outcome: Some(Outcome::Failure),
                    reason: Some(e.to_string()),
                    source: Some("server".into()),
                    ..Default::default()
                })
                .await;
            if let Err(w) = recorded {
                eprintln!("warning: could not record the failed start in the audit trail: {w}");
            }
            return Err(e).context("starting the server");
        }
    };
    eprintln!(
        "kms serve: admin API on https://{}, provisioning API on https://{}; Ctrl-C or SIGTERM stops it",
        running.addr_admin, running.addr_prov
    );
    let signal = signal.await;
    eprintln!("kms serve: {signal}: no new connections; finishing the requests in flight");
    running.stop().await;
    eprintln!("kms serve: stopped");
    Ok(())
}

/// A deployment with a seal starts sealed (issue 5, KM-2): the server
/// waits for the custodians' shares over the admin listener. None when it
/// is not sealed.
async fn start_sealed(cfg: &Config) -> Result<Option<kms::server::RunningServer>> {
    let store = kms::store::Store::connect(&cfg.database_url)
        .await
        .context("opening the database")?;
    let Some(unsealer) = kms::seal::Unsealer::load(store.clone(), "server").await? else {
        return Ok(None);
    };
    let policy = kms::policy::KeyPolicy::load(&cfg.policy_dir)?;
    let sealed = kms::server::SealedStart {
        unsealer,
        hsm: cfg.hsm_with_pin(Role::User, zeroize::Zeroizing::new(String::new())),
        policy,
    };
    match kms::server::start_sealed(&cfg.server, sealed).await {
        Ok(running) => Ok(Some(running)),
        Err(e) => {
            // No token login yet: recorded without it, as a failed start.
            let recorded = kms::audit::AuditLog::record_without_hsm(
                &store,
                AuditEvent {
                    actor: "kms".into(),
                    role: "system".into(),
                    action: "server.start".into(),
                    outcome: Some(Outcome::Failure),
                    reason: Some(e.to_string()),
                    source: Some("server".into()),
                    details: [("sealed".to_owned(), "true".to_owned())].into(),
                    ..Default::default()
                },
            )
            .await;
            if let Err(w) = recorded {
                eprintln!("warning: could not record the failed start in the audit trail: {w}");
            }
            Err(e).context("starting the sealed server")
        }
    }
}

pub fn dev_pki(cli: &Cli, dir: &Path) -> Result<()> {
    let made = kms::server::dev_pki::ensure(dir)?;
    let report = serde_json::json!({
        "dir": made.dir.display().to_string(),
        "created": made.created,
        "files": kms::server::dev_pki::FILES,
    });
    print(cli.json, &report, || {
        if made.created {
            format!(
                "development PKI written to {} (CA, server certificate for localhost, \
                 client certificates officer and provisioner, principals.toml); \
                 for development only",
                made.dir.display()
            )
        } else {
            format!("keeping the development PKI in {}", made.dir.display())
        }
    });
    Ok(())
}
