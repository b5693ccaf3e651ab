//! An issuer's signing keys: discovery (`/.well-known/openid-configuration` → `jwks_uri`), the
//! JWKS parsed into keys that each fit exactly one allowed algorithm, and the cache with its
//! bounded refetch.

use std::sync::{Arc, RwLock};
use std::time::Instant;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};
use url::Url;

use super::fetch::{self, FetchError, Limits};
use super::{AuthFailure, IssuerConfig, VerifierClock, VerifierConfig};

/// The algorithms a token may be signed with: asymmetric only, one per key type. Never `none`
/// (unsigned) and never HS* (a shared secret: with a public JWKS anyone could sign).
pub(crate) fn allowed_algorithm(alg: &str) -> Option<Algorithm> {
    match alg {
        "RS256" => Some(Algorithm::RS256),
        "ES256" => Some(Algorithm::ES256),
        "EdDSA" => Some(Algorithm::EdDSA),
        _ => None,
    }
}

/// Keys in one JWKS at most; a larger set is an error, not a slow loop per token.
const MAX_KEYS: usize = 100;
/// ring verifies RSA keys of 2048..=8192 bits only.
const MIN_RSA_MODULUS_BYTES: usize = 256;

/// One verification key from a JWKS: usable for exactly `alg`.
#[derive(Clone)]
pub(crate) struct VerifyKey {
    pub kid: Option<String>,
    pub alg: Algorithm,
    pub key: DecodingKey,
}

/// A JWK, checked: `kty`/`crv` decide the one algorithm it can verify (RSA → RS256, EC P-256 →
/// ES256, OKP Ed25519 → EdDSA); a declared `alg` must agree and a declared `use` must be `sig`.
/// `None` for keys we cannot or must not use (encryption keys, symmetric `oct` keys, other
/// curves, RSA moduli under 2048 bits): they are skipped, not fatal, so one odd key in a JWKS
/// does not take the whole issuer down. Only public parameters are ever read.
pub(crate) fn parse_jwk(jwk: &Map<String, Value>) -> Option<VerifyKey> {
    let text = |name: &str| jwk.get(name).and_then(Value::as_str);
    let bytes = |name: &str| text(name).and_then(|v| URL_SAFE_NO_PAD.decode(v).ok());
    if text("use").is_some_and(|u| u != "sig") {
        return None;
    }
    let (alg, key) = match (text("kty")?, text("crv")) {
        ("RSA", _) => {
            let n = bytes("n")?;
            let e = bytes("e")?;
            let significant = n.iter().skip_while(|b| **b == 0).count();
            if significant < MIN_RSA_MODULUS_BYTES || e.is_empty() {
                return None;
            }
            (
                Algorithm::RS256,
                DecodingKey::from_rsa_raw_components(&n, &e),
            )
        }
        ("EC", Some("P-256")) => {
            let (x, y) = (bytes("x")?, bytes("y")?);
            if x.len() != 32 || y.len() != 32 {
                return None;
            }
            (
                Algorithm::ES256,
                DecodingKey::from_ec_components(text("x")?, text("y")?).ok()?,
            )
        }
        ("OKP", Some("Ed25519")) => {
            if bytes("x")?.len() != 32 {
                return None;
            }
            (
                Algorithm::EdDSA,
                DecodingKey::from_ed_components(text("x")?).ok()?,
            )
        }
        _ => return None,
    };
    if let Some(declared) = text("alg") {
        if allowed_algorithm(declared) != Some(alg) {
            return None;
        }
    }
    Some(VerifyKey {
        kid: text("kid").map(str::to_owned),
        alg,
        key,
    })
}

/// A fetched JWKS.
pub(crate) struct KeySet {
    pub keys: Vec<VerifyKey>,
    pub fetched: Instant,
}

impl KeySet {
    /// The keys that may have signed a token with this header. With a `kid`, the key of that
    /// id (if its algorithm differs: `Err(AlgorithmNotAllowed)`); without one, every key of
    /// the algorithm.
    fn candidates(&self, kid: Option<&str>, alg: Algorithm) -> Result<Vec<VerifyKey>, Lookup> {
        match kid {
            Some(kid) => {
                let named: Vec<&VerifyKey> = self
                    .keys
                    .iter()
                    .filter(|k| k.kid.as_deref() == Some(kid))
                    .collect();
                if named.is_empty() {
                    return Err(Lookup::Unknown);
                }
                let fitting: Vec<VerifyKey> = named
                    .into_iter()
                    .filter(|k| k.alg == alg)
                    .cloned()
                    .collect();
                if fitting.is_empty() {
                    Err(Lookup::WrongAlgorithm)
                } else {
                    Ok(fitting)
                }
            }
            None => {
                let fitting: Vec<VerifyKey> =
                    self.keys.iter().filter(|k| k.alg == alg).cloned().collect();
                if fitting.is_empty() {
                    Err(Lookup::Unknown)
                } else {
                    Ok(fitting)
                }
            }
        }
    }
}

