//! An idle daemon costs almost nothing (issue 5): with nothing new, a cycle makes one small
//! request per synced bucket to aw-server and none upstream, and between cycles the process does
//! not wake up at all.
//!
//! Measured from outside, the way the kernel sees it: the real binary runs as a daemon against a
//! real Python aw-server and the dev upstream, and the context switches of every one of its
//! threads are read from `/proc/<pid>/task/*/status`. Whatever wakes a thread — a timer, a poll,
//! a connection pool's reaper, a blocking-pool thread exiting after its keep-alive — switches it
//! in and out, so "no context switch over a quiet window" means "no wakeup", by any cause, and a
//! thread appearing or disappearing counts as one too.
//!
//! aw-server's requests are counted by a small HTTP proxy in front of it (the daemon is pointed
//! at it): it sees every request the daemon makes, whatever the daemon logs. Batch requests are
//! counted by the dev upstream's own counters. In front of both, a TCP relay closes connections
//! idle for 2 s, as aw-server-rust and real upstreams do after their keep-alive timeout (Python
//! aw-server closes after every answer): a connection the daemon kept into the gap would be
//! closed there, waking it.
//!
//! What the quiet window cannot see, `measure_idle_costs` does over whole minutes: timers due
//! later than the window (a pool reaper every 60-90 s, a request timeout of 30-60 s left in the
//! runtime's timer driver), and the keyring's D-Bus client (run it under `dbus-run-session` with
//! gnome-keyring, `IDLE_NO_TOKEN=1` and `IDLE_CONFIG` setting `[auth] token_storage = "keyring"`).
//!
//! Linux only (`/proc`). CPU time and memory are printed, never asserted (the machine is
//! shared); `measure_idle_costs` (ignored: `cargo test --test it idle::costs::measure_idle_costs -- --ignored --nocapture`)
//! measures them on 10 buckets over a whole gap between cycles. `AW_SYNC_SAMAY_BIN` runs another
//! build of the binary (a release build, or an older one to compare with).

mod costs;
mod support;
mod wakeups;
