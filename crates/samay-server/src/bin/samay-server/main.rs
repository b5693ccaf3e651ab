//! samay-server: the upstream of aw-sync-samay for one person (SQLite, the default) or many
//! (PostgreSQL, any number of processes). Arguments, environment and config file are read here;
//! everything else lives in `samay_server`. `--dev` runs the dev server instead.

mod config;

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use samay_server::auth::{Authenticator, StaticTokens};
use samay_server::{DatabaseUrl, DevServerConfig, OidcConfig, ServerConfig};

use config::{Args, LogFormat, Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let settings = Settings::resolve(args)?;
    init_logs(settings.log_format);
    if settings.dev {
        return run_dev(settings).await;
    }
    let auth = authenticator(&settings)?;
    let stop = samay_server::shutdown_signal();
    let server = samay_server::spawn_server(
        ServerConfig {
            bind: settings.bind,
            database: settings.database.clone(),
            limits: settings.limits,
            behind_proxy: settings.behind_proxy,
        },
        auth,
    )
    .await?;
    tracing::info!(
        address = %server.addr(),
        database = %settings.database_display(),
        "samay-server listening on {}",
        server.base_url()
    );
    println!("samay-server listening on {}", server.base_url());
    stop.await;
    tracing::info!("stopping: draining in-flight requests");
    server.shutdown().await;
    Ok(())
}

/// Log lines on stderr, filtered by `RUST_LOG` (default: info, sqlx warnings only). Set up
/// after the settings are read because the format is one of them; an error in the settings is
/// reported by `main`'s return, not a log line.
fn init_logs(format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().with_current_span(false).init(),
    }
}

/// Who may use the server: tokens of the configured issuers, or the static tokens of
/// `SAMAY_STATIC_TOKENS` (a single-user setup without a provider).
fn authenticator(settings: &Settings) -> anyhow::Result<Arc<dyn Authenticator>> {
    if let Some(spec) = &settings.static_tokens {
        anyhow::ensure!(
            settings.issuers.is_empty(),
            "give either --issuer or SAMAY_STATIC_TOKENS, not both"
        );
        let tokens =
            StaticTokens::parse(spec).map_err(|e| anyhow::anyhow!("SAMAY_STATIC_TOKENS: {e}"))?;
        return Ok(Arc::new(tokens));
    }
    anyhow::ensure!(
        !settings.issuers.is_empty(),
        "no way to authenticate users: give --issuer URL (and --audience), or SAMAY_STATIC_TOKENS=SUBJECT=TOKEN"
    );
    samay_server::auth::issuer_authenticator(
        &settings.issuers,
        settings.audience.as_deref(),
        settings.introspection.clone(),
    )
}

/// `--dev`: the dev server (built-in provider, inspection), loopback only, SQLite only.
async fn run_dev(settings: Settings) -> anyhow::Result<()> {
    let DatabaseUrl::Sqlite(db_path) = settings.database.clone() else {
        anyhow::bail!(
            "--dev keeps its OpenID provider in the SQLite file: use a sqlite:// database URL"
        );
    };
    let mut tokens: Vec<String> = std::env::var("SAMAY_DEV_TOKEN")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect();
    if tokens.is_empty() {
        let token = format!("dev-{:032x}", rand::random::<u128>());
        println!("no SAMAY_DEV_TOKEN given; accepting generated token: {token}");
        tokens.push(token);
    }
    let stop = samay_server::shutdown_signal();
    let server = samay_server::spawn_with(
        DevServerConfig {
            bind: settings.bind,
            db_path: db_path.clone(),
            tokens,
        },
        OidcConfig::default(),
    )
    .await
    .context("starting the dev server")?;
    println!(
        "samay-server --dev listening on {} (database {}, OpenID issuer {})",
        server.base_url(),
        db_path.display(),
        server.issuer()
    );
    stop.await;
    server.shutdown().await;
    Ok(())
}
