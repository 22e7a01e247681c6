//! An approver's approval, signed with the private key of the certificate
//! they are enrolled with (issue 5, item 2): the runner asks each approver
//! for their key and certificate files, signs
//! `approval_message(request, digest, name)` on this host, and hands the
//! signature to the service, which checks it and keeps it in the trail.
//! The private key is read into a zeroizing buffer and dropped at once.

use crate::console::{Console, ConsoleError, Question};
use kms::crypto::approval::{approval_message, sign_approval, ApprovalSignature};
use kms::service::{ApprovalRequest, CustodianSession, KeyService, ServiceError};
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum ApprovalInputError {
    #[error(transparent)]
    Console(#[from] ConsoleError),
    /// Names the file, never its content.
    #[error("{path}: {why}")]
    File { path: String, why: String },
    #[error(transparent)]
    Service(#[from] ServiceError),
}

/// A certificate file, DER or PEM.
pub fn read_certificate(path: &str) -> Result<Vec<u8>, ApprovalInputError> {
    let bad = |why: String| ApprovalInputError::File {
        path: path.to_owned(),
        why,
    };
    let raw = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let Ok(text) = std::str::from_utf8(&raw) else {
        return Ok(raw);
    };
    if !text.contains("-----BEGIN CERTIFICATE-----") {
        return Ok(raw);
    }
    let body: String = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .map(str::trim)
        .collect();
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|e| bad(format!("not a PEM certificate: {e}")))
}

/// Ask `who` for their key and certificate, sign, approve.
pub async fn approve(
    svc: &KeyService,
    console: &mut dyn Console,
    key_question: &Question,
    cert_question: &Question,
    who: &CustodianSession,
    req: &ApprovalRequest,
) -> Result<ApprovalRequest, ApprovalInputError> {
    let key_path = console.ask(key_question)?;
    let cert_path = console.ask(cert_question)?;
    let cert_der = read_certificate(cert_path.trim())?;
    let key_pem = Zeroizing::new(std::fs::read_to_string(key_path.trim()).map_err(|e| {
        ApprovalInputError::File {
            path: key_path.trim().to_owned(),
            why: e.to_string(),
        }
    })?);
    let msg = approval_message(&req.id, &req.digest, who.name().as_str());
    let signature = sign_approval(&key_pem, &msg).map_err(|e| ApprovalInputError::File {
        path: key_path.trim().to_owned(),
        why: e.to_string(),
    })?;
    drop(key_pem);
    let sig = ApprovalSignature {
        cert_der,
        signature,
    };
    Ok(svc.approve(who, &req.id, &req.digest, &sig).await?)
}
