//! Delivering queued events to the upstream, and recording what it acknowledged.
//!
//! The uploader takes the scan's items in order, so when a window's cursor move arrives every
//! event before it is either acknowledged or in the batch being filled: the move is committed
//! with (never before) the acknowledgement of that batch — Vector's ordered finalizer, in small.
//!
//! Failures are handled per kind: 408/429/5xx and network errors are retried with backoff and
//! the same `Idempotency-Key`; 401 asks the token source for a fresh token once; 413 splits the
//! batch; 400/422 moves the refused events (the upstream's `rejected` list, else found by
//! bisection) into the quarantine and lets the rest flow on.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::backoff::RetryPolicy;
use super::{InFlight, Item, Metrics, Pending, QueueRx};
use crate::auth::{AccessToken, AuthError, TokenSource};
use crate::state::{Acked, CursorMove, Quarantined, StateError, Store};
use crate::upstream::contract::{BatchRequest, BucketMeta, UpEvent};
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
}

impl Uploader {
    pub async fn run(self, rx: QueueRx, token: AccessToken) -> Result<UploadStats, UploadError> {
        // Recording runs beside sending: while batch k is committed, batch k+1 is already on
        // the wire. One committer applies commits strictly in order, so a cursor move still
        // lands only with or after the acknowledgements of every event before it.
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
        commits: &mpsc::Sender<Commit>,
    ) -> Result<UploadStats, UploadError> {
        let mut stats = UploadStats::default();
        let mut batch: Vec<Pending> = Vec::with_capacity(self.batch_size);
        let mut moves: Vec<CursorMove> = Vec::new();
        loop {
            let next = if batch.is_empty() {
                rx.recv().await
            } else {
                match tokio::time::timeout(self.linger, rx.recv()).await {
                    Ok(item) => item,
                    Err(_) => {
                        self.flush(&mut batch, &mut moves, &mut token, &mut stats, commits)
                            .await?;
                        continue;
                    }
                }
            };
            match next {
                None => {
                    self.flush(&mut batch, &mut moves, &mut token, &mut stats, commits)
                        .await?;
                    return Ok(stats);
                }
                Some(Item::Events(events)) => {
                    // A page's events are of one bucket.
                    if let Some(first) = events.first() {
                        self.metrics
                            .queued(&first.acked.bucket_id, events.len() as u64);
                    }
                    for p in events {
                        batch.push(p);
                        if batch.len() >= self.batch_size {
                            self.flush(&mut batch, &mut moves, &mut token, &mut stats, commits)
                                .await?;
                        }
                    }
                }
                Some(Item::Window(m)) => {
                    moves.push(m);
                    if batch.is_empty() {
                        self.flush(&mut batch, &mut moves, &mut token, &mut stats, commits)
                            .await?;
                    }
                }
            }
        }
    }

    /// Delivers `batch`, then hands its acknowledgement, with the cursor moves that were
    /// waiting for it, to the committer.
    async fn flush(
        &self,
        batch: &mut Vec<Pending>,
        moves: &mut Vec<CursorMove>,
        token: &mut AccessToken,
        stats: &mut UploadStats,
        commits: &mpsc::Sender<Commit>,
    ) -> Result<(), UploadError> {
        let events = std::mem::take(batch);
        let mut chunks: VecDeque<Chunk> = VecDeque::new();
        if !events.is_empty() {
            chunks.push_back(self.chunk(events));
        }
        while let Some(chunk) = chunks.pop_front() {
            match self.deliver(&chunk.request, token, stats).await? {
                Delivery::Acked { duplicates } => {
                    stats.delivered += chunk.acked.len() as u64;
                    stats.duplicates += duplicates;
                    self.count_delivered(&chunk.acked);
                    self.commit(commits, chunk.acked, Vec::new(), Vec::new())
                        .await?;
                }
                Delivery::Split => {
                    let (first, second) = self.split(chunk);
                    chunks.push_front(second);
                    chunks.push_front(first);
                }
                Delivery::Refused { indexes, reason } => {
                    let mut good = Vec::with_capacity(chunk.acked.len());
                    let mut quarantined = Vec::new();
                    for (i, (acked, event)) in chunk
                        .acked
                        .into_iter()
                        .zip(chunk.request.events)
                        .enumerate()
                    {
                        if !indexes.contains(&i) {
                            good.push(Pending { acked, event });
                            continue;
                        }
                        tracing::warn!(bucket = %acked.bucket_id, event_id = acked.event_id,
                            %reason, "the upstream refused an event; it is quarantined (see --status)");
                        quarantined.push(Quarantined {
                            event_json: serde_json::to_string(&event).unwrap_or_default(),
                            acked,
                            reason: reason.clone(),
                        });
                    }
                    stats.quarantined += quarantined.len() as u64;
                    self.commit(commits, Vec::new(), quarantined, Vec::new())
                        .await?;
                    if !good.is_empty() {
                        chunks.push_front(self.chunk(good));
                    }
                }
            }
        }
        if !moves.is_empty() {
            self.commit(commits, Vec::new(), Vec::new(), std::mem::take(moves))
                .await?;
        }
        Ok(())
    }

