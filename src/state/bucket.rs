//! Per-bucket bookkeeping: a bucket's row, generation and read position at a destination,
//! and the privacy-filter fingerprint that decides when it is read again from the start.

use rusqlite::{params, OptionalExtension};

use super::{DestId, StateError, Store};
use crate::source::Bucket;

/// A pass in progress: every event with a start in `(pos, hi]` is recorded; it goes on down
/// to `floor` (`None`: the bucket's start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    pub hi: i64,
    pub pos: i64,
    pub floor: Option<i64>,
}

/// What the engine needs to know of a bucket before reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketState {
    /// The bucket's row (what [`Acked`] and the lookups name it by); `-1` when not registered
    /// (a dry run's peek).
    pub row: i64,
    pub generation: u32,
    /// Start of the newest event the last completed pass covered; `None` before the first one.
    pub top_ns: Option<i64>,
    /// Events the last pass saw within `lookback` of `top_ns`.
    pub top_limit: Option<u64>,
    pub pass: Option<Pass>,
    /// The bucket listing's fingerprint and the whole-bucket count when the state last agreed
    /// with aw-server; `None` when that is unknown (new, migrated, or reset).
    pub listing_fp: Option<String>,
    pub count: Option<u64>,
    /// Where the background verification goes on (reading down from here); `None`: from the
    /// top.
    pub verify_pos: Option<i64>,
    /// True when this call found the bucket replaced and started a new generation.
    pub replaced: bool,
}

type BucketRow = (
    i64,
    u32,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    [Option<i64>; 3],
    Option<String>,
    Option<i64>,
    Option<i64>,
);

impl Store {
    /// The bucket's state at `dest`, registering it on first sight. A bucket whose `created`
    /// time or aw-server device id changed was replaced (deleted and recreated, or a new
    /// database): its ids start over, so it gets a new generation and reading starts over.
    pub fn bucket_state(
        &self,
        dest: DestId,
        bucket: &Bucket,
        server_device: Option<&str>,
    ) -> Result<BucketState, StateError> {
        self.bucket_state_inner(Some(dest), bucket, server_device, true)
    }

    /// What [`Store::bucket_state`] would answer, writing nothing (for `--dry-run`); `dest`
    /// `None` when the destination is not known yet.
    pub fn peek_bucket_state(
        &self,
        dest: Option<DestId>,
        bucket: &Bucket,
        server_device: Option<&str>,
    ) -> Result<BucketState, StateError> {
        self.bucket_state_inner(dest, bucket, server_device, false)
    }

