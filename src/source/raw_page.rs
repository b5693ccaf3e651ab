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

    /// The page's last `n` events, parsed, and what it says of their number, without parsing
    /// the others. `None` when the body does not look like an array of objects where it was
    /// read, or one of those `n` is not an event: then only [`RawPage::parse`] says what is
    /// wrong, and the caller waits for it. A hint only: a caller that acts on it checks it
    /// against the parse.
    ///
    /// A small body is walked from its start ([`last_elements`]: its count is exact). A large
    /// one — a catch-up page, a megabyte — from its end, over its last `n` elements only
    /// ([`last_elements_rev`]): walking all of it was a pass over every byte, on the scan's
    /// critical path (between a page's arrival and the request for the next) and 4 % of a
    /// 1M-event catch-up's CPU (perf), for a count that only has to say whether the page may
    /// be full ([`Tail::may_fill`]).
    pub fn tail(&self, n: usize) -> Option<Tail> {
        let (count, spans) = if self.bytes.len() <= FORWARD_TAIL_MAX {
            let (count, spans) = last_elements(&self.bytes, n)?;
            (Some(count), spans)
        } else {
            last_elements_rev(&self.bytes, n)?
        };
        let tail_bytes: usize = spans.iter().map(|r| r.len() + 1).sum();
        let events = spans
            .into_iter()
            .map(|r| serde_json::from_slice(&self.bytes[r]).ok())
            .collect::<Option<Vec<PageEvent>>>()?;
        Some(Tail {
            count,
            estimate: self.bytes.len().saturating_mul(events.len()) / tail_bytes.max(1),
            events,
        })
    }
}

/// Bodies up to this size are walked from their start for [`RawPage::tail`] (at most a few
/// tens of microseconds), so a page of a daemon's cycle says exactly how many events it holds.
const FORWARD_TAIL_MAX: usize = 64 * 1024;

/// The end of a page ([`RawPage::tail`]).
#[derive(Debug)]
pub struct Tail {
    /// How many events the page holds, when the walk went over all of them.
    pub count: Option<usize>,
    /// Otherwise about how many: the body's size over the mean size of the tail's events.
    pub estimate: usize,
    /// Its last events, in the order sent.
    pub events: Vec<PageEvent>,
}

