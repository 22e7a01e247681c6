//! `kms serve` on a sealed deployment (issue 5, KM-2, TSM-AC-3).
//!
//! Until M custodians have presented their shares there is no token login,
//! hence no service, no response signing key and no audit MAC. Both
//! listeners are bound at once and accept mTLS as usual, but answer from a
//! small router of their own: health (200), readiness (503 `not-ready`),
//! on the admin listener `GET /v1/seal` and `POST /v1/seal/shares` (from a
//! client certificate bound to an enrolled custodian or security
//! officer), and 503 `sealed` for everything else. Records are written
//! without the token (`AuditLog::record_without_hsm`; the service
//! countersigns the unseal's records once open); the 503s, which anyone
//! with a certificate can cause, within a per-minute budget.
//!
//! With the last share the token is logged in, and the very same listening
//! sockets are handed to the normal server, so clients only see the answers
//! change. Sealed-phase connections serve one request each (no keep-alive),
//! so no client stays on the sealed router after the switch.

use super::conn::{Peer, RefusalBudget};
use super::problem::{Code, Problem};
use super::tls::{ClientIdentity, Refusal, REFUSED_CERT};
use super::{
    local, Listener, PrincipalPolicy, RunningServer, ServerError, BODY_LIMIT, DRAIN_GRACE,
    HANDSHAKE_TIMEOUT, HEADER_READ_TIMEOUT, MAX_CONNECTIONS, REQUEST_TIMEOUT,
};
use crate::audit::{AuditEvent, AuditLog, Outcome};
use crate::config::ServerSettings;
use crate::hsm::HsmConfig;
use crate::model::CustodianRole;
use crate::policy::KeyPolicy;
use crate::seal::{SealStatus, Unsealer};
use crate::service::KeyService;
use crate::store::Store;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Mutex};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use zeroize::Zeroizing;

/// What a sealed start needs to open the service once unsealed.
pub struct SealedStart {
    pub unsealer: Unsealer,
    /// The user login's settings; its PIN is ignored (the shares give it).
    pub hsm: HsmConfig,
    pub policy: KeyPolicy,
}

struct Gate {
    /// None once unsealed.
    unsealer: Mutex<Option<Unsealer>>,
    store: Store,
    hsm: HsmConfig,
    policy: KeyPolicy,
    opened: mpsc::Sender<KeyService>,
    refusals: RefusalBudget,
}

#[derive(Clone)]
struct St {
    gate: Arc<Gate>,
    listener: Listener,
}

pub(super) async fn start(
    settings: &ServerSettings,
    sealed: SealedStart,
) -> Result<RunningServer, ServerError> {
    // Every file the unsealed server reads is checked now, so a bad one
    // fails the start rather than the unseal.
    let tls = super::tls::server_config(settings)?;
    let principals = PrincipalPolicy::load(&settings.principals)?;
    crate::authz::Authorizer::load(&settings.provisioning_policy)?;
    let (admin, prov) = super::bind(settings).await?;
    let addr_admin = local(&admin, settings.admin_listen)?;
    let addr_prov = local(&prov, settings.provisioning_listen)?;
    let store = sealed.unsealer.store().clone();
    let status = sealed.unsealer.status();
    AuditLog::record_without_hsm(
        &store,
        AuditEvent {
            actor: "kms".into(),
            role: "system".into(),
            action: "server.start".into(),
            outcome: Some(Outcome::Success),
            source: Some("server".into()),
            details: BTreeMap::from([
                ("sealed".to_owned(), "true".to_owned()),
                ("admin_listen".to_owned(), addr_admin.to_string()),
                ("provisioning_listen".to_owned(), addr_prov.to_string()),
                (
                    "seal_generation".to_owned(),
                    status.generation.unwrap_or(0).to_string(),
                ),
                (
                    "principals_digest".to_owned(),
                    principals.digest().to_owned(),
                ),
                ("client_ca_sha256".to_owned(), tls.client_ca_digest.clone()),
            ]),
            ..Default::default()
        },
    )
    .await?;
    let (opened, opened_rx) = mpsc::channel(1);
    let gate = Arc::new(Gate {
        unsealer: Mutex::new(Some(sealed.unsealer)),
        store,
        hsm: sealed.hsm,
        policy: sealed.policy,
        opened,
        refusals: RefusalBudget::default(),
    });
    let (stop, stop_rx) = watch::channel(false);
    let slot = Arc::new(OnceLock::new());
    let phase = Phase {
        settings: settings.clone(),
        gate,
        principals: Arc::new(principals),
        tls: TlsAcceptor::from(tls.config),
        admin,
        prov,
    };
    let task = tokio::spawn(phase.run(stop_rx, opened_rx, slot.clone()));
    tracing::info!("sealed: admin https://{addr_admin}, provisioning https://{addr_prov}; waiting for {} unseal shares", status.need);
    Ok(RunningServer {
        addr_admin,
        addr_prov,
        stop,
        tasks: vec![task],
        svc: slot,
    })
}

