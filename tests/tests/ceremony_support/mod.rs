//! The room of a ceremony test: a fresh token and database with the
//! standard people founded (so1, alice, bob), their PINs, keys and
//! certificates in files an answers file points at, and a way to run a
//! shipped script non-interactively.
#![allow(dead_code)]

use ceremony::{Answers, Kms, KmsAccess, ScriptedConsole};
use kms::hsm::Role;
use kms::policy::KeyPolicy;
use kms::service::ceremony::SignedTranscript;
use kms::service::KeyService;
use kms_e2e::fixture::{cheap_pins, TestKms};
use kms_e2e::people::{ensure_founded, Person};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const SCRIPTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/ceremonies");

pub struct Room {
    pub kms: TestKms,
    pub people: &'static [Person],
    /// Where the answers, PIN, key and component files are.
    pub files: PathBuf,
}

/// AES-128 key material for the tests: a key and two components of it.
pub struct Split {
    pub key: [u8; 16],
    pub c1: [u8; 16],
    pub c2: [u8; 16],
}

impl Split {
    pub fn new(seed: u8) -> Split {
        let key: [u8; 16] = std::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ seed ^ 0x5A);
        let c1: [u8; 16] =
            std::array::from_fn(|i| (i as u8).wrapping_mul(91) ^ seed.rotate_left(3) ^ 0xC3);
        let c2: [u8; 16] = std::array::from_fn(|i| key[i] ^ c1[i]);
        Split { key, c1, c2 }
    }

    pub fn kcv(&self) -> String {
        kms::crypto::KcvMethod::AesEcb
            .compute(&self.key)
            .expect("kcv")
            .to_string()
    }

    pub fn component_kcv(c: &[u8]) -> String {
        kms::crypto::KcvMethod::AesEcb
            .compute(c)
            .expect("kcv")
            .to_string()
    }
}

impl Room {
    pub async fn new() -> Room {
        let kms = TestKms::new().await;
        let people = ensure_founded(kms.svc()).await;
        Room::with(kms, people)
    }

