//! The double's datastore: buckets of events in memory, with aw-server-rust's query semantics.
//!
//! Events are kept the way aw-server-rust keeps them in SQLite: integer nanoseconds for start and
//! end, and `data` as its JSON text. The text lives in one append-only arena per bucket, so an
//! event costs a 32-byte row plus its JSON, and serving it is a copy, not a re-serialisation:
//! that is what makes a million-event catch-up cheap to host in a test process.
//!
//! Rows are sorted so that walking them *backwards* yields aw-server-rust's
//! `ORDER BY starttime DESC, endtime ASC, id ASC`; appends in time order (what watchers and the
//! synthetic generator produce) are a plain push.

use std::cmp::{Ordering, Reverse};
use std::collections::BTreeMap;
use std::io::Write as _;

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde_json::{Map, Value};

use crate::Event;

/// Why a datastore operation was refused; the HTTP layer maps each to aw-server-rust's status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DoubleError {
    /// 404 `The requested bucket '{id}' does not exist`.
    #[error("The requested bucket '{0}' does not exist")]
    BucketNotFound(String),
    /// 304: aw-server-rust leaves the existing bucket untouched.
    #[error("Bucket '{0}' already exists")]
    BucketExists(String),
    /// 404 `The requested event '{id}' does not exist in bucket '{bucket}'`.
    #[error("The requested event '{id}' does not exist in bucket '{bucket}'")]
    EventNotFound { bucket: String, id: i64 },
    /// 400: a negative duration or pulsetime, a time outside 1677–2262, data that is not an
    /// object.
    #[error("{0}")]
    Invalid(String),
    /// The bucket's data arena passed 4 GiB (the row stores 32-bit offsets to stay compact).
    #[error("bucket '{0}' holds more than 4 GiB of event data")]
    Full(String),
    /// 500: the SQLite store failed (aw-server-rust's `InternalError`).
    #[error("Internal error: {0}")]
    Internal(String),
}

/// An event ready for storage: what the synthetic generator produces and what the HTTP layer
/// parses POSTed JSON into. `data` must be a JSON object's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEvent {
    /// Nanoseconds since the Unix epoch.
    pub timestamp_ns: i64,
    /// Nanoseconds; never negative.
    pub duration_ns: i64,
    pub data: String,
}

impl RawEvent {
    /// Converts a client-side event the way aw-server-rust deserialises one: the float duration
    /// is rounded to the nearest nanosecond (aw-server-rust #745) and data is serialised with
    /// sorted keys (serde_json without `preserve_order`, like aw-server-rust).
    pub fn from_event(event: &Event) -> Result<RawEvent, DoubleError> {
        let timestamp_ns = event.timestamp.timestamp_nanos_opt().ok_or_else(|| {
            DoubleError::Invalid(format!(
                "timestamp {} is outside the supported range (1677-2262)",
                event.timestamp
            ))
        })?;
        let duration_ns = seconds_to_nanos(event.duration)?;
        let data = serde_json::to_string(&event.data)
            .map_err(|e| DoubleError::Invalid(format!("unserialisable data: {e}")))?;
        Ok(RawEvent {
            timestamp_ns,
            duration_ns,
            data,
        })
    }
}

/// Float seconds to integer nanoseconds, rounded, refusing what aw-server-rust refuses
/// (negative) and what it cannot store (NaN, beyond i64).
pub fn seconds_to_nanos(seconds: f64) -> Result<i64, DoubleError> {
    if !seconds.is_finite() {
        return Err(DoubleError::Invalid(format!(
            "Invalid event: duration must be finite, got {seconds}"
        )));
    }
    if seconds < 0.0 {
        return Err(DoubleError::Invalid(format!(
            "Invalid event: duration must be non-negative, got {seconds}s"
        )));
    }
    let nanos = (seconds * 1e9).round();
    if nanos >= i64::MAX as f64 {
        return Err(DoubleError::Invalid(format!(
            "Invalid event: duration {seconds}s is too large"
        )));
    }
    Ok(nanos as i64)
}

/// Bucket metadata as created (`POST /api/0/buckets/{id}`).
#[derive(Debug, Clone, PartialEq)]
pub struct BucketInfo {
    pub id: String,
    pub bucket_type: String,
    pub client: String,
    pub hostname: String,
    pub created: DateTime<Utc>,
    pub data: Map<String, Value>,
}

/// One stored event: 32 bytes plus its data text in the bucket's arena.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Row {
    id: i64,
    start: i64,
    end: i64,
    off: u32,
    len: u32,
}

