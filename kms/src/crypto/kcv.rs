//! Key check values: short, public fingerprints that let a custodian confirm
//! that the value typed in is the value written on their form, and that let
//! the KMS confirm that the HSM holds the key everyone agreed on.
//!
//! Four conventions are in use with the keys this KMS manages:
//! - TDES: first 3 bytes of TDES-ECB E(8 zero bytes) (ANSI X9.24-1, EMV, GP).
//! - AES "legacy": first 3 bytes of AES-ECB E(16 zero bytes), what SoftHSM puts in
//!   `CKA_CHECK_VALUE`.
//! - AES-CMAC: first 5 bytes of AES-CMAC over one block of 16 zero bytes
//!   (ANSI X9.24-1:2017), the one to prefer for new AES keys.
//! - GlobalPlatform: first 3 bytes of AES-ECB E(16 bytes of 0x01) (GP Card
//!   Specification, PUT KEY for AES keys).

use crate::model::{Algorithm, KeyFamily};
use aes::cipher::{consts::U16, BlockEncrypt, BlockSizeUser, KeyInit};
use cmac::Mac;
use std::fmt;

/// Why a check value could not be computed or read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum KcvError {
    /// The key has a length the method is not defined for.
    #[error("a {method} check value needs a key of {expected} bytes, not {got} bytes")]
    KeyLength {
        method: KcvMethod,
        got: usize,
        expected: &'static str,
    },
    /// The text is not 6 or 10 hex digits.
    #[error("a check value is 6 or 10 hex digits (3 or 5 bytes)")]
    BadText,
    /// The value is not 3 or 5 bytes long.
    #[error("a check value is 3 or 5 bytes, not {0}")]
    BadLength(usize),
}

/// How a check value is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KcvMethod {
    /// First 3 bytes of TDES-ECB E(0^8); 2-key keys are K1 K2 K1.
    Tdes,
    /// First 3 bytes of AES-ECB E(0^16).
    AesEcb,
    /// First 5 bytes of AES-CMAC(0^16) (ANSI X9.24-1:2017).
    AesCmac,
    /// First 3 bytes of AES-ECB E(01^16) (GlobalPlatform).
    AesGp,
}

impl KcvMethod {
    pub const ALL: [KcvMethod; 4] = [
        KcvMethod::Tdes,
        KcvMethod::AesEcb,
        KcvMethod::AesCmac,
        KcvMethod::AesGp,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            KcvMethod::Tdes => "tdes",
            KcvMethod::AesEcb => "aes-ecb",
            KcvMethod::AesCmac => "aes-cmac",
            KcvMethod::AesGp => "aes-gp",
        }
    }

    /// Length in bytes of the check values this method makes.
    pub fn kcv_len(self) -> usize {
        match self {
            KcvMethod::AesCmac => 5,
            _ => 3,
        }
    }

    /// The method to print for a new key of this family: X9.24-1:2017 asks
    /// for the CMAC form for AES, since E(0) is itself a usable plaintext /
    /// ciphertext pair.
    pub fn preferred(family: KeyFamily) -> Option<KcvMethod> {
        match family {
            KeyFamily::Tdes => Some(KcvMethod::Tdes),
            KeyFamily::Aes => Some(KcvMethod::AesCmac),
            KeyFamily::Rsa | KeyFamily::Ec | KeyFamily::Hmac => None,
        }
    }

    /// The methods a check value of `kcv_len` bytes may have been made with
    /// for a key of `family`. A 3-byte AES value is ambiguous between the
    /// legacy zero-block form and the GlobalPlatform form; both are accepted,
    /// which costs one bit of the 24-bit check and saves custodians from
    /// having to know which one their form used.
    pub fn candidates(family: KeyFamily, kcv_len: usize) -> &'static [KcvMethod] {
        match (family, kcv_len) {
            (KeyFamily::Tdes, 3) => &[KcvMethod::Tdes],
            (KeyFamily::Aes, 3) => &[KcvMethod::AesEcb, KcvMethod::AesGp],
            (KeyFamily::Aes, 5) => &[KcvMethod::AesCmac],
            _ => &[],
        }
    }

    /// The check value of `key` by this method.
    pub fn compute(self, key: &[u8]) -> Result<Kcv, KcvError> {
        let bytes = match self {
            KcvMethod::Tdes => tdes_kcv(key)?.to_vec(),
            KcvMethod::AesEcb => aes_kcv(key)?.to_vec(),
            KcvMethod::AesCmac => aes_cmac_kcv(key)?.to_vec(),
            KcvMethod::AesGp => aes_gp_kcv(key)?.to_vec(),
        };
        Ok(Kcv(bytes))
    }
}

impl fmt::Display for KcvMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A key check value: 3 or 5 bytes, shown as upper-case hex.
///
/// Equality does not stop at the first differing byte, so that comparing
/// a typed value with a computed one does not tell, through timing, how
/// many leading bytes were right.
#[derive(Debug, Clone, Eq)]
pub struct Kcv(Vec<u8>);

