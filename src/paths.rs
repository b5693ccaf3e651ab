//! Where aw-sync-samay keeps its files, laid out the way ActivityWatch's own modules do so that
//! users (and aw-qt's crash dialog) find them next to the siblings':
//!
//! * config: `<config_dir>/activitywatch/aw-sync-samay/aw-sync-samay[-testing].toml`
//! * state:  `<data_dir>/activitywatch/aw-sync-samay/state[-testing].sqlite`
//! * logs:   aw-core's log directory (`<cache_dir>/activitywatch/log/aw-sync-samay/` on Linux)
//! * lock:   `<cache_dir>/activitywatch/client_locks/aw-sync-samay-at-{host}-on-{port}`, the
//!   place aw-client-rust keeps its single-instance locks.
//!
//! The base directories come from the `directories` crate, which is what aw-server-rust uses
//! (through `dirs`), and which honours `XDG_CONFIG_HOME`, `XDG_DATA_HOME` and `XDG_CACHE_HOME` on
//! Linux — the tests rely on that to isolate everything in a temp dir. Nothing here creates
//! directories: the caller that writes a file creates its parent.

use std::path::{Path, PathBuf};

use chrono::NaiveDateTime;
use directories::BaseDirs;

/// The module name: directory names, file names and the lock name all derive from it, and aw-qt
/// matches log files against it.
pub const MODULE: &str = "aw-sync-samay";

/// aw-server's port when nothing says otherwise.
pub const DEFAULT_PORT: u16 = 5600;
/// aw-server's port with `--testing`.
pub const DEFAULT_TESTING_PORT: u16 = 5666;

/// Why a path could not be computed. Only a missing home directory makes that impossible, and
/// the daemon cannot do anything useful without one, so callers report it and stop.
#[derive(Debug, thiserror::Error)]
pub enum PathsError {
    #[error("cannot find the home directory (set HOME) to locate aw-sync-samay's files")]
    NoHomeDir,
}

fn base_dirs() -> Result<BaseDirs, PathsError> {
    BaseDirs::new().ok_or(PathsError::NoHomeDir)
}

/// `<config_dir>/activitywatch/aw-sync-samay/`.
pub fn config_dir() -> Result<PathBuf, PathsError> {
    Ok(base_dirs()?.config_dir().join("activitywatch").join(MODULE))
}

/// `<data_dir>/activitywatch/aw-sync-samay/`: the state database lives here.
pub fn data_dir() -> Result<PathBuf, PathsError> {
    Ok(base_dirs()?.data_dir().join("activitywatch").join(MODULE))
}

/// `<cache_dir>/activitywatch/aw-sync-samay/`: anything that may be deleted without loss.
pub fn cache_dir() -> Result<PathBuf, PathsError> {
    Ok(base_dirs()?.cache_dir().join("activitywatch").join(MODULE))
}

/// The config file's name; `--testing` gets its own file so a test instance never picks up the
/// real upstream.
pub fn config_file_name(testing: bool) -> String {
    if testing {
        format!("{MODULE}-testing.toml")
    } else {
        format!("{MODULE}.toml")
    }
}

/// The default config file: `config_dir()/aw-sync-samay[-testing].toml`.
pub fn config_file(testing: bool) -> Result<PathBuf, PathsError> {
    Ok(config_dir()?.join(config_file_name(testing)))
}

/// The state database: `data_dir()/state[-testing].sqlite`. Testing keeps its own cursors so
/// it never marks real events as delivered.
pub fn state_db(testing: bool) -> Result<PathBuf, PathsError> {
    let name = if testing {
        "state-testing.sqlite"
    } else {
        "state.sqlite"
    };
    Ok(data_dir()?.join(name))
}

/// The log directory, the one aw-core's `get_log_dir(module)` returns, because aw-qt's crash
/// dialog looks there for the newest file whose name contains the module name:
///
/// * Linux (and other Unix): `<cache_dir>/activitywatch/log/aw-sync-samay/`
/// * macOS: `~/Library/Logs/activitywatch/aw-sync-samay/`
/// * Windows: `%LOCALAPPDATA%\activitywatch\activitywatch\Logs\aw-sync-samay\`
pub fn log_dir() -> Result<PathBuf, PathsError> {
    let base = base_dirs()?;
    Ok(log_dir_in(&base))
}

#[cfg(target_os = "macos")]
fn log_dir_in(base: &BaseDirs) -> PathBuf {
    base.home_dir()
        .join("Library")
        .join("Logs")
        .join("activitywatch")
        .join(MODULE)
}

#[cfg(windows)]
fn log_dir_in(base: &BaseDirs) -> PathBuf {
    // platformdirs' user_log_dir("activitywatch") with its default appauthor = appname.
    base.data_local_dir()
        .join("activitywatch")
        .join("activitywatch")
        .join("Logs")
        .join(MODULE)
}

#[cfg(not(any(target_os = "macos", windows)))]
fn log_dir_in(base: &BaseDirs) -> PathBuf {
    base.cache_dir()
        .join("activitywatch")
        .join("log")
        .join(MODULE)
}

