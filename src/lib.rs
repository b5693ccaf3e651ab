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
//! Beside it, [`auth`] owns where bearer tokens come from (the seam for the OAuth login),
//! [`devserver`] is the embedded upstream used by `--dev` and the tests, and [`awdouble`] an
//! in-memory aw-server (aw-server-rust's API) for tests and benchmarks.

pub mod auth;
pub mod awdouble;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod devserver;
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
pub mod printable;
pub mod privacy;
pub mod private_fs;
pub mod progress;
pub mod retry;
pub mod source;
pub mod state;
pub mod status;
pub mod term;
pub mod upstream;

/// Cases for the property tests in `#[cfg(test)]` modules: `default`, or more when
/// `PROPTEST_CASES` asks for more (long fuzzing runs; see `scripts/fuzz.sh`). Never fewer, so a
/// stray small value cannot quietly weaken CI's run.
#[cfg(test)]
pub(crate) fn proptest_config(default: u32) -> proptest::test_runner::Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .map_or(default, |asked| asked.max(default));
    proptest::test_runner::Config {
        cases,
        ..proptest::test_runner::Config::default()
    }
}
