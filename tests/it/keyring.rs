//! The token store against a real Secret Service (gnome-keyring on a private D-Bus session), a
//! missing one, and a locked one.
//!
//! keyring 4 opens its store once per process (a `LazyLock`) from the environment it finds, so
//! each case re-executes this test binary (`--exact <test>`) as a child with its own D-Bus
//! setup, and an env marker makes the child run the real body. Every child gets its own HOME and
//! XDG dirs, so the user's own keyring is never touched, even on a desktop with a session bus.
//! Linux only: macOS and Windows have other keyrings.
#![cfg(target_os = "linux")]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aw_sync_samay::auth::store::{StorageKind, StoreError, TokenStore};
use aw_sync_samay::auth::tokens::{Account, StoredTokens};
use aw_sync_samay::config::TokenStorage;
use chrono::Utc;

/// Set in a child to the name of the test whose body it must run.
const CHILD_ENV: &str = "AW_SYNC_SAMAY_KEYRING_CHILD";
/// The sandbox dir a child gets from its parent.
const SANDBOX_ENV: &str = "AW_SYNC_SAMAY_KEYRING_SANDBOX";

fn is_child(test: &str) -> bool {
    std::env::var(CHILD_ENV).as_deref() == Ok(test)
}

fn sandbox_from_env() -> PathBuf {
    PathBuf::from(std::env::var(SANDBOX_ENV).expect("the parent sets the sandbox"))
}

fn account() -> Account {
    Account {
        issuer: "https://idp.example.test".into(),
        client_id: "aw-sync-samay-test".into(),
    }
}

fn tokens(access: &str) -> StoredTokens {
    StoredTokens {
        access_token: access.into(),
        refresh_token: Some(format!("RT-for-{access}")),
        expires_at: Some(Utc::now()),
        scope: Some("openid offline_access".into()),
        id_token: Some("ID-TOKEN-SECRET".into()),
        subject: Some("alice".into()),
        username: Some("alice@example.test".into()),
        issuer: account().issuer,
        client_id: account().client_id,
        obtained_at: Utc::now(),
    }
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

/// The real peers are part of the test: a missing one is a failure, not a skip.
fn need_tools(tools: &[&str]) {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| which(t).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "missing {missing:?} for the real Secret Service tests: run scripts/install-peers.sh"
    );
}

/// A private HOME and XDG dirs for one child, so its keyring files and bus sockets are its own.
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        for sub in ["home", "data", "config", "cache", "runtime", "services"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("mkdir");
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(
                dir.path().join("runtime"),
                std::fs::Permissions::from_mode(0o700),
            )
            .expect("chmod runtime");
        }
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `cmd` with this sandbox's environment and nothing from the user's session.
    fn isolate(&self, cmd: &mut Command) {
        let p = self.path();
        cmd.env("HOME", p.join("home"))
            .env("XDG_DATA_HOME", p.join("data"))
            .env("XDG_CONFIG_HOME", p.join("config"))
            .env("XDG_CACHE_HOME", p.join("cache"))
            .env("XDG_RUNTIME_DIR", p.join("runtime"))
            .env(SANDBOX_ENV, p)
            .env_remove("DBUS_SESSION_BUS_ADDRESS")
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY")
            .env_remove("GNOME_KEYRING_CONTROL");
    }
}

/// Runs `command` (already isolated) to completion, killing its process group after `limit`, so
/// a hung keyring fails the test instead of hanging `cargo test`.
fn run_with_limit(mut command: Command, limit: Duration) -> Output {
    use std::os::unix::process::CommandExt as _;
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let child = command.spawn().expect("spawn child");
    let pgid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(output) => output.expect("child output"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pgid}")])
                .status();
            panic!("the child did not finish within {limit:?} (a keyring call hung?)");
        }
    }
}

