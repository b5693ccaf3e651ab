use super::*;
use crate::auth::BoxFuture;
use crate::engine::queue::{queue, Item};
use crate::state::{Acked, BucketState, DestKey, Span};
use crate::upstream::contract::BatchResponse;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use crate::upstream::batch::Batch;

type Rule = Box<dyn Fn(&Batch, &str) -> Option<UpstreamError> + Send + Sync>;
type Delay = Box<dyn Fn(&Batch) -> Duration + Send + Sync>;

/// A scripted upstream: first plays `script`, then applies `rule` to every request.
#[derive(Default)]
struct FakeSink {
    script: Mutex<VecDeque<UpstreamError>>,
    rule: Option<Rule>,
    /// How long it works on a request before it stores and answers (paused time); none: no
    /// time at all.
    delay: Option<Delay>,
    /// (batch_id, event ids, token) of every request.
    seen: Mutex<Vec<(Uuid, Vec<i64>, String)>>,
    stored: Mutex<Vec<i64>>,
    /// Each event's version stored last (its `hash`), as an upstream that keeps what it
    /// stored last would hold it.
    last: Mutex<BTreeMap<i64, String>>,
    /// Requests being worked on now, and the most at once.
    on_wire: Mutex<(usize, usize)>,
    /// (event ids, when the request arrived, when it was answered) of every answered request.
    trips: Mutex<Vec<(Vec<i64>, tokio::time::Instant, tokio::time::Instant)>>,
}

impl BatchSink for FakeSink {
    fn send_batch<'a>(
        &'a self,
        token: &'a AccessToken,
        batch: &'a Batch,
    ) -> BoxFuture<'a, Result<BatchResponse, UpstreamError>> {
        Box::pin(async move {
            let ids: Vec<i64> = batch.events.iter().map(|e| e.event_id).collect();
            self.seen.lock().unwrap().push((
                batch.batch_id,
                ids.clone(),
                token.secret().to_string(),
            ));
            if let Some(e) = self.script.lock().unwrap().pop_front() {
                return Err(e);
            }
            let arrived = tokio::time::Instant::now();
            {
                let mut w = self.on_wire.lock().unwrap();
                w.0 += 1;
                w.1 = w.1.max(w.0);
            }
            if let Some(delay) = &self.delay {
                tokio::time::sleep(delay(batch)).await;
            }
            self.on_wire.lock().unwrap().0 -= 1;
            self.trips
                .lock()
                .unwrap()
                .push((ids.clone(), arrived, tokio::time::Instant::now()));
            if let Some(e) = self.rule.as_ref().and_then(|r| r(batch, token.secret())) {
                return Err(e);
            }
            let mut last = self.last.lock().unwrap();
            for e in &batch.events {
                last.insert(e.event_id, crate::state::hash_hex(&e.hash));
            }
            self.stored.lock().unwrap().extend(ids);
            Ok(BatchResponse {
                accepted: batch.events.len() as u64,
                duplicates: 0,
                deleted: batch.deletions.len() as u64,
            })
        })
    }
}

struct Tokens {
    refreshes: AtomicU32,
    can_refresh: bool,
}

impl TokenSource for Tokens {
    fn token(&self) -> BoxFuture<'_, Result<AccessToken, AuthError>> {
        Box::pin(async { Ok(AccessToken::new("t0")) })
    }
    fn refresh<'a>(&'a self, _r: &'a AccessToken) -> BoxFuture<'a, Result<AccessToken, AuthError>> {
        Box::pin(async move {
            let n = self.refreshes.fetch_add(1, Ordering::SeqCst) + 1;
            if self.can_refresh {
                Ok(AccessToken::new(format!("t{n}")))
            } else {
                Err(AuthError::Rejected("no".into()))
            }
        })
    }
    fn user_id(&self) -> Option<String> {
        None
    }
    fn describe(&self) -> String {
        "test".into()
    }
}

