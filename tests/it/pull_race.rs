//! Issue 14, the pull killed mid-insert: aw-server goes on with a list insert whose client (the
//! sidecar) was killed, so its events can land after the restarted sidecar swept the bucket —
//! while it pulls, or after it has finished. A proxy in front of the real Python aw-server
//! holds the insert of the killed sidecar and lets it land at those moments, at explicit sync
//! points: every pulled event still ends up in aw-server exactly once. And the pull's own
//! overlap: a page is recorded while the next one is written, which must not hide the first
//! page's copies from the next.

use std::future::ready;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aw_sync_samay::auth::BoxFuture;
use aw_sync_samay::clock::{Clock, ManualClock};
use aw_sync_samay::state::DestKey;
use aw_sync_samay::upstream::UpstreamClient;
use chrono::{TimeDelta, Utc};
use samay_testkit::bin::{run, sync_command};
use samay_testkit::daemon::{send_signal, Daemon};
use samay_testkit::devserver::TEST_TOKEN;
use samay_testkit::proxy::{Forwarded, Hold, Proxy};
use samay_testkit::rig::Rig;
use serde_json::json;
use tokio::sync::Notify;

use super::pull::{
    assert_copy, b_pushed, content, cycle, double, engine, ev, home_a, t0, CountedUpstream,
    B_BUCKET, B_COPY,
};

const LIMIT: Duration = Duration::from_secs(60);

/// The proxy's plan for the inserts into the pulled bucket, counted from 1: the 1st and the
/// 4th are held until `release`; the 2nd lets the 1st go first and waits until aw-server has
/// written it. The rest go through.
struct Race {
    inserts: AtomicUsize,
    held: Notify,
    release: Notify,
}

fn inserts_answered(list: &[(samay_testkit::hostile::Seen, u16)], path: &str) -> usize {
    list.iter()
        .filter(|(s, status)| s.method == "POST" && s.target.starts_with(path) && *status == 200)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_sidecars_insert_landing_late_is_not_imported_twice() {
    let rig = Rig::new().await;
    // Two pages of the feed: a full one and a fifth of one.
    let first = aw_sync_samay::pull::PULL_PAGE;
    let n = i64::try_from(first + first / 5).expect("a page fits an i64");
    let (_db, b, eb, _) = b_pushed(&rig, n, |_| {}).await;

    let path = format!("/api/0/buckets/{B_COPY}/events");
    let race = Arc::new(Race {
        inserts: AtomicUsize::new(0),
        held: Notify::new(),
        release: Notify::new(),
    });
    let forwarded = Arc::new(Forwarded::default());
    let gate = {
        let (race, forwarded, path) = (race.clone(), forwarded.clone(), path.clone());
        move |seen: &samay_testkit::hostile::Seen| -> Hold {
            if seen.method != "POST" || !seen.target.starts_with(&path) {
                return Box::pin(ready(()));
            }
            let (race, forwarded, path) = (race.clone(), forwarded.clone(), path.clone());
            match race.inserts.fetch_add(1, Ordering::SeqCst) + 1 {
                1 | 4 => Box::pin(async move {
                    race.held.notify_one();
                    race.release.notified().await;
                }),
                2 => Box::pin(async move {
                    race.release.notify_one();
                    forwarded
                        .wait_until(LIMIT, |l| inserts_answered(l, &path) == 1)
                        .await;
                }),
                _ => Box::pin(ready(())),
            }
        }
    };
    let proxy = Proxy::start(rig.aw.port(), forwarded.clone(), gate).await;

    let (home, config) = home_a(&rig);
    let once = || {
        let mut cmd = sync_command(&home, proxy.port(), &config, TEST_TOKEN);
        cmd.arg("--once");
        cmd
    };
    let py = rig.client();
    let killed_while_held = |killed: &mut Daemon| {
        send_signal(killed.pid(), "KILL");
        let _ = killed.child.wait();
    };

    // 1. Killed while its first insert waits in the proxy; aw-server gets it only when the
    // restarted sidecar, having swept, inserts the same page again.
    let mut killed = Daemon::spawn(&mut once(), &home.join("out"));
    tokio::time::timeout(LIMIT, race.held.notified())
        .await
        .expect("the first insert reached the proxy");
    killed_while_held(&mut killed);
    assert!(
        content(&py, B_COPY).await.is_empty(),
        "nothing landed before the restart"
    );
    let done = run(&mut once(), &home.join("out")).await;
    assert!(done.status.success(), "{}", done.all());
    assert_eq!(
        inserts_answered(&forwarded.list(), &path),
        3,
        "the dead insert landed while the restarted sidecar pulled, after its sweep"
    );
    assert_eq!(
        content(&py, B_COPY).await.len() as i64,
        n,
        "each event once"
    );
    assert_copy(&b, B_BUCKET, &py, B_COPY).await;

    // 2. Killed again while an insert is held, which lands only after the restarted sidecar
    // has finished: the next run deletes it.
    let more: Vec<_> = (n..n + 300)
        .map(|i| ev(i * 3, 2.0, json!({"status": "not-afk", "n": i})))
        .collect();
    b.insert_events(B_BUCKET, &more).await.unwrap();
    eb.run_cycle().await.expect("B pushes");
    let mut killed = Daemon::spawn(&mut once(), &home.join("out"));
    tokio::time::timeout(LIMIT, race.held.notified())
        .await
        .expect("the insert reached the proxy");
    killed_while_held(&mut killed);
    let done = run(&mut once(), &home.join("out")).await;
    assert!(done.status.success(), "{}", done.all());
    assert_copy(&b, B_BUCKET, &py, B_COPY).await;
    race.release.notify_one();
    forwarded
        .wait_until(LIMIT, |l| inserts_answered(l, &path) == 5)
        .await;
    assert_eq!(
        content(&py, B_COPY).await.len() as i64,
        n + 2 * more.len() as i64,
        "the dead insert landed after the restarted sidecar finished"
    );
    let done = run(&mut once(), &home.join("out")).await;
    assert!(done.status.success(), "{}", done.all());
    assert_eq!(
        content(&py, B_COPY).await.len() as i64,
        n + more.len() as i64,
        "each event once"
    );
    assert_copy(&b, B_BUCKET, &py, B_COPY).await;
    // The sweep's record is done with: nothing is read or deleted again.
    let idle = run(&mut once(), &home.join("out")).await;
    assert!(idle.status.success(), "{}", idle.all());
    assert!(!idle.all().contains("interrupted pull"), "{}", idle.all());
    assert_copy(&b, B_BUCKET, &py, B_COPY).await;
}

/// A pending insert of a pull that died is watched for events landing late: each sweep deletes
/// what has landed and counts it; the record ends when as many events as were sent have been
/// seen, or ten minutes after it was sent (on the engine's clock: no waiting).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_insert_is_watched_until_all_of_it_landed_or_ten_minutes_passed() {
    let rig = Rig::new().await;
    let (_db, b, _eb, _) = b_pushed(&rig, 20, |_| {}).await;
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let mut ea = engine(&rig, rig.client(), "a.sqlite");
    ea.clock = clock.clone();
    assert_eq!(cycle(&ea).await.inserted, 20);
    let py = rig.client();
    let dest = ea
        .store
        .destination(&DestKey::new("http://upstream.test", "dev"), false)
        .unwrap()
        .expect("the engine's destination");
    let row = ea.store.pull_buckets(dest).unwrap()[0].row;
    let ns = |t: chrono::DateTime<Utc>| t.timestamp_nanos_opt().unwrap();
    let span = (ns(t0()), ns(t0() + TimeDelta::seconds(70)));
    let unseen = || -> Vec<i64> {
        let p = ea.store.pull_pending(dest).unwrap();
        p.iter().map(|p| p.unseen).collect()
    };
    let stray = |i: i64| ev(i * 3 + 1, 1.0, json!({"stray": i}));

    // Four events sent by a sidecar that died; three have landed.
    let sent_at = clock.now().timestamp();
    ea.store
        .pull_add_pending(&[(row, span.0, span.1, 4)], sent_at)
        .unwrap();
    py.insert_events(B_COPY, &[stray(0), stray(1), stray(2)])
        .await
        .unwrap();
    assert_eq!(cycle(&ea).await.swept, 3);
    assert_eq!(unseen(), vec![1], "one may still land");
    assert_copy(&b, B_BUCKET, &py, B_COPY).await;
    clock.advance(TimeDelta::minutes(5));
    assert_eq!(cycle(&ea).await.swept, 0);
    assert_eq!(unseen(), vec![1], "still watched");
    py.insert_events(B_COPY, &[stray(3)]).await.unwrap();
    assert_eq!(cycle(&ea).await.swept, 1);
    assert!(unseen().is_empty(), "all four seen: done with");
    assert_copy(&b, B_BUCKET, &py, B_COPY).await;

    // One that never lands (cut before aw-server read it whole): given up after ten minutes.
    ea.store
        .pull_add_pending(&[(row, span.0, span.1, 2)], clock.now().timestamp())
        .unwrap();
    cycle(&ea).await;
    clock.advance(TimeDelta::minutes(9));
    cycle(&ea).await;
    assert_eq!(unseen(), vec![2]);
    clock.advance(TimeDelta::minutes(2));
    assert_eq!(cycle(&ea).await.swept, 0);
    assert!(unseen().is_empty(), "given up");
    assert_copy(&b, B_BUCKET, &py, B_COPY).await;
}