    fn bucket_state_inner(
        &self,
        dest: Option<DestId>,
        bucket: &Bucket,
        server_device: Option<&str>,
        write: bool,
    ) -> Result<BucketState, StateError> {
        let fresh = |row, generation, replaced| BucketState {
            row,
            generation,
            top_ns: None,
            top_limit: None,
            pass: None,
            listing_fp: None,
            count: None,
            verify_pos: None,
            replaced,
        };
        let Some(dest) = dest else {
            return Ok(fresh(-1, 0, false));
        };
        let created = bucket.created.map(|c| c.to_rfc3339());
        let conn = self.writer();
        let row: Option<BucketRow> = conn
            .query_row(
                "SELECT id, generation, created, server_device, top_ns, top_limit,
                        pass_hi, pass_pos, pass_floor, listing_fp, count, verify_pos
                 FROM buckets WHERE dest = ?1 AND bucket_id = ?2",
                params![dest, bucket.id],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        [r.get(6)?, r.get(7)?, r.get(8)?],
                        r.get(9)?,
                        r.get(10)?,
                        r.get(11)?,
                    ))
                },
            )
            .optional()
            .map_err(self.err())?;
        let Some((
            id,
            generation,
            old_created,
            old_device,
            top_ns,
            top_limit,
            [pass_hi, pass_pos, pass_floor],
            listing_fp,
            count,
            verify_pos,
        )) = row
        else {
            if !write {
                return Ok(fresh(-1, 0, false));
            }
            conn.execute(
                "INSERT INTO buckets (dest, bucket_id, generation, created, server_device)
                 VALUES (?1, ?2, 0, ?3, ?4)",
                params![dest, bucket.id, created, server_device],
            )
            .map_err(self.err())?;
            return Ok(fresh(conn.last_insert_rowid(), 0, false));
        };
        let differs = |old: &Option<String>, new: Option<&str>| match (old.as_deref(), new) {
            (Some(o), Some(n)) => o != n,
            _ => false,
        };
        if differs(&old_created, created.as_deref()) || differs(&old_device, server_device) {
            let generation = generation + 1;
            if write {
                conn.execute(
                    "UPDATE buckets SET generation = ?2, created = ?3, server_device = ?4,
                       top_ns = NULL, top_limit = NULL, pass_hi = NULL, pass_pos = NULL,
                       pass_floor = NULL, listing_fp = NULL, count = NULL, verify_pos = NULL
                     WHERE id = ?1",
                    params![id, generation, created, server_device],
                )
                .map_err(self.err())?;
            }
            return Ok(fresh(id, generation, true));
        }
        if write
            && (old_created.is_none() && created.is_some()
                || old_device.is_none() && server_device.is_some())
        {
            conn.execute(
                "UPDATE buckets SET created = COALESCE(created, ?2),
                   server_device = COALESCE(server_device, ?3) WHERE id = ?1",
                params![id, created, server_device],
            )
            .map_err(self.err())?;
        }
        let pass = match (pass_hi, pass_pos) {
            (Some(hi), Some(pos)) => Some(Pass {
                hi,
                pos,
                floor: pass_floor,
            }),
            _ => None,
        };
        Ok(BucketState {
            row: id,
            generation,
            top_ns,
            top_limit: top_limit.map(|n| n.max(0) as u64),
            pass,
            listing_fp,
            count: count.map(|n| n.max(0) as u64),
            verify_pos,
            replaced: false,
        })
    }

    /// Compares the privacy-filter fingerprint a bucket is about to be read under with the one
    /// it was synced under, and when they differ starts reading it over (and, with `write`,
    /// stores the new fingerprint in the same statement). Returns true when the bucket must be
    /// read again from the start: events that now pass the filters, or now look different, are
    /// then found, while the mirror keeps what the upstream already holds unchanged from being
    /// sent again. A NULL fingerprint (a bucket synced before filters existed) counts as
    /// `unfiltered`.
    pub fn filter_fingerprint(
        &self,
        row: i64,
        fingerprint: &str,
        unfiltered: &str,
        write: bool,
    ) -> Result<bool, StateError> {
        let conn = self.writer();
        let stored: Option<Option<String>> = conn
            .query_row("SELECT filter_fp FROM buckets WHERE id = ?1", [row], |r| {
                r.get(0)
            })
            .optional()
            .map_err(self.err())?;
        let Some(stored) = stored else {
            return Ok(false); // not registered (dry run): nothing to reset
        };
        let changed = stored.as_deref().unwrap_or(unfiltered) != fingerprint;
        if write && (changed || stored.is_none()) {
            conn.execute(
                "UPDATE buckets SET filter_fp = ?2,
                   top_ns = CASE WHEN ?3 THEN NULL ELSE top_ns END,
                   top_limit = CASE WHEN ?3 THEN NULL ELSE top_limit END,
                   pass_hi = CASE WHEN ?3 THEN NULL ELSE pass_hi END,
                   pass_pos = CASE WHEN ?3 THEN NULL ELSE pass_pos END,
                   pass_floor = CASE WHEN ?3 THEN NULL ELSE pass_floor END,
                   listing_fp = CASE WHEN ?3 THEN NULL ELSE listing_fp END,
                   count = CASE WHEN ?3 THEN NULL ELSE count END
                 WHERE id = ?1",
                params![row, fingerprint, changed],
            )
            .map_err(self.err())?;
        }
        Ok(changed)
    }
}
