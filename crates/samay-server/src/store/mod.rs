//! Storage of the upstream: one schema ([`schema`]), one batch logic ([`plan`]), two
//! databases. SQLite (the default: one file, one process) and PostgreSQL (many server
//! processes on one database). Both key events by (user, device, bucket, event id), keep versions
//! by hash, store a batch all or nothing, remember batch answers for idempotent replays, and give
//! each user a strictly increasing change sequence whose commits are serialized per user.

#[cfg(feature = "postgres")]
mod pg;
mod plan;
mod schema;
mod sqlite;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use samay_api::{BatchResponse, BucketMeta, Change, Deletion, DeviceInfo, UpEvent};
use uuid::Uuid;

use crate::metrics::Metrics;

pub(crate) use sqlite::SqliteStore;
pub use sqlite::{BucketSummary, DeviceSummary, Inspect, StoredEvent};

/// How long idempotency records are kept at least: a client may retry for days.
pub const IDEMPOTENCY_RETENTION: chrono::Duration = chrono::Duration::days(7);

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
    /// Committed now; `replaced` of the accepted events replaced a stored version.
    Stored {
        answer: BatchResponse,
        replaced: u64,
    },
    /// The batch id was already stored: its original answer, nothing changed.
    Replayed(BatchResponse),
}

/// Why a store operation failed: the caller answers 503 (retry) or 500.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or is busy now; nothing was stored.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database: {0}")]
    Failed(String),
}

/// Which events a `DELETE` removes: a device, or one of its buckets, optionally only the events
/// that start in `[start_us, end_us)`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Scope {
    pub device_id: String,
    pub bucket_id: Option<String>,
    pub start_us: Option<i64>,
    pub end_us: Option<i64>,
}

/// Where the data lives: `sqlite://PATH` or `postgres://…` (`postgresql://` too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Sqlite(std::path::PathBuf),
    Postgres(String),
}

impl std::str::FromStr for DatabaseUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(
                    "sqlite:// needs a file path, e.g. sqlite:///var/lib/samay/samay.sqlite".into(),
                );
            }
            Ok(Self::Sqlite(path.into()))
        } else if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Ok(Self::Postgres(s.to_string()))
        } else {
            Err(format!(
                "unsupported database URL scheme {:?}: use sqlite://PATH or postgres://USER@HOST/DB",
                samay_common::printable::printable(s.split("://").next().unwrap_or(""))
            ))
        }
    }
}

#[derive(Clone)]
pub(crate) enum Store {
    Sqlite(Arc<SqliteStore>),
    #[cfg(feature = "postgres")]
    Postgres(pg::PgStore),
}

/// Runs `f` on the blocking pool (rusqlite is synchronous).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Failed(format!("database task: {e}")))?
}

impl Store {
    /// Opens (creating if needed) and migrates.
    pub async fn open(url: &DatabaseUrl) -> anyhow::Result<Self> {
        Ok(match url {
            DatabaseUrl::Sqlite(path) => {
                let path = path.clone();
                let store = tokio::task::spawn_blocking(move || SqliteStore::open(&path)).await??;
                Self::Sqlite(Arc::new(store))
            }
            #[cfg(feature = "postgres")]
            DatabaseUrl::Postgres(url) => Self::Postgres(pg::PgStore::open(url).await?),
            #[cfg(not(feature = "postgres"))]
            DatabaseUrl::Postgres(_) => {
                anyhow::bail!(
                    "this build of samay-server has no PostgreSQL support (feature \"postgres\")"
                )
            }
        })
    }

    pub async fn replay(
        &self,
        user: &str,
        batch_id: Uuid,
        metrics: &Metrics,
    ) -> Result<Option<BatchResponse>, StoreError> {
        let started = Instant::now();
        let result = match self {
            Self::Sqlite(s) => {
                let (s, user) = (s.clone(), user.to_string());
                blocking(move || s.replay(&user, batch_id)).await
            }
            #[cfg(feature = "postgres")]
            Self::Postgres(p) => p.replay(user, batch_id).await,
        };
        metrics.database("replay", started.elapsed());
        result
    }

    pub async fn store_batch(
        &self,
        user: &str,
        batch: Arc<IncomingBatch>,
        metrics: &Metrics,
    ) -> Result<Outcome, StoreError> {
        let started = Instant::now();
        let result = match self {
            Self::Sqlite(s) => {
                let (s, user) = (s.clone(), user.to_string());
                blocking(move || s.store(&user, &batch)).await
            }
            #[cfg(feature = "postgres")]
            Self::Postgres(p) => p.store(user, &batch).await,
        };
        metrics.database("store_batch", started.elapsed());
        result
    }

    pub async fn devices(
        &self,
        user: &str,
        metrics: &Metrics,
    ) -> Result<Vec<DeviceInfo>, StoreError> {
        let started = Instant::now();
        let result = match self {
            Self::Sqlite(s) => {
                let (s, user) = (s.clone(), user.to_string());
                blocking(move || s.devices(&user)).await
            }
            #[cfg(feature = "postgres")]
            Self::Postgres(p) => p.devices(user).await,
        };
        metrics.database("devices", started.elapsed());
        result
    }

