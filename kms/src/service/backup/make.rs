//! Making a backup: every live version the policy backs up, wrapped
//! under the backup KEK.

use super::{
    check_value, is_own_mac_key, mention, BackupEntry, BackupFile, BackupKekRef, CheckMethod,
    SkippedVersion, BACKUP_FORMAT, WRAP,
};
use crate::audit::{AuditEvent, KeyMention, Outcome, SYSTEM_TENANT};
use crate::hsm::{HsmError, KeyRef, Role};
use crate::model::{KeyFamily, KeyName, Tenant};
use crate::service::audited::Act;
use crate::service::{Actor, KeyService, ServiceError};
use crate::store::Presence;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// One version to wrap.
struct Job {
    mention: KeyMention,
    entry: BackupEntry,
    key: KeyRef,
    recorded_kcv: Option<String>,
}

impl KeyService {
    /// A record the act writes on its own, tied to the act's request id
    /// (fail closed: if it cannot be written the act fails).
    async fn record_backup_detail(
        &self,
        actor: &Actor,
        action: &str,
        request_id: &str,
        details: Vec<(&str, String)>,
    ) -> Result<(), ServiceError> {
        let role = self
            .caller
            .as_ref()
            .map(|c| c.role)
            .unwrap_or_else(|| self.role_name());
        self.audit
            .record(AuditEvent {
                actor: actor.as_str().to_owned(),
                role: role.into(),
                tenant: Some(SYSTEM_TENANT.into()),
                action: action.into(),
                request_id: Some(request_id.to_owned()),
                outcome: Some(Outcome::Success),
                source: Some(self.source.clone()),
                details: details
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v))
                    .collect(),
                ..Default::default()
            })
            .await
            .map_err(ServiceError::Audit)?;
        Ok(())
    }

    /// Back up every live version of every key whose usage the policy
    /// backs up, wrapped under the backup KEK `kms/<kek>` (user login).
    /// The KMS's own keys, trusted KEKs and destroyed versions are not in
    /// it; a version that cannot be wrapped (made before its usage was
    /// backed up, so not extractable) is listed in `skipped`.
    pub async fn backup(&self, actor: &Actor, kek: &KeyName) -> Result<BackupFile, ServiceError> {
        let request_id = uuid::Uuid::new_v4().to_string();
        let act = Act::change(actor, "backup.create")
            .with_request_id(&request_id)
            .detail("kek", format!("{SYSTEM_TENANT}/{kek}"));
        self.audited(
            act,
            self.backup_now(actor, kek, &request_id),
            |f: &BackupFile| {
                f.entries
                    .iter()
                    .map(|e| mention(&e.tenant, &e.name, e.version, Some(e.kcv.clone())))
                    .collect()
            },
        )
        .await
    }

    async fn backup_now(
        &self,
        actor: &Actor,
        kek_name: &KeyName,
        request_id: &str,
    ) -> Result<BackupFile, ServiceError> {
        self.require_login(Role::User, "a backup")?;
        let (_, kek_v, kek) = self.backup_kek(kek_name).await?;
        let kek_ok = kek_v.presence == Presence::Present
            && kek_v.state.may_protect()
            && kek_v
                .expire_at
                .is_none_or(|t| t > OffsetDateTime::now_utc());
        if !kek_ok {
            return Err(ServiceError::Refused(format!(
                "{SYSTEM_TENANT}/{kek_name} version {} is {} and cannot protect a new backup",
                kek_v.version, kek_v.state
            )));
        }
        let mut jobs = Vec::new();
        let mut skipped = Vec::new();
        for rec in self.store.list_keys(None).await? {
            let own_mac = is_own_mac_key(rec.tenant.as_str(), rec.name.as_str());
            if !own_mac
                && (rec.tenant.as_str() == SYSTEM_TENANT
                    || !rec.algorithm.is_secret()
                    || !self.policy.backs_up(rec.usage))
            {
                continue;
            }
            for v in &rec.versions {
                let skip = |reason: &str| SkippedVersion {
                    tenant: rec.tenant.to_string(),
                    name: rec.name.to_string(),
                    version: v.version,
                    reason: reason.to_owned(),
                };
                match v.presence {
                    Presence::Tombstone => continue,
                    Presence::Pending | Presence::Destroying => {
                        return Err(ServiceError::Inconsistent(format!(
                            "{}/{} version {} is {} (run `kms reconcile` before a backup)",
                            rec.tenant,
                            rec.name,
                            v.version,
                            v.presence.as_str()
                        )))
                    }
                    Presence::Present => {}
                }
                if v.trusted {
                    skipped.push(skip(
                        "a trusted KEK: made again by the KEK-trust ceremony, never restored",
                    ));
                    continue;
                }
                jobs.push(Job {
                    mention: mention(rec.tenant.as_str(), rec.name.as_str(), v.version, None),
                    entry: BackupEntry {
                        tenant: rec.tenant.to_string(),
                        name: rec.name.to_string(),
                        version: v.version,
                        algorithm: rec.algorithm.as_str().to_owned(),
                        usage: rec.usage.as_str().to_owned(),
                        state: v.state.as_str().to_owned(),
                        object_id: v.object_id.to_string(),
                        exportable: rec.exportable,
                        check: if rec.algorithm.family() == KeyFamily::Hmac {
                            CheckMethod::HmacConstant
                        } else {
                            CheckMethod::ZeroBlock
                        },
                        kcv: String::new(),
                        wrapped: String::new(),
                    },
                    key: KeyRef {
                        object_id: v.object_id,
                        algorithm: rec.algorithm,
                    },
                    recorded_kcv: v.kcv.clone(),
                });
            }
        }
        let wrapped = self
            .on_hsm(move |h| {
                // An untrusted KEK would have every key refused (and
                // listed as skipped): say what is wrong instead.
                let trusted = h
                    .attributes(kek.object_id)?
                    .iter()
                    .any(|a| a.trusted && a.wrap);
                if !trusted {
                    return Err(HsmError::invalid(
                        "the backup KEK on this token is not a trusted wrapping key",
                    ));
                }
                let mut out = Vec::with_capacity(jobs.len());
                for mut j in jobs {
                    match h.wrap(&kek, &j.key, WRAP) {
                        Ok(w) => {
                            j.entry.kcv = check_value(h, &j.key, j.recorded_kcv.as_deref())?;
                            j.entry.wrapped = hex::encode_upper(w);
                            out.push(Ok(j));
                        }
                        // CKR_KEY_UNEXTRACTABLE: made before its usage was backed up.
                        Err(HsmError::Refused { .. }) => out.push(Err(j)),
                        Err(e) => return Err(e),
                    }
                }
                Ok(out)
            })
            .await?;
        let mut entries = Vec::with_capacity(wrapped.len());
        let mut backed_up = Vec::with_capacity(wrapped.len());
        for w in wrapped {
            match w {
                Ok(j) => {
                    if j.entry.kcv.is_empty() {
                        return Err(ServiceError::Inconsistent(format!(
                            "{}/{} version {} has no check value",
                            j.entry.tenant, j.entry.name, j.entry.version
                        )));
                    }
                    backed_up.push(j.mention);
                    entries.push(j.entry);
                }
                Err(j) => skipped.push(SkippedVersion {
                    tenant: j.entry.tenant,
                    name: j.entry.name,
                    version: j.entry.version,
                    reason: "not extractable: made before its usage was backed up; rotate it"
                        .into(),
                }),
            }
        }
        let mut file = BackupFile {
            format: BACKUP_FORMAT.into(),
            created_at: OffsetDateTime::now_utc()
                .format(&Rfc3339)
                .map_err(|e| ServiceError::Internal(e.to_string()))?,
            created_by: actor.as_str().to_owned(),
            wrap_algorithm: WRAP.as_str().into(),
            kek: BackupKekRef {
                tenant: SYSTEM_TENANT.into(),
                name: kek_name.to_string(),
                version: kek_v.version,
                kcv: kek_v.kcv.clone().unwrap_or_default(),
            },
            entries,
            skipped,
            digest: String::new(),
        };
        file.digest = file.compute_digest()?;
        // The digest is in the trail before the file is handed out.
        self.record_backup_detail(
            actor,
            "backup.file",
            request_id,
            vec![
                ("digest", file.digest.clone()),
                ("entries", file.entries.len().to_string()),
                ("skipped", file.skipped.len().to_string()),
                ("kek_kcv", file.kek.kcv.clone()),
            ],
        )
        .await?;
        for m in &backed_up {
            let t = Tenant::parse(&m.tenant)?;
            let n = KeyName::parse(&m.name)?;
            if let Some(rec) = self.store.find_key(&t, &n).await? {
                self.store
                    .record_event(
                        &rec.id,
                        m.version,
                        actor.as_str(),
                        "backup",
                        Some(&format!(
                            "wrapped under {SYSTEM_TENANT}/{kek_name} v{} in backup {}",
                            kek_v.version,
                            file.digest.get(..16).unwrap_or_default()
                        )),
                    )
                    .await?;
            }
        }
        Ok(file)
    }
}
