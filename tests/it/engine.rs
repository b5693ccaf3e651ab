//! The engine against a real Python aw-server and the real dev upstream: each guarantee of the
//! sync, on real data.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use aw_sync_samay::engine::CycleError;
use chrono::Duration as ChronoDuration;
use samay_testkit::rig::{ago, event, now_us, series, test_settings, Rig};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_sync_delivers_everything_and_a_second_sends_nothing() {
    let rig = Rig::new().await;
    rig.bucket("window").await;
    rig.bucket("afk").await;
    // Ten days of history: several catch-up windows with small pages.
    rig.insert("window", &series(57, 15_000.0, 600, "w")).await;
    rig.insert("afk", &series(23, 3_600.0, 60, "a")).await;
    let engine = rig.engine();
    let report = engine.run_cycle().await.expect("first cycle");
    assert_eq!(report.upload.delivered, 80);
    rig.assert_exact("window").await;
    rig.assert_exact("afk").await;

    let before = rig.dev.faults().counters().requests_received;
    let again = engine.run_cycle().await.expect("second cycle");
    assert_eq!(again.upload.delivered, 0);
    assert_eq!(again.queued(), 0);
    assert_eq!(
        rig.dev.faults().counters().requests_received,
        before,
        "no upload at all"
    );
    // Steady state: one request per bucket (the lookback window), no fetches by id.
    for stats in again.buckets.values() {
        assert_eq!(stats.requests, 1, "{stats:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grown_heartbeat_event_is_sent_again_as_a_new_version() {
    let rig = Rig::new().await;
    rig.bucket("b").await;
    let client = rig.client();
    let start = ago(120);
    let data = json!({"app": "editor", "title": "main.rs"});
    client
        .heartbeat("b", &event(start, 0.0, data.clone()), 60.0)
        .await
        .unwrap();
    client
        .heartbeat(
            "b",
            &event(start + ChronoDuration::seconds(30), 0.0, data.clone()),
            60.0,
        )
        .await
        .unwrap();
    let engine = rig.engine();
    engine.run_cycle().await.unwrap();
    let first = rig.upstream_events("b").await;
    assert_eq!(first.len(), 1);
    assert!((first[0].duration - 30.0).abs() < 1e-6);

    client
        .heartbeat(
            "b",
            &event(start + ChronoDuration::seconds(75), 0.0, data),
            60.0,
        )
        .await
        .unwrap();
    let r = engine.run_cycle().await.unwrap();
    assert_eq!(r.upload.delivered, 1);
    let after = rig.upstream_events("b").await;
    assert_eq!(after.len(), 1, "same event, not a second one");
    assert_eq!(after[0].event_id, first[0].event_id);
    assert_eq!(after[0].versions, 2);
    rig.assert_exact("b").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_back_dated_insert_is_delivered_inside_the_lookback_and_older() {
    let rig = Rig::new().await;
    rig.bucket("b").await;
    rig.insert("b", &series(5, 60.0, 30, "now")).await;
    let engine = rig.engine(); // lookback 1 h
    engine.run_cycle().await.unwrap();

    // aw-watcher-afk back-dates by minutes; an offline aw-client queue by hours.
    rig.insert("b", &[event(ago(40 * 60), 10.0, json!({"late": "inside"}))])
        .await;
    rig.insert(
        "b",
        &[event(ago(3 * 3600), 10.0, json!({"late": "outside"}))],
    )
    .await;
    let r = engine.run_cycle().await.unwrap();
    assert_eq!(r.upload.delivered, 2);
    rig.assert_exact("b").await;
}

/// Issue 9, as a new user met it on Python aw-server: a bucket whose newest event ended two
/// hours ago is synced; then (a) heartbeats extend that newest event, (b) an event is inserted
/// 20 minutes before it, (c) 40 new events are added after it — all about two hours in the
/// past, older than any lookback behind the wall clock. The read position follows the data,
/// so all of it arrives, and the cycle after that reads nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_events_newer_than_the_synced_data_arrive_whatever_their_timestamps() {
    let rig = Rig::new().await;
    rig.bucket("w").await;
    let client = rig.client();
    let newest = ago(2 * 3600) - ChronoDuration::seconds(8);
    rig.insert("w", &series(29, 60.0, 2 * 3600 + 10, "old"))
        .await;
    let data = json!({"app": "editor", "title": "newest"});
    for at in [newest, newest + ChronoDuration::milliseconds(7_400)] {
        client
            .heartbeat("w", &event(at, 0.0, data.clone()), 120.0)
            .await
            .unwrap();
    }
    let engine = rig.engine();
    engine.run_cycle().await.unwrap();
    rig.assert_exact("w").await;

    // (a) The newest event grows from 7.4 s to 97.4 s.
    client
        .heartbeat(
            "w",
            &event(newest + ChronoDuration::milliseconds(97_400), 0.0, data),
            120.0,
        )
        .await
        .unwrap();
    // (b) An event 20 minutes before it.
    rig.insert(
        "w",
        &[event(
            newest - ChronoDuration::minutes(20),
            5.0,
            json!({"late": "b"}),
        )],
    )
    .await;
    // (c) 40 new events after it, still about two hours ago.
    let after: Vec<_> = (0..40)
        .map(|i| {
            event(
                newest + ChronoDuration::seconds(100 + i),
                0.5,
                json!({"late": format!("c{i}")}),
            )
        })
        .collect();
    rig.insert("w", &after).await;
    let r = engine.run_cycle().await.unwrap();
    assert_eq!(r.upload.delivered, 1 + 1 + 40, "{r:?}");
    rig.assert_exact("w").await;
    let up = rig.upstream_events("w").await;
    let grown = up
        .iter()
        .find(|e| e.data.get("title") == Some(&json!("newest")))
        .expect("the newest event");
    assert!((grown.duration - 97.4).abs() < 1e-3, "{}", grown.duration);

    let quiet = engine.run_cycle().await.unwrap();
    assert_eq!(quiet.upload.delivered, 0);
    assert!(quiet.buckets["w"].settled, "{:?}", quiet.buckets["w"]);
    assert_eq!(quiet.buckets["w"].requests, 1, "one count, nothing read");
}

/// Inserts at any depth — a back-dated event a week old, events from a clock that stepped two
/// days back — are found without reading the history: the count differs, ranged counts narrow
/// it down to a few slices, only those are read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_dated_inserts_at_any_depth_are_found_without_a_rescan() {
    let rig = Rig::new().await;
    rig.bucket("b").await;
    // Ten days of history, 400 events.
    rig.insert("b", &series(400, 2_160.0, 600, "h")).await;
    let engine = rig.engine();
    engine.run_cycle().await.unwrap();

    rig.insert(
        "b",
        &[event(ago(7 * 86_400 + 77), 5.0, json!({"late": "a week"}))],
    )
    .await;
    // A clock that stepped back two days, then went on.
    let stepped: Vec<_> = (0..3)
        .map(|i| {
            event(
                ago(2 * 86_400) + ChronoDuration::seconds(i * 7),
                3.0,
                json!({"late": format!("stepped {i}")}),
            )
        })
        .collect();
    rig.insert("b", &stepped).await;
    let r = engine.run_cycle().await.unwrap();
    assert_eq!(r.upload.delivered, 4, "{r:?}");
    rig.assert_exact("b").await;
    let stats = r.buckets["b"];
    assert!(
        stats.slices_read >= 1 && stats.slices_read <= 4,
        "{stats:?}"
    );
    assert!(stats.read < 100, "not a rescan of 400 events: {stats:?}");
    assert!(stats.requests <= 60, "{stats:?}");

    let quiet = engine.run_cycle().await.unwrap();
    assert!(quiet.buckets["b"].settled);
    assert_eq!(quiet.upload.delivered, 0);
}

/// Deletions, old and recent, reach the upstream (it deletes its copies); afterwards the state
/// and aw-server agree and a cycle reads nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletions_at_any_depth_reach_the_upstream() {
    let rig = Rig::new().await;
    rig.bucket("b").await;
    rig.insert("b", &series(200, 3_600.0, 600, "h")).await;
    let engine = rig.engine();
    engine.run_cycle().await.unwrap();
    let source = rig.source_events("b").await;
    let client = rig.client();
    // Newest first: one recent, two a week old.
    for i in [1usize, 150, 151] {
        let id = source[i].id.expect("id");
        client.delete_event("b", id).await.unwrap();
    }
    let r = engine.run_cycle().await.unwrap();
    assert_eq!(r.buckets["b"].deleted, 3, "{r:?}");
    assert_eq!(r.upload.deleted, 3);
    rig.assert_exact("b").await;
    let quiet = engine.run_cycle().await.unwrap();
    assert!(quiet.buckets["b"].settled, "{:?}", quiet.buckets["b"]);
}

