//! The pull benchmark (issue 14): another device's events, from the upstream's change feed into
//! this device's aw-server, against the floor of inserting the same events there with one bulk
//! request per bucket, in the same run:
//!
//! * the upstream: `samay-server` on its embedded SQLite store (its own process, rate limit
//!   off: the benchmark measures the pull, not the server's protection against abuse);
//! * the other device: the aw-server-rust stand-in with N synthetic events in four buckets
//!   (seed 42, a week), pushed to the upstream by `aw-sync-samay --once` (setup, not measured);
//! * the target: the real Python aw-server 0.12 (100k events) and the stand-in in its
//!   aw-server-rust mode (`samay-aw-double --storage sqlite`: aw-server-rust's schema, index
//!   and statements; 1M events), a fresh one for each floor and each pull;
//! * the floor: the source's events read with one `limit=-1` GET per bucket, then POSTed into
//!   a new bucket of the target with ONE request per bucket, bodies encoded before the clock
//!   starts — what no client of that aw-server can beat;
//! * the pull: the shipped binary `aw-sync-samay --once` with `sync.pull = true` from a fresh
//!   state (its own device id), into another fresh aw-server, as a child process: wall, its
//!   CPU (user + sys, `wait4`), its peak RSS (`VmHWM`), the target's CPU;
//!   then every pulled bucket checked against its source bucket (timestamp to the
//!   millisecond, duration to the microsecond, data equal, count equal), and an idle
//!   `--once` after it (the target's requests counted where the stand-in counts them).
//!
//! ```text
//! BENCH_PULL=1 bash scripts/bench.sh                                   # both targets
//! BENCH_PULL=1 BENCH_PULL_RUST=0 BENCH_PULL_REPEAT=3 bash scripts/bench.sh   # Python only
//! ```
//! `BENCH_PULL_PYTHON` / `BENCH_PULL_RUST`: event counts (0 skips that target);
//! `BENCH_PULL_REPEAT`: repetitions per target (floor and pull each time, fresh target).
//! The report (markdown) goes to stdout and to `target/bench-pull.md`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use serde_json::{Map, Value};

use samay_testkit::{awserver, procfs};

#[path = "support/run.rs"]
mod run;
#[path = "support/source.rs"]
mod source;

use run::{Home, Usage};
use source::SqliteDouble;

const MIB: f64 = 1024.0 * 1024.0;

fn count(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().with_context(|| format!("{name}: a count")),
        Err(_) => Ok(default),
    }
}

fn main() -> anyhow::Result<()> {
    // `cargo test --all-targets` runs bench targets without `--bench`: nothing to measure there.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("pull: a benchmark; run it with `BENCH_PULL=1 bash scripts/bench.sh`");
        return Ok(());
    }
    let python_n = count("BENCH_PULL_PYTHON", 100_000)?;
    let rust_n = count("BENCH_PULL_RUST", 1_000_000)?;
    let repeat = count("BENCH_PULL_REPEAT", 2)?.max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let work = tempfile::Builder::new()
        .prefix("aw-sync-samay-bench-pull-")
        .tempdir()?;
    let mut rows = Vec::new();
    rt.block_on(async {
        for (kind, n) in [(Kind::Python, python_n), (Kind::Rust, rust_n)] {
            if n > 0 {
                bench_target(&mut rows, kind, n, repeat, work.path()).await?;
            }
        }
        anyhow::Ok(())
    })?;
    let text = render(&rows);
    println!("{text}");
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-pull.md");
    std::fs::write(&out, &text).with_context(|| format!("write {}", out.display()))?;
    eprintln!("bench: report written to {}", out.display());
    Ok(())
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Python,
    Rust,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Python => "Python aw-server 0.12",
            Kind::Rust => "aw-server-rust stand-in (SQLite)",
        }
    }
}

/// The aw-server the pull writes into, fresh for each repetition.
enum Target {
    Python(awserver::AwServer),
    Rust(SqliteDouble),
}

