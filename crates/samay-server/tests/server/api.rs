//! The API suite: one body, run on SQLite and on PostgreSQL.

use reqwest::StatusCode;
use samay_api::{Change, ChangesResponse, Deletion, DevicesResponse};
use samay_server::{DatabaseUrl, Limits};
use serde_json::json;
use uuid::Uuid;

use crate::common::{batch, event, fold, spawn, unlimited, Client, ALICE, BOB};

#[tokio::test]
async fn api_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    suite(DatabaseUrl::Sqlite(dir.path().join("samay.sqlite"))).await;
}

#[tokio::test]
async fn api_on_postgres() {
    let url = samay_testkit::postgres::shared().database();
    suite(DatabaseUrl::Postgres(url)).await;
}

/// The stores read the stored hashes of a batch's keys by runs of close event ids (one range
/// scan each, not a probe per key): keys inside a run, rows between them, two buckets whose ids
/// interleave, a deleted key stored again — counted and stored as key by key.
#[tokio::test]
async fn keys_read_by_runs_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    keys_read_by_runs(DatabaseUrl::Sqlite(dir.path().join("samay.sqlite"))).await;
}

#[tokio::test]
async fn keys_read_by_runs_on_postgres() {
    let url = samay_testkit::postgres::shared().database();
    keys_read_by_runs(DatabaseUrl::Postgres(url)).await;
}

async fn keys_read_by_runs(db: DatabaseUrl) {
    let server = spawn(db, unlimited()).await;
    let alice = Client::new(&server.base_url(), ALICE);
    let laptop = Uuid::new_v4();
    let h = |b: &str, id: i64| format!("{b}{id}");
    let stored: Vec<_> = (1..=40)
        .map(|id| event("w", id, &h("w", id), T0))
        .chain(
            (2..=20)
                .step_by(2)
                .map(|id| event("v", id, &h("v", id), T0)),
        )
        .collect();
    let (_, body) = alice.post_batch(&batch(laptop, stored, vec![])).await;
    assert_eq!(body, json!({"accepted": 50, "duplicates": 0, "deleted": 0}));
    let gone = |id| Deletion {
        bucket_id: "w".into(),
        event_id: id,
    };
    let mixed = batch(
        laptop,
        vec![
            event("w", 1, "w1", T0),
            event("w", 3, "w3b", T0),
            event("w", 20, "w20", T0),
            event("w", 40, "w40", T0),
            event("w", 41, "w41", T0),
            event("w", 1000, "w1000", T0),
            event("v", 2, "v2", T0),
            event("v", 3, "v3", T0),
        ],
        vec![gone(17), gone(999)],
    );
    let (_, body) = alice.post_batch(&mixed).await;
    assert_eq!(body, json!({"accepted": 4, "duplicates": 4, "deleted": 1}));
    let (changes, next) = alice.feed_from(0, 100).await;
    let moved: Vec<(String, i64, bool)> = changes
        .iter()
        .filter(|c| c.seq > 50)
        .map(|c| (c.bucket_id.clone(), c.event_id, c.deleted))
        .collect();
    assert_eq!(
        moved,
        vec![
            ("w".into(), 3, false),
            ("w".into(), 41, false),
            ("w".into(), 1000, false),
            ("v".into(), 3, false),
            ("w".into(), 17, true),
        ],
        "the changed keys in the batch's order, deletions last"
    );
    // Sent again under a new batch id: all duplicates now; the deleted key is gone.
    let mut again = mixed.clone();
    again.batch_id = Uuid::new_v4();
    let (_, body) = alice.post_batch(&again).await;
    assert_eq!(body, json!({"accepted": 0, "duplicates": 8, "deleted": 0}));
    // The deleted key stored again, beside a stored one.
    let back = batch(
        laptop,
        vec![event("w", 16, "w16", T0), event("w", 17, "w17", T0)],
        vec![],
    );
    let (_, body) = alice.post_batch(&back).await;
    assert_eq!(body, json!({"accepted": 1, "duplicates": 1, "deleted": 0}));
    let (all, _) = alice.feed_from(0, 100).await;
    let folded = fold(&all);
    let mut want: Vec<(String, i64, String)> = (1..=41)
        .chain([1000])
        .map(|id| ("w".to_string(), id, h("w", id)))
        .chain([2, 3, 4, 6, 8, 10, 12, 14, 16, 18, 20].map(|id| ("v".to_string(), id, h("v", id))))
        .collect();
    want[2].2 = "w3b".into();
    want.sort();
    let have: Vec<(String, i64, String)> = folded
        .into_iter()
        .map(|((_, b, id), hash)| (b, id, hash))
        .collect();
    assert_eq!(have, want);
    assert!(all.last().unwrap().seq > next);
    server.shutdown().await;
}