struct Rig {
    _dir: tempfile::TempDir,
    store: Arc<Store>,
    /// The test bucket's row.
    row: i64,
    sink: Arc<FakeSink>,
    tokens: Arc<Tokens>,
}

fn rig(sink: FakeSink, can_refresh: bool) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("s.sqlite")).unwrap());
    let bucket = crate::source::Bucket {
        id: "b".into(),
        bucket_type: "t".into(),
        client: "c".into(),
        hostname: "h".into(),
        created: None,
        data: Default::default(),
        metadata: None,
        last_updated: None,
    };
    let dest = store
        .destination(
            &DestKey {
                base_url: "https://up".into(),
                account: "a".into(),
                label: "a".into(),
            },
            true,
        )
        .unwrap()
        .unwrap();
    let st: BucketState = store.bucket_state(dest, &bucket, None).unwrap();
    assert_eq!(st.generation, 0);
    Rig {
        _dir: dir,
        row: st.row,
        store,
        sink: Arc::new(sink),
        tokens: Arc::new(Tokens {
            refreshes: AtomicU32::new(0),
            can_refresh,
        }),
    }
}

fn pending(id: i64, poison: bool) -> Pending {
    let mut data = serde_json::Map::new();
    if poison {
        data.insert("poison".into(), true.into());
    }
    Pending {
        acked: Acked {
            row: ROW,
            event_id: id,
            hash: [id as u8; 16],
            span: Span {
                start_ns: id * 1_000_000_000,
                duration_ns: 1,
            },
        },
        body: Body::Event(Outgoing {
            bucket_id: "b".into(),
            duration: 1.0,
            data: crate::source::object_to_raw(&data),
        }),
        follows_queued: false,
    }
}

/// Batches on the wire at once: the default's.
const IN_FLIGHT: usize = 3;

/// The test bucket's row in a fresh state (the first one registered).
const ROW: i64 = 1;

/// A position mark: the bucket is covered up to `top_ns`.
fn mv(top_ns: i64) -> Mark {
    Mark::Top {
        row: ROW,
        generation: 0,
        top_ns,
        top_limit: 1,
    }
}

async fn run(
    r: &Rig,
    batch_size: usize,
    max_retries: u32,
    items: Vec<Item>,
) -> Result<UploadStats, UploadError> {
    let up = Uploader {
        upstream: r.sink.clone(),
        tokens: r.tokens.clone(),
        store: Arc::clone(&r.store),
        inflight: Arc::new(InFlight::default()),
        buckets: Arc::new(BTreeMap::new()),
        device_id: Uuid::nil(),
        hostname: "h".into(),
        batch_size,
        max_retries,
        retry: RetryPolicy::default(),
        linger: Duration::from_millis(100),
        metrics: Default::default(),
        dry_run: false,
        clock: Arc::new(crate::clock::SystemClock),
        in_flight: IN_FLIGHT,
    };
    let (tx, rx) = queue(1000);
    // Stops when the uploader does (a test of its failure).
    let sending = async move {
        for i in items {
            let sent = match i {
                Item::Events(e) => tx.send_events(e).await,
                other => tx.send(other).await,
            };
            if sent.is_err() {
                break;
            }
        }
    };
    let (_, result) = tokio::join!(sending, up.run(rx, AccessToken::new("t0")));
    result
}

fn cursor(r: &Rig) -> Option<i64> {
    assert_eq!(r.row, ROW);
    let bucket = crate::source::Bucket {
        id: "b".into(),
        bucket_type: "t".into(),
        client: "c".into(),
        hostname: "h".into(),
        created: None,
        data: Default::default(),
        metadata: None,
        last_updated: None,
    };
    let dest = r
        .store
        .current_destination()
        .unwrap()
        .map(|(id, _)| id)
        .unwrap();
    r.store.bucket_state(dest, &bucket, None).unwrap().top_ns
}

