//! Accepting connections by hand: TCP, then the TLS handshake in the
//! connection's own task (a slow or stalled client holds only its own
//! slot), then hyper serves HTTP/1.1 on it with the peer's identity and
//! principal put in every request's extensions, where the handlers find
//! them ([`Peer`]).

use super::tls::{ClientIdentity, Refusal, REFUSED_CERT};
use super::{
    Context, Listener, Principal, DRAIN_GRACE, HANDSHAKE_TIMEOUT, HEADER_READ_TIMEOUT,
    MAX_CONNECTIONS,
};
use crate::audit::{AuditEvent, Outcome};
use axum::Router;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// After a refused handshake, how long the refusal alert is given to reach
/// the client: closing at once with the client's request unread would make
/// the kernel send a reset, and the client would see "connection reset"
/// instead of the TLS alert that says why.
const LINGER: Duration = Duration::from_secs(2);
/// Pause after a failed accept (out of file descriptors): retrying at once
/// would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Refused handshakes recorded one by one per minute, per server. Anyone who
/// can reach the port can fail a handshake; past this the refusals are
/// counted and the count goes into the next record, so a flood cannot fill
/// the trail (or keep the HSM busy with MACs) while none goes unnoticed.
const REFUSALS_RECORDED_PER_MINUTE: u32 = 60;

/// Who is on the other end of a connection: in each request's extensions.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    pub listener: Listener,
    /// The verified client certificate.
    pub identity: ClientIdentity,
    /// Its principal; None when the policy does not map it (every endpoint
    /// but health and readiness then answers 403).
    pub principal: Option<Principal>,
}

/// The rate limit on records of refused handshakes.
#[derive(Default)]
pub(crate) struct RefusalBudget {
    state: Mutex<BudgetState>,
}

#[derive(Default)]
struct BudgetState {
    window_start: Option<Instant>,
    used: u32,
    suppressed: u64,
}

impl RefusalBudget {
    /// Some(number of refusals suppressed since the last record) when this
    /// refusal may be recorded.
    pub(crate) fn take(&self) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if s.window_start
            .is_none_or(|w| now.duration_since(w) >= Duration::from_secs(60))
        {
            s.window_start = Some(now);
            s.used = 0;
        }
        if s.used < REFUSALS_RECORDED_PER_MINUTE {
            s.used += 1;
            Some(std::mem::take(&mut s.suppressed))
        } else {
            s.suppressed += 1;
            None
        }
    }
}

pub(crate) struct Serving {
    pub(crate) listener: Listener,
    pub(crate) tcp: TcpListener,
    pub(crate) tls: TlsAcceptor,
    pub(crate) router: Router,
    pub(crate) ctx: Arc<Context>,
}

