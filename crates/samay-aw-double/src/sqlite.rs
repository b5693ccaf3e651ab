//! The double's aw-server-rust storage: SQLite with aw-server-rust's schema, index and queries,
//! so that what a read pattern costs the double is what it costs aw-server-rust.
//!
//! The in-memory store ([`super::store::MemDb`]) answers a range query by binary search and
//! serves each event's stored JSON as is: O(page) for any query. aw-server-rust does not
//! (read from its `aw-datastore/src/datastore.rs`, database schema v5):
//!
//! * events live in one table `events(id INTEGER PRIMARY KEY AUTOINCREMENT, bucketrow,
//!   starttime, endtime, data TEXT)` with the single index
//!   `events_bucketrow_starttime_endtime_index ON events(bucketrow, starttime DESC, endtime)`;
//! * a range read is `SELECT id, starttime, endtime, data FROM events WHERE bucketrow = ?1 AND
//!   endtime >= ?2 AND starttime <= ?3 ORDER BY starttime DESC, endtime ASC, id ASC LIMIT ?4`.
//!   The index bounds `starttime` from above only, so SQLite walks it from `end` towards the
//!   bucket's oldest event, testing `endtime` on each entry, until `LIMIT` rows matched: a query
//!   that matches fewer than `limit` rows walks every older event of the bucket;
//! * every returned row's `data` is parsed into a `serde_json::Map`, the row is clipped to the
//!   range, and the list is serialised again by serde (Rocket's `Json`);
//! * `GET .../events/count` counts the whole bucket: its handler passes no range;
//! * the query API's `query_bucket` reads each timeperiod with the same statement and no limit.
//!
//! This module does the same work with the same libraries (rusqlite, serde_json, chrono): the
//! same statements over the same index, the same parse and serialisation per event. The
//! benchmark (`benches/catchup.rs`) checks its costs against aw-server-rust's published
//! figures.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use serde_json::{Map, Value};

use super::store::{
    same_json, BucketInfo, DoubleError, EventRef, HeartbeatOutcome, RawEvent, StoredEvent,
};
use crate::Event;

