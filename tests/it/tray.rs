//! The tray menu end to end, headless (issue 15): a private session bus (`dbus-run-session`)
//! with gnome-keyring, a StatusNotifierWatcher stand-in that the daemon's icon registers with,
//! the menu read through `com.canonical.dbusmenu.GetLayout` and clicked with `Event(id,
//! "clicked", …)` as a panel does — against the real aw-server, the real OpenID provider with
//! the scripted browser, and the dev upstream. The labels of each state (logged out, logged in,
//! syncing, paused, error) come from `src/tray/model.rs`, whose unit tests cover every wording.
//! Linux only: the tray protocol there is StatusNotifierItem.
#![cfg(target_os = "linux")]

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use samay_server::{self as devserver, DevServer, DevServerConfig, OidcConfig};
use samay_testkit::awserver::AwServer;
use samay_testkit::bin::isolated_command;
use samay_testkit::daemon::Daemon;
use samay_testkit::devserver::start_for_issuer;
use samay_testkit::login_cli::have;
use samay_testkit::oidc::{OidcOptions, OidcProvider, PlayUser};
use samay_testkit::rig::series;
use samay_testkit::tray::{SessionBus, TrayHost, WAIT};

fn need_tools() {
    for tool in ["dbus-run-session", "gnome-keyring-daemon", "secret-tool"] {
        assert!(have(tool), "{tool} missing: run scripts/install-peers.sh");
    }
}