    /// Per-bucket delivery counters for progress displays: one map lookup per run of events
    /// of the same bucket (a batch is usually one run).
    fn count_delivered(&self, chunk: &[Acked]) {
        let mut rest = chunk;
        while let Some(first) = rest.first() {
            let id = &first.bucket_id;
            let n = rest.iter().take_while(|a| &a.bucket_id == id).count();
            self.metrics.delivered(id, n as u64);
            rest = &rest[n..];
        }
    }

    async fn commit(
        &self,
        commits: &mpsc::Sender<Commit>,
        acked: Vec<Acked>,
        quarantined: Vec<Quarantined>,
        moves: Vec<CursorMove>,
    ) -> Result<(), UploadError> {
        let commit = Commit {
            acked,
            quarantined,
            moves,
        };
        // Closed only when the committer stopped on an error, which `run` reports.
        commits
            .send(commit)
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
        let size = request.events.len();
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
                UpstreamError::TooLarge => {
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
                    let indexes: Vec<usize> = rejected
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|i| *i < size)
                        .collect();
                    if !indexes.is_empty() {
                        return Ok(Delivery::Refused {
                            indexes,
                            reason: format!("{status}: {message}"),
                        });
                    }
                    if size == 1 {
                        return Ok(Delivery::Refused {
                            indexes: vec![0],
                            reason: format!("{status}: {message}"),
                        });
                    }
                    // No list of culprits: bisect until each bad event is alone.
                    return Ok(Delivery::Split);
                }
                e if e.is_retryable() => {
                    attempt += 1;
                    if attempt > self.max_retries {
                        return Err(e.into());
                    }
                    stats.retries += 1;
                    let wait = self.retry.delay(attempt, e.retry_after(), &mut rand::rng());
                    tracing::warn!(error = %e, attempt, wait_ms = wait.as_millis() as u64,
                        "upload failed; retrying with the same Idempotency-Key");
                    tokio::time::sleep(wait).await;
                }
                e => return Err(e.into()),
            }
        }
    }

    /// The request for these events, which move into it (no copy of their data); a new batch
    /// id, since a different set of events must never share an `Idempotency-Key`.
    fn chunk(&self, pending: Vec<Pending>) -> Chunk {
        let (acked, events): (Vec<Acked>, Vec<UpEvent>) =
            pending.into_iter().map(|p| (p.acked, p.event)).unzip();
        Chunk {
            request: self.request(events),
            acked,
        }
    }

    fn split(&self, chunk: Chunk) -> (Chunk, Chunk) {
        let Chunk { mut acked, request } = chunk;
        let mut events = request.events;
        let half = events.len() / 2;
        let second_events = events.split_off(half);
        let second_acked = acked.split_off(half);
        (
            Chunk {
                request: self.request(events),
                acked,
            },
            Chunk {
                request: self.request(second_events),
                acked: second_acked,
            },
        )
    }

    fn request(&self, events: Vec<UpEvent>) -> BatchRequest {
        let mut buckets = BTreeMap::new();
        for e in &events {
            if !buckets.contains_key(&e.bucket_id) {
                if let Some(meta) = self.buckets.get(&e.bucket_id) {
                    buckets.insert(e.bucket_id.clone(), meta.clone());
                }
            }
        }
        BatchRequest {
            batch_id: Uuid::new_v4(),
            device_id: self.device_id,
            user_id: self.tokens.user_id(),
            hostname: self.hostname.clone(),
            sync_timestamp: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            buckets,
            events,
        }
    }
}

/// How many acknowledged batches may wait for the committer: enough to overlap a commit with the
/// next requests and to group several into one transaction, few enough that a crash re-sends
/// little.
const COMMITS_AHEAD: usize = 8;

/// Events on their way, with what recording their acknowledgement needs; index-aligned.
struct Chunk {
    acked: Vec<Acked>,
    request: BatchRequest,
}

/// One atomic state change, applied in the order the uploader made them.
struct Commit {
    acked: Vec<Acked>,
    quarantined: Vec<Quarantined>,
    moves: Vec<CursorMove>,
}

