//! The binary's commands, one file each. [`Mode::of`] picks one from the flags; [`run`] sets up
//! what every command shares (logging, the config, the reload loop of the daemon) and runs it.
//! Commands are the binary's edge: they add context (anyhow) to the library's typed errors
//! and turn them into one line a user can act on.

mod callback;
mod dev;
mod dry_run;
mod login;
mod logout;
mod register_scheme;
mod status;
mod sync;
mod tokens;
mod tray;
mod unpull;

use std::path::PathBuf;
use std::process::ExitCode;

use aw_sync_samay::cli::Args;
use aw_sync_samay::config::{self, Config};
use aw_sync_samay::control::server::{DaemonBase, DaemonControl};
use aw_sync_samay::control::{Activity, SyncResult};
use aw_sync_samay::lifecycle::Lifecycle;
use aw_sync_samay::source::AwClient;
use aw_sync_samay::{hint, logging, paths};

/// What this run of the program does, from its flags. The first that applies wins, in this
/// order (clap already refuses the combinations that make no sense).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// `--callback URL`: started by the OS for a deep link.
    Callback(String),
    /// `--status [--json|--short]`.
    Status,
    /// `--login`.
    Login,
    /// `--logout`.
    Logout,
    /// `--register-scheme`.
    RegisterScheme,
    /// `--unpull DEVICE`.
    Unpull(String),
    /// `--dry-run` (with `--once`).
    DryRun,
    /// `--once`: one complete sync (or ask the running daemon for one).
    Once,
    /// No mode flag: the daemon aw-qt starts.
    Daemon,
}

impl Mode {
    pub fn of(args: &Args) -> Mode {
        if let Some(url) = &args.callback {
            Mode::Callback(url.clone())
        } else if args.status {
            Mode::Status
        } else if args.login {
            Mode::Login
        } else if args.logout {
            Mode::Logout
        } else if args.register_scheme {
            Mode::RegisterScheme
        } else if let Some(device) = &args.unpull {
            Mode::Unpull(device.clone())
        } else if args.dry_run {
            Mode::DryRun
        } else if args.once {
            Mode::Once
        } else {
            Mode::Daemon
        }
    }

    /// A command that prints its answer: it writes no log file.
    fn is_command(&self) -> bool {
        matches!(
            self,
            Mode::Status | Mode::Login | Mode::Logout | Mode::RegisterScheme | Mode::Unpull(_)
        )
    }

    /// A single sync (or dry run): it appends to its own log file, never pushing the daemon's
    /// log out, and has no control channel.
    fn is_one_shot(&self) -> bool {
        matches!(self, Mode::Once | Mode::DryRun)
    }
}

/// What every command after the config load is given.
pub(crate) struct Loaded<'a> {
    pub args: &'a Args,
    pub config: Config,
    pub config_path: PathBuf,
    pub source: AwClient,
    pub state_path: PathBuf,
}

