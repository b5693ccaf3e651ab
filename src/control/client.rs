//! The client side of the control channel: `--status` asks the daemon who it is, `--once`
//! beside the daemon asks it to sync now.

use std::path::Path;
use std::time::Duration;

#[cfg(unix)]
use super::MAX_LINE;
use super::{Asks, ControlError, DaemonInfo, Reply, Request, SyncResult};

/// How long connecting and a `status` answer may take: the daemon answers at once.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// The running daemon's [`DaemonInfo`], or why it cannot be had ([`ControlError::NoDaemon`]
/// when none listens).
pub async fn status(path: &Path) -> Result<DaemonInfo, ControlError> {
    let exchange = async {
        let mut conn = Connection::open(path).await?;
        conn.send(&Request::Status).await?;
        match conn.next().await? {
            Some(Reply::Status(info)) => Ok(info),
            other => Err(ControlError::Protocol(format!("{other:?}"))),
        }
    };
    tokio::time::timeout(STATUS_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err(ControlError::io(path, "no answer within 5 s")))
}

/// Asks the daemon to sync now and follows the cycle to its end: `on_reply` sees every reply
/// (acceptance, start, progress) as it comes; the result is the cycle's. No overall time
/// limit: a catch-up may take minutes, and a daemon that dies closes the connection.
pub async fn sync_now(
    path: &Path,
    asks: Asks,
    mut on_reply: impl FnMut(&Reply),
) -> Result<SyncResult, ControlError> {
    let mut conn = tokio::time::timeout(STATUS_TIMEOUT, Connection::open(path))
        .await
        .unwrap_or_else(|_| Err(ControlError::io(path, "no answer within 5 s")))?;
    conn.send(&Request::SyncNow {
        verify: asks.verify,
        resync: asks.resync,
    })
    .await?;
    loop {
        match conn.next().await? {
            Some(Reply::Finished(result)) => return Ok(result),
            Some(Reply::Error { message }) => return Err(ControlError::Protocol(message)),
            Some(reply) => on_reply(&reply),
            None => return Ok(SyncResult::interrupted()),
        }
    }
}

#[cfg(unix)]
struct Connection {
    path: std::path::PathBuf,
    read: tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>,
    write: tokio::net::unix::OwnedWriteHalf,
}

#[cfg(unix)]
impl Connection {
    /// Connects, and checks that the daemon is this user's (a socket another user planted
    /// would otherwise see our requests and feed us answers).
    async fn open(path: &Path) -> Result<Connection, ControlError> {
        use std::io::ErrorKind;
        let stream = match tokio::net::UnixStream::connect(path).await {
            Ok(s) => s,
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
                return Err(ControlError::NoDaemon {
                    path: path.to_owned(),
                })
            }
            Err(e) => return Err(ControlError::io(path, e)),
        };
        let own = rustix::process::geteuid().as_raw();
        match stream.peer_cred() {
            Ok(cred) if cred.uid() == own => {}
            Ok(cred) => {
                return Err(ControlError::Unsafe {
                    path: path.to_owned(),
                    why: format!("it is served by user {}, not by us ({own})", cred.uid()),
                })
            }
            Err(e) => return Err(ControlError::io(path, e)),
        }
        let (read, write) = stream.into_split();
        Ok(Connection {
            path: path.to_owned(),
            read: tokio::io::BufReader::new(read),
            write,
        })
    }

    async fn send(&mut self, request: &Request) -> Result<(), ControlError> {
        use tokio::io::AsyncWriteExt;
        let mut line = serde_json::to_vec(request).map_err(|e| ControlError::io(&self.path, e))?;
        line.push(b'\n');
        self.write
            .write_all(&line)
            .await
            .map_err(|e| ControlError::io(&self.path, e))
    }

    /// The next reply; `None` when the daemon closed the connection.
    async fn next(&mut self) -> Result<Option<Reply>, ControlError> {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt};
        let mut line = String::new();
        let n = (&mut self.read)
            .take(MAX_LINE as u64)
            .read_line(&mut line)
            .await
            .map_err(|e| ControlError::io(&self.path, e))?;
        if n == 0 {
            return Ok(None);
        }
        if !line.ends_with('\n') {
            return Err(ControlError::Protocol(format!(
                "a reply longer than {MAX_LINE} bytes, or cut short"
            )));
        }
        serde_json::from_str(line.trim())
            .map(Some)
            .map_err(|e| ControlError::Protocol(format!("{e}: {:?}", line.trim())))
    }
}

#[cfg(not(unix))]
struct Connection;

#[cfg(not(unix))]
impl Connection {
    async fn open(_path: &Path) -> Result<Connection, ControlError> {
        Err(ControlError::Unsupported)
    }
    async fn send(&mut self, _request: &Request) -> Result<(), ControlError> {
        Err(ControlError::Unsupported)
    }
    async fn next(&mut self) -> Result<Option<Reply>, ControlError> {
        Err(ControlError::Unsupported)
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;

    use super::*;
    use crate::control::server::{listen, DaemonBase, Hub};
    use crate::control::Activity;

    /// Over a real socket: the directory and the socket are the user's alone, `status`
    /// answers, a stale socket file is replaced, and no daemon means `NoDaemon`.
    #[tokio::test]
    async fn the_socket_is_private_and_answers_status() {
        let dir = tempfile::tempdir().expect("tempdir");
        let run = dir.path().join("run");
        let path = run.join("127.0.0.1-5600.sock");
        assert!(matches!(
            status(&path).await,
            Err(ControlError::NoDaemon { .. })
        ));
        // A stale file where the socket goes (a daemon killed with -9).
        std::fs::create_dir_all(&run).expect("dir");
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::write(&path, "stale").expect("stale file");
        let hub = Hub::new(DaemonBase {
            log_file: None,
            config: "c.toml".into(),
            dev: true,
        });
        let listener = listen(Arc::clone(&hub), &path).expect("listens");
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&run), 0o700, "the directory is closed to others");
        assert_eq!(mode(&path), 0o600, "the socket is the user's alone");
        let info = status(&path).await.expect("status");
        assert_eq!(info.pid, std::process::id());
        assert!(info.dev);
        assert_eq!(info.activity, Activity::Waiting);
        drop(listener);
        assert!(!path.exists(), "the socket file goes with the listener");
        assert!(matches!(
            status(&path).await,
            Err(ControlError::NoDaemon { .. })
        ));
    }
}
