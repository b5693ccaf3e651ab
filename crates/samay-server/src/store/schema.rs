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
    (
        3,
        &[
            // Integer keys in the hot indexes (issue 13's ingest benchmark): events were keyed
            // by (user, device_id, bucket_id, event_id), about 110 bytes of text per index
            // entry, and carried those texts in every row. Measured on PostgreSQL with 500-row
            // inserts: 18 ms and 495 kB of WAL each; keyed by (bucket id, event id) 6 ms and
            // 246 kB. Users and buckets get numbers; the texts stay in their rows only.
            "ALTER TABLE users ADD COLUMN id BIGINT",
            "UPDATE users SET id = (SELECT count(*) FROM users u WHERE u.\"user\" <= users.\"user\")",
            "CREATE UNIQUE INDEX users_id ON users (id)",
            // Every event has its bucket's row (a batch names the bucket of each event); a
            // database written otherwise by hand keeps its events all the same.
            "INSERT INTO buckets (\"user\", device_id, bucket_id, type, client, hostname)
               SELECT DISTINCT e.\"user\", e.device_id, e.bucket_id, '', '', '' FROM events e
               WHERE NOT EXISTS (SELECT 1 FROM buckets b WHERE b.\"user\" = e.\"user\"
                 AND b.device_id = e.device_id AND b.bucket_id = e.bucket_id)",
            "ALTER TABLE buckets ADD COLUMN id BIGINT",
            "UPDATE buckets SET id = (SELECT count(*) FROM buckets b
               WHERE (b.\"user\", b.device_id, b.bucket_id) <= (buckets.\"user\", buckets.device_id, buckets.bucket_id))",
            "CREATE UNIQUE INDEX buckets_id ON buckets (id)",
            // `uid` (the user's number) is in the row for the feed's index; `batch_id` went
            // (nothing read it).
            "CREATE TABLE events_v3 (
                bucket BIGINT NOT NULL,
                event_id BIGINT NOT NULL,
                uid BIGINT NOT NULL,
                seq BIGINT NOT NULL,
                hash TEXT NOT NULL,
                timestamp TEXT NOT NULL,
                duration DOUBLE PRECISION NOT NULL,
                data TEXT NOT NULL,
                versions BIGINT NOT NULL,
                start_us BIGINT,
                PRIMARY KEY (bucket, event_id))",
            "INSERT INTO events_v3 (bucket, event_id, uid, seq, hash, timestamp, duration, data, versions, start_us)
               SELECT b.id, e.event_id, u.id, e.seq, e.hash, e.timestamp, e.duration, e.data, e.versions, e.start_us
               FROM events e
               JOIN buckets b ON b.\"user\" = e.\"user\" AND b.device_id = e.device_id AND b.bucket_id = e.bucket_id
               JOIN users u ON u.\"user\" = e.\"user\"",
            "DROP TABLE events",
            "ALTER TABLE events_v3 RENAME TO events",
            "CREATE INDEX events_feed ON events (uid, seq)",
        ],
    ),
];

/// Statements PostgreSQL runs after a migration's shared ones: where the two differ. New
/// numbers of users and buckets come from sequences there (many processes); SQLite, one writer
/// under its write lock, takes the next after the largest.
#[cfg(feature = "postgres")]
pub(crate) const POSTGRES_AFTER: &[(i64, &[&str])] = &[(
    3,
    &[
        "CREATE SEQUENCE users_ids",
        "SELECT setval('users_ids', (SELECT coalesce(max(id), 0) + 1 FROM users), false)",
        "CREATE SEQUENCE buckets_ids",
        "SELECT setval('buckets_ids', (SELECT coalesce(max(id), 0) + 1 FROM buckets), false)",
    ],
)];

/// The newest schema version this build knows.
pub(crate) fn latest() -> i64 {
    MIGRATIONS.last().map_or(0, |(v, _)| *v)
}

pub(crate) const MIGRATIONS_TABLE: &str =
    "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT NOT NULL PRIMARY KEY, applied_at TEXT NOT NULL)";
