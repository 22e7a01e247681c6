//! The provisioning listener: what an OTA provisioner needs for one card
//! session, and nothing more.
//!
//! A request passes, outermost first:
//! 1. `sign`: whatever the answer (errors included), its body and the
//!    caller's request id are signed in the HSM (INT-1, `signer.rs`);
//! 2. `shed`: at most `max_in_flight` requests are served at once; past it,
//!    503 `overloaded` at once (`limits.rs`);
//! 3. the common layers (metrics, timeout, body limit, problem+json); a
//!    body over the limit is refused there, before admission, and recorded
//!    here (`early_refusals`);
//! 4. admission (`envelope.rs`): a provisioner principal, its rate (429),
//!    the request id and timestamp (REPLAY-1, database-backed);
//! 5. the handler (`handlers.rs`): JSON checked, each key authorized by the
//!    Cedar policy (`crate::authz`, KM-4), then the service, which derives
//!    in the HSM and records the act under the request id.

mod envelope;
mod handlers;
mod limits;
pub mod openapi;
mod signer;

pub(crate) use signer::ResponseSigner;

use super::admin::{self, AppState};
use super::conn::Peer;
use super::problem::Code;
use super::{Context, Listener, BODY_LIMIT};
use crate::authz::Authorizer;
use crate::config::ProvisioningLimits;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use kms_client::wire;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// Largest answer body signed (the OpenAPI document is the largest).
const MAX_RESPONSE: usize = 4 * 1024 * 1024;

#[derive(Clone)]
pub(crate) struct ProvState {
    ctx: Arc<Context>,
    authz: Arc<Authorizer>,
    signer: ResponseSigner,
    limits: Arc<limits::Limits>,
    admitted: Arc<AtomicU64>,
}

pub(crate) fn router(
    ctx: Arc<Context>,
    authz: Arc<Authorizer>,
    signer: ResponseSigner,
    limits: &ProvisioningLimits,
) -> Router {
    let st = ProvState {
        ctx: ctx.clone(),
        authz,
        signer,
        limits: Arc::new(limits::Limits::new(limits)),
        admitted: Arc::new(AtomicU64::new(0)),
    };
    let app = AppState {
        ctx,
        listener: Listener::Provisioning,
    };
    let routes = Router::new()
        .route("/v1/sessions/scp02", post(handlers::scp02))
        .route("/v1/sessions/scp03", post(handlers::scp03))
        .route("/v1/card-keys/emv", post(handlers::emv_card_keys))
        .route("/v1/keys", get(handlers::keys))
        .route("/v1/keys/{name}", get(handlers::key))
        .route("/v1/signing-key", get(handlers::signing_key))
        .route("/v1/openapi.json", get(handlers::openapi))
        .with_state(st.clone());
    admin::wrap(admin::health_routes(app.clone()).merge(routes), app)
        .layer(middleware::from_fn_with_state(st.clone(), early_refusals))
        .layer(middleware::from_fn_with_state(st.clone(), shed))
        .layer(middleware::from_fn_with_state(st, sign))
}

/// The audit action of a request, from its path (as its handler names it).
fn action_of(path: &str) -> &'static str {
    match path {
        "/v1/sessions/scp02" => "session.scp02",
        "/v1/sessions/scp03" => "session.scp03",
        "/v1/card-keys/emv" => "derive.emv-card-keys",
        "/v1/keys" => "key.list",
        p if p.starts_with("/v1/keys/") => "key.show",
        _ => "api.request",
    }
}

/// A body over the limit is refused by the common layers before admission
/// (from its Content-Length, before it is read). Record that refusal like
/// admission's, within the refusal budget (sending one costs nothing, and
/// the rate limit has not been applied yet), and answer it with the
/// caller's request id like every other problem of this listener.
async fn early_refusals(State(st): State<ProvState>, req: Request, next: Next) -> Response {
    let rid = envelope::request_id_of(req.headers()).map(str::to_owned);
    let peer = req.extensions().get::<Peer>().cloned();
    let action = action_of(req.uri().path());
    let res = next.run(req).await;
    if res.status() != StatusCode::PAYLOAD_TOO_LARGE {
        return res;
    }
    let code = Code::PayloadTooLarge;
    let detail = format!("request bodies are limited to {BODY_LIMIT} bytes");
    st.ctx.metrics.refused(code.as_str());
    if let (Some(peer), Some(suppressed)) = (&peer, st.ctx.refusals.take()) {
        let mut e = envelope::base_event(peer, action, rid.as_deref());
        e.outcome = Some(crate::audit::Outcome::Refused);
        e.reason = Some(detail.clone());
        e.details.insert("code".into(), code.as_str().to_owned());
        e.details
            .insert("suppressed_since_last".into(), suppressed.to_string());
        let _ = st.ctx.record(e).await;
    }
    envelope::problem(code, detail, rid.as_deref())
}

/// Refuse at once past the in-flight bound. Not recorded one by one (that
/// would add work exactly when there is too much): counted in the metrics,
/// and recorded within the refusal budget.
async fn shed(State(st): State<ProvState>, req: Request, next: Next) -> Response {
    let Some(_slot) = st.limits.slot() else {
        st.ctx.metrics.refused(Code::Overloaded.as_str());
        if st.ctx.refusals.take().is_some() {
            let _ = st
                .ctx
                .record(crate::audit::AuditEvent {
                    actor: "kms".into(),
                    role: "system".into(),
                    action: "api.overloaded".into(),
                    outcome: Some(crate::audit::Outcome::Refused),
                    reason: Some("requests in flight at the node's bound".into()),
                    source: Some("server".into()),
                    ..Default::default()
                })
                .await;
        }
        return envelope::problem(
            Code::Overloaded,
            "the KMS is serving as many requests as it can; retry shortly".into(),
            envelope::request_id_of(req.headers()),
        );
    };
    next.run(req).await
}

/// Sign every answer over its request id and body (INT-1). If it cannot be
/// signed, the answer is withheld: an unsigned answer would be one the
/// provisioner cannot prove, and the reference client refuses it anyway.
async fn sign(State(st): State<ProvState>, req: Request, next: Next) -> Response {
    let rid = envelope::request_id_of(req.headers())
        .unwrap_or_default()
        .to_owned();
    let res = next.run(req).await;
    let (mut parts, body) = res.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_RESPONSE).await {
        Ok(b) => b,
        Err(e) => {
            tracing::error!("answer body could not be read for signing: {e}");
            return unsigned_failure(&rid);
        }
    };
    let sig = match st.signer.sign(wire::signed_message(&rid, &bytes)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("answer could not be signed: {e}");
            return unsigned_failure(&rid);
        }
    };
    let h = &mut parts.headers;
    if let Ok(v) = HeaderValue::from_str(&hex::encode_upper(sig)) {
        h.insert(wire::SIGNATURE, v);
    }
    if let Ok(v) = HeaderValue::from_str(st.signer.key_id()) {
        h.insert(wire::SIGNATURE_KEY, v);
    }
    // Echoed only when the request had a valid one (the signature then
    // covers the empty id).
    if let Some(v) = Some(&rid)
        .filter(|r| !r.is_empty())
        .and_then(|r| HeaderValue::from_str(r).ok())
    {
        h.insert(wire::REQUEST_ID, v);
    }
    Response::from_parts(parts, Body::from(bytes))
}

fn unsigned_failure(rid: &str) -> Response {
    envelope::problem(
        Code::Internal,
        "the answer could not be signed, so it is withheld".into(),
        Some(rid).filter(|r| !r.is_empty()),
    )
}
