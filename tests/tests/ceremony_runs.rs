//! Issue 5: every shipped ceremony driven non-interactively (an answers
//! file) against a real SoftHSM2 token: the key it makes or changes, its
//! signed transcript, and the trail that holds each step.

mod ceremony_support;

use ceremony_support::{run_actions, Room, Split};
use kms::model::{Algorithm, KeyUsage};
use kms::service::ceremony::StepOutcome;
use kms_e2e::fixture::{actor, name, tenant};

#[tokio::test]
async fn km1_km2_key_import_ceremony_loads_components_checks_the_kcv_and_signs_a_transcript() {
    let mut room = Room::new().await;
    let s = Split::new(1);
    let answers = room.answers(
        &[("officer", &["so1"]), ("custodians", &["alice", "bob"])],
        &[("alice", &s.c1), ("bob", &s.c2)],
        &[],
    );
    let kcv = s.kcv();
    let (signed, shown) = room
        .run(
            "key-import",
            &[("tenant", "acme"), ("key", "zmk"), ("kcv", &kcv)],
            &answers,
        )
        .await;
    let t = &signed.transcript;
    assert_eq!(t.outcome, StepOutcome::Done, "{:?}", t.abort_reason);
    let names: Vec<&str> = t.people.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["so1", "alice", "bob"]);
    // Each component's check value, and the combined one, were shown for
    // reading aloud and are in the transcript.
    let all = shown.join("\n");
    assert!(all.contains(&Split::component_kcv(&s.c1)), "{all}");
    assert!(all.contains(&Split::component_kcv(&s.c2)), "{all}");
    assert!(all.contains(&kcv), "{all}");
    let comps: Vec<_> = t.steps.iter().filter(|s| s.kind == "component").collect();
    assert_eq!(comps.len(), 2);
    assert_eq!(comps[0].actor.as_deref(), Some("alice"));
    assert_eq!(comps[1].actor.as_deref(), Some("bob"));

    let svc = room.svc().await;
    let key = svc
        .get(&tenant("acme"), &name("zmk"))
        .await
        .expect("imported");
    let v = key.current().expect("version");
    assert!(
        kcv.starts_with(v.kcv.as_deref().unwrap_or("-")),
        "{kcv} vs {:?}",
        v.kcv
    );
    assert_eq!(key.algorithm, Algorithm::Aes128);
    assert_eq!(key.usage, KeyUsage::Kek);

    // The request went through dual control and ran once.
    let req_id = t
        .steps
        .iter()
        .find(|s| s.kind == "request")
        .and_then(|s| s.details.get("request"))
        .expect("request id");
    assert_eq!(
        svc.approval(req_id).await.expect("request").status,
        "executed"
    );

    // TSM-AC-2: the transcript verifies and the trail holds it and each step.
    let check = svc
        .verify_transcript(&actor("auditor"), &signed)
        .await
        .expect("verify");
    assert!(check.ok(), "{check:?}");
    let actions = run_actions(&svc, &t.run_id).await;
    let steps = actions.iter().filter(|(a, _)| a == "ceremony.step").count();
    assert_eq!(steps, t.steps.len());
    assert!(actions.iter().any(|(a, _)| a == "ceremony.transcript"));
    let report = svc.audit().verify_database().await.expect("verify chain");
    assert!(report.ok(), "{:?}", report.damage);
}

#[tokio::test]
async fn km2_kek_trust_ceremony_creates_a_trusted_kek_under_the_security_officer_login() {
    let mut room = Room::new().await;
    let s = Split::new(2);
    let answers = room.answers(
        &[("officer", &["so1"]), ("custodians", &["alice", "bob"])],
        &[("alice", &s.c1), ("bob", &s.c2)],
        &[],
    );
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
    let svc = room.svc().await;
    let kek = svc
        .get(&tenant("acme"), &name("partner-tk"))
        .await
        .expect("kek");
    assert!(
        kek.current().expect("version").trusted,
        "CKA_TRUSTED recorded"
    );
    assert_eq!(kek.usage, KeyUsage::TransportKek);
    // The SO login's records were countersigned: the chain verifies.
    let report = svc.audit().verify_database().await.expect("verify chain");
    assert!(report.ok(), "{:?}", report.damage);
    assert!(svc
        .verify_transcript(&actor("auditor"), &signed)
        .await
        .expect("verify")
        .ok());
}

