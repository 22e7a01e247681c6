#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The seal (issue 5; KM-2 split knowledge of what starts the KMS, TSM-AC-3
//! no single person, invariants 3 and 4) on a real SoftHSM2 token: the
//! user PIN becomes one derived from an unseal secret split into M-of-N
//! shares, the file PIN stops working, a fresh start needs M valid shares,
//! every share presented (accepted or refused) is recorded, rotation and
//! re-key make the old shares useless, and `kms serve` starts sealed and is
//! unsealed by custodians over mTLS.

use hyper::Method;
use kms::audit::{AuditRecord, Outcome};
use kms::crypto::{shares, PinHasher, Share, UnsealSecret};
use kms::hsm::{Hsm, HsmError, KeyRef, Role};
use kms::model::{Algorithm, CustodianName, CustodianRole, KeyUsage, Pin};
use kms::policy::KeyPolicy;
use kms::seal::{token_pin, UnsealError, UnsealProgress, Unsealer};
use kms::service::{KeyService, ServiceError};
use kms::store::{AuditFilter, KeyRecord, NewCustodian, Store};
use kms_e2e::client::{ApiClient, Reply};
use kms_e2e::fixture::{actor, create_req, TestKms};
use kms_e2e::pki::TestPki;
use kms_e2e::scan::{find_secrets_in_sqlite, suspicious_values_in_sqlite};
use std::time::Duration;

async fn with_key(kms: &TestKms) -> KeyRecord {
    kms.svc()
        .create(
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
        .unwrap()
}

/// The check value the token computes for the key's object now.
async fn kcv_on_token(svc: &KeyService, key: &KeyRecord) -> Vec<u8> {
    let r = KeyRef {
        object_id: key.current().unwrap().object_id,
        algorithm: key.algorithm,
    };
    let hsm = svc.hsm().clone();
    tokio::task::spawn_blocking(move || hsm.kcv(&r))
        .await
        .unwrap()
        .unwrap()
        .expect("a KCV")
}

async fn login(kms: &TestKms, pin: &str) -> Result<Hsm, HsmError> {
    let mut cfg = kms.token.config(Role::User);
    cfg.pin = zeroize::Zeroizing::new(pin.to_owned());
    tokio::task::spawn_blocking(move || Hsm::open(&cfg))
        .await
        .unwrap()
}

async fn unsealer(kms: &TestKms) -> Unsealer {
    let store = Store::connect(&kms.db_url).await.unwrap();
    Unsealer::load(store, "test")
        .await
        .unwrap()
        .expect("the deployment is sealed")
}

/// Present `shares` and open; the HsmConfig's own (file) PIN is ignored.
async fn unseal(kms: &TestKms, shares: &[&Share]) -> Result<KeyService, UnsealError> {
    let mut u = unsealer(kms).await;
    for (i, s) in shares.iter().enumerate() {
        u.present(&s.to_text(), &format!("custodian-{i}")).await?;
    }
    u.open(kms.token.config(Role::User), KeyPolicy::builtin(), "test")
        .await
}

async fn records(store: &Store, action: &str) -> Vec<AuditRecord> {
    store
        .audit_search(&AuditFilter {
            action: Some(action.into()),
            ..Default::default()
        })
        .await
        .unwrap()
}

fn detail<'a>(r: &'a AuditRecord, k: &str) -> Option<&'a str> {
    r.event.details.get(k).map(String::as_str)
}

fn foreign_shares() -> Vec<Share> {
    let bytes: Vec<u8> = (0u8..32)
        .map(|i| i.wrapping_mul(37).wrapping_add(11))
        .collect();
    shares::split(&UnsealSecret::from_bytes(&bytes).unwrap(), 2, 3).unwrap()
}

