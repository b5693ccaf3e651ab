//! The login's browser callback as tests drive it: a loopback waiter with short timeouts, a
//! "browser" that follows nothing, and the steps of a complete login.

use std::net::SocketAddr;
use std::time::Duration;

use aw_sync_samay::auth::callback::{
    CallbackError, CallbackOptions, CallbackSource, CallbackWaiter, Finish, PendingCallback,
};
use aw_sync_samay::config::{AuthConfig, CallbackMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

pub const STATE: &str = "st4te-of-this-login_0123456789";
/// Long enough never to fire in a passing test, short enough that a broken one fails quickly.
pub const WAIT: Duration = Duration::from_secs(10);

pub fn loopback_cfg() -> AuthConfig {
    AuthConfig {
        redirect_uri: "http://127.0.0.1:0/callback".into(),
        callback: CallbackMode::Loopback,
        ..AuthConfig::default()
    }
}

pub fn quiet() -> CallbackOptions {
    CallbackOptions {
        progress: false,
        ..CallbackOptions::default()
    }
}

pub async fn start() -> CallbackWaiter {
    CallbackWaiter::start(&loopback_cfg(), quiet())
        .await
        .expect("listener starts")
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(WAIT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

pub fn url(waiter: &CallbackWaiter, query: &str) -> String {
    format!("{}?{query}", waiter.redirect_uri())
}

pub fn addr(waiter: &CallbackWaiter) -> SocketAddr {
    waiter.local_addr().expect("loopback listener")
}

pub type Waiting = JoinHandle<(CallbackWaiter, Result<PendingCallback, CallbackError>)>;

pub fn spawn_wait(mut waiter: CallbackWaiter, timeout: Duration) -> Waiting {
    tokio::spawn(async move {
        let result = waiter.wait(STATE, timeout).await;
        (waiter, result)
    })
}

pub async fn joined(waiting: Waiting) -> (CallbackWaiter, Result<PendingCallback, CallbackError>) {
    tokio::time::timeout(WAIT, waiting)
        .await
        .expect("wait ends in time")
        .expect("wait task")
}

/// Sends `bytes` on a fresh connection and returns whatever comes back until the server closes
/// (empty when it just hangs up).
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    // The server may close before reading everything (oversized request): that's fine.
    let _ = stream.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A valid callback completes the login: proves the listener still works after whatever a test
/// threw at it first.
pub async fn complete(waiter: CallbackWaiter, code: &str) {
    let target = url(&waiter, &format!("code={code}&state={STATE}"));
    let waiting = spawn_wait(waiter, WAIT);
    let browser = tokio::spawn(async move { client().get(target).send().await });
    let (_waiter, result) = joined(waiting).await;
    let pending = result.expect("accepted");
    assert_eq!(pending.code, code);
    assert_eq!(pending.source, CallbackSource::Loopback);
    pending
        .finish(Finish::Success {
            username: "alice".into(),
        })
        .await;
    let response = browser.await.expect("task").expect("response");
    assert_eq!(response.status(), 200);
}
