//! Cryptographic operations with keys already on the token: wrap, unwrap,
//! derive, MAC, sign. Each takes one pooled session for its whole duration.

use super::keys::{primary_class, CreatedKey};
use super::templates::{self, Creation, KeySpec, Trust};
use super::{DeriveAlg, Hsm, HsmError, KeyRef};
use crate::model::KeyFamily;
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use zeroize::Zeroizing;

/// Key-wrapping algorithms (requirement KM-2: keys move only wrapped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WrapAlg {
    /// AES Key Wrap, RFC 3394 / NIST SP 800-38F KW.
    AesKw,
    /// AES Key Wrap with Padding, RFC 5649 / KWP.
    AesKwp,
    /// TDES-CBC with a zero IV, as GlobalPlatform PUT KEY and most payment
    /// HSMs expect for TDES KEKs. Only keys whose length is a multiple of 8.
    TdesCbc,
    /// RSA-OAEP with SHA-256 and MGF1-SHA-256, empty label.
    RsaOaepSha256,
    /// RSA-OAEP with SHA-1 and MGF1-SHA-1, for HSMs without SHA-256 OAEP
    /// (SoftHSM 2.6.1 accepts only SHA-1 for OAEP: CKR_ARGUMENTS_BAD
    /// otherwise, measured). OAEP's security does not rest on SHA-1's
    /// collision resistance, so this is still sound for key transport.
    RsaOaepSha1,
}

impl std::str::FromStr for WrapAlg {
    type Err = crate::model::ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "aes-kw" | "rfc3394" => WrapAlg::AesKw,
            "aes-kwp" | "rfc5649" => WrapAlg::AesKwp,
            "tdes-cbc" => WrapAlg::TdesCbc,
            "rsa-oaep-sha256" | "rsa-oaep" => WrapAlg::RsaOaepSha256,
            "rsa-oaep-sha1" => WrapAlg::RsaOaepSha1,
            _ => {
                return Err(crate::model::ParseError::Unknown {
                    what: "wrapping algorithm",
                    value: s.chars().take(64).collect(),
                    expected: "aes-kw, aes-kwp, tdes-cbc, rsa-oaep-sha256, rsa-oaep-sha1",
                })
            }
        })
    }
}

impl WrapAlg {
    /// The natural wrapping algorithm for a KEK of this family.
    pub fn default_for(kek: crate::model::Algorithm) -> Self {
        match kek.family() {
            KeyFamily::Aes => WrapAlg::AesKwp,
            KeyFamily::Tdes => WrapAlg::TdesCbc,
            KeyFamily::Rsa | KeyFamily::Ec | KeyFamily::Hmac => WrapAlg::RsaOaepSha256,
        }
    }

    fn check_kek(self, kek: &KeyRef) -> Result<(), HsmError> {
        let fam = kek.algorithm.family();
        let ok = match self {
            WrapAlg::AesKw | WrapAlg::AesKwp => fam == KeyFamily::Aes,
            WrapAlg::TdesCbc => fam == KeyFamily::Tdes,
            WrapAlg::RsaOaepSha256 | WrapAlg::RsaOaepSha1 => fam == KeyFamily::Rsa,
        };
        if ok {
            Ok(())
        } else {
            Err(HsmError::invalid(format!(
                "{self:?} cannot be used with a {} KEK",
                kek.algorithm
            )))
        }
    }
}

/// MAC algorithms for symmetric keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacAlg {
    AesCmac,
    HmacSha256,
}

/// Signature algorithms for key pairs (INT-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignAlg {
    /// ECDSA over P-256 with SHA-256; signature as r || s (64 bytes). The
    /// digest is computed on the host (public data) and signed with
    /// CKM_ECDSA: SoftHSM 2.6.1 has no CKM_ECDSA_SHA256.
    EcdsaP256Sha256,
    /// RSASSA-PSS with SHA-256, MGF1-SHA-256, 32-byte salt.
    RsaPssSha256,
}

fn oaep(sha1: bool) -> PkcsOaepParams<'static> {
    if sha1 {
        PkcsOaepParams::new(
            MechanismType::SHA1,
            PkcsMgfType::MGF1_SHA1,
            PkcsOaepSource::empty(),
        )
    } else {
        PkcsOaepParams::new(
            MechanismType::SHA256,
            PkcsMgfType::MGF1_SHA256,
            PkcsOaepSource::empty(),
        )
    }
}