impl Target {
    async fn start(kind: Kind, work: &Path, name: &str) -> anyhow::Result<Target> {
        Ok(match kind {
            Kind::Python => {
                Target::Python(tokio::task::spawn_blocking(awserver::AwServer::start).await?)
            }
            Kind::Rust => Target::Rust(SqliteDouble::start(work, name, 0)?),
        })
    }

    fn port(&self) -> u16 {
        match self {
            Target::Python(p) => p.port(),
            Target::Rust(d) => d.port,
        }
    }

    fn cpu(&self) -> Duration {
        match self {
            Target::Rust(d) => d.cpu(),
            Target::Python(p) => p
                .pid()
                .and_then(|p| procfs::process_cpu(p).ok())
                .unwrap_or_default(),
        }
    }

    /// Requests served so far (the stand-in counts them; Python does not).
    async fn requests(&self) -> Option<u64> {
        match self {
            Target::Rust(d) => d.requests().await,
            Target::Python(_) => None,
        }
    }
}

/// `samay-server` on its embedded SQLite store, as an operator runs it, with one static token.
struct Upstream {
    child: Child,
    base: String,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Upstream {
    fn cpu(&self) -> Duration {
        procfs::process_cpu(self.child.id()).unwrap_or_default()
    }

    fn start(work: &Path, name: &str) -> anyhow::Result<Upstream> {
        let dir = work.join(name);
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("samay-server.toml");
        std::fs::write(
            &config,
            format!(
                "bind = \"127.0.0.1:0\"\ndatabase_url = \"sqlite://{}\"\n[limits]\nrate_per_minute = 0\n",
                dir.join("samay.sqlite").display()
            ),
        )?;
        let mut cmd = Command::new(samay_testkit::built_binary("samay-server"));
        cmd.arg("--config")
            .arg(&config)
            .env("SAMAY_STATIC_TOKENS", format!("bench={}", run::TOKEN))
            .env_remove("SAMAY_ISSUER")
            .env_remove("SAMAY_BIND")
            .env_remove("SAMAY_DATABASE_URL")
            .env_remove("RUST_LOG")
            .stderr(std::fs::File::create(dir.join("samay-server.log"))?);
        let (child, base) = samay_testkit::server::spawn_listening(cmd);
        Ok(Upstream { child, base })
    }
}

/// One measured row.
struct Row {
    target: &'static str,
    n: usize,
    run: String,
    wall: f64,
    ratio: Option<f64>,
    target_cpu: f64,
    /// samay-server's CPU (serving the feed), s.
    upstream_cpu: Option<f64>,
    sync: Option<Usage>,
    requests: Option<u64>,
}

fn render(rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Machine: {} CPUs, {}; aw-sync-samay {} (release), upstream samay-server on SQLite.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|k| format!("Linux {}", k.trim()))
            .unwrap_or_default(),
        env!("CARGO_PKG_VERSION")
    );
    s.push_str("| target | events | run | wall s | × floor | target CPU s | upstream CPU s | pull CPU s (user + sys) | peak RSS MiB | target requests |\n");
    s.push_str("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in rows {
        let (cpu, rss) = match r.sync {
            Some(u) => (
                format!("{:.2} + {:.2}", u.user.as_secs_f64(), u.sys.as_secs_f64()),
                format!("{:.1}", u.max_rss as f64 / MIB),
            ),
            None => ("–".into(), "–".into()),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.2} | {} | {:.2} | {} | {cpu} | {rss} | {} |",
            r.target,
            r.n,
            r.run,
            r.wall,
            r.ratio.map_or("–".into(), |x| format!("{x:.2}")),
            r.target_cpu,
            r.upstream_cpu.map_or("–".into(), |x| format!("{x:.2}")),
            r.requests.map_or("–".into(), |x| x.to_string()),
        );
    }
    s
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

async fn get_json<T: serde::de::DeserializeOwned>(url: String) -> anyhow::Result<T> {
    Ok(http()
        .get(&url)
        .send()
        .await?
        .error_for_status()
        .with_context(|| url.clone())?
        .json()
        .await?)
}

async fn buckets(port: u16) -> anyhow::Result<Map<String, Value>> {
    get_json(format!("http://127.0.0.1:{port}/api/0/buckets/")).await
}

