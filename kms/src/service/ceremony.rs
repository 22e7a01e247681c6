//! Ceremony transcripts (issue 5, item 3; TSM-AC-2, INT-1): what the people
//! in the room did, step by step, signed in the HSM and recorded in the
//! audit trail, so that a security officer can later prove the exported
//! file is the one the KMS signed and that the trail holds it.
//!
//! A transcript carries names, roles, times, step kinds and outcomes, check
//! values, request ids and digests: never a PIN, component, share or key
//! value. The ceremony runner (crate `ceremony`) builds it; this module
//! signs it with one of the KMS's own keys (tenant `kms`,
//! `ceremony-transcript-signing`, ECDSA P-256, created on first use like the
//! audit and API response signing keys, kept apart from them so that each
//! can be rotated alone).

use super::{Actor, KeyService, ServiceError};
use crate::audit::{AuditEvent, Outcome};
use crate::hsm::{KeyRef, SignAlg};
use crate::model::{Algorithm, KeyUsage};
use crate::store::AuditFilter;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

const SIGNING_KEY: &str = "ceremony-transcript-signing";
/// The first line of what is signed: a transcript signature can never be
/// mistaken for an audit checkpoint or an API response signature.
pub const TRANSCRIPT_FORMAT: &str = "kms-ceremony-transcript v1";
pub const TRANSCRIPT_ACTION: &str = "ceremony.transcript";
pub const STEP_ACTION: &str = "ceremony.step";

/// A person who took part, in the role the script gave them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Participant {
    pub name: String,
    /// The script's role (`officer`, `custodians`, ...).
    pub role: String,
    /// Their enrolled role (`security-officer`, `custodian`, ...).
    pub enrolled_as: String,
}

/// How a step, or a whole ceremony, ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepOutcome {
    Done,
    Refused,
    Aborted,
}

impl StepOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            StepOutcome::Done => "done",
            StepOutcome::Refused => "refused",
            StepOutcome::Aborted => "aborted",
        }
    }

    fn audit(self) -> Outcome {
        match self {
            StepOutcome::Done => Outcome::Success,
            StepOutcome::Refused => Outcome::Refused,
            StepOutcome::Aborted => Outcome::Failure,
        }
    }
}

/// One step as it happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TranscriptStep {
    pub index: u32,
    pub kind: String,
    /// RFC 3339, UTC.
    pub at: String,
    /// Who acted, when one person did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    pub outcome: StepOutcome,
    /// Check values, request ids, digests, counts: public facts only.
    #[serde(default)]
    pub details: BTreeMap<String, String>,
}

/// A whole run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transcript {
    pub format: String,
    pub ceremony: String,
    pub title: String,
    /// Ties every `ceremony.step` record of the run to its transcript.
    pub run_id: String,
    pub requirements: Vec<String>,
    pub parameters: BTreeMap<String, String>,
    pub started_at: String,
    pub ended_at: String,
    pub people: Vec<Participant>,
    pub steps: Vec<TranscriptStep>,
    pub outcome: StepOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort_reason: Option<String>,
}

impl Transcript {
    /// serde_json writes struct fields in declaration order and BTreeMaps
    /// sorted, so this is a stable canonical form.
    pub fn canonical(&self) -> Result<String, ServiceError> {
        serde_json::to_string(self).map_err(|e| ServiceError::Internal(e.to_string()))
    }

    /// Upper-case hex SHA-256 of the canonical form.
    pub fn digest(&self) -> Result<String, ServiceError> {
        Ok(hex::encode_upper(Sha256::digest(
            self.canonical()?.as_bytes(),
        )))
    }

    /// The exact bytes signed.
    pub fn message(digest: &str) -> Vec<u8> {
        format!("{TRANSCRIPT_FORMAT}\ndigest={digest}\n").into_bytes()
    }
}

/// A transcript with the KMS's signature: the file handed to the officer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedTranscript {
    pub transcript: Transcript,
    pub digest: String,
    /// ECDSA P-256 / SHA-256, r || s, upper-case hex, over
    /// `Transcript::message(digest)`.
    pub signature: String,
    /// The signing key's SEC1 public point, hex (informative: `verify`
    /// takes the key from the service, not from the file).
    pub public_key: String,
}

/// What `verify_transcript` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TranscriptCheck {
    pub digest_matches: bool,
    pub signature_valid: bool,
    /// The seq of the `ceremony.transcript` record holding this digest and
    /// signature, if the trail has one.
    pub audit_seq: Option<u64>,
}

impl TranscriptCheck {
    pub fn ok(&self) -> bool {
        self.digest_matches && self.signature_valid && self.audit_seq.is_some()
    }
}

impl KeyService {
    async fn transcript_key(&self) -> Result<KeyRef, ServiceError> {
        if self.hsm.role() != crate::hsm::Role::User {
            return Err(ServiceError::Refused(
                "transcripts are signed under the user's login (the KMS's own keys are private to it)"
                    .into(),
            ));
        }
        self.audit
            .system_key(SIGNING_KEY, Algorithm::EcP256, KeyUsage::Signing)
            .await
            .map_err(ServiceError::Audit)
    }

    /// The transcript signing key's public point (SEC1, uncompressed).
    pub async fn transcript_public_key(&self) -> Result<Vec<u8>, ServiceError> {
        let key = self.transcript_key().await?;
        self.on_hsm(move |h| h.public_key(&key)).await
    }

