//! The daemon's side of the control channel: the [`Hub`] between the connections and the daemon
//! loop, and the listener.
//!
//! The daemon loop asks the hub at each cycle start for the requests waiting
//! ([`Hub::begin_cycle`]), and between cycles waits for one ([`Hub::requested`]) beside its
//! timer. A connection's task registers its request ([`Hub::register`]) and streams what the
//! cycle does. Nothing here runs between cycles unless a client connects: the listener waits in
//! the kernel (issue 5: an idle daemon is not woken).
//!
//! Outside Unix there is no listener yet (a Windows named pipe is not written, see the README):
//! the hub still runs the daemon's own requests (the tray's "Sync now"), and the connections'
//! half of the protocol below is compiled but never reached.
#![cfg_attr(not(unix), allow(dead_code))]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt as _;
use tokio::sync::{mpsc, Notify};

use super::{Activity, Asks, DaemonInfo, Reply, Request, SyncResult};
use crate::engine::{BucketCount, Metrics};

/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a running cycle's counts are sent to a waiting client (when they changed).
const PROGRESS_EVERY: Duration = Duration::from_millis(200);
/// Connections served at once, at most; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 16;

/// What a registered request hears from the daemon loop.
#[derive(Debug)]
enum CycleEvent {
    /// The serving cycle started; its counters were `baseline` then.
    Started {
        baseline: Vec<BucketCount>,
    },
    Finished(SyncResult),
}

/// The fixed part of [`DaemonInfo`].
#[derive(Debug, Clone)]
pub struct DaemonBase {
    pub log_file: Option<String>,
    pub config: String,
    pub dev: bool,
}

struct State {
    activity: Activity,
    detail: Option<String>,
    /// Requests waiting for a cycle to start.
    waiting: Vec<mpsc::UnboundedSender<CycleEvent>>,
    /// What they asked of the cycle, together.
    asks: Asks,
    /// Why requests cannot be served now (the daemon idles), and the result they get.
    idle: Option<SyncResult>,
    metrics: Option<Arc<Metrics>>,
}

/// Shared by the daemon loop and the connections, for the life of the process (across config
/// reloads).
pub struct Hub {
    base: DaemonBase,
    state: Mutex<State>,
    wake: Notify,
}

/// The requests a cycle serves; [`CycleWaiters::finish`] tells them how it ended. Dropped
/// unfinished (the cycle was cancelled by a stop or a reload), they hear "interrupted".
pub struct CycleWaiters<'a> {
    hub: &'a Hub,
    waiters: Vec<mpsc::UnboundedSender<CycleEvent>>,
    /// What the waiters asked of the cycle, together.
    pub asks: Asks,
}

impl CycleWaiters<'_> {
    /// Nobody asked for this cycle.
    pub fn is_empty(&self) -> bool {
        self.waiters.is_empty()
    }

    pub fn finish(mut self, result: SyncResult) {
        for w in self.waiters.drain(..) {
            let _ = w.send(CycleEvent::Finished(result.clone()));
        }
    }
}

impl Drop for CycleWaiters<'_> {
    fn drop(&mut self) {
        // Unfinished: the senders drop, and each connection reports the interruption.
        self.hub.lock().activity = Activity::Waiting;
    }
}

