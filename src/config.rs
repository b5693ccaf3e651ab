//! The config file `<config_dir>/activitywatch/aw-sync-samay/aw-sync-samay[-testing].toml`.
//! These serde structs with their defaults are the single source of truth for every key.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub auth: AuthConfig,
    pub sync: SyncConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthConfig {
    pub enabled: bool,
    pub client_id: String,
    pub redirect_uri: String,
    pub scopes: Vec<String>,
    /// Empty: taken from OpenID discovery of `issuer` (login issue).
    pub auth_url: String,
    pub token_url: String,
    pub issuer: String,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            client_id: String::new(),
            redirect_uri: "http://127.0.0.1:54783/callback".into(),
            scopes: vec!["openid".into(), "profile".into(), "email".into(), "offline_access".into()],
            auth_url: String::new(),
            token_url: String::new(),
            issuer: String::new(),
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
    /// Retries of one batch on 408/429/5xx/network errors before the cycle gives up.
    pub max_retries: u32,
    /// Events read but not yet acknowledged, at most; reading pauses when it is full.
    pub offline_queue_size: usize,
    /// Seconds re-read behind the cursor each cycle, to catch grown and back-dated events.
    pub lookback: u64,
    /// Events fetched from aw-server per request.
    pub page_size: usize,
    /// Seconds one upstream request may take.
    pub request_timeout: u64,
    /// gzip the upload bodies.
    pub gzip: bool,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            base_url: String::new(),
            sync_interval: 300,
            batch_size: 100,
            max_retries: 3,
            offline_queue_size: 1000,
            lookback: 3600,
            page_size: 1000,
            request_timeout: 30,
            gzip: true,
        }
    }
}
