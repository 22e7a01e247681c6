//! Key objects: generate, create from a clear value, find, inspect, destroy.

use super::templates::{self, Creation, KeySpec, Trust};
use super::{DeriveAlg, Hsm, HsmError, KeyRef};
use crate::model::{Algorithm, KeyFamily, ObjectId};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use zeroize::Zeroize;

/// The outcome of creating a key on the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedKey {
    pub object_id: ObjectId,
    /// The token's CKA_CHECK_VALUE (first 3 bytes of E(zero block)); secret keys only.
    pub kcv: Option<Vec<u8>>,
    /// DER-free public part: EC point (uncompressed, as the token returns it)
    /// or RSA modulus; key pairs only.
    pub public_key: Option<Vec<u8>>,
}

/// One object found on the token, for start-up reconciliation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenObject {
    /// `None` for objects whose CKA_ID is not one of ours (not 16 bytes).
    pub object_id: Option<ObjectId>,
    pub class: &'static str,
    pub label: String,
}

/// The security-relevant attributes of a key object, read back from the token.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct KeyAttributes {
    pub class: String,
    pub token: bool,
    pub private: bool,
    pub sensitive: bool,
    pub always_sensitive: bool,
    pub extractable: bool,
    pub never_extractable: bool,
    pub wrap_with_trusted: bool,
    pub trusted: bool,
    pub modifiable: bool,
    pub wrap: bool,
    pub unwrap: bool,
    pub encrypt: bool,
    pub decrypt: bool,
    pub derive: bool,
    pub sign: bool,
    pub verify: bool,
    pub check_value: Option<Vec<u8>>,
}

fn class_code(c: ObjectClass) -> u64 {
    if c == ObjectClass::SECRET_KEY {
        4
    } else if c == ObjectClass::PRIVATE_KEY {
        3
    } else {
        2
    }
}

fn class_name(c: ObjectClass) -> &'static str {
    if c == ObjectClass::SECRET_KEY {
        "secret-key"
    } else if c == ObjectClass::PRIVATE_KEY {
        "private-key"
    } else if c == ObjectClass::PUBLIC_KEY {
        "public-key"
    } else {
        "other"
    }
}

/// The object class that carries a key's main capability: the secret key,
/// or for pairs the private key (sign, unwrap) / public key (verify, wrap).
pub(crate) fn primary_class(alg: Algorithm) -> ObjectClass {
    if alg.is_secret() {
        ObjectClass::SECRET_KEY
    } else {
        ObjectClass::PRIVATE_KEY
    }
}

impl Hsm {
    /// Find the handle of `id`'s object of class `class`.
    pub(crate) fn find(
        &self,
        session: &Session,
        id: ObjectId,
        class: ObjectClass,
    ) -> Result<ObjectHandle, HsmError> {
        let key = (id, class_code(class));
        if let Ok(cache) = self.handles.read() {
            if let Some(h) = cache.get(&key) {
                return Ok(*h);
            }
        }
        let found = session.find_objects(&[
            Attribute::Id(id.as_bytes().to_vec()),
            Attribute::Class(class),
        ])?;
        match found.as_slice() {
            [] => Err(HsmError::ObjectNotFound(id)),
            [h] => {
                if let Ok(mut cache) = self.handles.write() {
                    cache.insert(key, *h);
                }
                Ok(*h)
            }
            many => Err(HsmError::AmbiguousObject(many.len(), id)),
        }
    }

    fn forget(&self, id: ObjectId) {
        if let Ok(mut cache) = self.handles.write() {
            cache.retain(|(k, _), _| *k != id);
        }
    }

    pub(crate) fn check_value(
        session: &Session,
        h: ObjectHandle,
    ) -> Result<Option<Vec<u8>>, HsmError> {
        let attrs = session.get_attributes(h, &[AttributeType::CheckValue])?;
        Ok(attrs.into_iter().find_map(|a| match a {
            Attribute::CheckValue(v) if !v.is_empty() => Some(v),
            _ => None,
        }))
    }

