//! `samay-server` proper: the API on a store of the operator's choice, behind any
//! [`Authenticator`], without the dev server's extras (no inspection, no faults, no built-in
//! provider, no `Host` restriction).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::api::{self, ApiState};
use crate::auth::Authenticator;
use crate::limits::{Limits, RateLimiter};
use crate::store::{DatabaseUrl, Store, IDEMPOTENCY_RETENTION};

/// How often idempotency records older than [`IDEMPOTENCY_RETENTION`] are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub bind: SocketAddr,
    pub database: DatabaseUrl,
    pub limits: Limits,
    /// A TLS-terminating proxy is in front: a non-loopback `bind` is allowed.
    pub behind_proxy: bool,
}

/// A running server. Dropping it stops it without waiting; [`Server::shutdown`] drains.
pub struct Server {
    addr: SocketAddr,
    #[cfg(feature = "faults")]
    faults: crate::Faults,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The fault switches (tests only; no endpoint sets them on this server).
    #[cfg(feature = "faults")]
    pub fn faults(&self) -> &crate::Faults {
        &self.faults
    }

    /// Stops accepting, lets in-flight requests finish, and returns.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Refuses a bind that would send tokens and events in clear text over a network: a
/// non-loopback address needs a TLS-terminating proxy in front (`behind_proxy`).
pub(crate) fn check_bind(bind: SocketAddr, behind_proxy: bool) -> anyhow::Result<()> {
    anyhow::ensure!(
        bind.ip().is_loopback() || behind_proxy,
        "refusing to listen on {bind} without TLS: bearer tokens and events would cross the network in clear text. \
         Put a TLS-terminating reverse proxy in front and pass --behind-proxy (behind_proxy = true), or bind 127.0.0.1"
    );
    Ok(())
}

/// Opens and migrates the database, binds, and serves in a background task.
pub async fn spawn_server(
    cfg: ServerConfig,
    auth: Arc<dyn Authenticator>,
) -> anyhow::Result<Server> {
    check_bind(cfg.bind, cfg.behind_proxy)?;
    let store = Store::open(&cfg.database).await?;
    let listener = TcpListener::bind(cfg.bind)
        .await
        .with_context(|| format!("binding {}", cfg.bind))?;
    let addr = listener.local_addr()?;
    #[cfg(feature = "faults")]
    let faults = crate::Faults::default();
    let state = ApiState {
        store: store.clone(),
        auth,
        metrics: Arc::default(),
        rate: Arc::new(RateLimiter::new(&cfg.limits)),
        limits: cfg.limits,
        #[cfg(feature = "faults")]
        faults: faults.clone(),
    };
    let router = api::router(state).fallback(|| async {
        crate::http::error(hyper::StatusCode::NOT_FOUND, "no such endpoint")
    });
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let pruning = tokio::spawn(prune_forever(store));
        crate::run(listener, router, false, async move {
            let _ = stopped.await;
        })
        .await;
        pruning.abort();
    });
    Ok(Server {
        addr,
        #[cfg(feature = "faults")]
        faults,
        stop: Some(stop),
        task: Some(task),
    })
}

/// Forgets idempotency records older than the retention, at start and then hourly. A failure
/// (database down) is logged and tried again next time: old records cost only space.
async fn prune_forever(store: Store) {
    let mut every = tokio::time::interval(PRUNE_EVERY);
    loop {
        every.tick().await;
        match store
            .prune_batches(chrono::Utc::now() - IDEMPOTENCY_RETENTION)
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(pruned = n, "idempotency records older than 7 days pruned"),
            Err(e) => tracing::warn!(error = %e, "pruning idempotency records"),
        }
    }
}
