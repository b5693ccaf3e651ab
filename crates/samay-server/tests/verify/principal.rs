//! The user key: unambiguous and reversible; configuration checks.

use proptest::prelude::*;
use samay_server::{IssuerConfig, Principal, TokenVerifier, VerifierConfig, VerifierConfigError};

use super::http;

fn principal(issuer: &str, subject: &str) -> Principal {
    Principal {
        issuer: issuer.to_string(),
        subject: subject.to_string(),
    }
}

#[test]
fn user_key_reads_as_issuer_hash_subject() {
    assert_eq!(
        principal("https://idp.example", "alice").user_key(),
        "https://idp.example#alice"
    );
}

#[test]
fn user_key_separates_what_the_separator_would_merge() {
    let a = principal("https://idp.example#x", "y");
    let b = principal("https://idp.example", "x#y");
    let c = principal("https://idp.example%23x", "y");
    assert_ne!(a.user_key(), b.user_key());
    assert_ne!(a.user_key(), c.user_key());
    assert_ne!(b.user_key(), c.user_key());
    for p in [a, b, c] {
        assert_eq!(Principal::from_user_key(&p.user_key()), Some(p));
    }
}

proptest! {
    #[test]
    fn user_key_round_trips(issuer in "[a-z:/%#.]{0,12}", subject in "[a-z%#]{0,8}") {
        let p = principal(&issuer, &subject);
        prop_assert_eq!(Principal::from_user_key(&p.user_key()), Some(p));
    }
}

#[test]
fn configuration_mistakes_are_refused() {
    let try_new = |issuers: &[&str], audience: &str| {
        TokenVerifier::new(
            VerifierConfig::new(
                issuers.iter().map(|i| IssuerConfig::new(*i)).collect(),
                audience,
            ),
            http(),
        )
        .map(|_| ())
    };
    assert_eq!(try_new(&[], "api"), Err(VerifierConfigError::NoIssuer));
    assert_eq!(
        try_new(&["https://idp.example"], ""),
        Err(VerifierConfigError::NoAudience)
    );
    assert!(matches!(
        try_new(&["http://idp.example"], "api"),
        Err(VerifierConfigError::NotHttps(_))
    ));
    assert!(matches!(
        try_new(&["https://idp.example/#x"], "api"),
        Err(VerifierConfigError::QueryOrFragment(_))
    ));
    assert!(matches!(
        try_new(&["https://idp.example", "https://idp.example"], "api"),
        Err(VerifierConfigError::Duplicate(_))
    ));
    assert_eq!(
        try_new(&["https://idp.example", "http://127.0.0.1:8080"], "api"),
        Ok(())
    );
}
