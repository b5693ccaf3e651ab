//! Reading a bucket newest first, page by page, and queueing what changed.
//!
//! Why newest first, with pages bounded by `end` only: aw-server-rust answers a range read
//! from its index `(bucketrow, starttime DESC, endtime)`, which bounds `starttime` from above
//! only. A page that names a `start` and finds fewer than `limit` events walks every older
//! event of the bucket before it gives up — O(bucket) per page. A page bounded by `end` alone
//! stops after `limit` rows, always. Python aw-server is indifferent.
//!
//! Page edges: a page ends at its oldest start `o`. The next page must include every event
//! starting at or before `o` (ties at `o` may have been cut by the limit), and aw-server clips
//! each returned event at the page's `end`. Asking for `end = o` would clip the event right
//! below the edge — in ActivityWatch data it usually ends exactly where the next one starts —
//! and make it look possibly clipped. So the next page ends one distinct start higher, at the
//! second-oldest start of this page: the events at the edge come back once more (and are
//! skipped by id), and the one below them is served whole. Only an event that overlaps the
//! edge event can still be clipped; it is fetched by id.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Ctx, ScanError, ScanStats, Scanner};
use crate::engine::queue::{Body, Outgoing, Pending};
use crate::source::{EventSource, PageEvent, PageQuery, RawPage, SourceError};
use crate::state::{
    hash::event_data_hash, ns_to_rfc3339, upstream_event_id, Acked, Known, Quarantined, Span,
};

/// Slack (ns) when comparing a returned end with the query's end: the servers round durations
/// through float seconds (Python to microseconds). Python also rounds the query's end *up* to
/// the next millisecond, so an end-clipped copy can end up to 1 ms after the query's end.
pub(super) const END_TOLERANCE: i64 = 2_000;
/// Python aw-server answers `end = E` with the events starting up to `E` + 1 ms.
const PYTHON_END_SLACK: i64 = 1_000_000;
/// Events queued at a time: a catch-up page's worth at once was a fresh allocation of a
/// megabyte, past glibc's mmap threshold, faulted in and unmapped for every page (5 % of a
/// 1M-event catch-up's CPU, perf), and all of it waited for room in the queue at once.
pub(super) const SEND_PIECE: usize = 500;
/// A page whose events all share one timestamp is re-read with a doubled limit, up to this
/// multiple of the page size.
const MAX_TIE_GROWTH: usize = 64;

pub(super) fn floor_us(ns: i64) -> i64 {
    ns - ns.rem_euclid(1_000)
}

pub(super) fn ceil_us(ns: i64) -> i64 {
    let f = floor_us(ns);
    if f == ns {
        ns
    } else {
        f.saturating_add(1_000)
    }
}

/// One read, newest first.
#[derive(Debug, Clone, Copy)]
pub(super) struct Plan {
    /// `start` of every query (`None`: unbounded, the cheap form); events starting before it
    /// come back clipped.
    pub start: Option<i64>,
    /// `end` of the first page (`None`: the newest events).
    pub end: Option<i64>,
    /// Stop once a page reaches below this start (`None`: go to the bottom).
    pub floor: Option<i64>,
    pub first_limit: usize,
    pub limit: usize,
    /// Stop after about this many events (verification steps).
    pub budget: Option<u64>,
    /// Count the events within this many ns of the newest one read ([`Outcome::near`]).
    pub near: Option<i64>,
    /// The newest start the state had covered before this read (a pass's `hi`): a new event
    /// starting at or below it is late ([`Outcome::late_new_ids`]).
    pub known_top: Option<i64>,
}

impl Plan {
    pub(super) fn query(&self, end: Option<i64>, limit: usize) -> PageQuery {
        PageQuery {
            start: self.start,
            end,
            limit: limit as u64,
        }
    }
}

/// How many of a page's last events the next query is guessed from: those at its two oldest
/// starts are enough, unless many events share them (then the guess is wrong and dropped).
pub(super) const AHEAD_TAIL: usize = 32;

