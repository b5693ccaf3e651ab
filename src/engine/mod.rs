//! The sync engine: one cycle reads every bucket from aw-server ([`scan`]), passes what changed
//! through a bounded queue to the uploader ([`upload`]), which delivers it and records the
//! acknowledgements; [`run_daemon`] repeats cycles on a schedule ([`backoff`]) until told to stop.
//!
//! The queue between the two is the "offline queue": it holds at most `offline_queue_size`
//! events. When the upstream is slow or away it fills, the reader waits, and aw-server keeps the
//! data — nothing is ever dropped, and memory does not grow with the backlog.

pub mod backoff;
mod metrics;
pub mod scan;
pub mod status_bucket;
pub mod upload;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, Semaphore};

use crate::auth::{AuthError, TokenSource};
use crate::config::SyncConfig;
use crate::privacy::{self, Privacy};
use crate::source::{AwClient, SourceError};
use crate::state::{Acked, CursorMove, EventHash, StateError, Store};
use crate::upstream::contract::{BucketMeta, UpEvent};
use crate::upstream::{BatchSink, UpstreamError};
use backoff::RetryPolicy;
pub use metrics::{BucketCount, BucketCounters, Metrics};
pub use scan::{ScanError, ScanStats};
pub use upload::{UploadError, UploadStats};

/// Prefix of aw-sync-samay's own buckets in aw-server; never uploaded.
pub const OWN_BUCKET_PREFIX: &str = "aw-sync-samay_";

/// An event read and found new or changed, on its way to the upstream.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub acked: Acked,
    pub event: UpEvent,
}

/// What flows from the reader to the uploader, in read order.
#[derive(Debug)]
pub(crate) enum Item {
    /// New or changed events of one page, in read order.
    Events(Vec<Pending>),
    /// Everything of the bucket before this point has been queued.
    Window(CursorMove),
}

/// The queue between reader and uploader (the "offline queue"), bounded in events.
///
/// Events travel a page at a time, not one by one: with one message per event, a full queue
/// woke the reader for every event the uploader took, and those thread hand-offs cost more than
/// reading the event. The bound stays exact in events through a semaphore whose permits the
/// reader takes before sending and the uploader gives back when it takes the events.
pub(crate) fn queue(capacity: usize) -> (QueueTx, QueueRx) {
    let capacity = capacity.clamp(1, Semaphore::MAX_PERMITS);
    let room = Arc::new(Semaphore::new(capacity));
    // Pages and window marks; the semaphore is the real bound.
    let (tx, rx) = mpsc::channel(64);
    (
        QueueTx {
            tx,
            room: Arc::clone(&room),
            capacity,
        },
        QueueRx { rx, room },
    )
}

/// The uploader stopped (its own error says why).
#[derive(Debug)]
pub(crate) struct QueueClosed;

pub(crate) struct QueueTx {
    tx: mpsc::Sender<Item>,
    room: Arc<Semaphore>,
    capacity: usize,
}

impl QueueTx {
    /// Waits for room, then queues `events` (in pieces of at most the queue's capacity).
    pub async fn send_events(&self, mut events: Vec<Pending>) -> Result<(), QueueClosed> {
        while !events.is_empty() {
            let rest = events.split_off(events.len().min(self.capacity));
            let n = u32::try_from(events.len()).map_err(|_| QueueClosed)?;
            self.room
                .acquire_many(n)
                .await
                .map_err(|_| QueueClosed)?
                .forget();
            self.tx
                .send(Item::Events(events))
                .await
                .map_err(|_| QueueClosed)?;
            events = rest;
        }
        Ok(())
    }

    pub async fn send_window(&self, m: CursorMove) -> Result<(), QueueClosed> {
        self.tx.send(Item::Window(m)).await.map_err(|_| QueueClosed)
    }
}

pub(crate) struct QueueRx {
    rx: mpsc::Receiver<Item>,
    room: Arc<Semaphore>,
}

impl QueueRx {
    /// The next item; taking events makes room for as many.
    pub async fn recv(&mut self) -> Option<Item> {
        let item = self.rx.recv().await;
        if let Some(Item::Events(events)) = &item {
            self.room.add_permits(events.len());
        }
        item
    }
}

