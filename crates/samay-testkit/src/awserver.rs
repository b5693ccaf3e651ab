//! A real Python aw-server for integration tests.
//!
//! The facts the sync engine depends on (clipping, one id counter, heartbeat merging, error
//! shapes) are the server's behaviour, so tests run against the real thing: each `AwServer` is
//! its own process with its own port and its own HOME/XDG directories, so tests never share a
//! database and can run in parallel.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aw_sync_samay::source::AwClient;
use tempfile::TempDir;

/// Python aw-server starts in ~1.3 s here; a loaded CI machine gets generous headroom.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

pub struct AwServer {
    child: Option<Child>,
    port: u16,
    /// HOME, XDG dirs and the server log live here; deleted on drop.
    dir: TempDir,
    /// How many times the process was started, so each start gets its own log file.
    starts: u32,
}

impl AwServer {
    /// Starts a fresh server with an empty database on a free loopback port.
    ///
    /// Python aw-server takes a port number, so the port is picked before it binds: another
    /// test may take the same one meanwhile. Readiness therefore means that *this* process
    /// listens there ([`listens`]), not just that something answers (another test's server
    /// did, and two tests then shared one aw-server); a lost port is tried again with another.
    pub fn start() -> AwServer {
        let dir = tempfile::Builder::new()
            .prefix("aw-server-test-")
            .tempdir()
            .expect("create temp dir for aw-server");
        let mut server = AwServer {
            child: None,
            port: free_port(),
            dir,
            starts: 0,
        };
        for _ in 0..PORT_ATTEMPTS {
            match server.try_spawn() {
                Ok(()) => return server,
                Err(lost) => {
                    eprintln!("{lost}; trying another port");
                    server.port = free_port();
                }
            }
        }
        panic!("aw-server lost its port {PORT_ATTEMPTS} times in a row");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server process's id while it runs (to measure what serving costs it).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A client for this server, as the sidecar would build it.
    pub fn client(&self) -> AwClient {
        AwClient::new("127.0.0.1", self.port).expect("build AwClient")
    }

    /// Where the server keeps its database (`$XDG_DATA_HOME`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Kills the server and starts it again on the same port and data dir: the database
    /// survives, as after an aw-server crash or upgrade.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Stops the server, deletes its data dir and starts it again on the same port: a fresh
    /// database whose ids restart at 1 (and a new device id), as after a user reset.
    pub fn replace_database(&mut self) {
        self.stop();
        let data = self.data_dir();
        if data.exists() {
            std::fs::remove_dir_all(&data).expect("delete aw-server data dir");
        }
        self.spawn();
    }

    /// Kills the server (if running) and waits for it, so its port is free again.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGKILL: SIGTERM takes Python ~2 s, and a crash is what we simulate anyway.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the process again on its port; panics if another process took the port.
    fn spawn(&mut self) {
        if let Err(lost) = self.try_spawn() {
            panic!("{lost}");
        }
    }

    /// Starts the process on `self.port`; `Err` when another process listens there.
    fn try_spawn(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "aw-server already running");
        let exe = aw_server_exe();
        let root = self.dir.path();
        for sub in ["home", "data", "config", "cache"] {
            std::fs::create_dir_all(root.join(sub)).expect("create aw-server dirs");
        }
        self.starts += 1;
        let log_path = self.log_path();
        let log = File::create(&log_path).expect("create aw-server log");
        let log_err = log.try_clone().expect("clone log handle");
        let child = Command::new(&exe)
            .args(["--testing", "--host", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .env("HOME", root.join("home"))
            .env("XDG_DATA_HOME", root.join("data"))
            .env("XDG_CONFIG_HOME", root.join("config"))
            .env("XDG_CACHE_HOME", root.join("cache"))
            .env_remove("XDG_RUNTIME_DIR")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", exe.display()));
        self.child = Some(child);
        self.wait_until_up()
    }

    fn log_path(&self) -> PathBuf {
        self.dir
            .path()
            .join(format!("aw-server-{}.log", self.starts))
    }

    /// Until this process listens on the port and answers; `Err` when it exited while another
    /// process holds the port (it lost the race for it).
    fn wait_until_up(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let mut pid = None;
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    let log = read_tail(&self.log_path());
                    if log.contains("Address already in use") {
                        return Err(format!(
                            "aw-server could not bind port {}: another process took it",
                            self.port
                        ));
                    }
                    panic!(
                        "aw-server exited during startup ({status}) on port {}; log:\n{log}",
                        self.port
                    );
                }
                pid = Some(child.id());
            }
            if pid.is_some_and(|pid| listens(pid, self.port)) && info_answers(self.port) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.stop();
                panic!(
                    "aw-server did not listen and answer /api/0/info on port {} within {:?}; log:\n{}",
                    self.port,
                    STARTUP_TIMEOUT,
                    read_tail(&self.log_path())
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// How many ports [`AwServer::start`] tries before it gives up.
const PORT_ATTEMPTS: usize = 5;

/// Whether process `pid` has a listening TCP socket on 127.0.0.1:`port`: the socket's inode in
/// `/proc/net/tcp` is one of the process's open files.
fn listens(pid: u32, port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let local = format!("0100007F:{port:04X}");
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address is the 2nd field, st the 4th (0A = LISTEN), inode the 10th.
            (fields.get(1) == Some(&local.as_str()) && fields.get(3) == Some(&"0A"))
                .then(|| fields.get(9).map(|inode| format!("socket:[{inode}]")))
                .flatten()
        })
        .collect();
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(Result::ok)
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .any(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
}

impl Drop for AwServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port that was free a moment ago. Another process may take it before the server binds it:
/// [`AwServer::start`] checks that its own process got it.
pub fn free_port() -> u16 {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0 for a free port");
    listener.local_addr().expect("local addr").port()
}

/// `.peers/aw-venv/bin/aw-server` under the repo root, installed by scripts/install-peers.sh.
pub fn aw_server_exe() -> PathBuf {
    let exe = crate::repo_root().join(".peers/aw-venv/bin/aw-server");
    if !exe.is_file() {
        panic!(
            "{} is missing: run scripts/install-peers.sh to install the test peers",
            exe.display()
        );
    }
    exe
}

/// A blocking, dependency-free probe so `start()` works from sync and async tests alike.
fn info_answers(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let request = "GET /api/0/info HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response);
    text.starts_with("HTTP/1.")
        && text.split(' ').nth(1) == Some("200")
        && text.contains("\"version\"")
}

fn read_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("(no log: {e})"));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `listens` tells this process's listening socket from none and from another process's.
    #[test]
    fn listens_names_the_process_that_holds_the_port() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(listens(std::process::id(), port));
        // pid 1 (init) does not hold our port; a closed port is held by no one.
        assert!(!listens(1, port));
        drop(listener);
        assert!(!listens(std::process::id(), port));
    }
}
