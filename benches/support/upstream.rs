//! An upstream that acknowledges at once: it keeps each batch body as it arrived (gzip and all)
//! and answers 200 with the number of events, so the benchmark measures the sync and its source,
//! not a database. The bodies are decoded and checked against the source after the clock stops.
//!
//! It counts a body's events by skimming its structure ([`count_events`]), not by parsing it:
//! a real upstream runs on another machine, and this one shares the sync's two cores. Counted
//! with serde_json, it took 0.72–0.83 s of CPU during a 1M-event catch-up, a tenth of all the
//! CPU the catch-up's three processes spent, on cores the sync and its source wait for. Every
//! count is checked against serde_json's parse of the same body after the clock stops
//! ([`AckUpstream::batches`]).

use std::io::Read;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use aw_sync_samay::upstream::contract::BatchRequest;

#[derive(Default)]
struct Inner {
    /// Every body received, back to back ([`AckUpstream::prepare`]).
    arena: Vec<u8>,
    /// Each body as it arrived: gzipped or not, where it is in `arena`, the events it was
    /// acknowledged for.
    bodies: Vec<(bool, Range<usize>, usize)>,
    requests: u64,
}

/// The acknowledging upstream; runs on the caller's tokio runtime until dropped.
pub struct AckUpstream {
    addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for AckUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The number of elements of the array under the top-level key `"events"` of the JSON object
/// `body`, following only its structure: strings are crossed with `memchr` (to the next quote
/// or backslash), brackets and commas counted outside them. `None` when the body is not an
/// object, has no such array, or ends first. Nothing inside an element is validated: the
/// parse after the clock stops does that, and checks this count.
pub fn count_events(body: &[u8]) -> Option<usize> {
    let ws = |at: &mut usize| {
        while matches!(body.get(*at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            *at += 1;
        }
    };
    let string_end = |mut at: usize| -> Option<usize> {
        at += 1;
        loop {
            at += memchr::memchr2(b'"', b'\\', body.get(at..)?)?;
            if body[at] == b'"' {
                return Some(at + 1);
            }
            at += 2;
        }
    };
    let mut at = 0;
    ws(&mut at);
    if body.get(at) != Some(&b'{') {
        return None;
    }
    at += 1;
    // Depth counted from inside the top-level object: a string right after its `{` or one of
    // its commas is one of its keys.
    let (mut depth, mut key_next) = (0usize, true);
    while let Some(&b) = body.get(at) {
        match b {
            b'"' => {
                let end = string_end(at)?;
                let is_events = key_next && &body[at + 1..end - 1] == b"events";
                key_next = false;
                at = end;
                if is_events {
                    ws(&mut at);
                    if body.get(at) != Some(&b':') {
                        return None;
                    }
                    at += 1;
                    ws(&mut at);
                    if body.get(at) != Some(&b'[') {
                        return None;
                    }
                    at += 1;
                    ws(&mut at);
                    if body.get(at) == Some(&b']') {
                        return Some(0);
                    }
                    let (mut inner, mut commas) = (0usize, 0usize);
                    while let Some(&b) = body.get(at) {
                        match b {
                            b'"' => {
                                at = string_end(at)?;
                                continue;
                            }
                            b'{' | b'[' => inner += 1,
                            b'}' | b']' if inner == 0 => return Some(commas + 1),
                            b'}' | b']' => inner -= 1,
                            b',' if inner == 0 => commas += 1,
                            _ => {}
                        }
                        at += 1;
                    }
                    return None;
                }
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' if depth == 0 => return None,
            b'}' | b']' => depth -= 1,
            b',' if depth == 0 => key_next = true,
            _ => {}
        }
        at += 1;
    }
    None
}

impl Inner {
    /// Forgets what was received; the arena keeps its memory.
    fn reset(&mut self) {
        self.arena.clear();
        self.bodies.clear();
        self.requests = 0;
    }
}

fn lock(inner: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    inner.lock().unwrap_or_else(|p| p.into_inner())
}

fn gunzip(body: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(body.len() * 6);
    flate2::read::GzDecoder::new(body)
        .read_to_end(&mut out)
        .context("gunzip")?;
    Ok(out)
}

async fn batch(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, Json<serde_json::Value>) {
    let gz = headers
        .get("content-encoding")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    // Counting the events is the least an upstream does before it acknowledges them.
    let counted = if gz {
        gunzip(&body).map(|b| count_events(&b))
    } else {
        Ok(count_events(&body))
    }
    .and_then(|c| c.context("not a JSON object with an array \"events\""));
    match counted {
        Ok(n) => {
            let mut g = lock(&inner);
            g.requests += 1;
            let at = g.arena.len();
            g.arena.extend_from_slice(&body);
            g.bodies.push((gz, at..at + body.len(), n));
            (
                StatusCode::OK,
                Json(json!({"accepted": n, "duplicates": 0})),
            )
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": format!("{e:#}")})),
        ),
    }
}

impl AckUpstream {
    pub async fn start() -> anyhow::Result<AckUpstream> {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let router = Router::new()
            .route("/v1/health", get(|| async { Json(json!({"ok": true})) }))
            .route("/v1/events/batch", post(batch))
            .layer(DefaultBodyLimit::disable())
            .with_state(Arc::clone(&inner));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(AckUpstream { addr, inner, task })
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> u64 {
        lock(&self.inner).requests
    }

    /// Bytes of bodies received since the last [`AckUpstream::clear`].
    pub fn bytes(&self) -> usize {
        lock(&self.inner).arena.len()
    }

    /// Forgets what was received (between runs).
    pub fn clear(&self) {
        lock(&self.inner).reset();
    }

    /// [`AckUpstream::clear`], and room for `bytes` of bodies in memory already faulted in,
    /// before a measured run: kept as they arrived, each body was fresh memory that the kernel
    /// faulted in and zeroed page by page (a 1M-event catch-up's 0.3 GB: more than half of
    /// this process's CPU while the sync ran, perf), on the cores the sync and its source share.
    /// Copied into memory touched beforehand, the body's own buffer is freed and reused.
    pub fn prepare(&self, bytes: usize) {
        let mut g = lock(&self.inner);
        g.reset();
        g.arena.reserve(bytes);
        for b in g.arena.spare_capacity_mut() {
            b.write(0);
        }
    }

    /// Every batch received, decoded.
    /// Events received since the last [`AckUpstream::clear`].
    pub fn events(&self) -> anyhow::Result<usize> {
        Ok(self.batches()?.iter().map(|b| b.events.len()).sum())
    }

    /// Fails when a body is not a [`BatchRequest`], or holds another number of events than
    /// it was acknowledged for.
    pub fn batches(&self) -> anyhow::Result<Vec<BatchRequest>> {
        let g = lock(&self.inner);
        g.bodies
            .iter()
            .map(|(gz, at, counted)| {
                let body = g.arena.get(at.clone()).context("a body past the arena")?;
                let gunzipped;
                let raw = if *gz {
                    gunzipped = gunzip(body)?;
                    &gunzipped[..]
                } else {
                    body
                };
                let batch: BatchRequest =
                    serde_json::from_slice(raw).context("a batch body is not a BatchRequest")?;
                anyhow::ensure!(
                    batch.events.len() == *counted,
                    "a batch of {} events was acknowledged for {counted}",
                    batch.events.len()
                );
                Ok(batch)
            })
            .collect()
    }
}

/// [`count_events`] against serde_json on bodies made to mislead it: `"events"` as a nested key
/// and inside strings, brackets and escaped quotes in strings, whitespace everywhere, and bodies
/// cut short or of another shape. Run by the suite (`cargo test` runs this bench target
/// without `--bench`), so the count the benchmark acknowledges with is a tested one.
pub fn check_count_events() -> anyhow::Result<()> {
    let events = r#"[{"bucket_id":"b\"]","event_id":1,"data":{"events":[1,2],"t":"}],\\"}},
        {"bucket_id":"b","event_id":2,"data":{"a":[{"b":"[,"}]}} , {"event_id":3,"data":{}}]"#;
    let counted = [
        format!(r#"{{"batch_id":"x","buckets":{{"events":[{{}}]}},"events":{events}}}"#),
        format!(r#" {{ "note" : "\"events\":[1]" , "events" : {events} , "deletions":[] }} "#),
        r#"{"events":[]}"#.to_owned(),
        r#"{"events":[ ]}"#.to_owned(),
        r#"{"events":[{"data":{}}]}"#.to_owned(),
    ];
    for body in &counted {
        let parsed: serde_json::Value = serde_json::from_str(body).context("a test body")?;
        let want = parsed["events"].as_array().map(Vec::len);
        anyhow::ensure!(
            count_events(body.as_bytes()) == want && want.is_some(),
            "count_events({body}) = {:?}, serde_json: {want:?}",
            count_events(body.as_bytes())
        );
    }
    for body in [
        "",
        "[]",
        r#"{"other":[1]}"#,
        r#"{"events":{}}"#,
        r#"{"events":[{"a":1}"#,
        r#"{"x":"events":[1]}"#,
        r#"{"data":{"events":[1,2]}}"#,
        r#"{"data":{"a":1,"events":[1,2]}}"#,
    ] {
        anyhow::ensure!(
            count_events(body.as_bytes()).is_none(),
            "count_events({body}) should be None"
        );
    }
    Ok(())
}
