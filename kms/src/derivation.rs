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

    /// The ten bytes, for building derivation data.
    pub fn as_bytes(&self) -> &[u8; 10] {
        &self.0
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

/// VISA2 diversification of a TDES KMC, as GlobalPlatformPro's `fillVisa2`
/// lays it out: one TDES-ECB over
/// KDD[0..2] || KDD[4..8] || F0 0k || KDD[0..2] || KDD[4..8] || 0F 0k.
/// (Unlike EMV CPS 1.1 it skips KDD[2..4] and KDD[8..10].)
pub fn visa2_data(kdd: &Kdd, kind: SdKeyKind) -> [u8; 16] {
    let k = kind.index();
    let mut d = [0u8; 16];
    for half in [0usize, 8] {
        d[half..half + 2].copy_from_slice(&kdd.0[0..2]);
        d[half + 2..half + 6].copy_from_slice(&kdd.0[4..8]);
    }
    d[6] = 0xF0;
    d[7] = k;
    d[14] = 0x0F;
    d[15] = k;
    d
}

/// GlobalPlatform "KDF3" diversification of an AES KMC (SP 800-108 CMAC KDF
/// in counter mode with an empty label): the single message block
/// 01 || 00 00 00 || 0k || 00 || KDD, whose CMAC is the 16-byte static key.
pub fn kdf3_message(kdd: &Kdd, kind: SdKeyKind) -> [u8; 16] {
    kdf3_block_message(kdd, kind, 1)
}

/// The KDF3 message of output block `counter` (1 for bytes 0..16, 2 for
/// 16..32): longer KMCs give longer static keys (GlobalPlatformPro derives
/// keys as long as the master key), and L is not part of this message.
pub fn kdf3_block_message(kdd: &Kdd, kind: SdKeyKind, counter: u8) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[0] = counter;
    m[4] = kind.index();
    m[6..].copy_from_slice(&kdd.0);
    m
}

/// The KDF3 messages for a static key of `key_len` bytes (16, 24 or 32):
/// one per started 16-byte block; the token truncates the last block.
pub fn kdf3_messages(kdd: &Kdd, kind: SdKeyKind, key_len: usize) -> Vec<[u8; 16]> {
    (1..=key_len.div_ceil(16))
        .map(|i| kdf3_block_message(kdd, kind, u8::try_from(i).unwrap_or(u8::MAX)))
        .collect()
}

/// SCP02 session keys (GP Card Spec 2.2 Annex E.4.1): which constant
/// derives which key, and from which static key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scp02SessionKey {
    /// From the static ENC key, constant 0182.
    SEnc,
    /// From the static MAC key, constant 0101.
    CMac,
    /// From the static MAC key, constant 0102.
    RMac,
    /// From the static DEK, constant 0181.
    Dek,
}

impl Scp02SessionKey {
    pub fn constant(self) -> [u8; 2] {
        match self {
            Scp02SessionKey::SEnc => [0x01, 0x82],
            Scp02SessionKey::CMac => [0x01, 0x01],
            Scp02SessionKey::RMac => [0x01, 0x02],
            Scp02SessionKey::Dek => [0x01, 0x81],
        }
    }
}

/// SCP02 session-key derivation data, TDES-CBC encrypted (IV zero) under
/// the static key inside the token: constant(2) || counter(2) || 00*12.
pub fn scp02_derivation_data(key: Scp02SessionKey, sequence_counter: [u8; 2]) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[..2].copy_from_slice(&key.constant());
    d[2..4].copy_from_slice(&sequence_counter);
    d
}

/// ISO/IEC 9797-1 padding method 2 of 16 bytes: 80 00*7 appended (the
/// method always adds a block when the data is already whole blocks).
fn iso9797_m2_pad16(data: [u8; 16]) -> [u8; 24] {
    let mut d = [0u8; 24];
    d[..16].copy_from_slice(&data);
    d[16] = 0x80;
    d
}

