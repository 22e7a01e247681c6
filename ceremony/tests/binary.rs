//! `kms-ceremony` as custodians use it: list, show, a full non-interactive
//! run from an answers file (process output and transcript scanned for
//! secrets), verify, and refusals of bad scripts and parameters.
// Test code: panicking on an unexpected error is the point.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod support;

use support::{Site, Split};

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn assert_absent(haystack: &str, secrets: &[&[u8]], what: &str) {
    let lower = haystack.to_lowercase();
    for (i, s) in secrets.iter().enumerate() {
        for (enc, needle) in kms_e2e::scan::encodings(s) {
            let needle = String::from_utf8_lossy(&needle).to_lowercase();
            assert!(!lower.contains(&needle), "{what}: secret #{i} as {enc}");
        }
    }
}

#[tokio::test]
async fn km2_tsm_ac_2_a_full_run_from_an_answers_file_then_verify() {
    let site = Site::new().await;
    let s = Split::new(7);
    let answers = site.import_answers(&s);
    let transcript = site.kms.token.dir.path().join("out/import.json");
    let out = site
        .command()
        .args([
            "run",
            "key-import",
            "--param",
            "tenant=acme",
            "--param",
            "key=zmk",
        ])
        .arg("--param")
        .arg(format!("kcv={}", Split::kcv(&s.key)))
        .arg("--answers")
        .arg(&answers)
        .arg("--transcript")
        .arg(&transcript)
        .output()
        .expect("run");
    let output = text(&out);
    assert!(out.status.success(), "{output}");
    assert!(output.contains(&Split::kcv(&s.key)), "{output}");
    assert!(
        output.contains("(hidden)"),
        "hidden answers are marked, not shown"
    );

    let pins: Vec<&[u8]> = site.people.iter().map(|p| p.pin.as_bytes()).collect();
    let mut secrets: Vec<&[u8]> = vec![&s.key, &s.c1, &s.c2];
    secrets.extend(pins);
    assert_absent(&output, &secrets, "process output");
    let file = std::fs::read_to_string(&transcript).expect("transcript written");
    assert_absent(&file, &secrets, "transcript");
    let in_db = kms_e2e::scan::find_secrets_in_sqlite(&site.kms.db_path, &secrets);
    assert!(in_db.is_empty(), "database: {in_db:?}");

    let out = site
        .command()
        .arg("verify")
        .arg(&transcript)
        .output()
        .expect("verify");
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("valid") && shown.contains("recorded at seq"),
        "{shown}"
    );

    // A transcript edited afterwards fails (exit 4).
    let forged = file.replace("\"alice\"", "\"mallory\"");
    let forged_path = site.kms.token.dir.path().join("out/forged.json");
    std::fs::write(&forged_path, forged).expect("write");
    let out = site
        .command()
        .arg("verify")
        .arg(&forged_path)
        .output()
        .expect("verify");
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
}

#[tokio::test]
async fn tsm_ac_2_list_and_show_describe_the_shipped_ceremonies() {
    let site = Site::new().await;
    let out = site.command().arg("list").output().expect("list");
    let listed = text(&out);
    assert!(out.status.success(), "{listed}");
    for n in ["key-import", "kek-trust", "key-export", "key-destroy"] {
        assert!(listed.contains(n), "{listed}");
    }
    let out = site
        .command()
        .args(["show", "key-import"])
        .output()
        .expect("show");
    let shown = text(&out);
    assert!(
        shown.contains("confirm-kcv") && shown.contains("KM-2"),
        "{shown}"
    );
}

#[tokio::test]
async fn km2_a_missing_parameter_or_unknown_ceremony_is_refused_before_anyone_types() {
    let site = Site::new().await;
    let out = site
        .command()
        .args(["run", "key-import", "--param", "tenant=acme"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("key (name of the new key)"),
        "{}",
        text(&out)
    );
    let out = site
        .command()
        .args(["run", "no-such-ceremony"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}
