//! The pull (issue 14): the other devices of the same account, in this ActivityWatch. Each
//! cycle with `sync.pull = true` follows the upstream's change feed (`GET v1/changes`) from
//! the last seq it applied and writes the other devices' events into the local aw-server, in
//! buckets named as aw-sync names them: `{bucket_id}-synced-from-{origin}`, origin = the
//! bucket's host name on its device (the imported bucket's `hostname` too, same `type` and
//! `client`), so the web UI groups them by host and its multi-device query finds them.
//!
//! * **Two devices with one host name** are told apart: the first device seen with a host
//!   name keeps it as its origin; any other device with that name (or with this machine's own
//!   name) gets `{hostname}-{first 8 characters of its device id}`. The choice is recorded, so
//!   a device keeps its buckets' names.
//! * **Exactly once locally**: every copied event has a mapping (device, bucket, event id) →
//!   local event id, recorded in one transaction with the feed position ([`crate::state`]). A
//!   new version replaces the local event in place (same id); a tombstone deletes it; a version
//!   already held (same hash) is not written again. Inserts are the one write that is not
//!   idempotent: their time spans and sizes are recorded before they are sent, and after a
//!   crash every event in such a span of a pull bucket that no mapping names is deleted before
//!   the page is applied again — and again by later sweeps, for events aw-server was still
//!   writing for the dead sidecar, until as many as were sent have been seen ([`sweep`]).
//! * **Never an echo**: this device's own changes are skipped; pulled buckets (any bucket whose
//!   id has `-synced-from-`) are never pushed ([`is_pulled_bucket`]); only buckets the pull made
//!   itself are ever written — a bucket of that name that it did not make (the user's, or
//!   aw-sync's) is left alone and reported.

mod apply;
mod copies;
mod sweep;
mod unpull;

use std::collections::BTreeMap;

use crate::source::SourceError;
use crate::state::StateError;
use crate::upstream::UpstreamError;

pub use apply::Puller;
pub use unpull::unpull;

/// The `meta` key of how many other devices the upstream listed at the last check, and of
/// when that was (checked at most once a day with the pull off, for `--status`'s suggestion).
pub const OTHER_DEVICES: &str = "pull_other_devices";
pub const OTHER_DEVICES_AT: &str = "pull_other_devices_at";

/// With the pull off: at most once a day, asks the upstream how many other devices the account
/// has and records it for `--status`. Best effort: an upstream without `v1/devices` just
/// leaves nothing to suggest.
pub async fn note_other_devices(
    upstream: &dyn crate::upstream::BatchSink,
    token: &crate::auth::AccessToken,
    store: &std::sync::Arc<crate::state::Store>,
    now: chrono::DateTime<chrono::Utc>,
) {
    let checked = store
        .meta(OTHER_DEVICES_AT)
        .ok()
        .flatten()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok());
    if checked.is_some_and(|t| {
        let age = now.signed_duration_since(t);
        age >= chrono::TimeDelta::zero() && age < chrono::TimeDelta::days(1)
    }) {
        return;
    }
    match upstream.devices(token).await {
        Ok(list) => {
            let own = store.device_id().to_string();
            let others = list.devices.iter().filter(|d| d.device_id != own).count();
            let _ = store.set_meta(OTHER_DEVICES, &others.to_string());
        }
        Err(e) => tracing::debug!("could not list the upstream's devices: {e}"),
    }
    // Asked, whatever the answer: an upstream without the endpoint is asked once a day, not
    // every cycle.
    let _ = store.set_meta(OTHER_DEVICES_AT, &now.to_rfc3339());
}

/// What separates a bucket id from its origin in an imported bucket's id, as in aw-sync.
pub const SYNCED_FROM: &str = "-synced-from-";

/// Whether a bucket is another device's, imported (by the pull or by aw-sync): never pushed,
/// since its own device pushes it.
pub fn is_pulled_bucket(bucket_id: &str) -> bool {
    bucket_id.contains(SYNCED_FROM)
}

/// The local name of another device's bucket.
pub fn local_bucket_id(bucket_id: &str, origin: &str) -> String {
    format!("{bucket_id}{SYNCED_FROM}{origin}")
}

/// The origin of a device whose host name is taken here (by this machine or by another
/// device): the name with the start of its device id.
pub fn distinct_origin(hostname: &str, device_id: &str) -> String {
    let short: String = device_id.chars().filter(|c| *c != '-').take(8).collect();
    format!("{hostname}-{short}")
}

