//! Model-based property test of the read positions, counts and dedupe (issues 5 and 9).
//!
//! proptest generates sequences of what happens around a running sync — inserts, heartbeats that
//! extend the newest event, back-dated inserts inside the lookback and at random depths (up to
//! a month back, older than any lookback), deletions at any depth, aw-server restarts and
//! outages, a replaced aw-server database, upstream faults, process crashes mid-cycle, sync
//! cycles — and plays them against the real engine (in-process, with the aw-server double —
//! aw-server-rust's semantics: counts ignore ranges, so deep changes are found through sums of
//! durations — as its source and the real dev upstream). A small model follows what the
//! upstream must end up holding:
//!
//! * every event aw-server holds is a list of versions (a heartbeat that grows it adds one);
//!   after a successful cycle its latest version is **required** upstream — unless it lies
//!   deeper than `lookback` below the newest data and has no duration (a sum of durations
//!   cannot see it), or, between the same two cycles, the bucket had a deletion (which may
//!   leave aw-server's count and its bucket listing as they were) or a heartbeat grew an event
//!   the listing does not show (neither the newest nor ending last); those **may** be there
//!   until the verification;
//! * a deleted event **may** stay upstream until a full verification, and every event of a
//!   replaced database may stay with any version it had, under the generation its database
//!   was read in (`generation << 40 | id`).
//!
//! Checked after every cycle (completed, failed or crashed): everything upstream is a version
//! the model knows under a generation the engine registered for that database, and no key went
//! back to an older version. After every successful cycle and after the final one (upstream
//! healthy, aw-server up): every required version is upstream, exactly (hash, timestamp,
//! duration, data). Then a full verification (`--verify`) must leave the upstream holding
//! exactly aw-server's events — every latest version, no deleted one; one more cycle must send
//! nothing, and without crashes or lost answers the upstream must never have seen a
//! duplicate.
//!
//! `PROPTEST_CASES` overrides the number of cases (64 by default).

use samay_testkit::devserver;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aw_sync_samay::auth::{AccessToken, BoxFuture, StaticToken};
use aw_sync_samay::engine::{CycleError, CycleReport, Engine, Settings};
use aw_sync_samay::retry::RetryPolicy;
use aw_sync_samay::state::hash::duration_to_ns;
use aw_sync_samay::state::{event_hash, hash_hex, Store, GENERATION_SHIFT};
use aw_sync_samay::upstream::contract::{BatchRequest, BatchResponse};
use aw_sync_samay::upstream::{BatchSink, UpstreamClient, UpstreamError};
use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use proptest::prelude::*;
use samay_aw_double::Event;
use samay_aw_double::{AwDouble, AwDoubleConfig, HeartbeatOutcome};
use samay_server::{DevServer, FaultSettings, StoredEvent};
use samay_testkit::source_event;
use serde_json::{json, Map, Value};
use tokio::sync::Notify;

use devserver::{start_dev_server, TEST_TOKEN};

const BUCKETS: [&str; 2] = ["window", "afk"];
const LOOKBACK_S: i64 = 3600;
const PULSETIME: f64 = 60.0;
const DAY_S: i64 = 86_400;

/// One thing that happens to the system. Times are relative to the moment the op runs.
#[derive(Debug, Clone)]
enum Op {
    /// `count` events starting `ago_s` + their duration before now, all at one instant (`tie`)
    /// or a second apart.
    Insert {
        bucket: usize,
        ago_s: u32,
        dur_ms: u32,
        data: u8,
        count: u8,
        tie: bool,
    },
    /// A heartbeat `gap_s` after the end of the bucket's newest event (merges when the data is
    /// equal and the gap within the pulsetime, 60 s).
    Heartbeat {
        bucket: usize,
        data: u8,
        gap_s: i32,
        dur_s: u8,
    },
    /// An event inserted late: ending inside the lookback (30–55 min ago), or `beyond` it
    /// (65 min to 30 days ago).
    Backdated {
        bucket: usize,
        beyond: bool,
        permille: u16,
        dur_s: u16,
        data: u8,
    },
    /// Deletes the `which % len`-th newest event of the bucket.
    Delete {
        bucket: usize,
        which: u16,
    },
    RestartAw,
    AwDown,
    AwUp,
    /// A new aw-server database: every bucket recreated empty, ids from 1, new device id.
    ReplaceAwDatabase,
    /// The next `n` batch requests fail this way.
    UpstreamFault {
        fault: Fault,
        n: u8,
    },
    UpstreamUp,
    /// A cycle whose process dies at `at`; the next op runs a new engine on the same state file.
    Crash {
        at: CrashPoint,
    },
    Sync,
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    Fail500,
    Fail429,
    DropBeforeStore,
    /// Stored, then the connection closes: the engine cannot know the batch arrived.
    DropAfterStore,
    /// Stored, then a 200 that is not JSON.
    Garbage,
}

