//! The sync engine: one cycle ([`cycle`]) reads every bucket from aw-server ([`scan`]), passes
//! what changed through a bounded queue ([`queue`]) to the uploader ([`upload`]), which
//! delivers it and records the acknowledgements; [`run_daemon`] repeats cycles on a schedule
//! ([`crate::retry::cycle_delay`]) until told to stop.
//!
//! One concern per file: [`settings`] (the knobs, from `[sync]`), [`error`] (why a cycle
//! ended early), [`cycle`] (the engine and one cycle), [`daemon`] (the schedule),
//! [`destination`] (whose records), [`metrics`] (counters for the status), [`queue`] (the
//! scan→upload channel and its in-flight claims).

mod cycle;
mod daemon;
pub mod destination;
mod error;
mod metrics;
pub(crate) mod queue;
pub mod scan;
mod settings;
pub mod status_bucket;
pub mod upload;

pub use cycle::{CycleReport, Engine};
pub use daemon::{run_daemon, run_daemon_woken, Outcome};
pub use destination::Destination;
pub use error::CycleError;
pub use metrics::{BucketCount, BucketCounters, Metrics};
pub use scan::{ScanError, ScanStats, Verify};
pub use settings::{Settings, CATCHUP_PAGES};
pub use upload::{UploadError, UploadStats};

/// Prefix of aw-sync-samay's own buckets in aw-server; never uploaded.
pub const OWN_BUCKET_PREFIX: &str = "aw-sync-samay_";
