//! samay-aw-double: a stand-in for aw-server-rust's REST API, for tests and benchmarks.
//!
//! aw-server-rust cannot be built here (it is not on crates.io in a usable version, and there
//! is no network), and Python aw-server reads ~6.7k events/s — far too slow to measure a
//! catch-up of a million events against. The double serves the same API with aw-server-rust's
//! semantics from one of two stores ([`Storage`]): in memory (fast to load, O(page) for any
//! query: for conformance and fault tests), or SQLite with aw-server-rust's schema, index and
//! statements ([`sqlite`]: what a read pattern costs aw-server-rust, for the benchmark). Both
//! are checked against the real Python aw-server 0.12 by the sidecar's `tests/it/aw_double.rs` (every
//! conformance test runs on all three):
//!
//! * range queries return every event whose `[timestamp, timestamp + duration]` overlaps
//!   `[start, end]` (both ends inclusive), **clipped** to the range, ordered
//!   `starttime DESC, endtime ASC, id ASC`, at most `limit` (absent or `-1`: all);
//! * one id counter across all buckets; a POSTed event carrying an `id` replaces that row,
//!   wherever it is;
//! * heartbeats merge with the last event (aw-server-rust's per-bucket cache of the last
//!   heartbeat, else the newest event) when the data is equal and the heartbeat starts within
//!   `[last.start, last.end + pulsetime]`; the merged event keeps the id;
//! * errors are `{"message": ...}` with aw-server-rust's texts and statuses.
//!
//! It also does what a test needs and a real server cannot do quickly: load events without
//! HTTP ([`AwDouble::insert_raw`], [`AwDouble::load_synthetic`]), stop refusing connections and
//! come back on the same port ([`AwDouble::stop`], [`AwDouble::start`]), and lose its whole
//! database ([`AwDouble::replace_database`]).
//!
//! # Where aw-server-rust and Python aw-server differ, the double is aw-server-rust
//!
//! | behaviour | aw-server-rust (and the double) | Python aw-server 0.12 |
//! | --- | --- | --- |
//! | range pre-filter | none: an event of any length overlapping the range is returned (the backward scan is bounded by the bucket's longest event) | `timestamp >= start - 24h`: longer events are missed |
//! | query `end` | exact, nanoseconds | `end` + 1 ms: events starting up to 1 ms after `end` are included, straddlers are clipped 1 ms later |
//! | stored precision | timestamps and durations in nanoseconds | timestamps truncated to ms, durations to µs |
//! | timestamp format | `...Z`, no/3/6/9 fraction digits (chrono serde) | `+00:00`, 0 or 6 digits |
//! | ids after deleting the newest | never reused (`AUTOINCREMENT`) | reused (peewee's `AutoField` is a plain rowid) |
//! | missing event | 404 `{"message":"The requested event 'N' does not exist in bucket 'B'"}` (aw-server-rust after 59eaae3; up to 59eaae3 it was a 500) | 404 `null` |
//! | missing bucket | 404 `{"message":"The requested bucket 'B' does not exist"}` | 404 `{"message":"There's no bucket named B. ..."}` |
//! | `POST .../events` answer | the inserted events with their ids | `null` |
//! | `limit` not a `u64` (`-1`, `abc`) | all events (Rocket's `Option<u64>` guard) | `-1`: all; a non-integer is an error (`int()`) |
//! | `POST` an existing bucket | 304, empty body | 304 |
//! | `GET .../events/count?start&end` | the whole bucket (the handler passes no range) | the events overlapping the range |
//! | query API `sum_durations` | the sum, in seconds | 500 (`timedelta` is not JSON serialisable) |
//! | `DELETE` a bucket | no `force` needed | `force=1` outside `--testing` |
//! | bucket listing | `metadata: {start, end}`, `events: null`, and `last_updated` (see below) | `last_updated`, `name: null` |
//! | heartbeat cache after `POST .../events` | invalidated | kept |
//!
//! Deliberate differences from aw-server-rust:
//! * In memory, `last_updated` in the bucket listing is the end of the newest event, as Python
//!   computes it; aw-server-rust (and the SQLite double) leave it `null` (they report the span
//!   in `metadata`, which the in-memory double also does).
//! * Deleting an event forgets the bucket's heartbeat cache. aw-server-rust keeps it, so a
//!   heartbeat after deleting the cached event fails with an internal error (or, before the
//!   `replace_last_event` fix, updates nothing); the double merges with the newest remaining
//!   event instead.
//! * The query API (`POST /api/0/query/`) understands only `sum_durations(query_bucket(..))`
//!   ([`query`]); no `/export`, `/import`, settings or key-value endpoints, and no API key.
//! * `GET /_double/requests` (not aw-server's) answers how many requests it served, for the
//!   benchmark that runs it as its own process.

