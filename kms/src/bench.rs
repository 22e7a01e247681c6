//! `kms bench`: the same EMV Option A card-key derivation (derive in the
//! token, wrap under a trusted transport KEK, destroy), measured in one run
//! (a) straight on the HSM layer, i.e. the PKCS#11 calls alone, and (b)
//! through the key layer (store lookup, state and policy checks, blocking
//! pool), with 1 and N concurrent callers. Ratios, not absolute numbers, are
//! what to compare across machines.
//!
//! It uses the configured token with a throw-away tenant and a temporary
//! SQLite database, and destroys its two keys at the end.

use crate::cli::{BenchArgs, Cli};
use anyhow::{Context, Result};
use kms::config::Config;
use kms::derivation::{emv_option_a_data, Pan};
use kms::hsm::{DeriveAlg, Hsm, KeyRef, KeySpec, Role, WrapAlg};
use kms::model::{Algorithm, KeyName, KeyUsage, ObjectId, Tenant};
use kms::policy::KeyPolicy;
use kms::service::{Actor, CreateKey, KeyService};
use kms::store::Store;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(serde::Serialize)]
struct Row {
    what: &'static str,
    callers: usize,
    ops: u64,
    seconds: f64,
    ops_per_second: f64,
}

async fn service(cfg: &Config, db: &str, role: Role) -> Result<KeyService> {
    let store = Store::connect(db).await?;
    let hsm_cfg = cfg.hsm(role)?;
    let hsm = tokio::task::spawn_blocking(move || Hsm::open(&hsm_cfg)).await??;
    Ok(KeyService::open(
        Arc::new(hsm),
        store,
        KeyPolicy::load(&cfg.policy_dir)?,
        "bench",
    )
    .await?)
}

