//! samay-aw-double: the aw-server double, standalone, for manual runs, scripts and the
//! benchmark (which measures its CPU time as the server's).
//!
//! ```sh
//! samay-aw-double --port 5666 --events 1000000 --seed 1 --span-days 7
//! samay-aw-double --storage sqlite --db /tmp/aw.sqlite --events 1000000   # aw-server-rust's costs
//! aw-sync-samay --testing --dev --once
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use samay_aw_double::{synthetic, AwDouble, AwDoubleConfig, Storage};

#[derive(Parser, Debug)]
#[command(
    name = "samay-aw-double",
    version,
    about = "An aw-server stand-in (aw-server-rust's REST API) for tests and benchmarks"
)]
struct Args {
    /// Loopback address to listen on.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    host: IpAddr,
    /// Port; 0 picks a free one (printed on start).
    #[arg(long, default_value_t = 5666)]
    port: u16,
    /// Synthetic events to preload, spread over four watcher buckets.
    #[arg(long, default_value_t = 0)]
    events: usize,
    /// Seed of the synthetic data (same seed, same events).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The synthetic events cover this many days up to now.
    #[arg(long, default_value_t = 7)]
    span_days: u32,
    /// Hostname in `/api/0/info` and in the synthetic bucket ids.
    #[arg(long, default_value = "synthetic")]
    hostname: String,
    /// `memory` (fast) or `sqlite` (aw-server-rust's schema, index and queries: its costs).
    #[arg(long, value_parser = ["memory", "sqlite"], default_value = "memory")]
    storage: String,
    /// With `--storage sqlite`: the database file (kept; loaded only when it holds no
    /// buckets). Without it the SQLite database is in memory.
    #[arg(long, value_name = "FILE")]
    db: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let storage = match args.storage.as_str() {
        "sqlite" => Storage::Sqlite(args.db.clone()),
        _ => {
            anyhow::ensure!(args.db.is_none(), "--db needs --storage sqlite");
            Storage::Memory
        }
    };
    let double = AwDouble::spawn(AwDoubleConfig {
        bind: SocketAddr::new(args.host, args.port),
        hostname: args.hostname.clone(),
        testing: true,
        storage,
    })
    .await?;
    if args.events > 0 && !double.bucket_ids().is_empty() {
        eprintln!(
            "the database already holds buckets {:?}: not loading synthetic events",
            double.bucket_ids()
        );
    } else if args.events > 0 {
        let spec = synthetic::Spec {
            events: args.events,
            seed: args.seed,
            span: chrono::TimeDelta::days(i64::from(args.span_days)),
            end: chrono::Utc::now(),
            hostname: args.hostname.clone(),
        };
        let started = Instant::now();
        let loaded = double
            .load_synthetic(&spec)
            .context("loading synthetic events")?;
        eprintln!(
            "loaded {loaded} synthetic events (seed {}, {} days) in {:.2?}",
            args.seed,
            args.span_days,
            started.elapsed()
        );
    }
    // The one line on stdout: scripts read the URL from it.
    println!("{}", double.base_url());
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    double.shutdown().await;
    Ok(())
}