const T0: &str = "2024-05-01T10:00:00Z";
const T1: &str = "2024-05-01T11:00:00.5Z";
const T2: &str = "2024-05-01T12:00:00.123456789Z";

async fn suite(db: DatabaseUrl) {
    let server = spawn(db, unlimited()).await;
    let base = server.base_url();
    let alice = Client::new(&base, ALICE);
    let bob = Client::new(&base, BOB);
    let laptop = Uuid::new_v4();

    // Health needs no token; /metrics neither.
    let (status, body) = Client::new(&base, "").get("v1/health").await;
    assert_eq!((status, body), (StatusCode::OK, json!({"ok": true})));

    // Who am I: the issuer-qualified subject.
    let (status, body) = alice.get("v1/me").await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"user": "static#alice"}))
    );
    let (status, _) = Client::new(&base, "not-a-token").get("v1/me").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // The batch contract: new, duplicate, replaced, deleted; replays; all or nothing.
    let first = batch(
        laptop,
        vec![
            event("w", 1, "a1", T0),
            event("w", 2, "b1", T1),
            event("w", 3, "c1", T2),
        ],
        vec![],
    );
    let (status, body) = alice.post_batch(&first).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"accepted": 3, "duplicates": 0, "deleted": 0}));
    let (_, replay) = alice.post_batch(&first).await;
    assert_eq!(replay, body, "a replay answers as the first time");
    let second = batch(
        laptop,
        vec![event("w", 1, "a1", T0), event("w", 2, "b2", T1)],
        vec![Deletion {
            bucket_id: "w".into(),
            event_id: 3,
        }],
    );
    let (_, body) = alice.post_batch(&second).await;
    assert_eq!(body, json!({"accepted": 1, "duplicates": 1, "deleted": 1}));
    // One bad event: nothing of the batch is stored, the bad one named.
    let mut bad = batch(
        laptop,
        vec![event("w", 7, "x", T0), event("w", 8, "y", "yesterday")],
        vec![],
    );
    bad.events[0].hash = "x".into();
    let (status, body) = alice.post_batch(&bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["rejected"], json!([1]));
    // Idempotency-Key must match the body.
    let r = alice
        .http
        .post(format!("{base}/v1/events/batch"))
        .bearer_auth(ALICE)
        .header("Idempotency-Key", Uuid::new_v4().to_string())
        .json(&first)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // The feed: every stored version and the tombstone, in seq order, paged by `next`.
    let (changes, next) = alice.feed_from(0, 2).await;
    let summary: Vec<(i64, bool, Option<String>)> = changes
        .iter()
        .map(|c| (c.event_id, c.deleted, c.hash.clone()))
        .collect();
    // 1 (a1, seq 1) is still current; 2 moved to its new version; 3 is a tombstone.
    assert_eq!(
        summary,
        vec![
            (1, false, Some("a1".into())),
            (2, false, Some("b2".into())),
            (3, true, None),
        ]
    );
    assert_eq!(next, changes.last().unwrap().seq);
    let change = &changes[1];
    assert_eq!(change.timestamp.as_deref(), Some(T1));
    assert_eq!(change.duration, Some(1.5));
    assert_eq!(change.data.as_ref().unwrap().get(), "{\"v\":\"b2\"}");
    assert_eq!(change.device_id, laptop.to_string());
    // Nothing after the end: `next` stays.
    let tail = alice.changes(next, 10).await;
    assert!(tail.changes.is_empty());
    assert_eq!(tail.next, next);
    // A device filter.
    let (status, body) = alice
        .get(&format!("v1/changes?after=0&device_id={}", Uuid::new_v4()))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["changes"], json!([]));
    // The device's own: all of it, tombstones included, in seq order.
    let (status, body) = alice
        .get(&format!("v1/changes?after=0&device_id={laptop}"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let own: ChangesResponse = serde_json::from_value(body).unwrap();
    let seqs = |c: &[Change]| c.iter().map(|c| c.seq).collect::<Vec<_>>();
    assert_eq!(seqs(&own.changes), seqs(&changes));
    assert_eq!(own.next, next);
    let (status, _) = alice.get("v1/changes?after=0&limt=5").await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "unknown query parameters are errors"
    );

    // Devices: alice's, with bucket metadata and counts.
    let (status, body) = alice.get("v1/devices").await;
    assert_eq!(status, StatusCode::OK);
    let devices: DevicesResponse = serde_json::from_value(body).unwrap();
    assert_eq!(devices.devices.len(), 1);
    assert_eq!(devices.devices[0].device_id, laptop.to_string());
    assert_eq!(devices.devices[0].hostname, "laptop");
    assert_eq!(devices.devices[0].buckets.len(), 1);
    assert_eq!(devices.devices[0].buckets[0].bucket_type, "currentwindow");
    assert_eq!(devices.devices[0].buckets[0].events, 2);

    // Isolation: bob sees, changes and deletes nothing of alice's, even naming her device.
    assert_eq!(bob.get("v1/devices").await.1, json!({"devices": []}));
    assert_eq!(bob.changes(0, 100).await.changes.len(), 0);
    assert_eq!(bob.get("v1/me").await.1, json!({"user": "static#bob"}));
    let (status, body) = bob.delete(&format!("v1/devices/{laptop}")).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"deleted": 0})));
    let (status, body) = bob.delete(&format!("v1/devices/{laptop}/buckets/w")).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"deleted": 0})));
    // Bob writing the same device id and keys makes his own rows; alice's stay.
    let (_, body) = bob
        .post_batch(&batch(
            laptop,
            vec![event("w", 1, "bob", T0)],
            vec![Deletion {
                bucket_id: "w".into(),
                event_id: 2,
            }],
        ))
        .await;
    assert_eq!(body, json!({"accepted": 1, "duplicates": 0, "deleted": 0}));
    // Bob replaying alice's batch id stores it for bob (ids are per user), not as her replay.
    let (_, body) = bob.post_batch(&first).await;
    assert_eq!(body, json!({"accepted": 3, "duplicates": 0, "deleted": 0}));
    let (alice_after, _) = alice.feed_from(0, 100).await;
    assert_eq!(
        fold(&alice_after),
        fold(&changes),
        "alice's data untouched by bob"
    );
    let bob_feed = bob.feed_from(0, 100).await.0;
    // Bob's own sequence: 1 write, then 3 (w1 replaced moves up): his seqs end at 4.
    assert_eq!(
        bob_feed.last().map(|c| c.seq),
        Some(4),
        "bob has his own sequence"
    );

    // Deleting a time range of a bucket: tombstones in the feed.
    let (status, body) = alice
        .delete(&format!(
            "v1/devices/{laptop}/buckets/w?start=2024-05-01T10:30:00Z&end=2024-05-01T13:00:00Z"
        ))
        .await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"deleted": 1})),
        "only event 2 (T1) is in range"
    );
    let (status, _) = alice
        .delete(&format!("v1/devices/{laptop}/buckets/w?start=noon"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (after_range, _) = alice.feed_from(next, 100).await;
    assert_eq!(after_range.len(), 1);
    assert!(after_range[0].deleted && after_range[0].event_id == 2);
    // The whole device.
    let (_, body) = alice.delete(&format!("v1/devices/{laptop}")).await;
    assert_eq!(body, json!({"deleted": 1}));
    assert_eq!(alice.get("v1/devices").await.1, json!({"devices": []}));
    let (all, _) = alice.feed_from(0, 3).await;
    assert!(fold(&all).is_empty(), "the feed folds to nothing stored");
    // Bob's copy is still there.
    assert_eq!(fold(&bob.feed_from(0, 100).await.0).len(), 3);

    // Metrics: the counters moved.
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "samay_batches_stored_total 4",
        "samay_events_accepted_total 8",
        "samay_events_duplicate_total 1",
        "samay_events_replaced_total 2",
        "samay_auth_failures_total{reason=\"unknown\"} 1",
        "samay_requests_total{route=\"/v1/events/batch\",status=\"400\"} 2",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing from\n{text}"
        );
    }
    assert!(text.contains("samay_database_seconds_count{operation=\"store_batch\"}"));
    server.shutdown().await;
}

