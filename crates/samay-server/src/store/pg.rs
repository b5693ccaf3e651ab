//! The PostgreSQL store: any number of server processes on one database. A batch is one
//! transaction that first locks the user's row in `users` (`INSERT … ON CONFLICT DO UPDATE`,
//! which waits for a concurrent holder): a user's batches and deletes are serialized, so the
//! batch-id check inside it sees a concurrent send of the same batch, two writes of one event
//! key end with the later one, and seqs commit in order — a reader that saw seq N never misses a
//! change below N committed later. Different users do not wait for each other. Writes are
//! set-based (`UNNEST` of arrays) and keyed by numbers (a bucket's number and the event id, the
//! user's number for the feed): a batch of 500 events is five statements — lock, idempotency
//! check, device and buckets, stored hashes, every write — whatever its size.

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
        let (uid, seq) = lock_user(&mut tx, user).await?;
        if let Some(answer) = lookup(&mut tx, user, batch.batch_id).await? {
            return Ok(Outcome::Replayed(answer));
        }
        let now = timestamp(chrono::Utc::now());
        let device = batch.device_id.to_string();
        let batch_id = batch.batch_id.to_string();
        let mut ids = bucket_ids(&mut tx, user, &device, &batch.hostname, &now, batch).await?;
        let keys = plan::keys(batch);
        // Buckets only named by deletions: their numbers, if they exist (no row, no events).
        let unknown: Vec<String> = keys
            .iter()
            .filter(|(b, _)| !ids.contains_key(b))
            .map(|(b, _)| b.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        if !unknown.is_empty() {
            let rows = sqlx::query(
                r#"SELECT bucket_id, id FROM buckets WHERE "user" = $1 AND device_id = $2 AND bucket_id = ANY($3)"#,
            )
            .bind(user)
            .bind(&device)
            .bind(&unknown)
            .fetch_all(&mut *tx)
            .await?;
            for row in rows {
                ids.insert(row.try_get(0)?, row.try_get(1)?);
            }
        }
        let names: HashMap<i64, &str> = ids.iter().map(|(n, id)| (*id, n.as_str())).collect();
        let mut runs: (Vec<i64>, Vec<i64>, Vec<i64>) = Default::default();
        for (name, lo, hi) in plan::runs(&keys) {
            if let Some(id) = ids.get(name) {
                runs.0.push(*id);
                runs.1.push(lo);
                runs.2.push(hi);
            }
        }
        let rows = sqlx::query(
            // One range scan of the primary key per run of the batch's event ids (a catch-up
            // sends a bucket's events in id order: a batch is one or a few runs), instead of a
            // probe per key; rows between the keys are read and dropped below. OFFSET 0 keeps
            // the subquery a scan per run (a join of the two would be planned as a whole, and
            // once per connection: while the table is small, as a scan of all of it); the
            // transaction has sequential scans off ([`lock_user`]), so it is the index's.
            r#"SELECT r.bucket, x.event_id, x.hash
               FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[]) AS r(bucket, lo, hi)
               CROSS JOIN LATERAL (SELECT event_id, hash FROM events
                 WHERE bucket = r.bucket AND event_id >= r.lo AND event_id <= r.hi OFFSET 0) AS x"#,
        )
        .bind(&runs.0)
        .bind(&runs.1)
        .bind(&runs.2)
        .fetch_all(&mut *tx)
        .await?;
        let mut stored: HashMap<Key, String> = HashMap::with_capacity(rows.len());
        for row in rows {
            let bucket: i64 = row.try_get(0)?;
            let name = names
                .get(&bucket)
                .ok_or_else(|| StoreError::Failed(format!("bucket number {bucket} unknown")))?;
            let key = (name.to_string(), row.try_get(1)?);
            if keys.binary_search(&key).is_ok() {
                stored.insert(key, row.try_get(2)?);
            }
        }
        let plan = plan::plan(batch, &stored, seq);
        let id_of = |name: &str| {
            ids.get(name)
                .copied()
                .ok_or_else(|| StoreError::Failed(format!("bucket {name:?} has no number")))
        };
        let mut fresh = Upserts::default();
        let mut replaced = Upserts::default();
        let mut gone = Gone::default();
        for w in &plan.writes {
            let bucket = id_of(&w.key.0)?;
            match &w.state {
                Final::Stored {
                    event,
                    start_us,
                    add_versions,
                    new_row,
                } => {
                    let target = if *new_row { &mut fresh } else { &mut replaced };
                    target.push(bucket, w.key.1, w.seq, event, *start_us, *add_versions);
                }
                Final::Deleted => {
                    gone.bucket.push(bucket);
                    gone.name.push(w.key.0.clone());
                    gone.event_id.push(w.key.1);
                    gone.seq.push(w.seq);
                }
            }
        }
        let mut counted: (Vec<i64>, Vec<i64>, Vec<i64>) = Default::default();
        for (bucket_id, counts) in plan.counted() {
            counted.0.push(id_of(bucket_id)?);
            counted.1.push(counts.versions_replaced);
            counted.2.push(counts.duplicates);
        }
        // Everything the batch writes, in one statement (one round trip). The CTEs touch
        // disjoint rows: a key is either stored (new or replaced) or deleted.
        sqlx::query(&format!(
            r#"WITH fresh AS ({fresh}), replaced AS ({replaced}),
               gone AS (DELETE FROM events e USING UNNEST($20::bigint[], $21::bigint[]) AS k(bucket, event_id)
                 WHERE e.bucket = k.bucket AND e.event_id = k.event_id),
               tomb AS (INSERT INTO tombstones ("user", seq, device_id, bucket_id, event_id)
                 SELECT $22, t.seq, $23, t.bucket_id, t.event_id FROM UNNEST($24::text[], $21::bigint[], $25::bigint[]) AS t(bucket_id, event_id, seq)),
               counts AS (UPDATE buckets b SET versions_replaced = b.versions_replaced + c.replaced, duplicates = b.duplicates + c.duplicates
                 FROM UNNEST($26::bigint[], $27::bigint[], $28::bigint[]) AS c(id, replaced, duplicates) WHERE b.id = c.id),
               feed AS (UPDATE users SET seq = $29 WHERE id = $1)
               INSERT INTO batches ("user", batch_id, device_id, events, response, received_at) VALUES ($22, $30, $23, $31, $32, $33)"#,
            fresh = Upserts::sql(2, None),
            replaced = Upserts::sql(11, Some("events.versions + excluded.versions")),
        ))
        .bind(uid)
        .bind(&fresh.bucket)
        .bind(&fresh.event_id)
        .bind(&fresh.seq)
        .bind(&fresh.hash)
        .bind(&fresh.timestamp)
        .bind(&fresh.duration)
        .bind(&fresh.data)
        .bind(&fresh.versions)
        .bind(&fresh.start_us)
        .bind(&replaced.bucket)
        .bind(&replaced.event_id)
        .bind(&replaced.seq)
        .bind(&replaced.hash)
        .bind(&replaced.timestamp)
        .bind(&replaced.duration)
        .bind(&replaced.data)
        .bind(&replaced.versions)
        .bind(&replaced.start_us)
        .bind(&gone.bucket)
        .bind(&gone.event_id)
        .bind(user)
        .bind(&device)
        .bind(&gone.name)
        .bind(&gone.seq)
        .bind(&counted.0)
        .bind(&counted.1)
        .bind(&counted.2)
        .bind(plan.last_seq)
        .bind(&batch_id)
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
                          (SELECT count(*) FROM events e WHERE e.bucket = b.id)
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
        let mut tx = self.pool.begin().await?;
        // The page must come from walking the (uid, seq) index in order, whatever the
        // statistics say. Right after a bulk upload (before autovacuum has analysed the
        // table) the planner guesses that few rows follow `after`, collects all of them with
        // a bitmap scan and sorts them: 0.4–0.8 s a page of 10,000 at 1M changes (feed
        // benchmark) instead of a few ms. Only for this transaction.
        sqlx::query(
            "SELECT set_config('enable_bitmapscan', 'off', true), set_config('enable_seqscan', 'off', true)",
        )
        .execute(&mut *tx)
        .await?;
        let rows = sqlx::query(
            // Each side takes its first `limit` rows by seq from its index before anything is
            // joined or merged: a page costs its own rows, not the rest of the feed.
            r#"SELECT * FROM (
                 SELECT e.seq, b.device_id, b.bucket_id, e.event_id, e.hash, e.timestamp, e.duration, e.data, false AS deleted
                 FROM (SELECT * FROM events
                       WHERE uid = (SELECT id FROM users WHERE "user" = $1) AND seq > $2
                         AND ($3::text IS NULL OR bucket IN (SELECT id FROM buckets WHERE "user" = $1 AND device_id = $3))
                       ORDER BY seq LIMIT $4) AS e
                 JOIN buckets b ON b.id = e.bucket
               UNION ALL
                 SELECT * FROM (
                   SELECT seq, device_id, bucket_id, event_id, NULL::text, NULL::text, NULL::float8, NULL::text, true FROM tombstones
                   WHERE "user" = $1 AND seq > $2 AND ($3::text IS NULL OR device_id = $3)
                   ORDER BY seq LIMIT $4) AS t
               ) AS c ORDER BY 1 LIMIT $4"#,
        )
        .bind(user)
        .bind(after)
        .bind(device_id)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
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
        let (uid, seq) = lock_user(&mut tx, user).await?;
        let rows = sqlx::query(
            r#"DELETE FROM events e USING buckets b
               WHERE b."user" = $1 AND b.device_id = $2 AND ($3::text IS NULL OR b.bucket_id = $3)
                 AND e.bucket = b.id AND ($4::bigint IS NULL OR e.start_us >= $4)
                 AND ($5::bigint IS NULL OR e.start_us < $5)
               RETURNING b.bucket_id, e.event_id"#,
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
        set_seq(&mut tx, uid, seq + kb.len() as i64).await?;
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
    bucket: Vec<i64>,
    event_id: Vec<i64>,
    seq: Vec<i64>,
    hash: Vec<String>,
    timestamp: Vec<String>,
    duration: Vec<f64>,
    data: Vec<String>,
    versions: Vec<i64>,
    start_us: Vec<i64>,
}

