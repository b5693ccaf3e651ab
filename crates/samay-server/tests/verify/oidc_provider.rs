//! The real oidc-provider: a JWT access token it issues for our resource verifies to the user,
//! and its opaque tokens verify through introspection until they are revoked.

use std::time::Duration;

use samay_server::{
    AuthFailure, IntrospectionClient, IssuerConfig, Principal, TokenVerifier, VerifierConfig,
};
use samay_testkit::issuer::AUDIENCE;
use samay_testkit::oidc::{AccessTokenFormat, OidcOptions, OidcProvider};

use super::{http, verifier, ManualClock};

const RS_CLIENT: (&str, &str) = ("samay-server", "introspection-secret");

async fn provider(format: AccessTokenFormat) -> OidcProvider {
    tokio::task::spawn_blocking(move || {
        OidcProvider::start_with(OidcOptions {
            resource: Some(AUDIENCE.to_string()),
            resource_format: format,
            resource_server_client: Some((RS_CLIENT.0.to_string(), RS_CLIENT.1.to_string())),
            ..OidcOptions::default()
        })
    })
    .await
    .unwrap()
}

/// Accepts the provider's tokens for [`AUDIENCE`], opaque ones through introspection.
fn introspecting_config(provider: &OidcProvider) -> VerifierConfig {
    VerifierConfig::new(
        vec![IssuerConfig {
            url: provider.issuer(),
            introspection: Some(IntrospectionClient {
                client_id: RS_CLIENT.0.to_string(),
                client_secret: RS_CLIENT.1.to_string(),
            }),
        }],
        AUDIENCE,
    )
}

#[tokio::test]
async fn oidc_provider_jwt_access_token_verifies_to_its_user() {
    let provider = provider(AccessTokenFormat::Jwt).await;
    let token = provider.resource_access_token(&http(), "alice").await;
    assert_eq!(token.split('.').count(), 3, "a JWT access token");

    let verifier = verifier(&[provider.issuer()], ManualClock::new());
    assert_eq!(
        verifier.verify(&token).await,
        Ok(Principal {
            issuer: provider.issuer(),
            subject: "alice".to_string(),
        }),
        "provider log:\n{}",
        provider.log()
    );

    // The same token at a server with another audience is not for it.
    let elsewhere = TokenVerifier::new(
        VerifierConfig::new(
            vec![IssuerConfig::new(provider.issuer())],
            "https://other.test/api",
        ),
        http(),
    )
    .unwrap();
    assert_eq!(
        elsewhere.verify(&token).await,
        Err(AuthFailure::BadAudience)
    );
}

#[tokio::test]
async fn oidc_provider_opaque_token_verifies_through_introspection_until_revoked() {
    let provider = provider(AccessTokenFormat::Opaque).await;
    let http = http();
    let token = provider.resource_access_token(&http, "bob").await;
    assert_eq!(token.split('.').count(), 1, "an opaque access token");
    let bob = Ok(Principal {
        issuer: provider.issuer(),
        subject: "bob".to_string(),
    });

    let clock = ManualClock::new();
    let verifier =
        TokenVerifier::with_clock(introspecting_config(&provider), http.clone(), clock.clone())
            .unwrap();
    assert_eq!(
        verifier.verify(&token).await,
        bob,
        "provider log:\n{}",
        provider.log()
    );

    // Revoked at the provider: the cached answer serves until introspection_cache_ttl (30 s)
    // has passed, then introspection says inactive.
    provider.revoke(&http, &token).await;
    assert_eq!(verifier.verify(&token).await, bob);
    clock.advance(Duration::from_secs(30));
    assert_eq!(verifier.verify(&token).await, Err(AuthFailure::Inactive));

    // A token the provider never issued.
    assert_eq!(
        verifier.verify("c29tZXRoaW5nLW1hZGUtdXA").await,
        Err(AuthFailure::Inactive)
    );

    // Without client credentials there is no way to check an opaque token.
    let fresh = provider.resource_access_token(&http, "bob").await;
    let jwt_only = TokenVerifier::new(
        VerifierConfig::new(vec![IssuerConfig::new(provider.issuer())], AUDIENCE),
        http.clone(),
    )
    .unwrap();
    assert_eq!(
        jwt_only.verify(&fresh).await,
        Err(AuthFailure::OpaqueNotSupported)
    );

    // A verifier for another audience: the provider vouches for the token, but not for us.
    let mut config = introspecting_config(&provider);
    config.audience = "https://other.test/api".to_string();
    let elsewhere = TokenVerifier::new(config, http.clone()).unwrap();
    assert_eq!(
        elsewhere.verify(&fresh).await,
        Err(AuthFailure::BadAudience)
    );
}

/// The introspection cache holds at most `introspection_cache_size` answers: with room for one,
/// the second token pushes the first out, so after both are revoked only the second is still
/// (briefly) accepted from the cache.
#[tokio::test]
async fn the_introspection_cache_is_bounded() {
    let provider = provider(AccessTokenFormat::Opaque).await;
    let http = http();
    let first = provider.resource_access_token(&http, "bob").await;
    let second = provider.resource_access_token(&http, "carol").await;
    let mut config = introspecting_config(&provider);
    config.introspection_cache_size = 1;
    let verifier = TokenVerifier::new(config, http.clone()).unwrap();
    let carol = Ok(Principal {
        issuer: provider.issuer(),
        subject: "carol".to_string(),
    });

    assert!(verifier.verify(&first).await.is_ok());
    assert_eq!(verifier.verify(&second).await, carol);
    provider.revoke(&http, &first).await;
    provider.revoke(&http, &second).await;
    assert_eq!(verifier.verify(&first).await, Err(AuthFailure::Inactive));
    assert_eq!(verifier.verify(&second).await, carol);
}
