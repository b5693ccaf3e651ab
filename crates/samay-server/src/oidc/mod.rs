//! The dev server as an OpenID provider: the authorization-code flow with PKCE S256, rotating
//! refresh tokens with reuse detection, userinfo and RFC 7009 revocation, so the login can be
//! developed and tested end to end on one machine without a real identity provider.
//!
//! What it enforces is what a careful real provider enforces (oidc-provider behaves the same
//! way on every point the tests check), because a dev provider that is laxer than production
//! would let client bugs through: exact redirect URI matching except for the loopback port
//! (RFC 8252 §7.3), S256 only (RFC 9700 §2.1.1), single-use codes whose reuse revokes the grant
//! (RFC 6749 §4.1.2), refresh rotation whose reuse revokes the grant (RFC 9700 §4.14.2).
//!
//! Grants, codes and tokens live in the server's SQLite file (tables `oauth_*`), so a `--dev`
//! login survives a restart. Only blake3 hashes of codes and tokens are stored: a leaked dev
//! database leaks no usable credential. The provider's clock is wall time plus an offset that
//! tests advance ([`Clock`]) instead of sleeping.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use url::Url;

use super::page::escape;

mod grants;
mod routes;

use grants::*;
pub(crate) use routes::router;

/// The one client registered by default: aw-sync-samay, a public native app (no secret).
pub const DEV_CLIENT_ID: &str = "aw-sync-samay";
/// Default lifetime of an access token.
pub const DEFAULT_ACCESS_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// Authorization codes are short-lived (RFC 6749 §4.1.2 recommends at most 10 minutes).
const CODE_TTL_MS: i64 = 60_000;
/// Refresh tokens expire after 30 days unused; rotation makes each one single-use anyway.
const REFRESH_TTL_MS: i64 = 30 * 24 * 3600 * 1000;
/// How long a positive answer of an external issuer's userinfo endpoint is trusted: short, so a
/// token revoked or expired there stops working here almost at once.
const EXTERNAL_CACHE_MS: i64 = 1_000;
/// Timeout for calls to the external issuer.
const EXTERNAL_TIMEOUT: Duration = Duration::from_secs(10);
const SUPPORTED_SCOPES: [&str; 4] = ["openid", "profile", "email", "offline_access"];
/// Longest accepted subject (username), so a form cannot store megabytes per grant.
const MAX_SUBJECT_LEN: usize = 200;

/// The provider side of the dev server. Everything has a default, so
/// `OidcConfig::default()` gives a provider that shows a sign-in page and issues one-hour
/// access tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcConfig {
    /// Sign every authorization request in at once, without a form, as this user (or as the
    /// request's `login_hint` when it has one): for tests and `--dev`, where nobody is at a
    /// browser. `None` shows the sign-in page.
    pub auto_approve: Option<String>,
    /// Lifetime of issued access tokens ([`DEFAULT_ACCESS_TOKEN_TTL`]); tests use seconds.
    pub access_token_ttl: Duration,
    /// Also accept bearer tokens issued by this other OpenID provider, checked against its
    /// userinfo endpoint (found through its discovery document).
    pub external_issuer: Option<Url>,
}

impl Default for OidcConfig {
    fn default() -> Self {
        Self {
            auto_approve: None,
            access_token_ttl: DEFAULT_ACCESS_TOKEN_TTL,
            external_issuer: None,
        }
    }
}

/// `GET /v1/_oauth`: what the provider did, for tests that assert on the protocol.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuthCounters {
    /// Authorization codes issued (auto-approved or through the form).
    pub codes_issued: u64,
    /// Codes exchanged for tokens.
    pub codes_redeemed: u64,
    /// Successful `refresh_token` grants.
    pub refreshes_served: u64,
    /// A used code or a rotated refresh token presented again; each revoked its grant.
    pub reuse_detections: u64,
    /// `POST /oauth/revoke` requests that revoked something.
    pub revocations: u64,
    /// Grants not revoked that still hold a usable access or refresh token.
    pub grants_active: u64,
    /// Calls made to the external issuer's userinfo endpoint (cache misses).
    pub external_checks: u64,
}

