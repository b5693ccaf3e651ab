//! Issue 11, points 1 and 3: a hostile identity provider, aw-server and upstream on loopback.
//!
//! * Plain-http endpoints to another host — configured or named by discovery — carried the
//!   code, the PKCE verifier and the tokens unencrypted; now they are refused before any
//!   request, with an error naming the key and saying "https".
//! * An endless chunked body on `/api/0/info` grew memory to 1.8 GB in 6 s; discovery, token,
//!   userinfo and revocation answers were read the same way. Every body is now read with a
//!   ceiling, and an endless one ends in a clear error.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aw_sync_samay::auth::oauth::{self, LoginError, OAuthSession, Provider};
use aw_sync_samay::auth::store::TokenStore;
use aw_sync_samay::auth::tokens::StoredTokens;
use aw_sync_samay::auth::{AccessToken, AuthError, TokenSource};
use aw_sync_samay::config::{AuthConfig, TokenStorage};
use aw_sync_samay::source::{AwClient, SourceError};
use aw_sync_samay::upstream::contract::BatchRequest;
use aw_sync_samay::upstream::{UpstreamClient, UpstreamError};
use chrono::Utc;
use url::Url;

use samay_testkit::hostile::{Answer, Hostile, Seen};

/// What one endless answer may have cost at most: the limit read plus what the socket buffers
/// held when the reader hung up. Without a limit the server writes for as long as the client
/// reads — until its request timeout (30–60 s) at hundreds of MB/s.
const BOUNDED: u64 = 64 * 1024 * 1024;

/// A hostile provider whose discovery document is made, per request, from its own issuer URL
/// and `token_endpoint(issuer)`; every other path is answered by `other`.
async fn provider(
    token_endpoint: impl Fn(&str) -> String + Send + Sync + 'static,
    other: impl Fn(&Seen) -> Answer + Send + Sync + 'static,
) -> Hostile {
    let issuer = Arc::new(Mutex::new(String::new()));
    let known = issuer.clone();
    let server = Hostile::start(move |req| {
        if req.target == "/.well-known/openid-configuration" {
            let issuer = known.lock().expect("lock").clone();
            let doc = serde_json::json!({
                "issuer": issuer,
                "authorization_endpoint": format!("{issuer}/auth"),
                "token_endpoint": token_endpoint(&issuer),
                "userinfo_endpoint": format!("{issuer}/me"),
                "revocation_endpoint": format!("{issuer}/revoke"),
            });
            return Answer::json(200, doc.to_string());
        }
        other(req)
    })
    .await;
    *issuer.lock().expect("lock") = server.base_url();
    server
}

fn auth_config(issuer: &str) -> AuthConfig {
    AuthConfig {
        client_id: "c".into(),
        issuer: issuer.into(),
        token_storage: TokenStorage::File,
        ..AuthConfig::default()
    }
}

#[tokio::test]
async fn a_discovered_plain_http_endpoint_to_another_host_is_refused_before_any_request() {
    let server = provider(
        |_| "http://id.example.org/token".to_string(),
        |_| Answer::json(500, "{}"),
    )
    .await;
    let http = oauth::http_client().expect("client");
    let err = oauth::resolve_provider(&auth_config(&server.base_url()), &http)
        .await
        .expect_err("an http token endpoint to another host");
    assert!(matches!(err, LoginError::Insecure(_)), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("token_endpoint"), "{text}");
    assert!(text.contains("https"), "{text}");
    // Only the discovery document was asked for.
    let seen: Vec<String> = server.seen().into_iter().map(|s| s.target).collect();
    assert_eq!(seen, ["/.well-known/openid-configuration"]);

    // The same provider with its token endpoint on this machine is fine.
    let local = provider(
        |issuer| format!("{issuer}/token"),
        |_| Answer::json(500, "{}"),
    )
    .await;
    let found = oauth::resolve_provider(&auth_config(&local.base_url()), &http)
        .await
        .expect("loopback endpoints");
    assert_eq!(found.token_endpoint.path(), "/token");
}

#[tokio::test]
async fn configured_plain_http_endpoints_are_refused_by_name() {
    let http = oauth::http_client().expect("client");
    for (key, cfg) in [
        (
            "auth.issuer",
            AuthConfig {
                issuer: "http://id.example.org".into(),
                ..auth_config("")
            },
        ),
        (
            "auth.token_url",
            AuthConfig {
                auth_url: "https://id.example.org/auth".into(),
                token_url: "http://id.example.org/token".into(),
                ..auth_config("")
            },
        ),
        (
            "auth.revocation_url",
            AuthConfig {
                auth_url: "https://id.example.org/auth".into(),
                token_url: "https://id.example.org/token".into(),
                revocation_url: "ftp://x".into(),
                ..auth_config("")
            },
        ),
    ] {
        let err = oauth::resolve_provider(&cfg, &http).await.expect_err(key);
        let text = err.to_string();
        assert!(
            text.contains(key) && text.contains("https"),
            "{key}: {text}"
        );
    }
    // A provider built by hand (as `--dev` does) is checked by the login before it starts.
    let url = |s: &str| Url::parse(s).expect("url");
    let by_hand = Provider {
        issuer: None,
        authorization_endpoint: url("https://id.example.org/auth"),
        token_endpoint: url("http://id.example.org/token"),
        userinfo_endpoint: None,
        revocation_endpoint: None,
        device_authorization_endpoint: None,
        iss_parameter_supported: false,
    };
    let err = by_hand.check_endpoints().expect_err("http token endpoint");
    assert!(err.to_string().contains("token_endpoint"), "{err}");
}

