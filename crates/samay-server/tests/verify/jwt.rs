//! JWT access tokens of the test issuer: good ones of every allowed algorithm, and each kind of
//! bad one rejected with its own reason.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use samay_server::{AuthFailure, Principal};
use samay_testkit::issuer::{self, unix_now, TestIssuer};
use serde_json::{json, Value};

use super::{standard_issuer, verifier, ManualClock};

fn alice(issuer: &TestIssuer) -> Principal {
    Principal {
        issuer: issuer.issuer(),
        subject: "alice".to_string(),
    }
}

/// `claims` with `changes` merged in (a `null` removes the claim).
fn with(mut claims: Value, changes: Value) -> Value {
    for (k, v) in changes.as_object().unwrap() {
        if v.is_null() {
            claims.as_object_mut().unwrap().remove(k);
        } else {
            claims[k] = v.clone();
        }
    }
    claims
}

/// The token with one character of its signature changed (a middle one: every bit counts).
fn tamper_signature(token: &str) -> String {
    let (input, signature) = token.rsplit_once('.').unwrap();
    let mut sig: Vec<char> = signature.chars().collect();
    let mid = sig.len() / 2;
    sig[mid] = if sig[mid] == 'A' { 'B' } else { 'A' };
    format!("{input}.{}", sig.into_iter().collect::<String>())
}

#[tokio::test]
async fn good_tokens_of_each_allowed_algorithm_verify() {
    let issuer = standard_issuer().await;
    let verifier = verifier(&[issuer.issuer()], ManualClock::new());
    for kid in ["rsa-1", "ec-1", "ed-1"] {
        let token = issuer.sign(kid, &issuer.claims("alice"));
        assert_eq!(verifier.verify(&token).await, Ok(alice(&issuer)), "{kid}");
    }
    let claims = issuer.claims("alice");
    let accepted = [
        // `aud` as an array that contains the audience.
        issuer.sign(
            "ec-1",
            &with(claims.clone(), json!({"aud": ["other", issuer::AUDIENCE]})),
        ),
        // No `typ`, or the plain `JWT` many providers send; no `kid` (every key is tried).
        issuer.sign_raw(&json!({"alg": "ES256"}), &claims, "ec-1"),
        issuer.sign_raw(&json!({"alg": "EdDSA", "typ": "JWT"}), &claims, "ed-1"),
        // Within the 60 s leeway: expired 10 s ago, valid from 10 s on.
        issuer.sign(
            "rsa-1",
            &with(claims.clone(), json!({"exp": unix_now() - 10})),
        ),
        issuer.sign(
            "rsa-1",
            &with(claims.clone(), json!({"nbf": unix_now() + 10})),
        ),
    ];
    for token in accepted {
        assert_eq!(verifier.verify(&token).await, Ok(alice(&issuer)));
    }
    // One discovery and one JWKS fetch served all of them.
    assert_eq!(issuer.jwks_requests(), 1);
}

