//! A test OpenID issuer on loopback that signs whatever a test asks for: good access tokens and
//! deliberately bad ones (expired, wrong `aud`, `alg: none`, HS256 keyed with the public key,
//! unknown `kid`, tampered), with keys generated at start (RSA 2048, EC P-256, Ed25519) and a
//! JWKS the test can rotate. Discovery and JWKS are served by axum; the JWKS requests are
//! counted so tests can see when a verifier refetched.
//!
//! Bad tokens on purpose are what a real provider will not mint, which is why this exists next
//! to oidc-provider (`oidc.rs`), which the tests use for the real thing.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::{EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};

/// The audience tokens are minted for unless a test says otherwise.
pub const AUDIENCE: &str = "https://samay.test/api";

/// Which kind of key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA 2048, RS256.
    Rsa,
    /// EC P-256, ES256.
    Ec,
    /// Ed25519, EdDSA.
    Ed,
}

/// A signing key and its public JWK.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    pub alg: Algorithm,
    encoding: EncodingKey,
    /// The public key as a JWK (with `kid`, `alg`, `use`).
    pub jwk: Value,
    /// An RSA key's public half as PEM (SPKI): the "secret" of the HS256 key-confusion attack.
    pub public_pem: Option<String>,
}

impl SigningKey {
    /// A fresh key. RSA generation takes ~0.3 s (num-bigint-dig is optimized even in test
    /// builds: see the root Cargo.toml's profile).
    pub fn generate(kind: KeyKind, kid: &str) -> SigningKey {
        let rng = SystemRandom::new();
        match kind {
            KeyKind::Rsa => {
                let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)
                    .expect("generate an RSA key");
                let der = private.to_pkcs1_der().expect("RSA key as PKCS#1");
                let public = private.to_public_key();
                SigningKey {
                    kid: kid.to_string(),
                    alg: Algorithm::RS256,
                    encoding: EncodingKey::from_rsa_der(der.as_bytes()),
                    jwk: json!({
                        "kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
                        "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
                        "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
                    }),
                    public_pem: Some(
                        public
                            .to_public_key_pem(LineEnding::LF)
                            .expect("RSA public key as PEM"),
                    ),
                }
            }
            KeyKind::Ec => {
                let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                    .expect("generate a P-256 key");
                let pair = EcdsaKeyPair::from_pkcs8(
                    &ECDSA_P256_SHA256_FIXED_SIGNING,
                    pkcs8.as_ref(),
                    &rng,
                )
                .expect("read the P-256 key");
                // Uncompressed point: 0x04 || x || y.
                let point = pair.public_key().as_ref();
                SigningKey {
                    kid: kid.to_string(),
                    alg: Algorithm::ES256,
                    encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
                    jwk: json!({
                        "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
                        "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                        "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
                    }),
                    public_pem: None,
                }
            }
            KeyKind::Ed => {
                let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("generate an Ed25519 key");
                let pair =
                    Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("read the Ed25519 key");
                let public = pair.public_key().as_ref();
                SigningKey {
                    kid: kid.to_string(),
                    alg: Algorithm::EdDSA,
                    encoding: EncodingKey::from_ed_der(pkcs8.as_ref()),
                    jwk: json!({
                        "kty": "OKP", "crv": "Ed25519", "kid": kid, "alg": "EdDSA", "use": "sig",
                        "x": URL_SAFE_NO_PAD.encode(public),
                    }),
                    public_pem: None,
                }
            }
        }
    }

    /// This key's name in a JWS header (`RS256`, `ES256`, `EdDSA`).
    pub fn alg_name(&self) -> &'static str {
        match self.alg {
            Algorithm::RS256 => "RS256",
            Algorithm::ES256 => "ES256",
            _ => "EdDSA",
        }
    }
}

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

struct Shared {
    issuer: String,
    published: Mutex<Vec<Value>>,
    jwks_requests: AtomicUsize,
    discovery_requests: AtomicUsize,
    /// The JWKS endpoint never answers (a slow or stuck issuer).
    jwks_hangs: AtomicBool,
}

/// The running issuer; stops when dropped.
pub struct TestIssuer {
    shared: Arc<Shared>,
    keys: Vec<SigningKey>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestIssuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestIssuer {
    /// An issuer publishing `keys` (each is also available to [`TestIssuer::sign`]).
    pub async fn start(keys: Vec<SigningKey>) -> TestIssuer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the test issuer");
        let issuer = format!("http://{}", listener.local_addr().expect("issuer address"));
        let shared = Arc::new(Shared {
            issuer,
            published: Mutex::new(keys.iter().map(|k| k.jwk.clone()).collect()),
            jwks_requests: AtomicUsize::new(0),
            discovery_requests: AtomicUsize::new(0),
            jwks_hangs: AtomicBool::new(false),
        });
        let router = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        TestIssuer { shared, keys, task }
    }

