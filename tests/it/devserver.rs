//! The real `UpstreamClient` against the real dev server on loopback: the contract's semantics
//! (keys, versions, duplicates, idempotency, all-or-nothing) and every injected fault surfacing
//! as the error variant the engine decides on.

use samay_testkit::devserver as devserver_helpers;

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use aw_sync_samay::auth::AccessToken;
use aw_sync_samay::upstream::contract::{BatchRequest, BatchResponse, BucketMeta, UpEvent};
use aw_sync_samay::upstream::{UpstreamClient, UpstreamError};
use devserver_helpers::{
    all_stored_events, bucket_stats, start_dev_server, stats, stored_events, TEST_TOKEN,
};
use samay_server::{self as devserver, DevServer, DevServerConfig, FaultReport};
use serde_json::{json, Map, Value};
use uuid::Uuid;

const WINDOW: &str = "aw-watcher-window_host";
const AFK: &str = "aw-watcher-afk_host";

fn token() -> AccessToken {
    AccessToken::new(TEST_TOKEN)
}

fn client(server: &DevServer) -> UpstreamClient {
    UpstreamClient::new(&server.base_url(), Duration::from_secs(5), true).unwrap()
}

fn meta(bucket_type: &str) -> BucketMeta {
    BucketMeta {
        bucket_type: bucket_type.into(),
        client: "aw-watcher-test".into(),
        hostname: "host".into(),
        created: Some("2024-01-01T00:00:00Z".into()),
    }
}

