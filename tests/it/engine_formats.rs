//! The engine against the ways its peers can *talk*: a token the upstream stops accepting (401 →
//! one refresh), aw-server-rust's timestamp format next to Python's, and aw-server answers that
//! are not what the engine expects.
//!
//! Python aw-server and the dev upstream are the real ones (crates/samay-testkit). aw-server-rust
//! cannot run here, so its wire format comes from [`RustFormatStub`]: a deliberately small,
//! fault-injection-style double that serves events *copied out of a real Python aw-server* the
//! way aw-server-rust prints them, and that can be told to answer garbage.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aw_sync_samay::auth::{AccessToken, AuthError, BoxFuture, StaticToken, TokenSource};
use aw_sync_samay::engine::{CycleError, Engine, Settings};
use aw_sync_samay::source::{AwClient, Event, SourceError};
use aw_sync_samay::state::hash::duration_to_ns;
use aw_sync_samay::state::Store;
use aw_sync_samay::upstream::UpstreamClient;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Duration as ChronoDuration, SecondsFormat, Utc};
use samay_server::{DevServer, StoredEvent};
use samay_testkit::devserver::{start_dev_server, TEST_TOKEN};
use samay_testkit::rig::{ago, event, series, test_settings, Rig};
use serde_json::{json, Map, Value};

// ---------------------------------------------------------------------------------------------
// (a) 401 → one refresh
// ---------------------------------------------------------------------------------------------

/// A token source shaped like an OAuth login: `token()` hands out the current token; `refresh`
/// swaps in `next` (which the test registers on the dev server) or fails with `Rejected`, as
/// `invalid_grant` would. Counts and records every refresh.
struct TestTokens {
    current: Mutex<AccessToken>,
    next: Mutex<Option<AccessToken>>,
    refreshes: AtomicU32,
    refused: Mutex<Vec<String>>,
}

impl TestTokens {
    fn new(current: &str, next: Option<&str>) -> Arc<TestTokens> {
        Arc::new(TestTokens {
            current: Mutex::new(AccessToken::new(current)),
            next: Mutex::new(next.map(AccessToken::new)),
            refreshes: AtomicU32::new(0),
            refused: Mutex::new(Vec::new()),
        })
    }

    /// The user logged in again.
    fn set_current(&self, token: &str) {
        *self.current.lock().unwrap() = AccessToken::new(token);
    }

    fn refreshes(&self) -> u32 {
        self.refreshes.load(Ordering::SeqCst)
    }
}

