//! What the binary writes: never the token, anywhere; log files named like aw-core's.

use std::path::PathBuf;

use samay_testkit::awserver::free_port;
use samay_testkit::bin::{run, sync_command, write_config};
use samay_testkit::daemon::Daemon;
use samay_testkit::devserver::TEST_TOKEN;
use samay_testkit::rig::{series, Rig};

use super::support::*;

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