impl Upserts {
    fn push(
        &mut self,
        bucket: i64,
        event_id: i64,
        seq: i64,
        e: &samay_api::UpEvent,
        start_us: i64,
        versions: i64,
    ) {
        self.bucket.push(bucket);
        self.event_id.push(event_id);
        self.seq.push(seq);
        self.hash.push(e.hash.clone());
        self.timestamp.push(e.timestamp.clone());
        self.duration.push(e.duration);
        self.data.push(e.data.get().to_string());
        self.versions.push(versions);
        self.start_us.push(start_us);
    }

    /// The insert of nine column arrays bound from `$first` on (the user's number is `$1`).
    /// `replace`: the SQL of the version count of a key whose row exists (a fixed string of
    /// ours, never input), which makes it an upsert; without it, a plain insert.
    fn sql(first: usize, replace: Option<&str>) -> String {
        let p: Vec<String> = (first..first + 9).map(|i| format!("${i}")).collect();
        let on_conflict = replace.map_or(String::new(), |versions| {
            format!(
                r#" ON CONFLICT (bucket, event_id) DO UPDATE SET hash = excluded.hash,
                 timestamp = excluded.timestamp, duration = excluded.duration, data = excluded.data,
                 versions = {versions}, seq = excluded.seq, start_us = excluded.start_us"#
            )
        });
        format!(
            r#"INSERT INTO events (bucket, event_id, uid, seq, hash, timestamp, duration, data, versions, start_us)
               SELECT t.bucket, t.event_id, $1, t.seq, t.hash, t.timestamp, t.duration, t.data, t.versions, t.start_us
               FROM UNNEST({}::bigint[], {}::bigint[], {}::bigint[], {}::text[], {}::text[], {}::float8[], {}::text[], {}::bigint[], {}::bigint[])
                 AS t(bucket, event_id, seq, hash, timestamp, duration, data, versions, start_us){on_conflict}"#,
            p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8]
        )
    }
}

