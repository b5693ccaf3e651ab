//! The API of `docs/upstream-api.md` under `/v1`, the same for `samay-server` and the dev server:
//! the batch endpoint, the caller's devices, change feed and deletes, health, and `/metrics`.
//! Every route that touches data takes the user from the bearer token (through the
//! [`Authenticator`]) and reads or writes that user's rows only.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use crate::auth::{AuthError, Authenticator};
use crate::batch::{gunzip_limited, read_limited, validate, Envelope, ReadError};
#[cfg(feature = "faults")]
use crate::faults::{Faults, RequestLog};
use crate::http::error;
use crate::limits::{Limits, RateLimiter};
use crate::metrics::Metrics;
use crate::store::{Outcome, Scope, Store, StoreError};
#[cfg(not(feature = "faults"))]
use samay_api::UpEvent;
use samay_api::{
    BatchResponse, ChangesResponse, DeletedResponse, DevicesResponse, ErrorResponse, MeResponse,
};

/// How long a client may take to send its body before it is answered 408.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// `GET v1/changes`: default and largest `limit`.
const DEFAULT_CHANGES: i64 = 1_000;
const MAX_CHANGES: i64 = 10_000;

#[derive(Clone)]
pub(crate) struct ApiState {
    pub store: Store,
    pub auth: Arc<dyn Authenticator>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    pub rate: Arc<RateLimiter>,
    #[cfg(feature = "faults")]
    pub faults: Faults,
}

pub(crate) fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/me", get(me))
        .route("/v1/devices", get(devices))
        .route("/v1/devices/{device_id}", delete(delete_device))
        .route(
            "/v1/devices/{device_id}/buckets/{bucket_id}",
            delete(delete_bucket),
        )
        .route("/v1/changes", get(changes))
        .route("/v1/events/batch", post(post_batch))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), count_request))
        .with_state(state)
}

/// Counts every answered request by route pattern and status, and logs it (structured fields;
/// the route pattern, never the path, which may name a device).
async fn count_request(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "other".to_string(), |p| p.as_str().to_string());
    let method = request.method().clone();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if response.status().is_success() {
        tracing::debug!(%method, %route, status, ms, "request");
    } else {
        tracing::info!(%method, %route, status, ms, "request");
    }
    state.metrics.request(route, status);
    response
}

fn store_error(e: StoreError) -> Response {
    match e {
        StoreError::Unavailable(why) => {
            tracing::warn!(error = %why, "database unavailable");
            let mut response = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the database is unavailable; nothing was stored, try again",
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            response
        }
        StoreError::Failed(why) => {
            tracing::error!(error = %why, "database failure");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("database: {why}"),
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
        HeaderValue::from_static("Bearer error=\"invalid_token\""),
    );
    response
}

/// `Retry-After` of a 503 for a token that cannot be checked now: the verifier's shortest
/// interval between two fetches of an issuer's keys (`VerifierConfig::jwks_min_refetch`).
const ISSUER_RETRY_AFTER_SECS: &str = "30";

/// The caller's user key, or the answer that refuses the request (401, 503, 429).
async fn caller(state: &ApiState, headers: &HeaderMap) -> Result<String, Response> {
    let Some(token) = crate::oidc::bearer_token(headers) else {
        state.metrics.auth_failure("missing");
        return Err(unauthorized());
    };
    let user = match state.auth.authenticate(token).await {
        Ok(principal) => crate::auth::store_key(&principal),
        Err(AuthError::Rejected(reason)) => {
            state.metrics.auth_failure(reason);
            return Err(unauthorized());
        }
        Err(AuthError::Unavailable(why)) => {
            // Not a 401: the client would throw away tokens that may well be good.
            tracing::warn!(error = %why, "cannot check a bearer token");
            state.metrics.auth_failure("issuer_unavailable");
            let mut response = error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot check the token now: {why}"),
            );
            // The verifier asks an issuer that failed again at most this often.
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                HeaderValue::from_static(ISSUER_RETRY_AFTER_SECS),
            );
            return Err(response);
        }
    };
    if let Err(wait) = state.rate.check(&user) {
        let mut response = error(StatusCode::TOO_MANY_REQUESTS, "rate limited; slow down");
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return Err(response);
    }
    Ok(user)
}

/// Runs a handler within the per-request time limit: past it, 503 (retryable; a batch whose
/// transaction had not committed is rolled back, one that had is answered on the resend).
async fn within_limit(
    state: &ApiState,
    handler: impl std::future::Future<Output = Response>,
) -> Response {
    match tokio::time::timeout(state.limits.request_timeout, handler).await {
        Ok(response) => response,
        Err(_) => {
            let mut response = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the request took too long; try again",
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            response
        }
    }
}

/// `GET v1/health`: 200 when the database answers, 503 otherwise.
async fn health(State(state): State<ApiState>) -> Response {
    match state.store.ping(&state.metrics).await {
        Ok(()) => Json(json!({"ok": true})).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "health: database does not answer");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"ok": false, "error": "the database does not answer"})),
            )
                .into_response()
        }
    }
}

