//! The OAuth 2 / OpenID Connect side of the login, one concern per file: finding the
//! provider's endpoints ([`super::provider`]), the authorization-code flow with PKCE
//! (`--login`, here, with reading a token endpoint's answer), keeping a valid access token for
//! the daemon ([`session`]: [`OAuthSession`], a [`super::TokenSource`]), and `--logout`
//! ([`logout`]).
//!
//! The security rules this follows are in `docs/login.md`; the ones that shape the code:
//! PKCE S256 with a fresh verifier every login, a one-time `state` checked before the exchange,
//! `iss` checked when the provider sends it (RFC 9207), no redirects followed from the token
//! endpoint, rotated refresh tokens persisted *before* the new access token is used, and one
//! refresher at a time across processes (a reused rotated refresh token revokes the whole grant).

use std::time::Duration;

use chrono::{DateTime, Utc};
use oauth2::basic::{
    BasicErrorResponse, BasicErrorResponseType, BasicRevocationErrorResponse,
    BasicTokenIntrospectionResponse, BasicTokenType,
};
use oauth2::{
    AuthUrl, AuthorizationCode, ClientId, CsrfToken, EndpointNotSet, EndpointSet, ExtraTokenFields,
    PkceCodeChallenge, RedirectUrl, RequestTokenError, Scope, StandardErrorResponse,
    StandardRevocableToken, StandardTokenResponse, TokenResponse, TokenUrl,
};
use serde::{Deserialize, Serialize};
use url::Url;

use super::callback::{self, CallbackOptions, CallbackWaiter, Finish, PendingCallback};
use super::id_token::{verified_claims, Claims};
use super::provider::get_json;
pub use super::provider::{http_client, resolve_provider, Provider, ProviderHttp};
use super::store::TokenStore;
use super::tokens::{Account, StoredTokens};
use crate::config::AuthConfig;
use crate::printable::printable;

mod logout;
mod session;

pub use logout::{logout, LogoutReport, NoRevocationEndpoint};
pub use session::{account_key, refresh_margin, OAuthSession};

/// Whether `[auth]` says enough for a login: a client id, and an issuer or both endpoints.
pub fn login_configured(cfg: &AuthConfig) -> bool {
    cfg.enabled
        && !cfg.client_id.trim().is_empty()
        && (!cfg.issuer.trim().is_empty()
            || (!cfg.auth_url.trim().is_empty() && !cfg.token_url.trim().is_empty()))
}

