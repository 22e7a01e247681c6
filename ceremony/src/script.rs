//! Ceremony scripts: one TOML file per ceremony in `policies/ceremonies/`.
//! The step vocabulary is fixed here, in Rust; a script only orders steps,
//! names who takes part and words what each step shows. A script that
//! names an unknown step kind, an undeclared role or parameter is refused
//! when it is loaded, before anyone in the room types anything.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    #[error("{path}: {why}")]
    Unreadable { path: PathBuf, why: String },
    #[error("{path}: {why}")]
    Invalid { path: PathBuf, why: String },
    #[error("no ceremony named {0:?} (see `kms-ceremony list`)")]
    NotFound(String),
    #[error("parameter {0}: {1}")]
    Parameter(String, String),
}

/// A whole script.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Script {
    pub name: String,
    pub title: String,
    pub purpose: String,
    /// Requirement ids of the standard this ceremony serves.
    #[serde(default)]
    pub requirements: Vec<String>,
    #[serde(default)]
    pub parameters: BTreeMap<String, ParamSpec>,
    /// Who must be present, by the script's role name.
    pub roles: BTreeMap<String, RoleSpec>,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamSpec {
    pub help: String,
    /// Absent: the parameter must be given (`--param name=value`).
    #[serde(default)]
    pub default: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleSpec {
    /// The enrolled role each person must hold: `security-officer`,
    /// `custodian` or `operator`.
    pub enrolled: String,
    /// How many distinct people.
    pub count: u32,
    #[serde(default)]
    pub help: String,
}

/// The sensitive operations a `request` step can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OperationKind {
    /// Export a key wrapped under a KEK (parameters tenant, key, kek, wrap).
    Export,
    /// Destroy a key version (tenant, key, version, reason).
    Destroy,
    /// Import a key entered as components (tenant, key, algorithm, usage,
    /// kcv; exportable optional).
    ImportKey,
    /// Create a trusted KEK from components (tenant, key, algorithm,
    /// usage, kcv) under the security officer's login.
    TrustedKek,
    /// Generate a key as one XOR component per person of the request
    /// step's `holders` role (tenant, key, algorithm, usage; exportable
    /// optional), for a partner with no shared KEK (KM-2).
    ExportComponents,
}

/// What a `shares-out` step does to the seal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SealAct {
    Initialize,
    Rotate,
    Rekey,
}

