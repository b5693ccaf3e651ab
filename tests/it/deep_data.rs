//! Issue 11, point 2: an aw-server answer whose event data is nested 20,000 levels deep
//! overflowed the stack in the canonical hash (exit 134, nothing synced after it); 200,000 levels
//! burnt 22 s of CPU first. Every place that reads or walks event data from aw-server is run
//! here on such data, on a stack smaller than a Windows main thread's (1 MiB): parsing a page,
//! hashing, redacting, serializing the upload, the dry run, the quarantine and its display.
//! Then the real binary syncs from an aw-server that serves such an event.

use std::collections::{BTreeMap, BTreeSet};

use aw_sync_samay::auth::AccessToken;
use aw_sync_samay::privacy::Redaction;
use aw_sync_samay::source::{AwClient, Bucket, Event, PageEvent, SourceError};
use aw_sync_samay::state::hash::{check_depth, event_data_hash, DataError, MAX_DATA_DEPTH};
use aw_sync_samay::state::{Acked, Commit, DestKey, Quarantined, Span, Store};
use aw_sync_samay::upstream::batch::{Batch, BatchBody, OutEvent};
use aw_sync_samay::upstream::contract::BucketMeta;
use aw_sync_samay::upstream::dry_run::DryRunSink;
use aw_sync_samay::upstream::BatchSink;
use chrono::{Duration as ChronoDuration, SecondsFormat, Utc};

use samay_testkit::bin::{sync_command, write_config};
use samay_testkit::devserver::{start_dev_server, stored_events, TEST_TOKEN};
use samay_testkit::hostile::{nested_data, Answer, Hostile};

/// Smaller than the 1 MiB a Windows main thread has: whatever recursion is left is bounded.
const STACK: usize = 512 * 1024;

