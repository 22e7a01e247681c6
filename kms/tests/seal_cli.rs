#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `kms seal` end to end (issue 5, KM-2, TSM-AC-3) on a fresh SoftHSM2
//! token: `seal init` writes one 0600 file per share and deletes the PIN
//! file, every command then needs M shares (files, the environment), and
//! rotation and re-key make the old share files useless. No share, PIN or
//! secret is ever printed.

use kms_e2e::token::TestToken;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

struct Cli {
    token: TestToken,
    config: PathBuf,
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Cli {
    fn new() -> Cli {
        let token = TestToken::new();
        let config = token.write_cli_config("sqlite://kms.db?mode=rwc");
        Cli { token, config }
    }

    fn dir(&self) -> &Path {
        self.token.dir.path()
    }

    fn run_env(&self, args: &[&str], env: &[(&str, String)]) -> Out {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kms"));
        cmd.arg("--config")
            .arg(&self.config)
            .args(args)
            .env_remove("KMS_CONFIG")
            .env_remove("KMS_ACTOR")
            .env_remove("KMS_UNSEAL_SHARE_FILES")
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let o = cmd.output().unwrap();
        let out = Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        };
        assert!(
            !out.stdout.contains(&self.token.user_pin)
                && !out.stderr.contains(&self.token.user_pin),
            "the PIN was printed"
        );
        out
    }

    fn run(&self, args: &[&str]) -> Out {
        self.run_env(args, &[])
    }

    fn ok(&self, args: &[&str]) -> Out {
        let o = self.run(args);
        assert_eq!(o.code, 0, "{args:?}: {}{}", o.stdout, o.stderr);
        o
    }
}

fn share_files(dir: &Path, n: u8) -> Vec<PathBuf> {
    (1..=n)
        .map(|i| dir.join(format!("share-{i}.txt")))
        .collect()
}

fn texts(files: &[PathBuf]) -> Vec<String> {
    files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap().trim().to_owned())
        .collect()
}

fn with_shares<'a>(files: &'a [&'a PathBuf], rest: &[&'a str]) -> Vec<&'a str> {
    let mut args = Vec::new();
    for f in files {
        args.push("--share-file");
        args.push(f.to_str().unwrap());
    }
    args.extend_from_slice(rest);
    args
}

fn assert_no_share(out: &Out, shares: &[String]) {
    for s in shares {
        assert!(
            !out.stdout.contains(s.as_str()) && !out.stderr.contains(s.as_str()),
            "a share was printed"
        );
        // Also a group of it (the text minus its header).
        let group = &s[s.len() - 20..s.len() - 5];
        assert!(!out.stdout.contains(group) && !out.stderr.contains(group));
    }
}

