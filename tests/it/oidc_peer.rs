//! Tests of the login test harness itself: the real OpenID provider (peers/oidc/provider.mjs)
//! and the scripted user (crates/samay-testkit/browser/play-user.sh), driven by a real OAuth client (the
//! `oauth2` crate) exactly as the app will drive them: discovery, PKCE S256 + state, a one-shot
//! loopback listener for the redirect, code exchange, userinfo, refresh token rotation and reuse
//! detection, revocation, a denied login, access token expiry, the redirect URI rules, and how
//! the `webbrowser` crate runs `$BROWSER`.
//!
//! Needs node and `scripts/install-peers.sh`; a missing peer fails the tests (never skips them).

use samay_testkit::oidc;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use oauth2::basic::{BasicClient, BasicErrorResponseType, BasicTokenResponse};
use oauth2::reqwest;
use oauth2::{
    AuthUrl, AuthorizationCode, ClientId, CsrfToken, EndpointNotSet, EndpointSet,
    PkceCodeChallenge, RedirectUrl, RefreshToken, RequestTokenError, Scope, TokenResponse,
    TokenUrl,
};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use oidc::{OidcOptions, OidcProvider, PlayAction, PlayUser, RefreshPolicy};

/// Every network wait in these tests is bounded by this (all peers are on loopback).
const WAIT: Duration = Duration::from_secs(20);

type Client = BasicClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointSet>;

#[derive(Debug, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    userinfo_endpoint: String,
    revocation_endpoint: String,
    code_challenge_methods_supported: Vec<String>,
    #[serde(default)]
    authorization_response_iss_parameter_supported: bool,
}

/// An HTTP client as the app must build it: never follows redirects (RFC 9700 §4.11.2), bounded.
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("build reqwest client")
}

async fn discover(provider: &OidcProvider, http: &reqwest::Client) -> Discovery {
    let response = http
        .get(provider.discovery_url())
        .send()
        .await
        .expect("GET discovery");
    assert_eq!(response.status(), 200, "discovery status");
    let discovery: Discovery = response.json().await.expect("discovery JSON");
    assert_eq!(discovery.issuer, provider.issuer());
    assert_eq!(discovery.code_challenge_methods_supported, ["S256"]);
    assert!(discovery.authorization_response_iss_parameter_supported);
    discovery
}

fn oauth_client(provider: &OidcProvider, discovery: &Discovery, redirect: &str) -> Client {
    BasicClient::new(ClientId::new(provider.client_id()))
        .set_auth_uri(AuthUrl::new(discovery.authorization_endpoint.clone()).expect("auth url"))
        .set_token_uri(TokenUrl::new(discovery.token_endpoint.clone()).expect("token url"))
        .set_redirect_uri(RedirectUrl::new(redirect.to_string()).expect("redirect url"))
}

/// A one-shot loopback listener like the app's: serves exactly one `/callback` (404 for anything
/// else), answers with a self-contained page, and hands back the query parameters.
struct CallbackListener {
    port: u16,
    task: tokio::task::JoinHandle<HashMap<String, String>>,
}

impl CallbackListener {
    async fn bind() -> CallbackListener {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback listener");
        let port = listener.local_addr().expect("listener addr").port();
        let task = tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.expect("accept callback");
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                let read = tokio::time::timeout(Duration::from_secs(5), async {
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                        let n = stream.read(&mut buf).await?;
                        if n == 0 {
                            break;
                        }
                        head.extend_from_slice(&buf[..n]);
                    }
                    Ok::<_, std::io::Error>(())
                })
                .await;
                if !matches!(read, Ok(Ok(()))) {
                    continue;
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let target = head.split(' ').nth(1).unwrap_or("").to_string();
                let (path, query) = target.split_once('?').unwrap_or((target.as_str(), ""));
                if !head.starts_with("GET ") || path != "/callback" {
                    let _ = stream
                        .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .await;
                    continue;
                }
                let page = "<!doctype html><title>Signed in</title><p>You can close this tab.";
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                    page.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
                return url::form_urlencoded::parse(query.as_bytes())
                    .into_owned()
                    .collect();
            }
        });
        CallbackListener { port, task }
    }

    fn redirect_uri(&self) -> String {
        format!("http://127.0.0.1:{}/callback", self.port)
    }

    async fn params(self, what: &str) -> HashMap<String, String> {
        tokio::time::timeout(WAIT, self.task)
            .await
            .unwrap_or_else(|_| panic!("{what}: no callback within {WAIT:?}"))
            .expect("listener task")
    }
}

