//! The sidecar against samay-server as a user runs them (issue 13, "Run your own upstream"): a
//! real OpenID provider (oidc-provider) issuing JWT access tokens for the API, samay-server with
//! `--issuer` and `--audience` checking them against the provider's keys, and `aw-sync-samay
//! --login` asking for tokens for that API (`auth.resource`). A catch-up of a real aw-server
//! survives kill -9 of the sidecar and of the server, and the server's change feed then holds
//! the source event for event.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use samay_api::ChangesResponse;
use samay_testkit::awserver::AwServer;
use samay_testkit::bin::isolated_command;
use samay_testkit::oidc::{OidcOptions, OidcProvider, PlayUser};
use samay_testkit::rig::series;
use serde_json::Value;

/// The API's resource identifier: samay-server's `--audience`, the sidecar's `auth.resource`.
const AUDIENCE: &str = "https://samay.test/api";
/// Every wait on a process here is bounded by this.
const WAIT: Duration = Duration::from_secs(60);

/// A `samay-server` process on `port` (0: any) with its database at `db`; killed when dropped.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(db: &Path, issuer: &str, port: u16) -> Server {
        let mut cmd = Command::new(samay_testkit::built_binary("samay-server"));
        cmd.args(["--bind", &format!("127.0.0.1:{port}")])
            .args(["--database-url", &format!("sqlite://{}", db.display())])
            .args(["--issuer", issuer, "--audience", AUDIENCE])
            .env_remove("SAMAY_ISSUER")
            .env_remove("SAMAY_STATIC_TOKENS");
        let (child, base) = samay_testkit::server::spawn_listening(cmd);
        Server { child, base }
    }

    fn port(&self) -> u16 {
        self.base
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("a port")
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The whole change feed, folded to the latest entry per (bucket, event id).
    async fn feed(&self, token: &str) -> BTreeMap<(String, i64), samay_api::Change> {
        let http = reqwest::Client::new();
        let mut after = 0;
        let mut held = BTreeMap::new();
        loop {
            let page: ChangesResponse = http
                .get(format!("{}/v1/changes?after={after}&limit=1000", self.base))
                .bearer_auth(token)
                .send()
                .await
                .expect("GET v1/changes")
                .json()
                .await
                .expect("a changes page");
            if page.changes.is_empty() {
                return held;
            }
            for change in page.changes {
                held.insert((change.bucket_id.clone(), change.event_id), change);
            }
            after = page.next;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn sidecar(home: &Path, config: &Path, aw_port: u16) -> Command {
    let mut cmd = isolated_command(home);
    cmd.arg("--port")
        .arg(aw_port.to_string())
        .arg("--config")
        .arg(config)
        .env_remove("BROWSER")
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .env("SSH_CONNECTION", "10.0.0.1 50000 10.0.0.2 22");
    cmd
}

fn write_config(path: &PathBuf, oidc: &OidcProvider, base_url: &str) {
    std::fs::write(
        path,
        format!(
            "[auth]\nclient_id = \"{}\"\nissuer = \"{}\"\ntoken_storage = \"file\"\nlogin_timeout = 30\n\
             scopes = [\"openid\", \"offline_access\", \"samay\"]\nresource = \"{AUDIENCE}\"\n\
             [sync]\nbase_url = \"{base_url}\"\nbatch_size = 50\n",
            oidc.client_id(),
            oidc.issuer(),
        ),
    )
    .expect("write config");
}

#[tokio::test]
async fn the_sidecar_logs_in_to_a_real_provider_and_syncs_into_samay_server_through_kill_9() {
    let oidc = tokio::task::spawn_blocking(|| {
        OidcProvider::start_with(OidcOptions {
            resource: Some(AUDIENCE.to_string()),
            ..Default::default()
        })
    })
    .await
    .unwrap();
    let aw = tokio::task::spawn_blocking(AwServer::start).await.unwrap();
    let home = tempfile::tempdir().unwrap();
    let db = home.path().join("samay.sqlite");
    let mut server = Server::start(&db, &oidc.issuer(), 0);
    let config = home.path().join("aw-sync-samay.toml");
    write_config(&config, &oidc, &server.base);

    // Log in as a user would: the browser login, tokens for the API.
    let play = PlayUser {
        user: "alice".into(),
        ..Default::default()
    };
    let mut login = sidecar(home.path(), &config, aw.port());
    login.arg("--login");
    play.apply(&mut login);
    let out = tokio::task::spawn_blocking(move || login.output().unwrap())
        .await
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.contains("Logged in as alice"),
        "{said}"
    );

    // Two buckets of history in the real aw-server.
    let client = aw.client();
    for (bucket, n) in [("window", 3000), ("afk", 1200)] {
        client
            .create_bucket(bucket, "currentwindow", "t", "h")
            .await
            .unwrap();
        for chunk in series(n, 5.0, 60, bucket).chunks(500) {
            client.insert_events(bucket, chunk).await.unwrap();
        }
    }
    // The reader's own token for the same user: the feed is alice's.
    let token = oidc
        .resource_access_token(&reqwest::Client::new(), "alice")
        .await;

    // The catch-up, killed with -9 once part of it is stored.
    let mut once = sidecar(home.path(), &config, aw.port());
    let mut child = once
        .arg("--once")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        let stored = server.feed(&token).await.len();
        if stored > 0 {
            break;
        }
        assert!(started.elapsed() < WAIT, "nothing stored upstream");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the sync ended before the kill"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let after_kill = server.feed(&token).await.len();
    assert!(
        after_kill < 4200,
        "killed mid-catch-up ({after_kill} stored)"
    );

    // The server killed with -9 too, and started again on its database and port.
    let port = server.port();
    server.kill9();
    let server = Server::start(&db, &oidc.issuer(), port);

    let mut again = sidecar(home.path(), &config, aw.port());
    again.arg("--once");
    let out = tokio::task::spawn_blocking(move || again.output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The feed holds the source, event for event.
    let held = server.feed(&token).await;
    let mut expected = 0;
    for bucket in ["window", "afk"] {
        let events = client.get_events(bucket, None, None, None).await.unwrap();
        expected += events.len();
        for e in events {
            let id = e.id.expect("an id");
            let change = held
                .get(&(bucket.to_string(), id))
                .unwrap_or_else(|| panic!("{bucket}/{id} missing upstream"));
            assert!(!change.deleted);
            let at: DateTime<Utc> = change.timestamp.as_deref().unwrap().parse().unwrap();
            assert_eq!(at, e.timestamp, "{bucket}/{id}");
            assert_eq!(change.duration, Some(e.duration), "{bucket}/{id}");
            let data: Value = serde_json::from_str(change.data.as_ref().unwrap().get()).unwrap();
            assert_eq!(data, Value::Object(e.data.clone()), "{bucket}/{id}");
        }
    }
    assert_eq!(
        held.len(),
        expected,
        "nothing more than the source upstream"
    );
}