async fn metrics(State(state): State<ApiState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// `GET v1/me`: the user the bearer token authenticates (the key its data is filed under).
async fn me(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    #[cfg(feature = "faults")]
    if state.faults.settings().no_me {
        return error(StatusCode::NOT_FOUND, "no such endpoint");
    }
    match caller(&state, &headers).await {
        Ok(user) => Json(MeResponse { user }).into_response(),
        Err(response) => response,
    }
}

async fn devices(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    let user = match caller(&state, &headers).await {
        Ok(user) => user,
        Err(response) => return response,
    };
    within_limit(&state, async {
        match state.store.devices(&user, &state.metrics).await {
            Ok(devices) => Json(DevicesResponse { devices }).into_response(),
            Err(e) => store_error(e),
        }
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangesQuery {
    #[serde(default)]
    after: i64,
    limit: Option<i64>,
    device_id: Option<String>,
}

async fn changes(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<ChangesQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let user = match caller(&state, &headers).await {
        Ok(user) => user,
        Err(response) => return response,
    };
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("query: {e}")),
    };
    if q.after < 0 {
        return error(StatusCode::BAD_REQUEST, "after must be 0 or more");
    }
    let limit = q.limit.unwrap_or(DEFAULT_CHANGES).clamp(1, MAX_CHANGES);
    within_limit(&state, async {
        match state
            .store
            .changes(&user, q.after, limit, q.device_id, &state.metrics)
            .await
        {
            Ok(changes) => {
                let next = changes.last().map_or(q.after, |c| c.seq);
                Json(ChangesResponse { changes, next }).into_response()
            }
            Err(e) => store_error(e),
        }
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RangeQuery {
    start: Option<String>,
    end: Option<String>,
}

/// A range bound in microseconds since the epoch, or what is wrong with it.
fn micros(name: &str, value: Option<&str>) -> Result<Option<i64>, String> {
    value
        .map(|v| {
            chrono::DateTime::parse_from_rfc3339(v)
                .map(|t| t.timestamp_micros())
                .map_err(|e| format!("{name}: not RFC 3339 ({e})"))
        })
        .transpose()
}

async fn delete_device(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(device_id): Path<String>,
) -> Response {
    delete_scope(state, headers, device_id, None, None).await
}

async fn delete_bucket(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path((device_id, bucket_id)): Path<(String, String)>,
    query: Result<Query<RangeQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let range = match query {
        Ok(Query(q)) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("query: {e}")),
    };
    delete_scope(state, headers, device_id, Some(bucket_id), Some(range)).await
}

/// `DELETE v1/devices/{id}[/buckets/{bucket}]`: the user takes data back. Only the caller's
/// rows are in scope: another user's device of the same id is untouched.
async fn delete_scope(
    state: ApiState,
    headers: HeaderMap,
    device_id: String,
    bucket_id: Option<String>,
    range: Option<RangeQuery>,
) -> Response {
    let user = match caller(&state, &headers).await {
        Ok(user) => user,
        Err(response) => return response,
    };
    let range = range.unwrap_or(RangeQuery {
        start: None,
        end: None,
    });
    let (start_us, end_us) = match (
        micros("start", range.start.as_deref()),
        micros("end", range.end.as_deref()),
    ) {
        (Ok(s), Ok(e)) => (s, e),
        (Err(why), _) | (_, Err(why)) => return error(StatusCode::BAD_REQUEST, why),
    };
    let scope = Scope {
        device_id,
        bucket_id,
        start_us,
        end_us,
    };
    within_limit(&state, async {
        match state.store.delete(&user, scope, &state.metrics).await {
            Ok(deleted) => Json(DeletedResponse { deleted }).into_response(),
            Err(e) => store_error(e),
        }
    })
    .await
}

async fn post_batch(State(state): State<ApiState>, headers: HeaderMap, body: Body) -> Response {
    #[cfg(feature = "faults")]
    let log = RequestLog::start(&state.faults, &headers);
    let response = within_limit(&state, handle_batch(&state, &headers, body)).await;
    #[cfg(feature = "faults")]
    log.answered(&response);
    response
}

fn ok(answer: &BatchResponse) -> Response {
    Json(answer).into_response()
}

async fn handle_batch(state: &ApiState, headers: &HeaderMap, body: Body) -> Response {
    #[cfg(feature = "faults")]
    if let Some(injected) = state.faults.before_batch().await {
        return injected;
    }
    let user = match caller(state, headers).await {
        Ok(user) => user,
        Err(response) => return response,
    };
    #[cfg(feature = "faults")]
    let limit = state
        .faults
        .max_body_bytes()
        .min(state.limits.max_body_bytes);
    #[cfg(not(feature = "faults"))]
    let limit = state.limits.max_body_bytes;
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
        None | Some("") | Some("identity") => {
            state.metrics.body_received("identity", wire.len() as u64);
            wire
        }
        Some("gzip") | Some("x-gzip") => match gunzip_limited(&wire, limit) {
            Ok(json) => {
                state.metrics.body_received("gzip", wire.len() as u64);
                json
            }
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
    match state.store.replay(&user, batch_id, &state.metrics).await {
        Ok(Some(answer)) => {
            state.metrics.batch_replayed();
            return ok(&answer);
        }
        Ok(None) => {}
        Err(e) => return store_error(e),
    }
    if envelope.events.len() > state.limits.max_events {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} events in one batch; at most {} are accepted",
                envelope.events.len(),
                state.limits.max_events
            ),
        );
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
    let outcome = match state
        .store
        .store_batch(&user, Arc::new(batch), &state.metrics)
        .await
    {
        Ok(outcome) => outcome,
        Err(e) => return store_error(e),
    };
    match outcome {
        Outcome::Replayed(answer) => {
            state.metrics.batch_replayed();
            ok(&answer)
        }
        Outcome::Stored { answer, replaced } => {
            state.metrics.batch_stored(
                answer.accepted,
                answer.duplicates,
                replaced,
                answer.deleted,
            );
            tracing::debug!(
                %batch_id,
                accepted = answer.accepted,
                duplicates = answer.duplicates,
                deleted = answer.deleted,
                "batch stored"
            );
            #[cfg(feature = "faults")]
            return state.faults.after_store(ok(&answer)).await;
            #[cfg(not(feature = "faults"))]
            ok(&answer)
        }
    }
}
