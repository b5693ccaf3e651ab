//! `--dev`: the embedded upstream, with its OpenID provider approving every sign-in at once,
//! and a session logged in to it through the real flow (PKCE, loopback callback).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use aw_sync_samay::auth::oauth::{self, LoginOptions, OAuthSession};
use aw_sync_samay::auth::store::TokenStore;
use aw_sync_samay::auth::TokenSource;
use aw_sync_samay::config::{AuthConfig, CallbackMode, TokenStorage};
use aw_sync_samay::{devserver, paths};

/// Where `--dev` serves its embedded upstream when the port is free (else any free port).
pub const DEV_PORT: u16 = 5680;

/// Where the dev upstream keeps what it was sent, across runs.
pub fn db_path() -> anyhow::Result<PathBuf> {
    Ok(paths::data_dir()?.join("dev-upstream.sqlite"))
}

/// The embedded upstream for `--dev`, with its OpenID provider approving every sign-in at once,
/// and a session logged in to it through the real flow (PKCE, loopback callback) — the browser
/// being an in-process HTTP client that follows the provider's redirect.
pub async fn start(
    auth: &AuthConfig,
) -> anyhow::Result<(devserver::DevServer, Arc<dyn TokenSource>)> {
    let db_path = db_path()?;
    let user = std::env::var("USER")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| "dev".into());
    let mut last = None;
    let mut server = None;
    for port in [DEV_PORT, 0] {
        let cfg = devserver::DevServerConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], port)),
            db_path: db_path.clone(),
            ..Default::default()
        };
        let oidc = devserver::OidcConfig {
            auto_approve: Some(user.clone()),
            ..Default::default()
        };
        match devserver::spawn_with(cfg, oidc).await {
            Ok(s) => {
                server = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let Some(server) = server else {
        return Err(last.map_or_else(
            || anyhow::anyhow!("no port"),
            |e| e.context("starting the dev upstream"),
        ));
    };
    let mut auth = auth.clone();
    auth.issuer = server.issuer();
    auth.client_id = devserver::DEV_CLIENT_ID.to_string();
    auth.auth_url.clear();
    auth.token_url.clear();
    auth.userinfo_url.clear();
    auth.revocation_url.clear();
    auth.callback = CallbackMode::Loopback;
    auth.login_timeout = 30;
    let http = oauth::http_client()?;
    let provider = oauth::resolve_provider(&auth, &http).await?;
    let store = TokenStore::open(
        TokenStorage::File,
        oauth::configured_account(&auth),
        &paths::data_dir()?.join("dev"),
    )
    .await?;
    let opener: oauth::Opener = Box::new(|url| {
        let url = url.clone();
        tokio::spawn(async move {
            let browser = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::limited(3))
                .build();
            if let Ok(b) = browser {
                let _ = b.get(url).send().await;
            }
        });
    });
    let tokens = oauth::login(
        &auth,
        &store,
        &provider,
        LoginOptions {
            no_browser: false,
            opener: Some(opener),
            preflight: false,
        },
    )
    .await
    .context("logging in to the dev upstream")?;
    eprintln!(
        "dev upstream: logged in as {}",
        oauth::display_name(&tokens)
    );
    let session = OAuthSession::new(&auth, store, &paths::cache_dir()?).with_provider(provider);
    Ok((server, Arc::new(session)))
}