impl Hub {
    pub fn new(base: DaemonBase) -> Arc<Hub> {
        Arc::new(Hub {
            base,
            state: Mutex::new(State {
                activity: Activity::Waiting,
                detail: None,
                waiting: Vec::new(),
                asks: Asks::default(),
                idle: None,
                metrics: None,
            }),
            wake: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The daemon syncs with an engine whose counters are `metrics`.
    pub fn set_active(&self, metrics: Arc<Metrics>) {
        let mut s = self.lock();
        s.activity = Activity::Waiting;
        s.detail = None;
        s.idle = None;
        s.metrics = Some(metrics);
    }

    /// The daemon idles (`activity` says why, `detail` in words): requests are answered at once
    /// with `result`, those waiting included.
    pub fn set_idle(&self, activity: Activity, detail: String, result: SyncResult) {
        let waiting = {
            let mut s = self.lock();
            s.activity = activity;
            s.detail = Some(detail);
            s.idle = Some(result.clone());
            s.metrics = None;
            std::mem::take(&mut s.waiting)
        };
        for w in waiting {
            let _ = w.send(CycleEvent::Finished(result.clone()));
        }
    }

    /// What `--status` shows of the daemon.
    pub fn info(&self) -> DaemonInfo {
        let s = self.lock();
        DaemonInfo {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            log_file: self.base.log_file.clone(),
            config: self.base.config.clone(),
            dev: self.base.dev,
            activity: s.activity,
            detail: s.detail.clone(),
        }
    }

    /// Resolves when a sync request waits (at once if one already does). For the daemon loop's
    /// wait between cycles.
    pub async fn requested(&self) {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            // Registered before the check, so a request arriving in between is not missed.
            notified.as_mut().enable();
            if !self.lock().waiting.is_empty() {
                return;
            }
            notified.await;
        }
    }

    /// A cycle starts: it serves every request waiting now.
    pub fn begin_cycle(&self) -> CycleWaiters<'_> {
        let (waiters, baseline, asks) = {
            let mut s = self.lock();
            s.activity = Activity::Syncing;
            let waiters = std::mem::take(&mut s.waiting);
            let asks = std::mem::take(&mut s.asks);
            // Nothing to copy for an ordinary cycle: idle cycles stay cheap.
            let baseline = match &s.metrics {
                Some(m) if !waiters.is_empty() => m.per_bucket(),
                _ => Vec::new(),
            };
            (waiters, baseline, asks)
        };
        for w in &waiters {
            let _ = w.send(CycleEvent::Started {
                baseline: baseline.clone(),
            });
        }
        CycleWaiters {
            hub: self,
            waiters,
            asks,
        }
    }

    /// Registers a sync request: its events, and whether a cycle is running (the request waits
    /// for the next one). `Err`: the daemon idles, with the answer.
    fn register(
        &self,
        asks: Asks,
    ) -> Result<(mpsc::UnboundedReceiver<CycleEvent>, bool), SyncResult> {
        let (tx, rx) = mpsc::unbounded_channel();
        let running = {
            let mut s = self.lock();
            if let Some(result) = &s.idle {
                return Err(result.clone());
            }
            s.waiting.push(tx);
            s.asks = s.asks.merge(asks);
            s.activity == Activity::Syncing
        };
        self.wake.notify_one();
        Ok((rx, running))
    }

    /// A sync request that wants no answer (the tray's "Sync now", a finished login): the
    /// next cycle starts at once, exactly as for `--once` beside the daemon. `Err`: the daemon
    /// idles, with the reason.
    pub fn request_sync(&self) -> Result<(), SyncResult> {
        // The receiver is dropped: what the cycle sends it is discarded.
        self.register(Asks::default()).map(|_| ())
    }

    fn counts(&self) -> Vec<BucketCount> {
        self.lock()
            .metrics
            .as_ref()
            .map(|m| m.per_bucket())
            .unwrap_or_default()
    }
}

/// Serves one connection: reads its request, answers. Generic over the stream so tests can
/// drive it without a socket.
async fn serve<S>(hub: &Hub, stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncBufReadExt;
    let (read, mut write) = tokio::io::split(stream);
    let mut lines = tokio::io::BufReader::new(read).take(super::MAX_LINE as u64);
    let mut line = String::new();
    let request = match tokio::time::timeout(REQUEST_TIMEOUT, lines.read_line(&mut line)).await {
        Ok(Ok(n)) if n > 0 => serde_json::from_str::<Request>(line.trim()),
        // Nothing, too slow, or unreadable: nothing to answer.
        _ => return,
    };
    let request = match request {
        Ok(r) => r,
        Err(e) => {
            let _ = send(
                &mut write,
                &Reply::Error {
                    message: format!("not a request this daemon knows: {e}"),
                },
            )
            .await;
            return;
        }
    };
    match request {
        Request::Status => {
            let _ = send(&mut write, &Reply::Status(hub.info())).await;
        }
        Request::SyncNow { verify, resync } => {
            sync_now(hub, Asks { verify, resync }, &mut write).await
        }
    }
}

async fn sync_now<W: tokio::io::AsyncWrite + Unpin>(hub: &Hub, asks: Asks, write: &mut W) {
    let (mut events, running) = match hub.register(asks) {
        Ok(r) => r,
        Err(result) => {
            let _ = send(write, &Reply::Finished(result)).await;
            return;
        }
    };
    tracing::info!("sync requested through the control channel");
    if send(
        write,
        &Reply::Accepted {
            after_running_cycle: running,
        },
    )
    .await
    .is_err()
    {
        return;
    }
    let mut baseline: Option<(Vec<BucketCount>, tokio::time::Instant)> = None;
    let mut last_sent = Vec::new();
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let reply = tokio::select! {
            event = events.recv() => match event {
                Some(CycleEvent::Started { baseline: b }) => {
                    // Zeros for the buckets known at the start: only a change is sent.
                    last_sent = BucketCount::since(&b, &b);
                    baseline = Some((b, tokio::time::Instant::now()));
                    Reply::Started
                }
                Some(CycleEvent::Finished(result)) => {
                    // The final counts first: the client's last frame shows the whole cycle.
                    if let Some((base, started)) = &baseline {
                        let now = BucketCount::since(&hub.counts(), base);
                        if now != last_sent {
                            let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                            let _ = send(write, &Reply::Progress { elapsed_ms, buckets: now }).await;
                        }
                    }
                    let _ = send(write, &Reply::Finished(result)).await;
                    return;
                }
                None => {
                    let _ = send(write, &Reply::Finished(SyncResult::interrupted())).await;
                    return;
                }
            },
            _ = tick.tick(), if baseline.is_some() => {
                let Some((base, started)) = &baseline else { continue };
                let now = BucketCount::since(&hub.counts(), base);
                if now == last_sent {
                    continue;
                }
                last_sent.clone_from(&now);
                Reply::Progress {
                    elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                    buckets: now,
                }
            }
        };
        // The client went away: the cycle goes on without it.
        if send(write, &reply).await.is_err() {
            return;
        }
    }
}

