//! The dev server's routes: the batch API as `docs/upstream-api.md` specifies it, plus the
//! unauthenticated inspection and fault endpoints that only make sense on loopback.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper::body::Body as _;
use serde::Deserialize;
#[cfg(feature = "faults")]
use serde_json::Map;
use serde_json::{json, Value};
use uuid::Uuid;

#[cfg(feature = "faults")]
use super::faults::{Faults, RequestLog};
use super::oidc::{self, Bearer, Provider};
use super::page;
use super::store::{IncomingBatch, Outcome, Store};
use samay_api::{BatchResponse, BucketMeta, Deletion, ErrorResponse, MeResponse, UpEvent};

/// Bearer token → the user (subject) it authenticates. Shared so an OAuth provider running in
/// the same process can register the tokens it issues.
pub type TokenRegistry = Arc<RwLock<HashMap<String, String>>>;

/// How long a client may take to send its body before it is answered 408.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Default and maximum number of events `GET /v1/inspect/events` returns.
const DEFAULT_EVENTS_LIMIT: u32 = 10_000;
const MAX_EVENTS_LIMIT: u32 = 1_000_000;

#[derive(Clone)]
pub(crate) struct AppState {
    pub store: Arc<Store>,
    pub tokens: TokenRegistry,
    #[cfg(feature = "faults")]
    pub faults: Faults,
    pub oidc: Arc<Provider>,
}

pub(crate) fn router(state: AppState) -> Router {
    let provider = oidc::router(state.oidc.clone());
    let router = Router::new()
        .route("/", get(index))
        .route("/events", get(events_page))
        .route("/v1/health", get(health))
        .route("/v1/me", get(me))
        .route("/v1/events/batch", post(post_batch))
        .route("/v1/inspect", get(inspect))
        .route("/v1/inspect/events", get(inspect_events));
    #[cfg(feature = "faults")]
    let router = router.route(
        "/v1/_faults",
        get(get_faults).post(post_faults).delete(delete_faults),
    );
    router
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(state)
        .merge(provider)
}

pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(ErrorResponse {
            error: message.into(),
            rejected: None,
        }),
    )
        .into_response()
}

/// 403 for a request whose `Host` is not this machine at this server's port (see
/// `devserver::serve_connection`).
pub(crate) fn wrong_host(host: Option<&str>) -> Response {
    let shown = host.map_or_else(
        || "(none)".into(),
        |h| format!("{:?}", samay_common::printable::printable(h)),
    );
    error(
        StatusCode::FORBIDDEN,
        format!("Host {shown} is not this machine: this server answers only 127.0.0.1, [::1] or localhost"),
    )
}

async fn health() -> Response {
    Json(json!({"ok": true})).into_response()
}

/// `GET /v1/me`: the user the bearer token authenticates (the key the store files its events
/// under), 401 for a token it does not know.
async fn me(State(state): State<AppState>, headers: HeaderMap) -> Response {
    #[cfg(feature = "faults")]
    if state.faults.settings().no_me {
        return error(StatusCode::NOT_FOUND, "no such endpoint");
    }
    match authenticate(&state, &headers).await {
        Bearer::User(user) => Json(MeResponse { user }).into_response(),
        Bearer::Invalid => unauthorized(),
        Bearer::Unavailable(why) => {
            tracing::warn!("cannot check a bearer token: {why}");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot check the token now",
            )
        }
    }
}

/// 401 with the RFC 6750 challenge.
fn unauthorized() -> Response {
    let mut response = error(
        StatusCode::UNAUTHORIZED,
        "missing, unknown, expired or revoked bearer token",
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer error=\"invalid_token\""),
    );
    response
}

/// The user the request's bearer token belongs to: a static token, else an access token the
/// provider issued (or the external issuer vouches for).
async fn authenticate(state: &AppState, headers: &HeaderMap) -> Bearer {
    let Some(token) = oidc::bearer_token(headers) else {
        return Bearer::Invalid;
    };
    let known = state
        .tokens
        .read()
        .unwrap_or_else(|poison| poison.into_inner())
        .get(token)
        .cloned();
    match known {
        Some(user) => Bearer::User(user),
        None => state.oidc.authenticate(token).await,
    }
}

