//! A throwaway PostgreSQL server on loopback, for running the store against
//! a real server rather than a mock.
//!
//! `PgServer::start()` runs initdb in a new temporary directory and starts
//! the server on 127.0.0.1 with a free port; its unix socket goes in the same
//! directory, so nothing outside it is touched. Dropping the server stops it
//! (immediate mode: the data is thrown away anyway) and deletes the
//! directory.
//!
//! Under cargo-nextest every test is its own process, so each test pays one
//! initdb (about a second). `shared()` keeps one server per test process for
//! `cargo test`, where many tests share a process; a static is never
//! dropped, so every server also gets a watchdog that stops it once the test
//! process has gone, however that happened (panic, kill, timeout).
//!
//! initdb refuses to run as root. As root the server binaries run as the
//! `postgres` system user (which Debian's `postgresql` package creates) and
//! the directory is handed to that user; clients connect over TCP and run as
//! whoever we are.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The database superuser created by initdb; authentication is `trust`,
/// which is acceptable only because the server listens on loopback and
/// lives for one test process.
pub const SUPERUSER: &str = "postgres";

const PORT_ATTEMPTS: usize = 8;

/// Settings for a disposable server: small, and no durability (the data dies
/// with the test).
const SETTINGS: &str = "
listen_addresses = '127.0.0.1'
max_connections = 60
shared_buffers = 16MB
fsync = off
synchronous_commit = off
full_page_writes = off
log_min_messages = warning
";

pub struct PgServer {
    dir: Option<tempfile::TempDir>,
    bin: PathBuf,
    port: u16,
    run_as: Option<String>,
    url: String,
}

impl PgServer {
    /// Starts a new server with one fresh database (see [`PgServer::url`]).
    /// Panics with the reason (and the server log) if it cannot.
    pub fn start() -> PgServer {
        let bin = bin_dir();
        let run_as = server_user();
        let dir = make_dir(run_as.is_some());
        let data = dir.path().join("data");

        let mut server = PgServer {
            dir: Some(dir),
            bin,
            port: 0,
            run_as,
            url: String::new(),
        };
        spawn_watchdog(&server);

        let data_s = path_str(&data);
        let out = server.run_server_tool(
            "initdb",
            &[
                "-D",
                &data_s,
                "-U",
                SUPERUSER,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        );
        if !out.status.success() {
            panic!("initdb failed:\n{}", output_text(&out));
        }
        let socket_dir = path_str(server.dir_path());
        let conf = format!("{SETTINGS}unix_socket_directories = '{socket_dir}'\n");
        std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .and_then(|mut f| f.write_all(conf.as_bytes()))
            .unwrap_or_else(|e| panic!("cannot write postgresql.conf: {e}"));

        // Another process may take the port between our probe and the
        // server's bind, so a failed start is retried on a new port.
        let log = path_str(&server.dir_path().join("server.log"));
        let mut last_failure = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            let port_opt = format!("-p {port}");
            let out = server.run_server_tool(
                "pg_ctl",
                &[
                    "-D", &data_s, "-l", &log, "-o", &port_opt, "-w", "-t", "60", "start",
                ],
            );
            if out.status.success() {
                server.port = port;
                break;
            }
            last_failure = format!(
                "{}\n--- server log ---\n{}",
                output_text(&out),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        if server.port == 0 {
            panic!("PostgreSQL did not start after {PORT_ATTEMPTS} attempts:\n{last_failure}");
        }
        server.url = server.create_database();
        server
    }

    /// One server for the whole test process, started on first use.
    pub fn shared() -> &'static PgServer {
        static SHARED: OnceLock<PgServer> = OnceLock::new();
        SHARED.get_or_init(PgServer::start)
    }

    /// The URL of the database created at start.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of the server without a database name, e.g. for admin work.
    pub fn base_url(&self) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}", self.port)
    }

    /// Creates a new, empty database `t_<random>` and returns its URL.
    pub fn create_database(&self) -> String {
        let name = format!("t_{}", random_hex());
        let port = self.port.to_string();
        let out = Command::new(self.bin.join("createdb"))
            .args(["-h", "127.0.0.1", "-p", &port, "-U", SUPERUSER, &name])
            .env_remove("PGPASSWORD")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run createdb: {e}"));
        if !out.status.success() {
            panic!("createdb {name} failed:\n{}", output_text(&out));
        }
        format!("{}/{name}", self.base_url())
    }

    fn dir_path(&self) -> &Path {
        match &self.dir {
            Some(d) => d.path(),
            None => Path::new("/nonexistent"),
        }
    }

    /// Runs initdb/pg_ctl, as the postgres user when we are root.
    fn run_server_tool(&self, tool: &str, args: &[&str]) -> Output {
        let program = self.bin.join(tool);
        let mut cmd = as_user(self.run_as.as_deref(), &program, args);
        cmd.stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()))
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.port != 0 {
            let data = path_str(&self.dir_path().join("data"));
            // Best effort: the watchdog retries if this fails.
            let _ = self.run_server_tool("pg_ctl", &["-D", &data, "-m", "immediate", "stop"]);
        }
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}

