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

fn introspecting_verifier(
    provider: &OidcProvider,
    clock: std::sync::Arc<ManualClock>,
) -> TokenVerifier {
    let config = VerifierConfig::new(
        vec![IssuerConfig {
            url: provider.issuer(),
            introspection: Some(IntrospectionClient {
                client_id: RS_CLIENT.0.to_string(),
                client_secret: RS_CLIENT.1.to_string(),
            }),
        }],
        AUDIENCE,
    );
    TokenVerifier::with_clock(config, http(), clock).unwrap()
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
    let verifier = introspecting_verifier(&provider, clock.clone());
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
    let mut config = introspecting_verifier(&provider, ManualClock::new())
        .config()
        .clone();
    config.audience = "https://other.test/api".to_string();
    let elsewhere = TokenVerifier::new(config, http.clone()).unwrap();
    assert_eq!(
        elsewhere.verify(&fresh).await,
        Err(AuthFailure::BadAudience)
    );
}
