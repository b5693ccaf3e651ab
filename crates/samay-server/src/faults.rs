//! Fault injection: the failures a real upstream and the network between produce, on demand, so
//! tests can prove the sync engine survives each one. Settings are shared between the
//! in-process handle ([`Faults`]) and `POST /v1/_faults` (for tests that run the server in
//! another process); the countdowns are consumed by batch requests only.
//!
//! The server also keeps a log of the last batch requests ([`Faults::requests`]): when each
//! arrived, which batch it carried and what it was answered, so a test can prove *when* a
//! client retried (after `Retry-After`, say) from what the server saw rather than from its own
//! clock.
//!
//! All of it is behind the `faults` cargo feature (tests turn it on through their
//! dev-dependencies): a server built without it — the sidecar's `--dev`, a plain
//! `samay-dev-server` — has no `/v1/_faults`, no switches, no request log.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::http::error;
use super::DEFAULT_MAX_BODY_BYTES;
use samay_api::UpEvent;

/// Batch requests remembered by [`Faults::requests`]; older ones are forgotten, so a long-running
/// dev server does not grow.
pub const REQUEST_LOG_LEN: usize = 10_000;

/// What to break. Countdowns (`u32`) apply to the next N batch requests, each decremented when
/// it fires. Order within one request: `slow_ms`, `drop_before_store`, `fail_500`, `fail_429`,
/// then the normal path (auth, body limit, parse, validation, rejects), then after the commit
/// `drop_after_store`, `garbage_answers`, `slow_answers` (at most one of these three per request;
/// a replay of a stored batch id consumes none of them).
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
    /// Store and commit the batch, then wait `slow_answer_ms` before answering: an answer slower
    /// than the client's timeout, for a batch that did arrive. A countdown, unlike `slow_ms`, so
    /// the client's retry is answered in time.
    pub slow_answers: u32,
    pub slow_answer_ms: u64,
    /// Bodies above this (wire or decompressed) are answered 413.
    pub max_body_bytes: u64,
    /// Answer `GET v1/me` 404, as an upstream written before it existed.
    pub no_me: bool,
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
            slow_answers: 0,
            // Longer than any sensible client timeout: `slow_answers: 1` alone does what it says.
            slow_answer_ms: 60_000,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            no_me: false,
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

/// One batch request as the server saw it. In-process only (`Instant`s mean nothing elsewhere).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// When the request reached the batch handler (before `slow_ms`).
    pub received: Instant,
    /// When the answer was handed to the connection (or the connection closed by a fault);
    /// `None` when the client went away before the handler finished.
    pub answered: Option<Instant>,
    /// Its `Idempotency-Key` header, when it had a readable one (the batch id).
    pub idempotency_key: Option<String>,
    /// The status answered; `None` when no answer was sent (a `drop_*` fault, or the client
    /// went away first).
    pub status: Option<u16>,
}

/// Where a batch request is when a [`BatchHook`] is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchStage {
    /// Arrived at the batch handler (after `slow_ms`); nothing read or stored yet.
    Received,
    /// Newly stored and committed (not a replay); the answer is not sent yet.
    Stored,
}

/// What a [`BatchHook`] may return: the request goes on only once this future completes.
pub type BatchHookFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Called at each [`BatchStage`] of every batch request. Returning a future holds the request
/// there until it completes. In-process only: a crash test uses it to kill its client while a
/// batch is provably at the server, or right as one is answered — points that slowing the
/// server down and polling from outside only make likely.
pub type BatchHook = Arc<dyn Fn(BatchStage) -> Option<BatchHookFuture> + Send + Sync>;

#[derive(Default)]
struct Inner {
    settings: FaultSettings,
    counters: FaultCounters,
    log: VecDeque<RequestRecord>,
    hook: Option<BatchHook>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("settings", &self.settings)
            .field("counters", &self.counters)
            .field("log", &self.log)
            .field("hook", &self.hook.as_ref().map(|_| "set"))
            .finish()
    }
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
    Slow { ms: u64 },
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

    /// The last [`REQUEST_LOG_LEN`] batch requests, in the order their handling ended (sort by
    /// `received` for arrival order). Kept by [`Faults::clear`], like the counters.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.lock().log.iter().cloned().collect()
    }

    /// Installs (or, with `None`, removes) the [`BatchHook`]. Kept by [`Faults::clear`].
    pub fn set_batch_hook(&self, hook: Option<BatchHook>) {
        self.lock().hook = hook;
    }

    /// Runs the hook, if any, for a request at `stage`, and waits for what it returned.
    pub(crate) async fn at_stage(&self, stage: BatchStage) {
        let hook = self.lock().hook.clone();
        if let Some(hold) = hook.and_then(|hook| hook(stage)) {
            hold.await;
        }
    }

    pub(crate) fn log(&self, record: RequestRecord) {
        let mut inner = self.lock();
        if inner.log.len() >= REQUEST_LOG_LEN {
            inner.log.pop_front();
        }
        inner.log.push_back(record);
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
        } else if take(&mut s.slow_answers) {
            After::Slow {
                ms: s.slow_answer_ms,
            }
        } else {
            After::None
        }
    }
}

