//! samay-server: the upstream of aw-sync-samay (`docs/upstream-api.md`), on SQLite (one file, the
//! default) or PostgreSQL (many server processes on one database) — see [`spawn_server`] and the
//! `samay-server` binary. The same crate is the dev server ([`spawn`], `samay-dev-server`,
//! `samay-server --dev`): the same API on SQLite, plus loopback-only inspection and, with the
//! `faults` feature (tests only), through `Faults` the way tests make the upstream misbehave on
//! purpose.
//!
//! It is also a small OpenID provider ([`OidcConfig`], `oidc/`): the login of aw-sync-samay is
//! developed and tested against it, and the batch endpoint accepts the access tokens it issues.
//!
//! Inspection (`/`, `/v1/inspect*`), fault (`/v1/_faults`) and provider counter (`/v1/_oauth`)
//! endpoints need no token, which is why the server refuses to bind anything but a loopback
//! address, and answers only requests whose `Host` is this machine (`127.0.0.1`, `[::1]`,
//! `localhost`): a web page using DNS rebinding reaches the port but names its own domain. Its
//! database is created 0600: it holds every synced event and the provider's ID-token signing
//! key.

mod api;
pub mod auth;
mod batch;
#[cfg(feature = "faults")]
mod faults;
mod host;
mod http;
mod limits;
mod metrics;
mod oidc;
mod page;
mod server;
mod store;
mod verify;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tower::ServiceExt;

#[cfg(feature = "faults")]
pub use faults::{
    BatchHook, BatchHookFuture, BatchStage, FaultCounters, FaultReport, FaultSettings, Faults,
    RequestRecord, REQUEST_LOG_LEN,
};
pub use http::TokenRegistry;
pub use limits::Limits;
pub use oidc::{OAuthCounters, OidcConfig, DEFAULT_ACCESS_TOKEN_TTL, DEV_CLIENT_ID};
pub use server::{spawn_server, Server, ServerConfig};
pub use store::{BucketSummary, DatabaseUrl, DeviceSummary, Inspect, StoredEvent};
pub use verify::{
    AuthFailure, IntrospectionClient, IssuerConfig, Principal, SystemClock, TokenVerifier,
    VerifierClock, VerifierConfig, VerifierConfigError, MAX_SUBJECT_BYTES, MAX_TOKEN_BYTES,
};

use api::ApiState;
use http::{DevAuthenticator, DevState};
use oidc::{Clock, Provider};
use store::{SqliteStore, Store};

/// Default limit for a batch body, on the wire and after gzip decompression (the `faults`
/// feature can change it per server).
pub const DEFAULT_MAX_BODY_BYTES: u64 = 16 * 1024 * 1024;

/// The user every configured token authenticates as. The dev server keys events by the token's
/// subject, not by the batch's `user_id` (which is only informational), exactly as a real backend
/// must: otherwise any token could write into any user's data.
pub const DEV_USER: &str = "dev";

/// Open connections at most; further ones wait in the listen backlog.
const MAX_CONNECTIONS: usize = 256;
/// How long a client may take to send request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long shutdown waits for in-flight requests before cutting connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct DevServerConfig {
    /// Must be a loopback address; port 0 picks a free port.
    pub bind: SocketAddr,
    /// The SQLite database (created if missing; WAL mode).
    pub db_path: PathBuf,
    /// Accepted bearer tokens, each authenticating as [`DEV_USER`].
    pub tokens: Vec<String>,
}

/// `127.0.0.1:0`, `samay-dev-server.sqlite` in the working directory, no static tokens: so a
/// caller names only what it cares about (`DevServerConfig { db_path, ..Default::default() }`).
impl Default for DevServerConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            db_path: PathBuf::from("samay-dev-server.sqlite"),
            tokens: Vec::new(),
        }
    }
}

/// A running dev server. Dropping it stops the server (without waiting); [`DevServer::shutdown`]
/// stops it and waits for in-flight requests.
pub struct DevServer {
    addr: SocketAddr,
    state: DevParts,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl DevServer {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The shared fault settings; changes apply to the next request.
    #[cfg(feature = "faults")]
    pub fn faults(&self) -> &Faults {
        &self.state.api.faults
    }

    /// Accepts `token` from now on, as [`DEV_USER`].
    pub fn add_token(&self, token: impl Into<String>) {
        self.add_token_for(token, DEV_USER);
    }

    /// Accepts `token` from now on as `user` (an OAuth provider registering what it issued).
    pub fn add_token_for(&self, token: impl Into<String>, user: impl Into<String>) {
        self.state
            .tokens
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token.into(), user.into());
    }