/// The padded input of the SCP02 card cryptogram, a full TDES CBC-MAC
/// (ISO 9797-1 algorithm 1) under S-ENC:
/// host challenge(8) || sequence counter(2) || card challenge(6) || 80 00*7.
pub fn scp02_card_cryptogram_input(
    sequence_counter: [u8; 2],
    host_challenge: &[u8; 8],
    card_challenge: &[u8; 6],
) -> [u8; 24] {
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(host_challenge);
    d[8..10].copy_from_slice(&sequence_counter);
    d[10..].copy_from_slice(card_challenge);
    iso9797_m2_pad16(d)
}

/// The padded input of the SCP02 host cryptogram:
/// sequence counter(2) || card challenge(6) || host challenge(8) || 80 00*7.
pub fn scp02_host_cryptogram_input(
    sequence_counter: [u8; 2],
    host_challenge: &[u8; 8],
    card_challenge: &[u8; 6],
) -> [u8; 24] {
    let mut d = [0u8; 16];
    d[..2].copy_from_slice(&sequence_counter);
    d[2..8].copy_from_slice(card_challenge);
    d[8..].copy_from_slice(host_challenge);
    iso9797_m2_pad16(d)
}

/// SCP03 derivation constants (GP Card Spec Amendment D §6.2.1).
pub const SCP03_CARD_CRYPTOGRAM: u8 = 0x00;
pub const SCP03_HOST_CRYPTOGRAM: u8 = 0x01;
pub const SCP03_S_ENC: u8 = 0x04;
pub const SCP03_S_MAC: u8 = 0x06;
pub const SCP03_S_RMAC: u8 = 0x07;

/// The first block of the SCP03 KDF input (Amendment D §6.2.2), which holds
/// only constants: 00*11 (label) || constant || 00 || L (bits, big-endian)
/// || counter. The second block is the context (`scp03_context`). Because
/// this block is constant, the token may encrypt it under a static key
/// without becoming an encryption oracle (see `Hsm::scp03_session`).
pub fn scp03_fixed_block(constant: u8, l_bits: u16, counter: u8) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[11] = constant;
    b[13..15].copy_from_slice(&l_bits.to_be_bytes());
    b[15] = counter;
    b
}

/// The SCP03 KDF context: host challenge || card challenge.
pub fn scp03_context(host_challenge: &[u8; 8], card_challenge: &[u8; 8]) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[..8].copy_from_slice(host_challenge);
    c[8..].copy_from_slice(card_challenge);
    c
}

/// The 32-byte CMAC input of an SCP03 cryptogram (64 bits, so one block
/// with counter 01): `scp03_fixed_block(constant, 0x0040, 1) || context`.
pub fn scp03_cryptogram_input(constant: u8, context: &[u8; 16]) -> [u8; 32] {
    let mut d = [0u8; 32];
    d[..16].copy_from_slice(&scp03_fixed_block(constant, 0x0040, 1));
    d[16..].copy_from_slice(context);
    d
}

/// How a Security Domain's static keys are diversified from its KMC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KmcDiversification {
    /// EMV CPS 1.1, 2-key TDES KMC: `emv_cps11_data`.
    EmvCps11,
    /// VISA2 (GlobalPlatformPro), 2-key TDES KMC: `visa2_data`.
    Visa2,
    /// GlobalPlatform KDF3, AES KMC: `kdf3_messages`.
    Kdf3,
}

/// Where the static keys of a secure-channel session come from. The HSM
/// layer resolves this inside one token session: stored keys are found,
/// diversified ones are derived from the KMC as session objects that are
/// destroyed before the call returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StaticKeySource {
    /// A tenant's stored ENC, MAC and DEK keys.
    Stored {
        enc: crate::hsm::KeyRef,
        mac: crate::hsm::KeyRef,
        dek: crate::hsm::KeyRef,
    },
    /// One card's keys, diversified from a KMC with the card's KDD.
    Diversified {
        kmc: crate::hsm::KeyRef,
        method: KmcDiversification,
        kdd: Kdd,
    },
}

