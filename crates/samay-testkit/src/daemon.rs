//! The real `aw-sync-samay` daemon running in the background, as aw-qt (or a user) runs it:
//! stderr to a file read back by path, bounded waits, signals, and a kill on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long [`Daemon::wait_for`] waits for a line, and [`Daemon::stop_with`] for the exit.
const WAIT: Duration = Duration::from_secs(20);
const STOP_PATIENCE: Duration = Duration::from_secs(10);

pub struct Daemon {
    pub child: Child,
    stderr: PathBuf,
}

impl Daemon {
    pub fn spawn(cmd: &mut Command, dir: &Path) -> Daemon {
        std::fs::create_dir_all(dir).expect("output dir");
        // Read back by path, never through the shared handle whose offset the child writes at.
        let (file, stderr) = tempfile::Builder::new()
            .prefix("daemon-stderr")
            .suffix(".out")
            .tempfile_in(dir)
            .expect("stderr file")
            .keep()
            .expect("keep stderr file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn aw-sync-samay daemon");
        Daemon { child, stderr }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits (bounded) until stderr contains `needle`; panics if the daemon exits first (aw-qt
    /// would count that as a crash).
    pub async fn wait_for(&mut self, needle: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            if self.stderr().contains(needle) {
                return;
            }
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "daemon exited ({status}) before saying {needle:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not say {needle:?} within {WAIT:?}; stderr:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Asserts the daemon stays alive for `period` (aw-qt checks every 5 s).
    pub async fn assert_alive_for(&mut self, period: Duration) {
        let deadline = Instant::now() + period;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "daemon exited ({status}); aw-qt would count a crash; stderr:\n{}",
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends `signal` (`TERM`, `INT`) and returns the exit status and how long the stop took.
    pub async fn stop_with(&mut self, signal: &str) -> (ExitStatus, Duration) {
        let started = Instant::now();
        send_signal(self.pid(), signal);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return (status, started.elapsed());
            }
            assert!(
                started.elapsed() < STOP_PATIENCE,
                "daemon still running {STOP_PATIENCE:?} after SIG{signal}; stderr:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `kill -SIGNAL pid`.
pub fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}
