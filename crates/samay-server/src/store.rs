//! The dev server's SQLite storage: what a backend must remember to honour the contract —
//! one row per event key with its current version, per-bucket counters, bucket metadata, and the
//! answer to every batch id for idempotent replays. Each batch is one transaction.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use anyhow::Context;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use samay_api::{BatchResponse, BucketMeta, Deletion, UpEvent};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS devices (
    user TEXT NOT NULL,
    device_id TEXT NOT NULL,
    hostname TEXT NOT NULL,
    last_seen TEXT NOT NULL,
    PRIMARY KEY (user, device_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS buckets (
    user TEXT NOT NULL,
    device_id TEXT NOT NULL,
    bucket_id TEXT NOT NULL,
    type TEXT NOT NULL,
    client TEXT NOT NULL,
    hostname TEXT NOT NULL,
    created TEXT,
    versions_replaced INTEGER NOT NULL DEFAULT 0,
    duplicates INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user, device_id, bucket_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    user TEXT NOT NULL,
    device_id TEXT NOT NULL,
    bucket_id TEXT NOT NULL,
    event_id INTEGER NOT NULL,
    hash TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    duration REAL NOT NULL,
    data TEXT NOT NULL,
    versions INTEGER NOT NULL DEFAULT 1,
    batch_id TEXT NOT NULL,
    PRIMARY KEY (user, device_id, bucket_id, event_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS batches (
    user TEXT NOT NULL,
    batch_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    events INTEGER NOT NULL,
    response TEXT NOT NULL,
    received_at TEXT NOT NULL,
    PRIMARY KEY (user, batch_id)
) WITHOUT ROWID;
PRAGMA user_version = 1;
";

/// A batch after its envelope parsed; events are parsed one by one so a malformed event can be
/// named by index instead of failing the whole body.
#[derive(Debug, Clone)]
pub(crate) struct IncomingBatch {
    pub batch_id: Uuid,
    pub device_id: Uuid,
    pub hostname: String,
    pub buckets: BTreeMap<String, BucketMeta>,
    pub events: Vec<UpEvent>,
    /// Events deleted in the device's aw-server: their stored copies go.
    pub deletions: Vec<Deletion>,
}

/// What became of a batch.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    /// Committed now.
    Stored(BatchResponse),
    /// The batch id was already stored: its original answer, nothing changed.
    Replayed(BatchResponse),
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

pub(crate) struct Store {
    conn: Mutex<Connection>,
}

impl Store {
    /// Creates the database 0600 (with its -wal and -shm): it holds every synced event and the
    /// provider's ID-token signing key.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        samay_common::private_fs::private_database(path)
            .with_context(|| format!("creating {} private to this user", path.display()))?;
        let conn = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)
            .context("creating the dev server schema")?;
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
    pub fn replay(&self, user: &str, batch_id: Uuid) -> rusqlite::Result<Option<BatchResponse>> {
        lookup(&self.lock(), user, batch_id)
    }

    /// Stores a validated batch in one transaction, or returns the original answer when the
    /// batch id was stored before (checked again inside the transaction, so two concurrent
    /// sends of one batch cannot both store).
    pub fn store(&self, user: &str, batch: &IncomingBatch) -> rusqlite::Result<Outcome> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if let Some(answer) = lookup(&tx, user, batch.batch_id)? {
            return Ok(Outcome::Replayed(answer));
        }
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let device = batch.device_id.to_string();
        let batch_id = batch.batch_id.to_string();
        tx.execute(
            "INSERT INTO devices (user, device_id, hostname, last_seen) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (user, device_id) DO UPDATE SET hostname = excluded.hostname, last_seen = excluded.last_seen",
            params![user, device, batch.hostname, now],
        )?;
        for (bucket_id, meta) in &batch.buckets {
            tx.execute(
                "INSERT INTO buckets (user, device_id, bucket_id, type, client, hostname, created)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (user, device_id, bucket_id) DO UPDATE SET type = excluded.type,
                   client = excluded.client, hostname = excluded.hostname,
                   created = coalesce(excluded.created, buckets.created)",
                params![
                    user,
                    device,
                    bucket_id,
                    meta.bucket_type,
                    meta.client,
                    meta.hostname,
                    meta.created
                ],
            )?;
        }
        let mut answer = BatchResponse {
            accepted: 0,
            duplicates: 0,
            deleted: 0,
        };
        for event in &batch.events {
            let stored: Option<String> = tx
                .query_row(
                    "SELECT hash FROM events WHERE user = ?1 AND device_id = ?2 AND bucket_id = ?3 AND event_id = ?4",
                    params![user, device, event.bucket_id, event.event_id],
                    |row| row.get(0),
                )
                .optional()?;
            let data = event.data.get();
            match stored {
                Some(hash) if hash == event.hash => {
                    answer.duplicates += 1;
                    tx.execute(
                        "UPDATE buckets SET duplicates = duplicates + 1 WHERE user = ?1 AND device_id = ?2 AND bucket_id = ?3",
                        params![user, device, event.bucket_id],
                    )?;
                }
                Some(_) => {
                    answer.accepted += 1;
                    tx.execute(
                        "UPDATE events SET hash = ?5, timestamp = ?6, duration = ?7, data = ?8, versions = versions + 1, batch_id = ?9
                         WHERE user = ?1 AND device_id = ?2 AND bucket_id = ?3 AND event_id = ?4",
                        params![user, device, event.bucket_id, event.event_id, event.hash, event.timestamp, event.duration, data, batch_id],
                    )?;
                    tx.execute(
                        "UPDATE buckets SET versions_replaced = versions_replaced + 1 WHERE user = ?1 AND device_id = ?2 AND bucket_id = ?3",
                        params![user, device, event.bucket_id],
                    )?;
                }
                None => {
                    answer.accepted += 1;
                    tx.execute(
                        "INSERT INTO events (user, device_id, bucket_id, event_id, hash, timestamp, duration, data, batch_id)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                        params![user, device, event.bucket_id, event.event_id, event.hash, event.timestamp, event.duration, data, batch_id],
                    )?;
                }
            }
        }
        for d in &batch.deletions {
            answer.deleted += tx.execute(
                "DELETE FROM events WHERE user = ?1 AND device_id = ?2 AND bucket_id = ?3 AND event_id = ?4",
                params![user, device, d.bucket_id, d.event_id],
            )? as u64;
        }
        let answer_json = serde_json::to_string(&answer).unwrap_or_else(|_| "{}".into());
        tx.execute(
            "INSERT INTO batches (user, batch_id, device_id, events, response, received_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![user, batch_id, device, batch.events.len() as i64, answer_json, now],
        )?;
        tx.commit()?;
        Ok(Outcome::Stored(answer))
    }

    pub fn inspect(&self) -> rusqlite::Result<Inspect> {
        let conn = self.lock();
        let batches: i64 = conn.query_row("SELECT count(*) FROM batches", [], |r| r.get(0))?;
        let mut devices: Vec<DeviceSummary> = Vec::new();
        let mut stmt =
            conn.prepare("SELECT user, device_id, hostname FROM devices ORDER BY device_id, user")?;
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
                    (SELECT count(*) FROM events e WHERE e.user = b.user AND e.device_id = b.device_id AND e.bucket_id = b.bucket_id)
             FROM buckets b WHERE b.user = ?1 AND b.device_id = ?2 ORDER BY b.bucket_id",
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
            "SELECT user, device_id, bucket_id, event_id, hash, timestamp, duration, data, versions FROM events
             WHERE (?1 IS NULL OR device_id = ?1) AND (?2 IS NULL OR bucket_id = ?2)
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
            "SELECT response FROM batches WHERE user = ?1 AND batch_id = ?2",
            params![user, batch_id.to_string()],
            |r| r.get(0),
        )
        .optional()?;
    Ok(answer.and_then(|a| serde_json::from_str(&a).ok()))
}
