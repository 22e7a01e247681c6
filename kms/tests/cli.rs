#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The `kms` binary end to end on a fresh SoftHSM2 token: every command,
//! human and JSON output, and exit codes that tell usage errors (2),
//! refusals (3) and failures (1) apart.

use kms::model::CustodianRole;
use kms_e2e::people::Person;
use kms_e2e::token::{module_path, TestToken};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

struct Cli {
    token: TestToken,
    config: PathBuf,
    /// Custodians' PINs given so far: no command may print them.
    pins: std::cell::RefCell<Vec<String>>,
    /// The people founded by `found` (issue 5), their keys and
    /// certificates in files beside the configuration.
    people: std::cell::RefCell<Vec<Person>>,
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
        Cli {
            token,
            config,
            pins: Default::default(),
            people: Default::default(),
        }
    }

    fn run_with(&self, args: &[&str], stdin: Option<&str>) -> Out {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kms"))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env_remove("KMS_CONFIG")
            .env_remove("KMS_ACTOR")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        drop(child.stdin.take());
        let o = child.wait_with_output().unwrap();
        let out = Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        };
        for secret in [&self.token.user_pin, &self.token.so_pin] {
            assert!(
                !out.stdout.contains(secret.as_str()) && !out.stderr.contains(secret.as_str()),
                "a PIN was printed"
            );
        }
        for pin in self.pins.borrow().iter() {
            assert!(
                !out.stdout.contains(pin.as_str()) && !out.stderr.contains(pin.as_str()),
                "a custodian's PIN was printed: {args:?}"
            );
        }
        out
    }

    fn run(&self, args: &[&str]) -> Out {
        self.run_with(args, None)
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

    fn code(&self, args: &[&str], want: i32, needle: &str) {
        let o = self.run(args);
        assert_eq!(
            o.code, want,
            "{args:?}\nstdout: {}\nstderr: {}",
            o.stdout, o.stderr
        );
        assert!(
            o.stderr.contains(needle),
            "{args:?}: {:?} lacks {needle:?}",
            o.stderr
        );
    }

    /// i/imk from the known components (an import is a quorum operation:
    /// alice requests, bob approves, alice executes entering them), and a
    /// trusted transport KEK i/tk made under dual control.
    fn imk_and_transport_kek(&self, comps: &str) {
        if self.people.borrow().is_empty() {
            self.found();
        }
        let import = [
            "key",
            "import",
            "-t",
            "i",
            "imk",
            "--alg",
            "tdes-2key",
            "--usage",
            "imk-ac",
            "--kcv",
            "DD4D44",
        ];
        let o = self.dual_control_with("alice", &import, &["--components", "3", "--stdin"], comps);
        assert_eq!(o.code, 0, "{}", o.stderr);
        let tk = [
            "key",
            "create",
            "-t",
            "i",
            "tk",
            "--alg",
            "aes-128",
            "--usage",
            "transport-kek",
            "--trusted",
        ];
        assert_eq!(self.dual_control_as("so1", &tk).code, 0);
    }

    /// Issue 5: the founding through the CLI. so1 (security officer) is
    /// bootstrapped, enrols alice and bob (custodians) alone, each bound to
    /// a certificate whose key is in a file; each changes the initial PIN;
    /// so1 closes the founding.
    fn found(&self) {
        let people = vec![
            Person::new("so1", CustodianRole::SecurityOfficer),
            Person::new("alice", CustodianRole::Custodian),
            Person::new("bob", CustodianRole::Custodian),
        ];
        let so1_pin = people[0].pin.clone();
        for (i, p) in people.iter().enumerate() {
            self.pin(&p.pin);
            self.pin(&p.initial_pin);
            let dir = self.token.dir.path();
            std::fs::write(dir.join(format!("{}.key", p.name)), &p.key_pem).unwrap();
            std::fs::write(dir.join(format!("{}.pem", p.name)), &p.cert_pem).unwrap();
            let fp = p.cert_sha256();
            let mut args = vec![];
            let mut input = String::new();
            if i > 0 {
                args.extend(["--as", "so1"]);
                input.push_str(&format!("{so1_pin}\n"));
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
            let o = self.run_with(&args, Some(&input));
            assert_eq!(o.code, 0, "enrol {}: {}", p.name, o.stderr);
            let o = self.run_with(
                &["custodian", "change-pin", "--name", &p.name, "--pin-stdin"],
                Some(&format!("{}\n{}\n", p.initial_pin, p.pin)),
            );
            assert_eq!(o.code, 0, "{}'s PIN: {}", p.name, o.stderr);
        }
        let o = self.run_with(
            &["--as", "so1", "custodian", "close-founding", "--pin-stdin"],
            Some(&format!("{so1_pin}\n")),
        );
        assert_eq!(o.code, 0, "close the founding: {}", o.stderr);
        *self.people.borrow_mut() = people;
    }

    /// The PIN of a founded person.
    fn pin_of(&self, name: &str) -> String {
        self.people
            .borrow()
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.pin.clone())
            .unwrap_or_else(|| panic!("{name} was not founded"))
    }

    /// A command run `--as` a founded person, their PIN on standard input.
    fn as_person(&self, name: &str, args: &[&str]) -> Out {
        let mut a = vec!["--as", name];
        a.extend_from_slice(args);
        self.run_with(&a, Some(&format!("{}\n", self.pin_of(name))))
    }

    /// `request approve` as `approver`, signed with their key file.
    fn approve(&self, approver: &str, id: &str, digest: &str) -> Out {
        let dir = self.token.dir.path();
        let key = dir.join(format!("{approver}.key"));
        let cert = dir.join(format!("{approver}.pem"));
        self.as_person(
            approver,
            &[
                "request",
                "approve",
                id,
                "--digest",
                digest,
                "--key",
                key.to_str().unwrap(),
                "--cert",
                cert.to_str().unwrap(),
                "--pin-stdin",
            ],
        )
    }

    /// request (alice) -> approve (bob) -> execute (alice)
    fn dual_control(&self, request: &[&str]) -> Out {
        self.dual_control_as("alice", request)
    }

    fn dual_control_as(&self, requester: &str, request: &[&str]) -> Out {
        self.dual_control_with(requester, request, &[], "")
    }

    /// request (`requester`) -> approve (bob, signed) -> execute
    /// (`requester`, with `exec` arguments and `input` after the PIN).
    fn dual_control_with(
        &self,
        requester: &str,
        request: &[&str],
        exec: &[&str],
        input: &str,
    ) -> Out {
        let mut a = vec!["--json"];
        a.extend_from_slice(request);
        let o = self.as_person(requester, &a);
        assert_eq!(o.code, 0, "{request:?}: {}", o.stderr);
        let req: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
        let id = req["id"].as_str().unwrap().to_owned();
        let digest = req["digest"].as_str().unwrap().to_owned();
        let o = self.approve("bob", &id, &digest);
        assert_eq!(o.code, 0, "approve: {}", o.stderr);
        let mut a = vec!["--as", requester, "request", "execute", &id, "--pin-stdin"];
        a.extend_from_slice(exec);
        self.run_with(&a, Some(&format!("{}\n{input}", self.pin_of(requester))))
    }
}

