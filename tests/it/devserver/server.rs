//! The server itself: inspection endpoints and page, restarts, binding, health.

use std::time::Duration;

use aw_sync_samay::upstream::contract::BatchResponse;
use aw_sync_samay::upstream::{UpstreamClient, UpstreamError};
use samay_server::{self as devserver, DevServerConfig};
use samay_testkit::devserver::{all_stored_events, start_dev_server};
use serde_json::{json, Value};
use uuid::Uuid;

use super::support::*;

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
