//! Card and Security Domain keys derived inside the HSM and handed out only
//! wrapped under a transport KEK (KM-2, KM-7: nothing derived is kept).

use super::audited::{no_mentions, Act};
use super::{Actor, KeyService, ServiceError, SessionRefusal};
use crate::derivation::{
    emv_cps11_data, emv_option_a_data, kdf3_messages, visa2_data, Kdd, Pan, SdKeyKind,
};
use crate::hsm::{DeriveAlg, KeySpec, WrapAlg};
use crate::model::{Algorithm, KeyFamily, KeyName, KeyUsage, ObjectId, Tenant};
use crate::store::{BindOutcome, SdBinding};

/// One derived key, wrapped.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WrappedKey {
    pub kind: String,
    /// Upper-case hex of the key wrapped under the transport KEK.
    pub wrapped: String,
    /// The derived key's check value (3 bytes, E(zero block)).
    pub kcv: Option<String>,
}

/// How an SD's static keys come from its KMC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SdDiversification {
    /// EMV CPS 1.1, TDES KMC.
    EmvCps11,
    /// VISA2, TDES KMC (GlobalPlatformPro's layout).
    Visa2,
    /// GlobalPlatform SCP03 KDF ("KDF3"), AES KMC.
    Kdf3,
}

impl std::str::FromStr for SdDiversification {
    type Err = crate::model::ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "emv-cps11" => Ok(SdDiversification::EmvCps11),
            "visa2" => Ok(SdDiversification::Visa2),
            "kdf3" => Ok(SdDiversification::Kdf3),
            _ => Err(crate::model::ParseError::Unknown {
                what: "diversification",
                value: s.chars().take(32).collect(),
                expected: "emv-cps11, visa2, kdf3",
            }),
        }
    }
}

fn session_spec(alg: Algorithm, usage: KeyUsage) -> KeySpec {
    KeySpec {
        algorithm: alg,
        usage,
        // Derived to leave the token wrapped: CKA_EXTRACTABLE with
        // CKA_WRAP_WITH_TRUSTED, so only a trusted transport KEK can take it.
        exportable: true,
        object_id: ObjectId::random(),
        label: "derived".into(),
        persistent: false,
    }
}

impl KeyService {
    /// The tenant's active transport KEK and its wrapping algorithm (card
    /// keys and secure-channel sessions both leave the token under it).
    pub(crate) async fn transport_kek(
        &self,
        tenant: &Tenant,
        kek: &KeyName,
    ) -> Result<(crate::hsm::KeyRef, WrapAlg), ServiceError> {
        let (rec, _, r) = self.usable_for_protect(tenant, kek).await?;
        if rec.usage != KeyUsage::TransportKek {
            return Err(ServiceError::Invalid(format!(
                "{tenant}/{kek} is a {} key, not a transport-kek",
                rec.usage
            )));
        }
        Ok((r, WrapAlg::default_for(rec.algorithm)))
    }

    /// EMV Option A ICC master key for a PAN and PSN from an issuer master
    /// key, wrapped under the tenant's transport KEK.
    async fn emv_card_key_now(
        &self,
        tenant: &Tenant,
        imk: &KeyName,
        pan: &Pan,
        psn: u8,
        kek: &KeyName,
    ) -> Result<WrappedKey, ServiceError> {
        let (rec, _, base) = self.usable_for_protect(tenant, imk).await?;
        if !matches!(
            rec.usage,
            KeyUsage::ImkAc | KeyUsage::ImkSmi | KeyUsage::ImkSmc
        ) {
            return Err(ServiceError::Invalid(format!(
                "{tenant}/{imk} is a {} key, not an issuer master key",
                rec.usage
            )));
        }
        let (kek, alg) = self.transport_kek(tenant, kek).await?;
        let how = DeriveAlg::TdesEcb(emv_option_a_data(pan, psn).to_vec());
        let spec = session_spec(Algorithm::Tdes2, KeyUsage::Data);
        let (wrapped, kcv) = self
            .on_hsm(move |h| h.derive_and_wrap(&base, &how, &spec, &kek, alg))
            .await?;
        Ok(WrappedKey {
            kind: rec.usage.as_str().replace("imk-", "icc-mk-"),
            wrapped: hex::encode_upper(wrapped),
            kcv: kcv.map(hex::encode_upper),
        })
    }

