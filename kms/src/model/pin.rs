//! Custodian and officer PINs: the secret type and the rules a new PIN must
//! meet (requirements AUTH-PIN-LEN, AUTH-PIN-WEAK; TSM-AC-1).
//!
//! A [`Pin`] holds what a person typed in a [`Zeroizing`] buffer, shows
//! nothing of it in `Debug`, and has no `Display` or `Serialize`: the only
//! way to the characters is [`Pin::expose`], used by the hasher. Nothing in
//! this module ever puts a PIN, or a part of one, into an error.
//!
//! Two kinds of secret are accepted, decided by what was typed:
//! - a **numeric PIN**: digits only, at least [`PinPolicy::min_digits`]
//!   (default 6; never fewer than 4, the AUTH-PIN-LEN minimum), so people
//!   who enter it on a PIN pad can;
//! - a **passphrase**: anything else of at least 8 printable ASCII
//!   characters (letters, digits, punctuation, inner spaces). ASCII only,
//!   because the same non-ASCII passphrase can reach the KMS as different
//!   bytes from different terminals and input methods (NFC against NFD,
//!   full-width forms), and a custodian must never be locked out by their
//!   keyboard. Leading and trailing spaces are refused rather than trimmed.
//!
//! Refused as weak (AUTH-PIN-WEAK), for both kinds: the whole secret
//! repeating one shorter block (`1111`, `1212`, `123123`, `abcabcabc`), the
//! whole secret a run of consecutive characters up or down (`1234`, `4321`,
//! `0123`, `abcdefgh`), and a short list of commonly used PINs and
//! passwords. For numeric PINs also any run of 4 or more repeated or
//! consecutive digits anywhere inside (`5811117`, `9034567`). Digits count
//! as consecutive across the 9-0 wrap (`7890`, `8901`, `1098`), as they sit
//! on a keypad row.

use std::fmt;
use zeroize::Zeroizing;

/// The AUTH-PIN-LEN floor: no policy may accept shorter numeric PINs.
pub const MIN_PIN_DIGITS: usize = 4;
/// The default minimum length of a numeric PIN: stricter than the standard's
/// 4, as these PINs guard key ceremonies rather than one card.
pub const DEFAULT_MIN_PIN_DIGITS: usize = 6;
/// The shortest passphrase (a secret that is not all digits).
pub const MIN_PASSPHRASE_CHARS: usize = 8;
/// The longest secret accepted, of either kind: bounds the hashing work an
/// input can cause.
pub const MAX_PIN_CHARS: usize = 128;
/// A run this long of repeated or consecutive digits makes a numeric PIN
/// weak wherever it sits.
const MAX_RUN: usize = 4;

/// Commonly used PINs and passwords, refused outright. Many more are caught
/// by the run and repetition rules; these are the ones those rules miss
/// (keypad shapes, dates of love, keyboard rows, words). Compared without
/// regard to case.
const COMMON: &[&str] = &[
    // Keypad columns, diagonals and crosses.
    "2580",
    "0852",
    "1470",
    "0741",
    "3690",
    "0963",
    "1590",
    "0951",
    "3570",
    "0753",
    "1379",
    "9731",
    "1397",
    "7931",
    "2468",
    "8642",
    "1357",
    "7531",
    "147258",
    "258369",
    "369258",
    "159753",
    "357159",
    "147852",
    "789456",
    "456123",
    "741852",
    "963852",
    // Popular PINs and their patterns.
    "1004",
    "2000",
    "2001",
    "5683",
    "1122",
    "1221",
    "2112",
    "1001",
    "112233",
    "332211",
    "121314",
    "102030",
    "123321",
    "123654",
    "124578",
    "753951",
    // "I love you (for ever)" in Chinese number play, common in Taiwan.
    "5201314",
    "1314520",
    "131420",
    // Passwords.
    "password",
    "password1",
    "password12",
    "password123",
    "passw0rd",
    "p@ssw0rd",
    "p@ssword",
    "qwertyui",
    "qwertyuiop",
    "asdfghjk",
    "asdfghjkl",
    "zxcvbnm1",
    "1qaz2wsx",
    "zaq12wsx",
    "1q2w3e4r",
    "1q2w3e4r5t",
    "qwer1234",
    "asdf1234",
    "abcd1234",
    "abc12345",
    "a1234567",
    "aa123456",
    "iloveyou",
    "iloveyou1",
    "letmein1",
    "changeme",
    "changeit",
    "welcome1",
    "admin123",
    "administrator",
    "trustno1",
    "sunshine",
    "football",
    "princess",
    "baseball",
    "superman",
    "starwars",
    "whatever",
    "computer",
    "internet",
    "security",
    "custodian",
    "officer1",
];

