//! A loopback HTTP proxy in front of a real peer, for the races a test cannot make the peer lose
//! on its own (issue 14: a list insert that aw-server keeps writing after its client was
//! killed). Each request is read whole, then shown to the test's gate, whose future it waits
//! for before it is forwarded; the forward runs in its own task, so it goes on when the client
//! that sent the request has gone — as the peer would go on with a request it had read. Fault
//! injection only: the peer behind it is the real one.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};

use crate::hostile::Seen;

/// What the gate returns: the proxy forwards the request when it resolves.
pub type Hold = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Requests forwarded and answered, in the order their answers came.
#[derive(Default)]
pub struct Forwarded {
    done: Mutex<Vec<(Seen, u16)>>,
    changed: tokio::sync::Notify,
}

impl Forwarded {
    /// Every request answered so far, with the peer's status.
    pub fn list(&self) -> Vec<(Seen, u16)> {
        self.done.lock().expect("lock").clone()
    }

    /// Waits (bounded by `limit`) until `ready` holds for the requests answered so far.
    pub async fn wait_until(&self, limit: Duration, ready: impl Fn(&[(Seen, u16)]) -> bool) {
        let waiting = async {
            loop {
                let changed = self.changed.notified();
                if ready(&self.done.lock().expect("lock")) {
                    return;
                }
                changed.await;
            }
        };
        tokio::time::timeout(limit, waiting)
            .await
            .expect("the proxy's peer answered in time");
    }

    fn push(&self, seen: Seen, status: u16) {
        self.done.lock().expect("lock").push((seen, status));
        self.changed.notify_waiters();
    }
}

/// The proxy; stops accepting when dropped (forwards under way finish).
pub struct Proxy {
    addr: std::net::SocketAddr,
    pub forwarded: Arc<Forwarded>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Gate = dyn Fn(&Seen) -> Hold + Send + Sync;

impl Proxy {
    /// A proxy to `http://127.0.0.1:{peer_port}`; `gate` sees each request before it goes.
    pub async fn start(
        peer_port: u16,
        forwarded: Arc<Forwarded>,
        gate: impl Fn(&Seen) -> Hold + Send + Sync + 'static,
    ) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let gate: Arc<Gate> = Arc::new(gate);
        let client = reqwest::Client::new();
        let log = Arc::clone(&forwarded);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (gate, client, log) = (gate.clone(), client.clone(), log.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (gate, client, log) = (gate.clone(), client.clone(), log.clone());
                        async move {
                            let forward = forward(req, peer_port, gate, client, log);
                            // Its own task: a client gone does not stop the forward.
                            let answer = match tokio::spawn(forward).await {
                                Ok(Some(answer)) => answer,
                                _ => {
                                    let mut r = Response::new(http_body_util::Full::new(
                                        Bytes::from_static(b"proxy: the peer did not answer"),
                                    ));
                                    *r.status_mut() = hyper::StatusCode::BAD_GATEWAY;
                                    r
                                }
                            };
                            Ok::<_, Infallible>(answer)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Proxy {
            addr,
            forwarded,
            task,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

/// Reads the request whole, waits for the gate, forwards it and records the answer. `None`
/// when the request or the peer failed.
async fn forward(
    req: Request<Incoming>,
    peer_port: u16,
    gate: Arc<Gate>,
    client: reqwest::Client,
    log: Arc<Forwarded>,
) -> Option<Response<http_body_util::Full<Bytes>>> {
    use http_body_util::BodyExt;

    let method = req.method().clone();
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let content_type = req.headers().get(hyper::header::CONTENT_TYPE).cloned();
    let body = req.into_body().collect().await.ok()?.to_bytes();
    let seen = Seen {
        method: method.to_string(),
        target: target.clone(),
        body: body.to_vec(),
    };
    gate(&seen).await;
    let method = reqwest::Method::from_bytes(method.as_str().as_bytes()).ok()?;
    let mut out = client
        .request(method, format!("http://127.0.0.1:{peer_port}{target}"))
        .body(body);
    if let Some(ct) = content_type.as_ref().and_then(|v| v.to_str().ok()) {
        out = out.header(reqwest::header::CONTENT_TYPE, ct);
    }
    let answer = out.send().await.ok()?;
    let status = answer.status().as_u16();
    let content_type = answer
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bytes = answer.bytes().await.ok()?;
    log.push(seen, status);
    let mut response = Response::new(http_body_util::Full::new(bytes));
    *response.status_mut() = hyper::StatusCode::from_u16(status).ok()?;
    if let Some(ct) = content_type.and_then(|c| hyper::header::HeaderValue::from_str(&c).ok()) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, ct);
    }
    Some(response)
}