#[tokio::test]
async fn an_endless_discovery_document_ends_in_a_clear_error() {
    let server = Hostile::start(|_| Answer::endless()).await;
    let http = oauth::http_client().expect("client");
    let err = oauth::resolve_provider(&auth_config(&server.base_url()), &http)
        .await
        .expect_err("endless");
    assert!(err.to_string().contains("larger than 1 MiB"), "{err}");
    assert!(server.endless_sent.load(Ordering::Relaxed) < BOUNDED);
}

fn stored(issuer: &str) -> StoredTokens {
    StoredTokens {
        access_token: "stale-access".into(),
        refresh_token: Some("the-refresh-token".into()),
        expires_at: Some(Utc::now() - chrono::Duration::minutes(1)),
        scope: None,
        id_token: None,
        subject: Some("u1".into()),
        username: Some("alice".into()),
        issuer: issuer.into(),
        client_id: "c".into(),
        obtained_at: Utc::now() - chrono::Duration::hours(1),
    }
}

/// The config for `server` and a file store in `dir` holding expired tokens from it.
async fn logged_in(server: &Hostile, dir: &std::path::Path) -> (AuthConfig, TokenStore) {
    let cfg = auth_config(&server.base_url());
    let store = TokenStore::open(TokenStorage::File, oauth::configured_account(&cfg), dir)
        .await
        .expect("store");
    store.save(&stored(&server.base_url())).await.expect("save");
    (cfg, store)
}

/// The token endpoint is read by the `oauth2` crate, through our capped client: an endless
/// answer to a refresh is a transient failure with a clear reason, after the usual retries.
#[tokio::test]
async fn an_endless_token_answer_ends_in_a_clear_error() {
    let server = provider(
        |issuer| format!("{issuer}/token"),
        |req| match req.target.as_str() {
            "/token" => Answer::endless(),
            _ => Answer::json(404, "{}"),
        },
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, store) = logged_in(&server, dir.path()).await;
    let session = OAuthSession::new(&cfg, store, dir.path());
    let err = session
        .refresh(&AccessToken::new("stale-access"))
        .await
        .expect_err("endless");
    assert!(matches!(err, AuthError::Transient(_)), "{err:?}");
    assert!(err.to_string().contains("larger than 1 MiB"), "{err}");
    let token_requests = server
        .seen()
        .iter()
        .filter(|s| s.target == "/token")
        .count();
    assert_eq!(token_requests, 3, "retried as a transient failure");
    assert!(server.endless_sent.load(Ordering::Relaxed) < 3 * BOUNDED);
}

/// Revocation (RFC 7009) and its refusal: an endless answer is cut, the provider's `error` is
/// shown printable, and the tokens are deleted either way.
#[tokio::test]
async fn revocation_answers_are_read_with_a_ceiling() {
    for (answer, want) in [
        (None, "larger than 1 MiB"),
        (
            Some(r#"{"error":"invalid_client\u001b[2J"}"#),
            "(invalid_client\\u{1b}[2J)",
        ),
    ] {
        let server = provider(
            |issuer| format!("{issuer}/token"),
            move |req| match (req.target.as_str(), answer) {
                ("/revoke", None) => Answer {
                    status: 400,
                    ..Answer::endless()
                },
                ("/revoke", Some(body)) => Answer::json(400, body),
                _ => Answer::json(404, "{}"),
            },
        )
        .await;
        let dir = tempfile::tempdir().expect("tempdir");
        let (cfg, store) = logged_in(&server, dir.path()).await;
        let report = oauth::logout(&cfg, &store).await.expect("logout");
        let why = match &report.revoked {
            Some(Err(why)) => why.clone(),
            other => panic!("{other:?}"),
        };
        assert!(why.contains(want), "{why}");
        assert!(!why.chars().any(char::is_control), "{why:?}");
        assert!(report.deleted);
        assert!(server.endless_sent.load(Ordering::Relaxed) < BOUNDED);
    }
}

#[tokio::test]
async fn an_endless_answer_from_aw_server_ends_in_a_clear_error() {
    let server = Hostile::start(|req| match req.target.as_str() {
        "/api/0/info" | "/api/0/buckets/b/events/count" => Answer::endless(),
        _ => Answer::json(404, "{}"),
    })
    .await;
    let client = AwClient::new("127.0.0.1", server.port()).expect("client");
    match client.info().await {
        Err(e @ SourceError::TooLarge { .. }) => {
            assert!(!e.is_transient());
            assert!(e.to_string().contains("larger than 1 MiB"), "{e}");
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(matches!(
        client.event_count("b").await,
        Err(SourceError::TooLarge { .. })
    ));
    assert!(server.endless_sent.load(Ordering::Relaxed) < 2 * BOUNDED);
}

#[tokio::test]
async fn an_endless_success_from_the_upstream_is_malformed_and_bounded() {
    let server = Hostile::start(|_| Answer::endless()).await;
    let client =
        UpstreamClient::new(&server.base_url(), Duration::from_secs(30), false).expect("client");
    let batch: BatchRequest = serde_json::from_value(serde_json::json!({
        "batch_id": uuid::Uuid::new_v4(),
        "device_id": uuid::Uuid::new_v4(),
        "user_id": null,
        "hostname": "h",
        "sync_timestamp": "2026-01-01T00:00:00Z",
        "buckets": {},
        "events": [],
    }))
    .expect("a batch");
    let err = client
        .send_batch(&AccessToken::new("t"), &batch)
        .await
        .expect_err("endless");
    assert!(matches!(err, UpstreamError::Malformed(_)), "{err:?}");
    assert!(err.to_string().contains("larger than 1 MiB"), "{err}");
    assert!(server.endless_sent.load(Ordering::Relaxed) < BOUNDED);
}
