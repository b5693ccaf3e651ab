//! What the idle tests measure with: the kernel's view of a process, a counting proxy in front of
//! aw-server, and the daemon under test.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::response::Response;
use samay_testkit::daemon::Daemon;
use samay_testkit::devserver::TEST_TOKEN;

/// Logged (at debug, hence `--verbose`) when a daemon cycle is over, status bucket included.
pub(super) const CYCLE_END: &str = "next cycle scheduled";
/// The quiet window asserted: long enough that a once-a-second poll cannot hide in it, and
/// that a thread of the blocking pool idle since the end of the cycle would exit inside it
/// (Tokio's default keep-alive is 10 s).
pub(super) const QUIET_WINDOW: Duration = Duration::from_secs(12);
/// The test's cycle interval: the settling (at most [`SETTLE_LIMIT`]) and the quiet window fit
/// inside one gap even on a loaded machine.
pub(super) const TEST_INTERVAL_SECS: u64 = 20;
/// The test's `sync.request_timeout`: well inside the quiet window.
pub(super) const REQUEST_TIMEOUT_SECS: u64 = 4;
/// How long the end of a cycle may take to quiet down (a log line reaching the log file's
/// writer thread, the blocking pool's threads going back to sleep).
pub(super) const SETTLE_LIMIT: Duration = Duration::from_secs(4);
/// How long a cycle may take to show up in the log.
pub(super) const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// What the kernel says about a process

/// The threads of `pid` (`/proc/<pid>/task/<tid>`): their ids and directories.
fn tasks(pid: u32) -> Vec<(u32, std::path::PathBuf)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| {
            let tid = task.file_name().to_str()?.parse::<u32>().ok()?;
            Some((tid, task.path()))
        })
        .collect()
}

/// Context switches (voluntary + involuntary) of each thread of `pid`, with the thread's name.
pub(super) fn switches(pid: u32) -> BTreeMap<u32, (String, u64)> {
    let mut out = BTreeMap::new();
    for (tid, dir) in tasks(pid) {
        let Ok(status) = std::fs::read_to_string(dir.join("status")) else {
            continue; // exited between the listing and the read
        };
        let count: u64 = status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        out.insert(tid, (comm.trim().to_string(), count));
    }
    out
}

/// The scheduling policy of each thread of `pid` (`/proc/<pid>/task/<tid>/stat`, field 41:
/// 0 normal, 3 `SCHED_BATCH`), with the thread's name.
pub(super) fn policies(pid: u32) -> BTreeMap<u32, (String, u32)> {
    let mut out = BTreeMap::new();
    for (tid, dir) in tasks(pid) {
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
            continue; // exited between the listing and the read
        };
        // `pid (comm) state ...`: the name may hold spaces and parentheses; fields count
        // from after its last `)`, where field 3 (state) is the first.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let name = head.split_once('(').map_or("", |(_, n)| n).to_string();
        let policy = rest
            .split_whitespace()
            .nth(41 - 3)
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(policy) = policy {
            out.insert(tid, (name, policy));
        }
    }
    out
}

/// What changed between two [`switches`] snapshots: per thread, `name: +n`, and threads that
/// started or exited. Empty when nothing woke.
pub(super) fn wakeups(
    before: &BTreeMap<u32, (String, u64)>,
    after: &BTreeMap<u32, (String, u64)>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (tid, (name, n)) in before {
        match after.get(tid) {
            None => out.push(format!("{name} ({tid}): exited")),
            Some((_, m)) if m != n => out.push(format!("{name} ({tid}): +{}", m - n)),
            Some(_) => {}
        }
    }
    for (tid, (name, n)) in after {
        if !before.contains_key(tid) {
            out.push(format!("{name} ({tid}): started, {n} switches"));
        }
    }
    out
}

/// CPU time (user + system) the process used so far, dead threads included, in seconds.
pub(super) fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // "pid (comm) S ppid ...": utime and stime are fields 14 and 15, i.e. 12th and 13th after
    // the comm.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<u64>().ok())
        .sum();
    ticks as f64 / clock_ticks_per_sec()
}

