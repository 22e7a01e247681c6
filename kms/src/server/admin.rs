//! The admin listener's endpoints: health and readiness (TLS is the only
//! check), the security officers' read-only view of the audit trail, and
//! the metrics for operators.
//!
//! An officer's read of the trail is an act like any other: each request is
//! recorded (`api.audit.search`, `api.audit.verify`, ...; actor = principal,
//! source = peer address) before its result is sent, and the result is
//! withheld if the record cannot be written (fail closed). Refusals (an
//! unmapped certificate, a role that may not read the trail, a malformed
//! query) are recorded as `refused`.

mod requests;

use super::conn::Peer;
use super::metrics::Gauges;
use super::problem::{Code, Problem};
use super::{Context, Listener, Role, BODY_LIMIT, REQUEST_TIMEOUT};
use crate::audit::{
    public_key_pem, render_html, AuditEvent, AuditLog, AuditRecord, Outcome, VerifyReport,
};
use crate::store::AuditFilter;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Query, Request, State};
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use time::format_description::well_known::Rfc3339;

/// Records returned by one search when the query gives no limit.
const DEFAULT_SEARCH_LIMIT: u32 = 1000;
/// The most one search may ask for: past this, page with `from`.
const MAX_SEARCH_LIMIT: u32 = 10_000;
/// How long readiness waits for a PKCS#11 session (all may be busy).
const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// Characters of a query string kept in an audit record.
const MAX_QUERY_CHARS: usize = 512;

const OFFICERS: &[Role] = &[Role::SecurityOfficer];
const METRICS_READERS: &[Role] = &[Role::SecurityOfficer, Role::Operator];

#[derive(Clone)]
pub(super) struct AppState {
    pub(super) ctx: Arc<Context>,
    pub(super) listener: Listener,
}

/// A server-made id per request: in the `x-request-id` header and in the
/// request's audit records. A client-supplied id is never used, so nobody
/// can make their request look related to someone else's records.
#[derive(Debug, Clone)]
struct RequestId(String);

pub(crate) fn router(ctx: Arc<Context>, listener: Listener) -> Router {
    let routes = Router::new()
        .route("/v1/health", get(health))
        .route("/v1/ready", get(ready))
        .route("/v1/audit/records", get(records))
        .route("/v1/audit/verify", get(verify))
        .route("/v1/audit/checkpoints", get(checkpoints))
        .route("/v1/audit/public-key", get(public_key))
        .route("/v1/audit/report", get(report))
        .route("/v1/seal", get(seal_status))
        .route("/v1/requests", get(requests::list))
        .route("/v1/requests/{id}", get(requests::show))
        .route("/v1/requests/{id}/approvals", post(requests::approve))
        .route("/metrics", get(metrics));
    common(routes, AppState { ctx, listener })
}

/// Health and readiness, which the provisioning listener also answers.
pub(super) fn health_routes(state: AppState) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/ready", get(ready))
        .with_state(state)
}

fn common(routes: Router<AppState>, state: AppState) -> Router {
    wrap(routes.with_state(state.clone()), state)
}

/// What every listener has: problem+json for unknown paths and methods,
/// the body limit, the request timeout, request ids and metrics.
pub(super) fn wrap(routes: Router, state: AppState) -> Router {
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn(limit_body))
        .layer(middleware::from_fn(timeout))
        .layer(middleware::from_fn_with_state(state, observe))
}

/// Outermost: a request id in, the request counted by route and status,
/// and headers that keep audit data out of caches and content sniffing.
async fn observe(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    let id = uuid::Uuid::new_v4().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut res = next.run(req).await;
    st.ctx
        .metrics
        .request(st.listener.as_str(), &route, res.status().as_u16());
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&id) {
        h.insert(HeaderName::from_static("x-request-id"), v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    res
}

async fn timeout(req: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(res) => res,
        Err(_) => Problem::new(
            Code::Timeout,
            format!("no answer within {}s", REQUEST_TIMEOUT.as_secs()),
        )
        .into_response(),
    }
}

/// Refuse a declared body over the limit before anything reads it;
/// `DefaultBodyLimit` covers bodies without a length for the extractors.
async fn limit_body(req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > BODY_LIMIT as u64) {
        return Problem::new(
            Code::PayloadTooLarge,
            format!("request bodies are limited to {BODY_LIMIT} bytes"),
        )
        .into_response();
    }
    next.run(req).await
}

async fn not_found() -> Response {
    Problem::new(Code::NotFound, "no such endpoint").into_response()
}

