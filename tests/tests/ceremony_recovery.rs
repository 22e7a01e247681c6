//! Issue 5, KM-2: the recovery ceremony on a brand-new token. The token is
//! lost after a backup (made by the `backup` ceremony, so the ceremony
//! transcript key existed on the old token too); on its replacement, two
//! custodians present their backup KEK shares (hidden), the security
//! officer's login re-imports the KEK and its check value is confirmed
//! against the backup file's, then the user's login restores every key,
//! each with the check value it had before. The run's own transcript is
//! signed on the new token and verifies; the trail's chain holds.

mod ceremony_support;

use ceremony::{Answers, Kms, ScriptedConsole};
use ceremony_support::{Room, SCRIPTS};
use kms::hsm::{KeyRef, Role};
use kms::model::{Algorithm, KeyUsage};
use kms::service::ceremony::{SignedTranscript, StepOutcome};
use kms::service::{BackupFile, KeyService};
use kms_e2e::fixture::{actor, name, tenant, TestKms};
use kms_e2e::scan::{encodings, find_secrets_in_sqlite};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

const KEYS: &[(&str, Algorithm, KeyUsage, u8)] = &[
    ("zmk", Algorithm::Aes128, KeyUsage::Kek, 0x11),
    ("data-1", Algorithm::Aes256, KeyUsage::Data, 0x22),
];

fn value(alg: Algorithm, seed: u8) -> Vec<u8> {
    let len = alg.secret_len().expect("secret");
    (0..len as u8)
        .map(|i| i.wrapping_mul(29) ^ seed ^ 0xA5)
        .collect()
}

/// The token is lost: a brand-new one with the same label and PINs takes
/// its place (no object of the old one survives).
fn replace_token(kms: &TestKms) {
    let conf = kms.token.conf();
    let run = |args: &[&str]| {
        let out = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &conf)
            .args(args)
            .output()
            .expect("softhsm2-util");
        assert!(
            out.status.success(),
            "softhsm2-util {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["--delete-token", "--token", kms_e2e::token::LABEL]);
    run(&[
        "--init-token",
        "--free",
        "--label",
        kms_e2e::token::LABEL,
        "--pin",
        &kms.token.user_pin,
        "--so-pin",
        &kms.token.so_pin,
    ]);
}

/// Each key's check value read from the token.
async fn token_kcvs(svc: &KeyService) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (n, ..) in KEYS {
        let rec = svc.get(&tenant("acme"), &name(n)).await.expect("key");
        let v = rec.current().expect("version");
        let key = KeyRef {
            object_id: v.object_id,
            algorithm: rec.algorithm,
        };
        let hsm = svc.hsm().clone();
        let kcv = tokio::task::spawn_blocking(move || hsm.kcv(&key))
            .await
            .expect("join")
            .expect("kcv")
            .map(hex::encode_upper)
            .unwrap_or_default();
        out.insert((*n).to_owned(), kcv);
    }
    out
}

/// Run the recovery script as `kms-ceremony` does: opened under the
/// security officer's login.
async fn run_recovery(room: &Room, file: &Path, answers: &Path) -> (SignedTranscript, Vec<String>) {
    let script = ceremony::script::find(Path::new(SCRIPTS), "recovery").expect("script");
    assert!(script.recovers_token());
    let given: BTreeMap<String, String> = [("file".to_owned(), file.display().to_string())].into();
    let mut console = ScriptedConsole::new(Answers::load(answers).expect("answers"));
    console.echo = false;
    let mut kms = Kms::open_for_recovery(room.access())
        .await
        .expect("open under the security officer's login");
    let signed = ceremony::run(&script, &given, &mut kms, &mut console)
        .await
        .unwrap_or_else(|e| panic!("recovery: {e}"));
    kms.close().await.expect("close");
    (signed, console.shown)
}

