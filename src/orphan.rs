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
//! **Only aw-qt's children.** The watch applies only when the parent we started with is aw-qt
//! ([`is_aw_qt_command`]: its command line runs `aw-qt` — the frozen executable, the `aw-qt`
//! script under a Python interpreter, or `python -m aw_qt`). The reason for the rule is aw-qt's
//! lock-and-restart cycle; a daemon started any other way — `nohup aw-sync-samay &` from a
//! shell that then exits, a terminal multiplexer, a systemd unit, a desktop autostart entry —
//! was meant to outlive its starter, and keeps running. aw-qt starts its modules with no
//! argument but `--testing`, so the arguments alone cannot tell it apart from a user's start;
//! the parent's command line can. It is read once, at start; a launcher that runs aw-qt's
//! modules through a wrapper which does not `exec` makes the wrapper the parent, and the
//! daemon then keeps running when aw-qt dies.
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

/// The parent this process started with, recorded as early as possible (see
/// [`record_parent`]) so a parent that exits right after spawning us is still noticed.
static INITIAL_PARENT: OnceLock<Option<Parent>> = OnceLock::new();

/// The parent process we started with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    pub pid: u32,
    /// It is aw-qt (see the module docs): only then does losing it stop us.
    pub aw_qt: bool,
}

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

/// Records the parent now (its PID, and whether it is aw-qt). Call first thing in `main`;
/// later calls do nothing. If never called, [`orphaned`] records it on its first poll.
pub fn record_parent() -> Option<Parent> {
    *INITIAL_PARENT.get_or_init(|| {
        parent_id().map(|pid| Parent {
            pid,
            aw_qt: command_line(pid).is_some_and(|args| is_aw_qt_command(&args)),
        })
    })
}

/// Whether a command line (`argv`) runs aw-qt: `aw-qt` (or `aw-qt.exe`) as the program — the
/// frozen executable — or as one of the next arguments — the `aw-qt` script run by a Python
/// interpreter, possibly after interpreter options — or `-m aw_qt`.
pub fn is_aw_qt_command(args: &[String]) -> bool {
    let is_aw_qt = |arg: &String| {
        std::path::Path::new(arg)
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.strip_suffix(".exe").unwrap_or(n) == "aw-qt")
    };
    args.iter().take(4).any(is_aw_qt) || args.windows(2).any(|w| w[0] == "-m" && w[1] == "aw_qt")
}

/// The command line of process `pid`: `/proc/<pid>/cmdline` on Linux, `ps` elsewhere on Unix
/// (arguments split at spaces: enough to find a program name). `None` when it cannot be read.
fn command_line(pid: u32) -> Option<Vec<String>> {
    #[cfg(target_os = "linux")]
    {
        let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        Some(
            raw.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect(),
        )
    }
    #[cfg(all(unix, not(target_os = "linux")))]
    {
        let out = std::process::Command::new("ps")
            .args(["-o", "args=", "-p", &pid.to_string()])
            .stderr(std::process::Stdio::null())
            .output()
            .ok()?;
        Some(
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
        )
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        None
    }
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

/// Resolves when the process has been orphaned; never resolves when that cannot happen or
/// does not matter: a parent that is not aw-qt (see the module docs). Waits on a pidfd of the
/// parent where it can, else polls every [`CHECK_PERIOD`].
pub async fn orphaned() -> Orphaned {
    let parent = record_parent();
    match parent {
        Some(p) if p.aw_qt => tracing::info!(
            "started by aw-qt (PID {}): stops when aw-qt goes away, as the watchers do",
            p.pid
        ),
        Some(p) => tracing::info!(
            "started by PID {}, which is not aw-qt: keeps running when it exits",
            p.pid
        ),
        None => {}
    }
    let initial = parent.filter(|p| p.aw_qt).map(|p| p.pid);
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
        // The test harness has a parent, and it is not this process, nor aw-qt.
        let ppid = parent_id().expect("unix has a parent pid");
        assert_ne!(ppid, std::process::id());
        assert_eq!(
            record_parent(),
            Some(Parent {
                pid: ppid,
                aw_qt: false
            })
        );
    }

    #[test]
    fn aw_qt_is_told_by_its_command_line() {
        let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // The frozen executable (the usual install), with aw-qt's own arguments or none.
        assert!(is_aw_qt_command(&argv(&["/opt/activitywatch/aw-qt"])));
        assert!(is_aw_qt_command(&argv(&[
            "/Applications/ActivityWatch.app/Contents/MacOS/aw-qt.exe"
        ])));
        assert!(is_aw_qt_command(&argv(&["./aw-qt", "--testing"])));
        // The pip/poetry entry point under its interpreter, and the module form.
        assert!(is_aw_qt_command(&argv(&[
            "/usr/bin/python3",
            "/home/me/.local/bin/aw-qt"
        ])));
        assert!(is_aw_qt_command(&argv(&[
            "python3",
            "-X",
            "utf8",
            "/usr/bin/aw-qt"
        ])));
        assert!(is_aw_qt_command(&argv(&[
            "python3",
            "-m",
            "aw_qt",
            "--testing"
        ])));
        // Shells, terminals, systemd, other watchers: not aw-qt.
        for other in [
            &["-bash"][..],
            &["/bin/sh", "-c", "nohup aw-sync-samay &"],
            &["/usr/lib/systemd/systemd", "--user"],
            &["tmux"],
            &["/opt/activitywatch/aw-server"],
            &["python3", "/usr/bin/aw-qt-helper"],
        ] {
            assert!(!is_aw_qt_command(&argv(other)), "{other:?}");
        }
        assert!(!is_aw_qt_command(&[]));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_command_line_is_read_whole() {
        let args = command_line(std::process::id()).expect("our own command line");
        assert!(!args.is_empty());
        assert!(!args.iter().any(|a| a.contains('\0')));
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
