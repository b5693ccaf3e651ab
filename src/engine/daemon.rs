//! The daemon loop: cycles on a schedule until told to stop, or sooner when asked ("sync now").

use std::future::Future;
use std::time::{Duration, Instant};

use super::{CycleError, CycleReport, Engine};
use crate::retry;

/// How a cycle ended, as the daemon loop sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Synced,
    /// Waiting for a login: poll again soon, without counting a failure.
    LoginRequired,
    Failed,
}

/// Runs `cycle` until `shutdown` resolves: the next cycle starts `interval` after the previous
/// one *ended* (so a slow cycle, or a laptop waking from sleep, never causes a burst of
/// catch-up cycles), failures space cycles out (see [`retry::cycle_delay`]), and shutdown
/// interrupts a cycle or a wait at once.
pub async fn run_daemon<C, F>(interval: Duration, cycle: C, shutdown: impl Future<Output = ()>)
where
    C: FnMut() -> F,
    F: Future<Output = Outcome>,
{
    run_daemon_woken(interval, cycle, shutdown, std::future::pending, |_| {}).await
}

/// [`run_daemon`], and a wait between cycles also ends when `wake()` resolves (a "sync now"
/// request, [`crate::control`]): the next cycle starts at once, whatever the interval or the
/// backoff said. `waiting(delay)` is told each wait before it starts (the tray's "retrying in
/// 5 min").
pub async fn run_daemon_woken<C, F, W, WF>(
    interval: Duration,
    mut cycle: C,
    shutdown: impl Future<Output = ()>,
    mut wake: W,
    mut waiting: impl FnMut(Duration),
) where
    C: FnMut() -> F,
    F: Future<Output = Outcome>,
    W: FnMut() -> WF,
    WF: Future<Output = ()>,
{
    tokio::pin!(shutdown);
    let mut failures = 0u32;
    loop {
        let outcome = tokio::select! {
            o = cycle() => o,
            _ = &mut shutdown => return,
        };
        let delay = match outcome {
            Outcome::Synced => {
                failures = 0;
                interval
            }
            Outcome::LoginRequired => {
                failures = 0;
                interval.min(Duration::from_secs(60))
            }
            Outcome::Failed => {
                failures = failures.saturating_add(1);
                retry::cycle_delay(interval, failures, &mut rand::rng())
            }
        };
        tracing::debug!(delay_s = delay.as_secs_f64(), "next cycle scheduled");
        waiting(delay);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {},
            _ = wake() => tracing::debug!("sync requested: starting the next cycle now"),
            _ = &mut shutdown => return,
        }
    }
}

impl Engine {
    /// A cycle for the daemon loop: logs the result, records it in the status bucket
    /// ([`status_bucket`]) and classifies it.
    pub async fn daemon_cycle(&self) -> Outcome {
        self.daemon_cycle_reporting(Default::default()).await.0
    }