fn wrap_mechanism(alg: WrapAlg) -> Mechanism<'static> {
    match alg {
        WrapAlg::AesKw => Mechanism::AesKeyWrap,
        WrapAlg::AesKwp => Mechanism::AesKeyWrapPad,
        WrapAlg::TdesCbc => Mechanism::Des3Cbc([0; 8]),
        WrapAlg::RsaOaepSha256 => Mechanism::RsaPkcsOaep(oaep(false)),
        WrapAlg::RsaOaepSha1 => Mechanism::RsaPkcsOaep(oaep(true)),
    }
}

/// The CMAC subkey K1 (NIST SP 800-38B §6.1) from L = E_K(0^128).
fn cmac_k1(l: &[u8; 16]) -> Zeroizing<[u8; 16]> {
    let mut k1 = Zeroizing::new([0u8; 16]);
    let mut carry = 0u8;
    for i in (0..16).rev() {
        k1[i] = (l[i] << 1) | carry;
        carry = l[i] >> 7;
    }
    if carry == 1 {
        k1[15] ^= 0x87;
    }
    k1
}

impl Hsm {
    /// The check value of a key about to be made by `make` (derive or
    /// unwrap), learnt from a throw-away twin made the same way.
    pub(crate) fn twin_kcv<F>(
        session: &Session,
        spec: &KeySpec,
        how: Creation,
        trust: Trust,
        make: F,
    ) -> Result<Vec<u8>, HsmError>
    where
        F: Fn(&[cryptoki::object::Attribute]) -> Result<ObjectHandle, HsmError>,
    {
        let twin = make(&templates::kcv_twin(spec, how, trust))?;
        let kcv = Self::zero_block_kcv(session, twin, spec.algorithm);
        session.destroy_object(twin)?;
        kcv
    }

    /// E(zero block), first 3 bytes, computed by the token.
    pub(crate) fn zero_block_kcv(
        session: &Session,
        h: ObjectHandle,
        alg: crate::model::Algorithm,
    ) -> Result<Vec<u8>, HsmError> {
        let (mech, block) = match alg.family() {
            KeyFamily::Tdes => (Mechanism::Des3Ecb, 8),
            KeyFamily::Aes => (Mechanism::AesEcb, 16),
            _ => return Err(HsmError::invalid("check values are for secret keys")),
        };
        let mut e = session.encrypt(&mech, h, &vec![0u8; block])?;
        e.truncate(3);
        Ok(e)
    }

    fn wrapping_key(
        &self,
        session: &Session,
        kek: &KeyRef,
        unwrap: bool,
    ) -> Result<ObjectHandle, HsmError> {
        let class = match (kek.algorithm.is_secret(), unwrap) {
            (true, _) => ObjectClass::SECRET_KEY,
            (false, false) => ObjectClass::PUBLIC_KEY,
            (false, true) => ObjectClass::PRIVATE_KEY,
        };
        self.find(session, kek.object_id, class)
    }

    /// Wrap `key` under `kek`. The token enforces CKA_EXTRACTABLE and
    /// CKA_WRAP_WITH_TRUSTED; we never ask it to do anything else.
    pub fn wrap(&self, kek: &KeyRef, key: &KeyRef, alg: WrapAlg) -> Result<Vec<u8>, HsmError> {
        alg.check_kek(kek)?;
        if !key.algorithm.is_secret() {
            return Err(HsmError::invalid("only secret keys can be wrapped"));
        }
        let session = self.session()?;
        let wk = self.wrapping_key(&session, kek, false)?;
        let k = self.find(&session, key.object_id, ObjectClass::SECRET_KEY)?;
        Ok(session.wrap_key(&wrap_mechanism(alg), wk, k)?)
    }

