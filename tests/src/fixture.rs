//! A whole KMS for a test: fresh token, fresh SQLite database, the shipped
//! policy, and helpers to load known keys through the component path.

use crate::token::TestToken;
use kms::crypto::{Component, Kcv, KcvMethod};
use kms::hsm::{Hsm, Role};
use kms::model::{Algorithm, KeyName, KeyUsage, Tenant};
use kms::policy::KeyPolicy;
use kms::service::{Actor, CreateKey, ImportComponents, KeyService};
use kms::store::{KeyRecord, Store};
use std::sync::Arc;

pub struct TestKms {
    pub token: TestToken,
    pub db_path: std::path::PathBuf,
    pub db_url: String,
    svc: Option<KeyService>,
}

pub fn actor(name: &str) -> Actor {
    Actor::parse(name).expect("actor")
}

pub fn tenant(s: &str) -> Tenant {
    Tenant::parse(s).expect("tenant")
}

pub fn name(s: &str) -> KeyName {
    KeyName::parse(s).expect("name")
}

pub fn create_req(
    t: &str,
    n: &str,
    alg: Algorithm,
    usage: KeyUsage,
    exportable: bool,
) -> CreateKey {
    CreateKey {
        tenant: tenant(t),
        name: name(n),
        algorithm: alg,
        usage,
        exportable,
        activate: true,
        trusted: false,
    }
}

/// Two XOR components of `value` (the first random) and the whole key's KCV.
pub fn split(value: &[u8], alg: Algorithm) -> (Vec<(Component, Option<Kcv>)>, Kcv) {
    let c1: Vec<u8> = (0..value.len()).map(|_| rand_byte()).collect();
    let c2: Vec<u8> = value.iter().zip(&c1).map(|(a, b)| a ^ b).collect();
    let method = KcvMethod::preferred(alg.family()).expect("secret alg");
    let kcv = method.compute(value).expect("kcv");
    let comps = [c1, c2]
        .iter()
        .map(|c| {
            let comp = Component::from_bytes(c, alg).expect("component");
            let k = method.compute(c).expect("kcv");
            (comp, Some(k))
        })
        .collect();
    (comps, kcv)
}

fn rand_byte() -> u8 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(0);
    (h.finish() & 0xff) as u8
}

/// Argon2id parameters cheap enough for tests (the PIN rules are the
/// shipped ones).
pub fn cheap_pins() -> kms::service::CustodianSettings {
    kms::service::CustodianSettings {
        pin_policy: kms::model::PinPolicy::default(),
        hasher: Arc::new(kms::crypto::PinHasher::new(1024, 1, 1).expect("params")),
    }
}

impl TestKms {
    pub async fn new() -> TestKms {
        let token = TestToken::new();
        let db_path = token.dir.path().join("kms.db");
        let url = format!("sqlite://{}?mode=rwc", db_path.display());
        let svc = Self::service(&token, &url, Role::User).await;
        TestKms {
            token,
            db_path,
            db_url: url,
            svc: Some(svc),
        }
    }

    /// A KMS whose metadata lives in the database at `url` (PostgreSQL).
    pub async fn with_database(url: &str) -> TestKms {
        let token = TestToken::new();
        let db_path = token.dir.path().join("unused.db");
        let svc = Self::service(&token, url, Role::User).await;
        TestKms {
            token,
            db_path,
            db_url: url.to_owned(),
            svc: Some(svc),
        }
    }

    pub async fn service(token: &TestToken, url: &str, role: Role) -> KeyService {
        let store = Store::connect(url).await.expect("store");
        let cfg = token.config(role);
        let hsm = tokio::task::spawn_blocking(move || Hsm::open(&cfg))
            .await
            .expect("join")
            .expect("open token");
        KeyService::open(Arc::new(hsm), store, KeyPolicy::builtin(), "test")
            .await
            .expect("service")
    }

