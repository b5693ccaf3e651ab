//! The state database's schema and its migrations.
//!
//! Schema 3 (issue 9 and 10): everything the sync remembers belongs to a *destination* (an
//! upstream and an account), and a bucket's read position follows the data:
//!
//! * `destinations`: one row per (upstream base URL, account). Row 1 of a database migrated
//!   from schema 2 has an empty key: it is the destination those records were written for,
//!   claimed by the first destination the sync runs against after the upgrade.
//! * `buckets`: one row per (destination, aw-server bucket), keyed by an integer the `sent`
//!   rows use (integer keys keep each of the millions of `sent` rows small). Besides the
//!   bucket's identity (`created`, `server_device`, `generation`) and its privacy fingerprint:
//!   - `top_ns`: the start of the newest event the last completed pass covered — the data
//!     position the next pass reads down to (minus `lookback`); never the wall clock;
//!   - `top_limit`: how many events that pass saw within `lookback` of `top_ns`, so the next
//!     pass asks for a page of about that size instead of a fixed one;
//!   - `pass_hi`, `pass_pos`, `pass_floor`: a pass in progress (newest first): every event
//!     with a start in `(pass_pos, pass_hi]` is recorded; it continues down to `pass_floor`;
//!   - `listing_fp`, `count`: what the bucket listing and the whole-bucket count said when the
//!     state last agreed with aw-server — an idle cycle compares the two and reads nothing;
//!   - `verify_pos`, `verified_at`: where the background verification continues.
//! * `sent`: the mirror of what aw-server holds and the upstream acknowledged, one row per
//!   event version key: hash, span, and whether it was delivered, quarantined or deleted.
//! * `quarantine`: refused events with their payload.

use rusqlite::{Connection, OptionalExtension};