pub mod db;
pub mod http;
pub mod query;
pub mod sqlite;
pub mod store;
pub mod synthetic;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tower::ServiceExt;

pub use db::{Db, Storage};
pub use store::{BucketInfo, DoubleError, HeartbeatOutcome, RawEvent};

/// The version `/api/0/info` reports: aw-server-rust's shape, marked as the double.
pub const VERSION: &str = "v0.13.1 (rust, samay-aw-double)";

/// How long [`AwDouble::start`] waits for its old port to be free again.
const REBIND_PATIENCE: Duration = Duration::from_secs(10);

/// How long a client may take to send request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct AwDoubleConfig {
    /// Must be loopback (the double has no auth); port 0 picks a free port.
    pub bind: SocketAddr,
    /// What `/api/0/info` reports as `hostname`.
    pub hostname: String,
    /// What `/api/0/info` reports as `testing`.
    pub testing: bool,
    /// In memory (fast, for tests) or SQLite like aw-server-rust (its read costs).
    pub storage: Storage,
}

impl Default for AwDoubleConfig {
    fn default() -> Self {
        AwDoubleConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            hostname: "aw-double".to_string(),
            testing: true,
            storage: Storage::Memory,
        }
    }
}

/// State shared by the handle and the HTTP handlers.
pub(crate) struct Shared {
    db: RwLock<Db>,
    device_id: RwLock<String>,
    hostname: String,
    testing: bool,
    version: &'static str,
    /// HTTP requests answered (all routes), for benchmarks and tests that count traffic.
    requests: AtomicU64,
    /// Connections accepted, for tests of how a client reuses them.
    connections: AtomicU64,
    hook: RwLock<Option<RequestHook>>,
}

impl Shared {
    /// A panicking handler cannot leave the store half-updated in a way that matters to a
    /// test double, so a poisoned lock is used as is.
    fn read(&self) -> RwLockReadGuard<'_, Db> {
        self.db.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Db> {
        self.db.write().unwrap_or_else(|p| p.into_inner())
    }

