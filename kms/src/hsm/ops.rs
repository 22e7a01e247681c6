//! Cryptographic operations with keys already on the token: wrap, unwrap,
//! derive, MAC, sign. Each takes one pooled session for its whole duration.

use super::keys::{primary_class, CreatedKey};
use super::raw::RawModule;
use super::templates::{self, Creation, KeySpec, SessionKeyUse, Trust};
use super::{DeriveAlg, Hsm, HsmError, KeyRef};
use crate::derivation::{
    self, Handshake, KmcDiversification, Scp02Handshake, Scp02Keys, Scp02SessionKey,
    Scp03Handshake, Scp03Keys, SdKeyKind, StaticKeySource, WrappedOut,
};
use crate::model::{Algorithm, KeyFamily, KeyUsage, ObjectId};
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
    /// The name used on the wire and in records (the `FromStr` spelling).
    pub fn as_str(self) -> &'static str {
        match self {
            WrapAlg::AesKw => "aes-kw",
            WrapAlg::AesKwp => "aes-kwp",
            WrapAlg::TdesCbc => "tdes-cbc",
            WrapAlg::RsaOaepSha256 => "rsa-oaep-sha256",
            WrapAlg::RsaOaepSha1 => "rsa-oaep-sha1",
        }
    }

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

/// AES-ECB under `key` of fixed constant blocks, never of data a caller
/// chose: that would make the token an encryption oracle on a derivation
/// key (see `KeyUsage::capabilities`).
fn encrypt_constant_blocks(
    session: &Session,
    key: ObjectHandle,
    blocks: &[[u8; 16]],
) -> Result<Zeroizing<Vec<u8>>, HsmError> {
    let input: Vec<u8> = blocks.iter().flatten().copied().collect();
    let out = Zeroizing::new(session.encrypt(&Mechanism::AesEcb, key, &input)?);
    if out.len() != input.len() {
        return Err(HsmError::invalid("AES-ECB returned a short result"));
    }
    Ok(out)
}

fn block_at(bytes: &[u8], i: usize) -> Result<[u8; 16], HsmError> {
    bytes
        .get(16 * i..16 * (i + 1))
        .and_then(|b| <[u8; 16]>::try_from(b).ok())
        .ok_or_else(|| HsmError::invalid("AES-ECB returned a short result"))
}

/// The in-token form of the SP 800-108 CMAC KDF for one-block messages:
/// CMAC(K, m) = E_K(m xor K1) for a full block, so an AES-ECB derive over
/// the blocks (m_i xor K1) makes the CMAC blocks inside the token. Only
/// L = E_K(0) leaves the token, a check-value-like constant.
fn cmac_one_block_messages(
    session: &Session,
    key: ObjectHandle,
    messages: &[[u8; 16]],
) -> Result<DeriveAlg, HsmError> {
    let l = encrypt_constant_blocks(session, key, &[[0u8; 16]])?;
    let k1 = cmac_k1(&block_at(&l, 0)?);
    let mut data = Vec::with_capacity(16 * messages.len());
    for m in messages {
        data.extend(m.iter().zip(k1.iter()).map(|(a, b)| a ^ b));
    }
    Ok(DeriveAlg::AesEcb(data))
}

/// The in-token form of the SCP03 KDF (two-block messages M1_i || M2, with
/// M1_i = `scp03_fixed_block(constant, L, i)` all constants and M2 the
/// context): CMAC(K, M1_i || M2) = E_K(E_K(M1_i) xor M2 xor K1), so one
/// AES-ECB derive over the blocks (C_i xor M2 xor K1), C_i = E_K(M1_i),
/// makes the session key in the token (GP Amendment D §6.2.2,
/// hsm-notes.md). Only E_K(0) and the C_i leave the token: constants of the
/// static key, from which neither it nor a session key can be computed.
/// For AES-192 the two CMAC blocks are 32 bytes and the token keeps the
/// first 24 (CKA_VALUE_LEN), as the KDF truncates.
fn scp03_kdf_derivation(
    session: &Session,
    key: ObjectHandle,
    key_alg: Algorithm,
    constant: u8,
    context: &[u8; 16],
) -> Result<DeriveAlg, HsmError> {
    let len = aes_len(key_alg)?;
    let l_bits =
        u16::try_from(len * 8).map_err(|_| HsmError::invalid("session key length out of range"))?;
    let n = len.div_ceil(16);
    let mut constants = vec![[0u8; 16]];
    for i in 1..=n {
        let counter =
            u8::try_from(i).map_err(|_| HsmError::invalid("session key length out of range"))?;
        constants.push(derivation::scp03_fixed_block(constant, l_bits, counter));
    }
    let e = encrypt_constant_blocks(session, key, &constants)?;
    let k1 = cmac_k1(&block_at(&e, 0)?);
    let mut data = Vec::with_capacity(16 * n);
    for i in 1..=n {
        let c = block_at(&e, i)?;
        data.extend((0..16).map(|j| c[j] ^ context[j] ^ k1[j]));
    }
    Ok(DeriveAlg::AesEcb(data))
}