async fn send<W: tokio::io::AsyncWrite + Unpin>(
    write: &mut W,
    reply: &Reply,
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut line = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
    line.push(b'\n');
    write.write_all(&line).await?;
    write.flush().await
}

/// The daemon's end of the channel for the life of the process: the hub, and the listener once
/// the instance lock is held.
pub struct DaemonControl {
    pub hub: Arc<Hub>,
    listener: Mutex<Option<Listener>>,
}

impl DaemonControl {
    pub fn new(base: DaemonBase) -> DaemonControl {
        DaemonControl {
            hub: Hub::new(base),
            listener: Mutex::new(None),
        }
    }

    /// Listens on `path` unless it already does (a config reload keeps the socket). A daemon
    /// that cannot listen runs on without the channel, and says so.
    pub fn listen(&self, path: &std::path::Path) {
        let mut slot = self.listener.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_some() {
            return;
        }
        match listen(Arc::clone(&self.hub), path) {
            Ok(l) => *slot = Some(l),
            Err(super::ControlError::Unsupported) => {
                tracing::debug!(
                    "no control channel on this platform: --once beside the daemon is refused"
                )
            }
            Err(e) => tracing::warn!("{e}; --once beside the daemon will be refused"),
        }
    }
}

/// The listening socket; dropping it stops accepting and removes the socket file.
pub struct Listener {
    #[cfg(unix)]
    path: std::path::PathBuf,
    #[cfg(unix)]
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        #[cfg(unix)]
        {
            self.task.abort();
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Starts listening on `path` for `hub`. Call only while holding the instance lock: any file
/// at `path` is then a stale socket of a daemon that died, and is replaced.
#[cfg(unix)]
pub fn listen(hub: Arc<Hub>, path: &std::path::Path) -> Result<Listener, super::ControlError> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path
        .parent()
        .ok_or_else(|| super::ControlError::io(path, "no parent directory"))?;
    unix::private_dir(dir)?;
    match std::fs::remove_file(path) {
        Ok(()) => tracing::debug!(socket = %path.display(), "removed a stale control socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(super::ControlError::io(path, e)),
    }
    let listener =
        tokio::net::UnixListener::bind(path).map_err(|e| super::ControlError::io(path, e))?;
    // The directory already keeps others out; the socket's own mode says so too.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| super::ControlError::io(path, e))?;
    let own_uid = rustix::process::geteuid().as_raw();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let task = tokio::spawn(async move {
        loop {
            let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
                return;
            };
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("control socket: accept failed: {e}");
                    // A persistent error (EMFILE) must not spin.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            match stream.peer_cred() {
                Ok(cred) if cred.uid() == own_uid => {}
                Ok(cred) => {
                    tracing::warn!(
                        uid = cred.uid(),
                        "control socket: refused a connection from another user"
                    );
                    continue;
                }
                Err(e) => {
                    tracing::warn!("control socket: cannot tell who connected ({e}); refused");
                    continue;
                }
            }
            let hub = Arc::clone(&hub);
            tokio::spawn(async move {
                serve(&hub, stream).await;
                drop(permit);
            });
        }
    });
    Ok(Listener {
        path: path.to_owned(),
        task,
    })
}

