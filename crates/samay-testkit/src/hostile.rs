//! A hostile peer on loopback, for the hardening tests of issue 11: a small HTTP server whose
//! every answer the test decides — an endless chunked body, escape sequences in an error,
//! event data nested 200,000 levels deep. Fault injection only: where a real peer can play the
//! part (aw-server, oidc-provider, the dev server), the tests use it.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper::{Request, Response};

/// What the hostile server answers.
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Payload,
}

pub enum Payload {
    Bytes(Vec<u8>),
    /// Chunks of 64 KiB of `x`, forever (chunked transfer encoding, no length).
    Endless,
}

impl Answer {
    pub fn json(status: u16, body: impl Into<Vec<u8>>) -> Answer {
        Answer {
            status,
            content_type: "application/json",
            body: Payload::Bytes(body.into()),
        }
    }

    pub fn endless() -> Answer {
        Answer {
            status: 200,
            content_type: "application/json",
            body: Payload::Endless,
        }
    }
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query.
    pub target: String,
    pub body: Vec<u8>,
}

type Handler = dyn Fn(&Seen) -> Answer + Send + Sync;

/// The server; stops when dropped.
pub struct Hostile {
    addr: std::net::SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Bytes of endless bodies handed to the connection so far.
    pub endless_sent: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Hostile {
    pub async fn start(handler: impl Fn(&Seen) -> Answer + Send + Sync + 'static) -> Hostile {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let endless_sent = Arc::new(AtomicU64::new(0));
        let handler: Arc<Handler> = Arc::new(handler);
        let (log, counter) = (seen.clone(), endless_sent.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (handler, log, counter) = (handler.clone(), log.clone(), counter.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (handler, log, counter) =
                            (handler.clone(), log.clone(), counter.clone());
                        async move {
                            let method = req.method().to_string();
                            let target = req
                                .uri()
                                .path_and_query()
                                .map(|p| p.to_string())
                                .unwrap_or_default();
                            let body = http_body_util_collect(req.into_body()).await;
                            let request = Seen {
                                method,
                                target,
                                body,
                            };
                            let answer = handler(&request);
                            log.lock().expect("lock").push(request);
                            let mut response = Response::new(Reply::of(answer.body, counter));
                            *response.status_mut() =
                                hyper::StatusCode::from_u16(answer.status).expect("status");
                            response.headers_mut().insert(
                                hyper::header::CONTENT_TYPE,
                                hyper::header::HeaderValue::from_static(answer.content_type),
                            );
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Hostile {
            addr,
            seen,
            endless_sent,
            task,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Every request so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
}

/// The request body, whole (tests send small ones).
async fn http_body_util_collect(mut body: Incoming) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(Ok(frame)) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
    {
        if let Ok(data) = frame.into_data() {
            out.extend_from_slice(&data);
        }
    }
    out
}

/// A response body: given bytes, or endless.
enum Reply {
    Bytes(Option<Bytes>),
    Endless(Arc<AtomicU64>),
}

impl Reply {
    fn of(payload: Payload, counter: Arc<AtomicU64>) -> Reply {
        match payload {
            Payload::Bytes(b) => Reply::Bytes(Some(Bytes::from(b))),
            Payload::Endless => Reply::Endless(counter),
        }
    }
}

impl Body for Reply {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Reply::Bytes(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Reply::Endless(sent) => {
                const CHUNK: usize = 64 * 1024;
                sent.fetch_add(CHUNK as u64, Ordering::Relaxed);
                Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; CHUNK])))))
            }
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            Reply::Bytes(Some(b)) => hyper::body::SizeHint::with_exact(b.len() as u64),
            Reply::Bytes(None) => hyper::body::SizeHint::with_exact(0),
            Reply::Endless(_) => hyper::body::SizeHint::default(),
        }
    }
}

/// Event data text nested `levels` deep (the data object is level 1): objects and arrays
/// alternating, `{"a":[{"a":[…]}]}`.
pub fn nested_data(levels: usize) -> String {
    let mut open = String::with_capacity(levels * 6);
    let mut close = String::with_capacity(levels);
    for level in 1..=levels {
        if level % 2 == 1 {
            open.push_str(if level == levels { "{" } else { "{\"a\":" });
            close.push('}');
        } else {
            open.push('[');
            close.push(']');
        }
    }
    let close: String = close.chars().rev().collect();
    open + &close
}
