//! The browser's way back into this process after the user signs in (RFC 8252, native apps).
//!
//! [`CallbackWaiter::start`] opens the one channel the authorization server will redirect to:
//!
//! * a loopback HTTP listener on the IP literal from `auth.redirect_uri` (never `localhost`,
//!   which may resolve to `::1` while we listen on 127.0.0.1, RFC 8252 §8.3), on its port or,
//!   when that port is taken, on any free port (§7.3) — [`CallbackWaiter::redirect_uri`] is the
//!   URI with the port actually bound, and is the one to put in the authorization request;
//! * a private-use URI scheme (`auth.deep_link_uri`) when configured, or in `auto` mode when no
//!   loopback port can be bound: the OS starts `aw-sync-samay --callback <url>`, whose
//!   [`deliver`] hands the URL to the waiting login over a per-user local socket. A loopback
//!   login opens that socket too, expecting its loopback address: `--callback` run by hand
//!   during it then delivers the address the browser was sent to, or says which address the
//!   login waits for — never "no login is in progress" while one is (issue 10);
//! * optionally, standard input (`--no-browser`): the user pastes the URL the browser was sent to.
//!
//! Every channel feeds the same validation in [`CallbackWaiter::wait`]: the `state` must be the
//! one of this login (RFC 6749 §10.12) before anything else is looked at, so a forged or stale
//! response is answered "not yours" and the real login keeps waiting — an attacker who can reach
//! the port cannot abort it. Only a response with the right state ends the wait, as success
//! (code), refusal (`error=`) or a malformed answer (no code).
//!
//! The browser's HTTP response is held until the login knows the outcome
//! ([`PendingCallback::finish`]), so the tab says "Signed in as alice" or what went wrong and
//! what to do, rather than a premature "success".

mod deeplink;
#[doc(hidden)]
pub mod fuzzing;
mod loopback;
mod page;
mod paste;
mod progress;
mod scheme;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::AsyncBufRead;
use tokio::sync::{mpsc, oneshot, watch};
use url::Url;

use crate::config::{AuthConfig, CallbackMode};

pub use deeplink::{default_channel_dir, deliver, deliver_in, DeliverError};
pub use loopback::{FIRST_BYTE_TIMEOUT, MAX_CONNECTIONS};
pub use scheme::{register_scheme, Registration, SchemeError};

use page::Page;

/// How long the browser's response to an accepted callback is held while the login exchanges
/// the code; after it the tab gets a neutral "return to the terminal" page, so a slow token
/// endpoint never leaves the tab spinning forever.
pub const DEFAULT_HOLD_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest request line + headers (loopback) or URL (deep link, paste) accepted. A real
/// authorization response is far shorter; anything bigger is noise or an attack.
pub(crate) const MAX_REQUEST_BYTES: usize = 16 * 1024;

/// Pending callbacks queued before [`CallbackWaiter::wait`] looks at them. Small on purpose:
/// more than this in flight is a flood, and the excess is answered "busy" instead of queued.
const QUEUE: usize = 16;

/// Knobs of one login's wait that are not in the config file.
pub struct CallbackOptions {
    /// Also accept the redirected URL pasted on standard input (`--no-browser`), for when the
    /// browser runs on another machine and cannot reach our loopback port.
    pub paste_from_stdin: bool,
    /// Where pasted URLs are read from when `paste_from_stdin` is set; `None`: standard input.
    /// Injectable so tests can play the user.
    pub paste_input: Option<Box<dyn AsyncBufRead + Send + Unpin>>,
    /// Show the waiting indicator on stderr (a spinner on a terminal, one line otherwise).
    pub progress: bool,
    /// See [`DEFAULT_HOLD_TIMEOUT`].
    pub hold_timeout: Duration,
    /// Directory of the deep-link sockets; `None`: [`default_channel_dir`]. Injectable because
    /// the environment that picks the default is process-global.
    pub channel_dir: Option<PathBuf>,
}

impl Default for CallbackOptions {
    fn default() -> Self {
        Self {
            paste_from_stdin: false,
            paste_input: None,
            progress: true,
            hold_timeout: DEFAULT_HOLD_TIMEOUT,
            channel_dir: None,
        }
    }
}

impl fmt::Debug for CallbackOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallbackOptions")
            .field("paste_from_stdin", &self.paste_from_stdin)
            .field(
                "paste_input",
                &self.paste_input.as_ref().map(|_| "<reader>"),
            )
            .field("progress", &self.progress)
            .field("hold_timeout", &self.hold_timeout)
            .field("channel_dir", &self.channel_dir)
            .finish()
    }
}

