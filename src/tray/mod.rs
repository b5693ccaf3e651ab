//! The daemon's tray icon (issue 15): a header naming who is logged in, a status line, and
//! "Log in…"/"Log out", "Sync now", "Pause syncing"/"Resume syncing", "Open log folder",
//! "Open config file". aw-qt's own tray menu is fixed, so the module brings its own icon.
//!
//! Three parts, so the platform code stays thin:
//! * [`model`]: the menu, its labels and the icon for a [`Snapshot`], for every platform;
//! * [`Feed`]: the snapshot the daemon keeps up to date (it exists whether an icon is shown or
//!   not: pausing is the daemon's, the icon only asks for it), and the clicks, handed to the
//!   daemon as [`Action`]s — the daemon runs them (the binary's `cmd/tray.rs`);
//! * the platform adapter: on Linux `sni.rs`, StatusNotifierItem with a `com.canonical.dbusmenu`
//!   menu on the session bus (the `ksni` crate); on Windows `native.rs`, the `tray-icon` crate
//!   on a thread of its own with a Win32 message loop; on macOS the same adapter on the main
//!   thread, which [`run_main`] keeps for it. `native.rs` is type-checked for both targets by
//!   `scripts/check-cross.sh` and never run here (see the README's Tray).
//!
//! Only the daemon ever shows an icon, and never at the cost of syncing: no session bus, no
//! tray host, or an adapter that fails, and the daemon syncs on without it.

pub mod model;
#[cfg(any(target_os = "macos", target_os = "windows"))]
mod native;
#[cfg(target_os = "linux")]
mod sni;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch};

use crate::config::TrayMode;
use crate::control::server::Hub;
pub use model::{Action, Activity, Failure, Login, Snapshot};

/// The snapshot the menu is drawn from, shared by the daemon (which writes it) and the icon
/// (which redraws on each change), and the clicks on their way to the daemon.
pub struct Feed {
    snapshot: watch::Sender<Snapshot>,
    /// An icon shows the snapshot (set by [`Tray::apply`]).
    shown: AtomicBool,
    actions: mpsc::UnboundedSender<Action>,
    /// The daemon's end of `actions`: taken by whichever config load runs the daemon now.
    inbox: tokio::sync::Mutex<mpsc::UnboundedReceiver<Action>>,
}

impl Feed {
    pub fn new() -> Arc<Feed> {
        let (actions, inbox) = mpsc::unbounded_channel();
        Arc::new(Feed {
            snapshot: watch::Sender::new(Snapshot::default()),
            shown: AtomicBool::new(false),
            actions,
            inbox: tokio::sync::Mutex::new(inbox),
        })
    }

    /// Changes the snapshot; the icon redraws only when something changed.
    pub fn update(&self, f: impl FnOnce(&mut Snapshot)) {
        self.snapshot.send_if_modified(|s| {
            let before = s.clone();
            f(s);
            *s != before
        });
    }

    pub fn get(&self) -> Snapshot {
        self.snapshot.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.snapshot.subscribe()
    }

    /// Whether an icon shows the snapshot: live progress, and re-reading who is logged in
    /// after each cycle that asked for a login, are only worth their cost for one.
    pub fn is_shown(&self) -> bool {
        self.shown.load(Ordering::Relaxed)
    }

    /// What a click (or a test) asks the daemon to do.
    pub fn ask(&self, action: Action) {
        let _ = self.actions.send(action);
    }

    /// The daemon's end of the clicks, for as long as the guard is held (one config load).
    pub async fn inbox(&self) -> tokio::sync::MutexGuard<'_, mpsc::UnboundedReceiver<Action>> {
        self.inbox.lock().await
    }

    /// Before a scheduled cycle: while syncing is paused, waits until it is resumed — or until
    /// a sync is asked for on `hub` (the menu's "Sync now", `--once` beside the daemon), which
    /// runs one cycle. A paused daemon is not woken by its timer (issue 5): nothing here ticks.
    pub async fn until_unpaused(&self, hub: Option<&Hub>) {
        let mut changes = self.subscribe();
        if changes.borrow().paused {
            tracing::info!(
                "syncing is paused: no sync until \"Resume syncing\" (or \"Sync now\") in the tray menu"
            );
        }
        loop {
            if !changes.borrow_and_update().paused {
                return;
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                _ = async {
                    match hub {
                        Some(h) => h.requested().await,
                        None => std::future::pending().await,
                    }
                } => return,
            }
        }
    }

    /// The daemon loop waits `delay` before the next cycle: a failure's status line says when
    /// that is ("retrying in 5 min").
    pub fn next_try_in(&self, delay: Duration) {
        self.update(|s| {
            if let Activity::Failed { retry_at, .. } = &mut s.activity {
                let now = Utc::now();
                *retry_at = chrono::Duration::from_std(delay)
                    .ok()
                    .and_then(|d| now.checked_add_signed(d))
                    .unwrap_or(DateTime::<Utc>::MAX_UTC);
            }
        });
    }
}

