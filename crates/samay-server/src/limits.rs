//! What one request and one user may cost: body and batch size, time per request, and a
//! per-user rate (a token bucket: `burst` requests at once, refilled at `per_minute`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A batch body at most this large, on the wire and after gzip (else 413).
    pub max_body_bytes: u64,
    /// Events in one batch at most (else 413: the client splits).
    pub max_events: usize,
    /// A request answered within this, or 503.
    pub request_timeout: Duration,
    /// Requests per minute per user; 0 = no limit.
    pub rate_per_minute: u32,
    /// Requests a user may make at once before the rate applies.
    pub rate_burst: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: crate::DEFAULT_MAX_BODY_BYTES,
            max_events: 10_000,
            request_timeout: Duration::from_secs(120),
            // 100 batches a second (50 000 events of the sidecar's default 500): a catch-up of
            // a year runs at full speed, a runaway client is held.
            rate_per_minute: 6_000,
            rate_burst: 600,
        }
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Per-user token buckets, in memory (per process: with N processes a user gets up to N times
/// the rate, which a limit against abuse tolerates).
pub struct RateLimiter {
    per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// Users tracked before idle full buckets are forgotten.
const PRUNE_ABOVE: usize = 10_000;

impl RateLimiter {
    pub fn new(limits: &Limits) -> Self {
        Self {
            per_sec: f64::from(limits.rate_per_minute) / 60.0,
            burst: f64::from(limits.rate_burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from `user`'s bucket, or says how long until one is there.
    pub fn check(&self, user: &str) -> Result<(), Duration> {
        if self.per_sec <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > PRUNE_ABOVE {
            let (per_sec, burst) = (self.per_sec, self.burst);
            buckets
                .retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * per_sec < burst);
        }
        let bucket = buckets.entry(user.to_string()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let elapsed = now.duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_sec).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - bucket.tokens) / self.per_sec,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_user_gets_the_burst_then_the_rate_and_others_are_unaffected() {
        let limiter = RateLimiter::new(&Limits {
            rate_per_minute: 60,
            rate_burst: 2,
            ..Limits::default()
        });
        assert!(limiter.check("alice").is_ok());
        assert!(limiter.check("alice").is_ok());
        let wait = limiter.check("alice").unwrap_err();
        assert_eq!(wait, Duration::from_secs(1));
        assert!(limiter.check("bob").is_ok(), "bob has his own bucket");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(limiter.check("alice").is_ok());
        assert!(limiter.check("alice").is_err());
    }
}
