//! What the pull (issue 14, [`crate::pull`]) remembers: per destination the feed position it
//! applied; the local buckets it made; for every event it copied, the local aw-server event id
//! (so a new version replaces that event and a tombstone deletes it); and the inserts sent to
//! aw-server but not yet recorded (swept after a crash). A page of the feed is recorded in one
//! transaction: its mappings, the devices' progress and the new position together.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use chrono::Utc;
use rusqlite::types::Value as SqlValue;
use rusqlite::{params, OptionalExtension};

use super::{DestId, StateError, Store};

/// A local bucket the pull made (a `pull_buckets` row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullBucket {
    pub row: i64,
    pub device_id: String,
    pub bucket_id: String,
    pub local_bucket: String,
    pub origin: String,
    /// The local bucket's `created` as aw-server listed it; `None` until seen.
    pub created: Option<String>,
    /// The device's host name as the upstream listed it.
    pub device_host: String,
}

/// An insert sent to aw-server and not recorded with its page (a `pull_pending` row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingInsert {
    pub id: i64,
    /// The pull bucket's row.
    pub row: i64,
    pub start_ns: i64,
    pub end_ns: i64,
    /// How many of its events no sweep has found in aw-server yet.
    pub unseen: i64,
    /// When it was sent (unix seconds; 0: unknown, from an older binary).
    pub sent_at: i64,
}

/// What a page of the feed changed, recorded together with the new position.
#[derive(Debug, Clone, Default)]
pub struct PullPage {
    /// The feed position after the page.
    pub next: i64,
    /// Copied or replaced.
    pub upserts: Vec<Mapped>,
    /// (pull bucket row, upstream event id): deleted locally.
    pub deletes: Vec<(i64, i64)>,
    /// Per device: the last seq of it applied.
    pub devices: HashMap<String, i64>,
    /// The `pull_pending` rows of this page's inserts ([`Store::pull_add_pending`]): done with
    /// the page. Only these: a page's commit never ends another page's pending inserts.
    pub pending: Vec<i64>,
    /// The page reached the end of the feed.
    pub caught_up: bool,
}

/// A copy: which local event holds which version of an upstream event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    /// The pull bucket's row.
    pub row: i64,
    pub event_id: i64,
    /// 0 while aw-server has not said it ([`Mapped::print`] finds the copy then).
    pub local_id: i64,
    pub hash: String,
    /// The copy's start (ns).
    pub start_ns: i64,
    /// For a copy whose local id is not known: what finds it.
    pub print: Option<CopyPrint>,
}

/// What finds a copy in aw-server when its id was never said (Python aw-server answers `null`
/// to an insert of several events): a fingerprint of its start to the millisecond and its
/// data, and its duration (of two copies alike but for it, the nearest one is the one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyPrint {
    pub fp: Vec<u8>,
    pub dur_us: i64,
}

/// What `--status` shows per other device.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PullDeviceStatus {
    pub device_id: String,
    pub hostname: String,
    pub last_seq: Option<i64>,
    pub last_at: Option<String>,
    /// Events held in the local aw-server now.
    pub events: u64,
    pub unpulled: bool,
    /// The origins its buckets are named with here (`…-synced-from-ORIGIN`).
    pub origins: Vec<String>,
}

/// The feed position and when the pull last reached the end of the feed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PullFeed {
    pub seq: i64,
    pub selection: String,
    pub caught_up: Option<String>,
}

impl Store {
    pub fn pull_feed(&self, dest: DestId) -> Result<PullFeed, StateError> {
        self.reader()
            .query_row(
                "SELECT seq, selection, caught_up FROM pull_feed WHERE dest = ?1",
                [dest],
                |r| {
                    Ok(PullFeed {
                        seq: r.get(0)?,
                        selection: r.get(1)?,
                        caught_up: r.get(2)?,
                    })
                },
            )
            .optional()
            .map_err(self.err())
            .map(Option::unwrap_or_default)
    }