impl Drop for QueueRx {
    /// A reader waiting for room learns that the uploader is gone instead of waiting forever.
    fn drop(&mut self) {
        self.room.close();
    }
}

/// Events queued but not yet acknowledged, so a copy read twice in one cycle (at a window or
/// page edge) is not queued twice. Bounded by the queue size. Keyed per bucket, so the hot path
/// (a claim per event read, a release per event recorded) allocates nothing.
#[derive(Default)]
pub(crate) struct InFlight {
    map: Mutex<HashMap<String, HashMap<i64, EventHash>>>,
}

impl InFlight {
    /// True when this version was not queued yet (and now is).
    fn claim(&self, bucket_id: &str, event_id: i64, hash: EventHash) -> bool {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let ids = match map.get_mut(bucket_id) {
            Some(ids) => ids,
            None => map.entry(bucket_id.to_string()).or_default(),
        };
        match ids.insert(event_id, hash) {
            Some(old) => old != hash,
            None => true,
        }
    }

    fn release(&self, bucket_id: &str, event_id: i64, hash: EventHash) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        Self::release_locked(&mut map, bucket_id, event_id, hash);
    }

    /// Releases a recorded batch under one lock.
    fn release_all<'a>(&self, acked: impl Iterator<Item = &'a Acked>) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        for a in acked {
            Self::release_locked(&mut map, &a.bucket_id, a.event_id, a.hash);
        }
    }

    fn release_locked(
        map: &mut HashMap<String, HashMap<i64, EventHash>>,
        bucket_id: &str,
        event_id: i64,
        hash: EventHash,
    ) {
        if let Some(ids) = map.get_mut(bucket_id) {
            if ids.get(&event_id) == Some(&hash) {
                ids.remove(&event_id);
            }
        }
    }
}

/// The engine's knobs, from `[sync]`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub page_size: usize,
    pub batch_size: usize,
    pub queue_size: usize,
    pub max_retries: u32,
    pub lookback: Duration,
    pub start_from: Option<DateTime<Utc>>,
    pub interval: Duration,
    pub retry: RetryPolicy,
    pub linger: Duration,
    /// Which buckets are synced and what is redacted (`include_buckets`, `exclude_buckets`,
    /// `redact`).
    pub privacy: Privacy,
    /// Read, filter and redact as usual, hand the batches to the sink, but record nothing in
    /// the state: no acknowledgements, no cursor moves, no new buckets or fingerprints
    /// (`--once --dry-run`; the sink is then a [`crate::upstream::dry_run::DryRunSink`]).
    pub dry_run: bool,
}

impl Settings {
    /// From a config that [`crate::config::load`] validated; an invalid `start_from` or
    /// pattern (only possible when the config was not validated) is logged and left out.
    pub fn from_config(sync: &SyncConfig) -> Settings {
        let start_from = sync.start_from_instant().unwrap_or_else(|e| {
            tracing::error!("{e}; ignored");
            None
        });
        let privacy = Privacy::from_config(sync).unwrap_or_else(|e| {
            tracing::error!("{e}; ignored");
            Privacy::default()
        });
        Settings {
            page_size: sync.page_size.max(1),
            batch_size: sync.batch_size.max(1),
            queue_size: sync.offline_queue_size.max(sync.batch_size).max(1),
            max_retries: sync.max_retries,
            lookback: Duration::from_secs(sync.lookback),
            start_from,
            interval: Duration::from_secs(sync.sync_interval.max(1)),
            retry: RetryPolicy::default(),
            linger: Duration::from_millis(100),
            privacy,
            dry_run: false,
        }
    }
}

/// Why a cycle ended early. The daemon decides from the variant: every one of them means "try
/// again later", and none of them stops the process.
#[derive(Debug, thiserror::Error)]
pub enum CycleError {
    #[error("{source}: start ActivityWatch (aw-qt or aw-server), or pass --port or --testing if it listens elsewhere")]
    SourceDown { url: String, source: SourceError },
    /// Another program answers on aw-server's port (its message says what to do).
    #[error(transparent)]
    NotAwServer(SourceError),
    #[error("reading aw-server failed: {0} (see aw-server's log; nothing is lost, the next sync resumes where this one stopped)")]
    Source(SourceError),
    #[error(transparent)]
    Auth(AuthError),
    #[error("the upstream did not take the events: {0} (check the network and sync.base_url; nothing is lost, the next sync resumes where this one stopped)")]
    Upstream(UpstreamError),
    #[error(transparent)]
    State(StateError),
    #[error(transparent)]
    Scan(ScanError),
}