/// Keys a batch deletes: the bucket's number (the row) and name (the tombstone).
#[derive(Default)]
struct Gone {
    bucket: Vec<i64>,
    name: Vec<String>,
    event_id: Vec<i64>,
    seq: Vec<i64>,
}

/// Upserts the batch's device and buckets (one statement); each bucket's number by name.
async fn bucket_ids(
    tx: &mut Transaction<'_, Postgres>,
    user: &str,
    device: &str,
    hostname: &str,
    now: &str,
    batch: &IncomingBatch,
) -> Result<HashMap<String, i64>, StoreError> {
    let mut names = Vec::with_capacity(batch.buckets.len());
    let mut types = Vec::with_capacity(batch.buckets.len());
    let mut clients = Vec::with_capacity(batch.buckets.len());
    let mut hostnames = Vec::with_capacity(batch.buckets.len());
    let mut created = Vec::with_capacity(batch.buckets.len());
    for (name, meta) in &batch.buckets {
        names.push(name.as_str());
        types.push(meta.bucket_type.as_str());
        clients.push(meta.client.as_str());
        hostnames.push(meta.hostname.as_str());
        created.push(meta.created.as_deref());
    }
    let rows = sqlx::query(
        r#"WITH device AS (
             INSERT INTO devices ("user", device_id, hostname, last_seen) VALUES ($1, $2, $3, $4)
             ON CONFLICT ("user", device_id) DO UPDATE SET hostname = excluded.hostname, last_seen = excluded.last_seen)
           INSERT INTO buckets ("user", device_id, bucket_id, type, client, hostname, created, id)
           SELECT $1, $2, t.bucket_id, t.type, t.client, t.hostname, t.created, nextval('buckets_ids')
           FROM UNNEST($5::text[], $6::text[], $7::text[], $8::text[], $9::text[]) AS t(bucket_id, type, client, hostname, created)
           ON CONFLICT ("user", device_id, bucket_id) DO UPDATE SET type = excluded.type,
             client = excluded.client, hostname = excluded.hostname,
             created = coalesce(excluded.created, buckets.created)
           RETURNING bucket_id, id"#,
    )
    .bind(user)
    .bind(device)
    .bind(hostname)
    .bind(now)
    .bind(&names)
    .bind(&types)
    .bind(&clients)
    .bind(&hostnames)
    .bind(&created)
    .fetch_all(&mut **tx)
    .await?;
    let mut ids = HashMap::with_capacity(rows.len());
    for row in rows {
        ids.insert(row.try_get(0)?, row.try_get(1)?);
    }
    Ok(ids)
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

