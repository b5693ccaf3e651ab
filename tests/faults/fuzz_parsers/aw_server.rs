//! aw-server's answers: events, buckets, nested data, body limits, any status and body.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use aw_sync_samay::http_body;
use aw_sync_samay::privacy::Redaction;
use aw_sync_samay::source::MAX_SMALL_ANSWER;
use aw_sync_samay::source::{AwClient, Bucket, Event, PageEvent, ServerInfo, SourceError};
use aw_sync_samay::state::hash::{
    check_depth, event_data_hash, event_hash, DataError, Span, MAX_DATA_DEPTH,
};
use chrono::{DateTime, Utc};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

use super::support::*;

/// Instants i64 nanoseconds hold (1677-2262), at nanosecond precision.
fn representable_instant() -> impl Strategy<Value = DateTime<Utc>> {
    any::<i64>().prop_map(DateTime::<Utc>::from_timestamp_nanos)
}

fn duration() -> impl Strategy<Value = f64> {
    prop_oneof![
        0.0f64..100_000.0,
        Just(0.0),
        (0u64..1_000_000_000).prop_map(|ms| ms as f64 / 1000.0),
        (0.0f64..1e300),
    ]
}

fn event() -> impl Strategy<Value = Event> {
    (
        proptest::option::of(any::<i64>()),
        representable_instant(),
        duration(),
        json_map(),
    )
        .prop_map(|(id, timestamp, duration, data)| Event {
            id,
            timestamp,
            duration,
            data,
        })
}

/// Timestamp text around RFC 3339: right and wrong field widths and ranges, offsets, fractions.
fn timestamp_text() -> impl Strategy<Value = String> {
    let year = prop_oneof![
        Just("2024".to_string()),
        "[0-9]{1,6}",
        Just("+10000".into()),
        Just("-0001".into())
    ];
    let two = "[0-9]{1,3}";
    let fraction = prop_oneof![Just(String::new()), "\\.[0-9]{0,15}"];
    let offset = prop_oneof![
        Just("Z".to_string()),
        Just("z".into()),
        Just(String::new()),
        "[+-][0-9]{2}:[0-9]{2}",
        "[+-][0-9]{1,5}",
    ];
    let sep = prop_oneof![Just("T"), Just("t"), Just(" "), Just("_")];
    (year, two, two, sep, two, two, two, fraction, offset)
        .prop_map(|(y, mo, d, sep, h, mi, s, f, o)| format!("{y}-{mo}-{d}{sep}{h}:{mi}:{s}{f}{o}"))
}

/// An event as JSON, with each field either right, mistyped, null, missing or extreme.
fn event_json() -> impl Strategy<Value = String> {
    let timestamp = prop_oneof![
        3 => representable_instant().prop_map(|t| json!(t.to_rfc3339())),
        3 => timestamp_text().prop_map(Value::String),
        1 => Just(Value::Null),
        1 => any::<i64>().prop_map(|n| json!(n)),
    ];
    let duration = prop_oneof![
        3 => duration().prop_map(|d| d.to_string()),
        1 => Just("-5".to_string()),
        1 => Just("-0".to_string()),
        1 => Just("1e308".to_string()),
        1 => Just("1e309".to_string()),
        1 => Just("123456789012345678901234567890".to_string()),
        1 => Just("NaN".to_string()),
        1 => Just("\"5\"".to_string()),
        1 => Just("null".to_string()),
    ];
    let data = prop_oneof![
        3 => json_map().prop_map(|m| Value::Object(m).to_string()),
        1 => Just("null".to_string()),
        1 => Just("[]".to_string()),
        1 => Just("\"title\"".to_string()),
    ];
    (
        proptest::option::of(timestamp),
        proptest::option::of(duration),
        proptest::option::of(data),
        proptest::option::of(any::<i64>()),
    )
        .prop_map(|(timestamp, duration, data, id)| {
            let mut fields = Vec::new();
            if let Some(id) = id {
                fields.push(format!("\"id\":{id}"));
            }
            if let Some(t) = timestamp {
                fields.push(format!("\"timestamp\":{t}"));
            }
            if let Some(d) = duration {
                fields.push(format!("\"duration\":{d}"));
            }
            if let Some(d) = data {
                fields.push(format!("\"data\":{d}"));
            }
            format!("{{{}}}", fields.join(","))
        })
}

