#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The admin API over real mTLS (TSM-DATA-4, TSM-AC-3): a server started
//! in-process on 127.0.0.1 (ports chosen by the system) on a fresh SoftHSM2
//! token and SQLite database, with a test PKI made by rcgen; the reference
//! client of `kms_e2e::client` speaks TLS 1.3 with client certificates.
//!
//! Officers read the trail; other roles and unmapped certificates get 403
//! problem+json; certificates without the CA, expired or revoked never get
//! past the handshake; every one of these acts is in the audit trail with
//! its outcome; a graceful shutdown ends the trail with `service.close` at a
//! signed checkpoint.

use hyper::Method;
use kms::audit::{
    parse_public_key, public_key_pem, verify_checkpoint, AuditRecord, Checkpoint, Outcome,
};
use kms::model::{Algorithm, KeyUsage};
use kms::server::RunningServer;
use kms::store::AuditFilter;
use kms_e2e::client::{ApiClient, ClientError, Reply};
use kms_e2e::fixture::{actor, create_req, TestKms};
use kms_e2e::pki::{ClientCert, TestPki, OFFICER, OPERATOR, PROVISIONER, PROVISIONER_TENANT};
use rustls::AlertDescription;
use std::net::SocketAddr;
use std::time::Duration;

const AUDIT_ENDPOINTS: [(&str, &str); 5] = [
    ("/v1/audit/records", "api.audit.search"),
    ("/v1/audit/verify", "api.audit.verify"),
    ("/v1/audit/checkpoints", "api.audit.checkpoints"),
    ("/v1/audit/public-key", "api.audit.public-key"),
    ("/v1/audit/report", "api.audit.report"),
];

/// Filler records for the shutdown test.
const REPORT_RECORDS: usize = 4000;

struct Api {
    kms: TestKms,
    pki: TestPki,
    server: Option<RunningServer>,
    admin: SocketAddr,
    prov: SocketAddr,
}

impl Api {
    async fn start() -> Api {
        let kms = TestKms::new().await;
        let pki = TestPki::new();
        let server = kms::server::start(&pki.settings(), kms.svc().clone())
            .await
            .expect("server starts");
        Api {
            admin: server.addr_admin,
            prov: server.addr_prov,
            server: Some(server),
            kms,
            pki,
        }
    }

    fn client(&self, who: Option<&ClientCert>) -> ApiClient {
        ApiClient::new(&self.pki.ca, who.map(ClientCert::identity))
    }

