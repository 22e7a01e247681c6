//! TSM-AC-2, invariant 4 (nothing unaudited), for the acts issue 5 added:
//! one run through a ceremony (its steps, its transcript and the
//! transcript's verification), the backup KEK, a backup and restores (one
//! refused), the admin API's request endpoints (one refused), and sealing
//! and unsealing (one share refused) leaves each action in the trail, each
//! with its outcome; the companion of `kms/tests/cli.rs`'s
//! `tsm_ac2_every_cli_command_is_audited_and_the_trail_holds_no_secrets`,
//! which covers the `kms` command's own acts.

mod ceremony_support;

use ceremony_support::{Room, Split};
use kms::audit::Outcome;
use kms::model::{CustodianRole, Pin};
use kms::service::ceremony::StepOutcome;
use kms::service::{BackupFile, Operation};
use kms::store::AuditFilter;
use kms_e2e::client::ApiClient;
use kms_e2e::fixture::{actor, name};
use kms_e2e::people::{person, Person};
use kms_e2e::pki::TestPki;
use std::collections::{BTreeMap, BTreeSet};
use time::OffsetDateTime;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tsm_ac2_inv4_ceremony_seal_backup_and_admin_request_acts_are_all_in_the_trail_with_outcomes(
) {
    let mut room = Room::new().await;

    // A ceremony: each step, the signed transcript.
    let s = Split::new(41);
    let answers = room.answers(
        &[("officer", &["so1"]), ("custodians", &["alice", "bob"])],
        &[("alice", &s.c1), ("bob", &s.c2)],
        &[],
    );
    let kcv = s.kcv();
    let (signed, _) = room
        .run(
            "key-import",
            &[("tenant", "acme"), ("key", "zmk"), ("kcv", &kcv)],
            &answers,
        )
        .await;
    assert_eq!(signed.transcript.outcome, StepOutcome::Done);

    // The backup KEK (security officer's login), a backup, a restore that
    // finds everything present, and one of a damaged file (refused).
    room.kms.backup_kek("backup-kek", 2, 2).await;
    let svc = room.kms.svc().clone();
    assert!(svc
        .verify_transcript(&actor("auditor"), &signed)
        .await
        .expect("verify")
        .ok());
    let file = svc
        .backup(&actor("so1"), &name("backup-kek"))
        .await
        .expect("backup");
    svc.restore(&actor("so1"), &file).await.expect("restore");
    let damaged = BackupFile {
        created_by: "mallory".into(),
        ..file.clone()
    };
    assert!(svc.restore(&actor("so1"), &damaged).await.is_err());

    // The admin API's request endpoints: dave, enrolled under dual control
    // with a certificate of the API's CA, lists and reads requests; a
    // certificate bound to nobody is refused.
    let pki = TestPki::new();
    let dave = Person::with_cert(
        "dave",
        CustodianRole::Custodian,
        pki.unmapped.key_pem(),
        &pki.unmapped.der,
        &pki.unmapped.pem,
    );
    let so1 = person("so1").session(&svc).await;
    let enrol = svc
        .request(
            &so1,
            Operation::EnrollCustodian {
                name: "dave".into(),
                role: "custodian".into(),
                cert_sha256: Some(dave.cert_sha256()),
                login_window: None,
                idle_timeout_seconds: None,
            },
        )
        .await
        .expect("request");
    person("alice")
        .approve(&svc, &enrol.id)
        .await
        .expect("approve");
    svc.execute_enrolment(&so1, &enrol.id, Pin::new(dave.initial_pin.as_str()))
        .await
        .expect("enrol dave");
    svc.change_pin(
        "dave",
        &Pin::new(dave.initial_pin.as_str()),
        &Pin::new(dave.pin.as_str()),
        OffsetDateTime::now_utc(),
    )
    .await
    .expect("dave's PIN");
    let server = kms::server::start(&pki.settings(), svc.clone())
        .await
        .expect("server");
    let as_dave = ApiClient::new(&pki.ca, Some(pki.unmapped.identity()));
    let list = as_dave
        .get(server.addr_admin, "/v1/requests")
        .await
        .expect("list");
    assert_eq!(list.status, 200, "{}", list.text());
    let shown = as_dave
        .get(server.addr_admin, &format!("/v1/requests/{}", enrol.id))
        .await
        .expect("show");
    assert!(
        shown.status == 200 || shown.status == 409,
        "{}",
        shown.text()
    );
    let nobody = ApiClient::new(&pki.ca, Some(pki.operator.identity()))
        .get(server.addr_admin, "/v1/requests")
        .await
        .expect("refused, answered");
    assert_eq!(nobody.status, 403, "{}", nobody.text());
    server.stop().await;

    // Sealing, then unsealing: one share that belongs to no seal is
    // refused, two good ones open it.
    let shares = svc
        .initialize_seal(&actor("so1"), 2, 3)
        .await
        .expect("sealed");
    drop(svc);
    room.kms.close();
    let mut kms = ceremony::Kms::open(room.access()).await.expect("open");
    assert!(kms.is_sealed());
    let stranger = {
        let secret =
            kms::crypto::shares::UnsealSecret::from_bytes(&std::array::from_fn::<u8, 32, _>(|i| {
                i as u8 ^ 0x5C
            }))
            .expect("secret");
        kms::crypto::shares::split(&secret, 2, 2).expect("split")[0]
            .to_text()
            .to_string()
    };
    assert!(kms.present_share(&stranger, "mallory").await.is_err());
    for (who, share) in ["alice", "bob"].iter().zip(&shares) {
        kms.present_share(share.to_text().as_str(), who)
            .await
            .expect("a good share");
    }
    kms.unseal(&shares[..2]).await.expect("unsealed");

    // Every action, with its outcomes.
    let records = kms
        .svc()
        .expect("open")
        .store()
        .audit_search(&AuditFilter::default())
        .await
        .expect("trail");
    let mut outcomes: BTreeMap<&str, BTreeSet<Outcome>> = BTreeMap::new();
    for r in &records {
        if let Some(o) = r.event.outcome {
            outcomes
                .entry(r.event.action.as_str())
                .or_default()
                .insert(o);
        }
    }
    let has = |action: &str, o: Outcome| outcomes.get(action).is_some_and(|s| s.contains(&o));
    for (action, wanted) in [
        ("ceremony.step", &[Outcome::Success][..]),
        ("ceremony.transcript", &[Outcome::Attempt, Outcome::Success]),
        ("ceremony.verify", &[Outcome::Success]),
        ("backup.kek-create", &[Outcome::Attempt, Outcome::Success]),
        ("backup.create", &[Outcome::Attempt, Outcome::Success]),
        ("backup.file", &[Outcome::Success]),
        ("backup.restore", &[Outcome::Attempt, Outcome::Success]),
        ("api.requests.list", &[Outcome::Success, Outcome::Refused]),
        ("api.requests.show", &[Outcome::Success]),
        ("seal.initialize", &[Outcome::Attempt, Outcome::Success]),
        ("seal.unseal-share", &[Outcome::Success]),
        ("seal.unsealed", &[Outcome::Success]),
    ] {
        for o in wanted {
            assert!(
                has(action, *o),
                "no {action} record with outcome {o:?}: {outcomes:?}"
            );
        }
    }
    // The refusals are recorded as refusals or failures, not dropped.
    for action in ["backup.restore", "seal.unseal-share"] {
        assert!(
            has(action, Outcome::Refused) || has(action, Outcome::Failure),
            "{action}: {:?}",
            outcomes.get(action)
        );
    }
    kms.close().await.expect("close");
}
