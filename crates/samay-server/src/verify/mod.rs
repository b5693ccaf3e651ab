//! Verifying the bearer tokens of real OpenID providers (`--issuer`, `--audience`): who a
//! request speaks for is `(issuer, sub)` of a token one of the configured issuers signed (or,
//! for an opaque token, says is active), never anything in the request body.
//!
//! - JWT access tokens (RFC 9068): the issuer is picked by `iss` (exact match with a configured
//!   issuer), then the signature must verify with a key from THAT issuer's JWKS
//!   (`jwks_uri` from `/.well-known/openid-configuration`). Only RS256, ES256 and EdDSA, each
//!   only with a key of its type (RSA, EC P-256, OKP Ed25519); never `none` or HS*. Keys are
//!   cached; an unknown `kid` refetches the JWKS at most once per `jwks_min_refetch`.
//!   Then `aud` must contain the audience, `exp`/`nbf` hold within `leeway`, `sub` is present.
//! - Opaque tokens: RFC 7662 introspection at each issuer that advertises an
//!   `introspection_endpoint` and has client credentials configured; positive answers are
//!   cached briefly in a bounded map.
//! - Every call to an issuer has a deadline and a size cap ([`VerifierConfig::http_timeout`],
//!   [`VerifierConfig::max_response_bytes`]): a hostile or broken issuer makes verification
//!   fail with [`AuthFailure::IssuerUnavailable`], never hang or fill memory.

mod claims;
mod fetch;
mod introspect;
mod jwt;
mod keys;
mod principal;

use std::sync::Arc;
use std::time::{Duration, Instant};

use url::Url;

pub use principal::{AuthFailure, Principal, MAX_SUBJECT_BYTES};

use introspect::IntrospectionCache;
use keys::IssuerState;

/// Longest bearer token looked at. Real access tokens are a few KiB at most; a larger header
/// is refused before any decoding.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Client credentials of this server at an issuer, for RFC 7662 introspection
/// (HTTP Basic, `client_secret_basic`).
#[derive(Clone, PartialEq, Eq)]
pub struct IntrospectionClient {
    pub client_id: String,
    pub client_secret: String,
}

impl std::fmt::Debug for IntrospectionClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntrospectionClient")
            .field("client_id", &self.client_id)
            .field("client_secret", &"…")
            .finish()
    }
}

/// One accepted issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerConfig {
    /// The issuer identifier, exactly as in its tokens' `iss` and its discovery document's
    /// `issuer` (e.g. `https://accounts.example.com`, no trailing slash unless the issuer has
    /// one). https, or http on a loopback host (development and tests).
    pub url: String,
    /// Set to accept the issuer's opaque tokens through introspection.
    pub introspection: Option<IntrospectionClient>,
}

impl IssuerConfig {
    /// An issuer whose JWT access tokens are accepted (no introspection).
    pub fn new(url: impl Into<String>) -> IssuerConfig {
        IssuerConfig {
            url: url.into(),
            introspection: None,
        }
    }
}

/// What tokens the server accepts. [`VerifierConfig::new`] fills in the defaults.
#[derive(Debug, Clone)]
pub struct VerifierConfig {
    pub issuers: Vec<IssuerConfig>,
    /// Must be in the token's `aud` (the resource indicator the clients ask for).
    pub audience: String,
    /// VerifierClock skew tolerated on `exp` and `nbf` (default 60 s).
    pub leeway: Duration,
    /// Deadline of one call to an issuer, connect to last byte (default 10 s).
    pub http_timeout: Duration,
    /// Largest discovery document, JWKS or introspection answer read (default 256 KiB).
    pub max_response_bytes: usize,
    /// An unknown `kid` refetches the JWKS at most this often per issuer (default 30 s); also
    /// the pause after a failed fetch.
    pub jwks_min_refetch: Duration,
    /// Keys older than this are refetched when next used (default 10 min), so a key the
    /// issuer withdrew stops verifying; if that refetch fails, the old keys keep serving.
    pub jwks_max_age: Duration,
    /// How long a positive introspection answer is reused (default 30 s): the delay before a
    /// revoked opaque token stops working.
    pub introspection_cache_ttl: Duration,
    /// Cached introspection answers at most (default 10,000).
    pub introspection_cache_size: usize,
}

impl VerifierConfig {
    pub fn new(issuers: Vec<IssuerConfig>, audience: impl Into<String>) -> VerifierConfig {
        VerifierConfig {
            issuers,
            audience: audience.into(),
            leeway: Duration::from_secs(60),
            http_timeout: Duration::from_secs(10),
            max_response_bytes: 256 * 1024,
            jwks_min_refetch: Duration::from_secs(30),
            jwks_max_age: Duration::from_secs(600),
            introspection_cache_ttl: Duration::from_secs(30),
            introspection_cache_size: 10_000,
        }
    }
}