/// Which channel a callback arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallbackSource {
    Loopback,
    DeepLink,
    Paste,
}

/// Why no authorization code could be had.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    #[error("invalid `auth.redirect_uri` {uri:?}: {reason}")]
    BadRedirectUri { uri: String, reason: String },

    #[error("invalid `auth.deep_link_uri` {uri:?}: {reason}")]
    BadDeepLinkUri { uri: String, reason: String },

    #[error("cannot listen for the browser on {addr}: {source} (set `auth.callback = \"auto\"` to fall back to the deep link, or free the port)")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot open the deep-link channel in {}: {source}", dir.display())]
    Channel {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot find the directory for the deep-link channel: {0}")]
    Paths(#[from] crate::paths::PathsError),

    /// Windows would use a per-user named pipe here; it is not written yet.
    #[error("deep-link callbacks are not supported on this platform yet; use `auth.callback = \"loopback\"`")]
    DeepLinkUnsupported,

    /// The identity provider (or the user) refused: `error=` with the right state.
    #[error("{}", describe_denied(error, description.as_deref()))]
    Denied {
        error: String,
        description: Option<String>,
    },

    /// The right state but no `code`: the provider's answer is unusable.
    #[error("the sign-in response had no authorization code; run `{}` again, and if it keeps happening check that the identity provider's client allows the authorization-code flow", crate::hint::command("--login"))]
    MissingCode,

    #[error("no sign-in came back within {} s; run `{}` again (with --no-browser you can paste the redirected URL instead)", waited.as_secs(), crate::hint::command("--login"))]
    Timeout { waited: Duration },

    /// `wait` was called again after the wait already ended.
    #[error("this login's callback channel is already closed")]
    Closed,
}

fn describe_denied(error: &str, description: Option<&str>) -> String {
    let what = if error == "access_denied" {
        "the sign-in was declined or cancelled in the browser".to_string()
    } else {
        format!("the identity provider refused the sign-in ({error})")
    };
    match description {
        Some(d) => format!(
            "{what}: {d}; run `{}` to try again",
            crate::hint::command("--login")
        ),
        None => format!(
            "{what}; run `{}` to try again",
            crate::hint::command("--login")
        ),
    }
}

/// The outcome shown in the browser tab (or sent to the deep-link process) by
/// [`PendingCallback::finish`].
#[derive(Debug, Clone)]
pub enum Finish {
    Success {
        username: String,
    },
    Failure {
        message: String,
        hint: Option<String>,
    },
}

/// An accepted callback whose browser response is still held. Read `code` (and check `iss`
/// against the issuer, RFC 9207) and exchange it, then call [`finish`](Self::finish). Dropping it
/// without `finish` shows a neutral "return to the terminal" page.
pub struct PendingCallback {
    /// The authorization code. Never log it.
    pub code: String,
    /// `iss` from the response when the server sent one (RFC 9207); the caller compares it to the
    /// issuer before exchanging the code.
    pub iss: Option<String>,
    pub source: CallbackSource,
    /// The redirect URI this callback came to, for the token request (it must be identical).
    pub redirect_uri: Url,
    responder: Responder,
}

impl fmt::Debug for PendingCallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingCallback")
            .field("code", &"<redacted>")
            .field("iss", &self.iss)
            .field("source", &self.source)
            .field("redirect_uri", &self.redirect_uri.as_str())
            .finish()
    }
}

impl PendingCallback {
    /// Answers the held browser request with the real outcome and waits (briefly) until it was
    /// written, so a process that exits right after the login still shows the tab its result.
    pub async fn finish(self, outcome: Finish) {
        let page = match outcome {
            Finish::Success { username } => Page::signed_in(&username),
            Finish::Failure { message, hint } => Page::failed(&message, hint.as_deref()),
        };
        self.responder.answer(page).await;
    }
}

/// Reply channel to whatever is holding a callback's answer (an HTTP request, a deep-link
/// connection, the paste reader), and a signal for "the answer was written".
pub(crate) struct Responder {
    reply: oneshot::Sender<Page>,
    /// Its sender is dropped once the answer is out (connection finished).
    written: watch::Receiver<()>,
}

impl Responder {
    pub(crate) fn new(reply: oneshot::Sender<Page>, written: watch::Receiver<()>) -> Self {
        Self { reply, written }
    }