    /// [`Engine::daemon_cycle`], also handing back the cycle's result (for those who asked
    /// for it over the control channel).
    /// `asks` come from `--once --verify` / `--once --resync` run beside the daemon.
    pub async fn daemon_cycle_reporting(
        &self,
        asks: crate::control::Asks,
    ) -> (Outcome, Result<CycleReport, CycleError>) {
        let started = Instant::now();
        let verify = asks.verify;
        if asks.resync {
            self.destination.ask_resync();
        }
        let result = self
            .run_cycle_verifying(self.settings.verify_all || verify)
            .await;
        let outcome = match &result {
            Ok(r) => {
                tracing::info!(
                    read = r.read(),
                    delivered = r.upload.delivered,
                    duplicates = r.upload.duplicates,
                    quarantined = r.upload.quarantined,
                    elapsed_ms = r.elapsed.as_millis() as u64,
                    "sync cycle done"
                );
                Outcome::Synced
            }
            Err(e) if e.needs_login() => {
                tracing::warn!("{e}");
                Outcome::LoginRequired
            }
            Err(e) => {
                tracing::error!("sync cycle failed, will retry: {e}");
                Outcome::Failed
            }
        };
        self.record_status(&result, started.elapsed()).await;
        (outcome, result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{Arc, Mutex};
    use tokio::time::Instant as TokioInstant;

    /// Records when each cycle started (paused tokio time) and plays scripted outcomes.
    async fn run_script(
        interval: Duration,
        script: Vec<(Outcome, Duration)>,
        stop_after: Duration,
    ) -> Vec<Duration> {
        let t0 = TokioInstant::now();
        let starts = Arc::new(Mutex::new(Vec::new()));
        let calls = Arc::new(AtomicU32::new(0));
        let script = Arc::new(script);
        let cycle = {
            let starts = Arc::clone(&starts);
            move || {
                let starts = Arc::clone(&starts);
                let calls = Arc::clone(&calls);
                let script = Arc::clone(&script);
                async move {
                    starts.lock().unwrap().push(t0.elapsed());
                    let i = calls.fetch_add(1, Ordering::SeqCst) as usize;
                    let (outcome, takes) = script
                        .get(i)
                        .copied()
                        .unwrap_or((Outcome::Synced, Duration::ZERO));
                    tokio::time::sleep(takes).await;
                    outcome
                }
            }
        };
        run_daemon(interval, cycle, tokio::time::sleep(stop_after)).await;
        let v = starts.lock().unwrap().clone();
        v
    }

    #[tokio::test(start_paused = true)]
    async fn cycles_start_one_interval_after_the_previous_one_ended() {
        let i = Duration::from_secs(300);
        // The second cycle takes ten intervals (a huge backlog, or a laptop asleep mid-cycle).
        let starts = run_script(
            i,
            vec![
                (Outcome::Synced, Duration::ZERO),
                (Outcome::Synced, i * 10),
                (Outcome::Synced, Duration::ZERO),
            ],
            Duration::from_secs(300 * 13 + 1),
        )
        .await;
        let secs: Vec<u64> = starts.iter().map(|d| d.as_secs()).collect();
        // No burst of missed ticks after the long cycle: 0, 300, then 300+3000+300.
        assert_eq!(secs, vec![0, 300, 3600, 3900]);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_grow_the_interval_and_a_success_resets_it() {
        let i = Duration::from_secs(100);
        let f = (Outcome::Failed, Duration::ZERO);
        let ok = (Outcome::Synced, Duration::ZERO);
        let starts = run_script(i, vec![f, f, f, ok, ok], Duration::from_secs(2000)).await;
        let gaps: Vec<f64> = starts
            .windows(2)
            .map(|w| (w[1] - w[0]).as_secs_f64())
            .collect();
        // ~100, ~200, ~400 (±10 % jitter), then 100 after the success.
        assert!((90.0..=110.0).contains(&gaps[0]), "{gaps:?}");
        assert!((180.0..=220.0).contains(&gaps[1]), "{gaps:?}");
        assert!((360.0..=440.0).contains(&gaps[2]), "{gaps:?}");
        assert_eq!(gaps[3], 100.0, "{gaps:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn login_required_polls_every_minute_without_growing() {
        let i = Duration::from_secs(300);
        let l = (Outcome::LoginRequired, Duration::ZERO);
        let starts = run_script(i, vec![l, l, l, l], Duration::from_secs(200)).await;
        let secs: Vec<u64> = starts.iter().map(|d| d.as_secs()).collect();
        assert_eq!(secs, vec![0, 60, 120, 180]);
    }

    /// A sync request between cycles starts the next one at once, not an interval later.
    #[tokio::test(start_paused = true)]
    async fn a_wake_starts_the_next_cycle_at_once() {
        let t0 = TokioInstant::now();
        let starts = Arc::new(Mutex::new(Vec::new()));
        let wake_at = Arc::new(Mutex::new(vec![Duration::from_secs(10)]));
        let cycle = {
            let starts = Arc::clone(&starts);
            move || {
                starts.lock().unwrap().push(t0.elapsed());
                async { Outcome::Synced }
            }
        };
        let wake = {
            let wake_at = Arc::clone(&wake_at);
            move || {
                let next = wake_at.lock().unwrap().pop();
                async move {
                    match next {
                        Some(at) => tokio::time::sleep_until(t0 + at).await,
                        None => std::future::pending().await,
                    }
                }
            }
        };
        run_daemon_woken(
            Duration::from_secs(300),
            cycle,
            tokio::time::sleep(Duration::from_secs(301)),
            wake,
            |_| {},
        )
        .await;
        let secs: Vec<u64> = starts.lock().unwrap().iter().map(|d| d.as_secs()).collect();
        // 0, woken at 10, then the interval from the end of that cycle.
        assert_eq!(secs, vec![0, 10]);
    }

    /// Each wait is announced before it starts, with the delay the loop then sleeps (the
    /// tray's "retrying in 5 min" after a failure).
    #[tokio::test(start_paused = true)]
    async fn each_wait_is_announced_with_its_delay() {
        let t0 = TokioInstant::now();
        let outcomes = Arc::new(Mutex::new(vec![Outcome::Synced, Outcome::Failed]));
        let announced = Arc::new(Mutex::new(Vec::new()));
        let cycle = {
            let outcomes = Arc::clone(&outcomes);
            move || {
                let o = outcomes.lock().unwrap().pop().unwrap_or(Outcome::Synced);
                async move { o }
            }
        };
        let waiting = {
            let announced = Arc::clone(&announced);
            move |d: Duration| announced.lock().unwrap().push((t0.elapsed(), d))
        };
        run_daemon_woken(
            Duration::from_secs(100),
            cycle,
            tokio::time::sleep(Duration::from_secs(150)),
            std::future::pending,
            waiting,
        )
        .await;
        let got = announced.lock().unwrap().clone();
        // A failure first: the backoff (~100 s ± jitter), announced at 0; then the interval,
        // announced when the second cycle ended.
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].0, Duration::ZERO);
        assert!((90..=110).contains(&got[0].1.as_secs()), "{got:?}");
        assert_eq!(got[1].1, Duration::from_secs(100));
        // The timer has millisecond resolution.
        assert!(
            got[1].0.abs_diff(got[0].1) <= Duration::from_millis(1),
            "{got:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_interrupts_a_running_cycle() {
        let i = Duration::from_secs(300);
        let started = TokioInstant::now();
        // The first cycle would run for an hour; shutdown comes after one second.
        let starts = run_script(
            i,
            vec![(Outcome::Synced, Duration::from_secs(3600))],
            Duration::from_secs(1),
        )
        .await;
        assert_eq!(starts.len(), 1);
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }
}
