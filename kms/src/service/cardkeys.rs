//! Card and Security Domain keys derived inside the HSM and handed out only
//! wrapped under a transport KEK (KM-2, KM-7: nothing derived is kept).

use super::audited::{no_mentions, Act};
use super::{Actor, KeyService, ServiceError};
use crate::derivation::{emv_cps11_data, emv_option_a_data, kdf3_message, Kdd, Pan, SdKeyKind};
use crate::hsm::{DeriveAlg, KeySpec, WrapAlg};
use crate::model::{Algorithm, KeyFamily, KeyName, KeyUsage, ObjectId, Tenant};

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
    /// GlobalPlatform SCP03 KDF ("KDF3"), AES KMC.
    Kdf3,
}

impl std::str::FromStr for SdDiversification {
    type Err = crate::model::ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "emv-cps11" => Ok(SdDiversification::EmvCps11),
            "kdf3" => Ok(SdDiversification::Kdf3),
            _ => Err(crate::model::ParseError::Unknown {
                what: "diversification",
                value: s.chars().take(32).collect(),
                expected: "emv-cps11, kdf3",
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
            (SdDiversification::EmvCps11, KeyFamily::Tdes) => {}
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
                SdDiversification::EmvCps11 => {
                    let how = DeriveAlg::TdesEcb(emv_cps11_data(kdd, kind).to_vec());
                    let spec = session_spec(Algorithm::Tdes2, usage);
                    self.on_hsm(move |h| h.derive_and_wrap(&base, &how, &spec, &kek, alg))
                        .await?
                }
                SdDiversification::Kdf3 => {
                    let msg = kdf3_message(kdd, kind);
                    let spec = session_spec(Algorithm::Aes128, usage);
                    let (created, wrapped) = self
                        .on_hsm(move |h| {
                            h.derive_cmac_blocks(&base, &[msg], &spec, Some((&kek, alg)))
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