    /// Generate a key inside the token (KM-1).
    pub fn generate(&self, spec: &KeySpec, trust: Trust) -> Result<CreatedKey, HsmError> {
        let session = self.session()?;
        match spec.algorithm.family() {
            KeyFamily::Aes | KeyFamily::Tdes | KeyFamily::Hmac => {
                let kcv = match spec.algorithm {
                    Algorithm::Tdes2 => self.generate_tdes2(&session, spec, trust)?.1,
                    Algorithm::Tdes3 => {
                        let t = templates::secret_key(spec, trust, Creation::Generate);
                        let h = session.generate_key(&Mechanism::Des3KeyGen, &t)?;
                        Self::check_value(&session, h)?.unwrap_or_default()
                    }
                    Algorithm::HmacSha256 => {
                        let t = templates::secret_key(spec, trust, Creation::Generate);
                        let h = session.generate_key(&Mechanism::GenericSecretKeyGen, &t)?;
                        Self::check_value(&session, h)?.unwrap_or_default()
                    }
                    _ => {
                        let t = templates::secret_key(spec, trust, Creation::Generate);
                        let h = session.generate_key(&Mechanism::AesKeyGen, &t)?;
                        Self::check_value(&session, h)?.unwrap_or_default()
                    }
                };
                Ok(CreatedKey {
                    object_id: spec.object_id,
                    kcv: Some(kcv),
                    public_key: None,
                })
            }
            KeyFamily::Rsa | KeyFamily::Ec => {
                if spec.exportable {
                    return Err(HsmError::invalid(
                        "private keys are never exportable; create a secret key to export",
                    ));
                }
                if trust != Trust::Normal {
                    return Err(HsmError::invalid("only secret KEKs can be created trusted"));
                }
                let (public, private) = templates::key_pair(spec);
                let mech = if spec.algorithm.family() == KeyFamily::Rsa {
                    Mechanism::RsaPkcsKeyPairGen
                } else {
                    Mechanism::EccKeyPairGen
                };
                let (pub_h, _) = session.generate_key_pair(&mech, &public, &private)?;
                let what = if spec.algorithm.family() == KeyFamily::Rsa {
                    AttributeType::Modulus
                } else {
                    AttributeType::EcPoint
                };
                let public_key = session
                    .get_attributes(pub_h, &[what])?
                    .into_iter()
                    .find_map(|a| match a {
                        Attribute::Modulus(v) | Attribute::EcPoint(v) => Some(v),
                        _ => None,
                    });
                Ok(CreatedKey {
                    object_id: spec.object_id,
                    kcv: None,
                    public_key,
                })
            }
        }
    }

    /// SoftHSM has no CKM_DES2_KEY_GEN. Rather than let random bytes pass
    /// through host memory, derive the key from a throw-away AES key with
    /// token randomness as data: the value never exists outside the token.
    /// Its check value comes from a twin (see `templates::kcv_twin`).
    fn generate_tdes2(
        &self,
        session: &Session,
        spec: &KeySpec,
        trust: Trust,
    ) -> Result<(ObjectHandle, Vec<u8>), HsmError> {
        let scratch = session.generate_key(
            &Mechanism::AesKeyGen,
            &templates::derivation_scratch(ObjectId::random(), trust),
        )?;
        let how = DeriveAlg::AesEcb(session.generate_random_vec(16)?);
        let made = Self::twin_kcv(session, spec, Creation::Derive, trust, |t| {
            self.raw.derive(session, scratch, &how, t)
        })
        .and_then(|kcv| {
            let h = self.raw.derive(
                session,
                scratch,
                &how,
                &templates::secret_key(spec, trust, Creation::Derive),
            )?;
            Ok((h, kcv))
        });
        session.destroy_object(scratch)?;
        made
    }