/// The checks the sync engine runs on every event it reads: none may panic, and each must
/// agree with the event's own fields.
fn check_event(e: &Event) -> Result<(), TestCaseError> {
    prop_assert!(e.duration.is_finite(), "JSON cannot carry {}", e.duration);
    let end = e.end();
    prop_assert!(end >= e.timestamp);
    match Span::of(e) {
        Some(span) => {
            prop_assert!(e.duration >= 0.0);
            prop_assert_eq!(Some(span.start_ns), e.timestamp.timestamp_nanos_opt());
            prop_assert!(span.end_ns() >= span.start_ns);
            prop_assert!(event_hash(e).is_some());
        }
        None => {
            // Only what cannot be represented is skipped: negative, or past i64 nanoseconds.
            let start = e.timestamp.timestamp_nanos_opt();
            let representable = start.is_some()
                && e.duration >= 0.0
                && (e.duration * 1e9).round() < i64::MAX as f64
                && start
                    .and_then(|s| s.checked_add((e.duration * 1e9).round() as i64))
                    .is_some();
            prop_assert!(!representable, "{:?} was skipped", e);
            prop_assert!(event_hash(e).is_none());
        }
    }
    Ok(())
}

fn nested(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

proptest! {
    #![proptest_config(cases(256))]

    /// An event as aw-server would serve it reads back as itself and hashes the same.
    #[test]
    fn events_round_trip_through_json(e in event()) {
        let bytes = serde_json::to_vec(&e).expect("serializes");
        let back: Event = serde_json::from_slice(&bytes).expect("parses back");
        prop_assert_eq!(back.timestamp, e.timestamp);
        prop_assert_eq!(back.id, e.id);
        prop_assert_eq!(&back.data, &e.data);
        prop_assert_eq!(back.duration.to_bits(), e.duration.to_bits(), "{} came back as {}", e.duration, back.duration);
        prop_assert_eq!(event_hash(&back).map(|h| h.0), event_hash(&e).map(|h| h.0));
        check_event(&back)?;
    }

    /// Valid-ish events with mutated fields: parsed into something the engine handles, or a
    /// serde error; a missing or mistyped timestamp or duration is never defaulted.
    #[test]
    fn mutated_events_parse_or_fail(text in event_json()) {
        let parsed: Result<Event, _> = serde_json::from_str(&text);
        let raw: Result<Value, _> = serde_json::from_str(&text);
        if let Ok(e) = &parsed {
            check_event(e)?;
            let raw = raw.expect("an event is JSON");
            prop_assert!(raw.get("timestamp").is_some_and(Value::is_string), "{}", text);
            prop_assert!(raw.get("duration").is_some_and(Value::is_number), "{}", text);
            // The data is what was sent: null reads as empty, nothing else is invented.
            match raw.get("data") {
                None | Some(Value::Null) => prop_assert!(e.data.is_empty()),
                Some(Value::Object(m)) => prop_assert_eq!(&e.data, m),
                Some(other) => prop_assert!(false, "data {other} accepted"),
            }
        }
        // A page of them: one bad event fails the page (the client reports Malformed).
        let page = format!("[{text},{text}]");
        prop_assert_eq!(serde_json::from_str::<Vec<Event>>(&page).is_ok(), parsed.is_ok());
    }

    /// Arbitrary bytes as every body aw-server sends: a value or an error, never a panic.
    #[test]
    fn any_bytes_as_aw_server_bodies(body in prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        event_json().prop_map(String::into_bytes),
    ]) {
        if let Ok(events) = serde_json::from_slice::<Vec<Event>>(&body) {
            for e in &events {
                check_event(e)?;
            }
        }
        let _ = serde_json::from_slice::<Option<Event>>(&body);
        let _ = serde_json::from_slice::<BTreeMap<String, Bucket>>(&body);
        let _ = serde_json::from_slice::<ServerInfo>(&body);
    }

    /// Buckets with null, missing and mistyped fields (Python aw-server keeps some nullable).
    #[test]
    fn buckets_parse_with_nulls_and_refuse_wrong_types(
        client in prop_oneof![Just("null"), Just("\"aw-watcher\""), Just("1")],
        data in prop_oneof![Just("null"), Just("{}"), Just("{\"k\":[1]}"), Just("[]")],
        created in prop_oneof![Just("null"), Just("\"2024-01-01T00:00:00.123456+00:00\""), Just("\"yesterday\"")],
        bucket_type in prop_oneof![Just("\"currentwindow\""), Just("null")],
    ) {
        let body = format!(
            r#"{{"b1":{{"id":"b1","type":{bucket_type},"client":{client},"hostname":null,"created":{created},"data":{data}}}}}"#
        );
        let parsed = serde_json::from_str::<BTreeMap<String, Bucket>>(&body);
        let valid = client != "1" && data != "[]" && created != "\"yesterday\"" && bucket_type != "null";
        prop_assert_eq!(parsed.is_ok(), valid, "{}", body);
        if let Ok(buckets) = parsed {
            let b = &buckets["b1"];
            prop_assert_eq!(&b.client, if client == "null" { "" } else { "aw-watcher" });
            prop_assert_eq!(b.hostname.as_str(), "");
        }
    }
}

