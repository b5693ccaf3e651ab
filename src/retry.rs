//! Delivery and retry policy, in one place for every caller that talks to another program:
//! the uploader's batches ([`crate::engine::upload`]), the token refresh ([`crate::auth`]) and
//! the daemon's spacing of failed cycles ([`cycle_delay`]).
//!
//! * Which failures are worth another try: [`Transient`] (an error says whether it is, and
//!   how long the other side asked to wait), and for HTTP answers [`transient_status`].
//! * How long to wait: exponential backoff with full jitter (AWS's "Exponential Backoff and
//!   Jitter"), so many clients coming back from the same outage do not retry in lockstep,
//!   honouring the upstream's `Retry-After`. Exponents saturate: a thousandth retry waits the
//!   cap, never a negative or overflowed time (vscode-wakatime #392).
//! * When to give up: [`RetryPolicy::after`], from the attempt number and the caller's budget.

use std::time::Duration;

use rand::Rng;

/// A failure that may or may not pass if the same request is sent again later.
pub trait Transient {
    /// Whether the same request, sent again as is after a wait, can succeed.
    fn is_transient(&self) -> bool;

    /// The wait the other side asked for (`Retry-After`), if any.
    fn retry_after(&self) -> Option<Duration> {
        None
    }
}

/// Whether an HTTP answer with this status is worth another try of the same request: 408
/// (timeout), 429 (too many requests) and 5xx except 501 (the server cannot do this at all).
/// Redirects and the other 4xx need a human or a changed request.
pub fn transient_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500 | 502..=599)
}

/// How many times a failed token refresh is tried again before the cycle gives up for now (the
/// provider is down or slow; the next cycle tries again).
pub const REFRESH_RETRIES: u32 = 2;

