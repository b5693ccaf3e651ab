//! The `aw-sync-samay` binary: parse the flags, pick a [`cmd::Mode`], run it on a small
//! runtime (on macOS the daemon's runs on a thread of its own: the main thread is the tray
//! icon's). Each command lives in its own file under `cmd/`; the work itself in the library.

mod cmd;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use aw_sync_samay::cli::Args;
use cmd::Mode;

/// How long an idle thread of the blocking pool (SQLite, keyring, file and DNS calls) waits for
/// work before it exits. Tokio's default, 10 s, is shorter than a sync interval, so every cycle
/// ended with its threads waking to exit and the next one starting new threads: wakeups
/// between cycles (issue 5) and thread churn. A day outlasts any sensible interval; a thread
/// started by a one-off burst (a long catch-up, a slow keyring) still goes eventually.
const BLOCKING_KEEP_ALIVE: Duration = Duration::from_secs(24 * 3600);

fn main() -> ExitCode {
    // Before anything else, so a parent that exits at once still counts as lost (orphan.rs).
    aw_sync_samay::orphan::record_parent();
    let args = Args::parse();
    let mode = Mode::of(&args);
    aw_sync_samay::memory::tune_allocator();
    // Before any thread starts, so every one inherits it (priority.rs).
    if matches!(mode, Mode::Daemon | Mode::Once | Mode::DryRun) {
        if let Err(e) = aw_sync_samay::priority::run_as_batch() {
            eprintln!("aw-sync-samay: cannot run as a batch job (SCHED_BATCH), running as is: {e}");
        }
    }
    // Only the daemon shows a tray icon; on macOS it gets the main thread for it (tray/).
    aw_sync_samay::tray::run_main(mode == Mode::Daemon, move || run(args, mode))
}

/// The command on a small runtime.
fn run(args: Args, mode: Mode) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_keep_alive(BLOCKING_KEEP_ALIVE)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("aw-sync-samay: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(cmd::run(args, mode));
    // Don't wait for a blocking keyring or SQLite call beyond a moment at exit: aw-qt waits
    // for a stopped module without a bound, and the whole stop must stay under a second.
    runtime.shutdown_timeout(Duration::from_millis(500));
    match result {
        Ok(code) => code,
        Err(e) => {
            // Only errors from before logging was up get here (the others were logged).
            eprintln!("aw-sync-samay: {e:#}");
            ExitCode::from(1)
        }
    }
}
