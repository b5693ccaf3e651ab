//! Grants across a restart, and tokens of an external issuer.

use std::time::Duration;

use reqwest::StatusCode;
use samay_server::{self as devserver, DevServerConfig, OidcConfig};
use url::Url;

use super::support::*;

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
