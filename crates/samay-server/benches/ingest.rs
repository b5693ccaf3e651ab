//! Ingest on PostgreSQL: DEVICES simulated devices (of USERS users) send BATCHES gzip'd batches
//! of 500 events each, all at once, to one samay-server process (in this process, release
//! build) on a throwaway cluster with fsync on. Prints events stored per second and the p50 /
//! p99 batch latency. The bodies are built and compressed before the clock starts: the
//! measurement is the server's (gunzip, parse, validate, store) and PostgreSQL's.
//!
//! Where the 2 cores went is printed too: CPU time of the client's threads (its own runtime),
//! of the server's (the main runtime) and of PostgreSQL's processes. `BENCH_PG_STATS=1` loads
//! pg_stat_statements and prints the statements by total time (mean time includes lock waits).
//!
//!     cargo bench -p samay-server --bench ingest
//!     BENCH_DEVICES=50 BENCH_USERS=25 BENCH_BATCHES=20 cargo bench -p samay-server --bench ingest
//!     BENCH_PG_STATS=1 cargo bench -p samay-server --bench ingest
//!     BENCH_RATE=50000 cargo bench -p samay-server --bench ingest   # paced: latency at that rate
//!
//! Without `BENCH_RATE` every device sends its next batch as soon as the last is answered (a
//! backlog): then by Little's law the mean latency is devices / (batches per second) — 500 ms
//! at 50 devices and 100 batches (50,000 events) a second, whatever the server does. With
//! `BENCH_RATE=N` the devices together offer N events a second, evenly spread, and a batch's
//! latency counts from when it was due: the latency a device sees at that load.

use std::time::{Duration, Instant};

use uuid::Uuid;

mod support;

use support::{body, enable_pg_stats, env_usize, print_pg_stats, Rig, EVENTS_PER_BATCH};

fn main() -> anyhow::Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("ingest: a benchmark; run it with `cargo bench -p samay-server --bench ingest`");
        return Ok(());
    }
    let devices = env_usize("BENCH_DEVICES", 50)?;
    let users = env_usize("BENCH_USERS", 25)?.clamp(1, devices);
    let batches = env_usize("BENCH_BATCHES", 20)?;
    let rate = env_usize("BENCH_RATE", 0)?;
    // Each device's interval between batches for `rate` events a second in all.
    let pace = (rate > 0)
        .then(|| Duration::from_secs_f64((devices * EVENTS_PER_BATCH) as f64 / rate as f64));
    let pg_stats = std::env::var("BENCH_PG_STATS").is_ok_and(|v| v != "0");
    let rig = Rig::new(users)?;
    let rig = &rig;
    rig.server_rt.block_on(async move {
        if pg_stats {
            enable_pg_stats(&rig.cluster, &rig.url).await?;
        }
        let server = rig.server().await?;
        let endpoint = format!("{}/v1/events/batch", server.base_url());
        let mut work = Vec::new();
        for d in 0..devices {
            let device = Uuid::new_v4();
            let bodies = (0..batches)
                .map(|n| body(device, n))
                .collect::<anyhow::Result<Vec<_>>>()?;
            work.push((rig.tokens[d % users].clone(), bodies));
        }
        let cpu_before = rig.cpu()?;
        let started = Instant::now();
        let (mut latencies, refused) = rig.send(&endpoint, work, pace).await?;
        let wall = started.elapsed();
        let cpu = rig.cpu()? - cpu_before;
        latencies.sort();
        let at = |q: f64| {
            latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)]
        };
        let events = latencies.len() * EVENTS_PER_BATCH;
        let offered = match rate {
            0 => "each device sending as fast as it is answered".to_string(),
            r => format!("offered {r} events/s"),
        };
        println!(
            "ingest on PostgreSQL (fsync on): {devices} devices of {users} users, {batches} batches of {EVENTS_PER_BATCH} each, {offered}: \
             {events} events in {:.2} s = {:.0} events/s; batch latency p50 {:.0} ms, p99 {:.0} ms; {refused} answers 503 (retried)",
            wall.as_secs_f64(),
            events as f64 / wall.as_secs_f64(),
            at(0.50).as_secs_f64() * 1000.0,
            at(0.99).as_secs_f64() * 1000.0,
        );
        println!(
            "CPU time during the run ({:.1} s wall × 2 cores = {:.1} s): {cpu}",
            wall.as_secs_f64(),
            2.0 * wall.as_secs_f64(),
        );
        if pg_stats {
            print_pg_stats(&rig.url).await?;
        }
        server.shutdown().await;
        Ok::<Duration, anyhow::Error>(wall)
    })?;
    Ok(())
}
