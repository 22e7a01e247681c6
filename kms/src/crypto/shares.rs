//! Split knowledge for the unseal secret: Shamir M-of-N shares, one per
//! custodian, and the text form a custodian writes down and types back.
//!
//! The secret is split with the `shamirsecretsharing` crate, whose shares
//! carry the secret encrypted under XSalsa20-Poly1305 with a fresh random
//! key, and Shamir shares of that key. Combining authenticates: too few
//! shares, a wrong share or shares of different splits give no secret at
//! all, never a wrong one. Around it this module adds what a ceremony
//! needs: a split id on every share so shares of different splits are
//! refused before anything is combined, refusal of duplicate indexes and
//! of fewer than M shares with a message naming the share, check values to
//! read aloud, and a typed text form with a check character per group.
//!
//! Nothing here is `Clone` or `Display` for a value, `Debug` shows only
//! indexes, split ids and check values, values live in [`Zeroizing`]
//! buffers, and no error message carries any part of a secret or a share.
//!
//! # Text form
//!
//! ```text
//! KMS1-3-2-0D5KM2QX-4F0RJ9A-...-7TQ2E3W-8ZKA
//! ```
//!
//! `KMS1`, then M (shares needed), the share's index (1 to 255), the split
//! id (8 characters), 30 groups of 7 characters, and a 4-character
//! checksum. Characters are Crockford base32 (`0-9 A-Z` without `I L O U`);
//! lower case is accepted, as are `O` for `0` and `I`/`L` for `1`; the
//! separators are `-` or white space, so a printed form may break lines
//! between groups. Each group is 6 data characters and a check character;
//! see [`Share::parse`] for what the checks catch.

use super::kcv::ct_eq;
use sha2::{Digest, Sha256};
use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;
use zeroize::{Zeroize, Zeroizing};

/// Length of the unseal secret in bytes.
pub const SECRET_LEN: usize = 32;
/// Length of one share in bytes: the crate's share, whose first byte is
/// the share's index (its x coordinate).
pub const SHARE_LEN: usize = shamirsecretsharing::SHARE_SIZE;

/// What the crate splits: the secret, then [`PLAINTEXT_TAG`], M, N and
/// zeros. The trailer travels inside the authenticated ciphertext, so the
/// M written on a share's text is checked against the M of the split.
const DATA_LEN: usize = shamirsecretsharing::DATA_SIZE;
const PLAINTEXT_TAG: &[u8; 16] = b"KMS unseal v1\0\0\0";
const TAG_AT: usize = SECRET_LEN;
const M_AT: usize = TAG_AT + PLAINTEXT_TAG.len();
const N_AT: usize = M_AT + 1;
/// Each share: the Shamir share of the AEAD key (index and 32 bytes), then
/// the ciphertext and tag, the same in every share of a split.
const KEYSHARE_LEN: usize = shamirsecretsharing::hazmat::KEYSHARE_SIZE;

const SPLIT_ID_LEN: usize = 5;

const SECRET_CHECK_DOMAIN: &[u8] = b"kms/unseal-secret/check-value/v1";
const SHARE_CHECK_DOMAIN: &[u8] = b"kms/unseal-share/check-value/v1";
const SPLIT_ID_DOMAIN: &[u8] = b"kms/unseal-share/split-id/v1";
const TEXT_CHECKSUM_DOMAIN: &[u8] = b"kms/unseal-share/text-checksum/v1";

const TEXT_PREFIX: &str = "KMS1";
/// Data characters per group of the text form.
const GROUP_DATA: usize = 6;
/// Characters per group: the data and one check character.
const GROUP_LEN: usize = GROUP_DATA + 1;
/// The share less its index byte, in base32 characters (4 padding bits).
const PAYLOAD_LEN: usize = SHARE_LEN - 1;
const PAYLOAD_SYMBOLS: usize = (PAYLOAD_LEN * 8).div_ceil(5);
const GROUPS: usize = PAYLOAD_SYMBOLS / GROUP_DATA;
const SPLIT_ID_SYMBOLS: usize = SPLIT_ID_LEN * 8 / 5;
const CHECKSUM_SYMBOLS: usize = 4;
/// Tokens of the text form: prefix, M, index, split id, groups, checksum.
const TOKENS: usize = 4 + GROUPS + 1;

// The layout above depends on the crate's sizes; a new version that
// changed them must fail to build rather than misparse.
const _: () = assert!(SHARE_LEN == 113 && DATA_LEN == 64 && KEYSHARE_LEN == 33);
const _: () = assert!(N_AT < DATA_LEN);
const _: () = assert!(PAYLOAD_SYMBOLS == GROUPS * GROUP_DATA && GROUPS == 30);
const _: () = assert!(SPLIT_ID_SYMBOLS * 5 == SPLIT_ID_LEN * 8);

/// Crockford's base32 alphabet: no `I L O U`, so nothing reads as another.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Why a secret, a split, a combination or a share's text was refused. No
/// variant holds any part of a secret or a share: these messages reach
/// terminals, logs and the audit trail. Shares are named by their index,
/// groups of the text form and characters in them by their position from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SharesError {
    #[error("the unseal secret is {expected} bytes, not {got}")]
    SecretLength { expected: usize, got: usize },
    #[error("the unseal secret is refused: {0}")]
    WeakSecret(&'static str),
    #[error("a split needs 2 <= M <= N <= 255, not M = {m} of N = {n}")]
    Threshold { m: u8, n: u8 },
    #[error("no shares were presented")]
    NoShares,
    #[error("{needed} shares are needed, {got} were presented")]
    TooFew { needed: u8, got: usize },
    #[error("share {index} was presented more than once")]
    DuplicateIndex { index: u8 },
    #[error("share {index} belongs to split {got}, the first share presented to split {expected}")]
    MixedSplits {
        index: u8,
        expected: SplitId,
        got: SplitId,
    },
    #[error(
        "share {index} says {got} shares are needed, the first share presented says {expected}"
    )]
    ThresholdMismatch { index: u8, expected: u8, got: u8 },
    /// The crate's authenticated combination failed: one of the shares is
    /// wrong (or altered), since count, split and indexes were checked.
    #[error("the shares do not combine into the unseal secret: at least one of them is wrong")]
    Rejected,
    #[error("the shares say {stated} are needed, but the split was made with M = {actual}")]
    WrongThreshold { stated: u8, actual: u8 },
    #[error("the unseal secret's check value does not match the expected {expected}")]
    CheckValueMismatch { expected: CheckValue },
    #[error("a check value is {} hex digits", 2 * CheckValue::LEN)]
    BadCheckValue,
    #[error("a share is {expected} bytes starting with an index from 1 to 255")]
    ShareBytes { expected: usize },
    #[error("this is not an unseal share: the text must start with {TEXT_PREFIX}-")]
    NotAShare,
    #[error("the {field} field of the share is not valid")]
    Field { field: &'static str },
    #[error("the share has {got} groups of characters, it should have {expected}")]
    GroupCount { expected: usize, got: usize },
    #[error("group {group} of the share has {got} characters, it should have {expected}")]
    GroupLength {
        group: usize,
        expected: usize,
        got: usize,
    },
    #[error("character {position} of group {group} is not a letter or digit used in shares")]
    Character { group: usize, position: usize },
    #[error("group {group} of the share is mistyped: a character is wrong or two are swapped")]
    GroupCheck { group: usize },
    #[error(
        "the share's checksum (its last {CHECKSUM_SYMBOLS} characters) does not match: check M, the index and the checksum"
    )]
    Checksum,
    #[error("the split id does not match the rest of the share: check the split id")]
    SplitIdMismatch,
    #[error("the share's text does not decode to a share")]
    Malformed,
    /// An error from the secret-sharing crate (its messages hold only
    /// counts and lengths).
    #[error("the secret-sharing library refused: {0}")]
    Library(String),
    #[error("internal error in the share split: {0}")]
    Internal(&'static str),
}