impl Row {
    /// Ascending storage order; iterated in reverse it is aw-server-rust's
    /// `starttime DESC, endtime ASC, id ASC`.
    fn key(&self) -> (i64, Reverse<i64>, Reverse<i64>) {
        (self.start, Reverse(self.end), Reverse(self.id))
    }
}

#[derive(Debug)]
struct BucketStore {
    info: BucketInfo,
    rows: Vec<Row>,
    arena: String,
    /// The longest event ever stored here: how far before a query's start the backward scan
    /// must look. Never shrinks (a looser bound is still correct).
    max_duration: i64,
    /// aw-server-rust's per-bucket heartbeat cache: the event a heartbeat merges with, instead
    /// of the newest one, until an insert or delete invalidates it.
    last_heartbeat: Option<i64>,
}

/// An event as read from the store, clipped or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventRef<'a> {
    pub id: i64,
    pub start: i64,
    pub end: i64,
    pub data: &'a str,
}

impl EventRef<'_> {
    /// As the client model; a data text that does not parse (only possible through
    /// [`MemDb::insert_raw`] with bad input) reads as empty.
    pub fn to_event(&self) -> Event {
        Event {
            id: Some(self.id),
            timestamp: datetime_from_nanos(self.start),
            duration: (self.end - self.start) as f64 / 1e9,
            data: serde_json::from_str(self.data).unwrap_or_default(),
        }
    }
}

/// An event read by id: owned, so every store can hand it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub id: i64,
    pub start: i64,
    pub end: i64,
    pub data: String,
}

impl StoredEvent {
    pub fn as_ref(&self) -> EventRef<'_> {
        EventRef {
            id: self.id,
            start: self.start,
            end: self.end,
            data: &self.data,
        }
    }

    pub fn to_event(&self) -> Event {
        self.as_ref().to_event()
    }
}

/// A heartbeat's `pulsetime` in nanoseconds; negative or NaN is refused as aw-server-rust does.
pub fn pulse_nanos(pulsetime: f64) -> Result<i64, DoubleError> {
    if pulsetime.is_nan() || pulsetime < 0.0 {
        return Err(DoubleError::Invalid(format!(
            "Invalid pulsetime: must be non-negative, got {pulsetime}"
        )));
    }
    Ok((pulsetime * 1e9).round().min(i64::MAX as f64) as i64)
}

/// What a heartbeat did.
#[derive(Debug, Clone, PartialEq)]
pub enum HeartbeatOutcome {
    /// Merged into event `id`, which now spans the returned event.
    Merged(Event),
    /// Inserted as a new event.
    Inserted(Event),
}

impl HeartbeatOutcome {
    pub fn event(&self) -> &Event {
        match self {
            HeartbeatOutcome::Merged(e) | HeartbeatOutcome::Inserted(e) => e,
        }
    }
}

/// All buckets and the one id counter they share (SQLite AUTOINCREMENT over one table).
#[derive(Debug)]
pub struct MemDb {
    buckets: BTreeMap<String, BucketStore>,
    next_id: i64,
}

impl Default for MemDb {
    fn default() -> Self {
        MemDb {
            buckets: BTreeMap::new(),
            next_id: 1,
        }
    }
}

impl MemDb {
    pub fn create_bucket(&mut self, info: BucketInfo) -> Result<(), DoubleError> {
        if self.buckets.contains_key(&info.id) {
            return Err(DoubleError::BucketExists(info.id));
        }
        self.buckets.insert(
            info.id.clone(),
            BucketStore {
                info,
                rows: Vec::new(),
                arena: String::new(),
                max_duration: 0,
                last_heartbeat: None,
            },
        );
        Ok(())
    }

    pub fn delete_bucket(&mut self, bucket: &str) -> Result<(), DoubleError> {
        self.buckets
            .remove(bucket)
            .map(|_| ())
            .ok_or_else(|| DoubleError::BucketNotFound(bucket.to_owned()))
    }

    /// Forgets every bucket's heartbeat cache, as an aw-server restart does (it is process
    /// memory there).
    pub fn forget_heartbeats(&mut self) {
        for b in self.buckets.values_mut() {
            b.last_heartbeat = None;
        }
    }

    pub fn bucket_ids(&self) -> impl Iterator<Item = &str> {
        self.buckets.keys().map(String::as_str)
    }

