//! The key policy loaded from `policies/keys.toml`.

use crate::model::KeyUsage;
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
    /// only the very first enrolment, the bootstrap, is done alone).
    Custodians,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    exportable_usages: Vec<String>,
    #[serde(default)]
    cryptoperiod_days: BTreeMap<String, u32>,
    dual_control: DualControl,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct DualControl {
    pub operations: Vec<SensitiveAction>,
    pub approvals: u32,
    pub request_ttl_minutes: u32,
}

#[derive(Debug, Clone)]
pub struct KeyPolicy {
    /// SHA-256 of the policy text, recorded in the audit trail at start-up.
    digest: String,
    exportable: Vec<KeyUsage>,
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
        for k in f.cryptoperiod_days.keys() {
            if k != "default" {
                k.parse::<KeyUsage>().map_err(|e| e.to_string())?;
            }
        }
        // Invariant 3: a policy file cannot switch dual control off.
        if f.dual_control.approvals < 1 {
            return Err("dual_control.approvals must be at least 1".into());
        }
        for must in [
            SensitiveAction::Export,
            SensitiveAction::Destroy,
            SensitiveAction::Trust,
            SensitiveAction::Reissue,
            SensitiveAction::Custodians,
        ] {
            if !f.dual_control.operations.contains(&must) {
                return Err(format!("dual_control.operations must include {must:?}"));
            }
        }
        let digest = {
            use sha2::Digest;
            hex::encode_upper(sha2::Sha256::digest(text.as_bytes()))
        };
        Ok(Self {
            digest,
            exportable,
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
            cryptoperiod_days: BTreeMap::new(),
            dual_control: DualControl {
                operations: vec![
                    SensitiveAction::Export,
                    SensitiveAction::Destroy,
                    SensitiveAction::Trust,
                    SensitiveAction::Reissue,
                    SensitiveAction::Custodians,
                ],
                approvals: 1,
                request_ttl_minutes: 60,
            },
        })
    }

    pub fn digest(&self) -> &str {
        &self.digest
    }

    pub fn may_export(&self, usage: KeyUsage) -> bool {
        self.exportable.contains(&usage)
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
    }

    #[test]
    fn invariant3_policy_cannot_disable_dual_control() {
        let text =
            include_str!("../../policies/keys.toml").replace("approvals = 1", "approvals = 0");
        assert!(KeyPolicy::parse(&text).is_err());
        let text = include_str!("../../policies/keys.toml").replace(
            "operations = [\"export\", \"destroy\", \"compromise\", \"trust\", \"reissue\", \"custodians\"]",
            "operations = []",
        );
        assert!(KeyPolicy::parse(&text).is_err());
        // TSM-DATA-1: a re-issue (releasing an SD's binding) cannot be made
        // a one-person act either.
        let text = include_str!("../../policies/keys.toml")
            .replace("\"trust\", \"reissue\", ", "\"trust\", ");
        assert!(KeyPolicy::parse(&text).is_err());
        // Issue 5: enrolling or removing a custodian is dual-controlled too.
        let text = include_str!("../../policies/keys.toml").replace(", \"custodians\"]", "]");
        assert!(KeyPolicy::parse(&text).is_err());
        // The replacements above did hit the shipped text.
        let p = KeyPolicy::parse(include_str!("../../policies/keys.toml")).unwrap();
        for a in [
            SensitiveAction::Export,
            SensitiveAction::Destroy,
            SensitiveAction::Compromise,
            SensitiveAction::Trust,
            SensitiveAction::Reissue,
            SensitiveAction::Custodians,
        ] {
            assert!(p.needs_approval(a), "{a:?}");
        }
    }
}
