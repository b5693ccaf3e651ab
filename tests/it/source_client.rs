//! `AwClient` against the real Python aw-server (see `crates/samay-testkit/src/awserver.rs`), and the server
//! behaviour the sync engine relies on. Every server fact asserted here is one the engine's
//! correctness depends on; if a server upgrade changes one, the test should say which.

use std::time::Duration;

use aw_sync_samay::source::{AwClient, Event, SourceError};
use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use samay_testkit::awserver::{free_port, AwServer};
use serde_json::{json, Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 1, 1, h, m, s)
        .single()
        .expect("valid test time")
}

fn data(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("test data must be an object, got {other}"),
    }
}

fn ev(ts: DateTime<Utc>, duration: f64, d: Value) -> Event {
    Event::new(ts, duration, data(d))
}

fn assert_secs(actual: f64, expected: f64) {
    assert!(
        (actual - expected).abs() < 1e-9,
        "duration {actual} != expected {expected}"
    );
}

async fn bucket(client: &AwClient, id: &str) {
    let created = client
        .create_bucket(id, "currentwindow", "aw-sync-samay-test", "testhost")
        .await
        .expect("create bucket");
    assert!(created, "bucket {id} should be new");
}

#[tokio::test]
async fn round_trip_insert_and_read_back() {
    let server = AwServer::start();
    let client = server.client();

    let info = client.info().await.expect("info");
    assert!(info.testing, "started with --testing");
    assert!(!info.version.is_empty());

    let id = "aw-watcher-window_my-host.local";
    bucket(&client, id).await;
    // A second create is a 304, reported as "already existed", not an error.
    assert!(!client
        .create_bucket(id, "currentwindow", "x", "y")
        .await
        .expect("re-create bucket"));

    let ts = at(12, 0, 0) + TimeDelta::nanoseconds(123_456_789);
    let inserted = vec![
        ev(
            ts,
            10.5,
            json!({"app": "firefox", "title": "ünïcødé \"quoted\""}),
        ),
        ev(
            at(13, 0, 0),
            3600.0,
            json!({"app": "term", "n": 1, "nested": {"a": [1, 2]}}),
        ),
    ];
    client.insert_events(id, &inserted).await.expect("insert");

    let got = client.get_events(id, None, None, None).await.expect("get");
    assert_eq!(got.len(), 2);
    assert_eq!(client.event_count(id).await.expect("count"), 2);
    // Newest first.
    assert_eq!(got[0].timestamp, at(13, 0, 0));
    assert_eq!(got[0].duration, 3600.0);
    assert_eq!(got[0].data, inserted[1].data);
    assert_eq!(got[1].data, inserted[0].data);
    assert_eq!(got[1].duration, 10.5);
    // Python aw-server truncates timestamps to MILLIseconds when storing.
    assert_eq!(
        got[1].timestamp,
        at(12, 0, 0) + TimeDelta::milliseconds(123)
    );
    assert!(got.iter().all(|e| e.id.is_some()));

    let buckets = client.get_buckets().await.expect("buckets");
    let b = buckets.get(id).expect("bucket listed");
    assert_eq!(b.id, id);
    assert_eq!(b.bucket_type, "currentwindow");
    assert_eq!(b.client, "aw-sync-samay-test");
    assert_eq!(b.hostname, "testhost");
    assert!(b.created.is_some());
}

#[tokio::test]
async fn bucket_ids_with_reserved_characters_round_trip() {
    let server = AwServer::start();
    let client = server.client();
    // `?`, `#` and an already-encoded-looking `%2F` would all address something else
    // without path-segment encoding; spaces, `+` and non-ASCII must survive too.
    for id in [
        "host name with space",
        "q?a=1#frag",
        "pct%2Fx",
        "100%+done",
        "bücket_ü.x-y",
    ] {
        bucket(&client, id).await;
        client
            .insert_events(id, &[ev(at(9, 0, 0), 1.0, json!({"id": id}))])
            .await
            .expect("insert");
        let got = client.get_events(id, None, None, None).await.expect("get");
        assert_eq!(got.len(), 1, "bucket {id}");
        assert_eq!(got[0].data["id"], json!(id));
    }
    let buckets = client.get_buckets().await.expect("buckets");
    assert!(buckets.contains_key("100%+done"));
    assert!(buckets.contains_key("q?a=1#frag"));
    assert!(buckets.contains_key("pct%2Fx"));
    assert!(buckets.contains_key("bücket_ü.x-y"));
}

