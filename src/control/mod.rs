//! The running daemon's local control channel: `--once` beside the daemon asks it to sync now
//! (instead of being refused by the instance lock), and `--status` asks it where it logs and
//! what it is doing. Small and typed so a tray icon's "Sync now" and status line can use the
//! same requests.
//!
//! **Transport.** A Unix domain socket, `<cache>/activitywatch/aw-sync-samay/run/<host>-<port>.sock`
//! (one per aw-server, like the instance lock), mode 0600 in a directory of mode 0700 owned by
//! the user, and each side checks the other's user id (`SO_PEERCRED`): only the user who runs
//! the daemon can ask anything of it. Only the process holding the instance lock listens, so a
//! socket file left by a crash is stale by definition and is replaced. Windows would use a named
//! pipe; that is not implemented: there `--once` beside the daemon is refused with a message
//! saying so, as before.
//!
//! **Protocol.** One request per connection: the client writes one JSON line ([`Request`]), the
//! daemon answers with JSON lines ([`Reply`]) and closes. `status` gets one `status` reply.
//! `sync_now` gets `accepted`, then `started` when the cycle that serves it starts (right away,
//! or after the cycle already running: a cycle that started earlier may have read a bucket
//! before the newest events), `progress` lines while it runs, and `finished` with the result
//! and the exit code `--once` would have had. Several requesters may share one cycle. A request
//! the daemon cannot serve (nothing configured, stopping) is answered `finished` with the reason.

pub mod client;
pub mod server;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::engine::BucketCount;

/// The longest line either side accepts: a progress line lists every bucket.
pub const MAX_LINE: usize = 1024 * 1024;

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    /// Who is running, where it logs, what it is doing: one [`Reply::Status`].
    Status,
    /// Sync now: start a cycle at once (or right after the running one) and stream it; with
    /// `verify`, that cycle also re-reads and re-hashes the whole history (`--once --verify`).
    SyncNow {
        /// Left out of the line when false, so a plain sync now reads the same as before.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        verify: bool,
        /// `--resync`: the cycle first forgets what the destination acknowledged, and sends
        /// everything again.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        resync: bool,
    },
}

/// What a sync-now request asks of its cycle beyond a plain sync.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Asks {
    /// Re-read and re-hash the whole history (`--verify`).
    pub verify: bool,
    /// Forget the destination's acknowledgements first (`--resync`).
    pub resync: bool,
}

impl Asks {
    /// Both, when either of two requests served by one cycle asked.
    pub fn merge(self, other: Asks) -> Asks {
        Asks {
            verify: self.verify || other.verify,
            resync: self.resync || other.resync,
        }
    }
}

/// What the daemon answers, one JSON object a line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Status(DaemonInfo),
    /// The sync request was taken. `after_running_cycle`: a cycle is running; the one that
    /// serves this request starts when it ends.
    Accepted {
        after_running_cycle: bool,
    },
    /// The cycle serving the request started.
    Started,
    /// The counts of the serving cycle so far (since it started).
    Progress {
        elapsed_ms: u64,
        buckets: Vec<BucketCount>,
    },
    /// The serving cycle ended, or the request could not be served.
    Finished(SyncResult),
    /// The request was not understood (a newer client, or not a request at all).
    Error {
        message: String,
    },
}

/// The daemon, as `--status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonInfo {
    pub pid: u32,
    pub version: String,
    /// The file it logs to (`None`: stderr only).
    pub log_file: Option<String>,
    /// Its config file.
    pub config: String,
    /// Started with `--dev`: it syncs to its embedded upstream, not the configured one.
    pub dev: bool,
    pub activity: Activity,
    /// Why it idles (for `not_configured` and `config_error`).
    pub detail: Option<String>,
}

/// What the daemon is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activity {
    /// A cycle is running.
    Syncing,
    /// Between cycles.
    Waiting,
    /// Nothing to do: no `sync.base_url`, or `sync.enabled = false` (see `detail`).
    NotConfigured,
    /// The config file it was told to reload is broken; it waits for the next edit.
    ConfigError,
}

/// How a requested sync ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncResult {
    /// What `--once` exits with ([`crate::exit`]).
    pub exit_code: u8,
    /// The counts, when the cycle succeeded.
    pub summary: Option<CycleSummary>,
    /// Why it failed, or why it could not run.
    pub error: Option<String>,
}

