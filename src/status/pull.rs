//! `--status`'s pull section (issue 14): per other device, the last change applied, the
//! events this aw-server holds of it and how far behind the copy is; and, with the pull off,
//! the suggestion to turn it on when the upstream has other devices (what the last sync saw).

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::printable::printable;
use crate::state::{DestId, PullDeviceStatus, StateError, Store};

/// The pull as the state knows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PullLine {
    /// `sync.pull`.
    pub enabled: bool,
    /// The feed position applied.
    pub seq: i64,
    /// When a pull last reached the end of the feed: everything the other devices had
    /// delivered by then is here.
    pub caught_up: Option<String>,
    pub devices: Vec<PullDeviceStatus>,
    /// Other devices the upstream listed at the last check (made with the pull off).
    pub other_devices: Option<u64>,
}

impl PullLine {
    pub fn read(store: &Store, dest: Option<DestId>, enabled: bool) -> Result<Self, StateError> {
        let other_devices = store
            .meta(crate::pull::OTHER_DEVICES)?
            .and_then(|v| v.parse().ok());
        let Some(dest) = dest else {
            return Ok(PullLine {
                enabled,
                other_devices,
                ..PullLine::default()
            });
        };
        let feed = store.pull_feed(dest)?;
        Ok(PullLine {
            enabled,
            seq: feed.seq,
            caught_up: feed.caught_up,
            devices: store.pull_status(dest)?,
            other_devices,
        })
    }

    /// The suggestion to turn the pull on, when there is something to pull.
    pub fn suggestion(&self, config: &str) -> Option<String> {
        match self.other_devices {
            Some(n) if n > 0 && !self.enabled => Some(format!(
                "the upstream has {n} other device{} of this account: set sync.pull = true in {config} to see them in this ActivityWatch",
                if n == 1 { "" } else { "s" }
            )),
            _ => None,
        }
    }

    pub fn render(&self, out: &mut String, now: DateTime<Utc>) {
        if !self.enabled && self.devices.is_empty() {
            return;
        }
        let state = if self.enabled { "on" } else { "off" };
        let _ = writeln!(out, "\nPull ({state}; feed position {})", self.seq);
        let lag = match self.caught_up.as_deref() {
            Some(t) => format!("up to date as of {}", super::render::when(Some(t), now)),
            None => "not caught up yet (a first pull is in progress or failed)".into(),
        };
        let _ = writeln!(out, "  lag: {lag}");
        for d in &self.devices {
            let last = match (d.last_seq, d.last_at.as_deref()) {
                (Some(seq), at) => format!(
                    "last change #{seq} applied {}",
                    super::render::when(at, now)
                ),
                _ => "nothing applied yet".into(),
            };
            let named = if d.origins.is_empty() {
                String::new()
            } else {
                format!(" as {}", d.origins.join(", "))
            };
            let _ = writeln!(
                out,
                "  {} ({}){}: {} events here, {last}{}",
                printable(if d.hostname.is_empty() {
                    "?"
                } else {
                    &d.hostname
                }),
                d.device_id,
                printable(&named),
                d.events,
                if d.unpulled { " — unpulled" } else { "" }
            );
        }
    }
}
