//! A real PostgreSQL for tests: one cluster per test binary, started on first use with
//! Debian's server binaries (`/usr/lib/postgresql/N/bin`), `initdb` into a temp directory,
//! a free loopback port, and a database per test ([`database_url`]).
//!
//! PostgreSQL refuses to run as root, so as root the cluster runs as the `postgres` user
//! (`runuser`). Statics are never dropped, so a watchdog process in its own session stops
//! the cluster (`pg_ctl stop -m immediate`) and removes its directory once the test process
//! is gone, however it ended (also `kill -9`).
//!
//! Used by the tests crate (`gatehouse_tests::pg`) and, through `#[path]`, by the store's
//! unit tests in the host crate; it needs only the standard library and `tempfile`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// The running cluster of this test binary.
pub struct Cluster {
    pub port: u16,
    pub dir: PathBuf,
    bin: PathBuf,
    as_postgres: bool,
}

/// The directory of the newest installed PostgreSQL's binaries.
fn bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).expect(
        "PostgreSQL server binaries in /usr/lib/postgresql/N/bin (apt-get install postgresql)",
    )
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl Cluster {
    /// A command running `program` from the server binaries, as `postgres` when we are root.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }

    fn start() -> Cluster {
        Cluster::start_with("-c fsync=off -c full_page_writes=off", None)
    }

    /// A new cluster (not this binary's shared one) started with the server `options`;
    /// with `standby_of`, a streaming standby of that cluster (`pg_basebackup -R`) instead
    /// of a fresh `initdb`.
    fn start_with(options: &str, standby_of: Option<&Cluster>) -> Cluster {
        let bin = bin_dir();
        let as_postgres = is_root();
        let dir = tempfile::Builder::new()
            .prefix("gatehouse-pg-")
            .tempdir()
            .expect("temp dir for the cluster")
            .keep();
        let mut cluster = Cluster {
            port: 0,
            dir,
            bin,
            as_postgres,
        };
        if as_postgres {
            run(Command::new("chown").arg("postgres:").arg(&cluster.dir));
        }
        let data = cluster.dir.join("data");
        match standby_of {
            None => run(cluster
                .command("initdb")
                .arg("-D")
                .arg(&data)
                .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C"])
                .arg("--no-sync")
                .arg("--no-instructions")),
            Some(primary) => run(cluster
                .command("pg_basebackup")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                    "-X",
                    "stream",
                    "-R",
                    "-c",
                    "fast",
                ])
                .args(["-p", &primary.port.to_string()])
                .arg("-D")
                .arg(&data)),
        }
        cluster.watchdog();
        // A free port can be taken between the probe and the start: try a few.
        for attempt in 0.. {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let options = format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 {options} \
                 -c max_connections=400 -c shared_buffers=32MB",
                cluster.dir.display()
            );
            let status = cluster
                .command("pg_ctl")
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(cluster.dir.join("log"))
                .args(["-w", "-t", "60", "-o", &options, "start"])
                .stdout(Stdio::null())
                .status()
                .expect("pg_ctl runs");
            if status.success() {
                cluster.port = port;
                break;
            }
            assert!(
                attempt < 3,
                "PostgreSQL did not start; its log:\n{}",
                std::fs::read_to_string(cluster.dir.join("log")).unwrap_or_default()
            );
        }
        cluster
    }

    /// Stops the cluster and removes its directory when this process is gone.
    fn watchdog(&self) {
        let pg_ctl = self.bin.join("pg_ctl");
        let stop = if self.as_postgres {
            format!("runuser -u postgres -- {}", pg_ctl.display())
        } else {
            pg_ctl.display().to_string()
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.2; done; \
             {stop} -D {dir}/data -m immediate stop >/dev/null 2>&1; rm -rf {dir}",
            pid = std::process::id(),
            dir = self.dir.display(),
        );
        // `setsid -f`: the watchdog forks into a session of its own (a Ctrl-C to the test's
        // process group does not reach it) and `setsid` itself returns at once.
        let status = Command::new("setsid")
            .args(["-f", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("the cluster's watchdog starts");
        assert!(status.success(), "the cluster's watchdog did not start");
    }

    /// Runs SQL against the `postgres` database.
    pub fn psql(&self, sql: &str) {
        self.psql_in("postgres", sql);
    }

    /// Runs SQL against database `db`.
    pub fn psql_in(&self, db: &str, sql: &str) {
        run(Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
            ])
            .args(["-p", &self.port.to_string(), "-d", db, "-c", sql]));
    }

    /// The URL of database `name`.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Stops the server at once, as a crash would (`pg_ctl stop -m immediate`: no
    /// shutdown checkpoint, every backend gone).
    pub fn crash(&self) {
        run(self.command("pg_ctl").arg("-D").arg(self.data_dir()).args([
            "-m",
            "immediate",
            "-w",
            "stop",
        ]));
    }

    /// Promotes this standby to a primary, waiting until it accepts writes.
    pub fn promote(&self) {
        run(self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-w", "-t", "60", "promote"]));
    }
}

/// A primary and its synchronous streaming standby, both new (stopped when this process
/// ends, like the shared cluster), with database `name` made on the primary before the
/// standby was copied from it. A commit is acknowledged only once the standby has flushed
/// it (`synchronous_standby_names = '*'`, `synchronous_commit = on`), and both run with
/// `fsync` on.
pub fn primary_with_standby(name: &str) -> (Cluster, Cluster) {
    let primary = Cluster::start_with(
        "-c wal_level=replica -c max_wal_senders=4 -c synchronous_commit=on",
        None,
    );
    primary.psql(&format!("CREATE DATABASE {name}"));
    let standby = Cluster::start_with("-c hot_standby=on", Some(&primary));
    // Synchronous only once the standby exists: a commit would wait for it before.
    primary.psql("ALTER SYSTEM SET synchronous_standby_names = '*'");
    primary.psql("SELECT pg_reload_conf()");
    // The standby streams synchronously before anything is measured.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !primary
        .query("SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'")
        .starts_with('1')
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the standby never became synchronous; its log:\n{}",
            std::fs::read_to_string(standby.dir.join("log")).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    (primary, standby)
}

impl Cluster {
    /// The first column of the first row `sql` answers on the `postgres` database.
    pub fn query(&self, sql: &str) -> String {
        let output = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-t", "-A", "-h", "127.0.0.1", "-U", "postgres"])
            .args(["-p", &self.port.to_string(), "-d", "postgres", "-c", sql])
            .output()
            .expect("psql runs");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }
}

fn run(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// This test binary's cluster, started on first use.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(Cluster::start)
}

/// A fresh, empty database on this binary's cluster; its URL.
pub fn database_url() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let cluster = cluster();
    let name = format!(
        "t{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    );
    cluster.psql(&format!("CREATE DATABASE {name}"));
    cluster.url(&name)
}

/// Whether tests that can run on either backend should use PostgreSQL
/// (`GATEHOUSE_TEST_BACKEND=pg`).
pub fn selected() -> bool {
    matches!(
        std::env::var("GATEHOUSE_TEST_BACKEND").as_deref(),
        Ok("pg" | "postgres" | "postgresql")
    )
}

/// `path` exists (for callers that check for the binaries without panicking).
pub fn installed() -> bool {
    Path::new("/usr/lib/postgresql").exists()
}