    /// Unwrap a key into the token with the template of `spec`; returns its
    /// check value so the caller can compare it with the sender's.
    pub fn unwrap(
        &self,
        kek: &KeyRef,
        alg: WrapAlg,
        wrapped: &[u8],
        spec: &KeySpec,
        trust: Trust,
    ) -> Result<CreatedKey, HsmError> {
        alg.check_kek(kek)?;
        if !spec.algorithm.is_secret() {
            return Err(HsmError::invalid("only secret keys can be unwrapped"));
        }
        let session = self.session()?;
        let uk = self.wrapping_key(&session, kek, true)?;
        let mech = wrap_mechanism(alg);
        let kcv = Self::twin_kcv(&session, spec, Creation::Unwrap, trust, |t| {
            Ok(session.unwrap_key(&mech, uk, wrapped, t)?)
        })?;
        let template = templates::secret_key(spec, trust, Creation::Unwrap);
        session.unwrap_key(&mech, uk, wrapped, &template)?;
        Ok(CreatedKey {
            object_id: spec.object_id,
            kcv: Some(kcv),
            public_key: None,
        })
    }

    /// Derive a key inside the token (a token object if `spec.persistent`).
    pub fn derive(
        &self,
        base: &KeyRef,
        how: &DeriveAlg,
        spec: &KeySpec,
    ) -> Result<CreatedKey, HsmError> {
        if !spec.persistent {
            return Err(HsmError::invalid(
                "a session-object derivation must be consumed in the same call; use derive_and_wrap",
            ));
        }
        let session = self.session()?;
        let b = self.find(&session, base.object_id, ObjectClass::SECRET_KEY)?;
        let kcv = Self::twin_kcv(&session, spec, Creation::Derive, Trust::Normal, |t| {
            self.raw.derive(&session, b, how, t)
        })?;
        self.raw.derive(
            &session,
            b,
            how,
            &templates::secret_key(spec, Trust::Normal, Creation::Derive),
        )?;
        Ok(CreatedKey {
            object_id: spec.object_id,
            kcv: Some(kcv),
            public_key: None,
        })
    }

    /// Derive a session key, wrap it under `kek`, and destroy it, all on one
    /// session: the derived key exists only for this call and leaves the
    /// token only wrapped (KM-2, KM-7). `spec.exportable` must be true.
    /// Returns the wrapped key and the derived key's check value.
    pub fn derive_and_wrap(
        &self,
        base: &KeyRef,
        how: &DeriveAlg,
        spec: &KeySpec,
        kek: &KeyRef,
        alg: WrapAlg,
    ) -> Result<(Vec<u8>, Option<Vec<u8>>), HsmError> {
        alg.check_kek(kek)?;
        let mut spec = spec.clone();
        spec.persistent = false;
        let session = self.session()?;
        let b = self.find(&session, base.object_id, ObjectClass::SECRET_KEY)?;
        let wk = self.wrapping_key(&session, kek, false)?;
        let kcv = Self::twin_kcv(&session, &spec, Creation::Derive, Trust::Normal, |t| {
            self.raw.derive(&session, b, how, t)
        })?;
        let h = self.raw.derive(
            &session,
            b,
            how,
            &templates::secret_key(&spec, Trust::Normal, Creation::Derive),
        )?;
        let result = (|| {
            let kcv = Some(kcv);
            let wrapped = session.wrap_key(&wrap_mechanism(alg), wk, h)?;
            Ok((wrapped, kcv))
        })();
        session.destroy_object(h)?;
        result
    }

    /// Derive, by the SP 800-108 CMAC KDF, a key whose every 16-byte block is
    /// AES-CMAC(base, m_i) for one-block messages `m_i` (GlobalPlatform KDF3
    /// diversification; hsm-notes.md). CMAC(K, m) = E_K(m xor K1) for a full
    /// single block, so one AES-ECB derive over (m_i xor K1) makes the key in
    /// the token. Only L = E_K(0) leaves the token: a check-value-like
    /// constant from which neither K nor any derived key can be computed.
    pub fn derive_cmac_blocks(
        &self,
        base: &KeyRef,
        messages: &[[u8; 16]],
        spec: &KeySpec,
        wrap_under: Option<(&KeyRef, WrapAlg)>,
    ) -> Result<(CreatedKey, Option<Vec<u8>>), HsmError> {
        if base.algorithm.family() != KeyFamily::Aes {
            return Err(HsmError::invalid("the CMAC KDF needs an AES base key"));
        }
        let l = {
            let session = self.session()?;
            let b = self.find(&session, base.object_id, ObjectClass::SECRET_KEY)?;
            let mut v = Zeroizing::new(session.encrypt(&Mechanism::AesEcb, b, &[0u8; 16])?);
            let mut l = Zeroizing::new([0u8; 16]);
            if v.len() != 16 {
                return Err(HsmError::invalid("AES-ECB returned a short block"));
            }
            l.copy_from_slice(&v);
            zeroize::Zeroize::zeroize(&mut *v);
            l
        };
        let k1 = cmac_k1(&l);
        let mut data = Vec::with_capacity(16 * messages.len());
        for m in messages {
            data.extend(m.iter().zip(k1.iter()).map(|(a, b)| a ^ b));
        }
        let how = DeriveAlg::AesEcb(data);
        match wrap_under {
            None => Ok((self.derive(base, &how, spec)?, None)),
            Some((kek, alg)) => {
                let (wrapped, kcv) = self.derive_and_wrap(base, &how, spec, kek, alg)?;
                Ok((
                    CreatedKey {
                        object_id: spec.object_id,
                        kcv,
                        public_key: None,
                    },
                    Some(wrapped),
                ))
            }
        }
    }

