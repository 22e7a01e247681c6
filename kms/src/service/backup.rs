//! Backup and recovery of the token's keys (KM-2, issue 5).
//!
//! Keys leave the token only wrapped (AES key wrap with padding) under the
//! backup KEK: an AES-256 key the security officer imports CKA_TRUSTED from
//! a value drawn from the token's generator, split at once into M-of-N
//! Shamir shares for custodians and then wiped. The keys the policy backs
//! up (`backup_usages`) are CKA_EXTRACTABLE and CKA_WRAP_WITH_TRUSTED, so
//! only a trusted KEK can wrap them; the export path still refuses every
//! key that is not exportable. Nothing here ever holds a clear key except
//! the backup KEK's value while it is split or combined.
//!
//! Recovery, when the token is lost and the database survives: the
//! security officer re-imports the backup KEK from M shares under its
//! original CKA_ID (`recover_backup_kek`), the user login puts back the
//! KMS's own audit keys that went with the token before the service opens
//! (`renew_lost_system_keys`: the MAC key from the backup, a new checkpoint
//! signing key), and `restore` unwraps each backed-up version
//! into an object with the CKA_ID and attributes its database row names,
//! all of them or none. The database is the record of states and history
//! (and holds the audit chain), so it is not rebuilt from a backup file:
//! restoring into a database that does not know a key is refused.

use super::audited::Act;
use super::{Actor, KeyService, ServiceError};
use crate::audit::{AuditEvent, AuditLog, KeyMention, Outcome, SYSTEM_TENANT};
use crate::crypto::shares::{self, Share, UnsealSecret};
use crate::hsm::{Hsm, HsmError, KeyRef, KeySpec, MacAlg, Role, Trust, WrapAlg};
use crate::model::{Algorithm, KeyFamily, KeyName, KeyState, KeyUsage, ObjectId, Tenant};
use crate::policy::KeyPolicy;
use crate::store::{KeyRecord, NewKey, NewVersion, Presence, Store, SYSTEM_ACTOR};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

/// The format tag of a backup file; a file with any other is refused.
pub const BACKUP_FORMAT: &str = "KMS-BACKUP-V1";
/// The backup KEK's algorithm: its value is exactly one Shamir secret.
pub const BACKUP_KEK_ALGORITHM: Algorithm = Algorithm::Aes256;
const WRAP: WrapAlg = WrapAlg::AesKwp;
/// An HMAC key has no zero-block check value: its check value is the first
/// 3 bytes of its HMAC over this constant, computed by the token.
const HMAC_CHECK_MESSAGE: &[u8] = b"kms/backup/hmac-check-value/v1";
const CHECK_LEN: usize = 3;
/// The KMS's own keys (`audit/log.rs`). The MAC key is in every backup, so
/// the trail's MACs verify again after a token loss; the checkpoint
/// signing key is a private key, never extractable, and is renewed.
const AUDIT_MAC: &str = "audit-mac";
const AUDIT_SIGNING: &str = "audit-signing";

fn is_own_mac_key(tenant: &str, name: &str) -> bool {
    tenant == SYSTEM_TENANT && name == AUDIT_MAC
}

/// CKA_EXTRACTABLE for a new key: exportable keys, and secret keys whose
/// usage the policy backs up (KM-2). A trusted KEK is re-made by the
/// trust ceremony, never restored: trust is the security officer's act.
/// The template adds CKA_WRAP_WITH_TRUSTED to every extractable key.
pub(crate) fn extractable(
    policy: &KeyPolicy,
    usage: KeyUsage,
    algorithm: Algorithm,
    exportable: bool,
    trusted: bool,
) -> bool {
    exportable || (!trusted && algorithm.is_secret() && policy.backs_up(usage))
}

/// Which backup KEK a file was made under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupKekRef {
    pub tenant: String,
    pub name: String,
    pub version: u32,
    /// Upper-case hex of the KEK's token check value.
    pub kcv: String,
}

