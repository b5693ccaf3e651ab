//! The daemon: one instance per port, signals mid-sync, outages it outlives, its default port.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use samay_testkit::awserver::free_port;
use samay_testkit::bin::{run, sync_command, write_config};
use samay_testkit::daemon::Daemon;
use samay_testkit::devserver::TEST_TOKEN;
use samay_testkit::rig::{series, Rig};

use super::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_for_the_same_port_exits_and_another_port_may_run() {
    let home = Home::new();
    // Nothing listens on either side: the daemon keeps retrying, which is fine here.
    let config = home.config(
        &format!("http://127.0.0.1:{}", free_port()),
        "sync_interval = 1",
    );
    let port = free_port();
    let daemon = |port: u16| sync_command(home.path(), port, &config, TEST_TOKEN);

    let mut first = Daemon::spawn(&mut daemon(port), home.path());
    first.wait_for("aw-sync-samay started").await;

    let started = Instant::now();
    let second = run(&mut daemon(port), home.path()).await;
    assert!(!second.status.success(), "{second:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the second instance should give up at once"
    );
    assert!(
        second.stderr.contains(&format!(
            "another aw-sync-samay (PID {}) is already running",
            first.pid()
        )),
        "the refusal names the PID: {:?}",
        second.stderr
    );

    let mut third = Daemon::spawn(&mut daemon(free_port()), home.path());
    third.wait_for("aw-sync-samay started").await;
    first.assert_alive_for(Duration::from_millis(300)).await;

    for d in [&mut first, &mut third] {
        let (status, took) = d.stop_with("TERM").await;
        assert_clean_stop(status, took, "TERM", &d.stderr());
    }
    // The lock went with the first daemon: the port is free again.
    let after = run(daemon(port).arg("--once"), home.path()).await;
    assert!(
        !after.stderr.contains("already running"),
        "{:?}",
        after.stderr
    );
    assert!(
        after.stderr.contains("no answer from aw-server"),
        "{:?}",
        after.stderr
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Signals stop the daemon mid-sync, and the state survives

async fn signal_mid_sync_stops_within_2_s_and_state_stays_sound(signal: &str) {
    const EVENTS: usize = 3000;
    let rig = Rig::new().await;
    rig.bucket("window").await;
    rig.insert("window", &series(EVENTS, 5.0, 60, "w")).await;
    // ~120 batches at >= 40 ms each: the first cycle takes several seconds.
    rig.dev.faults().update(|f| f.slow_ms = 40);
    let home = rig.dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let config = write_config(
        &home,
        &rig.dev.base_url(),
        "sync_interval = 1\npage_size = 100\nbatch_size = 25\noffline_queue_size = 200",
    );
    let out = rig.dir.path().join("out");

    let mut daemon = Daemon::spawn(
        &mut sync_command(&home, rig.aw.port(), &config, TEST_TOKEN),
        &out,
    );
    daemon.wait_for("aw-sync-samay started").await;
    // Wait until uploads are under way, so the signal lands inside a cycle.
    let deadline = Instant::now() + START_TIMEOUT;
    while rig.dev.faults().counters().batches_stored < 3 {
        assert!(
            Instant::now() < deadline,
            "no uploads started; stderr:\n{}",
            daemon.stderr()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, took) = daemon.stop_with(signal).await;
    assert_clean_stop(status, took, signal, &daemon.stderr());
    let stored = rig.upstream_events("window").await.len();
    assert!(
        stored < EVENTS,
        "the signal should have landed mid-sync, but all {stored} events were already delivered"
    );

    rig.dev.faults().clear();
    let once = run(
        sync_command(&home, rig.aw.port(), &config, TEST_TOKEN).arg("--once"),
        &out,
    )
    .await;
    assert!(once.status.success(), "--once after SIG{signal}: {once:?}");
    rig.assert_exact("window").await;
    let stats = samay_testkit::devserver::bucket_stats(&rig.dev, "window")
        .await
        .expect("bucket upstream");
    assert_eq!(stats.events, EVENTS as u64);
    assert_eq!(stats.versions_replaced, 0, "no event changed by a re-send");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_sync_stops_within_2_s_and_state_stays_sound() {
    signal_mid_sync_stops_within_2_s_and_state_stays_sound("TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_mid_sync_stops_within_2_s_and_state_stays_sound() {
    signal_mid_sync_stops_within_2_s_and_state_stays_sound("INT").await;
}

// ---------------------------------------------------------------------------------------------
// 7. The daemon outlives every outage and stops cleanly

/// Starts the daemon, checks it is alive ~3 s later and said `expect`, then SIGTERMs it.
async fn daemon_survives(mut cmd: Command, dir: &Path, expect: &str) {
    let mut daemon = Daemon::spawn(&mut cmd, dir);
    daemon.assert_alive_for(Duration::from_secs(3)).await;
    daemon.wait_for(expect).await;
    let (status, took) = daemon.stop_with("TERM").await;
    assert_clean_stop(status, took, "TERM", &daemon.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_keeps_running_while_aw_server_is_down() {
    let home = Home::new();
    let config = home.config("http://127.0.0.1:9", "sync_interval = 1");
    daemon_survives(
        sync_command(home.path(), free_port(), &config, TEST_TOKEN),
        home.path(),
        "no answer from aw-server",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_keeps_running_while_the_upstream_is_down() {
    let rig = Rig::new().await;
    rig.bucket("window").await;
    rig.insert("window", &series(5, 10.0, 60, "w")).await;
    let home = rig.dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let config = write_config(
        &home,
        &format!("http://127.0.0.1:{}", free_port()),
        "sync_interval = 1\nmax_retries = 1",
    );
    daemon_survives(
        sync_command(&home, rig.aw.port(), &config, TEST_TOKEN),
        &home,
        "sync cycle failed",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_keeps_running_without_a_base_url() {
    let home = Home::new();
    let config = home.config("", "sync_interval = 1");
    daemon_survives(
        sync_command(home.path(), free_port(), &config, TEST_TOKEN),
        home.path(),
        "no upstream configured",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_keeps_running_without_a_token() {
    let rig = Rig::new().await;
    rig.bucket("window").await;
    let home = rig.dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let config = write_config(&home, &rig.dev.base_url(), "sync_interval = 1");
    let mut cmd = sync_command(&home, rig.aw.port(), &config, TEST_TOKEN);
    cmd.env_remove("AW_SYNC_SAMAY_TOKEN");
    daemon_survives(cmd, &home, "login required").await;
}

// ---------------------------------------------------------------------------------------------
// 8. Which aw-server port is used without --port

async fn status_url(home: &Home, args: &[&str]) -> String {
    let r = run(
        home.cmd().args(args).args(["--status", "--json"]),
        home.path(),
    )
    .await;
    // Nothing configured (and no aw-server there): exit 1, and the JSON still says where it
    // looked.
    assert_eq!(r.status.code(), Some(1), "{r:?}");
    parse_json(&r)["aw_server"]["url"]
        .as_str()
        .expect("aw_server.url")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aw_server_port_defaults_like_activitywatch() {
    let home = Home::new();
    let url = status_url(&home, &["--testing"]).await;
    assert!(url.contains(":5666"), "--testing: {url}");
    let url = status_url(&home, &[]).await;
    assert!(url.contains(":5600"), "default: {url}");

    let aw_config = home
        .config_dir()
        .join("activitywatch")
        .join("aw-server-rust");
    std::fs::create_dir_all(&aw_config).unwrap();
    std::fs::write(aw_config.join("config.toml"), "port = 5601\n").unwrap();
    let url = status_url(&home, &[]).await;
    assert!(url.contains(":5601"), "from aw-server-rust's config: {url}");
    // --testing reads aw-server-rust's testing config, not the normal one.
    let url = status_url(&home, &["--testing"]).await;
    assert!(url.contains(":5666"), "--testing: {url}");
    // --port wins over everything.
    let url = status_url(&home, &["--port", "5777"]).await;
    assert!(url.contains(":5777"), "--port: {url}");
}