/// One step. The `kind` is the fixed vocabulary; `text` what it shows
/// first (parameters as `{name}`).
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Step {
    /// Show text to the room.
    Announce { text: String },
    /// Each person of `role` types their name and PIN (hidden); an initial
    /// PIN is changed on the spot.
    Authenticate {
        role: String,
        #[serde(default)]
        text: Option<String>,
    },
    /// The first person of `role` asks for `operation`; its id and digest
    /// are shown for the approvers to compare.
    Request {
        role: String,
        operation: OperationKind,
        /// For `export-components`: the role whose people each receive
        /// one component, in order.
        #[serde(default)]
        holders: Option<String>,
        #[serde(default)]
        text: Option<String>,
    },
    /// Each person of `role` reads the operation and its digest, says yes,
    /// and approves.
    Approve {
        role: String,
        #[serde(default)]
        text: Option<String>,
    },
    /// Custodians of `role` (or only the `person`-th, from 1) each type
    /// their own component, hidden; its check value is shown for reading
    /// aloud against the component form, and confirmed.
    Component {
        role: String,
        #[serde(default)]
        person: Option<u32>,
        #[serde(default)]
        text: Option<String>,
    },
    /// The combined components' check value is shown next to the sender's
    /// (parameter `kcv`) and confirmed; a difference aborts. After a key
    /// was generated as components, the whole key's check value is shown
    /// for the partner's form instead.
    ConfirmKcv {
        #[serde(default)]
        text: Option<String>,
    },
    /// The requester runs the approved request (with the components, for
    /// a trusted KEK; under the security officer's login when needed).
    Execute {
        role: String,
        #[serde(default)]
        text: Option<String>,
    },
    /// The first person of `by` seals the KMS (`seal = "initialize"`),
    /// re-splits the secret of the shares presented before (`"rotate"`) or
    /// draws a new one (`"rekey"`), needing parameter `m` shares of one per
    /// person of `role`; each of them receives their own share, shown once.
    SharesOut {
        role: String,
        by: String,
        seal: SealAct,
        #[serde(default)]
        text: Option<String>,
    },
    /// Each person of `role` presents their unseal share (hidden): on a
    /// sealed KMS this unseals it; the shares also serve a following
    /// rotate or rekey.
    SharesIn {
        role: String,
        #[serde(default)]
        text: Option<String>,
    },
    /// The first person of `role` backs up the HSM keys the policy backs
    /// up, wrapped under the backup KEK (parameter `kek`), to the file
    /// named by parameter `file`.
    Backup {
        role: String,
        #[serde(default)]
        text: Option<String>,
    },
    /// Every person of `approvers` agrees, then the first person of `by`
    /// creates the backup KEK (parameter `kek`) under the token's security
    /// officer login, split into parameter `m` shares of one per person
    /// of `role`, each shown once.
    BackupKek {
        role: String,
        by: String,
        approvers: String,
        #[serde(default)]
        text: Option<String>,
    },
    /// After an executed `export-components` request: each person of
    /// `role` (the request's holders), in turn and alone at the screen,
    /// receives their own component, shown once, and confirms its check
    /// value; the screen is cleared before the next.
    ComponentsOut {
        role: String,
        #[serde(default)]
        text: Option<String>,
    },
    /// Recovery on a replacement token (KM-2): the backup file (parameter
    /// `file`) names the backup KEK (parameter `kek`) and its check value;
    /// each person of `role` presents their share of it (hidden); the
    /// first person of `by` re-imports it under the security officer's
    /// login; its check value is shown and confirmed against the file's.
    KekRecover {
        role: String,
        by: String,
        #[serde(default)]
        text: Option<String>,
    },
    /// The first person of `role` restores the backup file (parameter
    /// `file`) under the user's login, after the KMS's own keys lost with
    /// the old token are put back; each key's check value is listed and
    /// confirmed.
    Restore {
        role: String,
        #[serde(default)]
        text: Option<String>,
    },
    /// End the founding period: from now on every enrolment is dual
    /// controlled.
    CloseFounding {
        role: String,
        #[serde(default)]
        text: Option<String>,
    },
}

impl Step {
    pub fn kind(&self) -> &'static str {
        match self {
            Step::Announce { .. } => "announce",
            Step::Authenticate { .. } => "authenticate",
            Step::Request { .. } => "request",
            Step::Approve { .. } => "approve",
            Step::Component { .. } => "component",
            Step::ConfirmKcv { .. } => "confirm-kcv",
            Step::Execute { .. } => "execute",
            Step::SharesOut { .. } => "shares-out",
            Step::SharesIn { .. } => "shares-in",
            Step::Backup { .. } => "backup",
            Step::BackupKek { .. } => "backup-kek",
            Step::ComponentsOut { .. } => "components-out",
            Step::KekRecover { .. } => "kek-recover",
            Step::Restore { .. } => "restore",
            Step::CloseFounding { .. } => "close-founding",
        }
    }

    pub fn role(&self) -> Option<&str> {
        match self {
            Step::Announce { .. } | Step::ConfirmKcv { .. } => None,
            Step::Authenticate { role, .. }
            | Step::Request { role, .. }
            | Step::Approve { role, .. }
            | Step::Component { role, .. }
            | Step::Execute { role, .. }
            | Step::SharesOut { role, .. }
            | Step::SharesIn { role, .. }
            | Step::Backup { role, .. }
            | Step::BackupKek { role, .. }
            | Step::ComponentsOut { role, .. }
            | Step::KekRecover { role, .. }
            | Step::Restore { role, .. }
            | Step::CloseFounding { role, .. } => Some(role),
        }
    }

    pub fn text(&self) -> Option<&str> {
        match self {
            Step::Announce { text } => Some(text),
            Step::Authenticate { text, .. }
            | Step::Request { text, .. }
            | Step::Approve { text, .. }
            | Step::Component { text, .. }
            | Step::ConfirmKcv { text }
            | Step::Execute { text, .. }
            | Step::SharesOut { text, .. }
            | Step::SharesIn { text, .. }
            | Step::Backup { text, .. }
            | Step::BackupKek { text, .. }
            | Step::ComponentsOut { text, .. }
            | Step::KekRecover { text, .. }
            | Step::Restore { text, .. }
            | Step::CloseFounding { text, .. } => text.as_deref(),
        }
    }

    /// Step kinds whose service side is not in this build yet: a script
    /// using one loads and shows, but refuses to start (before anyone
    /// types anything).
    pub fn not_yet(&self) -> Option<&'static str> {
        // Every kind of this build is implemented; a kind added to the
        // vocabulary before its service side lands answers its reason here.
        None
    }
}

