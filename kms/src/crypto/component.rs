//! Key components under split knowledge: each custodian types one XOR share
//! of a secret key; the shares combine into the key only to be handed to
//! the HSM.
//!
//! Nothing here is `Clone`, `Display` or has a `Debug` that shows a value,
//! values live in [`Zeroizing`] buffers, and no error message carries any
//! part of what was typed. What custodians may see are check values.

use super::kcv::{ct_eq, verify_kcv, Kcv, KcvError, KcvMethod};
use crate::model::{Algorithm, KeyFamily};
use std::fmt;
use zeroize::{Zeroize, Zeroizing};

/// Why a component or the key combined from components was refused. No
/// variant holds key material: these messages reach logs and terminals.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ComponentError {
    #[error("{alg} keys are not entered as components; only AES and TDES secret keys are")]
    NotSecret { alg: Algorithm },
    #[error("character {position} of the component is not a hex digit")]
    NotHex { position: usize },
    #[error("a {alg} component is {expected} hex digits, this one has {got}")]
    Length {
        alg: Algorithm,
        expected: usize,
        got: usize,
    },
    #[error("the component is all zeros")]
    AllZero,
    #[error("the component is one byte repeated")]
    RepeatedByte,
    #[error("a key is combined from 2 or 3 components, not {0}")]
    Count(usize),
    #[error("a component entered for {got} cannot be used for a {expected} key")]
    AlgorithmMismatch { expected: Algorithm, got: Algorithm },
    /// Two equal components cancel out: the key would be known to the
    /// remaining custodian alone (or be zero).
    #[error("components {first} and {second} are identical")]
    Duplicate { first: usize, second: usize },
    #[error("the combined key is refused: {0}")]
    WeakKey(WeakKey),
    #[error("the check value does not match the expected {expected}")]
    KcvMismatch { expected: Kcv },
    #[error("a {alg} key has no {len}-byte check value")]
    KcvNotApplicable { alg: Algorithm, len: usize },
    #[error(transparent)]
    Kcv(#[from] KcvError),
}

/// Why a combined key value is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WeakKey {
    #[error("it is all zeros")]
    AllZero,
    /// `part` counts the 8-byte DES keys of the TDES key from 1.
    #[error("its DES key {part} is a DES weak key")]
    DesWeak { part: usize },
    #[error("its DES key {part} is a DES semi-weak key")]
    DesSemiWeak { part: usize },
    #[error("its DES keys {first} and {second} are equal, so it is single DES")]
    Degenerate { first: usize, second: usize },
}

/// One custodian's XOR share of a secret key.
pub struct Component {
    alg: Algorithm,
    value: Zeroizing<Vec<u8>>,
}

impl Component {
    /// Reads a component typed as hex digits, either case, with optional
    /// spaces (forms print them in groups).
    pub fn parse_hex(s: &str, alg: Algorithm) -> Result<Self, ComponentError> {
        let len = secret_len(alg)?;
        let mut digits = 0usize;
        for (i, c) in s.chars().enumerate() {
            if c.is_ascii_hexdigit() {
                digits += 1;
            } else if !c.is_ascii_whitespace() {
                return Err(ComponentError::NotHex { position: i + 1 });
            }
        }
        if digits != 2 * len {
            return Err(ComponentError::Length {
                alg,
                expected: 2 * len,
                got: digits,
            });
        }
        // Sized once: a Vec that grows moves its bytes and frees the old
        // buffer without wiping it.
        let mut value = Zeroizing::new(vec![0u8; len]);
        let mut nibbles = s.bytes().filter_map(|b| (b as char).to_digit(16));
        for byte in value.iter_mut() {
            let (Some(hi), Some(lo)) = (nibbles.next(), nibbles.next()) else {
                // Unreachable after the count above; refuse rather than panic.
                return Err(ComponentError::Length {
                    alg,
                    expected: 2 * len,
                    got: digits,
                });
            };
            // Both digits are < 16, so the cast keeps every bit.
            *byte = ((hi << 4) | lo) as u8;
        }
        Self::checked(alg, value)
    }

