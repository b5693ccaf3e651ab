//! What the server's benchmarks share: batches as the sidecar sends them, and where the CPU
//! time went (this process's threads by name, PostgreSQL's processes).

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use samay_api::{BatchRequest, BucketMeta, UpEvent};
use samay_server::auth::StaticTokens;
use samay_server::{DatabaseUrl, Limits, ServerConfig};
use samay_testkit::postgres::PgCluster;
use serde_json::value::RawValue;
use uuid::Uuid;

pub const EVENTS_PER_BATCH: usize = 500;

pub fn env_usize(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .with_context(|| format!("{name}: a number")),
        Err(_) => Ok(default),
    }
}

/// A batch as the sidecar sends it: realistic window events, gzip level 1.
pub fn body(device: Uuid, n: usize) -> anyhow::Result<Vec<u8>> {
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

/// CPU time so far of this process's threads whose name starts with `prefix`.
pub fn threads_cpu(prefix: &str) -> Duration {
    let mut ns = 0u64;
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if name.starts_with(prefix) {
            let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
            ns += stat
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Duration::from_nanos(ns)
}

/// CPU time so far of the cluster's postmaster and its children (backends, WAL writer, …).
pub fn postgres_cpu(cluster: &samay_testkit::postgres::PgCluster) -> anyhow::Result<Duration> {
    let pid_file = std::fs::read_to_string(cluster.dir().join("data/postmaster.pid"))?;
    let postmaster: u32 = pid_file
        .lines()
        .next()
        .context("postmaster.pid")?
        .trim()
        .parse()?;
    let mut total = samay_testkit::procfs::process_cpu(postmaster)?;
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1)?.parse::<u32>().ok());
        if ppid == Some(postmaster) {
            total += samay_testkit::procfs::process_cpu(pid).unwrap_or_default();
        }
    }
    Ok(total)
}

/// Loads pg_stat_statements (a restart) and creates it in `url`'s database.
pub async fn enable_pg_stats(
    cluster: &samay_testkit::postgres::PgCluster,
    url: &str,
) -> anyhow::Result<()> {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(url).await?;
    sqlx::query("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
        .execute(&mut c)
        .await?;
    c.close().await?;
    cluster.stop_server();
    cluster.start_server();
    let mut c = sqlx::PgConnection::connect(url).await?;
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .execute(&mut c)
        .await?;
    sqlx::query("SELECT pg_stat_statements_reset()")
        .execute(&mut c)
        .await?;
    Ok(())
}

pub async fn print_pg_stats(url: &str) -> anyhow::Result<()> {
    use sqlx::{Connection, Row};
    let mut c = sqlx::PgConnection::connect(url).await?;
    let rows = sqlx::query(
        "SELECT calls, total_exec_time, mean_exec_time, rows, left(regexp_replace(query, '\\s+', ' ', 'g'), 110)
         FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 15",
    )
    .fetch_all(&mut c)
    .await?;
    println!("pg_stat_statements, by total time:");
    println!(
        "{:>8} {:>10} {:>8} {:>9}  query",
        "calls", "total ms", "mean ms", "rows"
    );
    for r in rows {
        println!(
            "{:>8} {:>10.0} {:>8.2} {:>9}  {}",
            r.try_get::<i64, _>(0)?,
            r.try_get::<f64, _>(1)?,
            r.try_get::<f64, _>(2)?,
            r.try_get::<i64, _>(3)?,
            r.try_get::<String, _>(4)?
        );
    }
    Ok(())
}

/// CPU time so far: the client's threads, the server's, PostgreSQL's processes.
#[derive(Clone, Copy)]
pub struct Cpu {
    pub client: Duration,
    pub server: Duration,
    pub postgres: Duration,
}

impl std::ops::Sub for Cpu {
    type Output = Cpu;
    fn sub(self, o: Cpu) -> Cpu {
        Cpu {
            client: self.client.saturating_sub(o.client),
            server: self.server.saturating_sub(o.server),
            postgres: self.postgres.saturating_sub(o.postgres),
        }
    }
}

impl std::fmt::Display for Cpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "client {:.1} s, server {:.1} s, PostgreSQL {:.1} s",
            self.client.as_secs_f64(),
            self.server.as_secs_f64(),
            self.postgres.as_secs_f64()
        )
    }
}

