//! Exiting when orphaned, as the official watchers do (aw-watcher-afk: the parent PID changed;
//! aw-watcher-window: the parent PID became 1).
//!
//! aw-qt starts its modules as children and stops them with SIGTERM. When aw-qt itself dies
//! without doing so (a crash, `kill -9`, a session logout that only kills the tray), its
//! modules are re-parented to init or to a subreaper (systemd --user, a desktop session). A
//! module left running then holds the single-instance lock, so the *next* aw-qt's copy of it
//! says "already running" and exits — which that aw-qt counts as a crash. Exiting when the parent
//! goes away keeps "aw-qt running ⇔ its modules running".
//!
//! The rule is "the parent PID is no longer the one we started with", which covers both
//! watchers' rules (re-parented to 1, or to a subreaper). A process *started* with PID 1 as its
//! parent (launchd on macOS, a container's init, `setsid` daemons) has no parent to lose, so the
//! watch never fires for it: a launchd agent must not exit every second.
//!
//! Unix only; elsewhere [`orphaned`] never resolves (Windows has no re-parenting, and aw-qt's
//! `terminate()` there is TerminateProcess anyway).
//!
//! **How it waits.** On Linux (5.3 and later) it holds a pidfd of the parent (`pidfd_open`),
//! which the kernel makes readable when that process exits: the daemon sleeps until then and
//! wakes exactly once, instead of every second — an idle module must not wake the machine
//! (issue 5). Not `PR_SET_PDEATHSIG`: that signal fires when the parent *thread* that forked us
//! exits (aw-qt, or a launcher, may start modules from a worker thread that ends while the
//! process lives on), and it is a signal (a handler to install, and a race with a parent that
//! died before it was set). A pidfd is about the whole process. Where a pidfd cannot be had (older kernels, seccomp filters, macOS and the BSDs),
//! the parent PID is polled every [`CHECK_PERIOD`], as the watchers do.

use std::sync::OnceLock;
use std::time::Duration;

/// How often the parent PID is checked: the watchers' one second.
pub const CHECK_PERIOD: Duration = Duration::from_secs(1);

/// The parent PID this process started with, recorded as early as possible (see
/// [`record_parent`]) so a parent that exits right after spawning us is still noticed.
static INITIAL_PARENT: OnceLock<Option<u32>> = OnceLock::new();

/// The current parent PID (`None` where the platform has no such notion).
pub fn parent_id() -> Option<u32> {
    #[cfg(unix)]
    {
        Some(std::os::unix::process::parent_id())
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Records the parent PID now. Call first thing in `main`; later calls do nothing. If never
/// called, [`orphaned`] records it on its first poll.
pub fn record_parent() -> Option<u32> {
    *INITIAL_PARENT.get_or_init(parent_id)
}

/// How the parent changed, for the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Orphaned {
    pub was: u32,
    pub now: u32,
}

impl std::fmt::Display for Orphaned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the parent process {} went away (parent is now {})",
            self.was, self.now
        )
    }
}

/// Whether a parent change from `initial` to `now` means we were orphaned. Pure, for tests.
pub fn is_orphaned(initial: Option<u32>, now: Option<u32>) -> Option<Orphaned> {
    match (initial, now) {
        // Started under init/launchd: there is no parent to lose.
        (Some(1), _) | (None, _) | (_, None) => None,
        (Some(was), Some(now)) if was != now => Some(Orphaned { was, now }),
        _ => None,
    }
}

/// Resolves when the process has been orphaned; never resolves when that cannot happen (see
/// the module docs). Waits on a pidfd of the parent where it can, else polls every
/// [`CHECK_PERIOD`].
pub async fn orphaned() -> Orphaned {
    let initial = record_parent();
    let Some(was) = initial.filter(|p| *p != 1) else {
        return std::future::pending().await;
    };
    #[cfg(not(target_os = "linux"))]
    let _ = was;
    #[cfg(target_os = "linux")]
    match pidfd::ProcessExit::open(was) {
        Ok(exit) => {
            // Checked after the pidfd was opened: if the parent is still ours now, the pidfd
            // is of our parent (its PID cannot have been reused while we were its child); if
            // it already went away, the PID may belong to another process by now.
            if let Some(o) = is_orphaned(initial, parent_id()) {
                return o;
            }
            match exit.wait().await {
                Ok(()) => {
                    // The kernel re-parents the children before it signals the exit, so the
                    // parent PID has changed by now; if it somehow has not, poll below.
                    if let Some(o) = is_orphaned(initial, parent_id()) {
                        return o;
                    }
                }
                Err(e) => tracing::debug!(
                    "waiting on the parent's pidfd failed ({e}); checking the parent every second"
                ),
            }
        }
        Err(e) => {
            tracing::debug!("no pidfd for the parent process {was} ({e}); checking it every second")
        }
    }
    poll_parent(initial).await
}