async fn method_not_allowed() -> Response {
    Problem::new(
        Code::MethodNotAllowed,
        "this endpoint does not take that method",
    )
    .into_response()
}

/// One act on the API, to be recorded with its outcome.
struct ApiAct {
    ctx: Arc<Context>,
    event: AuditEvent,
}

impl ApiAct {
    /// Record success, then answer; withhold the answer if the record
    /// cannot be written.
    async fn succeed(mut self, result: String, answer: Response) -> Response {
        self.event.outcome = Some(Outcome::Success);
        self.event.details.insert("result".into(), result);
        match self.ctx.record(self.event).await {
            Ok(()) => answer,
            Err(_) => Problem::new(
                Code::AuditUnavailable,
                "the act could not be recorded in the audit trail, so its result is withheld",
            )
            .into_response(),
        }
    }

    /// Record a refusal and answer it (whether or not the record could be
    /// written: nothing is given out either way).
    async fn refuse(mut self, code: Code, detail: String) -> Response {
        self.event.outcome = Some(Outcome::Refused);
        self.event.reason = Some(detail.clone());
        let _ = self.ctx.record(self.event).await;
        Problem::new(code, detail).into_response()
    }

    /// Record a failure; the client learns only that it failed (the detail
    /// is in the log and the record).
    async fn fail(mut self, what: &str, err: impl std::fmt::Display) -> Response {
        tracing::error!(
            "{} by {}: {what}: {err}",
            self.event.action,
            self.event.actor
        );
        self.event.outcome = Some(Outcome::Failure);
        self.event.reason = Some(format!("{what}: {err}"));
        let _ = self.ctx.record(self.event).await;
        Problem::new(
            Code::Internal,
            format!("{what} failed; the server log has the detail"),
        )
        .into_response()
    }
}

/// Who may do `action`: a mapped principal in one of `allowed`. Refusals
/// are recorded here.
async fn authorize(
    st: &AppState,
    peer: &Peer,
    id: &RequestId,
    action: &'static str,
    allowed: &[Role],
    query: Option<&str>,
) -> Result<ApiAct, Response> {
    let mut details = BTreeMap::from([
        ("listener".to_owned(), st.listener.as_str().to_owned()),
        ("cert_sha256".to_owned(), peer.identity.sha256.clone()),
    ]);
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        details.insert("query".into(), q.chars().take(MAX_QUERY_CHARS).collect());
    }
    let mut act = ApiAct {
        ctx: st.ctx.clone(),
        event: AuditEvent {
            action: action.to_owned(),
            request_id: Some(id.0.clone()),
            source: Some(peer.addr.to_string()),
            details,
            ..Default::default()
        },
    };
    let Some(p) = &peer.principal else {
        act.event.actor = peer.identity.actor();
        act.event.role = "unknown".into();
        if let Some(cn) = &peer.identity.subject_cn {
            act.event
                .details
                .insert("subject_cn".into(), cn.chars().take(128).collect());
        }
        return Err(act
            .refuse(
                Code::UnknownCertificate,
                "this client certificate is not mapped to a principal".into(),
            )
            .await);
    };
    act.event.actor = p.name.clone();
    act.event.role = p.role.as_str().to_owned();
    act.event.tenant = p.tenant.as_ref().map(ToString::to_string);
    if !allowed.contains(&p.role) {
        let roles: Vec<&str> = allowed.iter().map(|r| r.as_str()).collect();
        return Err(act
            .refuse(
                Code::Forbidden,
                format!(
                    "only {} may do this; {} is a {}",
                    roles.join(" or "),
                    p.name,
                    p.role
                ),
            )
            .await);
    }
    Ok(act)
}

/// The seal's configuration once unsealed (while sealed, `sealed.rs`
/// answers): public values only, like health, for any client certificate.
async fn seal_status(State(st): State<AppState>) -> Response {
    match st.ctx.svc.store().seal_current().await {
        Ok(rec) => Json(crate::seal::SealStatus::of(rec.as_ref(), false, 0)).into_response(),
        Err(e) => {
            tracing::error!("seal status: {e}");
            Problem::new(Code::Internal, "the seal configuration cannot be read").into_response()
        }
    }
}

async fn health() -> Response {
    Json(serde_json::json!({"status": "ok"})).into_response()
}

