//! The upstream batch API, as both the client and `samay-dev-server` speak it.
//! `docs/upstream-api.md` is the prose version a backend implements. Its own crate so that the
//! server (crates/samay-server) and the sidecar's client compile against one definition.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use uuid::Uuid;

/// Path of the batch endpoint, relative to `base_url`.
pub const BATCH_PATH: &str = "v1/events/batch";
/// Path of the health endpoint, relative to `base_url`: `GET` without auth answers 200
/// `{"ok":true}`. Any HTTP answer means "reachable"; only a 2xx means "this is the API".
pub const HEALTH_PATH: &str = "v1/health";
/// Path of the "who am I" endpoint, relative to `base_url`: `GET` with the bearer token answers
/// 200 [`MeResponse`]. The client keys its records by the answer when the token does not say
/// who it belongs to (`AW_SYNC_SAMAY_TOKEN`, `--dev`); an upstream without it answers 404.
pub const ME_PATH: &str = "v1/me";

/// `GET {base_url}/v1/me`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeResponse {
    /// The account the token authenticates: stable, unique at this upstream.
    pub user: String,
}

/// `POST {base_url}/v1/events/batch`. A superset of the original design's data format
/// (`events[].timestamp/duration/data`, `user_id`, `device_id`, `sync_timestamp`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchRequest {
    /// Also sent as the `Idempotency-Key` header; a replay of the same id changes nothing.
    pub batch_id: Uuid,
    /// Persisted per installation in the state database.
    pub device_id: Uuid,
    /// The token's subject when the login knows it, else null.
    pub user_id: Option<String>,
    pub hostname: String,
    /// RFC 3339 UTC.
    pub sync_timestamp: String,
    /// Metadata of every bucket that has an event in this batch.
    pub buckets: BTreeMap<String, BucketMeta>,
    pub events: Vec<UpEvent>,
    /// Events deleted in aw-server since they were sent: the backend deletes its copy. Absent
    /// when there are none, so a backend that predates deletions reads every batch as before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deletions: Vec<Deletion>,
}

/// An event that no longer exists in aw-server, by its upstream key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deletion {
    pub bucket_id: String,
    pub event_id: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BucketMeta {
    #[serde(rename = "type")]
    pub bucket_type: String,
    pub client: String,
    pub hostname: String,
    /// RFC 3339 UTC, or null when aw-server did not report it.
    pub created: Option<String>,
}

/// One event version. The upstream keys events by (user, device_id, bucket_id, event_id): a new
/// `hash` for a known key replaces the stored version, the same hash is a duplicate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpEvent {
    pub bucket_id: String,
    /// aw-server's event id, offset by `generation << 40` when the bucket was replaced (see
    /// `state::upstream_event_id`), so a reset aw-server database never overwrites old events.
    pub event_id: i64,
    /// Hex of the canonical event hash (`state::hash`).
    pub hash: String,
    /// RFC 3339 UTC with nanoseconds.
    pub timestamp: String,
    /// Seconds.
    pub duration: f64,
    /// A JSON object: aw-server's data as it served it (after redaction), passed through as
    /// text so the upload neither rebuilds nor copies it.
    #[serde(deserialize_with = "object_text")]
    pub data: Box<RawValue>,
}

impl UpEvent {
    /// `data` parsed (for upstreams and tests that look inside).
    pub fn data_map(&self) -> Result<Map<String, Value>, serde_json::Error> {
        serde_json::from_str(self.data.get())
    }
}

/// 200 answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchResponse {
    pub accepted: u64,
    pub duplicates: u64,
    /// Of `deletions`, the ones that removed a stored event (the others were unknown or already
    /// gone). Absent from backends that predate deletions.
    #[serde(default)]
    pub deleted: u64,
}

/// Body of an error answer (optional on any status). For 400/422, `rejected` lists the indexes
/// (into `events`) of the events the upstream refuses; the batch as a whole was not stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ErrorResponse {
    #[serde(default)]
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<Vec<usize>>,
}

/// `{}`.
pub fn empty_object() -> Box<RawValue> {
    RawValue::from_string("{}".to_owned()).unwrap_or_else(|_| unreachable!("{{}} is JSON"))
}

/// Event data as text: must be a JSON object (or `null`, read as `{}`), as aw-server's own
/// models require; anything else makes the response malformed.
pub fn object_text<'de, D>(deserializer: D) -> Result<Box<RawValue>, D::Error>
where
    D: Deserializer<'de>,
{
    let raw = Option::<Box<RawValue>>::deserialize(deserializer)?;
    match raw {
        None => Ok(empty_object()),
        Some(r) if r.get() == "null" => Ok(empty_object()),
        Some(r) if r.get().starts_with('{') => Ok(r),
        Some(r) => Err(serde::de::Error::custom(format!(
            "event data must be a JSON object, got `{}`",
            r.get().chars().take(40).collect::<String>()
        ))),
    }
}

/// Path of the change feed, relative to `base_url`: `GET ?after=SEQ&limit=N[&device_id=ID]`.
pub const CHANGES_PATH: &str = "v1/changes";
/// Path of the device list, relative to `base_url`: `GET` answers [`DevicesResponse`]; `DELETE
/// v1/devices/{id}` and `DELETE v1/devices/{id}/buckets/{bucket}` answer [`DeletedResponse`].
pub const DEVICES_PATH: &str = "v1/devices";

/// `GET v1/devices`: the caller's devices only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DevicesResponse {
    pub devices: Vec<DeviceInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub device_id: String,
    pub hostname: String,
    /// When its last batch was stored (RFC 3339 UTC).
    pub last_seen: String,
    pub buckets: Vec<BucketInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BucketInfo {
    pub bucket_id: String,
    #[serde(rename = "type")]
    pub bucket_type: String,
    pub client: String,
    pub hostname: String,
    pub created: Option<String>,
    /// Events stored now.
    pub events: u64,
}

/// `GET v1/changes`: the caller's changes with `seq > after`, in seq order. `next` is the last
/// seq returned, or `after` when there is none: the `after` of the next call.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChangesResponse {
    pub changes: Vec<Change>,
    pub next: i64,
}

/// One entry of the change feed: a stored version, or (`deleted: true`) a tombstone, which has
/// no version fields. Every stored version and every deletion gets a new, strictly increasing
/// per-user `seq`; keeping the latest entry per (device, bucket, event) gives what is stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Change {
    pub seq: i64,
    pub device_id: String,
    pub bucket_id: String,
    pub event_id: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
}

/// Answer of the `DELETE` endpoints: how many stored events went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletedResponse {
    pub deleted: u64,
}