enum ReadError {
    TooLarge,
    Broken(String),
}

/// Reads the body, refusing more than `limit` bytes without buffering them.
async fn read_limited(mut body: Body, limit: u64) -> Result<Vec<u8>, ReadError> {
    let mut out = Vec::new();
    loop {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        match frame {
            None => return Ok(out),
            Some(Err(e)) => return Err(ReadError::Broken(e.to_string())),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if (out.len() + data.len()) as u64 > limit {
                        return Err(ReadError::TooLarge);
                    }
                    out.extend_from_slice(&data);
                }
            }
        }
    }
}

/// Decompresses at most `limit` bytes, so a gzip bomb costs us `limit`, not memory exhaustion.
fn gunzip_limited(wire: &[u8], limit: u64) -> Result<Vec<u8>, ReadError> {
    let mut out = Vec::new();
    let decoder = flate2::read::GzDecoder::new(wire);
    decoder
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| ReadError::Broken(format!("bad gzip body: {e}")))?;
    if out.len() as u64 > limit {
        return Err(ReadError::TooLarge);
    }
    Ok(out)
}

/// The batch envelope, parsed leniently: buckets and events stay JSON until checked one by one,
/// so one malformed event is named by index instead of failing the whole body.
#[derive(Deserialize)]
struct Envelope {
    batch_id: Uuid,
    device_id: Uuid,
    #[serde(default)]
    hostname: String,
    #[serde(default)]
    buckets: BTreeMap<String, Value>,
    events: Vec<Value>,
    #[serde(default)]
    deletions: Vec<Deletion>,
}

/// Why some events of a batch are refused; the batch is stored not at all.
struct Rejection {
    status: StatusCode,
    message: String,
    rejected: Vec<usize>,
}

/// Checks every event; invalid ones make a 400, otherwise "poison" ones (fault settings) a 422.
/// Both lists are reported together so a client can isolate every bad event in one round.
fn validate(
    envelope: Envelope,
    is_poison: impl Fn(&UpEvent) -> bool,
) -> Result<IncomingBatch, Rejection> {
    let mut buckets = BTreeMap::new();
    let mut bad_buckets = BTreeMap::new();
    for (id, meta) in envelope.buckets {
        match serde_json::from_value::<BucketMeta>(meta) {
            Ok(meta) => {
                buckets.insert(id, meta);
            }
            Err(e) => {
                bad_buckets.insert(id, e.to_string());
            }
        }
    }
    let mut events = Vec::with_capacity(envelope.events.len());
    let mut invalid: Vec<(usize, String)> = Vec::new();
    let mut poisoned = Vec::new();
    for (i, raw) in envelope.events.into_iter().enumerate() {
        let event = match serde_json::from_value::<UpEvent>(raw) {
            Ok(event) => event,
            Err(e) => {
                invalid.push((i, format!("not an event: {e}")));
                continue;
            }
        };
        let problem = if event.bucket_id.trim().is_empty() {
            Some("empty bucket_id".to_string())
        } else if let Some(e) = bad_buckets.get(&event.bucket_id) {
            Some(format!(
                "bad metadata for bucket {:?}: {e}",
                event.bucket_id
            ))
        } else if !buckets.contains_key(&event.bucket_id) {
            Some(format!("bucket {:?} missing from buckets", event.bucket_id))
        } else if chrono::DateTime::parse_from_rfc3339(&event.timestamp).is_err() {
            Some(format!("unparsable timestamp {:?}", event.timestamp))
        } else if !event.duration.is_finite() || event.duration < 0.0 {
            Some(format!("bad duration {}", event.duration))
        } else if event.hash.is_empty() {
            Some("empty hash".to_string())
        } else {
            None
        };
        if let Some(problem) = problem {
            invalid.push((i, problem));
        } else if is_poison(&event) {
            poisoned.push(i);
        }
        events.push(event);
    }
    if let Some((first, why)) = invalid.first() {
        let mut rejected: Vec<usize> = invalid.iter().map(|(i, _)| *i).chain(poisoned).collect();
        rejected.sort_unstable();
        return Err(Rejection {
            status: StatusCode::BAD_REQUEST,
            message: format!(
                "{} invalid event(s); first: event {first}: {why}",
                invalid.len()
            ),
            rejected,
        });
    }
    if !poisoned.is_empty() {
        return Err(Rejection {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: format!(
                "{} event(s) refused by the reject_* fault settings",
                poisoned.len()
            ),
            rejected: poisoned,
        });
    }
    Ok(IncomingBatch {
        batch_id: envelope.batch_id,
        device_id: envelope.device_id,
        hostname: envelope.hostname,
        buckets,
        events,
        deletions: envelope.deletions,
    })
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> rusqlite::Result<T> + Send + 'static,
) -> Result<T, Response> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => {
            tracing::error!("dev server database: {e}");
            Err(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("database: {e}"),
            ))
        }
        Err(e) => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("database task: {e}"),
        )),
    }
}