#[test]
fn cli_key_lifecycle_and_exit_codes() {
    let cli = Cli::new();
    cli.ok(&["init"]);
    cli.found();
    cli.ok(&["status"]);
    let o = cli.ok(&[
        "key",
        "create",
        "-t",
        "issuer-a",
        "kmc",
        "--alg",
        "tdes-2key",
        "--usage",
        "sd-kmc",
    ]);
    assert!(
        o.stdout.contains("issuer-a/kmc") && o.stdout.contains("active"),
        "{}",
        o.stdout
    );
    cli.ok(&[
        "key",
        "create",
        "-t",
        "issuer-a",
        "enc",
        "--alg",
        "aes-128",
        "--usage",
        "sd-enc",
        "--exportable",
    ]);
    cli.ok(&[
        "key", "create", "-t", "issuer-a", "sig", "--alg", "ec-p256", "--usage", "signing",
    ]);
    // A trusted KEK: one person alone gets only a request.
    let tk = [
        "key",
        "create",
        "-t",
        "issuer-a",
        "tk",
        "--alg",
        "aes-256",
        "--usage",
        "transport-kek",
        "--trusted",
    ];
    let alone = cli.as_person("so1", &tk);
    assert_eq!(alone.code, 0, "{}", alone.stderr);
    assert!(
        alone.stdout.contains("needs 1 approval"),
        "{}",
        alone.stdout
    );
    // Without --as nobody asks for anything.
    cli.code(&tk, 2, "--as NAME");
    let trusted = cli.dual_control_as("so1", &tk);
    assert_eq!(trusted.code, 0, "{}", trusted.stderr);
    assert!(trusted.stdout.contains("trusted"), "{}", trusted.stdout);

    let list = cli.json(&["key", "list", "-t", "issuer-a"]);
    assert_eq!(list.as_array().unwrap().len(), 4);
    let human = cli.ok(&["key", "list"]).stdout;
    assert!(
        human.contains("issuer-a/enc") && human.contains("exportable"),
        "{human}"
    );

    // Usage errors: 2.
    cli.code(
        &[
            "key", "create", "-t", "issuer-a", "x", "--alg", "des-56", "--usage", "kek",
        ],
        2,
        "unknown algorithm",
    );
    cli.code(
        &[
            "key", "create", "-t", "issuer-a", "x", "--alg", "aes-128", "--usage", "imk-ac",
        ],
        2,
        "cannot be",
    );
    cli.code(
        &[
            "key",
            "create",
            "-t",
            "issuer-a",
            "kmc",
            "--alg",
            "tdes-2key",
            "--usage",
            "sd-kmc",
        ],
        2,
        "already has",
    );
    cli.code(
        &[
            "key",
            "create",
            "-t",
            "bad/tenant",
            "x",
            "--alg",
            "aes-128",
            "--usage",
            "kek",
        ],
        2,
        "tenant",
    );
    cli.code(&["key", "show", "-t", "issuer-a", "nope"], 2, "no key");
    cli.code(&["key", "frobnicate"], 2, "unrecognized");
    // Refusals: 3.
    cli.code(
        &["key", "state", "-t", "issuer-a", "kmc", "--to", "activate"],
        3,
        "cannot go to",
    );
    cli.code(
        &[
            "key",
            "create",
            "-t",
            "issuer-a",
            "m",
            "--alg",
            "tdes-2key",
            "--usage",
            "sd-kmc",
            "--exportable",
        ],
        3,
        "policy",
    );

    // Rotate, export and destroy under dual control.
    let rotated = cli.json(&[
        "key", "rotate", "-t", "issuer-a", "enc", "--reason", "annual",
    ]);
    assert_eq!(rotated["versions"].as_array().unwrap().len(), 2);
    let exported = cli.dual_control(&["key", "export", "-t", "issuer-a", "enc", "--kek", "tk"]);
    assert_eq!(exported.code, 0, "{}", exported.stderr);
    assert!(
        exported.stdout.contains("wrapped under tk"),
        "{}",
        exported.stdout
    );
    // An export of a non-exportable key is refused when it would run.
    let refused = cli.dual_control(&["key", "export", "-t", "issuer-a", "kmc", "--kek", "tk"]);
    assert_eq!(refused.code, 3, "{}", refused.stderr);
    // Every approval so far is signed, and verifies from the trail alone.
    let o = cli.ok(&["request", "verify-approvals"]);
    assert!(
        o.stdout
            .contains("re-checked from the audit trail alone; 0 do not verify"),
        "{}",
        o.stdout
    );
    let destroyed =
        cli.dual_control(&["key", "destroy", "-t", "issuer-a", "enc", "--version", "1"]);
    assert_eq!(destroyed.code, 0, "{}", destroyed.stderr);
    let show = cli.json(&["key", "show", "-t", "issuer-a", "enc"]);
    assert_eq!(show["versions"][0]["presence"], "tombstone");
    assert!(show["versions"][0]["kcv"]
        .as_str()
        .is_some_and(|k| k.len() == 6));
    let actions: Vec<_> = show["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        actions.contains(&"destroy".to_owned()) && actions.contains(&"export".to_owned()),
        "{actions:?}"
    );
    let attrs = cli.json(&["key", "attributes", "-t", "issuer-a", "kmc"]);
    assert_eq!(attrs[0]["sensitive"], true);
    // Backed up (KM-2): extractable by a trusted KEK only, yet the export
    // above was refused.
    assert_eq!(attrs[0]["extractable"], true);
    assert_eq!(attrs[0]["wrap_with_trusted"], true);
    cli.ok(&["status"]);
}

