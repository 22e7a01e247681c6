//! `kms serve`: the KMS over mutually authenticated TLS (TSM-DATA-4,
//! TSM-AC-3).
//!
//! Two listeners share one TLS configuration:
//! - **admin** (`[server] admin_listen`): the security officers' read-only
//!   audit endpoints and the operators' metrics (`admin.rs`);
//! - **provisioning** (`[server] provisioning_listen`): the OTA
//!   provisioners' endpoints (`provisioning/`): SCP02/SCP03 session keys, EMV
//!   card keys, key metadata; every answer signed in the HSM.
//!
//! Every connection must present a client certificate that chains to
//! `client_ca`, is within its validity and, with `crl`, is not revoked;
//! otherwise the TLS handshake fails (`tls.rs`). axum has no client
//! certificate extractor, so TLS is accepted here by hand (`conn.rs`): each
//! connection's handshake runs in its own task, then hyper serves it with the
//! peer's identity and principal in every request's extensions. The
//! principal comes from the certificate through `policies/principals.toml`
//! (`principals.rs`). Every act on the admin listener, refusals included, is
//! recorded in the service's audit trail before its result is sent
//! (`admin.rs`, fail closed).
//!
//! Shutdown: stop accepting, let requests in flight finish (at most
//! [`DRAIN_GRACE`]), then close the service (`service.close` and a signed
//! checkpoint at the head).

mod admin;
mod conn;
pub mod dev_pki;
mod metrics;
mod principals;
mod problem;
pub mod provisioning;
mod sealed;
mod tls;

pub use conn::Peer;
pub use principals::{Principal, PrincipalPolicy, PrincipalsError, Role};
pub use problem::{Code, Problem};
pub use sealed::SealedStart;
pub use tls::ClientIdentity;

use crate::audit::{AuditError, AuditEvent, Outcome};
use crate::config::ServerSettings;
use crate::service::{KeyService, ServiceError};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Largest request body accepted. The admin endpoints take none; the
/// provisioning requests to come carry a few KiB of APDU data at most.
pub const BODY_LIMIT: usize = 64 * 1024;
/// One request, from its head being read to its response being ready. The
/// HTML report of a large trail is the slowest read.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// A client that has not finished the TLS handshake by then is dropped; the
/// handshake runs in the connection's own task, so a slow one only holds a
/// connection slot.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time for a request head to arrive on an open connection (slowloris).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for requests in flight before cutting them off.
pub const DRAIN_GRACE: Duration = Duration::from_secs(30);
/// Open connections per listener; more are closed at once, so a flood
/// cannot exhaust file descriptors that the HSM and the database need.
pub const MAX_CONNECTIONS: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A certificate, key or CRL file could not be used.
    #[error("TLS {what} {path}: {detail}")]
    Tls {
        what: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error(transparent)]
    Principals(#[from] PrincipalsError),
    #[error(transparent)]
    Authz(#[from] crate::authz::AuthzError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("signal handling: {0}")]
    Signal(std::io::Error),
    #[error("development PKI: {0}")]
    DevPki(String),
    /// Fail closed: the server does not start if its start cannot be recorded.
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Service(#[from] ServiceError),
}

/// Which listener a connection came in on (a label in metrics and records).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Admin,
    Provisioning,
}

impl Listener {
    pub fn as_str(self) -> &'static str {
        match self {
            Listener::Admin => "admin",
            Listener::Provisioning => "provisioning",
        }
    }
}

/// What every connection and handler of one server shares.
pub(crate) struct Context {
    pub(crate) svc: KeyService,
    pub(crate) principals: PrincipalPolicy,
    pub(crate) metrics: metrics::Metrics,
    pub(crate) refusals: conn::RefusalBudget,
}

impl Context {
    /// Append one record, counting it for the metrics. Fail closed: callers
    /// withhold a result whose record could not be written.
    pub(crate) async fn record(&self, event: AuditEvent) -> Result<(), AuditError> {
        match self.svc.audit().record(event).await {
            Ok(_) => {
                self.metrics.audit_written();
                Ok(())
            }
            Err(e) => {
                self.metrics.audit_failed();
                tracing::error!("audit record not written: {e}");
                Err(e)
            }
        }
    }
}

/// A started server; [`RunningServer::shutdown`] stops it.
pub struct RunningServer {
    /// Where the admin listener is bound (the real port when 0 was asked).
    pub addr_admin: SocketAddr,
    /// Where the provisioning listener is bound.
    pub addr_prov: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// Set from the start, or when a sealed start is unsealed.
    svc: Arc<OnceLock<KeyService>>,
}

impl RunningServer {
    /// Stop accepting, then wait for the connections' requests in flight
    /// (at most [`DRAIN_GRACE`], after which they are cut). The service
    /// stays open: for callers that close it themselves (the CLI closes
    /// every service it opened when a command ends).
    pub async fn stop(mut self) {
        self.drain().await;
    }

