//! The KMS's own audit keys after a token loss, before the service opens.

use super::{
    is_own_mac_key, mention, system_tenant, unwrap_all, BackupEntry, BackupFile, CheckMethod,
    Unwrap, AUDIT_MAC, AUDIT_SIGNING,
};
use crate::audit::{AuditEvent, AuditLog, Outcome, SYSTEM_TENANT};
use crate::hsm::{Hsm, KeyRef, KeySpec, Role, Trust};
use crate::model::{Algorithm, KeyName, KeyState, KeyUsage, ObjectId};
use crate::service::{Actor, KeyService, ServiceError};
use crate::store::{KeyRecord, NewVersion, Presence, Store, SYSTEM_ACTOR};
use std::sync::Arc;
use time::OffsetDateTime;

/// After the token was lost the database names the KMS's own keys
/// (`kms/audit-mac`, `kms/audit-signing`) as objects that no longer exist,
/// and no service can open: every act would fail to be audited. Before the
/// service opens, on the new token (user login, the backup KEK recovered):
/// the audit MAC key is unwrapped from `backup` under its old CKA_ID, so
/// every earlier record's MAC verifies again; without a backup entry for
/// it, and always for the checkpoint signing key (a private key, never
/// extractable), the lost version is recorded destroyed ("lost with its
/// token") and a new version is made. Checkpoints signed before the loss
/// then verify only with the old public key (`kms audit public-key` output
/// kept from before). These records carry no MAC (there is no audit key
/// yet); the chain covers them. Explicit, never automatic: a wrong token
/// must not silently get new audit keys.
pub async fn renew_lost_system_keys(
    hsm: Arc<Hsm>,
    store: &Store,
    actor: &Actor,
    backup: Option<&BackupFile>,
) -> Result<SystemKeysRenewal, ServiceError> {
    if hsm.role() != Role::User {
        return Err(ServiceError::Refused(
            "the KMS's own keys are made under the user's login".into(),
        ));
    }
    if let Some(f) = backup {
        f.verify()?;
    }
    let tenant = system_tenant()?;
    let mut out = SystemKeysRenewal::default();
    for (name, algorithm, usage) in [
        (AUDIT_MAC, Algorithm::HmacSha256, KeyUsage::Audit),
        (AUDIT_SIGNING, Algorithm::EcP256, KeyUsage::Signing),
        // The ceremony transcripts' signing key (service/ceremony.rs): a
        // private key like the checkpoint key, renewed so the recovery
        // ceremony's own transcript can be signed on the new token.
        (
            "ceremony-transcript-signing",
            Algorithm::EcP256,
            KeyUsage::Signing,
        ),
    ] {
        let key_name = KeyName::parse(name)?;
        let Some(rec) = store.find_key(&tenant, &key_name).await? else {
            continue;
        };
        let Some(v) = rec.current().cloned() else {
            continue;
        };
        let id = v.object_id;
        let h = hsm.clone();
        let present = tokio::task::spawn_blocking(move || h.exists(id))
            .await
            .map_err(|e| ServiceError::Internal(e.to_string()))??;
        if present {
            continue;
        }
        if v.presence != Presence::Present {
            return Err(ServiceError::Inconsistent(format!(
                "{SYSTEM_TENANT}/{name} version {} is {} (run `kms reconcile`)",
                v.version,
                v.presence.as_str()
            )));
        }
        let label = format!("{SYSTEM_TENANT}/{name}");
        let entry = backup.and_then(|f| {
            f.entries
                .iter()
                .find(|e| {
                    is_own_mac_key(&e.tenant, &e.name)
                        && name == AUDIT_MAC
                        && e.version == v.version
                        && e.object_id.eq_ignore_ascii_case(&v.object_id.to_string())
                })
                .map(|e| (f, e))
        });
        let action = if entry.is_some() {
            "backup.system-key-restore"
        } else {
            "backup.system-key-renew"
        };
        let request_id = uuid::Uuid::new_v4().to_string();
        let event = |outcome: Outcome, reason: Option<String>| AuditEvent {
            actor: actor.as_str().to_owned(),
            role: "operator".into(),
            tenant: Some(SYSTEM_TENANT.into()),
            action: action.into(),
            keys: vec![mention(SYSTEM_TENANT, name, v.version, v.kcv.clone())],
            request_id: Some(request_id.clone()),
            outcome: Some(outcome),
            reason,
            source: Some("cli".into()),
            ..Default::default()
        };
        let attempt = AuditLog::record_without_hsm(store, event(Outcome::Attempt, None))
            .await
            .map_err(ServiceError::Audit)?;
        out.unmaced
            .push(format!("{}:{}", attempt.seq, attempt.hash));
        let result = match entry {
            Some((file, e)) => restore_own_mac(&hsm, store, file, e, &label)
                .await
                .map(|()| format!("{label}: restored from the backup")),
            None => renew_one(&hsm, store, actor, &rec, &v, algorithm, usage, &label)
                .await
                .map(|n| format!("{label}: lost with the old token; new version {n}")),
        };
        let outcome = match &result {
            Ok(_) => (Outcome::Success, None),
            Err(e) => (Outcome::Failure, Some(e.to_string())),
        };
        let rec = AuditLog::record_without_hsm(store, event(outcome.0, outcome.1))
            .await
            .map_err(ServiceError::Audit)?;
        out.unmaced.push(format!("{}:{}", rec.seq, rec.hash));
        out.done.push(result?);
    }
    Ok(out)
}