#[tokio::test]
async fn each_bad_token_is_rejected_with_its_reason() {
    let issuer = standard_issuer().await;
    let verifier = verifier(&[issuer.issuer()], ManualClock::new());
    let good = issuer.claims("alice");
    let now = unix_now();
    let rsa_pem = issuer.key("rsa-1").public_pem.clone().unwrap();
    let unsigned = format!(
        "{}.",
        issuer::signing_input(&json!({"alg": "none", "kid": "rsa-1"}), &good)
    );
    let cases: Vec<(&str, String, AuthFailure)> = vec![
        ("empty", String::new(), AuthFailure::Missing),
        (
            "expired",
            issuer.sign("rsa-1", &with(good.clone(), json!({"exp": now - 120}))),
            AuthFailure::Expired,
        ),
        (
            "not yet valid",
            issuer.sign("ec-1", &with(good.clone(), json!({"nbf": now + 600}))),
            AuthFailure::NotYetValid,
        ),
        (
            "wrong aud",
            issuer.sign(
                "ed-1",
                &with(good.clone(), json!({"aud": "https://other.test/api"})),
            ),
            AuthFailure::BadAudience,
        ),
        (
            "aud list without ours",
            issuer.sign("ed-1", &with(good.clone(), json!({"aud": ["a", "b"]}))),
            AuthFailure::BadAudience,
        ),
        (
            "no aud",
            issuer.sign("ed-1", &with(good.clone(), json!({"aud": null}))),
            AuthFailure::BadAudience,
        ),
        (
            "wrong iss",
            issuer.sign(
                "rsa-1",
                &with(good.clone(), json!({"iss": "http://127.0.0.1:1"})),
            ),
            AuthFailure::BadIssuer,
        ),
        (
            "iss with a trailing slash",
            issuer.sign(
                "rsa-1",
                &with(
                    good.clone(),
                    json!({"iss": format!("{}/", issuer.issuer())}),
                ),
            ),
            AuthFailure::BadIssuer,
        ),
        ("alg none", unsigned, AuthFailure::AlgorithmNotAllowed),
        (
            "HS256 keyed with the RSA public key",
            issuer::sign_hs256(
                &json!({"alg": "HS256", "kid": "rsa-1", "typ": "at+jwt"}),
                &good,
                rsa_pem.as_bytes(),
            ),
            AuthFailure::AlgorithmNotAllowed,
        ),
        (
            "HS256 without a kid",
            issuer::sign_hs256(&json!({"alg": "HS256"}), &good, rsa_pem.as_bytes()),
            AuthFailure::AlgorithmNotAllowed,
        ),
        (
            "ES256 claimed for the RSA key",
            issuer.sign_raw(&json!({"alg": "ES256", "kid": "rsa-1"}), &good, "rsa-1"),
            AuthFailure::AlgorithmNotAllowed,
        ),
        (
            "RS384 (not on the allow-list)",
            issuer.sign_raw(&json!({"alg": "RS384", "kid": "rsa-1"}), &good, "rsa-1"),
            AuthFailure::AlgorithmNotAllowed,
        ),
        (
            "unknown kid",
            issuer.sign_raw(&json!({"alg": "RS256", "kid": "nobody"}), &good, "rsa-1"),
            AuthFailure::UnknownKey,
        ),
        (
            "tampered signature",
            tamper_signature(&issuer.sign("rsa-1", &good)),
            AuthFailure::BadSignature,
        ),
        (
            "tampered payload",
            {
                let token = issuer.sign("ec-1", &good);
                let parts: Vec<&str> = token.split('.').collect();
                let forged = URL_SAFE_NO_PAD
                    .encode(with(good.clone(), json!({"sub": "mallory"})).to_string());
                format!("{}.{forged}.{}", parts[0], parts[2])
            },
            AuthFailure::BadSignature,
        ),
        (
            "no sub",
            issuer.sign("rsa-1", &with(good.clone(), json!({"sub": null}))),
            AuthFailure::MissingClaim("sub"),
        ),
        (
            "empty sub",
            issuer.sign("rsa-1", &with(good.clone(), json!({"sub": ""}))),
            AuthFailure::MissingClaim("sub"),
        ),
        (
            "no exp",
            issuer.sign("rsa-1", &with(good.clone(), json!({"exp": null}))),
            AuthFailure::MissingClaim("exp"),
        ),
        (
            "exp as a string",
            issuer.sign("rsa-1", &with(good.clone(), json!({"exp": "tomorrow"}))),
            AuthFailure::Malformed("exp"),
        ),
        (
            "nbf as a string",
            issuer.sign("rsa-1", &with(good.clone(), json!({"nbf": "today"}))),
            AuthFailure::Malformed("nbf"),
        ),
        (
            "a logout token",
            issuer.sign_raw(
                &json!({"alg": "RS256", "kid": "rsa-1", "typ": "logout+jwt"}),
                &good,
                "rsa-1",
            ),
            AuthFailure::WrongTokenType,
        ),
        (
            "crit header",
            issuer.sign_raw(
                &json!({"alg": "RS256", "kid": "rsa-1", "crit": ["exp"]}),
                &good,
                "rsa-1",
            ),
            AuthFailure::Malformed("crit header"),
        ),
        (
            "not base64",
            "!!!.???.***".to_string(),
            AuthFailure::Malformed("characters outside RFC 6750 b64token"),
        ),
        (
            "header not JSON",
            "eA.eA.eA".to_string(),
            AuthFailure::Malformed("header"),
        ),
        (
            "too long",
            "a".repeat(samay_server::MAX_TOKEN_BYTES + 1),
            AuthFailure::Malformed("longer than 16 KiB"),
        ),
    ];
    for (name, token, expected) in cases {
        let got = verifier.verify(&token).await;
        assert_eq!(got, Err(expected.clone()), "{name}");
        assert!(!expected.is_retryable(), "{name}");
    }
}

