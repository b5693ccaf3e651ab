//! The engine's running counters: what the scan read, what it found new, what the upstream
//! acknowledged, per bucket. The hot path only bumps atomics; progress displays (`--once`, and
//! the daemon's answer to a "sync now", [`crate::control`]) poll them.

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
    /// Events found new or changed and queued for upload.
    pub new: AtomicU64,
    pub delivered: AtomicU64,
}

/// One bucket's counters at one moment: what progress displays show, here and over the
/// control channel ([`crate::control`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BucketCount {
    pub bucket_id: String,
    /// Events aw-server returned, copies re-read at page and window edges (and the lookback)
    /// included: more than the bucket's events, and most of them unchanged.
    pub read: u64,
    /// Events found new or changed (what is uploaded): at most the bucket's events.
    pub new: u64,
    /// Of `new`, the events the upstream acknowledged.
    pub delivered: u64,
}

impl BucketCount {
    /// `counts` minus `baseline` (bucket by bucket; a bucket missing from the baseline counts
    /// from zero): what happened since the baseline was taken.
    pub fn since(counts: &[BucketCount], baseline: &[BucketCount]) -> Vec<BucketCount> {
        counts
            .iter()
            .map(|c| {
                let base = baseline.iter().find(|b| b.bucket_id == c.bucket_id);
                let before = |f: fn(&BucketCount) -> u64| base.map_or(0, f);
                BucketCount {
                    bucket_id: c.bucket_id.clone(),
                    read: c.read.saturating_sub(before(|b| b.read)),
                    new: c.new.saturating_sub(before(|b| b.new)),
                    delivered: c.delivered.saturating_sub(before(|b| b.delivered)),
                }
            })
            .collect()
    }
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

    /// The counters of every bucket seen so far, by bucket id.
    pub fn per_bucket(&self) -> Vec<BucketCount> {
        let map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .map(|(id, c)| BucketCount {
                bucket_id: id.clone(),
                read: c.read.load(Ordering::Relaxed),
                new: c.new.load(Ordering::Relaxed),
                delivered: c.delivered.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Counts `n` events of `bucket_id` found new or changed, on their way to the upstream.
    pub(crate) fn queued(&self, bucket_id: &str, n: u64) {
        self.bucket(bucket_id).new.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts `n` events of `bucket_id` acknowledged by the upstream.
    pub(crate) fn delivered(&self, bucket_id: &str, n: u64) {
        self.events_delivered.fetch_add(n, Ordering::Relaxed);
        self.bucket(bucket_id)
            .delivered
            .fetch_add(n, Ordering::Relaxed);
    }
}
