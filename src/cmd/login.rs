//! `--login`, and the daemon's `auth.login_on_start` and tray "Log in…": sign in at the provider (browser, pasted
//! address or a code on another device) and store the tokens.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::bail;
use aw_sync_samay::auth::browser;
use aw_sync_samay::auth::device::{self, LoginMethod};
use aw_sync_samay::auth::oauth::{self, LoginOptions, OAuthSession};
use aw_sync_samay::auth::tokens::StoredTokens;
use aw_sync_samay::config::{AuthConfig, Config};

use super::tokens::open_token_store;
use super::Loaded;

pub async fn run(cx: &Loaded<'_>) -> anyhow::Result<ExitCode> {
    let (args, auth) = (cx.args, &cx.config.auth);
    if !oauth::login_configured(auth) {
        bail!(
            "the login is not configured: set auth.client_id and auth.issuer (or auth.auth_url and auth.token_url) in {}",
            cx.config_path.display()
        );
    }
    let http = oauth::http_client()?;
    let provider = oauth::resolve_provider(auth, &http).await?;
    let store = open_token_store(auth).await?;
    let no_browser_here = browser::reason_not_to_open();
    let offers_device = provider.device_authorization_endpoint.is_some();
    let method =
        device::choose_method(args.device, args.no_browser, no_browser_here, offers_device)
            .map_err(oauth::LoginError::from)?;
    if let (false, Some(why)) = (args.device || args.no_browser, no_browser_here) {
        match method {
            LoginMethod::Device => eprintln!(
                "No browser can be opened here: {why}.\nSigning in with a code on another device instead.\n"
            ),
            _ => eprintln!(
                "No browser can be opened here: {why}.\nThe provider offers no sign-in with a code, so open the URL on another device and paste back the address it sends you to.\n"
            ),
        }
    }
    let tokens = match method {
        LoginMethod::Device => {
            device::login(auth, &store, &provider, &http, |p| eprintln!("{p}")).await?
        }
        LoginMethod::Browser | LoginMethod::Paste => {
            let opts = LoginOptions {
                no_browser: method == LoginMethod::Paste,
                opener: None,
                preflight: true,
            };
            oauth::login(auth, &store, &provider, opts).await?
        }
    };
    println!("Logged in as {}", oauth::display_name(&tokens));
    println!("Tokens stored in {}.", store.describe());
    Ok(ExitCode::SUCCESS)
}

/// `auth.login_on_start`: a daemon started logged out opens the browser login once, in the
/// background, so enabling the module is the "Login" click. Never otherwise.
pub async fn on_start(config: &Config, session: &Arc<OAuthSession>, once: bool) {
    if once || !config.auth.login_on_start {
        return;
    }
    if !matches!(session.store().load().await, Ok(None)) {
        return;
    }
    tracing::info!("logged out and auth.login_on_start = true: opening the browser to log in");
    let auth = config.auth.clone();
    tokio::spawn(async move {
        match browser_login(&auth).await {
            Ok(t) => tracing::info!("Logged in as {}", oauth::display_name(&t)),
            Err(e) => tracing::warn!("the login did not complete: {e:#}"),
        }
    });
}

/// The browser login of `--login` (loopback, PKCE, the configured token storage), run by the
/// daemon: `auth.login_on_start`, and the tray's "Log in…".
pub async fn browser_login(auth: &AuthConfig) -> anyhow::Result<StoredTokens> {
    let http = oauth::http_client()?;
    let provider = oauth::resolve_provider(auth, &http).await?;
    let store = open_token_store(auth).await?;
    let opts = LoginOptions {
        no_browser: false,
        opener: None,
        preflight: true,
    };
    Ok(oauth::login(auth, &store, &provider, opts).await?)
}