impl TokenSource for TestTokens {
    fn token(&self) -> BoxFuture<'_, Result<AccessToken, AuthError>> {
        Box::pin(async move { Ok(self.current.lock().unwrap().clone()) })
    }

    fn refresh<'a>(
        &'a self,
        rejected: &'a AccessToken,
    ) -> BoxFuture<'a, Result<AccessToken, AuthError>> {
        Box::pin(async move {
            self.refreshes.fetch_add(1, Ordering::SeqCst);
            self.refused
                .lock()
                .unwrap()
                .push(rejected.secret().to_string());
            match self.next.lock().unwrap().clone() {
                Some(fresh) => {
                    *self.current.lock().unwrap() = fresh.clone();
                    Ok(fresh)
                }
                None => Err(AuthError::Rejected("invalid_grant (test)".into())),
            }
        })
    }

    fn user_id(&self) -> Option<String> {
        None
    }

    fn describe(&self) -> String {
        "test tokens".into()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_refreshes_the_token_once_and_the_cycle_delivers_everything() {
    let rig = Rig::new().await;
    rig.bucket("window").await;
    rig.bucket("afk").await;
    // 55 events in batches of 7: eight batches, all of them after the refresh.
    rig.insert("window", &series(40, 600.0, 300, "w")).await;
    rig.insert("afk", &series(15, 900.0, 120, "a")).await;

    rig.dev.add_token("fresh-token");
    let tokens = TestTokens::new("expired-token", Some("fresh-token"));
    let engine = rig.engine_full(test_settings(), tokens.clone(), "state.sqlite");
    let report = engine
        .run_cycle()
        .await
        .expect("the cycle survives the 401");

    assert_eq!(report.upload.delivered, 55);
    assert_eq!(tokens.refreshes(), 1, "one refresh for the whole cycle");
    assert_eq!(*tokens.refused.lock().unwrap(), vec!["expired-token"]);
    let counters = rig.dev.faults().counters();
    assert_eq!(
        counters.requests_received,
        counters.batches_stored + 1,
        "exactly one request was refused (the first), every later batch used the fresh token"
    );
    rig.assert_exact("window").await;
    rig.assert_exact("afk").await;

    // The next cycle starts with the refreshed token: no 401, no refresh.
    rig.insert("afk", &series(3, 10.0, 5, "more")).await;
    let again = engine.run_cycle().await.expect("second cycle");
    assert_eq!(again.upload.delivered, 3);
    assert_eq!(tokens.refreshes(), 1);
    rig.assert_exact("afk").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_refresh_waits_for_a_login_and_loses_nothing() {
    let rig = Rig::new().await;
    rig.bucket("window").await;
    rig.insert("window", &series(30, 600.0, 300, "w")).await;

    let tokens = TestTokens::new("revoked-token", None);
    let engine = rig.engine_full(test_settings(), tokens.clone(), "state.sqlite");
    let err = engine.run_cycle().await.expect_err("no usable token");
    assert!(
        matches!(err, CycleError::Auth(AuthError::Rejected(_))),
        "{err:?}"
    );
    assert!(err.needs_login(), "the daemon idles for a login: {err}");
    assert_eq!(tokens.refreshes(), 1, "one attempt, no refresh loop");

    // Nothing was recorded as delivered, and the upstream holds nothing.
    let statuses = engine.store.bucket_statuses().unwrap();
    assert!(
        statuses
            .iter()
            .all(|s| s.delivered == 0 && s.versions_sent == 0),
        "{statuses:?}"
    );
    let ids: Vec<i64> = rig
        .source_events("window")
        .await
        .iter()
        .filter_map(|e| e.id)
        .collect();
    assert!(engine
        .store
        .lookup_by_name("window", &ids)
        .unwrap()
        .is_empty());
    assert!(rig.upstream_events("window").await.is_empty());
    assert!(engine.store.cycle_record().unwrap().last_error.is_some());

    // The user logs in again: the next cycle delivers everything, nothing was skipped.
    tokens.set_current(TEST_TOKEN);
    let report = engine.run_cycle().await.expect("cycle after the login");
    assert_eq!(report.upload.delivered, 30);
    assert_eq!(tokens.refreshes(), 1);
    rig.assert_exact("window").await;
}

// ---------------------------------------------------------------------------------------------
// The aw-server-rust format stub
// ---------------------------------------------------------------------------------------------

/// How the stub misbehaves on `GET .../events` (range queries; fetches by id stay healthy).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// 200 with a body that is not JSON (a proxy's page, a different program on the port).
    Garbage,
    /// 200 with JSON of the wrong shape: an object where the event list belongs.
    WrongShape,
    /// 200 with a list whose one event has an unparseable timestamp.
    BadEvent,
    /// An error status with aw-server-rust's error body.
    Status(u16),
}

#[derive(Debug, Clone)]
struct FaultPlan {
    fault: Fault,
    /// The first events request (1-based, counted over all buckets) that fails; all later ones
    /// fail too.
    from_request: u64,
    /// Only this bucket's requests fail (and count); `None`: every bucket's.
    bucket: Option<String>,
}

#[derive(Debug, Clone)]
struct StubEvent {
    id: i64,
    start_ns: i64,
    end_ns: i64,
    data: Map<String, Value>,
}

#[derive(Debug, Clone)]
struct StubBucket {
    bucket_type: String,
    client: String,
    hostname: String,
    created: DateTime<Utc>,
    events: Vec<StubEvent>,
}

struct StubState {
    device_id: String,
    buckets: BTreeMap<String, StubBucket>,
    fault: Mutex<Option<FaultPlan>>,
    events_requests: AtomicU64,
}

/// A stand-in for aw-server-rust, which cannot run here (it is not among the installed peers).
/// It serves only the REST subset the engine reads — `GET /api/0/info`, `GET /api/0/buckets/`,
/// `GET /api/0/buckets/{id}/events?start&end&limit`, `GET /api/0/buckets/{id}/events/count` and
/// `GET /api/0/buckets/{id}/events/{eid}` —
/// and serves it the way aw-server-rust does (its `get_events` SQL and chrono serialisation):
///
/// * events overlapping `[start, end]` inclusively (`endtime >= start AND starttime <= end`),
///   newest first, at most `limit`, each **clipped** to the range, instants kept in integer
///   nanoseconds and durations printed as `nanoseconds / 1e9`;
/// * timestamps in UTC with `Z`: even ids as chrono's serde prints them (`AutoSi`: 3, 6 or 9
///   digits), odd ids always with nine digits (`.123000000Z`), the widest form it produces;
/// * `data` objects with their keys in reverse order, to show the order does not matter.
///
/// Everything else (writes, heartbeats, auth) is left out on purpose: this is a double for
/// format and fault tests, not a second aw-server. Faults come from [`FaultPlan`].
struct RustFormatStub {
    addr: SocketAddr,
    state: Arc<StubState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RustFormatStub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RustFormatStub {
    async fn start(device_id: &str, buckets: BTreeMap<String, StubBucket>) -> RustFormatStub {
        let state = Arc::new(StubState {
            device_id: device_id.to_string(),
            buckets,
            fault: Mutex::new(None),
            events_requests: AtomicU64::new(0),
        });
        let router = Router::new()
            .route("/api/0/info", get(stub_info))
            .route("/api/0/buckets/", get(stub_buckets))
            .route("/api/0/buckets/{id}/events", get(stub_events))
            .route("/api/0/buckets/{id}/events/count", get(stub_count))
            .route("/api/0/buckets/{id}/events/{eid}", get(stub_event))
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the stub");
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.expect("stub serves");
        });
        RustFormatStub { addr, state, task }
    }

    fn client(&self) -> AwClient {
        AwClient::new("127.0.0.1", self.addr.port()).unwrap()
    }

    fn set_fault(&self, plan: Option<FaultPlan>) {
        *self.state.fault.lock().unwrap() = plan;
        self.state.events_requests.store(0, Ordering::SeqCst);
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

fn json_response(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn rust_timestamp(ns: i64, id: i64) -> String {
    let t = DateTime::<Utc>::from_timestamp_nanos(ns);
    let format = if id % 2 == 0 {
        SecondsFormat::AutoSi
    } else {
        SecondsFormat::Nanos
    };
    t.to_rfc3339_opts(format, true)
}

/// One event as aw-server-rust prints it, `data` keys reversed.
fn render_event(id: i64, start_ns: i64, end_ns: i64, data: &Map<String, Value>) -> String {
    let duration = (end_ns - start_ns) as f64 / 1e9;
    let fields: Vec<String> = data
        .iter()
        .rev()
        .map(|(k, v)| format!("{}:{}", json!(k), v))
        .collect();
    format!(
        r#"{{"id":{id},"timestamp":"{}","duration":{},"data":{{{}}}}}"#,
        rust_timestamp(start_ns, id),
        json!(duration),
        fields.join(",")
    )
}

fn not_found_bucket(id: &str) -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        json!({"message": format!("The requested bucket '{id}' does not exist")}).to_string(),
    )
}

async fn stub_info(State(s): State<Arc<StubState>>) -> Response {
    json_response(
        StatusCode::OK,
        json!({"hostname": "stub-host", "version": "v0.13.1 (rust)", "testing": true,
               "device_id": s.device_id})
        .to_string(),
    )
}

async fn stub_buckets(State(s): State<Arc<StubState>>) -> Response {
    let map: Map<String, Value> = s
        .buckets
        .iter()
        .map(|(id, b)| {
            let created = b.created.to_rfc3339_opts(SecondsFormat::AutoSi, true);
            (
                id.clone(),
                json!({"id": id, "type": b.bucket_type, "client": b.client,
                       "hostname": b.hostname, "created": created, "data": {},
                       "metadata": {"start": null, "end": null}}),
            )
        })
        .collect();
    json_response(StatusCode::OK, Value::Object(map).to_string())
}

/// A query instant in nanoseconds; `Err` names the bad parameter.
fn parse_instant(q: &HashMap<String, String>, key: &str) -> Result<Option<i64>, String> {
    match q.get(key) {
        None => Ok(None),
        Some(v) => DateTime::parse_from_rfc3339(v)
            .ok()
            .and_then(|t| t.timestamp_nanos_opt())
            .map(Some)
            .ok_or_else(|| format!("bad {key}: {v}")),
    }
}

async fn stub_events(
    State(s): State<Arc<StubState>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let plan = s.fault.lock().unwrap().clone();
    if let Some(plan) = plan.filter(|p| p.bucket.as_ref().map_or(true, |b| *b == id)) {
        let n = s.events_requests.fetch_add(1, Ordering::SeqCst) + 1;
        if n >= plan.from_request {
            return match plan.fault {
                Fault::Garbage => json_response(
                    StatusCode::OK,
                    "<html><body>502 Bad Gateway</body></html>".into(),
                ),
                Fault::WrongShape => {
                    json_response(StatusCode::OK, r#"{"events":[],"count":0}"#.into())
                }
                Fault::BadEvent => json_response(
                    StatusCode::OK,
                    r#"[{"id":1,"timestamp":"yesterday","duration":1.0,"data":{}}]"#.into(),
                ),
                Fault::Status(code) => json_response(
                    StatusCode::from_u16(code).unwrap(),
                    json!({"message": "Failed to query events: database disk image is malformed"})
                        .to_string(),
                ),
            };
        }
    }
    let Some(bucket) = s.buckets.get(&id) else {
        return not_found_bucket(&id);
    };
    let (start, end) = match (parse_instant(&q, "start"), parse_instant(&q, "end")) {
        (Ok(a), Ok(b)) => (a.unwrap_or(i64::MIN), b.unwrap_or(i64::MAX)),
        (Err(m), _) | (_, Err(m)) => {
            return json_response(StatusCode::BAD_REQUEST, json!({ "message": m }).to_string())
        }
    };
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<i64>().ok())
        .filter(|l| *l >= 0)
        .map_or(usize::MAX, |l| l as usize);
    let mut hits: Vec<&StubEvent> = bucket
        .events
        .iter()
        .filter(|e| e.end_ns >= start && e.start_ns <= end)
        .collect();
    hits.sort_by(|a, b| b.start_ns.cmp(&a.start_ns).then(b.id.cmp(&a.id)));
    let rendered: Vec<String> = hits
        .into_iter()
        .take(limit)
        .map(|e| render_event(e.id, e.start_ns.max(start), e.end_ns.min(end), &e.data))
        .collect();
    json_response(StatusCode::OK, format!("[{}]", rendered.join(",")))
}

async fn stub_event(
    State(s): State<Arc<StubState>>,
    Path((id, eid)): Path<(String, i64)>,
) -> Response {
    let Some(bucket) = s.buckets.get(&id) else {
        return not_found_bucket(&id);
    };
    match bucket.events.iter().find(|e| e.id == eid) {
        Some(e) => json_response(
            StatusCode::OK,
            render_event(e.id, e.start_ns, e.end_ns, &e.data),
        ),
        None => json_response(
            StatusCode::NOT_FOUND,
            json!({"message": format!("The requested event '{eid}' does not exist in bucket '{id}'")})
                .to_string(),
        ),
    }
}

/// aw-server-rust's count: the whole bucket, whatever the query says.
async fn stub_count(State(s): State<Arc<StubState>>, Path(id): Path<String>) -> Response {
    match s.buckets.get(&id) {
        Some(b) => json_response(StatusCode::OK, b.events.len().to_string()),
        None => not_found_bucket(&id),
    }
}

fn stub_event_from(e: &Event) -> StubEvent {
    let start_ns = e.timestamp.timestamp_nanos_opt().unwrap();
    StubEvent {
        id: e.id.expect("a stored event has an id"),
        start_ns,
        end_ns: start_ns + duration_to_ns(e.duration).unwrap(),
        data: e.data.clone(),
    }
}

// ---------------------------------------------------------------------------------------------
// (b) both timestamp formats hash the same
// ---------------------------------------------------------------------------------------------

/// Realistic watcher data with nested values, unicode, floats, booleans and null, across days,
/// with long events that page edges cut, and ties.
async fn fill_python(rig: &Rig) -> Vec<String> {
    let client = rig.client();
    let buckets = [
        ("aw-watcher-window_test-host", "currentwindow"),
        ("aw-watcher-afk_test-host", "afkstatus"),
        ("aw-watcher-web-firefox_test-host", "web.tab.current"),
    ];
    for (id, ty) in buckets {
        client
            .create_bucket(id, ty, "test", "test-host")
            .await
            .unwrap();
    }
    let [window, afk, web] = buckets.map(|b| b.0);

    let mut w = series(45, 9_000.0, 900, "w");
    for (i, e) in w.iter_mut().enumerate() {
        e.data.insert("zeta".into(), json!(i));
        e.data.insert(
            "alpha".into(),
            json!({"z": [1, {"y": null, "b": true}], "a": "Grüße 🚀 \"q\""}),
        );
    }
    // A long event across fifteen others: newest-first pages have edges inside it, where it
    // comes back clipped.
    let long_start = w[15].timestamp + chrono::Duration::seconds(1);
    w.push(event(
        long_start,
        15.0 * 9_000.0,
        json!({"app": "long", "title": "across page edges"}),
    ));
    let tie = ago(20_000);
    for k in 0..3 {
        w.push(event(
            tie,
            1.25,
            json!({"app": "tie", "title": format!("tie {k}")}),
        ));
    }
    rig.insert(window, &w).await;

    let mut a = vec![event(
        ago(4 * 86_400),
        3.0 * 86_400.0 + 0.123,
        json!({"status": "not-afk"}),
    )];
    a.extend((0..12).map(|i| {
        event(
            ago(86_400 - i * 3_000),
            [0.0, 0.1, 1.5, 12.345678, 299.999][i as usize % 5],
            json!({"status": if i % 2 == 0 { "afk" } else { "not-afk" }}),
        )
    }));
    rig.insert(afk, &a).await;

    let web_events: Vec<Event> = (0..25)
        .map(|i| {
            event(
                ago(60_000 - i * 2_000),
                0.1 + 0.2 * i as f64,
                json!({"url": format!("https://example.com/p/{i}?q=ä&x=1"),
                       "title": format!("Page {i} – Ünïcödé"), "audible": i % 3 == 0,
                       "incognito": false, "tabCount": i, "ratio": 1.0 / 3.0}),
            )
        })
        .collect();
    rig.insert(web, &web_events).await;
    buckets.iter().map(|b| b.0.to_string()).collect()
}

/// `(bucket, event_id)` → what the upstream stored, for one device.
fn by_key(events: &[StoredEvent], device: &str) -> BTreeMap<(String, i64), StoredEvent> {
    events
        .iter()
        .filter(|e| e.device_id == device)
        .map(|e| ((e.bucket_id.clone(), e.event_id), e.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_and_python_formats_of_the_same_events_store_the_same_hashes() {
    let rig = Rig::new().await;
    let bucket_ids = fill_python(&rig).await;

    // Device A reads the real Python aw-server.
    let mut engine_a = rig.engine_full(
        test_settings(),
        Arc::new(StaticToken::new(AccessToken::new(TEST_TOKEN), "test")),
        "state-a.sqlite",
    );
    let report_a = engine_a.run_cycle().await.expect("cycle from Python");
    for b in &bucket_ids {
        rig.assert_exact(b).await;
    }

    // Copy the events out of Python (unclipped, with their ids) into the Rust-format stub.
    let client = rig.client();
    let info = client.info().await.unwrap();
    let mut stub_buckets = BTreeMap::new();
    let mut total = 0;
    for (id, b) in client.get_buckets().await.unwrap() {
        let events: Vec<StubEvent> = rig
            .source_events(&id)
            .await
            .iter()
            .map(stub_event_from)
            .collect();
        total += events.len();
        stub_buckets.insert(
            id,
            StubBucket {
                bucket_type: b.bucket_type,
                client: b.client,
                hostname: b.hostname,
                created: b.created.expect("Python reports created"),
                events,
            },
        );
    }
    assert_eq!(total, 45 + 1 + 3 + 13 + 25);
    assert_eq!(report_a.upload.delivered as usize, total);
    let stub = RustFormatStub::start(
        info.device_id
            .as_deref()
            .expect("Python reports a device id"),
        stub_buckets,
    )
    .await;

    // The two really speak different formats (otherwise this test would prove nothing).
    let http = reqwest::Client::new();
    let path = format!("/api/0/buckets/{}/events", bucket_ids[2]);
    let python_raw = http
        .get(format!("http://127.0.0.1:{}{path}", rig.aw.port()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let rust_raw = http
        .get(stub.url(&path))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(python_raw.contains("+00:00\""), "{python_raw:.300}");
    assert!(!rust_raw.contains("+00:00"), "{rust_raw:.300}");
    assert!(
        rust_raw.contains("000000Z\""),
        "nine-digit nanosecond timestamps: {rust_raw:.300}"
    );
    let python_keys = python_raw.find("\"url\"").unwrap() < python_raw.find("\"title\"").unwrap();
    let rust_keys = rust_raw.find("\"url\"").unwrap() < rust_raw.find("\"title\"").unwrap();
    assert_ne!(python_keys, rust_keys, "data keys in a different order");

    // Device B (its own state, so its own device id) reads the same events in Rust format.
    let mut engine_b = rig.engine_full(
        test_settings(),
        Arc::new(StaticToken::new(AccessToken::new(TEST_TOKEN), "test")),
        "state-b.sqlite",
    );
    engine_b.source = stub.client();
    let report_b = engine_b
        .run_cycle()
        .await
        .expect("cycle from the Rust-format stub");
    assert_eq!(report_b.upload.delivered as usize, total);
    assert!(
        report_b.buckets.values().map(|s| s.fetched).sum::<u64>() >= 1,
        "the clipped copies of the long event were fetched whole: {:?}",
        report_b.buckets
    );

    let device_a = engine_a.store.device_id().to_string();
    let device_b = engine_b.store.device_id().to_string();
    assert_ne!(device_a, device_b);
    let stored = rig.dev.stored_events(None, None).await.unwrap();
    let a = by_key(&stored, &device_a);
    let b = by_key(&stored, &device_b);
    assert_eq!(a.len(), total);
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "same event ids"
    );
    for (key, ea) in &a {
        let eb = &b[key];
        assert_eq!(ea.hash, eb.hash, "{key:?}: hash differs between formats");
        assert_eq!(ea.timestamp, eb.timestamp, "{key:?}: timestamp");
        // The upstream gets each server's float as sent; the hash rounds it to nanoseconds.
        assert!(
            (ea.duration - eb.duration).abs() < 1e-9,
            "{key:?}: duration {} vs {}",
            ea.duration,
            eb.duration
        );
        assert_eq!(ea.data, eb.data, "{key:?}: data");
        assert_eq!(
            (ea.versions, eb.versions),
            (1, 1),
            "{key:?}: no second version"
        );
    }

    // And for the state, too: device A pointed at the same events in Rust format (same server
    // device id and bucket creation times) finds nothing new or changed.
    engine_a.source = stub.client();
    let again = engine_a.run_cycle().await.expect("A reads the stub");
    assert_eq!(again.queued(), 0, "{:?}", again.buckets);
    assert_eq!(again.upload.delivered, 0);
}

// ---------------------------------------------------------------------------------------------
// (c) malformed aw-server answers
// ---------------------------------------------------------------------------------------------

/// An engine on `source` delivering to `dev`, with its own state file (and device id) in `dir`.
fn engine_on(dev: &DevServer, source: AwClient, dir: &std::path::Path, state: &str) -> Engine {
    engine_with(dev, source, dir, state, test_settings())
}

fn engine_with(
    dev: &DevServer,
    source: AwClient,
    dir: &std::path::Path,
    state: &str,
    settings: Settings,
) -> Engine {
    Engine {
        source,
        upstream: Arc::new(
            UpstreamClient::new(&dev.base_url(), Duration::from_secs(5), true).unwrap(),
        ),
        tokens: Arc::new(StaticToken::new(AccessToken::new(TEST_TOKEN), "test")),
        store: Arc::new(Store::open(&dir.join(state)).unwrap()),
        settings,
        hostname: "test-host".into(),
        metrics: Default::default(),
        destination: aw_sync_samay::state::DestKey::new("http://upstream.test", "test").into(),
        clock: std::sync::Arc::new(aw_sync_samay::clock::SystemClock),
    }
}

/// `n` back-to-back synthetic events (ids from 1) ending ten minutes ago.
fn synthetic_bucket(n: i64) -> StubBucket {
    let end = Utc::now() - ChronoDuration::minutes(10);
    let len = 90 * 1_000_000_000i64;
    let first = end.timestamp_nanos_opt().unwrap() - n * len;
    StubBucket {
        bucket_type: "currentwindow".into(),
        client: "aw-watcher-window".into(),
        hostname: "stub-host".into(),
        created: end - ChronoDuration::days(30),
        events: (0..n)
            .map(|i| StubEvent {
                id: i + 1,
                start_ns: first + i * len + 123_456_789,
                end_ns: first + (i + 1) * len,
                data: json!({"app": "code", "title": format!("file {i}.rs")})
                    .as_object()
                    .unwrap()
                    .clone(),
            })
            .collect(),
    }
}

/// What the upstream holds for `device`, as `(bucket, event_id)` → hash.
async fn held(dev: &DevServer, device: &str) -> BTreeMap<(String, i64), String> {
    dev.stored_events(Some(device), None)
        .await
        .unwrap()
        .into_iter()
        .map(|e| ((e.bucket_id, e.event_id), e.hash))
        .collect()
}

/// Every event the state records as delivered is one the upstream holds, with that hash.
async fn assert_state_claims_no_more_than_upstream(
    engine: &Engine,
    dev: &DevServer,
    stub: &RustFormatStub,
) {
    let up = held(dev, &engine.store.device_id().to_string()).await;
    let mut claimed = 0;
    for (id, b) in &stub.state.buckets {
        let ids: Vec<i64> = b.events.iter().map(|e| e.id).collect();
        for (event_id, known) in engine.store.lookup_by_name(id, &ids).unwrap() {
            claimed += 1;
            let hex = aw_sync_samay::state::hash_hex(&known.hash);
            assert_eq!(
                up.get(&(id.clone(), event_id)),
                Some(&hex),
                "the state claims {id}/{event_id} was delivered, the upstream does not hold it"
            );
        }
    }
    let statuses = engine.store.bucket_statuses().unwrap();
    assert_eq!(
        statuses.iter().map(|s| s.delivered).sum::<u64>(),
        claimed,
        "{statuses:?}"
    );
}

/// The upstream holds exactly the stub's events for `device`, unclipped.
async fn assert_exact_from_stub(dev: &DevServer, device: &str, stub: &RustFormatStub) {
    let stored = dev.stored_events(Some(device), None).await.unwrap();
    let mut expected = Vec::new();
    for (id, b) in &stub.state.buckets {
        for e in &b.events {
            expected.push((
                id.clone(),
                e.id,
                e.start_ns,
                e.end_ns - e.start_ns,
                e.data.clone(),
            ));
        }
    }
    expected.sort_by(|x, y| (&x.0, x.1).cmp(&(&y.0, y.1)));
    let got: Vec<_> = stored
        .iter()
        .map(|s| {
            let t: DateTime<Utc> = s.timestamp.parse().unwrap();
            (
                s.bucket_id.clone(),
                s.event_id,
                t.timestamp_nanos_opt().unwrap(),
                duration_to_ns(s.duration).unwrap(),
                s.data.clone(),
            )
        })
        .collect();
    assert_eq!(got, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_or_failing_event_answers_fail_the_cycle_cleanly_and_record_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let dev = start_dev_server(dir.path()).await;
    let buckets = BTreeMap::from([("b".to_string(), synthetic_bucket(35))]);
    let stub = RustFormatStub::start("stub-device", buckets).await;

    type Expected = fn(&CycleError) -> bool;
    let cases: [(Fault, Expected); 5] = [
        (Fault::Garbage, |e| {
            matches!(e, CycleError::Source(SourceError::Malformed { .. }))
        }),
        (Fault::WrongShape, |e| {
            matches!(e, CycleError::Source(SourceError::Malformed { .. }))
        }),
        (Fault::BadEvent, |e| {
            matches!(e, CycleError::Source(SourceError::Malformed { .. }))
        }),
        (Fault::Status(500), |e| {
            matches!(
                e,
                CycleError::Source(SourceError::Status { status: 500, .. })
            )
        }),
        // The server answered: say what it answered, not "start ActivityWatch".
        (Fault::Status(503), |e| {
            matches!(
                e,
                CycleError::Source(SourceError::Status { status: 503, .. })
            )
        }),
    ];
    for (i, (fault, expected)) in cases.into_iter().enumerate() {
        stub.set_fault(Some(FaultPlan {
            fault,
            from_request: 1,
            bucket: None,
        }));
        let engine = engine_on(
            &dev,
            stub.client(),
            dir.path(),
            &format!("state-{i}.sqlite"),
        );
        let err = engine
            .run_cycle()
            .await
            .expect_err("a broken events answer fails the cycle");
        assert!(expected(&err), "{fault:?}: {err:?}");
        assert!(!err.needs_login());
        let text = err.to_string();
        assert!(
            text.contains("/api/0/buckets/b/events"),
            "{fault:?}: the message names the request: {text}"
        );
        let statuses = engine.store.bucket_statuses().unwrap();
        assert!(
            statuses
                .iter()
                .all(|s| s.delivered == 0 && s.cursor.is_none()),
            "{fault:?}: {statuses:?}"
        );
        assert!(held(&dev, &engine.store.device_id().to_string())
            .await
            .is_empty());
        assert_eq!(
            engine.store.cycle_record().unwrap().last_error.as_deref(),
            Some(text.as_str())
        );
    }

    // Broken from the third page on: what was delivered before stays consistent, and once the
    // server is healthy again the next cycle completes the bucket exactly.
    stub.set_fault(Some(FaultPlan {
        fault: Fault::Garbage,
        from_request: 3,
        bucket: None,
    }));
    let engine = engine_on(&dev, stub.client(), dir.path(), "state-mid.sqlite");
    let err = engine.run_cycle().await.expect_err("fails mid-scan");
    assert!(
        matches!(err, CycleError::Source(SourceError::Malformed { .. })),
        "{err:?}"
    );
    assert_state_claims_no_more_than_upstream(&engine, &dev, &stub).await;

    stub.set_fault(None);
    engine.run_cycle().await.expect("healthy again");
    assert_state_claims_no_more_than_upstream(&engine, &dev, &stub).await;
    assert_exact_from_stub(&dev, &engine.store.device_id().to_string(), &stub).await;
}

/// Regression: the engine used to stop the cycle at the first bucket whose read failed, so a
/// bucket aw-server answers with a deterministic error — a 500 from a corrupt row, or a row the
/// client cannot parse — starved every bucket sorted after it, on every cycle, forever. The
/// cycle still reports the failure, but the healthy buckets are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_that_always_fails_does_not_starve_the_buckets_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let dev = start_dev_server(dir.path()).await;
    let buckets = BTreeMap::from([
        ("a-broken".to_string(), synthetic_bucket(5)),
        ("b-healthy".to_string(), synthetic_bucket(12)),
    ]);
    let stub = RustFormatStub::start("stub-device", buckets).await;
    stub.set_fault(Some(FaultPlan {
        fault: Fault::Status(500),
        from_request: 1,
        bucket: Some("a-broken".into()),
    }));
    let engine = engine_on(&dev, stub.client(), dir.path(), "state.sqlite");
    for _ in 0..3 {
        // Failing the cycle is fine (the broken bucket must be reported)...
        let _ = engine.run_cycle().await;
    }
    // ...but the healthy bucket's events must arrive.
    let up = held(&dev, &engine.store.device_id().to_string()).await;
    let healthy = up.keys().filter(|(b, _)| b == "b-healthy").count();
    assert_eq!(healthy, 12, "b-healthy was never synced: {up:?}");
}
