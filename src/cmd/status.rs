//! `--status [--json|--short]`: what has been synced, what is pending and what to do; exits 0
//! healthy, 1 the user must act, 2 unreachable.

use std::process::ExitCode;
use std::time::Duration;

use aw_sync_samay::auth::oauth;
use aw_sync_samay::auth::{StaticToken, TokenSource as _, TOKEN_ENV};
use aw_sync_samay::config::Config;
use aw_sync_samay::engine::Settings;
use aw_sync_samay::status::{self, Login, TokenLine};
use aw_sync_samay::upstream::UpstreamClient;
use aw_sync_samay::{control, hint, paths};

use super::tokens::open_token_store;
use super::Loaded;

pub async fn run(cx: &Loaded<'_>) -> anyhow::Result<ExitCode> {
    let (args, config) = (cx.args, &cx.config);
    let upstream = if config.sync.base_url.is_empty() {
        None
    } else {
        Some(UpstreamClient::new(
            &config.sync.base_url,
            Duration::from_secs(5),
            config.sync.gzip.applies_to(&config.sync.base_url),
        )?)
    };
    let privacy = Settings::from_config(&config.sync).privacy;
    let st = status::gather(status::Probe {
        source: &cx.source,
        upstream: upstream.as_ref(),
        base_url: config.sync.base_url.trim(),
        privacy: &privacy,
        token: token_status(config).await,
        state_path: &cx.state_path,
        config_path: &cx.config_path,
        sync_enabled: config.sync.enabled,
        socket: control::socket_path(&args.host, args.resolved_port()).ok(),
        log_dir: paths::log_dir().ok(),
        testing: args.testing,
        hostname: gethostname::gethostname().to_string_lossy().into_owned(),
        pull_enabled: config.sync.pull,
    })
    .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&st)?);
    } else if args.short {
        println!("{}", st.short());
    } else {
        print!("{}", st.render());
    }
    Ok(ExitCode::from(st.exit_code))
}

/// The token line of `--status`: where tokens come from and who is logged in.
async fn token_status(config: &Config) -> TokenLine {
    let line = |text: String, login| TokenLine {
        text,
        login,
        account: None,
    };
    if let Some(t) = StaticToken::from_env() {
        return line(t.describe(), Login::Environment);
    }
    let login = hint::command("--login");
    if !oauth::login_configured(&config.auth) {
        return line(
            format!("none: configure [auth] and run {login}, or set {TOKEN_ENV}"),
            Login::NotConfigured,
        );
    }
    match open_token_store(&config.auth).await {
        Err(e) => line(
            format!("token storage unavailable: {e:#}"),
            Login::Unavailable,
        ),
        Ok(store) => match store.load().await {
            Ok(Some(t)) => TokenLine {
                account: t
                    .subject
                    .as_deref()
                    .map(|subject| oauth::account_key(&t.issuer, subject)),
                ..line(
                    format!(
                        "{}: logged in as {}",
                        store.describe(),
                        oauth::display_name(&t)
                    ),
                    Login::LoggedIn,
                )
            },
            Ok(None) => line(
                format!("{}: login required: run {login}", store.describe()),
                Login::LoginRequired,
            ),
            Err(e) => line(
                format!("{}: unreadable ({e}): run {login}", store.describe()),
                Login::Unavailable,
            ),
        },
    }
}