/// A throwaway cluster with fsync on, one samay-server on it (this process, its runtime's
/// threads named `samay-server`), and a runtime for the simulated clients (`bench-client`).
pub struct Rig {
    pub cluster: PgCluster,
    pub url: String,
    pub server_rt: tokio::runtime::Runtime,
    pub client_rt: tokio::runtime::Runtime,
    pub tokens: Vec<String>,
}

impl Rig {
    pub fn new(users: usize) -> anyhow::Result<Rig> {
        let cluster = PgCluster::start_durable();
        let url = cluster.database();
        Ok(Rig {
            cluster,
            url,
            server_rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("samay-server")
                .enable_all()
                .build()?,
            client_rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("bench-client")
                .enable_all()
                .build()?,
            tokens: (0..users)
                .map(|u| format!("bench-token-{u:08}-xxxxxxxx"))
                .collect(),
        })
    }

    /// Starts the server (call within `server_rt`).
    pub async fn server(&self) -> anyhow::Result<samay_server::Server> {
        let auth = StaticTokens::new(
            self.tokens
                .iter()
                .enumerate()
                .map(|(u, t)| (format!("u{u}"), t.clone())),
        );
        samay_server::spawn_server(
            ServerConfig {
                bind: "127.0.0.1:0".parse()?,
                database: DatabaseUrl::Postgres(self.url.clone()),
                limits: Limits {
                    rate_per_minute: 0,
                    ..Limits::default()
                },
                behind_proxy: false,
            },
            Arc::new(auth),
        )
        .await
    }

    pub fn cpu(&self) -> anyhow::Result<Cpu> {
        Ok(Cpu {
            client: threads_cpu("bench-client"),
            server: threads_cpu("samay-server"),
            postgres: postgres_cpu(&self.cluster)?,
        })
    }

    /// Sends every device's bodies (token, gzip'd batches), the devices at once, each its
    /// batches one after another; the latency of every batch and the number of 503 answers.
    /// Without `pace` a device sends its next batch as soon as the last is answered (a backlog
    /// being caught up: latency is then mostly waiting behind the other devices); with it,
    /// device d sends batch i at `start + (i + d / devices) × pace`, and a batch's latency
    /// counts from that time (a late start is the server's delay too).
    pub async fn send(
        &self,
        endpoint: &str,
        work: Vec<(String, Vec<Vec<u8>>)>,
        pace: Option<Duration>,
    ) -> anyhow::Result<(Vec<Duration>, usize)> {
        let http = reqwest::Client::new();
        let start = tokio::time::Instant::now();
        let devices = work.len().max(1) as u32;
        let tasks: Vec<_> = work
            .into_iter()
            .enumerate()
            .map(|(d, (token, bodies))| {
                let (http, endpoint) = (http.clone(), endpoint.to_string());
                self.client_rt.spawn(async move {
                    let mut latencies = Vec::new();
                    let mut refused = 0usize;
                    for (i, b) in bodies.into_iter().enumerate() {
                        let t = match pace {
                            Some(pace) => {
                                let at = start + pace * i as u32 + pace * d as u32 / devices;
                                tokio::time::sleep_until(at).await;
                                at.into_std()
                            }
                            None => Instant::now(),
                        };
                        // As the sidecar does: a 503 (the server shedding load) is retried
                        // after a pause; the latency is the batch's, retries included.
                        for attempt in 0.. {
                            let r = http
                                .post(&endpoint)
                                .bearer_auth(&token)
                                .header("Content-Type", "application/json")
                                .header("Content-Encoding", "gzip")
                                .body(b.clone())
                                .send()
                                .await?;
                            if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE
                                && attempt < 10
                            {
                                refused += 1;
                                tokio::time::sleep(Duration::from_millis(500)).await;
                                continue;
                            }
                            anyhow::ensure!(
                                r.status().is_success(),
                                "batch answered {}",
                                r.status()
                            );
                            break;
                        }
                        latencies.push(t.elapsed());
                    }
                    Ok::<_, anyhow::Error>((latencies, refused))
                })
            })
            .collect();
        let mut latencies = Vec::new();
        let mut refused = 0;
        for t in tasks {
            let (l, r) = t.await??;
            latencies.extend(l);
            refused += r;
        }
        Ok((latencies, refused))
    }
}
