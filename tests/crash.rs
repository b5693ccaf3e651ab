//! kill -9 at random points of a long sync: after a restart the upstream holds exactly the
//! source's events — nothing lost, and what was re-sent was absorbed as duplicates.

mod common;

use std::time::Duration;

use common::bin::{sync_command, write_config};
use common::devserver::TEST_TOKEN;
use common::rig::{series, Rig};
use rand::{Rng, SeedableRng};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_points_loses_nothing_and_duplicates_nothing_upstream() {
    let rig = Rig::new().await;
    rig.bucket("window").await;
    rig.bucket("afk").await;
    rig.insert("window", &series(4000, 5.0, 60, "w")).await;
    rig.insert("afk", &series(800, 30.0, 60, "a")).await;
    // Slow answers stretch the sync so kills land while reading, batching, uploading and
    // committing.
    rig.dev.faults().update(|f| f.slow_ms = 5);
    let home = rig.dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let config = write_config(
        &home,
        &rig.dev.base_url(),
        "page_size = 100\nbatch_size = 25\noffline_queue_size = 200",
    );

    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("CRASH_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut kills = 0;
    for _ in 0..25 {
        let mut child = sync_command(&home, rig.aw.port(), &config, TEST_TOKEN)
            .arg("--once")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn aw-sync-samay");
        let delay = Duration::from_millis(rng.random_range(30..700));
        tokio::time::sleep(delay).await;
        match child.try_wait().expect("wait") {
            Some(_) => break, // finished before the kill: the sync is complete
            None => {
                child.kill().expect("kill -9"); // SIGKILL on Unix
                child.wait().expect("reap");
                kills += 1;
            }
        }
    }
    rig.dev.faults().clear();
    let out = sync_command(&home, rig.aw.port(), &config, TEST_TOKEN)
        .arg("--once")
        .output()
        .expect("final run");
    assert!(
        out.status.success(),
        "final --once failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    rig.assert_exact("window").await;
    rig.assert_exact("afk").await;
    let w = common::devserver::bucket_stats(&rig.dev, "window")
        .await
        .unwrap();
    let a = common::devserver::bucket_stats(&rig.dev, "afk")
        .await
        .unwrap();
    assert_eq!((w.events, a.events), (4000, 800));
    assert_eq!(
        w.versions_replaced + a.versions_replaced,
        0,
        "no event was changed by a re-send"
    );
    eprintln!(
        "kills: {kills}, events re-sent after a crash (absorbed as duplicates): {}",
        w.duplicates + a.duplicates
    );
    assert!(
        kills >= 1,
        "the sync finished before any kill: make it longer"
    );
}