fn library(e: shamirsecretsharing::SSSError) -> SharesError {
    SharesError::Library(e.to_string())
}

/// A short public fingerprint: the first 3 bytes of SHA-256 over a
/// domain-separation prefix and a value, shown as 6 upper-case hex digits.
/// Equality is constant-time.
#[derive(Clone, Copy, Eq)]
pub struct CheckValue([u8; CheckValue::LEN]);

impl CheckValue {
    pub const LEN: usize = 3;

    fn compute(domain: &[u8], value: &[u8]) -> Self {
        let digest = Sha256::new()
            .chain_update(domain)
            .chain_update(value)
            .finalize();
        Self([digest[0], digest[1], digest[2]])
    }

    /// Reads a check value as recorded or read aloud: hex digits, either
    /// case, spaces ignored.
    pub fn parse_hex(s: &str) -> Result<Self, SharesError> {
        let mut out = [0u8; Self::LEN];
        let mut nibbles = s
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .map(|c| c.to_digit(16));
        for byte in out.iter_mut() {
            let (Some(Some(hi)), Some(Some(lo))) = (nibbles.next(), nibbles.next()) else {
                return Err(SharesError::BadCheckValue);
            };
            // Both digits are < 16, so the cast keeps every bit.
            *byte = ((hi << 4) | lo) as u8;
        }
        if nibbles.next().is_some() {
            return Err(SharesError::BadCheckValue);
        }
        Ok(Self(out))
    }

    pub fn as_bytes(&self) -> &[u8; Self::LEN] {
        &self.0
    }
}

impl PartialEq for CheckValue {
    fn eq(&self, other: &Self) -> bool {
        ct_eq(&self.0, &other.0)
    }
}

impl fmt::Display for CheckValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode_upper(self.0))
    }
}

impl fmt::Debug for CheckValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CheckValue({self})")
    }
}

impl serde::Serialize for CheckValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// Names one split: every share of a split carries the same id, a new
/// split (including a [`resplit`] of the same secret) gets a new one. It is
/// the first 5 bytes of SHA-256 over a prefix and the split's ciphertext
/// (the part every share of a split has in common, the secret encrypted
/// under a key only M shares rebuild), so it is public, derived from the
/// share rather than trusted from its text, and written as 8 base32
/// characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SplitId([u8; SPLIT_ID_LEN]);

impl SplitId {
    fn of_share(value: &[u8]) -> Self {
        let ciphertext = value.get(KEYSHARE_LEN..).unwrap_or_default();
        let digest = Sha256::new()
            .chain_update(SPLIT_ID_DOMAIN)
            .chain_update(ciphertext)
            .finalize();
        let mut id = [0u8; SPLIT_ID_LEN];
        for (i, b) in id.iter_mut().zip(digest.iter()) {
            *i = *b;
        }
        Self(id)
    }

    pub fn as_bytes(&self) -> &[u8; SPLIT_ID_LEN] {
        &self.0
    }
}

impl fmt::Display for SplitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &s in base32_encode(&self.0).iter() {
            f.write_str(symbol_char(s))?;
        }
        Ok(())
    }
}

impl fmt::Debug for SplitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SplitId({self})")
    }
}

/// The secret that unseals the service: 32 bytes from the HSM's random
/// generator, held only while it is split or after it is combined.
pub struct UnsealSecret(Zeroizing<Vec<u8>>);

impl UnsealSecret {
    pub const LEN: usize = SECRET_LEN;

    /// Takes the bytes the caller drew from the HSM's random generator
    /// (the caller wipes its own copy). All zeros or one byte repeated is
    /// refused: that is a broken generator, not a secret.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SharesError> {
        if bytes.len() != SECRET_LEN {
            return Err(SharesError::SecretLength {
                expected: SECRET_LEN,
                got: bytes.len(),
            });
        }
        // On the heap, so that moving the secret around leaves no copies.
        let value = Zeroizing::new(bytes.to_vec());
        if value.iter().all(|&b| b == 0) {
            return Err(SharesError::WeakSecret("it is all zeros"));
        }
        if value.iter().all(|&b| Some(&b) == value.first()) {
            return Err(SharesError::WeakSecret("it is one byte repeated"));
        }
        Ok(Self(value))
    }

    /// The secret's bytes: only for the code that unseals with it. Do not
    /// copy them anywhere else; the copy would not be wiped.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The value recorded at initialization and compared after every
    /// combination, so custodians can confirm the secret without seeing
    /// it. It is the first 3 bytes of SHA-256 over
    /// `kms/unseal-secret/check-value/v1` and the secret: finding the
    /// secret from it means trying 2^256 candidates, and the prefix keeps it
    /// distinct from every other hash of the same bytes.
    pub fn check_value(&self) -> CheckValue {
        CheckValue::compute(SECRET_CHECK_DOMAIN, &self.0[..])
    }

    /// Compares [`UnsealSecret::check_value`] with the recorded value.
    pub fn verify_check_value(&self, expected: &CheckValue) -> Result<(), SharesError> {
        if self.check_value() == *expected {
            Ok(())
        } else {
            Err(SharesError::CheckValueMismatch {
                expected: *expected,
            })
        }
    }
}

impl fmt::Debug for UnsealSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UnsealSecret(<redacted>, {SECRET_LEN} bytes)")
    }
}

/// One custodian's share of the unseal secret.
pub struct Share {
    threshold: u8,
    index: u8,
    split_id: SplitId,
    /// [`SHARE_LEN`] bytes as the crate made them; byte 0 is `index`.
    value: Zeroizing<Vec<u8>>,
}

impl Share {
    /// A share from its bytes (as kept on a token, say) and the M of its
    /// split. The index is the first byte; the split id is derived.
    pub fn from_bytes(threshold: u8, bytes: &[u8]) -> Result<Self, SharesError> {
        if threshold < 2 {
            return Err(SharesError::Field {
                field: "M (the number of shares needed, 2 to 255)",
            });
        }
        let index = match bytes.first() {
            Some(&i) if i != 0 && bytes.len() == SHARE_LEN => i,
            _ => {
                return Err(SharesError::ShareBytes {
                    expected: SHARE_LEN,
                })
            }
        };
        Ok(Self {
            threshold,
            index,
            split_id: SplitId::of_share(bytes),
            value: Zeroizing::new(bytes.to_vec()),
        })
    }

    /// The share's index, 1 to N: its custodian's number in the split.
    pub fn index(&self) -> u8 {
        self.index
    }

    /// M, the number of shares of this split needed to rebuild the secret.
    pub fn threshold(&self) -> u8 {
        self.threshold
    }

    pub fn split_id(&self) -> SplitId {
        self.split_id
    }

    /// The share's bytes, for storing it (on a token, say). Do not log or
    /// copy them; the copy would not be wiped.
    pub fn as_bytes(&self) -> &[u8] {
        &self.value
    }

