//! The browser callback: loopback listener, paste-back, deep link and scheme registration.
//! Everything runs on 127.0.0.1 with port 0 (so tests run in parallel) and short timeouts; no
//! test sleeps to make time pass.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use aw_sync_samay::auth::callback::{
    self, CallbackError, CallbackOptions, CallbackSource, CallbackWaiter, DeliverError, Finish,
};
use aw_sync_samay::config::{AuthConfig, CallbackMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use samay_testkit::callback::*;

fn assert_security_headers(response: &reqwest::Response) {
    let h = response.headers();
    let get = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
    assert_eq!(get("cache-control"), "no-store");
    assert_eq!(get("referrer-policy"), "no-referrer");
    assert_eq!(
        get("content-security-policy"),
        "default-src 'none'; style-src 'unsafe-inline'"
    );
    assert!(get("content-type").starts_with("text/html"));
}

#[tokio::test]
async fn happy_path_holds_the_page_until_finish() {
    let waiter = start().await;
    let redirect = waiter.redirect_uri().clone();
    assert_eq!(redirect.host_str(), Some("127.0.0.1"));
    assert_eq!(redirect.path(), "/callback");
    assert_ne!(redirect.port(), Some(0), "the actual port is in the URI");
    let target = url(
        &waiter,
        &format!("code=the-c0de&state={STATE}&iss=https%3A%2F%2Fid.example"),
    );
    let waiting = spawn_wait(waiter, WAIT);
    let browser = tokio::spawn(async move { client().get(target).send().await });

    let (_waiter, result) = joined(waiting).await;
    let pending = result.expect("accepted");
    assert_eq!(pending.code, "the-c0de");
    assert_eq!(pending.iss.as_deref(), Some("https://id.example"));
    assert_eq!(pending.redirect_uri, redirect);
    assert!(
        !format!("{pending:?}").contains("the-c0de"),
        "Debug redacts the code"
    );
    assert!(
        !browser.is_finished(),
        "the browser's answer waits for the outcome"
    );

    pending
        .finish(Finish::Success {
            username: "alice".into(),
        })
        .await;
    let response = browser.await.expect("task").expect("response");
    assert_eq!(response.status(), 200);
    assert_security_headers(&response);
    let body = response.text().await.expect("body");
    assert!(body.contains("Signed in as alice"), "{body}");
}

#[tokio::test]
async fn failure_outcome_is_shown_with_its_hint() {
    let waiter = start().await;
    let target = url(&waiter, &format!("code=c&state={STATE}"));
    let waiting = spawn_wait(waiter, WAIT);
    let browser = tokio::spawn(async move { client().get(target).send().await });
    let (_waiter, result) = joined(waiting).await;
    result
        .expect("accepted")
        .finish(Finish::Failure {
            message: "The token endpoint said <invalid_grant>.".into(),
            hint: Some("Check the system clock.".into()),
        })
        .await;
    let body = browser
        .await
        .expect("task")
        .expect("response")
        .text()
        .await
        .expect("body");
    assert!(body.contains("&lt;invalid_grant&gt;") && body.contains("Check the system clock."));
}

#[tokio::test]
async fn wrong_or_missing_state_is_refused_and_the_login_keeps_waiting() {
    let waiter = start().await;
    let wrong = url(&waiter, "code=evil&state=not-the-state");
    let missing = url(&waiter, "code=evil");
    let polluted = url(&waiter, &format!("code=evil&state={STATE}&state=other"));
    let forged_error = url(&waiter, "error=access_denied&state=guess");
    let good = url(&waiter, &format!("code=good&state={STATE}"));
    let waiting = spawn_wait(waiter, WAIT);

    for attack in [wrong, missing, polluted, forged_error] {
        let response = client().get(&attack).send().await.expect("response");
        assert_eq!(response.status(), 400, "{attack}");
        assert_security_headers(&response);
        let body = response.text().await.expect("body");
        assert!(
            body.contains("does not belong to the login in progress"),
            "{body}"
        );
        assert!(!waiting.is_finished(), "an attacker cannot end the login");
    }

    let browser = tokio::spawn(async move { client().get(good).send().await });
    let (_waiter, result) = joined(waiting).await;
    let pending = result.expect("the real callback is still accepted");
    assert_eq!(pending.code, "good");
    drop(pending);
    // Dropped without `finish`: the tab gets the neutral page, not an endless spinner.
    let body = browser
        .await
        .expect("task")
        .expect("response")
        .text()
        .await
        .expect("body");
    assert!(body.contains("You can close this tab"), "{body}");
}

#[tokio::test]
async fn access_denied_ends_the_login_with_a_clear_error() {
    let waiter = start().await;
    let target = url(
        &waiter,
        &format!("error=access_denied&error_description=The+user+said+no&state={STATE}"),
    );
    let waiting = spawn_wait(waiter, WAIT);
    let response = client().get(target).send().await.expect("response");
    let (_waiter, result) = joined(waiting).await;
    match result {
        Err(CallbackError::Denied { error, description }) => {
            assert_eq!(error, "access_denied");
            assert_eq!(description.as_deref(), Some("The user said no"));
        }
        other => panic!("expected Denied, got {other:?}"),
    }
    let message = CallbackError::Denied {
        error: "access_denied".into(),
        description: None,
    }
    .to_string();
    assert!(message.contains("--login"), "says what to do: {message}");
    assert_security_headers(&response);
    let body = response.text().await.expect("body");
    assert!(
        body.contains("declined or cancelled") && body.contains("--login"),
        "{body}"
    );
    assert!(body.contains("The user said no"));
}

#[tokio::test]
async fn error_description_is_html_escaped() {
    let waiter = start().await;
    let target = url(
        &waiter,
        &format!(
            "error=server_error&error_description=%3Cscript%3Ealert(1)%3C%2Fscript%3E&state={STATE}"
        ),
    );
    let waiting = spawn_wait(waiter, WAIT);
    let response = client().get(target).send().await.expect("response");
    let (_waiter, result) = joined(waiting).await;
    assert!(matches!(result, Err(CallbackError::Denied { .. })));
    let body = response.text().await.expect("body");
    assert!(!body.contains("<script>"), "{body}");
    assert!(
        body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{body}"
    );
}

#[tokio::test]
async fn right_state_without_code_is_missing_code() {
    let waiter = start().await;
    let target = url(&waiter, &format!("state={STATE}"));
    let waiting = spawn_wait(waiter, WAIT);
    let response = client().get(target).send().await.expect("response");
    let (_waiter, result) = joined(waiting).await;
    assert!(
        matches!(result, Err(CallbackError::MissingCode)),
        "{result:?}"
    );
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn other_paths_and_methods_are_refused_without_ending_the_login() {
    let waiter = start().await;
    let base = waiter.redirect_uri().clone();
    let at = |path: &str| {
        let mut u = base.clone();
        u.set_path(path);
        u.set_query(Some(&format!("code=x&state={STATE}")));
        u
    };
    for path in ["/favicon.ico", "/", "/callback/", "/callbackx", "/CALLBACK"] {
        let response = client().get(at(path)).send().await.expect("response");
        assert_eq!(response.status(), 404, "{path}");
        assert_security_headers(&response);
    }
    let post = client()
        .post(url(&waiter, &format!("code=x&state={STATE}")))
        .body("code=x")
        .send()
        .await
        .expect("response");
    assert_eq!(post.status(), 405);
    assert_eq!(
        post.headers().get("allow").and_then(|v| v.to_str().ok()),
        Some("GET")
    );
    complete(waiter, "after-noise").await;
}

#[tokio::test]
async fn oversized_request_gets_431_or_is_closed() {
    let waiter = start().await;
    let huge = format!(
        "GET /callback?state={STATE}&code={} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        "A".repeat(20 * 1024)
    );
    let answer = raw(addr(&waiter), huge.as_bytes()).await;
    // Closing with unread input may turn into a reset that loses the 431: also acceptable.
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer:.80}"
    );
    let many_headers: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let answer = raw(
        addr(&waiter),
        format!("GET /callback HTTP/1.1\r\nHost: a\r\n{many_headers}\r\n").as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:.80}");
    complete(waiter, "after-big").await;
}