#[tokio::test(flavor = "multi_thread")]
async fn km2_recovery_ceremony_on_a_new_token_reproduces_every_backed_up_kcv() {
    let mut room = Room::new().await;
    for (n, alg, usage, seed) in KEYS {
        room.kms
            .import("acme", n, *alg, *usage, false, &value(*alg, *seed))
            .await;
    }
    let before = token_kcvs(room.kms.svc()).await;
    let k = room.kms.backup_kek("backup-kek", 2, 2).await;
    let shares: Vec<String> = k.shares.iter().map(|s| s.to_text().to_string()).collect();
    let kek_kcv = k.kcv.clone();
    for (who, share) in ["alice", "bob"].iter().zip(&shares) {
        std::fs::write(room.files.join(format!("{who}.kek-share")), share).expect("share file");
    }

    // The backup, by its own ceremony.
    let file_path = room.files.join("backup.json");
    let answers = room.answers(&[("officer", &["so1"]), ("witness", &["alice"])], &[], &[]);
    let (signed, _) = room
        .run(
            "backup",
            &[("file", &file_path.display().to_string())],
            &answers,
        )
        .await;
    assert_eq!(signed.transcript.outcome, StepOutcome::Done);
    let file = BackupFile::from_json(&std::fs::read_to_string(&file_path).expect("file"))
        .expect("a backup file");
    assert_eq!(file.kek.kcv, kek_kcv);

    // The token is lost.
    room.kms.close();
    replace_token(&room.kms);

    let answers = room.answers(
        &[("officer", &["so1"]), ("custodians", &["alice", "bob"])],
        &[],
        &[],
    );
    for who in ["alice", "bob"] {
        room.add_answers(&answers, who, &format!("share = \"file:{who}.kek-share\""));
    }
    let (signed, shown) = run_recovery(&room, &file_path, &answers).await;
    let t = &signed.transcript;
    assert_eq!(t.outcome, StepOutcome::Done, "{:?}", t.abort_reason);

    // The KEK's check value, confirmed against the file's.
    let recovered = t
        .steps
        .iter()
        .find(|s| s.kind == "kek-recover")
        .expect("kek-recover");
    assert_eq!(recovered.actor.as_deref(), Some("so1"));
    assert_eq!(recovered.details.get("kcv"), Some(&kek_kcv));
    assert_eq!(recovered.details.get("expected_kcv"), Some(&kek_kcv));
    let presented: Vec<_> = t
        .steps
        .iter()
        .filter(|s| s.kind == "kek-share")
        .filter_map(|s| s.actor.as_deref())
        .collect();
    assert_eq!(presented, ["alice", "bob"]);

    // Every key is back with the check value it had, listed for the room.
    let restore = t
        .steps
        .iter()
        .find(|s| s.kind == "restore")
        .expect("restore");
    let listed = restore.details.get("kcvs").cloned().unwrap_or_default();
    let all = shown.join("\n");
    for (n, kcv) in &before {
        assert!(listed.contains(&format!("acme/{n}/1={kcv}")), "{listed}");
        assert!(all.contains(kcv), "{all}");
    }
    // The token computed each restored key's check value while unwrapping
    // it (the restore refuses any difference): the objects are there, under
    // the CKA_IDs the database names.
    let svc = room.svc().await;
    for (n, ..) in KEYS {
        let rec = svc.get(&tenant("acme"), &name(n)).await.expect("key");
        let v = rec.current().cloned().expect("version");
        assert_eq!(v.kcv.as_deref(), before.get(*n).map(String::as_str));
        let hsm = svc.hsm().clone();
        let id = v.object_id;
        assert!(tokio::task::spawn_blocking(move || hsm.exists(id))
            .await
            .expect("join")
            .expect("exists"));
    }
    // Restored objects are sensitive, and extractable only under a trusted
    // KEK (they are backed up).
    for (n, ..) in KEYS {
        let v = svc
            .get(&tenant("acme"), &name(n))
            .await
            .expect("key")
            .current()
            .cloned()
            .expect("version");
        for a in svc.hsm().attributes(v.object_id).expect("attributes") {
            assert!(a.sensitive, "{n}: {a:?}");
            assert!(!a.extractable || a.wrap_with_trusted, "{n}: {a:?}");
        }
    }

    // TSM-AC-2: the recovery's transcript, signed on the new token, verifies
    // and is in the trail.
    let check = svc
        .verify_transcript(&actor("auditor"), &signed)
        .await
        .expect("verify");
    assert!(check.ok(), "{check:?}");
    // Every record, from before the loss and from this run (the officer's
    // included, countersigned), has a MAC the restored audit key verifies.
    // (Checkpoints signed before the loss verify only with the old signing
    // key's public key, kept from before: that key was renewed.)
    let records = svc
        .store()
        .audit_search(&kms::store::AuditFilter::default())
        .await
        .expect("records");
    let verdicts = svc.audit().check_macs(records).await.expect("macs");
    let bad: Vec<_> = verdicts.iter().filter(|(_, ok)| !ok).collect();
    assert!(bad.is_empty(), "{bad:?}");

    // No share of the backup KEK in the database, transcript or output.
    drop(svc);
    let forbidden: Vec<&[u8]> = shares.iter().map(|s| s.as_bytes()).collect();
    let in_db = find_secrets_in_sqlite(&room.kms.db_path, &forbidden);
    assert!(in_db.is_empty(), "database: {in_db:?}");
    let transcript = serde_json::to_string(&signed).expect("json");
    for s in &shares {
        assert!(!transcript.contains(s.as_str()));
        assert!(!all.contains(s.as_str()));
        for (enc, needle) in encodings(s.as_bytes()) {
            let needle = String::from_utf8_lossy(&needle).to_string();
            assert!(!transcript.contains(&needle), "{enc}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn km2_recovery_ceremony_with_one_share_too_few_aborts_and_restores_nothing() {
    let mut room = Room::new().await;
    let (alg, seed) = (Algorithm::Aes128, 0x33);
    room.kms
        .import("acme", "zmk", alg, KeyUsage::Kek, false, &value(alg, seed))
        .await;
    let shares = room
        .kms
        .backup_kek("backup-kek", 2, 2)
        .await
        .shares
        .iter()
        .map(|s| s.to_text().to_string())
        .collect::<Vec<String>>();
    let file = room
        .kms
        .svc()
        .backup(&actor("so1"), &name("backup-kek"))
        .await
        .expect("backup");
    let file_path = room.files.join("backup.json");
    std::fs::write(&file_path, file.to_json().expect("json")).expect("file");
    // Bob brings Alice's share by mistake: the same share twice.
    std::fs::write(room.files.join("alice.kek-share"), &shares[0]).expect("share");
    std::fs::write(room.files.join("bob.kek-share"), &shares[0]).expect("share");
    room.kms.close();
    replace_token(&room.kms);
    let answers = room.answers(
        &[("officer", &["so1"]), ("custodians", &["alice", "bob"])],
        &[],
        &[],
    );
    for who in ["alice", "bob"] {
        room.add_answers(&answers, who, &format!("share = \"file:{who}.kek-share\""));
    }
    let script = ceremony::script::find(Path::new(SCRIPTS), "recovery").expect("script");
    let given: BTreeMap<String, String> =
        [("file".to_owned(), file_path.display().to_string())].into();
    let mut console = ScriptedConsole::new(Answers::load(&answers).expect("answers"));
    console.echo = false;
    let mut kms = Kms::open_for_recovery(room.access()).await.expect("open");
    let result = ceremony::run(&script, &given, &mut kms, &mut console).await;
    drop(kms);
    // Nothing on the new token: no KEK, no key.
    let so = TestKms::service(&room.kms.token, &room.kms.db_url, Role::SecurityOfficer).await;
    assert_eq!(
        so.hsm().object_count().expect("count"),
        0,
        "{:?}",
        result.as_ref().err().map(|e| e.to_string())
    );
    drop(so);
    // Aborted before any key came back; whether the transcript could be
    // signed (the user's login opens only once the KEK is back) the trail
    // has the refusal.
    match result {
        Ok(signed) => assert_eq!(signed.transcript.outcome, StepOutcome::Aborted),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    let store = kms::store::Store::connect(&room.kms.db_url)
        .await
        .expect("db");
    let refused = store
        .audit_search(&kms::store::AuditFilter {
            action: Some("backup.kek-recover".into()),
            ..Default::default()
        })
        .await
        .expect("search");
    assert!(
        refused
            .iter()
            .any(|r| r.event.outcome != Some(kms::audit::Outcome::Success)
                && r.event.outcome != Some(kms::audit::Outcome::Attempt)),
        "{refused:?}"
    );
}