impl Faults {
    /// Before a batch request is handled: the delay, the hook, then the first armed pre-store
    /// fault as the answer to send instead (`None`: handle the request).
    pub(crate) async fn before_batch(&self) -> Option<Response> {
        let slow_ms = self.slow_ms();
        if slow_ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(slow_ms)).await;
        }
        self.at_stage(BatchStage::Received).await;
        match self.take_before() {
            Before::Drop => Some(drop_connection()),
            Before::Fail500 => Some(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "injected fault: fail_500",
            )),
            Before::Fail429 { retry_after_secs } => {
                let mut response = error(StatusCode::TOO_MANY_REQUESTS, "injected fault: fail_429");
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, retry_after_secs.into());
                Some(response)
            }
            Before::None => None,
        }
    }

    /// After a new batch was committed: the hook, then the first armed post-store fault applied
    /// to `answer` (the 200 the client would get).
    pub(crate) async fn after_store(&self, answer: Response) -> Response {
        self.at_stage(BatchStage::Stored).await;
        match self.take_after() {
            After::Drop => drop_connection(),
            After::Garbage => (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/html")],
                "<html>garbage: injected fault</html>",
            )
                .into_response(),
            After::Slow { ms } => {
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                answer
            }
            After::None => answer,
        }
    }

    /// Whether an event is "poison" (the `reject_*` settings): a closure over one snapshot of
    /// the settings, for one batch.
    pub(crate) fn poison_check(&self) -> impl Fn(&UpEvent) -> bool {
        let (buckets, key) = self.poison();
        move |event| {
            buckets.contains(&event.bucket_id)
                || key
                    .as_ref()
                    .is_some_and(|k| event.data_map().is_ok_and(|d| d.contains_key(k)))
        }
    }

    /// The index page's sentence about this process: its counters, and where the switches are.
    pub(crate) fn page_note(&self) -> String {
        let c = self.counters();
        format!(
            " Since this server started: {} batch request(s) received, {} batch(es) stored (replays of a stored batch are answered, not stored again). Fault switches: <a href=\"/v1/_faults\">/v1/_faults</a>.",
            c.requests_received, c.batches_stored
        )
    }
}

/// Logs the request in [`Faults::requests`] when its answer is ready, or, if the handler is
/// dropped first (the client went away), when it is dropped.
pub(crate) struct RequestLog {
    faults: Faults,
    record: Option<RequestRecord>,
}

impl RequestLog {
    pub(crate) fn start(faults: &Faults, headers: &HeaderMap) -> RequestLog {
        RequestLog {
            faults: faults.clone(),
            record: Some(RequestRecord {
                received: Instant::now(),
                answered: None,
                idempotency_key: headers
                    .get("idempotency-key")
                    .and_then(|k| k.to_str().ok())
                    .map(|k| k.trim().to_string()),
                status: None,
            }),
        }
    }

    pub(crate) fn answered(mut self, response: &Response) {
        if let Some(mut record) = self.record.take() {
            record.answered = Some(Instant::now());
            if response.extensions().get::<DropConnection>().is_none() {
                record.status = Some(response.status().as_u16());
            }
            self.faults.log(record);
        }
    }
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        if let Some(record) = self.record.take() {
            self.faults.log(record);
        }
    }
}

/// Marker on a response: the connection wrapper closes the connection instead of sending it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DropConnection;

pub(crate) fn drop_connection() -> Response {
    let mut response = StatusCode::INTERNAL_SERVER_ERROR.into_response();
    response.extensions_mut().insert(DropConnection);
    response
}

/// The service error that makes hyper close the connection without writing a response: how
/// the `drop_*` faults simulate a connection lost before the answer arrived.
#[derive(Debug)]
pub(crate) struct DroppedByFault;

impl std::fmt::Display for DroppedByFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by fault injection")
    }
}

impl std::error::Error for DroppedByFault {}

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
    fn after_store_faults_fire_once_each_in_order() {
        let f = Faults::default();
        f.update(|s| {
            s.slow_answers = 1;
            s.slow_answer_ms = 7;
            s.garbage_answers = 1;
            s.drop_after_store = 1;
        });
        assert_eq!(f.take_after(), After::Drop);
        assert_eq!(f.take_after(), After::Garbage);
        assert_eq!(f.take_after(), After::Slow { ms: 7 });
        assert_eq!(f.take_after(), After::None);
        assert_eq!(f.counters().batches_stored, 4);
    }

    #[test]
    fn the_request_log_is_bounded_and_keeps_the_newest() {
        let f = Faults::default();
        let now = Instant::now();
        for i in 0..REQUEST_LOG_LEN + 5 {
            f.log(RequestRecord {
                received: now,
                answered: None,
                idempotency_key: Some(i.to_string()),
                status: Some(200),
            });
        }
        let log = f.requests();
        assert_eq!(log.len(), REQUEST_LOG_LEN);
        assert_eq!(log[0].idempotency_key.as_deref(), Some("5"));
        f.clear();
        assert_eq!(f.requests().len(), REQUEST_LOG_LEN, "clear keeps the log");
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