/// 1: buckets, sent, quarantine, meta. 2: `buckets.filter_fp`. 3: destinations, integer bucket
/// keys, data positions and the mirror's status.
pub const SCHEMA_VERSION: i64 = 3;

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS destinations (
    id       INTEGER PRIMARY KEY,
    base_url TEXT NOT NULL,
    account  TEXT NOT NULL,
    label    TEXT NOT NULL DEFAULT '',
    created  TEXT NOT NULL,
    UNIQUE (base_url, account)
);
CREATE TABLE IF NOT EXISTS buckets (
    id            INTEGER PRIMARY KEY,
    dest          INTEGER NOT NULL,
    bucket_id     TEXT NOT NULL,
    generation    INTEGER NOT NULL DEFAULT 0,
    created       TEXT,
    server_device TEXT,
    filter_fp     TEXT,
    versions_sent INTEGER NOT NULL DEFAULT 0,
    top_ns        INTEGER,
    top_limit     INTEGER,
    pass_hi       INTEGER,
    pass_pos      INTEGER,
    pass_floor    INTEGER,
    listing_fp    TEXT,
    count         INTEGER,
    verify_pos    INTEGER,
    verified_at   TEXT,
    UNIQUE (dest, bucket_id)
);
CREATE TABLE IF NOT EXISTS sent (
    bucket   INTEGER NOT NULL,
    event_id INTEGER NOT NULL,
    hash     BLOB NOT NULL,
    start_ns INTEGER NOT NULL,
    end_ns   INTEGER NOT NULL,
    status   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (bucket, event_id DESC)
) WITHOUT ROWID;
-- `event_id DESC`: a catch-up reads newest first, so each commit's rows sort below every row
-- of the bucket recorded before them; kept newest first, they land at the edge of the
-- bucket's range instead of inside it (1M rows in commits of 1,000–10,000, SQLite alone:
-- 1.0–1.1 s against 1.45–1.55 s). A table made before keeps its order (`Store::sent_desc`).
-- Only the quarantined rows: what an idle cycle's status count reads, instead of every row
-- ever delivered.
CREATE INDEX IF NOT EXISTS sent_quarantined ON sent (bucket) WHERE status = 1;
-- The pull (issue 14; tables added within schema 3: an older binary leaves them alone).
-- Per destination: the feed position applied and the device selection it was applied under.
CREATE TABLE IF NOT EXISTS pull_feed (
    dest        INTEGER PRIMARY KEY,
    seq         INTEGER NOT NULL DEFAULT 0,
    selection   TEXT NOT NULL DEFAULT '',
    caught_up   TEXT
);
-- Per other device: how it is named here and what was applied of it.
CREATE TABLE IF NOT EXISTS pull_devices (
    dest        INTEGER NOT NULL,
    device_id   TEXT NOT NULL,
    hostname    TEXT NOT NULL DEFAULT '',
    last_seq    INTEGER,
    last_at     TEXT,
    unpulled    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (dest, device_id)
);
-- The local aw-server buckets the pull made: only these are ever written.
CREATE TABLE IF NOT EXISTS pull_buckets (
    id           INTEGER PRIMARY KEY,
    dest         INTEGER NOT NULL,
    device_id    TEXT NOT NULL,
    bucket_id    TEXT NOT NULL,
    local_bucket TEXT NOT NULL,
    origin       TEXT NOT NULL,
    created      TEXT,
    UNIQUE (dest, device_id, bucket_id)
);
CREATE INDEX IF NOT EXISTS pull_buckets_local ON pull_buckets (local_bucket);
-- (device, bucket, event id) upstream -> the local aw-server event that copies it.
CREATE TABLE IF NOT EXISTS pull_events (
    bucket   INTEGER NOT NULL,
    event_id INTEGER NOT NULL,
    local_id INTEGER NOT NULL,
    hash     TEXT NOT NULL,
    -- The start of the local copy (ns): how many copies a span holds, for the read-back.
    start_ns INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (bucket, event_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS pull_events_local ON pull_events (bucket, local_id);
CREATE INDEX IF NOT EXISTS pull_events_start ON pull_events (bucket, start_ns);
-- Copies whose local id aw-server did not say (Python aw-server answers `null` to a list
-- insert; their pull_events row has local_id 0): what finds the copy when its id is needed —
-- a replacement, a tombstone, a sweep — 16 bytes of blake3 over its start to the millisecond
-- and its data, and its duration (µs).
CREATE TABLE IF NOT EXISTS pull_unresolved (
    bucket   INTEGER NOT NULL,
    event_id INTEGER NOT NULL,
    fp       BLOB NOT NULL,
    dur_us   INTEGER NOT NULL,
    PRIMARY KEY (bucket, event_id)
) WITHOUT ROWID;
-- Inserts that were sent to aw-server but not yet recorded: swept after a crash. `unseen`:
-- how many of the insert's events no sweep has found yet (aw-server may still be writing them
-- after the client died); `sent_at`: when it was sent (unix seconds). Both 0 on a row of an
-- older binary: swept once, as it did.
CREATE TABLE IF NOT EXISTS pull_pending (
    bucket   INTEGER NOT NULL,
    start_ns INTEGER NOT NULL,
    end_ns   INTEGER NOT NULL,
    unseen   INTEGER NOT NULL DEFAULT 0,
    sent_at  INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS quarantine (
    bucket     INTEGER NOT NULL,
    event_id   INTEGER NOT NULL,
    hash       BLOB NOT NULL,
    reason     TEXT NOT NULL,
    event_json TEXT NOT NULL,
    at         TEXT NOT NULL,
    PRIMARY KEY (bucket, event_id, hash)
);
";

/// The tables of schema 2 (schema 1 lacked `buckets.filter_fp`), as they were created.
const V2_TABLES: &str = "
CREATE TABLE IF NOT EXISTS buckets (
    bucket_id     TEXT PRIMARY KEY,
    generation    INTEGER NOT NULL DEFAULT 0,
    created       TEXT,
    server_device TEXT,
    cursor_ns     INTEGER,
    window_ns     INTEGER,
    versions_sent INTEGER NOT NULL DEFAULT 0
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

/// `pull_pending.unseen` and `sent_at`, added within schema 3: a table an older binary made
/// gets them (0 and 0 on its rows: swept once, as that binary did). An older binary inserts
/// rows without them, which the defaults fill the same way.
pub fn add_pull_pending_columns(conn: &Connection) -> rusqlite::Result<()> {
    let has: i64 = conn.query_row(
        "SELECT count(*) FROM pragma_table_info('pull_pending') WHERE name = 'unseen'",
        [],
        |r| r.get(0),
    )?;
    if has == 0 {
        conn.execute_batch(
            "ALTER TABLE pull_pending ADD COLUMN unseen INTEGER NOT NULL DEFAULT 0;
             ALTER TABLE pull_pending ADD COLUMN sent_at INTEGER NOT NULL DEFAULT 0;",
        )?;
    }
    Ok(())
}

/// Whether `sent` keeps a bucket's rows newest first (tables made since `event_id DESC`; see
/// [`SCHEMA`]), read from the table's own definition: commits write rows in that order.
pub fn sent_is_desc(conn: &Connection) -> rusqlite::Result<bool> {
    let sql: Option<String> = conn
        .query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'sent'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    Ok(sql.is_some_and(|s| s.contains("event_id DESC")))
}

/// `sent.status`.
pub const DELIVERED: i64 = 0;
pub const QUARANTINED: i64 = 1;
pub const DELETED: i64 = 2;

/// The schema version a database says it has; `None` for a new one.
pub fn found_version(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    let has_meta: bool = conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
            [],
            |_| Ok(true),
        )
        .optional()?
        .unwrap_or(false);
    if !has_meta {
        return Ok(None);
    }
    Ok(conn
        .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
            r.get::<_, String>(0)
        })
        .optional()?
        .and_then(|v| v.parse().ok()))
}