/// A page being read in a task of its own: its request is sent and its body read while the
/// scan parses and processes the page before it (both on aw-server's side and on ours, in
/// turn, they were the catch-up's critical path: measured per thread, issue 9). Dropped
/// unread (a wrong guess, an error), it is cancelled.
///
/// A reading started with its plan asks for the page after it itself, as soon as its body is
/// in and [`Reading::go`] was called: the page's last events say which that is
/// ([`guess_next`]). Asked by the scan instead, that request waited for the scan's thread,
/// busy hashing the page before: 1.4–1.6 ms a page on average, aw-server idle meanwhile
/// (a 1M-event catch-up, measured per page). `go` keeps the pages in memory as many as
/// before: the scan calls it when it starts waiting for this page, where it used to ask for
/// the next one itself.
pub(super) struct Reading {
    pub(super) query: PageQuery,
    go: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(RawPage, Option<Reading>), SourceError>>,
}

impl Reading {
    pub(super) fn start(
        source: &Arc<dyn EventSource>,
        bucket: &str,
        query: PageQuery,
        chain: Option<Plan>,
    ) -> Reading {
        let read = source.page_raw(bucket, query);
        let (go, ready) = tokio::sync::oneshot::channel();
        let next = chain.map(|plan| (Arc::clone(source), bucket.to_owned(), plan));
        let task = tokio::spawn(async move {
            let raw = read.await?;
            let ahead = match next {
                Some((source, bucket, plan)) if ready.await.is_ok() => {
                    guess_next(&bucket, &plan, &raw, query.end, query.limit)
                        .map(|q| Reading::start(&source, &bucket, q, Some(plan)))
                }
                _ => None,
            };
            Ok((raw, ahead))
        });
        Reading {
            query,
            go: Some(go),
            task,
        }
    }

    /// Lets the task ask for the next page once this one is in.
    pub(super) fn go(&mut self) {
        if let Some(go) = self.go.take() {
            // Gone: the task failed or ended; its answer says so.
            let _ = go.send(());
        }
    }

    /// The page, with the reading of the page after it when the task started one.
    pub(super) async fn answer(mut self) -> Result<(RawPage, Option<Reading>), SourceError> {
        self.go();
        joined((&mut self.task).await, "read")
    }
}

/// A task's answer: its panic carried on here; a cancellation (only a runtime shutting down
/// cancels these tasks, and that ends the scan too) as an error naming what was cut.
fn joined<T>(
    answer: Result<Result<T, SourceError>, tokio::task::JoinError>,
    what: &str,
) -> Result<T, SourceError> {
    match answer {
        Ok(answer) => answer,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => Err(SourceError::Malformed {
                url: String::new(),
                detail: format!("the page's {what} was cancelled: {e}"),
            }),
        },
    }
}