#[tokio::test]
async fn events_come_newest_first_and_limit_keeps_the_newest() {
    let server = AwServer::start();
    let client = server.client();
    bucket(&client, "b").await;
    // Inserted out of order: the order must come from the timestamps, not the ids.
    let minutes = [3u32, 0, 4, 1, 2];
    let events: Vec<Event> = minutes
        .iter()
        .map(|&m| ev(at(10, m, 0), 30.0, json!({"m": m})))
        .collect();
    client.insert_events("b", &events).await.expect("insert");

    let all = client.get_events("b", None, None, None).await.expect("all");
    let order: Vec<i64> = all
        .iter()
        .map(|e| e.data["m"].as_i64().expect("m"))
        .collect();
    assert_eq!(order, vec![4, 3, 2, 1, 0]);

    let two = client
        .get_events("b", None, None, Some(2))
        .await
        .expect("limit");
    let order: Vec<i64> = two
        .iter()
        .map(|e| e.data["m"].as_i64().expect("m"))
        .collect();
    assert_eq!(order, vec![4, 3]);

    let none = client
        .get_events("b", None, None, Some(0))
        .await
        .expect("limit 0");
    assert!(none.is_empty());
}

#[tokio::test]
async fn range_queries_filter_by_overlap_and_clip_to_the_range() {
    let server = AwServer::start();
    let client = server.client();
    bucket(&client, "b").await;
    let events = [
        ev(at(9, 0, 0), 600.0, json!({"e": "before"})), // 09:00-09:10, outside
        ev(at(10, 0, 0), 3600.0, json!({"e": "straddles_start"})), // 10:00-11:00
        ev(at(10, 40, 0), 60.0, json!({"e": "inside"})), // 10:40-10:41
        ev(at(11, 30, 0), 3600.0, json!({"e": "straddles_end"})), // 11:30-12:30
        ev(at(10, 0, 0), 10800.0, json!({"e": "covers"})), // 10:00-13:00
        ev(at(13, 0, 0), 60.0, json!({"e": "after"})),  // outside
    ];
    client.insert_events("b", &events).await.expect("insert");
    let (start, end) = (at(10, 30, 0), at(12, 0, 0));

    let got = client
        .get_events("b", Some(start), Some(end), None)
        .await
        .expect("range");
    let find = |name: &str| -> &Event {
        got.iter()
            .find(|e| e.data["e"] == json!(name))
            .unwrap_or_else(|| panic!("{name} missing from {got:?}"))
    };
    assert_eq!(got.len(), 4, "{got:?}");
    assert!(got.iter().all(|e| e.data["e"] != json!("before")));
    assert!(got.iter().all(|e| e.data["e"] != json!("after")));

    // Straddling `start`: moved to start, shortened by the same amount.
    let s = find("straddles_start");
    assert_eq!(s.timestamp, start);
    assert_secs(s.duration, 1800.0);

    // Inside: untouched.
    let i = find("inside");
    assert_eq!(i.timestamp, at(10, 40, 0));
    assert_secs(i.duration, 60.0);

    // Straddling `end`: shortened to end at `end` -- but Python aw-server rounds `end` UP to
    // the next millisecond (aw_datastore/datastore.py `Bucket.get`: `1 + int(us / 1000)`),
    // always, even when `end` is already a whole millisecond. So the clipped duration is
    // 1800.001 s, not 1800 s. aw-server-rust clips to `end` exactly.
    let e = find("straddles_end");
    assert_eq!(e.timestamp, at(11, 30, 0));
    assert_secs(e.duration, 1800.001);

    // Covering the whole range: clipped at both ends.
    let c = find("covers");
    assert_eq!(c.timestamp, start);
    assert_secs(c.duration, 5400.001);

    // Still newest (by clipped start) first; ties keep some order but the newest is first.
    assert_eq!(got[0].data["e"], json!("straddles_end"));

    // The stored rows are untouched: get_event returns the unclipped original.
    let original = client
        .get_event("b", s.id.expect("id"))
        .await
        .expect("get_event")
        .expect("present");
    assert_eq!(original.timestamp, at(10, 0, 0));
    assert_secs(original.duration, 3600.0);
    assert_eq!(original.id, s.id);
    let original = client
        .get_event("b", e.id.expect("id"))
        .await
        .expect("get_event")
        .expect("present");
    assert_eq!(original.timestamp, at(11, 30, 0));
    assert_secs(original.duration, 3600.0);

    // Only `start`: clipped at start, not at end.
    let open_end = client
        .get_events("b", Some(start), None, None)
        .await
        .expect("open end");
    let c = open_end
        .iter()
        .find(|x| x.data["e"] == json!("covers"))
        .expect("covers");
    assert_eq!(c.timestamp, start);
    assert_secs(c.duration, 9000.0);
    assert_eq!(open_end.len(), 5, "{open_end:?}");
}

