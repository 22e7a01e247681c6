//! The one place that decides the attributes of every key object we create.
//!
//! Security invariant 2 (docs/threat-model.md) is enforced here and nowhere else:
//! - every secret or private key is CKA_SENSITIVE;
//! - CKA_EXTRACTABLE only when `KeySpec::exportable` says so (the service
//!   sets it for exportable keys and for secret keys whose usage the policy
//!   backs up, `service/backup.rs`), and then always CKA_WRAP_WITH_TRUSTED,
//!   so only a KEK the security officer marked trusted (a partner's
//!   transport KEK, the backup KEK) can ever wrap it;
//! - the capability flags come from `KeyUsage::capabilities`, which never
//!   grants wrap/unwrap together with encrypt/decrypt (SoftHSM would allow
//!   both, and then "wrap, then decrypt the blob" reveals any key);
//! - derived keys are sensitive too (SoftHSM would otherwise let a derive
//!   produce a readable key: an encryption oracle on the base key);
//! - CKA_MODIFIABLE is false for generated and created keys, so nobody can add
//!   CKA_DECRYPT to a KEK later. SoftHSM 2.6 refuses CKA_MODIFIABLE in a
//!   C_DeriveKey or C_UnwrapKey template (CKR_ATTRIBUTE_READ_ONLY, measured),
//!   so derived and unwrapped keys stay modifiable there; only this process
//!   holds the user PIN, and docs/threat-model.md records the gap.
//!
//! Requirements KM-1, KM-2.

use crate::model::{Algorithm, Capabilities, KeyFamily, KeyUsage, ObjectId};
use cryptoki::object::{Attribute, KeyType, ObjectClass};

/// DER of the P-256 curve OID (1.2.840.10045.3.1.7), for CKA_EC_PARAMS.
pub(crate) const P256_PARAMS: [u8; 10] =
    [0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];

/// What the caller wants to create; the template follows from it.
#[derive(Debug, Clone)]
pub struct KeySpec {
    pub algorithm: Algorithm,
    pub usage: KeyUsage,
    /// CKA_EXTRACTABLE (always with CKA_WRAP_WITH_TRUSTED): the key may
    /// leave the token wrapped by a trusted KEK, for export or for backup.
    /// Whether the export path may do so is the policy's and the key row's
    /// `exportable`, not this flag.
    pub exportable: bool,
    pub object_id: ObjectId,
    pub label: String,
    /// Token object (persistent) or session object (gone with the session).
    pub persistent: bool,
}

/// How a security-officer-created trusted KEK differs from a normal key:
/// the SO cannot create private objects, so it is CKA_PRIVATE=false, and
/// CKA_TRUSTED=true lets it wrap CKA_WRAP_WITH_TRUSTED keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    Normal,
    TrustedBySecurityOfficer,
}

pub(crate) fn secret_key_type(alg: Algorithm) -> Option<KeyType> {
    match alg {
        Algorithm::Aes128 | Algorithm::Aes192 | Algorithm::Aes256 => Some(KeyType::AES),
        Algorithm::Tdes2 => Some(KeyType::DES2),
        Algorithm::Tdes3 => Some(KeyType::DES3),
        Algorithm::HmacSha256 => Some(KeyType::GENERIC_SECRET),
        _ => None,
    }
}

fn capability_flags(c: Capabilities) -> [Attribute; 7] {
    [
        Attribute::Encrypt(c.encrypt),
        Attribute::Decrypt(c.decrypt),
        Attribute::Wrap(c.wrap),
        Attribute::Unwrap(c.unwrap),
        Attribute::Derive(c.derive),
        Attribute::Sign(c.sign),
        Attribute::Verify(c.verify),
    ]
}

/// How the object comes to be; the token accepts different attributes for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Creation {
    Generate,
    Create,
    Derive,
    Unwrap,
}

/// Template for a secret key. CKA_VALUE_LEN is needed by C_GenerateKey and
/// C_DeriveKey for AES, and must be absent for C_CreateObject, C_UnwrapKey
/// and DES keys.
pub(crate) fn secret_key(spec: &KeySpec, trust: Trust, how: Creation) -> Vec<Attribute> {
    let with_value_len = matches!(how, Creation::Generate | Creation::Derive);
    let mut t = vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::Token(spec.persistent),
        Attribute::Private(trust == Trust::Normal),
        Attribute::Sensitive(true),
        Attribute::Extractable(spec.exportable),
        // Set even when not extractable: harmless, and no path can forget it.
        Attribute::WrapWithTrusted(true),
        Attribute::Id(spec.object_id.as_bytes().to_vec()),
        Attribute::Label(spec.label.as_bytes().to_vec()),
    ];
    if matches!(how, Creation::Generate | Creation::Create) {
        t.push(Attribute::Modifiable(false));
    }
    if let Some(kt) = secret_key_type(spec.algorithm) {
        t.push(Attribute::KeyType(kt));
    }
    if trust == Trust::TrustedBySecurityOfficer {
        t.push(Attribute::Trusted(true));
    }
    if with_value_len && matches!(spec.algorithm.family(), KeyFamily::Aes | KeyFamily::Hmac) {
        if let Some(len) = spec.algorithm.secret_len() {
            t.push(Attribute::ValueLen((len as u64).into()));
        }
    }
    t.extend(capability_flags(spec.usage.capabilities(spec.algorithm)));
    t
}