/// The fallback: compares the parent PID with the initial one every [`CHECK_PERIOD`].
async fn poll_parent(initial: Option<u32>) -> Orphaned {
    let mut tick = tokio::time::interval(CHECK_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Some(o) = is_orphaned(initial, parent_id()) {
            return o;
        }
    }
}

/// Waiting for another process to exit without polling, through a pidfd (Linux 5.3+).
#[cfg(target_os = "linux")]
pub mod pidfd {
    use std::io;
    use std::os::fd::OwnedFd;

    use tokio::io::unix::AsyncFd;
    use tokio::io::Interest;

    /// A pidfd registered with the runtime's reactor: readable once the process has exited.
    pub struct ProcessExit {
        fd: AsyncFd<OwnedFd>,
    }

    impl ProcessExit {
        /// A pidfd for process `pid`. Fails where pidfds do not exist (Linux before 5.3:
        /// `ENOSYS`), are filtered out (`EPERM` under some seccomp profiles), or when `pid` is
        /// gone (`ESRCH`). Needs a Tokio runtime with IO enabled.
        pub fn open(pid: u32) -> io::Result<ProcessExit> {
            let pid = i32::try_from(pid)
                .ok()
                .and_then(rustix::process::Pid::from_raw)
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a process id"))?;
            // No PIDFD_NONBLOCK: it is about waitid() only, and needs Linux 5.10.
            let fd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())?;
            // SAFETY: `fd` is an open pidfd that the `AsyncFd` owns until it is dropped, and an
            // `OwnedFd` always returns that same descriptor (tokio's I/O-safety contract).
            let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?;
            Ok(ProcessExit { fd })
        }

        /// Resolves when the process has exited (at once if it already has). The wait costs
        /// nothing: the task sleeps until the kernel reports the exit.
        pub async fn wait(&self) -> io::Result<()> {
            // A pidfd stays readable once the process is gone; nothing to read or clear.
            let _ready = self.fd.readable().await?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_changes_are_orphaning_except_from_init() {
        assert_eq!(is_orphaned(Some(100), Some(100)), None);
        assert_eq!(
            is_orphaned(Some(100), Some(1)),
            Some(Orphaned { was: 100, now: 1 })
        );
        // A subreaper (systemd --user, a desktop session) adopts us: also orphaned.
        assert_eq!(
            is_orphaned(Some(100), Some(7)),
            Some(Orphaned { was: 100, now: 7 })
        );
        // launchd / container init as the parent from the start: never.
        assert_eq!(is_orphaned(Some(1), Some(1)), None);
        assert_eq!(is_orphaned(Some(1), Some(5)), None);
        assert_eq!(is_orphaned(None, None), None);
    }

    #[cfg(unix)]
    #[test]
    fn parent_id_is_this_process_parent() {
        // The test harness has a parent, and it is not this process.
        let ppid = parent_id().expect("unix has a parent pid");
        assert_ne!(ppid, std::process::id());
        assert_eq!(record_parent(), Some(ppid));
    }

    /// The pidfd wait resolves when the process exits, and not before: a child `sleep` stands
    /// for the parent (a pidfd of a child becomes readable the same way, when it exits).
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_pidfd_wait_ends_when_the_process_exits() {
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .expect("spawn sleep");
        let exit = pidfd::ProcessExit::open(child.id()).expect("pidfd_open (Linux >= 5.3)");
        let wait = exit.wait();
        tokio::pin!(wait);
        // Polled once while the process runs: not ready.
        tokio::select! {
            biased;
            r = &mut wait => panic!("the wait ended while the process runs: {r:?}"),
            _ = std::future::ready(()) => {}
        }
        child.kill().expect("kill sleep");
        tokio::time::timeout(std::time::Duration::from_secs(10), &mut wait)
            .await
            .expect("the wait ends when the process exits")
            .expect("no error");
        child.wait().expect("reap sleep");
    }
}
