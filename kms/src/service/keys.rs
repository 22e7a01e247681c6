//! Key lifecycle use cases: create, import from components, rotate, change
//! state, destroy, export.

use super::audited::{mention, no_mentions, Act};
use super::{Actor, KeyService, ServiceError};
use crate::crypto::{combine, verify_component_kcv, verify_key_kcv, Component, Kcv, KcvMethod};
use crate::hsm::{HsmError, KeyRef, KeySpec, Role, Trust, WrapAlg};
use crate::model::{Algorithm, KeyName, KeyState, KeyUsage, ObjectId, Tenant, Transition};
use crate::store::{KeyRecord, NewKey, NewVersion, Presence, VersionRecord};
use time::{Duration, OffsetDateTime};

/// A request to generate a new key in the HSM.
#[derive(Debug, Clone)]
pub struct CreateKey {
    pub tenant: Tenant,
    pub name: KeyName,
    pub algorithm: Algorithm,
    pub usage: KeyUsage,
    pub exportable: bool,
    /// Start active (the usual case) or in pre-activation.
    pub activate: bool,
    /// A KEK created CKA_TRUSTED by the security officer's login.
    pub trusted: bool,
}

/// A request to build a key from custodians' XOR components.
#[derive(Debug)]
pub struct ImportComponents {
    pub key: CreateKey,
    /// Each component with the check value on its custodian's form.
    pub components: Vec<(Component, Option<Kcv>)>,
    /// The check value of the whole key, from the sender.
    pub expected_kcv: Kcv,
}

/// A key wrapped for transport.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExportedKey {
    pub tenant: Tenant,
    pub name: KeyName,
    pub version: u32,
    pub kcv: Option<String>,
    pub kek: KeyName,
    pub kek_version: u32,
    pub wrap_algorithm: WrapAlg,
    /// Upper-case hex of the wrapped key.
    pub wrapped: String,
}

/// A key made from components, with every check value custodians may be
/// asked to read aloud: the token's (E(zero block)), and for AES also
/// ANSI X9.24-1:2017 (AES-CMAC, 5 bytes) and GlobalPlatform (E(16 x 01)).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImportedKey {
    #[serde(flatten)]
    pub key: KeyRecord,
    pub check_values: std::collections::BTreeMap<&'static str, String>,
}

/// What `key show` prints: the record and its history.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyView {
    #[serde(flatten)]
    pub key: KeyRecord,
    pub events: Vec<crate::store::EventRecord>,
}

/// Invariant 3: marking a KEK trusted is never one person's act.
fn refuse_trusted(req: &CreateKey) -> Result<(), ServiceError> {
    if req.trusted {
        return Err(ServiceError::Refused(
            "a trusted KEK needs dual control: request it (kms key create --trusted makes the request)"
                .into(),
        ));
    }
    Ok(())
}

fn hex_kcv(kcv: &Option<Vec<u8>>) -> Option<String> {
    kcv.as_ref().map(hex::encode_upper)
}

impl KeyService {
    fn check_request(&self, req: &CreateKey) -> Result<(), ServiceError> {
        if !req.usage.allows(req.algorithm) {
            return Err(ServiceError::Invalid(format!(
                "a {} key cannot be {}",
                req.usage, req.algorithm
            )));
        }
        if req.exportable && !self.policy.may_export(req.usage) {
            return Err(ServiceError::Refused(format!(
                "policy does not allow exportable {} keys",
                req.usage
            )));
        }
        if req.trusted {
            if !req.usage.is_wrapping() || !req.algorithm.is_secret() {
                return Err(ServiceError::Invalid(
                    "only secret KEKs (kek, transport-kek, backup-kek) can be trusted".into(),
                ));
            }
            if self.hsm.role() != Role::SecurityOfficer {
                return Err(ServiceError::Refused(
                    "a trusted KEK can only be created under the security officer's login".into(),
                ));
            }
        } else if self.hsm.role() == Role::SecurityOfficer {
            return Err(ServiceError::Refused(
                "the security officer's login only creates trusted KEKs".into(),
            ));
        }
        Ok(())
    }

