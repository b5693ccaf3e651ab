//! aw-sync-samay as an aw-qt module, with the real binary and a real Python aw-server: started
//! the way aw-qt starts modules (no argument but `--testing`, config in the default places),
//! stopped the way aw-qt stops them (SIGTERM, then an unbounded wait), judged the way aw-qt
//! judges them (any exit it did not ask for is a crash; the crash dialog shows the newest log
//! file named after the module), and orphaned the way a crashed aw-qt orphans them.
//!
//! Also the status bucket, read back from aw-server: driven through `Engine::daemon_cycle`
//! directly, and end to end through the daemon.
//!
//! Every wait is bounded; the timing asserted is aw-qt's: a SIGTERM stops the daemon within 1 s.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aw_sync_samay::engine::status_bucket::{self, BUCKET_TYPE};
use aw_sync_samay::engine::{Outcome, OWN_BUCKET_PREFIX};
use aw_sync_samay::source::Event;
use samay_testkit::awserver::free_port;
use samay_testkit::bin::isolated_command;
use samay_testkit::daemon::{send_signal, Daemon};
use samay_testkit::devserver::TEST_TOKEN;
use samay_testkit::rig::{series, Rig};
use serde_json::Value;

/// aw-qt waits for a terminated module without a bound; we promise it one second.
const STOP_LIMIT: Duration = Duration::from_secs(1);
/// How long a daemon may take to say it started, or a sync to show up upstream.
const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Helpers

/// A HOME laid out like a user's: aw-server-rust's and aw-sync-samay's configs in their default
/// places under `$XDG_CONFIG_HOME`, because aw-qt passes no `--config` and no `--port`.
struct Home {
    dir: PathBuf,
}

impl Home {
    fn new(rig: &Rig) -> Home {
        let dir = rig.dir.path().join("home");
        std::fs::create_dir_all(&dir).expect("home");
        Home { dir }
    }

    fn config_dir(&self) -> PathBuf {
        self.dir.join("config").join("activitywatch")
    }

    /// `<config>/activitywatch/aw-server-rust/config[-testing].toml` with `port`.
    fn aw_server_port(&self, testing: bool, port: u16) {
        let dir = self.config_dir().join("aw-server-rust");
        std::fs::create_dir_all(&dir).expect("aw-server-rust config dir");
        let name = if testing {
            "config-testing.toml"
        } else {
            "config.toml"
        };
        std::fs::write(dir.join(name), format!("port = {port}\n")).expect("aw-server config");
    }

    /// aw-sync-samay's own config file, at the default path for `testing`.
    fn config_path(&self, testing: bool) -> PathBuf {
        let name = if testing {
            "aw-sync-samay-testing.toml"
        } else {
            "aw-sync-samay.toml"
        };
        self.config_dir().join("aw-sync-samay").join(name)
    }

    fn write_config(&self, testing: bool, text: &str) {
        let path = self.config_path(testing);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("config dir");
        std::fs::write(&path, text).expect("write config");
    }

    fn log_dir(&self) -> PathBuf {
        self.dir
            .join("cache")
            .join("activitywatch")
            .join("log")
            .join("aw-sync-samay")
    }

    /// The binary with this HOME, exactly as aw-qt launches it: `[path]` or `[path, "--testing"]`.
    fn aw_qt_command(&self, testing: bool) -> Command {
        let mut cmd = isolated_command(&self.dir);
        if testing {
            cmd.arg("--testing");
        }
        cmd
    }
}

/// aw-qt's crash dialog: aw-core's `get_latest_log_file(name, testing)` — the files in the
/// module's log dir whose name contains the module name, and "testing" exactly when testing,
/// sorted by name; the last one.
fn aw_qt_log_file(log_dir: &Path, name: &str, testing: bool) -> Option<PathBuf> {
    let mut files: Vec<String> = std::fs::read_dir(log_dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|f| f.contains(name) && f.contains("testing") == testing)
        .collect();
    files.sort();
    files.pop().map(|f| log_dir.join(f))
}

