//! The TLS side of the server: rustls (ring provider) with mandatory client
//! certificates, verified by webpki against `[server] client_ca`, with the
//! CRLs of `[server] crl` when given.
//!
//! A connection without a certificate, or with one that does not chain to
//! the client CA, is expired or not yet valid, or is revoked, fails the
//! handshake: no HTTP request is ever read from it. The verifier is wrapped
//! only to note which certificate a refused client presented, so that the
//! refusal can be audited with the certificate's fingerprint.

use super::ServerError;
use crate::config::ServerSettings;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use sha2::{Digest, Sha256};
use std::cell::RefCell;
use std::path::Path;
use std::sync::Arc;

/// What the server knows of a client certificate: enough to find its
/// principal and to name it in the trail, nothing more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// SHA-256 of the certificate (DER), upper-case hex.
    pub sha256: String,
    /// The subject's common name, when there is exactly one.
    pub subject_cn: Option<String>,
}

impl ClientIdentity {
    pub fn from_der(der: &[u8]) -> ClientIdentity {
        ClientIdentity {
            sha256: hex::encode_upper(Sha256::digest(der)),
            subject_cn: subject_cn(der),
        }
    }

    /// The actor in records about a certificate that maps to no principal.
    pub fn actor(&self) -> String {
        format!("sha256:{}", self.sha256)
    }
}

/// The subject CN of a certificate. None when it cannot be read or when
/// the subject has several CNs: matching one of them by name would let a
/// CA-issued certificate with an extra CN pass as someone else.
fn subject_cn(der: &[u8]) -> Option<String> {
    use x509_cert::der::asn1::{ObjectIdentifier, PrintableStringRef, Utf8StringRef};
    use x509_cert::der::{Decode, Tag, Tagged};
    const CN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    let mut found = None;
    for rdn in cert.tbs_certificate.subject.0.iter() {
        for atv in rdn.0.iter().filter(|a| a.oid == CN) {
            if found.is_some() {
                return None;
            }
            let value = match atv.value.tag() {
                Tag::Utf8String => atv
                    .value
                    .decode_as::<Utf8StringRef<'_>>()
                    .ok()?
                    .as_str()
                    .to_owned(),
                Tag::PrintableString => atv
                    .value
                    .decode_as::<PrintableStringRef<'_>>()
                    .ok()?
                    .as_str()
                    .to_owned(),
                _ => return None,
            };
            found = Some(value);
        }
    }
    found
}

tokio::task_local! {
    /// The certificate a client presented and the verifier refused, for the
    /// connection whose handshake runs in this task.
    pub(crate) static REFUSED_CERT: RefCell<Option<ClientIdentity>>;
}

/// webpki's verifier, noting refused certificates in [`REFUSED_CERT`].
/// Verification itself is entirely the inner verifier's.
#[derive(Debug)]
struct NotingVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for NotingVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verdict = self
            .inner
            .verify_client_cert(end_entity, intermediates, now);
        if verdict.is_err() {
            // The handshake runs synchronously inside the connection task's
            // poll, so the task-local is that connection's. Outside a scope
            // (never in this server) there is simply nothing to note.
            let _ = REFUSED_CERT.try_with(|c| {
                *c.borrow_mut() = Some(ClientIdentity::from_der(end_entity));
            });
        }
        verdict
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Why a handshake was refused, when it was about the client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    NoCertificate,
    UnknownIssuer,
    Expired,
    Revoked,
    /// Its revocation status is unknown (no CRL of its issuer).
    UnknownRevocation,
    /// Any other certificate problem (bad signature, wrong purpose, ...).
    BadCertificate,
}

impl Refusal {
    /// A metric label and the `error` detail of the audit record.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Refusal::NoCertificate => "no-certificate",
            Refusal::UnknownIssuer => "unknown-issuer",
            Refusal::Expired => "expired",
            Refusal::Revoked => "revoked",
            Refusal::UnknownRevocation => "unknown-revocation-status",
            Refusal::BadCertificate => "bad-certificate",
        }
    }

    pub(crate) fn reason(self) -> &'static str {
        match self {
            Refusal::NoCertificate => "TLS handshake refused: no client certificate",
            Refusal::UnknownIssuer => {
                "TLS handshake refused: the client certificate is not issued by the client CA"
            }
            Refusal::Expired => {
                "TLS handshake refused: the client certificate is expired or not yet valid"
            }
            Refusal::Revoked => "TLS handshake refused: the client certificate is revoked",
            Refusal::UnknownRevocation => {
                "TLS handshake refused: the client certificate's revocation status is unknown"
            }
            Refusal::BadCertificate => {
                "TLS handshake refused: the client certificate is not acceptable"
            }
        }
    }

    /// Classify a failed handshake. None for failures that are not about
    /// the client's certificate (a port scan, plain HTTP, a client that hung
    /// up, no common cipher suite): those are counted, not audited.
    pub(crate) fn of(e: &std::io::Error) -> Option<Refusal> {
        let tls = e.get_ref()?.downcast_ref::<rustls::Error>()?;
        Some(match tls {
            rustls::Error::NoCertificatesPresented => Refusal::NoCertificate,
            rustls::Error::InvalidCertificate(c) => match c {
                CertificateError::UnknownIssuer => Refusal::UnknownIssuer,
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. } => Refusal::Expired,
                CertificateError::Revoked => Refusal::Revoked,
                CertificateError::UnknownRevocationStatus => Refusal::UnknownRevocation,
                _ => Refusal::BadCertificate,
            },
            _ => return None,
        })
    }
}