#[test]
fn km1_cli_imports_known_key_from_components_on_stdin() {
    let cli = Cli::new();
    cli.ok(&["init"]);
    cli.found();
    // The first TDES known answer: three components, KCV DD4D44. An import
    // is a quorum operation (issue 5): requested, approved, then executed
    // by the requester while the custodians enter their components.
    let comps = "29C2706DC7D6913E13CDB901948FE30E\nF125A2734AE007C1CBFEFBB58AE9F85B\n0BCB7FEC8C3D3B3468CE6154851067A4\n";
    let args = [
        "key",
        "import",
        "-t",
        "issuer-a",
        "imk",
        "--alg",
        "tdes-2key",
        "--usage",
        "imk-ac",
    ];
    let exec = ["--components", "3", "--stdin"];
    let mut wrong = args.to_vec();
    wrong.extend(["--kcv", "000000"]);
    let o = cli.dual_control_with("alice", &wrong, &exec, comps);
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(o.stderr.contains("check value"), "{}", o.stderr);
    assert_eq!(
        cli.json(&["key", "list", "-t", "issuer-a"])
            .as_array()
            .unwrap()
            .len(),
        0,
        "nothing created"
    );
    let mut right = args.to_vec();
    right.extend(["--kcv", "DD4D44"]);
    let o = cli.dual_control_with("alice", &right, &exec, comps);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("DD4D44"), "{}", o.stdout);
    for line in comps.lines() {
        assert!(
            !o.stdout.contains(line) && !o.stderr.contains(line),
            "a component was echoed"
        );
    }
    // Malformed hex: a usage error that does not echo the input.
    let mut again = args.to_vec();
    again[4] = "imk2";
    again.extend(["--kcv", "DD4D44"]);
    let o = cli.dual_control_with("alice", &again, &exec, "29C2706DC7D6913E13CDB901948FE3ZZ\n");
    assert_eq!(o.code, 2);
    assert!(!o.stderr.contains("29C2706D"), "{}", o.stderr);
}

#[test]
fn tsm_ac1_wrong_pin_and_missing_module_are_failures() {
    let cli = Cli::new();
    std::fs::write(cli.token.dir.path().join("user.pin"), "00000000").unwrap();
    cli.code(&["init"], 1, "refused the PIN");
    // The failed login is in the trail (recorded without the token).
    std::fs::write(cli.token.dir.path().join("user.pin"), &cli.token.user_pin).unwrap();
    let found = cli
        .ok(&["--json", "audit", "search", "--action", "hsm.login"])
        .stdout;
    assert!(
        found.contains("\"outcome\":\"failure\"") && found.contains("PIN"),
        "{found}"
    );
    // A failed login's record has no MAC (no token), and the trail verifies.
    cli.ok(&["audit", "verify"]);
    let text = std::fs::read_to_string(&cli.config)
        .unwrap()
        .replace(&module_path(), "/nonexistent/module.so");
    std::fs::write(&cli.config, text).unwrap();
    cli.code(&["init"], 1, "cannot load the PKCS#11 module");
}

