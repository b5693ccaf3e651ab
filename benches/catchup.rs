//! The catch-up benchmark of issue 5, all measured side by side in one run:
//!
//! * the floor: one `limit=-1` GET per bucket, reading the bytes and nothing else — what no
//!   client of that source can beat;
//! * `aw-sync-samay --once` with the default `[sync]` settings catching up N events into an
//!   upstream that acknowledges at once ([`support::upstream::AckUpstream`]), then into
//!   `samay-dev-server` (a real upstream with its SQLite store), each from a fresh state;
//! * every event the ack upstream received checked against the source: timestamps and
//!   durations within 1 µs, data equal, each event exactly once;
//! * the idle cost: 10 buckets with nothing new, the daemon's CPU per cycle, requests per
//!   cycle, RSS and the context switches between cycles.
//!
//! Sources: the in-memory aw-server double (`samay_aw_double`, aw-server-rust's semantics) at
//! 10k, 100k and 1M events, and the real Python aw-server 0.12 at 100k.
//!
//! ```text
//! cargo bench --bench catchup                      # everything (≈ 10 min on 2 cores)
//! BENCH_SIZES=10000,100000 BENCH_PYTHON=0 cargo bench --bench catchup
//! ```
//! The report (markdown) goes to stdout and to `target/bench-catchup.md`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use aw_sync_samay::awdouble::{self, synthetic, AwDouble, AwDoubleConfig};
use aw_sync_samay::source::Event;

#[path = "../tests/common/awserver.rs"]
mod awserver;
#[path = "../tests/common/procfs.rs"]
mod procfs;
mod support;

use support::run::{self, Home, Usage};
use support::upstream::AckUpstream;

