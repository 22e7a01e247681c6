//! softhsm-setup/setup-token.sh: random PINs (TSM-AC-1), 0600 PIN files,
//! idempotent, never prints a PIN.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn run(dir: &std::path::Path) -> (String, String) {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../softhsm-setup/setup-token.sh");
    let o = Command::new("bash")
        .arg(script)
        .args(["--dir", dir.to_str().unwrap(), "--label", "setup-test"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn tsm_ac1_setup_makes_random_pins_once_and_never_prints_them() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hsm");
    let (out1, err1) = run(&dir);
    let user = std::fs::read_to_string(dir.join("user.pin")).unwrap();
    let so = std::fs::read_to_string(dir.join("so.pin")).unwrap();
    assert!(
        user.len() >= 16 && so.len() >= 16 && user != so,
        "random, long PINs"
    );
    for f in ["user.pin", "so.pin"] {
        let mode = std::fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    let dir_mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        dir_mode & 0o077,
        0,
        "the token directory is private to its owner"
    );
    assert!(out1.contains("SOFTHSM2_CONF=") && out1.contains("KMS_USER_PIN_FILE="));
    for text in [&out1, &err1] {
        assert!(
            !text.contains(&user) && !text.contains(&so),
            "a PIN was printed"
        );
    }
    // Idempotent: same PINs, one token.
    let (out2, _) = run(&dir);
    assert_eq!(std::fs::read_to_string(dir.join("user.pin")).unwrap(), user);
    assert_eq!(out1, out2);
    let slots = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", dir.join("softhsm2.conf"))
        .arg("--show-slots")
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&slots.stdout);
    assert_eq!(listing.matches("setup-test").count(), 1, "{listing}");
    // A fresh directory gets different PINs.
    let other = tmp.path().join("hsm2");
    run(&other);
    assert_ne!(
        std::fs::read_to_string(other.join("user.pin")).unwrap(),
        user
    );
}
