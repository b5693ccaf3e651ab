//! Issue 10 §1: the state belongs to its destination — (upstream, account). The real binary, a
//! real Python aw-server and real dev upstreams, in the order a new user meets them: `--dev
//! --once` first, then a real upstream, a second one, back to the first, another account; an
//! upstream without `v1/me`; `--resync` here and through the daemon. Before, every later
//! destination got `synced: 0 events`, exit 0, and nothing.
#![cfg(unix)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use aw_sync_samay::auth::{AccessToken, AuthError, BoxFuture, Identity, TokenSource};
use samay_server::DevServer;
use serde_json::Value;

use samay_testkit::bin::{isolated_command, run, summary_count, sync_command, write_config, Run};
use samay_testkit::daemon::Daemon;
use samay_testkit::devserver::{start_dev_server, stats, stored_events, TEST_TOKEN};
use samay_testkit::rig::{series, Rig};

const EVENTS: u64 = 25;

fn home(rig: &Rig) -> PathBuf {
    let home = rig.dir.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    home
}

/// A config file of its own for the upstream at `base_url`.
fn config_at(home: &Path, name: &str, base_url: &str) -> PathBuf {
    let path = home.join(name);
    std::fs::write(&path, format!("[sync]\nbase_url = \"{base_url}\"\n")).expect("config");
    path
}

/// `--status --json` of this home.
async fn status(rig: &Rig, home: &Path, config: &Path, token: &str) -> Value {
    let r = run(
        sync_command(home, rig.aw.port(), config, token).args(["--status", "--json"]),
        &home.join("out"),
    )
    .await;
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.all()))
}

async fn once(rig: &Rig, home: &Path, config: &Path, token: &str, extra: &[&str]) -> Run {
    let r = run(
        sync_command(home, rig.aw.port(), config, token)
            .arg("--once")
            .args(extra),
        &home.join("out"),
    )
    .await;
    assert_eq!(r.status.code(), Some(0), "{}", r.all());
    r
}

