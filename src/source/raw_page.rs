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
use serde_json::value::RawValue;

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
    /// others. `None` when the body is not a well-formed array of objects, or one of those
    /// `n` is not an event: then only [`RawPage::parse`] says what is wrong, and the caller
    /// waits for it. A hint only: a caller that acts on it checks it against the parse.
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
/// those are objects or arrays; `None` for anything else (a scalar, a body that is not one
/// well-formed array, a body cut short). serde_json skips over each element without
/// building it (its fast path for ignored values): a fraction of the cost of parsing them.
fn last_elements(bytes: &[u8], n: usize) -> Option<(usize, VecDeque<Range<usize>>)> {
    let elements: Vec<&RawValue> = serde_json::from_slice(bytes).ok()?;
    let base = bytes.as_ptr() as usize;
    let spans = elements[elements.len().saturating_sub(n)..]
        .iter()
        .map(|e| {
            let text = e.get();
            let start = text.as_ptr() as usize - base;
            start..start + text.len()
        })
        .collect::<VecDeque<_>>();
    let structured = spans
        .iter()
        .all(|r| matches!(bytes.get(r.start), Some(b'{' | b'[')));
    structured.then_some((elements.len(), spans))
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
}