impl Kcv {
    pub fn from_bytes(b: &[u8]) -> Result<Self, KcvError> {
        match b.len() {
            3 | 5 => Ok(Self(b.to_vec())),
            n => Err(KcvError::BadLength(n)),
        }
    }

    /// Reads 6 or 10 hex digits, either case, spaces allowed (forms often
    /// print `DD 4D 44`).
    pub fn parse_hex(s: &str) -> Result<Self, KcvError> {
        let digits: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        let v = hex::decode(digits).map_err(|_| KcvError::BadText)?;
        Self::from_bytes(&v).map_err(|_| KcvError::BadText)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl PartialEq for Kcv {
    fn eq(&self, other: &Self) -> bool {
        ct_eq(&self.0, &other.0)
    }
}

impl fmt::Display for Kcv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode_upper(&self.0))
    }
}

impl serde::Serialize for Kcv {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// Compares without an early exit on the first differing byte. "-ish":
/// the optimiser is free to do what it likes, but there is no data-dependent
/// branch in the source. Lengths are not secret and may return early.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Which method (among the candidates for `alg` and the length of `expected`)
/// reproduces `expected` from `key`.
pub fn verify_kcv(
    key: &[u8],
    alg: Algorithm,
    expected: &Kcv,
) -> Result<Option<KcvMethod>, KcvError> {
    for &m in KcvMethod::candidates(alg.family(), expected.len()) {
        if m.compute(key)? == *expected {
            return Ok(Some(m));
        }
    }
    Ok(None)
}

/// First 3 bytes of TDES-ECB E(0^8). 16-byte keys are 2-key TDES (K1 K2 K1),
/// 24-byte keys 3-key TDES.
pub fn tdes_kcv(key: &[u8]) -> Result<[u8; 3], KcvError> {
    let mut block = des::cipher::generic_array::GenericArray::from([0u8; 8]);
    let bad = || KcvError::KeyLength {
        method: KcvMethod::Tdes,
        got: key.len(),
        expected: "16 or 24",
    };
    match key.len() {
        16 => des::TdesEde2::new_from_slice(key)
            .map_err(|_| bad())?
            .encrypt_block(&mut block),
        24 => des::TdesEde3::new_from_slice(key)
            .map_err(|_| bad())?
            .encrypt_block(&mut block),
        _ => return Err(bad()),
    }
    Ok([block[0], block[1], block[2]])
}

/// First 3 bytes of AES-ECB E(0^16).
pub fn aes_kcv(key: &[u8]) -> Result<[u8; 3], KcvError> {
    let b = aes_encrypt(KcvMethod::AesEcb, key, [0u8; 16])?;
    Ok([b[0], b[1], b[2]])
}

/// First 3 bytes of AES-ECB E(01^16), the GlobalPlatform convention.
pub fn aes_gp_kcv(key: &[u8]) -> Result<[u8; 3], KcvError> {
    let b = aes_encrypt(KcvMethod::AesGp, key, [0x01u8; 16])?;
    Ok([b[0], b[1], b[2]])
}

/// First 5 bytes of AES-CMAC over one block of 16 zero bytes (X9.24-1:2017).
pub fn aes_cmac_kcv(key: &[u8]) -> Result<[u8; 5], KcvError> {
    fn run<M: Mac + KeyInit>(key: &[u8]) -> Option<[u8; 5]> {
        let mut mac = <M as KeyInit>::new_from_slice(key).ok()?;
        mac.update(&[0u8; 16]);
        let t = mac.finalize().into_bytes();
        Some([t[0], t[1], t[2], t[3], t[4]])
    }
    let out = match key.len() {
        16 => run::<cmac::Cmac<aes::Aes128>>(key),
        24 => run::<cmac::Cmac<aes::Aes192>>(key),
        32 => run::<cmac::Cmac<aes::Aes256>>(key),
        _ => None,
    };
    out.ok_or(KcvError::KeyLength {
        method: KcvMethod::AesCmac,
        got: key.len(),
        expected: "16, 24 or 32",
    })
}

fn aes_encrypt(method: KcvMethod, key: &[u8], block: [u8; 16]) -> Result<[u8; 16], KcvError> {
    fn run<C: BlockEncrypt + KeyInit + BlockSizeUser<BlockSize = U16>>(
        key: &[u8],
        block: [u8; 16],
    ) -> Option<[u8; 16]> {
        let mut b = aes::Block::from(block);
        C::new_from_slice(key).ok()?.encrypt_block(&mut b);
        Some(b.into())
    }
    let out = match key.len() {
        16 => run::<aes::Aes128>(key, block),
        24 => run::<aes::Aes192>(key, block),
        32 => run::<aes::Aes256>(key, block),
        _ => None,
    };
    out.ok_or(KcvError::KeyLength {
        method,
        got: key.len(),
        expected: "16, 24 or 32",
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    /// From /work/shared/vectors/known-answers.json, section `kcv`.
    const TDES: [(&str, &str); 2] = [
        ("D32CADF2010BADCBB0FD23E09B767CF1", "DD4D44"),
        ("974013138640D5A429738CBC523BCB4397AD43455DCE9223", "59FB85"),
    ];
    /// (key, kcv_aes_cmac, kcv_aes_gp)
    const AES: [(&str, &str, &str); 3] = [
        ("1B76087BC1EE6992C1FBDE1808DE7D37", "F01048044C", "97E949"),
        (
            "C26F8D83F413340870E30F01567748AD796331CE6738BBF2",
            "51324953B2",
            "D569A7",
        ),
        (
            "7B5E98DEFB4C36CAE2C3164D87904633B913BA932652CFB1F8220461B6386E0B",
            "BC3CC709D0",
            "F14CE4",
        ),
    ];

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    #[test]
    fn tdes_known_answers() {
        for (key, kcv) in TDES {
            assert_eq!(hex::encode_upper(tdes_kcv(&h(key)).unwrap()), kcv, "{key}");
            let k = KcvMethod::Tdes.compute(&h(key)).unwrap();
            assert_eq!(k, Kcv::parse_hex(kcv).unwrap());
            assert_eq!(k.to_string(), kcv);
        }
    }

    #[test]
    fn aes_known_answers() {
        for (key, cmac, gp) in AES {
            assert_eq!(hex::encode_upper(aes_cmac_kcv(&h(key)).unwrap()), cmac);
            assert_eq!(hex::encode_upper(aes_gp_kcv(&h(key)).unwrap()), gp);
            assert_eq!(
                KcvMethod::AesCmac.compute(&h(key)).unwrap().to_string(),
                cmac
            );
            assert_eq!(KcvMethod::AesGp.compute(&h(key)).unwrap().to_string(), gp);
        }
    }

    #[test]
    fn aes_ecb_kcv_is_the_fips_197_zero_block_encryption() {
        // FIPS-197 / SP 800-38A-independent check: AES-128 with the all-zero
        // key encrypts the zero block to 66E94BD4EF8A2C3B884CFA59CA342B2E.
        assert_eq!(aes_kcv(&[0u8; 16]).unwrap(), [0x66, 0xE9, 0x4B]);
    }

    #[test]
    fn two_key_tdes_is_k1_k2_k1() {
        let k2 = h("D32CADF2010BADCBB0FD23E09B767CF1");
        let mut k3 = k2.clone();
        k3.extend_from_slice(&k2[..8]);
        assert_eq!(tdes_kcv(&k2).unwrap(), tdes_kcv(&k3).unwrap());
    }

    #[test]
    fn wrong_key_lengths_are_refused() {
        assert!(matches!(
            tdes_kcv(&[1u8; 8]),
            Err(KcvError::KeyLength { got: 8, .. })
        ));
        assert!(aes_kcv(&[1u8; 15]).is_err());
        assert!(aes_cmac_kcv(&[1u8; 33]).is_err());
        assert!(aes_gp_kcv(&[]).is_err());
    }

    #[test]
    fn kcv_text() {
        let k = Kcv::parse_hex("dd 4d 44").unwrap();
        assert_eq!(k.to_string(), "DD4D44");
        assert_eq!(k.len(), 3);
        assert_eq!(Kcv::parse_hex("F01048044C").unwrap().len(), 5);
        assert_eq!(Kcv::parse_hex("DD4D"), Err(KcvError::BadText));
        assert_eq!(Kcv::parse_hex("DD4D4"), Err(KcvError::BadText));
        assert_eq!(Kcv::parse_hex("GG4D44"), Err(KcvError::BadText));
        assert_eq!(Kcv::from_bytes(&[0; 4]), Err(KcvError::BadLength(4)));
        assert_ne!(k, Kcv::parse_hex("DD4D45").unwrap());
        assert_ne!(k, Kcv::parse_hex("DD4D440000").unwrap());
    }

    #[test]
    fn verify_picks_the_method_that_matches() {
        let key = h(AES[0].0);
        let gp = Kcv::parse_hex(AES[0].2).unwrap();
        let ecb = KcvMethod::AesEcb.compute(&key).unwrap();
        let cmac = Kcv::parse_hex(AES[0].1).unwrap();
        assert_eq!(
            verify_kcv(&key, Algorithm::Aes128, &gp),
            Ok(Some(KcvMethod::AesGp))
        );
        assert_eq!(
            verify_kcv(&key, Algorithm::Aes128, &ecb),
            Ok(Some(KcvMethod::AesEcb))
        );
        assert_eq!(
            verify_kcv(&key, Algorithm::Aes128, &cmac),
            Ok(Some(KcvMethod::AesCmac))
        );
        // A TDES check value of an AES key is not a thing.
        assert_eq!(verify_kcv(&key, Algorithm::Tdes2, &cmac), Ok(None));
        let wrong = Kcv::parse_hex("000000").unwrap();
        assert_eq!(verify_kcv(&key, Algorithm::Aes128, &wrong), Ok(None));
    }

    #[test]
    fn ct_eq_compares_whole_slices() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
        assert!(ct_eq(b"", b""));
    }
}
