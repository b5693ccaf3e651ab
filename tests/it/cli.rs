//! The real `aw-sync-samay` binary, run the way a user (or aw-qt) runs it: each test has its own
//! HOME and XDG directories, and where it needs them its own Python aw-server and dev upstream.
//! Every wait is bounded; the only timing asserted is the 2 s stop rule for signals.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use samay_server::{self as devserver, DevServerConfig};
use samay_testkit::awserver::free_port;
use samay_testkit::bin::{
    isolated_command, read, run, sync_command, wait_exit, write_config, Run, RUN_TIMEOUT,
};
use samay_testkit::daemon::Daemon;
use samay_testkit::devserver::TEST_TOKEN;
use samay_testkit::rig::{series, Rig};
use serde_json::Value;
use tempfile::TempDir;

/// How long to wait for a daemon to say it started.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// A signal must stop the daemon within this.
const STOP_LIMIT: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------------
// Helpers

/// A temp HOME with the XDG directories the binary is pointed at inside it.
struct Home {
    dir: TempDir,
}

impl Home {
    fn new() -> Home {
        Home {
            dir: tempfile::Builder::new()
                .prefix("aw-sync-samay-cli-")
                .tempdir()
                .expect("tempdir"),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn cmd(&self) -> Command {
        isolated_command(self.path())
    }

    fn config_dir(&self) -> PathBuf {
        self.path().join("config")
    }

    fn data_dir(&self) -> PathBuf {
        self.path().join("data")
    }

    fn cache_dir(&self) -> PathBuf {
        self.path().join("cache")
    }

    fn log_dir(&self) -> PathBuf {
        self.cache_dir()
            .join("activitywatch")
            .join("log")
            .join("aw-sync-samay")
    }

    fn log_files(&self) -> Vec<PathBuf> {
        match std::fs::read_dir(self.log_dir()) {
            Ok(rd) => rd.filter_map(Result::ok).map(|e| e.path()).collect(),
            Err(_) => Vec::new(),
        }
    }

    fn config(&self, base_url: &str, extra: &str) -> PathBuf {
        write_config(self.path(), base_url, extra)
    }
}

/// Stopped by a signal it handled: exit code 0 (not killed by the signal's default action).
fn assert_clean_stop(status: ExitStatus, took: Duration, signal: &str, stderr: &str) {
    eprintln!("SIG{signal}: stopped in {took:?} ({status})");
    assert_eq!(
        status.code(),
        Some(0),
        "SIG{signal} should stop the daemon cleanly ({status}); stderr:\n{stderr}"
    );
    assert!(
        took < STOP_LIMIT,
        "SIG{signal} took {took:?} to stop the daemon (limit {STOP_LIMIT:?}); stderr:\n{stderr}"
    );
}

/// `aw-sync-samay_[testing_]YYYY-MM-DDTHH-MM-SS.log`, checked character by character.
fn is_log_name(name: &str, testing: bool) -> bool {
    let prefix = if testing {
        "aw-sync-samay_testing_"
    } else {
        "aw-sync-samay_"
    };
    let Some(stamp) = name
        .strip_prefix(prefix)
        .and_then(|r| r.strip_suffix(".log"))
    else {
        return false;
    };
    let pattern = "dddd-dd-ddTdd-dd-dd";
    stamp.len() == pattern.len()
        && stamp.chars().zip(pattern.chars()).all(|(c, p)| match p {
            'd' => c.is_ascii_digit(),
            p => c == p,
        })
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in rd.filter_map(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

fn parse_json(run: &Run) -> Value {
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| {
        panic!(
            "--status --json is not JSON ({e}):\n{}\nstderr:\n{}",
            run.stdout, run.stderr
        )
    })
}

// ---------------------------------------------------------------------------------------------
// 1. --once, then --status

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_syncs_everything_and_status_reports_it_in_text_and_json() {
    let rig = Rig::new().await;
    rig.bucket("window").await;
    rig.insert("window", &series(25, 10.0, 60, "w")).await;
    let home = rig.dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let config = write_config(&home, &rig.dev.base_url(), "");
    let out = home.join("out");

    let once = run(
        sync_command(&home, rig.aw.port(), &config, TEST_TOKEN).arg("--once"),
        &out,
    )
    .await;
    assert!(once.status.success(), "--once failed: {once:?}");
    let summary: Vec<&str> = once.stdout.lines().collect();
    assert_eq!(summary.len(), 1, "one summary line: {:?}", once.stdout);
    assert!(
        summary[0].starts_with("synced: ") && summary[0].contains(" 25 delivered"),
        "{summary:?}"
    );
    rig.assert_exact("window").await;

    let text = run(
        sync_command(&home, rig.aw.port(), &config, TEST_TOKEN).arg("--status"),
        &out,
    )
    .await;
    assert!(text.status.success(), "--status failed: {text:?}");
    let line = |prefix: &str| -> &str {
        text.stdout
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{}", text.stdout))
    };
    assert!(
        line("aw-server ").split_whitespace().nth(1) == Some("ok"),
        "{}",
        text.stdout
    );
    assert!(
        line("upstream ").split_whitespace().nth(1) == Some("ok"),
        "{}",
        text.stdout
    );
    let pending: Vec<&str> = line("pending ").split_whitespace().collect();
    assert_eq!(
        pending,
        ["pending", "0", "quarantined", "0"],
        "{}",
        text.stdout
    );
    // bucket  delivered  versions  pending  quarantined  cursor
    let bucket: Vec<&str> = line("window ").split_whitespace().collect();
    assert_eq!(bucket[1], "25", "delivered: {}", text.stdout);
    assert_eq!(bucket[3], "0", "pending: {}", text.stdout);
    assert_eq!(bucket[4], "0", "quarantined: {}", text.stdout);
    assert!(
        !line("last sync ").contains("never"),
        "a successful cycle was recorded: {}",
        text.stdout
    );

    let json = run(
        sync_command(&home, rig.aw.port(), &config, TEST_TOKEN).args(["--status", "--json"]),
        &out,
    )
    .await;
    assert!(json.status.success(), "--status --json failed: {json:?}");
    let v = parse_json(&json);
    assert_eq!(v["aw_server"]["reachable"], true, "{v:#}");
    assert!(
        v["aw_server"]["url"]
            .as_str()
            .is_some_and(|u| u.contains(&format!(":{}", rig.aw.port()))),
        "{v:#}"
    );
    assert_eq!(v["upstream"]["reachable"], true, "{v:#}");
    assert_eq!(v["pending"], 0, "{v:#}");
    assert_eq!(v["quarantined"], 0, "{v:#}");
    let buckets = v["buckets"].as_array().expect("buckets array");
    assert_eq!(buckets.len(), 1, "{v:#}");
    assert_eq!(buckets[0]["bucket_id"], "window", "{v:#}");
    assert_eq!(buckets[0]["delivered"], 25, "{v:#}");
    assert_eq!(buckets[0]["pending"], 0, "{v:#}");
    assert!(
        v["last_cycle"]["last_success"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{v:#}"
    );
    assert!(v["last_cycle"]["last_error"].is_null(), "{v:#}");
}

/// The bytes of batch bodies the upstream received, by `Content-Encoding` (its `/metrics`).
async fn body_bytes(base_url: &str) -> (u64, u64) {
    let text = reqwest::get(format!("{base_url}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    let value = |encoding: &str| {
        let prefix = format!("samay_batch_body_bytes_total{{encoding=\"{encoding}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(0, |n| n.parse().expect("a count"))
    };
    (value("identity"), value("gzip"))
}

/// `sync.gzip = "auto"` (the default) sends plain JSON to an upstream on this machine, where
/// compressing would only cost CPU on both ends; `gzip = true` still compresses there. (Which
/// hosts count as this machine: `config::tests::gzip_is_auto_true_or_false_and_auto_skips_only_this_machine`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_auto_sends_plain_bodies_to_this_machine_and_true_compresses_them() {
    let rig = Rig::new().await;
    rig.bucket("window").await;
    rig.insert("window", &series(40, 10.0, 60, "w")).await;
    let base = rig.dev.base_url();
    let mut seen = Vec::new();
    for (name, extra) in [("auto", ""), ("always", "gzip = true")] {
        // Two devices (homes of their own), so the second sends everything again.
        let home = rig.dir.path().join(name);
        std::fs::create_dir_all(&home).unwrap();
        let config = write_config(&home, &base, extra);
        let once = run(
            sync_command(&home, rig.aw.port(), &config, TEST_TOKEN).arg("--once"),
            &home,
        )
        .await;
        assert!(once.status.success(), "{name}: {once:?}");
        seen.push(body_bytes(&base).await);
    }
    let [(plain, gz_before), (plain_after, gz)] = seen[..] else {
        unreachable!("two runs")
    };
    assert!(plain > 0 && gz_before == 0, "auto, to 127.0.0.1: {seen:?}");
    assert!(plain_after == plain && gz > 0, "gzip = true: {seen:?}");
    assert!(
        gz < plain,
        "the same events compressed are smaller: {seen:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. One actionable line when --once cannot work

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_with_aw_server_down_fails_with_one_line_saying_what_to_do() {
    let home = Home::new();
    let config = home.config("http://127.0.0.1:9", "");
    let port = free_port();
    let r = run(
        sync_command(home.path(), port, &config, TEST_TOKEN).arg("--once"),
        home.path(),
    )
    .await;
    assert!(!r.status.success(), "{r:?}");
    let lines = r.stderr_lines();
    assert_eq!(lines.len(), 1, "one line on stderr: {:?}", r.stderr);
    // The URL once, and the cause (it said the URL twice and no cause).
    let url = format!("http://127.0.0.1:{port}");
    assert!(
        lines[0].contains(&format!("no answer from aw-server at {url}")),
        "{lines:?}"
    );
    assert_eq!(lines[0].matches(&url).count(), 1, "{lines:?}");
    assert!(lines[0].contains("(connection refused)"), "{lines:?}");
    assert!(lines[0].contains("start ActivityWatch"), "{lines:?}");
    assert_eq!(r.status.code(), Some(2), "unreachable: exit 2");
    assert!(r.stdout.is_empty(), "no summary on failure: {:?}", r.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_without_base_url_fails_with_one_line_naming_file_and_key() {
    let home = Home::new();
    let config = home.config("", "");
    let r = run(
        sync_command(home.path(), free_port(), &config, TEST_TOKEN).arg("--once"),
        home.path(),
    )
    .await;
    assert!(!r.status.success(), "{r:?}");
    let lines = r.stderr_lines();
    assert_eq!(lines.len(), 1, "one line on stderr: {:?}", r.stderr);
    assert!(lines[0].contains("sync.base_url"), "{lines:?}");
    assert!(
        lines[0].contains(&config.display().to_string()),
        "{lines:?}"
    );
    // The log file is where aw-qt's crash dialog looks: the reason must be there too.
    let logs: String = home.log_files().iter().map(|p| read(p)).collect();
    assert!(
        logs.contains("sync.base_url"),
        "the fatal error reaches the log file: {logs:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. The token never appears anywhere

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_never_appears_in_output_or_logs_even_at_trace_level() {
    const GOOD: &str = "tok-GOOD-5e0c1f7a9b3d4c2e8f6a0b1c";
    const BAD: &str = "tok-BAD-a8b7c6d5e4f3a2b1c0d9e8f7";
    let rig = Rig::new().await;
    rig.dev.add_token(GOOD);
    rig.bucket("window").await;
    rig.insert("window", &series(30, 10.0, 60, "w")).await;
    let home = rig.dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let config = write_config(&home, &rig.dev.base_url(), "batch_size = 10");
    let out = rig.dir.path().join("out");

    let mut runs = Vec::new();
    for (token, should_sync) in [(GOOD, true), (BAD, false)] {
        if !should_sync {
            // Something new to send, so the rejected token actually reaches the upstream.
            rig.insert("window", &series(5, 1.0, 5, "new")).await;
        }
        let once = run(
            sync_command(&home, rig.aw.port(), &config, token)
                .args(["--once", "--verbose"])
                .env("RUST_LOG", "trace"),
            &out,
        )
        .await;
        assert_eq!(once.status.success(), should_sync, "{once:?}");
        if !should_sync {
            assert!(once.stderr.contains("rejected"), "{:?}", once.stderr);
        }
        runs.push(once);
        for args in [&["--status"][..], &["--status", "--json"][..]] {
            let st = run(
                sync_command(&home, rig.aw.port(), &config, token)
                    .args(args)
                    .arg("--verbose")
                    .env("RUST_LOG", "trace"),
                &out,
            )
            .await;
            // A token the upstream refused: the user must act (exit 1).
            let expected = if should_sync { 0 } else { 1 };
            assert_eq!(st.status.code(), Some(expected), "{st:?}");
            assert!(st.stdout.contains("AW_SYNC_SAMAY_TOKEN"), "{}", st.stdout);
            runs.push(st);
        }
    }
    // The good token really was used (the first 30 events arrived), the bad one was refused.
    assert_eq!(rig.upstream_events("window").await.len(), 30);
    // The trace output is substantial (otherwise "not found" proves little).
    assert!(
        runs.iter().any(|r| r.stderr.contains("TRACE")),
        "RUST_LOG=trace took effect"
    );

    for r in &runs {
        for token in [GOOD, BAD] {
            assert!(!r.stdout.contains(token), "token in stdout:\n{}", r.stdout);
            assert!(!r.stderr.contains(token), "token in stderr:\n{}", r.stderr);
        }
    }
    let cache = home.join("cache");
    let files = files_under(&cache);
    let logs: Vec<&PathBuf> = files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    assert!(!logs.is_empty(), "log files were written under {cache:?}");
    for file in &files {
        let bytes = std::fs::read(file).expect("read cache file");
        let text = String::from_utf8_lossy(&bytes);
        for token in [GOOD, BAD] {
            assert!(!text.contains(token), "token in {}", file.display());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Log file naming

/// A daemon run writes an aw-core named file (aw-qt's crash dialog finds it); a one-shot
/// command appends to `commands[-testing].log` instead, so it never adds to the daemon's files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_writes_an_aw_core_named_log_file_and_testing_has_its_own() {
    let names = |home: &Home| -> Vec<String> {
        let mut n: Vec<String> = home
            .log_files()
            .iter()
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect();
        n.sort();
        n
    };
    let port = free_port();
    for testing in [false, true] {
        let home = Home::new();
        let config = home.config("", "");
        let mut cmd = sync_command(home.path(), port, &config, TEST_TOKEN);
        if testing {
            cmd.arg("--testing");
        }
        // Nothing configured: the daemon idles until stopped.
        let mut daemon = Daemon::spawn(&mut cmd, home.path());
        daemon.wait_for("idling until stopped").await;
        let (status, took) = daemon.stop_with("TERM").await;
        assert_clean_stop(status, took, "TERM", &daemon.stderr());
        let logs = names(&home);
        assert_eq!(logs.len(), 1, "{logs:?}");
        assert!(is_log_name(&logs[0], testing), "{logs:?}");
        assert!(!is_log_name(&logs[0], !testing), "{logs:?}");

        let mut once = sync_command(home.path(), port, &config, TEST_TOKEN);
        once.arg("--once");
        if testing {
            once.arg("--testing");
        }
        let r = run(&mut once, home.path()).await;
        assert!(!r.status.success());
        let one_shot = if testing {
            "commands-testing.log"
        } else {
            "commands.log"
        };
        assert_eq!(
            names(&home),
            [logs[0].clone(), one_shot.to_string()],
            "--once appends to the one-shot log"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 5. One instance per aw-server port

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

// ---------------------------------------------------------------------------------------------
// 9. Config file: first run, bad values

fn assert_commented_default(path: &Path) {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("default config {} not written: {e}", path.display()));
    assert!(text.contains("base_url"), "{text}");
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        assert!(
            line.starts_with('#') || (line.starts_with('[') && line.ends_with(']')),
            "every key is commented out, found {line:?} in {}",
            path.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_run_writes_the_commented_default_config() {
    let dir = |home: &Home| {
        home.config_dir()
            .join("activitywatch")
            .join("aw-sync-samay")
    };

    let home = Home::new();
    let port = free_port().to_string();
    let r = run(home.cmd().args(["--once", "--port", &port]), home.path()).await;
    // Nothing configured yet: it says so and points at the file it just wrote.
    assert!(!r.status.success(), "{r:?}");
    let path = dir(&home).join("aw-sync-samay.toml");
    assert_commented_default(&path);
    assert!(r.stderr.contains(&path.display().to_string()), "{r:?}");
    assert!(!dir(&home).join("aw-sync-samay-testing.toml").exists());

    let testing = Home::new();
    let r = run(
        testing.cmd().args(["--once", "--testing", "--port", &port]),
        testing.path(),
    )
    .await;
    assert!(!r.status.success(), "{r:?}");
    assert_commented_default(&dir(&testing).join("aw-sync-samay-testing.toml"));
    assert!(!dir(&testing).join("aw-sync-samay.toml").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_value_stops_the_binary_with_file_line_and_column() {
    let home = Home::new();
    let path = home.path().join("bad.toml");
    std::fs::write(&path, "[sync]\nbatch_size = \"lots\"\n").unwrap();
    let r = run(
        home.cmd()
            .args(["--once", "--port", &free_port().to_string(), "--config"])
            .arg(&path),
        home.path(),
    )
    .await;
    assert!(!r.status.success(), "{r:?}");
    let lines = r.stderr_lines();
    assert_eq!(lines.len(), 1, "one line: {:?}", r.stderr);
    assert!(
        lines[0].contains(&format!("{}:2:14:", path.display())),
        "file:line:col: {lines:?}"
    );
    assert!(lines[0].contains("sync.batch_size"), "{lines:?}");
    assert!(
        !home.config_dir().exists(),
        "no default config is written when --config is given"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_another_machine_is_refused() {
    let home = Home::new();
    let config = home.config("http://sync.example.com", "");
    let r = run(
        sync_command(home.path(), free_port(), &config, TEST_TOKEN).arg("--once"),
        home.path(),
    )
    .await;
    assert!(!r.status.success(), "{r:?}");
    assert!(r.stderr.contains("sync.base_url"), "{:?}", r.stderr);
    assert!(r.stderr.contains("https://"), "{:?}", r.stderr);
    assert!(
        r.stderr.contains(&format!("{}:2:", config.display())),
        "{:?}",
        r.stderr
    );
    // The daemon refuses too (it must not send tokens in the clear).
    let mut daemon = Daemon::spawn(
        &mut sync_command(home.path(), free_port(), &config, TEST_TOKEN),
        home.path(),
    );
    let status = wait_exit(&mut daemon.child, RUN_TIMEOUT)
        .await
        .expect("daemon exits");
    assert!(!status.success());
}

// ---------------------------------------------------------------------------------------------
// 10. --dev

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_once_syncs_into_the_embedded_upstream_database() {
    let rig = Rig::new().await;
    rig.bucket("window").await;
    rig.bucket("afk").await;
    rig.insert("window", &series(17, 10.0, 60, "w")).await;
    rig.insert("afk", &series(4, 60.0, 60, "a")).await;
    let home = Home::new();
    let r = run(
        home.cmd()
            .args(["--dev", "--once", "--port", &rig.aw.port().to_string()]),
        home.path(),
    )
    .await;
    assert!(r.status.success(), "{r:?}");
    assert!(r.stdout.contains(" 21 delivered"), "{r:?}");
    let db = home
        .data_dir()
        .join("activitywatch")
        .join("aw-sync-samay")
        .join("dev-upstream.sqlite");
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(all.contains("dev upstream: http://127.0.0.1:"), "{all}");
    assert!(all.contains(&db.display().to_string()), "{all}");
    assert!(db.is_file(), "{} exists", db.display());
    // No browser is involved: nobody is told to wait for one.
    assert!(
        !all.contains("Waiting") && !all.contains("waiting for the browser"),
        "{all}"
    );
    // It says the embedded upstream ends with the command, and how to browse it afterwards.
    assert!(all.contains("runs until this sync ends"), "{all}");
    assert!(
        all.contains(&format!(
            "dev upstream: stopped with this command; browse what it stored with: samay-dev-server --db {}",
            db.display()
        )),
        "{all}"
    );

    let dev = devserver::spawn(DevServerConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        db_path: db,
        tokens: Vec::new(),
    })
    .await
    .expect("open the dev database");
    let stored = dev.stored_events(None, None).await.expect("stored events");
    let source = rig.source_events("window").await.len() + rig.source_events("afk").await.len();
    assert_eq!(source, 21);
    assert_eq!(stored.len(), source);
    dev.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 11. No token

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_without_a_token_says_login_required_and_how_to_set_it() {
    let rig = Rig::new().await;
    rig.bucket("window").await;
    rig.insert("window", &series(5, 10.0, 60, "w")).await;
    let home = rig.dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let config = write_config(&home, &rig.dev.base_url(), "");
    let mut cmd = sync_command(&home, rig.aw.port(), &config, TEST_TOKEN);
    cmd.env_remove("AW_SYNC_SAMAY_TOKEN").arg("--once");
    let r = run(&mut cmd, &home).await;
    assert!(!r.status.success(), "{r:?}");
    let lines = r.stderr_lines();
    assert_eq!(lines.len(), 1, "one line: {:?}", r.stderr);
    assert!(lines[0].contains("login required"), "{lines:?}");
    assert!(lines[0].contains("AW_SYNC_SAMAY_TOKEN"), "{lines:?}");
    assert_eq!(
        rig.dev.faults().counters().requests_received,
        0,
        "nothing was sent without a token"
    );
}
