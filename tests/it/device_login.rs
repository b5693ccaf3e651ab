//! Signing in without a browser (issue 10 §4): the OAuth device authorization grant (RFC 8628)
//! of the real binary against a real certified provider (oidc-provider with its `deviceFlow`
//! feature, peers/oidc/provider.mjs), the user played on "another device" by
//! crates/samay-testkit/browser/play-user.sh typing the code the binary printed. The polling rules themselves
//! (interval, slow_down, expiry, access_denied) are unit-tested under paused time in
//! src/auth/device.rs.

use samay_testkit::login_cli::{device_sign_in, have, in_dbus_session, text, LoginCli};
use samay_testkit::oidc::{PlayAction, PlayUser};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_login_stores_the_tokens_in_the_real_secret_service() {
    for tool in ["dbus-run-session", "gnome-keyring-daemon", "secret-tool"] {
        assert!(have(tool), "{tool} missing: run scripts/install-peers.sh");
    }
    let cli = LoginCli::start("token_storage = \"keyring\"").await;
    let bin = env!("CARGO_BIN_EXE_aw-sync-samay");
    let cfg = cli.config.display();
    let script = format!(
        "printf pw | gnome-keyring-daemon --unlock --components=secrets >/dev/null 2>&1; \
         \"{bin}\" --config \"{cfg}\" --login --device && \
         \"{bin}\" --config \"{cfg}\" --status >&2; \
         secret-tool search --all service aw-sync-samay >&2 2>&1"
    );
    let mut c = in_dbus_session(cli.home.path(), &script);
    let bob = PlayUser {
        user: "bob".into(),
        ..Default::default()
    };
    let (out, err, _) = device_sign_in(&mut c, bob).await;
    let all = format!("{}\n{err}", text(&out));
    assert!(out.status.success(), "{all}");
    assert!(all.contains("Logged in as bob"), "{all}");
    assert!(all.contains("Tokens stored in OS keyring"), "{all}");
    assert!(
        all.contains("logged in as bob"),
        "--status reads them back: {all}"
    );
    assert!(
        all.contains("service = aw-sync-samay"),
        "in the Secret Service: {all}"
    );
    assert!(
        all.contains("\\\"refresh_token\\\":\\\"") || all.contains("\"refresh_token\":\""),
        "a refresh token was granted (offline_access with prompt=consent): {all}"
    );
    assert!(
        !cli.data_dir().join("tokens").exists(),
        "no plain-text file was written"
    );
    assert!(
        !all.contains("Waiting up to"),
        "no browser wait in the device flow: {all}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_browser_login_signs_in_with_a_code_by_itself() {
    let cli = LoginCli::start("").await;
    // LoginCli's environment is an SSH session without a display or $BROWSER.
    let mut c = cli.cmd();
    c.arg("--login");
    let (out, err, code) = device_sign_in(&mut c, PlayUser::default()).await;
    assert!(
        code.verification_uri.starts_with(&cli.oidc.issuer()),
        "{code:?}"
    );
    println!(
        "what the user saw:\n{err}{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(out.status.success(), "{}\n{err}", text(&out));
    assert!(
        err.contains("No browser can be opened here: this is an SSH session"),
        "says why: {err}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Logged in as alice"));
    let tokens = cli.stored().await.expect("tokens stored");
    assert_eq!(tokens.subject.as_deref(), Some("alice"));
    assert!(tokens.refresh_token.is_some(), "offline_access was granted");
    assert!(tokens.expires_at.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_sign_in_aborted_on_the_other_device_stores_nothing() {
    let cli = LoginCli::start("").await;
    let mut c = cli.cmd();
    c.args(["--login", "--device"]);
    let deny = PlayUser {
        action: PlayAction::Deny,
        ..Default::default()
    };
    let (out, err, _) = device_sign_in(&mut c, deny).await;
    assert!(!out.status.success(), "{}\n{err}", text(&out));
    assert!(err.contains("declined on the other device"), "{err}");
    assert!(cli.stored().await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_without_a_device_endpoint_falls_back_to_paste_back() {
    // Endpoints by hand, no issuer: nothing names a device authorization endpoint.
    let (cli, _) = LoginCli::endpoints_only().await;

    let asked = cli.run(&["--login", "--device"], None).await;
    assert!(!asked.status.success(), "{}", text(&asked));
    assert!(
        text(&asked).contains("offers no sign-in with a code"),
        "{}",
        text(&asked)
    );
    assert!(text(&asked).contains("--no-browser"), "{}", text(&asked));

    // Without a browser and without the device flow: the URL, and an offer to paste.
    let mut c = cli.cmd();
    c.arg("--login");
    let mut child = c
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let lines = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut seen = String::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("paste the address") {
                break;
            }
        }
        seen
    });
    let seen = tokio::task::spawn_blocking(move || lines.join().unwrap())
        .await
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        seen.contains("The provider offers no sign-in with a code"),
        "{seen}"
    );
    assert!(seen.contains("paste the address"), "{seen}");
    assert!(
        seen.contains("code_challenge="),
        "the URL is printed: {seen}"
    );
}
