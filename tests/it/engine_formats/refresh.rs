//! A token the upstream stops accepting: 401, one refresh, nothing lost.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use aw_sync_samay::auth::{AccessToken, AuthError, BoxFuture, TokenSource};
use aw_sync_samay::engine::CycleError;
use samay_testkit::devserver::TEST_TOKEN;
use samay_testkit::rig::{series, test_settings, Rig};

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
