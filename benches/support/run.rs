//! Running the real `aw-sync-samay` binary as a user would, and measuring it from outside: wall
//! time, CPU and peak RSS from the kernel (`wait4`'s rusage), never from the process itself.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::procfs;

/// 16 characters at least: samay-server refuses shorter static tokens.
pub const TOKEN: &str = "bench-token-0123456789";

/// What the kernel says one finished process used.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub wall: Duration,
    pub user: Duration,
    pub sys: Duration,
    /// Peak resident set size, bytes (see [`watch_peak_rss`]).
    pub max_rss: u64,
    /// The largest file-backed part of the resident set seen while it ran (`RssFile`: the
    /// binary's code and read-only data and the shared libraries' pages mapped in), bytes.
    pub max_rss_file: u64,
}

/// A home directory with its own config, state and logs, so each run has its own device id.
#[derive(Clone)]
pub struct Home {
    pub dir: PathBuf,
    pub config: PathBuf,
}

impl Home {
    pub fn new(root: &Path, name: &str, base_url: &str, extra_toml: &str) -> anyhow::Result<Home> {
        let dir = root.join(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        for sub in ["config", "data", "cache"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let config = dir.join("aw-sync-samay.toml");
        std::fs::write(
            &config,
            format!("[sync]\nbase_url = \"{base_url}\"\n{extra_toml}\n"),
        )?;
        Ok(Home { dir, config })
    }

    pub fn command(&self, aw_port: u16) -> Command {
        // BENCH_BIN: another build to measure (a before/after comparison on the same run).
        let exe = std::env::var_os("BENCH_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_aw-sync-samay")));
        let mut cmd = Command::new(exe);
        cmd.arg("--port")
            .arg(aw_port.to_string())
            .arg("--config")
            .arg(&self.config)
            .env("HOME", &self.dir)
            .env("XDG_CONFIG_HOME", self.dir.join("config"))
            .env("XDG_DATA_HOME", self.dir.join("data"))
            .env("XDG_CACHE_HOME", self.dir.join("cache"))
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("RUST_LOG")
            .env_remove("LOG_LEVEL")
            .env("AW_SYNC_SAMAY_TOKEN", TOKEN);
        cmd
    }
}

/// Waits for `child` and returns its rusage (Linux `wait4`).
pub fn wait_with_usage(child: &mut Child, started: Instant) -> anyhow::Result<(i32, Usage)> {
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value for the kernel to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our own un-waited child; both out-pointers are valid for the call.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = started.elapsed();
    if r != pid {
        bail!("wait4({pid}) failed: {}", std::io::Error::last_os_error());
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    Ok((
        code,
        Usage {
            wall,
            user: tv(usage.ru_utime),
            sys: tv(usage.ru_stime),
            max_rss: 0, // see watch_peak_rss
            max_rss_file: 0,
        },
    ))
}

/// Samples the child's `VmHWM` (its peak RSS so far) and `RssFile` every 5 ms until it exits;
/// returns both peaks, bytes.
///
/// Not `ru_maxrss`: Linux carries the RSS high-water mark of the process image *before* `exec`
/// into it, and a child spawned from this benchmark starts as a copy of it (the benchmark holds
/// a million-event source and the received batches), which made `ru_maxrss` report hundreds of
/// MB the sync never used. `VmHWM` belongs to the address space `exec` created.
fn watch_peak_rss(pid: u32) -> std::thread::JoinHandle<(u64, u64)> {
    std::thread::spawn(move || {
        let (mut peak, mut file) = (0, 0);
        while let Ok([hwm, rss_file]) = procfs::status_kbs(pid, ["VmHWM", "RssFile"]) {
            peak = peak.max(hwm);
            file = file.max(rss_file);
            std::thread::sleep(Duration::from_millis(5));
        }
        (peak * 1024, file * 1024)
    })
}

/// One `aw-sync-samay --once`, measured. Fails with its output when it does not exit 0.
pub fn once(home: &Home, aw_port: u16) -> anyhow::Result<Usage> {
    once_with(home, aw_port, &[])
}

/// [`once`] with more flags.
pub fn once_with(home: &Home, aw_port: u16, extra: &[&str]) -> anyhow::Result<Usage> {
    let mut cmd = home.command(aw_port);
    cmd.arg("--once")
        .args(extra)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(home.dir.join("stdout.txt"))?)
        .stderr(std::fs::File::create(home.dir.join("stderr.txt"))?);
    let started = Instant::now();
    let mut child = cmd.spawn().context("start aw-sync-samay")?;
    let peak = watch_peak_rss(child.id());
    let (code, mut usage) = wait_with_usage(&mut child, started)?;
    (usage.max_rss, usage.max_rss_file) = peak.join().unwrap_or((0, 0));
    if code != 0 {
        let out = std::fs::read_to_string(home.dir.join("stdout.txt")).unwrap_or_default();
        let err = std::fs::read_to_string(home.dir.join("stderr.txt")).unwrap_or_default();
        bail!("aw-sync-samay --once exited {code}\n{out}\n{err}");
    }
    Ok(usage)
}
