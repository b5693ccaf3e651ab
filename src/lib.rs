//! aw-sync-samay: ships ActivityWatch events from the local aw-server to an upstream.
//!
//! The data path reads top to bottom, one owner per stage:
//!
//! * [`source`] — the local aw-server's REST API (what ActivityWatch recorded),
//! * [`state`] — the SQLite state: cursors, delivered hashes (dedupe), quarantine,
//! * [`engine`] — the sync cycle that moves events from the source, through the
//!   state's dedupe, to the upstream, and the daemon loop that schedules cycles,
//! * [`upstream`] — the backend's batch API (the contract in `docs/upstream-api.md`).
//!
//! Beside it, [`auth`] owns where bearer tokens come from (the seam for the OAuth login), and
//! [`devserver`] is the embedded upstream used by `--dev` (crates/samay-server). The aw-server
//! double for tests and benchmarks is crates/samay-aw-double, never a dependency of this crate.

pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod endpoint;
pub mod engine;
pub mod exit;
pub mod hint;
pub mod http_body;
pub mod lifecycle;
pub mod lock;
pub mod logging;
pub mod memory;
pub mod once;
pub mod orphan;
pub mod paths;
pub mod priority;
pub mod privacy;
pub mod progress;
pub mod pull;
pub mod retry;
pub mod rfc3339;
pub mod source;
pub mod state;
pub mod status;
pub mod term;
pub mod tray;
pub mod upstream;

// Shared with the server (crates/samay-common), kept at their old paths.
pub use samay_common::{printable, private_fs};
/// The embedded upstream of `--dev` (crates/samay-server, without its fault switches).
pub use samay_server as devserver;

/// Cases for the property tests in `#[cfg(test)]` modules (see [`samay_common::proptest_config`]).
#[cfg(test)]
pub(crate) use samay_common::proptest_config;
