//! Running totals since the process started, for tests, benchmarks, progress displays and the
//! status bucket.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Running totals since the process started (cycles that failed midway included), for tests,
/// benchmarks and the status bucket.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Events aw-server returned.
    pub events_read: AtomicU64,
    /// Requests made to aw-server while scanning.
    pub source_requests: AtomicU64,
    /// Events the upstream acknowledged (duplicates included).
    pub events_delivered: AtomicU64,
    /// The same two, per bucket (one entry per bucket, looked up once per page or batch).
    buckets: Mutex<BTreeMap<String, Arc<BucketCounters>>>,
}

/// Per-bucket running totals (see [`Metrics::bucket`]).
#[derive(Debug, Default)]
pub struct BucketCounters {
    pub read: AtomicU64,
    pub delivered: AtomicU64,
}

impl Metrics {
    /// The counters of `bucket_id`, created at first use.
    pub fn bucket(&self, bucket_id: &str) -> Arc<BucketCounters> {
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(bucket_id) {
            return Arc::clone(c);
        }
        let c = Arc::new(BucketCounters::default());
        map.insert(bucket_id.to_string(), Arc::clone(&c));
        c
    }

    /// `(bucket, read, delivered)` for every bucket seen so far, by bucket id.
    pub fn per_bucket(&self) -> Vec<(String, u64, u64)> {
        let map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .map(|(id, c)| {
                (
                    id.clone(),
                    c.read.load(Ordering::Relaxed),
                    c.delivered.load(Ordering::Relaxed),
                )
            })
            .collect()
    }

    /// Counts `n` events of `bucket_id` acknowledged by the upstream.
    pub(crate) fn delivered(&self, bucket_id: &str, n: u64) {
        self.events_delivered.fetch_add(n, Ordering::Relaxed);
        self.bucket(bucket_id)
            .delivered
            .fetch_add(n, Ordering::Relaxed);
    }
}
