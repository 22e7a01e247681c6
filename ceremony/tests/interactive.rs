//! The terminal as custodians see it, in a pseudo-terminal driven through
//! tmux: PINs and components typed at hidden prompts never appear on the
//! screen (nor in its scroll-back), the check values are displayed for
//! reading aloud, and the ceremony completes. Skipped, saying so, only
//! where tmux is not installed (CI installs it: softhsm-setup/install.sh).
// Test code: panicking on an unexpected error is the point.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod support;

use std::process::Command;
use std::time::{Duration, Instant};
use support::{Site, Split};

struct Tmux {
    socket: String,
    session: String,
}

impl Tmux {
    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket]);
        c
    }

    /// The whole pane, scroll-back included.
    fn screen(&self) -> String {
        let out = self
            .cmd()
            .args(["capture-pane", "-p", "-J", "-S", "-", "-t", &self.session])
            .output()
            .expect("capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn wait_for(&self, what: &str) -> String {
        let start = Instant::now();
        loop {
            let s = self.screen();
            if s.contains(what) {
                return s;
            }
            if start.elapsed() > Duration::from_secs(60) {
                panic!("waited 60 s for {what:?}; the screen:\n{s}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn type_line(&self, text: &str) {
        let ok = self
            .cmd()
            .args(["send-keys", "-t", &self.session, "-l", text])
            .status()
            .expect("send-keys")
            .success()
            && self
                .cmd()
                .args(["send-keys", "-t", &self.session, "Enter"])
                .status()
                .expect("send-keys")
                .success();
        assert!(ok, "send-keys");
    }

    /// Wait for a prompt, then answer it.
    fn answer(&self, prompt: &str, text: &str) {
        self.wait_for(prompt);
        self.type_line(text);
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").status();
    }
}

fn tmux_present() -> bool {
    Command::new("tmux")
        .arg("-V")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[tokio::test]
async fn auth_pin_len_km2_interactive_key_import_hides_pins_and_components_and_shows_kcvs() {
    if !tmux_present() {
        eprintln!("SKIPPED: tmux is not installed (softhsm-setup/install.sh installs it)");
        return;
    }
    let site = Site::new().await;
    let s = Split::new(9);
    let kcv = Split::kcv(&s.key);
    let transcript = site.kms.token.dir.path().join("interactive.json");
    let cmd = format!(
        "cd {dir:?} && env SOFTHSM2_CONF={conf:?} {bin:?} --config {cfg:?} run key-import --param tenant=acme --param key=zmk --param kcv={kcv} --transcript {out:?}; echo CEREMONY-EXIT=$?; sleep 600",
        dir = site.kms.token.dir.path(),
        conf = site.kms.token.conf(),
        bin = env!("CARGO_BIN_EXE_kms-ceremony"),
        cfg = site.config,
        out = transcript,
    );
    let tmux = Tmux {
        socket: format!("kms-ceremony-{}", std::process::id()),
        session: "ceremony".into(),
    };
    let st = tmux
        .cmd()
        .args([
            "new-session",
            "-d",
            "-s",
            "ceremony",
            "-x",
            "220",
            "-y",
            "60",
            "sh",
            "-c",
            &cmd,
        ])
        .status()
        .expect("tmux new-session");
    assert!(st.success());

    let so1 = site.person("so1");
    let alice = site.person("alice");
    let bob = site.person("bob");
    tmux.answer("officer 1 of 1: your name: ", "so1");
    tmux.answer("PIN for so1 (hidden): ", &so1.pin);
    tmux.answer("custodians 1 of 2: your name: ", "alice");
    tmux.answer("PIN for alice (hidden): ", &alice.pin);
    tmux.answer("custodians 2 of 2: your name: ", "bob");
    tmux.answer("PIN for bob (hidden): ", &bob.pin);
    for p in ["alice", "bob"] {
        tmux.answer(&format!("{p}: approve exactly this operation?"), "y");
        tmux.answer(
            &format!("{p}: your approval signing key file (PEM): "),
            &site.file(&format!("{p}.key.pem")),
        );
        tmux.answer(
            &format!("{p}: your certificate file: "),
            &site.file(&format!("{p}.crt.pem")),
        );
    }
    for (p, c) in [("alice", &s.c1), ("bob", &s.c2)] {
        tmux.answer(
            &format!("{p}: type your component (hex, hidden): "),
            &hex::encode_upper(c),
        );
        tmux.answer(
            &format!("{p}: the check value on your component form"),
            &Split::kcv(c),
        );
        let screen = tmux.wait_for(&format!("{p}: is "));
        assert!(
            screen.contains(&format!("{p}'s component has check value")),
            "the component's check value is displayed:\n{screen}"
        );
        tmux.type_line("y");
    }
    let screen = tmux.wait_for("Do all present read");
    assert!(
        screen.contains(&format!("Sender's check value:     {kcv}")),
        "{screen}"
    );
    tmux.type_line("y");
    let screen = tmux.wait_for("CEREMONY-EXIT=");
    assert!(screen.contains("CEREMONY-EXIT=0"), "{screen}");
    assert!(screen.contains("completed"), "{screen}");

    // Nothing typed at a hidden prompt reached the screen.
    let upper = screen.to_uppercase();
    for (what, secret) in [
        ("so1's PIN", so1.pin.to_uppercase()),
        ("alice's PIN", alice.pin.to_uppercase()),
        ("bob's PIN", bob.pin.to_uppercase()),
        ("component 1", hex::encode_upper(s.c1)),
        ("component 2", hex::encode_upper(s.c2)),
        ("the key", hex::encode_upper(s.key)),
    ] {
        assert!(!upper.contains(&secret), "{what} was echoed:\n{screen}");
    }
    assert!(transcript.exists(), "the transcript was written");
}

/// A sealing script small enough for the standard people (so1, alice,
/// bob), in a directory of its own.
const SEAL_SCRIPT: &str = r#"
name = "seal-two"
title = "Seal with two custodians"
purpose = "Test: hand out two shares at the terminal."
requirements = ["KM-2"]
[parameters.m]
help = "M"
default = "2"
[roles.officer]
enrolled = "security-officer"
count = 1
[roles.custodians]
enrolled = "custodian"
count = 2
[[steps]]
kind = "authenticate"
role = "officer"
[[steps]]
kind = "authenticate"
role = "custodians"
[[steps]]
kind = "shares-out"
role = "custodians"
by = "officer"
seal = "initialize"
"#;

#[tokio::test]
async fn km2_tsm_ac_3_a_share_is_shown_once_to_its_custodian_then_cleared_from_the_screen() {
    if !tmux_present() {
        eprintln!("SKIPPED: tmux is not installed (softhsm-setup/install.sh installs it)");
        return;
    }
    let site = Site::new().await;
    let scripts = site.kms.token.dir.path().join("scripts");
    std::fs::create_dir_all(&scripts).expect("dir");
    std::fs::write(scripts.join("seal-two.toml"), SEAL_SCRIPT).expect("script");
    let cmd = format!(
        "cd {dir:?} && env SOFTHSM2_CONF={conf:?} {bin:?} --config {cfg:?} --scripts {scripts:?} run seal-two --transcript out.json; echo CEREMONY-EXIT=$?; sleep 600",
        dir = site.kms.token.dir.path(),
        conf = site.kms.token.conf(),
        bin = env!("CARGO_BIN_EXE_kms-ceremony"),
        cfg = site.config,
    );
    let tmux = Tmux {
        socket: format!("kms-ceremony-seal-{}", std::process::id()),
        session: "ceremony".into(),
    };
    let st = tmux
        .cmd()
        .args([
            "new-session",
            "-d",
            "-s",
            "ceremony",
            "-x",
            "220",
            "-y",
            "60",
            "sh",
            "-c",
            &cmd,
        ])
        .status()
        .expect("tmux new-session");
    assert!(st.success());
    tmux.answer("officer 1 of 1: your name: ", "so1");
    tmux.answer("PIN for so1 (hidden): ", &site.person("so1").pin);
    for (i, p) in ["alice", "bob"].iter().enumerate() {
        tmux.answer(&format!("custodians {} of 2: your name: ", i + 1), p);
        tmux.answer(&format!("PIN for {p} (hidden): "), &site.person(p).pin);
    }
    tmux.answer("so1: initialize the seal", "y");
    for p in ["alice", "bob"] {
        tmux.answer(&format!("Only {p} looks at the screen now."), "");
        let shown = tmux.wait_for("press Enter to clear the screen");
        let share = shown
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("KMS1-"))
            .unwrap_or_else(|| panic!("{p}'s share is shown:\n{shown}"))
            .to_owned();
        tmux.type_line("");
        let after = tmux.wait_for(&format!("{p}: did you write down share check value"));
        assert!(
            !after.contains(&share),
            "{p}'s share stays on the screen or in its scroll-back:\n{after}"
        );
        tmux.type_line("y");
    }
    let screen = tmux.wait_for("CEREMONY-EXIT=");
    assert!(screen.contains("CEREMONY-EXIT=0"), "{screen}");
    assert!(
        !screen.contains("KMS1-"),
        "no share left on the screen:\n{screen}"
    );
}
