//! The config file: the commented default written on first run, bad values refused.

use std::path::Path;

use samay_testkit::awserver::free_port;
use samay_testkit::bin::{run, sync_command, wait_exit, RUN_TIMEOUT};
use samay_testkit::daemon::Daemon;
use samay_testkit::devserver::TEST_TOKEN;

use super::support::*;

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