/// Runs the scripted user on `url` off the async runtime (it is a blocking child process).
async fn play(user: PlayUser, url: String) -> oidc::PlayOutcome {
    tokio::task::spawn_blocking(move || user.run(&url))
        .await
        .expect("play-user task")
}

struct LoginRequest {
    scopes: &'static [&'static str],
    prompt_consent: bool,
    user: PlayUser,
}

impl Default for LoginRequest {
    fn default() -> Self {
        LoginRequest {
            scopes: &["openid", "offline_access", "profile", "email"],
            prompt_consent: true,
            user: PlayUser::default(),
        }
    }
}

/// The whole browser login as the app will do it; returns the client (bound to the redirect
/// URI that was used) and the token response.
async fn login(
    provider: &OidcProvider,
    http: &reqwest::Client,
    discovery: &Discovery,
    request: LoginRequest,
) -> (Client, BasicTokenResponse) {
    let listener = CallbackListener::bind().await;
    let client = oauth_client(provider, discovery, &listener.redirect_uri());
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let mut auth = client
        .authorize_url(CsrfToken::new_random)
        .set_pkce_challenge(challenge);
    for scope in request.scopes {
        auth = auth.add_scope(Scope::new(scope.to_string()));
    }
    if request.prompt_consent {
        auth = auth.add_extra_param("prompt", "consent");
    }
    let (url, state) = auth.url();

    let outcome = play(request.user, url.to_string()).await;
    assert!(outcome.success, "play-user.sh failed:\n{}", outcome.log);
    let params = listener.params("login").await;
    assert_eq!(
        params.get("state"),
        Some(state.secret()),
        "state round-trips"
    );
    assert_eq!(
        params.get("iss"),
        Some(&provider.issuer()),
        "RFC 9207 iss is the issuer"
    );
    assert!(!params.contains_key("error"), "login error: {params:?}");
    let code = params.get("code").expect("a code in the callback").clone();

    let token = client
        .exchange_code(AuthorizationCode::new(code))
        .set_pkce_verifier(verifier)
        .request_async(http)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "code exchange failed: {e:?}\nprovider log:\n{}",
                provider.log()
            )
        });
    (client, token)
}

async fn refresh(
    client: &Client,
    http: &reqwest::Client,
    refresh_token: &str,
) -> Result<BasicTokenResponse, BasicErrorResponseType> {
    match client
        .exchange_refresh_token(&RefreshToken::new(refresh_token.to_string()))
        .request_async(http)
        .await
    {
        Ok(token) => Ok(token),
        Err(RequestTokenError::ServerResponse(error)) => Err(error.error().clone()),
        Err(other) => panic!("refresh failed without an OAuth error: {other:?}"),
    }
}

fn refresh_token_of(token: &BasicTokenResponse) -> String {
    token
        .refresh_token()
        .expect("a refresh token in the token response")
        .secret()
        .clone()
}

async fn userinfo(
    http: &reqwest::Client,
    discovery: &Discovery,
    access_token: &str,
) -> (u16, serde_json::Value) {
    let response = http
        .get(&discovery.userinfo_endpoint)
        .bearer_auth(access_token)
        .send()
        .await
        .expect("GET userinfo");
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(serde_json::Value::Null);
    (status, body)
}