/// Re-executes this test binary for `test` only, through `wrapper` (e.g. `dbus-run-session …
/// sh -c '…; exec "$0" "$@"'`), and asserts the child ran that one test and it passed.
fn run_child(
    test: &str,
    sandbox: &Sandbox,
    wrapper: &[&str],
    env: &[(&str, &str)],
    limit: Duration,
) -> Output {
    let exe = std::env::current_exe().expect("current_exe");
    let name = samay_testkit::harness_name(module_path!(), test);
    let mut command = match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(&exe);
            c
        }
        None => Command::new(&exe),
    };
    command
        .args([
            "--exact",
            &samay_testkit::harness_name(module_path!(), test),
        ])
        .args(["--nocapture", "--test-threads=1"]);
    sandbox.isolate(&mut command);
    command.env(CHILD_ENV, test);
    for (k, v) in env {
        command.env(k, v);
    }
    let output = run_with_limit(command, limit);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "child for {test} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains(&format!("test {name} ... ")) && stdout.contains("1 passed"),
        "the child did not run {test}:\n{stdout}\n{stderr}"
    );
    // Shown with --nocapture: the reasons and warnings the user would see.
    print!("{stdout}");
    output
}

/// The shell run inside `dbus-run-session`: `setup`, then the test binary (`$0 "$@"`).
fn in_session(setup: &str) -> String {
    format!("{setup}; exec \"$0\" \"$@\"")
}

/// The daemon's stderr goes to /dev/null too, as in the other daemon starts here: the daemon
/// may outlive the shell, and a pipe it still holds keeps `run_with_limit` waiting for the end
/// of the output (the seeding timed out once in CI, 30 s, not reproduced since).
const UNLOCKED_KEYRING: &str =
    "printf pw | gnome-keyring-daemon --unlock --components=secrets >/dev/null 2>&1";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// `secret-tool search --all service aw-sync-samay`: what the Secret Service itself holds for
