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
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::queue::{Body, InFlight, Item, Pending, QueueRx};
use super::Metrics;
use crate::auth::{AccessToken, AuthError, TokenSource};
use crate::clock::Clock;
use crate::retry::RetryPolicy;
use crate::state::{Commit, Deleted, Mark, Quarantined, StateError, Store};
use crate::upstream::contract::{BatchRequest, BucketMeta, Deletion};
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
}

/// One state change for the committer, with the barriers waiting for it.
#[derive(Default)]
struct Step {
    commit: Commit,
    barriers: Vec<oneshot::Sender<()>>,
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
        let sent = self.send_all(rx, token, &commits).await;
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

    async fn send_all(
        &self,
        mut rx: QueueRx,
        mut token: AccessToken,
        commits: &mpsc::Sender<Step>,
    ) -> Result<UploadStats, UploadError> {
        let mut stats = UploadStats::default();
        let mut batch: Vec<Pending> = Vec::with_capacity(self.batch_size);
        let mut waiting = Waiting::default();
        loop {
            let next = if batch.is_empty() {
                rx.recv().await
            } else {
                match tokio::time::timeout(self.linger, rx.recv()).await {
                    Ok(item) => item,
                    Err(_) => {
                        self.flush(&mut batch, &mut waiting, &mut token, &mut stats, commits)
                            .await?;
                        continue;
                    }
                }
            };
            let flush_now = match next {
                None => {
                    self.flush(&mut batch, &mut waiting, &mut token, &mut stats, commits)
                        .await?;
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
                        batch.push(p);
                        if batch.len() >= self.batch_size {
                            self.flush(&mut batch, &mut waiting, &mut token, &mut stats, commits)
                                .await?;
                        }
                    }
                    false
                }
                Some(Item::Mark(m)) => {
                    waiting.marks.push(m);
                    batch.is_empty()
                }
                Some(Item::Quarantine(q)) => {
                    stats.quarantined += q.len() as u64;
                    waiting.quarantined.extend(q);
                    batch.is_empty()
                }
                // Whoever waits wants everything before it recorded now.
                Some(Item::Barrier(done)) => {
                    waiting.barriers.push(done);
                    true
                }
            };
            if flush_now {
                self.flush(&mut batch, &mut waiting, &mut token, &mut stats, commits)
                    .await?;
            }
        }
    }

    /// Delivers `batch`, then hands its acknowledgement, with what was waiting for it, to the
    /// committer.
    async fn flush(
        &self,
        batch: &mut Vec<Pending>,
        waiting: &mut Waiting,
        token: &mut AccessToken,
        stats: &mut UploadStats,
        commits: &mpsc::Sender<Step>,
    ) -> Result<(), UploadError> {
        let items = std::mem::take(batch);
        let mut chunks: VecDeque<Chunk> = VecDeque::new();
        if !items.is_empty() {
            chunks.push_back(self.chunk(items));
        }
        while let Some(chunk) = chunks.pop_front() {
            match self.deliver(&chunk.request, token, stats).await? {
                Delivery::Acked {
                    duplicates,
                    deleted,
                } => {
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
                    self.commit(commits, commit, Vec::new()).await?;
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
                                tracing::warn!(bucket = %event.bucket_id, event_id = p.acked.event_id,
                                    %reason, "the upstream refused an event; it is quarantined (see --status)");
                                quarantined.push(Quarantined {
                                    event_json: serde_json::to_string(&event).unwrap_or_default(),
                                    acked: p.acked,
                                    reason: reason.clone(),
                                });
                            }
                            (_, body) => good.push(Pending {
                                acked: p.acked,
                                body,
                            }),
                        }
                    }
                    stats.quarantined += quarantined.len() as u64;
                    let commit = Commit {
                        quarantined,
                        ..Commit::default()
                    };
                    self.commit(commits, commit, Vec::new()).await?;
                    if !good.is_empty() {
                        chunks.push_front(self.chunk(good));
                    }
                }
            }
        }
        if !waiting.is_empty() {
            let w = std::mem::take(waiting);
            let commit = Commit {
                quarantined: w.quarantined,
                marks: w.marks,
                ..Commit::default()
            };
            self.commit(commits, commit, w.barriers).await?;
        }
        Ok(())
    }

    /// Per-bucket delivery counters for progress displays: one map lookup per run of events
    /// of the same bucket (a batch is usually one run).
    fn count_delivered(&self, request: &BatchRequest) {
        let mut rest = &request.events[..];
        while let Some(first) = rest.first() {
            let id = &first.bucket_id;
            let n = rest.iter().take_while(|e| &e.bucket_id == id).count();
            self.metrics.delivered(id, n as u64);
            rest = &rest[n..];
        }
    }

    async fn commit(
        &self,
        commits: &mpsc::Sender<Step>,
        commit: Commit,
        barriers: Vec<oneshot::Sender<()>>,
    ) -> Result<(), UploadError> {
        // Closed only when the committer stopped on an error, which `run` reports.
        commits
            .send(Step { commit, barriers })
            .await
            .map_err(|_| StateError::Task("the state committer stopped".into()).into())
    }

    /// Sends one request until the upstream answers something final for it.
    async fn deliver(
        &self,
        request: &BatchRequest,
        token: &mut AccessToken,
        stats: &mut UploadStats,
    ) -> Result<Delivery, UploadError> {
        let size = request.events.len() + request.deletions.len();
        let mut attempt = 0u32;
        let mut refreshed = false;
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
                        return Err(e.into());
                    };
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
                    events.push(e);
                    order.push(Slot::Event(p.acked));
                }
                Body::Deletion { bucket_id } => {
                    deletions.push(Deletion {
                        bucket_id,
                        event_id: p.acked.event_id,
                    });
                    order.push(Slot::Deletion(p.acked));
                }
            }
        }
        Chunk {
            request: BatchRequest {
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
    request: BatchRequest,
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
                    body: Body::Event(e),
                }),
                Slot::Deletion(acked) => deletions.next().map(|d| Pending {
                    acked,
                    body: Body::Deletion {
                        bucket_id: d.bucket_id,
                    },
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
    while let Some(mut step) = rx.recv().await {
        // Group commit: what arrives within `GROUP_LINGER` goes into one transaction, in order,
        // up to `GROUP_ROWS` rows or until someone waits on a barrier. A transaction writes
        // every page it touched to the WAL again: one per 500-event batch wrote 100,000 pages
        // (400 MB) for a 1M-event catch-up. Still atomic: a mark lands with, never before,
        // the acknowledgements queued before it; a crash re-sends what was acknowledged but
        // not yet recorded, which the upstream absorbs as duplicates.
        let deadline = tokio::time::Instant::now() + GROUP_LINGER;
        while step.barriers.is_empty() && step.commit.rows() < GROUP_ROWS {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(next)) => {
                    step.commit.extend(next.commit);
                    step.barriers.extend(next.barriers);
                }
                Ok(None) | Err(_) => break,
            }
        }
        let commit = if dry_run {
            step.commit
        } else {
            let store = Arc::clone(&store);
            let commit = step.commit;
            tokio::task::spawn_blocking(move || store.commit(&commit).map(|()| commit))
                .await
                .map_err(|e| StateError::Task(e.to_string()))??
        };
        inflight.release_all(
            commit
                .acked
                .iter()
                .chain(commit.quarantined.iter().map(|q| &q.acked)),
        );
        for d in &commit.deleted {
            inflight.release(d.row, d.event_id, super::queue::DELETION);
        }
        for b in step.barriers {
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