#[derive(Debug, Default)]
struct Counters {
    codes_issued: AtomicU64,
    codes_redeemed: AtomicU64,
    refreshes_served: AtomicU64,
    reuse_detections: AtomicU64,
    revocations: AtomicU64,
    external_checks: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The provider's notion of now: wall time plus an offset. Tests move it forward through
/// `DevServer::advance_clock` to expire codes and tokens without sleeping.
#[derive(Debug, Clone, Default)]
pub(crate) struct Clock(Arc<AtomicU64>);

impl Clock {
    /// Milliseconds since the Unix epoch, as the provider sees it.
    pub fn now_ms(&self) -> i64 {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        wall.saturating_add(self.0.load(Ordering::Relaxed) as i64)
    }

    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(
            by.as_millis().min(u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
    }
}

/// Who a bearer token belongs to.
pub(crate) enum Bearer {
    User(String),
    /// Unknown, expired or revoked: 401.
    Invalid,
    /// The token could not be checked (external issuer unreachable): 503, so the client retries
    /// instead of throwing its tokens away.
    Unavailable(String),
}

struct External {
    issuer: Url,
    http: reqwest::Client,
    /// The issuer's userinfo endpoint, from its discovery document; fetched once, on first use
    /// (a failed fetch is retried on the next request).
    userinfo: tokio::sync::OnceCell<Url>,
    /// blake3(token) → (subject, valid until, provider clock ms).
    cache: Mutex<HashMap<[u8; 32], (String, i64)>>,
}

pub(crate) struct Provider {
    issuer: String,
    db: Arc<Mutex<Connection>>,
    /// HS256 key of the id_tokens; random once per database.
    secret: Vec<u8>,
    clock: Clock,
    access_ttl_ms: i64,
    auto_approve: RwLock<Option<String>>,
    counters: Arc<Counters>,
    external: Option<External>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS oauth_meta (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS oauth_grants (
    id TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    scope TEXT NOT NULL,
    nonce TEXT,
    auth_time INTEGER NOT NULL,
    revoked_at INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS oauth_codes (
    hash TEXT PRIMARY KEY,
    grant_id TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    code_challenge TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS oauth_tokens (
    hash TEXT PRIMARY KEY,
    grant_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('access', 'refresh')),
    expires_at INTEGER NOT NULL,
    used_at INTEGER,
    revoked_at INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS oauth_tokens_grant ON oauth_tokens (grant_id);
";

/// A grant as the token endpoint needs it.
#[derive(Debug, Clone)]
struct Grant {
    client_id: String,
    subject: String,
    scope: String,
    nonce: Option<String>,
    auth_time: i64,
}

/// An RFC 6749 §5.2 error answer.
#[derive(Debug)]
struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: String,
}

impl OAuthError {
    fn new(error: &'static str, description: impl Into<String>) -> Self {
        let status = if error == "invalid_client" {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::BAD_REQUEST
        };
        Self {
            status,
            error,
            description: description.into(),
        }
    }

    fn grant(description: impl Into<String>) -> Self {
        Self::new("invalid_grant", description)
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(json!({"error": self.error, "error_description": self.description})),
        )
            .into_response();
        no_store(&mut response);
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"samay-dev-server\""),
            );
        }
        response
    }
}

/// Token endpoint answers carry credentials: no cache may keep them (RFC 6749 §5.1).
fn no_store(response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!("dev OpenID provider: {e}");
    OAuthError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        error: "server_error",
        description: e.to_string(),
    }
    .into_response()
}

fn hash(secret: &str) -> String {
    blake3::hash(secret.as_bytes()).to_hex().to_string()
}

