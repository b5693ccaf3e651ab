//! Issue 11, points 4 and 8: other local processes against the login's channels. Idle
//! connections could starve the loopback listener (64 held for 10 s made the real redirect fail
//! with a reset), and the deep-link socket trusted the owner of its directory instead of the
//! user running the login.

use std::time::Duration;

use aw_sync_samay::auth::callback::{
    CallbackError, CallbackWaiter, FIRST_BYTE_TIMEOUT, MAX_CONNECTIONS,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use samay_testkit::callback::*;

/// More idle sockets than the listener serves at once — some that never send a byte, some
/// stuck in the middle of a request head — and the real redirect still gets through at once:
/// the oldest idle connection makes room for it.
#[tokio::test]
async fn idle_connections_beyond_the_limit_cannot_starve_the_real_redirect() {
    let waiter = start().await;
    let a = addr(&waiter);
    let mut held = Vec::new();
    for i in 0..MAX_CONNECTIONS + 36 {
        let mut stream = TcpStream::connect(a).await.expect("connect");
        if i % 2 == 1 {
            stream
                .write_all(b"GET /callback?state=")
                .await
                .expect("write");
        }
        held.push(stream);
    }
    // Without eviction every slot is taken here, and the redirect's connection is closed at
    // once: the browser sees a reset and the login times out.
    complete(waiter, "through-the-flood").await;
    // The oldest idle ones were closed to make room.
    let mut first = held.swap_remove(0);
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(WAIT, first.read(&mut byte)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the oldest idle connection was closed: {read:?}"
    );
}

/// A connection that sends nothing is closed after [`FIRST_BYTE_TIMEOUT`] (2 s), long before
/// the 10 s a request head may take. Paused time: the clock jumps to each timer, so the
/// measured time is the listener's own timeout.
#[tokio::test(start_paused = true)]
async fn a_connection_that_sends_nothing_is_closed_after_the_first_byte_timeout() {
    let waiter = start().await;
    let started = tokio::time::Instant::now();
    let mut silent = TcpStream::connect(addr(&waiter)).await.expect("connect");
    let mut byte = [0u8; 1];
    let read = silent.read(&mut byte).await;
    let waited = started.elapsed();
    assert!(matches!(read, Ok(0) | Err(_)), "closed: {read:?}");
    assert!(
        waited >= FIRST_BYTE_TIMEOUT && waited < FIRST_BYTE_TIMEOUT + Duration::from_secs(1),
        "closed after {waited:?}"
    );
    drop(waiter);
}

/// A directory for the deep-link socket that another user made (for a login running as root,
/// which may `chmod` anyone's directory) is refused: before, the login took its owner for "us"
/// and would have handed the authorization code to that user's `--callback`.
#[cfg(unix)]
#[tokio::test]
async fn a_channel_directory_owned_by_another_user_is_refused() {
    use aw_sync_samay::auth::callback::CallbackOptions;
    use aw_sync_samay::config::{AuthConfig, CallbackMode};
    use std::os::unix::fs::PermissionsExt;

    let dir = tempfile::tempdir().expect("tempdir");
    let channel = dir.path().join("aw-sync-samay");
    std::fs::create_dir(&channel).expect("mkdir");
    std::fs::set_permissions(&channel, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    // nobody's uid; making another user's directory needs root, as does the attack.
    if let Err(e) = std::os::unix::fs::chown(&channel, Some(65534), Some(65534)) {
        assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}");
        // Not root: nobody else's directory can be made, and a non-root login cannot chmod
        // one either — the case this test is about cannot arise.
        eprintln!("skipped: chown needs root ({e})");
        return;
    }
    let cfg = AuthConfig {
        callback: CallbackMode::DeepLink,
        deep_link_uri: "samay://callback".into(),
        ..AuthConfig::default()
    };
    let options = CallbackOptions {
        channel_dir: Some(channel.clone()),
        ..quiet()
    };
    match CallbackWaiter::start(&cfg, options).await {
        Err(CallbackError::Channel { source, .. }) => {
            assert!(
                source.to_string().contains("owned by uid 65534"),
                "{source}"
            );
        }
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("a directory owned by uid 65534 was taken as this user's"),
    }
    // Nothing was changed or created in it.
    let mode = std::fs::metadata(&channel)
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o777);
    assert_eq!(std::fs::read_dir(&channel).expect("list").count(), 0);
}
