//! What can happen around a running sync (the ops proptest draws) and the constants they share.

use chrono::TimeDelta;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

pub(super) const BUCKETS: [&str; 2] = ["window", "afk"];
pub(super) const LOOKBACK_S: i64 = 3600;
pub(super) const PULSETIME: f64 = 60.0;
pub(super) const DAY_S: i64 = 86_400;

/// One thing that happens to the system. Times are relative to the moment the op runs.
#[derive(Debug, Clone)]
pub(super) enum Op {
    /// `count` events starting `ago_s` + their duration before now, all at one instant (`tie`)
    /// or a second apart.
    Insert {
        bucket: usize,
        ago_s: u32,
        dur_ms: u32,
        data: u8,
        count: u8,
        tie: bool,
    },
    /// A heartbeat `gap_s` after the end of the bucket's newest event (merges when the data is
    /// equal and the gap within the pulsetime, 60 s).
    Heartbeat {
        bucket: usize,
        data: u8,
        gap_s: i32,
        dur_s: u8,
    },
    /// An event inserted late: ending inside the lookback (30–55 min ago), or `beyond` it
    /// (65 min to 30 days ago).
    Backdated {
        bucket: usize,
        beyond: bool,
        permille: u16,
        dur_s: u16,
        data: u8,
    },
    /// Deletes the `which % len`-th newest event of the bucket.
    Delete {
        bucket: usize,
        which: u16,
    },
    RestartAw,
    AwDown,
    AwUp,
    /// A new aw-server database: every bucket recreated empty, ids from 1, new device id.
    ReplaceAwDatabase,
    /// The next `n` batch requests fail this way.
    UpstreamFault {
        fault: Fault,
        n: u8,
    },
    UpstreamUp,
    /// A cycle whose process dies at `at`; the next op runs a new engine on the same state file.
    Crash {
        at: CrashPoint,
    },
    Sync,
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Fault {
    Fail500,
    Fail429,
    DropBeforeStore,
    /// Stored, then the connection closes: the engine cannot know the batch arrived.
    DropAfterStore,
    /// Stored, then a 200 that is not JSON.
    Garbage,
}

#[derive(Debug, Clone, Copy)]
pub(super) enum CrashPoint {
    /// While the k-th batch (1-based) is about to be sent: it never arrives.
    BeforeBatch(u8),
    /// After the k-th batch was stored upstream, before the engine hears the answer.
    AfterBatch(u8),
    /// Once aw-server has answered k more requests (mid-scan, or wherever the cycle is then).
    AfterSourceRequests(u8),
}

pub(super) fn op_strategy() -> impl Strategy<Value = Op> {
    let bucket = 0..BUCKETS.len();
    let fault = prop_oneof![
        Just(Fault::Fail500),
        Just(Fault::Fail429),
        Just(Fault::DropBeforeStore),
        Just(Fault::DropAfterStore),
        Just(Fault::Garbage),
    ];
    let crash = prop_oneof![
        (1u8..6).prop_map(CrashPoint::BeforeBatch),
        (1u8..6).prop_map(CrashPoint::AfterBatch),
        (1u8..12).prop_map(CrashPoint::AfterSourceRequests),
    ];
    prop_oneof![
        12 => (bucket.clone(), 0u32..1800, 0u32..300_000, 0u8..3, 1u8..=5, any::<bool>())
            .prop_map(|(bucket, ago_s, dur_ms, data, count, tie)| Op::Insert {
                bucket, ago_s, dur_ms, data, count, tie
            }),
        16 => (bucket.clone(), 0u8..2, -20i32..90, 0u8..10)
            .prop_map(|(bucket, data, gap_s, dur_s)| Op::Heartbeat { bucket, data, gap_s, dur_s }),
        6 => (bucket.clone(), any::<bool>(), 0u16..1000, 0u16..600, 0u8..3)
            .prop_map(|(bucket, beyond, permille, dur_s, data)| Op::Backdated {
                bucket, beyond, permille, dur_s, data
            }),
        4 => (bucket, any::<u16>()).prop_map(|(bucket, which)| Op::Delete { bucket, which }),
        2 => Just(Op::RestartAw),
        2 => Just(Op::AwDown),
        2 => Just(Op::AwUp),
        1 => Just(Op::ReplaceAwDatabase),
        4 => (fault, 1u8..6).prop_map(|(fault, n)| Op::UpstreamFault { fault, n }),
        2 => Just(Op::UpstreamUp),
        6 => crash.prop_map(|at| Op::Crash { at }),
        14 => Just(Op::Sync),
    ]
}

pub(super) fn data(i: u8) -> Map<String, Value> {
    let apps = ["editor", "browser", "terminal"];
    let app = apps[usize::from(i) % apps.len()];
    let Value::Object(m) = json!({"app": app, "title": format!("{app} window")}) else {
        unreachable!()
    };
    m
}

pub(super) fn secs(s: i64) -> TimeDelta {
    TimeDelta::seconds(s)
}
