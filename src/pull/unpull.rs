//! `--unpull DEVICE`: a device's imported buckets out of this aw-server, the upstream untouched.

use std::collections::HashSet;
use std::sync::Arc;

use super::apply::db;
use super::PullError;
use crate::source::{AwClient, SourceError};
use crate::state::{DestId, PullBucket, Store};

/// `--unpull DEVICE` (a host name or device id): deletes the local buckets the pull made for
/// that device and stops pulling it (until the device selection in the config changes). The
/// upstream is not touched. Returns the buckets deleted.
pub async fn unpull(
    source: &AwClient,
    store: &Arc<Store>,
    dest: DestId,
    device: &str,
) -> Result<Vec<String>, PullError> {
    let rows = db(store, move |s| s.pull_buckets(dest)).await?;
    let status = db(store, move |s| s.pull_status(dest)).await?;
    let ids: HashSet<String> = status
        .iter()
        .filter(|d| d.device_id == device || d.hostname == device)
        .map(|d| d.device_id.clone())
        .chain(
            rows.iter()
                .filter(|b| b.device_id == device || b.origin == device)
                .map(|b| b.device_id.clone()),
        )
        .collect();
    if ids.is_empty() {
        return Err(PullError::Inconsistent(format!(
            "no pulled device is named {device:?} (see --status for the pulled devices)"
        )));
    }
    let mine: Vec<&PullBucket> = rows.iter().filter(|b| ids.contains(&b.device_id)).collect();
    let mut deleted = Vec::new();
    for b in &mine {
        match source.delete_bucket(&b.local_bucket).await {
            Ok(()) | Err(SourceError::BucketNotFound(_)) => deleted.push(b.local_bucket.clone()),
            Err(e) => return Err(e.into()),
        }
    }
    let forget: Vec<i64> = mine.iter().map(|b| b.row).collect();
    let marks: Vec<String> = ids.into_iter().collect();
    db(store, move |s| {
        s.pull_forget_buckets(&forget)?;
        for id in &marks {
            s.pull_mark_unpulled(dest, id)?;
        }
        Ok(())
    })
    .await?;
    Ok(deleted)
}
