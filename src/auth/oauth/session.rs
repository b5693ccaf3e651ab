//! The daemon's token source after a login: [`OAuthSession`] hands out the stored access
//! token and refreshes it ahead of expiry, one refresher at a time across processes.

use std::path::{Path, PathBuf};
use std::sync::Mutex as StdMutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use oauth2::basic::BasicErrorResponseType;
use oauth2::{RefreshToken, RequestTokenError};

use super::{client, describe_token_error, from_response, http_client, resolve_provider, Provider};
use crate::auth::store::TokenStore;
use crate::auth::tokens::StoredTokens;
use crate::auth::{AccessToken, AuthError, BoxFuture, TokenSource};
use crate::config::AuthConfig;
use crate::retry::{RetryPolicy, REFRESH_RETRIES};

/// The daemon's token source after a login: hands out the stored access token and refreshes it
/// before it expires — one refresher at a time, in this process (a mutex) and across processes
/// (a lock file, then the stored token is read again, since another process may have rotated
/// it meanwhile).
pub struct OAuthSession {
    client_id: String,
    provider: tokio::sync::OnceCell<Provider>,
    cfg: AuthConfig,
    store: TokenStore,
    lock_path: PathBuf,
    current: tokio::sync::Mutex<Option<StoredTokens>>,
    /// Whose tokens were handed out last.
    who: StdMutex<Option<Whose>>,
}

/// The account a login's records are kept under in the state: its issuer and subject. Also
/// what `--status` compares the last sync's destination with.
pub fn account_key(issuer: &str, subject: &str) -> String {
    format!("oidc:{}|{subject}", issuer.trim_end_matches('/'))
}

/// The issuer, subject and user name of the tokens an [`OAuthSession`] handed out last.
#[derive(Debug, Clone)]
struct Whose {
    issuer: String,
    subject: Option<String>,
    username: Option<String>,
}

/// Refresh this long before expiry: a third of the token's lifetime, at most 10 minutes (gh
/// refreshes 10 minutes early; tokens living seconds need a proportional margin).
pub fn refresh_margin(lifetime: chrono::Duration) -> chrono::Duration {
    (lifetime / 3).min(chrono::Duration::minutes(10))
}

impl OAuthSession {
    pub fn new(cfg: &AuthConfig, store: TokenStore, lock_dir: &Path) -> OAuthSession {
        OAuthSession {
            client_id: cfg.client_id.clone(),
            provider: tokio::sync::OnceCell::new(),
            cfg: cfg.clone(),
            store,
            lock_path: lock_dir.join("aw-sync-samay-refresh.lock"),
            current: tokio::sync::Mutex::new(None),
            who: StdMutex::new(None),
        }
    }

    /// With the provider already known (tests, `--dev`).
    pub fn with_provider(self, provider: Provider) -> OAuthSession {
        let _ = self.provider.set(provider);
        self
    }

    pub fn store(&self) -> &TokenStore {
        &self.store
    }

