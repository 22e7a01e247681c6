//! The provisioning API's OpenAPI 3.1 document, generated from the wire
//! types the server and the reference client share (`kms_client::wire`),
//! served at `GET /v1/openapi.json` and checked into `docs/openapi.json`
//! (a test fails when the two differ, so the document cannot go stale).
#![allow(dead_code)] // the path functions exist only to carry the attributes

use crate::server::problem::Code;
use kms_client::wire;
use utoipa::OpenApi;

const HEADERS_DOC: &str =
    "Every call but /v1/health, /v1/ready, /v1/signing-key and /v1/openapi.json \
sends `kms-request-id` (8-64 characters of A-Z a-z 0-9 - _ . :, unique per principal for ever) and \
`kms-timestamp` (RFC 3339). Every answer, errors included, carries `kms-request-id`, \
`kms-signature` (upper-case hex r||s, ECDSA P-256 SHA-256, made in the HSM) over \
`\"KMS-RESPONSE-V1\\n\" + request id + \"\\n\" + body`, and `kms-signature-key` (SHA-256 of the \
signing key's SEC1 point; the key is at /v1/signing-key). The client authenticates with a TLS \
client certificate mapped to a provisioner of one tenant.";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "KMS provisioning API",
        version = "1",
        description = "What an OTA provisioner needs for one card session: SCP02/SCP03 session keys and EMV card keys, derived in the HSM and returned only wrapped under the caller's trusted transport KEK. Mutual TLS only."
    ),
    paths(
        scp02_session,
        scp03_session,
        emv_card_keys,
        list_keys,
        show_key,
        signing_key,
        health,
        ready
    ),
    components(schemas(
        wire::Scp02SessionRequest,
        wire::Scp02SessionResponse,
        wire::Scp03SessionRequest,
        wire::Scp03SessionResponse,
        wire::EmvCardKeysRequest,
        wire::EmvCardKeysResponse,
        wire::KeyMetadata,
        wire::KeyList,
        wire::SigningKey,
        wire::Problem,
        wire::WrappedKey,
        wire::Wrapping,
        wire::Scp02Diversification,
        wire::Scp03Diversification
    )),
    tags(
        (name = "sessions", description = "GlobalPlatform secure-channel session keys"),
        (name = "card-keys", description = "EMV ICC master keys, one card per Security Domain"),
        (name = "keys", description = "Key metadata (never values)"),
        (name = "service", description = "Health, readiness, the response-signing key")
    )
)]
struct ApiDoc;

#[utoipa::path(post, path = "/v1/sessions/scp02", tag = "sessions",
    description = HEADERS_DOC,
    params(
        ("kms-request-id" = String, Header, description = "Unique per principal"),
        ("kms-timestamp" = String, Header, description = "RFC 3339, within the server's window")
    ),
    request_body = wire::Scp02SessionRequest,
    responses(
        (status = 200, description = "The card cryptogram verified; session keys wrapped under the transport KEK", body = wire::Scp02SessionResponse),
        (status = 400, description = "invalid-request, invalid-envelope", body = wire::Problem, content_type = "application/problem+json"),
        (status = 403, description = "unknown-certificate, forbidden, other-tenant, not-permitted", body = wire::Problem, content_type = "application/problem+json"),
        (status = 404, description = "unknown-key", body = wire::Problem, content_type = "application/problem+json"),
        (status = 409, description = "replayed-request, stale-request, sequence-counter, key-refused", body = wire::Problem, content_type = "application/problem+json"),
        (status = 422, description = "card-cryptogram", body = wire::Problem, content_type = "application/problem+json"),
        (status = 429, description = "rate-limited", body = wire::Problem, content_type = "application/problem+json"),
        (status = 503, description = "overloaded, not-ready, audit-unavailable, timeout", body = wire::Problem, content_type = "application/problem+json")
    )
)]
fn scp02_session() {}

#[utoipa::path(post, path = "/v1/sessions/scp03", tag = "sessions",
    description = HEADERS_DOC,
    params(
        ("kms-request-id" = String, Header, description = "Unique per principal"),
        ("kms-timestamp" = String, Header, description = "RFC 3339, within the server's window")
    ),
    request_body = wire::Scp03SessionRequest,
    responses(
        (status = 200, description = "The card cryptogram verified; session keys and the static DEK wrapped under the transport KEK", body = wire::Scp03SessionResponse),
        (status = 400, description = "invalid-request, invalid-envelope", body = wire::Problem, content_type = "application/problem+json"),
        (status = 403, description = "unknown-certificate, forbidden, other-tenant, not-permitted", body = wire::Problem, content_type = "application/problem+json"),
        (status = 404, description = "unknown-key", body = wire::Problem, content_type = "application/problem+json"),
        (status = 409, description = "replayed-request, stale-request, key-refused", body = wire::Problem, content_type = "application/problem+json"),
        (status = 422, description = "card-cryptogram", body = wire::Problem, content_type = "application/problem+json"),
        (status = 429, description = "rate-limited", body = wire::Problem, content_type = "application/problem+json"),
        (status = 503, description = "overloaded, not-ready, audit-unavailable, timeout", body = wire::Problem, content_type = "application/problem+json")
    )
)]
fn scp03_session() {}

