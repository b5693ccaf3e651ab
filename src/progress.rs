//! Live progress of `--once`: per bucket, the events found new or changed, those delivered, the
//! delivery rate, and what remains (aw-server's count minus what the upstream holds). Not the
//! events *read*: a scan re-reads copies at page and window edges and the last hour
//! (`lookback`), so "read 2503" of a bucket of 2501 events only confused; the summary line says
//! how many were read and why that is more.
//!
//! Three layers, so the display is testable without a terminal or a clock:
//!
//! * [`Tracker`] turns polled counters ([`Metrics`]) and times into a [`Snapshot`] (pure);
//! * [`render`] turns a snapshot into lines (pure), in one of two [`Mode`]s;
//! * [`Renderer`] writes frames to any [`Write`]: in place (`\r`, cursor up, clear line) on a
//!   terminal, plain log-style lines otherwise.
//!
//! [`watch`] polls counters while a cycle runs — the engine's own (nothing is called back from
//! the hot path, which only bumps atomics), or the running daemon's, as its control channel
//! reports them (`--once` beside the daemon).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::{BucketCount, OWN_BUCKET_PREFIX};
use crate::printable::printable;
use crate::source::AwClient;
use crate::state::Store;
use crate::term::LiveArea;

/// How often a terminal is redrawn (at most 5 times a second).
pub const REDRAW_EVERY: Duration = Duration::from_millis(200);
/// How often a plain progress line is written when stderr is not a terminal.
pub const PLAIN_EVERY: Duration = Duration::from_secs(2);
/// Bucket rows shown in place at most (the busiest, then by name); the rest are summed up.
pub const MAX_ROWS: usize = 10;
/// Below this much activity a rate means nothing yet.
const MIN_RATE_WINDOW: Duration = Duration::from_millis(500);

/// How the lines are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A table redrawn in place (a terminal).
    Redraw,
    /// Self-contained `progress: …` lines (a pipe, a file, aw-qt's log).
    Plain,
}

/// One bucket's progress at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BucketProgress {
    pub bucket_id: String,
    /// Events found new or changed in this run (at most the bucket's events).
    pub new: u64,
    /// Of those, the events the upstream acknowledged in this run.
    pub delivered: u64,
    /// Events of the bucket the upstream already held (or refused) before this run.
    pub held_before: u64,
    /// aw-server's event count for the bucket, once asked.
    pub total: Option<u64>,
    /// From the first activity seen to the latest delivery (for the rate).
    pub active: Duration,
}

impl BucketProgress {
    /// Events of aw-server's count the upstream does not hold yet, when the count is known.
    pub fn remaining(&self) -> Option<u64> {
        self.total
            .map(|t| t.saturating_sub(self.held_before.saturating_add(self.delivered)))
    }

    /// Events delivered per second while the bucket was active; `None` before it means much.
    pub fn rate(&self) -> Option<f64> {
        rate(self.delivered, self.active)
    }
}

fn rate(n: u64, over: Duration) -> Option<f64> {
    (over >= MIN_RATE_WINDOW).then(|| n as f64 / over.as_secs_f64())
}

/// Everything the display shows at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub elapsed: Duration,
    /// By bucket id.
    pub buckets: Vec<BucketProgress>,
}

impl Snapshot {
    pub fn new_events(&self) -> u64 {
        self.buckets.iter().map(|b| b.new).sum()
    }
    pub fn delivered(&self) -> u64 {
        self.buckets.iter().map(|b| b.delivered).sum()
    }
    /// The sum over buckets whose count is known; `None` when none is.
    pub fn remaining(&self) -> Option<u64> {
        let known: Vec<u64> = self.buckets.iter().filter_map(|b| b.remaining()).collect();
        (!known.is_empty()).then(|| known.iter().sum())
    }
    pub fn rate(&self) -> Option<f64> {
        rate(self.delivered(), self.elapsed)
    }
}

fn fmt_rate(r: Option<f64>) -> String {
    match r {
        None => "-".into(),
        Some(r) if r >= 10.0 => format!("{r:.0}"),
        Some(r) => format!("{r:.1}"),
    }
}

fn fmt_opt(n: Option<u64>) -> String {
    n.map_or_else(|| "?".into(), |n| n.to_string())
}