/// Batch event cap, body cap (on the wire and after gzip), rate limit with Retry-After.
#[tokio::test]
async fn limits_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn(
        DatabaseUrl::Sqlite(dir.path().join("s.sqlite")),
        Limits {
            max_events: 3,
            max_body_bytes: 4096,
            rate_per_minute: 60,
            rate_burst: 4,
            ..Limits::default()
        },
    )
    .await;
    let alice = Client::new(&server.base_url(), ALICE);
    let bob = Client::new(&server.base_url(), BOB);
    let device = Uuid::new_v4();
    let four: Vec<_> = (1..=4).map(|i| event("w", i, "h", T0)).collect();
    let (status, _) = alice.post_batch(&batch(device, four, vec![])).await;
    assert_eq!(
        status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "4 events > the cap of 3"
    );
    let mut big = batch(device, vec![event("w", 1, "h", T0)], vec![]);
    big.hostname = "x".repeat(5000);
    let (status, _) = alice.post_batch(&big).await;
    assert_eq!(
        status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "body above 4096 bytes"
    );
    // Small on the wire, large after gzip.
    let json = serde_json::to_vec(&big).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut gz, &json).unwrap();
    let wire = gz.finish().unwrap();
    assert!(wire.len() < 4096);
    let r = alice
        .http
        .post(format!("{}/v1/events/batch", server.base_url()))
        .bearer_auth(ALICE)
        .header("Content-Encoding", "gzip")
        .header("Content-Type", "application/json")
        .body(wire)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE, "gzip bomb");
    // 3 requests so far; the 4th is the last of the burst, the 5th is limited.
    assert_eq!(alice.get("v1/me").await.0, StatusCode::OK);
    let r = alice
        .http
        .get(format!("{}/v1/me", server.base_url()))
        .bearer_auth(ALICE)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(
        bob.get("v1/me").await.0,
        StatusCode::OK,
        "bob is not limited by alice"
    );
    server.shutdown().await;
}

