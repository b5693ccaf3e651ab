//! Reading one bucket from aw-server: which events are new or changed since the cursor.
//!
//! aw-server answers a range query with every event that *overlaps* the range, newest first,
//! clipped to the range. So the scan:
//!
//! * walks forward in time windows `[a, b)` (one open window `[a, ∞)` at the end, and in the
//!   steady state only that one), so the cursor can move after each window while a big backlog
//!   is caught up, and memory stays bounded by one page;
//! * pages backwards inside a window with `end = ` the oldest start seen, remembering the ids
//!   already handled at that edge, so events sharing a timestamp across a page edge are neither
//!   lost nor repeated (aw-sync drops them);
//! * never trusts a copy that may be clipped — its start equals the query start, or its end
//!   equals the query end — and fetches such an event by id for its true extent (aw-sync uploads
//!   the clipped copy and loses the rest of the duration);
//! * hashes what it reads and skips what the state says the upstream already holds unchanged,
//!   or what is already queued.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::{InFlight, Metrics, Pending, QueueTx};
use crate::privacy::Redaction;
use crate::source::object_to_raw;
use crate::source::{AwClient, Bucket, PageEvent, SourceError};
use crate::state::{
    event_hash_raw, hash_hex, ns_to_rfc3339, upstream_event_id, Acked, BucketState, CursorMove,
    Known, Span, StateError, Store,
};
use crate::upstream::contract::UpEvent;
use std::sync::atomic::Ordering;

const SECOND: i64 = 1_000_000_000;
const DAY: i64 = 86_400 * SECOND;
const MIN_WINDOW: i64 = SECOND;
const MAX_WINDOW: i64 = 30 * DAY;
/// Slack (ns) when comparing a returned end with the query's end: the servers round durations
/// through float seconds (Python to microseconds). Python also rounds the query's end *up* to
/// the next millisecond, so an end-clipped copy can end up to 1 ms after the query's end.
const END_TOLERANCE: i64 = 2_000;
/// A page whose events all share one timestamp is re-read with a doubled limit, up to this
/// multiple of the page size.
const MAX_TIE_GROWTH: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("more than {0} events of bucket {1} share the timestamp {2}")]
    TooManyTies(usize, String, String),
    /// The uploader stopped (its own error says why); reading has no point.
    #[error("the uploader stopped")]
    UploaderGone,
}

/// What a scan of one bucket saw.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScanStats {
    /// Events aw-server returned (including copies re-read at edges).
    pub read: u64,
    /// Events queued for upload (new or changed).
    pub queued: u64,
    /// Events fetched by id because the range query clipped them.
    pub fetched: u64,
    /// Events that cannot be represented (timestamp outside 1677–2262, negative duration).
    pub unrepresentable: u64,
    pub requests: u64,
}

pub(crate) struct Scanner<'a> {
    pub source: &'a AwClient,
    pub store: &'a Arc<Store>,
    pub inflight: &'a InFlight,
    pub metrics: &'a Metrics,
    pub tx: &'a QueueTx,
    pub page_size: usize,
    pub lookback_ns: i64,
    pub start_from_ns: Option<i64>,
    /// Keys the hashes of redacted fields ([`crate::privacy::keyed_hash`]).
    pub redaction_key: [u8; 32],
}

fn floor_us(ns: i64) -> i64 {
    ns - ns.rem_euclid(1_000)
}

fn at(ns: i64) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp_nanos(ns)
}

