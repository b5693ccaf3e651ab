//! The one schema of both stores, as numbered migrations run at start (each in its own
//! transaction, recorded in `schema_migrations`). Written in the SQL that SQLite and PostgreSQL
//! both read: `TEXT`, `BIGINT`, `DOUBLE PRECISION`; `"user"` is quoted because it is a reserved
//! word in PostgreSQL. Migration 1 is the dev server's original schema (`IF NOT EXISTS`, so a
//! dev database made before migrations were recorded passes through it unchanged).

/// `(version, statements)`, in order. Never edit a released migration: add one.
pub(crate) const MIGRATIONS: &[(i64, &[&str])] = &[
    (
        1,
        &[
            "CREATE TABLE IF NOT EXISTS devices (
                \"user\" TEXT NOT NULL,
                device_id TEXT NOT NULL,
                hostname TEXT NOT NULL,
                last_seen TEXT NOT NULL,
                PRIMARY KEY (\"user\", device_id))",
            "CREATE TABLE IF NOT EXISTS buckets (
                \"user\" TEXT NOT NULL,
                device_id TEXT NOT NULL,
                bucket_id TEXT NOT NULL,
                type TEXT NOT NULL,
                client TEXT NOT NULL,
                hostname TEXT NOT NULL,
                created TEXT,
                versions_replaced BIGINT NOT NULL DEFAULT 0,
                duplicates BIGINT NOT NULL DEFAULT 0,
                PRIMARY KEY (\"user\", device_id, bucket_id))",
            "CREATE TABLE IF NOT EXISTS events (
                \"user\" TEXT NOT NULL,
                device_id TEXT NOT NULL,
                bucket_id TEXT NOT NULL,
                event_id BIGINT NOT NULL,
                hash TEXT NOT NULL,
                timestamp TEXT NOT NULL,
                duration DOUBLE PRECISION NOT NULL,
                data TEXT NOT NULL,
                versions BIGINT NOT NULL DEFAULT 1,
                batch_id TEXT NOT NULL,
                PRIMARY KEY (\"user\", device_id, bucket_id, event_id))",
            "CREATE TABLE IF NOT EXISTS batches (
                \"user\" TEXT NOT NULL,
                batch_id TEXT NOT NULL,
                device_id TEXT NOT NULL,
                events BIGINT NOT NULL,
                response TEXT NOT NULL,
                received_at TEXT NOT NULL,
                PRIMARY KEY (\"user\", batch_id))",
        ],
    ),
    (
        2,
        &[
            // The change feed: each user's last sequence number. Its row is also the lock that
            // serializes a user's writes (`UPDATE … SET seq = seq`), so changes commit in seq
            // order and a reader that saw seq N never misses a later commit below N.
            "CREATE TABLE users (
                \"user\" TEXT NOT NULL PRIMARY KEY,
                seq BIGINT NOT NULL DEFAULT 0)",
            // The seq of an event's current version (a replaced event moves up the feed) and its
            // start in microseconds since the epoch (range deletes; RFC 3339 text of varying
            // precision does not sort).
            "ALTER TABLE events ADD COLUMN seq BIGINT NOT NULL DEFAULT 0",
            "ALTER TABLE events ADD COLUMN start_us BIGINT",
            "CREATE INDEX events_feed ON events (\"user\", seq)",
            // Deleted events, for the feed.
            "CREATE TABLE tombstones (
                \"user\" TEXT NOT NULL,
                seq BIGINT NOT NULL,
                device_id TEXT NOT NULL,
                bucket_id TEXT NOT NULL,
                event_id BIGINT NOT NULL,
                PRIMARY KEY (\"user\", seq))",
            // Pruning of idempotency records by age.
            "CREATE INDEX batches_received ON batches (received_at)",
        ],
    ),
];

/// The newest schema version this build knows.
pub(crate) fn latest() -> i64 {
    MIGRATIONS.last().map_or(0, |(v, _)| *v)
}

pub(crate) const MIGRATIONS_TABLE: &str =
    "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT NOT NULL PRIMARY KEY, applied_at TEXT NOT NULL)";
