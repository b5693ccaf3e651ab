//! When the daemon stops, and when it starts over with a new config — what aw-qt needs of a
//! module it starts, watches and stops:
//!
//! * **stop** on SIGTERM (aw-qt's `terminate()`), SIGINT, or when orphaned ([`crate::orphan`]);
//!   exit 0 then, since aw-qt counts any exit it did not ask for as a crash, and the exit it did
//!   ask for must be quick (it waits without a bound);
//! * **reload** when the config file changes: aw-qt starts modules with nothing but `--testing`,
//!   so a user who sets `sync.base_url` or `sync.enabled` afterwards should not have to find out
//!   how to restart a module. A change of the file's modification time or size ends the current
//!   run — cycles are safe to cancel, as with SIGTERM — and `main` loads the config again and
//!   starts over. On Linux the kernel says when to look (inotify, see [`ConfigWatch`]), so an
//!   idle daemon does not wake up to check (issue 5); elsewhere, or when inotify cannot be set
//!   up, the file is `stat`ed every [`CONFIG_POLL`].
//!
//! The signal handlers are installed lazily, on the first wait for a stop, so the one-shot
//! commands (`--once`, `--login`, ...) keep the default Ctrl-C behaviour; the daemon installs
//! them as it starts ([`Lifecycle::listen`]).

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

    /// Installs the SIGTERM/SIGINT handlers and the orphan watch, once. Needs a runtime. The
    /// daemon calls it as it starts, so a stop that comes before its first wait (aw-qt stopping
    /// a module it just started, or a daemon with nothing to do stopped right after it said
    /// so) is still a clean stop rather than death by the signal's default action.
    pub fn listen(&self) {
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
    /// is watched. Waits for inotify events where it can, else polls every [`CONFIG_POLL`].
    async fn config_changed(&self) {
        let watched = self
            .config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(w) = watched else {
            return std::future::pending().await;
        };
        let changed = || {
            let changed = stamp(&w.path) != w.loaded;
            if changed {
                tracing::info!(config = %w.path.display(), "the config file changed: reloading it");
            }
            changed
        };
        #[cfg(target_os = "linux")]
        match ConfigWatch::new(&w.path) {
            Ok(mut watch) => loop {
                // Checked once the watch is in place: a change made since `watch_config` is
                // seen here, any later one as an event.
                if changed() {
                    return;
                }
                if let Err(e) = watch.next_event().await {
                    tracing::info!(config = %w.path.display(), "cannot watch the config file any more ({e}); checking it every second");
                    break;
                }
            },
            Err(e) => {
                tracing::info!(config = %w.path.display(), "cannot watch the config file ({e}); checking it every second")
            }
        }
        let mut tick = tokio::time::interval(CONFIG_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if changed() {
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

/// Call at the end of a daemon cycle, before the wait for the next one: makes the runtime's
/// timer forget the timers the cycle left behind, so the wait wakes nobody.
///
/// Tokio's timer driver parks until the earliest timer it knew of when it parked. A cycle's
/// requests each carry a timeout (30 to 60 s); when a request finishes its timer is removed,
/// but a driver already parked keeps the old deadline and wakes once for nothing, in the middle
/// of the gap — measured: one wakeup 30 s after a cycle that uploaded, 60 s after an idle one.
/// A timer due before that deadline makes the driver wake now, within the cycle, and park again
/// until the next timer that still exists: the next cycle's.
pub async fn rearm_timers() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

/// Waits for changes of the config file through inotify (Linux), without polling.
///
/// Through `rustix` (its `fs` inotify calls, already in the build for the file lock): a thin,
/// safe and well-kept binding to the system calls, whose fd goes straight into the runtime's
/// reactor (`AsyncFd`). The `notify` crate would bring a thread of its own and a dozen crates for
/// backends this module does not use; the `inotify` crate would be a second binding to the same
/// calls. Only Linux: elsewhere the config is polled, which is cheap (a `stat` a second).
///
/// What is watched:
/// * the file's **directory**, for the file's name: editors save by writing a new file and
///   renaming it over the old one (`IN_MOVED_TO`), which a watch on the old file would never
///   report; also in-place writes (`IN_CLOSE_WRITE`, once the writer is done, rather than each
///   `IN_MODIFY` of a half-written file), creation, deletion and renames away;
/// * the **file itself**, following a symlink: a config that links elsewhere (dotfile managers)
///   is edited in the target's directory, which the first watch does not see.
///
/// An event is only a hint: the caller compares the file's stamp with the loaded one, so an
/// event that changes nothing (a `chmod`, our own read) does not reload. When the queue
/// overflows, every event counts as a hint. If the directory itself goes away, [`next_event`]
/// fails and the caller polls instead (the path may come back later, the watch would not).
///
/// [`next_event`]: ConfigWatch::next_event
#[cfg(target_os = "linux")]
pub struct ConfigWatch {
    fd: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
    name: std::ffi::OsString,
    dir: i32,
    file: Option<i32>,
    buf: Vec<std::mem::MaybeUninit<u8>>,
}

#[cfg(target_os = "linux")]
impl ConfigWatch {
    /// Sets the watches up. Fails when inotify is not available or at its limits
    /// (`fs.inotify.max_user_instances` / `max_user_watches`), or the directory does not exist.
    pub fn new(path: &Path) -> std::io::Result<ConfigWatch> {
        use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
        let name = path
            .file_name()
            .map(|n| n.to_os_string())
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name"))?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?;
        let dir_wd = inotify::add_watch(
            &fd,
            dir,
            WatchFlags::ONLYDIR
                | WatchFlags::CLOSE_WRITE
                | WatchFlags::MOVED_TO
                | WatchFlags::MOVED_FROM
                | WatchFlags::CREATE
                | WatchFlags::DELETE
                | WatchFlags::ATTRIB
                | WatchFlags::DELETE_SELF
                | WatchFlags::MOVE_SELF,
        )?;
        // Not there yet (the directory watch sees it appear) or not watchable: the directory
        // watch is enough for a plain file.
        let file_wd = inotify::add_watch(
            &fd,
            path,
            WatchFlags::CLOSE_WRITE
                | WatchFlags::ATTRIB
                | WatchFlags::DELETE_SELF
                | WatchFlags::MOVE_SELF,
        )
        .ok();
        // SAFETY: `fd` is an open inotify descriptor that the `AsyncFd` owns until it is
        // dropped, and an `OwnedFd` always returns that same descriptor (tokio's I/O-safety
        // contract).
        let fd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
        }?;
        Ok(ConfigWatch {
            fd,
            name,
            dir: dir_wd,
            file: file_wd,
            // Room for many events with a full name (16 bytes + NAME_MAX + 1 each).
            buf: vec![std::mem::MaybeUninit::uninit(); 8192],
        })
    }

    /// Resolves on the next event that may concern the file (its name in the directory, the
    /// file itself, or an overflow). Fails when the watch cannot go on: the directory was
    /// removed or moved, or reading the events failed.
    pub async fn next_event(&mut self) -> std::io::Result<()> {
        use rustix::fs::inotify::{ReadFlags, Reader};
        use rustix::io::Errno;
        use std::os::unix::ffi::OsStrExt;
        loop {
            let mut ready = self.fd.readable().await?;
            let mut hint = false;
            let mut lost = false;
            let mut reader = Reader::new(ready.get_inner(), &mut self.buf);
            loop {
                let event = match reader.next() {
                    Ok(e) => e,
                    Err(Errno::AGAIN) => break,
                    Err(Errno::INTR) => continue,
                    Err(e) => return Err(e.into()),
                };
                let flags = event.events();
                if flags.contains(ReadFlags::QUEUE_OVERFLOW) {
                    hint = true;
                } else if event.wd() == self.dir {
                    if flags.intersects(
                        ReadFlags::DELETE_SELF
                            | ReadFlags::MOVE_SELF
                            | ReadFlags::IGNORED
                            | ReadFlags::UNMOUNT,
                    ) {
                        lost = true;
                    } else if event
                        .file_name()
                        .is_some_and(|n| n.to_bytes() == self.name.as_bytes())
                    {
                        hint = true;
                    }
                } else if Some(event.wd()) == self.file {
                    hint = true;
                    if flags.contains(ReadFlags::IGNORED) {
                        // The file was deleted (or replaced): the directory watch sees the next one.
                        self.file = None;
                    }
                }
            }
            // Drained to EAGAIN: the reactor reports the next event.
            ready.clear_ready();
            if lost {
                return Err(std::io::Error::other(
                    "the config directory was removed or moved",
                ));
            }
            if hint {
                return Ok(());
            }
        }
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

    /// `ConfigWatch::next_event`, bounded: an event must come within seconds.
    #[cfg(target_os = "linux")]
    async fn expect_event(watch: &mut ConfigWatch, what: &str) {
        tokio::time::timeout(Duration::from_secs(10), watch.next_event())
            .await
            .unwrap_or_else(|_| panic!("{what}: no inotify event"))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
    }

    /// The ways a config file gets changed, each seen through inotify (the watch itself, not
    /// the poll that `Lifecycle` falls back to).
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn inotify_sees_in_place_writes_renames_over_and_symlink_targets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[sync]\n").expect("write");

        let mut watch = ConfigWatch::new(&path).expect("inotify watch");
        std::fs::write(&path, "[sync]\nsync_interval = 5\n").expect("write in place");
        expect_event(&mut watch, "an in-place write").await;

        // An editor's save: a new file renamed over the old one.
        let mut watch = ConfigWatch::new(&path).expect("inotify watch");
        let tmp = dir.path().join(".c.toml.swp");
        std::fs::write(&tmp, "[sync]\nsync_interval = 6\n").expect("write temp");
        std::fs::rename(&tmp, &path).expect("rename over");
        expect_event(&mut watch, "a rename over the file").await;

        // A symlinked config (dotfile managers): the target, in another directory, is edited.
        let elsewhere = tempfile::tempdir().expect("tempdir");
        let target = elsewhere.path().join("real.toml");
        std::fs::write(&target, "[sync]\n").expect("write target");
        let link = dir.path().join("linked.toml");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let mut watch = ConfigWatch::new(&link).expect("inotify watch");
        std::fs::write(&target, "[sync]\nsync_interval = 7\n").expect("edit target");
        expect_event(&mut watch, "an edit of the symlink's target").await;

        // The directory goes away: the watch says it cannot go on (the caller then polls).
        let mut watch = ConfigWatch::new(&path).expect("inotify watch");
        std::fs::remove_dir_all(dir.path()).expect("remove dir");
        let mut ended = false;
        for _ in 0..5 {
            match tokio::time::timeout(Duration::from_secs(10), watch.next_event()).await {
                Ok(Ok(())) => continue, // the file's own deletion first
                Ok(Err(_)) => {
                    ended = true;
                    break;
                }
                Err(_) => panic!("no event after the directory was removed"),
            }
        }
        assert!(ended, "the watch should fail once its directory is gone");
    }

    /// Through `Lifecycle`: a file next to the config changing is no reload, the config renamed
    /// over is one.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn only_the_config_files_own_changes_reload() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[sync]\n").expect("write");
        let life = Lifecycle::new();
        life.watch_config(&path);
        let shutdown = life.shutdown(true);
        tokio::pin!(shutdown);
        std::fs::write(dir.path().join("other.toml"), "x").expect("write a neighbour");
        let quiet = tokio::time::timeout(Duration::from_millis(500), &mut shutdown).await;
        assert!(quiet.is_err(), "a neighbour's change is no reload");
        let tmp = dir.path().join("c.toml.new");
        std::fs::write(&tmp, "[sync]\nsync_interval = 9\n").expect("write");
        std::fs::rename(&tmp, &path).expect("rename over");
        tokio::time::timeout(Duration::from_secs(10), &mut shutdown)
            .await
            .expect("the rename ends the run");
        assert!(life.take_reload());
    }
}