impl SyncResult {
    /// A cycle that ran to its end: healthy, unless the upstream refused some of its events
    /// for good — they wait in the quarantine for the user, so the upstream does not hold
    /// everything (exit 1, as `--status` says for a quarantine).
    pub fn synced(summary: CycleSummary) -> SyncResult {
        SyncResult {
            exit_code: if summary.quarantined > 0 {
                crate::exit::USER_MUST_ACT
            } else {
                crate::exit::HEALTHY
            },
            summary: Some(summary),
            error: None,
        }
    }

    pub fn failed(exit_code: u8, error: impl Into<String>) -> SyncResult {
        SyncResult {
            exit_code,
            summary: None,
            error: Some(error.into()),
        }
    }

    /// The result of a cycle, as `--once` would report it.
    pub fn of(
        result: &Result<crate::engine::CycleReport, crate::engine::CycleError>,
    ) -> SyncResult {
        match result {
            Ok(r) => Self::synced(CycleSummary::from_report(r)),
            Err(e) => Self::failed(e.exit_code(), e.to_string()),
        }
    }

    /// The daemon stopped (or restarted for a new config) before the requested cycle ended.
    pub fn interrupted() -> SyncResult {
        Self::failed(
            crate::exit::UNREACHABLE,
            "the daemon stopped before the sync finished (nothing is lost: the next sync resumes where it stopped)",
        )
    }
}

/// The numbers of one successful cycle, in the words of the summary line: what was read, what
/// of it was new or changed, and what became of that. They add up: `new = delivered +
/// quarantined` and `read = new + unchanged`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CycleSummary {
    /// Events aw-server returned, copies re-read at page and window edges and in the lookback
    /// included.
    pub read: u64,
    /// Events found new or changed: what was uploaded.
    pub new: u64,
    /// Of `new`, acknowledged by the upstream.
    pub delivered: u64,
    /// Of `delivered`, the ones the upstream already held (a re-send after a lost answer).
    pub already_held: u64,
    /// Of `new`, refused by the upstream for good (see `--status`).
    pub quarantined: u64,
    /// Deletions in aw-server the upstream was told of.
    #[serde(default)]
    pub deleted: u64,
    /// Events the verification re-read and re-hashed (`--verify`, or a background step).
    #[serde(default)]
    pub verified: u64,
    /// Of `new` and `deleted`, what the verification found different.
    #[serde(default)]
    pub verify_differed: u64,
    /// With `sync.pull`: other devices' events (copied, replaced, deleted) in this aw-server;
    /// u32 (saturating) keeps the summary, which travels in every reply, small.
    #[serde(default)]
    pub pulled: Option<[u32; 3]>,
    pub elapsed_ms: u64,
}

