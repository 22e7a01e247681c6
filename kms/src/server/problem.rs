//! Errors as RFC 9457 problem details (`application/problem+json`) with a
//! stable `code` member: clients branch on `code`, never on `detail`, whose
//! wording may change.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Every problem the API answers with. The kebab-case names are the wire
/// `code`s: never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// The certificate is valid but maps to no principal.
    UnknownCertificate,
    /// The principal's role may not do this.
    Forbidden,
    /// A query parameter is unknown or malformed.
    InvalidQuery,
    NotFound,
    MethodNotAllowed,
    PayloadTooLarge,
    /// The request did not finish within the server's time limit.
    Timeout,
    /// The token is not logged in or the database does not answer.
    NotReady,
    /// The act's audit record could not be written, so its result is withheld.
    AuditUnavailable,
    /// Anything else; the detail is in the server's log, not in the answer.
    Internal,
    // The provisioning API's codes.
    /// The body is not the endpoint's JSON, or a value in it is invalid.
    InvalidRequest,
    /// The kms-request-id or kms-timestamp header is missing or malformed.
    InvalidEnvelope,
    /// The timestamp is outside the server's window (REPLAY-1).
    StaleRequest,
    /// This principal used this request id before (REPLAY-1).
    ReplayedRequest,
    /// The key belongs to another tenant (KM-4).
    OtherTenant,
    /// The authorization policy does not permit this on this key.
    NotPermitted,
    /// The tenant has no such key.
    UnknownKey,
    /// The key's state, cryptoperiod or attributes do not allow this.
    KeyRefused,
    /// The card cryptogram does not verify.
    CardCryptogram,
    /// SCP02's sequence counter did not increase (REPLAY-1).
    SequenceCounter,
    /// The Security Domain holds another card's keys (TSM-DATA-1).
    SdBound,
    /// This principal is over its request rate.
    RateLimited,
    /// This node serves as many requests as it can; retry shortly.
    Overloaded,
    /// The KMS is sealed: custodians must present their unseal shares
    /// before anything is served (issue 5, KM-2).
    Sealed,
    /// A person's login was refused: wrong PIN, locked, outside their
    /// window, initial PIN not changed (issue 5, AUTH-PIN-LOCK, TSM-AC-5).
    Unauthenticated,
    /// Dual control said no (own request, already approved, expired, digest
    /// of another operation, signature or certificate wrong, role).
    Refused,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::UnknownCertificate => "unknown-certificate",
            Code::Forbidden => "forbidden",
            Code::InvalidQuery => "invalid-query",
            Code::NotFound => "not-found",
            Code::MethodNotAllowed => "method-not-allowed",
            Code::PayloadTooLarge => "payload-too-large",
            Code::Timeout => "timeout",
            Code::NotReady => "not-ready",
            Code::AuditUnavailable => "audit-unavailable",
            Code::Internal => "internal",
            Code::InvalidRequest => "invalid-request",
            Code::InvalidEnvelope => "invalid-envelope",
            Code::StaleRequest => "stale-request",
            Code::ReplayedRequest => "replayed-request",
            Code::OtherTenant => "other-tenant",
            Code::NotPermitted => "not-permitted",
            Code::UnknownKey => "unknown-key",
            Code::KeyRefused => "key-refused",
            Code::CardCryptogram => "card-cryptogram",
            Code::SequenceCounter => "sequence-counter",
            Code::SdBound => "sd-bound",
            Code::RateLimited => "rate-limited",
            Code::Overloaded => "overloaded",
            Code::Sealed => "sealed",
            Code::Unauthenticated => "unauthenticated",
            Code::Refused => "refused",
        }
    }

    /// Every code, for the OpenAPI document and its tests.
    pub const ALL: [Code; 26] = [
        Code::UnknownCertificate,
        Code::Forbidden,
        Code::InvalidQuery,
        Code::NotFound,
        Code::MethodNotAllowed,
        Code::PayloadTooLarge,
        Code::Timeout,
        Code::NotReady,
        Code::AuditUnavailable,
        Code::Internal,
        Code::InvalidRequest,
        Code::InvalidEnvelope,
        Code::StaleRequest,
        Code::ReplayedRequest,
        Code::OtherTenant,
        Code::NotPermitted,
        Code::UnknownKey,
        Code::KeyRefused,
        Code::CardCryptogram,
        Code::SequenceCounter,
        Code::SdBound,
        Code::RateLimited,
        Code::Overloaded,
        Code::Sealed,
        Code::Unauthenticated,
        Code::Refused,
    ];

    pub fn status(self) -> StatusCode {
        match self {
            Code::UnknownCertificate | Code::Forbidden => StatusCode::FORBIDDEN,
            Code::OtherTenant | Code::NotPermitted => StatusCode::FORBIDDEN,
            Code::InvalidQuery | Code::InvalidRequest | Code::InvalidEnvelope => {
                StatusCode::BAD_REQUEST
            }
            Code::StaleRequest | Code::ReplayedRequest => StatusCode::CONFLICT,
            Code::UnknownKey => StatusCode::NOT_FOUND,
            Code::KeyRefused | Code::SequenceCounter | Code::SdBound => StatusCode::CONFLICT,
            Code::CardCryptogram => StatusCode::UNPROCESSABLE_ENTITY,
            Code::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Code::Overloaded | Code::Sealed => StatusCode::SERVICE_UNAVAILABLE,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::Refused => StatusCode::CONFLICT,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Code::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Code::Timeout | Code::NotReady | Code::AuditUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn title(self) -> &'static str {
        match self {
            Code::UnknownCertificate => "The client certificate is not mapped to a principal",
            Code::Forbidden => "The principal's role does not allow this",
            Code::InvalidQuery => "The query is not valid",
            Code::NotFound => "No such resource",
            Code::MethodNotAllowed => "Method not allowed on this resource",
            Code::PayloadTooLarge => "The request body is too large",
            Code::Timeout => "The request took too long",
            Code::NotReady => "The KMS is not ready",
            Code::AuditUnavailable => "The audit trail could not record this act",
            Code::Internal => "Internal error",
            Code::InvalidRequest => "The request is not valid",
            Code::InvalidEnvelope => "The request id or timestamp header is missing or malformed",
            Code::StaleRequest => "The request's timestamp is outside the accepted window",
            Code::ReplayedRequest => "This request id was used before",
            Code::OtherTenant => "The key belongs to another tenant",
            Code::NotPermitted => "The authorization policy does not permit this",
            Code::UnknownKey => "No such key",
            Code::KeyRefused => "The key may not be used for this",
            Code::CardCryptogram => "The card cryptogram does not verify",
            Code::SequenceCounter => "The sequence counter did not increase",
            Code::SdBound => "The Security Domain is bound to another card",
            Code::RateLimited => "Too many requests from this principal",
            Code::Overloaded => "The KMS is at capacity",
            Code::Sealed => "The KMS is sealed until custodians present their unseal shares",
            Code::Unauthenticated => "The person's login was refused",
            Code::Refused => "Dual control refused this act",
        }
    }
}