    /// [`RunningServer::stop`], then close the service: `service.close` is
    /// recorded and the chain's head is signed, so the trail ends at a
    /// checkpoint.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        self.drain().await;
        if let Some(svc) = self.svc.get() {
            svc.close().await?;
        }
        Ok(())
    }

    /// The service, once there is one (a sealed start has none until its
    /// custodians have unsealed it).
    pub fn service(&self) -> Option<KeyService> {
        self.svc.get().cloned()
    }

    async fn drain(&mut self) {
        // The accept loops see this, close their listeners and drain their
        // connections; nothing new is accepted from here on.
        self.stop.send_replace(true);
        for task in self.tasks.drain(..) {
            if let Err(e) = task.await {
                tracing::error!("a listener task ended abnormally: {e}");
            }
        }
    }
}

/// Start both listeners on `svc` (opened under the user's login). Reads the
/// TLS material and the principals policy, binds, records `server.start`
/// (fail closed), then accepts.
pub async fn start(
    settings: &ServerSettings,
    svc: KeyService,
) -> Result<RunningServer, ServerError> {
    // Checked before binding, so a bad file fails the start at once.
    tls::server_config(settings)?;
    let (admin, prov) = bind(settings).await?;
    serve_on(settings, svc, admin, prov).await
}

/// Start a sealed deployment (issue 5, KM-2): both listeners answer 503
/// `sealed` except health, readiness and, on the admin listener, the seal's
/// status and the custodians' shares; with the last share the token is
/// logged in and the same listeners serve as [`start`] would.
pub async fn start_sealed(
    settings: &ServerSettings,
    sealed: SealedStart,
) -> Result<RunningServer, ServerError> {
    sealed::start(settings, sealed).await
}

async fn bind(settings: &ServerSettings) -> Result<(TcpListener, TcpListener), ServerError> {
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr, source })
    };
    Ok((
        bind(settings.admin_listen).await?,
        bind(settings.provisioning_listen).await?,
    ))
}

fn local(l: &TcpListener, addr: SocketAddr) -> Result<SocketAddr, ServerError> {
    l.local_addr()
        .map_err(|source| ServerError::Bind { addr, source })
}

/// Serve `svc` on listeners already bound (by [`start`], or kept across
/// the unseal of a sealed start, so no connection is refused meanwhile).
async fn serve_on(
    settings: &ServerSettings,
    svc: KeyService,
    admin: TcpListener,
    prov: TcpListener,
) -> Result<RunningServer, ServerError> {
    let tls = tls::server_config(settings)?;
    let principals = PrincipalPolicy::load(&settings.principals)?;
    let authz = Arc::new(crate::authz::Authorizer::load(
        &settings.provisioning_policy,
    )?);
    let signer = provisioning::ResponseSigner::open(svc.audit(), svc.hsm().clone()).await?;
    let addr_admin = local(&admin, settings.admin_listen)?;
    let addr_prov = local(&prov, settings.provisioning_listen)?;

    let ctx = Arc::new(Context {
        svc: svc.clone(),
        principals,
        metrics: metrics::Metrics::default(),
        refusals: conn::RefusalBudget::default(),
    });
    // Who may call the API is security-relevant configuration: the trail
    // says which policy (by digest) and which trust anchors were in force.
    ctx.record(AuditEvent {
        actor: "kms".into(),
        role: "system".into(),
        action: "server.start".into(),
        outcome: Some(Outcome::Success),
        source: Some("server".into()),
        details: [
            ("admin_listen".to_owned(), addr_admin.to_string()),
            ("provisioning_listen".to_owned(), addr_prov.to_string()),
            (
                "principals_digest".to_owned(),
                ctx.principals.digest().to_owned(),
            ),
            ("principals".to_owned(), ctx.principals.len().to_string()),
            (
                "provisioning_policy_digest".to_owned(),
                authz.digest().to_owned(),
            ),
            (
                "response_signing_key".to_owned(),
                signer.key_id().to_owned(),
            ),
            ("client_ca_sha256".to_owned(), tls.client_ca_digest.clone()),
            (
                "crl".to_owned(),
                if tls.crls > 0 {
                    format!("{} list(s)", tls.crls)
                } else {
                    "none".to_owned()
                },
            ),
        ]
        .into(),
        ..Default::default()
    })
    .await?;

    let (stop, stop_rx) = watch::channel(false);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config);
    let tasks = vec![
        tokio::spawn(conn::serve(
            conn::Serving {
                listener: Listener::Admin,
                tcp: admin,
                tls: acceptor.clone(),
                router: admin::router(ctx.clone(), Listener::Admin),
                ctx: ctx.clone(),
            },
            stop_rx.clone(),
        )),
        tokio::spawn(conn::serve(
            conn::Serving {
                listener: Listener::Provisioning,
                tcp: prov,
                tls: acceptor,
                router: provisioning::router(ctx.clone(), authz, signer, &settings.limits),
                ctx,
            },
            stop_rx,
        )),
    ];
    tracing::info!("serving: admin https://{addr_admin}, provisioning https://{addr_prov}");
    Ok(RunningServer {
        addr_admin,
        addr_prov,
        stop,
        tasks,
        svc: Arc::new(OnceLock::from(svc)),
    })
}

/// Handle SIGINT and SIGTERM from now on; the future resolves with the name
/// of the first that comes. Call it before [`start`], so that a signal
/// during start-up also stops the server gracefully instead of killing the
/// process with its trail unsigned.
pub fn shutdown_signal() -> Result<impl std::future::Future<Output = &'static str>, ServerError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(ServerError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(ServerError::Signal)?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    })
}
