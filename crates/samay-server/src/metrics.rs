//! `GET /metrics`: counters in the Prometheus text format (version 0.0.4), kept in memory per
//! process (Prometheus adds up the processes). Few series, so plain atomics and small maps
//! instead of a metrics framework.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the database latency histogram's buckets.
const LATENCY_BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

#[derive(Default)]
struct Histogram {
    counts: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    batches_stored: AtomicU64,
    batches_replayed: AtomicU64,
    events_accepted: AtomicU64,
    events_duplicate: AtomicU64,
    events_replaced: AtomicU64,
    events_deleted: AtomicU64,
    auth_failures: Mutex<BTreeMap<&'static str, u64>>,
    body_bytes: Mutex<BTreeMap<&'static str, u64>>,
    database: Mutex<BTreeMap<&'static str, Histogram>>,
}

fn add<K: Ord>(map: &Mutex<BTreeMap<K, u64>>, key: K, n: u64) {
    *map.lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(key)
        .or_default() += n;
}

/// One labelled counter, each label value on its own line.
fn labelled(
    out: &mut String,
    name: &str,
    help: &str,
    label: &str,
    map: &Mutex<BTreeMap<&str, u64>>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (value, n) in map.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {n}");
    }
}

impl Metrics {
    /// One answered request of `route` (the route's pattern, never the raw path).
    pub fn request(&self, route: String, status: u16) {
        add(&self.requests, (route, status), 1);
    }

    pub fn batch_stored(&self, accepted: u64, duplicates: u64, replaced: u64, deleted: u64) {
        self.batches_stored.fetch_add(1, Ordering::Relaxed);
        self.events_accepted.fetch_add(accepted, Ordering::Relaxed);
        self.events_duplicate
            .fetch_add(duplicates, Ordering::Relaxed);
        self.events_replaced.fetch_add(replaced, Ordering::Relaxed);
        self.events_deleted.fetch_add(deleted, Ordering::Relaxed);
    }

    pub fn batch_replayed(&self) {
        self.batches_replayed.fetch_add(1, Ordering::Relaxed);
    }

    /// A batch body of `bytes` on the wire, by `Content-Encoding` (`gzip` or `identity`): what
    /// the clients' bodies cost in bandwidth.
    pub fn body_received(&self, encoding: &'static str, bytes: u64) {
        add(&self.body_bytes, encoding, bytes);
    }

    /// A refused bearer token, by a fixed reason (`missing`, `expired`, `bad_signature`…).
    pub fn auth_failure(&self, reason: &'static str) {
        add(&self.auth_failures, reason, 1);
    }

    /// How long one database operation took.
    pub fn database(&self, operation: &'static str, took: Duration) {
        let secs = took.as_secs_f64();
        let mut map = self.database.lock().unwrap_or_else(|p| p.into_inner());
        let h = map.entry(operation).or_default();
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            if secs <= *bound {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP samay_requests_total HTTP requests answered, by route and status."
        );
        let _ = writeln!(out, "# TYPE samay_requests_total counter");
        for ((route, status), n) in self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "samay_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        let counters = [
            (
                "samay_batches_stored_total",
                "Batches stored (committed).",
                &self.batches_stored,
            ),
            (
                "samay_batches_replayed_total",
                "Batches answered from the idempotency record.",
                &self.batches_replayed,
            ),
            (
                "samay_events_accepted_total",
                "Events stored as new or replacing versions.",
                &self.events_accepted,
            ),
            (
                "samay_events_duplicate_total",
                "Events absorbed as resends of the stored version.",
                &self.events_duplicate,
            ),
            (
                "samay_events_replaced_total",
                "Accepted events that replaced a stored version.",
                &self.events_replaced,
            ),
            (
                "samay_events_deleted_total",
                "Stored events removed by batch deletions.",
                &self.events_deleted,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        labelled(
            &mut out,
            "samay_auth_failures_total",
            "Refused bearer tokens, by reason.",
            "reason",
            &self.auth_failures,
        );
        labelled(
            &mut out,
            "samay_batch_body_bytes_total",
            "Batch bodies received, bytes on the wire, by Content-Encoding.",
            "encoding",
            &self.body_bytes,
        );
        let _ = writeln!(
            out,
            "# HELP samay_database_seconds Database operation latency."
        );
        let _ = writeln!(out, "# TYPE samay_database_seconds histogram");
        for (op, h) in self
            .database
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            for (bound, n) in LATENCY_BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(
                    out,
                    "samay_database_seconds_bucket{{operation=\"{op}\",le=\"{bound}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "samay_database_seconds_bucket{{operation=\"{op}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "samay_database_seconds_sum{{operation=\"{op}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "samay_database_seconds_count{{operation=\"{op}\"}} {}",
                h.count
            );
        }
        out
    }
}
