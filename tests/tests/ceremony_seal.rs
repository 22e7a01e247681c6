//! Issue 5: the initialization, unseal and share-rotation ceremonies
//! against a real SoftHSM2 token: a trusted transport KEK made under dual
//! control, the KMS sealed into one share per custodian, refusing to serve
//! while sealed, opened by M shares, re-split so old shares are refused;
//! and a ceremony on a sealed KMS that begins by unsealing it, switching to
//! the security officer's login and back.

mod ceremony_support;

use ceremony_support::{Room, Split};
use kms::model::{CustodianRole, KeyUsage};
use kms::service::ceremony::StepOutcome;
use kms_e2e::fixture::{actor, name, tenant};

async fn initialized() -> Room {
    let mut room = Room::founded(&[
        ("so1", CustodianRole::SecurityOfficer),
        ("alice", CustodianRole::Custodian),
        ("bob", CustodianRole::Custodian),
        ("carol", CustodianRole::Custodian),
    ])
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
        room.add_answers(&answers, p, &format!("share_out = \"{p}.share\""));
    }
    let (signed, shown) = room
        .run(
            "initialization",
            &[("tenant", "acme"), ("m", "2")],
            &answers,
        )
        .await;
    assert_eq!(
        signed.transcript.outcome,
        StepOutcome::Done,
        "{:?}",
        signed.transcript.abort_reason
    );
    // Each share went to its custodian's file only.
    let mut texts = Vec::new();
    for p in ["alice", "bob", "carol"] {
        let t = std::fs::read_to_string(room.files.join(format!("{p}.share"))).expect("share");
        assert!(
            !shown.join("\n").contains(t.trim()),
            "a share was displayed to all"
        );
        assert!(
            !serde_json::to_string(&signed)
                .expect("json")
                .contains(t.trim()),
            "a share is in the transcript"
        );
        texts.push(t);
    }
    texts.dedup();
    assert_eq!(texts.len(), 3);
    room
}

#[tokio::test]
async fn km1_tsm_ac_3_initialization_seals_the_kms_and_m_shares_open_it() {
    let room = initialized().await;
    // Sealed: nothing is served until M shares are in.
    let sealed = kms::store::Store::connect(&room.kms.db_url)
        .await
        .expect("store");
    assert!(sealed.seal_current().await.expect("seal").is_some());
    let kms = ceremony::Kms::open(room.access()).await.expect("open");
    assert!(kms.is_sealed());
    let refused = kms.svc().err().map(|e| e.to_string()).unwrap_or_default();
    assert!(refused.contains("sealed"), "{refused}");
    drop(kms);

    let kms = room
        .open_with_shares(&[("alice", "alice.share"), ("carol", "carol.share")])
        .await
        .expect("unsealed by two shares");
    let svc = kms.svc().expect("open");
    let kek = svc
        .get(&tenant("acme"), &name("transport-kek"))
        .await
        .expect("transport KEK");
    assert!(kek.current().expect("version").trusted);
    assert_eq!(kek.usage, KeyUsage::TransportKek);
    let report = svc.audit().verify_database().await.expect("chain");
    assert!(report.ok(), "{:?}", report.damage);
    kms.close().await.expect("close");
    // One share is not enough.
    let one = room
        .open_with_shares(&[("alice", "alice.share")])
        .await
        .err()
        .unwrap_or_default();
    assert!(one.contains("1 of 2"), "{one}");
}

#[tokio::test]
async fn tsm_ac_3_the_unseal_ceremony_opens_with_m_shares_and_signs_its_transcript() {
    let mut room = initialized().await;
    let answers = room.answers(&[("custodians", &["bob", "carol"])], &[], &[]);
    for p in ["bob", "carol"] {
        room.add_answers(&answers, p, &format!("share = \"file:{p}.share\""));
    }
    let (signed, _) = room.run("unseal", &[], &answers).await;
    assert_eq!(signed.transcript.outcome, StepOutcome::Done);
    assert!(signed.transcript.steps.iter().any(|s| s.kind == "unsealed"));
    let kms = room
        .open_with_shares(&[("bob", "bob.share"), ("carol", "carol.share")])
        .await
        .expect("unseal");
    let check = kms
        .svc()
        .expect("svc")
        .verify_transcript(&actor("auditor"), &signed)
        .await
        .expect("verify");
    assert!(check.ok(), "{check:?}");
    kms.close().await.expect("close");
}