impl Drop for Reading {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a read saw.
#[derive(Debug, Default)]
pub(super) struct Outcome {
    /// The newest start read (the first event of the first page).
    pub newest: Option<i64>,
    /// Every event with a start above this was read; `None`: everything down to the bottom.
    pub reached: Option<i64>,
    /// The ids (aw-server's) read, with their starts, when the caller asked for them.
    pub ids: Option<HashMap<i64, i64>>,
    /// Events read whose id the state did not know: what they add to aw-server's count.
    pub new_ids: u64,
    /// Of [`Outcome::new_ids`], those starting at or below [`Plan::known_top`]: inserted late
    /// since the state last agreed with aw-server, or there already and hidden from that
    /// agreement (an insert and a deletion between two cycles leave the count as it was). The
    /// count cannot tell which; `Scanner::scan` then compares every range.
    pub late_new_ids: u64,
    /// [`Plan::known_top`], for counting [`Outcome::late_new_ids`].
    known_top: Option<i64>,
    /// Distinct events read.
    pub events: u64,
    /// Events read within [`Plan::near`] of the newest (the next pass's first page size).
    pub near: u64,
}

/// After each page: what progress to report (the scan turns it into a [`crate::state::Mark`]).
/// `newest` is the newest start read so far, `oldest` the start above which everything is
/// read.
pub(super) trait Progress {
    async fn page_done(
        &mut self,
        scanner: &Scanner<'_>,
        newest: Option<i64>,
        oldest: i64,
    ) -> Result<(), ScanError>;
}

/// No progress marks (a slice read).
pub(super) struct NoProgress;

impl Progress for NoProgress {
    async fn page_done(
        &mut self,
        _: &Scanner<'_>,
        _: Option<i64>,
        _: i64,
    ) -> Result<(), ScanError> {
        Ok(())
    }
}

impl Scanner<'_> {
    /// Reads `plan`, processing every page, reporting `progress` after each.
    pub(super) async fn read(
        &self,
        ctx: &Ctx<'_>,
        plan: Plan,
        collect_ids: bool,
        progress: &mut impl Progress,
        stats: &mut ScanStats,
    ) -> Result<Outcome, ScanError> {
        let bucket = &ctx.bucket.id;
        let mut out = Outcome {
            ids: collect_ids.then(HashMap::new),
            known_top: plan.known_top,
            ..Default::default()
        };
        let mut end_q = plan.end.map(ceil_us);
        let mut limit = plan.first_limit.max(1);
        // Ids of the previous page that the current one returns again.
        let mut seen: HashSet<i64> = HashSet::new();
        let source = self.source.owned();
        stats.requests += 1;
        let (first, mut ahead) =
            Reading::start(&source, bucket, plan.query(end_q, limit), Some(plan))
                .answer()
                .await?;
        let mut page = parse(first).await?;
        loop {
            if ahead.is_some() {
                stats.requests += 1;
            }
            let full = page.len() >= limit;
            tracing::debug!(%bucket, ?end_q, limit, got = page.len(), "page");
            self.count_read(bucket, page.len() as u64, stats);
            let starts: Vec<i64> = page
                .iter()
                .filter_map(|e| e.timestamp.timestamp_nanos_opt())
                .collect();
            let oldest = starts.iter().copied().min();
            if out.newest.is_none() {
                out.newest = starts.iter().copied().max();
            }
            let below_floor = matches!((plan.floor, oldest), (Some(f), Some(o)) if o < f);
            let over_budget = plan
                .budget
                .is_some_and(|b| out.events + page.len() as u64 >= b);
            let next = match oldest {
                Some(o) if full && !below_floor && !over_budget => {
                    Some(next_query(bucket, &page, o, end_q, limit, plan.limit)?)
                }
                _ => None,
            };
            // The next page: already on its way when it was guessed right from this page's
            // tail; otherwise asked for now (a wrong guess is dropped, which cancels it).
            let reading = next.as_ref().map(|&(end, limit, _)| {
                let query = plan.query(Some(end), limit);
                let mut reading = match ahead.take() {
                    Some(a) if a.query == query => {
                        stats.read_ahead += 1;
                        a
                    }
                    wrong => {
                        if let Some(w) = wrong {
                            stats.read_ahead_wrong += 1;
                            tracing::debug!(%bucket, guessed = ?w.query, ?query, "the page read ahead was not the next one; dropped");
                        }
                        stats.requests += 1;
                        Reading::start(&source, bucket, query, Some(plan))
                    }
                };
                // Where the scan used to ask for the page after it.
                reading.go();
                reading
            });
            if ahead.take().is_some() {
                stats.read_ahead_wrong += 1;
            }
            let fetch_next = async {
                Some(match reading?.answer().await {
                    Ok((raw, ahead)) => (parse(raw).await, ahead),
                    Err(e) => (Err(e), None),
                })
            };
            let (processed, fetched) = tokio::join!(
                self.process_page(
                    ctx,
                    (plan.start, end_q, plan.near),
                    &seen,
                    page,
                    &mut out,
                    stats
                ),
                fetch_next
            );
            processed?;
            // Everything starting after the oldest start is read; ties at it maybe not.
            let reached = if next.is_none() && !full {
                None
            } else {
                oldest
            };
            out.reached = reached;
            if let Some(o) = reached {
                progress.page_done(self, out.newest, o).await?;
            }
            let (Some((next_end, next_limit, next_seen)), Some((fetched, next_ahead))) =
                (next, fetched)
            else {
                return Ok(out);
            };
            page = fetched?;
            ahead = next_ahead;
            end_q = Some(next_end);
            limit = next_limit;
            seen = next_seen;
        }
    }

    fn count_read(&self, bucket: &str, n: u64, stats: &mut ScanStats) {
        self.metrics.events_read.fetch_add(n, Ordering::Relaxed);
        self.metrics.source_requests.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .bucket(bucket)
            .read
            .fetch_add(n, Ordering::Relaxed);
        stats.read += n;
    }

