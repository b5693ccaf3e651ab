//! The measurement (not a test: prints numbers).

use std::time::{Duration, Instant};

use samay_testkit::bin::write_config;
use samay_testkit::daemon::Daemon;
use samay_testkit::rig::{series, Rig};

use super::support::*;

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