    pub fn bucket_info(&self, bucket: &str) -> Result<&BucketInfo, DoubleError> {
        Ok(&self.bucket(bucket)?.info)
    }

    /// `(min start, max end)` over the bucket's events: aw-server-rust's `metadata`.
    pub fn bucket_span(&self, bucket: &str) -> Result<Option<(i64, i64)>, DoubleError> {
        let b = self.bucket(bucket)?;
        let first = b.rows.first().map(|r| r.start);
        let last_end = b.rows.iter().map(|r| r.end).max();
        Ok(first.zip(last_end))
    }

    /// The end of the newest event (by start time): what Python aw-server reports as
    /// `last_updated`.
    pub fn last_updated(&self, bucket: &str) -> Result<Option<i64>, DoubleError> {
        let b = self.bucket(bucket)?;
        Ok(b.rows.last().map(|r| r.end))
    }

    /// Inserts events in order, each with the next id (or, when `id` is given, replacing that
    /// row wherever it is, as aw-server-rust's `INSERT OR REPLACE` does). Returns the ids.
    pub fn insert(
        &mut self,
        bucket: &str,
        events: impl IntoIterator<Item = (Option<i64>, RawEvent)>,
    ) -> Result<Vec<i64>, DoubleError> {
        self.bucket(bucket)?;
        let mut ids = Vec::new();
        for (id, raw) in events {
            ids.push(self.insert_one(bucket, id, raw)?);
        }
        if let Some(b) = self.buckets.get_mut(bucket) {
            b.last_heartbeat = None;
        }
        Ok(ids)
    }

    /// [`MemDb::insert`] without ids: the fast path for bulk loads.
    pub fn insert_raw(
        &mut self,
        bucket: &str,
        events: impl IntoIterator<Item = RawEvent>,
    ) -> Result<Vec<i64>, DoubleError> {
        self.insert(bucket, events.into_iter().map(|e| (None, e)))
    }

    fn insert_one(
        &mut self,
        bucket: &str,
        id: Option<i64>,
        raw: RawEvent,
    ) -> Result<i64, DoubleError> {
        if raw.duration_ns < 0 {
            return Err(DoubleError::Invalid(format!(
                "Invalid event: duration must be non-negative, got {}s",
                raw.duration_ns as f64 / 1e9
            )));
        }
        let end = raw
            .timestamp_ns
            .checked_add(raw.duration_ns)
            .ok_or_else(|| {
                DoubleError::Invalid("event ends after 2262 (not storable)".to_string())
            })?;
        let id = match id {
            Some(id) => {
                // INSERT OR REPLACE: the row with that id goes, whichever bucket holds it.
                for b in self.buckets.values_mut() {
                    if let Some(i) = b.rows.iter().rposition(|r| r.id == id) {
                        b.rows.remove(i);
                    }
                }
                self.next_id = self.next_id.max(id.saturating_add(1));
                id
            }
            None => {
                let id = self.next_id;
                self.next_id += 1;
                id
            }
        };
        let b = self
            .buckets
            .get_mut(bucket)
            .ok_or_else(|| DoubleError::BucketNotFound(bucket.to_owned()))?;
        let off = u32::try_from(b.arena.len()).ok();
        let len = u32::try_from(raw.data.len()).ok();
        let (Some(off), Some(len)) = (off, len) else {
            return Err(DoubleError::Full(bucket.to_owned()));
        };
        if off.checked_add(len).is_none() {
            return Err(DoubleError::Full(bucket.to_owned()));
        }
        b.arena.push_str(&raw.data);
        let row = Row {
            id,
            start: raw.timestamp_ns,
            end,
            off,
            len,
        };
        b.place(row);
        Ok(id)
    }

