//! Running as what the sync is: a background job beside the aw-server it reads.
//!
//! A catch-up is CPU-bound on both sides of the socket: aw-server answers the pages, the sync
//! parses, hashes, records and uploads them, and on a small machine both want a core. Under
//! the default policy every wakeup of one of the sync's threads (a page in, a batch
//! acknowledged, a commit done) may preempt the thread it lands beside — aw-server among
//! them — and the sync's threads wake thousands of times a catch-up.
//!
//! `SCHED_BATCH` is the kernel's policy for exactly this: a thread that is scheduled fairly,
//! by its CPU time like any other, but whose wakeups do not preempt what is running. The
//! user's programs and aw-server keep the CPU when the sync wakes; the sync runs on in the
//! gaps and in its share. Measured on the 1M-event catch-up (benches/catchup.rs, 2 cores,
//! alternating runs in both orders): aw-server's stand-in waited runnable for a core
//! 0.83–0.84 s instead of 1.06–1.07 s, the sync was preempted about 1,300 times instead of
//! about 6,000, and the catch-up took 1.47–1.55× the floor instead of 1.58–1.62× (means).
//! Syncthing does the same in spirit (its `setLowPriority`, on by default, lowers its
//! niceness). A lower niceness (`nice 10`) was measured here too and not kept: it cut the
//! stand-in's wait but not the wall time (docs/performance.md, "What bounds the wall time").

use std::io;

/// Marks the calling thread, and every thread it starts afterwards (they inherit it), as a
/// batch job. Call in `main` before the runtime and the tray start their threads. Linux only
/// (glibc builds); elsewhere a no-op. An error leaves the thread as it was: the sync runs the
/// same, only less politely.
pub fn run_as_batch() -> io::Result<()> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `param` is a valid sched_param for the call's duration; pid 0 is the
        // calling thread.
        let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether the calling thread runs as a batch job ([`run_as_batch`]); `None` where that is
/// not known (other systems).
pub fn is_batch() -> Option<bool> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: no arguments beyond the pid; 0 is the calling thread.
        let policy = unsafe { libc::sched_getscheduler(0) };
        Some(policy == libc::SCHED_BATCH)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a thread of its own (the test harness's threads stay as they are): the thread turns
    /// batch, and a thread it starts afterwards — as the runtime's workers and blocking pool
    /// are — is batch too.
    #[test]
    fn the_thread_and_the_threads_it_starts_run_as_batch() {
        let answer = std::thread::spawn(|| {
            let before = is_batch();
            run_as_batch().map_err(|e| e.to_string())?;
            let after = is_batch();
            let child = std::thread::spawn(is_batch)
                .join()
                .map_err(|_| "the child panicked".to_string())?;
            Ok::<_, String>((before, after, child))
        })
        .join()
        .expect("the test thread panicked");
        let (before, after, child) = answer.expect("sched_setscheduler(SCHED_BATCH) failed");
        if cfg!(all(target_os = "linux", target_env = "gnu")) {
            assert_eq!(
                before,
                Some(false),
                "a new thread starts under the default policy"
            );
            assert_eq!(after, Some(true));
            assert_eq!(
                child,
                Some(true),
                "threads started afterwards inherit the policy"
            );
        } else {
            assert_eq!((before, after, child), (None, None, None));
        }
    }
}
