//! The privacy controls of `[sync]` against a real Python aw-server and the real dev upstream:
//! include/exclude patterns, redaction (drop, keyed hash), `start_from`, `--dry-run`, and what
//! changing any of them does to what the upstream holds.

use std::sync::Arc;

use aw_sync_samay::config::{RedactRule, SyncConfig};
use aw_sync_samay::engine::{Engine, Settings};
use aw_sync_samay::privacy::Privacy;
use aw_sync_samay::state::Store;
use aw_sync_samay::upstream::dry_run::DryRunSink;
use chrono::Duration as ChronoDuration;
use samay_testkit::devserver::bucket_stats;
use samay_testkit::rig::{ago, event, series, test_settings, Rig};
use serde_json::{json, Value};

/// The rig's test settings with the privacy keys of `sync` compiled as `config::load` would.
fn settings(change: impl FnOnce(&mut SyncConfig)) -> Settings {
    let mut sync = SyncConfig::default();
    change(&mut sync);
    Settings {
        privacy: Privacy::from_config(&sync).expect("valid privacy settings"),
        start_from: sync.start_from_instant().expect("valid start_from"),
        ..test_settings()
    }
}

fn rule(buckets: Option<&str>, types: Option<&str>, drop: &[&str], hash: &[&str]) -> RedactRule {
    RedactRule {
        buckets: buckets.map(String::from),
        types: types.map(String::from),
        drop: drop.iter().map(|s| s.to_string()).collect(),
        hash: hash.iter().map(|s| s.to_string()).collect(),
    }
}

