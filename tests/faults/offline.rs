//! Issue 5: offline for a simulated week, then online — everything is delivered in one
//! catch-up, and the daemon's peak RSS is printed (the benchmark, not this test, holds it to
//! the goal: tests do not assert memory).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use samay_aw_double::{self as awdouble, synthetic, AwDoubleConfig};
use samay_server::{self as devserver, DevServerConfig};
use samay_testkit::bin::{sync_command, write_config};
use samay_testkit::daemon::Daemon;
use samay_testkit::devserver::TEST_TOKEN;
use samay_testkit::exact::assert_upstream_holds_exactly;
use serde_json::Value;

const EVENTS: usize = 100_000;

/// Waits (bounded) until the daemon's stderr holds `needle` `times` times.
async fn wait_for_count(daemon: &mut Daemon, needle: &str, times: usize, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let log = daemon.stderr();
        if log.matches(needle).count() >= times {
            return;
        }
        if let Some(status) = daemon.child.try_wait().expect("try_wait") {
            panic!("daemon exited ({status}); stderr:\n{log}");
        }
        assert!(
            Instant::now() < deadline,
            "daemon did not say {needle:?} {times} times within {within:?}; stderr:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The newest event of the daemon's status bucket in aw-server (the double).
fn last_status(double: &awdouble::AwDouble) -> serde_json::Map<String, Value> {
    let bucket = double
        .bucket_ids()
        .into_iter()
        .find(|b| b.starts_with("aw-sync-samay_"))
        .expect("the daemon made its status bucket");
    let events = double.events(&bucket).expect("status events");
    events.first().expect("a status event").data.clone()
}

/// A daemon (the real binary) runs with the upstream down — its port refuses connections —
/// while aw-server holds 100,000 events spread over the past week: its cycles fail, `--status`
/// says the upstream is unreachable and all 100,000 are pending. Then the upstream comes up on
/// that port, and the next cycle delivers everything: exactly the source's events, one
/// successful cycle, nothing re-sent.
///
/// Settings: `sync_interval = 1` and `max_retries = 0`, so failed cycles come 1 s, 2 s, 4 s
/// apart (the daemon's doubling backoff) instead of minutes; page, batch and queue sizes are
/// the defaults, so the printed peak RSS is that of a default catch-up (of the debug build).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_for_a_week_then_one_catch_up_delivers_everything() {
    let started = Instant::now();
    let double = awdouble::spawn(AwDoubleConfig::default())
        .await
        .expect("double starts");
    let spec = synthetic::Spec::week(EVENTS, 5, Utc::now() - TimeDelta::minutes(1));
    assert_eq!(double.load_synthetic(&spec).expect("load"), EVENTS);
    let buckets = double.bucket_ids();

    // The upstream's port, free for now: connections are refused until it comes up.
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        probe.local_addr().expect("addr").port()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let config = write_config(
        &home,
        &format!("http://127.0.0.1:{port}"),
        "sync_interval = 1\nmax_retries = 0",
    );
    let mut daemon = Daemon::spawn(
        &mut sync_command(&home, double.port(), &config, TEST_TOKEN),
        dir.path(),
    );

    // Peak RSS, sampled until the process is gone.
    let peak_kb = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (pid, peak) = (daemon.pid(), peak_kb.clone());
        tokio::spawn(async move {
            // `VmHWM`, not `ru_maxrss`: that would carry the parent's pre-exec high-water mark.
            while let Ok(kb) = samay_testkit::procfs::status_kb(pid, "VmHWM") {
                peak.fetch_max(kb, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    wait_for_count(&mut daemon, "sync cycle failed", 2, Duration::from_secs(60)).await;
    let out = sync_command(&home, double.port(), &config, TEST_TOKEN)
        .args(["--status", "--json"])
        .output()
        .expect("--status");
    let status: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "--status --json: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(status["upstream"]["reachable"], false, "{status:#}");
    assert_eq!(status["aw_server"]["reachable"], true, "{status:#}");
    // Nothing lost: every bucket has all its events pending (listed from aw-server: a cycle
    // that cannot reach the upstream stops before it registers anything for it).
    let listed = status["buckets"].as_array().expect("buckets");
    assert!(!listed.is_empty(), "{status:#}");
    for b in listed {
        let id = b["bucket_id"].as_str().expect("bucket_id");
        let n = double.len(id).expect("a source bucket") as u64;
        assert_eq!(
            (&b["delivered"], &b["pending"]),
            (&Value::from(0), &Value::from(n)),
            "{status:#}"
        );
    }
    assert!(status["last_cycle"]["last_error"].is_string(), "{status:#}");
    assert_eq!(status["last_cycle"]["last_success"], Value::Null);
    let offline_status = last_status(&double);
    assert_eq!(offline_status["status"], "error", "{offline_status:?}");
    assert_eq!(
        offline_status["pending"], EVENTS as u64,
        "the status bucket counts every event as pending: {offline_status:?}"
    );
    let offline_peak_kb = peak_kb.load(Ordering::Relaxed);
    let offline_for = started.elapsed();

    let dev = devserver::spawn(DevServerConfig {
        bind: ([127, 0, 0, 1], port).into(),
        db_path: dir.path().join("samay-dev-server.sqlite"),
        tokens: vec![TEST_TOKEN.to_string()],
    })
    .await
    .expect("upstream comes up on its port");
    let online = Instant::now();
    wait_for_count(&mut daemon, "sync cycle done", 1, Duration::from_secs(120)).await;
    let catch_up = online.elapsed();
    let log = daemon.stderr();
    let done: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("sync cycle done"))
        .collect();
    assert_eq!(done.len(), 1, "{log}");
    assert!(
        done[0].contains(&format!("delivered={EVENTS}")),
        "one cycle delivered everything: {}",
        done[0]
    );
    // The cycle's outcome reaches the status bucket just after the log line.
    let deadline = Instant::now() + Duration::from_secs(20);
    while last_status(&double)["status"] != "ok" {
        assert!(
            Instant::now() < deadline,
            "status bucket: {:?}",
            last_status(&double)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, _) = daemon.stop_with("TERM").await;
    assert!(status.success(), "{status}");
    sampler.await.expect("sampler");

    assert_eq!(
        assert_upstream_holds_exactly(&double, &dev, &buckets).await,
        EVENTS
    );
    let inspect = samay_testkit::devserver::stats(&dev).await;
    let sums = inspect
        .devices
        .iter()
        .flat_map(|d| d.buckets.iter())
        .fold((0, 0, 0), |(e, r, d), b| {
            (e + b.events, r + b.versions_replaced, d + b.duplicates)
        });
    assert_eq!(sums, (EVENTS as u64, 0, 0), "(held, replaced, re-sent)");
    let last = last_status(&double);
    assert_eq!(last["status"], "ok", "{last:?}");
    assert_eq!(last["delivered"], EVENTS as u64, "{last:?}");
    eprintln!(
        "offline {:.1?} (failed cycles: {}), then one catch-up of {EVENTS} events in {:.1?}; \
         peak RSS (VmHWM, debug build): offline {:.1} MiB, overall {:.1} MiB; total {:.1?}",
        offline_for,
        log.matches("sync cycle failed").count(),
        catch_up,
        offline_peak_kb as f64 / 1024.0,
        peak_kb.load(Ordering::Relaxed) as f64 / 1024.0,
        started.elapsed()
    );
}
