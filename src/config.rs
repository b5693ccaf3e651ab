//! The config file `<config_dir>/activitywatch/aw-sync-samay/aw-sync-samay[-testing].toml`.
//! These serde structs with their defaults are the single source of truth for every key: the
//! commented-out file written on first run is generated from [`Config::default`], and a key the
//! user leaves commented out keeps its default, so a later version's new defaults reach them.
//!
//! Loading never guesses: a value of the wrong type or out of range stops the program with the
//! file, line, column and key to fix, and so does a key it does not know in one of its sections
//! (a misspelt privacy filter would silently do nothing); only names that cannot be meant for
//! it are warnings ([`keys`] says which).

mod keys;
mod template;

pub use template::default_file_contents;

use std::fmt::Write as _;
use std::io::Write as _;
use std::ops::Range;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Unknown keys are found before serde sees the file ([`keys::unknown_keys`]), so each gets
/// its own message and position rather than `deny_unknown_fields`' generic one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Config {
    pub auth: AuthConfig,
    pub sync: SyncConfig,
    pub ui: UiConfig,
}

/// `[ui]`: what the daemon shows on the desktop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct UiConfig {
    /// The tray icon with its menu (log in/out, sync now, pause); see [`crate::tray`].
    pub tray: TrayMode,
}

/// `ui.tray`. Only the daemon shows an icon; the one-shot commands never do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum TrayMode {
    /// Shown when the desktop has a tray host; without one the daemon quietly runs without.
    #[default]
    Auto,
    /// Always tried; when there is no tray host the daemon logs why and syncs on.
    On,
    Off,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthConfig {
    pub enabled: bool,
    pub client_id: String,
    pub redirect_uri: String,
    pub scopes: Vec<String>,
    /// Empty: taken from OpenID discovery of `issuer`.
    pub auth_url: String,
    pub token_url: String,
    pub issuer: String,
    /// RFC 7009 revocation endpoint; empty: from discovery (none: logout only forgets).
    pub revocation_url: String,
    /// OpenID Connect userinfo endpoint; empty: from discovery.
    pub userinfo_url: String,
    /// RFC 8628 device authorization endpoint (`--login --device`); empty: from discovery.
    pub device_authorization_url: String,
    /// Where tokens are kept: the OS keyring, or a 0600 file in the data dir.
    pub token_storage: TokenStorage,
    /// How the browser hands the login back: loopback listener, private-use URI scheme, or
    /// loopback with the scheme as the fallback.
    pub callback: CallbackMode,
    /// The private-use redirect URI used when the loopback listener can't be.
    pub deep_link_uri: String,
    /// Seconds to wait for the browser to come back.
    pub login_timeout: u64,
    /// Open the browser login when the daemon starts logged out.
    pub login_on_start: bool,
    /// RFC 8707 resource indicator: the API the access tokens are for. Providers that issue
    /// JWT access tokens for an API (samay-server's `--audience`) need it; empty: none sent.
    pub resource: String,
}

/// `auth.token_storage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TokenStorage {
    /// The OS keyring when one answers, else the file with a loud warning.
    Auto,
    Keyring,
    File,
}

/// `auth.callback`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CallbackMode {
    Auto,
    Loopback,
    DeepLink,
}

/// `sync.gzip`: `"auto"`, `true` or `false`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Gzip {
    /// gzip unless the upstream is on this machine (a loopback address or `localhost`). Over
    /// loopback the bytes never touch a network, so compressing only costs CPU — on both ends,
    /// and a fifth of the sidecar's own CPU in a catch-up (measured: 1M events, 4.84 s of CPU
    /// with gzip, 3.79 s without). Over any network a batch shrinks about sixfold.
    #[default]
    Auto,
    Always,
    Never,
}

impl Gzip {
    /// Whether bodies sent to `base_url` are gzipped.
    pub fn applies_to(self, base_url: &str) -> bool {
        match self {
            Gzip::Always => true,
            Gzip::Never => false,
            Gzip::Auto => {
                !url::Url::parse(base_url).is_ok_and(|u| crate::endpoint::is_loopback(&u))
            }
        }
    }
}

impl Serialize for Gzip {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Gzip::Auto => s.serialize_str("auto"),
            Gzip::Always => s.serialize_bool(true),
            Gzip::Never => s.serialize_bool(false),
        }
    }
}

