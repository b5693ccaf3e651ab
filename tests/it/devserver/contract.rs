//! The contract's semantics: keys, versions, duplicates, idempotency, all-or-nothing, bodies.

use std::io::Write;
use std::time::Duration;

use aw_sync_samay::auth::AccessToken;
use aw_sync_samay::upstream::contract::BatchResponse;
use aw_sync_samay::upstream::{UpstreamClient, UpstreamError};
use samay_server as devserver;
use samay_testkit::devserver::{
    all_stored_events, bucket_stats, start_dev_server, stats, stored_events, TEST_TOKEN,
};
use serde_json::{json, Value};
use uuid::Uuid;

use super::support::*;

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
