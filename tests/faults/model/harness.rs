//! Plays ops against the real engine, the aw-server double and the dev upstream, and checks
//! the model after every cycle.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aw_sync_samay::auth::{AccessToken, BoxFuture, StaticToken};
use aw_sync_samay::engine::{CycleError, CycleReport, Engine, Settings};
use aw_sync_samay::retry::RetryPolicy;
use aw_sync_samay::state::{event_hash, hash_hex, Store};
use aw_sync_samay::upstream::contract::BatchResponse;
use aw_sync_samay::upstream::{BatchSink, UpstreamClient, UpstreamError};
use chrono::SubsecRound;
use chrono::{DateTime, TimeDelta, Utc};
use samay_aw_double::Event;
use samay_aw_double::{AwDouble, AwDoubleConfig, HeartbeatOutcome};
use samay_server::{DevServer, FaultSettings};
use samay_testkit::devserver::{start_dev_server, TEST_TOKEN};
use samay_testkit::source_event;
use tokio::sync::Notify;

use super::expected::*;
use super::ops::*;

/// The upstream as the engine sees it, able to "kill the process" at a chosen batch: the sink
/// signals the crash and never answers, and the harness drops the cycle.
pub(super) struct CrashSink {
    pub(super) inner: UpstreamClient,
    pub(super) calls: AtomicU32,
    /// (batch number, after the upstream stored it, whom to tell)
    pub(super) plan: Mutex<Option<(u32, bool, Arc<Notify>)>>,
}

impl BatchSink for CrashSink {
    fn send_batch<'a>(
        &'a self,
        token: &'a AccessToken,
        batch: &'a aw_sync_samay::upstream::batch::Batch,
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

pub(super) fn settings() -> Settings {
    Settings {
        page_size: 3,
        batch_size: 4,
        // Two batches on the wire and the next one filling leave the queue 4 events.
        queue_size: 16,
        upload_concurrency: 2,
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

pub(super) struct Harness {
    pub(super) aw: AwDouble,
    pub(super) dev: DevServer,
    pub(super) dir: tempfile::TempDir,
    pub(super) sink: Arc<CrashSink>,
    pub(super) engine: Option<Engine>,
    pub(super) model: Model,
    /// Cycles run, for messages.
    pub(super) cycles: usize,
    /// aw-server went away and came back since the last successful cycle. The engine's pooled
    /// keep-alive connections to the old process are then dead, and one that the client has
    /// not yet seen closed fails the next request ("unreachable"): that cycle may fail. Only a
    /// harness effect — here the next cycle follows the restart at once, where in use minutes
    /// pass and the pool drops idle connections after 90 s.
    pub(super) aw_bounced: bool,
}

pub(super) enum Ran {
    Done(Result<CycleReport, CycleError>),
    Crashed,
}

impl Harness {
    pub(super) async fn new() -> Harness {
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
    pub(super) fn engine(&mut self) -> &Engine {
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

    pub(super) fn now() -> DateTime<Utc> {
        Utc::now().trunc_subsecs(3)
    }

    pub(super) fn served(&self, bucket: &str, id: i64) -> Event {
        self.aw
            .events(bucket)
            .expect("bucket")
            .into_iter()
            .find(|e| e.id == Some(id))
            .expect("the event just written")
    }

    pub(super) async fn apply(&mut self, op: &Op) -> Result<(), String> {
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

    pub(super) fn healthy(&self) -> bool {
        self.aw.is_running() && self.dev.faults().settings() == FaultSettings::default()
    }

    /// Runs one cycle (crashing it at `crash`; a full verification with `verify`), then checks
    /// the upstream against the model.
    pub(super) async fn cycle(
        &mut self,
        crash: Option<CrashPoint>,
        verify: bool,
    ) -> Result<Ran, String> {
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
    pub(super) async fn finish(&mut self) -> Result<(), String> {
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

pub(super) async fn run(ops: Vec<Op>) -> Result<(), String> {
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
