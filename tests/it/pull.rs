//! Issue 14, the pull: two devices end to end — the real Python aw-server 0.12 (device A) and
//! the aw-server double on aw-server-rust's SQLite storage (device B), two engines with their
//! own state (so their own device ids) and the same account, one dev upstream. Each
//! aw-server ends up holding the other's buckets event for event, through heartbeat growth,
//! back-dated inserts, deletions, a sidecar stopped mid-pull, an aw-server restart; then an
//! idle cycle writes nothing.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aw_sync_samay::auth::{AccessToken, BoxFuture, StaticToken};
use aw_sync_samay::engine::Engine;
use aw_sync_samay::pull::{unpull, PullSettings, PullStats};
use aw_sync_samay::source::{AwClient, Event};
use aw_sync_samay::state::Store;
use aw_sync_samay::upstream::contract::{BatchResponse, ChangesResponse, DevicesResponse};
use aw_sync_samay::upstream::{BatchSink, UpstreamClient, UpstreamError};
use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use samay_aw_double::{AwDouble, AwDoubleConfig, Storage};
use samay_server::DevServer;
use samay_testkit::devserver::TEST_TOKEN;
use samay_testkit::rig::{test_settings, Rig};
use serde_json::{json, Map, Value};

const A_BUCKET: &str = "aw-watcher-window_host-a";
pub(super) const B_BUCKET: &str = "aw-watcher-afk_host-b";
const A_COPY: &str = "aw-watcher-window_host-a-synced-from-host-a";
pub(super) const B_COPY: &str = "aw-watcher-afk_host-b-synced-from-host-b";

fn pulling() -> aw_sync_samay::engine::Settings {
    let mut s = test_settings();
    s.pull = PullSettings {
        enabled: true,
        page: 7,
        ..PullSettings::default()
    };
    s
}

pub(super) fn engine(rig: &Rig, source: AwClient, state: &str) -> Engine {
    engine_at(&rig.dev, rig.dir.path(), source, state)
}

fn engine_at(dev: &DevServer, dir: &Path, source: AwClient, state: &str) -> Engine {
    let store = Store::open(&dir.join(state)).expect("state opens");
    Engine {
        source,
        upstream: Arc::new(
            UpstreamClient::new(&dev.base_url(), Duration::from_secs(5), true)
                .expect("upstream client"),
        ),
        tokens: Arc::new(StaticToken::new(AccessToken::new(TEST_TOKEN), "test")),
        store: Arc::new(store),
        settings: pulling(),
        hostname: "test-host".into(),
        metrics: Default::default(),
        destination: aw_sync_samay::state::DestKey::new("http://upstream.test", "dev").into(),
        clock: Arc::new(aw_sync_samay::clock::SystemClock),
    }
}

pub(super) async fn cycle(e: &Engine) -> PullStats {
    *e.run_cycle().await.expect("cycle").pull.expect("pull ran")
}

pub(super) fn t0() -> DateTime<Utc> {
    // Milliseconds: what Python aw-server keeps.
    Utc.with_ymd_and_hms(2026, 11, 2, 9, 0, 0).unwrap()
}

pub(super) fn ev(offset_s: i64, duration: f64, data: Value) -> Event {
    let Value::Object(map) = data else {
        panic!("data must be an object")
    };
    Event::new(
        t0() + TimeDelta::milliseconds(offset_s * 1000 + 125),
        duration,
        map,
    )
}

/// A bucket's events as (timestamp ms, duration µs, data), sorted.
pub(super) async fn content(
    client: &AwClient,
    bucket: &str,
) -> Vec<(i64, i64, Map<String, Value>)> {
    let mut out: Vec<_> = client
        .get_events(bucket, None, None, None)
        .await
        .expect("events")
        .into_iter()
        .map(|e| {
            (
                e.timestamp.timestamp_millis(),
                (e.duration * 1e6).round() as i64,
                e.data,
            )
        })
        .collect();
    out.sort_by_key(|e| (e.0, e.1, Value::Object(e.2.clone()).to_string()));
    out
}

pub(super) async fn assert_copy(from: &AwClient, bucket: &str, to: &AwClient, copy: &str) {
    let source = content(from, bucket).await;
    assert!(!source.is_empty(), "{bucket} has events");
    assert_eq!(
        content(to, copy).await,
        source,
        "{copy} holds {bucket} event for event"
    );
}