/// Accept until `stop`, then close the listener and let the connections
/// finish their requests (at most [`DRAIN_GRACE`]).
pub(crate) async fn serve(s: Serving, mut stop: watch::Receiver<bool>) {
    let Serving {
        listener,
        tcp,
        tls,
        router,
        ctx,
    } = s;
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            // A dropped RunningServer (sender gone) stops the server too.
            _ = stopped(&mut stop) => break,
            // Reap finished connections so the set does not grow.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = tcp.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        ctx.metrics.connection_rejected();
                        tracing::warn!("{}: connection limit reached; closing {peer}", listener.as_str());
                        continue;
                    };
                    conns.spawn(connection(
                        listener,
                        stream,
                        peer,
                        tls.clone(),
                        router.clone(),
                        ctx.clone(),
                        stop.clone(),
                        slot,
                    ));
                }
                Err(e) => {
                    tracing::warn!("{}: accept failed: {e}", listener.as_str());
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    // Nothing new from here on; connections already accepted see `stop`
    // and finish the request they are serving.
    drop(tcp);
    let drained = tokio::time::timeout(DRAIN_GRACE, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            "{}: {} connection(s) still busy after {}s; cutting them off",
            listener.as_str(),
            conns.len(),
            DRAIN_GRACE.as_secs()
        );
        conns.shutdown().await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn connection(
    listener: Listener,
    stream: TcpStream,
    addr: SocketAddr,
    tls: TlsAcceptor,
    router: Router,
    ctx: Arc<Context>,
    mut stop: watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
) {
    let handshake = REFUSED_CERT.scope(RefCell::new(None), async move {
        let result = tls.accept(stream).into_fallible().await;
        let refused = REFUSED_CERT
            .try_with(|c| c.borrow_mut().take())
            .ok()
            .flatten();
        (result, refused)
    });
    let (result, refused) = tokio::select! {
        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake) => match r {
            Ok(r) => r,
            Err(_) => {
                ctx.metrics.handshake_failed(listener.as_str(), "timeout");
                return;
            }
        },
        _ = stopped(&mut stop) => return,
    };
    let tls_stream = match result {
        Ok(s) => s,
        Err((e, tcp)) => {
            tokio::join!(
                handshake_refused(&ctx, listener, addr, &e, refused),
                linger(tcp)
            );
            return;
        }
    };
    let identity = match tls_stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
    {
        Some(cert) => ClientIdentity::from_der(cert),
        None => {
            // Client authentication is mandatory, so rustls cannot get
            // here; if it ever did, refuse rather than serve anonymously.
            tracing::error!("{addr}: handshake completed without a client certificate");
            return;
        }
    };
    let principal = ctx.principals.lookup(&identity).cloned();
    let peer = Peer {
        addr,
        listener,
        identity,
        principal,
    };
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(peer.clone());
        router.clone().oneshot(req)
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let conn = http.serve_connection(TokioIo::new(tls_stream), service);
    tokio::pin!(conn);
    let served = tokio::select! {
        r = conn.as_mut() => r,
        _ = stopped(&mut stop) => {
            // Finish the request in flight (if any), then close; an idle
            // keep-alive connection closes at once.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = served {
        tracing::debug!("{addr}: connection ended: {e}");
    }
}

/// Count, log and (within the rate limit) audit a refused handshake.
async fn handshake_refused(
    ctx: &Context,
    listener: Listener,
    addr: SocketAddr,
    e: &std::io::Error,
    presented: Option<ClientIdentity>,
) {
    let Some(refusal) = Refusal::of(e) else {
        ctx.metrics.handshake_failed(listener.as_str(), "other");
        tracing::debug!("{addr}: TLS handshake failed: {e}");
        return;
    };
    ctx.metrics
        .handshake_failed(listener.as_str(), refusal.label());
    tracing::info!("{addr}: {}", refusal.reason());
    let Some(suppressed) = ctx.refusals.take() else {
        ctx.metrics.handshake_audit_suppressed();
        return;
    };
    let mut details = BTreeMap::from([
        ("listener".to_owned(), listener.as_str().to_owned()),
        ("error".to_owned(), refusal.label().to_owned()),
    ]);
    if suppressed > 0 {
        details.insert("suppressed_before".into(), suppressed.to_string());
    }
    // The certificate was refused, so nothing in it is vouched for: it is
    // recorded as what was presented, never as who the caller is.
    if let Some(cert) = &presented {
        details.insert("presented_cert_sha256".into(), cert.sha256.clone());
        if let Some(cn) = &cert.subject_cn {
            details.insert(
                "presented_subject_cn".into(),
                cn.chars().take(128).collect(),
            );
        }
    }
    let event = AuditEvent {
        actor: presented
            .as_ref()
            .map(ClientIdentity::actor)
            .unwrap_or_else(|| "anonymous".into()),
        role: "unknown".into(),
        action: "api.tls.handshake".into(),
        request_id: Some(uuid::Uuid::new_v4().to_string()),
        outcome: Some(Outcome::Refused),
        reason: Some(refusal.reason().into()),
        source: Some(addr.to_string()),
        details,
        ..Default::default()
    };
    // The connection is refused whether or not this is written; a write
    // failure is logged and counted by `record`.
    let _ = ctx.record(event).await;
}

/// Resolves once the server is stopping (or its handle was dropped). The
/// watch guard is dropped here, so callers' futures stay `Send`.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopping| *stopping).await;
}

/// Send FIN after the alert and read what the client still sends, so it
/// gets the alert rather than a reset.
async fn linger(mut tcp: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tcp.shutdown().await;
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(n) = tcp.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_records_are_rate_limited_and_the_rest_counted() {
        let b = RefusalBudget::default();
        for _ in 0..REFUSALS_RECORDED_PER_MINUTE {
            assert_eq!(b.take(), Some(0));
        }
        assert_eq!(b.take(), None);
        assert_eq!(b.take(), None);
        // A new window: the next record carries the count of the others.
        if let Ok(mut s) = b.state.lock() {
            s.window_start = Some(Instant::now() - Duration::from_secs(61));
        }
        assert_eq!(b.take(), Some(2));
        assert_eq!(b.take(), Some(0));
    }
}
