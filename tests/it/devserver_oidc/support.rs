//! The provider's rig and an `oauth2` client driving it the way aw-sync-samay's login does.

use std::collections::HashMap;

use oauth2::basic::{BasicClient, BasicErrorResponseType, BasicTokenResponse};
use oauth2::TokenResponse;
use oauth2::{
    AuthUrl, AuthorizationCode, ClientId, CsrfToken, EndpointNotSet, EndpointSet,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken, RequestTokenError, Scope,
    TokenUrl,
};
use reqwest::StatusCode;
use samay_server::{self as devserver, DevServer, DevServerConfig, OidcConfig, DEV_CLIENT_ID};
use serde_json::{json, Value};
use tempfile::TempDir;
use url::Url;
use uuid::Uuid;

pub(super) type Client =
    BasicClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointSet>;

pub(super) const REDIRECT: &str = "http://127.0.0.1:53682/callback";
pub(super) const STATIC_TOKEN: &str = "static-test-token";

pub(super) struct Rig {
    pub(super) server: DevServer,
    pub(super) _dir: TempDir,
}

pub(super) async fn start(oidc: OidcConfig) -> Rig {
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

pub(super) async fn start_auto(user: &str) -> Rig {
    start(OidcConfig {
        auto_approve: Some(user.into()),
        ..Default::default()
    })
    .await
}

/// The HTTP client of the login: never follows redirects (a token endpoint must not redirect,
/// and the authorize redirect is what the test reads).
pub(super) fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("http client")
}

pub(super) fn client(server: &DevServer, redirect: &str) -> Client {
    let base = server.base_url();
    BasicClient::new(ClientId::new(DEV_CLIENT_ID.into()))
        .set_auth_uri(AuthUrl::new(format!("{base}/oauth/authorize")).unwrap())
        .set_token_uri(TokenUrl::new(format!("{base}/oauth/token")).unwrap())
        .set_redirect_uri(RedirectUrl::new(redirect.into()).unwrap())
}

/// An authorization request as the login builds it.
pub(super) fn authorize_url(
    client: &Client,
    login_hint: Option<&str>,
) -> (Url, CsrfToken, PkceCodeVerifier) {
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

pub(super) fn query(location: &str) -> HashMap<String, String> {
    Url::parse(location)
        .expect("Location is a URL")
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// GET the authorize URL; asserts a 303 and returns its Location.
pub(super) async fn expect_redirect(url: &str) -> String {
    let response = http().get(url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER, "{url}");
    response.headers()[reqwest::header::LOCATION]
        .to_str()
        .unwrap()
        .to_string()
}

/// GET the authorize URL; asserts an error page (400, HTML, no Location).
pub(super) async fn expect_error_page(url: &str) -> String {
    let response = http().get(url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{url}");
    assert!(
        response.headers().get(reqwest::header::LOCATION).is_none(),
        "an error must never redirect: {url}"
    );
    response.text().await.unwrap()
}

/// Auto-approved authorization: the code and the verifier that redeems it.
pub(super) async fn auto_code(client: &Client, hint: Option<&str>) -> (String, PkceCodeVerifier) {
    let (url, state, verifier) = authorize_url(client, hint);
    let location = expect_redirect(url.as_str()).await;
    let q = query(&location);
    assert_eq!(q.get("state"), Some(state.secret()));
    (q["code"].clone(), verifier)
}

/// The whole login: authorize (auto-approved) and exchange the code.
pub(super) async fn login(server: &DevServer, hint: Option<&str>) -> BasicTokenResponse {
    let client = client(server, REDIRECT);
    let (code, verifier) = auto_code(&client, hint).await;
    client
        .exchange_code(AuthorizationCode::new(code))
        .set_pkce_verifier(verifier)
        .request_async(&http())
        .await
        .expect("code exchange")
}

pub(super) async fn refresh(
    server: &DevServer,
    token: &RefreshToken,
) -> Result<BasicTokenResponse, String> {
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

pub(super) fn assert_invalid_grant<T: std::fmt::Debug>(
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
pub(super) async fn ingest(server: &DevServer, token: &str) -> StatusCode {
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

pub(super) async fn userinfo(server: &DevServer, token: &str) -> (StatusCode, Value) {
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
pub(super) async fn revoke(server: &DevServer, token: &str, hint: &str) -> StatusCode {
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

pub(super) fn access(tokens: &BasicTokenResponse) -> &str {
    tokens.access_token().secret()
}

pub(super) fn refresh_of(tokens: &BasicTokenResponse) -> RefreshToken {
    tokens.refresh_token().expect("a refresh token").clone()
}