#[tokio::test]
async fn garbage_does_not_break_the_listener() {
    let waiter = start().await;
    let a = addr(&waiter);
    for junk in [
        &b"\x00\x01\x02\xff\xfe garbage\r\n\r\n"[..],
        b"GET\r\n\r\n",
        b"GET /callback?state=x HTTP/9.9\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", // a TLS ClientHello
        b"GET /callback HTTP/1.1\r\nHost: a\r\nContent-Length: nope\r\n\r\n",
    ] {
        let answer = raw(a, junk).await;
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "{junk:?} -> {answer:.80}"
        );
    }
    // A client that connects and hangs up at once.
    drop(TcpStream::connect(a).await.expect("connect"));
    complete(waiter, "after-garbage").await;
}

#[tokio::test]
async fn idle_connections_do_not_block_the_callback() {
    let waiter = start().await;
    let a = addr(&waiter);
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(a).await.expect("connect"));
    }
    // And one that sent half a request head and stalled.
    let mut half = TcpStream::connect(a).await.expect("connect");
    half.write_all(b"GET /callback?state=")
        .await
        .expect("write");
    complete(waiter, "despite-idle").await;
    drop(idle);
}

#[tokio::test]
async fn nothing_is_accepted_after_the_first_callback() {
    let waiter = start().await;
    let a = addr(&waiter);
    let first = url(&waiter, &format!("code=first&state={STATE}"));
    let second = url(&waiter, &format!("code=second&state={STATE}"));
    // An idle connection opened before: it must not become a way in afterwards.
    let mut early = TcpStream::connect(a).await.expect("connect");

    let waiting = spawn_wait(waiter, WAIT);
    let browser = tokio::spawn(async move { client().get(first).send().await });
    let (mut waiter, result) = joined(waiting).await;
    let pending = result.expect("accepted");

    // While the first answer is still held, and after it: refused, or 404/410, never accepted.
    assert_not_accepted(&second, "while held").await;
    pending
        .finish(Finish::Success {
            username: "alice".into(),
        })
        .await;
    assert_not_accepted(&second, "after finish").await;
    assert_eq!(
        browser.await.expect("task").expect("response").status(),
        200
    );

    // The early connection was closed, or answers 410.
    let _ = early
        .write_all(
            format!("GET /callback?code=late&state={STATE} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes(),
        )
        .await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, early.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(
        out.is_empty() || out.starts_with("HTTP/1.1 410"),
        "{out:.80}"
    );
    // The listener is gone for new connections.
    assert!(TcpStream::connect(a).await.is_err(), "listener closed");
    assert!(matches!(
        waiter.wait(STATE, WAIT).await,
        Err(CallbackError::Closed)
    ));
}

async fn assert_not_accepted(target: &str, phase: &str) {
    match client().get(target).send().await {
        Err(e) => assert!(e.is_connect() || e.is_request(), "{phase}: {e}"),
        Ok(response) => assert!(
            matches!(response.status().as_u16(), 404 | 410),
            "{phase}: {}",
            response.status()
        ),
    }
}

#[tokio::test]
async fn taken_port_falls_back_to_a_free_one() {
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = squatter.local_addr().expect("addr").port();
    let cfg = AuthConfig {
        redirect_uri: format!("http://127.0.0.1:{taken}/callback"),
        callback: CallbackMode::Auto,
        ..AuthConfig::default()
    };
    let waiter = CallbackWaiter::start(&cfg, quiet()).await.expect("starts");
    assert_eq!(waiter.channel(), CallbackSource::Loopback);
    let port = waiter.redirect_uri().port().expect("explicit port");
    assert_ne!(port, taken);
    assert_eq!(
        addr(&waiter).port(),
        port,
        "redirect_uri carries the bound port"
    );
    complete(waiter, "on-another-port").await;
    drop(squatter);
}

#[tokio::test]
async fn configured_free_port_is_used() {
    // Find a free port, release it, and ask for it.
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        probe.local_addr().expect("addr").port()
    };
    let cfg = AuthConfig {
        redirect_uri: format!("http://127.0.0.1:{port}/cb/path"),
        callback: CallbackMode::Loopback,
        ..AuthConfig::default()
    };
    let Ok(waiter) = CallbackWaiter::start(&cfg, quiet()).await else {
        return; // someone grabbed it in between; nothing to learn
    };
    if waiter.redirect_uri().port() == Some(port) {
        assert_eq!(
            waiter.redirect_uri().as_str(),
            format!("http://127.0.0.1:{port}/cb/path")
        );
    }
}