/// Windows: no named pipe yet (see the module docs).
#[cfg(not(unix))]
pub fn listen(_hub: Arc<Hub>, _path: &std::path::Path) -> Result<Listener, super::ControlError> {
    Err(super::ControlError::Unsupported)
}

#[cfg(unix)]
pub(crate) mod unix {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    use std::path::Path;

    use super::super::ControlError;

    /// Creates `dir` (mode 0700) if needed and checks that it is this user's and closed to
    /// others, tightening the mode of our own directory if it is not.
    pub(crate) fn private_dir(dir: &Path) -> Result<(), ControlError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| ControlError::io(dir, e))?;
        let meta = std::fs::symlink_metadata(dir).map_err(|e| ControlError::io(dir, e))?;
        if !meta.is_dir() {
            return Err(ControlError::Unsafe {
                path: dir.to_owned(),
                why: "not a directory".into(),
            });
        }
        let own = rustix::process::geteuid().as_raw();
        if meta.uid() != own {
            return Err(ControlError::Unsafe {
                path: dir.to_owned(),
                why: format!(
                    "the directory belongs to user {}, not to us ({own})",
                    meta.uid()
                ),
            });
        }
        if meta.mode() & 0o077 != 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| ControlError::io(dir, e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    /// Drives `serve` over an in-memory pipe: writes `request`, returns the replies.
    async fn ask(
        hub: Arc<Hub>,
        request: &str,
    ) -> tokio::io::Lines<BufReader<tokio::io::DuplexStream>> {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move { serve(&hub, server).await });
        client.write_all(request.as_bytes()).await.expect("write");
        BufReader::new(client).lines()
    }

    async fn next(lines: &mut tokio::io::Lines<BufReader<tokio::io::DuplexStream>>) -> Reply {
        let line = lines.next_line().await.expect("read").expect("a reply");
        serde_json::from_str(&line).expect("a reply parses")
    }

    fn hub() -> Arc<Hub> {
        Hub::new(DaemonBase {
            log_file: Some("/logs/aw-sync-samay_2026.log".into()),
            config: "/c.toml".into(),
            dev: false,
        })
    }

    /// A request waits for the next cycle, hears it start, sees its counts grow and gets its
    /// result; two requests share one cycle.
    #[tokio::test(start_paused = true)]
    async fn a_sync_request_is_served_by_the_next_cycle_with_progress_and_result() {
        let hub = hub();
        let metrics = Arc::new(Metrics::default());
        metrics
            .bucket("window")
            .read
            .fetch_add(7, std::sync::atomic::Ordering::Relaxed);
        hub.set_active(Arc::clone(&metrics));
        let mut a = ask(Arc::clone(&hub), "{\"request\":\"sync_now\"}\n").await;
        let mut b = ask(Arc::clone(&hub), "{\"request\":\"sync_now\"}\n").await;
        for r in [&mut a, &mut b] {
            assert_eq!(
                next(r).await,
                Reply::Accepted {
                    after_running_cycle: false
                }
            );
        }
        // The loop's wait ends at once: requests are waiting.
        tokio::time::timeout(Duration::from_secs(5), hub.requested())
            .await
            .expect("requested resolves");
        let cycle = hub.begin_cycle();
        assert_eq!(hub.info().activity, Activity::Syncing);
        for r in [&mut a, &mut b] {
            assert_eq!(next(r).await, Reply::Started);
        }
        metrics.queued("window", 3);
        metrics.delivered("window", 2);
        loop {
            match next(&mut a).await {
                Reply::Progress { buckets, .. } if buckets[0].delivered < 2 => continue,
                Reply::Progress { buckets, .. } => {
                    break assert_eq!(
                        buckets,
                        vec![BucketCount {
                            bucket_id: "window".into(),
                            read: 0,
                            new: 3,
                            delivered: 2
                        }],
                        "counts since the cycle started"
                    )
                }
                other => panic!("expected progress, got {other:?}"),
            }
        }
        metrics.delivered("window", 1);
        cycle.finish(SyncResult::failed(2, "upstream down"));
        // The last progress before the result has the cycle's final counts.
        let mut last = None;
        let finished = loop {
            match next(&mut b).await {
                Reply::Progress { buckets, .. } => last = Some(buckets),
                other => break other,
            }
        };
        assert_eq!(
            last.map(|b| (b[0].new, b[0].delivered)),
            Some((3, 3)),
            "the final counts come before the result"
        );
        assert_eq!(
            finished,
            Reply::Finished(SyncResult::failed(2, "upstream down"))
        );
        assert_eq!(hub.info().activity, Activity::Waiting);
        // Served: the next wait does not end for them.
        assert!(
            tokio::time::timeout(Duration::from_millis(300), hub.requested())
                .await
                .is_err()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_daemon_answers_at_once_and_a_cancelled_cycle_says_so() {
        let hub = hub();
        hub.set_idle(
            Activity::NotConfigured,
            "sync.base_url is empty".into(),
            SyncResult::failed(1, "no upstream configured"),
        );
        let mut r = ask(Arc::clone(&hub), "{\"request\":\"sync_now\"}\n").await;
        assert_eq!(
            next(&mut r).await,
            Reply::Finished(SyncResult::failed(1, "no upstream configured"))
        );
        let mut s = ask(Arc::clone(&hub), "{\"request\":\"status\"}\n").await;
        match next(&mut s).await {
            Reply::Status(info) => {
                assert_eq!(info.activity, Activity::NotConfigured);
                assert_eq!(info.pid, std::process::id());
                assert_eq!(
                    info.log_file.as_deref(),
                    Some("/logs/aw-sync-samay_2026.log")
                );
            }
            other => panic!("{other:?}"),
        }

        hub.set_active(Arc::new(Metrics::default()));
        let mut r = ask(Arc::clone(&hub), "{\"request\":\"sync_now\"}\n").await;
        assert!(matches!(next(&mut r).await, Reply::Accepted { .. }));
        hub.requested().await;
        let cycle = hub.begin_cycle();
        assert_eq!(next(&mut r).await, Reply::Started);
        drop(cycle); // a stop cancelled the cycle
        assert_eq!(
            next(&mut r).await,
            Reply::Finished(SyncResult::interrupted())
        );

        let mut bad = ask(hub, "{\"request\":\"format_disk\"}\n").await;
        assert!(matches!(next(&mut bad).await, Reply::Error { .. }));
    }
}
