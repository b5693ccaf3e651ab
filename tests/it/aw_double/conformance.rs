//! Each check, run on the double (in memory and on SQLite) and on Python aw-server.

use aw_sync_samay::source::{Event, SourceError};
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{json, Value};

use super::backend::*;

/// Runs each named check against the double and against Python aw-server.
macro_rules! conformance {
    ($($check:ident),* $(,)?) => {$(
        mod $check {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn double() {
                super::$check(super::Backend::double().await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn double_sqlite() {
                super::$check(super::Backend::double_sqlite().await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn python() {
                super::$check(super::Backend::python().await).await;
            }
        }
    )*};
}

conformance!(
    overlap_filter_is_inclusive_and_straddlers_are_clipped,
    query_end_and_stored_precision,
    events_longer_than_a_day_and_the_python_prefilter,
    newest_first_with_default_and_explicit_limits,
    ids_are_one_increasing_counter_across_buckets,
    get_by_id_returns_the_unclipped_event,
    count_ignores_the_range_on_aw_server_rust_only,
    the_query_api_sums_clipped_durations_per_timeperiod,
    delete_removes_one_event,
    heartbeats_merge_only_with_equal_data_within_pulsetime,
    bucket_metadata_and_existing_bucket,
    missing_bucket_and_missing_event_are_404,
    info_reports_a_device_id,
    restart_keeps_data_and_replace_database_starts_over,
);

async fn overlap_filter_is_inclusive_and_straddlers_are_clipped(b: Backend) {
    b.bucket("b").await;
    b.insert(
        "b",
        &[
            ev(0.0, 9.0, "before"),
            ev(0.0, 10.0, "touches-start"),
            ev(5.0, 10.0, "straddles-start"),
            ev(12.0, 2.0, "inside"),
            ev(18.0, 10.0, "straddles-end"),
            ev(20.0, 0.0, "at-end"),
            ev(21.0, 1.0, "after"),
        ],
    )
    .await;
    let got = b.events("b", Some(at(10.0)), Some(at(20.0)), None).await;
    let s = |t: &str, a: f64, d: f64| (t.to_string(), a, d);
    // Python clips at its rounded-up end (`end` + 1 ms); aw-server-rust at `end`.
    let end_slack = if b.is_double() { 0.0 } else { 0.001 };
    assert_eq!(
        spans(&got),
        vec![
            s("at-end", 20.0, 0.0),
            s("straddles-end", 18.0, 2.0 + end_slack),
            s("inside", 12.0, 2.0),
            s("straddles-start", 10.0, 5.0),
            s("touches-start", 10.0, 0.0),
        ]
    );
}

async fn query_end_and_stored_precision(b: Backend) {
    b.bucket("b").await;
    b.insert(
        "b",
        &[
            ev(10.001, 1.0, "1ms-after-end"),
            ev(10.002, 1.0, "2ms-after-end"),
        ],
    )
    .await;
    let got = tags(&b.events("b", None, Some(at(10.0)), None).await);
    if b.is_double() {
        // aw-server-rust: `starttime <= end`, exactly.
        assert!(got.is_empty(), "{got:?}");
    } else {
        // Python compares against `end` rounded up by a millisecond.
        assert_eq!(got, ["1ms-after-end"]);
    }

    b.bucket("p").await;
    let precise = samay_testkit::rig::event(
        t0() + TimeDelta::nanoseconds(123_456_789),
        1.123_456_789,
        json!({}),
    );
    b.insert("p", &[precise]).await;
    let back = &b.events("p", None, None, None).await[0];
    if b.is_double() {
        // Nanoseconds, both.
        assert_eq!(back.timestamp, t0() + TimeDelta::nanoseconds(123_456_789));
        assert_eq!(back.duration, 1.123_456_789);
    } else {
        // Timestamps truncated to ms, durations rounded to µs.
        assert_eq!(back.timestamp, t0() + TimeDelta::milliseconds(123));
        assert_eq!(back.duration, 1.123_457);
    }
    // The wire format: aw-server-rust `Z` with the shortest exact fraction; Python `+00:00`.
    let (_, raw) = b.get("/buckets/p/events").await;
    let text = raw[0]["timestamp"].as_str().expect("timestamp").to_string();
    if b.is_double() {
        assert_eq!(text, "2024-01-01T12:00:00.123456789Z");
    } else {
        assert_eq!(text, "2024-01-01T12:00:00.123000+00:00");
    }
}

async fn events_longer_than_a_day_and_the_python_prefilter(b: Backend) {
    b.bucket("b").await;
    // 30 h, starting 30 h before the range.
    b.insert("b", &[ev(-30.0 * 3600.0, 30.0 * 3600.0 + 600.0, "long")])
        .await;
    let got = b.events("b", Some(at(0.0)), Some(at(3600.0)), None).await;
    if b.is_double() {
        assert_eq!(spans(&got), vec![("long".to_string(), 0.0, 600.0)]);
    } else {
        // Python's `timestamp >= start - 24h` pre-filter misses it: a documented limit.
        assert!(got.is_empty(), "{got:?}");
    }
    // Without a range both return it whole.
    assert_eq!(b.events("b", None, None, None).await.len(), 1);
}

async fn newest_first_with_default_and_explicit_limits(b: Backend) {
    b.bucket("b").await;
    // 150 events inserted out of order (back-dated inserts), 1 s apart.
    let mut order: Vec<usize> = (0..150).collect();
    order.sort_by_key(|i| (i * 37) % 150);
    let events: Vec<Event> = order
        .iter()
        .map(|&i| ev(i as f64, 0.5, &format!("e{i:03}")))
        .collect();
    b.insert("b", &events).await;

    let all = b.events("b", None, None, None).await;
    assert_eq!(all.len(), 150, "no default limit on either server");
    assert!(all.windows(2).all(|w| w[0].timestamp > w[1].timestamp));
    assert_eq!(tags(&all)[0], "e149");

    let ten = b.events("b", None, None, Some(10)).await;
    assert_eq!(tags(&ten), tags(&all[..10]), "limit keeps the newest");
    let (status, minus_one) = b.get("/buckets/b/events?limit=-1").await;
    assert_eq!(status, 200);
    assert_eq!(minus_one.as_array().map(Vec::len), Some(150));
    assert!(b.events("b", None, None, Some(0)).await.is_empty());
    // A range and a limit: the newest of the range.
    let ranged = b
        .events("b", Some(at(100.0)), Some(at(120.0)), Some(3))
        .await;
    assert_eq!(tags(&ranged), ["e120", "e119", "e118"]);
}

async fn ids_are_one_increasing_counter_across_buckets(b: Backend) {
    b.bucket("a").await;
    b.bucket("c").await;
    let client = b.client();
    for (i, bucket) in ["a", "c", "a", "c", "c", "a"].iter().enumerate() {
        b.insert(bucket, &[ev(i as f64, 1.0, &format!("n{i}"))])
            .await;
    }
    let hb = client
        .heartbeat("a", &ev(100.0, 0.0, "hb"), 1.0)
        .await
        .expect("heartbeat");
    let mut all = b.events("a", None, None, None).await;
    all.extend(b.events("c", None, None, None).await);
    all.sort_by_key(|e| e.id);
    let ids: Vec<i64> = all.iter().filter_map(|e| e.id).collect();
    assert_eq!(
        ids,
        (1..=7).collect::<Vec<_>>(),
        "unique, in insertion order"
    );
    assert_eq!(tags(&all), ["n0", "n1", "n2", "n3", "n4", "n5", "hb"]);
    assert_eq!(hb.id, Some(7));

    // Deleting the newest id and inserting again.
    client.delete_event("a", 7).await.expect("delete");
    b.insert("c", &[ev(200.0, 1.0, "after-delete")]).await;
    let newest = b.events("c", None, None, Some(1)).await;
    if b.is_double() {
        // aw-server-rust's table is AUTOINCREMENT: an id is never reused.
        assert_eq!(newest[0].id, Some(8));
    } else {
        // Python's peewee AutoField is a plain rowid: the deleted max id comes back.
        assert_eq!(newest[0].id, Some(7));
    }
}

async fn get_by_id_returns_the_unclipped_event(b: Backend) {
    b.bucket("b").await;
    b.insert("b", &[ev(0.0, 100.0, "long")]).await;
    let clipped = b.events("b", Some(at(40.0)), Some(at(60.0)), None).await;
    // Python clips at `end` + 1 ms (see the overlap check).
    let clipped_duration = if b.is_double() { 20.0 } else { 20.001 };
    assert_eq!(
        spans(&clipped),
        vec![("long".to_string(), 40.0, clipped_duration)]
    );
    let id = clipped[0].id.expect("id");
    let whole = b
        .client()
        .get_event("b", id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(spans(&[whole]), vec![("long".to_string(), 0.0, 100.0)]);
}

/// aw-server-rust's count handler passes no range to its datastore, so `start`/`end` change
/// nothing there; Python aw-server counts what overlaps the range (with its 24 h pre-filter).
async fn count_ignores_the_range_on_aw_server_rust_only(b: Backend) {
    b.bucket("b").await;
    b.insert(
        "b",
        &(0..20)
            .map(|i| ev(i as f64 * 10.0, 5.0, "x"))
            .collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(b.client().event_count("b").await.expect("count"), 20);
    // [40, 95]: the events starting at 40..=90; the one at 30 ends at 35, before the range.
    let start = "2024-01-01T12:00:40Z";
    let end = "2024-01-01T12:01:35Z";
    let (status, n) = b
        .get(&format!("/buckets/b/events/count?start={start}&end={end}"))
        .await;
    assert_eq!(status, 200);
    let listed = b.events("b", Some(at(40.0)), Some(at(95.0)), None).await;
    assert_eq!(listed.len(), 6);
    if b.is_double() {
        assert_eq!(n, json!(20));
    } else {
        assert_eq!(n, json!(listed.len()));
    }
}

/// `POST /api/0/query/` with `sum_durations(query_bucket(..))` over several timeperiods in one
/// request: on aw-server-rust each is the sum of the events overlapping it, clipped to it, in
/// seconds. Python aw-server 0.12 cannot serialise the `timedelta` it computes and answers 500
/// (why the sync narrows down with ranged counts there, which it honours).
async fn the_query_api_sums_clipped_durations_per_timeperiod(b: Backend) {
    b.bucket("b").await;
    b.insert(
        "b",
        &(0..20)
            .map(|i| ev(i as f64 * 10.0, 5.0, "x"))
            .collect::<Vec<_>>(),
    )
    .await;
    let body = json!({
        "query": ["events = query_bucket(\"b\");", "RETURN = sum_durations(events);"],
        "timeperiods": [
            "2024-01-01T12:00:42Z/2024-01-01T12:01:12Z",
            "2024-01-01T11:00:00Z/2024-01-01T12:00:01Z",
            "2024-01-01T13:00:00Z/2024-01-01T14:00:00Z",
        ],
    });
    let response = reqwest::Client::new()
        .post(b.url("/query/"))
        .json(&body)
        .send()
        .await
        .expect("query");
    if !b.is_double() {
        assert_eq!(response.status().as_u16(), 500);
        return;
    }
    assert_eq!(response.status().as_u16(), 200);
    let sums: Vec<f64> = response.json().await.expect("sums");
    // [42, 72]: 42..45 (3), 50..55, 60..65 (5 each), 70..72 (2); [.., 1]: 0..1; nothing later.
    assert_eq!(sums, vec![15.0, 1.0, 0.0]);
}

async fn delete_removes_one_event(b: Backend) {
    b.bucket("b").await;
    b.insert("b", &[ev(0.0, 1.0, "keep"), ev(5.0, 1.0, "drop")])
        .await;
    let all = b.events("b", None, None, None).await;
    let drop_id = all[0].id.expect("id");
    let client = b.client();
    client.delete_event("b", drop_id).await.expect("delete");
    assert_eq!(tags(&b.events("b", None, None, None).await), ["keep"]);
    assert_eq!(client.event_count("b").await.expect("count"), 1);
    assert_eq!(client.get_event("b", drop_id).await.expect("get"), None);
    // Deleting it again (or any missing id) is not an error on either server.
    client.delete_event("b", drop_id).await.expect("idempotent");
    client.delete_event("b", 999).await.expect("missing id");
}

async fn heartbeats_merge_only_with_equal_data_within_pulsetime(b: Backend) {
    b.bucket("b").await;
    let client = b.client();
    let hb = |start: f64, tag: &str| ev(start, 0.0, tag);
    let first = client.heartbeat("b", &hb(0.0, "a"), 10.0).await.unwrap();
    // Within end + pulsetime, same data: merged into the same event.
    let merged = client.heartbeat("b", &hb(5.0, "a"), 10.0).await.unwrap();
    assert_eq!(merged.id, first.id);
    assert_eq!(merged.timestamp, at(0.0));
    assert_eq!(merged.duration, 5.0);
    // Exactly at end + pulsetime: still merged (inclusive).
    let edge = client.heartbeat("b", &hb(15.0, "a"), 10.0).await.unwrap();
    assert_eq!((edge.id, edge.duration), (first.id, 15.0));
    // Different data: a new event, even within the pulsetime.
    let other = client.heartbeat("b", &hb(16.0, "b"), 10.0).await.unwrap();
    assert_ne!(other.id, first.id);
    // Same data again but the gap exceeds the pulsetime: a new event.
    let late = client.heartbeat("b", &hb(40.0, "b"), 10.0).await.unwrap();
    assert_ne!(late.id, other.id);
    let stored = b.events("b", None, None, None).await;
    assert_eq!(
        spans(&stored),
        vec![
            ("b".to_string(), 40.0, 0.0),
            ("b".to_string(), 16.0, 0.0),
            ("a".to_string(), 0.0, 15.0),
        ]
    );
    assert_eq!(stored[2].id, first.id);
}

async fn bucket_metadata_and_existing_bucket(b: Backend) {
    let before = Utc::now() - TimeDelta::seconds(5);
    b.bucket("b").await;
    b.insert("b", &[ev(0.0, 10.0, "x"), ev(3.0, 1.0, "y")])
        .await;
    let client = b.client();
    // Creating it again: 304, existing bucket untouched.
    assert!(!client
        .create_bucket("b", "other-type", "other", "other")
        .await
        .expect("304"));
    let buckets = client.get_buckets().await.expect("buckets");
    let meta = &buckets["b"];
    assert_eq!(meta.id, "b");
    assert_eq!(meta.bucket_type, "test");
    assert_eq!(meta.client, "conformance");
    assert_eq!(meta.hostname, "host");
    let created = meta.created.expect("created");
    assert!(created >= before && created <= Utc::now() + TimeDelta::seconds(5));
    // `last_updated`: the end of the newest (by start) event on Python aw-server and the
    // in-memory double; aw-server-rust (so the SQLite double) leaves it null.
    let (_, raw) = b.get("/buckets/").await;
    if b.is_sqlite() {
        assert_eq!(raw["b"]["last_updated"], Value::Null);
    } else {
        let last: DateTime<Utc> = raw["b"]["last_updated"]
            .as_str()
            .expect("last_updated")
            .parse()
            .expect("timestamp");
        assert_eq!(last, at(4.0));
    }
    if b.is_double() {
        // aw-server-rust's span metadata.
        assert_eq!(raw["b"]["metadata"]["start"], json!("2024-01-01T12:00:00Z"));
        assert_eq!(raw["b"]["metadata"]["end"], json!("2024-01-01T12:00:10Z"));
    }
    let (status, one) = b.get("/buckets/b").await;
    assert_eq!(status, 200);
    assert_eq!(one["id"], json!("b"));
    assert_eq!(one["type"], json!("test"));
}

async fn missing_bucket_and_missing_event_are_404(b: Backend) {
    let (status, body) = b.get("/buckets/nope/events").await;
    assert_eq!(status, 404);
    let message = body["message"].as_str().expect("message").to_string();
    if b.is_double() {
        assert_eq!(message, "The requested bucket 'nope' does not exist");
    } else {
        assert!(
            message.starts_with("There's no bucket named nope"),
            "{message}"
        );
    }
    let client = b.client();
    for result in [
        client
            .get_events("nope", None, None, None)
            .await
            .map(|_| ()),
        client.event_count("nope").await.map(|_| ()),
        client.insert_events("nope", &[ev(0.0, 1.0, "x")]).await,
        client
            .heartbeat("nope", &ev(0.0, 1.0, "x"), 1.0)
            .await
            .map(|_| ()),
        client.get_event("nope", 1).await.map(|_| ()),
    ] {
        assert!(
            matches!(result, Err(SourceError::BucketNotFound(ref id)) if id == "nope"),
            "{result:?}"
        );
    }

    b.bucket("b").await;
    let (status, body) = b.get("/buckets/b/events/42").await;
    assert_eq!(status, 404);
    if b.is_double() {
        assert_eq!(
            body,
            json!({"message": "The requested event '42' does not exist in bucket 'b'"})
        );
    } else {
        assert_eq!(body, Value::Null);
    }
    assert_eq!(client.get_event("b", 42).await.expect("get"), None);
}

async fn info_reports_a_device_id(b: Backend) {
    let info = b.client().info().await.expect("info");
    assert!(!info.hostname.is_empty());
    assert!(!info.version.is_empty());
    assert!(info.testing);
    let device = info.device_id.expect("device_id");
    assert!(uuid::Uuid::parse_str(&device).is_ok(), "{device}");
}

async fn restart_keeps_data_and_replace_database_starts_over(mut b: Backend) {
    b.bucket("b").await;
    b.insert("b", &[ev(0.0, 1.0, "x"), ev(2.0, 1.0, "y")]).await;
    let client = b.client();
    let info = client.info().await.expect("info");
    let created = client.get_buckets().await.expect("buckets")["b"].created;

    b.restart().await;
    assert_eq!(tags(&b.events("b", None, None, None).await), ["y", "x"]);
    assert_eq!(client.info().await.expect("info").device_id, info.device_id);
    b.insert("b", &[ev(4.0, 1.0, "z")]).await;
    assert_eq!(b.events("b", None, None, Some(1)).await[0].id, Some(3));

    b.replace_database().await;
    assert!(client.get_buckets().await.expect("buckets").is_empty());
    assert_ne!(client.info().await.expect("info").device_id, info.device_id);
    b.bucket("b").await;
    b.insert("b", &[ev(0.0, 1.0, "fresh")]).await;
    let fresh = b.events("b", None, None, None).await;
    assert_eq!(fresh[0].id, Some(1), "ids start over");
    assert_ne!(
        client.get_buckets().await.expect("buckets")["b"].created,
        created
    );
}