#[tokio::test]
async fn redirect_uri_must_be_a_loopback_ip_literal() {
    for bad in [
        "http://localhost:54783/callback",
        "http://0.0.0.0:54783/callback",
        "https://127.0.0.1:54783/callback",
        "http://192.0.2.1:54783/callback",
        "not a url",
    ] {
        let cfg = AuthConfig {
            redirect_uri: bad.into(),
            callback: CallbackMode::Loopback,
            ..AuthConfig::default()
        };
        match CallbackWaiter::start(&cfg, quiet()).await {
            Err(CallbackError::BadRedirectUri { .. }) => {}
            other => panic!("{bad}: expected BadRedirectUri, got {other:?}"),
        }
    }
}

/// The machine's primary non-loopback IPv4 address, if it has one (a UDP "connect" sends nothing).
fn non_loopback_ip() -> Option<IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[tokio::test]
async fn listener_is_bound_to_127_0_0_1_only() {
    let waiter = start().await;
    let a = addr(&waiter);
    assert_eq!(a.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    if cfg!(target_os = "linux") {
        // All of 127/8 reaches this host on Linux; only 127.0.0.1 is bound.
        let other = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), a.port());
        assert!(
            TcpStream::connect(other).await.is_err(),
            "127.0.0.2 refused"
        );
    }
    if let Some(ip) = non_loopback_ip() {
        let outside = SocketAddr::new(ip, a.port());
        let attempt =
            tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(outside)).await;
        assert!(!matches!(attempt, Ok(Ok(_))), "reachable on {outside}");
    }
    complete(waiter, "loopback-only").await;
}

