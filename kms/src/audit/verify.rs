//! Chain verification: pure, offline-capable. Given the records in storage
//! order, the checkpoints and the signing public key, it names every damaged
//! record and the kind of damage.

use super::{AuditRecord, Checkpoint, Damage, DamageKind, VerifyReport, GENESIS};
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use std::collections::BTreeMap;

/// One stored record: where it was (the database's seq column, or the line
/// number of an export) and what it says (or why it could not be read).
pub struct Stored {
    pub position: u64,
    /// For database rows: the seq column, which must agree with the body.
    pub column_seq: Option<u64>,
    pub record: Result<AuditRecord, String>,
}

/// Where the chain under verification starts (a later segment after
/// archiving starts at `first_seq` with the previous segment's last hash).
#[derive(Debug, Clone)]
pub struct ChainStart {
    pub first_seq: u64,
    pub prev_hash: String,
}

impl Default for ChainStart {
    fn default() -> Self {
        Self {
            first_seq: 1,
            prev_hash: GENESIS.to_owned(),
        }
    }
}

/// Parse a public key given as PEM (SubjectPublicKeyInfo) or as hex of the
/// SEC1 point.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, String> {
    use p256::pkcs8::DecodePublicKey;
    let t = text.trim();
    if t.starts_with("-----BEGIN") {
        VerifyingKey::from_public_key_pem(t).map_err(|e| e.to_string())
    } else {
        let bytes = hex::decode(t).map_err(|e| e.to_string())?;
        VerifyingKey::from_sec1_bytes(&bytes).map_err(|e| e.to_string())
    }
}

/// The PEM of a SEC1 public point, for publishing.
pub fn public_key_pem(sec1: &[u8]) -> Result<String, String> {
    use p256::pkcs8::{EncodePublicKey, LineEnding};
    let key = VerifyingKey::from_sec1_bytes(sec1).map_err(|e| e.to_string())?;
    key.to_public_key_pem(LineEnding::LF)
        .map_err(|e| e.to_string())
}

pub fn verify_checkpoint(cp: &Checkpoint, key: &VerifyingKey) -> bool {
    let Ok(sig_bytes) = hex::decode(&cp.signature) else {
        return false;
    };
    let Ok(sig) = Signature::from_slice(&sig_bytes) else {
        return false;
    };
    key.verify(
        &Checkpoint::message(cp.seq, &cp.hash, &cp.at, &cp.node),
        &sig,
    )
    .is_ok()
}

fn damage(kind: DamageKind, seq: u64, detail: impl Into<String>) -> Damage {
    Damage {
        kind,
        seq,
        detail: detail.into(),
    }
}

