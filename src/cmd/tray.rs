//! The daemon's side of the tray menu ([`aw_sync_samay::tray`]): runs what a click asks for —
//! the login of `--login`, the logout of `--logout`, the control channel's "sync now", pausing
//! (kept in the state database) — and keeps the menu's snapshot up to date around each cycle.
//! Pausing is the daemon's whether an icon is shown or not: a pause made before `ui.tray` was
//! turned off still holds, and `--status` says so.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aw_sync_samay::auth::oauth::{self, OAuthSession};
use aw_sync_samay::auth::StaticToken;
use aw_sync_samay::config::AuthConfig;
use aw_sync_samay::control::server::Hub;
use aw_sync_samay::engine::{BucketCount, CycleError, CycleReport, Metrics, Outcome};
use aw_sync_samay::state::Store;
use aw_sync_samay::tray::{self, Action, Activity, Feed, Login};

use super::login::browser_login;
use super::tokens::open_token_store;

/// How often a running cycle's counts reach the status line (while an icon shows them).
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// What the clicks act on, for one config load.
pub struct Actions {
    pub feed: Arc<Feed>,
    pub auth: AuthConfig,
    pub session: Option<Arc<OAuthSession>>,
    pub hub: Option<Arc<Hub>>,
    pub store: Arc<Store>,
    pub config_path: PathBuf,
}

/// Who the daemon syncs as, for the header: the stored login, a fixed token, or nobody.
pub async fn login_state(session: Option<&OAuthSession>, dev: bool) -> Login {
    if dev {
        return Login::Token("--dev".into());
    }
    if StaticToken::from_env().is_some() {
        return Login::Token(aw_sync_samay::auth::TOKEN_ENV.into());
    }
    match session {
        None => Login::NotConfigured,
        Some(s) => match s.store().load().await {
            Ok(Some(t)) => Login::LoggedIn(oauth::display_name(&t)),
            // A locked keyring reads as logged out: the menu offers the login that unlocks it.
            Ok(None) | Err(_) => Login::LoggedOut,
        },
    }
}

/// Sets the snapshot's pause from the state database (a pause outlives a restart).
pub async fn load_pause(feed: &Feed, store: &Arc<Store>) {
    let store = Arc::clone(store);
    let read = tokio::task::spawn_blocking(move || store.paused_since())
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    let paused = match read {
        Ok(since) => since.is_some(),
        Err(e) => {
            tracing::warn!("could not read whether syncing is paused ({e}); syncing");
            false
        }
    };
    feed.update(|s| s.paused = paused);
}

/// Runs the clicks until the config load ends (the caller drops this future then).
pub async fn serve(actions: Actions) {
    let mut inbox = actions.feed.inbox().await;
    while let Some(action) = inbox.recv().await {
        tracing::info!(?action, "tray menu clicked");
        match action {
            Action::LogIn => log_in(&actions),
            Action::LogOut => log_out(&actions).await,
            Action::SyncNow => sync_now(actions.hub.as_deref()),
            Action::Pause => set_paused(&actions, true).await,
            Action::Resume => set_paused(&actions, false).await,
            Action::OpenLogFolder => match aw_sync_samay::paths::log_dir() {
                Ok(dir) => open(&dir),
                Err(e) => tracing::warn!("no log folder to open: {e}"),
            },
            Action::OpenConfigFile => open(&actions.config_path),
        }
    }
}

/// "Sync now": the control channel's request, without a connection.
fn sync_now(hub: Option<&Hub>) {
    match hub.map(Hub::request_sync) {
        Some(Ok(())) => {}
        Some(Err(why)) => tracing::warn!(
            "cannot sync now: {}",
            why.error.as_deref().unwrap_or("the daemon idles")
        ),
        None => tracing::warn!("cannot sync now: this daemon has no control channel"),
    }
}

/// "Log in…": the browser login in the background (it waits for the user up to
/// `auth.login_timeout`); when it succeeds, a sync starts at once.
fn log_in(a: &Actions) {
    if a.feed.get().logging_in {
        return;
    }
    a.feed.update(|s| s.logging_in = true);
    let (feed, auth, session, hub) = (
        Arc::clone(&a.feed),
        a.auth.clone(),
        a.session.clone(),
        a.hub.clone(),
    );
    tokio::spawn(async move {
        let result = browser_login(&auth).await;
        match &result {
            Ok(t) => {
                let name = oauth::display_name(t);
                tracing::info!("Logged in as {name}");
                if let Some(s) = &session {
                    s.forget().await;
                }
                feed.update(|s| {
                    s.login = Login::LoggedIn(name);
                    s.logging_in = false;
                });
                sync_now(hub.as_deref());
            }
            Err(e) => {
                tracing::warn!("the login did not complete: {e:#}");
                feed.update(|s| s.logging_in = false);
            }
        }
    });
}

