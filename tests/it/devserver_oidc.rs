//! The dev server as an OpenID provider, driven by the `oauth2` crate as aw-sync-samay's login
//! drives a real provider: PKCE S256 code flow (auto-approved and through the sign-in form),
//! redirect URI rules, single-use codes, refresh rotation with reuse detection, expiry on the
//! injectable clock, revocation, and the batch endpoint accepting what the provider issued —
//! or what another provider issued, through `external_issuer`.

use std::collections::HashMap;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use oauth2::basic::{BasicClient, BasicErrorResponseType, BasicTokenResponse};
use oauth2::{
    AuthUrl, AuthorizationCode, ClientId, CsrfToken, EndpointNotSet, EndpointSet,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken, RequestTokenError, Scope,
    TokenResponse, TokenUrl,
};
use reqwest::StatusCode;
use samay_server::{self as devserver, DevServer, DevServerConfig, OidcConfig, DEV_CLIENT_ID};
use serde_json::{json, Value};
use tempfile::TempDir;
use url::Url;
use uuid::Uuid;

type Client = BasicClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointSet>;

const REDIRECT: &str = "http://127.0.0.1:53682/callback";
const STATIC_TOKEN: &str = "static-test-token";

struct Rig {
    server: DevServer,
    _dir: TempDir,
}

async fn start(oidc: OidcConfig) -> Rig {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = devserver::spawn_with(
        DevServerConfig {
            db_path: dir.path().join("dev.sqlite"),
            tokens: vec![STATIC_TOKEN.into()],
            ..Default::default()
        },
        oidc,
    )
    .await
    .expect("dev server starts");
    Rig { server, _dir: dir }
}

async fn start_auto(user: &str) -> Rig {
    start(OidcConfig {
        auto_approve: Some(user.into()),
        ..Default::default()
    })
    .await
}

/// The HTTP client of the login: never follows redirects (a token endpoint must not redirect,
/// and the authorize redirect is what the test reads).
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("http client")
}

fn client(server: &DevServer, redirect: &str) -> Client {
    let base = server.base_url();
    BasicClient::new(ClientId::new(DEV_CLIENT_ID.into()))
        .set_auth_uri(AuthUrl::new(format!("{base}/oauth/authorize")).unwrap())
        .set_token_uri(TokenUrl::new(format!("{base}/oauth/token")).unwrap())
        .set_redirect_uri(RedirectUrl::new(redirect.into()).unwrap())
}

/// An authorization request as the login builds it.
fn authorize_url(client: &Client, login_hint: Option<&str>) -> (Url, CsrfToken, PkceCodeVerifier) {
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let mut request = client
        .authorize_url(CsrfToken::new_random)
        .set_pkce_challenge(challenge)
        .add_scope(Scope::new("openid".into()))
        .add_scope(Scope::new("profile".into()))
        .add_scope(Scope::new("offline_access".into()));
    if let Some(hint) = login_hint {
        request = request.add_extra_param("login_hint", hint);
    }
    let (url, state) = request.url();
    (url, state, verifier)
}