/// How an entry's check value was computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckMethod {
    /// The token's E(zero block), first 3 bytes (AES, TDES).
    ZeroBlock,
    /// HMAC-SHA256 over `kms/backup/hmac-check-value/v1`, first 3 bytes.
    HmacConstant,
}

/// One key version, wrapped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupEntry {
    pub tenant: String,
    pub name: String,
    pub version: u32,
    pub algorithm: String,
    pub usage: String,
    pub state: String,
    /// CKA_ID (hex) of the object the version was, and is restored as.
    pub object_id: String,
    pub exportable: bool,
    pub check: CheckMethod,
    /// Upper-case hex check value.
    pub kcv: String,
    /// Upper-case hex of the key wrapped under the backup KEK.
    pub wrapped: String,
}

/// A live version the backup does not hold, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SkippedVersion {
    pub tenant: String,
    pub name: String,
    pub version: u32,
    pub reason: String,
}

/// A backup file: JSON, versioned, with a SHA-256 over its canonical
/// content so a damaged or edited file is refused before anything is
/// restored. The digest is also in the `backup.file` audit record, so an
/// officer can tell a file the KMS made from one made elsewhere. What a
/// forger could change does not matter anyway: the wrapped values are
/// authenticated by the key wrap under the KEK, each restored key's check
/// value is compared, and the attributes come from the database rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupFile {
    pub format: String,
    pub created_at: String,
    pub created_by: String,
    pub wrap_algorithm: String,
    pub kek: BackupKekRef,
    pub entries: Vec<BackupEntry>,
    pub skipped: Vec<SkippedVersion>,
    /// Upper-case hex SHA-256 of the file with this field empty.
    pub digest: String,
}

impl BackupFile {
    fn compute_digest(&self) -> Result<String, ServiceError> {
        let blank = BackupFile {
            digest: String::new(),
            ..self.clone()
        };
        let bytes = serde_json::to_vec(&blank)
            .map_err(|e| ServiceError::Internal(format!("backup file: {e}")))?;
        Ok(hex::encode_upper(Sha256::digest(&bytes)))
    }