impl Tail {
    /// Whether the page may hold `limit` events: exactly, when counted; from the estimate,
    /// with room for events twice the tail's mean size, when not. Wrong one way, a page is
    /// asked for that the scan then drops; the other way, one is not asked for ahead.
    pub fn may_fill(&self, limit: usize) -> bool {
        match self.count {
            Some(count) => count >= limit,
            None => self.estimate.saturating_mul(2) >= limit,
        }
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

/// [`last_elements`] walking back from the end of `bytes`, over its last `n` elements only:
/// their byte ranges, and the number of elements when the walk reached the array's start
/// (fewer than `n`, or exactly `n` and nothing before them). `None` when what it crossed is
/// not an array's end of objects or arrays.
///
/// Backwards, outside strings, the first quote met closes a string; the quote that opens it
/// is the nearest one before it not escaped, that is not preceded by an odd run of
/// backslashes (a JSON string holds no other quote). Nothing before the last `n` elements is
/// looked at: a body malformed there is for the parse to find.
fn last_elements_rev(bytes: &[u8], n: usize) -> Option<(Option<usize>, VecDeque<Range<usize>>)> {
    let mut at = skip_ws_rev(bytes, bytes.len());
    if at == 0 || bytes[at - 1] != b']' {
        return None;
    }
    at = skip_ws_rev(bytes, at - 1);
    let mut spans = VecDeque::with_capacity(n.min(64) + 1);
    if at > 0 && bytes[at - 1] == b'[' {
        // An empty array.
        return (skip_ws_rev(bytes, at - 1) == 0).then_some((Some(0), spans));
    }
    loop {
        if spans.len() == n {
            return Some((None, spans));
        }
        let end = at;
        if !matches!(bytes.get(end.checked_sub(1)?), Some(b'}' | b']')) {
            return None;
        }
        let start = container_start(bytes, end - 1)?;
        spans.push_front(start..end);
        at = skip_ws_rev(bytes, start);
        match at.checked_sub(1).map(|i| bytes[i]) {
            Some(b',') => at = skip_ws_rev(bytes, at - 1),
            Some(b'[') => {
                let count = spans.len();
                return (skip_ws_rev(bytes, at - 1) == 0).then_some((Some(count), spans));
            }
            _ => return None,
        }
    }
}

/// The index before which `bytes[..at]` ends in whitespace.
fn skip_ws_rev(bytes: &[u8], mut at: usize) -> usize {
    while at > 0 && matches!(bytes[at - 1], b' ' | b'\t' | b'\n' | b'\r') {
        at -= 1;
    }
    at
}

/// The index of the bracket opening the object or array that closes at `close`, brackets
/// counted backwards (their kinds are not matched: the parse judges that); `None` when the
/// body starts first.
fn container_start(bytes: &[u8], close: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut at = close + 1;
    while at > 0 {
        at -= 1;
        match bytes[at] {
            b'}' | b']' => depth += 1,
            b'{' | b'[' => {
                depth -= 1;
                if depth == 0 {
                    return Some(at);
                }
            }
            b'"' => at = string_start(bytes, at)?,
            _ => {}
        }
    }
    None
}

/// The index of the quote opening the JSON string whose closing quote is `bytes[close]`: the
/// nearest quote before it that an even run of backslashes (or none) precedes.
fn string_start(bytes: &[u8], close: usize) -> Option<usize> {
    let mut at = close;
    loop {
        at = memchr::memrchr(b'"', &bytes[..at])?;
        let backslashes = bytes[..at]
            .iter()
            .rev()
            .take_while(|&&b| b == b'\\')
            .count();
        if backslashes % 2 == 0 {
            return Some(at);
        }
    }
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
        let tail = raw.tail(1).expect("the last event parses");
        assert_eq!(
            (tail.count, tail.events.len(), tail.events[0].id),
            (Some(3), 1, Some(1))
        );
        assert!(raw.tail(2).is_none(), "an element that is not an event");
        assert!(raw.parse().is_err());
    }

    /// `n` events as aw-server-rust sends them (newest first, compact), ≈ 120 bytes each.
    fn page_body(n: usize) -> Vec<u8> {
        let events: Vec<serde_json::Value> = (0..n)
            .rev()
            .map(|i| {
                serde_json::json!({"id": i, "timestamp": format!("2024-01-01T00:{:02}:{:02}Z", i / 60 % 60, i % 60),
                    "duration": 1.5, "data": {"app": "editor", "title": format!("\"quoted\" }}], title {i}")}})
            })
            .collect();
        serde_json::to_vec(&events).unwrap()
    }

    /// A catch-up page is read from its end, over its tail only: its events are those the
    /// parse ends with, its count is an estimate, and whether it may be full is told from
    /// that estimate. A small page is counted exactly.
    #[test]
    fn a_large_pages_tail_is_read_from_its_end_and_its_count_estimated() {
        let body = page_body(2_000);
        assert!(body.len() > FORWARD_TAIL_MAX);
        let raw = RawPage::new("u".into(), body, None);
        let all = raw.parse().unwrap();
        let tail = raw.tail(32).expect("a tail");
        assert_eq!(tail.count, None, "not counted");
        let ids = |es: &[PageEvent]| es.iter().map(|e| e.id).collect::<Vec<_>>();
        assert_eq!(ids(&tail.events), ids(&all[all.len() - 32..]));
        assert!(
            (1_800..=2_200).contains(&tail.estimate),
            "{} for 2,000 events",
            tail.estimate
        );
        assert!(tail.may_fill(2_000) && tail.may_fill(3_000));
        assert!(
            !tail.may_fill(10_000),
            "a page of a fifth of its limit is not full"
        );

        let raw = RawPage::new("u".into(), page_body(300), None);
        let tail = raw.tail(32).expect("a tail");
        assert_eq!(tail.count, Some(300));
        assert!(tail.may_fill(300) && !tail.may_fill(301));
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

    /// `elements` as an array, compact or pretty, cut after `cut` bytes when that is shorter;
    /// whether it is whole.
    fn body_of(
        elements: &[serde_json::Value],
        pretty: bool,
        cut: Option<usize>,
    ) -> (Vec<u8>, bool) {
        let mut body = if pretty {
            serde_json::to_vec_pretty(elements).unwrap()
        } else {
            serde_json::to_vec(elements).unwrap()
        };
        let whole = cut.is_none_or(|c| c >= body.len());
        if let Some(c) = cut {
            body.truncate(c.min(body.len()));
        }
        (body, whole)
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
            let (body, _) = body_of(&elements, pretty, cut);
            let skim = last_elements(&body, n).map(|(count, spans)| {
                let texts: Vec<String> = spans
                    .into_iter()
                    .map(|r| String::from_utf8(body[r].to_vec()).unwrap())
                    .collect();
                (count, texts)
            });
            proptest::prop_assert_eq!(skim, serde_last(&body, n));
        }

        /// Walking back from the end finds the same last elements as serde_json wherever
        /// none of them is a scalar, and the count exactly when it reached the array's start;
        /// on a cut body it returns, without panicking, only spans that open and close a
        /// container.
        #[test]
        fn the_walk_from_the_end_agrees_with_serde_json(
            elements in proptest::collection::vec(json_value(), 0..8),
            n in 0usize..4,
            pretty: bool,
            cut in proptest::option::of(0usize..400),
        ) {
            let (body, whole) = body_of(&elements, pretty, cut);
            let rev = last_elements_rev(&body, n);
            if let Some((_, spans)) = &rev {
                for r in spans {
                    let (open, close) = (body[r.start], body[r.end - 1]);
                    proptest::prop_assert!(
                        matches!(open, b'{' | b'[') && matches!(close, b'}' | b']'),
                        "span {:?}",
                        r
                    );
                }
            }
            if whole {
                let last = &elements[elements.len().saturating_sub(n)..];
                let want = last
                    .iter()
                    .all(|e| e.is_object() || e.is_array())
                    .then(|| ((elements.len() <= n).then_some(elements.len()), last.to_vec()));
                let got = rev.map(|(count, spans)| {
                    let values: Vec<serde_json::Value> = spans
                        .into_iter()
                        .map(|r| serde_json::from_slice(&body[r]).unwrap())
                        .collect();
                    (count, values)
                });
                proptest::prop_assert_eq!(got, want);
            }
        }
    }
}
