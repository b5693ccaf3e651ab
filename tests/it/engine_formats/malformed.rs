//! aw-server answers that are not what the engine expects.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aw_sync_samay::auth::{AccessToken, StaticToken};
use aw_sync_samay::engine::{CycleError, Engine, Settings};
use aw_sync_samay::source::{AwClient, SourceError};
use aw_sync_samay::state::hash::duration_to_ns;
use aw_sync_samay::state::Store;
use aw_sync_samay::upstream::UpstreamClient;
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use samay_server::DevServer;
use samay_testkit::devserver::{start_dev_server, TEST_TOKEN};
use samay_testkit::rig::test_settings;
use serde_json::json;

use super::stub::*;

/// An engine on `source` delivering to `dev`, with its own state file (and device id) in `dir`.
fn engine_on(dev: &DevServer, source: AwClient, dir: &std::path::Path, state: &str) -> Engine {
    engine_with(dev, source, dir, state, test_settings())
}

fn engine_with(
    dev: &DevServer,
    source: AwClient,
    dir: &std::path::Path,
    state: &str,
    settings: Settings,
) -> Engine {
    Engine {
        source,
        upstream: Arc::new(
            UpstreamClient::new(&dev.base_url(), Duration::from_secs(5), true).unwrap(),
        ),
        tokens: Arc::new(StaticToken::new(AccessToken::new(TEST_TOKEN), "test")),
        store: Arc::new(Store::open(&dir.join(state)).unwrap()),
        settings,
        hostname: "test-host".into(),
        metrics: Default::default(),
        destination: aw_sync_samay::state::DestKey::new("http://upstream.test", "test").into(),
        clock: std::sync::Arc::new(aw_sync_samay::clock::SystemClock),
    }
}

/// `n` back-to-back synthetic events (ids from 1) ending ten minutes ago.
fn synthetic_bucket(n: i64) -> StubBucket {
    let end = Utc::now() - ChronoDuration::minutes(10);
    let len = 90 * 1_000_000_000i64;
    let first = end.timestamp_nanos_opt().unwrap() - n * len;
    StubBucket {
        bucket_type: "currentwindow".into(),
        client: "aw-watcher-window".into(),
        hostname: "stub-host".into(),
        created: end - ChronoDuration::days(30),
        events: (0..n)
            .map(|i| StubEvent {
                id: i + 1,
                start_ns: first + i * len + 123_456_789,
                end_ns: first + (i + 1) * len,
                data: json!({"app": "code", "title": format!("file {i}.rs")})
                    .as_object()
                    .unwrap()
                    .clone(),
            })
            .collect(),
    }
}

/// What the upstream holds for `device`, as `(bucket, event_id)` → hash.
async fn held(dev: &DevServer, device: &str) -> BTreeMap<(String, i64), String> {
    dev.stored_events(Some(device), None)
        .await
        .unwrap()
        .into_iter()
        .map(|e| ((e.bucket_id, e.event_id), e.hash))
        .collect()
}

/// Every event the state records as delivered is one the upstream holds, with that hash.
async fn assert_state_claims_no_more_than_upstream(
    engine: &Engine,
    dev: &DevServer,
    stub: &RustFormatStub,
) {
    let up = held(dev, &engine.store.device_id().to_string()).await;
    let mut claimed = 0;
    for (id, b) in &stub.state.buckets {
        let ids: Vec<i64> = b.events.iter().map(|e| e.id).collect();
        for (event_id, known) in engine.store.lookup_by_name(id, &ids).unwrap() {
            claimed += 1;
            let hex = aw_sync_samay::state::hash_hex(&known.hash);
            assert_eq!(
                up.get(&(id.clone(), event_id)),
                Some(&hex),
                "the state claims {id}/{event_id} was delivered, the upstream does not hold it"
            );
        }
    }
    let statuses = engine.store.bucket_statuses().unwrap();
    assert_eq!(
        statuses.iter().map(|s| s.delivered).sum::<u64>(),
        claimed,
        "{statuses:?}"
    );
}

