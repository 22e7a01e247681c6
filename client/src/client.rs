//! The reference client of the provisioning API: what a provisioning service
//! can use as it is, or copy.
//!
//! - **Transport.** One keep-alive HTTP/1.1 connection over mutual TLS
//!   (tokio-rustls with ring; the KMS's CA is the only root; the caller's
//!   client certificate). A connection the server closed while idle is
//!   reopened transparently, once per call, provided the request had not yet
//!   been sent; a request that may have reached the server is never resent.
//! - **One request at a time.** Every call takes `&mut self`. A caller that
//!   wants parallelism opens several [`ProvisioningClient`]s (each is `Send`,
//!   so each can live in its own task); they share nothing.
//! - **Every request** carries a fresh request id (UUID v4) and the current
//!   time ([`wire::REQUEST_ID`], [`wire::TIMESTAMP`]).
//! - **Every response**, errors included, is checked before it is handed back
//!   ([`ResponseVerifier::check`]): the echoed request id must be the one
//!   sent, the signing key id must be the pinned key's, and the ECDSA P-256
//!   signature must verify over [`wire::signed_message`].
//!
//! A refused client certificate surfaces as [`ClientError::Tls`] with the
//! server's alert. In TLS 1.3 the client finishes its side of the handshake
//! before the server has checked the certificate, so the alert usually
//! arrives once the connection is used, not at connect; the client looks for
//! it in the request's error and in the connection task's.

use crate::wire::{
    self, EmvCardKeysRequest, EmvCardKeysResponse, KeyList, KeyMetadata, Problem,
    Scp02SessionRequest, Scp02SessionResponse, Scp03SessionRequest, Scp03SessionResponse,
    SigningKey,
};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, ACCEPT, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::RootCertStore;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

/// The only response-signing algorithm the KMS uses.
pub const SIGNING_ALGORITHM: &str = "ecdsa-p256-sha256";

const SIGNING_KEY_PATH: &str = "/v1/signing-key";
const JSON: &str = "application/json";

/// How long to wait for a failed connection's task to report why it failed
/// (the TLS alert) before giving the error without it.
const FAILURE_GRACE: Duration = Duration::from_secs(1);

/// Where the KMS is and what to trust.
#[derive(Clone)]
pub struct ClientConfig {
    /// The KMS's provisioning listener.
    pub server: SocketAddr,
    /// The name the server's certificate must carry (DNS name or IP address).
    pub server_name: String,
    /// The CA(s) that issued the server's certificate, PEM: the only roots.
    pub ca_pem: Vec<u8>,
    /// This client's certificate chain, PEM, leaf first. Set both this and
    /// `key_pem`, or neither (the server then refuses the handshake).
    pub cert_chain_pem: Option<Vec<u8>>,
    /// This client's private key, PEM (PKCS#8, SEC1 or PKCS#1).
    pub key_pem: Option<Vec<u8>>,
    /// The KMS's response-signing key, pinned. `None` fetches it once from
    /// `GET /v1/signing-key` at connect and pins it for the client's life:
    /// trust on first use, which only protects later responses from being
    /// forged if the first one was not. Production should pin the key (get
    /// it from the key ceremony's record, or log
    /// [`ProvisioningClient::signing_key_id`] and compare it out of band).
    pub signing_key: Option<VerifyingKey>,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("server", &self.server)
            .field("server_name", &self.server_name)
            .field("client_certificate", &self.cert_chain_pem.is_some())
            .field(
                "signing_key",
                &self.signing_key.as_ref().map(verifying_key_id),
            )
            .finish_non_exhaustive()
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The TLS layer failed; for a refused client certificate, the alert the
    /// server sent (`AlertReceived(CertificateRequired | UnknownCA |
    /// CertificateExpired | CertificateRevoked | ...)`).
    #[error("TLS: {0}")]
    Tls(rustls::Error),
    /// Connecting failed, or the connection broke without a TLS reason.
    #[error("I/O: {0}")]
    Io(std::io::Error),
    /// HTTP-level failure, or a non-success answer that is not a problem
    /// document.
    #[error("HTTP: {0}")]
    Http(String),
    /// The KMS refused the request: its (signed, verified) problem document.
    /// Boxed to keep `Result<_, ClientError>` small.
    #[error("{}", describe_problem(.0))]
    Problem(Box<Problem>),
    /// The response's signature is missing or does not check out: the
    /// response must not be used.
    #[error("bad response signature: {0}")]
    BadSignature(String),
    /// The (verified) response body is not what the API promises.
    #[error("cannot decode the response: {0}")]
    Decode(String),
    /// The configuration is unusable (PEM, server name, key).
    #[error("configuration: {0}")]
    Config(String),
}

fn describe_problem(p: &Problem) -> String {
    let mut s = format!("{} {}: {}", p.status, p.code, p.title);
    if let Some(d) = &p.detail {
        s.push_str(": ");
        s.push_str(d);
    }
    s
}

