//! Opaque tokens: RFC 7662 introspection at the issuers that advertise it and for which we have
//! client credentials, with a short, bounded cache of positive answers (keyed by the token's
//! SHA-256, so the cache holds no usable token).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::claims::{self, Expect};
use super::fetch;
use super::keys::{limits, IssuerState};
use super::{AuthFailure, Principal, TokenVerifier};

/// Positive introspection answers, for at most `ttl` each and never past the token's `exp`.
pub(crate) struct IntrospectionCache {
    entries: Mutex<HashMap<[u8; 32], (Principal, Instant)>>,
}

impl IntrospectionCache {
    pub fn new() -> IntrospectionCache {
        IntrospectionCache {
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, key: &[u8; 32], now: Instant) -> Option<Principal> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(key)
            .filter(|(_, until)| now < *until)
            .map(|(p, _)| p.clone())
    }

    /// Bounded: when full, expired entries go first, then an arbitrary one.
    fn put(&self, key: [u8; 32], principal: Principal, until: Instant, now: Instant, cap: usize) {
        if cap == 0 {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= cap && !entries.contains_key(&key) {
            entries.retain(|_, (_, until)| now < *until);
            if entries.len() >= cap {
                if let Some(victim) = entries.keys().next().copied() {
                    entries.remove(&victim);
                }
            }
        }
        entries.insert(key, (principal, until));
    }
}

/// RFC 6749 §2.3.1: client id and secret are form-urlencoded before HTTP Basic.
fn basic_auth(id: &str, secret: &str) -> String {
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    format!(
        "Basic {}",
        STANDARD.encode(format!("{}:{}", enc(id), enc(secret)))
    )
}

/// What one issuer said.
enum Answer {
    Active(Principal, Option<u64>),
    NotActive,
}

impl TokenVerifier {
    pub(crate) async fn verify_opaque(&self, token: &str) -> Result<Principal, AuthFailure> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = self.clock.now();
        if let Some(principal) = self.introspection_cache.get(&key, now) {
            return Ok(principal);
        }
        let capable: Vec<&IssuerState> = self
            .issuers
            .iter()
            .filter(|i| i.config.introspection.is_some())
            .collect();
        if capable.is_empty() {
            return Err(AuthFailure::OpaqueNotSupported);
        }

        // Ask each issuer in turn: an opaque token does not say whose it is. An outage at one
        // of them is reported only if no other one knows the token.
        let mut unavailable = None;
        let mut asked = false;
        for issuer in capable {
            match self.introspect_at(issuer, token).await {
                Ok(Some(Answer::Active(principal, exp))) => {
                    let mut ttl = self.config.introspection_cache_ttl;
                    if let Some(exp) = exp {
                        let left = exp.saturating_sub(claims::unix_now());
                        ttl = ttl.min(Duration::from_secs(left));
                    }
                    let now = self.clock.now();
                    self.introspection_cache.put(
                        key,
                        principal.clone(),
                        now + ttl,
                        now,
                        self.config.introspection_cache_size,
                    );
                    return Ok(principal);
                }
                Ok(Some(Answer::NotActive)) => asked = true,
                Ok(None) => {}
                Err(AuthFailure::IssuerUnavailable(e)) => unavailable = Some(e),
                Err(other) => return Err(other),
            }
        }
        match (unavailable, asked) {
            (Some(e), _) => Err(AuthFailure::IssuerUnavailable(e)),
            (None, true) => Err(AuthFailure::Inactive),
            (None, false) => Err(AuthFailure::OpaqueNotSupported),
        }
    }

    /// `Ok(None)`: this issuer does not advertise introspection.
    async fn introspect_at(
        &self,
        issuer: &IssuerState,
        token: &str,
    ) -> Result<Option<Answer>, AuthFailure> {
        let Some(client) = &issuer.config.introspection else {
            return Ok(None);
        };
        let discovery = issuer
            .discovery(&self.config, &self.http, self.clock.as_ref())
            .await
            .map_err(AuthFailure::IssuerUnavailable)?;
        let Some(endpoint) = discovery.introspection_endpoint else {
            return Ok(None);
        };
        let request = self
            .http
            .post(endpoint.clone())
            .header(
                reqwest::header::AUTHORIZATION,
                basic_auth(&client.client_id, &client.client_secret),
            )
            .form(&[("token", token), ("token_type_hint", "access_token")]);
        let answer = fetch::json_object(request, &endpoint, limits(&self.config))
            .await
            .map_err(|e| AuthFailure::IssuerUnavailable(e.to_string()))?;
        if answer.get("active") != Some(&Value::Bool(true)) {
            return Ok(Some(Answer::NotActive));
        }
        // RFC 7662 §2.2 `token_type`: oidc-provider says `Bearer` (or `DPoP` for a
        // sender-constrained token, which a bearer request must not use).
        match answer.get("token_type") {
            None => {}
            Some(Value::String(t)) if t.eq_ignore_ascii_case("bearer") => {}
            Some(_) => return Err(AuthFailure::WrongTokenType),
        }
        let principal = claims::check(
            &answer,
            &Expect {
                issuer: &issuer.config.url,
                audience: &self.config.audience,
                leeway: self.config.leeway,
                require_iss_and_exp: false,
            },
            claims::unix_now(),
        )?;
        let exp = answer.get("exp").and_then(Value::as_u64);
        Ok(Some(Answer::Active(principal, exp)))
    }
}
