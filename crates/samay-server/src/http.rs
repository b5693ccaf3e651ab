//! The dev server's own routes: the unauthenticated inspection and fault endpoints that only
//! make sense on loopback, and the [`DevAuthenticator`] (static tokens and the built-in OpenID
//! provider). The API itself is `api.rs`, shared with `samay-server`.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
#[cfg(feature = "faults")]
use serde_json::{Map, Value};

use super::auth::{AuthError, AuthFuture, Authenticator, Principal, DEV_ISSUER};
#[cfg(feature = "faults")]
use super::faults::Faults;
use super::oidc::{Bearer, Provider};
use super::page;
use super::store::SqliteStore;
use samay_api::ErrorResponse;

/// Bearer token → the user (subject) it authenticates. Shared so an OAuth provider running in
/// the same process can register the tokens it issues.
pub type TokenRegistry = Arc<RwLock<HashMap<String, String>>>;

/// Default and maximum number of events `GET /v1/inspect/events` returns.
const DEFAULT_EVENTS_LIMIT: u32 = 10_000;
const MAX_EVENTS_LIMIT: u32 = 1_000_000;

#[derive(Clone)]
pub(crate) struct DevState {
    pub store: Arc<SqliteStore>,
    #[cfg(feature = "faults")]
    pub faults: Faults,
}

/// The dev server's users: a registered token (static, or issued by an in-process provider)
/// authenticates as its subject, else an access token of the built-in provider (or of the
/// external issuer it vouches for).
pub(crate) struct DevAuthenticator {
    pub tokens: TokenRegistry,
    pub oidc: Arc<Provider>,
}

impl Authenticator for DevAuthenticator {
    fn authenticate<'a>(&'a self, bearer: &'a str) -> AuthFuture<'a> {
        Box::pin(async move {
            let known = self
                .tokens
                .read()
                .unwrap_or_else(|poison| poison.into_inner())
                .get(bearer)
                .cloned();
            let subject = match known {
                Some(user) => user,
                None => match self.oidc.authenticate(bearer).await {
                    Bearer::User(user) => user,
                    Bearer::Invalid => return Err(AuthError::Rejected("unknown")),
                    Bearer::Unavailable(why) => return Err(AuthError::Unavailable(why)),
                },
            };
            Ok(Principal {
                issuer: DEV_ISSUER.to_string(),
                subject,
            })
        })
    }
}

/// The loopback-only extras of `--dev`, merged with the API router and the provider's.
pub(crate) fn dev_router(state: DevState) -> Router {
    let router = Router::new()
        .route("/", get(index))
        .route("/events", get(events_page))
        .route("/v1/inspect", get(inspect))
        .route("/v1/inspect/events", get(inspect_events));
    #[cfg(feature = "faults")]
    let router = router.route(
        "/v1/_faults",
        get(get_faults).post(post_faults).delete(delete_faults),
    );
    router.with_state(state)
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

async fn inspect(State(state): State<DevState>) -> Response {
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

async fn inspect_events(State(state): State<DevState>, Query(q): Query<EventsQuery>) -> Response {
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

async fn index(State(state): State<DevState>) -> Response {
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
async fn events_page(State(state): State<DevState>, Query(q): Query<EventsQuery>) -> Response {
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
async fn get_faults(State(state): State<DevState>) -> Response {
    Json(state.faults.report()).into_response()
}

#[cfg(feature = "faults")]
async fn post_faults(
    State(state): State<DevState>,
    Json(patch): Json<Map<String, Value>>,
) -> Response {
    match state.faults.merge_json(&patch) {
        Ok(_) => Json(state.faults.report()).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, format!("fault settings: {e}")),
    }
}

#[cfg(feature = "faults")]
async fn delete_faults(State(state): State<DevState>) -> Response {
    state.faults.clear();
    Json(state.faults.report()).into_response()
}