fn aes_len(alg: Algorithm) -> Result<usize, HsmError> {
    match (alg.family(), alg.secret_len()) {
        (KeyFamily::Aes, Some(len)) => Ok(len),
        _ => Err(HsmError::invalid(format!("SCP03 keys are AES, not {alg}"))),
    }
}

/// Compare two cryptograms without an early exit, so the time taken does
/// not tell how many leading bytes of a guess were right.
fn same_cryptogram(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Every session object made during one call, destroyed when the call ends
/// however it ends (`finish`, an early `?` return, or a panic unwinding):
/// KM-7, nothing derived outlives its request. It borrows the pooled
/// session, which therefore outlives it. A session object lives as long as
/// its session, and pooled sessions are never closed, so one left behind
/// would stay on the token indefinitely.
struct Scratch<'s> {
    session: &'s Session,
    objects: Vec<ObjectHandle>,
}

impl<'s> Scratch<'s> {
    fn new(session: &'s Session) -> Self {
        Self {
            session,
            objects: Vec::new(),
        }
    }

    /// C_DeriveKey of a session object this scratch will destroy.
    fn derive(
        &mut self,
        raw: &RawModule,
        base: ObjectHandle,
        how: &DeriveAlg,
        template: &[cryptoki::object::Attribute],
    ) -> Result<ObjectHandle, HsmError> {
        let h = raw.derive(self.session, base, how, template)?;
        self.objects.push(h);
        Ok(h)
    }

