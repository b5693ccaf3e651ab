//! The "waiting for the browser" indicator on stderr: a one-line spinner with the elapsed time
//! on a terminal, so the user sees the program is alive and how long is left; a single plain line
//! when stderr is a file or pipe (aw-qt's log, CI), where redraws would only be noise.

use std::io::IsTerminal;
use std::time::Duration;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use tokio::task::JoinHandle;

pub(super) struct Indicator {
    spinner: Option<(JoinHandle<()>, Arc<AtomicBool>)>,
}

impl Indicator {
    /// `allow_spinner` is false while the user may be typing (paste-back): a redrawn line would
    /// overwrite what they paste.
    pub(super) fn start(enabled: bool, allow_spinner: bool, timeout: Duration) -> Self {
        if !enabled {
            return Self { spinner: None };
        }
        let limit = timeout.as_secs();
        if !(allow_spinner && std::io::stderr().is_terminal()) {
            eprintln!("Waiting up to {limit} s for the sign-in to finish in the browser...");
            return Self { spinner: None };
        }
        let stopped = Arc::new(AtomicBool::new(false));
        let stop_flag = stopped.clone();
        let spinner = tokio::spawn(async move {
            const FRAMES: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
            let started = tokio::time::Instant::now();
            let mut tick = tokio::time::interval(Duration::from_millis(120));
            for frame in FRAMES.iter().cycle() {
                tick.tick().await;
                let elapsed = started.elapsed().as_secs();
                // In stderr's live area, which log lines clear first (crate::term). The stop
                // flag is checked under the area's lock, which `stop` takes to clear: no frame
                // is drawn after the clear.
                let drawn = crate::term::stderr_area().draw_unless(
                    &mut std::io::stderr(),
                    &[format!(
                        "{frame} Waiting for the sign-in in the browser... {elapsed} s of {limit} s (Ctrl+C to cancel)"
                    )],
                    &stop_flag,
                );
                if !drawn {
                    return;
                }
            }
        });
        Self {
            spinner: Some((spinner, stopped)),
        }
    }

    /// Stops the spinner and clears its line.
    pub(super) fn stop(self) {
        if let Some((spinner, stopped)) = self.spinner {
            spinner.abort();
            crate::term::stderr_area().stop_and_clear(&mut std::io::stderr(), &stopped);
        }
    }
}
