//! Admission of one provisioning request, before its body is looked at:
//! who (a provisioner principal), how often (its rate), and whether this
//! exact request was seen before (REPLAY-1: a request id per principal, once,
//! within a timestamp window; the ids live in the database, so the rule
//! holds across restarts and across nodes sharing it).
//!
//! Every refusal is an audit record (the rate limiter's, budgeted so a flood
//! cannot flood the trail; the rest are counted).

use super::ProvState;
use crate::audit::{AuditEvent, Outcome};
use crate::authz::{KeyAttrs, KeyRole, PrincipalAttrs, ProvisioningAction};
use crate::model::{KeyName, Tenant};
use crate::server::conn::Peer;
use crate::server::problem::{Code, Problem};
use crate::server::{Principal, Role};
use crate::service::{Actor, KeyService, ServiceError, SessionRefusal};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use kms_client::wire;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Purge request ids older than the window every this many admissions.
const PURGE_EVERY: u64 = 1024;

/// A request id as the wire allows it (and so safe in a header and a record).
pub(super) fn valid_request_id(s: &str) -> bool {
    (8..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// The request id of a request, if it has a valid one.
pub(super) fn request_id_of(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(wire::REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|s| valid_request_id(s))
}

/// An admitted request: its principal, its id, and the service acting on
/// its behalf (every record the service writes carries the request id).
pub(super) struct Admitted {
    pub(super) st: ProvState,
    pub(super) principal: Principal,
    pub(super) actor: Actor,
    pub(super) request_id: String,
    pub(super) svc: KeyService,
    event: AuditEvent,
}

/// The record of a refusal made here, with what is known of the request.
pub(super) fn base_event(
    peer: &Peer,
    action: &'static str,
    request_id: Option<&str>,
) -> AuditEvent {
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
        tenant: peer
            .principal
            .as_ref()
            .and_then(|p| p.tenant.as_ref().map(ToString::to_string)),
        action: action.to_owned(),
        request_id: request_id.map(str::to_owned),
        source: Some(peer.addr.to_string()),
        details: BTreeMap::from([
            ("listener".to_owned(), "provisioning".to_owned()),
            ("cert_sha256".to_owned(), peer.identity.sha256.clone()),
        ]),
        ..Default::default()
    }
}

/// Record a refusal (best effort: nothing is given out either way) and
/// answer it.
pub(super) async fn refuse(
    st: &ProvState,
    mut event: AuditEvent,
    code: Code,
    detail: String,
) -> Response {
    st.ctx.metrics.refused(code.as_str());
    event.outcome = Some(Outcome::Refused);
    event.reason = Some(detail.clone());
    event
        .details
        .insert("code".into(), code.as_str().to_owned());
    let rid = event.request_id.clone();
    let _ = st.ctx.record(event).await;
    problem(code, detail, rid.as_deref())
}

/// Refuse what a client can repeat at no cost before it is rate-limited
/// (an unmapped certificate, a wrong role, a principal over its rate): the
/// refusal is recorded within the server's refusal budget (60 a minute,
/// the next record counting the ones left out), so a flood cannot flood
/// the trail; every one is counted in the metrics.
async fn refuse_budgeted(
    st: &ProvState,
    mut event: AuditEvent,
    code: Code,
    detail: String,
) -> Response {
    st.ctx.metrics.refused(code.as_str());
    let rid = event.request_id.clone();
    if let Some(suppressed) = st.ctx.refusals.take() {
        event.outcome = Some(Outcome::Refused);
        event.reason = Some(detail.clone());
        event
            .details
            .insert("code".into(), code.as_str().to_owned());
        event
            .details
            .insert("suppressed_since_last".into(), suppressed.to_string());
        let _ = st.ctx.record(event).await;
    }
    problem(code, detail, rid.as_deref())
}

pub(super) fn problem(code: Code, detail: String, request_id: Option<&str>) -> Response {
    let mut res = Problem::new(code, detail)
        .for_request(request_id)
        .into_response();
    if matches!(code, Code::RateLimited | Code::Overloaded) {
        res.headers_mut()
            .insert("retry-after", HeaderValue::from_static("1"));
    }
    res
}

/// Admit a request for `action` (the audit action name), or answer why not.
pub(super) async fn admit(
    st: &ProvState,
    peer: &Peer,
    headers: &HeaderMap,
    action: &'static str,
) -> Result<Admitted, Response> {
    let rid = request_id_of(headers);
    let event = base_event(peer, action, rid);
    let Some(principal) = peer.principal.clone() else {
        return Err(refuse_budgeted(
            st,
            event,
            Code::UnknownCertificate,
            "this client certificate is not mapped to a principal".into(),
        )
        .await);
    };
    if principal.role != Role::Provisioner || principal.tenant.is_none() {
        return Err(refuse_budgeted(
            st,
            event,
            Code::Forbidden,
            format!(
                "only a provisioner bound to a tenant may call the provisioning API; {} is a {}",
                principal.name, principal.role
            ),
        )
        .await);
    }
    if !st.limits.allow(&principal.name) {
        let detail = format!("{} is over its request rate", principal.name);
        return Err(refuse_budgeted(st, event, Code::RateLimited, detail).await);
    }
    let Some(request_id) = rid else {
        return Err(refuse(
            st,
            event,
            Code::InvalidEnvelope,
            format!(
                "header {} must be 8 to 64 characters of A-Z a-z 0-9 - _ . :",
                wire::REQUEST_ID
            ),
        )
        .await);
    };
    let now = OffsetDateTime::now_utc();
    let sent = headers
        .get(wire::TIMESTAMP)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| OffsetDateTime::parse(v, &Rfc3339).ok());
    let Some(sent) = sent else {
        return Err(refuse(
            st,
            event,
            Code::InvalidEnvelope,
            format!("header {} must be an RFC 3339 time", wire::TIMESTAMP),
        )
        .await);
    };
    let skew = (now - sent).whole_seconds();
    if skew.abs() > st.limits.window_seconds {
        return Err(refuse(
            st,
            event,
            Code::StaleRequest,
            format!(
                "the request was sent {skew} s from the server's time; the window is ±{} s",
                st.limits.window_seconds
            ),
        )
        .await);
    }
    let now_unix = now.unix_timestamp();
    match st
        .ctx
        .svc
        .store()
        .remember_request(&principal.name, request_id, now_unix)
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            return Err(refuse(
                st,
                event,
                Code::ReplayedRequest,
                format!(
                    "request id {request_id} was used before by {}",
                    principal.name
                ),
            )
            .await)
        }
        Err(e) => {
            tracing::error!("replay cache: {e}");
            return Err(refuse(
                st,
                event,
                Code::NotReady,
                "the replay cache cannot be read, so no request is served".into(),
            )
            .await);
        }
    }
    if st.admitted.fetch_add(1, Ordering::Relaxed) % PURGE_EVERY == 0 {
        // Ids older than twice the window can never be accepted again
        // anyway (their timestamps are stale); forgetting them bounds the
        // table.
        let store = st.ctx.svc.store().clone();
        let cutoff = now_unix - 2 * st.limits.window_seconds;
        tokio::spawn(async move {
            if let Err(e) = store.forget_requests_before(cutoff).await {
                tracing::warn!("replay cache purge: {e}");
            }
        });
    }
    let actor = match Actor::parse(&principal.name) {
        Ok(a) => a,
        Err(e) => return Err(refuse(st, event, Code::Forbidden, e.to_string()).await),
    };
    let svc = st.ctx.svc.on_behalf(
        Role::Provisioner.as_str(),
        peer.addr.to_string(),
        request_id,
    );
    Ok(Admitted {
        st: st.clone(),
        principal,
        actor,
        request_id: request_id.to_owned(),
        svc,
        event,
    })
}

