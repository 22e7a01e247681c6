//! A small reference client of the KMS API: TLS through tokio-rustls (ring,
//! the server's CA as the only root, optionally a client certificate), HTTP
//! through hyper's HTTP/1.1 client, one connection per request.
//!
//! A refused client certificate surfaces as [`ClientError::Tls`] with the
//! server's alert. In TLS 1.3 the client finishes its side of the handshake
//! before the server has checked the certificate, so the alert usually
//! arrives when the response is read, not at connect; the client looks for
//! it in both places and in the connection task's error.

use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper::{HeaderMap, Method, Request};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// A client certificate chain and its key.
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

#[derive(Debug)]
pub enum ClientError {
    /// The TLS layer failed; for a refused client certificate, the alert
    /// the server sent (`AlertReceived(CertificateRequired | UnknownCA |
    /// CertificateExpired | CertificateRevoked)`).
    Tls(rustls::Error),
    /// Connecting failed, or the connection broke without a TLS reason.
    Io(std::io::Error),
    /// HTTP-level failure.
    Http(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Tls(e) => write!(f, "TLS: {e}"),
            ClientError::Io(e) => write!(f, "I/O: {e}"),
            ClientError::Http(e) => write!(f, "HTTP: {e}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// An answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn content_type(&self) -> &str {
        self.header("content-type").unwrap_or_default()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
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

pub struct ApiClient {
    config: Arc<ClientConfig>,
}

impl ApiClient {
    /// A client trusting only `ca`, presenting `identity` if given.
    pub fn new(ca: &CertificateDer<'static>, identity: Option<Identity>) -> ApiClient {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone()).expect("CA certificate");
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots);
        let config = match identity {
            Some(id) => builder
                .with_client_auth_cert(id.chain, id.key)
                .expect("client certificate"),
            None => builder.with_no_client_auth(),
        };
        ApiClient {
            config: Arc::new(config),
        }
    }

    pub async fn get(&self, addr: SocketAddr, path: &str) -> Result<Reply, ClientError> {
        self.request(addr, Method::GET, path, Vec::new()).await
    }

    pub async fn request(
        &self,
        addr: SocketAddr,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<Reply, ClientError> {
        let tcp = TcpStream::connect(addr).await.map_err(ClientError::Io)?;
        let name = ServerName::try_from("localhost").expect("server name");
        let tls = TlsConnector::from(self.config.clone())
            .connect(name, tcp)
            .await
            .map_err(io_error)?;
        let (mut sender, conn) = http1::handshake(TokioIo::new(tls))
            .await
            .map_err(hyper_error)?;
        let conn = tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .header("connection", "close")
            .body(http_body_util::Full::new(Bytes::from(body)))
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let res = match sender.send_request(req).await {
            Ok(r) => r,
            Err(e) => {
                // The connection task holds the underlying reason (the alert).
                if let Ok(Err(conn_err)) = conn.await {
                    if let Some(t) = tls_cause(&conn_err) {
                        return Err(ClientError::Tls(t));
                    }
                }
                return Err(hyper_error(e));
            }
        };
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let body = http_body_util::BodyExt::collect(res.into_body())
            .await
            .map_err(hyper_error)?
            .to_bytes()
            .to_vec();
        drop(sender);
        let _ = conn.await;
        Ok(Reply {
            status,
            headers,
            body,
        })
    }
}