    async fn answer(mut self, page: Page) {
        if self.reply.send(page).is_err() {
            return; // nobody is holding it any more (hold timeout, or the client went away)
        }
        // `changed` returns (with an error) once the holder dropped its sender.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while self.written.changed().await.is_ok() {}
        })
        .await;
    }

    fn answer_now(self, page: Page) {
        let _ = self.reply.send(page);
    }
}

/// The query parameters of an authorization response (RFC 6749 §4.1.2, RFC 9207).
#[derive(Default, Clone)]
pub(crate) struct Params {
    code: Option<String>,
    state: Option<String>,
    iss: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
    /// One of the above appeared twice: parameter pollution, refused as a whole.
    duplicate: bool,
}

impl Params {
    pub(crate) fn from_query(query: Option<&str>) -> Self {
        let mut p = Params::default();
        for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let slot = match key.as_ref() {
                "code" => &mut p.code,
                "state" => &mut p.state,
                "iss" => &mut p.iss,
                "error" => &mut p.error,
                "error_description" => &mut p.error_description,
                _ => continue,
            };
            if slot.is_some() {
                p.duplicate = true;
            }
            *slot = Some(value.into_owned());
        }
        p
    }
}

/// A callback from one of the channels, waiting for [`CallbackWaiter::wait`] to judge it.
pub(crate) struct Candidate {
    pub(crate) source: CallbackSource,
    pub(crate) params: Params,
    pub(crate) responder: Responder,
}

enum Verdict {
    /// Not this login's: answer "not yours", keep waiting.
    Foreign(&'static str),
    Denied {
        error: String,
        description: Option<String>,
    },
    MissingCode,
    Accepted {
        code: String,
        iss: Option<String>,
    },
}

fn judge(params: &Params, expected_state: &str) -> Verdict {
    if params.duplicate {
        return Verdict::Foreign("a parameter appears more than once");
    }
    match &params.state {
        None => return Verdict::Foreign("it has no state"),
        Some(state) if !same_secret(state, expected_state) => {
            return Verdict::Foreign("its state is not this login's")
        }
        Some(_) => {}
    }
    if let Some(error) = &params.error {
        return Verdict::Denied {
            error: printable(error, 100),
            description: params
                .error_description
                .as_deref()
                .map(|d| printable(d, 500)),
        };
    }
    match &params.code {
        Some(code) if !code.is_empty() => Verdict::Accepted {
            code: code.clone(),
            iss: params.iss.clone(),
        },
        _ => Verdict::MissingCode,
    }
}

/// Queues a candidate for `wait`. A full queue is waited on briefly rather than refused at
/// once, so a burst of forged responses (each answered in microseconds once `wait` runs) cannot
/// crowd out the real one; past that, or when the login is over, the page to answer with.
pub(crate) async fn enqueue(
    queue: &mpsc::Sender<Candidate>,
    candidate: Candidate,
) -> Result<(), Page> {
    match tokio::time::timeout(Duration::from_secs(2), queue.send(candidate)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Page::gone()),
        Err(_) => Err(Page::busy()),
    }
}

/// Resolves once `shutdown` says stop (or its sender is gone). A plain future, so no watch
/// guard is held across the `select!` arms that use it.
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Compares without an early exit, so the time taken does not tell how much of a guessed state
/// was right. An empty expected state never matches: it would accept `state=`.
fn same_secret(got: &str, expected: &str) -> bool {
    !expected.is_empty()
        && got.len() == expected.len()
        && got
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Text from the response made safe for a terminal and a log line: its first `max_chars`
/// characters through the one printable filter ([`crate::printable`]), `…` when cut.
pub(crate) fn printable(text: &str, max_chars: usize) -> String {
    let head: String = text.chars().take(max_chars).collect();
    let mut out = crate::printable::printable(&head).into_owned();
    if text.chars().nth(max_chars).is_some() {
        out.push('…');
    }
    out
}

/// Does `got` point at the same endpoint as `expected` (scheme, host, port, path)? The query is
/// the response itself; an empty path and `/` are the same (`samay://callback` vs
/// `samay://callback/`).
pub(crate) fn same_endpoint(got: &Url, expected: &Url) -> bool {
    let path = |u: &Url| {
        let p = u.path();
        if p.is_empty() {
            "/".to_string()
        } else {
            p.to_string()
        }
    };
    got.scheme() == expected.scheme()
        && got.host_str().map(str::to_ascii_lowercase)
            == expected.host_str().map(str::to_ascii_lowercase)
        && got.port_or_known_default() == expected.port_or_known_default()
        && path(got) == path(expected)
}

/// One login's callback channel, open from [`start`](Self::start) until [`wait`](Self::wait)
/// returns (or it is dropped).
pub struct CallbackWaiter {
    redirect_uri: Url,
    source: CallbackSource,
    local_addr: Option<SocketAddr>,
    socket: Option<deeplink::SocketGuard>,
    queue: mpsc::Receiver<Candidate>,
    /// Kept so `queue` never reports "all senders gone" while we wait. `None` only for the
    /// in-memory waiter of [`fuzzing`], whose wait ends (`Closed`) once its input is used up.
    _queue_tx: Option<mpsc::Sender<Candidate>>,
    /// `true` (or dropped): every channel stops accepting and closes.
    shutdown: watch::Sender<bool>,
    progress: bool,
    pasting: bool,
    closed: bool,
}

impl fmt::Debug for CallbackWaiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallbackWaiter")
            .field("redirect_uri", &self.redirect_uri.as_str())
            .field("source", &self.source)
            .field("local_addr", &self.local_addr)
            .field("closed", &self.closed)
            .finish()
    }
}