impl CycleSummary {
    pub fn from_report(r: &crate::engine::CycleReport) -> CycleSummary {
        CycleSummary {
            read: r.read(),
            new: r.queued(),
            delivered: r.upload.delivered,
            already_held: r.upload.duplicates,
            quarantined: r.upload.quarantined,
            deleted: r.upload.deleted,
            verified: r.verified(),
            verify_differed: r.buckets.values().map(|s| s.verify_differed).sum(),
            pulled: r.pull.as_ref().map(|p| {
                [p.inserted, p.replaced, p.deleted].map(|n| u32::try_from(n).unwrap_or(u32::MAX))
            }),
            elapsed_ms: u64::try_from(r.elapsed.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// Read again and found unchanged (or read twice at an edge): `read - new`.
    pub fn unchanged(&self) -> u64 {
        self.read.saturating_sub(self.new)
    }

    /// The summary line `--once` prints.
    pub fn line(&self) -> String {
        let mut line = format!(
            "synced: {} new or changed events, {} delivered ({} of them already held upstream), {} quarantined",
            self.new, self.delivered, self.already_held, self.quarantined,
        );
        if self.deleted > 0 {
            line.push_str(&format!(", {} deletions", self.deleted));
        }
        line.push_str(&format!(
            "; {} read from aw-server ({} re-read unchanged)",
            self.read,
            self.unchanged()
        ));
        if self.verified > 0 {
            line.push_str(&format!(
                "; verified {} events, {} differed from what the upstream held and were sent",
                self.verified, self.verify_differed
            ));
        }
        if let Some([copied, replaced, deleted]) = self.pulled {
            line.push_str(&format!(
                "; pulled from other devices: {copied} copied, {replaced} replaced, {deleted} deleted"
            ));
        }
        line.push_str(&format!(", in {:.1} s", self.elapsed_ms as f64 / 1000.0));
        line
    }
}

/// The daemon's socket for the aw-server at `host:port`, in [`socket_dir`]. The name is short
/// on purpose: a Unix socket path has at most 104–108 bytes.
pub fn socket_path(host: &str, port: u16) -> Result<PathBuf, crate::paths::PathsError> {
    Ok(socket_dir()?.join(socket_name(host, port)))
}

/// `<cache>/activitywatch/aw-sync-samay/run/`.
pub fn socket_dir() -> Result<PathBuf, crate::paths::PathsError> {
    Ok(crate::paths::cache_dir()?.join("run"))
}

fn socket_name(host: &str, port: u16) -> String {
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{host}-{port}.sock")
}

/// Why the channel could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No daemon listens (no socket file, or a stale one).
    #[error("no daemon answers on {}", path.display())]
    NoDaemon { path: PathBuf },
    /// The socket, its directory or its peer is not this user's.
    #[error("refusing the control socket {}: {why}", path.display())]
    Unsafe { path: PathBuf, why: String },
    #[error("the control channel {} failed: {why}", path.display())]
    Io { path: PathBuf, why: String },
    /// The other side said something this side does not understand.
    #[error("the daemon answered something unexpected: {0}")]
    Protocol(String),
    #[error("sync now through the running daemon needs a Unix socket; a Windows named pipe is not implemented")]
    Unsupported,
}

impl ControlError {
    fn io(path: &Path, e: impl std::fmt::Display) -> ControlError {
        ControlError::Io {
            path: path.to_owned(),
            why: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_protocol_is_one_tagged_json_object_a_line() {
        let plain = Request::SyncNow {
            verify: false,
            resync: false,
        };
        let r = serde_json::to_string(&plain).expect("json");
        assert_eq!(r, r#"{"request":"sync_now"}"#);
        let asked = Request::SyncNow {
            verify: true,
            resync: true,
        };
        let r = serde_json::to_string(&asked).expect("json");
        assert_eq!(r, r#"{"request":"sync_now","verify":true,"resync":true}"#);
        assert_eq!(serde_json::from_str::<Request>(&r).expect("parses"), asked);
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"request":"status"}"#).expect("parses"),
            Request::Status
        );
        assert!(serde_json::from_str::<Request>(r#"{"request":"format_disk"}"#).is_err());
        let reply = Reply::Accepted {
            after_running_cycle: true,
        };
        let text = serde_json::to_string(&reply).expect("json");
        assert_eq!(text, r#"{"reply":"accepted","after_running_cycle":true}"#);
        assert_eq!(serde_json::from_str::<Reply>(&text).expect("parses"), reply);
    }

    #[test]
    fn the_summary_adds_up_and_says_what_each_number_counts() {
        let s = CycleSummary {
            read: 4606,
            new: 4601,
            delivered: 4601,
            already_held: 0,
            quarantined: 0,
            deleted: 0,
            verified: 0,
            verify_differed: 0,
            pulled: None,
            elapsed_ms: 1234,
        };
        assert_eq!(s.unchanged(), 5);
        assert_eq!(
            s.line(),
            "synced: 4601 new or changed events, 4601 delivered (0 of them already held upstream), 0 quarantined; 4606 read from aw-server (5 re-read unchanged), in 1.2 s"
        );
        let pulled = CycleSummary {
            pulled: Some([7, 2, 1]),
            ..s
        };
        assert!(pulled
            .line()
            .ends_with("; pulled from other devices: 7 copied, 2 replaced, 1 deleted, in 1.2 s"));
    }

    #[test]
    fn socket_names_are_short_and_safe() {
        assert_eq!(socket_name("127.0.0.1", 5600), "127.0.0.1-5600.sock");
        assert_eq!(socket_name("::1", 5666), "__1-5666.sock");
        assert_eq!(socket_name("../x", 1), ".._x-1.sock");
    }
}
