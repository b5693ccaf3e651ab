//! `--status`: what a user (or a script, with `--json`) needs to know at a glance — is
//! aw-server there, is the upstream there, where the token comes from, and per bucket how far
//! the sync got. It reads the state database and asks both servers; it never needs the
//! single-instance lock, so it works while the daemon runs. Tokens never appear in it.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::printable::printable;
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
    /// The human form, readable at a glance: connection, sync, what to do next, then a table
    /// of buckets. The first word of each line says what it is about (scripts use `--json`).
    pub fn render(&self) -> String {
        self.render_at(chrono::Utc::now())
    }

    /// [`Status::render`] as seen at `now` (relative times are computed from it). Text that
    /// came from outside — server details, errors, bucket ids, the user name — goes through
    /// the printable filter: this is written to a terminal.
    pub fn render_at(&self, now: chrono::DateTime<chrono::Utc>) -> String {
        let mut out = String::new();
        let mark = |ok: bool| if ok { "ok  " } else { "DOWN" };
        let _ = writeln!(out, "Connection");
        let _ = writeln!(
            out,
            "aw-server  {} {} ({})",
            mark(self.aw_server.reachable),
            self.aw_server.url,
            printable(&self.aw_server.detail)
        );
        let upstream_url = if self.upstream.url.is_empty() {
            "-"
        } else {
            &self.upstream.url
        };
        let _ = writeln!(
            out,
            "upstream   {} {} ({})",
            mark(self.upstream.reachable),
            upstream_url,
            printable(&self.upstream.detail)
        );
        let _ = writeln!(out, "token      {}", printable(&self.token));

        let _ = writeln!(out, "\nSync");
        let _ = writeln!(
            out,
            "last sync  {}",
            when(self.last_cycle.last_success.as_deref(), now)
        );
        if let Some(e) = &self.last_cycle.last_error {
            let _ = writeln!(
                out,
                "last try   {} — failed",
                when(self.last_cycle.last_cycle.as_deref(), now)
            );
            let _ = writeln!(out, "last error {}", printable(e));
        }
        let _ = writeln!(
            out,
            "pending    {}   quarantined {}",
            self.pending, self.quarantined
        );
        let _ = writeln!(out, "state      {}", self.state_db);

        let todo = self.next_steps();
        if !todo.is_empty() {
            let _ = writeln!(out, "\nTo do");
            for t in &todo {
                let _ = writeln!(out, "  - {t}");
            }
        }

        if !self.buckets.is_empty() {
            let w = self
                .buckets
                .iter()
                .map(|b| printable(&b.state.bucket_id).chars().count())
                .max()
                .unwrap_or(0)
                .max("bucket".len());
            let _ = writeln!(
                out,
                "\n{:<w$}  {:>9}  {:>8}  {:>7}  {:>11}  cursor",
                "bucket", "delivered", "versions", "pending", "quarantined"
            );
            for b in &self.buckets {
                let pending = b.pending.map_or("?".to_string(), |p| p.to_string());
                let _ = writeln!(
                    out,
                    "{:<w$}  {:>9}  {:>8}  {:>7}  {:>11}  {}",
                    printable(&b.state.bucket_id),
                    b.state.delivered,
                    b.state.versions_sent,
                    pending,
                    b.state.quarantined,
                    b.state.cursor.as_deref().unwrap_or("-")
                );
            }
        }
        if !self.quarantine.is_empty() {
            let _ = writeln!(
                out,
                "\nquarantined events (newest first; the upstream refused them — fix the upstream or the event, they are not retried):"
            );
            for q in &self.quarantine {
                let _ = writeln!(
                    out,
                    "  {} #{} at {}: {}",
                    printable(&q.bucket_id),
                    q.event_id,
                    q.at,
                    printable(&q.reason)
                );
            }
        }
        out
    }

    /// What the user should do, from what is wrong (empty when nothing is).
    fn next_steps(&self) -> Vec<String> {
        let mut todo = Vec::new();
        if !self.aw_server.reachable {
            todo.push(format!(
                "aw-server is not answering at {}: start ActivityWatch (aw-qt or aw-server), or pass --port/--testing if it listens elsewhere",
                self.aw_server.url
            ));
        }
        if self.upstream.url.is_empty() {
            todo.push(
                "no upstream: set sync.base_url in the config file (or try --dev --once)".into(),
            );
        } else if !self.upstream.reachable {
            todo.push(format!(
                "the upstream is not answering at {}: check the network, and sync.base_url in the config file",
                self.upstream.url
            ));
        }
        if self.last_cycle.last_success.is_none() && self.last_cycle.last_error.is_none() {
            todo.push(
                "no sync has run yet: start the daemon (or aw-qt), or run aw-sync-samay --once"
                    .into(),
            );
        }
        if self.quarantined > 0 {
            todo.push(format!(
                "{} event(s) were refused by the upstream and quarantined: see below, and the log",
                self.quarantined
            ));
        }
        todo
    }
}

