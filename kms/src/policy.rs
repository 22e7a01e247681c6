//! The key policy loaded from `policies/keys.toml`.

use crate::model::{CustodianRole, KeyUsage};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("policy {path} is not valid: {detail}")]
    Invalid { path: String, detail: String },
}

/// An operation that dual control may cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SensitiveAction {
    Export,
    Destroy,
    Compromise,
    /// Create a KEK with CKA_TRUSTED (it may then wrap exportable keys).
    Trust,
    /// Release a Security Domain's binding to a card so it can receive
    /// another card's keys (TSM-DATA-1 re-issue).
    Reissue,
    /// Enrol or remove a custodian, security officer or operator (issue 5;
    /// only during the founding is anyone enrolled alone).
    Custodians,
    /// Import a key from custodians' components (issue 5).
    Import,
    /// Adopt a new `keys.toml` (issue 5): approved by its SHA-256.
    Policy,
}

impl SensitiveAction {
    pub const ALL: [SensitiveAction; 8] = [
        SensitiveAction::Export,
        SensitiveAction::Destroy,
        SensitiveAction::Compromise,
        SensitiveAction::Trust,
        SensitiveAction::Reissue,
        SensitiveAction::Custodians,
        SensitiveAction::Import,
        SensitiveAction::Policy,
    ];

    /// Invariant 3: the actions no policy may leave to one person.
    pub const MANDATORY: [SensitiveAction; 7] = [
        SensitiveAction::Export,
        SensitiveAction::Destroy,
        SensitiveAction::Import,
        SensitiveAction::Trust,
        SensitiveAction::Reissue,
        SensitiveAction::Custodians,
        SensitiveAction::Policy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SensitiveAction::Export => "export",
            SensitiveAction::Destroy => "destroy",
            SensitiveAction::Compromise => "compromise",
            SensitiveAction::Trust => "trust",
            SensitiveAction::Reissue => "reissue",
            SensitiveAction::Custodians => "custodians",
            SensitiveAction::Import => "import",
            SensitiveAction::Policy => "policy",
        }
    }

    /// Whether only a security officer may request it: decisions about
    /// people and about the policy itself.
    pub fn officer_requests(self) -> bool {
        matches!(self, SensitiveAction::Custodians | SensitiveAction::Policy)
    }
}

impl std::fmt::Display for SensitiveAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who must approve one action: `approvals` distinct people, besides the
/// requester, each holding one of `roles`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Quorum {
    pub approvals: u32,
    pub roles: Vec<CustodianRole>,
}

/// The roles that approve when a policy names none.
pub const DEFAULT_APPROVER_ROLES: [CustodianRole; 2] =
    [CustodianRole::SecurityOfficer, CustodianRole::Custodian];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    exportable_usages: Vec<String>,
    /// Usages whose keys are backed up under the backup KEK (KM-2).
    #[serde(default)]
    backup_usages: Vec<String>,
    #[serde(default)]
    cryptoperiod_days: BTreeMap<String, u32>,
    dual_control: DualControl,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct DualControl {
    pub operations: Vec<SensitiveAction>,
    /// The default number of approvals.
    pub approvals: u32,
    pub request_ttl_minutes: u32,
    /// Per action: its own number of approvals and approver roles.
    #[serde(default)]
    pub quorum: BTreeMap<SensitiveAction, QuorumEntry>,
}

/// `[dual_control.quorum.<action>]` as written.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct QuorumEntry {
    pub approvals: Option<u32>,
    pub roles: Option<Vec<CustodianRole>>,
}

#[derive(Debug, Clone)]
pub struct KeyPolicy {
    /// SHA-256 of the policy text, recorded in the audit trail at start-up.
    digest: String,
    exportable: Vec<KeyUsage>,
    backed_up: Vec<KeyUsage>,
    cryptoperiod_days: BTreeMap<String, u32>,
    pub dual_control: DualControl,
}