/// TSM-AC-2 / invariant 4: every CLI command leaves its record; nothing in
/// the trail is a component, key, PIN or full PAN; the chain verifies
/// online and offline, and damage is an exit code. Later issues extend
/// `COMMANDS` with their endpoints and ceremony steps.
#[test]
fn tsm_ac2_every_cli_command_is_audited_and_the_trail_holds_no_secrets() {
    let cli = Cli::new();
    cli.ok(&["init"]);
    cli.found();
    // A changed policy, for a policy-change request.
    let policy_file = cli.token.dir.path().join("keys.toml");
    std::fs::write(
        &policy_file,
        include_str!("../../policies/keys.toml")
            .replace("request_ttl_minutes = 60", "request_ttl_minutes = 30"),
    )
    .unwrap();
    let comps = "29C2706DC7D6913E13CDB901948FE30E\nF125A2734AE007C1CBFEFBB58AE9F85B\n0BCB7FEC8C3D3B3468CE6154851067A4\n";
    let pan = "4304749924883220";
    // Issue 5: the backup KEK's shares and a backup file (KM-2).
    let share_dir = cli.token.dir.path().join("kek-shares");
    let backup_file = cli.token.dir.path().join("backup.json");
    // Invariant 3: the backup KEK by request (so1), signed approval (bob)
    // and `backup kek-execute` (so1, under the SO login).
    let o = cli.as_person(
        "so1",
        &[
            "--json",
            "backup",
            "kek-create",
            "--threshold",
            "2",
            "--shares",
            "2",
            "--pin-stdin",
        ],
    );
    assert_eq!(o.code, 0, "kek-create: {}", o.stderr);
    let req: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    let id = req["id"].as_str().unwrap().to_owned();
    let o = cli.approve("bob", &id, req["digest"].as_str().unwrap());
    assert_eq!(o.code, 0, "approve: {}", o.stderr);
    let o = cli.as_person(
        "so1",
        &[
            "backup",
            "kek-execute",
            &id,
            "--share-dir",
            share_dir.to_str().unwrap(),
            "--pin-stdin",
        ],
    );
    assert_eq!(o.code, 0, "kek-execute: {}", o.stderr);
    // (arguments, the action its record carries)
    let commands: Vec<(Vec<&str>, &str)> = vec![
        (vec!["init"], "reconcile.repair"),
        (vec!["status"], "reconcile.report"),
        (vec!["reconcile"], "reconcile.repair"),
        (
            vec![
                "key",
                "create",
                "-t",
                "i",
                "kmc",
                "--alg",
                "tdes-2key",
                "--usage",
                "sd-kmc",
            ],
            "key.create",
        ),
        (vec!["key", "list"], "key.list"),
        (vec!["key", "show", "-t", "i", "kmc"], "key.show"),
        (
            vec!["key", "attributes", "-t", "i", "kmc"],
            "key.attributes",
        ),
        (vec!["key", "rotate", "-t", "i", "kmc"], "key.rotate"),
        (
            vec![
                "key",
                "state",
                "-t",
                "i",
                "kmc",
                "--version",
                "2",
                "--to",
                "suspend",
            ],
            "key.state",
        ),
        (
            vec![
                "--as",
                "alice",
                "key",
                "destroy",
                "-t",
                "i",
                "kmc",
                "--version",
                "1",
            ],
            "request.create",
        ),
        (
            vec![
                "--as",
                "alice",
                "key",
                "compromise",
                "-t",
                "i",
                "kmc",
                "--reason",
                "test",
            ],
            "request.create",
        ),
        (
            vec![
                "--as", "alice", "key", "export", "-t", "i", "kmc", "--kek", "kmc",
            ],
            "request.create",
        ),
        (
            vec![
                "--as",
                "so1",
                "request",
                "policy-change",
                "--file",
                policy_file.to_str().unwrap(),
            ],
            "request.create",
        ),
        (
            vec!["request", "verify-approvals"],
            "request.verify-approvals",
        ),
        (vec!["audit", "verify"], "audit.verify"),
        (vec!["audit", "search", "--action", "key.*"], "audit.search"),
        (vec!["audit", "public-key"], "audit.public-key"),
        (vec!["audit", "checkpoint"], "audit.checkpoint"),
        (vec!["sd", "list", "-t", "i"], "sd.list"),
        (vec!["custodian", "list"], "custodian.list"),
        (
            vec!["backup", "create", "--out", backup_file.to_str().unwrap()],
            "backup.create",
        ),
        (
            vec!["backup", "restore", backup_file.to_str().unwrap()],
            "backup.restore",
        ),
    ];
    for (args, _) in &commands {
        // The PIN of the person a request is made `--as`.
        let input = match args.iter().position(|a| *a == "--as") {
            Some(i) => format!("{}\n", cli.pin_of(args[i + 1])),
            None => String::new(),
        };
        let o = cli.run_with(args, Some(&input));
        assert!(o.code == 0, "{args:?}: {}", o.stderr);
    }
    // Component import, dual control and a derivation with a PAN.
    cli.imk_and_transport_kek(comps);
    let o = cli.run(&[
        "derive", "emv-card", "-t", "i", "--imk", "imk", "--pan", pan, "--psn", "01", "--kek", "tk",
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = cli.run(&[
        "key", "create", "-t", "i", "x", "--alg", "des-56", "--usage", "kek",
    ]);
    assert_eq!(o.code, 2);
    let o = cli.run(&["key", "state", "-t", "i", "imk", "--to", "activate"]);
    assert_eq!(o.code, 3, "a refusal");
    // TSM-DATA-1: releasing an SD nobody bound is refused at request time
    // (and recorded as such).
    let o = cli.run(&[
        "sd",
        "release",
        "-t",
        "i",
        "--se-id",
        "4090AB12",
        "--sd-aid",
        "A000000151",
        "--reason",
        "lost",
    ]);
    assert_eq!(o.code, 2, "{}", o.stderr);

    let records: Vec<serde_json::Value> = cli
        .ok(&["--json", "audit", "search", "--limit", "100000"])
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let actions: Vec<&str> = records
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    for (args, action) in &commands {
        assert!(actions.contains(action), "{args:?} left no {action} record");
    }
    for action in [
        "cli.key",
        "service.open",
        "service.close",
        "request.approve",
        "request.execute",
        "derive.emv-card",
        "request.create",
        "backup.kek-create",
        // Issue 5: the founding, logins and the adopted policy.
        "policy.adopt",
        "custodian.enroll",
        "custodian.change-pin",
        "custodian.login",
        "custodian.close-founding",
    ] {
        assert!(actions.contains(&action), "no {action} record");
    }
    let outcomes: Vec<&str> = records
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    for o in ["attempt", "success", "refused"] {
        assert!(outcomes.contains(&o), "no {o} record");
    }
    let derive = records
        .iter()
        .find(|r| r["action"] == "derive.emv-card" && r["outcome"] == "success")
        .unwrap();
    assert_eq!(derive["details"]["pan"], "430474******3220");
    assert!(derive["details"]["pan_hmac"]
        .as_str()
        .is_some_and(|h| h.len() == 32));

    // Nothing secret anywhere in the trail.
    let all = cli
        .ok(&["--json", "audit", "search", "--limit", "100000"])
        .stdout;
    let mut secrets: Vec<String> = comps.lines().map(str::to_owned).collect();
    secrets.push("D32CADF2010BADCBB0FD23E09B767CF1".into()); // the imported key
    secrets.push(pan.into());
    secrets.push(cli.token.user_pin.clone());
    secrets.push(cli.token.so_pin.clone());
    secrets.extend(cli.pins.borrow().iter().cloned());
    // The backup KEK's shares.
    for e in std::fs::read_dir(&share_dir).unwrap() {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
        secrets.push(text.trim().to_owned());
    }
    for s in &secrets {
        assert!(
            !all.contains(s.as_str()) && !all.contains(&s.to_lowercase()),
            "a secret is in the audit trail"
        );
    }

    // Online verification, then offline on an export with the public key.
    cli.ok(&["audit", "verify"]);
    let dir = cli.token.dir.path();
    let (recs, cps, key) = (dir.join("a.jsonl"), dir.join("c.jsonl"), dir.join("k.pem"));
    cli.ok(&[
        "audit",
        "export",
        "--out",
        recs.to_str().unwrap(),
        "--checkpoints",
        cps.to_str().unwrap(),
        "--public-key",
        key.to_str().unwrap(),
    ]);
    let offline = [
        "audit",
        "verify",
        "--records",
        recs.to_str().unwrap(),
        "--checkpoints",
        cps.to_str().unwrap(),
        "--public-key",
        key.to_str().unwrap(),
    ];
    let o = cli.ok(&offline);
    assert!(o.stdout.contains("VERIFIED"), "{}", o.stdout);
    // A changed line in the export: exit 4 and the record named.
    let text = std::fs::read_to_string(&recs).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines[4] = lines[4].replacen("\"actor\":\"", "\"actor\":\"x", 1);
    std::fs::write(&recs, lines.join("\n")).unwrap();
    let o = cli.run(&offline);
    assert_eq!(o.code, 4, "{}", o.stdout);
    let seq = serde_json::from_str::<serde_json::Value>(&lines[4]).unwrap()["seq"]
        .as_u64()
        .unwrap();
    assert!(
        o.stdout.contains(&format!("record {seq:>8}  Changed")),
        "{}",
        o.stdout
    );

    let report = dir.join("report.html");
    cli.ok(&["audit", "report", "--out", report.to_str().unwrap()]);
    let html = std::fs::read_to_string(report).unwrap();
    assert!(html.contains("VERIFIED") && html.contains("<svg"));
    assert!(!html.contains(pan));
}

impl Cli {
    /// A PIN this test uses: checked absent from every later output.
    fn pin(&self, pin: &str) -> String {
        self.pins.borrow_mut().push(pin.to_owned());
        pin.to_owned()
    }

    fn with_pin(&self, args: &[&str], input: &str) -> Out {
        self.run_with(args, Some(input))
    }

    /// `custodian login --pin-stdin`, expecting `want`.
    fn login(&self, name: &str, pin: &str, want: i32, needle: &str) -> Out {
        let o = self.with_pin(
            &[
                "--json",
                "custodian",
                "login",
                "--name",
                name,
                "--pin-stdin",
            ],
            &format!("{pin}\n"),
        );
        assert_eq!(o.code, want, "login {name}: {} {}", o.stdout, o.stderr);
        let all = format!("{}{}", o.stdout, o.stderr);
        assert!(
            all.contains(needle),
            "login {name}: {all:?} lacks {needle:?}"
        );
        o
    }

    /// A custodian request by `requester` (whose PIN is `pin`), approved
    /// by bob (enrolled during the founding, signing with his key),
    /// executed by `requester` with `input` on stdin after their PIN.
    fn custodian_request(&self, requester: &str, pin: &str, request: &[&str], input: &str) -> Out {
        let mut a = vec!["--json", "--as", requester, "custodian"];
        a.extend_from_slice(request);
        let o = self.with_pin(&a, &format!("{pin}\n"));
        assert_eq!(o.code, 0, "{request:?}: {}", o.stderr);
        let req: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
        let id = req["id"].as_str().unwrap().to_owned();
        let digest = req["digest"].as_str().unwrap().to_owned();
        let o = self.approve("bob", &id, &digest);
        assert_eq!(o.code, 0, "approve: {}", o.stderr);
        self.with_pin(
            &["--as", requester, "request", "execute", &id, "--pin-stdin"],
            &format!("{pin}\n{input}"),
        )
    }
}

/// AUTH-PIN-LOCK, TSM-AC-1 through the CLI: bootstrap, the initial PIN
/// changed at first use, a second officer enrolled under dual control, 5
/// wrong PINs lock (exit 3), the right PIN is then refused too, and only
/// another officer re-enables. No PIN is ever printed or recorded.
#[test]
fn auth_pin_lock_cli_bootstrap_login_lock_and_unlock() {
    let cli = Cli::new();
    cli.ok(&["init"]);
    let first = cli.pin("Kestrel-Dawn-42");
    let so1_pin = cli.pin("58314072");
    let so2_first = cli.pin("Marble+Otter-17");
    let so2_pin = cli.pin("Quiet/Harbor-93");
    let wrong = cli.pin("Wrong-Guess-61");

    // The first person must be a security officer.
    let o = cli.with_pin(
        &[
            "custodian",
            "bootstrap",
            "--name",
            "so1",
            "--role",
            "custodian",
            "--pin-stdin",
        ],
        &format!("{first}\n"),
    );
    assert_eq!(o.code, 3, "{}", o.stderr);
    let o = cli.with_pin(
        &[
            "--actor",
            "so1",
            "custodian",
            "bootstrap",
            "--name",
            "so1",
            "--role",
            "security-officer",
            "--pin-stdin",
        ],
        &format!("{first}\n"),
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("must be changed"), "{}", o.stdout);

    // First login: the PIN must be changed, and nothing else is allowed.
    let o = cli.login("so1", &first, 0, "\"must_change_pin\": true");
    let session: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(session["idle_timeout_seconds"], 900);
    let enrol_so2 = [
        "enroll",
        "--name",
        "so2",
        "--role",
        "security-officer",
        "--idle-timeout",
        "600",
    ];
    let mut early = vec!["--as", "so1", "custodian"];
    early.extend_from_slice(&enrol_so2);
    let o = cli.with_pin(&early, &format!("{first}\n"));
    assert_eq!(o.code, 3, "{}", o.stderr);
    assert!(
        o.stderr.contains("must change the initial PIN"),
        "{}",
        o.stderr
    );
    let o = cli.with_pin(
        &["custodian", "change-pin", "--name", "so1", "--pin-stdin"],
        &format!("{first}\n{so1_pin}\n"),
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    cli.login("so1", &first, 3, "wrong PIN");
    cli.login("so1", &so1_pin, 0, "\"must_change_pin\": false");

    // Issue 5: the founding. so1 enrols bob (a custodian who can approve)
    // alone, then closes it; from now on enrolments are dual-controlled.
    let bob = Person::new("bob", CustodianRole::Custodian);
    cli.pin(&bob.pin);
    cli.pin(&bob.initial_pin);
    let dir = cli.token.dir.path();
    std::fs::write(dir.join("bob.key"), &bob.key_pem).unwrap();
    std::fs::write(dir.join("bob.pem"), &bob.cert_pem).unwrap();
    let fp = bob.cert_sha256();
    let o = cli.with_pin(
        &[
            "--as",
            "so1",
            "custodian",
            "bootstrap",
            "--name",
            "bob",
            "--role",
            "custodian",
            "--cert-sha256",
            &fp,
            "--pin-stdin",
        ],
        &format!("{so1_pin}\n{}\n", bob.initial_pin),
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = cli.with_pin(
        &["custodian", "change-pin", "--name", "bob", "--pin-stdin"],
        &format!("{}\n{}\n", bob.initial_pin, bob.pin),
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    *cli.people.borrow_mut() = vec![bob];
    let o = cli.with_pin(
        &["--as", "so1", "custodian", "close-founding", "--pin-stdin"],
        &format!("{so1_pin}\n"),
    );
    assert_eq!(o.code, 0, "{}", o.stderr);

    // A second officer, under dual control; the initial PIN at execution.
    let o = cli.custodian_request("so1", &so1_pin, &enrol_so2, &format!("{so2_first}\n"));
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stdout.contains("so2 (security-officer) enrolled"),
        "{}",
        o.stdout
    );
    let o = cli.with_pin(
        &["custodian", "change-pin", "--name", "so2", "--pin-stdin"],
        &format!("{so2_first}\n{so2_pin}\n"),
    );
    assert_eq!(o.code, 0, "{}", o.stderr);

    // 5 wrong PINs in a row lock so1; then even the right PIN is refused.
    for i in 1..=4 {
        cli.login(
            "so1",
            &wrong,
            3,
            &format!("({i} consecutive failures of 5)"),
        );
    }
    cli.login("so1", &wrong, 3, "now locked");
    cli.login("so1", &so1_pin, 3, "is locked");
    let list = cli.json(&["custodian", "list"]);
    let so1 = list
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "so1")
        .unwrap();
    assert!(so1["locked_at"].is_string(), "{so1}");
    assert!(cli.ok(&["custodian", "list"]).stdout.contains("LOCKED"));

    // Nobody re-enables themselves; a reason is needed; so2 can.
    cli.code(
        &[
            "--actor",
            "so1",
            "custodian",
            "unlock",
            "--name",
            "so1",
            "--reason",
            "me",
        ],
        3,
        "locked",
    );
    cli.code(
        &[
            "--actor",
            "mallory",
            "custodian",
            "unlock",
            "--name",
            "so1",
            "--reason",
            "x",
        ],
        3,
        "not enrolled",
    );
    cli.code(
        &[
            "--actor",
            "so2",
            "custodian",
            "unlock",
            "--name",
            "so1",
            "--reason",
            " ",
        ],
        2,
        "reason",
    );
    cli.ok(&[
        "--actor",
        "so2",
        "custodian",
        "unlock",
        "--name",
        "so1",
        "--reason",
        "identity checked in person by so2",
    ]);
    cli.login("so1", &so1_pin, 0, "\"must_change_pin\": false");

    // Removal under dual control; the removed person can no longer log in.
    let o = cli.custodian_request("so1", &so1_pin, &["remove", "--name", "so2"], "");
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("removed"), "{}", o.stdout);
    cli.login("so2", &so2_pin, 3, "was removed");

    // Listing shows standing, never a hash; the trail holds no PIN.
    let list = cli.ok(&["--json", "custodian", "list"]).stdout;
    assert!(
        !list.contains("argon2") && !list.contains("pin_hash"),
        "{list}"
    );
    let human = cli.ok(&["custodian", "list"]).stdout;
    assert!(
        human.contains("so1") && human.contains("removed"),
        "{human}"
    );
    let trail = cli
        .ok(&["--json", "audit", "search", "--limit", "100000"])
        .stdout;
    for action in [
        "custodian.enroll",
        "custodian.login",
        "custodian.change-pin",
        "custodian.lock",
        "custodian.unlock",
        "custodian.remove",
        "custodian.list",
    ] {
        assert!(trail.contains(action), "no {action} record");
    }
    for pin in cli.pins.borrow().iter() {
        assert!(!trail.contains(pin.as_str()), "a PIN is in the audit trail");
    }
    cli.ok(&["audit", "verify"]);
}

/// AUTH-PIN-WEAK / AUTH-PIN-LEN through the CLI: weak or short PINs are
/// usage errors (exit 2), at bootstrap, at change and at enrolment, and
/// nothing is enrolled by a refused bootstrap.
#[test]
fn auth_pin_weak_cli_refuses_weak_pins_with_exit_2() {
    let cli = Cli::new();
    cli.ok(&["init"]);
    let bootstrap = [
        "custodian",
        "bootstrap",
        "--name",
        "so1",
        "--role",
        "security-officer",
        "--pin-stdin",
    ];
    for weak in ["123456", "111111", "12345", "password", "2580"] {
        let o = cli.with_pin(&bootstrap, &format!("{weak}\n"));
        assert_eq!(o.code, 2, "{weak}: {}", o.stderr);
        assert!(!o.stderr.contains(weak), "{weak} echoed: {}", o.stderr);
    }
    let o = cli.with_pin(&bootstrap, "");
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(o.stderr.contains("no PIN"), "{}", o.stderr);
    assert_eq!(cli.json(&["custodian", "list"]), serde_json::json!([]));

    let first = cli.pin("Kestrel-Dawn-42");
    let o = cli.with_pin(&bootstrap, &format!("{first}\n"));
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = cli.with_pin(
        &["custodian", "change-pin", "--name", "so1", "--pin-stdin"],
        &format!("{first}\n987654\n"),
    );
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(o.stderr.contains("consecutive"), "{}", o.stderr);
    // A weak new PIN cost no attempt.
    assert_eq!(cli.json(&["custodian", "list"])[0]["failed_attempts"], 0);
}

/// Retention: old records move to a signed archive segment (verified before
/// deletion); the database chain and the archive verify, together and apart.
#[test]
fn tsm_ac2_archived_segments_verify_across_segments() {
    let cli = Cli::new();
    cli.ok(&["init"]);
    for i in 0..30 {
        cli.ok(&[
            "key",
            "create",
            "-t",
            "i",
            &format!("k{i}"),
            "--alg",
            "aes-128",
            "--usage",
            "data",
        ]);
    }
    let dir = cli.token.dir.path().join("archive");
    let d = dir.to_str().unwrap();
    cli.code(
        &["audit", "archive", "--through", "0", "--dir", d],
        2,
        "--through",
    );
    cli.ok(&["audit", "archive", "--through", "40", "--dir", d]);
    for i in 30..40 {
        cli.ok(&[
            "key",
            "create",
            "-t",
            "i",
            &format!("k{i}"),
            "--alg",
            "aes-128",
            "--usage",
            "data",
        ]);
    }
    cli.ok(&["audit", "archive", "--through", "90", "--dir", d]);
    // The database chain now starts at 91, linked to the archive.
    let o = cli.ok(&["audit", "verify"]);
    assert!(o.stdout.contains("(91.."), "{}", o.stdout);
    let o = cli.ok(&["audit", "verify", "--archive", d]);
    assert!(
        o.stdout.contains("(1..90)") && o.stdout.contains("VERIFIED"),
        "{}",
        o.stdout
    );
    // A record deleted from the first segment is named.
    let seg = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with("000000000040.jsonl"))
        .unwrap();
    let text = std::fs::read_to_string(&seg).unwrap();
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("\"seq\":17,"))
        .collect();
    std::fs::write(&seg, kept.join("\n") + "\n").unwrap();
    let o = cli.run(&["audit", "verify", "--archive", d]);
    assert_eq!(o.code, 4, "{}", o.stdout);
    assert!(
        o.stdout.contains("record       17  Deleted"),
        "{}",
        o.stdout
    );
}

