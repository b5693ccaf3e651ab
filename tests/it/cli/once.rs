//! `--once` and `--status`: a sync, what it reports, and the one line it says when it cannot work.

use samay_server::{self as devserver, DevServerConfig};
use samay_testkit::awserver::free_port;
use samay_testkit::bin::{read, run, sync_command, write_config};
use samay_testkit::devserver::TEST_TOKEN;
use samay_testkit::rig::{series, Rig};

use super::support::*;

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