    /// Hashes one page's events and queues those the upstream does not hold as they are.
    /// `bounds` are the query's start and end and the plan's [`Plan::near`].
    async fn process_page(
        &self,
        ctx: &Ctx<'_>,
        (start_q, end_q, near): (Option<i64>, Option<i64>, Option<i64>),
        seen: &HashSet<i64>,
        page: Vec<PageEvent>,
        out: &mut Outcome,
        stats: &mut ScanStats,
    ) -> Result<(), ScanError> {
        let (bucket, state) = (ctx.bucket, ctx.state);
        // What each event of the page is, kept beside the page: the events move from the page
        // straight into the vector that goes into the queue (a catch-up page is thousands of
        // events; each extra copy of it was a fresh allocation, faulted in).
        let meta: Vec<Option<(Span, i64, i64)>> = page
            .iter()
            .map(|ev| {
                let Some(id) = ev.id else {
                    tracing::warn!(bucket = %bucket.id, "aw-server returned an event without an id; skipped");
                    return None;
                };
                if seen.contains(&id) {
                    return None; // read whole on the previous page
                }
                let Some(ret) = Span::new(&ev.timestamp, ev.duration) else {
                    stats.unrepresentable += 1;
                    tracing::warn!(bucket = %bucket.id, id, timestamp = %ev.timestamp, duration = ev.duration,
                        "event cannot be represented (timestamp outside 1677-2262 or negative duration); skipped");
                    return None;
                };
                let Some(up_id) = upstream_event_id(state.generation, id) else {
                    tracing::warn!(bucket = %bucket.id, id, "event id out of range; skipped");
                    return None;
                };
                Some((ret, id, up_id))
            })
            .collect();
        // What the state holds of the copies that may be clipped, to skip fetching the
        // unchanged ones.
        let edges: Vec<i64> = meta
            .iter()
            .flatten()
            .filter(|c| clipped(start_q, end_q, c.0).any())
            .map(|c| c.2)
            .collect();
        let held = self.lookup(state.row, edges).await?;
        let mut piece = Vec::with_capacity(SEND_PIECE.min(meta.len()));
        let mut quarantined = Vec::new();
        for (ev, (ret, id, up_id)) in page
            .into_iter()
            .zip(meta)
            .filter_map(|(ev, m)| Some((ev, m?)))
        {
            let clip = clipped(start_q, end_q, ret);
            let event = if clip.any() {
                let known = held.get(&up_id).filter(|k| !k.deleted);
                if known.is_some_and(|k| clip.unchanged(k, ret, end_q)) {
                    // The part of an event the state holds that lies beyond this read's
                    // range is read by the read that covers it.
                    if let Some(ids) = out.ids.as_mut() {
                        ids.insert(id, known.map_or(ret.start_ns, |k| k.start_ns));
                    }
                    continue;
                }
                stats.requests += 1;
                stats.fetched += 1;
                tracing::debug!(bucket = %bucket.id, id, ?clip, "fetching a possibly clipped event by id");
                match self.source.event(&bucket.id, id).await {
                    Ok(Some(e)) => e,
                    Ok(None) | Err(SourceError::BucketNotFound(_)) => continue, // deleted meanwhile
                    Err(e) => return Err(e.into()),
                }
            } else {
                ev
            };
            let Some(span) = Span::new(&event.timestamp, event.duration) else {
                stats.unrepresentable += 1;
                continue;
            };
            if let Some(ids) = out.ids.as_mut() {
                ids.insert(id, span.start_ns);
            }
            out.events += 1;
            if let (Some(w), Some(newest)) = (near, out.newest) {
                if span.start_ns >= newest.saturating_sub(w) {
                    out.near += 1;
                }
            }
            // The range query returns what overlaps; an event that ended before `start_from`
            // (or at it, having started before) is not uploaded. One running across it is sent
            // whole: clipping it would invent an event aw-server never had.
            if let Some(s) = self.start_from_ns {
                if span.end_ns() <= s && span.start_ns < s {
                    continue;
                }
            }
            match self.prepare(ctx, id, up_id, span, event) {
                Ok(p) => {
                    piece.push(p);
                    if piece.len() >= SEND_PIECE {
                        let full = std::mem::replace(&mut piece, Vec::with_capacity(SEND_PIECE));
                        self.queue_piece(state.row, full, out, stats).await?;
                    }
                }
                Err(q) => quarantined.push(q),
            }
        }
        self.queue_piece(state.row, piece, out, stats).await?;
        if !quarantined.is_empty() {
            stats.quarantined += quarantined.len() as u64;
            stats.queued += quarantined.len() as u64;
            self.tx
                .send(crate::engine::queue::Item::Quarantine(quarantined))
                .await
                .map_err(|_| ScanError::UploaderGone)?;
        }
        Ok(())
    }