/// The events `server` holds for `user` in `bucket`, and the devices they came from.
async fn held(server: &DevServer, user: &str, bucket: &str) -> (usize, BTreeSet<String>) {
    let events: Vec<_> = stored_events(server, bucket)
        .await
        .into_iter()
        .filter(|e| e.user == user)
        .collect();
    let devices = events.iter().map(|e| e.device_id.clone()).collect();
    (events.len(), devices)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_new_upstream_or_account_gets_the_whole_history_and_an_old_one_nothing_again() {
    let rig = Rig::new().await;
    rig.bucket("window").await;
    rig.insert("window", &series(EVENTS as usize, 10.0, 600, "w"))
        .await;
    let home = home(&rig);
    let second_dir = tempfile::tempdir().expect("tempdir");
    let second = start_dev_server(second_dir.path()).await;
    rig.dev.add_token_for("bob-token", "bob");
    let first = config_at(&home, "first.toml", &rig.dev.base_url());

    // The README's first step: the embedded dev upstream.
    let dev = run(
        isolated_command(&home)
            .args(["--dev", "--once", "--port"])
            .arg(rig.aw.port().to_string())
            .arg("--config")
            .arg(&first),
        &home.join("out"),
    )
    .await;
    assert_eq!(dev.status.code(), Some(0), "{}", dev.all());
    assert_eq!(summary_count(&dev, " delivered"), EVENTS, "{}", dev.all());

    // Then the real upstream: everything, not "0 events".
    let r = once(&rig, &home, &first, TEST_TOKEN, &[]).await;
    assert_eq!(summary_count(&r, " delivered"), EVENTS, "{}", r.all());
    let (n, devices) = held(&rig.dev, "dev", "window").await;
    assert_eq!(n as u64, EVENTS);
    assert_eq!(devices.len(), 1);
    let v = status(&rig, &home, &first, TEST_TOKEN).await;
    assert_eq!(
        v["destination"]["base_url"],
        rig.dev.base_url().trim_end_matches('/'),
        "{v:#}"
    );
    assert_eq!(v["destination"]["account"], "dev", "{v:#}");
    assert_eq!(v["destination"]["configured"], true, "{v:#}");
    assert_eq!(v["buckets"][0]["delivered"], EVENTS, "{v:#}");

    // A second upstream: `--status` says its numbers are still about the first, then the
    // sync sends everything there, under the same device id.
    let other = config_at(&home, "second.toml", &second.base_url());
    let v = status(&rig, &home, &other, TEST_TOKEN).await;
    assert_eq!(v["destination"]["configured"], false, "{v:#}");
    assert_eq!(v["state"], "never_synced", "not \"ok\": {v:#}");
    assert_eq!(v["exit_code"], 1, "{v:#}");
    let human = run(
        sync_command(&home, rig.aw.port(), &other, TEST_TOKEN).arg("--status"),
        &home.join("out"),
    )
    .await;
    assert!(
        human.stdout.contains("not the configured upstream"),
        "{}",
        human.stdout
    );
    let r = once(&rig, &home, &other, TEST_TOKEN, &[]).await;
    assert_eq!(summary_count(&r, " delivered"), EVENTS, "{}", r.all());
    let (n, second_devices) = held(&second, "dev", "window").await;
    assert_eq!(n as u64, EVENTS);
    assert_eq!(
        second_devices, devices,
        "the device id is the installation's"
    );

    // Back to the first: nothing is sent again.
    let batches = stats(&rig.dev).await.batches;
    let r = once(&rig, &home, &first, TEST_TOKEN, &[]).await;
    assert_eq!(
        summary_count(&r, " new or changed events"),
        0,
        "{}",
        r.all()
    );
    assert_eq!(stats(&rig.dev).await.batches, batches);

    // Another account at the first upstream: the whole history again, under that account.
    let r = once(&rig, &home, &first, "bob-token", &[]).await;
    assert_eq!(summary_count(&r, " delivered"), EVENTS, "{}", r.all());
    let (n, bob_devices) = held(&rig.dev, "bob", "window").await;
    assert_eq!(n as u64, EVENTS);
    assert_eq!(bob_devices, devices);
    let v = status(&rig, &home, &first, "bob-token").await;
    assert_eq!(v["destination"]["account"], "bob", "{v:#}");
    assert_eq!(
        v["device_id"],
        devices.first().cloned().unwrap_or_default().as_str()
    );
}

/// An upstream written before `v1/me`: the records are keyed by a fingerprint of the token
/// (never the token), `--status` says so, and another token starts over — the upstream
/// absorbs the repeats as duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_v1_me_the_token_fingerprint_keys_the_records_and_status_says_so() {
    let rig = Rig::new().await;
    rig.bucket("window").await;
    rig.insert("window", &series(EVENTS as usize, 10.0, 600, "w"))
        .await;
    rig.dev.faults().update(|f| f.no_me = true);
    rig.dev.add_token_for("second-token", "dev");
    let home = home(&rig);
    let config = write_config(&home, &rig.dev.base_url(), "");

    let r = once(&rig, &home, &config, TEST_TOKEN, &[]).await;
    assert_eq!(summary_count(&r, " delivered"), EVENTS, "{}", r.all());
    let v = status(&rig, &home, &config, TEST_TOKEN).await;
    let account = v["destination"]["account"].as_str().unwrap_or_default();
    assert!(
        account.starts_with("token:") && account.contains("no v1/me"),
        "{v:#}"
    );
    assert!(!account.contains(TEST_TOKEN), "{v:#}");
    let human = run(
        sync_command(&home, rig.aw.port(), &config, TEST_TOKEN).arg("--status"),
        &home.join("out"),
    )
    .await;
    assert!(human.stdout.contains("no v1/me"), "{}", human.stdout);
    assert!(!human.all().contains(TEST_TOKEN), "{}", human.all());

    // The same token again: nothing new.
    let r = once(&rig, &home, &config, TEST_TOKEN, &[]).await;
    assert_eq!(
        summary_count(&r, " new or changed events"),
        0,
        "{}",
        r.all()
    );
    // Another token: everything again, which the upstream already held.
    let r = once(&rig, &home, &config, "second-token", &[]).await;
    assert_eq!(summary_count(&r, " delivered"), EVENTS, "{}", r.all());
    assert_eq!(
        summary_count(&r, " of them already held upstream"),
        EVENTS,
        "{}",
        r.all()
    );
    assert_eq!(held(&rig.dev, "dev", "window").await.0 as u64, EVENTS);
}