enum Lookup {
    Unknown,
    WrongAlgorithm,
}

/// What discovery says about an issuer.
#[derive(Clone)]
pub(crate) struct Discovery {
    pub jwks_uri: Url,
    pub introspection_endpoint: Option<Url>,
}

/// What the verifier knows about one configured issuer.
pub(crate) struct IssuerState {
    pub config: IssuerConfig,
    pub discovery_url: Url,
    keys: RwLock<Option<Arc<KeySet>>>,
    discovery: RwLock<Option<Discovery>>,
    /// Held while fetching, so concurrent verifications of tokens with a new `kid` cause one
    /// fetch, not one each; holds the time of the last attempt (success or not).
    refresh: tokio::sync::Mutex<Option<Instant>>,
}

impl IssuerState {
    pub fn new(config: IssuerConfig, discovery_url: Url) -> IssuerState {
        IssuerState {
            config,
            discovery_url,
            keys: RwLock::new(None),
            discovery: RwLock::new(None),
            refresh: tokio::sync::Mutex::new(None),
        }
    }

    fn cached_keys(&self) -> Option<Arc<KeySet>> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn cached_discovery(&self) -> Option<Discovery> {
        self.discovery
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The keys that may verify a token of this issuer with header (`kid`, `alg`).
    ///
    /// Served from the cache; the JWKS is (re)fetched when there is none yet, when it is older
    /// than `jwks_max_age`, or when the `kid` is unknown — but never twice within
    /// `jwks_min_refetch`, so tokens with made-up `kid`s cannot make us hammer the issuer. A
    /// failed refresh keeps serving the keys we have, and a token whose key is cached never
    /// waits for a refresh that another request is already doing.
    pub async fn keys_for(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
        cfg: &VerifierConfig,
        http: &reqwest::Client,
        clock: &dyn VerifierClock,
    ) -> Result<Vec<VerifyKey>, AuthFailure> {
        let cached = self.cached_keys();
        let mut last_attempt = match &cached {
            Some(set) => {
                let fresh = clock.now().saturating_duration_since(set.fetched) < cfg.jwks_max_age;
                match set.candidates(kid, alg) {
                    Ok(keys) if fresh => return Ok(keys),
                    Err(Lookup::WrongAlgorithm) if fresh => {
                        return Err(AuthFailure::AlgorithmNotAllowed)
                    }
                    // Stale but known: refresh if nobody else is, else use what we have.
                    Ok(keys) => match self.refresh.try_lock() {
                        Ok(guard) => guard,
                        Err(_) => return Ok(keys),
                    },
                    _ => self.refresh.lock().await,
                }
            }
            None => self.refresh.lock().await,
        };

        // Another verification may have refreshed while we waited for the lock.
        let current = self.cached_keys();
        let refreshed_meanwhile = match (&cached, &current) {
            (Some(before), Some(now)) => !Arc::ptr_eq(before, now),
            (None, Some(_)) => true,
            _ => false,
        };
        let may_fetch = !refreshed_meanwhile
            && last_attempt.map_or(true, |at| {
                clock.now().saturating_duration_since(at) >= cfg.jwks_min_refetch
            });
        let mut fetch_error = None;
        let set = if may_fetch {
            *last_attempt = Some(clock.now());
            match self.fetch_keys(cfg, http, clock).await {
                Ok(set) => {
                    let set = Arc::new(set);
                    *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Some(set.clone());
                    Some(set)
                }
                Err(e) => {
                    tracing::warn!(issuer = %self.config.url, "fetching the issuer's keys failed: {e}");
                    fetch_error = Some(e.to_string());
                    current
                }
            }
        } else {
            current
        };
        drop(last_attempt);

        let Some(set) = set else {
            return Err(AuthFailure::IssuerUnavailable(fetch_error.unwrap_or_else(
                || "its keys could not be fetched recently; not retried yet".to_string(),
            )));
        };
        match set.candidates(kid, alg) {
            Ok(keys) => Ok(keys),
            Err(Lookup::WrongAlgorithm) => Err(AuthFailure::AlgorithmNotAllowed),
            // The key may be new and the issuer just unreachable: that is worth a retry.
            Err(Lookup::Unknown) => match fetch_error {
                Some(e) => Err(AuthFailure::IssuerUnavailable(e)),
                None => Err(AuthFailure::UnknownKey),
            },
        }
    }

    /// Discovery (cached after the first success), for the introspection endpoint. Fetched
    /// under the same limit as the JWKS: a flood of opaque tokens while the issuer is down
    /// costs it one request per `jwks_min_refetch`, not one per token.
    pub async fn discovery(
        &self,
        cfg: &VerifierConfig,
        http: &reqwest::Client,
        clock: &dyn VerifierClock,
    ) -> Result<Discovery, String> {
        if let Some(d) = self.cached_discovery() {
            return Ok(d);
        }
        let mut last_attempt = self.refresh.lock().await;
        if let Some(d) = self.cached_discovery() {
            return Ok(d);
        }
        if last_attempt
            .is_some_and(|at| clock.now().saturating_duration_since(at) < cfg.jwks_min_refetch)
        {
            return Err(
                "its discovery document could not be fetched recently; not retried yet".into(),
            );
        }
        *last_attempt = Some(clock.now());
        self.fetch_discovery(cfg, http).await.map_err(|e| {
            tracing::warn!(issuer = %self.config.url, "fetching the issuer's discovery document failed: {e}");
            e.to_string()
        })
    }

    async fn fetch_discovery(
        &self,
        cfg: &VerifierConfig,
        http: &reqwest::Client,
    ) -> Result<Discovery, FetchError> {
        let doc = fetch::json_object(
            http.get(self.discovery_url.clone()),
            &self.discovery_url,
            limits(cfg),
        )
        .await?;
        let bad = |reason: &str| FetchError::NotJson {
            url: self.discovery_url.to_string(),
            reason: reason.to_string(),
        };
        // OpenID Connect Discovery §4.3: the document must name exactly the issuer we asked.
        if doc.get("issuer").and_then(Value::as_str) != Some(self.config.url.as_str()) {
            return Err(bad("its issuer differs from the configured one"));
        }
        let endpoint = |name: &str| -> Result<Option<Url>, FetchError> {
            match doc.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Url::parse(s)
                    .ok()
                    .filter(|u| matches!(u.scheme(), "https" | "http"))
                    .map(Some)
                    .ok_or_else(|| bad(&format!("{name} is not an http(s) URL"))),
                Some(_) => Err(bad(&format!("{name} is not a string"))),
            }
        };
        let jwks_uri = endpoint("jwks_uri")?.ok_or_else(|| bad("no jwks_uri"))?;
        let discovery = Discovery {
            jwks_uri,
            introspection_endpoint: endpoint("introspection_endpoint")?,
        };
        *self.discovery.write().unwrap_or_else(|p| p.into_inner()) = Some(discovery.clone());
        Ok(discovery)
    }