/// "3 min ago (2026-11-25 14:05:00 +01:00)" for an RFC 3339 time; "never" for none.
fn when(t: Option<&str>, now: chrono::DateTime<chrono::Utc>) -> String {
    let Some(t) = t else {
        return "never".into();
    };
    match chrono::DateTime::parse_from_rfc3339(t) {
        Ok(at) => {
            let local = at.with_timezone(&chrono::Local);
            format!(
                "{} ({})",
                ago(now.signed_duration_since(at.with_timezone(&chrono::Utc))),
                local.format("%Y-%m-%d %H:%M:%S %:z")
            )
        }
        Err(_) => t.to_string(),
    }
}

/// A duration before now, in the largest whole unit: "just now", "42 s ago", "3 min ago",
/// "5 h ago", "2 days ago"; a time in the future (a clock change) says so.
pub fn ago(d: chrono::Duration) -> String {
    let s = d.num_seconds();
    if s < 0 {
        return "in the future (check the clock)".into();
    }
    match s {
        0..=4 => "just now".into(),
        5..=59 => format!("{s} s ago"),
        60..=3599 => format!("{} min ago", s / 60),
        3600..=172_799 => format!("{} h ago", s / 3600),
        _ => format!("{} days ago", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration as D, TimeZone, Utc};

    #[test]
    fn relative_times_use_the_largest_whole_unit() {
        assert_eq!(ago(D::seconds(2)), "just now");
        assert_eq!(ago(D::seconds(42)), "42 s ago");
        assert_eq!(ago(D::seconds(200)), "3 min ago");
        assert_eq!(ago(D::hours(5)), "5 h ago");
        assert_eq!(ago(D::days(3)), "3 days ago");
        assert!(ago(D::seconds(-30)).contains("future"));
    }

    fn status(aw_ok: bool, up_url: &str, error: Option<&str>) -> Status {
        let reach = |url: &str, ok: bool| Reach {
            url: url.into(),
            reachable: ok,
            detail: if ok {
                "ok".into()
            } else {
                "connection refused".into()
            },
        };
        Status {
            aw_server: reach("http://127.0.0.1:5600", aw_ok),
            upstream: reach(up_url, !up_url.is_empty()),
            token: "environment (AW_SYNC_SAMAY_TOKEN)".into(),
            state_db: "/tmp/state.sqlite".into(),
            device_id: None,
            buckets: vec![
                BucketLine {
                    state: BucketStatus {
                        bucket_id: "aw-watcher-window_a-rather-long-hostname".into(),
                        generation: 0,
                        cursor: Some("2026-11-25T13:05:00Z".into()),
                        delivered: 81234,
                        delivered_current: 81234,
                        versions_sent: 84002,
                        quarantined: 0,
                    },
                    pending: Some(0),
                },
                BucketLine {
                    state: BucketStatus {
                        bucket_id: "afk".into(),
                        generation: 0,
                        cursor: None,
                        delivered: 5,
                        delivered_current: 5,
                        versions_sent: 5,
                        quarantined: 0,
                    },
                    pending: None,
                },
            ],
            pending: 0,
            quarantined: 0,
            last_cycle: CycleRecord {
                last_cycle: Some("2026-11-25T13:05:00+00:00".into()),
                last_success: Some("2026-11-25T13:02:00+00:00".into()),
                last_error: error.map(Into::into),
            },
            quarantine: Vec::new(),
        }
    }

    #[test]
    fn the_text_groups_connection_sync_and_an_aligned_bucket_table() {
        let now = Utc.with_ymd_and_hms(2026, 11, 25, 13, 5, 30).unwrap();
        let text = status(true, "https://up/health", None).render_at(now);
        let line = |p: &str| text.lines().find(|l| l.starts_with(p)).unwrap_or("");
        assert!(line("last sync ").contains("3 min ago ("), "{text}");
        assert!(!text.contains("To do"), "nothing to do: {text}");
        assert!(!text.contains("last error"), "{text}");
        let header = text.lines().position(|l| l.starts_with("bucket ")).unwrap();
        let rows: Vec<&str> = text.lines().skip(header).take(3).collect();
        // Every column ends at the same place in every row.
        let end_of = |row: &str, i: usize| {
            let mut ends = Vec::new();
            let b = row.as_bytes();
            for j in 0..b.len() {
                if b[j] != b' ' && (j + 1 == b.len() || b[j + 1] == b' ') {
                    ends.push(j);
                }
            }
            ends[i]
        };
        for col in 1..5 {
            let e: Vec<usize> = rows.iter().map(|r| end_of(r, col)).collect();
            assert!(e.iter().all(|x| *x == e[0]), "column {col}: {rows:#?}");
        }
        let afk: Vec<&str> = rows[2].split_whitespace().collect();
        assert_eq!(afk, ["afk", "5", "5", "?", "0", "-"]);
    }

    #[test]
    fn what_is_wrong_comes_with_what_to_do() {
        let now = Utc.with_ymd_and_hms(2026, 11, 25, 13, 5, 30).unwrap();
        let text =
            status(false, "", Some("login required: run aw-sync-samay --login")).render_at(now);
        assert!(text.contains("aw-server  DOWN"), "{text}");
        assert!(text.contains("start ActivityWatch"), "{text}");
        assert!(text.contains("set sync.base_url"), "{text}");
        assert!(
            text.contains("last error login required: run aw-sync-samay --login"),
            "{text}"
        );
        assert!(text.contains("last try   30 s ago"), "{text}");
    }

    /// Issue 11: remote text reached the terminal raw — aw-server's host name, an upstream's
    /// error, a bucket id, the user name, a quarantine reason.
    #[test]
    fn remote_text_is_shown_printable() {
        let now = Utc.with_ymd_and_hms(2026, 11, 25, 13, 5, 30).unwrap();
        let evil = "\u{1b}[2J\u{1b}]0;pwned\u{7}";
        let mut s = status(true, "https://up/health", Some(evil));
        s.aw_server.detail = format!("aw-server 0.12 on {evil}");
        s.upstream.detail = format!("upstream answered 500: {evil}");
        s.token = format!("OS keyring: logged in as {evil}");
        s.buckets[1].state.bucket_id = format!("afk{evil}");
        s.quarantine.push(QuarantineEntry {
            bucket_id: format!("b{evil}"),
            event_id: 1,
            reason: format!("upstream rejected: {evil}"),
            at: "2026-11-25T13:05:00Z".into(),
            event: serde_json::Value::Null,
        });
        let text = s.render_at(now);
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{7}'),
            "{text:?}"
        );
        assert_eq!(
            text.matches("\\u{1b}[2J\\u{1b}]0;pwned\\u{7}").count(),
            7,
            "{text}"
        );
    }
}