impl<'de> Deserialize<'de> for Gzip {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Gzip;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("true, false or \"auto\"")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Gzip, E> {
                Ok(if v { Gzip::Always } else { Gzip::Never })
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Gzip, E> {
                match v {
                    "auto" => Ok(Gzip::Auto),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            client_id: String::new(),
            redirect_uri: "http://127.0.0.1:54783/callback".into(),
            scopes: vec![
                "openid".into(),
                "profile".into(),
                "email".into(),
                "offline_access".into(),
            ],
            auth_url: String::new(),
            token_url: String::new(),
            issuer: String::new(),
            revocation_url: String::new(),
            userinfo_url: String::new(),
            device_authorization_url: String::new(),
            token_storage: TokenStorage::Auto,
            callback: CallbackMode::Auto,
            deep_link_uri: "samay://callback".into(),
            login_timeout: 300,
            login_on_start: false,
            resource: String::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SyncConfig {
    pub enabled: bool,
    /// The upstream's base URL; `{base_url}/v1/events/batch` receives the batches. Empty: not
    /// configured, the daemon idles and says so.
    pub base_url: String,
    /// Seconds between sync cycles.
    pub sync_interval: u64,
    /// Events per upload batch.
    pub batch_size: usize,
    /// Upload batches on the wire at once.
    pub upload_concurrency: usize,
    /// Retries of one batch on 408/429/5xx/network errors before the cycle gives up.
    pub max_retries: u32,
    /// Events read but not yet acknowledged, at most; reading pauses when it is full.
    pub offline_queue_size: usize,
    /// Seconds below the newest synced data that every pass re-reads, to catch late inserts
    /// near it without a count mismatch.
    pub lookback: u64,
    /// Events fetched from aw-server per request.
    pub page_size: usize,
    /// Seconds one upstream request may take.
    pub request_timeout: u64,
    /// Whether upload bodies are gzipped (see [`Gzip`]).
    pub gzip: Gzip,
    /// Events per bucket each background verification step re-reads and re-hashes; 0: never.
    pub verify_batch: u64,
    /// Seconds between two background verification steps.
    pub verify_interval: u64,
    /// Bucket-id patterns (`*`, `?`) to sync; empty: every bucket.
    pub include_buckets: Vec<String>,
    /// Bucket-id patterns never synced; wins over `include_buckets`.
    pub exclude_buckets: Vec<String>,
    /// Nothing that ended before this instant is uploaded: an RFC 3339 date-time, or a date
    /// (midnight, local time). Written as `""` when unset, so the key shows in the default file.
    #[serde(
        serialize_with = "serialize_opt_string",
        deserialize_with = "deserialize_opt_string"
    )]
    pub start_from: Option<String>,
    /// `[[sync.redact]]` rules: data fields dropped or replaced by a keyed hash.
    pub redact: Vec<RedactRule>,
    /// Each cycle also imports the other devices' events of the same account into the local
    /// aw-server (issue 14, [`crate::pull`]). Off by default: it writes into aw-server.
    pub pull: bool,
    /// Devices to pull (host names or device ids); empty: every other device.
    pub pull_devices: Vec<String>,
    /// Devices never pulled (host names or device ids); wins over `pull_devices`.
    pub exclude_pull_devices: Vec<String>,
}

/// One `[[sync.redact]]` table. Unlike the rest of the file, a misspelt key here is an error,
/// not a warning: `dorp = ["title"]` taken as "no rule" would upload what the user meant to hide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedactRule {
    /// Bucket-id pattern the rule applies to (`*`, `?`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buckets: Option<String>,
    /// Bucket type the rule applies to (e.g. "currentwindow", "web.tab.current"; `*`, `?` work).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub types: Option<String>,
    /// Top-level data fields removed.
    #[serde(default)]
    pub drop: Vec<String>,
    /// Top-level data fields replaced by "blake3:<keyed hash>" (see [`crate::privacy::keyed_hash`]).
    #[serde(default)]
    pub hash: Vec<String>,
}

fn serialize_opt_string<S: serde::Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v.as_deref().unwrap_or(""))
}

/// `""` (what the default file says) means unset.
fn deserialize_opt_string<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    Ok((!s.trim().is_empty()).then_some(s))
}

