//! `--status`: what a user (or a script, with `--json`, or a status bar, with `--short`) needs
//! to know at a glance — is aw-server there, is the upstream there and is it one, where the
//! token comes from, whether the daemon runs and where it logs, per bucket how far the sync got,
//! and what to do about whatever is wrong. It reads the state database and asks both servers
//! and the daemon; it never needs the single-instance lock, so it works while the daemon runs.
//! Tokens never appear in it.
//!
//! One [`State`] sums it up, and the exit code follows from it ([`crate::exit`]): 0 healthy,
//! 1 the user must act, 2 something is unreachable or failing for now.

mod pull;
mod render;

pub use pull::PullLine;

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::control::{self, Activity};
use crate::source::{AwClient, SourceError};
use crate::state::{BucketStatus, CycleRecord, QuarantineEntry, Store};
use crate::upstream::health::{self, HealthError};
use crate::upstream::UpstreamClient;

pub use render::ago;

/// The sync's health in one word, the most pressing problem first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Everything answers, the last sync succeeded, nothing is quarantined.
    Ok,
    /// The daemon runs its first sync.
    Syncing,
    /// No sync has run yet and no daemon runs.
    NeverSynced,
    /// `sync.base_url` is empty.
    NotConfigured,
    /// `sync.enabled = false`.
    Disabled,
    /// aw-server's port is served by another program.
    NotAwServer,
    AwServerUnreachable,
    /// `sync.base_url` answers, but not as an aw-sync-samay upstream.
    NotAnUpstream,
    UpstreamUnreachable,
    /// No usable token: log in (or set `AW_SYNC_SAMAY_TOKEN`).
    LoginRequired,
    /// The upstream refused events for good.
    Quarantined,
    /// The last sync failed; everything answers now, the daemon retries.
    LastSyncFailed,
}

impl State {
    pub fn exit_code(self) -> u8 {
        use State::*;
        match self {
            Ok | Syncing => crate::exit::HEALTHY,
            NeverSynced | NotConfigured | Disabled | NotAwServer | NotAnUpstream
            | LoginRequired | Quarantined => crate::exit::USER_MUST_ACT,
            AwServerUnreachable | UpstreamUnreachable | LastSyncFailed => crate::exit::UNREACHABLE,
        }
    }

    /// In words, for the human and the short form.
    pub fn label(self) -> &'static str {
        use State::*;
        match self {
            Ok => "ok",
            Syncing => "syncing",
            NeverSynced => "never synced",
            NotConfigured => "not configured",
            Disabled => "sync disabled",
            NotAwServer => "not aw-server",
            AwServerUnreachable => "aw-server unreachable",
            NotAnUpstream => "not an aw-sync-samay upstream",
            UpstreamUnreachable => "upstream unreachable",
            LoginRequired => "login required",
            Quarantined => "events quarantined",
            LastSyncFailed => "last sync failed",
        }
    }
}

/// One thing the user should do: what, and the command that does it (with the user's
/// connection flags, [`crate::hint`]) when there is one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Todo {
    pub message: String,
    pub command: Option<String>,
}

impl Todo {
    fn say(message: impl Into<String>) -> Todo {
        Todo {
            message: message.into(),
            command: None,
        }
    }
    fn run(message: impl Into<String>, rest: &str) -> Todo {
        Todo {
            message: message.into(),
            command: Some(crate::hint::command(rest)),
        }
    }
}

/// How a server answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    Ok,
    /// No answer (or a 5xx).
    Unreachable,
    /// Something else answers there: not aw-server, not an aw-sync-samay upstream.
    Wrong,
    /// Nothing to ask: no `sync.base_url`.
    NotConfigured,
}

#[derive(Debug, Clone, Serialize)]
pub struct Reach {
    pub url: String,
    pub reachable: bool,
    pub answer: Answer,
    pub detail: String,
}

