//! When the daemon stops, and when it starts over with a new config — what aw-qt needs of a
//! module it starts, watches and stops:
//!
//! * **stop** on SIGTERM (aw-qt's `terminate()`), SIGINT, or when orphaned ([`crate::orphan`]);
//!   exit 0 then, since aw-qt counts any exit it did not ask for as a crash, and the exit it did
//!   ask for must be quick (it waits without a bound);
//! * **reload** when the config file changes: aw-qt starts modules with nothing but `--testing`,
//!   so a user who sets `sync.base_url` or `sync.enabled` afterwards should not have to find out
//!   how to restart a module. The file's modification time and size are polled every
//!   [`CONFIG_POLL`] (a `stat`, nothing more); a change ends the current run — cycles are safe
//!   to cancel, as with SIGTERM — and `main` loads the config again and starts over.
//!
//! The signal handlers are installed lazily, on the first wait for a stop, so the one-shot
//! commands (`--once`, `--login`, ...) keep the default Ctrl-C behaviour.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::orphan;

/// How often the config file is `stat`ed for changes.
pub const CONFIG_POLL: Duration = Duration::from_secs(1);

/// What identifies a version of the config file: modification time and size (`None`: no file).
type Stamp = Option<(Option<SystemTime>, u64)>;

fn stamp(path: &Path) -> Stamp {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.modified().ok(), m.len()))
}

/// The config file being watched, and the version last loaded.
#[derive(Debug, Clone)]
struct Watched {
    path: PathBuf,
    loaded: Stamp,
}

/// The daemon's stop and reload state, shared by every run of `main`'s reload loop.
pub struct Lifecycle {
    stop: watch::Receiver<bool>,
    /// Taken by the first [`Lifecycle::stopped`], which starts the listener task with it.
    stop_tx: Mutex<Option<watch::Sender<bool>>>,
    config: Mutex<Option<Watched>>,
    reload_pending: AtomicBool,
    reloads: AtomicU32,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}

impl Lifecycle {
    pub fn new() -> Lifecycle {
        let (tx, rx) = watch::channel(false);
        Lifecycle {
            stop: rx,
            stop_tx: Mutex::new(Some(tx)),
            config: Mutex::new(None),
            reload_pending: AtomicBool::new(false),
            reloads: AtomicU32::new(0),
        }
    }

    /// Installs the SIGTERM/SIGINT handlers and the orphan watch, once. Needs a runtime.
    fn listen(&self) {
        let Some(tx) = self
            .stop_tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return;
        };
        // Created here, synchronously, so a signal arriving right after is not lost.
        #[cfg(unix)]
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::spawn(async move {
            #[cfg(unix)]
            let term_recv = async {
                match term.as_mut() {
                    Some(t) => {
                        t.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            #[cfg(not(unix))]
            let term_recv = std::future::pending::<()>();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => tracing::info!("stop requested (SIGINT)"),
                _ = term_recv => tracing::info!("stop requested (SIGTERM)"),
                o = orphan::orphaned() => tracing::info!("{o}: stopping, as ActivityWatch watchers do"),
            }
            let _ = tx.send(true);
        });
    }

    /// Resolves when the process should stop. The first call installs the handlers.
    pub async fn stopped(&self) {
        self.listen();
        let mut rx = self.stop.clone();
        // Err: the listener is gone, which it only is after sending `true`.
        let _ = rx.wait_for(|stop| *stop).await;
    }

    /// Whether a stop was requested.
    pub fn is_stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Remembers `path` as the config file to watch, in its current version. Call it *before*
    /// reading the file, so a change made while it is read is seen as a change; again after
    /// the file was created with the defaults, so that is not.
    pub fn watch_config(&self, path: &Path) {
        *self.config.lock().unwrap_or_else(|p| p.into_inner()) = Some(Watched {
            path: path.to_path_buf(),
            loaded: stamp(path),
        });
    }

    /// Resolves when the watched config file differs from the version loaded; never when none
    /// is watched.
    async fn config_changed(&self) {
        let watched = self
            .config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(w) = watched else {
            return std::future::pending().await;
        };
        let mut tick = tokio::time::interval(CONFIG_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if stamp(&w.path) != w.loaded {
                tracing::info!(config = %w.path.display(), "the config file changed: reloading it");
                return;
            }
        }
    }

    /// The daemon's shutdown future: a stop, or (with `reload_on_config_change`) a change of the
    /// config file, after which [`Lifecycle::take_reload`] says so.
    pub async fn shutdown(&self, reload_on_config_change: bool) {
        if !reload_on_config_change {
            return self.stopped().await;
        }
        tokio::select! {
            _ = self.stopped() => {},
            _ = self.config_changed() => self.reload_pending.store(true, Ordering::SeqCst),
        }
    }

    /// True (once) when the last shutdown was a config change rather than a stop: `main` then
    /// starts over.
    pub fn take_reload(&self) -> bool {
        if self.is_stopping() {
            return false;
        }
        let pending = self.reload_pending.swap(false, Ordering::SeqCst);
        if pending {
            self.reloads.fetch_add(1, Ordering::SeqCst);
        }
        pending
    }

    /// Whether this run is a reload (not the process's first run): things done once per process,
    /// such as `auth.login_on_start`, are skipped, and a fatal error idles instead of exiting.
    pub fn reloaded(&self) -> bool {
        self.reloads.load(Ordering::SeqCst) > 0
    }

    /// After a reload failed (a half-saved or bad config): waits for the next change of the file
    /// (true) or a stop (false), so the daemon neither exits (aw-qt would count a crash) nor runs
    /// with a config the user is still editing.
    pub async fn wait_for_config_fix(&self) -> bool {
        self.shutdown(true).await;
        self.take_reload()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_config_change_ends_the_run_and_asks_for_a_reload() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[sync]\n").expect("write");
        let life = Lifecycle::new();
        life.watch_config(&path);
        // Unchanged: the shutdown future stays pending.
        let quiet = tokio::time::timeout(
            CONFIG_POLL * 2 + Duration::from_millis(200),
            life.shutdown(true),
        )
        .await;
        assert!(quiet.is_err(), "no change, no reload");
        assert!(!life.take_reload());

        std::fs::write(&path, "[sync]\nbase_url = \"http://127.0.0.1:1\"\n").expect("write");
        tokio::time::timeout(CONFIG_POLL * 5, life.shutdown(true))
            .await
            .expect("a change ends the run within a few polls");
        assert!(life.take_reload());
        assert!(!life.take_reload(), "a reload is taken once");
        assert!(life.reloaded());
    }
}
