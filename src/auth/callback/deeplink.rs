//! The private-use URI scheme path (RFC 8252 §7.1): the browser hands `samay://callback?...` to
//! the OS, which starts `aw-sync-samay --callback <url>`; that process's [`deliver`] passes the
//! URL to the login waiting in the first process.
//!
//! The hand-over channel must be one only this user can answer or read, since the URL carries an
//! authorization code: a Unix domain socket, mode 0600, in a directory of mode 0700 under
//! `$XDG_RUNTIME_DIR` (a per-user tmpfs), else under the cache dir. Each login has its own
//! socket (`login-<random>.sock`), removed when the login ends; `deliver` tries every socket in
//! the directory, so two logins at once still each get their own answer. The directory must be
//! owned by the effective uid, and the waiter serves only peers with that uid, so even a mistake
//! in the directory's permissions — or a directory another user planted for a login running as
//! root — hands nothing to another user.
//!
//! Any app can claim a private-use scheme (§8.4); that is why the code is useless without the
//! PKCE verifier that only the waiting process holds.
//!
//! Windows is not implemented: there the channel would be a named pipe
//! (`\\.\pipe\aw-sync-samay-<user>-<login>`) created with a DACL for the current user only and
//! `PIPE_REJECT_REMOTE_CLIENTS`. Until then [`listen`] and [`deliver`] return an error there.

use std::path::{Path, PathBuf};
use std::time::Duration;

#[cfg(not(unix))]
use tokio::sync::{mpsc, watch};
use url::Url;

use super::CallbackError;
#[cfg(not(unix))]
use super::Candidate;
use crate::paths::PathsError;

/// Why `--callback <url>` could not hand the URL over.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    #[error("no login is in progress: a sign-in link can only finish a login started with `aw-sync-samay --login`; start one and sign in again")]
    NoLogin,
    #[error("the waiting login refused this sign-in link: {0}")]
    Rejected(String),
    /// Not the address a sign-in sends the browser to: empty, too long, spanning lines, not a
    /// URL, or without a state and a code (or error). `shown` is the URL without its query and
    /// fragment, so the message never repeats an authorization code or state.
    #[error("{shown:?} is not a sign-in callback URL: {why}")]
    BadUrl { shown: String, why: &'static str },
    #[error("cannot reach the waiting login through {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot find the login channel directory: {0}")]
    Paths(#[from] PathsError),
    #[error("deep-link callbacks are not supported on this platform yet")]
    Unsupported,
}

/// Where the login sockets live: `$XDG_RUNTIME_DIR/aw-sync-samay/` (private tmpfs, cleared at
/// logout), else `<cache_dir>/activitywatch/aw-sync-samay/login/`. Kept short because a Unix
/// socket path is limited to ~104 bytes.
pub fn default_channel_dir() -> Result<PathBuf, PathsError> {
    let base = directories::BaseDirs::new().ok_or(PathsError::NoHomeDir)?;
    match base.runtime_dir() {
        Some(runtime) => Ok(runtime.join(crate::paths::MODULE)),
        None => Ok(crate::paths::cache_dir()?.join("login")),
    }
}

/// Checks `auth.deep_link_uri`: a private-use scheme, not one a browser or the network handles.
pub(super) fn parse_uri(uri: &str) -> Result<Url, CallbackError> {
    let bad = |reason: String| CallbackError::BadDeepLinkUri {
        uri: uri.to_string(),
        reason,
    };
    let url = Url::parse(uri).map_err(|e| bad(format!("not a URL ({e})")))?;
    if matches!(
        url.scheme(),
        "http" | "https" | "file" | "ftp" | "data" | "javascript" | "ws" | "wss"
    ) {
        return Err(bad(format!(
            "{:?} is not a private-use scheme; use e.g. \"samay://callback\" (or reverse-domain \"app.samay:/callback\")",
            url.scheme()
        )));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("must not have a query or fragment".into()));
    }
    Ok(url)
}

/// Removes the socket file when the login's channel closes.
#[derive(Debug)]
pub(crate) struct SocketGuard {
    path: PathBuf,
}

impl SocketGuard {
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(unix)]
/// Longest a `deliver` waits for the login's answer: the login holds it until the code was
/// exchanged (at most its hold timeout, 30 s by default).
const ACK_TIMEOUT: Duration = Duration::from_secs(60);

#[cfg(unix)]
/// Longest a connected peer may take to send the URL.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

#[cfg(unix)]
pub(super) use unix::{listen, serve_io};

#[cfg(unix)]
mod unix {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    use std::path::Path;
    use std::time::Duration;

    use tokio::io::{
        AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader,
    };
    use tokio::net::{UnixListener, UnixStream};
    use tokio::sync::{mpsc, oneshot, watch};
    use url::Url;

    use super::super::page::Page;
    use super::super::{
        same_endpoint, CallbackError, CallbackSource, Candidate, Params, Responder,
        MAX_REQUEST_BYTES,
    };
    use super::{SocketGuard, READ_TIMEOUT};