    /// Discovery (again: `jwks_uri` may have moved) and the JWKS.
    async fn fetch_keys(
        &self,
        cfg: &VerifierConfig,
        http: &reqwest::Client,
        clock: &dyn VerifierClock,
    ) -> Result<KeySet, FetchError> {
        let discovery = self.fetch_discovery(cfg, http).await?;
        let url = discovery.jwks_uri;
        let jwks = fetch::json_object(http.get(url.clone()), &url, limits(cfg)).await?;
        let bad = |reason: &str| FetchError::NotJson {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let entries = jwks
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("no \"keys\" array"))?;
        if entries.len() > MAX_KEYS {
            return Err(bad(&format!("more than {MAX_KEYS} keys")));
        }
        let keys: Vec<VerifyKey> = entries
            .iter()
            .filter_map(Value::as_object)
            .filter_map(parse_jwk)
            .collect();
        if keys.len() < entries.len() {
            tracing::debug!(
                issuer = %self.config.url,
                "{} of {} keys in the JWKS are not usable for RS256/ES256/EdDSA signatures",
                entries.len() - keys.len(),
                entries.len()
            );
        }
        Ok(KeySet {
            keys,
            fetched: clock.now(),
        })
    }
}

pub(crate) fn limits(cfg: &VerifierConfig) -> Limits {
    Limits {
        timeout: cfg.http_timeout,
        max_bytes: cfg.max_response_bytes,
    }
}
