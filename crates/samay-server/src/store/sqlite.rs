//! The SQLite store (the default): one file, WAL mode, one connection behind a mutex, each
//! batch one `IMMEDIATE` transaction (so a user's writes, and their seqs, are serialized). Also
//! what the dev server's inspection pages read.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use anyhow::Context;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use uuid::Uuid;

use samay_api::{BatchResponse, BucketInfo, Change, DeviceInfo};

use super::plan::{self, Final, Key};
use super::{answer_json, schema, timestamp, IncomingBatch, Outcome, Scope, StoreError};

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                StoreError::Unavailable(e.to_string())
            }
            _ => StoreError::Failed(e.to_string()),
        }
    }
}

/// One stored event (its current version), as `GET /v1/inspect/events` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    pub user: String,
    pub device_id: String,
    pub bucket_id: String,
    pub event_id: i64,
    pub hash: String,
    pub timestamp: String,
    pub duration: f64,
    pub data: Map<String, Value>,
    /// How many distinct versions (hashes) this key has had; 1 = never replaced.
    pub versions: u64,
}

/// `GET /v1/inspect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inspect {
    pub devices: Vec<DeviceSummary>,
    /// Batches stored (distinct batch ids).
    pub batches: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSummary {
    pub device_id: String,
    /// The token's subject that uploaded for this device.
    pub user: String,
    pub hostname: String,
    pub buckets: Vec<BucketSummary>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketSummary {
    pub bucket_id: String,
    #[serde(rename = "type")]
    pub bucket_type: String,
    /// Distinct event keys stored.
    pub events: u64,
    /// Times a known key arrived with a new hash and replaced the stored version.
    pub versions_replaced: u64,
    /// Times a known key arrived with the stored hash (absorbed, nothing changed).
    pub duplicates: u64,
}

pub(crate) struct SqliteStore {
    conn: Mutex<Connection>,
}

impl SqliteStore {
    /// Creates the database 0600 (with its -wal and -shm): it holds every synced event and the
    /// provider's ID-token signing key.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        samay_common::private_fs::private_database(path)
            .with_context(|| format!("creating {} private to this user", path.display()))?;
        let mut conn =
            Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&mut conn).context("migrating the database schema")?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic mid-transaction rolls the transaction back on drop; the connection is fine.
        self.conn
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// The stored answer for a batch id, if it was stored before.
    pub fn replay(&self, user: &str, batch_id: Uuid) -> Result<Option<BatchResponse>, StoreError> {
        Ok(lookup(&self.lock(), user, batch_id)?)
    }

    /// Stores a validated batch in one transaction, or returns the original answer when the
    /// batch id was stored before (checked again inside the transaction, so two concurrent
    /// sends of one batch cannot both store).
    pub fn store(&self, user: &str, batch: &IncomingBatch) -> Result<Outcome, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if let Some(answer) = lookup(&tx, user, batch.batch_id)? {
            return Ok(Outcome::Replayed(answer));
        }
        let now = timestamp(chrono::Utc::now());
        let device = batch.device_id.to_string();
        let batch_id = batch.batch_id.to_string();
        let (uid, seq) = lock_user(&tx, user)?;
        tx.execute(
            "INSERT INTO devices (\"user\", device_id, hostname, last_seen) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (\"user\", device_id) DO UPDATE SET hostname = excluded.hostname, last_seen = excluded.last_seen",
            params![user, device, batch.hostname, now],
        )?;
        let mut ids: HashMap<String, i64> = HashMap::new();
        for (bucket_id, meta) in &batch.buckets {
            // A new bucket takes the next number (this transaction holds the write lock).
            let id = tx
                .prepare_cached(
                    "INSERT INTO buckets (\"user\", device_id, bucket_id, type, client, hostname, created, id)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, (SELECT coalesce(max(id), 0) + 1 FROM buckets))
                     ON CONFLICT (\"user\", device_id, bucket_id) DO UPDATE SET type = excluded.type,
                       client = excluded.client, hostname = excluded.hostname,
                       created = coalesce(excluded.created, buckets.created)
                     RETURNING id",
                )?
                .query_row(
                    params![user, device, bucket_id, meta.bucket_type, meta.client, meta.hostname, meta.created],
                    |r| r.get(0),
                )?;
            ids.insert(bucket_id.clone(), id);
        }
        let keys = plan::keys(batch);
        for (bucket_id, _) in &keys {
            // Buckets only named by deletions: their numbers, if they exist.
            if !ids.contains_key(bucket_id) {
                let id: Option<i64> = tx
                    .prepare_cached(
                        "SELECT id FROM buckets WHERE \"user\" = ?1 AND device_id = ?2 AND bucket_id = ?3",
                    )?
                    .query_row(params![user, device, bucket_id], |r| r.get(0))
                    .optional()?;
                if let Some(id) = id {
                    ids.insert(bucket_id.clone(), id);
                }
            }
        }
        // By runs of close ids, one range of the primary key each (as the PostgreSQL store).
        let mut stored: HashMap<Key, String> = HashMap::new();
        {
            let mut get = tx.prepare_cached(
                "SELECT event_id, hash FROM events WHERE bucket = ?1 AND event_id BETWEEN ?2 AND ?3",
            )?;
            for (name, first, last) in plan::runs(&keys) {
                let Some(bucket) = ids.get(name) else {
                    continue;
                };
                let mut rows = get.query(params![bucket, first, last])?;
                while let Some(row) = rows.next()? {
                    let key = (name.to_string(), row.get::<_, i64>(0)?);
                    if keys.binary_search(&key).is_ok() {
                        stored.insert(key, row.get(1)?);
                    }
                }
            }
        }
        let plan = plan::plan(batch, &stored, seq);
        let id_of = |name: &str| {
            ids.get(name)
                .copied()
                .ok_or_else(|| StoreError::Failed(format!("bucket {name:?} has no number")))
        };
        for w in &plan.writes {
            let bucket = id_of(&w.key.0)?;
            match &w.state {
                Final::Stored {
                    event,
                    start_us,
                    add_versions,
                    new_row,
                } => {
                    // The key's row was read within this transaction, under the write lock:
                    // a new key is a plain insert, a stored one an update.
                    let sql = if *new_row {
                        "INSERT INTO events (bucket, event_id, uid, seq, hash, timestamp, duration, data, versions, start_us)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
                    } else {
                        "UPDATE events SET uid = ?3, seq = ?4, hash = ?5, timestamp = ?6, duration = ?7,
                           data = ?8, versions = versions + ?9, start_us = ?10
                         WHERE bucket = ?1 AND event_id = ?2"
                    };
                    tx.prepare_cached(sql)?.execute(params![
                        bucket,
                        w.key.1,
                        uid,
                        w.seq,
                        event.hash,
                        event.timestamp,
                        event.duration,
                        event.data.get(),
                        add_versions,
                        start_us
                    ])?;
                }
                Final::Deleted => {
                    tx.prepare_cached("DELETE FROM events WHERE bucket = ?1 AND event_id = ?2")?
                        .execute(params![bucket, w.key.1])?;
                    tombstone(&tx, user, &device, &w.key.0, w.key.1, w.seq)?;
                }
            }
        }
        for (bucket_id, counts) in plan.counted() {
            tx.prepare_cached(
                "UPDATE buckets SET versions_replaced = versions_replaced + ?2, duplicates = duplicates + ?3
                 WHERE id = ?1",
            )?
            .execute(params![id_of(bucket_id)?, counts.versions_replaced, counts.duplicates])?;
        }
        set_seq(&tx, user, plan.last_seq)?;
        tx.execute(
            "INSERT INTO batches (\"user\", batch_id, device_id, events, response, received_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![user, batch_id, device, batch.events.len() as i64, answer_json(&plan.answer), now],
        )?;
        let replaced = plan.replaced();
        let answer = plan.answer;
        tx.commit()?;
        Ok(Outcome::Stored { answer, replaced })
    }

    /// The user's devices and their buckets (`GET v1/devices`).
    pub fn devices(&self, user: &str) -> Result<Vec<DeviceInfo>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT device_id, hostname, last_seen FROM devices WHERE \"user\" = ?1 ORDER BY device_id",
        )?;
        let mut devices = stmt
            .query_map(params![user], |r| {
                Ok(DeviceInfo {
                    device_id: r.get(0)?,
                    hostname: r.get(1)?,
                    last_seen: r.get(2)?,
                    buckets: Vec::new(),
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut stmt = conn.prepare(
            "SELECT b.bucket_id, b.type, b.client, b.hostname, b.created,
                    (SELECT count(*) FROM events e WHERE e.bucket = b.id)
             FROM buckets b WHERE b.\"user\" = ?1 AND b.device_id = ?2 ORDER BY b.bucket_id",
        )?;
        for device in &mut devices {
            device.buckets = stmt
                .query_map(params![user, device.device_id], |r| {
                    Ok(BucketInfo {
                        bucket_id: r.get(0)?,
                        bucket_type: r.get(1)?,
                        client: r.get(2)?,
                        hostname: r.get(3)?,
                        created: r.get(4)?,
                        events: r.get::<_, i64>(5)?.max(0) as u64,
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
        }
        Ok(devices)
    }

    /// `GET v1/changes`: stored versions and tombstones with `seq > after`, in seq order.
    pub fn changes(
        &self,
        user: &str,
        after: i64,
        limit: i64,
        device_id: Option<&str>,
    ) -> Result<Vec<Change>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            // As on PostgreSQL: each side's first `limit` rows by seq, then joined and merged.
            "SELECT * FROM (
               SELECT e.seq, b.device_id, b.bucket_id, e.event_id, e.hash, e.timestamp, e.duration, e.data, 0
               FROM (SELECT * FROM events
                     WHERE uid = (SELECT id FROM users WHERE \"user\" = ?1) AND seq > ?2
                       AND (?3 IS NULL OR bucket IN (SELECT id FROM buckets WHERE \"user\" = ?1 AND device_id = ?3))
                     ORDER BY seq LIMIT ?4) AS e
               JOIN buckets b ON b.id = e.bucket
             UNION ALL
               SELECT * FROM (
                 SELECT seq, device_id, bucket_id, event_id, NULL, NULL, NULL, NULL, 1 FROM tombstones
                 WHERE \"user\" = ?1 AND seq > ?2 AND (?3 IS NULL OR device_id = ?3)
                 ORDER BY seq LIMIT ?4)
             ) ORDER BY 1 LIMIT ?4",
        )?;
        let rows = stmt.query_map(params![user, after, device_id, limit], |r| {
            let data: Option<String> = r.get(7)?;
            Ok(Change {
                seq: r.get(0)?,
                device_id: r.get(1)?,
                bucket_id: r.get(2)?,
                event_id: r.get(3)?,
                hash: r.get(4)?,
                timestamp: r.get(5)?,
                duration: r.get(6)?,
                data: data.and_then(|d| RawValue::from_string(d).ok()),
                deleted: r.get::<_, i64>(8)? == 1,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Deletes the user's events in `scope`, one tombstone each, in one transaction.
    pub fn delete(&self, user: &str, scope: &Scope) -> Result<u64, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (_, mut seq) = lock_user(&tx, user)?;
        let keys: Vec<(String, i64, i64)> = {
            let mut stmt = tx.prepare(
                "SELECT b.bucket_id, e.event_id, b.id FROM events e JOIN buckets b ON b.id = e.bucket
                 WHERE b.\"user\" = ?1 AND b.device_id = ?2
                   AND (?3 IS NULL OR b.bucket_id = ?3) AND (?4 IS NULL OR e.start_us >= ?4)
                   AND (?5 IS NULL OR e.start_us < ?5)
                 ORDER BY b.bucket_id, e.event_id",
            )?;
            let rows = stmt.query_map(
                params![
                    user,
                    scope.device_id,
                    scope.bucket_id,
                    scope.start_us,
                    scope.end_us
                ],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        for (bucket_id, event_id, bucket) in &keys {
            seq += 1;
            tx.prepare_cached("DELETE FROM events WHERE bucket = ?1 AND event_id = ?2")?
                .execute(params![bucket, event_id])?;
            tombstone(&tx, user, &scope.device_id, bucket_id, *event_id, seq)?;
        }
        let whole = scope.start_us.is_none() && scope.end_us.is_none();
        if whole {
            // The user takes the device (or bucket) back: its metadata goes with its events.
            tx.execute(
                "DELETE FROM buckets WHERE \"user\" = ?1 AND device_id = ?2 AND (?3 IS NULL OR bucket_id = ?3)",
                params![user, scope.device_id, scope.bucket_id],
            )?;
            if scope.bucket_id.is_none() {
                tx.execute(
                    "DELETE FROM devices WHERE \"user\" = ?1 AND device_id = ?2",
                    params![user, scope.device_id],
                )?;
            }
        }
        set_seq(&tx, user, seq)?;
        tx.commit()?;
        Ok(keys.len() as u64)
    }

    pub fn ping(&self) -> Result<(), StoreError> {
        self.lock().query_row("SELECT 1", [], |_| Ok(()))?;
        Ok(())
    }

    pub fn prune_batches(&self, before: &str) -> Result<u64, StoreError> {
        Ok(self.lock().execute(
            "DELETE FROM batches WHERE received_at < ?1",
            params![before],
        )? as u64)
    }

    pub fn inspect(&self) -> rusqlite::Result<Inspect> {
        let conn = self.lock();
        let batches: i64 = conn.query_row("SELECT count(*) FROM batches", [], |r| r.get(0))?;
        let mut devices: Vec<DeviceSummary> = Vec::new();
        let mut stmt = conn.prepare(
            "SELECT \"user\", device_id, hostname FROM devices ORDER BY device_id, \"user\"",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        for row in rows {
            let (user, device_id, hostname) = row?;
            devices.push(DeviceSummary {
                device_id,
                user,
                hostname,
                buckets: Vec::new(),
            });
        }
        let mut stmt = conn.prepare(
            "SELECT b.bucket_id, b.type, b.versions_replaced, b.duplicates,
                    (SELECT count(*) FROM events e WHERE e.bucket = b.id)
             FROM buckets b WHERE b.\"user\" = ?1 AND b.device_id = ?2 ORDER BY b.bucket_id",
        )?;
        for device in &mut devices {
            let rows = stmt.query_map(params![device.user, device.device_id], |r| {
                Ok(BucketSummary {
                    bucket_id: r.get(0)?,
                    bucket_type: r.get(1)?,
                    versions_replaced: r.get::<_, i64>(2)?.max(0) as u64,
                    duplicates: r.get::<_, i64>(3)?.max(0) as u64,
                    events: r.get::<_, i64>(4)?.max(0) as u64,
                })
            })?;
            device.buckets = rows.collect::<rusqlite::Result<_>>()?;
        }
        Ok(Inspect {
            devices,
            batches: batches.max(0) as u64,
        })
    }

    /// The `limit` most recent stored events (by timestamp, then event id), optionally
    /// filtered: what the events page shows.
    pub fn recent_events(
        &self,
        device_id: Option<&str>,
        bucket_id: Option<&str>,
        limit: u32,
    ) -> rusqlite::Result<Vec<StoredEvent>> {
        self.query_events("timestamp DESC, event_id DESC", device_id, bucket_id, limit)
    }

    /// Stored events, optionally filtered, ordered by (device, bucket, event_id); at most `limit`.
    pub fn events(
        &self,
        device_id: Option<&str>,
        bucket_id: Option<&str>,
        limit: u32,
    ) -> rusqlite::Result<Vec<StoredEvent>> {
        self.query_events(
            "device_id, bucket_id, event_id",
            device_id,
            bucket_id,
            limit,
        )
    }

    /// Stored events of a device and bucket (each optional), in `order_by` (a fixed SQL
    /// `ORDER BY` list of ours, never input), at most `limit`.
    fn query_events(
        &self,
        order_by: &'static str,
        device_id: Option<&str>,
        bucket_id: Option<&str>,
        limit: u32,
    ) -> rusqlite::Result<Vec<StoredEvent>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(&format!(
            "SELECT b.\"user\", b.device_id, b.bucket_id, e.event_id, e.hash, e.timestamp, e.duration, e.data, e.versions
             FROM events e JOIN buckets b ON b.id = e.bucket
             WHERE (?1 IS NULL OR b.device_id = ?1) AND (?2 IS NULL OR b.bucket_id = ?2)
             ORDER BY {order_by} LIMIT ?3"
        ))?;
        let rows = stmt.query_map(params![device_id, bucket_id, limit], |r| {
            let data: String = r.get(7)?;
            Ok(StoredEvent {
                user: r.get(0)?,
                device_id: r.get(1)?,
                bucket_id: r.get(2)?,
                event_id: r.get(3)?,
                hash: r.get(4)?,
                timestamp: r.get(5)?,
                duration: r.get(6)?,
                // Written by this module from a JSON object, so it parses; an empty map is the
                // honest fallback if someone edited the database by hand.
                data: serde_json::from_str(&data).unwrap_or_default(),
                versions: r.get::<_, i64>(8)?.max(0) as u64,
            })
        })?;
        rows.collect()
    }
}

fn lookup(
    conn: &Connection,
    user: &str,
    batch_id: Uuid,
) -> rusqlite::Result<Option<BatchResponse>> {
    let answer: Option<String> = conn
        .query_row(
            "SELECT response FROM batches WHERE \"user\" = ?1 AND batch_id = ?2",
            params![user, batch_id.to_string()],
            |r| r.get(0),
        )
        .optional()?;
    Ok(answer.and_then(|a| serde_json::from_str(&a).ok()))
}

/// Makes sure the user has a row (a new user takes the next number) and returns its number and
/// seq. Inside an `IMMEDIATE` transaction the whole database is already locked for writing.
fn lock_user(tx: &Connection, user: &str) -> rusqlite::Result<(i64, i64)> {
    tx.prepare_cached(
        "INSERT INTO users (\"user\", seq, id) VALUES (?1, 0, (SELECT coalesce(max(id), 0) + 1 FROM users))
         ON CONFLICT (\"user\") DO NOTHING",
    )?
    .execute(params![user])?;
    tx.prepare_cached("SELECT id, seq FROM users WHERE \"user\" = ?1")?
        .query_row(params![user], |r| Ok((r.get(0)?, r.get(1)?)))
}

fn set_seq(tx: &Connection, user: &str, seq: i64) -> rusqlite::Result<()> {
    tx.prepare_cached("UPDATE users SET seq = ?2 WHERE \"user\" = ?1")?
        .execute(params![user, seq])?;
    Ok(())
}

fn tombstone(
    tx: &Connection,
    user: &str,
    device: &str,
    bucket_id: &str,
    event_id: i64,
    seq: i64,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO tombstones (\"user\", seq, device_id, bucket_id, event_id) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![user, seq, device, bucket_id, event_id])?;
    Ok(())
}

/// Runs the migrations this database has not had, each in its own transaction. A database of a
/// newer build is refused rather than misread.
fn migrate(conn: &mut Connection) -> anyhow::Result<()> {
    conn.execute_batch(schema::MIGRATIONS_TABLE)?;
    let current: i64 = conn.query_row(
        "SELECT coalesce(max(version), 0) FROM schema_migrations",
        [],
        |r| r.get(0),
    )?;
    anyhow::ensure!(
        current <= schema::latest(),
        "the database has schema version {current}, newer than this server knows ({}): use a newer samay-server",
        schema::latest()
    );
    for (version, statements) in schema::MIGRATIONS {
        if *version <= current {
            continue;
        }
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for sql in *statements {
            tx.execute_batch(sql)
                .with_context(|| format!("schema migration {version}"))?;
        }
        if *version == 2 {
            number_old_events(&tx)?;
        }
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
            params![version, timestamp(chrono::Utc::now())],
        )?;
        tx.commit()?;
    }
    Ok(())
}

/// Events stored by a dev server before the change feed existed get their seqs and start
/// times, so the feed from 0 gives everything stored.
fn number_old_events(tx: &Connection) -> anyhow::Result<()> {
    let rows: Vec<(String, String, String, i64, String)> = {
        let mut stmt = tx.prepare(
            "SELECT \"user\", device_id, bucket_id, event_id, timestamp FROM events WHERE seq = 0
             ORDER BY \"user\", device_id, bucket_id, event_id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    for (user, device, bucket, event_id, ts) in rows {
        // The users table of this migration (no numbers yet).
        tx.execute(
            "INSERT INTO users (\"user\", seq) VALUES (?1, 0) ON CONFLICT (\"user\") DO NOTHING",
            params![user],
        )?;
        let seq: i64 = tx.query_row(
            "SELECT seq FROM users WHERE \"user\" = ?1",
            params![user],
            |r| r.get::<_, i64>(0),
        )? + 1;
        tx.execute(
            "UPDATE events SET seq = ?5, start_us = ?6 WHERE \"user\" = ?1 AND device_id = ?2 AND bucket_id = ?3 AND event_id = ?4",
            params![user, device, bucket, event_id, seq, plan::start_us(&ts)],
        )?;
        set_seq(tx, &user, seq)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dev database written before migrations and the change feed (the schema of
    /// `PRAGMA user_version = 1`) opens, keeps its events, and gives them seqs in the feed.
    #[test]
    fn a_dev_database_of_the_first_schema_is_migrated_into_the_feed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.sqlite");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE devices (user TEXT NOT NULL, device_id TEXT NOT NULL, hostname TEXT NOT NULL,
                   last_seen TEXT NOT NULL, PRIMARY KEY (user, device_id)) WITHOUT ROWID;
                 CREATE TABLE buckets (user TEXT NOT NULL, device_id TEXT NOT NULL, bucket_id TEXT NOT NULL,
                   type TEXT NOT NULL, client TEXT NOT NULL, hostname TEXT NOT NULL, created TEXT,
                   versions_replaced INTEGER NOT NULL DEFAULT 0, duplicates INTEGER NOT NULL DEFAULT 0,
                   PRIMARY KEY (user, device_id, bucket_id)) WITHOUT ROWID;
                 CREATE TABLE events (user TEXT NOT NULL, device_id TEXT NOT NULL, bucket_id TEXT NOT NULL,
                   event_id INTEGER NOT NULL, hash TEXT NOT NULL, timestamp TEXT NOT NULL, duration REAL NOT NULL,
                   data TEXT NOT NULL, versions INTEGER NOT NULL DEFAULT 1, batch_id TEXT NOT NULL,
                   PRIMARY KEY (user, device_id, bucket_id, event_id)) WITHOUT ROWID;
                 CREATE TABLE batches (user TEXT NOT NULL, batch_id TEXT NOT NULL, device_id TEXT NOT NULL,
                   events INTEGER NOT NULL, response TEXT NOT NULL, received_at TEXT NOT NULL,
                   PRIMARY KEY (user, batch_id)) WITHOUT ROWID;
                 PRAGMA user_version = 1;
                 INSERT INTO events VALUES ('dev', 'd1', 'w', 1, 'h1', '2024-05-01T10:00:00Z', 1.0, '{}', 1, 'b');
                 INSERT INTO events VALUES ('dev', 'd1', 'w', 2, 'h2', '2024-05-01T11:00:00Z', 2.0, '{\"a\":1}', 1, 'b');
                 INSERT INTO events VALUES ('alice', 'd2', 'w', 7, 'h7', '2024-05-01T12:00:00Z', 3.0, '{}', 1, 'b');",
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let feed = store.changes("dev", 0, 100, None).unwrap();
        let got: Vec<(i64, i64, Option<&str>)> = feed
            .iter()
            .map(|c| (c.seq, c.event_id, c.hash.as_deref()))
            .collect();
        assert_eq!(got, vec![(1, 1, Some("h1")), (2, 2, Some("h2"))]);
        assert_eq!(store.changes("alice", 0, 100, None).unwrap().len(), 1);
        // Range deletes see the old events' start times.
        let scope = Scope {
            device_id: "d1".into(),
            bucket_id: Some("w".into()),
            start_us: Some(plan::start_us("2024-05-01T10:30:00Z")),
            end_us: None,
        };
        assert_eq!(store.delete("dev", &scope).unwrap(), 1);
        // Opening again migrates nothing twice.
        drop(store);
        let store = SqliteStore::open(&path).unwrap();
        let feed = store.changes("dev", 0, 100, None).unwrap();
        assert_eq!(feed.len(), 2);
        assert!(feed[1].deleted && feed[1].seq == 3);
    }
}
