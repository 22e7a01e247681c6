//! Authorization of provisioning-API requests: principal x action x key,
//! decided by the Cedar policy engine over `policies/provisioning.cedar`,
//! validated against `policies/provisioning.cedarschema`.
//!
//! Every request is "may PRINCIPAL do ACTION with KEY, the key playing ROLE
//! in the request?". The caller builds the principal from the client
//! certificate (principals policy) and the key from the metadata store, and
//! asks once per key a use case touches (for an SCP03 session: each static
//! key and the transport KEK); all must be allowed.
//!
//! Decisions are deny by default: no matching `permit`, a matching `forbid`,
//! a request that cannot be built, or any evaluation error is a deny. The
//! last is stricter than Cedar itself, which skips a policy that fails to
//! evaluate (a failing `forbid` would then not forbid).
//!
//! At load the policies are validated against the schema in strict mode; a
//! policy set with any validation error is refused, so a typo in the policy
//! stops the server at start-up instead of silently denying (or allowing)
//! at request time.

use cedar_policy::{
    Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicyId, PolicySet, Request,
    RestrictedExpression, Schema, ValidationMode, Validator,
};
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The policy file's name; the schema is [`SCHEMA_FILE`] beside it.
pub const POLICY_FILE: &str = "provisioning.cedar";
/// The schema file's name.
pub const SCHEMA_FILE: &str = "provisioning.cedarschema";

const DEFAULT_POLICY: &str = include_str!("../../policies/provisioning.cedar");
const DEFAULT_SCHEMA: &str = include_str!("../../policies/provisioning.cedarschema");

const PRINCIPAL_TYPE: &str = "Kms::Principal";
const KEY_TYPE: &str = "Kms::Key";
const ACTION_TYPE: &str = "Kms::Action";

#[derive(Debug, thiserror::Error)]
pub enum AuthzError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("policy {policy} (schema {schema}): {source}")]
    InFiles {
        policy: String,
        schema: String,
        #[source]
        source: Box<AuthzError>,
    },
    #[error("the Cedar schema is not valid: {0}")]
    Schema(String),
    #[error("the Cedar policy is not valid: {0}")]
    Policy(String),
    #[error("the policies do not validate against the schema (strict mode): {}", .0.join("; "))]
    Validation(Vec<String>),
    #[error("cannot build the authorization request: {0}")]
    Request(String),
}

/// What a provisioning request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProvisioningAction {
    Scp02Session,
    Scp03Session,
    EmvCardKeys,
    ReadKeyMetadata,
}

impl ProvisioningAction {
    pub const ALL: [ProvisioningAction; 4] = [
        ProvisioningAction::Scp02Session,
        ProvisioningAction::Scp03Session,
        ProvisioningAction::EmvCardKeys,
        ProvisioningAction::ReadKeyMetadata,
    ];

    /// The Cedar action id (`Kms::Action::"<id>"`).
    pub fn as_str(self) -> &'static str {
        match self {
            ProvisioningAction::Scp02Session => "scp02-session",
            ProvisioningAction::Scp03Session => "scp03-session",
            ProvisioningAction::EmvCardKeys => "emv-card-keys",
            ProvisioningAction::ReadKeyMetadata => "read-key-metadata",
        }
    }
}

impl std::fmt::Display for ProvisioningAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The role a key plays in a request (`context.role_of_key`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyRole {
    /// A KMC or an SD static key (ENC, MAC, DEK).
    StaticKeys,
    /// An EMV issuer master key.
    IssuerMasterKey,
    /// The KEK the result is wrapped under.
    TransportKek,
    /// The key whose metadata is read.
    Metadata,
}

impl KeyRole {
    pub const ALL: [KeyRole; 4] = [
        KeyRole::StaticKeys,
        KeyRole::IssuerMasterKey,
        KeyRole::TransportKek,
        KeyRole::Metadata,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            KeyRole::StaticKeys => "static-keys",
            KeyRole::IssuerMasterKey => "issuer-master-key",
            KeyRole::TransportKek => "transport-kek",
            KeyRole::Metadata => "metadata",
        }
    }
}