    /// A room whose people are `group` (the first a security officer),
    /// founded anew.
    pub async fn founded(group: &[(&str, kms::model::CustodianRole)]) -> Room {
        let kms = TestKms::new().await;
        let people: &'static [Person] = Box::leak(
            kms_e2e::people::found(kms.svc(), group)
                .await
                .into_boxed_slice(),
        );
        Room::with(kms, people)
    }

    fn with(kms: TestKms, people: &'static [Person]) -> Room {
        let files = kms.token.dir.path().join("room");
        std::fs::create_dir_all(&files).expect("room dir");
        for p in people {
            std::fs::write(files.join(format!("{}.pin", p.name)), &p.pin).expect("pin file");
            std::fs::write(files.join(format!("{}.key.pem", p.name)), &p.key_pem).expect("key");
            std::fs::write(files.join(format!("{}.crt.der", p.name)), &p.cert_der).expect("cert");
        }
        Room { kms, people, files }
    }

    /// Add lines to a person's section of the answers file last written.
    pub fn add_answers(&self, answers: &Path, who: &str, lines: &str) {
        let text = std::fs::read_to_string(answers).expect("answers");
        let header = format!("[people.{who}]\n");
        let text = text.replacen(&header, &format!("{header}{lines}\n"), 1);
        std::fs::write(answers, text).expect("answers");
    }

    /// Open the KMS as the runner does, unsealing it with these share
    /// files when it is sealed.
    pub async fn open_with_shares(&self, shares: &[(&str, &str)]) -> Result<Kms, String> {
        let mut kms = Kms::open(self.access()).await.map_err(|e| e.to_string())?;
        if kms.is_sealed() {
            let mut parsed = Vec::new();
            for (who, file) in shares {
                let text = std::fs::read_to_string(self.files.join(file)).expect("share file");
                kms.present_share(text.trim(), who)
                    .await
                    .map_err(|e| e.to_string())?;
                parsed.push(kms::crypto::Share::parse(text.trim()).expect("share"));
            }
            kms.unseal(&parsed).await.map_err(|e| e.to_string())?;
        }
        Ok(kms)
    }

    pub fn access(&self) -> KmsAccess {
        KmsAccess {
            user: self.kms.token.config(Role::User),
            security_officer: Some(self.kms.token.config(Role::SecurityOfficer)),
            database_url: self.kms.db_url.clone(),
            policy: KeyPolicy::builtin(),
            custodians: Some(cheap_pins()),
        }
    }

    /// Write a component (hex) to a file only the answers file names.
    pub fn component_file(&self, who: &str, value: &[u8]) -> String {
        let p = self.files.join(format!("{who}.component"));
        std::fs::write(&p, hex::encode_upper(value)).expect("component file");
        p.display().to_string()
    }

    /// An answers file: who sits in each role, and per person the PIN,
    /// approval key and certificate files, and optional component file.
    pub fn answers(
        &self,
        roles: &[(&str, &[&str])],
        components: &[(&str, &[u8])],
        no_at_steps: &[usize],
    ) -> PathBuf {
        let mut t = String::from("[roles]\n");
        for (r, names) in roles {
            let list = names
                .iter()
                .map(|n| format!("{n:?}"))
                .collect::<Vec<_>>()
                .join(", ");
            t.push_str(&format!("{r} = [{list}]\n"));
        }
        for p in self.people {
            t.push_str(&format!(
                "\n[people.{}]\npin = \"file:{}.pin\"\napproval_key = \"{}.key.pem\"\napproval_cert = \"{}.crt.der\"\n",
                p.name, p.name, p.name, p.name
            ));
            if let Some((_, v)) = components.iter().find(|(w, _)| *w == p.name) {
                t.push_str(&format!(
                    "component = \"file:{}\"\ncomponent_kcv = \"{}\"\n",
                    self.component_file(&p.name, v),
                    Split::component_kcv(v)
                ));
            }
        }
        t.push_str(&format!(
            "\n[confirm]\nanswer = true\nno_at_steps = {no_at_steps:?}\n"
        ));
        let path = self.files.join("answers.toml");
        std::fs::write(&path, t).expect("answers");
        path
    }

    /// Run a shipped script from an answers file; answers the transcript
    /// and everything the console showed.
    pub async fn run(
        &mut self,
        name: &str,
        params: &[(&str, &str)],
        answers: &Path,
    ) -> (SignedTranscript, Vec<String>) {
        self.run_with_clock(name, params, answers, &time::OffsetDateTime::now_utc)
            .await
    }

    /// As `run`, with the clock that decides idle timeouts.
    pub async fn run_with_clock(
        &mut self,
        name: &str,
        params: &[(&str, &str)],
        answers: &Path,
        clock: &(dyn Fn() -> time::OffsetDateTime + Sync),
    ) -> (SignedTranscript, Vec<String>) {
        let script = ceremony::script::find(Path::new(SCRIPTS), name).expect("script");
        let given: BTreeMap<String, String> = params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let mut console = ScriptedConsole::new(Answers::load(answers).expect("answers"));
        console.echo = false;
        // One login per process: the fixture's service steps aside.
        self.kms.close();
        let mut kms = Kms::open(self.access()).await.expect("open the KMS");
        let signed = ceremony::run_with_clock(&script, &given, &mut kms, &mut console, clock)
            .await
            .unwrap_or_else(|e| panic!("ceremony {name}: {e}"));
        kms.close().await.expect("close");
        (signed, console.shown)
    }

    /// A user-login service on the same token and database, after a run.
    pub async fn svc(&self) -> KeyService {
        TestKms::service(&self.kms.token, &self.kms.db_url, Role::User).await
    }
}

/// Actions of the records of one ceremony run, in order.
pub async fn run_actions(svc: &KeyService, run_id: &str) -> Vec<(String, String)> {
    svc.store()
        .audit_search(&kms::store::AuditFilter {
            request_id: Some(run_id.to_owned()),
            ..Default::default()
        })
        .await
        .expect("search")
        .into_iter()
        .map(|r| {
            (
                r.event.action.clone(),
                r.event.details.get("kind").cloned().unwrap_or_default(),
            )
        })
        .collect()
}