/// SIGTERM (aw-qt's stop) ends the daemon cleanly (exit 0) within [`STOP_LIMIT`].
async fn assert_terminates(daemon: &mut Daemon, what: &str) {
    let (status, took) = daemon.stop_with("TERM").await;
    eprintln!("{what}: SIGTERM stopped the daemon in {took:?} ({status})");
    assert_eq!(
        status.code(),
        Some(0),
        "{what}: SIGTERM should stop the daemon cleanly; stderr:\n{}",
        daemon.stderr()
    );
    assert!(
        took < STOP_LIMIT,
        "{what}: SIGTERM took {took:?} (limit {STOP_LIMIT:?}); stderr:\n{}",
        daemon.stderr()
    );
}

/// Polls `check` every 50 ms until it returns true or `timeout` passes.
async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The events of the status bucket `aw-sync-samay_*` in the rig's aw-server, oldest first,
/// after checking the bucket's type and client.
async fn status_events(rig: &Rig) -> Vec<Event> {
    let buckets = rig.client().get_buckets().await.expect("buckets");
    let own: Vec<_> = buckets
        .values()
        .filter(|b| b.id.starts_with(OWN_BUCKET_PREFIX))
        .collect();
    assert_eq!(own.len(), 1, "one status bucket: {:?}", buckets.keys());
    assert_eq!(own[0].bucket_type, BUCKET_TYPE);
    assert_eq!(own[0].client, "aw-sync-samay");
    let mut events = rig.source_events(&own[0].id).await;
    events.sort_by_key(|e| e.timestamp);
    events
}

/// The upstream never received anything from aw-sync-samay's own buckets.
async fn assert_nothing_own_upstream(rig: &Rig) {
    let all = samay_testkit::devserver::all_stored_events(&rig.dev).await;
    assert!(
        !all.iter()
            .any(|e| e.bucket_id.starts_with(OWN_BUCKET_PREFIX)),
        "the status bucket was uploaded: {:?}",
        all.iter().map(|e| &e.bucket_id).collect::<Vec<_>>()
    );
}

/// Whether process `pid` has exited: gone, or a zombie nobody reaped (an orphan's new parent
/// may not reap). Linux `/proc`.
fn has_exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // "pid (comm) S ...": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Launched like aw-qt: port from aw-server-rust's config, SIGTERM, restart, the log file

