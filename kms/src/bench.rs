//! `kms bench`: the same EMV Option A card-key derivation (derive in the
//! token, wrap under a trusted transport KEK, destroy), measured in one run
//! (a) straight on the HSM layer, i.e. the PKCS#11 calls alone, and (b)
//! through the key layer (store lookup, state and policy checks, blocking
//! pool), with 1 and N concurrent callers. Ratios, not absolute numbers, are
//! what to compare across machines.
//!
//! With `--api`, also the provisioning API in the same run on the same
//! token: `POST /v1/card-keys/emv` (three derivations: AC, SMI, SMC) served
//! by an in-process server on 127.0.0.1:0 with a temporary development PKI,
//! driven by 1 and N reference clients (`kms-client`, one keep-alive mTLS
//! connection each), beside the raw token rate of exactly that work (three
//! derive+wrap+destroy per request-equivalent), and the separately measured
//! rates of a request's other parts (audit append, PAN HMAC, response
//! signature, replay-cache insert, SD binding, key lookups, the client's
//! signature check), from which a request's cost is broken down.
//!
//! It uses the configured token with a temporary SQLite database (and, for
//! `--api`, the development provisioner's tenant in it), and destroys every
//! object it made on the token at the end, also when a measurement fails.

use crate::cli::{BenchArgs, Cli};
use anyhow::{bail, Context, Result};
use kms::config::{Config, ProvisioningLimits, ServerSettings};
use kms::derivation::{emv_option_a_data, Pan};
use kms::hsm::{DeriveAlg, Hsm, KeyRef, KeySpec, Role, SignAlg, WrapAlg};
use kms::model::{Algorithm, KeyName, KeyUsage, ObjectId, Tenant};
use kms::policy::KeyPolicy;
use kms::server::dev_pki;
use kms::service::{Actor, CreateKey, KeyService};
use kms::store::{SdBinding, Store};
use kms_client::wire::EmvCardKeysRequest;
use kms_client::{ClientConfig, ProvisioningClient};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

// Row names (`what`); the ratios and the breakdown find rows by them.
const RAW: &str = "hsm layer, unaudited: derive+wrap";
const LAYER: &str = "key layer, audited: emv_card_key";
const AUDIT: &str = "audit trail alone: append one record";
const RAW_REQUEST: &str = "hsm layer, unaudited: 3x derive+wrap = 1 request";
const API: &str = "api: POST /v1/card-keys/emv (mTLS, kms-client)";
const PAN_HMAC: &str = "pan hmac alone (hsm)";
const SIGN: &str = "response signature alone (hsm ecdsa p-256)";
const REPLAY: &str = "replay-cache insert alone (db write)";
const BIND: &str = "sd binding, existing, alone (db write)";
const LOOKUP: &str = "key lookup alone (db read)";
const POLICY: &str = "policy decision alone (cedar)";
const VERIFY: &str = "client signature check alone (p256, software)";

/// The issuer master keys' prefix (`imk-ac`, `imk-smi`, `imk-smc`) and the
/// transport KEK, as the API requests name them.
const IMK_PREFIX: &str = "imk";
const KEK_NAME: &str = "transport";
/// The server's response-signing key (`server/provisioning/signer.rs`),
/// made in the system tenant when the server starts.
const RESPONSE_SIGNING_KEY: &str = "api-response-signing";
/// Key records one `POST /v1/card-keys/emv` reads: four for the policy
/// decisions (3 IMKs and the KEK, `envelope.rs` `authorize`), four again in
/// the service (`issuer_master_keys`, `transport_kek`).
const LOOKUPS_PER_REQUEST: f64 = 8.0;
/// Policy decisions per request: one per key (3 IMKs and the KEK).
const DECISIONS_PER_REQUEST: f64 = 4.0;
/// About the size of an EMV card-keys answer, for the signature rates.
const SIGNED_BODY: usize = 600;

#[derive(serde::Serialize)]
struct Row {
    what: &'static str,
    callers: usize,
    ops: u64,
    seconds: f64,
    ops_per_second: f64,
    /// Latency percentiles, for the API rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    p99_ms: Option<f64>,
    /// Audit records written per request, counted at the chain's head, for
    /// the API rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    audit_records_per_op: Option<f64>,
}