    async fn get(&self, who: &ClientCert, path: &str) -> Reply {
        self.client(Some(who))
            .get(self.admin, path)
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    async fn search(&self, f: AuditFilter) -> Vec<AuditRecord> {
        self.kms
            .svc()
            .audit()
            .store()
            .audit_search(&f)
            .await
            .unwrap()
    }

    async fn by_action(&self, action: &str) -> Vec<AuditRecord> {
        self.search(AuditFilter {
            action: Some(action.into()),
            ..Default::default()
        })
        .await
    }

    /// Records of refused handshakes are written just after the refusal,
    /// while the client is already reading the alert: wait for them.
    async fn handshake_refusals(&self, want: usize) -> Vec<AuditRecord> {
        for _ in 0..100 {
            let found = self.by_action("api.tls.handshake").await;
            if found.len() >= want {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.by_action("api.tls.handshake").await
    }
}

fn assert_problem(r: &Reply, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.content_type(), "application/problem+json", "{}", r.text());
    let p = r.json();
    assert_eq!(p["code"], code, "{p}");
    assert_eq!(p["status"], status);
    assert_eq!(p["type"], format!("urn:kms:problem:{code}"));
    assert!(p["title"].is_string() && p["detail"].is_string(), "{p}");
}

fn detail<'a>(r: &'a AuditRecord, k: &str) -> Option<&'a str> {
    r.event.details.get(k).map(String::as_str)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn officer_searches_verifies_and_reads_report_key_and_checkpoints() {
    let api = Api::start().await;
    let svc = api.kms.svc();
    svc.create(
        &actor("alice"),
        create_req(
            "issuer-a",
            "kmc-1",
            Algorithm::Tdes2,
            KeyUsage::SdKmc,
            false,
        ),
    )
    .await
    .unwrap();
    svc.audit().checkpoint_head().await.unwrap();
    let officer = &api.pki.officer;

    // Search, with the filters of `kms audit search`.
    let r = api
        .get(officer, "/v1/audit/records?key=issuer-a/kmc-1")
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.content_type(), "application/json");
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let search_id = r.header("x-request-id").unwrap().to_owned();
    let found: Vec<AuditRecord> = serde_json::from_slice(&r.body).unwrap();
    assert!(found.len() >= 2, "attempt and outcome of key.create");
    assert!(found.iter().all(|rec| rec.event.action == "key.create"));
    let r = api
        .get(
            officer,
            "/v1/audit/records?action=service.*&outcome=success&limit=1",
        )
        .await;
    let found: Vec<AuditRecord> = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].event.action, "service.open");

    // Verification: 200 with the report, which is clean.
    let r = api.get(officer, "/v1/audit/verify").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["records"].as_u64().unwrap() >= 4, "{v}");
    assert!(v["macs_verified"].as_u64().unwrap() >= 4, "{v}");
    assert_eq!(v["damage"].as_array().unwrap().len(), 0);

    // The public key, as PEM, is the HSM's, and verifies the checkpoints.
    let r = api.get(officer, "/v1/audit/public-key").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.content_type(), "text/plain; charset=utf-8");
    let pem = r.text();
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{pem}");
    assert_eq!(
        pem,
        public_key_pem(&svc.audit().public_key().await.unwrap()).unwrap()
    );
    let key = parse_public_key(&pem).unwrap();
    let r = api.get(officer, "/v1/audit/checkpoints").await;
    assert_eq!(r.status, 200);
    let cps: Vec<Checkpoint> = serde_json::from_slice(&r.body).unwrap();
    assert!(!cps.is_empty());
    assert!(cps.iter().all(|c| verify_checkpoint(c, &key)));

    // The HTML report.
    let r = api.get(officer, "/v1/audit/report").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.content_type(), "text/html; charset=utf-8");
    let html = r.text();
    assert!(
        html.contains("<html") && html.contains("VERIFIED"),
        "{}",
        &html[..200.min(html.len())]
    );

    // Metrics: officers and operators.
    for who in [officer, &api.pki.operator] {
        let r = api.get(who, "/metrics").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.content_type().starts_with("text/plain; version=0.0.4"));
        let text = r.text();
        assert!(
            text.contains(
                "kms_http_requests_total{listener=\"admin\",route=\"/v1/audit/records\",status=\"200\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains("kms_audit_records_written_total"), "{text}");
        assert!(text.contains("kms_audit_chain_head"), "{text}");
    }

    // Every read is in the trail: actor, role, source, request id.
    let reads = api
        .search(AuditFilter {
            actor: Some(OFFICER.into()),
            action: Some("api.audit.*".into()),
            ..Default::default()
        })
        .await;
    let actions: Vec<&str> = reads.iter().map(|r| r.event.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "api.audit.search",
            "api.audit.search",
            "api.audit.verify",
            "api.audit.public-key",
            "api.audit.checkpoints",
            "api.audit.report"
        ]
    );
    for rec in &reads {
        assert_eq!(rec.event.outcome, Some(Outcome::Success));
        assert_eq!(rec.event.role, "security-officer");
        assert!(rec
            .event
            .source
            .as_deref()
            .unwrap()
            .starts_with("127.0.0.1:"));
        assert_eq!(
            detail(rec, "cert_sha256"),
            Some(api.pki.officer.sha256.as_str())
        );
        assert!(!rec.mac.is_empty(), "MACed in the HSM");
    }
    assert_eq!(
        reads[0].event.request_id.as_deref(),
        Some(search_id.as_str())
    );
    assert_eq!(detail(&reads[0], "query"), Some("key=issuer-a/kmc-1"));
    assert_eq!(detail(&reads[2], "result"), Some("intact"));
    // The server's start is recorded with the policy it enforces.
    let start = api.by_action("server.start").await;
    assert_eq!(start.len(), 1);
    assert_eq!(detail(&start[0], "crl"), Some("1 list(s)"));
    assert_eq!(
        detail(&start[0], "principals_digest").map(str::len),
        Some(64)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_roles_get_403_problems_and_the_refusals_are_audited() {
    let api = Api::start().await;
    let prov = &api.pki.provisioner;
    for (path, _) in AUDIT_ENDPOINTS {
        let r = api.get(prov, path).await;
        assert_problem(&r, 403, "forbidden");
    }
    assert_problem(&api.get(prov, "/metrics").await, 403, "forbidden");
    // The operator may read metrics but not the trail.
    assert_problem(
        &api.get(&api.pki.operator, "/v1/audit/records").await,
        403,
        "forbidden",
    );
    // Health and readiness need nothing beyond TLS.
    assert_eq!(api.get(prov, "/v1/health").await.status, 200);
    let r = api.get(prov, "/v1/ready").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["token"], "logged-in");

    let refused = api
        .search(AuditFilter {
            actor: Some(PROVISIONER.into()),
            outcome: Some(Outcome::Refused),
            ..Default::default()
        })
        .await;
    let actions: Vec<&str> = refused.iter().map(|r| r.event.action.as_str()).collect();
    let mut want: Vec<&str> = AUDIT_ENDPOINTS.iter().map(|(_, a)| *a).collect();
    want.push("api.metrics");
    assert_eq!(actions, want);
    for rec in &refused {
        assert_eq!(rec.event.role, "provisioner");
        assert_eq!(rec.event.tenant.as_deref(), Some(PROVISIONER_TENANT));
        assert!(rec
            .event
            .reason
            .as_deref()
            .unwrap()
            .contains("security-officer"));
    }
    let op = api
        .search(AuditFilter {
            actor: Some(OPERATOR.into()),
            ..Default::default()
        })
        .await;
    assert_eq!(
        op.len(),
        1,
        "one refusal; the successful scrape is not recorded"
    );
    assert_eq!(op[0].event.action, "api.audit.search");
    assert_eq!(op[0].event.outcome, Some(Outcome::Refused));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmapped_certificate_gets_403_and_is_audited_by_fingerprint() {
    let api = Api::start().await;
    let who = &api.pki.unmapped;
    assert_problem(
        &api.get(who, "/v1/audit/records").await,
        403,
        "unknown-certificate",
    );
    assert_problem(&api.get(who, "/metrics").await, 403, "unknown-certificate");
    assert_eq!(api.get(who, "/v1/health").await.status, 200);

    let recs = api
        .search(AuditFilter {
            actor: Some(who.actor()),
            ..Default::default()
        })
        .await;
    assert_eq!(recs.len(), 2);
    for rec in &recs {
        assert_eq!(rec.event.outcome, Some(Outcome::Refused));
        assert_eq!(rec.event.role, "unknown");
        assert_eq!(detail(rec, "subject_cn"), Some("nobody.kms.test"));
    }
    assert_eq!(recs[0].event.action, "api.audit.search");
    assert_eq!(recs[1].event.action, "api.metrics");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_certificate_wrong_ca_expired_or_revoked_fail_the_handshake() {
    let api = Api::start().await;
    let cases: [(Option<&ClientCert>, AlertDescription, &str); 4] = [
        (
            None,
            AlertDescription::CertificateRequired,
            "no-certificate",
        ),
        (
            Some(&api.pki.foreign),
            AlertDescription::UnknownCA,
            "unknown-issuer",
        ),
        (
            Some(&api.pki.expired),
            AlertDescription::CertificateExpired,
            "expired",
        ),
        (
            Some(&api.pki.revoked),
            AlertDescription::CertificateRevoked,
            "revoked",
        ),
    ];
    for (who, alert, label) in &cases {
        for addr in [api.admin, api.prov] {
            match api.client(*who).get(addr, "/v1/health").await {
                Err(ClientError::Tls(rustls::Error::AlertReceived(got))) => {
                    assert_eq!(got, *alert, "{label}")
                }
                other => panic!("{label}: expected a TLS alert, got {other:?}"),
            }
        }
    }

    // Each refusal is recorded, naming the certificate that was presented.
    let recs = api.handshake_refusals(8).await;
    assert_eq!(recs.len(), 8, "{recs:#?}");
    for (who, _, label) in &cases {
        let mine: Vec<&AuditRecord> = recs
            .iter()
            .filter(|r| detail(r, "error") == Some(*label))
            .collect();
        assert_eq!(mine.len(), 2, "{label}: one per listener");
        let listeners: Vec<&str> = mine.iter().filter_map(|r| detail(r, "listener")).collect();
        assert!(listeners.contains(&"admin") && listeners.contains(&"provisioning"));
        for rec in mine {
            assert_eq!(rec.event.outcome, Some(Outcome::Refused));
            assert!(rec
                .event
                .source
                .as_deref()
                .unwrap()
                .starts_with("127.0.0.1:"));
            match who {
                None => assert_eq!(rec.event.actor, "anonymous"),
                Some(c) => {
                    assert_eq!(rec.event.actor, c.actor());
                    assert_eq!(
                        detail(rec, "presented_cert_sha256"),
                        Some(c.sha256.as_str())
                    );
                }
            }
        }
    }

    // The officer is unaffected, and the failures are counted.
    let r = api.get(&api.pki.officer, "/metrics").await;
    assert_eq!(r.status, 200);
    let text = r.text();
    for (_, _, label) in &cases {
        assert!(
            text.contains(&format!(
                "kms_tls_handshake_failures_total{{listener=\"admin\",reason=\"{label}\"}} 1"
            )),
            "{label}: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_queries_paths_methods_and_bodies_are_problems() {
    let api = Api::start().await;
    let officer = &api.pki.officer;
    for q in [
        "outcome=maybe",
        "limit=0",
        "limit=lots",
        "from=yesterday",
        "actr=sofia",
    ] {
        let r = api.get(officer, &format!("/v1/audit/records?{q}")).await;
        assert_problem(&r, 400, "invalid-query");
    }
    let refused = api
        .search(AuditFilter {
            actor: Some(OFFICER.into()),
            outcome: Some(Outcome::Refused),
            ..Default::default()
        })
        .await;
    assert_eq!(refused.len(), 5);
    assert_eq!(detail(&refused[0], "query"), Some("outcome=maybe"));

    assert_problem(&api.get(officer, "/v1/nothing").await, 404, "not-found");
    let client = api.client(Some(officer));
    let r = client
        .request(api.admin, Method::POST, "/v1/audit/verify", b"{}".to_vec())
        .await
        .unwrap();
    assert_problem(&r, 405, "method-not-allowed");
    // The server answers 413 from Content-Length and closes; a client still
    // uploading may see the connection reset before it reads the answer
    // (about 1 run in 12 on loopback). The refusal is what is tested: retry
    // until the answer is read.
    let mut answered = false;
    for _ in 0..10 {
        if let Ok(r) = client
            .request(
                api.admin,
                Method::POST,
                "/v1/audit/verify",
                vec![b'x'; 100 * 1024],
            )
            .await
        {
            assert_problem(&r, 413, "payload-too-large");
            answered = true;
            break;
        }
    }
    assert!(
        answered,
        "an oversized body is answered 413 at least once in 10 tries"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_provisioning_listener_serves_health_and_readiness_only() {
    let api = Api::start().await;
    let client = api.client(Some(&api.pki.provisioner));
    let r = client.get(api.prov, "/v1/health").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ok");
    let r = client.get(api.prov, "/v1/ready").await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "ready");
    let officer = api.client(Some(&api.pki.officer));
    let r = officer.get(api.prov, "/v1/audit/records").await.unwrap();
    assert_problem(&r, 404, "not-found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_ends_the_trail_with_service_close_at_a_checkpoint() {
    let mut api = Api::start().await;
    // A trail long enough that the report (which verifies every record's
    // MAC in the HSM first) is still being made when the shutdown starts.
    for i in 0..REPORT_RECORDS {
        api.kms
            .svc()
            .audit()
            .record(kms::audit::AuditEvent {
                actor: format!("filler-{i}"),
                role: "operator".into(),
                action: "test.fill".into(),
                outcome: Some(Outcome::Success),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let officer = api.client(Some(&api.pki.officer));
    let admin = api.admin;
    let started = std::time::Instant::now();
    let in_flight = tokio::spawn(async move { officer.get(admin, "/v1/audit/report").await });
    // Past the handshake (a few ms) and well inside the report (about
    // 70 ms per thousand records here).
    tokio::time::sleep(Duration::from_millis(60)).await;
    let shutdown_from = time::OffsetDateTime::now_utc();
    api.server.take().unwrap().shutdown().await.unwrap();
    let shut = started.elapsed();
    // The request in flight when the shutdown started still got its answer,
    // and was recorded before the service closed.
    let r = in_flight
        .await
        .unwrap()
        .expect("the request in flight is answered");
    assert_eq!(r.status, 200, "{}", r.text());
    eprintln!("report answered; shutdown returned after {shut:?}");

    // Nothing is accepted any more.
    let late = api
        .client(Some(&api.pki.officer))
        .get(api.admin, "/v1/health")
        .await;
    assert!(matches!(late, Err(ClientError::Io(_))), "{late:?}");

    let store = api.kms.svc().audit().store();
    let (head, hash) = store.audit_head().await.unwrap();
    let last = api.search(AuditFilter::default()).await.pop().unwrap();
    assert_eq!(last.seq, head);
    assert_eq!(last.event.action, "service.close");
    let cps = store.checkpoints().await.unwrap();
    let at_head = cps
        .iter()
        .find(|c| c.seq == head)
        .expect("checkpoint at the head");
    assert_eq!(at_head.hash, hash);
    let key = parse_public_key(
        &public_key_pem(&api.kms.svc().audit().public_key().await.unwrap()).unwrap(),
    )
    .unwrap();
    assert!(verify_checkpoint(at_head, &key));
    assert!(api.kms.svc().audit().verify_database().await.unwrap().ok());
    let report = api.by_action("api.audit.report").await;
    assert_eq!(report.len(), 1);
    assert!(report[0].seq < head);
    // It really was in flight: answered after the shutdown had begun.
    let answered = time::OffsetDateTime::parse(
        &report[0].at,
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    eprintln!(
        "answered {:?} after the shutdown began",
        answered - shutdown_from
    );
    assert!(
        answered > shutdown_from,
        "the report was done before the shutdown"
    );
}