    /// A component from bytes already in memory (e.g. generated for a
    /// ceremony); the same checks as [`Component::parse_hex`].
    pub fn from_bytes(value: &[u8], alg: Algorithm) -> Result<Self, ComponentError> {
        let len = secret_len(alg)?;
        if value.len() != len {
            return Err(ComponentError::Length {
                alg,
                expected: 2 * len,
                got: 2 * value.len(),
            });
        }
        Self::checked(alg, Zeroizing::new(value.to_vec()))
    }

    fn checked(alg: Algorithm, value: Zeroizing<Vec<u8>>) -> Result<Self, ComponentError> {
        if value.iter().all(|&b| b == 0) {
            return Err(ComponentError::AllZero);
        }
        if value.iter().all(|&b| Some(&b) == value.first()) {
            return Err(ComponentError::RepeatedByte);
        }
        Ok(Self { alg, value })
    }

    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    pub fn byte_len(&self) -> usize {
        self.value.len()
    }

    /// The component's own check value, printed on the custodian's form.
    pub fn kcv(&self, method: KcvMethod) -> Result<Kcv, KcvError> {
        method.compute(&self.value)
    }

    /// The digits to show its one custodian, once, in groups of four (a
    /// component generated for export). Zeroized when dropped; never
    /// logged, stored or put in a transcript.
    pub fn reveal_hex(&self) -> Zeroizing<String> {
        let mut out = Zeroizing::new(String::with_capacity(self.value.len() * 5 / 2 + 1));
        for (i, b) in self.value.iter().enumerate() {
            if i > 0 && i % 2 == 0 {
                out.push(' ');
            }
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 0x0f) as usize] as char);
        }
        out
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

impl fmt::Debug for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Component(<redacted>, {} bytes)", self.value.len())
    }
}

/// A secret key value in host memory, combined from components.
pub struct ClearKey {
    alg: Algorithm,
    value: Zeroizing<Vec<u8>>,
}

impl ClearKey {
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    pub fn byte_len(&self) -> usize {
        self.value.len()
    }

    /// The key value: only for handing to the HSM import. Do not copy it
    /// anywhere else; the copy would not be wiped.
    pub fn as_bytes(&self) -> &[u8] {
        &self.value
    }

    pub fn kcv(&self, method: KcvMethod) -> Result<Kcv, KcvError> {
        method.compute(&self.value)
    }
}

impl fmt::Debug for ClearKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClearKey(<redacted>, {} bytes)", self.value.len())
    }
}

/// XORs 2 or 3 components into the key and refuses weak results.
pub fn combine(components: &[Component], alg: Algorithm) -> Result<ClearKey, ComponentError> {
    let len = secret_len(alg)?;
    if !(2..=3).contains(&components.len()) {
        return Err(ComponentError::Count(components.len()));
    }
    if let Some(c) = components.iter().find(|c| c.alg != alg) {
        return Err(ComponentError::AlgorithmMismatch {
            expected: alg,
            got: c.alg,
        });
    }
    for (i, a) in components.iter().enumerate() {
        for (j, b) in components.iter().enumerate().skip(i + 1) {
            if ct_eq(&a.value, &b.value) {
                return Err(ComponentError::Duplicate {
                    first: i + 1,
                    second: j + 1,
                });
            }
        }
    }
    let mut value = Zeroizing::new(vec![0u8; len]);
    for c in components {
        for (v, b) in value.iter_mut().zip(c.value.iter()) {
            *v ^= b;
        }
    }
    if let Some(w) = weakness(&value, alg) {
        return Err(ComponentError::WeakKey(w));
    }
    Ok(ClearKey { alg, value })
}

/// Checks a component against the check value on its custodian's form.
/// The method follows from the key family and the check value's length;
/// see [`KcvMethod::candidates`].
pub fn verify_component_kcv(
    component: &Component,
    alg: Algorithm,
    expected: &Kcv,
) -> Result<(), ComponentError> {
    if component.alg != alg {
        return Err(ComponentError::AlgorithmMismatch {
            expected: alg,
            got: component.alg,
        });
    }
    verify(&component.value, alg, expected)
}

