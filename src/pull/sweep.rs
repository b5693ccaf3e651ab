//! The sweep: what an interrupted pull left in aw-server. Inserts are the pull's one write
//! that is not idempotent, so each is recorded (span, number of events, when) before it is
//! sent and done with when its page is committed. A recorded insert that was never committed
//! (the sidecar killed, or the request failed) may have written some, all or none of its
//! events — and may still be writing them: aw-server finishes a request whose client died
//! (Python aw-server 0.12 writes a list 100 events at a time, each its own commit, in its own
//! thread; a request can also wait in aw-server's socket before it is read). The sweep deletes
//! every event of such a span that no mapping names, and keeps the record until it has seen as
//! many events as were sent: an insert still landing after the sweep (when the page has been
//! applied again) is found by the next sweep — the one at the end of this pull, or the next
//! cycle's — and its events deleted then, each counted against the record. The mappings name
//! the page's new copies (by id, or by print for Python's), so they are kept and the late ones
//! go, on both servers (aw-server-rust writes a list in one transaction: all or none).
//!
//! A record whose events never all land (the request was cut before aw-server read it whole,
//! or aw-server died writing it) is given up [`LANDING`] after it was sent: no request runs
//! that long.

use std::collections::{HashMap, HashSet};

use chrono::TimeDelta;

use super::apply::{db, Puller, SLACK};
use super::copies::{self, at};
use super::PullError;
use crate::source::SourceError;
use crate::state::{CopyPrint, PendingInsert};

/// How long after it was sent an interrupted insert is still watched for events landing late.
/// aw-server writes a page (1,000 events) in well under a second; this leaves room for a
/// machine under load, and costs a watched bucket one read per cycle until then.
pub(super) const LANDING: TimeDelta = TimeDelta::minutes(10);

/// What a sweep did.
#[derive(Debug, Default)]
pub(super) struct Swept {
    /// Events deleted: written by an interrupted pull and never recorded.
    pub deleted: u64,
    /// Interrupted inserts some of whose events may still land.
    pub waiting: usize,
}

impl Puller<'_> {
    /// Sweeps every pending insert of the destination (see the module docs). At the start of
    /// a pull every pending insert is an interrupted one: this pull has sent nothing yet.
    pub(super) async fn sweep(&self) -> Result<Swept, PullError> {
        let dest = self.dest;
        let pending = db(self.store, move |s| s.pull_pending(dest)).await?;
        let mut out = Swept::default();
        if pending.is_empty() {
            return Ok(out);
        }
        let names: HashMap<i64, String> = db(self.store, move |s| s.pull_buckets(dest))
            .await?
            .into_iter()
            .map(|b| (b.row, b.local_bucket))
            .collect();
        let now = self.clock.now().timestamp();
        let mut unseen = 0;
        for p in pending {
            // A bucket gone (forgotten, or deleted in aw-server) has nothing left to land in.
            let found = match names.get(&p.row) {
                Some(name) => self.sweep_span(name, &p).await?,
                None => None,
            };
            let deleted = found.unwrap_or(0);
            out.deleted += deleted;
            let left = p.unseen - deleted as i64;
            let age = now - p.sent_at;
            // A clock that stepped back counts as past the limit: swept once, as a record
            // without a time.
            let watching =
                found.is_some() && left > 0 && (0..=LANDING.num_seconds()).contains(&age);
            if watching {
                out.waiting += 1;
                unseen += left;
            }
            let id = p.id;
            db(self.store, move |s| {
                s.pull_pending_left(id, watching.then_some(left))
            })
            .await?;
        }
        if out.deleted > 0 {
            tracing::warn!(
                swept = out.deleted,
                "pull: deleted the events an interrupted pull had written but not recorded; they are written again"
            );
        }
        if out.waiting > 0 {
            tracing::info!(
                inserts = out.waiting,
                events = unseen,
                "pull: an interrupted pull's inserts may still be landing in aw-server; what lands is deleted by the next sweep"
            );
        }
        Ok(out)
    }

    /// Deletes every event of the pending insert's span that no mapping names; a copy whose id
    /// was never said (Python aw-server) is named by its print: it is found, recorded, and
    /// kept. Returns how many it deleted; `None` when the bucket is gone.
    async fn sweep_span(&self, name: &str, p: &PendingInsert) -> Result<Option<u64>, PullError> {
        let row = p.row;
        let (lo, hi) = (at(p.start_ns) - SLACK, at(p.end_ns) + SLACK);
        let events = match self.source.get_events(name, Some(lo), Some(hi), None).await {
            Err(SourceError::BucketNotFound(_)) => return Ok(None),
            other => other?,
        };
        let ids: Vec<i64> = events.iter().filter_map(|e| e.id).collect();
        let known = db(self.store, move |s| s.pull_known_local(row, &ids)).await?;
        // An event aw-server answered cut at a bound of the read started or ended outside
        // the span: not one of the interrupted inserts.
        let unknown: Vec<(i64, CopyPrint)> = events
            .iter()
            .filter(|e| e.timestamp > lo && e.end() < hi)
            .filter_map(|e| {
                e.id.filter(|id| !known.contains(id))
                    .map(|id| (id, copies::print_of(e)))
            })
            .collect();
        if unknown.is_empty() {
            return Ok(Some(0));
        }
        let (lo_ns, hi_ns) = (
            lo.timestamp_nanos_opt().unwrap_or(i64::MIN),
            hi.timestamp_nanos_opt().unwrap_or(i64::MAX),
        );
        let unresolved = db(self.store, move |s| {
            s.pull_unresolved_between(row, lo_ns, hi_ns)
        })
        .await?;
        let wanted: Vec<(i64, CopyPrint)> =
            unresolved.into_iter().map(|(id, _, p)| (id, p)).collect();
        let pairs = copies::pair(&wanted, unknown.clone());
        let named: HashSet<i64> = pairs.iter().map(|p| p.1).collect();
        if !pairs.is_empty() {
            db(self.store, move |s| s.pull_resolve(row, &pairs)).await?;
        }
        let mut deleted = 0;
        for (id, _) in unknown {
            if !named.contains(&id) {
                match self.source.delete_event(name, id).await {
                    Ok(()) | Err(SourceError::BucketNotFound(_)) => {}
                    Err(e) => return Err(e.into()),
                }
                deleted += 1;
            }
        }
        Ok(Some(deleted))
    }
}