/// KM-7 / HS-1: a PAN can be given on standard input (never in `ps`), and
/// it is only ever shown masked.
#[test]
fn km7_pan_from_stdin_is_shown_masked_only() {
    let cli = Cli::new();
    cli.ok(&["init"]);
    let comps = "29C2706DC7D6913E13CDB901948FE30E\nF125A2734AE007C1CBFEFBB58AE9F85B\n0BCB7FEC8C3D3B3468CE6154851067A4\n";
    cli.imk_and_transport_kek(comps);
    let pan = "4304749924883220";
    let o = cli.run_with(
        &[
            "derive", "emv-card", "-t", "i", "--imk", "imk", "--pan", "-", "--psn", "60", "--kek",
            "tk",
        ],
        Some(&format!("{pan}\n")),
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("430474******3220"), "{}", o.stdout);
    assert!(!o.stdout.contains(pan) && !o.stderr.contains(pan));
}

/// The OpenAPI document the CLI prints is the one checked into docs/ (and
/// served at /v1/openapi.json): regenerate it with
/// `cargo run -p kms -- openapi > docs/openapi.json` when the API changes.
#[test]
fn the_checked_in_openapi_document_is_current() {
    let cli = Cli::new();
    let printed = cli.ok(&["openapi"]).stdout;
    let docs =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json"))
            .unwrap();
    assert!(
        printed == docs,
        "docs/openapi.json is stale: run `cargo run -p kms -- openapi > docs/openapi.json`"
    );
    let doc: serde_json::Value = serde_json::from_str(&printed).unwrap();
    for path in [
        "/v1/sessions/scp02",
        "/v1/sessions/scp03",
        "/v1/card-keys/emv",
        "/v1/keys",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} documented");
    }
}