fn ok(answer: &BatchResponse) -> Response {
    Json(answer).into_response()
}

async fn post_batch(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    #[cfg(feature = "faults")]
    let log = RequestLog::start(&state.faults, &headers);
    let response = handle_batch(&state, &headers, body).await;
    #[cfg(feature = "faults")]
    log.answered(&response);
    response
}

async fn handle_batch(state: &AppState, headers: &HeaderMap, body: Body) -> Response {
    #[cfg(feature = "faults")]
    if let Some(injected) = state.faults.before_batch().await {
        return injected;
    }
    let user = match authenticate(state, headers).await {
        Bearer::User(user) => user,
        Bearer::Invalid => return unauthorized(),
        // Not a 401: the client would throw away tokens that may well be good.
        Bearer::Unavailable(why) => {
            tracing::warn!("cannot check a bearer token: {why}");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot check the token now: {why}"),
            );
        }
    };

    #[cfg(feature = "faults")]
    let limit = state.faults.max_body_bytes();
    #[cfg(not(feature = "faults"))]
    let limit = super::DEFAULT_MAX_BODY_BYTES;
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body above {limit} bytes"),
        )
    };
    let wire = match tokio::time::timeout(BODY_READ_TIMEOUT, read_limited(body, limit)).await {
        Err(_) => return error(StatusCode::REQUEST_TIMEOUT, "body not received in time"),
        Ok(Err(ReadError::TooLarge)) => return too_large(),
        Ok(Err(ReadError::Broken(e))) => {
            return error(StatusCode::BAD_REQUEST, format!("reading body: {e}"))
        }
        Ok(Ok(wire)) => wire,
    };
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase());
    let json = match encoding.as_deref() {
        None | Some("") | Some("identity") => wire,
        Some("gzip") | Some("x-gzip") => match gunzip_limited(&wire, limit) {
            Ok(json) => json,
            Err(ReadError::TooLarge) => return too_large(),
            Err(ReadError::Broken(e)) => return error(StatusCode::BAD_REQUEST, e),
        },
        Some(other) => {
            return error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("unsupported Content-Encoding {other:?}"),
            )
        }
    };
    let envelope: Envelope = match serde_json::from_slice(&json) {
        Ok(envelope) => envelope,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("malformed batch JSON: {e}"),
            )
        }
    };
    let batch_id = envelope.batch_id;
    if let Some(key) = headers.get("idempotency-key") {
        if key
            .to_str()
            .ok()
            .and_then(|k| Uuid::parse_str(k.trim()).ok())
            != Some(batch_id)
        {
            return error(
                StatusCode::BAD_REQUEST,
                "Idempotency-Key does not match batch_id",
            );
        }
    }

    // A replay answers as the first time did, even if validation rules changed since.
    let store = state.store.clone();
    let replay_user = user.clone();
    match blocking(move || store.replay(&replay_user, batch_id)).await {
        Ok(Some(answer)) => return ok(&answer),
        Ok(None) => {}
        Err(response) => return response,
    }
    #[cfg(feature = "faults")]
    let is_poison = state.faults.poison_check();
    #[cfg(not(feature = "faults"))]
    let is_poison = |_: &UpEvent| false;
    let batch = match validate(envelope, is_poison) {
        Ok(batch) => batch,
        Err(r) => {
            return (
                r.status,
                Json(ErrorResponse {
                    error: r.message,
                    rejected: Some(r.rejected),
                }),
            )
                .into_response();
        }
    };
    let store = state.store.clone();
    let outcome = match blocking(move || store.store(&user, &batch)).await {
        Ok(outcome) => outcome,
        Err(response) => return response,
    };
    match outcome {
        Outcome::Replayed(answer) => ok(&answer),
        #[cfg(feature = "faults")]
        Outcome::Stored(answer) => state.faults.after_store(ok(&answer)).await,
        #[cfg(not(feature = "faults"))]
        Outcome::Stored(answer) => ok(&answer),
    }
}