/// Why no icon is shown.
#[derive(Debug, thiserror::Error)]
pub enum TrayError {
    /// No session bus, or the bus failed.
    #[error("no D-Bus session bus to show a tray icon on: {0}")]
    NoSessionBus(String),
    /// The desktop shows no StatusNotifierItem icons (no `org.kde.StatusNotifierWatcher`).
    #[error(
        "the desktop has no tray host (no StatusNotifierItem watcher on the session bus): {0}"
    )]
    NoTrayHost(String),
    #[error("a tray icon is not implemented on this platform yet")]
    Unsupported,
    /// The platform's tray refused the icon or its menu (macOS, Windows: `native.rs`).
    #[error("the tray icon failed: {0}")]
    Failed(String),
    /// macOS: the icon needs the main thread's event loop, and this process's main thread
    /// was not given to it ([`run_main`] was not told this command may show an icon).
    #[error(
        "on macOS the tray icon needs the main thread, which this process did not keep for it"
    )]
    NeedsMainThread,
}

/// The icon, while shown. Dropping it removes the icon.
pub struct Shown {
    #[cfg(target_os = "linux")]
    inner: sni::Shown,
    #[cfg(any(target_os = "macos", target_os = "windows"))]
    inner: native::Shown,
}

/// Runs `work` — the program: its runtime and its command — and returns its exit code.
/// `may_show_icon` (the daemon): on macOS the icon needs the main thread's event loop, so
/// `work` runs on a thread of its own and the main thread waits, AppKit untouched until an icon
/// is shown (`native.rs`, "Threads"). Everywhere else, and for every other command, `work` runs
/// right here, as if called directly.
pub fn run_main<F>(may_show_icon: bool, work: F) -> ExitCode
where
    F: FnOnce() -> ExitCode + Send + 'static,
{
    #[cfg(target_os = "macos")]
    if may_show_icon {
        return native::run_main(work);
    }
    let _ = may_show_icon;
    work()
}

/// Shows the icon for `feed`. `Err`: why it cannot be (the daemon goes on without it).
///
/// In a graphical session (`DISPLAY` or `WAYLAND_DISPLAY` set) a missing tray host is taken as
/// one not started yet — aw-qt's autostart often runs before the panel — and the icon appears
/// when the host does; elsewhere (SSH, a server) no host now means none.
pub async fn show(feed: &Arc<Feed>, mode: TrayMode) -> Result<Shown, TrayError> {
    #[cfg(target_os = "linux")]
    {
        if !session_bus_named() {
            return Err(TrayError::NoSessionBus(
                "DBUS_SESSION_BUS_ADDRESS is not set and $XDG_RUNTIME_DIR/bus does not exist"
                    .into(),
            ));
        }
        let graphical = ["DISPLAY", "WAYLAND_DISPLAY"]
            .iter()
            .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()));
        Ok(Shown {
            inner: sni::show(feed, graphical, mode == TrayMode::On).await?,
        })
    }
    // The menu bar (macOS) and the notification area (Windows) are always there in a
    // desktop session: `"auto"` and `"on"` differ only in the log when the icon fails.
    #[cfg(any(target_os = "macos", target_os = "windows"))]
    {
        let _ = mode;
        Ok(Shown {
            inner: native::show(feed).await?,
        })
    }
    #[cfg(not(any(target_os = "linux", target_os = "windows", target_os = "macos")))]
    {
        let _ = (feed, mode);
        Err(TrayError::Unsupported)
    }
}

/// Whether this process has a session bus to talk to, by the same rule as D-Bus clients: the
/// address in the environment, else the socket in the runtime directory. Checked before any
/// D-Bus work, so a daemon on a server touches nothing of D-Bus for an icon it cannot show
/// (a failed connection attempt leaves a pool thread that wakes once to exit; issue 5).
#[cfg(target_os = "linux")]
fn session_bus_named() -> bool {
    let set = |v: &str| std::env::var_os(v).filter(|s| !s.is_empty());
    set("DBUS_SESSION_BUS_ADDRESS").is_some()
        || set("XDG_RUNTIME_DIR").is_some_and(|d| std::path::Path::new(&d).join("bus").exists())
}

/// The icon for the life of the daemon process: shown, kept across config reloads (no
/// flicker), removed when a reload turns `ui.tray` off.
pub struct Tray {
    pub feed: Arc<Feed>,
    shown: Mutex<Option<Shown>>,
    /// `--tray`: shown whatever `ui.tray` says.
    forced: bool,
}

