//! What the uploader records: acknowledged, quarantined and deleted events with the position
//! moves they allow, in one transaction; and the dedupe lookups of what is recorded.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::LazyLock;

use chrono::Utc;
use rusqlite::types::Value as SqlValue;
use rusqlite::{params, OptionalExtension};

use super::schema::{DELETED, DELIVERED, QUARANTINED};
use super::{EventHash, Pass, Span, StateError, Store};

/// What the state remembers of an event the upstream holds (or refused, or was told is gone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Known {
    pub hash: EventHash,
    pub start_ns: i64,
    pub end_ns: i64,
    /// The upstream was told the event is gone: seen again, it is new.
    pub deleted: bool,
}

/// An acknowledged event version.
#[derive(Debug, Clone)]
pub struct Acked {
    pub row: i64,
    pub event_id: i64,
    pub hash: EventHash,
    pub span: Span,
}

/// An event that cannot be delivered (the upstream refused it, or it cannot even be read);
/// kept with its payload so nothing is lost and `--status` can show it.
#[derive(Debug, Clone)]
pub struct Quarantined {
    pub acked: Acked,
    pub reason: String,
    pub event_json: String,
}

/// A deletion the upstream acknowledged: the event is gone from aw-server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deleted {
    pub row: i64,
    pub event_id: i64,
}

/// A change of a bucket's read position, committed together with (never before) the
/// acknowledgements of every event read before it. Applied only while the bucket is still in
/// the generation it was read in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mark {
    /// A pass moved on: every event with a start in `(pass.pos, pass.hi]` is recorded.
    Pass {
        row: i64,
        generation: u32,
        pass: Pass,
    },
    /// A pass is complete: the bucket is covered up to `top_ns`.
    Top {
        row: i64,
        generation: u32,
        top_ns: i64,
        top_limit: u64,
    },
    /// The state agrees with aw-server: what its listing and count said.
    Agreed {
        row: i64,
        generation: u32,
        listing_fp: Option<String>,
        count: u64,
    },
    /// The background verification moved on (`pos: None`: a whole pass ended).
    Verify {
        row: i64,
        generation: u32,
        pos: Option<i64>,
    },
}

impl Mark {
    fn row_generation(&self) -> (i64, u32) {
        match self {
            Mark::Pass {
                row, generation, ..
            }
            | Mark::Top {
                row, generation, ..
            }
            | Mark::Agreed {
                row, generation, ..
            }
            | Mark::Verify {
                row, generation, ..
            } => (*row, *generation),
        }
    }
}

/// One atomic change of the state.
#[derive(Debug, Default)]
pub struct Commit {
    pub acked: Vec<Acked>,
    pub quarantined: Vec<Quarantined>,
    pub deleted: Vec<Deleted>,
    pub marks: Vec<Mark>,
}

impl Commit {
    pub fn is_empty(&self) -> bool {
        self.acked.is_empty()
            && self.quarantined.is_empty()
            && self.deleted.is_empty()
            && self.marks.is_empty()
    }

    /// The rows it writes, about.
    pub fn rows(&self) -> usize {
        self.acked.len() + self.quarantined.len() + self.deleted.len() + self.marks.len()
    }
}

