#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Custodians approve from their own workstations (issue 5, item 5): the
//! admin listener's `/v1/requests` endpoints over real mTLS, on a fresh
//! SoftHSM2 token. The person is the one whose enrolment binds the client
//! certificate; an approval needs their PIN and their signature over the
//! approval message with the certificate's key (invariant 3, TSM-AC-3).

use hyper::Method;
use kms::crypto::approval::sign_approval;
use kms::model::{Algorithm, CustodianRole, KeyUsage};
use kms::service::Operation;
use kms::store::AuditFilter;
use kms_e2e::client::{ApiClient, Reply};
use kms_e2e::fixture::{actor, create_req, TestKms};
use kms_e2e::people::{found_these, Person};
use kms_e2e::pki::{ClientCert, TestPki};
use std::net::SocketAddr;

struct Setup {
    kms: TestKms,
    pki: TestPki,
    server: kms::server::RunningServer,
    so1: Person,
    carol: Person,
    request: String,
    digest: String,
}

/// so1 (an officer, certificate of its own) and carol (a custodian whose
/// certificate is the test CA's "unmapped" one: no API principal, but a
/// person), a key, and so1's request to destroy it.
async fn setup() -> Setup {
    let kms = TestKms::new().await;
    let pki = TestPki::new();
    // Both certificates come from the test CA, so both people can call
    // the admin API; neither is an API principal for this (the officer's
    // maps to the API's security officer, which does not matter here).
    let people = vec![
        Person::with_cert(
            "so1",
            CustodianRole::SecurityOfficer,
            pki.officer.key_pem(),
            &pki.officer.der,
            &pki.officer.pem,
        ),
        Person::with_cert(
            "carol",
            CustodianRole::Custodian,
            pki.unmapped.key_pem(),
            &pki.unmapped.der,
            &pki.unmapped.pem,
        ),
        // An operator: enrolled, but in no role the shipped quorum takes.
        Person::with_cert(
            "oscar",
            CustodianRole::Operator,
            pki.provisioner.key_pem(),
            &pki.provisioner.der,
            &pki.provisioner.pem,
        ),
    ];
    let svc = kms.svc().clone();
    found_these(&svc, &people).await;
    let mut people = people.into_iter();
    let (so1, carol) = (people.next().unwrap(), people.next().unwrap());
    // oscar's PIN and key are rebuilt by the test that needs him.
    // Never activated, so it may be destroyed at once (SP 800-57).
    svc.create(
        &actor("installer"),
        kms::service::CreateKey {
            activate: false,
            ..create_req(
                "issuer-a",
                "old-kek",
                Algorithm::Aes256,
                KeyUsage::Kek,
                false,
            )
        },
    )
    .await
    .unwrap();
    let req = svc
        .request(
            &so1.session(&svc).await,
            Operation::Destroy {
                tenant: "issuer-a".into(),
                key: "old-kek".into(),
                version: 1,
                reason: Some("retired".into()),
            },
        )
        .await
        .unwrap();
    let server = kms::server::start(&pki.settings(), svc)
        .await
        .expect("server");
    Setup {
        kms,
        pki,
        server,
        so1,
        carol,
        request: req.id,
        digest: req.digest,
    }
}

impl Setup {
    fn addr(&self) -> SocketAddr {
        self.server.addr_admin
    }

    fn client(&self, who: &ClientCert) -> ApiClient {
        ApiClient::new(&self.pki.ca, Some(who.identity()))
    }

    async fn get(&self, who: &ClientCert, path: &str) -> Reply {
        self.client(who).get(self.addr(), path).await.unwrap()
    }

    async fn post(&self, who: &ClientCert, path: &str, body: serde_json::Value) -> Reply {
        self.client(who)
            .request(
                self.addr(),
                Method::POST,
                path,
                body.to_string().into_bytes(),
            )
            .await
            .unwrap()
    }

    /// carol's approval body: her PIN, certificate and signature over `msg`.
    fn body(&self, pin: &str, msg_hex: &str, digest: &str) -> serde_json::Value {
        let msg = hex::decode(msg_hex).unwrap();
        let sig = sign_approval(&self.carol.key_pem, &msg).unwrap();
        serde_json::json!({
            "digest": digest,
            "pin": pin,
            "certificate": hex::encode_upper(&self.carol.cert_der),
            "signature": hex::encode_upper(sig),
        })
    }