/// The public values of an SCP02 INITIALIZE UPDATE exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scp02Handshake {
    pub sequence_counter: [u8; 2],
    pub host_challenge: [u8; 8],
    pub card_challenge: [u8; 6],
    /// What the card sent; verified before any key is released.
    pub card_cryptogram: [u8; 8],
}

/// The public values of an SCP03 INITIALIZE UPDATE exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scp03Handshake {
    pub host_challenge: [u8; 8],
    pub card_challenge: [u8; 8],
    /// What the card sent; verified before any key is released.
    pub card_cryptogram: [u8; 8],
}

/// One key that left the token wrapped under the transport KEK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedOut {
    pub wrapped: Vec<u8>,
    /// The key's check value: first 3 bytes of E(zero block).
    pub kcv: Option<Vec<u8>>,
}

/// SCP02 session keys, wrapped, and the host cryptogram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scp02Keys {
    pub s_enc: WrappedOut,
    pub c_mac: WrappedOut,
    pub r_mac: WrappedOut,
    pub dek: WrappedOut,
    pub host_cryptogram: [u8; 8],
}

/// SCP03 session keys and the static DEK (for PUT KEY), wrapped, and the
/// host cryptogram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scp03Keys {
    pub s_enc: WrappedOut,
    pub s_mac: WrappedOut,
    pub s_rmac: WrappedOut,
    pub static_dek: WrappedOut,
    pub host_cryptogram: [u8; 8],
}

/// The outcome of a session derivation: keys only when the card proved it
/// holds the same static keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handshake<T> {
    Established(T),
    /// The card cryptogram did not verify; nothing was wrapped or returned.
    CardCryptogramMismatch,
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
    fn visa2_layout_follows_globalplatformpro() {
        let kdd = Kdd::parse_hex("00112233445566778899").unwrap();
        assert_eq!(
            hex::encode_upper(visa2_data(&kdd, SdKeyKind::Dek)),
            "001144556677F003001144556677".to_owned() + "0F03"
        );
    }

    #[test]
    fn kdf3_messages_count_blocks() {
        let kdd = Kdd::parse_hex("026DF59C2E6C1456C05F").unwrap();
        assert_eq!(kdf3_messages(&kdd, SdKeyKind::Enc, 16).len(), 1);
        let m = kdf3_messages(&kdd, SdKeyKind::Enc, 24);
        assert_eq!(m.len(), 2);
        assert_eq!(m[1][0], 2);
        assert_eq!(m[0], kdf3_message(&kdd, SdKeyKind::Enc));
    }

    #[test]
    fn scp02_layouts() {
        assert_eq!(
            hex::encode_upper(scp02_derivation_data(Scp02SessionKey::SEnc, [0x44, 0xF4])),
            "018244F4000000000000000000000000"
        );
        let card = scp02_card_cryptogram_input([0, 1], &[0xAA; 8], &[0xBB; 6]);
        assert_eq!(
            hex::encode_upper(card),
            "AAAAAAAAAAAAAAAA0001BBBBBBBBBBBB8000000000000000"
        );
        let host = scp02_host_cryptogram_input([0, 1], &[0xAA; 8], &[0xBB; 6]);
        assert_eq!(
            hex::encode_upper(host),
            "0001BBBBBBBBBBBBAAAAAAAAAAAAAAAA8000000000000000"
        );
    }

    #[test]
    fn scp03_layouts() {
        assert_eq!(
            hex::encode_upper(scp03_fixed_block(SCP03_S_MAC, 0x0100, 2)),
            "00000000000000000000000600010002"
        );
        let ctx = scp03_context(&[0x11; 8], &[0x22; 8]);
        let d = scp03_cryptogram_input(SCP03_HOST_CRYPTOGRAM, &ctx);
        assert_eq!(
            hex::encode_upper(d),
            "00000000000000000000000100004001".to_owned() + "11111111111111112222222222222222"
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