/// A configuration the verifier cannot work with (the server refuses to start).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifierConfigError {
    #[error("no issuer configured: tokens of which OpenID provider should be accepted?")]
    NoIssuer,
    #[error("no audience configured: the resource indicator clients request tokens for")]
    NoAudience,
    #[error("issuer {0:?} is not a URL")]
    NotAUrl(String),
    #[error("issuer {0:?} must use https (http only on a loopback address)")]
    NotHttps(String),
    #[error("issuer {0:?} must not have a query or fragment (OpenID Connect Discovery §2)")]
    QueryOrFragment(String),
    #[error("issuer {0:?} is configured twice")]
    Duplicate(String),
}

/// Monotonic time for the verifier's caches and refetch limits, so tests can move it instead
/// of waiting. Token lifetimes (`exp`, `nbf`) are wall-clock time and do not use it.
pub trait VerifierClock: Send + Sync + 'static {
    fn now(&self) -> Instant;
}

/// [`VerifierClock`] of the real monotonic time.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl VerifierClock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// Verifies bearer tokens; cheap to share (`Arc`), safe to call from many tasks at once.
pub struct TokenVerifier {
    config: VerifierConfig,
    http: reqwest::Client,
    issuers: Vec<IssuerState>,
    clock: Arc<dyn VerifierClock>,
    introspection_cache: IntrospectionCache,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl TokenVerifier {
    /// Checks the configuration; fetches nothing yet (an issuer that is down at start only
    /// makes its tokens wait, with 503, until it is back).
    ///
    /// `http` should not follow redirects (`redirect::Policy::none()`): discovery, JWKS and
    /// introspection answer directly.
    pub fn new(
        config: VerifierConfig,
        http: reqwest::Client,
    ) -> Result<TokenVerifier, VerifierConfigError> {
        TokenVerifier::with_clock(config, http, Arc::new(SystemClock))
    }

    /// [`TokenVerifier::new`] with a clock for the caches (tests).
    pub fn with_clock(
        config: VerifierConfig,
        http: reqwest::Client,
        clock: Arc<dyn VerifierClock>,
    ) -> Result<TokenVerifier, VerifierConfigError> {
        if config.issuers.is_empty() {
            return Err(VerifierConfigError::NoIssuer);
        }
        if config.audience.is_empty() {
            return Err(VerifierConfigError::NoAudience);
        }
        let mut issuers: Vec<IssuerState> = Vec::with_capacity(config.issuers.len());
        for issuer in &config.issuers {
            if issuers.iter().any(|i| i.config.url == issuer.url) {
                return Err(VerifierConfigError::Duplicate(issuer.url.clone()));
            }
            issuers.push(IssuerState::new(
                issuer.clone(),
                discovery_url(&issuer.url)?,
            ));
        }
        Ok(TokenVerifier {
            config,
            http,
            issuers,
            clock,
            introspection_cache: IntrospectionCache::new(),
        })
    }

    pub fn config(&self) -> &VerifierConfig {
        &self.config
    }

    /// Who `bearer` (the token, without the `Bearer ` prefix) speaks for.
    pub async fn verify(&self, bearer: &str) -> Result<Principal, AuthFailure> {
        let token = bearer.trim();
        if token.is_empty() {
            return Err(AuthFailure::Missing);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthFailure::Malformed("longer than 16 KiB"));
        }
        // RFC 6750 §2.1 b64token characters only: nothing that could smuggle a header or a
        // form field into an introspection request.
        if !token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b))
        {
            return Err(AuthFailure::Malformed(
                "characters outside RFC 6750 b64token",
            ));
        }
        match jwt::split_header(token) {
            Some(header) => self.verify_jwt(token, header?).await,
            None if token.split('.').count() == 5 => {
                Err(AuthFailure::Malformed("encrypted JWT (JWE)"))
            }
            None => self.verify_opaque(token).await,
        }
    }
}

/// `{issuer}/.well-known/openid-configuration` (OpenID Connect Discovery §4: appended to the
/// issuer, after removing a trailing `/`).
fn discovery_url(issuer: &str) -> Result<Url, VerifierConfigError> {
    let url = Url::parse(issuer).map_err(|_| VerifierConfigError::NotAUrl(issuer.to_string()))?;
    if url.query().is_some() || url.fragment().is_some() || issuer.contains('#') {
        return Err(VerifierConfigError::QueryOrFragment(issuer.to_string()));
    }
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    };
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        _ => return Err(VerifierConfigError::NotHttps(issuer.to_string())),
    }
    Url::parse(&format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    ))
    .map_err(|_| VerifierConfigError::NotAUrl(issuer.to_string()))
}
