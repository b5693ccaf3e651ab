//! `--status` for people and for scripts, and the numbers `--once` prints (issue 10 §2 and
//! the "counts" and "errors" points of §5), with the real binary, a real Python aw-server and
//! the dev upstream: the exit code says who must act, `--json` carries the state and a todo
//! list whose commands repeat the user's flags, `--short` is one line, the daemon's log is
//! shown, every sync is recorded in the status bucket, and every number adds up.

use std::path::{Path, PathBuf};
use std::process::Command;

use aw_sync_samay::engine::status_bucket;
use samay_testkit::awserver::free_port;
use samay_testkit::bin::{run, sync_command, write_config, Run};
use samay_testkit::daemon::Daemon;
use samay_testkit::devserver::TEST_TOKEN;
use samay_testkit::rig::{series, Rig};
use serde_json::Value;

/// A HOME inside the rig's directory.
fn home(rig: &Rig) -> PathBuf {
    let home = rig.dir.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    home
}

fn json(r: &Run) -> Value {
    serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("--status --json is not JSON ({e}):\n{}", r.all()))
}

async fn status_json(cmd: &mut Command, dir: &Path) -> (Value, Option<i32>) {
    let r = run(cmd.args(["--status", "--json"]), dir).await;
    (json(&r), r.status.code())
}

/// Each state a user meets in the first hour, with its exit code: 0 healthy, 1 the user must
/// act, 2 something is unreachable. It always exited 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exit_code_says_who_must_act() {
    let rig = Rig::new().await;
    rig.bucket("window").await;
    rig.insert("window", &series(12, 10.0, 60, "w")).await;
    let home = home(&rig);
    let good = write_config(&home, &rig.dev.base_url(), "");
    let cmd = |config: &Path| sync_command(&home, rig.aw.port(), config, TEST_TOKEN);

    // Never synced, no daemon: sync once (exit 1, and the todo says how).
    let (v, code) = status_json(&mut cmd(&good), &home).await;
    assert_eq!(
        (v["state"].as_str(), code),
        (Some("never_synced"), Some(1)),
        "{v:#}"
    );
    assert!(
        v["todo"][0]["command"]
            .as_str()
            .is_some_and(|c| c.ends_with(" --once")),
        "{v:#}"
    );

    // Synced: healthy.
    let once = run(cmd(&good).arg("--once"), &home).await;
    assert!(once.status.success(), "{}", once.all());
    let (v, code) = status_json(&mut cmd(&good), &home).await;
    assert_eq!((v["state"].as_str(), code), (Some("ok"), Some(0)), "{v:#}");
    assert_eq!(v["exit_code"], 0, "{v:#}");
    assert_eq!(v["todo"], Value::Array(Vec::new()), "nothing to do: {v:#}");

    // Nothing configured: 1.
    let empty = home.join("empty.toml");
    std::fs::write(&empty, "[sync]\n").expect("config");
    let (v, code) = status_json(&mut cmd(&empty), &home).await;
    assert_eq!(
        (v["state"].as_str(), code),
        (Some("not_configured"), Some(1)),
        "{v:#}"
    );

    // The upstream does not answer: 2.
    let gone = home.join("gone.toml");
    std::fs::write(
        &gone,
        format!("[sync]\nbase_url = \"http://127.0.0.1:{}\"\n", free_port()),
    )
    .expect("config");
    let (v, code) = status_json(&mut cmd(&gone), &home).await;
    assert_eq!(
        (v["state"].as_str(), code),
        (Some("upstream_unreachable"), Some(2)),
        "{v:#}"
    );

    // aw-server does not answer: 2.
    let mut down = sync_command(&home, free_port(), &good, TEST_TOKEN);
    let (v, code) = status_json(&mut down, &home).await;
    assert_eq!(
        (v["state"].as_str(), code),
        (Some("aw_server_unreachable"), Some(2)),
        "{v:#}"
    );

    // The upstream refuses events for good: quarantined, 1.
    rig.dev
        .faults()
        .update(|f| f.reject_bucket_ids = vec!["window".into()]);
    rig.insert("window", &series(2, 1.0, 5, "refused")).await;
    let once = run(cmd(&good).arg("--once"), &home).await;
    assert_eq!(
        once.status.code(),
        Some(1),
        "a --once that quarantined must say so: {}",
        once.all()
    );
    let (v, code) = status_json(&mut cmd(&good), &home).await;
    assert_eq!(
        (v["state"].as_str(), code),
        (Some("quarantined"), Some(1)),
        "{v:#}"
    );
    assert_eq!(v["quarantined"], 2, "{v:#}");
}

