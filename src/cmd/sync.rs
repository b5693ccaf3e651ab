//! `--once` and the daemon: take the instance lock (or hand a `--once` to the running daemon),
//! wire the engine to the configured upstream (or `--dev`'s), and sync once or on a schedule.
//! With nothing to sync to, the daemon idles instead of exiting (aw-qt counts an exit as a
//! crash).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use aw_sync_samay::auth::TokenSource;
use aw_sync_samay::config::Config;
use aw_sync_samay::control::server::DaemonControl;
use aw_sync_samay::control::{self, Activity};
use aw_sync_samay::engine::{
    run_daemon_woken, status_bucket, Destination, Engine, Outcome, Settings,
};
use aw_sync_samay::lifecycle::{self, Lifecycle};
use aw_sync_samay::lock::{InstanceLock, LockError};
use aw_sync_samay::source::AwClient;
use aw_sync_samay::state::Store;
use aw_sync_samay::tray::{self, Tray};
use aw_sync_samay::upstream::UpstreamClient;
use aw_sync_samay::{hint, once, paths};

use super::{dev, login, tokens, tray as tray_cmd, Loaded};

pub async fn run(
    cx: Loaded<'_>,
    life: &Lifecycle,
    daemon: Option<&DaemonControl>,
    tray: Option<&Tray>,
) -> anyhow::Result<ExitCode> {
    let Loaded {
        args,
        config,
        config_path,
        source,
        state_path,
    } = cx;
    let port = args.resolved_port();
    let lock_path = paths::lock_file(&args.host, port)?;
    let socket = control::socket_path(&args.host, port)?;
    let _lock = match InstanceLock::acquire(&lock_path) {
        Ok(lock) => lock,
        // The daemon (or another --once) syncs this aw-server: ask it to sync now.
        Err(LockError::AlreadyRunning { pid, .. }) if args.once => {
            let expect = once::Expect {
                config: &config_path,
                dev: args.dev,
                asks: control::Asks {
                    verify: args.verify,
                    resync: args.resync,
                },
            };
            let code = once::through_daemon(&socket, pid, expect, &source, &state_path).await;
            return Ok(ExitCode::from(code));
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(d) = daemon {
        d.listen(&socket);
    }

    let store = Arc::new(Store::open(&state_path).context("opening the sync state")?);
    let mut dev = None;
    let mut session = None;
    let (base_url, tokens): (String, Arc<dyn TokenSource>) = if args.dev {
        let (server, session) = dev::start(&config.auth).await?;
        let url = server.base_url();
        let lifetime = if args.once {
            "runs until this sync ends"
        } else {
            "runs while this daemon does"
        };
        eprintln!(
            "dev upstream: {url} ({lifetime}; browse it there; stored in {})",
            dev::db_path()?.display()
        );
        dev = Some(server);
        (url, session)
    } else {
        let tokens = tokens::token_source(&config).await?;
        if let Some(session) = &tokens.1 {
            login::on_start(&config, session, args.once || life.reloaded()).await;
        }
        session = tokens.1;
        (config.sync.base_url.clone(), tokens.0)
    };

    // The tray's menu: who is logged in, whether syncing is paused, and the clicks.
    let feed = tray.map(|t| Arc::clone(&t.feed));
    let actions = match (tray, &feed) {
        (Some(t), Some(feed)) => {
            let login = tray_cmd::login_state(session.as_deref(), args.dev).await;
            feed.update(|s| s.login = login);
            tray_cmd::load_pause(feed, &store).await;
            t.apply(config.ui.tray).await;
            Some(tray_cmd::Actions {
                feed: Arc::clone(feed),
                auth: config.auth.clone(),
                session: session.clone(),
                hub: daemon.map(|d| Arc::clone(&d.hub)),
                store: Arc::clone(&store),
                config_path: config_path.clone(),
            })
        }
        _ => None,
    };
    let clicks = serve_clicks(actions);
    tokio::pin!(clicks);

    // Nothing to sync to: the daemon idles (and its menu still logs in and out).
    let idle_reason = if !config.sync.enabled && !args.dev {
        let fix = format!(
            "sync is disabled: set sync.enabled = true in {} to sync",
            config_path.display()
        );
        if args.once {
            bail!("{fix}");
        }
        tracing::warn!(config = %config_path.display(), "sync is disabled in the config; idling until stopped or the config changes");
        Some(("sync.enabled = false", fix))
    } else if base_url.is_empty() {
        let fix = format!(
            "no upstream configured: set sync.base_url in {} (or try {})",
            config_path.display(),
            hint::command("--dev --once")
        );
        if args.once {
            bail!("{fix}");
        }
        tracing::warn!(config = %config_path.display(), "no upstream configured (sync.base_url is empty); idling until stopped or the config changes");
        Some(("sync.base_url is empty", fix))
    } else {
        None
    };
    if let Some((why, fix)) = idle_reason {
        if let Some(f) = &feed {
            f.update(|s| s.activity = tray::Activity::NotConfigured(why.into()));
        }
        tokio::select! {
            _ = idle(&source, &config, why, fix, life, daemon) => {}
            _ = &mut clicks => {}
        }
        return Ok(ExitCode::SUCCESS);
    }

    let upstream = Arc::new(UpstreamClient::new(
        &base_url,
        Duration::from_secs(config.sync.request_timeout),
        config.sync.gzip.applies_to(&base_url),
    )?);
    let destination = Destination::upstream(&base_url);
    if args.resync {
        destination.ask_resync();
    }
    let mut settings = Settings::from_config(&config.sync);
    settings.verify_all = args.verify;
    let engine = Engine {
        source,
        upstream: Arc::clone(&upstream) as _,
        tokens,
        store,
        settings,
        hostname: gethostname::gethostname().to_string_lossy().into_owned(),
        metrics: Default::default(),
        destination,
        clock: Arc::new(aw_sync_samay::clock::SystemClock),
    };

    let code = if args.once {
        ExitCode::from(once::local(&engine, &upstream).await)
    } else {
        tracing::info!(aw_server = %engine.source.base_url(), upstream = %base_url, "aw-sync-samay started");
        let hub = daemon.map(|d| d.hub.as_ref());
        if let Some(hub) = hub {
            hub.set_active(Arc::clone(&engine.metrics));
        }
        let feed = feed.as_deref();
        // --dev's upstream does not come from the config: nothing to reload for.
        let daemon_loop = run_daemon_woken(
            engine.settings.interval,
            || async {
                if let Some(f) = feed {
                    f.until_unpaused(hub).await;
                }
                // The sync requests waiting now are served by this cycle.
                let cycle = once::daemon_cycle(&engine, &upstream, hub);
                let (outcome, _) = match feed {
                    Some(f) => {
                        tray_cmd::cycle_shown(f, &engine.metrics, &engine.store, cycle).await
                    }
                    None => cycle.await,
                };
                if let (Some(f), Outcome::LoginRequired) = (feed.filter(|f| f.is_shown()), outcome)
                {
                    // The provider may have ended the session: the header follows.
                    let login = tray_cmd::login_state(session.as_deref(), args.dev).await;
                    f.update(|s| s.login = login);
                }
                // Going idle until the next cycle: nothing the cycle leaves behind may wake
                // the process before then (issue 5).
                upstream.release_connections();
                engine.source.release_pages();
                aw_sync_samay::memory::give_back_free_memory();
                lifecycle::rearm_timers().await;
                outcome
            },
            life.shutdown(!args.dev),
            || async {
                match hub {
                    Some(h) => h.requested().await,
                    None => std::future::pending().await,
                }
            },
            |delay| {
                if let Some(f) = feed {
                    f.next_try_in(delay);
                }
            },
        );
        tokio::select! {
            _ = daemon_loop => {}
            _ = &mut clicks => {}
        }
        tracing::info!(
            "{}",
            if life.is_stopping() {
                "stopped"
            } else {
                "restarting with the new config"
            }
        );
        ExitCode::SUCCESS
    };
    if let Some(server) = dev {
        server.shutdown().await;
        if args.once {
            eprintln!(
                "dev upstream: stopped with this command; browse what it stored with: samay-dev-server --db {} (then http://127.0.0.1:{}/)",
                dev::db_path()?.display(),
                dev::DEV_PORT
            );
        }
    }
    Ok(code)
}

/// Runs the tray's clicks for this config load; never ends (nothing to run without a tray).
async fn serve_clicks(actions: Option<tray_cmd::Actions>) {
    if let Some(a) = actions {
        tray_cmd::serve(a).await;
    }
    std::future::pending::<()>().await
}

/// The daemon with nothing to do (`why`; `fix` says what to do): records "not configured" in
/// the status bucket every interval until stopped or the config file changes, and answers sync
/// requests with `fix`. Never exits by itself: aw-qt would count that as a crash.
async fn idle(
    source: &AwClient,
    config: &Config,
    why: &str,
    fix: String,
    life: &Lifecycle,
    daemon: Option<&DaemonControl>,
) {
    if let Some(d) = daemon {
        d.hub.set_idle(
            Activity::NotConfigured,
            why.to_string(),
            once::not_configured(fix),
        );
    }
    let hostname = gethostname::gethostname().to_string_lossy().into_owned();
    let interval = Settings::from_config(&config.sync).interval;
    status_bucket::not_configured_until(source, &hostname, interval, why, life.shutdown(true))
        .await;
}
