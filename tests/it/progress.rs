//! `--once` progress: the pure renderer (snapshot → lines), the writer in both modes, the real
//! binary with stderr a pipe (plain lines) and a pseudo-terminal (in-place redraw), and the
//! config reference that must name every key. Counts are asserted, never timings.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use aw_sync_samay::config::Config;
use aw_sync_samay::engine::BucketCount;
use aw_sync_samay::progress::{render, BucketProgress, Mode, Renderer, Snapshot, Tracker};
use samay_testkit::bin::{run, sync_command, write_config};
use samay_testkit::devserver::TEST_TOKEN;
use samay_testkit::rig::{series, Rig};

fn bucket(id: &str, new: u64, delivered: u64, held: u64, total: Option<u64>) -> BucketProgress {
    BucketProgress {
        bucket_id: id.into(),
        new,
        delivered,
        held_before: held,
        total,
        active: Duration::from_secs(4),
    }
}

fn snap() -> Snapshot {
    Snapshot {
        elapsed: Duration::from_secs(8),
        buckets: vec![
            // Done: everything aw-server has is held upstream.
            bucket("aw-watcher-afk_laptop", 500, 500, 0, Some(500)),
            // Half way: 2000 delivered at 500/s over its 4 s, 1000 of 3000 left.
            bucket("aw-watcher-window_laptop", 2400, 2000, 0, Some(3000)),
            // Incremental: 90 held before, 6 delivered now, 4 left.
            bucket("aw-watcher-web", 6, 6, 90, Some(100)),
            // Count not known (yet).
            bucket("editor", 10, 0, 0, None),
        ],
    }
}

// ---------------------------------------------------------------------------------------------
// The pure renderer

#[test]
fn remaining_is_the_aw_server_count_minus_what_the_upstream_holds() {
    let s = snap();
    let rem: Vec<Option<u64>> = s.buckets.iter().map(|b| b.remaining()).collect();
    assert_eq!(rem, [Some(0), Some(1000), Some(4), None]);
    assert_eq!(s.remaining(), Some(1004), "the sum of the known ones");
    assert_eq!((s.new_events(), s.delivered()), (2916, 2506));
    // A grown heartbeat re-delivered can make delivered exceed the count: never negative.
    assert_eq!(bucket("b", 5, 5, 10, Some(12)).remaining(), Some(0));
}

#[test]
fn rates_are_per_bucket_activity_and_total_over_the_run() {
    let s = snap();
    assert_eq!(s.buckets[1].rate(), Some(500.0));
    assert_eq!(s.rate(), Some(2506.0 / 8.0));
    let mut young = bucket("b", 1, 1, 0, None);
    young.active = Duration::from_millis(100);
    assert_eq!(young.rate(), None, "no rate from a tenth of a second");
}

#[test]
fn plain_mode_writes_a_line_per_unfinished_bucket_and_a_total() {
    let lines = render(&snap(), Mode::Plain);
    assert_eq!(
        lines,
        [
            "progress: aw-watcher-window_laptop: 2400 new, 2000 delivered, 500 events/s, 1000 remaining",
            "progress: aw-watcher-web: 6 new, 6 delivered, 1.5 events/s, 4 remaining",
            "progress: editor: 10 new, 0 delivered, 0.0 events/s, ? remaining",
            "progress: total: 2916 new, 2506 delivered, 313 events/s, 1004 remaining, 0:08 elapsed",
        ]
    );
}

#[test]
fn redraw_mode_is_an_aligned_table_with_a_total_row() {
    let lines = render(&snap(), Mode::Redraw);
    assert_eq!(lines.len(), 1 + 4 + 1, "{lines:#?}");
    assert!(lines[0].starts_with("bucket "), "{lines:#?}");
    for l in &lines {
        assert!(!l.contains('\n') && !l.contains('\r'), "{l:?}");
    }
    // Columns line up: every row but the total (which adds the elapsed time) has the header's
    // width, and the numbers end where their header ends.
    let width = lines[0].chars().count();
    for l in &lines[1..5] {
        assert_eq!(l.chars().count(), width, "{lines:#?}");
    }
    let window: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(
        window,
        ["aw-watcher-window_laptop", "2400", "2000", "500", "1000"]
    );
    let total: Vec<&str> = lines[5].split_whitespace().collect();
    assert_eq!(total, ["total", "2916", "2506", "313", "1004", "0:08"]);
    let editor: Vec<&str> = lines[4].split_whitespace().collect();
    assert_eq!(editor, ["editor", "10", "0", "0.0", "?"]);
}

#[test]
fn redraw_mode_caps_the_rows_and_says_how_many_are_hidden() {
    let s = Snapshot {
        elapsed: Duration::from_secs(1),
        buckets: (0..25)
            .map(|i| bucket(&format!("b{i:02}"), 1, 1, 0, Some(1 + i)))
            .collect(),
    };
    let lines = render(&s, Mode::Redraw);
    // header + MAX_ROWS + "… and 15 more" + total
    assert_eq!(lines.len(), 1 + 10 + 1 + 1, "{lines:#?}");
    assert!(lines[11].contains("15 more buckets"), "{lines:#?}");
    // The ones with the most left are shown.
    assert!(lines[1].starts_with("b15 "), "{lines:#?}");
    assert!(lines[10].starts_with("b24 "), "{lines:#?}");
}

