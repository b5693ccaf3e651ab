//! Delivering queued events (and deletions) to the upstream, and recording what it
//! acknowledged.
//!
//! The uploader takes the scan's items in order, so when a position mark arrives every event
//! before it is either acknowledged or in the batch being filled: the mark is committed with
//! (never before) the acknowledgement of that batch — Vector's ordered finalizer, in small.
//!
//! Failures are handled per kind: 408/429/5xx and network errors are retried with backoff and
//! the same `Idempotency-Key`; 401 asks the token source for a fresh token once; 413 splits the
//! batch; 400/422 moves the refused events (the upstream's `rejected` list, else found by
//! bisection) into the quarantine and lets the rest flow on.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::queue::{Body, InFlight, Item, Outgoing, Pending, QueueRx};
use super::Metrics;
use crate::auth::{AccessToken, AuthError, TokenSource};
use crate::clock::Clock;
use crate::retry::RetryPolicy;
use crate::state::{Commit, Deleted, Mark, Quarantined, StateError, Store};
use crate::upstream::batch::Batch;
use crate::upstream::contract::{BucketMeta, Deletion};
use crate::upstream::{BatchSink, UpstreamError};

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("upstream: {0}")]
    Upstream(#[from] UpstreamError),
    #[error(transparent)]
    State(#[from] StateError),
}

/// What one cycle's uploader did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UploadStats {
    /// Events the upstream acknowledged.
    pub delivered: u64,
    /// Of those, the ones it already held (re-sent after a crash or a lost answer).
    pub duplicates: u64,
    pub quarantined: u64,
    /// Deletions the upstream acknowledged.
    pub deleted: u64,
    /// HTTP requests made, retries and splits included.
    pub requests: u64,
    pub retries: u64,
}

impl UploadStats {
    fn add(&mut self, other: &UploadStats) {
        self.delivered += other.delivered;
        self.duplicates += other.duplicates;
        self.quarantined += other.quarantined;
        self.deleted += other.deleted;
        self.requests += other.requests;
        self.retries += other.retries;
    }
}

pub(crate) struct Uploader {
    pub upstream: Arc<dyn BatchSink>,
    pub tokens: Arc<dyn TokenSource>,
    pub store: Arc<Store>,
    pub inflight: Arc<InFlight>,
    pub buckets: Arc<BTreeMap<String, BucketMeta>>,
    pub device_id: Uuid,
    pub hostname: String,
    pub batch_size: usize,
    pub max_retries: u32,
    pub retry: RetryPolicy,
    /// How long a partial batch waits for more events before it is sent anyway.
    pub linger: Duration,
    pub metrics: Arc<Metrics>,
    /// Record nothing in the state (`--dry-run`): the sink only looked at the batches.
    pub dry_run: bool,
    /// The cycle's clock: what each batch's `sync_timestamp` says.
    pub clock: Arc<dyn Clock>,
    /// Batches on the wire at once (`sync.upload_concurrency`; at least 1).
    pub in_flight: usize,
}

/// One state change for the committer, with the barriers waiting for it.
#[derive(Default)]
struct Step {
    commit: Commit,
    barriers: Vec<oneshot::Sender<()>>,
}

impl From<Commit> for Step {
    fn from(commit: Commit) -> Step {
        Step {
            commit,
            barriers: Vec::new(),
        }
    }
}

/// The batch being filled and what waits for it.
struct Open {
    batch: Vec<Pending>,
    waiting: Waiting,
    /// One of the batch's versions replaces another that may still be on the wire.
    follows_queued: bool,
}

impl Open {
    fn with_capacity(n: usize) -> Open {
        Open {
            batch: Vec::with_capacity(n),
            waiting: Waiting::default(),
            follows_queued: false,
        }
    }
}

/// What became of one batch on its way: the state changes its answers call for, in order,
/// and the error that stopped it, if one did (after the changes for what it delivered first).
struct Delivered {
    steps: Vec<Step>,
    stats: UploadStats,
    /// It sent something (not only marks, quarantines or barriers waiting their turn).
    sent: bool,
    /// The upstream refused its token once.
    refreshed: bool,
    /// The token it ended with (refreshed, if the upstream asked for that).
    token: AccessToken,
    error: Option<UploadError>,
}