    /// Refuse a file of another format or whose digest does not match.
    pub fn verify(&self) -> Result<(), ServiceError> {
        if self.format != BACKUP_FORMAT {
            return Err(ServiceError::Invalid(format!(
                "not a {BACKUP_FORMAT} backup file"
            )));
        }
        if self.wrap_algorithm != WRAP.as_str() {
            return Err(ServiceError::Invalid(format!(
                "backup files are wrapped with {}, not {}",
                WRAP.as_str(),
                self.wrap_algorithm.chars().take(32).collect::<String>()
            )));
        }
        if self.compute_digest()? != self.digest {
            return Err(ServiceError::Refused(
                "the backup file's digest does not match its content: it was damaged or edited"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Parse and verify a file's text.
    pub fn from_json(text: &str) -> Result<BackupFile, ServiceError> {
        let f: BackupFile = serde_json::from_str(text)
            .map_err(|e| ServiceError::Invalid(format!("not a backup file: {e}")))?;
        f.verify()?;
        Ok(f)
    }

    pub fn to_json(&self) -> Result<String, ServiceError> {
        serde_json::to_string_pretty(self)
            .map_err(|e| ServiceError::Internal(format!("backup file: {e}")))
    }
}

/// A new backup KEK and the shares of its value, one per custodian.
#[derive(Debug)]
pub struct BackupKek {
    pub key: KeyRecord,
    /// Upper-case hex of the token's check value.
    pub kcv: String,
    pub threshold: u8,
    pub shares: Vec<Share>,
}

/// What a restore did, per key version.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RestoreReport {
    pub digest: String,
    /// Unwrapped onto the token; check values reproduced.
    pub restored: Vec<KeyMention>,
    /// Already on the token: left alone.
    pub present: Vec<KeyMention>,
    /// Destroyed since the backup: never brought back.
    pub destroyed_since: Vec<KeyMention>,
}

fn system_tenant() -> Result<Tenant, ServiceError> {
    Ok(Tenant::parse(SYSTEM_TENANT)?)
}

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

fn check_value(h: &Hsm, key: &KeyRef, recorded: Option<&str>) -> Result<String, HsmError> {
    if key.algorithm.family() == KeyFamily::Hmac {
        let mac = h.mac(key, MacAlg::HmacSha256, HMAC_CHECK_MESSAGE)?;
        return Ok(hex::encode_upper(mac.get(..CHECK_LEN).unwrap_or_default()));
    }
    match recorded.filter(|k| !k.is_empty()) {
        Some(k) => Ok(k.to_owned()),
        None => Ok(h.kcv(key)?.map(hex::encode_upper).unwrap_or_default()),
    }
}

/// One version to wrap.
struct Job {
    mention: KeyMention,
    entry: BackupEntry,
    key: KeyRef,
    recorded_kcv: Option<String>,
}

/// One version to unwrap.
struct Unwrap {
    mention: KeyMention,
    spec: KeySpec,
    check: CheckMethod,
    kcv: String,
    wrapped: Vec<u8>,
}

fn mention(tenant: &str, name: &str, version: u32, kcv: Option<String>) -> KeyMention {
    KeyMention {
        tenant: tenant.to_owned(),
        name: name.to_owned(),
        version: Some(version),
        kcv,
    }
}

/// Unwrap every version or none: a check value that differs, or any
/// failure, destroys what this call made.
fn unwrap_all(h: &Hsm, kek: &KeyRef, jobs: &[Unwrap]) -> Result<(), HsmError> {
    let mut made: Vec<ObjectId> = Vec::with_capacity(jobs.len());
    let result = (|| {
        for j in jobs {
            let created = h.unwrap(kek, WRAP, &j.wrapped, &j.spec, Trust::Normal)?;
            made.push(j.spec.object_id);
            let key = KeyRef {
                object_id: j.spec.object_id,
                algorithm: j.spec.algorithm,
            };
            let got = match j.check {
                CheckMethod::ZeroBlock => created.kcv.map(hex::encode_upper).unwrap_or_default(),
                CheckMethod::HmacConstant => check_value(h, &key, None)?,
            };
            if !got.eq_ignore_ascii_case(&j.kcv) {
                return Err(HsmError::Invalid(format!(
                    "{}/{} v{}: the restored key's check value {got} is not the backup's {}",
                    j.mention.tenant,
                    j.mention.name,
                    j.mention.version.unwrap_or(0),
                    j.kcv
                )));
            }
        }
        Ok(())
    })();
    if result.is_err() {
        for id in &made {
            if let Err(e) = h.destroy(*id) {
                tracing::error!(error = %e, object = %id, "a partly restored key could not be destroyed");
            }
        }
    }
    result
}

impl KeyService {
    fn require_login(&self, role: Role, what: &str) -> Result<(), ServiceError> {
        if self.hsm.role() == role {
            return Ok(());
        }
        let needed = match role {
            Role::User => "the user's login",
            Role::SecurityOfficer => "the security officer's login",
        };
        Err(ServiceError::Refused(format!("{what} needs {needed}")))
    }

    /// The backup KEK's row, its live version and its token reference.
    async fn backup_kek(
        &self,
        name: &KeyName,
    ) -> Result<(KeyRecord, crate::store::VersionRecord, KeyRef), ServiceError> {
        let tenant = system_tenant()?;
        let rec = self.store.find_key(&tenant, name).await?.ok_or_else(|| {
            ServiceError::NotFound(format!(
                "{SYSTEM_TENANT}/{name}: no backup KEK of that name in this database"
            ))
        })?;
        if rec.usage != KeyUsage::BackupKek {
            return Err(ServiceError::Invalid(format!(
                "{SYSTEM_TENANT}/{name} is a {} key, not a backup KEK",
                rec.usage
            )));
        }
        let v = rec
            .current()
            .cloned()
            .ok_or_else(|| ServiceError::Refused(format!("{SYSTEM_TENANT}/{name} is destroyed")))?;
        if !v.trusted {
            return Err(ServiceError::Refused(format!(
                "{SYSTEM_TENANT}/{name} is not trusted"
            )));
        }
        let r = KeyRef {
            object_id: v.object_id,
            algorithm: rec.algorithm,
        };
        Ok((rec, v, r))
    }

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

    /// Create the backup KEK `kms/<name>` under the security officer's
    /// login: AES-256 from the token's generator, split into `n` shares of
    /// which any `m` rebuild it, imported CKA_TRUSTED (wrap and unwrap
    /// only, sensitive, never extractable), the value wiped. Returns the
    /// shares for the custodians and the KEK's check value. Creating a
    /// trusted KEK is a dual-control act: ceremonies call this after the
    /// quorum approved it.
    pub async fn create_backup_kek(
        &self,
        actor: &Actor,
        name: &KeyName,
        m: u8,
        n: u8,
    ) -> Result<BackupKek, ServiceError> {
        let act = Act::change(actor, "backup.kek-create")
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

    pub(crate) async fn create_backup_kek_now(
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

    /// Restore a backup onto a token that lost its keys (user login; the
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
        exportable: false,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> BackupFile {
        let mut f = BackupFile {
            format: BACKUP_FORMAT.into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            created_by: "alice".into(),
            wrap_algorithm: WRAP.as_str().into(),
            kek: BackupKekRef {
                tenant: SYSTEM_TENANT.into(),
                name: "backup-kek".into(),
                version: 1,
                kcv: "ABCDEF".into(),
            },
            entries: vec![BackupEntry {
                tenant: "t1".into(),
                name: "kmc".into(),
                version: 1,
                algorithm: "tdes2".into(),
                usage: "sd-kmc".into(),
                state: "active".into(),
                object_id: ObjectId::random().to_string(),
                exportable: false,
                check: CheckMethod::ZeroBlock,
                kcv: "123456".into(),
                wrapped: "00".repeat(24),
            }],
            skipped: Vec::new(),
            digest: String::new(),
        };
        f.digest = f.compute_digest().unwrap();
        f
    }

    #[test]
    fn km2_backup_file_round_trips_and_refuses_any_edit() {
        let f = file();
        let text = f.to_json().unwrap();
        assert_eq!(BackupFile::from_json(&text).unwrap(), f);
        for (from, to) in [
            ("\"123456\"", "\"123457\""),
            ("\"sd-kmc\"", "\"data\""),
            ("\"exportable\": false", "\"exportable\": true"),
            ("KMS-BACKUP-V1", "KMS-BACKUP-V2"),
        ] {
            let edited = text.replacen(from, to, 1);
            assert_ne!(edited, text, "{from}");
            assert!(BackupFile::from_json(&edited).is_err(), "{from}");
        }
        assert!(BackupFile::from_json("{}").is_err());
    }

    #[test]
    fn km2_extractable_iff_exportable_or_backed_up_secret() {
        let p = KeyPolicy::builtin();
        assert!(extractable(
            &p,
            KeyUsage::SdKmc,
            Algorithm::Tdes2,
            false,
            false
        ));
        assert!(!extractable(
            &p,
            KeyUsage::Audit,
            Algorithm::HmacSha256,
            false,
            false
        ));
        assert!(!extractable(
            &p,
            KeyUsage::Signing,
            Algorithm::EcP256,
            false,
            false
        ));
        assert!(!extractable(
            &p,
            KeyUsage::Kek,
            Algorithm::Rsa2048,
            false,
            false
        ));
        assert!(!extractable(
            &p,
            KeyUsage::TransportKek,
            Algorithm::Aes256,
            false,
            true
        ));
        assert!(!extractable(
            &p,
            KeyUsage::BackupKek,
            Algorithm::Aes256,
            false,
            false
        ));
        assert!(extractable(
            &p,
            KeyUsage::Data,
            Algorithm::Aes128,
            true,
            false
        ));
    }
}