/// A request header the client normally fills in itself.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AutoHeader {
    /// A fresh value: a new UUID v4 request id, the current time.
    #[default]
    Generate,
    /// Exactly this value (a replayed request id, a stale timestamp, ...).
    Set(String),
    /// No such header at all.
    Omit,
}

/// A request as [`ProvisioningClient::send`] sends it: everything a test
/// may want to get wrong on purpose.
#[derive(Debug, Clone)]
pub struct RawRequest {
    pub method: Method,
    /// Origin-form target: `/v1/keys`, `/v1/keys/name?x=y`.
    pub path: String,
    pub body: Vec<u8>,
    /// `content-type`, when there is one.
    pub content_type: Option<String>,
    pub request_id: AutoHeader,
    pub timestamp: AutoHeader,
    /// Further headers, sent as given.
    pub headers: Vec<(String, String)>,
}

impl RawRequest {
    /// `GET path`, with a fresh request id and timestamp.
    pub fn get(path: &str) -> RawRequest {
        RawRequest {
            method: Method::GET,
            path: path.to_owned(),
            body: Vec::new(),
            content_type: None,
            request_id: AutoHeader::Generate,
            timestamp: AutoHeader::Generate,
            headers: Vec::new(),
        }
    }

    /// `POST path` with a JSON body given as bytes (which need not be valid
    /// JSON), with a fresh request id and timestamp.
    pub fn post_json(path: &str, body: impl Into<Vec<u8>>) -> RawRequest {
        RawRequest {
            method: Method::POST,
            body: body.into(),
            content_type: Some(JSON.to_owned()),
            ..RawRequest::get(path)
        }
    }

    /// Send this request id instead of a fresh one.
    pub fn request_id(mut self, id: impl Into<String>) -> RawRequest {
        self.request_id = AutoHeader::Set(id.into());
        self
    }

    /// Send no request id.
    pub fn without_request_id(mut self) -> RawRequest {
        self.request_id = AutoHeader::Omit;
        self
    }

    /// Send this timestamp header value verbatim.
    pub fn timestamp(mut self, value: impl Into<String>) -> RawRequest {
        self.timestamp = AutoHeader::Set(value.into());
        self
    }

    /// Send `at` (RFC 3339, UTC) as the timestamp: a stale or future one.
    pub fn timestamp_at(self, at: OffsetDateTime) -> Result<RawRequest, ClientError> {
        Ok(self.timestamp(rfc3339(at)?))
    }

    /// Send no timestamp.
    pub fn without_timestamp(mut self) -> RawRequest {
        self.timestamp = AutoHeader::Omit;
        self
    }

    /// Add a header.
    pub fn header(mut self, name: &str, value: &str) -> RawRequest {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// What the response signature check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureCheck {
    /// Signed by the pinned key, over this request's id and this body.
    Valid,
    /// No `kms-signature` header.
    Missing,
    /// Present but wrong, and why.
    Invalid(String),
}

impl SignatureCheck {
    pub fn is_valid(&self) -> bool {
        matches!(self, SignatureCheck::Valid)
    }
}

/// An answer, whatever it is: [`ProvisioningClient::send`] does not fail on
/// a bad signature or an error status; `signature` says what the check
/// found.
#[derive(Debug, Clone)]
pub struct RawReply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// The request id that was sent (`None` when omitted).
    pub request_id: Option<String>,
    pub signature: SignatureCheck,
}

impl RawReply {
    /// A header's value, if present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn content_type(&self) -> Option<&str> {
        self.header(CONTENT_TYPE.as_str())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body decoded as `T`, whatever the status or signature.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ClientError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| ClientError::Decode(format!("{e}: {}", snippet(&self.body))))
    }

    /// The problem document, when the body is one.
    pub fn problem(&self) -> Option<Problem> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// Checks responses against a pinned response-signing key (INT-1).
#[derive(Debug, Clone)]
pub struct ResponseVerifier {
    key: VerifyingKey,
    key_id: String,
}

impl ResponseVerifier {
    pub fn new(key: VerifyingKey) -> ResponseVerifier {
        let key_id = verifying_key_id(&key);
        ResponseVerifier { key, key_id }
    }

    /// From `GET /v1/signing-key`'s answer: the algorithm must be
    /// [`SIGNING_ALGORITHM`], the PEM a P-256 public key, and the stated key
    /// id that key's.
    pub fn from_signing_key(k: &SigningKey) -> Result<ResponseVerifier, ClientError> {
        if k.algorithm != SIGNING_ALGORITHM {
            return Err(ClientError::Decode(format!(
                "signing key algorithm {:?}, expected {SIGNING_ALGORITHM:?}",
                k.algorithm
            )));
        }
        let key = VerifyingKey::from_public_key_pem(&k.public_key_pem)
            .map_err(|e| ClientError::Decode(format!("signing key PEM: {e}")))?;
        let v = ResponseVerifier::new(key);
        if !v.key_id.eq_ignore_ascii_case(&k.key_id) {
            return Err(ClientError::Decode(format!(
                "signing key stated as {}, but its public key's id is {}",
                k.key_id, v.key_id
            )));
        }
        Ok(v)
    }

