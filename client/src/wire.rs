//! What travels between a provisioning service and the KMS (`/v1/...` on the
//! provisioning listener). JSON; binary values as upper-case hex (lower case
//! is accepted on input); unknown fields are refused, so a misspelt field is
//! an error rather than a silently ignored one.
//!
//! Every provisioning request carries two headers, [`REQUEST_ID`] and
//! [`TIMESTAMP`] (REPLAY-1); every answer, errors included, carries
//! [`REQUEST_ID`] back and a detached ECDSA P-256 signature
//! ([`SIGNATURE`]) over [`signed_message`] (INT-1).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[cfg(feature = "openapi")]
use utoipa::ToSchema;

/// Request header: the caller's unique id of this request (8 to 64
/// characters of `A-Z a-z 0-9 - _ . :`). A request id seen before from the
/// same principal is refused (`replayed-request`), across restarts and
/// nodes.
pub const REQUEST_ID: &str = "kms-request-id";
/// Request header: when the caller sent the request, RFC 3339 (UTC). Outside
/// the server's window (default ±300 s) it is refused (`stale-request`).
pub const TIMESTAMP: &str = "kms-timestamp";
/// Response header: upper-case hex of the 64-byte ECDSA P-256 signature
/// (r || s, SHA-256) over [`signed_message`], made in the HSM.
pub const SIGNATURE: &str = "kms-signature";
/// Response header: the signing key's id, [`key_id`] of its public key.
pub const SIGNATURE_KEY: &str = "kms-signature-key";

/// Domain separation: a response signature can never be mistaken for an
/// audit checkpoint signature or anything else the KMS signs.
pub const SIGNATURE_CONTEXT: &[u8] = b"KMS-RESPONSE-V1\n";

/// The bytes a response signature covers: the context, the request id
/// (empty when the request had none), a newline, and the exact body bytes.
pub fn signed_message(request_id: &str, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNATURE_CONTEXT.len() + request_id.len() + 1 + body.len());
    m.extend_from_slice(SIGNATURE_CONTEXT);
    m.extend_from_slice(request_id.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(body);
    m
}

/// A public key's id: upper-case hex SHA-256 of its SEC1 uncompressed point.
pub fn key_id(sec1_point: &[u8]) -> String {
    hex::encode_upper(Sha256::digest(sec1_point))
}

/// How an SCP02 card's static keys come from the key set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum Scp02Diversification {
    /// The key set is the card's own static keys: `<key_set>-enc`, `-mac`, `-dek`.
    None,
    /// The key set is a 2-key TDES KMC, diversified by EMV CPS 1.1 with the KDD.
    EmvCps11,
    /// The key set is a 2-key TDES KMC, diversified by VISA2 with the KDD.
    Visa2,
}

/// How an SCP03 card's static keys come from the key set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum Scp03Diversification {
    /// The key set is the card's own static keys: `<key_set>-enc`, `-mac`, `-dek`.
    None,
    /// The key set is an AES KMC, diversified by GlobalPlatform's KDF ("KDF3").
    Kdf3,
}

/// Open an SCP02 secure channel (GlobalPlatform 2.2 E.4): the values from
/// the card's INITIALIZE UPDATE response and the host challenge sent in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Scp02SessionRequest {
    /// The tenant whose keys to use; defaults to the caller's own. Another
    /// tenant's is always refused (KM-4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The key set: a KMC's name, or the prefix of `-enc`/`-mac`/`-dek`.
    pub key_set: String,
    pub diversification: Scp02Diversification,
    /// Key diversification data (10 bytes, 20 hex) from INITIALIZE UPDATE;
    /// required when diversifying.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kdd: Option<String>,
    /// The card's sequence counter (2 bytes, 4 hex); must increase per card.
    pub sequence_counter: String,
    /// 8 bytes, 16 hex.
    pub host_challenge: String,
    /// 6 bytes, 12 hex.
    pub card_challenge: String,
    /// 8 bytes, 16 hex: checked before anything is derived for the caller.
    pub card_cryptogram: String,
    /// The caller's trusted transport KEK, under which every key leaves.
    pub transport_kek: String,
}

/// Open an SCP03 secure channel (GlobalPlatform Amendment D).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Scp03SessionRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub key_set: String,
    pub diversification: Scp03Diversification,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kdd: Option<String>,
    /// 8 bytes, 16 hex.
    pub host_challenge: String,
    /// 8 bytes, 16 hex. A challenge the card used before is flagged.
    pub card_challenge: String,
    /// 8 bytes, 16 hex.
    pub card_cryptogram: String,
    pub transport_kek: String,
}