impl std::fmt::Display for KeyRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The principal of a request (`Kms::Principal`), from its certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrincipalAttrs<'a> {
    /// The entity id: the principal's name.
    pub name: &'a str,
    pub role: &'a str,
    /// Provisioners only.
    pub tenant: Option<&'a str>,
}

/// The key of a request (`Kms::Key`), from the metadata store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyAttrs<'a> {
    pub tenant: &'a str,
    pub name: &'a str,
    pub usage: &'a str,
    pub algorithm: &'a str,
    pub state: &'a str,
    pub version: u32,
    pub exportable: bool,
    pub trusted: bool,
}

/// The answer to one request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Decision {
    pub allowed: bool,
    /// The ids (`@id`) of the policies that determined the decision: the
    /// permits that matched for an allow, the forbids that matched for a
    /// deny; empty for a deny because nothing matched. Sorted.
    pub policies: Vec<String>,
    /// Evaluation errors, or why the request could not be built. Any error
    /// makes the decision a deny.
    pub errors: Vec<String>,
}

impl Decision {
    fn deny_with_error(error: String) -> Self {
        Decision {
            allowed: false,
            policies: Vec::new(),
            errors: vec![error],
        }
    }
}

/// The validated policy set and its schema. Immutable once loaded: `Send +
/// Sync`, share it in an `Arc`.
pub struct Authorizer {
    policies: PolicySet,
    schema: Schema,
    engine: cedar_policy::Authorizer,
    principal_type: EntityTypeName,
    key_type: EntityTypeName,
    action_type: EntityTypeName,
    digest: String,
    warnings: Vec<String>,
}

// Checked at compile time: the server shares one `Authorizer` between tasks.
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Authorizer>();
};

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer")
            .field("digest", &self.digest)
            .field("policies", &self.policy_ids())
            .finish_non_exhaustive()
    }
}

impl Authorizer {
    /// Loads `provisioning.cedar` from a directory (or the given policy
    /// file) and `provisioning.cedarschema` beside it, and validates them.
    pub fn load(dir_or_policy_file: &Path) -> Result<Authorizer, AuthzError> {
        let (policy_path, schema_path) = if dir_or_policy_file.is_dir() {
            (
                dir_or_policy_file.join(POLICY_FILE),
                dir_or_policy_file.join(SCHEMA_FILE),
            )
        } else {
            let dir = dir_or_policy_file.parent().unwrap_or(Path::new(""));
            (dir_or_policy_file.to_path_buf(), dir.join(SCHEMA_FILE))
        };
        let policy = read(&policy_path)?;
        let schema = read(&schema_path)?;
        Self::from_sources(&policy, &schema).map_err(|e| AuthzError::InFiles {
            policy: policy_path.display().to_string(),
            schema: schema_path.display().to_string(),
            source: Box::new(e),
        })
    }

    /// The policies shipped in `policies/`, built into the binary.
    pub fn default_policies() -> Result<Authorizer, AuthzError> {
        Self::from_sources(DEFAULT_POLICY, DEFAULT_SCHEMA)
    }

