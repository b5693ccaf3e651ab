//! The canonical event hash: what "the same event" means for dedupe.
//!
//! aw-server-rust prints `...Z` with nanoseconds, Python aw-server `+00:00` with microseconds,
//! and a JSON object's key order is whatever the server's map kept. The hash therefore covers
//! the instant as integer nanoseconds since the epoch (UTC), the duration as integer nanoseconds,
//! and the data as JSON with keys sorted at every depth — so the same event hashes the same
//! whichever server served it, and a heartbeat that grew the event changes the hash.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
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
        Span::new(&event.timestamp, event.duration)
    }

    /// From a timestamp and a duration in seconds (see [`Span::of`]).
    pub fn new(timestamp: &DateTime<Utc>, duration: f64) -> Option<Span> {
        let start_ns = timestamp.timestamp_nanos_opt()?;
        let duration_ns = duration_to_ns(duration)?;
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
    Some((hash_parts(span, &canonical), span))
}

/// How deep event data may nest, counting the data object itself as level 1: what
/// `serde_json` parses into a map (its recursion limit of 128 stops at the 128th nested
/// container). aw-server-rust parses every event it stores with serde_json, so no event it
/// accepted is deeper; nothing here walks deeper (issue 11: 20,000 levels overflowed the
/// stack, 200,000 burnt 22 s of CPU first).
pub const MAX_DATA_DEPTH: usize = 127;

/// Why event data cannot be hashed (or redacted). The event is unusable as it is; its
/// neighbours are not affected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataError {
    /// Nested deeper than [`MAX_DATA_DEPTH`]: quarantine the event with this reason.
    #[error("event data is nested more than {MAX_DATA_DEPTH} levels deep (the most aw-server-rust accepts); not synced")]
    TooDeep,
    /// Not JSON. The scan's data was validated when it was read, so only a bug gets here.
    #[error("event data is not valid JSON: {0}")]
    Invalid(String),
}

/// [`event_hash`] of an event whose data is still JSON text (the scan's [`crate::source::PageEvent`]):
/// the same bytes are hashed as if the text had been parsed into a map first, without building
/// one, in one pass over the text. [`DataError::TooDeep`] beyond [`MAX_DATA_DEPTH`].
pub fn event_data_hash(span: Span, data: &RawValue) -> Result<EventHash, DataError> {
    let mut canonical = Vec::with_capacity(data.get().len() + 16);
    write_canonical_raw(&mut canonical, data.get())?;
    Ok(hash_parts(span, &canonical))
}

/// [`event_data_hash`] with its error as a `serde_json::Error`, the type the scan's callers
/// handled before [`DataError`] existed; the message is the same.
pub fn event_hash_raw(span: Span, data: &RawValue) -> Result<EventHash, serde_json::Error> {
    event_data_hash(span, data).map_err(<serde_json::Error as serde::de::Error>::custom)
}

/// Whether JSON `text` nests deeper than [`MAX_DATA_DEPTH`]: one pass over its bytes, without
/// parsing, for callers about to parse it (redaction) that must say [`DataError::TooDeep`]
/// rather than serde_json's recursion error.
pub fn check_depth(text: &str) -> Result<(), DataError> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => i = string_end(bytes, i)?,
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_DATA_DEPTH {
                    return Err(DataError::TooDeep);
                }
                i += 1;
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            _ => i += 1,
        }
    }
    Ok(())
}

fn hash_parts(span: Span, canonical: &[u8]) -> EventHash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&span.start_ns.to_le_bytes());
    hasher.update(&span.duration_ns.to_le_bytes());
    hasher.update(canonical);
    let mut out = [0u8; 16];
    out.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    out
}

/// The canonical form of one JSON text, byte for byte what [`canonical_json`] makes of its
/// parsed value: keys sorted (as `String`s compare, last duplicate wins, as when parsing into a
/// map), strings and numbers as serde_json prints them. Strings without escapes and the
/// literals are already in that form and are copied as they are.
///
/// One pass: each value is read once, written once, and an object's members are moved once
/// more only when they were not already in order (Python aw-server keeps insertion order;
/// serde_json maps are sorted). Recursion is one frame per nesting level, at most
/// [`MAX_DATA_DEPTH`].
fn write_canonical_raw(out: &mut Vec<u8>, text: &str) -> Result<(), DataError> {
    let mut reader = Reader {
        text,
        bytes: text.as_bytes(),
        at: 0,
    };
    reader.value(out, 1)?;
    reader.skip_ws();
    if reader.at != reader.bytes.len() {
        return Err(reader.invalid("trailing characters"));
    }
    Ok(())
}

/// A cursor over JSON text that serde_json has already validated; every check that remains
/// answers [`DataError::Invalid`] instead of panicking, should a caller pass other text.
struct Reader<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
}

