//! A page of events as aw-server sent it, before it is parsed.
//!
//! Why the scan sees the bytes before the events: the next page's query depends only on this
//! page's *oldest* events (its last ones: aw-server answers newest first), and parsing a
//! catch-up page of thousands of events takes about as long as aw-server takes to answer the
//! next one. Reading the last few events first lets the scan send the next query while this
//! page is parsed, so aw-server and the sidecar work at the same time instead of in turn
//! (issue 9: the catch-up's critical path was the chain of read → parse → next read).

use std::collections::VecDeque;
use std::ops::Range;

use super::client::{parse, SourceError};

use super::model::PageEvent;
use crate::memory::BufferPool;

/// How many page buffers the client keeps ([`BufferPool`]). One: while a page is parsed the
/// next is read into a buffer of its own, so two alternate; keeping both saved another fifth of
/// the faults but held a megabyte more at the peak (peak RSS goal 25 MB).
pub(super) const KEPT_PAGE_BUFFERS: usize = 1;

/// One page's body, not parsed yet.
#[derive(Debug)]
pub struct RawPage {
    url: String,
    bytes: Vec<u8>,
    pool: Option<BufferPool>,
}

impl RawPage {
    pub(super) fn new(url: String, bytes: Vec<u8>, pool: Option<BufferPool>) -> RawPage {
        RawPage { url, bytes, pool }
    }

    /// A page made from events (a scripted source in tests, or any source that has them
    /// parsed already).
    pub fn from_events(url: &str, events: &[PageEvent]) -> Result<RawPage, SourceError> {
        let bytes = serde_json::to_vec(events).map_err(|e| SourceError::Malformed {
            url: url.to_owned(),
            detail: e.to_string(),
        })?;
        Ok(RawPage::new(url.to_owned(), bytes, None))
    }

    /// All its events, in the order sent.
    pub fn parse(&self) -> Result<Vec<PageEvent>, SourceError> {
        self.parse_as()
    }

    /// All its events as `T`.
    pub(super) fn parse_as<T: serde::de::DeserializeOwned>(&self) -> Result<Vec<T>, SourceError> {
        parse(&self.url, &self.bytes)
    }

    /// How many events the page holds and its last `n` of them, parsed, without parsing the
    /// others. `None` when the body is not an array of objects (only its own level is checked:
    /// see [`last_elements`]), or one of those `n` is not an event: then only
    /// [`RawPage::parse`] says what is wrong, and the caller waits for it. A hint only: a
    /// caller that acts on it checks it against the parse.
    pub fn tail(&self, n: usize) -> Option<(usize, Vec<PageEvent>)> {
        let (count, spans) = last_elements(&self.bytes, n)?;
        let events = spans
            .into_iter()
            .map(|r| serde_json::from_slice(&self.bytes[r]).ok())
            .collect::<Option<Vec<PageEvent>>>()?;
        Some((count, events))
    }
}

impl Drop for RawPage {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.give_back(std::mem::take(&mut self.bytes));
        }
    }
}