    /// What a custodian reads aloud to confirm that the share they hold is
    /// the one issued (or the one typed in): 6 hex digits, the first 3
    /// bytes of SHA-256 over `kms/unseal-share/check-value/v1` and the
    /// share's bytes.
    ///
    /// It reveals nothing useful about the secret. It is a function of one
    /// share, and fewer than M shares say nothing about the secret's Shamir
    /// polynomial; finding the share from its 24 bits means trying the 2^256
    /// values of its key share. Someone holding M-1 shares could in
    /// principle test candidate secrets against the check value of another
    /// share, but only by enumerating 2^256 of them, and the same M-1
    /// shares already let exactly such an exhaustive search test keys
    /// against their common ciphertext: the check value adds no leverage.
    /// The prefix keeps it distinct from the secret's check value and from
    /// any other hash of the same bytes. With 24 bits a wrong share goes
    /// unnoticed one time in 16.7 million: enough to confirm a transcription,
    /// while the authenticated combination is what refuses a wrong share.
    pub fn check_value(&self) -> CheckValue {
        CheckValue::compute(SHARE_CHECK_DOMAIN, &self.value)
    }

    /// The text form to write down or print (see the module docs), all on
    /// one line with `-` between fields.
    pub fn to_text(&self) -> Zeroizing<String> {
        // Sized once: a String that grows moves its bytes and frees the
        // old buffer without wiping it.
        let mut out = Zeroizing::new(String::with_capacity(
            TEXT_PREFIX.len() + 9 + SPLIT_ID_SYMBOLS + 1 + GROUPS * (GROUP_LEN + 1) + 4,
        ));
        out.push_str(TEXT_PREFIX);
        push_decimal(&mut out, self.threshold);
        push_decimal(&mut out, self.index);
        out.push('-');
        for &s in base32_encode(self.split_id.as_bytes()).iter() {
            out.push_str(symbol_char(s));
        }
        let payload = self.value.get(1..).unwrap_or_default();
        let symbols = base32_encode(payload);
        for (g, data) in symbols.chunks(GROUP_DATA).enumerate() {
            out.push('-');
            for &s in data {
                out.push_str(symbol_char(s));
            }
            out.push_str(symbol_char(group_check(g + 1, data)));
        }
        out.push('-');
        let checksum = text_checksum(self.threshold, self.index, &self.split_id, payload);
        for &s in checksum.iter() {
            out.push_str(symbol_char(s));
        }
        out
    }

    /// Reads the text form back, checking it before anything is combined.
    ///
    /// - Each group ends with a check character: the sum over GF(32) of its
    ///   6 data characters weighted by distinct powers of a generator, and
    ///   of the group's number. A single wrong character, or two swapped
    ///   characters (adjacent or not, the check character included), always
    ///   changes the sum, so the error names the group to look at; a group
    ///   written in another group's place is caught too.
    /// - The final 4 characters are 20 bits of SHA-256 over M, the index,
    ///   the split id and the data: they catch a mistyped M or index (and
    ///   anything the group checks missed) but for one case in a million,
    ///   and a wrong index or M that got through is still refused by the
    ///   authenticated combination.
    /// - The split id is compared with the one derived from the data.
    ///
    /// No error repeats any character of the text.
    pub fn parse(text: &str) -> Result<Self, SharesError> {
        let mut tokens = text
            .split(|c: char| c == '-' || c.is_whitespace())
            .filter(|t| !t.is_empty());
        if !tokens
            .next()
            .is_some_and(|t| t.eq_ignore_ascii_case(TEXT_PREFIX))
        {
            return Err(SharesError::NotAShare);
        }
        let count = tokens.clone().count() + 1;
        if count != TOKENS {
            return Err(SharesError::GroupCount {
                expected: GROUPS,
                got: count.saturating_sub(TOKENS - GROUPS),
            });
        }
        let threshold =
            parse_decimal(tokens.next())
                .filter(|&m| m >= 2)
                .ok_or(SharesError::Field {
                    field: "M (the number of shares needed, 2 to 255)",
                })?;
        let index = parse_decimal(tokens.next())
            .filter(|&i| i >= 1)
            .ok_or(SharesError::Field {
                field: "index (1 to 255)",
            })?;
        let stated_split = tokens
            .next()
            .and_then(|t| decode_symbols(t, SPLIT_ID_SYMBOLS))
            .and_then(|s| base32_decode(&s, SPLIT_ID_LEN))
            .and_then(|b| <[u8; SPLIT_ID_LEN]>::try_from(&b[..]).ok())
            .ok_or(SharesError::Field { field: "split id" })?;

        let mut symbols = Zeroizing::new(Vec::with_capacity(PAYLOAD_SYMBOLS));
        for g in 1..=GROUPS {
            let token = tokens.next().ok_or(SharesError::Malformed)?;
            let got = token.chars().count();
            if got != GROUP_LEN {
                return Err(SharesError::GroupLength {
                    group: g,
                    expected: GROUP_LEN,
                    got,
                });
            }
            let mut group = Zeroizing::new([0u8; GROUP_LEN]);
            for (i, (slot, b)) in group.iter_mut().zip(token.bytes()).enumerate() {
                *slot = symbol_value(b).ok_or(SharesError::Character {
                    group: g,
                    position: i + 1,
                })?;
            }
            let (data, check) = group.split_at(GROUP_DATA);
            if check.first() != Some(&group_check(g, data)) {
                return Err(SharesError::GroupCheck { group: g });
            }
            symbols.extend_from_slice(data);
        }
        let checksum = tokens
            .next()
            .and_then(|t| decode_symbols(t, CHECKSUM_SYMBOLS))
            .ok_or(SharesError::Checksum)?;

        // The 4 padding bits at the end must be zero; only several typos
        // that all passed their group checks get here.
        let payload = base32_decode(&symbols, PAYLOAD_LEN).ok_or(SharesError::Malformed)?;
        let split = SplitId(stated_split);
        if text_checksum(threshold, index, &split, &payload) != checksum[..] {
            return Err(SharesError::Checksum);
        }
        let mut bytes = Zeroizing::new(Vec::with_capacity(SHARE_LEN));
        bytes.push(index);
        bytes.extend_from_slice(&payload[..]);
        let share = Self::from_bytes(threshold, &bytes)?;
        if share.split_id != split {
            return Err(SharesError::SplitIdMismatch);
        }
        Ok(share)
    }
}

impl FromStr for Share {
    type Err = SharesError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Debug for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Share")
            .field("index", &self.index)
            .field("threshold", &self.threshold)
            .field("split_id", &self.split_id)
            .field("check_value", &self.check_value())
            .finish_non_exhaustive()
    }
}

/// Splits the secret into `n` shares of which any `m` rebuild it
/// (2 <= m <= n <= 255). Share `i` (1 to n) goes to custodian `i`.
///
/// The crate draws the polynomial's coefficients and the AEAD key from
/// `rand`'s thread generator (ChaCha seeded from the operating system);
/// the secret itself is the caller's, from the HSM. Before returning, the
/// first M shares are combined and compared with the secret.
pub fn split(secret: &UnsealSecret, m: u8, n: u8) -> Result<Vec<Share>, SharesError> {
    if m < 2 || m > n {
        return Err(SharesError::Threshold { m, n });
    }
    let mut data = Zeroizing::new([0u8; DATA_LEN]);
    data[..SECRET_LEN].copy_from_slice(&secret.0[..]);
    data[TAG_AT..M_AT].copy_from_slice(PLAINTEXT_TAG);
    data[M_AT] = m;
    data[N_AT] = n;
    let raw = Zeroizing::new(shamirsecretsharing::create_shares(&data[..], n, m).map_err(library)?);
    if raw.len() != usize::from(n) {
        return Err(SharesError::Internal(
            "the library made the wrong number of shares",
        ));
    }
    let mut shares = Vec::with_capacity(raw.len());
    for (i, r) in raw.iter().enumerate() {
        let share = Share::from_bytes(m, r)?;
        if usize::from(share.index) != i + 1 {
            return Err(SharesError::Internal(
                "the library numbered the shares unexpectedly",
            ));
        }
        if shares
            .first()
            .is_some_and(|s: &Share| s.split_id != share.split_id)
        {
            return Err(SharesError::Internal(
                "the library's shares differ in ciphertext",
            ));
        }
        shares.push(share);
    }
    let rebuilt = combine(shares.get(..usize::from(m)).unwrap_or_default())?;
    if !ct_eq(&rebuilt.0[..], &secret.0[..]) {
        return Err(SharesError::Internal(
            "the shares do not rebuild the secret",
        ));
    }
    Ok(shares)
}