/// What `renew_lost_system_keys` did.
#[derive(Debug, Default)]
pub struct SystemKeysRenewal {
    /// One line per key put back.
    pub done: Vec<String>,
    /// seq:hash of its records, written without a MAC.
    unmaced: Vec<String>,
}

impl SystemKeysRenewal {
    /// Countersign the renewal's records under the audit MAC key of the
    /// service opened next in this process (as for the security officer's
    /// records), so online verification accepts them.
    pub async fn countersign(self, svc: &KeyService) -> Result<(), ServiceError> {
        svc.audit()
            .countersign(self.unmaced)
            .await
            .map_err(ServiceError::Audit)?;
        Ok(())
    }
}

/// Unwrap the audit MAC key from a backup under its old CKA_ID (the
/// database row is unchanged), checking its HMAC check value.
async fn restore_own_mac(
    hsm: &Arc<Hsm>,
    store: &Store,
    file: &BackupFile,
    e: &BackupEntry,
    label: &str,
) -> Result<(), ServiceError> {
    let kek_name = KeyName::parse(&file.kek.name)?;
    let kek_rec = store
        .find_key(&system_tenant()?, &kek_name)
        .await?
        .filter(|r| r.usage == KeyUsage::BackupKek)
        .ok_or_else(|| {
            ServiceError::NotFound(format!("{SYSTEM_TENANT}/{kek_name}: no such backup KEK"))
        })?;
    let kek_v = kek_rec
        .current()
        .filter(|v| {
            v.trusted
                && v.version == file.kek.version
                && v.kcv
                    .as_deref()
                    .is_some_and(|k| k.eq_ignore_ascii_case(&file.kek.kcv))
        })
        .ok_or_else(|| {
            ServiceError::Refused(format!(
                "the backup was not made under this database's {SYSTEM_TENANT}/{kek_name}"
            ))
        })?;
    let kek = KeyRef {
        object_id: kek_v.object_id,
        algorithm: kek_rec.algorithm,
    };
    let job = Unwrap {
        mention: mention(SYSTEM_TENANT, AUDIT_MAC, e.version, Some(e.kcv.clone())),
        spec: KeySpec {
            algorithm: Algorithm::HmacSha256,
            usage: KeyUsage::Audit,
            exportable: true,
            object_id: ObjectId::parse_hex(&e.object_id)?,
            label: label.to_owned(),
            persistent: true,
        },
        check: CheckMethod::HmacConstant,
        kcv: e.kcv.clone(),
        wrapped: hex::decode(&e.wrapped)
            .map_err(|_| ServiceError::Invalid("the wrapped audit key is not hex".into()))?,
    };
    let h = hsm.clone();
    let kek_id = kek.object_id;
    let kek_here = tokio::task::spawn_blocking(move || h.exists(kek_id))
        .await
        .map_err(|e| ServiceError::Internal(e.to_string()))??;
    if !kek_here {
        return Err(ServiceError::Refused(format!(
            "{SYSTEM_TENANT}/{kek_name} is not on this token: the security officer recovers it first (kms backup kek-recover)"
        )));
    }
    let h = hsm.clone();
    tokio::task::spawn_blocking(move || unwrap_all(&h, &kek, &[job]))
        .await
        .map_err(|e| ServiceError::Internal(e.to_string()))??;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn renew_one(
    hsm: &Arc<Hsm>,
    store: &Store,
    actor: &Actor,
    rec: &KeyRecord,
    v: &crate::store::VersionRecord,
    algorithm: Algorithm,
    usage: KeyUsage,
    label: &str,
) -> Result<u32, ServiceError> {
    if matches!(v.state, KeyState::Active | KeyState::Suspended) {
        store
            .change_state(
                &rec.id,
                v.version,
                v.state,
                KeyState::Deactivated,
                actor.as_str(),
                "deactivate",
                Some("lost with its token"),
            )
            .await?;
    }
    let after = store
        .find_key(&rec.tenant, &rec.name)
        .await?
        .and_then(|r| r.version(v.version).map(|v| v.state))
        .unwrap_or(KeyState::Deactivated);
    let final_state = after
        .destroyed()
        .map_err(|e| ServiceError::Refused(e.to_string()))?;
    store
        .mark_destroying(
            &rec.id,
            v.version,
            actor.as_str(),
            Some("lost with its token"),
        )
        .await?;
    store
        .mark_tombstone(&rec.id, v.version, final_state)
        .await?;
    let nv = NewVersion {
        object_id: ObjectId::random(),
        state: KeyState::Active,
        activate_at: Some(OffsetDateTime::now_utc()),
        expire_at: None,
    };
    let added = store
        .add_version(&rec.id, &nv, SYSTEM_ACTOR, "renew")
        .await?;
    let spec = KeySpec {
        algorithm,
        usage,
        // As `AuditLog::system_key` makes them: the MAC key (secret) goes
        // into backups, the signing key (private) never leaves.
        exportable: algorithm.is_secret(),
        object_id: nv.object_id,
        label: label.to_owned(),
        persistent: true,
    };
    let h = hsm.clone();
    let made = tokio::task::spawn_blocking(move || h.generate(&spec, Trust::Normal))
        .await
        .map_err(|e| ServiceError::Internal(e.to_string()))?;
    match made {
        Ok(k) => {
            let kcv = k.kcv.map(hex::encode_upper).unwrap_or_default();
            store.confirm_version(&rec.id, added.version, &kcv).await?;
            Ok(added.version)
        }
        Err(e) => {
            store.abandon_pending(&rec.id, added.version).await?;
            Err(e.into())
        }
    }
}