/// The number of elements of the JSON array `bytes` and the byte ranges of its last `n`, when
/// those are objects or arrays; `None` for anything else at the array's level (a scalar
/// element, a missing or extra comma, a body cut short or followed by more, a string never
/// closed).
///
/// One pass over the bytes that follows only structure: strings are crossed with `memchr`
/// (to the next quote or backslash), everything between them counts brackets. Inside an
/// element nothing is validated — this is a hint ([`RawPage::tail`] parses the last elements,
/// and the caller checks its guess against [`RawPage::parse`], which validates everything).
/// It replaced serde_json skipping every element into a `&RawValue`, which validated every
/// element's UTF-8 too: 5 % of a 1M-event catch-up's CPU (perf), spent on the scan's critical
/// path, between a page's arrival and the request for the next.
fn last_elements(bytes: &[u8], n: usize) -> Option<(usize, VecDeque<Range<usize>>)> {
    let mut at = skip_ws(bytes, 0);
    if bytes.get(at) != Some(&b'[') {
        return None;
    }
    at = skip_ws(bytes, at + 1);
    let mut spans = VecDeque::with_capacity(n.min(64) + 1);
    let mut count = 0;
    if bytes.get(at) == Some(&b']') {
        at += 1;
    } else {
        loop {
            let start = at;
            if !matches!(bytes.get(at), Some(b'{' | b'[')) {
                return None;
            }
            at = container_end(bytes, at)?;
            count += 1;
            if n > 0 {
                if spans.len() == n {
                    spans.pop_front();
                }
                spans.push_back(start..at);
            }
            at = skip_ws(bytes, at);
            match bytes.get(at) {
                Some(b',') => at = skip_ws(bytes, at + 1),
                Some(b']') => {
                    at += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    (skip_ws(bytes, at) == bytes.len()).then_some((count, spans))
}

fn skip_ws(bytes: &[u8], mut at: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = bytes.get(at) {
        at += 1;
    }
    at
}

/// The index after the object or array opening at `open`, brackets counted (their kinds are
/// not matched: the parse judges that); `None` when the body ends first.
fn container_end(bytes: &[u8], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut at = open;
    while let Some(&b) = bytes.get(at) {
        match b {
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return Some(at + 1);
                }
            }
            b'"' => {
                at = string_end(bytes, at)?;
                continue;
            }
            _ => {}
        }
        at += 1;
    }
    None
}

/// The index just past the JSON string starting at `bytes[start]` (a `"`); `None` when it is
/// never closed. Jumps with `memchr` to each quote or backslash; a backslash escapes the byte
/// after it (`\"`, `\\`, `\u…`: only the first matters). Shared with the canonical hash's
/// reader (`state::hash`), which crosses every string of every event's data.
pub(crate) fn string_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut at = start + 1;
    loop {
        at += memchr::memchr2(b'"', b'\\', bytes.get(at..)?)?;
        if bytes[at] == b'"' {
            return Some(at + 1);
        }
        at += 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last(body: &str, n: usize) -> Option<(usize, Vec<&str>)> {
        let (count, spans) = last_elements(body.as_bytes(), n)?;
        Some((count, spans.into_iter().map(|r| &body[r]).collect()))
    }

    #[test]
    fn the_last_elements_are_found_past_strings_that_look_like_structure() {
        let body = r#" [ {"id":1,"data":{"t":"}]\"{["}} ,{"id":2,"data":{"a":[1,{"b":"]"}]}},
            {"id":3,"data":{"x":"\\"}} ] "#;
        assert_eq!(
            last(body, 2),
            Some((
                3,
                vec![
                    r#"{"id":2,"data":{"a":[1,{"b":"]"}]}}"#,
                    r#"{"id":3,"data":{"x":"\\"}}"#
                ]
            ))
        );
        assert_eq!(last(body, 0), Some((3, vec![])));
        assert_eq!(last(body, 10).map(|(c, v)| (c, v.len())), Some((3, 3)));
        assert_eq!(last("[]", 4), Some((0, vec![])));
    }

    #[test]
    fn anything_but_a_whole_array_of_objects_gives_no_tail() {
        for body in [
            "",
            "{}",
            "[1,2]",
            r#"[{"id":1}"#,
            r#"[{"id":1},]"#,
            r#"[{"id":1}{"id":2}]"#,
            r#"[{"id":1}] x"#,
            r#"[{"id":"unterminated}]"#,
            r#"[,{"id":1}]"#,
        ] {
            assert_eq!(last(body, 2), None, "{body:?}");
        }
    }

    #[test]
    fn the_tail_parses_only_the_last_events_and_counts_all() {
        let body = r#"[{"id":3,"timestamp":"2024-01-01T00:00:03Z","duration":1.0,"data":{}},
            not json at all but balanced {},
            {"id":1,"timestamp":"2024-01-01T00:00:01Z","duration":1.0,"data":{"a":1}}]"#;
        // The middle element is not JSON, so the body is not one array: no tail, even of the
        // last event alone, which is well formed.
        let raw = RawPage::new("u".into(), body.as_bytes().to_vec(), None);
        assert!(raw.tail(1).is_none(), "a body that is not JSON has no tail");
        let body = r#"[{"id":3,"timestamp":"2024-01-01T00:00:03Z","duration":1.0,"data":{}},
            {"oops":{}},
            {"id":1,"timestamp":"2024-01-01T00:00:01Z","duration":1.0,"data":{"a":1}}]"#;
        let raw = RawPage::new("u".into(), body.as_bytes().to_vec(), None);
        let (count, tail) = raw.tail(1).expect("the last event parses");
        assert_eq!((count, tail.len(), tail[0].id), (3, 1, Some(1)));
        assert!(raw.tail(2).is_none(), "an element that is not an event");
        assert!(raw.parse().is_err());
    }

    #[test]
    fn a_pages_buffer_goes_back_to_the_pool_up_to_the_kept_number() {
        let pool = BufferPool::new(KEPT_PAGE_BUFFERS);
        for _ in 0..3 {
            drop(RawPage::new("u".into(), vec![1; 64], Some(pool.clone())));
        }
        drop(RawPage::new("u".into(), vec![1; 64], None));
        let kept = pool.kept_sizes();
        assert_eq!(kept.len(), KEPT_PAGE_BUFFERS);
        assert!(kept.iter().all(|&(len, cap)| len == 0 && cap >= 64));
    }

    /// What serde_json makes of a body: its elements' count and the text of its last `n`, or
    /// `None` when it is not an array of objects and arrays.
    fn serde_last(body: &[u8], n: usize) -> Option<(usize, Vec<String>)> {
        let all: Vec<&serde_json::value::RawValue> = serde_json::from_slice(body).ok()?;
        let last: Vec<String> = all[all.len().saturating_sub(n)..]
            .iter()
            .map(|e| e.get().to_owned())
            .collect();
        all.iter()
            .all(|e| e.get().starts_with(['{', '[']))
            .then_some((all.len(), last))
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::from),
            (-1e300f64..1e300).prop_map(Value::from),
            "\\PC{0,12}".prop_map(Value::String),
            "[\\[\\]{}\",:\\\\a-z/\u{0}-\u{1f}é😀]{0,10}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z\"\\\\{}\\[\\]]{0,6}", inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #![proptest_config(crate::proptest_config(256))]

        /// Any array serde_json reads, compact or pretty, and any cut of it: the skim finds
        /// the same count and the same last elements, or none exactly when serde_json refuses
        /// the body or finds a scalar in it (a cut always loses the closing bracket, the one
        /// thing the skim must see).
        #[test]
        fn the_skim_agrees_with_serde_json(
            elements in proptest::collection::vec(json_value(), 0..8),
            n in 0usize..4,
            pretty: bool,
            cut in proptest::option::of(0usize..400),
        ) {
            let mut body = if pretty {
                serde_json::to_vec_pretty(&elements).unwrap()
            } else {
                serde_json::to_vec(&elements).unwrap()
            };
            if let Some(c) = cut {
                body.truncate(c.min(body.len()));
            }
            let skim = last_elements(&body, n).map(|(count, spans)| {
                let texts: Vec<String> = spans
                    .into_iter()
                    .map(|r| String::from_utf8(body[r].to_vec()).unwrap())
                    .collect();
                (count, texts)
            });
            proptest::prop_assert_eq!(skim, serde_last(&body, n));
        }
    }
}