/// Counts the requests that write to the double; `on_post` sees each POST before it is served.
fn count_writes(
    double: &AwDouble,
    writes: &Arc<AtomicU64>,
    on_post: impl Fn(&hyper::Uri) + Send + Sync + 'static,
) {
    let counter = Arc::clone(writes);
    double.set_request_hook(Some(Arc::new(move |method, uri| {
        if method != hyper::Method::GET {
            counter.fetch_add(1, Ordering::SeqCst);
        }
        if method == hyper::Method::POST {
            on_post(uri);
        }
        None
    })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_each_hold_the_others_events_exactly_once() {
    let rig = Rig::new().await;
    let double = AwDouble::spawn(AwDoubleConfig {
        storage: Storage::Sqlite(None),
        ..AwDoubleConfig::default()
    })
    .await
    .expect("double starts");
    // Count the double's writes: an idle cycle must make none.
    let writes = Arc::new(AtomicU64::new(0));
    count_writes(&double, &writes, |_| {});
    let py = rig.client();
    let rs = samay_testkit::double_client(&double).expect("double client");
    py.create_bucket(A_BUCKET, "currentwindow", "aw-watcher-window", "host-a")
        .await
        .unwrap();
    rs.create_bucket(B_BUCKET, "afkstatus", "aw-watcher-afk", "host-b")
        .await
        .unwrap();
    let a_events: Vec<Event> = (0..20)
        .map(|i| {
            ev(
                i * 60,
                30.5,
                json!({"app": format!("app{}", i % 3), "title": "t"}),
            )
        })
        .collect();
    rig.insert(A_BUCKET, &a_events).await;
    let b_events: Vec<Event> = (0..15)
        .map(|i| {
            ev(
                i * 90,
                45.25,
                json!({"status": if i % 2 == 0 { "afk" } else { "not-afk" }}),
            )
        })
        .collect();
    rs.insert_events(B_BUCKET, &b_events).await.unwrap();

    let a = engine(&rig, py.clone(), "a.sqlite");
    let b = engine(&rig, rs.clone(), "b.sqlite");
    assert_ne!(a.store.device_id(), b.store.device_id());
    cycle(&a).await;
    let b_first = cycle(&b).await;
    assert_eq!(b_first.inserted, 20, "B copied A's events: {b_first:?}");
    let a_first = cycle(&a).await;
    assert_eq!(a_first.inserted, 15, "A copied B's events: {a_first:?}");
    assert_copy(&py, A_BUCKET, &rs, A_COPY).await;
    assert_copy(&rs, B_BUCKET, &py, B_COPY).await;
    // Named and described as aw-sync does.
    let listed = py.get_buckets().await.unwrap();
    let copy = &listed[B_COPY];
    assert_eq!(
        (
            copy.hostname.as_str(),
            copy.bucket_type.as_str(),
            copy.client.as_str()
        ),
        ("host-b", "afkstatus", "aw-watcher-afk")
    );

    // Heartbeat growth on A: one event getting longer, the same local event on B.
    let last = a_events.last().unwrap().clone();
    let before: Vec<Event> = rs.get_events(A_COPY, None, None, Some(1)).await.unwrap();
    let mut beat = last.clone();
    beat.timestamp = last.timestamp + TimeDelta::seconds(20);
    py.heartbeat(A_BUCKET, &beat, 60.0).await.unwrap();
    // Growth on B too (into Python: a replacement there), a back-dated insert on B, and a
    // deletion on A.
    let last_b = b_events.last().unwrap().clone();
    let mut beat_b = last_b.clone();
    beat_b.timestamp = last_b.timestamp + TimeDelta::seconds(30);
    rs.heartbeat(B_BUCKET, &beat_b, 60.0).await.unwrap();
    let py_before: Vec<Event> = py.get_events(B_COPY, None, None, Some(1)).await.unwrap();
    rs.insert_events(B_BUCKET, &[ev(-3600, 12.0, json!({"status": "afk"}))])
        .await
        .unwrap();
    let oldest_a = py
        .get_events(A_BUCKET, None, None, None)
        .await
        .unwrap()
        .into_iter()
        .min_by_key(|e| e.timestamp)
        .unwrap();
    py.delete_event(A_BUCKET, oldest_a.id.unwrap())
        .await
        .unwrap();
    cycle(&a).await;
    let b_second = cycle(&b).await;
    assert_eq!(
        (b_second.inserted, b_second.replaced, b_second.deleted),
        (0, 1, 1),
        "{b_second:?}"
    );
    let a_second = cycle(&a).await;
    assert_eq!(
        (a_second.inserted, a_second.replaced),
        (1, 1),
        "{a_second:?}"
    );
    let py_after: Vec<Event> = py.get_events(B_COPY, None, None, Some(1)).await.unwrap();
    assert_eq!(
        py_after[0].id, py_before[0].id,
        "grown in place in Python aw-server too"
    );
    assert!(py_after[0].duration > py_before[0].duration);
    assert_copy(&py, A_BUCKET, &rs, A_COPY).await;
    assert_copy(&rs, B_BUCKET, &py, B_COPY).await;
    let after: Vec<Event> = rs.get_events(A_COPY, None, None, Some(1)).await.unwrap();
    assert_eq!(
        after[0].id, before[0].id,
        "grown in place, not a second event"
    );
    assert!(after[0].duration > before[0].duration);

    // B killed mid-pull: its insert reached aw-server, the record of it never did. The state
    // database is copied at the moment the insert arrives (what a kill -9 then leaves), the
    // cycle finishes, and B starts again from the copy.
    py.insert_events(
        A_BUCKET,
        &[ev(5000, 3.0, json!({"app": "late", "title": "t"}))],
    )
    .await
    .unwrap();
    cycle(&a).await;
    let state = rig.dir.path().join("b.sqlite");
    let snapshot = rig.dir.path().join("b-killed");
    std::fs::create_dir_all(&snapshot).unwrap();
    let (state2, snap2) = (state.clone(), snapshot.clone());
    count_writes(&double, &writes, move |uri| {
        if uri.path().ends_with("/events") {
            for suffix in ["", "-wal"] {
                let from = format!("{}{suffix}", state2.display());
                let _ = std::fs::copy(&from, snap2.join(format!("b.sqlite{suffix}")));
            }
        }
    });
    let finished = cycle(&b).await;
    assert_eq!(finished.inserted, 1, "{finished:?}");
    drop(b);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", state.display()));
    }
    for suffix in ["", "-wal"] {
        let from = snapshot.join(format!("b.sqlite{suffix}"));
        if from.exists() {
            std::fs::copy(&from, format!("{}{suffix}", state.display())).unwrap();
        }
    }
    let b = engine(&rig, rs.clone(), "b.sqlite"); // the sidecar starts again
    let recovered = cycle(&b).await;
    assert_eq!(
        (recovered.swept, recovered.inserted),
        (1, 1),
        "the orphan is swept and the event copied once: {recovered:?}"
    );
    assert_copy(&py, A_BUCKET, &rs, A_COPY).await;

    // An aw-server restart changes nothing.
    let mut rig = rig;
    tokio::task::block_in_place(|| rig.aw.restart());
    let py = rig.client();
    cycle(&a).await;
    assert_copy(&rs, B_BUCKET, &py, B_COPY).await;

    // Idle: nothing written on either side.
    let idle_a = cycle(&a).await;
    let before_writes = writes.load(Ordering::SeqCst);
    let idle_b = cycle(&b).await;
    assert_eq!(idle_a.writes + idle_b.writes, 0, "{idle_a:?} {idle_b:?}");
    assert_eq!(
        writes.load(Ordering::SeqCst),
        before_writes,
        "no write reached B's aw-server"
    );

    // Never an echo: no imported bucket upstream.
    let stored = rig.dev.stored_events(None, None).await.unwrap();
    assert!(stored
        .iter()
        .all(|e| !e.bucket_id.contains("-synced-from-")));

    // --unpull on B: its copy of A goes, the upstream keeps A's events, the next cycle does not
    // bring it back.
    let dest = b.store.current_destination().unwrap().unwrap().0;
    let gone = unpull(&rs, &b.store, dest, "host-a").await.expect("unpull");
    assert_eq!(gone, vec![A_COPY.to_string()]);
    assert!(!rs.get_buckets().await.unwrap().contains_key(A_COPY));
    py.heartbeat(A_BUCKET, &beat, 60.0).await.unwrap();
    cycle(&a).await;
    cycle(&b).await;
    assert!(!rs.get_buckets().await.unwrap().contains_key(A_COPY));
    assert!(!rig
        .dev
        .stored_events(None, Some(A_BUCKET))
        .await
        .unwrap()
        .is_empty());

    // Removing device B upstream removes its events from A's aw-server at the next cycle.
    let http = reqwest::Client::new();
    let answer = http
        .delete(format!(
            "{}/v1/devices/{}",
            rig.dev.base_url(),
            b.store.device_id()
        ))
        .bearer_auth(TEST_TOKEN)
        .send()
        .await
        .unwrap();
    assert!(answer.status().is_success());
    let removed = cycle(&a).await;
    assert_eq!(removed.deleted, 16, "{removed:?}");
    assert!(content(&py, B_COPY).await.is_empty());
}

pub(super) async fn double() -> (AwDouble, AwClient) {
    let d = AwDouble::spawn(AwDoubleConfig::default())
        .await
        .expect("double starts");
    let c = samay_testkit::double_client(&d).expect("double client");
    (d, c)
}

/// Two other devices with one host name are told apart; a bucket of a pulled bucket's name
/// that the pull did not make is never written; this device's own events never come back; a
/// device left out by `exclude_pull_devices` arrives whole once the selection lets it in; a
/// pulled bucket the user deleted is made and filled again.
#[tokio::test]
async fn same_host_names_selection_foreign_buckets_and_lost_copies() {
    let dir = tempfile::tempdir().unwrap();
    let dev = samay_testkit::devserver::start_dev_server(dir.path()).await;
    let (_da, a) = double().await;
    let (_db, b) = double().await;
    let (_dc, c) = double().await;
    let window = "aw-watcher-window_host-b";
    let afk = "aw-watcher-afk_host-b";
    for (client, n) in [(&b, 4), (&c, 6)] {
        client
            .create_bucket(window, "currentwindow", "aw-watcher-window", "host-b")
            .await
            .unwrap();
        let events: Vec<Event> = (0..n)
            .map(|i| ev(i * 10, 5.0, json!({"app": format!("n{n}-{i}")})))
            .collect();
        client.insert_events(window, &events).await.unwrap();
    }
    b.create_bucket(afk, "afkstatus", "aw-watcher-afk", "host-b")
        .await
        .unwrap();
    b.insert_events(
        afk,
        &[
            ev(0, 9.0, json!({"status": "afk"})),
            ev(20, 9.0, json!({"status": "not-afk"})),
        ],
    )
    .await
    .unwrap();
    // What aw-sync (or the user) made here before: never written by the pull.
    let foreign = format!("{afk}-synced-from-host-b");
    a.create_bucket(&foreign, "afkstatus", "aw-sync", "host-b")
        .await
        .unwrap();
    a.insert_events(&foreign, &[ev(500, 1.0, json!({"mine": true}))])
        .await
        .unwrap();
    a.create_bucket("aw-watcher-window_host-a", "currentwindow", "w", "host-a")
        .await
        .unwrap();
    a.insert_events(
        "aw-watcher-window_host-a",
        &[ev(0, 1.0, json!({"app": "own"}))],
    )
    .await
    .unwrap();

    let eb = engine_at(&dev, dir.path(), b.clone(), "b.sqlite");
    let ec = engine_at(&dev, dir.path(), c.clone(), "c.sqlite");
    let mut ea = engine_at(&dev, dir.path(), a.clone(), "a.sqlite");
    let c_id = ec.store.device_id().to_string();
    ea.settings.pull.exclude = vec![c_id.clone()];
    cycle(&eb).await;
    cycle(&ec).await;
    let first = cycle(&ea).await;
    assert_eq!(first.conflicts, vec![foreign.clone()], "{first:?}");
    let plain = format!("{window}-synced-from-host-b");
    let suffixed = format!(
        "{window}-synced-from-{}",
        aw_sync_samay::pull::distinct_origin("host-b", &c_id)
    );
    let listed = a.get_buckets().await.unwrap();
    assert!(listed.contains_key(&plain));
    assert!(!listed.contains_key(&suffixed), "C is excluded");
    assert!(
        !listed.keys().any(|k| k.ends_with("-synced-from-host-a")),
        "this device's own events never come back: {listed:?}"
    );
    assert_eq!(content(&a, &plain).await, content(&b, window).await);
    assert_eq!(
        content(&a, &foreign).await.len(),
        1,
        "the foreign bucket is untouched"
    );

    // C let in: the feed is read again, C arrives whole, B's copies are not written again.
    ea.settings.pull.exclude = Vec::new();
    let second = cycle(&ea).await;
    assert_eq!((second.inserted, second.replaced), (6, 0), "{second:?}");
    assert_eq!(content(&a, &suffixed).await, content(&c, window).await);
    let copy = &a.get_buckets().await.unwrap()[&suffixed];
    assert_eq!(
        copy.hostname,
        aw_sync_samay::pull::distinct_origin("host-b", &c_id)
    );

    // The user deletes a pulled bucket: it is made and filled again.
    a.delete_bucket(&plain).await.unwrap();
    let third = cycle(&ea).await;
    assert_eq!(third.inserted, 4, "{third:?}");
    assert_eq!(content(&a, &plain).await, content(&b, window).await);
    assert_eq!(content(&a, &foreign).await.len(), 1);
}

/// The upstream of one engine, its requests counted by kind (the feed, the device list, the
/// rest) on the client side.
#[derive(Default)]
pub(super) struct Asked {
    feed: AtomicU64,
    devices: AtomicU64,
    other: AtomicU64,
}

/// Something done once, before the feed is first asked for a page past the start.
pub(super) type BeforePage =
    std::sync::Mutex<Option<Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>>>;

pub(super) struct CountedUpstream {
    pub inner: UpstreamClient,
    pub asked: Arc<Asked>,
    pub before_page: BeforePage,
}

impl BatchSink for CountedUpstream {
    fn send_batch<'a>(
        &'a self,
        token: &'a AccessToken,
        batch: &'a aw_sync_samay::upstream::batch::Batch,
    ) -> BoxFuture<'a, Result<BatchResponse, UpstreamError>> {
        self.asked.other.fetch_add(1, Ordering::SeqCst);
        Box::pin(self.inner.send_batch(token, batch))
    }

    fn whoami<'a>(
        &'a self,
        token: &'a AccessToken,
    ) -> BoxFuture<'a, Result<Option<String>, UpstreamError>> {
        self.asked.other.fetch_add(1, Ordering::SeqCst);
        Box::pin(self.inner.whoami(token))
    }

    fn changes<'a>(
        &'a self,
        token: &'a AccessToken,
        after: i64,
        limit: usize,
    ) -> BoxFuture<'a, Result<ChangesResponse, UpstreamError>> {
        self.asked.feed.fetch_add(1, Ordering::SeqCst);
        let before = match after {
            0 => None,
            _ => self.before_page.lock().unwrap().take(),
        };
        Box::pin(async move {
            if let Some(before) = before {
                before().await;
            }
            self.inner.changes(token, after, limit).await
        })
    }

    fn devices<'a>(
        &'a self,
        token: &'a AccessToken,
    ) -> BoxFuture<'a, Result<DevicesResponse, UpstreamError>> {
        self.asked.devices.fetch_add(1, Ordering::SeqCst);
        Box::pin(self.inner.devices(token))
    }
}