    /// A Security Domain's static ENC, MAC and DEK keys diversified from the
    /// KMC for one card (its KDD), each wrapped under the transport KEK.
    async fn sd_static_keys_now(
        &self,
        tenant: &Tenant,
        kmc: &KeyName,
        method: SdDiversification,
        kdd: &Kdd,
        kek: &KeyName,
    ) -> Result<Vec<WrappedKey>, ServiceError> {
        let (rec, _, base) = self.usable_for_protect(tenant, kmc).await?;
        if rec.usage != KeyUsage::SdKmc {
            return Err(ServiceError::Invalid(format!(
                "{tenant}/{kmc} is a {} key, not an sd-kmc",
                rec.usage
            )));
        }
        let fam = rec.algorithm.family();
        match (method, fam) {
            (SdDiversification::EmvCps11 | SdDiversification::Visa2, KeyFamily::Tdes) => {}
            (SdDiversification::Kdf3, KeyFamily::Aes) => {}
            _ => {
                return Err(ServiceError::Invalid(format!(
                    "{method:?} diversification does not apply to a {} KMC",
                    rec.algorithm
                )))
            }
        }
        let (kek, alg) = self.transport_kek(tenant, kek).await?;
        let mut out = Vec::with_capacity(3);
        for kind in SdKeyKind::ALL {
            let usage = match kind {
                SdKeyKind::Enc => KeyUsage::SdStaticEnc,
                SdKeyKind::Mac => KeyUsage::SdStaticMac,
                SdKeyKind::Dek => KeyUsage::SdStaticDek,
            };
            let (wrapped, kcv) = match method {
                SdDiversification::EmvCps11 | SdDiversification::Visa2 => {
                    let data = match method {
                        SdDiversification::Visa2 => visa2_data(kdd, kind),
                        _ => emv_cps11_data(kdd, kind),
                    };
                    let how = DeriveAlg::TdesEcb(data.to_vec());
                    let spec = session_spec(Algorithm::Tdes2, usage);
                    self.on_hsm(move |h| h.derive_and_wrap(&base, &how, &spec, &kek, alg))
                        .await?
                }
                SdDiversification::Kdf3 => {
                    // As long as the KMC, as the secure-channel sessions
                    // derive them (and GlobalPlatformPro does): one CMAC
                    // block per started 16 bytes.
                    let len = match rec.algorithm {
                        Algorithm::Aes192 => 24,
                        Algorithm::Aes256 => 32,
                        _ => 16,
                    };
                    let msgs = kdf3_messages(kdd, kind, len);
                    let spec = session_spec(rec.algorithm, usage);
                    let (created, wrapped) = self
                        .on_hsm(move |h| {
                            h.derive_cmac_blocks(&base, &msgs, &spec, Some((&kek, alg)))
                        })
                        .await?;
                    (wrapped.unwrap_or_default(), created.kcv)
                }
            };
            out.push(WrappedKey {
                kind: format!("{kind:?}").to_lowercase(),
                wrapped: hex::encode_upper(wrapped),
                kcv: kcv.map(hex::encode_upper),
            });
        }
        Ok(out)
    }

    /// EMV Option A ICC master key for a PAN and PSN from an issuer master
    /// key, wrapped under the tenant's transport KEK. The trail holds the
    /// PAN masked, with a keyed hash (HMAC in the HSM) to follow one card.
    pub async fn emv_card_key(
        &self,
        actor: &Actor,
        tenant: &Tenant,
        imk: &KeyName,
        pan: &Pan,
        psn: u8,
        kek: &KeyName,
    ) -> Result<WrappedKey, ServiceError> {
        let mut act = Act::change(actor, "derive.emv-card")
            .key(tenant, imk, None)
            .key(tenant, kek, None)
            .detail("pan", pan.masked())
            .detail("psn", format!("{psn:02}"));
        if let Ok(h) = self.audit.pan_hash(pan.digits()).await {
            act = act.detail("pan_hmac", h);
        }
        self.audited(
            act,
            self.emv_card_key_now(tenant, imk, pan, psn, kek),
            no_mentions,
        )
        .await
    }

    /// A Security Domain's static keys for one card, wrapped.
    pub async fn sd_static_keys(
        &self,
        actor: &Actor,
        tenant: &Tenant,
        kmc: &KeyName,
        method: SdDiversification,
        kdd: &Kdd,
        kek: &KeyName,
    ) -> Result<Vec<WrappedKey>, ServiceError> {
        let act = Act::change(actor, "derive.sd-keys")
            .key(tenant, kmc, None)
            .key(tenant, kek, None)
            .detail("method", format!("{method:?}").to_lowercase())
            .detail("kdd", kdd.to_hex());
        self.audited(
            act,
            self.sd_static_keys_now(tenant, kmc, method, kdd, kek),
            no_mentions,
        )
        .await
    }
}

