//! Reading the change feed on PostgreSQL: one user's EVENTS changes (default 1M, stored first
//! through the batch API by 4 devices at once) read from the start with `GET v1/changes`, pages
//! of the largest `limit`, each parsed as the pull parses it. Prints changes read per second and
//! where the CPU time went (the reader, the server, PostgreSQL); the fill's rate too.
//!
//!     cargo bench -p samay-server --bench feed
//!     BENCH_EVENTS=200000 cargo bench -p samay-server --bench feed
//!     BENCH_PG_STATS=1 cargo bench -p samay-server --bench feed   # + the statements' times

use std::time::Instant;

use samay_api::ChangesResponse;
use uuid::Uuid;

mod support;

use support::{body, enable_pg_stats, env_usize, print_pg_stats, Rig, EVENTS_PER_BATCH};

const DEVICES: usize = 4;
const PAGE: usize = 10_000;

fn main() -> anyhow::Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("feed: a benchmark; run it with `cargo bench -p samay-server --bench feed`");
        return Ok(());
    }
    let events = env_usize("BENCH_EVENTS", 1_000_000)?;
    let batches = events.div_ceil(EVENTS_PER_BATCH * DEVICES);
    let pg_stats = std::env::var("BENCH_PG_STATS").is_ok_and(|v| v != "0");
    let rig = Rig::new(1)?;
    let rig = &rig;
    rig.server_rt.block_on(async move {
        if pg_stats {
            enable_pg_stats(&rig.cluster, &rig.url).await?;
        }
        let server = rig.server().await?;
        let base = server.base_url().trim_end_matches('/').to_string();
        let mut work = Vec::new();
        for _ in 0..DEVICES {
            let device = Uuid::new_v4();
            let bodies = (0..batches)
                .map(|n| body(device, n))
                .collect::<anyhow::Result<Vec<_>>>()?;
            work.push((rig.tokens[0].clone(), bodies));
        }
        let stored = DEVICES * batches * EVENTS_PER_BATCH;
        let started = Instant::now();
        rig.send(&format!("{base}/v1/events/batch"), work, None)
            .await?;
        let fill = started.elapsed();
        eprintln!(
            "feed: {stored} events stored by {DEVICES} devices of one user in {:.1} s ({:.0} events/s)",
            fill.as_secs_f64(),
            stored as f64 / fill.as_secs_f64()
        );
        let token = rig.tokens[0].clone();
        let cpu_before = rig.cpu()?;
        let started = Instant::now();
        // The reader on the client's runtime, so its CPU time is its own.
        let (read, pages) = rig
            .client_rt
            .spawn(async move {
                let http = reqwest::Client::new();
                let (mut after, mut read, mut pages) = (0i64, 0usize, 0usize);
                loop {
                    let page: ChangesResponse = http
                        .get(format!("{base}/v1/changes?after={after}&limit={PAGE}"))
                        .bearer_auth(&token)
                        .send()
                        .await?
                        .error_for_status()?
                        .json()
                        .await?;
                    if page.changes.is_empty() {
                        break;
                    }
                    anyhow::ensure!(
                        page.changes.windows(2).all(|w| w[0].seq < w[1].seq)
                            && page.changes[0].seq > after,
                        "the feed is out of order"
                    );
                    read += page.changes.len();
                    pages += 1;
                    after = page.next;
                }
                Ok::<_, anyhow::Error>((read, pages))
            })
            .await??;
        let wall = started.elapsed();
        let cpu = rig.cpu()? - cpu_before;
        anyhow::ensure!(read == stored, "read {read} changes of {stored}");
        println!(
            "feed on PostgreSQL: {read} changes in {pages} pages of {PAGE} read in {:.2} s = {:.0} changes/s; \
             CPU time ({:.1} s wall × 2 cores = {:.1} s): {cpu}; the fill: {:.0} events/s ({DEVICES} devices of one user)",
            wall.as_secs_f64(),
            read as f64 / wall.as_secs_f64(),
            wall.as_secs_f64(),
            2.0 * wall.as_secs_f64(),
            stored as f64 / fill.as_secs_f64(),
        );
        if pg_stats {
            print_pg_stats(&rig.url).await?;
        }
        server.shutdown().await;
        Ok::<_, anyhow::Error>(())
    })
}