impl Scanner<'_> {
    /// Scans `bucket` (read under generation `state.generation`) up to `now`.
    pub async fn scan(
        &self,
        bucket: &Bucket,
        state: &BucketState,
        redaction: &Redaction,
        now: DateTime<Utc>,
    ) -> Result<ScanStats, ScanError> {
        let mut stats = ScanStats::default();
        let t0 = floor_us(now.timestamp_nanos_opt().unwrap_or(i64::MAX));
        let from = state.cursor_ns.map(|c| c.saturating_sub(self.lookback_ns));
        let from = match (from, self.start_from_ns) {
            (Some(f), Some(s)) => Some(f.max(s)),
            (f, s) => f.or(s),
        };
        let lo = match from {
            Some(f) => floor_us(f),
            None => match self.earliest(&bucket.id, &mut stats).await? {
                Some(lo) => lo,
                None => {
                    // An empty bucket: everything before now is delivered.
                    self.mark(bucket, state, t0, state.window_ns.unwrap_or(DAY))
                        .await?;
                    return Ok(stats);
                }
            },
        };
        let mut a = lo;
        let mut width = state.window_ns.unwrap_or(DAY).clamp(MIN_WINDOW, MAX_WINDOW);
        // Close to now, one open window: a steady-state cycle is one request per bucket.
        let open_span = (2 * self.lookback_ns).max(DAY);
        loop {
            let open = t0.saturating_sub(a) <= open_span || a.saturating_add(width) >= t0;
            let b = (!open).then(|| a + width);
            let window = Window {
                bucket,
                state,
                redaction,
                a,
                b,
            };
            let n = self.scan_window(window, &mut stats).await?;
            let page = self.page_size as u64;
            if !open {
                if n > 2 * page {
                    width = (width / 2).max(MIN_WINDOW);
                } else if n < page / 2 {
                    width = width.saturating_mul(2).min(MAX_WINDOW);
                }
            }
            let cursor = b.unwrap_or(t0);
            self.mark(bucket, state, cursor, width).await?;
            match b {
                Some(b) => a = b,
                None => return Ok(stats),
            }
        }
    }

    /// The state's record of these upstream ids, off the async threads.
    async fn lookup(
        &self,
        bucket_id: &str,
        ids: Vec<i64>,
    ) -> Result<std::collections::HashMap<i64, Known>, ScanError> {
        if ids.is_empty() {
            return Ok(Default::default());
        }
        let store = Arc::clone(self.store);
        let bucket_id = bucket_id.to_string();
        tokio::task::spawn_blocking(move || store.lookup(&bucket_id, &ids))
            .await
            .map_err(|e| ScanError::State(StateError::Task(e.to_string())))?
            .map_err(ScanError::State)
    }

    async fn mark(
        &self,
        bucket: &Bucket,
        state: &BucketState,
        cursor_ns: i64,
        window_ns: i64,
    ) -> Result<(), ScanError> {
        self.tx
            .send_window(CursorMove {
                bucket_id: bucket.id.clone(),
                generation: state.generation,
                cursor_ns,
                window_ns,
            })
            .await
            .map_err(|_| ScanError::UploaderGone)
    }

    /// A time at or before the bucket's oldest event start, found by probing backwards with
    /// exponentially growing steps (aw-server only serves newest-first); `None` when empty.
    async fn earliest(
        &self,
        bucket_id: &str,
        stats: &mut ScanStats,
    ) -> Result<Option<i64>, ScanError> {
        stats.requests += 1;
        let newest = self
            .source
            .get_events(bucket_id, None, None, Some(1))
            .await?;
        let Some(first) = newest.first() else {
            return Ok(None);
        };
        let mut oldest_seen = first.timestamp.timestamp_nanos_opt().unwrap_or(i64::MIN);
        let mut step = DAY;
        for _ in 0..64 {
            let probe = floor_us(oldest_seen.saturating_sub(step));
            if probe == i64::MIN || probe <= floor_us(i64::MIN + 1_000) {
                return Ok(Some(probe));
            }
            stats.requests += 1;
            let older = self
                .source
                .get_events(bucket_id, None, Some(at(probe)), Some(1))
                .await?;
            match older.first() {
                None => return Ok(Some(probe)),
                Some(e) => oldest_seen = e.timestamp.timestamp_nanos_opt().unwrap_or(i64::MIN),
            }
            step = step.saturating_mul(2);
        }
        Ok(Some(floor_us(oldest_seen.saturating_sub(step))))
    }

    /// Reads window `[a, b)` (`b = None`: open) page by page, queueing what changed. Returns the
    /// number of events aw-server returned.
    ///
    /// The next page's query depends only on the current page's oldest start, so it is sent
    /// as soon as the current page is parsed and read while that page is hashed, looked up
    /// and queued: aw-server's time to answer overlaps with ours instead of adding to it.
    async fn scan_window(
        &self,
        window: Window<'_>,
        stats: &mut ScanStats,
    ) -> Result<u64, ScanError> {
        let Window { bucket, a, b, .. } = window;
        let mut end_q = b;
        let mut limit = self.page_size;
        // Ids already handled whose (returned) start equals the current page edge.
        let mut edge_ids: HashSet<i64> = HashSet::new();
        let mut returned = 0u64;
        stats.requests += 1;
        let mut page = self.fetch(bucket, a, end_q, limit).await?;
        loop {
            let full = page.len() >= limit;
            tracing::debug!(bucket = %bucket.id, a, ?end_q, limit, got = page.len(), "page");
            self.metrics
                .events_read
                .fetch_add(page.len() as u64, Ordering::Relaxed);
            self.metrics.source_requests.fetch_add(1, Ordering::Relaxed);
            self.metrics
                .bucket(&bucket.id)
                .read
                .fetch_add(page.len() as u64, Ordering::Relaxed);
            returned += page.len() as u64;
            stats.read += page.len() as u64;
            let min_start = page
                .iter()
                .filter_map(|e| e.timestamp.timestamp_nanos_opt())
                .min();
            // The ids at this page's oldest start: the next page (which ends there) returns
            // them again.
            let page_edge_ids: HashSet<i64> = match min_start {
                Some(edge) => page
                    .iter()
                    .filter(|e| e.timestamp.timestamp_nanos_opt() == Some(edge))
                    .filter_map(|e| e.id)
                    .collect(),
                None => HashSet::new(),
            };
            let mut tie_error = None;
            let next = match (full, min_start) {
                (true, Some(edge)) if end_q == Some(edge) => {
                    // The whole page shared the edge timestamp: widen the page, same edge.
                    let wider = limit.saturating_mul(2);
                    if wider > self.page_size.saturating_mul(MAX_TIE_GROWTH) {
                        tie_error = Some(ScanError::TooManyTies(
                            limit,
                            bucket.id.clone(),
                            ns_to_rfc3339(edge),
                        ));
                        None
                    } else {
                        let mut ids = edge_ids.clone();
                        ids.extend(page_edge_ids);
                        Some((end_q, wider, ids))
                    }
                }
                (true, Some(edge)) => Some((Some(edge), self.page_size, page_edge_ids)),
                _ => None,
            };
            if next.is_some() {
                stats.requests += 1;
            }
            let fetch_next = async {
                match &next {
                    Some((end, limit, _)) => Some(self.fetch(bucket, a, *end, *limit).await),
                    None => None,
                }
            };
            let (processed, fetched) = tokio::join!(
                self.process_page(window, end_q, &edge_ids, page, stats),
                fetch_next
            );
            processed?;
            if let Some(e) = tie_error {
                return Err(e);
            }
            let (Some((next_end, next_limit, next_ids)), Some(fetched)) = (next, fetched) else {
                return Ok(returned);
            };
            page = fetched?;
            end_q = next_end;
            limit = next_limit;
            edge_ids = next_ids;
        }
    }

    async fn fetch(
        &self,
        bucket: &Bucket,
        a: i64,
        end_q: Option<i64>,
        limit: usize,
    ) -> Result<Vec<PageEvent>, SourceError> {
        self.source
            .get_events_as(&bucket.id, Some(at(a)), end_q.map(at), Some(limit as u64))
            .await
    }

    /// Hashes one page's events and queues those the upstream does not hold as they are.
    async fn process_page(
        &self,
        window: Window<'_>,
        end_q: Option<i64>,
        edge_ids: &HashSet<i64>,
        page: Vec<PageEvent>,
        stats: &mut ScanStats,
    ) -> Result<(), ScanError> {
        let Window {
            bucket,
            state,
            redaction,
            a,
            b,
        } = window;
        let mut candidates = Vec::with_capacity(page.len());
        for ev in page {
            let Some(id) = ev.id else {
                tracing::warn!(bucket = %bucket.id, "aw-server returned an event without an id; skipped");
                continue;
            };
            let Some(ret) = Span::new(&ev.timestamp, ev.duration) else {
                stats.unrepresentable += 1;
                tracing::warn!(bucket = %bucket.id, id, timestamp = %ev.timestamp, duration = ev.duration,
                    "event cannot be represented (timestamp outside 1677-2262 or negative duration); skipped");
                continue;
            };
            if end_q == Some(ret.start_ns) && edge_ids.contains(&id) {
                continue; // seen on the previous page
            }
            if b.is_some_and(|b| ret.start_ns >= b) {
                continue; // starts at the window's end: the next window's
            }
            let Some(up_id) = upstream_event_id(state.generation, id) else {
                tracing::warn!(bucket = %bucket.id, id, "event id out of range; skipped");
                continue;
            };
            candidates.push((ev, ret, id, up_id));
        }

        // What the upstream holds of the straddlers at the window start, to skip fetching
        // the unchanged ones (usually none or one per page).
        let straddlers: Vec<i64> = candidates
            .iter()
            .filter(|c| c.1.start_ns <= a)
            .map(|c| c.3)
            .collect();
        let held = self.lookup(&bucket.id, straddlers).await?;
        let mut claimed = Vec::with_capacity(candidates.len());
        for (ev, ret, id, up_id) in candidates {
            // Unclipped copies start after `a` and end before the query's end; anything at
            // or beyond either edge may be a clipped copy, whichever server rounded how.
            let clipped_start = ret.start_ns <= a;
            let clipped_end = end_q.is_some_and(|e| ret.end_ns() >= e - END_TOLERANCE);
            let event = if clipped_start || clipped_end {
                // A straddler at the window start whose end is what the upstream holds is
                // unchanged (heartbeats only move the end): skip the extra request, which
                // keeps an idle cycle at one request per bucket.
                // Only with a cursor: a bucket read from the start (first time, or its filters
                // changed) must re-hash even a same-span straddler, whose redaction may have
                // changed.
                if clipped_start
                    && !clipped_end
                    && state.cursor_ns.is_some()
                    && held
                        .get(&up_id)
                        .is_some_and(|k| k.start_ns < a && k.end_ns == ret.end_ns())
                {
                    continue;
                }
                stats.requests += 1;
                stats.fetched += 1;
                tracing::debug!(bucket = %bucket.id, id, clipped_start, clipped_end, "fetching a possibly clipped event by id");
                match self.source.get_event(&bucket.id, id).await {
                    Ok(Some(e)) => PageEvent::from_event(e),
                    Ok(None) | Err(SourceError::BucketNotFound(_)) => continue, // deleted meanwhile
                    Err(e) => return Err(e.into()),
                }
            } else {
                ev
            };
            // The range query returns what overlaps the window; an event that ended before
            // `start_from` (or at it, having started before) is not uploaded. One running
            // across it is sent whole: clipping it would invent an event aw-server never had.
            let Some(span) = Span::new(&event.timestamp, event.duration) else {
                stats.unrepresentable += 1;
                continue;
            };
            if let Some(s) = self.start_from_ns {
                if span.end_ns() <= s && span.start_ns < s {
                    continue;
                }
            }
            // Redacted before hashing: the hash, and so the dedupe, is of what is sent.
            let mut event = event;
            if !redaction.is_empty() {
                let mut data = event.data_map().map_err(|e| malformed(&bucket.id, id, e))?;
                redaction.apply(&self.redaction_key, &mut data);
                event.data = object_to_raw(&data);
            }
            let hash =
                event_hash_raw(span, &event.data).map_err(|e| malformed(&bucket.id, id, e))?;
            if b.is_some_and(|b| span.start_ns >= b) {
                continue;
            }
            // Claim before asking the state: the uploader records an acknowledgement before
            // it releases the claim, so one of the two checks always sees the other side's
            // work and a version is never queued twice.
            if self.inflight.claim(&bucket.id, up_id, hash) {
                claimed.push(make_pending(bucket, up_id, hash, span, event));
            }
        }
        let known = self
            .lookup(
                &bucket.id,
                claimed.iter().map(|p| p.acked.event_id).collect(),
            )
            .await?;
        let mut batch = Vec::with_capacity(claimed.len());
        for p in claimed {
            let a = &p.acked;
            if known.get(&a.event_id).is_some_and(|k| k.hash == a.hash) {
                self.inflight.release(&a.bucket_id, a.event_id, a.hash);
            } else {
                batch.push(p);
            }
        }
        stats.queued += batch.len() as u64;
        self.tx
            .send_events(batch)
            .await
            .map_err(|_| ScanError::UploaderGone)?;

        Ok(())
    }
}