    /// Parses the schema (Cedar syntax) and the policies, names each policy
    /// by its `@id` annotation (else Cedar's `policyN`), and validates the
    /// policies against the schema in strict mode: any error refuses the
    /// whole set. Templates are refused (nothing here links them).
    pub fn from_sources(policy: &str, schema: &str) -> Result<Authorizer, AuthzError> {
        let (schema_parsed, schema_warnings) =
            Schema::from_cedarschema_str(schema).map_err(|e| AuthzError::Schema(e.to_string()))?;
        let mut warnings: Vec<String> = schema_warnings.map(|w| w.to_string()).collect();

        let parsed = PolicySet::from_str(policy).map_err(|errs| {
            AuthzError::Policy(
                errs.iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })?;
        if let Some(t) = parsed.templates().next() {
            return Err(AuthzError::Policy(format!(
                "templates are not supported (template {})",
                t.id()
            )));
        }
        let mut policies = PolicySet::new();
        let mut seen = BTreeSet::new();
        for p in parsed.policies() {
            let id = p
                .annotation("id")
                .map(str::to_owned)
                .unwrap_or_else(|| p.id().to_string());
            if id.is_empty() {
                return Err(AuthzError::Policy(format!(
                    "policy {} has an empty @id",
                    p.id()
                )));
            }
            if !seen.insert(id.clone()) {
                return Err(AuthzError::Policy(format!("two policies have @id {id:?}")));
            }
            policies
                .add(p.new_id(PolicyId::new(&id)))
                .map_err(|e| AuthzError::Policy(e.to_string()))?;
        }

        let result =
            Validator::new(schema_parsed.clone()).validate(&policies, ValidationMode::Strict);
        let errors: Vec<String> = result.validation_errors().map(|e| e.to_string()).collect();
        if !errors.is_empty() {
            return Err(AuthzError::Validation(errors));
        }
        warnings.extend(result.validation_warnings().map(|w| w.to_string()));

        let type_name = |s: &str| {
            EntityTypeName::from_str(s).map_err(|e| AuthzError::Schema(format!("{s}: {e}")))
        };
        let mut hash = Sha256::new();
        hash.update(policy.as_bytes());
        hash.update(b"\n");
        hash.update(schema.as_bytes());
        Ok(Authorizer {
            policies,
            schema: schema_parsed,
            engine: cedar_policy::Authorizer::new(),
            principal_type: type_name(PRINCIPAL_TYPE)?,
            key_type: type_name(KEY_TYPE)?,
            action_type: type_name(ACTION_TYPE)?,
            digest: hex::encode_upper(hash.finalize()),
            warnings,
        })
    }

    /// Upper-case hex SHA-256 of the policy text, "\n" and the schema text:
    /// recorded in the audit trail when the server starts.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The policies' ids, sorted.
    pub fn policy_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .policies
            .policies()
            .map(|p| p.id().to_string())
            .collect();
        ids.sort();
        ids
    }

    /// Schema and validation warnings (not errors): worth logging at start.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Decides one request. Never panics: a request that cannot be built is
    /// a deny with the reason in `errors`; so is any evaluation error.
    pub fn authorize(
        &self,
        p: &PrincipalAttrs<'_>,
        action: ProvisioningAction,
        key: &KeyAttrs<'_>,
        role: KeyRole,
    ) -> Decision {
        let (request, entities) = match self.request(p, action, key, role) {
            Ok(built) => built,
            Err(e) => return Decision::deny_with_error(e.to_string()),
        };
        let response = self
            .engine
            .is_authorized(&request, &self.policies, &entities);
        let diagnostics = response.diagnostics();
        let errors: Vec<String> = diagnostics.errors().map(|e| e.to_string()).collect();
        let mut policies: Vec<String> = diagnostics.reason().map(|id| id.to_string()).collect();
        policies.sort();
        Decision {
            allowed: response.decision() == cedar_policy::Decision::Allow && errors.is_empty(),
            policies,
            errors,
        }
    }