/// Template of a "twin": a session copy of a key being derived or unwrapped,
/// made only to learn the key's check value. SoftHSM 2.6.1 leaves
/// CKA_CHECK_VALUE empty on unwrapped keys and fills a wrong one on derived
/// keys (measured), and the real key may not have CKA_ENCRYPT. The twin can
/// only encrypt, is not extractable, and is destroyed right after it
/// encrypted the zero block.
pub(crate) fn kcv_twin(spec: &KeySpec, how: Creation, trust: Trust) -> Vec<Attribute> {
    let twin = KeySpec {
        exportable: false,
        persistent: false,
        object_id: ObjectId::random(),
        label: "kcv".into(),
        ..spec.clone()
    };
    let mut t = secret_key(&twin, Trust::Normal, how);
    for a in t.iter_mut() {
        match a {
            Attribute::Encrypt(e) => *e = true,
            // Under the SO's login only public objects can be made.
            Attribute::Private(p) => *p = trust == Trust::Normal,
            Attribute::Decrypt(b)
            | Attribute::Wrap(b)
            | Attribute::Unwrap(b)
            | Attribute::Derive(b)
            | Attribute::Sign(b)
            | Attribute::Verify(b) => *b = false,
            _ => {}
        }
    }
    t
}

/// What a secure-channel session key (SCP02/SCP03) does inside the token
/// during the one call that derives it; afterwards it only leaves wrapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionKeyUse {
    /// Nothing: derived only to be wrapped for the caller.
    WrapOut,
    /// SCP02 S-ENC: the token computes the card and host cryptograms as a
    /// TDES CBC-MAC, i.e. C_Encrypt with CKM_DES3_CBC, so it needs
    /// CKA_ENCRYPT (and nothing else).
    CbcMac,
    /// SCP03 S-MAC: the cryptograms are C_Sign with CKM_AES_CMAC.
    Cmac,
}

/// Template of a secure-channel session key: a session object derived from
/// a static key, sensitive, extractable only by a trusted KEK when
/// `spec.exportable` (as for any key), and with exactly the one capability
/// its use needs. It never wraps, unwraps, decrypts or derives, so being
/// able to encrypt (S-ENC) can never combine with wrapping.
pub(crate) fn session_key(spec: &KeySpec, used: SessionKeyUse) -> Vec<Attribute> {
    let spec = KeySpec {
        persistent: false,
        ..spec.clone()
    };
    let mut t = secret_key(&spec, Trust::Normal, Creation::Derive);
    for a in t.iter_mut() {
        match a {
            Attribute::Encrypt(b) => *b = used == SessionKeyUse::CbcMac,
            Attribute::Sign(b) => *b = used == SessionKeyUse::Cmac,
            Attribute::Decrypt(b)
            | Attribute::Wrap(b)
            | Attribute::Unwrap(b)
            | Attribute::Derive(b)
            | Attribute::Verify(b) => *b = false,
            _ => {}
        }
    }
    t
}

/// Template of a short-lived helper key that exists only to derive another
/// key inside the token (e.g. a 2-key TDES key, which SoftHSM cannot generate).
pub(crate) fn derivation_scratch(object_id: ObjectId, trust: Trust) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen(32u64.into()),
        Attribute::Token(false),
        Attribute::Private(trust == Trust::Normal),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Id(object_id.as_bytes().to_vec()),
        Attribute::Derive(true),
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Sign(false),
        Attribute::Verify(false),
    ]
}