/// this program, seen by another client.
fn secret_tool_search() -> String {
    let out = Command::new("secret-tool")
        .args(["search", "--all", "service", Account::SERVICE])
        .output()
        .expect("run secret-tool");
    // secret-tool prints attributes on stdout and the item paths on stderr.
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn no_tokens_file(data_dir: &Path) {
    let dir = data_dir.join("tokens");
    let files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    assert!(
        files.is_empty(),
        "keyring storage left files in {}: {files:?}",
        dir.display()
    );
}

#[test]
fn real_secret_service_round_trip() {
    const NAME: &str = "real_secret_service_round_trip";
    if is_child(NAME) {
        return real_secret_service_body();
    }
    need_tools(&["dbus-run-session", "gnome-keyring-daemon", "secret-tool"]);
    let sandbox = Sandbox::new();
    let script = in_session(UNLOCKED_KEYRING);
    run_child(
        NAME,
        &sandbox,
        &["dbus-run-session", "--", "sh", "-c", &script],
        &[],
        Duration::from_secs(60),
    );
}

fn real_secret_service_body() {
    assert!(
        std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some(),
        "the child runs inside dbus-run-session"
    );
    let data = sandbox_from_env().join("appdata");
    let key = account().key();
    runtime().block_on(async {
        let store = TokenStore::open(TokenStorage::Keyring, account(), &data)
            .await
            .expect("the unlocked gnome-keyring is usable");
        assert_eq!(store.kind(), StorageKind::Keyring);
        assert_eq!(store.describe(), "OS keyring (Secret Service)");
        assert_eq!(store.file_path(), None);
        assert!(store.load().await.expect("load").is_none());

        // Save: the secret is in the Secret Service, under our service and account.
        let first = tokens("AT-FIRST");
        store.save(&first).await.expect("save");
        assert_eq!(store.load().await.expect("load"), Some(first));
        let seen = secret_tool_search();
        assert!(seen.contains("attribute.service = aw-sync-samay"), "{seen}");
        assert!(
            seen.contains(&format!("attribute.username = {key}")),
            "{seen}"
        );
        assert!(seen.contains("AT-FIRST"), "{seen}");
        no_tokens_file(&data);

        // Overwrite replaces the one item; it does not add a second.
        let second = tokens("AT-SECOND");
        store.save(&second).await.expect("overwrite");
        assert_eq!(store.load().await.expect("load"), Some(second));
        let seen = secret_tool_search();
        assert!(
            seen.contains("AT-SECOND") && !seen.contains("AT-FIRST"),
            "{seen}"
        );
        assert_eq!(seen.matches("attribute.service = ").count(), 1, "{seen}");

        // Another store opened on the same keyring sees the same tokens (what a second process
        // or the next run gets).
        let again = TokenStore::open(TokenStorage::Auto, account(), &data)
            .await
            .expect("auto finds the keyring");
        assert_eq!(again.kind(), StorageKind::Keyring);
        assert_eq!(
            again.load().await.expect("load").map(|t| t.access_token),
            Some("AT-SECOND".to_string())
        );

        // Over the Windows-sized budget, the id_token is left out and the rest kept.
        let mut big = tokens(&"A".repeat(1500));
        big.id_token = Some("I".repeat(1500));
        store.save(&big).await.expect("save big");
        let back = store.load().await.expect("load").expect("stored");
        assert_eq!(back.id_token, None);
        assert_eq!(back.access_token, big.access_token);
        assert_eq!(back.refresh_token, big.refresh_token);

        // Delete: true, then false, and the Secret Service no longer has it.
        assert!(store.delete().await.expect("delete"));
        assert!(!store.delete().await.expect("delete again"));
        assert!(store.load().await.expect("load").is_none());
        let seen = secret_tool_search();
        assert!(!seen.contains("aw-sync-samay"), "{seen}");

        // A value we did not write (another tool, an older format) is Corrupt, not a panic,
        // and never quoted.
        let mut put = Command::new("secret-tool")
            .args(["store", "--label=junk", "service", Account::SERVICE])
            .args(["username", &key])
            .stdin(Stdio::piped())
            .spawn()
            .expect("secret-tool store");
        put.stdin
            .take()
            .expect("stdin")
            .write_all(b"JUNK-SECRET not json")
            .expect("write");
        assert!(put.wait().expect("wait").success());
        match store.load().await {
            Err(e @ StoreError::Corrupt { .. }) => {
                assert!(!e.to_string().contains("JUNK-SECRET"), "{e}")
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
        assert!(store.delete().await.expect("delete junk"));

        // A login during a keyring outage left newer tokens in the plain-text file: when the
        // keyring is back they replace its stale entry, and the file goes.
        let mut stale = tokens("AT-STALE");
        stale.obtained_at = Utc::now() - chrono::Duration::hours(1);
        store.save(&stale).await.expect("save stale");
        let file = TokenStore::open(TokenStorage::File, account(), &data)
            .await
            .expect("file store");
        file.save(&tokens("AT-FROM-FILE")).await.expect("save file");
        let moved = TokenStore::open(TokenStorage::Keyring, account(), &data)
            .await
            .expect("keyring store");
        assert_eq!(
            moved.load().await.expect("load").map(|t| t.access_token),
            Some("AT-FROM-FILE".to_string())
        );
        no_tokens_file(&data);
        let seen = secret_tool_search();
        assert!(
            seen.contains("AT-FROM-FILE") && !seen.contains("AT-STALE"),
            "{seen}"
        );

        // An older file next to newer keyring tokens is only removed.
        let mut old = tokens("AT-OLD-FILE");
        old.obtained_at = Utc::now() - chrono::Duration::hours(2);
        file.save(&old).await.expect("save old file");
        let kept = TokenStore::open(TokenStorage::Auto, account(), &data)
            .await
            .expect("auto store");
        assert_eq!(kept.kind(), StorageKind::Keyring);
        assert_eq!(
            kept.load().await.expect("load").map(|t| t.access_token),
            Some("AT-FROM-FILE".to_string())
        );
        no_tokens_file(&data);
        assert!(kept.delete().await.expect("delete"));
        assert!(!secret_tool_search().contains("aw-sync-samay"));
    });
}

/// A `tracing` writer into a shared buffer, to check what the store logs.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl LogBuffer {
    fn install(&self) {
        let subscriber = tracing_subscriber::fmt()
            .with_writer(self.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber per child");
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log lock")).into_owned()
    }
}

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Checks the fallback of `auto`: a file store, a loud warning naming the file and `reason`,
/// and working 0600 storage without a secret in the log.
async fn assert_auto_falls_back(data: &Path, logs: &LogBuffer, timeout: Duration) {
    let store = TokenStore::open_with_timeout(TokenStorage::Auto, account(), data, timeout)
        .await
        .expect("auto falls back to the file");
    assert_eq!(store.kind(), StorageKind::File);
    let path = store.file_path().expect("file path").to_owned();
    let text = logs.text();
    let warning = text
        .lines()
        .find(|l| l.contains("tokens stored in plain text at"))
        .unwrap_or_else(|| panic!("no plain-text warning in:\n{text}"));
    // Only for --verbose: the user is told in one line by `describe` (login, --status).
    assert!(warning.contains("DEBUG"), "{warning}");
    assert!(
        !text
            .lines()
            .any(|l| l.contains("WARN") && l.contains("keyring")),
        "no warning before every command's output:\n{text}"
    );
    assert!(warning.contains(&path.display().to_string()), "{warning}");
    assert!(warning.contains("no OS keyring available"), "{warning}");
    assert!(
        warning.contains("set auth.token_storage = \"keyring\" to refuse this"),
        "{warning}"
    );
    println!("auto fallback warning: {warning}");

    store.save(&tokens("AT-PLAIN")).await.expect("save");
    assert_eq!(
        store.load().await.expect("load").map(|t| t.access_token),
        Some("AT-PLAIN".to_string())
    );
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    assert!(store.describe().contains("plain text, mode 0600"));
    assert!(store.describe().contains("no OS keyring answered"));
    assert!(store.fallback_reason().is_some());
    let text = logs.text();
    assert!(
        !text.contains("AT-PLAIN") && !text.contains("ID-TOKEN-SECRET"),
        "{text}"
    );
}

#[test]
fn no_secret_service_keyring_is_unavailable_and_auto_falls_back() {
    const NAME: &str = "no_secret_service_keyring_is_unavailable_and_auto_falls_back";
    if is_child(NAME) {
        return no_secret_service_body();
    }
    let sandbox = Sandbox::new();
    run_child(
        NAME,
        &sandbox,
        &[],
        &[("DBUS_SESSION_BUS_ADDRESS", "unix:path=/nonexistent/bus")],
        Duration::from_secs(30),
    );
}

fn no_secret_service_body() {
    let logs = LogBuffer::default();
    logs.install();
    let data = sandbox_from_env().join("appdata");
    runtime().block_on(async {
        let timeout = Duration::from_secs(5);
        let start = Instant::now();
        let err = TokenStore::open_with_timeout(TokenStorage::Keyring, account(), &data, timeout)
            .await
            .expect_err("no Secret Service: keyring refused");
        let elapsed = start.elapsed();
        let reason = match &err {
            StoreError::Unavailable { reason } => reason.clone(),
            other => panic!("expected Unavailable, got {other:?}"),
        };
        println!("no-keyring reason ({elapsed:?}): {reason}");
        assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
        // The real cause, not keyring 4's bare "no default store".
        assert!(reason.contains("no keyring could be opened"), "{reason}");
        assert!(reason.contains("/nonexistent/bus"), "{reason}");
        assert!(reason.contains("token_storage = \"file\""), "{reason}");
        no_tokens_file(&data);

        assert_auto_falls_back(&data, &logs, timeout).await;
    });
}

/// A fake gcr prompter: D-Bus activates it for the unlock prompt, and it never takes its bus
/// name, like a prompt nobody can see or answer. It exits by itself so nothing lingers.
const HUNG_PROMPTER: &str = "[D-BUS Service]\nName=org.gnome.keyring.SystemPrompter\n\
                             Exec=/bin/sh -c 'exec sleep 8 </dev/null >/dev/null 2>&1'\n";

/// A session bus whose own service dir comes first, so the fake prompter wins over gcr's.
fn bus_config(sandbox: &Sandbox) -> PathBuf {
    let services = sandbox.path().join("services");
    std::fs::write(
        services.join("org.gnome.keyring.SystemPrompter.service"),
        HUNG_PROMPTER,
    )
    .expect("write service file");
    let config = format!(
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <keep_umask/>
  <listen>unix:tmpdir={runtime}</listen>
  <auth>EXTERNAL</auth>
  <servicedir>{services}</servicedir>
  <standard_session_servicedirs/>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
        runtime = sandbox.path().join("runtime").display(),
        services = services.display(),
    );
    let path = sandbox.path().join("session.conf");
    std::fs::write(&path, config).expect("write bus config");
    path
}

/// Creates the sandbox's login keyring (password "pw") holding this account's entry, then
/// leaves it: the next session starts with that collection locked.
fn seed_locked_keyring(sandbox: &Sandbox) {
    let key = account().key();
    let mut seed = Command::new("dbus-run-session");
    seed.args(["--", "sh", "-c"])
        .arg(format!(
            "{UNLOCKED_KEYRING}; printf '{{}}' | secret-tool store --label=seed service \
             {service} username \"$0\"",
            service = Account::SERVICE
        ))
        .arg(&key);
    sandbox.isolate(&mut seed);
    let out = run_with_limit(seed, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "seeding the keyring failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        sandbox.path().join("data/keyrings/login.keyring").is_file(),
        "no login keyring was written"
    );
}

#[test]
fn locked_secret_service_with_a_hung_prompt_times_out() {
    const NAME: &str = "locked_secret_service_with_a_hung_prompt_times_out";
    if is_child(NAME) {
        return hung_prompt_body();
    }
    need_tools(&["dbus-run-session", "gnome-keyring-daemon", "secret-tool"]);
    let sandbox = Sandbox::new();
    seed_locked_keyring(&sandbox);
    let config = bus_config(&sandbox);
    let config_arg = format!("--config-file={}", config.display());
    // Started without --unlock: the login collection stays locked.
    let script =
        in_session("gnome-keyring-daemon --start --components=secrets </dev/null >/dev/null 2>&1");
    run_child(
        NAME,
        &sandbox,
        &["dbus-run-session", &config_arg, "--", "sh", "-c", &script],
        &[],
        Duration::from_secs(60),
    );
}

fn hung_prompt_body() {
    let logs = LogBuffer::default();
    logs.install();
    let data = sandbox_from_env().join("appdata");
    runtime().block_on(async {
        let timeout = Duration::from_millis(1000);
        let start = Instant::now();
        let err = TokenStore::open_with_timeout(TokenStorage::Keyring, account(), &data, timeout)
            .await
            .expect_err("a locked keyring waiting on a prompt is refused");
        let elapsed = start.elapsed();
        let reason = match &err {
            StoreError::Unavailable { reason } => reason.clone(),
            other => panic!("expected Unavailable, got {other:?}"),
        };
        println!("hung-prompt reason ({elapsed:?}): {reason}");
        assert!(
            elapsed >= timeout && elapsed < timeout + Duration::from_secs(1),
            "took {elapsed:?}"
        );
        assert!(reason.contains("did not answer within 1.0 s"), "{reason}");
        assert!(reason.contains("unlock"), "{reason}");
        assert!(reason.contains("token_storage = \"file\""), "{reason}");

        // The stuck call is still blocked: `auto` falls back at once instead of waiting again.
        let start = Instant::now();
        assert_auto_falls_back(&data, &logs, timeout).await;
        assert!(start.elapsed() < timeout, "took {:?}", start.elapsed());
        assert!(
            logs.text().contains("has not returned yet"),
            "{}",
            logs.text()
        );
    });
}

#[test]
fn locked_secret_service_without_a_prompter_is_refused() {
    const NAME: &str = "locked_secret_service_without_a_prompter_is_refused";
    if is_child(NAME) {
        return no_prompter_body();
    }
    need_tools(&["dbus-run-session", "gnome-keyring-daemon", "secret-tool"]);
    let sandbox = Sandbox::new();
    seed_locked_keyring(&sandbox);
    // No display: gcr's prompter exits at once, so the unlock prompt fails (a headless box).
    let script =
        in_session("gnome-keyring-daemon --start --components=secrets </dev/null >/dev/null 2>&1");
    run_child(
        NAME,
        &sandbox,
        &["dbus-run-session", "--", "sh", "-c", &script],
        &[],
        Duration::from_secs(60),
    );
}

fn no_prompter_body() {
    let data = sandbox_from_env().join("appdata");
    runtime().block_on(async {
        let timeout = Duration::from_secs(5);
        let start = Instant::now();
        let err = TokenStore::open_with_timeout(TokenStorage::Keyring, account(), &data, timeout)
            .await
            .expect_err("a locked keyring that cannot prompt is refused");
        let elapsed = start.elapsed();
        let reason = match &err {
            StoreError::Unavailable { reason } => reason.clone(),
            other => panic!("expected Unavailable, got {other:?}"),
        };
        println!("locked reason ({elapsed:?}): {reason}");
        assert!(elapsed < timeout, "took {elapsed:?}");
        assert!(reason.contains("unlock"), "{reason}");
        assert!(reason.contains("token_storage = \"file\""), "{reason}");
    });
}
