//! What the server tests share: users with static tokens, batches, an HTTP client.

use std::collections::BTreeMap;
use std::sync::Arc;

use reqwest::StatusCode;
use samay_api::{BatchRequest, BucketMeta, Change, ChangesResponse, Deletion, UpEvent};
use samay_server::auth::StaticTokens;
use samay_server::{DatabaseUrl, Limits, Server, ServerConfig};
use serde_json::value::RawValue;
use serde_json::Value;
use uuid::Uuid;

pub const ALICE: &str = "alice-token-0123456789";
pub const BOB: &str = "bob-token-0123456789ab";
/// `SAMAY_STATIC_TOKENS` for the two users.
pub const TOKENS: &str = "alice=alice-token-0123456789,bob=bob-token-0123456789ab";

pub fn authenticator() -> Arc<StaticTokens> {
    Arc::new(StaticTokens::parse(TOKENS).unwrap())
}

pub async fn spawn(database: DatabaseUrl, limits: Limits) -> Server {
    samay_server::spawn_server(
        ServerConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            database,
            limits,
            behind_proxy: false,
        },
        authenticator(),
    )
    .await
    .unwrap()
}

/// No rate limit (the suites send many requests quickly).
pub fn unlimited() -> Limits {
    Limits {
        rate_per_minute: 0,
        ..Limits::default()
    }
}

pub fn event(bucket: &str, id: i64, hash: &str, timestamp: &str) -> UpEvent {
    UpEvent {
        bucket_id: bucket.into(),
        event_id: id,
        hash: hash.into(),
        timestamp: timestamp.into(),
        duration: 1.5,
        data: RawValue::from_string(format!("{{\"v\":\"{hash}\"}}")).unwrap(),
    }
}

pub fn batch(device: Uuid, events: Vec<UpEvent>, deletions: Vec<Deletion>) -> BatchRequest {
    let buckets: BTreeMap<String, BucketMeta> = events
        .iter()
        .map(|e| {
            (
                e.bucket_id.clone(),
                BucketMeta {
                    bucket_type: "currentwindow".into(),
                    client: "aw-watcher-window".into(),
                    hostname: "laptop".into(),
                    created: None,
                },
            )
        })
        .collect();
    BatchRequest {
        batch_id: Uuid::new_v4(),
        device_id: device,
        user_id: None,
        hostname: "laptop".into(),
        sync_timestamp: "2024-05-01T10:05:00Z".into(),
        buckets,
        events,
        deletions,
    }
}

#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
    pub token: String,
}

impl Client {
    pub fn new(base: &str, token: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
        }
    }

    pub async fn post_batch(&self, b: &BatchRequest) -> (StatusCode, Value) {
        let r = self
            .http
            .post(format!("{}/v1/events/batch", self.base))
            .bearer_auth(&self.token)
            .header("Idempotency-Key", b.batch_id.to_string())
            .json(b)
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, path).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::DELETE, path).await
    }

    async fn call(&self, method: reqwest::Method, path: &str) -> (StatusCode, Value) {
        let r = self
            .http
            .request(method, format!("{}/{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// One page of the feed.
    pub async fn changes(&self, after: i64, limit: i64) -> ChangesResponse {
        let (status, body) = self
            .get(&format!("v1/changes?after={after}&limit={limit}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        serde_json::from_value(body).unwrap()
    }

    /// The whole feed from `after`, page by page.
    pub async fn feed_from(&self, mut after: i64, page: i64) -> (Vec<Change>, i64) {
        let mut all = Vec::new();
        loop {
            let got = self.changes(after, page).await;
            assert!(got.next >= after);
            if got.changes.is_empty() {
                return (all, got.next);
            }
            after = got.next;
            all.extend(got.changes);
        }
    }
}

/// Keeps the latest change per (device, bucket, event): what the feed says is stored, as
/// key → hash (tombstones drop the key).
pub fn fold(changes: &[Change]) -> BTreeMap<(String, String, i64), String> {
    let mut state = BTreeMap::new();
    let mut last = 0;
    for c in changes {
        assert!(
            c.seq > last,
            "seqs strictly increase: {} after {last}",
            c.seq
        );
        last = c.seq;
        let key = (c.device_id.clone(), c.bucket_id.clone(), c.event_id);
        if c.deleted {
            state.remove(&key);
        } else {
            state.insert(key, c.hash.clone().unwrap());
        }
    }
    state
}

/// Asserts that each batch is stored whole or not at all in `have` (a [`fold`]ed feed).
pub fn assert_whole_or_nothing(
    batches: &[&BatchRequest],
    have: &BTreeMap<(String, String, i64), String>,
) {
    for (n, b) in batches.iter().enumerate() {
        let present = b
            .events
            .iter()
            .filter(|e| {
                have.contains_key(&(b.device_id.to_string(), e.bucket_id.clone(), e.event_id))
            })
            .count();
        assert!(
            present == 0 || present == b.events.len(),
            "batch {n} half stored: {present} of {} events",
            b.events.len()
        );
    }
}

/// A `samay-server` process (the real binary), killed when dropped.
pub struct Process {
    pub child: std::process::Child,
    pub base: String,
}

impl Process {
    /// Starts the binary on a free loopback port with `env` added, and waits for its
    /// "listening on" line.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Process {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_samay-server"));
        cmd.args(["--bind", "127.0.0.1:0"])
            .args(args)
            .env_remove("SAMAY_DATABASE_URL")
            .env_remove("SAMAY_ISSUER")
            .env_remove("SAMAY_BIND")
            .env("SAMAY_STATIC_TOKENS", TOKENS)
            .stderr(std::process::Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let (child, base) = samay_testkit::server::spawn_listening(cmd);
        Process { child, base }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
    }
}
