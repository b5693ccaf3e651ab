//! A throwaway PostgreSQL cluster from Debian's `postgresql` package: `initdb` in a temp dir,
//! `pg_ctl` on a free loopback port, no system service. As root (CI) the server runs as the
//! package's `postgres` user (initdb refuses root). Missing binaries fail the test: a test that
//! needs PostgreSQL never passes without it (`scripts/install-peers.sh` installs it).
//!
//! [`shared`] is one cluster per test binary (a database per test: [`PgCluster::database`]);
//! [`PgCluster::start`] an own one, for tests that stop and start it. A watchdog shell stops the
//! cluster and removes its directory when the test process is gone, even after a panic or kill.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

pub struct PgCluster {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    /// `Some(user)` when the server runs as another user (we are root).
    run_as: Option<String>,
    next_db: AtomicU32,
    /// fsync on (benchmarks); tests run with `fsync=off`.
    durable: bool,
}

/// The cluster shared by the tests of this test binary.
pub fn shared() -> &'static PgCluster {
    static CLUSTER: OnceLock<PgCluster> = OnceLock::new();
    CLUSTER.get_or_init(PgCluster::start)
}

/// Where `initdb` and `pg_ctl` are: the newest `/usr/lib/postgresql/<version>/bin`, else
/// `pg_config --bindir`.
fn bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    let from_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    match from_config {
        Some(bin) if bin.join("initdb").is_file() => bin,
        _ => panic!(
            "PostgreSQL server binaries (initdb, pg_ctl) not found: run scripts/install-peers.sh \
             (Debian package `postgresql`). These tests do not skip."
        ),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

impl PgCluster {
    /// initdb + start, `fsync=off` (a test's data need not survive a power cut). Panics with
    /// the server's log if it does not come up.
    pub fn start() -> PgCluster {
        Self::start_with(false)
    }

    /// [`PgCluster::start`] with fsync on, as a production database runs: for benchmarks.
    pub fn start_durable() -> PgCluster {
        Self::start_with(true)
    }

    fn start_with(durable: bool) -> PgCluster {
        let bin = bin_dir();
        let root = unsafe { libc::geteuid() } == 0;
        let run_as = root.then(|| "postgres".to_string());
        let dir = tempfile::Builder::new()
            .prefix("samay-pg-")
            .tempdir()
            .expect("temp dir")
            .keep();
        if root {
            // The postgres user must own (and so reach) the directory.
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
            let status = Command::new("chown")
                .arg("postgres:postgres")
                .arg(&dir)
                .status()
                .expect("chown");
            assert!(status.success(), "chown postgres {}", dir.display());
        }
        let cluster = PgCluster {
            bin,
            dir,
            port: free_port(),
            run_as,
            next_db: AtomicU32::new(0),
            durable,
        };
        cluster.watchdog();
        let data = cluster.data_dir();
        cluster.run(
            "initdb",
            &[
                "-D",
                &data,
                "-A",
                "trust",
                "-U",
                "test",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        cluster.start_server();
        cluster
    }

    fn data_dir(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    /// Runs a server binary (as the postgres user when we are root), panicking on failure.
    fn run(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.arg("-u").arg(user).arg("--").arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let out = cmd
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", exe.display()));
        if !out.status.success() {
            let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
            panic!(
                "{tool} {args:?} failed: {}\n{}{}\nserver log:\n{log}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// (Re)starts the server on its port; waits until it accepts connections.
    pub fn start_server(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync={} -c max_connections=200",
            self.port,
            self.dir.display(),
            if self.durable { "on" } else { "off" }
        );
        let log = self.dir.join("server.log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data_dir(),
                "-o",
                &opts,
                "-l",
                &log,
                "-w",
                "start",
            ],
        );
    }

    /// Stops the server at once (`-m immediate`: connections cut, as in a crash).
    pub fn stop_server(&self) {
        self.run(
            "pg_ctl",
            &["-D", &self.data_dir(), "-m", "immediate", "-w", "stop"],
        );
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A new, empty database; its URL.
    pub fn database(&self) -> String {
        let name = format!("t{}", self.next_db.fetch_add(1, Ordering::Relaxed));
        let out = Command::new(self.bin.join("createdb"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "test",
                &name,
            ])
            .output()
            .expect("createdb");
        assert!(
            out.status.success(),
            "createdb {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        format!("postgres://test@127.0.0.1:{}/{name}", self.port)
    }

    /// Stops the cluster and removes its directory once this process is gone (however it
    /// ends: a static's destructor never runs).
    fn watchdog(&self) {
        let stop = match &self.run_as {
            Some(user) => format!("runuser -u {user} -- "),
            None => String::new(),
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             {stop}'{pg_ctl}' -D '{data}' -m immediate -w stop >/dev/null 2>&1; rm -rf '{dir}'",
            pid = std::process::id(),
            pg_ctl = self.bin.join("pg_ctl").display(),
            data = self.data_dir(),
            dir = self.dir.display(),
        );
        // In the background of a shell that exits at once: the watchdog is nobody's child to
        // wait for, and outlives this process.
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!("( {script} ) </dev/null >/dev/null 2>&1 &"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("the cluster's watchdog");
        assert!(
            status.success(),
            "starting the cluster's watchdog: {status}"
        );
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// An own cluster goes with its owner (the shared one is left to the watchdog).
impl Drop for PgCluster {
    fn drop(&mut self) {
        let stop = self.bin.join("pg_ctl");
        let data = self.data_dir();
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.arg("-u").arg(user).arg("--").arg(&stop);
                c
            }
            None => Command::new(&stop),
        };
        let _ = cmd
            .args(["-D", &data, "-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
