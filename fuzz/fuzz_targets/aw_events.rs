//! Any bytes as aw-server's bodies (event pages, one event, the bucket list, server info),
//! and what the sync engine computes from every event it reads.
#![no_main]

use std::collections::BTreeMap;

use aw_sync_samay::source::{Bucket, Event, ServerInfo};
use aw_sync_samay::state::hash::{event_hash, Span};
use libfuzzer_sys::fuzz_target;

fn check(e: &Event) {
    assert!(e.duration.is_finite());
    assert!(e.end() >= e.timestamp);
    match Span::of(e) {
        Some(span) => {
            assert!(span.end_ns() >= span.start_ns);
            assert!(event_hash(e).is_some());
        }
        None => assert!(event_hash(e).is_none()),
    }
    // Serialized and read back: the same event, bit for bit.
    let text = serde_json::to_vec(e).expect("an event serializes");
    let back: Event = serde_json::from_slice(&text).expect("and parses back");
    assert_eq!(back.timestamp, e.timestamp);
    assert_eq!(back.duration.to_bits(), e.duration.to_bits());
    assert_eq!(back.data, e.data);
    assert_eq!(event_hash(&back).map(|h| h.0), event_hash(e).map(|h| h.0));
}

fuzz_target!(|body: &[u8]| {
    if let Ok(events) = serde_json::from_slice::<Vec<Event>>(body) {
        events.iter().for_each(check);
    }
    if let Ok(Some(e)) = serde_json::from_slice::<Option<Event>>(body) {
        check(&e);
    }
    let _ = serde_json::from_slice::<BTreeMap<String, Bucket>>(body);
    let _ = serde_json::from_slice::<ServerInfo>(body);
});