    /// The Cedar request and entities, both checked against the schema.
    fn request(
        &self,
        p: &PrincipalAttrs<'_>,
        action: ProvisioningAction,
        key: &KeyAttrs<'_>,
        role: KeyRole,
    ) -> Result<(Request, Entities), AuthzError> {
        let bad = |e: &dyn std::fmt::Display| AuthzError::Request(e.to_string());
        let string = |s: &str| RestrictedExpression::new_string(s.to_owned());

        let principal_uid =
            EntityUid::from_type_name_and_id(self.principal_type.clone(), EntityId::new(p.name));
        let mut principal_attrs = HashMap::from([("role".to_owned(), string(p.role))]);
        if let Some(tenant) = p.tenant {
            principal_attrs.insert("tenant".to_owned(), string(tenant));
        }
        let principal = Entity::new(principal_uid.clone(), principal_attrs, HashSet::new())
            .map_err(|e| bad(&e))?;

        // Names are unique per tenant only (KM-4): the id carries both.
        let key_uid = EntityUid::from_type_name_and_id(
            self.key_type.clone(),
            EntityId::new(format!("{}/{}", key.tenant, key.name)),
        );
        let key_attrs = HashMap::from([
            ("tenant".to_owned(), string(key.tenant)),
            ("name".to_owned(), string(key.name)),
            ("usage".to_owned(), string(key.usage)),
            ("algorithm".to_owned(), string(key.algorithm)),
            ("state".to_owned(), string(key.state)),
            (
                "version".to_owned(),
                RestrictedExpression::new_long(i64::from(key.version)),
            ),
            (
                "exportable".to_owned(),
                RestrictedExpression::new_bool(key.exportable),
            ),
            (
                "trusted".to_owned(),
                RestrictedExpression::new_bool(key.trusted),
            ),
        ]);
        let key_entity =
            Entity::new(key_uid.clone(), key_attrs, HashSet::new()).map_err(|e| bad(&e))?;

        let entities = Entities::from_entities([principal, key_entity], Some(&self.schema))
            .map_err(|e| bad(&e))?;
        let context = Context::from_pairs([("role_of_key".to_owned(), string(role.as_str()))])
            .map_err(|e| bad(&e))?;
        let action_uid = EntityUid::from_type_name_and_id(
            self.action_type.clone(),
            EntityId::new(action.as_str()),
        );
        let request = Request::new(
            principal_uid,
            action_uid,
            key_uid,
            context,
            Some(&self.schema),
        )
        .map_err(|e| bad(&e))?;
        Ok((request, entities))
    }
}

