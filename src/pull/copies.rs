//! Copies whose local id aw-server never said. Python aw-server 0.12 answers `null` to an insert
//! of several events, so the pull records such a copy with local id 0 and its *print* (its
//! start to the millisecond — what Python keeps — and its data, hashed; and its duration) and
//! finds it by that only when its id is needed: a new version to write in place, a tombstone,
//! or a sweep after a crash. A first pull then costs aw-server one insert per page and nothing
//! else (reading every inserted event back to learn its id cost Python aw-server as much as the
//! insert itself); the few copies that ever change are found with one end-bounded read per
//! 256 of them.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::apply::{db, SLACK};
use super::PullError;
use crate::source::{AwClient, Event};
use crate::state::{CopyPrint, Store};

/// Copies looked up with one read.
const GROUP: usize = 256;
/// Events the read asks for beyond the copies the mappings place in its span: room for an event
/// the pull did not write there (the sweep deletes those it finds).
const MARGIN: u64 = 16;

/// The print of an event as aw-server keeps it.
pub fn print_of(e: &Event) -> CopyPrint {
    CopyPrint {
        fp: fingerprint(e.timestamp, &e.data),
        dur_us: (e.duration * 1e6).round() as i64,
    }
}

/// 16 bytes of blake3 over the start to the millisecond and the data, keys sorted (Python's
/// answers sort them; what was sent may not).
fn fingerprint(ts: DateTime<Utc>, data: &Map<String, Value>) -> Vec<u8> {
    let mut h = blake3::Hasher::new();
    h.update(&ts.timestamp_millis().to_le_bytes());
    object(&mut h, data);
    h.finalize().as_bytes()[..16].to_vec()
}

fn object(h: &mut blake3::Hasher, m: &Map<String, Value>) {
    let mut keys: Vec<(&String, &Value)> = m.iter().collect();
    keys.sort_unstable_by(|a, b| a.0.cmp(b.0));
    h.update(b"{");
    for (k, v) in keys {
        h.update(Value::String(k.clone()).to_string().as_bytes());
        h.update(b":");
        value(h, v);
        h.update(b",");
    }
    h.update(b"}");
}

fn value(h: &mut blake3::Hasher, v: &Value) {
    match v {
        Value::Object(m) => object(h, m),
        Value::Array(items) => {
            h.update(b"[");
            for item in items {
                value(h, item);
                h.update(b",");
            }
            h.update(b"]");
        }
        other => {
            h.update(other.to_string().as_bytes());
        }
    }
}

/// Pairs copies (event id, print) with events read from aw-server (local id, print): the same
/// fingerprint, the nearest duration, each read event at most once. Returns (event id, local id).
pub fn pair(wanted: &[(i64, CopyPrint)], found: Vec<(i64, CopyPrint)>) -> Vec<(i64, i64)> {
    let mut by_fp: HashMap<Vec<u8>, Vec<(i64, i64)>> = HashMap::new();
    for (id, p) in found {
        by_fp.entry(p.fp).or_default().push((id, p.dur_us));
    }
    let mut out = Vec::new();
    for (event_id, p) in wanted {
        let Some(slot) = by_fp.get_mut(&p.fp) else {
            continue;
        };
        let best = slot
            .iter()
            .enumerate()
            .min_by_key(|(_, (_, dur))| (dur - p.dur_us).abs())
            .map(|(i, _)| i);
        if let Some(i) = best {
            out.push((*event_id, slot.swap_remove(i).0));
        }
    }
    out
}