/// The inclusive boundary the engine's resume cursor has to cope with on Python aw-server.
#[tokio::test]
async fn overlap_boundaries_at_start_and_end() {
    let server = AwServer::start();
    let client = server.client();
    bucket(&client, "b").await;
    let frac = TimeDelta::milliseconds(250);
    client
        .insert_events(
            "b",
            &[
                // Ends exactly at the whole-second start below.
                ev(at(10, 0, 0), 60.0, json!({"e": "ends_at_whole"})),
                // Ends exactly at the fractional start below.
                ev(at(11, 0, 0), 60.25, json!({"e": "ends_at_frac"})),
                // Starts exactly at the end of the first range.
                ev(at(10, 2, 0), 30.0, json!({"e": "starts_at_end"})),
            ],
        )
        .await
        .expect("insert");

    // Whole-second start: an event ending exactly there is included, clipped to 0 s.
    let got = client
        .get_events("b", Some(at(10, 1, 0)), Some(at(10, 2, 0)), None)
        .await
        .expect("range");
    let names: Vec<&Value> = got.iter().map(|e| &e.data["e"]).collect();
    assert!(names.contains(&&json!("ends_at_whole")), "{got:?}");
    let w = got
        .iter()
        .find(|e| e.data["e"] == json!("ends_at_whole"))
        .expect("ends_at_whole");
    assert_eq!(w.timestamp, at(10, 1, 0));
    assert_secs(w.duration, 0.0);
    // An event starting exactly at `end` is included too (the filter is `timestamp <= end`,
    // and `end` was rounded up by 1 ms), with the 1 ms as its duration.
    let s = got
        .iter()
        .find(|e| e.data["e"] == json!("starts_at_end"))
        .expect("starts_at_end included");
    assert_eq!(s.timestamp, at(10, 2, 0));
    assert_secs(s.duration, 0.001);

    // Fractional start: Python compares the bound and the computed end time as TEXT
    // ("...00.250000+00:00" vs "...00.250+00:00"), so an event ending exactly at a
    // fractional-second start is NOT returned, unlike at a whole-second start.
    let got = client
        .get_events("b", Some(at(11, 1, 0) + frac), Some(at(11, 5, 0)), None)
        .await
        .expect("range");
    assert!(
        got.iter().all(|e| e.data["e"] != json!("ends_at_frac")),
        "{got:?}"
    );
    // ...while one millisecond earlier it is.
    let got = client
        .get_events(
            "b",
            Some(at(11, 1, 0) + frac - TimeDelta::milliseconds(1)),
            Some(at(11, 5, 0)),
            None,
        )
        .await
        .expect("range");
    let f = got
        .iter()
        .find(|e| e.data["e"] == json!("ends_at_frac"))
        .expect("ends_at_frac 1 ms earlier");
    assert_secs(f.duration, 0.001);
}

#[tokio::test]
async fn missing_event_is_none_and_missing_bucket_is_bucket_not_found() {
    let server = AwServer::start();
    let client = server.client();
    bucket(&client, "b").await;
    client
        .insert_events("b", &[ev(at(10, 0, 0), 1.0, json!({}))])
        .await
        .expect("insert");
    let id = client.get_events("b", None, None, None).await.expect("get")[0]
        .id
        .expect("id");

    assert!(client.get_event("b", id).await.expect("present").is_some());
    assert!(client
        .get_event("b", id + 1000)
        .await
        .expect("absent")
        .is_none());

    // Deleting the event: gone by id; deleting again is not an error on Python.
    client.delete_event("b", id).await.expect("delete");
    assert!(client.get_event("b", id).await.expect("deleted").is_none());
    client.delete_event("b", id).await.expect("delete again");
    assert_eq!(client.event_count("b").await.expect("count"), 0);

    match client.get_event("nope", 1).await {
        Err(SourceError::BucketNotFound(b)) => assert_eq!(b, "nope"),
        other => panic!("expected BucketNotFound, got {other:?}"),
    }
}