/// Share `s` with its key-share bytes altered: same index, same split id
/// (the split id covers the common ciphertext only), another value.
fn altered(s: &Share) -> Share {
    let mut b = s.as_bytes().to_vec();
    b[5] ^= 0x5A;
    Share::from_bytes(s.threshold(), &b).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn km2_tsm_ac_3_initialize_seals_the_token_and_m_shares_unseal_it_with_the_same_keys() {
    let mut kms = TestKms::new().await;
    let key = with_key(&kms).await;
    let before = kcv_on_token(kms.svc(), &key).await;

    let shares = kms
        .svc()
        .initialize_seal(&actor("sofia"), 2, 3)
        .await
        .unwrap();
    assert_eq!(shares.len(), 3);
    assert!(shares.iter().all(|s| s.threshold() == 2));
    // The service that sealed stays logged in (its PIN changed under it).
    kms.svc()
        .create(
            &actor("alice"),
            create_req(
                "issuer-a",
                "kmc-2",
                Algorithm::Aes128,
                KeyUsage::SdKmc,
                false,
            ),
        )
        .await
        .unwrap();
    let store = kms.svc().store().clone();
    let init = records(&store, "seal.initialize").await;
    let ok = init
        .iter()
        .find(|r| r.event.outcome == Some(Outcome::Success))
        .expect("seal.initialize recorded");
    assert_eq!(detail(ok, "threshold"), Some("2"));
    assert_eq!(detail(ok, "shares"), Some("3"));
    assert_eq!(
        detail(ok, "split_id"),
        Some(shares[0].split_id().to_string().as_str())
    );
    let checks = detail(ok, "share_checks").unwrap();
    for s in &shares {
        assert!(checks.contains(&format!("{}:{}", s.index(), s.check_value())));
    }
    kms.close();

    // Really sealed: the PIN of the PIN file opens nothing any more.
    let file_pin = kms.token.user_pin.clone();
    assert!(matches!(
        login(&kms, &file_pin).await,
        Err(HsmError::WrongPin)
    ));

    // A fresh start needs M shares: one is too few.
    let mut u = unsealer(&kms).await;
    assert_eq!(u.progress(), UnsealProgress { have: 0, need: 2 });
    assert_eq!(
        u.present(&shares[2].to_text(), "carol").await.unwrap(),
        UnsealProgress { have: 1, need: 2 }
    );
    let Err(too_few) = u
        .open(kms.token.config(Role::User), KeyPolicy::builtin(), "test")
        .await
    else {
        panic!("one share of two unsealed");
    };
    assert!(
        matches!(too_few, UnsealError::TooFew { have: 1, need: 2 }),
        "{too_few}"
    );
    assert!(too_few.to_string().contains("1 more needed"), "{too_few}");
    u.present(&shares[0].to_text(), "dave").await.unwrap();
    let svc = u
        .open(kms.token.config(Role::User), KeyPolicy::builtin(), "test")
        .await
        .unwrap();

    // The same token objects: the key's KCV is unchanged.
    assert_eq!(kcv_on_token(&svc, &key).await, before);
    let accepted = records(&store, "seal.unseal-share").await;
    assert_eq!(accepted.len(), 2);
    assert!(accepted
        .iter()
        .all(|r| r.event.outcome == Some(Outcome::Success) && r.mac.is_empty()));
    assert_eq!(detail(&accepted[0], "share_index"), Some("3"));
    assert_eq!(accepted[0].event.actor, "carol");
    assert_eq!(detail(&accepted[1], "share_index"), Some("1"));
    let unsealed = records(&store, "seal.unsealed").await;
    assert_eq!(unsealed.len(), 1);
    assert_eq!(unsealed[0].event.outcome, Some(Outcome::Success));
    // The presentations, written before any login, are countersigned.
    let counter = records(&store, "audit.countersign").await;
    let listed = counter
        .iter()
        .filter_map(|r| detail(r, "record_hashes"))
        .collect::<Vec<_>>()
        .join(",");
    for r in &accepted {
        assert!(listed.contains(&format!("{}:{}", r.seq, r.hash)));
    }
    let all = store.audit_search(&AuditFilter::default()).await.unwrap();
    let verdicts = svc.audit().check_macs(all).await.unwrap();
    assert!(verdicts.iter().all(|(_, ok)| *ok), "{verdicts:?}");
    svc.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tsm_ac_3_inv4_refused_shares_are_recorded_and_change_nothing() {
    let mut kms = TestKms::new().await;
    let shares = kms
        .svc()
        .initialize_seal(&actor("sofia"), 2, 3)
        .await
        .unwrap();
    let store = kms.svc().store().clone();
    kms.close();

    let mut u = unsealer(&kms).await;
    let foreign = foreign_shares();
    type Expected = fn(&UnsealError) -> bool;
    let cases: Vec<(String, Expected)> = vec![
        ("KMS1-2-1-NOTASHARE".into(), |e| {
            matches!(e, UnsealError::Unparsable(_))
        }),
        (foreign[0].to_text().to_string(), |e| {
            matches!(e, UnsealError::OtherSplit { index: 1, .. })
        }),
        (altered(&shares[1]).to_text().to_string(), |e| {
            matches!(e, UnsealError::WrongShare { index: 2 })
        }),
    ];
    for (text, expected) in &cases {
        let e = u.present(text, "mallory").await.unwrap_err();
        assert!(expected(&e), "{e}");
        assert!(e.is_refusal());
        assert_eq!(u.progress().have, 0, "a refused share does not count");
    }
    u.present(&shares[0].to_text(), "carol").await.unwrap();
    let dup = u.present(&shares[0].to_text(), "carol").await.unwrap_err();
    assert!(matches!(dup, UnsealError::Duplicate { index: 1 }), "{dup}");
    assert_eq!(u.progress().have, 1);
    u.present(&shares[1].to_text(), "dave").await.unwrap();
    let extra = u.present(&shares[2].to_text(), "erin").await.unwrap_err();
    assert!(matches!(extra, UnsealError::Enough { need: 2 }), "{extra}");

    let presented = records(&store, "seal.unseal-share").await;
    let refused: Vec<&AuditRecord> = presented
        .iter()
        .filter(|r| r.event.outcome == Some(Outcome::Refused))
        .collect();
    assert_eq!(refused.len(), 5, "{presented:#?}");
    assert_eq!(refused[0].event.actor, "mallory");
    assert_eq!(detail(refused[0], "share_index"), None);
    assert_eq!(detail(refused[1], "share_index"), Some("1"));
    assert!(refused[1]
        .event
        .reason
        .as_deref()
        .unwrap()
        .contains("split"));
    assert_eq!(detail(refused[2], "share_index"), Some("2"));
    assert!(refused[2]
        .event
        .reason
        .as_deref()
        .unwrap()
        .contains("check value"));
    assert_eq!(detail(refused[3], "share_index"), Some("1"));
    for r in &presented {
        let text = serde_json::to_string(r).unwrap();
        for s in shares.iter().chain(&foreign) {
            assert!(!text.contains(s.to_text().as_str()), "a share in {text}");
        }
    }

    // The refusals left the two good shares in: they unseal.
    let svc = u
        .open(kms.token.config(Role::User), KeyPolicy::builtin(), "test")
        .await
        .unwrap();
    svc.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn km2_rotation_refuses_the_old_shares_and_keeps_the_pin() {
    let mut kms = TestKms::new().await;
    let key = with_key(&kms).await;
    let before = kcv_on_token(kms.svc(), &key).await;
    let old = kms
        .svc()
        .initialize_seal(&actor("sofia"), 2, 3)
        .await
        .unwrap();

    // Not the current shares: refused, recorded, nothing changes.
    let e = kms
        .svc()
        .rotate_shares(&actor("sofia"), &foreign_shares()[..2], 3, 4)
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::Refused(_)), "{e}");
    let e = kms
        .svc()
        .rotate_shares(&actor("sofia"), &old[..1], 3, 4)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("1 more needed"), "{e}");

    let new = kms
        .svc()
        .rotate_shares(&actor("sofia"), &[&old[2], &old[0]].map(clone_share), 3, 4)
        .await
        .unwrap();
    assert_eq!(new.len(), 4);
    assert_ne!(new[0].split_id(), old[0].split_id());
    // Same secret, so the same PIN.
    let pin_old = token_pin(&shares::combine(&old[..2]).unwrap());
    let pin_new = token_pin(&shares::combine(&new[1..4]).unwrap());
    assert_eq!(*pin_old, *pin_new);
    let store = kms.svc().store().clone();
    let rotations = records(&store, "seal.rotate").await;
    let outcomes: Vec<_> = rotations.iter().map(|r| r.event.outcome).collect();
    assert_eq!(
        outcomes,
        vec![
            Some(Outcome::Attempt),
            Some(Outcome::Refused),
            Some(Outcome::Attempt),
            Some(Outcome::Refused),
            Some(Outcome::Attempt),
            Some(Outcome::Success)
        ]
    );
    assert_eq!(detail(&rotations[5], "generation"), Some("2"));
    kms.close();

    let mut u = unsealer(&kms).await;
    assert_eq!(u.record().generation, 2);
    let e = u.present(&old[0].to_text(), "carol").await.unwrap_err();
    assert!(matches!(e, UnsealError::OtherSplit { .. }), "{e}");
    assert!(u.present(&new[0].to_text(), "carol").await.is_ok());
    drop(u);
    let svc = unseal(&kms, &[&new[3], &new[1], &new[2]]).await.unwrap();
    assert_eq!(kcv_on_token(&svc, &key).await, before);
    svc.close().await.unwrap();
}