async fn inspect(State(state): State<AppState>) -> Response {
    let store = state.store.clone();
    match blocking(move || store.inspect()).await {
        Ok(summary) => Json(summary).into_response(),
        Err(response) => response,
    }
}

#[derive(Deserialize)]
struct EventsQuery {
    device_id: Option<String>,
    bucket_id: Option<String>,
    limit: Option<u32>,
}

async fn inspect_events(State(state): State<AppState>, Query(q): Query<EventsQuery>) -> Response {
    let store = state.store.clone();
    let limit = q
        .limit
        .unwrap_or(DEFAULT_EVENTS_LIMIT)
        .min(MAX_EVENTS_LIMIT);
    match blocking(move || store.events(q.device_id.as_deref(), q.bucket_id.as_deref(), limit))
        .await
    {
        Ok(events) => Json(json!({ "events": events })).into_response(),
        Err(response) => response,
    }
}

async fn index(State(state): State<AppState>) -> Response {
    let store = state.store.clone();
    match blocking(move || store.inspect()).await {
        Ok(summary) => {
            #[cfg(feature = "faults")]
            let note = state.faults.page_note();
            #[cfg(not(feature = "faults"))]
            let note = String::new();
            Html(page::render(&summary, &note)).into_response()
        }
        Err(response) => response,
    }
}

/// `GET /events`: the newest stored events as an HTML table (see [`page::render_events`]).
async fn events_page(State(state): State<AppState>, Query(q): Query<EventsQuery>) -> Response {
    let store = state.store.clone();
    let limit = q
        .limit
        .unwrap_or(page::EVENTS_SHOWN)
        .min(page::MAX_EVENTS_SHOWN);
    let (device, bucket) = (q.device_id.clone(), q.bucket_id.clone());
    match blocking(move || store.recent_events(device.as_deref(), bucket.as_deref(), limit)).await {
        Ok(events) => Html(page::render_events(
            &events,
            q.device_id.as_deref(),
            q.bucket_id.as_deref(),
            limit,
        ))
        .into_response(),
        Err(response) => response,
    }
}

#[cfg(feature = "faults")]
async fn get_faults(State(state): State<AppState>) -> Response {
    Json(state.faults.report()).into_response()
}

#[cfg(feature = "faults")]
async fn post_faults(
    State(state): State<AppState>,
    Json(patch): Json<Map<String, Value>>,
) -> Response {
    match state.faults.merge_json(&patch) {
        Ok(_) => Json(state.faults.report()).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, format!("fault settings: {e}")),
    }
}

#[cfg(feature = "faults")]
async fn delete_faults(State(state): State<AppState>) -> Response {
    state.faults.clear();
    Json(state.faults.report()).into_response()
}