#[tokio::test]
async fn deleted_bucket_is_bucket_not_found_everywhere() {
    let server = AwServer::start();
    let client = server.client();
    bucket(&client, "gone").await;
    client
        .insert_events("gone", &[ev(at(10, 0, 0), 1.0, json!({}))])
        .await
        .expect("insert");
    client.delete_bucket("gone").await.expect("delete bucket");

    let not_found = |r: Result<(), SourceError>, what: &str| match r {
        Err(e @ SourceError::BucketNotFound(_)) => {
            assert!(!e.is_transient());
            assert!(e.to_string().contains("gone"), "{e}");
        }
        other => panic!("{what}: expected BucketNotFound, got {other:?}"),
    };
    not_found(
        client
            .get_events("gone", None, None, None)
            .await
            .map(|_| ()),
        "get_events",
    );
    not_found(client.event_count("gone").await.map(|_| ()), "event_count");
    not_found(client.get_event("gone", 1).await.map(|_| ()), "get_event");
    not_found(
        client
            .insert_events("gone", &[ev(at(10, 0, 0), 1.0, json!({}))])
            .await,
        "insert_events",
    );
    not_found(
        client
            .heartbeat("gone", &ev(at(10, 0, 0), 0.0, json!({})), 10.0)
            .await
            .map(|_| ()),
        "heartbeat",
    );
    not_found(client.delete_event("gone", 1).await, "delete_event");
    not_found(client.delete_bucket("gone").await, "delete_bucket");
    assert!(!client
        .get_buckets()
        .await
        .expect("buckets")
        .contains_key("gone"));
}

#[tokio::test]
async fn heartbeat_merges_into_the_same_row_and_backdated_heartbeats_insert() {
    let server = AwServer::start();
    let client = server.client();
    bucket(&client, "hb").await;
    let d = json!({"app": "editor"});

    let first = client
        .heartbeat("hb", &ev(at(10, 0, 0), 0.0, d.clone()), 10.0)
        .await
        .expect("hb 1");
    let id = first
        .id
        .expect("heartbeat returns the stored event with its id");
    assert_secs(first.duration, 0.0);

    // Same data within pulsetime: the SAME row grows.
    let merged = client
        .heartbeat("hb", &ev(at(10, 0, 5), 0.0, d.clone()), 10.0)
        .await
        .expect("hb 2");
    assert_eq!(merged.id, Some(id));
    assert_eq!(merged.timestamp, at(10, 0, 0));
    assert_secs(merged.duration, 5.0);
    let stored = client
        .get_event("hb", id)
        .await
        .expect("get")
        .expect("present");
    assert_secs(stored.duration, 5.0);
    assert_eq!(client.event_count("hb").await.expect("count"), 1);

    // Older than the last event: a new, back-dated row.
    let back = client
        .heartbeat("hb", &ev(at(9, 59, 0), 0.0, d.clone()), 10.0)
        .await
        .expect("backdated hb");
    let back_id = back.id.expect("id");
    assert_ne!(back_id, id);
    assert!(back_id > id);
    assert_eq!(back.timestamp, at(9, 59, 0));
    assert_eq!(client.event_count("hb").await.expect("count"), 2);
    // The merged row is unchanged by it.
    let stored = client
        .get_event("hb", id)
        .await
        .expect("get")
        .expect("present");
    assert_secs(stored.duration, 5.0);

    // A heartbeat carrying someone else's id must not replace that row: the id is stripped.
    let mut with_id = ev(at(11, 0, 0), 0.0, json!({"app": "other"}));
    with_id.id = Some(id);
    let new = client
        .heartbeat("hb", &with_id, 10.0)
        .await
        .expect("hb with id");
    assert_ne!(new.id, Some(id));
    let stored = client
        .get_event("hb", id)
        .await
        .expect("get")
        .expect("present");
    assert_eq!(stored.data, data(d));
}

