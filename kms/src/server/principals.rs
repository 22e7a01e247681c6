//! Who a client certificate is: `policies/principals.toml` maps a verified
//! certificate to a principal (name, role, tenant), by the certificate's
//! SHA-256 fingerprint or by its subject CN.
//!
//! The TLS layer has already checked that the certificate chains to the
//! configured client CA, is valid now and is not revoked; this file only
//! decides who it is. A fingerprint names exactly one certificate and is the
//! preferred match; a CN names whatever the CA issues under that name, which
//! suits a CA dedicated to the KMS and certificates renewed often. A
//! certificate that matches nothing is refused (403) and the refusal is
//! audited.

use super::tls::ClientIdentity;
use crate::model::Tenant;
use crate::service::Actor;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;

/// What a principal may do. Each endpoint names the roles it admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Reads the audit trail (search, verify, report, checkpoints, key).
    SecurityOfficer,
    /// Runs the service: metrics.
    Operator,
    /// An OTA server of one tenant (the provisioning API, to come).
    Provisioner,
    /// A key custodian (ceremonies, to come).
    Custodian,
}

impl Role {
    /// As recorded in audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::SecurityOfficer => "security-officer",
            Role::Operator => "operator",
            Role::Provisioner => "provisioner",
            Role::Custodian => "custodian",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The actor in audit records.
    pub name: String,
    pub role: Role,
    /// The tenant a provisioner is bound to; None for every other role.
    pub tenant: Option<Tenant>,
}

#[derive(Debug, thiserror::Error)]
pub enum PrincipalsError {
    #[error("cannot read the principals policy {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the principals policy {path} is not valid: {detail}")]
    Parse { path: String, detail: String },
    #[error("the principals policy {path}, principal #{index} ({name:?}): {why}")]
    Invalid {
        path: String,
        index: usize,
        name: String,
        why: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default, rename = "principal")]
    principals: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    role: Role,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    cert_sha256: Option<String>,
    #[serde(default)]
    subject_cn: Option<String>,
}

/// The loaded policy.
#[derive(Debug, Clone, Default)]
pub struct PrincipalPolicy {
    by_fingerprint: HashMap<String, Principal>,
    by_cn: HashMap<String, Principal>,
    digest: String,
}

/// Upper-case hex of a SHA-256 fingerprint written with or without colons
/// or spaces, as `openssl x509 -fingerprint -sha256` prints it or not.
fn normalize_fingerprint(s: &str) -> Option<String> {
    let hex: String = s
        .chars()
        .filter(|c| !matches!(c, ':' | ' '))
        .collect::<String>()
        .to_ascii_uppercase();
    (hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit())).then_some(hex)
}

