//! The sync state, in SQLite: per-bucket cursors, the hash of every acknowledged event version
//! (the dedupe memory), the quarantine of events the upstream refused, and the installation's
//! device id.
//!
//! Everything the upstream acknowledged is recorded in one transaction together with the cursor
//! moves it allows, so the state can never claim more than the upstream holds. The database runs
//! in WAL mode with `synchronous = NORMAL`: a killed process loses nothing that was committed; a
//! power cut may lose the last acknowledgements, which only means re-sending events the upstream
//! then absorbs as duplicates.

pub mod hash;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use rusqlite::types::Value as SqlValue;
use rusqlite::{params, Connection, OptionalExtension};
use uuid::Uuid;

use crate::source::Bucket;
pub use hash::{event_hash, event_hash_raw, hash_hex, EventHash, Span};

/// Upstream event ids are aw-server's id plus `generation << GENERATION_SHIFT`: a bucket whose
/// database was replaced restarts its ids, and must not overwrite what the old one uploaded.
pub const GENERATION_SHIFT: u32 = 40;

/// The id the upstream keys an event by; `None` when aw-server's id does not fit (never seen in
/// practice: ids are a per-database counter).
pub fn upstream_event_id(generation: u32, aw_id: i64) -> Option<i64> {
    if !(0..(1i64 << GENERATION_SHIFT)).contains(&aw_id) || generation >= (1 << 22) {
        return None;
    }
    Some((i64::from(generation) << GENERATION_SHIFT) | aw_id)
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("the disk holding the state database {path} is full: free some space; nothing is lost, syncing resumes by itself")]
    DiskFull { path: PathBuf },
    #[error("state database {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "cannot create the state database {path} and its directory, private to this user: {source}"
    )]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state task failed: {0}")]
    Task(String),
    #[error("state database {path} is from a newer aw-sync-samay (schema {found}, this one knows {known})")]
    NewerSchema {
        path: PathBuf,
        found: i64,
        known: i64,
    },
}

/// `generation, created, server_device, cursor_ns, window_ns` of a `buckets` row.
type BucketRow = (
    u32,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
);

/// What the engine needs to know of a bucket before scanning it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketState {
    pub generation: u32,
    /// Start (ns) of the first window not yet fully acknowledged; `None` before the first one.
    pub cursor_ns: Option<i64>,
    /// Width (ns) of the scan windows that worked last time, so a catch-up resumes at its pace.
    pub window_ns: Option<i64>,
    /// True when this call found the bucket replaced and started a new generation.
    pub replaced: bool,
}

/// What the state remembers of an event the upstream holds (or refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Known {
    pub hash: EventHash,
    pub start_ns: i64,
    pub end_ns: i64,
}

/// An acknowledged event version.
#[derive(Debug, Clone)]
pub struct Acked {
    pub bucket_id: String,
    pub event_id: i64,
    pub hash: EventHash,
    pub span: Span,
}

/// An event the upstream refused; kept with its payload so nothing is lost and `--status` can
/// show it.
#[derive(Debug, Clone)]
pub struct Quarantined {
    pub acked: Acked,
    pub reason: String,
    pub event_json: String,
}

/// A cursor move: every event of `bucket_id` starting before `cursor_ns` was acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorMove {
    pub bucket_id: String,
    pub generation: u32,
    pub cursor_ns: i64,
    pub window_ns: i64,
}

/// Per-bucket numbers for `--status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BucketStatus {
    pub bucket_id: String,
    pub generation: u32,
    pub cursor: Option<String>,
    /// Distinct events acknowledged by the upstream (all generations).
    pub delivered: u64,
    /// Of `delivered`, the events of the current generation (what aw-server holds now).
    pub delivered_current: u64,
    /// Event versions acknowledged (a grown heartbeat event counts each time it was sent).
    pub versions_sent: u64,
    pub quarantined: u64,
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

