//! The servers a check runs on, and the events and instants the checks build.

use aw_sync_samay::source::{AwClient, Event};
use chrono::TimeZone;
use chrono::{DateTime, TimeDelta, Utc};
use samay_aw_double::{AwDouble, AwDoubleConfig, Storage};
use samay_testkit::awserver::AwServer;
use serde_json::{json, Value};

pub(super) enum Backend {
    /// The double, and whether it runs on SQLite (aw-server-rust's storage).
    Double(AwDouble, bool),
    Python(AwServer),
}

impl Backend {
    pub(super) async fn double() -> Backend {
        Backend::Double(
            AwDouble::spawn(AwDoubleConfig::default())
                .await
                .expect("double starts"),
            false,
        )
    }

    /// The double on aw-server-rust's SQLite storage (an in-memory SQLite database).
    pub(super) async fn double_sqlite() -> Backend {
        Backend::Double(
            AwDouble::spawn(AwDoubleConfig {
                storage: Storage::Sqlite(None),
                ..AwDoubleConfig::default()
            })
            .await
            .expect("double starts"),
            true,
        )
    }

    pub(super) async fn python() -> Backend {
        Backend::Python(
            tokio::task::spawn_blocking(AwServer::start)
                .await
                .expect("aw-server starts"),
        )
    }

    pub(super) fn is_double(&self) -> bool {
        matches!(self, Backend::Double(..))
    }

    /// The double on aw-server-rust's SQLite storage.
    pub(super) fn is_sqlite(&self) -> bool {
        matches!(self, Backend::Double(_, true))
    }

    pub(super) fn client(&self) -> AwClient {
        match self {
            Backend::Double(d, _) => samay_testkit::double_client(d).expect("client"),
            Backend::Python(p) => p.client(),
        }
    }

    pub(super) fn url(&self, path: &str) -> String {
        let port = match self {
            Backend::Double(d, _) => d.port(),
            Backend::Python(p) => p.port(),
        };
        format!("http://127.0.0.1:{port}/api/0{path}")
    }

    /// A raw GET: status and JSON body (`Value::Null` for an empty body).
    pub(super) async fn get(&self, path: &str) -> (u16, Value) {
        let response = reqwest::Client::new()
            .get(self.url(path))
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        let bytes = response.bytes().await.expect("body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("JSON body")
        };
        (status, body)
    }

    pub(super) async fn restart(&mut self) {
        match self {
            Backend::Double(d, _) => d.restart().await.expect("restart"),
            Backend::Python(p) => tokio::task::block_in_place(|| p.restart()),
        }
    }

    pub(super) async fn replace_database(&mut self) {
        match self {
            Backend::Double(d, _) => d.replace_database().await.expect("replace"),
            Backend::Python(p) => tokio::task::block_in_place(|| p.replace_database()),
        }
    }

    pub(super) async fn bucket(&self, id: &str) {
        assert!(self
            .client()
            .create_bucket(id, "test", "conformance", "host")
            .await
            .expect("create bucket"));
    }

    pub(super) async fn insert(&self, bucket: &str, events: &[Event]) {
        self.client()
            .insert_events(bucket, events)
            .await
            .expect("insert");
    }

    pub(super) async fn events(
        &self,
        bucket: &str,
        start: Option<DateTime<Utc>>,
        end: Option<DateTime<Utc>>,
        limit: Option<u64>,
    ) -> Vec<Event> {
        self.client()
            .get_events(bucket, start, end, limit)
            .await
            .expect("get events")
    }
}

/// 2024-01-01T12:00:00Z: fixed, whole milliseconds (Python keeps ms), long past.
pub(super) fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 1, 1, 12, 0, 0)
        .single()
        .expect("valid")
}

pub(super) fn at(secs: f64) -> DateTime<Utc> {
    t0() + TimeDelta::nanoseconds((secs * 1e9).round() as i64)
}

pub(super) fn ev(start: f64, duration: f64, tag: &str) -> Event {
    samay_testkit::rig::event(at(start), duration, json!({ "tag": tag }))
}

pub(super) fn tags(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| e.data["tag"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// (tag, seconds after t0, duration) of each event.
pub(super) fn spans(events: &[Event]) -> Vec<(String, f64, f64)> {
    events
        .iter()
        .map(|e| {
            let offset = (e.timestamp - t0()).num_nanoseconds().unwrap() as f64 / 1e9;
            (
                e.data["tag"].as_str().unwrap_or("?").to_string(),
                (offset * 1e6).round() / 1e6,
                (e.duration * 1e6).round() / 1e6,
            )
        })
        .collect()
}
