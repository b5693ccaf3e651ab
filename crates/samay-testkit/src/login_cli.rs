//! The `aw-sync-samay` binary's login commands against a real OpenID provider (oidc-provider),
//! in an isolated home, with no aw-server or upstream: for the login's own behaviour (device
//! flow, refusals found before the browser opens, logout, keyring fallback, `--callback`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use aw_sync_samay::auth::oauth::configured_account;
use aw_sync_samay::auth::store::TokenStore;
use aw_sync_samay::auth::tokens::StoredTokens;
use aw_sync_samay::config::{AuthConfig, TokenStorage};

use crate::bin::isolated_command;
use crate::oidc::{OidcOptions, OidcProvider, PlayUser};

/// How long a test waits for a line the binary must print before it gives up.
pub const LINE_WAIT: Duration = Duration::from_secs(30);

pub struct LoginCli {
    pub oidc: OidcProvider,
    pub home: tempfile::TempDir,
    pub config: PathBuf,
    /// Set on every command, after the defaults of [`LoginCli::cmd`].
    pub env: Vec<(String, String)>,
}

impl LoginCli {
    /// A provider and a config naming it by its issuer (`[auth]` gets `extra_auth` too), tokens
    /// in a file so the test can read them.
    pub async fn start(extra_auth: &str) -> LoginCli {
        let oidc = tokio::task::spawn_blocking(|| OidcProvider::start_with(OidcOptions::default()))
            .await
            .expect("start oidc-provider");
        let auth = format!("issuer = \"{}\"\n{extra_auth}", oidc.issuer());
        LoginCli::with_auth(oidc, &auth)
    }

    /// A provider configured by its authorization and token endpoints only (no issuer, so no
    /// discovery: no device, userinfo or revocation endpoint); `endpoints` is that `[auth]` text.
    pub async fn endpoints_only() -> (LoginCli, String) {
        let oidc = tokio::task::spawn_blocking(|| OidcProvider::start_with(OidcOptions::default()))
            .await
            .expect("start oidc-provider");
        let endpoints = format!(
            "auth_url = \"{}\"\ntoken_url = \"{}\"\n",
            oidc.authorization_endpoint(),
            oidc.token_endpoint()
        );
        (LoginCli::with_auth(oidc, &endpoints), endpoints)
    }

    /// A config whose `[auth]` is `client_id` (the provider's) plus `auth`, verbatim.
    pub fn with_auth(oidc: OidcProvider, auth: &str) -> LoginCli {
        let home = tempfile::tempdir().expect("temp home");
        let config = home.path().join("aw-sync-samay.toml");
        let mut cli = LoginCli {
            oidc,
            home,
            config,
            env: Vec::new(),
        };
        cli.write_auth(auth);
        cli
    }

    /// Rewrites the config's `[auth]` (client id from the provider unless `auth` sets one).
    pub fn write_auth(&mut self, auth: &str) {
        let client = if auth.contains("client_id") {
            String::new()
        } else {
            format!("client_id = \"{}\"\n", self.oidc.client_id())
        };
        let storage = if auth.contains("token_storage") {
            ""
        } else {
            "token_storage = \"file\"\n"
        };
        std::fs::write(
            &self.config,
            format!("[auth]\n{client}{storage}login_timeout = 30\n{auth}\n"),
        )
        .expect("write config");
    }