    /// Queues the versions of `piece` that are neither queued already nor recorded as they are.
    ///
    /// Claimed before the state is asked: the uploader records an acknowledgement before it
    /// releases the claim, so one of the two checks always sees the other side's work and a
    /// version is never queued twice.
    async fn queue_piece(
        &self,
        row: i64,
        mut piece: Vec<Pending>,
        out: &mut Outcome,
        stats: &mut ScanStats,
    ) -> Result<(), ScanError> {
        if piece.is_empty() {
            return Ok(());
        }
        self.inflight.claim_all(&mut piece);
        let known = self
            .lookup(row, piece.iter().map(|p| p.acked.event_id).collect())
            .await?;
        // Filtered in place: this vector is what goes into the queue.
        piece.retain(|p| {
            let a = &p.acked;
            match known.get(&a.event_id) {
                Some(k) if !k.deleted && k.hash == a.hash => {
                    self.inflight.release(a.row, a.event_id, a.hash);
                    false
                }
                Some(k) if !k.deleted => true,
                _ => {
                    out.new_ids += 1;
                    if out.known_top.is_some_and(|t| a.span.start_ns <= t) {
                        out.late_new_ids += 1;
                    }
                    true
                }
            }
        });
        stats.queued += piece.len() as u64;
        self.tx
            .send_events(piece)
            .await
            .map_err(|_| ScanError::UploaderGone)
    }

    /// The upload of one event, redacted and hashed; an event whose data cannot be walked
    /// (nested deeper than the hash allows, or not JSON after all) is set aside with the
    /// reason instead, so the events around it still flow.
    fn prepare(
        &self,
        ctx: &Ctx<'_>,
        id: i64,
        up_id: i64,
        span: Span,
        mut event: PageEvent,
    ) -> Result<Pending, Quarantined> {
        let bucket = ctx.bucket;
        let quarantine = |reason: String, data: &str| {
            tracing::warn!(bucket = %bucket.id, id, %reason, "event set aside in the quarantine (see --status)");
            Quarantined {
                acked: Acked {
                    row: ctx.state.row,
                    event_id: up_id,
                    // What identifies this unreadable version: its text.
                    hash: blake3_16(data),
                    span,
                },
                reason,
                event_json: format!(
                    "{{\"id\":{id},\"timestamp\":\"{}\",\"duration\":{},\"data\":{data}}}",
                    ns_to_rfc3339(span.start_ns),
                    event.duration
                ),
            }
        };
        // Redacted before hashing: the hash, and so the dedupe, is of what is sent.
        if !ctx.redaction.is_empty() {
            match ctx.redaction.apply_raw(&self.redaction_key, &event.data) {
                Ok(data) => event.data = data,
                Err(e) => {
                    let text = event.data.get().to_owned();
                    return Err(quarantine(
                        format!("event data cannot be redacted: {e}"),
                        &text,
                    ));
                }
            }
        }
        let hash = match event_data_hash(span, &event.data) {
            Ok(h) => h,
            Err(e) => {
                let text = event.data.get().to_owned();
                return Err(quarantine(
                    format!("event data cannot be hashed: {e}"),
                    &text,
                ));
            }
        };
        Ok(Pending {
            acked: Acked {
                row: ctx.state.row,
                event_id: up_id,
                hash,
                span,
            },
            body: Body::Event(Outgoing {
                bucket_id: std::sync::Arc::clone(&ctx.bucket_id),
                duration: event.duration,
                data: event.data,
            }),
            follows_queued: false,
        })
    }

    /// The state's record of these upstream ids, off the async threads.
    pub(super) async fn lookup(
        &self,
        row: i64,
        ids: Vec<i64>,
    ) -> Result<HashMap<i64, Known>, ScanError> {
        if ids.is_empty() {
            return Ok(Default::default());
        }
        let store = std::sync::Arc::clone(self.store);
        tokio::task::spawn_blocking(move || store.lookup(row, &ids))
            .await
            .map_err(|e| ScanError::State(crate::state::StateError::Task(e.to_string())))?
            .map_err(ScanError::State)
    }
}

/// A 128-bit BLAKE3 of text, for a version that cannot be hashed canonically.
fn blake3_16(text: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    out.copy_from_slice(&blake3::hash(text.as_bytes()).as_bytes()[..16]);
    out
}

