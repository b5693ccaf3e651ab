//! samay-server's token verification (`verify/`, issue 13): a test issuer that mints good and
//! bad tokens, the real oidc-provider (JWT access tokens and introspection), hostile issuers.

mod hostile;
mod jwt;
mod oidc_provider;
mod principal;
mod rotation;
mod server;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use samay_server::{IssuerConfig, TokenVerifier, VerifierClock, VerifierConfig};
use samay_testkit::issuer::{KeyKind, SigningKey, TestIssuer, AUDIENCE};

/// A clock the test moves by hand (the verifier's caches and refetch limits).
pub struct ManualClock {
    start: Instant,
    offset: Mutex<Duration>,
}

impl ManualClock {
    pub fn new() -> Arc<ManualClock> {
        Arc::new(ManualClock {
            start: Instant::now(),
            offset: Mutex::new(Duration::ZERO),
        })
    }

    pub fn advance(&self, by: Duration) {
        *self.offset.lock().unwrap() += by;
    }
}

impl VerifierClock for ManualClock {
    fn now(&self) -> Instant {
        self.start + *self.offset.lock().unwrap()
    }
}

/// What a server builds its client as: no redirects.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The three standard keys `rsa-1`, `ec-1`, `ed-1`, generated once per test binary (RSA
/// generation is the slow part).
pub fn standard_keys() -> Vec<SigningKey> {
    static KEYS: OnceLock<Vec<SigningKey>> = OnceLock::new();
    KEYS.get_or_init(|| {
        vec![
            SigningKey::generate(KeyKind::Rsa, "rsa-1"),
            SigningKey::generate(KeyKind::Ec, "ec-1"),
            SigningKey::generate(KeyKind::Ed, "ed-1"),
        ]
    })
    .clone()
}

pub async fn standard_issuer() -> TestIssuer {
    let keys = tokio::task::spawn_blocking(standard_keys).await.unwrap();
    TestIssuer::start(keys).await
}

/// The server awaits `verify` inside axum handlers, which must be `Send`.
#[test]
fn verification_futures_are_send() {
    fn assert_send<T: Send>(_: T) {}
    let verifier = verifier(&["https://idp.example".to_string()], ManualClock::new());
    assert_send(verifier.verify("token"));
}

/// A verifier accepting `issuers` for [`AUDIENCE`], on a manual clock.
pub fn verifier(issuers: &[String], clock: Arc<ManualClock>) -> TokenVerifier {
    let config = VerifierConfig::new(issuers.iter().map(IssuerConfig::new).collect(), AUDIENCE);
    TokenVerifier::with_clock(config, http(), clock).unwrap()
}
