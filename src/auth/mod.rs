//! Where bearer tokens come from. The engine only sees [`TokenSource`]; the environment token
//! (`AW_SYNC_SAMAY_TOKEN`) is one implementation, the OAuth login another.

pub mod browser;
pub mod callback;
pub mod device;
pub mod id_token;
pub mod oauth;
pub mod preflight;
pub mod provider;
pub mod store;
pub mod tokens;

use std::fmt;
use std::future::Future;
use std::pin::Pin;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Environment variable holding a bearer token that is used as is (no refresh), like `GH_TOKEN`.
pub const TOKEN_ENV: &str = "AW_SYNC_SAMAY_TOKEN";

/// A bearer token. `Debug` and `Display` never print it, so it cannot leak into logs.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken(String);

impl AccessToken {
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }
    /// The only way to read the secret: for the `Authorization` header.
    pub fn secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken(<redacted>)")
    }
}

/// Why no usable token could be had. The engine decides from the variant: wait and retry, or
/// idle until the user logs in again.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No token at all (never logged in, or logged out): idle, say "run --login".
    #[error("login required: no upstream token; run {} (with [auth] set in the config file), or set AW_SYNC_SAMAY_TOKEN", crate::hint::command("--login"))]
    LoginRequired,
    /// The token was rejected and cannot be refreshed (static token, or `invalid_grant`).
    #[error("the token was rejected by the upstream and cannot be refreshed: {0}; log in again with {login} (or replace AW_SYNC_SAMAY_TOKEN)", login = crate::hint::command("--login"))]
    Rejected(String),
    /// The provider or keyring could not be reached now; try again later.
    #[error("token refresh failed for now: {0}")]
    Transient(String),
}

impl crate::retry::Transient for AuthError {
    /// Only a provider or keyring that could not be reached passes by waiting; the others
    /// wait for the user (a login).
    fn is_transient(&self) -> bool {
        matches!(self, AuthError::Transient(_))
    }
}

/// An account, as the sync state keys its records by it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Stable and unique per account (`oidc:<issuer>|<subject>`); never a secret.
    pub key: String,
    /// How `--status` names it (the user name, else the subject).
    pub label: String,
}

/// A source of bearer tokens for the upstream.
pub trait TokenSource: Send + Sync {
    /// A token to use now.
    fn token(&self) -> BoxFuture<'_, Result<AccessToken, AuthError>>;
    /// The upstream answered 401 to `rejected`: get a fresh token once, or say why not.
    fn refresh<'a>(
        &'a self,
        rejected: &'a AccessToken,
    ) -> BoxFuture<'a, Result<AccessToken, AuthError>>;
    /// The signed-in user's subject, sent as `user_id`; `None` when unknown.
    fn user_id(&self) -> Option<String>;
    /// Who the tokens belong to, when they say so themselves (a login: its issuer and
    /// subject), as of the last token handed out. `None`: ask the upstream (`v1/me`).
    fn identity(&self) -> Option<Identity> {
        None
    }
    /// The login these tokens come from, when [`TokenSource::identity`] cannot name the
    /// account (a provider configured without an issuer or userinfo gives no subject) and the
    /// upstream has no `v1/me` either: the records are then kept per login rather than per
    /// access token, which every refresh replaces (keying by the token would send the whole
    /// history again after each refresh).
    fn login(&self) -> Option<Identity> {
        None
    }
    /// Where the token lives, for `--status` ("environment", "keyring", "file", ...).
    fn describe(&self) -> String;
}

/// A fixed token (from `AW_SYNC_SAMAY_TOKEN`, or the one `--dev` makes for its embedded upstream).
pub struct StaticToken {
    token: AccessToken,
    origin: &'static str,
}

impl StaticToken {
    pub fn new(token: AccessToken, origin: &'static str) -> Self {
        Self { token, origin }
    }

    /// The token from `AW_SYNC_SAMAY_TOKEN`, when set and not blank.
    pub fn from_env() -> Option<Self> {
        let value = std::env::var(TOKEN_ENV).ok()?;
        let value = value.trim();
        (!value.is_empty())
            .then(|| Self::new(AccessToken::new(value), "environment (AW_SYNC_SAMAY_TOKEN)"))
    }
}

impl TokenSource for StaticToken {
    fn token(&self) -> BoxFuture<'_, Result<AccessToken, AuthError>> {
        Box::pin(async move { Ok(self.token.clone()) })
    }
    fn refresh<'a>(
        &'a self,
        _rejected: &'a AccessToken,
    ) -> BoxFuture<'a, Result<AccessToken, AuthError>> {
        Box::pin(async move {
            Err(AuthError::Rejected(format!(
                "the {} token cannot be refreshed",
                self.origin
            )))
        })
    }
    fn user_id(&self) -> Option<String> {
        None
    }
    fn describe(&self) -> String {
        self.origin.to_string()
    }
}

/// No token configured: every call says "login required", so the daemon idles instead of exiting.
pub struct NoToken;

impl TokenSource for NoToken {
    fn token(&self) -> BoxFuture<'_, Result<AccessToken, AuthError>> {
        Box::pin(async { Err(AuthError::LoginRequired) })
    }
    fn refresh<'a>(
        &'a self,
        _rejected: &'a AccessToken,
    ) -> BoxFuture<'a, Result<AccessToken, AuthError>> {
        Box::pin(async { Err(AuthError::LoginRequired) })
    }
    fn user_id(&self) -> Option<String> {
        None
    }
    fn describe(&self) -> String {
        "none".to_string()
    }
}
