//! The status bucket: every daemon cycle records its outcome in the local aw-server, in the
//! bucket `aw-sync-samay_{hostname}` (type [`BUCKET_TYPE`]), so the sync's health shows up
//! where ActivityWatch users already look (the web UI's raw data, queries, other tools) without
//! a new UI — and history comes for free: "since when has it been failing?".
//!
//! Each outcome is a **heartbeat** with a pulsetime of about two intervals: consecutive cycles
//! with identical data merge into one growing event, so a daemon idling for a month leaves one
//! event, not 8,640. That is why the data holds nothing that changes on an idle cycle: the
//! cycle's duration is rounded to 0.1 s and there is no timestamp in it.
//!
//! Writing it is best effort: a failure is logged and never fails the cycle. The engine never
//! uploads this bucket (it skips [`super::OWN_BUCKET_PREFIX`]), so the status of a sync is not
//! itself synced.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde::Serialize;
use serde_json::{Map, Value};

use super::{CycleError, CycleReport, Engine, OWN_BUCKET_PREFIX};
use crate::source::{AwClient, Event, SourceError};
use crate::state::Store;

/// The bucket's `type`.
pub const BUCKET_TYPE: &str = "aw-sync-samay.status";
/// The bucket's `client`.
pub const CLIENT: &str = "aw-sync-samay";
/// Added to two intervals for the pulsetime, so a cycle that ran a little late still merges.
pub const PULSE_SLACK: Duration = Duration::from_secs(30);

/// `aw-sync-samay_{hostname}`, the naming of ActivityWatch's watchers' buckets.
pub fn bucket_id(hostname: &str) -> String {
    format!("{OWN_BUCKET_PREFIX}{hostname}")
}

/// The heartbeat pulsetime for cycles `interval` apart: 2 × interval + [`PULSE_SLACK`].
pub fn pulsetime(interval: Duration) -> f64 {
    // Saturating: `sync_interval` may be as large as u64::MAX seconds.
    interval
        .saturating_mul(2)
        .saturating_add(PULSE_SLACK)
        .as_secs_f64()
}

/// A cycle's duration as recorded: rounded *up* to the next of 0.1, 0.2, 0.5, 1, 2, 5, 10 …
/// seconds, so idle cycles (a few to a hundred ms each, with jitter) record the same value and
/// merge. Rounding to the nearest 0.1 made cycles near 50 ms alternate between 0.0 and 0.1.
pub fn rounded_secs(d: Duration) -> f64 {
    let secs = d.as_secs_f64();
    let mut step = 0.1;
    for _ in 0..40 {
        for m in [1.0, 2.0, 5.0] {
            if secs <= step * m {
                return step * m;
            }
        }
        step *= 10.0;
    }
    secs
}

/// The `status` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum State {
    #[serde(rename = "ok")]
    Ok,
    #[serde(rename = "error")]
    Error,
    #[serde(rename = "login required")]
    LoginRequired,
    #[serde(rename = "not configured")]
    NotConfigured,
}

/// The data of one status event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CycleStatus {
    pub status: State,
    /// The signed-in user's subject, when known.
    pub user: Option<String>,
    /// Events the upstream acknowledged in this cycle (newly stored or already held).
    pub delivered: u64,
    /// Events in aw-server not yet acknowledged, as `--status` counts them; `None` when
    /// aw-server could not be asked.
    pub pending: Option<u64>,
    /// Events the upstream refused for good, in total.
    pub quarantined: Option<u64>,
    /// Why the cycle failed (or why nothing is configured); `None` when it succeeded.
    pub last_error: Option<String>,
    /// Seconds the cycle took, rounded up to 0.1, 0.2, 0.5, 1, … (see [`rounded_secs`]).
    pub duration: f64,
    /// With `sync.pull`: the other devices' events this cycle copied, replaced or deleted in
    /// this aw-server (0 on an idle cycle, so idle cycles still merge). Absent when it is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pulled: Option<u64>,
}