impl Admitted {
    /// The principal's own tenant.
    pub(super) fn own_tenant(&self) -> Option<&Tenant> {
        self.principal.tenant.as_ref()
    }

    /// The tenant a request names, or the principal's own.
    pub(super) fn tenant(&self, named: Option<&str>) -> Result<Tenant, String> {
        match (named, self.own_tenant()) {
            (Some(t), _) => Tenant::parse(t).map_err(|e| e.to_string()),
            (None, Some(t)) => Ok(t.clone()),
            (None, None) => Err("no tenant".into()),
        }
    }

    /// Refuse, recording why.
    pub(super) async fn refuse(self, code: Code, detail: String) -> Response {
        refuse(&self.st, self.event, code, detail).await
    }

    /// The policy decision for each key of the request, by its role in it.
    /// A key of another tenant is refused whether or not it exists, with
    /// the same answer (no oracle across tenants, KM-4).
    pub(super) async fn authorize(
        self,
        action: ProvisioningAction,
        tenant: &Tenant,
        keys: &[(KeyName, KeyRole)],
    ) -> Result<Admitted, Response> {
        let own = self.own_tenant().map(|t| t.as_str().to_owned());
        let pattrs = PrincipalAttrs {
            name: &self.principal.name,
            role: self.principal.role.as_str(),
            tenant: own.as_deref(),
        };
        for (name, role) in keys {
            let rec = match self.svc.store().find_key(tenant, name).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!("key lookup for authorization: {e}");
                    return Err(self
                        .refuse(Code::NotReady, "the key store does not answer".into())
                        .await);
                }
            };
            let foreign = own.as_deref() != Some(tenant.as_str());
            let decision = match &rec {
                None if !foreign => continue, // the service answers unknown-key
                None => {
                    let attrs = KeyAttrs {
                        tenant: tenant.as_str(),
                        name: name.as_str(),
                        usage: "unknown",
                        algorithm: "unknown",
                        state: "unknown",
                        version: 0,
                        exportable: false,
                        trusted: false,
                    };
                    self.st.authz.authorize(&pattrs, action, &attrs, *role)
                }
                Some(r) => {
                    let v = r.current().or_else(|| r.versions.last());
                    let state = v.map(|v| v.state.as_str()).unwrap_or("destroyed");
                    let attrs = KeyAttrs {
                        tenant: r.tenant.as_str(),
                        name: r.name.as_str(),
                        usage: r.usage.as_str(),
                        algorithm: r.algorithm.as_str(),
                        state,
                        version: v.map(|v| v.version).unwrap_or(0),
                        exportable: r.exportable,
                        trusted: v.is_some_and(|v| v.trusted),
                    };
                    self.st.authz.authorize(&pattrs, action, &attrs, *role)
                }
            };
            if !decision.allowed {
                let (code, detail) = if foreign {
                    (
                        Code::OtherTenant,
                        format!(
                            "{} may not use keys of tenant {tenant}",
                            self.principal.name
                        ),
                    )
                } else {
                    let what = rec.as_ref().map(|r| {
                        let state = r.current().map(|v| v.state.as_str()).unwrap_or("destroyed");
                        format!("a {state} {} key", r.usage)
                    });
                    (
                        Code::NotPermitted,
                        format!(
                            "the policy does not permit {} with {tenant}/{name} ({}) as {}",
                            action.as_str(),
                            what.unwrap_or_default(),
                            role.as_str()
                        ),
                    )
                };
                let mut me = self;
                me.event.details.insert(
                    "policy".into(),
                    format!(
                        "digest {}; determining {}",
                        me.st.authz.digest(),
                        if decision.policies.is_empty() {
                            "none (deny by default)".to_owned()
                        } else {
                            decision.policies.join(",")
                        }
                    ),
                );
                me.event.tenant = Some(tenant.to_string());
                return Err(me.refuse(code, detail).await);
            }
        }
        Ok(self)
    }

    /// The answer for a service error (the service recorded it already).
    pub(super) fn service_error(&self, e: ServiceError) -> Response {
        let (code, detail) = match &e {
            ServiceError::Invalid(m) => (Code::InvalidRequest, m.clone()),
            ServiceError::NotFound(m) => (Code::UnknownKey, format!("no key {m}")),
            ServiceError::Refused(m) => (Code::KeyRefused, m.clone()),
            ServiceError::Session(r) => (
                match r {
                    SessionRefusal::CardCryptogram => Code::CardCryptogram,
                    SessionRefusal::SequenceCounter { .. } => Code::SequenceCounter,
                    SessionRefusal::SdBound { .. } => Code::SdBound,
                },
                r.to_string(),
            ),
            ServiceError::Audit(_) => (
                Code::AuditUnavailable,
                "the act could not be recorded in the audit trail, so its result is withheld"
                    .into(),
            ),
            other => {
                tracing::error!("{} for {}: {other}", self.event.action, self.principal.name);
                (
                    Code::Internal,
                    "the request failed; the server log has the detail".into(),
                )
            }
        };
        self.st.ctx.metrics.refused(code.as_str());
        problem(code, detail, Some(&self.request_id))
    }
}