#[derive(Debug, Clone, Copy)]
enum CrashPoint {
    /// While the k-th batch (1-based) is about to be sent: it never arrives.
    BeforeBatch(u8),
    /// After the k-th batch was stored upstream, before the engine hears the answer.
    AfterBatch(u8),
    /// Once aw-server has answered k more requests (mid-scan, or wherever the cycle is then).
    AfterSourceRequests(u8),
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let bucket = 0..BUCKETS.len();
    let fault = prop_oneof![
        Just(Fault::Fail500),
        Just(Fault::Fail429),
        Just(Fault::DropBeforeStore),
        Just(Fault::DropAfterStore),
        Just(Fault::Garbage),
    ];
    let crash = prop_oneof![
        (1u8..6).prop_map(CrashPoint::BeforeBatch),
        (1u8..6).prop_map(CrashPoint::AfterBatch),
        (1u8..12).prop_map(CrashPoint::AfterSourceRequests),
    ];
    prop_oneof![
        12 => (bucket.clone(), 0u32..1800, 0u32..300_000, 0u8..3, 1u8..=5, any::<bool>())
            .prop_map(|(bucket, ago_s, dur_ms, data, count, tie)| Op::Insert {
                bucket, ago_s, dur_ms, data, count, tie
            }),
        16 => (bucket.clone(), 0u8..2, -20i32..90, 0u8..10)
            .prop_map(|(bucket, data, gap_s, dur_s)| Op::Heartbeat { bucket, data, gap_s, dur_s }),
        6 => (bucket.clone(), any::<bool>(), 0u16..1000, 0u16..600, 0u8..3)
            .prop_map(|(bucket, beyond, permille, dur_s, data)| Op::Backdated {
                bucket, beyond, permille, dur_s, data
            }),
        4 => (bucket, any::<u16>()).prop_map(|(bucket, which)| Op::Delete { bucket, which }),
        2 => Just(Op::RestartAw),
        2 => Just(Op::AwDown),
        2 => Just(Op::AwUp),
        1 => Just(Op::ReplaceAwDatabase),
        4 => (fault, 1u8..6).prop_map(|(fault, n)| Op::UpstreamFault { fault, n }),
        2 => Just(Op::UpstreamUp),
        6 => crash.prop_map(|at| Op::Crash { at }),
        14 => Just(Op::Sync),
    ]
}

fn data(i: u8) -> Map<String, Value> {
    let apps = ["editor", "browser", "terminal"];
    let app = apps[usize::from(i) % apps.len()];
    let Value::Object(m) = json!({"app": app, "title": format!("{app} window")}) else {
        unreachable!()
    };
    m
}

fn secs(s: i64) -> TimeDelta {
    TimeDelta::seconds(s)
}

/// One version of an event, as aw-server served it.
#[derive(Debug, Clone)]
struct Version {
    start_ns: i64,
    duration_ns: i64,
    data: Map<String, Value>,
    hash: String,
    /// Deeper than `lookback` below the newest data when it appeared: found through the
    /// count, not by the pass from the top.
    deep: bool,
    /// How many cycles had succeeded when it appeared.
    interval: u64,
}

impl Version {
    fn matches(&self, up: &StoredEvent) -> bool {
        let Ok(ts) = up.timestamp.parse::<DateTime<Utc>>() else {
            return false;
        };
        ts.timestamp_nanos_opt() == Some(self.start_ns)
            && duration_to_ns(up.duration) == Some(self.duration_ns)
            && up.data == self.data
            && up.hash == self.hash
    }
}

