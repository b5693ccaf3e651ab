//! The JSON shapes aw-server (Rust and Python) serve.

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// `GET /api/0/info`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerInfo {
    pub hostname: String,
    pub version: String,
    #[serde(default)]
    pub testing: bool,
    /// aw-server-rust and Python aw-server >= 0.12 report one; older servers do not.
    #[serde(default)]
    pub device_id: Option<String>,
}

/// One bucket as listed by `GET /api/0/buckets/`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    pub id: String,
    #[serde(rename = "type")]
    pub bucket_type: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub client: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub hostname: String,
    /// When the bucket was created; a different value for the same id means the bucket (or the
    /// whole database) was replaced and its event ids started over.
    #[serde(default)]
    pub created: Option<DateTime<Utc>>,
    /// Python aw-server keeps this column nullable, so `null` must read as empty rather than
    /// failing the whole bucket list.
    #[serde(default, deserialize_with = "null_as_default")]
    pub data: Map<String, Value>,
    /// aw-server-rust's `metadata`: the start of the bucket's oldest event and the end of its
    /// latest, from its cache (grown on insert and heartbeat).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BucketSpan>,
    /// Python aw-server's `last_updated`: the end of the newest event (by start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated: Option<String>,
}

/// `metadata` of aw-server-rust's bucket listing (both ends `null` for an empty bucket).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BucketSpan {
    #[serde(default)]
    pub start: Option<String>,
    #[serde(default)]
    pub end: Option<String>,
}

impl Bucket {
    /// What the listing says about the bucket's data, as one string that changes when an
    /// event is added at either end or the newest event grows (a heartbeat): equal to what was
    /// recorded means nothing moved at the edges. `None` when the server reports neither
    /// field, so nothing can be concluded from it.
    pub fn listing_fingerprint(&self) -> Option<String> {
        if self.metadata.is_none() && self.last_updated.is_none() {
            return None;
        }
        let span = self.metadata.clone().unwrap_or_default();
        Some(format!(
            "{}|{}|{}",
            span.start.as_deref().unwrap_or("-"),
            span.end.as_deref().unwrap_or("-"),
            self.last_updated.as_deref().unwrap_or("-")
        ))
    }
}

/// One event. Timestamps parse from both servers' formats (`...Z` with nanoseconds from
/// aw-server-rust, `+00:00` with microseconds from Python aw-server) into UTC.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
    pub timestamp: DateTime<Utc>,
    /// Seconds, as the servers send it.
    pub duration: f64,
    #[serde(default, deserialize_with = "null_as_default")]
    pub data: Map<String, Value>,
}

impl Event {
    /// An event without an id, as a client creates it (the server assigns the id).
    pub fn new(timestamp: DateTime<Utc>, duration: f64, data: Map<String, Value>) -> Self {
        Event {
            id: None,
            timestamp,
            duration,
            data,
        }
    }

    /// `duration` as a `TimeDelta`, rounded to the nanosecond. The servers send floats, so a
    /// NaN, negative or absurdly large value from a corrupt row saturates instead of panicking.
    pub fn duration_delta(&self) -> TimeDelta {
        if !self.duration.is_finite() || self.duration <= 0.0 {
            return TimeDelta::zero();
        }
        let nanos = (self.duration * 1e9).round();
        if nanos >= i64::MAX as f64 {
            TimeDelta::MAX
        } else {
            TimeDelta::nanoseconds(nanos as i64)
        }
    }

    /// `timestamp + duration`; saturates at chrono's maximum instead of overflowing.
    pub fn end(&self) -> DateTime<Utc> {
        self.timestamp
            .checked_add_signed(self.duration_delta())
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}

/// Treats JSON `null` like a missing field: both servers are tolerant writers and we must not
/// reject a whole page of events for one null.
/// An event as a range query returns it, for the scan: `data` stays the server's JSON text
/// (checked to be an object, `null` read as `{}`). A catch-up reads every event once and
/// forwards it once; keeping the text means no map is built per event, nothing is copied to
/// build the upload, and the upstream receives exactly the data aw-server served.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct PageEvent {
    #[serde(default)]
    pub id: Option<i64>,
    #[serde(deserialize_with = "rfc3339_utc")]
    pub timestamp: DateTime<Utc>,
    pub duration: f64,
    #[serde(default = "empty_object", deserialize_with = "object_text")]
    pub data: Box<RawValue>,
}

impl PageEvent {
    /// The same event from a parsed one (an event fetched by id, or redacted).
    pub fn from_event(event: Event) -> PageEvent {
        PageEvent {
            id: event.id,
            timestamp: event.timestamp,
            duration: event.duration,
            data: object_to_raw(&event.data),
        }
    }

    /// `data` parsed (for redaction, which edits it).
    pub fn data_map(&self) -> Result<Map<String, Value>, serde_json::Error> {
        serde_json::from_str(self.data.get())
    }
}

/// A map as JSON text. Serializing a `Map<String, Value>` cannot fail.
pub fn object_to_raw(map: &Map<String, Value>) -> Box<RawValue> {
    serde_json::value::to_raw_value(map).unwrap_or_else(|_| empty_object())
}

// Event data as text is the upstream's rule too (`UpEvent::data`): one definition, in the
// wire contract's crate.
pub use samay_api::{empty_object, object_text};