    pub fn key(&self) -> &VerifyingKey {
        &self.key
    }

    /// [`wire::key_id`] of the pinned key.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Check a response to a request sent with `sent_request_id` (`None`:
    /// sent without one): the echoed request id must be the one sent, the
    /// signing key id the pinned key's, and the signature (upper-case hex of
    /// r || s) must verify over [`wire::signed_message`] of the sent id and
    /// the exact body. Each of these headers must appear at most once. A sent
    /// id the wire does not allow counts as none (the server refuses it, and
    /// its refusal is signed over the empty id).
    pub fn check(
        &self,
        sent_request_id: Option<&str>,
        headers: &HeaderMap,
        body: &[u8],
    ) -> SignatureCheck {
        match self.try_check(sent_request_id, headers, body) {
            Ok(check) => check,
            Err(reason) => SignatureCheck::Invalid(reason),
        }
    }

    fn try_check(
        &self,
        sent_request_id: Option<&str>,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<SignatureCheck, String> {
        let Some(signature) = single_header(headers, wire::SIGNATURE)? else {
            return Ok(SignatureCheck::Missing);
        };
        let key_id = single_header(headers, wire::SIGNATURE_KEY)?
            .ok_or_else(|| format!("{} without {}", wire::SIGNATURE, wire::SIGNATURE_KEY))?;
        if !key_id.eq_ignore_ascii_case(&self.key_id) {
            return Err(format!(
                "signed by key {key_id}, but the pinned key is {}",
                self.key_id
            ));
        }
        // The server takes an invalid request id for none: it refuses the
        // request, and signs its refusal over (and echoes) the empty id.
        let sent = sent_request_id
            .filter(|id| valid_request_id(id))
            .unwrap_or("");
        match single_header(headers, wire::REQUEST_ID)? {
            Some(echoed) if echoed != sent => {
                return Err(format!("request id {sent:?} echoed as {echoed:?}"));
            }
            None if !sent.is_empty() => {
                return Err(format!("request id {sent:?} not echoed"));
            }
            _ => {}
        }
        let bytes = hex::decode(signature.trim())
            .map_err(|e| format!("{} is not hex: {e}", wire::SIGNATURE))?;
        let signature = Signature::from_slice(&bytes).map_err(|_| {
            format!(
                "{} is not a 64-byte r || s signature ({} bytes)",
                wire::SIGNATURE,
                bytes.len()
            )
        })?;
        self.key
            .verify(&wire::signed_message(sent, body), &signature)
            .map_err(|_| {
                "the signature does not verify over this request id and body".to_owned()
            })?;
        Ok(SignatureCheck::Valid)
    }
}

/// A request id as the wire allows it: 8 to 64 characters of
/// `A-Z a-z 0-9 - _ . :` ([`wire::REQUEST_ID`]).
fn valid_request_id(id: &str) -> bool {
    (8..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// A header that may appear at most once, as text.
fn single_header<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, String> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(format!("more than one {name} header"));
    }
    first
        .to_str()
        .map(Some)
        .map_err(|_| format!("{name} is not visible ASCII"))
}

/// [`wire::key_id`] of a P-256 public key (its SEC1 uncompressed point).
pub fn verifying_key_id(key: &VerifyingKey) -> String {
    wire::key_id(key.to_encoded_point(false).as_bytes())
}

/// A fresh request id: a UUID v4.
pub fn new_request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// `at` as the timestamp header wants it: RFC 3339, UTC, whole seconds.
pub fn rfc3339(at: OffsetDateTime) -> Result<String, ClientError> {
    at.to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .map_err(|e| ClientError::Http(format!("timestamp: {e}")))?
        .format(&Rfc3339)
        .map_err(|e| ClientError::Http(format!("timestamp: {e}")))
}

/// A client of the provisioning API over one keep-alive mTLS connection.
/// See the module documentation for what it checks.
pub struct ProvisioningClient {
    conn: Connection,
    verifier: ResponseVerifier,
}

impl std::fmt::Debug for ProvisioningClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProvisioningClient")
            .field("server", &self.conn.transport.addr)
            .field("signing_key_id", &self.verifier.key_id)
            .finish_non_exhaustive()
    }
}

impl ProvisioningClient {
    /// Connect (TCP, TLS handshake) and, when `cfg.signing_key` is `None`,
    /// fetch and pin the response-signing key (trust on first use).
    ///
    /// With TLS 1.3 a refused client certificate is usually only reported on
    /// the first request, not here.
    pub async fn connect(cfg: ClientConfig) -> Result<ProvisioningClient, ClientError> {
        let transport = Transport::new(&cfg)?;
        let mut conn = Connection {
            link: Some(Link::open(&transport).await?),
            transport,
        };
        let verifier = match cfg.signing_key {
            Some(key) => ResponseVerifier::new(key),
            None => Self::first_use(&mut conn).await?,
        };
        Ok(ProvisioningClient { conn, verifier })
    }

