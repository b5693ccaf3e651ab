//! aw-server-rust's timestamp format next to Python's: the same events, the same hashes.

use std::collections::BTreeMap;
use std::sync::Arc;

use aw_sync_samay::auth::{AccessToken, StaticToken};
use aw_sync_samay::source::Event;
use samay_server::StoredEvent;
use samay_testkit::devserver::TEST_TOKEN;
use samay_testkit::rig::{ago, event, series, test_settings, Rig};
use serde_json::json;

use super::stub::*;

/// Realistic watcher data with nested values, unicode, floats, booleans and null, across days,
/// with long events that page edges cut, and ties.
async fn fill_python(rig: &Rig) -> Vec<String> {
    let client = rig.client();
    let buckets = [
        ("aw-watcher-window_test-host", "currentwindow"),
        ("aw-watcher-afk_test-host", "afkstatus"),
        ("aw-watcher-web-firefox_test-host", "web.tab.current"),
    ];
    for (id, ty) in buckets {
        client
            .create_bucket(id, ty, "test", "test-host")
            .await
            .unwrap();
    }
    let [window, afk, web] = buckets.map(|b| b.0);

    let mut w = series(45, 9_000.0, 900, "w");
    for (i, e) in w.iter_mut().enumerate() {
        e.data.insert("zeta".into(), json!(i));
        e.data.insert(
            "alpha".into(),
            json!({"z": [1, {"y": null, "b": true}], "a": "Grüße 🚀 \"q\""}),
        );
    }
    // A long event across fifteen others: newest-first pages have edges inside it, where it
    // comes back clipped.
    let long_start = w[15].timestamp + chrono::Duration::seconds(1);
    w.push(event(
        long_start,
        15.0 * 9_000.0,
        json!({"app": "long", "title": "across page edges"}),
    ));
    let tie = ago(20_000);
    for k in 0..3 {
        w.push(event(
            tie,
            1.25,
            json!({"app": "tie", "title": format!("tie {k}")}),
        ));
    }
    rig.insert(window, &w).await;

    let mut a = vec![event(
        ago(4 * 86_400),
        3.0 * 86_400.0 + 0.123,
        json!({"status": "not-afk"}),
    )];
    a.extend((0..12).map(|i| {
        event(
            ago(86_400 - i * 3_000),
            [0.0, 0.1, 1.5, 12.345678, 299.999][i as usize % 5],
            json!({"status": if i % 2 == 0 { "afk" } else { "not-afk" }}),
        )
    }));
    rig.insert(afk, &a).await;

    let web_events: Vec<Event> = (0..25)
        .map(|i| {
            event(
                ago(60_000 - i * 2_000),
                0.1 + 0.2 * i as f64,
                json!({"url": format!("https://example.com/p/{i}?q=ä&x=1"),
                       "title": format!("Page {i} – Ünïcödé"), "audible": i % 3 == 0,
                       "incognito": false, "tabCount": i, "ratio": 1.0 / 3.0}),
            )
        })
        .collect();
    rig.insert(web, &web_events).await;
    buckets.iter().map(|b| b.0.to_string()).collect()
}