impl PrincipalPolicy {
    pub fn load(path: &Path) -> Result<PrincipalPolicy, PrincipalsError> {
        let text = std::fs::read_to_string(path).map_err(|source| PrincipalsError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parse and check the whole file: a policy with one bad entry is
    /// refused whole rather than served in part.
    pub fn parse(text: &str, path: &str) -> Result<PrincipalPolicy, PrincipalsError> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| PrincipalsError::Parse {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
        let mut policy = PrincipalPolicy {
            digest: hex::encode_upper(Sha256::digest(text.as_bytes())),
            ..Default::default()
        };
        let mut roles: HashMap<String, (Role, Option<Tenant>)> = HashMap::new();
        for (i, e) in file.principals.into_iter().enumerate() {
            let index = i + 1;
            let invalid = |why: String| PrincipalsError::Invalid {
                path: path.to_owned(),
                index,
                name: e.name.chars().take(64).collect(),
                why,
            };
            Actor::parse(&e.name).map_err(|err| invalid(err.to_string()))?;
            let tenant = match (e.role, e.tenant.as_deref()) {
                (Role::Provisioner, Some(t)) => {
                    Some(Tenant::parse(t).map_err(|err| invalid(err.to_string()))?)
                }
                (Role::Provisioner, None) => {
                    return Err(invalid("a provisioner must name its tenant".into()))
                }
                (_, Some(_)) => {
                    return Err(invalid(format!(
                        "only provisioners are bound to a tenant, not a {}",
                        e.role
                    )))
                }
                (_, None) => None,
            };
            // One name, one role: the trail must not show the same person
            // acting in two roles depending on which certificate they used.
            if let Some((role, t)) = roles.get(&e.name) {
                if *role != e.role || *t != tenant {
                    return Err(invalid(
                        "the same name appears with another role or tenant".into(),
                    ));
                }
            }
            roles.insert(e.name.clone(), (e.role, tenant.clone()));
            let principal = Principal {
                name: e.name.clone(),
                role: e.role,
                tenant,
            };
            match (e.cert_sha256.as_deref(), e.subject_cn.as_deref()) {
                (Some(fp), None) => {
                    let fp = normalize_fingerprint(fp).ok_or_else(|| {
                        invalid("cert_sha256 must be 32 bytes of hex (colons allowed)".into())
                    })?;
                    if policy.by_fingerprint.insert(fp, principal).is_some() {
                        return Err(invalid("this fingerprint is already mapped".into()));
                    }
                }
                (None, Some(cn)) => {
                    if cn.is_empty() || cn.len() > 256 {
                        return Err(invalid("subject_cn must be 1-256 characters".into()));
                    }
                    if policy.by_cn.insert(cn.to_owned(), principal).is_some() {
                        return Err(invalid("this subject CN is already mapped".into()));
                    }
                }
                _ => {
                    return Err(invalid(
                        "give exactly one of cert_sha256 or subject_cn".into(),
                    ))
                }
            }
        }
        Ok(policy)
    }

    /// The principal of a verified certificate: by fingerprint first (it
    /// names this very certificate), else by subject CN.
    pub fn lookup(&self, id: &ClientIdentity) -> Option<&Principal> {
        self.by_fingerprint
            .get(&id.sha256)
            .or_else(|| id.subject_cn.as_deref().and_then(|cn| self.by_cn.get(cn)))
    }

    /// SHA-256 of the file as read (recorded by `server.start`).
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// How many certificates or names are mapped.
    pub fn len(&self) -> usize {
        self.by_fingerprint.len() + self.by_cn.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89";

    fn id(sha256: &str, cn: Option<&str>) -> ClientIdentity {
        ClientIdentity {
            sha256: sha256.to_owned(),
            subject_cn: cn.map(str::to_owned),
        }
    }

    #[test]
    fn the_shipped_policy_parses() {
        let p = PrincipalPolicy::parse(
            include_str!("../../../policies/principals.toml"),
            "policies/principals.toml",
        )
        .unwrap();
        assert!(!p.is_empty());
    }

    #[test]
    fn fingerprint_wins_over_cn() {
        let text = format!(
            "[[principal]]\nname='sofia'\nrole='security-officer'\ncert_sha256='{FP}'\n\
             [[principal]]\nname='ota-a'\nrole='provisioner'\ntenant='issuer-a'\nsubject_cn='ota.issuer-a.example'\n"
        );
        let p = PrincipalPolicy::parse(&text, "t").unwrap();
        let fp = normalize_fingerprint(FP).unwrap();
        let who = p.lookup(&id(&fp, Some("ota.issuer-a.example"))).unwrap();
        assert_eq!(who.name, "sofia");
        assert_eq!(who.role, Role::SecurityOfficer);
        let who = p
            .lookup(&id(&"0".repeat(64), Some("ota.issuer-a.example")))
            .unwrap();
        assert_eq!(who.role, Role::Provisioner);
        assert_eq!(
            who.tenant.as_ref().map(|t| t.to_string()).as_deref(),
            Some("issuer-a")
        );
        assert!(p.lookup(&id(&"0".repeat(64), Some("other"))).is_none());
        assert!(p.lookup(&id(&"0".repeat(64), None)).is_none());
    }

    #[test]
    fn bad_entries_are_refused_whole() {
        let bad = [
            // provisioner without a tenant
            "[[principal]]\nname='a'\nrole='provisioner'\nsubject_cn='x'\n",
            // tenant on an officer
            "[[principal]]\nname='a'\nrole='security-officer'\ntenant='t'\nsubject_cn='x'\n",
            // both matchers
            &format!("[[principal]]\nname='a'\nrole='operator'\nsubject_cn='x'\ncert_sha256='{FP}'\n"),
            // neither
            "[[principal]]\nname='a'\nrole='operator'\n",
            // short fingerprint
            "[[principal]]\nname='a'\nrole='operator'\ncert_sha256='ABCD'\n",
            // unknown role and unknown key
            "[[principal]]\nname='a'\nrole='root'\nsubject_cn='x'\n",
            "[[principal]]\nname='a'\nrole='operator'\nsubject_cn='x'\ncomment='y'\n",
            // duplicate CN
            "[[principal]]\nname='a'\nrole='operator'\nsubject_cn='x'\n[[principal]]\nname='b'\nrole='operator'\nsubject_cn='x'\n",
            // one name, two roles
            "[[principal]]\nname='a'\nrole='operator'\nsubject_cn='x'\n[[principal]]\nname='a'\nrole='security-officer'\nsubject_cn='y'\n",
            // a name that cannot be an actor
            "[[principal]]\nname=''\nrole='operator'\nsubject_cn='x'\n",
        ];
        for text in bad {
            assert!(PrincipalPolicy::parse(text, "t").is_err(), "{text}");
        }
    }
}
