//! An idle daemon costs almost nothing (issue 5): with nothing new, a cycle makes one small
//! request per synced bucket to aw-server and none upstream, and between cycles the process does
//! not wake up at all.
//!
//! Measured from outside, the way the kernel sees it: the real binary runs as a daemon against a
//! real Python aw-server and the dev upstream, and the context switches of every one of its
//! threads are read from `/proc/<pid>/task/*/status`. Whatever wakes a thread — a timer, a poll,
//! a connection pool's reaper, a blocking-pool thread exiting after its keep-alive — switches it
//! in and out, so "no context switch over a quiet window" means "no wakeup", by any cause, and a
//! thread appearing or disappearing counts as one too.
//!
//! aw-server's requests are counted by a small HTTP proxy in front of it (the daemon is pointed
//! at it): it sees every request the daemon makes, whatever the daemon logs. Batch requests are
//! counted by the dev upstream's own counters. In front of both, a TCP relay closes connections
//! idle for 2 s, as aw-server-rust and real upstreams do after their keep-alive timeout (Python
//! aw-server closes after every answer): a connection the daemon kept into the gap would be
//! closed there, waking it.
//!
//! What the quiet window cannot see, `measure_idle_costs` does over whole minutes: timers due
//! later than the window (a pool reaper every 60-90 s, a request timeout of 30-60 s left in the
//! runtime's timer driver), and the keyring's D-Bus client (run it under `dbus-run-session` with
//! gnome-keyring, `IDLE_NO_TOKEN=1` and `IDLE_CONFIG` setting `[auth] token_storage = "keyring"`).
//!
//! Linux only (`/proc`). CPU time and memory are printed, never asserted (the machine is
//! shared); `measure_idle_costs` (ignored: `cargo test --test idle -- --ignored --nocapture`)
//! measures them on 10 buckets over a whole gap between cycles. `AW_SYNC_SAMAY_BIN` runs another
//! build of the binary (a release build, or an older one to compare with).
#![cfg(target_os = "linux")]

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use samay_testkit::bin::write_config;
use samay_testkit::daemon::Daemon;
use samay_testkit::devserver::TEST_TOKEN;
use samay_testkit::rig::{series, Rig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Logged (at debug, hence `--verbose`) when a daemon cycle is over, status bucket included.
const CYCLE_END: &str = "next cycle scheduled";
/// The quiet window asserted: long enough that a once-a-second poll cannot hide in it, and
/// that a thread of the blocking pool idle since the end of the cycle would exit inside it
/// (Tokio's default keep-alive is 10 s).
const QUIET_WINDOW: Duration = Duration::from_secs(12);
/// The test's cycle interval: the settling (at most [`SETTLE_LIMIT`]) and the quiet window fit
/// inside one gap even on a loaded machine.
const TEST_INTERVAL_SECS: u64 = 20;
/// The test's `sync.request_timeout`: well inside the quiet window.
const REQUEST_TIMEOUT_SECS: u64 = 4;
/// How long the end of a cycle may take to quiet down (a log line reaching the log file's
/// writer thread, the blocking pool's threads going back to sleep).
const SETTLE_LIMIT: Duration = Duration::from_secs(4);
/// How long a cycle may take to show up in the log.
const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// What the kernel says about a process

/// Context switches (voluntary + involuntary) of each thread of `pid`, with the thread's name.
fn switches(pid: u32) -> BTreeMap<u32, (String, u64)> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.filter_map(Result::ok) {
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<u32>().ok())
        else {
            continue;
        };
        let dir = task.path();
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

/// What changed between two [`switches`] snapshots: per thread, `name: +n`, and threads that
/// started or exited. Empty when nothing woke.
fn wakeups(
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
fn cpu_secs(pid: u32) -> f64 {
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
fn on_cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn clock_ticks_per_sec() -> f64 {
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
fn memory(pid: u32) -> String {
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
fn smaps(pid: u32) -> Vec<(String, u64)> {
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

struct ProxyState {
    client: reqwest::Client,
    target: String,
    seen: Mutex<Vec<String>>,
}

/// Forwards every request to aw-server unchanged and records `METHOD /path` (no query).
struct CountingProxy {
    port: u16,
    state: Arc<ProxyState>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingProxy {
    async fn start(target_port: u16) -> CountingProxy {
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
    fn seen(&self) -> Vec<String> {
        self.state.seen.lock().expect("seen").clone()
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(
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
fn per_bucket(requests: &[String]) -> (BTreeMap<String, Vec<String>>, Vec<String>) {
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
fn binary() -> PathBuf {
    std::env::var_os("AW_SYNC_SAMAY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_aw-sync-samay")))
}

/// Like `samay_testkit::bin::sync_command`, for [`binary`], with debug logging (for [`CYCLE_END`]).
fn daemon_command(home: &Path, aw_port: u16, config: &Path) -> Command {
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

fn cycles_done(daemon: &Daemon) -> usize {
    daemon.stderr().matches(CYCLE_END).count()
}

/// Waits (bounded) until the daemon has finished `n` cycles.
async fn wait_cycles(daemon: &mut Daemon, n: usize) {
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
async fn settle(pid: u32) -> BTreeMap<u32, (String, u64)> {
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
async fn watch_window(pid: u32, window: Duration) -> Vec<(Duration, Vec<String>)> {
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

// ---------------------------------------------------------------------------------------------
// The test

/// The daemon syncs 3 buckets (cycle 1 uploads), then: (a) over 12 s of the gap after that
/// cycle, no thread of it is scheduled, starts or exits — no parent or config poll, no blocking
/// thread timing out, no kept connection closed by a server; (b) cycle 2, with nothing new,
/// asks aw-server for each bucket's events exactly once and sends no batch upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_daemon_never_wakes_between_cycles_and_asks_one_request_per_bucket() {
    let rig = Rig::new().await;
    let buckets = ["idle-a", "idle-b", "idle-c"];
    for b in buckets {
        rig.bucket(b).await;
        rig.insert(b, &series(20, 5.0, 120, b)).await;
    }
    // Both servers close a connection idle for 2 s, as aw-server-rust (5 s) and real upstreams
    // (nginx: 75 s) do after their keep-alive timeout: a connection the daemon kept would be
    // closed inside the quiet window, and the close would wake it.
    let proxy = CountingProxy::start(rig.aw.port()).await;
    let aw_server = Relay::start(
        std::net::SocketAddr::from(([127, 0, 0, 1], proxy.port)),
        Some(Duration::from_secs(2)),
    )
    .await;
    let upstream = Relay::start(rig.dev.addr(), Some(Duration::from_secs(2))).await;
    let home = rig.dir.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    // A short request timeout: were the runtime's timer driver to keep the deadline of an
    // upload request it no longer has, it would come due inside the quiet window.
    let config = write_config(
        &home,
        &upstream.url(),
        &format!("sync_interval = {TEST_INTERVAL_SECS}\nrequest_timeout = {REQUEST_TIMEOUT_SECS}"),
    );
    let mut daemon = Daemon::spawn(
        &mut daemon_command(&home, aw_server.port, &config),
        &rig.dir.path().join("out"),
    );
    let pid = daemon.pid();

    // Cycle 1 delivers everything.
    wait_cycles(&mut daemon, 1).await;
    let batches_1 = rig.dev.faults().counters().requests_received;
    assert!(batches_1 > 0, "the first cycle uploaded nothing");
    let seen_1 = proxy.seen().len();
    eprintln!(
        "after the first cycle: {}; CPU {:.2} s",
        memory(pid),
        cpu_secs(pid)
    );

    // Between cycle 1 and cycle 2 (after uploads and SQLite work on the blocking pool): no
    // thread of the daemon is scheduled at all.
    let from = settle(pid).await;
    let on_cpu_from = on_cpu_ns(pid);
    let started = Instant::now();
    tokio::time::sleep(QUIET_WINDOW).await;
    let to = switches(pid);
    let window = started.elapsed();
    assert_eq!(
        (cycles_done(&daemon), proxy.seen().len()),
        (1, seen_1),
        "the quiet window overlapped a cycle (machine too loaded?); stderr:\n{}",
        daemon.stderr()
    );
    let woke = wakeups(&from, &to);
    eprintln!(
        "quiet window of {window:?}: {} threads, wakeups {woke:?}, {} µs on CPU; {}",
        to.len(),
        on_cpu_ns(pid).saturating_sub(on_cpu_from) / 1000,
        memory(pid),
    );
    assert!(
        woke.is_empty(),
        "the idle daemon woke up between cycles: {woke:?}\nthreads: {to:?}"
    );
    for b in buckets {
        rig.assert_exact(b).await;
    }

    // Cycle 2 has nothing new: one request per bucket to aw-server, nothing upstream.
    let cpu_2 = cpu_secs(pid);
    wait_cycles(&mut daemon, 2).await;
    let idle_cycle: Vec<String> = proxy.seen()[seen_1..].to_vec();
    let batches_2 = rig.dev.faults().counters().requests_received;
    let (by_bucket, other) = per_bucket(&idle_cycle);
    eprintln!(
        "idle cycle: per bucket {by_bucket:?}; other requests {other:?}; CPU {:.0} ms (10 ms ticks)",
        (cpu_secs(pid) - cpu_2) * 1000.0
    );
    assert_eq!(
        batches_2, batches_1,
        "an idle cycle made batch requests upstream"
    );
    for b in buckets {
        let got = by_bucket.get(b).cloned().unwrap_or_default();
        // The listing and one whole-bucket count show nothing changed: no event is read.
        assert_eq!(
            got,
            vec![format!("GET /api/0/buckets/{b}/events/count")],
            "bucket {b}: an idle cycle should make exactly one request, the count"
        );
    }
    // Nothing else per bucket: only the synced buckets and the status bucket's heartbeat.
    let unexpected: Vec<&String> = by_bucket
        .keys()
        .filter(|id| !buckets.contains(&id.as_str()) && !id.starts_with("aw-sync-samay_"))
        .collect();
    assert!(
        unexpected.is_empty(),
        "requests for buckets not synced: {unexpected:?}"
    );
    daemon.child.kill().expect("kill daemon");
    let _ = daemon.child.wait();
}

// ---------------------------------------------------------------------------------------------
// A TCP relay in front of the upstream

/// Relays TCP connections to the upstream, counting them, and can play two things real networks
/// do to a kept connection:
/// * close it after `idle_close` without traffic, as an upstream's keep-alive timeout does
///   (nginx: 75 s) — the client sees the close when it happens, which wakes it;
/// * "freeze" the connections it has: from then on their bytes go nowhere and they are never
///   closed — a connection that died silently (a NAT entry expired, a laptop slept), which the
///   client cannot tell from a slow one. Connections made after the freeze work normally.
struct Relay {
    port: u16,
    generation: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
    /// Connections the client closed (EOF from its side).
    closed_by_client: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(target: std::net::SocketAddr, idle_close: Option<Duration>) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind relay");
        let port = listener.local_addr().expect("relay addr").port();
        let generation = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicU64::new(0));
        let closed_by_client = Arc::new(AtomicU64::new(0));
        let (g, c, closed) = (
            Arc::clone(&generation),
            Arc::clone(&connections),
            Arc::clone(&closed_by_client),
        );
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let born = g.load(Ordering::SeqCst);
                let (g, closed) = (Arc::clone(&g), Arc::clone(&closed));
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let last = Mutex::new(Instant::now());
                    let alive = || g.load(Ordering::SeqCst) == born;
                    let up = async {
                        let mut buf = vec![0u8; 16 * 1024];
                        while let Ok(n) = cr.read(&mut buf).await {
                            if n == 0 {
                                closed.fetch_add(1, Ordering::SeqCst);
                                break;
                            }
                            *last.lock().expect("last") = Instant::now();
                            if alive() && sw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        std::future::pending::<()>().await
                    };
                    let down = async {
                        let mut buf = vec![0u8; 16 * 1024];
                        while let Ok(n) = sr.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                            *last.lock().expect("last") = Instant::now();
                            if alive() && cw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        std::future::pending::<()>().await
                    };
                    let watchdog = async {
                        let Some(idle) = idle_close else {
                            return std::future::pending::<()>().await;
                        };
                        loop {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            if last.lock().expect("last").elapsed() >= idle {
                                return;
                            }
                        }
                    };
                    // Only the watchdog ends a connection (dropping both sockets): a frozen
                    // one stays open.
                    tokio::select! {
                        _ = up => {}
                        _ = down => {}
                        _ = watchdog => {}
                    }
                });
            }
        });
        Relay {
            port,
            generation,
            connections,
            closed_by_client,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn freeze(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }

    fn closed_by_client(&self) -> u64 {
        self.closed_by_client.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Within a cycle the upstream client keeps its connection (with no idle timeout, so no reaper
/// timer wakes the daemon). If that connection dies silently, the batch sent on it times out
/// and is retried on a new connection: nothing is lost and the cycle succeeds. Shown across two
/// cycles of an engine whose connections are not released in between, which is a connection
/// dying between two batches. Then `release_connections` (what the daemon does when it goes
/// idle) closes the kept connection, and the next cycle opens a new one without a retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_upstream_connection_that_died_silently_is_retried_and_release_closes_it() {
    use aw_sync_samay::auth::{AccessToken, StaticToken};
    use aw_sync_samay::engine::Engine;
    use aw_sync_samay::state::Store;
    use aw_sync_samay::upstream::UpstreamClient;

    let rig = Rig::new().await;
    rig.bucket("kept").await;
    rig.insert("kept", &series(10, 5.0, 600, "a")).await;
    let relay = Relay::start(rig.dev.addr(), None).await;
    let upstream = Arc::new(
        UpstreamClient::new(&relay.url(), Duration::from_secs(1), true).expect("upstream client"),
    );
    let engine = Engine {
        source: rig.client(),
        upstream: Arc::clone(&upstream) as _,
        tokens: Arc::new(StaticToken::new(AccessToken::new(TEST_TOKEN), "test")),
        store: Arc::new(Store::open(&rig.dir.path().join("kept.sqlite")).expect("state")),
        settings: samay_testkit::rig::test_settings(),
        hostname: "test-host".into(),
        metrics: Default::default(),
        destination: aw_sync_samay::state::DestKey::new("http://upstream.test", "test").into(),
        clock: std::sync::Arc::new(aw_sync_samay::clock::SystemClock),
    };

    let first = engine.run_cycle().await.expect("first cycle");
    assert_eq!(first.upload.delivered, 10);
    assert_eq!(
        relay.connections(),
        1,
        "one connection, reused by the batches"
    );

    // The kept connection dies without a word; new events arrive.
    relay.freeze();
    rig.insert("kept", &series(5, 5.0, 60, "b")).await;
    let second = engine.run_cycle().await.expect("second cycle succeeds");
    eprintln!(
        "second cycle: {:?}, {} connections",
        second.upload,
        relay.connections()
    );
    assert_eq!(second.upload.delivered, 5);
    assert!(
        second.upload.retries >= 1,
        "the batch on the dead connection should have been retried: {:?}",
        second.upload
    );
    assert_eq!(
        relay.connections(),
        2,
        "the kept connection was tried first, then one new connection"
    );

    // Going idle: the client closes the connection it kept.
    let closed = relay.closed_by_client();
    upstream.release_connections();
    let deadline = Instant::now() + WAIT;
    while relay.closed_by_client() == closed {
        assert!(
            Instant::now() < deadline,
            "release_connections did not close the kept connection"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rig.insert("kept", &series(3, 5.0, 30, "c")).await;
    let third = engine.run_cycle().await.expect("third cycle");
    assert_eq!((third.upload.delivered, third.upload.retries), (3, 0));
    assert_eq!(relay.connections(), 3, "a new connection after the release");
    rig.assert_exact("kept").await;
}

// ---------------------------------------------------------------------------------------------
// The measurement (not a test: prints numbers)

/// 10 buckets of 200 events each (ending `IDLE_END_AGO` seconds ago, default 60), synced; then
/// (a) the wakeups per thread, and when they happen, over a whole gap of `IDLE_GAP_SECS` (30)
/// between two cycles, aw-server reached directly, and (b) the CPU time per idle cycle over
/// `IDLE_CYCLES` (30) cycles one second apart, and the memory after them, with where it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, prints numbers; run with --ignored --nocapture"]
async fn measure_idle_costs() {
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(d)
    };
    let gap = env("IDLE_GAP_SECS", 30);
    let cycles = env("IDLE_CYCLES", 30) as usize;
    // When the last event ended: by default within `sync.lookback` (1 h), so every idle cycle
    // reads the buckets' last hour again; 7200 puts everything before it.
    let end_ago = env("IDLE_END_AGO", 60) as i64;
    let rig = Rig::new().await;
    let buckets: Vec<String> = (0..10).map(|i| format!("measure-{i}")).collect();
    for b in &buckets {
        rig.bucket(b).await;
        rig.insert(b, &series(200, 10.0, end_ago, b)).await;
    }
    let home = rig.dir.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    let out = rig.dir.path().join("out");
    println!("binary: {}", binary().display());

    // (a) A whole gap.
    // More `[sync]` lines for an experiment, e.g. IDLE_CONFIG='request_timeout = 10'.
    let extra = std::env::var("IDLE_CONFIG").unwrap_or_default();
    let config = write_config(
        &home,
        &rig.dev.base_url(),
        &format!("sync_interval = {gap}\n{extra}"),
    );
    let mut daemon = Daemon::spawn(&mut daemon_command(&home, rig.aw.port(), &config), &out);
    let pid = daemon.pid();
    wait_cycles(&mut daemon, 1).await;
    println!("after the first cycle: {}", memory(pid));
    let window = Duration::from_secs(gap.saturating_sub(6).max(1));
    settle(pid).await;
    let changes = watch_window(pid, window).await;
    assert_eq!(cycles_done(&daemon), 1, "the window overlapped a cycle");
    println!(
        "wakeups over {window:?} of the gap after the first cycle (time from the window's start): {changes:?}"
    );
    println!("threads: {:?}", switches(pid));
    wait_cycles(&mut daemon, 2).await;
    settle(pid).await;
    let changes = watch_window(pid, window).await;
    assert_eq!(cycles_done(&daemon), 2, "the window overlapped a cycle");
    println!("wakeups over {window:?} of the gap after an idle cycle: {changes:?}");
    println!("after an idle cycle: {}", memory(pid));
    let (status, _) = daemon.stop_with("TERM").await;
    assert!(status.success(), "{status}");

    // (b) CPU per idle cycle, a fresh process on the synced state.
    let config = write_config(&home, &rig.dev.base_url(), "sync_interval = 1");
    let mut daemon = Daemon::spawn(&mut daemon_command(&home, rig.aw.port(), &config), &out);
    let pid = daemon.pid();
    wait_cycles(&mut daemon, 2).await;
    let (cpu0, ns0, n0) = (cpu_secs(pid), on_cpu_ns(pid), cycles_done(&daemon));
    let started = Instant::now();
    wait_cycles_long(&mut daemon, n0 + cycles).await;
    let (cpu1, ns1, n1) = (cpu_secs(pid), on_cpu_ns(pid), cycles_done(&daemon));
    let n = (n1 - n0) as f64;
    println!(
        "idle cycles: {} in {:?}; CPU per cycle {:.2} ms (utime+stime), {:.2} ms (schedstat of live threads)",
        n1 - n0,
        started.elapsed(),
        (cpu1 - cpu0) * 1000.0 / n,
        (ns1 - ns0) as f64 / 1e6 / n
    );
    println!("after {} idle cycles: {}", n1, memory(pid));
    println!("resident, per mapping (kB): {:?}", smaps(pid));
    let (status, _) = daemon.stop_with("TERM").await;
    assert!(status.success(), "{status}");
}

/// [`wait_cycles`] with a bound that grows with `n` (one-second cycles).
async fn wait_cycles_long(daemon: &mut Daemon, n: usize) {
    let deadline = Instant::now() + WAIT + Duration::from_secs(3 * n as u64);
    while cycles_done(daemon) < n {
        assert!(Instant::now() < deadline, "cycle {n} did not come");
        assert!(
            daemon.child.try_wait().expect("try_wait").is_none(),
            "daemon exited"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