/// aw-server-rust's schema at database version 5 (`_migrate_v0_to_v1` … `_migrate_v4_to_v5`).
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS buckets (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT UNIQUE NOT NULL,
    type TEXT NOT NULL,
    client TEXT NOT NULL,
    hostname TEXT NOT NULL,
    created TEXT NOT NULL,
    data_deprecated TEXT DEFAULT '{}',
    data TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS bucket_id_index ON buckets(id);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    bucketrow INTEGER NOT NULL,
    starttime INTEGER NOT NULL,
    endtime INTEGER NOT NULL,
    data TEXT NOT NULL,
    FOREIGN KEY (bucketrow) REFERENCES buckets(id)
);
CREATE TABLE IF NOT EXISTS key_value (
    key TEXT PRIMARY KEY,
    value TEXT,
    last_modified NUMBER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_bucketrow_starttime_endtime_index
    ON events(bucketrow, starttime DESC, endtime);
PRAGMA user_version = 5;
";

/// `get_events_inner`'s statement.
const RANGE_SQL: &str = "SELECT id, starttime, endtime, data FROM events
     WHERE bucketrow = ?1 AND endtime >= ?2 AND starttime <= ?3
     ORDER BY starttime DESC, endtime ASC, id ASC LIMIT ?4";

/// One bucket as aw-server-rust caches it (`buckets_cache`): its row id, what it was created
/// with, and `metadata.start`/`metadata.end`, which only grow on insert and are recomputed on
/// delete — so after a replacing insert elsewhere they may be stale, as there.
#[derive(Debug, Clone)]
struct Cached {
    row: i64,
    info: BucketInfo,
    span: Option<(i64, i64)>,
}

/// The SQLite store. One connection behind a lock: aw-server-rust serves every datastore
/// request on one worker thread, so requests never run in parallel there either.
pub struct SqliteDb {
    conn: Mutex<Connection>,
    buckets: BTreeMap<String, Cached>,
    /// aw-server-rust's `last_heartbeat` cache: the event (id, start, end, data) the next
    /// heartbeat merges with, until an insert invalidates it.
    last_heartbeat: HashMap<String, StoredEvent>,
}

impl std::fmt::Debug for SqliteDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteDb")
            .field("buckets", &self.buckets.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// An event as aw-models serialises it: `timestamp` by chrono's serde, `duration` as float
/// seconds from integer nanoseconds, `data` the parsed map.
#[derive(Serialize)]
struct RustEvent {
    id: i64,
    timestamp: DateTime<Utc>,
    #[serde(serialize_with = "seconds")]
    duration: i64,
    data: Map<String, Value>,
}

fn seconds<S: serde::Serializer>(ns: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(*ns as f64 / 1e9)
}

fn internal(e: rusqlite::Error) -> DoubleError {
    DoubleError::Internal(e.to_string())
}

impl SqliteDb {
    /// Opens (creating) the database at `path`, or an in-memory one.
    pub fn open(path: Option<&Path>) -> Result<SqliteDb, DoubleError> {
        let conn = match path {
            Some(p) => Connection::open(p),
            None => Connection::open_in_memory(),
        }
        .map_err(internal)?;
        // aw-server-rust's worker: WAL, and synchronous=FULL so a commit is durable.
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")
            .map_err(internal)?;
        conn.execute_batch(SCHEMA).map_err(internal)?;
        let mut db = SqliteDb {
            conn: Mutex::new(conn),
            buckets: BTreeMap::new(),
            last_heartbeat: HashMap::new(),
        };
        db.load_buckets()?;
        Ok(db)
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic mid-statement leaves SQLite consistent (statements are atomic).
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `get_stored_buckets`: every bucket with its span, as at aw-server-rust's start.
    fn load_buckets(&mut self) -> Result<(), DoubleError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT buckets.id, buckets.name, buckets.type, buckets.client, buckets.hostname,
                        buckets.created, min(events.starttime), max(events.endtime), buckets.data
                 FROM buckets LEFT OUTER JOIN events ON buckets.id = events.bucketrow
                 GROUP BY buckets.id",
            )
            .map_err(internal)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, Option<i64>>(6)?,
                    r.get::<_, Option<i64>>(7)?,
                    r.get::<_, String>(8)?,
                ))
            })
            .map_err(internal)?;
        let mut buckets = BTreeMap::new();
        for row in rows {
            let (row, name, bucket_type, client, hostname, created, start, end, data) =
                row.map_err(internal)?;
            let created = DateTime::parse_from_rfc3339(&created)
                .map(|c| c.with_timezone(&Utc))
                .map_err(|e| DoubleError::Internal(format!("bucket {name}: created: {e}")))?;
            let info = BucketInfo {
                id: name.clone(),
                bucket_type,
                client,
                hostname,
                created,
                data: serde_json::from_str(&data).unwrap_or_default(),
            };
            buckets.insert(
                name,
                Cached {
                    row,
                    info,
                    span: start.zip(end),
                },
            );
        }
        drop(stmt);
        drop(conn);
        self.buckets = buckets;
        Ok(())
    }

    fn cached(&self, bucket: &str) -> Result<&Cached, DoubleError> {
        self.buckets
            .get(bucket)
            .ok_or_else(|| DoubleError::BucketNotFound(bucket.to_owned()))
    }

    pub fn create_bucket(&mut self, info: BucketInfo) -> Result<(), DoubleError> {
        if self.buckets.contains_key(&info.id) {
            return Err(DoubleError::BucketExists(info.id));
        }
        let row = {
            let conn = self.conn();
            conn.execute(
                "INSERT INTO buckets (name, type, client, hostname, created, data)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    info.id,
                    info.bucket_type,
                    info.client,
                    info.hostname,
                    info.created.to_rfc3339(),
                    Value::Object(info.data.clone()).to_string()
                ],
            )
            .map_err(internal)?;
            conn.last_insert_rowid()
        };
        self.buckets.insert(
            info.id.clone(),
            Cached {
                row,
                info,
                span: None,
            },
        );
        Ok(())
    }

    pub fn delete_bucket(&mut self, bucket: &str) -> Result<(), DoubleError> {
        let row = self.cached(bucket)?.row;
        {
            let conn = self.conn();
            conn.execute("DELETE FROM events WHERE bucketrow = ?1", [row])
                .map_err(internal)?;
            conn.execute("DELETE FROM buckets WHERE id = ?1", [row])
                .map_err(internal)?;
        }
        self.buckets.remove(bucket);
        self.last_heartbeat.remove(bucket);
        Ok(())
    }

    /// Every bucket and event gone, ids start over at 1 (the `sqlite_sequence` rows go too).
    pub fn clear(&mut self) -> Result<(), DoubleError> {
        self.conn()
            .execute_batch("DELETE FROM events; DELETE FROM buckets; DELETE FROM sqlite_sequence;")
            .map_err(internal)?;
        self.buckets.clear();
        self.last_heartbeat.clear();
        Ok(())
    }

    pub fn forget_heartbeats(&mut self) {
        self.last_heartbeat.clear();
    }

    pub fn bucket_ids(&self) -> Vec<String> {
        self.buckets.keys().cloned().collect()
    }

    pub fn bucket_info(&self, bucket: &str) -> Result<BucketInfo, DoubleError> {
        Ok(self.cached(bucket)?.info.clone())
    }

    /// aw-server-rust's cached `metadata` (`start`, `end`).
    pub fn bucket_span(&self, bucket: &str) -> Result<Option<(i64, i64)>, DoubleError> {
        Ok(self.cached(bucket)?.span)
    }

    /// Inserts `(bucket, id, event)` in one transaction (aw-server-rust commits its worker's
    /// transaction every 100 events; a bulk load here commits once). `id: Some` replaces that
    /// row wherever it is (`INSERT OR REPLACE`).
    pub fn insert_many<'b>(
        &mut self,
        events: impl IntoIterator<Item = (&'b str, Option<i64>, RawEvent)>,
    ) -> Result<Vec<i64>, DoubleError> {
        let mut ids = Vec::new();
        let mut touched: HashMap<String, (i64, i64)> = HashMap::new();
        {
            let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
            let tx = conn.transaction().map_err(internal)?;
            {
                let mut stmt = tx
                    .prepare_cached(
                        "INSERT OR REPLACE INTO events(bucketrow, id, starttime, endtime, data)
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                    )
                    .map_err(internal)?;
                for (bucket, id, raw) in events {
                    let row = self
                        .buckets
                        .get(bucket)
                        .ok_or_else(|| DoubleError::BucketNotFound(bucket.to_owned()))?
                        .row;
                    let end = checked_end(&raw)?;
                    stmt.execute(params![row, id, raw.timestamp_ns, end, raw.data])
                        .map_err(internal)?;
                    ids.push(tx.last_insert_rowid());
                    let t = touched
                        .entry(bucket.to_owned())
                        .or_insert((raw.timestamp_ns, end));
                    t.0 = t.0.min(raw.timestamp_ns);
                    t.1 = t.1.max(end);
                }
            }
            tx.commit().map_err(internal)?;
        }
        for (bucket, (start, end)) in touched {
            self.extend_span(&bucket, start, end);
            // `InsertEvents` invalidates the heartbeat cache.
            self.last_heartbeat.remove(&bucket);
        }
        Ok(ids)
    }

    pub fn insert(
        &mut self,
        bucket: &str,
        events: impl IntoIterator<Item = (Option<i64>, RawEvent)>,
    ) -> Result<Vec<i64>, DoubleError> {
        self.cached(bucket)?;
        self.insert_many(events.into_iter().map(|(id, raw)| (bucket, id, raw)))
    }

    /// `update_endtime`: the cached span only grows.
    fn extend_span(&mut self, bucket: &str, start: i64, end: i64) {
        if let Some(c) = self.buckets.get_mut(bucket) {
            c.span = Some(match c.span {
                Some((s, e)) => (s.min(start), e.max(end)),
                None => (start, end),
            });
        }
    }

    pub fn delete_event(&mut self, bucket: &str, id: i64) -> Result<bool, DoubleError> {
        let row = self.cached(bucket)?.row;
        let (deleted, span) = {
            let conn = self.conn();
            let n = conn
                .execute(
                    "DELETE FROM events WHERE bucketrow = ?1 AND id = ?2",
                    params![row, id],
                )
                .map_err(internal)?;
            // `refresh_bucket_bounds`.
            let span: (Option<i64>, Option<i64>) = conn
                .query_row(
                    "SELECT min(starttime), max(endtime) FROM events WHERE bucketrow = ?1",
                    [row],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(internal)?;
            (n > 0, span.0.zip(span.1))
        };
        if let Some(c) = self.buckets.get_mut(bucket) {
            c.span = span;
        }
        // Deliberate difference, as in the in-memory store: the cache is forgotten.
        self.last_heartbeat.remove(bucket);
        Ok(deleted)
    }

    pub fn get_event(&self, bucket: &str, id: i64) -> Result<StoredEvent, DoubleError> {
        let row = self.cached(bucket)?.row;
        self.conn()
            .prepare_cached(
                "SELECT id, starttime, endtime, data FROM events
                 WHERE bucketrow = ?1 AND id = ?2 LIMIT 1",
            )
            .and_then(|mut st| {
                st.query_row(params![row, id], |r| {
                    Ok(StoredEvent {
                        id: r.get(0)?,
                        start: r.get(1)?,
                        end: r.get(2)?,
                        data: r.get(3)?,
                    })
                })
                .optional()
            })
            .map_err(internal)?
            .ok_or_else(|| DoubleError::EventNotFound {
                bucket: bucket.to_owned(),
                id,
            })
    }

    /// Runs `get_events_inner`'s statement and hands each row, clipped to the range, to
    /// `emit`, parsing its data as aw-server-rust does (a row whose data does not parse is
    /// skipped, with a warning there).
    fn range(
        &self,
        bucket: &str,
        start: Option<i64>,
        end: Option<i64>,
        limit: Option<u64>,
        mut emit: impl FnMut(i64, i64, i64, &str, Map<String, Value>),
    ) -> Result<usize, DoubleError> {
        let row = self.cached(bucket)?.row;
        let lo = start.unwrap_or(0);
        let hi = end.unwrap_or(i64::MAX);
        if lo > hi {
            return Ok(0);
        }
        let limit = limit.map_or(-1, |l| i64::try_from(l).unwrap_or(-1));
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(RANGE_SQL).map_err(internal)?;
        let mut rows = stmt.query(params![row, lo, hi, limit]).map_err(internal)?;
        let mut n = 0;
        while let Some(r) = rows.next().map_err(internal)? {
            let id: i64 = r.get(0).map_err(internal)?;
            let s: i64 = r.get(1).map_err(internal)?;
            let e: i64 = r.get(2).map_err(internal)?;
            let data = r.get_ref(3).map_err(internal)?;
            let text = data
                .as_str()
                .map_err(|e| DoubleError::Internal(e.to_string()))?;
            let Ok(map) = serde_json::from_str::<Map<String, Value>>(text) else {
                continue;
            };
            emit(id, s.max(lo), e.min(hi), text, map);
            n += 1;
        }
        Ok(n)
    }

    /// The range query with each event as a reference (for the double's own callers, which
    /// want the stored text).
    pub fn query(
        &self,
        bucket: &str,
        start: Option<i64>,
        end: Option<i64>,
        limit: Option<u64>,
        mut emit: impl FnMut(EventRef<'_>),
    ) -> Result<usize, DoubleError> {
        self.range(bucket, start, end, limit, |id, start, end, data, _| {
            emit(EventRef {
                id,
                start,
                end,
                data,
            })
        })
    }

    /// `GET .../events` as aw-server-rust answers it: the rows parsed into events, serialised
    /// by serde.
    pub fn query_json(
        &self,
        bucket: &str,
        start: Option<i64>,
        end: Option<i64>,
        limit: Option<u64>,
    ) -> Result<Vec<u8>, DoubleError> {
        let mut events = Vec::new();
        self.range(bucket, start, end, limit, |id, s, e, _, data| {
            events.push(RustEvent {
                id,
                timestamp: DateTime::from_timestamp_nanos(s),
                duration: e - s,
                data,
            })
        })?;
        serde_json::to_vec(&events).map_err(|e| DoubleError::Internal(e.to_string()))
    }

    /// `GET .../events/count`: the whole bucket (the handler passes no range).
    pub fn count(&self, bucket: &str) -> Result<usize, DoubleError> {
        let row = self.cached(bucket)?.row;
        let n: i64 = self
            .conn()
            .prepare_cached(
                "SELECT count(*) FROM events WHERE bucketrow = ?1 AND endtime >= ?2 AND starttime <= ?3",
            )
            .and_then(|mut st| st.query_row(params![row, 0i64, i64::MAX], |r| r.get(0)))
            .map_err(internal)?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// The query API's `sum_durations(query_bucket(bucket))` for each timeperiod: each period
    /// is read with the range statement and no limit, every row parsed, clipped and summed.
    pub fn sum_durations(
        &self,
        bucket: &str,
        periods: &[(i64, i64)],
    ) -> Result<Vec<f64>, DoubleError> {
        periods
            .iter()
            .map(|&(s, e)| {
                let mut total: i64 = 0;
                self.range(bucket, Some(s), Some(e), None, |_, s, e, _, _| {
                    total = total.saturating_add(e - s);
                })?;
                Ok(total as f64 / 1e9)
            })
            .collect()
    }

    /// Every event of the bucket, newest first, unclipped.
    pub fn events(&self, bucket: &str) -> Result<Vec<Event>, DoubleError> {
        let mut out = Vec::new();
        self.range(bucket, Some(i64::MIN), None, None, |id, s, e, _, data| {
            out.push(Event {
                id: Some(id),
                timestamp: DateTime::from_timestamp_nanos(s),
                duration: (e - s) as f64 / 1e9,
                data,
            })
        })?;
        Ok(out)
    }

    pub fn len(&self, bucket: &str) -> Result<usize, DoubleError> {
        let row = self.cached(bucket)?.row;
        let n: i64 = self
            .conn()
            .query_row(
                "SELECT count(*) FROM events WHERE bucketrow = ?1",
                [row],
                |r| r.get(0),
            )
            .map_err(internal)?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// aw-server-rust's heartbeat: the cached last heartbeat, else the newest event (first row
    /// of the range statement with limit 1), merged when the data is equal and the heartbeat
    /// starts within `[last.start, last.end + pulsetime]` (`replace_last_event`: same id);
    /// otherwise inserted.
    pub fn heartbeat(
        &mut self,
        bucket: &str,
        heartbeat: RawEvent,
        pulsetime: f64,
    ) -> Result<HeartbeatOutcome, DoubleError> {
        let pulse_ns = super::store::pulse_nanos(pulsetime)?;
        let hb_end = checked_end(&heartbeat)?;
        let row = self.cached(bucket)?.row;
        let last = match self.last_heartbeat.get(bucket) {
            Some(e) => Some(e.clone()),
            None => {
                let mut newest = None;
                self.range(bucket, None, None, Some(1), |id, start, end, data, _| {
                    newest = Some(StoredEvent {
                        id,
                        start,
                        end,
                        data: data.to_owned(),
                    })
                })?;
                newest
            }
        };
        if let Some(last) = last {
            let same = last.data == heartbeat.data || same_json(&last.data, &heartbeat.data);
            if same
                && last.start <= heartbeat.timestamp_ns
                && heartbeat.timestamp_ns <= last.end.saturating_add(pulse_ns)
            {
                let merged = StoredEvent {
                    end: last.end.max(hb_end),
                    ..last
                };
                self.conn()
                    .execute(
                        "UPDATE events SET starttime = ?2, endtime = ?3, data = ?4
                         WHERE bucketrow = ?1 AND id = ?5",
                        params![row, merged.start, merged.end, merged.data, merged.id],
                    )
                    .map_err(internal)?;
                self.extend_span(bucket, merged.start, merged.end);
                let event = merged.to_event();
                self.last_heartbeat.insert(bucket.to_owned(), merged);
                return Ok(HeartbeatOutcome::Merged(event));
            }
        }
        let ids = self.insert(bucket, [(None, heartbeat)])?;
        let id = ids.first().copied().unwrap_or_default();
        let stored = self.get_event(bucket, id)?;
        let event = stored.to_event();
        self.last_heartbeat.insert(bucket.to_owned(), stored);
        Ok(HeartbeatOutcome::Inserted(event))
    }
}

fn checked_end(raw: &RawEvent) -> Result<i64, DoubleError> {
    if raw.duration_ns < 0 {
        return Err(DoubleError::Invalid(format!(
            "Invalid event: duration must be non-negative, got {}s",
            raw.duration_ns as f64 / 1e9
        )));
    }
    raw.timestamp_ns
        .checked_add(raw.duration_ns)
        .ok_or_else(|| DoubleError::Invalid("event ends after 2262 (not storable)".to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;
    const T0: i64 = 1_704_067_200 * S;

    fn db() -> SqliteDb {
        let mut db = SqliteDb::open(None).unwrap();
        db.create_bucket(BucketInfo {
            id: "b".into(),
            bucket_type: "t".into(),
            client: "c".into(),
            hostname: "h".into(),
            created: Utc::now(),
            data: Map::new(),
        })
        .unwrap();
        db
    }

    fn raw(start: i64, dur: i64) -> RawEvent {
        RawEvent {
            timestamp_ns: T0 + start,
            duration_ns: dur,
            data: format!("{{\"s\":{start}}}"),
        }
    }

    /// The range statement runs over aw-server-rust's composite index, walking it newest first
    /// with no sort: the property the cost model rests on.
    #[test]
    fn range_reads_walk_the_composite_index_without_sorting() {
        let db = db();
        let conn = db.conn();
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {RANGE_SQL}"))
            .unwrap()
            .query_map(params![1, 0, 10, 5], |r| r.get::<_, String>(3))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let plan = plan.join(" | ");
        assert!(
            plan.contains("events_bucketrow_starttime_endtime_index"),
            "{plan}"
        );
        assert!(plan.contains("starttime<?"), "{plan}");
        assert!(!plan.contains("TEMP B-TREE"), "{plan}");
    }

    #[test]
    fn stores_reads_clips_and_counts_like_the_memory_store() {
        let mut db = db();
        db.insert("b", (0..10).map(|i| (None, raw(i * 10 * S, 5 * S))))
            .unwrap();
        let mut got = Vec::new();
        db.query("b", Some(T0 + 22 * S), Some(T0 + 52 * S), None, |e| {
            got.push((e.id, e.start - T0, e.end - T0))
        })
        .unwrap();
        // 5 [50,55] clipped at 52; 4 [40,45]; 3 [30,35]; 2 [20,25] starts before 22: clipped.
        assert_eq!(
            got,
            vec![
                (6, 50 * S, 52 * S),
                (5, 40 * S, 45 * S),
                (4, 30 * S, 35 * S),
                (3, 22 * S, 25 * S)
            ]
        );
        assert_eq!(db.count("b").unwrap(), 10);
        assert_eq!(db.bucket_span("b").unwrap(), Some((T0, T0 + 95 * S)));
        let sums = db
            .sum_durations("b", &[(T0 + 22 * S, T0 + 52 * S), (T0, T0 + 4 * S)])
            .unwrap();
        // 3 + 5 + 5 + 2 seconds clipped to [22, 52]; 4 of the first event in [0, 4].
        assert_eq!(sums, vec![15.0, 4.0]);
        assert!(db.delete_event("b", 10).unwrap());
        assert_eq!(db.bucket_span("b").unwrap(), Some((T0, T0 + 85 * S)));
        let json: Value =
            serde_json::from_slice(&db.query_json("b", None, None, Some(1)).unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!([{"id": 9, "timestamp": "2024-01-01T00:01:20Z", "duration": 5.0, "data": {"s": 80_000_000_000i64}}])
        );
    }

    #[test]
    fn heartbeats_merge_keep_the_id_and_replacing_inserts_move_rows() {
        let mut db = db();
        let first = db.heartbeat("b", raw(0, 0), 10.0).unwrap();
        let HeartbeatOutcome::Inserted(first) = first else {
            panic!("first heartbeat inserts")
        };
        let merged = db.heartbeat("b", raw(0, 0), 10.0).unwrap();
        assert!(matches!(merged, HeartbeatOutcome::Merged(ref e) if e.id == first.id));
        let mut later = raw(0, 0);
        later.timestamp_ns += 5 * S;
        later.data = first
            .data
            .get("s")
            .map(|v| format!("{{\"s\":{v}}}"))
            .unwrap();
        let HeartbeatOutcome::Merged(grown) = db.heartbeat("b", later, 10.0).unwrap() else {
            panic!("merges within pulsetime")
        };
        assert_eq!((grown.id, grown.duration), (first.id, 5.0));
        // An explicit id replaces the row.
        let ids = db.insert("b", [(first.id, raw(100 * S, S))]).unwrap();
        assert_eq!(ids, vec![first.id.unwrap()]);
        assert_eq!(db.len("b").unwrap(), 1);
        assert_eq!(db.get_event("b", ids[0]).unwrap().start, T0 + 100 * S);
    }
}
