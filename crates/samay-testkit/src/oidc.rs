//! A real, certified OpenID provider (`oidc-provider` from npm) for login tests, and a script
//! that plays the user in the "browser".
//!
//! Each `OidcProvider` is its own node process on its own loopback port (bound by the provider
//! itself, so there is no free-port race) with its grants in memory: tests never share state and
//! can run in parallel. The process is killed on Drop, and also exits by itself when the test
//! process dies (its stdin is a pipe from us; EOF ends it).
//!
//! The provider (peers/oidc/provider.mjs) registers one public native client: loopback redirect
//! `http://127.0.0.1/callback` on any port, plus the private-use `app.samay:/callback` and
//! `samay://callback`; PKCE S256 required; refresh tokens rotated, and reusing a rotated one
//! revokes the whole grant. By default a refresh token is issued only when the request asks for
//! `offline_access` with `prompt=consent` (the spec behaviour); `RefreshPolicy::Always` issues
//! one for every code grant.
//!
//! With `OidcOptions::resource` the provider also knows one API (an RFC 8707 resource
//! indicator, the tokens' `aud`) and issues JWT or opaque access tokens for it
//! (`resource_access_token` logs a user in to get one); `resource_server_client` registers the
//! confidential client that API uses to introspect them.
//!
//! `play_user_browser()` is the `$BROWSER` for the app under test: the `webbrowser` crate spawns
//! it in the background with the authorization URL and does not wait for it. `PlayUser` sets its
//! knobs (`PLAY_USER`, `PLAY_ACTION`, `PLAY_LOG`, ...) on a `Command`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use url::Url;

/// node + oidc-provider start in ~0.3 s here; a loaded CI machine gets generous headroom.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// One run of the play-user script: ~8 local requests, each bounded by its own `--max-time`.
const PLAY_TIMEOUT: Duration = Duration::from_secs(30);

pub const DEFAULT_CLIENT_ID: &str = "aw-sync-samay";

/// When the provider issues a refresh token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefreshPolicy {
    /// Only for `scope=... offline_access` together with `prompt=consent` (OpenID Connect Core
    /// §11; oidc-provider's default): the client must send both.
    OfflineAccessWithConsent,
    /// For every authorization_code grant of the client, whatever the scope and prompt.
    Always,
}

/// How the provider issues access tokens for [`OidcOptions::resource`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessTokenFormat {
    /// RFC 9068 JWTs signed with the provider's keys (its JWKS).
    Jwt,
    /// Random strings; only introspection says what they are.
    Opaque,
}

#[derive(Clone, Debug)]
pub struct OidcOptions {
    pub access_ttl_secs: u64,
    pub refresh_ttl_secs: u64,
    pub client_id: String,
    pub refresh_policy: RefreshPolicy,
    /// A resource server (RFC 8707 resource indicator = the tokens' `aud`, scope `samay`).
    /// `None`: the provider knows no API and issues only userinfo tokens.
    pub resource: Option<String>,
    pub resource_format: AccessTokenFormat,
    /// A confidential client (id, secret; `client_secret_basic`) the resource server uses to
    /// introspect tokens.
    pub resource_server_client: Option<(String, String)>,
}

impl Default for OidcOptions {
    fn default() -> Self {
        OidcOptions {
            access_ttl_secs: 3600,
            refresh_ttl_secs: 14 * 24 * 3600,
            client_id: DEFAULT_CLIENT_ID.to_string(),
            refresh_policy: RefreshPolicy::OfflineAccessWithConsent,
            resource: None,
            resource_format: AccessTokenFormat::Jwt,
            resource_server_client: None,
        }
    }
}

pub struct OidcProvider {
    child: Option<Child>,
    /// Closing it (on Drop, or when the test process dies) makes the provider exit.
    stdin: Option<ChildStdin>,
    issuer: String,
    options: OidcOptions,
    /// The provider's stderr log lives here; deleted on drop.
    dir: TempDir,
}

impl OidcProvider {
    /// A fresh provider whose access tokens live `access_ttl_secs`; refresh tokens only with
    /// `offline_access` + `prompt=consent`.
    pub fn start(access_ttl_secs: u64) -> OidcProvider {
        OidcProvider::start_with(OidcOptions {
            access_ttl_secs,
            ..OidcOptions::default()
        })
    }