/// Verify a chain. `head` is the head the database recorded (seq, hash), if
/// any; `key` the checkpoint public key (without it signatures are not
/// checked and the report says so through `checkpoints_verified`).
pub fn verify_chain(
    stored: Vec<Stored>,
    checkpoints: &[Checkpoint],
    key: Option<&VerifyingKey>,
    head: Option<(u64, String)>,
    start: Option<&ChainStart>,
) -> VerifyReport {
    let mut report = VerifyReport::default();
    let mut found: Vec<Damage> = Vec::new();
    let start = match start {
        Some(s) => s.clone(),
        None => infer_start(&stored, checkpoints, key, &mut found),
    };
    let mut records: Vec<(u64, AuditRecord)> = Vec::new();

    // 1. Each record on its own, and storage order.
    let mut last_seen: Option<u64> = None;
    for s in stored {
        report.records += 1;
        let rec = match s.record {
            Ok(r) => r,
            Err(why) => {
                let seq = s.column_seq.unwrap_or(s.position);
                found.push(damage(
                    DamageKind::Changed,
                    seq,
                    format!("unreadable record: {why}"),
                ));
                continue;
            }
        };
        if !rec.hash_ok() {
            found.push(damage(
                DamageKind::Changed,
                rec.seq,
                "content does not match its hash",
            ));
        }
        if let Some(col) = s.column_seq {
            if col != rec.seq {
                found.push(damage(
                    DamageKind::Reordered,
                    rec.seq,
                    format!("stored at position {col}"),
                ));
            }
        } else if let Some(prev) = last_seen {
            if rec.seq < prev {
                found.push(damage(
                    DamageKind::Reordered,
                    rec.seq,
                    format!("appears after record {prev}"),
                ));
            }
        }
        last_seen = Some(rec.seq);
        records.push((s.position, rec));
    }

    // 2. In sequence order: duplicates, gaps, links.
    let mut by_seq: BTreeMap<u64, Vec<AuditRecord>> = BTreeMap::new();
    for (_, r) in records {
        by_seq.entry(r.seq).or_default().push(r);
    }
    let mut expect_seq = start.first_seq;
    let mut prev_hash = start.prev_hash.clone();
    let mut chain: BTreeMap<u64, String> = BTreeMap::new();
    for (seq, mut recs) in by_seq {
        if recs.len() > 1 {
            // Keep the one that links to its predecessor; the rest were inserted.
            recs.sort_by_key(|r| r.prev != prev_hash || !r.hash_ok());
            for extra in &recs[1..] {
                found.push(damage(
                    DamageKind::Inserted,
                    seq,
                    format!(
                        "a second record with this number (hash {}…)",
                        &extra.hash[..12.min(extra.hash.len())]
                    ),
                ));
            }
        }
        let r = &recs[0];
        if seq > expect_seq {
            let what = if seq - expect_seq == 1 {
                format!("record {expect_seq} is missing")
            } else {
                format!("records {expect_seq}..{} are missing", seq - 1)
            };
            found.push(damage(DamageKind::Deleted, expect_seq, what));
        } else if r.prev != prev_hash {
            // Consecutive numbers, broken link: the previous record was
            // replaced (content changed and re-hashed) or this one forged.
            let at = seq.saturating_sub(1).max(start.first_seq);
            if !found
                .iter()
                .any(|d| d.seq == at && d.kind == DamageKind::Changed)
            {
                found.push(damage(
                    DamageKind::Changed,
                    at,
                    format!("record {seq} does not link to it: it was altered and re-hashed"),
                ));
            }
        }
        if seq < start.first_seq {
            found.push(damage(
                DamageKind::Inserted,
                seq,
                "numbered before the chain's start",
            ));
        }
        chain.insert(seq, r.hash.clone());
        prev_hash = r.hash.clone();
        expect_seq = seq + 1;
        report.first_seq.get_or_insert(seq);
        report.last_seq = Some(seq);
    }

    // 3. The tail: against the recorded head and the checkpoints.
    let last = report.last_seq.unwrap_or(start.first_seq.saturating_sub(1));
    if let Some((head_seq, _)) = &head {
        // Appends go through the head; a row past it was put there by hand.
        for (seq, _) in chain.range(head_seq + 1..) {
            found.push(damage(
                DamageKind::Inserted,
                *seq,
                format!("past the chain's recorded head ({head_seq})"),
            ));
        }
        if *head_seq > last {
            found.push(damage(
                DamageKind::TruncatedTail,
                last + 1,
                format!("the chain ends at {last} but its head says {head_seq}"),
            ));
        }
    }
    report.checkpoints = checkpoints.len() as u64;
    let mut truncated_reported = head.as_ref().is_some_and(|(s, _)| *s > last);
    for cp in checkpoints {
        match key {
            Some(k) if verify_checkpoint(cp, k) => report.checkpoints_verified += 1,
            Some(_) => found.push(damage(
                DamageKind::BadSignature,
                cp.seq,
                "checkpoint signature does not verify",
            )),
            None => {}
        }
        if cp.seq > last {
            if !truncated_reported {
                found.push(damage(
                    DamageKind::TruncatedTail,
                    last + 1,
                    format!(
                        "the chain ends at {last} but a signed checkpoint covers {}",
                        cp.seq
                    ),
                ));
                truncated_reported = true;
            }
        } else if let Some(h) = chain.get(&cp.seq) {
            if *h != cp.hash {
                found.push(damage(
                    DamageKind::BadSignature,
                    cp.seq,
                    "the checkpoint names a different hash for this record",
                ));
            }
        }
    }
    found.sort_by_key(|d| (d.seq, d.kind as u8));
    found.dedup();
    report.damage = found;
    report
}

