//! The login end to end, against a real certified OpenID provider (oidc-provider from npm, on
//! loopback) with `$BROWSER` pointed at a script that plays the user, the real aw-server, and
//! the dev upstream accepting the provider's tokens (checked at its userinfo endpoint).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use aw_sync_samay::auth::oauth::{configured_account, OAuthSession};
use aw_sync_samay::auth::store::TokenStore;
use aw_sync_samay::auth::tokens::StoredTokens;
use aw_sync_samay::auth::TokenSource;
use aw_sync_samay::config::{AuthConfig, TokenStorage};
use samay_server::DevServer;
use samay_testkit::awserver::AwServer;
use samay_testkit::bin::isolated_command;
use samay_testkit::devserver::start_for_issuer;
use samay_testkit::oidc::{OidcOptions, OidcProvider, PlayAction, PlayUser};
use samay_testkit::rig::series;

struct LoginRig {
    oidc: OidcProvider,
    aw: AwServer,
    dev: DevServer,
    home: tempfile::TempDir,
    config: PathBuf,
}

impl LoginRig {
    async fn new(access_ttl_secs: u64, extra_auth: &str) -> LoginRig {
        let oidc = tokio::task::spawn_blocking(move || {
            OidcProvider::start_with(OidcOptions {
                access_ttl_secs,
                ..Default::default()
            })
        })
        .await
        .unwrap();
        let aw = tokio::task::spawn_blocking(AwServer::start).await.unwrap();
        let home = tempfile::tempdir().unwrap();
        let dev = start_for_issuer(home.path(), &oidc.issuer()).await;
        let config = home.path().join("aw-sync-samay.toml");
        std::fs::write(
            &config,
            format!(
                "[auth]\nclient_id = \"{}\"\nissuer = \"{}\"\ntoken_storage = \"file\"\nlogin_timeout = 30\n{extra_auth}\n\
                 [sync]\nbase_url = \"{}\"\nbatch_size = 25\n",
                oidc.client_id(),
                oidc.issuer(),
                dev.base_url()
            ),
        )
        .unwrap();
        LoginRig {
            oidc,
            aw,
            dev,
            home,
            config,
        }
    }

    fn cmd(&self) -> Command {
        let mut c = isolated_command(self.home.path());
        c.arg("--port")
            .arg(self.aw.port().to_string())
            .arg("--config")
            .arg(&self.config);
        c
    }

    async fn run(&self, args: &[&str], user: Option<&PlayUser>) -> Output {
        self.run_traced(args, user, false).await
    }

    /// With `RUST_LOG=trace`: every log line of every crate, to look for secrets in.
    async fn run_traced(&self, args: &[&str], user: Option<&PlayUser>, trace: bool) -> Output {
        let mut c = self.cmd();
        c.args(args);
        if trace {
            c.env("RUST_LOG", "trace");
        }
        if let Some(u) = user {
            u.apply(&mut c);
        }
        tokio::task::spawn_blocking(move || c.output().expect("run aw-sync-samay"))
            .await
            .unwrap()
    }

    async fn login(&self, user: &str) -> Output {
        let play = PlayUser {
            user: user.into(),
            ..Default::default()
        };
        self.run(&["--login"], Some(&play)).await
    }

    fn data_dir(&self) -> PathBuf {
        self.home.path().join("data/activitywatch/aw-sync-samay")
    }

    fn auth(&self) -> AuthConfig {
        AuthConfig {
            client_id: self.oidc.client_id(),
            issuer: self.oidc.issuer(),
            token_storage: TokenStorage::File,
            ..Default::default()
        }
    }

    async fn store(&self) -> TokenStore {
        TokenStore::open(
            TokenStorage::File,
            configured_account(&self.auth()),
            &self.data_dir(),
        )
        .await
        .expect("token store")
    }

    async fn stored(&self) -> Option<StoredTokens> {
        self.store().await.load().await.expect("load tokens")
    }

