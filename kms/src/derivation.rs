//! The data that card-key derivations encrypt inside the token.
//!
//! These are pure functions: they build the *_ENCRYPT_DATA input (or the
//! CMAC-KDF message blocks) from public values (KDD, PAN, PSN). The keys
//! involved never leave the HSM; see `hsm::Hsm::derive*`.

use crate::model::ParseError;

/// Which of a Security Domain's three static keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SdKeyKind {
    Enc,
    Mac,
    Dek,
}

impl SdKeyKind {
    pub const ALL: [SdKeyKind; 3] = [SdKeyKind::Enc, SdKeyKind::Mac, SdKeyKind::Dek];
    fn index(self) -> u8 {
        match self {
            SdKeyKind::Enc => 1,
            SdKeyKind::Mac => 2,
            SdKeyKind::Dek => 3,
        }
    }
}

/// Key Diversification Data from the INITIALIZE UPDATE response (10 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kdd([u8; 10]);

impl Kdd {
    /// Upper-case hex (the KDD is public: the card sends it in clear).
    pub fn to_hex(&self) -> String {
        hex::encode_upper(self.0)
    }

    pub fn parse_hex(s: &str) -> Result<Self, ParseError> {
        let v = hex::decode(s).map_err(|_| ParseError::Invalid {
            what: "key diversification data",
            value: s.chars().take(40).collect(),
            why: "not hex",
        })?;
        v.as_slice()
            .try_into()
            .map(Kdd)
            .map_err(|_| ParseError::Invalid {
                what: "key diversification data",
                value: s.chars().take(40).collect(),
                why: "must be 10 bytes (20 hex digits)",
            })
    }
}

/// EMV CPS 1.1 §5.3 diversification of a TDES KMC: one TDES-ECB over
/// KDD[4..10] || F0 0k || KDD[4..10] || 0F 0k gives the 16-byte static key.
pub fn emv_cps11_data(kdd: &Kdd, kind: SdKeyKind) -> [u8; 16] {
    let k = kind.index();
    let mut d = [0u8; 16];
    d[..6].copy_from_slice(&kdd.0[4..10]);
    d[6] = 0xF0;
    d[7] = k;
    d[8..14].copy_from_slice(&kdd.0[4..10]);
    d[14] = 0x0F;
    d[15] = k;
    d
}

/// GlobalPlatform "KDF3" diversification of an AES KMC (SP 800-108 CMAC KDF
/// in counter mode with an empty label): the single message block
/// 01 || 00 00 00 || 0k || 00 || KDD, whose CMAC is the 16-byte static key.
pub fn kdf3_message(kdd: &Kdd, kind: SdKeyKind) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[0] = 0x01;
    m[4] = kind.index();
    m[6..].copy_from_slice(&kdd.0);
    m
}

/// A PAN (12 to 19 digits) with a Luhn check is not enforced: test PANs
/// and issuer conventions vary, and the derivation does not need it.
#[derive(Clone, PartialEq, Eq)]
pub struct Pan(String);

impl Pan {
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        if (12..=19).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Pan(s.to_owned()))
        } else {
            Err(ParseError::Invalid {
                what: "PAN",
                value: String::new(), // never echo a PAN
                why: "must be 12 to 19 digits",
            })
        }
    }

    /// First six and last four digits, as PCI DSS allows to display.
    pub fn masked(&self) -> String {
        let n = self.0.len();
        format!("{}{}{}", &self.0[..6], "*".repeat(n - 10), &self.0[n - 4..])
    }

    pub fn digits(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Pan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pan({})", self.masked())
    }
}

/// EMV Book 2 Annex A1.4.1 Option A: Y = the rightmost 16 digits of
/// PAN || PSN as 8 BCD bytes; the ICC master key is TDES(IMK, Y) ||
/// TDES(IMK, Y xor FF..FF) with odd parity (the token sets parity on derived
/// DES keys). One TDES-ECB derive over these 16 bytes makes both halves.
pub fn emv_option_a_data(pan: &Pan, psn: u8) -> [u8; 16] {
    let digits = format!("{}{:02}", pan.0, psn);
    let tail = &digits[digits.len().saturating_sub(16)..];
    let padded = format!("{tail:0>16}");
    let mut y = [0u8; 8];
    for (i, pair) in padded.as_bytes().chunks(2).enumerate() {
        y[i] = ((pair[0] - b'0') << 4) | (pair[1] - b'0');
    }
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&y);
    for i in 0..8 {
        d[8 + i] = y[i] ^ 0xFF;
    }
    d
}

/// Parse a PAN sequence number given as two decimal digits ("00".."99").
pub fn parse_psn(s: &str) -> Result<u8, ParseError> {
    if s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().map_err(|_| ParseError::Invalid {
            what: "PSN",
            value: s.to_owned(),
            why: "two decimal digits",
        })
    } else {
        Err(ParseError::Invalid {
            what: "PSN",
            value: s.chars().take(8).collect(),
            why: "two decimal digits",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_a_data_layout() {
        let pan = Pan::parse("4304749924883220").unwrap();
        let d = emv_option_a_data(&pan, 60);
        assert_eq!(hex::encode_upper(&d[..8]), "0474992488322060");
        assert_eq!(d[8], 0x04 ^ 0xFF);
    }

    #[test]
    fn short_pan_is_left_padded() {
        let pan = Pan::parse("123456789012").unwrap();
        assert_eq!(
            hex::encode_upper(&emv_option_a_data(&pan, 1)[..8]),
            "0012345678901201"
        );
    }

    #[test]
    fn kdf3_message_layout() {
        let kdd = Kdd::parse_hex("026DF59C2E6C1456C05F").unwrap();
        assert_eq!(
            hex::encode_upper(kdf3_message(&kdd, SdKeyKind::Mac)),
            "0100000002".to_owned() + "00026DF59C2E6C1456C05F"
        );
    }

    #[test]
    fn pans_are_never_echoed() {
        let e = Pan::parse("4304x49924883220").unwrap_err();
        assert!(!e.to_string().contains("4304"));
        let p = Pan::parse("4304749924883220").unwrap();
        assert_eq!(p.masked(), "430474******3220");
        assert!(!format!("{p:?}").contains("4304749924883220"));
    }
}
