//! What the binary's tests share: a temp HOME with its XDG directories, and checks of how it stops,
//! what it logs and what it prints.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use samay_testkit::bin::{isolated_command, write_config, Run};
use serde_json::Value;
use tempfile::TempDir;

/// How long to wait for a daemon to say it started.
pub(super) const START_TIMEOUT: Duration = Duration::from_secs(10);
/// A signal must stop the daemon within this.
pub(super) const STOP_LIMIT: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------------
// Helpers

/// A temp HOME with the XDG directories the binary is pointed at inside it.
pub(super) struct Home {
    pub(super) dir: TempDir,
}

impl Home {
    pub(super) fn new() -> Home {
        Home {
            dir: tempfile::Builder::new()
                .prefix("aw-sync-samay-cli-")
                .tempdir()
                .expect("tempdir"),
        }
    }

    pub(super) fn path(&self) -> &Path {
        self.dir.path()
    }

    pub(super) fn cmd(&self) -> Command {
        isolated_command(self.path())
    }

    pub(super) fn config_dir(&self) -> PathBuf {
        self.path().join("config")
    }

    pub(super) fn data_dir(&self) -> PathBuf {
        self.path().join("data")
    }

    pub(super) fn cache_dir(&self) -> PathBuf {
        self.path().join("cache")
    }

    pub(super) fn log_dir(&self) -> PathBuf {
        self.cache_dir()
            .join("activitywatch")
            .join("log")
            .join("aw-sync-samay")
    }

    pub(super) fn log_files(&self) -> Vec<PathBuf> {
        match std::fs::read_dir(self.log_dir()) {
            Ok(rd) => rd.filter_map(Result::ok).map(|e| e.path()).collect(),
            Err(_) => Vec::new(),
        }
    }

    pub(super) fn config(&self, base_url: &str, extra: &str) -> PathBuf {
        write_config(self.path(), base_url, extra)
    }
}

/// Stopped by a signal it handled: exit code 0 (not killed by the signal's default action).
pub(super) fn assert_clean_stop(status: ExitStatus, took: Duration, signal: &str, stderr: &str) {
    eprintln!("SIG{signal}: stopped in {took:?} ({status})");
    assert_eq!(
        status.code(),
        Some(0),
        "SIG{signal} should stop the daemon cleanly ({status}); stderr:\n{stderr}"
    );
    assert!(
        took < STOP_LIMIT,
        "SIG{signal} took {took:?} to stop the daemon (limit {STOP_LIMIT:?}); stderr:\n{stderr}"
    );
}

/// `aw-sync-samay_[testing_]YYYY-MM-DDTHH-MM-SS.log`, checked character by character.
pub(super) fn is_log_name(name: &str, testing: bool) -> bool {
    let prefix = if testing {
        "aw-sync-samay_testing_"
    } else {
        "aw-sync-samay_"
    };
    let Some(stamp) = name
        .strip_prefix(prefix)
        .and_then(|r| r.strip_suffix(".log"))
    else {
        return false;
    };
    let pattern = "dddd-dd-ddTdd-dd-dd";
    stamp.len() == pattern.len()
        && stamp.chars().zip(pattern.chars()).all(|(c, p)| match p {
            'd' => c.is_ascii_digit(),
            p => c == p,
        })
}

/// Every file under `dir`, recursively.
pub(super) fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in rd.filter_map(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

pub(super) fn parse_json(run: &Run) -> Value {
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| {
        panic!(
            "--status --json is not JSON ({e}):\n{}\nstderr:\n{}",
            run.stdout, run.stderr
        )
    })
}