/// Logged out: the To do group shows the login (it did not, though the README said so), and
/// `--json`'s todo carries it as a command with the flags the user ran, so it works when
/// pasted: the testing config, this port, this config file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_required_is_a_todo_with_the_users_own_flags() {
    let rig = Rig::new().await;
    let home = home(&rig);
    let config = write_config(
        &home,
        &rig.dev.base_url(),
        &format!(
            "[auth]\nclient_id = \"aw-sync-samay\"\nissuer = \"{}\"\ntoken_storage = \"file\"",
            rig.dev.issuer()
        ),
    );
    let login = format!(
        "aw-sync-samay --testing --port {} --config {} --login",
        rig.aw.port(),
        config.display()
    );
    let cmd = || {
        let mut c = sync_command(&home, rig.aw.port(), &config, TEST_TOKEN);
        c.env_remove("AW_SYNC_SAMAY_TOKEN").arg("--testing");
        c
    };

    let text = run(cmd().arg("--status"), &home).await;
    assert_eq!(text.status.code(), Some(1), "{}", text.all());
    let todo = text
        .stdout
        .split("\nTo do\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no To do group:\n{}", text.stdout));
    assert!(
        todo.lines()
            .any(|l| l == format!("  - log in to the upstream: {login}")),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout.starts_with("status     login required\n"),
        "{}",
        text.stdout
    );

    let (v, code) = status_json(&mut cmd(), &home).await;
    assert_eq!(code, Some(1));
    assert_eq!(v["state"], "login_required", "{v:#}");
    assert_eq!(v["login"], "login_required", "{v:#}");
    let items = v["todo"].as_array().expect("todo is a list");
    let item = items
        .iter()
        .find(|t| t["command"].as_str() == Some(login.as_str()))
        .unwrap_or_else(|| panic!("no todo runs {login:?}: {v:#}"));
    assert!(item["message"].as_str().is_some_and(|m| !m.is_empty()));

    // The same hint where --once fails for it.
    let once = run(cmd().arg("--once"), &home).await;
    assert_eq!(once.status.code(), Some(1), "{}", once.all());
    assert!(once.stderr.contains(&login), "{}", once.all());

    let short = run(cmd().args(["--status", "--short"]), &home).await;
    assert_eq!(short.status.code(), Some(1));
    assert!(
        short.stdout.starts_with("login required · "),
        "{}",
        short.stdout
    );
}

/// `--status --short`: one line for a status bar, with the same exit code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_short_form_is_one_line_for_status_bars() {
    let rig = Rig::new().await;
    rig.bucket("window").await;
    rig.insert("window", &series(5, 10.0, 60, "w")).await;
    let home = home(&rig);
    let config = write_config(&home, &rig.dev.base_url(), "");
    let cmd = || sync_command(&home, rig.aw.port(), &config, TEST_TOKEN);
    assert!(run(cmd().arg("--once"), &home).await.status.success());

    let short = run(cmd().args(["--status", "--short"]), &home).await;
    assert_eq!(short.status.code(), Some(0), "{}", short.all());
    let lines: Vec<&str> = short.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{:?}", short.stdout);
    let line = lines[0];
    assert!(
        line.starts_with("synced ") && line.ends_with(" ago · 0 pending")
            || line == "synced just now · 0 pending",
        "{line:?}"
    );

    rig.insert("window", &series(3, 1.0, 5, "new")).await;
    let short = run(cmd().args(["--status", "--short"]), &home).await;
    assert!(
        short.stdout.trim_end().ends_with("· 3 pending"),
        "{:?}",
        short.stdout
    );
}