impl SyncConfig {
    /// `start_from` as an instant. A date alone is midnight local time: what a user writing
    /// "from 2025-01-01 on" means on their own calendar.
    pub fn start_from_instant(&self) -> Result<Option<DateTime<Utc>>, ConfigError> {
        let Some(text) = self.start_from.as_deref().map(str::trim) else {
            return Ok(None);
        };
        if let Ok(t) = DateTime::parse_from_rfc3339(text) {
            return Ok(Some(t.with_timezone(&Utc)));
        }
        let date = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| {
            ConfigError::invalid(
                "sync.start_from",
                format!("{text:?} is neither an RFC 3339 date-time (\"2025-01-31T08:00:00+01:00\") nor a date (\"2025-01-31\")"),
            )
        })?;
        let midnight = date.and_time(chrono::NaiveTime::MIN);
        let local = midnight
            .and_local_timezone(chrono::Local)
            .earliest()
            .map(|t| t.with_timezone(&Utc))
            // A midnight skipped by a DST change: the same wall time read as UTC, near enough.
            .unwrap_or_else(|| midnight.and_utc());
        Ok(Some(local))
    }
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            base_url: String::new(),
            sync_interval: 300,
            batch_size: 500,
            upload_concurrency: 3,
            max_retries: 3,
            offline_queue_size: 2000,
            lookback: 3600,
            page_size: 1000,
            request_timeout: 30,
            gzip: Gzip::Auto,
            verify_batch: 5000,
            verify_interval: 3600,
            include_buckets: Vec::new(),
            exclude_buckets: Vec::new(),
            start_from: None,
            redact: Vec::new(),
            pull: false,
            pull_devices: Vec::new(),
            exclude_pull_devices: Vec::new(),
        }
    }
}

/// `sync.lookback` at most: re-reading more than a month each cycle is a mistake, not a setting.
pub const MAX_LOOKBACK_SECS: u64 = 30 * 24 * 3600;

/// A config as loaded from a file, with what the user should be told about it.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedConfig {
    pub config: Config,
    /// The file it came from.
    pub path: PathBuf,
    /// Foreign top-level names that were ignored, one sentence each, for the log.
    pub warnings: Vec<String>,
    /// The file did not exist and was written with the commented-out defaults.
    pub created: bool,
}

/// Why the config could not be used. Each message is one line that says which file, where, and
/// what to change; the daemon prints it and exits, since syncing with a config the user did not
/// mean would be worse than not syncing.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {}: {source} (check that it is readable, or pass --config FILE)", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "cannot create the default config file {}: {source} (check the directory's permissions, or pass --config FILE)",
        path.display()
    )]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The TOML is malformed, or a value has the wrong type. `key` is the dotted key when the
    /// error is in a value.
    #[error("{}:{line}:{column}: {}", path.display(), describe_parse(key.as_deref(), message))]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        key: Option<String>,
        message: String,
    },

    /// A key this program does not know, in one of its sections or meant for one; `hint` is
    /// the "did you mean" or what belongs there.
    #[error("{}:{line}:{column}: unknown key `{key}`: {hint}", path.display())]
    UnknownKey {
        path: PathBuf,
        line: usize,
        column: usize,
        key: String,
        hint: String,
    },

    /// A value parsed but is not acceptable ([`Config::validate`]). `path` and `position`
    /// (line, column of the key) are filled in when the config came from a file.
    #[error("{}invalid `{key}`: {message}", location_prefix(path.as_deref(), *position))]
    Invalid {
        path: Option<PathBuf>,
        position: Option<(usize, usize)>,
        key: String,
        message: String,
    },
}

fn describe_parse(key: Option<&str>, message: &str) -> String {
    match key {
        Some(key) => format!("invalid value for `{key}`: {message}"),
        None => format!("invalid TOML: {message}"),
    }
}

fn location_prefix(path: Option<&Path>, position: Option<(usize, usize)>) -> String {
    match (path, position) {
        (Some(path), Some((line, column))) => format!("{}:{line}:{column}: ", path.display()),
        (Some(path), None) => format!("{}: ", path.display()),
        (None, _) => String::new(),
    }
}

impl ConfigError {
    pub(crate) fn invalid(key: &str, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            path: None,
            position: None,
            key: key.to_owned(),
            message: message.into(),
        }
    }

    /// The key the error is about, for callers that want to point at it.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Parse { key, .. } => key.as_deref(),
            ConfigError::Invalid { key, .. } | ConfigError::UnknownKey { key, .. } => Some(key),
            ConfigError::Read { .. } | ConfigError::Create { .. } => None,
        }
    }
}

