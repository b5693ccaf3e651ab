//! Finding where aw-server and the state disagree without reading the history.
//!
//! The bucket's time range is cut into slices of about equal numbers of known events, and for
//! each slice aw-server is asked for one number the state can compute too:
//!
//! * Python aw-server honours `start`/`end` on `GET .../events/count`: the number of events
//!   overlapping the slice (one request per slice);
//! * aw-server-rust ignores them there, but its query API sums durations over many
//!   timeperiods in one request: `sum_durations(query_bucket(..))`, each event clipped to the
//!   slice.
//!
//! Slices that agree are done. One that disagrees is cut again, or, once it holds few events,
//! read whole: new and changed events are queued, and the events the state knows there that
//! aw-server no longer returns are deletions. Cuts are placed in the middle of an event (never
//! at an edge), so the servers' own rounding at range edges (Python compares end times as
//! millisecond strings) cannot make a slice look different.
//!
//! Which aggregate a server offers is found out once per cycle, by asking.

use std::collections::HashSet;

use super::pages::{floor_us, NoProgress, Plan};
use super::{Ctx, ScanError, ScanStats, Scanner};
use crate::engine::queue::{Body, Claim, Pending, DELETION};
use crate::state::mirror_aggregate as aggregate;
use crate::state::{upstream_event_id, Acked, Aggregate, MirrorEvent, Span, GENERATION_SHIFT};

/// Slices per round.
const K: usize = 16;
/// Rounds of cutting before a disagreeing slice is read whatever its size.
const ROUNDS: usize = 3;
/// 1970-01-01T00:00:00Z and 2200-01-01T00:00:00Z: the whole range, in bounds both servers
/// parse.
const LOWEST: i64 = 0;
const HIGHEST: i64 = 7_258_118_400 * 1_000_000_000;
/// A cut keeps this far from every edge of the event it is placed in.
const CUT_MARGIN: i64 = 1_000_000;
/// Sums through float seconds: closer than this counts as equal.
const SUM_TOLERANCE: i64 = 1_000_000;
/// Deletions confirmed by id one by one up to this many per slice; beyond, the slice read is
/// trusted (a mass deletion).
const CONFIRM_DELETIONS: usize = 32;

/// What this aw-server offers for narrowing down, learnt by asking once per cycle.
#[derive(Debug, Default, Clone, Copy)]
pub struct Caps {
    /// `Some(kind)` once known; `Some(None)`: nothing works, leave it to the verification.
    pub aggregate: Option<Option<Aggregate>>,
}

/// What narrowing found and queued.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Found {
    pub new: u64,
    pub deleted: u64,
}

impl Found {
    pub fn any(&self) -> bool {
        self.new > 0 || self.deleted > 0
    }
}

