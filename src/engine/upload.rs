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
use super::{InFlight, Item, Metrics, Pending};
use crate::auth::{AccessToken, AuthError, TokenSource};
use crate::state::{Acked, CursorMove, Quarantined, StateError, Store};
use crate::upstream::contract::{BatchRequest, BucketMeta};
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
    pub async fn run(
        self,
        mut rx: mpsc::Receiver<Item>,
        mut token: AccessToken,
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
                        self.flush(&mut batch, &mut moves, &mut token, &mut stats)
                            .await?;
                        continue;
                    }
                }
            };
            match next {
                None => {
                    self.flush(&mut batch, &mut moves, &mut token, &mut stats)
                        .await?;
                    return Ok(stats);
                }
                Some(Item::Event(p)) => {
                    batch.push(p);
                    if batch.len() >= self.batch_size {
                        self.flush(&mut batch, &mut moves, &mut token, &mut stats)
                            .await?;
                    }
                }
                Some(Item::Window(m)) => {
                    moves.push(m);
                    if batch.is_empty() {
                        self.flush(&mut batch, &mut moves, &mut token, &mut stats)
                            .await?;
                    }
                }
            }
        }
    }

    /// Delivers `batch`, then commits its acknowledgement with the cursor moves that were
    /// waiting for it.
    async fn flush(
        &self,
        batch: &mut Vec<Pending>,
        moves: &mut Vec<CursorMove>,
        token: &mut AccessToken,
        stats: &mut UploadStats,
    ) -> Result<(), UploadError> {
        let events = std::mem::take(batch);
        let mut chunks: VecDeque<Vec<Pending>> = VecDeque::new();
        if !events.is_empty() {
            chunks.push_back(events);
        }
        while let Some(chunk) = chunks.pop_front() {
            match self.deliver(&chunk, token, stats).await? {
                Delivery::Acked { duplicates } => {
                    stats.delivered += chunk.len() as u64;
                    stats.duplicates += duplicates;
                    self.count_delivered(&chunk);
                    let acked: Vec<Acked> = chunk.iter().map(|p| p.acked.clone()).collect();
                    self.commit(acked, Vec::new(), Vec::new()).await?;
                    self.release(&chunk);
                }
                Delivery::Split => {
                    let mut first = chunk;
                    let second = first.split_off(first.len() / 2);
                    chunks.push_front(second);
                    chunks.push_front(first);
                }
                Delivery::Refused { indexes, reason } => {
                    let (bad, good): (Vec<_>, Vec<_>) = chunk
                        .into_iter()
                        .enumerate()
                        .partition(|(i, _)| indexes.contains(i));
                    let bad: Vec<Pending> = bad.into_iter().map(|(_, p)| p).collect();
                    let good: Vec<Pending> = good.into_iter().map(|(_, p)| p).collect();
                    stats.quarantined += bad.len() as u64;
                    for p in &bad {
                        tracing::warn!(bucket = %p.acked.bucket_id, event_id = p.acked.event_id,
                            %reason, "the upstream refused an event; it is quarantined (see --status)");
                    }
                    let quarantined = bad
                        .iter()
                        .map(|p| Quarantined {
                            acked: p.acked.clone(),
                            reason: reason.clone(),
                            event_json: serde_json::to_string(&p.event).unwrap_or_default(),
                        })
                        .collect();
                    self.commit(Vec::new(), quarantined, Vec::new()).await?;
                    self.release(&bad);
                    if !good.is_empty() {
                        chunks.push_front(good);
                    }
                }
            }
        }
        if !moves.is_empty() {
            self.commit(Vec::new(), Vec::new(), std::mem::take(moves))
                .await?;
        }
        Ok(())
    }

    /// Per-bucket delivery counters for progress displays: one map lookup per run of events
    /// of the same bucket (a batch is usually one run).
    fn count_delivered(&self, chunk: &[Pending]) {
        let mut rest = chunk;
        while let Some(first) = rest.first() {
            let id = &first.acked.bucket_id;
            let n = rest.iter().take_while(|p| &p.acked.bucket_id == id).count();
            self.metrics.delivered(id, n as u64);
            rest = &rest[n..];
        }
    }

    fn release(&self, chunk: &[Pending]) {
        for p in chunk {
            self.inflight
                .release(&p.acked.bucket_id, p.acked.event_id, p.acked.hash);
        }
    }

    async fn commit(
        &self,
        acked: Vec<Acked>,
        quarantined: Vec<Quarantined>,
        moves: Vec<CursorMove>,
    ) -> Result<(), UploadError> {
        if self.dry_run {
            return Ok(());
        }
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || store.commit(&acked, &quarantined, &moves))
            .await
            .map_err(|e| StateError::Task(e.to_string()))??;
        Ok(())
    }

    /// Sends one chunk until the upstream answers something final for it.
    async fn deliver(
        &self,
        chunk: &[Pending],
        token: &mut AccessToken,
        stats: &mut UploadStats,
    ) -> Result<Delivery, UploadError> {
        let request = self.request(chunk);
        let mut attempt = 0u32;
        let mut refreshed = false;
        loop {
            if !refreshed {
                // Cheap for every source; lets a login session refresh ahead of expiry, so a
                // long catch-up never sends a token that is about to lapse.
                *token = self.tokens.token().await?;
            }
            stats.requests += 1;
            let err = match self.upstream.send_batch(token, &request).await {
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
                UpstreamError::TooLarge if chunk.len() > 1 => return Ok(Delivery::Split),
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
                        .filter(|i| *i < chunk.len())
                        .collect();
                    if !indexes.is_empty() {
                        return Ok(Delivery::Refused {
                            indexes,
                            reason: format!("{status}: {message}"),
                        });
                    }
                    if chunk.len() == 1 {
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

    fn request(&self, chunk: &[Pending]) -> BatchRequest {
        let mut buckets = BTreeMap::new();
        for p in chunk {
            if !buckets.contains_key(&p.event.bucket_id) {
                if let Some(meta) = self.buckets.get(&p.event.bucket_id) {
                    buckets.insert(p.event.bucket_id.clone(), meta.clone());
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
            events: chunk.iter().map(|p| p.event.clone()).collect(),
        }
    }
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
                data,
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
        let (tx, rx) = mpsc::channel(1000);
        for i in items {
            tx.send(i).await.unwrap();
        }
        drop(tx);
        up.run(rx, AccessToken::new("t0")).await
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
        ids.map(|i| Item::Event(pending(i, false))).collect()
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
                .filter(|(_, e)| e.data.contains_key("poison"))
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
            .map(|i| Item::Event(pending(i, bad.contains(&i))))
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
        let (tx, rx) = mpsc::channel(10);
        let task = tokio::spawn(up.run(rx, AccessToken::new("t0")));
        tx.send(Item::Event(pending(1, false))).await.unwrap();
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