/// One time window `[a, b)` of one bucket (`b = None`: open-ended), read under the bucket's
/// state and redaction: what every page of the window is judged against.
#[derive(Clone, Copy)]
struct Window<'w> {
    bucket: &'w Bucket,
    state: &'w BucketState,
    redaction: &'w Redaction,
    a: i64,
    b: Option<i64>,
}

/// Event data that parsed once (serde_json checked it when the page was read) and not again:
/// only possible through a bug, reported as a malformed answer rather than a panic.
fn malformed(bucket: &str, id: i64, e: serde_json::Error) -> ScanError {
    ScanError::Source(SourceError::Malformed {
        url: format!("bucket {bucket}, event {id}"),
        detail: format!("event data: {e}"),
    })
}

fn make_pending(
    bucket: &Bucket,
    event_id: i64,
    hash: [u8; 16],
    span: Span,
    event: PageEvent,
) -> Pending {
    Pending {
        acked: Acked {
            bucket_id: bucket.id.clone(),
            event_id,
            hash,
            span,
        },
        event: UpEvent {
            bucket_id: bucket.id.clone(),
            event_id,
            hash: hash_hex(&hash),
            timestamp: ns_to_rfc3339(span.start_ns),
            duration: event.duration,
            data: event.data,
        },
    }
}