fn events(ids: std::ops::Range<i64>) -> Vec<Item> {
    ids.map(|i| Item::Events(vec![pending(i, false)])).collect()
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_waited_exactly_and_the_idempotency_key_is_kept() {
    let sink = FakeSink::default();
    sink.script
        .lock()
        .unwrap()
        .push_back(UpstreamError::Retryable {
            status: 429,
            retry_after: Some(Duration::from_secs(7)),
        });
    let r = rig(sink, false);
    let t = tokio::time::Instant::now();
    let stats = run(&r, 10, 3, events(1..4)).await.unwrap();
    assert_eq!(t.elapsed(), Duration::from_secs(7));
    let seen = r.sink.seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].0, seen[1].0, "a retry reuses the batch id");
    assert_eq!((stats.delivered, stats.retries), (3, 1));
}

#[tokio::test(start_paused = true)]
async fn server_errors_back_off_within_the_ceilings() {
    let sink = FakeSink::default();
    for _ in 0..3 {
        sink.script
            .lock()
            .unwrap()
            .push_back(UpstreamError::Retryable {
                status: 503,
                retry_after: None,
            });
    }
    let r = rig(sink, false);
    let t = tokio::time::Instant::now();
    let stats = run(&r, 10, 3, events(1..2)).await.unwrap();
    // Full jitter: at most 1 + 2 + 4 seconds in all.
    assert!(t.elapsed() <= Duration::from_secs(7));
    assert_eq!((stats.requests, stats.retries, stats.delivered), (4, 3, 1));
}

#[tokio::test(start_paused = true)]
async fn after_max_retries_nothing_is_recorded_and_the_cursor_stays() {
    let sink = FakeSink {
        rule: Some(Box::new(|_, _| Some(UpstreamError::Network("down".into())))),
        ..Default::default()
    };
    let r = rig(sink, false);
    let mut items = events(1..3);
    items.push(Item::Mark(mv(500)));
    let err = run(&r, 10, 2, items).await.unwrap_err();
    assert!(matches!(
        err,
        UploadError::Upstream(UpstreamError::Network(_))
    ));
    assert_eq!(r.sink.seen.lock().unwrap().len(), 3);
    assert!(r.store.lookup(ROW, &[1, 2]).unwrap().is_empty());
    assert_eq!(cursor(&r), None);
}

#[tokio::test(start_paused = true)]
async fn a_cursor_move_is_committed_with_the_batch_before_it() {
    let r = rig(FakeSink::default(), false);
    let mut items = events(1..3);
    items.push(Item::Mark(mv(500)));
    items.extend(events(3..5));
    run(&r, 10, 0, items).await.unwrap();
    assert_eq!(cursor(&r), Some(500));
    assert_eq!(r.store.lookup(ROW, &[1, 2, 3, 4]).unwrap().len(), 4);
}

#[tokio::test(start_paused = true)]
async fn unauthorized_refreshes_once_then_gives_up() {
    // Accepts only a refreshed token.
    let sink = FakeSink {
        rule: Some(Box::new(|_, tok| {
            (tok == "t0").then_some(UpstreamError::Unauthorized)
        })),
        ..Default::default()
    };
    let r = rig(sink, true);
    let stats = run(&r, 10, 3, events(1..3)).await.unwrap();
    assert_eq!(stats.delivered, 2);
    assert_eq!(r.tokens.refreshes.load(Ordering::SeqCst), 1);

    let always = FakeSink {
        rule: Some(Box::new(|_, _| Some(UpstreamError::Unauthorized))),
        ..Default::default()
    };
    let r = rig(always, true);
    let err = run(&r, 10, 3, events(1..3)).await.unwrap_err();
    assert!(matches!(err, UploadError::Auth(AuthError::Rejected(_))));
    assert_eq!(
        r.tokens.refreshes.load(Ordering::SeqCst),
        1,
        "one refresh, no loop"
    );
}