/// The daemon's PID and log file show in `--status` while it runs, and the last one's log
/// when it does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_daemons_log_file() {
    let rig = Rig::new().await;
    rig.bucket("window").await;
    let home = home(&rig);
    let config = write_config(&home, &rig.dev.base_url(), "sync_interval = 3600");
    let cmd = || sync_command(&home, rig.aw.port(), &config, TEST_TOKEN);
    let mut daemon = Daemon::spawn(&mut cmd(), &home.join("out"));
    daemon.wait_for("sync cycle done").await;

    let (v, code) = status_json(&mut cmd(), &home).await;
    assert_eq!(code, Some(0), "{v:#}");
    assert_eq!(v["daemon"]["running"], true, "{v:#}");
    assert_eq!(v["daemon"]["pid"], daemon.pid(), "{v:#}");
    let log = PathBuf::from(v["daemon"]["log_file"].as_str().expect("a log file"));
    let text = std::fs::read_to_string(&log).expect("the log file exists");
    assert!(text.contains("aw-sync-samay started"), "its log: {text}");

    let human = run(cmd().arg("--status"), &home).await;
    let line = human
        .stdout
        .lines()
        .find(|l| l.starts_with("daemon "))
        .unwrap_or_else(|| panic!("no daemon line:\n{}", human.stdout));
    assert!(line.contains(&format!("PID {}", daemon.pid())), "{line}");
    assert!(
        line.ends_with(&format!("; log {}", log.display())),
        "{line}"
    );

    let (status, _) = daemon.stop_with("TERM").await;
    assert!(status.success());
    let (v, _) = status_json(&mut cmd(), &home).await;
    assert_eq!(v["daemon"]["running"], false, "{v:#}");
    assert_eq!(
        v["daemon"]["log_file"].as_str(),
        Some(log.to_str().expect("utf-8")),
        "the last run's log: {v:#}"
    );
}

/// The status bucket records every sync, `--once` included (it recorded daemon cycles only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_records_its_sync_in_the_status_bucket() {
    let rig = Rig::new().await;
    rig.bucket("window").await;
    rig.insert("window", &series(7, 10.0, 60, "w")).await;
    let home = home(&rig);
    let config = write_config(&home, &rig.dev.base_url(), "");
    let once = run(
        sync_command(&home, rig.aw.port(), &config, TEST_TOKEN).arg("--once"),
        &home,
    )
    .await;
    assert!(once.status.success(), "{}", once.all());
    let hostname = gethostname::gethostname().to_string_lossy().into_owned();
    let events = rig
        .client()
        .get_events(&status_bucket::bucket_id(&hostname), None, None, None)
        .await
        .expect("the status bucket exists");
    let last = events.first().expect("a status event");
    assert_eq!(last.data["status"], "ok", "{last:?}");
    assert_eq!(last.data["delivered"], 7, "{last:?}");
    assert_eq!(last.data["pending"], 0, "{last:?}");
}

