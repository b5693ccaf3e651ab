//! The `aw-sync-samay` binary: parse flags, load the config, wire the engine, and turn every
//! failure into one line a user can act on. The work itself lives in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Parser;

use aw_sync_samay::auth::{AccessToken, NoToken, StaticToken, TokenSource, TOKEN_ENV};
use aw_sync_samay::cli::Args;
use aw_sync_samay::config::{self, Config};
use aw_sync_samay::engine::{run_daemon, Engine, Settings};
use aw_sync_samay::lock::InstanceLock;
use aw_sync_samay::source::AwClient;
use aw_sync_samay::state::Store;
use aw_sync_samay::upstream::UpstreamClient;
use aw_sync_samay::{devserver, logging, paths, status};

/// Where `--dev` serves its embedded upstream when the port is free (else any free port).
const DEV_PORT: u16 = 5680;

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
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
    // Don't wait for a blocking keyring or SQLite call beyond a moment at exit.
    runtime.shutdown_timeout(Duration::from_secs(1));
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
    if args.login || args.logout || args.callback.is_some() || args.register_scheme {
        bail!("the browser login is not part of this build yet: set {TOKEN_ENV} to a bearer token for the upstream");
    }
    let log_dir = if args.status {
        None
    } else {
        paths::log_dir().ok()
    };
    let _log = logging::init(args.testing, args.verbose, log_dir.as_deref())?;
    // A fatal error is logged here, while the log file's writer is alive (aw-qt's crash dialog
    // shows that file), and only once: the log already goes to stderr.
    match run_logged(args).await {
        Ok(code) => Ok(code),
        Err(e) => {
            tracing::error!("{e:#}");
            Ok(ExitCode::from(1))
        }
    }
}

async fn run_logged(args: Args) -> anyhow::Result<ExitCode> {
    let config_path = match &args.config {
        Some(p) => p.clone(),
        None => paths::config_file(args.testing)?,
    };
    let loaded = config::load(&config_path)?;
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
        return status_command(&args, &config, &source, &state_path).await;
    }

    let lock_path = paths::lock_file(&args.host, port)?;
    let _lock = InstanceLock::acquire(&lock_path)?;

    let store = Arc::new(Store::open(&state_path).context("opening the sync state")?);
    let mut dev = None;
    let (base_url, tokens): (String, Arc<dyn TokenSource>) = if args.dev {
        let server = start_dev_upstream().await?;
        let token = dev_token();
        server.add_token(token.secret());
        let url = server.base_url();
        eprintln!(
            "dev upstream: {url} (inspect in a browser; stored in {})",
            dev_db_path()?.display()
        );
        dev = Some(server);
        (
            url,
            Arc::new(StaticToken::new(token, "dev upstream (in-process)")),
        )
    } else {
        let tokens: Arc<dyn TokenSource> = match StaticToken::from_env() {
            Some(t) => Arc::new(t),
            None => Arc::new(NoToken),
        };
        (config.sync.base_url.clone(), tokens)
    };

    if !config.sync.enabled && !args.dev {
        if args.once {
            bail!(
                "sync is disabled (sync.enabled = false in {})",
                config_path.display()
            );
        }
        tracing::warn!(config = %config_path.display(), "sync is disabled in the config; idling until stopped");
        shutdown_signal().await;
        return Ok(ExitCode::SUCCESS);
    }
    if base_url.is_empty() {
        if args.once {
            bail!(
                "no upstream configured: set sync.base_url in {} (or try --dev)",
                config_path.display()
            );
        }
        tracing::warn!(config = %config_path.display(), "no upstream configured (sync.base_url is empty); idling until stopped");
        shutdown_signal().await;
        return Ok(ExitCode::SUCCESS);
    }

    let upstream = UpstreamClient::new(
        &base_url,
        Duration::from_secs(config.sync.request_timeout),
        config.sync.gzip,
    )?;
    let engine = Engine {
        source,
        upstream: Arc::new(upstream),
        tokens,
        store,
        settings: Settings::from_config(&config.sync),
        hostname: gethostname::gethostname().to_string_lossy().into_owned(),
        metrics: Default::default(),
    };

    let code = if args.once {
        once(&engine).await
    } else {
        tracing::info!(aw_server = %engine.source.base_url(), upstream = %base_url, "aw-sync-samay started");
        run_daemon(
            engine.settings.interval,
            || engine.daemon_cycle(),
            shutdown_signal(),
        )
        .await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    };
    if let Some(server) = dev {
        if args.once {
            eprintln!(
                "inspect what was stored with: samay-dev-server --db {}",
                dev_db_path()?.display()
            );
        }
        server.shutdown().await;
    }
    Ok(code)
}

async fn once(engine: &Engine) -> ExitCode {
    match engine.run_cycle().await {
        Ok(r) => {
            println!(
                "synced: {} events read, {} delivered ({} already held upstream), {} quarantined, in {:.1} s",
                r.read(),
                r.upload.delivered,
                r.upload.duplicates,
                r.upload.quarantined,
                r.elapsed.as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            // Through tracing: one line on stderr, and the same line in the log file.
            tracing::error!("sync failed: {e}");
            ExitCode::from(2)
        }
    }
}

async fn status_command(
    args: &Args,
    config: &Config,
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
    let token = match StaticToken::from_env() {
        Some(t) => t.describe(),
        None => "none: set AW_SYNC_SAMAY_TOKEN".to_string(),
    };
    let st = status::gather(source, upstream.as_ref(), token, state_path).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&st)?);
    } else {
        print!("{}", st.render());
    }
    Ok(ExitCode::SUCCESS)
}

fn dev_db_path() -> anyhow::Result<PathBuf> {
    Ok(paths::data_dir()?.join("dev-upstream.sqlite"))
}

/// A random token for the in-process dev upstream; it never leaves this process.
fn dev_token() -> AccessToken {
    AccessToken::new(uuid::Uuid::new_v4().simple().to_string())
}

async fn start_dev_upstream() -> anyhow::Result<devserver::DevServer> {
    let db_path = dev_db_path()?;
    let mut last = None;
    for port in [DEV_PORT, 0] {
        let cfg = devserver::DevServerConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], port)),
            db_path: db_path.clone(),
            tokens: Vec::new(),
        };
        match devserver::spawn(cfg).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.map_or_else(
        || anyhow::anyhow!("no port"),
        |e| e.context("starting the dev upstream"),
    ))
}

/// SIGINT or SIGTERM (aw-qt stops modules with SIGTERM).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("stop requested");
}