fn fmt_elapsed(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

/// The lines of one frame.
///
/// `Redraw`: a header, one aligned row per bucket with something to show (activity, or events
/// remaining; at most [`MAX_ROWS`], busiest first), and a total row with the elapsed time.
/// `Plain`: one `progress: <bucket>: …` line per bucket still in progress (active and not
/// known to be finished), then a `progress: total: …` line.
pub fn render(snap: &Snapshot, mode: Mode) -> Vec<String> {
    match mode {
        Mode::Redraw => render_table(snap),
        Mode::Plain => render_plain(snap),
    }
}

fn render_plain(snap: &Snapshot) -> Vec<String> {
    let mut lines: Vec<String> = snap
        .buckets
        .iter()
        .filter(|b| (b.new > 0 || b.delivered > 0) && b.remaining() != Some(0))
        .map(|b| {
            format!(
                "progress: {}: {} new, {} delivered, {} events/s, {} remaining",
                printable(&b.bucket_id),
                b.new,
                b.delivered,
                fmt_rate(b.rate()),
                fmt_opt(b.remaining())
            )
        })
        .collect();
    lines.push(format!(
        "progress: total: {} new, {} delivered, {} events/s, {} remaining, {} elapsed",
        snap.new_events(),
        snap.delivered(),
        fmt_rate(snap.rate()),
        fmt_opt(snap.remaining()),
        fmt_elapsed(snap.elapsed)
    ));
    lines
}

fn render_table(snap: &Snapshot) -> Vec<String> {
    let mut shown: Vec<&BucketProgress> = snap
        .buckets
        .iter()
        .filter(|b| b.new > 0 || b.delivered > 0 || b.remaining().is_some_and(|r| r > 0))
        .collect();
    // Busiest first when they do not all fit, then back in name order.
    let hidden = shown.len().saturating_sub(MAX_ROWS);
    if hidden > 0 {
        shown.sort_by_key(|b| std::cmp::Reverse((b.remaining().unwrap_or(u64::MAX), b.new)));
        shown.truncate(MAX_ROWS);
        shown.sort_by(|a, b| a.bucket_id.cmp(&b.bucket_id));
    }
    let width = shown
        .iter()
        .map(|b| printable(&b.bucket_id).chars().count())
        .chain([6]) // "bucket", "total"
        .max()
        .unwrap_or(6)
        .min(40);
    let row = |name: &str, new: u64, delivered: u64, rate: Option<f64>, rem: Option<u64>| {
        let name: String = if name.chars().count() > width {
            let mut s: String = name.chars().take(width - 1).collect();
            s.push('…');
            s
        } else {
            name.to_string()
        };
        format!(
            "{name:<width$} {new:>10} {delivered:>10} {:>9} {:>10}",
            fmt_rate(rate),
            fmt_opt(rem)
        )
    };
    let mut lines = vec![format!(
        "{:<width$} {:>10} {:>10} {:>9} {:>10}",
        "bucket", "new", "delivered", "events/s", "remaining"
    )];
    for b in &shown {
        lines.push(row(
            &printable(&b.bucket_id),
            b.new,
            b.delivered,
            b.rate(),
            b.remaining(),
        ));
    }
    if hidden > 0 {
        lines.push(format!("… and {hidden} more buckets"));
    }
    lines.push(format!(
        "{}  {}",
        row(
            "total",
            snap.new_events(),
            snap.delivered(),
            snap.rate(),
            snap.remaining()
        ),
        fmt_elapsed(snap.elapsed)
    ));
    lines
}

/// Writes frames to `out`: in place in [`Mode::Redraw`] (the previous frame is overwritten:
/// `\r`, cursor up over its lines, each line cleared before it is written), appended in
/// [`Mode::Plain`]. In place, the frame lives in a [`LiveArea`], which log lines written to the
/// same output clear first (see [`crate::term`]).
pub struct Renderer<W: Write> {
    out: W,
    mode: Mode,
    area: Arc<LiveArea>,
}

impl<W: Write> Renderer<W> {
    /// A renderer with a live area of its own (nothing else writes to `out`).
    pub fn new(out: W, mode: Mode) -> Self {
        Self::with_area(out, mode, Arc::default())
    }

    /// A renderer whose frames live in `area`, shared with other writers of the same output.
    pub fn with_area(out: W, mode: Mode, area: Arc<LiveArea>) -> Self {
        Renderer { out, mode, area }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Writes one frame. Errors (a closed stderr) are ignored: progress is never worth failing
    /// a sync for.
    pub fn draw(&mut self, snap: &Snapshot) {
        let lines = render(snap, self.mode);
        match self.mode {
            Mode::Redraw => self.area.draw(&mut self.out, &lines),
            Mode::Plain => {
                let mut buf = String::new();
                for l in &lines {
                    buf.push_str(l);
                    buf.push('\n');
                }
                let _ = self.area.write_above(&mut self.out, buf.as_bytes());
            }
        }
    }

    /// Ends the display: in Redraw mode the last frame stays and the cursor moves below it.
    pub fn finish(&mut self) {
        if self.mode == Mode::Redraw {
            self.area.keep(&mut self.out);
        }
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

/// Turns polled counters into snapshots: remembers when each bucket became active and when it
/// last delivered, so each bucket's rate covers its own activity (buckets are read one after
/// another).
#[derive(Debug, Default)]
pub struct Tracker {
    /// Before this run: events held upstream, per bucket.
    held_before: HashMap<String, u64>,
    /// aw-server's counts, per bucket.
    totals: BTreeMap<String, u64>,
    /// Per bucket: (first activity, last delivery change, delivered at that change).
    seen: HashMap<String, (Duration, Duration, u64)>,
}

impl Tracker {
    pub fn new(held_before: HashMap<String, u64>) -> Self {
        Tracker {
            held_before,
            ..Default::default()
        }
    }

    pub fn set_totals(&mut self, totals: BTreeMap<String, u64>) {
        self.totals = totals;
    }

    /// A snapshot from the counters of this run at `elapsed` since the start.
    pub fn snapshot(&mut self, elapsed: Duration, counters: &[BucketCount]) -> Snapshot {
        let mut by_id: BTreeMap<&str, (u64, u64)> =
            self.totals.keys().map(|k| (k.as_str(), (0, 0))).collect();
        for c in counters {
            by_id.insert(c.bucket_id.as_str(), (c.new, c.delivered));
        }
        let buckets = by_id
            .into_iter()
            .filter(|(id, _)| !id.starts_with(OWN_BUCKET_PREFIX))
            .map(|(id, (new, delivered))| {
                let active = if new > 0 || delivered > 0 {
                    let e = self
                        .seen
                        .entry(id.to_string())
                        .or_insert((elapsed, elapsed, 0));
                    if delivered != e.2 {
                        e.1 = elapsed;
                        e.2 = delivered;
                    }
                    e.1.saturating_sub(e.0)
                } else {
                    Duration::ZERO
                };
                BucketProgress {
                    bucket_id: id.to_string(),
                    new,
                    delivered,
                    held_before: self.held_before.get(id).copied().unwrap_or(0),
                    total: self.totals.get(id).copied(),
                    active,
                }
            })
            .collect();
        Snapshot { elapsed, buckets }
    }
}

/// Runs `cycle` to completion while drawing its progress on `renderer`: every
/// [`REDRAW_EVERY`] in Redraw mode, every [`PLAIN_EVERY`] in Plain mode (so a quick sync writes
/// no plain line at all). `counters` are this run's counts so far (the engine's metrics, or the
/// daemon's as it reports them). aw-server's per-bucket counts are asked for alongside, once.
pub async fn watch<F: Future, W: Write>(
    renderer: &mut Renderer<W>,
    counters: impl Fn() -> Vec<BucketCount>,
    source: &AwClient,
    store: &Arc<Store>,
    cycle: F,
) -> F::Output {
    let started = Instant::now();
    // What the upstream held before this run, read before the cycle starts (so none of this
    // run's deliveries are counted twice).
    let held_before = {
        let store = Arc::clone(store);
        tokio::task::spawn_blocking(move || store.bucket_statuses())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default()
            .into_iter()
            .map(|b| (b.bucket_id, b.delivered_current + b.quarantined))
            .collect()
    };
    let mut tracker = Tracker::new(held_before);
    let every = match renderer.mode() {
        Mode::Redraw => REDRAW_EVERY,
        Mode::Plain => PLAIN_EVERY,
    };
    let totals = aw_server_counts(source);
    tokio::pin!(cycle, totals);
    let mut totals_pending = true;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            biased;
            out = &mut cycle => {
                if renderer.mode() == Mode::Redraw {
                    let snap = tracker.snapshot(started.elapsed(), &counters());
                    renderer.draw(&snap);
                }
                renderer.finish();
                return out;
            }
            t = &mut totals, if totals_pending => {
                totals_pending = false;
                tracker.set_totals(t);
            }
            _ = tick.tick() => {
                let snap = tracker.snapshot(started.elapsed(), &counters());
                renderer.draw(&snap);
            }
        }
    }
}

/// aw-server's event count of every bucket but our own; buckets it cannot count are left out
/// (their remaining shows as unknown).
async fn aw_server_counts(source: &AwClient) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Ok(buckets) = source.get_buckets().await else {
        return out;
    };
    for id in buckets.keys() {
        if id.starts_with(OWN_BUCKET_PREFIX) {
            continue;
        }
        if let Ok(n) = source.event_count(id).await {
            out.insert(id.clone(), n);
        }
    }
    out
}

/// The renderer for this process's stderr: Redraw on a terminal, Plain otherwise.
pub fn stderr_renderer() -> Renderer<std::io::Stderr> {
    let err = std::io::stderr();
    let mode = if err.is_terminal() {
        Mode::Redraw
    } else {
        Mode::Plain
    };
    Renderer::with_area(err, mode, crate::term::stderr_area())
}