impl CycleStatus {
    /// The status of a daemon cycle that ran, from its result. `None` when aw-server is down:
    /// there is nowhere to write it.
    pub fn of_cycle(
        result: &Result<CycleReport, CycleError>,
        took: Duration,
        user: Option<String>,
    ) -> Option<CycleStatus> {
        let pulled = result
            .as_ref()
            .ok()
            .and_then(|r| r.pull.as_ref())
            .map(|p| p.inserted + p.replaced + p.deleted);
        let (status, delivered, last_error) = match result {
            Ok(r) => (State::Ok, r.upload.delivered, None),
            Err(CycleError::SourceDown { .. } | CycleError::NotAwServer(_)) => return None,
            Err(e) if e.needs_login() => (State::LoginRequired, 0, Some(e.to_string())),
            Err(e) => (State::Error, 0, Some(e.to_string())),
        };
        Some(CycleStatus {
            status,
            user,
            delivered,
            pending: None,
            quarantined: None,
            last_error,
            duration: rounded_secs(took),
            pulled,
        })
    }

    /// The status of a daemon that has nothing to do: no upstream configured, or sync disabled
    /// (`why` says which).
    pub fn not_configured(why: &str) -> CycleStatus {
        CycleStatus {
            status: State::NotConfigured,
            user: None,
            delivered: 0,
            pending: None,
            quarantined: None,
            last_error: Some(why.to_string()),
            duration: 0.0,
            pulled: None,
        }
    }

    fn data(&self) -> Map<String, Value> {
        match serde_json::to_value(self) {
            Ok(Value::Object(m)) => m,
            // A struct of plain fields always serializes to an object.
            _ => Map::new(),
        }
    }
}

/// Records `status` as a heartbeat in `aw-sync-samay_{hostname}`, creating the bucket when
/// aw-server says it does not exist (first use, or the user deleted it, or a new database).
pub async fn write(
    source: &AwClient,
    hostname: &str,
    interval: Duration,
    status: &CycleStatus,
) -> Result<(), SourceError> {
    let id = bucket_id(hostname);
    let event = Event::new(Utc::now(), 0.0, status.data());
    let pulse = pulsetime(interval);
    match source.heartbeat(&id, &event, pulse).await {
        Err(SourceError::BucketNotFound(_)) => {
            source
                .create_bucket(&id, BUCKET_TYPE, CLIENT, hostname)
                .await?;
            source.heartbeat(&id, &event, pulse).await.map(|_| ())
        }
        other => other.map(|_| ()),
    }
}

/// Pending (in aw-server, not acknowledged — the `--status` count) and quarantined totals.
/// Either is `None` when it cannot be computed now. After a cycle that succeeded nothing is
/// pending by definition (it read and delivered everything up to its start), so aw-server is
/// not asked: an idle daemon's cycle stays one small request per bucket, and buckets the
/// privacy filters leave out never show as pending.
pub async fn backlog(
    source: &AwClient,
    store: &Arc<Store>,
    synced: bool,
) -> (Option<u64>, Option<u64>) {
    if synced {
        let store = Arc::clone(store);
        let quarantined = tokio::task::spawn_blocking(move || store.quarantined_total())
            .await
            .ok()
            .and_then(Result::ok);
        return (Some(0), quarantined);
    }
    let states = {
        let store = Arc::clone(store);
        tokio::task::spawn_blocking(move || store.bucket_statuses())
            .await
            .ok()
            .and_then(Result::ok)
    };
    let Some(states) = states else {
        return (None, None);
    };
    let quarantined = states.iter().map(|s| s.quarantined).sum();
    let delivered: BTreeMap<&str, u64> = states
        .iter()
        .map(|s| (s.bucket_id.as_str(), s.delivered_current))
        .collect();
    let pending = async {
        let buckets = source.get_buckets().await.ok()?;
        let mut pending = 0u64;
        for id in buckets
            .keys()
            .filter(|id| !id.starts_with(OWN_BUCKET_PREFIX))
        {
            let count = source.event_count(id).await.ok()?;
            pending += count.saturating_sub(delivered.get(id.as_str()).copied().unwrap_or(0));
        }
        Some(pending)
    }
    .await;
    (pending, Some(quarantined))
}