fn raw_rate(hsm: &Arc<Hsm>, imk: KeyRef, kek: KeyRef, callers: usize, secs: f64) -> Row {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let threads: Vec<_> = (0..callers)
        .map(|t| {
            let (hsm, stop, count) = (hsm.clone(), stop.clone(), count.clone());
            std::thread::spawn(move || {
                let mut n: u64 = t as u64;
                while !stop.load(Ordering::Relaxed) {
                    let pan = format!("{:016}", 4_000_000_000_000_000u64 + n);
                    n += callers as u64;
                    let Ok(pan) = Pan::parse(&pan) else { break };
                    let how = DeriveAlg::TdesEcb(emv_option_a_data(&pan, 1).to_vec());
                    let spec = KeySpec {
                        algorithm: Algorithm::Tdes2,
                        usage: KeyUsage::Data,
                        exportable: true,
                        object_id: ObjectId::random(),
                        label: "bench".into(),
                        persistent: false,
                    };
                    if hsm
                        .derive_and_wrap(&imk, &how, &spec, &kek, WrapAlg::AesKwp)
                        .is_err()
                    {
                        break;
                    }
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let seconds = start.elapsed().as_secs_f64();
    let ops = count.load(Ordering::Relaxed);
    Row {
        what: "hsm layer, unaudited: derive+wrap",
        callers,
        ops,
        seconds,
        ops_per_second: ops as f64 / seconds,
    }
}

/// Run `op(n)` in a loop on `callers` tasks for `secs`; each caller counts
/// its own sequence numbers n = caller, caller + callers, ...
async fn task_rate<F, Fut>(what: &'static str, callers: usize, secs: f64, op: F) -> Row
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|t| {
            let (stop, count, op) = (stop.clone(), count.clone(), op.clone());
            tokio::spawn(async move {
                let mut n = t as u64;
                while !stop.load(Ordering::Relaxed) {
                    if !op(n).await {
                        break;
                    }
                    n += callers as u64;
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let seconds = start.elapsed().as_secs_f64();
    let ops = count.load(Ordering::Relaxed);
    Row {
        what,
        callers,
        ops,
        seconds,
        ops_per_second: ops as f64 / seconds,
    }
}

/// The audit trail alone: one record appended (hash chain, HSM MAC, row
/// lock, commit) per operation.
async fn audit_rate(svc: &KeyService, callers: usize, secs: f64) -> Row {
    let log = svc.audit().clone();
    task_rate(
        "audit trail alone: append one record",
        callers,
        secs,
        move |_| {
            let log = log.clone();
            async move {
                let e = kms::audit::AuditEvent {
                    actor: "bench".into(),
                    role: "operator".into(),
                    action: "bench.append".into(),
                    outcome: Some(kms::audit::Outcome::Success),
                    ..Default::default()
                };
                log.record(e).await.is_ok()
            }
        },
    )
    .await
}

async fn layer_rate(svc: &KeyService, tenant: &Tenant, callers: usize, secs: f64) -> Result<Row> {
    let (svc, tenant) = (svc.clone(), tenant.clone());
    let (who, imk, kek) = (
        Actor::parse("bench")?,
        KeyName::parse("imk")?,
        KeyName::parse("transport")?,
    );
    Ok(task_rate(
        "key layer, audited: emv_card_key",
        callers,
        secs,
        move |n| {
            let (svc, tenant, who, imk, kek) = (
                svc.clone(),
                tenant.clone(),
                who.clone(),
                imk.clone(),
                kek.clone(),
            );
            async move {
                let Ok(pan) = Pan::parse(&format!("{:016}", 4_000_000_000_000_000u64 + n)) else {
                    return false;
                };
                svc.emv_card_key(&who, &tenant, &imk, &pan, 1, &kek)
                    .await
                    .is_ok()
            }
        },
    )
    .await)
}

pub async fn run(cli: &Cli, args: &BenchArgs) -> Result<()> {
    let cfg = Config::load(cli.config.as_deref())?;
    let dir = std::env::temp_dir().join(format!("kms-bench-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    let db = format!("sqlite://{}?mode=rwc", dir.join("bench.db").display());
    let tenant = Tenant::parse(&format!(
        "bench-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ))?;
    let who = Actor::parse("bench")?;
    let req = |name: &str, algorithm, usage, trusted| -> Result<CreateKey> {
        Ok(CreateKey {
            tenant: tenant.clone(),
            name: KeyName::parse(name)?,
            algorithm,
            usage,
            exportable: false,
            activate: true,
            trusted,
        })
    };
    // The transport KEK must be trusted to wrap derived (wrap-with-trusted)
    // keys: made under the security officer's login, then the user's.
    // The bench approves its own request: it works on a throw-away database
    // and destroys this KEK (whose value nobody knows) when it ends.
    let kek_rec = {
        let user = service(&cfg, &db, Role::User).await?;
        let op = kms::service::Operation::TrustedKek {
            tenant: tenant.to_string(),
            key: "transport".into(),
            algorithm: Algorithm::Aes128.as_str().into(),
            usage: KeyUsage::TransportKek.as_str().into(),
            kcv: None,
        };
        let r = user.request(&who, op).await?;
        user.approve(&Actor::parse("bench-approver")?, &r.id, &r.digest)
            .await?;
        drop(user);
        let so = service(&cfg, &db, Role::SecurityOfficer)
            .await
            .context("the bench needs the SO PIN to create its trusted transport KEK")?;
        match so.execute(&who, &r.id).await? {
            kms::service::Executed::Key(k) => k,
            _ => anyhow::bail!("unexpected result"),
        }
    };
    let svc = service(&cfg, &db, Role::User).await?;
    let imk_rec = svc
        .create(&who, req("imk", Algorithm::Tdes2, KeyUsage::ImkAc, false)?)
        .await?;
    let r = |rec: &kms::store::KeyRecord| -> Result<KeyRef> {
        let v = rec.current().context("no version")?;
        Ok(KeyService::key_ref(rec, v)?)
    };
    let (imk, kek) = (r(&imk_rec)?, r(&kek_rec)?);
    let hsm = svc.hsm().clone();

    let mut rows = Vec::new();
    for callers in [1, args.concurrency.max(1)] {
        let h = hsm.clone();
        let secs = args.seconds;
        rows.push(
            tokio::task::spawn_blocking(move || raw_rate(&h, imk, kek, callers, secs)).await?,
        );
        rows.push(layer_rate(&svc, &tenant, callers, args.seconds).await?);
        rows.push(audit_rate(&svc, callers, args.seconds).await);
    }

    // Clean up: every object the bench made on the configured token (its
    // two keys and the audit keys of its throw-away trail), straight off
    // the token, so `kms status` stays consistent.
    let mut objects = vec![imk.object_id, kek.object_id];
    for rec in svc.store().list_keys(None).await? {
        if rec.tenant.as_str() == kms::audit::SYSTEM_TENANT {
            objects.extend(rec.versions.iter().map(|v| v.object_id));
        }
    }
    let h = hsm.clone();
    tokio::task::spawn_blocking(move || -> Result<()> {
        for id in objects {
            h.destroy(id)?;
        }
        Ok(())
    })
    .await??;
    let _ = std::fs::remove_dir_all(&dir);

    let ratio = |c: usize| {
        let raw = rows
            .iter()
            .find(|r| r.callers == c && r.what.starts_with("hsm"));
        let lay = rows
            .iter()
            .find(|r| r.callers == c && r.what.starts_with("key"));
        match (raw, lay) {
            (Some(a), Some(b)) if a.ops_per_second > 0.0 => b.ops_per_second / a.ops_per_second,
            _ => 0.0,
        }
    };
    let summary = serde_json::json!({
                "operation": "EMV Option A ICC master key: C_DeriveKey(DES3_ECB_ENCRYPT_DATA) + KCV twin + C_WrapKey(AES-KWP) + C_DestroyObject",
        "note": "hsm layer = unaudited PKCS#11 work; key layer = the same use case audited (attempt + outcome records); audit trail alone = one record append",
        "rows": rows,
        "key_layer_over_raw_1": ratio(1),
        "key_layer_over_raw_n": ratio(args.concurrency.max(1)),
        "sessions_open": hsm.sessions_open(),
    });
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "operation: {}",
            summary["operation"].as_str().unwrap_or_default()
        );
        println!(
            "{:<48} {:>7} {:>9} {:>10}",
            "path", "callers", "ops", "ops/s"
        );
        for r in &rows {
            println!(
                "{:<48} {:>7} {:>9} {:>10.0}",
                r.what, r.callers, r.ops, r.ops_per_second
            );
        }
        println!(
            "key layer / raw: {:.2} with 1 caller, {:.2} with {} callers",
            ratio(1),
            ratio(args.concurrency.max(1)),
            args.concurrency.max(1)
        );
    }
    Ok(())
}