/// A request that outlives the per-request time limit is answered 503 with Retry-After (here:
/// a batch held at arrival by the fault hook), and the batch can be sent again.
#[tokio::test]
async fn a_request_past_the_time_limit_is_a_retryable_503() {
    use samay_server::{BatchHookFuture, BatchStage};
    let dir = tempfile::tempdir().unwrap();
    let server = spawn(
        DatabaseUrl::Sqlite(dir.path().join("s.sqlite")),
        Limits {
            // Long enough that the second, unheld request never runs past it on a loaded
            // machine (at 200 ms it did, under a load average of 20); the held one always does.
            request_timeout: std::time::Duration::from_secs(2),
            ..unlimited()
        },
    )
    .await;
    let hold = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let holding = hold.clone();
    server
        .faults()
        .set_batch_hook(Some(std::sync::Arc::new(move |stage| {
            (stage == BatchStage::Received && holding.load(std::sync::atomic::Ordering::SeqCst))
                .then(|| Box::pin(std::future::pending::<()>()) as BatchHookFuture)
        })));
    let alice = Client::new(&server.base_url(), ALICE);
    let b = batch(Uuid::new_v4(), vec![event("w", 1, "h", T0)], vec![]);
    let r = alice
        .http
        .post(format!("{}/v1/events/batch", server.base_url()))
        .bearer_auth(ALICE)
        .json(&b)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().contains_key("retry-after"));
    hold.store(false, std::sync::atomic::Ordering::SeqCst);
    let (status, body) = alice.post_batch(&b).await;
    assert_eq!(
        (status, body["accepted"].clone()),
        (StatusCode::OK, json!(1))
    );
}