impl KeyPolicy {
    pub fn load(dir: &Path) -> Result<Self, PolicyError> {
        let path = dir.join("keys.toml");
        let text = std::fs::read_to_string(&path).map_err(|source| PolicyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|detail| PolicyError::Invalid {
            path: path.display().to_string(),
            detail,
        })
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let f: PolicyFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let exportable = f
            .exportable_usages
            .iter()
            .map(|u| u.parse::<KeyUsage>().map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let backed_up = parse_backup_usages(&f.backup_usages)?;
        for k in f.cryptoperiod_days.keys() {
            if k != "default" {
                k.parse::<KeyUsage>().map_err(|e| e.to_string())?;
            }
        }
        // Invariant 3: a policy file cannot switch dual control off.
        if f.dual_control.approvals < 1 {
            return Err("dual_control.approvals must be at least 1".into());
        }
        for must in SensitiveAction::MANDATORY {
            if !f.dual_control.operations.contains(&must) {
                return Err(format!("dual_control.operations must include {must}"));
            }
        }
        for (action, q) in &f.dual_control.quorum {
            if q.approvals == Some(0) {
                return Err(format!(
                    "dual_control.quorum.{action}.approvals must be at least 1"
                ));
            }
            if q.roles.as_ref().is_some_and(Vec::is_empty) {
                return Err(format!(
                    "dual_control.quorum.{action}.roles names nobody who could approve"
                ));
            }
            if !f.dual_control.operations.contains(action) {
                return Err(format!(
                    "dual_control.quorum.{action} is for an operation not under dual control"
                ));
            }
        }
        let digest = {
            use sha2::Digest;
            hex::encode_upper(sha2::Sha256::digest(text.as_bytes()))
        };
        Ok(Self {
            digest,
            exportable,
            backed_up,
            cryptoperiod_days: f.cryptoperiod_days,
            dual_control: f.dual_control,
        })
    }

    /// The policy shipped in `policies/keys.toml`, for tests and defaults.
    pub fn builtin() -> Self {
        // The shipped file is part of the build; a parse failure is a bug
        // caught by the unit test below.
        Self::parse(include_str!("../../policies/keys.toml")).unwrap_or_else(|_| Self {
            digest: String::new(),
            exportable: Vec::new(),
            backed_up: Vec::new(),
            cryptoperiod_days: BTreeMap::new(),
            dual_control: DualControl {
                operations: vec![
                    SensitiveAction::Export,
                    SensitiveAction::Destroy,
                    SensitiveAction::Trust,
                    SensitiveAction::Reissue,
                    SensitiveAction::Custodians,
                    SensitiveAction::Import,
                    SensitiveAction::Policy,
                ],
                approvals: 1,
                request_ttl_minutes: 60,
                quorum: BTreeMap::new(),
            },
        })
    }

    pub fn digest(&self) -> &str {
        &self.digest
    }

    pub fn may_export(&self, usage: KeyUsage) -> bool {
        self.exportable.contains(&usage)
    }

    /// Whether keys of this usage are backed up (KM-2): such secret keys are
    /// created CKA_EXTRACTABLE with CKA_WRAP_WITH_TRUSTED, so the backup
    /// KEK (trusted) can wrap them; the export path still refuses them
    /// unless they are also exportable.
    pub fn backs_up(&self, usage: KeyUsage) -> bool {
        self.backed_up.contains(&usage)
    }

    pub fn cryptoperiod_days(&self, usage: KeyUsage) -> u32 {
        self.cryptoperiod_days
            .get(usage.as_str())
            .or_else(|| self.cryptoperiod_days.get("default"))
            .copied()
            .unwrap_or(730)
    }

    pub fn needs_approval(&self, action: SensitiveAction) -> bool {
        self.dual_control.operations.contains(&action)
    }

    /// Who must approve `action` (issue 5, item 2): the action's own table,
    /// else the default number of approvals from security officers and
    /// custodians.
    pub fn quorum(&self, action: SensitiveAction) -> Quorum {
        let entry = self.dual_control.quorum.get(&action);
        Quorum {
            approvals: entry
                .and_then(|q| q.approvals)
                .unwrap_or(self.dual_control.approvals),
            roles: entry
                .and_then(|q| q.roles.clone())
                .unwrap_or_else(|| DEFAULT_APPROVER_ROLES.to_vec()),
        }
    }
}

/// The backup KEK is recovered from its custodians' shares, never from a
/// backup made under itself; the KMS's own audit and signing keys stay on
/// the token (the signing key is a private key, and neither is needed to
/// recover the issuer's keys).
fn parse_backup_usages(names: &[String]) -> Result<Vec<KeyUsage>, String> {
    let mut out = Vec::with_capacity(names.len());
    for n in names {
        let u = n.parse::<KeyUsage>().map_err(|e| e.to_string())?;
        if matches!(u, KeyUsage::BackupKek | KeyUsage::Audit | KeyUsage::Signing) {
            return Err(format!("backup_usages cannot include {u}"));
        }
        out.push(u);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_policy_parses() {
        let text = include_str!("../../policies/keys.toml");
        let p = KeyPolicy::parse(text).unwrap();
        assert!(!p.may_export(KeyUsage::SdKmc));
        assert!(p.may_export(KeyUsage::SdStaticEnc));
        assert_eq!(p.cryptoperiod_days(KeyUsage::SdKmc), 1095);
        assert_eq!(p.cryptoperiod_days(KeyUsage::Data), 730);
        // KM-2: master keys are backed up though never exportable.
        assert!(p.backs_up(KeyUsage::SdKmc));
        assert!(p.backs_up(KeyUsage::ImkAc));
        assert!(!p.backs_up(KeyUsage::Audit));
        assert!(!p.backs_up(KeyUsage::BackupKek));
    }

    #[test]
    fn km2_backup_kek_and_own_keys_are_never_backed_up() {
        for u in ["backup-kek", "audit", "signing"] {
            let text = include_str!("../../policies/keys.toml")
                .replace("backup_usages = [", &format!("backup_usages = [\"{u}\", "));
            assert!(KeyPolicy::parse(&text).is_err(), "{u}");
        }
    }

    #[test]
    fn invariant3_policy_cannot_disable_dual_control() {
        let text =
            include_str!("../../policies/keys.toml").replace("approvals = 1", "approvals = 0");
        assert!(KeyPolicy::parse(&text).is_err());
        let text = include_str!("../../policies/keys.toml").replace(
            "operations = [\"export\", \"destroy\", \"import\", \"compromise\", \"trust\", \"reissue\", \"custodians\", \"policy\"]",
            "operations = []",
        );
        assert!(KeyPolicy::parse(&text).is_err());
        // TSM-DATA-1: a re-issue (releasing an SD's binding) cannot be made
        // a one-person act either.
        let text = include_str!("../../policies/keys.toml")
            .replace("\"trust\", \"reissue\", ", "\"trust\", ");
        assert!(KeyPolicy::parse(&text).is_err());
        // Issue 5: enrolling or removing a custodian is dual-controlled too.
        let text = include_str!("../../policies/keys.toml").replace("\"custodians\", ", "");
        assert!(KeyPolicy::parse(&text).is_err());
        // Issue 5: so are imports by components and policy changes.
        for a in ["\"import\", ", ", \"policy\""] {
            let text = include_str!("../../policies/keys.toml").replace(a, "");
            assert_ne!(text, include_str!("../../policies/keys.toml"));
            assert!(KeyPolicy::parse(&text).is_err(), "{a}");
        }
        // Nor can a quorum table ask for no approval or no approver.
        assert!(KeyPolicy::parse(&compromise_quorum("approvals = 0")).is_err());
        assert!(KeyPolicy::parse(&compromise_quorum("roles = []")).is_err());
        // The replacements above did hit the shipped text.
        let p = KeyPolicy::parse(include_str!("../../policies/keys.toml")).unwrap();
        for a in [
            SensitiveAction::Export,
            SensitiveAction::Destroy,
            SensitiveAction::Compromise,
            SensitiveAction::Trust,
            SensitiveAction::Reissue,
            SensitiveAction::Custodians,
            SensitiveAction::Import,
            SensitiveAction::Policy,
        ] {
            assert!(p.needs_approval(a), "{a:?}");
            assert!(p.quorum(a).approvals >= 1, "{a:?}");
        }
    }

    /// The shipped policy with the compromise quorum table's body replaced.
    fn compromise_quorum(body: &str) -> String {
        let table = "[dual_control.quorum.compromise]\napprovals = 1\nroles = [\"security-officer\", \"custodian\"]\n";
        let shipped = include_str!("../../policies/keys.toml");
        assert!(shipped.contains(table));
        shipped.replace(
            table,
            &format!("[dual_control.quorum.compromise]\n{body}\n"),
        )
    }

    #[test]
    fn quorum_by_role_defaults_and_overrides() {
        let p = KeyPolicy::parse(&compromise_quorum(
            "approvals = 3\nroles = [\"security-officer\"]",
        ))
        .unwrap();
        assert_eq!(
            p.quorum(SensitiveAction::Compromise),
            Quorum {
                approvals: 3,
                roles: vec![CustodianRole::SecurityOfficer]
            }
        );
        let p = KeyPolicy::parse(&compromise_quorum("")).unwrap();
        let q = p.quorum(SensitiveAction::Compromise);
        assert_eq!(q.approvals, 1);
        assert_eq!(q.roles, DEFAULT_APPROVER_ROLES.to_vec());
        assert!(KeyPolicy::parse(&compromise_quorum("roles = [\"janitor\"]")).is_err());
    }
}