    /// Fetch the signing key and trust it. If its answer is signed, the
    /// signature must verify under the key it carries.
    async fn first_use(conn: &mut Connection) -> Result<ResponseVerifier, ClientError> {
        let (request_id, request) =
            build_request(&conn.transport.host, RawRequest::get(SIGNING_KEY_PATH))?;
        let (status, headers, body) = conn.exchange(request).await?;
        if !status.is_success() {
            return Err(refusal(status, &body));
        }
        let key: SigningKey = decode(&body)?;
        let verifier = ResponseVerifier::from_signing_key(&key)?;
        match verifier.check(request_id.as_deref(), &headers, &body) {
            SignatureCheck::Valid | SignatureCheck::Missing => Ok(verifier),
            SignatureCheck::Invalid(reason) => Err(ClientError::BadSignature(reason)),
        }
    }

    /// The pinned response-signing key.
    pub fn verifying_key(&self) -> &VerifyingKey {
        self.verifier.key()
    }

    /// [`wire::key_id`] of the pinned response-signing key: log it, and
    /// compare it out of band when it was pinned on first use.
    pub fn signing_key_id(&self) -> &str {
        self.verifier.key_id()
    }

    /// `POST /v1/sessions/scp02`.
    pub async fn scp02_session(
        &mut self,
        req: &Scp02SessionRequest,
    ) -> Result<Scp02SessionResponse, ClientError> {
        self.post("/v1/sessions/scp02", req).await
    }

    /// `POST /v1/sessions/scp03`.
    pub async fn scp03_session(
        &mut self,
        req: &Scp03SessionRequest,
    ) -> Result<Scp03SessionResponse, ClientError> {
        self.post("/v1/sessions/scp03", req).await
    }

    /// `POST /v1/card-keys/emv`.
    pub async fn emv_card_keys(
        &mut self,
        req: &EmvCardKeysRequest,
    ) -> Result<EmvCardKeysResponse, ClientError> {
        self.post("/v1/card-keys/emv", req).await
    }

    /// `GET /v1/keys`: the caller's keys' metadata.
    pub async fn keys(&mut self) -> Result<KeyList, ClientError> {
        self.typed(RawRequest::get("/v1/keys"), true).await
    }

    /// `GET /v1/keys/{name}`.
    pub async fn key(&mut self, name: &str) -> Result<KeyMetadata, ClientError> {
        let path = format!("/v1/keys/{}", path_segment(name));
        self.typed(RawRequest::get(&path), true).await
    }

    /// `GET /v1/signing-key`. Its answer may be unsigned (it is how a key is
    /// first learnt); if signed, the signature must verify under the pinned
    /// key. A rotated key therefore fails here with
    /// [`ClientError::BadSignature`]; read it with [`Self::send`] to see it.
    pub async fn signing_key(&mut self) -> Result<SigningKey, ClientError> {
        self.typed(RawRequest::get(SIGNING_KEY_PATH), false).await
    }

    /// Send `req` as given and return the answer whatever it is, with the
    /// result of the signature check. Fails only when no answer was had.
    pub async fn send(&mut self, req: RawRequest) -> Result<RawReply, ClientError> {
        let (request_id, request) = build_request(&self.conn.transport.host, req)?;
        let (status, headers, body) = self.conn.exchange(request).await?;
        let signature = self.verifier.check(request_id.as_deref(), &headers, &body);
        Ok(RawReply {
            status,
            headers,
            body,
            request_id,
            signature,
        })
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &mut self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(body)
            .map_err(|e| ClientError::Http(format!("encoding the request: {e}")))?;
        self.typed(RawRequest::post_json(path, body), true).await
    }

    /// Send, verify, decode: `T` on success, the problem otherwise.
    async fn typed<T: DeserializeOwned>(
        &mut self,
        req: RawRequest,
        signature_required: bool,
    ) -> Result<T, ClientError> {
        let reply = self.send(req).await?;
        match reply.signature {
            SignatureCheck::Valid => {}
            SignatureCheck::Missing if !signature_required => {}
            SignatureCheck::Missing => {
                return Err(ClientError::BadSignature(format!(
                    "the {} answer is not signed",
                    reply.status
                )))
            }
            SignatureCheck::Invalid(reason) => return Err(ClientError::BadSignature(reason)),
        }
        if !reply.status.is_success() {
            return Err(refusal(reply.status, &reply.body));
        }
        decode(&reply.body)
    }
}

/// A non-success answer as an error: its problem document, if it is one.
fn refusal(status: StatusCode, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<Problem>(body) {
        Ok(p) => ClientError::Problem(Box::new(p)),
        Err(_) => ClientError::Http(format!("{status}: {}", snippet(body))),
    }
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(body).map_err(|e| ClientError::Decode(format!("{e}: {}", snippet(body))))
}

/// The start of a body, for error messages.
fn snippet(body: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX)]).into_owned();
    if body.len() > MAX {
        format!("{text}...")
    } else {
        text
    }
}

