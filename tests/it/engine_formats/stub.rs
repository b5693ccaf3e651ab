//! [`RustFormatStub`]: aw-server-rust's wire format, serving events copied out of a real Python
//! aw-server, able to answer garbage.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aw_sync_samay::source::{AwClient, Event};
use aw_sync_samay::state::hash::duration_to_ns;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Map, Value};

/// How the stub misbehaves on `GET .../events` (range queries; fetches by id stay healthy).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Fault {
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
pub(super) struct FaultPlan {
    pub(super) fault: Fault,
    /// The first events request (1-based, counted over all buckets) that fails; all later ones
    /// fail too.
    pub(super) from_request: u64,
    /// Only this bucket's requests fail (and count); `None`: every bucket's.
    pub(super) bucket: Option<String>,
}

#[derive(Debug, Clone)]
pub(super) struct StubEvent {
    pub(super) id: i64,
    pub(super) start_ns: i64,
    pub(super) end_ns: i64,
    pub(super) data: Map<String, Value>,
}

#[derive(Debug, Clone)]
pub(super) struct StubBucket {
    pub(super) bucket_type: String,
    pub(super) client: String,
    pub(super) hostname: String,
    pub(super) created: DateTime<Utc>,
    pub(super) events: Vec<StubEvent>,
}

pub(super) struct StubState {
    pub(super) device_id: String,
    pub(super) buckets: BTreeMap<String, StubBucket>,
    pub(super) fault: Mutex<Option<FaultPlan>>,
    pub(super) events_requests: AtomicU64,
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
pub(super) struct RustFormatStub {
    pub(super) addr: SocketAddr,
    pub(super) state: Arc<StubState>,
    pub(super) task: tokio::task::JoinHandle<()>,
}

impl Drop for RustFormatStub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RustFormatStub {
    pub(super) async fn start(
        device_id: &str,
        buckets: BTreeMap<String, StubBucket>,
    ) -> RustFormatStub {
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

    pub(super) fn client(&self) -> AwClient {
        AwClient::new("127.0.0.1", self.addr.port()).unwrap()
    }

    pub(super) fn set_fault(&self, plan: Option<FaultPlan>) {
        *self.state.fault.lock().unwrap() = plan;
        self.state.events_requests.store(0, Ordering::SeqCst);
    }

    pub(super) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

pub(super) fn json_response(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

pub(super) fn rust_timestamp(ns: i64, id: i64) -> String {
    let t = DateTime::<Utc>::from_timestamp_nanos(ns);
    let format = if id % 2 == 0 {
        SecondsFormat::AutoSi
    } else {
        SecondsFormat::Nanos
    };
    t.to_rfc3339_opts(format, true)
}

/// One event as aw-server-rust prints it, `data` keys reversed.
pub(super) fn render_event(
    id: i64,
    start_ns: i64,
    end_ns: i64,
    data: &Map<String, Value>,
) -> String {
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

pub(super) fn not_found_bucket(id: &str) -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        json!({"message": format!("The requested bucket '{id}' does not exist")}).to_string(),
    )
}

pub(super) async fn stub_info(State(s): State<Arc<StubState>>) -> Response {
    json_response(
        StatusCode::OK,
        json!({"hostname": "stub-host", "version": "v0.13.1 (rust)", "testing": true,
               "device_id": s.device_id})
        .to_string(),
    )
}

pub(super) async fn stub_buckets(State(s): State<Arc<StubState>>) -> Response {
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
pub(super) fn parse_instant(q: &HashMap<String, String>, key: &str) -> Result<Option<i64>, String> {
    match q.get(key) {
        None => Ok(None),
        Some(v) => DateTime::parse_from_rfc3339(v)
            .ok()
            .and_then(|t| t.timestamp_nanos_opt())
            .map(Some)
            .ok_or_else(|| format!("bad {key}: {v}")),
    }
}

pub(super) async fn stub_events(
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

pub(super) async fn stub_event(
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
pub(super) async fn stub_count(
    State(s): State<Arc<StubState>>,
    Path(id): Path<String>,
) -> Response {
    match s.buckets.get(&id) {
        Some(b) => json_response(StatusCode::OK, b.events.len().to_string()),
        None => not_found_bucket(&id),
    }
}

pub(super) fn stub_event_from(e: &Event) -> StubEvent {
    let start_ns = e.timestamp.timestamp_nanos_opt().unwrap();
    StubEvent {
        id: e.id.expect("a stored event has an id"),
        start_ns,
        end_ns: start_ns + duration_to_ns(e.duration).unwrap(),
        data: e.data.clone(),
    }
}