/// Where the token comes from, as the caller found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Login {
    /// `AW_SYNC_SAMAY_TOKEN`.
    Environment,
    LoggedIn,
    /// `[auth]` is set, no tokens stored.
    LoginRequired,
    /// Neither `[auth]` nor `AW_SYNC_SAMAY_TOKEN`.
    NotConfigured,
    /// The token storage cannot be read (a locked keyring).
    Unavailable,
}

/// The token line: its text (where the token lives, who is logged in) and what it means.
#[derive(Debug, Clone)]
pub struct TokenLine {
    pub text: String,
    pub login: Login,
    /// The account the stored login names (the state's key for it), when it names one: a
    /// destination recorded for another account is not the configured one.
    pub account: Option<String>,
}

/// An upstream and the account at it, as the state knows them.
#[derive(Debug, Clone, Serialize)]
pub struct DestinationLine {
    pub base_url: String,
    /// The user name, the subject, or the token's fingerprint (saying so).
    pub account: String,
    /// It is the upstream `sync.base_url` names now, for the account logged in now. When not,
    /// the next sync goes to a destination of its own, and sends it the whole history.
    pub configured: bool,
}

/// The daemon for this aw-server, as its control channel describes it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DaemonLine {
    pub running: bool,
    pub pid: Option<u32>,
    pub activity: Option<Activity>,
    /// The running daemon's log file; when none runs, the newest daemon log.
    pub log_file: Option<String>,
    /// Why the running daemon idles, or why it could not be asked.
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub state: State,
    /// What `--status` exits with ([`crate::exit`]).
    pub exit_code: u8,
    /// What to do about what is wrong, most pressing first (empty when nothing is).
    pub todo: Vec<Todo>,
    pub daemon: DaemonLine,
    pub aw_server: Reach,
    pub upstream: Reach,
    /// Where the bearer token comes from ("environment (AW_SYNC_SAMAY_TOKEN)", ...).
    pub token: String,
    pub login: Login,
    pub config_file: String,
    pub sync_enabled: bool,
    pub state_db: String,
    pub device_id: Option<String>,
    /// The destination the bucket numbers are about: the last sync's. `None` before any.
    pub destination: Option<DestinationLine>,
    pub buckets: Vec<BucketLine>,
    pub pending: u64,
    pub quarantined: u64,
    pub last_cycle: CycleRecord,
    /// Since when scheduled syncs are paused (the tray's "Pause syncing"), RFC 3339; `None`:
    /// not paused.
    pub paused_since: Option<String>,
    /// The newest quarantined events, so a user can see what the upstream refused and why.
    pub quarantine: Vec<QuarantineEntry>,
    /// The pull of the other devices (issue 14).
    pub pull: PullLine,
    /// The `status` of the newest record in the status bucket (`"login required"`, ...): what
    /// kind of failure the last sync's error was.
    #[serde(skip)]
    pub recorded: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BucketLine {
    #[serde(flatten)]
    pub state: BucketStatus,
    /// Events in aw-server not yet acknowledged (aw-server's count minus those delivered);
    /// `None` when aw-server could not be asked.
    pub pending: Option<u64>,
}

/// What `--status` looks at.
pub struct Probe<'a> {
    pub source: &'a AwClient,
    /// `None`: `sync.base_url` is empty.
    pub upstream: Option<&'a UpstreamClient>,
    /// `sync.base_url` as configured.
    pub base_url: &'a str,
    /// Which buckets are synced at all (`include_buckets`, `exclude_buckets`).
    pub privacy: &'a crate::privacy::Privacy,
    pub token: TokenLine,
    pub state_path: &'a Path,
    pub config_path: &'a Path,
    pub sync_enabled: bool,
    /// The daemon's control socket for this aw-server.
    pub socket: Option<PathBuf>,
    /// Where daemon logs are, and which variant (`--testing`), for the newest one when no
    /// daemon runs.
    pub log_dir: Option<PathBuf>,
    pub testing: bool,
    /// This machine's name: the status bucket is `aw-sync-samay_<hostname>`.
    pub hostname: String,
    /// `sync.pull`.
    pub pull_enabled: bool,
}

