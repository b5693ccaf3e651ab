//! Realistic, deterministic ActivityWatch data: what a week of four watchers looks like.
//!
//! A benchmark of the sync is only meaningful on data shaped like the real thing: events of
//! realistic size (≈ 226 bytes of JSON each as served, so 1M events ≈ 225 MB), contiguous
//! per bucket with small gaps, nanosecond timestamps and float durations, ids interleaved
//! across buckets in time order. The same [`Spec`] (seed included) always gives the same
//! events, so runs compare.
//!
//! Buckets and their share of the events: `aw-watcher-window_H` (45 %: app, title),
//! `aw-watcher-web-chrome_H` (30 %: url, title, audible, incognito, tabCount),
//! `aw-watcher-vscode_H` (15 %: file, project, language), `aw-watcher-afk_H` (10 %: status).

use chrono::{DateTime, TimeDelta, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::Map;

use super::store::{BucketInfo, RawEvent};

/// What to generate.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Total events over all four buckets.
    pub events: usize,
    pub seed: u64,
    /// The events cover `[end - span, end]` (approximately: the last event ends near `end`).
    pub span: TimeDelta,
    pub end: DateTime<Utc>,
    /// The `_H` suffix of the bucket ids and their `hostname`.
    pub hostname: String,
}

impl Spec {
    /// `events` over the week before `end`, host `synthetic`.
    pub fn week(events: usize, seed: u64, end: DateTime<Utc>) -> Spec {
        Spec {
            events,
            seed,
            span: TimeDelta::days(7),
            end,
            hostname: "synthetic".to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Window,
    Web,
    Editor,
    Afk,
}

/// (kind, share in per mille, bucket id prefix, type, client)
const KINDS: [(Kind, usize, &str, &str, &str); 4] = [
    (
        Kind::Window,
        450,
        "aw-watcher-window",
        "currentwindow",
        "aw-watcher-window",
    ),
    (
        Kind::Web,
        300,
        "aw-watcher-web-chrome",
        "web.tab.current",
        "aw-client-web",
    ),
    (
        Kind::Editor,
        150,
        "aw-watcher-vscode",
        "app.editor.activity",
        "aw-watcher-vscode",
    ),
    (
        Kind::Afk,
        100,
        "aw-watcher-afk",
        "afkstatus",
        "aw-watcher-afk",
    ),
];

/// A synthetic bucket: its metadata and how many events it gets.
#[derive(Debug, Clone)]
pub struct SyntheticBucket {
    pub info: BucketInfo,
    pub events: usize,
}

/// The four buckets of `spec`, in the order [`events`] indexes them. `created` is the start of
/// the span, as if the watchers were installed then.
pub fn buckets(spec: &Spec) -> Vec<SyntheticBucket> {
    let counts = counts(spec.events);
    KINDS
        .iter()
        .zip(counts)
        .map(
            |(&(_, _, prefix, bucket_type, client), events)| SyntheticBucket {
                info: BucketInfo {
                    id: format!("{prefix}_{}", spec.hostname),
                    bucket_type: bucket_type.to_string(),
                    client: client.to_string(),
                    hostname: spec.hostname.clone(),
                    created: spec.end - spec.span,
                    data: Map::new(),
                },
                events,
            },
        )
        .collect()
}

fn counts(total: usize) -> [usize; 4] {
    let mut c = [0; 4];
    for (i, &(_, share, ..)) in KINDS.iter().enumerate() {
        c[i] = total * share / 1000;
    }
    let assigned: usize = c.iter().sum();
    c[0] += total - assigned;
    c
}

/// Every event of `spec` as `(bucket index, event)`, in global start-time order.
pub fn events(spec: &Spec) -> Events {
    let span_ns = spec.span.num_nanoseconds().unwrap_or(i64::MAX).max(1);
    let end_ns = spec.end.timestamp_nanos_opt().unwrap_or(0);
    let start_ns = end_ns.saturating_sub(span_ns);
    let streams = counts(spec.events)
        .iter()
        .enumerate()
        .map(|(i, &n)| Stream {
            kind: KINDS[i].0,
            remaining: n,
            next_start: start_ns,
            step: (span_ns / n.max(1) as i64).max(1),
            rng: StdRng::seed_from_u64(
                spec.seed ^ (0x9E37_79B9_7F4A_7C15u64.wrapping_mul(i as u64 + 1)),
            ),
            afk: false,
            sticky: 0,
            context: Context::default(),
        })
        .collect();
    Events { streams }
}

/// Iterator over a spec's events; see [`events`].
pub struct Events {
    streams: Vec<Stream>,
}

impl Iterator for Events {
    type Item = (usize, RawEvent);

    fn next(&mut self) -> Option<Self::Item> {
        let (i, stream) = self
            .streams
            .iter_mut()
            .enumerate()
            .filter(|(_, s)| s.remaining > 0)
            .min_by_key(|(i, s)| (s.next_start, *i))?;
        Some((i, stream.next_event()))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.streams.iter().map(|s| s.remaining).sum();
        (n, Some(n))
    }
}

/// What the user is "doing": watchers repeat the same window or page for a while.
#[derive(Default)]
struct Context {
    a: usize,
    b: usize,
    n: u32,
}

struct Stream {
    kind: Kind,
    remaining: usize,
    next_start: i64,
    /// Mean start-to-start distance, so the stream fills the span.
    step: i64,
    rng: StdRng,
    afk: bool,
    /// Events left in the current context.
    sticky: u32,
    context: Context,
}

impl Stream {
    fn next_event(&mut self) -> RawEvent {
        self.remaining -= 1;
        let step = self.step as f64;
        // Durations average 97 % of the step, gaps 3 %: contiguous like a polling watcher.
        let duration_ns = (0.97 * step * (0.3 + 1.4 * self.rng.random::<f64>())) as i64;
        let gap_ns = (0.06 * step * self.rng.random::<f64>()) as i64;
        let timestamp_ns = self.next_start;
        self.next_start = timestamp_ns
            .saturating_add(duration_ns)
            .saturating_add(gap_ns.max(1));
        if self.sticky == 0 {
            self.sticky = self.rng.random_range(1..6);
            self.context = Context {
                a: self.rng.random_range(0..1 << 16),
                b: self.rng.random_range(0..1 << 16),
                n: self.rng.random_range(1..400),
            };
        }
        self.sticky -= 1;
        let data = self.data();
        RawEvent {
            timestamp_ns,
            duration_ns,
            data,
        }
    }

    fn data(&mut self) -> String {
        let c = &self.context;
        let json = match self.kind {
            Kind::Window => {
                let (app, suffix) = APPS[c.a % APPS.len()];
                let title = format!(
                    "{} {} — {} ({}){}",
                    pick(WORDS, c.b),
                    pick(WORDS, c.b / 7 + c.a),
                    pick(TOPICS, c.b / 3),
                    c.n,
                    suffix
                );
                serde_json::to_string(&Window { app, title })
            }
            Kind::Web => {
                let site = pick(SITES, c.a);
                let topic = pick(TOPICS, c.b);
                let slug = format!("{}-{}-{}", pick(WORDS, c.b / 5), pick(WORDS, c.a / 3), c.n);
                serde_json::to_string(&Web {
                    audible: c.n % 17 == 0,
                    incognito: c.n % 29 == 0,
                    tab_count: 1 + (c.n % 40) as u16,
                    title: format!(
                        "{topic}: {} {} | {site}",
                        pick(WORDS, c.b / 11),
                        pick(WORDS, c.n as usize)
                    ),
                    url: format!("https://{site}/{}/{slug}?ref={}", pick(WORDS, c.a / 5), c.b),
                })
            }
            Kind::Editor => {
                let project = pick(PROJECTS, c.a);
                let (language, ext) = LANGUAGES[c.b % LANGUAGES.len()];
                serde_json::to_string(&Editor {
                    file: format!(
                        "/home/user/src/{project}/src/{}/{}_{}.{ext}",
                        pick(WORDS, c.b / 3),
                        pick(WORDS, c.a / 7 + c.b),
                        c.n
                    ),
                    language,
                    project: format!("/home/user/src/{project}"),
                })
            }
            Kind::Afk => {
                self.afk = !self.afk;
                let status = if self.afk { "afk" } else { "not-afk" };
                serde_json::to_string(&Afk { status })
            }
        };
        // Serialising these plain structs cannot fail.
        json.unwrap_or_else(|_| "{}".to_string())
    }
}

fn pick(list: &[&'static str], i: usize) -> &'static str {
    list[i % list.len()]
}

// Field order is alphabetical, so the text equals aw-server-rust's (sorted `Map`) serialisation.
#[derive(Serialize)]
struct Window {
    app: &'static str,
    title: String,
}

#[derive(Serialize)]
struct Web {
    audible: bool,
    incognito: bool,
    #[serde(rename = "tabCount")]
    tab_count: u16,
    title: String,
    url: String,
}

#[derive(Serialize)]
struct Editor {
    file: String,
    language: &'static str,
    project: String,
}

#[derive(Serialize)]
struct Afk {
    status: &'static str,
}

const APPS: &[(&str, &str)] = &[
    ("firefox", " — Mozilla Firefox"),
    ("Google-chrome", " - Google Chrome"),
    ("code", " - Visual Studio Code"),
    ("kitty", " - kitty"),
    ("Slack", " | Slack"),
    ("thunderbird", " - Mozilla Thunderbird"),
    ("org.gnome.Nautilus", " - Files"),
    ("libreoffice-writer", " - LibreOffice Writer"),
    ("zoom", " - Zoom Meeting"),
    ("Spotify", " - Spotify Premium"),
];

const SITES: &[&str] = &[
    "github.com",
    "docs.rs",
    "stackoverflow.com",
    "news.ycombinator.com",
    "en.wikipedia.org",
    "mail.google.com",
    "www.youtube.com",
    "calendar.google.com",
    "crates.io",
    "activitywatch.net",
];

const TOPICS: &[&str] = &[
    "Quarterly planning",
    "Release notes",
    "Pull request review",
    "Incident postmortem",
    "Design document",
    "Weekly sync",
    "Customer feedback",
    "Benchmark results",
    "Onboarding guide",
    "Budget proposal",
    "Research notes",
    "Bug triage",
];

const WORDS: &[&str] = &[
    "async",
    "buffer",
    "cursor",
    "daemon",
    "engine",
    "filter",
    "gateway",
    "handler",
    "index",
    "journal",
    "kernel",
    "ledger",
    "module",
    "network",
    "object",
    "parser",
    "queue",
    "router",
    "scheduler",
    "tracker",
    "upload",
    "vector",
    "worker",
    "sync",
    "batch",
    "state",
    "config",
    "client",
    "server",
    "bucket",
    "heartbeat",
    "window",
];

const PROJECTS: &[&str] = &[
    "aw-sync-samay",
    "website",
    "infra-terraform",
    "mobile-app",
    "data-pipeline",
    "dotfiles",
];

const LANGUAGES: &[(&str, &str)] = &[
    ("rust", "rs"),
    ("python", "py"),
    ("typescript", "ts"),
    ("markdown", "md"),
    ("toml", "toml"),
    ("go", "go"),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{write_event_json, EventRef};

    fn spec(n: usize, seed: u64) -> Spec {
        Spec::week(
            n,
            seed,
            DateTime::from_timestamp(1_717_200_000, 0).expect("valid"),
        )
    }

    #[test]
    fn same_seed_same_events_other_seed_other_events() {
        let a: Vec<_> = events(&spec(2_000, 7)).collect();
        let b: Vec<_> = events(&spec(2_000, 7)).collect();
        let c: Vec<_> = events(&spec(2_000, 8)).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.len(), 2_000);
    }

    #[test]
    fn events_come_in_time_order_and_buckets_are_contiguous_within_the_span() {
        let s = spec(10_000, 1);
        let all: Vec<_> = events(&s).collect();
        assert!(all
            .windows(2)
            .all(|w| w[0].1.timestamp_ns <= w[1].1.timestamp_ns));
        let start = (s.end - s.span).timestamp_nanos_opt().unwrap();
        let end = s.end.timestamp_nanos_opt().unwrap();
        let shares = counts(10_000);
        for (b, &share) in shares.iter().enumerate() {
            let mine: Vec<&RawEvent> = all
                .iter()
                .filter(|(i, _)| *i == b)
                .map(|(_, e)| e)
                .collect();
            assert_eq!(mine.len(), share);
            assert_eq!(mine[0].timestamp_ns, start);
            for w in mine.windows(2) {
                let prev_end = w[0].timestamp_ns + w[0].duration_ns;
                assert!(w[1].timestamp_ns > prev_end, "no overlap within a bucket");
                assert!(w[1].timestamp_ns - prev_end <= (end - start) / share as i64);
            }
            let last = mine[mine.len() - 1];
            let last_end = last.timestamp_ns + last.duration_ns;
            // Fills the span to within a few percent.
            assert!((last_end - end).abs() < (end - start) / 20, "bucket {b}");
        }
        // ns precision and fractional durations, as real watchers produce.
        assert!(all.iter().any(|(_, e)| e.timestamp_ns % 1_000 != 0));
    }

    #[test]
    fn a_served_event_is_about_226_bytes() {
        let n = 20_000;
        let mut out = Vec::new();
        for (id, (_, e)) in events(&spec(n, 3)).enumerate() {
            // Six-digit ids, as in a 1M-event database.
            write_event_json(
                &mut out,
                &EventRef {
                    id: 500_000 + id as i64,
                    start: e.timestamp_ns,
                    end: e.timestamp_ns + e.duration_ns,
                    data: &e.data,
                },
            );
            out.push(b',');
        }
        let per_event = out.len() / n;
        assert!(
            (200..=250).contains(&per_event),
            "{per_event} bytes per event"
        );
        // And every data text is a JSON object, canonical (sorted keys).
        for (_, e) in events(&spec(500, 3)) {
            let map: Map<String, serde_json::Value> = serde_json::from_str(&e.data).unwrap();
            assert_eq!(serde_json::to_string(&map).unwrap(), e.data);
        }
    }

    #[test]
    fn bucket_ids_follow_watcher_naming() {
        let ids: Vec<String> = buckets(&spec(10, 1))
            .into_iter()
            .map(|b| b.info.id)
            .collect();
        assert_eq!(
            ids,
            [
                "aw-watcher-window_synthetic",
                "aw-watcher-web-chrome_synthetic",
                "aw-watcher-vscode_synthetic",
                "aw-watcher-afk_synthetic"
            ]
        );
    }
}