    /// The user's changes with `seq > after`, in seq order, at most `limit`.
    pub async fn changes(
        &self,
        user: &str,
        after: i64,
        limit: i64,
        device_id: Option<String>,
        metrics: &Metrics,
    ) -> Result<Vec<Change>, StoreError> {
        let started = Instant::now();
        let result = match self {
            Self::Sqlite(s) => {
                let (s, user) = (s.clone(), user.to_string());
                blocking(move || s.changes(&user, after, limit, device_id.as_deref())).await
            }
            #[cfg(feature = "postgres")]
            Self::Postgres(p) => p.changes(user, after, limit, device_id.as_deref()).await,
        };
        metrics.database("changes", started.elapsed());
        result
    }

    /// Deletes the user's events in `scope` (each leaves a tombstone); the number deleted.
    pub async fn delete(
        &self,
        user: &str,
        scope: Scope,
        metrics: &Metrics,
    ) -> Result<u64, StoreError> {
        let started = Instant::now();
        let result = match self {
            Self::Sqlite(s) => {
                let (s, user) = (s.clone(), user.to_string());
                blocking(move || s.delete(&user, &scope)).await
            }
            #[cfg(feature = "postgres")]
            Self::Postgres(p) => p.delete(user, &scope).await,
        };
        metrics.database("delete", started.elapsed());
        result
    }

    /// Whether the database answers.
    pub async fn ping(&self, metrics: &Metrics) -> Result<(), StoreError> {
        let started = Instant::now();
        let result = match self {
            Self::Sqlite(s) => {
                let s = s.clone();
                blocking(move || s.ping()).await
            }
            #[cfg(feature = "postgres")]
            Self::Postgres(p) => p.ping().await,
        };
        metrics.database("ping", started.elapsed());
        result
    }

    /// Forgets the answers of batches received before `before` (idempotency records); how many.
    pub async fn prune_batches(
        &self,
        before: chrono::DateTime<chrono::Utc>,
    ) -> Result<u64, StoreError> {
        let cutoff = timestamp(before);
        match self {
            Self::Sqlite(s) => {
                let s = s.clone();
                blocking(move || s.prune_batches(&cutoff)).await
            }
            #[cfg(feature = "postgres")]
            Self::Postgres(p) => p.prune_batches(&cutoff).await,
        }
    }
}

/// The one text form of times the stores write (fixed width, so text order is time order).
pub(crate) fn timestamp(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The stored answer of a batch, as JSON text.
pub(crate) fn answer_json(answer: &BatchResponse) -> String {
    serde_json::to_string(answer).unwrap_or_else(|_| "{}".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_batch() -> IncomingBatch {
        IncomingBatch {
            batch_id: Uuid::new_v4(),
            device_id: Uuid::new_v4(),
            hostname: "h".into(),
            buckets: BTreeMap::new(),
            events: Vec::new(),
            deletions: Vec::new(),
        }
    }

    #[tokio::test]
    async fn idempotency_records_are_kept_a_week_then_pruned() {
        assert!(IDEMPOTENCY_RETENTION >= chrono::Duration::days(7));
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&DatabaseUrl::Sqlite(dir.path().join("s.sqlite")))
            .await
            .unwrap();
        let metrics = Metrics::default();
        let batch = Arc::new(one_batch());
        let id = batch.batch_id;
        let stored = store.store_batch("u", batch, &metrics).await.unwrap();
        assert!(matches!(stored, Outcome::Stored { .. }));
        // What the server's pruning does now: a record of today is kept.
        let now = chrono::Utc::now();
        assert_eq!(
            store
                .prune_batches(now - IDEMPOTENCY_RETENTION)
                .await
                .unwrap(),
            0
        );
        assert!(store.replay("u", id, &metrics).await.unwrap().is_some());
        // A week and a second later it goes.
        let later = now + IDEMPOTENCY_RETENTION + chrono::Duration::seconds(1);
        assert_eq!(
            store
                .prune_batches(later - IDEMPOTENCY_RETENTION)
                .await
                .unwrap(),
            1
        );
        assert!(store.replay("u", id, &metrics).await.unwrap().is_none());
    }

    #[test]
    fn database_urls_are_parsed_or_explained() {
        assert_eq!(
            "sqlite:///var/lib/samay/s.sqlite".parse::<DatabaseUrl>(),
            Ok(DatabaseUrl::Sqlite("/var/lib/samay/s.sqlite".into()))
        );
        assert!(matches!(
            "postgresql://u@h/db".parse::<DatabaseUrl>(),
            Ok(DatabaseUrl::Postgres(_))
        ));
        let err = "mysql://root:secret@h/db"
            .parse::<DatabaseUrl>()
            .unwrap_err();
        assert!(!err.contains("secret"), "no credentials in errors: {err}");
        assert!("sqlite://".parse::<DatabaseUrl>().is_err());
    }
}
