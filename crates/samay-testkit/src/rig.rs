//! A real aw-server (Python, from `.peers/`), the real dev upstream, and an engine wired between
//! them with its own state database: what most engine tests start from.

use std::sync::Arc;
use std::time::Duration;

use aw_sync_samay::auth::{AccessToken, StaticToken, TokenSource};
use aw_sync_samay::engine::{Engine, Settings};
use aw_sync_samay::retry::RetryPolicy;
use aw_sync_samay::source::{AwClient, Event};
use aw_sync_samay::state::Store;
use aw_sync_samay::upstream::UpstreamClient;
use chrono::{DateTime, Duration as ChronoDuration, SubsecRound, Utc};
use samay_server::{DevServer, StoredEvent};
use serde_json::{json, Value};

use crate::awserver::AwServer;
use crate::devserver::{start_dev_server, TEST_TOKEN};

pub struct Rig {
    pub aw: AwServer,
    pub dev: DevServer,
    pub dir: tempfile::TempDir,
}

/// Small pages, batches and queue so that paging, batching and backpressure happen on small
/// data; retries fast so fault tests finish quickly (retry *timing* is tested under paused
/// time in the engine's unit tests).
pub fn test_settings() -> Settings {
    Settings {
        page_size: 10,
        batch_size: 7,
        queue_size: 50,
        // The default's concurrency: the fault and model tests run what users run.
        upload_concurrency: aw_sync_samay::config::SyncConfig::default().upload_concurrency,
        max_retries: 3,
        lookback: Duration::from_secs(3600),
        start_from: None,
        interval: Duration::from_secs(300),
        retry: RetryPolicy {
            base: Duration::from_millis(1),
            cap: Duration::from_millis(10),
            max_retry_after: Duration::from_millis(50),
        },
        linger: Duration::from_millis(5),
        privacy: Default::default(),
        dry_run: false,
        catchup_page: 10,
        verify_batch: 0,
        verify_interval: Duration::from_secs(3600),
        verify_all: false,
        pull: Default::default(),
    }
}

impl Rig {
    pub async fn new() -> Rig {
        // RUST_LOG=aw_sync_samay=debug shows what the engine did when a test fails.
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
        let aw = tokio::task::spawn_blocking(AwServer::start)
            .await
            .expect("aw-server starts");
        let dir = tempfile::tempdir().expect("tempdir");
        let dev = start_dev_server(dir.path()).await;
        Rig { aw, dev, dir }
    }

    pub fn client(&self) -> AwClient {
        self.aw.client()
    }

    pub fn engine(&self) -> Engine {
        self.engine_with(test_settings())
    }

    pub fn engine_with(&self, settings: Settings) -> Engine {
        self.engine_full(
            settings,
            Arc::new(StaticToken::new(AccessToken::new(TEST_TOKEN), "test")),
            "state.sqlite",
        )
    }

    pub fn engine_full(
        &self,
        settings: Settings,
        tokens: Arc<dyn TokenSource>,
        state: &str,
    ) -> Engine {
        let store = Store::open(&self.dir.path().join(state)).expect("state opens");
        let upstream = UpstreamClient::new(&self.dev.base_url(), Duration::from_secs(5), true)
            .expect("upstream client");
        Engine {
            source: self.aw.client(),
            upstream: Arc::new(upstream),
            tokens,
            store: Arc::new(store),
            settings,
            hostname: "test-host".into(),
            metrics: Default::default(),
            destination: aw_sync_samay::state::DestKey::new("http://upstream.test", "test").into(),
            clock: std::sync::Arc::new(aw_sync_samay::clock::SystemClock),
        }
    }

    pub async fn bucket(&self, id: &str) {
        self.client()
            .create_bucket(id, "currentwindow", "test", "test-host")
            .await
            .expect("create bucket");
    }

    pub async fn insert(&self, bucket: &str, events: &[Event]) {
        // Python aw-server inserts a list in one request; chunk to keep requests small.
        for chunk in events.chunks(500) {
            self.client()
                .insert_events(bucket, chunk)
                .await
                .expect("insert");
        }
    }

    /// Every event of `bucket` as aw-server holds it (unclipped: no range).
    pub async fn source_events(&self, bucket: &str) -> Vec<Event> {
        self.client()
            .get_events(bucket, None, None, None)
            .await
            .expect("read source")
    }

    pub async fn upstream_events(&self, bucket: &str) -> Vec<StoredEvent> {
        self.dev
            .stored_events(None, Some(bucket))
            .await
            .expect("read upstream")
    }

    /// The upstream holds exactly aw-server's events of `bucket`: same ids, instants, durations
    /// (within 1 µs) and data — no clipped copy, nothing missing, nothing extra.
    pub async fn assert_exact(&self, bucket: &str) {
        let mut source = self.source_events(bucket).await;
        source.sort_by_key(|e| e.id);
        let mut up = self.upstream_events(bucket).await;
        up.sort_by_key(|e| e.event_id);
        let src_ids: Vec<i64> = source.iter().filter_map(|e| e.id).collect();
        let up_ids: Vec<i64> = up.iter().map(|e| e.event_id).collect();
        assert_eq!(src_ids, up_ids, "bucket {bucket}: ids differ");
        for (s, u) in source.iter().zip(&up) {
            let up_ts: DateTime<Utc> = u.timestamp.parse().expect("upstream timestamp");
            assert_eq!(
                s.timestamp, up_ts,
                "bucket {bucket} event {:?}: timestamp",
                s.id
            );
            assert!(
                (s.duration - u.duration).abs() < 1e-6,
                "bucket {bucket} event {:?}: duration {} upstream {}",
                s.id,
                s.duration,
                u.duration
            );
            assert_eq!(s.data, u.data, "bucket {bucket} event {:?}: data", s.id);
        }
    }
}

/// Now, at microsecond precision (what Python aw-server keeps).
pub fn now_us() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

pub fn ago(secs: i64) -> DateTime<Utc> {
    now_us() - ChronoDuration::seconds(secs)
}

pub fn event(ts: DateTime<Utc>, duration: f64, data: Value) -> Event {
    let data = match data {
        Value::Object(m) => m,
        other => {
            let mut m = serde_json::Map::new();
            m.insert("value".into(), other);
            m
        }
    };
    Event {
        id: None,
        timestamp: ts,
        duration,
        data,
    }
}

/// `n` back-to-back events of `len` seconds ending `end_ago` seconds before now.
pub fn series(n: usize, len: f64, end_ago: i64, tag: &str) -> Vec<Event> {
    let start = ago(end_ago) - ChronoDuration::milliseconds((n as f64 * len * 1000.0) as i64);
    (0..n)
        .map(|i| {
            event(
                start + ChronoDuration::milliseconds((i as f64 * len * 1000.0) as i64),
                len,
                json!({"app": tag, "title": format!("{tag} #{i}")}),
            )
        })
        .collect()
}