impl CycleError {
    /// Waiting for the user (a login), not for a fault to pass.
    pub fn needs_login(&self) -> bool {
        matches!(self, CycleError::Auth(_))
    }

    /// The exit code of a `--once` that ended with this ([`crate::exit`]): the user must act
    /// (log in, fix the port or `sync.base_url`) or it is a fault that passes by itself.
    pub fn exit_code(&self) -> u8 {
        match self {
            CycleError::Auth(_) | CycleError::NotAwServer(_) => crate::exit::USER_MUST_ACT,
            // A 3xx/4xx the upstream will answer again: the wrong URL or API, not an outage.
            CycleError::Upstream(UpstreamError::Fatal { .. } | UpstreamError::Config(_)) => {
                crate::exit::USER_MUST_ACT
            }
            _ => crate::exit::UNREACHABLE,
        }
    }
}

impl From<UploadError> for CycleError {
    fn from(e: UploadError) -> Self {
        match e {
            UploadError::Auth(e) => CycleError::Auth(e),
            UploadError::Upstream(e) => CycleError::Upstream(e),
            UploadError::State(e) => CycleError::State(e),
        }
    }
}

/// What one cycle did.
#[derive(Debug, Clone, Default)]
pub struct CycleReport {
    pub buckets: BTreeMap<String, ScanStats>,
    /// Buckets left out by `include_buckets` / `exclude_buckets`.
    pub excluded: Vec<String>,
    /// Buckets read again from the start because their filter settings changed.
    pub rescanned: Vec<String>,
    pub upload: UploadStats,
    pub elapsed: Duration,
}

impl CycleReport {
    pub fn read(&self) -> u64 {
        self.buckets.values().map(|s| s.read).sum()
    }
    pub fn queued(&self) -> u64 {
        self.buckets.values().map(|s| s.queued).sum()
    }
}

/// Everything a cycle needs, shared by the daemon loop, `--once` and the tests.
pub struct Engine {
    pub source: AwClient,
    pub upstream: Arc<dyn BatchSink>,
    pub tokens: Arc<dyn TokenSource>,
    pub store: Arc<Store>,
    pub settings: Settings,
    pub hostname: String,
    pub metrics: Arc<Metrics>,
}

impl Engine {
    /// An engine for `--once --dry-run`: its cycle reads, filters and redacts as a real one, but
    /// hands the batches to `sink` and records nothing in `store`. Needs no upstream and no
    /// token (the sink never looks at the placeholder one).
    pub fn dry_run(
        source: AwClient,
        store: Arc<Store>,
        mut settings: Settings,
        hostname: String,
        sink: Arc<crate::upstream::dry_run::DryRunSink>,
    ) -> Engine {
        settings.dry_run = true;
        Engine {
            source,
            upstream: sink,
            tokens: Arc::new(crate::auth::StaticToken::new(
                crate::auth::AccessToken::new("dry-run"),
                "dry run (nothing is sent)",
            )),
            store,
            settings,
            hostname,
            metrics: Default::default(),
        }
    }

    /// One complete sync: every bucket read up to now, everything new delivered, cursors moved.
    pub async fn run_cycle(&self) -> Result<CycleReport, CycleError> {
        let started = Instant::now();
        let result = self.cycle().await;
        if !self.settings.dry_run {
            let record = result.as_ref().err().map(|e| e.to_string());
            let store = Arc::clone(&self.store);
            // Best effort: a failure to record the outcome must not hide the outcome itself.
            let _ =
                tokio::task::spawn_blocking(move || store.record_cycle(record.as_deref())).await;
        }
        result.map(|mut r| {
            r.elapsed = started.elapsed();
            r
        })
    }