#[test]
fn km2_tsm_ac_3_cli_seal_init_then_commands_need_shares_rotate_and_rekey() {
    let cli = Cli::new();
    cli.ok(&["init"]);
    let o = cli.ok(&["seal", "status", "--json"]);
    let st: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(st["initialized"], false);

    let d1 = cli.dir().join("shares-1");
    let o = cli.ok(&[
        "--json",
        "seal",
        "init",
        "--threshold",
        "2",
        "--shares",
        "3",
        "--share-dir",
        d1.to_str().unwrap(),
    ]);
    let files = share_files(&d1, 3);
    let gen1 = texts(&files);
    assert_no_share(&o, &gen1);
    let report: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(report["seal"]["need"], 2);
    assert_eq!(report["share_files"].as_array().unwrap().len(), 3);
    for f in &files {
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.display());
    }
    assert!(gen1.iter().all(|t| t.starts_with("KMS1-2-")));
    // The PIN file is gone: it opens nothing any more.
    assert!(!cli.dir().join("user.pin").exists());

    // Sealed: no shares, no service (stdin is not a terminal here).
    let o = cli.run(&["status"]);
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("sealed"), "{}", o.stderr);
    let o = cli.run(&with_shares(&[&files[0]], &["status"]));
    assert_ne!(o.code, 0, "one share of two opened the token");
    let o = cli.ok(&with_shares(&[&files[0], &files[2]], &["status"]));
    assert_no_share(&o, &gen1);
    let env = [(
        "KMS_UNSEAL_SHARE_FILES",
        format!("{}:{}", files[1].display(), files[2].display()),
    )];
    let o = cli.run_env(&["status"], &env);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = cli.ok(&["seal", "status", "--json"]);
    let st: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(
        (st["sealed"].clone(), st["need"].clone()),
        (true.into(), 2.into())
    );

    // Rotation: new files, old ones refused.
    let d2 = cli.dir().join("shares-2");
    let o = cli.ok(&with_shares(
        &[&files[1], &files[0]],
        &[
            "seal",
            "rotate",
            "--threshold",
            "2",
            "--shares",
            "2",
            "--share-dir",
            d2.to_str().unwrap(),
        ],
    ));
    let files2 = share_files(&d2, 2);
    let gen2 = texts(&files2);
    assert_no_share(&o, &gen1);
    assert_no_share(&o, &gen2);
    let o = cli.run(&with_shares(&[&files[0], &files[1]], &["status"]));
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("old or foreign share"), "{}", o.stderr);
    cli.ok(&with_shares(&[&files2[0], &files2[1]], &["status"]));

    // Re-key: a new PIN and new files.
    let d3 = cli.dir().join("shares-3");
    cli.ok(&with_shares(
        &[&files2[0], &files2[1]],
        &[
            "seal",
            "rekey",
            "--threshold",
            "2",
            "--shares",
            "3",
            "--share-dir",
            d3.to_str().unwrap(),
        ],
    ));
    let files3 = share_files(&d3, 3);
    assert_ne!(
        cli.run(&with_shares(&[&files2[0], &files2[1]], &["status"]))
            .code,
        0
    );
    cli.ok(&with_shares(&[&files3[2], &files3[0]], &["status"]));
    // Making shares into a directory that has some is refused up front.
    let o = cli.run(&with_shares(
        &[&files3[0], &files3[1]],
        &[
            "seal",
            "rotate",
            "--threshold",
            "2",
            "--shares",
            "3",
            "--share-dir",
            d3.to_str().unwrap(),
        ],
    ));
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("exists"), "{}", o.stderr);
    cli.ok(&with_shares(&[&files3[1], &files3[0]], &["status"]));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// (status, body) of a GET over mTLS with a development client certificate.
fn curl(pki: &Path, who: &str, port: u16, path: &str) -> (u16, String) {
    let o = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", "--cacert"])
        .arg(pki.join("ca.crt"))
        .arg("--cert")
        .arg(pki.join(format!("{who}.crt")))
        .arg("--key")
        .arg(pki.join(format!("{who}.key")))
        .arg(format!("https://localhost:{port}{path}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

#[test]
fn km2_cli_kms_serve_on_a_sealed_deployment_starts_sealed() {
    let cli = Cli::new();
    cli.ok(&["init"]);
    let d = cli.dir().join("shares");
    cli.ok(&[
        "seal",
        "init",
        "--threshold",
        "2",
        "--shares",
        "2",
        "--share-dir",
        d.to_str().unwrap(),
    ]);
    let files = share_files(&d, 2);
    let pki = cli.dir().join("var/pki");
    cli.ok(&["dev-pki", "--dir", pki.to_str().unwrap()]);
    let (admin, prov) = (free_port(), free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_kms"))
        .arg("--config")
        .arg(&cli.config)
        .arg("serve")
        .env_remove("KMS_CONFIG")
        .env_remove("KMS_UNSEAL_SHARE_FILES")
        .env("KMS_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
        .env("KMS_PROVISIONING_LISTEN", format!("127.0.0.1:{prov}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut up = false;
    for _ in 0..200 {
        if curl(&pki, "officer", admin, "/v1/health").0 == 200 {
            up = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (keys, seal) = (
        curl(&pki, "provisioner", prov, "/v1/keys"),
        curl(&pki, "officer", admin, "/v1/seal"),
    );
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let o = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(up, "the sealed server did not come up: {stderr}");
    assert_eq!(keys.0, 503, "{}", keys.1);
    assert!(keys.1.contains("\"code\":\"sealed\""), "{}", keys.1);
    assert_eq!(seal.0, 200, "{}", seal.1);
    let st: serde_json::Value = serde_json::from_str(&seal.1).unwrap();
    assert_eq!(
        (st["sealed"].clone(), st["need"].clone()),
        (true.into(), 2.into())
    );
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("SEALED"), "{stderr}");

    let found = cli.ok(&with_shares(
        &[&files[0], &files[1]],
        &["--json", "audit", "search", "--action", "server.start"],
    ));
    let recs: Vec<serde_json::Value> = found
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(recs.len(), 1, "{}", found.stdout);
    assert_eq!(recs[0]["details"]["sealed"], "true", "{}", recs[0]);
    assert_eq!(recs[0]["outcome"], "success");
}
