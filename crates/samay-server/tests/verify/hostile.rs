//! Issuers that hang, flood or bloat: verification ends with a bounded, retryable error.

use std::time::Duration;

use samay_server::{AuthFailure, IssuerConfig, TokenVerifier, VerifierConfig};
use samay_testkit::hostile::{Answer, Hostile};
use samay_testkit::issuer::AUDIENCE;
use serde_json::json;

use super::{http, standard_issuer, ManualClock};

/// Generous: the verifier must give up long before (its own deadline is 300 ms here).
const TEST_BOUND: Duration = Duration::from_secs(30);

fn verifier_with_deadline(issuer: &str, clock: std::sync::Arc<ManualClock>) -> TokenVerifier {
    let mut config = VerifierConfig::new(vec![IssuerConfig::new(issuer)], AUDIENCE);
    config.http_timeout = Duration::from_millis(300);
    TokenVerifier::with_clock(config, http(), clock).unwrap()
}

/// A good-looking token naming `iss` (signed by the test issuer's key: the hostile issuer's
/// keys are never obtained, so the signature does not matter).
async fn token_naming(iss: &str) -> String {
    let signer = standard_issuer().await;
    let mut claims = signer.claims("alice");
    claims["iss"] = json!(iss);
    signer.sign("rsa-1", &claims)
}

async fn verify_bounded(
    verifier: &TokenVerifier,
    token: &str,
) -> Result<samay_server::Principal, AuthFailure> {
    tokio::time::timeout(TEST_BOUND, verifier.verify(token))
        .await
        .expect("the verifier gave up by itself")
}

#[tokio::test]
async fn a_discovery_that_never_answers_times_out() {
    // Accepts connections and never says a word.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let verifier = verifier_with_deadline(&issuer, ManualClock::new());
    let failure = verify_bounded(&verifier, &token_naming(&issuer).await).await;
    match failure {
        Err(e @ AuthFailure::IssuerUnavailable(_)) => {
            assert!(e.is_retryable());
            assert!(e.to_string().contains("no answer within"), "{e}");
        }
        other => panic!("expected IssuerUnavailable, got {other:?}"),
    }
    silent.abort();
}

#[tokio::test]
async fn an_endless_or_oversized_jwks_is_cut_off() {
    for endless in [true, false] {
        let base = std::sync::Arc::new(std::sync::OnceLock::<String>::new());
        let base_in = base.clone();
        let hostile = Hostile::start(move |seen| match seen.target.as_str() {
            "/.well-known/openid-configuration" => {
                let issuer = base_in.get().cloned().unwrap_or_default();
                Answer::json(
                    200,
                    json!({"issuer": issuer, "jwks_uri": format!("{issuer}/jwks")}).to_string(),
                )
            }
            _ if endless => Answer::endless(),
            // 2 MiB with a Content-Length: refused before reading.
            _ => Answer::json(200, vec![b' '; 2 * 1024 * 1024]),
        })
        .await;
        base.set(hostile.base_url()).unwrap();
        let clock = ManualClock::new();
        let verifier = verifier_with_deadline(&hostile.base_url(), clock.clone());
        let token = token_naming(&hostile.base_url()).await;

        let failure = verify_bounded(&verifier, &token).await;
        match &failure {
            Err(e @ AuthFailure::IssuerUnavailable(_)) => {
                assert!(e.to_string().contains("larger than 262144 bytes"), "{e}");
            }
            other => panic!("expected IssuerUnavailable, got {other:?}"),
        }
        let requests = hostile.seen().len();
        assert_eq!(requests, 2, "discovery + JWKS");

        // Failing again right away costs the issuer nothing: the refetch limit holds for
        // failures too, and the answer stays "unavailable" (503), not "bad token".
        let again = verify_bounded(&verifier, &token).await;
        assert!(
            matches!(again, Err(AuthFailure::IssuerUnavailable(_))),
            "{again:?}"
        );
        assert_eq!(hostile.seen().len(), requests);
        clock.advance(Duration::from_secs(30));
        let _ = verify_bounded(&verifier, &token).await;
        assert_eq!(hostile.seen().len(), requests + 2);
    }
}

#[tokio::test]
async fn opaque_tokens_while_the_issuer_is_down_cost_it_one_request_per_interval() {
    let hostile = Hostile::start(|_| Answer::json(500, "{}")).await;
    let clock = ManualClock::new();
    let mut config = VerifierConfig::new(
        vec![IssuerConfig {
            url: hostile.base_url(),
            introspection: Some(samay_server::IntrospectionClient {
                client_id: "samay-server".into(),
                client_secret: "secret".into(),
            }),
        }],
        AUDIENCE,
    );
    config.http_timeout = Duration::from_millis(300);
    let verifier = TokenVerifier::with_clock(config, http(), clock.clone()).unwrap();
    for i in 0..5 {
        let failure = verify_bounded(&verifier, &format!("opaque-token-{i}")).await;
        assert!(
            matches!(&failure, Err(e @ AuthFailure::IssuerUnavailable(_)) if e.is_retryable()),
            "{failure:?}"
        );
    }
    assert_eq!(hostile.seen().len(), 1);
    clock.advance(Duration::from_secs(30));
    let _ = verify_bounded(&verifier, "opaque-token").await;
    assert_eq!(hostile.seen().len(), 2);
}

/// OpenID Connect Discovery §4.3: a document that names another issuer is not this issuer's,
/// and its `jwks_uri` is not followed.
#[tokio::test]
async fn a_discovery_document_naming_another_issuer_is_refused() {
    let hostile = Hostile::start(|seen| match seen.target.as_str() {
        "/.well-known/openid-configuration" => Answer::json(
            200,
            json!({"issuer": "https://elsewhere.test", "jwks_uri": "https://elsewhere.test/jwks"})
                .to_string(),
        ),
        _ => Answer::json(404, "{}"),
    })
    .await;
    let verifier = verifier_with_deadline(&hostile.base_url(), ManualClock::new());
    let failure = verify_bounded(&verifier, &token_naming(&hostile.base_url()).await).await;
    match failure {
        Err(e @ AuthFailure::IssuerUnavailable(_)) => {
            assert!(e.to_string().contains("issuer differs"), "{e}");
        }
        other => panic!("expected IssuerUnavailable, got {other:?}"),
    }
    assert_eq!(
        hostile.seen().len(),
        1,
        "only the discovery document was asked for"
    );
}