async fn events(port: u16, bucket: &str) -> anyhow::Result<Vec<Value>> {
    get_json(format!(
        "http://127.0.0.1:{port}/api/0/buckets/{bucket}/events?limit=-1"
    ))
    .await
}

/// Setup once per target kind (upstream, the other device, its push), then per repetition a
/// fresh target: the floor, the pull, the check, an idle `--once`.
async fn bench_target(
    rows: &mut Vec<Row>,
    kind: Kind,
    n: usize,
    repeat: usize,
    work: &Path,
) -> anyhow::Result<()> {
    let tag = match kind {
        Kind::Python => "py",
        Kind::Rust => "rs",
    };
    let upstream = Upstream::start(work, &format!("up-{tag}"))?;
    let t = Instant::now();
    let source = SqliteDouble::start(work, &format!("src-{tag}"), n)?;
    // Before the push, which adds the sidecar's own status bucket (never pushed).
    let source_buckets: Vec<(String, Value)> = buckets(source.port).await?.into_iter().collect();
    let home_b = Home::new(work, &format!("b-{tag}"), &upstream.base, "")?;
    let port = source.port;
    let pushed = tokio::task::spawn_blocking(move || run::once(&home_b, port)).await??;
    eprintln!(
        "bench: {n} events loaded and pushed by the other device in {:.1?} (push {:.1} s)",
        t.elapsed(),
        pushed.wall.as_secs_f64()
    );

    for r in 0..repeat {
        // The floor and the pull each into a fresh aw-server: neither pays for the other's
        // events in the database.
        let target = Target::start(kind, work, &format!("floor-{tag}-{r}")).await?;
        let tport = target.port();

        // The floor: one bulk POST per bucket, bodies encoded beforehand.
        let mut bodies = Vec::new();
        for (i, (id, meta)) in source_buckets.iter().enumerate() {
            let mut list = events(source.port, id).await?;
            for e in &mut list {
                if let Some(o) = e.as_object_mut() {
                    o.remove("id");
                }
            }
            let floor_id = format!("floor-{i}");
            http()
                .post(format!("http://127.0.0.1:{tport}/api/0/buckets/{floor_id}"))
                .json(&serde_json::json!({
                    "client": meta["client"], "type": meta["type"], "hostname": meta["hostname"]
                }))
                .send()
                .await?
                .error_for_status()?;
            bodies.push((floor_id, serde_json::to_vec(&list)?));
        }
        let cpu0 = target.cpu();
        let t = Instant::now();
        for (floor_id, body) in bodies {
            http()
                .post(format!(
                    "http://127.0.0.1:{tport}/api/0/buckets/{floor_id}/events"
                ))
                .header("content-type", "application/json")
                .body(body)
                .timeout(Duration::from_secs(3600))
                .send()
                .await?
                .error_for_status()?;
        }
        let floor = t.elapsed().as_secs_f64();
        let floor_cpu = (target.cpu().saturating_sub(cpu0)).as_secs_f64();
        eprintln!("bench: {} {n}: floor {floor:.2} s", kind.name());
        rows.push(Row {
            target: kind.name(),
            n,
            run: format!("floor: one bulk POST per bucket ({})", source_buckets.len()),
            wall: floor,
            ratio: Some(1.0),
            target_cpu: floor_cpu,
            upstream_cpu: None,
            sync: None,
            requests: None,
        });

        drop(target);
        let target = Target::start(kind, work, &format!("dst-{tag}-{r}")).await?;
        let tport = target.port();

        // The pull, by the shipped binary from a fresh state.
        let home = Home::new(work, &format!("a-{tag}-{r}"), &upstream.base, "pull = true")?;
        let h = Home {
            dir: home.dir.clone(),
            config: home.config.clone(),
        };
        let cpu0 = target.cpu();
        let up0 = upstream.cpu();
        let req0 = target.requests().await;
        let usage = tokio::task::spawn_blocking(move || run::once(&h, tport)).await??;
        let req1 = target.requests().await;
        let pull_cpu = target.cpu().saturating_sub(cpu0).as_secs_f64();
        let up_cpu = upstream.cpu().saturating_sub(up0).as_secs_f64();
        let wall = usage.wall.as_secs_f64();
        eprintln!(
            "bench: {} {n}: pull {wall:.2} s ({:.2}× floor), CPU {:.2} + {:.2} s, peak RSS {:.1} MiB",
            kind.name(),
            wall / floor,
            usage.user.as_secs_f64(),
            usage.sys.as_secs_f64(),
            usage.max_rss as f64 / MIB
        );
        rows.push(Row {
            target: kind.name(),
            n,
            run: "pull: `aw-sync-samay --once`, `sync.pull = true`, fresh state".into(),
            wall,
            ratio: Some(wall / floor),
            target_cpu: pull_cpu,
            upstream_cpu: Some(up_cpu),
            sync: Some(usage),
            requests: req0.zip(req1).map(|(a, b)| b.saturating_sub(a + 1)),
        });

        check_copies(source.port, &source_buckets, tport, n).await?;

        // Nothing new: what an idle pull costs.
        let cpu0 = target.cpu();
        let up0 = upstream.cpu();
        let req0 = target.requests().await;
        let h = Home {
            dir: home.dir.clone(),
            config: home.config.clone(),
        };
        let usage = tokio::task::spawn_blocking(move || run::once(&h, tport)).await??;
        let req1 = target.requests().await;
        rows.push(Row {
            target: kind.name(),
            n,
            run: "then: `--once` again, nothing new".into(),
            wall: usage.wall.as_secs_f64(),
            ratio: None,
            target_cpu: target.cpu().saturating_sub(cpu0).as_secs_f64(),
            upstream_cpu: Some(upstream.cpu().saturating_sub(up0).as_secs_f64()),
            sync: Some(usage),
            requests: req0.zip(req1).map(|(a, b)| b.saturating_sub(a + 1)),
        });
    }
    Ok(())
}