    fn new_version(&self, usage: KeyUsage, activate: bool) -> NewVersion {
        let now = OffsetDateTime::now_utc();
        NewVersion {
            object_id: ObjectId::random(),
            state: if activate {
                KeyState::Active
            } else {
                KeyState::PreActivation
            },
            activate_at: activate.then_some(now),
            expire_at: Some(now + Duration::days(i64::from(self.policy.cryptoperiod_days(usage)))),
        }
    }

    /// `KeySpec::exportable` is CKA_EXTRACTABLE: true for exportable keys
    /// and for keys the policy backs up (KM-2, `backup::extractable`).
    fn spec(&self, record_like: &CreateKey, object_id: ObjectId) -> KeySpec {
        KeySpec {
            algorithm: record_like.algorithm,
            usage: record_like.usage,
            exportable: super::backup::extractable(
                &self.policy,
                record_like.usage,
                record_like.algorithm,
                record_like.exportable,
                record_like.trusted,
            ),
            object_id,
            label: format!("{}/{}", record_like.tenant, record_like.name),
            persistent: true,
        }
    }

    /// Record `pending`, create on the token with `make`, confirm. On an HSM
    /// failure the pending row is removed, so bad input changes nothing.
    async fn create_with<F>(
        &self,
        actor: &Actor,
        req: &CreateKey,
        action: &str,
        make: F,
    ) -> Result<KeyRecord, ServiceError>
    where
        F: FnOnce(&crate::hsm::Hsm, KeySpec, Trust) -> Result<Option<Vec<u8>>, HsmError>
            + Send
            + 'static,
    {
        self.check_request(req)?;
        let first = self.new_version(req.usage, req.activate);
        let object_id = first.object_id;
        let new = NewKey {
            tenant: req.tenant.clone(),
            name: req.name.clone(),
            algorithm: req.algorithm,
            usage: req.usage,
            exportable: req.exportable,
        };
        let rec = self
            .store
            .create_key_as(&new, &first, actor.as_str(), action)
            .await?;
        let spec = self.spec(req, object_id);
        let trust = if req.trusted {
            Trust::TrustedBySecurityOfficer
        } else {
            Trust::Normal
        };
        match self.on_hsm(move |h| make(h, spec, trust)).await {
            Ok(kcv) => {
                self.store
                    .confirm_version(&rec.id, 1, &hex_kcv(&kcv).unwrap_or_default())
                    .await?;
                if req.trusted {
                    self.store
                        .set_trusted(
                            &rec.id,
                            1,
                            true,
                            actor.as_str(),
                            Some("created trusted by the security officer"),
                        )
                        .await?;
                }
                self.get(&req.tenant, &req.name).await
            }
            Err(e) => {
                self.store.abandon_pending(&rec.id, 1).await?;
                Err(e)
            }
        }
    }

    /// Generate a key inside the HSM (KM-1). A trusted KEK is not created
    /// here: it needs dual control (`Operation::TrustedKek`).
    pub async fn create(&self, actor: &Actor, req: CreateKey) -> Result<KeyRecord, ServiceError> {
        let act = Act::change(actor, "key.create")
            .key(&req.tenant, &req.name, None)
            .detail("algorithm", req.algorithm.as_str())
            .detail("usage", req.usage.as_str())
            .detail("exportable", req.exportable.to_string());
        self.audited(
            act,
            async {
                refuse_trusted(&req)?;
                self.create_now(actor, req.clone()).await
            },
            mention,
        )
        .await
    }

    pub(crate) async fn create_now(
        &self,
        actor: &Actor,
        req: CreateKey,
    ) -> Result<KeyRecord, ServiceError> {
        self.create_with(actor, &req, "create", |h, spec, trust| {
            Ok(h.generate(&spec, trust)?.kcv)
        })
        .await
    }

