//! Sharp edges of the login found in issue 10's trial (§5), each with the real binary against a
//! real provider (oidc-provider, and samay-dev-server's own provider): a wrong `client_id` is
//! refused before the browser opens, `--logout` says what is true about revocation, the
//! keyring fallback is one short line where the user looks, and `--callback` answers what is
//! actually wrong.

use std::path::Path;

use aw_sync_samay::auth::{oauth, preflight};
use aw_sync_samay::config::AuthConfig;
use oauth2::basic::BasicClient;
use oauth2::{AuthUrl, ClientId, CsrfToken, PkceCodeChallenge, RedirectUrl, Scope};
use samay_server::{self as devserver, DevServerConfig, OidcConfig, DEV_CLIENT_ID};
use samay_testkit::bin::isolated_command;
use samay_testkit::login_cli::{text, wait_for_file, LoginCli};
use samay_testkit::oidc::PlayUser;

/// The scripted user, writing what it does to `log` (whose existence says the browser opened).
fn user_logging_to(log: &Path) -> PlayUser {
    PlayUser {
        log: Some(log.to_path_buf()),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_client_id_is_refused_at_once_without_opening_the_browser() {
    let cli = LoginCli::start("client_id = \"not-registered\"").await;
    let log = cli.home.path().join("play.log");
    let out = cli.run(&["--login"], Some(&user_logging_to(&log))).await;
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("refused the sign-in request"), "{all}");
    assert!(
        all.contains("invalid_client"),
        "the provider's words: {all}"
    );
    assert!(
        all.contains("auth.client_id (\"not-registered\")"),
        "what to fix: {all}"
    );
    assert!(!log.exists(), "no browser was opened");
    assert!(
        !all.contains("Waiting up to"),
        "no wait for the browser: {all}"
    );
    assert!(
        !all.contains("state:"),
        "the request's state is not repeated: {all}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_client_id_at_the_dev_provider_is_refused_at_once_too() {
    let home = tempfile::tempdir().unwrap();
    let dev = devserver::spawn_with(
        DevServerConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            db_path: home.path().join("upstream.sqlite"),
            ..Default::default()
        },
        OidcConfig::default(), // its sign-in form, as a real user of samay-dev-server sees it
    )
    .await
    .unwrap();
    let config = home.path().join("aw-sync-samay.toml");
    std::fs::write(
        &config,
        format!(
            "[auth]\nclient_id = \"someone-else\"\nissuer = \"{}\"\ntoken_storage = \"file\"\nlogin_timeout = 30\n",
            dev.issuer()
        ),
    )
    .unwrap();
    let log = home.path().join("play.log");
    let mut c = isolated_command(home.path());
    c.arg("--config").arg(&config).arg("--login");
    user_logging_to(&log).apply(&mut c);
    let out = tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap();
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains("unknown client_id"),
        "the provider's words: {all}"
    );
    assert!(all.contains("auth.client_id (\"someone-else\")"), "{all}");
    assert!(!log.exists(), "no browser was opened");

    // The right client passes the same check: the dev provider answers it with its form.
    let auth = AuthConfig {
        client_id: DEV_CLIENT_ID.into(),
        issuer: dev.issuer(),
        ..Default::default()
    };
    let provider = oauth::resolve_provider(&auth, &oauth::http_client().unwrap())
        .await
        .unwrap();
    let redirect = url::Url::parse("http://127.0.0.1:54783/callback").unwrap();
    let (challenge, _verifier) = PkceCodeChallenge::new_random_sha256();
    let (authorize, _state) = BasicClient::new(ClientId::new(DEV_CLIENT_ID.into()))
        .set_auth_uri(AuthUrl::from_url(provider.authorization_endpoint.clone()))
        .set_redirect_uri(RedirectUrl::from_url(redirect.clone()))
        .authorize_url(CsrfToken::new_random)
        .add_scope(Scope::new("openid".into()))
        .set_pkce_challenge(challenge)
        .url();
    let http = oauth::http_client().unwrap();
    preflight::check(&http, &authorize, &redirect, DEV_CLIENT_ID)
        .await
        .expect("a good request is not refused");
    dev.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_says_no_revocation_endpoint_is_configured_and_how_to_set_one() {
    let (mut cli, endpoints) = LoginCli::endpoints_only().await;
    let revocation = format!(
        "revocation_url = \"{}\"
",
        cli.oidc.revocation_endpoint()
    );

    let login = cli.run(&["--login"], Some(&PlayUser::default())).await;
    assert!(login.status.success(), "{}", text(&login));
    let out = cli.run(&["--logout"], None).await;
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !said.contains("The provider has no revocation endpoint"),
        "not what is known: {said}"
    );
    assert!(
        said.contains("no revocation endpoint is configured"),
        "{said}"
    );
    assert!(said.contains("set auth.revocation_url"), "{said}");
    assert!(said.contains("auth.issuer"), "{said}");
    assert!(said.contains("Deleted the stored tokens"), "{said}");

    // Configured as the message says: the session is revoked.
    cli.write_auth(&format!("{endpoints}{revocation}"));
    let login = cli.run(&["--login"], Some(&PlayUser::default())).await;
    assert!(login.status.success(), "{}", text(&login));
    let out = cli.run(&["--logout"], None).await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Revoked the session at the provider"),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_keyring_the_plain_text_fallback_is_one_short_line_at_login_and_in_status() {
    let mut cli = LoginCli::start("token_storage = \"auto\"").await;
    // No D-Bus at all, as on a headless box: keyring 4 finds no Secret Service.
    cli.env.push((
        "DBUS_SESSION_BUS_ADDRESS".into(),
        "unix:path=/nonexistent/bus".into(),
    ));
    let keyring_lines = |o: &std::process::Output| -> Vec<String> {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .chain(String::from_utf8_lossy(&o.stderr).lines())
            .filter(|l| l.to_lowercase().contains("keyring"))
            .map(str::to_string)
            .collect()
    };

    let login = cli.run(&["--login"], Some(&PlayUser::default())).await;
    assert!(login.status.success(), "{}", text(&login));
    let said = keyring_lines(&login);
    assert_eq!(
        said.len(),
        1,
        "said once at login: {said:?}\n{}",
        text(&login)
    );
    assert!(said[0].starts_with("Tokens stored in file"), "{said:?}");
    assert!(said[0].contains("no OS keyring answered"), "{said:?}");
    let path = cli.stored_path().await;
    let short = said[0].replace(&path, "");
    assert!(
        short.len() < 160,
        "one short line ({} chars): {short}",
        short.len()
    );

    let status = cli.run(&["--status"], None).await;
    let said = keyring_lines(&status);
    assert_eq!(
        said.len(),
        1,
        "once in --status: {said:?}\n{}",
        text(&status)
    );
    assert!(said[0].starts_with("token"), "on the token line: {said:?}");
    assert!(said[0].contains("no OS keyring answered"), "{said:?}");
    assert!(said[0].contains("logged in as alice"), "{said:?}");

    // Other commands go on without it (here --once, which stops for want of an upstream).
    let once = cli.run(&["--once"], None).await;
    assert!(keyring_lines(&once).is_empty(), "{}", text(&once));
    assert!(
        text(&once).contains("no upstream configured"),
        "{}",
        text(&once)
    );
    // The reason is there for --verbose.
    let verbose = cli.run(&["--status", "--verbose"], None).await;
    assert!(
        text(&verbose).contains("no keyring could be opened"),
        "{}",
        text(&verbose)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callback_says_what_is_wrong_with_a_malformed_url() {
    let home = tempfile::tempdir().unwrap();
    let run = |arg: &str| {
        isolated_command(home.path())
            .args(["--callback", arg])
            .output()
            .unwrap()
    };
    for (arg, says) in [
        ("not a url", "is not a URL"),
        ("samay://callback", "carries no state and code"),
        ("samay://callback?code=abc", "carries no state and code"),
        ("   ", "it is empty"),
    ] {
        let out = run(arg);
        assert!(!out.status.success(), "{arg:?}: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{arg:?}: {err}");
        assert!(!err.contains("no login is in progress"), "{arg:?}: {err}");
        assert!(!err.contains("abc"), "the code is never repeated: {err}");
    }
    // A well-formed link with nothing waiting: that is the truth then.
    let out = run("samay://callback?code=abc&state=def");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no login is in progress"),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callback_during_a_loopback_login_names_its_address_or_finishes_it() {
    let cli = LoginCli::start("").await;
    let redirect_file = cli.home.path().join("redirect");
    // The browser signs in but never reaches the listener (another machine's browser).
    let play = PlayUser {
        deliver: false,
        redirect_file: Some(redirect_file.clone()),
        ..Default::default()
    };
    let mut c = cli.cmd();
    c.arg("--login")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    play.apply(&mut c);
    let login = c.spawn().unwrap();
    let redirect = wait_for_file(&redirect_file)
        .await
        .expect("the provider redirected the browser");
    assert!(redirect.starts_with("http://127.0.0.1:"), "{redirect}");
    let port = url::Url::parse(&redirect).unwrap().port().unwrap();

    // A deep link while the login waits on loopback: the address it does wait for.
    let wrong = cli
        .run(&["--callback", "samay://callback?code=abc&state=def"], None)
        .await;
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(!wrong.status.success(), "{}", text(&wrong));
    assert!(!err.contains("no login is in progress"), "{err}");
    assert!(
        err.contains(&format!(
            "waits for the browser at http://127.0.0.1:{port}/callback"
        )),
        "{err}"
    );

    // The address the browser was sent to: handed over, and the login finishes.
    let handed = cli.run(&["--callback", &redirect], None).await;
    assert!(handed.status.success(), "{}", text(&handed));
    assert!(
        String::from_utf8_lossy(&handed.stdout).contains("Signed in as alice"),
        "{}",
        text(&handed)
    );
    let out = tokio::task::spawn_blocking(move || login.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Logged in as alice"));
    assert!(cli.stored().await.is_some());
}
