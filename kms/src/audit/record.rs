//! An audit record and its canonical form.
//!
//! A record says who did what to which key, when, with whose approval, and
//! how it ended. It never holds key material, PINs, shares or a full PAN
//! (PANs appear masked, with a keyed hash so one card's history can still be
//! followed). Records form a hash chain: `hash = SHA-256(canonical)`, where
//! the canonical form includes the previous record's hash; each record's hash
//! is also MACed in the HSM with the audit key (requirements TSM-AC-2, INT-1).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// The hash that precedes the first record of a chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// How an act ended. `Attempt` is the write-ahead record of a change, written
/// before the act; its outcome follows in a second record with the same
/// request id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Attempt,
    Success,
    Refused,
    Failure,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Attempt => "attempt",
            Outcome::Success => "success",
            Outcome::Refused => "refused",
            Outcome::Failure => "failure",
        }
    }
}

impl std::str::FromStr for Outcome {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "attempt" => Ok(Outcome::Attempt),
            "success" => Ok(Outcome::Success),
            "refused" => Ok(Outcome::Refused),
            "failure" => Ok(Outcome::Failure),
            other => Err(format!("unknown outcome {other:?}")),
        }
    }
}

/// A key an act touched: name, version and check value, never the value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyMention {
    pub tenant: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kcv: Option<String>,
}

/// What the caller of the audit log supplies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct AuditEvent {
    /// A person (custodian name, certificate fingerprint) or a system actor.
    pub actor: String,
    /// The role the actor acted in (operator, custodian, security-officer,
    /// provisioner, system).
    pub role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// A dotted name: `key.create`, `request.approve`, `cli.key.list`, ...
    pub action: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<KeyMention>,
    /// Ties an attempt to its outcome, and an API request to its records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    pub outcome: Option<Outcome>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Where the act came from: a peer address, `cli`, `ceremony`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Further facts (approvers, digest, masked PAN and its keyed hash, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub details: BTreeMap<String, String>,
}

/// A record as stored and exported (one JSON object per line in exports).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: u64,
    /// RFC 3339, UTC.
    pub at: String,
    /// The KMS node that wrote it.
    pub node: String,
    #[serde(flatten)]
    pub event: AuditEvent,
    /// Hash of the previous record (GENESIS for the first).
    pub prev: String,
    /// SHA-256 of the canonical form, upper-case hex.
    pub hash: String,
    /// HMAC-SHA256 of `hash` under the HSM audit key, upper-case hex; empty
    /// for records written under the security officer's login, which cannot
    /// use the user's audit key (the chain and the next signed checkpoint
    /// still cover them).
    pub mac: String,
}

/// The fields that the hash covers, in a fixed order. serde_json writes
/// struct fields in declaration order and BTreeMaps sorted, so this is
/// deterministic without a separate canonicalization library.
#[derive(Serialize)]
struct Canonical<'a> {
    v: u8,
    seq: u64,
    at: &'a str,
    node: &'a str,
    event: &'a AuditEvent,
    prev: &'a str,
}

impl AuditRecord {
    /// The bytes the hash covers.
    pub fn canonical(seq: u64, at: &str, node: &str, event: &AuditEvent, prev: &str) -> Vec<u8> {
        let c = Canonical {
            v: 1,
            seq,
            at,
            node,
            event,
            prev,
        };
        // Serializing plain strings, integers and maps cannot fail.
        serde_json::to_vec(&c).unwrap_or_default()
    }

    pub fn compute_hash(seq: u64, at: &str, node: &str, event: &AuditEvent, prev: &str) -> String {
        hex::encode_upper(Sha256::digest(Self::canonical(seq, at, node, event, prev)))
    }

    /// Whether the stored hash matches the content.
    pub fn hash_ok(&self) -> bool {
        Self::compute_hash(self.seq, &self.at, &self.node, &self.event, &self.prev) == self.hash
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ev() -> AuditEvent {
        AuditEvent {
            actor: "alice".into(),
            role: "operator".into(),
            action: "key.create".into(),
            outcome: Some(Outcome::Success),
            ..Default::default()
        }
    }

    #[test]
    fn hash_covers_every_field() {
        let h = AuditRecord::compute_hash(1, "2026-01-01T00:00:00Z", "n1", &ev(), GENESIS);
        let mut e = ev();
        e.actor = "mallory".into();
        assert_ne!(
            h,
            AuditRecord::compute_hash(1, "2026-01-01T00:00:00Z", "n1", &e, GENESIS)
        );
        assert_ne!(
            h,
            AuditRecord::compute_hash(2, "2026-01-01T00:00:00Z", "n1", &ev(), GENESIS)
        );
        let mut e = ev();
        e.details.insert("approvers".into(), "bob".into());
        assert_ne!(
            h,
            AuditRecord::compute_hash(1, "2026-01-01T00:00:00Z", "n1", &e, GENESIS)
        );
    }

    #[test]
    fn json_round_trip_keeps_the_hash() {
        let e = ev();
        let at = "2026-01-01T00:00:00Z";
        let r = AuditRecord {
            seq: 1,
            at: at.into(),
            node: "n1".into(),
            hash: AuditRecord::compute_hash(1, at, "n1", &e, GENESIS),
            event: e,
            prev: GENESIS.into(),
            mac: String::new(),
        };
        let line = serde_json::to_string(&r).unwrap();
        let back: AuditRecord = serde_json::from_str(&line).unwrap();
        assert!(back.hash_ok());
        assert_eq!(back, r);
    }
}