    /// Starts the feed over from 0 under a new device selection: what is copied stays (a
    /// version already held is not written again), devices unpulled may be pulled again.
    pub fn pull_restart(&self, dest: DestId, selection: &str) -> Result<(), StateError> {
        let mut conn = self.writer();
        let tx = conn.transaction().map_err(self.err())?;
        tx.execute(
            "INSERT INTO pull_feed (dest, seq, selection) VALUES (?1, 0, ?2)
             ON CONFLICT (dest) DO UPDATE SET seq = 0, selection = ?2, caught_up = NULL",
            params![dest, selection],
        )
        .map_err(self.err())?;
        tx.execute(
            "UPDATE pull_devices SET unpulled = 0 WHERE dest = ?1",
            [dest],
        )
        .map_err(self.err())?;
        tx.commit().map_err(self.err())
    }

    pub fn pull_buckets(&self, dest: DestId) -> Result<Vec<PullBucket>, StateError> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT b.id, b.device_id, b.bucket_id, b.local_bucket, b.origin, b.created,
                        coalesce(d.hostname, '')
                 FROM pull_buckets b
                 LEFT JOIN pull_devices d ON d.dest = b.dest AND d.device_id = b.device_id
                 WHERE b.dest = ?1 ORDER BY b.id",
            )
            .map_err(self.err())?;
        let rows = stmt
            .query_map([dest], |r| {
                Ok(PullBucket {
                    row: r.get(0)?,
                    device_id: r.get(1)?,
                    bucket_id: r.get(2)?,
                    local_bucket: r.get(3)?,
                    origin: r.get(4)?,
                    created: r.get(5)?,
                    device_host: r.get(6)?,
                })
            })
            .map_err(self.err())?;
        rows.collect::<Result<_, _>>().map_err(self.err())
    }

    /// Records a local bucket before it is created in aw-server, so that a crash in between
    /// leaves a bucket known to be ours. Returns its row.
    pub fn pull_add_bucket(
        &self,
        dest: DestId,
        (device_id, hostname): (&str, &str),
        bucket_id: &str,
        local_bucket: &str,
        origin: &str,
    ) -> Result<i64, StateError> {
        let mut conn = self.writer();
        let tx = conn.transaction().map_err(self.err())?;
        tx.execute(
            "INSERT INTO pull_buckets (dest, device_id, bucket_id, local_bucket, origin)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![dest, device_id, bucket_id, local_bucket, origin],
        )
        .map_err(self.err())?;
        let row = tx.last_insert_rowid();
        tx.execute(
            "INSERT INTO pull_devices (dest, device_id, hostname) VALUES (?1, ?2, ?3)
             ON CONFLICT (dest, device_id) DO UPDATE SET hostname = ?3",
            params![dest, device_id, hostname],
        )
        .map_err(self.err())?;
        tx.commit().map_err(self.err())?;
        Ok(row)
    }

    pub fn pull_set_created(&self, row: i64, created: &str) -> Result<(), StateError> {
        self.writer()
            .execute(
                "UPDATE pull_buckets SET created = ?2 WHERE id = ?1",
                params![row, created],
            )
            .map(|_| ())
            .map_err(self.err())
    }

    /// Forgets local buckets (their copy is gone from aw-server, or `--unpull`): their rows,
    /// mappings and pending inserts.
    pub fn pull_forget_buckets(&self, rows: &[i64]) -> Result<(), StateError> {
        let mut conn = self.writer();
        let tx = conn.transaction().map_err(self.err())?;
        for row in rows {
            for table in ["pull_events", "pull_unresolved", "pull_pending"] {
                tx.execute(&format!("DELETE FROM {table} WHERE bucket = ?1"), [row])
                    .map_err(self.err())?;
            }
            tx.execute("DELETE FROM pull_buckets WHERE id = ?1", [row])
                .map_err(self.err())?;
        }
        tx.commit().map_err(self.err())
    }

    /// Marks a device as not to be pulled (`--unpull`) until the device selection changes.
    pub fn pull_mark_unpulled(&self, dest: DestId, device_id: &str) -> Result<(), StateError> {
        self.writer()
            .execute(
                "INSERT INTO pull_devices (dest, device_id, unpulled) VALUES (?1, ?2, 1)
                 ON CONFLICT (dest, device_id) DO UPDATE SET unpulled = 1",
                params![dest, device_id],
            )
            .map(|_| ())
            .map_err(self.err())
    }

    /// Devices `--unpull` took out.
    pub fn pull_unpulled(&self, dest: DestId) -> Result<HashSet<String>, StateError> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached("SELECT device_id FROM pull_devices WHERE dest = ?1 AND unpulled = 1")
            .map_err(self.err())?;
        let rows = stmt.query_map([dest], |r| r.get(0)).map_err(self.err())?;
        rows.collect::<Result<_, _>>().map_err(self.err())
    }

    /// The local event ids and hashes of `event_ids` of a pull bucket.
    pub fn pull_mapped(
        &self,
        row: i64,
        event_ids: &[i64],
    ) -> Result<HashMap<i64, (i64, String)>, StateError> {
        let conn = self.reader();
        // A first pull reads each bucket's events in id order: ids past the bucket's highest
        // mapped one are not looked up one by one (one seek instead of a page's worth).
        let highest: Option<i64> = conn
            .prepare_cached("SELECT max(event_id) FROM pull_events WHERE bucket = ?1")
            .and_then(|mut s| s.query_row([row], |r| r.get(0)))
            .map_err(self.err())?;
        let none_held = match (event_ids.iter().copied().min(), highest) {
            (Some(lowest), Some(highest)) => lowest > highest,
            _ => true,
        };
        if none_held {
            return Ok(HashMap::new());
        }
        let ids: Rc<Vec<SqlValue>> =
            Rc::new(event_ids.iter().copied().map(SqlValue::from).collect());
        let mut stmt = conn
            .prepare_cached(
                "SELECT event_id, local_id, hash FROM pull_events
                 WHERE bucket = ?1 AND event_id IN rarray(?2)",
            )
            .map_err(self.err())?;
        let rows = stmt
            .query_map(params![row, ids], |r| {
                Ok((r.get(0)?, (r.get(1)?, r.get(2)?)))
            })
            .map_err(self.err())?;
        rows.collect::<Result<_, _>>().map_err(self.err())
    }

    /// The copies of `event_ids` (of the pull bucket `row`) whose local id is not known:
    /// (event id, the copy's start ns, its print).
    pub fn pull_unresolved(
        &self,
        row: i64,
        event_ids: &[i64],
    ) -> Result<Vec<(i64, i64, CopyPrint)>, StateError> {
        let conn = self.reader();
        let ids: Rc<Vec<SqlValue>> =
            Rc::new(event_ids.iter().copied().map(SqlValue::from).collect());
        let mut stmt = conn
            .prepare_cached(
                "SELECT u.event_id, e.start_ns, u.fp, u.dur_us FROM pull_unresolved u
                 JOIN pull_events e ON e.bucket = u.bucket AND e.event_id = u.event_id
                 WHERE u.bucket = ?1 AND u.event_id IN rarray(?2)",
            )
            .map_err(self.err())?;
        let rows = stmt
            .query_map(params![row, ids], unresolved_row)
            .map_err(self.err())?;
        rows.collect::<Result<_, _>>().map_err(self.err())
    }

    /// The copies of the pull bucket `row` starting in `[lo, hi]` (ns) whose local id is not
    /// known: (event id, start ns, print).
    pub fn pull_unresolved_between(
        &self,
        row: i64,
        lo: i64,
        hi: i64,
    ) -> Result<Vec<(i64, i64, CopyPrint)>, StateError> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT e.event_id, e.start_ns, u.fp, u.dur_us FROM pull_events e
                 JOIN pull_unresolved u ON u.bucket = e.bucket AND u.event_id = e.event_id
                 WHERE e.bucket = ?1 AND e.start_ns BETWEEN ?2 AND ?3",
            )
            .map_err(self.err())?;
        let rows = stmt
            .query_map(params![row, lo, hi], unresolved_row)
            .map_err(self.err())?;
        rows.collect::<Result<_, _>>().map_err(self.err())
    }

    /// Records the local ids found for copies of the pull bucket `row`: (event id, local id).
    /// Committed before the copies are written (replaced, deleted), so a crash in between
    /// leaves the id known.
    pub fn pull_resolve(&self, row: i64, found: &[(i64, i64)]) -> Result<(), StateError> {
        let mut conn = self.writer();
        let tx = conn.transaction().map_err(self.err())?;
        {
            let mut set = tx
                .prepare_cached(
                    "UPDATE pull_events SET local_id = ?3 WHERE bucket = ?1 AND event_id = ?2",
                )
                .map_err(self.err())?;
            let mut done = tx
                .prepare_cached("DELETE FROM pull_unresolved WHERE bucket = ?1 AND event_id = ?2")
                .map_err(self.err())?;
            for (event_id, local_id) in found {
                set.execute(params![row, event_id, local_id])
                    .map_err(self.err())?;
                done.execute(params![row, event_id]).map_err(self.err())?;
            }
        }
        tx.commit().map_err(self.err())
    }

    /// How many copies of the pull bucket `row` start in `[lo, hi]` (ns).
    pub fn pull_count_in(&self, row: i64, lo: i64, hi: i64) -> Result<u64, StateError> {
        self.reader()
            .query_row(
                "SELECT count(*) FROM pull_events
                 WHERE bucket = ?1 AND start_ns BETWEEN ?2 AND ?3",
                params![row, lo, hi],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n.max(0) as u64)
            .map_err(self.err())
    }

    /// Which of `local_ids` copy an event of the pull bucket `row`.
    pub fn pull_known_local(
        &self,
        row: i64,
        local_ids: &[i64],
    ) -> Result<HashSet<i64>, StateError> {
        let conn = self.reader();
        let ids: Rc<Vec<SqlValue>> =
            Rc::new(local_ids.iter().copied().map(SqlValue::from).collect());
        let mut stmt = conn
            .prepare_cached(
                "SELECT local_id FROM pull_events WHERE bucket = ?1 AND local_id IN rarray(?2)",
            )
            .map_err(self.err())?;
        let rows = stmt
            .query_map(params![row, ids], |r| r.get(0))
            .map_err(self.err())?;
        rows.collect::<Result<_, _>>().map_err(self.err())
    }

    /// Records, before they are sent, the inserts about to be made in pull buckets: (row,
    /// start ns, end ns, events), sent at `sent_at` (unix seconds). After a crash, an event of
    /// such a span that no mapping names was made by the interrupted write and is deleted
    /// ([`Store::pull_pending`]). Returns the rows recorded, for [`PullPage::pending`].
    pub fn pull_add_pending(
        &self,
        inserts: &[(i64, i64, i64, i64)],
        sent_at: i64,
    ) -> Result<Vec<i64>, StateError> {
        let mut conn = self.writer();
        let tx = conn.transaction().map_err(self.err())?;
        let mut added = Vec::with_capacity(inserts.len());
        for (row, start, end, events) in inserts {
            tx.execute(
                "INSERT INTO pull_pending (bucket, start_ns, end_ns, unseen, sent_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![row, start, end, events, sent_at],
            )
            .map_err(self.err())?;
            added.push(tx.last_insert_rowid());
        }
        tx.commit().map_err(self.err())?;
        Ok(added)
    }

    /// The inserts that were sent but not recorded (a crash, or a request that failed), oldest
    /// first.
    pub fn pull_pending(&self, dest: DestId) -> Result<Vec<PendingInsert>, StateError> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT p.rowid, p.bucket, p.start_ns, p.end_ns, p.unseen, p.sent_at
                 FROM pull_pending p
                 JOIN pull_buckets b ON b.id = p.bucket WHERE b.dest = ?1 ORDER BY p.rowid",
            )
            .map_err(self.err())?;
        let rows = stmt
            .query_map([dest], |r| {
                Ok(PendingInsert {
                    id: r.get(0)?,
                    row: r.get(1)?,
                    start_ns: r.get(2)?,
                    end_ns: r.get(3)?,
                    unseen: r.get(4)?,
                    sent_at: r.get(5)?,
                })
            })
            .map_err(self.err())?;
        rows.collect::<Result<_, _>>().map_err(self.err())
    }

    /// After a sweep of a pending insert: `Some(n)` of its events may still land, `None` it is
    /// done with (forgotten).
    pub fn pull_pending_left(&self, id: i64, unseen: Option<i64>) -> Result<(), StateError> {
        let conn = self.writer();
        match unseen {
            Some(n) => conn.execute(
                "UPDATE pull_pending SET unseen = ?2 WHERE rowid = ?1",
                params![id, n],
            ),
            None => conn.execute("DELETE FROM pull_pending WHERE rowid = ?1", [id]),
        }
        .map(|_| ())
        .map_err(self.err())
    }

    /// Records a page: mappings, devices' progress, the position, and its own pending inserts
    /// done — one transaction, so the position never runs ahead of what aw-server holds. The
    /// pending inserts of an earlier, interrupted pull stay until a sweep has seen them land
    /// (the end of the feed does not end them: aw-server may still be writing them).
    pub fn pull_commit(&self, dest: DestId, page: &PullPage) -> Result<(), StateError> {
        let mut conn = self.writer();
        let tx = conn.transaction().map_err(self.err())?;
        {
            let mut upsert = tx
                .prepare_cached(
                    "INSERT INTO pull_events (bucket, event_id, local_id, hash, start_ns)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (bucket, event_id)
                     DO UPDATE SET local_id = ?3, hash = ?4, start_ns = ?5",
                )
                .map_err(self.err())?;
            let mut print = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO pull_unresolved (bucket, event_id, fp, dur_us)
                     VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(self.err())?;
            for m in &page.upserts {
                upsert
                    .execute(params![m.row, m.event_id, m.local_id, m.hash, m.start_ns])
                    .map_err(self.err())?;
                // A copy with a known id was resolved first (`pull_resolve`): no print left.
                if let Some(p) = &m.print {
                    print
                        .execute(params![m.row, m.event_id, p.fp, p.dur_us])
                        .map_err(self.err())?;
                }
            }
            let mut delete = tx
                .prepare_cached("DELETE FROM pull_events WHERE bucket = ?1 AND event_id = ?2")
                .map_err(self.err())?;
            let mut unprint = tx
                .prepare_cached("DELETE FROM pull_unresolved WHERE bucket = ?1 AND event_id = ?2")
                .map_err(self.err())?;
            for (row, event_id) in &page.deletes {
                delete.execute(params![row, event_id]).map_err(self.err())?;
                unprint
                    .execute(params![row, event_id])
                    .map_err(self.err())?;
            }
            let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let mut device = tx
                .prepare_cached(
                    "INSERT INTO pull_devices (dest, device_id, last_seq, last_at)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (dest, device_id) DO UPDATE SET last_seq = ?3, last_at = ?4",
                )
                .map_err(self.err())?;
            for (id, seq) in &page.devices {
                device
                    .execute(params![dest, id, seq, now])
                    .map_err(self.err())?;
            }
            let mut done = tx
                .prepare_cached("DELETE FROM pull_pending WHERE rowid = ?1")
                .map_err(self.err())?;
            for id in &page.pending {
                done.execute([id]).map_err(self.err())?;
            }
            tx.execute(
                "INSERT INTO pull_feed (dest, seq) VALUES (?1, ?2)
                 ON CONFLICT (dest) DO UPDATE SET seq = ?2",
                params![dest, page.next],
            )
            .map_err(self.err())?;
            if page.caught_up {
                tx.execute(
                    "UPDATE pull_feed SET caught_up = ?2 WHERE dest = ?1",
                    params![dest, now],
                )
                .map_err(self.err())?;
            }
        }
        tx.commit().map_err(self.err())
    }

    /// Per other device: what was applied and how many of its events the local aw-server holds.
    pub fn pull_status(&self, dest: DestId) -> Result<Vec<PullDeviceStatus>, StateError> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT d.device_id, d.hostname, d.last_seq, d.last_at, d.unpulled,
                        (SELECT count(*) FROM pull_events e JOIN pull_buckets b ON b.id = e.bucket
                         WHERE b.dest = d.dest AND b.device_id = d.device_id),
                        (SELECT group_concat(DISTINCT origin) FROM pull_buckets b
                         WHERE b.dest = d.dest AND b.device_id = d.device_id)
                 FROM pull_devices d WHERE d.dest = ?1 ORDER BY d.hostname, d.device_id",
            )
            .map_err(self.err())?;
        let rows = stmt
            .query_map([dest], |r| {
                Ok(PullDeviceStatus {
                    device_id: r.get(0)?,
                    hostname: r.get(1)?,
                    last_seq: r.get(2)?,
                    last_at: r.get(3)?,
                    unpulled: r.get::<_, i64>(4)? != 0,
                    events: r.get::<_, i64>(5)?.max(0) as u64,
                    origins: r
                        .get::<_, Option<String>>(6)?
                        .map(|o| o.split(',').map(str::to_string).collect())
                        .unwrap_or_default(),
                })
            })
            .map_err(self.err())?;
        rows.collect::<Result<_, _>>().map_err(self.err())
    }
}

