//! Issue 11, point 5: samay-dev-server is for this machine only. A page using DNS rebinding
//! (its domain re-resolved to 127.0.0.1) could read every synced event from
//! `/v1/inspect/events` and change the fault settings; its database was created 0644.

use std::io::{Read, Write};

use samay_testkit::devserver::{start_dev_server, TEST_TOKEN};

/// Sends `GET path` with exactly the given `Host` header (or none) and returns the status code.
fn status_for_host(port: u16, path: &str, host: Option<&str>) -> u16 {
    request(port, "GET", path, host, "")
}

/// Sends one request with exactly the given `Host` header (or none); returns the status code.
fn request(port: u16, method: &str, path: &str, host: Option<&str>, body: &str) -> u16 {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    let host = host.map(|h| format!("Host: {h}\r\n")).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\n{host}Authorization: Bearer {TEST_TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"))
}

#[tokio::test]
async fn only_this_machines_host_names_are_answered_whatever_the_port() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_dev_server(dir.path()).await;
    let port = server.addr().port();
    let checks = tokio::task::spawn_blocking(move || {
        let mut seen = Vec::new();
        for path in ["/v1/inspect/events", "/v1/_faults", "/", "/v1/health"] {
            for host in [
                format!("127.0.0.1:{port}"),
                format!("localhost:{port}"),
                format!("[::1]:{port}"),
                // A port forward on this machine names its own port.
                "localhost:9".to_string(),
            ] {
                seen.push((
                    path,
                    Some(host.clone()),
                    status_for_host(port, path, Some(&host)),
                ));
            }
            for host in [
                format!("rebind.example:{port}"),
                format!("127.0.0.1.nip.io:{port}"),
                format!("localhost.rebind.example:{port}"),
                "rebind.example".to_string(),
            ] {
                seen.push((
                    path,
                    Some(host.clone()),
                    status_for_host(port, path, Some(&host)),
                ));
            }
            seen.push((path, None, status_for_host(port, path, None)));
        }
        seen
    })
    .await
    .expect("task");
    for (path, host, status) in checks {
        let local = host
            .as_deref()
            .is_some_and(|h| !h.contains("rebind") && !h.contains("nip.io"));
        if local {
            assert_eq!(status, 200, "{path} with Host {host:?}");
        } else {
            // hyper itself answers 400 to an HTTP/1.1 request without Host; either way, no data.
            assert!(
                status == 403 || (host.is_none() && status == 400),
                "{path} with Host {host:?}: {status}"
            );
        }
    }
    // A rebound page cannot change the fault settings either; this machine can.
    let change = |host: String| {
        move || {
            request(
                port,
                "POST",
                "/v1/_faults",
                Some(&host),
                r#"{"fail_500": 5}"#,
            )
        }
    };
    let refused = tokio::task::spawn_blocking(change(format!("rebind.example:{port}")));
    assert_eq!(refused.await.expect("task"), 403);
    assert_eq!(server.faults().settings().fail_500, 0);
    let allowed = tokio::task::spawn_blocking(change(format!("localhost:{port}")));
    assert_eq!(allowed.await.expect("task"), 200);
    assert_eq!(server.faults().settings().fail_500, 5);
}

#[cfg(unix)]
#[tokio::test]
async fn its_database_is_private_to_the_user() {
    use std::os::unix::fs::PermissionsExt;
    // The usual umask, under which SQLite made the file 0644 (process-wide: the whole `it`
    // binary runs under it from here on; the modes other tests check are set by the product
    // whatever the umask, or by the children they start with their own).
    // SAFETY: umask only sets the process's file-creation mask.
    unsafe { libc::umask(0o022) };
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_dev_server(dir.path()).await;
    // A write, so SQLite has made its -wal and -shm.
    let status = tokio::task::spawn_blocking({
        let port = server.addr().port();
        move || status_for_host(port, "/v1/inspect", Some(&format!("127.0.0.1:{port}")))
    })
    .await
    .expect("task");
    assert_eq!(status, 200);
    server.add_token("another");
    drop(server);
    let db = dir.path().join("samay-dev-server.sqlite");
    for suffix in ["", "-wal", "-shm"] {
        let path = std::path::PathBuf::from(format!("{}{suffix}", db.display()));
        let mode = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{}", path.display());
    }
}