impl Scanner<'_> {
    /// Finds the differences between aw-server and the state, newest first: the range the
    /// pass just read from `floor` up (a deletion there changes no event it read), then spans
    /// below it that double from a day, down to the bottom — each asked about as a whole, and
    /// cut and read only where it differs. Stops once what was found accounts for `delta`, the
    /// count's difference from what the state expected (when known), so a late insert from
    /// yesterday costs a few requests whatever the bucket's size, and only a change at the
    /// very bottom costs a walk over all of it.
    pub(super) async fn narrow(
        &self,
        ctx: &Ctx<'_>,
        count: u64,
        delta: Option<i64>,
        floor: Option<i64>,
        stats: &mut ScanStats,
    ) -> Result<Found, ScanError> {
        let mut found = Found::default();
        let Some(kind) = self.aggregate_kind(ctx, count, stats).await? else {
            tracing::info!(bucket = %ctx.bucket.id,
                "this aw-server offers no ranged counts or sums: the verification will find the difference");
            return Ok(found);
        };
        let mut mirror = {
            let store = std::sync::Arc::clone(self.store);
            let (row, generation) = (ctx.state.row, ctx.state.generation);
            tokio::task::spawn_blocking(move || store.mirror(row, generation))
                .await
                .map_err(|e| ScanError::State(crate::state::StateError::Task(e.to_string())))??
        };
        mirror.sort_unstable_by_key(|e| e.start_ns);
        let lo = self.start_from_ns.map_or(LOWEST, floor_us);
        for group in groups(&mirror, lo, floor) {
            let f = self.narrow_range(ctx, &mirror, group, kind, stats).await?;
            found.new += f.new;
            found.deleted += f.deleted;
            if found.any() && delta == Some(found.new as i64 - found.deleted as i64) {
                break;
            }
        }
        Ok(found)
    }

    /// One range: asked about whole, then cut into [`K`] slices where it differs, down to
    /// slices small enough to read.
    async fn narrow_range(
        &self,
        ctx: &Ctx<'_>,
        mirror: &[MirrorEvent],
        range: (i64, i64),
        kind: Aggregate,
        stats: &mut ScanStats,
    ) -> Result<Found, ScanError> {
        let mut found = Found::default();
        let mut slices = vec![range];
        for round in 0..=ROUNDS {
            let theirs = self.server_aggregate(ctx, kind, &slices, stats).await?;
            let ours = aggregate(mirror, &slices, kind);
            let mut next = Vec::new();
            for (i, &slice) in slices.iter().enumerate() {
                if agree(kind, theirs[i], ours[i]) {
                    continue;
                }
                let known = starting_in(mirror, slice).count();
                tracing::debug!(bucket = %ctx.bucket.id, ?slice, theirs = theirs[i], ours = ours[i], known, round, "slice differs");
                let parts = cut(mirror, slice);
                if known <= 2 * self.page_size || round == ROUNDS || parts.len() < 2 {
                    let f = self.read_slice(ctx, mirror, slice, stats).await?;
                    found.new += f.new;
                    found.deleted += f.deleted;
                } else {
                    next.extend(parts);
                }
            }
            if next.is_empty() {
                break;
            }
            slices = next;
        }
        Ok(found)
    }

    /// Ranged counts when the server honours the range (asked with a range that holds
    /// nothing: the whole-bucket count back means it does not), else sums through the query
    /// API when it answers, else nothing.
    async fn aggregate_kind(
        &self,
        ctx: &Ctx<'_>,
        count: u64,
        stats: &mut ScanStats,
    ) -> Result<Option<Aggregate>, ScanError> {
        let known = self
            .caps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .aggregate;
        if let Some(kind) = known {
            return Ok(kind);
        }
        let bucket = &ctx.bucket.id;
        stats.requests += 1;
        let empty = self
            .source
            .count(bucket, Some((HIGHEST - 1_000, HIGHEST)))
            .await?;
        let kind = if count > 0 && empty == 0 {
            Some(Aggregate::PythonCount)
        } else {
            stats.requests += 1;
            match self
                .source
                .sum_durations(bucket, &[(LOWEST, HIGHEST)])
                .await
            {
                Ok(_) => Some(Aggregate::ClippedSum),
                Err(e) => {
                    tracing::debug!(%bucket, "no sums from the query API: {e}");
                    None
                }
            }
        };
        self.caps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .aggregate = Some(kind);
        Ok(kind)
    }

    async fn server_aggregate(
        &self,
        ctx: &Ctx<'_>,
        kind: Aggregate,
        slices: &[(i64, i64)],
        stats: &mut ScanStats,
    ) -> Result<Vec<i64>, ScanError> {
        let bucket = &ctx.bucket.id;
        match kind {
            Aggregate::PythonCount => {
                let mut out = Vec::with_capacity(slices.len());
                for &s in slices {
                    stats.requests += 1;
                    let n = self.source.count(bucket, Some(s)).await?;
                    out.push(i64::try_from(n).unwrap_or(i64::MAX));
                }
                Ok(out)
            }
            Aggregate::ClippedSum => {
                stats.requests += 1;
                let sums = self.source.sum_durations(bucket, slices).await?;
                Ok(sums
                    .into_iter()
                    .map(|s| (s * 1e9).round().clamp(i64::MIN as f64, i64::MAX as f64) as i64)
                    .collect())
            }
        }
    }

    /// Reads one slice whole: queues what is new or changed (the usual processing) and the
    /// deletions of the events the state knows there that aw-server no longer returns.
    async fn read_slice(
        &self,
        ctx: &Ctx<'_>,
        mirror: &[MirrorEvent],
        (s, t): (i64, i64),
        stats: &mut ScanStats,
    ) -> Result<Found, ScanError> {
        stats.slices_read += 1;
        let plan = Plan {
            start: Some(s),
            end: Some(t),
            floor: None,
            first_limit: self.page_size,
            limit: self.page_size,
            budget: None,
            near: None,
            known_top: None,
        };
        let out = self.read(ctx, plan, true, &mut NoProgress, stats).await?;
        let seen: HashSet<i64> = out
            .ids
            .as_ref()
            .map(|ids| ids.keys().copied().collect())
            .unwrap_or_default();
        let mask = (1i64 << GENERATION_SHIFT) - 1;
        let gone: Vec<(i64, i64)> = starting_in(mirror, (s, t))
            .filter(|e| !seen.contains(&(e.event_id & mask)))
            .map(|e| (e.event_id, e.start_ns))
            .collect();
        let deleted = self.tombstones(ctx, gone, stats).await?;
        Ok(Found {
            new: out.new_ids,
            deleted,
        })
    }

    /// Queues the deletion of events the state knows (`(upstream id, start)`) that a read of
    /// their range did not return. A few are first asked for by id (an event replaced through
    /// the API keeps its id but may have moved); many at once are a mass deletion, and the
    /// read is trusted.
    pub(super) async fn tombstones(
        &self,
        ctx: &Ctx<'_>,
        gone: Vec<(i64, i64)>,
        stats: &mut ScanStats,
    ) -> Result<u64, ScanError> {
        let mask = (1i64 << GENERATION_SHIFT) - 1;
        let confirm = gone.len() <= CONFIRM_DELETIONS;
        let mut deletions = Vec::new();
        for (event_id, start_ns) in gone {
            let aw_id = event_id & mask;
            if upstream_event_id(ctx.state.generation, aw_id) != Some(event_id) {
                continue;
            }
            if confirm {
                stats.requests += 1;
                if self.source.event(&ctx.bucket.id, aw_id).await?.is_some() {
                    continue;
                }
            }
            let acked = Acked {
                row: ctx.state.row,
                event_id,
                hash: DELETION,
                span: Span {
                    start_ns,
                    duration_ns: 0,
                },
            };
            let claim = self.inflight.claim(acked.row, acked.event_id, DELETION);
            if claim.is_taken() {
                deletions.push(Pending {
                    acked,
                    body: Body::Deletion {
                        bucket_id: std::sync::Arc::clone(&ctx.bucket_id),
                    },
                    follows_queued: claim == Claim::Replacing,
                });
            }
        }
        let n = deletions.len() as u64;
        if n > 0 {
            tracing::info!(bucket = %ctx.bucket.id, deleted = n,
                "events deleted in aw-server: telling the upstream");
            stats.deleted += n;
            self.tx
                .send_events(deletions)
                .await
                .map_err(|_| ScanError::UploaderGone)?;
        }
        Ok(n)
    }
}