/// The upstream holds exactly the stub's events for `device`, unclipped.
async fn assert_exact_from_stub(dev: &DevServer, device: &str, stub: &RustFormatStub) {
    let stored = dev.stored_events(Some(device), None).await.unwrap();
    let mut expected = Vec::new();
    for (id, b) in &stub.state.buckets {
        for e in &b.events {
            expected.push((
                id.clone(),
                e.id,
                e.start_ns,
                e.end_ns - e.start_ns,
                e.data.clone(),
            ));
        }
    }
    expected.sort_by(|x, y| (&x.0, x.1).cmp(&(&y.0, y.1)));
    let got: Vec<_> = stored
        .iter()
        .map(|s| {
            let t: DateTime<Utc> = s.timestamp.parse().unwrap();
            (
                s.bucket_id.clone(),
                s.event_id,
                t.timestamp_nanos_opt().unwrap(),
                duration_to_ns(s.duration).unwrap(),
                s.data.clone(),
            )
        })
        .collect();
    assert_eq!(got, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_or_failing_event_answers_fail_the_cycle_cleanly_and_record_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let dev = start_dev_server(dir.path()).await;
    let buckets = BTreeMap::from([("b".to_string(), synthetic_bucket(35))]);
    let stub = RustFormatStub::start("stub-device", buckets).await;

    type Expected = fn(&CycleError) -> bool;
    let cases: [(Fault, Expected); 5] = [
        (Fault::Garbage, |e| {
            matches!(e, CycleError::Source(SourceError::Malformed { .. }))
        }),
        (Fault::WrongShape, |e| {
            matches!(e, CycleError::Source(SourceError::Malformed { .. }))
        }),
        (Fault::BadEvent, |e| {
            matches!(e, CycleError::Source(SourceError::Malformed { .. }))
        }),
        (Fault::Status(500), |e| {
            matches!(
                e,
                CycleError::Source(SourceError::Status { status: 500, .. })
            )
        }),
        // The server answered: say what it answered, not "start ActivityWatch".
        (Fault::Status(503), |e| {
            matches!(
                e,
                CycleError::Source(SourceError::Status { status: 503, .. })
            )
        }),
    ];
    for (i, (fault, expected)) in cases.into_iter().enumerate() {
        stub.set_fault(Some(FaultPlan {
            fault,
            from_request: 1,
            bucket: None,
        }));
        let engine = engine_on(
            &dev,
            stub.client(),
            dir.path(),
            &format!("state-{i}.sqlite"),
        );
        let err = engine
            .run_cycle()
            .await
            .expect_err("a broken events answer fails the cycle");
        assert!(expected(&err), "{fault:?}: {err:?}");
        assert!(!err.needs_login());
        let text = err.to_string();
        assert!(
            text.contains("/api/0/buckets/b/events"),
            "{fault:?}: the message names the request: {text}"
        );
        let statuses = engine.store.bucket_statuses().unwrap();
        assert!(
            statuses
                .iter()
                .all(|s| s.delivered == 0 && s.cursor.is_none()),
            "{fault:?}: {statuses:?}"
        );
        assert!(held(&dev, &engine.store.device_id().to_string())
            .await
            .is_empty());
        assert_eq!(
            engine.store.cycle_record().unwrap().last_error.as_deref(),
            Some(text.as_str())
        );
    }

    // Broken from the third page on: what was delivered before stays consistent, and once the
    // server is healthy again the next cycle completes the bucket exactly.
    stub.set_fault(Some(FaultPlan {
        fault: Fault::Garbage,
        from_request: 3,
        bucket: None,
    }));
    let engine = engine_on(&dev, stub.client(), dir.path(), "state-mid.sqlite");
    let err = engine.run_cycle().await.expect_err("fails mid-scan");
    assert!(
        matches!(err, CycleError::Source(SourceError::Malformed { .. })),
        "{err:?}"
    );
    assert_state_claims_no_more_than_upstream(&engine, &dev, &stub).await;

    stub.set_fault(None);
    engine.run_cycle().await.expect("healthy again");
    assert_state_claims_no_more_than_upstream(&engine, &dev, &stub).await;
    assert_exact_from_stub(&dev, &engine.store.device_id().to_string(), &stub).await;
}

/// Regression: the engine used to stop the cycle at the first bucket whose read failed, so a
/// bucket aw-server answers with a deterministic error — a 500 from a corrupt row, or a row the
/// client cannot parse — starved every bucket sorted after it, on every cycle, forever. The
/// cycle still reports the failure, but the healthy buckets are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_that_always_fails_does_not_starve_the_buckets_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let dev = start_dev_server(dir.path()).await;
    let buckets = BTreeMap::from([
        ("a-broken".to_string(), synthetic_bucket(5)),
        ("b-healthy".to_string(), synthetic_bucket(12)),
    ]);
    let stub = RustFormatStub::start("stub-device", buckets).await;
    stub.set_fault(Some(FaultPlan {
        fault: Fault::Status(500),
        from_request: 1,
        bucket: Some("a-broken".into()),
    }));
    let engine = engine_on(&dev, stub.client(), dir.path(), "state.sqlite");
    for _ in 0..3 {
        // Failing the cycle is fine (the broken bucket must be reported)...
        let _ = engine.run_cycle().await;
    }
    // ...but the healthy bucket's events must arrive.
    let up = held(&dev, &engine.store.device_id().to_string()).await;
    let healthy = up.keys().filter(|(b, _)| b == "b-healthy").count();
    assert_eq!(healthy, 12, "b-healthy was never synced: {up:?}");
}