#[tokio::test]
async fn km2_key_export_ceremony_wraps_the_key_under_the_trusted_kek_only() {
    let mut room = Room::new().await;
    room.kms
        .trusted_kek("acme", "partner-tk", Algorithm::Aes128, &Split::new(3).key)
        .await;
    room.kms
        .import(
            "acme",
            "sd-enc-1",
            Algorithm::Aes128,
            KeyUsage::SdStaticEnc,
            true,
            &Split::new(4).key,
        )
        .await;
    let answers = room.answers(
        &[("requester", &["so1"]), ("approver", &["alice"])],
        &[],
        &[],
    );
    let (signed, shown) = room
        .run(
            "key-export",
            &[
                ("tenant", "acme"),
                ("key", "sd-enc-1"),
                ("kek", "partner-tk"),
            ],
            &answers,
        )
        .await;
    let t = &signed.transcript;
    assert_eq!(t.outcome, StepOutcome::Done, "{:?}", t.abort_reason);
    let exec = t
        .steps
        .iter()
        .find(|s| s.kind == "execute")
        .expect("execute");
    assert_eq!(
        exec.details.get("kek").map(String::as_str),
        Some("partner-tk")
    );
    // KM-2: the clear key appears nowhere; the wrapped one was shown.
    let all = shown.join("\n");
    assert!(all.contains("wrapped under partner-tk"), "{all}");
    for enc in kms_e2e::scan::encodings(&Split::new(4).key) {
        let needle = String::from_utf8_lossy(&enc.1).to_string();
        assert!(
            !all.to_lowercase().contains(&needle.to_lowercase()),
            "{}",
            enc.0
        );
    }
}

#[tokio::test]
async fn km2_km3_key_destroy_ceremony_destroys_the_version_under_dual_control() {
    let mut room = Room::new().await;
    room.kms
        .import(
            "acme",
            "old-kek",
            Algorithm::Aes128,
            KeyUsage::Kek,
            false,
            &Split::new(5).key,
        )
        .await;
    room.kms
        .svc()
        .transition(
            &actor("operator"),
            &tenant("acme"),
            &name("old-kek"),
            Some(1),
            kms::model::Transition::Deactivate,
            Some("retired"),
        )
        .await
        .expect("deactivate");
    let answers = room.answers(&[("officer", &["so1"]), ("approver", &["bob"])], &[], &[]);
    let (signed, _) = room
        .run(
            "key-destroy",
            &[("tenant", "acme"), ("key", "old-kek"), ("version", "1")],
            &answers,
        )
        .await;
    assert_eq!(
        signed.transcript.outcome,
        StepOutcome::Done,
        "{:?}",
        signed.transcript.abort_reason
    );
    let svc = room.svc().await;
    let key = svc
        .get(&tenant("acme"), &name("old-kek"))
        .await
        .expect("record stays");
    assert!(key.current().is_none(), "no live version left: {key:?}");
}

#[tokio::test]
async fn tsm_ac_2_every_shipped_script_loads_and_names_its_requirements() {
    let all = ceremony::script::load_dir(std::path::Path::new(ceremony_support::SCRIPTS))
        .expect("scripts load");
    for n in [
        "initialization",
        "unseal",
        "rotate-shares",
        "rekey-seal",
        "key-import",
        "kek-trust",
        "key-export",
        "key-destroy",
        "backup-kek",
        "backup",
    ] {
        assert!(all.contains_key(n), "{n} shipped");
    }
    for (n, s) in &all {
        assert!(!s.requirements.is_empty(), "{n} cites requirement ids");
        ceremony::preflight(s).unwrap_or_else(|e| panic!("{n}: {e}"));
    }
}