/// Whether a returned copy may be clipped at the query's start or end.
#[derive(Debug, Clone, Copy)]
struct Clip {
    start: bool,
    end: bool,
}

fn clipped(start_q: Option<i64>, end_q: Option<i64>, ret: Span) -> Clip {
    Clip {
        // Unclipped copies start after the query's start and end before its end; anything at
        // or beyond either edge may be clipped, whichever server rounded how.
        start: start_q.is_some_and(|s| ret.start_ns <= s),
        end: end_q.is_some_and(|e| ret.end_ns() >= e - END_TOLERANCE),
    }
}

impl Clip {
    fn any(self) -> bool {
        self.start || self.end
    }

    /// Whether a possibly clipped copy shows nothing new about the event the state holds.
    /// Heartbeats only move an event's end, so a copy clipped at the start whose end is the
    /// recorded one is unchanged. A copy clipped at the end can hide growth, so it is fetched —
    /// unless this is a slice read (it has a start) and the recorded event reaches past the
    /// slice: then the slice above, which holds its end, shows any growth (its copy there is
    /// clipped at the start and compared by its end).
    fn unchanged(self, k: &Known, ret: Span, end_q: Option<i64>) -> bool {
        let beyond = end_q.is_some_and(|e| k.end_ns > e);
        match (self.start, self.end) {
            (true, false) => k.start_ns < ret.start_ns && k.end_ns == ret.end_ns(),
            (false, true) => false,
            _ => k.start_ns < ret.start_ns && beyond,
        }
    }
}

/// Parses a page on the blocking pool: the scan's own thread meanwhile processes the page
/// before (the two are joined in [`Scanner::read`]).
async fn parse(raw: RawPage) -> Result<Vec<PageEvent>, SourceError> {
    joined(
        tokio::task::spawn_blocking(move || raw.parse()).await,
        "parse",
    )
}

/// The query [`next_query`] will make after `raw`, read with `end_q` and `limit`, from its
/// last events alone ([`RawPage::tail`]); `None` when there will be none or it cannot tell.
/// A guess: the scan checks it against the parsed page before it uses its answer.
fn guess_next(
    bucket: &str,
    plan: &Plan,
    raw: &RawPage,
    end_q: Option<i64>,
    limit: u64,
) -> Option<PageQuery> {
    if plan.budget.is_some() {
        return None;
    }
    let limit = usize::try_from(limit).ok()?;
    let tail = raw.tail(AHEAD_TAIL)?;
    let o = tail
        .events
        .iter()
        .filter_map(|e| e.timestamp.timestamp_nanos_opt())
        .min()?;
    if !tail.may_fill(limit) || plan.floor.is_some_and(|f| o < f) {
        return None;
    }
    let (end, limit, _) = next_query(bucket, &tail.events, o, end_q, limit, plan.limit).ok()?;
    Some(plan.query(Some(end), limit))
}

/// The query after a full page whose oldest start is `o`: `(end, limit, ids of this page
/// the next one returns again)`.
fn next_query(
    bucket: &str,
    page: &[PageEvent],
    o: i64,
    end_q: Option<i64>,
    limit: usize,
    page_limit: usize,
) -> Result<(i64, usize, HashSet<i64>), ScanError> {
    let o2 = page
        .iter()
        .filter_map(|e| e.timestamp.timestamp_nanos_opt())
        .filter(|&s| s > o)
        .min();
    let q = o2.map_or(ceil_us(o), |o2| floor_us(o2).max(ceil_us(o)));
    let again = |q: i64| -> HashSet<i64> {
        page.iter()
            .filter(|e| {
                e.timestamp
                    .timestamp_nanos_opt()
                    .is_some_and(|s| s <= q.saturating_add(PYTHON_END_SLACK))
            })
            .filter_map(|e| e.id)
            .collect()
    };
    if end_q.map_or(true, |e| q < e) {
        let seen = again(q);
        return Ok((q, page_limit.max(1) + seen.len(), seen));
    }
    // Every event of the page starts in the last microsecond below the edge: the same
    // edge again with a wider page.
    let wider = limit.saturating_mul(2);
    if wider > page_limit.max(1).saturating_mul(MAX_TIE_GROWTH) {
        return Err(ScanError::TooManyTies(
            limit,
            bucket.to_owned(),
            ns_to_rfc3339(o),
        ));
    }
    let e = end_q.unwrap_or(q);
    Ok((e, wider, again(e)))
}
