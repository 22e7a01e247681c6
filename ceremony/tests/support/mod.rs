//! A KMS on a fresh token for the `kms-ceremony` binary: the standard
//! people founded through the library, a `kms.toml` pointing at the token,
//! the database and the shipped policies and scripts, and the files the
//! people bring (PIN, approval key, certificate, component).
#![allow(dead_code)]

use kms_e2e::fixture::TestKms;
use kms_e2e::people::{ensure_founded, Person};
use std::path::PathBuf;
use std::process::Command;

pub const POLICIES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies");

pub struct Site {
    pub kms: TestKms,
    pub people: &'static [Person],
    pub config: PathBuf,
    pub files: PathBuf,
}

/// An AES-128 key and two XOR components of it.
pub struct Split {
    pub key: [u8; 16],
    pub c1: [u8; 16],
    pub c2: [u8; 16],
}

impl Split {
    pub fn new(seed: u8) -> Split {
        let key: [u8; 16] = std::array::from_fn(|i| (i as u8).wrapping_mul(53) ^ seed ^ 0x3C);
        let c1: [u8; 16] = std::array::from_fn(|i| (i as u8).wrapping_mul(29) ^ seed ^ 0xA5);
        let c2: [u8; 16] = std::array::from_fn(|i| key[i] ^ c1[i]);
        Split { key, c1, c2 }
    }

    pub fn kcv(v: &[u8]) -> String {
        kms::crypto::KcvMethod::AesEcb
            .compute(v)
            .expect("kcv")
            .to_string()
    }
}

impl Site {
    pub async fn new() -> Site {
        let mut kms = TestKms::new().await;
        let people = ensure_founded(kms.svc()).await;
        // The binary logs in itself.
        kms.close();
        let dir = kms.token.dir.path().to_owned();
        let files = dir.join("people");
        std::fs::create_dir_all(&files).expect("dir");
        for p in people {
            std::fs::write(files.join(format!("{}.pin", p.name)), &p.pin).expect("pin");
            std::fs::write(files.join(format!("{}.key.pem", p.name)), &p.key_pem).expect("key");
            std::fs::write(files.join(format!("{}.crt.pem", p.name)), &p.cert_pem).expect("cert");
        }
        let config = kms.token.write_cli_config(&kms.db_url);
        Site {
            kms,
            people,
            config,
            files,
        }
    }

    pub fn person(&self, name: &str) -> &Person {
        self.people
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no {name}"))
    }

    pub fn file(&self, name: &str) -> String {
        self.files.join(name).display().to_string()
    }

    /// `kms-ceremony` with this site's configuration.
    pub fn command(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kms-ceremony"));
        c.arg("--config")
            .arg(&self.config)
            .env("SOFTHSM2_CONF", self.kms.token.conf())
            .env_remove("KMS_CONFIG")
            .current_dir(self.kms.token.dir.path());
        c
    }

    /// The key-import answers: so1 officer, alice and bob with components.
    pub fn import_answers(&self, s: &Split) -> PathBuf {
        std::fs::write(self.files.join("alice.component"), hex::encode_upper(s.c1)).expect("c1");
        std::fs::write(self.files.join("bob.component"), hex::encode_upper(s.c2)).expect("c2");
        let mut t =
            String::from("[roles]\nofficer = [\"so1\"]\ncustodians = [\"alice\", \"bob\"]\n");
        for p in self.people {
            t.push_str(&format!(
                "\n[people.{n}]\npin = \"file:{n}.pin\"\napproval_key = \"{n}.key.pem\"\napproval_cert = \"{n}.crt.pem\"\n",
                n = p.name
            ));
            let c = match p.name.as_str() {
                "alice" => Some(&s.c1),
                "bob" => Some(&s.c2),
                _ => None,
            };
            if let Some(c) = c {
                t.push_str(&format!(
                    "component = \"file:{}.component\"\ncomponent_kcv = \"{}\"\n",
                    p.name,
                    Split::kcv(c)
                ));
            }
        }
        let path = self.files.join("answers.toml");
        std::fs::write(&path, t).expect("answers");
        path
    }
}