/// 256 random bits, base64url: codes and tokens.
fn random_secret() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// RFC 7636 §4.1: 43 to 128 characters of `[A-Za-z0-9-._~]`.
fn valid_verifier(verifier: &str) -> bool {
    (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// Constant-time comparison, so a PKCE check leaks nothing through timing.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Whether `uri` may receive codes for the dev client: `http://127.0.0.1:{any port}/{any path}`
/// or `http://[::1]:…` (RFC 8252 §7.3, any port, because a native app binds a free one), or a
/// private-use scheme (RFC 8252 §7.1) that is reverse-domain (has a dot) or names samay.
/// `localhost` is refused: it may resolve to another interface than the one listening (RFC 8252
/// §8.3). Fragments and credentials are refused everywhere (RFC 6749 §3.1.2).
fn redirect_uri_allowed(uri: &str) -> Result<Url, String> {
    let url = Url::parse(uri).map_err(|e| format!("redirect_uri is not a URL: {e}"))?;
    if url.fragment().is_some() {
        return Err("redirect_uri must not have a fragment".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("redirect_uri must not carry credentials".into());
    }
    match url.scheme() {
        "http" => match url.host() {
            Some(url::Host::Ipv4(ip)) if ip == std::net::Ipv4Addr::LOCALHOST => Ok(url),
            Some(url::Host::Ipv6(ip)) if ip == std::net::Ipv6Addr::LOCALHOST => Ok(url),
            _ => Err(
                "an http redirect_uri must be the loopback IP literal 127.0.0.1 or [::1] (not localhost)"
                    .into(),
            ),
        },
        "https" => Err("https redirect_uris are not registered for this native client".into()),
        "javascript" | "data" | "file" | "about" | "blob" | "vbscript" | "ftp" | "ws" | "wss" => {
            Err(format!("scheme {:?} is not a redirect target", url.scheme()))
        }
        scheme if scheme.contains('.') || scheme.contains("samay") => Ok(url),
        scheme => Err(format!(
            "private-use scheme {scheme:?} is not registered (use a reverse-domain scheme or samay://)"
        )),
    }
}

/// Form or query parameters. RFC 6749 §3.1: a parameter sent without a value is as if omitted,
/// and none may appear twice.
struct Params(HashMap<String, String>);

impl Params {
    fn parse(raw: &[u8]) -> Result<Self, String> {
        let mut map = HashMap::new();
        for (key, value) in url::form_urlencoded::parse(raw) {
            if value.is_empty() {
                continue;
            }
            if map.insert(key.to_string(), value.into_owned()).is_some() {
                return Err(format!("parameter {key:?} given more than once"));
            }
        }
        Ok(Self(map))
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
}

/// The bearer token of an `Authorization` header.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// A validated authorization request.
#[derive(Debug, Clone)]
struct AuthzRequest {
    client_id: String,
    redirect_uri: String,
    state: Option<String>,
    code_challenge: String,
    /// Granted scope: the requested scopes this provider knows, `openid` when none.
    scope: String,
    nonce: Option<String>,
    login_hint: Option<String>,
    prompt: Option<String>,
}

/// Checks an authorization request. Every failure is shown as a page and never redirected:
/// before the client and redirect URI are known good a redirect could be an open redirector,
/// and a client that omits PKCE is broken in a way its user should see.
fn validate_authorize(p: &Params) -> Result<AuthzRequest, String> {
    let client_id = p.get("client_id").ok_or("client_id is missing")?;
    if client_id != DEV_CLIENT_ID {
        return Err(format!("unknown client_id {client_id:?}"));
    }
    let redirect_uri = p.get("redirect_uri").ok_or("redirect_uri is missing")?;
    redirect_uri_allowed(redirect_uri)?;
    match p.get("response_type") {
        Some("code") => {}
        Some(other) => return Err(format!("unsupported response_type {other:?}; only code")),
        None => return Err("response_type is missing".into()),
    }
    let challenge = p
        .get("code_challenge")
        .ok_or("PKCE is required: code_challenge is missing")?;
    match p.get("code_challenge_method") {
        Some("S256") => {}
        Some(other) => {
            return Err(format!(
                "code_challenge_method {other:?} is not supported; only S256"
            ))
        }
        None => {
            return Err(
                "code_challenge_method is missing (plain is not supported; use S256)".into(),
            )
        }
    }
    if challenge.len() != 43
        || !challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err("code_challenge is not a base64url SHA-256 digest".into());
    }
    let mut scopes: Vec<&str> = Vec::new();
    for s in p.get("scope").unwrap_or("").split(' ') {
        if SUPPORTED_SCOPES.contains(&s) && !scopes.contains(&s) {
            scopes.push(s);
        }
    }
    if scopes.is_empty() {
        scopes.push("openid");
    }
    Ok(AuthzRequest {
        client_id: client_id.to_string(),
        redirect_uri: redirect_uri.to_string(),
        state: p.get("state").map(str::to_owned),
        code_challenge: challenge.to_string(),
        scope: scopes.join(" "),
        nonce: p.get("nonce").map(str::to_owned),
        login_hint: p.get("login_hint").map(str::to_owned),
        prompt: p.get("prompt").map(str::to_owned),
    })
}

fn valid_subject(name: &str) -> Option<String> {
    let name = name.trim();
    (!name.is_empty() && name.len() <= MAX_SUBJECT_LEN && !name.chars().any(char::is_control))
        .then(|| name.to_string())
}

impl Provider {
    /// Opens (or creates) the provider's tables in the dev server's database.
    pub fn open(
        db_path: &Path,
        issuer: String,
        cfg: &super::OidcConfig,
        clock: Clock,
    ) -> anyhow::Result<Self> {
        let conn =
            Connection::open(db_path).with_context(|| format!("opening {}", db_path.display()))?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)
            .context("creating the OpenID provider schema")?;
        conn.execute(
            "INSERT OR IGNORE INTO oauth_meta (key, value) VALUES ('id_token_secret', ?1)",
            params![rand::random::<[u8; 32]>().to_vec()],
        )?;
        let secret: Vec<u8> = conn.query_row(
            "SELECT value FROM oauth_meta WHERE key = 'id_token_secret'",
            [],
            |r| r.get(0),
        )?;
        let external = match &cfg.external_issuer {
            None => None,
            Some(issuer) => Some(External {
                issuer: issuer.clone(),
                http: reqwest::Client::builder()
                    .redirect(reqwest::redirect::Policy::none())
                    .timeout(EXTERNAL_TIMEOUT)
                    .build()
                    .context("building the HTTP client for the external issuer")?,
                userinfo: tokio::sync::OnceCell::new(),
                cache: Mutex::new(HashMap::new()),
            }),
        };
        Ok(Self {
            issuer,
            db: Arc::new(Mutex::new(conn)),
            secret,
            clock,
            access_ttl_ms: cfg.access_token_ttl.as_millis().clamp(1, i64::MAX as u128) as i64,
            auto_approve: RwLock::new(cfg.auto_approve.clone()),
            counters: Arc::new(Counters::default()),
            external,
        })
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn set_auto_approve(&self, user: Option<String>) {
        *self.auto_approve.write().unwrap_or_else(|p| p.into_inner()) = user;
    }

    fn auto_approve(&self) -> Option<String> {
        self.auto_approve
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Runs `f` on the database off the async runtime.
    async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let db = self.db.clone();
        let result = tokio::task::spawn_blocking(move || {
            // A panic mid-transaction rolls it back on drop; the connection stays usable.
            let mut conn: MutexGuard<'_, Connection> = db.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut conn)
        })
        .await??;
        Ok(result)
    }

    pub async fn counters(&self) -> anyhow::Result<OAuthCounters> {
        let now = self.clock.now_ms();
        let grants_active: i64 = self
            .db(move |conn| {
                conn.query_row(
                    "SELECT count(*) FROM oauth_grants g WHERE g.revoked_at IS NULL AND EXISTS (
                       SELECT 1 FROM oauth_tokens t WHERE t.grant_id = g.id AND t.revoked_at IS NULL
                         AND t.expires_at > ?1 AND (t.kind = 'access' OR t.used_at IS NULL))",
                    params![now],
                    |r| r.get(0),
                )
            })
            .await?;
        let c = &self.counters;
        Ok(OAuthCounters {
            codes_issued: c.codes_issued.load(Ordering::Relaxed),
            codes_redeemed: c.codes_redeemed.load(Ordering::Relaxed),
            refreshes_served: c.refreshes_served.load(Ordering::Relaxed),
            reuse_detections: c.reuse_detections.load(Ordering::Relaxed),
            revocations: c.revocations.load(Ordering::Relaxed),
            grants_active: grants_active.max(0) as u64,
            external_checks: c.external_checks.load(Ordering::Relaxed),
        })
    }

    /// The subject of a live access token this provider issued.
    async fn access_subject(&self, token: &str) -> anyhow::Result<Option<String>> {
        let token_hash = hash(token);
        let now = self.clock.now_ms();
        self.db(move |conn| {
            conn.query_row(
                "SELECT g.subject FROM oauth_tokens t JOIN oauth_grants g ON g.id = t.grant_id
                 WHERE t.hash = ?1 AND t.kind = 'access' AND t.revoked_at IS NULL
                   AND g.revoked_at IS NULL AND t.expires_at > ?2",
                params![token_hash, now],
                |r| r.get(0),
            )
            .optional()
        })
        .await
    }

    /// Who a bearer token (not one of the static ones) belongs to: an access token issued here,
    /// else one the external issuer vouches for.
    pub async fn authenticate(&self, token: &str) -> Bearer {
        match self.access_subject(token).await {
            Ok(Some(user)) => return Bearer::User(user),
            Ok(None) => {}
            Err(e) => return Bearer::Unavailable(format!("token store: {e}")),
        }
        match &self.external {
            Some(external) => self.check_external(external, token).await,
            None => Bearer::Invalid,
        }
    }

    async fn check_external(&self, ext: &External, token: &str) -> Bearer {
        let key = *blake3::hash(token.as_bytes()).as_bytes();
        let now = self.clock.now_ms();
        {
            let mut cache = ext.cache.lock().unwrap_or_else(|p| p.into_inner());
            cache.retain(|_, (_, until)| *until > now);
            if let Some((user, _)) = cache.get(&key) {
                return Bearer::User(user.clone());
            }
        }
        let userinfo = match ext
            .userinfo
            .get_or_try_init(|| discover_userinfo(&ext.http, &ext.issuer))
            .await
        {
            Ok(url) => url.clone(),
            Err(e) => return Bearer::Unavailable(format!("external issuer discovery: {e:#}")),
        };
        bump(&self.counters.external_checks);
        let response = match ext.http.get(userinfo).bearer_auth(token).send().await {
            Ok(r) => r,
            Err(e) => return Bearer::Unavailable(format!("external issuer userinfo: {e}")),
        };
        match response.status().as_u16() {
            200 => {}
            401 | 403 => return Bearer::Invalid,
            other => {
                return Bearer::Unavailable(format!("external issuer userinfo answered {other}"))
            }
        }
        let sub = match response.json::<Value>().await {
            Ok(body) => body
                .get("sub")
                .and_then(Value::as_str)
                .and_then(valid_subject),
            Err(_) => None,
        };
        let Some(sub) = sub else {
            return Bearer::Unavailable("external issuer userinfo has no usable sub".into());
        };
        ext.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, (sub.clone(), now + EXTERNAL_CACHE_MS));
        Bearer::User(sub)
    }

    /// Creates a grant for `subject` and returns its authorization code.
    async fn issue_code(&self, req: &AuthzRequest, subject: String) -> anyhow::Result<String> {
        let code = random_secret();
        let code_hash = hash(&code);
        let now = self.clock.now_ms();
        let req = req.clone();
        self.db(move |conn| {
            let tx = conn.transaction()?;
            let grant_id = uuid::Uuid::new_v4().to_string();
            tx.execute(
                "INSERT INTO oauth_grants (id, client_id, subject, scope, nonce, auth_time)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![grant_id, req.client_id, subject, req.scope, req.nonce, now],
            )?;
            tx.execute(
                "INSERT INTO oauth_codes (hash, grant_id, redirect_uri, code_challenge, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    code_hash,
                    grant_id,
                    req.redirect_uri,
                    req.code_challenge,
                    now + CODE_TTL_MS
                ],
            )?;
            tx.commit()
        })
        .await?;
        bump(&self.counters.codes_issued);
        Ok(code)
    }

    fn id_token(&self, grant: &Grant, now_ms: i64) -> String {
        let now = now_ms / 1000;
        let mut claims = json!({
            "iss": self.issuer,
            "sub": grant.subject,
            "aud": grant.client_id,
            "iat": now,
            "exp": now + self.access_ttl_ms.div_euclid(1000).max(1),
            "auth_time": grant.auth_time / 1000,
            "preferred_username": grant.subject,
            "name": grant.subject,
            "email": email_of(&grant.subject),
        });
        if let Some(nonce) = &grant.nonce {
            claims["nonce"] = Value::String(nonce.clone());
        }
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT","kid":"dev"}"#);
        let body = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signing_input = format!("{header}.{body}");
        let signature = match Hmac::<Sha256>::new_from_slice(&self.secret) {
            Ok(mut mac) => {
                mac.update(signing_input.as_bytes());
                URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
            }
            // HMAC takes keys of any length; this arm is unreachable in practice.
            Err(_) => String::new(),
        };
        format!("{signing_input}.{signature}")
    }

    fn token_response(&self, grant: &Grant, access: String, refresh: String) -> Response {
        let mut body = json!({
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": (self.access_ttl_ms + 999) / 1000,
            "refresh_token": refresh,
            "scope": grant.scope,
        });
        if grant.scope.split(' ').any(|s| s == "openid") {
            body["id_token"] = Value::String(self.id_token(grant, self.clock.now_ms()));
        }
        let mut response = Json(body).into_response();
        no_store(&mut response);
        response
    }
}