    /// Build a key from 2 or 3 XOR components. Each component is checked
    /// against its own check value, the combined key against the sender's,
    /// before the token sees anything; the token's own check value is then
    /// compared again. The clear value lives in zeroizing buffers only.
    pub async fn import_components(
        &self,
        actor: &Actor,
        req: ImportComponents,
    ) -> Result<ImportedKey, ServiceError> {
        let act = Act::change(actor, "key.import")
            .key(&req.key.tenant, &req.key.name, None)
            .detail("algorithm", req.key.algorithm.as_str())
            .detail("usage", req.key.usage.as_str())
            .detail("components", req.components.len().to_string())
            .detail("expected_kcv", req.expected_kcv.to_string());
        self.audited(
            act,
            async {
                refuse_trusted(&req.key)?;
                self.import_components_now(actor, req).await
            },
            |k: &ImportedKey| mention(&k.key),
        )
        .await
    }

    pub(crate) async fn import_components_now(
        &self,
        actor: &Actor,
        req: ImportComponents,
    ) -> Result<ImportedKey, ServiceError> {
        let alg = req.key.algorithm;
        if !matches!(
            alg.family(),
            crate::model::KeyFamily::Aes | crate::model::KeyFamily::Tdes
        ) {
            return Err(ServiceError::Invalid(
                "only AES and TDES keys are entered as components".into(),
            ));
        }
        let mut parts = Vec::with_capacity(req.components.len());
        for (i, (c, kcv)) in req.components.into_iter().enumerate() {
            if let Some(kcv) = kcv {
                verify_component_kcv(&c, alg, &kcv)
                    .map_err(|e| ServiceError::Invalid(format!("component {}: {e}", i + 1)))?;
            }
            parts.push(c);
        }
        let key = combine(&parts, alg)?;
        drop(parts);
        verify_key_kcv(&key, alg, &req.expected_kcv)?;
        // What the token reports is the zero-block check value; compare it too,
        // so a template or token mistake cannot slip through.
        let method = match alg.family() {
            crate::model::KeyFamily::Tdes => KcvMethod::Tdes,
            _ => KcvMethod::AesEcb,
        };
        let token_expect = key
            .kcv(method)
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        let token_expect = token_expect.as_bytes()[..3].to_vec();
        // Computed now, while the value is in host memory anyway.
        let mut check_values = std::collections::BTreeMap::new();
        let methods: &[KcvMethod] = match alg.family() {
            crate::model::KeyFamily::Aes => {
                &[KcvMethod::AesEcb, KcvMethod::AesCmac, KcvMethod::AesGp]
            }
            _ => &[KcvMethod::Tdes],
        };
        for m in methods {
            let k = key
                .kcv(*m)
                .map_err(|e| ServiceError::Internal(e.to_string()))?;
            check_values.insert(m.as_str(), k.to_string());
        }
        let summary = check_values
            .iter()
            .map(|(m, k)| format!("{m}={k}"))
            .collect::<Vec<_>>()
            .join(" ");
        let rec = self
            .create_with(actor, &req.key, "import", move |h, spec, trust| {
                let created = h.import_clear(&spec, trust, key.as_bytes())?;
                drop(key);
                if created.kcv.as_deref() != Some(token_expect.as_slice()) {
                    // Undo: the object must not outlive the failed check.
                    h.destroy(spec.object_id)?;
                    return Err(HsmError::Invalid(
                        "the token's check value differs from the components' check value".into(),
                    ));
                }
                Ok(created.kcv)
            })
            .await?;
        self.store
            .record_event(
                &rec.id,
                Some(1),
                actor.as_str(),
                "check-values",
                Some(&summary),
            )
            .await?;
        Ok(ImportedKey {
            key: rec,
            check_values,
        })
    }