/// A page is recorded while the next one is written; an event of the first page that changes
/// while the pull runs comes again in the next page, which must see the first page's record:
/// the new version replaces the copy just made, never a second copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_changed_while_pulled_replaces_the_copy_the_previous_page_made() {
    let rig = Rig::new().await;
    // 10 events: a full first page (7) and the rest.
    let (_db, b, eb, events) = b_pushed(&rig, 10, |_| {}).await;
    // B pushes newest first: the newest event is in the first page.
    let held = b.get_events(B_BUCKET, None, None, None).await.unwrap();
    let newest = held
        .iter()
        .max_by_key(|e| e.timestamp)
        .and_then(|e| e.id)
        .unwrap();
    let (da, a) = double().await;
    let mut ea = engine(&rig, a.clone(), "a.sqlite");
    let eb = Arc::new(eb);
    let (changed, pusher) = (b.clone(), eb.clone());
    let grown = events[9].clone();
    // While the pull writes the first page, it reads the next: the event changes before that.
    let before: Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send> = Box::new(move || {
        Box::pin(async move {
            let mut grown = grown;
            grown.duration += 60.0;
            changed
                .replace_event(B_BUCKET, newest, &grown)
                .await
                .unwrap();
            pusher.run_cycle().await.expect("B pushes the new version");
        })
    });
    ea.upstream = Arc::new(CountedUpstream {
        inner: UpstreamClient::new(&rig.dev.base_url(), Duration::from_secs(5), true).unwrap(),
        asked: Default::default(),
        before_page: std::sync::Mutex::new(Some(before)),
    });
    let stats = cycle(&ea).await;
    assert_eq!((stats.inserted, stats.replaced), (10, 1), "{stats:?}");
    assert_copy(&b, B_BUCKET, &a, B_COPY).await;
    drop(da);
}