/// Gathers the status. Nothing here fails the command except an unreadable state database.
pub async fn gather(p: Probe<'_>) -> anyhow::Result<Status> {
    let aw_server = match p.source.info().await {
        Ok(info) => Reach {
            url: p.source.base_url().to_string(),
            reachable: true,
            answer: Answer::Ok,
            detail: format!("aw-server {} on {}", info.version, info.hostname),
        },
        Err(e) => Reach {
            url: p.source.base_url().to_string(),
            reachable: false,
            answer: match e {
                SourceError::NotAwServer { .. } => Answer::Wrong,
                _ => Answer::Unreachable,
            },
            detail: match &e {
                SourceError::Unreachable { source, .. } => crate::source::short_cause(source),
                e => e.to_string(),
            },
        },
    };
    let upstream = match p.upstream {
        None => Reach {
            url: String::new(),
            reachable: false,
            answer: Answer::NotConfigured,
            detail: "not configured: set sync.base_url in the config file".into(),
        },
        Some(up) => {
            let url = up.health_url().to_string();
            match health::check(up).await {
                Ok(()) => Reach {
                    url,
                    reachable: true,
                    answer: Answer::Ok,
                    detail: "ok".into(),
                },
                Err(e) => Reach {
                    url,
                    reachable: false,
                    answer: match e {
                        HealthError::NotAnUpstream { .. } => Answer::Wrong,
                        HealthError::Unreachable { .. } => Answer::Unreachable,
                    },
                    detail: e.short(),
                },
            }
        }
    };
    let daemon = daemon_line(p.socket.as_deref(), p.log_dir.as_deref(), p.testing).await;
    let (states, record, device_id, quarantine, destination, pull, paused_since) =
        if p.state_path.exists() {
            let store = Store::open(p.state_path)?;
            let current = store.current_destination()?;
            let pull = PullLine::read(&store, current.as_ref().map(|(id, _)| *id), p.pull_enabled)?;
            let destination =
                current
                    .filter(|(_, key)| !key.base_url.is_empty())
                    .map(|(_, key)| DestinationLine {
                        configured: key.base_url == p.base_url.trim_end_matches('/')
                            && p.token.account.as_ref().map_or(true, |a| *a == key.account),
                        base_url: key.base_url,
                        account: key.label,
                    });
            (
                store.bucket_statuses()?,
                store.cycle_record()?,
                Some(store.device_id().to_string()),
                store.quarantine(5)?,
                destination,
                pull,
                store.paused_since()?,
            )
        } else {
            let pull = PullLine {
                enabled: p.pull_enabled,
                ..PullLine::default()
            };
            (
                Vec::new(),
                CycleRecord::default(),
                None,
                Vec::new(),
                None,
                pull,
                None,
            )
        };
    let mut buckets = Vec::with_capacity(states.len());
    for state in states {
        let pending = if aw_server.reachable {
            match p.source.event_count(&state.bucket_id).await {
                Ok(n) => Some(n.saturating_sub(state.delivered_current)),
                Err(_) => None,
            }
        } else {
            None
        };
        buckets.push(BucketLine { state, pending });
    }
    // Buckets the destination has not registered yet (never synced to it, or every cycle so far
    // failed before reaching them): all their events are pending.
    let fresh = destination.as_ref().map_or(true, |d| d.configured);
    if aw_server.reachable && fresh {
        if let Ok(listing) = p.source.get_buckets().await {
            for id in listing.keys() {
                let known = buckets.iter().any(|b| &b.state.bucket_id == id);
                if known
                    || id.starts_with(crate::engine::OWN_BUCKET_PREFIX)
                    || crate::pull::is_pulled_bucket(id)
                    || !p.privacy.includes(id)
                {
                    continue;
                }
                let pending = p.source.event_count(id).await.ok();
                buckets.push(BucketLine {
                    state: BucketStatus::unregistered(id),
                    pending,
                });
            }
        }
    }
    let recorded = if aw_server.reachable {
        last_recorded_status(p.source, &p.hostname).await
    } else {
        None
    };
    let mut status = Status {
        state: State::Ok,
        exit_code: crate::exit::HEALTHY,
        todo: Vec::new(),
        daemon,
        aw_server,
        upstream,
        token: p.token.text,
        login: p.token.login,
        config_file: p.config_path.display().to_string(),
        sync_enabled: p.sync_enabled,
        state_db: p.state_path.display().to_string(),
        device_id,
        destination,
        pending: buckets.iter().filter_map(|b| b.pending).sum(),
        quarantined: buckets.iter().map(|b| b.state.quarantined).sum(),
        buckets,
        last_cycle: record,
        paused_since,
        quarantine,
        pull,
        recorded,
    };
    let (state, mut todo) = status.assess();
    if status.paused_since.is_some() {
        // The user's own choice, not a fault: it changes neither the state nor the exit code.
        todo.push(Todo::say(
            "syncing is paused: the daemon runs no scheduled sync until you choose \"Resume syncing\" in its tray menu (\"Sync now\" still runs one; with ui.tray = \"off\", start the daemon with --tray to show the menu)",
        ));
    }
    status.state = state;
    status.exit_code = state.exit_code();
    status.todo = todo;
    Ok(status)
}