fn event_text(id: i64, minutes_ago: i64, data: &str) -> String {
    let at = (Utc::now() - ChronoDuration::minutes(minutes_ago))
        .to_rfc3339_opts(SecondsFormat::Micros, true);
    format!(r#"{{"id":{id},"timestamp":"{at}","duration":1.0,"data":{data}}}"#)
}

/// The data nested `levels` deep, and a page (newest first) with it between two plain events.
fn page_with_a_deep_event(levels: usize) -> (String, String) {
    let deep = nested_data(levels);
    let page = format!(
        "[{},{},{}]",
        event_text(3, 1, r#"{"app":"after"}"#),
        event_text(2, 2, &deep),
        event_text(1, 3, r#"{"app":"before"}"#)
    );
    (deep, page)
}

/// Each reader of event data, on `levels`-deep data; returns nothing, panics on a wrong answer
/// (a stack overflow aborts the whole test binary).
fn every_reader(levels: usize) {
    let (deep, page) = page_with_a_deep_event(levels);

    // aw-server's page, as the scan reads it: the data stays text, whatever its depth.
    let events: Vec<PageEvent> = serde_json::from_str(&page).expect("a page of PageEvents");
    assert_eq!(events[1].data.get(), deep);
    // As a parsed `Event` (probes, fetches by id): serde_json's recursion limit, an error.
    let parsed = serde_json::from_str::<Vec<Event>>(&page);
    assert!(parsed.is_err(), "{levels} levels parsed into a map");

    // The hash and the redaction: the same typed error, found in one pass.
    let span = Span {
        start_ns: 1,
        duration_ns: 2,
    };
    assert_eq!(
        event_data_hash(span, &events[1].data),
        Err(DataError::TooDeep)
    );
    assert_eq!(check_depth(events[1].data.get()), Err(DataError::TooDeep));
    let redaction = Redaction {
        drop: BTreeSet::from(["title".to_string()]),
        hash: BTreeSet::from(["url".to_string()]),
    };
    assert_eq!(
        redaction.apply_raw(&[7; 32], &events[1].data).map(|_| ()),
        Err(DataError::TooDeep)
    );
    // The neighbours are fine.
    assert!(event_data_hash(span, &events[0].data).is_ok());
    assert!(redaction.apply_raw(&[7; 32], &events[2].data).is_ok());

    // The upload's serialization passes the text through as it is.
    let batch = Batch {
        batch_id: uuid::Uuid::new_v4(),
        device_id: uuid::Uuid::new_v4(),
        user_id: None,
        hostname: "h".into(),
        sync_timestamp: Utc::now().to_rfc3339(),
        buckets: BTreeMap::from([(
            "b".to_string(),
            BucketMeta {
                bucket_type: "t".into(),
                client: "c".into(),
                hostname: "h".into(),
                created: None,
            },
        )]),
        events: events
            .iter()
            .map(|e| OutEvent {
                bucket_id: "b".into(),
                event_id: e.id.unwrap_or(0),
                hash: [0; 16],
                start_ns: e.timestamp.timestamp_nanos_opt().expect("in range"),
                duration: e.duration,
                data: e.data.clone(),
            })
            .collect(),
        deletions: Vec::new(),
    };
    let json = serde_json::to_string(&batch.request()).expect("serializes");
    assert!(json.contains(&deep));
    // The body the upstream client writes: the same bytes.
    let mut body = Vec::new();
    batch.write_json(&mut body).expect("writes");
    assert_eq!(String::from_utf8(body).expect("UTF-8"), json);
    // `--dry-run` shows samples: the deep one is skipped, not walked.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let sink = DryRunSink::default();
    runtime
        .block_on(sink.send_batch(&AccessToken::new("t"), &batch))
        .expect("dry run");
    assert_eq!(sink.report().buckets["b"].events, 3);

    // The quarantine keeps the payload whole, and `--status` reads it back and renders it.
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("state.sqlite")).expect("state");
    let event_json = serde_json::to_string(&batch.events[1].to_up_event()).expect("serializes");
    let dest = store
        .destination(&DestKey::new("http://127.0.0.1:1", "dev"), true)
        .expect("destination")
        .expect("written");
    let bucket: Bucket = serde_json::from_str(
        r#"{"id":"b","type":"t","client":"c","hostname":"h","created":"2024-01-01T00:00:00Z"}"#,
    )
    .expect("bucket");
    let row = store
        .bucket_state(dest, &bucket, Some("d"))
        .expect("bucket row")
        .row;
    store
        .commit(&Commit {
            quarantined: vec![Quarantined {
                acked: Acked {
                    row,
                    event_id: 2,
                    hash: [0; 16],
                    span,
                },
                reason: DataError::TooDeep.to_string(),
                event_json: event_json.clone(),
            }],
            ..Commit::default()
        })
        .expect("quarantined");
    let shown = store.quarantine(5).expect("read back");
    assert_eq!(shown[0].event, serde_json::Value::String(event_json));
    assert!(shown[0].reason.contains("nested more than 127 levels"));
}

#[test]
fn every_reader_of_event_data_takes_20000_and_200000_levels_in_one_pass() {
    for levels in [20_000, 200_000] {
        std::thread::Builder::new()
            .stack_size(STACK)
            .spawn(move || every_reader(levels))
            .expect("thread")
            .join()
            .unwrap_or_else(|_| panic!("{levels} levels: a reader failed (see above)"));
    }
}

#[test]
fn data_as_deep_as_aw_server_rust_accepts_is_hashed_and_redacted() {
    let data: Box<serde_json::value::RawValue> =
        serde_json::from_str(&nested_data(MAX_DATA_DEPTH)).expect("JSON");
    let span = Span {
        start_ns: 1,
        duration_ns: 2,
    };
    assert!(event_data_hash(span, &data).is_ok());
    let redaction = Redaction {
        drop: BTreeSet::from(["title".to_string()]),
        hash: BTreeSet::from(["a".to_string()]),
    };
    let redacted = redaction.apply_raw(&[7; 32], &data).expect("redacted");
    assert!(
        redacted.get().starts_with(r#"{"a":"blake3:"#),
        "{}",
        redacted.get()
    );
}

/// A hostile aw-server with one bucket of three events, the middle one nested `levels` deep:
/// aw-server-rust's answers, shaped as the scan asks (a probe for the newest event, then the
/// window's page).
async fn aw_server_with_a_deep_event(levels: usize) -> Hostile {
    let (deep, page) = page_with_a_deep_event(levels);
    let deep_event = event_text(2, 2, &deep);
    let newest = format!("[{}]", event_text(3, 1, r#"{"app":"after"}"#));
    Hostile::start(move |req| {
        let path = req.target.split('?').next().unwrap_or("");
        let query = req.target.split_once('?').map_or("", |(_, q)| q);
        match (req.method.as_str(), path) {
            ("GET", "/api/0/info") => Answer::json(
                200,
                r#"{"hostname":"h","version":"v0.13.0","testing":true,"device_id":"d"}"#,
            ),
            ("GET", "/api/0/buckets/") => Answer::json(
                200,
                r#"{"b":{"id":"b","type":"t","client":"c","hostname":"h","created":"2024-01-01T00:00:00Z","data":{}}}"#,
            ),
            ("GET", "/api/0/buckets/b/events/count") => Answer::json(200, "3"),
            ("GET", "/api/0/buckets/b/events") if query.contains("limit=1&") || query.ends_with("limit=1") => {
                if query.contains("end=") {
                    Answer::json(200, "[]")
                } else {
                    Answer::json(200, newest.clone())
                }
            }
            ("GET", "/api/0/buckets/b/events") => Answer::json(200, page.clone()),
            ("GET", "/api/0/buckets/b/events/2") => Answer::json(200, deep_event.clone()),
            ("POST", p) if p.ends_with("/heartbeat") => Answer::json(
                200,
                event_text(9, 0, "{}"),
            ),
            ("POST", _) => Answer::json(200, "{}"),
            _ => Answer::json(404, r#"{"message":"no"}"#),
        }
    })
    .await
}

#[tokio::test]
async fn the_client_reads_a_deep_page_as_text_and_refuses_it_as_a_map() {
    let aw = aw_server_with_a_deep_event(200_000).await;
    let client = AwClient::new("127.0.0.1", aw.port()).expect("client");
    let page: Vec<PageEvent> = client
        .get_events_as("b", None, None, Some(1000))
        .await
        .expect("a page");
    assert_eq!(page.len(), 3);
    match client.get_events("b", None, None, Some(1000)).await {
        Err(SourceError::Malformed { detail, .. }) => {
            assert!(detail.contains("recursion limit"), "{detail}");
        }
        other => panic!("expected Malformed, got {other:?}"),
    }
    // By id, too: as text it is read, as a map it is refused.
    let one: Option<PageEvent> = client.get_event_as("b", 2).await.expect("read as text");
    assert_eq!(
        one.map(|e| e.data.get().len()),
        Some(nested_data(200_000).len())
    );
    assert!(matches!(
        client.get_event("b", 2).await,
        Err(SourceError::Malformed { .. })
    ));
}

/// The real binary, `--once`, from the hostile aw-server into the real dev server: it ends
/// with an exit code (before: killed by a stack overflow, status 134) and says why.
#[tokio::test]
async fn a_sync_over_an_event_nested_200000_levels_deep_ends_cleanly_and_says_why() {
    let aw = aw_server_with_a_deep_event(200_000).await;
    let home = tempfile::tempdir().expect("tempdir");
    let dev = start_dev_server(home.path()).await;
    let config = write_config(home.path(), &dev.base_url(), "");
    let mut cmd = sync_command(home.path(), aw.port(), &config, TEST_TOKEN);
    cmd.arg("--once");
    let output = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("task")
        .expect("runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.code().is_some(),
        "killed by a signal: {:?}\n{text}",
        output.status
    );
    assert!(
        text.contains("nested more than 127 levels"),
        "the reason is said:\n{text}"
    );
    // Nothing of the deep event reached the upstream; its neighbours did, and the deep one
    // waits in the quarantine, which makes the exit code "you must act" (1).
    let stored = stored_events(&dev, "b").await;
    assert!(stored.iter().all(|e| e.event_id != 2), "{stored:?}");
    let mut ids: Vec<i64> = stored.iter().map(|e| e.event_id).collect();
    ids.sort_unstable();
    assert_eq!(ids, [1, 3], "the neighbours are delivered:\n{text}");
    assert_eq!(output.status.code(), Some(1), "{text}");
}