    /// Create a secret key from a clear value that is already in host memory
    /// (component entry: the combined value of custodians' components). The
    /// value is copied into the PKCS#11 template and that copy is zeroized
    /// right after C_CreateObject. Returns the token's check value.
    pub fn import_clear(
        &self,
        spec: &KeySpec,
        trust: Trust,
        value: &[u8],
    ) -> Result<CreatedKey, HsmError> {
        if spec.algorithm.secret_len() != Some(value.len()) {
            return Err(HsmError::invalid(format!(
                "a {} key has {} bytes, not {}",
                spec.algorithm,
                spec.algorithm.secret_len().unwrap_or(0),
                value.len()
            )));
        }
        let session = self.session()?;
        let mut template = templates::secret_key(spec, trust, Creation::Create);
        template.push(Attribute::Value(value.to_vec()));
        let created = session.create_object(&template);
        for a in template.iter_mut() {
            if let Attribute::Value(v) = a {
                v.zeroize();
            }
        }
        let h = created?;
        Ok(CreatedKey {
            object_id: spec.object_id,
            kcv: Self::check_value(&session, h)?,
            public_key: None,
        })
    }

    /// Import a partner's RSA public key as a wrapping key (C_CreateObject).
    /// Under the security officer's login it can be made CKA_TRUSTED, which
    /// is what lets it wrap exportable (wrap-with-trusted) keys: marking a
    /// partner's KEK trusted is an SO act, under dual control in ceremonies.
    pub fn import_rsa_public_key(
        &self,
        spec: &KeySpec,
        trust: Trust,
        modulus: &[u8],
        public_exponent: &[u8],
    ) -> Result<CreatedKey, HsmError> {
        if spec.algorithm.rsa_bits() != Some(modulus.len() as u64 * 8) {
            return Err(HsmError::invalid(format!(
                "a {} modulus has {} bytes, not {}",
                spec.algorithm,
                spec.algorithm.rsa_bits().unwrap_or(0) / 8,
                modulus.len()
            )));
        }
        let session = self.session()?;
        let (mut public, _) = templates::key_pair(spec);
        public.retain(|a| !matches!(a, Attribute::ModulusBits(_)));
        public.push(Attribute::Modulus(modulus.to_vec()));
        public.retain(|a| !matches!(a, Attribute::PublicExponent(_)));
        public.push(Attribute::PublicExponent(public_exponent.to_vec()));
        if trust == Trust::TrustedBySecurityOfficer {
            public.push(Attribute::Trusted(true));
        }
        session.create_object(&public)?;
        Ok(CreatedKey {
            object_id: spec.object_id,
            kcv: None,
            public_key: Some(modulus.to_vec()),
        })
    }

    /// The public half of a key pair: the EC point (uncompressed, SEC1,
    /// without the DER OCTET STRING wrapper SoftHSM adds) or the RSA modulus.
    pub fn public_key(&self, key: &KeyRef) -> Result<Vec<u8>, HsmError> {
        let session = self.session()?;
        let h = self.find(&session, key.object_id, ObjectClass::PUBLIC_KEY)?;
        let what = if key.algorithm.family() == KeyFamily::Ec {
            AttributeType::EcPoint
        } else {
            AttributeType::Modulus
        };
        let v = session
            .get_attributes(h, &[what])?
            .into_iter()
            .find_map(|a| match a {
                Attribute::EcPoint(v) | Attribute::Modulus(v) => Some(v),
                _ => None,
            })
            .ok_or_else(|| HsmError::invalid("the public key has no value"))?;
        // DER OCTET STRING (04 len point) around an uncompressed point (04 X Y).
        Ok(match v.as_slice() {
            [0x04, len, rest @ ..]
                if usize::from(*len) == rest.len() && rest.first() == Some(&0x04) =>
            {
                rest.to_vec()
            }
            _ => v,
        })
    }

    /// Every object this login can see, token and session objects alike
    /// (KM-7: a test counts them around derivations).
    pub fn object_count(&self) -> Result<usize, HsmError> {
        Ok(self.session()?.find_objects(&[])?.len())
    }

    /// Whether the token holds any object with this CKA_ID.
    pub fn exists(&self, id: ObjectId) -> Result<bool, HsmError> {
        let session = self.session()?;
        Ok(!session
            .find_objects(&[Attribute::Id(id.as_bytes().to_vec())])?
            .is_empty())
    }

    /// The token's check value of a secret key.
    pub fn kcv(&self, key: &KeyRef) -> Result<Option<Vec<u8>>, HsmError> {
        let session = self.session()?;
        let h = self.find(&session, key.object_id, primary_class(key.algorithm))?;
        Self::check_value(&session, h)
    }

