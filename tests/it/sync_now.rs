//! "Sync now" beside the daemon (issue 10 §3), and the daemon's log beside one-shot commands
//! (§5), with the real binary, a real Python aw-server and the dev upstream: `--once` while the
//! daemon runs asks it to sync over its control channel, shows the progress and exits with the
//! daemon's result; a refusal that remains names the PID; one-shot commands never push the
//! daemon's log out, and no log another process has open is ever deleted. Unix: the channel is
//! a Unix socket (Windows' named pipe is not implemented).
#![cfg(unix)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use samay_testkit::awserver::free_port;
use samay_testkit::bin::{run, summary_count as count, sync_command, write_config};
use samay_testkit::daemon::Daemon;
use samay_testkit::devserver::TEST_TOKEN;
use samay_testkit::rig::{series, Rig};

fn home(rig: &Rig) -> PathBuf {
    let home = rig.dir.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    home
}

/// `<cache>/activitywatch/log/aw-sync-samay/` of `home` (the binary's XDG_CACHE_HOME).
fn log_dir(home: &Path) -> PathBuf {
    home.join("cache/activitywatch/log/aw-sync-samay")
}

/// The daemon log files (aw-core named) in `home`, sorted.
fn daemon_logs(home: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(log_dir(home))
        .expect("log dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("aw-sync-samay_") && n.ends_with(".log"))
        .collect();
    names.sort();
    names
}

/// The daemon syncs once an hour; `--once` beside it makes it sync now: the new events arrive,
/// `--once` shows the daemon's progress and prints its summary, and exits with its result —
/// 2 when the upstream fails the sync. It was refused ("already running", no PID, no way out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_beside_the_daemon_asks_it_to_sync_now() {
    let rig = Rig::new().await;
    rig.bucket("window").await;
    rig.insert("window", &series(10, 10.0, 600, "old")).await;
    let home = home(&rig);
    let config = write_config(
        &home,
        &rig.dev.base_url(),
        "sync_interval = 3600\nbatch_size = 100\nmax_retries = 0",
    );
    let cmd = || sync_command(&home, rig.aw.port(), &config, TEST_TOKEN);
    let mut daemon = Daemon::spawn(&mut cmd(), &home.join("out"));
    daemon.wait_for("sync cycle done").await;
    assert_eq!(rig.upstream_events("window").await.len(), 10);

    // Its socket is the user's alone.
    let run_dir = home.join("cache/activitywatch/aw-sync-samay/run");
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&run_dir), 0o700);
    let socket = run_dir.join(format!("127.0.0.1-{}.sock", rig.aw.port()));
    assert_eq!(mode(&socket), 0o600);

    // 3,000 new events and a slow upstream: long enough for progress lines (every 2 s).
    const NEW: u64 = 3000;
    rig.insert("window", &series(NEW as usize, 0.1, 300, "new"))
        .await;
    rig.dev.faults().update(|f| f.slow_ms = 150);
    let once = run(cmd().arg("--once"), &home).await;
    assert_eq!(once.status.code(), Some(0), "{}", once.all());
    assert!(
        once.stderr
            .contains(&format!("the running daemon (PID {})", daemon.pid())),
        "{}",
        once.stderr
    );
    assert_eq!(
        count(&once, " new or changed events"),
        NEW,
        "{}",
        once.stdout
    );
    assert_eq!(count(&once, " delivered"), NEW, "{}", once.stdout);
    let progress: Vec<&str> = once
        .stderr
        .lines()
        .filter(|l| l.starts_with("progress: total: "))
        .collect();
    assert!(
        !progress.is_empty(),
        "the daemon's progress shows: {}",
        once.stderr
    );
    assert!(
        progress
            .iter()
            .any(|l| !l.starts_with("progress: total: 0 new")),
        "the counts are the daemon's: {progress:#?}"
    );
    assert_eq!(rig.upstream_events("window").await.len(), 10 + NEW as usize);
    rig.assert_exact("window").await;
    daemon
        .wait_for("sync requested through the control channel")
        .await;

    // The daemon's sync fails: so does the --once that asked for it, with its message.
    rig.dev.faults().update(|f| {
        f.slow_ms = 0;
        f.fail_500 = 100;
    });
    rig.insert("window", &series(5, 1.0, 5, "later")).await;
    let failed = run(cmd().arg("--once"), &home).await;
    assert_eq!(failed.status.code(), Some(2), "{}", failed.all());
    assert!(
        failed
            .stderr
            .contains("sync failed: the upstream did not take the events"),
        "{}",
        failed.stderr
    );
    daemon.assert_alive_for(Duration::from_millis(200)).await;
    let (status, _) = daemon.stop_with("TERM").await;
    assert!(status.success());
}

