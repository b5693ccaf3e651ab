//! The exit codes of `--status` and `--once`, one contract for scripts, status bars and cron
//! jobs: the code says who has to do something.
//!
//! | code | meaning | examples |
//! |---|---|---|
//! | 0 | healthy / synced | |
//! | 1 | the user must act; retrying alone will not help | login required, `sync.base_url` empty, sync disabled, quarantined events, no sync yet (to the configured upstream and account), `base_url` is not an aw-sync-samay upstream, the port is not aw-server's |
//! | 2 | something is unreachable or failing for now; it is retried by itself | aw-server or the upstream not answering, a 5xx, another `--once` running |

/// Healthy: everything answered and everything was delivered.
pub const HEALTHY: u8 = 0;
/// The user must act (log in, configure, fix the upstream's refusals).
pub const USER_MUST_ACT: u8 = 1;
/// Something did not answer, or failed for now; the daemon retries by itself.
pub const UNREACHABLE: u8 = 2;