#[tokio::test]
async fn event_ids_are_one_counter_across_buckets_and_posted_ids_are_stripped() {
    let server = AwServer::start();
    let client = server.client();
    bucket(&client, "a").await;
    bucket(&client, "b").await;
    client
        .insert_events("a", &[ev(at(10, 0, 0), 1.0, json!({"n": 1}))])
        .await
        .expect("a1");
    client
        .insert_events("b", &[ev(at(10, 0, 0), 1.0, json!({"n": 2}))])
        .await
        .expect("b1");
    client
        .insert_events("a", &[ev(at(10, 1, 0), 1.0, json!({"n": 3}))])
        .await
        .expect("a2");
    let a = client.get_events("a", None, None, None).await.expect("a");
    let b = client.get_events("b", None, None, None).await.expect("b");
    let a_ids: Vec<i64> = a.iter().map(|e| e.id.expect("id")).collect();
    let b_ids: Vec<i64> = b.iter().map(|e| e.id.expect("id")).collect();
    assert_eq!(a_ids, vec![3, 1]);
    assert_eq!(b_ids, vec![2]);

    // Re-posting a read event (which carries id 1) into bucket b: without stripping, Python
    // would move row 1 out of bucket a. With stripping it is a new row 4 in b.
    client.insert_events("b", &a[1..]).await.expect("re-post");
    assert_eq!(client.event_count("a").await.expect("count a"), 2);
    let b = client.get_events("b", None, None, None).await.expect("b");
    let b_ids: Vec<i64> = b.iter().map(|e| e.id.expect("id")).collect();
    assert!(b_ids.contains(&4) && b_ids.contains(&2), "{b_ids:?}");
    let one = client
        .get_event("a", 1)
        .await
        .expect("get")
        .expect("row 1 still in a");
    assert_eq!(one.data["n"], json!(1));
}