/// 2: `buckets.filter_fp` (the privacy filters a bucket was synced under).
const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS buckets (
    bucket_id     TEXT PRIMARY KEY,
    generation    INTEGER NOT NULL DEFAULT 0,
    created       TEXT,
    server_device TEXT,
    cursor_ns     INTEGER,
    window_ns     INTEGER,
    versions_sent INTEGER NOT NULL DEFAULT 0,
    filter_fp     TEXT
);
CREATE TABLE IF NOT EXISTS sent (
    bucket_id   TEXT NOT NULL,
    event_id    INTEGER NOT NULL,
    hash        BLOB NOT NULL,
    start_ns    INTEGER NOT NULL,
    end_ns      INTEGER NOT NULL,
    quarantined INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (bucket_id, event_id)
) WITHOUT ROWID;
-- Only the quarantined rows: what an idle cycle's status count reads, instead of every row
-- ever delivered.
CREATE INDEX IF NOT EXISTS sent_quarantined ON sent (bucket_id) WHERE quarantined = 1;
CREATE TABLE IF NOT EXISTS quarantine (
    bucket_id  TEXT NOT NULL,
    event_id   INTEGER NOT NULL,
    hash       BLOB NOT NULL,
    reason     TEXT NOT NULL,
    event_json TEXT NOT NULL,
    at         TEXT NOT NULL,
    PRIMARY KEY (bucket_id, event_id, hash)
);
";

