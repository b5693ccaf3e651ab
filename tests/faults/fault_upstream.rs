//! The upstream fault suite (issue 5): one test per fault the network and a backend produce —
//! 5xx, 429 with `Retry-After`, connections dropped before and after the batch was stored,
//! answers slower than the client's timeout, garbage 200 answers, all of them at once, an
//! upstream that never recovers, and access tokens expiring every few seconds.
//!
//! Each runs the real engine between a real Python aw-server and the in-process dev upstream,
//! and checks two things: the upstream ends holding exactly aw-server's events, each version
//! once; and the number of batch requests the upstream received is the minimum plus one per
//! injected fault — no retry storm. Retry delays are milliseconds (`fault_settings`), so only
//! the faults that *must* take time (`Retry-After`, a client timeout) do.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aw_sync_samay::auth::oauth::{self, LoginOptions, OAuthSession};
use aw_sync_samay::auth::store::TokenStore;
use aw_sync_samay::auth::{AccessToken, BoxFuture};
use aw_sync_samay::config::{AuthConfig, CallbackMode, TokenStorage};
use aw_sync_samay::engine::{CycleError, Engine, Settings};
use aw_sync_samay::retry::RetryPolicy;
use aw_sync_samay::upstream::contract::BatchResponse;
use aw_sync_samay::upstream::{BatchSink, UpstreamClient, UpstreamError};
use samay_server::{self as devserver, DevServerConfig, OidcConfig, RequestRecord, DEV_CLIENT_ID};
use samay_testkit::awserver::AwServer;
use samay_testkit::rig::{series, test_settings, Rig};

const BUCKET: &str = "b";
const EVENTS: usize = 60;
const BATCH: usize = 10;
/// The fewest batch requests that can carry [`EVENTS`]: ceil(events / batch_size).
const MIN_REQUESTS: u64 = EVENTS.div_ceil(BATCH) as u64;

/// Fast retries, and a linger longer than any test: a batch leaves only when it is full or the
/// scan is over, so a fault-free sync makes exactly [`MIN_REQUESTS`] requests whatever the
/// machine's speed (with the rig's 5 ms linger, a slow aw-server page would send part-batches).
/// `max_retries` is above every test's injected fault count, so no cycle runs out of retries
/// unless a test wants it to.
fn fault_settings() -> Settings {
    let mut s = test_settings();
    s.batch_size = BATCH;
    s.page_size = 25;
    s.max_retries = 10;
    s.linger = Duration::from_secs(600);
    s.retry = RetryPolicy {
        base: Duration::from_millis(1),
        cap: Duration::from_millis(10),
        // Far above the 1 s the tests' 429s ask for, so `Retry-After` is honoured unclamped.
        max_retry_after: Duration::from_secs(30),
    };
    s
}

/// A rig whose aw-server holds [`EVENTS`] events in [`BUCKET`].
async fn rig_with_events() -> Rig {
    let rig = Rig::new().await;
    rig.bucket(BUCKET).await;
    rig.insert(BUCKET, &series(EVENTS, 30.0, 120, "x")).await;
    rig
}

/// An engine whose upstream client gives up on a request after `timeout` (the rig's is 5 s):
/// `sync.request_timeout`, which `UpstreamClient::new` takes.
fn engine_with_timeout(rig: &Rig, settings: Settings, timeout: Duration) -> Engine {
    let mut engine = rig.engine_with(settings);
    engine.upstream =
        Arc::new(UpstreamClient::new(&rig.dev.base_url(), timeout, true).expect("client"));
    engine
}

/// Batch requests as the dev upstream logged them, in arrival order.
fn requests(rig: &Rig) -> Vec<RequestRecord> {
    let mut log = rig.dev.faults().requests();
    log.sort_by_key(|r| r.received);
    log
}

/// The no-storm bound: the upstream received exactly the minimum plus one request per injected
/// fault (each fault fails one request, which is retried once), and every retry reused its
/// batch's `Idempotency-Key` (as many keys as the minimum: no batch was re-made).
fn assert_requests(rig: &Rig, injected: u64) {
    let received = rig.dev.faults().counters().requests_received;
    let bound = MIN_REQUESTS + injected;
    assert!(
        received <= bound,
        "{received} batch requests for {MIN_REQUESTS} batches and {injected} injected faults: a retry storm"
    );
    assert_eq!(
        received, bound,
        "every injected fault costs exactly one retry"
    );
    let keys: BTreeSet<Option<String>> = requests(rig)
        .into_iter()
        .map(|r| r.idempotency_key)
        .collect();
    assert_eq!(
        keys.len() as u64,
        MIN_REQUESTS,
        "retries reuse their batch's Idempotency-Key: {keys:?}"
    );
}

