//! The `aw-sync-samay` binary: parse flags, load the config, wire the engine, and turn every
//! failure into one line a user can act on. The work itself lives in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Parser;

use aw_sync_samay::auth::device::{self, LoginMethod};
use aw_sync_samay::auth::oauth::{self, LoginOptions, OAuthSession};
use aw_sync_samay::auth::store::TokenStore;
use aw_sync_samay::auth::{browser, callback, NoToken, StaticToken, TokenSource, TOKEN_ENV};
use aw_sync_samay::cli::Args;
use aw_sync_samay::config::{self, AuthConfig, CallbackMode, Config, TokenStorage};
use aw_sync_samay::control::server::{DaemonBase, DaemonControl};
use aw_sync_samay::control::{self, Activity, SyncResult};
use aw_sync_samay::engine::{run_daemon_woken, status_bucket, Destination, Engine, Settings};
use aw_sync_samay::lifecycle::{self, Lifecycle};
use aw_sync_samay::lock::{InstanceLock, LockError};
use aw_sync_samay::source::AwClient;
use aw_sync_samay::state::{DestKey, Store};
use aw_sync_samay::status::{Login, TokenLine};
use aw_sync_samay::upstream::UpstreamClient;
use aw_sync_samay::{devserver, hint, logging, once, orphan, paths, status};

/// Where `--dev` serves its embedded upstream when the port is free (else any free port).
const DEV_PORT: u16 = 5680;

/// How long an idle thread of the blocking pool (SQLite, keyring, file and DNS calls) waits for
/// work before it exits. Tokio's default, 10 s, is shorter than a sync interval, so every cycle
/// ended with its threads waking to exit and the next one starting new threads: wakeups
/// between cycles (issue 5) and thread churn. A day outlasts any sensible interval; a thread
/// started by a one-off burst (a long catch-up, a slow keyring) still goes eventually.
const BLOCKING_KEEP_ALIVE: Duration = Duration::from_secs(24 * 3600);