fn event(bucket: &str, id: i64, hash: &str, data: Value) -> UpEvent {
    let data: Map<String, Value> = match data {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    UpEvent {
        bucket_id: bucket.into(),
        event_id: id,
        hash: hash.into(),
        timestamp: format!("2024-05-01T10:00:{:02}.000000000Z", id % 60),
        duration: 1.5,
        data: aw_sync_samay::source::object_to_raw(&data),
    }
}

fn batch(device: Uuid, events: Vec<UpEvent>) -> BatchRequest {
    let mut buckets = BTreeMap::new();
    buckets.insert(WINDOW.to_string(), meta("currentwindow"));
    buckets.insert(AFK.to_string(), meta("afkstatus"));
    BatchRequest {
        batch_id: Uuid::new_v4(),
        device_id: device,
        user_id: None,
        hostname: "host".into(),
        sync_timestamp: "2024-05-01T10:05:00Z".into(),
        buckets,
        events,
        deletions: Vec::new(),
    }
}

fn three(device: Uuid) -> BatchRequest {
    batch(
        device,
        vec![
            event(WINDOW, 1, "h1", json!({"app": "a", "title": "x"})),
            event(WINDOW, 2, "h2", json!({"app": "b", "title": "y"})),
            event(AFK, 1, "h3", json!({"status": "not-afk"})),
        ],
    )
}

async fn faults_over_http(server: &DevServer, patch: Value) -> FaultReport {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/_faults", server.base_url()))
        .json(&patch)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

#[tokio::test]
async fn accepts_then_counts_duplicates_and_replaced_versions() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_dev_server(dir.path()).await;
    let client = client(&server);
    let device = Uuid::new_v4();

    let answer = client.send_batch(&token(), &three(device)).await.unwrap();
    assert_eq!(
        answer,
        BatchResponse {
            accepted: 3,
            duplicates: 0,
            deleted: 0
        }
    );

    // Same events under a new batch id: all duplicates, nothing changes.
    let answer = client.send_batch(&token(), &three(device)).await.unwrap();
    assert_eq!(
        answer,
        BatchResponse {
            accepted: 0,
            duplicates: 3,
            deleted: 0
        }
    );

    // A new hash for a known key replaces the stored version.
    let edited = batch(
        device,
        vec![event(
            WINDOW,
            2,
            "h2-edited",
            json!({"app": "b", "title": "z"}),
        )],
    );
    let answer = client.send_batch(&token(), &edited).await.unwrap();
    assert_eq!(
        answer,
        BatchResponse {
            accepted: 1,
            duplicates: 0,
            deleted: 0
        }
    );

    let window = stored_events(&server, WINDOW).await;
    assert_eq!(window.len(), 2);
    assert_eq!((window[0].event_id, window[0].versions), (1, 1));
    assert_eq!(
        (
            window[1].event_id,
            window[1].hash.as_str(),
            window[1].versions
        ),
        (2, "h2-edited", 2)
    );
    assert_eq!(window[1].data["title"], "z");
    assert_eq!(window[1].user, devserver::DEV_USER);
    assert_eq!(window[1].device_id, device.to_string());

    let w = bucket_stats(&server, WINDOW).await.unwrap();
    assert_eq!((w.events, w.versions_replaced, w.duplicates), (2, 1, 2));
    let a = bucket_stats(&server, AFK).await.unwrap();
    assert_eq!((a.events, a.versions_replaced, a.duplicates), (1, 0, 1));
    assert_eq!(stats(&server).await.batches, 3);

    // Another device with the same event ids is a different key.
    let answer = client
        .send_batch(&token(), &three(Uuid::new_v4()))
        .await
        .unwrap();
    assert_eq!(
        answer,
        BatchResponse {
            accepted: 3,
            duplicates: 0,
            deleted: 0
        }
    );
    assert_eq!(stored_events(&server, WINDOW).await.len(), 4);
    server.shutdown().await;
}

#[tokio::test]
async fn replayed_batch_id_returns_the_original_answer_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_dev_server(dir.path()).await;
    let client = client(&server);
    let first = three(Uuid::new_v4());
    let answer = client.send_batch(&token(), &first).await.unwrap();
    assert_eq!(
        answer,
        BatchResponse {
            accepted: 3,
            duplicates: 0,
            deleted: 0
        }
    );

    // Same id, even with different content (and content that would now be poison): the stored
    // answer comes back and nothing is touched.
    server
        .faults()
        .update(|f| f.reject_data_key = Some("app".into()));
    let mut replay = first.clone();
    replay.events[0].hash = "changed".into();
    let answer = client.send_batch(&token(), &replay).await.unwrap();
    assert_eq!(
        answer,
        BatchResponse {
            accepted: 3,
            duplicates: 0,
            deleted: 0
        }
    );

    let window = stored_events(&server, WINDOW).await;
    assert_eq!(window[0].hash, "h1");
    assert_eq!(window[0].versions, 1);
    let w = bucket_stats(&server, WINDOW).await.unwrap();
    assert_eq!((w.versions_replaced, w.duplicates), (0, 0));
    assert_eq!(stats(&server).await.batches, 1);
    assert_eq!(server.faults().counters().batches_stored, 1);
}

#[tokio::test]
async fn missing_or_wrong_token_is_401() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_dev_server(dir.path()).await;
    let body = serde_json::to_vec(&three(Uuid::new_v4())).unwrap();

    let raw = reqwest::Client::new()
        .post(format!("{}/v1/events/batch", server.base_url()))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 401);
    let error: Value = raw.json().await.unwrap();
    assert!(error["error"].is_string());

    let wrong = AccessToken::new("not-the-token");
    let err = client(&server)
        .send_batch(&wrong, &three(Uuid::new_v4()))
        .await
        .unwrap_err();
    assert_eq!(err, UpstreamError::Unauthorized);
    assert!(!err.to_string().contains("not-the-token"));
    assert!(all_stored_events(&server).await.is_empty());

    // The hook an OAuth provider uses to register the tokens it issues.
    server.add_token_for("issued", "alice");
    let answer = client(&server)
        .send_batch(&AccessToken::new("issued"), &three(Uuid::new_v4()))
        .await
        .unwrap();
    assert_eq!(answer.accepted, 3);
    assert!(all_stored_events(&server)
        .await
        .iter()
        .all(|e| e.user == "alice"));
    server.remove_token("issued");
    let err = client(&server)
        .send_batch(&AccessToken::new("issued"), &three(Uuid::new_v4()))
        .await
        .unwrap_err();
    assert_eq!(err, UpstreamError::Unauthorized);
}

