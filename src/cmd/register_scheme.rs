//! `--register-scheme`: registers this program as the handler of the deep-link scheme of
//! `auth.deep_link_uri`, so the OS starts it with `--callback` after a browser login.

use std::process::ExitCode;

use anyhow::Context as _;
use aw_sync_samay::auth::callback;

use super::Loaded;

pub fn run(cx: &Loaded<'_>) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("finding this program's path")?;
    let done = callback::register_scheme(&cx.config.auth.deep_link_uri, &exe)?;
    // The steps name the files written, and what was run or skipped.
    for s in &done.steps {
        println!("{s}");
    }
    Ok(ExitCode::SUCCESS)
}