    pub fn mac(&self, key: &KeyRef, alg: MacAlg, data: &[u8]) -> Result<Vec<u8>, HsmError> {
        let session = self.session()?;
        let k = self.find(&session, key.object_id, ObjectClass::SECRET_KEY)?;
        Ok(session.sign(&mac_mechanism(alg), k, data)?)
    }

    pub fn verify_mac(
        &self,
        key: &KeyRef,
        alg: MacAlg,
        data: &[u8],
        mac: &[u8],
    ) -> Result<bool, HsmError> {
        let session = self.session()?;
        let k = self.find(&session, key.object_id, ObjectClass::SECRET_KEY)?;
        verdict(session.verify(&mac_mechanism(alg), k, data, mac))
    }

    pub fn sign(&self, key: &KeyRef, alg: SignAlg, data: &[u8]) -> Result<Vec<u8>, HsmError> {
        let session = self.session()?;
        let k = self.find(&session, key.object_id, primary_class(key.algorithm))?;
        Ok(session.sign(&sign_mechanism(alg), k, &sign_input(alg, data))?)
    }

    pub fn verify(
        &self,
        key: &KeyRef,
        alg: SignAlg,
        data: &[u8],
        signature: &[u8],
    ) -> Result<bool, HsmError> {
        let session = self.session()?;
        let k = self.find(&session, key.object_id, ObjectClass::PUBLIC_KEY)?;
        verdict(session.verify(&sign_mechanism(alg), k, &sign_input(alg, data), signature))
    }
}

fn mac_mechanism(alg: MacAlg) -> Mechanism<'static> {
    match alg {
        MacAlg::AesCmac => Mechanism::AesCMac,
        MacAlg::HmacSha256 => Mechanism::Sha256Hmac,
    }
}

fn sign_mechanism(alg: SignAlg) -> Mechanism<'static> {
    match alg {
        SignAlg::EcdsaP256Sha256 => Mechanism::Ecdsa,
        SignAlg::RsaPssSha256 => Mechanism::Sha256RsaPkcsPss(PkcsPssParams {
            hash_alg: MechanismType::SHA256,
            mgf: PkcsMgfType::MGF1_SHA256,
            s_len: 32u64.into(),
        }),
    }
}

fn sign_input(alg: SignAlg, data: &[u8]) -> Vec<u8> {
    match alg {
        SignAlg::EcdsaP256Sha256 => {
            use sha2::Digest;
            sha2::Sha256::digest(data).to_vec()
        }
        SignAlg::RsaPssSha256 => data.to_vec(),
    }
}

fn verdict(r: cryptoki::error::Result<()>) -> Result<bool, HsmError> {
    use cryptoki::error::{Error, RvError};
    match r {
        Ok(()) => Ok(true),
        Err(Error::Pkcs11(RvError::SignatureInvalid | RvError::SignatureLenRange, _)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmac_subkey_matches_sp800_38b_example() {
        // SP 800-38B D.1: K = 2b7e1516..., L = 7df76b0c..., K1 = fbeed618...
        let l: [u8; 16] = [
            0x7d, 0xf7, 0x6b, 0x0c, 0x1a, 0xb8, 0x99, 0xb3, 0x3e, 0x42, 0xf0, 0x47, 0xb9, 0x1b,
            0x54, 0x6f,
        ];
        let k1 = cmac_k1(&l);
        assert_eq!(hex::encode(*k1), "fbeed618357133667c85e08f7236a8de");
    }
}