/// A fresh database on this process's shared server.
pub fn fresh_database_url() -> String {
    PgServer::shared().create_database()
}

/// The newest /usr/lib/postgresql/<version>/bin that has initdb, or
/// `$KMS_PG_BIN`.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KMS_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.split('.').next()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL server binaries not found in /usr/lib/postgresql/*/bin \
             (install the `postgresql` package, or set KMS_PG_BIN)"
        ),
    }
}

/// `Some("postgres")` when we are root and must drop privileges for the
/// server binaries.
fn server_user() -> Option<String> {
    if !is_root() {
        return None;
    }
    let known = Command::new("id")
        .args(["-u", SUPERUSER])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !known {
        panic!(
            "running as root, where initdb refuses to run, and there is no `postgres` \
             system user to run it as: install the `postgresql` package (which creates it) \
             or run the tests as an unprivileged user"
        );
    }
    Some(SUPERUSER.to_owned())
}

fn is_root() -> bool {
    // The effective uid is the second field of the Uid: line.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// The server directory. Under /tmp so that the postgres user can reach it
/// when we are root, and short so that the socket path fits in sun_path.
fn make_dir(for_postgres_user: bool) -> tempfile::TempDir {
    let base = if Path::new("/tmp").is_dir() {
        PathBuf::from("/tmp")
    } else {
        std::env::temp_dir()
    };
    let dir = tempfile::Builder::new()
        .prefix("kms-pg-")
        .tempdir_in(&base)
        .unwrap_or_else(|e| panic!("cannot create a directory in {}: {e}", base.display()));
    if for_postgres_user {
        let out = Command::new("chown")
            .arg(format!("{SUPERUSER}:"))
            .arg(dir.path())
            .output()
            .unwrap_or_else(|e| panic!("cannot run chown: {e}"));
        if !out.status.success() {
            panic!("chown {SUPERUSER} failed:\n{}", output_text(&out));
        }
    }
    dir
}

/// `program args...`, run as `user` if given (runuser, else su).
fn as_user(user: Option<&str>, program: &Path, args: &[&str]) -> Command {
    match user {
        None => {
            let mut c = Command::new(program);
            c.args(args);
            c
        }
        Some(user) if Path::new("/usr/sbin/runuser").exists() || which("runuser") => {
            let mut c = Command::new("runuser");
            c.args(["-u", user, "--"]).arg(program).args(args);
            c
        }
        Some(user) => {
            let line = std::iter::once(path_str(program))
                .chain(args.iter().map(|a| (*a).to_owned()))
                .map(|a| shell_quote(&a))
                .collect::<Vec<_>>()
                .join(" ");
            let mut c = Command::new("su");
            c.args([user, "-s", "/bin/sh", "-c", &line]);
            c
        }
    }
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Stops the server and removes its directory once this process is gone.
/// Runs in its own session so that killing the test's process group does not
/// take the watchdog with it; it holds none of our stdio, so a test runner
/// waiting for output to close is not held up.
fn spawn_watchdog(server: &PgServer) {
    const SCRIPT: &str = r#"
while [ -d "/proc/$1" ]; do sleep 1; done
if [ -f "$2/data/postmaster.pid" ]; then
  if [ -n "$4" ]; then
    if command -v runuser >/dev/null 2>&1; then
      runuser -u "$4" -- "$3" -D "$2/data" -m immediate stop
    else
      su "$4" -s /bin/sh -c "'$3' -D '$2/data' -m immediate stop"
    fi
  else
    "$3" -D "$2/data" -m immediate stop
  fi
fi
rm -rf "$2"
"#;
    let pg_ctl = path_str(&server.bin.join("pg_ctl"));
    let dir = path_str(server.dir_path());
    let pid = std::process::id().to_string();
    let user = server.run_as.clone().unwrap_or_default();
    let sh_args = ["-c", SCRIPT, "pg-watchdog", &pid, &dir, &pg_ctl, &user];
    let mut cmd = if which("setsid") {
        let mut c = Command::new("setsid");
        c.arg("sh").args(sh_args);
        c
    } else {
        let mut c = Command::new("sh");
        c.args(sh_args);
        c
    };
    // Without a watchdog a crashed test leaks a server; that is worth a
    // warning, not a failure.
    if let Err(e) = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        eprintln!("warning: no PostgreSQL watchdog: {e}");
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("cannot find a free port: {e}"))
}

/// 16 hex digits, unique within the process and unpredictable across
/// processes (RandomState is seeded from the OS).
pub fn random_hex() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = RandomState::new().hash_one((
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now(),
    ));
    format!("{n:016x}")
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn output_text(out: &Output) -> String {
    format!(
        "status: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