/// How long to wait between tries of one request.
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

    /// The decision after failed try number `attempt` (1-based) of a request allowed
    /// `max_retries` further tries: the wait before trying again, or `None` to give up —
    /// because the failure will not pass by waiting, or the tries are spent.
    pub fn after(
        &self,
        failure: &impl Transient,
        attempt: u32,
        max_retries: u32,
        rng: &mut impl Rng,
    ) -> Option<Duration> {
        (failure.is_transient() && attempt <= max_retries)
            .then(|| self.delay(attempt, failure.retry_after(), rng))
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
    // Not `mul_f64`, which panics when the product does not fit a `Duration`: `sync_interval`
    // may be any number of seconds up to u64::MAX, and the daemon must not die of a failure.
    Duration::try_from_secs_f64(grown.as_secs_f64() * jitter).unwrap_or(Duration::MAX)
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

    /// A failure of a kind given in the test.
    struct Failure {
        transient: bool,
        retry_after: Option<Duration>,
    }

    impl Transient for Failure {
        fn is_transient(&self) -> bool {
            self.transient
        }
        fn retry_after(&self) -> Option<Duration> {
            self.retry_after
        }
    }

    #[test]
    fn after_retries_a_transient_failure_until_the_budget_is_spent() {
        let p = RetryPolicy::default();
        let mut rng = StdRng::seed_from_u64(11);
        let passing = Failure {
            transient: true,
            retry_after: None,
        };
        for attempt in 1..=3 {
            let wait = p.after(&passing, attempt, 3, &mut rng);
            assert!(
                wait.is_some_and(|w| w <= p.ceiling(attempt)),
                "{attempt}: {wait:?}"
            );
        }
        assert_eq!(p.after(&passing, 4, 3, &mut rng), None);
        assert_eq!(
            p.after(&passing, 1, 0, &mut rng),
            None,
            "no retries allowed"
        );
    }

    #[test]
    fn after_honours_retry_after_and_never_retries_a_final_failure() {
        let p = RetryPolicy::default();
        let mut rng = StdRng::seed_from_u64(12);
        let asked = Failure {
            transient: true,
            retry_after: Some(Duration::from_secs(42)),
        };
        assert_eq!(
            p.after(&asked, 1, 3, &mut rng),
            Some(Duration::from_secs(42))
        );
        let last = Failure {
            transient: false,
            retry_after: Some(Duration::from_secs(1)),
        };
        assert_eq!(p.after(&last, 1, 3, &mut rng), None);
    }

    #[test]
    fn the_transient_http_statuses_are_timeouts_throttling_and_server_errors_but_501() {
        let transient: Vec<u16> = (100..=599).filter(|s| transient_status(*s)).collect();
        let mut expected = vec![408, 429, 500];
        expected.extend(502..=599);
        assert_eq!(transient, expected);
    }

    #[test]
    fn upstream_and_auth_errors_answer_the_same_question() {
        use crate::auth::AuthError;
        use crate::upstream::UpstreamError;
        let mut rng = StdRng::seed_from_u64(13);
        let p = RetryPolicy::default();
        let throttled = UpstreamError::Retryable {
            status: 429,
            retry_after: Some(Duration::from_secs(9)),
        };
        assert_eq!(
            p.after(&throttled, 1, 1, &mut rng),
            Some(Duration::from_secs(9))
        );
        assert_eq!(p.after(&UpstreamError::TooLarge, 1, 1, &mut rng), None);
        assert!(p
            .after(
                &AuthError::Transient("down".into()),
                1,
                REFRESH_RETRIES,
                &mut rng
            )
            .is_some());
        assert_eq!(
            p.after(
                &AuthError::Transient("down".into()),
                3,
                REFRESH_RETRIES,
                &mut rng
            ),
            None
        );
        assert_eq!(p.after(&AuthError::LoginRequired, 1, 9, &mut rng), None);
    }

    /// The policy has one home: the token refresh (auth) decides its retries here, not through
    /// the engine (issue 12: auth reached into `engine::backoff`).
    #[test]
    fn auth_does_not_import_from_the_engine() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/auth");
        let mut stack = vec![dir];
        let mut read = 0;
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    read += 1;
                    assert!(
                        !text.contains("crate::engine"),
                        "{} imports from the engine",
                        path.display()
                    );
                }
            }
        }
        assert!(read > 5, "read only {read} files of src/auth");
    }

    /// Found by `props::the_wait_between_failed_cycles_never_overflows_and_stays_within_its_bounds`:
    /// `sync_interval = 18446744073709551615` passes config validation, and the first failed
    /// cycle panicked ("cannot convert float seconds to Duration").
    #[test]
    fn a_failed_cycle_with_a_u64_max_interval_does_not_panic() {
        let mut rng = StdRng::seed_from_u64(5_691_807_640_348_933_341);
        let huge = Duration::from_secs(u64::MAX);
        for failures in [1, 2, u32::MAX] {
            assert!(cycle_delay(huge, failures, &mut rng) >= huge.mul_f64(0.9));
        }
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

/// Property tests: no attempt number, policy, `Retry-After` value or interval makes a wait
/// overflow, panic or leave its bounds (vscode-wakatime #392 reached "-1s max backoff").
#[cfg(test)]
mod props {
    use super::*;
    use crate::upstream::client::parse_retry_after;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use std::time::{SystemTime, UNIX_EPOCH};

    /// 9999-12-31T23:59:59Z, the last instant an HTTP-date can name.
    const LAST_HTTP_DATE_SECS: u64 = 253_402_300_799;

    /// Any duration a `RetryPolicy` field could hold, extremes included.
    fn duration() -> impl Strategy<Value = Duration> {
        prop_oneof![
            Just(Duration::ZERO),
            Just(Duration::MAX),
            (0u64..=3_600_000).prop_map(Duration::from_millis),
            (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        ]
    }

    fn policy() -> impl Strategy<Value = RetryPolicy> {
        (duration(), duration(), duration()).prop_map(|(base, cap, max_retry_after)| RetryPolicy {
            base,
            cap,
            max_retry_after,
        })
    }

    fn attempt() -> impl Strategy<Value = u32> {
        prop_oneof![Just(0), Just(1), Just(u32::MAX), 0u32..100, any::<u32>()]
    }

    proptest! {
        #[test]
        fn a_retry_wait_without_retry_after_is_within_zero_and_the_cap(
            p in policy(), attempt in attempt(), seed in any::<u64>()
        ) {
            let mut rng = StdRng::seed_from_u64(seed);
            let ceiling = p.ceiling(attempt);
            prop_assert!(ceiling <= p.cap);
            prop_assert!(p.delay(attempt, None, &mut rng) <= ceiling);
            // The ceiling never shrinks as attempts grow (no wrap-around to a short wait).
            prop_assert!(p.ceiling(attempt.saturating_add(1)) >= ceiling);
        }

        #[test]
        fn any_retry_after_in_seconds_is_honoured_up_to_its_clamp(
            p in policy(),
            attempt in attempt(),
            digits in "[0-9]{1,40}",
            seed in any::<u64>(),
        ) {
            let mut rng = StdRng::seed_from_u64(seed);
            let after = parse_retry_after(&digits, SystemTime::now());
            prop_assert!(after.is_some(), "{digits:?} is delta-seconds");
            let wait = p.delay(attempt, after, &mut rng);
            prop_assert!(wait <= p.max_retry_after);
            // A wait below the clamp is exactly what the server asked for.
            // (More than 20 significant digits is above u64::MAX seconds: "very long".)
            let significant = digits.trim_start_matches('0');
            let asked = match significant.len() {
                0 => 0,
                1..=20 => u64::try_from(significant.parse::<u128>().unwrap_or(u128::MAX))
                    .unwrap_or(u64::MAX),
                _ => u64::MAX,
            };
            prop_assert_eq!(wait, Duration::from_secs(asked).min(p.max_retry_after));
        }

        #[test]
        fn any_retry_after_date_far_future_or_past_is_within_the_clamp(
            p in policy(),
            attempt in attempt(),
            date in 0..=LAST_HTTP_DATE_SECS,
            now in 0..=LAST_HTTP_DATE_SECS,
            now_nanos in 0u32..1_000_000_000,
            seed in any::<u64>(),
        ) {
            let mut rng = StdRng::seed_from_u64(seed);
            let date = UNIX_EPOCH + Duration::from_secs(date);
            let now = UNIX_EPOCH + Duration::new(now, now_nanos);
            let header = httpdate::fmt_http_date(date);
            let after = parse_retry_after(&header, now);
            let expected = date.duration_since(now).unwrap_or(Duration::ZERO);
            prop_assert_eq!(after, Some(expected), "{}", header);
            let wait = p.delay(attempt, after, &mut rng);
            prop_assert!(wait <= p.max_retry_after);
            prop_assert_eq!(wait, expected.min(p.max_retry_after));
        }

        #[test]
        fn the_wait_between_failed_cycles_never_overflows_and_stays_within_its_bounds(
            interval_secs in prop_oneof![Just(1u64), Just(u64::MAX), 1u64..100_000, any::<u64>()],
            failures in attempt(),
            seed in any::<u64>(),
        ) {
            let mut rng = StdRng::seed_from_u64(seed);
            let interval = Duration::from_secs(interval_secs.max(1));
            let d = cycle_delay(interval, failures, &mut rng);
            if failures == 0 {
                prop_assert_eq!(d, interval);
            } else {
                let cap = interval.max(Duration::from_secs(30 * 60)).as_secs_f64();
                // Within ±10 % of a value between the interval and the cap (f64 rounding aside).
                prop_assert!(d.as_secs_f64() <= cap * 1.1 * (1.0 + 1e-12), "{d:?}");
                prop_assert!(d.as_secs_f64() >= interval.as_secs_f64() * 0.9 * (1.0 - 1e-12), "{d:?}");
            }
        }
    }
}
