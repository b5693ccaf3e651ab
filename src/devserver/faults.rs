//! Fault injection: the failures a real upstream and the network between produce, on demand, so
//! tests can prove the sync engine survives each one. Settings are shared between the
//! in-process handle ([`Faults`]) and `POST /v1/_faults` (for tests that run the server in
//! another process); the countdowns are consumed by batch requests only.

use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Default limit for a batch body, on the wire and after gzip decompression.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 16 * 1024 * 1024;

/// What to break. Countdowns (`u32`) apply to the next N batch requests, each decremented when
/// it fires. Order within one request: `slow_ms`, `drop_before_store`, `fail_500`, `fail_429`,
/// then the normal path (auth, body limit, parse, validation, rejects), then after the commit
/// `drop_after_store`, `garbage_answers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultSettings {
    /// Answer the next N batch requests 500 without reading them.
    pub fail_500: u32,
    /// Answer the next N batch requests 429 with `Retry-After: retry_after_secs`.
    pub fail_429: u32,
    pub retry_after_secs: u64,
    /// Sleep this long before handling every batch request (not a countdown).
    pub slow_ms: u64,
    /// Close the connection without an answer, before storing anything.
    pub drop_before_store: u32,
    /// Store and commit the batch, then close the connection without an answer: the case where
    /// the client cannot know its batch arrived.
    pub drop_after_store: u32,
    /// Events in these buckets are "poison": the batch is answered 422 with their indexes.
    pub reject_bucket_ids: Vec<String>,
    /// Events whose `data` has this key are "poison" (422 with their indexes).
    pub reject_data_key: Option<String>,
    /// Store and commit the batch, then answer 200 with a body that is not JSON.
    pub garbage_answers: u32,
    /// Bodies above this (wire or decompressed) are answered 413.
    pub max_body_bytes: u64,
}

impl Default for FaultSettings {
    fn default() -> Self {
        Self {
            fail_500: 0,
            fail_429: 0,
            retry_after_secs: 1,
            slow_ms: 0,
            drop_before_store: 0,
            drop_after_store: 0,
            reject_bucket_ids: Vec::new(),
            reject_data_key: None,
            garbage_answers: 0,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

/// What the server saw, for tests that assert on traffic rather than on stored data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultCounters {
    /// Batch requests received, whatever became of them.
    pub requests_received: u64,
    /// Batches committed (replays of a stored batch id are not counted again).
    pub batches_stored: u64,
}

/// `GET /v1/_faults` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultReport {
    pub settings: FaultSettings,
    pub counters: FaultCounters,
}

#[derive(Debug, Default)]
struct Inner {
    settings: FaultSettings,
    counters: FaultCounters,
}

/// Shared fault settings and counters. Clones share state.
#[derive(Debug, Clone, Default)]
pub struct Faults(Arc<Mutex<Inner>>);

/// The fault chosen for a request before it is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Before {
    None,
    Drop,
    Fail500,
    Fail429 { retry_after_secs: u64 },
}

/// The fault chosen for a request after its batch was committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum After {
    None,
    Drop,
    Garbage,
}

impl Faults {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the plain data inconsistent.
        self.0.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    /// Current settings.
    pub fn settings(&self) -> FaultSettings {
        self.lock().settings.clone()
    }

    /// Replaces all settings.
    pub fn set(&self, settings: FaultSettings) {
        self.lock().settings = settings;
    }

    /// Changes some settings: `faults.update(|f| f.fail_500 = 2)`.
    pub fn update(&self, change: impl FnOnce(&mut FaultSettings)) {
        change(&mut self.lock().settings);
    }

    /// Back to no faults (counters are kept).
    pub fn clear(&self) {
        self.set(FaultSettings::default());
    }

    pub fn counters(&self) -> FaultCounters {
        self.lock().counters
    }

    pub fn report(&self) -> FaultReport {
        let inner = self.lock();
        FaultReport {
            settings: inner.settings.clone(),
            counters: inner.counters,
        }
    }

    /// Applies a partial JSON object over the current settings (fields not named keep their
    /// value), as `POST /v1/_faults` does.
    pub fn merge_json(&self, patch: &Map<String, Value>) -> Result<FaultSettings, String> {
        let mut inner = self.lock();
        let mut current = match serde_json::to_value(&inner.settings) {
            Ok(Value::Object(map)) => map,
            _ => return Err("fault settings did not serialize to an object".into()),
        };
        for (key, value) in patch {
            current.insert(key.clone(), value.clone());
        }
        let merged: FaultSettings =
            serde_json::from_value(Value::Object(current)).map_err(|e| e.to_string())?;
        inner.settings = merged.clone();
        Ok(merged)
    }

    pub(crate) fn max_body_bytes(&self) -> u64 {
        self.lock().settings.max_body_bytes
    }

    pub(crate) fn slow_ms(&self) -> u64 {
        self.lock().settings.slow_ms
    }

    pub(crate) fn poison(&self) -> (Vec<String>, Option<String>) {
        let inner = self.lock();
        (
            inner.settings.reject_bucket_ids.clone(),
            inner.settings.reject_data_key.clone(),
        )
    }

    /// Counts the request and consumes the first pre-store fault that is armed.
    pub(crate) fn take_before(&self) -> Before {
        let mut inner = self.lock();
        inner.counters.requests_received += 1;
        let s = &mut inner.settings;
        if take(&mut s.drop_before_store) {
            Before::Drop
        } else if take(&mut s.fail_500) {
            Before::Fail500
        } else if take(&mut s.fail_429) {
            Before::Fail429 {
                retry_after_secs: s.retry_after_secs,
            }
        } else {
            Before::None
        }
    }

    /// Counts the stored batch and consumes the first post-store fault that is armed.
    pub(crate) fn take_after(&self) -> After {
        let mut inner = self.lock();
        inner.counters.batches_stored += 1;
        let s = &mut inner.settings;
        if take(&mut s.drop_after_store) {
            After::Drop
        } else if take(&mut s.garbage_answers) {
            After::Garbage
        } else {
            After::None
        }
    }
}

fn take(countdown: &mut u32) -> bool {
    if *countdown > 0 {
        *countdown -= 1;
        true
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn countdowns_fire_n_times_in_order() {
        let f = Faults::default();
        f.update(|s| {
            s.fail_500 = 1;
            s.drop_before_store = 1;
        });
        assert_eq!(f.take_before(), Before::Drop);
        assert_eq!(f.take_before(), Before::Fail500);
        assert_eq!(f.take_before(), Before::None);
        assert_eq!(f.counters().requests_received, 3);
    }

    #[test]
    fn merge_keeps_unnamed_fields_and_refuses_unknown_ones() {
        let f = Faults::default();
        f.update(|s| s.slow_ms = 5);
        let patch = serde_json::json!({"fail_429": 2, "retry_after_secs": 7});
        let merged = f.merge_json(patch.as_object().unwrap()).unwrap();
        assert_eq!(
            (merged.slow_ms, merged.fail_429, merged.retry_after_secs),
            (5, 2, 7)
        );
        let bad = serde_json::json!({"fial_500": 1});
        assert!(f.merge_json(bad.as_object().unwrap()).is_err());
    }
}
