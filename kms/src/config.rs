//! `kms.toml` with environment overrides.
//!
//! ```toml
//! [hsm]
//! module = "/usr/lib/softhsm/libsofthsm2.so"
//! token_label = "kms"
//! user_pin = "file:var/softhsm/user.pin"   # or "env:KMS_USER_PIN"
//! so_pin = "file:var/softhsm/so.pin"
//! softhsm2_conf = "var/softhsm/softhsm2.conf"
//! [database]
//! url = "sqlite://var/kms.db?mode=rwc"
//! [policy]
//! dir = "policies"
//! ```
//! Relative paths are relative to the directory of the file. Environment:
//! KMS_CONFIG (the file), KMS_PKCS11_MODULE, KMS_TOKEN_LABEL, KMS_USER_PIN_FILE,
//! KMS_SO_PIN_FILE, KMS_DATABASE_URL, KMS_POLICY_DIR, SOFTHSM2_CONF.

use crate::hsm::{HsmConfig, Role};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not valid: {detail}")]
    Parse { path: String, detail: String },
    /// The value is not echoed: a PIN typed into the config by mistake must
    /// not end up in an error message or a log.
    #[error("a PIN source must be \"file:PATH\" or \"env:VARIABLE\", never the PIN itself")]
    PinSourceSyntax,
    #[error("the PIN source {0} is empty or unreadable")]
    PinUnavailable(String),
    #[error("no {0} configured")]
    Missing(&'static str),
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    hsm: HsmSection,
    #[serde(default)]
    database: DatabaseSection,
    #[serde(default)]
    policy: PolicySection,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HsmSection {
    module: Option<String>,
    token_label: Option<String>,
    user_pin: Option<String>,
    so_pin: Option<String>,
    softhsm2_conf: Option<String>,
    max_sessions: Option<usize>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DatabaseSection {
    url: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PolicySection {
    dir: Option<String>,
}

/// Where a PIN comes from. The value itself is never in the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinSource {
    File(PathBuf),
    Env(String),
}

impl PinSource {
    fn parse(s: &str, base: &Path) -> Result<Self, ConfigError> {
        if let Some(p) = s.strip_prefix("file:") {
            Ok(PinSource::File(resolve(base, p)))
        } else if let Some(v) = s.strip_prefix("env:") {
            Ok(PinSource::Env(v.to_owned()))
        } else {
            Err(ConfigError::PinSourceSyntax)
        }
    }

    /// Read the PIN into a zeroizing buffer.
    pub fn read(&self) -> Result<Zeroizing<String>, ConfigError> {
        let raw = match self {
            PinSource::File(p) => Zeroizing::new(
                std::fs::read_to_string(p)
                    .map_err(|_| ConfigError::PinUnavailable(format!("file {}", p.display())))?,
            ),
            PinSource::Env(v) => Zeroizing::new(
                std::env::var(v).map_err(|_| ConfigError::PinUnavailable(format!("${v}")))?,
            ),
        };
        let pin = Zeroizing::new(raw.trim_end_matches(['\n', '\r']).to_owned());
        if pin.is_empty() {
            return Err(ConfigError::PinUnavailable(self.to_string()));
        }
        Ok(pin)
    }
}

impl std::fmt::Display for PinSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PinSource::File(p) => write!(f, "file:{}", p.display()),
            PinSource::Env(v) => write!(f, "env:{v}"),
        }
    }
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub module: String,
    pub token_label: String,
    pub user_pin: PinSource,
    pub so_pin: Option<PinSource>,
    pub softhsm2_conf: Option<PathBuf>,
    pub max_sessions: usize,
    pub database_url: String,
    pub policy_dir: PathBuf,
}

fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_owned()
    } else {
        base.join(p)
    }
}

/// SQLite URLs carry a path too; make a relative one relative to the file.
fn resolve_db_url(base: &Path, url: &str) -> String {
    match url.strip_prefix("sqlite://") {
        Some(rest) if !rest.starts_with('/') && !rest.starts_with(':') => {
            format!("sqlite://{}", base.join(rest).display())
        }
        _ => url.to_owned(),
    }
}