proptest! {
    #![proptest_config(cases(32))]

    /// Nesting in event data read as a parsed `Event`: serde_json's depth limit answers with an
    /// error; below it the hash copes.
    #[test]
    fn deeply_nested_event_data_is_an_error_not_a_crash(depth in prop_oneof![1usize..120, 120usize..140, Just(100_000)]) {
        let text = format!(
            r#"[{{"timestamp":"2024-01-01T00:00:00Z","duration":1,"data":{{"a":{}}}}}]"#,
            nested(depth)
        );
        match serde_json::from_str::<Vec<Event>>(&text) {
            Ok(events) => {
                prop_assert!(depth < 128);
                prop_assert!(event_hash(&events[0]).is_some());
            }
            Err(e) => {
                prop_assert!(depth >= 120, "{depth}: {e}");
                prop_assert!(e.to_string().contains("recursion limit"), "{e}");
            }
        }
    }
}

/// Event data nested `depth` levels (the data object is level 1), each level an object or an
/// array as `kinds` says (cycled), with strings full of brackets and escapes along the way
/// that must not count as nesting.
fn nested_data(depth: usize, kinds: &[bool]) -> String {
    let mut open = String::new();
    let mut close = Vec::with_capacity(depth);
    for level in 0..depth {
        let object = level == 0 || kinds[level % kinds.len()];
        if object {
            open.push_str(r#"{"k\"[{":"]}\\\"","a":"#);
            close.push('}');
        } else {
            open.push_str(r#"["{[",  "#);
            close.push(']');
        }
    }
    // The innermost level holds a number instead of another level.
    open.push('1');
    open.extend(close.iter().rev());
    open
}

proptest! {
    #![proptest_config(cases(48))]

    /// Issue 11: event data of any depth, as the scan reads it (text), is hashed when serde_json
    /// could parse it into a map and is `TooDeep` otherwise — by the hash, the depth check and
    /// the redaction alike, in one pass, on a stack smaller than a Windows main thread's. A
    /// hashed one hashes as its parsed map does.
    #[test]
    fn event_data_of_any_depth_is_hashed_or_too_deep(
        depth in prop_oneof![3 => 1usize..=MAX_DATA_DEPTH + 8, 1 => 1_000usize..5_000, 1 => Just(20_000usize), 1 => Just(200_000usize)],
        kinds in proptest::collection::vec(any::<bool>(), 1..8),
    ) {
        let text = nested_data(depth, &kinds);
        let outcome = std::thread::Builder::new()
            .stack_size(512 * 1024)
            .spawn(move || {
                let page = format!(r#"[{{"id":1,"timestamp":"2024-01-01T00:00:00Z","duration":1,"data":{text}}}]"#);
                let events: Vec<PageEvent> = serde_json::from_str(&page).map_err(|e| e.to_string())?;
                let data = &events[0].data;
                let span = Span { start_ns: 1, duration_ns: 2 };
                let hashed = event_data_hash(span, data);
                let checked = check_depth(data.get());
                let redaction = Redaction { drop: ["k\"[{".to_string()].into(), hash: ["a".to_string()].into() };
                let redacted = redaction.apply_raw(&[1; 32], data).map(|_| ());
                let parsed = serde_json::from_str::<Map<String, Value>>(data.get()).ok();
                let parsed_hash = parsed.map(|data| {
                    let event = Event { id: None, timestamp: DateTime::<Utc>::from_timestamp_nanos(1), duration: 2e-9, data };
                    event_hash(&event).map(|h| h.0)
                });
                Ok::<_, String>((hashed, checked, redacted, parsed_hash))
            })
            .expect("thread")
            .join()
            .map_err(|_| TestCaseError::fail(format!("depth {depth}: a reader panicked or overflowed")))?
            .map_err(TestCaseError::fail)?;
        let (hashed, checked, redacted, parsed_hash) = outcome;
        let fits = depth <= MAX_DATA_DEPTH;
        prop_assert_eq!(parsed_hash.is_some(), fits, "serde_json's own limit at {}", depth);
        if fits {
            prop_assert_eq!(hashed.as_ref().ok().copied(), parsed_hash.flatten());
            prop_assert_eq!(checked, Ok(()));
            prop_assert_eq!(redacted, Ok(()));
        } else {
            prop_assert_eq!(hashed, Err(DataError::TooDeep));
            prop_assert_eq!(checked, Err(DataError::TooDeep));
            prop_assert_eq!(redacted, Err(DataError::TooDeep));
        }
    }

    /// Issue 11: a body of any size, in any chunks, announced or not, is read whole up to the
    /// limit and refused past it, having taken at most the limit and one chunk from the peer —
    /// nothing at all when it announced more than the limit.
    #[test]
    fn bodies_are_read_whole_up_to_the_limit_and_refused_past_it(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..600), 0..12),
        limit in 0usize..3000,
        announce in prop_oneof![Just(None), Just(Some(0i64)), (-100i64..100).prop_map(Some)],
    ) {
        let total: usize = chunks.iter().map(Vec::len).sum();
        let biggest = chunks.iter().map(Vec::len).max().unwrap_or(0);
        // The announced length: none, the truth, or a lie around it.
        let announced = announce.map(|lie| (total as i64 + lie).max(0) as u64);
        let whole: Vec<u8> = chunks.concat();
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let (result, taken) = runtime.block_on(http_body::read_chunks(chunks, announced, limit));
        let refused_up_front = announced.is_some_and(|a| a > limit as u64);
        match result {
            Ok(body) => {
                prop_assert!(!refused_up_front && total <= limit);
                prop_assert_eq!(body, whole);
            }
            Err(http_body::BodyError::TooLarge { limit: l }) => {
                prop_assert_eq!(l, limit);
                prop_assert!(refused_up_front || total > limit);
                prop_assert!(taken <= (limit + biggest) as u64, "took {} of a {} limit", taken, limit);
                if refused_up_front {
                    prop_assert_eq!(taken, 0);
                }
            }
            Err(e) => prop_assert!(false, "{e}"),
        }
    }
}

proptest! {
    #![proptest_config(cases(8))]

    /// Issue 11: aw-server's small answers around their ceiling, through the real client over
    /// loopback HTTP: read up to 1 MiB, `TooLarge` past it, whether the length is announced
    /// or the body is chunked.
    #[test]
    fn aw_server_answers_past_their_ceiling_are_too_large(
        extra in prop_oneof![Just(-1i64), Just(0), Just(1), Just(4096), 1i64..100_000],
        chunked in any::<bool>(),
    ) {
        let size = (MAX_SMALL_ANSWER as i64 + extra) as usize;
        // A count padded with spaces: valid JSON of exactly `size` bytes.
        let mut body = vec![b' '; size - 1];
        body.push(b'7');
        // Its own server: the reply slot of `aw_fake` belongs to a test running in parallel.
        static SERVER: OnceLock<FakeServer> = OnceLock::new();
        let fake = SERVER.get_or_init(FakeServer::start);
        fake.answer(Reply { status: 200, headers: Vec::new(), body, chunked });
        let client = AwClient::new("127.0.0.1", fake.addr.port()).expect("client");
        let count = fake.runtime.block_on(client.event_count("b1"));
        match count {
            Ok(n) => {
                prop_assert!(size <= MAX_SMALL_ANSWER);
                prop_assert_eq!(n, 7);
            }
            Err(SourceError::TooLarge { limit, .. }) => {
                prop_assert!(size > MAX_SMALL_ANSWER);
                prop_assert_eq!(limit, MAX_SMALL_ANSWER);
            }
            Err(e) => prop_assert!(false, "{size} bytes: {e}"),
        }
    }
}

fn aw_fake() -> &'static FakeServer {
    static SERVER: OnceLock<FakeServer> = OnceLock::new();
    SERVER.get_or_init(FakeServer::start)
}

