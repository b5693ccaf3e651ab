//! Reading one bucket from aw-server: which events are new, changed or gone since the state
//! last agreed with it — whatever their timestamps, and at a cost aw-server-rust can carry.
//!
//! The read position follows the data, never the wall clock: a bucket's state remembers the
//! start of the newest event a completed pass covered (`top`). Each cycle:
//!
//! 1. An interrupted pass (a crash, a failed upload) goes on from where it was recorded.
//! 2. The bucket listing (its `metadata` end on aw-server-rust, `last_updated` on Python) and
//!    one whole-bucket count are compared with what the state recorded when it last agreed with
//!    aw-server. Equal: nothing was added, grown or deleted, and the cycle reads nothing more
//!    — one request per bucket.
//! 3. Otherwise a pass reads newest first ([`pages`]) down to `top - lookback`: new events,
//!    the growth of the newest one and inserts near the newest data, whatever their
//!    timestamps (a clock that stepped back, a watcher that delivered late).
//! 4. Once everything read is acknowledged, the count must equal what the state knew plus the
//!    new events. When it does not, something changed deeper down — a back-dated insert, a
//!    deletion: [`narrow`] finds the time slices where aw-server and the state disagree, a few
//!    requests at a time, and reads only those.
//! 5. A background verification ([`Verify`]) re-reads the history at a bounded rate and
//!    catches what no count shows (an old event's data rewritten in place).

mod narrow;
mod pages;

use std::sync::{Arc, Mutex};

use super::queue::{InFlight, QueueTx};
use super::Metrics;
use crate::privacy::Redaction;
use crate::source::{Bucket, EventSource, SourceError};
use crate::state::{BucketState, Mark, Pass, StateError, Store};
use pages::{NoProgress, Plan, Progress};

pub use narrow::Caps;

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
    /// Events aw-server returned (including copies re-read at page edges).
    pub read: u64,
    /// Events found new or changed: queued for upload, or set aside in the quarantine.
    pub queued: u64,
    /// Events fetched by id because the range query may have clipped them.
    pub fetched: u64,
    /// Events that cannot be represented (timestamp outside 1677–2262, negative duration).
    pub unrepresentable: u64,
    /// Events whose data cannot be read or hashed, set aside in the quarantine.
    pub quarantined: u64,
    /// Deletions found (events the state knew that aw-server no longer has).
    pub deleted: u64,
    /// Time slices read because aw-server and the state disagreed about them.
    pub slices_read: u64,
    /// Events re-read by the background verification.
    pub verified: u64,
    /// Of `queued` and `deleted`, what the verification found different.
    pub verify_differed: u64,
    pub requests: u64,
    /// Pages asked for before the page above them was parsed, from its last events, and used.
    pub read_ahead: u64,
    /// Such guesses that the parsed page proved wrong: dropped (cancelled) and asked again.
    pub read_ahead_wrong: u64,
    /// Nothing had changed: the cycle only compared the listing and the count.
    pub settled: bool,
}

/// How much of the history the background verification re-reads this cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verify {
    #[default]
    Off,
    /// About this many events per bucket, going on from where the last step stopped.
    Step(u64),
    /// Everything, now (`--verify`).
    Full,
}

pub(crate) struct Scanner<'a> {
    pub source: &'a dyn EventSource,
    pub store: &'a Arc<Store>,
    pub inflight: &'a InFlight,
    pub metrics: &'a Metrics,
    pub tx: &'a QueueTx,
    /// Events per request when few are expected (the newest events of a settled bucket).
    pub page_size: usize,
    /// Events per request while catching up.
    pub catchup_page: usize,
    pub lookback_ns: i64,
    pub start_from_ns: Option<i64>,
    /// Keys the hashes of redacted fields ([`crate::privacy::keyed_hash`]).
    pub redaction_key: [u8; 32],
    pub verify: Verify,
    /// What this aw-server offers for narrowing down, learnt once per cycle.
    pub caps: &'a Mutex<Caps>,
}

/// One bucket being read: what every page is judged against.
pub(super) struct Ctx<'a> {
    pub bucket: &'a Bucket,
    /// `bucket.id`, shared by every version queued from this bucket.
    pub bucket_id: std::sync::Arc<str>,
    pub state: &'a BucketState,
    pub redaction: &'a Redaction,
}

