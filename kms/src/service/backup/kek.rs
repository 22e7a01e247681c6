//! The backup KEK: made from the token's generator and split into
//! custodians' shares; rebuilt from M of them onto a new token.

use super::{mention, system_tenant, BackupKek, BACKUP_KEK_ALGORITHM};
use crate::audit::SYSTEM_TENANT;
use crate::crypto::shares::{self, Share, UnsealSecret};
use crate::hsm::{Hsm, HsmError, KeySpec, Role, Trust};
use crate::model::{KeyName, KeyState, KeyUsage, ObjectId};
use crate::service::audited::Act;
use crate::service::{Actor, KeyService, ServiceError};
use crate::store::{KeyRecord, NewKey, NewVersion, Presence};
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

fn shares_refused(e: shares::SharesError) -> HsmError {
    HsmError::Invalid(e.to_string())
}

fn kek_spec(name: &KeyName, object_id: ObjectId) -> KeySpec {
    KeySpec {
        algorithm: BACKUP_KEK_ALGORITHM,
        usage: KeyUsage::BackupKek,
        exportable: false,
        object_id,
        label: format!("{SYSTEM_TENANT}/{name}"),
        persistent: true,
    }
}

/// Import the KEK's value as a trusted key and check the token's check
/// value against `expect` (when known). The value lives only in the
/// secret, which wipes itself.
fn import_kek(
    h: &Hsm,
    spec: &KeySpec,
    secret: &UnsealSecret,
    expect: Option<&str>,
) -> Result<String, HsmError> {
    let created = h.import_clear(spec, Trust::TrustedBySecurityOfficer, secret.as_bytes())?;
    let kcv = created
        .kcv
        .filter(|k| !k.is_empty())
        .map(hex::encode_upper)
        .unwrap_or_default();
    let matches = !kcv.is_empty() && expect.is_none_or(|e| e.eq_ignore_ascii_case(&kcv));
    if !matches {
        h.destroy(spec.object_id)?;
        return Err(HsmError::Invalid(format!(
            "the recovered backup KEK's check value {kcv} is not the recorded {}",
            expect.unwrap_or("(none)")
        )));
    }
    Ok(kcv)
}

impl KeyService {
    /// Create the backup KEK `kms/<name>` under the security officer's
    /// login: AES-256 from the token's generator, split into `n` shares of
    /// which any `m` rebuild it, imported CKA_TRUSTED (wrap and unwrap
    /// only, sensitive, never extractable), the value wiped. Returns the
    /// shares for the custodians and the KEK's check value. Creating a
    /// trusted KEK is a dual-control act (invariant 3): only the execution
    /// of an approved `Operation::BackupKek` request calls this
    /// (`execute_backup_kek`), so it is not public.
    pub(crate) async fn create_backup_kek(
        &self,
        actor: &Actor,
        request_id: &str,
        name: &KeyName,
        m: u8,
        n: u8,
    ) -> Result<BackupKek, ServiceError> {
        let act = Act::change(actor, "backup.kek-create")
            .correlate(request_id)
            .detail("kek", format!("{SYSTEM_TENANT}/{name}"))
            .detail("threshold", m.to_string())
            .detail("shares", n.to_string());
        self.audited(
            act,
            self.create_backup_kek_now(actor, name, m, n),
            |k: &BackupKek| {
                vec![mention(
                    SYSTEM_TENANT,
                    k.key.name.as_str(),
                    1,
                    Some(k.kcv.clone()),
                )]
            },
        )
        .await
    }