/// A PIN or passphrase as a person typed it. Zeroized when dropped; never
/// shown.
#[derive(Clone)]
pub struct Pin(Zeroizing<String>);

impl Pin {
    /// Wrap what was typed, unchecked: for logging in, where what matters is
    /// whether it matches. New PINs go through [`PinPolicy::check`].
    pub fn new(typed: impl Into<String>) -> Pin {
        Pin(Zeroizing::new(typed.into()))
    }

    /// The characters, for the hasher.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn kind(&self) -> PinKind {
        kind_of(&self.0)
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pin(<redacted>)")
    }
}

impl From<Zeroizing<String>> for Pin {
    fn from(typed: Zeroizing<String>) -> Pin {
        Pin(typed)
    }
}

/// Which rules a secret is checked by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinKind {
    /// Digits only.
    Numeric,
    /// Anything else.
    Passphrase,
}

impl fmt::Display for PinKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PinKind::Numeric => "numeric PIN",
            PinKind::Passphrase => "passphrase",
        })
    }
}

fn kind_of(s: &str) -> PinKind {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        PinKind::Numeric
    } else {
        PinKind::Passphrase
    }
}

/// Why a new PIN was refused. No variant carries the PIN, a part of it or
/// its length.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PinError {
    /// AUTH-PIN-LEN.
    #[error("a {kind} needs at least {min} characters")]
    TooShort { kind: PinKind, min: usize },
    #[error("a PIN or passphrase has at most {max} characters")]
    TooLong { max: usize },
    #[error("a passphrase may hold only printable ASCII characters (letters, digits, punctuation, spaces)")]
    NotPrintable,
    #[error("a passphrase must not begin or end with a space")]
    OuterSpace,
    /// AUTH-PIN-WEAK: `1111`, `1212`, `123123`.
    #[error("the {kind} repeats a shorter pattern")]
    Repeating { kind: PinKind },
    /// AUTH-PIN-WEAK: `1234`, `4321`, `abcdefgh`.
    #[error("the {kind} is a run of consecutive characters")]
    Sequence { kind: PinKind },
    /// AUTH-PIN-WEAK: a run inside a numeric PIN.
    #[error("the PIN holds {MAX_RUN} or more repeated or consecutive digits in a row")]
    WeakRun,
    /// AUTH-PIN-WEAK: a commonly used PIN or password.
    #[error("the {kind} is one of the commonly used ones")]
    Common { kind: PinKind },
    /// The policy itself is out of bounds (a configuration error).
    #[error("PIN policy: {0}")]
    Policy(&'static str),
}

/// The rules a new PIN must meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinPolicy {
    min_digits: usize,
}

impl Default for PinPolicy {
    fn default() -> Self {
        PinPolicy {
            min_digits: DEFAULT_MIN_PIN_DIGITS,
        }
    }
}

impl PinPolicy {
    /// A policy with its own minimum length for numeric PINs: from 4 (the
    /// AUTH-PIN-LEN minimum, which no setting can lower) to 16.
    pub fn new(min_digits: usize) -> Result<PinPolicy, PinError> {
        if min_digits < MIN_PIN_DIGITS {
            return Err(PinError::Policy(
                "numeric PINs need at least 4 digits (AUTH-PIN-LEN)",
            ));
        }
        if min_digits > 16 {
            return Err(PinError::Policy(
                "a minimum above 16 digits is not a PIN; use a passphrase",
            ));
        }
        Ok(PinPolicy { min_digits })
    }

    pub fn min_digits(&self) -> usize {
        self.min_digits
    }

    /// Check a new PIN or passphrase; on success it is returned as a [`Pin`].
    pub fn check(&self, typed: &str) -> Result<Pin, PinError> {
        let kind = kind_of(typed);
        let chars = typed.chars().count();
        if chars > MAX_PIN_CHARS {
            return Err(PinError::TooLong { max: MAX_PIN_CHARS });
        }
        match kind {
            PinKind::Numeric => {
                if chars < self.min_digits {
                    return Err(PinError::TooShort {
                        kind,
                        min: self.min_digits,
                    });
                }
            }
            PinKind::Passphrase => {
                if !typed.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
                    return Err(PinError::NotPrintable);
                }
                if chars < MIN_PASSPHRASE_CHARS {
                    return Err(PinError::TooShort {
                        kind,
                        min: MIN_PASSPHRASE_CHARS,
                    });
                }
                if typed.starts_with(' ') || typed.ends_with(' ') {
                    return Err(PinError::OuterSpace);
                }
            }
        }
        // From here on the secret is printable ASCII: bytes are characters.
        let lower = Zeroizing::new(typed.to_ascii_lowercase());
        let b = lower.as_bytes();
        if repeats_a_block(b) {
            return Err(PinError::Repeating { kind });
        }
        if is_sequence(b, kind) {
            return Err(PinError::Sequence { kind });
        }
        if COMMON.iter().any(|c| c.as_bytes() == b) {
            return Err(PinError::Common { kind });
        }
        if kind == PinKind::Numeric && has_weak_run(b) {
            return Err(PinError::WeakRun);
        }
        Ok(Pin::new(typed))
    }
}