/// The batches on the wire, oldest first, and what waits for them. Dropped (on an error), it
/// stops them: what they delivered is not recorded and the next cycle sends it again, which
/// the upstream absorbs as duplicates.
struct Flight {
    trips: VecDeque<Trip>,
    /// Of the trips, those that send something (the others carry only marks, quarantines or
    /// barriers and take no room on the wire).
    sending: usize,
    /// How many may send at once now: a cycle starts with one and opens up to `in_flight`
    /// one answer at a time; a batch that needed a retry or a fresh token closes it to one
    /// again (additive increase, drop to one on trouble — a slow start, as TCP's, or Vector's
    /// adaptive concurrency, in small). So an upstream that is down, or a token that expired,
    /// costs the requests of one batch, not of every batch on the wire.
    window: usize,
    gate: Arc<RetryGate>,
}

struct Trip {
    task: tokio::task::JoinHandle<Delivered>,
    sends: bool,
}

impl Default for Flight {
    fn default() -> Flight {
        Flight {
            trips: VecDeque::new(),
            sending: 0,
            window: 1,
            gate: Arc::default(),
        }
    }
}

impl Flight {
    fn is_empty(&self) -> bool {
        self.trips.is_empty()
    }

    fn push(&mut self, task: tokio::task::JoinHandle<Delivered>, sends: bool) {
        self.sending += usize::from(sends);
        self.trips.push_back(Trip { task, sends });
    }

    /// The oldest trip's outcome, once it has one. Cancel-safe: awaited in a `select!`, it
    /// gives the trip up only when it returns.
    async fn oldest(&mut self) -> Result<Delivered, UploadError> {
        let Some(trip) = self.trips.front_mut() else {
            return std::future::pending().await;
        };
        let done = (&mut trip.task).await;
        let sends = trip.sends;
        self.trips.pop_front();
        self.sending -= usize::from(sends);
        done.map_err(|e| StateError::Task(e.to_string()).into())
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        for trip in &self.trips {
            trip.task.abort();
        }
    }
}

/// What the batches on the wire share about retrying: whose turn it is, and whether one gave up.
#[derive(Default)]
struct RetryGate {
    turn: tokio::sync::Mutex<()>,
    gave_up: AtomicBool,
}

/// Waits until `at`, or forever when there is no deadline.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What waits for the batch being filled: marks, local quarantines and barriers.
#[derive(Default)]
struct Waiting {
    marks: Vec<Mark>,
    quarantined: Vec<Quarantined>,
    barriers: Vec<oneshot::Sender<()>>,
}

impl Waiting {
    fn is_empty(&self) -> bool {
        self.marks.is_empty() && self.quarantined.is_empty() && self.barriers.is_empty()
    }
}

impl Uploader {
    pub async fn run(self, rx: QueueRx, token: AccessToken) -> Result<UploadStats, UploadError> {
        // Recording runs beside sending: while batch k is committed, batch k+1 is already on
        // the wire. One committer applies commits strictly in order, so a mark still lands
        // only with or after the acknowledgements of every event before it.
        let (commits, committer_rx) = mpsc::channel(COMMITS_AHEAD);
        let committer = tokio::spawn(commit_in_order(
            committer_rx,
            Arc::clone(&self.store),
            Arc::clone(&self.inflight),
            self.dry_run,
        ));
        let sent = Arc::new(self).send_all(rx, token, &commits).await;
        drop(commits);
        let recorded = committer
            .await
            .map_err(|e| StateError::Task(e.to_string()))?;
        // A failed upload still lets the committer record what was acknowledged before it,
        // so the next cycle does not re-send it. A state error comes first: it is why the
        // uploader stopped, if it did.
        recorded?;
        sent
    }