fn email_of(subject: &str) -> String {
    if subject.contains('@') {
        subject.to_string()
    } else {
        format!("{subject}@samay-dev.invalid")
    }
}

async fn discover_userinfo(http: &reqwest::Client, issuer: &Url) -> anyhow::Result<Url> {
    let base = issuer.as_str().trim_end_matches('/');
    let response = http
        .get(format!("{base}/.well-known/openid-configuration"))
        .send()
        .await?
        .error_for_status()?;
    let doc: Value = response.json().await?;
    let announced = doc.get("issuer").and_then(Value::as_str).unwrap_or("");
    anyhow::ensure!(
        announced.trim_end_matches('/') == base,
        "discovery document names issuer {announced:?}, expected {base:?}"
    );
    let userinfo = doc
        .get("userinfo_endpoint")
        .and_then(Value::as_str)
        .context("discovery document has no userinfo_endpoint")?;
    Ok(Url::parse(userinfo)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_private_use_redirects_only() {
        for ok in [
            "http://127.0.0.1:1/callback",
            "http://127.0.0.1:65000/any/path?x=1",
            "http://127.0.0.1/callback",
            "http://[::1]:8080/cb",
            "samay://callback",
            "app.samay:/callback",
            "org.example.app:/cb",
        ] {
            assert!(redirect_uri_allowed(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://localhost:8080/callback",
            "http://127.0.0.2:8080/callback",
            "http://example.org/callback",
            "https://example.org/callback",
            "https://127.0.0.1/callback",
            "http://127.0.0.1:8080/cb#frag",
            "http://user:pw@127.0.0.1/cb",
            "javascript:alert(1)",
            "myapp://callback",
            "not a url",
        ] {
            assert!(redirect_uri_allowed(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pkce_s256_matches_rfc7636_appendix_b() {
        assert_eq!(
            s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        assert!(valid_verifier(
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
        ));
        assert!(!valid_verifier("short"));
    }

    #[test]
    fn duplicate_parameters_are_refused_and_empty_ones_ignored() {
        assert!(Params::parse(b"a=1&a=2").is_err());
        let p = Params::parse(b"a=&b=2").unwrap();
        assert_eq!((p.get("a"), p.get("b")), (None, Some("2")));
    }
}
