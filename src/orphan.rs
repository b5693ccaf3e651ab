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

/// Resolves when the process has been orphaned (checked every [`CHECK_PERIOD`]); never resolves
/// when that cannot happen (see the module docs).
pub async fn orphaned() -> Orphaned {
    let initial = record_parent();
    if initial.is_none() || initial == Some(1) {
        return std::future::pending().await;
    }
    let mut tick = tokio::time::interval(CHECK_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Some(o) = is_orphaned(initial, parent_id()) {
            return o;
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
}