    /// Run `f` with the security officer's login (SoftHSM allows one login
    /// kind per process at a time, so the user's service is closed first and
    /// reopened after).
    pub async fn as_security_officer<F, Fut, T>(&mut self, f: F) -> T
    where
        F: FnOnce(KeyService) -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        drop(self.svc.take());
        let so = Self::service(&self.token, &self.db_url, Role::SecurityOfficer).await;
        let so_log = so.audit().clone();
        let out = f(so).await;
        // As the CLI does: the SO login's records carry no MAC; the user
        // login that follows countersigns exactly those.
        let unmaced = so_log.take_unmaced();
        drop(so_log);
        let user = Self::service(&self.token, &self.db_url, Role::User).await;
        user.audit()
            .countersign(unmaced)
            .await
            .expect("countersign");
        self.svc = Some(user);
        out
    }

    /// Close the service and log out of the token (so a test can talk to
    /// the token through raw PKCS#11).
    pub fn close(&mut self) {
        drop(self.svc.take());
    }

    /// The user-login service.
    pub fn svc(&self) -> &KeyService {
        self.svc.as_ref().expect("service open")
    }

    /// Import a known key from two generated components.
    pub async fn import(
        &self,
        t: &str,
        n: &str,
        alg: Algorithm,
        usage: KeyUsage,
        exportable: bool,
        value: &[u8],
    ) -> KeyRecord {
        let (components, expected_kcv) = split(value, alg);
        self.svc()
            .import_components(
                &actor("custodians"),
                ImportComponents {
                    key: create_req(t, n, alg, usage, exportable),
                    components,
                    expected_kcv,
                },
            )
            .await
            .unwrap_or_else(|e| panic!("import {t}/{n}: {e}"))
            .key
    }

    /// A trusted transport KEK with a known value (so tests can unwrap in
    /// software), through dual control: the security officer so1 requests
    /// it, bob approves, so1 executes under the SO login while custodians
    /// enter the components (the standard people founded first if needed).
    pub async fn trusted_kek(
        &mut self,
        t: &str,
        n: &str,
        alg: Algorithm,
        value: &[u8],
    ) -> KeyRecord {
        let (components, expected_kcv) = split(value, alg);
        let op = kms::service::Operation::TrustedKek {
            tenant: t.into(),
            key: n.into(),
            algorithm: alg.as_str().into(),
            usage: KeyUsage::TransportKek.as_str().into(),
            kcv: Some(expected_kcv.to_string()),
        };
        crate::people::ensure_founded(self.svc()).await;
        let so1 = crate::people::person("so1").session(self.svc()).await;
        let req = self.svc().request(&so1, op).await.expect("request");
        crate::people::person("bob")
            .approve(self.svc(), &req.id)
            .await
            .expect("approve");
        self.as_security_officer(|so| async move {
            match so
                .execute_with(&so1, &req.id, components)
                .await
                .expect("trusted KEK")
            {
                kms::service::Executed::Key(k) => k,
                other => panic!("trusted KEK returned {other:?}"),
            }
        })
        .await
    }
}

impl TestKms {
    /// The backup KEK `kms/<n>` through dual control (invariant 3): so1
    /// requests it, bob approves, so1 executes under the SO login (the
    /// standard people founded first if needed). Returns the shares too.
    pub async fn backup_kek(&mut self, n: &str, m: u8, shares: u8) -> kms::service::BackupKek {
        let op = kms::service::Operation::BackupKek {
            name: n.into(),
            threshold: m,
            shares,
        };
        // A ceremony run closes the user's service: reopen it.
        if self.svc.is_none() {
            self.svc = Some(Self::service(&self.token, &self.db_url, Role::User).await);
        }
        crate::people::ensure_founded(self.svc()).await;
        let so1 = crate::people::person("so1").session(self.svc()).await;
        let req = self.svc().request(&so1, op).await.expect("request");
        crate::people::person("bob")
            .approve(self.svc(), &req.id)
            .await
            .expect("approve");
        self.as_security_officer(|so| async move {
            so.execute_backup_kek(&so1, &req.id)
                .await
                .expect("backup KEK")
        })
        .await
    }
}

/// Export through dual control: alice requests, bob approves, alice
/// executes (the standard people founded first if needed).
pub async fn export_approved(
    svc: &KeyService,
    t: &str,
    key: &str,
    kek: &str,
    wrap: Option<&str>,
) -> Result<kms::service::ExportedKey, kms::service::ServiceError> {
    let op = kms::service::Operation::Export {
        tenant: t.into(),
        key: key.into(),
        version: None,
        kek: kek.into(),
        wrap: wrap.map(str::to_owned),
    };
    crate::people::ensure_founded(svc).await;
    let alice = crate::people::person("alice").session(svc).await;
    let req = svc.request(&alice, op).await?;
    crate::people::person("bob").approve(svc, &req.id).await?;
    match svc.execute(&alice, &req.id).await? {
        kms::service::Executed::Exported(e) => Ok(e),
        other => panic!("export returned {other:?}"),
    }
}

/// Destroy through dual control.
pub async fn destroy_approved(
    svc: &KeyService,
    t: &str,
    key: &str,
    version: u32,
) -> Result<KeyRecord, kms::service::ServiceError> {
    let op = kms::service::Operation::Destroy {
        tenant: t.into(),
        key: key.into(),
        version,
        reason: Some("test".into()),
    };
    crate::people::ensure_founded(svc).await;
    let alice = crate::people::person("alice").session(svc).await;
    let req = svc.request(&alice, op).await?;
    crate::people::person("bob").approve(svc, &req.id).await?;
    match svc.execute(&alice, &req.id).await? {
        kms::service::Executed::Key(k) => Ok(k),
        other => panic!("destroy returned {other:?}"),
    }
}
