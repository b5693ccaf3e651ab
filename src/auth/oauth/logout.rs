//! `--logout`: revoke the session at the provider (RFC 7009), then delete the stored tokens.

use serde::Deserialize;
use url::Url;

use super::{http_client, resolve_provider, ProviderHttp};
use crate::auth::store::TokenStore;
use crate::auth::tokens::StoredTokens;
use crate::auth::AuthError;
use crate::config::AuthConfig;
use crate::printable::printable;

/// What `--logout` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutReport {
    pub had_tokens: bool,
    /// `Some(Ok)` revoked at the provider, `Some(Err(why))` tried and failed, `None` not tried
    /// (no revocation endpoint: [`LogoutReport::no_endpoint`] says why).
    pub revoked: Option<Result<(), String>>,
    pub no_endpoint: Option<NoRevocationEndpoint>,
    pub deleted: bool,
}

/// Why `--logout` had no revocation endpoint to call: the message says what is true and how
/// to configure one (issue 10: it used to claim "the provider has none" when none was
/// configured).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoRevocationEndpoint {
    /// Endpoints configured by hand, `auth.revocation_url` empty, no issuer to discover one.
    #[error("no revocation endpoint is configured (auth.revocation_url is empty, and without auth.issuer none can be discovered), so the session stays valid at the provider until its tokens expire. To revoke it at logout, set auth.revocation_url to the provider's RFC 7009 endpoint, or auth.issuer for discovery")]
    NotConfigured,
    /// The issuer's discovery document names none, and `auth.revocation_url` is empty.
    #[error("the discovery document of {issuer} names no revocation endpoint and auth.revocation_url is empty, so the session stays valid at the provider until its tokens expire. If the provider has an RFC 7009 endpoint, set auth.revocation_url to it")]
    NotDiscovered { issuer: String },
}

/// `--logout`: revoke the refresh token at the provider (RFC 7009), then delete the stored
/// tokens — even when the revocation fails, which is reported. Sync state is kept.
pub async fn logout(cfg: &AuthConfig, store: &TokenStore) -> Result<LogoutReport, AuthError> {
    let tokens = store
        .load()
        .await
        .map_err(|e| AuthError::Transient(format!("reading the stored tokens failed: {e}")))?;
    let Some(tokens) = tokens else {
        return Ok(LogoutReport {
            had_tokens: false,
            revoked: None,
            no_endpoint: None,
            deleted: false,
        });
    };
    let http = http_client()?;
    let mut no_endpoint = None;
    let revoked = match resolve_provider(cfg, &http).await {
        Ok(p) => match (&p.revocation_endpoint, &tokens.refresh_token) {
            (Some(url), Some(rt)) => Some(revoke(&http, url, rt, &cfg.client_id).await),
            (Some(url), None) => Some(revoke_access(&http, url, &tokens, &cfg.client_id).await),
            (None, _) => {
                no_endpoint = Some(match p.issuer {
                    Some(issuer) => NoRevocationEndpoint::NotDiscovered { issuer },
                    None => NoRevocationEndpoint::NotConfigured,
                });
                None
            }
        },
        Err(e) => Some(Err(e.to_string())),
    };
    let deleted = store
        .delete()
        .await
        .map_err(|e| AuthError::Transient(format!("deleting the stored tokens failed: {e}")))?;
    Ok(LogoutReport {
        had_tokens: true,
        revoked,
        no_endpoint,
        deleted,
    })
}

async fn revoke_access(
    http: &ProviderHttp,
    url: &Url,
    t: &StoredTokens,
    client_id: &str,
) -> Result<(), String> {
    post_revocation(http, url, &t.access_token, "access_token", client_id).await
}

async fn revoke(
    http: &ProviderHttp,
    url: &Url,
    refresh_token: &str,
    client_id: &str,
) -> Result<(), String> {
    post_revocation(http, url, refresh_token, "refresh_token", client_id).await
}

/// RFC 7009 §2.1 by hand: oauth2's `revoke_token` refuses non-https endpoints, loopback
/// providers included, and the request is one form POST. A refusal says the provider's
/// `error` (RFC 7009 §2.2.1), printable.
async fn post_revocation(
    http: &ProviderHttp,
    url: &Url,
    token: &str,
    hint: &str,
    client_id: &str,
) -> Result<(), String> {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("token", token)
        .append_pair("token_type_hint", hint)
        .append_pair("client_id", client_id)
        .finish();
    let request = http
        .reqwest()
        .post(url.clone())
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(body);
    let (status, answer) = http
        .send(request)
        .await
        .map_err(|e| format!("revocation request failed: {e}"))?;
    if status.is_success() {
        return Ok(());
    }
    #[derive(Deserialize)]
    struct Refusal {
        error: String,
    }
    let why = serde_json::from_slice::<Refusal>(&answer)
        .map(|r| format!(" ({})", printable(&r.error)))
        .unwrap_or_default();
    Err(format!(
        "the provider answered {status} to the revocation{why}"
    ))
}
