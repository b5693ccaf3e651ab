//! The engine's knobs, derived from `[sync]` once per (re)start, so a cycle never reads the
//! config itself.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::SyncConfig;
use crate::privacy::Privacy;
use crate::retry::RetryPolicy;

/// The engine's knobs, from `[sync]`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Events per request when few are expected (`sync.page_size`).
    pub page_size: usize,
    /// Events per request while catching up: larger pages mean fewer requests, each costing
    /// aw-server one seek ([`CATCHUP_PAGES`] × `page_size`).
    pub catchup_page: usize,
    pub batch_size: usize,
    pub queue_size: usize,
    /// Upload batches on the wire at once (`sync.upload_concurrency`).
    pub upload_concurrency: usize,
    pub max_retries: u32,
    pub lookback: Duration,
    pub start_from: Option<DateTime<Utc>>,
    pub interval: Duration,
    pub retry: RetryPolicy,
    pub linger: Duration,
    /// Which buckets are synced and what is redacted (`include_buckets`, `exclude_buckets`,
    /// `redact`).
    pub privacy: Privacy,
    /// Read, filter and redact as usual, hand the batches to the sink, but record nothing in
    /// the state: no acknowledgements, no position moves, no new buckets or fingerprints
    /// (`--once --dry-run`; the sink is then a [`crate::upstream::dry_run::DryRunSink`]).
    pub dry_run: bool,
    /// Events per bucket each background verification step re-reads (`sync.verify_batch`;
    /// 0: none).
    pub verify_batch: u64,
    /// Time between verification steps (`sync.verify_interval`).
    pub verify_interval: Duration,
    /// Verify the whole history in this cycle (`--verify`).
    pub verify_all: bool,
    /// The pull of the other devices' events (`sync.pull`, issue 14).
    pub pull: crate::pull::PullSettings,
}

/// Catch-up pages are this many times `sync.page_size`.
pub const CATCHUP_PAGES: usize = 5;

impl Settings {
    /// From a config that [`crate::config::load`] validated; an invalid `start_from` or
    /// pattern (only possible when the config was not validated) is logged and left out.
    pub fn from_config(sync: &SyncConfig) -> Settings {
        let start_from = sync.start_from_instant().unwrap_or_else(|e| {
            tracing::error!("{e}; ignored");
            None
        });
        let privacy = Privacy::from_config(sync).unwrap_or_else(|e| {
            tracing::error!("{e}; ignored");
            Privacy::default()
        });
        Settings {
            page_size: sync.page_size.max(1),
            catchup_page: sync.page_size.max(1).saturating_mul(CATCHUP_PAGES),
            batch_size: sync.batch_size.max(1),
            // Three batches at least: one on the wire, one filling and one queued. With less,
            // the queue kept room for a single event and the reader handed events over one at
            // a time (batch_size 1000 with the default 2000: a 1M-event catch-up took 14.3 s
            // instead of 3.7, 8.6 s of it in the kernel).
            queue_size: sync
                .offline_queue_size
                .max(sync.batch_size.max(1).saturating_mul(3)),
            upload_concurrency: sync.upload_concurrency.max(1),
            max_retries: sync.max_retries,
            lookback: Duration::from_secs(sync.lookback),
            start_from,
            interval: Duration::from_secs(sync.sync_interval.max(1)),
            retry: RetryPolicy::default(),
            linger: Duration::from_millis(100),
            privacy,
            dry_run: false,
            verify_batch: sync.verify_batch,
            verify_interval: Duration::from_secs(sync.verify_interval.max(1)),
            verify_all: false,
            pull: crate::pull::PullSettings::from_config(sync),
        }
    }
}