struct Phase {
    settings: ServerSettings,
    gate: Arc<Gate>,
    principals: Arc<PrincipalPolicy>,
    tls: TlsAcceptor,
    admin: TcpListener,
    prov: TcpListener,
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

impl Phase {
    async fn run(
        self,
        mut stop: watch::Receiver<bool>,
        mut opened: mpsc::Receiver<KeyService>,
        slot: Arc<OnceLock<KeyService>>,
    ) {
        let Phase {
            settings,
            gate,
            principals,
            tls,
            admin,
            prov,
        } = self;
        let admin_router = router(gate.clone(), Listener::Admin);
        let prov_router = router(gate.clone(), Listener::Provisioning);
        let mut conns = JoinSet::new();
        let svc = loop {
            tokio::select! {
                _ = stopped(&mut stop) => {
                    drop((admin, prov));
                    drain(conns).await;
                    return;
                }
                Some(svc) = opened.recv() => break svc,
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                a = admin.accept() => if let Ok((s, addr)) = a {
                    if conns.len() < MAX_CONNECTIONS {
                        conns.spawn(connection(Listener::Admin, s, addr, tls.clone(), admin_router.clone(), principals.clone(), gate.clone()));
                    }
                },
                p = prov.accept() => if let Ok((s, addr)) = p {
                    if conns.len() < MAX_CONNECTIONS {
                        conns.spawn(connection(Listener::Provisioning, s, addr, tls.clone(), prov_router.clone(), principals.clone(), gate.clone()));
                    }
                },
            }
        };
        let _ = slot.set(svc.clone());
        let running = match super::serve_on(&settings, svc, admin, prov).await {
            Ok(r) => r,
            Err(e) => {
                // Unsealed, but the server could not come up (a file changed
                // since the start): nothing is served; say why and wait.
                tracing::error!("unsealed, but the server did not start: {e}");
                if let Some(svc) = slot.get() {
                    let _ = svc
                        .audit()
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
                }
                stopped(&mut stop).await;
                drain(conns).await;
                return;
            }
        };
        stopped(&mut stop).await;
        running.stop().await;
        drain(conns).await;
    }
}

async fn drain(mut conns: JoinSet<()>) {
    let done = tokio::time::timeout(DRAIN_GRACE, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if done.is_err() {
        conns.shutdown().await;
    }
}

async fn connection(
    listener: Listener,
    stream: TcpStream,
    addr: SocketAddr,
    tls: TlsAcceptor,
    router: Router,
    principals: Arc<PrincipalPolicy>,
    gate: Arc<Gate>,
) {
    let handshake = REFUSED_CERT.scope(RefCell::new(None), async move {
        let result = tls.accept(stream).await;
        let refused = REFUSED_CERT
            .try_with(|c| c.borrow_mut().take())
            .ok()
            .flatten();
        (result, refused)
    });
    let Ok((result, presented)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await else {
        return;
    };
    let tls_stream = match result {
        Ok(s) => s,
        Err(e) => {
            handshake_refused(&gate, listener, addr, &e, presented).await;
            return;
        }
    };
    let Some(identity) = tls_stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| ClientIdentity::from_der(c))
    else {
        return;
    };
    let principal = principals.lookup(&identity).cloned();
    let peer = Peer {
        addr,
        listener,
        identity,
        principal,
    };
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(peer.clone());
            router.clone().oneshot(req)
        });
    let mut http = hyper::server::conn::http1::Builder::new();
    // One request per connection: after the unseal nobody is left talking
    // to this router.
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(false);
    if let Err(e) = http
        .serve_connection(TokioIo::new(tls_stream), service)
        .await
    {
        tracing::debug!("{addr}: sealed connection ended: {e}");
    }
}