    /// Presents a refresh token at the provider, as an attacker holding an old copy would.
    async fn present_refresh_token(&self, refresh_token: &str) -> (u16, String) {
        let resp = reqwest::Client::new()
            .post(self.oidc.token_endpoint())
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
                ("client_id", &self.oidc.client_id()),
            ])
            .send()
            .await
            .unwrap();
        (
            resp.status().as_u16(),
            resp.text().await.unwrap_or_default(),
        )
    }

    async fn source_count(&self, bucket: &str) -> usize {
        self.aw
            .client()
            .get_events(bucket, None, None, None)
            .await
            .unwrap()
            .len()
    }
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn all_logs(home: &Path) -> String {
    let dir = home.join("cache/activitywatch/log/aw-sync-samay");
    let mut out = String::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            out.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_sync_with_tokens_expiring_every_few_seconds_then_logout_revokes() {
    let rig = LoginRig::new(3, "").await;
    let play = PlayUser::default();
    let out = rig
        .run_traced(&["--login", "--verbose"], Some(&play), true)
        .await;
    let mut printed = text(&out);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Logged in as alice"),
        "{}",
        text(&out)
    );
    let first = rig.stored().await.expect("tokens stored");
    let first_refresh = first.refresh_token.clone().expect("a refresh token");

    // A sync that lasts several access-token lifetimes.
    let client = rig.aw.client();
    client
        .create_bucket("window", "currentwindow", "t", "h")
        .await
        .unwrap();
    for chunk in series(4500, 5.0, 60, "w").chunks(500) {
        client.insert_events("window", chunk).await.unwrap();
    }
    // 180 batches of 25, three at a time (`sync.upload_concurrency`), 120 ms each: 7.2 s. (Not
    // fewer, slower batches: a token is handed out with a third of its 3 s left, and the
    // request must reach the token check before it lapses, however loaded the machine.)
    rig.dev.faults().update(|f| f.slow_ms = 120);
    let started = Instant::now();
    let out = rig.run_traced(&["--once", "--verbose"], None, true).await;
    printed.push_str(&text(&out));
    let took = started.elapsed();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        took > Duration::from_secs(6),
        "the sync must outlive two tokens ({took:?})"
    );
    let counters = rig.dev.faults().counters();
    assert_eq!(
        counters.requests_received, counters.batches_stored,
        "not one upload failed (no 401, no retry)"
    );
    let stored = rig.dev.stored_events(None, Some("window")).await.unwrap();
    assert_eq!(stored.len(), rig.source_count("window").await);
    assert!(stored.iter().all(|e| e.user == "alice"));

    let after = rig.stored().await.expect("still logged in");
    let latest_refresh = after.refresh_token.clone().unwrap();
    assert_ne!(latest_refresh, first_refresh, "refresh tokens were rotated");
    // Had any rotated refresh token been used twice, the provider would have revoked the whole
    // grant and the uploads after it would have failed: the counters above rule that out.

    // Logout revokes at the provider and forgets locally.
    let out = rig.run(&["--logout"], None).await;
    assert!(out.status.success(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(said.contains("Revoked"), "{said}");
    assert!(said.contains("cursors are kept"), "{said}");
    assert!(rig.stored().await.is_none());
    let (status, body) = rig.present_refresh_token(&latest_refresh).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid_grant"), "{body}");

    // Nothing secret in any log line, stdout or stderr at trace level.
    let logs = all_logs(rig.home.path()) + &printed;
    assert!(!logs.is_empty());
    for secret in [
        &first.access_token,
        &first_refresh,
        &after.access_token,
        &latest_refresh,
    ] {
        assert!(!logs.contains(secret.as_str()), "a token is in the logs");
    }
    assert!(!logs.contains("code_verifier"));
    let code_param = regex_like_code_param(&logs);
    assert!(
        code_param.is_none(),
        "an authorization code is in the logs: {code_param:?}"
    );
}

/// Finds `?code=` or `&code=` (an authorization code in a URL), not `code_challenge=`.
fn regex_like_code_param(s: &str) -> Option<String> {
    for pat in ["?code=", "&code="] {
        if let Some(i) = s.find(pat) {
            return Some(s[i..(i + 20).min(s.len())].to_string());
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_grant_means_login_required_and_a_new_login_resumes_with_nothing_lost() {
    let rig = LoginRig::new(3600, "").await;
    assert!(rig.login("alice").await.status.success());
    let client = rig.aw.client();
    client.create_bucket("b", "t", "t", "h").await.unwrap();
    client
        .insert_events("b", &series(30, 5.0, 600, "before"))
        .await
        .unwrap();
    assert!(rig.run(&["--once"], None).await.status.success());

    // Somebody replays a rotated refresh token: force one rotation, then present the old one.
    let store = rig.store().await;
    let original = store.load().await.unwrap().unwrap();
    let old_refresh = original.refresh_token.clone().unwrap();
    let mut expired = original.clone();
    expired.expires_at = Some(chrono::Utc::now() - chrono::Duration::seconds(1));
    store.save(&expired).await.unwrap();
    let session = OAuthSession::new(
        &rig.auth(),
        rig.store().await,
        &rig.home.path().join("locks"),
    );
    session.token().await.expect("refresh works");
    let (status, body) = rig.present_refresh_token(&old_refresh).await;
    assert_eq!(status, 400, "{body}");

    // The grant is revoked: the next sync ends in "login required", tokens are forgotten.
    client
        .insert_events("b", &series(20, 5.0, 60, "after"))
        .await
        .unwrap();
    let out = rig.run(&["--once"], None).await;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("login required"), "{}", text(&out));
    assert!(rig.stored().await.is_none());
    let status = rig.run(&["--status"], None).await;
    // The hint repeats the flags this command was run with, and the user must act: exit 1.
    let login = format!(
        "login required: run aw-sync-samay --port {} --config {} --login",
        rig.aw.port(),
        rig.config.display()
    );
    assert!(
        String::from_utf8_lossy(&status.stdout).contains(&login),
        "{login:?} in:\n{}",
        text(&status)
    );
    assert_eq!(status.status.code(), Some(1), "{}", text(&status));

    // A new login resumes: everything arrives, nothing twice.
    assert!(rig.login("alice").await.status.success());
    let out = rig.run(&["--once"], None).await;
    assert!(out.status.success(), "{}", text(&out));
    let stored = rig.dev.stored_events(None, Some("b")).await.unwrap();
    assert_eq!(stored.len(), 50);
    assert!(stored.iter().all(|e| e.versions == 1));
}

/// Issue 10 §1: logging out and in as another user sent that user nothing (the first user's
/// acknowledgements were taken as the upstream's). Each account now has its own records: bob
/// gets the whole history, alice again gets nothing twice, and `--status` names who.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_account_gets_the_whole_history_and_the_first_nothing_twice() {
    let rig = LoginRig::new(3600, "").await;
    let client = rig.aw.client();
    client.create_bucket("b", "t", "t", "h").await.unwrap();
    client
        .insert_events("b", &series(30, 5.0, 600, "w"))
        .await
        .unwrap();
    let users = |stored: &[samay_server::StoredEvent]| {
        let mut by_user = std::collections::BTreeMap::<String, usize>::new();
        for e in stored {
            *by_user.entry(e.user.clone()).or_default() += 1;
        }
        by_user.into_values().collect::<Vec<_>>()
    };

    assert!(rig.login("alice").await.status.success());
    let out = rig.run(&["--once"], None).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(rig.run(&["--logout"], None).await.status.success());
    assert!(rig.login("bob").await.status.success());
    // Before bob's first sync, --status does not call alice's numbers healthy for bob.
    let status = rig.run(&["--status", "--json"], None).await;
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).expect("JSON");
    assert_eq!(v["destination"]["configured"], false, "{v:#}");
    assert_eq!(v["state"], "never_synced", "{v:#}");
    assert_eq!(status.status.code(), Some(1), "{v:#}");
    let out = rig.run(&["--once"], None).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("30 delivered"),
        "{}",
        text(&out)
    );
    let stored = rig.dev.stored_events(None, Some("b")).await.unwrap();
    assert_eq!(users(&stored), [30, 30], "each account holds everything");
    let status = rig.run(&["--status"], None).await;
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("account    bob at "),
        "{}",
        text(&status)
    );

    assert!(rig.run(&["--logout"], None).await.status.success());
    assert!(rig.login("alice").await.status.success());
    let out = rig.run(&["--once"], None).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("synced: 0 new"),
        "alice's records are hers again: {}",
        text(&out)
    );
    let stored = rig.dev.stored_events(None, Some("b")).await.unwrap();
    assert_eq!(users(&stored), [30, 30]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_refreshers_at_once_never_spend_the_same_refresh_token() {
    let rig = LoginRig::new(3600, "").await;
    assert!(rig.login("alice").await.status.success());
    let store = rig.store().await;
    let mut t = store.load().await.unwrap().unwrap();
    t.expires_at = Some(chrono::Utc::now() - chrono::Duration::seconds(1));
    store.save(&t).await.unwrap();
    // Two independent sessions, as two processes would have, sharing the store and lock dir.
    let locks = rig.home.path().join("cache");
    let a = OAuthSession::new(&rig.auth(), rig.store().await, &locks);
    let b = OAuthSession::new(&rig.auth(), rig.store().await, &locks);
    let (ta, tb) = tokio::join!(a.token(), b.token());
    let (ta, tb) = (ta.expect("a refreshed"), tb.expect("b refreshed"));
    assert_eq!(
        ta.secret(),
        tb.secret(),
        "the second adopted the first one's refresh"
    );
    // The grant is intact: the stored refresh token still refreshes (a reuse would have
    // revoked the whole grant).
    let latest = rig.stored().await.unwrap().refresh_token.unwrap();
    let (status, body) = rig.present_refresh_token(&latest).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_falls_back_to_an_ephemeral_one_the_provider_accepts() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let rig = LoginRig::new(
        3600,
        &format!("redirect_uri = \"http://127.0.0.1:{port}/callback\""),
    )
    .await;
    let out = rig.login("bob").await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Logged in as bob"));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !err.contains(&format!("127.0.0.1%3A{port}%2F")),
        "used the taken port: {err}"
    );
    drop(taken);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_denied_stores_nothing_and_says_what_to_do() {
    let rig = LoginRig::new(3600, "").await;
    let play = PlayUser {
        action: PlayAction::Deny,
        ..Default::default()
    };
    let out = rig.run(&["--login"], Some(&play)).await;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("access_denied"), "{}", text(&out));
    assert!(rig.stored().await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_into_the_real_secret_service() {
    let rig = LoginRig::new(3600, "").await;
    // token_storage = keyring for this one, inside a private D-Bus session with gnome-keyring.
    let text_cfg = std::fs::read_to_string(&rig.config).unwrap();
    std::fs::write(
        &rig.config,
        text_cfg.replace("token_storage = \"file\"", "token_storage = \"keyring\""),
    )
    .unwrap();
    for tool in ["dbus-run-session", "gnome-keyring-daemon", "secret-tool"] {
        assert!(
            Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {tool}"))
                .output()
                .unwrap()
                .status
                .success(),
            "{tool} missing: run scripts/install-peers.sh"
        );
    }
    let bin = env!("CARGO_BIN_EXE_aw-sync-samay");
    let script = format!(
        "printf pw | gnome-keyring-daemon --unlock --components=secrets >/dev/null 2>&1; \
         \"{bin}\" --port {port} --config \"{cfg}\" --login && \
         \"{bin}\" --port {port} --config \"{cfg}\" --status; \
         secret-tool search --all service aw-sync-samay 2>&1",
        port = rig.aw.port(),
        cfg = rig.config.display()
    );
    let mut c = Command::new("dbus-run-session");
    for (k, v) in isolated_command(rig.home.path()).get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    PlayUser::default().apply(&mut c);
    c.env_remove("DBUS_SESSION_BUS_ADDRESS")
        .arg("--")
        .arg("sh")
        .arg("-c")
        .arg(script);
    let out = tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap();
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("Logged in as alice"), "{all}");
    assert!(all.contains("OS keyring"), "{all}");
    assert!(all.contains("logged in as alice"), "{all}");
    assert!(
        all.contains("service = aw-sync-samay"),
        "the secret is in the Secret Service: {all}"
    );
    assert!(
        !rig.data_dir().join("tokens").exists(),
        "no plain-text file was written"
    );
}

/// Reads the child's stderr until the authorization URL appears (bounded by the child's own
/// login timeout), keeping everything read for messages.
fn read_auth_url(
    stderr: std::process::ChildStderr,
) -> (Option<String>, std::thread::JoinHandle<String>) {
    use std::io::{BufRead, BufReader};
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let mut all = String::new();
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent && line.trim_start().starts_with("http") && line.contains("code_challenge=") {
                let _ = tx.send(line.trim().to_string());
                sent = true;
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    (rx.recv_timeout(Duration::from_secs(30)).ok(), handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_browser_accepts_the_redirected_url_pasted_on_stdin() {
    use std::io::Write;
    use std::process::Stdio;
    let rig = LoginRig::new(3600, "").await;
    let mut c = rig.cmd();
    // A display-less SSH session: nothing would open a browser even if we let it.
    c.args(["--login", "--no-browser"])
        .env("SSH_CONNECTION", "10.0.0.1 22 10.0.0.2 22")
        .env_remove("BROWSER")
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let (url, err_thread) = read_auth_url(child.stderr.take().unwrap());
    let url = url.expect("the URL is printed");
    // The user signs in on another machine; its browser ends on an address nobody answers.
    let redirect = tokio::task::spawn_blocking(move || {
        PlayUser {
            deliver: false,
            ..Default::default()
        }
        .run(&url)
    })
    .await
    .unwrap()
    .redirect
    .expect("a final redirect");
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{redirect}").unwrap();
    drop(stdin);
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let err = err_thread.join().unwrap();
    assert!(out.status.success(), "{}\n{err}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Logged in as alice"));
    assert!(err.contains("paste"), "the user is told to paste: {err}");
    assert!(rig.stored().await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deep_link_fallback_hands_the_response_to_the_waiting_login() {
    let rig = LoginRig::new(3600, "callback = \"deep-link\"").await;
    let redirect_file = rig.home.path().join("redirect");
    let play = PlayUser {
        deliver: false,
        redirect_file: Some(redirect_file.clone()),
        ..Default::default()
    };
    let mut c = rig.cmd();
    c.arg("--login")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    play.apply(&mut c);
    let child = c.spawn().unwrap();
    // The provider sends the browser to samay://callback?...; the "OS" starts --callback.
    let mut link = None;
    for _ in 0..300 {
        if let Ok(s) = std::fs::read_to_string(&redirect_file) {
            if !s.trim().is_empty() {
                link = Some(s.trim().to_string());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let link = link.expect("the provider redirected to the deep link");
    assert!(link.starts_with("samay://callback?"), "{link}");
    let handoff = rig.run(&["--callback", &link], None).await;
    assert!(handoff.status.success(), "{}", text(&handoff));
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Logged in as alice"));
    // A replayed link finds no login waiting.
    let again = rig.run(&["--callback", &link], None).await;
    assert!(!again.status.success());
    assert!(
        text(&again).contains("no login is in progress"),
        "{}",
        text(&again)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_opens_the_browser_only_when_login_on_start_is_set() {
    for login_on_start in [false, true] {
        let rig = LoginRig::new(3600, &format!("login_on_start = {login_on_start}")).await;
        let log = rig.home.path().join("play.log");
        let play = PlayUser {
            log: Some(log.clone()),
            ..Default::default()
        };
        let mut c = rig.cmd();
        c.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        play.apply(&mut c);
        let mut daemon = c.spawn().unwrap();
        let mut logged_in = false;
        for _ in 0..60 {
            if rig.stored().await.is_some() {
                logged_in = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            daemon.try_wait().unwrap().is_none(),
            "the daemon keeps running"
        );
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(daemon.id().to_string())
            .status();
        let _ = daemon.wait();
        assert_eq!(
            logged_in, login_on_start,
            "login_on_start = {login_on_start}"
        );
        assert_eq!(
            log.exists(),
            login_on_start,
            "browser opened: {}",
            log.exists()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_scheme_installs_the_desktop_handler() {
    let rig = LoginRig::new(3600, "").await;
    let out = rig.run(&["--register-scheme"], None).await;
    assert!(out.status.success(), "{}", text(&out));
    let desktop = rig
        .home
        .path()
        .join("data/applications/aw-sync-samay-callback.desktop");
    let entry = std::fs::read_to_string(&desktop).expect("desktop entry written");
    assert!(
        entry.contains("MimeType=x-scheme-handler/samay;"),
        "{entry}"
    );
    assert!(entry.contains("--callback %u"), "{entry}");
}

/// On a terminal the login draws a spinner while it waits for the browser; the log lines that
/// come meanwhile ("authorization response received") ran into it. Each one now starts on a
/// cleared line. `script` (util-linux) gives the binary a pseudo-terminal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_terminal_log_lines_never_run_into_the_spinner() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: `script` (util-linux) is not installed");
        return;
    }
    let rig = LoginRig::new(3600, "").await;
    // The user takes a moment: the spinner draws several frames first.
    let play = PlayUser {
        delay_secs: 1,
        ..Default::default()
    };
    let base = rig.cmd();
    let inner = format!(
        "'{}' {} --login",
        env!("CARGO_BIN_EXE_aw-sync-samay"),
        base.get_args()
            .map(|a| format!("'{}'", a.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut c = Command::new("script");
    for (k, v) in base.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    play.apply(&mut c)
        .env("SHELL", "/bin/sh")
        .env("TERM", "xterm")
        .args(["-qfec", &inner, "/dev/null"]);
    let out = tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap();
    let all = text(&out);
    assert!(out.status.success(), "{all:?}");
    assert!(all.contains("Logged in as alice"), "{all:?}");
    assert!(
        all.contains("Waiting for the sign-in in the browser..."),
        "the spinner ran: {all:?}"
    );
    let logged = all
        .match_indices(" [INFO ]: ")
        .map(|(i, _)| i)
        .collect::<Vec<_>>();
    assert!(!logged.is_empty(), "{all:?}");
    for at in logged {
        // "2026-01-01 12:00:00,123" before " [INFO ]".
        let start = at.saturating_sub(23);
        let before = &all[..start];
        assert!(
            before.is_empty() || before.ends_with('\n') || before.ends_with("\r\x1b[J"),
            "a log line starts where the spinner's text is: {:?}",
            &all[start.saturating_sub(120)..(at + 40).min(all.len())]
        );
    }
}