/// Percent-encode a path segment (everything but RFC 3986 unreserved).
fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The HTTP request for `req`, and the request id it carries.
fn build_request(
    host: &HeaderValue,
    req: RawRequest,
) -> Result<(Option<String>, Request<Full<Bytes>>), ClientError> {
    let request_id = match req.request_id {
        AutoHeader::Generate => Some(new_request_id()),
        AutoHeader::Set(id) => Some(id),
        AutoHeader::Omit => None,
    };
    let timestamp = match req.timestamp {
        AutoHeader::Generate => Some(rfc3339(OffsetDateTime::now_utc())?),
        AutoHeader::Set(t) => Some(t),
        AutoHeader::Omit => None,
    };
    let mut builder = Request::builder()
        .method(req.method)
        .uri(req.path.as_str())
        .header(HOST, host.clone())
        .header(ACCEPT, "application/json, application/problem+json");
    if let Some(ct) = &req.content_type {
        builder = builder.header(CONTENT_TYPE, ct.as_str());
    }
    if let Some(id) = &request_id {
        builder = builder.header(wire::REQUEST_ID, id.as_str());
    }
    if let Some(t) = &timestamp {
        builder = builder.header(wire::TIMESTAMP, t.as_str());
    }
    for (name, value) in &req.headers {
        let name = HeaderName::try_from(name.as_str())
            .map_err(|e| ClientError::Http(format!("header name {name:?}: {e}")))?;
        builder = builder.header(name, value.as_str());
    }
    let request = builder
        .body(Full::new(Bytes::from(req.body)))
        .map_err(|e| ClientError::Http(format!("request: {e}")))?;
    Ok((request_id, request))
}

/// How to reach the server: address, TLS, `host` header.
struct Transport {
    addr: SocketAddr,
    server_name: ServerName<'static>,
    host: HeaderValue,
    tls: TlsConnector,
}

impl Transport {
    fn new(cfg: &ClientConfig) -> Result<Transport, ClientError> {
        let server_name = ServerName::try_from(cfg.server_name.clone())
            .map_err(|e| ClientError::Config(format!("server name {:?}: {e}", cfg.server_name)))?;
        let host = if cfg.server.port() == 443 {
            cfg.server_name.clone()
        } else {
            format!("{}:{}", cfg.server_name, cfg.server.port())
        };
        let host = HeaderValue::try_from(host)
            .map_err(|e| ClientError::Config(format!("server name: {e}")))?;

        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&cfg.ca_pem) {
            let cert = cert.map_err(|e| ClientError::Config(format!("CA PEM: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| ClientError::Config(format!("CA certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(ClientError::Config("no certificate in the CA PEM".into()));
        }

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(ClientError::Tls)?
            .with_root_certificates(roots);
        let mut tls = match (&cfg.cert_chain_pem, &cfg.key_pem) {
            (Some(chain_pem), Some(key_pem)) => {
                let chain = CertificateDer::pem_slice_iter(chain_pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| ClientError::Config(format!("certificate chain PEM: {e}")))?;
                if chain.is_empty() {
                    return Err(ClientError::Config(
                        "no certificate in the certificate chain PEM".into(),
                    ));
                }
                let key = PrivateKeyDer::from_pem_slice(key_pem)
                    .map_err(|e| ClientError::Config(format!("private key PEM: {e}")))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| ClientError::Config(format!("client certificate: {e}")))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => {
                return Err(ClientError::Config(
                    "cert_chain_pem and key_pem go together".into(),
                ))
            }
        };
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Transport {
            addr: cfg.server,
            server_name,
            host,
            tls: TlsConnector::from(Arc::new(tls)),
        })
    }
}

/// One open connection: hyper's request handle and the task driving it.
struct Link {
    sender: http1::SendRequest<Full<Bytes>>,
    task: JoinHandle<Result<(), hyper::Error>>,
}

impl Link {
    async fn open(t: &Transport) -> Result<Link, ClientError> {
        let tcp = TcpStream::connect(t.addr).await.map_err(ClientError::Io)?;
        // Small requests on a kept-alive connection: do not let Nagle wait
        // for the previous answer's ACK.
        tcp.set_nodelay(true).map_err(ClientError::Io)?;
        let tls = t
            .tls
            .connect(t.server_name.clone(), tcp)
            .await
            .map_err(io_error)?;
        let (sender, conn) = http1::handshake(TokioIo::new(tls))
            .await
            .map_err(hyper_error)?;
        Ok(Link {
            sender,
            task: tokio::spawn(conn),
        })
    }