/// Finds the local ids of copies of the pull bucket `row` (local bucket `bucket`) that the
/// mappings do not know, records them, and returns event id → local id. A copy not found is
/// gone (the user deleted it): it is not in the answer.
pub async fn find(
    source: &AwClient,
    store: &std::sync::Arc<Store>,
    (row, bucket): (i64, &str),
    event_ids: Vec<i64>,
) -> Result<HashMap<i64, i64>, PullError> {
    let mut wanted = db(store, move |s| s.pull_unresolved(row, &event_ids)).await?;
    wanted.sort_by_key(|w| w.1);
    let mut resolved = HashMap::new();
    for group in wanted.chunks(GROUP) {
        // Newest first up to the group's last end: every copy of the group whole (a copy
        // crossing `end` would be answered cut), bounded by `end` only (a `start` bound makes
        // Python aw-server test every event of the 24 hours before it), as many as the
        // mappings place in the span and a margin.
        let lo = group.iter().map(|w| w.1).min().unwrap_or(0);
        let end = group
            .iter()
            .map(|w| at(w.1) + chrono::TimeDelta::microseconds(w.2.dur_us.max(0)))
            .max()
            .unwrap_or_else(|| at(lo))
            + SLACK;
        let lo_ms = lo - lo.rem_euclid(1_000_000);
        let hi = end.timestamp_nanos_opt().unwrap_or(i64::MAX);
        let held = db(store, move |s| s.pull_count_in(row, lo_ms, hi)).await?;
        let events = source
            .get_events(bucket, None, Some(end), Some(held + MARGIN))
            .await?;
        let ids: Vec<i64> = events.iter().filter_map(|e| e.id).collect();
        let known = db(store, move |s| s.pull_known_local(row, &ids)).await?;
        let found: Vec<(i64, CopyPrint)> = events
            .iter()
            .filter_map(|e| {
                e.id.filter(|id| !known.contains(id))
                    .map(|id| (id, print_of(e)))
            })
            .collect();
        let group: Vec<(i64, CopyPrint)> = group.iter().map(|w| (w.0, w.2.clone())).collect();
        let pairs = pair(&group, found);
        resolved.extend(pairs.iter().copied());
        db(store, move |s| s.pull_resolve(row, &pairs)).await?;
    }
    Ok(resolved)
}

pub fn at(ns: i64) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp_nanos(ns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn event(ms: i64, us_extra: i64, duration: f64, data: Value) -> Event {
        let Value::Object(map) = data else {
            panic!("an object")
        };
        Event::new(
            Utc.timestamp_millis_opt(ms).unwrap() + chrono::TimeDelta::microseconds(us_extra),
            duration,
            map,
        )
    }

    #[test]
    fn a_copy_is_known_by_its_millisecond_and_data_whatever_their_key_order() {
        let sent = event(
            1_000,
            456,
            2.5,
            json!({"b": [1, {"y": 1, "x": 2}], "a": "é"}),
        );
        // Python keeps milliseconds and answers with sorted keys.
        let kept = event(1_000, 0, 2.5, json!({"a": "é", "b": [1, {"x": 2, "y": 1}]}));
        assert_eq!(print_of(&sent), print_of(&kept));
        let later = event(1_001, 0, 2.5, json!({"a": "é", "b": [1, {"x": 2, "y": 1}]}));
        assert_ne!(print_of(&sent).fp, print_of(&later).fp);
        let other = event(1_000, 0, 2.5, json!({"a": "e", "b": [1, {"x": 2, "y": 1}]}));
        assert_ne!(print_of(&sent).fp, print_of(&other).fp);
    }

    #[test]
    fn twins_pair_by_nearest_duration_each_event_once() {
        let p = |dur: f64| print_of(&event(5_000, 0, dur, json!({"app": "x"})));
        let wanted = vec![(1, p(9.0)), (2, p(5.0)), (3, p(5.0))];
        // Read back: local 10 (5 s), 11 (9 s, answered cut to 8 s by the read's end), 12 (5 s).
        let found = vec![(10, p(5.0)), (11, p(8.0)), (12, p(5.0))];
        let mut got = pair(&wanted, found);
        got.sort();
        assert_eq!(got, vec![(1, 11), (2, 10), (3, 12)]);
        let none = pair(&[(4, p(1.0))], vec![]);
        assert!(none.is_empty(), "a copy gone is not paired");
    }
}