    pub async fn get(&self, tenant: &Tenant, name: &KeyName) -> Result<KeyRecord, ServiceError> {
        self.store
            .find_key(tenant, name)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("{tenant}/{name}")))
    }

    pub async fn show(
        &self,
        actor: &Actor,
        tenant: &Tenant,
        name: &KeyName,
    ) -> Result<KeyView, ServiceError> {
        let act = Act::read(actor, "key.show").key(tenant, name, None);
        self.audited(
            act,
            async {
                let key = self.get(tenant, name).await?;
                let events = self.store.events(&key.id).await?;
                Ok(KeyView { key, events })
            },
            |v: &KeyView| mention(&v.key),
        )
        .await
    }

    pub async fn list(
        &self,
        actor: &Actor,
        tenant: Option<&Tenant>,
    ) -> Result<Vec<KeyRecord>, ServiceError> {
        let mut act = Act::read(actor, "key.list");
        if let Some(t) = tenant {
            act = act.tenant(t);
        }
        self.audited(
            act,
            async { Ok(self.store.list_keys(tenant).await?) },
            |keys: &Vec<KeyRecord>| -> Vec<crate::audit::KeyMention> {
                keys.iter().flat_map(mention).collect()
            },
        )
        .await
    }

    /// The attributes of a key version's objects, read back from the token.
    pub async fn attributes(
        &self,
        actor: &Actor,
        tenant: &Tenant,
        name: &KeyName,
        version: Option<u32>,
    ) -> Result<Vec<crate::hsm::KeyAttributes>, ServiceError> {
        let act = Act::read(actor, "key.attributes").key(tenant, name, version);
        self.audited(
            act,
            async {
                let rec = self.get(tenant, name).await?;
                let v = Self::pick_version(&rec, version)?;
                let r = Self::key_ref(&rec, &v)?;
                self.on_hsm(move |h| h.attributes(r.object_id)).await
            },
            no_mentions,
        )
        .await
    }

    fn pick_version(rec: &KeyRecord, version: Option<u32>) -> Result<VersionRecord, ServiceError> {
        let v = match version {
            Some(n) => rec.version(n),
            None => rec.current(),
        };
        if v.is_none()
            && version.is_none()
            && !rec.versions.is_empty()
            && rec
                .versions
                .iter()
                .all(|v| v.presence == Presence::Tombstone)
        {
            return Err(ServiceError::Refused(format!(
                "{}/{} is destroyed (every version)",
                rec.tenant, rec.name
            )));
        }
        v.cloned().ok_or_else(|| {
            ServiceError::NotFound(format!(
                "{}/{} version {}",
                rec.tenant,
                rec.name,
                version
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "(current)".into())
            ))
        })
    }

    /// The HSM reference of a usable version. A destroyed or unconfirmed
    /// version has none: the type system carries "a destroyed key has no
    /// handle" from here down.
    pub fn key_ref(rec: &KeyRecord, v: &VersionRecord) -> Result<KeyRef, ServiceError> {
        match v.presence {
            Presence::Present => Ok(KeyRef {
                object_id: v.object_id,
                algorithm: rec.algorithm,
            }),
            Presence::Tombstone => Err(ServiceError::Refused(format!(
                "{}/{} version {} is destroyed",
                rec.tenant, rec.name, v.version
            ))),
            Presence::Pending | Presence::Destroying => Err(ServiceError::Inconsistent(format!(
                "{}/{} version {} is {} (run `kms reconcile`)",
                rec.tenant,
                rec.name,
                v.version,
                v.presence.as_str()
            ))),
        }
    }

    /// A version usable for protecting new data (wrap, derive, sign):
    /// active and inside its cryptoperiod.
    pub async fn usable_for_protect(
        &self,
        tenant: &Tenant,
        name: &KeyName,
    ) -> Result<(KeyRecord, VersionRecord, KeyRef), ServiceError> {
        let rec = self.get(tenant, name).await?;
        let v = Self::pick_version(&rec, None)?;
        let r = Self::key_ref(&rec, &v)?;
        if !v.state.may_protect() {
            return Err(ServiceError::Refused(format!(
                "{tenant}/{name} version {} is {}",
                v.version, v.state
            )));
        }
        if let Some(exp) = v.expire_at {
            if exp <= OffsetDateTime::now_utc() {
                return Err(ServiceError::Refused(format!(
                    "{tenant}/{name} version {} passed its cryptoperiod",
                    v.version
                )));
            }
        }
        Ok((rec, v, r))
    }

    /// Make a new version (same algorithm and usage), generated in the HSM;
    /// the previous active version is deactivated and keeps only the
    /// "process" uses (unwrap, verify, decrypt) of SP 800-57.
    pub async fn rotate(
        &self,
        actor: &Actor,
        tenant: &Tenant,
        name: &KeyName,
        reason: Option<&str>,
    ) -> Result<KeyRecord, ServiceError> {
        let mut act = Act::change(actor, "key.rotate").key(tenant, name, None);
        if let Some(r) = reason {
            act = act.detail("reason", r);
        }
        self.audited(act, self.rotate_now(actor, tenant, name, reason), mention)
            .await
    }

    async fn rotate_now(
        &self,
        actor: &Actor,
        tenant: &Tenant,
        name: &KeyName,
        reason: Option<&str>,
    ) -> Result<KeyRecord, ServiceError> {
        let rec = self.get(tenant, name).await?;
        let old = Self::pick_version(&rec, None)?;
        if old.trusted {
            return Err(ServiceError::Refused(
                "a trusted KEK is rotated by the security officer's KEK-trust ceremony".into(),
            ));
        }
        let req = CreateKey {
            tenant: rec.tenant.clone(),
            name: rec.name.clone(),
            algorithm: rec.algorithm,
            usage: rec.usage,
            exportable: rec.exportable,
            activate: true,
            trusted: false,
        };
        self.check_request(&req)?;
        let nv = self.new_version(rec.usage, true);
        let object_id = nv.object_id;
        let added = self
            .store
            .add_version(&rec.id, &nv, actor.as_str(), "rotate")
            .await?;
        let spec = self.spec(&req, object_id);
        match self
            .on_hsm(move |h| Ok(h.generate(&spec, Trust::Normal)?.kcv))
            .await
        {
            Ok(kcv) => {
                self.store
                    .confirm_version(&rec.id, added.version, &hex_kcv(&kcv).unwrap_or_default())
                    .await?;
            }
            Err(e) => {
                self.store.abandon_pending(&rec.id, added.version).await?;
                return Err(e);
            }
        }
        if old.state == KeyState::Active {
            self.store
                .change_state(
                    &rec.id,
                    old.version,
                    KeyState::Active,
                    KeyState::Deactivated,
                    actor.as_str(),
                    "deactivate",
                    Some(reason.unwrap_or("rotated")),
                )
                .await?;
        }
        self.get(tenant, name).await
    }

    /// Change a version's state along SP 800-57's legal transitions.
    /// Marking compromised goes through dual control when policy says so.
    pub async fn transition(
        &self,
        actor: &Actor,
        tenant: &Tenant,
        name: &KeyName,
        version: Option<u32>,
        t: Transition,
        reason: Option<&str>,
    ) -> Result<KeyRecord, ServiceError> {
        let mut act = Act::change(actor, "key.state")
            .key(tenant, name, version)
            .detail("transition", format!("{t:?}").to_lowercase());
        if let Some(r) = reason {
            act = act.detail("reason", r);
        }
        self.audited(
            act,
            self.transition_checked(actor, tenant, name, version, t, reason),
            mention,
        )
        .await
    }

    async fn transition_checked(
        &self,
        actor: &Actor,
        tenant: &Tenant,
        name: &KeyName,
        version: Option<u32>,
        t: Transition,
        reason: Option<&str>,
    ) -> Result<KeyRecord, ServiceError> {
        if t == Transition::Compromise
            && self
                .policy
                .needs_approval(crate::policy::SensitiveAction::Compromise)
        {
            return Err(ServiceError::Refused(
                "marking a key compromised needs dual control: request it and have it approved"
                    .into(),
            ));
        }
        self.transition_now(actor, tenant, name, version, t, reason)
            .await
    }

    pub(crate) async fn transition_now(
        &self,
        actor: &Actor,
        tenant: &Tenant,
        name: &KeyName,
        version: Option<u32>,
        t: Transition,
        reason: Option<&str>,
    ) -> Result<KeyRecord, ServiceError> {
        let rec = self.get(tenant, name).await?;
        let v = Self::pick_version(&rec, version)?;
        let to = v
            .state
            .apply(t)
            .map_err(|e| ServiceError::Refused(e.to_string()))?;
        if t == Transition::Compromise && reason.is_none_or(str::is_empty) {
            return Err(ServiceError::Invalid(
                "marking a key compromised needs a reason".into(),
            ));
        }
        let action = match t {
            Transition::Activate => "activate",
            Transition::Suspend => "suspend",
            Transition::Reactivate => "reactivate",
            Transition::Deactivate => "deactivate",
            Transition::Compromise => "compromise",
        };
        self.store
            .change_state(
                &rec.id,
                v.version,
                v.state,
                to,
                actor.as_str(),
                action,
                reason,
            )
            .await?;
        if t == Transition::Activate {
            // The cryptoperiod runs from activation.
            let now = OffsetDateTime::now_utc();
            let days = i64::from(self.policy.cryptoperiod_days(rec.usage));
            self.store
                .set_activation(&rec.id, v.version, now, now + Duration::days(days))
                .await?;
        }
        self.get(tenant, name).await
    }

    /// Destroy a version's HSM object; the row stays as a tombstone with its
    /// KCV. Called only through dual control (`approvals.rs`).
    pub(crate) async fn destroy_now(
        &self,
        actor: &Actor,
        tenant: &Tenant,
        name: &KeyName,
        version: u32,
        reason: Option<&str>,
    ) -> Result<KeyRecord, ServiceError> {
        let rec = self.get(tenant, name).await?;
        let v = Self::pick_version(&rec, Some(version))?;
        let final_state = v
            .state
            .destroyed()
            .map_err(|e| ServiceError::Refused(format!("{e}; deactivate it first")))?;
        Self::key_ref(&rec, &v)?;
        self.store
            .mark_destroying(&rec.id, v.version, actor.as_str(), reason)
            .await?;
        let id = v.object_id;
        self.on_hsm(move |h| h.destroy(id)).await?;
        self.store
            .mark_tombstone(&rec.id, v.version, final_state)
            .await?;
        self.get(tenant, name).await
    }

    /// Wrap a key under a KEK of the same tenant (KM-4) for transport.
    /// Called only through dual control (`approvals.rs`).
    pub(crate) async fn export_now(
        &self,
        actor: &Actor,
        tenant: &Tenant,
        name: &KeyName,
        version: Option<u32>,
        kek_name: &KeyName,
        alg: Option<WrapAlg>,
    ) -> Result<ExportedKey, ServiceError> {
        let rec = self.get(tenant, name).await?;
        let v = Self::pick_version(&rec, version)?;
        let key = Self::key_ref(&rec, &v)?;
        if !rec.exportable || !self.policy.may_export(rec.usage) {
            return Err(ServiceError::Refused(format!(
                "{tenant}/{name} is not exportable"
            )));
        }
        if !v.state.may_process() {
            return Err(ServiceError::Refused(format!(
                "{tenant}/{name} version {} is {}",
                v.version, v.state
            )));
        }
        let (kek_rec, kek_v, kek) = self.usable_for_protect(tenant, kek_name).await?;
        if !kek_rec.usage.is_wrapping() {
            return Err(ServiceError::Invalid(format!(
                "{tenant}/{kek_name} is a {} key, not a KEK",
                kek_rec.usage
            )));
        }
        let alg = alg.unwrap_or_else(|| WrapAlg::default_for(kek_rec.algorithm));
        let wrapped = self.on_hsm(move |h| h.wrap(&kek, &key, alg)).await?;
        self.store
            .record_event(
                &rec.id,
                Some(v.version),
                actor.as_str(),
                "export",
                Some(&format!(
                    "wrapped under {tenant}/{kek_name} v{}",
                    kek_v.version
                )),
            )
            .await?;
        Ok(ExportedKey {
            tenant: tenant.clone(),
            name: name.clone(),
            version: v.version,
            kcv: v.kcv.clone(),
            kek: kek_name.clone(),
            kek_version: kek_v.version,
            wrap_algorithm: alg,
            wrapped: hex::encode_upper(wrapped),
        })
    }
}