/// Ready when the token still has the service logged in and the database
/// answers: without either, no act can be done or recorded.
async fn ready(State(st): State<AppState>) -> Response {
    let hsm = st.ctx.svc.hsm().clone();
    let token = tokio::time::timeout(
        READY_TIMEOUT,
        tokio::task::spawn_blocking(move || hsm.logged_in()),
    )
    .await;
    let token = match token {
        Ok(Ok(Ok(true))) => Ok(()),
        Ok(Ok(Ok(false))) => Err("not logged in".to_owned()),
        Ok(Ok(Err(e))) => Err(e.to_string()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no session within the time limit".to_owned()),
    };
    let database = st.ctx.svc.store().audit_head().await.map(|_| ());
    match (&token, &database) {
        (Ok(()), Ok(())) => Json(serde_json::json!({
            "status": "ready",
            "token": "logged-in",
            "database": "ok",
        }))
        .into_response(),
        _ => {
            let mut why = Vec::new();
            if let Err(e) = &token {
                tracing::warn!("not ready: token: {e}");
                why.push("the token is not usable");
            }
            if let Err(e) = &database {
                tracing::warn!("not ready: database: {e}");
                why.push("the database does not answer");
            }
            Problem::new(Code::NotReady, why.join("; ")).into_response()
        }
    }
}

/// `GET /v1/audit/records` parameters, as `kms audit search` takes them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordsQuery {
    from: Option<String>,
    to: Option<String>,
    actor: Option<String>,
    /// `tenant/name`.
    key: Option<String>,
    /// Exact, or a prefix ending in `*`.
    action: Option<String>,
    outcome: Option<String>,
    request_id: Option<String>,
    limit: Option<u32>,
}

/// An RFC 3339 bound, in UTC as the records' `at` is, so that the text
/// comparison in the store orders it right.
fn utc_bound(name: &str, v: Option<String>) -> Result<Option<String>, String> {
    v.map(|s| {
        time::OffsetDateTime::parse(&s, &Rfc3339)
            .ok()
            .and_then(|t| t.to_offset(time::UtcOffset::UTC).format(&Rfc3339).ok())
            .ok_or_else(|| format!("{name} must be an RFC 3339 time such as 2026-03-01T00:00:00Z"))
    })
    .transpose()
}

impl RecordsQuery {
    fn into_filter(self) -> Result<AuditFilter, String> {
        let limit = self.limit.unwrap_or(DEFAULT_SEARCH_LIMIT);
        if !(1..=MAX_SEARCH_LIMIT).contains(&limit) {
            return Err(format!("limit must be between 1 and {MAX_SEARCH_LIMIT}"));
        }
        Ok(AuditFilter {
            from: utc_bound("from", self.from)?,
            to: utc_bound("to", self.to)?,
            actor: self.actor,
            action: self.action,
            outcome: self.outcome.map(|o| o.parse()).transpose()?,
            request_id: self.request_id,
            key: self.key,
            limit: Some(limit),
        })
    }
}

async fn records(
    State(st): State<AppState>,
    Extension(peer): Extension<Peer>,
    Extension(id): Extension<RequestId>,
    uri: axum::http::Uri,
    query: Result<Query<RecordsQuery>, QueryRejection>,
) -> Response {
    let act = match authorize(&st, &peer, &id, "api.audit.search", OFFICERS, uri.query()).await {
        Ok(a) => a,
        Err(refused) => return refused,
    };
    let filter = match query
        .map_err(|e| e.body_text())
        .and_then(|Query(q)| q.into_filter())
    {
        Ok(f) => f,
        Err(why) => return act.refuse(Code::InvalidQuery, why).await,
    };
    match st.ctx.svc.audit().store().audit_search(&filter).await {
        Ok(found) => {
            let n = found.len();
            act.succeed(format!("{n} records"), Json(found).into_response())
                .await
        }
        Err(e) => act.fail("searching the trail", e).await,
    }
}

/// The verification report, with `ok` spelled out for clients.
#[derive(Serialize)]
struct VerifyBody {
    ok: bool,
    #[serde(flatten)]
    report: VerifyReport,
}

async fn verify(
    State(st): State<AppState>,
    Extension(peer): Extension<Peer>,
    Extension(id): Extension<RequestId>,
) -> Response {
    let act = match authorize(&st, &peer, &id, "api.audit.verify", OFFICERS, None).await {
        Ok(a) => a,
        Err(refused) => return refused,
    };
    match st.ctx.svc.audit().verify_database().await {
        // 200 either way: the request worked; the report says what it found.
        Ok(report) => {
            let ok = report.ok();
            let result = if ok { "intact" } else { "damaged" };
            act.succeed(
                result.into(),
                Json(VerifyBody { ok, report }).into_response(),
            )
            .await
        }
        Err(e) => act.fail("verifying the trail", e).await,
    }
}