async fn handshake_refused(
    gate: &Gate,
    listener: Listener,
    addr: SocketAddr,
    e: &std::io::Error,
    presented: Option<ClientIdentity>,
) {
    let Some(refusal) = Refusal::of(e) else {
        return;
    };
    tracing::info!("{addr}: {}", refusal.reason());
    let Some(suppressed) = gate.refusals.take() else {
        return;
    };
    let mut details = BTreeMap::from([
        ("listener".to_owned(), listener.as_str().to_owned()),
        ("error".to_owned(), refusal.label().to_owned()),
        ("sealed".to_owned(), "true".to_owned()),
    ]);
    if suppressed > 0 {
        details.insert("suppressed_before".into(), suppressed.to_string());
    }
    if let Some(c) = &presented {
        details.insert("presented_cert_sha256".into(), c.sha256.clone());
    }
    let _ = AuditLog::record_without_hsm(
        &gate.store,
        AuditEvent {
            actor: presented
                .as_ref()
                .map(ClientIdentity::actor)
                .unwrap_or_else(|| "anonymous".into()),
            role: "unknown".into(),
            action: "api.tls.handshake".into(),
            outcome: Some(Outcome::Refused),
            reason: Some(refusal.reason().into()),
            source: Some(addr.to_string()),
            details,
            ..Default::default()
        },
    )
    .await;
}

fn router(gate: Arc<Gate>, listener: Listener) -> Router {
    let mut routes = Router::new()
        .route("/v1/health", get(health))
        .route("/v1/ready", get(ready));
    if listener == Listener::Admin {
        routes = routes
            .route("/v1/seal", get(status))
            .route("/v1/seal/shares", post(present));
    }
    routes
        .fallback(sealed)
        .method_not_allowed_fallback(sealed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn(timeout))
        .with_state(St { gate, listener })
}

async fn timeout(req: Request, next: axum::middleware::Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(r) => r,
        Err(_) => Problem::new(Code::Timeout, "no answer within the time limit").into_response(),
    }
}

async fn health() -> Response {
    Json(serde_json::json!({"status": "ok", "sealed": true})).into_response()
}

async fn ready(State(st): State<St>) -> Response {
    Problem::new(Code::NotReady, sealed_detail(&st.gate).await).into_response()
}

async fn sealed_detail(gate: &Gate) -> String {
    match gate.unsealer.lock().await.as_ref() {
        Some(u) => {
            let p = u.progress();
            format!(
                "the KMS is sealed: {} of {} unseal shares presented",
                p.have, p.need
            )
        }
        None => "the KMS is being unsealed; retry shortly".into(),
    }
}

async fn seal_status(gate: &Gate) -> SealStatus {
    match gate.unsealer.lock().await.as_ref() {
        Some(u) => u.status(),
        None => SealStatus {
            sealed: false,
            ..SealStatus::of(None, false, 0)
        },
    }
}

async fn status(State(st): State<St>) -> Response {
    Json(seal_status(&st.gate).await).into_response()
}