/// `--resync` forgets what the destination acknowledged and sends everything again, the
/// upstream absorbing it: with `--once`, through a running daemon, and when the daemon starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_sends_everything_again_with_once_through_the_daemon_and_at_its_start() {
    let rig = Rig::new().await;
    rig.bucket("window").await;
    rig.insert("window", &series(EVENTS as usize, 10.0, 600, "w"))
        .await;
    let home = home(&rig);
    let config = write_config(&home, &rig.dev.base_url(), "sync_interval = 3600");

    let r = once(&rig, &home, &config, TEST_TOKEN, &[]).await;
    assert_eq!(summary_count(&r, " delivered"), EVENTS, "{}", r.all());
    let r = once(&rig, &home, &config, TEST_TOKEN, &["--resync"]).await;
    assert_eq!(summary_count(&r, " delivered"), EVENTS, "{}", r.all());
    assert_eq!(
        summary_count(&r, " of them already held upstream"),
        EVENTS,
        "{}",
        r.all()
    );
    let r = once(&rig, &home, &config, TEST_TOKEN, &[]).await;
    assert_eq!(
        summary_count(&r, " new or changed events"),
        0,
        "{}",
        r.all()
    );

    // A daemon started with --resync: its first cycle sends everything again.
    let cmd = || sync_command(&home, rig.aw.port(), &config, TEST_TOKEN);
    let mut daemon = Daemon::spawn(cmd().arg("--resync"), &home.join("daemon"));
    daemon.wait_for("sync cycle done").await;
    assert!(
        daemon
            .stderr()
            .contains("--resync: forgot what this destination acknowledged"),
        "{}",
        daemon.stderr()
    );
    // Beside it, `--once --resync` asks the daemon for a resync.
    let r = once(&rig, &home, &config, TEST_TOKEN, &["--resync"]).await;
    assert!(r.stderr.contains("the running daemon"), "{}", r.all());
    assert_eq!(summary_count(&r, " delivered"), EVENTS, "{}", r.all());
    let r = once(&rig, &home, &config, TEST_TOKEN, &[]).await;
    assert_eq!(
        summary_count(&r, " new or changed events"),
        0,
        "{}",
        r.all()
    );
    daemon.stop_with("TERM").await;

    let (n, _) = held(&rig.dev, "dev", "window").await;
    assert_eq!(n as u64, EVENTS, "duplicates absorbed, nothing doubled");
    rig.assert_exact("window").await;
}

/// A login whose provider names no subject (only `auth_url`/`token_url` configured, no
/// userinfo), refreshed between cycles, against an upstream without `v1/me`.
struct LoginWithoutSubject {
    current: std::sync::Mutex<String>,
}

impl TokenSource for LoginWithoutSubject {
    fn token(&self) -> BoxFuture<'_, Result<AccessToken, AuthError>> {
        let token = self.current.lock().expect("lock").clone();
        Box::pin(async move { Ok(AccessToken::new(token)) })
    }

    fn refresh<'a>(
        &'a self,
        _rejected: &'a AccessToken,
    ) -> BoxFuture<'a, Result<AccessToken, AuthError>> {
        Box::pin(async { Err(AuthError::Rejected("no refresh here".into())) })
    }

    fn user_id(&self) -> Option<String> {
        None
    }

    fn login(&self) -> Option<Identity> {
        Some(Identity {
            key: "login:https://provider.test|client".into(),
            label: "the account logged in at https://provider.test".into(),
        })
    }

    fn describe(&self) -> String {
        "a login without a subject".into()
    }
}

/// Keyed by the access token, such a login would be a new destination after every refresh
/// and send the whole history again each time; keyed by the login, a refresh sends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_without_subject_keeps_its_records_across_refreshes_without_v1_me() {
    let rig = Rig::new().await;
    rig.bucket("window").await;
    rig.insert("window", &series(EVENTS as usize, 10.0, 600, "w"))
        .await;
    rig.dev.faults().update(|f| f.no_me = true);
    rig.dev.add_token_for("refreshed-token", "dev");
    let tokens = std::sync::Arc::new(LoginWithoutSubject {
        current: std::sync::Mutex::new(TEST_TOKEN.to_string()),
    });
    let mut engine = rig.engine_full(
        samay_testkit::rig::test_settings(),
        tokens.clone(),
        "state.sqlite",
    );
    engine.destination = aw_sync_samay::engine::Destination::upstream(&rig.dev.base_url());

    let first = engine.run_cycle().await.expect("first cycle");
    assert_eq!(first.upload.delivered, EVENTS);
    *tokens.current.lock().expect("lock") = "refreshed-token".into();
    let after_refresh = engine.run_cycle().await.expect("cycle after the refresh");
    assert_eq!(
        after_refresh.upload.delivered, 0,
        "a refreshed token is the same login: nothing is sent again"
    );
    assert_eq!(held(&rig.dev, "dev", "window").await.0 as u64, EVENTS);
}