fn read(path: &PathBuf) -> Result<String, AuthzError> {
    std::fs::read_to_string(path).map_err(|source| AuthzError::Read {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{KeyState, KeyUsage};

    const PROVISIONER: PrincipalAttrs<'static> = PrincipalAttrs {
        name: "ota-issuer-a",
        role: "provisioner",
        tenant: Some("issuer-a"),
    };

    const DERIVATIONS: [ProvisioningAction; 3] = [
        ProvisioningAction::Scp02Session,
        ProvisioningAction::Scp03Session,
        ProvisioningAction::EmvCardKeys,
    ];

    fn authz() -> Authorizer {
        Authorizer::default_policies().unwrap()
    }

    fn key(tenant: &'static str, usage: KeyUsage) -> KeyAttrs<'static> {
        KeyAttrs {
            tenant,
            name: "k1",
            usage: usage.as_str(),
            algorithm: "aes-128",
            state: KeyState::Active.as_str(),
            version: 1,
            exportable: false,
            trusted: usage == KeyUsage::TransportKek,
        }
    }

    /// Each role with the usages that fit it.
    fn fitting() -> Vec<(KeyRole, KeyUsage)> {
        vec![
            (KeyRole::StaticKeys, KeyUsage::SdKmc),
            (KeyRole::StaticKeys, KeyUsage::SdStaticEnc),
            (KeyRole::StaticKeys, KeyUsage::SdStaticMac),
            (KeyRole::StaticKeys, KeyUsage::SdStaticDek),
            (KeyRole::IssuerMasterKey, KeyUsage::ImkAc),
            (KeyRole::IssuerMasterKey, KeyUsage::ImkSmi),
            (KeyRole::IssuerMasterKey, KeyUsage::ImkSmc),
            (KeyRole::TransportKek, KeyUsage::TransportKek),
        ]
    }

    #[test]
    fn the_shipped_policies_load_and_validate() {
        let a = authz();
        assert_eq!(
            a.policy_ids(),
            vec![
                "km-4-tenant-isolation",
                "provisioner-issuer-master-keys",
                "provisioner-reads-key-metadata",
                "provisioner-static-keys",
                "provisioner-transport-kek",
            ]
        );
        assert!(a.warnings().is_empty(), "{:?}", a.warnings());
    }

    #[test]
    fn the_digest_is_stable_upper_case_hex_sha256_of_policy_and_schema() {
        let a = authz();
        let b = authz();
        assert_eq!(a.digest(), b.digest());
        assert_eq!(a.digest().len(), 64);
        assert!(a
            .digest()
            .chars()
            .all(|c| c.is_ascii_digit() || ('A'..='F').contains(&c)));
        let expected = hex::encode_upper(Sha256::digest(
            format!("{DEFAULT_POLICY}\n{DEFAULT_SCHEMA}").as_bytes(),
        ));
        assert_eq!(a.digest(), expected);
        // A change to either file changes the digest.
        let changed =
            Authorizer::from_sources(&format!("{DEFAULT_POLICY}\n// x"), DEFAULT_SCHEMA).unwrap();
        assert_ne!(changed.digest(), a.digest());
    }

    #[test]
    fn load_reads_the_policy_and_the_schema_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(POLICY_FILE), DEFAULT_POLICY).unwrap();
        std::fs::write(dir.path().join(SCHEMA_FILE), DEFAULT_SCHEMA).unwrap();
        let from_dir = Authorizer::load(dir.path()).unwrap();
        let from_file = Authorizer::load(&dir.path().join(POLICY_FILE)).unwrap();
        assert_eq!(from_dir.digest(), authz().digest());
        assert_eq!(from_file.digest(), authz().digest());

        std::fs::remove_file(dir.path().join(SCHEMA_FILE)).unwrap();
        assert!(matches!(
            Authorizer::load(dir.path()),
            Err(AuthzError::Read { .. })
        ));
    }

    #[test]
    fn km_4_a_provisioner_derives_with_its_own_tenants_active_keys() {
        let a = authz();
        for action in DERIVATIONS {
            for (role, usage) in fitting() {
                let d = a.authorize(&PROVISIONER, action, &key("issuer-a", usage), role);
                assert!(d.allowed, "{action} {role} {usage}: {d:?}");
                assert_eq!(d.policies.len(), 1, "{d:?}");
                assert!(d.errors.is_empty(), "{d:?}");
            }
        }
    }

    #[test]
    fn km_4_a_provisioner_never_uses_another_tenants_key() {
        let a = authz();
        for action in ProvisioningAction::ALL {
            for (role, usage) in fitting() {
                // The other tenant's key fits the role in every other way.
                let role = if action == ProvisioningAction::ReadKeyMetadata {
                    KeyRole::Metadata
                } else {
                    role
                };
                let d = a.authorize(&PROVISIONER, action, &key("issuer-b", usage), role);
                assert!(!d.allowed, "{action} {role} {usage}: {d:?}");
                assert_eq!(d.policies, vec!["km-4-tenant-isolation"]);
            }
        }
    }

    #[test]
    fn km_4_a_principal_without_a_tenant_uses_no_key() {
        let a = authz();
        let no_tenant = PrincipalAttrs {
            name: "ota-issuer-a",
            role: "provisioner",
            tenant: None,
        };
        for action in ProvisioningAction::ALL {
            let d = a.authorize(
                &no_tenant,
                action,
                &key("issuer-a", KeyUsage::SdKmc),
                KeyRole::StaticKeys,
            );
            assert!(!d.allowed, "{action}: {d:?}");
            assert_eq!(d.policies, vec!["km-4-tenant-isolation"]);
        }
    }

    #[test]
    fn only_active_keys_are_used_for_derivation() {
        let a = authz();
        for state in KeyState::ALL {
            if state == KeyState::Active {
                continue;
            }
            for action in DERIVATIONS {
                for (role, usage) in fitting() {
                    let k = KeyAttrs {
                        state: state.as_str(),
                        ..key("issuer-a", usage)
                    };
                    let d = a.authorize(&PROVISIONER, action, &k, role);
                    assert!(!d.allowed, "{state:?} {action} {role}: {d:?}");
                    assert!(d.policies.is_empty(), "{d:?}");
                }
            }
        }
    }

    #[test]
    fn a_key_whose_usage_does_not_fit_its_role_is_refused() {
        let a = authz();
        let fits = fitting();
        for action in DERIVATIONS {
            for role in KeyRole::ALL {
                for usage in KeyUsage::ALL {
                    let d = a.authorize(&PROVISIONER, action, &key("issuer-a", usage), role);
                    assert_eq!(
                        d.allowed,
                        fits.contains(&(role, usage)),
                        "{action} {role} {usage}: {d:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn km_5_an_untrusted_transport_kek_never_wraps() {
        let a = authz();
        for action in DERIVATIONS {
            let k = KeyAttrs {
                trusted: false,
                ..key("issuer-a", KeyUsage::TransportKek)
            };
            let d = a.authorize(&PROVISIONER, action, &k, KeyRole::TransportKek);
            assert!(!d.allowed, "{action}: {d:?}");
            // A trusted plain KEK is not a transport KEK either.
            let k = KeyAttrs {
                trusted: true,
                ..key("issuer-a", KeyUsage::Kek)
            };
            let d = a.authorize(&PROVISIONER, action, &k, KeyRole::TransportKek);
            assert!(!d.allowed, "{action}: {d:?}");
        }
    }

    #[test]
    fn tsm_ac_3_only_provisioners_use_the_provisioning_api() {
        let a = authz();
        for role in [
            "security-officer",
            "operator",
            "custodian",
            "Provisioner",
            "",
        ] {
            let p = PrincipalAttrs {
                role,
                ..PROVISIONER
            };
            for action in ProvisioningAction::ALL {
                for (key_role, usage) in fitting() {
                    let d = a.authorize(&p, action, &key("issuer-a", usage), key_role);
                    assert!(!d.allowed, "{role} {action}: {d:?}");
                }
            }
        }
    }

    #[test]
    fn key_metadata_is_readable_in_every_state_but_destroyed() {
        let a = authz();
        for state in KeyState::ALL {
            let k = KeyAttrs {
                state: state.as_str(),
                ..key("issuer-a", KeyUsage::SdKmc)
            };
            let d = a.authorize(
                &PROVISIONER,
                ProvisioningAction::ReadKeyMetadata,
                &k,
                KeyRole::Metadata,
            );
            let destroyed = matches!(state, KeyState::Destroyed | KeyState::DestroyedCompromised);
            assert_eq!(d.allowed, !destroyed, "{state:?}: {d:?}");
            if d.allowed {
                assert_eq!(d.policies, vec!["provisioner-reads-key-metadata"]);
            }
        }
        let deactivated = KeyAttrs {
            state: KeyState::Deactivated.as_str(),
            ..key("issuer-a", KeyUsage::ImkAc)
        };
        assert!(
            a.authorize(
                &PROVISIONER,
                ProvisioningAction::ReadKeyMetadata,
                &deactivated,
                KeyRole::Metadata
            )
            .allowed
        );
    }

    #[test]
    fn a_policy_that_fails_schema_validation_is_refused() {
        // `tenant` is optional: strict validation requires a `has` test.
        let unguarded = r#"
            @id("bad")
            permit (principal, action, resource is Kms::Key)
            when { principal.tenant == resource.tenant };
        "#;
        let err = Authorizer::from_sources(unguarded, DEFAULT_SCHEMA).unwrap_err();
        assert!(
            matches!(err, AuthzError::Validation(ref e) if !e.is_empty()),
            "{err}"
        );

        // An attribute the schema does not have.
        let typo = DEFAULT_POLICY.replace("resource.trusted", "resource.trustd");
        let err = Authorizer::from_sources(&typo, DEFAULT_SCHEMA).unwrap_err();
        assert!(matches!(err, AuthzError::Validation(_)), "{err}");

        // An action the schema does not declare.
        let unknown = r#"permit (principal, action == Kms::Action::"export", resource);"#;
        let err = Authorizer::from_sources(unknown, DEFAULT_SCHEMA).unwrap_err();
        assert!(matches!(err, AuthzError::Validation(_)), "{err}");
    }

    #[test]
    fn broken_sources_and_duplicate_ids_are_refused() {
        assert!(matches!(
            Authorizer::from_sources("permit (", DEFAULT_SCHEMA),
            Err(AuthzError::Policy(_))
        ));
        assert!(matches!(
            Authorizer::from_sources(DEFAULT_POLICY, "namespace Kms {"),
            Err(AuthzError::Schema(_))
        ));
        let twice = r#"
            @id("same") permit (principal, action, resource) when { false };
            @id("same") permit (principal, action, resource) when { false };
        "#;
        assert!(matches!(
            Authorizer::from_sources(twice, DEFAULT_SCHEMA),
            Err(AuthzError::Policy(_))
        ));
        let template = r#"permit (principal == ?principal, action, resource);"#;
        assert!(matches!(
            Authorizer::from_sources(template, DEFAULT_SCHEMA),
            Err(AuthzError::Policy(_))
        ));
    }

    #[test]
    fn deny_by_default_and_forbid_overrides_permit() {
        // No policies: nothing is allowed.
        let empty = Authorizer::from_sources("", DEFAULT_SCHEMA).unwrap();
        let d = empty.authorize(
            &PROVISIONER,
            ProvisioningAction::Scp03Session,
            &key("issuer-a", KeyUsage::SdKmc),
            KeyRole::StaticKeys,
        );
        assert!(!d.allowed && d.policies.is_empty() && d.errors.is_empty());

        // A permit-everything added beside the shipped forbid still cannot
        // cross tenants.
        let wide =
            format!("{DEFAULT_POLICY}\n@id(\"everything\") permit (principal, action, resource);");
        let a = Authorizer::from_sources(&wide, DEFAULT_SCHEMA).unwrap();
        let d = a.authorize(
            &PROVISIONER,
            ProvisioningAction::Scp03Session,
            &key("issuer-b", KeyUsage::SdKmc),
            KeyRole::StaticKeys,
        );
        assert!(!d.allowed);
        assert_eq!(d.policies, vec!["km-4-tenant-isolation"]);
    }

    #[test]
    fn odd_identifier_values_are_data_not_policy_source() {
        let a = authz();
        let p = PrincipalAttrs {
            name: "a\"::\" ) permit",
            role: "provisioner",
            tenant: Some("issuer-a\" || true"),
        };
        let d = a.authorize(
            &p,
            ProvisioningAction::Scp03Session,
            &key("issuer-a", KeyUsage::SdKmc),
            KeyRole::StaticKeys,
        );
        assert!(!d.allowed, "{d:?}");
        assert_eq!(d.policies, vec!["km-4-tenant-isolation"]);
    }

    #[test]
    fn the_authorizer_is_shared_between_threads() {
        let a = std::sync::Arc::new(authz());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let a = a.clone();
                std::thread::spawn(move || {
                    a.authorize(
                        &PROVISIONER,
                        ProvisioningAction::Scp02Session,
                        &key("issuer-a", KeyUsage::SdKmc),
                        KeyRole::StaticKeys,
                    )
                    .allowed
                })
            })
            .collect();
        for h in handles {
            assert!(h.join().unwrap());
        }
    }
}
