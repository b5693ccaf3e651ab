//! The double's datastore, in one of two forms with the same behaviour:
//!
//! * [`Storage::Memory`] ([`MemDb`]): fast to load and to serve, for conformance and fault
//!   tests that need a big bucket without waiting for it;
//! * [`Storage::Sqlite`] ([`SqliteDb`]): aw-server-rust's schema, index and statements, for
//!   measuring what a read pattern costs the real server.

use std::path::PathBuf;

use chrono::{DateTime, Utc};

use super::sqlite::SqliteDb;
use super::store::{
    BucketInfo, DoubleError, EventRef, HeartbeatOutcome, MemDb, RawEvent, StoredEvent,
};
use crate::Event;

/// Which datastore a double runs on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Storage {
    /// In memory, O(page) for any query.
    #[default]
    Memory,
    /// SQLite like aw-server-rust, in this file (`None`: an in-memory SQLite database).
    Sqlite(Option<PathBuf>),
}

/// The datastore behind a double.
#[derive(Debug)]
pub enum Db {
    Memory(MemDb),
    Sqlite(Box<SqliteDb>),
}

impl Default for Db {
    fn default() -> Self {
        Db::Memory(MemDb::default())
    }
}

/// Forwards a call to whichever store this is.
macro_rules! both {
    ($self:expr, $db:ident => $call:expr) => {
        match $self {
            Db::Memory($db) => $call,
            Db::Sqlite($db) => $call,
        }
    };
}

impl Db {
    pub fn open(storage: &Storage) -> Result<Db, DoubleError> {
        Ok(match storage {
            Storage::Memory => Db::Memory(MemDb::default()),
            Storage::Sqlite(path) => Db::Sqlite(Box::new(SqliteDb::open(path.as_deref())?)),
        })
    }

    /// Every bucket and event gone, ids from 1 again (a reset aw-server).
    pub fn clear(&mut self) -> Result<(), DoubleError> {
        match self {
            Db::Memory(m) => {
                *m = MemDb::default();
                Ok(())
            }
            Db::Sqlite(s) => s.clear(),
        }
    }

    pub fn create_bucket(&mut self, info: BucketInfo) -> Result<(), DoubleError> {
        both!(self, db => db.create_bucket(info))
    }

    pub fn delete_bucket(&mut self, bucket: &str) -> Result<(), DoubleError> {
        both!(self, db => db.delete_bucket(bucket))
    }

    pub fn forget_heartbeats(&mut self) {
        both!(self, db => db.forget_heartbeats())
    }

    pub fn bucket_ids(&self) -> Vec<String> {
        match self {
            Db::Memory(m) => m.bucket_ids().map(str::to_owned).collect(),
            Db::Sqlite(s) => s.bucket_ids(),
        }
    }

    pub fn bucket_info(&self, bucket: &str) -> Result<BucketInfo, DoubleError> {
        match self {
            Db::Memory(m) => m.bucket_info(bucket).cloned(),
            Db::Sqlite(s) => s.bucket_info(bucket),
        }
    }

    /// `metadata.start`/`end` of the bucket listing.
    pub fn bucket_span(&self, bucket: &str) -> Result<Option<(i64, i64)>, DoubleError> {
        both!(self, db => db.bucket_span(bucket))
    }

    /// `last_updated` of the bucket listing: the in-memory double reports the end of the
    /// newest event (as Python aw-server does); the SQLite one leaves it `null`, as
    /// aw-server-rust does.
    pub fn last_updated(&self, bucket: &str) -> Result<Option<i64>, DoubleError> {
        match self {
            Db::Memory(m) => m.last_updated(bucket),
            Db::Sqlite(s) => s.bucket_info(bucket).map(|_| None),
        }
    }

    pub fn insert(
        &mut self,
        bucket: &str,
        events: impl IntoIterator<Item = (Option<i64>, RawEvent)>,
    ) -> Result<Vec<i64>, DoubleError> {
        both!(self, db => db.insert(bucket, events))
    }

    pub fn insert_raw(
        &mut self,
        bucket: &str,
        events: impl IntoIterator<Item = RawEvent>,
    ) -> Result<Vec<i64>, DoubleError> {
        self.insert(bucket, events.into_iter().map(|e| (None, e)))
    }

    /// Inserts events of several buckets in this order (a bulk load: one transaction in
    /// SQLite).
    pub fn insert_many<'b>(
        &mut self,
        events: impl IntoIterator<Item = (&'b str, RawEvent)>,
    ) -> Result<usize, DoubleError> {
        match self {
            Db::Memory(m) => {
                let mut n = 0;
                for (bucket, raw) in events {
                    m.insert_raw(bucket, std::iter::once(raw))?;
                    n += 1;
                }
                Ok(n)
            }
            Db::Sqlite(s) => Ok(s
                .insert_many(events.into_iter().map(|(b, raw)| (b, None, raw)))?
                .len()),
        }
    }

    pub fn delete_event(&mut self, bucket: &str, id: i64) -> Result<bool, DoubleError> {
        both!(self, db => db.delete_event(bucket, id))
    }

    pub fn get_event(&self, bucket: &str, id: i64) -> Result<StoredEvent, DoubleError> {
        both!(self, db => db.get_event(bucket, id))
    }

    pub fn query(
        &self,
        bucket: &str,
        start: Option<i64>,
        end: Option<i64>,
        limit: Option<u64>,
        emit: impl FnMut(EventRef<'_>),
    ) -> Result<usize, DoubleError> {
        both!(self, db => db.query(bucket, start, end, limit, emit))
    }

    pub fn query_json(
        &self,
        bucket: &str,
        start: Option<i64>,
        end: Option<i64>,
        limit: Option<u64>,
    ) -> Result<Vec<u8>, DoubleError> {
        both!(self, db => db.query_json(bucket, start, end, limit))
    }

    /// `GET .../events/count` as aw-server-rust answers it: the whole bucket, whatever range
    /// the request names (its handler passes none).
    pub fn count(&self, bucket: &str) -> Result<usize, DoubleError> {
        match self {
            Db::Memory(m) => m.count(bucket, None, None),
            Db::Sqlite(s) => s.count(bucket),
        }
    }

    pub fn sum_durations(
        &self,
        bucket: &str,
        periods: &[(i64, i64)],
    ) -> Result<Vec<f64>, DoubleError> {
        both!(self, db => db.sum_durations(bucket, periods))
    }

    pub fn events(&self, bucket: &str) -> Result<Vec<Event>, DoubleError> {
        both!(self, db => db.events(bucket))
    }

    pub fn len(&self, bucket: &str) -> Result<usize, DoubleError> {
        both!(self, db => db.len(bucket))
    }

    pub fn heartbeat(
        &mut self,
        bucket: &str,
        heartbeat: RawEvent,
        pulsetime: f64,
    ) -> Result<HeartbeatOutcome, DoubleError> {
        both!(self, db => db.heartbeat(bucket, heartbeat, pulsetime))
    }

    /// Creates a bucket now (`created` = `at`).
    pub fn create_bucket_at(
        &mut self,
        id: &str,
        bucket_type: &str,
        client: &str,
        hostname: &str,
        at: DateTime<Utc>,
    ) -> Result<(), DoubleError> {
        self.create_bucket(BucketInfo {
            id: id.to_owned(),
            bucket_type: bucket_type.to_owned(),
            client: client.to_owned(),
            hostname: hostname.to_owned(),
            created: at,
            data: Default::default(),
        })
    }
}