    async fn cycle(&self) -> Result<CycleReport, CycleError> {
        let down = |source: SourceError| match source {
            SourceError::Unreachable { .. } => CycleError::SourceDown {
                url: self.source.base_url().to_string(),
                source,
            },
            SourceError::NotAwServer { .. } => CycleError::NotAwServer(source),
            source => CycleError::Source(source),
        };
        let info = self.source.info().await.map_err(down)?;
        let buckets = self.source.get_buckets().await.map_err(down)?;
        let token = self.tokens.token().await.map_err(CycleError::Auth)?;
        let now = Utc::now();

        let metas: BTreeMap<String, BucketMeta> = buckets
            .values()
            .map(|b| {
                (
                    b.id.clone(),
                    BucketMeta {
                        bucket_type: b.bucket_type.clone(),
                        client: b.client.clone(),
                        hostname: b.hostname.clone(),
                        created: b
                            .created
                            .map(|c| c.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
                    },
                )
            })
            .collect();

        let inflight = Arc::new(InFlight::default());
        // The uploader's batch holds up to `batch_size` of the queue's events.
        let (tx, rx) = queue(
            self.settings
                .queue_size
                .saturating_sub(self.settings.batch_size)
                .max(1),
        );
        let uploader = upload::Uploader {
            upstream: Arc::clone(&self.upstream),
            tokens: Arc::clone(&self.tokens),
            store: Arc::clone(&self.store),
            inflight: Arc::clone(&inflight),
            buckets: Arc::new(metas),
            device_id: self.store.device_id(),
            hostname: self.hostname.clone(),
            batch_size: self.settings.batch_size,
            max_retries: self.settings.max_retries,
            retry: self.settings.retry,
            linger: self.settings.linger,
            metrics: Arc::clone(&self.metrics),
            dry_run: self.settings.dry_run,
        };
        let upload_task = AbortOnDrop(tokio::spawn(uploader.run(rx, token)));

        let mut report = CycleReport::default();
        let mut scan_error = None;
        let start_from_ns = self
            .settings
            .start_from
            .and_then(|s| s.timestamp_nanos_opt());
        {
            let scanner = scan::Scanner {
                source: &self.source,
                store: &self.store,
                inflight: &inflight,
                metrics: &self.metrics,
                tx: &tx,
                page_size: self.settings.page_size,
                lookback_ns: i64::try_from(self.settings.lookback.as_nanos()).unwrap_or(i64::MAX),
                start_from_ns,
                redaction_key: self.store.redaction_key(),
            };
            let unfiltered = privacy::unfiltered_fingerprint();
            for bucket in buckets.values() {
                if bucket.id.starts_with(OWN_BUCKET_PREFIX) {
                    continue;
                }
                // Never registered in the state: re-including it later finds no cursor and
                // reads it whole.
                if !self.settings.privacy.includes(&bucket.id) {
                    report.excluded.push(bucket.id.clone());
                    continue;
                }
                let redaction = self
                    .settings
                    .privacy
                    .redaction(&bucket.id, &bucket.bucket_type);
                let fingerprint = privacy::fingerprint(&redaction, start_from_ns);
                let (mut state, reset) = {
                    let store = Arc::clone(&self.store);
                    let bucket = bucket.clone();
                    let device = info.device_id.clone();
                    let write = !self.settings.dry_run;
                    let unfiltered = unfiltered.clone();
                    tokio::task::spawn_blocking(move || {
                        let state = if write {
                            store.bucket_state(&bucket, device.as_deref())?
                        } else {
                            store.peek_bucket_state(&bucket, device.as_deref())?
                        };
                        let reset = store.filter_fingerprint(
                            &bucket.id,
                            &fingerprint,
                            &unfiltered,
                            write,
                        )?;
                        Ok::<_, StateError>((state, reset))
                    })
                    .await
                    .map_err(|e| CycleError::State(StateError::Task(e.to_string())))?
                    .map_err(CycleError::State)?
                };
                if reset && state.cursor_ns.is_some() {
                    tracing::info!(bucket = %bucket.id, "the privacy filters of this bucket changed: reading it again from the start (what the upstream holds unchanged is not re-sent)");
                    report.rescanned.push(bucket.id.clone());
                    state.cursor_ns = None;
                }
                if state.replaced {
                    tracing::warn!(bucket = %bucket.id, generation = state.generation,
                        "bucket was replaced in aw-server (new database or recreated bucket): its ids start over, so its events are uploaded under a new generation and nothing uploaded before is overwritten");
                }
                match scanner.scan(bucket, &state, &redaction, now).await {
                    Ok(stats) => {
                        report.buckets.insert(bucket.id.clone(), stats);
                    }
                    Err(ScanError::Source(SourceError::BucketNotFound(_))) => {
                        tracing::warn!(bucket = %bucket.id, "bucket was deleted during the sync; skipped");
                    }
                    Err(ScanError::UploaderGone) => break,
                    // aw-server gone, or our own state failing: no other bucket can do better.
                    Err(e @ ScanError::Source(SourceError::Unreachable { .. }))
                    | Err(e @ ScanError::State(_)) => {
                        scan_error = Some(e);
                        break;
                    }
                    // Something wrong with this bucket only (a 500 on it, an unparsable event):
                    // the others still sync, and the cycle reports the failure.
                    Err(e) => {
                        tracing::error!(bucket = %bucket.id, "reading the bucket failed: {e}");
                        scan_error.get_or_insert(e);
                    }
                }
            }
        }
        drop(tx);
        let upload = upload_task.join().await;
        match (upload, scan_error) {
            (Err(e), _) => Err(e),
            (Ok(_), Some(ScanError::Source(e))) => Err(down(e)),
            (Ok(_), Some(ScanError::State(e))) => Err(CycleError::State(e)),
            (Ok(_), Some(e)) => Err(CycleError::Scan(e)),
            (Ok(stats), None) => {
                report.upload = stats;
                Ok(report)
            }
        }
    }
}

/// Aborts the uploader when a cycle is cancelled (shutdown), so nothing outlives it.
struct AbortOnDrop(tokio::task::JoinHandle<Result<UploadStats, UploadError>>);

impl AbortOnDrop {
    async fn join(mut self) -> Result<UploadStats, CycleError> {
        let handle = &mut self.0;
        match handle.await {
            Ok(r) => r.map_err(CycleError::from),
            Err(e) => Err(CycleError::State(StateError::Task(e.to_string()))),
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How a cycle ended, as the daemon loop sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Synced,
    /// Waiting for a login: poll again soon, without counting a failure.
    LoginRequired,
    Failed,
}

/// Runs `cycle` until `shutdown` resolves: the next cycle starts `interval` after the previous
/// one *ended* (so a slow cycle, or a laptop waking from sleep, never causes a burst of
/// catch-up cycles), failures space cycles out (see [`backoff::cycle_delay`]), and shutdown
/// interrupts a cycle or a wait at once.
pub async fn run_daemon<C, F>(interval: Duration, cycle: C, shutdown: impl Future<Output = ()>)
where
    C: FnMut() -> F,
    F: Future<Output = Outcome>,
{
    run_daemon_woken(interval, cycle, shutdown, std::future::pending).await
}

/// [`run_daemon`], and a wait between cycles also ends when `wake()` resolves (a "sync now"
/// request, [`crate::control`]): the next cycle starts at once, whatever the interval or the
/// backoff said.
pub async fn run_daemon_woken<C, F, W, WF>(
    interval: Duration,
    mut cycle: C,
    shutdown: impl Future<Output = ()>,
    mut wake: W,
) where
    C: FnMut() -> F,
    F: Future<Output = Outcome>,
    W: FnMut() -> WF,
    WF: Future<Output = ()>,
{
    tokio::pin!(shutdown);
    let mut failures = 0u32;
    loop {
        let outcome = tokio::select! {
            o = cycle() => o,
            _ = &mut shutdown => return,
        };
        let delay = match outcome {
            Outcome::Synced => {
                failures = 0;
                interval
            }
            Outcome::LoginRequired => {
                failures = 0;
                interval.min(Duration::from_secs(60))
            }
            Outcome::Failed => {
                failures = failures.saturating_add(1);
                backoff::cycle_delay(interval, failures, &mut rand::rng())
            }
        };
        tracing::debug!(delay_s = delay.as_secs_f64(), "next cycle scheduled");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {},
            _ = wake() => tracing::debug!("sync requested: starting the next cycle now"),
            _ = &mut shutdown => return,
        }
    }
}

impl Engine {
    /// A cycle for the daemon loop: logs the result, records it in the status bucket
    /// ([`status_bucket`]) and classifies it.
    pub async fn daemon_cycle(&self) -> Outcome {
        self.daemon_cycle_reporting().await.0
    }