    /// One `ceremony.step` record: the trail follows a ceremony as it runs,
    /// so an interrupted one still shows how far it got. Written under
    /// whichever login the runner holds (the SO's records are countersigned
    /// by the user login that follows, as for any SO act).
    pub async fn record_ceremony_step(
        &self,
        ceremony: &str,
        run_id: &str,
        step: &TranscriptStep,
    ) -> Result<(), ServiceError> {
        let mut details = step.details.clone();
        details.insert("ceremony".into(), ceremony.to_owned());
        details.insert("run".into(), run_id.to_owned());
        details.insert("step".into(), step.index.to_string());
        details.insert("kind".into(), step.kind.clone());
        self.audit
            .record(AuditEvent {
                actor: step.actor.clone().unwrap_or_else(|| "ceremony".into()),
                role: self.role_name().into(),
                action: STEP_ACTION.into(),
                request_id: Some(run_id.to_owned()),
                outcome: Some(step.outcome.audit()),
                source: Some(self.source.clone()),
                details,
                ..Default::default()
            })
            .await
            .map_err(ServiceError::Audit)?;
        Ok(())
    }

    /// Sign a transcript in the HSM and record it (`ceremony.transcript`:
    /// digest, signature, ceremony name, outcome). The signature is made
    /// before the record because the record carries it; it is handed out
    /// only once the record is written (fail closed).
    pub async fn record_transcript(
        &self,
        actor: &Actor,
        transcript: Transcript,
    ) -> Result<SignedTranscript, ServiceError> {
        let key = self.transcript_key().await?;
        let digest = transcript.digest()?;
        let msg = Transcript::message(&digest);
        let signature = self
            .on_hsm(move |h| h.sign(&key, SignAlg::EcdsaP256Sha256, &msg))
            .await
            .map(hex::encode_upper)?;
        let public_key = self
            .on_hsm(move |h| h.public_key(&key))
            .await
            .map(hex::encode_upper)?;
        let mut act = super::audited::Act::change(actor, TRANSCRIPT_ACTION)
            .with_request_id(&transcript.run_id)
            .detail("ceremony", transcript.ceremony.clone())
            .detail("run", transcript.run_id.clone())
            .detail("outcome", transcript.outcome.as_str())
            .detail("digest", digest.clone())
            .detail("signature", signature.clone())
            .detail("steps", transcript.steps.len().to_string())
            .detail(
                "people",
                transcript
                    .people
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
            );
        if let Some(t) = transcript.parameters.get("tenant") {
            act = act.detail("tenant", t.clone());
        }
        let signed = SignedTranscript {
            transcript,
            digest,
            signature,
            public_key,
        };
        self.audited(
            act,
            async { Ok(signed) },
            super::audited::no_mentions::<SignedTranscript>,
        )
        .await
    }

    /// Check a transcript file: its digest, its signature under the KMS's
    /// transcript key (taken from the token, not from the file), and that
    /// the trail holds a successful `ceremony.transcript` record of exactly
    /// this digest and signature.
    pub async fn verify_transcript(
        &self,
        actor: &Actor,
        signed: &SignedTranscript,
    ) -> Result<TranscriptCheck, ServiceError> {
        let act = super::audited::Act::read(actor, "ceremony.verify")
            .with_request_id(&signed.transcript.run_id)
            .detail("digest", signed.digest.clone());
        self.audited(act, self.verify_now(signed), |_: &TranscriptCheck| {
            Vec::new()
        })
        .await
    }

    async fn verify_now(&self, signed: &SignedTranscript) -> Result<TranscriptCheck, ServiceError> {
        let digest = signed.transcript.digest()?;
        let digest_matches = digest.eq_ignore_ascii_case(&signed.digest);
        let public = self.transcript_public_key().await?;
        let signature_valid = verify_signature(&public, &digest, &signed.signature);
        let records = self
            .store
            .audit_search(&AuditFilter {
                action: Some(TRANSCRIPT_ACTION.into()),
                outcome: Some(Outcome::Success),
                request_id: Some(signed.transcript.run_id.clone()),
                ..Default::default()
            })
            .await?;
        let audit_seq = records
            .iter()
            .find(|r| {
                r.event.details.get("digest").map(String::as_str) == Some(digest.as_str())
                    && r.event.details.get("signature").map(String::as_str)
                        == Some(signed.signature.as_str())
            })
            .map(|r| r.seq);
        Ok(TranscriptCheck {
            digest_matches,
            signature_valid,
            audit_seq,
        })
    }
}

/// ECDSA P-256 over `Transcript::message(digest)`, with a SEC1 public point.
pub fn verify_signature(public_sec1: &[u8], digest: &str, signature_hex: &str) -> bool {
    use p256::ecdsa::signature::Verifier;
    let Ok(key) = p256::ecdsa::VerifyingKey::from_sec1_bytes(public_sec1) else {
        return false;
    };
    let Ok(sig_bytes) = hex::decode(signature_hex) else {
        return false;
    };
    let Ok(sig) = p256::ecdsa::Signature::from_slice(&sig_bytes) else {
        return false;
    };
    key.verify(&Transcript::message(digest), &sig).is_ok()
}