/// The whole secret is one shorter block said at least twice.
fn repeats_a_block(b: &[u8]) -> bool {
    (1..=b.len() / 2).any(|n| b.len() % n == 0 && b.chunks(n).all(|c| c == &b[..n]))
}

/// `next` follows `prev` going up (`up`) or down; digits wrap 9-0.
fn follows(prev: u8, next: u8, up: bool, kind: PinKind) -> bool {
    if kind == PinKind::Numeric {
        let (p, n) = (prev - b'0', next - b'0');
        if up {
            n == (p + 1) % 10
        } else {
            n == (p + 9) % 10
        }
    } else if up {
        prev.checked_add(1) == Some(next)
    } else {
        prev.checked_sub(1) == Some(next)
    }
}

fn is_sequence(b: &[u8], kind: PinKind) -> bool {
    [true, false]
        .into_iter()
        .any(|up| b.windows(2).all(|w| follows(w[0], w[1], up, kind)))
}

/// Any run of [`MAX_RUN`] digits, all the same or consecutive up or down.
fn has_weak_run(b: &[u8]) -> bool {
    b.windows(MAX_RUN).any(|w| {
        w.windows(2).all(|p| p[0] == p[1])
            || [true, false].into_iter().any(|up| {
                w.windows(2)
                    .all(|p| follows(p[0], p[1], up, PinKind::Numeric))
            })
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn refused(p: &PinPolicy, pin: &str) -> PinError {
        match p.check(pin) {
            Ok(_) => panic!("a weak or malformed PIN was accepted (case index hidden)"),
            Err(e) => e,
        }
    }

    #[test]
    fn auth_pin_len_numeric_pins_have_at_least_the_minimum_digits() {
        let standard = PinPolicy::new(4).unwrap();
        assert!(standard.check("5831").is_ok());
        assert!(standard.check("58314").is_ok());
        assert_eq!(
            refused(&standard, "583"),
            PinError::TooShort {
                kind: PinKind::Numeric,
                min: 4
            }
        );
        // The default is stricter than the standard.
        let default = PinPolicy::default();
        assert_eq!(default.min_digits(), 6);
        assert!(matches!(
            refused(&default, "58314"),
            PinError::TooShort { min: 6, .. }
        ));
        assert!(default.check("583140").is_ok());
        assert!(matches!(refused(&default, ""), PinError::TooShort { .. }));
    }

    #[test]
    fn auth_pin_len_no_policy_goes_below_four_digits() {
        assert!(matches!(PinPolicy::new(3), Err(PinError::Policy(_))));
        assert!(matches!(PinPolicy::new(0), Err(PinError::Policy(_))));
        assert!(matches!(PinPolicy::new(17), Err(PinError::Policy(_))));
        assert_eq!(PinPolicy::new(8).unwrap().min_digits(), 8);
        assert!(matches!(
            refused(&PinPolicy::new(8).unwrap(), "5831407"),
            PinError::TooShort { min: 8, .. }
        ));
    }

    #[test]
    fn auth_pin_len_passphrases_have_eight_printable_ascii_characters() {
        let p = PinPolicy::default();
        assert!(p.check("Kestrel on 3 wires").is_ok());
        assert!(p.check("tr0ub4dor&3").is_ok());
        assert_eq!(p.check("Kestrel!").unwrap().kind(), PinKind::Passphrase);
        assert!(matches!(
            refused(&p, "Kestre!"),
            PinError::TooShort {
                kind: PinKind::Passphrase,
                min: 8
            }
        ));
        assert_eq!(refused(&p, "Kestrel\ton wires"), PinError::NotPrintable);
        assert_eq!(refused(&p, "Kestrel\non wires"), PinError::NotPrintable);
        assert_eq!(refused(&p, "tête-à-tête à deux"), PinError::NotPrintable);
        assert_eq!(refused(&p, "密碼密碼密碼密碼"), PinError::NotPrintable);
        assert_eq!(refused(&p, " Kestrel on wires"), PinError::OuterSpace);
        assert_eq!(refused(&p, "Kestrel on wires "), PinError::OuterSpace);
        assert_eq!(
            refused(&p, &"Kestrel ".repeat(16)),
            PinError::OuterSpace,
            "under the length limit the space rule applies"
        );
        assert_eq!(
            refused(&p, &"Kestrel.".repeat(17)),
            PinError::TooLong { max: 128 }
        );
        assert_eq!(
            refused(&p, &"5".repeat(129)),
            PinError::TooLong { max: 128 }
        );
    }

    #[test]
    fn auth_pin_weak_repeated_and_consecutive_runs_are_refused() {
        let p = PinPolicy::new(4).unwrap();
        for pin in ["0000", "1111", "9999", "555555", "77777777"] {
            assert_eq!(
                refused(&p, pin),
                PinError::Repeating {
                    kind: PinKind::Numeric
                }
            );
        }
        for pin in [
            "1234",
            "4321",
            "0123",
            "3210",
            "6789",
            "9876",
            "7890",
            "8901",
            "9012",
            "1098",
            "0987",
            "123456",
            "654321",
            "234567890",
        ] {
            assert_eq!(
                refused(&p, pin),
                PinError::Sequence {
                    kind: PinKind::Numeric
                }
            );
        }
        // Runs of 4 inside a longer PIN.
        for pin in [
            "5811117", "90345678", "2755559", "8265432", "3901234", "4478901", "66661", "15555",
            "98760",
        ] {
            assert_eq!(refused(&p, pin), PinError::WeakRun);
        }
        // Runs of 3 are allowed.
        for pin in ["581117", "903452", "2755", "8265421", "1230"] {
            assert!(p.check(pin).is_ok());
        }
    }

    #[test]
    fn auth_pin_weak_repeated_blocks_and_common_pins_are_refused() {
        let p = PinPolicy::new(4).unwrap();
        for pin in ["1212", "4545", "6969", "123123", "908908", "12341234"] {
            assert_eq!(
                refused(&p, pin),
                PinError::Repeating {
                    kind: PinKind::Numeric
                }
            );
        }
        for pin in [
            "2580", "1004", "2000", "5683", "147258", "5201314", "159753",
        ] {
            assert_eq!(
                refused(&p, pin),
                PinError::Common {
                    kind: PinKind::Numeric
                }
            );
        }
        assert!(p.check("2581").is_ok());
    }

    #[test]
    fn auth_pin_weak_passphrases_follow_the_same_rules() {
        let p = PinPolicy::default();
        let kind = PinKind::Passphrase;
        assert_eq!(refused(&p, "aaaaaaaa"), PinError::Repeating { kind });
        assert_eq!(refused(&p, "abcabcabc"), PinError::Repeating { kind });
        assert_eq!(refused(&p, "passpass"), PinError::Repeating { kind });
        assert_eq!(refused(&p, "abcdefgh"), PinError::Sequence { kind });
        assert_eq!(refused(&p, "HGFEDCBA"), PinError::Sequence { kind });
        for common in [
            "password",
            "Password1",
            "P@ssw0rd",
            "QWERTYUIOP",
            "iloveyou",
        ] {
            assert_eq!(refused(&p, common), PinError::Common { kind });
        }
        // A passphrase may hold digits in a row: the run rule is for PINs.
        assert!(p.check("room 1234 north").is_ok());
    }

    #[test]
    fn errors_and_debug_never_show_the_pin() {
        let p = PinPolicy::default();
        let cases = [
            "583",
            "5831",
            "1234",
            "0000",
            "1212",
            "2580",
            "5811117",
            "Kestre!",
            "password",
            " spaced out ",
            "tab\tbed words",
            "abcdefgh",
        ];
        for pin in cases {
            let e = refused(&p, pin);
            let shown = format!("{e} {e:?}");
            assert!(!shown.contains(pin), "{shown}");
            assert!(!shown.contains(pin.trim()), "{shown}");
        }
        let pin = p.check("Kestrel on 3 wires").unwrap();
        assert_eq!(format!("{pin:?}"), "Pin(<redacted>)");
        assert_eq!(pin.expose(), "Kestrel on 3 wires");
        let typed = Pin::from(Zeroizing::new("583140".to_owned()));
        assert_eq!(typed.kind(), PinKind::Numeric);
        assert!(!format!("{typed:?}").contains("583140"));
    }
}
