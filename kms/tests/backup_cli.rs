#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `kms backup` end to end through the binary (KM-2, issue 5): the backup
//! KEK's shares written one per file, a backup, the token replaced by a
//! brand-new one, the KEK recovered from M share files (M-1 refused), the
//! keys restored with their check values, nothing secret printed.

use kms::model::CustodianRole;
use kms_e2e::people::Person;
use kms_e2e::token::{TestToken, LABEL};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

struct Cli {
    token: TestToken,
    config: PathBuf,
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

    fn run(&self, args: &[&str]) -> Out {
        let o = Command::new(env!("CARGO_BIN_EXE_kms"))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env_remove("KMS_CONFIG")
            .env("KMS_ACTOR", "alice")
            .output()
            .unwrap();
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// As `run`, with `stdin` (PINs) on standard input.
    fn run_with(&self, args: &[&str], stdin: &str) -> Out {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kms"))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env_remove("KMS_CONFIG")
            .env("KMS_ACTOR", "alice")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let o = child.wait_with_output().unwrap();
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// Issue 5: so1 (security officer) bootstrapped, bob (custodian)
    /// enrolled, both bound to certificates, PINs changed, the founding
    /// closed. Returns them.
    fn found(&self) -> Vec<Person> {
        let people = vec![
            Person::new("so1", CustodianRole::SecurityOfficer),
            Person::new("bob", CustodianRole::Custodian),
        ];
        for (i, p) in people.iter().enumerate() {
            let dir = self.dir();
            std::fs::write(dir.join(format!("{}.key", p.name)), &p.key_pem).unwrap();
            std::fs::write(dir.join(format!("{}.pem", p.name)), &p.cert_pem).unwrap();
            let fp = p.cert_sha256();
            let mut args = vec![];
            let mut input = String::new();
            if i > 0 {
                args.extend(["--as", "so1"]);
                input.push_str(&format!("{}\n", people[0].pin));
            }
            args.extend([
                "custodian",
                "bootstrap",
                "--name",
                &p.name,
                "--role",
                p.role.as_str(),
                "--cert-sha256",
                &fp,
                "--pin-stdin",
            ]);
            input.push_str(&format!("{}\n", p.initial_pin));
            let o = self.run_with(&args, &input);
            assert_eq!(o.code, 0, "enrol {}: {}", p.name, o.stderr);
            let o = self.run_with(
                &["custodian", "change-pin", "--name", &p.name, "--pin-stdin"],
                &format!("{}\n{}\n", p.initial_pin, p.pin),
            );
            assert_eq!(o.code, 0, "{}'s PIN: {}", p.name, o.stderr);
        }
        let o = self.run_with(
            &["--as", "so1", "custodian", "close-founding", "--pin-stdin"],
            &format!("{}\n", people[0].pin),
        );
        assert_eq!(o.code, 0, "close the founding: {}", o.stderr);
        people
    }

    /// Invariant 3: the backup KEK through dual control, by the CLI: so1
    /// requests it, bob signs an approval, so1 executes it (its shares
    /// written in `share_dir`). Returns kek-execute's JSON.
    fn backup_kek(
        &self,
        people: &[Person],
        m: &str,
        n: &str,
        share_dir: &Path,
    ) -> serde_json::Value {
        let (so1, bob) = (&people[0], &people[1]);
        let o = self.run_with(
            &[
                "--json",
                "--as",
                "so1",
                "backup",
                "kek-create",
                "--threshold",
                m,
                "--shares",
                n,
                "--pin-stdin",
            ],
            &format!("{}\n", so1.pin),
        );
        assert_eq!(o.code, 0, "kek-create: {}", o.stderr);
        let req: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
        let id = req["id"].as_str().unwrap().to_owned();
        let digest = req["digest"].as_str().unwrap().to_owned();
        // The requester alone cannot make it.
        let early = self.run_with(
            &[
                "--as",
                "so1",
                "backup",
                "kek-execute",
                &id,
                "--share-dir",
                share_dir.to_str().unwrap(),
                "--pin-stdin",
            ],
            &format!("{}\n", so1.pin),
        );
        assert_ne!(early.code, 0, "{}", early.stdout);
        assert!(early.stderr.contains("approvals"), "{}", early.stderr);
        let key = self.dir().join("bob.key");
        let cert = self.dir().join("bob.pem");
        let o = self.run_with(
            &[
                "--as",
                "bob",
                "request",
                "approve",
                &id,
                "--digest",
                &digest,
                "--key",
                key.to_str().unwrap(),
                "--cert",
                cert.to_str().unwrap(),
                "--pin-stdin",
            ],
            &format!("{}\n", bob.pin),
        );
        assert_eq!(o.code, 0, "approve: {}", o.stderr);
        // Not through the plain execute path either.
        let o = self.run_with(
            &["--as", "so1", "request", "execute", &id, "--pin-stdin"],
            &format!("{}\n", so1.pin),
        );
        assert_ne!(o.code, 0, "{}", o.stdout);
        assert!(o.stderr.contains("kek-execute"), "{}", o.stderr);
        let o = self.run_with(
            &[
                "--json",
                "--as",
                "so1",
                "backup",
                "kek-execute",
                &id,
                "--share-dir",
                share_dir.to_str().unwrap(),
                "--pin-stdin",
            ],
            &format!("{}\n", so1.pin),
        );
        assert_eq!(o.code, 0, "kek-execute: {}", o.stderr);
        serde_json::from_str(&o.stdout).unwrap()
    }

    fn ok(&self, args: &[&str]) -> Out {
        let o = self.run(args);
        assert_eq!(
            o.code, 0,
            "{args:?}\nstdout: {}\nstderr: {}",
            o.stdout, o.stderr
        );
        o
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ok(&a).stdout).unwrap()
    }

    fn kcv(&self, name: &str) -> String {
        let v = self.json(&["key", "show", "-t", "i", name]);
        v["versions"][0]["kcv"].as_str().unwrap().to_owned()
    }

    /// A brand-new token in place of the old one (same label and PINs).
    fn replace_token(&self) {
        for args in [
            vec!["--delete-token", "--token", LABEL],
            vec![
                "--init-token",
                "--free",
                "--label",
                LABEL,
                "--pin",
                &self.token.user_pin,
                "--so-pin",
                &self.token.so_pin,
            ],
        ] {
            let o = Command::new("softhsm2-util")
                .env("SOFTHSM2_CONF", self.token.conf())
                .args(&args)
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        }
    }
}

#[test]
fn km2_cli_backup_kek_shares_backup_new_token_recover_and_restore() {
    let cli = Cli::new();
    cli.ok(&["init"]);
    let people = cli.found();
    for (name, alg, usage) in [
        ("kmc", "tdes-2key", "sd-kmc"),
        ("enc", "aes-128", "sd-enc"),
        ("data", "aes-256", "data"),
    ] {
        cli.ok(&[
            "key", "create", "-t", "i", name, "--alg", alg, "--usage", usage,
        ]);
    }
    let before: Vec<String> = ["kmc", "enc", "data"].iter().map(|n| cli.kcv(n)).collect();

    let shares = cli.dir().join("shares");
    let made = cli.backup_kek(&people, "2", "3", &shares);
    let kek_kcv = made["kcv"].as_str().unwrap().to_owned();
    let files: Vec<String> = made["shares"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["file"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(files.len(), 3);
    let texts: Vec<String> = files
        .iter()
        .map(|f| {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(f).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
            std::fs::read_to_string(f).unwrap().trim().to_owned()
        })
        .collect();

    let backup = cli.dir().join("backup.json");
    let b = cli.json(&["backup", "create", "--out", backup.to_str().unwrap()]);
    // Three keys, and the KMS's own audit MAC key.
    assert_eq!(b["entries"], 4);
    assert_eq!(b["kek_kcv"].as_str().unwrap(), kek_kcv);
    // Never overwritten.
    assert_ne!(
        cli.run(&["backup", "create", "--out", backup.to_str().unwrap()])
            .code,
        0
    );

    cli.replace_token();
    // One share is not enough; nothing is made.
    let o = cli.run(&["backup", "kek-recover", "--kek-share", &files[0]]);
    assert_ne!(o.code, 0, "{}", o.stdout);
    // Before the KEK is back, the restore is refused.
    let o = cli.run(&["backup", "restore", backup.to_str().unwrap(), "--new-token"]);
    assert_eq!(o.code, 3, "{}\n{}", o.stdout, o.stderr);
    assert!(o.stderr.contains("kek-recover"), "{}", o.stderr);

    cli.ok(&[
        "backup",
        "kek-recover",
        "--kek-share",
        &files[0],
        "--kek-share",
        &files[2],
        "--backup",
        backup.to_str().unwrap(),
    ]);
    // With the backup file, kek-recover also put the KMS's audit keys
    // back (to countersign the officer's records): a plain restore works.
    let r = cli.json(&["backup", "restore", backup.to_str().unwrap()]);
    assert_eq!(r["restored"].as_array().unwrap().len(), 3);
    assert_eq!(r["present"].as_array().unwrap().len(), 1);
    let after: Vec<String> = ["kmc", "enc", "data"].iter().map(|n| cli.kcv(n)).collect();
    assert_eq!(after, before);
    // The audit MAC key came back from the backup: every record's MAC
    // verifies, but those of the two refused attempts, made while no user
    // login could open to countersign them (before the KEK was back).
    // Checkpoints signed before the loss name the old signing key (a
    // private key, never backed up) and are reported too.
    let found = cli.ok(&["--json", "audit", "search", "--limit", "100000"]);
    let records: Vec<serde_json::Value> = found
        .stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seq_of = |action: &str, outcome: &str| {
        records
            .iter()
            .find(|r| r["action"] == action && r["outcome"] == outcome)
            .map(|r| r["seq"].as_u64().unwrap())
            .unwrap_or_else(|| panic!("no {action} {outcome}"))
    };
    let window = seq_of("backup.file", "success")..seq_of("backup.kek-recover", "success");
    let v = cli.run(&["audit", "verify"]);
    for line in v
        .stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("record"))
    {
        let seq: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!(
            line.contains("BadSignature") || window.contains(&seq),
            "{line} (refused attempts: {window:?})"
        );
    }
    let status = cli.ok(&["status"]);
    assert!(status.stdout.contains("consistent"), "{}", status.stdout);

    // Every step is in the trail; no share is, nor in the database or the
    // backup file.
    let trail = cli.ok(&["--json", "audit", "search", "--action", "backup.*"]);
    // The KEK was made by so1, executing the approved request (the search
    // defaults to KMS_ACTOR's records).
    let made_by = cli.ok(&[
        "--json",
        "audit",
        "search",
        "--action",
        "backup.kek-create",
        "--actor",
        "so1",
    ]);
    assert!(made_by.stdout.contains("\"success\""), "{}", made_by.stdout);
    for action in [
        "backup.file",
        "backup.kek-recover",
        "backup.system-key-renew",
        "backup.restore",
    ] {
        assert!(trail.stdout.contains(action), "{action}");
    }
    let db = std::fs::read(cli.dir().join("kms.db")).unwrap();
    let file = std::fs::read_to_string(&backup).unwrap();
    for t in &texts {
        assert!(!trail.stdout.contains(t.as_str()));
        assert!(!file.contains(t.as_str()));
        assert!(!db.windows(t.len()).any(|w| w == t.as_bytes()));
    }
}