impl Engine {
    /// Records a daemon cycle's outcome in the status bucket. Never fails: a problem is logged.
    pub async fn record_status(&self, result: &Result<CycleReport, CycleError>, took: Duration) {
        let Some(mut status) = CycleStatus::of_cycle(result, took, self.tokens.user_id()) else {
            return;
        };
        (status.pending, status.quarantined) =
            backlog(&self.source, &self.store, result.is_ok()).await;
        if let Err(e) = write(
            &self.source,
            &self.hostname,
            self.settings.interval,
            &status,
        )
        .await
        {
            tracing::warn!(bucket = %bucket_id(&self.hostname), "could not record the cycle's status in aw-server: {e}");
        }
    }
}

/// While the daemon has nothing to do (`why`), records "not configured" every `interval`
/// until `until` resolves. Unreachable aw-server or not: never fails.
pub async fn not_configured_until(
    source: &AwClient,
    hostname: &str,
    interval: Duration,
    why: &str,
    until: impl Future<Output = ()>,
) {
    tokio::pin!(until);
    let status = CycleStatus::not_configured(why);
    loop {
        // `until` is polled throughout, so a stop is never held up by a slow aw-server.
        let written = tokio::select! {
            _ = &mut until => return,
            r = write(source, hostname, interval, &status) => r,
        };
        match written {
            Ok(()) => {}
            Err(SourceError::Unreachable { .. }) => {
                tracing::debug!("aw-server unreachable: status not recorded")
            }
            Err(e) => tracing::warn!("could not record the status in aw-server: {e}"),
        }
        // The write's request timeout must not wake the wait below (see `rearm_timers`).
        crate::lifecycle::rearm_timers().await;
        tokio::select! {
            _ = &mut until => return,
            _ = tokio::time::sleep(interval) => {},
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_cycles_record_identical_data() {
        // Idle cycles of 3 to 100 ms, either side of the old rounding edge at 50 ms, record
        // one value.
        let statuses: Vec<_> = [3, 31, 49, 51, 73, 100]
            .map(|ms| {
                CycleStatus::of_cycle(&Ok(CycleReport::default()), Duration::from_millis(ms), None)
            })
            .into_iter()
            .collect();
        assert!(statuses.windows(2).all(|w| w[0] == w[1]), "{statuses:?}");
        let a = statuses[0].clone().expect("a status");
        assert_eq!(a.duration, 0.1);
        assert_eq!(a.status, State::Ok);
        assert_eq!(rounded_secs(Duration::from_millis(1260)), 2.0);
        assert_eq!(rounded_secs(Duration::from_millis(180)), 0.2);
        assert_eq!(rounded_secs(Duration::from_secs(40)), 50.0);
    }

    #[test]
    fn data_has_every_field_with_aw_friendly_values() {
        let s = CycleStatus::not_configured("sync.base_url is empty");
        let data = s.data();
        for key in [
            "status",
            "user",
            "delivered",
            "pending",
            "quarantined",
            "last_error",
            "duration",
        ] {
            assert!(data.contains_key(key), "{key} missing in {data:?}");
        }
        assert_eq!(data["status"], "not configured");
        assert_eq!(
            serde_json::to_value(State::LoginRequired).expect("serializes"),
            "login required"
        );
    }

    #[test]
    fn a_cycle_that_pulled_records_what_it_wrote() {
        let off = CycleStatus::of_cycle(&Ok(CycleReport::default()), Duration::ZERO, None)
            .expect("recorded");
        assert!(!off.data().contains_key("pulled"), "no pull, no field");
        let report = CycleReport {
            pull: Some(Box::new(crate::pull::PullStats {
                inserted: 5,
                replaced: 2,
                deleted: 1,
                skipped: 9,
                ..Default::default()
            })),
            ..CycleReport::default()
        };
        let on = CycleStatus::of_cycle(&Ok(report), Duration::ZERO, None).expect("recorded");
        assert_eq!(on.data()["pulled"], 8);
    }

    #[test]
    fn pulsetime_spans_two_intervals() {
        assert_eq!(pulsetime(Duration::from_secs(300)), 630.0);
        // The largest interval the config accepts must not panic the daemon every cycle.
        assert!(pulsetime(Duration::from_secs(u64::MAX)) > 1e19);
        assert_eq!(bucket_id("laptop"), "aw-sync-samay_laptop");
    }
}
