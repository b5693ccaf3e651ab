//! The loopback HTTP listener (RFC 8252 §7.3, §8.3): one login, one path, one accepted answer.
//!
//! Each connection gets its own task, because browsers open idle extra connections (and a
//! local process may open some on purpose) that must not keep the real callback from being
//! read. A connection that sends nothing within [`FIRST_BYTE_TIMEOUT`] is closed, one that does
//! not complete its headers within [`HEADER_TIMEOUT`] too, one whose request line and headers
//! exceed [`MAX_REQUEST_BYTES`] gets 431, garbage gets 400 from hyper's parser; none of it
//! reaches the login.
//!
//! At most [`MAX_CONNECTIONS`] are open at once. When a new one arrives at the limit, the oldest
//! connection with no request being answered is closed to make room — not the new one: 64 idle
//! sockets held open by another local process made the real redirect fail with a reset
//! (issue 11). Only a connection whose request is being answered (the held callback) is never
//! evicted.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use url::{Host, Url};

use super::page::Page;
use super::{CallbackError, CallbackSource, Candidate, Params, Responder, MAX_REQUEST_BYTES};

/// A new connection has this long to send its first byte. A browser sends its request as soon
/// as it connected, and retries on a fresh connection when a preconnected one was closed; a
/// socket that says nothing is someone holding a slot.
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(2);

/// A connection has this long to send a complete request head (also closes idle keep-alive
/// connections): long enough for a browser, short enough that idle sockets don't pile up.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections served at once. A browser needs a handful; this bounds what a local flood can
/// cost. At the limit the oldest idle one makes room (see the module's doc).
pub const MAX_CONNECTIONS: usize = 64;

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
    let open = Arc::new(Mutex::new(Open::default()));
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
            let Some(slot) = Open::admit(&open) else {
                tracing::debug!(
                    "every loopback connection is answering a request; closing a new one"
                );
                continue;
            };
            tokio::spawn(accepted_connection(stream, ctx.clone(), slot));
        }
        tracing::debug!("loopback listener closed");
    });
}

/// The open connections, oldest first.
#[derive(Default)]
struct Open {
    next_id: u64,
    connections: VecDeque<OpenConnection>,
}

struct OpenConnection {
    id: u64,
    /// A request of this connection is being answered.
    busy: Arc<AtomicBool>,
    /// Dropped to close the connection at once.
    _evict: oneshot::Sender<()>,
}

/// A connection's place among the open ones; leaving it (dropping) frees the place.
struct Slot {
    id: u64,
    open: Arc<Mutex<Open>>,
    busy: Arc<AtomicBool>,
    evicted: oneshot::Receiver<()>,
}

impl Open {
    /// A place for a new connection: free, or made by closing the oldest connection that is
    /// not answering a request. `None` when every place is answering one.
    fn admit(open: &Arc<Mutex<Open>>) -> Option<Slot> {
        let mut this = open.lock().unwrap_or_else(|p| p.into_inner());
        if this.connections.len() >= MAX_CONNECTIONS {
            let idle = this
                .connections
                .iter()
                .position(|c| !c.busy.load(Ordering::Acquire))?;
            this.connections.remove(idle);
            tracing::debug!("loopback connections at the limit; closed the oldest idle one");
        }
        let id = this.next_id;
        this.next_id += 1;
        let busy = Arc::new(AtomicBool::new(false));
        let (evict, evicted) = oneshot::channel();
        this.connections.push_back(OpenConnection {
            id,
            busy: busy.clone(),
            _evict: evict,
        });
        Some(Slot {
            id,
            open: open.clone(),
            busy,
            evicted,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.connections.retain(|c| c.id != self.id);
    }
}

/// A TCP connection: closed when it sends nothing within [`FIRST_BYTE_TIMEOUT`] or is
/// evicted, served otherwise.
async fn accepted_connection(stream: TcpStream, ctx: Arc<Ctx>, mut slot: Slot) {
    let mut first = [0u8; 1];
    tokio::select! {
        _ = &mut slot.evicted => return,
        spoke = tokio::time::timeout(FIRST_BYTE_TIMEOUT, stream.peek(&mut first)) => match spoke {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return, // closed, or failed
            Err(_) => {
                tracing::debug!("a loopback connection sent nothing for {FIRST_BYTE_TIMEOUT:?}; closed it");
                return;
            }
        },
    }
    connection(stream, ctx, Some(slot), false).await;
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
async fn connection<S>(stream: S, ctx: Arc<Ctx>, mut slot: Option<Slot>, half_close: bool)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    // Dropped when the connection is done: tells `finish` that the held answer was written.
    let (written_tx, written_rx) = watch::channel(());
    let mut shutdown = ctx.shutdown.clone();
    let service_ctx = ctx.clone();
    let busy = slot.as_ref().map(|s| s.busy.clone());
    let service = service_fn(move |request| {
        let ctx = service_ctx.clone();
        let written = written_rx.clone();
        let busy = Busy::mark(busy.clone());
        async move {
            let response = handle(request, &ctx, written).await;
            drop(busy);
            Ok::<_, Infallible>(response)
        }
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
    let evicted = async {
        match slot.as_mut() {
            Some(slot) => {
                let _ = (&mut slot.evicted).await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = super::stopped(&mut shutdown) => {
            conn.as_mut().graceful_shutdown();
            conn.as_mut().await
        }
        () = evicted => Ok(()),
    };
    if let Err(e) = result {
        // Garbage, oversized heads, timeouts, clients hanging up: the client's problem.
        tracing::debug!("loopback connection ended: {e}");
    }
    drop(written_tx);
}

/// Marks a connection busy while one of its requests is answered (it is then not evicted).
struct Busy(Option<Arc<AtomicBool>>);

impl Busy {
    fn mark(flag: Option<Arc<AtomicBool>>) -> Busy {
        if let Some(flag) = &flag {
            flag.store(true, Ordering::Release);
        }
        Busy(flag)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Some(flag) = &self.0 {
            flag.store(false, Ordering::Release);
        }
    }
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