    pub fn start_with(options: OidcOptions) -> OidcProvider {
        let node = node_exe();
        let script = provider_script();
        let modules = oidc_modules();
        let dir = tempfile::Builder::new()
            .prefix("oidc-provider-test-")
            .tempdir()
            .expect("create temp dir for oidc-provider");
        let log_path = dir.path().join("provider.log");
        let log = File::create(&log_path).expect("create oidc-provider log");
        let mut child = Command::new(&node)
            .arg(&script)
            .current_dir(dir.path())
            .env("PORT", "0")
            .env("CLIENT_ID", &options.client_id)
            .env("ACCESS_TTL", options.access_ttl_secs.to_string())
            .env("REFRESH_TTL", options.refresh_ttl_secs.to_string())
            .env(
                "REFRESH_TOKENS",
                match options.refresh_policy {
                    RefreshPolicy::OfflineAccessWithConsent => "offline_access",
                    RefreshPolicy::Always => "always",
                },
            )
            .env("RESOURCE", options.resource.as_deref().unwrap_or_default())
            .env(
                "RESOURCE_FORMAT",
                match options.resource_format {
                    AccessTokenFormat::Jwt => "jwt",
                    AccessTokenFormat::Opaque => "opaque",
                },
            )
            .env(
                "RS_CLIENT_ID",
                options
                    .resource_server_client
                    .as_ref()
                    .map_or("", |(id, _)| id.as_str()),
            )
            .env(
                "RS_CLIENT_SECRET",
                options
                    .resource_server_client
                    .as_ref()
                    .map_or("", |(_, secret)| secret.as_str()),
            )
            .env("OIDC_MODULES", &modules)
            .env("EXIT_WITH_STDIN", "1")
            .env("NODE_ENV", "test")
            .env_remove("NODE_OPTIONS")
            .env_remove("DEBUG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {} {}: {e}", node.display(), script.display()));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("provider stdout");

        // The READY line is read on a thread so the wait is bounded; the thread then drains
        // stdout until the provider exits.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            for line in lines.by_ref() {
                let Ok(line) = line else { break };
                if let Some(issuer) = line.strip_prefix("READY ") {
                    let _ = tx.send(issuer.trim().to_string());
                    break;
                }
            }
            for _ in lines {}
        });

        let mut provider = OidcProvider {
            child: Some(child),
            stdin,
            issuer: String::new(),
            options,
            dir,
        };
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(issuer) => {
                    provider.issuer = issuer;
                    return provider;
                }
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                    if let Some(Ok(Some(status))) = provider.child.as_mut().map(Child::try_wait) {
                        provider.child = None;
                        panic!(
                            "oidc-provider exited during startup ({status}); log:\n{}",
                            provider.log()
                        );
                    }
                }
                Err(_) => {
                    provider.stop();
                    panic!(
                        "oidc-provider printed no READY line within {STARTUP_TIMEOUT:?}; log:\n{}",
                        provider.log()
                    );
                }
            }
        }
    }

    /// `http://127.0.0.1:{port}` (no trailing slash), as in discovery and in the `iss`
    /// authorization response parameter.
    pub fn issuer(&self) -> String {
        self.issuer.clone()
    }

    pub fn port(&self) -> u16 {
        Url::parse(&self.issuer)
            .expect("issuer is a URL")
            .port()
            .expect("issuer has a port")
    }

    pub fn client_id(&self) -> String {
        self.options.client_id.clone()
    }

    pub fn options(&self) -> &OidcOptions {
        &self.options
    }

    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer)
    }

    /// The provider's fixed endpoint paths (tests should prefer discovery, as the app does).
    pub fn authorization_endpoint(&self) -> String {
        format!("{}/auth", self.issuer)
    }
    pub fn token_endpoint(&self) -> String {
        format!("{}/token", self.issuer)
    }
    pub fn userinfo_endpoint(&self) -> String {
        format!("{}/me", self.issuer)
    }
    pub fn revocation_endpoint(&self) -> String {
        format!("{}/token/revocation", self.issuer)
    }

    /// Logs `user` in through the scripted browser (authorization code + PKCE, with
    /// `resource` = [`OidcOptions::resource`]) and returns the access token the provider issues
    /// for that API: what a real client of samay-server holds.
    pub async fn resource_access_token(&self, http: &reqwest::Client, user: &str) -> String {
        let resource = self
            .options
            .resource
            .clone()
            .expect("OidcOptions::resource is set");
        let verifier = URL_SAFE_NO_PAD.encode(rand_bytes());
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        // Nothing listens there: the script records the redirect instead of delivering it.
        let redirect_uri = "http://127.0.0.1:9/callback";
        let mut url = Url::parse(&self.authorization_endpoint()).expect("authorization URL");
        url.query_pairs_mut()
            .append_pair("client_id", &self.options.client_id)
            .append_pair("response_type", "code")
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("scope", "openid samay")
            .append_pair("state", "resource-token")
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256")
            .append_pair("resource", &resource);
        let player = PlayUser {
            user: user.to_string(),
            deliver: false,
            ..PlayUser::default()
        };
        let url = url.to_string();
        let outcome = tokio::task::spawn_blocking(move || player.run(&url))
            .await
            .expect("play-user task");
        let params = outcome.redirect_params();
        let code = params
            .get("code")
            .unwrap_or_else(|| panic!("no code in the redirect; log:\n{}", outcome.log));
        let response = http
            .post(self.token_endpoint())
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code.as_str()),
                ("redirect_uri", redirect_uri),
                ("client_id", self.options.client_id.as_str()),
                ("code_verifier", verifier.as_str()),
                ("resource", resource.as_str()),
            ])
            .send()
            .await
            .expect("token request");
        let status = response.status();
        let body: serde_json::Value = response.json().await.expect("token response JSON");
        assert!(
            status.is_success(),
            "token endpoint answered {status}: {body}; provider log:\n{}",
            self.log()
        );
        body["access_token"]
            .as_str()
            .expect("an access_token")
            .to_string()
    }

    /// Revokes `token` (RFC 7009) as the public client that holds it.
    pub async fn revoke(&self, http: &reqwest::Client, token: &str) {
        let response = http
            .post(self.revocation_endpoint())
            .form(&[
                ("token", token),
                ("token_type_hint", "access_token"),
                ("client_id", self.options.client_id.as_str()),
            ])
            .send()
            .await
            .expect("revocation request");
        assert!(
            response.status().is_success(),
            "revocation answered {}; provider log:\n{}",
            response.status(),
            self.log()
        );
    }

    /// Everything the provider wrote to stderr: oidc-provider's startup warnings and one line
    /// per `grant.error`, `authorization.error`, `server_error`, `grant.revoked`, ...
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("provider.log"))
            .unwrap_or_else(|e| format!("(no log: {e})"))
    }

    /// Kills the provider: every grant, session and token is forgotten (in-memory store).
    pub fn stop(&mut self) {
        self.stdin.take();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the scripted user does on the provider's first page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlayAction {
    /// Log in and consent.
    Approve,
    /// Press "cancel": the app receives `error=access_denied`.
    Deny,
    /// Look at the page and walk away: nothing ever reaches the app.
    Ignore,
}