/// Every source bucket has its pulled copy in the target, event for event.
async fn check_copies(
    source: u16,
    source_buckets: &[(String, Value)],
    target: u16,
    n: usize,
) -> anyhow::Result<()> {
    let listed = buckets(target).await?;
    let mut total = 0;
    for (id, _) in source_buckets {
        let prefix = format!("{id}-synced-from-");
        let copy = listed
            .keys()
            .find(|k| k.starts_with(&prefix))
            .with_context(|| format!("no pulled copy of {id} in the target"))?;
        let want = content(events(source, id).await?)?;
        let got = content(events(target, copy).await?)?;
        ensure!(
            want.len() == got.len(),
            "{copy}: {} events, the source {}",
            got.len(),
            want.len()
        );
        // Durations to the microsecond, ±1: Python aw-server rounds a duration to whole
        // microseconds from its binary value, half to even.
        if let Some((w, g)) = want
            .iter()
            .zip(&got)
            .find(|(w, g)| w.0 != g.0 || w.2 != g.2 || (w.1 - g.1).abs() > 1)
        {
            anyhow::bail!("{copy} differs from {id}: the source has {w:?}, the copy {g:?}");
        }
        total += got.len();
    }
    ensure!(total == n, "{total} events pulled, {n} expected");
    eprintln!("bench: {total} events checked, each once, equal to the source");
    Ok(())
}

/// Events as (timestamp ms, duration µs, data), sorted: what both aw-servers keep alike.
fn content(list: Vec<Value>) -> anyhow::Result<Vec<(i64, i64, String)>> {
    let mut out = Vec::with_capacity(list.len());
    for mut e in list {
        let ts = e["timestamp"].as_str().context("timestamp")?;
        let ts = chrono::DateTime::parse_from_rfc3339(ts)?.timestamp_millis();
        let dur = e["duration"].as_f64().context("duration")?;
        let data = e.get_mut("data").map(Value::take).unwrap_or_default();
        out.push((ts, (dur * 1e6).round() as i64, data.to_string()));
    }
    out.sort();
    Ok(out)
}