/// (event id, start ns, fp, dur_us) → (event id, start ns, print).
fn unresolved_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, i64, CopyPrint)> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        CopyPrint {
            fp: r.get(2)?,
            dur_us: r.get(3)?,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::DestKey;

    /// A store at `path` with a destination and one pull bucket: (store, dest, row).
    fn with_bucket(path: &std::path::Path) -> (Store, DestId, i64) {
        let store = Store::open(path).unwrap();
        let dest = store
            .destination(&DestKey::new("http://u", "me"), true)
            .unwrap()
            .unwrap();
        let row = store
            .pull_add_bucket(
                dest,
                ("dev-b", "laptop"),
                "w_laptop",
                "w_laptop-synced-from-laptop",
                "laptop",
            )
            .unwrap();
        (store, dest, row)
    }

    #[test]
    fn a_page_is_recorded_with_the_position_and_the_status_counts_it() {
        let dir = tempfile::tempdir().unwrap();
        let (store, dest, row) = with_bucket(&dir.path().join("s.sqlite"));
        let spans = |store: &Store| -> Vec<(i64, i64, i64, i64)> {
            let p = store.pull_pending(dest).unwrap();
            p.iter()
                .map(|p| (p.row, p.start_ns, p.end_ns, p.unseen))
                .collect()
        };
        // An insert of an earlier pull that died: not this run's to end.
        let dead = store.pull_add_pending(&[(row, 0, 9, 5)], 1_000).unwrap();
        let pending = store.pull_add_pending(&[(row, 1, 2, 2)], 2_000).unwrap();
        // Another page's insert, recorded before this page is committed.
        let next = store.pull_add_pending(&[(row, 3, 4, 1)], 2_000).unwrap();
        assert_eq!(
            spans(&store),
            vec![(row, 0, 9, 5), (row, 1, 2, 2), (row, 3, 4, 1)]
        );
        let page = PullPage {
            next: 7,
            upserts: [(1, 101, "h1", 10), (2, 102, "h2", 20)]
                .map(|(event_id, local_id, hash, start_ns)| Mapped {
                    row,
                    event_id,
                    local_id,
                    hash: hash.into(),
                    start_ns,
                    print: None,
                })
                .to_vec(),
            deletes: vec![],
            devices: [("dev-b".to_string(), 7)].into(),
            pending,
            caught_up: false,
        };
        store.pull_commit(dest, &page).unwrap();
        assert_eq!(
            spans(&store),
            vec![(row, 0, 9, 5), (row, 3, 4, 1)],
            "the page's own insert is done with it; another page's stays pending until its own commit"
        );
        assert_eq!(store.pull_feed(dest).unwrap().seq, 7);
        let mapped = store.pull_mapped(row, &[1, 2, 3]).unwrap();
        assert_eq!(mapped[&2], (102, "h2".to_string()));
        assert!(!mapped.contains_key(&3));
        // Past the highest mapped id nothing is held; a page reaching back still finds its own.
        assert!(store.pull_mapped(row, &[3, 4]).unwrap().is_empty());
        assert_eq!(
            store
                .pull_mapped(row, &[9, 2])
                .unwrap()
                .keys()
                .collect::<Vec<_>>(),
            vec![&2]
        );
        assert!(store.pull_mapped(row + 1, &[1]).unwrap().is_empty());
        assert_eq!(
            store.pull_known_local(row, &[101, 500]).unwrap(),
            [101].into()
        );
        let status = store.pull_status(dest).unwrap();
        assert_eq!(status.len(), 1);
        assert_eq!(
            (
                status[0].events,
                status[0].last_seq,
                status[0].origins.clone()
            ),
            (2, Some(7), vec!["laptop".to_string()])
        );
        store
            .pull_commit(
                dest,
                &PullPage {
                    next: 8,
                    deletes: vec![(row, 1)],
                    pending: next,
                    caught_up: true,
                    ..PullPage::default()
                },
            )
            .unwrap();
        assert_eq!(store.pull_status(dest).unwrap()[0].events, 1);
        assert!(store.pull_feed(dest).unwrap().caught_up.is_some());
        assert_eq!(
            spans(&store),
            vec![(row, 0, 9, 5)],
            "the end of the feed ends its own inserts, not a dead pull's, which may still land"
        );
        store.pull_pending_left(dead[0], Some(2)).unwrap();
        assert_eq!(spans(&store), vec![(row, 0, 9, 2)]);
        assert_eq!(store.pull_pending(dest).unwrap()[0].sent_at, 1_000);
        store.pull_pending_left(dead[0], None).unwrap();
        assert!(store.pull_pending(dest).unwrap().is_empty());
    }

    #[test]
    fn a_pending_insert_of_an_older_binary_is_swept_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        let (store, dest, row) = with_bucket(&path);
        drop(store);
        // The table as the first pull made it, with a row of an interrupted insert.
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(&format!(
            "DROP TABLE pull_pending;
             CREATE TABLE pull_pending (bucket INTEGER NOT NULL, start_ns INTEGER NOT NULL,
                                        end_ns INTEGER NOT NULL);
             INSERT INTO pull_pending (bucket, start_ns, end_ns) VALUES ({row}, 5, 6);"
        ))
        .unwrap();
        drop(conn);
        let store = Store::open(&path).unwrap();
        let p = store.pull_pending(dest).unwrap();
        assert_eq!(
            p.iter()
                .map(|p| (p.row, p.start_ns, p.end_ns, p.unseen, p.sent_at))
                .collect::<Vec<_>>(),
            vec![(row, 5, 6, 0, 0)],
            "nothing left to wait for: swept once"
        );
        store.pull_add_pending(&[(row, 7, 8, 3)], 9).unwrap();
        assert_eq!(store.pull_pending(dest).unwrap()[1].unseen, 3);
    }
}