    /// The connection failed with `err`: give its TLS reason instead if the
    /// connection task ended with one (the server's alert).
    async fn fail(self, err: ClientError) -> ClientError {
        if matches!(err, ClientError::Tls(_)) {
            return err;
        }
        let Link { sender, mut task } = self;
        drop(sender);
        match tokio::time::timeout(FAILURE_GRACE, &mut task).await {
            Ok(Ok(Err(e))) => match tls_cause(&e) {
                Some(t) => ClientError::Tls(t),
                None => err,
            },
            Ok(_) => err,
            Err(_) => {
                task.abort();
                err
            }
        }
    }
}

/// The connection, reopened as needed.
struct Connection {
    transport: Transport,
    /// `None` when closed, or while a request is in flight: a call that is
    /// cancelled midway leaves no half-used connection behind.
    link: Option<Link>,
}

impl Connection {
    /// Send `req` and read the whole answer. If the connection turns out to
    /// be closed before `req` was sent, reconnect and try once more.
    async fn exchange(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, HeaderMap, Vec<u8>), ClientError> {
        let mut reconnected = false;
        let mut link = match self.link.take() {
            Some(link) if !link.sender.is_closed() => link,
            _ => {
                reconnected = true;
                Link::open(&self.transport).await?
            }
        };
        let mut req = req;
        loop {
            // Why the request could not be sent, and the request back.
            let (err, unsent) = match link.sender.ready().await {
                Err(e) => (hyper_error(e), req),
                Ok(()) => match link.sender.try_send_request(req).await {
                    Ok(res) => {
                        let status = res.status();
                        let headers = res.headers().clone();
                        let body = match res.into_body().collect().await {
                            Ok(b) => b.to_bytes().to_vec(),
                            Err(e) => return Err(link.fail(hyper_error(e)).await),
                        };
                        self.link = Some(link);
                        return Ok((status, headers, body));
                    }
                    Err(mut e) => match e.take_message() {
                        Some(unsent) => (hyper_error(e.into_error()), unsent),
                        // Sent, perhaps processed: never resend.
                        None => return Err(link.fail(hyper_error(e.into_error())).await),
                    },
                },
            };
            let err = link.fail(err).await;
            // A TLS alert (a refused certificate) is the server's answer,
            // not an idle close: trying again would only be refused again.
            if reconnected || matches!(err, ClientError::Tls(_)) {
                return Err(err);
            }
            reconnected = true;
            link = Link::open(&self.transport).await?;
            req = unsent;
        }
    }
}

/// The rustls error somewhere in `e`'s chain (directly, or inside an
/// `io::Error`, whose `source()` skips its payload).
fn tls_cause(e: &(dyn std::error::Error + 'static)) -> Option<rustls::Error> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<rustls::Error>() {
            return Some(t.clone());
        }
        if let Some(t) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(t.clone());
        }
        cur = err.source();
    }
    None
}

fn io_error(e: std::io::Error) -> ClientError {
    match tls_cause(&e) {
        Some(t) => ClientError::Tls(t),
        None => ClientError::Io(e),
    }
}