fn agree(kind: Aggregate, theirs: i64, ours: i64) -> bool {
    match kind {
        Aggregate::PythonCount => theirs == ours,
        Aggregate::ClippedSum => theirs.abs_diff(ours) <= SUM_TOLERANCE as u64,
    }
}

fn starting_in(mirror: &[MirrorEvent], (s, t): (i64, i64)) -> impl Iterator<Item = &MirrorEvent> {
    mirror
        .iter()
        .filter(move |e| e.start_ns >= s && (e.start_ns < t || t == HIGHEST))
}

/// The ranges [`Scanner::narrow`] looks at, newest first: `[floor, HIGHEST]`, then below the
/// floor spans of 1, 2, 4, … days, the last reaching down to `lo` once a span would reach below
/// the oldest event the state knows (below it, one range: the doubling would only go on asking
/// about decades of nothing). Each boundary is moved into the middle of a nearby event (see
/// [`cut`]) when one is there.
fn groups(sorted: &[MirrorEvent], lo: i64, floor: Option<i64>) -> Vec<(i64, i64)> {
    let Some(floor) = floor.filter(|&f| f > lo) else {
        return vec![(lo, HIGHEST)];
    };
    let oldest = sorted.first().map_or(i64::MAX, |e| e.start_ns);
    let mut bounds = vec![HIGHEST, snap(sorted, floor)];
    let mut span = DAY;
    loop {
        let last = *bounds.last().unwrap_or(&lo);
        let next = last.saturating_sub(span);
        if next <= lo || next < oldest {
            bounds.push(lo);
            break;
        }
        let b = snap(sorted, next);
        if b < last && b > lo {
            bounds.push(b);
        }
        span = span.saturating_mul(2);
    }
    bounds
        .windows(2)
        .map(|w| (w[1], w[0]))
        .filter(|(a, b)| a < b)
        .collect()
}