/// `kms bench --api` runs end to end on a fresh token: every row measured
/// something, an API request writes exactly its attempt and outcome
/// records, and afterwards the token holds what it held before. No timing
/// is asserted.
#[test]
fn bench_api_measures_every_row_and_leaves_the_token_as_it_was() {
    let cli = Cli::new();
    cli.ok(&["init"]);
    let objects = |cli: &Cli| cli.json(&["status"])["objects_on_token"].as_u64();
    let before = objects(&cli);
    let b = cli.json(&["bench", "--api", "--seconds", "0.2", "--concurrency", "2"]);
    let rows = b["rows"].as_array().unwrap();
    // 3 rows (raw, key layer, audit) and 9 for --api, each with 1 and 2 callers.
    assert_eq!(rows.len(), 2 * (3 + 9), "{b}");
    for r in rows {
        assert!(r["ops"].as_u64().unwrap() > 0, "nothing measured: {r}");
    }
    let api: Vec<_> = rows
        .iter()
        .filter(|r| r["what"].as_str().unwrap().starts_with("api:"))
        .collect();
    assert_eq!(api.len(), 2);
    for r in api {
        assert_eq!(r["audit_records_per_op"].as_f64(), Some(2.0), "{r}");
        assert!(r["p50_ms"].as_f64().unwrap() <= r["p99_ms"].as_f64().unwrap());
    }
    assert_eq!(b["api"]["breakdown"]["parts"].as_array().unwrap().len(), 9);
    assert!(b["api"]["api_over_raw_1"].as_f64().unwrap() > 0.0);
    assert_eq!(objects(&cli), before, "the bench left objects on the token");
}

