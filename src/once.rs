//! `--once`: one complete sync with live progress, then the summary line, and an exit code that
//! says who has to act ([`crate::exit`]). Run here ([`local`]), or — when the daemon holds the
//! instance lock — by the daemon, asked over its control channel ([`through_daemon`]): the user
//! sees the same progress and summary either way, and two processes never sync the same
//! aw-server at once.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::control::server::Hub;
use crate::control::{client, ControlError, Reply, SyncResult};
use crate::engine::{BucketCount, CycleError, CycleReport, Engine, Outcome};
use crate::source::AwClient;
use crate::state::Store;
use crate::upstream::health::{self, HealthError};
use crate::upstream::UpstreamClient;
use crate::{exit, progress};

/// One cycle here: the upstream's health first (a wrong `base_url` must not pass for "nothing
/// to send"), then the cycle with progress on stderr, recorded in the status bucket like a
/// daemon cycle, then the summary on stdout. Returns the exit code.
pub async fn local(engine: &Engine, upstream: &UpstreamClient) -> u8 {
    if let Err(e) = preflight(engine, upstream).await {
        tracing::error!("{e}");
        return e.exit_code();
    }
    let started = Instant::now();
    let mut renderer = progress::stderr_renderer();
    let result = progress::watch(
        &mut renderer,
        || engine.metrics.per_bucket(),
        &engine.source,
        &engine.store,
        engine.run_cycle(),
    )
    .await;
    // The status bucket records every sync, not only the daemon's.
    engine.record_status(&result, started.elapsed()).await;
    report(&SyncResult::of(&result))
}

/// Before a sync someone asked for: is the upstream one? aw-server first — when it is down the
/// cycle says so, and that comes before the upstream.
async fn preflight(engine: &Engine, upstream: &UpstreamClient) -> Result<(), HealthError> {
    if engine.source.info().await.is_err() {
        return Ok(());
    }
    health::check(upstream).await
}

/// A cycle of the daemon loop that also serves the sync requests waiting on its control
/// channel (`hub`): they get the cycle's result — or, like a `--once` here, the upstream's
/// refusal when `base_url` is no upstream (a cycle with nothing to send never asks it). The
/// check costs a request only when someone asked.
/// Hands back the cycle's result with its outcome (for the tray's status line).
pub async fn daemon_cycle(
    engine: &Engine,
    upstream: &UpstreamClient,
    hub: Option<&Hub>,
) -> (Outcome, Result<CycleReport, CycleError>) {
    let Some(asked) = hub.map(Hub::begin_cycle).filter(|a| !a.is_empty()) else {
        return engine.daemon_cycle_reporting(Default::default()).await;
    };
    let wrong = preflight(engine, upstream).await.err();
    let (outcome, result) = engine.daemon_cycle_reporting(asked.asks).await;
    asked.finish(match wrong {
        Some(e) => SyncResult::failed(e.exit_code(), e.to_string()),
        None => SyncResult::of(&result),
    });
    (outcome, result)
}

/// Prints the outcome: the summary line on stdout, or the error through the log (one line on
/// stderr and the same in the log file). Returns the exit code.
fn report(result: &SyncResult) -> u8 {
    match (&result.summary, &result.error) {
        (Some(summary), _) => println!("{}", summary.line()),
        (None, Some(e)) => tracing::error!("sync failed: {e}"),
        (None, None) => tracing::error!("sync failed"),
    }
    result.exit_code
}

/// Who holds the instance lock, for refusals: "another aw-sync-samay (PID 4242)".
fn holder(pid: Option<u32>) -> String {
    match pid {
        Some(pid) => format!("another aw-sync-samay (PID {pid})"),
        None => "another aw-sync-samay".into(),
    }
}

/// What the daemon to ask must match: the `--once` asks for a sync of its config's upstream.
pub struct Expect<'a> {
    pub config: &'a Path,
    pub dev: bool,
    /// `--verify`, `--resync`: what the daemon's cycle does beyond a plain sync.
    pub asks: crate::control::Asks,
}

/// The instance lock is held by `pid`: if that is a daemon listening on `socket`, asks it to
/// sync now, shows its progress and exits with its result. Otherwise (another `--once`, a
/// daemon of an older version, Windows) says who holds the lock and what to do. Returns the
/// exit code.
pub async fn through_daemon(
    socket: &Path,
    pid: Option<u32>,
    expect: Expect<'_>,
    source: &AwClient,
    state_path: &Path,
) -> u8 {
    let who = holder(pid);
    let info = match client::status(socket).await {
        Ok(info) => info,
        Err(ControlError::NoDaemon { .. }) => {
            tracing::error!(
                "{who} is already running for this aw-server and takes no sync requests (another --once, or a daemon of an older version): wait for it to finish, or stop it"
            );
            return exit::UNREACHABLE;
        }
        Err(e) => {
            tracing::error!(
                "{who} is already running for this aw-server, and asking it to sync failed: {e}"
            );
            return exit::UNREACHABLE;
        }
    };
    let daemon = format!("the running daemon (PID {})", info.pid);
    if info.dev != expect.dev {
        let what = if info.dev {
            "syncs to its embedded --dev upstream"
        } else {
            "syncs to the configured upstream, not to a --dev one"
        };
        tracing::error!("{daemon} {what}: stop it to run this --once");
        return exit::USER_MUST_ACT;
    }
    if !same_file(Path::new(&info.config), expect.config) {
        tracing::error!(
            "{daemon} uses another config file ({}), not {}: stop it to run this --once",
            info.config,
            expect.config.display()
        );
        return exit::USER_MUST_ACT;
    }
    tracing::info!(
        "{daemon} is syncing this aw-server: asking it to sync now (its log: {})",
        info.log_file.as_deref().unwrap_or("stderr only")
    );
    let store = match Store::open(state_path) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            tracing::error!("opening the sync state: {e}");
            return exit::UNREACHABLE;
        }
    };
    let counts: Mutex<Vec<BucketCount>> = Mutex::new(Vec::new());
    let lock = |m: &Mutex<Vec<BucketCount>>| m.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut renderer = progress::stderr_renderer();
    let result = progress::watch(
        &mut renderer,
        || lock(&counts),
        source,
        &store,
        client::sync_now(socket, expect.asks, |reply| match reply {
            Reply::Accepted {
                after_running_cycle: true,
            } => tracing::info!("a sync is running; this one starts when it ends"),
            Reply::Progress { buckets, .. } => {
                *counts.lock().unwrap_or_else(|p| p.into_inner()) = buckets.clone();
            }
            _ => {}
        }),
    )
    .await;
    match result {
        Ok(result) => report(&result),
        Err(e) => {
            tracing::error!("{daemon} did not finish the sync: {e}");
            exit::UNREACHABLE
        }
    }
}

/// Whether two paths name the same file (resolved when both exist, compared as given else).
fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// The answer of an idle daemon to a sync request: why it cannot sync (`why`), as `--once`
/// would fail in its place.
pub fn not_configured(why: String) -> SyncResult {
    SyncResult::failed(exit::USER_MUST_ACT, why)
}