    /// Drops the tokens held in memory, after a logout (or a login) done beside the session:
    /// the next token is read from the store again, so a revoked token is not used on.
    pub async fn forget(&self) {
        *self.current.lock().await = None;
        *self.who.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    async fn provider(&self) -> Result<&Provider, AuthError> {
        self.provider
            .get_or_try_init(|| async {
                let http = http_client()?;
                resolve_provider(&self.cfg, &http)
                    .await
                    .map_err(|e| AuthError::Transient(e.to_string()))
            })
            .await
    }

    async fn load(&self) -> Result<Option<StoredTokens>, AuthError> {
        self.store
            .load()
            .await
            .map_err(|e| AuthError::Transient(format!("reading the stored tokens failed: {e}")))
    }

    fn remember(&self, t: &StoredTokens) {
        *self.who.lock().unwrap_or_else(|p| p.into_inner()) = Some(Whose {
            issuer: t.issuer.clone(),
            subject: t.subject.clone(),
            username: t.username.clone(),
        });
    }

    pub(super) fn fresh(t: &StoredTokens, now: DateTime<Utc>) -> bool {
        match t.expires_at {
            // No expiry given: use it until the upstream says 401.
            None => true,
            Some(exp) => now + refresh_margin(exp - t.obtained_at) < exp,
        }
    }

    /// Refreshes under the cross-process lock. `stale` is the access token known to be bad (or
    /// about to be); if the store already holds a different, fresh one, another process did
    /// the refresh and that one is used.
    async fn refresh_locked(&self, stale: &str) -> Result<StoredTokens, AuthError> {
        let lock = acquire_refresh_lock(&self.lock_path).await?;
        let result = self.refresh_inner(stale).await;
        drop(lock);
        result
    }

    async fn refresh_inner(&self, stale: &str) -> Result<StoredTokens, AuthError> {
        let Some(stored) = self.load().await? else {
            return Err(AuthError::LoginRequired);
        };
        if stored.access_token != stale && Self::fresh(&stored, Utc::now()) {
            return Ok(stored);
        }
        let Some(refresh) = stored.refresh_token.clone() else {
            return Err(AuthError::Rejected(
                "the access token expired and the provider gave no refresh token".into(),
            ));
        };
        let provider = self.provider().await?;
        provider
            .check_endpoints()
            .map_err(|e| AuthError::Transient(e.to_string()))?;
        let http = http_client()?;
        let client = client(provider, &self.client_id);
        let refresh_token = RefreshToken::new(refresh.clone());
        let mut attempt = 0u32;
        loop {
            let requested_at = Utc::now();
            let mut request = client.exchange_refresh_token(&refresh_token);
            if let Some(resource) = super::resource(&self.cfg) {
                // oidc-provider (and RFC 8707 §2.2) issue a refreshed token for the API only
                // when it is named again.
                request = request.add_extra_param("resource", resource);
            }
            match request.request_async(&http).await {
                Ok(r) => {
                    let mut t = from_response(
                        &r,
                        Some(&refresh),
                        provider,
                        &provider.account(&self.client_id),
                        requested_at,
                    );
                    // OpenID Connect Core §12.2: a refreshed ID token is about the same user.
                    if stored.subject.is_some()
                        && t.subject.is_some()
                        && t.subject != stored.subject
                    {
                        tracing::warn!("the refreshed ID token names another subject; keeping the signed-in user");
                        t.subject = None;
                        t.username = None;
                    }
                    t.subject = t.subject.or(stored.subject.clone());
                    t.username = t.username.or(stored.username.clone());
                    // Persist first: a rotated refresh token that only lived in memory would be
                    // lost by a crash, and the old one is already spent.
                    self.store.save(&t).await.map_err(|e| {
                        AuthError::Transient(format!("storing the refreshed tokens failed: {e}"))
                    })?;
                    tracing::info!(expires_at = ?t.expires_at, "access token refreshed");
                    return Ok(t);
                }
                Err(RequestTokenError::ServerResponse(r))
                    if *r.error() == BasicErrorResponseType::InvalidGrant =>
                {
                    // Final (RFC 6749 §5.2): the grant is gone. Forget it so status says so.
                    let _ = self.store.delete().await;
                    tracing::warn!(
                        "the provider ended the session (invalid_grant): run {}",
                        crate::hint::command("--login")
                    );
                    return Err(AuthError::LoginRequired);
                }
                Err(e) => {
                    attempt += 1;
                    let detail = describe_token_error(&e);
                    let failure = AuthError::Transient(format!("token refresh failed: {detail}"));
                    let Some(wait) = RetryPolicy::default().after(
                        &failure,
                        attempt,
                        REFRESH_RETRIES,
                        &mut rand::rng(),
                    ) else {
                        return Err(failure);
                    };
                    tracing::warn!(%detail, attempt, "token refresh failed; retrying");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

impl TokenSource for OAuthSession {
    fn token(&self) -> BoxFuture<'_, Result<AccessToken, AuthError>> {
        Box::pin(async move {
            let mut current = self.current.lock().await;
            if current.is_none() {
                *current = self.load().await?;
            }
            let Some(t) = current.as_ref() else {
                return Err(AuthError::LoginRequired);
            };
            if !Self::fresh(t, Utc::now()) {
                let stale = t.access_token.clone();
                match self.refresh_locked(&stale).await {
                    Ok(new) => *current = Some(new),
                    Err(AuthError::LoginRequired) => {
                        *current = None;
                        return Err(AuthError::LoginRequired);
                    }
                    Err(e) => return Err(e),
                }
            }
            let t = current.as_ref().ok_or(AuthError::LoginRequired)?;
            self.remember(t);
            Ok(AccessToken::new(t.access_token.clone()))
        })
    }

    fn refresh<'a>(
        &'a self,
        rejected: &'a AccessToken,
    ) -> BoxFuture<'a, Result<AccessToken, AuthError>> {
        Box::pin(async move {
            let mut current = self.current.lock().await;
            // Someone in this process refreshed since `rejected` was handed out.
            if let Some(t) = current.as_ref() {
                if t.access_token != rejected.secret() {
                    return Ok(AccessToken::new(t.access_token.clone()));
                }
            }
            match self.refresh_locked(rejected.secret()).await {
                Ok(t) => {
                    self.remember(&t);
                    let token = AccessToken::new(t.access_token.clone());
                    *current = Some(t);
                    Ok(token)
                }
                Err(e) => {
                    if matches!(e, AuthError::LoginRequired) {
                        *current = None;
                    }
                    Err(e)
                }
            }
        })
    }

    fn user_id(&self) -> Option<String> {
        self.who
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .and_then(|w| w.subject.clone())
    }

    fn identity(&self) -> Option<crate::auth::Identity> {
        let who = self.who.lock().unwrap_or_else(|p| p.into_inner());
        let who = who.as_ref()?;
        let subject = who.subject.as_ref()?;
        Some(crate::auth::Identity {
            key: account_key(&who.issuer, subject),
            label: who.username.clone().unwrap_or_else(|| subject.clone()),
        })
    }

    fn login(&self) -> Option<crate::auth::Identity> {
        let who = self.who.lock().unwrap_or_else(|p| p.into_inner());
        let issuer = who.as_ref()?.issuer.trim_end_matches('/');
        Some(crate::auth::Identity {
            key: format!("login:{issuer}|{}", self.client_id),
            label: format!(
                "the account logged in at {issuer} (it names no subject and the upstream has no \
                 v1/me: after logging in as someone else, run --resync)"
            ),
        })
    }

    fn describe(&self) -> String {
        self.store.describe()
    }
}

/// The cross-process refresh lock: an exclusive lock on a file, taken off the async threads and
/// given up on after 30 s (a refresh never takes that long; a stuck holder must not hang us).
async fn acquire_refresh_lock(path: &Path) -> Result<std::fs::File, AuthError> {
    use fs4::fs_std::FileExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| AuthError::Transient(format!("cannot create {}: {e}", dir.display())))?;
    }
    let path = path.to_path_buf();
    let task = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        f.lock_exclusive()?;
        Ok(f)
    });
    match tokio::time::timeout(Duration::from_secs(30), task).await {
        Ok(Ok(Ok(f))) => Ok(f),
        Ok(Ok(Err(e))) => Err(AuthError::Transient(format!("refresh lock: {e}"))),
        Ok(Err(e)) => Err(AuthError::Transient(format!("refresh lock: {e}"))),
        Err(_) => Err(AuthError::Transient(
            "another aw-sync-samay has held the token refresh lock for 30 s".into(),
        )),
    }
}
