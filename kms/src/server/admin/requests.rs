//! Custodians and officers at their own workstations (issue 5, item 5):
//! read the open dual-control requests and approve one, over the admin
//! listener's mutual TLS.
//!
//! Who is calling is the person whose enrolment binds the client
//! certificate (`cert_sha256`), not the principals policy: custodians are
//! people of the ceremonies, not API principals. An approval needs three
//! things from that person: the certificate (TLS), their PIN (checked and
//! counted like at the terminal, AUTH-PIN-LOCK) and their signature over
//! the approval message with the certificate's key, made on their
//! workstation, so the trail proves who agreed to what. Executing stays at
//! the ceremony terminal: it may need components, PINs or the SO login.

use super::{ApiAct, AppState, RequestId};
use crate::audit::AuditEvent;
use crate::crypto::approval::{approval_message, ApprovalSignature};
use crate::model::Pin;
use crate::server::conn::Peer;
use crate::server::problem::{Code, Problem};
use crate::service::{ApprovalRequest, AuthRefusal, ServiceError};
use crate::store::CustodianRecord;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A request as a custodian's workstation needs it: what to check, and the
/// exact bytes to sign (hex of `approval_message`).
#[derive(Serialize)]
struct RequestView {
    #[serde(flatten)]
    request: ApprovalRequest,
    /// Hex of the message this caller signs to approve.
    approval_message: String,
}

/// `POST /v1/requests/{id}/approvals`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApprovalBody {
    /// The digest the person checked against the operation shown.
    digest: String,
    pin: String,
    /// Their client certificate, DER in hex: the same one as on the TLS
    /// connection (the server's TLS layer keeps only its fingerprint).
    certificate: String,
    /// ECDSA P-256 over the approval message, DER in hex.
    signature: String,
}

/// The person bound to the caller's certificate, or a recorded refusal.
async fn person(
    st: &AppState,
    peer: &Peer,
    id: &RequestId,
    action: &'static str,
) -> Result<(ApiAct, CustodianRecord), Response> {
    let mut act = ApiAct {
        ctx: st.ctx.clone(),
        event: AuditEvent {
            action: action.to_owned(),
            actor: peer.identity.actor(),
            role: "unknown".into(),
            request_id: Some(id.0.clone()),
            source: Some(peer.addr.to_string()),
            details: BTreeMap::from([
                ("listener".to_owned(), st.listener.as_str().to_owned()),
                ("cert_sha256".to_owned(), peer.identity.sha256.clone()),
            ]),
            ..Default::default()
        },
    };
    match st
        .ctx
        .svc
        .store()
        .custodian_by_cert(&peer.identity.sha256)
        .await
    {
        Ok(Some(c)) if !c.is_removed() => {
            act.event.actor = c.name.to_string();
            act.event.role = c.role.as_str().to_owned();
            Ok((act, c))
        }
        Ok(_) => Err(act
            .refuse(
                Code::UnknownCertificate,
                "this client certificate is not bound to an enrolled person".into(),
            )
            .await),
        Err(e) => Err(act.fail("reading the custodians", e).await),
    }
}

/// `GET /v1/requests`: the open requests, oldest first.
pub(super) async fn list(
    State(st): State<AppState>,
    Extension(peer): Extension<Peer>,
    Extension(id): Extension<RequestId>,
) -> Response {
    let (act, _) = match person(&st, &peer, &id, "api.requests.list").await {
        Ok(p) => p,
        Err(refused) => return refused,
    };
    let rows = match st.ctx.svc.store().approval_requests_in(&["open"]).await {
        Ok(r) => r,
        Err(e) => return act.fail("reading the requests", e).await,
    };
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        match st.ctx.svc.approval(&row.id).await {
            Ok(r) => out.push(r),
            Err(e) => return act.fail("reading a request", e).await,
        }
    }
    let n = out.len();
    act.succeed(format!("{n} open requests"), Json(out).into_response())
        .await
}

