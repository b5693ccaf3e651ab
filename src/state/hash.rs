//! The canonical event hash: what "the same event" means for dedupe.
//!
//! aw-server-rust prints `...Z` with nanoseconds, Python aw-server `+00:00` with microseconds,
//! and a JSON object's key order is whatever the server's map kept. The hash therefore covers
//! the instant as integer nanoseconds since the epoch (UTC), the duration as integer nanoseconds,
//! and the data as JSON with keys sorted at every depth — so the same event hashes the same
//! whichever server served it, and a heartbeat that grew the event changes the hash.

use std::fmt::Write as _;

use serde_json::Value;

use crate::source::Event;

/// 128 bits of BLAKE3: collisions only matter between two versions of one event key.
pub type EventHash = [u8; 16];

/// An event reduced to what the hash and the upstream need, with its instants as integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start_ns: i64,
    pub duration_ns: i64,
}

impl Span {
    /// `None` when the timestamp is outside what i64 nanoseconds hold (years 1677–2262) or the
    /// duration is not a finite, non-negative number: such an event cannot be represented.
    pub fn of(event: &Event) -> Option<Span> {
        let start_ns = event.timestamp.timestamp_nanos_opt()?;
        let duration_ns = duration_to_ns(event.duration)?;
        start_ns.checked_add(duration_ns)?;
        Some(Span {
            start_ns,
            duration_ns,
        })
    }

    pub fn end_ns(&self) -> i64 {
        self.start_ns.saturating_add(self.duration_ns)
    }
}

/// Seconds (f64, as both servers send them) to whole nanoseconds, rounding so that the float
/// noise of `n / 1e9` does not make two equal durations differ.
pub fn duration_to_ns(seconds: f64) -> Option<i64> {
    if !seconds.is_finite() || seconds < 0.0 {
        return None;
    }
    let ns = (seconds * 1e9).round();
    (ns < i64::MAX as f64).then_some(ns as i64)
}

/// Hash of an event's canonical form; `None` when the event cannot be represented (see [`Span::of`]).
pub fn event_hash(event: &Event) -> Option<(EventHash, Span)> {
    let span = Span::of(event)?;
    let mut canonical = Vec::with_capacity(256);
    write_canonical_map(&mut canonical, &event.data);
    let mut hasher = blake3::Hasher::new();
    hasher.update(&span.start_ns.to_le_bytes());
    hasher.update(&span.duration_ns.to_le_bytes());
    hasher.update(&canonical);
    let mut out = [0u8; 16];
    out.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    Some((out, span))
}

pub fn hash_hex(hash: &EventHash) -> String {
    let mut s = String::with_capacity(32);
    for b in hash {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// JSON with object keys sorted at every depth, whatever map type serde_json was built with.
pub fn canonical_json(value: &Value) -> String {
    let mut out = Vec::new();
    write_canonical(&mut out, value);
    // Only serde_json's output and ASCII punctuation went in.
    String::from_utf8(out).unwrap_or_default()
}

// Written straight into one buffer (this runs once per event read): strings, numbers, booleans
// and null through serde_json's own serializer, so the bytes are exactly what
// `Value::to_string` printed when the hash was defined.
fn write_canonical(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Object(map) => write_canonical_map(out, map),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(out, item);
            }
            out.push(b']');
        }
        other => write_scalar(out, other),
    }
}

fn write_scalar<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    // Serializing a string, number, bool or null into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
}