fn requests(rig: &Rig) -> u64 {
    rig.dev.faults().counters().requests_received
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn include_and_exclude_patterns_decide_which_buckets_reach_the_upstream() {
    let rig = Rig::new().await;
    for b in ["aw-watcher-window_h", "aw-watcher-afk_h", "other_h"] {
        rig.bucket(b).await;
        rig.insert(b, &series(6, 60.0, 600, b)).await;
    }
    let engine = rig.engine_with(settings(|s| {
        s.include_buckets = vec!["aw-watcher-*".into()];
        s.exclude_buckets = vec!["*afk*".into()];
    }));
    let r = engine.run_cycle().await.expect("cycle");
    assert_eq!(r.upload.delivered, 6);
    rig.assert_exact("aw-watcher-window_h").await;
    assert!(
        rig.upstream_events("aw-watcher-afk_h").await.is_empty(),
        "excluded wins over included"
    );
    assert!(
        rig.upstream_events("other_h").await.is_empty(),
        "not included"
    );
    assert_eq!(r.excluded, vec!["aw-watcher-afk_h", "other_h"]);
    let known: Vec<String> = engine
        .store
        .bucket_statuses()
        .unwrap()
        .into_iter()
        .map(|b| b.bucket_id)
        .collect();
    assert_eq!(
        known,
        vec!["aw-watcher-window_h"],
        "excluded buckets are not even registered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redaction_drops_and_hashes_fields_before_upload() {
    let rig = Rig::new().await;
    rig.bucket("win").await;
    rig.client()
        .create_bucket("web", "web.tab.current", "test", "test-host")
        .await
        .unwrap();
    let t = ago(900);
    let titles = ["same title", "other title", "same title"];
    let win: Vec<_> = titles
        .iter()
        .enumerate()
        .map(|(i, title)| {
            event(
                t + ChronoDuration::seconds(60 * i as i64),
                30.0,
                json!({"app": "editor", "title": title}),
            )
        })
        .collect();
    rig.insert("win", &win).await;
    rig.insert(
        "web",
        &[event(
            t,
            5.0,
            json!({"url": "https://example.org/a", "title": "A", "audible": false}),
        )],
    )
    .await;
    let engine = rig.engine_with(settings(|s| {
        s.redact = vec![
            rule(Some("win"), None, &["app"], &["title"]),
            rule(None, Some("web.tab.current"), &["title"], &["url"]),
        ];
    }));
    engine.run_cycle().await.expect("cycle");
    let key = engine.store.redaction_key();
    // Computed here independently of the engine: BLAKE3 keyed with the installation's secret,
    // over the value's JSON.
    let expect = |v: &str| {
        let json = serde_json::to_string(v).unwrap();
        format!(
            "blake3:{}",
            blake3::keyed_hash(&key, json.as_bytes()).to_hex()
        )
    };

    let mut up = rig.upstream_events("win").await;
    up.sort_by_key(|e| e.event_id);
    assert_eq!(up.len(), 3);
    for (e, title) in up.iter().zip(titles) {
        assert!(!e.data.contains_key("app"), "dropped: {:?}", e.data);
        assert_eq!(e.data["title"], Value::String(expect(title)));
        assert!(
            !e.data.values().any(|v| v.as_str() == Some(title)),
            "no clear text"
        );
    }
    assert_eq!(
        up[0].data["title"], up[2].data["title"],
        "equal titles stay linkable"
    );
    assert_ne!(up[0].data["title"], up[1].data["title"]);

    let web = rig.upstream_events("web").await;
    assert_eq!(web.len(), 1);
    assert_eq!(
        web[0].data,
        json!({"url": expect("https://example.org/a"), "audible": false})
            .as_object()
            .unwrap()
            .clone(),
        "the type rule applies to the web bucket only"
    );

    // The dedupe is on the redacted form: nothing is re-sent by an unchanged rule.
    let again = engine.run_cycle().await.unwrap();
    assert_eq!((again.upload.delivered, again.queued()), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_that_ended_before_start_from_is_sent_and_a_straddler_is_sent_whole() {
    let rig = Rig::new().await;
    rig.bucket("b").await;
    let start_from = ago(3600);
    let at = |secs_before: i64| start_from - ChronoDuration::seconds(secs_before);
    rig.insert(
        "b",
        &[
            event(at(7200), 100.0, json!({"n": "long before"})),
            event(at(100), 100.0, json!({"n": "ends at start_from"})),
            event(at(600), 1200.0, json!({"n": "straddles"})),
            event(at(-60), 30.0, json!({"n": "after"})),
            event(ago(30), 10.0, json!({"n": "recent"})),
        ],
    )
    .await;
    let engine = rig.engine_with(settings(|s| s.start_from = Some(start_from.to_rfc3339())));
    let r = engine.run_cycle().await.expect("cycle");
    assert_eq!(r.upload.delivered, 3);
    let up = rig.upstream_events("b").await;
    let names: Vec<&str> = up.iter().filter_map(|e| e.data["n"].as_str()).collect();
    assert_eq!(names, vec!["straddles", "after", "recent"]);
    let straddler = &up[0];
    let ts: chrono::DateTime<chrono::Utc> = straddler.timestamp.parse().unwrap();
    // aw-server keeps milliseconds.
    assert!(
        (ts - at(600)).num_milliseconds().abs() <= 1,
        "sent whole: its true start {ts}, before start_from"
    );
    assert!((straddler.duration - 1200.0).abs() < 1e-6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_sends_and_records_nothing_and_reports_redacted_samples() {
    let rig = Rig::new().await;
    rig.bucket("win").await;
    rig.bucket("skip").await;
    rig.insert("win", &series(10, 600.0, 60, "w")).await;
    rig.insert("skip", &series(4, 60.0, 60, "s")).await;
    let s = || {
        settings(|s| {
            s.exclude_buckets = vec!["skip".into()];
            s.redact = vec![rule(Some("win"), None, &["title"], &[])];
        })
    };
    let store_path = rig.dir.path().join("state.sqlite");
    let store = Arc::new(Store::open(&store_path).unwrap());
    let sink = Arc::new(DryRunSink::default());
    // No upstream, no token: only aw-server and the (read) state.
    let engine = Engine::dry_run(
        rig.client(),
        Arc::clone(&store),
        s(),
        "h".into(),
        Arc::clone(&sink),
        aw_sync_samay::state::DestKey::new("http://upstream.test", "test"),
    );
    let r = engine.run_cycle().await.expect("dry run");
    assert_eq!(requests(&rig), 0, "the upstream got no request at all");

    let report = sink.report();
    let win = &report.buckets["win"];
    assert_eq!(win.events, 10);
    assert_eq!(win.samples.len(), 3);
    for sample in &win.samples {
        assert!(sample["data"].get("title").is_none(), "redacted: {sample}");
        assert_eq!(sample["data"]["app"], json!("w"));
    }
    assert!(!report.buckets.contains_key("skip"));
    let text = report.render(&r);
    assert!(text.contains("win: 10 events to send"), "{text}");
    assert!(text.contains("skip: excluded"), "{text}");
    assert!(text.contains(r#""app":"w""#), "samples shown: {text}");

    // Nothing recorded: no bucket, no acknowledgement, no cursor, no cycle.
    assert!(store.bucket_statuses().unwrap().is_empty());
    assert_eq!(store.cycle_record().unwrap().last_cycle, None);
    drop(engine);

    // A second dry run reports the same; a real run then delivers all of it.
    let sink2 = Arc::new(DryRunSink::default());
    Engine::dry_run(
        rig.client(),
        Arc::clone(&store),
        s(),
        "h".into(),
        Arc::clone(&sink2),
        aw_sync_samay::state::DestKey::new("http://upstream.test", "test"),
    )
    .run_cycle()
    .await
    .unwrap();
    assert_eq!(sink2.report().buckets["win"].events, 10);
    let real = rig.engine_with(s()).run_cycle().await.unwrap();
    assert_eq!(real.upload.delivered, 10);
    assert_eq!(rig.upstream_events("win").await.len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_an_exclude_delivers_the_bucket_whole_and_resends_nothing_else() {
    let rig = Rig::new().await;
    rig.bucket("a").await;
    rig.bucket("b").await;
    // Hours old: outside the lookback, so only a read from the start can find them.
    rig.insert("a", &series(9, 600.0, 4 * 3600, "a")).await;
    rig.insert("b", &series(10, 600.0, 4 * 3600, "b")).await;
    let excluded = rig.engine_with(settings(|s| s.exclude_buckets = vec!["b".into()]));
    excluded.run_cycle().await.unwrap();
    assert!(rig.upstream_events("b").await.is_empty());
    rig.assert_exact("a").await;
    drop(excluded);

    let before = requests(&rig);
    let included = rig.engine_with(settings(|_| {}));
    let r = included.run_cycle().await.unwrap();
    rig.assert_exact("b").await;
    assert_eq!(r.upload.delivered, 10, "all of b, nothing of a");
    assert_eq!(r.buckets["a"].queued, 0);
    assert!(r.rescanned.is_empty(), "a's filters did not change");
    // Every upload request of the cycle carried only b's events.
    assert_eq!(requests(&rig) - before, r.upload.requests);
    assert!(r.upload.requests >= 1);
    let a = bucket_stats(&rig.dev, "a").await.unwrap();
    assert_eq!((a.events, a.duplicates, a.versions_replaced), (9, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_redact_rule_resends_exactly_the_affected_events_redacted() {
    let rig = Rig::new().await;
    rig.bucket("win").await;
    rig.bucket("afk").await;
    rig.insert("win", &series(5, 600.0, 3 * 3600, "w")).await;
    rig.insert("afk", &series(4, 600.0, 3 * 3600, "a")).await;
    rig.engine().run_cycle().await.unwrap();
    rig.assert_exact("win").await;

    let engine = rig.engine_with(settings(|s| {
        s.redact = vec![rule(Some("win"), None, &["title"], &[])];
    }));
    let r = engine.run_cycle().await.unwrap();
    assert_eq!(r.rescanned, vec!["win"]);
    assert_eq!(r.upload.delivered, 5, "the 5 affected events, nothing else");
    let win = rig.upstream_events("win").await;
    assert_eq!(win.len(), 5);
    for e in &win {
        assert!(!e.data.contains_key("title"), "{:?}", e.data);
        assert_eq!(e.versions, 2, "a new version of the same event");
    }
    let afk = bucket_stats(&rig.dev, "afk").await.unwrap();
    assert_eq!(
        (afk.events, afk.duplicates, afk.versions_replaced),
        (4, 0, 0)
    );

    // Settled: the next cycle neither rescans nor sends.
    let quiet = engine.run_cycle().await.unwrap();
    assert!(quiet.rescanned.is_empty());
    assert_eq!(quiet.upload.delivered, 0);

    // Removing the rule again restores the full events (new versions once more).
    let r = rig.engine().run_cycle().await.unwrap();
    assert_eq!(r.upload.delivered, 5);
    rig.assert_exact("win").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_earlier_start_from_reads_the_bucket_again_and_sends_what_it_now_allows() {
    let rig = Rig::new().await;
    rig.bucket("b").await;
    rig.insert("b", &series(6, 600.0, 5 * 3600, "old")).await;
    rig.insert("b", &series(3, 60.0, 60, "new")).await;
    let late = rig.engine_with(settings(|s| s.start_from = Some(ago(3600).to_rfc3339())));
    assert_eq!(late.run_cycle().await.unwrap().upload.delivered, 3);
    drop(late);
    let all = rig.engine_with(settings(|_| {}));
    let r = all.run_cycle().await.unwrap();
    assert_eq!(r.rescanned, vec!["b"]);
    assert_eq!(
        r.upload.delivered, 6,
        "the old events only; the new ones are held unchanged"
    );
    rig.assert_exact("b").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_dry_run_needs_no_upstream_nor_token_and_prints_the_report() {
    let rig = Rig::new().await;
    rig.bucket("win").await;
    rig.insert("win", &series(5, 60.0, 120, "w")).await;
    let home = rig.dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    // No base_url, no token in the environment.
    let config = samay_testkit::bin::write_config(
        &home,
        "",
        "\n[[sync.redact]]\nbuckets = \"win\"\nhash = [\"title\"]\n",
    );
    let mut cmd = samay_testkit::bin::isolated_command(&home);
    cmd.arg("--port")
        .arg(rig.aw.port().to_string())
        .arg("--config")
        .arg(&config)
        .args(["--once", "--dry-run"]);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("nothing was sent and nothing recorded"),
        "{stdout}"
    );
    assert!(stdout.contains("win: 5 events to send"), "{stdout}");
    assert!(
        stdout.contains(r#""title":"blake3:"#),
        "redacted samples: {stdout}"
    );
    assert!(!stdout.contains("w #0"), "no clear-text title: {stdout}");
    assert_eq!(requests(&rig), 0);
}