/// On-CPU time of the live threads, in nanoseconds (`/proc/<pid>/task/*/schedstat`): finer than
/// [`cpu_secs`]'s 10 ms ticks.
pub(super) fn on_cpu_ns(pid: u32) -> u64 {
    tasks(pid)
        .into_iter()
        .filter_map(|(_, dir)| std::fs::read_to_string(dir.join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

pub(super) fn clock_ticks_per_sec() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(100.0)
}

/// `Key: value` lines of `/proc/<pid>/status` we report.
pub(super) fn memory(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .filter(|l| {
            ["VmRSS:", "VmHWM:", "RssAnon:", "RssFile:", "Threads:"]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where the resident memory is: `/proc/<pid>/smaps` summed per mapping name (`[heap]`,
/// `[anon]` for unnamed mappings, or the file), largest first, in kB.
pub(super) fn smaps(pid: u32) -> Vec<(String, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut sums: BTreeMap<String, u64> = BTreeMap::new();
    let mut current = String::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let first = parts.next().unwrap_or_default();
        if first.contains('-') && !first.ends_with(':') {
            // "start-end perms offset dev inode [path]"
            let name = line.split_whitespace().nth(5).unwrap_or("[anon]");
            current = name.rsplit('/').next().unwrap_or(name).to_string();
        } else if first == "Rss:" {
            let kb = parts
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            *sums.entry(current.clone()).or_default() += kb;
        }
    }
    let mut v: Vec<(String, u64)> = sums.into_iter().filter(|(_, kb)| *kb > 0).collect();
    v.sort_by_key(|entry| std::cmp::Reverse(entry.1));
    v.truncate(10);
    v
}

// ---------------------------------------------------------------------------------------------
// A counting proxy in front of aw-server

pub(super) struct ProxyState {
    pub(super) client: reqwest::Client,
    pub(super) target: String,
    pub(super) seen: Mutex<Vec<String>>,
}

/// Forwards every request to aw-server unchanged and records `METHOD /path` (no query).
pub(super) struct CountingProxy {
    pub(super) port: u16,
    pub(super) state: Arc<ProxyState>,
    pub(super) task: tokio::task::JoinHandle<()>,
}

impl CountingProxy {
    pub(super) async fn start(target_port: u16) -> CountingProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let state = Arc::new(ProxyState {
            client: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("proxy client"),
            target: format!("http://127.0.0.1:{target_port}"),
            seen: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(Arc::clone(&state));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        CountingProxy { port, state, task }
    }

    /// Every request seen so far, in order.
    pub(super) fn seen(&self) -> Vec<String> {
        self.state.seen.lock().expect("seen").clone()
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(super) async fn forward(
    State(p): State<Arc<ProxyState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    p.seen
        .lock()
        .expect("seen")
        .push(format!("{method} {}", uri.path()));
    let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut req = p
        .client
        .request(method, format!("{}{path}", p.target))
        .body(body);
    for (name, value) in &headers {
        if !matches!(
            name.as_str(),
            "host" | "content-length" | "connection" | "transfer-encoding"
        ) {
            req = req.header(name, value);
        }
    }
    match req.send().await {
        Ok(resp) => {
            let status = resp.status();
            let mut out_headers = HeaderMap::new();
            for (name, value) in resp.headers() {
                if !matches!(
                    name.as_str(),
                    "content-length" | "connection" | "transfer-encoding" | "keep-alive"
                ) {
                    out_headers.append(name, value.clone());
                }
            }
            let bytes = resp.bytes().await.unwrap_or_default();
            (status, out_headers, bytes).into_response()
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

/// Per bucket id, the requests under `/api/0/buckets/<id>/` among `requests`; and the others.
pub(super) fn per_bucket(requests: &[String]) -> (BTreeMap<String, Vec<String>>, Vec<String>) {
    let mut buckets: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut other = Vec::new();
    for r in requests {
        let bucket = r
            .split_once(" /api/0/buckets/")
            .and_then(|(_, rest)| rest.split_once('/'))
            .map(|(id, _)| id.to_string())
            .filter(|id| !id.is_empty());
        match bucket {
            Some(id) => buckets.entry(id).or_default().push(r.clone()),
            None => other.push(r.clone()),
        }
    }
    (buckets, other)
}

// ---------------------------------------------------------------------------------------------
// The daemon

/// The binary under test: `AW_SYNC_SAMAY_BIN`, else this build's.
pub(super) fn binary() -> PathBuf {
    std::env::var_os("AW_SYNC_SAMAY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_aw-sync-samay")))
}

/// Like `samay_testkit::bin::sync_command`, for [`binary`], with debug logging (for [`CYCLE_END`]).
pub(super) fn daemon_command(home: &Path, aw_port: u16, config: &Path) -> Command {
    let mut cmd = Command::new(binary());
    cmd.env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_DATA_HOME", home.join("data"))
        .env("XDG_CACHE_HOME", home.join("cache"))
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("RUST_LOG")
        .env_remove("LOG_LEVEL")
        .env("AW_SYNC_SAMAY_TOKEN", TEST_TOKEN)
        .arg("--port")
        .arg(aw_port.to_string())
        .arg("--config")
        .arg(OsString::from(config))
        .arg("--verbose");
    // For a measurement of the token store's own cost (keyring over D-Bus): no static token.
    if std::env::var_os("IDLE_NO_TOKEN").is_some() {
        cmd.env_remove("AW_SYNC_SAMAY_TOKEN");
    }
    cmd
}

pub(super) fn cycles_done(daemon: &Daemon) -> usize {
    daemon.stderr().matches(CYCLE_END).count()
}

/// Waits (bounded) until the daemon has finished `n` cycles.
pub(super) async fn wait_cycles(daemon: &mut Daemon, n: usize) {
    let deadline = Instant::now() + WAIT;
    while cycles_done(daemon) < n {
        if let Some(status) = daemon.child.try_wait().expect("try_wait") {
            panic!(
                "daemon exited ({status}) before cycle {n}; stderr:\n{}",
                daemon.stderr()
            );
        }
        assert!(
            Instant::now() < deadline,
            "cycle {n} did not end within {WAIT:?}; stderr:\n{}",
            daemon.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// After a cycle ended: waits (bounded by [`SETTLE_LIMIT`]) until its tail is over — no switch
/// for 300 ms — and returns the snapshot to measure from. If it never settles, the quiet-window
/// check that follows reports who keeps waking.
pub(super) async fn settle(pid: u32) -> BTreeMap<u32, (String, u64)> {
    let deadline = Instant::now() + SETTLE_LIMIT;
    let mut last = switches(pid);
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = switches(pid);
        if wakeups(&last, &now).is_empty() || Instant::now() >= deadline {
            return now;
        }
        last = now;
    }
}

/// Watches `pid` for `window`, sampling every 250 ms, and returns every change with its time
/// from the start: when something wakes, not only that it did.
pub(super) async fn watch_window(pid: u32, window: Duration) -> Vec<(Duration, Vec<String>)> {
    let started = Instant::now();
    let mut last = switches(pid);
    let mut changes = Vec::new();
    while started.elapsed() < window {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = switches(pid);
        let woke = wakeups(&last, &now);
        if !woke.is_empty() {
            changes.push((started.elapsed(), woke));
        }
        last = now;
    }
    changes
}