    /// [`Engine::daemon_cycle`], also handing back the cycle's result (for those who asked
    /// for it over the control channel).
    pub async fn daemon_cycle_reporting(&self) -> (Outcome, Result<CycleReport, CycleError>) {
        let started = Instant::now();
        let result = self.run_cycle().await;
        let outcome = match &result {
            Ok(r) => {
                tracing::info!(
                    read = r.read(),
                    delivered = r.upload.delivered,
                    duplicates = r.upload.duplicates,
                    quarantined = r.upload.quarantined,
                    elapsed_ms = r.elapsed.as_millis() as u64,
                    "sync cycle done"
                );
                Outcome::Synced
            }
            Err(e) if e.needs_login() => {
                tracing::warn!("{e}");
                Outcome::LoginRequired
            }
            Err(e) => {
                tracing::error!("sync cycle failed, will retry: {e}");
                Outcome::Failed
            }
        };
        self.record_status(&result, started.elapsed()).await;
        (outcome, result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use tokio::time::Instant as TokioInstant;

    fn pending(id: i64) -> Pending {
        Pending {
            acked: Acked {
                bucket_id: "b".into(),
                event_id: id,
                hash: [0; 16],
                span: crate::state::Span {
                    start_ns: id,
                    duration_ns: 0,
                },
            },
            event: UpEvent {
                bucket_id: "b".into(),
                event_id: id,
                hash: String::new(),
                timestamp: String::new(),
                duration: 0.0,
                data: crate::source::model::empty_object(),
            },
        }
    }

    /// The queue holds at most its capacity in events, however they are chunked, and a reader
    /// waiting for room is released when the uploader goes away.
    #[tokio::test(start_paused = true)]
    async fn the_queue_is_bounded_in_events_and_closes_with_its_reader() {
        let (tx, mut rx) = queue(5);
        tx.send_events((0..3).map(pending).collect()).await.unwrap();
        {
            // 3 + 3 > 5: the second page waits for room.
            let second = tx.send_events((3..6).map(pending).collect());
            tokio::pin!(second);
            assert!(
                tokio::time::timeout(Duration::from_secs(60), &mut second)
                    .await
                    .is_err(),
                "no room for 3 more"
            );
            let Some(Item::Events(first)) = rx.recv().await else {
                panic!("the first page")
            };
            assert_eq!(first.len(), 3);
            second.await.unwrap();
        }
        // A page larger than the whole queue goes in pieces, never more than 5 at a time.
        let big = tokio::spawn(async move {
            let r = tx.send_events((10..22).map(pending).collect()).await;
            (tx, r)
        });
        let mut sizes = Vec::new();
        while sizes.iter().sum::<usize>() < 3 + 12 {
            match rx.recv().await {
                Some(Item::Events(e)) => sizes.push(e.len()),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(sizes.iter().all(|&n| n <= 5), "{sizes:?}");
        let (tx, r) = big.await.unwrap();
        r.unwrap();
        tx.send_events((30..35).map(pending).collect())
            .await
            .unwrap();
        let blocked = tokio::spawn(async move { tx.send_events(vec![pending(40)]).await });
        tokio::task::yield_now().await;
        drop(rx);
        assert!(
            blocked.await.unwrap().is_err(),
            "the reader learns the uploader is gone"
        );
    }

    /// Records when each cycle started (paused tokio time) and plays scripted outcomes.
    async fn run_script(
        interval: Duration,
        script: Vec<(Outcome, Duration)>,
        stop_after: Duration,
    ) -> Vec<Duration> {
        let t0 = TokioInstant::now();
        let starts = Arc::new(Mutex::new(Vec::new()));
        let calls = Arc::new(AtomicU32::new(0));
        let script = Arc::new(script);
        let cycle = {
            let starts = Arc::clone(&starts);
            move || {
                let starts = Arc::clone(&starts);
                let calls = Arc::clone(&calls);
                let script = Arc::clone(&script);
                async move {
                    starts.lock().unwrap().push(t0.elapsed());
                    let i = calls.fetch_add(1, Ordering::SeqCst) as usize;
                    let (outcome, takes) = script
                        .get(i)
                        .copied()
                        .unwrap_or((Outcome::Synced, Duration::ZERO));
                    tokio::time::sleep(takes).await;
                    outcome
                }
            }
        };
        run_daemon(interval, cycle, tokio::time::sleep(stop_after)).await;
        let v = starts.lock().unwrap().clone();
        v
    }

    #[tokio::test(start_paused = true)]
    async fn cycles_start_one_interval_after_the_previous_one_ended() {
        let i = Duration::from_secs(300);
        // The second cycle takes ten intervals (a huge backlog, or a laptop asleep mid-cycle).
        let starts = run_script(
            i,
            vec![
                (Outcome::Synced, Duration::ZERO),
                (Outcome::Synced, i * 10),
                (Outcome::Synced, Duration::ZERO),
            ],
            Duration::from_secs(300 * 13 + 1),
        )
        .await;
        let secs: Vec<u64> = starts.iter().map(|d| d.as_secs()).collect();
        // No burst of missed ticks after the long cycle: 0, 300, then 300+3000+300.
        assert_eq!(secs, vec![0, 300, 3600, 3900]);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_grow_the_interval_and_a_success_resets_it() {
        let i = Duration::from_secs(100);
        let f = (Outcome::Failed, Duration::ZERO);
        let ok = (Outcome::Synced, Duration::ZERO);
        let starts = run_script(i, vec![f, f, f, ok, ok], Duration::from_secs(2000)).await;
        let gaps: Vec<f64> = starts
            .windows(2)
            .map(|w| (w[1] - w[0]).as_secs_f64())
            .collect();
        // ~100, ~200, ~400 (±10 % jitter), then 100 after the success.
        assert!((90.0..=110.0).contains(&gaps[0]), "{gaps:?}");
        assert!((180.0..=220.0).contains(&gaps[1]), "{gaps:?}");
        assert!((360.0..=440.0).contains(&gaps[2]), "{gaps:?}");
        assert_eq!(gaps[3], 100.0, "{gaps:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn login_required_polls_every_minute_without_growing() {
        let i = Duration::from_secs(300);
        let l = (Outcome::LoginRequired, Duration::ZERO);
        let starts = run_script(i, vec![l, l, l, l], Duration::from_secs(200)).await;
        let secs: Vec<u64> = starts.iter().map(|d| d.as_secs()).collect();
        assert_eq!(secs, vec![0, 60, 120, 180]);
    }

    /// A sync request between cycles starts the next one at once, not an interval later.
    #[tokio::test(start_paused = true)]
    async fn a_wake_starts_the_next_cycle_at_once() {
        let t0 = TokioInstant::now();
        let starts = Arc::new(Mutex::new(Vec::new()));
        let wake_at = Arc::new(Mutex::new(vec![Duration::from_secs(10)]));
        let cycle = {
            let starts = Arc::clone(&starts);
            move || {
                starts.lock().unwrap().push(t0.elapsed());
                async { Outcome::Synced }
            }
        };
        let wake = {
            let wake_at = Arc::clone(&wake_at);
            move || {
                let next = wake_at.lock().unwrap().pop();
                async move {
                    match next {
                        Some(at) => tokio::time::sleep_until(t0 + at).await,
                        None => std::future::pending().await,
                    }
                }
            }
        };
        run_daemon_woken(
            Duration::from_secs(300),
            cycle,
            tokio::time::sleep(Duration::from_secs(301)),
            wake,
        )
        .await;
        let secs: Vec<u64> = starts.lock().unwrap().iter().map(|d| d.as_secs()).collect();
        // 0, woken at 10, then the interval from the end of that cycle.
        assert_eq!(secs, vec![0, 10]);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_interrupts_a_running_cycle() {
        let i = Duration::from_secs(300);
        let started = TokioInstant::now();
        // The first cycle would run for an hour; shutdown comes after one second.
        let starts = run_script(
            i,
            vec![(Outcome::Synced, Duration::from_secs(3600))],
            Duration::from_secs(1),
        )
        .await;
        assert_eq!(starts.len(), 1);
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }

    #[test]
    fn inflight_claims_a_version_once() {
        let f = InFlight::default();
        assert!(f.claim("b", 1, [1; 16]));
        assert!(!f.claim("b", 1, [1; 16]));
        assert!(f.claim("b", 1, [2; 16]), "a grown version is new");
        f.release("b", 1, [1; 16]);
        assert!(
            !f.claim("b", 1, [2; 16]),
            "releasing an older version keeps the newer claim"
        );
        f.release("b", 1, [2; 16]);
        assert!(f.claim("b", 1, [2; 16]));
    }
}
