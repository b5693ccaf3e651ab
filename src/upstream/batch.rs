//! A batch on its way upstream, as the uploader holds it, and the writer of its JSON.
//!
//! Why not [`BatchRequest`] itself: its events carry the wire's strings (the bucket id, the hash
//! in hex, the start in RFC 3339), three allocations per event made when the batch was built,
//! copied once more into the body and freed after the acknowledgement — on the 1M-event
//! catch-up, building, encoding and dropping the requests took 18 % of the sync's CPU (perf,
//! issue 9). An [`OutEvent`] keeps what those strings are written from (a shared bucket id, the
//! 16 hash bytes, the start in nanoseconds), and [`Batch::write_json`] writes them straight into
//! the body. The bytes are [`BatchRequest`]'s JSON exactly (`serde_json::to_writer` of
//! [`Batch::request`]; tests below), so nothing changes for an upstream.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::Arc;

use serde_json::value::RawValue;
use uuid::Uuid;

use crate::state::{hash_hex_ascii, ns_to_rfc3339, EventHash};
use crate::upstream::contract::{BatchRequest, BucketMeta, Deletion, UpEvent};

/// One event version of a [`Batch`].
#[derive(Debug, Clone)]
pub struct OutEvent {
    /// Shared by every version read from one page.
    pub bucket_id: Arc<str>,
    /// The upstream's event id (`state::upstream_event_id`).
    pub event_id: i64,
    pub hash: EventHash,
    /// The start, nanoseconds since the epoch (the wire's `timestamp`, in RFC 3339 UTC).
    pub start_ns: i64,
    /// Seconds, as aw-server served it.
    pub duration: f64,
    pub data: Box<RawValue>,
}

impl OutEvent {
    /// The event as the upstream receives it.
    pub fn to_up_event(&self) -> UpEvent {
        UpEvent {
            bucket_id: self.bucket_id.to_string(),
            event_id: self.event_id,
            hash: crate::state::hash_hex(&self.hash),
            timestamp: ns_to_rfc3339(self.start_ns),
            duration: self.duration,
            data: self.data.clone(),
        }
    }
}

/// `POST v1/events/batch` as the uploader builds it: [`BatchRequest`]'s fields, its events as
/// [`OutEvent`]s.
#[derive(Debug, Clone)]
pub struct Batch {
    pub batch_id: Uuid,
    pub device_id: Uuid,
    pub user_id: Option<String>,
    pub hostname: String,
    pub sync_timestamp: String,
    pub buckets: BTreeMap<String, BucketMeta>,
    pub events: Vec<OutEvent>,
    pub deletions: Vec<Deletion>,
}

impl Batch {
    /// The request the upstream receives (for sinks that look inside, and tests).
    pub fn request(&self) -> BatchRequest {
        BatchRequest {
            batch_id: self.batch_id,
            device_id: self.device_id,
            user_id: self.user_id.clone(),
            hostname: self.hostname.clone(),
            sync_timestamp: self.sync_timestamp.clone(),
            buckets: self.buckets.clone(),
            events: self.events.iter().map(OutEvent::to_up_event).collect(),
            deletions: self.deletions.clone(),
        }
    }
}

/// What the upstream client can send as a batch: the engine's [`Batch`], or a
/// [`BatchRequest`] made by hand (tests, tools).
pub trait BatchBody: Sync {
    fn batch_id(&self) -> Uuid;
    /// Events in it (what an acknowledgement must account for).
    fn event_count(&self) -> usize;
    /// The request's JSON.
    fn write_json<W: Write + ?Sized>(&self, out: &mut W) -> io::Result<()>;
}

impl BatchBody for BatchRequest {
    fn batch_id(&self) -> Uuid {
        self.batch_id
    }

    fn event_count(&self) -> usize {
        self.events.len()
    }

    fn write_json<W: Write + ?Sized>(&self, out: &mut W) -> io::Result<()> {
        value(out, self)
    }
}

impl BatchBody for Batch {
    fn batch_id(&self) -> Uuid {
        self.batch_id
    }

    fn event_count(&self) -> usize {
        self.events.len()
    }

    /// Field by field in [`BatchRequest`]'s order; every value goes through serde_json (its
    /// escaping, its numbers) except those whose text is known ASCII without anything to
    /// escape: the hash in hex, the RFC 3339 start, the data (already JSON).
    fn write_json<W: Write + ?Sized>(&self, out: &mut W) -> io::Result<()> {
        out.write_all(b"{\"batch_id\":")?;
        value(out, &self.batch_id)?;
        out.write_all(b",\"device_id\":")?;
        value(out, &self.device_id)?;
        out.write_all(b",\"user_id\":")?;
        value(out, &self.user_id)?;
        out.write_all(b",\"hostname\":")?;
        value(out, &self.hostname)?;
        out.write_all(b",\"sync_timestamp\":")?;
        value(out, &self.sync_timestamp)?;
        out.write_all(b",\"buckets\":")?;
        value(out, &self.buckets)?;
        out.write_all(b",\"events\":[")?;
        // A batch's events are runs of one bucket: its id is escaped once per run.
        let mut bucket: Option<(&str, Vec<u8>)> = None;
        for (i, e) in self.events.iter().enumerate() {
            if i > 0 {
                out.write_all(b",")?;
            }
            out.write_all(b"{\"bucket_id\":")?;
            match &bucket {
                Some((id, text)) if *id == &*e.bucket_id => out.write_all(text)?,
                _ => {
                    let text = serde_json::to_vec(&*e.bucket_id)?;
                    out.write_all(&text)?;
                    bucket = Some((&e.bucket_id, text));
                }
            }
            out.write_all(b",\"event_id\":")?;
            value(out, &e.event_id)?;
            out.write_all(b",\"hash\":\"")?;
            out.write_all(&hash_hex_ascii(&e.hash))?;
            out.write_all(b"\",\"timestamp\":\"")?;
            out.write_all(&crate::rfc3339::format_ns_ascii(e.start_ns))?;
            out.write_all(b"\",\"duration\":")?;
            value(out, &e.duration)?;
            out.write_all(b",\"data\":")?;
            out.write_all(e.data.get().as_bytes())?;
            out.write_all(b"}")?;
        }
        out.write_all(b"]")?;
        if !self.deletions.is_empty() {
            out.write_all(b",\"deletions\":")?;
            value(out, &self.deletions)?;
        }
        out.write_all(b"}")
    }
}