/// The daemon with `--tray` on `bus`, `$BROWSER` the scripted user, and an `xdg-open` that
/// writes what it was asked to open to `<home>/opened` (see [`opened`]).
fn spawn_daemon(home: &Path, aw: &AwServer, config: &Path, bus: &SessionBus) -> Daemon {
    let bin = home.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let opener = bin.join("xdg-open");
    std::fs::write(
        &opener,
        format!(
            "#!/bin/sh\necho \"$1\" >> '{}'\n",
            home.join("opened").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&opener, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut c = daemon_command(home, aw, config, bus);
    c.arg("--tray").env("PATH", path);
    PlayUser::default().apply(&mut c);
    Daemon::spawn(&mut c, &home.join("out"))
}

/// Waits (bounded) until `xdg-open` was asked to open `n` things, and returns them.
async fn opened(home: &Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let lines: Vec<String> = std::fs::read_to_string(home.join("opened"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        if lines.len() >= n || Instant::now() > deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn daemon_command(home: &Path, aw: &AwServer, config: &Path, bus: &SessionBus) -> Command {
    let mut c = isolated_command(home);
    c.arg("--port")
        .arg(aw.port().to_string())
        .arg("--config")
        .arg(config)
        .env("DBUS_SESSION_BUS_ADDRESS", &bus.address)
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY");
    c
}

/// Waits (bounded) until the upstream holds `n` events of `bucket`.
async fn wait_upstream(dev: &DevServer, bucket: &str, n: usize) -> usize {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = dev
            .stored_events(None, Some(bucket))
            .await
            .expect("upstream events")
            .len();
        if got >= n || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the Secret Service on `bus` holds for aw-sync-samay, as another client sees it.
fn keyring_contents(bus: &SessionBus) -> String {
    let out = Command::new("secret-tool")
        .args(["search", "--all", "service", "aw-sync-samay"])
        .env("DBUS_SESSION_BUS_ADDRESS", &bus.address)
        .output()
        .expect("secret-tool");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The refresh token in the stored tokens' JSON.
fn refresh_token_in(secret: &str) -> Option<String> {
    let start = secret.find("\"refresh_token\":\"")? + "\"refresh_token\":\"".len();
    let len = secret[start..].find('"')?;
    Some(secret[start..start + len].to_string())
}

/// The provider's answer to a refresh with `token`.
async fn present_refresh_token(oidc: &OidcProvider, token: &str) -> (u16, String) {
    let resp = reqwest::Client::new()
        .post(oidc.token_endpoint())
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", token),
            ("client_id", &oidc.client_id()),
        ])
        .send()
        .await
        .expect("token endpoint");
    (
        resp.status().as_u16(),
        resp.text().await.unwrap_or_default(),
    )
}

/// The status line: the menu's second entry.
fn status_of(labels: &[String]) -> &str {
    labels.get(1).map(String::as_str).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tray_menu_logs_in_syncs_pauses_and_logs_out() {
    need_tools();
    let home = tempfile::tempdir().expect("home");
    let oidc = tokio::task::spawn_blocking(|| OidcProvider::start_with(OidcOptions::default()));
    let aw = tokio::task::spawn_blocking(AwServer::start);
    let bus = {
        let home = home.path().to_path_buf();
        tokio::task::spawn_blocking(move || SessionBus::start(&home))
    };
    let (oidc, aw, bus) = (oidc.await.unwrap(), aw.await.unwrap(), bus.await.unwrap());
    let dev = start_for_issuer(home.path(), &oidc.issuer()).await;
    let host = TrayHost::start(&bus).await;
    let config = home.path().join("aw-sync-samay.toml");
    // A long interval: every cycle after the first is one the test asked for.
    std::fs::write(
        &config,
        format!(
            "[auth]\nclient_id = \"{}\"\nissuer = \"{}\"\ntoken_storage = \"keyring\"\nlogin_timeout = 30\n\
             [sync]\nbase_url = \"{}\"\nbatch_size = 20\nmax_retries = 0\nsync_interval = 3600\n",
            oidc.client_id(),
            oidc.issuer(),
            dev.base_url()
        ),
    )
    .unwrap();
    let client = aw.client();
    client
        .create_bucket("window", "currentwindow", "t", "h")
        .await
        .unwrap();
    client
        .insert_events("window", &series(60, 5.0, 600, "first"))
        .await
        .unwrap();
    let mut daemon = spawn_daemon(home.path(), &aw, &config, &bus);

    // Logged out: the first cycle asked for a login.
    let item = host.wait_for_item(0).await;
    let labels = host
        .wait_for_menu(&item, "\"Login required\"", |l| {
            status_of(l) == "(Login required)"
        })
        .await;
    assert_eq!(
        labels,
        [
            "(Samay Sync — Not logged in)",
            "(Login required)",
            "---",
            "Log in…",
            "Sync now",
            "Pause syncing",
            "---",
            "Open log folder",
            "Open config file",
        ]
    );
    assert_eq!(
        host.item_property(&item, "IconName").await,
        "dialog-warning"
    );
    assert_eq!(host.item_property(&item, "Status").await, "NeedsAttention");

    // "Log in…": the browser login of --login, from the daemon; the sync starts when it
    // succeeds. Slow uploads keep that sync running long enough to be seen (a second each:
    // three batches travel at once).
    dev.faults().update(|f| f.slow_ms = 1000);
    host.click(&item, "Log in…").await;
    let syncing = host
        .wait_for_menu(&item, "the sync's progress", |l| {
            let s = status_of(l);
            s.starts_with("(Syncing… ") && s.contains(" of 60")
        })
        .await;
    assert_eq!(syncing[0], "(Samay Sync — Logged in as alice)");
    assert!(syncing.contains(&"(Sync now)".to_string()), "{syncing:?}");
    let synced = host
        .wait_for_menu(&item, "the end of the sync", |l| {
            let s = status_of(l);
            s.starts_with("(Synced ") && s.ends_with(" · 0 pending)")
        })
        .await;
    assert_eq!(synced[3], "Log out", "{synced:?}");
    assert_eq!(host.item_property(&item, "IconName").await, "network-idle");
    let stored = dev.stored_events(None, Some("window")).await.unwrap();
    assert_eq!(stored.len(), 60);
    assert!(stored.iter().all(|e| e.user == "alice"));
    assert!(
        keyring_contents(&bus).contains("attribute.service = aw-sync-samay"),
        "the login's tokens are in the Secret Service"
    );
    dev.faults().clear();

    // "Pause syncing": recorded in the state, so a restarted daemon stays paused and runs no
    // cycle, not even its first; --status shows it.
    host.click(&item, "Pause syncing").await;
    let paused = host
        .wait_for_menu(&item, "the pause", |l| l.contains(&"Resume syncing".into()))
        .await;
    assert!(
        status_of(&paused).starts_with("(Paused · synced "),
        "{paused:?}"
    );
    assert_eq!(
        host.item_property(&item, "IconName").await,
        "media-playback-pause"
    );
    client
        .insert_events("window", &series(10, 5.0, 60, "while-paused"))
        .await
        .unwrap();
    daemon.stop_with("TERM").await;
    let mut daemon = spawn_daemon(home.path(), &aw, &config, &bus);
    let item = host.wait_for_item(1).await;
    daemon.wait_for("syncing is paused").await;
    let labels = host
        .wait_for_menu(&item, "the pause after the restart", |l| {
            l.contains(&"Resume syncing".into())
        })
        .await;
    assert_eq!(labels[0], "(Samay Sync — Logged in as alice)");
    let status = {
        let mut c = daemon_command(home.path(), &aw, &config, &bus);
        c.arg("--status");
        tokio::task::spawn_blocking(move || c.output().expect("--status"))
            .await
            .unwrap()
    };
    let said = String::from_utf8_lossy(&status.stdout);
    assert!(said.contains("paused     since"), "{said}");
    assert!(said.contains("Resume syncing"), "{said}");
    assert_eq!(host.registrations(), 2, "--status shows no icon of its own");
    assert_eq!(
        dev.stored_events(None, Some("window")).await.unwrap().len(),
        60,
        "the paused daemon ran no cycle"
    );

    // "Open config file" and "Open log folder" hand them to the desktop's opener.
    host.click(&item, "Open config file").await;
    host.click(&item, "Open log folder").await;
    let log_dir = home.path().join("cache/activitywatch/log/aw-sync-samay");
    let mut asked = opened(home.path(), 2).await;
    asked.sort();
    let mut expected = [config.display().to_string(), log_dir.display().to_string()];
    expected.sort();
    assert_eq!(asked, expected);

    // "Sync now" runs one cycle even while paused: the batch arrives.
    host.click(&item, "Sync now").await;
    assert_eq!(wait_upstream(&dev, "window", 70).await, 70);
    host.wait_for_menu(&item, "still paused after the sync", |l| {
        status_of(l).starts_with("(Paused · synced ") && l.contains(&"Resume syncing".into())
    })
    .await;
    host.click(&item, "Resume syncing").await;
    host.wait_for_menu(&item, "resumed", |l| l.contains(&"Pause syncing".into()))
        .await;

    // The upstream fails: the status line says so and when the next try is.
    dev.faults().update(|f| f.fail_500 = 1000);
    client
        .insert_events("window", &series(5, 5.0, 30, "failing"))
        .await
        .unwrap();
    host.wait_for_menu(&item, "Sync now enabled", |l| {
        l.contains(&"Sync now".into())
    })
    .await;
    host.click(&item, "Sync now").await;
    // The menu and the icon are two reads, and a cycle may start between them: the one
    // "Resume syncing" started can fail on the fault first, before the click's cycle runs. So
    // both are read until they show the failure together (bounded).
    let deadline = Instant::now() + WAIT;
    let failed = loop {
        let failed = host
            .wait_for_menu(&item, "the failure", |l| {
                status_of(l).starts_with("(Upstream unreachable — retrying in ")
            })
            .await;
        let icon = host.item_property(&item, "IconName").await;
        if icon == "dialog-warning" {
            break failed;
        }
        assert!(
            Instant::now() < deadline,
            "the failure's status line came with the icon {icon:?}, not \"dialog-warning\""
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert!(failed.contains(&"Log out".into()), "{failed:?}");
    dev.faults().clear();

    // "Log out" = --logout: revoked at the provider, deleted from the keyring.
    let refresh = refresh_token_in(&keyring_contents(&bus)).expect("a stored refresh token");
    host.click(&item, "Log out").await;
    let out = host
        .wait_for_menu(&item, "logged out", |l| {
            l.first().map(String::as_str) == Some("(Samay Sync — Not logged in)")
        })
        .await;
    assert_eq!(status_of(&out), "(Login required)");
    assert!(out.contains(&"Log in…".into()), "{out:?}");
    let (code, body) = present_refresh_token(&oidc, &refresh).await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("invalid_grant"), "{body}");
    assert!(
        refresh_token_in(&keyring_contents(&bus)).is_none(),
        "the tokens are gone from the keyring"
    );
    daemon.assert_alive_for(Duration::from_millis(100)).await;
    daemon.stop_with("TERM").await;
}

/// No tray host: `ui.tray = "on"` says why there is no icon and syncs on; `"auto"` (the
/// default) says nothing. Syncing never depends on the icon. In a graphical session a host that
/// starts later (a panel started after aw-qt's modules) still gets the icon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_tray_host_the_daemon_syncs_on() {
    need_tools();
    const TOKEN: &str = "tray-test-token";
    let home = tempfile::tempdir().expect("home");
    let aw = tokio::task::spawn_blocking(AwServer::start);
    let bus = {
        let home = home.path().to_path_buf();
        tokio::task::spawn_blocking(move || SessionBus::start(&home))
    };
    let (aw, bus) = (aw.await.unwrap(), bus.await.unwrap());
    let dev = devserver::spawn_with(
        DevServerConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            db_path: home.path().join("upstream.sqlite"),
            tokens: vec![TOKEN.into()],
        },
        OidcConfig::default(),
    )
    .await
    .expect("dev upstream");
    let client = aw.client();
    client.create_bucket("b", "t", "t", "h").await.unwrap();
    client
        .insert_events("b", &series(5, 5.0, 60, "x"))
        .await
        .unwrap();
    let write = |tray: &str| -> PathBuf {
        let path = home.path().join(format!("{tray}.toml"));
        std::fs::write(
            &path,
            format!(
                "[sync]\nbase_url = \"{}\"\nsync_interval = 3600\n[ui]\ntray = \"{tray}\"\n",
                dev.base_url()
            ),
        )
        .unwrap();
        path
    };
    for (tray, says) in [("on", true), ("auto", false)] {
        let config = write(tray);
        let mut c = daemon_command(home.path(), &aw, &config, &bus);
        c.env("AW_SYNC_SAMAY_TOKEN", TOKEN);
        let mut daemon = Daemon::spawn(&mut c, &home.path().join(format!("out-{tray}")));
        daemon.wait_for("sync cycle done").await;
        let log = daemon.stderr();
        assert_eq!(
            log.contains("no tray icon: the desktop has no tray host"),
            says,
            "ui.tray = {tray:?}:\n{log}"
        );
        daemon.stop_with("TERM").await;
    }
    assert_eq!(wait_upstream(&dev, "b", 5).await, 5);

    // In a graphical session the panel often starts after aw-qt's modules: the icon appears
    // when the tray host does ("on" says it is waiting for one).
    let mut c = daemon_command(home.path(), &aw, &write("on"), &bus);
    c.env("AW_SYNC_SAMAY_TOKEN", TOKEN)
        .env("WAYLAND_DISPLAY", "wayland-0");
    let mut daemon = Daemon::spawn(&mut c, &home.path().join("out-late"));
    daemon.wait_for("sync cycle done").await;
    daemon
        .wait_for("it shows when the desktop's tray host starts")
        .await;
    let host = TrayHost::start(&bus).await;
    let item = host.wait_for_item(0).await;
    daemon.wait_for("a tray host appeared").await;
    let labels = host
        .wait_for_menu(&item, "the synced state", |l| {
            status_of(l).starts_with("(Synced ")
        })
        .await;
    assert_eq!(
        labels[0], "(Samay Sync — Using the token from AW_SYNC_SAMAY_TOKEN)",
        "{labels:?}"
    );
    daemon.stop_with("TERM").await;
}