/// A daemon with nothing to do answers a sync request at once with the reason, as `--once`
/// alone would have failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_beside_an_idle_daemon_says_why_nothing_syncs() {
    let rig = Rig::new().await;
    let home = home(&rig);
    let config = write_config(&home, "", "");
    let cmd = || sync_command(&home, rig.aw.port(), &config, TEST_TOKEN);
    let mut daemon = Daemon::spawn(&mut cmd(), &home.join("out"));
    daemon.wait_for("idling until stopped").await;
    let once = run(cmd().arg("--once"), &home).await;
    assert_eq!(once.status.code(), Some(1), "{}", once.all());
    assert!(
        once.stderr
            .contains("no upstream configured: set sync.base_url"),
        "{}",
        once.stderr
    );
    daemon.assert_alive_for(Duration::from_millis(200)).await;
}

/// The daemon with a `base_url` that is no upstream and nothing to send: the `--once` that
/// asked it still fails, as it would alone (exit 1, "not an aw-sync-samay upstream").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_beside_a_daemon_with_a_wrong_base_url_fails() {
    let rig = Rig::new().await;
    let home = home(&rig);
    // aw-server itself as the upstream: it answers, but 404 on v1/health.
    let aw_url = format!("http://127.0.0.1:{}", rig.aw.port());
    let config = write_config(&home, &aw_url, "sync_interval = 3600");
    let cmd = || sync_command(&home, rig.aw.port(), &config, TEST_TOKEN);
    let mut daemon = Daemon::spawn(&mut cmd(), &home.join("out"));
    daemon.wait_for("sync cycle done").await;
    let once = run(cmd().arg("--once"), &home).await;
    assert_eq!(once.status.code(), Some(1), "{}", once.all());
    assert!(
        once.stderr.contains("is not an aw-sync-samay upstream"),
        "{}",
        once.stderr
    );
    assert!(
        once.stderr.contains(&format!("(PID {})", daemon.pid())),
        "{}",
        once.stderr
    );
}