/// The marks a pass records after each page: every event with a start in `(pos, hi]` is read.
struct PassProgress {
    row: i64,
    generation: u32,
    hi: Option<i64>,
    floor: Option<i64>,
}

impl Progress for PassProgress {
    async fn page_done(
        &mut self,
        scanner: &Scanner<'_>,
        newest: Option<i64>,
        oldest: i64,
    ) -> Result<(), ScanError> {
        let hi = match (self.hi, newest) {
            (Some(a), Some(b)) => a.max(b),
            (a, b) => a.or(b).unwrap_or(oldest),
        };
        scanner
            .tx
            .mark(Mark::Pass {
                row: self.row,
                generation: self.generation,
                pass: Pass {
                    hi,
                    pos: oldest,
                    floor: self.floor,
                },
            })
            .await
            .map_err(|_| ScanError::UploaderGone)
    }
}

/// The marks of a verification step.
struct VerifyProgress {
    row: i64,
    generation: u32,
}

impl Progress for VerifyProgress {
    async fn page_done(
        &mut self,
        scanner: &Scanner<'_>,
        _: Option<i64>,
        oldest: i64,
    ) -> Result<(), ScanError> {
        scanner
            .tx
            .mark(Mark::Verify {
                row: self.row,
                generation: self.generation,
                pos: Some(oldest),
            })
            .await
            .map_err(|_| ScanError::UploaderGone)
    }
}

/// What one pass found.
struct PassResult {
    /// The newest start covered (`i64::MIN` for an empty bucket).
    top: i64,
    new_ids: u64,
    /// Of `new_ids`, those starting at or below the top the pass started from.
    late_new_ids: u64,
    /// Distinct events read.
    events: u64,
    /// It read down to the bucket's first event.
    bottom: bool,
}

/// The top of an empty bucket: reading it again always starts from the newest event.
const EMPTY: i64 = i64::MIN;
/// Events per step of a full verification.
const FULL_CHUNK: u64 = 50_000;

