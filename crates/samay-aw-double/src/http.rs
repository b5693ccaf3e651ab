//! The REST routes, shaped like aw-server-rust's `aw-server/src/endpoints/bucket.rs`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::store::{format_timestamp, BucketInfo, DoubleError, RawEvent};
use super::Shared;

/// A POSTed body larger than this is refused; big enough for any bulk insert a test makes.
const MAX_BODY_BYTES: usize = 1 << 30;

pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/api/0/info", get(info))
        .route("/api/0/buckets/", get(buckets))
        .route("/api/0/buckets", get(buckets))
        .route(
            "/api/0/buckets/{bucket}",
            get(bucket_get).post(bucket_create).delete(bucket_delete),
        )
        .route(
            "/api/0/buckets/{bucket}/events",
            get(events_get).post(events_create),
        )
        .route("/api/0/buckets/{bucket}/events/count", get(events_count))
        .route(
            "/api/0/buckets/{bucket}/events/{event_id}",
            get(event_get).delete(event_delete),
        )
        .route("/api/0/buckets/{bucket}/heartbeat", post(heartbeat))
        .route("/api/0/query/", post(query))
        // Not aw-server's: how many requests the double answered, for benchmarks that run it
        // as its own process.
        .route("/_double/requests", get(requests))
        .route("/api/0/query", post(query))
        .fallback(|| async { message(StatusCode::NOT_FOUND, "Not Found") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(shared)
}

/// aw-server-rust's error body: `{"message": "..."}`.
fn message(status: StatusCode, text: impl Into<String>) -> Response {
    let body = json!({ "message": text.into() }).to_string();
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(body),
    )
        .into_response()
}

fn error(e: DoubleError) -> Response {
    match e {
        DoubleError::BucketNotFound(_) | DoubleError::EventNotFound { .. } => {
            message(StatusCode::NOT_FOUND, e.to_string())
        }
        // A 304 carries no body.
        DoubleError::BucketExists(_) => StatusCode::NOT_MODIFIED.into_response(),
        DoubleError::Invalid(_) => message(StatusCode::BAD_REQUEST, e.to_string()),
        DoubleError::Full(_) | DoubleError::Internal(_) => {
            message(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}

fn json_bytes(bytes: Vec<u8>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(bytes),
    )
        .into_response()
}

fn json_value(value: &Value) -> Response {
    json_bytes(value.to_string().into_bytes())
}

/// aw-server-rust answers 400 unless the Host is loopback by name or address (DNS rebinding
/// protection, `hostcheck.rs`).
fn host_ok(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        // HTTP/1.0 without Host: nothing to rebind.
        return true;
    };
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(n, _)| n)
    };
    matches!(name, "localhost" | "127.0.0.1" | "::1")
}

macro_rules! check_host {
    ($headers:expr) => {
        if !host_ok(&$headers) {
            return message(StatusCode::BAD_REQUEST, "Host header is not allowed");
        }
    };
}

async fn info(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    check_host!(headers);
    json_value(&json!({
        "hostname": s.hostname,
        "version": s.version,
        "testing": s.testing,
        "device_id": s.device_id(),
    }))
}

fn bucket_json(db: &super::Db, id: &str) -> Result<Value, DoubleError> {
    let info = db.bucket_info(id)?;
    let span = db.bucket_span(id)?;
    let last_updated = db.last_updated(id)?;
    Ok(json!({
        "id": info.id,
        "type": info.bucket_type,
        "client": info.client,
        "hostname": info.hostname,
        "created": info.created,
        "data": info.data,
        "metadata": {
            "start": span.map(|(s, _)| format_timestamp(s)),
            "end": span.map(|(_, e)| format_timestamp(e)),
        },
        "events": Value::Null,
        "last_updated": last_updated.map(format_timestamp),
    }))
}

async fn buckets(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    check_host!(headers);
    let db = s.read();
    let mut map = Map::new();
    for id in db.bucket_ids() {
        match bucket_json(&db, &id) {
            Ok(v) => {
                map.insert(id, v);
            }
            Err(e) => return error(e),
        }
    }
    json_value(&Value::Object(map))
}