fn write_canonical_map(out: &mut Vec<u8>, map: &serde_json::Map<String, Value>) {
    out.push(b'{');
    let mut first = true;
    let mut entry = |out: &mut Vec<u8>, key: &str, v: &Value| {
        if !first {
            out.push(b',');
        }
        first = false;
        write_scalar(out, key);
        out.push(b':');
        write_canonical(out, v);
    };
    // serde_json's Map is a BTreeMap unless `preserve_order` is on somewhere in the build:
    // then it iterates sorted already and needs no sort.
    if map.keys().zip(map.keys().skip(1)).all(|(a, b)| a < b) {
        for (k, v) in map {
            entry(out, k, v);
        }
    } else {
        let mut entries: Vec<(&String, &Value)> = map.iter().collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
        for (k, v) in entries {
            entry(out, k, v);
        }
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(json: &str) -> Event {
        serde_json::from_str(json).expect("test event")
    }

    #[test]
    fn same_instant_in_rust_and_python_formats_hashes_the_same() {
        let rust = ev(
            r#"{"id":1,"timestamp":"2024-01-01T12:00:00.123456000Z","duration":1.5,"data":{"app":"x","title":"y"}}"#,
        );
        let python = ev(
            r#"{"id":1,"timestamp":"2024-01-01T12:00:00.123456+00:00","duration":1.5,"data":{"title":"y","app":"x"}}"#,
        );
        assert_eq!(event_hash(&rust).unwrap().0, event_hash(&python).unwrap().0);
    }

    #[test]
    fn other_offsets_normalise_to_utc() {
        let utc = ev(r#"{"timestamp":"2024-01-01T12:00:00Z","duration":0,"data":{}}"#);
        let cet = ev(r#"{"timestamp":"2024-01-01T13:00:00+01:00","duration":0,"data":{}}"#);
        assert_eq!(event_hash(&utc).unwrap().0, event_hash(&cet).unwrap().0);
    }

    #[test]
    fn grown_duration_and_changed_data_change_the_hash() {
        let a = ev(r#"{"timestamp":"2024-01-01T12:00:00Z","duration":10,"data":{"a":1}}"#);
        let grown = ev(r#"{"timestamp":"2024-01-01T12:00:00Z","duration":15,"data":{"a":1}}"#);
        let other = ev(r#"{"timestamp":"2024-01-01T12:00:00Z","duration":10,"data":{"a":2}}"#);
        let h = |e: &Event| event_hash(e).unwrap().0;
        assert_ne!(h(&a), h(&grown));
        assert_ne!(h(&a), h(&other));
    }

    #[test]
    fn float_noise_in_durations_does_not_change_the_hash() {
        let a = ev(r#"{"timestamp":"2024-01-01T12:00:00Z","duration":0.3,"data":{}}"#);
        let b =
            ev(r#"{"timestamp":"2024-01-01T12:00:00Z","duration":0.30000000000000004,"data":{}}"#);
        assert_eq!(event_hash(&a).unwrap().0, event_hash(&b).unwrap().0);
    }

    #[test]
    fn nested_keys_are_sorted() {
        let v: Value =
            serde_json::from_str(r#"{"b":{"y":1,"x":[{"d":1,"c":2}]},"a":"\"q"}"#).unwrap();
        assert_eq!(
            canonical_json(&v),
            r#"{"a":"\"q","b":{"x":[{"c":2,"d":1}],"y":1}}"#
        );
    }

    /// The hash is stored in every user's state and upstream: its bytes must never change. The
    /// expected value was computed independently (Python: `json.dumps(data, sort_keys=True,
    /// ensure_ascii=False, separators=(",", ":"))` and the `blake3` package).
    #[test]
    fn the_canonical_form_and_hash_are_stable() {
        let e = ev(
            r#"{"timestamp":"2024-01-01T12:00:00.123456789Z","duration":1.5,"data":
            {"title":"naïve \"quote\"\n\ttab\u0001\\","b":[1,{"z":null,"a":true}],"a":{"y":2,"x":"é"},"n":-3}}"#,
        );
        assert_eq!(
            canonical_json(&Value::Object(e.data.clone())),
            r#"{"a":{"x":"é","y":2},"b":[1,{"a":true,"z":null}],"n":-3,"title":"naïve \"quote\"\n\ttab\u0001\\"}"#
        );
        let (hash, _) = event_hash(&e).expect("representable");
        assert_eq!(hash_hex(&hash), "3f5cba23781ebc41600e6074b2a73e67");
    }

    #[test]
    fn unrepresentable_events_have_no_hash() {
        let negative = ev(r#"{"timestamp":"2024-01-01T12:00:00Z","duration":-1,"data":{}}"#);
        let far = ev(r#"{"timestamp":"2400-01-01T12:00:00Z","duration":1,"data":{}}"#);
        assert!(event_hash(&negative).is_none());
        assert!(event_hash(&far).is_none());
        assert_eq!(duration_to_ns(f64::NAN), None);
        assert_eq!(duration_to_ns(f64::INFINITY), None);
    }

    #[test]
    fn hex_is_lowercase_and_32_chars() {
        let h = hash_hex(&[0xab; 16]);
        assert_eq!(h.len(), 32);
        assert!(h.starts_with("abab"));
    }
}