fn clone_share(s: &Share) -> Share {
    Share::parse(&s.to_text()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn km2_rekey_changes_the_pin_and_the_old_shares_open_nothing() {
    let mut kms = TestKms::new().await;
    let key = with_key(&kms).await;
    let before = kcv_on_token(kms.svc(), &key).await;
    let old = kms
        .svc()
        .initialize_seal(&actor("sofia"), 2, 3)
        .await
        .unwrap();
    let new = kms
        .svc()
        .rekey_seal(&actor("sofia"), &old[1..3], 2, 2)
        .await
        .unwrap();
    assert_eq!(new.len(), 2);
    let pin_old = token_pin(&shares::combine(&old[..2]).unwrap());
    let pin_new = token_pin(&shares::combine(&new).unwrap());
    assert_ne!(*pin_old, *pin_new);
    // The live service keeps working under the new PIN.
    assert_eq!(kcv_on_token(kms.svc(), &key).await, before);
    let store = kms.svc().store().clone();
    let rekeys = records(&store, "seal.rekey").await;
    assert_eq!(rekeys.last().unwrap().event.outcome, Some(Outcome::Success));
    kms.close();

    assert!(matches!(
        login(&kms, &pin_old).await,
        Err(HsmError::WrongPin)
    ));
    let Err(e) = unseal(&kms, &[&old[0], &old[1]]).await else {
        panic!("the old shares unsealed");
    };
    assert!(matches!(e, UnsealError::OtherSplit { .. }), "{e}");
    let svc = unseal(&kms, &[&new[1], &new[0]]).await.unwrap();
    assert_eq!(kcv_on_token(&svc, &key).await, before);
    svc.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inv4_initialize_refusals_are_recorded_and_seal_nothing() {
    let mut kms = TestKms::new().await;
    let a = actor("sofia");
    for (m, n) in [(1, 3), (4, 3), (0, 0)] {
        let e = kms.svc().initialize_seal(&a, m, n).await.unwrap_err();
        assert!(matches!(e, ServiceError::Invalid(_)), "{e}");
    }
    // Under the security officer's login: refused (the SO PIN is not sealed).
    let so = kms
        .as_security_officer(|so| async move { so.initialize_seal(&actor("sofia"), 2, 3).await })
        .await;
    assert!(matches!(so, Err(ServiceError::Refused(_))), "{so:?}");
    assert!(kms.svc().seal_record().await.unwrap().is_none());

    kms.svc().initialize_seal(&a, 2, 2).await.unwrap();
    let twice = kms.svc().initialize_seal(&a, 2, 3).await.unwrap_err();
    assert!(twice.to_string().contains("sealed already"), "{twice}");
    let rec = kms.svc().seal_record().await.unwrap().unwrap();
    assert_eq!((rec.generation, rec.threshold, rec.shares), (1, 2, 2));
    let store = kms.svc().store().clone();
    let outcomes: Vec<_> = records(&store, "seal.initialize")
        .await
        .iter()
        .filter(|r| r.event.outcome != Some(Outcome::Attempt))
        .map(|r| r.event.outcome)
        .collect();
    assert_eq!(
        outcomes,
        vec![
            Some(Outcome::Refused),
            Some(Outcome::Refused),
            Some(Outcome::Refused),
            Some(Outcome::Refused),
            Some(Outcome::Success),
            Some(Outcome::Refused)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inv3_no_share_secret_or_derived_pin_in_the_database() {
    let mut kms = TestKms::new().await;
    let old = kms
        .svc()
        .initialize_seal(&actor("sofia"), 2, 3)
        .await
        .unwrap();
    let new = kms
        .svc()
        .rotate_shares(&actor("sofia"), &old[..2], 2, 3)
        .await
        .unwrap();
    let newer = kms
        .svc()
        .rekey_seal(&actor("sofia"), &new[1..], 2, 3)
        .await
        .unwrap();
    kms.close();
    let mut u = unsealer(&kms).await;
    u.present(&old[0].to_text(), "carol").await.unwrap_err();
    u.present("KMS1-2-1-garbage", "carol").await.unwrap_err();
    drop(u);
    let svc = unseal(&kms, &[&newer[0], &newer[2]]).await.unwrap();
    svc.close().await.unwrap();
    drop(svc);

    let secrets = [
        shares::combine(&old[..2]).unwrap(),
        shares::combine(&newer[..2]).unwrap(),
    ];
    let pins: Vec<_> = secrets.iter().map(token_pin).collect();
    let texts: Vec<_> = old
        .iter()
        .chain(&new)
        .chain(&newer)
        .map(|s| s.to_text())
        .collect();
    let mut forbidden: Vec<&[u8]> = Vec::new();
    forbidden.extend(secrets.iter().map(|s| s.as_bytes()));
    forbidden.extend(pins.iter().map(|p| p.as_bytes()));
    forbidden.extend(texts.iter().map(|t| t.as_bytes()));
    forbidden.extend(
        old.iter()
            .chain(&new)
            .chain(&newer)
            .map(|s| &s.as_bytes()[1..33]),
    );
    let found = find_secrets_in_sqlite(&kms.db_path, &forbidden);
    assert!(found.is_empty(), "{found:#?}");
    let odd = suspicious_values_in_sqlite(&kms.db_path);
    assert!(odd.is_empty(), "{odd:#?}");
}

// --- kms serve, sealed --------------------------------------------------

fn hasher() -> PinHasher {
    PinHasher::new(1024, 1, 1).unwrap()
}

async fn enrol(store: &Store, name: &str, role: CustodianRole, cert_sha256: &str, first: bool) {
    let new = NewCustodian {
        name: CustodianName::parse(name).unwrap(),
        role,
        cert_sha256: Some(cert_sha256.to_owned()),
        pin_hash: hasher().hash(&Pin::new("Granite quarry 7")).unwrap(),
        login_window: None,
        idle_timeout_seconds: 300,
        enrolled_by: "test".into(),
        enrolment_request: (!first).then(|| format!("request-{name}")),
    };
    let now = time::OffsetDateTime::now_utc();
    if first {
        store.bootstrap_custodian(&new, now).await.unwrap().unwrap();
    } else {
        store.enroll_custodian(&new, now).await.unwrap();
    }
}

fn assert_problem(r: &Reply, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.json()["code"], code, "{}", r.text());
}

async fn post_share(c: &ApiClient, addr: std::net::SocketAddr, share: &str) -> Reply {
    let body = serde_json::json!({ "share": share })
        .to_string()
        .into_bytes();
    c.request(addr, Method::POST, "/v1/seal/shares", body)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tsm_ac_3_kms_serve_starts_sealed_and_custodians_unseal_it_over_mtls() {
    let mut kms = TestKms::new().await;
    let pki = TestPki::new();
    let store = kms.svc().store().clone();
    // Custodians bound to certificates the principals policy does not map
    // (custodians are people, not API principals), plus the officer's.
    enrol(
        &store,
        "sofia",
        CustodianRole::SecurityOfficer,
        &pki.officer.sha256,
        true,
    )
    .await;
    enrol(
        &store,
        "carol",
        CustodianRole::Custodian,
        &pki.unmapped.sha256,
        false,
    )
    .await;
    enrol(
        &store,
        "dave",
        CustodianRole::Custodian,
        &pki.operator.sha256,
        false,
    )
    .await;
    with_key(&kms).await;
    let shares = kms
        .svc()
        .initialize_seal(&actor("sofia"), 2, 3)
        .await
        .unwrap();
    kms.close();

    let sealed = kms::server::SealedStart {
        unsealer: unsealer(&kms).await,
        hsm: kms.token.config(Role::User),
        policy: KeyPolicy::builtin(),
    };
    let server = kms::server::start_sealed(&pki.settings(), sealed)
        .await
        .unwrap();
    let (admin, prov) = (server.addr_admin, server.addr_prov);
    assert!(server.service().is_none());
    let officer = ApiClient::new(&pki.ca, Some(pki.officer.identity()));
    let provisioner = ApiClient::new(&pki.ca, Some(pki.provisioner.identity()));
    let carol = ApiClient::new(&pki.ca, Some(pki.unmapped.identity()));
    let dave = ApiClient::new(&pki.ca, Some(pki.operator.identity()));

    // Sealed: only health, readiness and the seal itself answer.
    let r = provisioner.get(prov, "/v1/keys").await.unwrap();
    assert_problem(&r, 503, "sealed");
    assert!(r.json()["detail"].as_str().unwrap().contains("0 of 2"));
    let r = provisioner
        .request(prov, Method::POST, "/v1/sessions/scp02", b"{}".to_vec())
        .await
        .unwrap();
    assert_problem(&r, 503, "sealed");
    assert_eq!(
        provisioner.get(prov, "/v1/health").await.unwrap().status,
        200
    );
    assert_problem(
        &provisioner.get(prov, "/v1/ready").await.unwrap(),
        503,
        "not-ready",
    );
    assert_problem(
        &officer.get(admin, "/v1/audit/records").await.unwrap(),
        503,
        "sealed",
    );
    assert_problem(
        &provisioner.get(prov, "/v1/seal").await.unwrap(),
        503,
        "sealed",
    );
    let st = officer.get(admin, "/v1/seal").await.unwrap();
    assert_eq!(st.status, 200);
    let st = st.json();
    assert_eq!(st["sealed"], true);
    assert_eq!(st["need"], 2);
    assert_eq!(st["have"], 0);
    assert_eq!(st["generation"], 1);

    // Shares only from enrolled custodians' certificates.
    let r = post_share(&provisioner, admin, &shares[0].to_text()).await;
    assert_problem(&r, 403, "forbidden");
    let r = post_share(&carol, admin, &altered(&shares[0]).to_text()).await;
    assert_problem(&r, 400, "invalid-request");
    let r = post_share(&carol, admin, &shares[0].to_text()).await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json()["have"], 1);
    let r = post_share(&carol, admin, &shares[0].to_text()).await;
    assert_problem(&r, 400, "invalid-request");
    assert_eq!(
        officer.get(admin, "/v1/seal").await.unwrap().json()["have"],
        1
    );
    let r = post_share(&dave, admin, &shares[2].to_text()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["sealed"], false);

    // The same listeners now serve normally.
    let mut served = None;
    for _ in 0..100 {
        let r = officer
            .get(admin, "/v1/audit/records?action=seal.*")
            .await
            .unwrap();
        if r.status == 200 {
            served = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let served = served.expect("the admin API serves after the unseal");
    let recs = served.json();
    let actions: Vec<&str> = recs["records"]
        .as_array()
        .or_else(|| recs.as_array())
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"seal.unseal-share"), "{actions:?}");
    assert!(actions.contains(&"seal.unsealed"), "{actions:?}");
    let mut client = kms_client::ProvisioningClient::connect(pki.client_config(
        prov,
        Some(&pki.provisioner),
        None,
    ))
    .await
    .unwrap();
    let list = client.keys().await.unwrap();
    assert!(list.keys.iter().any(|k| k.name == "kmc-1"));
    assert_eq!(officer.get(admin, "/v1/ready").await.unwrap().status, 200);
    let st = officer.get(admin, "/v1/seal").await.unwrap().json();
    assert_eq!(st["sealed"], false);
    assert!(server.service().is_some());

    // Every presentation is on record, with its presenter, never the share.
    let shares_rec = records(&store, "seal.unseal-share").await;
    let who: Vec<(&str, Option<Outcome>)> = shares_rec
        .iter()
        .map(|r| (r.event.actor.as_str(), r.event.outcome))
        .collect();
    assert_eq!(
        who,
        vec![
            (pki.provisioner.actor().as_str(), Some(Outcome::Refused)),
            ("carol", Some(Outcome::Refused)),
            ("carol", Some(Outcome::Success)),
            ("carol", Some(Outcome::Refused)),
            ("dave", Some(Outcome::Success)),
        ]
    );
    assert!(!records(&store, "api.sealed").await.is_empty());
    server.shutdown().await.unwrap();
    let found = find_secrets_in_sqlite(
        &kms.db_path,
        &shares
            .iter()
            .map(|s| s.to_text())
            .collect::<Vec<_>>()
            .iter()
            .map(|t| t.as_bytes())
            .collect::<Vec<_>>(),
    );
    assert!(found.is_empty(), "{found:#?}");
}

/// The seal's rows on PostgreSQL (several nodes share one database): the
/// same refusals and the same unseal as on SQLite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn km2_the_seal_on_postgresql_initializes_rotates_and_unseals() {
    let url = tokio::task::spawn_blocking(kms_e2e::pg::fresh_database_url)
        .await
        .unwrap();
    let mut kms = TestKms::with_database(&url).await;
    let key = with_key(&kms).await;
    let before = kcv_on_token(kms.svc(), &key).await;
    let old = kms
        .svc()
        .initialize_seal(&actor("sofia"), 2, 3)
        .await
        .unwrap();
    let twice = kms.svc().initialize_seal(&actor("sofia"), 2, 3).await;
    assert!(matches!(twice, Err(ServiceError::Refused(_))));
    let new = kms
        .svc()
        .rotate_shares(&actor("sofia"), &old[1..], 2, 2)
        .await
        .unwrap();
    let rec = kms.svc().seal_record().await.unwrap().unwrap();
    assert_eq!((rec.generation, rec.threshold, rec.shares), (2, 2, 2));
    assert_eq!(rec.share_checks.len(), 2);
    kms.close();
    let Err(e) = unseal(&kms, &[&old[0], &old[1]]).await else {
        panic!("old shares unsealed");
    };
    assert!(matches!(e, UnsealError::OtherSplit { .. }), "{e}");
    let svc = unseal(&kms, &[&new[0], &new[1]]).await.unwrap();
    assert_eq!(kcv_on_token(&svc, &key).await, before);
    svc.close().await.unwrap();
}
