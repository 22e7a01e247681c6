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
//! [server]                                  # kms serve (mTLS)
//! admin_listen = "127.0.0.1:8443"
//! provisioning_listen = "127.0.0.1:8444"
//! tls_cert = "var/pki/server.crt"
//! tls_key = "var/pki/server.key"
//! client_ca = "var/pki/ca.crt"
//! crl = "var/pki/ca.crl"                    # optional
//! principals = "policies/principals.toml"
//! ```
//! Relative paths are relative to the directory of the file. Environment:
//! KMS_CONFIG (the file), KMS_PKCS11_MODULE, KMS_TOKEN_LABEL, KMS_USER_PIN_FILE,
//! KMS_SO_PIN_FILE, KMS_DATABASE_URL, KMS_POLICY_DIR, SOFTHSM2_CONF,
//! KMS_ADMIN_LISTEN, KMS_PROVISIONING_LISTEN.

use crate::hsm::{HsmConfig, Role};
use serde::Deserialize;
use std::net::SocketAddr;
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
    #[error("{setting} must be an IP address and port such as 127.0.0.1:8443, not {value:?}")]
    ListenAddress {
        setting: &'static str,
        value: String,
    },
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
    #[serde(default)]
    server: ServerSection,
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

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ServerSection {
    admin_listen: Option<String>,
    provisioning_listen: Option<String>,
    tls_cert: Option<String>,
    tls_key: Option<String>,
    client_ca: Option<String>,
    crl: Option<String>,
    principals: Option<String>,
    provisioning_policy: Option<String>,
    rate_per_principal: Option<u32>,
    burst_per_principal: Option<u32>,
    max_in_flight: Option<u32>,
    replay_window_seconds: Option<u32>,
}

/// Loopback by default: exposing the KMS to a network is a decision made in
/// kms.toml, never by omission.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:8443";
pub const DEFAULT_PROVISIONING_LISTEN: &str = "127.0.0.1:8444";

/// `kms serve`: where to listen and the TLS material (TSM-DATA-4, TSM-AC-3).
/// The files are read when the server starts, not here, so commands that do
/// not serve work without them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// The security officers' and operators' listener.
    pub admin_listen: SocketAddr,
    /// The OTA provisioning listener.
    pub provisioning_listen: SocketAddr,
    /// The server's certificate chain (PEM), leaf first.
    pub tls_cert: PathBuf,
    /// The server's private key (PEM: PKCS#8, SEC1 or PKCS#1).
    pub tls_key: PathBuf,
    /// The CA certificates (PEM) that client certificates must chain to.
    pub client_ca: PathBuf,
    /// Certificate revocation lists (PEM) of those CAs, if any.
    pub crl: Option<PathBuf>,
    /// The principals policy: which client certificate is whom, in which role.
    pub principals: PathBuf,
    /// The Cedar policy of the provisioning API (`provisioning.cedar`, with
    /// `provisioning.cedarschema` beside it).
    pub provisioning_policy: PathBuf,
    pub limits: ProvisioningLimits,
}

/// The provisioning listener's limits: under overload it answers 429/503 at
/// once instead of queueing without bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProvisioningLimits {
    /// Sustained requests per second per principal (token bucket).
    pub rate_per_principal: u32,
    /// Requests a principal may send at once above the rate.
    pub burst_per_principal: u32,
    /// Requests being served at once on this node; more get 503 at once.
    pub max_in_flight: u32,
    /// How far a request's timestamp may be from the server's clock, and
    /// how long its request id is remembered (REPLAY-1).
    pub replay_window_seconds: u32,
}

impl Default for ProvisioningLimits {
    fn default() -> Self {
        // Per principal, well above one OTA server's peak on one node (the
        // token does a few thousand derivations a second); in flight, about
        // the HSM session pool times the pipeline depth.
        ProvisioningLimits {
            rate_per_principal: 2000,
            burst_per_principal: 4000,
            max_in_flight: 256,
            replay_window_seconds: 300,
        }
    }
}