/// The prefix every log file of this module (and variant) starts with; log pruning keys on it.
pub fn log_file_prefix(testing: bool) -> String {
    if testing {
        format!("{MODULE}_testing_")
    } else {
        format!("{MODULE}_")
    }
}

/// `aw-sync-samay_[testing_]YYYY-MM-DDTHH-MM-SS.log`, aw-core's format (local time, no colons so
/// the name is valid on Windows). The name sorts by start time.
pub fn log_file_name(testing: bool, now: NaiveDateTime) -> String {
    format!(
        "{}{}.log",
        log_file_prefix(testing),
        now.format("%Y-%m-%dT%H-%M-%S")
    )
}

/// aw-server-rust's config file, where the user may have moved aw-server to another port.
pub fn aw_server_config_file(testing: bool) -> Result<PathBuf, PathsError> {
    let name = if testing {
        "config-testing.toml"
    } else {
        "config.toml"
    };
    Ok(base_dirs()?
        .config_dir()
        .join("activitywatch")
        .join("aw-server-rust")
        .join(name))
}

/// The default port for `--port` when it is not given: `port` from aw-server-rust's config
/// (as aw-sync and aw-qt read it), else 5600 (5666 with `testing`).
///
/// Never fails: aw-qt starts us with no arguments but `--testing`, so refusing to start over a
/// broken aw-server config would only make us crash-loop. A malformed file is logged as a
/// warning and the default used.
pub fn aw_server_port(testing: bool) -> u16 {
    let default = if testing {
        DEFAULT_TESTING_PORT
    } else {
        DEFAULT_PORT
    };
    let path = match aw_server_config_file(testing) {
        Ok(path) => path,
        Err(_) => return default,
    };
    match read_aw_server_port(&path) {
        Ok(Some(port)) => port,
        Ok(None) => default,
        Err(why) => {
            tracing::warn!(
                "ignoring aw-server-rust's config {}: {why}; using port {default}",
                path.display()
            );
            default
        }
    }
}

/// `port` from an aw-server-rust config file. `Ok(None)`: no file, or no `port` key (aw-server
/// then uses its default too). `Err`: unreadable or malformed, with a one-line reason.
pub fn read_aw_server_port(path: &Path) -> Result<Option<u16>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read it: {e}")),
    };
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| format!("not valid TOML: {}", e.message().trim()))?;
    match table.get("port") {
        None => Ok(None),
        Some(toml::Value::Integer(n)) => match u16::try_from(*n) {
            Ok(port) if port != 0 => Ok(Some(port)),
            _ => Err(format!("`port = {n}` is not a port number (1-65535)")),
        },
        Some(other) => Err(format!(
            "`port` is a {}, expected an integer",
            other.type_str()
        )),
    }
}

/// `<cache_dir>/activitywatch/client_locks/aw-sync-samay-at-{host}-on-{port}`, the naming
/// aw-client-rust uses, so one lock per aw-server instance. Characters that cannot appear in a
/// file name on every platform (`:` of an IPv6 host, path separators) become `_`.
pub fn lock_file(host: &str, port: u16) -> Result<PathBuf, PathsError> {
    let host: String = host
        .chars()
        .map(|c| match c {
            '/' | '\\' | ':' | '*' | '?' | '"' | '<' | '>' | '|' => '_',
            c if c.is_control() => '_',
            c => c,
        })
        .collect();
    Ok(base_dirs()?
        .cache_dir()
        .join("activitywatch")
        .join("client_locks")
        .join(format!("{MODULE}-at-{host}-on-{port}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    #[test]
    fn log_file_name_matches_aw_core() {
        let now = NaiveDate::from_ymd_opt(2024, 3, 7)
            .and_then(|d| d.and_hms_opt(9, 5, 1))
            .expect("valid date");
        assert_eq!(
            log_file_name(false, now),
            "aw-sync-samay_2024-03-07T09-05-01.log"
        );
        assert_eq!(
            log_file_name(true, now),
            "aw-sync-samay_testing_2024-03-07T09-05-01.log"
        );
    }

    #[test]
    fn config_file_names() {
        assert_eq!(config_file_name(false), "aw-sync-samay.toml");
        assert_eq!(config_file_name(true), "aw-sync-samay-testing.toml");
    }

    #[test]
    fn aw_server_port_parsing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        assert_eq!(read_aw_server_port(&path), Ok(None));

        std::fs::write(&path, "address = \"127.0.0.1\"\nport = 5601\n").expect("write");
        assert_eq!(read_aw_server_port(&path), Ok(Some(5601)));

        std::fs::write(&path, "address = \"127.0.0.1\"\n").expect("write");
        assert_eq!(read_aw_server_port(&path), Ok(None));

        for bad in [
            "port = \"5601\"\n",
            "port = 70000\n",
            "port = 0\n",
            "port = [\n",
        ] {
            std::fs::write(&path, bad).expect("write");
            assert!(
                read_aw_server_port(&path).is_err(),
                "{bad:?} should be refused"
            );
        }
    }
}