    /// Deletes one event. A missing id is not an error (aw-server-rust runs a `DELETE` that
    /// matches nothing); a missing bucket is.
    pub fn delete_event(&mut self, bucket: &str, id: i64) -> Result<bool, DoubleError> {
        let b = self.bucket_mut(bucket)?;
        // aw-server-rust keeps its heartbeat cache here (and then fails the next merge with
        // an internal error); the double forgets it, see the module docs.
        b.last_heartbeat = None;
        match b.rows.iter().rposition(|r| r.id == id) {
            Some(i) => {
                b.rows.remove(i);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// One event by id, unclipped.
    pub fn get_event(&self, bucket: &str, id: i64) -> Result<StoredEvent, DoubleError> {
        let b = self.bucket(bucket)?;
        b.rows
            .iter()
            .rev()
            .find(|r| r.id == id)
            .map(|r| {
                let e = b.event_ref(r);
                StoredEvent {
                    id: e.id,
                    start: e.start,
                    end: e.end,
                    data: e.data.to_owned(),
                }
            })
            .ok_or_else(|| DoubleError::EventNotFound {
                bucket: bucket.to_owned(),
                id,
            })
    }

    /// aw-server-rust's `get_events`: every event whose `[start, end]` overlaps the range
    /// (`endtime >= start AND starttime <= end`, both inclusive), clipped to it, newest first,
    /// at most `limit`. No bound means 0 (the epoch) and `i64::MAX` ns, as there.
    pub fn query(
        &self,
        bucket: &str,
        start: Option<i64>,
        end: Option<i64>,
        limit: Option<u64>,
        mut emit: impl FnMut(EventRef<'_>),
    ) -> Result<usize, DoubleError> {
        let b = self.bucket(bucket)?;
        let lo = start.unwrap_or(0);
        let hi = end.unwrap_or(i64::MAX);
        let mut n = 0usize;
        if lo > hi {
            return Ok(0);
        }
        let limit = limit.map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
        // Rows before `top` start at or before the range's end.
        let top = b.rows.partition_point(|r| r.start <= hi);
        // A row starting before this cannot reach `lo`, however long it is.
        let floor = lo.saturating_sub(b.max_duration);
        for r in b.rows[..top].iter().rev() {
            if n >= limit || r.start < floor {
                break;
            }
            if r.end < lo {
                continue;
            }
            let mut e = b.event_ref(r);
            e.start = e.start.max(lo);
            e.end = e.end.min(hi);
            emit(e);
            n += 1;
        }
        Ok(n)
    }

    /// `GET .../events/count` with the same filter as [`MemDb::query`].
    pub fn count(
        &self,
        bucket: &str,
        start: Option<i64>,
        end: Option<i64>,
    ) -> Result<usize, DoubleError> {
        self.query(bucket, start, end, None, |_| {})
    }

    /// The query API's `sum_durations(query_bucket(bucket))` per timeperiod `(start, end)`:
    /// the clipped durations of the events overlapping each, in float seconds.
    pub fn sum_durations(
        &self,
        bucket: &str,
        periods: &[(i64, i64)],
    ) -> Result<Vec<f64>, DoubleError> {
        periods
            .iter()
            .map(|&(s, e)| {
                let mut total: i64 = 0;
                self.query(bucket, Some(s), Some(e), None, |ev| {
                    total = total.saturating_add(ev.end - ev.start)
                })?;
                Ok(total as f64 / 1e9)
            })
            .collect()
    }

    /// Every event of the bucket, newest first, unclipped.
    pub fn events(&self, bucket: &str) -> Result<Vec<Event>, DoubleError> {
        let b = self.bucket(bucket)?;
        Ok(b.rows
            .iter()
            .rev()
            .map(|r| b.event_ref(r).to_event())
            .collect())
    }

    pub fn len(&self, bucket: &str) -> Result<usize, DoubleError> {
        Ok(self.bucket(bucket)?.rows.len())
    }

    /// aw-server-rust's heartbeat: merge with the last event (the cached last heartbeat, else
    /// the newest) when the data is equal, the heartbeat starts no earlier than it and no later
    /// than its end + `pulsetime`; the merged event keeps the last event's id, start and data and
    /// ends at the later of both ends. Otherwise the heartbeat is inserted as a new event.
    pub fn heartbeat(
        &mut self,
        bucket: &str,
        heartbeat: RawEvent,
        pulsetime: f64,
    ) -> Result<HeartbeatOutcome, DoubleError> {
        let pulse_ns = pulse_nanos(pulsetime)?;
        let hb_end = heartbeat
            .timestamp_ns
            .checked_add(heartbeat.duration_ns)
            .filter(|_| heartbeat.duration_ns >= 0)
            .ok_or_else(|| DoubleError::Invalid("Invalid heartbeat duration".to_string()))?;
        let b = self.bucket_mut(bucket)?;
        let last = match b.last_heartbeat {
            Some(id) => b
                .rows
                .iter()
                .rposition(|r| r.id == id)
                .or_else(|| b.rows.len().checked_sub(1)),
            None => b.rows.len().checked_sub(1),
        };
        if let Some(i) = last {
            let row = b.rows[i];
            let same_data = {
                let stored = &b.arena[row.off as usize..(row.off + row.len) as usize];
                stored == heartbeat.data || same_json(stored, &heartbeat.data)
            };
            let allowed_until = row.end.saturating_add(pulse_ns);
            if same_data
                && row.start <= heartbeat.timestamp_ns
                && heartbeat.timestamp_ns <= allowed_until
            {
                let merged = Row {
                    end: row.end.max(hb_end),
                    ..row
                };
                b.rows.remove(i);
                b.place(merged);
                b.last_heartbeat = Some(merged.id);
                let event = b.event_ref(&merged).to_event();
                return Ok(HeartbeatOutcome::Merged(event));
            }
        }
        let id = self.insert_one(bucket, None, heartbeat)?;
        let b = self.bucket_mut(bucket)?;
        b.last_heartbeat = Some(id);
        let event = self.get_event(bucket, id)?.to_event();
        Ok(HeartbeatOutcome::Inserted(event))
    }

    /// Serialises the query result as aw-server-rust's JSON array, straight from the stored
    /// text.
    pub fn query_json(
        &self,
        bucket: &str,
        start: Option<i64>,
        end: Option<i64>,
        limit: Option<u64>,
    ) -> Result<Vec<u8>, DoubleError> {
        let b = self.bucket(bucket)?;
        // ~90 bytes of framing per event on top of its data.
        let mut out =
            Vec::with_capacity(b.arena.len().min(1 << 30) + 100 * b.rows.len().min(1 << 22));
        out.push(b'[');
        let mut first = true;
        self.query(bucket, start, end, limit, |e| {
            if !first {
                out.push(b',');
            }
            first = false;
            write_event_json(&mut out, &e);
        })?;
        out.push(b']');
        Ok(out)
    }

    fn bucket(&self, bucket: &str) -> Result<&BucketStore, DoubleError> {
        self.buckets
            .get(bucket)
            .ok_or_else(|| DoubleError::BucketNotFound(bucket.to_owned()))
    }

    fn bucket_mut(&mut self, bucket: &str) -> Result<&mut BucketStore, DoubleError> {
        self.buckets
            .get_mut(bucket)
            .ok_or_else(|| DoubleError::BucketNotFound(bucket.to_owned()))
    }
}

impl BucketStore {
    fn event_ref<'a>(&'a self, r: &Row) -> EventRef<'a> {
        EventRef {
            id: r.id,
            start: r.start,
            end: r.end,
            data: &self.arena[r.off as usize..(r.off + r.len) as usize],
        }
    }

    /// Puts a row at its sorted place: a push when it is the newest, as it nearly always is.
    fn place(&mut self, row: Row) {
        self.max_duration = self.max_duration.max(row.end - row.start);
        let key = row.key();
        match self.rows.last() {
            Some(last) if last.key() > key => {
                let i = self
                    .rows
                    .partition_point(|r| r.key().cmp(&key) == Ordering::Less);
                self.rows.insert(i, row);
            }
            _ => self.rows.push(row),
        }
    }
}

/// Data equality as aw-server-rust decides it (`serde_json::Map` ==), for texts that differ.
pub(super) fn same_json(a: &str, b: &str) -> bool {
    match (
        serde_json::from_str::<Map<String, Value>>(a),
        serde_json::from_str::<Map<String, Value>>(b),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

pub fn datetime_from_nanos(ns: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_nanos(ns)
}

/// `{"id":..,"timestamp":..,"duration":..,"data":..}`, aw-server-rust's field order.
pub fn write_event_json(out: &mut Vec<u8>, e: &EventRef<'_>) {
    out.extend_from_slice(b"{\"id\":");
    out.extend_from_slice(itoa_i64(e.id).as_bytes());
    out.extend_from_slice(b",\"timestamp\":\"");
    write_timestamp(out, e.start);
    out.extend_from_slice(b"\",\"duration\":");
    write_seconds(out, e.end - e.start);
    out.extend_from_slice(b",\"data\":");
    out.extend_from_slice(e.data.as_bytes());
    out.push(b'}');
}

fn itoa_i64(v: i64) -> String {
    v.to_string()
}

/// Nanoseconds as aw-server-rust prints a duration: `ns as f64 / 1e9` through serde_json
/// (shortest round-trip float, always with a fraction: `3.0`).
pub fn write_seconds(out: &mut Vec<u8>, ns: i64) {
    let secs = ns as f64 / 1e9;
    // Writing a finite f64 into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, &secs);
}

/// A UTC instant as chrono's serde prints it (and so aw-server-rust): RFC 3339 with `Z` and
/// the shortest of no fraction, milli-, micro- or nanoseconds that is exact.
pub fn write_timestamp(out: &mut Vec<u8>, ns: i64) {
    let t = datetime_from_nanos(ns);
    let year = t.year();
    if !(0..=9999).contains(&year) {
        // Not reachable for i64 nanoseconds (1677–2262), kept for safety.
        let _ = serde_json::to_writer(&mut *out, &t);
        return;
    }
    let nanos = t.nanosecond();
    let mut buf = [0u8; 30];
    let digits = |buf: &mut [u8], mut v: u32| {
        for slot in buf.iter_mut().rev() {
            *slot = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    digits(&mut buf[0..4], year as u32);
    buf[4] = b'-';
    digits(&mut buf[5..7], t.month());
    buf[7] = b'-';
    digits(&mut buf[8..10], t.day());
    buf[10] = b'T';
    digits(&mut buf[11..13], t.hour());
    buf[13] = b':';
    digits(&mut buf[14..16], t.minute());
    buf[16] = b':';
    digits(&mut buf[17..19], t.second());
    let mut n = 19;
    if nanos != 0 {
        buf[19] = b'.';
        let (value, width) = if nanos % 1_000_000 == 0 {
            (nanos / 1_000_000, 3)
        } else if nanos % 1_000 == 0 {
            (nanos / 1_000, 6)
        } else {
            (nanos, 9)
        };
        digits(&mut buf[20..20 + width], value);
        n = 20 + width;
    }
    buf[n] = b'Z';
    let _ = out.write_all(&buf[..=n]);
}

/// [`write_timestamp`] as a `String`.
pub fn format_timestamp(ns: i64) -> String {
    let mut out = Vec::with_capacity(32);
    write_timestamp(&mut out, ns);
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;
    /// 2024-01-01T00:00:00Z
    const T0: i64 = 1_704_067_200 * S;

    fn info(id: &str) -> BucketInfo {
        BucketInfo {
            id: id.into(),
            bucket_type: "test".into(),
            client: "test".into(),
            hostname: "h".into(),
            created: Utc::now(),
            data: Map::new(),
        }
    }

    fn raw(start: i64, dur: i64, data: &str) -> RawEvent {
        RawEvent {
            timestamp_ns: start,
            duration_ns: dur,
            data: data.into(),
        }
    }

    fn db_with(events: &[(i64, i64)]) -> MemDb {
        let mut db = MemDb::default();
        db.create_bucket(info("b")).unwrap();
        db.insert_raw(
            "b",
            events
                .iter()
                .enumerate()
                .map(|(i, &(s, d))| raw(T0 + s, d, &format!("{{\"i\":{i}}}"))),
        )
        .unwrap();
        db
    }

    fn q(
        db: &MemDb,
        start: Option<i64>,
        end: Option<i64>,
        limit: Option<u64>,
    ) -> Vec<(i64, i64, i64)> {
        let mut out = Vec::new();
        db.query(
            "b",
            start.map(|s| T0 + s),
            end.map(|e| T0 + e),
            limit,
            |e| out.push((e.id, e.start - T0, e.end - T0)),
        )
        .unwrap();
        out
    }

    #[test]
    fn overlap_is_inclusive_at_both_ends_and_clips() {
        // ids 1..=5: ends before, touches start, straddles start, inside, straddles end,
        // touches end, starts after.
        let db = db_with(&[
            (0, 9 * S),       // 1: [0, 9] ends before 10
            (0, 10 * S),      // 2: [0, 10] touches start
            (5 * S, 10 * S),  // 3: [5, 15] straddles start
            (12 * S, 2 * S),  // 4: inside
            (18 * S, 10 * S), // 5: [18, 28] straddles end
            (20 * S, 0),      // 6: starts exactly at end
            (21 * S, S),      // 7: after
        ]);
        let got = q(&db, Some(10 * S), Some(20 * S), None);
        assert_eq!(
            got,
            vec![
                (6, 20 * S, 20 * S),
                (5, 18 * S, 20 * S),
                (4, 12 * S, 14 * S),
                (3, 10 * S, 15 * S),
                (2, 10 * S, 10 * S),
            ]
        );
    }

    #[test]
    fn a_very_long_event_is_found_far_before_the_range() {
        // No 24 h pre-filter: a 30-day event that started long before the range is returned.
        let db = db_with(&[(0, 30 * 86_400 * S), (40 * 86_400 * S, S)]);
        let got = q(&db, Some(20 * 86_400 * S), Some(21 * 86_400 * S), None);
        assert_eq!(got, vec![(1, 20 * 86_400 * S, 21 * 86_400 * S)]);
    }

    #[test]
    fn order_is_start_desc_then_end_asc_then_id_asc_and_limit_takes_the_first() {
        let db = db_with(&[(5 * S, 3 * S), (5 * S, S), (5 * S, S), (9 * S, 0), (0, S)]);
        assert_eq!(
            q(&db, None, None, None)
                .iter()
                .map(|e| e.0)
                .collect::<Vec<_>>(),
            vec![4, 2, 3, 1, 5]
        );
        assert_eq!(
            q(&db, None, None, Some(2))
                .iter()
                .map(|e| e.0)
                .collect::<Vec<_>>(),
            vec![4, 2]
        );
        assert!(q(&db, None, None, Some(0)).is_empty());
    }

    #[test]
    fn backdated_inserts_land_in_order_and_start_after_end_is_empty() {
        let mut db = db_with(&[(10 * S, S), (20 * S, S)]);
        db.insert_raw("b", [raw(T0 + 15 * S, S, "{}")]).unwrap();
        assert_eq!(
            q(&db, None, None, None)
                .iter()
                .map(|e| e.0)
                .collect::<Vec<_>>(),
            vec![2, 3, 1]
        );
        assert!(q(&db, Some(20 * S), Some(10 * S), None).is_empty());
        assert_eq!(
            db.count("b", Some(T0 + 14 * S), Some(T0 + 16 * S)).unwrap(),
            1
        );
        assert_eq!(db.count("b", None, None).unwrap(), 3);
    }

    #[test]
    fn ids_are_one_counter_across_buckets_and_an_explicit_id_replaces_anywhere() {
        let mut db = db_with(&[(0, S)]);
        db.create_bucket(info("c")).unwrap();
        assert_eq!(db.insert_raw("c", [raw(T0, S, "{}")]).unwrap(), vec![2]);
        assert_eq!(db.insert_raw("b", [raw(T0, S, "{}")]).unwrap(), vec![3]);
        // Replacing id 1 (in b) from c moves it.
        db.insert("c", [(Some(1), raw(T0 + S, S, "{\"moved\":true}"))])
            .unwrap();
        assert!(db.get_event("b", 1).is_err());
        assert_eq!(db.get_event("c", 1).unwrap().data, "{\"moved\":true}");
        assert_eq!(db.insert_raw("b", [raw(T0, S, "{}")]).unwrap(), vec![4]);
        db.insert("b", [(Some(10), raw(T0, S, "{}"))]).unwrap();
        assert_eq!(db.insert_raw("b", [raw(T0, S, "{}")]).unwrap(), vec![11]);
    }

    #[test]
    fn heartbeat_merges_within_pulsetime_with_equal_data_only() {
        let mut db = db_with(&[]);
        let a = "{\"app\":\"x\"}";
        let first = db.heartbeat("b", raw(T0, 0, a), 10.0).unwrap();
        assert!(matches!(first, HeartbeatOutcome::Inserted(_)));
        // 5 s later: within end + pulsetime → merged, same id, duration 5 s.
        let m = db.heartbeat("b", raw(T0 + 5 * S, 0, a), 10.0).unwrap();
        match &m {
            HeartbeatOutcome::Merged(e) => {
                assert_eq!(e.id, Some(1));
                assert_eq!(e.duration, 5.0);
            }
            other => panic!("expected merge, got {other:?}"),
        }
        // Exactly at end + pulsetime still merges (inclusive).
        let m = db.heartbeat("b", raw(T0 + 15 * S, 0, a), 10.0).unwrap();
        assert!(matches!(m, HeartbeatOutcome::Merged(ref e) if e.duration == 15.0));
        // Beyond → new event.
        let n = db.heartbeat("b", raw(T0 + 25 * S + 1, 0, a), 10.0).unwrap();
        assert!(matches!(n, HeartbeatOutcome::Inserted(ref e) if e.id == Some(2)));
        // Different data → new event, even at the same instant.
        let d = db
            .heartbeat("b", raw(T0 + 25 * S + 1, 0, "{\"app\":\"y\"}"), 10.0)
            .unwrap();
        assert!(matches!(d, HeartbeatOutcome::Inserted(ref e) if e.id == Some(3)));
        // Equal data formatted differently still merges (compared as JSON).
        let k = db
            .heartbeat("b", raw(T0 + 26 * S, 0, "{ \"app\" : \"y\" }"), 10.0)
            .unwrap();
        assert!(matches!(k, HeartbeatOutcome::Merged(ref e) if e.id == Some(3)));
        // A heartbeat with a duration extends to its own end.
        let e = db.heartbeat("b", raw(T0 + 27 * S, 3 * S, "{\"app\":\"y\"}"), 1.0);
        assert!(
            matches!(e, Ok(HeartbeatOutcome::Merged(ref e)) if e.duration == (30 * S - 25 * S - 1) as f64 / 1e9)
        );
        assert!(db.heartbeat("b", raw(T0, 0, a), -1.0).is_err());
    }

    #[test]
    fn an_older_heartbeat_is_inserted_and_becomes_the_merge_target() {
        let mut db = db_with(&[]);
        let a = "{\"s\":1}";
        db.heartbeat("b", raw(T0 + 100 * S, 0, a), 60.0).unwrap();
        // Back-dated: starts before the last event → inserted.
        let old = db.heartbeat("b", raw(T0 + 50 * S, 0, a), 60.0).unwrap();
        assert!(matches!(old, HeartbeatOutcome::Inserted(ref e) if e.id == Some(2)));
        // aw-server-rust's cache: the next heartbeat merges with that back-dated one, not with
        // the newest event.
        let next = db.heartbeat("b", raw(T0 + 51 * S, 0, a), 60.0).unwrap();
        assert!(
            matches!(next, HeartbeatOutcome::Merged(ref e) if e.id == Some(2) && e.duration == 1.0)
        );
        // An insert invalidates the cache: the newest event (id 1) is the target again.
        db.insert_raw("b", [raw(T0, S, "{}")]).unwrap();
        let after = db.heartbeat("b", raw(T0 + 101 * S, 0, a), 60.0).unwrap();
        assert!(matches!(after, HeartbeatOutcome::Merged(ref e) if e.id == Some(1)));
    }

    #[test]
    fn deleting_the_last_event_makes_the_previous_one_the_heartbeat_target() {
        let mut db = db_with(&[]);
        let a = "{\"s\":1}";
        db.heartbeat("b", raw(T0, 0, a), 60.0).unwrap();
        db.heartbeat("b", raw(T0 + 200 * S, 0, a), 60.0).unwrap();
        assert!(db.delete_event("b", 2).unwrap());
        assert!(!db.delete_event("b", 2).unwrap());
        let m = db.heartbeat("b", raw(T0 + 30 * S, 0, a), 60.0).unwrap();
        assert!(matches!(m, HeartbeatOutcome::Merged(ref e) if e.id == Some(1)));
        assert_eq!(
            db.delete_event("x", 1),
            Err(DoubleError::BucketNotFound("x".into()))
        );
    }

    #[test]
    fn timestamps_print_like_chrono_serde() {
        let cases = [
            T0,
            T0 + 123_000_000,
            T0 + 123_456_000,
            T0 + 123_456_789,
            T0 + 1,
            -S - 1,
            0,
            i64::MAX,
            i64::MIN,
        ];
        for ns in cases {
            let chrono = serde_json::to_string(&datetime_from_nanos(ns)).unwrap();
            assert_eq!(format!("\"{}\"", format_timestamp(ns)), chrono, "{ns}");
        }
    }

    #[test]
    fn events_serialise_in_aw_server_rust_shape() {
        let mut out = Vec::new();
        write_event_json(
            &mut out,
            &EventRef {
                id: 7,
                start: T0 + 500_000_000,
                end: T0 + 3 * S + 500_000_000,
                data: "{\"a\":1}",
            },
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"id":7,"timestamp":"2024-01-01T00:00:00.500Z","duration":3.0,"data":{"a":1}}"#
        );
        let db = db_with(&[(0, 1_500_000_000)]);
        let json: Vec<Event> =
            serde_json::from_slice(&db.query_json("b", None, None, None).unwrap()).unwrap();
        assert_eq!(json, db.events("b").unwrap());
        assert_eq!(json[0].duration, 1.5);
    }

    #[test]
    fn durations_round_to_the_nearest_nanosecond() {
        assert_eq!(seconds_to_nanos(515.968).unwrap(), 515_968_000_000);
        assert!(seconds_to_nanos(-0.5).is_err());
        assert!(seconds_to_nanos(f64::NAN).is_err());
    }
}