#[utoipa::path(post, path = "/v1/card-keys/emv", tag = "card-keys",
    description = HEADERS_DOC,
    params(
        ("kms-request-id" = String, Header, description = "Unique per principal"),
        ("kms-timestamp" = String, Header, description = "RFC 3339, within the server's window")
    ),
    request_body = wire::EmvCardKeysRequest,
    responses(
        (status = 200, description = "ICC master keys (AC, SMI, SMC) by EMV Option A, wrapped under the transport KEK", body = wire::EmvCardKeysResponse),
        (status = 400, description = "invalid-request, invalid-envelope", body = wire::Problem, content_type = "application/problem+json"),
        (status = 403, description = "unknown-certificate, forbidden, other-tenant, not-permitted", body = wire::Problem, content_type = "application/problem+json"),
        (status = 404, description = "unknown-key", body = wire::Problem, content_type = "application/problem+json"),
        (status = 409, description = "replayed-request, stale-request, sd-bound, key-refused", body = wire::Problem, content_type = "application/problem+json"),
        (status = 429, description = "rate-limited", body = wire::Problem, content_type = "application/problem+json"),
        (status = 503, description = "overloaded, not-ready, audit-unavailable, timeout", body = wire::Problem, content_type = "application/problem+json")
    )
)]
fn emv_card_keys() {}

#[utoipa::path(get, path = "/v1/keys", tag = "keys",
    description = HEADERS_DOC,
    params(
        ("kms-request-id" = String, Header, description = "Unique per principal"),
        ("kms-timestamp" = String, Header, description = "RFC 3339, within the server's window")
    ),
    responses(
        (status = 200, description = "The caller's tenant's keys that the policy lets it see", body = wire::KeyList),
        (status = 403, description = "unknown-certificate, forbidden", body = wire::Problem, content_type = "application/problem+json"),
        (status = 409, description = "replayed-request, stale-request", body = wire::Problem, content_type = "application/problem+json")
    )
)]
fn list_keys() {}

#[utoipa::path(get, path = "/v1/keys/{name}", tag = "keys",
    description = HEADERS_DOC,
    params(
        ("name" = String, Path, description = "A key of the caller's tenant"),
        ("kms-request-id" = String, Header, description = "Unique per principal"),
        ("kms-timestamp" = String, Header, description = "RFC 3339, within the server's window")
    ),
    responses(
        (status = 200, description = "The key's metadata", body = wire::KeyMetadata),
        (status = 403, description = "not-permitted (destroyed keys)", body = wire::Problem, content_type = "application/problem+json"),
        (status = 404, description = "unknown-key", body = wire::Problem, content_type = "application/problem+json")
    )
)]
fn show_key() {}

#[utoipa::path(get, path = "/v1/signing-key", tag = "service",
    responses((status = 200, description = "The response-signing public key", body = wire::SigningKey))
)]
fn signing_key() {}

#[utoipa::path(get, path = "/v1/health", tag = "service",
    responses((status = 200, description = "The process answers"))
)]
fn health() {}

#[utoipa::path(get, path = "/v1/ready", tag = "service",
    responses(
        (status = 200, description = "The token and the database answer"),
        (status = 503, description = "not-ready", body = wire::Problem, content_type = "application/problem+json")
    )
)]
fn ready() {}

/// The document, pretty-printed, with the list of problem codes.
pub fn document() -> String {
    let mut doc = ApiDoc::openapi();
    let codes: Vec<String> = Code::ALL
        .iter()
        .map(|c| format!("`{}` ({})", c.as_str(), c.status().as_u16()))
        .collect();
    doc.info.description = Some(format!(
        "{}\n\n{HEADERS_DOC}\n\nErrors are RFC 9457 problem details (application/problem+json) with a stable `code`: {}.",
        doc.info.description.unwrap_or_default(),
        codes.join(", ")
    ));
    doc.to_pretty_json()
        .map(|mut s| {
            s.push('\n');
            s
        })
        .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}