#[tokio::test]
async fn gzip_and_identity_bodies_are_both_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_dev_server(dir.path()).await;
    let device = Uuid::new_v4();
    let gz = UpstreamClient::new(&server.base_url(), Duration::from_secs(5), true).unwrap();
    let plain = UpstreamClient::new(
        &format!("{}/", server.base_url()),
        Duration::from_secs(5),
        false,
    )
    .unwrap();
    assert_eq!(
        gz.send_batch(&token(), &three(device))
            .await
            .unwrap()
            .accepted,
        3
    );
    assert_eq!(
        plain
            .send_batch(&token(), &three(device))
            .await
            .unwrap()
            .duplicates,
        3
    );
    gz.health().await.unwrap();
}

#[tokio::test]
async fn fail_500_is_retryable_and_then_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_dev_server(dir.path()).await;
    server.faults().update(|f| f.fail_500 = 2);
    let b = three(Uuid::new_v4());
    for _ in 0..2 {
        let err = client(&server).send_batch(&token(), &b).await.unwrap_err();
        assert!(
            matches!(
                err,
                UpstreamError::Retryable {
                    status: 500,
                    retry_after: None
                }
            ),
            "{err:?}"
        );
        assert!(err.is_retryable());
    }
    assert_eq!(
        client(&server)
            .send_batch(&token(), &b)
            .await
            .unwrap()
            .accepted,
        3
    );
    assert_eq!(server.faults().counters().requests_received, 3);
}

#[tokio::test]
async fn fail_429_carries_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_dev_server(dir.path()).await;
    server.faults().update(|f| {
        f.fail_429 = 1;
        f.retry_after_secs = 7;
    });
    let err = client(&server)
        .send_batch(&token(), &three(Uuid::new_v4()))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        UpstreamError::Retryable {
            status: 429,
            retry_after: Some(Duration::from_secs(7))
        }
    );
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
}

#[tokio::test]
async fn drop_before_store_is_a_network_error_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_dev_server(dir.path()).await;
    server.faults().update(|f| f.drop_before_store = 1);
    let b = three(Uuid::new_v4());
    let err = client(&server).send_batch(&token(), &b).await.unwrap_err();
    assert!(matches!(err, UpstreamError::Network(_)), "{err:?}");
    assert!(all_stored_events(&server).await.is_empty());
    assert_eq!(server.faults().counters().batches_stored, 0);
    // The retry goes through.
    assert_eq!(
        client(&server)
            .send_batch(&token(), &b)
            .await
            .unwrap()
            .accepted,
        3
    );
}

#[tokio::test]
async fn drop_after_store_is_a_network_error_but_the_batch_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_dev_server(dir.path()).await;
    server.faults().update(|f| f.drop_after_store = 1);
    let b = three(Uuid::new_v4());
    let err = client(&server).send_batch(&token(), &b).await.unwrap_err();
    assert!(matches!(err, UpstreamError::Network(_)), "{err:?}");
    assert_eq!(all_stored_events(&server).await.len(), 3);
    // The engine's retry of the same batch id gets the original answer.
    let answer = client(&server).send_batch(&token(), &b).await.unwrap();
    assert_eq!(
        answer,
        BatchResponse {
            accepted: 3,
            duplicates: 0,
            deleted: 0
        }
    );
    assert_eq!(server.faults().counters().batches_stored, 1);
}

#[tokio::test]
async fn slower_than_the_client_timeout_is_a_network_error() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_dev_server(dir.path()).await;
    server.faults().update(|f| f.slow_ms = 2000);
    let impatient =
        UpstreamClient::new(&server.base_url(), Duration::from_millis(300), true).unwrap();
    let err = impatient
        .send_batch(&token(), &three(Uuid::new_v4()))
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamError::Network(_)), "{err:?}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn garbage_answer_is_malformed_after_storing() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_dev_server(dir.path()).await;
    server.faults().update(|f| f.garbage_answers = 1);
    let err = client(&server)
        .send_batch(&token(), &three(Uuid::new_v4()))
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamError::Malformed(_)), "{err:?}");
    assert!(err.is_retryable());
    assert_eq!(all_stored_events(&server).await.len(), 3);
}

