//! A fresh SoftHSM2 token per test: its own directory and softhsm2.conf,
//! selected through SOFTHSM2_CONF. SoftHSM reads that variable once per
//! process at C_Initialize, which is why the suite runs under cargo-nextest
//! (one process per test).

use kms::hsm::{Hsm, HsmConfig, Role};
use std::path::PathBuf;
use std::process::Command;
use zeroize::Zeroizing;

pub const LABEL: &str = "kms-test";

/// Where Debian puts the module.
pub fn module_path() -> String {
    if let Ok(p) = std::env::var("KMS_PKCS11_MODULE") {
        return p;
    }
    for p in [
        "/usr/lib/softhsm/libsofthsm2.so",
        "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
        "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    ] {
        if std::path::Path::new(p).exists() {
            return p.to_owned();
        }
    }
    panic!("libsofthsm2.so not found: run softhsm-setup/install.sh")
}

pub struct TestToken {
    pub dir: tempfile::TempDir,
    pub user_pin: String,
    pub so_pin: String,
}

impl Default for TestToken {
    fn default() -> Self {
        Self::new()
    }
}

impl TestToken {
    /// A new, initialized token in a new directory; SOFTHSM2_CONF points at it.
    pub fn new() -> TestToken {
        let dir = tempfile::tempdir().expect("tempdir");
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens).expect("tokens dir");
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                tokens.display()
            ),
        )
        .expect("conf");
        std::env::set_var("SOFTHSM2_CONF", &conf);
        let user_pin = format!("{:08}", rand_u32() % 100_000_000);
        let so_pin = format!("{:08}", rand_u32() % 100_000_000);
        let st = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &conf)
            .args([
                "--init-token",
                "--free",
                "--label",
                LABEL,
                "--pin",
                &user_pin,
                "--so-pin",
                &so_pin,
            ])
            .output()
            .expect("softhsm2-util (install softhsm2)");
        assert!(
            st.status.success(),
            "init-token: {}",
            String::from_utf8_lossy(&st.stderr)
        );
        TestToken {
            dir,
            user_pin,
            so_pin,
        }
    }

    pub fn conf(&self) -> PathBuf {
        self.dir.path().join("softhsm2.conf")
    }

    pub fn config(&self, role: Role) -> HsmConfig {
        HsmConfig {
            module: module_path(),
            token_label: LABEL.to_owned(),
            pin: Zeroizing::new(match role {
                Role::User => self.user_pin.clone(),
                Role::SecurityOfficer => self.so_pin.clone(),
            }),
            role,
            max_sessions: 8,
        }
    }

    pub fn open(&self) -> Hsm {
        Hsm::open(&self.config(Role::User)).expect("open token")
    }

    /// A `kms.toml` for the `kms` and `kms-ceremony` binaries on this token:
    /// the PINs in 0600-style files beside it (`file:` sources, as
    /// `scripts/run.sh` writes them), `database_url`, and the shipped
    /// policies. Returns the config's path.
    pub fn write_cli_config(&self, database_url: &str) -> PathBuf {
        let dir = self.dir.path();
        std::fs::write(dir.join("user.pin"), &self.user_pin).expect("user pin");
        std::fs::write(dir.join("so.pin"), &self.so_pin).expect("so pin");
        let policies = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policies");
        let config = dir.join("kms.toml");
        std::fs::write(
            &config,
            format!(
                "[hsm]\nmodule = {:?}\ntoken_label = {:?}\nuser_pin = \"file:user.pin\"\nso_pin = \"file:so.pin\"\nsofthsm2_conf = {:?}\n[database]\nurl = {:?}\n[policy]\ndir = {:?}\n",
                module_path(),
                LABEL,
                self.conf().display().to_string(),
                database_url,
                policies.display().to_string(),
            ),
        )
        .expect("config");
        config
    }
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() as u32
}
