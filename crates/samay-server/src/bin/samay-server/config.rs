//! Where each setting comes from: the command line, else the environment (`SAMAY_*`), else the
//! config file (`--config`, TOML, unknown keys refused so a typo is an error, not a silent
//! default), else the default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use serde::Deserialize;

use samay_server::{DatabaseUrl, IntrospectionClient, Limits};

const DEFAULT_BIND: &str = "127.0.0.1:5690";

/// The upstream of aw-sync-samay: stores the events of many users and devices on SQLite (the
/// default) or PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "samay-server", version)]
pub struct Args {
    /// TOML file with any of: bind, database_url, issuers, audience, introspection_client_id,
    /// introspection_client_secret, behind_proxy, log_format, [limits].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:5690].
    #[arg(long, env = "SAMAY_BIND", value_name = "ADDR:PORT")]
    pub bind: Option<SocketAddr>,
    /// sqlite://PATH or postgres://USER@HOST/DB [default: a file in the user's data directory].
    #[arg(
        long,
        env = "SAMAY_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,
    /// OpenID provider whose access tokens are accepted; repeat for several.
    #[arg(
        long = "issuer",
        env = "SAMAY_ISSUER",
        value_delimiter = ',',
        value_name = "URL"
    )]
    pub issuers: Vec<String>,
    /// The audience access tokens must name (the API's resource identifier).
    #[arg(long, env = "SAMAY_AUDIENCE", value_name = "AUD")]
    pub audience: Option<String>,
    /// The dev server instead: built-in OpenID provider, inspection pages; loopback only.
    #[arg(long)]
    pub dev: bool,
    /// A TLS-terminating reverse proxy is in front: allows a non-loopback --bind.
    #[arg(long)]
    pub behind_proxy: bool,
    /// How log lines on stderr look: `text` (for people) or `json` (one object per line, for
    /// journald/Loki/Elasticsearch pipelines) [default: text].
    #[arg(long, env = "SAMAY_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
}

/// The format of the log lines (stderr).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    /// tracing-subscriber's JSON lines: `timestamp`, `level`, `target`, `fields` (the message
    /// and the event's fields), `span`/`spans` when inside one.
    Json,
}

/// The config file. Every key optional; unknown keys are an error.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    bind: Option<SocketAddr>,
    database_url: Option<String>,
    #[serde(default)]
    issuers: Vec<String>,
    audience: Option<String>,
    introspection_client_id: Option<String>,
    introspection_client_secret: Option<String>,
    #[serde(default)]
    behind_proxy: bool,
    log_format: Option<LogFormat>,
    #[serde(default)]
    limits: FileLimits,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    max_body_bytes: Option<u64>,
    max_events: Option<usize>,
    request_timeout_secs: Option<u64>,
    rate_per_minute: Option<u32>,
    rate_burst: Option<u32>,
}

#[derive(Debug)]
pub struct Settings {
    pub bind: SocketAddr,
    pub database: DatabaseUrl,
    /// As given: a token's `iss` must equal one exactly, so they are not normalised (a URL
    /// parser would add a `/` to a bare host). The verifier checks them.
    pub issuers: Vec<String>,
    pub audience: Option<String>,
    /// Client credentials for RFC 7662 introspection of opaque tokens (`SAMAY_INTROSPECTION_
    /// CLIENT_ID` / `_SECRET`, or the file); without them only JWT access tokens are accepted.
    pub introspection: Option<IntrospectionClient>,
    pub dev: bool,
    pub behind_proxy: bool,
    pub limits: Limits,
    pub log_format: LogFormat,
    /// `SAMAY_STATIC_TOKENS`: `SUBJECT=TOKEN,…` (environment only: never on a command line).
    pub static_tokens: Option<String>,
}