impl CallbackWaiter {
    /// Opens the channel for one login (see the module docs for which). Nothing is accepted
    /// until [`wait`](Self::wait) is given the state, but early arrivals are queued, so the
    /// browser may be opened before `wait` is called.
    pub async fn start(cfg: &AuthConfig, options: CallbackOptions) -> Result<Self, CallbackError> {
        let (queue_tx, queue) = mpsc::channel(QUEUE);
        let (shutdown, _) = watch::channel(false);
        let hold = options.hold_timeout;

        let loopback = match cfg.callback {
            CallbackMode::DeepLink => None,
            CallbackMode::Loopback => Some(loopback::bind(&cfg.redirect_uri).await?),
            CallbackMode::Auto => match loopback::bind(&cfg.redirect_uri).await {
                Ok(bound) => Some(bound),
                Err(e @ CallbackError::Listen { .. }) => {
                    tracing::warn!("{e}; using the deep link {} instead", cfg.deep_link_uri);
                    None
                }
                Err(e) => return Err(e),
            },
        };

        let mut waiter = match loopback {
            Some((listener, redirect_uri)) => {
                let local_addr = listener.local_addr().ok();
                loopback::serve(
                    listener,
                    redirect_uri.path().to_string(),
                    queue_tx.clone(),
                    shutdown.subscribe(),
                    hold,
                );
                if options.progress {
                    tracing::info!("waiting for the browser on {redirect_uri}");
                } else {
                    // No browser anyone waits for (`--dev`'s in-process sign-in).
                    tracing::debug!("listening for the sign-in on {redirect_uri}");
                }
                // Only a convenience here (the browser comes back over loopback): a channel
                // that cannot be opened is not worth failing the login for. `--dev`'s
                // in-process sign-in has no one to paste an address, so it leaves the channel
                // to a real `--login`.
                let socket = if options.progress {
                    match &options.channel_dir {
                        Some(dir) => Ok(dir.clone()),
                        None => default_channel_dir().map_err(CallbackError::from),
                    }
                    .and_then(|dir| {
                        deeplink::listen(
                            &dir,
                            redirect_uri.clone(),
                            queue_tx.clone(),
                            shutdown.subscribe(),
                            hold,
                        )
                    })
                    .map_err(|e| tracing::debug!("no --callback channel for this login: {e}"))
                    .ok()
                } else {
                    None
                };
                CallbackWaiter {
                    redirect_uri,
                    source: CallbackSource::Loopback,
                    local_addr,
                    socket,
                    queue,
                    _queue_tx: Some(queue_tx.clone()),
                    shutdown,
                    progress: options.progress,
                    pasting: false,
                    closed: false,
                }
            }
            None => {
                let redirect_uri = deeplink::parse_uri(&cfg.deep_link_uri)?;
                let dir = match &options.channel_dir {
                    Some(dir) => dir.clone(),
                    None => default_channel_dir()?,
                };
                let socket = deeplink::listen(
                    &dir,
                    redirect_uri.clone(),
                    queue_tx.clone(),
                    shutdown.subscribe(),
                    hold,
                )?;
                tracing::info!(
                    "waiting for the deep link {redirect_uri} (channel {})",
                    socket.path().display()
                );
                CallbackWaiter {
                    redirect_uri,
                    source: CallbackSource::DeepLink,
                    local_addr: None,
                    socket: Some(socket),
                    queue,
                    _queue_tx: Some(queue_tx.clone()),
                    shutdown,
                    progress: options.progress,
                    pasting: false,
                    closed: false,
                }
            }
        };

        if options.paste_from_stdin {
            let input: Box<dyn AsyncBufRead + Send + Unpin> = match options.paste_input {
                Some(input) => input,
                None => paste::stdin(),
            };
            paste::spawn(
                input,
                waiter.redirect_uri.clone(),
                queue_tx,
                waiter.shutdown.subscribe(),
                hold,
            );
            waiter.pasting = true;
        }
        Ok(waiter)
    }

