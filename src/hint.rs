//! The commands a message tells the user to run, spelled with the connection flags of the
//! command they ran: someone who runs `aw-sync-samay --testing --port 5766 --once` and is told
//! "run aw-sync-samay --login" would log in for the wrong config file (the testing one has its
//! own), or look at the wrong aw-server. Every hint that names a command goes through
//! [`command`], so the advice works when pasted.
//!
//! The flags are a fact about this process, set once by `main` ([`set_connection_flags`]) and
//! read by messages deep in the library (an `AuthError`'s text, a browser page, `--status`), so
//! they live in a process-wide cell rather than being passed to every error type. Nothing set
//! (library tests, the dev server): the bare command.

use std::sync::OnceLock;

use crate::cli::Args;

/// The program's name as a user types it.
pub const PROGRAM: &str = "aw-sync-samay";

/// The default `--host`, not repeated in hints.
const DEFAULT_HOST: &str = "127.0.0.1";

static FLAGS: OnceLock<String> = OnceLock::new();

/// The flags that choose which aw-server, config, state and log this invocation uses: `--testing`,
/// `--host` (when not the default), `--port` and `--config` (when given). Not `--verbose` or
/// the mode flags: a hint names its own mode.
pub fn connection_flags(args: &Args) -> Vec<String> {
    let mut flags = Vec::new();
    if args.testing {
        flags.push("--testing".to_string());
    }
    if args.host != DEFAULT_HOST {
        flags.push("--host".into());
        flags.push(args.host.clone());
    }
    if let Some(port) = args.port {
        flags.push("--port".into());
        flags.push(port.to_string());
    }
    if let Some(config) = &args.config {
        flags.push("--config".into());
        flags.push(config.to_string_lossy().into_owned());
    }
    flags
}

/// Remembers this process's connection flags for every later hint. Only the first call counts.
pub fn set_connection_flags(args: &Args) {
    let _ = FLAGS.set(render(&connection_flags(args)));
}

/// `aw-sync-samay <connection flags> <rest>`, e.g. `command("--login")` →
/// `aw-sync-samay --testing --port 5766 --login`. `rest` is written as given (it is ours, never
/// the user's input).
pub fn command(rest: &str) -> String {
    let flags = FLAGS.get().map(String::as_str).unwrap_or("");
    with_flags(flags, rest)
}

fn with_flags(flags: &str, rest: &str) -> String {
    [PROGRAM, flags, rest]
        .iter()
        .filter(|s| !s.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Arguments joined for a POSIX shell: anything beyond plain characters is single-quoted, so a
/// config path with spaces still pastes as one argument.
fn render(args: &[String]) -> String {
    args.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" ")
}

fn quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c));
    if plain {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn flags(argv: &[&str]) -> String {
        let args =
            Args::try_parse_from(std::iter::once("aw-sync-samay").chain(argv.iter().copied()))
                .expect("parses");
        render(&connection_flags(&args))
    }

    #[test]
    fn hints_repeat_the_connection_flags_and_only_those() {
        assert_eq!(flags(&[]), "");
        assert_eq!(
            flags(&["--testing", "--port", "5766", "--once", "-v"]),
            "--testing --port 5766"
        );
        assert_eq!(
            flags(&[
                "--host",
                "localhost",
                "--config",
                "/tmp/my config.toml",
                "--status"
            ]),
            "--host localhost --config '/tmp/my config.toml'"
        );
        assert_eq!(
            flags(&["--host", "127.0.0.1"]),
            "",
            "the default host is implied"
        );
        assert_eq!(
            with_flags("--testing --port 5766", "--login"),
            "aw-sync-samay --testing --port 5766 --login"
        );
        assert_eq!(with_flags("", "--login"), "aw-sync-samay --login");
    }

    #[test]
    fn quoting_survives_a_shell() {
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("C:/x y/z.toml"), "'C:/x y/z.toml'");
        assert_eq!(quote("/home/me/a.toml"), "/home/me/a.toml");
    }
}