/// `t`, or the middle of an event near it that is long enough to be cut clear of every edge:
/// the servers' rounding at a range's edge (Python compares end times as millisecond strings)
/// must not make a slice look different.
fn snap(sorted: &[MirrorEvent], t: i64) -> i64 {
    let refs: Vec<&MirrorEvent> = sorted.iter().collect();
    if clear_of_edges(&refs, t) {
        return floor_us(t);
    }
    let at = sorted.partition_point(|e| e.start_ns <= t);
    let near = sorted[at.saturating_sub(8)..(at + 8).min(sorted.len())].iter();
    near.filter_map(|e| {
        let mid = floor_us(e.start_ns + (e.end_ns - e.start_ns) / 2);
        (mid - e.start_ns >= CUT_MARGIN
            && e.end_ns - mid >= CUT_MARGIN
            && clear_of_edges(&refs, mid))
        .then_some(mid)
    })
    .min_by_key(|m| (m - t).abs())
    .unwrap_or_else(|| floor_us(t))
}

const DAY: i64 = 86_400 * 1_000_000_000;

/// `[s, t]` cut into up to [`K`] slices of about equal numbers of known events, each cut in
/// the middle of an event at least 2 ms long, away from every edge. Adjacent slices share
/// their cut (events across it count in both, on the server as in the state).
fn cut(mirror: &[MirrorEvent], (s, t): (i64, i64)) -> Vec<(i64, i64)> {
    let mut inside: Vec<&MirrorEvent> = starting_in(mirror, (s, t)).collect();
    inside.sort_unstable_by_key(|e| e.start_ns);
    let mut cuts = vec![s];
    for i in 1..K {
        let at = i * inside.len() / K;
        // The quantile event, or the nearest long enough one after it.
        let Some(c) = inside.iter().skip(at).take(8).find_map(|e| {
            let mid = floor_us(e.start_ns + (e.end_ns - e.start_ns) / 2);
            (mid - e.start_ns >= CUT_MARGIN && e.end_ns - mid >= CUT_MARGIN).then_some(mid)
        }) else {
            continue;
        };
        let last = cuts.last().copied().unwrap_or(s);
        if c > last && c < t && clear_of_edges(&inside, c) {
            cuts.push(c);
        }
    }
    cuts.push(t);
    cuts.windows(2).map(|w| (w[0], w[1])).collect()
}