    /// A waiter fed only through the returned sender, with no listener, socket or terminal: the
    /// fuzz harness ([`fuzzing`]) attaches the real channel code to it over in-memory streams.
    /// Its wait ends with [`CallbackError::Closed`] once every sender is gone.
    fn in_memory(
        redirect_uri: Url,
        source: CallbackSource,
    ) -> (Self, mpsc::Sender<Candidate>, watch::Receiver<bool>) {
        let (queue_tx, queue) = mpsc::channel(QUEUE);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let waiter = CallbackWaiter {
            redirect_uri,
            source,
            local_addr: None,
            socket: None,
            queue,
            _queue_tx: None,
            shutdown,
            progress: false,
            pasting: source == CallbackSource::Paste,
            closed: false,
        };
        (waiter, queue_tx, shutdown_rx)
    }

    /// The redirect URI to send in the authorization request: the port actually bound, or the
    /// deep-link URI.
    pub fn redirect_uri(&self) -> &Url {
        &self.redirect_uri
    }

    /// Which channel the redirect URI points at (`Loopback` or `DeepLink`).
    pub fn channel(&self) -> CallbackSource {
        self.source
    }

    /// The loopback listener's address, when there is one.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// The `--callback` socket's path while it is open (deep-link logins, and loopback logins
    /// where it could be opened).
    pub fn channel_path(&self) -> Option<&Path> {
        self.socket.as_ref().map(|s| s.path())
    }

    /// Waits up to `timeout` for the callback of the login whose `state` is `expected_state`.
    /// Responses with another state are answered "not yours" and ignored; the first with this
    /// state ends the wait, and every channel closes then (a second callback is never
    /// accepted).
    pub async fn wait(
        &mut self,
        expected_state: &str,
        timeout: Duration,
    ) -> Result<PendingCallback, CallbackError> {
        if self.closed {
            return Err(CallbackError::Closed);
        }
        // A spinner redrawing the line would garble what the user is pasting.
        let indicator = progress::Indicator::start(self.progress, !self.pasting, timeout);
        let deadline = tokio::time::Instant::now() + timeout;
        let result = loop {
            let candidate = match tokio::time::timeout_at(deadline, self.queue.recv()).await {
                Err(_) => break Err(CallbackError::Timeout { waited: timeout }),
                Ok(None) => break Err(CallbackError::Closed),
                Ok(Some(candidate)) => candidate,
            };
            let via = candidate.source;
            match judge(&candidate.params, expected_state) {
                Verdict::Foreign(why) => {
                    tracing::warn!(
                        "ignored a sign-in response ({via:?}) that does not belong to this login: {why}; still waiting"
                    );
                    candidate.responder.answer_now(Page::foreign());
                }
                Verdict::Denied { error, description } => {
                    tracing::warn!("the sign-in was refused ({via:?}): {error}");
                    candidate
                        .responder
                        .answer_now(Page::denied(&error, description.as_deref()));
                    break Err(CallbackError::Denied { error, description });
                }
                Verdict::MissingCode => {
                    tracing::warn!("the sign-in response ({via:?}) had no authorization code");
                    candidate.responder.answer_now(Page::missing_code());
                    break Err(CallbackError::MissingCode);
                }
                Verdict::Accepted { code, iss } => {
                    tracing::info!(
                        "authorization response received ({via:?}); code and state not logged"
                    );
                    break Ok(PendingCallback {
                        code,
                        iss,
                        source: via,
                        redirect_uri: self.redirect_uri.clone(),
                        responder: candidate.responder,
                    });
                }
            }
        };
        indicator.stop();
        self.close();
        result
    }

