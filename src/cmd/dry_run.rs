//! `--once --dry-run`: what a sync would send now, filtered and redacted, sending and recording
//! nothing. No instance lock (it writes nothing, so it may run beside the daemon), no upstream,
//! no token.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use aw_sync_samay::engine::{Engine, Settings};
use aw_sync_samay::hint;
use aw_sync_samay::state::{DestKey, Store};
use aw_sync_samay::upstream::dry_run::DryRunSink;

use super::Loaded;

pub async fn run(cx: Loaded<'_>) -> anyhow::Result<ExitCode> {
    if !cx.args.once {
        bail!(
            "--dry-run goes with --once: {}",
            hint::command("--once --dry-run")
        );
    }
    let store = Arc::new(Store::open(&cx.state_path).context("opening the sync state")?);
    let sink = Arc::new(DryRunSink::default());
    let destination = destination(&store, &cx.config.sync.base_url)?;
    let engine = Engine::dry_run(
        cx.source,
        store,
        Settings::from_config(&cx.config.sync),
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

/// The destination a dry run reports against: the one the last sync went to, when that is the
/// configured upstream (working out the account would need the upstream, which a dry run does
/// not ask); else a new one, to which everything would be sent.
fn destination(store: &Store, base_url: &str) -> anyhow::Result<DestKey> {
    let fresh = DestKey::new(base_url, "");
    Ok(match store.current_destination()? {
        Some((_, key)) if key.base_url == fresh.base_url => key,
        _ => fresh,
    })
}
