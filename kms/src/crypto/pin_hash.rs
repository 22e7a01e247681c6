//! Argon2id hashing of custodian and officer PINs (TSM-AC-1: secrets are
//! stored only as hashes).
//!
//! Hashes are PHC strings (`$argon2id$v=19$m=19456,t=2,p=1$salt$hash`), the
//! `argon2` crate's default format, so the parameters travel with each hash:
//! a hash made under older or cheaper parameters still verifies, at its own
//! cost. The default parameters are OWASP's for Argon2id (19 MiB, 2 passes,
//! 1 lane); tests pass cheaper ones to [`PinHasher::new`]. Nothing reads
//! them from the environment. Verification recomputes the hash and compares
//! in constant time (the `password-hash` crate's `Output` comparison).
//!
//! Hashing is CPU- and memory-bound (tens of milliseconds): the service runs
//! it on the blocking pool.

use crate::model::Pin;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use std::fmt;
use std::sync::OnceLock;

/// OWASP's Argon2id parameters: memory in KiB, passes, lanes.
pub const OWASP_M_KIB: u32 = 19_456;
pub const OWASP_T: u32 = 2;
pub const OWASP_P: u32 = 1;

/// Upper bounds on the parameters of a stored hash: a row edited to ask for
/// gigabytes would otherwise make every login exhaust the host.
const MAX_M_KIB: u32 = 256 * 1024;
const MAX_T: u32 = 16;
const MAX_P: u32 = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PinHashError {
    #[error("Argon2id parameters: {0}")]
    Params(String),
    /// A stored hash that is not an Argon2id PHC string within bounds. The
    /// string itself is not repeated.
    #[error("not an Argon2id PIN hash: {0}")]
    Malformed(&'static str),
    #[error("Argon2id failed: {0}")]
    Hashing(String),
}

/// An Argon2id PHC string. `Debug` shows the parameters only, never the salt
/// or the hash (material for an offline guessing attack).
#[derive(Clone, PartialEq, Eq)]
pub struct PinHash(String);

impl PinHash {
    /// Checks a stored string: Argon2id, version 19, salt and hash present,
    /// parameters within bounds.
    pub fn parse(phc: &str) -> Result<PinHash, PinHashError> {
        let parsed =
            PasswordHash::new(phc).map_err(|_| PinHashError::Malformed("not a PHC string"))?;
        if parsed.algorithm != argon2::ARGON2ID_IDENT {
            return Err(PinHashError::Malformed("the algorithm is not argon2id"));
        }
        if parsed.version != Some(Version::V0x13.into()) {
            return Err(PinHashError::Malformed("the version is not 19"));
        }
        if parsed.salt.is_none() || parsed.hash.is_none() {
            return Err(PinHashError::Malformed("no salt or no hash"));
        }
        let params = Params::try_from(&parsed)
            .map_err(|_| PinHashError::Malformed("unreadable parameters"))?;
        if params.m_cost() > MAX_M_KIB || params.t_cost() > MAX_T || params.p_cost() > MAX_P {
            return Err(PinHashError::Malformed(
                "parameters beyond the accepted bounds",
            ));
        }
        Ok(PinHash(phc.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `m=..,t=..,p=..`, for people.
    pub fn params(&self) -> String {
        self.0.split('$').nth(3).unwrap_or_default().to_owned()
    }
}

impl fmt::Debug for PinHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PinHash(argon2id {})", self.params())
    }
}

/// Hashes new PINs and verifies typed ones.
#[derive(Debug)]
pub struct PinHasher {
    params: Params,
    /// A hash of nothing anyone knows, verified against when a login names
    /// nobody, so that answer takes as long as a wrong PIN.
    decoy: OnceLock<Option<PinHash>>,
}

impl Default for PinHasher {
    fn default() -> Self {
        PinHasher::owasp()
    }
}

impl PinHasher {
    /// OWASP's parameters (the `argon2` crate's defaults, which the unit
    /// tests pin to [`OWASP_M_KIB`], [`OWASP_T`], [`OWASP_P`]); what
    /// production uses.
    pub fn owasp() -> PinHasher {
        PinHasher {
            params: Params::DEFAULT,
            decoy: OnceLock::new(),
        }
    }

    /// Other parameters: memory in KiB, passes, lanes (cheaper ones for
    /// tests; costlier ones where the hardware allows).
    pub fn new(m_kib: u32, t: u32, p: u32) -> Result<PinHasher, PinHashError> {
        if m_kib > MAX_M_KIB || t > MAX_T || p > MAX_P {
            return Err(PinHashError::Params(format!(
                "at most m={MAX_M_KIB}, t={MAX_T}, p={MAX_P}"
            )));
        }
        let params =
            Params::new(m_kib, t, p, None).map_err(|e| PinHashError::Params(e.to_string()))?;
        Ok(PinHasher {
            params,
            decoy: OnceLock::new(),
        })
    }

    /// `m=..,t=..,p=..` of new hashes.
    pub fn params(&self) -> String {
        format!(
            "m={},t={},p={}",
            self.params.m_cost(),
            self.params.t_cost(),
            self.params.p_cost()
        )
    }

    fn argon2(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    /// A new hash with a fresh 16-byte salt from the operating system.
    pub fn hash(&self, pin: &Pin) -> Result<PinHash, PinHashError> {
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        let phc = self
            .argon2()
            .hash_password(pin.expose().as_bytes(), &salt)
            .map_err(|e| PinHashError::Hashing(e.to_string()))?
            .to_string();
        PinHash::parse(&phc)
    }

    /// Whether `pin` is the one `hash` was made from, computed under the
    /// hash's own parameters and compared in constant time.
    pub fn verify(&self, pin: &Pin, hash: &PinHash) -> Result<bool, PinHashError> {
        let parsed = PasswordHash::new(hash.as_str())
            .map_err(|_| PinHashError::Malformed("not a PHC string"))?;
        match self
            .argon2()
            .verify_password(pin.expose().as_bytes(), &parsed)
        {
            Ok(()) => Ok(true),
            Err(argon2::password_hash::Error::Password) => Ok(false),
            Err(e) => Err(PinHashError::Hashing(e.to_string())),
        }
    }

    /// Spend the time of one verification and answer false: for a login
    /// that names nobody.
    pub fn verify_decoy(&self, pin: &Pin) -> bool {
        let decoy = self.decoy.get_or_init(|| {
            let mut secret = [0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut secret);
            let pin = Pin::new(hex::encode(secret));
            self.hash(&pin).ok()
        });
        if let Some(d) = decoy {
            let _ = self.verify(pin, d);
        }
        false
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cheap() -> PinHasher {
        PinHasher::new(1024, 1, 1).unwrap()
    }

    #[test]
    fn tsm_ac_1_pins_are_stored_as_argon2id_phc_strings() {
        let h = cheap();
        let pin = Pin::new("583140");
        let hash = h.hash(&pin).unwrap();
        assert!(hash.as_str().starts_with("$argon2id$v=19$m=1024,t=1,p=1$"));
        assert!(!hash.as_str().contains("583140"));
        assert!(h.verify(&pin, &hash).unwrap());
        assert!(!h.verify(&Pin::new("583141"), &hash).unwrap());
        // A fresh salt each time.
        assert_ne!(h.hash(&pin).unwrap(), hash);
        // Verification follows the hash's own parameters, whatever the
        // hasher's.
        assert!(PinHasher::new(2048, 2, 1)
            .unwrap()
            .verify(&pin, &hash)
            .unwrap());
        assert_eq!(format!("{hash:?}"), "PinHash(argon2id m=1024,t=1,p=1)");
        assert_eq!(h.params(), "m=1024,t=1,p=1");
    }

    #[test]
    fn the_default_parameters_are_owasps() {
        let h = PinHasher::default();
        assert_eq!(
            h.params(),
            format!("m={OWASP_M_KIB},t={OWASP_T},p={OWASP_P}")
        );
        assert_eq!(h.params(), "m=19456,t=2,p=1");
        let hash = h.hash(&Pin::new("Kestrel on 3 wires")).unwrap();
        assert!(hash.as_str().starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
    }

    #[test]
    fn other_algorithms_and_unbounded_parameters_are_refused() {
        let pin = Pin::new("583140");
        let argon2i = Argon2::new(
            Algorithm::Argon2i,
            Version::V0x13,
            Params::new(1024, 1, 1, None).unwrap(),
        )
        .hash_password(
            pin.expose().as_bytes(),
            &SaltString::generate(&mut rand::rngs::OsRng),
        )
        .unwrap()
        .to_string();
        assert!(PinHash::parse(&argon2i).is_err());
        // A row edited to ask for more memory than the bound.
        let good = cheap().hash(&pin).unwrap();
        let forged = good
            .as_str()
            .replace("m=1024", &format!("m={}", MAX_M_KIB + 1));
        assert_eq!(
            PinHash::parse(&forged),
            Err(PinHashError::Malformed(
                "parameters beyond the accepted bounds"
            ))
        );
        for bad in ["", "583140", "$argon2id$", "$2b$12$abcdefghijklmnopqrstuv"] {
            assert!(PinHash::parse(bad).is_err());
        }
        assert!(PinHasher::new(8, 1, 1).is_ok());
        assert!(PinHasher::new(4, 1, 1).is_err());
        assert!(PinHasher::new(1024, 0, 1).is_err());
        assert!(PinHasher::new(MAX_M_KIB + 1, 1, 1).is_err());
    }

    #[test]
    fn a_decoy_verification_is_false() {
        assert!(!cheap().verify_decoy(&Pin::new("583140")));
    }
}