/// The issuer is picked by `iss`, but only that issuer's keys can make the token valid: a
/// second accepted issuer cannot mint tokens in the first one's name, even with the same `kid`.
#[tokio::test]
async fn an_issuer_cannot_sign_in_another_issuers_name() {
    let victim = standard_issuer().await;
    let attacker = standard_issuer_with_fresh_keys().await;
    let verifier = verifier(&[victim.issuer(), attacker.issuer()], ManualClock::new());
    // The attacker's own tokens are fine: it is an accepted issuer.
    let own = attacker.sign("ed-1", &attacker.claims("mallory"));
    assert_eq!(
        verifier.verify(&own).await.map(|p| p.issuer),
        Ok(attacker.issuer())
    );
    // In the victim's name, signed with the attacker's key under the victim's kid.
    let forged = attacker.sign(
        "ed-1",
        &with(attacker.claims("alice"), json!({"iss": victim.issuer()})),
    );
    assert_eq!(
        verifier.verify(&forged).await,
        Err(AuthFailure::BadSignature)
    );
    // A `jku` header pointing at the attacker's JWKS is never followed.
    let attacker_jwks = attacker.jwks_requests();
    let jku = attacker.sign_raw(
        &json!({"alg": "EdDSA", "kid": "attacker-only", "jku": format!("{}/jwks", attacker.issuer())}),
        &with(attacker.claims("alice"), json!({"iss": victim.issuer()})),
        "ed-1",
    );
    assert_eq!(verifier.verify(&jku).await, Err(AuthFailure::UnknownKey));
    assert_eq!(attacker.jwks_requests(), attacker_jwks);
}

async fn standard_issuer_with_fresh_keys() -> TestIssuer {
    use samay_testkit::issuer::{KeyKind, SigningKey};
    let keys = tokio::task::spawn_blocking(|| {
        vec![
            SigningKey::generate(KeyKind::Ec, "ec-1"),
            SigningKey::generate(KeyKind::Ed, "ed-1"),
        ]
    })
    .await
    .unwrap();
    TestIssuer::start(keys).await
}

#[test]
fn failure_reasons_are_distinct_and_only_outages_are_retryable() {
    let all = [
        AuthFailure::Missing,
        AuthFailure::Malformed("x"),
        AuthFailure::Expired,
        AuthFailure::NotYetValid,
        AuthFailure::BadSignature,
        AuthFailure::BadAudience,
        AuthFailure::BadIssuer,
        AuthFailure::UnknownKey,
        AuthFailure::AlgorithmNotAllowed,
        AuthFailure::MissingClaim("sub"),
        AuthFailure::WrongTokenType,
        AuthFailure::Inactive,
        AuthFailure::OpaqueNotSupported,
        AuthFailure::IssuerUnavailable("down".into()),
    ];
    let reasons: std::collections::HashSet<&str> = all.iter().map(AuthFailure::reason).collect();
    assert_eq!(reasons.len(), all.len());
    let retryable: Vec<&str> = all
        .iter()
        .filter(|f| f.is_retryable())
        .map(AuthFailure::reason)
        .collect();
    assert_eq!(retryable, ["issuer_unavailable"]);

    // RFC 6750 §3: the challenge of each 401, in its restricted charset; none for the 503.
    assert_eq!(
        AuthFailure::Missing.www_authenticate().as_deref(),
        Some("Bearer")
    );
    assert_eq!(
        AuthFailure::Expired.www_authenticate().as_deref(),
        Some(r#"Bearer error="invalid_token", error_description="token expired""#)
    );
    assert_eq!(all.last().unwrap().www_authenticate(), None);
    for failure in &all[1..all.len() - 1] {
        let challenge = failure.www_authenticate().unwrap();
        let description = challenge
            .split_once("error_description=\"")
            .unwrap()
            .1
            .trim_end_matches('"');
        assert!(
            description
                .bytes()
                .all(|b| (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\'),
            "{challenge}"
        );
    }
}