#[derive(Debug, Default)]
struct ModelEvent {
    versions: Vec<Version>,
    deleted: bool,
    /// Deleted after a batch may have been stored without the engine knowing (a crash, a lost
    /// answer): the upstream may hold a copy the state never learnt of, which no verification
    /// can find, so it may stay.
    deleted_unknowable: bool,
}

/// What the upstream must (and may) hold.
#[derive(Default)]
struct Model {
    /// Which aw-server database is current; bumped by [`Op::ReplaceAwDatabase`].
    epoch: usize,
    /// (epoch, bucket, aw-server id) → the event's versions.
    events: BTreeMap<(usize, String, i64), ModelEvent>,
    /// The database each (bucket, generation) the engine registered was read from. A
    /// generation is recorded right after the cycle that made it, while the epoch is the one
    /// it was made in.
    gen_epoch: HashMap<(String, u32), usize>,
    /// The newest start aw-server held when the last successful cycle ended (the engine's
    /// newest data is at most this), per bucket, in this epoch.
    top: HashMap<String, i64>,
    /// Successful cycles so far.
    ok_cycles: u64,
    /// (bucket, [`Model::ok_cycles`] at the time) of every deletion: a deletion and an insert
    /// between the same two cycles can leave the count and the bucket listing unchanged.
    deletions: std::collections::HashSet<(String, u64)>,
    /// (bucket, [`Model::ok_cycles`]) of every heartbeat that grew an event the bucket listing
    /// does not show: neither the newest event nor ending after every other.
    hidden: std::collections::HashSet<(String, u64)>,
    /// The highest version index seen upstream per (bucket, upstream id).
    seen: HashMap<(String, i64), usize>,
    /// A batch may have been stored without the engine knowing (crash, lost answer): the
    /// upstream may count duplicates.
    ambiguous: bool,
}

impl Model {
    /// Whether the sync promises this version after a successful cycle (see the module doc).
    fn required(&self, bucket: &str, v: &Version) -> bool {
        let key = (bucket.to_string(), v.interval);
        let clean = !self.deletions.contains(&key) && !self.hidden.contains(&key);
        clean && (!v.deep || v.duration_ns > 0)
    }

    /// Records the version aw-server now serves for `id`, unless it is the latest one already.
    fn observe(&mut self, bucket: &str, e: &Event) {
        let id = e.id.expect("served events have ids");
        let (hash, span) = event_hash(&source_event(e)).expect("representable");
        let deep = self
            .top
            .get(bucket)
            .is_some_and(|&t| span.start_ns < t - LOOKBACK_S * 1_000_000_000);
        let v = Version {
            start_ns: span.start_ns,
            duration_ns: span.duration_ns,
            data: e.data.clone(),
            hash: hash_hex(&hash),
            deep,
            interval: self.ok_cycles,
        };
        let entry = self
            .events
            .entry((self.epoch, bucket.to_string(), id))
            .or_default();
        assert!(
            !entry.deleted,
            "model: a deleted id came back: {bucket} {id}"
        );
        if entry.versions.last().map(|l| &l.hash) != Some(&v.hash) {
            entry.versions.push(v);
        }
    }

    fn current_gen(&self, bucket: &str) -> Option<u32> {
        self.gen_epoch
            .iter()
            .filter(|((b, _), e)| b == bucket && **e == self.epoch)
            .map(|((_, g), _)| *g)
            .max()
    }