/// An old event's data rewritten in place changes neither the count nor the newest data, so a
/// cycle cannot see it; the background verification re-reads the history a step per interval
/// and finds it, and `--verify` (a full verification) at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_event_edited_in_place_is_found_by_the_verification() {
    let rig = Rig::new().await;
    rig.bucket("b").await;
    rig.insert("b", &series(60, 7_200.0, 600, "h")).await;
    let clock = Arc::new(aw_sync_samay::clock::ManualClock::new(chrono::Utc::now()));
    let mut settings = test_settings();
    settings.verify_batch = 25;
    settings.verify_interval = Duration::from_secs(3600);
    let mut engine = rig.engine_with(settings);
    engine.clock = clock.clone();
    engine.run_cycle().await.unwrap();

    let edit = |tag: &'static str| {
        let rig = &rig;
        async move {
            let oldest = rig.source_events("b").await.pop().expect("events");
            let mut edited = oldest.clone();
            edited.data.insert("title".into(), json!(tag));
            // Python aw-server replaces the row that has the id.
            let url = format!("http://127.0.0.1:{}/api/0/buckets/b/events", rig.aw.port());
            let status = reqwest::Client::new()
                .post(url)
                .json(&[edited])
                .send()
                .await
                .unwrap()
                .status();
            assert!(status.is_success(), "{status}");
        }
    };
    edit("edited").await;
    let r = engine.run_cycle().await.unwrap();
    assert!(
        r.buckets["b"].settled,
        "the count and the listing are unchanged"
    );
    assert_eq!(r.upload.delivered, 0);
    // Each hour a step of 25 events, from the newest down: the oldest is reached in the third.
    let mut found_in = None;
    for step in 1..=4 {
        clock.advance(chrono::TimeDelta::seconds(3601));
        let r = engine.run_cycle().await.unwrap();
        assert!(r.verified() > 0, "step {step}: {r:?}");
        if r.upload.delivered > 0 {
            found_in = Some(step);
            break;
        }
    }
    assert_eq!(found_in, Some(3));
    rig.assert_exact("b").await;
    // Not due before the interval has passed.
    assert_eq!(engine.run_cycle().await.unwrap().verified(), 0);

    // `--verify`: everything at once.
    edit("edited again").await;
    let mut full = rig.engine();
    full.settings.verify_all = true;
    let r = full.run_cycle().await.unwrap();
    assert_eq!(r.upload.delivered, 1);
    assert_eq!(r.verified(), 60);
    rig.assert_exact("b").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_event_growing_at_the_top_is_delivered_whole_never_clipped() {
    let rig = Rig::new().await;
    rig.bucket("afk").await;
    let client = rig.client();
    let start = ago(3 * 3600);
    let data = json!({"status": "not-afk"});
    client
        .heartbeat("afk", &event(start, 0.0, data.clone()), 600.0)
        .await
        .unwrap();
    client
        .heartbeat("afk", &event(ago(100), 0.0, data.clone()), 3.0 * 3600.0)
        .await
        .unwrap();
    let engine = rig.engine();
    engine.run_cycle().await.unwrap();
    rig.assert_exact("afk").await;

    // It grows; the next cycle's range query (cursor − 1 h) returns a copy clipped at its start.
    client
        .heartbeat("afk", &event(ago(10), 0.0, data), 3.0 * 3600.0)
        .await
        .unwrap();
    let r = engine.run_cycle().await.unwrap();
    assert_eq!(r.upload.delivered, 1);
    // Read newest first with no range, the event is served whole: nothing to fetch.
    assert_eq!(r.buckets["afk"].fetched, 0);
    let up = rig.upstream_events("afk").await;
    assert_eq!(up.len(), 1);
    // The true start (aw-server keeps milliseconds), three hours back, not the window's start.
    let up_start: chrono::DateTime<chrono::Utc> = up[0].timestamp.parse().unwrap();
    assert!(
        (up_start - start).num_milliseconds().abs() <= 1,
        "{up_start} vs {start}"
    );
    rig.assert_exact("afk").await;

    // And an unchanged straddler costs nothing: one request, no fetch.
    let quiet = engine.run_cycle().await.unwrap();
    assert_eq!(quiet.buckets["afk"].requests, 1);
    assert_eq!(quiet.upload.delivered, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_pages_cut_through_long_events_without_clipping_them() {
    let rig = Rig::new().await;
    rig.bucket("b").await;
    let mut events = series(40, 5_000.0, 86_400 * 4, "before");
    // A three-day event: every one-day window boundary inside it clips it.
    events.push(event(
        ago(86_400 * 4),
        3.0 * 86_400.0,
        json!({"long": true}),
    ));
    events.extend(series(40, 5_000.0, 300, "after"));
    rig.insert("b", &events).await;
    // Small catch-up pages: page edges fall inside the long event, so it comes back clipped
    // and must be fetched whole.
    let mut settings = test_settings();
    settings.catchup_page = 10;
    let r = rig.engine_with(settings).run_cycle().await.unwrap();
    assert_eq!(r.upload.delivered, 81);
    assert!(r.buckets["b"].fetched >= 1);
    rig.assert_exact("b").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_timestamps_at_page_edges_lose_nothing_and_repeat_nothing() {
    let rig = Rig::new().await;
    rig.bucket("b").await;
    let t = ago(7200);
    // 25 events at one instant (3 pages of 10), between ordinary ones.
    let mut events = series(12, 30.0, 8000, "old");
    events.extend((0..25).map(|i| event(t, 1.0, json!({"tie": i}))));
    events.extend(series(12, 30.0, 60, "new"));
    rig.insert("b", &events).await;
    let r = rig.engine().run_cycle().await.unwrap();
    assert_eq!(r.upload.delivered, 49);
    let stats = samay_testkit::devserver::bucket_stats(&rig.dev, "b")
        .await
        .unwrap();
    assert_eq!(
        (stats.events, stats.duplicates, stats.versions_replaced),
        (49, 0, 0)
    );
    rig.assert_exact("b").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_aw_server_database_never_overwrites_what_was_uploaded() {
    let mut rig = Rig::new().await;
    rig.bucket("b").await;
    rig.insert("b", &series(10, 60.0, 3000, "old")).await;
    let engine = rig.engine();
    engine.run_cycle().await.unwrap();
    let old = rig.upstream_events("b").await;
    assert_eq!(old.len(), 10);

    rig = tokio::task::spawn_blocking(move || {
        rig.aw.replace_database();
        rig
    })
    .await
    .unwrap();
    rig.bucket("b").await;
    rig.insert("b", &series(10, 60.0, 600, "new")).await;
    // Ids restarted: the new events reuse the old ids.
    let new_ids: Vec<i64> = rig
        .source_events("b")
        .await
        .iter()
        .filter_map(|e| e.id)
        .collect();
    assert!(old.iter().any(|o| new_ids.contains(&o.event_id)));

    let engine = rig.engine();
    engine.run_cycle().await.unwrap();
    let all = rig.upstream_events("b").await;
    assert_eq!(all.len(), 20);
    for o in &old {
        let still = all.iter().find(|e| e.event_id == o.event_id).unwrap();
        assert_eq!(
            (still.versions, &still.data),
            (1, &o.data),
            "old event kept as it was"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_faults_are_retried_until_everything_is_held_exactly_once() {
    let rig = Rig::new().await;
    rig.bucket("b").await;
    rig.insert("b", &series(60, 30.0, 120, "x")).await;
    rig.dev.faults().update(|f| {
        f.fail_500 = 2;
        f.fail_429 = 1;
        f.retry_after_secs = 1;
        f.drop_before_store = 1;
        f.drop_after_store = 2;
        f.garbage_answers = 1;
    });
    let mut settings = test_settings();
    settings.max_retries = 10;
    let r = rig.engine_with(settings).run_cycle().await.unwrap();
    assert_eq!(r.upload.delivered, 60);
    assert!(r.upload.retries >= 7, "{:?}", r.upload);
    rig.assert_exact("b").await;
    let stats = samay_testkit::devserver::bucket_stats(&rig.dev, "b")
        .await
        .unwrap();
    assert_eq!(stats.events, 60);
    assert_eq!(stats.versions_replaced, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_max_retries_the_cycle_fails_and_the_next_one_delivers_the_rest() {
    let rig = Rig::new().await;
    rig.bucket("b").await;
    rig.insert("b", &series(30, 30.0, 120, "x")).await;
    rig.dev.faults().update(|f| f.fail_500 = 100);
    let engine = rig.engine();
    let err = engine.run_cycle().await.unwrap_err();
    assert!(matches!(err, CycleError::Upstream(_)), "{err}");
    let requests = rig.dev.faults().counters().requests_received;
    assert_eq!(
        requests, 4,
        "1 try + max_retries, then the cycle ends: no retry storm"
    );
    rig.dev.faults().clear();
    engine.run_cycle().await.unwrap();
    rig.assert_exact("b").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_is_quarantined_and_the_rest_flows() {
    let rig = Rig::new().await;
    rig.bucket("b").await;
    let mut events = series(20, 30.0, 300, "ok");
    events.push(event(ago(100), 1.0, json!({"poison": 1})));
    rig.insert("b", &events).await;
    rig.dev
        .faults()
        .update(|f| f.reject_data_key = Some("poison".into()));
    let engine = rig.engine();
    let r = engine.run_cycle().await.unwrap();
    assert_eq!((r.upload.delivered, r.upload.quarantined), (20, 1));
    let status = engine.store.bucket_statuses().unwrap();
    assert_eq!((status[0].delivered, status[0].quarantined), (20, 1));
    let q = engine.store.quarantine(10).unwrap();
    assert_eq!(q[0].event["data"]["poison"], json!(1));
    // Not retried every cycle while unchanged.
    let again = engine.run_cycle().await.unwrap();
    assert_eq!(again.upload.quarantined, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_offline_queue_stops_reading_and_drops_nothing() {
    let rig = Rig::new().await;
    rig.bucket("b").await;
    rig.insert("b", &series(300, 10.0, 60, "x")).await;
    rig.dev.faults().update(|f| f.fail_500 = 1000);
    let mut settings = test_settings();
    settings.queue_size = 30;
    settings.batch_size = 10;
    settings.max_retries = 2;
    let engine = rig.engine_with(settings);
    assert!(engine.run_cycle().await.is_err());
    let read = engine.metrics.events_read.load(Ordering::Relaxed);
    // The reader stopped once the queue was full: the queue, one batch, one page in hand and
    // one page of lookahead at most — not the 300 events aw-server holds.
    assert!(
        read <= 30 + 10 + 10 + 10,
        "read {read} while the upstream was down"
    );
    rig.dev.faults().clear();
    engine.run_cycle().await.unwrap();
    rig.assert_exact("b").await;
}

/// The engine keeps several batches on the wire (`sync.upload_concurrency`) against the dev
/// server, and everything arrives once; the uploader holds at most those batches and the one it
/// fills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_travel_together_to_the_upstream_and_everything_arrives_once() {
    let rig = Rig::new().await;
    rig.bucket("b").await;
    rig.insert("b", &series(400, 10.0, 60, "x")).await;
    rig.dev.faults().update(|f| f.slow_ms = 30);
    let mut settings = test_settings();
    settings.queue_size = 50;
    settings.batch_size = 10;
    settings.upload_concurrency = 3;
    let engine = Arc::new(rig.engine_with(settings));
    let cycle = tokio::spawn({
        let engine = Arc::clone(&engine);
        async move { engine.run_cycle().await }
    });
    let counters = engine.metrics.bucket("b");
    let mut held_most = 0;
    for _ in 0..6000 {
        if cycle.is_finished() {
            break;
        }
        let delivered = counters.delivered.load(Ordering::SeqCst);
        let taken = counters.new.load(Ordering::SeqCst);
        held_most = held_most.max(taken.saturating_sub(delivered));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let report = cycle.await.unwrap().unwrap();
    assert_eq!(report.upload.delivered, 400);
    assert!(
        held_most <= (3 + 1) * 10,
        "the uploader held {held_most} events: more than 3 batches on the wire and 1 filling"
    );
    // One batch arrived before an earlier one was answered.
    let mut log = rig.dev.faults().requests();
    log.sort_by_key(|r| r.received);
    assert!(
        log.windows(2)
            .any(|w| w[0].answered.is_some_and(|a| w[1].received < a)),
        "no two batches were on the wire at once"
    );
    assert_eq!(log.len(), 40, "one request per batch");
    rig.assert_exact("b").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aw_server_restarting_mid_sync_loses_nothing() {
    let mut rig = Rig::new().await;
    rig.bucket("b").await;
    rig.insert("b", &series(400, 10.0, 60, "x")).await;
    rig.dev.faults().update(|f| f.slow_ms = 20);
    let engine = Arc::new(rig.engine());
    let cycle = tokio::spawn({
        let engine = Arc::clone(&engine);
        async move { engine.run_cycle().await }
    });
    // Restart once the first batches are in.
    for _ in 0..500 {
        if rig.dev.faults().counters().batches_stored >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    rig = tokio::task::spawn_blocking(move || {
        rig.aw.restart();
        rig
    })
    .await
    .unwrap();
    let first = cycle.await.unwrap();
    if let Err(e) = &first {
        assert!(
            matches!(e, CycleError::SourceDown { .. } | CycleError::Source(_)),
            "{e}"
        );
    }
    rig.dev.faults().clear();
    engine
        .run_cycle()
        .await
        .expect("next cycle after the restart");
    rig.assert_exact("b").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aw_server_down_is_a_clear_retryable_error() {
    let mut rig = Rig::new().await;
    rig = tokio::task::spawn_blocking(move || {
        rig.aw.stop();
        rig
    })
    .await
    .unwrap();
    let err = rig.engine().run_cycle().await.unwrap_err();
    assert!(matches!(err, CycleError::SourceDown { .. }), "{err}");
    assert!(err.to_string().contains("start ActivityWatch"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_deleted_between_cycles_keeps_its_state_and_others_flow() {
    let rig = Rig::new().await;
    rig.bucket("gone").await;
    rig.bucket("stays").await;
    rig.insert("gone", &series(5, 10.0, 60, "g")).await;
    rig.insert("stays", &series(5, 10.0, 60, "s")).await;
    let engine = rig.engine();
    engine.run_cycle().await.unwrap();
    rig.client().delete_bucket("gone").await.unwrap();
    rig.insert("stays", &series(3, 1.0, 5, "more")).await;
    let r = engine.run_cycle().await.unwrap();
    assert_eq!(r.upload.delivered, 3);
    assert_eq!(
        rig.upstream_events("gone").await.len(),
        5,
        "uploaded events stay upstream"
    );
    rig.assert_exact("stays").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_large_batches_are_split_until_they_fit() {
    let rig = Rig::new().await;
    rig.bucket("b").await;
    rig.insert("b", &series(40, 10.0, 60, "x")).await;
    // Room for about two events per request (uncompressed bodies to make sizes predictable).
    rig.dev.faults().update(|f| f.max_body_bytes = 900);
    let mut settings = test_settings();
    settings.batch_size = 16;
    let mut engine = rig.engine_with(settings);
    engine.upstream = Arc::new(
        aw_sync_samay::upstream::UpstreamClient::new(
            &rig.dev.base_url(),
            Duration::from_secs(5),
            false,
        )
        .unwrap(),
    );
    let r = engine.run_cycle().await.unwrap();
    assert_eq!((r.upload.delivered, r.upload.quarantined), (40, 0));
    assert!(r.upload.requests > 40 / 16 + 1);
    rig.assert_exact("b").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_at_now_and_in_the_future_are_delivered() {
    // A clock stepped back (activitywatch #853) leaves events "in the future".
    let rig = Rig::new().await;
    rig.bucket("b").await;
    rig.insert(
        "b",
        &[event(
            now_us() + ChronoDuration::hours(2),
            5.0,
            json!({"future": true}),
        )],
    )
    .await;
    rig.insert("b", &series(3, 1.0, 1, "now")).await;
    let r = rig.engine().run_cycle().await.unwrap();
    assert_eq!(r.upload.delivered, 4);
    rig.assert_exact("b").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_deleted_or_created_mid_run_are_handled_without_failing_the_cycle() {
    let rig = Rig::new().await;
    rig.bucket("a-first").await;
    rig.bucket("z-last").await;
    rig.insert("a-first", &series(200, 10.0, 60, "a")).await;
    rig.insert("z-last", &series(20, 10.0, 60, "z")).await;
    // A slow upstream and a small queue hold the reader inside the first bucket.
    rig.dev.faults().update(|f| f.slow_ms = 20);
    let mut settings = test_settings();
    settings.queue_size = 20;
    let engine = Arc::new(rig.engine_with(settings));
    let cycle = tokio::spawn({
        let engine = Arc::clone(&engine);
        async move { engine.run_cycle().await }
    });
    for _ in 0..500 {
        if rig.dev.faults().counters().batches_stored >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    rig.client().delete_bucket("z-last").await.unwrap();
    rig.bucket("m-new").await;
    rig.insert("m-new", &series(5, 10.0, 60, "m")).await;
    let report = cycle
        .await
        .unwrap()
        .expect("the cycle survives a bucket deleted under it");
    assert!(
        !report.buckets.contains_key("z-last"),
        "the deleted bucket was skipped"
    );
    rig.assert_exact("a-first").await;
    rig.dev.faults().clear();
    // The bucket created mid-run is picked up by the next cycle.
    engine.run_cycle().await.unwrap();
    rig.assert_exact("m-new").await;
}

/// A cycle's reads of aw-server share one connection, and none is kept once the daemon goes
/// idle (`release_pages`): the next cycle opens a new one. Each read made and closed its own
/// connection before — a seventh of an idle cycle's CPU (perf, issue 9).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cycles_reads_share_one_connection_released_when_idle() {
    use samay_aw_double::{AwDouble, AwDoubleConfig};
    use std::sync::atomic::AtomicU64;
    let rig = Rig::new().await;
    let double = AwDouble::spawn(AwDoubleConfig::default())
        .await
        .expect("double starts");
    let t0 = chrono::Utc::now() - ChronoDuration::days(1);
    for bucket in ["a-window", "b-afk", "c-web"] {
        double
            .create_bucket(bucket, "currentwindow", "aw-watcher-window", "host")
            .expect("bucket");
        let events: Vec<_> = (0..5)
            .map(|i| {
                samay_aw_double::event(
                    t0 + ChronoDuration::minutes(i),
                    30.0,
                    json!({"app": bucket, "n": i}),
                )
            })
            .collect();
        double.insert(bucket, &events).expect("events");
    }
    let (gets, others) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (g, o) = (Arc::clone(&gets), Arc::clone(&others));
    double.set_request_hook(Some(Arc::new(move |method, _uri| {
        if method == hyper::Method::GET { &g } else { &o }.fetch_add(1, Ordering::SeqCst);
        None
    })));
    let mut engine = rig.engine();
    engine.source = samay_testkit::double_client(&double).expect("double client");
    let first = engine.run_cycle().await.expect("first cycle");
    assert_eq!(first.upload.delivered, 15, "{first:?}");
    engine.source.release_pages();

    for cycle in 1..=2 {
        let (gets0, others0, conns0) = (
            gets.load(Ordering::SeqCst),
            others.load(Ordering::SeqCst),
            double.connections(),
        );
        let idle = engine.run_cycle().await.expect("idle cycle");
        engine.source.release_pages();
        assert_eq!(idle.upload.delivered, 0, "{idle:?}");
        let reads = gets.load(Ordering::SeqCst) - gets0;
        let writes = others.load(Ordering::SeqCst) - others0;
        assert!(
            reads >= 5,
            "the info, the bucket list and a read per bucket: {reads}"
        );
        // hyper hands a connection back to its pool from a task of its own once the answer
        // has been read; a read asked before that task ran opens another (and the pool then
        // keeps one of the two). So under load a cycle's reads may open two or three (14 of 80
        // cycles beside two busy loops); the kept connection is what makes them fewer than the
        // reads.
        let opened = double.connections() - conns0 - writes;
        assert!(
            opened >= 1,
            "cycle {cycle}: the connection released before the cycle was used again"
        );
        assert!(
            opened < reads,
            "cycle {cycle}: {reads} reads opened {opened} connections (each write its own: {writes})"
        );
    }
}
