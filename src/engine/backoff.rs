//! How long to wait: between retries of one batch, and between cycles after a failure.
//!
//! Retries use exponential backoff with full jitter (AWS's "Exponential Backoff and Jitter"),
//! so many clients coming back from the same outage do not retry in lockstep, and honour the
//! upstream's `Retry-After`. Exponents saturate: a thousandth retry waits the cap, never a
//! negative or overflowed time (vscode-wakatime #392).

use std::time::Duration;

use rand::Rng;

/// Retry policy for one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub base: Duration,
    pub cap: Duration,
    /// Upper bound on an honoured `Retry-After`, so a hostile or broken upstream cannot park the
    /// process for a day.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(600),
        }
    }
}

impl RetryPolicy {
    /// The ceiling for retry number `attempt` (1-based): `base · 2^(attempt-1)`, capped.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        self.base
            .checked_mul(1u32 << exp)
            .unwrap_or(self.cap)
            .min(self.cap)
    }

    /// The wait before retry number `attempt`: the server's `Retry-After` when it sent one
    /// (clamped), else a uniformly random time up to the ceiling.
    pub fn delay(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        rng: &mut impl Rng,
    ) -> Duration {
        if let Some(after) = retry_after {
            return after.min(self.max_retry_after);
        }
        let ceiling = self.ceiling(attempt);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.random_range(0..=nanos))
    }
}

/// The wait before the next cycle: the configured interval after a success; after `failures`
/// failed cycles in a row it doubles each time, up to `max(interval, 30 min)`, with ±10 %
/// jitter, and a success resets it (atuin's daemon does the same).
pub fn cycle_delay(interval: Duration, failures: u32, rng: &mut impl Rng) -> Duration {
    if failures == 0 {
        return interval;
    }
    let cap = interval.max(Duration::from_secs(30 * 60));
    let exp = (failures - 1).min(30);
    let grown = interval.checked_mul(1u32 << exp).unwrap_or(cap).min(cap);
    let jitter = rng.random_range(0.9..=1.1);
    grown.mul_f64(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn ceiling_doubles_then_caps_and_never_overflows() {
        let p = RetryPolicy::default();
        assert_eq!(p.ceiling(1), Duration::from_secs(1));
        assert_eq!(p.ceiling(2), Duration::from_secs(2));
        assert_eq!(p.ceiling(5), Duration::from_secs(16));
        assert_eq!(p.ceiling(6), Duration::from_secs(30));
        assert_eq!(p.ceiling(665), Duration::from_secs(30));
        assert_eq!(p.ceiling(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn full_jitter_stays_within_the_ceiling_and_spreads() {
        let p = RetryPolicy::default();
        let mut rng = StdRng::seed_from_u64(7);
        let waits: Vec<_> = (0..200).map(|_| p.delay(4, None, &mut rng)).collect();
        assert!(waits.iter().all(|w| *w <= Duration::from_secs(8)));
        assert!(waits.iter().any(|w| *w < Duration::from_secs(2)));
        assert!(waits.iter().any(|w| *w > Duration::from_secs(6)));
    }

    #[test]
    fn retry_after_is_honoured_and_clamped() {
        let p = RetryPolicy::default();
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(7)), &mut rng),
            Duration::from_secs(7)
        );
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(86_400)), &mut rng),
            Duration::from_secs(600)
        );
    }

    #[test]
    fn cycle_delay_grows_on_failure_caps_and_resets() {
        let mut rng = StdRng::seed_from_u64(3);
        let i = Duration::from_secs(300);
        assert_eq!(cycle_delay(i, 0, &mut rng), i);
        let d1 = cycle_delay(i, 1, &mut rng);
        assert!(d1 >= i.mul_f64(0.9) && d1 <= i.mul_f64(1.1));
        let d3 = cycle_delay(i, 3, &mut rng);
        assert!(d3 >= Duration::from_secs(1080) && d3 <= Duration::from_secs(1320));
        let d_many = cycle_delay(i, 1000, &mut rng);
        assert!(d_many <= Duration::from_secs(1800).mul_f64(1.1));
        assert!(d_many >= Duration::from_secs(1800).mul_f64(0.9));
    }
}