/// The state database. Two connections: lookups (the reader's dedupe) never wait behind the
/// uploader's commits, which WAL allows.
pub struct Store {
    path: PathBuf,
    write: Mutex<Connection>,
    read: Mutex<Connection>,
    device_id: Uuid,
    redaction_key: [u8; 32],
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, StateError> {
        // Private before SQLite touches it (issue 11): the directory 0700, the database (and so
        // its -wal and -shm) 0600 — it holds the redaction key and quarantined events in full.
        crate::private_fs::private_database(path).map_err(|source| StateError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let err = |source| classify(path, source);
        let write = Connection::open(path).map_err(err)?;
        write
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;",
            )
            .map_err(err)?;
        write.execute_batch(SCHEMA).map_err(err)?;
        let found: Option<i64> = write
            .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
                r.get::<_, String>(0)
            })
            .optional()
            .map_err(err)?
            .and_then(|v| v.parse().ok());
        match found {
            Some(v) if v > SCHEMA_VERSION => {
                return Err(StateError::NewerSchema {
                    path: path.to_path_buf(),
                    found: v,
                    known: SCHEMA_VERSION,
                })
            }
            Some(1) => {
                // Schema 1 had no filters: `filter_fp` stays NULL, read as "unfiltered".
                let tx = write.unchecked_transaction().map_err(err)?;
                tx.execute_batch(
                    "ALTER TABLE buckets ADD COLUMN filter_fp TEXT;
                     UPDATE meta SET value = '2' WHERE key = 'schema';",
                )
                .map_err(err)?;
                tx.commit().map_err(err)?;
            }
            Some(_) => {}
            None => {
                write
                    .execute(
                        "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema', ?1)",
                        [SCHEMA_VERSION.to_string()],
                    )
                    .map_err(err)?;
            }
        }
        let existing: Option<String> = write
            .query_row("SELECT value FROM meta WHERE key = 'device_id'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(err)?;
        let device_id = match existing.and_then(|s| Uuid::parse_str(&s).ok()) {
            Some(id) => id,
            None => {
                let id = Uuid::new_v4();
                write
                    .execute(
                        "INSERT OR REPLACE INTO meta (key, value) VALUES ('device_id', ?1)",
                        [id.to_string()],
                    )
                    .map_err(err)?;
                id
            }
        };
        let redaction_key = match meta_hex::<32>(&write, "redaction_key").map_err(err)? {
            Some(key) => key,
            None => {
                let key: [u8; 32] = rand::random();
                write
                    .execute(
                        "INSERT OR REPLACE INTO meta (key, value) VALUES ('redaction_key', ?1)",
                        [hash_hex_n(&key)],
                    )
                    .map_err(err)?;
                key
            }
        };
        let read = Connection::open(path).map_err(err)?;
        read.execute_batch("PRAGMA busy_timeout = 5000;")
            .map_err(err)?;
        rusqlite::vtab::array::load_module(&read).map_err(err)?;
        Ok(Store {
            path: path.to_path_buf(),
            write: Mutex::new(write),
            read: Mutex::new(read),
            device_id,
            redaction_key,
        })
    }

    /// The secret that keys the hashes of `[[sync.redact]]` `hash` fields: made once per
    /// installation, kept here, never sent. Without it a hashed value cannot be tested against
    /// guesses. A new state database means a new key, so hashed fields change (and are re-sent
    /// as new versions).
    pub fn redaction_key(&self) -> [u8; 32] {
        self.redaction_key
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The installation's id, sent as `device_id`; made once and kept.
    pub fn device_id(&self) -> Uuid {
        self.device_id
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> StateError + '_ {
        move |source| classify(&self.path, source)
    }

    fn writer(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (transactions roll
        // back on drop), so a poisoned lock is still safe to use.
        self.write.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reader(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.read.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The bucket's state, registering it on first sight. A bucket whose `created` time or
    /// aw-server device id changed was replaced (deleted and recreated, or a new database): its
    /// ids start over, so it gets a new generation and a fresh cursor.
    pub fn bucket_state(
        &self,
        bucket: &Bucket,
        server_device: Option<&str>,
    ) -> Result<BucketState, StateError> {
        self.bucket_state_inner(bucket, server_device, true)
    }

    /// What [`Store::bucket_state`] would answer, writing nothing (for `--dry-run`).
    pub fn peek_bucket_state(
        &self,
        bucket: &Bucket,
        server_device: Option<&str>,
    ) -> Result<BucketState, StateError> {
        self.bucket_state_inner(bucket, server_device, false)
    }

    fn bucket_state_inner(
        &self,
        bucket: &Bucket,
        server_device: Option<&str>,
        write: bool,
    ) -> Result<BucketState, StateError> {
        let created = bucket.created.map(|c| c.to_rfc3339());
        let conn = self.writer();
        let execute = |sql: &str, p: &[&dyn rusqlite::ToSql]| -> Result<(), StateError> {
            if write {
                conn.execute(sql, p).map_err(self.err())?;
            }
            Ok(())
        };
        let row: Option<BucketRow> = conn
            .query_row(
                "SELECT generation, created, server_device, cursor_ns, window_ns FROM buckets WHERE bucket_id = ?1",
                [&bucket.id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()
            .map_err(self.err())?;
        let Some((generation, old_created, old_device, cursor_ns, window_ns)) = row else {
            execute(
                "INSERT INTO buckets (bucket_id, generation, created, server_device) VALUES (?1, 0, ?2, ?3)",
                params![bucket.id, created, server_device],
            )?;
            return Ok(BucketState {
                generation: 0,
                cursor_ns: None,
                window_ns: None,
                replaced: false,
            });
        };
        let differs = |old: &Option<String>, new: Option<&str>| match (old.as_deref(), new) {
            (Some(o), Some(n)) => o != n,
            _ => false,
        };
        if differs(&old_created, created.as_deref()) || differs(&old_device, server_device) {
            let generation = generation + 1;
            execute(
                "UPDATE buckets SET generation = ?2, created = ?3, server_device = ?4, cursor_ns = NULL, window_ns = NULL WHERE bucket_id = ?1",
                params![bucket.id, generation, created, server_device],
            )?;
            return Ok(BucketState {
                generation,
                cursor_ns: None,
                window_ns: None,
                replaced: true,
            });
        }
        if old_created.is_none() && created.is_some()
            || old_device.is_none() && server_device.is_some()
        {
            execute(
                "UPDATE buckets SET created = COALESCE(created, ?2), server_device = COALESCE(server_device, ?3) WHERE bucket_id = ?1",
                params![bucket.id, created, server_device],
            )?;
        }
        Ok(BucketState {
            generation,
            cursor_ns,
            window_ns,
            replaced: false,
        })
    }

    /// Compares the privacy-filter fingerprint a bucket is about to be read under with the one
    /// it was synced under, and when they differ clears its cursor (and, with `write`, stores
    /// the new fingerprint in the same statement). Returns true when the bucket must be read
    /// again from the start: events that now pass the filters, or now look different, are then
    /// found, while the `sent` hashes keep what the upstream already holds unchanged from being
    /// sent again. A NULL fingerprint (a bucket synced before filters existed) counts as
    /// `unfiltered`.
    pub fn filter_fingerprint(
        &self,
        bucket_id: &str,
        fingerprint: &str,
        unfiltered: &str,
        write: bool,
    ) -> Result<bool, StateError> {
        let conn = self.writer();
        let stored: Option<Option<String>> = conn
            .query_row(
                "SELECT filter_fp FROM buckets WHERE bucket_id = ?1",
                [bucket_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err())?;
        let Some(stored) = stored else {
            return Ok(false); // not registered (dry run): no cursor to reset
        };
        let changed = stored.as_deref().unwrap_or(unfiltered) != fingerprint;
        if write && (changed || stored.is_none()) {
            conn.execute(
                "UPDATE buckets SET filter_fp = ?2,
                   cursor_ns = CASE WHEN ?3 THEN NULL ELSE cursor_ns END
                 WHERE bucket_id = ?1",
                params![bucket_id, fingerprint, changed],
            )
            .map_err(self.err())?;
        }
        Ok(changed)
    }

    /// The acknowledged (or quarantined) hash of each of these upstream event ids that has one.
    pub fn lookup(
        &self,
        bucket_id: &str,
        event_ids: &[i64],
    ) -> Result<HashMap<i64, Known>, StateError> {
        let mut out = HashMap::with_capacity(event_ids.len());
        if event_ids.is_empty() {
            return Ok(out);
        }
        let conn = self.reader();
        // A catch-up asks about ids the upstream has never seen, a page at a time: one probe for
        // the bucket's highest recorded id answers all of those above it, where looking each up
        // cost a B-tree descent per event (a third of a 1M-event catch-up's reading time). The
        // answer is the one the full query would give at this instant.
        let highest: Option<i64> = conn
            .prepare_cached("SELECT MAX(event_id) FROM sent WHERE bucket_id = ?1")
            .and_then(|mut st| st.query_row(params![bucket_id], |r| r.get(0)))
            .map_err(self.err())?;
        let Some(highest) = highest else {
            return Ok(out);
        };
        let ids: Rc<Vec<SqlValue>> = Rc::new(
            event_ids
                .iter()
                .filter(|&&i| i <= highest)
                .map(|&i| SqlValue::from(i))
                .collect(),
        );
        if ids.is_empty() {
            return Ok(out);
        }
        let mut stmt = conn
            .prepare_cached(
                "SELECT event_id, hash, start_ns, end_ns FROM sent WHERE bucket_id = ?1 AND event_id IN rarray(?2)",
            )
            .map_err(self.err())?;
        let rows = stmt
            .query_map(params![bucket_id, ids], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })
            .map_err(self.err())?;
        for row in rows {
            let (id, bytes, start_ns, end_ns) = row.map_err(self.err())?;
            if let Ok(hash) = <EventHash>::try_from(bytes.as_slice()) {
                out.insert(
                    id,
                    Known {
                        hash,
                        start_ns,
                        end_ns,
                    },
                );
            }
        }
        Ok(out)
    }

    /// Records acknowledged and quarantined events and the cursor moves they allow, atomically.
    pub fn commit(
        &self,
        acked: &[Acked],
        quarantined: &[Quarantined],
        cursors: &[CursorMove],
    ) -> Result<(), StateError> {
        if acked.is_empty() && quarantined.is_empty() && cursors.is_empty() {
            return Ok(());
        }
        let mut conn = self.writer();
        let tx = conn.transaction().map_err(self.err())?;
        {
            let mut upsert = tx
                .prepare_cached(
                    "INSERT INTO sent (bucket_id, event_id, hash, start_ns, end_ns, quarantined)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (bucket_id, event_id) DO UPDATE SET
                       hash = excluded.hash, start_ns = excluded.start_ns,
                       end_ns = excluded.end_ns, quarantined = excluded.quarantined",
                )
                .map_err(self.err())?;
            let mut versions: HashMap<&str, i64> = HashMap::new();
            for a in acked {
                upsert
                    .execute(params![
                        a.bucket_id,
                        a.event_id,
                        &a.hash[..],
                        a.span.start_ns,
                        a.span.end_ns(),
                        0
                    ])
                    .map_err(self.err())?;
                *versions.entry(a.bucket_id.as_str()).or_default() += 1;
            }
            let now = Utc::now().to_rfc3339();
            let mut quarantine = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO quarantine (bucket_id, event_id, hash, reason, event_json, at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(self.err())?;
            for q in quarantined {
                let a = &q.acked;
                upsert
                    .execute(params![
                        a.bucket_id,
                        a.event_id,
                        &a.hash[..],
                        a.span.start_ns,
                        a.span.end_ns(),
                        1
                    ])
                    .map_err(self.err())?;
                quarantine
                    .execute(params![
                        a.bucket_id,
                        a.event_id,
                        &a.hash[..],
                        q.reason,
                        q.event_json,
                        now
                    ])
                    .map_err(self.err())?;
            }
            let mut bump = tx
                .prepare_cached(
                    "UPDATE buckets SET versions_sent = versions_sent + ?2 WHERE bucket_id = ?1",
                )
                .map_err(self.err())?;
            for (bucket, n) in versions {
                bump.execute(params![bucket, n]).map_err(self.err())?;
            }
            // A cursor only ever moves forward, and only within the generation it was read in.
            let mut cursor = tx
                .prepare_cached(
                    "UPDATE buckets SET cursor_ns = MAX(COALESCE(cursor_ns, ?3), ?3), window_ns = ?4
                     WHERE bucket_id = ?1 AND generation = ?2",
                )
                .map_err(self.err())?;
            for c in cursors {
                cursor
                    .execute(params![c.bucket_id, c.generation, c.cursor_ns, c.window_ns])
                    .map_err(self.err())?;
            }
        }
        tx.commit().map_err(self.err())
    }

    /// Remembers how the last cycle ended, for `--status`.
    pub fn record_cycle(&self, error: Option<&str>) -> Result<(), StateError> {
        let now = Utc::now().to_rfc3339();
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

    /// Events currently quarantined, over all buckets. Reads the partial index of quarantined
    /// rows: the daemon asks after every cycle, and counting through `sent` costs a pass over
    /// every event ever delivered (most of an idle cycle's CPU at 10k events, growing without
    /// bound).
    pub fn quarantined_total(&self) -> Result<u64, StateError> {
        let conn = self.reader();
        let n: i64 = conn
            .prepare_cached(
                "SELECT COUNT(*) FROM sent INDEXED BY sent_quarantined WHERE quarantined = 1",
            )
            .and_then(|mut st| st.query_row([], |r| r.get(0)))
            .map_err(self.err())?;
        Ok(n.max(0) as u64)
    }

    /// Per-bucket totals for `--status` and progress displays: counts every delivered row,
    /// so it is not for every cycle (see [`Store::quarantined_total`]).
    pub fn bucket_statuses(&self) -> Result<Vec<BucketStatus>, StateError> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare(
                "SELECT b.bucket_id, b.generation, b.cursor_ns, b.versions_sent,
                        (SELECT COUNT(*) FROM sent s WHERE s.bucket_id = b.bucket_id AND s.quarantined = 0),
                        (SELECT COUNT(*) FROM sent s WHERE s.bucket_id = b.bucket_id AND s.quarantined = 1),
                        (SELECT COUNT(*) FROM sent s WHERE s.bucket_id = b.bucket_id AND s.quarantined = 0
                            AND (s.event_id >> 40) = b.generation)
                 FROM buckets b ORDER BY b.bucket_id",
            )
            .map_err(self.err())?;
        let rows = stmt
            .query_map([], |r| {
                Ok(BucketStatus {
                    bucket_id: r.get(0)?,
                    generation: r.get(1)?,
                    cursor: r.get::<_, Option<i64>>(2)?.map(ns_to_rfc3339),
                    versions_sent: r.get::<_, i64>(3)?.max(0) as u64,
                    delivered: r.get::<_, i64>(4)?.max(0) as u64,
                    quarantined: r.get::<_, i64>(5)?.max(0) as u64,
                    delivered_current: r.get::<_, i64>(6)?.max(0) as u64,
                })
            })
            .map_err(self.err())?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.err())
    }

    pub fn quarantine(&self, limit: usize) -> Result<Vec<QuarantineEntry>, StateError> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare(
                "SELECT bucket_id, event_id, reason, at, event_json FROM quarantine ORDER BY at DESC LIMIT ?1",
            )
            .map_err(self.err())?;
        let rows = stmt
            .query_map([limit as i64], |r| {
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

/// A `meta` value written by [`hash_hex_n`], when present and well-formed.
fn meta_hex<const N: usize>(
    conn: &Connection,
    key: &str,
) -> Result<Option<[u8; N]>, rusqlite::Error> {
    let text: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()?;
    Ok(text.and_then(|t| {
        let mut out = [0u8; N];
        if t.len() != 2 * N {
            return None;
        }
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(t.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(out)
    }))
}

fn hash_hex_n(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Nanoseconds since the epoch as RFC 3339 UTC with nanoseconds, the form sent upstream.
pub fn ns_to_rfc3339(ns: i64) -> String {
    DateTime::<Utc>::from_timestamp_nanos(ns).to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

fn classify(path: &Path, source: rusqlite::Error) -> StateError {
    if let rusqlite::Error::SqliteFailure(e, _) = &source {
        if e.code == rusqlite::ErrorCode::DiskFull {
            return StateError::DiskFull {
                path: path.to_path_buf(),
            };
        }
    }
    StateError::Sqlite {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(id: &str, created: &str) -> Bucket {
        Bucket {
            id: id.into(),
            bucket_type: "currentwindow".into(),
            client: "test".into(),
            hostname: "h".into(),
            created: Some(created.parse().unwrap()),
            data: Default::default(),
        }
    }

    fn acked(bucket: &str, id: i64, h: u8) -> Acked {
        Acked {
            bucket_id: bucket.into(),
            event_id: id,
            hash: [h; 16],
            span: Span {
                start_ns: id * 1000,
                duration_ns: 10,
            },
        }
    }

    #[test]
    fn device_id_is_kept_across_opens() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.sqlite");
        let a = Store::open(&p).unwrap().device_id();
        let b = Store::open(&p).unwrap().device_id();
        assert_eq!(a, b);
    }

    #[test]
    fn commit_then_lookup_and_cursor_only_moves_forward() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.sqlite")).unwrap();
        let b = bucket("b1", "2024-01-01T00:00:00Z");
        assert_eq!(s.bucket_state(&b, Some("dev")).unwrap().cursor_ns, None);
        let mv = |c| CursorMove {
            bucket_id: "b1".into(),
            generation: 0,
            cursor_ns: c,
            window_ns: 5,
        };
        s.commit(&[acked("b1", 1, 1), acked("b1", 2, 2)], &[], &[mv(100)])
            .unwrap();
        s.commit(&[acked("b1", 2, 3)], &[], &[mv(50)]).unwrap();
        let found = s.lookup("b1", &[1, 2, 3]).unwrap();
        assert_eq!(found.len(), 2);
        assert_eq!(found[&2].hash, [3; 16]);
        let st = s.bucket_state(&b, Some("dev")).unwrap();
        assert_eq!(st.cursor_ns, Some(100));
        let status = s.bucket_statuses().unwrap();
        assert_eq!(status[0].delivered, 2);
        assert_eq!(status[0].versions_sent, 3);
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(64))]
        /// The lookup's shortcut (ids above the bucket's highest recorded one are unknown)
        /// answers exactly what a lookup of every id would, whatever was recorded where.
        #[test]
        fn lookup_finds_exactly_what_was_recorded(
            recorded in proptest::collection::vec((0..3usize, 0i64..200), 0..60),
            asked in proptest::collection::vec(0i64..260, 0..80),
            bucket in 0..3usize,
        ) {
            let names = ["a", "b", "c"];
            let dir = tempfile::tempdir().unwrap();
            let s = Store::open(&dir.path().join("s.sqlite")).unwrap();
            let acks: Vec<Acked> = recorded
                .iter()
                .map(|&(b, id)| acked(names[b], id, (id % 250) as u8))
                .collect();
            s.commit(&acks, &[], &[]).unwrap();
            let found = s.lookup(names[bucket], &asked).unwrap();
            let mut expected: std::collections::BTreeMap<i64, u8> = Default::default();
            for &(b, id) in &recorded {
                if b == bucket && asked.contains(&id) {
                    expected.insert(id, (id % 250) as u8);
                }
            }
            let got: std::collections::BTreeMap<i64, u8> =
                found.iter().map(|(id, k)| (*id, k.hash[0])).collect();
            proptest::prop_assert_eq!(got, expected);
        }
    }

    #[test]
    fn a_replaced_bucket_gets_a_new_generation_and_fresh_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.sqlite")).unwrap();
        let old = bucket("b1", "2024-01-01T00:00:00Z");
        s.bucket_state(&old, Some("dev")).unwrap();
        s.commit(
            &[],
            &[],
            &[CursorMove {
                bucket_id: "b1".into(),
                generation: 0,
                cursor_ns: 7,
                window_ns: 1,
            }],
        )
        .unwrap();
        let new = bucket("b1", "2025-01-01T00:00:00Z");
        let st = s.bucket_state(&new, Some("dev")).unwrap();
        assert!(st.replaced);
        assert_eq!((st.generation, st.cursor_ns), (1, None));
        // A cursor move read under the old generation is ignored.
        s.commit(
            &[],
            &[],
            &[CursorMove {
                bucket_id: "b1".into(),
                generation: 0,
                cursor_ns: 9,
                window_ns: 1,
            }],
        )
        .unwrap();
        assert_eq!(s.bucket_state(&new, Some("dev")).unwrap().cursor_ns, None);
        // A new aw-server device id is a replacement too.
        assert_eq!(s.bucket_state(&new, Some("other")).unwrap().generation, 2);
    }

    #[test]
    fn upstream_ids_of_generations_never_collide() {
        assert_eq!(upstream_event_id(0, 5), Some(5));
        let g1 = upstream_event_id(1, 5).unwrap();
        assert_ne!(g1, 5);
        assert_eq!(g1 & ((1 << GENERATION_SHIFT) - 1), 5);
        assert_eq!(upstream_event_id(0, -1), None);
        assert_eq!(upstream_event_id(0, 1 << GENERATION_SHIFT), None);
        assert!(upstream_event_id((1 << 22) - 1, (1 << 40) - 1).is_some_and(|id| id > 0));
        assert_eq!(upstream_event_id(1 << 22, 1), None);
    }

    #[test]
    fn schema_1_migrates_and_its_buckets_count_as_unfiltered() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.sqlite");
        {
            let c = Connection::open(&p).unwrap();
            c.execute_batch(
                "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                 CREATE TABLE buckets (bucket_id TEXT PRIMARY KEY, generation INTEGER NOT NULL DEFAULT 0,
                   created TEXT, server_device TEXT, cursor_ns INTEGER, window_ns INTEGER,
                   versions_sent INTEGER NOT NULL DEFAULT 0);
                 INSERT INTO meta VALUES ('schema', '1');
                 INSERT INTO buckets (bucket_id, cursor_ns) VALUES ('b1', 500), ('b2', 600);",
            )
            .unwrap();
        }
        let s = Store::open(&p).unwrap();
        let key = s.redaction_key();
        let schema: String = s
            .reader()
            .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(schema, "2");
        let cursor = |id: &str| -> Option<i64> {
            s.reader()
                .query_row(
                    "SELECT cursor_ns FROM buckets WHERE bucket_id = ?1",
                    [id],
                    |r| r.get(0),
                )
                .unwrap()
        };
        // Unfiltered as before: adopted, cursor kept.
        assert!(!s.filter_fingerprint("b1", "u", "u", true).unwrap());
        assert_eq!(cursor("b1"), Some(500));
        assert!(!s.filter_fingerprint("b1", "u", "u", true).unwrap());
        // A dry run sees the change but writes nothing.
        assert!(s.filter_fingerprint("b2", "f", "u", false).unwrap());
        assert_eq!(cursor("b2"), Some(600));
        // Now filtered: cursor reset, once.
        assert!(s.filter_fingerprint("b2", "f", "u", true).unwrap());
        assert_eq!(cursor("b2"), None);
        assert!(!s.filter_fingerprint("b2", "f", "u", true).unwrap());
        // Not registered: nothing to reset.
        assert!(!s.filter_fingerprint("nope", "f", "u", true).unwrap());
        drop(s);
        assert_eq!(
            Store::open(&p).unwrap().redaction_key(),
            key,
            "the key is kept"
        );
    }

    #[test]
    fn peeking_a_bucket_state_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.sqlite")).unwrap();
        let b = bucket("b1", "2024-01-01T00:00:00Z");
        let peeked = s.peek_bucket_state(&b, Some("dev")).unwrap();
        assert_eq!(peeked.cursor_ns, None);
        assert!(s.bucket_statuses().unwrap().is_empty());
        s.bucket_state(&b, Some("dev")).unwrap();
        let replaced = s
            .peek_bucket_state(&bucket("b1", "2025-01-01T00:00:00Z"), Some("dev"))
            .unwrap();
        assert!(replaced.replaced);
        assert_eq!(s.bucket_statuses().unwrap()[0].generation, 0);
    }

    #[test]
    fn quarantine_is_recorded_and_deduped() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.sqlite")).unwrap();
        s.bucket_state(&bucket("b1", "2024-01-01T00:00:00Z"), None)
            .unwrap();
        let q = Quarantined {
            acked: acked("b1", 9, 4),
            reason: "422: bad".into(),
            event_json: r#"{"timestamp":"x"}"#.into(),
        };
        s.commit(&[], &[q], &[]).unwrap();
        assert_eq!(s.lookup("b1", &[9]).unwrap()[&9].hash, [4; 16]);
        let st = s.bucket_statuses().unwrap();
        assert_eq!((st[0].delivered, st[0].quarantined), (0, 1));
        let entries = s.quarantine(10).unwrap();
        assert_eq!(entries[0].reason, "422: bad");
        // The per-cycle count (through the partial index) agrees, and follows a changed
        // version that the upstream then took.
        s.commit(&[acked("b1", 10, 1)], &[], &[]).unwrap();
        assert_eq!(s.quarantined_total().unwrap(), 1);
        s.commit(&[acked("b1", 9, 5)], &[], &[]).unwrap();
        assert_eq!(s.quarantined_total().unwrap(), 0);
    }
}