    /// Stops accepting `token` (an expired or revoked token).
    pub fn remove_token(&self, token: &str) {
        self.state
            .tokens
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(token);
    }

    /// The OpenID issuer identifier: the base URL (discovery at
    /// `{issuer}/.well-known/openid-configuration`).
    pub fn issuer(&self) -> String {
        self.base_url()
    }

    /// Moves the OpenID provider's clock forward, so tests expire codes, access tokens and the
    /// external-issuer cache without sleeping. Static tokens and stored events are unaffected.
    pub fn advance_clock(&self, by: Duration) {
        self.state.oidc.clock().advance(by);
    }

    /// Turns auto-approval on (as `user`, or each request's `login_hint`) or off (sign-in page).
    pub fn set_auto_approve(&self, user: Option<String>) {
        self.state.oidc.set_auto_approve(user);
    }

    /// What `GET /v1/_oauth` answers.
    pub async fn oauth_counters(&self) -> anyhow::Result<OAuthCounters> {
        self.state.oidc.counters().await
    }

    /// The token registry itself, for a component that manages tokens on its own.
    pub fn tokens(&self) -> TokenRegistry {
        self.state.tokens.clone()
    }

    /// What `GET /v1/inspect` answers.
    pub async fn inspect(&self) -> anyhow::Result<Inspect> {
        let store = self.state.dev.store.clone();
        Ok(tokio::task::spawn_blocking(move || store.inspect()).await??)
    }

    /// What `GET /v1/inspect/events` answers (all of it, ordered by device, bucket, event_id).
    pub async fn stored_events(
        &self,
        device_id: Option<&str>,
        bucket_id: Option<&str>,
    ) -> anyhow::Result<Vec<StoredEvent>> {
        let store = self.state.dev.store.clone();
        let device_id = device_id.map(str::to_owned);
        let bucket_id = bucket_id.map(str::to_owned);
        Ok(tokio::task::spawn_blocking(move || {
            store.events(device_id.as_deref(), bucket_id.as_deref(), u32::MAX)
        })
        .await??)
    }