    fn device_id(&self) -> String {
        self.device_id
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn hook(&self) -> Option<RequestHook> {
        self.hook.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// What a [`RequestHook`] may return: the request is served only once this future completes.
pub type HookFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Called with each request's method and URI as it arrives, before it is served. Returning a
/// future holds the request until the future completes: a crash test uses this to kill its
/// client while a page request is provably in flight, which polling from outside can only
/// hope for. `None` serves at once.
pub type RequestHook = Arc<dyn Fn(&hyper::Method, &hyper::Uri) -> Option<HookFuture> + Send + Sync>;

/// The accept loop of one "server process": stopping it closes the listener and cuts every
/// open connection, as a killed aw-server would.
struct Running {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// A running (or stopped) double. Dropping it stops serving.
pub struct AwDouble {
    addr: SocketAddr,
    shared: Arc<Shared>,
    running: Mutex<Option<Running>>,
}

/// Binds and serves in a background task of the current tokio runtime.
pub async fn spawn(cfg: AwDoubleConfig) -> anyhow::Result<AwDouble> {
    AwDouble::spawn(cfg).await
}

impl AwDouble {
    /// Binds `cfg.bind` and serves in a background task of the current tokio runtime.
    pub async fn spawn(cfg: AwDoubleConfig) -> anyhow::Result<AwDouble> {
        anyhow::ensure!(
            cfg.bind.ip().is_loopback(),
            "refusing to bind {}: the aw-server double has no auth, so it listens on loopback only",
            cfg.bind
        );
        let listener = TcpListener::bind(cfg.bind)
            .await
            .with_context(|| format!("binding {}", cfg.bind))?;
        let addr = listener.local_addr()?;
        let db = Db::open(&cfg.storage).context("opening the double's datastore")?;
        let shared = Arc::new(Shared {
            db: RwLock::new(db),
            device_id: RwLock::new(uuid::Uuid::new_v4().to_string()),
            hostname: cfg.hostname,
            testing: cfg.testing,
            version: VERSION,
            requests: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            hook: RwLock::new(None),
        });
        let double = AwDouble {
            addr,
            shared,
            running: Mutex::new(None),
        };
        double.serve(listener);
        Ok(double)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The `device_id` `/api/0/info` reports (new after [`AwDouble::replace_database`]).
    pub fn device_id(&self) -> String {
        self.shared.device_id()
    }

    /// HTTP requests received so far, every route and every status.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Installs (or, with `None`, removes) the [`RequestHook`] every later request passes
    /// through.
    pub fn set_request_hook(&self, hook: Option<RequestHook>) {
        *self.shared.hook.write().unwrap_or_else(|p| p.into_inner()) = hook;
    }

    /// Whether it is accepting connections.
    pub fn is_running(&self) -> bool {
        self.lock_running().is_some()
    }

    /// Stops serving: the port refuses connections and open connections are cut mid-request.
    /// The data stays. No-op when already stopped.
    pub async fn stop(&self) {
        let running = self.lock_running().take();
        if let Some(running) = running {
            let _ = running.stop.send(());
            let _ = running.task.await;
        }
    }

    /// Serves again on the same port, with the same data. No-op when already running.
    pub async fn start(&self) -> anyhow::Result<()> {
        if self.is_running() {
            return Ok(());
        }
        // The old listener is closed; SO_REUSEADDR (tokio's default on Unix) lets the port be
        // bound again even with connections in TIME_WAIT. While it was closed, though, the
        // kernel may have given the port to an outgoing connection as its source port (any
        // test, or any process on this machine): such a connection is short, so wait for it,
        // for a bounded time.
        let deadline = tokio::time::Instant::now() + REBIND_PATIENCE;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(e)
                    if e.kind() == std::io::ErrorKind::AddrInUse
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("re-binding {}", self.addr));
                }
            }
        };
        self.serve(listener);
        Ok(())
    }

    /// Like an aw-server restart: connections drop, the data and ids stay; the heartbeat caches
    /// (process memory in aw-server-rust) are forgotten.
    pub async fn restart(&self) -> anyhow::Result<()> {
        self.stop().await;
        self.shared.write().forget_heartbeats();
        self.start().await
    }

    /// Like a user resetting aw-server: every bucket and event gone, ids start at 1 again, a
    /// new `device_id`; buckets created afterwards get new `created` times. Keeps serving
    /// (connections are cut, as the real server would have to restart).
    pub async fn replace_database(&self) -> anyhow::Result<()> {
        let was_running = self.is_running();
        self.stop().await;
        self.shared.write().clear()?;
        *self
            .shared
            .device_id
            .write()
            .unwrap_or_else(|p| p.into_inner()) = uuid::Uuid::new_v4().to_string();
        if was_running {
            self.start().await?;
        }
        Ok(())
    }

    /// Stops serving and waits for the accept loop to end.
    pub async fn shutdown(self) {
        self.stop().await;
    }

    /// Creates a bucket (`created` = now). `Err(BucketExists)` leaves the existing one as is.
    pub fn create_bucket(
        &self,
        id: &str,
        bucket_type: &str,
        client: &str,
        hostname: &str,
    ) -> Result<(), DoubleError> {
        self.shared
            .write()
            .create_bucket_at(id, bucket_type, client, hostname, chrono::Utc::now())
    }

    pub fn delete_bucket(&self, id: &str) -> Result<(), DoubleError> {
        self.shared.write().delete_bucket(id)
    }

    /// Inserts events (their `id`s are ignored: each gets the next id). Returns the ids.
    pub fn insert(&self, bucket: &str, events: &[Event]) -> Result<Vec<i64>, DoubleError> {
        let raws = events
            .iter()
            .map(RawEvent::from_event)
            .collect::<Result<Vec<_>, _>>()?;
        self.shared.write().insert_raw(bucket, raws)
    }

    /// Inserts pre-serialised events: the fast path for bulk loads. `data` is served verbatim,
    /// so it must be a JSON object's text.
    pub fn insert_raw(
        &self,
        bucket: &str,
        events: impl IntoIterator<Item = RawEvent>,
    ) -> Result<Vec<i64>, DoubleError> {
        self.shared.write().insert_raw(bucket, events)
    }

    /// `POST .../heartbeat?pulsetime=` without HTTP.
    pub fn heartbeat(
        &self,
        bucket: &str,
        event: &Event,
        pulsetime: f64,
    ) -> Result<HeartbeatOutcome, DoubleError> {
        let raw = RawEvent::from_event(event)?;
        self.shared.write().heartbeat(bucket, raw, pulsetime)
    }

    /// Deletes one event; `Ok(false)` if the bucket has no such event.
    pub fn delete_event(&self, bucket: &str, id: i64) -> Result<bool, DoubleError> {
        self.shared.write().delete_event(bucket, id)
    }

    /// Every event of a bucket, newest first, unclipped.
    pub fn events(&self, bucket: &str) -> Result<Vec<Event>, DoubleError> {
        self.shared.read().events(bucket)
    }

    /// How many events a bucket holds.
    pub fn len(&self, bucket: &str) -> Result<usize, DoubleError> {
        self.shared.read().len(bucket)
    }

    /// Bucket ids, sorted.
    pub fn bucket_ids(&self) -> Vec<String> {
        self.shared.read().bucket_ids()
    }

    /// Runs `f` with the store locked for writing: for many operations at once (a model-based
    /// test's step) without re-locking.
    pub fn with_db<T>(&self, f: impl FnOnce(&mut Db) -> T) -> T {
        f(&mut self.shared.write())
    }

    /// Creates the synthetic buckets of `spec` and loads their events in time order (ids
    /// interleave across buckets as a real server's would). Returns the number of events.
    pub fn load_synthetic(&self, spec: &synthetic::Spec) -> Result<usize, DoubleError> {
        let mut db = self.shared.write();
        let buckets = synthetic::buckets(spec);
        for b in &buckets {
            match db.create_bucket(b.info.clone()) {
                Ok(()) | Err(DoubleError::BucketExists(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let ids: Vec<&str> = buckets.iter().map(|b| b.info.id.as_str()).collect();
        db.insert_many(synthetic::events(spec).map(|(i, raw)| (ids[i], raw)))
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, Option<Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn serve(&self, listener: TcpListener) {
        let (stop, stopped) = oneshot::channel();
        let router = http::router(self.shared.clone());
        let task = tokio::spawn(accept_loop(listener, router, stopped, self.shared.clone()));
        *self.lock_running() = Some(Running { stop, task });
    }
}

impl Drop for AwDouble {
    fn drop(&mut self) {
        if let Some(running) = self.lock_running().take() {
            let _ = running.stop.send(());
            running.task.abort();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    router: axum::Router,
    mut stop: oneshot::Receiver<()>,
    shared: Arc<Shared>,
) {
    let mut connections = JoinSet::new();
    loop {
        let stream = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Usually EMFILE or a connection reset before accept; back off briefly.
                    tracing::warn!("aw double accept: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        while connections.try_join_next().is_some() {}
        shared.connections.fetch_add(1, Ordering::Relaxed);
        connections.spawn(serve_connection(stream, router.clone(), shared.clone()));
    }
    drop(listener);
    // Cut, not drain: a stopped aw-server answers nothing more.
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

async fn serve_connection(stream: TcpStream, router: axum::Router, shared: Arc<Shared>) {
    let service = service_fn(move |request: hyper::Request<Incoming>| {
        let router = router.clone();
        shared.requests.fetch_add(1, Ordering::Relaxed);
        let hold = shared
            .hook()
            .and_then(|hook| hook(request.method(), request.uri()));
        async move {
            if let Some(hold) = hold {
                hold.await;
            }
            let response = router
                .oneshot(request)
                .await
                .unwrap_or_else(|never: Infallible| match never {});
            Ok::<_, Infallible>(response)
        }
    });
    let result = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(e) = result {
        tracing::debug!("aw double connection: {e}");
    }
}

/// One event as aw-server stores and serves it (aw-server-rust's `aw_models::Event`). The
/// double's own type: it stands in for aw-server, so it shares no code with the client it is
/// tested against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
    pub timestamp: DateTime<Utc>,
    /// Seconds.
    pub duration: f64,
    #[serde(default)]
    pub data: Map<String, Value>,
}

impl Event {
    /// An event without an id (the server assigns it).
    pub fn new(timestamp: DateTime<Utc>, duration: f64, data: Map<String, Value>) -> Self {
        Event {
            id: None,
            timestamp,
            duration,
            data,
        }
    }
}

/// An `Event` from its parts, for callers that build test data by hand.
pub fn event(timestamp: DateTime<Utc>, duration: f64, data: Value) -> Event {
    let data = match data {
        Value::Object(m) => m,
        other => {
            let mut m = Map::new();
            m.insert("value".into(), other);
            m
        }
    };
    Event::new(timestamp, duration, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// While the double was stopped its port was taken (by an outgoing connection's source port,
    /// in the tests that found this; here by a listener): `start` waits for it to be free
    /// instead of failing at once with "address in use".
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn start_waits_for_its_port_to_be_free_again() {
        let double = AwDouble::spawn(AwDoubleConfig::default())
            .await
            .expect("double");
        let addr = double.addr();
        double.stop().await;
        let holder = std::net::TcpListener::bind(addr).expect("take the port");
        let (released_tx, released_rx) = std::sync::mpsc::channel();
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(holder);
            released_tx.send(()).expect("report");
        });
        double.start().await.expect("start once the port is free");
        // It could only bind after the holder let go.
        released_rx
            .try_recv()
            .expect("started only after the port was released");
        assert_eq!(double.addr(), addr);
        releaser.join().expect("releaser");
        double.shutdown().await;
    }
}
