//! Any event data as the scan reads it — JSON text kept whole, of any depth — through everything
//! that walks it: the canonical hash, the depth check and the redaction (issue 11: 20,000 levels
//! overflowed the stack, 200,000 burnt 22 s of CPU). `repeat` amplifies a prefix, so short
//! inputs reach nesting far deeper than libFuzzer's input length.
#![no_main]

use aw_sync_samay::privacy::Redaction;
use aw_sync_samay::source::PageEvent;
use aw_sync_samay::state::hash::{check_depth, event_data_hash, DataError, Span};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Data<'a> {
    /// Repeated `repeat` times (at most 300,000) before `body`, then `closing` as often.
    prefix: &'a str,
    repeat: u32,
    body: &'a str,
    closing: &'a str,
}

fuzz_target!(|d: Data<'_>| {
    let times = (d.repeat % 300_001) as usize;
    if d.prefix.len().saturating_add(d.closing.len()).saturating_mul(times) > 4_000_000 {
        return;
    }
    let text = format!(
        "{}{}{}",
        d.prefix.repeat(times),
        d.body,
        d.closing.repeat(times)
    );
    let page = format!(r#"[{{"id":1,"timestamp":"2024-01-01T00:00:00Z","duration":1,"data":{text}}}]"#);
    let Ok(events) = serde_json::from_str::<Vec<PageEvent>>(&page) else {
        return;
    };
    let data = &events[0].data;
    let span = Span {
        start_ns: 1,
        duration_ns: 2,
    };
    let hashed = event_data_hash(span, data);
    let checked = check_depth(data.get());
    let redaction = Redaction {
        drop: ["title".to_string()].into(),
        hash: ["url".to_string()].into(),
    };
    let redacted = redaction.apply_raw(&[3; 32], data);
    let parses = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(data.get()).is_ok();
    // serde_json validated the text: nothing but depth can stop the walkers, and they agree
    // with each other and with serde_json's own limit.
    assert_eq!(hashed.is_ok(), parses, "{hashed:?}");
    assert_eq!(checked.is_ok(), parses, "{checked:?}");
    assert_eq!(redacted.is_ok(), parses);
    if !parses {
        assert_eq!(hashed, Err(DataError::TooDeep));
    }
});