#[tokio::test]
async fn poison_events_are_rejected_by_index_and_nothing_of_the_batch_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_dev_server(dir.path()).await;
    server
        .faults()
        .update(|f| f.reject_data_key = Some("poison".into()));
    let device = Uuid::new_v4();
    let mut b = three(device);
    b.events
        .push(event(WINDOW, 9, "h9", json!({"poison": true})));
    b.events
        .insert(0, event(WINDOW, 8, "h8", json!({"poison": 1})));
    let err = client(&server).send_batch(&token(), &b).await.unwrap_err();
    match &err {
        UpstreamError::Rejected {
            status, rejected, ..
        } => {
            assert_eq!(*status, 422);
            assert_eq!(rejected.as_deref(), Some(&[0, 4][..]));
        }
        other => panic!("{other:?}"),
    }
    assert!(!err.is_retryable());
    assert!(all_stored_events(&server).await.is_empty());

    // Without the poison events the rest goes through.
    let mut rest = b.clone();
    rest.batch_id = Uuid::new_v4();
    rest.events = vec![
        b.events[1].clone(),
        b.events[2].clone(),
        b.events[3].clone(),
    ];
    assert_eq!(
        client(&server)
            .send_batch(&token(), &rest)
            .await
            .unwrap()
            .accepted,
        3
    );

    // Poison by bucket.
    server.faults().update(|f| {
        f.reject_data_key = None;
        f.reject_bucket_ids = vec![AFK.into()];
    });
    let err = client(&server)
        .send_batch(&token(), &three(device))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, UpstreamError::Rejected { status: 422, rejected: Some(r), .. } if r == &[2]),
        "{err:?}"
    );
}

#[tokio::test]
async fn invalid_events_are_400_with_their_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_dev_server(dir.path()).await;
    let mut b = three(Uuid::new_v4());
    b.events[0].timestamp = "yesterday".into();
    let mut negative = event(WINDOW, 5, "h5", json!({}));
    negative.duration = -1.0;
    b.events.push(negative);
    b.events.push(event("not-in-buckets", 6, "h6", json!({})));
    b.events.push(event("", 7, "h7", json!({})));
    let mut nan = event(WINDOW, 8, "h8", json!({}));
    nan.duration = f64::NAN; // serialized as null: not a valid event
    b.events.push(nan);
    let err = client(&server).send_batch(&token(), &b).await.unwrap_err();
    assert!(
        matches!(&err, UpstreamError::Rejected { status: 400, rejected: Some(r), .. } if r == &[0, 3, 4, 5, 6]),
        "{err:?}"
    );
    assert!(all_stored_events(&server).await.is_empty());
}

#[tokio::test]
async fn body_above_the_limit_is_413() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_dev_server(dir.path()).await;
    server.faults().update(|f| f.max_body_bytes = 200);
    for gzip in [true, false] {
        let c = UpstreamClient::new(&server.base_url(), Duration::from_secs(5), gzip).unwrap();
        let err = c
            .send_batch(&token(), &three(Uuid::new_v4()))
            .await
            .unwrap_err();
        assert_eq!(err, UpstreamError::TooLarge);
    }
    assert!(all_stored_events(&server).await.is_empty());
}

#[tokio::test]
async fn gzip_bomb_is_413_not_memory() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_dev_server(dir.path()).await;
    server.faults().update(|f| f.max_body_bytes = 1024 * 1024);
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![b' '; 1024 * 1024];
    for _ in 0..8 {
        encoder.write_all(&zeros).unwrap();
    }
    let bomb = encoder.finish().unwrap();
    assert!(bomb.len() < 1024 * 1024);
    let response = reqwest::Client::new()
        .post(format!("{}/v1/events/batch", server.base_url()))
        .bearer_auth(TEST_TOKEN)
        .header("content-encoding", "gzip")
        .body(bomb)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
}