/// A Secure Element's id (CPLC or SEID) or a Security Domain's AID: hex of
/// a bounded length, upper-cased so one SD has one spelling.
fn sd_hex(what: &'static str, s: &str, min: usize, max: usize) -> Result<String, ServiceError> {
    let ok = s.len() % 2 == 0
        && (min * 2..=max * 2).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_hexdigit());
    if ok {
        Ok(s.to_ascii_uppercase())
    } else {
        Err(ServiceError::Invalid(format!(
            "{what} must be {min} to {max} bytes of hex"
        )))
    }
}

/// Which Security Domain on which Secure Element (TSM-DATA-1's "SD").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdRef {
    se_id: String,
    sd_aid: String,
}

impl SdRef {
    pub fn parse(se_id: &str, sd_aid: &str) -> Result<SdRef, ServiceError> {
        Ok(SdRef {
            se_id: sd_hex("se_id", se_id, 1, 32)?,
            sd_aid: sd_hex("sd_aid", sd_aid, 5, 16)?,
        })
    }
    pub fn se_id(&self) -> &str {
        &self.se_id
    }
    pub fn sd_aid(&self) -> &str {
        &self.sd_aid
    }
}

/// EMV card keys for one card, to go into one Security Domain.
#[derive(Debug, Clone)]
pub struct EmvCardKeysRequest {
    pub tenant: Tenant,
    /// Prefix of the issuer master keys `<issuer_keys>-ac`, `-smi`, `-smc`.
    pub issuer_keys: KeyName,
    pub pan: Pan,
    pub psn: u8,
    pub sd: SdRef,
    pub transport_kek: KeyName,
}

/// Whether the request bound the SD or found it bound to this card.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SdBindingState {
    New,
    Existing,
}

impl SdBindingState {
    pub fn as_str(self) -> &'static str {
        match self {
            SdBindingState::New => "new",
            SdBindingState::Existing => "existing",
        }
    }
}

/// The ICC master keys of one card, wrapped.
#[derive(Debug, Clone)]
pub struct EmvCardKeys {
    pub ac: WrappedKey,
    pub smi: WrappedKey,
    pub smc: WrappedKey,
    pub binding: SdBindingState,
    pub wrap: WrapAlg,
}

/// The issuer master keys a card-key request names: the one place that
/// knows the `<issuer_keys>-ac/-smi/-smc` convention.
pub(crate) fn issuer_key_names(prefix: &KeyName) -> Result<Vec<(KeyName, KeyUsage)>, ServiceError> {
    [
        ("ac", KeyUsage::ImkAc),
        ("smi", KeyUsage::ImkSmi),
        ("smc", KeyUsage::ImkSmc),
    ]
    .into_iter()
    .map(|(suffix, usage)| Ok((KeyName::parse(&format!("{prefix}-{suffix}"))?, usage)))
    .collect()
}

impl KeyService {
    /// The three IMKs of a request, checked for usage and family.
    async fn issuer_master_keys(
        &self,
        tenant: &Tenant,
        prefix: &KeyName,
    ) -> Result<Vec<(KeyUsage, crate::hsm::KeyRef)>, ServiceError> {
        let mut out = Vec::with_capacity(3);
        for (name, usage) in issuer_key_names(prefix)? {
            let (rec, _, r) = self.usable_for_protect(tenant, &name).await?;
            if rec.usage != usage || rec.algorithm.family() != KeyFamily::Tdes {
                return Err(ServiceError::Invalid(format!(
                    "{tenant}/{name} is a {} {} key; EMV Option A needs a TDES {usage}",
                    rec.algorithm, rec.usage
                )));
            }
            out.push((usage, r));
        }
        Ok(out)
    }

