//! INT-1 beyond TLS: every answer of the provisioning listener carries a
//! detached ECDSA P-256 signature made in the HSM over the caller's request
//! id and the exact body bytes, so a provisioner can later prove what the
//! KMS sent (TLS authenticates the channel, not the message).
//!
//! The key is one of the KMS's own (tenant `kms`, `api-response-signing`),
//! separate from the audit checkpoint key so that either can be rotated or
//! revoked without the other.

use crate::audit::{AuditError, AuditLog};
use crate::hsm::{Hsm, KeyRef, SignAlg};
use crate::model::{Algorithm, KeyUsage};
use std::sync::Arc;

const KEY_NAME: &str = "api-response-signing";

#[derive(Clone)]
pub(crate) struct ResponseSigner {
    hsm: Arc<Hsm>,
    key: KeyRef,
    /// SEC1 uncompressed point.
    public: Arc<Vec<u8>>,
    key_id: Arc<String>,
}

impl ResponseSigner {
    /// Find or create the signing key (under the user's login).
    pub(crate) async fn open(audit: &AuditLog, hsm: Arc<Hsm>) -> Result<Self, AuditError> {
        let key = audit
            .system_key(KEY_NAME, Algorithm::EcP256, KeyUsage::Signing)
            .await?;
        let h = hsm.clone();
        let public = tokio::task::spawn_blocking(move || h.public_key(&key))
            .await
            .map_err(|e| AuditError::Keys(e.to_string()))??;
        let key_id = kms_client::wire::key_id(&public);
        Ok(ResponseSigner {
            hsm,
            key,
            public: Arc::new(public),
            key_id: Arc::new(key_id),
        })
    }

    pub(crate) fn key_id(&self) -> &str {
        &self.key_id
    }

    pub(crate) fn public_key(&self) -> &[u8] {
        &self.public
    }

    /// The 64-byte r || s signature of `message` (SHA-256 on the host,
    /// ECDSA in the token: SoftHSM has no CKM_ECDSA_SHA256).
    pub(crate) async fn sign(&self, message: Vec<u8>) -> Result<Vec<u8>, String> {
        let hsm = self.hsm.clone();
        let key = self.key;
        tokio::task::spawn_blocking(move || hsm.sign(&key, SignAlg::EcdsaP256Sha256, &message))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }
}