#[tokio::test]
async fn timeout_ends_the_wait_and_closes_the_listener() {
    let mut waiter = start().await;
    let a = addr(&waiter);
    let result = waiter.wait(STATE, Duration::from_millis(100)).await;
    match result {
        Err(e @ CallbackError::Timeout { .. }) => {
            assert!(e.to_string().contains("--login"), "{e}");
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    // The listener task sees the shutdown on its next poll; give it a bounded moment.
    let closed = tokio::time::timeout(WAIT, async {
        while TcpStream::connect(a).await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(closed.is_ok(), "listener closed after the timeout");
}

#[tokio::test]
async fn hold_timeout_sends_a_neutral_page() {
    let options = CallbackOptions {
        hold_timeout: Duration::from_millis(200),
        ..quiet()
    };
    let waiter = CallbackWaiter::start(&loopback_cfg(), options)
        .await
        .expect("starts");
    let target = url(&waiter, &format!("code=slow&state={STATE}"));
    let waiting = spawn_wait(waiter, WAIT);
    let browser = tokio::spawn(async move { client().get(target).send().await });
    let (_waiter, result) = joined(waiting).await;
    let pending = result.expect("accepted");
    // The exchange "takes too long": the tab is answered anyway.
    let response = browser.await.expect("task").expect("response");
    assert_eq!(response.status(), 200);
    let body = response.text().await.expect("body");
    assert!(body.contains("You can close this tab"), "{body}");
    // A late finish is harmless.
    pending
        .finish(Finish::Success {
            username: "alice".into(),
        })
        .await;
}

#[tokio::test]
async fn pasted_url_is_validated_like_a_callback() {
    let (mut user, input) = tokio::io::duplex(64 * 1024);
    let options = CallbackOptions {
        paste_from_stdin: true,
        paste_input: Some(Box::new(tokio::io::BufReader::new(input))),
        ..quiet()
    };
    let waiter = CallbackWaiter::start(&loopback_cfg(), options)
        .await
        .expect("starts");
    let wrong = url(&waiter, "code=wrong&state=someone-elses");
    let good = url(&waiter, &format!("code=pasted&state={STATE}"));
    let not_redirect = format!("https://id.example/authorize?state={STATE}&response_type=code");
    let waiting = spawn_wait(waiter, WAIT);

    for line in ["   ", "hello, not a url", &not_redirect, &wrong] {
        user.write_all(format!("{line}\n").as_bytes())
            .await
            .expect("type");
    }
    // The waiter processes lines in order; once the good one is in, the others were judged.
    user.write_all(format!("  {good}  \r\n").as_bytes())
        .await
        .expect("type");
    let (_waiter, result) = joined(waiting).await;
    let pending = result.expect("pasted URL accepted");
    assert_eq!(pending.code, "pasted", "the wrong-state URL was not taken");
    assert_eq!(pending.source, CallbackSource::Paste);
    pending
        .finish(Finish::Success {
            username: "alice".into(),
        })
        .await;
}

#[tokio::test]
async fn paste_and_loopback_run_side_by_side() {
    let (_user, input) = tokio::io::duplex(1024);
    let options = CallbackOptions {
        paste_from_stdin: true,
        paste_input: Some(Box::new(tokio::io::BufReader::new(input))),
        ..quiet()
    };
    let waiter = CallbackWaiter::start(&loopback_cfg(), options)
        .await
        .expect("starts");
    // Nothing pasted (the user never types): the browser's callback still wins.
    complete(waiter, "via-browser").await;
}

fn deep_link_cfg() -> AuthConfig {
    AuthConfig {
        callback: CallbackMode::DeepLink,
        deep_link_uri: "samay://callback".into(),
        ..AuthConfig::default()
    }
}

#[cfg(unix)]
#[tokio::test]
async fn deep_link_is_delivered_over_a_private_socket() {
    use std::os::unix::fs::PermissionsExt;

    let dir = tempfile::tempdir().expect("tempdir");
    let channel = dir.path().join("aw-sync-samay");
    let options = CallbackOptions {
        channel_dir: Some(channel.clone()),
        ..quiet()
    };
    let waiter = CallbackWaiter::start(&deep_link_cfg(), options)
        .await
        .expect("starts");
    assert_eq!(waiter.channel(), CallbackSource::DeepLink);
    assert_eq!(waiter.redirect_uri().as_str(), "samay://callback");
    assert!(waiter.local_addr().is_none(), "no loopback listener");
    let socket = waiter.channel_path().expect("socket").to_path_buf();
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&channel), 0o700, "directory");
    assert_eq!(mode(&socket), 0o600, "socket");

    let waiting = spawn_wait(waiter, WAIT);
    // Another login's link, and a URL that is not our callback: refused, the login waits on.
    let refused = callback::deliver_in(&channel, "samay://callback?code=x&state=other").await;
    assert!(
        matches!(refused, Err(DeliverError::Rejected(_))),
        "{refused:?}"
    );
    let refused =
        callback::deliver_in(&channel, &format!("samay://elsewhere?code=x&state={STATE}")).await;
    assert!(
        matches!(refused, Err(DeliverError::Rejected(_))),
        "{refused:?}"
    );
    assert!(!waiting.is_finished());

    let link = format!("samay://callback?code=deep&state={STATE}");
    let delivering = tokio::spawn({
        let channel = channel.clone();
        async move { callback::deliver_in(&channel, &link).await }
    });
    let (_waiter, result) = joined(waiting).await;
    let pending = result.expect("accepted");
    assert_eq!(pending.code, "deep");
    assert_eq!(pending.source, CallbackSource::DeepLink);
    pending
        .finish(Finish::Success {
            username: "bob".into(),
        })
        .await;
    let said = delivering.await.expect("task").expect("delivered");
    assert!(said.contains("Signed in as bob"), "{said}");

    // The login is over: its socket is gone, and a replay finds nobody.
    assert!(!socket.exists(), "socket removed");
    let replay = callback::deliver_in(
        &channel,
        &format!("samay://callback?code=deep&state={STATE}"),
    )
    .await;
    assert!(matches!(replay, Err(DeliverError::NoLogin)), "{replay:?}");
}

#[cfg(unix)]
#[tokio::test]
async fn deliver_without_a_waiting_login_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    for channel in [dir.path().join("never-created"), dir.path().to_path_buf()] {
        let err = callback::deliver_in(&channel, "samay://callback?code=c&state=s")
            .await
            .expect_err("nobody waits");
        assert!(matches!(err, DeliverError::NoLogin), "{err:?}");
        assert!(err.to_string().contains("no login is in progress"), "{err}");
    }
    // A stale socket of a login that died: not mistaken for a waiting login, and cleaned up.
    let stale = dir.path().join("login-dead.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind"));
    let err = callback::deliver_in(dir.path(), "samay://callback?code=c&state=s")
        .await
        .expect_err("nobody waits");
    assert!(matches!(err, DeliverError::NoLogin), "{err:?}");
    assert!(!stale.exists());
}