    async fn emv_card_keys_now(
        &self,
        actor: &Actor,
        req: &EmvCardKeysRequest,
        pan_hmac: Result<String, ServiceError>,
    ) -> Result<EmvCardKeys, ServiceError> {
        let imks = self
            .issuer_master_keys(&req.tenant, &req.issuer_keys)
            .await?;
        let (kek, alg) = self.transport_kek(&req.tenant, &req.transport_kek).await?;
        // TSM-DATA-1: one SD, one card. Bound only once every key checked
        // out, and released again if the derivation fails, so a refused or
        // failed request leaves the SD as it was.
        let binding = SdBinding {
            tenant: req.tenant.to_string(),
            se_id: req.sd.se_id.clone(),
            sd_aid: req.sd.sd_aid.clone(),
            pan_hmac: pan_hmac?,
            pan_masked: req.pan.masked(),
            psn: req.psn,
            bound_at: time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .map_err(|e| ServiceError::Internal(e.to_string()))?,
            bound_by: actor.as_str().to_owned(),
        };
        let state = match self.store.bind_sd(&binding).await? {
            BindOutcome::New => SdBindingState::New,
            BindOutcome::Existing => SdBindingState::Existing,
            BindOutcome::Other(b) => {
                return Err(ServiceError::Session(SessionRefusal::SdBound {
                    se_id: b.se_id,
                    sd_aid: b.sd_aid,
                    bound_to: format!("{} PSN {:02}", b.pan_masked, b.psn),
                }))
            }
        };
        let data = emv_option_a_data(&req.pan, req.psn).to_vec();
        let mut derived = Vec::with_capacity(3);
        for (usage, base) in imks {
            let how = DeriveAlg::TdesEcb(data.clone());
            let spec = session_spec(Algorithm::Tdes2, KeyUsage::Data);
            match self
                .on_hsm(move |h| h.derive_and_wrap(&base, &how, &spec, &kek, alg))
                .await
            {
                Ok((wrapped, kcv)) => derived.push(WrappedKey {
                    kind: usage.as_str().replace("imk-", "icc-mk-"),
                    wrapped: hex::encode_upper(wrapped),
                    kcv: kcv.map(hex::encode_upper),
                }),
                Err(e) => {
                    if state == SdBindingState::New {
                        if let Err(r) = self
                            .store
                            .release_sd(&binding.tenant, &binding.se_id, &binding.sd_aid)
                            .await
                        {
                            tracing::error!(
                                "could not undo the SD binding after a failed derivation: {r}"
                            );
                        }
                    }
                    return Err(e);
                }
            }
        }
        let mut it = derived.into_iter();
        match (it.next(), it.next(), it.next()) {
            (Some(ac), Some(smi), Some(smc)) => Ok(EmvCardKeys {
                ac,
                smi,
                smc,
                binding: state,
                wrap: alg,
            }),
            _ => Err(ServiceError::Internal(
                "three ICC master keys expected".into(),
            )),
        }
    }

    /// EMV ICC master keys (AC, SMI, SMC) for one card, derived by Option A
    /// from the issuer's master keys and wrapped under the transport KEK,
    /// for one Security Domain: an SD bound to another card is refused
    /// (TSM-DATA-1) until a dual-controlled release. The trail holds the PAN
    /// masked with a keyed hash, and the SE and SD.
    pub async fn emv_card_keys(
        &self,
        actor: &Actor,
        req: EmvCardKeysRequest,
    ) -> Result<EmvCardKeys, ServiceError> {
        let pan_hmac = self
            .audit
            .pan_hash(req.pan.digits())
            .await
            .map_err(ServiceError::Audit);
        let mut act = Act::change(actor, "derive.emv-card-keys")
            .tenant(&req.tenant)
            .key(&req.tenant, &req.transport_kek, None)
            .detail("issuer_keys", req.issuer_keys.as_str())
            .detail("pan", req.pan.masked())
            .detail("psn", format!("{:02}", req.psn))
            .detail("se_id", req.sd.se_id.clone())
            .detail("sd_aid", req.sd.sd_aid.clone());
        if let Ok(h) = &pan_hmac {
            act = act.detail("pan_hmac", h.clone());
        }
        self.audited(
            act,
            self.emv_card_keys_now(actor, &req, pan_hmac),
            no_mentions,
        )
        .await
    }
}

impl KeyService {
    /// The tenant's SD bindings (masked PANs only), for the people who
    /// decide on re-issues.
    pub async fn sd_bindings(
        &self,
        actor: &Actor,
        tenant: &Tenant,
    ) -> Result<Vec<SdBinding>, ServiceError> {
        let act = Act::read(actor, "sd.list").tenant(tenant);
        self.audited(
            act,
            async { Ok(self.store.sd_bindings(tenant.as_str()).await?) },
            no_mentions,
        )
        .await
    }
}