/// Rebuilds the secret from at least M shares of one split.
///
/// Refused before combining: no shares; shares of different splits (the
/// first share presented sets the split); shares disagreeing on M; the same
/// index twice; fewer than M shares. Then the crate combines all shares
/// presented (more than M is fine; any wrong one among them is refused) and
/// authenticates the result: a wrong or altered share is
/// [`SharesError::Rejected`], never a wrong secret. Finally the M recorded
/// inside the authenticated data must be the shares' M.
pub fn combine<S: Borrow<Share>>(shares: &[S]) -> Result<UnsealSecret, SharesError> {
    let first = shares.first().ok_or(SharesError::NoShares)?.borrow();
    for s in shares.iter().map(Borrow::borrow) {
        if s.split_id != first.split_id {
            return Err(SharesError::MixedSplits {
                index: s.index,
                expected: first.split_id,
                got: s.split_id,
            });
        }
        if s.threshold != first.threshold {
            return Err(SharesError::ThresholdMismatch {
                index: s.index,
                expected: first.threshold,
                got: s.threshold,
            });
        }
    }
    for (i, a) in shares.iter().map(Borrow::borrow).enumerate() {
        if shares
            .iter()
            .skip(i + 1)
            .any(|b| b.borrow().index == a.index)
        {
            return Err(SharesError::DuplicateIndex { index: a.index });
        }
    }
    if shares.len() < usize::from(first.threshold) {
        return Err(SharesError::TooFew {
            needed: first.threshold,
            got: shares.len(),
        });
    }

    // Sized once, each inner copy exactly: wiped on drop, never regrown.
    let mut raw: Zeroizing<Vec<Vec<u8>>> = Zeroizing::new(Vec::with_capacity(shares.len()));
    for s in shares {
        raw.push(s.borrow().value.to_vec());
    }
    let data = match shamirsecretsharing::combine_shares(&raw).map_err(library)? {
        Some(d) => Zeroizing::new(d),
        None => return Err(SharesError::Rejected),
    };
    if data.len() != DATA_LEN
        || data.get(TAG_AT..M_AT) != Some(&PLAINTEXT_TAG[..])
        || data.iter().skip(N_AT + 1).any(|&b| b != 0)
    {
        // Authentic, but not a split made by this module.
        return Err(SharesError::Rejected);
    }
    let (actual, n) = (data[M_AT], data[N_AT]);
    if actual != first.threshold {
        return Err(SharesError::WrongThreshold {
            stated: first.threshold,
            actual,
        });
    }
    if shares.iter().any(|s| s.borrow().index > n) {
        return Err(SharesError::Rejected);
    }
    UnsealSecret::from_bytes(&data[..SECRET_LEN])
}

/// Rotates the shares: combines them (with every check of [`combine`]) and
/// splits the same secret again into `new_n` shares needing `new_m`. The
/// new split has a fresh AEAD key, polynomial and split id, so an old share
/// is refused among new ones (as a share of another split, and by the
/// authenticated combination if presented as one). The caller should
/// confirm the rebuilt secret's check value first if it wants to compare
/// it with the recorded one: `combine`, `check_value`, then `split`.
pub fn resplit<S: Borrow<Share>>(
    shares: &[S],
    new_m: u8,
    new_n: u8,
) -> Result<Vec<Share>, SharesError> {
    if new_m < 2 || new_m > new_n {
        return Err(SharesError::Threshold { m: new_m, n: new_n });
    }
    let secret = combine(shares)?;
    let old = shares
        .first()
        .map(|s| s.borrow().split_id)
        .ok_or(SharesError::NoShares)?;
    // A 40-bit id collides once in 10^12 splits; draw again rather than
    // hand out new shares that read as the old split.
    for _ in 0..4 {
        let new = split(&secret, new_m, new_n)?;
        if new.first().is_some_and(|s| s.split_id != old) {
            return Ok(new);
        }
    }
    Err(SharesError::Internal(
        "the new split id kept equal to the old one",
    ))
}

// --- text encoding helpers -------------------------------------------------

fn symbol_char(s: u8) -> &'static str {
    let i = usize::from(s & 31);
    // ALPHABET is ASCII, so every one-byte slice of it is a str.
    std::str::from_utf8(&ALPHABET[i..=i]).unwrap_or("?")
}

/// Crockford's reading of a typed character: either case, `O` as `0`,
/// `I` and `L` as `1`; `U` and everything else is not a symbol.
fn symbol_value(c: u8) -> Option<u8> {
    let c = match c.to_ascii_uppercase() {
        b'O' => b'0',
        b'I' | b'L' => b'1',
        c => c,
    };
    ALPHABET
        .iter()
        .position(|&a| a == c)
        .and_then(|p| u8::try_from(p).ok())
}

fn decode_symbols(token: &str, len: usize) -> Option<Zeroizing<Vec<u8>>> {
    if token.len() != len {
        return None;
    }
    let mut out = Zeroizing::new(Vec::with_capacity(len));
    for b in token.bytes() {
        out.push(symbol_value(b)?);
    }
    Some(out)
}

/// 5-bit symbols, most significant bit first, the last one padded with
/// zero bits.
fn base32_encode(bytes: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity((bytes.len() * 8).div_ceil(5)));
    let mut acc: u16 = 0;
    let mut bits = 0u32;
    for &b in bytes {
        acc = (acc << 8) | u16::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(((acc >> bits) & 31) as u8);
        }
        acc &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(((acc << (5 - bits)) & 31) as u8);
    }
    acc.zeroize();
    out
}

/// The inverse of [`base32_encode`]: exactly `n` bytes, and the padding
/// bits must be zero.
fn base32_decode(symbols: &[u8], n: usize) -> Option<Zeroizing<Vec<u8>>> {
    if symbols.len() != (n * 8).div_ceil(5) {
        return None;
    }
    let mut out = Zeroizing::new(vec![0u8; n]);
    let mut acc: u16 = 0;
    let mut bits = 0u32;
    let mut at = 0usize;
    for &s in symbols {
        acc = (acc << 5) | u16::from(s & 31);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            *out.get_mut(at)? = (acc >> bits) as u8;
            at += 1;
            acc &= (1 << bits) - 1;
        }
    }
    let padding_clear = acc == 0;
    acc.zeroize();
    (at == n && padding_clear).then_some(out)
}