/// The `status` field of the newest event in this machine's status bucket, if any.
async fn last_recorded_status(source: &AwClient, hostname: &str) -> Option<String> {
    let id = crate::engine::status_bucket::bucket_id(hostname);
    let newest = source.get_events(&id, None, None, Some(1)).await.ok()?;
    Some(newest.first()?.data.get("status")?.as_str()?.to_string())
}

/// The running daemon, asked over its control channel; when none answers, the newest daemon
/// log (the last run's) is shown instead.
async fn daemon_line(socket: Option<&Path>, log_dir: Option<&Path>, testing: bool) -> DaemonLine {
    let asked = match socket {
        Some(s) => control::client::status(s).await,
        None => Err(control::ControlError::Unsupported),
    };
    match asked {
        Ok(info) => DaemonLine {
            running: true,
            pid: Some(info.pid),
            activity: Some(info.activity),
            log_file: info.log_file,
            detail: info.detail,
        },
        Err(e) => DaemonLine {
            running: false,
            pid: None,
            activity: None,
            log_file: log_dir
                .and_then(|d| crate::logging::newest_daemon_log(d, testing))
                .map(|p| p.display().to_string()),
            // None: no daemon runs. Otherwise whether one runs is not known.
            detail: match e {
                control::ControlError::NoDaemon { .. } => None,
                control::ControlError::Unsupported => {
                    Some("not asked: no control channel on this platform".into())
                }
                e => Some(format!("could not ask it: {e}")),
            },
        },
    }
}

