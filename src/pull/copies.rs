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
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::apply::{db, SLACK};
use super::PullError;
use crate::source::{AwClient, Event};
use crate::state::{CopyPrint, Store};
use crate::upstream::contract::Change;

/// A new copy of another device's event, as inserted: its data is the feed's text, sent on
/// as it came (a first pull inserts every event once: parsing each one's data into a map and
/// writing it out again cost the pull as much as the rest of its planning). Serializes as
/// aw-server's event without an id.
#[derive(Debug, serde::Serialize)]
pub struct NewCopy {
    pub timestamp: DateTime<Utc>,
    pub duration: f64,
    pub data: Box<RawValue>,
}

impl NewCopy {
    /// The copy a feed entry asks for; `None` when it is malformed (no readable timestamp, a
    /// negative or non-finite duration, data that is not an object), as [`Event`] would refuse
    /// it.
    pub fn of(change: &Change) -> Option<NewCopy> {
        let timestamp = DateTime::parse_from_rfc3339(change.timestamp.as_deref()?)
            .ok()?
            .with_timezone(&Utc);
        let duration = change.duration.filter(|d| d.is_finite() && *d >= 0.0)?;
        let data = match &change.data {
            // Valid JSON already (the feed's parse checked it): an object when it opens as one.
            Some(raw) if raw.get().trim_start().starts_with('{') => raw.clone(),
            Some(_) => return None,
            None => crate::upstream::contract::empty_object(),
        };
        Some(NewCopy {
            timestamp,
            duration,
            data,
        })
    }

    /// A version held as an event (a replacement whose copy is gone) to insert anew.
    pub fn from_event(e: &Event) -> Result<NewCopy, serde_json::Error> {
        Ok(NewCopy {
            timestamp: e.timestamp,
            duration: e.duration,
            data: serde_json::value::to_raw_value(&e.data)?,
        })
    }

    /// As an event (its data parsed): what [`print_of`] and the spans read.
    fn event(&self, data: Map<String, Value>) -> Event {
        Event::new(self.timestamp, self.duration, data)
    }

    /// `timestamp + duration`, as [`Event::end`] says it.
    pub fn end(&self) -> DateTime<Utc> {
        self.event(Map::new()).end()
    }

    /// Its print ([`print_of`]): the copy in Python aw-server, whose id was not said.
    pub fn print(&self) -> CopyPrint {
        let data = serde_json::from_str(self.data.get()).unwrap_or_default();
        print_of(&self.event(data))
    }
}

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

    fn change(timestamp: &str, duration: f64, data: Option<&str>) -> Change {
        serde_json::from_value(json!({
            "seq": 1, "device_id": "d", "bucket_id": "b", "event_id": 7, "hash": "h",
            "timestamp": timestamp, "duration": duration,
        }))
        .map(|mut c: Change| {
            c.data = data.map(|d| RawValue::from_string(d.into()).unwrap());
            c
        })
        .unwrap()
    }

    #[test]
    fn a_new_copy_sends_the_feeds_data_text_and_refuses_what_an_event_would() {
        let data = r#"{"title":"é \"q\"","app":"x","n":[1,2]}"#;
        let copy = NewCopy::of(&change("2024-05-01T10:00:00.123456+00:00", 1.5, Some(data)))
            .expect("a well-formed entry");
        let sent = serde_json::to_string(&[&copy]).unwrap();
        let event: Vec<Event> = serde_json::from_str(&sent).unwrap();
        assert_eq!(event[0].id, None, "no id: aw-server gives one");
        assert_eq!(
            event[0].data,
            serde_json::from_str::<Map<String, Value>>(data).unwrap()
        );
        assert!(sent.contains(data), "the data text as it came: {sent}");
        assert_eq!(
            copy.print(),
            print_of(&event[0]),
            "found in Python by the same print"
        );
        let empty = NewCopy::of(&change("2024-05-01T10:00:00Z", 0.0, None)).unwrap();
        assert_eq!(empty.data.get(), "{}");
        assert_eq!(empty.end(), empty.timestamp);
        for bad in [
            change("2024-05-01T10:00:00Z", 1.0, Some("[1]")),
            change("2024-05-01T10:00:00Z", 1.0, Some("null")),
            change("2024-05-01T10:00:00Z", -1.0, Some("{}")),
            change("yesterday", 1.0, Some("{}")),
        ] {
            assert!(NewCopy::of(&bad).is_none(), "{bad:?}");
        }
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