/// Multiplication in GF(32) = GF(2)[x] / (x^5 + x^2 + 1), without
/// branches on the (secret) operands.
fn gf32_mul(a: u8, b: u8) -> u8 {
    let (mut a, mut r) = (a & 31, 0u8);
    for i in 0..5 {
        r ^= a & 0u8.wrapping_sub((b >> i) & 1);
        let carry = 0u8.wrapping_sub((a >> 4) & 1);
        a = ((a << 1) & 31) ^ (0x05 & carry);
    }
    r
}

/// The generator x (= 2) raised to `e`; x^5 + x^2 + 1 is primitive, so
/// x^0 .. x^30 are distinct.
fn gf32_pow_x(e: usize) -> u8 {
    (0..e % 31).fold(1u8, |p, _| gf32_mul(p, 2))
}

/// The check character of group `g` (numbered from 1): the group's data
/// weighted x^1 .. x^6 and its number weighted x^7, so that with the
/// check character at weight x^0 every position has its own weight. A
/// change of one character adds a non-zero term; a swap of two different
/// characters adds (w_i + w_j)(c_i + c_j), non-zero as both factors are;
/// a group moved to another number adds x^7 (g + g'), non-zero for the
/// 30 groups, all below 32.
fn group_check(g: usize, data: &[u8]) -> u8 {
    let number = u8::try_from(g & 31).unwrap_or(0);
    data.iter().enumerate().fold(
        gf32_mul(gf32_pow_x(GROUP_DATA + 1), number),
        |acc, (i, &d)| acc ^ gf32_mul(gf32_pow_x(i + 1), d),
    )
}

fn text_checksum(
    threshold: u8,
    index: u8,
    split: &SplitId,
    payload: &[u8],
) -> [u8; CHECKSUM_SYMBOLS] {
    let digest = Sha256::new()
        .chain_update(TEXT_CHECKSUM_DOMAIN)
        .chain_update([threshold, index])
        .chain_update(split.as_bytes())
        .chain_update(payload)
        .finalize();
    let bits = u32::from_be_bytes([0, digest[0], digest[1], digest[2]]) >> 4;
    let mut out = [0u8; CHECKSUM_SYMBOLS];
    for (i, s) in out.iter_mut().enumerate() {
        *s = ((bits >> (5 * (CHECKSUM_SYMBOLS - 1 - i))) & 31) as u8;
    }
    out
}

fn push_decimal(out: &mut String, v: u8) {
    out.push('-');
    let digits = [v / 100, (v / 10) % 10, v % 10];
    let skip = if v >= 100 {
        0
    } else if v >= 10 {
        1
    } else {
        2
    };
    for d in digits.iter().skip(skip) {
        out.push(char::from(b'0' + d));
    }
}

