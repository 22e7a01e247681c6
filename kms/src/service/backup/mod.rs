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

mod kek;
mod make;
mod restore;
mod system_keys;

pub use system_keys::{renew_lost_system_keys, SystemKeysRenewal};

use super::{KeyService, ServiceError};
use crate::audit::{KeyMention, SYSTEM_TENANT};
use crate::crypto::shares::Share;
use crate::hsm::{Hsm, HsmError, KeyRef, KeySpec, MacAlg, Role, Trust, WrapAlg};
use crate::model::{Algorithm, KeyFamily, KeyName, KeyUsage, ObjectId, Tenant};
use crate::policy::KeyPolicy;
use crate::store::KeyRecord;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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

/// A new backup KEK and the shares of its value, one per custodian (not
/// `Clone`: the shares exist once, and are wiped when dropped).
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