/// Applies commits in order; releases each event's queue claim only after its acknowledgement
/// is recorded (the reader's dedupe relies on one of the two always being visible).
async fn commit_in_order(
    mut rx: mpsc::Receiver<Commit>,
    store: Arc<Store>,
    inflight: Arc<InFlight>,
    dry_run: bool,
) -> Result<(), StateError> {
    while let Some(mut commit) = rx.recv().await {
        // Group commit: what queued up while the last transaction ran goes into one, in order
        // (one transaction costs about as much as the rows it writes; a catch-up made one per
        // batch). Still atomic: a cursor move lands with, never before, the acknowledgements
        // queued before it.
        while let Ok(next) = rx.try_recv() {
            commit.acked.extend(next.acked);
            commit.quarantined.extend(next.quarantined);
            commit.moves.extend(next.moves);
        }
        let commit = if dry_run {
            commit
        } else {
            let store = Arc::clone(&store);
            tokio::task::spawn_blocking(move || {
                store
                    .commit(&commit.acked, &commit.quarantined, &commit.moves)
                    .map(|()| commit)
            })
            .await
            .map_err(|e| StateError::Task(e.to_string()))??
        };
        inflight.release_all(
            commit
                .acked
                .iter()
                .chain(commit.quarantined.iter().map(|q| &q.acked)),
        );
    }
    Ok(())
}

enum Delivery {
    Acked {
        duplicates: u64,
    },
    /// Too large, or refused without saying which: send each half on its own.
    Split,
    Refused {
        indexes: Vec<usize>,
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::BoxFuture;
    use crate::state::{BucketState, Span};
    use crate::upstream::contract::{BatchResponse, UpEvent};
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Mutex;

    type Rule = Box<dyn Fn(&BatchRequest, &str) -> Option<UpstreamError> + Send + Sync>;

    /// A scripted upstream: first plays `script`, then applies `rule` to every request.
    #[derive(Default)]
    struct FakeSink {
        script: Mutex<VecDeque<UpstreamError>>,
        rule: Option<Rule>,
        /// (batch_id, event ids, token) of every request.
        seen: Mutex<Vec<(Uuid, Vec<i64>, String)>>,
        stored: Mutex<Vec<i64>>,
    }

    impl BatchSink for FakeSink {
        fn send_batch<'a>(
            &'a self,
            token: &'a AccessToken,
            batch: &'a BatchRequest,
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
                if let Some(e) = self.rule.as_ref().and_then(|r| r(batch, token.secret())) {
                    return Err(e);
                }
                self.stored.lock().unwrap().extend(ids);
                Ok(BatchResponse {
                    accepted: batch.events.len() as u64,
                    duplicates: 0,
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
        fn refresh<'a>(
            &'a self,
            _r: &'a AccessToken,
        ) -> BoxFuture<'a, Result<AccessToken, AuthError>> {
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
        };
        let st: BucketState = store.bucket_state(&bucket, None).unwrap();
        assert_eq!(st.generation, 0);
        Rig {
            _dir: dir,
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
                bucket_id: "b".into(),
                event_id: id,
                hash: [id as u8; 16],
                span: Span {
                    start_ns: id * 1_000_000_000,
                    duration_ns: 1,
                },
            },
            event: UpEvent {
                bucket_id: "b".into(),
                event_id: id,
                hash: String::new(),
                timestamp: String::new(),
                duration: 1.0,
                data: crate::source::object_to_raw(&data),
            },
        }
    }

    fn mv(cursor_ns: i64) -> CursorMove {
        CursorMove {
            bucket_id: "b".into(),
            generation: 0,
            cursor_ns,
            window_ns: 1,
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
        };
        let (tx, rx) = super::super::queue(1000);
        let sending = async move {
            for i in items {
                match i {
                    Item::Events(e) => tx.send_events(e).await.unwrap(),
                    Item::Window(m) => tx.send_window(m).await.unwrap(),
                }
            }
        };
        let (_, result) = tokio::join!(sending, up.run(rx, AccessToken::new("t0")));
        result
    }

    fn cursor(r: &Rig) -> Option<i64> {
        let bucket = crate::source::Bucket {
            id: "b".into(),
            bucket_type: "t".into(),
            client: "c".into(),
            hostname: "h".into(),
            created: None,
            data: Default::default(),
        };
        r.store.bucket_state(&bucket, None).unwrap().cursor_ns
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
        items.push(Item::Window(mv(500)));
        let err = run(&r, 10, 2, items).await.unwrap_err();
        assert!(matches!(
            err,
            UploadError::Upstream(UpstreamError::Network(_))
        ));
        assert_eq!(r.sink.seen.lock().unwrap().len(), 3);
        assert!(r.store.lookup("b", &[1, 2]).unwrap().is_empty());
        assert_eq!(cursor(&r), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cursor_move_is_committed_with_the_batch_before_it() {
        let r = rig(FakeSink::default(), false);
        let mut items = events(1..3);
        items.push(Item::Window(mv(500)));
        items.extend(events(3..5));
        run(&r, 10, 0, items).await.unwrap();
        assert_eq!(cursor(&r), Some(500));
        assert_eq!(r.store.lookup("b", &[1, 2, 3, 4]).unwrap().len(), 4);
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
                .filter(|(_, e)| e.data_map().is_ok_and(|d| d.contains_key("poison")))
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
        items.push(Item::Window(mv(900)));
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
        };
        let (tx, rx) = super::super::queue(10);
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
}