/// 1 to 3 ASCII digits, no sign or leading `+`.
fn parse_decimal(token: Option<&str>) -> Option<u8> {
    let t = token?;
    if t.is_empty() || t.len() > 3 || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse().ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use rand::seq::SliceRandom;
    use rand::{Rng, RngCore};

    fn random_secret() -> UnsealSecret {
        let mut b = [0u8; SECRET_LEN];
        rand::thread_rng().fill_bytes(&mut b);
        UnsealSecret::from_bytes(&b).unwrap()
    }

    fn dup(s: &Share) -> Share {
        Share::from_bytes(s.threshold(), s.as_bytes()).unwrap()
    }

    /// Everything that must never show in a message: the secret and every
    /// share in hex (either case) and every group of every share's text.
    struct Secrets(Vec<String>);

    impl Secrets {
        fn of(secret: &UnsealSecret, shares: &[Share]) -> Self {
            let mut v = vec![
                hex::encode(secret.as_bytes()),
                hex::encode_upper(secret.as_bytes()),
            ];
            for s in shares {
                v.push(hex::encode(s.as_bytes()));
                v.push(hex::encode_upper(s.as_bytes()));
                let text = s.to_text();
                v.extend(text.split('-').skip(4).take(GROUPS).map(str::to_owned));
            }
            Self(v)
        }

        fn assert_absent(&self, what: &str) {
            for s in &self.0 {
                assert!(!what.contains(s.as_str()), "secret material in {what:?}");
            }
        }

        fn assert_error_clean(&self, e: &SharesError) {
            self.assert_absent(&format!("{e}"));
            self.assert_absent(&format!("{e:?}"));
        }
    }

    #[test]
    fn split_knowledge_round_trips_m_of_n() {
        for (m, n) in [(2, 2), (2, 3), (3, 5), (4, 7), (5, 5), (2, 10), (7, 12)] {
            let secret = random_secret();
            let shares = split(&secret, m, n).unwrap();
            assert_eq!(shares.len(), usize::from(n));
            for (i, s) in shares.iter().enumerate() {
                assert_eq!(usize::from(s.index()), i + 1);
                assert_eq!(s.threshold(), m);
                assert_eq!(s.split_id(), shares[0].split_id());
                assert_eq!(s.as_bytes().len(), SHARE_LEN);
            }
            // Any M, and all N, rebuild the secret; so do shares read back
            // from their text.
            let mut refs: Vec<&Share> = shares.iter().collect();
            refs.shuffle(&mut rand::thread_rng());
            let got = combine(&refs[..usize::from(m)]).unwrap();
            assert_eq!(got.as_bytes(), secret.as_bytes());
            assert_eq!(combine(&shares).unwrap().as_bytes(), secret.as_bytes());
            let parsed: Vec<Share> = shares
                .iter()
                .skip(usize::from(n - m))
                .map(|s| Share::parse(&s.to_text()).unwrap())
                .collect();
            for p in &parsed {
                let orig = &shares[usize::from(p.index()) - 1];
                assert_eq!(p.as_bytes(), orig.as_bytes());
                assert_eq!(p.check_value(), orig.check_value());
            }
            let got = combine(&parsed).unwrap();
            got.verify_check_value(&secret.check_value()).unwrap();
        }
    }

    #[test]
    fn largest_split_is_255_shares() {
        let secret = random_secret();
        let shares = split(&secret, 255, 255).unwrap();
        assert_eq!(shares.last().unwrap().index(), 255);
        let text = shares.last().unwrap().to_text();
        assert!(text.starts_with("KMS1-255-255-"));
        let parsed = Share::parse(&text).unwrap();
        assert_eq!(parsed.as_bytes(), shares[254].as_bytes());
        assert_eq!(combine(&shares).unwrap().as_bytes(), secret.as_bytes());
    }

    #[test]
    fn split_refuses_bad_m_of_n() {
        let secret = random_secret();
        for (m, n) in [(0, 0), (1, 1), (1, 5), (0, 5), (4, 3), (2, 1)] {
            assert_eq!(
                split(&secret, m, n).unwrap_err(),
                SharesError::Threshold { m, n }
            );
        }
    }

    #[test]
    fn secret_is_32_bytes_and_not_degenerate() {
        assert_eq!(
            UnsealSecret::from_bytes(&[7u8; 16]).unwrap_err(),
            SharesError::SecretLength {
                expected: 32,
                got: 16
            }
        );
        assert!(matches!(
            UnsealSecret::from_bytes(&[0u8; 32]).unwrap_err(),
            SharesError::WeakSecret(_)
        ));
        assert!(matches!(
            UnsealSecret::from_bytes(&[0x5Au8; 32]).unwrap_err(),
            SharesError::WeakSecret(_)
        ));
    }

    #[test]
    fn too_few_shares_are_refused() {
        let secret = random_secret();
        let shares = split(&secret, 3, 5).unwrap();
        let secrets = Secrets::of(&secret, &shares);
        let e = combine(&shares[..2]).unwrap_err();
        assert_eq!(e, SharesError::TooFew { needed: 3, got: 2 });
        secrets.assert_error_clean(&e);
        let none: [Share; 0] = [];
        assert_eq!(combine(&none).unwrap_err(), SharesError::NoShares);

        // Below M the crate itself gives nothing, even with our count
        // check bypassed (and M understated on every share).
        let lying: Vec<Share> = shares[..2]
            .iter()
            .map(|s| Share::from_bytes(2, s.as_bytes()).unwrap())
            .collect();
        assert_eq!(combine(&lying).unwrap_err(), SharesError::Rejected);
        let raw: Vec<Vec<u8>> = shares[..2].iter().map(|s| s.as_bytes().to_vec()).collect();
        assert_eq!(shamirsecretsharing::combine_shares(&raw).unwrap(), None);
    }

    #[test]
    fn duplicate_share_is_refused() {
        let secret = random_secret();
        let shares = split(&secret, 3, 5).unwrap();
        let secrets = Secrets::of(&secret, &shares);
        let again = dup(&shares[1]);
        let e = combine(&[&shares[0], &shares[1], &again]).unwrap_err();
        assert_eq!(e, SharesError::DuplicateIndex { index: 2 });
        secrets.assert_error_clean(&e);
        // Even with enough distinct shares besides.
        let e = combine(&[&shares[0], &shares[1], &shares[2], &again]).unwrap_err();
        assert_eq!(e, SharesError::DuplicateIndex { index: 2 });
    }

    #[test]
    fn shares_of_different_splits_are_refused_before_combining() {
        let secret = random_secret();
        let a = split(&secret, 2, 3).unwrap();
        let b = split(&secret, 2, 3).unwrap();
        let other = split(&random_secret(), 2, 3).unwrap();
        assert_ne!(a[0].split_id(), b[0].split_id());
        let secrets = Secrets::of(&secret, &a);
        for mixed in [[&a[0], &b[1]], [&a[0], &other[1]]] {
            let e = combine(&mixed).unwrap_err();
            assert_eq!(
                e,
                SharesError::MixedSplits {
                    index: 2,
                    expected: a[0].split_id(),
                    got: mixed[1].split_id()
                }
            );
            secrets.assert_error_clean(&e);
            // The message names both splits as written on the shares.
            let msg = e.to_string();
            assert!(msg.contains(&a[0].split_id().to_string()));
        }
        // Mixed bytes handed to the crate directly do not combine either.
        let raw = vec![a[0].as_bytes().to_vec(), b[1].as_bytes().to_vec()];
        assert_eq!(shamirsecretsharing::combine_shares(&raw).unwrap(), None);
    }

    #[test]
    fn corrupted_share_is_an_error_not_a_wrong_secret() {
        let secret = random_secret();
        let shares = split(&secret, 3, 4).unwrap();
        let secrets = Secrets::of(&secret, &shares);
        // Every byte of the key-share part (the split id is derived from
        // the rest, so this share still claims the same split).
        for at in 1..KEYSHARE_LEN {
            let mut bytes = shares[2].as_bytes().to_vec();
            bytes[at] ^= 1 << (at % 8);
            let bad = Share::from_bytes(3, &bytes).unwrap();
            assert_eq!(bad.split_id(), shares[2].split_id());
            let e = combine(&[&shares[0], &shares[1], &bad]).unwrap_err();
            assert_eq!(e, SharesError::Rejected);
            secrets.assert_error_clean(&e);
            // One wrong share among more than M is refused too.
            let e = combine(&[&shares[0], &shares[1], &bad, &shares[3]]).unwrap_err();
            assert_eq!(e, SharesError::Rejected);
        }
        // The index byte: a share claiming another custodian's number.
        let mut bytes = shares[2].as_bytes().to_vec();
        bytes[0] = 4;
        let bad = Share::from_bytes(3, &bytes).unwrap();
        assert_eq!(
            combine(&[&shares[0], &shares[1], &bad]).unwrap_err(),
            SharesError::Rejected
        );
        // The ciphertext part changes the derived split id.
        let mut bytes = shares[2].as_bytes().to_vec();
        bytes[SHARE_LEN - 1] ^= 0x80;
        let bad = Share::from_bytes(3, &bytes).unwrap();
        assert!(matches!(
            combine(&[&shares[0], &shares[1], &bad]).unwrap_err(),
            SharesError::MixedSplits { index: 3, .. }
        ));
        // A raised M on the shares' text is caught inside the ciphertext.
        let raised: Vec<Share> = shares
            .iter()
            .map(|s| Share::from_bytes(4, s.as_bytes()).unwrap())
            .collect();
        assert_eq!(
            combine(&raised).unwrap_err(),
            SharesError::WrongThreshold {
                stated: 4,
                actual: 3
            }
        );
        // Shares disagreeing on M.
        let e = combine(&[&shares[0], &shares[1], &raised[2]]).unwrap_err();
        assert_eq!(
            e,
            SharesError::ThresholdMismatch {
                index: 3,
                expected: 3,
                got: 4
            }
        );
    }

    #[test]
    fn text_form_layout() {
        let secret = random_secret();
        let shares = split(&secret, 3, 12).unwrap();
        let text = shares[10].to_text();
        let tokens: Vec<&str> = text.split('-').collect();
        assert_eq!(tokens.len(), TOKENS);
        assert_eq!(&tokens[..3], &["KMS1", "3", "11"]);
        assert_eq!(tokens[3], shares[10].split_id().to_string());
        assert_eq!(tokens[3].len(), 8);
        assert!(tokens[4..4 + GROUPS].iter().all(|g| g.len() == GROUP_LEN));
        assert_eq!(tokens[TOKENS - 1].len(), CHECKSUM_SYMBOLS);
        assert!(text.bytes().all(|b| b == b'-' || ALPHABET.contains(&b)));
        // The capacity is computed for the longest text (M and index of 3
        // digits), so the buffer never regrows.
        let longest = split(&secret, 255, 255).unwrap().pop().unwrap().to_text();
        assert_eq!(longest.len(), 266);
        assert!(longest.len() <= longest.capacity());
    }

    #[test]
    fn text_form_is_forgiving_about_case_separators_and_look_alikes() {
        let secret = random_secret();
        let shares = split(&secret, 2, 2).unwrap();
        let text = shares[0].to_text();
        // Lower case, printed on several lines with spaces.
        let mut spaced = String::new();
        for (i, t) in text.to_lowercase().split('-').enumerate() {
            spaced.push_str(t);
            spaced.push_str(if i % 6 == 5 { "\n" } else { "  " });
        }
        let p = Share::parse(&spaced).unwrap();
        assert_eq!(p.as_bytes(), shares[0].as_bytes());
        // O for 0 and I or L for 1.
        let swapped: String = text
            .chars()
            .enumerate()
            .map(|(i, c)| match (i > 12, c) {
                (true, '0') => 'O',
                (true, '1') if i % 2 == 0 => 'I',
                (true, '1') => 'l',
                (_, c) => c,
            })
            .collect();
        let p = Share::parse(&swapped).unwrap();
        assert_eq!(p.as_bytes(), shares[0].as_bytes());
        assert_eq!(p.to_text(), text);
    }

    /// Parses every single-character substitution and every swap of two
    /// adjacent characters of `share`'s text: each is refused, with the
    /// group named when the change is inside one group. Changes to the
    /// decimal M and index are caught by the 20-bit checksum, so with
    /// `header_digits` false they are skipped (for random shares, where
    /// one in a million would slip through to combine).
    fn assert_typos_caught(share: &Share, secrets: &Secrets, header_digits: bool) {
        let text = share.to_text();
        let bytes = text.as_bytes();
        // The token of each character, and its group (0 outside groups).
        let mut token_of = vec![0usize; bytes.len()];
        let mut group_of = vec![0usize; bytes.len()];
        let mut token = 0;
        for (i, &b) in bytes.iter().enumerate() {
            if b == b'-' {
                token += 1;
                token_of[i] = usize::MAX;
                continue;
            }
            token_of[i] = token;
            if (4..4 + GROUPS).contains(&token) {
                group_of[i] = token - 3;
            }
        }
        let skipped = |i: usize| !header_digits && (token_of[i] == 1 || token_of[i] == 2);
        let check = |mutated: &[u8], group: usize| {
            let s = std::str::from_utf8(mutated).unwrap();
            let e = Share::parse(s).unwrap_err();
            secrets.assert_error_clean(&e);
            if group > 0 {
                assert!(
                    matches!(e, SharesError::GroupCheck { group: g } if g == group),
                    "{e} for a change in group {group}"
                );
            }
        };
        let typed: Vec<u8> = ALPHABET.iter().copied().chain(*b"xU!").collect();
        let mut tried = 0;
        for i in 0..bytes.len() {
            if bytes[i] == b'-' || skipped(i) {
                continue;
            }
            for &c in &typed {
                let value = symbol_value(c);
                if c == bytes[i] || (value.is_some() && value == symbol_value(bytes[i])) {
                    continue; // the same character, as Crockford reads it
                }
                let mut m = bytes.to_vec();
                m[i] = c;
                check(&m, if value.is_some() { group_of[i] } else { 0 });
                tried += 1;
            }
        }
        for i in 0..bytes.len() - 1 {
            if bytes[i] == bytes[i + 1] || skipped(i) || skipped(i + 1) {
                continue;
            }
            let mut m = bytes.to_vec();
            m.swap(i, i + 1);
            let same_group = token_of[i] == token_of[i + 1];
            check(&m, if same_group { group_of[i] } else { 0 });
            tried += 1;
        }
        assert!(tried > 6000, "{tried} changes tried");
        // Two whole groups written in each other's place.
        let mut tokens: Vec<&str> = text.split('-').collect();
        tokens.swap(5, 9);
        let e = Share::parse(&tokens.join("-")).unwrap_err();
        assert_eq!(e, SharesError::GroupCheck { group: 2 });
    }

    #[test]
    fn typo_or_swapped_characters_in_text_are_caught() {
        // A fixed share, so that every header change is tried
        // deterministically ...
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut bytes = vec![0u8; SHARE_LEN];
        rng.fill_bytes(&mut bytes);
        bytes[0] = 4;
        let fixed = Share::from_bytes(3, &bytes).unwrap();
        let secret = random_secret();
        assert_typos_caught(&fixed, &Secrets::of(&secret, &[dup(&fixed)]), true);
        // ... and shares of a real split (with 3-digit M and index too).
        let shares = split(&secret, 3, 5).unwrap();
        let secrets = Secrets::of(&secret, &shares);
        assert_typos_caught(&shares[3], &secrets, false);
        let shares = split(&secret, 200, 201).unwrap();
        assert_typos_caught(&shares[200], &Secrets::of(&secret, &shares[200..]), false);
    }

    #[test]
    fn text_errors_say_which_part_is_wrong() {
        let secret = random_secret();
        let shares = split(&secret, 3, 5).unwrap();
        let secrets = Secrets::of(&secret, &shares);
        let text = shares[1].to_text();
        let tokens: Vec<&str> = text.split('-').collect();
        let with = |i: usize, t: &str| {
            let mut v = tokens.clone();
            v[i] = t;
            v.join("-")
        };
        let cases: Vec<(String, SharesError)> = vec![
            (text.replacen("KMS1", "KMS2", 1), SharesError::NotAShare),
            (String::new(), SharesError::NotAShare),
            (
                tokens[..TOKENS - 2].join("-") + "-" + tokens[TOKENS - 1],
                SharesError::GroupCount {
                    expected: GROUPS,
                    got: GROUPS - 1,
                },
            ),
            (
                with(1, "1"),
                SharesError::Field {
                    field: "M (the number of shares needed, 2 to 255)",
                },
            ),
            (
                with(1, "256"),
                SharesError::Field {
                    field: "M (the number of shares needed, 2 to 255)",
                },
            ),
            (
                with(2, "0"),
                SharesError::Field {
                    field: "index (1 to 255)",
                },
            ),
            (with(3, "ABCDEFG"), SharesError::Field { field: "split id" }),
            (
                with(7, &tokens[7][..6]),
                SharesError::GroupLength {
                    group: 4,
                    expected: 7,
                    got: 6,
                },
            ),
            (
                with(8, &format!("{}U", &tokens[8][..6])),
                SharesError::Character {
                    group: 5,
                    position: 7,
                },
            ),
            (with(TOKENS - 1, "ZZZ"), SharesError::Checksum),
        ];
        for (t, want) in cases {
            let e = Share::parse(&t).unwrap_err();
            assert_eq!(e, want);
            secrets.assert_error_clean(&e);
        }
        // Another split's id on this share's groups: the checksum covers
        // it, and were it recomputed the derived id would still differ.
        let other = split(&secret, 3, 5).unwrap();
        let e = Share::parse(&with(3, &other[0].split_id().to_string())).unwrap_err();
        // (The checksum misses one case in a million; the derived id not.)
        assert!(matches!(
            e,
            SharesError::Checksum | SharesError::SplitIdMismatch
        ));
        let forged_split = other[0].split_id();
        let payload = &shares[1].as_bytes()[1..];
        let sum = text_checksum(3, 2, &forged_split, payload);
        let sum: String = sum.iter().map(|&s| symbol_char(s)).collect();
        let mut v = tokens.clone();
        let forged_id = forged_split.to_string();
        v[3] = &forged_id;
        v[TOKENS - 1] = &sum;
        assert_eq!(
            Share::parse(&v.join("-")).unwrap_err(),
            SharesError::SplitIdMismatch
        );
    }

    #[test]
    fn group_check_weights_are_distinct() {
        let w: Vec<u8> = (0..=GROUP_DATA + 1).map(gf32_pow_x).collect();
        for (i, a) in w.iter().enumerate() {
            assert_ne!(*a, 0);
            assert!(w[i + 1..].iter().all(|b| b != a));
        }
        // x has order 31: the field's polynomial is primitive.
        assert_eq!(gf32_pow_x(31), 1);
        assert!((1..31).all(|e| gf32_pow_x(e) != 1));
        // Multiplication agrees with repeated addition of shifted terms
        // (spot checks: the inverse of every non-zero element exists).
        for a in 1..32u8 {
            assert!((1..32u8).any(|b| gf32_mul(a, b) == 1));
        }
    }

    #[test]
    fn base32_round_trips_and_refuses_padding() {
        let mut rng = rand::thread_rng();
        for _ in 0..50 {
            let mut b = [0u8; PAYLOAD_LEN];
            rng.fill_bytes(&mut b);
            let s = base32_encode(&b);
            assert_eq!(s.len(), PAYLOAD_SYMBOLS);
            assert_eq!(&base32_decode(&s, PAYLOAD_LEN).unwrap()[..], &b[..]);
            let mut bad = s.clone();
            *bad.last_mut().unwrap() |= 1;
            assert!(base32_decode(&bad, PAYLOAD_LEN).is_none());
        }
    }

    #[test]
    fn resplit_keeps_the_secret_and_retires_old_shares() {
        let secret = random_secret();
        let old = split(&secret, 2, 3).unwrap();
        let new = resplit(&old[1..], 3, 5).unwrap();
        assert_eq!(new.len(), 5);
        assert!(new.iter().all(|s| s.threshold() == 3));
        assert_ne!(new[0].split_id(), old[0].split_id());
        let got = combine(&new[2..]).unwrap();
        assert_eq!(got.as_bytes(), secret.as_bytes());
        assert_eq!(got.check_value(), secret.check_value());
        // Every share is new, including those with old indexes.
        for (o, n) in old.iter().zip(&new) {
            assert_ne!(o.as_bytes(), n.as_bytes());
        }
        // Old and new do not combine: refused as another split ...
        let e = combine(&[&new[0], &old[1], &new[2]]).unwrap_err();
        assert!(matches!(e, SharesError::MixedSplits { index: 2, .. }));
        // ... and even forced through (same id is impossible, so to the
        // crate directly) they give nothing.
        let raw = vec![
            new[0].as_bytes().to_vec(),
            old[1].as_bytes().to_vec(),
            new[2].as_bytes().to_vec(),
        ];
        assert_eq!(shamirsecretsharing::combine_shares(&raw).unwrap(), None);
        // Resplit needs a valid set itself.
        assert_eq!(
            resplit(&old[..1], 2, 3).unwrap_err(),
            SharesError::TooFew { needed: 2, got: 1 }
        );
        assert_eq!(
            resplit(&old, 4, 3).unwrap_err(),
            SharesError::Threshold { m: 4, n: 3 }
        );
    }

    #[test]
    fn check_values_confirm_without_revealing() {
        let secret = random_secret();
        let cv = secret.check_value();
        assert_eq!(cv.to_string().len(), 6);
        assert!(cv
            .to_string()
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase()));
        assert_eq!(
            CheckValue::parse_hex(&cv.to_string().to_lowercase()).unwrap(),
            cv
        );
        let spaced = format!("{} {}", &cv.to_string()[..3], &cv.to_string()[3..]);
        assert_eq!(CheckValue::parse_hex(&spaced).unwrap(), cv);
        assert_eq!(
            CheckValue::parse_hex("12345").unwrap_err(),
            SharesError::BadCheckValue
        );
        assert_eq!(
            CheckValue::parse_hex("1234567").unwrap_err(),
            SharesError::BadCheckValue
        );
        assert_eq!(
            CheckValue::parse_hex("12345G").unwrap_err(),
            SharesError::BadCheckValue
        );
        secret.verify_check_value(&cv).unwrap();
        let other = random_secret();
        let e = other.verify_check_value(&cv).unwrap_err();
        let secrets = Secrets::of(&other, &[]);
        secrets.assert_error_clean(&e);
        // Domain separation: the share check value is not a plain hash of
        // the bytes, nor the secret's.
        let shares = split(&secret, 2, 2).unwrap();
        let plain = Sha256::digest(shares[0].as_bytes());
        assert_ne!(shares[0].check_value().as_bytes()[..], plain[..3]);
        assert_ne!(shares[0].check_value(), shares[1].check_value());
        let plain = Sha256::digest(secret.as_bytes());
        assert_ne!(cv.as_bytes()[..], plain[..3]);
    }

    #[test]
    fn nothing_secret_in_debug_or_display() {
        let secret = random_secret();
        let shares = split(&secret, 2, 3).unwrap();
        let secrets = Secrets::of(&secret, &shares);
        secrets.assert_absent(&format!("{secret:?}"));
        assert!(format!("{secret:?}").contains("redacted"));
        for s in &shares {
            let d = format!("{s:?}");
            secrets.assert_absent(&d);
            assert!(d.contains(&s.check_value().to_string()));
            assert!(d.contains(&s.split_id().to_string()));
            secrets.assert_absent(&format!("{:?} {}", s.split_id(), s.split_id()));
            secrets.assert_absent(&format!("{:?} {}", s.check_value(), s.check_value()));
        }
        secrets.assert_absent(&format!(
            "{:?} {}",
            secret.check_value(),
            secret.check_value()
        ));
        // Every error this module can produce from these values.
        let other = split(&random_secret(), 2, 3).unwrap();
        let mut bad = shares[0].as_bytes().to_vec();
        bad[5] ^= 0xFF;
        let bad = Share::from_bytes(2, &bad).unwrap();
        let text = shares[0].to_text();
        let mut typo = text.as_bytes().to_vec();
        let at = text.len() - 10;
        typo[at] = if typo[at] == b'Z' { b'Y' } else { b'Z' };
        let errors = [
            combine(&shares[..1]).unwrap_err(),
            combine(&[&shares[0], &shares[0]]).unwrap_err(),
            combine(&[&shares[0], &other[1]]).unwrap_err(),
            combine(&[&shares[1], &bad]).unwrap_err(),
            Share::parse(std::str::from_utf8(&typo).unwrap()).unwrap_err(),
            Share::parse(&text[..text.len() - 1]).unwrap_err(),
            Share::parse(&text.replace('-', "")).unwrap_err(),
            split(&secret, 3, 2).unwrap_err(),
            Share::from_bytes(2, &shares[0].as_bytes()[1..]).unwrap_err(),
            random_secret()
                .verify_check_value(&secret.check_value())
                .unwrap_err(),
        ];
        for e in &errors {
            secrets.assert_error_clean(e);
        }
    }

    /// Property-style: for many random secrets and M-of-N, any M shares
    /// (read back from text, in any order) rebuild the secret, M - 1 never
    /// do, and one altered share among M is always refused.
    #[test]
    fn property_random_secrets_split_and_combine() {
        let mut rng = rand::thread_rng();
        for _ in 0..300 {
            let n: u8 = rng.gen_range(2..=8);
            let m: u8 = rng.gen_range(2..=n);
            let secret = random_secret();
            let shares = split(&secret, m, n).unwrap();
            let mut picked: Vec<&Share> = shares.iter().collect();
            picked.shuffle(&mut rng);
            let take = rng.gen_range(usize::from(m)..=usize::from(n));
            let typed: Vec<Share> = picked[..take]
                .iter()
                .map(|s| Share::parse(&s.to_text()).unwrap())
                .collect();
            let got = combine(&typed).unwrap();
            assert_eq!(got.as_bytes(), secret.as_bytes());
            got.verify_check_value(&secret.check_value()).unwrap();

            assert!(matches!(
                combine(&typed[..usize::from(m) - 1]).unwrap_err(),
                SharesError::TooFew { .. } | SharesError::NoShares
            ));
            let raw: Vec<Vec<u8>> = typed[..usize::from(m) - 1]
                .iter()
                .map(|s| s.as_bytes().to_vec())
                .collect();
            if !raw.is_empty() {
                assert_eq!(shamirsecretsharing::combine_shares(&raw).unwrap(), None);
            }

            let victim = rng.gen_range(0..usize::from(m));
            let mut bytes = typed[victim].as_bytes().to_vec();
            let at = rng.gen_range(1..KEYSHARE_LEN);
            bytes[at] ^= rng.gen_range(1..=255u8);
            let bad = Share::from_bytes(m, &bytes).unwrap();
            let mut set: Vec<&Share> = typed[..usize::from(m)].iter().collect();
            set[victim] = &bad;
            assert_eq!(combine(&set).unwrap_err(), SharesError::Rejected);
        }
    }
}