/// The stored entry for the configured provider and client, known without any network call
/// (the issuer as configured, else the token endpoint), so the daemon finds its tokens offline.
pub fn configured_account(cfg: &AuthConfig) -> Account {
    let issuer = cfg.issuer.trim().trim_end_matches('/');
    Account {
        issuer: if issuer.is_empty() {
            cfg.token_url.trim().to_string()
        } else {
            issuer.to_string()
        },
        client_id: cfg.client_id.trim().to_string(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("the login is not configured: {0}")]
    NotConfigured(String),
    #[error("OpenID discovery at {url} failed: {detail}")]
    Discovery { url: String, detail: String },
    /// An endpoint (configured, or named by discovery) that would carry the code or the tokens
    /// unencrypted over the network: refused before any request is sent to it.
    #[error("{0}")]
    Insecure(#[from] crate::endpoint::EndpointError),
    #[error(transparent)]
    Callback(#[from] callback::CallbackError),
    #[error(
        "the sign-in response came from another issuer ({got}, expected {expected}): refusing it"
    )]
    IssuerMismatch { got: String, expected: String },
    #[error("the sign-in response carries no issuer although {0} promises one: refusing it")]
    IssuerMissing(String),
    #[error("the provider refused the code exchange: {0}")]
    Exchange(String),
    /// The provider turned the sign-in request down before anyone signed in (an unknown
    /// `client_id`, an unregistered redirect URI, ...): found before a browser was opened.
    #[error(transparent)]
    Refused(#[from] super::preflight::Refusal),
    #[error(transparent)]
    Device(#[from] super::device::DeviceError),
    #[error("storing the tokens failed: {0}")]
    Store(String),
}

/// The token response with the OpenID Connect `id_token` field kept.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct IdTokenFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
}
impl ExtraTokenFields for IdTokenFields {}

pub(super) type TokenResp = StandardTokenResponse<IdTokenFields, BasicTokenType>;
pub(super) type OidcClient<HasAuth, HasDevice = EndpointNotSet> = oauth2::Client<
    BasicErrorResponse,
    TokenResp,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    HasAuth,
    HasDevice,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// The RFC 8707 resource indicator to send (`auth.resource`), if any: at the authorization,
/// token, refresh and device requests alike, so every access token is for the same API.
pub(super) fn resource(cfg: &AuthConfig) -> Option<String> {
    let resource = cfg.resource.trim();
    (!resource.is_empty()).then(|| resource.to_string())
}

pub(super) fn client(provider: &Provider, client_id: &str) -> OidcClient<EndpointNotSet> {
    oauth2::Client::new(ClientId::new(client_id.to_string()))
        .set_token_uri(TokenUrl::from_url(provider.token_endpoint.clone()))
}

/// Opens the authorization URL "in a browser".
pub type Opener = Box<dyn Fn(&Url) + Send + Sync>;

/// What `--login` is asked to do besides the defaults.
pub struct LoginOptions {
    /// Print the URL and accept the redirected URL pasted on stdin instead of opening a browser.
    pub no_browser: bool,
    /// How the browser is opened; `None`: the system browser (`$BROWSER` honoured). `--dev`
    /// passes a function that plays the user in-process.
    pub opener: Option<Opener>,
    /// Ask the provider about the authorization request before the browser goes there, so a
    /// refusal (an unknown `client_id`, ...) ends the login at once instead of after
    /// `auth.login_timeout` (see [`super::preflight`]). `--dev` skips it: its provider and
    /// client are its own, and its auto-approving provider would issue a code nobody redeems.
    pub preflight: bool,
}

/// `--login`: the authorization-code flow with PKCE through the system browser. Returns the
/// stored tokens; the caller prints "Logged in as …".
pub async fn login(
    cfg: &AuthConfig,
    store: &TokenStore,
    provider: &Provider,
    opts: LoginOptions,
) -> Result<StoredTokens, LoginError> {
    if cfg.client_id.trim().is_empty() {
        return Err(LoginError::NotConfigured("set auth.client_id".into()));
    }
    provider.check_endpoints()?;
    let http = http_client().map_err(|e| LoginError::Exchange(e.to_string()))?;
    let mut waiter = CallbackWaiter::start(
        cfg,
        CallbackOptions {
            paste_from_stdin: opts.no_browser,
            // An in-process opener (`--dev`) is no browser anyone waits for: no "Waiting for
            // the sign-in in the browser".
            progress: opts.opener.is_none(),
            ..CallbackOptions::default()
        },
    )
    .await?;
    let redirect = waiter.redirect_uri().clone();
    let client = client(provider, &cfg.client_id)
        .set_auth_uri(AuthUrl::from_url(provider.authorization_endpoint.clone()))
        .set_redirect_uri(RedirectUrl::from_url(redirect.clone()));
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let mut request = client
        .authorize_url(CsrfToken::new_random)
        .add_scopes(cfg.scopes.iter().map(|s| Scope::new(s.clone())))
        .set_pkce_challenge(challenge);
    if cfg.scopes.iter().any(|s| s == "offline_access") {
        // OpenID Connect Core §11: offline_access is only honoured with prompt=consent.
        request = request.add_extra_param("prompt", "consent");
    }
    if let Some(resource) = resource(cfg) {
        request = request.add_extra_param("resource", resource);
    }
    let (url, state) = request.url();
    if opts.preflight {
        super::preflight::check(&http, &url, &redirect, &cfg.client_id).await?;
    }

    match &opts.opener {
        Some(open) => open(&url),
        None if opts.no_browser => {
            eprintln!("To sign in, open this URL in a browser:\n\n  {url}\n");
            eprintln!(
                "Then paste the address the browser was sent to (it starts with {redirect}) here."
            );
        }
        None => {
            // Always printed: the browser may open on another screen, or not at all.
            eprintln!("To sign in, open this URL in a browser:\n\n  {url}\n");
            let outcome = super::browser::open(&url);
            tracing::info!("browser: {outcome}");
        }
    }
    let timeout = Duration::from_secs(cfg.login_timeout.max(1));
    let pending = waiter.wait(state.secret(), timeout).await?;

    // RFC 9207: a response from another issuer is a mix-up attack.
    if let Some(expected) = &provider.issuer {
        match pending.iss.as_deref() {
            Some(got) if got.trim_end_matches('/') != expected.trim_end_matches('/') => {
                let e = LoginError::IssuerMismatch {
                    got: printable(got).into_owned(),
                    expected: expected.clone(),
                };
                return Err(fail(pending, e, &again()).await);
            }
            None if provider.iss_parameter_supported => {
                let e = LoginError::IssuerMissing(expected.clone());
                return Err(fail(pending, e, &again()).await);
            }
            _ => {}
        }
    }

    let mut exchange = client
        .exchange_code(AuthorizationCode::new(pending.code.clone()))
        .set_pkce_verifier(verifier);
    if let Some(resource) = resource(cfg) {
        // RFC 8707 §2.2: asked again at the token endpoint, for the access token's audience.
        exchange = exchange.add_extra_param("resource", resource);
    }
    let exchanged = exchange.request_async(&http).await;
    let response = match exchanged {
        Ok(r) => r,
        Err(e) => {
            let e = LoginError::Exchange(describe_token_error(&e));
            return Err(fail(pending, e, &again()).await);
        }
    };
    let account = provider.account(&cfg.client_id);
    let mut tokens = from_response(&response, None, provider, &account, Utc::now());
    identify(&mut tokens, provider, &http).await;
    if let Err(e) = store.save(&tokens).await {
        let e = LoginError::Store(e.to_string());
        let hint = "Unlock the keyring, or set auth.token_storage = \"file\", then log in again.";
        return Err(fail(pending, e, hint).await);
    }
    pending
        .finish(Finish::Success {
            username: display_name(&tokens),
        })
        .await;
    Ok(tokens)
}

/// The browser page's advice after a failed login.
fn again() -> String {
    format!("Run {} again.", crate::hint::command("--login"))
}

/// Shows the failure in the browser tab, then hands it back to be returned.
async fn fail(pending: PendingCallback, e: LoginError, hint: &str) -> LoginError {
    pending
        .finish(Finish::Failure {
            message: e.to_string(),
            hint: Some(hint.to_string()),
        })
        .await;
    e
}

/// What "Logged in as …" shows (in the terminal, the log, `--status` and the browser tab): the
/// provider's words, so through the printable filter.
pub fn display_name(t: &StoredTokens) -> String {
    let name = t
        .username
        .as_deref()
        .or(t.subject.as_deref())
        .unwrap_or("(unknown user)");
    printable(name).into_owned()
}

/// The tokens of a token endpoint's answer. The ID token's claims name the user only when the
/// token was issued by `provider`'s issuer to `account`'s client (see [`super::id_token`]).
pub(super) fn from_response(
    r: &TokenResp,
    previous_refresh: Option<&str>,
    provider: &Provider,
    account: &Account,
    requested_at: DateTime<Utc>,
) -> StoredTokens {
    let id_token = r.extra_fields().id_token.clone();
    let claims = id_token.as_deref().and_then(|jwt| {
        verified_claims(jwt, provider.issuer.as_deref(), &account.client_id)
            .map_err(|e| tracing::warn!("the ID token's claims are not used: {e}"))
            .ok()
    });
    StoredTokens {
        access_token: r.access_token().secret().clone(),
        // A provider that does not rotate sends no new refresh token: keep the old one.
        refresh_token: r
            .refresh_token()
            .map(|t| t.secret().clone())
            .or_else(|| previous_refresh.map(str::to_string)),
        // From the local time just before the request: clock skew with the provider is moot.
        // An `expires_in` past chrono's last date (a broken or hostile provider) is no expiry,
        // not a panic: the token is then used until the upstream answers 401.
        expires_at: r
            .expires_in()
            .and_then(|d| chrono::Duration::from_std(d).ok())
            .and_then(|d| requested_at.checked_add_signed(d)),
        scope: r
            .scopes()
            .map(|s| s.iter().map(|x| x.as_str()).collect::<Vec<_>>().join(" ")),
        id_token,
        subject: claims.as_ref().and_then(|c| c.sub.clone()),
        username: claims.as_ref().and_then(Claims::name),
        issuer: account.issuer.clone(),
        client_id: account.client_id.clone(),
        obtained_at: requested_at,
    }
}

/// A token endpoint's answer `body`, read as the login and the refresh read it (the `oauth2`
/// crate's token response type, then [`from_response`]): the entry point of the property tests
/// and the `token_answer` fuzz target. `Err` holds the JSON error.
#[doc(hidden)]
pub fn tokens_from_answer(
    body: &[u8],
    previous_refresh: Option<&str>,
    requested_at: DateTime<Utc>,
) -> Result<StoredTokens, String> {
    let response: TokenResp = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    Ok(from_response(
        &response,
        previous_refresh,
        &answer_provider(),
        &answer_provider().account(ANSWER_CLIENT_ID),
        requested_at,
    ))
}

/// The client id [`tokens_from_answer`] reads answers for.
#[doc(hidden)]
pub const ANSWER_CLIENT_ID: &str = "fuzz";

/// The provider [`tokens_from_answer`] reads answers from: issuer `https://issuer.invalid`.
#[doc(hidden)]
pub fn answer_provider() -> Provider {
    let url = |path: &str| {
        Url::parse(&format!("https://issuer.invalid{path}"))
            .unwrap_or_else(|_| unreachable!("a valid URL"))
    };
    Provider {
        issuer: Some("https://issuer.invalid".into()),
        authorization_endpoint: url("/auth"),
        token_endpoint: url("/token"),
        userinfo_endpoint: None,
        revocation_endpoint: None,
        device_authorization_endpoint: None,
        iss_parameter_supported: false,
    }
}

/// Fills subject and username from userinfo when the provider has it (else they stay what the
/// ID token said). A userinfo answer for another subject than the ID token's is not used
/// (OpenID Connect Core §5.3.2).
pub(super) async fn identify(t: &mut StoredTokens, provider: &Provider, http: &ProviderHttp) {
    let Some(url) = &provider.userinfo_endpoint else {
        return;
    };
    let claims: Claims = match get_json(http, url.as_str(), Some(&t.access_token)).await {
        Ok(claims) => claims,
        Err(e) => {
            tracing::warn!("userinfo gave no answer to use: {e}");
            return;
        }
    };
    if let (Some(known), Some(said)) = (&t.subject, &claims.sub) {
        if known != said {
            tracing::warn!("userinfo answered for another subject than the ID token's; ignored");
            return;
        }
    }
    if t.subject.is_none() {
        t.subject = claims.sub.clone();
    }
    if let Some(n) = claims.name() {
        t.username = Some(n);
    }
}

pub(super) fn describe_token_error<RE: std::error::Error>(
    e: &RequestTokenError<RE, StandardErrorResponse<BasicErrorResponseType>>,
) -> String {
    match e {
        // The provider's own words: printable, they reach the terminal and the log.
        RequestTokenError::ServerResponse(r) => {
            let error = r.error().to_string();
            match r.error_description() {
                Some(d) => format!("{}: {}", printable(&error), printable(d)),
                None => printable(&error).into_owned(),
            }
        }
        RequestTokenError::Request(e) => format!("request failed: {e}"),
        RequestTokenError::Parse(e, _) => {
            format!("unreadable answer: {}", printable(&e.to_string()))
        }
        RequestTokenError::Other(s) => printable(s).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    #[test]
    fn margin_is_a_third_capped_at_ten_minutes() {
        assert_eq!(
            refresh_margin(chrono::Duration::seconds(3)),
            chrono::Duration::seconds(1)
        );
        assert_eq!(
            refresh_margin(chrono::Duration::hours(1)),
            chrono::Duration::minutes(10)
        );
    }

    fn tokens(obtained: DateTime<Utc>, expires: Option<DateTime<Utc>>) -> StoredTokens {
        StoredTokens {
            access_token: "a".into(),
            refresh_token: Some("r".into()),
            expires_at: expires,
            scope: None,
            id_token: None,
            subject: None,
            username: None,
            issuer: "i".into(),
            client_id: "c".into(),
            obtained_at: obtained,
        }
    }

    #[test]
    fn freshness_uses_the_margin_and_tolerates_missing_expiry() {
        let t0 = Utc::now();
        let t = tokens(t0, Some(t0 + chrono::Duration::seconds(300)));
        assert!(OAuthSession::fresh(&t, t0 + chrono::Duration::seconds(150)));
        assert!(!OAuthSession::fresh(
            &t,
            t0 + chrono::Duration::seconds(201)
        ));
        // Without expires_in: never refreshed proactively (no refresh loop), only on a 401.
        let forever = tokens(t0, None);
        assert!(OAuthSession::fresh(
            &forever,
            t0 + chrono::Duration::days(400)
        ));
    }

    /// Fuzzing found it: `expires_in` fits chrono's `TimeDelta` up to ~9.2e15 s, but adding
    /// more than ~8e12 s to now passes chrono's last date, and `DateTime + TimeDelta` panics
    /// there — a broken or hostile token endpoint could crash the login or the daemon's refresh.
    #[test]
    fn huge_expires_in_is_no_expiry_not_a_panic() {
        let now = Utc::now();
        for expires_in in ["10000000000000", "9223372036854775", "18446744073709551615"] {
            let body = format!(
                r#"{{"access_token":"at","token_type":"bearer","expires_in":{expires_in}}}"#
            );
            let t = tokens_from_answer(body.as_bytes(), None, now).expect(expires_in);
            assert_eq!(t.expires_at, None, "{expires_in}");
            assert!(OAuthSession::fresh(&t, now), "used until a 401");
        }
        let body = br#"{"access_token":"at","token_type":"bearer","expires_in":3600}"#;
        let t = tokens_from_answer(body, Some("rt"), now).expect("parses");
        assert_eq!(t.expires_at, Some(now + chrono::Duration::hours(1)));
        assert_eq!(
            t.refresh_token.as_deref(),
            Some("rt"),
            "kept when not rotated"
        );
    }

    fn answer_with_id_token(claims: serde_json::Value) -> Vec<u8> {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims.to_string());
        serde_json::json!({
            "access_token": "at",
            "token_type": "bearer",
            "id_token": format!("e30.{payload}.sig"),
        })
        .to_string()
        .into_bytes()
    }

    /// Issue 11: the ID token named the user whoever it was issued to or by.
    #[test]
    fn only_an_id_token_for_this_client_from_this_issuer_names_the_user() {
        let now = Utc::now();
        let ours = serde_json::json!({"iss": "https://issuer.invalid", "aud": ANSWER_CLIENT_ID,
            "sub": "u1", "preferred_username": "alice"});
        let t = tokens_from_answer(&answer_with_id_token(ours), None, now).expect("parses");
        assert_eq!(t.subject.as_deref(), Some("u1"));
        assert_eq!(display_name(&t), "alice");
        for theirs in [
            serde_json::json!({"iss": "https://issuer.invalid", "aud": "another-client", "sub": "u2", "preferred_username": "mallory"}),
            serde_json::json!({"iss": "https://evil.example", "aud": ANSWER_CLIENT_ID, "sub": "u2", "preferred_username": "mallory"}),
        ] {
            let t = tokens_from_answer(&answer_with_id_token(theirs.clone()), None, now)
                .expect("parses");
            assert_eq!(t.subject, None, "{theirs}");
            assert_eq!(display_name(&t), "(unknown user)", "{theirs}");
            assert!(t.id_token.is_some(), "kept as it came");
        }
    }

    /// Issue 11: the user name is the provider's text; it reaches the terminal.
    #[test]
    fn the_displayed_name_is_printable() {
        let now = Utc::now();
        let claims = serde_json::json!({"iss": "https://issuer.invalid", "aud": ANSWER_CLIENT_ID,
            "sub": "u1", "preferred_username": "\u{1b}[2J\u{1b}]0;pwned\u{7}alice"});
        let t = tokens_from_answer(&answer_with_id_token(claims), None, now).expect("parses");
        assert_eq!(display_name(&t), "\\u{1b}[2J\\u{1b}]0;pwned\\u{7}alice");
    }

    /// Issue 11: the provider's `error` and `error_description` reached the terminal raw.
    #[test]
    fn token_endpoint_errors_are_printable() {
        let answer: StandardErrorResponse<BasicErrorResponseType> = serde_json::from_str(
            r#"{"error":"invalid_grant\u001b[2J","error_description":"\u001b]0;pwned\u0007 gone\r\nFAKE LINE"}"#,
        )
        .expect("an error answer");
        let e: RequestTokenError<std::io::Error, _> = RequestTokenError::ServerResponse(answer);
        let text = describe_token_error(&e);
        assert!(!text.chars().any(char::is_control), "{text:?}");
        assert_eq!(
            text,
            "invalid_grant\\u{1b}[2J: \\u{1b}]0;pwned\\u{7} gone\\u{d}\\u{a}FAKE LINE"
        );
    }
}