/// A cycle with nothing new costs the pull one feed request and nothing in aw-server: the
/// cycle's own reads (info, bucket list) are all aw-server sees, as with the pull off.
#[tokio::test]
async fn an_idle_pull_cycle_asks_the_feed_once_and_aw_server_nothing_more() {
    let dir = tempfile::tempdir().unwrap();
    let dev = samay_testkit::devserver::start_dev_server(dir.path()).await;
    let (_db, b) = double().await;
    let (da, a) = double().await;
    b.create_bucket(B_BUCKET, "afkstatus", "aw-watcher-afk", "host-b")
        .await
        .unwrap();
    let events: Vec<Event> = (0..20)
        .map(|i| ev(i * 10, 5.0, json!({"status": "afk", "n": i})))
        .collect();
    b.insert_events(B_BUCKET, &events).await.unwrap();
    cycle(&engine_at(&dev, dir.path(), b.clone(), "b.sqlite")).await;

    let mut ea = engine_at(&dev, dir.path(), a.clone(), "a.sqlite");
    let asked = Arc::new(Asked::default());
    ea.upstream = Arc::new(CountedUpstream {
        inner: UpstreamClient::new(&dev.base_url(), Duration::from_secs(5), true).unwrap(),
        asked: Arc::clone(&asked),
        before_page: Default::default(),
    });
    let first = cycle(&ea).await;
    assert_eq!(first.inserted, 20, "{first:?}");
    assert_copy(&b, B_BUCKET, &a, B_COPY).await;

    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    da.set_request_hook(Some(Arc::new(move |method, uri| {
        log.lock().unwrap().push(format!("{method} {}", uri.path()));
        None
    })));
    let feed_before = asked.feed.load(Ordering::SeqCst);
    let (devices_before, other_before) = (
        asked.devices.load(Ordering::SeqCst),
        asked.other.load(Ordering::SeqCst),
    );
    let idle = cycle(&ea).await;
    da.set_request_hook(None);
    assert_eq!(
        (idle.changes, idle.inserted, idle.writes),
        (0, 0, 0),
        "{idle:?}"
    );
    assert_eq!(
        *seen.lock().unwrap(),
        ["GET /api/0/info", "GET /api/0/buckets/"],
        "aw-server sees only the cycle's own reads"
    );
    assert_eq!(
        (
            asked.feed.load(Ordering::SeqCst) - feed_before,
            asked.devices.load(Ordering::SeqCst) - devices_before,
            asked.other.load(Ordering::SeqCst) - other_before,
        ),
        (1, 0, 0),
        "one feed request upstream, nothing else"
    );
}

