//! The human forms of `--status`: the full text (groups a user reads at a glance; the first
//! word of each line says what it is about) and the one line for status bars (`--short`).
//! Scripts use `--json`.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use super::{State, Status};
use crate::printable::printable;

/// What each column of the bucket table counts: the numbers are of different things, and
/// "versions sent 5004" beside "delivered 2502" is only right when it says so.
pub const LEGEND: [&str; 4] = [
    "delivered: events the upstream holds (each counted once)",
    "versions sent: uploads the upstream acknowledged; an event sent again after it grew, or re-sent after a lost answer, counts again",
    "pending: events in aw-server not delivered yet",
    "quarantined: events the upstream refused for good",
];

impl Status {
    /// [`Status::render`] as seen at `now` (relative times are computed from it). Text that
    /// came from outside — server details, errors, bucket ids, the user name — goes through
    /// the printable filter: this is written to a terminal.
    pub fn render_at(&self, now: DateTime<Utc>) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "status     {}", self.state.label());

        let _ = writeln!(out, "\nConnection");
        let mark = |ok: bool| if ok { "ok  " } else { "DOWN" };
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
        let _ = writeln!(out, "daemon     {}", self.daemon_text());

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
        if let Some(since) = &self.paused_since {
            let _ = writeln!(out, "paused     since {}", when(Some(since), now));
        }
        let _ = writeln!(
            out,
            "pending    {}   quarantined {}",
            self.pending, self.quarantined
        );
        if let Some(d) = &self.destination {
            let _ = writeln!(
                out,
                "account    {} at {}{}",
                printable(&d.account),
                d.base_url,
                if d.configured {
                    ""
                } else {
                    " (the numbers below) — not the configured upstream, whose first sync sends it the whole history"
                }
            );
        }
        let _ = writeln!(out, "config     {}", self.config_file);
        let _ = writeln!(out, "database   {}", self.state_db);

        if !self.todo.is_empty() {
            let _ = writeln!(out, "\nTo do");
            for t in &self.todo {
                match &t.command {
                    Some(c) => {
                        let _ = writeln!(out, "  - {}: {c}", printable(&t.message));
                    }
                    None => {
                        let _ = writeln!(out, "  - {}", printable(&t.message));
                    }
                }
            }
        }

        if !self.buckets.is_empty() {
            self.render_buckets(&mut out);
        }
        self.pull.render(&mut out, now);
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

    fn daemon_text(&self) -> String {
        let d = &self.daemon;
        let mut text = if d.running {
            let doing = match d.activity {
                Some(crate::control::Activity::Syncing) => "syncing",
                Some(crate::control::Activity::Waiting) => "waiting for the next sync",
                Some(crate::control::Activity::NotConfigured) => "idle: nothing configured",
                Some(crate::control::Activity::ConfigError) => "idle: the config file has an error",
                None => "running",
            };
            let pid = d.pid.map(|p| format!("PID {p}, ")).unwrap_or_default();
            format!("running ({pid}{doing})")
        } else if d.detail.is_some() {
            "unknown".to_string()
        } else {
            "not running".to_string()
        };
        if let Some(detail) = &d.detail {
            let _ = write!(text, ": {}", printable(detail));
        }
        match (&d.log_file, d.running) {
            (Some(log), true) => {
                let _ = write!(text, "; log {log}");
            }
            (Some(log), false) => {
                let _ = write!(text, "; last log {log}");
            }
            (None, true) => text.push_str("; logs to stderr only"),
            (None, false) => {}
        }
        text
    }

    fn render_buckets(&self, out: &mut String) {
        let w = self
            .buckets
            .iter()
            .map(|b| printable(&b.state.bucket_id).chars().count())
            .max()
            .unwrap_or(0)
            .max("bucket".len());
        let _ = writeln!(
            out,
            "\n{:<w$}  {:>9}  {:>13}  {:>7}  {:>11}  cursor",
            "bucket", "delivered", "versions sent", "pending", "quarantined"
        );
        for b in &self.buckets {
            let pending = b.pending.map_or("?".to_string(), |p| p.to_string());
            let _ = writeln!(
                out,
                "{:<w$}  {:>9}  {:>13}  {:>7}  {:>11}  {}",
                printable(&b.state.bucket_id),
                b.state.delivered,
                b.state.versions_sent,
                pending,
                b.state.quarantined,
                b.state.cursor.as_deref().unwrap_or("-")
            );
        }
        for l in LEGEND {
            let _ = writeln!(out, "  {l}");
        }
    }

    /// [`Status::short`] as seen at `now`: the problem first when there is one, then when the
    /// last sync succeeded and what is pending (left out when aw-server could not be asked).
    pub fn short_at(&self, now: DateTime<Utc>) -> String {
        let synced = match self.last_cycle.last_success.as_deref() {
            Some(t) => match DateTime::parse_from_rfc3339(t) {
                Ok(at) => format!(
                    "synced {}",
                    ago(now.signed_duration_since(at.with_timezone(&Utc)))
                ),
                Err(_) => format!("synced {t}"),
            },
            None => "never synced".to_string(),
        };
        let mut parts: Vec<String> = Vec::new();
        if self.paused_since.is_some() {
            parts.push("paused".to_string());
        }
        match self.state {
            State::Ok | State::NeverSynced => {}
            State::Quarantined => parts.push(format!("{} quarantined", self.quarantined)),
            s => parts.push(s.label().to_string()),
        }
        if self.state != State::Syncing {
            parts.push(synced);
        }
        if self.aw_server.reachable {
            parts.push(format!("{} pending", self.pending));
        }
        parts.join(" · ")
    }
}

