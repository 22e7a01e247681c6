//! Issue 5: the backup KEK ceremony (made trusted under the security
//! officer's login after the custodians agreed, its value split into one
//! share per custodian) and the backup ceremony (every backed-up key
//! wrapped under it; nothing in clear in the file).

mod ceremony_support;

use ceremony_support::{Room, Split};
use kms::model::{Algorithm, CustodianRole, KeyUsage};
use kms::service::ceremony::StepOutcome;
use kms_e2e::fixture::{actor, name, tenant};

#[tokio::test]
async fn km2_backup_kek_ceremony_then_backup_ceremony_writes_only_wrapped_keys() {
    let mut room = Room::founded(&[
        ("so1", CustodianRole::SecurityOfficer),
        ("alice", CustodianRole::Custodian),
        ("bob", CustodianRole::Custodian),
        ("carol", CustodianRole::Custodian),
    ])
    .await;
    let secret = Split::new(41).key;
    room.kms
        .import(
            "acme",
            "kmc",
            Algorithm::Aes128,
            KeyUsage::SdKmc,
            false,
            &secret,
        )
        .await;
    let answers = room.answers(
        &[
            ("officer", &["so1"]),
            ("custodians", &["alice", "bob", "carol"]),
        ],
        &[],
        &[],
    );
    for p in ["alice", "bob", "carol"] {
        room.add_answers(&answers, p, &format!("share_out = \"{p}.kek-share\""));
    }
    let (signed, _) = room.run("backup-kek", &[("m", "2")], &answers).await;
    assert_eq!(
        signed.transcript.outcome,
        StepOutcome::Done,
        "{:?}",
        signed.transcript.abort_reason
    );
    let handed = signed
        .transcript
        .steps
        .iter()
        .filter(|s| s.kind == "share-received")
        .count();
    assert_eq!(handed, 3);
    for p in ["alice", "bob", "carol"] {
        assert!(room.files.join(format!("{p}.kek-share")).exists());
    }

    let file = room.files.join("backup.json");
    let answers = room.answers(&[("officer", &["so1"]), ("witness", &["bob"])], &[], &[]);
    let (signed, _) = room
        .run(
            "backup",
            &[("file", file.to_str().expect("path"))],
            &answers,
        )
        .await;
    assert_eq!(
        signed.transcript.outcome,
        StepOutcome::Done,
        "{:?}",
        signed.transcript.abort_reason
    );
    let text = std::fs::read_to_string(&file).expect("backup file");
    assert!(
        text.contains("kmc"),
        "the SD master key is backed up: {text}"
    );
    let lower = text.to_lowercase();
    for (enc, needle) in kms_e2e::scan::encodings(&secret) {
        let needle = String::from_utf8_lossy(&needle).to_lowercase();
        assert!(!lower.contains(&needle), "clear key in the backup as {enc}");
    }
    let svc = room.svc().await;
    let kek = svc
        .get(&tenant("kms"), &name("backup-kek"))
        .await
        .expect("backup KEK");
    assert!(kek.current().expect("v").trusted);
    assert!(svc
        .verify_transcript(&actor("auditor"), &signed)
        .await
        .expect("verify")
        .ok());
    let report = svc.audit().verify_database().await.expect("chain");
    assert!(report.ok(), "{:?}", report.damage);
}
