//! samay-dev-server: a local upstream for aw-sync-samay (development, demos, tests).
//! All behaviour lives in `samay_server`; this only parses arguments and waits for
//! Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use samay_server::{DevServerConfig, OidcConfig, DEV_CLIENT_ID};

/// Serve the upstream batch API over SQLite on loopback.
#[derive(Debug, Parser)]
#[command(name = "samay-dev-server", version)]
struct Args {
    /// Address to listen on (loopback only; port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:5680")]
    bind: SocketAddr,
    /// SQLite database file (created if missing, mode 0600: it holds every synced event and the
    /// provider's signing key).
    #[arg(long, default_value = "samay-dev-server.sqlite")]
    db: PathBuf,
    /// Accepted bearer token; repeat for several. Without any, a random one is made and printed.
    /// Prefer the SAMAY_DEV_TOKEN environment variable (comma-separated for several): a
    /// command line is visible to every user of the machine (`ps`), the environment is not.
    #[arg(
        long = "token",
        env = "SAMAY_DEV_TOKEN",
        value_delimiter = ',',
        hide_env_values = true
    )]
    tokens: Vec<String>,
    /// Sign every OAuth authorization request in at once as USER (or as the request's
    /// login_hint), without showing the sign-in page: for scripts and headless tests.
    #[arg(long, value_name = "USER")]
    auto_approve: Option<String>,
    /// Lifetime in seconds of the access tokens the OAuth provider issues.
    #[arg(long, value_name = "SECS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    access_token_ttl: u64,
    /// Also accept bearer tokens of this other OpenID provider (checked at its userinfo
    /// endpoint), e.g. a local oidc-provider.
    #[arg(long, value_name = "URL")]
    external_issuer: Option<url::Url>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut args = Args::parse();
    args.tokens.retain(|t| !t.trim().is_empty());
    if args.tokens.is_empty() {
        // A dev server is useless without a token the user can paste, so print the one we make.
        let token = format!("dev-{:032x}", rand::random::<u128>());
        println!("no --token given; accepting generated token: {token}");
        args.tokens.push(token);
    }
    let stop = samay_server::shutdown_signal();
    let server = samay_server::spawn_with(
        DevServerConfig {
            bind: args.bind,
            db_path: args.db.clone(),
            tokens: args.tokens,
        },
        OidcConfig {
            auto_approve: args.auto_approve.clone(),
            access_token_ttl: Duration::from_secs(args.access_token_ttl),
            external_issuer: args.external_issuer.clone(),
        },
    )
    .await?;
    println!(
        "samay-dev-server listening on {} (database {})",
        server.base_url(),
        args.db.display()
    );
    println!(
        "OpenID provider: issuer {issuer}, client_id {DEV_CLIENT_ID}, discovery {issuer}/.well-known/openid-configuration{auto}",
        issuer = server.issuer(),
        auto = match &args.auto_approve {
            Some(user) => format!(", auto-approving as {user:?}"),
            None => String::new(),
        }
    );
    if let Some(issuer) = &args.external_issuer {
        println!("also accepting access tokens of {issuer}");
    }
    stop.await;
    println!("samay-dev-server stopping");
    server.shutdown().await;
    Ok(())
}