impl Settings {
    pub fn resolve(args: Args) -> anyhow::Result<Self> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => File::default(),
        };
        let bind = match args.bind.or(file.bind) {
            Some(bind) => bind,
            None => DEFAULT_BIND
                .parse()
                .unwrap_or_else(|_| unreachable!("a valid address")),
        };
        let database = match args.database_url.or(file.database_url) {
            Some(url) => url.parse().map_err(|e: String| anyhow::anyhow!(e))?,
            None => DatabaseUrl::Sqlite(default_database()?),
        };
        let defaults = Limits::default();
        let limits = Limits {
            max_body_bytes: file
                .limits
                .max_body_bytes
                .unwrap_or(defaults.max_body_bytes),
            max_events: file.limits.max_events.unwrap_or(defaults.max_events),
            request_timeout: file
                .limits
                .request_timeout_secs
                .map_or(defaults.request_timeout, Duration::from_secs),
            rate_per_minute: file
                .limits
                .rate_per_minute
                .unwrap_or(defaults.rate_per_minute),
            rate_burst: file.limits.rate_burst.unwrap_or(defaults.rate_burst),
        };
        anyhow::ensure!(
            limits.max_events > 0,
            "limits.max_events must be at least 1"
        );
        anyhow::ensure!(
            !limits.request_timeout.is_zero(),
            "limits.request_timeout_secs must be at least 1"
        );
        let settings = Self {
            bind,
            database,
            issuers: if args.issuers.is_empty() {
                file.issuers
            } else {
                args.issuers
            },
            audience: args.audience.or(file.audience),
            introspection: introspection_client(
                std::env::var("SAMAY_INTROSPECTION_CLIENT_ID")
                    .ok()
                    .or(file.introspection_client_id),
                std::env::var("SAMAY_INTROSPECTION_CLIENT_SECRET")
                    .ok()
                    .or(file.introspection_client_secret),
            )?,
            dev: args.dev,
            behind_proxy: args.behind_proxy || file.behind_proxy,
            limits,
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
            static_tokens: std::env::var("SAMAY_STATIC_TOKENS")
                .ok()
                .filter(|s| !s.trim().is_empty()),
        };
        if settings.dev {
            anyhow::ensure!(
                settings.bind.ip().is_loopback(),
                "--dev listens on loopback only (its inspection pages need no token), not {}",
                settings.bind
            );
        }
        Ok(settings)
    }

    /// The database without credentials, for logs.
    pub fn database_display(&self) -> String {
        match &self.database {
            DatabaseUrl::Sqlite(path) => format!("sqlite://{}", path.display()),
            DatabaseUrl::Postgres(url) => match url::Url::parse(url) {
                Ok(mut u) => {
                    let _ = u.set_password(None);
                    u.to_string()
                }
                Err(_) => "postgres://…".into(),
            },
        }
    }
}

/// Both or neither: an id without its secret (or the reverse) is a typo to report, not a reason
/// to start without introspection.
fn introspection_client(
    id: Option<String>,
    secret: Option<String>,
) -> anyhow::Result<Option<IntrospectionClient>> {
    let id = id.filter(|s| !s.is_empty());
    let secret = secret.filter(|s| !s.is_empty());
    match (id, secret) {
        (Some(client_id), Some(client_secret)) => Ok(Some(IntrospectionClient {
            client_id,
            client_secret,
        })),
        (None, None) => Ok(None),
        _ => anyhow::bail!(
            "introspection needs both a client id and a client secret (SAMAY_INTROSPECTION_CLIENT_ID and SAMAY_INTROSPECTION_CLIENT_SECRET, or introspection_client_id and introspection_client_secret in the config file)"
        ),
    }
}

fn read_file(path: &Path) -> anyhow::Result<File> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the config file {}", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))
}

/// `samay.sqlite` in the user's data directory (`~/.local/share/samay-server/`), created.
fn default_database() -> anyhow::Result<PathBuf> {
    let dirs = directories::ProjectDirs::from("", "", "samay-server")
        .context("no home directory to keep the database in: pass --database-url sqlite://PATH")?;
    let dir = dirs.data_dir();
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir.join("samay.sqlite"))
}
