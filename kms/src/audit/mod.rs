//! The audit trail: every act recorded, write-ahead and fail-closed, in a
//! hash chain whose records are MACed in the HSM and whose checkpoints are
//! signed in the HSM (ECDSA P-256), verifiable offline with only the public
//! key. Requirements TSM-AC-2, KM-2, KM-7, TSM-AC-4, INT-1.

mod log;
mod record;
mod report;
mod verify;

pub use log::{AuditError, AuditLog, CHECKPOINT_EVERY, SYSTEM_TENANT};
pub use record::{AuditEvent, AuditRecord, KeyMention, Outcome, GENESIS};
pub use report::render_html;
pub use verify::{
    parse_public_key, public_key_pem, stored_from_jsonl, verify_chain, verify_checkpoint,
    ChainStart, Stored,
};

use serde::{Deserialize, Serialize};

/// A signed statement "the chain had `hash` at `seq`", made in the HSM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub seq: u64,
    pub hash: String,
    /// RFC 3339, UTC.
    pub at: String,
    pub node: String,
    /// ECDSA P-256 / SHA-256 signature, r || s, upper-case hex, over
    /// `Checkpoint::message()`.
    pub signature: String,
}

impl Checkpoint {
    /// The exact bytes that are signed.
    pub fn message(seq: u64, hash: &str, at: &str, node: &str) -> Vec<u8> {
        format!("kms-audit-checkpoint v1\nseq={seq}\nhash={hash}\nat={at}\nnode={node}\n")
            .into_bytes()
    }
}

/// What kind of damage verification found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DamageKind {
    /// The record's content does not match its hash.
    Changed,
    /// Records are missing: a gap in the sequence.
    Deleted,
    /// A record that does not belong to the chain (its seq repeats, or its
    /// link to the previous record is broken while its own hash is valid).
    Inserted,
    /// Records appear out of sequence order.
    Reordered,
    /// The chain ends before a signed checkpoint (or the recorded head) says it did.
    TruncatedTail,
    /// A checkpoint signature does not verify, or a checkpoint names a hash
    /// the chain does not have at that seq.
    BadSignature,
    /// The HSM MAC of a record does not verify (online verification only).
    BadMac,
}

/// One finding, naming the exact record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Damage {
    pub kind: DamageKind,
    /// The record (or checkpoint) concerned.
    pub seq: u64,
    pub detail: String,
}

/// The result of verifying a chain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub checkpoints: u64,
    pub checkpoints_verified: u64,
    /// Records whose HSM MAC was checked (0 offline).
    pub macs_verified: u64,
    pub damage: Vec<Damage>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.damage.is_empty()
    }
}
