//! Running the real `aw-sync-samay` binary in isolated directories, as a user (or aw-qt) would.
#![allow(dead_code)] // each test crate uses a different subset

use std::path::{Path, PathBuf};
use std::process::Command;

/// Writes a config for the binary into `home` and returns its path.
pub fn write_config(home: &Path, base_url: &str, extra: &str) -> PathBuf {
    let path = home.join("aw-sync-samay-test.toml");
    let text = format!("[sync]\nbase_url = \"{base_url}\"\n{extra}\n");
    std::fs::write(&path, text).expect("write config");
    path
}

/// `aw-sync-samay` with HOME and every XDG directory inside `home`, no token and no log-level
/// override in the environment, and no arguments yet.
pub fn isolated_command(home: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_aw-sync-samay"));
    cmd.env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_DATA_HOME", home.join("data"))
        .env("XDG_CACHE_HOME", home.join("cache"))
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("AW_SYNC_SAMAY_TOKEN")
        .env_remove("RUST_LOG")
        .env_remove("LOG_LEVEL");
    cmd
}

/// `aw-sync-samay` with HOME and every XDG directory inside `home`, talking to aw-server on
/// `aw_port`, with the test token in the environment.
pub fn sync_command(home: &Path, aw_port: u16, config: &Path, token: &str) -> Command {
    let mut cmd = isolated_command(home);
    cmd.arg("--port")
        .arg(aw_port.to_string())
        .arg("--config")
        .arg(config)
        .env("AW_SYNC_SAMAY_TOKEN", token);
    cmd
}