#[tokio::test]
async fn malformed_bodies_are_400_and_the_server_lives_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_dev_server(dir.path()).await;
    let url = format!("{}/v1/events/batch", server.base_url());
    let http = reqwest::Client::new();
    let cases: Vec<(Option<&str>, Vec<u8>)> = vec![
        (None, b"{not json".to_vec()),
        (None, b"{\"batch_id\": 5}".to_vec()),
        (None, Vec::new()),
        (Some("gzip"), b"definitely not gzip".to_vec()),
    ];
    for (encoding, body) in cases {
        let mut request = http
            .post(&url)
            .bearer_auth(TEST_TOKEN)
            .header("content-type", "application/json")
            .body(body);
        if let Some(encoding) = encoding {
            request = request.header("content-encoding", encoding);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 400);
        let error: Value = response.json().await.unwrap();
        assert!(error["error"].is_string());
        assert!(error.get("rejected").is_none(), "{error}");
    }
    // Idempotency-Key must match the body's batch_id.
    let b = three(Uuid::new_v4());
    let response = http
        .post(&url)
        .bearer_auth(TEST_TOKEN)
        .header("idempotency-key", Uuid::new_v4().to_string())
        .json(&b)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    client(&server).health().await.unwrap();
    assert_eq!(
        client(&server)
            .send_batch(&token(), &b)
            .await
            .unwrap()
            .accepted,
        3
    );
}