    /// Destroy every object with this CKA_ID (a secret key, or both halves of
    /// a pair). Destroying nothing is not an error: a crash between the
    /// token and the database write is finished this way at reconciliation.
    pub fn destroy(&self, id: ObjectId) -> Result<usize, HsmError> {
        let session = self.session()?;
        self.forget(id);
        let found = session.find_objects(&[Attribute::Id(id.as_bytes().to_vec())])?;
        for h in &found {
            session.destroy_object(*h)?;
        }
        Ok(found.len())
    }

    /// All token objects visible to this login, for reconciliation.
    pub fn list_objects(&self) -> Result<Vec<TokenObject>, HsmError> {
        let session = self.session()?;
        let mut out = Vec::new();
        for h in session.find_objects(&[Attribute::Token(true)])? {
            let attrs = session.get_attributes(
                h,
                &[
                    AttributeType::Id,
                    AttributeType::Class,
                    AttributeType::Label,
                ],
            )?;
            let mut obj = TokenObject {
                object_id: None,
                class: "other",
                label: String::new(),
            };
            for a in attrs {
                match a {
                    Attribute::Id(v) => obj.object_id = ObjectId::from_bytes(&v),
                    Attribute::Class(c) => obj.class = class_name(c),
                    Attribute::Label(l) => obj.label = String::from_utf8_lossy(&l).into_owned(),
                    _ => {}
                }
            }
            out.push(obj);
        }
        Ok(out)
    }

    /// Read back the attributes of each object with this CKA_ID.
    pub fn attributes(&self, id: ObjectId) -> Result<Vec<KeyAttributes>, HsmError> {
        let session = self.session()?;
        let mut out = Vec::new();
        for h in session.find_objects(&[Attribute::Id(id.as_bytes().to_vec())])? {
            out.push(Self::read_attributes(&session, h)?);
        }
        if out.is_empty() {
            return Err(HsmError::ObjectNotFound(id));
        }
        Ok(out)
    }

    fn read_attributes(session: &Session, h: ObjectHandle) -> Result<KeyAttributes, HsmError> {
        use AttributeType as T;
        let wanted = [
            T::Class,
            T::Token,
            T::Private,
            T::Sensitive,
            T::AlwaysSensitive,
            T::Extractable,
            T::NeverExtractable,
            T::WrapWithTrusted,
            T::Trusted,
            T::Modifiable,
            T::Wrap,
            T::Unwrap,
            T::Encrypt,
            T::Decrypt,
            T::Derive,
            T::Sign,
            T::Verify,
            T::CheckValue,
        ];
        let mut k = KeyAttributes::default();
        // Ask one at a time: a public key has no CKA_SENSITIVE, and one
        // invalid type must not hide the others.
        for t in wanted {
            let Ok(attrs) = session.get_attributes(h, &[t]) else {
                continue;
            };
            for a in attrs {
                match a {
                    Attribute::Class(c) => k.class = class_name(c).to_owned(),
                    Attribute::Token(b) => k.token = b,
                    Attribute::Private(b) => k.private = b,
                    Attribute::Sensitive(b) => k.sensitive = b,
                    Attribute::AlwaysSensitive(b) => k.always_sensitive = b,
                    Attribute::Extractable(b) => k.extractable = b,
                    Attribute::NeverExtractable(b) => k.never_extractable = b,
                    Attribute::WrapWithTrusted(b) => k.wrap_with_trusted = b,
                    Attribute::Trusted(b) => k.trusted = b,
                    Attribute::Modifiable(b) => k.modifiable = b,
                    Attribute::Wrap(b) => k.wrap = b,
                    Attribute::Unwrap(b) => k.unwrap = b,
                    Attribute::Encrypt(b) => k.encrypt = b,
                    Attribute::Decrypt(b) => k.decrypt = b,
                    Attribute::Derive(b) => k.derive = b,
                    Attribute::Sign(b) => k.sign = b,
                    Attribute::Verify(b) => k.verify = b,
                    Attribute::CheckValue(v) if !v.is_empty() => k.check_value = Some(v),
                    _ => {}
                }
            }
        }
        Ok(k)
    }
}