/// One member of an object as written into `out`: its key, and where `"key":value` starts and
/// ends.
struct Member<'a> {
    key: Cow<'a, str>,
    start: usize,
    end: usize,
}

impl<'a> Reader<'a> {
    fn invalid(&self, what: &str) -> DataError {
        DataError::Invalid(format!("{what} at byte {}", self.at))
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    fn peek(&mut self) -> Result<u8, DataError> {
        self.skip_ws();
        self.bytes
            .get(self.at)
            .copied()
            .ok_or_else(|| self.invalid("unexpected end"))
    }

    fn expect(&mut self, byte: u8) -> Result<(), DataError> {
        if self.peek()? != byte {
            return Err(self.invalid(&format!("expected `{}`", byte as char)));
        }
        self.at += 1;
        Ok(())
    }

    fn value(&mut self, out: &mut Vec<u8>, depth: usize) -> Result<(), DataError> {
        match self.peek()? {
            b'{' | b'[' if depth > MAX_DATA_DEPTH => Err(DataError::TooDeep),
            b'{' => self.object(out, depth),
            b'[' => self.array(out, depth),
            b'"' => {
                let text = self.string()?;
                if text.contains('\\') {
                    let s: String = serde_json::from_str(text)
                        .map_err(|e| DataError::Invalid(e.to_string()))?;
                    write_scalar(out, s.as_str());
                } else {
                    out.extend_from_slice(text.as_bytes());
                }
                Ok(())
            }
            b't' => self.literal(out, "true"),
            b'f' => self.literal(out, "false"),
            b'n' => self.literal(out, "null"),
            _ => {
                let start = self.at;
                while let Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') =
                    self.bytes.get(self.at)
                {
                    self.at += 1;
                }
                let digits = self.text.get(start..self.at).unwrap_or("");
                let n: serde_json::Number = serde_json::from_str(digits)
                    .map_err(|e| DataError::Invalid(format!("{e} at byte {start}")))?;
                write_scalar(out, &n);
                Ok(())
            }
        }
    }

    fn literal(&mut self, out: &mut Vec<u8>, word: &str) -> Result<(), DataError> {
        if !self.bytes[self.at..].starts_with(word.as_bytes()) {
            return Err(self.invalid("unknown literal"));
        }
        self.at += word.len();
        out.extend_from_slice(word.as_bytes());
        Ok(())
    }

    /// The string at the cursor, quotes included, as it is in the text.
    fn string(&mut self) -> Result<&'a str, DataError> {
        let start = self.at;
        self.at = string_end(self.bytes, start)?;
        self.text
            .get(start..self.at)
            .ok_or_else(|| self.invalid("a string cut inside a character"))
    }

    fn array(&mut self, out: &mut Vec<u8>, depth: usize) -> Result<(), DataError> {
        self.at += 1;
        out.push(b'[');
        if self.peek()? == b']' {
            self.at += 1;
            out.push(b']');
            return Ok(());
        }
        loop {
            self.value(out, depth + 1)?;
            match self.peek()? {
                b',' => {
                    self.at += 1;
                    out.push(b',');
                }
                b']' => {
                    self.at += 1;
                    out.push(b']');
                    return Ok(());
                }
                _ => return Err(self.invalid("expected `,` or `]`")),
            }
        }
    }

    fn object(&mut self, out: &mut Vec<u8>, depth: usize) -> Result<(), DataError> {
        self.at += 1;
        out.push(b'{');
        let body = out.len();
        let mut members: Vec<Member<'a>> = Vec::new();
        if self.peek()? == b'}' {
            self.at += 1;
            out.push(b'}');
            return Ok(());
        }
        loop {
            if self.peek()? != b'"' {
                return Err(self.invalid("expected a key"));
            }
            let start = out.len();
            let raw = self.string()?;
            let key = if raw.contains('\\') {
                let key: String =
                    serde_json::from_str(raw).map_err(|e| DataError::Invalid(e.to_string()))?;
                write_scalar(out, key.as_str());
                Cow::Owned(key)
            } else {
                out.extend_from_slice(raw.as_bytes());
                Cow::Borrowed(&raw[1..raw.len() - 1])
            };
            self.expect(b':')?;
            out.push(b':');
            self.value(out, depth + 1)?;
            members.push(Member {
                key,
                start,
                end: out.len(),
            });
            match self.peek()? {
                b',' => {
                    self.at += 1;
                    out.push(b',');
                }
                b'}' => {
                    self.at += 1;
                    break;
                }
                _ => return Err(self.invalid("expected `,` or `}`")),
            }
        }
        if members.windows(2).any(|w| w[0].key >= w[1].key) {
            sort_members(out, body, members);
        }
        out.push(b'}');
        Ok(())
    }
}