async fn revoke(
    http: &reqwest::Client,
    discovery: &Discovery,
    client_id: &str,
    token: &str,
    hint: &str,
) -> u16 {
    http.post(&discovery.revocation_endpoint)
        .form(&[
            ("token", token),
            ("token_type_hint", hint),
            ("client_id", client_id),
        ])
        .send()
        .await
        .expect("POST revocation")
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread")]
async fn real_client_logs_in_refreshes_with_rotation_and_trips_reuse_detection() {
    let provider = OidcProvider::start(3600);
    let http = http();
    let discovery = discover(&provider, &http).await;
    let (client, token) = login(&provider, &http, &discovery, LoginRequest::default()).await;

    let (status, me) = userinfo(&http, &discovery, token.access_token().secret()).await;
    assert_eq!(status, 200, "userinfo: {me}");
    assert_eq!(me["sub"], "alice");
    assert_eq!(me["preferred_username"], "alice");
    assert_eq!(me["email"], "alice@example.test");
    assert!(token.expires_in().is_some(), "expires_in is sent");

    // Rotation: every refresh answers a new refresh token (and a working access token).
    let first = refresh_token_of(&token);
    let second = refresh(&client, &http, &first)
        .await
        .expect("first refresh");
    let second_rt = refresh_token_of(&second);
    assert_ne!(second_rt, first, "refresh token rotated");
    let third = refresh(&client, &http, &second_rt)
        .await
        .expect("second refresh");
    let third_rt = refresh_token_of(&third);
    assert_ne!(third_rt, second_rt, "refresh token rotated again");
    let (status, _) = userinfo(&http, &discovery, third.access_token().secret()).await;
    assert_eq!(status, 200);

    // Reuse detection: the rotated-out token is refused, and the whole grant dies with it.
    assert_eq!(
        refresh(&client, &http, &first).await.err(),
        Some(BasicErrorResponseType::InvalidGrant),
        "reusing a rotated refresh token"
    );
    assert_eq!(
        refresh(&client, &http, &third_rt).await.err(),
        Some(BasicErrorResponseType::InvalidGrant),
        "the newest refresh token dies with the revoked grant"
    );
    let (status, _) = userinfo(&http, &discovery, third.access_token().secret()).await;
    assert_eq!(
        status, 401,
        "access tokens of the revoked grant are dead too"
    );
    let log = provider.log();
    assert!(log.contains("refresh token already used"), "log:\n{log}");
    assert!(log.contains("grant.revoked"), "log:\n{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn revoking_the_refresh_token_ends_the_grant() {
    let provider = OidcProvider::start(3600);
    let http = http();
    let discovery = discover(&provider, &http).await;
    let (client, token) = login(&provider, &http, &discovery, LoginRequest::default()).await;
    let rt = refresh_token_of(&token);

    let status = revoke(
        &http,
        &discovery,
        &provider.client_id(),
        &rt,
        "refresh_token",
    )
    .await;
    assert_eq!(status, 200, "RFC 7009 revocation answers 200");
    assert_eq!(
        refresh(&client, &http, &rt).await.err(),
        Some(BasicErrorResponseType::InvalidGrant)
    );
    // oidc-provider revokes the grant with a refresh token: its access tokens stop working.
    let (status, _) = userinfo(&http, &discovery, token.access_token().secret()).await;
    assert_eq!(
        status, 401,
        "access token after its refresh token was revoked"
    );
    // Revoking again (already gone) still answers 200, as RFC 7009 §2.2 says.
    let status = revoke(
        &http,
        &discovery,
        &provider.client_id(),
        &rt,
        "refresh_token",
    )
    .await;
    assert_eq!(status, 200);
}

/// oidc-provider revokes every token of the grant (access, refresh, codes) whichever token is
/// revoked: logging out with just the access token would end the refresh token as well.
#[tokio::test(flavor = "multi_thread")]
async fn revoking_the_access_token_also_ends_the_refresh_token() {
    let provider = OidcProvider::start(3600);
    let http = http();
    let discovery = discover(&provider, &http).await;
    let (client, token) = login(&provider, &http, &discovery, LoginRequest::default()).await;
    let at = token.access_token().secret().clone();
    let status = revoke(
        &http,
        &discovery,
        &provider.client_id(),
        &at,
        "access_token",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(userinfo(&http, &discovery, &at).await.0, 401);
    assert_eq!(
        refresh(&client, &http, &refresh_token_of(&token))
            .await
            .err(),
        Some(BasicErrorResponseType::InvalidGrant),
        "refresh after revoking the access token"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_denied_login_reaches_the_listener_as_access_denied() {
    let provider = OidcProvider::start(3600);
    let http = http();
    let discovery = discover(&provider, &http).await;
    let listener = CallbackListener::bind().await;
    let client = oauth_client(&provider, &discovery, &listener.redirect_uri());
    let (challenge, _verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, state) = client
        .authorize_url(CsrfToken::new_random)
        .add_scope(Scope::new("openid".into()))
        .set_pkce_challenge(challenge)
        .url();
    let outcome = play(
        PlayUser {
            action: PlayAction::Deny,
            ..PlayUser::default()
        },
        url.to_string(),
    )
    .await;
    assert!(outcome.success, "play-user.sh:\n{}", outcome.log);
    let params = listener.params("denied login").await;
    assert_eq!(
        params.get("error").map(String::as_str),
        Some("access_denied")
    );
    assert_eq!(params.get("state"), Some(state.secret()));
    assert_eq!(params.get("iss"), Some(&provider.issuer()));
    assert!(!params.contains_key("code"));
    assert!(
        outcome.log.contains("error=access_denied"),
        "{}",
        outcome.log
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn access_tokens_expire_after_their_ttl_and_refresh_brings_a_new_one() {
    // The provider's own clock decides, so this test waits for real: at most ~4 s.
    let provider = OidcProvider::start(3);
    let http = http();
    let discovery = discover(&provider, &http).await;
    let (client, token) = login(&provider, &http, &discovery, LoginRequest::default()).await;
    let issued = Instant::now();
    assert_eq!(token.expires_in(), Some(Duration::from_secs(3)));
    let at = token.access_token().secret().clone();
    assert_eq!(userinfo(&http, &discovery, &at).await.0, 200);

    let deadline = issued + Duration::from_secs(5);
    let expired_after = loop {
        let (status, body) = userinfo(&http, &discovery, &at).await;
        if status == 401 {
            assert_eq!(body["error"], "invalid_token", "{body}");
            break issued.elapsed();
        }
        assert_eq!(status, 200, "{body}");
        assert!(
            Instant::now() < deadline,
            "access token still accepted 5 s after a 3 s TTL"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("access token (TTL 3 s) refused after {expired_after:?}");
    assert!(
        expired_after >= Duration::from_millis(1500),
        "expired too early: {expired_after:?}"
    );

    let fresh = refresh(&client, &http, &refresh_token_of(&token))
        .await
        .expect("refresh after expiry");
    assert_eq!(
        userinfo(&http, &discovery, fresh.access_token().secret())
            .await
            .0,
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn refresh_tokens_need_offline_access_and_prompt_consent_unless_policy_always() {
    let http = http();

    let spec = OidcProvider::start(3600);
    let discovery = discover(&spec, &http).await;
    let (_, without_prompt) = login(
        &spec,
        &http,
        &discovery,
        LoginRequest {
            prompt_consent: false,
            ..LoginRequest::default()
        },
    )
    .await;
    assert!(
        without_prompt.refresh_token().is_none(),
        "offline_access without prompt=consent is dropped"
    );
    let (_, without_scope) = login(
        &spec,
        &http,
        &discovery,
        LoginRequest {
            scopes: &["openid", "email"],
            ..LoginRequest::default()
        },
    )
    .await;
    assert!(without_scope.refresh_token().is_none());
    let (_, both) = login(&spec, &http, &discovery, LoginRequest::default()).await;
    assert!(both.refresh_token().is_some());

    let always = OidcProvider::start_with(OidcOptions {
        refresh_policy: RefreshPolicy::Always,
        ..OidcOptions::default()
    });
    let discovery = discover(&always, &http).await;
    let (client, token) = login(
        &always,
        &http,
        &discovery,
        LoginRequest {
            scopes: &["openid"],
            prompt_consent: false,
            ..LoginRequest::default()
        },
    )
    .await;
    let rt = refresh_token_of(&token);
    let next = refresh(&client, &http, &rt).await.expect("refresh");
    assert_ne!(refresh_token_of(&next), rt, "rotation also under Always");
}

/// The first page of an authorization request for `redirect_uri`, played by the script without
/// delivering the redirect: Ok(final redirect) or Err(the script's log).
async fn authorize_to(
    provider: &OidcProvider,
    redirect_uri: &str,
    pkce: Option<&str>,
) -> Result<String, String> {
    let mut url = url::Url::parse(&provider.authorization_endpoint()).expect("auth endpoint");
    url.query_pairs_mut()
        .append_pair("client_id", &provider.client_id())
        .append_pair("response_type", "code")
        .append_pair("scope", "openid")
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("state", "s1");
    match pkce {
        Some("S256") => {
            let (challenge, _) = PkceCodeChallenge::new_random_sha256();
            url.query_pairs_mut()
                .append_pair("code_challenge", challenge.as_str())
                .append_pair("code_challenge_method", "S256");
        }
        Some(method) => {
            url.query_pairs_mut()
                .append_pair("code_challenge", &"a".repeat(43))
                .append_pair("code_challenge_method", method);
        }
        None => {}
    }
    let outcome = play(
        PlayUser {
            deliver: false,
            ..PlayUser::default()
        },
        url.to_string(),
    )
    .await;
    match (outcome.success, outcome.redirect) {
        (true, Some(redirect)) => Ok(redirect),
        _ => Err(outcome.log),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn redirect_uri_and_pkce_rules() {
    let provider = OidcProvider::start(3600);

    // Loopback on any port (RFC 8252 §7.3), and both private-use forms, are accepted.
    for redirect in [
        "http://127.0.0.1:1234/callback".to_string(),
        format!("http://127.0.0.1:{}/callback", oidc_free_port()),
        "app.samay:/callback".to_string(),
        "samay://callback".to_string(),
    ] {
        let got = authorize_to(&provider, &redirect, Some("S256"))
            .await
            .unwrap_or_else(|log| panic!("{redirect} refused:\n{log}"));
        assert!(
            got.starts_with(&format!("{redirect}?code=")),
            "{redirect}: got {}",
            oidc::redact(&got)
        );
        let params = oidc::query_params(&got);
        assert_eq!(params.get("state").map(String::as_str), Some("s1"));
        assert_eq!(params.get("iss"), Some(&provider.issuer()));
    }

    // Not registered: refused on the provider's own error page (never redirected).
    for redirect in [
        "http://localhost:1234/callback",
        "http://[::1]:1234/callback",
        "http://127.0.0.1:1234/other",
        "http://127.0.0.1:1234/callback/",
        "https://127.0.0.1:1234/callback",
        "samay:/callback",
    ] {
        let log = authorize_to(&provider, redirect, Some("S256"))
            .await
            .expect_err(redirect);
        assert!(
            log.contains("invalid_redirect_uri"),
            "{redirect}: log:\n{log}"
        );
    }

    // PKCE: required, S256 only; refused with an error redirected to the client.
    for (pkce, description) in [
        (None, "requires PKCE"),
        (Some("plain"), "code_challenge_method"),
    ] {
        let got = authorize_to(&provider, "http://127.0.0.1:1234/callback", pkce)
            .await
            .unwrap_or_else(|log| panic!("{pkce:?}: no redirect:\n{log}"));
        let params = oidc::query_params(&got);
        assert_eq!(
            params.get("error").map(String::as_str),
            Some("invalid_request"),
            "{pkce:?}: {params:?}"
        );
        assert!(
            params
                .get("error_description")
                .is_some_and(|d| d.contains(description)),
            "{pkce:?}: {params:?}"
        );
        assert!(!params.contains_key("code"));
    }
}

fn oidc_free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// `authorize_with_script` acts as the user for a test that plays the app by itself.
#[tokio::test(flavor = "multi_thread")]
async fn authorize_with_script_returns_the_code_redirect() {
    let provider = OidcProvider::start(3600);
    let http = http();
    let discovery = discover(&provider, &http).await;
    let redirect_uri = "http://127.0.0.1:9/callback";
    let client = oauth_client(&provider, &discovery, redirect_uri);
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, state) = client
        .authorize_url(CsrfToken::new_random)
        .add_scope(Scope::new("openid".into()))
        .set_pkce_challenge(challenge)
        .url();
    let url = url.to_string();
    let redirect = tokio::task::spawn_blocking(move || oidc::authorize_with_script(&url))
        .await
        .expect("authorize task");
    let params: HashMap<_, _> = redirect.query_pairs().into_owned().collect();
    assert_eq!(params.get("state"), Some(state.secret()));
    let token = client
        .exchange_code(AuthorizationCode::new(params["code"].clone()))
        .set_pkce_verifier(verifier)
        .request_async(&http)
        .await
        .expect("exchange");
    let (status, me) = userinfo(&http, &discovery, token.access_token().secret()).await;
    assert_eq!((status, me["sub"].as_str()), (200, Some("alice")));
}

/// How the app will open the browser: `webbrowser::open` with `$BROWSER` = play-user.sh. It
/// spawns the script in the background and returns at once, without waiting for it or looking
/// at its exit status. Runs `webbrowser_child` in a child process so `$BROWSER` is never set in
/// this test process.
#[tokio::test(flavor = "multi_thread")]
async fn webbrowser_runs_the_browser_script_in_the_background() {
    let provider = OidcProvider::start(3600);
    let http = http();
    let discovery = discover(&provider, &http).await;
    let listener = CallbackListener::bind().await;
    let client = oauth_client(&provider, &discovery, &listener.redirect_uri());
    let (challenge, _verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, state) = client
        .authorize_url(CsrfToken::new_random)
        .add_scope(Scope::new("openid".into()))
        .set_pkce_challenge(challenge)
        .url();
    let dir = tempfile::tempdir().expect("temp dir");
    let play_log = dir.path().join("play.log");
    let user = PlayUser {
        user: "bob".into(),
        log: Some(play_log.clone()),
        delay_secs: 2,
        ..PlayUser::default()
    };

    let run_child = |envs: Vec<(String, String)>| {
        let url = url.to_string();
        async move {
            let mut cmd = tokio::process::Command::new(std::env::current_exe().expect("exe"));
            cmd.args([
                "--exact",
                &samay_testkit::harness_name(module_path!(), "webbrowser_child"),
            ])
            .args(["--ignored", "--nocapture"])
            .envs(envs)
            .env("OIDC_WEBBROWSER_CHILD_URL", url)
            .kill_on_drop(true);
            let output = tokio::time::timeout(WAIT, cmd.output())
                .await
                .expect("child test finished in time")
                .expect("run child test");
            let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
            assert!(output.status.success(), "child test failed:\n{stdout}");
            stdout
        }
    };

    let stdout = run_child(user.env()).await;
    assert!(stdout.contains("OPEN_RESULT=ok"), "{stdout}");
    let elapsed_ms: u64 = stdout
        .split("OPEN_ELAPSED_MS=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no OPEN_ELAPSED_MS in:\n{stdout}"));
    assert!(
        elapsed_ms < 1000,
        "webbrowser::open took {elapsed_ms} ms: it waited for the script"
    );
    assert!(
        !listener.task.is_finished(),
        "the callback arrived before the (2 s delayed) script could have run"
    );
    // The orphaned script still finishes the login after the child process exited.
    let params = listener.params("webbrowser-launched script").await;
    assert_eq!(params.get("state"), Some(state.secret()));
    assert!(params.contains_key("code"));
    let log = std::fs::read_to_string(&play_log).expect("play log");
    assert!(log.contains("user=bob"), "{log}");
    assert!(
        !log.contains("code="),
        "the play log never holds a code:\n{log}"
    );

    // A "browser" that fails at once is still a success for webbrowser: it cannot tell.
    let stdout = run_child(vec![("BROWSER".into(), "/bin/false".into())]).await;
    assert!(stdout.contains("OPEN_RESULT=ok"), "{stdout}");
}

/// Only meaningful as the child process of
/// `webbrowser_runs_the_browser_script_in_the_background`, which sets its environment.
#[test]
#[ignore = "run as a child process by webbrowser_runs_the_browser_script_in_the_background"]
fn webbrowser_child() {
    let Ok(url) = std::env::var("OIDC_WEBBROWSER_CHILD_URL") else {
        println!("not a child run: nothing to do");
        return;
    };
    let started = Instant::now();
    let result = webbrowser::open(&url);
    println!(
        "OPEN_RESULT={} OPEN_ELAPSED_MS={}",
        match &result {
            Ok(()) => "ok".to_string(),
            Err(e) => format!("err:{e}"),
        },
        started.elapsed().as_millis()
    );
}