/// `[sync] pull`, `pull_devices`, `exclude_pull_devices`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullSettings {
    pub enabled: bool,
    /// Host names or device ids; empty: every other device.
    pub devices: Vec<String>,
    /// Host names or device ids; wins over `devices`.
    pub exclude: Vec<String>,
    /// Changes asked for per feed request.
    pub page: usize,
}

/// Changes per feed request. Each page is one insert per bucket into aw-server, and the
/// fewer inserts the less aw-server spends per event: the 1M-event pull into the
/// aw-server-rust stand-in took 1.86× its floor with pages of 1,000 and 1.60× with 2,500
/// (before inserts overlapped planning), 1.51× with 5,000 but at 25.7 MiB peak RSS (goal 25 MB).
pub const PULL_PAGE: usize = 2500;

impl PullSettings {
    pub fn from_config(sync: &crate::config::SyncConfig) -> PullSettings {
        PullSettings {
            enabled: sync.pull,
            devices: sync.pull_devices.clone(),
            exclude: sync.exclude_pull_devices.clone(),
            page: PULL_PAGE,
        }
    }

    /// Whether a device is pulled, by its id or any of its host names (the device's, and the
    /// one its buckets carry).
    pub fn selects(&self, device_id: &str, hostnames: &[&str]) -> bool {
        let named = |list: &[String]| {
            list.iter()
                .any(|n| n == device_id || hostnames.iter().any(|h| !h.is_empty() && n == h))
        };
        !named(&self.exclude) && (self.devices.is_empty() || named(&self.devices))
    }

    /// What the selection is, as recorded with the feed position: when it changes, the feed
    /// is read again from the start so a newly selected device's history arrives.
    pub fn fingerprint(&self) -> String {
        let mut devices = self.devices.clone();
        devices.sort();
        let mut exclude = self.exclude.clone();
        exclude.sort();
        format!("pull={};exclude={}", devices.join(","), exclude.join(","))
    }
}

/// What a pull did in one cycle.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PullStats {
    /// Feed entries read.
    pub changes: u64,
    /// Events copied into the local aw-server for the first time.
    pub inserted: u64,
    /// Local events replaced by a new version.
    pub replaced: u64,
    /// Local events deleted (tombstones).
    pub deleted: u64,
    /// Feed entries of this device, of devices not selected, or already held.
    pub skipped: u64,
    /// Events left by an interrupted earlier pull, deleted before applying again.
    pub swept: u64,
    /// Requests that wrote to aw-server (inserts, replacements, deletes, new buckets).
    pub writes: u64,
    /// The feed position after the pull.
    pub seq: i64,
    /// Per origin device (its host name): events copied, replaced or deleted this cycle.
    pub per_device: BTreeMap<String, u64>,
    /// Buckets named like a pulled one but not made by the pull: left alone.
    pub conflicts: Vec<String>,
}

/// Why a pull stopped. The feed position stays where the last complete page left it: the next
/// cycle resumes there.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("the upstream's change feed: {0}")]
    Upstream(#[from] UpstreamError),
    #[error("writing into aw-server: {0}")]
    Source(#[from] SourceError),
    #[error(transparent)]
    State(#[from] StateError),
    /// aw-server did not show events just inserted (or a feed entry is malformed): the page is
    /// applied again next cycle, after the sweep of its inserts.
    #[error("{0}")]
    Inconsistent(String),
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_aw_sync_and_tell_same_host_names_apart() {
        assert_eq!(
            local_bucket_id("aw-watcher-window_laptop", "laptop"),
            "aw-watcher-window_laptop-synced-from-laptop"
        );
        assert!(is_pulled_bucket(
            "aw-watcher-window_laptop-synced-from-laptop"
        ));
        assert!(!is_pulled_bucket("aw-watcher-window_laptop"));
        assert_eq!(
            distinct_origin("laptop", "5f1c2d8e-9a43-4b7a-8f0e-2c4d6e8f0a1b"),
            "laptop-5f1c2d8e"
        );
    }

    #[test]
    fn selection_by_host_name_or_device_id_exclusion_wins() {
        let s = PullSettings {
            enabled: true,
            devices: vec!["laptop".into(), "id-2".into()],
            exclude: vec!["id-1".into()],
            page: 10,
        };
        assert!(!s.selects("id-1", &["laptop"]), "excluded by id wins");
        assert!(s.selects("id-3", &["laptop"]));
        assert!(s.selects("id-3", &["desk", "laptop"]), "any of its names");
        assert!(s.selects("id-2", &["desk"]));
        assert!(!s.selects("id-4", &["desk", ""]));
        let all = PullSettings::default();
        assert!(all.selects("x", &["y"]));
        assert_ne!(s.fingerprint(), all.fingerprint());
    }
}