#[tokio::test]
async fn restart_keeps_the_database_and_replace_database_resets_ids() {
    let mut server = AwServer::start();
    let client = server.client();
    bucket(&client, "b").await;
    client
        .insert_events(
            "b",
            &[
                ev(at(10, 0, 0), 1.0, json!({})),
                ev(at(10, 1, 0), 1.0, json!({})),
            ],
        )
        .await
        .expect("insert");
    let created = client.get_buckets().await.expect("buckets")["b"].created;
    let device = client.info().await.expect("info").device_id;

    // Down: typed as Unreachable and transient.
    server.stop();
    match client.get_events("b", None, None, None).await {
        Err(e @ SourceError::Unreachable { .. }) => {
            assert!(e.is_transient());
            assert!(e.to_string().contains(client.base_url()), "{e}");
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }

    server.restart();
    // The same client (and its pool) works again after the restart.
    assert_eq!(client.event_count("b").await.expect("count"), 2);
    assert_eq!(
        client.get_buckets().await.expect("buckets")["b"].created,
        created
    );

    server.replace_database();
    match client.event_count("b").await {
        Err(SourceError::BucketNotFound(_)) => {}
        other => panic!("expected BucketNotFound after reset, got {other:?}"),
    }
    assert_ne!(client.info().await.expect("info").device_id, device);
    bucket(&client, "b").await;
    client
        .insert_events("b", &[ev(at(10, 0, 0), 1.0, json!({}))])
        .await
        .expect("insert");
    let ids: Vec<Option<i64>> = client
        .get_events("b", None, None, None)
        .await
        .expect("get")
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(ids, vec![Some(1)], "ids restart at 1 in a fresh database");
    assert_ne!(
        client.get_buckets().await.expect("buckets")["b"].created,
        created
    );
}

#[tokio::test]
async fn nothing_listening_is_unreachable_and_transient() {
    let client = AwClient::new("127.0.0.1", free_port()).expect("client");
    let started = std::time::Instant::now();
    match client.info().await {
        Err(e @ SourceError::Unreachable { .. }) => assert!(e.is_transient()),
        other => panic!("expected Unreachable, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// A one-shot HTTP server on loopback answering `response` verbatim; yields the raw request.
async fn fake_server(response: String) -> (u16, tokio::task::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let handle = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.expect("accept");
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = sock.read(&mut buf).await.expect("read");
            request.extend_from_slice(&buf[..n]);
            if n == 0 || request.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        sock.write_all(response.as_bytes()).await.expect("write");
        sock.shutdown().await.ok();
        String::from_utf8_lossy(&request).into_owned()
    });
    (port, handle)
}

fn http_response(status: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

async fn request_of(handle: tokio::task::JoinHandle<String>) -> String {
    tokio::time::timeout(Duration::from_secs(5), handle)
        .await
        .expect("fake server finished")
        .expect("fake server task")
}

#[tokio::test]
async fn garbage_json_is_malformed_not_a_panic() {
    let (port, handle) = fake_server(http_response(
        "200 OK",
        r#"[{"id": 1, "timestamp": "yesterday""#,
    ))
    .await;
    let client = AwClient::new("127.0.0.1", port).expect("client");
    match client.get_events("b", None, None, None).await {
        Err(e @ SourceError::Malformed { .. }) => {
            assert!(!e.is_transient());
            let text = e.to_string();
            assert!(text.contains("line 1 column"), "{text}");
        }
        other => panic!("expected Malformed, got {other:?}"),
    }
    request_of(handle).await;

    // Valid JSON of the wrong shape is malformed too; from `info`, the server's first answer,
    // it means another program answers on the port.
    let (port, handle) = fake_server(http_response("200 OK", r#"[{"hostname": 5}]"#)).await;
    let client = AwClient::new("127.0.0.1", port).expect("client");
    assert!(matches!(
        client.get_buckets().await,
        Err(SourceError::Malformed { .. })
    ));
    request_of(handle).await;
    let (port, handle) = fake_server(http_response("200 OK", r#"{"hostname": 5}"#)).await;
    let client = AwClient::new("127.0.0.1", port).expect("client");
    match client.info().await {
        Err(e @ SourceError::NotAwServer { .. }) => {
            assert!(!e.is_transient());
            assert!(e.to_string().contains("is not aw-server"), "{e}");
        }
        other => panic!("expected NotAwServer, got {other:?}"),
    }
    request_of(handle).await;
}

#[tokio::test]
async fn error_statuses_keep_a_truncated_body() {
    let long = format!("<html>{}</html>", "x".repeat(5000));
    let (port, handle) = fake_server(http_response("503 Service Unavailable", &long)).await;
    let client = AwClient::new("127.0.0.1", port).expect("client");
    match client.get_buckets().await {
        Err(e @ SourceError::Status { .. }) => {
            assert!(e.is_transient());
            let SourceError::Status { status, body, url } = e else {
                unreachable!()
            };
            assert_eq!(status, 503);
            assert!(body.starts_with("<html>xxx"));
            assert!(body.chars().count() <= 201, "{}", body.len());
            assert!(url.ends_with("/api/0/buckets/"));
        }
        other => panic!("expected Status, got {other:?}"),
    }
    request_of(handle).await;

    let (port, handle) = fake_server(http_response("500 INTERNAL SERVER ERROR", "boom")).await;
    let client = AwClient::new("127.0.0.1", port).expect("client");
    match client.get_event("b", 7).await {
        Err(e @ SourceError::Status { status: 500, .. }) => assert!(!e.is_transient()),
        other => panic!("expected Status 500, got {other:?}"),
    }
    request_of(handle).await;
}

#[tokio::test]
async fn requests_carry_bearer_key_loopback_host_and_encoded_times() {
    let (port, handle) = fake_server(http_response("200 OK", "[]")).await;
    let client = AwClient::new("127.0.0.1", port)
        .expect("client")
        .with_api_key(Some("s3cret".into()));
    let start = at(12, 0, 0) + TimeDelta::nanoseconds(123_456_789);
    let got = client
        .get_events(
            "aw-watcher-afk_host.lan",
            Some(start),
            Some(at(13, 0, 0)),
            Some(5000),
        )
        .await
        .expect("get");
    assert!(got.is_empty());
    let request = request_of(handle).await;
    let first_line = request.lines().next().expect("request line");
    assert_eq!(
        first_line,
        "GET /api/0/buckets/aw-watcher-afk_host.lan/events?start=2024-01-01T12%3A00%3A00.123456Z&end=2024-01-01T13%3A00%3A00.000000Z&limit=5000 HTTP/1.1"
    );
    let lower = request.to_ascii_lowercase();
    assert!(
        lower.contains("\r\nauthorization: bearer s3cret\r\n"),
        "{request}"
    );
    assert!(
        lower.contains(&format!("\r\nhost: 127.0.0.1:{port}\r\n")),
        "{request}"
    );

    // Without a key, no Authorization header at all.
    let (port, handle) = fake_server(http_response("200 OK", "0")).await;
    let client = AwClient::new("localhost", port)
        .expect("client")
        .with_api_key(None);
    assert_eq!(client.event_count("b").await.expect("count"), 0);
    let request = request_of(handle).await.to_ascii_lowercase();
    assert!(!request.contains("authorization"), "{request}");
    assert!(
        request.contains(&format!("\r\nhost: localhost:{port}\r\n")),
        "{request}"
    );
}

/// A keep-alive HTTP/1.1 server on loopback that answers `[]` to event pages and `0` to
/// counts, counting the connections it accepted and those its client closed. With
/// `answers: Some(n)`, a connection's request after its `n`th is read and the connection
/// closed without an answer, as a server closing an idle connection just as a request arrives.
async fn keep_alive_server(
    answers: Option<usize>,
) -> (
    u16,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (accepted, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (a, c) = (Arc::clone(&accepted), Arc::clone(&closed));
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            a.fetch_add(1, Ordering::SeqCst);
            let c = Arc::clone(&c);
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                let mut answered = 0;
                loop {
                    let n = sock.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        c.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                    while let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&request[..end]).into_owned();
                        request.drain(..end + 4);
                        if answers.is_some_and(|n| answered == n) {
                            return;
                        }
                        answered += 1;
                        let body = if head.contains("/events/count") {
                            "0"
                        } else {
                            "[]"
                        };
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if sock.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (port, accepted, closed)
}

/// A catch-up's pages travel over one kept connection (a new one per megabyte page cost a
/// connect, an accept and a transfer from TCP's initial window each time: 5 % of a 1M-event
/// catch-up's wall time, `benches/catchup.rs`), and so do a cycle's other reads (a connection
/// made and closed for each was a seventh of an idle cycle's CPU, perf); a write goes on a
/// connection of its own, and once released for going idle nothing is left open that
/// aw-server could close and so wake an idle daemon (issue 5).
#[tokio::test]
async fn reads_keep_one_connection_until_released_and_writes_keep_none() {
    use std::sync::atomic::Ordering;
    let (port, accepted, closed) = keep_alive_server(None).await;
    let client = AwClient::new("127.0.0.1", port).expect("client");
    for _ in 0..3 {
        let page = client
            .get_events_raw("b", None, Some(at(12, 0, 0)), Some(5000))
            .await
            .expect("page");
        assert_eq!(page.parse().expect("parse").len(), 0);
    }
    for _ in 0..2 {
        assert_eq!(client.event_count("b").await.expect("count"), 0);
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "three pages and two counts, one connection"
    );

    client.delete_bucket("b").await.expect("delete");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "the write on a connection of its own"
    );
    let settled = |n: usize| {
        let closed = std::sync::Arc::clone(&closed);
        async move {
            tokio::time::timeout(Duration::from_secs(5), async {
                while closed.load(Ordering::SeqCst) < n {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await
            .is_ok()
        }
    };
    assert!(
        settled(1).await,
        "the write's connection is closed by the client"
    );
    assert_eq!(
        closed.load(Ordering::SeqCst),
        1,
        "the reads' connection is kept"
    );

    client.release_pages();
    assert!(
        settled(2).await,
        "released: the reads' connection is closed"
    );
    assert_eq!(client.event_count("b").await.expect("count after"), 0);
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        3,
        "a new one after the release"
    );
}

/// A kept connection aw-server closes just as a page's request goes out (aw-server-rust closes
/// one idle for 5 s): the page is asked again on a new connection, not reported as aw-server
/// being unreachable.
#[tokio::test]
async fn a_page_whose_kept_connection_was_closed_is_asked_again_on_a_new_one() {
    use std::sync::atomic::Ordering;
    let (port, accepted, _) = keep_alive_server(Some(1)).await;
    let client = AwClient::new("127.0.0.1", port).expect("client");
    for n in 1..=3 {
        let page = client
            .get_events_raw("b", None, None, Some(5000))
            .await
            .unwrap_or_else(|e| panic!("page {n}: {e}"));
        assert_eq!(page.parse().expect("parse").len(), 0);
        assert_eq!(accepted.load(Ordering::SeqCst), n, "page {n}");
    }
}