    /// Stops accepting, lets in-flight requests finish (up to a few seconds), and returns.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for DevServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Opens the database, binds, and serves in a background task, with the OpenID provider in its
/// default configuration (sign-in page, one-hour access tokens).
pub async fn spawn(cfg: DevServerConfig) -> anyhow::Result<DevServer> {
    spawn_with(cfg, OidcConfig::default()).await
}

/// [`spawn`] with the OpenID provider configured. A separate argument rather than fields of
/// [`DevServerConfig`], so every existing `DevServerConfig { bind, db_path, tokens }` literal
/// keeps compiling.
pub async fn spawn_with(cfg: DevServerConfig, oidc: OidcConfig) -> anyhow::Result<DevServer> {
    let (listener, state) = prepare(&cfg, &oidc).await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task_state = state.clone();
    let task = tokio::spawn(async move {
        run(listener, task_state.router(), true, async move {
            let _ = stopped.await;
        })
        .await
    });
    Ok(DevServer {
        addr,
        state,
        stop: Some(stop),
        task: Some(task),
    })
}

/// Serves in the current task until `shutdown` completes (for embedding, e.g. a Ctrl-C future).
pub async fn serve_until(
    cfg: DevServerConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let (listener, state) = prepare(&cfg, &OidcConfig::default()).await?;
    tracing::info!(
        "samay-dev-server listening on http://{}",
        listener.local_addr()?
    );
    run(listener, state.router(), true, shutdown).await;
    Ok(())
}

/// What a running dev server is made of: the API's state, the dev extras, the provider.
#[derive(Clone)]
struct DevParts {
    api: ApiState,
    dev: DevState,
    tokens: TokenRegistry,
    oidc: Arc<Provider>,
}

impl DevParts {
    fn router(&self) -> axum::Router {
        api::router(self.api.clone())
            .merge(http::dev_router(self.dev.clone()))
            .merge(oidc::router(self.oidc.clone()))
            .fallback(|| async { http::error(hyper::StatusCode::NOT_FOUND, "no such endpoint") })
    }
}

async fn prepare(
    cfg: &DevServerConfig,
    oidc: &OidcConfig,
) -> anyhow::Result<(TcpListener, DevParts)> {
    anyhow::ensure!(
        cfg.bind.ip().is_loopback(),
        "refusing to bind {}: inspection and fault endpoints have no auth, so the dev server listens on loopback only",
        cfg.bind
    );
    let path = cfg.db_path.clone();
    let sqlite = Arc::new(tokio::task::spawn_blocking(move || SqliteStore::open(&path)).await??);
    // Bound before the provider is made: the issuer is the base URL, port included.
    let listener = TcpListener::bind(cfg.bind)
        .await
        .with_context(|| format!("binding {}", cfg.bind))?;
    let issuer = format!("http://{}", listener.local_addr()?);
    let path = cfg.db_path.clone();
    let oidc = oidc.clone();
    let provider = Arc::new(
        tokio::task::spawn_blocking(move || Provider::open(&path, issuer, &oidc, Clock::default()))
            .await??,
    );
    let tokens: TokenRegistry = Arc::new(RwLock::new(
        cfg.tokens
            .iter()
            .map(|t| (t.clone(), DEV_USER.to_string()))
            .collect::<HashMap<String, String>>(),
    ));
    #[cfg(feature = "faults")]
    let faults = Faults::default();
    let limits = Limits {
        // The dev server is one person's: no rate limit in the way of a catch-up.
        rate_per_minute: 0,
        ..Limits::default()
    };
    let api = ApiState {
        store: Store::Sqlite(sqlite.clone()),
        auth: Arc::new(DevAuthenticator {
            tokens: tokens.clone(),
            oidc: provider.clone(),
        }),
        metrics: Arc::default(),
        rate: Arc::new(limits::RateLimiter::new(&limits)),
        limits,
        #[cfg(feature = "faults")]
        faults: faults.clone(),
    };
    let dev = DevState {
        store: sqlite,
        #[cfg(feature = "faults")]
        faults,
    };
    Ok((
        listener,
        DevParts {
            api,
            dev,
            tokens,
            oidc: provider,
        },
    ))
}

/// The accept loop: one task per connection, bounded, graceful on shutdown (in-flight requests
/// finish, up to [`SHUTDOWN_GRACE`]). `local_only`: answer only requests whose `Host` names this
/// machine (the dev server, whose extra endpoints have no auth).
pub(crate) async fn run(
    listener: TcpListener,
    router: axum::Router,
    local_only: bool,
    shutdown: impl Future<Output = ()>,
) {
    let (closing, close_rx) = watch::channel(false);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    // Usually EMFILE or a connection reset before accept; back off briefly.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        while connections.try_join_next().is_some() {}
        connections.spawn(serve_connection(
            stream,
            router.clone(),
            local_only,
            close_rx.clone(),
            permit,
        ));
    }
    drop(listener);
    let _ = closing.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        connections.abort_all();
    }
}

/// What a connection's service may fail with: only a fault may close a connection unanswered.
#[cfg(feature = "faults")]
type ServeError = faults::DroppedByFault;
#[cfg(not(feature = "faults"))]
type ServeError = Infallible;

async fn serve_connection(
    stream: TcpStream,
    router: axum::Router,
    local_only: bool,
    mut closing: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let service = service_fn(move |request: hyper::Request<Incoming>| {
        let router = router.clone();
        async move {
            // DNS rebinding: a page whose domain now resolves to 127.0.0.1 reaches this port,
            // but its requests still name that domain. Only this machine's names are served.
            let host = request
                .headers()
                .get(hyper::header::HOST)
                .and_then(|h| h.to_str().ok());
            if local_only && !host.is_some_and(host::is_local_host_header) {
                return Ok(http::wrong_host(host));
            }
            let response = router
                .oneshot(request)
                .await
                .unwrap_or_else(|never: Infallible| match never {});
            #[cfg(feature = "faults")]
            if response
                .extensions()
                .get::<faults::DropConnection>()
                .is_some()
            {
                return Err(faults::DroppedByFault);
            }
            Ok::<_, ServeError>(response)
        }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                tracing::debug!("connection: {e}");
            }
        }
        _ = closing.changed() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM (systemd's stop): the binaries then drain in-flight requests.
/// The SIGTERM handler is installed when this is called, not when first awaited, so call it
/// before announcing the server: a SIGTERM right after the announcement must not kill the
/// process with requests in flight (the default action). (Outside Unix only Ctrl-C is left, and
/// clippy would have an `async fn`: the shape is the Unix one's.)
#[cfg_attr(not(unix), allow(clippy::manual_async_fn))]
pub fn shutdown_signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    async move {
        #[cfg(unix)]
        if let Some(mut term) = term {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}
