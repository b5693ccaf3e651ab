//! The seam between the routes and token verification. The routes hand the bearer token to an
//! [`Authenticator`] and get a [`Principal`] (whose data the request may touch) or an
//! [`AuthError`]. The dev server's registry and built-in provider are one implementation
//! ([`crate::http::DevAuthenticator`]); [`StaticTokens`] (tests, single-user setups) another;
//! JWT/JWKS and introspection verification plug in the same way.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use crate::verify::{
    AuthFailure, IntrospectionClient, IssuerConfig, TokenVerifier, VerifierConfig,
};

/// The issuer name of the dev server's own users (static tokens and its built-in provider).
/// Their key is the bare subject, as dev databases have always been keyed.
pub const DEV_ISSUER: &str = "samay-dev";

pub use crate::verify::Principal;

/// The key the store files a user's data under, and what `GET v1/me` answers:
/// [`Principal::user_key`] (the issuer-qualified subject, so two providers' "alice" are two
/// users) — except for the dev server's own users, keyed by the bare subject as dev databases
/// have always been.
pub fn store_key(principal: &Principal) -> String {
    if principal.issuer == DEV_ISSUER {
        principal.subject.clone()
    } else {
        principal.user_key()
    }
}

/// Why a request is not authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// The token is missing, malformed or refused: 401. The reason is a fixed metrics label
    /// (`missing`, `unknown`, `expired`, `bad_signature`…).
    Rejected(&'static str),
    /// The token cannot be checked now (the issuer is unreachable): 503, so the client retries
    /// instead of throwing away a token that may be good.
    Unavailable(String),
}

pub type AuthFuture<'a> = Pin<Box<dyn Future<Output = Result<Principal, AuthError>> + Send + 'a>>;

/// Checks a bearer token (the text after `Bearer `).
pub trait Authenticator: Send + Sync + 'static {
    fn authenticate<'a>(&'a self, bearer: &'a str) -> AuthFuture<'a>;
}

/// A fixed set of tokens, each for one subject of the issuer `static`.
pub struct StaticTokens {
    tokens: HashMap<String, Principal>,
}

/// Never prints the tokens.
impl std::fmt::Debug for StaticTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StaticTokens({} tokens)", self.tokens.len())
    }
}

/// The issuer name of [`StaticTokens`].
pub const STATIC_ISSUER: &str = "static";

impl StaticTokens {
    /// `(subject, token)` pairs.
    pub fn new(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        Self {
            tokens: pairs
                .into_iter()
                .map(|(subject, token)| {
                    (
                        token,
                        Principal {
                            issuer: STATIC_ISSUER.into(),
                            subject,
                        },
                    )
                })
                .collect(),
        }
    }

    /// Parses `SUBJECT=TOKEN,SUBJECT=TOKEN`.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut pairs = Vec::new();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match item.split_once('=') {
                Some((subject, token)) if !subject.is_empty() && token.len() >= 16 => {
                    pairs.push((subject.to_string(), token.to_string()))
                }
                Some((subject, _)) if !subject.is_empty() => {
                    return Err(format!(
                        "the token of {subject:?} is shorter than 16 characters"
                    ))
                }
                _ => return Err("expected SUBJECT=TOKEN[,SUBJECT=TOKEN…]".into()),
            }
        }
        Ok(Self::new(pairs))
    }
}

impl Authenticator for StaticTokens {
    fn authenticate<'a>(&'a self, bearer: &'a str) -> AuthFuture<'a> {
        let found = self.tokens.get(bearer).cloned();
        Box::pin(async move { found.ok_or(AuthError::Rejected("unknown")) })
    }
}

/// The authenticator for `--issuer`: JWT access tokens checked against each issuer's JWKS,
/// opaque tokens through introspection when `introspection` credentials are given
/// ([`crate::verify`]). An issuer that cannot be reached is 503 (retry), never 401.
pub fn issuer_authenticator(
    issuers: &[String],
    audience: Option<&str>,
    introspection: Option<IntrospectionClient>,
) -> anyhow::Result<std::sync::Arc<dyn Authenticator>> {
    let audience = audience.filter(|a| !a.is_empty()).ok_or_else(|| {
        anyhow::anyhow!("--audience (SAMAY_AUDIENCE) is needed with --issuer: the resource identifier access tokens must be issued for")
    })?;
    let issuers = issuers
        .iter()
        .map(|url| IssuerConfig {
            introspection: introspection.clone(),
            ..IssuerConfig::new(url.clone())
        })
        .collect();
    // Discovery, JWKS and introspection answer directly: no redirects (the verifier's docs).
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let verifier = TokenVerifier::new(VerifierConfig::new(issuers, audience), http)?;
    Ok(std::sync::Arc::new(verifier))
}

impl Authenticator for TokenVerifier {
    fn authenticate<'a>(&'a self, bearer: &'a str) -> AuthFuture<'a> {
        Box::pin(async move {
            self.verify(bearer).await.map_err(|failure| match failure {
                AuthFailure::IssuerUnavailable(why) => AuthError::Unavailable(why),
                other => AuthError::Rejected(other.reason()),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_of_two_issuers_are_two_users() {
        let a = Principal {
            issuer: "https://a.example".into(),
            subject: "alice".into(),
        };
        let b = Principal {
            issuer: "https://b.example".into(),
            subject: "alice".into(),
        };
        assert_ne!(store_key(&a), store_key(&b));
        assert_eq!(store_key(&a), "https://a.example#alice");
        let dev = Principal {
            issuer: DEV_ISSUER.into(),
            subject: "alice".into(),
        };
        assert_eq!(store_key(&dev), "alice");
    }

    #[test]
    fn static_token_specs_are_checked() {
        assert!(StaticTokens::parse("alice=0123456789abcdef").is_ok());
        assert!(StaticTokens::parse("alice=short")
            .unwrap_err()
            .contains("16"));
        assert!(StaticTokens::parse("justatoken").is_err());
    }
}