async fn launched_like_aw_qt(testing: bool) {
    let rig = Rig::new().await;
    rig.bucket("window").await;
    rig.insert("window", &series(20, 5.0, 60, "w")).await;
    let home = Home::new(&rig);
    // The right port only in the file this variant must read; a dead port in the other one.
    home.aw_server_port(testing, rig.aw.port());
    home.aw_server_port(!testing, free_port());
    home.write_config(
        testing,
        &format!(
            "[sync]\nbase_url = \"{}\"\nsync_interval = 1\n",
            rig.dev.base_url()
        ),
    );
    let what = if testing { "--testing" } else { "no argument" };
    let out = rig.dir.path().join("out");

    let mut daemon = Daemon::spawn(
        home.aw_qt_command(testing)
            .env("AW_SYNC_SAMAY_TOKEN", TEST_TOKEN),
        &out,
    );
    daemon.wait_for("aw-sync-samay started").await;
    let synced = eventually(WAIT, || async {
        rig.upstream_events("window").await.len() == 20
    })
    .await;
    assert!(
        synced,
        "{what}: the daemon did not sync the aw-server on port {} (from aw-server-rust's {}); stderr:\n{}",
        rig.aw.port(),
        if testing { "config-testing.toml" } else { "config.toml" },
        daemon.stderr()
    );
    rig.assert_exact("window").await;

    // aw-qt's crash dialog would show this run's log.
    let log = aw_qt_log_file(&home.log_dir(), "aw-sync-samay", testing).unwrap_or_else(|| {
        panic!(
            "{what}: no log file aw-qt would find in {:?}",
            home.log_dir()
        )
    });
    let text = std::fs::read_to_string(&log).expect("read log");
    assert!(
        text.contains("aw-sync-samay started"),
        "{what}: {} is not this run's log:\n{text}",
        log.display()
    );
    assert_terminates(&mut daemon, what).await;

    // aw-qt's "start" again from the tray: the lock went with the first process.
    let mut again = Daemon::spawn(
        home.aw_qt_command(testing)
            .env("AW_SYNC_SAMAY_TOKEN", TEST_TOKEN),
        &out,
    );
    again.wait_for("aw-sync-samay started").await;
    again.assert_alive_for(Duration::from_millis(1500)).await;
    assert!(
        !again.stderr().contains("already running"),
        "{}",
        again.stderr()
    );
    assert_terminates(&mut again, what).await;

    // The daemon recorded its cycles in its own bucket, and never uploaded that bucket.
    let events = status_events(&rig).await;
    assert!(!events.is_empty());
    assert_eq!(
        events.last().map(|e| e.data["status"].clone()),
        Some(Value::from("ok"))
    );
    assert_nothing_own_upstream(&rig).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn testing_launch_uses_aw_server_rusts_testing_config_stops_within_1_s_and_restarts() {
    launched_like_aw_qt(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_launch_uses_aw_server_rusts_config_stops_within_1_s_and_restarts() {
    launched_like_aw_qt(false).await;
}

// ---------------------------------------------------------------------------------------------
// 2. Orphaned: aw-qt died without stopping its modules

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orphaned_daemon_exits_like_the_watchers() {
    let home_dir = tempfile::tempdir().expect("tempdir");
    let home = home_dir.path();
    // Nothing configured: the daemon idles, so only the orphan watch can end it.
    let template = isolated_command(home);
    let exe = template.get_program().to_owned();
    // The intermediate "aw-qt": a script of that name run by its interpreter (as aw-qt's pip
    // entry point runs under Python; `sh` reads it, so no freshly written file is executed),
    // that starts the daemon, prints its pid, and dies once the daemon says it idles (at most
    // 20 s: a loaded machine takes more than the second this once slept). Only aw-qt's
    // children exit when orphaned.
    let aw_qt = home.join("aw-qt");
    std::fs::write(
        &aw_qt,
        "\"$1\" --testing --port \"$2\" & echo $!\n\
         i=0; while [ $i -lt 200 ] && ! grep -q 'idling until stopped' \"$3\"; do sleep 0.1; i=$((i+1)); done\n",
    )
    .expect("write the aw-qt script");
    let stderr_path = home.join("daemon.err");
    let mut shell = Command::new("sh");
    shell.arg(&aw_qt);
    shell
        .arg(&exe)
        .arg(free_port().to_string())
        .arg(&stderr_path);
    for (key, value) in template.get_envs() {
        match value {
            Some(v) => shell.env(key, v),
            None => shell.env_remove(key),
        };
    }
    let stdout_path = home.join("shell.out");
    let mut sh = shell
        .stdin(Stdio::null())
        .stdout(File::create(&stdout_path).expect("stdout file"))
        .stderr(File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("spawn sh");
    let stderr = || std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = sh.try_wait().expect("try_wait sh") {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "sh hangs");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "sh: {status}");
    let pid: u32 = std::fs::read_to_string(&stdout_path)
        .expect("read pid")
        .trim()
        .parse()
        .expect("the shell printed the daemon's pid");
    let orphaned_at = Instant::now();
    // It was running as a module should, before its parent died.
    assert!(
        stderr().contains("idling until stopped"),
        "the daemon had not started idling before its parent exited; stderr:\n{}",
        stderr()
    );

    let exited = eventually(Duration::from_secs(5), || async { has_exited(pid) }).await;
    if !exited {
        send_signal(pid, "KILL");
    }
    assert!(
        exited,
        "the orphaned daemon (pid {pid}) was still running 5 s after its parent exited; stderr:\n{}",
        stderr()
    );
    eprintln!(
        "orphaned daemon exited {:?} after its parent",
        orphaned_at.elapsed()
    );
    let said = stderr();
    assert!(
        said.contains("started by aw-qt (PID")
            && said.contains("went away")
            && said.contains("stopping, as ActivityWatch watchers do"),
        "the daemon should log why it stopped; stderr:\n{said}"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Logged out: the module idles (aw-qt must not see a crash) and says why

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logged_out_daemon_keeps_running_and_says_login_required() {
    let rig = Rig::new().await;
    rig.bucket("window").await;
    rig.insert("window", &series(3, 5.0, 60, "w")).await;
    let home = Home::new(&rig);
    home.aw_server_port(true, rig.aw.port());
    // The login is configured (file storage: no keyring in this test), but nobody logged in.
    // The provider's address answers nothing: a logged-out daemon must not even need it.
    home.write_config(
        true,
        &format!(
            "[sync]\nbase_url = \"{}\"\nsync_interval = 1\n\n[auth]\nclient_id = \"aw-sync-samay\"\nissuer = \"http://127.0.0.1:{}\"\ntoken_storage = \"file\"\n",
            rig.dev.base_url(),
            free_port()
        ),
    );
    let out = rig.dir.path().join("out");
    let mut daemon = Daemon::spawn(&mut home.aw_qt_command(true), &out);
    daemon.wait_for("aw-sync-samay started").await;
    // Longer than aw-qt's 5 s check, across several cycles.
    daemon.assert_alive_for(Duration::from_secs(6)).await;
    daemon.wait_for("login required").await;

    let status = home
        .aw_qt_command(true)
        .arg("--status")
        .stdin(Stdio::null())
        .output()
        .expect("run --status");
    let text = String::from_utf8_lossy(&status.stdout);
    // The user must act: exit 1, and the hint is for this (testing) instance.
    assert_eq!(status.status.code(), Some(1), "--status: {status:?}");
    assert!(
        text.contains("login required: run aw-sync-samay --testing --login"),
        "--status should say what to do:\n{text}"
    );

    let events = status_events(&rig).await;
    let last = events.last().expect("a status event");
    assert_eq!(last.data["status"], "login required", "{last:?}");
    assert_eq!(last.data["pending"], 3, "nothing was delivered: {last:?}");
    assert!(rig.upstream_events("window").await.is_empty());
    assert_terminates(&mut daemon, "logged out").await;
}

// ---------------------------------------------------------------------------------------------
// 4. Configured after start: the daemon picks the config up without a restart

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setting_base_url_while_running_starts_the_sync_without_a_restart() {
    let rig = Rig::new().await;
    rig.bucket("window").await;
    rig.insert("window", &series(10, 5.0, 60, "w")).await;
    let home = Home::new(&rig);
    home.aw_server_port(true, rig.aw.port());
    let out = rig.dir.path().join("out");
    // First run: the default config is written, nothing configured.
    let mut daemon = Daemon::spawn(
        home.aw_qt_command(true)
            .env("AW_SYNC_SAMAY_TOKEN", TEST_TOKEN),
        &out,
    );
    daemon.wait_for("no upstream configured").await;
    daemon.assert_alive_for(Duration::from_secs(2)).await;
    let events = status_events(&rig).await;
    assert_eq!(
        events.last().map(|e| e.data["status"].clone()),
        Some(Value::from("not configured"))
    );

    // The user edits the file aw-qt's module reads.
    let path = home.config_path(true);
    let text = std::fs::read_to_string(&path).expect("default config written");
    let text = text.replacen(
        "[sync]",
        &format!(
            "[sync]\nbase_url = \"{}\"\nsync_interval = 1",
            rig.dev.base_url()
        ),
        1,
    );
    std::fs::write(&path, text).expect("edit config");

    let synced = eventually(WAIT, || async {
        rig.upstream_events("window").await.len() == 10
    })
    .await;
    assert!(
        synced,
        "the daemon did not pick up sync.base_url; stderr:\n{}",
        daemon.stderr()
    );
    daemon.wait_for("the config file changed").await;

    // A broken edit neither stops the daemon nor is used: it waits for the next change.
    std::fs::write(&path, "[sync]\nsync_interval = \"soon\"\n").expect("break config");
    daemon
        .wait_for("waiting for the config file to change")
        .await;
    daemon.assert_alive_for(Duration::from_millis(1500)).await;
    assert_terminates(&mut daemon, "after reloads").await;
}

// ---------------------------------------------------------------------------------------------
// 5. The status bucket, through Engine::daemon_cycle

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_bucket_merges_idle_cycles_and_is_never_uploaded() {
    let rig = Rig::new().await;
    rig.bucket("window").await;
    rig.insert("window", &series(12, 5.0, 60, "w")).await;
    let engine = rig.engine();
    let bucket = status_bucket::bucket_id(&engine.hostname);

    assert_eq!(engine.daemon_cycle().await, Outcome::Synced);
    let first = rig.source_events(&bucket).await;
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0].data["status"], "ok");
    assert_eq!(first[0].data["delivered"], 12);
    assert_eq!(first[0].data["pending"], 0);

    // Idle cycles: nothing new, identical data, merged by the heartbeat. (A cycle's duration,
    // rounded to 0.1, 0.2, 0.5, 1 … s, is part of the data: on a machine so loaded that idle
    // cycles take from 0.1 to 2 s, two in a row may differ, and differing data is not merged.
    // So cycles run until two merged, or at most MAX_IDLE.)
    const MAX_IDLE: usize = 20;
    let mut cycles = 0;
    let idle = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(engine.daemon_cycle().await, Outcome::Synced);
        cycles += 1;
        let events = status_events(&rig).await;
        let idle: Vec<_> = events
            .into_iter()
            .filter(|e| e.data["delivered"] == 0)
            .collect();
        if (cycles >= 2 && idle.len() < cycles) || cycles == MAX_IDLE {
            break idle;
        }
    };
    assert!(
        !idle.is_empty() && idle.len() < cycles,
        "{cycles} idle cycles should merge into fewer events: {idle:#?}"
    );
    // Merged whenever they could be: no two events in a row with the same data.
    for pair in idle.windows(2) {
        assert_ne!(pair[0].data, pair[1].data, "unmerged twins: {pair:#?}");
    }
    assert!(
        idle.iter().any(|e| e.duration > 0.0),
        "a merged event grows: {idle:#?}"
    );
    let data = &idle[0].data;
    for key in [
        "status",
        "user",
        "delivered",
        "pending",
        "quarantined",
        "last_error",
        "duration",
    ] {
        assert!(data.contains_key(key), "{key} missing in {data:?}");
    }
    assert_eq!(data["status"], "ok");
    assert_eq!(data["pending"], 0);
    assert_eq!(data["quarantined"], 0);
    assert_eq!(data["last_error"], Value::Null);
    assert!(data["duration"].is_f64(), "{data:?}");

    // The engine scanned aw-server after the bucket existed, and skipped it.
    rig.assert_exact("window").await;
    assert_nothing_own_upstream(&rig).await;

    // A failing cycle is recorded as such, with its reason.
    rig.dev.faults().update(|f| f.fail_500 = 1000);
    rig.insert("window", &series(1, 5.0, 10, "late")).await;
    assert_eq!(engine.daemon_cycle().await, Outcome::Failed);
    let events = status_events(&rig).await;
    let last = events.last().expect("events");
    assert_eq!(last.data["status"], "error", "{last:?}");
    assert!(
        last.data["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("upstream")),
        "{last:?}"
    );
    assert_eq!(last.data["pending"], 1, "{last:?}");
}
