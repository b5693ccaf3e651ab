//! The PostgreSQL store: any number of server processes on one database. A batch is one
//! transaction that first locks the user's row in `users` (`SELECT … FOR UPDATE`): a user's
//! batches and deletes are serialized, so the batch-id check inside it sees a concurrent send of
//! the same batch, two writes of one event key end with the later one, and seqs commit in
//! order — a reader that saw seq N never misses a change below N committed later. Different
//! users do not wait for each other. Writes are set-based (`UNNEST` of arrays): a batch of 500
//! events is a handful of statements, not 500 round trips.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Postgres, Row, Transaction};
use uuid::Uuid;

use samay_api::{BatchResponse, BucketInfo, Change, DeviceInfo};
use serde_json::value::RawValue;

use super::plan::{self, Final, Key};
use super::{answer_json, schema, timestamp, IncomingBatch, Outcome, Scope, StoreError};

/// Connections per server process; with many processes, keep their sum below the database's
/// `max_connections`.
const POOL_SIZE: u32 = 16;
/// How long a request waits for a connection before it is answered 503.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// Key of the advisory lock that lets one process at a time migrate.
const MIGRATION_LOCK: i64 = 0x5a_4d_41_59; // "ZMAY"

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        let transient = match &e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed => true,
            // Class 08 (connection), 57 (operator intervention: shutdown, restart), 53
            // (resources), 40001/40P01 (serialization, deadlock): try again later.
            sqlx::Error::Database(db) => db.code().is_some_and(|c| {
                c.starts_with("08")
                    || c.starts_with("57")
                    || c.starts_with("53")
                    || c == "40001"
                    || c == "40P01"
            }),
            _ => false,
        };
        if transient {
            StoreError::Unavailable(e.to_string())
        } else {
            StoreError::Failed(e.to_string())
        }
    }
}

#[derive(Clone)]
pub(crate) struct PgStore {
    pool: PgPool,
}

