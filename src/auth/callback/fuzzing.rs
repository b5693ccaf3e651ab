//! Socket-free entry points into the callback's handling of what arrives from outside, for the
//! property tests (`tests/faults/fuzz_parsers.rs`) and the cargo-fuzz targets (`fuzz/`). Not an API.
//!
//! Each one runs the production code on attacker-chosen bytes — hyper's request parser and the
//! loopback handler, the paste reader, the deep-link line reader, then the state check of
//! [`CallbackWaiter::wait`] — over in-memory streams instead of a port, a socket or a terminal,
//! so a fuzzer can run thousands of inputs a second and a panic anywhere in that path (also in
//! the tasks it spawns) reaches the caller.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use url::Url;

use super::{
    judge, loopback, paste, CallbackError, CallbackSource, CallbackWaiter, Finish, Params, Verdict,
    DEFAULT_HOLD_TIMEOUT, MAX_REQUEST_BYTES,
};

/// The redirect URI the loopback and paste harnesses wait on.
pub const REDIRECT_URI: &str = "http://127.0.0.1:54783/callback";
/// The deep-link URI the deep-link harness waits on.
pub const DEEP_LINK_URI: &str = "samay://callback";

/// Longer than any harness run: the waits end by their input running out, never by this.
const WAIT: Duration = Duration::from_secs(3600);

/// What the login would take from an accepted response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub code: String,
    pub iss: Option<String>,
}

/// How a login would have ended on some input: `None` when it would still be waiting (nothing
/// carried this login's state), else the accepted code or the error `wait` returns.
pub type Outcome = Option<Result<Accepted, CallbackError>>;

/// The state check alone, on a raw query string (what follows `?`).
pub fn judge_query(query: Option<&str>, expected_state: &str) -> Outcome {
    match judge(&Params::from_query(query), expected_state) {
        Verdict::Foreign(_) => None,
        Verdict::Denied { error, description } => {
            Some(Err(CallbackError::Denied { error, description }))
        }
        Verdict::MissingCode => Some(Err(CallbackError::MissingCode)),
        Verdict::Accepted { code, iss } => Some(Ok(Accepted { code, iss })),
    }
}

/// `raw` sent as one loopback connection to a login waiting on [`REDIRECT_URI`] for
/// `expected_state`: the bytes the connection wrote back, and how the login ended.
pub async fn loopback(raw: &[u8], expected_state: &str) -> (Vec<u8>, Outcome) {
    let redirect = redirect_uri(REDIRECT_URI);
    let (mut waiter, queue, shutdown) =
        CallbackWaiter::in_memory(redirect.clone(), CallbackSource::Loopback);
    let (client, server) = tokio::io::duplex(MAX_REQUEST_BYTES);
    let (mut from_server, mut to_server) = tokio::io::split(client);
    let serve = loopback::serve_stream(
        server,
        redirect.path().to_string(),
        queue,
        shutdown,
        DEFAULT_HOLD_TIMEOUT,
    );
    let send = async move {
        // Fails once the server closed early (431, 400): the rest is not read, as on a socket.
        let _ = to_server.write_all(raw).await;
        let _ = to_server.shutdown().await;
    };
    let receive = async move {
        let mut response = Vec::new();
        let _ = from_server.read_to_end(&mut response).await;
        response
    };
    let ((), (), response, outcome) =
        tokio::join!(serve, send, receive, decide(&mut waiter, expected_state));
    (response, outcome)
}

/// `raw` typed into the paste-back prompt (`--no-browser`) of a login waiting on
/// [`REDIRECT_URI`] for `expected_state`.
pub async fn paste(raw: &[u8], expected_state: &str) -> Outcome {
    let redirect = redirect_uri(REDIRECT_URI);
    let (mut waiter, queue, shutdown) =
        CallbackWaiter::in_memory(redirect.clone(), CallbackSource::Paste);
    // A small buffer, so lines cross buffer boundaries as they do on a pipe.
    let input = tokio::io::BufReader::with_capacity(64, std::io::Cursor::new(raw.to_vec()));
    let reader = paste::spawn(
        Box::new(input),
        redirect,
        queue,
        shutdown,
        DEFAULT_HOLD_TIMEOUT,
    );
    let outcome = decide(&mut waiter, expected_state).await;
    if let Err(e) = reader.await {
        if e.is_panic() {
            std::panic::resume_unwind(e.into_panic());
        }
    }
    outcome
}