/// The server's TLS configuration, and what `server.start` records of it.
pub(crate) struct TlsSetup {
    pub(crate) config: Arc<ServerConfig>,
    /// SHA-256 fingerprints of the client CA certificates, comma-separated.
    pub(crate) client_ca_digest: String,
    /// How many CRLs were loaded.
    pub(crate) crls: usize,
}

fn tls_err(what: &'static str, path: &Path, detail: impl std::fmt::Display) -> ServerError {
    ServerError::Tls {
        what,
        path: path.to_owned(),
        detail: detail.to_string(),
    }
}

fn read_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, ServerError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| tls_err(what, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_err(what, path, e))?;
    if certs.is_empty() {
        return Err(tls_err(what, path, "no CERTIFICATE in the file"));
    }
    Ok(certs)
}

/// The server's private key. A world-readable key file is refused: anyone
/// on the host could then impersonate the KMS to its clients.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, ServerError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| tls_err("key", path, e))?
        .permissions()
        .mode();
    if mode & 0o007 != 0 {
        return Err(tls_err(
            "key",
            path,
            format!(
                "is accessible to every user (mode {:o}); chmod 600 it",
                mode & 0o777
            ),
        ));
    }
    PrivateKeyDer::from_pem_file(path).map_err(|e| tls_err("key", path, e))
}

pub(crate) fn server_config(s: &ServerSettings) -> Result<TlsSetup, ServerError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = read_certs("certificate", &s.tls_cert)?;
    let key = read_key(&s.tls_key)?;
    let cas = read_certs("client CA", &s.client_ca)?;
    let client_ca_digest = cas
        .iter()
        .map(|c| hex::encode_upper(Sha256::digest(c)))
        .collect::<Vec<_>>()
        .join(",");
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots
            .add(ca)
            .map_err(|e| tls_err("client CA", &s.client_ca, e))?;
    }
    let mut verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    let mut crls = 0;
    if let Some(path) = &s.crl {
        let list = CertificateRevocationListDer::pem_file_iter(path)
            .map_err(|e| tls_err("CRL", path, e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| tls_err("CRL", path, e))?;
        if list.is_empty() {
            return Err(tls_err("CRL", path, "no X509 CRL in the file"));
        }
        crls = list.len();
        // With CRLs, a certificate whose issuer has none is refused
        // (unknown revocation status): give the CRL of every client CA.
        verifier = verifier.with_crls(list);
    }
    let inner = verifier
        .build()
        .map_err(|e| tls_err("client CA", &s.client_ca, e))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| tls_err("configuration", &s.tls_cert, e))?
        .with_client_cert_verifier(Arc::new(NotingVerifier { inner }))
        .with_single_cert(chain, key)
        .map_err(|e| tls_err("certificate", &s.tls_cert, e))?;
    // HTTP/1.1 only: hyper serves it without the h2 stack.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsSetup {
        config: Arc::new(config),
        client_ca_digest,
        crls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_reads_fingerprint_and_cn() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "KMS");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "sofia");
        let cert = params.self_signed(&key).unwrap();
        let id = ClientIdentity::from_der(cert.der());
        assert_eq!(id.subject_cn.as_deref(), Some("sofia"));
        assert_eq!(id.sha256, hex::encode_upper(Sha256::digest(cert.der())));
        assert_eq!(id.actor(), format!("sha256:{}", id.sha256));
        assert_eq!(
            ClientIdentity::from_der(b"not a certificate").subject_cn,
            None
        );
    }

    #[test]
    fn refusals_are_classified_from_the_io_error() {
        let io = |e: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        assert_eq!(
            Refusal::of(&io(rustls::Error::NoCertificatesPresented)),
            Some(Refusal::NoCertificate)
        );
        assert_eq!(
            Refusal::of(&io(rustls::Error::InvalidCertificate(
                CertificateError::Revoked
            ))),
            Some(Refusal::Revoked)
        );
        assert_eq!(
            Refusal::of(&io(rustls::Error::InvalidCertificate(
                CertificateError::Expired
            ))),
            Some(Refusal::Expired)
        );
        assert_eq!(
            Refusal::of(&std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
            None
        );
    }
}