    /// Creates `dir` as 0700 (or tightens it) and returns the effective uid, the only user
    /// whose connections are served. The directory must be a real directory owned by that uid:
    /// `chmod` succeeds for root on anyone's directory, so a root login trusting the owner would
    /// have served the user who planted it (issue 11).
    pub(in super::super) fn private_dir(dir: &Path) -> std::io::Result<u32> {
        let me = rustix::process::geteuid().as_raw();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let meta = std::fs::symlink_metadata(dir)?;
        if !meta.is_dir() {
            return Err(std::io::Error::other("not a directory (a symlink?)"));
        }
        if meta.uid() != me {
            return Err(std::io::Error::other(format!(
                "owned by uid {}, not by this user (uid {me}); remove it",
                meta.uid()
            )));
        }
        if meta.mode() & 0o077 != 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(me)
    }

    /// Binds this login's socket (0600, in a 0700 directory) and serves it until `shutdown`.
    pub(in super::super) fn listen(
        dir: &Path,
        expected: Url,
        queue: mpsc::Sender<Candidate>,
        mut shutdown: watch::Receiver<bool>,
        hold: Duration,
    ) -> Result<SocketGuard, CallbackError> {
        let channel_err = |source| CallbackError::Channel {
            dir: dir.to_path_buf(),
            source,
        };
        let me = private_dir(dir).map_err(channel_err)?;
        let name = format!("login-{:016x}.sock", rand::random::<u64>());
        let path = dir.join(name);
        let listener = UnixListener::bind(&path).map_err(channel_err)?;
        let guard = SocketGuard { path };
        std::fs::set_permissions(guard.path(), std::fs::Permissions::from_mode(0o600))
            .map_err(channel_err)?;

        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    biased; // once stopped, accept nothing more
                    _ = super::super::stopped(&mut shutdown) => break,
                    accepted = listener.accept() => accepted,
                };
                match accepted {
                    Ok((stream, _)) => {
                        let expected = expected.clone();
                        let queue = queue.clone();
                        tokio::spawn(async move {
                            if let Err(e) = serve(stream, me, &expected, &queue, hold).await {
                                tracing::debug!("deep-link connection ended: {e}");
                            }
                        });
                    }
                    Err(e) => {
                        tracing::debug!("accepting a deep-link connection failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            tracing::debug!("deep-link channel closed");
        });
        Ok(guard)
    }

    /// One `deliver`: read the URL (one line), check it is our endpoint, queue it for the
    /// login, write back `ok <text>` (signed in, or taken without a verdict yet) or
    /// `error <text>` (not this login's, declined, failed) once the login has decided.
    async fn serve(
        stream: UnixStream,
        me: u32,
        expected: &Url,
        queue: &mpsc::Sender<Candidate>,
        hold: Duration,
    ) -> std::io::Result<()> {
        let peer = stream.peer_cred()?;
        if peer.uid() != me {
            tracing::warn!(
                "refused a deep-link connection from another user (uid {})",
                peer.uid()
            );
            return Ok(());
        }
        let (read, write) = stream.into_split();
        serve_io(read, write, expected, queue, hold).await
    }

