//! The command line. Without a mode flag the process is the daemon aw-qt starts (with nothing
//! but `--testing`), so every flag is optional and the defaults must be what aw-qt expects.
//! The connection flags (`--testing`, `--host`, `--port`, `--verbose`) are the ones every
//! ActivityWatch watcher takes.

use std::path::PathBuf;

use clap::Parser;

/// aw-sync-samay: syncs the events of the local ActivityWatch server to an upstream.
///
/// Without a mode flag, runs as a daemon (this is how aw-qt starts it).
#[derive(Debug, Clone, PartialEq, Eq, Parser)]
#[command(name = "aw-sync-samay", version)]
pub struct Args {
    /// Talk to the testing aw-server (port 5666) and use the testing config, state and log files.
    #[arg(long)]
    pub testing: bool,

    /// Host of the local aw-server.
    #[arg(long, value_name = "HOST", default_value = "127.0.0.1")]
    pub host: String,

    /// Port of the local aw-server [default: `port` from aw-server-rust's config, else 5600,
    /// or 5666 with --testing].
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,

    /// Config file to use instead of the default one.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Log debug messages.
    #[arg(short, long)]
    pub verbose: bool,

    /// Run one complete sync, then exit: 0 synced, 1 you must act, 2 something unreachable.
    /// While the daemon runs, asks it to sync now.
    #[arg(long)]
    pub once: bool,

    /// Print what has been synced, what is pending and what to do, then exit: 0 healthy, 1 you
    /// must act, 2 something unreachable.
    #[arg(long, conflicts_with_all = ["once", "dev"])]
    pub status: bool,

    /// With --status: print JSON instead of text.
    #[arg(long, requires = "status")]
    pub json: bool,

    /// With --status: one line for status bars and prompts ("synced 3 min ago · 0 pending").
    #[arg(long, requires = "status", conflicts_with = "json")]
    pub short: bool,

    /// Sync to an embedded development upstream instead of the configured one.
    #[arg(long)]
    pub dev: bool,

    /// Read and prepare batches but send nothing (with --once).
    #[arg(long)]
    pub dry_run: bool,

    /// Re-read and re-hash the whole history now, send what differs from what the upstream
    /// holds, and print what that was (with --once).
    #[arg(long, requires = "once")]
    pub verify: bool,

    /// Forget what the current upstream and account acknowledged and send everything again
    /// (the upstream absorbs what it already holds as duplicates). With --once, or when
    /// starting the daemon.
    #[arg(long, conflicts_with = "dry_run")]
    pub resync: bool,

    /// Delete from this aw-server the buckets the pull imported from DEVICE (a host name or
    /// device id, as --status lists them) and stop pulling it; the upstream keeps its events.
    /// Naming it in sync.pull_devices (any change of the device selection) pulls it again.
    #[arg(long, value_name = "DEVICE", conflicts_with_all = ["once", "status", "dev"])]
    pub unpull: Option<String>,

    /// Sign in to the upstream's identity provider in the browser and store the tokens in the
    /// OS keyring. Without a usable browser (SSH, no display) it signs in with a code entered
    /// on another device when the provider offers that, else as with --no-browser.
    #[arg(long, conflicts_with = "logout")]
    pub login: bool,

    /// Revoke the session at the provider and delete the stored tokens (sync state is kept).
    #[arg(long)]
    pub logout: bool,

    /// With --login: print the sign-in URL instead of opening a browser, and take the address
    /// the browser ends on, pasted back.
    #[arg(long, requires = "login", conflicts_with = "device")]
    pub no_browser: bool,

    /// With --login: sign in with a code entered in a browser on any other device (OAuth device
    /// authorization grant, RFC 8628), as `gh auth login` does.
    #[arg(long, requires = "login")]
    pub device: bool,

    /// Finish a login with the address the browser was sent to (the OS runs this for the
    /// samay:// deep link; --register-scheme sets that up).
    #[arg(long, value_name = "URL")]
    pub callback: Option<String>,

    /// Show the tray icon even when `ui.tray = "off"`, and say why when there is no tray host
    /// (the daemon only; as `ui.tray = "on"`).
    #[arg(long, conflicts_with_all = ["once", "status", "login", "logout", "dry_run", "register_scheme", "callback"])]
    pub tray: bool,

    /// Install the handler that lets the browser hand a login back through the samay:// deep
    /// link, for when no loopback port can be used (Linux: a desktop entry).
    #[arg(long)]
    pub register_scheme: bool,
}