/// Creates the user's row if needed and locks it until the transaction ends (one statement:
/// `ON CONFLICT DO UPDATE` waits for a concurrent holder and returns the row as it committed);
/// the user's number and seq. It also turns sequential scans off for the rest of the
/// transaction, in the same round trip: every statement of a write reaches its rows by an
/// index, and a statement's plan is made once per connection (prepared), possibly while a
/// table is tiny and a scan of all of it is the cheapest — a plan kept as the table grows.
async fn lock_user(
    tx: &mut Transaction<'_, Postgres>,
    user: &str,
) -> Result<(i64, i64), StoreError> {
    let row = sqlx::query(
        r#"INSERT INTO users ("user", seq, id) VALUES ($1, 0, nextval('users_ids'))
           ON CONFLICT ("user") DO UPDATE SET seq = users.seq
           RETURNING id, seq, set_config('enable_seqscan', 'off', true)"#,
    )
    .bind(user)
    .fetch_one(&mut **tx)
    .await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

async fn set_seq(tx: &mut Transaction<'_, Postgres>, uid: i64, seq: i64) -> Result<(), StoreError> {
    sqlx::query(r#"UPDATE users SET seq = $2 WHERE id = $1"#)
        .bind(uid)
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
        let extra = schema::POSTGRES_AFTER
            .iter()
            .filter(|(v, _)| v == version)
            .flat_map(|(_, s)| s.iter());
        for sql in statements.iter().chain(extra) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use samay_api::{BucketMeta, UpEvent};

    const LAPTOP: &str = "6f9619ff-8b86-d011-b42d-00cf4fc964ff";

    async fn feed(store: &PgStore, user: &str, after: i64) -> Vec<(i64, i64, bool)> {
        store
            .changes(user, after, 100, None)
            .await
            .unwrap()
            .iter()
            .map(|c| (c.seq, c.event_id, c.deleted))
            .collect()
    }

    /// A database of schema 2 (events keyed by user, device and bucket text) with a replaced
    /// version and a tombstone is migrated at start: the feed and the devices say what they
    /// said, and new users, buckets and seqs continue after the migrated ones.
    #[tokio::test]
    async fn a_database_of_text_keys_is_migrated_to_numbered_keys() {
        let url = samay_testkit::postgres::shared().database();
        {
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .connect(&url)
                .await
                .unwrap();
            sqlx::query(schema::MIGRATIONS_TABLE)
                .execute(&pool)
                .await
                .unwrap();
            for (version, statements) in schema::MIGRATIONS.iter().filter(|(v, _)| *v <= 2) {
                for sql in *statements {
                    sqlx::query(sql).execute(&pool).await.unwrap();
                }
                sqlx::query("INSERT INTO schema_migrations VALUES ($1, 'then')")
                    .bind(version)
                    .execute(&pool)
                    .await
                    .unwrap();
            }
            for sql in [
                r#"INSERT INTO users VALUES ('alice', 3), ('bob', 1)"#,
                r#"INSERT INTO devices VALUES ('alice', '6f9619ff-8b86-d011-b42d-00cf4fc964ff', 'h', 'then'), ('bob', 'd2', 'h', 'then')"#,
                r#"INSERT INTO buckets ("user", device_id, bucket_id, type, client, hostname) VALUES
                     ('alice', '6f9619ff-8b86-d011-b42d-00cf4fc964ff', 'w', 't', 'c', 'h'), ('bob', 'd2', 'w', 't', 'c', 'h')"#,
                r#"INSERT INTO events VALUES
                     ('alice', '6f9619ff-8b86-d011-b42d-00cf4fc964ff', 'w', 1, 'h1', '2024-05-01T10:00:00Z', 1.0, '{}', 1, 'b', 1, 0),
                     ('alice', '6f9619ff-8b86-d011-b42d-00cf4fc964ff', 'w', 2, 'h2', '2024-05-01T10:01:00Z', 1.0, '{}', 2, 'b', 2, 0),
                     ('bob', 'd2', 'w', 1, 'x1', '2024-05-01T10:00:00Z', 1.0, '{}', 1, 'b', 1, 0)"#,
                r#"INSERT INTO tombstones VALUES ('alice', 3, '6f9619ff-8b86-d011-b42d-00cf4fc964ff', 'w', 3)"#,
            ] {
                sqlx::query(sql).execute(&pool).await.unwrap();
            }
        }
        let store = PgStore::open(&url).await.unwrap();
        assert_eq!(
            feed(&store, "alice", 0).await,
            vec![(1, 1, false), (2, 2, false), (3, 3, true)]
        );
        assert_eq!(feed(&store, "bob", 0).await, vec![(1, 1, false)]);
        let devices = store.devices("alice").await.unwrap();
        assert_eq!(devices.len(), 1);
        assert_eq!(devices[0].buckets[0].events, 2);

        // New writes: alice's event 2 replaced and a new bucket; a new user.
        let event = |bucket: &str, id: i64, hash: &str| UpEvent {
            bucket_id: bucket.into(),
            event_id: id,
            hash: hash.into(),
            timestamp: "2024-05-01T11:00:00Z".into(),
            duration: 1.0,
            data: RawValue::from_string("{}".into()).unwrap(),
        };
        let meta = BucketMeta {
            bucket_type: "t".into(),
            client: "c".into(),
            hostname: "h".into(),
            created: None,
        };
        let batch = IncomingBatch {
            batch_id: Uuid::new_v4(),
            device_id: LAPTOP.parse().unwrap(),
            hostname: "h".into(),
            buckets: [("w".to_string(), meta.clone()), ("new".to_string(), meta)]
                .into_iter()
                .collect(),
            events: vec![event("w", 2, "h2b"), event("new", 1, "n1")],
            deletions: Vec::new(),
        };
        store.store("alice", &batch).await.unwrap();
        store.store("carol", &batch).await.unwrap();
        assert_eq!(
            feed(&store, "alice", 3).await,
            vec![(4, 2, false), (5, 1, false)]
        );
        assert_eq!(
            feed(&store, "carol", 0).await,
            vec![(1, 2, false), (2, 1, false)]
        );
        assert_eq!(feed(&store, "bob", 0).await, vec![(1, 1, false)]);
        let devices = store.devices("alice").await.unwrap();
        let counts: Vec<(String, u64)> = devices[0]
            .buckets
            .iter()
            .map(|b| (b.bucket_id.clone(), b.events))
            .collect();
        assert_eq!(counts, vec![("new".into(), 1), ("w".into(), 2)]);
    }
}