#[cfg(unix)]
#[tokio::test]
async fn deep_link_uri_must_be_a_private_scheme() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = AuthConfig {
        deep_link_uri: "https://example.com/callback".into(),
        ..deep_link_cfg()
    };
    let options = CallbackOptions {
        channel_dir: Some(dir.path().to_path_buf()),
        ..quiet()
    };
    assert!(matches!(
        CallbackWaiter::start(&cfg, options).await,
        Err(CallbackError::BadDeepLinkUri { .. })
    ));
}

/// Set for the child process that `register_scheme_writes_a_desktop_entry` starts.
const CHILD_ENV: &str = "AW_SYNC_SAMAY_TEST_REGISTER_CHILD";
const EXE: &str = "/opt/aw sync/aw-sync-samay";

/// Runs only in the child process, whose XDG_* and HOME point into a temp dir: the env is
/// process-global, so the parent test never changes its own.
#[test]
fn register_scheme_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let done = callback::register_scheme("samay://callback", Path::new(EXE)).expect("registers");
    for step in &done.steps {
        println!("step: {step}");
    }
    assert_eq!(done.files.len(), 1);
}

#[cfg(all(unix, not(target_os = "macos")))]
#[test]
fn register_scheme_writes_a_desktop_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let output = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            &samay_testkit::harness_name(module_path!(), "register_scheme_child"),
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .env("XDG_DATA_HOME", &data)
        .env("XDG_CONFIG_HOME", dir.path().join("config"))
        .env("HOME", dir.path().join("home"))
        .env_remove("XDG_CURRENT_DESKTOP")
        .output()
        .expect("child runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("1 passed"), "the child test ran: {stdout}");

    let file = data.join("applications/aw-sync-samay-callback.desktop");
    let entry = std::fs::read_to_string(&file).expect("desktop entry written");
    let lines: Vec<&str> = entry.lines().collect();
    assert_eq!(lines.first(), Some(&"[Desktop Entry]"));
    for expected in [
        "Type=Application",
        "NoDisplay=true",
        "MimeType=x-scheme-handler/samay;",
        r#"Exec="/opt/aw sync/aw-sync-samay" --callback %u"#,
    ] {
        assert!(lines.contains(&expected), "{expected} missing in:\n{entry}");
    }

    let validator = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("desktop-file-validate"))
            .find(|p| p.is_file())
    });
    if let Some(validator) = validator {
        let out = std::process::Command::new(validator)
            .arg(&file)
            .output()
            .expect("desktop-file-validate runs");
        assert!(
            out.status.success() && out.stdout.is_empty(),
            "desktop-file-validate: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
