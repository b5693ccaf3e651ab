//! Key rotation: a new `kid` is fetched, but the JWKS is refetched at most once per
//! `jwks_min_refetch` (30 s) however many unknown `kid`s arrive; old keys age out.

use std::time::Duration;

use samay_server::{AuthFailure, Principal};
use samay_testkit::issuer::{KeyKind, SigningKey};

use super::{standard_issuer, verifier, ManualClock};

#[tokio::test]
async fn rotated_keys_are_fetched_at_a_bounded_rate() {
    let mut issuer = standard_issuer().await;
    let clock = ManualClock::new();
    let verifier = verifier(&[issuer.issuer()], clock.clone());
    let alice = Ok(Principal {
        issuer: issuer.issuer(),
        subject: "alice".to_string(),
    });
    let claims = issuer.claims("alice");

    assert_eq!(verifier.verify(&issuer.sign("rsa-1", &claims)).await, alice);
    assert_eq!(issuer.jwks_requests(), 1);

    // The issuer rotates right after our fetch: its new key is refused until a refetch is
    // allowed, and a flood of unknown kids in the meantime causes no request at all.
    let rotated = tokio::task::spawn_blocking(|| SigningKey::generate(KeyKind::Ed, "ed-2"))
        .await
        .unwrap();
    issuer.add_key(rotated);
    let new_token = issuer.sign("ed-2", &claims);
    clock.advance(Duration::from_secs(29));
    assert_eq!(
        verifier.verify(&new_token).await,
        Err(AuthFailure::UnknownKey)
    );
    for i in 0..20 {
        let token = issuer.sign_raw(
            &serde_json::json!({"alg": "EdDSA", "kid": format!("made-up-{i}")}),
            &claims,
            "ed-2",
        );
        assert_eq!(verifier.verify(&token).await, Err(AuthFailure::UnknownKey));
    }
    assert_eq!(issuer.jwks_requests(), 1);

    // 30 s after the last fetch: one refetch, and the new key works.
    clock.advance(Duration::from_secs(1));
    assert_eq!(verifier.verify(&new_token).await, alice);
    assert_eq!(issuer.jwks_requests(), 2);

    // Many verifications of yet another new key at once: one fetch between them.
    let third = tokio::task::spawn_blocking(|| SigningKey::generate(KeyKind::Ec, "ec-3"))
        .await
        .unwrap();
    issuer.add_key(third);
    clock.advance(Duration::from_secs(30));
    let token = issuer.sign("ec-3", &claims);
    let shared = std::sync::Arc::new(verifier);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let (verifier, token) = (shared.clone(), token.clone());
        tasks.spawn(async move { verifier.verify(&token).await });
    }
    while let Some(result) = tasks.join_next().await {
        assert_eq!(result.unwrap(), alice);
    }
    let verifier = shared;
    assert_eq!(issuer.jwks_requests(), 3);

    // A withdrawn key keeps verifying while the cached JWKS is fresh, and stops once the
    // cache is older than jwks_max_age (10 min) and has been refetched.
    issuer.withdraw("rsa-1");
    let old_key_token = issuer.sign("rsa-1", &claims);
    assert_eq!(verifier.verify(&old_key_token).await, alice);
    clock.advance(Duration::from_secs(600));
    assert_eq!(
        verifier.verify(&old_key_token).await,
        Err(AuthFailure::UnknownKey)
    );
    assert_eq!(issuer.jwks_requests(), 4);
}

/// Keys older than jwks_max_age are refreshed, but a token whose key is cached does not depend
/// on that refresh: a failed one keeps the old keys serving, and while one request is stuck in
/// a refresh the others verify with the cached keys instead of queueing behind it.
#[tokio::test]
async fn stale_keys_keep_serving_while_a_refresh_fails_or_hangs() {
    let issuer = standard_issuer().await;
    let claims = issuer.claims("alice");
    let token = issuer.sign("ec-1", &claims);
    let alice = Ok(Principal {
        issuer: issuer.issuer(),
        subject: "alice".to_string(),
    });
    let make = |timeout: Duration, clock: std::sync::Arc<ManualClock>| {
        let mut config = samay_server::VerifierConfig::new(
            vec![samay_server::IssuerConfig::new(issuer.issuer())],
            samay_testkit::issuer::AUDIENCE,
        );
        config.http_timeout = timeout;
        std::sync::Arc::new(
            samay_server::TokenVerifier::with_clock(config, super::http(), clock).unwrap(),
        )
    };

    // A refresh that fails (times out): the stale keys still verify.
    let clock = ManualClock::new();
    let verifier = make(Duration::from_millis(300), clock.clone());
    assert_eq!(verifier.verify(&token).await, alice);
    issuer.set_jwks_hangs(true);
    clock.advance(Duration::from_secs(600));
    let before = issuer.jwks_requests();
    assert_eq!(verifier.verify(&token).await, alice);
    assert_eq!(
        issuer.jwks_requests(),
        before + 1,
        "a refresh was attempted"
    );

    // A refresh that hangs (a deadline far away): a second request does not wait for it.
    issuer.set_jwks_hangs(false);
    let clock = ManualClock::new();
    let verifier = make(Duration::from_secs(120), clock.clone());
    assert_eq!(verifier.verify(&token).await, alice);
    issuer.set_jwks_hangs(true);
    clock.advance(Duration::from_secs(600));
    let before = issuer.jwks_requests();
    let stuck = {
        let (verifier, token) = (verifier.clone(), token.clone());
        tokio::spawn(async move { verifier.verify(&token).await })
    };
    // Bounded wait until the stuck request is inside the refresh.
    for _ in 0..1000 {
        if issuer.jwks_requests() > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(issuer.jwks_requests(), before + 1);
    assert_eq!(verifier.verify(&token).await, alice);
    assert!(
        !stuck.is_finished(),
        "the first request is still refreshing"
    );
    stuck.abort();
}