/// Device B (the double) with `n` events in its bucket, pushed by its engine (`tune`d, not
/// pulling).
pub(super) async fn b_pushed(
    rig: &Rig,
    n: i64,
    tune: impl FnOnce(&mut Engine),
) -> (AwDouble, AwClient, Engine, Vec<Event>) {
    let (db, b) = double().await;
    b.create_bucket(B_BUCKET, "afkstatus", "aw-watcher-afk", "host-b")
        .await
        .unwrap();
    let events: Vec<Event> = (0..n)
        .map(|i| ev(i * 3, 2.0, json!({"status": "afk", "n": i})))
        .collect();
    b.insert_events(B_BUCKET, &events).await.unwrap();
    let mut eb = engine(rig, b.clone(), "b.sqlite");
    eb.settings.pull.enabled = false;
    tune(&mut eb);
    eb.run_cycle().await.expect("B pushes");
    (db, b, eb, events)
}

/// Device A's home for the binary, and its config (`sync.pull = true`).
pub(super) fn home_a(rig: &Rig) -> (std::path::PathBuf, std::path::PathBuf) {
    let home = rig.dir.path().join("home-a");
    std::fs::create_dir_all(&home).unwrap();
    let config = samay_testkit::bin::write_config(&home, &rig.dev.base_url(), "pull = true");
    (home, config)
}