/// One problem document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// `urn:kms:problem:<code>`: a stable identifier, not a page to fetch.
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    pub code: String,
    /// The caller's kms-request-id, on the provisioning listener.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl Problem {
    pub fn new(code: Code, detail: impl Into<String>) -> Problem {
        Problem {
            type_uri: format!("urn:kms:problem:{}", code.as_str()),
            title: code.title().to_owned(),
            status: code.status().as_u16(),
            detail: detail.into(),
            code: code.as_str().to_owned(),
            request_id: None,
        }
    }

    pub fn for_request(mut self, id: Option<&str>) -> Problem {
        self.request_id = id.map(str::to_owned);
        self
    }
}

pub const PROBLEM_JSON: &str = "application/problem+json";

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        // Serializing strings and a number cannot fail; the fallback keeps
        // the answer a valid problem document all the same.
        let body = serde_json::to_vec(&self).unwrap_or_else(|_| {
            br#"{"type":"urn:kms:problem:internal","title":"Internal error","status":500,"detail":"","code":"internal"}"#.to_vec()
        });
        let mut res = (status, body).into_response();
        res.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable_and_match_their_status() {
        let p = Problem::new(Code::Forbidden, "no");
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["type"], "urn:kms:problem:forbidden");
        assert_eq!(v["status"], 403);
        assert_eq!(v["code"], "forbidden");
        assert_eq!(v["detail"], "no");
        let res = Problem::new(Code::AuditUnavailable, "x").into_response();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
    }
}