fn query(location: &str) -> HashMap<String, String> {
    Url::parse(location)
        .expect("Location is a URL")
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// GET the authorize URL; asserts a 303 and returns its Location.
async fn expect_redirect(url: &str) -> String {
    let response = http().get(url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER, "{url}");
    response.headers()[reqwest::header::LOCATION]
        .to_str()
        .unwrap()
        .to_string()
}

/// GET the authorize URL; asserts an error page (400, HTML, no Location).
async fn expect_error_page(url: &str) -> String {
    let response = http().get(url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{url}");
    assert!(
        response.headers().get(reqwest::header::LOCATION).is_none(),
        "an error must never redirect: {url}"
    );
    response.text().await.unwrap()
}

/// Auto-approved authorization: the code and the verifier that redeems it.
async fn auto_code(client: &Client, hint: Option<&str>) -> (String, PkceCodeVerifier) {
    let (url, state, verifier) = authorize_url(client, hint);
    let location = expect_redirect(url.as_str()).await;
    let q = query(&location);
    assert_eq!(q.get("state"), Some(state.secret()));
    (q["code"].clone(), verifier)
}

/// The whole login: authorize (auto-approved) and exchange the code.
async fn login(server: &DevServer, hint: Option<&str>) -> BasicTokenResponse {
    let client = client(server, REDIRECT);
    let (code, verifier) = auto_code(&client, hint).await;
    client
        .exchange_code(AuthorizationCode::new(code))
        .set_pkce_verifier(verifier)
        .request_async(&http())
        .await
        .expect("code exchange")
}

async fn refresh(server: &DevServer, token: &RefreshToken) -> Result<BasicTokenResponse, String> {
    match client(server, REDIRECT)
        .exchange_refresh_token(token)
        .request_async(&http())
        .await
    {
        Ok(tokens) => Ok(tokens),
        Err(RequestTokenError::ServerResponse(r)) => Err(r.error().to_string()),
        Err(other) => panic!("refresh failed outside the protocol: {other:?}"),
    }
}

fn assert_invalid_grant<T: std::fmt::Debug>(
    result: Result<T, RequestTokenError<impl std::error::Error, oauth2::basic::BasicErrorResponse>>,
) {
    match result {
        Err(RequestTokenError::ServerResponse(r)) => {
            assert_eq!(*r.error(), BasicErrorResponseType::InvalidGrant, "{r:?}")
        }
        other => panic!("expected invalid_grant, got {other:?}"),
    }
}

/// POSTs a one-event batch with `token`; returns the status.
async fn ingest(server: &DevServer, token: &str) -> StatusCode {
    let body = json!({
        "batch_id": Uuid::new_v4(),
        "device_id": Uuid::new_v4(),
        "hostname": "host",
        "buckets": {"b": {"type": "t", "client": "c", "hostname": "host", "created": null}},
        "events": [{"bucket_id": "b", "event_id": 1, "hash": "h", "timestamp": "2024-05-01T10:00:00Z", "duration": 1.0, "data": {}}],
    });
    http()
        .post(format!("{}/v1/events/batch", server.base_url()))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
        .status()
}

async fn userinfo(server: &DevServer, token: &str) -> (StatusCode, Value) {
    let response = http()
        .get(format!("{}/oauth/userinfo", server.base_url()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = response.status();
    if status == StatusCode::UNAUTHORIZED {
        assert!(
            response
                .headers()
                .get(reqwest::header::WWW_AUTHENTICATE)
                .is_some(),
            "401 without WWW-Authenticate"
        );
    }
    (status, response.json().await.unwrap_or(Value::Null))
}

/// RFC 7009 revocation (by hand: the oauth2 crate refuses a non-https revocation URL).
async fn revoke(server: &DevServer, token: &str, hint: &str) -> StatusCode {
    http()
        .post(format!("{}/oauth/revoke", server.base_url()))
        .form(&[
            ("token", token),
            ("token_type_hint", hint),
            ("client_id", DEV_CLIENT_ID),
        ])
        .send()
        .await
        .unwrap()
        .status()
}

fn access(tokens: &BasicTokenResponse) -> &str {
    tokens.access_token().secret()
}

fn refresh_of(tokens: &BasicTokenResponse) -> RefreshToken {
    tokens.refresh_token().expect("a refresh token").clone()
}

#[tokio::test]
async fn discovery_names_the_endpoints_pkce_s256_and_no_client_auth() {
    let rig = start(OidcConfig::default()).await;
    let base = rig.server.base_url();
    let doc: Value = http()
        .get(format!("{base}/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["issuer"], base.as_str());
    assert_eq!(rig.server.issuer(), base);
    for (key, path) in [
        ("authorization_endpoint", "/oauth/authorize"),
        ("token_endpoint", "/oauth/token"),
        ("userinfo_endpoint", "/oauth/userinfo"),
        ("revocation_endpoint", "/oauth/revoke"),
    ] {
        assert_eq!(doc[key], format!("{base}{path}"), "{key}");
    }
    assert_eq!(doc["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(doc["response_types_supported"], json!(["code"]));
    assert_eq!(
        doc["token_endpoint_auth_methods_supported"],
        json!(["none"])
    );
    assert_eq!(
        doc["grant_types_supported"],
        json!(["authorization_code", "refresh_token"])
    );
    assert_eq!(doc["authorization_response_iss_parameter_supported"], true);
    for scope in ["openid", "profile", "email", "offline_access"] {
        assert!(
            doc["scopes_supported"]
                .as_array()
                .unwrap()
                .contains(&json!(scope)),
            "{scope}"
        );
    }
}

#[tokio::test]
async fn auto_approved_code_flow_gives_tokens_that_ingest_and_userinfo_take_as_the_subject() {
    let rig = start_auto("dev-user").await;
    let client = client(&rig.server, REDIRECT);
    let (url, state, verifier) = authorize_url(&client, Some("alice"));
    let location = expect_redirect(url.as_str()).await;
    assert!(
        location.starts_with("http://127.0.0.1:53682/callback?"),
        "{location}"
    );
    let q = query(&location);
    assert_eq!(q.get("state"), Some(state.secret()));
    assert_eq!(q.get("iss"), Some(&rig.server.issuer()), "RFC 9207 iss");
    let tokens = client
        .exchange_code(AuthorizationCode::new(q["code"].clone()))
        .set_pkce_verifier(verifier)
        .request_async(&http())
        .await
        .expect("code exchange");
    assert!(tokens.refresh_token().is_some());
    assert_eq!(tokens.expires_in(), Some(Duration::from_secs(3600)));

    let (status, info) = userinfo(&rig.server, access(&tokens)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        info["sub"], "alice",
        "login_hint names the auto-approved user"
    );
    assert_eq!(info["preferred_username"], "alice");
    assert!(info["email"].as_str().unwrap().starts_with("alice@"));

    assert_eq!(ingest(&rig.server, access(&tokens)).await, StatusCode::OK);
    let stored = rig.server.stored_events(None, None).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0].user, "alice",
        "events are keyed by the token's subject"
    );

    // Without a login_hint the configured user signs in; static tokens still work beside.
    let tokens = login(&rig.server, None).await;
    assert_eq!(
        userinfo(&rig.server, access(&tokens)).await.1["sub"],
        "dev-user"
    );
    assert_eq!(ingest(&rig.server, STATIC_TOKEN).await, StatusCode::OK);
    assert_eq!(
        ingest(&rig.server, "made-up").await,
        StatusCode::UNAUTHORIZED
    );

    let counters = rig.server.oauth_counters().await.unwrap();
    assert_eq!((counters.codes_issued, counters.codes_redeemed), (2, 2));
    assert_eq!(counters.grants_active, 2);
}

#[tokio::test]
async fn sign_in_form_approves_or_denies_and_the_token_answer_has_an_hs256_id_token() {
    let rig = start(OidcConfig::default()).await;
    let client = client(&rig.server, REDIRECT);
    let (url, state, verifier) = authorize_url(&client, None);

    // The page is a form; nothing redirects before the user answers.
    let page = http().get(url.as_str()).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(page.headers()["cache-control"], "no-store");
    let html = page.text().await.unwrap();
    assert!(html.contains("<form method=\"post\" action=\"/oauth/authorize\""));
    assert!(html.contains("name=\"password\""));

    // Post what the page's hidden fields carry (the authorization request) plus the answer.
    let mut form: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let authorize = format!("{}/oauth/authorize", rig.server.base_url());

    let mut empty_password = form.clone();
    empty_password.push(("username".into(), "bob".into()));
    let again = http()
        .post(&authorize)
        .form(&empty_password)
        .send()
        .await
        .unwrap();
    assert_eq!(
        again.status(),
        StatusCode::BAD_REQUEST,
        "a password is required"
    );
    assert!(again.headers().get("location").is_none());

    let mut deny = form.clone();
    deny.push(("action".into(), "deny".into()));
    let denied = http().post(&authorize).form(&deny).send().await.unwrap();
    assert_eq!(denied.status(), StatusCode::SEE_OTHER);
    let q = query(denied.headers()["location"].to_str().unwrap());
    assert_eq!(q.get("error").map(String::as_str), Some("access_denied"));
    assert_eq!(q.get("state"), Some(state.secret()));
    assert_eq!(q.get("iss"), Some(&rig.server.issuer()));
    assert!(!q.contains_key("code"));

    form.extend([
        ("username".to_string(), "bob".to_string()),
        ("password".to_string(), "anything".to_string()),
        ("action".to_string(), "approve".to_string()),
    ]);
    let approved = http().post(&authorize).form(&form).send().await.unwrap();
    assert_eq!(approved.status(), StatusCode::SEE_OTHER);
    let q = query(approved.headers()["location"].to_str().unwrap());
    assert_eq!(q.get("state"), Some(state.secret()));
    assert_eq!(q.get("iss"), Some(&rig.server.issuer()));

    // The raw token answer, as RFC 6749 §5.1 and OpenID Connect Core §3.1.3.3 shape it.
    let answer = http()
        .post(format!("{}/oauth/token", rig.server.base_url()))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", q["code"].as_str()),
            ("redirect_uri", REDIRECT),
            ("client_id", DEV_CLIENT_ID),
            ("code_verifier", verifier.secret().as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.headers()["cache-control"], "no-store");
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "openid profile offline_access");
    let parts: Vec<&str> = body["id_token"].as_str().unwrap().split('.').collect();
    assert_eq!(parts.len(), 3);
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(header["alg"], "HS256");
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(claims["iss"], rig.server.issuer());
    assert_eq!(claims["sub"], "bob");
    assert_eq!(claims["aud"], DEV_CLIENT_ID);
    assert_eq!(claims["preferred_username"], "bob");
    assert!(claims["email"].is_string());
    assert!(claims["exp"].as_i64().unwrap() > claims["iat"].as_i64().unwrap());

    let token = body["access_token"].as_str().unwrap();
    assert_eq!(userinfo(&rig.server, token).await.1["sub"], "bob");
}

#[tokio::test]
async fn a_wrong_verifier_is_invalid_grant() {
    let rig = start_auto("alice").await;
    let client = client(&rig.server, REDIRECT);
    let (code, _right) = auto_code(&client, None).await;
    let (_, wrong) = PkceCodeChallenge::new_random_sha256();
    assert_invalid_grant(
        client
            .exchange_code(AuthorizationCode::new(code))
            .set_pkce_verifier(wrong)
            .request_async(&http())
            .await,
    );
}

#[tokio::test]
async fn missing_or_plain_pkce_gets_an_error_page_and_no_redirect() {
    let rig = start_auto("alice").await;
    let client = client(&rig.server, REDIRECT);
    let (no_pkce, _) = client
        .authorize_url(CsrfToken::new_random)
        .add_scope(Scope::new("openid".into()))
        .url();
    let page = expect_error_page(no_pkce.as_str()).await;
    assert!(page.contains("PKCE"), "{page}");

    // The oauth2 crate sends `plain` only with a feature: rewrite an S256 request instead. A
    // 43-character plain challenge is syntactically a valid S256 one, so only the method
    // tells them apart.
    let (url, _, verifier) = authorize_url(&client, None);
    let with_method = |method: Option<&str>| {
        let mut url = url.clone();
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(k, _)| k != "code_challenge_method" && k != "code_challenge")
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let mut query = url.query_pairs_mut();
        query.clear().extend_pairs(pairs);
        query.append_pair("code_challenge", verifier.secret());
        if let Some(method) = method {
            query.append_pair("code_challenge_method", method);
        }
        drop(query);
        url
    };
    let page = expect_error_page(with_method(Some("plain")).as_str()).await;
    assert!(page.contains("S256"), "{page}");
    // A challenge without a method defaults to plain (RFC 7636 §4.3): refused too.
    expect_error_page(with_method(None).as_str()).await;
    assert_eq!(rig.server.oauth_counters().await.unwrap().codes_issued, 0);
}

#[tokio::test]
async fn unregistered_redirect_uris_and_clients_get_an_error_page_and_no_redirect() {
    let rig = start_auto("alice").await;
    for redirect in [
        "http://localhost:53682/callback",
        "http://example.org/callback",
        "https://example.org/callback",
        "http://192.168.1.2:8080/callback",
        "myapp://callback",
    ] {
        let (url, _, _) = authorize_url(&client(&rig.server, redirect), None);
        expect_error_page(url.as_str()).await;
    }
    let (url, _, _) = authorize_url(&client(&rig.server, REDIRECT), None);
    let other_client = url
        .as_str()
        .replace("client_id=aw-sync-samay", "client_id=someone-else");
    assert_ne!(other_client, url.as_str());
    expect_error_page(&other_client).await;
    assert_eq!(rig.server.oauth_counters().await.unwrap().codes_issued, 0);
}

#[tokio::test]
async fn any_loopback_port_and_private_use_schemes_are_accepted_but_the_uri_is_bound_to_the_code() {
    let rig = start_auto("alice").await;
    for redirect in [
        "http://127.0.0.1:1/callback",
        "http://127.0.0.1:40123/other/path",
        "samay://callback",
        "app.samay.example:/cb",
    ] {
        let client = client(&rig.server, redirect);
        let (code, verifier) = auto_code(&client, None).await;
        client
            .exchange_code(AuthorizationCode::new(code))
            .set_pkce_verifier(verifier)
            .request_async(&http())
            .await
            .unwrap_or_else(|e| panic!("{redirect}: {e:?}"));
    }
    // The token request must name the redirect URI of the authorization request.
    let (code, verifier) = auto_code(&client(&rig.server, "http://127.0.0.1:1111/cb"), None).await;
    assert_invalid_grant(
        client(&rig.server, "http://127.0.0.1:2222/cb")
            .exchange_code(AuthorizationCode::new(code))
            .set_pkce_verifier(verifier)
            .request_async(&http())
            .await,
    );
}

#[tokio::test]
async fn a_reused_code_is_invalid_grant_and_revokes_what_it_issued() {
    let rig = start_auto("alice").await;
    let client = client(&rig.server, REDIRECT);
    let (code, verifier) = auto_code(&client, None).await;
    let verifier_again = PkceCodeVerifier::new(verifier.secret().clone());
    let tokens = client
        .exchange_code(AuthorizationCode::new(code.clone()))
        .set_pkce_verifier(verifier)
        .request_async(&http())
        .await
        .unwrap();
    assert_eq!(ingest(&rig.server, access(&tokens)).await, StatusCode::OK);
    assert_invalid_grant(
        client
            .exchange_code(AuthorizationCode::new(code))
            .set_pkce_verifier(verifier_again)
            .request_async(&http())
            .await,
    );
    assert_eq!(
        ingest(&rig.server, access(&tokens)).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        refresh(&rig.server, &refresh_of(&tokens))
            .await
            .unwrap_err(),
        "invalid_grant"
    );
    assert_eq!(
        rig.server.oauth_counters().await.unwrap().reuse_detections,
        1
    );
}

#[tokio::test]
async fn refresh_rotates_every_time() {
    let rig = start_auto("alice").await;
    let mut tokens = login(&rig.server, None).await;
    let mut seen = vec![refresh_of(&tokens).secret().clone()];
    for _ in 0..3 {
        let next = refresh(&rig.server, &refresh_of(&tokens))
            .await
            .expect("refresh");
        let rotated = refresh_of(&next).secret().clone();
        assert!(!seen.contains(&rotated), "a new refresh token every time");
        seen.push(rotated);
        assert_ne!(access(&next), access(&tokens));
        assert_eq!(ingest(&rig.server, access(&next)).await, StatusCode::OK);
        assert_eq!(userinfo(&rig.server, access(&next)).await.1["sub"], "alice");
        tokens = next;
    }
    let counters = rig.server.oauth_counters().await.unwrap();
    assert_eq!(counters.refreshes_served, 3);
    assert_eq!(counters.reuse_detections, 0);
    assert_eq!(counters.grants_active, 1);
}

#[tokio::test]
async fn reusing_a_rotated_refresh_token_revokes_the_whole_grant() {
    let rig = start_auto("alice").await;
    let first = login(&rig.server, None).await;
    let second = refresh(&rig.server, &refresh_of(&first)).await.unwrap();
    let third = refresh(&rig.server, &refresh_of(&second)).await.unwrap();
    assert_eq!(ingest(&rig.server, access(&third)).await, StatusCode::OK);

    // The first refresh token was rotated away: presenting it again is reuse.
    assert_eq!(
        refresh(&rig.server, &refresh_of(&first)).await.unwrap_err(),
        "invalid_grant"
    );
    assert_eq!(
        ingest(&rig.server, access(&third)).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        userinfo(&rig.server, access(&third)).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        ingest(&rig.server, access(&first)).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        refresh(&rig.server, &refresh_of(&third)).await.unwrap_err(),
        "invalid_grant",
        "the newest refresh token dies with its grant"
    );

    // Another grant of the same user is not touched.
    let other = login(&rig.server, None).await;
    assert_eq!(ingest(&rig.server, access(&other)).await, StatusCode::OK);
    let counters = rig.server.oauth_counters().await.unwrap();
    assert_eq!(counters.reuse_detections, 1);
    assert_eq!(counters.grants_active, 1);
}

#[tokio::test]
async fn access_tokens_and_codes_expire_on_the_provider_clock() {
    let rig = start(OidcConfig {
        auto_approve: Some("alice".into()),
        access_token_ttl: Duration::from_secs(1),
        ..Default::default()
    })
    .await;
    let tokens = login(&rig.server, None).await;
    assert_eq!(tokens.expires_in(), Some(Duration::from_secs(1)));
    assert_eq!(ingest(&rig.server, access(&tokens)).await, StatusCode::OK);

    rig.server.advance_clock(Duration::from_secs(2));
    assert_eq!(
        ingest(&rig.server, access(&tokens)).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        userinfo(&rig.server, access(&tokens)).await.0,
        StatusCode::UNAUTHORIZED
    );
    // The refresh token outlives the access token: the client's 401 → refresh → retry works.
    let fresh = refresh(&rig.server, &refresh_of(&tokens)).await.unwrap();
    assert_eq!(ingest(&rig.server, access(&fresh)).await, StatusCode::OK);

    // A code is good for 60 seconds.
    let client = client(&rig.server, REDIRECT);
    let (code, verifier) = auto_code(&client, None).await;
    rig.server.advance_clock(Duration::from_secs(61));
    assert_invalid_grant(
        client
            .exchange_code(AuthorizationCode::new(code))
            .set_pkce_verifier(verifier)
            .request_async(&http())
            .await,
    );
}

#[tokio::test]
async fn revoking_the_refresh_token_revokes_the_grant_and_unknown_tokens_are_fine() {
    let rig = start_auto("alice").await;
    let tokens = login(&rig.server, None).await;
    assert_eq!(
        revoke(&rig.server, refresh_of(&tokens).secret(), "refresh_token").await,
        StatusCode::OK
    );
    assert_eq!(
        ingest(&rig.server, access(&tokens)).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        userinfo(&rig.server, access(&tokens)).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        refresh(&rig.server, &refresh_of(&tokens))
            .await
            .unwrap_err(),
        "invalid_grant"
    );
    assert_eq!(
        revoke(&rig.server, "never-issued", "access_token").await,
        StatusCode::OK
    );

    // Revoking an access token ends only that token.
    let other = login(&rig.server, None).await;
    assert_eq!(
        revoke(&rig.server, access(&other), "access_token").await,
        StatusCode::OK
    );
    assert_eq!(
        ingest(&rig.server, access(&other)).await,
        StatusCode::UNAUTHORIZED
    );
    let renewed = refresh(&rig.server, &refresh_of(&other)).await.unwrap();
    assert_eq!(ingest(&rig.server, access(&renewed)).await, StatusCode::OK);

    let counters: Value = http()
        .get(format!("{}/v1/_oauth", rig.server.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(counters["revocations"], 2);
    assert_eq!(counters["grants_active"], 1);
}

#[tokio::test]
async fn token_endpoint_errors_follow_rfc6749() {
    let rig = start_auto("alice").await;
    let token_url = format!("{}/oauth/token", rig.server.base_url());
    let post = |form: Vec<(&'static str, &'static str)>| {
        let url = token_url.clone();
        async move {
            let r = http().post(url).form(&form).send().await.unwrap();
            let status = r.status();
            let body: Value = r.json().await.unwrap();
            (status, body["error"].as_str().unwrap_or("").to_string())
        }
    };
    assert_eq!(
        post(vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", "x"),
            ("client_id", "nobody")
        ])
        .await,
        (StatusCode::UNAUTHORIZED, "invalid_client".into())
    );
    assert_eq!(
        post(vec![
            ("grant_type", "password"),
            ("client_id", DEV_CLIENT_ID)
        ])
        .await,
        (StatusCode::BAD_REQUEST, "unsupported_grant_type".into())
    );
    assert_eq!(
        post(vec![
            ("grant_type", "authorization_code"),
            ("code", "x"),
            ("client_id", DEV_CLIENT_ID)
        ])
        .await,
        (StatusCode::BAD_REQUEST, "invalid_request".into()),
        "no code_verifier"
    );
    assert_eq!(
        post(vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", "forged"),
            ("client_id", DEV_CLIENT_ID)
        ])
        .await,
        (StatusCode::BAD_REQUEST, "invalid_grant".into())
    );
}

#[tokio::test]
async fn grants_survive_a_restart_and_only_hashes_are_stored() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || DevServerConfig {
        db_path: dir.path().join("dev.sqlite"),
        ..Default::default()
    };
    let auto = OidcConfig {
        auto_approve: Some("alice".into()),
        ..Default::default()
    };
    let server = devserver::spawn_with(cfg(), auto.clone()).await.unwrap();
    let tokens = login(&server, None).await;
    server.shutdown().await;

    let db = std::fs::read(dir.path().join("dev.sqlite")).unwrap();
    let wal = std::fs::read(dir.path().join("dev.sqlite-wal")).unwrap_or_default();
    for secret in [access(&tokens), refresh_of(&tokens).secret().as_str()] {
        let needle = secret.as_bytes();
        assert!(
            !db.windows(needle.len()).any(|w| w == needle)
                && !wal.windows(needle.len()).any(|w| w == needle),
            "a token is stored in clear"
        );
    }

    let server = devserver::spawn_with(cfg(), auto).await.unwrap();
    assert_eq!(ingest(&server, access(&tokens)).await, StatusCode::OK);
    let renewed = refresh(&server, &refresh_of(&tokens))
        .await
        .expect("refresh after restart");
    assert_eq!(userinfo(&server, access(&renewed)).await.1["sub"], "alice");
    server.shutdown().await;
}

#[tokio::test]
async fn tokens_of_an_external_issuer_are_accepted_until_revoked_there() {
    let issuer = start_auto("carol").await;
    let rig = start(OidcConfig {
        external_issuer: Some(Url::parse(&issuer.server.issuer()).unwrap()),
        ..Default::default()
    })
    .await;
    let tokens = login(&issuer.server, None).await;

    assert_eq!(ingest(&rig.server, access(&tokens)).await, StatusCode::OK);
    let stored = rig.server.stored_events(None, None).await.unwrap();
    assert_eq!(stored[0].user, "carol", "user = the external token's sub");
    assert_eq!(
        ingest(&rig.server, "unknown-anywhere").await,
        StatusCode::UNAUTHORIZED
    );
    // The local userinfo knows only local tokens.
    assert_eq!(
        userinfo(&rig.server, access(&tokens)).await.0,
        StatusCode::UNAUTHORIZED
    );

    assert_eq!(
        revoke(
            &issuer.server,
            refresh_of(&tokens).secret(),
            "refresh_token"
        )
        .await,
        StatusCode::OK
    );
    // A positive answer is cached for a second (of the checking server's clock); after it the
    // revocation is seen.
    rig.server.advance_clock(Duration::from_secs(2));
    assert_eq!(
        ingest(&rig.server, access(&tokens)).await,
        StatusCode::UNAUTHORIZED
    );
    let checks = rig.server.oauth_counters().await.unwrap().external_checks;
    assert_eq!(checks, 3, "one per cache miss: accepted, unknown, revoked");
}

#[tokio::test]
async fn an_unreachable_external_issuer_is_503_not_401() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let rig = start(OidcConfig {
        external_issuer: Some(Url::parse(&format!("http://127.0.0.1:{port}")).unwrap()),
        ..Default::default()
    })
    .await;
    assert_eq!(
        ingest(&rig.server, "some-token").await,
        StatusCode::SERVICE_UNAVAILABLE,
        "a token that cannot be checked is not declared bad"
    );
    assert_eq!(ingest(&rig.server, STATIC_TOKEN).await, StatusCode::OK);
}