/// The shipped binary: `--once` with `sync.pull = true` killed with SIGKILL while it pulls a
/// few thousand events into Python aw-server, then run again: every event once. `--status`
/// shows the pulled device; `--unpull` takes its buckets out of aw-server only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_killed_mid_pull_resumes_without_duplicates() {
    use samay_testkit::bin::{run, sync_command};
    use samay_testkit::daemon::{send_signal, Daemon};

    let rig = Rig::new().await;
    let (_db, b, eb, events) = b_pushed(&rig, 2500, |eb| {
        eb.settings.batch_size = 500;
        eb.settings.queue_size = 2000;
    })
    .await;
    let (home, config) = home_a(&rig);
    let once = || {
        let mut cmd = sync_command(&home, rig.aw.port(), &config, TEST_TOKEN);
        cmd.arg("--once");
        cmd
    };
    let mut killed = Daemon::spawn(&mut once(), &home.join("out"));
    killed.wait_for("pull: applied a page").await;
    send_signal(killed.pid(), "KILL");
    let _ = killed.child.wait();
    let py = rig.client();
    let partial = py
        .get_events(B_COPY, None, None, None)
        .await
        .map(|e| e.len())
        .unwrap_or(0);
    assert!(
        partial < events.len(),
        "killed before the pull ended ({partial})"
    );

    let done = run(&mut once(), &home.join("out")).await;
    assert!(done.status.success(), "{}", done.all());
    assert!(
        done.all().contains("pulled from other devices: "),
        "the summary says what was pulled: {}",
        done.all()
    );
    assert_copy(&b, B_BUCKET, &py, B_COPY).await;

    let status = run(
        sync_command(&home, rig.aw.port(), &config, TEST_TOKEN).arg("--status"),
        &home.join("out"),
    )
    .await;
    let text = status.stdout.clone();

    let b_id = eb.store.device_id().to_string();
    assert!(text.contains("Pull (on;"), "{text}");
    assert!(
        !text.contains("synced-from"),
        "a pulled bucket is nothing to push: {text}"
    );
    assert!(
        text.contains(&format!("test-host ({b_id}) as host-b: 2500 events here")),
        "{text}"
    );

    let unpulled = run(
        sync_command(&home, rig.aw.port(), &config, TEST_TOKEN).args(["--unpull", "host-b"]),
        &home.join("out"),
    )
    .await;
    assert!(unpulled.status.success(), "{}", unpulled.all());
    assert!(!py.get_buckets().await.unwrap().contains_key(B_COPY));
    assert_eq!(
        rig.dev
            .stored_events(None, Some(B_BUCKET))
            .await
            .unwrap()
            .len(),
        2500,
        "the upstream keeps them"
    );

    // With the pull off, a sync notes the account's other devices for --status's suggestion.
    let mut fresh = engine(&rig, b.clone(), "b-other.sqlite");
    fresh.settings.pull.enabled = false;
    let report = fresh.run_cycle().await.expect("cycle");
    assert!(report.pull.is_none());
    assert_eq!(
        fresh
            .store
            .meta(aw_sync_samay::pull::OTHER_DEVICES)
            .unwrap()
            .as_deref(),
        Some("1"),
        "B's first device"
    );
}

