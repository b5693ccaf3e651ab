//! Which destination a cycle syncs to: the upstream and the account at it. The state files
//! every acknowledgement, position and quarantined event under it (issue 10: the records of
//! one upstream or account taken as true for another sent nothing there).
//!
//! The account comes from the tokens when they say who they belong to (a login: its issuer and
//! subject), else from the upstream (`GET v1/me`, for `AW_SYNC_SAMAY_TOKEN` and `--dev`); an
//! upstream without `v1/me` gets the login (when tokens come from one: refreshes keep it) or a
//! keyed fingerprint of the token — never the token, and useless to anyone without this
//! installation's secret. It is worked out at every cycle, so a
//! new login or a new token under a running daemon moves the sync to that account's records;
//! the answer of `v1/me` is remembered per token, so an idle cycle asks nothing more.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use super::{CycleError, Engine};
use crate::auth::AccessToken;
use crate::state::DestKey;
use crate::upstream::UpstreamError;

/// Where the data goes (see the module docs), and whether the next cycle forgets what it
/// acknowledged there first (`--resync`).
pub struct Destination {
    kind: Kind,
    resync: AtomicBool,
}

enum Kind {
    /// Known up front: tests and benchmarks.
    Fixed(DestKey),
    /// The upstream at `base_url`, for whoever the cycle's token belongs to.
    Upstream {
        base_url: String,
        /// The last token's fingerprint and the account `v1/me` (or its absence) gave for it.
        asked: Mutex<Option<([u8; 32], DestKey)>>,
    },
}

impl Destination {
    /// The upstream at `base_url`, the account to be found out at each cycle.
    pub fn upstream(base_url: &str) -> Destination {
        Destination {
            kind: Kind::Upstream {
                base_url: base_url.trim_end_matches('/').to_string(),
                asked: Mutex::new(None),
            },
            resync: AtomicBool::new(false),
        }
    }

    /// The next cycle starts by forgetting what this destination acknowledged, so it sends
    /// everything again (`--resync`; the upstream absorbs what it holds as duplicates).
    pub fn ask_resync(&self) {
        self.resync.store(true, Ordering::SeqCst);
    }

    /// Whether a resync was asked for since the last call.
    pub(super) fn take_resync(&self) -> bool {
        self.resync.swap(false, Ordering::SeqCst)
    }
}

impl From<DestKey> for Destination {
    fn from(key: DestKey) -> Destination {
        Destination {
            kind: Kind::Fixed(key),
            resync: AtomicBool::new(false),
        }
    }
}

/// How a token is named when the upstream cannot say whose it is: `token:` and 16 bytes of a
/// BLAKE3 keyed with the installation's secret, in hex.
pub fn token_account(secret: &[u8; 32], token: &AccessToken) -> ([u8; 32], String) {
    let mut hasher = blake3::Hasher::new_keyed(secret);
    hasher.update(b"aw-sync-samay token fingerprint\0");
    hasher.update(token.secret().as_bytes());
    let digest = *hasher.finalize().as_bytes();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    (digest, format!("token:{hex}"))
}

impl Engine {
    /// The destination of a cycle that holds `token`, and the token to use (refreshed once
    /// when the upstream refused it on `v1/me`).
    pub(super) async fn destination_for(
        &self,
        token: AccessToken,
    ) -> Result<(DestKey, AccessToken), CycleError> {
        let (base_url, asked) = match &self.destination.kind {
            Kind::Fixed(key) => return Ok((key.clone(), token)),
            Kind::Upstream { base_url, asked } => (base_url, asked),
        };
        if let Some(who) = self.tokens.identity() {
            let key = DestKey {
                base_url: base_url.clone(),
                account: who.key,
                label: who.label,
            };
            return Ok((key, token));
        }
        let secret = self.store.redaction_key();
        let (fingerprint, _) = token_account(&secret, &token);
        if let Some((seen, key)) = asked.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            if *seen == fingerprint {
                return Ok((key.clone(), token));
            }
        }
        let (user, token) = match self.upstream.whoami(&token).await {
            Ok(user) => (user, token),
            Err(UpstreamError::Unauthorized) => {
                let fresh = self
                    .tokens
                    .refresh(&token)
                    .await
                    .map_err(CycleError::Auth)?;
                let user = self
                    .upstream
                    .whoami(&fresh)
                    .await
                    .map_err(CycleError::Upstream)?;
                (user, fresh)
            }
            Err(e) => return Err(CycleError::Upstream(e)),
        };
        let (fingerprint, fallback) = token_account(&secret, &token);
        let key = match (user, self.tokens.login()) {
            (Some(user), _) => DestKey {
                base_url: base_url.clone(),
                account: format!("user:{user}"),
                label: user,
            },
            (None, Some(who)) => {
                tracing::info!(
                    upstream = %base_url,
                    "the upstream has no v1/me and the login names no subject: records are kept per login"
                );
                DestKey {
                    base_url: base_url.clone(),
                    account: who.key,
                    label: who.label,
                }
            }
            (None, None) => {
                tracing::info!(
                    upstream = %base_url,
                    "the upstream has no v1/me: this token's records are kept under its fingerprint"
                );
                DestKey {
                    base_url: base_url.clone(),
                    label: format!(
                        "{fallback} (the upstream has no v1/me; a new token starts over)"
                    ),
                    account: fallback,
                }
            }
        };
        *asked.lock().unwrap_or_else(|p| p.into_inner()) = Some((fingerprint, key.clone()));
        Ok((key, token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_fingerprint_is_keyed_and_never_the_token() {
        let token = AccessToken::new("s3cret-token");
        let (a, name) = token_account(&[1; 32], &token);
        let (b, other) = token_account(&[2; 32], &token);
        assert_ne!(a, b, "another installation's secret gives another name");
        assert_ne!(name, other);
        assert!(name.starts_with("token:") && name.len() == "token:".len() + 32);
        assert!(!name.contains("s3cret"));
        assert_eq!(token_account(&[1; 32], &token).1, name, "stable");
        assert_ne!(
            token_account(&[1; 32], &AccessToken::new("another")).1,
            name
        );
    }
}