/// Everything else: 503 `sealed`, recorded within the budget.
async fn sealed(State(st): State<St>, peer: Option<Extension<Peer>>, req: Request) -> Response {
    let detail = sealed_detail(&st.gate).await;
    if let (Some(Extension(peer)), Some(suppressed)) = (peer, st.gate.refusals.take()) {
        let mut details = BTreeMap::from([
            ("listener".to_owned(), st.listener.as_str().to_owned()),
            ("cert_sha256".to_owned(), peer.identity.sha256.clone()),
            (
                "path".to_owned(),
                req.uri().path().chars().take(256).collect(),
            ),
        ]);
        if suppressed > 0 {
            details.insert("suppressed_before".into(), suppressed.to_string());
        }
        let _ = AuditLog::record_without_hsm(
            &st.gate.store,
            AuditEvent {
                actor: peer
                    .principal
                    .as_ref()
                    .map(|p| p.name.clone())
                    .unwrap_or_else(|| peer.identity.actor()),
                role: peer
                    .principal
                    .as_ref()
                    .map(|p| p.role.as_str().to_owned())
                    .unwrap_or_else(|| "unknown".into()),
                action: "api.sealed".into(),
                outcome: Some(Outcome::Refused),
                reason: Some(detail.clone()),
                source: Some(peer.addr.to_string()),
                details,
                ..Default::default()
            },
        )
        .await;
    }
    Problem::new(Code::Sealed, detail).into_response()
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ShareBody {
    share: String,
}

/// `POST /v1/seal/shares` {"share": "KMS1-..."}: one custodian's share.
/// 202 with the progress while more are needed, 200 once unsealed.
async fn present(State(st): State<St>, Extension(peer): Extension<Peer>, body: Bytes) -> Response {
    let gate = &st.gate;
    let who = match gate.store.custodian_by_cert(&peer.identity.sha256).await {
        Ok(Some(c))
            if !c.is_removed()
                && !c.is_locked()
                && matches!(
                    c.role,
                    CustodianRole::Custodian | CustodianRole::SecurityOfficer
                ) =>
        {
            c.name.to_string()
        }
        Ok(_) => {
            let detail = "this client certificate is not bound to an enrolled custodian who may present a share";
            let _ = AuditLog::record_without_hsm(
                &gate.store,
                AuditEvent {
                    actor: peer.identity.actor(),
                    role: "unknown".into(),
                    action: "seal.unseal-share".into(),
                    outcome: Some(Outcome::Refused),
                    reason: Some(detail.into()),
                    source: Some(peer.addr.to_string()),
                    details: BTreeMap::from([(
                        "cert_sha256".to_owned(),
                        peer.identity.sha256.clone(),
                    )]),
                    ..Default::default()
                },
            )
            .await;
            return Problem::new(Code::Forbidden, detail).into_response();
        }
        Err(e) => {
            tracing::error!("custodian lookup: {e}");
            return Problem::new(Code::Internal, "the custodians cannot be read").into_response();
        }
    };
    // The body is parsed into a String that is wiped; the request buffer
    // itself is axum's and freed when the request ends.
    let text = match serde_json::from_slice::<ShareBody>(&body) {
        Ok(b) => Zeroizing::new(b.share),
        // Handed to the unsealer as is, so the refusal is recorded there.
        Err(_) => Zeroizing::new(String::new()),
    };
    let mut guard = gate.unsealer.lock().await;
    let Some(unsealer) = guard.as_mut() else {
        return Problem::new(Code::InvalidRequest, "the KMS is unsealed already").into_response();
    };
    let progress = match unsealer.present(&text, &who).await {
        Ok(p) => p,
        Err(e) if e.is_refusal() => {
            return Problem::new(Code::InvalidRequest, e.to_string()).into_response()
        }
        Err(e) => {
            tracing::error!("unseal share from {who}: {e}");
            return Problem::new(
                Code::AuditUnavailable,
                "the share could not be recorded, so it did not count",
            )
            .into_response();
        }
    };
    drop(text);
    if !progress.complete() {
        return (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({
                "sealed": true, "have": progress.have, "need": progress.need,
            })),
        )
            .into_response();
    }
    match unsealer
        .open(gate.hsm.clone(), gate.policy.clone(), "server")
        .await
    {
        Ok(svc) => {
            *guard = None;
            if gate.opened.send(svc).await.is_err() {
                return Problem::new(Code::Internal, "the server is stopping").into_response();
            }
            Json(serde_json::json!({
                "sealed": false, "have": progress.have, "need": progress.need,
            }))
            .into_response()
        }
        Err(e) => {
            tracing::error!("unseal: {e}");
            Problem::new(
                Code::Internal,
                format!("the shares did not unseal the KMS ({e}); present them again"),
            )
            .into_response()
        }
    }
}