/// Schema 1 or 2 → 3, in one transaction: the old tables are renamed, the new ones created and
/// filled, the old ones dropped. Every record goes to destination 1, the unclaimed one (see the
/// module docs); a bucket's wall-clock cursor becomes its `top_ns` (everything before it was
/// acknowledged, so reading down to it minus `lookback` misses nothing the old scan had), and
/// its `count` stays unknown, so the first cycle reconciles the whole bucket with aw-server —
/// which finds, and sends, what the old scan never read.
pub fn migrate_to_3(conn: &mut Connection, from: i64) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    // Schema 1 and 2 created their tables lazily: make sure each one exists before renaming.
    tx.execute_batch(V2_TABLES)?;
    if from < 2 {
        tx.execute_batch("ALTER TABLE buckets ADD COLUMN filter_fp TEXT;")?;
    }
    tx.execute_batch(
        "ALTER TABLE buckets RENAME TO buckets_v2;
         ALTER TABLE sent RENAME TO sent_v2;
         ALTER TABLE quarantine RENAME TO quarantine_v2;
         DROP INDEX IF EXISTS sent_quarantined;",
    )?;
    tx.execute_batch(SCHEMA)?;
    tx.execute(
        "INSERT INTO destinations (id, base_url, account, label, created)
         VALUES (1, '', '', '', strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))",
        [],
    )?;
    tx.execute_batch(
        "INSERT INTO buckets (dest, bucket_id, generation, created, server_device, filter_fp,
                              versions_sent, top_ns)
         SELECT 1, bucket_id, generation, created, server_device, filter_fp, versions_sent,
                cursor_ns
         FROM buckets_v2;
         INSERT INTO sent (bucket, event_id, hash, start_ns, end_ns, status)
         SELECT b.id, s.event_id, s.hash, s.start_ns, s.end_ns, s.quarantined
         FROM sent_v2 s JOIN buckets b ON b.dest = 1 AND b.bucket_id = s.bucket_id;
         INSERT INTO quarantine (bucket, event_id, hash, reason, event_json, at)
         SELECT b.id, q.event_id, q.hash, q.reason, q.event_json, q.at
         FROM quarantine_v2 q JOIN buckets b ON b.dest = 1 AND b.bucket_id = q.bucket_id;
         DROP TABLE buckets_v2;
         DROP TABLE sent_v2;
         DROP TABLE quarantine_v2;
         UPDATE meta SET value = '3' WHERE key = 'schema';",
    )?;
    tx.commit()
}
