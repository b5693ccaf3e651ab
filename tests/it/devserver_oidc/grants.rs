//! Single-use codes, refresh rotation and reuse detection, expiry, revocation, RFC 6749 errors.

use std::time::Duration;

use oauth2::TokenResponse;
use oauth2::{AuthorizationCode, PkceCodeVerifier};
use reqwest::StatusCode;
use samay_server::{OidcConfig, DEV_CLIENT_ID};
use serde_json::Value;

use super::support::*;

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