#[tokio::test(start_paused = true)]
async fn too_large_splits_the_batch() {
    let sink = FakeSink {
        rule: Some(Box::new(|b, _| {
            (b.events.len() > 3).then_some(UpstreamError::TooLarge)
        })),
        ..Default::default()
    };
    let r = rig(sink, false);
    let stats = run(&r, 16, 3, events(0..16)).await.unwrap();
    assert_eq!(stats.delivered, 16);
    let mut stored = r.sink.stored.lock().unwrap().clone();
    stored.sort_unstable();
    assert_eq!(stored, (0..16).collect::<Vec<_>>());
}

fn poison_rule(with_indexes: bool) -> Rule {
    Box::new(move |b, _| {
        let bad: Vec<usize> = b
            .events
            .iter()
            .enumerate()
            .filter(|(_, e)| {
                e.to_up_event()
                    .data_map()
                    .is_ok_and(|d| d.contains_key("poison"))
            })
            .map(|(i, _)| i)
            .collect();
        (!bad.is_empty()).then(|| UpstreamError::Rejected {
            status: 422,
            message: "bad event".into(),
            rejected: with_indexes.then_some(bad),
        })
    })
}

fn with_poison(n: i64, bad: &[i64]) -> Vec<Item> {
    (0..n)
        .map(|i| Item::Events(vec![pending(i, bad.contains(&i))]))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn rejected_indexes_are_quarantined_and_the_rest_flows() {
    let r = rig(
        FakeSink {
            rule: Some(poison_rule(true)),
            ..Default::default()
        },
        false,
    );
    let mut items = with_poison(10, &[3, 7]);
    items.push(Item::Mark(mv(900)));
    let stats = run(&r, 10, 3, items).await.unwrap();
    assert_eq!(
        (stats.delivered, stats.quarantined, stats.requests),
        (8, 2, 2)
    );
    let st = &r.store.bucket_statuses().unwrap()[0];
    assert_eq!((st.delivered, st.quarantined), (8, 2));
    assert_eq!(
        cursor(&r),
        Some(900),
        "a poison event does not block the cursor"
    );
    let q = r.store.quarantine(10).unwrap();
    assert!(q.iter().all(|e| e.reason.contains("422")));
}

#[tokio::test(start_paused = true)]
async fn without_a_rejected_list_bisection_isolates_exactly_the_bad_events() {
    let r = rig(
        FakeSink {
            rule: Some(poison_rule(false)),
            ..Default::default()
        },
        false,
    );
    let stats = run(&r, 64, 3, with_poison(64, &[5, 40])).await.unwrap();
    assert_eq!((stats.delivered, stats.quarantined), (62, 2));
    let mut q: Vec<i64> = r
        .store
        .quarantine(10)
        .unwrap()
        .iter()
        .map(|e| e.event_id)
        .collect();
    q.sort_unstable();
    assert_eq!(q, vec![5, 40]);
    // Each bad event costs at most one request per halving (log2 64 = 6), plus the first.
    assert!(stats.requests <= 1 + 2 * 2 * 6, "{}", stats.requests);
}

#[tokio::test(start_paused = true)]
async fn a_partial_batch_is_sent_after_the_linger() {
    let r = rig(FakeSink::default(), false);
    let up = Uploader {
        upstream: r.sink.clone(),
        tokens: r.tokens.clone(),
        store: Arc::clone(&r.store),
        inflight: Arc::new(InFlight::default()),
        buckets: Arc::new(BTreeMap::new()),
        device_id: Uuid::nil(),
        hostname: "h".into(),
        batch_size: 100,
        max_retries: 0,
        retry: RetryPolicy::default(),
        linger: Duration::from_millis(100),
        metrics: Default::default(),
        dry_run: false,
        clock: Arc::new(crate::clock::SystemClock),
        in_flight: IN_FLIGHT,
    };
    let (tx, rx) = queue(10);
    let task = tokio::spawn(up.run(rx, AccessToken::new("t0")));
    tx.send_events(vec![pending(1, false)]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        r.sink.stored.lock().unwrap().clone(),
        vec![1],
        "sent before the channel closed"
    );
    drop(tx);
    task.await.unwrap().unwrap();
}

/// Version `v` of event `id`; `follows_queued` as the scan sets it when it claims a version
/// while another of the same event is on its way.
fn version(id: i64, v: u8, follows_queued: bool) -> Pending {
    let mut p = pending(id, false);
    p.acked.hash = [v; 16];
    p.follows_queued = follows_queued;
    p
}

/// A mark after `id`'s batch.
fn mark_after(id: i64) -> Item {
    Item::Mark(mv(id * 1_000_000_000))
}

/// `n` batches of ten events, each followed by the mark after it.
fn batches_with_marks(n: i64) -> Vec<Item> {
    let mut items = Vec::new();
    for b in 0..n {
        items.extend(events(b * 10..b * 10 + 10));
        items.push(mark_after(b * 10 + 9));
    }
    items
}

/// How many of `ids` the state records as acknowledged.
fn recorded(r: &Rig, ids: std::ops::Range<i64>) -> usize {
    r.store.lookup(ROW, &ids.collect::<Vec<_>>()).unwrap().len()
}

/// The ids the sink stored, in order.
fn answered(r: &Rig) -> Vec<i64> {
    let mut ids = r.sink.stored.lock().unwrap().clone();
    ids.sort_unstable();
    ids
}

/// Several batches travel at once, up to the limit, opened one answer at a time; each answer is
/// recorded in read order, so a slow batch holds back the recording (and the marks) of the
/// quick ones behind it.
#[tokio::test(start_paused = true)]
async fn batches_travel_together_up_to_the_limit_and_are_recorded_in_read_order() {
    let sink = FakeSink {
        // The second batch takes 5 s, every other one 1 s.
        delay: Some(Box::new(|b| {
            Duration::from_secs(if b.events[0].event_id == 10 { 5 } else { 1 })
        })),
        ..Default::default()
    };
    let r = rig(sink, false);
    let items = batches_with_marks(6);
    let watch = async {
        // The first batch went alone (answered at 1 s); the second and third left together,
        // and only the third is answered at 2.5 s: it waits to be recorded behind the second.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(answered(&r), (0..10).chain(20..30).collect::<Vec<_>>());
        assert_eq!(recorded(&r, 0..10), 10);
        assert_eq!(recorded(&r, 10..30), 0);
        assert_eq!(cursor(&r), Some(9_000_000_000));
    };
    let (stats, ()) = tokio::join!(run(&r, 10, 0, items), watch);
    let stats = stats.unwrap();
    assert_eq!(stats.delivered, 60);
    assert_eq!(
        r.sink.on_wire.lock().unwrap().1,
        IN_FLIGHT,
        "at most the limit at once"
    );
    assert_eq!(recorded(&r, 0..60), 60);
    assert_eq!(cursor(&r), Some(59_000_000_000));
}

/// An upstream in trouble gets the retries of one batch, not of every batch on the wire: a
/// cycle starts with one batch on the wire, and when several fail together one retries while
/// the others wait, and give up with it.
#[tokio::test(start_paused = true)]
async fn an_upstream_in_trouble_gets_one_batchs_retries() {
    let fails_from = |first: i64| -> FakeSink {
        FakeSink {
            delay: Some(Box::new(|_| Duration::from_secs(1))),
            rule: Some(Box::new(move |b, _| {
                (b.events[0].event_id >= first).then(|| UpstreamError::Network("down".into()))
            })),
            ..Default::default()
        }
    };
    let requests_from = |r: &Rig, first: i64| {
        r.sink
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, ids, _)| ids[0] >= first)
            .count()
    };
    // Down from the start: one try and two retries of the first batch, nothing else.
    let r = rig(fails_from(0), false);
    run(&r, 10, 2, events(0..90)).await.unwrap_err();
    assert_eq!(requests_from(&r, 0), 3);
    assert_eq!(r.sink.on_wire.lock().unwrap().1, 1);

    // Down from the fourth batch, when three are on the wire: their three tries, then the
    // two retries of one of them.
    let r = rig(fails_from(30), false);
    let err = run(&r, 10, 2, events(0..90)).await.unwrap_err();
    assert!(matches!(
        err,
        UploadError::Upstream(UpstreamError::Network(_))
    ));
    assert_eq!(r.sink.on_wire.lock().unwrap().1, IN_FLIGHT);
    assert_eq!(requests_from(&r, 30), IN_FLIGHT + 2);
    assert_eq!(recorded(&r, 0..90), 30);
}