/// A status an HTTP server may send as a final answer.
fn final_status() -> impl Strategy<Value = u16> {
    prop_oneof![
        3 => Just(200u16),
        1 => Just(201),
        1 => Just(204),
        1 => Just(304),
        2 => Just(404),
        1 => Just(400),
        1 => Just(401),
        1 => Just(413),
        1 => Just(429),
        2 => Just(500),
        1 => Just(503),
        1 => 200u16..=599,
    ]
}

fn aw_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => proptest::collection::vec(event(), 0..4).prop_map(|e| serde_json::to_vec(&e).expect("events")),
        2 => event_json().prop_map(|e| format!("[{e}]").into_bytes()),
        1 => Just(b"null".to_vec()),
        1 => "[ -~]{0,30}There's no bucket named [a-z]{1,8}".prop_map(String::into_bytes),
        1 => Just(br#"{"message":"The requested bucket 'b' does not exist"}"#.to_vec()),
        1 => Just(br#"{"hostname":"h","version":"v0.12","testing":true}"#.to_vec()),
        1 => proptest::collection::vec(any::<u8>(), 0..300),
        1 => "<html>[ -~]{500,3000}</html>".prop_map(String::into_bytes),
        1 => Just(b"42".to_vec()),
    ]
}

proptest! {
    #![proptest_config(cases(48))]

    /// Every answer aw-server could give, through the real client over loopback HTTP: each
    /// call ends in a value or the typed error the engine branches on.
    #[test]
    fn aw_server_answers_become_values_or_typed_errors(status in final_status(), body in aw_body()) {
        let fake = aw_fake();
        let body = if status == 204 || status == 304 { Vec::new() } else { body };
        fake.answer(Reply { status, headers: Vec::new(), body: body.clone(), chunked: false });
        let client = AwClient::new("127.0.0.1", fake.addr.port()).expect("client");
        let (events, event, info, count) = fake.runtime.block_on(async {
            (
                client.get_events("b1", None, None, Some(10)).await,
                client.get_event("b1", 7).await,
                client.info().await,
                client.event_count("b1").await,
            )
        });
        let ok = (200..300).contains(&status);
        let parses = |ok_parse: bool| ok && ok_parse;

        // get_events: a page of events, or the right error.
        match &events {
            Ok(list) => {
                prop_assert!(parses(serde_json::from_slice::<Vec<Event>>(&body).is_ok()));
                for e in list {
                    check_event(e)?;
                }
            }
            Err(SourceError::BucketNotFound(id)) => {
                prop_assert_eq!(status, 404);
                prop_assert_eq!(id.as_str(), "b1");
            }
            Err(SourceError::Malformed { detail, .. }) => {
                prop_assert!(ok, "Malformed for {}", status);
                // serde's capped message and an 80-character excerpt, each character at most
                // PRINTABLE_WIDTH once printable (and Debug adds a backslash to each escape).
                prop_assert!(
                    detail.chars().count() < PRINTABLE_WIDTH * 260 + (PRINTABLE_WIDTH + 2) * 80 + 100,
                    "{} chars", detail.chars().count()
                );
                prop_assert!(!detail.chars().any(char::is_control), "{:?}", detail);
            }
            Err(SourceError::Status { status: s, body: snippet, .. }) => {
                prop_assert_eq!(*s, status);
                prop_assert!(!ok && status != 404);
                prop_assert!(snippet.chars().count() <= PRINTABLE_WIDTH * 200 + 1, "{} chars", snippet.chars().count());
                prop_assert!(!snippet.chars().any(char::is_control), "{:?}", snippet);
            }
            Err(e) => prop_assert!(false, "{e}"),
        }

        // get_event: a 404 is "no such event" unless the body says the bucket is missing.
        let says_bucket = {
            let t = String::from_utf8_lossy(&body).to_ascii_lowercase();
            t.contains("no bucket named") || t.contains("requested bucket")
        };
        match (&event, status) {
            (Ok(None), 404) => prop_assert!(!says_bucket),
            (Err(SourceError::BucketNotFound(_)), 404) => prop_assert!(says_bucket),
            (Ok(e), s) => {
                prop_assert!((200..300).contains(&s), "{} gave {:?}", s, e);
                if let Some(e) = e {
                    check_event(e)?;
                }
            }
            (Err(SourceError::Malformed { .. }), s) => prop_assert!((200..300).contains(&s)),
            (Err(SourceError::Status { status: s, .. }), st) => prop_assert_eq!(*s, st),
            (Err(e), _) => prop_assert!(false, "{e}"),
        }

        // info tells aw-server from another program on its port: a 3xx/4xx, or a success
        // whose body is not aw-server's info, is "not aw-server"; a 5xx may be aw-server in
        // trouble, a plain status error.
        let is_info = serde_json::from_slice::<ServerInfo>(&body).is_ok();
        match &info {
            Ok(_) => prop_assert!(parses(is_info)),
            Err(SourceError::NotAwServer { detail, .. }) => {
                prop_assert!((300..500).contains(&status) || (ok && !is_info), "{} {}", status, detail);
                prop_assert!(detail.chars().count() < 200, "{} chars", detail.chars().count());
            }
            Err(SourceError::Status { status: s, .. }) => {
                prop_assert_eq!(*s, status);
                prop_assert!(status >= 500);
            }
            Err(e) => prop_assert!(false, "{e}"),
        }
        match &count {
            Ok(n) => prop_assert_eq!(serde_json::from_slice::<u64>(&body).ok(), Some(*n)),
            Err(SourceError::BucketNotFound(_)) => prop_assert_eq!(status, 404),
            Err(SourceError::Status { .. } | SourceError::Malformed { .. }) => {}
            Err(e) => prop_assert!(false, "{e}"),
        }
    }
}