/// The knobs of crates/samay-testkit/browser/play-user.sh.
#[derive(Clone, Debug)]
pub struct PlayUser {
    pub user: String,
    pub action: PlayAction,
    /// Appended to, one line per step (no codes or tokens).
    pub log: Option<PathBuf>,
    /// The final redirect URL (with the code) is written here.
    pub redirect_file: Option<PathBuf>,
    /// GET the final redirect (the app's loopback listener). false: only record it.
    pub deliver: bool,
    /// Seconds to wait before starting, like a user who takes a moment.
    pub delay_secs: u64,
    /// The device flow (RFC 8628): the URL is the verification page and this the code the app
    /// showed; the script types it in and confirms (or aborts) before logging in.
    pub user_code: Option<String>,
}

impl Default for PlayUser {
    fn default() -> Self {
        PlayUser {
            user: "alice".to_string(),
            action: PlayAction::Approve,
            log: None,
            redirect_file: None,
            deliver: true,
            delay_secs: 0,
            user_code: None,
        }
    }
}

impl PlayUser {
    /// The environment for a process that will run the script: `BROWSER` plus every knob,
    /// set explicitly so nothing leaks in from the test's own environment.
    pub fn env(&self) -> Vec<(String, String)> {
        let path = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        };
        vec![
            (
                "BROWSER".to_string(),
                play_user_browser().display().to_string(),
            ),
            ("PLAY_USER".to_string(), self.user.clone()),
            (
                "PLAY_ACTION".to_string(),
                match self.action {
                    PlayAction::Approve => "approve",
                    PlayAction::Deny => "deny",
                    PlayAction::Ignore => "ignore",
                }
                .to_string(),
            ),
            ("PLAY_LOG".to_string(), path(&self.log)),
            ("PLAY_REDIRECT_FILE".to_string(), path(&self.redirect_file)),
            (
                "PLAY_DELIVER".to_string(),
                if self.deliver { "1" } else { "0" }.to_string(),
            ),
            ("PLAY_DELAY".to_string(), self.delay_secs.to_string()),
            (
                "PLAY_USER_CODE".to_string(),
                self.user_code.clone().unwrap_or_default(),
            ),
            ("PLAY_MAX_TIME".to_string(), "10".to_string()),
        ]
    }

    /// Sets `BROWSER` and the knobs on `cmd` (e.g. the app under test).
    pub fn apply<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        cmd.envs(self.env())
    }

    /// Runs the script on `url` in the foreground, bounded, as a browser would be.
    pub fn run(&self, url: &str) -> PlayOutcome {
        let dir = tempfile::Builder::new()
            .prefix("play-user-")
            .tempdir()
            .expect("temp dir for play-user");
        let mut me = self.clone();
        let log = me
            .log
            .get_or_insert_with(|| dir.path().join("play.log"))
            .clone();
        let redirect_file = me
            .redirect_file
            .get_or_insert_with(|| dir.path().join("redirect"))
            .clone();
        let script = play_user_browser();
        let mut cmd = Command::new(&script);
        me.apply(&mut cmd)
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", script.display()));
        let deadline = Instant::now() + PLAY_TIMEOUT + Duration::from_secs(self.delay_secs);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for play-user") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "play-user.sh did not finish within {PLAY_TIMEOUT:?}; its log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        PlayOutcome {
            success: status.success(),
            redirect: std::fs::read_to_string(&redirect_file)
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty()),
            log: std::fs::read_to_string(&log).unwrap_or_default(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct PlayOutcome {
    /// The script's exit status: the redirect was reached (and delivered, if asked).
    pub success: bool,
    /// The provider's final redirect (to the app), when it got that far.
    pub redirect: Option<String>,
    /// What the script did, step by step.
    pub log: String,
}

impl PlayOutcome {
    /// The query parameters of the final redirect (`code`, `state`, `iss` or `error`, ...).
    pub fn redirect_params(&self) -> HashMap<String, String> {
        let redirect = self
            .redirect
            .as_deref()
            .unwrap_or_else(|| panic!("play-user.sh reached no redirect; its log:\n{}", self.log));
        query_params(redirect)
    }
}

/// Acts as the user for `url` without the app: logs in as alice, consents, and returns the
/// provider's final redirect (with `code`, `state` and `iss`) without delivering it anywhere.
pub fn authorize_with_script(url: &str) -> Url {
    let outcome = PlayUser {
        deliver: false,
        ..PlayUser::default()
    }
    .run(url);
    assert!(
        outcome.success,
        "play-user.sh failed on {}; its log:\n{}",
        redact(url),
        outcome.log
    );
    let redirect = outcome.redirect.as_deref().expect("a final redirect");
    Url::parse(redirect).unwrap_or_else(|e| panic!("redirect is not a URL ({e})"))
}

/// The query parameters of a URL (the last value wins).
pub fn query_params(url: &str) -> HashMap<String, String> {
    let url = Url::parse(url).unwrap_or_else(|e| panic!("not a URL ({e}): {}", redact(url)));
    url.query_pairs().into_owned().collect()
}

/// A URL without its query string, for messages.
pub fn redact(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

/// crates/samay-testkit/browser/play-user.sh: the `$BROWSER` that plays the user.
pub fn play_user_browser() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser/play-user.sh");
    assert!(script.is_file(), "{} is missing", script.display());
    script
}

/// peers/oidc/provider.mjs.
pub fn provider_script() -> PathBuf {
    let script = crate::repo_root().join("peers/oidc/provider.mjs");
    assert!(script.is_file(), "{} is missing", script.display());
    script
}

/// `.peers/oidc/node_modules` under the repo root, installed by scripts/install-peers.sh, and
/// installed from the lock file the repo pins now.
pub fn oidc_modules() -> PathBuf {
    let root = crate::repo_root();
    let installed = root.join(".peers/oidc");
    let modules = installed.join("node_modules");
    if !modules.join("oidc-provider/package.json").is_file() {
        panic!(
            "{} has no oidc-provider: run scripts/install-peers.sh to install the test peers",
            modules.display()
        );
    }
    let pinned = std::fs::read(root.join("peers/oidc/package-lock.json"))
        .expect("read peers/oidc/package-lock.json");
    if std::fs::read(installed.join("package-lock.json")).ok() != Some(pinned) {
        panic!(
            "{} was installed from another peers/oidc/package-lock.json: run \
             scripts/install-peers.sh again",
            installed.display()
        );
    }
    modules
}

/// `node` from PATH (Node >= 20).
pub fn node_exe() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("node"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!("node is not on PATH: install Node.js >= 20, then run scripts/install-peers.sh")
        })
}

/// 32 random bytes (a PKCE verifier).
fn rand_bytes() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("system randomness");
    bytes
}