#[tokio::test]
async fn inspection_endpoints_show_what_was_stored() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_dev_server(dir.path()).await;
    let device = Uuid::new_v4();
    client(&server)
        .send_batch(&token(), &three(device))
        .await
        .unwrap();
    client(&server)
        .send_batch(&token(), &three(device))
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let base = server.base_url();

    let health: Value = http
        .get(format!("{base}/v1/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health, json!({"ok": true}));

    let summary: Value = http
        .get(format!("{base}/v1/inspect"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(summary["batches"], 2);
    let devices = summary["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0]["device_id"], device.to_string());
    let window = devices[0]["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["bucket_id"] == WINDOW)
        .unwrap();
    assert_eq!(
        (window["events"].as_u64(), window["duplicates"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(window["versions_replaced"], 0);

    let events: Value = http
        .get(format!("{base}/v1/inspect/events"))
        .query(&[
            ("device_id", device.to_string()),
            ("bucket_id", WINDOW.to_string()),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let events = events["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["event_id"], 1);
    assert_eq!(events[0]["hash"], "h1");
    assert_eq!(events[0]["versions"], 1);
    assert_eq!(events[0]["duration"], 1.5);
    assert_eq!(events[0]["data"]["app"], "a");
    assert!(events[0]["timestamp"]
        .as_str()
        .unwrap()
        .starts_with("2024-05-01T10:00:01"));

    let page = http.get(format!("{base}/")).send().await.unwrap();
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let page = page.text().await.unwrap();
    assert!(page.contains(WINDOW) && page.contains(&device.to_string()));

    let missing = http.get(format!("{base}/nope")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn faults_can_be_driven_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_dev_server(dir.path()).await;
    let report = faults_over_http(&server, json!({"fail_429": 1, "retry_after_secs": 3})).await;
    assert_eq!(
        (report.settings.fail_429, report.settings.retry_after_secs),
        (1, 3)
    );
    let err = client(&server)
        .send_batch(&token(), &three(Uuid::new_v4()))
        .await
        .unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_secs(3)));

    let report = faults_over_http(&server, json!({"drop_after_store": 1})).await;
    assert_eq!(report.settings.fail_429, 0, "consumed");
    let err = client(&server)
        .send_batch(&token(), &three(Uuid::new_v4()))
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamError::Network(_)), "{err:?}");

    let http = reqwest::Client::new();
    let report: FaultReport = http
        .get(format!("{}/v1/_faults", server.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            report.counters.requests_received,
            report.counters.batches_stored
        ),
        (2, 1)
    );

    let unknown = http
        .post(format!("{}/v1/_faults", server.base_url()))
        .json(&json!({"fail_5000": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 400);

    faults_over_http(&server, json!({"slow_ms": 5})).await;
    let cleared = http
        .delete(format!("{}/v1/_faults", server.base_url()))
        .send()
        .await
        .unwrap();
    let cleared: FaultReport = cleared.json().await.unwrap();
    assert_eq!(cleared.settings, Default::default());
}

#[tokio::test]
async fn data_survives_a_restart_on_the_same_database() {
    let dir = tempfile::tempdir().unwrap();
    let b = three(Uuid::new_v4());
    let server = start_dev_server(dir.path()).await;
    client(&server).send_batch(&token(), &b).await.unwrap();
    server.shutdown().await;
    let server = start_dev_server(dir.path()).await;
    let answer = client(&server).send_batch(&token(), &b).await.unwrap();
    assert_eq!(
        answer,
        BatchResponse {
            accepted: 3,
            duplicates: 0,
            deleted: 0
        },
        "replay remembered"
    );
    assert_eq!(all_stored_events(&server).await.len(), 3);
}

#[tokio::test]
async fn refuses_to_bind_a_non_loopback_address() {
    let dir = tempfile::tempdir().unwrap();
    let result = devserver::spawn(DevServerConfig {
        bind: "0.0.0.0:0".parse().unwrap(),
        db_path: dir.path().join("x.sqlite"),
        tokens: vec![],
    })
    .await;
    assert!(result.is_err());
}

#[tokio::test]
async fn health_of_a_wrong_base_url_is_fatal_and_of_nothing_is_network() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_dev_server(dir.path()).await;
    let wrong = UpstreamClient::new(
        &format!("{}/api", server.base_url()),
        Duration::from_secs(5),
        true,
    )
    .unwrap();
    assert!(matches!(
        wrong.health().await,
        Err(UpstreamError::Fatal { status: 404, .. })
    ));
    let addr = server.addr();
    server.shutdown().await;
    let gone =
        UpstreamClient::new(&format!("http://{addr}"), Duration::from_secs(5), true).unwrap();
    assert!(matches!(
        gone.health().await,
        Err(UpstreamError::Network(_))
    ));
}

/// The page's counters do not contradict each other (issue 10: "11 batches stored; 0 batch
/// requests received" after a restart): the database's count and this process's are labelled
/// as such. And the events themselves show as HTML, escaped, newest first.
#[tokio::test]
async fn the_page_says_what_its_counters_count_and_shows_events_in_html() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_dev_server(dir.path()).await;
    let mut b = three(Uuid::new_v4());
    b.events[0] = event(
        WINDOW,
        1,
        "h1",
        json!({"app": "a", "title": "<b>bold</b> & co"}),
    );
    client(&server).send_batch(&token(), &b).await.unwrap();
    server.shutdown().await;
    // Browsed afterwards: a new process on the same database.
    let server = start_dev_server(dir.path()).await;
    let http = reqwest::Client::new();
    let base = server.base_url();
    let page = http
        .get(format!("{base}/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains(
            "This database holds 1 stored batch(es), from every run of the server on it."
        ),
        "{page}"
    );
    assert!(
        page.contains("Since this server started: 0 batch request(s) received, 0 batch(es) stored"),
        "{page}"
    );
    // Each bucket links to its events.
    assert!(page.contains("href=\"/events?device_id="), "{page}");

    let events = http
        .get(format!("{base}/events"))
        .query(&[("bucket_id", WINDOW)])
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    assert!(events.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = events.text().await.unwrap();
    assert!(html.contains("<table>"), "{html}");
    // Both window events, newest first (event 2 starts a second after event 1).
    let row = |id: i64| format!("<td>{WINDOW}</td><td class=\"n\">{id}</td>");
    let two = html.find(&row(2)).expect("event 2");
    let one = html.find(&row(1)).expect("event 1");
    assert!(two < one, "newest first: {html}");
    assert!(
        html.contains("&lt;b&gt;bold&lt;/b&gt; &amp; co"),
        "data shown, escaped: {html}"
    );
    assert!(!html.contains("<b>bold</b>"), "{html}");
    assert!(!html.contains(AFK), "only the bucket asked for: {html}");
}