/// The upstream holds exactly aw-server's events (ids, instants, durations, data), each stored
/// once: no version replaced, none sent again as a duplicate.
async fn assert_held_exactly_once(rig: &Rig) {
    rig.assert_exact(BUCKET).await;
    let stats = samay_testkit::devserver::bucket_stats(&rig.dev, BUCKET)
        .await
        .expect("bucket upstream");
    assert_eq!(stats.events, EVENTS as u64);
    assert_eq!(stats.versions_replaced, 0, "a version arrived twice");
    assert!(rig
        .upstream_events(BUCKET)
        .await
        .iter()
        .all(|e| e.versions == 1));
}

fn statuses(rig: &Rig) -> Vec<Option<u16>> {
    requests(rig).iter().map(|r| r.status).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_faults_a_sync_makes_exactly_the_minimum_of_requests() {
    let rig = rig_with_events().await;
    let r = rig.engine_with(fault_settings()).run_cycle().await.unwrap();
    assert_eq!((r.upload.delivered, r.upload.retries), (EVENTS as u64, 0));
    assert_requests(&rig, 0);
    assert_held_exactly_once(&rig).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_and_cost_one_request_each() {
    let rig = rig_with_events().await;
    rig.dev.faults().update(|f| f.fail_500 = 3);
    let r = rig.engine_with(fault_settings()).run_cycle().await.unwrap();
    assert_eq!((r.upload.delivered, r.upload.retries), (EVENTS as u64, 3));
    assert_requests(&rig, 3);
    let s = statuses(&rig);
    assert_eq!(&s[..4], &[Some(500), Some(500), Some(500), Some(200)]);
    assert_eq!(rig.dev.faults().counters().batches_stored, MIN_REQUESTS);
    assert_held_exactly_once(&rig).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_requests_is_retried_only_after_retry_after_as_the_server_saw_it() {
    let rig = rig_with_events().await;
    rig.dev.faults().update(|f| {
        f.fail_429 = 2;
        f.retry_after_secs = 1;
    });
    let r = rig.engine_with(fault_settings()).run_cycle().await.unwrap();
    assert_eq!((r.upload.delivered, r.upload.retries), (EVENTS as u64, 2));
    assert_requests(&rig, 2);
    assert_retry_after_waited(&rig, 2, Duration::from_secs(1));
    assert_held_exactly_once(&rig).await;
}

/// Each of the `n` batches answered 429 was retried no sooner than `retry_after` after the 429
/// left the server. The client's own backoff is at most 10 ms here ([`fault_settings`]): only
/// honouring `Retry-After` makes it wait longer. Measured on the server's clock, from the
/// 429 leaving to the retry arriving, so the client's timers cannot flatter themselves.
fn assert_retry_after_waited(rig: &Rig, n: usize, retry_after: Duration) {
    let log = requests(rig);
    let throttled: Vec<&RequestRecord> = log.iter().filter(|r| r.status == Some(429)).collect();
    assert_eq!(throttled.len(), n);
    for t in throttled {
        let answered = t.answered.expect("a 429 is an answer");
        let retry = log
            .iter()
            .find(|r| r.received > answered && r.idempotency_key == t.idempotency_key)
            .expect("the throttled batch was retried");
        let waited = retry.received - answered;
        assert!(
            waited >= retry_after,
            "retried {waited:?} after a 429 with Retry-After: {retry_after:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_dropped_before_the_batch_was_stored_is_retried() {
    let rig = rig_with_events().await;
    rig.dev.faults().update(|f| f.drop_before_store = 2);
    let r = rig.engine_with(fault_settings()).run_cycle().await.unwrap();
    assert_eq!((r.upload.delivered, r.upload.retries), (EVENTS as u64, 2));
    assert_requests(&rig, 2);
    assert_eq!(&statuses(&rig)[..3], &[None, None, Some(200)]);
    assert_eq!(rig.dev.faults().counters().batches_stored, MIN_REQUESTS);
    assert_held_exactly_once(&rig).await;
}

/// The batch arrived, the answer did not: the retry carries the same `Idempotency-Key`, so the
/// upstream answers it from its record of that batch (a replay) and stores nothing again — not
/// even a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_dropped_after_the_batch_was_stored_is_answered_as_a_replay() {
    let rig = rig_with_events().await;
    rig.dev.faults().update(|f| f.drop_after_store = 2);
    let r = rig.engine_with(fault_settings()).run_cycle().await.unwrap();
    assert_eq!((r.upload.delivered, r.upload.retries), (EVENTS as u64, 2));
    assert_eq!(r.upload.duplicates, 0, "a replay is not a duplicate");
    assert_requests(&rig, 2);
    // Each fault hits the first try of a new batch (a replay consumes none).
    assert_eq!(&statuses(&rig)[..4], &[None, Some(200), None, Some(200)]);
    // Committed once per batch: the two replays were not stored again.
    assert_eq!(rig.dev.faults().counters().batches_stored, MIN_REQUESTS);
    assert_eq!(
        samay_testkit::devserver::stats(&rig.dev).await.batches,
        MIN_REQUESTS
    );
    let stats = samay_testkit::devserver::bucket_stats(&rig.dev, BUCKET)
        .await
        .unwrap();
    assert_eq!(stats.duplicates, 0);
    assert_held_exactly_once(&rig).await;
}

/// Stored but unanswered, and this time the cycle has no retry left: nothing was acknowledged,
/// so the next cycle reads the same events again and sends them under a new batch id. The
/// upstream absorbs every one of them as a duplicate of what it holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_but_unanswered_batch_sent_again_by_the_next_cycle_is_absorbed_as_duplicates() {
    let rig = rig_with_events().await;
    rig.dev.faults().update(|f| f.drop_after_store = 1);
    let mut settings = fault_settings();
    settings.max_retries = 0;
    let engine = rig.engine_with(settings);
    let err = engine.run_cycle().await.unwrap_err();
    assert!(
        matches!(err, CycleError::Upstream(UpstreamError::Network(_))),
        "{err}"
    );
    assert_eq!(rig.dev.faults().counters().requests_received, 1);
    assert_eq!(rig.dev.faults().counters().batches_stored, 1);

    let r = engine.run_cycle().await.unwrap();
    assert_eq!(r.upload.delivered, EVENTS as u64);
    assert_eq!(
        r.upload.duplicates, BATCH as u64,
        "the first batch, re-sent whole"
    );
    let stats = samay_testkit::devserver::bucket_stats(&rig.dev, BUCKET)
        .await
        .unwrap();
    assert_eq!(stats.duplicates, BATCH as u64, "that batch's size");
    // One lost answer, then the minimum: the re-sent batch is one of the minimum's.
    assert_eq!(
        rig.dev.faults().counters().requests_received,
        1 + MIN_REQUESTS
    );
    assert_held_exactly_once(&rig).await;
}

/// The batch is stored at once but answered after 3 s; the client gives up after 1 s and
/// retries, and the retry is answered from the stored batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_slower_than_the_client_timeout_is_retried_and_absorbed() {
    let rig = rig_with_events().await;
    rig.dev.faults().update(|f| {
        f.slow_answers = 2;
        f.slow_answer_ms = 3_000;
    });
    let engine = engine_with_timeout(&rig, fault_settings(), Duration::from_secs(1));
    let r = engine.run_cycle().await.unwrap();
    assert_eq!((r.upload.delivered, r.upload.retries), (EVENTS as u64, 2));
    assert_eq!(r.upload.duplicates, 0);
    // Without a client timeout each slow answer would simply be waited for: no retry at all.
    assert_requests(&rig, 2);
    assert_eq!(rig.dev.faults().counters().batches_stored, MIN_REQUESTS);
    assert_held_exactly_once(&rig).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_200_answers_are_retried_and_answered_as_replays() {
    let rig = rig_with_events().await;
    rig.dev.faults().update(|f| f.garbage_answers = 2);
    let r = rig.engine_with(fault_settings()).run_cycle().await.unwrap();
    assert_eq!((r.upload.delivered, r.upload.retries), (EVENTS as u64, 2));
    assert_eq!(r.upload.duplicates, 0);
    assert_requests(&rig, 2);
    assert_eq!(rig.dev.faults().counters().batches_stored, MIN_REQUESTS);
    assert_held_exactly_once(&rig).await;
}

/// Every fault at once. They are consumed in a fixed order (the pre-store ones by the first
/// requests, the post-store ones by the next stored batches; a replay consumes none), and each
/// still fails exactly one request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_every_fault_at_once_costs_one_request_per_fault() {
    let rig = rig_with_events().await;
    rig.dev.faults().update(|f| {
        f.fail_500 = 2;
        f.fail_429 = 1;
        f.retry_after_secs = 1;
        f.drop_before_store = 1;
        f.drop_after_store = 2;
        f.garbage_answers = 1;
        f.slow_answers = 1;
        f.slow_answer_ms = 3_000;
    });
    let injected = 2 + 1 + 1 + 2 + 1 + 1;
    let engine = engine_with_timeout(&rig, fault_settings(), Duration::from_secs(1));
    let r = engine.run_cycle().await.unwrap();
    assert_eq!(
        (r.upload.delivered, r.upload.retries),
        (EVENTS as u64, injected)
    );
    assert_requests(&rig, injected);
    let settings = rig.dev.faults().settings();
    assert_eq!(
        (
            settings.fail_500,
            settings.fail_429,
            settings.drop_before_store,
            settings.drop_after_store,
            settings.garbage_answers,
            settings.slow_answers
        ),
        (0, 0, 0, 0, 0, 0),
        "every fault fired"
    );
    assert_retry_after_waited(&rig, 1, Duration::from_secs(1));
    assert_eq!(rig.dev.faults().counters().batches_stored, MIN_REQUESTS);
    assert_held_exactly_once(&rig).await;
}

/// Counts the uploader's attempts on the client side: a request that timed out may never be
/// logged by the server, but it was made.
struct CountingSink {
    inner: UpstreamClient,
    sent: AtomicU64,
}

impl CountingSink {
    fn new(rig: &Rig, timeout: Duration) -> Arc<CountingSink> {
        Arc::new(CountingSink {
            inner: UpstreamClient::new(&rig.dev.base_url(), timeout, true).expect("client"),
            sent: AtomicU64::new(0),
        })
    }
}

impl BatchSink for CountingSink {
    fn send_batch<'a>(
        &'a self,
        token: &'a AccessToken,
        batch: &'a aw_sync_samay::upstream::batch::Batch,
    ) -> BoxFuture<'a, Result<BatchResponse, UpstreamError>> {
        self.sent.fetch_add(1, Ordering::SeqCst);
        Box::pin(self.inner.send_batch(token, batch))
    }
}