/// Two `--once` at once: the second cannot ask the first (a one-shot takes no requests) and
/// says who holds the lock, by PID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_once_names_the_pid_of_the_first() {
    let rig = Rig::new().await;
    rig.bucket("window").await;
    rig.insert("window", &series(2000, 0.1, 300, "w")).await;
    rig.dev.faults().update(|f| f.slow_ms = 300);
    let home = home(&rig);
    let config = write_config(&home, &rig.dev.base_url(), "batch_size = 100");
    let cmd = || sync_command(&home, rig.aw.port(), &config, TEST_TOKEN);
    // The first runs for about 6 s; the second starts once the first is syncing.
    let mut first = Daemon::spawn(cmd().arg("--once"), &home.join("out"));
    let mut synced = false;
    for _ in 0..200 {
        if !rig.upstream_events("window").await.is_empty() {
            synced = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(synced, "the first --once did not start: {}", first.stderr());
    let second = run(cmd().arg("--once"), &home).await;
    assert_eq!(second.status.code(), Some(2), "{}", second.all());
    assert!(
        second.stderr.contains(&format!(
            "another aw-sync-samay (PID {}) is already running for this aw-server and takes no sync requests",
            first.pid()
        )),
        "{}",
        second.stderr
    );
    rig.dev.faults().update(|f| f.slow_ms = 0);
    let status = samay_testkit::bin::wait_exit(&mut first.child, Duration::from_secs(60))
        .await
        .expect("the first --once ends");
    assert!(status.success(), "{}", first.stderr());
}

/// Every `--once`, dry run or refused start made a new log file, and only the newest 10 were
/// kept: the running daemon's log was deleted. Now one-shot commands append to one file of
/// their own, and no file in use is deleted, however many starts come after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemons_log_outlives_one_shot_commands_and_refused_starts() {
    let rig = Rig::new().await;
    let home = home(&rig);
    let config = write_config(&home, "", "");
    let cmd = || sync_command(&home, rig.aw.port(), &config, TEST_TOKEN);
    // Nine logs of other daemon runs, named as if from the future: the running daemon's log
    // is then the oldest, the first one pruning would pick.
    std::fs::create_dir_all(log_dir(&home)).expect("log dir");
    let seeded: Vec<String> = (1..=9)
        .map(|day| format!("aw-sync-samay_2099-01-{day:02}T00-00-00.log"))
        .collect();
    for name in &seeded {
        std::fs::write(log_dir(&home).join(name), "another run\n").expect("seed");
    }
    let mut daemon = Daemon::spawn(&mut cmd(), &home.join("out"));
    daemon.wait_for("idling until stopped").await;
    let before = daemon_logs(&home);
    assert_eq!(before.len(), 10, "{before:?}");
    let own = before.first().expect("the daemon's log").clone();
    assert!(!seeded.contains(&own), "{before:?}");
    // A log is named by the second its process started, and one started in the daemon's second
    // would append to the daemon's file: what follows starts in a later second.
    let own_second = own
        .trim_start_matches("aw-sync-samay_")
        .trim_end_matches(".log")
        .to_string();
    for _ in 0..40 {
        if chrono::Local::now().format("%Y-%m-%dT%H-%M-%S").to_string() != own_second {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Twelve one-shot commands beside it.
    for _ in 0..6 {
        run(cmd().args(["--once", "--dry-run"]), &home).await;
        run(cmd().arg("--once"), &home).await;
    }
    assert_eq!(daemon_logs(&home), before, "one-shots add no daemon log");
    let commands =
        std::fs::read_to_string(log_dir(&home).join("commands.log")).expect("commands.log");
    assert_eq!(
        commands.matches(" ---- aw-sync-samay ").count(),
        12,
        "each one-shot's lines, after a header: {commands}"
    );

    // Refused starts (the daemon holds the lock) write daemon logs, as aw-qt's crash dialog
    // wants, and prune: the running daemon's log is the oldest, and in use.
    for _ in 0..3 {
        let refused = run(&mut cmd(), &home).await;
        assert!(!refused.status.success(), "{}", refused.all());
        assert!(
            refused.stderr.contains(&format!("(PID {})", daemon.pid())),
            "{}",
            refused.stderr
        );
    }
    let after = daemon_logs(&home);
    assert!(
        after.contains(&own),
        "the running daemon's log was deleted: {after:?}"
    );
    assert!(seeded.iter().all(|s| after.contains(s)), "{after:?}");
    assert_eq!(
        after.len(),
        11,
        "the ten newest (9 seeded, the last refused start's), and the one in use: {after:?}"
    );
    let text = std::fs::read_to_string(log_dir(&home).join(&own)).expect("its log");
    assert!(text.contains("idling until stopped"), "{text}");
    let (status, _) = daemon.stop_with("TERM").await;
    assert!(status.success());
}

/// A daemon started from a shell that then exits (`nohup aw-sync-samay &`) keeps running: the
/// orphan exit is for aw-qt's modules. It stopped with "parent went away".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_started_from_a_shell_outlives_the_shell() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path();
    let template = samay_testkit::bin::isolated_command(home);
    let mut shell = Command::new("sh");
    shell
        .arg("-c")
        .arg("\"$0\" --testing --port \"$1\" & echo $!; sleep 1")
        .arg(template.get_program())
        .arg(free_port().to_string());
    for (key, value) in template.get_envs() {
        match value {
            Some(v) => shell.env(key, v),
            None => shell.env_remove(key),
        };
    }
    let out = home.join("shell.out");
    let err = home.join("daemon.err");
    let status = shell
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("stdout"))
        .stderr(std::fs::File::create(&err).expect("stderr"))
        .status()
        .expect("sh runs");
    assert!(status.success());
    let pid: u32 = std::fs::read_to_string(&out)
        .expect("pid")
        .trim()
        .parse()
        .expect("the shell printed the daemon's pid");
    let stderr = || std::fs::read_to_string(&err).unwrap_or_default();
    // Its parent is gone; three seconds later it still runs (the orphan check was
    // immediate on Linux, and once a second elsewhere).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next().map(str::to_owned))
        })
        .is_some_and(|state| state != "Z" && state != "X");
    assert!(alive, "the daemon stopped with its shell: {}", stderr());
    samay_testkit::daemon::send_signal(pid, "TERM");
    assert!(
        stderr().contains("which is not aw-qt: keeps running when it exits"),
        "{}",
        stderr()
    );
    assert!(!stderr().contains("went away"), "{}", stderr());
}
