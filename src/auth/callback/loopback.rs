//! The loopback HTTP listener (RFC 8252 §7.3, §8.3): one login, one path, one accepted answer.
//!
//! Each connection gets its own task, because browsers open idle extra connections (and a
//! local process may open some on purpose) that must not keep the real callback from being
//! read. A connection that does not send its headers within [`HEADER_TIMEOUT`] is closed, one
//! whose request line and headers exceed [`MAX_REQUEST_BYTES`] gets 431, garbage gets 400 from
//! hyper's parser; none of it reaches the login.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use url::{Host, Url};

use super::page::Page;
use super::{CallbackError, CallbackSource, Candidate, Params, Responder, MAX_REQUEST_BYTES};

/// A connection has this long to send a complete request head (also closes idle keep-alive
/// connections): long enough for a browser, short enough that idle sockets don't pile up.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections served at once; beyond it new ones are closed at once. A browser needs a
/// handful; this bounds what a local flood can cost.
const MAX_CONNECTIONS: usize = 64;

/// Parses `auth.redirect_uri` and binds its loopback IP literal: on its port, or on any free
/// port when that one can't be had (taken, or reserved as on Windows/WSL). Returns the redirect
/// URI carrying the port actually bound.
pub(super) async fn bind(redirect_uri: &str) -> Result<(TcpListener, Url), CallbackError> {
    let bad = |reason: &str| CallbackError::BadRedirectUri {
        uri: redirect_uri.to_string(),
        reason: reason.to_string(),
    };
    let mut uri = Url::parse(redirect_uri).map_err(|e| bad(&format!("not a URL ({e})")))?;
    if uri.scheme() != "http" {
        return Err(bad(
            "a loopback redirect must be http://127.0.0.1:PORT/PATH (TLS is neither possible nor needed on loopback)",
        ));
    }
    let ip: IpAddr = match uri.host() {
        Some(Host::Ipv4(ip)) if ip.is_loopback() => ip.into(),
        Some(Host::Ipv6(ip)) if ip.is_loopback() => ip.into(),
        Some(Host::Domain(_)) => {
            return Err(bad(
                "use the IP literal 127.0.0.1, not a host name: `localhost` may resolve to ::1 while the listener is on 127.0.0.1 (RFC 8252 §8.3)",
            ))
        }
        _ => return Err(bad("the host must be the loopback address 127.0.0.1")),
    };
    if uri.fragment().is_some() || !uri.username().is_empty() || uri.password().is_some() {
        return Err(bad("a redirect URI has no fragment or user info"));
    }
    let port = uri.port_or_known_default().unwrap_or(0);

    let listener = if port == 0 {
        bind_any(ip).await?
    } else {
        match TcpListener::bind((ip, port)).await {
            Ok(listener) => listener,
            Err(e) => {
                tracing::warn!(
                    "cannot listen on {ip}:{port} ({e}); using a free port instead (the identity provider must accept any loopback port, RFC 8252 §7.3)"
                );
                bind_any(ip).await?
            }
        }
    };
    let actual = listener
        .local_addr()
        .map_err(|source| CallbackError::Listen {
            addr: SocketAddr::new(ip, 0),
            source,
        })?;
    uri.set_port(Some(actual.port()))
        .map_err(|()| bad("cannot carry a port"))?;
    Ok((listener, uri))
}

async fn bind_any(ip: IpAddr) -> Result<TcpListener, CallbackError> {
    let addr = SocketAddr::new(ip, 0);
    TcpListener::bind(addr)
        .await
        .map_err(|source| CallbackError::Listen { addr, source })
}

struct Ctx {
    path: String,
    queue: mpsc::Sender<Candidate>,
    shutdown: watch::Receiver<bool>,
    hold: Duration,
}

/// Serves until `shutdown` turns true (or its sender is dropped): then the listener is closed
/// (new connections are refused) and every open connection finishes its in-flight request —
/// the held callback's — and closes.
pub(super) fn serve(
    listener: TcpListener,
    path: String,
    queue: mpsc::Sender<Candidate>,
    mut shutdown: watch::Receiver<bool>,
    hold: Duration,
) {
    let ctx = Arc::new(Ctx {
        path,
        queue,
        shutdown: shutdown.clone(),
        hold,
    });
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                    biased; // once stopped, accept nothing more
                _ = super::stopped(&mut shutdown) => break,
                accepted = listener.accept() => accepted,
            };
            let (stream, _peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: don't spin on it.
                    tracing::debug!("accepting a loopback connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::debug!("too many open loopback connections; closing a new one");
                continue;
            };
            tokio::spawn(connection(stream, ctx.clone(), Some(slot), false));
        }
        tracing::debug!("loopback listener closed");
    });
}

/// Serves one connection over any byte stream, exactly as the listener serves a TCP one: the
/// fuzz harness ([`super::fuzzing`]) feeds raw requests through here without a socket.
pub(super) async fn serve_stream<S>(
    stream: S,
    path: String,
    queue: mpsc::Sender<Candidate>,
    shutdown: watch::Receiver<bool>,
    hold: Duration,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let ctx = Arc::new(Ctx {
        path,
        queue,
        shutdown,
        hold,
    });
    connection(stream, ctx, None, true).await;
}

/// `half_close`: keep answering a request whose client already shut its write side. A browser
/// never does that, so the listener leaves hyper's default (close at once); the fuzz harness
/// does it to mark the end of its input, and still needs the answer.
async fn connection<S>(
    stream: S,
    ctx: Arc<Ctx>,
    _slot: Option<tokio::sync::OwnedSemaphorePermit>,
    half_close: bool,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    // Dropped when the connection is done: tells `finish` that the held answer was written.
    let (written_tx, written_rx) = watch::channel(());
    let mut shutdown = ctx.shutdown.clone();
    let service_ctx = ctx.clone();
    let service = service_fn(move |request| {
        let ctx = service_ctx.clone();
        let written = written_rx.clone();
        async move { Ok::<_, Infallible>(handle(request, &ctx, written).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_header_size(MAX_REQUEST_BYTES)
        .max_headers(64)
        .half_close(half_close);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = super::stopped(&mut shutdown) => {
            conn.as_mut().graceful_shutdown();
            conn.as_mut().await
        }
    };
    if let Err(e) = result {
        // Garbage, oversized heads, timeouts, clients hanging up: the client's problem.
        tracing::debug!("loopback connection ended: {e}");
    }
    drop(written_tx);
}

async fn handle(
    request: Request<Incoming>,
    ctx: &Ctx,
    written: watch::Receiver<()>,
) -> Response<String> {
    if request.uri().path() != ctx.path {
        return Page::not_found().into_response();
    }
    if request.method() != Method::GET {
        return Page::method_not_allowed().into_response();
    }
    if *ctx.shutdown.borrow() {
        return Page::gone().into_response();
    }
    tracing::debug!("a request for the callback path arrived on the loopback listener");
    let params = Params::from_query(request.uri().query());
    let (reply_tx, reply_rx) = oneshot::channel();
    let candidate = Candidate {
        source: CallbackSource::Loopback,
        params,
        responder: Responder::new(reply_tx, written),
    };
    match super::enqueue(&ctx.queue, candidate).await {
        Ok(()) => {}
        Err(page) => return page.into_response(),
    }
    match tokio::time::timeout(ctx.hold, reply_rx).await {
        Ok(Ok(page)) => page.into_response(),
        // The login decided nothing in time, or went away: don't leave the tab spinning.
        Ok(Err(_)) | Err(_) => Page::received().into_response(),
    }
}
