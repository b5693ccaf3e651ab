//! Ingest on PostgreSQL: DEVICES simulated devices (of USERS users) send BATCHES gzip'd batches
//! of 500 events each, all at once, to one samay-server process (in this process, release
//! build) on a throwaway cluster with fsync on. Prints events stored per second and the p50 /
//! p99 batch latency. The bodies are built and compressed before the clock starts: the
//! measurement is the server's (gunzip, parse, validate, store) and PostgreSQL's.
//!
//!     cargo bench -p samay-server --bench ingest
//!     BENCH_DEVICES=50 BENCH_USERS=25 BENCH_BATCHES=20 cargo bench -p samay-server --bench ingest

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use samay_api::{BatchRequest, BucketMeta, UpEvent};
use samay_server::auth::StaticTokens;
use samay_server::{DatabaseUrl, Limits, ServerConfig};
use serde_json::value::RawValue;
use uuid::Uuid;

const EVENTS_PER_BATCH: usize = 500;

fn env_usize(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .with_context(|| format!("{name}: a number")),
        Err(_) => Ok(default),
    }
}

/// A batch as the sidecar sends it: realistic window events, gzip level 1.
fn body(device: Uuid, n: usize) -> anyhow::Result<Vec<u8>> {
    let bucket = format!("aw-watcher-window_{device}");
    let events = (0..EVENTS_PER_BATCH)
        .map(|i| {
            let id = (n * EVENTS_PER_BATCH + i) as i64;
            let data = format!(
                "{{\"app\":\"firefox\",\"title\":\"A page title number {id} - Mozilla Firefox\"}}"
            );
            Ok(UpEvent {
                bucket_id: bucket.clone(),
                event_id: id,
                hash: format!("{:064x}", id * 7919 + 1),
                timestamp: format!(
                    "2024-05-01T10:{:02}:{:02}.123456789Z",
                    (id / 60) % 60,
                    id % 60
                ),
                duration: 12.5,
                data: RawValue::from_string(data)?,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let batch = BatchRequest {
        batch_id: Uuid::new_v4(),
        device_id: device,
        user_id: None,
        hostname: "bench".into(),
        sync_timestamp: "2024-05-01T11:00:00Z".into(),
        buckets: BTreeMap::from([(
            bucket,
            BucketMeta {
                bucket_type: "currentwindow".into(),
                client: "aw-watcher-window".into(),
                hostname: "bench".into(),
                created: None,
            },
        )]),
        events,
        deletions: Vec::new(),
    };
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&serde_json::to_vec(&batch)?)?;
    Ok(gz.finish()?)
}

fn main() -> anyhow::Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("ingest: a benchmark; run it with `cargo bench -p samay-server --bench ingest`");
        return Ok(());
    }
    let devices = env_usize("BENCH_DEVICES", 50)?;
    let users = env_usize("BENCH_USERS", 25)?.clamp(1, devices);
    let batches = env_usize("BENCH_BATCHES", 20)?;
    let cluster = samay_testkit::postgres::PgCluster::start_durable();
    let url = cluster.database();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let tokens: Vec<String> = (0..users).map(|u| format!("bench-token-{u:08}-xxxxxxxx")).collect();
        let auth = StaticTokens::new(tokens.iter().enumerate().map(|(u, t)| (format!("u{u}"), t.clone())));
        let server = samay_server::spawn_server(
            ServerConfig {
                bind: "127.0.0.1:0".parse()?,
                database: DatabaseUrl::Postgres(url),
                limits: Limits { rate_per_minute: 0, ..Limits::default() },
                behind_proxy: false,
            },
            Arc::new(auth),
        )
        .await?;
        let endpoint = format!("{}/v1/events/batch", server.base_url());
        let mut work = Vec::new();
        for d in 0..devices {
            let device = Uuid::new_v4();
            let bodies = (0..batches).map(|n| body(device, n)).collect::<anyhow::Result<Vec<_>>>()?;
            work.push((tokens[d % users].clone(), bodies));
        }
        let http = reqwest::Client::new();
        let started = Instant::now();
        let tasks: Vec<_> = work
            .into_iter()
            .map(|(token, bodies)| {
                let (http, endpoint) = (http.clone(), endpoint.clone());
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    let mut refused = 0usize;
                    for b in bodies {
                        // As the sidecar does: a 503 (the server shedding load) is retried
                        // after a pause; the latency is the batch's, retries included.
                        let t = Instant::now();
                        for attempt in 0.. {
                            let r = http
                                .post(&endpoint)
                                .bearer_auth(&token)
                                .header("Content-Type", "application/json")
                                .header("Content-Encoding", "gzip")
                                .body(b.clone())
                                .send()
                                .await?;
                            if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE && attempt < 10 {
                                refused += 1;
                                tokio::time::sleep(Duration::from_millis(500)).await;
                                continue;
                            }
                            anyhow::ensure!(r.status().is_success(), "batch answered {}", r.status());
                            break;
                        }
                        latencies.push(t.elapsed());
                    }
                    Ok::<_, anyhow::Error>((latencies, refused))
                })
            })
            .collect();
        let mut latencies: Vec<Duration> = Vec::new();
        let mut refused = 0;
        for t in tasks {
            let (l, r) = t.await??;
            latencies.extend(l);
            refused += r;
        }
        let wall = started.elapsed();
        latencies.sort();
        let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
        let events = latencies.len() * EVENTS_PER_BATCH;
        println!(
            "ingest on PostgreSQL (fsync on): {devices} devices of {users} users, {batches} batches of {EVENTS_PER_BATCH} each: \
             {events} events in {:.2} s = {:.0} events/s; batch latency p50 {:.0} ms, p99 {:.0} ms; {refused} answers 503 (retried)",
            wall.as_secs_f64(),
            events as f64 / wall.as_secs_f64(),
            at(0.50).as_secs_f64() * 1000.0,
            at(0.99).as_secs_f64() * 1000.0,
        );
        server.shutdown().await;
        Ok::<_, anyhow::Error>(())
    })
}