/// "3 min ago (2026-11-25 14:05:00 +01:00)" for an RFC 3339 time; "never" for none.
pub(super) fn when(t: Option<&str>, now: DateTime<Utc>) -> String {
    let Some(t) = t else {
        return "never".into();
    };
    match DateTime::parse_from_rfc3339(t) {
        Ok(at) => {
            let local = at.with_timezone(&chrono::Local);
            format!(
                "{} ({})",
                ago(now.signed_duration_since(at.with_timezone(&Utc))),
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
    use super::super::*;
    use super::*;
    use chrono::{Duration as D, TimeZone};

    #[test]
    fn relative_times_use_the_largest_whole_unit() {
        assert_eq!(ago(D::seconds(2)), "just now");
        assert_eq!(ago(D::seconds(42)), "42 s ago");
        assert_eq!(ago(D::seconds(200)), "3 min ago");
        assert_eq!(ago(D::hours(5)), "5 h ago");
        assert_eq!(ago(D::days(3)), "3 days ago");
        assert!(ago(D::seconds(-30)).contains("future"));
    }

    fn reach(url: &str, answer: Answer) -> Reach {
        Reach {
            url: url.into(),
            reachable: answer == Answer::Ok,
            answer,
            detail: if answer == Answer::Ok {
                "ok".into()
            } else {
                "connection refused".into()
            },
        }
    }

    fn status(aw: Answer, up: Answer, login: Login, error: Option<&str>) -> Status {
        let mut s = Status {
            state: State::Ok,
            exit_code: 0,
            todo: Vec::new(),
            daemon: DaemonLine::default(),
            aw_server: reach("http://127.0.0.1:5600", aw),
            upstream: reach(
                if up == Answer::NotConfigured {
                    ""
                } else {
                    "https://up/v1/health"
                },
                up,
            ),
            token: "environment (AW_SYNC_SAMAY_TOKEN)".into(),
            login,
            config_file: "/c/aw-sync-samay.toml".into(),
            sync_enabled: true,
            state_db: "/tmp/state.sqlite".into(),
            device_id: None,
            destination: None,
            pull: Default::default(),
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
                        deleted: 0,
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
                        deleted: 0,
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
            paused_since: None,
            recorded: None,
        };
        let (state, todo) = s.assess();
        s.state = state;
        s.exit_code = state.exit_code();
        s.todo = todo;
        s
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 25, 13, 5, 30).unwrap()
    }

    #[test]
    fn the_text_groups_connection_sync_and_an_aligned_bucket_table() {
        let text = status(Answer::Ok, Answer::Ok, Login::Environment, None).render_at(now());
        let line = |p: &str| text.lines().find(|l| l.starts_with(p)).unwrap_or("");
        assert_eq!(line("status "), "status     ok");
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
        // The header's "versions sent" is two words: compare the rows, and the header's
        // last word of each column.
        for col in 1..5 {
            let e: Vec<usize> = rows[1..].iter().map(|r| end_of(r, col)).collect();
            assert!(e.iter().all(|x| *x == e[0]), "column {col}: {rows:#?}");
        }
        let afk: Vec<&str> = rows[2].split_whitespace().collect();
        assert_eq!(afk, ["afk", "5", "5", "?", "0", "-"]);
    }

    /// Every column of the bucket table is explained under it.
    #[test]
    fn every_bucket_column_says_what_it_counts() {
        let text = status(Answer::Ok, Answer::Ok, Login::Environment, None).render_at(now());
        for column in ["delivered", "versions sent", "pending", "quarantined"] {
            assert!(
                text.lines()
                    .any(|l| l.trim_start().starts_with(&format!("{column}: "))),
                "{column} is not explained:\n{text}"
            );
        }
    }

    #[test]
    fn what_is_wrong_comes_with_what_to_do_and_the_exit_code() {
        let s = status(
            Answer::Unreachable,
            Answer::NotConfigured,
            Login::LoginRequired,
            Some("login required: run aw-sync-samay --login"),
        );
        assert_eq!(s.state, State::NotConfigured, "the most pressing first");
        assert_eq!(s.exit_code, crate::exit::USER_MUST_ACT);
        let text = s.render_at(now());
        assert!(text.contains("aw-server  DOWN"), "{text}");
        assert!(text.contains("start ActivityWatch"), "{text}");
        assert!(
            text.contains("set sync.base_url in /c/aw-sync-samay.toml"),
            "{text}"
        );
        assert!(
            text.contains("  - log in to the upstream: aw-sync-samay --login"),
            "the To do group has the login, with its command: {text}"
        );
        assert!(text.contains("last try   30 s ago"), "{text}");
    }

    #[test]
    fn states_and_exit_codes() {
        use Answer::*;
        let case = |aw, up, login, err| {
            let s = status(aw, up, login, err);
            (s.state, s.exit_code)
        };
        assert_eq!(case(Ok, Ok, Login::Environment, None), (State::Ok, 0));
        assert_eq!(
            case(Ok, Ok, Login::LoginRequired, None),
            (State::LoginRequired, 1)
        );
        assert_eq!(
            case(Unreachable, Ok, Login::LoggedIn, None),
            (State::AwServerUnreachable, 2)
        );
        assert_eq!(
            case(Ok, Unreachable, Login::LoggedIn, None),
            (State::UpstreamUnreachable, 2)
        );
        assert_eq!(
            case(Ok, Wrong, Login::LoggedIn, None),
            (State::NotAnUpstream, 1)
        );
        assert_eq!(
            case(Wrong, Ok, Login::LoggedIn, None),
            (State::NotAwServer, 1)
        );
        assert_eq!(
            case(Ok, Ok, Login::LoggedIn, Some("upstream answered 503")),
            (State::LastSyncFailed, 2)
        );
        // A refused token shows as a failed sync whose record says "login required".
        let mut s = status(Ok, Ok, Login::Environment, Some("the token was rejected"));
        s.recorded = Some("login required".into());
        assert_eq!(s.assess().0, State::LoginRequired);
        let mut s = status(Ok, Ok, Login::LoggedIn, None);
        s.quarantined = 3;
        assert_eq!(s.assess().0, State::Quarantined);
        s.quarantined = 0;
        s.last_cycle = CycleRecord::default();
        assert_eq!(s.assess().0, State::NeverSynced);
        s.daemon.running = true;
        let (state, todo) = s.assess();
        assert_eq!((state, state.exit_code()), (State::Syncing, 0));
        assert!(todo.is_empty(), "{todo:?}");
    }

    #[test]
    fn the_pull_shows_each_device_and_is_suggested_when_there_are_others() {
        let mut s = status(Answer::Ok, Answer::Ok, Login::Environment, None);
        assert!(
            !s.render_at(now()).contains("\nPull"),
            "off and nothing pulled: no section"
        );
        s.pull.other_devices = Some(2);
        let (_, todo) = s.assess();
        assert!(
            todo.iter().any(|t| t.message.contains("sync.pull = true")),
            "{todo:?}"
        );
        s.pull = crate::status::PullLine {
            enabled: true,
            seq: 39,
            caught_up: Some("2026-11-25T14:05:00Z".into()),
            devices: vec![crate::state::PullDeviceStatus {
                device_id: "5f1c2d8e".into(),
                hostname: "laptop".into(),
                last_seq: Some(39),
                last_at: Some("2026-11-25T14:05:00Z".into()),
                events: 1234,
                unpulled: false,
                origins: vec!["laptop".into()],
            }],
            other_devices: Some(1),
        };
        let (_, todo) = s.assess();
        assert!(
            todo.iter().all(|t| !t.message.contains("sync.pull")),
            "on: no suggestion"
        );
        let text = s.render_at(now());
        assert!(text.contains("Pull (on; feed position 39)"), "{text}");
        assert!(text.contains("lag: up to date as of"), "{text}");
        assert!(
            text.contains("laptop (5f1c2d8e) as laptop: 1234 events here, last change #39 applied"),
            "{text}"
        );
    }

    #[test]
    fn the_short_form_is_one_line_problem_first() {
        let s = status(Answer::Ok, Answer::Ok, Login::Environment, None);
        assert_eq!(s.short_at(now()), "synced 3 min ago · 0 pending");
        let s = status(Answer::Ok, Answer::Ok, Login::LoginRequired, None);
        assert_eq!(
            s.short_at(now()),
            "login required · synced 3 min ago · 0 pending"
        );
        let s = status(Answer::Unreachable, Answer::Ok, Login::LoggedIn, None);
        assert_eq!(
            s.short_at(now()),
            "aw-server unreachable · synced 3 min ago",
            "no pending count without aw-server"
        );
    }

    /// Issue 11: remote text reached the terminal raw — aw-server's host name, an upstream's
    /// error, a bucket id, the user name, a quarantine reason.
    #[test]
    fn remote_text_is_shown_printable() {
        let evil = "\u{1b}[2J\u{1b}]0;pwned\u{7}";
        let mut s = status(Answer::Ok, Answer::Ok, Login::Environment, Some(evil));
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
        let text = s.render_at(now());
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{7}'),
            "{text:?}"
        );
        // Each of the seven places shows the text, escaped.
        let escaped = "\\u{1b}[2J\\u{1b}]0;pwned\\u{7}";
        for start in [
            "aw-server ",
            "upstream ",
            "token ",
            "last error ",
            "afk",
            "  b",
            "  b",
        ] {
            assert!(
                text.lines()
                    .any(|l| l.starts_with(start) && l.contains(escaped)),
                "{start:?}: {text}"
            );
        }
        assert!(text.matches(escaped).count() >= 7, "{text}");
    }

    /// A pause (the tray's "Pause syncing") shows in the text, its age, and the short form.
    #[test]
    fn a_pause_is_shown() {
        let mut s = status(Answer::Ok, Answer::Ok, Login::LoggedIn, None);
        s.paused_since = Some("2026-11-25T12:05:30+00:00".into());
        let text = s.render_at(now());
        assert!(text.contains("paused     since 1 h ago"), "{text}");
        assert_eq!(s.short_at(now()), "paused · synced 3 min ago · 0 pending");
    }
}