/// A timestamp as chrono reads it, by chrono's strict RFC 3339 parser first: both servers
/// write RFC 3339, and that parser is a fraction of the cost of the lenient one behind
/// `DateTime`'s own `Deserialize` (its generic format machinery was 4 % of a 1M-event
/// catch-up's CPU, perf). What the strict one refuses goes to the lenient one, so what was
/// accepted before still is, to the same instant.
fn rfc3339_utc<'de, D>(deserializer: D) -> Result<DateTime<Utc>, D::Error>
where
    D: Deserializer<'de>,
{
    struct Rfc3339;
    impl serde::de::Visitor<'_> for Rfc3339 {
        type Value = DateTime<Utc>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an RFC 3339 timestamp")
        }

        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<DateTime<Utc>, E> {
            // Both servers' own forms directly; anything else as chrono reads it.
            if let Some(t) = crate::rfc3339::parse_utc(s) {
                return Ok(t);
            }
            match DateTime::parse_from_rfc3339(s) {
                Ok(t) => Ok(t.with_timezone(&Utc)),
                Err(_) => s.parse().map_err(E::custom),
            }
        }
    }
    deserializer.deserialize_str(Rfc3339)
}

fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn both_servers_timestamp_formats_parse_to_the_same_instant() {
        let rust: Event = serde_json::from_slice(
            br#"{"id":1,"timestamp":"2024-01-01T12:00:00.123456000Z","duration":1.5,"data":{}}"#,
        )
        .expect("aw-server-rust format");
        let python: Event = serde_json::from_slice(
            br#"{"id":1,"timestamp":"2024-01-01T12:00:00.123456+00:00","duration":1.5,"data":{}}"#,
        )
        .expect("Python aw-server format");
        let expected = Utc
            .with_ymd_and_hms(2024, 1, 1, 12, 0, 0)
            .single()
            .expect("valid date")
            + TimeDelta::microseconds(123_456);
        assert_eq!(rust.timestamp, expected);
        assert_eq!(python.timestamp, expected);
        assert_eq!(rust, python);
    }

    #[test]
    fn nanoseconds_and_offsets_are_kept_exactly() {
        let ns: Event = serde_json::from_slice(
            br#"{"timestamp":"2024-01-01T12:00:00.123456789Z","duration":0,"data":{}}"#,
        )
        .expect("ns");
        assert_eq!(ns.timestamp.timestamp_subsec_nanos(), 123_456_789);
        assert_eq!(ns.id, None);
        // A non-UTC offset is the same instant, converted.
        let offset: Event = serde_json::from_slice(
            br#"{"timestamp":"2024-01-01T14:00:00.123456789+02:00","duration":0,"data":{}}"#,
        )
        .expect("offset");
        assert_eq!(offset.timestamp, ns.timestamp);
    }

    #[test]
    fn a_page_reads_every_timestamp_chrono_reads_to_the_same_instant() {
        let forms = [
            "2024-01-01T12:00:00.123456789Z",
            "2024-01-01T12:00:00.123456+00:00",
            "2024-01-01T14:00:00+02:00",
            "2024-01-01t12:00:00z",
            // Not RFC 3339, read by chrono's lenient parser only.
            "2024-01-01 12:00:00+0000",
            "2024-01-01T12:00:00.5 +00:00",
        ];
        assert!(
            forms
                .iter()
                .any(|f| DateTime::parse_from_rfc3339(f).is_err()),
            "some form must need the lenient parser"
        );
        for f in forms {
            let body = format!(r#"{{"id":1,"timestamp":"{f}","duration":0,"data":{{}}}}"#);
            let page: PageEvent = serde_json::from_str(&body).expect(f);
            let lenient: DateTime<Utc> = f.parse().expect(f);
            assert_eq!(page.timestamp, lenient, "{f}");
        }
        for bad in ["2024-13-01T12:00:00Z", "yesterday", "2024-01-01T12:00:00"] {
            let body = format!(r#"{{"id":1,"timestamp":"{bad}","duration":0,"data":{{}}}}"#);
            let err = serde_json::from_str::<PageEvent>(&body).expect_err(bad);
            assert!(err.to_string().contains("line 1"), "{err}");
        }
    }

    #[test]
    fn integer_durations_and_null_data_are_accepted() {
        let e: Event = serde_json::from_slice(
            br#"{"id":7,"timestamp":"2024-01-01T12:00:00Z","duration":3600,"data":null}"#,
        )
        .expect("integer duration");
        assert_eq!(e.duration, 3600.0);
        assert!(e.data.is_empty());
        assert_eq!(e.end() - e.timestamp, TimeDelta::hours(1));
    }

    #[test]
    fn end_saturates_on_garbage_durations() {
        let mut e = Event::new(Utc::now(), f64::NAN, Map::new());
        assert_eq!(e.end(), e.timestamp);
        e.duration = -5.0;
        assert_eq!(e.end(), e.timestamp);
        e.duration = 1e300;
        assert_eq!(e.end(), DateTime::<Utc>::MAX_UTC);
    }

    /// Fuzzing found it: serde_json's default float parser may be one bit off, so a number in
    /// event data (or a duration) reached the upstream slightly changed. The crate enables
    /// `float_roundtrip`; these values came back different without it.
    #[test]
    fn floats_survive_a_round_trip_exactly() {
        for x in [
            2.965344885634616e112,
            1.7976931348623157e308,
            5e-324,
            0.1 + 0.2,
        ] {
            let mut data = Map::new();
            data.insert("x".into(), Value::from(x));
            let e = Event::new(Utc::now(), x, data);
            let text = serde_json::to_string(&e).expect("serialize");
            let back: Event = serde_json::from_str(&text).expect("parse");
            assert_eq!(back.duration.to_bits(), x.to_bits(), "{text}");
            assert_eq!(
                back.data["x"].as_f64().map(f64::to_bits),
                Some(x.to_bits()),
                "{text}"
            );
        }
    }

    #[test]
    fn serializing_without_id_omits_it() {
        let e = Event::new(Utc::now(), 1.0, Map::new());
        let v = serde_json::to_value(&e).expect("serialize");
        assert!(v.get("id").is_none());
    }
}