/// "Log out": `--logout` — revoke at the provider, delete the stored tokens, and stop using the
/// ones in memory.
async fn log_out(a: &Actions) {
    let result = async {
        let store = open_token_store(&a.auth).await?;
        anyhow::Ok(oauth::logout(&a.auth, &store).await?)
    }
    .await;
    if let Some(s) = &a.session {
        s.forget().await;
    }
    match result {
        Ok(report) => {
            let revoked = match &report.revoked {
                Some(Ok(())) => "revoked at the provider".to_string(),
                Some(Err(why)) => format!("not revoked ({why}; it ends when its tokens expire)"),
                None => "not revoked (the provider has no revocation endpoint)".to_string(),
            };
            tracing::info!(
                deleted = report.deleted,
                "logged out from the tray menu: session {revoked}"
            );
            a.feed.update(|s| {
                s.login = Login::LoggedOut;
                s.activity = Activity::LoginRequired;
            });
        }
        Err(e) => tracing::warn!("the logout failed: {e:#}"),
    }
}

async fn set_paused(a: &Actions, paused: bool) {
    let store = Arc::clone(&a.store);
    let saved = tokio::task::spawn_blocking(move || store.set_paused(paused))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    match saved {
        Ok(()) => {
            tracing::info!(
                "{}",
                if paused {
                    "syncing paused from the tray menu"
                } else {
                    "syncing resumed from the tray menu"
                }
            );
            a.feed.update(|s| s.paused = paused);
            if !paused {
                // Resuming catches up at once rather than an interval later.
                sync_now(a.hub.as_deref());
            }
        }
        Err(e) => tracing::warn!("could not record the pause: {e}"),
    }
}

/// Opens a folder or file with the desktop's handler, without waiting for it.
fn open(path: &Path) {
    let program = if cfg!(target_os = "macos") {
        "open"
    } else if cfg!(windows) {
        "explorer"
    } else {
        "xdg-open"
    };
    match tokio::process::Command::new(program)
        .arg(path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        // Reaped in the background: a handler that stays open never holds the daemon up.
        Ok(mut child) => {
            tokio::spawn(async move {
                let _ = child.wait().await;
            });
        }
        Err(e) => tracing::warn!("could not open {} with {program}: {e}", path.display()),
    }
}

/// Runs `cycle`, showing its counts in the status line while an icon is shown, then what it
/// ended with.
pub async fn cycle_shown<F>(
    feed: &Feed,
    metrics: &Metrics,
    store: &Arc<Store>,
    cycle: F,
) -> F::Output
where
    F: Future<Output = (Outcome, Result<CycleReport, CycleError>)>,
{
    feed.update(|s| {
        s.activity = Activity::Syncing {
            delivered: 0,
            found: 0,
        }
    });
    let out = if feed.is_shown() {
        let baseline = metrics.per_bucket();
        let mut tick = tokio::time::interval(PROGRESS_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        tokio::pin!(cycle);
        loop {
            tokio::select! {
                out = &mut cycle => break out,
                _ = tick.tick() => {
                    let now = BucketCount::since(&metrics.per_bucket(), &baseline);
                    let (found, delivered) = now
                        .iter()
                        .fold((0, 0), |(f, d), c| (f + c.new, d + c.delivered));
                    feed.update(|s| s.activity = Activity::Syncing { delivered, found });
                }
            }
        }
    } else {
        cycle.await
    };
    let activity = match &out.1 {
        Ok(_) => {
            let store = Arc::clone(store);
            let quarantined = tokio::task::spawn_blocking(move || store.quarantined_total())
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(0);
            Activity::Synced {
                at: chrono::Utc::now(),
                quarantined,
            }
        }
        Err(e) if e.needs_login() => Activity::LoginRequired,
        // The time of the next try comes with the wait ([`retry_at`]).
        Err(e) => Activity::Failed {
            failure: tray::failure_of(e),
            retry_at: chrono::Utc::now(),
        },
    };
    feed.update(|s| s.activity = activity);
    out
}