/// Checks a combined key against the check value agreed for it.
pub fn verify_key_kcv(
    key: &ClearKey,
    alg: Algorithm,
    expected: &Kcv,
) -> Result<(), ComponentError> {
    if key.alg != alg {
        return Err(ComponentError::AlgorithmMismatch {
            expected: alg,
            got: key.alg,
        });
    }
    verify(&key.value, alg, expected)
}

fn verify(value: &[u8], alg: Algorithm, expected: &Kcv) -> Result<(), ComponentError> {
    if KcvMethod::candidates(alg.family(), expected.len()).is_empty() {
        return Err(ComponentError::KcvNotApplicable {
            alg,
            len: expected.len(),
        });
    }
    match verify_kcv(value, alg, expected)? {
        Some(_) => Ok(()),
        None => Err(ComponentError::KcvMismatch {
            expected: expected.clone(),
        }),
    }
}

fn secret_len(alg: Algorithm) -> Result<usize, ComponentError> {
    alg.secret_len().ok_or(ComponentError::NotSecret { alg })
}

/// The reason a secret key value must not be used, if any. For TDES every
/// 8-byte DES key is checked with its parity bits ignored, since DES never
/// reads them: 0000000000000000 is the weak key 0101010101010101.
pub fn weakness(key: &[u8], alg: Algorithm) -> Option<WeakKey> {
    if key.iter().all(|&b| b == 0) {
        return Some(WeakKey::AllZero);
    }
    if alg.family() != KeyFamily::Tdes {
        return None;
    }
    let parts: Vec<&[u8]> = key.chunks(8).collect();
    for (i, p) in parts.iter().enumerate() {
        if DES_WEAK.iter().any(|w| same_des_key(p, w)) {
            return Some(WeakKey::DesWeak { part: i + 1 });
        }
        if DES_SEMI_WEAK.iter().any(|w| same_des_key(p, w)) {
            return Some(WeakKey::DesSemiWeak { part: i + 1 });
        }
    }
    // E(K1) D(K2) E(K3) with K1 = K2 or K2 = K3 reduces to one DES
    // encryption; K1 = K3 is the legitimate 2-key form.
    for (first, second) in [(0, 1), (1, 2)] {
        if let (Some(a), Some(b)) = (parts.get(first), parts.get(second)) {
            if same_des_key(a, b) {
                return Some(WeakKey::Degenerate {
                    first: first + 1,
                    second: second + 1,
                });
            }
        }
    }
    None
}

fn same_des_key(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a
        .iter()
        .zip(b)
        .fold(0u8, |acc, (x, y)| acc | ((x ^ y) & 0xFE));
    let same = a.len() == b.len() && diff == 0;
    diff.zeroize();
    same
}

/// FIPS 74 / NIST SP 800-67 §3.3.2, with odd parity.
const DES_WEAK: [[u8; 8]; 4] = [
    [0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01],
    [0xFE, 0xFE, 0xFE, 0xFE, 0xFE, 0xFE, 0xFE, 0xFE],
    [0xE0, 0xE0, 0xE0, 0xE0, 0xF1, 0xF1, 0xF1, 0xF1],
    [0x1F, 0x1F, 0x1F, 0x1F, 0x0E, 0x0E, 0x0E, 0x0E],
];