    fn destroy_all(&mut self) -> Result<(), HsmError> {
        let mut first_error = None;
        // Newest first: derived keys before the keys they came from.
        while let Some(h) = self.objects.pop() {
            if let Err(e) = self.session.destroy_object(h) {
                first_error.get_or_insert(HsmError::from(e));
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Destroy everything now and say whether that worked.
    fn finish(mut self) -> Result<(), HsmError> {
        self.destroy_all()
    }
}

impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.destroy_all() {
            // Already on an error path; the caller's error is the one to
            // report, but a left-over session object must not go unnoticed.
            tracing::error!(error = %e, "a derived session object could not be destroyed");
        }
    }
}

/// A static key resolved inside the token for one session derivation.
struct StaticKey {
    handle: ObjectHandle,
    algorithm: Algorithm,
}

/// The transport KEK of one call, found on the call's session.
struct Transport {
    kek: ObjectHandle,
    alg: WrapAlg,
}

impl Transport {
    /// The token enforces CKA_EXTRACTABLE and CKA_WRAP_WITH_TRUSTED here:
    /// an untrusted KEK gets CKR_KEY_NOT_WRAPPABLE.
    fn wrap(&self, session: &Session, key: ObjectHandle) -> Result<Vec<u8>, HsmError> {
        Ok(session.wrap_key(&wrap_mechanism(self.alg), self.kek, key)?)
    }
}

/// A throw-away spec for a derived session object.
fn session_spec(algorithm: Algorithm, usage: KeyUsage, exportable: bool) -> KeySpec {
    KeySpec {
        algorithm,
        usage,
        exportable,
        object_id: ObjectId::random(),
        label: "session".into(),
        persistent: false,
    }
}

impl Hsm {
    /// Run `work` on one pooled session with a `Scratch` for its session
    /// objects, which are all destroyed before this returns; a failure to
    /// destroy them is an error even when `work` succeeded.
    fn with_scratch<T>(
        &self,
        work: impl FnOnce(&Session, &mut Scratch<'_>) -> Result<T, HsmError>,
    ) -> Result<T, HsmError> {
        let session = self.session()?;
        let mut scratch = Scratch::new(&session);
        let out = work(&session, &mut scratch);
        let cleaned = scratch.finish();
        let v = out?;
        cleaned?;
        Ok(v)
    }

    /// Resolve one static key: find a stored key, or diversify it from the
    /// KMC into a session object (sensitive; extractable, wrap-with-trusted,
    /// only when `exportable`, i.e. for the SCP03 DEK that leaves wrapped).
    fn static_key(
        &self,
        session: &Session,
        scratch: &mut Scratch<'_>,
        source: &StaticKeySource,
        kind: SdKeyKind,
        exportable: bool,
    ) -> Result<StaticKey, HsmError> {
        match source {
            StaticKeySource::Stored { enc, mac, dek } => {
                let r = match kind {
                    SdKeyKind::Enc => enc,
                    SdKeyKind::Mac => mac,
                    SdKeyKind::Dek => dek,
                };
                Ok(StaticKey {
                    handle: self.find(session, r.object_id, ObjectClass::SECRET_KEY)?,
                    algorithm: r.algorithm,
                })
            }
            StaticKeySource::Diversified { kmc, method, kdd } => {
                let base = self.find(session, kmc.object_id, ObjectClass::SECRET_KEY)?;
                let (algorithm, how) = match (method, kmc.algorithm.family()) {
                    (KmcDiversification::EmvCps11, KeyFamily::Tdes) => (
                        Algorithm::Tdes2,
                        DeriveAlg::TdesEcb(derivation::emv_cps11_data(kdd, kind).to_vec()),
                    ),
                    (KmcDiversification::Visa2, KeyFamily::Tdes) => (
                        Algorithm::Tdes2,
                        DeriveAlg::TdesEcb(derivation::visa2_data(kdd, kind).to_vec()),
                    ),
                    (KmcDiversification::Kdf3, KeyFamily::Aes) => {
                        let len = aes_len(kmc.algorithm)?;
                        let messages = derivation::kdf3_messages(kdd, kind, len);
                        (
                            kmc.algorithm,
                            cmac_one_block_messages(session, base, &messages)?,
                        )
                    }
                    (m, _) => {
                        return Err(HsmError::invalid(format!(
                            "{m:?} diversification does not apply to a {} KMC",
                            kmc.algorithm
                        )))
                    }
                };
                let usage = match kind {
                    SdKeyKind::Enc => KeyUsage::SdStaticEnc,
                    SdKeyKind::Mac => KeyUsage::SdStaticMac,
                    SdKeyKind::Dek => KeyUsage::SdStaticDek,
                };
                let spec = session_spec(algorithm, usage, exportable);
                let template = templates::secret_key(&spec, Trust::Normal, Creation::Derive);
                Ok(StaticKey {
                    handle: scratch.derive(&self.raw, base, &how, &template)?,
                    algorithm,
                })
            }
        }
    }

    /// Derive an exportable session key that is only wrapped out (no other
    /// capability), with its check value from a twin; wrap it for transport.
    fn derive_wrapped_out(
        &self,
        session: &Session,
        scratch: &mut Scratch<'_>,
        base: ObjectHandle,
        how: &DeriveAlg,
        algorithm: Algorithm,
        transport: &Transport,
    ) -> Result<WrappedOut, HsmError> {
        let spec = session_spec(algorithm, KeyUsage::Data, true);
        let kcv = self.twin_kcv_in(session, scratch, base, how, &spec)?;
        let h = scratch.derive(
            &self.raw,
            base,
            how,
            &templates::session_key(&spec, SessionKeyUse::WrapOut),
        )?;
        Ok(WrappedOut {
            wrapped: transport.wrap(session, h)?,
            kcv: Some(kcv),
        })
    }

    /// The check value of the key `how` derives from `base`, from an
    /// encrypt-only, non-extractable twin that the scratch destroys.
    fn twin_kcv_in(
        &self,
        session: &Session,
        scratch: &mut Scratch<'_>,
        base: ObjectHandle,
        how: &DeriveAlg,
        spec: &KeySpec,
    ) -> Result<Vec<u8>, HsmError> {
        let twin = scratch.derive(
            &self.raw,
            base,
            how,
            &templates::kcv_twin(spec, Creation::Derive, Trust::Normal),
        )?;
        Self::zero_block_kcv(session, twin, spec.algorithm)
    }

    /// An SCP02 session (GP Card Spec 2.2 Annex E), all in one token
    /// session: S-ENC is derived first (DES3_CBC_ENCRYPT_DATA, IV zero) and
    /// the card cryptogram checked with it (a TDES CBC-MAC, the last block
    /// of C_Encrypt with CKM_DES3_CBC); only if it verifies are the host
    /// cryptogram computed and C-MAC, R-MAC and the session DEK derived,
    /// and the four keys wrapped under `kek`. Every derived object,
    /// diversified static keys included, is destroyed before returning.
    pub fn scp02_session(
        &self,
        keys: &StaticKeySource,
        hs: &Scp02Handshake,
        kek: &KeyRef,
        alg: WrapAlg,
    ) -> Result<Handshake<Scp02Keys>, HsmError> {
        alg.check_kek(kek)?;
        self.with_scratch(|session, scratch| {
            let transport = Transport {
                kek: self.wrapping_key(session, kek, false)?,
                alg,
            };
            let tdes = |k: &StaticKey| {
                if k.algorithm.family() == KeyFamily::Tdes {
                    Ok(())
                } else {
                    Err(HsmError::invalid(format!(
                        "SCP02 static keys are TDES, not {}",
                        k.algorithm
                    )))
                }
            };
            let how = |key: Scp02SessionKey| DeriveAlg::TdesCbc {
                iv: [0; 8],
                data: derivation::scp02_derivation_data(key, hs.sequence_counter).to_vec(),
            };
            let cbc_mac = |h: ObjectHandle, data: &[u8]| -> Result<Vec<u8>, HsmError> {
                let mut c = session.encrypt(&Mechanism::Des3Cbc([0; 8]), h, data)?;
                Ok(c.split_off(c.len().saturating_sub(8)))
            };

            let enc = self.static_key(session, scratch, keys, SdKeyKind::Enc, false)?;
            tdes(&enc)?;
            let s_enc_spec = session_spec(Algorithm::Tdes2, KeyUsage::Data, true);
            let s_enc = scratch.derive(
                &self.raw,
                enc.handle,
                &how(Scp02SessionKey::SEnc),
                &templates::session_key(&s_enc_spec, SessionKeyUse::CbcMac),
            )?;
            let card = cbc_mac(
                s_enc,
                &derivation::scp02_card_cryptogram_input(
                    hs.sequence_counter,
                    &hs.host_challenge,
                    &hs.card_challenge,
                ),
            )?;
            if !same_cryptogram(&card, &hs.card_cryptogram) {
                return Ok(Handshake::CardCryptogramMismatch);
            }
            let host = cbc_mac(
                s_enc,
                &derivation::scp02_host_cryptogram_input(
                    hs.sequence_counter,
                    &hs.host_challenge,
                    &hs.card_challenge,
                ),
            )?;
            let host_cryptogram = <[u8; 8]>::try_from(host.as_slice())
                .map_err(|_| HsmError::invalid("TDES-CBC returned a short MAC"))?;
            // S-ENC may encrypt, so its check value needs no twin.
            let s_enc_out = WrappedOut {
                wrapped: transport.wrap(session, s_enc)?,
                kcv: Some(Self::zero_block_kcv(session, s_enc, Algorithm::Tdes2)?),
            };

            let mac = self.static_key(session, scratch, keys, SdKeyKind::Mac, false)?;
            tdes(&mac)?;
            let dek = self.static_key(session, scratch, keys, SdKeyKind::Dek, false)?;
            tdes(&dek)?;
            let mut out = |base: ObjectHandle, key: Scp02SessionKey| {
                self.derive_wrapped_out(
                    session,
                    scratch,
                    base,
                    &how(key),
                    Algorithm::Tdes2,
                    &transport,
                )
            };
            let c_mac = out(mac.handle, Scp02SessionKey::CMac)?;
            let r_mac = out(mac.handle, Scp02SessionKey::RMac)?;
            let dek_out = out(dek.handle, Scp02SessionKey::Dek)?;
            Ok(Handshake::Established(Scp02Keys {
                s_enc: s_enc_out,
                c_mac,
                r_mac,
                dek: dek_out,
                host_cryptogram,
            }))
        })
    }

    /// An SCP03 session (GP Amendment D), all in one token session: S-MAC is
    /// derived first (`scp03_kdf_derivation`) and the card cryptogram
    /// checked with it (C_Sign, CKM_AES_CMAC, first 8 bytes); only if it
    /// verifies are the host cryptogram computed, S-ENC and S-RMAC derived,
    /// and the three session keys and the static DEK (for PUT KEY) wrapped
    /// under `kek`. Session keys are as long as their static keys. Every
    /// derived object is destroyed before returning.
    pub fn scp03_session(
        &self,
        keys: &StaticKeySource,
        hs: &Scp03Handshake,
        kek: &KeyRef,
        alg: WrapAlg,
    ) -> Result<Handshake<Scp03Keys>, HsmError> {
        alg.check_kek(kek)?;
        let context = derivation::scp03_context(&hs.host_challenge, &hs.card_challenge);
        self.with_scratch(|session, scratch| {
            let transport = Transport {
                kek: self.wrapping_key(session, kek, false)?,
                alg,
            };
            let cryptogram = |s_mac: ObjectHandle, constant: u8| -> Result<[u8; 8], HsmError> {
                let input = derivation::scp03_cryptogram_input(constant, &context);
                let t = session.sign(&Mechanism::AesCMac, s_mac, &input)?;
                t.get(..8)
                    .and_then(|c| <[u8; 8]>::try_from(c).ok())
                    .ok_or_else(|| HsmError::invalid("AES-CMAC returned a short tag"))
            };

            let mac = self.static_key(session, scratch, keys, SdKeyKind::Mac, false)?;
            let s_mac_how = scp03_kdf_derivation(
                session,
                mac.handle,
                mac.algorithm,
                derivation::SCP03_S_MAC,
                &context,
            )?;
            let s_mac_spec = session_spec(mac.algorithm, KeyUsage::Mac, true);
            let s_mac = scratch.derive(
                &self.raw,
                mac.handle,
                &s_mac_how,
                &templates::session_key(&s_mac_spec, SessionKeyUse::Cmac),
            )?;
            let card = cryptogram(s_mac, derivation::SCP03_CARD_CRYPTOGRAM)?;
            if !same_cryptogram(&card, &hs.card_cryptogram) {
                return Ok(Handshake::CardCryptogramMismatch);
            }
            let host_cryptogram = cryptogram(s_mac, derivation::SCP03_HOST_CRYPTOGRAM)?;
            let s_mac_out = WrappedOut {
                wrapped: transport.wrap(session, s_mac)?,
                kcv: Some(self.twin_kcv_in(
                    session,
                    scratch,
                    mac.handle,
                    &s_mac_how,
                    &s_mac_spec,
                )?),
            };
            let s_rmac_how = scp03_kdf_derivation(
                session,
                mac.handle,
                mac.algorithm,
                derivation::SCP03_S_RMAC,
                &context,
            )?;
            let s_rmac = self.derive_wrapped_out(
                session,
                scratch,
                mac.handle,
                &s_rmac_how,
                mac.algorithm,
                &transport,
            )?;

            let enc = self.static_key(session, scratch, keys, SdKeyKind::Enc, false)?;
            let s_enc_how = scp03_kdf_derivation(
                session,
                enc.handle,
                enc.algorithm,
                derivation::SCP03_S_ENC,
                &context,
            )?;
            let s_enc = self.derive_wrapped_out(
                session,
                scratch,
                enc.handle,
                &s_enc_how,
                enc.algorithm,
                &transport,
            )?;

            // The static DEK leaves as it is: a stored DEK must have been
            // created exportable; a diversified one is derived exportable.
            // AES derivation keys may encrypt (constant blocks only), so
            // E(0) gives its check value directly.
            let dek = self.static_key(session, scratch, keys, SdKeyKind::Dek, true)?;
            aes_len(dek.algorithm)?;
            let static_dek = WrappedOut {
                wrapped: transport.wrap(session, dek.handle)?,
                kcv: Some(Self::zero_block_kcv(session, dek.handle, dek.algorithm)?),
            };
            Ok(Handshake::Established(Scp03Keys {
                s_enc,
                s_mac: s_mac_out,
                s_rmac,
                static_dek,
                host_cryptogram,
            }))
        })
    }

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
        // An HMAC key has no zero-block check value; the caller checks it
        // by a MAC over a constant (`backup`), which needs the real key.
        let kcv = if spec.algorithm.family() == KeyFamily::Hmac {
            None
        } else {
            Some(Self::twin_kcv(
                &session,
                spec,
                Creation::Unwrap,
                trust,
                |t| Ok(session.unwrap_key(&mech, uk, wrapped, t)?),
            )?)
        };
        let template = templates::secret_key(spec, trust, Creation::Unwrap);
        session.unwrap_key(&mech, uk, wrapped, &template)?;
        Ok(CreatedKey {
            object_id: spec.object_id,
            kcv,
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
        let how = {
            let session = self.session()?;
            let b = self.find(&session, base.object_id, ObjectClass::SECRET_KEY)?;
            cmac_one_block_messages(&session, b, messages)?
        };
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
