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

pub mod hash;
mod mirror;
mod report;
mod schema;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Mutex;

use chrono::Utc;
use rusqlite::types::Value as SqlValue;
use rusqlite::{params, Connection, OptionalExtension};
use uuid::Uuid;

use crate::source::Bucket;
pub use hash::{event_hash, event_hash_raw, hash_hex, EventHash, Span};
pub use mirror::{aggregate as mirror_aggregate, Aggregate, MirrorEvent};
pub use report::{BucketStatus, CycleRecord, QuarantineEntry};
use schema::{DELETED, DELIVERED, QUARANTINED};

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

/// A destination's row id.
pub type DestId = i64;

/// What identifies a destination: the upstream and the account the data goes to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DestKey {
    /// The upstream's base URL, normalised (no trailing slash).
    pub base_url: String,
    /// The account at that upstream (`iss|sub` of a login, the user an upstream reports, or a
    /// keyed fingerprint of a token); never a secret.
    pub account: String,
    /// How `--status` names the account.
    pub label: String,
}

impl DestKey {
    /// The upstream at `base_url` (normalised: no trailing slash) for `account`, named by it.
    pub fn new(base_url: &str, account: &str) -> DestKey {
        DestKey {
            base_url: base_url.trim_end_matches('/').to_string(),
            account: account.to_string(),
            label: account.to_string(),
        }
    }
}

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

    /// Appends `other`, keeping the order (group commit).
    pub fn extend(&mut self, other: Commit) {
        self.acked.extend(other.acked);
        self.quarantined.extend(other.quarantined);
        self.deleted.extend(other.deleted);
        self.marks.extend(other.marks);
    }
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
        let mut write = Connection::open(path).map_err(err)?;
        write
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;",
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

    /// The destination's row, made on first use. The records of a database migrated from an
    /// older schema belong to the first destination this is called for (with `write`): the one
    /// configured at the first start after the upgrade. Without `write` (a dry run, `--status`)
    /// nothing is made or claimed and an unknown destination is `None`.
    pub fn destination(&self, key: &DestKey, write: bool) -> Result<Option<DestId>, StateError> {
        let conn = self.writer();
        let found: Option<DestId> = conn
            .query_row(
                "SELECT id FROM destinations WHERE base_url = ?1 AND account = ?2",
                params![key.base_url, key.account],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err())?;
        if let Some(id) = found {
            if write {
                // The account's name may have changed (a new user name at the provider).
                conn.execute(
                    "UPDATE destinations SET label = ?2 WHERE id = ?1 AND label != ?2",
                    params![id, key.label],
                )
                .map_err(self.err())?;
                set_meta(&conn, "current_dest", &id.to_string()).map_err(self.err())?;
            }
            return Ok(Some(id));
        }
        if !write {
            return Ok(None);
        }
        let claimed = conn
            .execute(
                "UPDATE destinations SET base_url = ?1, account = ?2, label = ?3
                 WHERE id = 1 AND base_url = '' AND account = ''",
                params![key.base_url, key.account, key.label],
            )
            .map_err(self.err())?;
        let id = if claimed == 1 {
            tracing::info!(upstream = %key.base_url, account = %key.label,
                "the sync state written before destinations existed now belongs to this destination");
            1
        } else {
            conn.execute(
                "INSERT INTO destinations (base_url, account, label, created) VALUES (?1, ?2, ?3, ?4)",
                params![key.base_url, key.account, key.label, Utc::now().to_rfc3339()],
            )
            .map_err(self.err())?;
            conn.last_insert_rowid()
        };
        set_meta(&conn, "current_dest", &id.to_string()).map_err(self.err())?;
        Ok(Some(id))
    }

    /// The destination the last sync ran against (what `--status` reports on), with its key.
    pub fn current_destination(&self) -> Result<Option<(DestId, DestKey)>, StateError> {
        let conn = self.reader();
        let id: Option<DestId> = conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'current_dest'",
                [],
                |r| r.get::<_, String>(0),
            )
            .optional()
            .map_err(self.err())?
            .and_then(|v| v.parse().ok());
        // A migrated database that has not synced since: its one (unclaimed) destination.
        let id = id.unwrap_or(1);
        conn.query_row(
            "SELECT id, base_url, account, label FROM destinations WHERE id = ?1",
            [id],
            |r| {
                Ok((
                    r.get(0)?,
                    DestKey {
                        base_url: r.get(1)?,
                        account: r.get(2)?,
                        label: r.get(3)?,
                    },
                ))
            },
        )
        .optional()
        .map_err(self.err())
    }

    /// Forgets everything recorded for `dest` (`--resync`): its buckets, what it acknowledged
    /// and its quarantine. The next sync sends everything again; the upstream absorbs what it
    /// already holds as duplicates.
    pub fn forget_destination(&self, dest: DestId) -> Result<u64, StateError> {
        let mut conn = self.writer();
        let tx = conn.transaction().map_err(self.err())?;
        let n = tx
            .execute(
                "DELETE FROM sent WHERE bucket IN (SELECT id FROM buckets WHERE dest = ?1)",
                [dest],
            )
            .map_err(self.err())?;
        tx.execute(
            "DELETE FROM quarantine WHERE bucket IN (SELECT id FROM buckets WHERE dest = ?1)",
            [dest],
        )
        .map_err(self.err())?;
        tx.execute("DELETE FROM buckets WHERE dest = ?1", [dest])
            .map_err(self.err())?;
        tx.commit().map_err(self.err())?;
        Ok(n as u64)
    }

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
        if c.is_empty() {
            return Ok(());
        }
        let mut conn = self.writer();
        let tx = conn.transaction().map_err(self.err())?;
        {
            let mut upsert = tx
                .prepare_cached(
                    "INSERT INTO sent (bucket, event_id, hash, start_ns, end_ns, status)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (bucket, event_id) DO UPDATE SET
                       hash = excluded.hash, start_ns = excluded.start_ns,
                       end_ns = excluded.end_ns, status = excluded.status",
                )
                .map_err(self.err())?;
            let mut versions: HashMap<i64, i64> = HashMap::new();
            for a in &c.acked {
                upsert
                    .execute(params![
                        a.row,
                        a.event_id,
                        &a.hash[..],
                        a.span.start_ns,
                        a.span.end_ns(),
                        DELIVERED
                    ])
                    .map_err(self.err())?;
                *versions.entry(a.row).or_default() += 1;
            }
            let now = Utc::now().to_rfc3339();
            let mut quarantine = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO quarantine (bucket, event_id, hash, reason, event_json, at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(self.err())?;
            for q in &c.quarantined {
                let a = &q.acked;
                upsert
                    .execute(params![
                        a.row,
                        a.event_id,
                        &a.hash[..],
                        a.span.start_ns,
                        a.span.end_ns(),
                        QUARANTINED
                    ])
                    .map_err(self.err())?;
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
            for d in &c.deleted {
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
            for m in &c.marks {
                apply_mark(&tx, m).map_err(self.err())?;
            }
        }
        tx.commit().map_err(self.err())
    }
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
    chrono::DateTime::<Utc>::from_timestamp_nanos(ns)
        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
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
