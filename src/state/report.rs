//! What the state tells `--status`, progress displays and the status bucket: per-bucket totals,
//! the quarantine and how the last cycles ended — about the current destination (the one the
//! last sync ran against).

use rusqlite::{params, OptionalExtension};

use super::schema::{DELETED, DELIVERED, QUARANTINED};
use super::{ns_to_rfc3339, DestId, StateError, Store, GENERATION_SHIFT};

/// Per-bucket numbers for `--status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BucketStatus {
    pub bucket_id: String,
    pub generation: u32,
    /// Start of the newest event the state covers (the data position reading continues from).
    pub cursor: Option<String>,
    /// Distinct events acknowledged by the upstream (all generations, deleted ones not).
    pub delivered: u64,
    /// Of `delivered`, the events of the current generation (what aw-server holds now).
    pub delivered_current: u64,
    /// Event versions acknowledged (a grown heartbeat event counts each time it was sent).
    pub versions_sent: u64,
    pub quarantined: u64,
    /// Events deleted in aw-server whose deletion the upstream acknowledged.
    pub deleted: u64,
}

impl BucketStatus {
    /// A bucket the destination has not registered: nothing delivered yet.
    pub fn unregistered(bucket_id: &str) -> BucketStatus {
        BucketStatus {
            bucket_id: bucket_id.to_string(),
            generation: 0,
            cursor: None,
            delivered: 0,
            delivered_current: 0,
            versions_sent: 0,
            quarantined: 0,
            deleted: 0,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct QuarantineEntry {
    pub bucket_id: String,
    pub event_id: i64,
    pub reason: String,
    pub at: String,
    pub event: serde_json::Value,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CycleRecord {
    pub last_cycle: Option<String>,
    pub last_success: Option<String>,
    pub last_error: Option<String>,
}

impl Store {
    fn current_dest_id(&self) -> Result<Option<DestId>, StateError> {
        Ok(self.current_destination()?.map(|(id, _)| id))
    }

    /// Remembers how the last cycle ended, for `--status`.
    pub fn record_cycle(&self, error: Option<&str>) -> Result<(), StateError> {
        let now = chrono::Utc::now().to_rfc3339();
        let conn = self.writer();
        let set = |k: &str, v: Option<&str>| -> Result<(), StateError> {
            match v {
                Some(v) => conn.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
                    params![k, v],
                ),
                None => conn.execute("DELETE FROM meta WHERE key = ?1", [k]),
            }
            .map(|_| ())
            .map_err(self.err())
        };
        set("last_cycle", Some(&now))?;
        match error {
            None => {
                set("last_success", Some(&now))?;
                set("last_error", None)
            }
            Some(e) => set("last_error", Some(e)),
        }
    }

    pub fn cycle_record(&self) -> Result<CycleRecord, StateError> {
        let conn = self.reader();
        let get = |k: &str| -> Result<Option<String>, StateError> {
            conn.query_row("SELECT value FROM meta WHERE key = ?1", [k], |r| r.get(0))
                .optional()
                .map_err(self.err())
        };
        Ok(CycleRecord {
            last_cycle: get("last_cycle")?,
            last_success: get("last_success")?,
            last_error: get("last_error")?,
        })
    }

    /// Events currently quarantined at the current destination. Reads the partial index of
    /// quarantined rows: the daemon asks after every cycle, and counting through `sent` costs a
    /// pass over every event ever delivered (most of an idle cycle's CPU at 10k events, growing
    /// without bound).
    pub fn quarantined_total(&self) -> Result<u64, StateError> {
        let Some(dest) = self.current_dest_id()? else {
            return Ok(0);
        };
        let conn = self.reader();
        let n: i64 = conn
            .prepare_cached(
                "SELECT COUNT(*) FROM sent INDEXED BY sent_quarantined
                 WHERE status = 1 AND bucket IN (SELECT id FROM buckets WHERE dest = ?1)",
            )
            .and_then(|mut st| st.query_row([dest], |r| r.get(0)))
            .map_err(self.err())?;
        Ok(n.max(0) as u64)
    }

    /// Per-bucket totals at the current destination for `--status` and progress displays:
    /// counts every delivered row, so it is not for every cycle (see
    /// [`Store::quarantined_total`]).
    pub fn bucket_statuses(&self) -> Result<Vec<BucketStatus>, StateError> {
        let Some(dest) = self.current_dest_id()? else {
            return Ok(Vec::new());
        };
        let conn = self.reader();
        let mut stmt = conn
            .prepare(
                "SELECT b.bucket_id, b.generation, b.top_ns, b.versions_sent,
                        (SELECT COUNT(*) FROM sent s WHERE s.bucket = b.id AND s.status = ?2),
                        (SELECT COUNT(*) FROM sent s WHERE s.bucket = b.id AND s.status = ?3),
                        (SELECT COUNT(*) FROM sent s WHERE s.bucket = b.id AND s.status = ?2
                            AND (s.event_id >> ?5) = b.generation),
                        (SELECT COUNT(*) FROM sent s WHERE s.bucket = b.id AND s.status = ?4)
                 FROM buckets b WHERE b.dest = ?1 ORDER BY b.bucket_id",
            )
            .map_err(self.err())?;
        let rows = stmt
            .query_map(
                params![dest, DELIVERED, QUARANTINED, DELETED, GENERATION_SHIFT],
                |r| {
                    Ok(BucketStatus {
                        bucket_id: r.get(0)?,
                        generation: r.get(1)?,
                        cursor: r.get::<_, Option<i64>>(2)?.map(ns_to_rfc3339),
                        versions_sent: r.get::<_, i64>(3)?.max(0) as u64,
                        delivered: r.get::<_, i64>(4)?.max(0) as u64,
                        quarantined: r.get::<_, i64>(5)?.max(0) as u64,
                        delivered_current: r.get::<_, i64>(6)?.max(0) as u64,
                        deleted: r.get::<_, i64>(7)?.max(0) as u64,
                    })
                },
            )
            .map_err(self.err())?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.err())
    }

    /// The newest quarantined events at the current destination.
    pub fn quarantine(&self, limit: usize) -> Result<Vec<QuarantineEntry>, StateError> {
        let Some(dest) = self.current_dest_id()? else {
            return Ok(Vec::new());
        };
        let conn = self.reader();
        let mut stmt = conn
            .prepare(
                "SELECT b.bucket_id, q.event_id, q.reason, q.at, q.event_json
                 FROM quarantine q JOIN buckets b ON b.id = q.bucket
                 JOIN sent s ON s.bucket = q.bucket AND s.event_id = q.event_id
                      AND s.hash = q.hash AND s.status = 1
                 WHERE b.dest = ?1 ORDER BY q.at DESC LIMIT ?2",
            )
            .map_err(self.err())?;
        let rows = stmt
            .query_map(params![dest, limit as i64], |r| {
                let json: String = r.get(4)?;
                Ok(QuarantineEntry {
                    bucket_id: r.get(0)?,
                    event_id: r.get(1)?,
                    reason: r.get(2)?,
                    at: r.get(3)?,
                    event: serde_json::from_str(&json).unwrap_or(serde_json::Value::String(json)),
                })
            })
            .map_err(self.err())?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.err())
    }
}