impl Config {
    /// Load `path`, or $KMS_CONFIG, or ./kms.toml if it exists; then apply
    /// environment overrides.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let env_path = std::env::var_os("KMS_CONFIG").map(PathBuf::from);
        let path = path.map(Path::to_owned).or(env_path).or_else(|| {
            let p = PathBuf::from("kms.toml");
            p.exists().then_some(p)
        });
        let (file, base) = match &path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.display().to_string(),
                    source,
                })?;
                let file: FileConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: p.display().to_string(),
                    detail: e.to_string(),
                })?;
                let base = p
                    .parent()
                    .map(|d| {
                        if d.as_os_str().is_empty() {
                            Path::new(".")
                        } else {
                            d
                        }
                    })
                    .unwrap_or(Path::new("."))
                    .to_owned();
                (file, base)
            }
            None => (FileConfig::default(), PathBuf::from(".")),
        };
        Self::from_parts(file, &base)
    }

    fn from_parts(file: FileConfig, base: &Path) -> Result<Config, ConfigError> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let module = env("KMS_PKCS11_MODULE")
            .or(file.hsm.module)
            .ok_or(ConfigError::Missing("hsm.module (or KMS_PKCS11_MODULE)"))?;
        let token_label = env("KMS_TOKEN_LABEL")
            .or(file.hsm.token_label)
            .unwrap_or_else(|| "kms".to_owned());
        let user_pin = match env("KMS_USER_PIN_FILE") {
            Some(p) => PinSource::File(PathBuf::from(p)),
            None => PinSource::parse(
                file.hsm
                    .user_pin
                    .as_deref()
                    .ok_or(ConfigError::Missing("hsm.user_pin (or KMS_USER_PIN_FILE)"))?,
                base,
            )?,
        };
        let so_pin = match env("KMS_SO_PIN_FILE") {
            Some(p) => Some(PinSource::File(PathBuf::from(p))),
            None => file
                .hsm
                .so_pin
                .as_deref()
                .map(|s| PinSource::parse(s, base))
                .transpose()?,
        };
        let softhsm2_conf = env("SOFTHSM2_CONF")
            .map(PathBuf::from)
            .or_else(|| file.hsm.softhsm2_conf.map(|p| resolve(base, &p)));
        let database_url = env("KMS_DATABASE_URL")
            .or(file.database.url)
            .map(|u| resolve_db_url(base, &u))
            .unwrap_or_else(|| format!("sqlite://{}?mode=rwc", base.join("var/kms.db").display()));
        let policy_dir = env("KMS_POLICY_DIR")
            .map(PathBuf::from)
            .or_else(|| file.policy.dir.map(|d| resolve(base, &d)))
            .unwrap_or_else(|| base.join("policies"));
        Ok(Config {
            module,
            token_label,
            user_pin,
            so_pin,
            softhsm2_conf,
            max_sessions: file.hsm.max_sessions.unwrap_or(16),
            database_url,
            policy_dir,
        })
    }

    /// The HSM settings for a login as `role`, PIN read now.
    pub fn hsm(&self, role: Role) -> Result<HsmConfig, ConfigError> {
        let source = match role {
            Role::User => &self.user_pin,
            Role::SecurityOfficer => self
                .so_pin
                .as_ref()
                .ok_or(ConfigError::Missing("hsm.so_pin (or KMS_SO_PIN_FILE)"))?,
        };
        if let Some(conf) = &self.softhsm2_conf {
            // SoftHSM reads this once, at C_Initialize; set it before loading.
            std::env::set_var("SOFTHSM2_CONF", conf);
        }
        Ok(HsmConfig {
            module: self.module.clone(),
            token_label: self.token_label.clone(),
            pin: source.read()?,
            role,
            max_sessions: self.max_sessions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_follow_the_file() {
        let file: FileConfig = toml::from_str(
            "[hsm]\nmodule='/m.so'\nuser_pin='file:var/u.pin'\n[database]\nurl='sqlite://var/k.db'\n",
        )
        .unwrap();
        let c = Config::from_parts(file, Path::new("/srv/kms")).unwrap();
        assert_eq!(c.user_pin, PinSource::File("/srv/kms/var/u.pin".into()));
        assert_eq!(c.database_url, "sqlite:///srv/kms/var/k.db");
        assert_eq!(c.policy_dir, PathBuf::from("/srv/kms/policies"));
    }

    #[test]
    fn a_pin_in_the_config_is_refused() {
        let file: FileConfig =
            toml::from_str("[hsm]\nmodule='/m.so'\nuser_pin='12345678'\n").unwrap();
        assert!(matches!(
            Config::from_parts(file, Path::new(".")),
            Err(ConfigError::PinSourceSyntax)
        ));
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<FileConfig>("[hsm]\nmodul='/m.so'\n").is_err());
    }
}