impl Status {
    /// The state (the most pressing problem) and what to do about every problem.
    fn assess(&self) -> (State, Vec<Todo>) {
        let mut found: Vec<(State, Todo)> = Vec::new();
        let config = &self.config_file;
        if self.upstream.answer == Answer::NotConfigured {
            found.push((
                State::NotConfigured,
                Todo::say(format!(
                    "no upstream: set sync.base_url in {config} (or try the embedded one: {})",
                    crate::hint::command("--dev --once")
                )),
            ));
        }
        if !self.sync_enabled {
            found.push((
                State::Disabled,
                Todo::say(format!(
                    "sync is disabled: set sync.enabled = true in {config}"
                )),
            ));
        }
        match self.aw_server.answer {
            Answer::Unreachable => found.push((
                State::AwServerUnreachable,
                Todo::say(format!(
                    "aw-server is not answering at {} ({}): start ActivityWatch (aw-qt or aw-server), or pass --port or --testing if it listens elsewhere",
                    self.aw_server.url, self.aw_server.detail
                )),
            )),
            Answer::Wrong => found.push((State::NotAwServer, Todo::say(self.aw_server.detail.clone()))),
            Answer::Ok | Answer::NotConfigured => {}
        }
        match self.upstream.answer {
            Answer::Unreachable => found.push((
                State::UpstreamUnreachable,
                Todo::say(format!(
                    "the upstream is not answering at {}: check the network, and sync.base_url in {config}",
                    self.upstream.url
                )),
            )),
            Answer::Wrong => found.push((
                State::NotAnUpstream,
                Todo::say(format!(
                    "sync.base_url in {config} is wrong: {} is {}; set it to the URL under which v1/health and v1/events/batch live",
                    self.upstream.url, self.upstream.detail
                )),
            )),
            Answer::Ok | Answer::NotConfigured => {}
        }
        match self.login {
            Login::LoginRequired => {
                found.push((State::LoginRequired, Todo::run("log in to the upstream", "--login")))
            }
            Login::NotConfigured => found.push((
                State::LoginRequired,
                Todo::run(
                    format!("set auth.client_id and auth.issuer in {config} (or set AW_SYNC_SAMAY_TOKEN), then log in"),
                    "--login",
                ),
            )),
            Login::Unavailable => found.push((
                State::LoginRequired,
                Todo::run(
                    "unlock the keyring (or set auth.token_storage = \"file\"), then log in if asked",
                    "--login",
                ),
            )),
            Login::Environment | Login::LoggedIn => {}
        }
        if self.quarantined > 0 {
            found.push((
                State::Quarantined,
                Todo::say(format!(
                    "{} event(s) were refused by the upstream and quarantined: see below, and the log; fix the cause upstream",
                    self.quarantined
                )),
            ));
        }
        // Only when nothing above explains it (a failed sync while logged out is the login).
        if found.is_empty() {
            let refused = self.recorded.as_deref() == Some("login required");
            if self.last_cycle.last_error.is_some() && refused {
                // A token the upstream refused (AW_SYNC_SAMAY_TOKEN, or a session it ended).
                found.push((
                    State::LoginRequired,
                    Todo::run(
                        "the upstream refused the token (see last error): replace AW_SYNC_SAMAY_TOKEN, or log in again",
                        "--login",
                    ),
                ));
            } else if self.last_cycle.last_error.is_some() {
                found.push((
                    State::LastSyncFailed,
                    Todo::run(
                        "the last sync failed (see last error); the daemon retries by itself, or sync now",
                        "--once",
                    ),
                ));
            } else if let Some(d) = self.destination.as_ref().filter(|d| !d.configured) {
                // The numbers are about another destination: the configured one has had
                // nothing yet, which "ok" would hide (issue 10).
                let what = format!(
                    "nothing has been sent yet to the configured upstream for the account logged in now (the numbers are about {} at {})",
                    d.account, d.base_url
                );
                if self.daemon.running {
                    found.push((State::Syncing, Todo::say(what)));
                } else {
                    found.push((
                        State::NeverSynced,
                        Todo::run(format!("{what}: sync once"), "--once"),
                    ));
                }
            } else if self.last_cycle.last_success.is_none() && self.daemon.running {
                found.push((
                    State::Syncing,
                    Todo::say("the daemon is running its first sync"),
                ));
            } else if self.last_cycle.last_success.is_none() {
                found.push((
                    State::NeverSynced,
                    Todo::run(
                        "no sync has run yet: start the daemon (or enable the module in aw-qt), or sync once",
                        "--once",
                    ),
                ));
            }
        }
        let state = found.first().map_or(State::Ok, |(s, _)| *s);
        // "Syncing" is no problem: nothing to do.
        let mut todo: Vec<Todo> = found
            .into_iter()
            .filter(|(s, _)| *s != State::Syncing)
            .map(|(_, t)| t)
            .collect();
        // A suggestion, not a problem: the state stays what it is.
        todo.extend(self.pull.suggestion(config).map(Todo::say));
        (state, todo)
    }

    /// The human form (see [`render`]).
    pub fn render(&self) -> String {
        self.render_at(chrono::Utc::now())
    }

    /// One line for status bars and prompts, e.g. `synced 3 min ago · 0 pending`.
    pub fn short(&self) -> String {
        self.short_at(chrono::Utc::now())
    }
}
