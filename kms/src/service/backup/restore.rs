//! Restoring a backup onto a token that lost its keys.

use super::{
    extractable, is_own_mac_key, mention, unwrap_all, BackupFile, CheckMethod, RestoreReport,
    Unwrap,
};
use crate::audit::{KeyMention, SYSTEM_TENANT};
use crate::hsm::{KeySpec, Role};
use crate::model::{Algorithm, KeyName, KeyUsage, ObjectId, Tenant};
use crate::service::audited::Act;
use crate::service::{Actor, KeyService, ServiceError};
use crate::store::Presence;

impl KeyService {
    /// backup KEK recovered first). Each version is unwrapped under the
    /// CKA_ID and with the attributes its database row names: sensitive,
    /// extractable only if exportable or backed up, and then only by a
    /// trusted KEK. Versions still on the token are left alone; versions
    /// destroyed since the backup are never brought back. All or nothing.
    pub async fn restore(
        &self,
        actor: &Actor,
        file: &BackupFile,
    ) -> Result<RestoreReport, ServiceError> {
        let act = Act::change(actor, "backup.restore")
            .detail("digest", file.digest.clone())
            .detail("kek", format!("{}/{}", file.kek.tenant, file.kek.name))
            .detail("entries", file.entries.len().to_string());
        self.audited(act, self.restore_now(actor, file), |r: &RestoreReport| {
            r.restored.clone()
        })
        .await
    }

    async fn restore_now(
        &self,
        actor: &Actor,
        file: &BackupFile,
    ) -> Result<RestoreReport, ServiceError> {
        self.require_login(Role::User, "a restore")?;
        file.verify()?;
        if file.kek.tenant != SYSTEM_TENANT {
            return Err(ServiceError::Invalid(
                "a backup KEK belongs to the kms tenant".into(),
            ));
        }
        let kek_name = KeyName::parse(&file.kek.name)?;
        let (_, kek_v, kek) = self.backup_kek(&kek_name).await?;
        if kek_v.version != file.kek.version
            || !kek_v
                .kcv
                .as_deref()
                .is_some_and(|k| k.eq_ignore_ascii_case(&file.kek.kcv))
        {
            return Err(ServiceError::Refused(format!(
                "the backup was made under {SYSTEM_TENANT}/{kek_name} v{} ({}), which is not this database's",
                file.kek.version, file.kek.kcv
            )));
        }
        let kek_id = kek.object_id;
        if !self.on_hsm(move |h| h.exists(kek_id)).await? {
            return Err(ServiceError::Refused(format!(
                "{SYSTEM_TENANT}/{kek_name} is not on this token: the security officer recovers it first from M custodians' shares (kms backup kek-recover)"
            )));
        }
        let mut report = RestoreReport {
            digest: file.digest.clone(),
            ..Default::default()
        };
        let mut jobs = Vec::new();
        // Plan everything before touching the token: bad input changes nothing.
        for e in &file.entries {
            let tenant = Tenant::parse(&e.tenant)?;
            let name = KeyName::parse(&e.name)?;
            let what = format!("{tenant}/{name} version {}", e.version);
            let own_mac = is_own_mac_key(tenant.as_str(), name.as_str());
            if tenant.as_str() == SYSTEM_TENANT && !own_mac {
                return Err(ServiceError::Invalid(format!(
                    "{what}: the KMS's own keys other than the audit MAC key are not in backups"
                )));
            }
            let rec = self.store.find_key(&tenant, &name).await?.ok_or_else(|| {
                ServiceError::NotFound(format!(
                    "{what}: this database does not know the key; restore needs the database the backup was made with"
                ))
            })?;
            let v = rec
                .version(e.version)
                .ok_or_else(|| ServiceError::NotFound(format!("{what}: no such version")))?;
            let algorithm: Algorithm = e.algorithm.parse()?;
            let usage: KeyUsage = e.usage.parse()?;
            let object_id = ObjectId::parse_hex(&e.object_id)?;
            let same_kcv = e.check == CheckMethod::HmacConstant
                || v.kcv
                    .as_deref()
                    .is_some_and(|k| k.eq_ignore_ascii_case(&e.kcv));
            if rec.algorithm != algorithm
                || rec.usage != usage
                || v.object_id != object_id
                || !same_kcv
            {
                return Err(ServiceError::Inconsistent(format!(
                    "{what}: the backup does not match the database (algorithm, usage, object or check value)"
                )));
            }
            let m = mention(&e.tenant, &e.name, e.version, Some(e.kcv.clone()));
            match v.presence {
                Presence::Tombstone => {
                    report.destroyed_since.push(m);
                    continue;
                }
                Presence::Pending | Presence::Destroying => {
                    return Err(ServiceError::Inconsistent(format!(
                        "{what} is {} (run `kms reconcile`)",
                        v.presence.as_str()
                    )))
                }
                Presence::Present => {}
            }
            if self.on_hsm(move |h| h.exists(object_id)).await? {
                report.present.push(m);
                continue;
            }
            let wrapped = hex::decode(&e.wrapped).map_err(|_| {
                ServiceError::Invalid(format!("{what}: the wrapped key is not hex"))
            })?;
            jobs.push(Unwrap {
                mention: m,
                spec: KeySpec {
                    algorithm,
                    usage,
                    exportable: own_mac
                        || extractable(&self.policy, usage, algorithm, rec.exportable, false),
                    object_id,
                    label: format!("{tenant}/{name}"),
                    persistent: true,
                },
                check: e.check,
                kcv: e.kcv.clone(),
                wrapped,
            });
        }
        let restored: Vec<KeyMention> = jobs.iter().map(|j| j.mention.clone()).collect();
        self.on_hsm(move |h| unwrap_all(h, &kek, &jobs)).await?;
        for m in &restored {
            let rec = self
                .get(&Tenant::parse(&m.tenant)?, &KeyName::parse(&m.name)?)
                .await?;
            self.store
                .record_event(
                    &rec.id,
                    m.version,
                    actor.as_str(),
                    "restore",
                    Some(&format!(
                        "unwrapped from backup {} onto a new token; check value reproduced",
                        file.digest.get(..16).unwrap_or_default()
                    )),
                )
                .await?;
        }
        report.restored = restored;
        Ok(report)
    }
}