    async fn records(&self, action: &str) -> Vec<kms::audit::AuditRecord> {
        self.kms
            .svc()
            .audit()
            .store()
            .audit_search(&AuditFilter {
                action: Some(action.into()),
                ..Default::default()
            })
            .await
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inv3_tsm_ac_3_a_custodian_approves_from_a_workstation_with_pin_and_signature() {
    let s = setup().await;
    let me = &s.pki.unmapped;

    // The open requests, and this one with the exact message to sign.
    let list = s.get(me, "/v1/requests").await;
    assert_eq!(list.status, 200, "{}", list.text());
    let ids: Vec<String> = list
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, vec![s.request.clone()]);
    let shown = s.get(me, &format!("/v1/requests/{}", s.request)).await;
    assert_eq!(shown.status, 200, "{}", shown.text());
    let shown = shown.json();
    assert_eq!(shown["digest"], s.digest.as_str());
    assert_eq!(shown["operation"]["op"], "destroy");
    let msg = shown["approval_message"].as_str().unwrap().to_owned();

    // A wrong PIN: 401, counted, nothing approved.
    let path = format!("/v1/requests/{}/approvals", s.request);
    let wrong = s
        .post(me, &path, s.body("0000 wrong words", &msg, &s.digest))
        .await;
    assert_eq!(wrong.status, 401, "{}", wrong.text());
    assert_eq!(wrong.json()["code"], "unauthenticated");
    assert!(!wrong.text().contains("0000 wrong words"));
    assert!(s
        .kms
        .svc()
        .approval(&s.request)
        .await
        .unwrap()
        .approvers
        .is_empty());

    // A signature over another message (another request's): refused.
    let other = hex::encode_upper(kms::crypto::approval::approval_message(
        "another-request",
        &s.digest,
        "carol",
    ));
    let forged = s
        .post(me, &path, s.body(&s.carol.pin, &other, &s.digest))
        .await;
    assert_eq!(forged.status, 409, "{}", forged.text());
    assert_eq!(forged.json()["code"], "refused");

    // The digest of another operation: refused.
    let bad_digest = "0".repeat(64);
    let mismatch = s
        .post(me, &path, s.body(&s.carol.pin, &msg, &bad_digest))
        .await;
    assert_eq!(mismatch.status, 409, "{}", mismatch.text());
    assert!(s
        .kms
        .svc()
        .approval(&s.request)
        .await
        .unwrap()
        .approvers
        .is_empty());

    // An enrolled operator, with the right PIN and signature, is not in a
    // role the quorum takes: 409, not a failed login.
    let oscar = Person::with_cert(
        "oscar",
        CustodianRole::Operator,
        s.pki.provisioner.key_pem(),
        &s.pki.provisioner.der,
        &s.pki.provisioner.pem,
    );
    let oscar_shown = s
        .get(&s.pki.provisioner, &format!("/v1/requests/{}", s.request))
        .await;
    let oscar_msg = hex::decode(oscar_shown.json()["approval_message"].as_str().unwrap()).unwrap();
    let oscar_body = serde_json::json!({
        "digest": s.digest,
        "pin": oscar.pin,
        "certificate": hex::encode_upper(&oscar.cert_der),
        "signature": hex::encode_upper(sign_approval(&oscar.key_pem, &oscar_msg).unwrap()),
    });
    let wrong_role = s.post(&s.pki.provisioner, &path, oscar_body).await;
    assert_eq!(wrong_role.status, 409, "{}", wrong_role.text());
    assert_eq!(wrong_role.json()["code"], "refused");
    assert!(s
        .kms
        .svc()
        .approval(&s.request)
        .await
        .unwrap()
        .approvers
        .is_empty());

    // The right PIN and signature: approved, and the trail proves it.
    let ok = s
        .post(me, &path, s.body(&s.carol.pin, &msg, &s.digest))
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()["approvers"], serde_json::json!(["carol"]));
    let approvals = s.records("request.approve").await;
    let signed = approvals
        .iter()
        .find(|r| r.event.outcome == Some(kms::audit::Outcome::Success))
        .expect("a successful approval record");
    assert_eq!(signed.event.actor, "carol");
    assert!(signed.event.details.contains_key("approval_signature"));
    assert_eq!(kms::service::check_approval_record(signed).problem, None);

    // Twice: refused.
    let again = s
        .post(me, &path, s.body(&s.carol.pin, &msg, &s.digest))
        .await;
    assert_eq!(again.status, 409, "{}", again.text());

    // The requester executes at the terminal.
    let svc = s.kms.svc();
    svc.execute(&s.so1.session(svc).await, &s.request)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tsm_ac_3_inv4_a_certificate_bound_to_nobody_or_copied_gets_nothing_and_is_recorded() {
    let s = setup().await;
    // The operator's certificate is an API principal but no person.
    let nobody = s.get(&s.pki.operator, "/v1/requests").await;
    assert_eq!(nobody.status, 403, "{}", nobody.text());
    assert_eq!(nobody.json()["code"], "unknown-certificate");
    let refused = s.records("api.requests.list").await;
    assert!(refused
        .iter()
        .any(|r| r.event.outcome == Some(kms::audit::Outcome::Refused)
            && r.event.details.get("cert_sha256") == Some(&s.pki.operator.sha256)));

    // carol's certificate and signature sent over so1's connection:
    // refused before any PIN is looked at.
    let shown = s
        .get(&s.pki.unmapped, &format!("/v1/requests/{}", s.request))
        .await;
    let msg = shown.json()["approval_message"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/v1/requests/{}/approvals", s.request);
    let copied = s
        .post(&s.pki.officer, &path, s.body(&s.carol.pin, &msg, &s.digest))
        .await;
    assert_eq!(copied.status, 409, "{}", copied.text());
    assert_eq!(copied.json()["code"], "refused");
    assert!(s
        .kms
        .svc()
        .approval(&s.request)
        .await
        .unwrap()
        .approvers
        .is_empty());

    // A body that is not the right JSON: 400, and the PIN is not echoed.
    let junk = s
        .client(&s.pki.unmapped)
        .request(
            s.addr(),
            Method::POST,
            &path,
            b"{\"pin\":\"1357 secret words\"".to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(junk.status, 400, "{}", junk.text());
    assert!(!junk.text().contains("1357 secret words"));
    assert!(!s
        .records("api.requests.approve")
        .await
        .iter()
        .any(|r| format!("{r:?}").contains("1357 secret words")));
}