/// Rewrites an object's members (`out[body..]`, written in the text's order) sorted by key,
/// keeping only the last of equal keys — what a map made of the text would hold.
fn sort_members(out: &mut Vec<u8>, body: usize, mut members: Vec<Member<'_>>) {
    let written = out.split_off(body);
    // Stable: among equal keys the text's order stays, so the last one is the last in its run.
    members.sort_by(|a, b| a.key.cmp(&b.key));
    let mut first = true;
    for (i, m) in members.iter().enumerate() {
        if members.get(i + 1).is_some_and(|next| next.key == m.key) {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        out.extend_from_slice(&written[m.start - body..m.end - body]);
    }
}

/// The index just past the string starting at `bytes[start]` (a `"`), skipping escapes
/// ([`crate::source::json_string_end`]).
fn string_end(bytes: &[u8], start: usize) -> Result<usize, DataError> {
    crate::source::json_string_end(bytes, start)
        .ok_or_else(|| DataError::Invalid(format!("unterminated string at byte {start}")))
}

pub fn hash_hex(hash: &EventHash) -> String {
    hash_hex_ascii(hash)
        .iter()
        .map(|&b| char::from(b))
        .collect()
}

/// [`hash_hex`] on the stack: the batch writer puts it on the wire without a `String` per
/// event (issue 9).
pub fn hash_hex_ascii(hash: &EventHash) -> [u8; 32] {
    // A table instead of `write!` per byte: this runs once per event uploaded.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    for (pair, b) in out.chunks_exact_mut(2).zip(hash) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0x0f)];
    }
    out
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
    use std::fmt::Write as _;

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

    /// JSON text as other servers write it: keys in reverse order, every non-ASCII character
    /// and `/` escaped (Python's `ensure_ascii`), spaces after separators.
    fn foreign_text(v: &Value, out: &mut String) {
        match v {
            Value::Object(m) => {
                out.push('{');
                for (i, (k, v)) in m.iter().rev().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    foreign_string(k, out);
                    out.push_str(": ");
                    foreign_text(v, out);
                }
                out.push('}');
            }
            Value::Array(a) => {
                out.push_str("[ ");
                for (i, v) in a.iter().enumerate() {
                    if i > 0 {
                        out.push_str(" , ");
                    }
                    foreign_text(v, out);
                }
                out.push_str(" ]");
            }
            Value::String(s) => foreign_string(s, out),
            Value::Number(n) if n.is_f64() => {
                // An exponent form of the same number: parses to the same f64.
                let _ = write!(out, "{:e}", n.as_f64().unwrap_or(0.0));
            }
            other => out.push_str(&other.to_string()),
        }
    }

    fn foreign_string(s: &str, out: &mut String) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '/' => out.push_str("\\/"),
                c if c.is_ascii() && !c.is_ascii_control() => out.push(c),
                c => {
                    let mut buf = [0u16; 2];
                    for unit in c.encode_utf16(&mut buf) {
                        let _ = write!(out, "\\u{unit:04X}");
                    }
                }
            }
        }
        out.push('"');
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1e300f64..1e300).prop_map(Value::from),
            "\\PC{0,12}".prop_map(Value::String),
            "[a-z\"\\\\/\u{0}-\u{1f}é😀]{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map("[a-zé\"\\\\_]{0,6}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(512)))]

        /// The raw-text hash must equal the parsed-map hash for any text any server may send,
        /// or a catch-up would re-send (or skip) events hashed the other way.
        #[test]
        fn raw_and_parsed_canonical_forms_agree(v in json_value()) {
            use proptest::prop_assert_eq;
            let data = match v {
                Value::Object(m) => m,
                other => {
                    let mut m = serde_json::Map::new();
                    m.insert("v".into(), other);
                    m
                }
            };
            let value = Value::Object(data.clone());
            let mut foreign = String::new();
            foreign_text(&value, &mut foreign);
            for text in [serde_json::to_string(&value).unwrap(), serde_json::to_string_pretty(&value).unwrap(), foreign] {
                let raw: Box<RawValue> = serde_json::from_str(&text).unwrap();
                let parsed: serde_json::Map<String, Value> = serde_json::from_str(&text).unwrap();
                let mut out = Vec::new();
                write_canonical_raw(&mut out, raw.get()).unwrap();
                prop_assert_eq!(String::from_utf8(out).unwrap(), canonical_json(&Value::Object(parsed)), "{}", text);
            }
            // Both hashes of one text (a float need not survive a text round trip exactly, so
            // the map is parsed from the same text).
            let span = Span { start_ns: 1, duration_ns: 2 };
            let raw = serde_json::value::to_raw_value(&data).unwrap();
            let data: serde_json::Map<String, Value> = serde_json::from_str(raw.get()).unwrap();
            let event = Event { id: None, timestamp: DateTime::<Utc>::from_timestamp_nanos(1), duration: 2e-9, data };
            prop_assert_eq!(event_hash_raw(span, &raw).unwrap(), event_hash(&event).unwrap().0);
        }
    }

    /// `{"a":[{"a":[…]}]}`-style text nested `levels` deep (the data object is level 1),
    /// alternating objects and arrays, with bracket characters inside strings that must not
    /// count.
    fn nested(levels: usize) -> String {
        let mut text = String::with_capacity(levels * 12);
        for level in 1..=levels {
            if level % 2 == 1 {
                text.push_str(r#"{"k\"{[":"]}\\","a":"#);
            } else {
                text.push('[');
            }
        }
        text.truncate(text.len() - if levels % 2 == 1 { r#","a":"#.len() } else { 0 });
        if levels % 2 == 0 {
            text.push('1');
        }
        for level in (1..=levels).rev() {
            text.push(if level % 2 == 1 { '}' } else { ']' });
        }
        text
    }

    fn raw(text: &str) -> Box<RawValue> {
        // serde_json reads any depth into a RawValue (it skips values without recursion), which
        // is how such data reaches the hash.
        serde_json::from_str(text).expect("valid JSON")
    }

    /// Issue 11: event data 20,000 levels deep overflowed the stack here (recursion per level,
    /// re-parsing the rest each time); 200,000 levels burnt 22 s of CPU first. Now both are
    /// `TooDeep` after one pass, on a stack smaller than a Windows main thread's 1 MiB.
    #[test]
    fn data_nested_20000_and_200000_levels_deep_is_too_deep_without_deep_recursion() {
        let run = std::thread::Builder::new()
            .stack_size(512 * 1024)
            .spawn(|| {
                for levels in [20_000, 200_000] {
                    let data = raw(&nested(levels));
                    let span = Span {
                        start_ns: 1,
                        duration_ns: 2,
                    };
                    assert_eq!(
                        event_data_hash(span, &data),
                        Err(DataError::TooDeep),
                        "{levels}"
                    );
                    assert_eq!(check_depth(data.get()), Err(DataError::TooDeep), "{levels}");
                    let e = event_hash_raw(span, &data).expect_err("too deep");
                    assert!(e.to_string().contains("nested more than 127 levels"), "{e}");
                }
            })
            .expect("thread");
        run.join().expect("no stack overflow, no panic");
    }

    /// The limit is what serde_json reads into a map, to the level: everything that hashes can
    /// be redacted (which parses the map), and nothing aw-server-rust stored is refused.
    #[test]
    fn the_depth_limit_is_what_serde_json_parses() {
        for levels in [
            1,
            2,
            126,
            MAX_DATA_DEPTH,
            MAX_DATA_DEPTH + 1,
            MAX_DATA_DEPTH + 2,
        ] {
            let text = nested(levels);
            let parsed = serde_json::from_str::<serde_json::Map<String, Value>>(&text);
            let hashed = event_data_hash(
                Span {
                    start_ns: 0,
                    duration_ns: 0,
                },
                &raw(&text),
            );
            assert_eq!(parsed.is_ok(), levels <= MAX_DATA_DEPTH, "{levels}");
            assert_eq!(hashed.is_ok(), parsed.is_ok(), "{levels}");
            assert_eq!(check_depth(&text).is_ok(), parsed.is_ok(), "{levels}");
            if let Ok(map) = parsed {
                let mut out = Vec::new();
                write_canonical_raw(&mut out, &text).expect("canonical");
                assert_eq!(
                    String::from_utf8(out).expect("utf-8"),
                    canonical_json(&Value::Object(map))
                );
            }
        }
    }

    #[test]
    fn duplicate_keys_keep_the_last_and_escaped_keys_sort_by_their_text() {
        let text = r#"{"b":1,"a":2,"b":3,"\u0061":4,"c":{"y":1,"x":2,"y":[3]}}"#;
        let mut out = Vec::new();
        write_canonical_raw(&mut out, text).expect("canonical");
        let map: serde_json::Map<String, Value> = serde_json::from_str(text).expect("parses");
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            canonical_json(&Value::Object(map))
        );
        assert_eq!(
            canonical_json(&serde_json::from_str(text).expect("parses")),
            r#"{"a":4,"b":3,"c":{"x":2,"y":[3]}}"#
        );
    }

    #[test]
    fn text_that_is_not_json_is_invalid_not_a_panic() {
        for bad in [
            "",
            "{",
            "{\"a\"",
            "{\"a\":}",
            "{\"a\":1,}",
            "[1 2]",
            "{\"a\":tru}",
            "{\"a\":1} x",
            "\"open",
            "{1:2}",
            "-",
        ] {
            let mut out = Vec::new();
            assert!(
                matches!(
                    write_canonical_raw(&mut out, bad),
                    Err(DataError::Invalid(_))
                ),
                "{bad:?}"
            );
        }
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