/// The parameters each operation reads.
fn operation_params(op: OperationKind) -> &'static [&'static str] {
    match op {
        OperationKind::Export => &["tenant", "key", "kek"],
        OperationKind::Destroy => &["tenant", "key", "version"],
        OperationKind::TrustedKek | OperationKind::ImportKey => {
            &["tenant", "key", "algorithm", "usage", "kcv"]
        }
        OperationKind::ExportComponents => &["tenant", "key", "algorithm", "usage"],
    }
}

const ENROLLED_ROLES: [&str; 3] = ["security-officer", "custodian", "operator"];

impl Script {
    pub fn parse(text: &str, path: &Path) -> Result<Script, ScriptError> {
        let script: Script = toml::from_str(text).map_err(|e| ScriptError::Invalid {
            path: path.to_owned(),
            why: e.to_string(),
        })?;
        script.validate().map_err(|why| ScriptError::Invalid {
            path: path.to_owned(),
            why,
        })?;
        Ok(script)
    }

    pub fn load(path: &Path) -> Result<Script, ScriptError> {
        let text = std::fs::read_to_string(path).map_err(|e| ScriptError::Unreadable {
            path: path.to_owned(),
            why: e.to_string(),
        })?;
        Script::parse(&text, path)
    }

    fn validate(&self) -> Result<(), String> {
        let ok_name = !self.name.is_empty()
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !ok_name {
            return Err(format!(
                "name {:?}: lower-case letters, digits and '-' only",
                self.name
            ));
        }
        if self.steps.is_empty() {
            return Err("a ceremony has at least one step".into());
        }
        for (name, r) in &self.roles {
            if !ENROLLED_ROLES.contains(&r.enrolled.as_str()) {
                return Err(format!(
                    "role {name}: enrolled = {:?}; one of {}",
                    r.enrolled,
                    ENROLLED_ROLES.join(", ")
                ));
            }
            if r.count == 0 || r.count > 16 {
                return Err(format!("role {name}: count is 1 to 16"));
            }
        }
        let mut authenticated = std::collections::BTreeSet::new();
        let mut requested = false;
        // The role receiving generated components, once requested; and
        // whether an execute step followed.
        let mut holders_role: Option<&str> = None;
        let mut executed = false;
        for (i, step) in self.steps.iter().enumerate() {
            let at = format!("step {} ({})", i + 1, step.kind());
            if let Some(role) = step.role() {
                if !self.roles.contains_key(role) {
                    return Err(format!("{at}: role {role:?} is not declared in [roles]"));
                }
                let own_names = matches!(step, Step::Authenticate { .. } | Step::SharesIn { .. });
                if !own_names && !authenticated.contains(role) {
                    return Err(format!(
                        "{at}: role {role:?} acts before an authenticate step for it"
                    ));
                }
                if let Step::Authenticate { .. } = step {
                    authenticated.insert(role.to_owned());
                }
            }
            if let Some(text) = step.text() {
                for p in placeholders(text) {
                    if !self.parameters.contains_key(&p) {
                        return Err(format!(
                            "{at}: text names {{{p}}}, not a declared parameter"
                        ));
                    }
                }
            }
            match step {
                Step::Request {
                    operation, holders, ..
                } => {
                    for p in operation_params(*operation) {
                        if !self.parameters.contains_key(*p) {
                            return Err(format!(
                                "{at}: operation {operation:?} needs parameter {p}"
                            ));
                        }
                    }
                    match (operation, holders) {
                        (OperationKind::ExportComponents, Some(h)) => {
                            if !authenticated.contains(h.as_str()) {
                                return Err(format!(
                                    "{at}: holders = {h:?} must be a declared role that authenticated before"
                                ));
                            }
                            let count = self.roles.get(h).map(|r| r.count).unwrap_or(0);
                            if !(2..=3).contains(&count) {
                                return Err(format!(
                                    "{at}: holders role {h} has {count} people; a key is generated as 2 or 3 components"
                                ));
                            }
                            holders_role = Some(h);
                        }
                        (OperationKind::ExportComponents, None) => {
                            return Err(format!(
                                "{at}: export-components names its holders (a role)"
                            ));
                        }
                        (_, Some(_)) => {
                            return Err(format!("{at}: only export-components takes holders"));
                        }
                        (_, None) => {}
                    }
                    requested = true;
                }
                Step::Approve { .. } | Step::Execute { .. } if !requested => {
                    return Err(format!("{at}: no request step before it"));
                }
                Step::Execute { .. } => executed = true,
                Step::ConfirmKcv { .. }
                    if holders_role.is_none() && !self.parameters.contains_key("kcv") =>
                {
                    return Err(format!("{at}: needs parameter kcv"));
                }
                Step::KekRecover { by, .. } => {
                    if !self.roles.contains_key(by) || !authenticated.contains(by) {
                        return Err(format!(
                            "{at}: by = {by:?} must be a declared role that authenticated before"
                        ));
                    }
                    for p in ["kek", "file"] {
                        if !self.parameters.contains_key(p) {
                            return Err(format!("{at}: needs parameter {p}"));
                        }
                    }
                }
                Step::Restore { .. } if !self.parameters.contains_key("file") => {
                    return Err(format!("{at}: needs parameter file"));
                }
                Step::ComponentsOut { role, .. }
                    if holders_role != Some(role.as_str()) || !executed =>
                {
                    return Err(format!(
                        "{at}: hands out the components of an executed export-components request to its holders role"
                    ));
                }
                Step::Backup { .. } => {
                    for p in ["kek", "file"] {
                        if !self.parameters.contains_key(p) {
                            return Err(format!("{at}: needs parameter {p}"));
                        }
                    }
                }
                Step::BackupKek { by, approvers, .. } => {
                    for r in [by, approvers] {
                        if !self.roles.contains_key(r) || !authenticated.contains(r) {
                            return Err(format!(
                                "{at}: {r:?} must be a declared role that authenticated before"
                            ));
                        }
                    }
                    for p in ["kek", "m"] {
                        if !self.parameters.contains_key(p) {
                            return Err(format!("{at}: needs parameter {p}"));
                        }
                    }
                }
                Step::SharesOut { by, .. } => {
                    if !self.roles.contains_key(by) || !authenticated.contains(by) {
                        return Err(format!(
                            "{at}: by = {by:?} must be a declared role that authenticated before"
                        ));
                    }
                    if !self.parameters.contains_key("m") {
                        return Err(format!("{at}: needs parameter m (shares needed)"));
                    }
                }
                Step::Component { role, person, .. } => {
                    let count = self.roles.get(role).map(|r| r.count).unwrap_or(0);
                    if let Some(p) = person {
                        if *p == 0 || *p > count {
                            return Err(format!(
                                "{at}: person {p} of role {role} (which has {count})"
                            ));
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Whether the script recovers a replacement token: it then opens under
    /// the security officer's login ([`crate::Kms::open_for_recovery`]).
    pub fn recovers_token(&self) -> bool {
        self.steps
            .iter()
            .any(|s| matches!(s, Step::KekRecover { .. }))
    }

    /// Parameter values: the given ones over the defaults; unknown or
    /// missing ones refused.
    pub fn resolve_params(
        &self,
        given: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, ScriptError> {
        let mut out = BTreeMap::new();
        for k in given.keys() {
            if !self.parameters.contains_key(k) {
                return Err(ScriptError::Parameter(
                    k.clone(),
                    format!("ceremony {} takes no such parameter", self.name),
                ));
            }
        }
        let mut missing = Vec::new();
        for (k, spec) in &self.parameters {
            match given.get(k).or(spec.default.as_ref()) {
                Some(v) => {
                    out.insert(k.clone(), v.clone());
                }
                None => missing.push(format!("{k} ({})", spec.help)),
            }
        }
        if !missing.is_empty() {
            return Err(ScriptError::Parameter(
                missing.join(", "),
                "missing; give each as --param name=value".into(),
            ));
        }
        Ok(out)
    }

    /// What `kms-ceremony show` prints.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{} - {}\n\n{}\n",
            self.name,
            self.title,
            self.purpose.trim()
        );
        if !self.requirements.is_empty() {
            s.push_str(&format!(
                "\nRequirements: {}\n",
                self.requirements.join(", ")
            ));
        }
        s.push_str("\nParameters:\n");
        for (k, p) in &self.parameters {
            match &p.default {
                Some(d) => s.push_str(&format!("  {k} (default {d}): {}\n", p.help)),
                None => s.push_str(&format!("  {k} (required): {}\n", p.help)),
            }
        }
        s.push_str("\nPeople present:\n");
        for (k, r) in &self.roles {
            s.push_str(&format!("  {k}: {} x {} {}\n", r.count, r.enrolled, r.help));
        }
        s.push_str("\nSteps:\n");
        for (i, step) in self.steps.iter().enumerate() {
            let who = step.role().map(|r| format!(" [{r}]")).unwrap_or_default();
            let extra = match step {
                Step::Request { operation, .. } => format!(" {operation:?}"),
                _ => String::new(),
            };
            s.push_str(&format!("  {:2}. {}{extra}{who}", i + 1, step.kind()));
            if let Some(why) = step.not_yet() {
                s.push_str(&format!("  (not yet: {why})"));
            }
            s.push('\n');
        }
        s
    }
}

/// `{name}` placeholders in a text.
fn placeholders(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        match after.find('}') {
            Some(end) => {
                out.push(after[..end].to_owned());
                rest = &after[end + 1..];
            }
            None => break,
        }
    }
    out
}

/// Fill `{name}` placeholders with parameter values.
pub fn fill(text: &str, params: &BTreeMap<String, String>) -> String {
    let mut s = text.to_owned();
    for (k, v) in params {
        s = s.replace(&format!("{{{k}}}"), v);
    }
    s
}

/// The scripts in a directory, by name.
pub fn load_dir(dir: &Path) -> Result<BTreeMap<String, Script>, ScriptError> {
    let unreadable = |e: std::io::Error| ScriptError::Unreadable {
        path: dir.to_owned(),
        why: e.to_string(),
    };
    let mut out = BTreeMap::new();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(unreadable)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    for p in paths {
        let s = Script::load(&p)?;
        if out.contains_key(&s.name) {
            return Err(ScriptError::Invalid {
                path: p,
                why: format!("a second ceremony named {}", s.name),
            });
        }
        out.insert(s.name.clone(), s);
    }
    Ok(out)
}

pub fn find(dir: &Path, name: &str) -> Result<Script, ScriptError> {
    load_dir(dir)?
        .remove(name)
        .ok_or_else(|| ScriptError::NotFound(name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
name = "demo"
title = "Demo"
purpose = "Testing"
[parameters.tenant]
help = "tenant"
[roles.officer]
enrolled = "security-officer"
count = 1
[[steps]]
kind = "announce"
text = "Tenant {tenant}"
[[steps]]
kind = "authenticate"
role = "officer"
"#;

    fn parse(s: &str) -> Result<Script, ScriptError> {
        Script::parse(s, Path::new("demo.toml"))
    }

    #[test]
    fn a_valid_script_loads() {
        let s = parse(MINIMAL).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.steps.len(), 2);
    }

    #[test]
    fn an_unknown_step_kind_is_refused_at_load() {
        let bad = format!("{MINIMAL}\n[[steps]]\nkind = \"teleport\"\n");
        let e = parse(&bad).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("teleport"), "{e}");
    }

    #[test]
    fn an_undeclared_parameter_or_role_is_refused_at_load() {
        let bad = MINIMAL.replace("Tenant {tenant}", "Key {key}");
        let e = parse(&bad).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("{key}"), "{e}");
        let bad = format!("{MINIMAL}\n[[steps]]\nkind = \"approve\"\nrole = \"nobody\"\n");
        let e = parse(&bad).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("nobody"), "{e}");
    }

    const EXPORT: &str = r#"
name = "demo"
title = "Demo"
purpose = "Testing"
[parameters.tenant]
help = "tenant"
[parameters.key]
help = "key"
[parameters.algorithm]
help = "algorithm"
[parameters.usage]
help = "usage"
[roles.officer]
enrolled = "security-officer"
count = 1
[roles.holders]
enrolled = "custodian"
count = 2
[[steps]]
kind = "authenticate"
role = "officer"
[[steps]]
kind = "authenticate"
role = "holders"
[[steps]]
kind = "request"
role = "officer"
operation = "export-components"
holders = "holders"
[[steps]]
kind = "execute"
role = "officer"
[[steps]]
kind = "components-out"
role = "holders"
[[steps]]
kind = "confirm-kcv"
"#;

    #[test]
    fn km2_export_components_names_its_holders_and_hands_out_only_after_execute() {
        let s = parse(EXPORT).unwrap_or_else(|e| panic!("{e}"));
        assert!(!s.recovers_token());
        let e = parse(&EXPORT.replace("holders = \"holders\"\n", ""))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("holders"), "{e}");
        let e = parse(&EXPORT.replace("[[steps]]\nkind = \"execute\"\nrole = \"officer\"\n", ""))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("components-out"), "{e}");
        let e = parse(&EXPORT.replace("count = 2", "count = 4"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("2 or 3"), "{e}");
    }

    #[test]
    fn km2_kek_recover_and_restore_need_the_backup_file() {
        let recovery = r#"
name = "demo"
title = "Demo"
purpose = "Testing"
[parameters.kek]
help = "kek"
default = "backup-kek"
[parameters.file]
help = "file"
[roles.officer]
enrolled = "security-officer"
count = 1
[roles.custodians]
enrolled = "custodian"
count = 2
[[steps]]
kind = "authenticate"
role = "officer"
[[steps]]
kind = "authenticate"
role = "custodians"
[[steps]]
kind = "kek-recover"
role = "custodians"
by = "officer"
[[steps]]
kind = "restore"
role = "officer"
"#;
        let s = parse(recovery).unwrap_or_else(|e| panic!("{e}"));
        assert!(s.recovers_token());
        let e = parse(&recovery.replace("[parameters.file]\nhelp = \"file\"\n", ""))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("file"), "{e}");
    }

    #[test]
    fn a_missing_parameter_is_refused_before_the_run() {
        let s = parse(MINIMAL).unwrap_or_else(|e| panic!("{e}"));
        let e = s
            .resolve_params(&BTreeMap::new())
            .err()
            .map(|e| e.to_string());
        assert!(e.unwrap_or_default().contains("tenant"));
    }
}
