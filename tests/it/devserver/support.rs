//! Batches, events and clients the dev server's tests share.

use std::collections::BTreeMap;
use std::time::Duration;

use aw_sync_samay::auth::AccessToken;
use aw_sync_samay::upstream::contract::{BatchRequest, BucketMeta, UpEvent};
use aw_sync_samay::upstream::UpstreamClient;
use samay_server::{DevServer, FaultReport};
use samay_testkit::devserver::TEST_TOKEN;
use serde_json::{json, Map, Value};
use uuid::Uuid;

pub(super) const WINDOW: &str = "aw-watcher-window_host";
pub(super) const AFK: &str = "aw-watcher-afk_host";

pub(super) fn token() -> AccessToken {
    AccessToken::new(TEST_TOKEN)
}

pub(super) fn client(server: &DevServer) -> UpstreamClient {
    UpstreamClient::new(&server.base_url(), Duration::from_secs(5), true).unwrap()
}

pub(super) fn meta(bucket_type: &str) -> BucketMeta {
    BucketMeta {
        bucket_type: bucket_type.into(),
        client: "aw-watcher-test".into(),
        hostname: "host".into(),
        created: Some("2024-01-01T00:00:00Z".into()),
    }
}

pub(super) fn event(bucket: &str, id: i64, hash: &str, data: Value) -> UpEvent {
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

pub(super) fn batch(device: Uuid, events: Vec<UpEvent>) -> BatchRequest {
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

pub(super) fn three(device: Uuid) -> BatchRequest {
    batch(
        device,
        vec![
            event(WINDOW, 1, "h1", json!({"app": "a", "title": "x"})),
            event(WINDOW, 2, "h2", json!({"app": "b", "title": "y"})),
            event(AFK, 1, "h3", json!({"status": "not-afk"})),
        ],
    )
}

pub(super) async fn faults_over_http(server: &DevServer, patch: Value) -> FaultReport {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/_faults", server.base_url()))
        .json(&patch)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}
