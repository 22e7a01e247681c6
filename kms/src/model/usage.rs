//! What a key is for, and therefore which PKCS#11 operations its object allows.
//!
//! A usage decides the key's capabilities once, at creation; the HSM templates
//! turn these into CKA_* flags. Invariant 2 (docs/threat-model.md) lives here: no usage
//! both wraps and encrypts/decrypts.

use super::{Algorithm, KeyFamily, ParseError};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyUsage {
    /// Key-encryption key that wraps and unwraps other keys stored or moved by the KMS.
    Kek,
    /// KEK shared with a provisioner or partner; outbound keys leave wrapped under it.
    TransportKek,
    /// KEK that wraps HSM backups.
    BackupKek,
    /// GlobalPlatform Security Domain master key (KMC), diversified per card.
    SdKmc,
    /// Static SD keys (one card's or a test key set).
    SdStaticEnc,
    SdStaticMac,
    SdStaticDek,
    /// EMV issuer master keys (EMV Book 2 Annex A1.4, Option A).
    ImkAc,
    ImkSmi,
    ImkSmc,
    /// MAC key of the audit trail (CMAC/HMAC).
    Audit,
    /// Asymmetric signing (audit checkpoints, response signatures).
    Signing,
    /// Symmetric MAC generation and verification.
    Mac,
    /// Data encryption (never wraps).
    Data,
}

/// The operations a key object allows. At most one of "wraps" and "encrypts"
/// is ever true (checked in `KeyUsage::capabilities` tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Capabilities {
    pub wrap: bool,
    pub unwrap: bool,
    pub encrypt: bool,
    pub decrypt: bool,
    pub derive: bool,
    pub sign: bool,
    pub verify: bool,
}

impl KeyUsage {
    pub const ALL: [KeyUsage; 14] = [
        KeyUsage::Kek,
        KeyUsage::TransportKek,
        KeyUsage::BackupKek,
        KeyUsage::SdKmc,
        KeyUsage::SdStaticEnc,
        KeyUsage::SdStaticMac,
        KeyUsage::SdStaticDek,
        KeyUsage::ImkAc,
        KeyUsage::ImkSmi,
        KeyUsage::ImkSmc,
        KeyUsage::Audit,
        KeyUsage::Signing,
        KeyUsage::Mac,
        KeyUsage::Data,
    ];
    const EXPECTED: &'static str = "kek, transport-kek, backup-kek, sd-kmc, sd-enc, sd-mac, sd-dek, imk-ac, imk-smi, imk-smc, audit, signing, mac, data";

    pub fn as_str(self) -> &'static str {
        match self {
            KeyUsage::Kek => "kek",
            KeyUsage::TransportKek => "transport-kek",
            KeyUsage::BackupKek => "backup-kek",
            KeyUsage::SdKmc => "sd-kmc",
            KeyUsage::SdStaticEnc => "sd-enc",
            KeyUsage::SdStaticMac => "sd-mac",
            KeyUsage::SdStaticDek => "sd-dek",
            KeyUsage::ImkAc => "imk-ac",
            KeyUsage::ImkSmi => "imk-smi",
            KeyUsage::ImkSmc => "imk-smc",
            KeyUsage::Audit => "audit",
            KeyUsage::Signing => "signing",
            KeyUsage::Mac => "mac",
            KeyUsage::Data => "data",
        }
    }

    pub fn is_wrapping(self) -> bool {
        matches!(
            self,
            KeyUsage::Kek | KeyUsage::TransportKek | KeyUsage::BackupKek
        )
    }

    pub fn is_derivation(self) -> bool {
        matches!(
            self,
            KeyUsage::SdKmc
                | KeyUsage::SdStaticEnc
                | KeyUsage::SdStaticMac
                | KeyUsage::SdStaticDek
                | KeyUsage::ImkAc
                | KeyUsage::ImkSmi
                | KeyUsage::ImkSmc
        )
    }

    /// Whether `alg` can serve this usage at all.
    pub fn allows(self, alg: Algorithm) -> bool {
        let fam = alg.family();
        match self {
            KeyUsage::Kek | KeyUsage::TransportKek | KeyUsage::BackupKek => {
                matches!(fam, KeyFamily::Aes | KeyFamily::Tdes | KeyFamily::Rsa)
            }
            KeyUsage::SdKmc
            | KeyUsage::SdStaticEnc
            | KeyUsage::SdStaticMac
            | KeyUsage::SdStaticDek => matches!(fam, KeyFamily::Aes | KeyFamily::Tdes),
            // EMV Option A is defined for double-length TDES issuer master keys.
            KeyUsage::ImkAc | KeyUsage::ImkSmi | KeyUsage::ImkSmc => alg == Algorithm::Tdes2,
            KeyUsage::Audit | KeyUsage::Mac => {
                matches!(fam, KeyFamily::Aes | KeyFamily::Tdes | KeyFamily::Hmac)
            }
            KeyUsage::Data => matches!(fam, KeyFamily::Aes | KeyFamily::Tdes),
            KeyUsage::Signing => matches!(fam, KeyFamily::Rsa | KeyFamily::Ec),
        }
    }

    /// The operations a key of this usage and algorithm may perform.
    ///
    /// AES derivation keys also get `encrypt`: the SP 800-108 CMAC KDF done
    /// inside the token (hsm-notes.md) needs E_K(0) and E_K(constant blocks).
    /// The HSM layer only ever encrypts fixed constants with them; no API
    /// offers encryption under a derivation key (docs/threat-model.md).
    pub fn capabilities(self, alg: Algorithm) -> Capabilities {
        let none = Capabilities::default();
        match self {
            KeyUsage::Kek | KeyUsage::TransportKek | KeyUsage::BackupKek => Capabilities {
                wrap: true,
                unwrap: true,
                ..none
            },
            u if u.is_derivation() => Capabilities {
                derive: true,
                encrypt: alg.family() == KeyFamily::Aes,
                ..none
            },
            KeyUsage::Audit | KeyUsage::Mac | KeyUsage::Signing => Capabilities {
                sign: true,
                verify: true,
                ..none
            },
            _ => Capabilities {
                encrypt: true,
                decrypt: true,
                ..none
            },
        }
    }
}

impl fmt::Display for KeyUsage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyUsage {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let norm = s.to_ascii_lowercase().replace('_', "-");
        KeyUsage::ALL
            .into_iter()
            .find(|u| u.as_str() == norm)
            .ok_or_else(|| ParseError::Unknown {
                what: "key usage",
                value: s.chars().take(64).collect(),
                expected: Self::EXPECTED,
            })
    }
}

impl serde::Serialize for KeyUsage {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_usage_both_wraps_and_encrypts() {
        for u in KeyUsage::ALL {
            for a in Algorithm::ALL {
                let c = u.capabilities(a);
                assert!(
                    !((c.wrap || c.unwrap) && (c.encrypt || c.decrypt)),
                    "{u} / {a} both wraps and encrypts"
                );
            }
        }
    }

    #[test]
    fn usages_parse() {
        for u in KeyUsage::ALL {
            assert_eq!(u.as_str().parse::<KeyUsage>(), Ok(u));
        }
        assert!("root".parse::<KeyUsage>().is_err());
    }

    #[test]
    fn imks_are_double_length_tdes() {
        assert!(KeyUsage::ImkAc.allows(Algorithm::Tdes2));
        assert!(!KeyUsage::ImkAc.allows(Algorithm::Aes128));
        assert!(!KeyUsage::SdKmc.allows(Algorithm::Rsa2048));
    }
}