/// `synced: 4606 read, 4601 delivered` and `read 2503` for 2501 events did not add up. Now
/// every number says what it counts and they do: new = delivered + quarantined, read = new +
/// re-read, and `--status`'s columns are explained under the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_numbers_of_once_and_status_add_up() {
    const N: u64 = 501;
    let rig = Rig::new().await;
    rig.bucket("window").await;
    rig.insert("window", &series(N as usize, 2.0, 60, "w"))
        .await;
    let home = home(&rig);
    // Small pages: copies are re-read at page edges, so read > N.
    let config = write_config(
        &home,
        &rig.dev.base_url(),
        "page_size = 50\nbatch_size = 40",
    );
    let cmd = || sync_command(&home, rig.aw.port(), &config, TEST_TOKEN);

    let numbers = |r: &Run| -> (u64, u64, u64, u64, u64) {
        let line = r
            .stdout
            .lines()
            .find(|l| l.starts_with("synced: "))
            .unwrap_or_else(|| panic!("no summary: {}", r.all()));
        let num = |before: &str| -> u64 {
            let at = line
                .find(before)
                .unwrap_or_else(|| panic!("{before:?} in {line}"));
            line[..at]
                .rsplit([' ', '('])
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("a number before {before:?} in {line}"))
        };
        (
            num(" new or changed events"),
            num(" delivered"),
            num(" quarantined"),
            num(" read from aw-server"),
            num(" re-read unchanged"),
        )
    };
    let first = run(cmd().arg("--once"), &home).await;
    assert!(first.status.success(), "{}", first.all());
    let (new, delivered, quarantined, read, reread) = numbers(&first);
    assert_eq!(new, N, "every event is new once: {}", first.stdout);
    assert_eq!(delivered + quarantined, new, "{}", first.stdout);
    assert_eq!(read, new + reread, "{}", first.stdout);
    assert!(read >= N, "{}", first.stdout);

    // Nothing new: nothing delivered, and what was read is all re-read.
    let second = run(cmd().arg("--once"), &home).await;
    let (new, delivered, _, read, reread) = numbers(&second);
    assert_eq!((new, delivered), (0, 0), "{}", second.stdout);
    assert_eq!(read, reread, "{}", second.stdout);

    let (v, _) = status_json(&mut cmd(), &home).await;
    let bucket = &v["buckets"][0];
    assert_eq!(bucket["delivered"], N, "{v:#}");
    assert_eq!(bucket["versions_sent"], N, "each version sent once: {v:#}");
    assert_eq!(bucket["pending"], 0, "{v:#}");
    let text = run(cmd().arg("--status"), &home).await;
    for column in ["delivered", "versions sent", "pending", "quarantined"] {
        assert!(
            text.stdout
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{column}: "))),
            "{column} is explained: {}",
            text.stdout
        );
    }
}

/// A server that is not the one expected is named for what it is: a `base_url` whose
/// `v1/health` answers 404 is "not an aw-sync-samay upstream" and `--once` fails (exit 1) even
/// with nothing to send (it exited 0); another program on aw-server's port is "not aw-server"
/// (it was "aw-server answered 404" and a page of HTML).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_servers_are_named_for_what_they_are() {
    let rig = Rig::new().await;
    let home = home(&rig);
    // aw-server itself as the upstream: a real HTTP server, no upstream.
    let aw_url = format!("http://127.0.0.1:{}", rig.aw.port());
    let wrong_upstream = write_config(&home, &aw_url, "");
    let cmd = |port: u16, config: &Path| sync_command(&home, port, config, TEST_TOKEN);
    let once = run(cmd(rig.aw.port(), &wrong_upstream).arg("--once"), &home).await;
    assert_eq!(once.status.code(), Some(1), "{}", once.all());
    assert!(
        once.stderr.contains(&format!(
            "{aw_url}/v1/health is not an aw-sync-samay upstream (it answered 404)"
        )),
        "{}",
        once.stderr
    );
    assert!(once.stdout.is_empty(), "no summary: {}", once.stdout);
    let (v, code) = status_json(&mut cmd(rig.aw.port(), &wrong_upstream), &home).await;
    assert_eq!(code, Some(1), "{v:#}");
    assert_eq!(v["state"], "not_an_upstream", "{v:#}");
    assert_eq!(v["upstream"]["answer"], "wrong", "{v:#}");

    // The dev upstream on "aw-server's" port: another program, not aw-server.
    let other = rig.dev.addr().port();
    let good = home.join("good.toml");
    std::fs::write(
        &good,
        format!("[sync]\nbase_url = \"{}\"\n", rig.dev.base_url()),
    )
    .expect("config");
    let once = run(cmd(other, &good).arg("--once"), &home).await;
    assert_eq!(once.status.code(), Some(1), "{}", once.all());
    assert!(
        once.stderr.contains(&format!(
            "the server at http://127.0.0.1:{other} is not aw-server (GET /api/0/info answered 404 Not Found)"
        )),
        "{}",
        once.stderr
    );
    let (v, code) = status_json(&mut cmd(other, &good), &home).await;
    assert_eq!(code, Some(1), "{v:#}");
    assert_eq!(v["state"], "not_aw_server", "{v:#}");
    assert_eq!(v["aw_server"]["answer"], "wrong", "{v:#}");
}