impl Scanner<'_> {
    /// Brings the state of `bucket` (read under generation `state.generation`) in line with
    /// aw-server: queues what changed, records how far it got.
    pub async fn scan(
        &self,
        bucket: &Bucket,
        state: &BucketState,
        redaction: &Redaction,
    ) -> Result<ScanStats, ScanError> {
        let ctx = Ctx {
            bucket,
            bucket_id: bucket.id.as_str().into(),
            state,
            redaction,
        };
        let mut stats = ScanStats::default();
        let mut new_ids = 0u64;
        let mut top = state.top_ns;
        if let Some(pass) = state.pass {
            tracing::debug!(bucket = %bucket.id, ?pass, "going on with an interrupted pass");
            let r = self
                .pass(&ctx, Some(pass.pos), Some(pass.hi), pass.floor, &mut stats)
                .await?;
            new_ids += r.new_ids;
            top = Some(top.map_or(r.top, |t| t.max(r.top)));
        }
        stats.requests += 1;
        let count = self.source.count(&bucket.id, None).await?;
        let listing = bucket.listing_fingerprint();
        let settled = state.pass.is_none()
            && top.is_some()
            && listing.is_some()
            && listing == state.listing_fp
            && Some(count) == state.count;
        if settled {
            stats.settled = true;
            self.verify_step(&ctx, &mut stats).await?;
            return Ok(stats);
        }
        let floor = self.floor_below(top);
        // A pass that reads the whole bucket knows what the count must be — when the state
        // knew no event of it before (else some it knew may be gone).
        let knew_nothing = top.is_none() && {
            let store = Arc::clone(self.store);
            let (row, generation) = (state.row, state.generation);
            tokio::task::spawn_blocking(move || store.mirror_is_empty(row, generation))
                .await
                .map_err(|e| ScanError::State(StateError::Task(e.to_string())))??
        };
        let r = self.pass(&ctx, None, top, floor, &mut stats).await?;
        new_ids += r.new_ids;
        // A late event (new, yet starting at or below the top this pass started from) may have
        // been inserted since the state last agreed with aw-server — or been there already,
        // hidden from a cycle that saw the count and the listing unchanged because another
        // event was deleted between the two cycles. Counted as new, such an event would stand
        // in for that deletion: a back-dated insert the count does show would be taken for
        // it and never looked for. So after a late event the count proves nothing and every
        // range is compared (a request or two per range where nothing differs).
        let late = r.late_new_ids > 0;
        if top.is_none() {
            if let Some(s) = self.start_from_ns.filter(|_| !r.bottom) {
                // Events running across `start_from` are sent whole; the pass stopped at the
                // first that starts before it, and longer ones start earlier still.
                let plan = Plan {
                    start: Some(s),
                    end: Some(s),
                    floor: None,
                    first_limit: self.page_size,
                    limit: self.page_size,
                    budget: None,
                    near: None,
                    known_top: None,
                };
                let out = self
                    .read(&ctx, plan, false, &mut NoProgress, &mut stats)
                    .await?;
                new_ids += out.new_ids;
            }
        }
        // Otherwise the count must be what the state knew plus what is new.
        let expected = if r.bottom && floor.is_none() && knew_nothing {
            Some(r.events)
        } else if late {
            None
        } else {
            state.count.map(|c| c + new_ids)
        };
        self.reconcile(&ctx, listing, count, expected, floor, &mut stats)
            .await?;
        self.verify_step(&ctx, &mut stats).await?;
        Ok(stats)
    }

    /// Where a pass stops: `lookback` below the newest data covered (inserts there are read
    /// by every pass), never below `start_from`. `None`: the bucket's first event.
    fn floor_below(&self, top: Option<i64>) -> Option<i64> {
        let below = top.map(|t| t.saturating_sub(self.lookback_ns));
        match (below, self.start_from_ns) {
            (Some(b), Some(s)) => Some(b.max(s)),
            (b, s) => b.or(s),
        }
    }

    /// One pass, newest first: from `from` (a recorded position; `None`: the newest event)
    /// down to `floor`. `hi` is the newest start already known to be covered.
    async fn pass(
        &self,
        ctx: &Ctx<'_>,
        from: Option<i64>,
        hi: Option<i64>,
        floor: Option<i64>,
        stats: &mut ScanStats,
    ) -> Result<PassResult, ScanError> {
        let state = ctx.state;
        // A settled bucket's newest events fit in a page about the size of what the last
        // pass saw near its top; a catch-up reads big pages.
        let first_limit = match (from, hi, state.top_limit) {
            (None, Some(_), Some(n)) => {
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                n.saturating_add((n / 4).max(16)).min(self.page_size)
            }
            (None, Some(_), None) => self.page_size,
            _ => self.catchup_page,
        };
        let plan = Plan {
            start: None,
            end: from,
            floor,
            first_limit,
            limit: self.catchup_page,
            budget: None,
            near: Some(self.lookback_ns),
            // A pass from the newest event: what it finds at or below the top it started from
            // is late. A resumed pass is the rest of a catch-up: none of it is.
            known_top: if from.is_none() { hi } else { None },
        };
        let mut progress = PassProgress {
            row: state.row,
            generation: state.generation,
            hi,
            floor,
        };
        let out = self.read(ctx, plan, false, &mut progress, stats).await?;
        let top = match (hi, out.newest) {
            (Some(a), Some(b)) => a.max(b),
            (a, b) => a.or(b).unwrap_or(EMPTY),
        };
        let top_limit = out.near;
        self.tx
            .mark(Mark::Top {
                row: state.row,
                generation: state.generation,
                top_ns: top,
                top_limit,
            })
            .await
            .map_err(|_| ScanError::UploaderGone)?;
        Ok(PassResult {
            top,
            new_ids: out.new_ids,
            late_new_ids: out.late_new_ids,
            events: out.events,
            bottom: out.reached.is_none(),
        })
    }

    /// After everything read is acknowledged: when aw-server's count is what the state
    /// expects, record that they agree; otherwise narrow down where they differ.
    async fn reconcile(
        &self,
        ctx: &Ctx<'_>,
        listing: Option<String>,
        count: u64,
        expected: Option<u64>,
        floor: Option<i64>,
        stats: &mut ScanStats,
    ) -> Result<(), ScanError> {
        let state = ctx.state;
        let agreed = |count| Mark::Agreed {
            row: state.row,
            generation: state.generation,
            listing_fp: listing.clone(),
            count,
        };
        if expected == Some(count) {
            return self.mark(agreed(count)).await;
        }
        // The mirror must hold everything read so far before it is compared.
        self.tx
            .barrier()
            .await
            .map_err(|_| ScanError::UploaderGone)?;
        // Events added while the pass read are counted now.
        stats.requests += 1;
        let count = self.source.count(&ctx.bucket.id, None).await?;
        if expected == Some(count) {
            return self.mark(agreed(count)).await;
        }
        if expected.is_some() {
            tracing::info!(bucket = %ctx.bucket.id, count, ?expected,
                "aw-server's count differs from what the state knows: looking for inserts and deletions below the newest data");
        } else {
            tracing::info!(bucket = %ctx.bucket.id, count,
                "the count cannot tell what changed (a late event was read, or no count was recorded yet): comparing aw-server and the state range by range");
        }
        let delta = expected.map(|e| count as i64 - e as i64);
        let found = self.narrow(ctx, count, delta, floor, stats).await?;
        let after = expected.map(|e| (e + found.new).saturating_sub(found.deleted));
        // Nothing found, or everything explained: aw-server's count is the new baseline
        // (what cannot be seen through the aggregates — an event that cannot be represented,
        // one of zero duration on aw-server-rust — is left to the verification). Found but
        // not explained: the state's own figure, so the next cycle looks again.
        let baseline = match after {
            Some(a) if found.any() && a != count => a,
            _ => count,
        };
        self.mark(agreed(baseline)).await
    }

    async fn mark(&self, m: Mark) -> Result<(), ScanError> {
        self.tx.mark(m).await.map_err(|_| ScanError::UploaderGone)
    }

    /// One step of the background verification: re-reads and re-hashes up to the step's
    /// budget, going down from where the last step stopped, and compares the events read with
    /// what the state knows in that range (the deletions a count cannot see, when an insert
    /// elsewhere made up for them). Wraps around at the bottom. A full verification
    /// (`--verify`) goes down in steps of [`FULL_CHUNK`], so the ids it compares stay few.
    async fn verify_step(&self, ctx: &Ctx<'_>, stats: &mut ScanStats) -> Result<(), ScanError> {
        let (budget, full) = match self.verify {
            Verify::Off => return Ok(()),
            Verify::Step(n) => (n.max(1), false),
            Verify::Full => (FULL_CHUNK, true),
        };
        let state = ctx.state;
        let limit = self
            .catchup_page
            .min(usize::try_from(budget).unwrap_or(usize::MAX));
        let mut from = state.verify_pos;
        loop {
            let plan = Plan {
                start: None,
                end: from,
                floor: None,
                first_limit: limit,
                limit,
                budget: Some(budget),
                near: None,
                known_top: None,
            };
            let mut progress = VerifyProgress {
                row: state.row,
                generation: state.generation,
            };
            let before = stats.queued + stats.deleted;
            let out = self.read(ctx, plan, true, &mut progress, stats).await?;
            stats.verified += out.events;
            // What the state knows in the range just read, and the read did not return.
            let known = {
                let store = Arc::clone(self.store);
                let (row, generation, above) = (state.row, state.generation, out.reached);
                tokio::task::spawn_blocking(move || {
                    store.mirror_range(row, generation, above, from)
                })
                .await
                .map_err(|e| ScanError::State(StateError::Task(e.to_string())))??
            };
            let mask = (1i64 << crate::state::GENERATION_SHIFT) - 1;
            let gone: Vec<(i64, i64)> = known
                .into_iter()
                .filter(|(id, _)| {
                    out.ids
                        .as_ref()
                        .map_or(true, |seen| !seen.contains_key(&(id & mask)))
                })
                .collect();
            self.tombstones(ctx, gone, stats).await?;
            let differed = (stats.queued + stats.deleted).saturating_sub(before);
            if differed > 0 {
                stats.verify_differed += differed;
                tracing::warn!(bucket = %ctx.bucket.id, differed,
                    "verification found events that differ from what the upstream holds; sending them");
            }
            match out.reached {
                None => {
                    return self
                        .mark(Mark::Verify {
                            row: state.row,
                            generation: state.generation,
                            pos: None,
                        })
                        .await;
                }
                Some(r) if full => from = Some(r),
                Some(_) => return Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests;