/// Runs `mode`. A fatal error is logged here, while the log file's writer is alive (aw-qt's
/// crash dialog shows that file), and only once: the log already goes to stderr. The daemon
/// starts over when its config file changes (lifecycle.rs); a reload that fails (a
/// half-saved file) waits for the next change instead of exiting.
pub async fn run(args: Args, mode: Mode) -> anyhow::Result<ExitCode> {
    // Started by the OS for a deep link: hand the URL over and exit, no config, no log file.
    if let Mode::Callback(url) = &mode {
        return callback::run(url).await;
    }
    let log_dir = if mode.is_command() {
        None
    } else {
        paths::log_dir().ok()
    };
    let log_kind = if mode.is_one_shot() {
        logging::LogKind::OneShot
    } else {
        logging::LogKind::Daemon
    };
    let log = logging::init(args.testing, args.verbose, log_dir.as_deref(), log_kind)?;
    hint::set_connection_flags(&args);
    // The daemon's control channel ("sync now", its status), for the life of the process.
    let daemon = (mode == Mode::Daemon).then(|| {
        DaemonControl::new(DaemonBase {
            log_file: log.file().map(|p| p.display().to_string()),
            config: config_path(&args)
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            dev: args.dev,
        })
    });
    // The tray icon, for the life of the daemon process (kept across config reloads).
    let tray = (mode == Mode::Daemon).then(|| aw_sync_samay::tray::Tray::new(args.tray));
    let life = Lifecycle::new();
    if mode == Mode::Daemon {
        life.listen();
    }
    loop {
        match run_logged(&args, &mode, &life, daemon.as_ref(), tray.as_ref()).await {
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

/// Loads the config (writing the default file when there is none), then runs the command.
async fn run_logged(
    args: &Args,
    mode: &Mode,
    life: &Lifecycle,
    daemon: Option<&DaemonControl>,
    tray: Option<&aw_sync_samay::tray::Tray>,
) -> anyhow::Result<ExitCode> {
    let config_path = config_path(args)?;
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
    let cx = Loaded {
        args,
        config: loaded.config,
        config_path,
        source: AwClient::new(&args.host, args.resolved_port())?,
        state_path: paths::state_db(args.testing)?,
    };
    match mode {
        Mode::Status => status::run(&cx).await,
        Mode::Login => login::run(&cx).await,
        Mode::Logout => logout::run(&cx).await,
        Mode::RegisterScheme => register_scheme::run(&cx),
        Mode::Unpull(device) => unpull::run(&cx, device).await,
        Mode::DryRun => dry_run::run(cx).await,
        Mode::Once | Mode::Daemon => sync::run(cx, life, daemon, tray).await,
        Mode::Callback(url) => callback::run(url).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    fn mode(flags: &[&str]) -> Mode {
        let args =
            Args::try_parse_from(std::iter::once("aw-sync-samay").chain(flags.iter().copied()))
                .unwrap_or_else(|e| panic!("{flags:?}: {e}"));
        Mode::of(&args)
    }

    /// Each flag picks its command, and the order of precedence is what `run` switched on
    /// before the split (a deep link first, the daemon when no mode flag is given).
    #[test]
    fn the_flags_pick_the_mode() {
        let url = "com.example.samay:/callback?code=x";
        assert_eq!(
            mode(&["--callback", url, "--once"]),
            Mode::Callback(url.into())
        );
        assert_eq!(mode(&["--status", "--json"]), Mode::Status);
        assert_eq!(mode(&["--status", "--register-scheme"]), Mode::Status);
        assert_eq!(mode(&["--login", "--device"]), Mode::Login);
        assert_eq!(mode(&["--login", "--register-scheme"]), Mode::Login);
        assert_eq!(mode(&["--logout"]), Mode::Logout);
        assert_eq!(mode(&["--register-scheme", "--once"]), Mode::RegisterScheme);
        assert_eq!(mode(&["--once", "--dry-run"]), Mode::DryRun);
        // Refused with a hint when it runs, not taken for a sync.
        assert_eq!(mode(&["--dry-run"]), Mode::DryRun);
        assert_eq!(mode(&["--once", "--verify", "--dev"]), Mode::Once);
        assert_eq!(mode(&["--testing"]), Mode::Daemon);
        assert_eq!(mode(&["--dev", "--resync"]), Mode::Daemon);
        assert_eq!(mode(&["--unpull", "laptop"]), Mode::Unpull("laptop".into()));
    }

    /// Commands write no log file; a single sync appends to its own; only the daemon has the
    /// control channel (`run` opens it for `Mode::Daemon` alone).
    #[test]
    fn logging_follows_the_mode() {
        for m in [
            Mode::Status,
            Mode::Login,
            Mode::Logout,
            Mode::RegisterScheme,
        ] {
            assert!(m.is_command() && !m.is_one_shot(), "{m:?}");
        }
        for m in [Mode::Once, Mode::DryRun] {
            assert!(m.is_one_shot() && !m.is_command(), "{m:?}");
        }
        assert!(!Mode::Daemon.is_command() && !Mode::Daemon.is_one_shot());
    }
}