    /// Fills batches from the queue and keeps up to `in_flight` of them on the wire, their
    /// answers recorded in the order the batches were filled.
    ///
    /// One batch at a time costs a round trip per batch: to an upstream 50 ms away, 100 s per
    /// million events. Several at once overlap the round trips (and the upstream's storing, where
    /// it can store a user's batches side by side); on loopback they change nothing measurable
    /// (README, Performance). What may not overlap are two versions of one event: the
    /// upstream could store them in either order and keep the older one, so a batch carrying a
    /// version that replaces a queued one waits until every batch before it is answered.
    async fn send_all(
        self: Arc<Self>,
        mut rx: QueueRx,
        mut token: AccessToken,
        commits: &mpsc::Sender<Step>,
    ) -> Result<UploadStats, UploadError> {
        let mut stats = UploadStats::default();
        let mut open = Open::with_capacity(self.batch_size);
        let mut flight = Flight::default();
        // When the partial batch is sent anyway: `linger` after the last item that came.
        let mut linger_until: Option<tokio::time::Instant> = None;
        loop {
            let next = tokio::select! {
                biased;
                done = flight.oldest(), if !flight.is_empty() => {
                    self.record(done?, &mut flight, &mut token, &mut stats, commits)
                        .await?;
                    continue;
                }
                () = sleep_until(linger_until), if linger_until.is_some() => {
                    linger_until = None;
                    self.dispatch(&mut open, &mut flight, &mut token, &mut stats, commits)
                        .await?;
                    continue;
                }
                next = rx.recv() => next,
            };
            let flush_now = match next {
                None => {
                    self.dispatch(&mut open, &mut flight, &mut token, &mut stats, commits)
                        .await?;
                    while !flight.is_empty() {
                        let done = flight.oldest().await?;
                        self.record(done, &mut flight, &mut token, &mut stats, commits)
                            .await?;
                    }
                    return Ok(stats);
                }
                Some(Item::Events(events)) => {
                    // A page's events are of one bucket; deletions are not events to send.
                    if let Some(first) = events.first() {
                        let n = events
                            .iter()
                            .filter(|p| matches!(p.body, Body::Event(_)))
                            .count();
                        self.metrics.queued(first.bucket_id(), n as u64);
                    }
                    for p in events {
                        open.follows_queued |= p.follows_queued;
                        open.batch.push(p);
                        if open.batch.len() >= self.batch_size {
                            self.dispatch(&mut open, &mut flight, &mut token, &mut stats, commits)
                                .await?;
                        }
                    }
                    false
                }
                Some(Item::Mark(m)) => {
                    open.waiting.marks.push(m);
                    open.batch.is_empty()
                }
                Some(Item::Quarantine(q)) => {
                    stats.quarantined += q.len() as u64;
                    open.waiting.quarantined.extend(q);
                    open.batch.is_empty()
                }
                // Whoever waits wants everything before it recorded now.
                Some(Item::Barrier(done)) => {
                    open.waiting.barriers.push(done);
                    true
                }
            };
            if flush_now {
                self.dispatch(&mut open, &mut flight, &mut token, &mut stats, commits)
                    .await?;
            }
            linger_until =
                (!open.batch.is_empty()).then(|| tokio::time::Instant::now() + self.linger);
        }
    }

    /// Sends the open batch (and what waits for it) on its way once there is room on the wire
    /// and nothing it must not travel beside is still there.
    async fn dispatch(
        self: &Arc<Self>,
        open: &mut Open,
        flight: &mut Flight,
        token: &mut AccessToken,
        stats: &mut UploadStats,
        commits: &mpsc::Sender<Step>,
    ) -> Result<(), UploadError> {
        let items = std::mem::take(&mut open.batch);
        let waiting = std::mem::take(&mut open.waiting);
        let follows_queued = std::mem::take(&mut open.follows_queued);
        open.batch.reserve_exact(self.batch_size);
        if items.is_empty() && waiting.is_empty() {
            return Ok(());
        }
        let sends = !items.is_empty();
        if sends {
            while flight.sending > 0 && (flight.sending >= flight.window || follows_queued) {
                let done = flight.oldest().await?;
                self.record(done, flight, token, stats, commits).await?;
            }
        }
        let this = Arc::clone(self);
        let gate = Arc::clone(&flight.gate);
        let token = token.clone();
        let task =
            tokio::spawn(async move { this.deliver_all(items, waiting, &gate, token).await });
        flight.push(task, sends);
        Ok(())
    }

