//! Running the real `aw-sync-samay` binary in isolated directories, as a user (or aw-qt) would.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a one-shot command may take before a test gives up on it.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// Writes a config for the binary into `home` and returns its path.
pub fn write_config(home: &Path, base_url: &str, extra: &str) -> PathBuf {
    let path = home.join("aw-sync-samay-test.toml");
    let text = format!("[sync]\nbase_url = \"{base_url}\"\n{extra}\n");
    std::fs::write(&path, text).expect("write config");
    path
}

/// `aw-sync-samay` with HOME and every XDG directory inside `home`, no token and no log-level
/// override in the environment, and no arguments yet.
pub fn isolated_command(home: &Path) -> Command {
    let mut cmd = Command::new(crate::built_binary("aw-sync-samay"));
    cmd.env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_DATA_HOME", home.join("data"))
        .env("XDG_CACHE_HOME", home.join("cache"))
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("AW_SYNC_SAMAY_TOKEN")
        .env_remove("RUST_LOG")
        .env_remove("LOG_LEVEL");
    cmd
}

/// `aw-sync-samay` with HOME and every XDG directory inside `home`, talking to aw-server on
/// `aw_port`, with the test token in the environment.
pub fn sync_command(home: &Path, aw_port: u16, config: &Path, token: &str) -> Command {
    let mut cmd = isolated_command(home);
    cmd.arg("--port")
        .arg(aw_port.to_string())
        .arg("--config")
        .arg(config)
        .env("AW_SYNC_SAMAY_TOKEN", token);
    cmd
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The stderr lines that say something.
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }

    /// stdout and stderr, for failure messages.
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// A file in `dir` for a child's output, read back by path (never through the shared handle,
/// whose offset the child writes at).
pub fn output_file(dir: &Path, name: &str) -> (PathBuf, File) {
    let file = tempfile::Builder::new()
        .prefix(name)
        .suffix(".out")
        .tempfile_in(dir)
        .expect("output file");
    let (file, path) = file.keep().expect("keep output file");
    (path, file)
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Runs `cmd` to completion (bounded, [`RUN_TIMEOUT`]) with stdout and stderr to files (not
/// terminals), without blocking the tokio workers that serve a dev upstream meanwhile.
pub async fn run(cmd: &mut Command, dir: &Path) -> Run {
    std::fs::create_dir_all(dir).expect("output dir");
    let (out_path, out) = output_file(dir, "stdout");
    let (err_path, err) = output_file(dir, "stderr");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("spawn aw-sync-samay");
    let status = wait_exit(&mut child, RUN_TIMEOUT).await.unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "aw-sync-samay did not finish within {RUN_TIMEOUT:?}; stderr:\n{}",
            read(&err_path)
        )
    });
    Run {
        status,
        stdout: read(&out_path),
        stderr: read(&err_path),
    }
}

/// The summary line's count before `what` (e.g. " delivered").
pub fn summary_count(r: &Run, what: &str) -> u64 {
    let line = r
        .stdout
        .lines()
        .find(|l| l.starts_with("synced: "))
        .unwrap_or_else(|| panic!("no summary line: {}", r.all()));
    let at = line
        .find(what)
        .unwrap_or_else(|| panic!("{what:?} in {line}"));
    line[..at]
        .rsplit(' ')
        .next()
        .and_then(|n| n.trim_start_matches('(').parse().ok())
        .unwrap_or_else(|| panic!("a number before {what:?} in {line}"))
}

/// Polls `child` until it exits or `timeout` passes.
pub async fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
