//! An idle daemon never wakes between cycles; a kept connection that died is retried.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use samay_testkit::bin::write_config;
use samay_testkit::daemon::Daemon;
use samay_testkit::devserver::TEST_TOKEN;
use samay_testkit::rig::{series, Rig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::support::*;

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

    // Every thread the daemon has started by now — the runtime's workers, the blocking pool's
    // SQLite and parse threads — runs as a batch job, so its wakeups never preempt aw-server
    // (src/priority.rs).
    let policies = policies(pid);
    assert!(
        policies.len() > 2,
        "the daemon's threads were not read: {policies:?}"
    );
    let not_batch: Vec<_> = policies.values().filter(|(_, p)| *p != 3).collect();
    assert!(
        not_batch.is_empty(),
        "threads of the daemon not under SCHED_BATCH (3): {not_batch:?}"
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