impl PgStore {
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect(url)
            .await
            .context("connecting to PostgreSQL")?;
        migrate(&pool)
            .await
            .context("migrating the database schema")?;
        Ok(Self { pool })
    }

    pub async fn replay(
        &self,
        user: &str,
        batch_id: Uuid,
    ) -> Result<Option<BatchResponse>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        lookup(&mut conn, user, batch_id).await
    }

    pub async fn store(&self, user: &str, batch: &IncomingBatch) -> Result<Outcome, StoreError> {
        let mut tx = self.pool.begin().await?;
        let seq = lock_user(&mut tx, user).await?;
        if let Some(answer) = lookup(&mut tx, user, batch.batch_id).await? {
            return Ok(Outcome::Replayed(answer));
        }
        let now = timestamp(chrono::Utc::now());
        let device = batch.device_id.to_string();
        let batch_id = batch.batch_id.to_string();
        sqlx::query(
            r#"INSERT INTO devices ("user", device_id, hostname, last_seen) VALUES ($1, $2, $3, $4)
               ON CONFLICT ("user", device_id) DO UPDATE SET hostname = excluded.hostname, last_seen = excluded.last_seen"#,
        )
        .bind(user)
        .bind(&device)
        .bind(&batch.hostname)
        .bind(&now)
        .execute(&mut *tx)
        .await?;
        for (bucket_id, meta) in &batch.buckets {
            sqlx::query(
                r#"INSERT INTO buckets ("user", device_id, bucket_id, type, client, hostname, created)
                   VALUES ($1, $2, $3, $4, $5, $6, $7)
                   ON CONFLICT ("user", device_id, bucket_id) DO UPDATE SET type = excluded.type,
                     client = excluded.client, hostname = excluded.hostname,
                     created = coalesce(excluded.created, buckets.created)"#,
            )
            .bind(user)
            .bind(&device)
            .bind(bucket_id)
            .bind(&meta.bucket_type)
            .bind(&meta.client)
            .bind(&meta.hostname)
            .bind(&meta.created)
            .execute(&mut *tx)
            .await?;
        }
        let keys = plan::keys(batch);
        let (kb, ke): (Vec<String>, Vec<i64>) = keys.into_iter().unzip();
        let rows = sqlx::query(
            // LATERAL: one primary-key probe per key of the batch. A plain join lets the
            // planner scan every stored event of the device (it cannot see the array's size),
            // which grows with the device's history.
            r#"SELECT k.bucket_id, k.event_id, e.hash FROM UNNEST($3::text[], $4::bigint[]) AS k(bucket_id, event_id)
               CROSS JOIN LATERAL (SELECT hash FROM events
                 WHERE "user" = $1 AND device_id = $2 AND bucket_id = k.bucket_id AND event_id = k.event_id) AS e"#,
        )
        .bind(user)
        .bind(&device)
        .bind(&kb)
        .bind(&ke)
        .fetch_all(&mut *tx)
        .await?;
        let mut stored: HashMap<Key, String> = HashMap::with_capacity(rows.len());
        for row in rows {
            stored.insert((row.try_get(0)?, row.try_get(1)?), row.try_get(2)?);
        }
        let plan = plan::plan(batch, &stored, seq);
        let mut fresh = Upserts::default();
        let mut replaced = Upserts::default();
        let mut gone: (Vec<String>, Vec<i64>, Vec<i64>) = Default::default();
        for w in &plan.writes {
            match &w.state {
                Final::Stored {
                    event,
                    start_us,
                    add_versions,
                    reset,
                } => {
                    let target = if *reset { &mut fresh } else { &mut replaced };
                    target.push(&w.key, w.seq, event, *start_us, *add_versions);
                }
                Final::Deleted => {
                    gone.0.push(w.key.0.clone());
                    gone.1.push(w.key.1);
                    gone.2.push(w.seq);
                }
            }
        }
        fresh
            .write(&mut tx, user, &device, &batch_id, "excluded.versions")
            .await?;
        replaced
            .write(
                &mut tx,
                user,
                &device,
                &batch_id,
                "events.versions + excluded.versions",
            )
            .await?;
        if !gone.0.is_empty() {
            sqlx::query(
                r#"DELETE FROM events e USING UNNEST($3::text[], $4::bigint[]) AS k(bucket_id, event_id)
                   WHERE e."user" = $1 AND e.device_id = $2 AND e.bucket_id = k.bucket_id AND e.event_id = k.event_id"#,
            )
            .bind(user)
            .bind(&device)
            .bind(&gone.0)
            .bind(&gone.1)
            .execute(&mut *tx)
            .await?;
            tombstones(&mut tx, user, &device, &gone.0, &gone.1, &gone.2).await?;
        }
        for (bucket_id, counts) in &plan.buckets {
            sqlx::query(
                r#"UPDATE buckets SET versions_replaced = versions_replaced + $4, duplicates = duplicates + $5
                   WHERE "user" = $1 AND device_id = $2 AND bucket_id = $3"#,
            )
            .bind(user)
            .bind(&device)
            .bind(bucket_id)
            .bind(counts.versions_replaced)
            .bind(counts.duplicates)
            .execute(&mut *tx)
            .await?;
        }
        set_seq(&mut tx, user, plan.last_seq).await?;
        sqlx::query(
            r#"INSERT INTO batches ("user", batch_id, device_id, events, response, received_at) VALUES ($1, $2, $3, $4, $5, $6)"#,
        )
        .bind(user)
        .bind(&batch_id)
        .bind(&device)
        .bind(batch.events.len() as i64)
        .bind(answer_json(&plan.answer))
        .bind(&now)
        .execute(&mut *tx)
        .await?;
        let replaced = plan.replaced();
        let answer = plan.answer;
        tx.commit().await?;
        Ok(Outcome::Stored { answer, replaced })
    }

    pub async fn devices(&self, user: &str) -> Result<Vec<DeviceInfo>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let rows = sqlx::query(
            r#"SELECT device_id, hostname, last_seen FROM devices WHERE "user" = $1 ORDER BY device_id"#,
        )
        .bind(user)
        .fetch_all(&mut *conn)
        .await?;
        let mut devices = Vec::with_capacity(rows.len());
        for row in rows {
            devices.push(DeviceInfo {
                device_id: row.try_get(0)?,
                hostname: row.try_get(1)?,
                last_seen: row.try_get(2)?,
                buckets: Vec::new(),
            });
        }
        for device in &mut devices {
            let rows = sqlx::query(
                r#"SELECT b.bucket_id, b.type, b.client, b.hostname, b.created,
                          (SELECT count(*) FROM events e WHERE e."user" = b."user" AND e.device_id = b.device_id AND e.bucket_id = b.bucket_id)
                   FROM buckets b WHERE b."user" = $1 AND b.device_id = $2 ORDER BY b.bucket_id"#,
            )
            .bind(user)
            .bind(&device.device_id)
            .fetch_all(&mut *conn)
            .await?;
            for row in rows {
                device.buckets.push(BucketInfo {
                    bucket_id: row.try_get(0)?,
                    bucket_type: row.try_get(1)?,
                    client: row.try_get(2)?,
                    hostname: row.try_get(3)?,
                    created: row.try_get(4)?,
                    events: row.try_get::<i64, _>(5)?.max(0) as u64,
                });
            }
        }
        Ok(devices)
    }

    pub async fn changes(
        &self,
        user: &str,
        after: i64,
        limit: i64,
        device_id: Option<&str>,
    ) -> Result<Vec<Change>, StoreError> {
        let rows = sqlx::query(
            r#"SELECT seq, device_id, bucket_id, event_id, hash, timestamp, duration, data, false AS deleted FROM events
                 WHERE "user" = $1 AND seq > $2 AND ($3::text IS NULL OR device_id = $3)
               UNION ALL
               SELECT seq, device_id, bucket_id, event_id, NULL::text, NULL::text, NULL::float8, NULL::text, true FROM tombstones
                 WHERE "user" = $1 AND seq > $2 AND ($3::text IS NULL OR device_id = $3)
               ORDER BY 1 LIMIT $4"#,
        )
        .bind(user)
        .bind(after)
        .bind(device_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut changes = Vec::with_capacity(rows.len());
        for row in rows {
            let data: Option<String> = row.try_get(7)?;
            changes.push(Change {
                seq: row.try_get(0)?,
                device_id: row.try_get(1)?,
                bucket_id: row.try_get(2)?,
                event_id: row.try_get(3)?,
                hash: row.try_get(4)?,
                timestamp: row.try_get(5)?,
                duration: row.try_get(6)?,
                data: data.and_then(|d| RawValue::from_string(d).ok()),
                deleted: row.try_get(8)?,
            });
        }
        Ok(changes)
    }

    pub async fn delete(&self, user: &str, scope: &Scope) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let seq = lock_user(&mut tx, user).await?;
        let rows = sqlx::query(
            r#"DELETE FROM events WHERE "user" = $1 AND device_id = $2
                 AND ($3::text IS NULL OR bucket_id = $3) AND ($4::bigint IS NULL OR start_us >= $4)
                 AND ($5::bigint IS NULL OR start_us < $5)
               RETURNING bucket_id, event_id"#,
        )
        .bind(user)
        .bind(&scope.device_id)
        .bind(&scope.bucket_id)
        .bind(scope.start_us)
        .bind(scope.end_us)
        .fetch_all(&mut *tx)
        .await?;
        let mut keys: Vec<Key> = Vec::with_capacity(rows.len());
        for row in rows {
            keys.push((row.try_get(0)?, row.try_get(1)?));
        }
        keys.sort_unstable();
        let seqs: Vec<i64> = (seq + 1..=seq + keys.len() as i64).collect();
        let (kb, ke): (Vec<String>, Vec<i64>) = keys.into_iter().unzip();
        tombstones(&mut tx, user, &scope.device_id, &kb, &ke, &seqs).await?;
        if scope.start_us.is_none() && scope.end_us.is_none() {
            sqlx::query(
                r#"DELETE FROM buckets WHERE "user" = $1 AND device_id = $2 AND ($3::text IS NULL OR bucket_id = $3)"#,
            )
            .bind(user)
            .bind(&scope.device_id)
            .bind(&scope.bucket_id)
            .execute(&mut *tx)
            .await?;
            if scope.bucket_id.is_none() {
                sqlx::query(r#"DELETE FROM devices WHERE "user" = $1 AND device_id = $2"#)
                    .bind(user)
                    .bind(&scope.device_id)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        set_seq(&mut tx, user, seq + kb.len() as i64).await?;
        tx.commit().await?;
        Ok(kb.len() as u64)
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn prune_batches(&self, before: &str) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM batches WHERE received_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

/// Column arrays of event versions to write in one statement.
#[derive(Default)]
struct Upserts {
    bucket: Vec<String>,
    event_id: Vec<i64>,
    hash: Vec<String>,
    timestamp: Vec<String>,
    duration: Vec<f64>,
    data: Vec<String>,
    versions: Vec<i64>,
    seq: Vec<i64>,
    start_us: Vec<i64>,
}

impl Upserts {
    fn push(&mut self, key: &Key, seq: i64, e: &samay_api::UpEvent, start_us: i64, versions: i64) {
        self.bucket.push(key.0.clone());
        self.event_id.push(key.1);
        self.hash.push(e.hash.clone());
        self.timestamp.push(e.timestamp.clone());
        self.duration.push(e.duration);
        self.data.push(e.data.get().to_string());
        self.versions.push(versions);
        self.seq.push(seq);
        self.start_us.push(start_us);
    }

    /// `versions`: the SQL of the stored version count when the key exists (a fixed string of
    /// ours, never input).
    async fn write(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        user: &str,
        device: &str,
        batch_id: &str,
        versions: &'static str,
    ) -> Result<(), StoreError> {
        if self.bucket.is_empty() {
            return Ok(());
        }
        sqlx::query(&format!(
            r#"INSERT INTO events ("user", device_id, bucket_id, event_id, hash, timestamp, duration, data, versions, batch_id, seq, start_us)
               SELECT $1, $2, t.bucket_id, t.event_id, t.hash, t.timestamp, t.duration, t.data, t.versions, $3, t.seq, t.start_us
               FROM UNNEST($4::text[], $5::bigint[], $6::text[], $7::text[], $8::float8[], $9::text[], $10::bigint[], $11::bigint[], $12::bigint[])
                 AS t(bucket_id, event_id, hash, timestamp, duration, data, versions, seq, start_us)
               ON CONFLICT ("user", device_id, bucket_id, event_id) DO UPDATE SET hash = excluded.hash,
                 timestamp = excluded.timestamp, duration = excluded.duration, data = excluded.data,
                 versions = {versions}, batch_id = excluded.batch_id, seq = excluded.seq,
                 start_us = excluded.start_us"#
        ))
        .bind(user)
        .bind(device)
        .bind(batch_id)
        .bind(&self.bucket)
        .bind(&self.event_id)
        .bind(&self.hash)
        .bind(&self.timestamp)
        .bind(&self.duration)
        .bind(&self.data)
        .bind(&self.versions)
        .bind(&self.seq)
        .bind(&self.start_us)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

async fn tombstones(
    tx: &mut Transaction<'_, Postgres>,
    user: &str,
    device: &str,
    buckets: &[String],
    event_ids: &[i64],
    seqs: &[i64],
) -> Result<(), StoreError> {
    if buckets.is_empty() {
        return Ok(());
    }
    sqlx::query(
        r#"INSERT INTO tombstones ("user", seq, device_id, bucket_id, event_id)
           SELECT $1, t.seq, $2, t.bucket_id, t.event_id FROM UNNEST($3::text[], $4::bigint[], $5::bigint[]) AS t(bucket_id, event_id, seq)"#,
    )
    .bind(user)
    .bind(device)
    .bind(buckets)
    .bind(event_ids)
    .bind(seqs)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Creates the user's seq row if needed and locks it until the transaction ends; its seq.
async fn lock_user(tx: &mut Transaction<'_, Postgres>, user: &str) -> Result<i64, StoreError> {
    sqlx::query(
        r#"INSERT INTO users ("user", seq) VALUES ($1, 0) ON CONFLICT ("user") DO NOTHING"#,
    )
    .bind(user)
    .execute(&mut **tx)
    .await?;
    Ok(
        sqlx::query_scalar(r#"SELECT seq FROM users WHERE "user" = $1 FOR UPDATE"#)
            .bind(user)
            .fetch_one(&mut **tx)
            .await?,
    )
}

async fn set_seq(
    tx: &mut Transaction<'_, Postgres>,
    user: &str,
    seq: i64,
) -> Result<(), StoreError> {
    sqlx::query(r#"UPDATE users SET seq = $2 WHERE "user" = $1"#)
        .bind(user)
        .bind(seq)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn lookup(
    conn: &mut sqlx::PgConnection,
    user: &str,
    batch_id: Uuid,
) -> Result<Option<BatchResponse>, StoreError> {
    let answer: Option<String> =
        sqlx::query_scalar(r#"SELECT response FROM batches WHERE "user" = $1 AND batch_id = $2"#)
            .bind(user)
            .bind(batch_id.to_string())
            .fetch_optional(conn)
            .await?;
    Ok(answer.and_then(|a| serde_json::from_str(&a).ok()))
}

/// Runs the missing migrations in one transaction under an advisory lock, so server processes
/// starting together migrate once.
async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *tx)
        .await?;
    sqlx::query(schema::MIGRATIONS_TABLE)
        .execute(&mut *tx)
        .await?;
    let current: i64 =
        sqlx::query_scalar("SELECT coalesce(max(version), 0)::bigint FROM schema_migrations")
            .fetch_one(&mut *tx)
            .await?;
    anyhow::ensure!(
        current <= schema::latest(),
        "the database has schema version {current}, newer than this server knows ({}): use a newer samay-server",
        schema::latest()
    );
    for (version, statements) in schema::MIGRATIONS {
        if *version <= current {
            continue;
        }
        for sql in *statements {
            sqlx::query(sql)
                .execute(&mut *tx)
                .await
                .with_context(|| format!("schema migration {version}"))?;
        }
        sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
            .bind(version)
            .bind(timestamp(chrono::Utc::now()))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}
