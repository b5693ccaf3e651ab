//! What the parser properties share: case counts, nasty text and JSON, and the fake HTTP server
//! that answers the aw-server and upstream clients whatever a property tells it.

use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use serde_json::{json, Map, Value};

/// The most characters one character of remote text takes once through the printable filter
/// (`\u{2069}`): message caps count characters of the text, not of its escapes.
pub(super) const PRINTABLE_WIDTH: usize = 8;

/// `default` cases, or at least `PROPTEST_CASES` when that asks for more (long runs).
pub(super) fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .map_or(default, |asked| asked.max(default));
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

/// Text that is mostly printable but reaches every corner: control characters, quotes,
/// backslashes, NUL, non-BMP characters, and lone surrogate-looking escapes as text.
pub(super) fn nasty_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => any::<String>(),
        2 => "[ -~]{0,24}",
        1 => "[\"'\\\\\\u{0}\\n\\r\\t\u{7f}\u{202e}\u{1F600}a=&%?#]{0,12}",
    ]
}

/// A JSON value up to a few levels deep, with the numbers serde finds hard.
pub(super) fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        nasty_text().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(nasty_text(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

pub(super) fn json_map() -> impl Strategy<Value = Map<String, Value>> {
    proptest::collection::btree_map(nasty_text(), json_value(), 0..6)
        .prop_map(|m| m.into_iter().collect())
}

/// What the fake server answers next: status, extra headers, body (sent with its length, or
/// `chunked` in pieces of 64 KiB without one).
#[derive(Clone, Default)]
pub(super) struct Reply {
    pub(super) status: u16,
    pub(super) headers: Vec<(String, String)>,
    pub(super) body: Vec<u8>,
    pub(super) chunked: bool,
}

/// One loopback HTTP server for a whole property test, answering every request with the reply
/// the current case set, on a runtime kept for the test's lifetime.
pub(super) struct FakeServer {
    pub(super) runtime: tokio::runtime::Runtime,
    pub(super) addr: std::net::SocketAddr,
    pub(super) reply: Arc<Mutex<Reply>>,
}

impl FakeServer {
    pub(super) fn start() -> FakeServer {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let reply = Arc::new(Mutex::new(Reply::default()));
        let shared = reply.clone();
        let addr = runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            let app = axum::Router::new().fallback(move || {
                let r = shared.lock().expect("reply").clone();
                async move {
                    let body = if r.chunked {
                        let pieces = r.body.chunks(64 * 1024).map(<[u8]>::to_vec).collect();
                        axum::body::Body::new(Pieces(pieces))
                    } else {
                        axum::body::Body::from(r.body)
                    };
                    let mut response = axum::response::Response::new(body);
                    *response.status_mut() =
                        axum::http::StatusCode::from_u16(r.status).expect("status");
                    for (name, value) in r.headers {
                        if let (Ok(n), Ok(v)) = (
                            axum::http::HeaderName::from_bytes(name.as_bytes()),
                            axum::http::HeaderValue::from_str(&value),
                        ) {
                            response.headers_mut().append(n, v);
                        }
                    }
                    response
                }
            });
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            addr
        });
        FakeServer {
            runtime,
            addr,
            reply,
        }
    }

    pub(super) fn answer(&self, reply: Reply) {
        *self.reply.lock().expect("reply") = reply;
    }
}

/// A body sent in pieces, without a length (chunked transfer encoding).
pub(super) struct Pieces(std::collections::VecDeque<Vec<u8>>);

impl hyper::body::Body for Pieces {
    type Data = hyper::body::Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::task::Poll::Ready(
            self.get_mut()
                .0
                .pop_front()
                .map(|p| Ok(hyper::body::Frame::data(p.into()))),
        )
    }
}
