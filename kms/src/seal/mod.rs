//! The seal (issue 5, KM-2, TSM-AC-3): nobody alone can start the KMS.
//!
//! The token's user PIN is [`token_pin`]`(S)`, where S is a 32-byte
//! unseal secret from the token's generator, split into N Shamir shares
//! of which any M rebuild it (`crypto::shares`). Sealing changes the PIN
//! from the file PIN to that value (C_SetPIN), after which the PIN file
//! opens nothing and is deleted; S itself is never stored, only check
//! values that recognise a presented share and confirm the combined secret
//! (`store::seal`). A deployment whose database holds a seal starts
//! sealed: the [`Unsealer`] collects shares from custodians, each
//! presentation recorded (accepted or refused, without the token), and
//! with M of them logs in and opens the service.
//!
//! The security officer's PIN is not sealed: trusted-KEK ceremony steps log
//! in as SO from its own PIN source, under dual control.
//!
//! The KeyService side (initialize, rotate, re-key; audited like every act)
//! is in `service/seal.rs`.

mod pin;
mod unsealer;

pub use pin::token_pin;
pub use unsealer::{UnsealProgress, Unsealer};

use crate::audit::AuditError;
use crate::crypto::{Share, SharesError};
use crate::hsm::HsmError;
use crate::service::ServiceError;
use crate::store::{SealRecord, StoreError};

/// Why a share was refused or the unseal did not complete. Never holds any
/// part of a share, the secret or the PIN.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UnsealError {
    #[error("the KMS is not sealed: there is no seal configuration in the database")]
    NotSealed,
    #[error("the KMS is unsealed already")]
    AlreadyUnsealed,
    /// Unparsable text (mistyped, truncated, not a share).
    #[error("{0}")]
    Unparsable(SharesError),
    #[error(
        "share {index} belongs to split {got}, not to the seal in force (generation {generation}, split {expected}): it is an old or foreign share"
    )]
    OtherSplit {
        index: u8,
        got: String,
        expected: String,
        generation: u32,
    },
    #[error("share {index} says {got} shares are needed; the seal in force needs {expected}")]
    OtherThreshold { index: u8, got: u8, expected: u8 },
    /// The share's check value is not the one recorded for its index.
    #[error("share {index} is not the share recorded for that index (check value mismatch)")]
    WrongShare { index: u8 },
    #[error("share {index} was presented already")]
    Duplicate { index: u8 },
    #[error("all {need} shares needed are in already")]
    Enough { need: u8 },
    #[error("{have} of {need} shares are in; {} more needed", need - have)]
    TooFew { have: u8, need: u8 },
    #[error("the shares do not combine into the unseal secret: {0}")]
    Combine(SharesError),
    #[error("the combined secret's check value does not match the seal's: {0}")]
    SecretMismatch(SharesError),
    #[error("the token refused the derived PIN: {0}")]
    Login(HsmError),
    #[error("the seal configuration in the database changed while shares were presented")]
    Changed,
    /// Fail closed: the presentation could not be recorded, so it did not count.
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Service(#[from] ServiceError),
}

impl UnsealError {
    /// A refusal of what was presented, as opposed to a failure of the KMS.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            UnsealError::Unparsable(_)
                | UnsealError::OtherSplit { .. }
                | UnsealError::OtherThreshold { .. }
                | UnsealError::WrongShare { .. }
                | UnsealError::Duplicate { .. }
                | UnsealError::Enough { .. }
                | UnsealError::TooFew { .. }
                | UnsealError::NotSealed
                | UnsealError::AlreadyUnsealed
        )
    }
}

/// Where the seal stands, for `kms seal status` and `GET /v1/seal`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SealStatus {
    /// Whether a seal is configured at all.
    pub initialized: bool,
    /// Whether the service is still waiting for shares.
    pub sealed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub split_id: Option<String>,
    /// Shares presented so far (while sealed).
    pub have: u8,
    /// M (0 without a seal).
    pub need: u8,
    /// N (0 without a seal).
    pub shares: u8,
}

impl SealStatus {
    pub fn of(rec: Option<&SealRecord>, sealed: bool, have: u8) -> SealStatus {
        SealStatus {
            initialized: rec.is_some(),
            sealed,
            generation: rec.map(|r| r.generation),
            split_id: rec.map(|r| r.split_id.clone()),
            have,
            need: rec.map(|r| r.threshold).unwrap_or(0),
            shares: rec.map(|r| r.shares).unwrap_or(0),
        }
    }
}

/// Whether `share` is one of the split in force: its split id, its M, and
/// its check value against the one recorded for its index. Nothing is
/// combined; a share passing this is the one handed out at that index.
pub(crate) fn check_share(rec: &SealRecord, share: &Share) -> Result<(), UnsealError> {
    let index = share.index();
    let got = share.split_id().to_string();
    if got != rec.split_id {
        return Err(UnsealError::OtherSplit {
            index,
            got,
            expected: rec.split_id.clone(),
            generation: rec.generation,
        });
    }
    if share.threshold() != rec.threshold {
        return Err(UnsealError::OtherThreshold {
            index,
            got: share.threshold(),
            expected: rec.threshold,
        });
    }
    match rec.share_check(index) {
        Some(c) if c == share.check_value() => Ok(()),
        _ => Err(UnsealError::WrongShare { index }),
    }
}

/// Check each of `shares` against the seal in force and combine them into
/// the secret, confirmed by its recorded check value.
pub(crate) fn rebuild(
    rec: &SealRecord,
    shares: &[Share],
) -> Result<crate::crypto::UnsealSecret, UnsealError> {
    for (i, s) in shares.iter().enumerate() {
        check_share(rec, s)?;
        if shares[..i].iter().any(|p| p.index() == s.index()) {
            return Err(UnsealError::Duplicate { index: s.index() });
        }
    }
    let have = u8::try_from(shares.len()).unwrap_or(u8::MAX);
    if have < rec.threshold {
        return Err(UnsealError::TooFew {
            have,
            need: rec.threshold,
        });
    }
    let secret = crate::crypto::shares::combine(shares).map_err(UnsealError::Combine)?;
    secret
        .verify_check_value(&rec.secret_check)
        .map_err(UnsealError::SecretMismatch)?;
    Ok(secret)
}
