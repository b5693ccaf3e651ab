//! The sync state, in SQLite: per destination (upstream and account) and bucket, where reading
//! stands and what aw-server held when the state last agreed with it; the mirror of every event
//! version the upstream acknowledged (the dedupe memory); the quarantine of events that cannot
//! be delivered; and the installation's device id (one per installation, whatever the
//! destination). See [`schema`] for the tables.
//!
//! Everything the upstream acknowledged is recorded in one transaction together with the
//! position moves it allows, so the state can never claim more than the upstream holds. The
//! database runs in WAL mode with `synchronous = NORMAL`: a killed process loses nothing that
//! was committed; a power cut may lose the last acknowledgements, which only means re-sending
//! events the upstream then absorbs as duplicates.
//!
//! One concern per file: the [`Store`] and its meta values (here), [`destination`] (whose
//! records), [`bucket`] (a bucket's row, generation and read position), [`commit`] (what the
//! uploader records, and the dedupe lookups), [`mirror`] (aggregates of what is recorded),
//! [`report`] (what `--status` reads), [`hash`] (the event hash).

mod bucket;
mod commit;
mod destination;
pub mod hash;
mod mirror;
mod pull;
mod report;
mod schema;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};
use uuid::Uuid;

pub use bucket::{BucketState, Pass};
pub use commit::{Acked, Commit, Deleted, Known, Mark, Quarantined};
pub use destination::{DestId, DestKey};
pub use hash::{event_hash, event_hash_raw, hash_hex, hash_hex_ascii, EventHash, Span};
pub use mirror::{aggregate as mirror_aggregate, Aggregate, MirrorEvent};
pub use pull::{
    CopyPrint, Mapped, PendingInsert, PullBucket, PullDeviceStatus, PullFeed, PullPage,
};
pub use report::{BucketStatus, CycleRecord, QuarantineEntry};

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

/// The generation an upstream event id belongs to.
pub fn generation_of(upstream_id: i64) -> u32 {
    (upstream_id >> GENERATION_SHIFT) as u32
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

/// The state database. Two connections: lookups (the reader's dedupe) never wait behind the
/// uploader's commits, which WAL allows.
pub struct Store {
    path: PathBuf,
    write: Mutex<Connection>,
    read: Mutex<Connection>,
    device_id: Uuid,
    redaction_key: [u8; 32],
    /// `sent` keeps a bucket's rows newest first ([`schema::sent_is_desc`]).
    sent_desc: bool,
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
        let mut write = Connection::open(path).map_err(err)?;
        write
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;
                 PRAGMA cache_size = -1024;",
            )
            .map_err(err)?;
        match schema::found_version(&write).map_err(err)? {
            Some(v) if v > schema::SCHEMA_VERSION => {
                return Err(StateError::NewerSchema {
                    path: path.to_path_buf(),
                    found: v,
                    known: schema::SCHEMA_VERSION,
                })
            }
            Some(v) if v < 3 => schema::migrate_to_3(&mut write, v).map_err(err)?,
            Some(_) => write.execute_batch(schema::SCHEMA).map_err(err)?,
            None => {
                write.execute_batch(schema::SCHEMA).map_err(err)?;
                write
                    .execute(
                        "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema', ?1)",
                        [schema::SCHEMA_VERSION.to_string()],
                    )
                    .map_err(err)?;
            }
        }
        schema::add_pull_pending_columns(&write).map_err(err)?;
        let sent_desc = schema::sent_is_desc(&write).map_err(err)?;
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
                set_meta(&write, "device_id", &id.to_string()).map_err(err)?;
                id
            }
        };
        let redaction_key = match meta_hex::<32>(&write, "redaction_key").map_err(err)? {
            Some(key) => key,
            None => {
                let key: [u8; 32] = rand::random();
                set_meta(&write, "redaction_key", &hash_hex_n(&key)).map_err(err)?;
                key
            }
        };
        let read = Connection::open(path).map_err(err)?;
        // Page caches (SQLite's default: 2 MB each) of 1 MB for the writer, which inserts at
        // one edge of the `sent` B-tree and needs its path and the pages being filled, and
        // 256 KiB for the lookups, which read a few pages per page of events and lose their
        // cache at each of the writer's commits anyway (WAL). On the 1M-event catch-up the
        // writer's cache filled up: a megabyte of the peak RSS for no measurable speed.
        read.execute_batch("PRAGMA busy_timeout = 5000; PRAGMA cache_size = -256;")
            .map_err(err)?;
        rusqlite::vtab::array::load_module(&read).map_err(err)?;
        Ok(Store {
            path: path.to_path_buf(),
            write: Mutex::new(write),
            read: Mutex::new(read),
            device_id,
            redaction_key,
            sent_desc,
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

    /// The installation's id, sent as `device_id`; made once and kept, whatever the
    /// destination.
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

    /// A value the engine keeps between runs (`meta` table).
    pub fn meta(&self, key: &str) -> Result<Option<String>, StateError> {
        self.reader()
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(self.err())
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StateError> {
        set_meta(&self.writer(), key, value).map_err(self.err())
    }

    /// Since when scheduled syncing is paused (the tray's "Pause syncing"), RFC 3339; `None`:
    /// not paused. Kept here so a pause outlives a restart and `--status` shows it.
    pub fn paused_since(&self) -> Result<Option<String>, StateError> {
        self.meta(PAUSED_KEY)
    }

    /// Pauses (records now) or resumes scheduled syncing.
    pub fn set_paused(&self, paused: bool) -> Result<(), StateError> {
        let conn = self.writer();
        if paused {
            // A second pause keeps the first one's time.
            conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES (?1, ?2)",
                params![PAUSED_KEY, chrono::Utc::now().to_rfc3339()],
            )
        } else {
            conn.execute("DELETE FROM meta WHERE key = ?1", [PAUSED_KEY])
        }
        .map(|_| ())
        .map_err(self.err())
    }
}

/// The `meta` key of [`Store::paused_since`].
const PAUSED_KEY: &str = "paused_since";

fn set_meta(conn: &Connection, key: &str, value: &str) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
        params![key, value],
    )
    .map(|_| ())
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
    crate::rfc3339::format_ns(ns)
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
mod tests;