fn main() -> ExitCode {
    // Before anything else, so a parent that exits at once still counts as lost (orphan.rs).
    orphan::record_parent();
    let args = Args::parse();
    aw_sync_samay::memory::tune_allocator();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_keep_alive(BLOCKING_KEEP_ALIVE)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("aw-sync-samay: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(run(args));
    // Don't wait for a blocking keyring or SQLite call beyond a moment at exit: aw-qt waits
    // for a stopped module without a bound, and the whole stop must stay under a second.
    runtime.shutdown_timeout(Duration::from_millis(500));
    match result {
        Ok(code) => code,
        Err(e) => {
            // Only errors from before logging was up get here (the others were logged).
            eprintln!("aw-sync-samay: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    // Started by the OS for a deep link: hand the URL over and exit, no config, no log file.
    if let Some(url) = &args.callback {
        let answer = callback::deliver(url).await?;
        println!("{answer}");
        return Ok(ExitCode::SUCCESS);
    }
    let command = args.status || args.login || args.logout || args.register_scheme;
    let log_dir = if command { None } else { paths::log_dir().ok() };
    // One-shot commands append to their own file: they never push the daemon's log out.
    let one_shot = args.once || args.dry_run;
    let log_kind = if one_shot {
        logging::LogKind::OneShot
    } else {
        logging::LogKind::Daemon
    };
    let log = logging::init(args.testing, args.verbose, log_dir.as_deref(), log_kind)?;
    hint::set_connection_flags(&args);
    // The daemon's control channel ("sync now", its status), for the life of the process.
    let daemon = (!command && !one_shot).then(|| {
        DaemonControl::new(DaemonBase {
            log_file: log.file().map(|p| p.display().to_string()),
            config: config_path(&args)
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            dev: args.dev,
        })
    });
    // A fatal error is logged here, while the log file's writer is alive (aw-qt's crash dialog
    // shows that file), and only once: the log already goes to stderr.
    // The daemon starts over when its config file changes (lifecycle.rs); a reload that fails
    // (a half-saved file) waits for the next change instead of exiting.
    let life = Lifecycle::new();
    loop {
        match run_logged(args.clone(), &life, daemon.as_ref()).await {
            Ok(_) if life.take_reload() => continue,
            Ok(code) => return Ok(code),
            Err(e) if life.reloaded() && !life.is_stopping() => {
                tracing::error!("{e:#}; waiting for the config file to change");
                if let Some(d) = &daemon {
                    d.hub.set_idle(
                        Activity::ConfigError,
                        format!("{e:#}"),
                        SyncResult::failed(
                            aw_sync_samay::exit::USER_MUST_ACT,
                            format!("the daemon's config file has an error: {e:#}"),
                        ),
                    );
                }
                if !life.wait_for_config_fix().await {
                    return Ok(ExitCode::SUCCESS);
                }
            }
            Err(e) => {
                tracing::error!("{e:#}");
                return Ok(ExitCode::from(1));
            }
        }
    }
}

/// `--config`, else the default config file of the variant.
fn config_path(args: &Args) -> anyhow::Result<PathBuf> {
    Ok(match &args.config {
        Some(p) => p.clone(),
        None => paths::config_file(args.testing)?,
    })
}

async fn run_logged(
    args: Args,
    life: &Lifecycle,
    daemon: Option<&DaemonControl>,
) -> anyhow::Result<ExitCode> {
    let config_path = config_path(&args)?;
    life.watch_config(&config_path);
    let loaded = config::load(&config_path)?;
    if loaded.created {
        life.watch_config(&config_path);
    }
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    if loaded.created {
        tracing::info!(path = %loaded.path.display(), "wrote the default config file (every key commented out)");
    }
    let config = loaded.config;
    let port = args.resolved_port();
    let source = AwClient::new(&args.host, port)?;
    let state_path = paths::state_db(args.testing)?;

    if args.status {
        return status_command(&args, &config, &config_path, &source, &state_path).await;
    }
    if args.login {
        return login_command(&args, &config, &config_path).await;
    }
    if args.logout {
        return logout_command(&config, &config_path).await;
    }
    if args.register_scheme {
        let exe = std::env::current_exe().context("finding this program's path")?;
        let done = callback::register_scheme(&config.auth.deep_link_uri, &exe)?;
        // The steps name the files written, and what was run or skipped.
        for s in &done.steps {
            println!("{s}");
        }
        return Ok(ExitCode::SUCCESS);
    }

    if args.dry_run {
        return dry_run_command(&args, &config, source, &state_path).await;
    }

    let lock_path = paths::lock_file(&args.host, port)?;
    let socket = control::socket_path(&args.host, port)?;
    let _lock = match InstanceLock::acquire(&lock_path) {
        Ok(lock) => lock,
        // The daemon (or another --once) syncs this aw-server: ask it to sync now.
        Err(LockError::AlreadyRunning { pid, .. }) if args.once => {
            let expect = once::Expect {
                config: &config_path,
                dev: args.dev,
                asks: aw_sync_samay::control::Asks {
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
    let (base_url, tokens): (String, Arc<dyn TokenSource>) = if args.dev {
        let (server, session) = start_dev_upstream(&config.auth).await?;
        let url = server.base_url();
        let lifetime = if args.once {
            "runs until this sync ends"
        } else {
            "runs while this daemon does"
        };
        eprintln!(
            "dev upstream: {url} ({lifetime}; browse it there; stored in {})",
            dev_db_path()?.display()
        );
        dev = Some(server);
        (url, session)
    } else {
        let tokens = token_source(&config).await?;
        if let Some(session) = &tokens.1 {
            login_on_start(&config, session, args.once || life.reloaded()).await;
        }
        (config.sync.base_url.clone(), tokens.0)
    };

    if !config.sync.enabled && !args.dev {
        let fix = format!(
            "sync is disabled: set sync.enabled = true in {} to sync",
            config_path.display()
        );
        if args.once {
            bail!("{fix}");
        }
        tracing::warn!(config = %config_path.display(), "sync is disabled in the config; idling until stopped or the config changes");
        idle(&source, &config, "sync.enabled = false", fix, life, daemon).await;
        return Ok(ExitCode::SUCCESS);
    }
    if base_url.is_empty() {
        let fix = format!(
            "no upstream configured: set sync.base_url in {} (or try {})",
            config_path.display(),
            hint::command("--dev --once")
        );
        if args.once {
            bail!("{fix}");
        }
        tracing::warn!(config = %config_path.display(), "no upstream configured (sync.base_url is empty); idling until stopped or the config changes");
        idle(
            &source,
            &config,
            "sync.base_url is empty",
            fix,
            life,
            daemon,
        )
        .await;
        return Ok(ExitCode::SUCCESS);
    }

    let upstream = Arc::new(UpstreamClient::new(
        &base_url,
        Duration::from_secs(config.sync.request_timeout),
        config.sync.gzip,
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
        // --dev's upstream does not come from the config: nothing to reload for.
        run_daemon_woken(
            engine.settings.interval,
            || async {
                // The sync requests waiting now are served by this cycle.
                let outcome = once::daemon_cycle(&engine, &upstream, hub).await;
                // Going idle until the next cycle: nothing the cycle leaves behind may wake
                // the process before then (issue 5).
                upstream.release_connections();
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
        )
        .await;
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
                "dev upstream: stopped with this command; browse what it stored with: samay-dev-server --db {} (then http://127.0.0.1:{DEV_PORT}/)",
                dev_db_path()?.display()
            );
        }
    }
    Ok(code)
}

/// The destination a dry run reports against: the one the last sync went to, when that is the
/// configured upstream (working out the account would need the upstream, which a dry run does
/// not ask); else a new one, to which everything would be sent.
fn dry_run_destination(store: &Store, base_url: &str) -> anyhow::Result<DestKey> {
    let fresh = DestKey::new(base_url, "");
    Ok(match store.current_destination()? {
        Some((_, key)) if key.base_url == fresh.base_url => key,
        _ => fresh,
    })
}

/// `--once --dry-run`: what a sync would send now, filtered and redacted, sending and recording
/// nothing. No instance lock (it writes nothing, so it may run beside the daemon), no upstream,
/// no token.
async fn dry_run_command(
    args: &Args,
    config: &Config,
    source: AwClient,
    state_path: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    if !args.once {
        bail!(
            "--dry-run goes with --once: {}",
            hint::command("--once --dry-run")
        );
    }
    let store = Arc::new(Store::open(state_path).context("opening the sync state")?);
    let sink = Arc::new(aw_sync_samay::upstream::dry_run::DryRunSink::default());
    let destination = dry_run_destination(&store, &config.sync.base_url)?;
    let engine = Engine::dry_run(
        source,
        store,
        Settings::from_config(&config.sync),
        gethostname::gethostname().to_string_lossy().into_owned(),
        Arc::clone(&sink),
        destination,
    );
    match engine.run_cycle().await {
        Ok(r) => {
            print!("{}", sink.report().render(&r));
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            tracing::error!("dry run failed: {e}");
            Ok(ExitCode::from(e.exit_code()))
        }
    }
}

/// `--status [--json|--short]`; exits 0 healthy, 1 the user must act, 2 unreachable.
async fn status_command(
    args: &Args,
    config: &Config,
    config_path: &std::path::Path,
    source: &AwClient,
    state_path: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    let upstream = if config.sync.base_url.is_empty() {
        None
    } else {
        Some(UpstreamClient::new(
            &config.sync.base_url,
            Duration::from_secs(5),
            config.sync.gzip,
        )?)
    };
    let privacy = Settings::from_config(&config.sync).privacy;
    let st = status::gather(status::Probe {
        source,
        upstream: upstream.as_ref(),
        base_url: config.sync.base_url.trim(),
        privacy: &privacy,
        token: token_status(config).await,
        state_path,
        config_path,
        sync_enabled: config.sync.enabled,
        socket: control::socket_path(&args.host, args.resolved_port()).ok(),
        log_dir: paths::log_dir().ok(),
        testing: args.testing,
        hostname: gethostname::gethostname().to_string_lossy().into_owned(),
    })
    .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&st)?);
    } else if args.short {
        println!("{}", st.short());
    } else {
        print!("{}", st.render());
    }
    Ok(ExitCode::from(st.exit_code))
}

fn dev_db_path() -> anyhow::Result<PathBuf> {
    Ok(paths::data_dir()?.join("dev-upstream.sqlite"))
}

/// The embedded upstream for `--dev`, with its OpenID provider approving every sign-in at once,
/// and a session logged in to it through the real flow (PKCE, loopback callback) — the browser
/// being an in-process HTTP client that follows the provider's redirect.
async fn start_dev_upstream(
    auth: &AuthConfig,
) -> anyhow::Result<(devserver::DevServer, Arc<dyn TokenSource>)> {
    let db_path = dev_db_path()?;
    let user = std::env::var("USER")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| "dev".into());
    let mut last = None;
    let mut server = None;
    for port in [DEV_PORT, 0] {
        let cfg = devserver::DevServerConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], port)),
            db_path: db_path.clone(),
            ..Default::default()
        };
        let oidc = devserver::OidcConfig {
            auto_approve: Some(user.clone()),
            ..Default::default()
        };
        match devserver::spawn_with(cfg, oidc).await {
            Ok(s) => {
                server = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let Some(server) = server else {
        return Err(last.map_or_else(
            || anyhow::anyhow!("no port"),
            |e| e.context("starting the dev upstream"),
        ));
    };
    let mut auth = auth.clone();
    auth.issuer = server.issuer();
    auth.client_id = devserver::DEV_CLIENT_ID.to_string();
    auth.auth_url.clear();
    auth.token_url.clear();
    auth.userinfo_url.clear();
    auth.revocation_url.clear();
    auth.callback = CallbackMode::Loopback;
    auth.login_timeout = 30;
    let http = oauth::http_client()?;
    let provider = oauth::resolve_provider(&auth, &http).await?;
    let store = TokenStore::open(
        TokenStorage::File,
        oauth::configured_account(&auth),
        &paths::data_dir()?.join("dev"),
    )
    .await?;
    let opener: oauth::Opener = Box::new(|url| {
        let url = url.clone();
        tokio::spawn(async move {
            let browser = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::limited(3))
                .build();
            if let Ok(b) = browser {
                let _ = b.get(url).send().await;
            }
        });
    });
    let tokens = oauth::login(
        &auth,
        &store,
        &provider,
        LoginOptions {
            no_browser: false,
            opener: Some(opener),
            preflight: false,
        },
    )
    .await
    .context("logging in to the dev upstream")?;
    eprintln!(
        "dev upstream: logged in as {}",
        oauth::display_name(&tokens)
    );
    let session = OAuthSession::new(&auth, store, &paths::cache_dir()?).with_provider(provider);
    Ok((server, Arc::new(session)))
}

/// The daemon's token source: `AW_SYNC_SAMAY_TOKEN` when set (used as is), else the login
/// session when `[auth]` is configured, else none (the daemon idles: "login required").
async fn token_source(
    config: &Config,
) -> anyhow::Result<(Arc<dyn TokenSource>, Option<Arc<OAuthSession>>)> {
    if let Some(t) = StaticToken::from_env() {
        return Ok((Arc::new(t), None));
    }
    if !oauth::login_configured(&config.auth) {
        return Ok((Arc::new(NoToken), None));
    }
    let store = open_token_store(&config.auth).await?;
    let session = Arc::new(OAuthSession::new(&config.auth, store, &paths::cache_dir()?));
    Ok((session.clone(), Some(session)))
}

async fn open_token_store(auth: &AuthConfig) -> anyhow::Result<TokenStore> {
    TokenStore::open(
        auth.token_storage,
        oauth::configured_account(auth),
        &paths::data_dir()?,
    )
    .await
    .context("opening the token storage")
}

/// `auth.login_on_start`: a daemon started logged out opens the browser login once, in the
/// background, so enabling the module is the "Login" click. Never otherwise.
async fn login_on_start(config: &Config, session: &Arc<OAuthSession>, once: bool) {
    if once || !config.auth.login_on_start {
        return;
    }
    if !matches!(session.store().load().await, Ok(None)) {
        return;
    }
    tracing::info!("logged out and auth.login_on_start = true: opening the browser to log in");
    let auth = config.auth.clone();
    tokio::spawn(async move {
        let result = async {
            let http = oauth::http_client()?;
            let provider = oauth::resolve_provider(&auth, &http).await?;
            let store = open_token_store(&auth).await?;
            let opts = LoginOptions {
                no_browser: false,
                opener: None,
                preflight: true,
            };
            anyhow::Ok(oauth::login(&auth, &store, &provider, opts).await?)
        }
        .await;
        match result {
            Ok(t) => tracing::info!("Logged in as {}", oauth::display_name(&t)),
            Err(e) => tracing::warn!("the login did not complete: {e:#}"),
        }
    });
}

async fn login_command(
    args: &Args,
    config: &Config,
    config_path: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    let auth = &config.auth;
    if !oauth::login_configured(auth) {
        bail!(
            "the login is not configured: set auth.client_id and auth.issuer (or auth.auth_url and auth.token_url) in {}",
            config_path.display()
        );
    }
    let http = oauth::http_client()?;
    let provider = oauth::resolve_provider(auth, &http).await?;
    let store = open_token_store(auth).await?;
    let no_browser_here = browser::reason_not_to_open();
    let offers_device = provider.device_authorization_endpoint.is_some();
    let method =
        device::choose_method(args.device, args.no_browser, no_browser_here, offers_device)
            .map_err(oauth::LoginError::from)?;
    if let (false, Some(why)) = (args.device || args.no_browser, no_browser_here) {
        match method {
            LoginMethod::Device => eprintln!(
                "No browser can be opened here: {why}.\nSigning in with a code on another device instead.\n"
            ),
            _ => eprintln!(
                "No browser can be opened here: {why}.\nThe provider offers no sign-in with a code, so open the URL on another device and paste back the address it sends you to.\n"
            ),
        }
    }
    let tokens = match method {
        LoginMethod::Device => {
            device::login(auth, &store, &provider, &http, |p| eprintln!("{p}")).await?
        }
        LoginMethod::Browser | LoginMethod::Paste => {
            let opts = LoginOptions {
                no_browser: method == LoginMethod::Paste,
                opener: None,
                preflight: true,
            };
            oauth::login(auth, &store, &provider, opts).await?
        }
    };
    println!("Logged in as {}", oauth::display_name(&tokens));
    println!("Tokens stored in {}.", store.describe());
    Ok(ExitCode::SUCCESS)
}

async fn logout_command(
    config: &Config,
    config_path: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    let auth = &config.auth;
    if !oauth::login_configured(auth) {
        bail!(
            "the login is not configured in {}: nothing to log out of",
            config_path.display()
        );
    }
    let store = open_token_store(auth).await?;
    let report = oauth::logout(auth, &store).await?;
    if !report.had_tokens {
        println!("Not logged in: nothing stored in {}.", store.describe());
        return Ok(ExitCode::SUCCESS);
    }
    match &report.revoked {
        Some(Ok(())) => println!("Revoked the session at the provider."),
        Some(Err(why)) => println!(
            "Could not revoke the session at the provider ({why}); it ends when its tokens expire."
        ),
        None => match &report.no_endpoint {
            Some(why) => println!("Not revoked: {why}."),
            None => println!("Not revoked at the provider."),
        },
    }
    if report.deleted {
        println!("Deleted the stored tokens from {}.", store.describe());
    }
    println!("Sync state and cursors are kept: the next login resumes where the sync stopped.");
    Ok(ExitCode::SUCCESS)
}

/// The token line of `--status`: where tokens come from and who is logged in.
async fn token_status(config: &Config) -> TokenLine {
    let line = |text: String, login| TokenLine {
        text,
        login,
        account: None,
    };
    if let Some(t) = StaticToken::from_env() {
        return line(t.describe(), Login::Environment);
    }
    let login = hint::command("--login");
    if !oauth::login_configured(&config.auth) {
        return line(
            format!("none: configure [auth] and run {login}, or set {TOKEN_ENV}"),
            Login::NotConfigured,
        );
    }
    match open_token_store(&config.auth).await {
        Err(e) => line(
            format!("token storage unavailable: {e:#}"),
            Login::Unavailable,
        ),
        Ok(store) => match store.load().await {
            Ok(Some(t)) => TokenLine {
                account: t
                    .subject
                    .as_deref()
                    .map(|subject| oauth::account_key(&t.issuer, subject)),
                ..line(
                    format!(
                        "{}: logged in as {}",
                        store.describe(),
                        oauth::display_name(&t)
                    ),
                    Login::LoggedIn,
                )
            },
            Ok(None) => line(
                format!("{}: login required: run {login}", store.describe()),
                Login::LoginRequired,
            ),
            Err(e) => line(
                format!("{}: unreadable ({e}): run {login}", store.describe()),
                Login::Unavailable,
            ),
        },
    }
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
