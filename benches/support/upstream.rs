//! An upstream that acknowledges at once: it keeps each batch body as it arrived (gzip and all)
//! and answers 200 with the number of events, so the benchmark measures the sync and its source,
//! not a database. The bodies are decoded and checked against the source after the clock stops.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::json;

use aw_sync_samay::upstream::contract::BatchRequest;

#[derive(Default)]
struct Inner {
    bodies: Vec<(bool, Bytes)>,
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

#[derive(Deserialize)]
struct CountOnly {
    events: Vec<IgnoredAny>,
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
        gunzip(&body).and_then(|b| Ok(serde_json::from_slice::<CountOnly>(&b)?))
    } else {
        serde_json::from_slice::<CountOnly>(&body).map_err(Into::into)
    };
    match counted {
        Ok(c) => {
            let mut g = lock(&inner);
            g.requests += 1;
            g.bodies.push((gz, body));
            (
                StatusCode::OK,
                Json(json!({"accepted": c.events.len(), "duplicates": 0})),
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

    /// Forgets what was received (between runs).
    pub fn clear(&self) {
        let mut g = lock(&self.inner);
        g.bodies.clear();
        g.requests = 0;
    }

    /// Every batch received, decoded.
    /// Events received since the last [`AckUpstream::clear`].
    pub fn events(&self) -> anyhow::Result<usize> {
        Ok(self.batches()?.iter().map(|b| b.events.len()).sum())
    }

    pub fn batches(&self) -> anyhow::Result<Vec<BatchRequest>> {
        let bodies: Vec<(bool, Bytes)> = lock(&self.inner).bodies.clone();
        bodies
            .iter()
            .map(|(gz, b)| {
                let raw = if *gz { gunzip(b)? } else { b.to_vec() };
                serde_json::from_slice(&raw).context("a batch body is not a BatchRequest")
            })
            .collect()
    }
}