/// No event starts or ends within [`CUT_MARGIN`] of `c`.
fn clear_of_edges(events: &[&MirrorEvent], c: i64) -> bool {
    events
        .iter()
        .all(|e| (e.start_ns - c).abs() >= CUT_MARGIN && (e.end_ns - c).abs() >= CUT_MARGIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn ev(id: i64, start: i64, end: i64) -> MirrorEvent {
        MirrorEvent {
            event_id: id,
            start_ns: start,
            end_ns: end,
            hash: [0; 16],
        }
    }

    #[test]
    fn cuts_fall_inside_events_and_split_evenly() {
        // 160 adjacent 10-second events.
        let m: Vec<_> = (0..160)
            .map(|i| ev(i, i * 10 * S, (i + 1) * 10 * S))
            .collect();
        let slices = cut(&m, (0, HIGHEST));
        assert_eq!(slices.len(), K);
        assert_eq!(slices.first().map(|s| s.0), Some(0));
        assert_eq!(slices.last().map(|s| s.1), Some(HIGHEST));
        for w in slices.windows(2) {
            assert_eq!(w[0].1, w[1].0, "slices share their cut");
        }
        for &(_, c) in &slices[..K - 1] {
            assert_eq!(c % (10 * S), 5 * S, "in the middle of an event: {c}");
        }
        // Each slice holds about 10 events (the event a cut falls in counts for the slice
        // it starts in).
        for &sl in &slices {
            let n = starting_in(&m, sl).count();
            assert!((9..=11).contains(&n), "{sl:?}: {n}");
        }
        assert_eq!(
            slices
                .iter()
                .map(|&sl| starting_in(&m, sl).count())
                .sum::<usize>(),
            160
        );
    }

    #[test]
    fn groups_go_down_from_the_floor_in_doubling_spans() {
        // Ten-second events over 20 days.
        let m: Vec<_> = (0..172_800)
            .map(|i| ev(i, i * 10 * S, (i + 1) * 10 * S))
            .collect();
        let floor = 20 * DAY - 3_600 * S;
        // A floor on an event's edge moves into the middle of a neighbour; one clear of every
        // edge stays.
        assert_eq!(groups(&m, 0, Some(floor + 3 * S))[0].0, floor + 3 * S);
        let g = groups(&m, 0, Some(floor));
        assert_eq!(g[0].1, HIGHEST);
        assert_eq!(
            g[0].0 % (10 * S),
            5 * S,
            "snapped into an event: {}",
            g[0].0
        );
        assert!((g[0].0 - floor).abs() < 20 * S);
        for w in g.windows(2) {
            assert_eq!(w[0].0, w[1].1, "contiguous: {g:?}");
        }
        assert_eq!(g.last().map(|r| r.0), Some(0));
        let spans: Vec<i64> = g[1..g.len() - 1]
            .iter()
            .map(|r| (r.1 - r.0 + DAY / 2) / DAY)
            .collect();
        assert_eq!(spans, vec![1, 2, 4, 8], "{g:?}");
        // No floor: one range.
        assert_eq!(groups(&m, 0, None), vec![(0, HIGHEST)]);
        // Nothing known that old: the doubling stops below the oldest known event, and one
        // range reaches down to the bottom.
        let late: Vec<_> = m
            .iter()
            .map(|e| ev(e.event_id, e.start_ns + 1_000 * DAY, e.end_ns + 1_000 * DAY))
            .collect();
        let g = groups(&late, 0, Some(floor + 1_000 * DAY));
        assert_eq!(g.len(), 6, "1, 2, 4 and 8 days, then the rest: {g:?}");
        assert_eq!(g.last().map(|r| r.0), Some(0));
        assert_eq!(
            groups(&[], 0, Some(floor)),
            vec![(floor, HIGHEST), (0, floor)]
        );
    }

    #[test]
    fn zero_length_events_are_never_cut() {
        let m: Vec<_> = (0..64).map(|i| ev(i, i * S, i * S)).collect();
        assert_eq!(cut(&m, (0, HIGHEST)), vec![(0, HIGHEST)]);
    }

    #[test]
    fn sums_agree_within_a_millisecond_counts_exactly() {
        assert!(agree(Aggregate::ClippedSum, 5 * S, 5 * S + 999_999));
        assert!(!agree(Aggregate::ClippedSum, 5 * S, 5 * S + 1_000_001));
        assert!(!agree(Aggregate::PythonCount, 3, 4));
    }
}