async fn bucket_get(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(bucket): Path<String>,
) -> Response {
    check_host!(headers);
    let db = s.read();
    match bucket_json(&db, &bucket) {
        Ok(v) => json_value(&v),
        Err(e) => error(e),
    }
}

/// `POST /api/0/buckets/{id}`: aw-models' `Bucket` (type, client and hostname required).
#[derive(Deserialize)]
struct NewBucket {
    #[serde(rename = "type")]
    bucket_type: String,
    client: String,
    hostname: String,
    #[serde(default)]
    created: Option<DateTime<Utc>>,
    #[serde(default)]
    data: Map<String, Value>,
}

async fn bucket_create(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(bucket): Path<String>,
    body: Bytes,
) -> Response {
    check_host!(headers);
    let new: NewBucket = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return message(StatusCode::BAD_REQUEST, format!("Bad Request: {e}")),
    };
    let info = BucketInfo {
        id: bucket,
        bucket_type: new.bucket_type,
        client: new.client,
        hostname: new.hostname,
        created: new.created.unwrap_or_else(Utc::now),
        data: new.data,
    };
    match s.write().create_bucket(info) {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => error(e),
    }
}

async fn bucket_delete(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(bucket): Path<String>,
) -> Response {
    check_host!(headers);
    match s.write().delete_bucket(&bucket) {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => error(e),
    }
}

/// Parses `start`/`end` like aw-server-rust: RFC 3339 (a `+` that arrived unencoded is a
/// space by now and fails), inside the nanosecond range. The error is the 400's message.
fn time_param(
    query: &HashMap<String, String>,
    key: &str,
    name: &str,
) -> Result<Option<i64>, String> {
    let Some(text) = query.get(key) else {
        return Ok(None);
    };
    match DateTime::parse_from_rfc3339(text) {
        Ok(t) => match t.timestamp_nanos_opt() {
            Some(ns) => Ok(Some(ns)),
            None => Err(format!(
                "{name} {text} is outside the supported range (1677-2262)"
            )),
        },
        Err(e) => Err(format!(
            "Failed to parse {name}, datetime needs to be in rfc3339 format: {e}"
        )),
    }
}