const DES_SEMI_WEAK: [[u8; 8]; 12] = [
    [0x01, 0x1F, 0x01, 0x1F, 0x01, 0x0E, 0x01, 0x0E],
    [0x1F, 0x01, 0x1F, 0x01, 0x0E, 0x01, 0x0E, 0x01],
    [0x01, 0xE0, 0x01, 0xE0, 0x01, 0xF1, 0x01, 0xF1],
    [0xE0, 0x01, 0xE0, 0x01, 0xF1, 0x01, 0xF1, 0x01],
    [0x01, 0xFE, 0x01, 0xFE, 0x01, 0xFE, 0x01, 0xFE],
    [0xFE, 0x01, 0xFE, 0x01, 0xFE, 0x01, 0xFE, 0x01],
    [0x1F, 0xE0, 0x1F, 0xE0, 0x0E, 0xF1, 0x0E, 0xF1],
    [0xE0, 0x1F, 0xE0, 0x1F, 0xF1, 0x0E, 0xF1, 0x0E],
    [0x1F, 0xFE, 0x1F, 0xFE, 0x0E, 0xFE, 0x0E, 0xFE],
    [0xFE, 0x1F, 0xFE, 0x1F, 0xFE, 0x0E, 0xFE, 0x0E],
    [0xE0, 0xFE, 0xE0, 0xFE, 0xF1, 0xFE, 0xF1, 0xFE],
    [0xFE, 0xE0, 0xFE, 0xE0, 0xFE, 0xF1, 0xFE, 0xF1],
];

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    struct Entry {
        alg: Algorithm,
        key: &'static str,
        components: [&'static str; 3],
        /// (method, check value) pairs the key must match.
        kcvs: &'static [(KcvMethod, &'static str)],
    }

    /// /work/shared/vectors/known-answers.json, section `kcv`, every entry.
    const VECTORS: [Entry; 5] = [
        Entry {
            alg: Algorithm::Tdes2,
            key: "D32CADF2010BADCBB0FD23E09B767CF1",
            components: [
                "29C2706DC7D6913E13CDB901948FE30E",
                "F125A2734AE007C1CBFEFBB58AE9F85B",
                "0BCB7FEC8C3D3B3468CE6154851067A4",
            ],
            kcvs: &[(KcvMethod::Tdes, "DD4D44")],
        },
        Entry {
            alg: Algorithm::Tdes3,
            key: "974013138640D5A429738CBC523BCB4397AD43455DCE9223",
            components: [
                "8054074C0B26EC07F84985C776C8677A67BC9B83A76D3451",
                "DC31CBD92F1F32D5D97CA46431BCE0136B2AE598EF6E627C",
                "CB25DF86A2790B760846AD1F154F4C2A9B3B3D5E15CDC40E",
            ],
            kcvs: &[(KcvMethod::Tdes, "59FB85")],
        },
        Entry {
            alg: Algorithm::Aes128,
            key: "1B76087BC1EE6992C1FBDE1808DE7D37",
            components: [
                "8E5D7E2AAB24FFBC77CEAE520843D867",
                "625AF380A2539516021623D78C463DAF",
                "F77185D1C8990338B423539D8CDB98FF",
            ],
            kcvs: &[
                (KcvMethod::AesCmac, "F01048044C"),
                (KcvMethod::AesGp, "97E949"),
            ],
        },
        Entry {
            alg: Algorithm::Aes192,
            key: "C26F8D83F413340870E30F01567748AD796331CE6738BBF2",
            components: [
                "3774C7EE45345CE55D47FF055BD101AF7F569363A8A804BE",
                "E023A132B33C37C68D67240FA2F69237B90BA15B0BFFA26E",
                "1538EB5F021B5F2BA0C3D40BAF50DB35BF3E03F6C46F1D22",
            ],
            kcvs: &[
                (KcvMethod::AesCmac, "51324953B2"),
                (KcvMethod::AesGp, "D569A7"),
            ],
        },
        Entry {
            alg: Algorithm::Aes256,
            key: "7B5E98DEFB4C36CAE2C3164D87904633B913BA932652CFB1F8220461B6386E0B",
            components: [
                "730BAE4D882181934564FE6EC9C4843B2C87CB01D4DDFF222CDF71DDD6B9D22E",
                "BC545A5587EDD2D3E7D997ABFE33483C8C9608D176B47C52577BBFBE2057DE7D",
                "B4016CC6F480658A407E7F88B0678A3419027943843B4CC18386CA0240D66258",
            ],
            kcvs: &[
                (KcvMethod::AesCmac, "BC3CC709D0"),
                (KcvMethod::AesGp, "F14CE4"),
            ],
        },
    ];

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    fn parse_all(e: &Entry) -> Vec<Component> {
        e.components
            .iter()
            .map(|c| Component::parse_hex(c, e.alg).unwrap())
            .collect()
    }

    /// Two components (a fixed, varied first one and the XOR remainder)
    /// that combine to `key`.
    fn split(key: &[u8], alg: Algorithm) -> [Component; 2] {
        let first: Vec<u8> = (0..key.len())
            .map(|i| (i as u8).wrapping_mul(37).wrapping_add(11))
            .collect();
        let second: Vec<u8> = first.iter().zip(key).map(|(a, b)| a ^ b).collect();
        [
            Component::from_bytes(&first, alg).unwrap(),
            Component::from_bytes(&second, alg).unwrap(),
        ]
    }

    fn combine_bytes(key: &[u8], alg: Algorithm) -> Result<ClearKey, ComponentError> {
        combine(&split(key, alg), alg)
    }

    #[test]
    fn known_components_combine_to_the_known_keys() {
        for e in &VECTORS {
            let key = combine(&parse_all(e), e.alg).unwrap();
            assert_eq!(key.as_bytes(), h(e.key).as_slice(), "{}", e.key);
            assert_eq!(key.algorithm(), e.alg);
            for (method, kcv) in e.kcvs {
                let expected = Kcv::parse_hex(kcv).unwrap();
                assert_eq!(key.kcv(*method).unwrap(), expected, "{} {method}", e.key);
                verify_key_kcv(&key, e.alg, &expected).unwrap();
            }
        }
    }

    #[test]
    fn component_check_values_verify() {
        for e in &VECTORS {
            let method = KcvMethod::preferred(e.alg.family()).unwrap();
            for c in parse_all(e) {
                let kcv = c.kcv(method).unwrap();
                verify_component_kcv(&c, e.alg, &kcv).unwrap();
                let mut wrong = kcv.as_bytes().to_vec();
                wrong[0] ^= 1;
                let wrong = Kcv::from_bytes(&wrong).unwrap();
                assert_eq!(
                    verify_component_kcv(&c, e.alg, &wrong),
                    Err(ComponentError::KcvMismatch { expected: wrong })
                );
            }
        }
    }

    #[test]
    fn three_byte_aes_check_values_may_be_either_form() {
        let e = &VECTORS[2];
        let key = combine(&parse_all(e), e.alg).unwrap();
        for method in [KcvMethod::AesEcb, KcvMethod::AesGp, KcvMethod::AesCmac] {
            verify_key_kcv(&key, e.alg, &key.kcv(method).unwrap()).unwrap();
        }
        let tdes = &VECTORS[0];
        let tkey = combine(&parse_all(tdes), tdes.alg).unwrap();
        assert_eq!(
            verify_key_kcv(&tkey, tdes.alg, &Kcv::parse_hex("F01048044C").unwrap()),
            Err(ComponentError::KcvNotApplicable {
                alg: Algorithm::Tdes2,
                len: 5
            })
        );
        assert!(matches!(
            verify_key_kcv(&tkey, Algorithm::Aes128, &Kcv::parse_hex("DD4D44").unwrap()),
            Err(ComponentError::AlgorithmMismatch { .. })
        ));
    }

    #[test]
    fn hex_is_read_in_either_case_with_spaces() {
        let upper = "29C2706DC7D6913E13CDB901948FE30E";
        let spaced = "29c2 706d c7d6 913e  13cd b901 948f e30e\n";
        let a = Component::parse_hex(upper, Algorithm::Tdes2).unwrap();
        let b = Component::parse_hex(spaced, Algorithm::Tdes2).unwrap();
        assert_eq!(a.value.as_slice(), b.value.as_slice());
        assert_eq!(a.value.as_slice(), h(upper).as_slice());
        assert_eq!(a.byte_len(), 16);
    }

    #[test]
    fn bad_components_are_refused() {
        let alg = Algorithm::Aes128;
        let err = |s: &str| Component::parse_hex(s, alg).unwrap_err();
        assert_eq!(err(&"00".repeat(16)), ComponentError::AllZero);
        assert_eq!(err(&"5A".repeat(16)), ComponentError::RepeatedByte);
        assert_eq!(
            err(&"5A".repeat(15)),
            ComponentError::Length {
                alg,
                expected: 32,
                got: 30
            }
        );
        assert!(matches!(
            err("29C2706DC7D6913E13CDB901948FE30"),
            ComponentError::Length { got: 31, .. }
        ));
        assert_eq!(
            err("29C2706DC7D6913E13CDB901948FE3-0E"),
            ComponentError::NotHex { position: 31 }
        );
        assert_eq!(
            Component::parse_hex(&"5A".repeat(16), Algorithm::Rsa2048).unwrap_err(),
            ComponentError::NotSecret {
                alg: Algorithm::Rsa2048
            }
        );
        assert!(matches!(
            Component::from_bytes(&[1u8; 15], alg),
            Err(ComponentError::Length { .. })
        ));
    }

    #[test]
    fn combine_needs_two_or_three_components_of_the_key_algorithm() {
        let e = &VECTORS[0];
        let mut cs = parse_all(e);
        assert_eq!(
            combine(&cs[..1], e.alg).unwrap_err(),
            ComponentError::Count(1)
        );
        assert!(combine(&cs[..2], e.alg).is_ok());
        cs.push(Component::from_bytes(&h("0123456789ABCDEF0123456789ABCDEE"), e.alg).unwrap());
        assert_eq!(combine(&cs, e.alg).unwrap_err(), ComponentError::Count(4));
        assert_eq!(
            combine(&cs[..3], Algorithm::Aes128).unwrap_err(),
            ComponentError::AlgorithmMismatch {
                expected: Algorithm::Aes128,
                got: Algorithm::Tdes2
            }
        );
    }

    #[test]
    fn identical_components_are_refused() {
        let e = &VECTORS[2];
        let a = Component::parse_hex(e.components[0], e.alg).unwrap();
        let b = Component::parse_hex(e.components[1], e.alg).unwrap();
        let a2 = Component::parse_hex(e.components[0], e.alg).unwrap();
        assert_eq!(
            combine(&[a, b, a2], e.alg).unwrap_err(),
            ComponentError::Duplicate {
                first: 1,
                second: 3
            }
        );
    }

    #[test]
    fn an_all_zero_key_is_refused() {
        let e = &VECTORS[2];
        let a = h(e.components[0]);
        let b = h(e.components[1]);
        let c: Vec<u8> = a.iter().zip(&b).map(|(x, y)| x ^ y).collect();
        let cs = [a, b, c].map(|v| Component::from_bytes(&v, e.alg).unwrap());
        assert_eq!(
            combine(&cs, e.alg).unwrap_err(),
            ComponentError::WeakKey(WeakKey::AllZero)
        );
    }

    #[test]
    fn des_weak_and_semi_weak_halves_are_refused_ignoring_parity() {
        let strong = h("0123456789ABCDEF");
        for (table, is_weak) in [(&DES_WEAK[..], true), (&DES_SEMI_WEAK[..], false)] {
            for w in table {
                // Even parity instead of odd: DES reads the same key.
                let flipped: Vec<u8> = w.iter().map(|b| b ^ 1).collect();
                for half in [w.to_vec(), flipped] {
                    for part in [1, 2] {
                        let key = if part == 1 {
                            [half.clone(), strong.clone()].concat()
                        } else {
                            [strong.clone(), half.clone()].concat()
                        };
                        let want = if is_weak {
                            WeakKey::DesWeak { part }
                        } else {
                            WeakKey::DesSemiWeak { part }
                        };
                        assert_eq!(
                            combine_bytes(&key, Algorithm::Tdes2).unwrap_err(),
                            ComponentError::WeakKey(want),
                            "{}",
                            hex::encode_upper(&key)
                        );
                    }
                }
            }
        }
        let key = [strong.clone(), h("FEDCBA9876543210"), h("FEFEFEFEFEFEFEFE")].concat();
        assert_eq!(
            combine_bytes(&key, Algorithm::Tdes3).unwrap_err(),
            ComponentError::WeakKey(WeakKey::DesWeak { part: 3 })
        );
        // The same bytes are an ordinary AES key.
        let aes = [DES_WEAK[0], DES_WEAK[1]].concat();
        assert!(combine_bytes(&aes, Algorithm::Aes128).is_ok());
    }

    #[test]
    fn degenerate_tdes_is_refused() {
        let k1 = h("0123456789ABCDEF");
        let k2 = h("FEDCBA9876543210");
        let k1_parity: Vec<u8> = k1.iter().map(|b| b ^ 1).collect();
        let degenerate = |key: Vec<u8>, alg| combine_bytes(&key, alg).unwrap_err();
        assert_eq!(
            degenerate([k1.clone(), k1_parity.clone()].concat(), Algorithm::Tdes2),
            ComponentError::WeakKey(WeakKey::Degenerate {
                first: 1,
                second: 2
            })
        );
        assert_eq!(
            degenerate(
                [k1.clone(), k1.clone(), k2.clone()].concat(),
                Algorithm::Tdes3
            ),
            ComponentError::WeakKey(WeakKey::Degenerate {
                first: 1,
                second: 2
            })
        );
        assert_eq!(
            degenerate(
                [k2.clone(), k1.clone(), k1_parity].concat(),
                Algorithm::Tdes3
            ),
            ComponentError::WeakKey(WeakKey::Degenerate {
                first: 2,
                second: 3
            })
        );
        // K1 = K3 is 2-key TDES in 3-key form, not single DES.
        assert!(combine_bytes(&[k1.clone(), k2, k1].concat(), Algorithm::Tdes3).is_ok());
    }

    fn assert_hides(text: &str, secret: &[u8]) {
        assert_hides_digits(text, &hex::encode(secret));
    }

    /// No run of 8 of the typed hex digits (4 bytes of the value), in either
    /// case, appears in `text`.
    fn assert_hides_digits(text: &str, typed: &str) {
        let digits: String = typed.chars().filter(|c| c.is_ascii_hexdigit()).collect();
        for needle in [digits.to_ascii_uppercase(), digits.to_ascii_lowercase()] {
            for w in needle.as_bytes().windows(8) {
                let w = std::str::from_utf8(w).unwrap();
                assert!(!text.contains(w), "{text:?} shows part of the value");
            }
        }
    }

    #[test]
    fn nothing_shows_the_value() {
        for e in &VECTORS {
            let cs = parse_all(e);
            for (c, text) in cs.iter().zip(e.components) {
                let shown = format!("{c:?}");
                assert_eq!(
                    shown,
                    format!("Component(<redacted>, {} bytes)", c.byte_len())
                );
                assert_hides(&shown, &h(text));
            }
            let key = combine(&cs, e.alg).unwrap();
            let shown = format!("{key:?}");
            assert_eq!(
                shown,
                format!("ClearKey(<redacted>, {} bytes)", key.byte_len())
            );
            assert_hides(&shown, &h(e.key));
        }
    }

    #[test]
    fn errors_do_not_show_what_was_typed() {
        let alg = Algorithm::Tdes2;
        let value = "D32CADF2010BADCBB0FD23E09B767CF1";
        let inputs = [
            format!("{value}AB"),            // too long
            format!("{value}Z"),             // not hex
            value[..31].to_string(),         // odd
            "A5".repeat(16),                 // repeated byte
            value.to_lowercase() + "\u{e9}", // non-ASCII
        ];
        for input in &inputs {
            let e = Component::parse_hex(input, alg).unwrap_err();
            for text in [e.to_string(), format!("{e:?}")] {
                assert_hides_digits(&text, input);
            }
        }
        let key = h(value);
        let mut weak = key.clone();
        weak[8..].copy_from_slice(&key[..8]);
        let e = combine_bytes(&weak, alg).unwrap_err();
        for text in [e.to_string(), format!("{e:?}")] {
            assert_hides(&text, &weak);
        }
    }
}