    /// The binary with this home and config, a browser-less SSH session's environment (so
    /// nothing opens a real browser) unless the test sets `BROWSER`.
    pub fn cmd(&self) -> Command {
        let mut c = isolated_command(self.home.path());
        c.arg("--config")
            .arg(&self.config)
            .env_remove("BROWSER")
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY")
            .env("SSH_CONNECTION", "10.0.0.1 50000 10.0.0.2 22")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    /// Runs the binary to its end with `args`, the scripted user as `$BROWSER` when given.
    pub async fn run(&self, args: &[&str], user: Option<&PlayUser>) -> Output {
        let mut c = self.cmd();
        c.args(args).stdin(Stdio::null());
        if let Some(u) = user {
            u.apply(&mut c);
        }
        tokio::task::spawn_blocking(move || c.output().expect("run aw-sync-samay"))
            .await
            .expect("join")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.home.path().join("data/activitywatch/aw-sync-samay")
    }

    /// The file store of the configured provider (by its issuer), as the daemon opens it.
    pub async fn store(&self) -> TokenStore {
        let auth = AuthConfig {
            client_id: self.oidc.client_id(),
            issuer: self.oidc.issuer(),
            ..Default::default()
        };
        TokenStore::open(
            TokenStorage::File,
            configured_account(&auth),
            &self.data_dir(),
        )
        .await
        .expect("token store")
    }

    /// The tokens in [`LoginCli::store`].
    pub async fn stored(&self) -> Option<StoredTokens> {
        self.store().await.load().await.expect("load tokens")
    }

    /// The tokens file of [`LoginCli::store`], as messages show it.
    pub async fn stored_path(&self) -> String {
        let store = self.store().await;
        let path = store.file_path().expect("a file store");
        path.display().to_string()
    }
}

/// Status, stdout and stderr, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// What the device sign-in showed: the verification address and the user code.
#[derive(Debug, Clone)]
pub struct DeviceCode {
    pub verification_uri: String,
    pub user_code: String,
}

/// Reads a child's stderr on a thread: hands over the device prompt as soon as it is printed,
/// and everything read once the child closed stderr.
pub struct StderrReader {
    prompt: mpsc::Receiver<DeviceCode>,
    all: JoinHandle<String>,
}

impl StderrReader {
    pub fn start(stderr: ChildStderr) -> StderrReader {
        let (tx, prompt) = mpsc::channel();
        let all = std::thread::spawn(move || {
            let mut all = String::new();
            let mut uri = None;
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let trimmed = line.trim();
                if uri.is_none() && trimmed.starts_with("http") && !trimmed.contains("user_code") {
                    uri = Some(trimmed.to_string());
                }
                if let (false, Some(code), Some(u)) = (
                    sent,
                    trimmed.strip_prefix("and enter the code"),
                    uri.as_ref(),
                ) {
                    let _ = tx.send(DeviceCode {
                        verification_uri: u.clone(),
                        user_code: code.trim().to_string(),
                    });
                    sent = true;
                }
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        StderrReader { prompt, all }
    }

    /// The device prompt, once printed (`None` when the child ended or took too long).
    pub fn device_code(&self) -> Option<DeviceCode> {
        self.prompt.recv_timeout(LINE_WAIT).ok()
    }

    /// Everything the child wrote to stderr (waits for it to close stderr).
    pub fn finish(self) -> String {
        self.all.join().unwrap_or_default()
    }
}

/// Spawns `cmd` with stderr and stdout piped, stdin null.
pub fn spawn_piped(cmd: &mut Command) -> (Child, StderrReader) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn aw-sync-samay");
    let reader = StderrReader::start(child.stderr.take().expect("stderr"));
    (child, reader)
}

/// Runs `cmd` (a device sign-in) to its end, `user` acting on the printed prompt at "another
/// device": the output, everything it wrote to stderr, and the prompt it showed.
pub async fn device_sign_in(cmd: &mut Command, user: PlayUser) -> (Output, String, DeviceCode) {
    let (child, stderr) = spawn_piped(cmd);
    let code = stderr.device_code().expect("the device prompt is printed");
    let user = PlayUser {
        user_code: Some(code.user_code.clone()),
        deliver: false,
        ..user
    };
    let url = code.verification_uri.clone();
    let outcome = tokio::task::spawn_blocking(move || user.run(&url))
        .await
        .expect("play-user task");
    assert!(
        outcome.success,
        "the scripted user failed:\n{}",
        outcome.log
    );
    let out = wait(child).await;
    (out, stderr.finish(), code)
}

/// The first non-empty contents of `path` (a file the scripted user writes), waiting for it.
pub async fn wait_for_file(path: &Path) -> Option<String> {
    for _ in 0..600 {
        if let Some(text) = std::fs::read_to_string(path)
            .ok()
            .filter(|s| !s.trim().is_empty())
        {
            return Some(text.trim().to_string());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Waits for the child off the async runtime.
pub async fn wait(child: Child) -> Output {
    tokio::task::spawn_blocking(move || child.wait_with_output().expect("wait"))
        .await
        .expect("join")
}

/// Whether `tool` is on PATH.
pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `sh -c script` in a private D-Bus session, with the isolated environment of `home`.
pub fn in_dbus_session(home: &Path, script: &str) -> Command {
    let mut c = Command::new("dbus-run-session");
    for (k, v) in isolated_command(home).get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c.env_remove("DBUS_SESSION_BUS_ADDRESS")
        .env_remove("BROWSER")
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .arg("--")
        .arg("sh")
        .arg("-c")
        .arg(script);
    c
}