impl Config {
    /// Checks what types cannot: ranges, and that `sync.base_url` and the `auth` endpoints are
    /// URLs events and tokens may be sent to. The error names the key (dotted, as written in
    /// the file).
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_base_url(&self.sync.base_url)?;
        validate_auth_urls(&self.auth)?;
        let s = &self.sync;
        for (key, b) in keys::bounded() {
            check_range(key, (b.get)(s), b.min, b.max)?;
        }
        if s.offline_queue_size < s.batch_size {
            return Err(ConfigError::invalid(
                "sync.offline_queue_size",
                format!(
                    "{} is smaller than `sync.batch_size` ({}); it must hold at least one batch, raise it or lower `sync.batch_size`",
                    s.offline_queue_size, s.batch_size
                ),
            ));
        }
        if s.lookback > MAX_LOOKBACK_SECS {
            return Err(ConfigError::invalid(
                "sync.lookback",
                format!(
                    "{} seconds is more than 30 days; use at most {MAX_LOOKBACK_SECS}",
                    s.lookback
                ),
            ));
        }
        s.start_from_instant()?;
        crate::privacy::Privacy::from_config(s)?;
        Ok(())
    }
}

fn check_range(key: &str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        return Ok(());
    }
    let expected = if max == u64::MAX {
        format!("at least {min}")
    } else if min == 0 {
        format!("at most {max}")
    } else {
        format!("between {min} and {max}")
    };
    Err(ConfigError::invalid(
        key,
        format!("{value} is out of range; use a value {expected}"),
    ))
}

/// Empty means "not configured" (the daemon idles and says so). Otherwise events and bearer
/// tokens go there, so it must pass [`crate::endpoint::secure_url`] (https, or http to this
/// machine); the API paths are appended to it, so no query or fragment either.
fn validate_base_url(base_url: &str) -> Result<(), ConfigError> {
    const KEY: &str = "sync.base_url";
    if base_url.is_empty() {
        return Ok(());
    }
    let url = crate::endpoint::secure_url(KEY, base_url)?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ConfigError::invalid(
            KEY,
            format!(
                "{base_url:?} must not have a query or fragment; the API paths are appended to it"
            ),
        ));
    }
    Ok(())
}

/// The login's endpoints carry the authorization code, the PKCE verifier and the tokens: the
/// same rule as `sync.base_url`. Empty means "from discovery" (whose answers are checked
/// against the same rule when they arrive, in `auth::oauth::resolve_provider`).
fn validate_auth_urls(auth: &AuthConfig) -> Result<(), ConfigError> {
    for (key, value) in [
        ("auth.issuer", &auth.issuer),
        ("auth.auth_url", &auth.auth_url),
        ("auth.token_url", &auth.token_url),
        ("auth.userinfo_url", &auth.userinfo_url),
        ("auth.revocation_url", &auth.revocation_url),
        (
            "auth.device_authorization_url",
            &auth.device_authorization_url,
        ),
    ] {
        let value = value.trim();
        if !value.is_empty() {
            crate::endpoint::secure_url(key, value)?;
        }
    }
    validate_resource(&auth.resource)
}

/// RFC 8707 §2: a resource indicator is an absolute URI without a fragment. It names the API,
/// nothing is sent to it, so it need not be https.
fn validate_resource(resource: &str) -> Result<(), ConfigError> {
    if resource.is_empty() {
        return Ok(());
    }
    match url::Url::parse(resource) {
        Ok(url) if url.fragment().is_none() => Ok(()),
        Ok(_) => Err(ConfigError::invalid(
            "auth.resource",
            "a resource indicator has no #fragment (RFC 8707)".to_string(),
        )),
        Err(e) => Err(ConfigError::invalid(
            "auth.resource",
            format!("{resource:?} is not an absolute URI ({e}); use the upstream's audience, e.g. \"https://samay.example/api\""),
        )),
    }
}

impl From<crate::endpoint::EndpointError> for ConfigError {
    fn from(e: crate::endpoint::EndpointError) -> Self {
        ConfigError::invalid(&e.key, e.message)
    }
}

/// Loads the config from `path`; on first run (no file) writes the commented-out defaults there
/// first, so the user has a documented file to edit. Missing keys take their defaults, unknown
/// keys become [`LoadedConfig::warnings`], and the result is [validated](Config::validate).
pub fn load(path: &Path) -> Result<LoadedConfig, ConfigError> {
    let created = create_default_file(path)?;
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let (config, warnings) = parse(&text, path)?;
    config.validate().map_err(|e| match e {
        ConfigError::Invalid { key, message, .. } => ConfigError::Invalid {
            position: key_position(&text, &key),
            path: Some(path.to_owned()),
            key,
            message,
        },
        other => other,
    })?;
    Ok(LoadedConfig {
        config,
        path: path.to_owned(),
        warnings,
        created,
    })
}