/// An upstream that never recovers gets `max_retries + 1` requests per cycle, whatever the
/// fault, and then nothing until the next cycle; once it recovers, one cycle delivers all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanently_failing_upstream_gets_at_most_max_retries_plus_one_requests_per_cycle() {
    let rig = rig_with_events().await;
    let mut settings = fault_settings();
    settings.max_retries = 3;
    settings.retry.max_retry_after = Duration::from_millis(50);
    let per_cycle = u64::from(settings.max_retries) + 1;
    // A short timeout for the "timeouts" case; a spurious one elsewhere changes nothing, as
    // every request of these cycles fails anyway.
    let sink = CountingSink::new(&rig, Duration::from_millis(300));
    let mut engine = rig.engine_with(settings);
    engine.upstream = sink.clone();

    type Break = fn(&mut devserver::FaultSettings);
    let kinds: [(&str, Break); 4] = [
        ("500", |f| f.fail_500 = u32::MAX),
        ("429 with Retry-After", |f| {
            f.fail_429 = u32::MAX;
            f.retry_after_secs = 1;
        }),
        ("dropped connections", |f| f.drop_before_store = u32::MAX),
        // Every answer slower than the client's 300 ms timeout.
        ("timeouts", |f| f.slow_ms = 2_000),
    ];
    for (name, arm) in kinds {
        rig.dev.faults().clear();
        rig.dev.faults().update(arm);
        for cycle in 0..2 {
            let before = sink.sent.load(Ordering::SeqCst);
            let err = engine.run_cycle().await.unwrap_err();
            assert!(matches!(err, CycleError::Upstream(_)), "{name}: {err}");
            let made = sink.sent.load(Ordering::SeqCst) - before;
            assert_eq!(made, per_cycle, "{name}, cycle {cycle}: requests made");
        }
    }
    // The server saw every request of the three faults it answers at once (a timed-out
    // request may or may not have reached the handler yet).
    assert!(rig.dev.faults().counters().requests_received >= 3 * 2 * per_cycle);

    rig.dev.faults().clear();
    let sink = CountingSink::new(&rig, Duration::from_secs(5));
    engine.upstream = sink.clone();
    let r = engine.run_cycle().await.unwrap();
    assert_eq!(r.upload.delivered, EVENTS as u64);
    assert_eq!(sink.sent.load(Ordering::SeqCst), MIN_REQUESTS);
    rig.assert_exact(BUCKET).await;
    let stats = samay_testkit::devserver::bucket_stats(&rig.dev, BUCKET)
        .await
        .unwrap();
    assert_eq!((stats.events, stats.versions_replaced), (EVENTS as u64, 0));
}