    async fn create_backup_kek_now(
        &self,
        actor: &Actor,
        name: &KeyName,
        m: u8,
        n: u8,
    ) -> Result<BackupKek, ServiceError> {
        self.require_login(Role::SecurityOfficer, "creating a backup KEK")?;
        if m < 2 || n < m {
            return Err(ServiceError::Invalid(format!(
                "a backup KEK needs 2 <= M <= N shares (M = {m}, N = {n})"
            )));
        }
        let tenant = system_tenant()?;
        if self.store.find_key(&tenant, name).await?.is_some() {
            return Err(ServiceError::Refused(format!(
                "{SYSTEM_TENANT}/{name} already exists"
            )));
        }
        let now = OffsetDateTime::now_utc();
        let first = NewVersion {
            object_id: ObjectId::random(),
            state: KeyState::Active,
            activate_at: Some(now),
            expire_at: Some(
                now + Duration::days(i64::from(
                    self.policy.cryptoperiod_days(KeyUsage::BackupKek),
                )),
            ),
        };
        let new = NewKey {
            tenant: tenant.clone(),
            name: name.clone(),
            algorithm: BACKUP_KEK_ALGORITHM,
            usage: KeyUsage::BackupKek,
            exportable: false,
        };
        let rec = self
            .store
            .create_key_as(&new, &first, actor.as_str(), "create")
            .await?;
        let spec = kek_spec(name, first.object_id);
        let made = self
            .on_hsm(move |h| {
                let value = Zeroizing::new(h.random(32)?);
                let secret = UnsealSecret::from_bytes(&value).map_err(shares_refused)?;
                drop(value);
                // Split first: a failed split leaves nothing on the token.
                let shares = shares::split(&secret, m, n).map_err(shares_refused)?;
                let kcv = import_kek(h, &spec, &secret, None)?;
                Ok((kcv, shares))
            })
            .await;
        let (kcv, shares) = match made {
            Ok(v) => v,
            Err(e) => {
                self.store.abandon_pending(&rec.id, 1).await?;
                return Err(e);
            }
        };
        self.store.confirm_version(&rec.id, 1, &kcv).await?;
        self.store
            .set_trusted(
                &rec.id,
                1,
                true,
                actor.as_str(),
                Some("backup KEK created trusted by the security officer"),
            )
            .await?;
        Ok(BackupKek {
            key: self.get(&tenant, name).await?,
            kcv,
            threshold: m,
            shares,
        })
    }

    /// Rebuild the backup KEK from M custodians' shares onto a new token,
    /// under the security officer's login, with the CKA_ID its database row
    /// names. The combination is authenticated (too few, wrong or mixed
    /// shares give nothing), and the token's check value must equal the
    /// recorded one and `expect_kcv` (from the backup file) when given.
    pub async fn recover_backup_kek(
        &self,
        actor: &Actor,
        name: &KeyName,
        shares: Vec<Share>,
        expect_kcv: Option<&str>,
    ) -> Result<KeyRecord, ServiceError> {
        let indexes = shares
            .iter()
            .map(|s| s.index().to_string())
            .collect::<Vec<_>>()
            .join(",");
        let mut act = Act::change(actor, "backup.kek-recover")
            .detail("kek", format!("{SYSTEM_TENANT}/{name}"))
            .detail("share_indexes", indexes);
        if let Some(k) = expect_kcv {
            act = act.detail("expected_kcv", k.to_owned());
        }
        self.audited(
            act,
            self.recover_backup_kek_now(actor, name, shares, expect_kcv),
            |r: &KeyRecord| {
                let v = r.current();
                vec![mention(
                    SYSTEM_TENANT,
                    r.name.as_str(),
                    v.map(|v| v.version).unwrap_or(1),
                    v.and_then(|v| v.kcv.clone()),
                )]
            },
        )
        .await
    }

    async fn recover_backup_kek_now(
        &self,
        actor: &Actor,
        name: &KeyName,
        shares: Vec<Share>,
        expect_kcv: Option<&str>,
    ) -> Result<KeyRecord, ServiceError> {
        self.require_login(Role::SecurityOfficer, "recovering the backup KEK")?;
        let (rec, v, kek) = self.backup_kek(name).await?;
        if v.presence != Presence::Present {
            return Err(ServiceError::Inconsistent(format!(
                "{SYSTEM_TENANT}/{name} version {} is {} (run `kms reconcile`)",
                v.version,
                v.presence.as_str()
            )));
        }
        let recorded = v.kcv.clone().unwrap_or_default();
        if let Some(e) = expect_kcv {
            if !e.eq_ignore_ascii_case(&recorded) {
                return Err(ServiceError::Refused(format!(
                    "the backup file's KEK check value {e} is not {SYSTEM_TENANT}/{name}'s {recorded}"
                )));
            }
        }
        let id = kek.object_id;
        if self.on_hsm(move |h| h.exists(id)).await? {
            return Err(ServiceError::Refused(format!(
                "{SYSTEM_TENANT}/{name} is already on this token"
            )));
        }
        let spec = kek_spec(name, id);
        let count = shares.len();
        self.on_hsm(move |h| {
            let secret = shares::combine(&shares).map_err(shares_refused)?;
            drop(shares);
            import_kek(h, &spec, &secret, Some(&recorded))
        })
        .await?;
        self.store
            .record_event(
                &rec.id,
                Some(v.version),
                actor.as_str(),
                "recover",
                Some(&format!(
                    "re-imported onto a new token from {count} custodians' shares"
                )),
            )
            .await?;
        self.get(&rec.tenant, &rec.name).await
    }
}