#[test]
fn the_renderer_redraws_in_place_on_a_terminal_and_appends_plain_lines_otherwise() {
    let mut first = snap();
    first.buckets.truncate(2);
    let second = snap();

    let mut tty = Renderer::new(Vec::new(), Mode::Redraw);
    tty.draw(&first); // header, 2 rows, total: 4 lines
    tty.draw(&second);
    tty.finish();
    let out = String::from_utf8(tty.into_inner()).unwrap();
    let redraw = out
        .find("\r\x1b[3A")
        .expect("back to the first line of the frame");
    assert!(
        !out[..redraw].contains('\r'),
        "the first frame is not a redraw"
    );
    assert_eq!(
        out.matches("\x1b[2K").count(),
        4 + 6,
        "each line is cleared before it is written: {out:?}"
    );
    assert!(out.ends_with('\n'), "the cursor ends below the last frame");
    assert_eq!(out.matches('\n').count(), 3 + 5 + 1, "{out:?}");

    let mut plain = Renderer::new(Vec::new(), Mode::Plain);
    plain.draw(&first);
    plain.draw(&second);
    plain.finish();
    let out = String::from_utf8(plain.into_inner()).unwrap();
    assert!(!out.contains('\r') && !out.contains('\x1b'), "{out:?}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2 + 4, "{lines:#?}");
    assert!(lines.iter().all(|l| l.starts_with("progress: ")));
}

#[test]
fn the_tracker_times_each_bucket_from_its_own_first_activity() {
    let count = |id: &str, new: u64, delivered: u64| BucketCount {
        bucket_id: id.into(),
        // Re-reads show in `read` only: the display is about what is new.
        read: new + 7,
        new,
        delivered,
    };
    let mut t = Tracker::new(HashMap::from([("a".to_string(), 10)]));
    t.set_totals(BTreeMap::from([
        ("a".to_string(), 30),
        ("b".to_string(), 40),
        ("aw-sync-samay_host".to_string(), 3),
    ]));
    let s = t.snapshot(Duration::from_secs(1), &[count("a", 5, 0)]);
    let ids: Vec<&str> = s.buckets.iter().map(|b| b.bucket_id.as_str()).collect();
    assert_eq!(ids, ["a", "b"], "known buckets listed, our own never");
    assert_eq!(s.buckets[0].remaining(), Some(20));
    assert_eq!(s.buckets[1].remaining(), Some(40));
    let s = t.snapshot(
        Duration::from_secs(3),
        &[count("a", 20, 20), count("b", 5, 0)],
    );
    assert_eq!(s.buckets[0].active, Duration::from_secs(2));
    assert_eq!(s.buckets[0].rate(), Some(10.0));
    assert_eq!(s.buckets[0].remaining(), Some(0));
    // b only started at 3 s, and its rate is its own.
    let s = t.snapshot(
        Duration::from_secs(5),
        &[count("a", 20, 20), count("b", 40, 40)],
    );
    assert_eq!(
        s.buckets[0].active,
        Duration::from_secs(2),
        "a stopped at 3 s"
    );
    assert_eq!(s.buckets[1].active, Duration::from_secs(2));
    assert_eq!(s.buckets[1].rate(), Some(20.0));
    assert_eq!(s.remaining(), Some(0));
}

// ---------------------------------------------------------------------------------------------
// The real binary

/// A rig with `n` events in bucket "window" and an upstream that takes `slow_ms` per batch of
/// 100, so the sync lasts long enough for progress to be drawn.
/// `slow_ms` per batch; three batches travel at once (`sync.upload_concurrency`).
async fn slow_rig(n: usize, slow_ms: u64) -> (Rig, PathBuf, PathBuf) {
    let rig = Rig::new().await;
    rig.bucket("window").await;
    rig.insert("window", &series(n, 1.0, 60, "w")).await;
    rig.dev.faults().update(|f| f.slow_ms = slow_ms);
    let home = rig.dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let config = write_config(&home, &rig.dev.base_url(), "batch_size = 100");
    (rig, home, config)
}

/// `(new, delivered, remaining)` of a `progress: <name>: …` line.
fn parse_plain(line: &str) -> (u64, u64, Option<u64>) {
    let fields: Vec<&str> = line.split(", ").collect();
    let num = |i: usize, unit: &str| -> &str {
        let f = fields[i].rsplit(": ").next().unwrap();
        f.strip_suffix(unit)
            .unwrap_or_else(|| panic!("{line:?}: field {i} is not {unit:?}"))
    };
    (
        num(0, " new").parse().unwrap(),
        num(1, " delivered").parse().unwrap(),
        num(3, " remaining").parse().ok(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_without_a_terminal_writes_plain_progress_lines_then_the_summary() {
    const N: u64 = 3000;
    let (rig, home, config) = slow_rig(N as usize, 450).await;
    let r = run(
        sync_command(&home, rig.aw.port(), &config, TEST_TOKEN).arg("--once"),
        &home,
    )
    .await;
    assert!(r.status.success(), "{}\n{}", r.stdout, r.stderr);
    let summary: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        summary.len(),
        1,
        "one summary line on stdout: {:?}",
        r.stdout
    );
    assert!(
        summary[0].starts_with("synced: ") && summary[0].contains(&format!(" {N} delivered")),
        "{summary:?}"
    );
    rig.assert_exact("window").await;

    assert!(
        !r.stderr.contains('\r') && !r.stderr.contains('\x1b'),
        "no terminal control without a terminal: {:?}",
        r.stderr
    );
    let totals: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("progress: total: "))
        .collect();
    assert!(
        !totals.is_empty(),
        "at least one progress line during a sync of {N} events to a slow upstream:\n{}",
        r.stderr
    );
    let mut last_delivered = 0;
    for line in &totals {
        // New events and deliveries never exceed the events (re-reads are not shown).
        let (new, delivered, remaining) = parse_plain(line);
        assert!(new <= N && delivered <= new, "{line}");
        assert!(delivered >= last_delivered, "never goes back: {totals:#?}");
        last_delivered = delivered;
        if let Some(rem) = remaining {
            assert_eq!(delivered + rem, N, "remaining = count - delivered: {line}");
        }
    }
    for line in r
        .stderr
        .lines()
        .filter(|l| l.starts_with("progress: window: "))
    {
        let (new, delivered, remaining) = parse_plain(line);
        assert!(new <= N && delivered <= new, "{line}");
        if let Some(rem) = remaining {
            assert_eq!(delivered + rem, N, "{line}");
        }
    }
}

/// `script` (util-linux) runs the binary on a pseudo-terminal: the in-place redraw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_on_a_terminal_redraws_the_progress_table_in_place() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: `script` (util-linux) is not installed");
        return;
    }
    const N: u64 = 3000;
    let (rig, home, config) = slow_rig(N as usize, 300).await;
    let bin = env!("CARGO_BIN_EXE_aw-sync-samay");
    let inner = format!(
        "'{bin}' --once --port {} --config '{}'",
        rig.aw.port(),
        config.display()
    );
    // The environment (HOME, XDG_*, the token) of sync_command, on `script` instead.
    let base = sync_command(&home, rig.aw.port(), &config, TEST_TOKEN);
    let mut cmd = Command::new("script");
    for (k, v) in base.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd.env("SHELL", "/bin/sh")
        .env("TERM", "xterm")
        .args(["-qfec", &inner, "/dev/null"]);
    let r = run(&mut cmd, &home).await;
    assert!(r.status.success(), "{:?}\n{:?}", r.stdout, r.stderr);
    let out = &r.stdout;
    assert!(
        out.contains(&format!(" {N} delivered")),
        "the summary: {out:?}"
    );
    // A redraw goes back over the previous frame: carriage return, then cursor up.
    let redraw = out.find("\r\x1b[").unwrap_or_else(|| panic!("{out:?}"));
    let after = &out[redraw + 3..];
    let up: String = after.chars().take_while(|c| c.is_ascii_digit()).collect();
    assert!(
        !up.is_empty() && after[up.len()..].starts_with('A'),
        "cursor up after \\r: {out:?}"
    );
    assert!(out.contains("\x1b[2K"), "lines are cleared: {out:?}");
    // The last frame stays: its total row says everything was delivered.
    let last_total = out
        .split(['\r', '\n'])
        .rfind(|l| l.contains("total "))
        .unwrap_or_else(|| panic!("{out:?}"));
    let fields: Vec<&str> = last_total
        .trim_start_matches("\x1b[2K")
        .split_whitespace()
        .collect();
    assert_eq!(fields[0], "total", "{last_total:?}");
    assert_eq!(fields[2], N.to_string(), "delivered: {last_total:?}");
    assert_eq!(fields[4], "0", "remaining: {last_total:?}");
}

// ---------------------------------------------------------------------------------------------
// docs/config.md cannot drift from the code

/// Every `section.key` of the default config, as the config file spells them.
fn config_keys() -> Vec<String> {
    let value = toml::Value::try_from(Config::default()).expect("the config serializes");
    let mut keys = Vec::new();
    for (section, table) in value.as_table().expect("a table") {
        match table.as_table() {
            Some(t) => keys.extend(t.keys().map(|k| format!("{section}.{k}"))),
            None => keys.push(section.clone()),
        }
    }
    keys
}

#[test]
fn docs_config_md_documents_every_key_of_the_config() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/config.md"))
        .expect("docs/config.md");
    let keys = config_keys();
    assert!(keys.len() >= 20, "{keys:?}");
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| !doc.contains(&format!("`{k}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/config.md does not document {missing:?} (write them as `section.key`)"
    );
}