impl Store {
    /// The recorded version of each of these upstream event ids that has one.
    pub fn lookup(&self, row: i64, event_ids: &[i64]) -> Result<HashMap<i64, Known>, StateError> {
        let mut out = HashMap::with_capacity(event_ids.len());
        if event_ids.is_empty() || row < 0 {
            return Ok(out);
        }
        let conn = self.reader();
        // A catch-up asks about ids the upstream has never seen, a page at a time — newest
        // first, so below every id recorded so far. Two probes for the recorded ids nearest the
        // page's range answer all of those outside them, where looking each up cost a B-tree
        // descent per event (a third of a 1M-event catch-up's reading time). The answer is the
        // one the full query would give at this instant.
        let (lo, hi) = event_ids
            .iter()
            .fold((i64::MAX, i64::MIN), |(lo, hi), &i| (lo.min(i), hi.max(i)));
        let first: Option<i64> = conn
            .prepare_cached(
                "SELECT event_id FROM sent WHERE bucket = ?1 AND event_id >= ?2
                 ORDER BY event_id LIMIT 1",
            )
            .and_then(|mut st| st.query_row(params![row, lo], |r| r.get(0)).optional())
            .map_err(self.err())?;
        let Some(first) = first.filter(|&f| f <= hi) else {
            return Ok(out);
        };
        let last: i64 = conn
            .prepare_cached(
                "SELECT event_id FROM sent WHERE bucket = ?1 AND event_id <= ?2
                 ORDER BY event_id DESC LIMIT 1",
            )
            .and_then(|mut st| st.query_row(params![row, hi], |r| r.get(0)))
            .map_err(self.err())?;
        let ids: Rc<Vec<SqlValue>> = Rc::new(
            event_ids
                .iter()
                .filter(|&&i| (first..=last).contains(&i))
                .map(|&i| SqlValue::from(i))
                .collect(),
        );
        if ids.is_empty() {
            return Ok(out);
        }
        let mut stmt = conn
            .prepare_cached(
                "SELECT event_id, hash, start_ns, end_ns, status FROM sent
                 WHERE bucket = ?1 AND event_id IN rarray(?2)",
            )
            .map_err(self.err())?;
        let rows = stmt
            .query_map(params![row, ids], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })
            .map_err(self.err())?;
        for row in rows {
            let (id, bytes, start_ns, end_ns, status) = row.map_err(self.err())?;
            if let Ok(hash) = <EventHash>::try_from(bytes.as_slice()) {
                out.insert(
                    id,
                    Known {
                        hash,
                        start_ns,
                        end_ns,
                        deleted: status == DELETED,
                    },
                );
            }
        }
        Ok(out)
    }

    /// [`Store::lookup`] of a bucket named by its id, at the current destination (for
    /// displays and tests; the engine holds the row).
    pub fn lookup_by_name(
        &self,
        bucket_id: &str,
        event_ids: &[i64],
    ) -> Result<HashMap<i64, Known>, StateError> {
        let Some((dest, _)) = self.current_destination()? else {
            return Ok(HashMap::new());
        };
        let row: Option<i64> = self
            .reader()
            .query_row(
                "SELECT id FROM buckets WHERE dest = ?1 AND bucket_id = ?2",
                params![dest, bucket_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err())?;
        match row {
            Some(row) => self.lookup(row, event_ids),
            None => Ok(HashMap::new()),
        }
    }

    /// Records acknowledged, quarantined and deleted events and the position moves they allow,
    /// atomically.
    pub fn commit(&self, c: &Commit) -> Result<(), StateError> {
        self.commit_all(std::slice::from_ref(c))
    }

    /// [`Store::commit`] of several commits in one transaction, as if they were one with each
    /// kind of change in their order (a group commit), without gathering them into one first:
    /// a group of 10,000 acknowledgements copied into one vector grown step by step was fresh
    /// memory faulted in for every group (issue 9, perf).
    pub fn commit_all(&self, cs: &[Commit]) -> Result<(), StateError> {
        if cs.iter().all(Commit::is_empty) {
            return Ok(());
        }
        let mut conn = self.writer();
        let tx = conn.transaction().map_err(self.err())?;
        {
            let mut upsert = tx.prepare_cached(&UPSERT_ONE).map_err(self.err())?;
            let mut versions: HashMap<i64, i64> = HashMap::new();
            // In the table's key order: a catch-up acknowledges events newest first, and
            // inserting each below the last split the B-tree's pages half full (measured with
            // SQLite alone: 1M rows took 30,326 pages newest first, 16,962 oldest first — twice
            // the pages written to the WAL and then to the file); against the table's order
            // cost a quarter more again. Stable, so of two versions of one event in one commit
            // the later still lands last.
            let mut acked: Vec<&Acked> = cs.iter().flat_map(|c| &c.acked).collect();
            if self.sent_desc {
                acked.sort_by_key(|a| (a.row, std::cmp::Reverse(a.event_id)));
            } else {
                acked.sort_by_key(|a| (a.row, a.event_id));
            }
            // Many rows per statement: one statement per row spent more in SQLite's statement
            // machinery (bind, step, reset) than in the B-tree.
            let mut chunks = acked.chunks_exact(UPSERT_ROWS);
            if chunks.len() > 0 {
                let mut many = tx.prepare_cached(&UPSERT_MANY).map_err(self.err())?;
                for chunk in &mut chunks {
                    for (i, a) in chunk.iter().enumerate() {
                        bind_sent(&mut many, i * SENT_COLUMNS, a, DELIVERED).map_err(self.err())?;
                    }
                    many.raw_execute().map_err(self.err())?;
                }
            }
            for a in chunks.remainder() {
                bind_sent(&mut upsert, 0, a, DELIVERED).map_err(self.err())?;
                upsert.raw_execute().map_err(self.err())?;
            }
            for a in cs.iter().flat_map(|c| &c.acked) {
                *versions.entry(a.row).or_default() += 1;
            }
            let now = Utc::now().to_rfc3339();
            let mut quarantine = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO quarantine (bucket, event_id, hash, reason, event_json, at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(self.err())?;
            for q in cs.iter().flat_map(|c| &c.quarantined) {
                let a = &q.acked;
                bind_sent(&mut upsert, 0, a, QUARANTINED).map_err(self.err())?;
                upsert.raw_execute().map_err(self.err())?;
                quarantine
                    .execute(params![
                        a.row,
                        a.event_id,
                        &a.hash[..],
                        q.reason,
                        q.event_json,
                        now
                    ])
                    .map_err(self.err())?;
            }
            let mut delete = tx
                .prepare_cached("UPDATE sent SET status = ?3 WHERE bucket = ?1 AND event_id = ?2")
                .map_err(self.err())?;
            for d in cs.iter().flat_map(|c| &c.deleted) {
                delete
                    .execute(params![d.row, d.event_id, DELETED])
                    .map_err(self.err())?;
            }
            let mut bump = tx
                .prepare_cached(
                    "UPDATE buckets SET versions_sent = versions_sent + ?2 WHERE id = ?1",
                )
                .map_err(self.err())?;
            for (row, n) in versions {
                bump.execute(params![row, n]).map_err(self.err())?;
            }
            for m in cs.iter().flat_map(|c| &c.marks) {
                apply_mark(&tx, m).map_err(self.err())?;
            }
        }
        tx.commit().map_err(self.err())
    }
}

/// Rows of `sent` per multi-row upsert.
const UPSERT_ROWS: usize = 64;
/// Columns (parameters) per row of `sent`.
const SENT_COLUMNS: usize = 6;

/// The upsert of `rows` rows of `sent`: a new version replaces the recorded one.
fn upsert_sql(rows: usize) -> String {
    let values: Vec<String> = (0..rows)
        .map(|r| {
            let params: Vec<String> = (1..=SENT_COLUMNS)
                .map(|c| format!("?{}", r * SENT_COLUMNS + c))
                .collect();
            format!("({})", params.join(", "))
        })
        .collect();
    format!(
        "INSERT INTO sent (bucket, event_id, hash, start_ns, end_ns, status) VALUES {}
         ON CONFLICT (bucket, event_id) DO UPDATE SET
           hash = excluded.hash, start_ns = excluded.start_ns,
           end_ns = excluded.end_ns, status = excluded.status",
        values.join(", ")
    )
}

/// The one-row and the [`UPSERT_ROWS`]-row upserts, written once per process (the statement
/// cache is keyed by their text).
static UPSERT_ONE: LazyLock<String> = LazyLock::new(|| upsert_sql(1));
static UPSERT_MANY: LazyLock<String> = LazyLock::new(|| upsert_sql(UPSERT_ROWS));

/// Binds one row of `sent` at parameters `at + 1 ..= at + 6`.
fn bind_sent(
    st: &mut rusqlite::CachedStatement<'_>,
    at: usize,
    a: &Acked,
    status: i64,
) -> rusqlite::Result<()> {
    st.raw_bind_parameter(at + 1, a.row)?;
    st.raw_bind_parameter(at + 2, a.event_id)?;
    st.raw_bind_parameter(at + 3, &a.hash[..])?;
    st.raw_bind_parameter(at + 4, a.span.start_ns)?;
    st.raw_bind_parameter(at + 5, a.span.end_ns())?;
    st.raw_bind_parameter(at + 6, status)
}

/// One [`Mark`], only while the bucket is in the generation it was read in.
fn apply_mark(tx: &rusqlite::Transaction<'_>, m: &Mark) -> rusqlite::Result<()> {
    let (row, generation) = m.row_generation();
    match m {
        Mark::Pass { pass, .. } => tx
            .prepare_cached(
                "UPDATE buckets SET pass_hi = ?3, pass_pos = ?4, pass_floor = ?5
                 WHERE id = ?1 AND generation = ?2",
            )?
            .execute(params![row, generation, pass.hi, pass.pos, pass.floor]),
        Mark::Top {
            top_ns, top_limit, ..
        } => tx
            .prepare_cached(
                "UPDATE buckets SET top_ns = MAX(COALESCE(top_ns, ?3), ?3), top_limit = ?4,
                   pass_hi = NULL, pass_pos = NULL, pass_floor = NULL
                 WHERE id = ?1 AND generation = ?2",
            )?
            .execute(params![
                row,
                generation,
                top_ns,
                i64::try_from(*top_limit).unwrap_or(i64::MAX)
            ]),
        Mark::Agreed {
            listing_fp, count, ..
        } => tx
            .prepare_cached(
                "UPDATE buckets SET listing_fp = ?3, count = ?4 WHERE id = ?1 AND generation = ?2",
            )?
            .execute(params![
                row,
                generation,
                listing_fp,
                i64::try_from(*count).unwrap_or(i64::MAX)
            ]),
        Mark::Verify { pos, .. } => {
            let done = pos.is_none().then(|| Utc::now().to_rfc3339());
            tx.prepare_cached(
                "UPDATE buckets SET verify_pos = ?3, verified_at = COALESCE(?4, verified_at)
                 WHERE id = ?1 AND generation = ?2",
            )?
            .execute(params![row, generation, pos, done])
        }
    }
    .map(|_| ())
}
