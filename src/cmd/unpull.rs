//! `--unpull DEVICE`: takes another device's imported buckets out of this aw-server (issue
//! 14), without touching the upstream.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use aw_sync_samay::pull;
use aw_sync_samay::state::Store;

use super::Loaded;

pub async fn run(cx: &Loaded<'_>, device: &str) -> anyhow::Result<ExitCode> {
    if !cx.state_path.exists() {
        anyhow::bail!(
            "nothing was pulled yet (no state database at {})",
            cx.state_path.display()
        );
    }
    let store = Arc::new(Store::open(&cx.state_path)?);
    let (dest, _) = store
        .current_destination()?
        .context("nothing was pulled yet: no sync has run")?;
    let deleted = pull::unpull(&cx.source, &store, dest, device).await?;
    println!(
        "unpulled {device}: deleted {} bucket(s) from aw-server{}{}; the upstream keeps its events, and it is not pulled again until the device selection (sync.pull_devices, sync.exclude_pull_devices) changes",
        deleted.len(),
        if deleted.is_empty() { "" } else { ": " },
        deleted.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}