async fn checkpoints(
    State(st): State<AppState>,
    Extension(peer): Extension<Peer>,
    Extension(id): Extension<RequestId>,
) -> Response {
    let act = match authorize(&st, &peer, &id, "api.audit.checkpoints", OFFICERS, None).await {
        Ok(a) => a,
        Err(refused) => return refused,
    };
    match st.ctx.svc.audit().store().checkpoints().await {
        Ok(cps) => {
            let n = cps.len();
            act.succeed(format!("{n} checkpoints"), Json(cps).into_response())
                .await
        }
        Err(e) => act.fail("reading the checkpoints", e).await,
    }
}

async fn public_key(
    State(st): State<AppState>,
    Extension(peer): Extension<Peer>,
    Extension(id): Extension<RequestId>,
) -> Response {
    let act = match authorize(&st, &peer, &id, "api.audit.public-key", OFFICERS, None).await {
        Ok(a) => a,
        Err(refused) => return refused,
    };
    let pem = match st.ctx.svc.audit().public_key().await {
        Ok(sec1) => public_key_pem(&sec1),
        Err(e) => return act.fail("reading the public key", e).await,
    };
    match pem {
        Ok(pem) => {
            let answer =
                ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], pem).into_response();
            act.succeed("published".into(), answer).await
        }
        Err(e) => act.fail("encoding the public key", e).await,
    }
}

async fn report(
    State(st): State<AppState>,
    Extension(peer): Extension<Peer>,
    Extension(id): Extension<RequestId>,
) -> Response {
    let act = match authorize(&st, &peer, &id, "api.audit.report", OFFICERS, None).await {
        Ok(a) => a,
        Err(refused) => return refused,
    };
    let audit = st.ctx.svc.audit();
    let verification = match audit.verify_database().await {
        Ok(v) => v,
        Err(e) => return act.fail("verifying the trail", e).await,
    };
    let records: Vec<AuditRecord> = match AuditLog::stored(audit.store()).await {
        Ok(stored) => stored.into_iter().filter_map(|s| s.record.ok()).collect(),
        Err(e) => return act.fail("reading the trail", e).await,
    };
    let cps = match audit.store().checkpoints().await {
        Ok(c) => c,
        Err(e) => return act.fail("reading the checkpoints", e).await,
    };
    let now = time::OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default();
    let html = render_html("KMS audit report", &records, &cps, &verification, &now);
    let result = if verification.ok() {
        "intact"
    } else {
        "damaged"
    };
    let answer = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response();
    act.succeed(result.into(), answer).await
}

async fn metrics(
    State(st): State<AppState>,
    Extension(peer): Extension<Peer>,
    Extension(id): Extension<RequestId>,
) -> Response {
    // Refusals are recorded; a successful scrape is not: a scraper every
    // 15 s would add thousands of records a day that say nothing about
    // keys or the trail, and the counters hold no secret.
    if let Err(refused) = authorize(&st, &peer, &id, "api.metrics", METRICS_READERS, None).await {
        return refused;
    }
    let gauges = Gauges {
        audit_head: st
            .ctx
            .svc
            .store()
            .audit_head()
            .await
            .ok()
            .map(|(seq, _)| seq),
        hsm_sessions: st.ctx.svc.hsm().sessions_open(),
    };
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        st.ctx.metrics.render(&gauges),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(limit: Option<u32>, from: Option<&str>, outcome: Option<&str>) -> RecordsQuery {
        RecordsQuery {
            from: from.map(str::to_owned),
            to: None,
            actor: None,
            key: None,
            action: None,
            outcome: outcome.map(str::to_owned),
            request_id: None,
            limit,
        }
    }

    #[test]
    fn search_queries_are_checked_and_bounds_made_utc() {
        let f = q(None, Some("2026-03-01T08:00:00+08:00"), Some("refused"))
            .into_filter()
            .unwrap();
        assert_eq!(f.from.as_deref(), Some("2026-03-01T00:00:00Z"));
        assert_eq!(f.outcome, Some(Outcome::Refused));
        assert_eq!(f.limit, Some(DEFAULT_SEARCH_LIMIT));
        assert!(q(Some(0), None, None).into_filter().is_err());
        assert!(q(Some(MAX_SEARCH_LIMIT + 1), None, None)
            .into_filter()
            .is_err());
        assert!(q(None, Some("yesterday"), None).into_filter().is_err());
        assert!(q(None, None, Some("maybe")).into_filter().is_err());
    }
}