/// Writes the default file unless one exists. `create_new` rather than a check-then-write, so
/// two instances starting together never clobber a file a user just wrote.
fn create_default_file(path: &Path) -> Result<bool, ConfigError> {
    let create_err = |source| ConfigError::Create {
        path: path.to_owned(),
        source,
    };
    if path.exists() {
        return Ok(false);
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(create_err)?;
    }
    let contents = default_file_contents().map_err(|e| create_err(std::io::Error::other(e)))?;
    let mut file = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(create_err(e)),
    };
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(create_err)?;
    Ok(true)
}

/// Parses config text; `path` is only for messages. Returns the config and the warnings about
/// foreign names; an unknown key of ours is an error ([`keys`]).
pub fn parse(text: &str, path: &Path) -> Result<(Config, Vec<String>), ConfigError> {
    let parse_error = |err: toml::de::Error, key: Option<String>| {
        let (line, column) = err
            .span()
            .map(|span| line_col(text, span.start))
            .unwrap_or((1, 1));
        let mut message = friendly_message(err.message(), key.as_deref());
        if let Some(first) = err.span().and_then(|span| first_definition(text, &span)) {
            message.push_str(&first);
        }
        ConfigError::Parse {
            path: path.to_owned(),
            line,
            column,
            message,
            key,
        }
    };
    let table = toml::de::DeTable::parse(text).map_err(|e| parse_error(e, None))?;
    let mut warnings = Vec::new();
    for unknown in keys::unknown_keys(table.get_ref()) {
        let (line, column) = line_col(text, unknown.offset);
        if unknown.foreign {
            warnings.push(format!(
                "{}:{line}:{column}: `{}` {}",
                path.display(),
                unknown.key,
                unknown.hint
            ));
            continue;
        }
        return Err(ConfigError::UnknownKey {
            path: path.to_owned(),
            line,
            column,
            key: unknown.key,
            hint: unknown.hint,
        });
    }
    let config = Config::deserialize(toml::de::Deserializer::from(table)).map_err(|e| {
        let key = e.span().and_then(|span| key_at(text, &span));
        parse_error(e, key)
    })?;
    Ok((config, warnings))
}

/// For a duplicate key at `span`: where the same name was set first. TOML points at the second
/// one only, which alone reads as "this line is wrong" when the earlier line is the mistake —
/// as a `redact = []` line above `[[sync.redact]]` tables is (issue 10).
fn first_definition(text: &str, span: &Range<usize>) -> Option<String> {
    let name = text.get(span.clone())?.trim().trim_matches(['"', '\'']);
    if name.is_empty() {
        return None;
    }
    let (line, _) = line_col(text, span.start);
    let first = text.lines().take(line - 1).position(|l| {
        let l = l.trim_start();
        l.strip_prefix(name)
            .is_some_and(|rest| rest.trim_start().starts_with(['=', '.']))
            || (l.starts_with('[')
                && l.trim_matches(['[', ']', ' '])
                    .split('.')
                    .any(|p| p.trim() == name))
    })?;
    let mut said = format!(
        " `{name}`, first set at line {}; set each key once",
        first + 1
    );
    if name == "redact" {
        said.push_str(
            " (redaction rules are [[sync.redact]] tables only: remove the `redact = ...` line)",
        );
    }
    Some(said)
}

/// serde speaks Rust ("expected usize"); the user wrote TOML. Flattened to one line, with the
/// default as an example of a good value.
fn friendly_message(message: &str, key: Option<&str>) -> String {
    let mut message = message.trim().replace('\n', "; ");
    for rust in ["usize", "u64", "u32", "u16", "u8"] {
        message = message.replace(
            &format!("expected {rust}"),
            "expected a non-negative integer",
        );
    }
    for table in ["Config", "AuthConfig", "SyncConfig", "RedactRule"] {
        message = message.replace(&format!("expected struct {table}"), "expected a table");
    }
    if let Some(default) = key.and_then(default_value_of) {
        let _ = write!(message, " (default: {default})");
    }
    message
}

