//! Where the commands get tokens from: the token storage of `[auth]`, or the daemon's token
//! source (environment, login session, or none).

use std::sync::Arc;

use anyhow::Context as _;
use aw_sync_samay::auth::oauth::{self, OAuthSession};
use aw_sync_samay::auth::store::TokenStore;
use aw_sync_samay::auth::{NoToken, StaticToken, TokenSource};
use aw_sync_samay::config::{AuthConfig, Config};
use aw_sync_samay::paths;

/// The daemon's token source: `AW_SYNC_SAMAY_TOKEN` when set (used as is), else the login
/// session when `[auth]` is configured, else none (the daemon idles: "login required").
pub async fn token_source(
    config: &Config,
) -> anyhow::Result<(Arc<dyn TokenSource>, Option<Arc<OAuthSession>>)> {
    if let Some(t) = StaticToken::from_env() {
        return Ok((Arc::new(t), None));
    }
    if !oauth::login_configured(&config.auth) {
        return Ok((Arc::new(NoToken), None));
    }
    let store = open_token_store(&config.auth).await?;
    let session = Arc::new(OAuthSession::new(&config.auth, store, &paths::cache_dir()?));
    Ok((session.clone(), Some(session)))
}

pub async fn open_token_store(auth: &AuthConfig) -> anyhow::Result<TokenStore> {
    TokenStore::open(
        auth.token_storage,
        oauth::configured_account(auth),
        &paths::data_dir()?,
    )
    .await
    .context("opening the token storage")
}