/// TSM-AC-2: a server that does not come up leaves its cause in the trail
/// (here: no TLS certificate at the configured path), not only on the
/// terminal.
#[test]
fn tsm_ac2_a_failed_server_start_is_recorded_with_its_cause() {
    let cli = Cli::new();
    let o = cli.run(&["serve"]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(o.stderr.contains("server.crt"), "{}", o.stderr);
    let found = cli.ok(&["--json", "audit", "search", "--action", "server.start"]);
    let recs: Vec<serde_json::Value> = found
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(recs.len(), 1, "{}", found.stdout);
    assert_eq!(recs[0]["outcome"], "failure");
    assert!(
        recs[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("server.crt")),
        "{}",
        recs[0]
    );
    cli.ok(&["audit", "verify"]);
}

/// TSM-AC-2: an officer's search is not narrowed by who the officer is.
/// `--actor` (and $KMS_ACTOR) names the searcher; the filter is `--by`.
/// Before, the global flag filled the search's own `--actor` filter, so an
/// officer with KMS_ACTOR set silently saw only their own records.
#[test]
fn tsm_ac2_the_searchers_own_name_does_not_filter_the_search() {
    let cli = Cli::new();
    cli.ok(&["init"]);
    cli.ok(&[
        "--actor", "alice", "key", "create", "-t", "issuer-a", "k1", "--alg", "aes-128", "--usage",
        "data",
    ]);
    let all = cli
        .ok(&[
            "--json",
            "--actor",
            "olga",
            "audit",
            "search",
            "--action",
            "key.create",
        ])
        .stdout;
    assert!(all.contains("\"actor\":\"alice\""), "{all}");
    let by_alice = cli
        .ok(&[
            "--json", "--actor", "olga", "audit", "search", "--by", "alice",
        ])
        .stdout;
    assert!(by_alice.lines().count() > 0, "{by_alice}");
    assert!(
        by_alice.lines().all(|l| l.contains("\"actor\":\"alice\"")),
        "{by_alice}"
    );
    let by_nobody = cli
        .ok(&["--json", "audit", "search", "--by", "nobody-at-all"])
        .stdout;
    assert_eq!(by_nobody.trim(), "", "{by_nobody}");
}