/// `GET /v1/requests/{id}`: one request, with the message to sign.
pub(super) async fn show(
    State(st): State<AppState>,
    Extension(peer): Extension<Peer>,
    Extension(id): Extension<RequestId>,
    Path(request): Path<String>,
) -> Response {
    let (mut act, who) = match person(&st, &peer, &id, "api.requests.show").await {
        Ok(p) => p,
        Err(refused) => return refused,
    };
    act.event
        .details
        .insert("approval_request".into(), request.clone());
    match st.ctx.svc.approval(&request).await {
        Ok(r) => {
            let message = approval_message(&r.id, &r.digest, who.name.as_str());
            let view = RequestView {
                approval_message: hex::encode_upper(message),
                request: r,
            };
            act.succeed("shown".into(), Json(view).into_response())
                .await
        }
        Err(ServiceError::NotFound(_)) => {
            act.refuse(Code::NotFound, format!("no request {request}"))
                .await
        }
        Err(e) => act.fail("reading the request", e).await,
    }
}

/// `POST /v1/requests/{id}/approvals`: approve, with PIN and signature.
/// The service records the login and the approval (`custodian.login`,
/// `request.approve` with the signature and certificate); refusals before
/// it are recorded here.
pub(super) async fn approve(
    State(st): State<AppState>,
    Extension(peer): Extension<Peer>,
    Extension(id): Extension<RequestId>,
    Path(request): Path<String>,
    body: Bytes,
) -> Response {
    let (mut act, who) = match person(&st, &peer, &id, "api.requests.approve").await {
        Ok(p) => p,
        Err(refused) => return refused,
    };
    act.event
        .details
        .insert("approval_request".into(), request.clone());
    let mut parsed: ApprovalBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        // serde's message may quote the input, which holds a PIN: say only
        // what the body must be.
        Err(_) => {
            return act
                .refuse(
                    Code::InvalidRequest,
                    "the body must be JSON with digest, pin, certificate and signature".into(),
                )
                .await
        }
    };
    let pin = Pin::new(std::mem::take(&mut parsed.pin));
    let (cert_der, signature) = match (
        hex::decode(parsed.certificate.trim()),
        hex::decode(parsed.signature.trim()),
    ) {
        (Ok(c), Ok(s)) => (c, s),
        _ => {
            return act
                .refuse(
                    Code::InvalidRequest,
                    "certificate and signature must be hex".into(),
                )
                .await
        }
    };
    let sig = ApprovalSignature {
        cert_der,
        signature,
    };
    // The signature must come from the certificate this connection proved
    // possession of, not from one copied from elsewhere.
    if !sig
        .cert_sha256()
        .eq_ignore_ascii_case(&peer.identity.sha256)
    {
        return act
            .refuse(
                Code::Refused,
                "the certificate in the body is not the one of this TLS connection".into(),
            )
            .await;
    }
    let svc = &st.ctx.svc;
    let session = match svc
        .authenticate(who.name.as_str(), &pin, time::OffsetDateTime::now_utc())
        .await
    {
        Ok(s) => s,
        Err(e) => return answer_error(e),
    };
    drop(pin);
    match svc.approve(&session, &request, &parsed.digest, &sig).await {
        Ok(r) => (axum::http::StatusCode::OK, Json(r)).into_response(),
        Err(e) => answer_error(e),
    }
}

/// A service refusal as a problem; the service has recorded it already.
fn answer_error(e: ServiceError) -> Response {
    let (code, detail) = match &e {
        ServiceError::Auth(AuthRefusal::NotEnrolled { .. }) => {
            (Code::UnknownCertificate, e.to_string())
        }
        // Logged in, but not in a role this quorum takes: dual control's
        // refusal, not a failed login.
        ServiceError::Auth(AuthRefusal::Role { .. }) => (Code::Refused, e.to_string()),
        ServiceError::Auth(_) => (Code::Unauthenticated, e.to_string()),
        ServiceError::Refused(m) => (Code::Refused, m.clone()),
        ServiceError::Invalid(m) => (Code::InvalidRequest, m.clone()),
        ServiceError::NotFound(m) => (Code::NotFound, m.clone()),
        ServiceError::Audit(_) => (
            Code::AuditUnavailable,
            "the act could not be recorded in the audit trail, so it did not happen".into(),
        ),
        other => {
            tracing::error!("approval over the API: {other}");
            (
                Code::Internal,
                "the approval failed; the server log has the detail".into(),
            )
        }
    };
    Problem::new(code, detail).into_response()
}
