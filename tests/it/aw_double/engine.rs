//! The engine syncing from the double and from Python aw-server; the double's own lifecycle.

use std::sync::Arc;
use std::time::Duration;

use aw_sync_samay::auth::{AccessToken, StaticToken};
use aw_sync_samay::engine::Engine;
use aw_sync_samay::source::{AwClient, Event, SourceError};
use aw_sync_samay::state::Store;
use aw_sync_samay::upstream::UpstreamClient;
use chrono::SubsecRound;
use chrono::{DateTime, TimeDelta, Utc};
use samay_aw_double::{synthetic, AwDouble, AwDoubleConfig};
use samay_testkit::devserver::{start_dev_server, TEST_TOKEN};
use samay_testkit::rig::test_settings;
use serde_json::{json, Value};

use super::backend::*;

/// The engine run against `source` into a fresh dev upstream: what it delivered, per bucket.
async fn sync_into_dev_upstream(
    source: AwClient,
    buckets: &[&str],
) -> Vec<Vec<(i64, DateTime<Utc>, f64, serde_json::Map<String, Value>)>> {
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = start_dev_server(dir.path()).await;
    let engine = Engine {
        source,
        upstream: Arc::new(
            UpstreamClient::new(&dev.base_url(), Duration::from_secs(5), true).expect("upstream"),
        ),
        tokens: Arc::new(StaticToken::new(AccessToken::new(TEST_TOKEN), "test")),
        store: Arc::new(Store::open(&dir.path().join("state.sqlite")).expect("state")),
        settings: test_settings(),
        hostname: "test-host".into(),
        metrics: Default::default(),
        destination: aw_sync_samay::state::DestKey::new("http://upstream.test", "test").into(),
        clock: std::sync::Arc::new(aw_sync_samay::clock::SystemClock),
    };
    engine.run_cycle().await.expect("cycle");
    let again = engine.run_cycle().await.expect("second cycle");
    assert_eq!(again.upload.delivered, 0, "nothing twice");
    let mut out = Vec::new();
    for bucket in buckets {
        let mut events: Vec<_> = dev
            .stored_events(None, Some(bucket))
            .await
            .expect("stored")
            .into_iter()
            .map(|e| {
                (
                    e.event_id,
                    e.timestamp.parse::<DateTime<Utc>>().expect("timestamp"),
                    e.duration,
                    e.data,
                )
            })
            .collect();
        events.sort_by_key(|e| e.0);
        out.push(events);
    }
    out
}

/// The same history written into both servers is delivered identically by the engine: ids,
/// instants, durations and data, nothing clipped, nothing missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_syncs_the_same_events_from_both() {
    let double = Backend::double().await;
    let python = Backend::python().await;
    // Ten days back from now (the engine's first sync reads all history in windows).
    let now = Utc::now();
    // Whole seconds: Python keeps milliseconds only.
    let base = (now - TimeDelta::days(10)).trunc_subsecs(0);
    let ms = |secs: i64| base + TimeDelta::seconds(secs);
    for b in [&double, &python] {
        b.bucket("window").await;
        b.bucket("afk").await;
        let window: Vec<Event> = (0..60)
            .map(|i| {
                samay_testkit::rig::event(
                    ms(i * 14_000),
                    13_000.5,
                    json!({"app": "editor", "title": format!("file {i}")}),
                )
            })
            .collect();
        b.insert("window", &window).await;
        let client = b.client();
        // An afk state grown by heartbeats, then a second state.
        for s in [0, 600, 1_200] {
            client
                .heartbeat(
                    "afk",
                    &samay_testkit::rig::event(ms(s), 0.0, json!({"status": "not-afk"})),
                    900.0,
                )
                .await
                .expect("heartbeat");
        }
        client
            .heartbeat(
                "afk",
                &samay_testkit::rig::event(ms(1_300), 5.0, json!({"status": "afk"})),
                900.0,
            )
            .await
            .expect("heartbeat");
    }
    let from_double = sync_into_dev_upstream(double.client(), &["window", "afk"]).await;
    let from_python = sync_into_dev_upstream(python.client(), &["window", "afk"]).await;
    assert_eq!(from_double[0].len(), 60);
    assert_eq!(from_double[1].len(), 2);
    assert_eq!(from_double, from_python);
    // And what was delivered is what the double holds, unclipped.
    if let Backend::Double(d, _) = &double {
        let mut held = d.events("afk").expect("events");
        held.sort_by_key(|e| e.id);
        assert_eq!(held[0].duration, 1_200.0);
        assert_eq!(from_double[1][0].2, 1_200.0);
    }
}

/// Double only: a stopped double refuses connections (the client says "unreachable", a
/// transient error), and comes back on the same port with its data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_double_refuses_connections_and_comes_back_on_the_same_port() {
    let double = AwDouble::spawn(AwDoubleConfig::default())
        .await
        .expect("double");
    double.create_bucket("b", "t", "c", "h").expect("bucket");
    double
        .insert(
            "b",
            &[samay_aw_double::event(at(0.0), 1.0, json!({ "tag": "x" }))],
        )
        .expect("insert");
    let client = samay_testkit::double_client(&double).expect("client");
    let port = double.port();
    assert!(client.info().await.is_ok());

    double.stop().await;
    assert!(!double.is_running());
    let err = client.info().await.expect_err("down");
    assert!(
        matches!(err, SourceError::Unreachable { .. }) && err.is_transient(),
        "{err:?}"
    );
    double.start().await.expect("start");
    assert_eq!(double.port(), port);
    let events = client
        .get_events("b", None, None, None)
        .await
        .expect("after start");
    assert_eq!(tags(&events), ["x"]);
}

/// Double only: the fast paths (synthetic bulk load, one `limit=-1` GET) serve exactly what
/// the store holds, through the same client the engine uses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synthetic_data_loads_and_is_served_whole() {
    let double = AwDouble::spawn(AwDoubleConfig::default())
        .await
        .expect("double");
    let spec = synthetic::Spec::week(20_000, 42, t0());
    assert_eq!(double.load_synthetic(&spec).expect("load"), 20_000);
    let client = samay_testkit::double_client(&double).expect("client");
    let buckets = client.get_buckets().await.expect("buckets");
    assert_eq!(buckets.len(), 4);
    let mut total = 0;
    let mut ids = Vec::new();
    for id in buckets.keys() {
        let served = client.get_events(id, None, None, None).await.expect("GET");
        let held: Vec<Event> = double
            .events(id)
            .expect("held")
            .iter()
            .map(samay_testkit::source_event)
            .collect();
        assert_eq!(served, held);
        assert_eq!(
            client.event_count(id).await.expect("count"),
            served.len() as u64
        );
        total += served.len();
        ids.extend(served.iter().filter_map(|e| e.id));
    }
    assert_eq!(total, 20_000);
    ids.sort_unstable();
    assert_eq!(ids, (1..=20_000).collect::<Vec<_>>());
}