    /// Hands a finished batch's state changes to the committer, in their order, and reports
    /// its failure if it failed (after recording what it had delivered before that).
    async fn record(
        &self,
        done: Delivered,
        flight: &mut Flight,
        token: &mut AccessToken,
        stats: &mut UploadStats,
        commits: &mpsc::Sender<Step>,
    ) -> Result<(), UploadError> {
        if done.sent {
            flight.window = if done.stats.retries > 0 || done.refreshed {
                1
            } else {
                (flight.window + 1).min(self.in_flight.max(1))
            };
        }
        for step in done.steps {
            self.commit(commits, step).await?;
        }
        stats.add(&done.stats);
        // A refresh one batch needed serves the next ones.
        *token = done.token;
        match done.error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Delivers `items` (splitting and quarantining as the upstream answers), and lists the
    /// state changes their answers call for, with what was waiting for them last.
    async fn deliver_all(
        &self,
        items: Vec<Pending>,
        waiting: Waiting,
        gate: &RetryGate,
        token: AccessToken,
    ) -> Delivered {
        let mut done = Delivered {
            steps: Vec::new(),
            stats: UploadStats::default(),
            sent: !items.is_empty(),
            refreshed: false,
            token,
            error: None,
        };
        let mut chunks: VecDeque<Chunk> = VecDeque::new();
        if !items.is_empty() {
            chunks.push_back(self.chunk(items));
        }
        while let Some(chunk) = chunks.pop_front() {
            let delivery = match self
                .deliver(
                    &chunk.request,
                    gate,
                    &mut done.token,
                    &mut done.stats,
                    &mut done.refreshed,
                )
                .await
            {
                Ok(d) => d,
                Err(e) => {
                    done.error = Some(e);
                    return done;
                }
            };
            match delivery {
                Delivery::Acked {
                    duplicates,
                    deleted,
                } => {
                    let stats = &mut done.stats;
                    stats.delivered += chunk.request.events.len() as u64;
                    stats.duplicates += duplicates;
                    stats.deleted += deleted.min(chunk.request.deletions.len() as u64);
                    self.count_delivered(&chunk.request);
                    let mut commit = Commit::default();
                    for slot in chunk.order {
                        match slot {
                            Slot::Event(a) => commit.acked.push(a),
                            Slot::Deletion(a) => commit.deleted.push(Deleted {
                                row: a.row,
                                event_id: a.event_id,
                            }),
                        }
                    }
                    done.steps.push(Step::from(commit));
                }
                Delivery::Split => {
                    let (first, second) = self.split(chunk);
                    chunks.push_front(second);
                    chunks.push_front(first);
                }
                Delivery::Refused { indexes, reason } => {
                    let mut good = Vec::with_capacity(chunk.order.len());
                    let mut quarantined = Vec::new();
                    for (i, p) in chunk.into_items().into_iter().enumerate_events() {
                        match (i, p.body) {
                            (Some(i), Body::Event(event)) if indexes.contains(&i) => {
                                let event = Pending::out_event(&p.acked, event);
                                tracing::warn!(bucket = %event.bucket_id, event_id = p.acked.event_id,
                                    %reason, "the upstream refused an event; it is quarantined (see --status)");
                                quarantined.push(Quarantined {
                                    event_json: serde_json::to_string(&event.to_up_event())
                                        .unwrap_or_default(),
                                    acked: p.acked,
                                    reason: reason.clone(),
                                });
                            }
                            (_, body) => good.push(Pending {
                                acked: p.acked,
                                body,
                                follows_queued: false,
                            }),
                        }
                    }
                    done.stats.quarantined += quarantined.len() as u64;
                    done.steps.push(Step::from(Commit {
                        quarantined,
                        ..Commit::default()
                    }));
                    if !good.is_empty() {
                        chunks.push_front(self.chunk(good));
                    }
                }
            }
        }
        if !waiting.is_empty() {
            done.steps.push(Step {
                commit: Commit {
                    quarantined: waiting.quarantined,
                    marks: waiting.marks,
                    ..Commit::default()
                },
                barriers: waiting.barriers,
            });
        }
        done
    }

    /// Per-bucket delivery counters for progress displays: one map lookup per run of events
    /// of the same bucket (a batch is usually one run).
    fn count_delivered(&self, request: &Batch) {
        let mut rest = &request.events[..];
        while let Some(first) = rest.first() {
            let id = &first.bucket_id;
            let n = rest.iter().take_while(|e| &e.bucket_id == id).count();
            self.metrics.delivered(id, n as u64);
            rest = &rest[n..];
        }
    }

    async fn commit(&self, commits: &mpsc::Sender<Step>, step: Step) -> Result<(), UploadError> {
        // Closed only when the committer stopped on an error, which `run` reports.
        commits
            .send(step)
            .await
            .map_err(|_| StateError::Task("the state committer stopped".into()).into())
    }

    /// Sends one request until the upstream answers something final for it.
    async fn deliver(
        &self,
        request: &Batch,
        gate: &RetryGate,
        token: &mut AccessToken,
        stats: &mut UploadStats,
        had_refresh: &mut bool,
    ) -> Result<Delivery, UploadError> {
        let size = request.events.len() + request.deletions.len();
        let mut attempt = 0u32;
        let mut refreshed = false;
        let mut retrying = None;
        loop {
            if !refreshed {
                // Cheap for every source; lets a login session refresh ahead of expiry, so a
                // long catch-up never sends a token that is about to lapse.
                *token = self.tokens.token().await?;
            }
            stats.requests += 1;
            let err = match self.upstream.send_batch(token, request).await {
                Ok(answer) => {
                    return Ok(Delivery::Acked {
                        duplicates: answer.duplicates,
                        deleted: answer.deleted,
                    })
                }
                Err(e) => e,
            };
            match err {
                UpstreamError::Unauthorized if !refreshed => {
                    refreshed = true;
                    *had_refresh = true;
                    tracing::info!("the upstream rejected the token; asking for a fresh one");
                    *token = self.tokens.refresh(token).await?;
                }
                UpstreamError::Unauthorized => {
                    return Err(AuthError::Rejected(
                        "the upstream rejected a freshly refreshed token".into(),
                    )
                    .into())
                }
                UpstreamError::TooLarge if size > 1 => return Ok(Delivery::Split),
                UpstreamError::TooLarge if !request.events.is_empty() => {
                    return Ok(Delivery::Refused {
                        indexes: vec![0],
                        reason: "413: the event alone is larger than the upstream accepts".into(),
                    })
                }
                UpstreamError::Rejected {
                    status,
                    message,
                    rejected,
                } => {
                    let n = request.events.len();
                    let indexes: Vec<usize> = rejected
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|i| *i < n)
                        .collect();
                    if !indexes.is_empty() {
                        return Ok(Delivery::Refused {
                            indexes,
                            reason: format!("{status}: {message}"),
                        });
                    }
                    if size == 1 && n == 1 {
                        return Ok(Delivery::Refused {
                            indexes: vec![0],
                            reason: format!("{status}: {message}"),
                        });
                    }
                    if size > 1 {
                        // No list of culprits: bisect until each bad event is alone.
                        return Ok(Delivery::Split);
                    }
                    // A lone deletion refused: the upstream cannot take deletions; that is a
                    // configuration problem, not a reason to lose anything.
                    return Err(UpstreamError::Rejected {
                        status,
                        message,
                        rejected: None,
                    }
                    .into());
                }
                e => {
                    attempt += 1;
                    let Some(wait) =
                        self.retry
                            .after(&e, attempt, self.max_retries, &mut rand::rng())
                    else {
                        gate.gave_up.store(true, Ordering::Relaxed);
                        return Err(e.into());
                    };
                    // One batch retries at a time: the others that failed beside it wait
                    // here, so an upstream in trouble gets one batch's retries, not one per
                    // batch on the wire; and once one has given up, they give up too.
                    if retrying.is_none() {
                        retrying = Some(gate.turn.lock().await);
                    }
                    if gate.gave_up.load(Ordering::Relaxed) {
                        return Err(e.into());
                    }
                    stats.retries += 1;
                    tracing::warn!(error = %e, attempt, wait_ms = wait.as_millis() as u64,
                        "upload failed; retrying with the same Idempotency-Key");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// The request for these items, which move into it (no copy of their data); a new batch
    /// id, since a different set of events must never share an `Idempotency-Key`.
    fn chunk(&self, items: Vec<Pending>) -> Chunk {
        let mut buckets = BTreeMap::new();
        for p in &items {
            let id = p.bucket_id();
            if !buckets.contains_key(id) {
                if let Some(meta) = self.buckets.get(id) {
                    buckets.insert(id.to_owned(), meta.clone());
                }
            }
        }
        let mut order = Vec::with_capacity(items.len());
        let mut events = Vec::with_capacity(items.len());
        let mut deletions = Vec::new();
        for p in items {
            match p.body {
                Body::Event(e) => {
                    events.push(Pending::out_event(&p.acked, e));
                    order.push(Slot::Event(p.acked));
                }
                Body::Deletion { bucket_id } => {
                    deletions.push(Deletion {
                        bucket_id: bucket_id.as_ref().to_owned(),
                        event_id: p.acked.event_id,
                    });
                    order.push(Slot::Deletion(p.acked));
                }
            }
        }
        Chunk {
            request: Batch {
                batch_id: Uuid::new_v4(),
                device_id: self.device_id,
                user_id: self.tokens.user_id(),
                hostname: self.hostname.clone(),
                sync_timestamp: self
                    .clock
                    .now()
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                buckets,
                events,
                deletions,
            },
            order,
        }
    }

    fn split(&self, chunk: Chunk) -> (Chunk, Chunk) {
        let mut items = chunk.into_items();
        let second = items.split_off(items.len() / 2);
        (self.chunk(items), self.chunk(second))
    }
}

/// How many acknowledged batches may wait for the committer: enough to overlap a commit with the
/// next requests and to group several into one transaction, few enough that a crash re-sends
/// little.
const COMMITS_AHEAD: usize = 8;

/// A transaction of the committer gathers what is acknowledged within this long…
const GROUP_LINGER: std::time::Duration = std::time::Duration::from_millis(100);
/// …up to this many rows.
const GROUP_ROWS: usize = 10_000;

/// Items on their way: the request, and in the items' order what recording each one's
/// acknowledgement needs (events and deletions keep their relative order in the request).
struct Chunk {
    order: Vec<Slot>,
    request: Batch,
}

enum Slot {
    Event(crate::state::Acked),
    Deletion(crate::state::Acked),
}

impl Chunk {
    /// The items back, in their order (for a split or a partial refusal).
    fn into_items(self) -> Vec<Pending> {
        let mut events = self.request.events.into_iter();
        let mut deletions = self.request.deletions.into_iter();
        self.order
            .into_iter()
            .filter_map(|slot| match slot {
                Slot::Event(acked) => events.next().map(|e| Pending {
                    acked,
                    body: Body::Event(Outgoing::from_out_event(e)),
                    follows_queued: false,
                }),
                Slot::Deletion(acked) => deletions.next().map(|d| Pending {
                    acked,
                    body: Body::Deletion {
                        bucket_id: d.bucket_id.into(),
                    },
                    follows_queued: false,
                }),
            })
            .collect()
    }
}

/// Numbers the events of a list of items (deletions get `None`): the indexes a refusal names.
trait EnumerateEvents: Iterator<Item = Pending> + Sized {
    fn enumerate_events(self) -> impl Iterator<Item = (Option<usize>, Pending)> {
        let mut n = 0usize;
        self.map(move |p| match p.body {
            Body::Event(_) => {
                n += 1;
                (Some(n - 1), p)
            }
            Body::Deletion { .. } => (None, p),
        })
    }
}

impl<I: Iterator<Item = Pending>> EnumerateEvents for I {}

/// Applies commits in order; releases each event's queue claim only after its acknowledgement
/// is recorded (the reader's dedupe relies on one of the two always being visible), and
/// answers the barriers once what came before them is recorded.
async fn commit_in_order(
    mut rx: mpsc::Receiver<Step>,
    store: Arc<Store>,
    inflight: Arc<InFlight>,
    dry_run: bool,
) -> Result<(), StateError> {
    while let Some(first) = rx.recv().await {
        // Group commit: what arrives within `GROUP_LINGER` goes into one transaction, in order,
        // up to `GROUP_ROWS` rows or until someone waits on a barrier. A transaction writes
        // every page it touched to the WAL again: one per 500-event batch wrote 100,000 pages
        // (400 MB) for a 1M-event catch-up. Still atomic: a mark lands with, never before,
        // the acknowledgements queued before it; a crash re-sends what was acknowledged but
        // not yet recorded, which the upstream absorbs as duplicates.
        let deadline = tokio::time::Instant::now() + GROUP_LINGER;
        let mut rows = first.commit.rows();
        let mut barriers = first.barriers;
        let mut group = vec![first.commit];
        while barriers.is_empty() && rows < GROUP_ROWS {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(next)) => {
                    rows += next.commit.rows();
                    group.push(next.commit);
                    barriers.extend(next.barriers);
                }
                Ok(None) | Err(_) => break,
            }
        }
        let group = if dry_run {
            group
        } else {
            let store = Arc::clone(&store);
            tokio::task::spawn_blocking(move || store.commit_all(&group).map(|()| group))
                .await
                .map_err(|e| StateError::Task(e.to_string()))??
        };
        for commit in &group {
            inflight.release_all(
                commit
                    .acked
                    .iter()
                    .chain(commit.quarantined.iter().map(|q| &q.acked)),
            );
            for d in &commit.deleted {
                inflight.release(d.row, d.event_id, super::queue::DELETION);
            }
        }
        for b in barriers {
            let _ = b.send(());
        }
    }
    Ok(())
}

enum Delivery {
    Acked {
        duplicates: u64,
        deleted: u64,
    },
    /// Too large, or refused without saying which: send each half on its own.
    Split,
    Refused {
        indexes: Vec<usize>,
        reason: String,
    },
}

#[cfg(test)]
mod tests;
