//! The JSON shapes aw-server (Rust and Python) serve.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `GET /api/0/info`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerInfo {
    pub hostname: String,
    pub version: String,
    #[serde(default)]
    pub testing: bool,
    /// aw-server-rust and Python aw-server >= 0.12 report one; older servers do not.
    #[serde(default)]
    pub device_id: Option<String>,
}

/// One bucket as listed by `GET /api/0/buckets/`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    pub id: String,
    #[serde(rename = "type")]
    pub bucket_type: String,
    #[serde(default)]
    pub client: String,
    #[serde(default)]
    pub hostname: String,
    /// When the bucket was created; a different value for the same id means the bucket (or the
    /// whole database) was replaced and its event ids started over.
    #[serde(default)]
    pub created: Option<DateTime<Utc>>,
    #[serde(default)]
    pub data: Map<String, Value>,
}

/// One event. Timestamps parse from both servers' formats (`...Z` with nanoseconds from
/// aw-server-rust, `+00:00` with microseconds from Python aw-server) into UTC.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
    pub timestamp: DateTime<Utc>,
    /// Seconds, as the servers send it.
    pub duration: f64,
    #[serde(default)]
    pub data: Map<String, Value>,
}