    /// Stops every channel: the listener and socket close, idle connections are shut, and
    /// whatever was queued behind the decisive callback is told the login is over.
    fn close(&mut self) {
        self.closed = true;
        let _ = self.shutdown.send(true);
        self.socket = None; // removes the socket file, so `deliver` says "no login in progress"
        self.queue.close();
        while let Ok(late) = self.queue.try_recv() {
            late.responder.answer_now(Page::gone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(q: &str) -> Params {
        Params::from_query(Some(q))
    }

    #[test]
    fn state_is_checked_before_anything_else() {
        assert!(matches!(
            judge(&params("error=access_denied"), "s1"),
            Verdict::Foreign(_)
        ));
        assert!(matches!(
            judge(&params("code=c&state=s2"), "s1"),
            Verdict::Foreign(_)
        ));
        assert!(matches!(
            judge(&params("code=c&state=s1&state=s1"), "s1"),
            Verdict::Foreign(_)
        ));
        assert!(matches!(
            judge(&params("code=c&state="), ""),
            Verdict::Foreign(_)
        ));
        assert!(matches!(
            judge(&params("state=s1&error=access_denied"), "s1"),
            Verdict::Denied { .. }
        ));
        assert!(matches!(
            judge(&params("state=s1&code="), "s1"),
            Verdict::MissingCode
        ));
        match judge(&params("code=c%2B1&state=s1&iss=https%3A%2F%2Fid"), "s1") {
            Verdict::Accepted { code, iss } => {
                assert_eq!(code, "c+1");
                assert_eq!(iss.as_deref(), Some("https://id"));
            }
            _ => panic!("should be accepted"),
        }
    }

    #[test]
    fn printable_strips_terminal_escapes() {
        assert_eq!(printable("a\u{1b}[31mb\n", 100), "a\\u{1b}[31mb\\u{a}");
        assert_eq!(printable("abcdef", 3), "abc…");
    }

    #[test]
    fn endpoints_compare_without_query() {
        let u = |s: &str| Url::parse(s).expect("url");
        assert!(same_endpoint(
            &u("samay://callback?code=1"),
            &u("samay://callback")
        ));
        assert!(same_endpoint(
            &u("samay://callback/?code=1"),
            &u("samay://callback")
        ));
        assert!(!same_endpoint(
            &u("samay://other?code=1"),
            &u("samay://callback")
        ));
        assert!(same_endpoint(
            &u("http://127.0.0.1:5000/callback?x"),
            &u("http://127.0.0.1:5000/callback")
        ));
        assert!(!same_endpoint(
            &u("http://127.0.0.1:5001/callback?x"),
            &u("http://127.0.0.1:5000/callback")
        ));
    }
}

/// Property tests of the helpers every channel shares; the channels themselves are fuzzed
/// through [`fuzzing`] in `tests/faults/fuzz_parsers.rs`.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(crate::proptest_config(256))]

        #[test]
        fn printable_text_has_no_control_characters_and_is_capped(
            text in any::<String>(),
            max in 0usize..40,
        ) {
            let out = printable(&text, max);
            prop_assert!(!out.chars().any(char::is_control), "{:?}", out);
            let head: String = text.chars().take(max).collect();
            let shown = crate::printable::printable(&head);
            if text.chars().count() > max {
                prop_assert_eq!(out, format!("{shown}…"));
            } else {
                prop_assert_eq!(out, shown.into_owned());
            }
        }

        #[test]
        fn an_endpoint_is_itself_whatever_its_query(
            url in "(http://127\\.0\\.0\\.1:[0-9]{1,5}|samay:/|samay://[a-zA-Z]{1,8}|app\\.x:)(/[a-zA-Z0-9%._~-]{0,12}){0,3}",
            query in "[ -~]{0,40}",
        ) {
            if let Ok(expected) = Url::parse(&url) {
                let mut got = expected.clone();
                got.set_query(Some(&query));
                prop_assert!(same_endpoint(&got, &expected), "{} vs {}", got, expected);
                let mut other = expected.clone();
                other.set_path(&format!("{}x", expected.path()));
                prop_assert!(!same_endpoint(&other, &expected), "{} vs {}", other, expected);
            }
        }

        #[test]
        fn same_secret_is_string_equality_for_non_empty_secrets(
            got in "[a-c]{0,4}",
            expected in "[a-c]{0,4}",
        ) {
            prop_assert_eq!(same_secret(&got, &expected), !expected.is_empty() && got == expected);
        }
    }
}