/// One key, wrapped under the transport KEK.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct WrappedKey {
    /// Which key: `s-enc`, `c-mac`, `icc-mk-ac`, ...
    pub kind: String,
    /// Upper-case hex of the wrapped key.
    pub wrapped: String,
    /// The key's check value (3 bytes, upper-case hex): read it to the card
    /// or compare it after unwrapping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kcv: Option<String>,
}

/// The transport KEK the keys are wrapped under, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Wrapping {
    pub transport_kek: String,
    /// The mechanism: `aes-kwp` for an AES transport KEK, `tdes-cbc` for a
    /// TDES one (a trusted transport KEK is always a secret key).
    pub algorithm: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Scp02SessionResponse {
    pub s_enc: WrappedKey,
    pub c_mac: WrappedKey,
    pub r_mac: WrappedKey,
    pub dek: WrappedKey,
    /// 8 bytes, 16 hex, for EXTERNAL AUTHENTICATE.
    pub host_cryptogram: String,
    /// True when this card challenge was seen before for this card (see
    /// [`Scp03SessionResponse::card_challenge_reused`]).
    pub card_challenge_reused: bool,
    pub wrapping: Wrapping,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Scp03SessionResponse {
    pub s_enc: WrappedKey,
    pub s_mac: WrappedKey,
    pub s_rmac: WrappedKey,
    /// The card's static DEK, for PUT KEY.
    pub static_dek: WrappedKey,
    pub host_cryptogram: String,
    /// True when this card challenge was seen before for this card: the
    /// session is served, the trail flags it, and the caller should treat
    /// the card as suspect.
    pub card_challenge_reused: bool,
    pub wrapping: Wrapping,
}

/// EMV ICC master keys for one card, to personalize into one Security
/// Domain (TSM-DATA-1: an SD receives keys for one card only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct EmvCardKeysRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The issuer master keys' prefix: `<issuer_keys>-ac`, `-smi`, `-smc`.
    pub issuer_keys: String,
    /// 12 to 19 digits. Never logged or recorded in clear.
    pub pan: String,
    /// PAN sequence number, 0 to 99.
    pub psn: u8,
    /// The Secure Element's id (CPLC or SEID), 1 to 32 bytes, hex.
    pub se_id: String,
    /// The Security Domain's AID, 5 to 16 bytes, hex.
    pub sd_aid: String,
    pub transport_kek: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct EmvCardKeysResponse {
    /// First six and last four digits.
    pub pan_masked: String,
    pub psn: u8,
    pub icc_mk_ac: WrappedKey,
    pub icc_mk_smi: WrappedKey,
    pub icc_mk_smc: WrappedKey,
    /// `new` when this request bound the SD to this card, `existing` when it
    /// was already bound to it.
    pub binding: String,
    pub wrapping: Wrapping,
}

/// What a caller may know of a key: never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct KeyMetadata {
    pub tenant: String,
    pub name: String,
    pub usage: String,
    pub algorithm: String,
    pub version: u32,
    /// NIST SP 800-57 state: `pre-activation`, `active`, `suspended`,
    /// `deactivated`, `compromised`, `destroyed`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kcv: Option<String>,
    pub exportable: bool,
    pub trusted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activated_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct KeyList {
    pub keys: Vec<KeyMetadata>,
}

/// The response-signing key (INT-1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct SigningKey {
    /// `ecdsa-p256-sha256`.
    pub algorithm: String,
    /// [`key_id`] of the public key: the `kms-signature-key` header.
    pub key_id: String,
    /// SubjectPublicKeyInfo, PEM.
    pub public_key_pem: String,
}

/// RFC 9457 problem details, with a stable `code` to branch on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    /// Stable: `replayed-request`, `stale-request`, `card-cryptogram`, ...
    pub code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signed_message_binds_the_request_id_to_the_body() {
        assert_eq!(
            signed_message("r-1", b"{}"),
            b"KMS-RESPONSE-V1\nr-1\n{}".to_vec()
        );
        assert_ne!(signed_message("r-1", b"2{}"), signed_message("r-12", b"{}"));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = serde_json::from_str::<Scp03SessionRequest>(
            r#"{"key_set":"k","diversification":"none","host_challenge":"","card_challenge":"","card_cryptogram":"","transport_kek":"t","extra":1}"#,
        );
        assert!(e.is_err());
    }
}