    /// The part of [`serve`] after the peer check, over any byte stream (the fuzz harness
    /// drives it in memory).
    pub(in super::super) async fn serve_io<R, W>(
        read: R,
        mut write: W,
        expected: &Url,
        queue: &mpsc::Sender<Candidate>,
        hold: Duration,
    ) -> std::io::Result<()>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut line = Vec::new();
        let limit = (MAX_REQUEST_BYTES + 1) as u64;
        let mut reader = BufReader::new(read).take(limit);
        tokio::time::timeout(READ_TIMEOUT, reader.read_until(b'\n', &mut line))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no URL sent"))??;
        if line.len() > MAX_REQUEST_BYTES {
            write.write_all(b"error the URL is too long\n").await?;
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line);
        let url = match Url::parse(text.trim()) {
            Ok(url) if same_endpoint(&url, expected) => url,
            _ => {
                tracing::warn!("the deep-link channel got a URL that is not the sign-in callback");
                let msg = format!(
                    "error the login in progress waits for the browser at {expected}, not at this address\n"
                );
                write.write_all(msg.as_bytes()).await?;
                return Ok(());
            }
        };
        tracing::debug!("a sign-in callback arrived on the deep-link channel");
        let (reply_tx, reply_rx) = oneshot::channel();
        let (written_tx, written_rx) = watch::channel(());
        let candidate = Candidate {
            source: CallbackSource::DeepLink,
            params: Params::from_query(url.query()),
            responder: Responder::new(reply_tx, written_rx),
        };
        let page = match super::super::enqueue(queue, candidate).await {
            Ok(()) => match tokio::time::timeout(hold, reply_rx).await {
                Ok(Ok(page)) => page,
                Ok(Err(_)) | Err(_) => Page::received(),
            },
            Err(page) => page,
        };
        let verdict = if page.is_accepted() { "ok" } else { "error" };
        let ack = format!("{verdict} {}\n", page.plain());
        write.write_all(ack.as_bytes()).await?;
        write.shutdown().await?;
        drop(written_tx);
        Ok(())
    }

    /// Hands `url` to a waiting login; see [`super::deliver`].
    pub(super) async fn deliver_in(dir: &Path, url: &str) -> Result<String, super::DeliverError> {
        use super::DeliverError;
        let url = url.trim();
        if let Some(why) = super::not_a_callback(url) {
            return Err(DeliverError::BadUrl {
                shown: super::without_response(url),
                why,
            });
        }
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(DeliverError::NoLogin)
            }
            Err(source) => {
                return Err(DeliverError::Io {
                    path: dir.to_path_buf(),
                    source,
                })
            }
        };
        let mut sockets: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("login-") && n.ends_with(".sock"))
            })
            .collect();
        sockets.sort();
        let mut rejected = None;
        for path in sockets {
            let stream = match UnixStream::connect(&path).await {
                Ok(stream) => stream,
                Err(e) => {
                    // A login that died without cleaning up; its socket is ours to remove.
                    if e.kind() == std::io::ErrorKind::ConnectionRefused {
                        let _ = std::fs::remove_file(&path);
                    }
                    continue;
                }
            };
            let io_err = |source| DeliverError::Io {
                path: path.clone(),
                source,
            };
            let (read, mut write) = stream.into_split();
            write
                .write_all(format!("{url}\n").as_bytes())
                .await
                .map_err(io_err)?;
            let mut ack = String::new();
            let mut reader = BufReader::new(read).take(4096);
            match tokio::time::timeout(super::ACK_TIMEOUT, reader.read_line(&mut ack)).await {
                Ok(Ok(_)) => {}
                Ok(Err(source)) => return Err(io_err(source)),
                Err(_) => {
                    return Err(io_err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the login did not answer",
                    )))
                }
            }
            let ack = ack.trim_end();
            if let Some(text) = ack.strip_prefix("ok ") {
                return Ok(text.to_string());
            }
            // Maybe another login's: try the next socket.
            rejected = Some(
                ack.strip_prefix("error ")
                    .unwrap_or("no answer (the login ended)")
                    .to_string(),
            );
        }
        Err(match rejected {
            Some(why) => DeliverError::Rejected(why),
            None => DeliverError::NoLogin,
        })
    }
}

/// Why `url` cannot be a sign-in callback (`None`: it may be one), judged before any login is
/// looked for, so a typo is not answered "no login is in progress".
#[cfg(unix)]
fn not_a_callback(url: &str) -> Option<&'static str> {
    if url.is_empty() {
        return Some("it is empty");
    }
    if url.len() > super::MAX_REQUEST_BYTES || url.contains(['\n', '\r']) {
        return Some("it is too long or spans lines");
    }
    let Ok(parsed) = Url::parse(url) else {
        return Some(
            "it is not a URL; pass the whole address, e.g. \"samay://callback?code=…&state=…\"",
        );
    };
    let has = |name: &str| parsed.query_pairs().any(|(k, _)| k == name);
    if !has("state") || !(has("code") || has("error")) {
        return Some("it carries no state and code; pass the whole address the browser was sent to after signing in");
    }
    None
}

/// A refused URL as it may be shown: scheme, host and path, at most 80 characters, never the
/// query or fragment, which carry the authorization code and state of a real callback.
#[cfg(unix)]
fn without_response(url: &str) -> String {
    let end = url.find(['?', '#']).unwrap_or(url.len());
    let mut shown: String = url[..end].chars().take(80).collect();
    if shown.len() < url.len() {
        shown.push('…');
    }
    shown
}

#[cfg(not(unix))]
pub(super) fn listen(
    _dir: &Path,
    _expected: Url,
    _queue: mpsc::Sender<Candidate>,
    _shutdown: watch::Receiver<bool>,
    _hold: Duration,
) -> Result<SocketGuard, CallbackError> {
    Err(CallbackError::DeepLinkUnsupported)
}

/// `aw-sync-samay --callback <url>`: hands the URL the OS started us with to the login waiting
/// in another process and returns what it answered ("Signed in: Signed in as alice…"). Fails
/// with [`DeliverError::NoLogin`] when no login is waiting.
pub async fn deliver(url: &str) -> Result<String, DeliverError> {
    deliver_in(&default_channel_dir()?, url).await
}

/// [`deliver`] through the sockets in `dir` (tests, or a login started with
/// [`CallbackOptions::channel_dir`](super::CallbackOptions::channel_dir)).
pub async fn deliver_in(dir: &Path, url: &str) -> Result<String, DeliverError> {
    #[cfg(unix)]
    {
        unix::deliver_in(dir, url).await
    }
    #[cfg(not(unix))]
    {
        let _ = (dir, url);
        Err(DeliverError::Unsupported)
    }
}