/// The default of a key, as TOML, to show as an example; `None` for tables (too long for one
/// line) and unknown keys.
fn default_value_of(key: &str) -> Option<String> {
    let mut value = toml::Value::try_from(Config::default()).ok()?;
    for part in key.split('.') {
        value = value.get(part)?.clone();
    }
    (!value.is_table()).then(|| value.to_string())
}

/// 1-based line and column (in characters) of a byte offset, as editors count them.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

/// The dotted key whose value (or key) covers `span` in the document, to name it in errors.
fn key_at(text: &str, span: &Range<usize>) -> Option<String> {
    let table = toml::de::DeTable::parse(text).ok()?;
    find_key(table.get_ref(), span.start, "")
}

fn find_key(table: &toml::de::DeTable<'_>, offset: usize, prefix: &str) -> Option<String> {
    for (key, value) in table.iter() {
        let path = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{}", key.get_ref())
        };
        if let toml::de::DeValue::Table(inner) = value.get_ref() {
            if let Some(found) = find_key(inner, offset, &path) {
                return Some(found);
            }
        }
        if value.span().contains(&offset) || key.span().contains(&offset) {
            return Some(path);
        }
    }
    None
}

/// Line and column of a dotted key in the document, to point validation errors at it.
fn key_position(text: &str, key: &str) -> Option<(usize, usize)> {
    let table = toml::de::DeTable::parse(text).ok()?;
    let mut current = table.get_ref();
    let mut parts = key.split('.').peekable();
    while let Some(part) = parts.next() {
        let (k, v) = current.iter().find(|(k, _)| k.get_ref().as_ref() == part)?;
        if parts.peek().is_none() {
            return Some(line_col(text, k.span().start));
        }
        match v.get_ref() {
            toml::de::DeValue::Table(inner) => current = inner,
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().expect("defaults validate");
    }

    #[test]
    fn line_col_counts_characters() {
        let text = "a = 1\nbé = \"x\"\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 6), (2, 1));
        // byte offset of `=` on line 2: "bé " is 4 bytes, 3 characters
        assert_eq!(line_col(text, 10), (2, 4));
    }

    #[test]
    fn base_url_rules() {
        let ok = [
            "",
            "https://sync.example.com",
            "https://sync.example.com/api/",
            "http://localhost:8080",
            "http://LOCALHOST",
            "http://127.0.0.1:9000",
            "http://127.1.2.3",
            "http://[::1]:8080",
        ];
        for url in ok {
            validate_base_url(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        }
        let bad = [
            "sync.example.com",
            "http://sync.example.com",
            "http://192.168.1.2",
            "http://[::2]",
            "http://localhost.example.com",
            "ftp://example.com",
            "https://user:pw@example.com",
            "https://example.com/?a=b",
            " ",
        ];
        for url in bad {
            let err = validate_base_url(url).expect_err(url);
            assert_eq!(err.key(), Some("sync.base_url"));
        }
        let err = validate_base_url("http://sync.example.com").expect_err("http");
        assert!(err.to_string().contains("use https://"), "{err}");
    }

    /// Issue 11: the login's endpoints went out over plain http, and `ftp://x` passed.
    /// `auth.resource` names an API (RFC 8707): an absolute URI without a fragment, any scheme.
    #[test]
    fn a_resource_indicator_is_an_absolute_uri_without_fragment() {
        let with = |resource: &str| {
            let mut config = Config::default();
            config.auth.resource = resource.to_string();
            config.validate()
        };
        assert!(with("").is_ok());
        assert!(with("https://samay.example/api").is_ok());
        assert!(with("urn:samay:api").is_ok());
        for bad in ["samay", "/api", "https://samay.example/api#v1"] {
            let e = with(bad).expect_err(bad).to_string();
            assert!(e.contains("auth.resource"), "{bad}: {e}");
        }
    }

    #[test]
    fn auth_endpoints_follow_the_base_url_rule() {
        for key in [
            "issuer",
            "auth_url",
            "token_url",
            "userinfo_url",
            "revocation_url",
            "device_authorization_url",
        ] {
            for bad in ["ftp://x", "http://id.example.org/x", "not a url"] {
                let text = format!("[auth]\nclient_id = \"c\"\n{key} = \"{bad}\"\n");
                let err = load_text(&text).expect_err(&text);
                let dotted = format!("auth.{key}");
                assert_eq!(err.key(), Some(dotted.as_str()), "{err}");
                let message = err.to_string();
                assert!(message.contains("c.toml:3:1"), "{message}");
                assert!(message.contains("https"), "{message}");
            }
            for good in ["https://id.example.org/x", "http://127.0.0.1:9/x", ""] {
                let text = format!("[auth]\n{key} = \"{good}\"\n");
                load_text(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            }
        }
    }

    fn load_text(text: &str) -> Result<LoadedConfig, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).expect("write");
        load(&path)
    }

    #[test]
    fn privacy_keys_load() {
        let loaded = load_text(
            "[sync]\ninclude_buckets = [\"aw-watcher-*\"]\nexclude_buckets = [\"*afk*\"]\n\
             start_from = \"2025-01-31T08:00:00+01:00\"\n\n\
             [[sync.redact]]\nbuckets = \"aw-watcher-window_*\"\ndrop = [\"title\"]\n\n\
             [[sync.redact]]\ntypes = \"web.tab.current\"\nhash = [\"url\"]\n",
        )
        .expect("loads");
        let s = &loaded.config.sync;
        assert_eq!(s.include_buckets, ["aw-watcher-*"]);
        assert_eq!(s.redact.len(), 2);
        assert_eq!(s.redact[1].types.as_deref(), Some("web.tab.current"));
        assert_eq!(
            s.start_from_instant().unwrap(),
            Some("2025-01-31T07:00:00Z".parse().unwrap())
        );
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    }

    #[test]
    fn start_from_forms() {
        let mut s = SyncConfig::default();
        assert_eq!(s.start_from_instant().unwrap(), None);
        s.start_from = Some("2025-03-01".into());
        let t = s.start_from_instant().unwrap().expect("a date");
        let local = t.with_timezone(&chrono::Local);
        assert_eq!(
            local.format("%Y-%m-%d %H:%M").to_string(),
            "2025-03-01 00:00",
            "local midnight"
        );
        for bad in ["yesterday", "2025-13-01", "2025-01-01 08:00"] {
            s.start_from = Some(bad.into());
            let err = s.start_from_instant().expect_err(bad);
            assert_eq!(err.key(), Some("sync.start_from"));
        }
    }

    #[test]
    fn bad_privacy_values_point_at_the_key() {
        let cases = [
            (
                "[sync]\nbatch_size = 5\ninclude_buckets = [\"aw-[ab]\"]\n",
                "c.toml:3:1: invalid `sync.include_buckets`",
            ),
            (
                "[sync]\nexclude_buckets = [\"\"]\n",
                "c.toml:2:1: invalid `sync.exclude_buckets`",
            ),
            (
                "[sync]\n\nstart_from = \"last tuesday\"\n",
                "c.toml:3:1: invalid `sync.start_from`",
            ),
            (
                "[sync]\n\n[[sync.redact]]\nbuckets = \"*\"\n",
                "invalid `sync.redact`: rule 1: has neither `drop` nor `hash`",
            ),
        ];
        for (text, want) in cases {
            let err = load_text(text).expect_err(text).to_string();
            assert!(err.contains(want), "{err}\n  wanted: {want}");
        }
    }

    #[test]
    fn a_duplicate_key_names_its_first_line() {
        let err = load_text(
            "[sync]\nbatch_size = 5\nredact = []\n\n[[sync.redact]]\ndrop = [\"title\"]\n",
        )
        .expect_err("duplicate");
        let text = err.to_string();
        assert!(text.contains("c.toml:5:"), "{text}");
        assert!(
            text.contains("duplicate key `redact`, first set at line 3"),
            "{text}"
        );
        assert!(text.contains("remove the `redact = ...` line"), "{text}");
        let err = load_text("[sync]\ngzip = true\ngzip = false\n").expect_err("duplicate");
        assert!(
            err.to_string().contains("`gzip`, first set at line 2"),
            "{err}"
        );
    }

    #[test]
    fn gzip_is_auto_true_or_false_and_auto_skips_only_this_machine() {
        for (text, want) in [
            ("", Gzip::Auto),
            ("gzip = \"auto\"\n", Gzip::Auto),
            ("gzip = true\n", Gzip::Always),
            ("gzip = false\n", Gzip::Never),
        ] {
            let c = load_text(&format!("[sync]\n{text}")).expect(text);
            assert_eq!(c.config.sync.gzip, want, "{text:?}");
        }
        for bad in ["\"yes\"", "\"Auto\"", "1"] {
            let err = load_text(&format!("[sync]\ngzip = {bad}\n")).expect_err(bad);
            let text = err.to_string();
            assert!(
                text.contains("c.toml:2:") && text.contains("gzip"),
                "{text}"
            );
            assert!(text.contains("true, false or \"auto\""), "{text}");
        }
        for local in [
            "http://127.0.0.1:5667",
            "http://127.8.0.1/sync",
            "http://[::1]:5667",
            "http://localhost:5667",
            "https://LOCALHOST",
        ] {
            assert!(!Gzip::Auto.applies_to(local), "{local}");
            assert!(Gzip::Always.applies_to(local), "{local}");
        }
        for remote in [
            "https://sync.example.com",
            "http://192.168.1.20:5667",
            "https://[2001:db8::1]",
            "https://localhost.example.com",
            "not a url",
        ] {
            assert!(Gzip::Auto.applies_to(remote), "{remote}");
            assert!(!Gzip::Never.applies_to(remote), "{remote}");
        }
    }

    #[test]
    fn a_misspelt_redact_key_is_an_error_not_a_warning() {
        let err = load_text("[sync]\n[[sync.redact]]\nbuckets = \"*\"\ndorp = [\"title\"]\n")
            .expect_err("dorp");
        let text = err.to_string();
        assert!(text.contains("c.toml:4:1"), "{text}");
        assert!(text.contains("dorp"), "{text}");
    }

    #[test]
    fn ranges() {
        type Change = fn(&mut SyncConfig);
        let cases: Vec<(&str, Change)> = vec![
            ("sync.batch_size", |s| s.batch_size = 0),
            ("sync.batch_size", |s| {
                s.batch_size = 10_001;
                s.offline_queue_size = 20_000;
            }),
            ("sync.offline_queue_size", |s| s.offline_queue_size = 99),
            ("sync.sync_interval", |s| s.sync_interval = 0),
            ("sync.page_size", |s| s.page_size = 9),
            ("sync.page_size", |s| s.page_size = 100_001),
            ("sync.request_timeout", |s| s.request_timeout = 0),
            ("sync.max_retries", |s| s.max_retries = 101),
            ("sync.upload_concurrency", |s| s.upload_concurrency = 0),
            ("sync.upload_concurrency", |s| s.upload_concurrency = 17),
            ("sync.lookback", |s| s.lookback = MAX_LOOKBACK_SECS + 1),
        ];
        for (key, change) in cases {
            let mut config = Config::default();
            change(&mut config.sync);
            let err = config.validate().expect_err(key);
            assert_eq!(err.key(), Some(key), "{err}");
            assert!(err.to_string().contains(key), "{err}");
        }
        let mut edges = Config::default();
        edges.sync.batch_size = 10_000;
        edges.sync.offline_queue_size = 10_000;
        edges.sync.page_size = 10;
        edges.sync.max_retries = 100;
        edges.sync.upload_concurrency = 16;
        edges.sync.lookback = MAX_LOOKBACK_SECS;
        edges.validate().expect("upper edges are inside");
        edges.sync.batch_size = 1;
        edges.sync.offline_queue_size = 1;
        edges.sync.sync_interval = 1;
        edges.sync.request_timeout = 1;
        edges.sync.max_retries = 0;
        edges.sync.upload_concurrency = 1;
        edges.sync.lookback = 0;
        edges.validate().expect("lower edges are inside");
    }
}

/// Property tests of the position helpers behind `file:line:col`; `parse` and `load` are
/// fuzzed through their public entry points in `tests/faults/fuzz_parsers.rs`.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(crate::proptest_config(256))]

        #[test]
        fn line_col_counts_lines_and_characters(text in "(.|\n){0,80}", at in any::<prop::sample::Index>()) {
            // Every character boundary, and the end.
            let boundaries: Vec<usize> = text.char_indices().map(|(i, _)| i).chain([text.len()]).collect();
            let offset = boundaries[at.index(boundaries.len())];
            let before = &text[..offset];
            let (line, column) = line_col(&text, offset);
            prop_assert_eq!(line, before.split('\n').count());
            prop_assert_eq!(column, before.split('\n').next_back().map_or(0, |l| l.chars().count()) + 1);
        }

        #[test]
        fn line_col_never_panics_on_any_offset(text in any::<String>(), offset in any::<usize>()) {
            let (line, column) = line_col(&text, offset);
            prop_assert!(line >= 1 && column >= 1);
            prop_assert!(line <= text.split('\n').count());
        }
    }
}