/// Where a chain starts when nobody says: at record 1 from GENESIS, or, for
/// a chain whose older records were archived, at its first record — but only
/// if a signed checkpoint vouches for the record just before it (its hash is
/// the first record's link). Otherwise the missing prefix is reported: a
/// forged archive boundary cannot hide records.
fn infer_start(
    stored: &[Stored],
    checkpoints: &[Checkpoint],
    key: Option<&VerifyingKey>,
    found: &mut Vec<Damage>,
) -> ChainStart {
    let first = stored
        .iter()
        .filter_map(|s| s.record.as_ref().ok())
        .min_by_key(|r| r.seq);
    let Some(first) = first else {
        return ChainStart::default();
    };
    if first.seq <= 1 {
        return ChainStart::default();
    }
    // Both a signed checkpoint at the cut and the trail's own record of the
    // archiving: a checkpoint alone exists at many places, and deleting
    // the records up to one of them must not pass for an archive.
    let through = (first.seq - 1).to_string();
    let archived = stored
        .iter()
        .filter_map(|s| s.record.as_ref().ok())
        .any(|r| {
            r.event.action == "audit.archive" && r.event.details.get("through") == Some(&through)
        });
    let vouched = archived
        && checkpoints.iter().any(|c| {
            c.seq + 1 == first.seq
                && c.hash == first.prev
                && key.is_some_and(|k| verify_checkpoint(c, k))
        });
    if !vouched {
        found.push(damage(
            DamageKind::Deleted,
            1,
            format!(
                "records 1..{} are not here and no signed checkpoint vouches for where the chain starts",
                first.seq - 1
            ),
        ));
    }
    ChainStart {
        first_seq: first.seq,
        prev_hash: first.prev.clone(),
    }
}

