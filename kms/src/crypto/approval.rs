//! Signed approvals (issue 5, item 2; invariant 3): each approver signs what
//! they agreed to with the private key of the client certificate they are
//! enrolled with, so the audit trail alone proves who approved which
//! operation, and an officer can re-check it offline.
//!
//! The signed message is domain-separated and names the request, the
//! digest of the operation's canonical form and the approver, so a
//! signature cannot be replayed for another request, another operation or
//! by another person. ECDSA over P-256 with SHA-256 (ALG-ASYM, INT-1); the
//! signature is DER.

use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{DerSignature, SigningKey, VerifyingKey};
use p256::pkcs8::{DecodePrivateKey, DecodePublicKey};
use sha2::{Digest, Sha256};
use x509_cert::der::{Decode, Encode};

/// The domain separator of approval messages; a new message layout gets a
/// new version.
const DOMAIN: &str = "KMS-APPROVAL-V1";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApprovalError {
    #[error("the approver's signing key is not a PKCS#8 P-256 private key (PEM)")]
    SigningKey,
    #[error("the approver's certificate is not a DER X.509 certificate: {0}")]
    Certificate(String),
    #[error("the approver's certificate does not hold a P-256 public key")]
    NotP256,
    #[error("the approval signature is not a DER ECDSA signature")]
    Malformed,
    #[error("the approval signature does not verify under the approver's certificate")]
    BadSignature,
}

/// What an approver sends along with their approval.
#[derive(Clone, PartialEq, Eq)]
pub struct ApprovalSignature {
    /// The approver's client certificate, DER.
    pub cert_der: Vec<u8>,
    /// ECDSA P-256 / SHA-256 over [`approval_message`], DER.
    pub signature: Vec<u8>,
}

impl ApprovalSignature {
    /// SHA-256 of the certificate, upper-case hex (as enrolment stores it).
    pub fn cert_sha256(&self) -> String {
        cert_sha256(&self.cert_der)
    }
}

impl std::fmt::Debug for ApprovalSignature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApprovalSignature")
            .field("cert_sha256", &self.cert_sha256())
            .field("signature", &hex::encode_upper(&self.signature))
            .finish()
    }
}

pub fn cert_sha256(cert_der: &[u8]) -> String {
    hex::encode_upper(Sha256::digest(cert_der))
}

/// The bytes an approver signs. The digest is upper-cased so that the
/// spelling the approver typed does not change the message.
pub fn approval_message(request_id: &str, digest: &str, approver: &str) -> Vec<u8> {
    format!(
        "{DOMAIN}\n{request_id}\n{}\n{approver}",
        digest.to_ascii_uppercase()
    )
    .into_bytes()
}

/// Sign `msg` with a PKCS#8 PEM P-256 private key: done on the approver's
/// side (CLI, ceremony runner, tests), never by the service.
pub fn sign_approval(signing_key_pem: &str, msg: &[u8]) -> Result<Vec<u8>, ApprovalError> {
    let key = SigningKey::from_pkcs8_pem(signing_key_pem).map_err(|_| ApprovalError::SigningKey)?;
    let sig: DerSignature = key.sign(msg);
    Ok(sig.as_bytes().to_vec())
}

/// Verify `sig` over `msg` under the P-256 key of the certificate.
pub fn verify_approval(cert_der: &[u8], msg: &[u8], sig: &[u8]) -> Result<(), ApprovalError> {
    let cert = x509_cert::Certificate::from_der(cert_der)
        .map_err(|e| ApprovalError::Certificate(e.to_string()))?;
    let spki = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| ApprovalError::Certificate(e.to_string()))?;
    let key = VerifyingKey::from_public_key_der(&spki).map_err(|_| ApprovalError::NotP256)?;
    let sig = DerSignature::from_bytes(sig).map_err(|_| ApprovalError::Malformed)?;
    key.verify(msg, &sig)
        .map_err(|_| ApprovalError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(cn: &str) -> (String, Vec<u8>) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, cn.to_owned());
        let cert = p.self_signed(&key).unwrap();
        (key.serialize_pem(), cert.der().to_vec())
    }

    #[test]
    fn message_is_domain_separated_and_binds_every_field() {
        let m = approval_message("r1", "ab", "alice");
        assert_eq!(m, b"KMS-APPROVAL-V1\nr1\nAB\nalice".to_vec());
        assert_ne!(m, approval_message("r2", "AB", "alice"));
        assert_ne!(m, approval_message("r1", "AC", "alice"));
        assert_ne!(m, approval_message("r1", "AB", "bob"));
    }

    #[test]
    fn inv3_signature_verifies_only_for_its_message_and_certificate() {
        let (alice_key, alice_cert) = person("alice");
        let (_, bob_cert) = person("bob");
        let msg = approval_message("r1", "AB", "alice");
        let sig = sign_approval(&alice_key, &msg).unwrap();
        verify_approval(&alice_cert, &msg, &sig).unwrap();
        assert_eq!(
            verify_approval(&alice_cert, &approval_message("r2", "AB", "alice"), &sig),
            Err(ApprovalError::BadSignature)
        );
        assert_eq!(
            verify_approval(&bob_cert, &msg, &sig),
            Err(ApprovalError::BadSignature)
        );
        let mut tampered = sig.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(verify_approval(&alice_cert, &msg, &tampered).is_err());
    }

    #[test]
    fn bad_inputs_are_clear_errors() {
        assert_eq!(
            sign_approval("not a key", b"m"),
            Err(ApprovalError::SigningKey)
        );
        assert!(matches!(
            verify_approval(b"junk", b"m", b"s"),
            Err(ApprovalError::Certificate(_))
        ));
        let (_, cert) = person("alice");
        assert_eq!(
            verify_approval(&cert, b"m", b"not der"),
            Err(ApprovalError::Malformed)
        );
        // An RSA or P-384 certificate is refused as such.
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        let other = p.self_signed(&key).unwrap().der().to_vec();
        assert_eq!(
            verify_approval(&other, b"m", b"s"),
            Err(ApprovalError::NotP256)
        );
    }
}