fn hyper_error(e: hyper::Error) -> ClientError {
    match tls_cause(&e) {
        Some(t) => ClientError::Tls(t),
        None => ClientError::Http(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Signer;
    use p256::pkcs8::{EncodePublicKey, LineEnding};

    fn signing_key(scalar: u8) -> p256::ecdsa::SigningKey {
        let mut bytes = [0u8; 32];
        bytes[31] = scalar;
        bytes[0] = 0x11;
        p256::ecdsa::SigningKey::from_slice(&bytes).unwrap()
    }

    /// The headers the KMS would send for `request_id` and `body`.
    fn signed_headers(key: &p256::ecdsa::SigningKey, request_id: &str, body: &[u8]) -> HeaderMap {
        let sig: Signature = key.sign(&wire::signed_message(request_id, body));
        let mut h = HeaderMap::new();
        h.insert(wire::REQUEST_ID, request_id.parse().unwrap());
        h.insert(
            wire::SIGNATURE,
            hex::encode_upper(sig.to_bytes()).parse().unwrap(),
        );
        h.insert(
            wire::SIGNATURE_KEY,
            verifying_key_id(key.verifying_key()).parse().unwrap(),
        );
        h
    }

    fn verifier(key: &p256::ecdsa::SigningKey) -> ResponseVerifier {
        ResponseVerifier::new(*key.verifying_key())
    }

    const BODY: &[u8] = br#"{"keys":[]}"#;
    const ID: &str = "0b8f2a4e-5c1d-4c1e-9f0a-3b2d1e4f5a6b";

    #[test]
    fn a_correct_signature_is_valid() {
        let k = signing_key(7);
        let h = signed_headers(&k, ID, BODY);
        assert_eq!(
            verifier(&k).check(Some(ID), &h, BODY),
            SignatureCheck::Valid
        );
    }

    #[test]
    fn lower_case_hex_is_accepted() {
        let k = signing_key(7);
        let mut h = signed_headers(&k, ID, BODY);
        let lower = h[wire::SIGNATURE].to_str().unwrap().to_ascii_lowercase();
        h.insert(wire::SIGNATURE, lower.parse().unwrap());
        let lower_id = h[wire::SIGNATURE_KEY]
            .to_str()
            .unwrap()
            .to_ascii_lowercase();
        h.insert(wire::SIGNATURE_KEY, lower_id.parse().unwrap());
        assert_eq!(
            verifier(&k).check(Some(ID), &h, BODY),
            SignatureCheck::Valid
        );
    }

    #[test]
    fn a_tampered_body_is_invalid() {
        let k = signing_key(7);
        let h = signed_headers(&k, ID, BODY);
        let check = verifier(&k).check(Some(ID), &h, br#"{"keys":[1]}"#);
        assert!(matches!(check, SignatureCheck::Invalid(_)), "{check:?}");
    }

    #[test]
    fn an_answer_to_another_request_is_invalid() {
        let k = signing_key(7);
        // Correctly signed, but for another request id, echoed as such.
        let h = signed_headers(&k, "another-request", BODY);
        let check = verifier(&k).check(Some(ID), &h, BODY);
        assert!(
            matches!(&check, SignatureCheck::Invalid(r) if r.contains("echoed")),
            "{check:?}"
        );
        // Signed for another request id, but echoing ours.
        let mut h = signed_headers(&k, "another-request", BODY);
        h.insert(wire::REQUEST_ID, ID.parse().unwrap());
        let check = verifier(&k).check(Some(ID), &h, BODY);
        assert!(
            matches!(&check, SignatureCheck::Invalid(r) if r.contains("does not verify")),
            "{check:?}"
        );
        // Not echoed at all.
        let mut h = signed_headers(&k, ID, BODY);
        h.remove(wire::REQUEST_ID);
        let check = verifier(&k).check(Some(ID), &h, BODY);
        assert!(matches!(check, SignatureCheck::Invalid(_)), "{check:?}");
    }

    #[test]
    fn a_request_sent_without_an_id_is_signed_over_the_empty_id() {
        let k = signing_key(7);
        let mut h = signed_headers(&k, "", BODY);
        assert_eq!(verifier(&k).check(None, &h, BODY), SignatureCheck::Valid);
        h.remove(wire::REQUEST_ID);
        assert_eq!(verifier(&k).check(None, &h, BODY), SignatureCheck::Valid);
    }

    #[test]
    fn a_request_sent_with_an_invalid_id_is_answered_over_the_empty_id() {
        let k = signing_key(7);
        let h = signed_headers(&k, "", BODY);
        for invalid in ["short", "has space in it", &"x".repeat(65)] {
            assert_eq!(
                verifier(&k).check(Some(invalid), &h, BODY),
                SignatureCheck::Valid,
                "{invalid}"
            );
        }
        // A valid id is not excused from being echoed.
        let check = verifier(&k).check(Some(ID), &h, BODY);
        assert!(matches!(check, SignatureCheck::Invalid(_)), "{check:?}");
        assert!(valid_request_id(&new_request_id()));
    }

    #[test]
    fn a_missing_signature_is_missing() {
        let k = signing_key(7);
        let mut h = signed_headers(&k, ID, BODY);
        h.remove(wire::SIGNATURE);
        assert_eq!(
            verifier(&k).check(Some(ID), &h, BODY),
            SignatureCheck::Missing
        );
        assert_eq!(
            verifier(&k).check(Some(ID), &HeaderMap::new(), BODY),
            SignatureCheck::Missing
        );
    }

    #[test]
    fn another_key_is_invalid() {
        let pinned = signing_key(7);
        let other = signing_key(8);
        // Says so.
        let h = signed_headers(&other, ID, BODY);
        let check = verifier(&pinned).check(Some(ID), &h, BODY);
        assert!(
            matches!(&check, SignatureCheck::Invalid(r) if r.contains("pinned")),
            "{check:?}"
        );
        // Claims to be the pinned key.
        let mut h = signed_headers(&other, ID, BODY);
        h.insert(
            wire::SIGNATURE_KEY,
            verifying_key_id(pinned.verifying_key()).parse().unwrap(),
        );
        let check = verifier(&pinned).check(Some(ID), &h, BODY);
        assert!(matches!(check, SignatureCheck::Invalid(_)), "{check:?}");
        // Names no key.
        let mut h = signed_headers(&pinned, ID, BODY);
        h.remove(wire::SIGNATURE_KEY);
        let check = verifier(&pinned).check(Some(ID), &h, BODY);
        assert!(matches!(check, SignatureCheck::Invalid(_)), "{check:?}");
    }

    #[test]
    fn malformed_or_repeated_headers_are_invalid() {
        let k = signing_key(7);
        for bad in ["zz", "ABCD", ""] {
            let mut h = signed_headers(&k, ID, BODY);
            h.insert(wire::SIGNATURE, bad.parse().unwrap());
            let check = verifier(&k).check(Some(ID), &h, BODY);
            assert!(
                matches!(check, SignatureCheck::Invalid(_)),
                "{bad}: {check:?}"
            );
        }
        let mut h = signed_headers(&k, ID, BODY);
        h.append(wire::REQUEST_ID, "other-request".parse().unwrap());
        let check = verifier(&k).check(Some(ID), &h, BODY);
        assert!(matches!(check, SignatureCheck::Invalid(_)), "{check:?}");
    }

    #[test]
    fn the_signing_key_document_is_checked() {
        let k = signing_key(7);
        let pem = k.verifying_key().to_public_key_pem(LineEnding::LF).unwrap();
        let doc = SigningKey {
            algorithm: SIGNING_ALGORITHM.into(),
            key_id: verifying_key_id(k.verifying_key()),
            public_key_pem: pem,
        };
        let v = ResponseVerifier::from_signing_key(&doc).unwrap();
        assert_eq!(v.key(), k.verifying_key());
        assert_eq!(
            v.key_id(),
            wire::key_id(k.verifying_key().to_encoded_point(false).as_bytes())
        );

        let lying = SigningKey {
            key_id: verifying_key_id(signing_key(8).verifying_key()),
            ..doc.clone()
        };
        assert!(matches!(
            ResponseVerifier::from_signing_key(&lying),
            Err(ClientError::Decode(_))
        ));
        let other_algorithm = SigningKey {
            algorithm: "rsa-pss-sha256".into(),
            ..doc
        };
        assert!(ResponseVerifier::from_signing_key(&other_algorithm).is_err());
    }

    #[test]
    fn requests_carry_fresh_or_chosen_headers() {
        let host = HeaderValue::from_static("kms:8443");
        let (id, req) = build_request(&host, RawRequest::post_json("/v1/x", "{}")).unwrap();
        let id = id.unwrap();
        assert!(uuid::Uuid::parse_str(&id).is_ok());
        assert_eq!(req.headers()[wire::REQUEST_ID], id.as_str());
        let ts = req.headers()[wire::TIMESTAMP].to_str().unwrap();
        let t = OffsetDateTime::parse(ts, &Rfc3339).unwrap();
        assert!((OffsetDateTime::now_utc() - t).whole_seconds().abs() < 5);
        assert!(ts.ends_with('Z'), "{ts}");
        assert_eq!(req.headers()[CONTENT_TYPE], JSON);
        assert_eq!(req.headers()[HOST], "kms:8443");
        assert_eq!(req.method(), Method::POST);

        let (id2, _) = build_request(&host, RawRequest::get("/v1/x")).unwrap();
        assert_ne!(id2.unwrap(), id);

        let stale = OffsetDateTime::now_utc() - time::Duration::minutes(10);
        let raw = RawRequest::get("/v1/keys")
            .request_id("replayed-id")
            .timestamp_at(stale)
            .unwrap()
            .header("x-extra", "1");
        let (id, req) = build_request(&host, raw).unwrap();
        assert_eq!(id.as_deref(), Some("replayed-id"));
        assert_eq!(req.headers()[wire::REQUEST_ID], "replayed-id");
        assert_eq!(
            req.headers()[wire::TIMESTAMP],
            rfc3339(stale).unwrap().as_str()
        );
        assert_eq!(req.headers()["x-extra"], "1");

        let raw = RawRequest::get("/v1/keys")
            .without_request_id()
            .without_timestamp();
        let (id, req) = build_request(&host, raw).unwrap();
        assert_eq!(id, None);
        assert!(req.headers().get(wire::REQUEST_ID).is_none());
        assert!(req.headers().get(wire::TIMESTAMP).is_none());
    }

    #[test]
    fn key_names_are_escaped_in_the_path() {
        assert_eq!(path_segment("issuer-1_a.b~"), "issuer-1_a.b~");
        assert_eq!(path_segment("a/b c%"), "a%2Fb%20c%25");
    }

    #[test]
    fn refusals_surface_the_problem() {
        let body = br#"{"type":"about:blank","title":"Replayed request","status":409,"code":"replayed-request"}"#;
        match refusal(StatusCode::CONFLICT, body) {
            ClientError::Problem(p) => assert_eq!(p.code, "replayed-request"),
            e => panic!("{e:?}"),
        }
        assert!(matches!(
            refusal(StatusCode::BAD_GATEWAY, b"<html>"),
            ClientError::Http(_)
        ));
    }

    #[test]
    fn the_configuration_is_checked() {
        let cfg = ClientConfig {
            server: "127.0.0.1:8443".parse().unwrap(),
            server_name: "kms.example".into(),
            ca_pem: b"not PEM".to_vec(),
            cert_chain_pem: None,
            key_pem: None,
            signing_key: None,
        };
        assert!(matches!(Transport::new(&cfg), Err(ClientError::Config(_))));
        let bad_name = ClientConfig {
            server_name: "not a name!".into(),
            ..cfg
        };
        assert!(matches!(
            Transport::new(&bad_name),
            Err(ClientError::Config(_))
        ));
    }

    /// Clients can be moved into tasks: the client and its futures are Send.
    #[allow(dead_code)]
    fn clients_are_send(c: &mut ProvisioningClient) {
        fn send<T: Send>(_: &T) {}
        send(c);
        send(&c.keys());
        send(&c.send(RawRequest::get("/v1/keys")));
        send(&ProvisioningClient::connect(ClientConfig {
            server: SocketAddr::from(([127, 0, 0, 1], 1)),
            server_name: String::new(),
            ca_pem: Vec::new(),
            cert_chain_pem: None,
            key_pem: None,
            signing_key: None,
        }));
    }
}
