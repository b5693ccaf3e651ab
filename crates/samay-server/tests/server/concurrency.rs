//! Two real `samay-server` processes on one PostgreSQL database.

use std::collections::BTreeSet;

use reqwest::StatusCode;
use uuid::Uuid;

use crate::common::{batch, event, fold, Client, Process, ALICE};

/// Two processes on one new database, without a rate limit (the tests send fast).
fn two_servers() -> (Process, Process, tempfile::TempDir) {
    let url = samay_testkit::postgres::shared().database();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("samay.toml");
    std::fs::write(
        &config,
        format!("database_url = \"{url}\"\n[limits]\nrate_per_minute = 0\n"),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let a = Process::start(&["--config", config], &[]);
    let b = Process::start(&["--config", config], &[]);
    (a, b, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_store_one_batch_once_and_serialize_a_key() {
    let (a, b, _config) = two_servers();
    let (ca, cb) = (Client::new(&a.base, ALICE), Client::new(&b.base, ALICE));
    let device = Uuid::new_v4();

    // The same batch to both processes at once, many times over: stored once each time.
    for round in 0..10 {
        let events = (0..50)
            .map(|i| event("w", round * 100 + i, "h", "2024-05-01T10:00:00Z"))
            .collect();
        let one = batch(device, events, vec![]);
        let (ra, rb) = tokio::join!(ca.post_batch(&one), cb.post_batch(&one));
        assert_eq!(ra.0, StatusCode::OK, "{}", ra.1);
        assert_eq!(rb.0, StatusCode::OK, "{}", rb.1);
        assert_eq!(ra.1, rb.1, "both answer the one stored answer");
        assert_eq!(ra.1["accepted"], 50);
    }
    let (feed, next) = ca.feed_from(0, 1000).await;
    assert_eq!(feed.len(), 500, "each batch stored once");
    assert_eq!(next, 500, "no seq spent on the second copies");

    // One key written concurrently through both processes: each write is one version with its
    // own seq, and the stored version is the one with the last seq.
    let writes = 20;
    let mut tasks = Vec::new();
    for i in 0..writes {
        let client = if i % 2 == 0 { ca.clone() } else { cb.clone() };
        let b = batch(
            device,
            vec![event("k", 1, &format!("v{i}"), "2024-05-01T10:00:00Z")],
            vec![],
        );
        tasks.push(tokio::spawn(async move { client.post_batch(&b).await }));
    }
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["accepted"], 1, "every write is a new version: {body}");
    }
    let (tail, last) = ca.feed_from(next, 1000).await;
    assert_eq!(tail.len(), 1, "the key appears once, at its latest version");
    assert_eq!(last, next + writes, "each version got its own seq");
    let (devices_status, devices) = ca.get("v1/devices").await;
    assert_eq!(devices_status, StatusCode::OK);
    let k = devices["devices"][0]["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["bucket_id"] == "k")
        .unwrap()
        .clone();
    assert_eq!(k["events"], 1);
}

/// A reader following the feed while both processes ingest never skips a change: what it
/// folded equals the whole feed read once everything committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_feed_reader_misses_nothing_committed_concurrently() {
    let (a, b, _config) = two_servers();
    let (ca, cb) = (Client::new(&a.base, ALICE), Client::new(&b.base, ALICE));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let client = if w % 2 == 0 { ca.clone() } else { cb.clone() };
            tokio::spawn(async move {
                let device = Uuid::new_v4();
                for n in 0..15 {
                    let events = (0..20)
                        .map(|i| event("w", n * 100 + i, &format!("h{w}"), "2024-05-01T10:00:00Z"))
                        .collect();
                    let (status, body) = client.post_batch(&batch(device, events, vec![])).await;
                    assert_eq!(status, StatusCode::OK, "{body}");
                }
            })
        })
        .collect();
    // Follow the feed while they write, in small pages.
    let mut after = 0;
    let mut seen = Vec::new();
    let mut done = false;
    while !done {
        done = writers.iter().all(|w| w.is_finished());
        let page = ca.changes(after, 37).await;
        after = page.next;
        seen.extend(page.changes);
    }
    for w in writers {
        w.await.unwrap();
    }
    let (rest, _) = ca.feed_from(after, 500).await;
    seen.extend(rest);
    let (whole, _) = cb.feed_from(0, 500).await;
    assert_eq!(whole.len(), 8 * 15 * 20);
    let folded = fold(&seen);
    assert_eq!(folded, fold(&whole), "the reader saw every change");
    let keys: BTreeSet<_> = folded.keys().collect();
    assert_eq!(keys.len(), 8 * 15 * 20);
}