fn listen_addr(setting: &'static str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| ConfigError::ListenAddress {
        setting,
        value: value.chars().take(64).collect(),
    })
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
    pub server: ServerSettings,
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
        let srv = file.server;
        let admin_listen = match env("KMS_ADMIN_LISTEN") {
            Some(v) => listen_addr("KMS_ADMIN_LISTEN", &v)?,
            None => listen_addr(
                "server.admin_listen",
                srv.admin_listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN),
            )?,
        };
        let provisioning_listen = match env("KMS_PROVISIONING_LISTEN") {
            Some(v) => listen_addr("KMS_PROVISIONING_LISTEN", &v)?,
            None => listen_addr(
                "server.provisioning_listen",
                srv.provisioning_listen
                    .as_deref()
                    .unwrap_or(DEFAULT_PROVISIONING_LISTEN),
            )?,
        };
        // Defaults name what `kms dev-pki --dir var/pki` writes, so a
        // development set-up needs no [server] section at all.
        let path_or =
            |v: Option<String>, default: &str| resolve(base, v.as_deref().unwrap_or(default));
        let server = ServerSettings {
            admin_listen,
            provisioning_listen,
            tls_cert: path_or(srv.tls_cert, "var/pki/server.crt"),
            tls_key: path_or(srv.tls_key, "var/pki/server.key"),
            client_ca: path_or(srv.client_ca, "var/pki/ca.crt"),
            crl: srv.crl.map(|p| resolve(base, &p)),
            principals: srv
                .principals
                .map(|p| resolve(base, &p))
                .unwrap_or_else(|| policy_dir.join("principals.toml")),
            provisioning_policy: srv
                .provisioning_policy
                .map(|p| resolve(base, &p))
                .unwrap_or_else(|| policy_dir.join("provisioning.cedar")),
            limits: {
                let d = ProvisioningLimits::default();
                ProvisioningLimits {
                    rate_per_principal: srv
                        .rate_per_principal
                        .unwrap_or(d.rate_per_principal)
                        .max(1),
                    burst_per_principal: srv
                        .burst_per_principal
                        .unwrap_or(d.burst_per_principal)
                        .max(1),
                    max_in_flight: srv.max_in_flight.unwrap_or(d.max_in_flight).max(1),
                    replay_window_seconds: srv
                        .replay_window_seconds
                        .unwrap_or(d.replay_window_seconds)
                        .clamp(1, 3600),
                }
            },
        };
        Ok(Config {
            module,
            token_label,
            user_pin,
            so_pin,
            softhsm2_conf,
            max_sessions: file.hsm.max_sessions.unwrap_or(16),
            database_url,
            policy_dir,
            server,
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
        Ok(self.hsm_with_pin(role, source.read()?))
    }

    /// The HSM settings for a login as `role` with a PIN obtained at run
    /// time rather than from the configured source: a sealed deployment's
    /// user PIN is derived from the custodians' shares (`crate::seal`).
    pub fn hsm_with_pin(&self, role: Role, pin: Zeroizing<String>) -> HsmConfig {
        if let Some(conf) = &self.softhsm2_conf {
            // SoftHSM reads this once, at C_Initialize; set it before loading.
            std::env::set_var("SOFTHSM2_CONF", conf);
        }
        HsmConfig {
            module: self.module.clone(),
            token_label: self.token_label.clone(),
            pin,
            role,
            max_sessions: self.max_sessions,
        }
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
        assert!(toml::from_str::<FileConfig>("[server]\nadmin_lsten='1.2.3.4:1'\n").is_err());
    }

    #[test]
    fn server_defaults_are_loopback_and_the_dev_pki() {
        let file: FileConfig =
            toml::from_str("[hsm]\nmodule='/m.so'\nuser_pin='file:u.pin'\n").unwrap();
        let c = Config::from_parts(file, Path::new("/srv/kms")).unwrap();
        assert_eq!(c.server.admin_listen.to_string(), "127.0.0.1:8443");
        assert_eq!(c.server.provisioning_listen.to_string(), "127.0.0.1:8444");
        assert_eq!(
            c.server.tls_cert,
            PathBuf::from("/srv/kms/var/pki/server.crt")
        );
        assert_eq!(c.server.client_ca, PathBuf::from("/srv/kms/var/pki/ca.crt"));
        assert_eq!(c.server.crl, None);
        assert_eq!(
            c.server.principals,
            PathBuf::from("/srv/kms/policies/principals.toml")
        );
    }

    #[test]
    fn server_section_paths_follow_the_file_and_bad_addresses_are_named() {
        let file: FileConfig = toml::from_str(
            "[hsm]\nmodule='/m.so'\nuser_pin='file:u.pin'\n[server]\nadmin_listen='0.0.0.0:9443'\n\
             crl='pki/ca.crl'\nprincipals='/etc/kms/principals.toml'\n",
        )
        .unwrap();
        let c = Config::from_parts(file, Path::new("/srv/kms")).unwrap();
        assert_eq!(c.server.admin_listen.to_string(), "0.0.0.0:9443");
        assert_eq!(c.server.crl, Some(PathBuf::from("/srv/kms/pki/ca.crl")));
        assert_eq!(
            c.server.principals,
            PathBuf::from("/etc/kms/principals.toml")
        );
        let file: FileConfig = toml::from_str(
            "[hsm]\nmodule='/m.so'\nuser_pin='file:u.pin'\n[server]\nadmin_listen='localhost'\n",
        )
        .unwrap();
        assert!(matches!(
            Config::from_parts(file, Path::new(".")),
            Err(ConfigError::ListenAddress {
                setting: "server.admin_listen",
                ..
            })
        ));
    }
}