impl Row {
    fn new(what: &'static str, callers: usize, ops: u64, seconds: f64) -> Row {
        Row {
            what,
            callers,
            ops,
            seconds,
            ops_per_second: if seconds > 0.0 {
                ops as f64 / seconds
            } else {
                0.0
            },
            p50_ms: None,
            p99_ms: None,
            audit_records_per_op: None,
        }
    }
}

/// One part of a request's cost: how often a request does it, and what
/// that costs from the part's own rate alone.
#[derive(serde::Serialize)]
struct Part {
    part: &'static str,
    /// The row whose rate prices it.
    row: &'static str,
    per_request: f64,
    /// per_request / (the part's rate with 1 caller), in ms: its share of
    /// one client's latency.
    ms_1: f64,
    /// per_request / (the part's rate with N callers), in ms: its share of
    /// the node's time per request when N callers keep it busy.
    ms_n: f64,
}

#[derive(serde::Serialize)]
struct Breakdown {
    parts: Vec<Part>,
    sum_ms_1: f64,
    sum_ms_n: f64,
    /// 1000 / API requests per second, with 1 and with N clients.
    measured_ms_1: f64,
    measured_ms_n: f64,
    /// measured - sum: TLS, HTTP, JSON, tasks and pools (negative
    /// when parts overlap across requests).
    rest_ms_1: f64,
    rest_ms_n: f64,
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

/// `callers` threads each derive+wrap (and destroy) once under every key of
/// `imks` per operation, on the HSM layer alone, for `secs`.
fn raw_rate(
    what: &'static str,
    hsm: &Arc<Hsm>,
    imks: &[KeyRef],
    kek: KeyRef,
    callers: usize,
    secs: f64,
) -> Row {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let threads: Vec<_> = (0..callers)
        .map(|t| {
            let (hsm, stop, count) = (hsm.clone(), stop.clone(), count.clone());
            let imks = imks.to_vec();
            std::thread::spawn(move || {
                let mut n: u64 = t as u64;
                'run: while !stop.load(Ordering::Relaxed) {
                    let pan = format!("{:016}", 4_000_000_000_000_000u64 + n);
                    n += callers as u64;
                    let Ok(pan) = Pan::parse(&pan) else { break };
                    let data = emv_option_a_data(&pan, 1).to_vec();
                    for imk in &imks {
                        let how = DeriveAlg::TdesEcb(data.clone());
                        let spec = KeySpec {
                            algorithm: Algorithm::Tdes2,
                            usage: KeyUsage::Data,
                            exportable: true,
                            object_id: ObjectId::random(),
                            label: "bench".into(),
                            persistent: false,
                        };
                        if hsm
                            .derive_and_wrap(imk, &how, &spec, &kek, WrapAlg::AesKwp)
                            .is_err()
                        {
                            break 'run;
                        }
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
    Row::new(
        what,
        callers,
        count.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64(),
    )
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
    Row::new(
        what,
        callers,
        count.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64(),
    )
}

/// The audit trail alone: one record appended (hash chain, HSM MAC, row
/// lock, commit) per operation.
async fn audit_rate(svc: &KeyService, callers: usize, secs: f64) -> Row {
    let log = svc.audit().clone();
    task_rate(AUDIT, callers, secs, move |_| {
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
    })
    .await
}

async fn layer_rate(svc: &KeyService, tenant: &Tenant, callers: usize, secs: f64) -> Result<Row> {
    let (svc, tenant) = (svc.clone(), tenant.clone());
    let (who, imk, kek) = (
        Actor::parse("bench")?,
        KeyName::parse("imk")?,
        KeyName::parse(KEK_NAME)?,
    );
    Ok(task_rate(LAYER, callers, secs, move |n| {
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
    })
    .await)
}

/// Client `i`'s card: the same PAN and Security Domain on every request,
/// so the SD binding is new on its first request and existing after.
fn card_request(i: usize) -> EmvCardKeysRequest {
    EmvCardKeysRequest {
        tenant: None,
        issuer_keys: IMK_PREFIX.into(),
        pan: format!("54133300{i:08}"),
        psn: 1,
        se_id: format!("4090AB12{i:08X}"),
        sd_aid: "A0000001515350".into(),
        transport_kek: KEK_NAME.into(),
    }
}

/// `callers` reference clients, each on its own keep-alive connection
/// (opened before the clock starts), send `POST /v1/card-keys/emv` in a
/// loop for `secs`; every request has a fresh request id and its answer's
/// signature is checked (the client does both). Any failed request fails
/// the run: a refusal would measure something else.
async fn api_rate(cfg: &ClientConfig, callers: usize, secs: f64) -> Result<Row> {
    let mut clients = Vec::with_capacity(callers);
    for _ in 0..callers {
        clients.push(
            ProvisioningClient::connect(cfg.clone())
                .await
                .context("connecting to the in-process server")?,
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut client)| {
            let stop = stop.clone();
            let req = card_request(i);
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    if let Err(e) = client.emv_card_keys(&req).await {
                        return (latencies, Some(e.to_string()));
                    }
                    latencies.push(t.elapsed().as_secs_f64());
                }
                (latencies, None)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut failure = None;
    for t in tasks {
        let (latencies, error) = t.await?;
        all.extend(latencies);
        failure = failure.or(error);
    }
    let seconds = start.elapsed().as_secs_f64();
    if let Some(e) = failure {
        bail!("an API request failed: {e}");
    }
    all.sort_by(f64::total_cmp);
    let pct = |q: f64| {
        let rank = (q * all.len() as f64).ceil() as usize;
        all.get(rank.saturating_sub(1)).map(|s| s * 1000.0)
    };
    let mut row = Row::new(API, callers, all.len() as u64, seconds);
    row.p50_ms = pct(0.50);
    row.p99_ms = pct(0.99);
    Ok(row)
}

/// The provisioning API's part of the run: IMKs, an in-process server and
/// its clients, and the rates of a request's parts, with 1 and N callers.
async fn api_rows(
    cfg: &Config,
    svc: &KeyService,
    tenant: &Tenant,
    dir: &Path,
    kek: KeyRef,
    args: &BenchArgs,
    made: &mut Vec<ObjectId>,
) -> Result<Vec<Row>> {
    let who = Actor::parse("bench")?;
    let mut imks = Vec::with_capacity(3);
    for (suffix, usage) in [
        ("ac", KeyUsage::ImkAc),
        ("smi", KeyUsage::ImkSmi),
        ("smc", KeyUsage::ImkSmc),
    ] {
        let rec = svc
            .create(
                &who,
                CreateKey {
                    tenant: tenant.clone(),
                    name: KeyName::parse(&format!("{IMK_PREFIX}-{suffix}"))?,
                    algorithm: Algorithm::Tdes2,
                    usage,
                    exportable: false,
                    activate: true,
                    trusted: false,
                },
            )
            .await?;
        let k = key_ref(&rec)?;
        made.push(k.object_id);
        imks.push(k);
    }

    let pki = dir.join("pki");
    dev_pki::ensure(&pki)?;
    let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let settings = ServerSettings {
        admin_listen: loopback,
        provisioning_listen: loopback,
        tls_cert: pki.join("server.crt"),
        tls_key: pki.join("server.key"),
        client_ca: pki.join("ca.crt"),
        crl: None,
        principals: pki.join("principals.toml"),
        provisioning_policy: cfg.server.provisioning_policy.clone(),
        // Far above what the bench can send: it measures the work, not
        // the limiter (each client has one request in flight).
        limits: ProvisioningLimits {
            rate_per_principal: 1_000_000,
            burst_per_principal: 1_000_000,
            max_in_flight: u32::try_from(args.concurrency)
                .unwrap_or(u32::MAX)
                .saturating_mul(2)
                .max(256),
            replay_window_seconds: ProvisioningLimits::default().replay_window_seconds,
        },
    };
    let read = |f: &str| std::fs::read(pki.join(f)).with_context(|| format!("reading {f}"));
    let client = ClientConfig {
        server: loopback,
        server_name: "localhost".into(),
        ca_pem: read("ca.crt")?,
        cert_chain_pem: Some(read("provisioner.crt")?),
        key_pem: Some(read("provisioner.key")?),
        // Trust on first use, at connect (before the clock starts).
        signing_key: None,
    };
    let running = kms::server::start(&settings, svc.clone())
        .await
        .context("starting the in-process server")?;
    let client = ClientConfig {
        server: running.addr_prov,
        ..client
    };
    let authz = Arc::new(kms::authz::Authorizer::load(&settings.provisioning_policy)?);
    let rows = api_measure(svc, tenant, &imks, kek, &client, authz, args).await;
    running.stop().await;
    rows
}

async fn api_measure(
    svc: &KeyService,
    tenant: &Tenant,
    imks: &[KeyRef],
    kek: KeyRef,
    client: &ClientConfig,
    authz: Arc<kms::authz::Authorizer>,
    args: &BenchArgs,
) -> Result<Vec<Row>> {
    let secs = args.seconds;
    let hsm = svc.hsm().clone();
    let store = svc.store().clone();

    // The response-signing key the server made, and one signature made with
    // it, for the client-side check.
    let system = Tenant::parse(kms::audit::SYSTEM_TENANT)?;
    let sign_rec = store
        .find_key(&system, &KeyName::parse(RESPONSE_SIGNING_KEY)?)
        .await?
        .context("the server's response-signing key is not in the store")?;
    let sign_key = key_ref(&sign_rec)?;
    let body = vec![b'x'; SIGNED_BODY];
    let message = kms_client::wire::signed_message(&uuid::Uuid::new_v4().to_string(), &body);
    let (public, signature) = {
        let (h, m) = (hsm.clone(), message.clone());
        tokio::task::spawn_blocking(move || -> Result<_> {
            Ok((
                h.public_key(&sign_key)?,
                h.sign(&sign_key, SignAlg::EcdsaP256Sha256, &m)?,
            ))
        })
        .await??
    };
    let verifying = p256::ecdsa::VerifyingKey::from_sec1_bytes(&public)
        .context("the response-signing key is not a P-256 point")?;
    let signature = p256::ecdsa::Signature::from_slice(&signature)
        .context("the token's signature is not 64 bytes r || s")?;
    let hmac_of = Arc::new(card_request(0).pan);
    let own = tenant.to_string();
    if !(decide(&authz, &own, false) && decide(&authz, &own, true)) {
        bail!("the provisioning policy refuses the decisions the bench prices");
    }

    let mut rows = Vec::new();
    for callers in [1, args.concurrency.max(1)] {
        let (h, imks) = (hsm.clone(), imks.to_vec());
        rows.push(
            tokio::task::spawn_blocking(move || {
                raw_rate(RAW_REQUEST, &h, &imks, kek, callers, secs)
            })
            .await?,
        );

        let (before, _) = store.audit_head().await?;
        let mut row = api_rate(client, callers, secs).await?;
        let (after, _) = store.audit_head().await?;
        if row.ops > 0 {
            row.audit_records_per_op = Some(after.saturating_sub(before) as f64 / row.ops as f64);
        }
        rows.push(row);

        let log = svc.audit().clone();
        let pan = hmac_of.clone();
        rows.push(
            task_rate(PAN_HMAC, callers, secs, move |_| {
                let (log, pan) = (log.clone(), pan.clone());
                async move { log.pan_hash(&pan).await.is_ok() }
            })
            .await,
        );

        let (h, m) = (hsm.clone(), Arc::new(message.clone()));
        rows.push(
            task_rate(SIGN, callers, secs, move |_| {
                let (h, m) = (h.clone(), m.clone());
                async move {
                    tokio::task::spawn_blocking(move || {
                        h.sign(&sign_key, SignAlg::EcdsaP256Sha256, &m)
                    })
                    .await
                    .is_ok_and(|r| r.is_ok())
                }
            })
            .await,
        );

        let s = store.clone();
        rows.push(
            task_rate(REPLAY, callers, secs, move |_| {
                let s = s.clone();
                async move {
                    let id = uuid::Uuid::new_v4().to_string();
                    let now = time::OffsetDateTime::now_utc().unix_timestamp();
                    matches!(
                        s.remember_request("bench-provisioner", &id, now).await,
                        Ok(true)
                    )
                }
            })
            .await,
        );

        let (s, t, c) = (store.clone(), tenant.to_string(), callers as u64);
        rows.push(
            task_rate(BIND, callers, secs, move |n| {
                let s = s.clone();
                let binding = SdBinding {
                    tenant: t.clone(),
                    se_id: format!("BE0C{:08X}", n % c),
                    sd_aid: "A0000001515350".into(),
                    pan_hmac: "00".repeat(16),
                    pan_masked: "541333******0000".into(),
                    psn: 1,
                    bound_at: "2026-01-01T00:00:00Z".into(),
                    bound_by: "bench".into(),
                };
                async move { s.bind_sd(&binding).await.is_ok() }
            })
            .await,
        );

        let names = Arc::new(
            ["ac", "smi", "smc"]
                .iter()
                .map(|s| KeyName::parse(&format!("{IMK_PREFIX}-{s}")))
                .chain(std::iter::once(KeyName::parse(KEK_NAME)))
                .collect::<Result<Vec<_>, _>>()?,
        );
        let (s, t) = (store.clone(), tenant.clone());
        rows.push(
            task_rate(LOOKUP, callers, secs, move |n| {
                let (s, t, names) = (s.clone(), t.clone(), names.clone());
                async move {
                    let name = &names[(n % names.len() as u64) as usize];
                    matches!(s.find_key(&t, name).await, Ok(Some(_)))
                }
            })
            .await,
        );

        let (a, t) = (authz.clone(), tenant.to_string());
        rows.push(
            task_rate(POLICY, callers, secs, move |n| {
                let allowed = decide(&a, &t, n % 4 == 3);
                async move {
                    // Pure CPU, never pending: yield, or the callers would
                    // hold every worker and the timer that stops them.
                    tokio::task::yield_now().await;
                    allowed
                }
            })
            .await,
        );

        let (v, m) = (verifying, Arc::new(message.clone()));
        rows.push(
            task_rate(VERIFY, callers, secs, move |_| {
                let m = m.clone();
                async move {
                    use p256::ecdsa::signature::Verifier;
                    let ok = v.verify(&m, &signature).is_ok();
                    // Pure CPU too (see the policy decisions above).
                    tokio::task::yield_now().await;
                    ok
                }
            })
            .await,
        );
    }
    Ok(rows)
}

/// One policy decision as `POST /v1/card-keys/emv` asks it: the development
/// provisioner, an active IMK of its tenant or (`kek`) the trusted
/// transport KEK. True if allowed, as it must be.
fn decide(authz: &kms::authz::Authorizer, tenant: &str, kek: bool) -> bool {
    use kms::authz::{KeyAttrs, KeyRole, PrincipalAttrs, ProvisioningAction};
    let principal = PrincipalAttrs {
        name: dev_pki::PROVISIONER,
        role: "provisioner",
        tenant: Some(tenant),
    };
    let (name, usage, algorithm, role) = if kek {
        (
            KEK_NAME,
            KeyUsage::TransportKek,
            Algorithm::Aes128,
            KeyRole::TransportKek,
        )
    } else {
        (
            "imk-ac",
            KeyUsage::ImkAc,
            Algorithm::Tdes2,
            KeyRole::IssuerMasterKey,
        )
    };
    let key = KeyAttrs {
        tenant,
        name,
        usage: usage.as_str(),
        algorithm: algorithm.as_str(),
        state: "active",
        version: 1,
        exportable: false,
        trusted: kek,
    };
    authz
        .authorize(&principal, ProvisioningAction::EmvCardKeys, &key, role)
        .allowed
}

fn key_ref(rec: &kms::store::KeyRecord) -> Result<KeyRef> {
    let v = rec.current().context("no version")?;
    Ok(KeyService::key_ref(rec, v)?)
}

fn rate(rows: &[Row], what: &str, callers: usize) -> Option<f64> {
    rows.iter()
        .find(|r| r.what == what && r.callers == callers)
        .map(|r| r.ops_per_second)
        .filter(|r| *r > 0.0)
}

fn ratio(rows: &[Row], num: &str, den: &str, callers: usize) -> f64 {
    match (rate(rows, num, callers), rate(rows, den, callers)) {
        (Some(a), Some(b)) => a / b,
        _ => 0.0,
    }
}

fn breakdown(rows: &[Row], n: usize) -> Breakdown {
    let records = |c: usize| {
        rows.iter()
            .find(|r| r.what == API && r.callers == c)
            .and_then(|r| r.audit_records_per_op)
            .unwrap_or(0.0)
    };
    let ms = |what: &str, per: f64, c: usize| rate(rows, what, c).map_or(0.0, |r| per / r * 1e3);
    let mut parts = Vec::new();
    for (part, row, per) in [
        ("3x derive+wrap+destroy (hsm)", RAW_REQUEST, 1.0),
        ("audit records (db write, hsm mac)", AUDIT, f64::NAN),
        ("pan hmac (hsm)", PAN_HMAC, 1.0),
        ("response signature (hsm ecdsa)", SIGN, 1.0),
        ("replay-cache insert (db write)", REPLAY, 1.0),
        ("sd binding, existing (db write)", BIND, 1.0),
        ("key lookups (db read)", LOOKUP, LOOKUPS_PER_REQUEST),
        ("policy decisions (cedar)", POLICY, DECISIONS_PER_REQUEST),
        ("client signature check (software)", VERIFY, 1.0),
    ] {
        // The audit records per request are counted, not assumed.
        let (per_1, per_n) = if per.is_nan() {
            (records(1), records(n))
        } else {
            (per, per)
        };
        parts.push(Part {
            part,
            row,
            per_request: per_1,
            ms_1: ms(row, per_1, 1),
            ms_n: ms(row, per_n, n),
        });
    }
    let sum_ms_1 = parts.iter().map(|p| p.ms_1).sum::<f64>();
    let sum_ms_n = parts.iter().map(|p| p.ms_n).sum::<f64>();
    let measured_ms_1 = ms(API, 1.0, 1);
    let measured_ms_n = ms(API, 1.0, n);
    Breakdown {
        parts,
        sum_ms_1,
        sum_ms_n,
        measured_ms_1,
        measured_ms_n,
        rest_ms_1: measured_ms_1 - sum_ms_1,
        rest_ms_n: measured_ms_n - sum_ms_n,
    }
}

/// Everything measured, with the token objects made for it pushed to
/// `made` as they are made (so they are destroyed whatever happens).
async fn measure(
    cfg: &Config,
    args: &BenchArgs,
    dir: &Path,
    db: &str,
    made: &mut Vec<ObjectId>,
    user: &mut Option<KeyService>,
) -> Result<Vec<Row>> {
    // The API's clients are the development provisioner, bound to its
    // tenant; without --api a throw-away tenant.
    let tenant = if args.api {
        Tenant::parse(dev_pki::PROVISIONER_TENANT)?
    } else {
        Tenant::parse(&format!(
            "bench-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ))?
    };
    let who = Actor::parse("bench")?;
    // The transport KEK must be trusted to wrap derived (wrap-with-trusted)
    // keys: made under the security officer's login, then the user's.
    // The bench acts as two people (requester and approver) on its
    // throw-away database and destroys this KEK (whose value nobody knows)
    // when it ends.
    let kek_rec = {
        let svc = service(cfg, db, Role::User).await?;
        let op = kms::service::Operation::TrustedKek {
            tenant: tenant.to_string(),
            key: KEK_NAME.into(),
            algorithm: Algorithm::Aes128.as_str().into(),
            usage: KeyUsage::TransportKek.as_str().into(),
            kcv: None,
        };
        let people = BenchPeople::found(&svc).await?;
        let r = svc.request(&people.officer, op).await?;
        people.approve(&svc, &r.id, &r.digest).await?;
        drop(svc);
        let so = service(cfg, db, Role::SecurityOfficer)
            .await
            .context("the bench needs the SO PIN to create its trusted transport KEK")?;
        match so.execute(&people.officer, &r.id).await? {
            kms::service::Executed::Key(k) => k,
            _ => bail!("the trusted-KEK request did not return a key"),
        }
    };
    let kek = key_ref(&kek_rec)?;
    made.push(kek.object_id);
    let svc = service(cfg, db, Role::User).await?;
    *user = Some(svc.clone());
    let imk_rec = svc
        .create(
            &who,
            CreateKey {
                tenant: tenant.clone(),
                name: KeyName::parse("imk")?,
                algorithm: Algorithm::Tdes2,
                usage: KeyUsage::ImkAc,
                exportable: false,
                activate: true,
                trusted: false,
            },
        )
        .await?;
    let imk = key_ref(&imk_rec)?;
    made.push(imk.object_id);
    let hsm = svc.hsm().clone();

    let mut rows = Vec::new();
    for callers in [1, args.concurrency.max(1)] {
        let h = hsm.clone();
        let secs = args.seconds;
        rows.push(
            tokio::task::spawn_blocking(move || raw_rate(RAW, &h, &[imk], kek, callers, secs))
                .await?,
        );
        rows.push(layer_rate(&svc, &tenant, callers, args.seconds).await?);
        rows.push(audit_rate(&svc, callers, args.seconds).await);
    }
    if args.api {
        rows.extend(api_rows(cfg, &svc, &tenant, dir, kek, args, made).await?);
    }
    Ok(rows)
}

/// Destroy, straight off the token, every object the bench made (its keys
/// The two people of the bench's throw-away database (issue 5: requests
/// are made and approved by enrolled people who proved their PIN): an
/// officer who requests, a custodian who approves with a signature.
struct BenchPeople {
    officer: kms::service::CustodianSession,
    approver: kms::service::CustodianSession,
    approver_key_pem: zeroize::Zeroizing<String>,
    approver_cert: Vec<u8>,
}

impl BenchPeople {
    async fn found(svc: &KeyService) -> Result<BenchPeople> {
        use kms::model::{CustodianName, CustodianRole, Pin};
        use kms::service::Enrolment;
        let now = time::OffsetDateTime::now_utc;
        let mut made = Vec::new();
        for (name, role) in [
            ("bench-officer", CustodianRole::SecurityOfficer),
            ("bench-approver", CustodianRole::Custodian),
        ] {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
            let mut p = rcgen::CertificateParams::new(Vec::<String>::new())?;
            p.distinguished_name
                .push(rcgen::DnType::CommonName, name.to_owned());
            let cert = p.self_signed(&key)?.der().to_vec();
            let (first, pin) = (bench_pin(), bench_pin());
            let enrolment = Enrolment {
                name: CustodianName::parse(name)?,
                role,
                cert_sha256: Some(kms::crypto::approval::cert_sha256(&cert)),
                login_window: None,
                idle_timeout_seconds: None,
                initial_pin: Pin::new(first.as_str()),
            };
            match made.first() {
                None => svc.enroll(&Actor::parse("bench")?, enrolment).await?,
                Some((officer, _, _)) => svc.enroll_founding(officer, enrolment).await?,
            };
            let session = svc
                .change_pin(
                    name,
                    &Pin::new(first.as_str()),
                    &Pin::new(pin.as_str()),
                    now(),
                )
                .await?;
            made.push((session, zeroize::Zeroizing::new(key.serialize_pem()), cert));
        }
        let mut made = made.into_iter();
        let (Some((officer, _, _)), Some((approver, approver_key_pem, approver_cert))) =
            (made.next(), made.next())
        else {
            bail!("the bench's people were not enrolled");
        };
        svc.close_founding(&officer).await?;
        Ok(BenchPeople {
            officer,
            approver,
            approver_key_pem,
            approver_cert,
        })
    }

    async fn approve(&self, svc: &KeyService, id: &str, digest: &str) -> Result<()> {
        use kms::crypto::approval::{approval_message, sign_approval, ApprovalSignature};
        let msg = approval_message(id, digest, self.approver.name().as_str());
        let sig = ApprovalSignature {
            cert_der: self.approver_cert.clone(),
            signature: sign_approval(&self.approver_key_pem, &msg)?,
        };
        svc.approve(&self.approver, id, digest, &sig).await?;
        Ok(())
    }
}

/// A random 12-digit PIN (re-drawn in the unlikely case the PIN policy
/// would call it weak).
fn bench_pin() -> zeroize::Zeroizing<String> {
    loop {
        let pin =
            zeroize::Zeroizing::new(format!("{:012}", rand::random::<u64>() % 1_000_000_000_000));
        if kms::model::PinPolicy::default().check(&pin).is_ok() {
            return pin;
        }
    }
}

/// and the audit and response-signing keys of its throw-away database), so
/// `kms status` stays consistent.
async fn clean_up(
    cfg: &Config,
    db: &str,
    user: Option<KeyService>,
    mut objects: Vec<ObjectId>,
) -> Result<usize> {
    let svc = match user {
        Some(s) => s,
        None => service(cfg, db, Role::User).await?,
    };
    for rec in svc.store().list_keys(None).await? {
        if rec.tenant.as_str() == kms::audit::SYSTEM_TENANT {
            objects.extend(rec.versions.iter().map(|v| v.object_id));
        }
    }
    let h = svc.hsm().clone();
    let sessions = h.sessions_open();
    tokio::task::spawn_blocking(move || -> Result<()> {
        for id in objects {
            h.destroy(id)?;
        }
        Ok(())
    })
    .await??;
    Ok(sessions)
}

pub async fn run(cli: &Cli, args: &BenchArgs) -> Result<()> {
    let cfg = Config::load(cli.config.as_deref())?;
    let dir = std::env::temp_dir().join(format!("kms-bench-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    let db = format!("sqlite://{}?mode=rwc", dir.join("bench.db").display());
    let mut made = Vec::new();
    let mut user = None;
    let measured = measure(&cfg, args, &dir, &db, &mut made, &mut user).await;
    let cleaned = clean_up(&cfg, &db, user, made).await;
    let _ = std::fs::remove_dir_all(&dir);
    let rows = measured?;
    let sessions_open = cleaned.context("destroying the bench's objects on the token")?;

    let n = args.concurrency.max(1);
    let mut summary = serde_json::json!({
        "operation": "EMV Option A ICC master key: C_DeriveKey(DES3_ECB_ENCRYPT_DATA) + KCV twin + C_WrapKey(AES-KWP) + C_DestroyObject",
        "note": "hsm layer = unaudited PKCS#11 work; key layer = the same use case audited (attempt + outcome records); audit trail alone = one record append",
        "rows": rows,
        "key_layer_over_raw_1": ratio(&rows, LAYER, RAW, 1),
        "key_layer_over_raw_n": ratio(&rows, LAYER, RAW, n),
        "sessions_open": sessions_open,
    });
    let api = args.api.then(|| {
        let b = breakdown(&rows, n);
        let (r1, rn) = (
            ratio(&rows, API, RAW_REQUEST, 1),
            ratio(&rows, API, RAW_REQUEST, n),
        );
        (b, r1, rn)
    });
    if let Some((b, r1, rn)) = &api {
        summary["api"] = serde_json::json!({
            "request": "POST /v1/card-keys/emv: 3 Option A derivations (AC, SMI, SMC), same PAN and SD per client (binding existing after its first request), fresh request id each, answer signature checked by the client",
            "raw_request_equivalent": "3x derive+wrap+destroy on the HSM layer, unaudited = 1 request's token work (its ops_per_second = derivations per second / 3)",
            "api_over_raw_1": r1,
            "api_over_raw_n": rn,
            "goal": "API requests/s >= 0.5 x raw request-equivalents/s",
            "goal_met_1": *r1 >= 0.5,
            "goal_met_n": *rn >= 0.5,
            "breakdown": b,
        });
    }
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(());
    }
    println!(
        "operation: {}",
        summary["operation"].as_str().unwrap_or_default()
    );
    println!(
        "{:<50} {:>7} {:>9} {:>10} {:>8} {:>8}",
        "path", "callers", "ops", "ops/s", "p50 ms", "p99 ms"
    );
    let opt = |v: Option<f64>| v.map(|v| format!("{v:.2}")).unwrap_or_default();
    for r in &rows {
        println!(
            "{:<50} {:>7} {:>9} {:>10.0} {:>8} {:>8}",
            r.what,
            r.callers,
            r.ops,
            r.ops_per_second,
            opt(r.p50_ms),
            opt(r.p99_ms)
        );
    }
    println!(
        "key layer / raw: {:.2} with 1 caller, {:.2} with {n} callers",
        ratio(&rows, LAYER, RAW, 1),
        ratio(&rows, LAYER, RAW, n),
    );
    if let Some((b, r1, rn)) = &api {
        let verdict = |r: f64| if r >= 0.5 { "met" } else { "not met" };
        println!(
            "api / raw (request-equivalents): {r1:.2} with 1 client, {rn:.2} with {n} clients \
             (goal >= 0.50: {} / {})",
            verdict(*r1),
            verdict(*rn)
        );
        println!(
            "\nwhere a request's time goes (each part priced by its own rate above; \
             @1: ms of one client's latency; @{n}: ms of node time per request with {n} callers)"
        );
        println!(
            "{:<40} {:>8} {:>9} {:>9}",
            "part",
            "per req",
            "ms @1",
            format!("ms @{n}")
        );
        for p in &b.parts {
            println!(
                "{:<40} {:>8.2} {:>9.3} {:>9.3}",
                p.part, p.per_request, p.ms_1, p.ms_n
            );
        }
        println!(
            "{:<40} {:>8} {:>9.3} {:>9.3}",
            "sum of parts", "", b.sum_ms_1, b.sum_ms_n
        );
        println!(
            "{:<40} {:>8} {:>9.3} {:>9.3}",
            "measured: 1000 / api req/s", "", b.measured_ms_1, b.measured_ms_n
        );
        println!(
            "{:<40} {:>8} {:>9.3} {:>9.3}",
            "rest: tls, http, json, tasks, pools", "", b.rest_ms_1, b.rest_ms_n
        );
    }
    Ok(())
}