/// A long sync with access tokens living 3 s: the login session refreshes each token a third of
/// its lifetime before it lapses (`oauth::refresh_margin`), so the upstream never sees an
/// expired one — no batch is answered 401, none is retried — and every refresh token is
/// presented once: the provider counts a second presentation as reuse and revokes the grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_tokens_expiring_every_three_seconds_fail_no_upload_and_no_refresh_token_is_reused()
{
    const TTL: Duration = Duration::from_secs(3);
    const EVENTS_LONG: usize = 1800;
    const SLOW_MS: u64 = 150;
    let aw = tokio::task::spawn_blocking(AwServer::start)
        .await
        .expect("aw-server starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = devserver::spawn_with(
        DevServerConfig {
            db_path: dir.path().join("upstream.sqlite"),
            ..Default::default()
        },
        OidcConfig {
            auto_approve: Some("alice".into()),
            access_token_ttl: TTL,
            ..Default::default()
        },
    )
    .await
    .expect("dev server starts");

    // The login `--dev` does: PKCE code flow through the loopback callback, the "browser" an
    // in-process client following the provider's auto-approving redirect.
    let auth = AuthConfig {
        client_id: DEV_CLIENT_ID.into(),
        issuer: dev.issuer(),
        token_storage: TokenStorage::File,
        callback: CallbackMode::Loopback,
        login_timeout: 30,
        ..Default::default()
    };
    let http = oauth::http_client().expect("http client");
    let provider = oauth::resolve_provider(&auth, &http)
        .await
        .expect("discovery");
    let store = TokenStore::open(
        TokenStorage::File,
        oauth::configured_account(&auth),
        &dir.path().join("tokens"),
    )
    .await
    .expect("token store");
    let browser: oauth::Opener = Box::new(|url| {
        let url = url.clone();
        tokio::spawn(async move {
            let _ = reqwest::get(url).await;
        });
    });
    oauth::login(
        &auth,
        &store,
        &provider,
        LoginOptions {
            no_browser: false,
            opener: Some(browser),
            // As --dev: the auto-approving provider would issue a code for the check too.
            preflight: false,
        },
    )
    .await
    .expect("login");
    let session = Arc::new(
        OAuthSession::new(&auth, store, &dir.path().join("locks")).with_provider(provider),
    );

    let rig = Rig { aw, dev, dir };
    rig.bucket(BUCKET).await;
    rig.insert(BUCKET, &series(EVENTS_LONG, 5.0, 60, "w")).await;
    // The upstream takes at least 150 ms per batch: 180 batches, three at a time
    // (`sync.upload_concurrency`), keep the sync going at least 9 s, three token lifetimes,
    // whatever the machine's speed.
    rig.dev.faults().update(|f| f.slow_ms = SLOW_MS);
    let engine = rig.engine_full(fault_settings(), session.clone(), "state.sqlite");
    let r = engine
        .run_cycle()
        .await
        .expect("the sync never fails for a token");
    let batches = EVENTS_LONG.div_ceil(BATCH) as u64;
    assert_eq!(
        (r.upload.delivered, r.upload.retries),
        (EVENTS_LONG as u64, 0)
    );

    // (a) No batch request was answered 401 (nor anything but 200): zero, not "each 401
    // followed by a success", because a token is only handed out while it has a third of its
    // life (1 s) left, and a request reaches the token check ~150 ms after taking its token.
    let log = requests(&rig);
    assert_eq!(log.len() as u64, batches, "one request per batch, no retry");
    let unauthorized = log.iter().filter(|r| r.status == Some(401)).count();
    assert_eq!(unauthorized, 0, "batch requests answered 401");
    assert!(log.iter().all(|r| r.status == Some(200)));

    // (b) Several refreshes, no refresh token presented twice, the grant alive.
    let counters = rig.dev.oauth_counters().await.unwrap();
    assert!(
        counters.refreshes_served >= 3,
        "the sync outlived several access tokens: {counters:?}"
    );
    assert_eq!(counters.reuse_detections, 0, "a refresh token was reused");
    assert_eq!(counters.grants_active, 1, "the grant was revoked");
    let latest = session
        .store()
        .load()
        .await
        .unwrap()
        .and_then(|t| t.refresh_token)
        .expect("a refresh token is stored");
    let still_good = reqwest::Client::new()
        .post(format!("{}/oauth/token", rig.dev.base_url()))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", latest.as_str()),
            ("client_id", DEV_CLIENT_ID),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(
        still_good.status(),
        200,
        "the latest refresh token is unspent"
    );

    // (c) Everything arrived once, as alice.
    rig.assert_exact(BUCKET).await;
    let stored = rig.upstream_events(BUCKET).await;
    assert_eq!(stored.len(), EVENTS_LONG);
    assert!(stored.iter().all(|e| e.user == "alice" && e.versions == 1));
}