/// Copies in Python aw-server, whose ids it never says, are found by their start, data and
/// nearest duration: of two events alike but for their duration, a new version replaces the
/// right copy and a tombstone deletes the right one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twins_in_python_are_replaced_and_deleted_each_in_its_own_copy() {
    let rig = Rig::new().await;
    let (_db, b) = double().await;
    b.create_bucket(B_BUCKET, "afkstatus", "aw-watcher-afk", "host-b")
        .await
        .unwrap();
    // The newest events: what a push re-reads each cycle.
    let twin = |duration| ev(200, duration, json!({"status": "afk"}));
    let others: Vec<Event> = (1..6)
        .map(|i| ev(i * 20, 4.0, json!({"status": "not-afk", "n": i})))
        .collect();
    b.insert_events(B_BUCKET, &[twin(5.0), twin(9.0)])
        .await
        .unwrap();
    b.insert_events(B_BUCKET, &others).await.unwrap();
    let eb = engine(&rig, b.clone(), "b.sqlite");
    let ea = engine(&rig, rig.client(), "a.sqlite");
    cycle(&eb).await;
    let first = cycle(&ea).await;
    assert_eq!(first.inserted, 7, "{first:?}");
    let py = rig.client();
    assert_copy(&b, B_BUCKET, &py, B_COPY).await;

    let held = b.get_events(B_BUCKET, None, None, None).await.unwrap();
    let id_of = |d: f64| {
        held.iter()
            .find(|e| e.duration == d && e.data["status"] == "afk")
            .and_then(|e| e.id)
            .unwrap()
    };
    let (short, long) = (id_of(5.0), id_of(9.0));
    b.replace_event(B_BUCKET, short, &twin(7.0)).await.unwrap();
    cycle(&eb).await;
    let grown = cycle(&ea).await;
    assert_eq!((grown.replaced, grown.inserted), (1, 0), "{grown:?}");
    assert_copy(&b, B_BUCKET, &py, B_COPY).await;

    b.delete_event(B_BUCKET, long).await.unwrap();
    cycle(&eb).await;
    let gone = cycle(&ea).await;
    assert_eq!((gone.deleted, gone.inserted), (1, 0), "{gone:?}");
    assert_copy(&b, B_BUCKET, &py, B_COPY).await;
}
