//! `--status`: what a user (or a script, with `--json`) needs to know at a glance — is
//! aw-server there, is the upstream there, where the token comes from, and per bucket how far
//! the sync got. It reads the state database and asks both servers; it never needs the
//! single-instance lock, so it works while the daemon runs. Tokens never appear in it.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::source::AwClient;
use crate::state::{BucketStatus, CycleRecord, QuarantineEntry, Store};
use crate::upstream::UpstreamClient;

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub aw_server: Reach,
    pub upstream: Reach,
    /// Where the bearer token comes from ("environment (AW_SYNC_SAMAY_TOKEN)", "none", ...).
    pub token: String,
    pub state_db: String,
    pub device_id: Option<String>,
    pub buckets: Vec<BucketLine>,
    pub pending: u64,
    pub quarantined: u64,
    pub last_cycle: CycleRecord,
    /// The newest quarantined events, so a user can see what the upstream refused and why.
    pub quarantine: Vec<QuarantineEntry>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Reach {
    pub url: String,
    pub reachable: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct BucketLine {
    #[serde(flatten)]
    pub state: BucketStatus,
    /// Events in aw-server not yet acknowledged (aw-server's count minus those delivered);
    /// `None` when aw-server could not be asked.
    pub pending: Option<u64>,
}

/// Gathers the status. Nothing here fails the command except an unreadable state database.
pub async fn gather(
    source: &AwClient,
    upstream: Option<&UpstreamClient>,
    token: String,
    state_path: &Path,
) -> anyhow::Result<Status> {
    let aw_server = match source.info().await {
        Ok(info) => Reach {
            url: source.base_url().to_string(),
            reachable: true,
            detail: format!("aw-server {} on {}", info.version, info.hostname),
        },
        Err(e) => Reach {
            url: source.base_url().to_string(),
            reachable: false,
            detail: e.to_string(),
        },
    };
    let upstream = match upstream {
        None => Reach {
            url: String::new(),
            reachable: false,
            detail: "not configured: set sync.base_url in the config file".into(),
        },
        Some(up) => match up.health().await {
            Ok(()) => Reach {
                url: up.health_url().to_string(),
                reachable: true,
                detail: "ok".into(),
            },
            Err(e) => Reach {
                url: up.health_url().to_string(),
                reachable: false,
                detail: e.to_string(),
            },
        },
    };
    let (states, record, device_id, quarantine) = if state_path.exists() {
        let store = Store::open(state_path)?;
        (
            store.bucket_statuses()?,
            store.cycle_record()?,
            Some(store.device_id().to_string()),
            store.quarantine(5)?,
        )
    } else {
        (Vec::new(), CycleRecord::default(), None, Vec::new())
    };
    let mut buckets = Vec::with_capacity(states.len());
    for state in states {
        let pending = if aw_server.reachable {
            match source.event_count(&state.bucket_id).await {
                Ok(n) => Some(n.saturating_sub(state.delivered_current)),
                Err(_) => None,
            }
        } else {
            None
        };
        buckets.push(BucketLine { state, pending });
    }
    Ok(Status {
        aw_server,
        upstream,
        token,
        state_db: state_path.display().to_string(),
        device_id,
        pending: buckets.iter().filter_map(|b| b.pending).sum(),
        quarantined: buckets.iter().map(|b| b.state.quarantined).sum(),
        buckets,
        last_cycle: record,
        quarantine,
    })
}

impl Status {
    /// The human form: one line per fact, a table of buckets.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mark = |ok: bool| if ok { "ok  " } else { "DOWN" };
        let _ = writeln!(
            out,
            "aw-server  {} {} ({})",
            mark(self.aw_server.reachable),
            self.aw_server.url,
            self.aw_server.detail
        );
        let _ = writeln!(
            out,
            "upstream   {} {} ({})",
            mark(self.upstream.reachable),
            self.upstream.url,
            self.upstream.detail
        );
        let _ = writeln!(out, "token      {}", self.token);
        let _ = writeln!(out, "state      {}", self.state_db);
        let never = "never".to_string();
        let _ = writeln!(
            out,
            "last sync  {}   last cycle {}",
            self.last_cycle.last_success.as_ref().unwrap_or(&never),
            self.last_cycle.last_cycle.as_ref().unwrap_or(&never)
        );
        if let Some(e) = &self.last_cycle.last_error {
            let _ = writeln!(out, "last error {e}");
        }
        let _ = writeln!(
            out,
            "pending    {}   quarantined {}",
            self.pending, self.quarantined
        );
        if !self.buckets.is_empty() {
            let _ = writeln!(
                out,
                "\n{:<40} {:>10} {:>10} {:>9} {:>11}  cursor",
                "bucket", "delivered", "versions", "pending", "quarantined"
            );
            for b in &self.buckets {
                let pending = b.pending.map_or("?".to_string(), |p| p.to_string());
                let _ = writeln!(
                    out,
                    "{:<40} {:>10} {:>10} {:>9} {:>11}  {}",
                    b.state.bucket_id,
                    b.state.delivered,
                    b.state.versions_sent,
                    pending,
                    b.state.quarantined,
                    b.state.cursor.as_deref().unwrap_or("-")
                );
            }
        }
        if !self.quarantine.is_empty() {
            let _ = writeln!(out, "\nquarantined events (newest first):");
            for q in &self.quarantine {
                let _ = writeln!(
                    out,
                    "  {} #{} at {}: {}",
                    q.bucket_id, q.event_id, q.at, q.reason
                );
            }
        }
        out
    }
}