/// Records of a JSON Lines export, in file order.
pub fn stored_from_jsonl(text: &str) -> Vec<Stored> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| Stored {
            position: i as u64 + 1,
            column_seq: None,
            record: serde_json::from_str(l).map_err(|e| e.to_string()),
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::audit::{AuditEvent, Outcome};
    use p256::ecdsa::signature::Signer;
    use p256::ecdsa::SigningKey;

    fn chain(n: u64) -> Vec<AuditRecord> {
        let mut prev = GENESIS.to_owned();
        (1..=n)
            .map(|seq| {
                let event = AuditEvent {
                    actor: format!("actor{}", seq % 3),
                    role: "operator".into(),
                    action: "key.create".into(),
                    outcome: Some(Outcome::Success),
                    ..Default::default()
                };
                let at = format!("2026-01-01T00:00:{:02}Z", seq % 60);
                let hash = AuditRecord::compute_hash(seq, &at, "n1", &event, &prev);
                let r = AuditRecord {
                    seq,
                    at,
                    node: "n1".into(),
                    event,
                    prev: prev.clone(),
                    hash: hash.clone(),
                    mac: String::new(),
                };
                prev = hash;
                r
            })
            .collect()
    }

    fn key() -> SigningKey {
        SigningKey::from_slice(&[7u8; 32]).unwrap()
    }

    fn checkpoint(r: &AuditRecord) -> Checkpoint {
        let at = "2026-01-02T00:00:00Z";
        let sig: Signature = key().sign(&Checkpoint::message(r.seq, &r.hash, at, "n1"));
        Checkpoint {
            seq: r.seq,
            hash: r.hash.clone(),
            at: at.into(),
            node: "n1".into(),
            signature: hex::encode_upper(sig.to_bytes()),
        }
    }

    fn stored(recs: &[AuditRecord]) -> Vec<Stored> {
        recs.iter()
            .enumerate()
            .map(|(i, r)| Stored {
                position: i as u64 + 1,
                column_seq: None,
                record: Ok(r.clone()),
            })
            .collect()
    }

    fn run(recs: &[AuditRecord], cps: &[Checkpoint]) -> VerifyReport {
        let vk = *key().verifying_key();
        verify_chain(stored(recs), cps, Some(&vk), None, None)
    }

    fn only(report: &VerifyReport, kind: DamageKind, seq: u64) {
        assert!(
            report.damage.iter().any(|d| d.kind == kind && d.seq == seq),
            "expected {kind:?} at {seq}: {:?}",
            report.damage
        );
        assert!(
            report.damage.iter().all(|d| d.seq == seq || d.kind == kind),
            "unexpected damage: {:?}",
            report.damage
        );
    }

    #[test]
    fn tsm_ac2_untouched_chain_verifies() {
        let c = chain(50);
        let r = run(&c, &[checkpoint(&c[49])]);
        assert!(r.ok(), "{:?}", r.damage);
        assert_eq!(r.checkpoints_verified, 1);
        assert_eq!((r.first_seq, r.last_seq), (Some(1), Some(50)));
    }

    #[test]
    fn tsm_ac2_changed_record_is_named() {
        let mut c = chain(20);
        c[9].event.actor = "mallory".into();
        only(&run(&c, &[]), DamageKind::Changed, 10);
        // Changed and re-hashed: the next record's link names it.
        let mut c = chain(20);
        c[9].event.actor = "mallory".into();
        c[9].hash = AuditRecord::compute_hash(10, &c[9].at, "n1", &c[9].event, &c[9].prev);
        only(&run(&c, &[]), DamageKind::Changed, 10);
    }

    #[test]
    fn tsm_ac2_deleted_record_is_named() {
        let mut c = chain(20);
        c.remove(6);
        only(&run(&c, &[]), DamageKind::Deleted, 7);
    }

    #[test]
    fn tsm_ac2_inserted_record_is_named() {
        let mut c = chain(20);
        let mut forged = c[4].clone();
        forged.event.actor = "mallory".into();
        forged.hash = AuditRecord::compute_hash(5, &forged.at, "n1", &forged.event, &forged.prev);
        c.insert(5, forged);
        let r = run(&c, &[]);
        assert!(
            r.damage
                .iter()
                .any(|d| d.kind == DamageKind::Inserted && d.seq == 5),
            "{:?}",
            r.damage
        );
    }

    #[test]
    fn tsm_ac2_reordered_records_are_named() {
        let mut c = chain(20);
        c.swap(11, 12);
        let r = run(&c, &[]);
        assert!(
            r.damage
                .iter()
                .any(|d| d.kind == DamageKind::Reordered && d.seq == 12),
            "{:?}",
            r.damage
        );
        assert!(
            r.damage.iter().all(|d| d.kind == DamageKind::Reordered),
            "{:?}",
            r.damage
        );
    }

    #[test]
    fn tsm_ac2_truncated_tail_is_found_against_a_checkpoint() {
        let c = chain(30);
        let cp = checkpoint(&c[29]);
        only(&run(&c[..25], &[cp]), DamageKind::TruncatedTail, 26);
    }

    #[test]
    fn tsm_ac2_bad_signature_is_found() {
        let c = chain(10);
        let mut cp = checkpoint(&c[9]);
        cp.signature.replace_range(
            0..2,
            if cp.signature.starts_with("00") {
                "11"
            } else {
                "00"
            },
        );
        only(&run(&c, &[cp]), DamageKind::BadSignature, 10);
        // A valid signature over another chain's hash is caught too.
        let mut other = chain(10);
        other[9].event.actor = "x".into();
        other[9].hash =
            AuditRecord::compute_hash(10, &other[9].at, "n1", &other[9].event, &other[9].prev);
        let r = run(&c, &[checkpoint(&other[9])]);
        only(&r, DamageKind::BadSignature, 10);
    }

    #[test]
    fn public_key_pem_round_trips() {
        let vk = key().verifying_key().to_encoded_point(false);
        let pem = public_key_pem(vk.as_bytes()).unwrap();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"));
        assert_eq!(parse_public_key(&pem).unwrap(), *key().verifying_key());
        assert_eq!(
            parse_public_key(&hex::encode(vk.as_bytes())).unwrap(),
            *key().verifying_key()
        );
    }
}