    /// `http://127.0.0.1:PORT` (no trailing slash), the `iss` of its tokens.
    pub fn issuer(&self) -> String {
        self.shared.issuer.clone()
    }

    pub fn key(&self, kid: &str) -> &SigningKey {
        self.keys
            .iter()
            .find(|k| k.kid == kid)
            .unwrap_or_else(|| panic!("no key {kid}"))
    }

    /// Adds a key (signable and published from now on): a rotation.
    pub fn add_key(&mut self, key: SigningKey) {
        self.publish(&key);
        self.keys.push(key);
    }

    /// Publishes `key` in the JWKS (without keeping its private half here).
    pub fn publish(&self, key: &SigningKey) {
        self.shared
            .published
            .lock()
            .expect("lock")
            .push(key.jwk.clone());
    }

    /// Removes `kid` from the JWKS (the private key stays, to sign with a withdrawn key).
    pub fn withdraw(&self, kid: &str) {
        self.shared
            .published
            .lock()
            .expect("lock")
            .retain(|jwk| jwk["kid"] != kid);
    }

    /// From now on the JWKS endpoint accepts requests (they are counted) and never answers.
    pub fn set_jwks_hangs(&self, hangs: bool) {
        self.shared.jwks_hangs.store(hangs, Ordering::SeqCst);
    }

    /// GETs of the JWKS so far.
    pub fn jwks_requests(&self) -> usize {
        self.shared.jwks_requests.load(Ordering::SeqCst)
    }

    /// GETs of the discovery document so far.
    pub fn discovery_requests(&self) -> usize {
        self.shared.discovery_requests.load(Ordering::SeqCst)
    }

    /// Good access-token claims for `sub`: this issuer, [`AUDIENCE`], valid for 5 minutes.
    pub fn claims(&self, sub: &str) -> Value {
        let now = unix_now();
        json!({
            "iss": self.issuer(),
            "sub": sub,
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + 300,
            "client_id": "aw-sync-samay",
            "scope": "samay",
        })
    }

    /// A JWS over `claims` with `kid`'s key, header `{alg, kid, typ: "at+jwt"}`.
    pub fn sign(&self, kid: &str, claims: &Value) -> String {
        let key = self.key(kid);
        let header = json!({"alg": key.alg_name(), "kid": kid, "typ": "at+jwt"});
        self.sign_raw(&header, claims, kid)
    }

    /// A JWS with exactly this header (any `alg` it names is ignored: `kid`'s key signs with
    /// its own algorithm).
    pub fn sign_raw(&self, header: &Value, claims: &Value, kid: &str) -> String {
        let key = self.key(kid);
        let input = signing_input(header, claims);
        let signature = jsonwebtoken::crypto::sign(input.as_bytes(), &key.encoding, key.alg)
            .expect("sign the token");
        format!("{input}.{signature}")
    }
}

/// `base64url(header) . base64url(claims)`.
pub fn signing_input(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

/// An HS256 JWS keyed with `secret` (the key-confusion attack: the secret is a public key).
pub fn sign_hs256(header: &Value, claims: &Value, secret: &[u8]) -> String {
    let input = signing_input(header, claims);
    let signature = jsonwebtoken::crypto::sign(
        input.as_bytes(),
        &EncodingKey::from_secret(secret),
        Algorithm::HS256,
    )
    .expect("sign HS256");
    format!("{input}.{signature}")
}

async fn discovery(State(shared): State<Arc<Shared>>) -> Json<Value> {
    shared.discovery_requests.fetch_add(1, Ordering::SeqCst);
    Json(json!({
        "issuer": shared.issuer,
        "jwks_uri": format!("{}/jwks", shared.issuer),
        "id_token_signing_alg_values_supported": ["RS256", "ES256", "EdDSA"],
    }))
}

async fn jwks(State(shared): State<Arc<Shared>>) -> Json<Value> {
    shared.jwks_requests.fetch_add(1, Ordering::SeqCst);
    if shared.jwks_hangs.load(Ordering::SeqCst) {
        std::future::pending::<()>().await;
    }
    let keys = shared.published.lock().expect("lock").clone();
    Json(json!({ "keys": keys }))
}
