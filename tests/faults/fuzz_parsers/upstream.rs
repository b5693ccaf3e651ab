//! The upstream's answers: batch outcomes, `Retry-After`, the real client against a fake.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use aw_sync_samay::auth::AccessToken;
use aw_sync_samay::upstream::client::{batch_outcome, parse_retry_after};
use aw_sync_samay::upstream::contract::{BatchResponse, ErrorResponse};
use aw_sync_samay::upstream::{UpstreamClient, UpstreamError};
use chrono::TimeZone;
use chrono::Utc;
use proptest::prelude::*;
use serde_json::json;

use super::support::*;

/// A bearer token: long enough to be scrubbed (4+), from the characters real tokens use.
fn bearer_token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9][A-Za-z0-9._~-]{9,40}"
}

fn http_date(secs: u64) -> String {
    httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// `Retry-After` values: delta-seconds, the three HTTP-date forms, and near misses.
fn retry_after_text() -> impl Strategy<Value = String> {
    let secs = 0u64..253_402_300_799; // up to 9999-12-31, httpdate's last day
    prop_oneof![
        2 => (0u64..100_000).prop_map(|n| n.to_string()),
        1 => "[0-9]{19,40}",
        1 => " {0,3}[0-9]{1,5} {0,3}",
        2 => secs.clone().prop_map(http_date),
        1 => secs.clone().prop_map(|s| {
            // RFC 850 form: "Sunday, 06-Nov-94 08:49:37 GMT"
            let t = Utc.timestamp_opt(s as i64, 0).single().expect("in range");
            t.format("%A, %d-%b-%y %H:%M:%S GMT").to_string()
        }),
        1 => secs.prop_map(|s| {
            // asctime form: "Sun Nov  6 08:49:37 1994"
            let t = Utc.timestamp_opt(s as i64, 0).single().expect("in range");
            t.format("%a %b %e %H:%M:%S %Y").to_string()
        }),
        1 => "-[0-9]{1,5}|[0-9]{1,5}\\.[0-9]|[0-9]{1,5}s|\\+[0-9]{1,3}|0x[0-9a-f]{1,4}",
        1 => "(Mon|Foo), [0-9]{1,2} (Jan|Feb|Xyz) [0-9]{1,5} [0-9]{1,2}:[0-9]{1,2}:[0-9]{1,2} (GMT|UTC|PST)",
        1 => any::<String>(),
    ]
}

/// The body of an upstream answer: right, mutated, echoing the token, or junk.
fn upstream_body(token: String) -> impl Strategy<Value = Vec<u8>> {
    let number = prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        Just("18446744073709551616".to_string()),
        Just("1.5".to_string()),
        Just("1e3".to_string()),
        Just("null".to_string()),
        Just("\"3\"".to_string()),
    ];
    let index = prop_oneof![
        4 => 0i64..60,
        1 => any::<i64>(),
        1 => Just(-1i64),
    ];
    let t = token.clone();
    let t2 = token.clone();
    let t3 = token;
    prop_oneof![
        2 => (any::<u64>(), any::<u64>()).prop_map(|(a, d)| format!(r#"{{"accepted":{a},"duplicates":{d},"extra":[1]}}"#).into_bytes()),
        2 => (number.clone(), number).prop_map(|(a, d)| format!(r#"{{"accepted":{a},"duplicates":{d}}}"#).into_bytes()),
        1 => Just(br#"{"accepted":1}"#.to_vec()),
        3 => (nasty_text(), proptest::option::of(proptest::collection::vec(index, 0..12)))
            .prop_map(|(error, rejected)| {
                let mut v = json!({ "error": error });
                if let Some(r) = rejected {
                    v["rejected"] = json!(r);
                }
                v.to_string().into_bytes()
            }),
        1 => Just(br#"{"error":"bad","rejected":[1.5]}"#.to_vec()),
        1 => Just(br#"{"error":"bad","rejected":"all"}"#.to_vec()),
        2 => (nasty_text(), 0usize..3).prop_map(move |(around, shape)| match shape {
            // The token echoed: in the error text, in a mistyped field, in plain text.
            0 => json!({ "error": format!("{around} Bearer {t} {around}") }).to_string().into_bytes(),
            1 => format!(r#"{{"accepted":"Bearer {t}","duplicates":0}}"#).into_bytes(),
            _ => format!("{around}Authorization: Bearer {t}\n{around}").into_bytes(),
        }),
        1 => (0usize..1300).prop_map(move |pad| {
            // Straddling the 1200-byte excerpt and the 300-character cut.
            format!("{}{t2}{}", "é".repeat(pad / 2), "x".repeat(pad)).into_bytes()
        }),
        1 => "[ -~]{0,20}".prop_map(move |p| format!(r#"{{"accepted":0,"duplicates":"{p}{t3}"}}"#).into_bytes()),
        1 => proptest::collection::vec(any::<u8>(), 0..400),
        1 => "<html>[ -~]{300,2000}</html>".prop_map(String::into_bytes),
    ]
}

fn any_status() -> impl Strategy<Value = u16> {
    prop_oneof![
        4 => prop_oneof![Just(200u16), Just(201), Just(202), Just(204)],
        4 => prop_oneof![Just(400u16), Just(422)],
        2 => prop_oneof![Just(401u16), Just(413), Just(408), Just(429), Just(501)],
        2 => 500u16..600,
        1 => 300u16..400,
        1 => 400u16..500,
        1 => 100u16..1000,
        1 => any::<u16>(),
    ]
}

/// Checks one outcome of a batch of `events` events against the status and body it came from.
fn check_outcome(
    status: u16,
    retry_after: Option<&str>,
    body: &[u8],
    events: usize,
    token: &str,
    outcome: &Result<BatchResponse, UpstreamError>,
) -> Result<(), TestCaseError> {
    match outcome {
        Ok(answer) => {
            prop_assert!((200..300).contains(&status), "{} accepted", status);
            let parsed = serde_json::from_slice::<BatchResponse>(body).ok();
            prop_assert_eq!(Some(answer), parsed.as_ref());
        }
        Err(e) => {
            let text = format!("{e} {e:?}");
            prop_assert!(!text.contains(token), "token in {}", text);
            match e {
                UpstreamError::Malformed(m) => {
                    prop_assert!((200..300).contains(&status));
                    prop_assert!(serde_json::from_slice::<BatchResponse>(body).is_err());
                    prop_assert!(
                        m.chars().count() < PRINTABLE_WIDTH * 600,
                        "{} chars",
                        m.chars().count()
                    );
                    prop_assert!(!m.chars().any(char::is_control), "{:?}", m);
                }
                UpstreamError::Unauthorized => prop_assert_eq!(status, 401),
                UpstreamError::TooLarge => prop_assert_eq!(status, 413),
                UpstreamError::Retryable {
                    status: s,
                    retry_after: wait,
                } => {
                    prop_assert_eq!(*s, status);
                    prop_assert!(
                        matches!(status, 408 | 429)
                            || ((500..600).contains(&status) && status != 501)
                    );
                    let expected =
                        retry_after.and_then(|v| parse_retry_after(v, SystemTime::now()));
                    prop_assert_eq!(wait.is_some(), expected.is_some());
                    if retry_after.is_some_and(|v| v.trim().bytes().all(|b| b.is_ascii_digit())) {
                        prop_assert_eq!(*wait, expected);
                    }
                }
                UpstreamError::Rejected {
                    status: s,
                    message,
                    rejected,
                } => {
                    prop_assert_eq!(*s, status);
                    prop_assert!(status == 400 || status == 422);
                    prop_assert!(
                        message.chars().count() <= PRINTABLE_WIDTH * 300 + 1,
                        "{} chars",
                        message.chars().count()
                    );
                    prop_assert!(!message.chars().any(char::is_control), "{:?}", message);
                    if let Some(idx) = rejected {
                        prop_assert!(!idx.is_empty());
                        prop_assert!(
                            idx.windows(2).all(|w| w[0] < w[1]),
                            "sorted, no duplicates: {:?}",
                            idx
                        );
                        prop_assert!(idx.iter().all(|&i| i < events), "{:?} of {}", idx, events);
                        let named = serde_json::from_slice::<ErrorResponse>(body)
                            .ok()
                            .and_then(|e| e.rejected)
                            .unwrap_or_default();
                        prop_assert!(
                            idx.iter().all(|i| named.contains(i)),
                            "{:?} not all in {:?}",
                            idx,
                            named
                        );
                    }
                }
                UpstreamError::Fatal { status: s, message } => {
                    prop_assert_eq!(*s, status);
                    prop_assert!(
                        !(200..300).contains(&status)
                            && !matches!(status, 401 | 413 | 408 | 429 | 400 | 422)
                            && (status == 501 || !(500..600).contains(&status))
                    );
                    prop_assert!(
                        message.chars().count() <= PRINTABLE_WIDTH * 300 + 40,
                        "{} chars",
                        message.chars().count()
                    );
                    prop_assert!(!message.chars().any(char::is_control), "{:?}", message);
                }
                UpstreamError::Network(_) | UpstreamError::Config(_) => prop_assert!(false, "{e}"),
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(cases(512))]

    #[test]
    fn upstream_answers_are_classified_without_leaking_the_token(
        (token, body) in bearer_token().prop_flat_map(|t| (Just(t.clone()), upstream_body(t))),
        status in any_status(),
        retry_after in proptest::option::of(retry_after_text()),
        location in proptest::option::of(prop_oneof![
            Just("https://elsewhere.example/v1".to_string()),
            nasty_text(),
        ]),
        events in 0usize..50,
    ) {
        // A redirect that names the token in its target must not leak it either.
        let location = location.map(|l| format!("{l}?access_token={token}"));
        let got = batch_outcome(status, retry_after.as_deref(), location.as_deref(), &body, events, &AccessToken::new(token.clone()));
        match got {
            None => prop_assert!(!(100..1000).contains(&status), "{} refused", status),
            Some(outcome) => check_outcome(status, retry_after.as_deref(), &body, events, &token, &outcome)?,
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_dates(value in retry_after_text(), now in 0u64..253_402_300_799) {
        let now_t = SystemTime::UNIX_EPOCH + Duration::from_secs(now);
        let got = parse_retry_after(&value, now_t);
        let trimmed = value.trim();
        if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) {
            prop_assert_eq!(got, Some(Duration::from_secs(trimmed.parse::<u64>().unwrap_or(u64::MAX))));
        } else if let Ok(when) = httpdate::parse_http_date(trimmed) {
            prop_assert_eq!(got, Some(when.duration_since(now_t).unwrap_or(Duration::ZERO)));
        } else {
            prop_assert_eq!(got, None, "{:?}", value);
        }
    }

    /// A date written as HTTP writes it comes back as the wait until then (zero once past).
    #[test]
    fn retry_after_dates_round_trip(now in 0u64..200_000_000_000, delta in -1_000_000i64..1_000_000) {
        let now_t = SystemTime::UNIX_EPOCH + Duration::from_secs(now);
        let then = now.saturating_add_signed(delta);
        let expected = Duration::from_secs(then.saturating_sub(now));
        prop_assert_eq!(parse_retry_after(&http_date(then), now_t), Some(expected));
    }
}

fn upstream_fake() -> &'static FakeServer {
    static SERVER: OnceLock<FakeServer> = OnceLock::new();
    SERVER.get_or_init(FakeServer::start)
}

fn batch(events: usize) -> aw_sync_samay::upstream::contract::BatchRequest {
    use aw_sync_samay::upstream::contract::{BatchRequest, UpEvent};
    BatchRequest {
        batch_id: uuid::Uuid::new_v4(),
        device_id: uuid::Uuid::new_v4(),
        user_id: None,
        hostname: "h".into(),
        sync_timestamp: "2024-01-01T00:00:00Z".into(),
        buckets: BTreeMap::new(),
        events: (0..events)
            .map(|i| UpEvent {
                bucket_id: "b".into(),
                event_id: i as i64,
                hash: "00".into(),
                timestamp: "2024-01-01T00:00:00Z".into(),
                duration: 1.0,
                data: aw_sync_samay::source::model::empty_object(),
            })
            .collect(),
        deletions: Vec::new(),
    }
}

proptest! {
    #![proptest_config(cases(48))]

    /// The same answers through the real client over loopback HTTP (headers, bounded body
    /// read, gzip upload): classified exactly as the socket-free entry point classifies them.
    #[test]
    fn the_real_client_classifies_answers_the_same_way(
        (token, body) in bearer_token().prop_flat_map(|t| (Just(t.clone()), upstream_body(t))),
        status in prop_oneof![Just(200u16), Just(400), Just(422), Just(429), Just(503), Just(401), Just(413), Just(404), 200u16..=599],
        retry_after in proptest::option::of(prop_oneof![(0u64..100_000).prop_map(|n| n.to_string()), Just("soon".to_string()), Just(http_date(1))]),
        events in 1usize..20,
        big in proptest::bool::weighted(0.05),
    ) {
        let fake = upstream_fake();
        let mut body = if status == 204 || status == 304 { Vec::new() } else { body };
        if big {
            // Past the 1 MiB the client reads: only the start is looked at.
            body.extend_from_slice(&vec![b'x'; 1_200_000]);
        }
        let headers = retry_after.iter().map(|v| ("retry-after".to_string(), v.clone())).collect();
        fake.answer(Reply { status, headers, body: body.clone(), chunked: false });
        let client = UpstreamClient::new(&format!("http://{}", fake.addr), Duration::from_secs(20), true).expect("client");
        let token_value = AccessToken::new(token.clone());
        let got = fake.runtime.block_on(client.send_batch(&token_value, &batch(events)));
        let read = &body[..body.len().min(1024 * 1024)];
        let direct = batch_outcome(status, retry_after.as_deref(), None, read, events, &token_value).expect("a status");
        check_outcome(status, retry_after.as_deref(), read, events, &token, &got)?;
        match (&got, &direct) {
            (Err(UpstreamError::Retryable { status: a, .. }), Err(UpstreamError::Retryable { status: b, .. })) => prop_assert_eq!(a, b),
            (Err(UpstreamError::Fatal { status: a, message: m }), Err(UpstreamError::Fatal { status: b, .. })) if (300..400).contains(a) => {
                prop_assert_eq!(a, b);
                prop_assert!(m.contains("not followed"));
            }
            // A success whose body went on past the most read is refused whole: the entry
            // point without a socket only ever sees the prefix, which may parse or not.
            (Err(UpstreamError::Malformed(m)), _) if big && (200..300).contains(&status) => {
                prop_assert!(m.contains("larger than 1 MiB"), "{}", m);
            }
            _ => prop_assert_eq!(&got, &direct),
        }
    }
}
