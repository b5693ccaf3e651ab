//! The mirror: the events of a bucket the state knows aw-server holds (delivered or
//! quarantined, not deleted), read back to compare with what aw-server says about a range.
//!
//! When a bucket's count changed without the newest data explaining it, the scan asks
//! aw-server for one number per time slice (a ranged count on Python aw-server, a sum of
//! durations through aw-server-rust's query API) and computes the same number from the mirror
//! with the server's own rules, so only the slices that differ are read.
//! These run rarely (a few times a day at most) and read the bucket's rows once each.

use params_helper::gen_range;
use rusqlite::{params, OptionalExtension};

use super::{EventHash, StateError, Store};
use crate::state::schema::DELETED;

/// One live event of the mirror.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MirrorEvent {
    pub event_id: i64,
    pub start_ns: i64,
    pub end_ns: i64,
    pub hash: EventHash,
}

/// A per-slice number, computed as a server computes it for `[start, end]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    /// Python aw-server's ranged count: the events overlapping the range (`end >= start` and
    /// `start <= end`) that start no earlier than 24 h before it (its pre-filter).
    PythonCount,
    /// The durations of the events overlapping the range, clipped to it, summed (ns):
    /// aw-server-rust's `sum_durations(query_bucket(..))`.
    ClippedSum,
}

const DAY_NS: i64 = 86_400 * 1_000_000_000;

impl Aggregate {
    /// What `e` adds to the slice `[s, t]`.
    pub fn of(self, e: &MirrorEvent, s: i64, t: i64) -> i64 {
        if e.end_ns < s || e.start_ns > t {
            return 0;
        }
        match self {
            Aggregate::PythonCount => i64::from(e.start_ns >= s.saturating_sub(DAY_NS)),
            Aggregate::ClippedSum => e.end_ns.min(t) - e.start_ns.max(s),
        }
    }
}

mod params_helper {
    use crate::state::GENERATION_SHIFT;

    /// The upstream ids of one generation: `[g << 40, (g + 1) << 40)`.
    pub fn gen_range(generation: u32) -> (i64, i64) {
        let lo = i64::from(generation) << GENERATION_SHIFT;
        (lo, lo.saturating_add(1 << GENERATION_SHIFT))
    }
}

impl Store {
    /// Every live event of the bucket's `generation`, in id order.
    pub fn mirror(&self, row: i64, generation: u32) -> Result<Vec<MirrorEvent>, StateError> {
        if row < 0 {
            return Ok(Vec::new());
        }
        let (lo, hi) = gen_range(generation);
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT event_id, start_ns, end_ns, hash FROM sent
                 WHERE bucket = ?1 AND event_id >= ?2 AND event_id < ?3 AND status != ?4",
            )
            .map_err(self.err())?;
        let rows = stmt
            .query_map(params![row, lo, hi, DELETED], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                ))
            })
            .map_err(self.err())?;
        let mut out = Vec::new();
        for r in rows {
            let (event_id, start_ns, end_ns, hash) = r.map_err(self.err())?;
            let Ok(hash) = <EventHash>::try_from(hash.as_slice()) else {
                continue;
            };
            out.push(MirrorEvent {
                event_id,
                start_ns,
                end_ns,
                hash,
            });
        }
        Ok(out)
    }
}

impl Store {
    /// Whether the state knows no live event of the bucket's `generation`.
    pub fn mirror_is_empty(&self, row: i64, generation: u32) -> Result<bool, StateError> {
        if row < 0 {
            return Ok(true);
        }
        let (lo, hi) = gen_range(generation);
        let any: Option<i64> = self
            .reader()
            .prepare_cached(
                "SELECT 1 FROM sent WHERE bucket = ?1 AND event_id >= ?2 AND event_id < ?3
                   AND status != ?4 LIMIT 1",
            )
            .and_then(|mut st| {
                st.query_row(params![row, lo, hi, DELETED], |r| r.get(0))
                    .optional()
            })
            .map_err(self.err())?;
        Ok(any.is_none())
    }

    /// The live events of the bucket's `generation` starting in `(above, upto]` (`None`:
    /// unbounded), as `(event id, start)`: what a verification step compares its read with.
    /// Reads the bucket's rows once and keeps only those in range.
    pub fn mirror_range(
        &self,
        row: i64,
        generation: u32,
        above: Option<i64>,
        upto: Option<i64>,
    ) -> Result<Vec<(i64, i64)>, StateError> {
        if row < 0 {
            return Ok(Vec::new());
        }
        let (lo, hi) = gen_range(generation);
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT event_id, start_ns FROM sent
                 WHERE bucket = ?1 AND event_id >= ?2 AND event_id < ?3 AND status != ?4
                   AND start_ns > ?5 AND start_ns <= ?6",
            )
            .map_err(self.err())?;
        let rows = stmt
            .query_map(
                params![
                    row,
                    lo,
                    hi,
                    DELETED,
                    above.unwrap_or(i64::MIN),
                    upto.unwrap_or(i64::MAX)
                ],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
            )
            .map_err(self.err())?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.err())
    }
}

/// `kind` over each slice `[s, t]`, from mirror events.
pub fn aggregate(events: &[MirrorEvent], slices: &[(i64, i64)], kind: Aggregate) -> Vec<i64> {
    let mut out = vec![0i64; slices.len()];
    for e in events {
        for (i, &(s, t)) in slices.iter().enumerate() {
            out[i] = out[i].saturating_add(kind.of(e, s, t));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: i64, start: i64, end: i64) -> MirrorEvent {
        MirrorEvent {
            event_id: id,
            start_ns: start,
            end_ns: end,
            hash: [0; 16],
        }
    }

    #[test]
    fn aggregates_follow_each_servers_rules() {
        let events = [ev(1, 0, 10), ev(2, 10, 20), ev(3, 25, 30)];
        // Overlap is inclusive at both ends: [10, 25] touches all three.
        assert_eq!(
            aggregate(&events, &[(10, 25), (21, 24)], Aggregate::PythonCount),
            vec![3, 0]
        );
        assert_eq!(
            aggregate(&events, &[(5, 27), (0, 100)], Aggregate::ClippedSum),
            vec![5 + 10 + 2, 25]
        );
        // Python's pre-filter: an event starting more than a day before the range is not
        // counted even though it overlaps.
        let long = [ev(1, 0, 3 * DAY_NS)];
        assert_eq!(
            aggregate(
                &long,
                &[(2 * DAY_NS, 2 * DAY_NS + 1)],
                Aggregate::PythonCount
            ),
            vec![0]
        );
    }
}