    /// Everything upstream is a version the model knows, under a generation registered for its
    /// database, and no key went back to an older version. With `complete` (after a successful
    /// cycle), every required version is there too.
    /// With `strict` (after a full verification): every latest version, deep or not, and no
    /// deleted event of the current database.
    fn check(
        &mut self,
        upstream: &[StoredEvent],
        complete: bool,
        strict: bool,
    ) -> Result<(), String> {
        let mut held: HashMap<(String, i64), &StoredEvent> = HashMap::new();
        for up in upstream {
            let gen = u32::try_from(up.event_id >> GENERATION_SHIFT).unwrap_or(u32::MAX);
            let aw_id = up.event_id & ((1i64 << GENERATION_SHIFT) - 1);
            let Some(&epoch) = self.gen_epoch.get(&(up.bucket_id.clone(), gen)) else {
                return Err(format!(
                    "upstream holds {} event {} under generation {gen}, which the engine never registered",
                    up.bucket_id, up.event_id
                ));
            };
            let Some(ev) = self.events.get(&(epoch, up.bucket_id.clone(), aw_id)) else {
                return Err(format!(
                    "upstream holds {} event {} (epoch {epoch}, aw id {aw_id}), which aw-server never had: {up:?}",
                    up.bucket_id, up.event_id
                ));
            };
            let Some(idx) = ev.versions.iter().rposition(|v| v.matches(up)) else {
                return Err(format!(
                    "upstream holds a version of {} event {} that aw-server never served: {up:?}\nversions: {:#?}",
                    up.bucket_id, up.event_id, ev.versions
                ));
            };
            let key = (up.bucket_id.clone(), up.event_id);
            if let Some(&before) = self.seen.get(&key) {
                if idx < before {
                    return Err(format!(
                        "{} event {}: version {before} upstream was replaced by the older version {idx}",
                        up.bucket_id, up.event_id
                    ));
                }
            }
            self.seen.insert(key.clone(), idx);
            held.insert(key, up);
        }
        if !complete {
            return Ok(());
        }
        for ((epoch, bucket, id), ev) in &self.events {
            let Some(latest) = ev.versions.last() else {
                continue;
            };
            if *epoch != self.epoch || ev.deleted || !(strict || self.required(bucket, latest)) {
                continue;
            }
            let Some(gen) = self.current_gen(bucket) else {
                return Err(format!(
                    "{bucket}: the cycle succeeded but the engine registered no generation for the current database"
                ));
            };
            let up_id = (i64::from(gen) << GENERATION_SHIFT) | id;
            match held.get(&(bucket.clone(), up_id)) {
                None => {
                    return Err(format!(
                        "{bucket} event {id} (upstream id {up_id}) is missing upstream; latest version {latest:?}"
                    ))
                }
                Some(up) if !latest.matches(up) => {
                    return Err(format!(
                        "{bucket} event {id}: upstream holds {up:?}, not the latest version {latest:?}"
                    ))
                }
                Some(_) => {}
            }
        }
        if strict {
            for ((epoch, bucket, id), ev) in &self.events {
                let Some(gen) = self.current_gen(bucket) else {
                    continue;
                };
                let up_id = (i64::from(gen) << GENERATION_SHIFT) | id;
                if *epoch == self.epoch
                    && ev.deleted
                    && !ev.deleted_unknowable
                    && held.contains_key(&(bucket.clone(), up_id))
                {
                    return Err(format!(
                        "{bucket} event {id} was deleted in aw-server but is still upstream after a full verification"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The upstream as the engine sees it, able to "kill the process" at a chosen batch: the sink
/// signals the crash and never answers, and the harness drops the cycle.
struct CrashSink {
    inner: UpstreamClient,
    calls: AtomicU32,
    /// (batch number, after the upstream stored it, whom to tell)
    plan: Mutex<Option<(u32, bool, Arc<Notify>)>>,
}

impl BatchSink for CrashSink {
    fn send_batch<'a>(
        &'a self,
        token: &'a AccessToken,
        batch: &'a BatchRequest,
    ) -> BoxFuture<'a, Result<BatchResponse, UpstreamError>> {
        Box::pin(async move {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            let plan = self.plan.lock().unwrap().clone();
            if let Some((k, after, crashed)) = plan {
                if n == k {
                    if after {
                        let _ = self.inner.send_batch(token, batch).await;
                    }
                    crashed.notify_one();
                    return std::future::pending().await;
                }
            }
            self.inner.send_batch(token, batch).await
        })
    }
}

fn settings() -> Settings {
    Settings {
        page_size: 3,
        batch_size: 4,
        queue_size: 12,
        max_retries: 2,
        lookback: Duration::from_secs(LOOKBACK_S as u64),
        start_from: None,
        interval: Duration::from_secs(300),
        retry: RetryPolicy {
            base: Duration::from_millis(1),
            cap: Duration::from_millis(5),
            max_retry_after: Duration::from_millis(20),
        },
        linger: Duration::from_millis(1),
        privacy: Default::default(),
        dry_run: false,
        catchup_page: 4,
        verify_batch: 0,
        verify_interval: Duration::from_secs(3600),
        verify_all: false,
        pull: Default::default(),
    }
}

struct Harness {
    aw: AwDouble,
    dev: DevServer,
    dir: tempfile::TempDir,
    sink: Arc<CrashSink>,
    engine: Option<Engine>,
    model: Model,
    /// Cycles run, for messages.
    cycles: usize,
    /// aw-server went away and came back since the last successful cycle. The engine's pooled
    /// keep-alive connections to the old process are then dead, and one that the client has
    /// not yet seen closed fails the next request ("unreachable"): that cycle may fail. Only a
    /// harness effect — here the next cycle follows the restart at once, where in use minutes
    /// pass and the pool drops idle connections after 90 s.
    aw_bounced: bool,
}

enum Ran {
    Done(Result<CycleReport, CycleError>),
    Crashed,
}

impl Harness {
    async fn new() -> Harness {
        let aw = AwDouble::spawn(AwDoubleConfig::default())
            .await
            .expect("double starts");
        for b in BUCKETS {
            aw.create_bucket(b, "currentwindow", "model", "model-host")
                .expect("bucket");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let dev = start_dev_server(dir.path()).await;
        // A generous timeout: a slow answer on a loaded machine must not look like a lost one.
        let inner = UpstreamClient::new(&dev.base_url(), Duration::from_secs(60), true)
            .expect("upstream client");
        Harness {
            aw,
            dev,
            dir,
            sink: Arc::new(CrashSink {
                inner,
                calls: AtomicU32::new(0),
                plan: Mutex::new(None),
            }),
            engine: None,
            model: Model::default(),
            cycles: 0,
            aw_bounced: false,
        }
    }

    /// The engine of the running "process"; a new one (same state file) after a crash.
    fn engine(&mut self) -> &Engine {
        if self.engine.is_none() {
            let store = Store::open(&self.dir.path().join("state.sqlite")).expect("state opens");
            self.engine = Some(Engine {
                source: samay_testkit::double_client(&self.aw).expect("client"),
                upstream: self.sink.clone(),
                tokens: Arc::new(StaticToken::new(AccessToken::new(TEST_TOKEN), "test")),
                store: Arc::new(store),
                settings: settings(),
                hostname: "model-host".into(),
                metrics: Default::default(),
                destination: aw_sync_samay::state::DestKey::new("http://upstream.test", "test")
                    .into(),
                clock: std::sync::Arc::new(aw_sync_samay::clock::SystemClock),
            });
        }
        self.engine.as_ref().expect("just set")
    }

    fn now() -> DateTime<Utc> {
        Utc::now().trunc_subsecs(3)
    }

    fn served(&self, bucket: &str, id: i64) -> Event {
        self.aw
            .events(bucket)
            .expect("bucket")
            .into_iter()
            .find(|e| e.id == Some(id))
            .expect("the event just written")
    }

    async fn apply(&mut self, op: &Op) -> Result<(), String> {
        match *op {
            Op::Insert {
                bucket,
                ago_s,
                dur_ms,
                data: d,
                count,
                tie,
            } => {
                let b = BUCKETS[bucket];
                let dur = TimeDelta::milliseconds(i64::from(dur_ms));
                let start = Self::now() - secs(i64::from(ago_s)) - dur;
                let events: Vec<Event> = (0..i64::from(count))
                    .map(|i| {
                        let at = if tie { start } else { start + secs(i) };
                        Event::new(at, f64::from(dur_ms) / 1000.0, data(d))
                    })
                    .collect();
                let ids = self.aw.insert(b, &events).expect("insert");
                for id in ids {
                    let e = self.served(b, id);
                    self.model.observe(b, &e);
                }
            }
            Op::Heartbeat {
                bucket,
                data: d,
                gap_s,
                dur_s,
            } => {
                let b = BUCKETS[bucket];
                let now = Self::now();
                let newest = self.aw.events(b).expect("bucket").into_iter().next();
                let at = match newest {
                    Some(e) => {
                        e.timestamp
                            + TimeDelta::milliseconds((e.duration * 1000.0).round() as i64)
                            + secs(i64::from(gap_s))
                    }
                    None => now - secs(60),
                }
                .min(now);
                let hb = Event::new(at, f64::from(dur_s), data(d));
                let outcome = self.aw.heartbeat(b, &hb, PULSETIME).expect("heartbeat");
                if let HeartbeatOutcome::Merged(e) = &outcome {
                    // The listing shows the end of the newest event and the latest end.
                    let served = self.aw.events(b).expect("bucket");
                    let newest = served.first().and_then(|n| n.id) == e.id;
                    let ends_last = served
                        .iter()
                        .filter(|o| o.id != e.id)
                        .all(|o| source_event(o).end() < source_event(e).end());
                    if !newest && !ends_last {
                        let interval = self.model.ok_cycles;
                        self.model.hidden.insert((b.to_string(), interval));
                    }
                }
                let (HeartbeatOutcome::Merged(e) | HeartbeatOutcome::Inserted(e)) = outcome;
                self.model.observe(b, &e);
            }
            Op::Backdated {
                bucket,
                beyond,
                permille,
                dur_s,
                data: d,
            } => {
                let b = BUCKETS[bucket];
                let p = i64::from(permille);
                let end_ago = if beyond {
                    LOOKBACK_S + 300 + p * 30 * DAY_S / 1000
                } else {
                    1800 + p * 1500 / 1000
                };
                let at = Self::now() - secs(end_ago) - secs(i64::from(dur_s));
                let ids = self
                    .aw
                    .insert(b, &[Event::new(at, f64::from(dur_s), data(d))])
                    .expect("insert");
                for id in ids {
                    let e = self.served(b, id);
                    self.model.observe(b, &e);
                }
            }
            Op::Delete { bucket, which } => {
                let b = BUCKETS[bucket];
                let events = self.aw.events(b).expect("bucket");
                if !events.is_empty() {
                    let id = events[usize::from(which) % events.len()]
                        .id
                        .expect("served events have ids");
                    assert!(self.aw.delete_event(b, id).expect("delete"));
                    let key = (self.model.epoch, b.to_string(), id);
                    let ambiguous = self.model.ambiguous;
                    let ev = self.model.events.get_mut(&key).expect("model knows it");
                    ev.deleted = true;
                    ev.deleted_unknowable = ambiguous;
                    let interval = self.model.ok_cycles;
                    self.model.deletions.insert((b.to_string(), interval));
                }
            }
            Op::RestartAw => {
                self.aw.restart().await.expect("restart");
                self.aw_bounced = true;
            }
            Op::AwDown => {
                self.aw.stop().await;
                self.aw_bounced = true;
            }
            Op::AwUp => self.aw.start().await.expect("start"),
            Op::ReplaceAwDatabase => {
                self.aw.replace_database().await.expect("replace");
                self.aw_bounced = true;
                for b in BUCKETS {
                    self.aw
                        .create_bucket(b, "currentwindow", "model", "model-host")
                        .expect("bucket");
                }
                self.model.epoch += 1;
                self.model.top.clear();
            }
            Op::UpstreamFault { fault, n } => {
                let n = u32::from(n);
                if matches!(fault, Fault::DropAfterStore | Fault::Garbage) {
                    self.model.ambiguous = true;
                }
                self.dev.faults().update(|f| match fault {
                    Fault::Fail500 => f.fail_500 = n,
                    Fault::Fail429 => f.fail_429 = n,
                    Fault::DropBeforeStore => f.drop_before_store = n,
                    Fault::DropAfterStore => f.drop_after_store = n,
                    Fault::Garbage => f.garbage_answers = n,
                });
            }
            Op::UpstreamUp => self.dev.faults().clear(),
            Op::Crash { at } => {
                self.cycle(Some(at), false).await?;
            }
            Op::Sync => {
                self.cycle(None, false).await?;
            }
        }
        Ok(())
    }

    fn healthy(&self) -> bool {
        self.aw.is_running() && self.dev.faults().settings() == FaultSettings::default()
    }

    /// Runs one cycle (crashing it at `crash`; a full verification with `verify`), then checks
    /// the upstream against the model.
    async fn cycle(&mut self, crash: Option<CrashPoint>, verify: bool) -> Result<Ran, String> {
        self.cycles += 1;
        let healthy = self.healthy();
        let crashed = Arc::new(Notify::new());
        *self.sink.plan.lock().unwrap() = match crash {
            Some(CrashPoint::BeforeBatch(k)) => Some((u32::from(k), false, crashed.clone())),
            Some(CrashPoint::AfterBatch(k)) => Some((u32::from(k), true, crashed.clone())),
            _ => None,
        };
        self.sink.calls.store(0, Ordering::SeqCst);
        let requests_at_start = self.aw.requests();
        self.engine();
        if let Some(e) = self.engine.as_mut() {
            e.settings.verify_all = verify;
        }
        let ran = {
            let aw = &self.aw;
            let crash_now = async {
                match crash {
                    None => std::future::pending::<()>().await,
                    Some(CrashPoint::AfterSourceRequests(k)) => {
                        // Ends by itself: the cycle ends first if it makes fewer requests.
                        while aw.requests() < requests_at_start + u64::from(k) {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                    Some(_) => crashed.notified().await,
                }
            };
            let engine = self.engine.as_ref().expect("just made");
            tokio::select! {
                r = engine.run_cycle() => Ran::Done(r),
                _ = crash_now => Ran::Crashed,
            }
        };
        *self.sink.plan.lock().unwrap() = None;
        if matches!(ran, Ran::Crashed) {
            self.model.ambiguous = true;
            // The process is gone: what it had committed stays, nothing more may land. Work
            // already handed to SQLite (a commit on a blocking thread) finishes first, as a
            // commit under way when the process died either landed or did not.
            let engine = self.engine.take().expect("an engine ran");
            let store = Arc::downgrade(&engine.store);
            drop(engine);
            for _ in 0..10_000 {
                if store.strong_count() == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            assert_eq!(
                store.strong_count(),
                0,
                "the crashed engine's state is released"
            );
        }
        // The generations the engine registered, each for the database current now (or
        // earlier, when it was registered by an earlier cycle and so already recorded).
        let statuses = {
            let store = match &self.engine {
                Some(e) => e.store.clone(),
                None => Arc::new(
                    Store::open(&self.dir.path().join("state.sqlite")).expect("state opens"),
                ),
            };
            store.bucket_statuses().expect("statuses")
        };
        for s in statuses {
            self.model
                .gen_epoch
                .entry((s.bucket_id, s.generation))
                .or_insert(self.model.epoch);
        }
        let ok = matches!(ran, Ran::Done(Ok(_)));
        if ok {
            self.aw_bounced = false;
        }
        if let Ran::Done(Err(e)) = &ran {
            let stale_connection = self.aw_bounced && matches!(e, CycleError::SourceDown { .. });
            if healthy && crash.is_none() && !stale_connection {
                return Err(format!(
                    "cycle {} failed with aw-server up and the upstream healthy: {e}",
                    self.cycles
                ));
            }
        }
        let upstream = self.dev.stored_events(None, None).await.expect("upstream");
        self.model.check(&upstream, ok, ok && verify).map_err(|e| {
            format!(
                "after cycle {} ({crash:?}, verify {verify}): {e}",
                self.cycles
            )
        })?;
        if ok {
            self.model.ok_cycles += 1;
        }
        // The newest data a cycle (even one that crashed) can have covered: at most the
        // newest start aw-server has held (the engine's position never moves back).
        for b in BUCKETS {
            let newest = self
                .aw
                .events(b)
                .expect("bucket")
                .first()
                .and_then(|e| e.timestamp.timestamp_nanos_opt());
            if let Some(t) = newest {
                let top = self.model.top.entry(b.to_string()).or_insert(t);
                *top = (*top).max(t);
            }
        }
        Ok(ran)
    }

    /// The end of the sequence: aw-server up, upstream healthy, one cycle must deliver
    /// everything required, a full verification everything aw-server holds (and the deletion
    /// of everything it no longer holds), and another cycle must send nothing.
    async fn finish(&mut self) -> Result<(), String> {
        self.aw.start().await.expect("start");
        self.dev.faults().clear();
        // Only a stale connection (see `aw_bounced`) may fail a cycle now.
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.cycle(None, false).await? {
                Ran::Done(Ok(_)) => break,
                Ran::Done(Err(e)) if attempts == 3 => {
                    return Err(format!("final cycle failed {attempts} times: {e}"))
                }
                Ran::Done(Err(_)) => {}
                Ran::Crashed => unreachable!("no crash planned"),
            }
        }
        // The model follows aw-server (a check of the model itself).
        for b in BUCKETS {
            let mut served: Vec<(i64, String)> = self
                .aw
                .events(b)
                .expect("bucket")
                .iter()
                .map(|e| {
                    (
                        e.id.unwrap(),
                        hash_hex(&event_hash(&source_event(e)).unwrap().0),
                    )
                })
                .collect();
            served.sort();
            let modelled: Vec<(i64, String)> = self
                .model
                .events
                .iter()
                .filter(|((ep, bk, _), ev)| *ep == self.model.epoch && bk == b && !ev.deleted)
                .map(|((_, _, id), ev)| (*id, ev.versions.last().unwrap().hash.clone()))
                .collect();
            assert_eq!(served, modelled, "model bug: the model lost track of {b}");
        }
        match self.cycle(None, true).await? {
            Ran::Done(Ok(_)) => {}
            Ran::Done(Err(e)) => return Err(format!("the verification cycle failed: {e}")),
            Ran::Crashed => unreachable!("no crash planned"),
        }
        let before = self.dev.faults().counters().requests_received;
        match self.cycle(None, false).await? {
            Ran::Done(Ok(r)) => {
                if r.queued() != 0 || r.upload.delivered != 0 {
                    return Err(format!(
                        "a cycle after a complete one queued {} and delivered {}: dedupe failed ({:?})",
                        r.queued(),
                        r.upload.delivered,
                        r.buckets
                    ));
                }
            }
            Ran::Done(Err(e)) => return Err(format!("extra cycle failed: {e}")),
            Ran::Crashed => unreachable!("no crash planned"),
        }
        if self.dev.faults().counters().requests_received != before {
            return Err("the extra cycle sent a batch".into());
        }
        if !self.model.ambiguous {
            let inspect = self.dev.inspect().await.expect("inspect");
            let dups: u64 = inspect
                .devices
                .iter()
                .flat_map(|d| &d.buckets)
                .map(|b| b.duplicates)
                .sum();
            if dups != 0 {
                return Err(format!(
                    "the upstream absorbed {dups} duplicates without any crash or lost answer: an acknowledged version was sent again"
                ));
            }
        }
        Ok(())
    }
}

async fn run(ops: Vec<Op>) -> Result<(), String> {
    // RUST_LOG=aw_sync_samay=debug shows what the engine did in a failing case.
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    let mut h = Harness::new().await;
    for (i, op) in ops.iter().enumerate() {
        h.apply(op)
            .await
            .map_err(|e| format!("op {i} {op:?}: {e}"))?;
    }
    let result = h.finish().await;
    // MODEL_STATS=1 shows what each case exercised.
    if std::env::var_os("MODEL_STATS").is_some() {
        let required = h
            .model
            .events
            .iter()
            .filter(|((_, b, _), e)| e.versions.last().is_some_and(|v| h.model.required(b, v)))
            .count();
        let up = h.dev.stored_events(None, None).await.expect("upstream");
        let versions: u64 = up.iter().map(|e| e.versions).sum();
        eprintln!(
            "ops={} cycles={} events={} required={required} upstream={} versions={versions} databases={} ambiguous={}",
            ops.len(),
            h.cycles,
            h.model.events.len(),
            up.len(),
            h.model.epoch + 1,
            h.model.ambiguous
        );
    }
    result
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        max_shrink_iters: 256,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_upstream_ends_up_holding_what_the_model_allows(
        ops in prop::collection::vec(op_strategy(), 5..40)
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let result = rt.block_on(run(ops));
        rt.shutdown_timeout(Duration::from_secs(5));
        prop_assert!(result.is_ok(), "{}", result.unwrap_err());
    }
}