async fn events_get(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(bucket): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    check_host!(headers);
    let start = match time_param(&query, "start", "starttime") {
        Ok(t) => t,
        Err(m) => return message(StatusCode::BAD_REQUEST, m),
    };
    let end = match time_param(&query, "end", "endtime") {
        Ok(t) => t,
        Err(m) => return message(StatusCode::BAD_REQUEST, m),
    };
    // Rocket's `Option<u64>` guard: absent, `-1` or anything unparsable all mean "no limit".
    let limit = query.get("limit").and_then(|l| l.parse::<u64>().ok());
    // Serialising a large bucket takes a while: keep it off the async workers.
    let result =
        tokio::task::spawn_blocking(move || s.read().query_json(&bucket, start, end, limit)).await;
    match result {
        Ok(Ok(bytes)) => json_bytes(bytes),
        Ok(Err(e)) => error(e),
        Err(e) => message(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// aw-server-rust's count handler passes no range to the datastore: whatever `start`/`end` the
/// request names, the whole bucket is counted (Python aw-server honours them).
async fn events_count(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(bucket): Path<String>,
) -> Response {
    check_host!(headers);
    let result = tokio::task::spawn_blocking(move || s.read().count(&bucket)).await;
    match result {
        Ok(Ok(n)) => json_value(&json!(n)),
        Ok(Err(e)) => error(e),
        Err(e) => message(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn requests(State(s): State<Arc<Shared>>) -> Response {
    json_value(&json!(s
        .requests
        .load(std::sync::atomic::Ordering::Relaxed)))
}

/// `POST /api/0/query/`.
#[derive(Deserialize)]
struct QueryRequest {
    query: Vec<String>,
    timeperiods: Vec<String>,
}

async fn query(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    check_host!(headers);
    let request: QueryRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return message(StatusCode::BAD_REQUEST, format!("Bad Request: {e}")),
    };
    let parsed = match super::query::parse(&request.query) {
        Ok(q) => q,
        Err(m) => return message(StatusCode::BAD_REQUEST, m),
    };
    let periods = match request
        .timeperiods
        .iter()
        .map(|p| super::query::period(p))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(p) => p,
        Err(m) => return message(StatusCode::BAD_REQUEST, m),
    };
    let result =
        tokio::task::spawn_blocking(move || s.read().sum_durations(&parsed.bucket, &periods)).await;
    match result {
        Ok(Ok(sums)) => json_value(&json!(sums)),
        // aw-server-rust's query errors for a missing bucket are 500 `BucketQueryError`s.
        Ok(Err(DoubleError::BucketNotFound(b))) => message(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("Failed to find bucket '{b}'"),
        ),
        Ok(Err(e)) => error(e),
        Err(e) => message(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// An event as POSTed: aw-models' `Event` (`duration` defaults to 0, `data` is required).
#[derive(Deserialize)]
struct InEvent {
    #[serde(default)]
    id: Option<i64>,
    timestamp: DateTime<Utc>,
    #[serde(default)]
    duration: f64,
    data: Map<String, Value>,
}

impl InEvent {
    fn into_raw(self) -> Result<(Option<i64>, RawEvent), DoubleError> {
        let event = crate::Event {
            id: None,
            timestamp: self.timestamp,
            duration: self.duration,
            data: self.data,
        };
        Ok((self.id, RawEvent::from_event(&event)?))
    }
}

async fn events_create(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(bucket): Path<String>,
    body: Bytes,
) -> Response {
    check_host!(headers);
    let events: Vec<InEvent> = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => return message(StatusCode::BAD_REQUEST, format!("Bad Request: {e}")),
    };
    // All or nothing, like aw-server-rust's up-front duration check.
    let raws = match events
        .into_iter()
        .map(InEvent::into_raw)
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(r) => r,
        Err(e) => return error(e),
    };
    let mut db = s.write();
    match db.insert(&bucket, raws) {
        Ok(ids) => {
            let mut out = Vec::with_capacity(ids.len() * 200);
            out.push(b'[');
            for (i, id) in ids.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                if let Ok(e) = db.get_event(&bucket, *id) {
                    super::store::write_event_json(&mut out, &e.as_ref());
                }
            }
            out.push(b']');
            json_bytes(out)
        }
        Err(e) => error(e),
    }
}

fn event_id(text: &str) -> Option<i64> {
    text.parse().ok()
}

async fn event_get(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((bucket, id)): Path<(String, String)>,
) -> Response {
    check_host!(headers);
    let Some(id) = event_id(&id) else {
        return message(StatusCode::NOT_FOUND, "Not Found");
    };
    let db = s.read();
    match db.get_event(&bucket, id) {
        Ok(e) => {
            let mut out = Vec::with_capacity(256);
            super::store::write_event_json(&mut out, &e.as_ref());
            json_bytes(out)
        }
        Err(e) => error(e),
    }
}

async fn event_delete(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((bucket, id)): Path<(String, String)>,
) -> Response {
    check_host!(headers);
    let Some(id) = event_id(&id) else {
        return message(StatusCode::NOT_FOUND, "Not Found");
    };
    match s.write().delete_event(&bucket, id) {
        Ok(_) => StatusCode::OK.into_response(),
        Err(e) => error(e),
    }
}

async fn heartbeat(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(bucket): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    check_host!(headers);
    let Some(pulsetime) = query.get("pulsetime").and_then(|p| p.parse::<f64>().ok()) else {
        return message(
            StatusCode::BAD_REQUEST,
            "Bad Request: pulsetime is required and must be a number",
        );
    };
    let event: InEvent = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => return message(StatusCode::BAD_REQUEST, format!("Bad Request: {e}")),
    };
    let raw = match event.into_raw() {
        Ok((_, raw)) => raw,
        Err(e) => return error(e),
    };
    match s.write().heartbeat(&bucket, raw, pulsetime) {
        Ok(outcome) => match serde_json::to_value(outcome.event()) {
            Ok(v) => json_value(&v),
            Err(e) => message(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
        Err(e) => error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_hosts_pass() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::HOST, v.parse().unwrap());
            host_ok(&m)
        };
        assert!(h("127.0.0.1:5600"));
        assert!(h("localhost"));
        assert!(h("[::1]:5600"));
        assert!(!h("evil.example:5600"));
        assert!(!h("127.0.0.1.evil.example"));
    }
}