/// A version replacing one that is still on the wire waits for its answer: sent together, the
/// upstream could store the newer first and keep the older.
#[tokio::test(start_paused = true)]
async fn two_versions_of_one_event_never_travel_together() {
    let sink = FakeSink {
        // Version 1 of event 1 is slow to store; everything else quick.
        delay: Some(Box::new(|b| {
            let slow = b
                .events
                .iter()
                .any(|e| e.event_id == 1 && e.hash == [1; 16]);
            Duration::from_secs(if slow { 5 } else { 1 })
        })),
        ..Default::default()
    };
    let r = rig(sink, false);
    let items = vec![
        Item::Events(vec![version(1, 1, false), version(2, 1, false)]),
        Item::Events(vec![version(3, 1, false), version(4, 1, false)]),
        Item::Events(vec![version(1, 2, true), version(5, 1, false)]),
        Item::Events(vec![version(6, 1, false), version(7, 1, false)]),
    ];
    let stats = run(&r, 2, 0, items).await.unwrap();
    assert_eq!(stats.delivered, 8);
    assert_eq!(
        r.sink.last.lock().unwrap().get(&1),
        Some(&crate::state::hash_hex(&[2; 16])),
        "the upstream keeps the newer version"
    );
    let trips = r.sink.trips.lock().unwrap().clone();
    let carrying = |v: &[i64]| v.contains(&1);
    let of_1: Vec<_> = trips.iter().filter(|t| carrying(&t.0)).collect();
    assert_eq!(of_1.len(), 2);
    assert!(
        of_1[1].1 >= of_1[0].2,
        "the second version left after the first was answered: {trips:?}"
    );
    // The batch between them still travelled beside the first.
    assert_eq!(r.sink.on_wire.lock().unwrap().1, 2);
    assert_eq!(
        r.store.lookup(ROW, &[1]).unwrap()[&1].hash,
        [2; 16],
        "the state records the newer version"
    );
}

/// A batch that fails stops the upload: what was answered before it is recorded, nothing
/// after it is (not even what the upstream answered already: it is sent again next cycle and
/// counted as duplicates there), and no mark moves past it.
#[tokio::test(start_paused = true)]
async fn a_failed_batch_stops_the_upload_and_nothing_after_it_is_recorded() {
    let sink = FakeSink {
        delay: Some(Box::new(|b| {
            Duration::from_millis(match b.events[0].event_id {
                0 => 2000,
                10 => 1000,
                _ => 500,
            })
        })),
        rule: Some(Box::new(|b, _| {
            (b.events[0].event_id == 10).then(|| UpstreamError::Network("down".into()))
        })),
        ..Default::default()
    };
    let r = rig(sink, false);
    let items = batches_with_marks(3);
    let err = run(&r, 10, 0, items).await.unwrap_err();
    assert!(matches!(
        err,
        UploadError::Upstream(UpstreamError::Network(_))
    ));
    assert_eq!(answered(&r), (0..10).chain(20..30).collect::<Vec<_>>());
    assert_eq!(recorded(&r, 0..30), 10);
    assert_eq!(recorded(&r, 10..30), 0);
    assert_eq!(cursor(&r), Some(9_000_000_000));
}