#[tokio::test]
async fn tsm_ac_3_rotation_hands_out_new_shares_and_the_old_ones_are_refused() {
    let mut room = initialized().await;
    let answers = room.answers(
        &[
            ("holders", &["alice", "bob"]),
            ("officer", &["so1"]),
            ("custodians", &["alice", "bob", "carol"]),
        ],
        &[],
        &[],
    );
    for p in ["alice", "bob", "carol"] {
        room.add_answers(
            &answers,
            p,
            &format!("share = \"file:{p}.share\"\nshare_out = \"{p}.share2\""),
        );
    }
    let (signed, _) = room.run("rotate-shares", &[("m", "2")], &answers).await;
    assert_eq!(
        signed.transcript.outcome,
        StepOutcome::Done,
        "{:?}",
        signed.transcript.abort_reason
    );
    let old = room
        .open_with_shares(&[("alice", "alice.share"), ("bob", "bob.share")])
        .await
        .err()
        .unwrap_or_default();
    assert!(old.contains("old or foreign share"), "{old}");
    let kms = room
        .open_with_shares(&[("bob", "bob.share2"), ("carol", "carol.share2")])
        .await
        .expect("new shares unseal");
    kms.close().await.expect("close");
}

#[tokio::test]
async fn km2_a_ceremony_on_a_sealed_kms_unseals_first_and_returns_from_the_so_login() {
    let mut room = initialized().await;
    let s = Split::new(31);
    let answers = room.answers(
        &[
            ("unseal", &["alice", "carol"]),
            ("officer", &["so1"]),
            ("custodians", &["alice", "bob"]),
        ],
        &[("alice", &s.c1), ("bob", &s.c2)],
        &[],
    );
    for p in ["alice", "carol"] {
        room.add_answers(&answers, p, &format!("share = \"file:{p}.share\""));
    }
    let kcv = s.kcv();
    let (signed, _) = room
        .run(
            "kek-trust",
            &[("tenant", "acme"), ("key", "partner-tk"), ("kcv", &kcv)],
            &answers,
        )
        .await;
    assert_eq!(
        signed.transcript.outcome,
        StepOutcome::Done,
        "{:?}",
        signed.transcript.abort_reason
    );
    let kms = room
        .open_with_shares(&[("alice", "alice.share"), ("bob", "bob.share")])
        .await
        .expect("unseal");
    let svc = kms.svc().expect("svc");
    assert!(
        svc.get(&tenant("acme"), &name("partner-tk"))
            .await
            .expect("kek")
            .current()
            .expect("v")
            .trusted
    );
    assert!(svc
        .verify_transcript(&actor("auditor"), &signed)
        .await
        .expect("verify")
        .ok());
    kms.close().await.expect("close");
}

#[tokio::test]
async fn km2_tsm_ac_3_rekey_draws_a_new_secret_and_token_pin_and_only_new_shares_open() {
    let mut room = initialized().await;
    let answers = room.answers(
        &[
            ("holders", &["bob", "carol"]),
            ("officer", &["so1"]),
            ("custodians", &["alice", "bob", "carol"]),
        ],
        &[],
        &[],
    );
    for p in ["alice", "bob", "carol"] {
        room.add_answers(
            &answers,
            p,
            &format!("share = \"file:{p}.share\"\nshare_out = \"{p}.share3\""),
        );
    }
    let (signed, _) = room.run("rekey-seal", &[("m", "2")], &answers).await;
    assert_eq!(
        signed.transcript.outcome,
        StepOutcome::Done,
        "{:?}",
        signed.transcript.abort_reason
    );
    let old = room
        .open_with_shares(&[("alice", "alice.share"), ("carol", "carol.share")])
        .await
        .err()
        .unwrap_or_default();
    assert!(old.contains("old or foreign share"), "{old}");
    let kms = room
        .open_with_shares(&[("alice", "alice.share3"), ("bob", "bob.share3")])
        .await
        .expect("new shares unseal: the token PIN is the new secret's");
    assert!(kms
        .svc()
        .expect("svc")
        .verify_transcript(&actor("auditor"), &signed)
        .await
        .expect("verify")
        .ok());
    kms.close().await.expect("close");
}