const MIB: f64 = 1024.0 * 1024.0;

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` (the test suite) runs bench
    // targets without it, and must not spend minutes measuring a debug build.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("catchup: a benchmark; run it with `bash scripts/bench.sh` (cargo bench --bench catchup)");
        return Ok(());
    }
    let sizes: Vec<usize> = std::env::var("BENCH_SIZES")
        .unwrap_or_else(|_| "10000,100000,1000000".into())
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse()
                .context("BENCH_SIZES: comma-separated event counts")
        })
        .collect::<Result<_, _>>()?;
    let python = std::env::var("BENCH_PYTHON").map_or(true, |v| v != "0");
    let idle = std::env::var("BENCH_IDLE").map_or(true, |v| v != "0");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let work = tempfile::Builder::new()
        .prefix("aw-sync-samay-bench-")
        .tempdir()?;
    let mut report = Report::default();
    rt.block_on(async {
        let ack = AckUpstream::start().await?;
        for &n in &sizes {
            let double = awdouble::spawn(AwDoubleConfig::default()).await?;
            let t = Instant::now();
            let spec = synthetic::Spec::week(n, 42, end_of_data());
            double.load_synthetic(&spec)?;
            eprintln!(
                "bench: loaded {n} events into the double in {:.1?}",
                t.elapsed()
            );
            catch_up(&mut report, "double", n, double.port(), &ack, work.path()).await?;
            drop(double);
        }
        if python {
            let n = 100_000;
            let server = tokio::task::spawn_blocking(awserver::AwServer::start).await?;
            let t = Instant::now();
            fill_python(server.port(), n).await?;
            eprintln!(
                "bench: inserted {n} events into Python aw-server in {:.1?}",
                t.elapsed()
            );
            catch_up(
                &mut report,
                "Python aw-server 0.12",
                n,
                server.port(),
                &ack,
                work.path(),
            )
            .await?;
        }
        if idle {
            idle_cost(&mut report, &ack, work.path()).await?;
        }
        anyhow::Ok(())
    })?;
    let text = report.render();
    println!("{text}");
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-catchup.md");
    std::fs::write(&out, &text).with_context(|| format!("write {}", out.display()))?;
    eprintln!("bench: report written to {}", out.display());
    Ok(())
}

/// The synthetic week ends a minute ago, like a backlog that just stopped growing.
fn end_of_data() -> DateTime<Utc> {
    Utc::now() - chrono::TimeDelta::minutes(1)
}

#[derive(Default)]
struct Report {
    rows: Vec<String>,
    faithful: Vec<String>,
    idle: Vec<String>,
}

impl Report {
    fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "Machine: {} CPUs ({}), {}; aw-sync-samay {} (release), default [sync] settings.\n",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model(),
            kernel(),
            env!("CARGO_PKG_VERSION")
        );
        s.push_str("| source | events | run | wall s | events/s | × floor | peak RSS MiB | CPU s (user+sys) |\n");
        s.push_str("|---|---:|---|---:|---:|---:|---:|---:|\n");
        for r in &self.rows {
            s.push_str(r);
            s.push('\n');
        }
        if !self.faithful.is_empty() {
            s.push_str(
                "\nFaithfulness (ack upstream vs. the source, read back with `limit=-1`):\n\n",
            );
            for f in &self.faithful {
                let _ = writeln!(s, "- {f}");
            }
        }
        if !self.idle.is_empty() {
            s.push_str(
                "\nIdle (10 buckets synced, nothing new, the daemon with `sync_interval = 5`):\n\n",
            );
            for f in &self.idle {
                let _ = writeln!(s, "- {f}");
            }
        }
        s
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, v)| v.trim().to_string())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| format!("Linux {}", k.trim()))
        .unwrap_or_else(|_| std::env::consts::OS.into())
}

/// Floor, sync into the ack upstream (verified), sync into samay-dev-server.
async fn catch_up(
    report: &mut Report,
    source: &str,
    n: usize,
    port: u16,
    ack: &AckUpstream,
    work: &Path,
) -> anyhow::Result<()> {
    let buckets = bucket_ids(port).await?;
    let (floor, bytes) = floor(port, &buckets).await?;
    eprintln!(
        "bench: {source} {n}: floor {:.2} s ({:.0} MB of JSON)",
        floor.as_secs_f64(),
        bytes as f64 / 1e6
    );
    let floor_s = floor.as_secs_f64();
    report.rows.push(format!(
        "| {source} | {n} | floor: one `limit=-1` GET per bucket ({:.0} MB) | {:.2} | {:.0} | 1.00 | – | – |",
        bytes as f64 / 1e6,
        floor_s,
        n as f64 / floor_s
    ));

    ack.clear();
    let home = Home::new(work, &format!("ack-{n}-{}", port), &ack.base_url(), "")?;
    let usage = tokio::task::spawn_blocking(move || run::once(&home, port)).await??;
    report.rows.push(row(
        source,
        n,
        "sync → acknowledging upstream",
        &usage,
        floor_s,
    ));
    eprintln!(
        "bench: {source} {n}: sync → ack {:.2} s",
        usage.wall.as_secs_f64()
    );
    let check = verify(port, &buckets, ack, n).await?;
    report
        .faithful
        .push(format!("{source}, {n} events: {check}"));
    ack.clear();

    let dev = DevServer::start(work, &format!("dev-{n}-{port}"))?;
    let home = Home::new(work, &format!("dev-{n}-{port}"), &dev.base_url, "")?;
    let usage = tokio::task::spawn_blocking(move || run::once(&home, port)).await??;
    let held = dev.held().await?;
    ensure!(
        held == n as u64,
        "samay-dev-server holds {held} events, expected {n}"
    );
    report
        .rows
        .push(row(source, n, "sync → samay-dev-server", &usage, floor_s));
    eprintln!(
        "bench: {source} {n}: sync → dev {:.2} s",
        usage.wall.as_secs_f64()
    );
    Ok(())
}

fn row(source: &str, n: usize, run: &str, u: &Usage, floor_s: f64) -> String {
    let wall = u.wall.as_secs_f64();
    format!(
        "| {source} | {n} | {run} | {wall:.2} | {:.0} | {:.2} | {:.1} | {:.2} + {:.2} |",
        n as f64 / wall,
        wall / floor_s,
        u.max_rss as f64 / MIB,
        u.user.as_secs_f64(),
        u.sys.as_secs_f64()
    )
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

async fn bucket_ids(port: u16) -> anyhow::Result<Vec<String>> {
    let map: Map<String, Value> = http()
        .get(format!("http://127.0.0.1:{port}/api/0/buckets/"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(map.keys().cloned().collect())
}

/// One `limit=-1` GET per bucket, body read and dropped: the source's own cost of serving it all.
async fn floor(port: u16, buckets: &[String]) -> anyhow::Result<(Duration, u64)> {
    let client = http();
    let t = Instant::now();
    let mut bytes = 0;
    for b in buckets {
        let mut resp = client
            .get(format!(
                "http://127.0.0.1:{port}/api/0/buckets/{b}/events?limit=-1"
            ))
            .send()
            .await?
            .error_for_status()?;
        while let Some(chunk) = resp.chunk().await? {
            bytes += chunk.len() as u64;
        }
    }
    Ok((t.elapsed(), bytes))
}

/// Every source event arrived exactly once, with its timestamp and duration within 1 µs and its
/// data equal.
async fn verify(
    port: u16,
    buckets: &[String],
    ack: &AckUpstream,
    n: usize,
) -> anyhow::Result<String> {
    let batches = ack.batches()?;
    // (bucket, event id) → (timestamp ns, duration s, data) as the upstream received it.
    type Received = HashMap<(String, i64), (i64, f64, Map<String, Value>)>;
    let mut got: Received = HashMap::with_capacity(n);
    let mut resent = 0u64;
    for batch in batches {
        for e in batch.events {
            let ts = DateTime::parse_from_rfc3339(&e.timestamp)
                .context("upstream timestamp")?
                .with_timezone(&Utc)
                .timestamp_nanos_opt()
                .context("timestamp range")?;
            let data = e.data_map().context("upstream data")?;
            if got
                .insert((e.bucket_id, e.event_id), (ts, e.duration, data))
                .is_some()
            {
                resent += 1;
            }
        }
    }
    let client = http();
    let (mut matched, mut max_dt, mut max_dd) = (0u64, 0i64, 0f64);
    for b in buckets {
        let events: Vec<Event> = client
            .get(format!(
                "http://127.0.0.1:{port}/api/0/buckets/{b}/events?limit=-1"
            ))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        for ev in events {
            let id = ev.id.context("source event without id")?;
            let Some((ts, dur, data)) = got.remove(&(b.clone(), id)) else {
                bail!("{b}/{id} never reached the upstream");
            };
            let dt = (ts - ev.timestamp.timestamp_nanos_opt().context("range")?).abs();
            let dd = (dur - ev.duration).abs();
            ensure!(dt <= 1_000, "{b}/{id}: timestamp off by {dt} ns");
            ensure!(dd <= 1e-6, "{b}/{id}: duration off by {dd} s");
            ensure!(data == ev.data, "{b}/{id}: data differs");
            max_dt = max_dt.max(dt);
            max_dd = max_dd.max(dd);
            matched += 1;
        }
    }
    ensure!(
        got.is_empty(),
        "{} events upstream that the source does not have",
        got.len()
    );
    ensure!(matched == n as u64, "matched {matched} of {n}");
    Ok(format!(
        "{matched}/{n} events, each once ({resent} re-sent), max |Δ timestamp| {max_dt} ns, max |Δ duration| {:.0} ns, data equal",
        max_dd * 1e9
    ))
}

/// `samay-dev-server` as its own process, with its SQLite store in `work`.
struct DevServer {
    child: Child,
    base_url: String,
}

impl Drop for DevServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl DevServer {
    fn start(work: &Path, name: &str) -> anyhow::Result<DevServer> {
        let port = awserver::free_port();
        let dir = work.join(name);
        std::fs::create_dir_all(&dir)?;
        let child = Command::new(env!("CARGO_BIN_EXE_samay-dev-server"))
            .arg("--bind")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--db")
            .arg(dir.join("dev.sqlite"))
            .arg("--token")
            .arg(run::TOKEN)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("dev-server.log"))?)
            .spawn()
            .context("start samay-dev-server")?;
        let base_url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            ensure!(Instant::now() < deadline, "samay-dev-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(DevServer { child, base_url })
    }

    /// Events held for all devices.
    async fn held(&self) -> anyhow::Result<u64> {
        let v: Value = http()
            .get(format!("{}/v1/inspect", self.base_url))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let mut total = 0;
        for d in v["devices"].as_array().context("inspect: devices")? {
            for b in d["buckets"].as_array().context("inspect: buckets")? {
                total += b["events"].as_u64().context("inspect: events")?;
            }
        }
        Ok(total)
    }
}

/// The same synthetic events, POSTed to Python aw-server in chunks of 1000.
async fn fill_python(port: u16, n: usize) -> anyhow::Result<()> {
    let spec = synthetic::Spec::week(n, 42, end_of_data());
    let client = http();
    let base = format!("http://127.0.0.1:{port}/api/0");
    let buckets = synthetic::buckets(&spec);
    for b in &buckets {
        client
            .post(format!("{base}/buckets/{}", b.info.id))
            .json(&serde_json::json!({
                "client": b.info.client, "type": b.info.bucket_type, "hostname": b.info.hostname
            }))
            .send()
            .await?
            .error_for_status()?;
    }
    let mut pending: Vec<Vec<Value>> = vec![Vec::new(); buckets.len()];
    for (i, raw) in synthetic::events(&spec) {
        let data: Value = serde_json::from_str(&raw.data)?;
        let ts = DateTime::<Utc>::from_timestamp_nanos(raw.timestamp_ns);
        pending[i].push(serde_json::json!({
            "timestamp": ts.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "duration": raw.duration_ns as f64 / 1e9,
            "data": data,
        }));
        if pending[i].len() == 1000 {
            post_events(
                &client,
                &base,
                &buckets[i].info.id,
                std::mem::take(&mut pending[i]),
            )
            .await?;
        }
    }
    for (i, rest) in pending.into_iter().enumerate() {
        if !rest.is_empty() {
            post_events(&client, &base, &buckets[i].info.id, rest).await?;
        }
    }
    Ok(())
}

async fn post_events(
    client: &reqwest::Client,
    base: &str,
    bucket: &str,
    events: Vec<Value>,
) -> anyhow::Result<()> {
    client
        .post(format!("{base}/buckets/{bucket}/events"))
        .json(&events)
        .send()
        .await?
        .error_for_status()?;
    Ok(())
}

/// The daemon over idle cycles: 10 buckets already synced, nothing new.
async fn idle_cost(report: &mut Report, ack: &AckUpstream, work: &Path) -> anyhow::Result<()> {
    const INTERVAL_S: u64 = 5;
    const CYCLES: usize = 5;
    let double = awdouble::spawn(AwDoubleConfig::default()).await?;
    for (host, n, seed) in [
        ("first", 5_000, 7),
        ("second", 5_000, 8),
        ("third", 1_000, 9),
    ] {
        let mut spec = synthetic::Spec::week(n, seed, end_of_data());
        spec.hostname = host.into();
        double.load_synthetic(&spec)?;
    }
    // 3 × 4 buckets; two fewer make ten.
    let mut ids = double.bucket_ids();
    ids.sort();
    for id in ids.iter().take(2) {
        double.delete_bucket(id)?;
    }
    let buckets = double.bucket_ids().len();
    ensure!(buckets == 10, "expected 10 buckets, have {buckets}");

    let home = Home::new(
        work,
        "idle",
        &ack.base_url(),
        &format!("sync_interval = {INTERVAL_S}"),
    )?;
    run::once(&home, double.port())?;
    ack.clear();
    let mut child = home
        .command(double.port())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start the daemon")?;
    let pid = child.id();
    let measured = async {
        // The first cycle (it also creates the status bucket) is not idle; then whole cycles.
        quiet_after_cycle(&double).await?;
        let mut cpu = Vec::new();
        let mut requests = Vec::new();
        let mut between = Vec::new();
        for _ in 0..CYCLES {
            let cpu0 = procfs::cpu_ns(pid)?;
            let req0 = double.requests();
            quiet_after_cycle(&double).await?;
            cpu.push(procfs::cpu_ns(pid)? - cpu0);
            requests.push(double.requests() - req0);
            // Between two cycles: nothing should run at all.
            // (A second first, for the cycle's last state write after its last request.)
            tokio::time::sleep(Duration::from_secs(1)).await;
            let sw0 = procfs::context_switches(pid)?;
            tokio::time::sleep(Duration::from_secs(INTERVAL_S - 3)).await;
            between.push(procfs::context_switches(pid)?.saturating_sub(sw0));
        }
        let rss = procfs::status_kb(pid, "VmRSS")?;
        let hwm = procfs::status_kb(pid, "VmHWM")?;
        anyhow::Ok((cpu, requests, between, rss, hwm))
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let (cpu, requests, between, rss, hwm) = measured?;
    let ms: Vec<String> = cpu
        .iter()
        .map(|ns| format!("{:.1}", *ns as f64 / 1e6))
        .collect();
    report.idle.push(format!(
        "CPU per idle cycle: {} ms (sum of the threads' `/proc/<pid>/task/*/schedstat` run time across each cycle)",
        ms.join(", ")
    ));
    report.idle.push(format!(
        "requests to aw-server per cycle: {} for {buckets} synced buckets (server info, bucket list and the status-bucket heartbeat included); batches sent upstream: {}",
        requests.iter().map(u64::to_string).collect::<Vec<_>>().join(", "),
        ack.requests()
    ));
    report.idle.push(format!(
        "context switches of all threads in {} s between two cycles: {}",
        INTERVAL_S - 3,
        between
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    ));
    report.idle.push(format!(
        "RSS after {CYCLES} idle cycles: {:.1} MiB (peak {:.1} MiB, VmRSS/VmHWM)",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    ));
    Ok(())
}

/// Waits for the next cycle to start (a request reaches the double) and end (no request for
/// 500 ms). Bounded: fails after 60 s.
async fn quiet_after_cycle(double: &AwDouble) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let start = double.requests();
    while double.requests() == start {
        ensure!(Instant::now() < deadline, "no cycle started within 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut last = double.requests();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = double.requests();
        if now == last {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the cycle did not end within 60 s"
        );
        last = now;
    }
}
