//! `--once --dry-run`: a [`BatchSink`] that keeps what it is given instead of sending it.
//!
//! The engine runs its ordinary cycle — read, filter, redact, hash, dedupe against the state,
//! batch — with this sink in place of the upstream and `Settings::dry_run` set, so the uploader
//! records nothing and the scanner registers nothing. What the report shows is therefore exactly
//! what a real run would send now, redacted as it would be, and a real run afterwards still
//! sends all of it. No upstream, token or network is involved.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use crate::auth::{AccessToken, BoxFuture};
use crate::engine::CycleReport;
use crate::printable::printable;
use crate::upstream::batch::Batch;
use crate::upstream::contract::BatchResponse;
use crate::upstream::{BatchSink, UpstreamError};

/// Sample events kept per bucket.
pub const SAMPLES: usize = 3;

/// What a real run would send of one bucket.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct DryRunBucket {
    pub events: u64,
    /// The first events, as the upstream would receive them (JSON of `UpEvent`).
    pub samples: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct DryRunReport {
    pub batches: u64,
    pub buckets: BTreeMap<String, DryRunBucket>,
}

#[derive(Default)]
pub struct DryRunSink {
    report: Mutex<DryRunReport>,
}

impl DryRunSink {
    pub fn report(&self) -> DryRunReport {
        self.report
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl BatchSink for DryRunSink {
    fn send_batch<'a>(
        &'a self,
        _token: &'a AccessToken,
        batch: &'a Batch,
    ) -> BoxFuture<'a, Result<BatchResponse, UpstreamError>> {
        Box::pin(async move {
            let mut report = self.report.lock().unwrap_or_else(|p| p.into_inner());
            report.batches += 1;
            for e in &batch.events {
                let b = report.buckets.entry(e.bucket_id.to_string()).or_default();
                b.events += 1;
                if b.samples.len() < SAMPLES {
                    if let Ok(v) = serde_json::to_value(e.to_up_event()) {
                        b.samples.push(v);
                    }
                }
            }
            Ok(BatchResponse {
                accepted: batch.events.len() as u64,
                duplicates: 0,
                deleted: 0,
            })
        })
    }
}

impl DryRunReport {
    /// The text `--once --dry-run` prints: per bucket the count and samples, then the buckets
    /// left out by the filters. Bucket ids are aw-server's text: printable.
    pub fn render(&self, cycle: &CycleReport) -> String {
        let mut out = String::new();
        let total: u64 = self.buckets.values().map(|b| b.events).sum();
        let _ = writeln!(
            out,
            "dry run: nothing was sent and nothing recorded; a sync now would send {total} events in {} batches",
            self.batches
        );
        for id in cycle.buckets.keys() {
            let b = self.buckets.get(id).cloned().unwrap_or_default();
            let rescan = if cycle.rescanned.contains(id) {
                " (filters changed: read again from the start)"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "\n{}: {} events to send{rescan}",
                printable(id),
                b.events
            );
            for s in &b.samples {
                let _ = writeln!(out, "  {s}");
            }
        }
        for id in &cycle.excluded {
            let _ = writeln!(
                out,
                "\n{}: excluded (sync.include_buckets / sync.exclude_buckets)",
                printable(id)
            );
        }
        out
    }
}