/// Public and private templates of a key pair. Private keys never leave the
/// token: asymmetric exportability is refused before we get here.
pub(crate) fn key_pair(spec: &KeySpec) -> (Vec<Attribute>, Vec<Attribute>) {
    let c = spec.usage.capabilities(spec.algorithm);
    let id = spec.object_id.as_bytes().to_vec();
    let label = spec.label.as_bytes().to_vec();
    let mut public = vec![
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::Token(spec.persistent),
        Attribute::Private(false),
        Attribute::Modifiable(false),
        Attribute::Id(id.clone()),
        Attribute::Label(label.clone()),
        Attribute::Verify(c.verify),
        Attribute::Wrap(c.wrap),
        Attribute::Encrypt(false),
        Attribute::Derive(false),
    ];
    let mut private = vec![
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::Token(spec.persistent),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Modifiable(false),
        Attribute::Id(id),
        Attribute::Label(label),
        Attribute::Sign(c.sign),
        Attribute::Unwrap(c.unwrap),
        Attribute::Decrypt(false),
        Attribute::Derive(false),
    ];
    if let Some(bits) = spec.algorithm.rsa_bits() {
        public.push(Attribute::KeyType(KeyType::RSA));
        public.push(Attribute::ModulusBits(bits.into()));
        public.push(Attribute::PublicExponent(vec![0x01, 0x00, 0x01]));
        private.push(Attribute::KeyType(KeyType::RSA));
    } else {
        public.push(Attribute::KeyType(KeyType::EC));
        public.push(Attribute::EcParams(P256_PARAMS.to_vec()));
        private.push(Attribute::KeyType(KeyType::EC));
    }
    (public, private)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(alg: Algorithm, usage: KeyUsage, exportable: bool) -> KeySpec {
        KeySpec {
            algorithm: alg,
            usage,
            exportable,
            object_id: ObjectId::random(),
            label: "t".into(),
            persistent: true,
        }
    }

    fn flag(t: &[Attribute], f: fn(&Attribute) -> Option<bool>) -> Option<bool> {
        t.iter().find_map(f)
    }

    #[test]
    fn session_keys_are_sensitive_session_objects_that_never_wrap() {
        for alg in [Algorithm::Tdes2, Algorithm::Aes128, Algorithm::Aes256] {
            for used in [
                SessionKeyUse::WrapOut,
                SessionKeyUse::CbcMac,
                SessionKeyUse::Cmac,
            ] {
                for exportable in [false, true] {
                    let t = session_key(&spec(alg, KeyUsage::Data, exportable), used);
                    let get = |f: fn(&Attribute) -> Option<bool>| flag(&t, f);
                    assert_eq!(
                        get(|x| match x {
                            Attribute::Sensitive(b) => Some(*b),
                            _ => None,
                        }),
                        Some(true)
                    );
                    assert_eq!(
                        get(|x| match x {
                            Attribute::Token(b) => Some(*b),
                            _ => None,
                        }),
                        Some(false)
                    );
                    assert_eq!(
                        get(|x| match x {
                            Attribute::Extractable(b) => Some(*b),
                            _ => None,
                        }),
                        Some(exportable)
                    );
                    assert_eq!(
                        get(|x| match x {
                            Attribute::WrapWithTrusted(b) => Some(*b),
                            _ => None,
                        }),
                        Some(true)
                    );
                    for f in [
                        (|x: &Attribute| match x {
                            Attribute::Wrap(b) => Some(*b),
                            _ => None,
                        }) as fn(&Attribute) -> Option<bool>,
                        |x| match x {
                            Attribute::Unwrap(b) => Some(*b),
                            _ => None,
                        },
                        |x| match x {
                            Attribute::Decrypt(b) => Some(*b),
                            _ => None,
                        },
                        |x| match x {
                            Attribute::Derive(b) => Some(*b),
                            _ => None,
                        },
                    ] {
                        assert_eq!(get(f), Some(false), "{alg} {used:?}");
                    }
                    let encrypt = get(|x| match x {
                        Attribute::Encrypt(b) => Some(*b),
                        _ => None,
                    });
                    let sign = get(|x| match x {
                        Attribute::Sign(b) => Some(*b),
                        _ => None,
                    });
                    assert_eq!(encrypt, Some(used == SessionKeyUse::CbcMac));
                    assert_eq!(sign, Some(used == SessionKeyUse::Cmac));
                }
            }
        }
    }

    /// The backup KEK as the security officer imports it: trusted, public
    /// (the SO cannot make private objects; the user login must use it),
    /// sensitive, never extractable, and able only to wrap and unwrap.
    #[test]
    fn km2_backup_kek_template_is_trusted_wrap_only_and_never_extractable() {
        let t = secret_key(
            &spec(Algorithm::Aes256, KeyUsage::BackupKek, false),
            Trust::TrustedBySecurityOfficer,
            Creation::Create,
        );
        let has = |want: &Attribute| t.iter().any(|a| a == want);
        for a in [
            Attribute::Trusted(true),
            Attribute::Private(false),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Modifiable(false),
            Attribute::Wrap(true),
            Attribute::Unwrap(true),
            Attribute::Encrypt(false),
            Attribute::Decrypt(false),
            Attribute::Derive(false),
            Attribute::Sign(false),
        ] {
            assert!(has(&a), "{a:?}");
        }
    }

    #[test]
    fn every_secret_template_is_sensitive_and_wrap_with_trusted() {
        for u in KeyUsage::ALL {
            for a in Algorithm::ALL
                .into_iter()
                .filter(|a| a.is_secret() && u.allows(*a))
            {
                for exportable in [false, true] {
                    let t = secret_key(&spec(a, u, exportable), Trust::Normal, Creation::Derive);
                    let sens = flag(&t, |x| match x {
                        Attribute::Sensitive(b) => Some(*b),
                        _ => None,
                    });
                    let ext = flag(&t, |x| match x {
                        Attribute::Extractable(b) => Some(*b),
                        _ => None,
                    });
                    let wwt = flag(&t, |x| match x {
                        Attribute::WrapWithTrusted(b) => Some(*b),
                        _ => None,
                    });
                    assert_eq!(sens, Some(true));
                    assert_eq!(ext, Some(exportable));
                    assert_eq!(wwt, Some(true));
                }
            }
        }
    }
}