impl Args {
    /// The aw-server port: `--port` when given, else what aw-server-rust is configured with
    /// (see [`crate::paths::aw_server_port`]). Resolved late because reading aw-server's config
    /// may log a warning, which should reach the log file.
    pub fn resolved_port(&self) -> u16 {
        self.port
            .unwrap_or_else(|| crate::paths::aw_server_port(self.testing))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("aw-sync-samay").chain(args.iter().copied()))
    }

    #[test]
    fn command_is_well_formed() {
        Args::command().debug_assert();
    }

    #[test]
    fn defaults_are_what_aw_qt_expects() {
        let args = parse(&[]).expect("no arguments parse");
        assert!(!args.testing);
        assert_eq!(args.host, "127.0.0.1");
        assert_eq!(args.port, None);
        assert_eq!(args.config, None);
        assert!(!args.verbose && !args.once && !args.status && !args.json && !args.dev);
        assert!(!args.dry_run && !args.login && !args.logout && !args.no_browser);
        assert!(!args.device);
        assert!(!args.register_scheme && args.callback.is_none());

        let args = parse(&["--testing"]).expect("aw-qt's testing launch parses");
        assert!(args.testing);
    }

    #[test]
    fn connection_flags() {
        let args = parse(&[
            "--host",
            "localhost",
            "--port",
            "5601",
            "--config",
            "/tmp/x.toml",
            "-v",
        ])
        .expect("parses");
        assert_eq!(args.host, "localhost");
        assert_eq!(args.port, Some(5601));
        assert_eq!(args.config, Some(PathBuf::from("/tmp/x.toml")));
        assert!(args.verbose);
        assert_eq!(args.resolved_port(), 5601);
    }

    #[test]
    fn bad_port_is_refused() {
        for bad in ["70000", "abc", "-1"] {
            assert!(parse(&["--port", bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn modes() {
        let args = parse(&["--once", "--dry-run", "--dev"]).expect("parses");
        assert!(args.once && args.dry_run && args.dev);

        let args = parse(&["--status", "--json"]).expect("parses");
        assert!(args.status && args.json);

        let args = parse(&["--status", "--short"]).expect("parses");
        assert!(args.status && args.short);
        assert!(parse(&["--short"]).is_err(), "--short goes with --status");
        assert!(parse(&["--status", "--short", "--json"]).is_err());
    }

    #[test]
    fn status_conflicts_with_once_and_dev() {
        for other in ["--once", "--dev"] {
            let err = parse(&["--status", other]).expect_err("conflict");
            assert_eq!(err.kind(), ErrorKind::ArgumentConflict, "{other}");
        }
    }

    #[test]
    fn json_requires_status() {
        let err = parse(&["--json"]).expect_err("--json alone");
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn login_flags_parse() {
        let args = parse(&["--login", "--no-browser"]).expect("parses");
        assert!(args.login && args.no_browser);
        let args = parse(&["--login", "--device"]).expect("parses");
        assert!(args.login && args.device);
        for alone in ["--device", "--no-browser"] {
            let err = parse(&[alone]).expect_err("needs --login");
            assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument, "{alone}");
        }
        let err = parse(&["--login", "--device", "--no-browser"]).expect_err("one or the other");
        assert_eq!(err.kind(), ErrorKind::ArgumentConflict);
        let args = parse(&["--logout"]).expect("parses");
        assert!(args.logout);
        let args = parse(&["--callback", "samay://cb?code=x&state=y"]).expect("parses");
        assert_eq!(args.callback.as_deref(), Some("samay://cb?code=x&state=y"));
        let args = parse(&["--register-scheme"]).expect("parses");
        assert!(args.register_scheme);
        assert!(parse(&["--login", "--logout"]).is_err());
        assert!(parse(&["--callback"]).is_err());
    }

    /// Issue 10: the login flags said "(coming with the login)" long after the login came.
    #[test]
    fn help_describes_the_login_flags_as_they_are() {
        let help = Args::command().render_long_help().to_string();
        assert!(!help.contains("coming with"), "{help}");
        for flag in [
            "--login",
            "--logout",
            "--no-browser",
            "--device",
            "--callback",
            "--register-scheme",
            "--tray",
        ] {
            let line = help
                .lines()
                .position(|l| l.trim_start().starts_with(flag))
                .unwrap_or_else(|| panic!("{flag} is not in the help:\n{help}"));
            let described = help.lines().nth(line + 1).unwrap_or("").trim();
            assert!(described.len() > 20, "{flag} has no description:\n{help}");
        }
    }

    #[test]
    fn unknown_flag_is_refused() {
        let err = parse(&["--bogus"]).expect_err("unknown");
        assert_eq!(err.kind(), ErrorKind::UnknownArgument);
    }

    /// Only the daemon owns the icon: `--tray` with a one-shot command is refused, not ignored.
    #[test]
    fn tray_is_for_the_daemon_only() {
        assert!(parse(&["--tray"]).expect("the daemon takes it").tray);
        assert!(parse(&["--testing", "--tray", "--dev"]).is_ok());
        for other in [
            &["--once"][..],
            &["--status"],
            &["--login"],
            &["--logout"],
            &["--once", "--dry-run"],
            &["--register-scheme"],
            &["--callback", "samay://callback?code=x"],
        ] {
            let mut args = vec!["--tray"];
            args.extend_from_slice(other);
            let err = parse(&args).expect_err("refused");
            assert_eq!(err.kind(), ErrorKind::ArgumentConflict, "{other:?}");
        }
    }
}