/// `v` as serde_json writes it.
fn value<W: Write + ?Sized, T: serde::Serialize + ?Sized>(out: &mut W, v: &T) -> io::Result<()> {
    serde_json::to_writer(out, v).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn event(bucket_id: &str, event_id: i64, start_ns: i64, duration: f64, data: &str) -> OutEvent {
        OutEvent {
            bucket_id: Arc::from(bucket_id),
            event_id,
            hash: [event_id as u8; 16],
            start_ns,
            duration,
            data: RawValue::from_string(data.to_owned()).expect("JSON"),
        }
    }

    fn batch(events: Vec<OutEvent>, deletions: Vec<Deletion>, user_id: Option<String>) -> Batch {
        Batch {
            batch_id: Uuid::from_u128(7),
            device_id: Uuid::from_u128(9),
            user_id,
            hostname: "höst \"q\"\n".into(),
            sync_timestamp: "2026-12-07T08:00:00.000Z".into(),
            buckets: BTreeMap::from([(
                "aw-watcher-window_h".to_string(),
                BucketMeta {
                    bucket_type: "currentwindow".into(),
                    client: "aw-watcher-window".into(),
                    hostname: "h".into(),
                    created: None,
                },
            )]),
            events,
            deletions,
        }
    }

    fn written(b: &Batch) -> String {
        let mut out = Vec::new();
        b.write_json(&mut out).expect("writes into memory");
        String::from_utf8(out).expect("UTF-8")
    }

    fn serde(b: &Batch) -> String {
        serde_json::to_string(&b.request()).expect("serializes")
    }

    #[test]
    fn empty_lists_and_deletions_are_written_as_serde_writes_the_request() {
        let none = batch(Vec::new(), Vec::new(), None);
        assert_eq!(written(&none), serde(&none));
        assert!(!written(&none).contains("deletions"));
        let deletions = vec![Deletion {
            bucket_id: "b\u{7f}\u{1}".into(),
            event_id: -3,
        }];
        let with = batch(
            vec![
                event("a", 1, -1, 0.0, "{}"),
                event(
                    "b",
                    i64::MAX,
                    i64::MIN,
                    1e300,
                    r#"{"x":[1,{"y":"\u00e9"}]}"#,
                ),
            ],
            deletions,
            Some("user \u{2028}".into()),
        );
        assert_eq!(written(&with), serde(&with));
        // And it is a request an upstream reads back.
        let back: BatchRequest = serde_json::from_str(&written(&with)).expect("reads back");
        assert_eq!(back.events.len(), 2);
        assert_eq!(back.events[1].timestamp, "1677-09-21T00:12:43.145224192Z");
        assert_eq!(back.deletions.len(), 1);
    }

    proptest! {
        /// Whatever the ids, instants, durations and data, and however a batch's events are
        /// spread over buckets (the writer escapes a bucket id once per run of it), the body is
        /// the request's JSON byte for byte.
        #[test]
        fn the_written_body_is_the_requests_json(
            events in prop::collection::vec(
                (
                    prop::sample::select(vec!["aw-watcher-window_h", "b\"\\\u{0}", "ünï\u{1f600}", ""]),
                    any::<i64>(),
                    any::<i64>(),
                    prop_oneof![Just(0.0), Just(f64::MIN_POSITIVE), any::<f64>().prop_filter("finite", |d| d.is_finite())],
                    prop::sample::select(vec![
                        "{}",
                        r#"{"app":"Firefox","title":"a \"quoted\" \\ title\n\u0007"}"#,
                        r#"{"n":-1.5e-7,"deep":{"k":[true,null,{"z":"\ud83d\ude00"}]}}"#,
                    ]),
                ),
                0..12,
            ),
            deletions in prop::collection::vec((".{0,6}", any::<i64>()), 0..3),
            user in prop::option::of(".{0,8}"),
        ) {
            let events = events
                .into_iter()
                .map(|(b, id, start, d, data)| event(b, id, start, d, data))
                .collect();
            let deletions = deletions
                .into_iter()
                .map(|(bucket_id, event_id)| Deletion { bucket_id, event_id })
                .collect();
            let b = batch(events, deletions, user);
            prop_assert_eq!(written(&b), serde(&b));
        }
    }
}
