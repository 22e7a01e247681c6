//! Algorithms the KMS manages (requirements ALG-SYM, ALG-ASYM).

use super::ParseError;
use std::fmt;
use std::str::FromStr;

/// A key algorithm and size. Only what ALG-SYM / ALG-ASYM allow, and only
/// what SoftHSM2 and production HSMs both implement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Aes128,
    Aes192,
    Aes256,
    /// Two-key triple DES (112-bit), the GlobalPlatform SCP02 / EMV workhorse.
    Tdes2,
    /// Three-key triple DES (168-bit).
    Tdes3,
    Rsa2048,
    Rsa3072,
    Rsa4096,
    EcP256,
    /// A 256-bit generic secret for HMAC-SHA256 (audit MACs). Generated in
    /// the token only; never entered as components.
    HmacSha256,
}

/// The broad family, which decides block size and which mechanisms apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFamily {
    Aes,
    Tdes,
    Rsa,
    Ec,
    /// Generic secret (HMAC).
    Hmac,
}

impl Algorithm {
    pub const ALL: [Algorithm; 10] = [
        Algorithm::Aes128,
        Algorithm::Aes192,
        Algorithm::Aes256,
        Algorithm::Tdes2,
        Algorithm::Tdes3,
        Algorithm::Rsa2048,
        Algorithm::Rsa3072,
        Algorithm::Rsa4096,
        Algorithm::EcP256,
        Algorithm::HmacSha256,
    ];
    const EXPECTED: &'static str =
        "aes-128, aes-192, aes-256, tdes-2key, tdes-3key, rsa-2048, rsa-3072, rsa-4096, ec-p256, hmac-sha256";

    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Aes128 => "aes-128",
            Algorithm::Aes192 => "aes-192",
            Algorithm::Aes256 => "aes-256",
            Algorithm::Tdes2 => "tdes-2key",
            Algorithm::Tdes3 => "tdes-3key",
            Algorithm::Rsa2048 => "rsa-2048",
            Algorithm::Rsa3072 => "rsa-3072",
            Algorithm::Rsa4096 => "rsa-4096",
            Algorithm::EcP256 => "ec-p256",
            Algorithm::HmacSha256 => "hmac-sha256",
        }
    }

    pub fn family(self) -> KeyFamily {
        match self {
            Algorithm::Aes128 | Algorithm::Aes192 | Algorithm::Aes256 => KeyFamily::Aes,
            Algorithm::Tdes2 | Algorithm::Tdes3 => KeyFamily::Tdes,
            Algorithm::Rsa2048 | Algorithm::Rsa3072 | Algorithm::Rsa4096 => KeyFamily::Rsa,
            Algorithm::EcP256 => KeyFamily::Ec,
            Algorithm::HmacSha256 => KeyFamily::Hmac,
        }
    }

    /// Length in bytes of a secret key's value; `None` for key pairs.
    pub fn secret_len(self) -> Option<usize> {
        match self {
            Algorithm::Aes128 | Algorithm::Tdes2 => Some(16),
            Algorithm::Aes192 | Algorithm::Tdes3 => Some(24),
            Algorithm::Aes256 | Algorithm::HmacSha256 => Some(32),
            _ => None,
        }
    }

    /// RSA modulus size in bits.
    pub fn rsa_bits(self) -> Option<u64> {
        match self {
            Algorithm::Rsa2048 => Some(2048),
            Algorithm::Rsa3072 => Some(3072),
            Algorithm::Rsa4096 => Some(4096),
            _ => None,
        }
    }

    pub fn is_secret(self) -> bool {
        self.secret_len().is_some()
    }

    /// The algorithm of a secret key of the given family and length.
    pub fn secret(family: KeyFamily, len: usize) -> Option<Self> {
        match (family, len) {
            (KeyFamily::Aes, 16) => Some(Algorithm::Aes128),
            (KeyFamily::Aes, 24) => Some(Algorithm::Aes192),
            (KeyFamily::Aes, 32) => Some(Algorithm::Aes256),
            (KeyFamily::Tdes, 16) => Some(Algorithm::Tdes2),
            (KeyFamily::Tdes, 24) => Some(Algorithm::Tdes3),
            _ => None,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Algorithm {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let norm = s.to_ascii_lowercase();
        let alias = match norm.as_str() {
            "aes128" => "aes-128",
            "aes192" => "aes-192",
            "aes256" => "aes-256",
            "tdes2" | "des2" | "2tdea" | "tdes-2" => "tdes-2key",
            "tdes3" | "des3" | "3tdea" | "tdes-3" => "tdes-3key",
            "rsa2048" => "rsa-2048",
            "rsa3072" => "rsa-3072",
            "rsa4096" => "rsa-4096",
            "p256" | "p-256" | "ec-p-256" | "ecdsa-p256" => "ec-p256",
            other => other,
        };
        Algorithm::ALL
            .into_iter()
            .find(|a| a.as_str() == alias)
            .ok_or_else(|| ParseError::Unknown {
                what: "algorithm",
                value: s.chars().take(64).collect(),
                expected: Self::EXPECTED,
            })
    }
}

impl serde::Serialize for Algorithm {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_algorithm_parses_from_its_name() {
        for a in Algorithm::ALL {
            assert_eq!(a.as_str().parse::<Algorithm>(), Ok(a));
        }
        assert_eq!("AES256".parse::<Algorithm>(), Ok(Algorithm::Aes256));
    }

    #[test]
    fn unknown_algorithm_is_a_clear_error() {
        let e = "des-56".parse::<Algorithm>().unwrap_err();
        assert!(e.to_string().contains("unknown algorithm"), "{e}");
    }
}