/// `(bucket, event_id)` → what the upstream stored, for one device.
fn by_key(events: &[StoredEvent], device: &str) -> BTreeMap<(String, i64), StoredEvent> {
    events
        .iter()
        .filter(|e| e.device_id == device)
        .map(|e| ((e.bucket_id.clone(), e.event_id), e.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_and_python_formats_of_the_same_events_store_the_same_hashes() {
    let rig = Rig::new().await;
    let bucket_ids = fill_python(&rig).await;

    // Device A reads the real Python aw-server.
    let mut engine_a = rig.engine_full(
        test_settings(),
        Arc::new(StaticToken::new(AccessToken::new(TEST_TOKEN), "test")),
        "state-a.sqlite",
    );
    let report_a = engine_a.run_cycle().await.expect("cycle from Python");
    for b in &bucket_ids {
        rig.assert_exact(b).await;
    }

    // Copy the events out of Python (unclipped, with their ids) into the Rust-format stub.
    let client = rig.client();
    let info = client.info().await.unwrap();
    let mut stub_buckets = BTreeMap::new();
    let mut total = 0;
    for (id, b) in client.get_buckets().await.unwrap() {
        let events: Vec<StubEvent> = rig
            .source_events(&id)
            .await
            .iter()
            .map(stub_event_from)
            .collect();
        total += events.len();
        stub_buckets.insert(
            id,
            StubBucket {
                bucket_type: b.bucket_type,
                client: b.client,
                hostname: b.hostname,
                created: b.created.expect("Python reports created"),
                events,
            },
        );
    }
    assert_eq!(total, 45 + 1 + 3 + 13 + 25);
    assert_eq!(report_a.upload.delivered as usize, total);
    let stub = RustFormatStub::start(
        info.device_id
            .as_deref()
            .expect("Python reports a device id"),
        stub_buckets,
    )
    .await;

    // The two really speak different formats (otherwise this test would prove nothing).
    let http = reqwest::Client::new();
    let path = format!("/api/0/buckets/{}/events", bucket_ids[2]);
    let python_raw = http
        .get(format!("http://127.0.0.1:{}{path}", rig.aw.port()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let rust_raw = http
        .get(stub.url(&path))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(python_raw.contains("+00:00\""), "{python_raw:.300}");
    assert!(!rust_raw.contains("+00:00"), "{rust_raw:.300}");
    assert!(
        rust_raw.contains("000000Z\""),
        "nine-digit nanosecond timestamps: {rust_raw:.300}"
    );
    let python_keys = python_raw.find("\"url\"").unwrap() < python_raw.find("\"title\"").unwrap();
    let rust_keys = rust_raw.find("\"url\"").unwrap() < rust_raw.find("\"title\"").unwrap();
    assert_ne!(python_keys, rust_keys, "data keys in a different order");

    // Device B (its own state, so its own device id) reads the same events in Rust format.
    let mut engine_b = rig.engine_full(
        test_settings(),
        Arc::new(StaticToken::new(AccessToken::new(TEST_TOKEN), "test")),
        "state-b.sqlite",
    );
    engine_b.source = stub.client();
    let report_b = engine_b
        .run_cycle()
        .await
        .expect("cycle from the Rust-format stub");
    assert_eq!(report_b.upload.delivered as usize, total);
    assert!(
        report_b.buckets.values().map(|s| s.fetched).sum::<u64>() >= 1,
        "the clipped copies of the long event were fetched whole: {:?}",
        report_b.buckets
    );

    let device_a = engine_a.store.device_id().to_string();
    let device_b = engine_b.store.device_id().to_string();
    assert_ne!(device_a, device_b);
    let stored = rig.dev.stored_events(None, None).await.unwrap();
    let a = by_key(&stored, &device_a);
    let b = by_key(&stored, &device_b);
    assert_eq!(a.len(), total);
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "same event ids"
    );
    for (key, ea) in &a {
        let eb = &b[key];
        assert_eq!(ea.hash, eb.hash, "{key:?}: hash differs between formats");
        assert_eq!(ea.timestamp, eb.timestamp, "{key:?}: timestamp");
        // The upstream gets each server's float as sent; the hash rounds it to nanoseconds.
        assert!(
            (ea.duration - eb.duration).abs() < 1e-9,
            "{key:?}: duration {} vs {}",
            ea.duration,
            eb.duration
        );
        assert_eq!(ea.data, eb.data, "{key:?}: data");
        assert_eq!(
            (ea.versions, eb.versions),
            (1, 1),
            "{key:?}: no second version"
        );
    }

    // And for the state, too: device A pointed at the same events in Rust format (same server
    // device id and bucket creation times) finds nothing new or changed.
    engine_a.source = stub.client();
    let again = engine_a.run_cycle().await.expect("A reads the stub");
    assert_eq!(again.queued(), 0, "{:?}", again.buckets);
    assert_eq!(again.upload.delivered, 0);
}