impl Tray {
    pub fn new(forced: bool) -> Tray {
        Tray {
            feed: Feed::new(),
            shown: Mutex::new(None),
            forced,
        }
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Shown>> {
        self.shown.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Shows or removes the icon as `mode` (and `--tray`) says. Never fails: without a tray
    /// host `"auto"` says nothing (a server, SSH) and `"on"` logs why.
    pub async fn apply(&self, mode: TrayMode) {
        let mode = if self.forced { TrayMode::On } else { mode };
        if mode == TrayMode::Off {
            if self.slot().take().is_some() {
                tracing::info!("ui.tray = \"off\": tray icon removed");
            }
            self.feed.shown.store(false, Ordering::Relaxed);
            return;
        }
        if self.slot().as_ref().is_some_and(Shown::is_alive) {
            return;
        }
        match show(&self.feed, mode).await {
            Ok(shown) => {
                tracing::info!("tray icon shown");
                *self.slot() = Some(shown);
                self.feed.shown.store(true, Ordering::Relaxed);
            }
            Err(e) if mode == TrayMode::On => {
                tracing::warn!("no tray icon: {e}; syncing goes on without it")
            }
            Err(e) => tracing::debug!("no tray icon (ui.tray = \"auto\"): {e}"),
        }
    }
}

impl Shown {
    /// Whether the icon's service still runs (it stops only if its bus connection dies).
    pub fn is_alive(&self) -> bool {
        #[cfg(any(target_os = "linux", target_os = "windows", target_os = "macos"))]
        {
            self.inner.is_alive()
        }
        #[cfg(not(any(target_os = "linux", target_os = "windows", target_os = "macos")))]
        {
            false
        }
    }
}

/// The status line's name for why a cycle failed.
pub fn failure_of(e: &crate::engine::CycleError) -> Failure {
    use crate::engine::CycleError;
    use crate::upstream::UpstreamError;
    match e {
        CycleError::Upstream(UpstreamError::Network(_) | UpstreamError::Retryable { .. }) => {
            Failure::UpstreamUnreachable
        }
        CycleError::SourceDown { .. } => Failure::AwServerUnreachable,
        _ => Failure::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::server::DaemonBase;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn hub() -> Arc<Hub> {
        Hub::new(DaemonBase {
            log_file: None,
            config: String::new(),
            dev: false,
        })
    }

    /// Polls `until_unpaused` as a task and says whether it returned, after `secs` of paused
    /// time.
    async fn returned_after(feed: &Arc<Feed>, hub: &Arc<Hub>, secs: u64) -> Arc<AtomicBool> {
        let done = Arc::new(AtomicBool::new(false));
        let (f, h, d) = (Arc::clone(feed), Arc::clone(hub), Arc::clone(&done));
        tokio::spawn(async move {
            f.until_unpaused(Some(&h)).await;
            d.store(true, Ordering::SeqCst);
        });
        tokio::time::sleep(Duration::from_secs(secs)).await;
        done
    }

    #[tokio::test(start_paused = true)]
    async fn a_paused_daemon_waits_for_resume_however_long() {
        let (feed, hub) = (Feed::new(), hub());
        feed.update(|s| s.paused = true);
        let done = returned_after(&feed, &hub, 7 * 24 * 3600).await;
        assert!(!done.load(Ordering::SeqCst), "a week paused runs no cycle");
        feed.update(|s| s.paused = false);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(done.load(Ordering::SeqCst), "resuming starts the cycle");
    }

    #[tokio::test(start_paused = true)]
    async fn a_sync_request_runs_one_cycle_while_paused() {
        let (feed, hub) = (Feed::new(), hub());
        feed.update(|s| s.paused = true);
        let done = returned_after(&feed, &hub, 3600).await;
        assert!(!done.load(Ordering::SeqCst));
        hub.request_sync().expect("an active daemon takes requests");
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(
            done.load(Ordering::SeqCst),
            "Sync now runs a cycle while paused"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn not_paused_runs_at_once() {
        let (feed, hub) = (Feed::new(), hub());
        let done = returned_after(&feed, &hub, 0).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(done.load(Ordering::SeqCst));
    }

    #[test]
    fn the_retry_time_follows_the_wait_and_only_after_a_failure() {
        let feed = Feed::new();
        feed.next_try_in(Duration::from_secs(300));
        assert_eq!(feed.get().activity, Activity::Starting, "nothing failed");
        feed.update(|s| {
            s.activity = Activity::Failed {
                failure: Failure::UpstreamUnreachable,
                retry_at: Utc::now(),
            }
        });
        feed.next_try_in(Duration::from_secs(300));
        let line = model::status_line(&feed.get(), Utc::now());
        assert_eq!(line, "Upstream unreachable — retrying in 5 min");
        // An absurd wait (sync_interval = u64::MAX) does not overflow.
        feed.next_try_in(Duration::MAX);
        assert!(matches!(feed.get().activity, Activity::Failed { .. }));
    }

    /// Off macOS nothing moves for the tray: the command runs on the calling thread, daemon or
    /// not, and its exit code comes back unchanged.
    #[cfg(not(target_os = "macos"))]
    #[test]
    fn run_main_runs_the_command_right_here_off_macos() {
        for may_show_icon in [false, true] {
            let here = std::thread::current().id();
            let code = run_main(may_show_icon, move || {
                assert_eq!(std::thread::current().id(), here, "{may_show_icon}");
                ExitCode::from(3)
            });
            assert_eq!(code, ExitCode::from(3));
        }
    }

    /// Only a change reaches the icon: an idle cycle that changes nothing redraws nothing.
    #[test]
    fn an_update_that_changes_nothing_is_not_sent() {
        let feed = Feed::new();
        let rx = feed.subscribe();
        feed.update(|s| s.paused = false);
        assert!(!rx.has_changed().expect("feed alive"));
        feed.update(|s| s.paused = true);
        assert!(rx.has_changed().expect("feed alive"));
    }
}