/// `raw` written to the deep-link socket of a login waiting on [`DEEP_LINK_URI`] for
/// `expected_state` (what `--callback <url>` sends): the answer line, and how the login ended.
#[cfg(unix)]
pub async fn deep_link(raw: &[u8], expected_state: &str) -> (Vec<u8>, Outcome) {
    let expected = redirect_uri(DEEP_LINK_URI);
    let (mut waiter, queue, _shutdown) =
        CallbackWaiter::in_memory(expected.clone(), CallbackSource::DeepLink);
    let (client, server) = tokio::io::duplex(MAX_REQUEST_BYTES);
    let (server_read, server_write) = tokio::io::split(server);
    let (mut from_server, mut to_server) = tokio::io::split(client);
    let serve = async move {
        let _ = super::deeplink::serve_io(
            server_read,
            server_write,
            &expected,
            &queue,
            DEFAULT_HOLD_TIMEOUT,
        )
        .await;
        // The connection's end: the waiter learns no more candidates will come.
        drop(queue);
    };
    let send = async move {
        let _ = to_server.write_all(raw).await;
        let _ = to_server.shutdown().await;
    };
    let receive = async move {
        let mut response = Vec::new();
        let _ = from_server.read_to_end(&mut response).await;
        response
    };
    let ((), (), response, outcome) =
        tokio::join!(serve, send, receive, decide(&mut waiter, expected_state));
    (response, outcome)
}

/// Waits like a login does, and finishes an accepted callback as a successful login would.
async fn decide(waiter: &mut CallbackWaiter, expected_state: &str) -> Outcome {
    match waiter.wait(expected_state, WAIT).await {
        Ok(pending) => {
            let accepted = Accepted {
                code: pending.code.clone(),
                iss: pending.iss.clone(),
            };
            pending
                .finish(Finish::Success {
                    username: "fuzz".into(),
                })
                .await;
            Some(Ok(accepted))
        }
        Err(CallbackError::Closed) => None,
        Err(e) => Some(Err(e)),
    }
}

fn redirect_uri(text: &str) -> Url {
    // Only ever called with this module's constants, which are valid URLs.
    Url::parse(text).unwrap_or_else(|e| unreachable!("{text}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    /// Fuzzing found it: a declined (or failed) sign-in is shown with status 200, and the deep
    /// link answered `ok` for any 2xx page, so `--callback` exited 0 as if signed in.
    #[cfg(unix)]
    #[test]
    fn a_declined_deep_link_is_not_reported_ok() {
        let line = b"samay://callback?state=s1&error=access_denied\n";
        let (ack, outcome) = block_on(deep_link(line, "s1"));
        assert!(matches!(outcome, Some(Err(CallbackError::Denied { .. }))));
        let ack = String::from_utf8_lossy(&ack);
        assert!(ack.starts_with("error Sign-in not completed"), "{ack}");

        let (ack, outcome) = block_on(deep_link(b"samay://callback?state=s1&code=c\n", "s1"));
        assert_eq!(
            outcome.and_then(Result::ok).map(|a| a.code).as_deref(),
            Some("c")
        );
        assert!(String::from_utf8_lossy(&ack).starts_with("ok Signed in"));
    }

    /// The harness is the production path: a callback over the in-memory loopback connection
    /// gets the held page, a pasted URL is judged, garbage leaves the login waiting.
    #[test]
    fn harnesses_drive_the_real_channels() {
        let (response, outcome) = block_on(loopback(
            b"GET /callback?code=c1&state=s1 HTTP/1.1\r\nHost: x\r\n\r\n",
            "s1",
        ));
        assert_eq!(
            outcome.and_then(Result::ok).map(|a| a.code).as_deref(),
            Some("c1")
        );
        let response = String::from_utf8_lossy(&response);
        assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
        assert!(response.contains("Signed in as fuzz"), "{response}");

        let (response, outcome) = block_on(loopback(b"\x16\x03\x01garbage\r\n\r\n", "s1"));
        assert!(outcome.is_none());
        assert!(String::from_utf8_lossy(&response).starts_with("HTTP/1.1 400"));

        let pasted = format!("junk\n{REDIRECT_URI}?state=s1&code=c2\n");
        let outcome = block_on(paste(pasted.as_bytes(), "s1"));
        assert_eq!(
            outcome.and_then(Result::ok).map(|a| a.code).as_deref(),
            Some("c2")
        );
    }
}
