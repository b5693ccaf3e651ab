//! A batch request's body: read within the size cap (on the wire and after gzip), parsed
//! leniently, and checked event by event so a bad event is named by index (`rejected`).

use std::collections::BTreeMap;
use std::io::Read;
use std::pin::Pin;

use axum::body::Body;
use axum::http::StatusCode;
use hyper::body::Body as _;
use serde::Deserialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use super::store::IncomingBatch;
use samay_api::{BucketMeta, Deletion, UpEvent};

pub(crate) enum ReadError {
    TooLarge,
    Broken(String),
}

/// Reads the body, refusing more than `limit` bytes without buffering them.
pub(crate) async fn read_limited(mut body: Body, limit: u64) -> Result<Vec<u8>, ReadError> {
    let mut out = Vec::new();
    loop {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        match frame {
            None => return Ok(out),
            Some(Err(e)) => return Err(ReadError::Broken(e.to_string())),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if (out.len() + data.len()) as u64 > limit {
                        return Err(ReadError::TooLarge);
                    }
                    out.extend_from_slice(&data);
                }
            }
        }
    }
}

/// Decompresses at most `limit` bytes, so a gzip bomb costs us `limit`, not memory exhaustion.
pub(crate) fn gunzip_limited(wire: &[u8], limit: u64) -> Result<Vec<u8>, ReadError> {
    let mut out = Vec::new();
    let decoder = flate2::read::GzDecoder::new(wire);
    decoder
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| ReadError::Broken(format!("bad gzip body: {e}")))?;
    if out.len() as u64 > limit {
        return Err(ReadError::TooLarge);
    }
    Ok(out)
}

/// The batch envelope, parsed leniently: buckets and events stay JSON text until checked one by
/// one, so one malformed event is named by index instead of failing the whole body. Raw text,
/// not `Value`: building a tree of every event and then converting it cost more server CPU
/// than parsing each event once from its text.
#[derive(Deserialize)]
pub(crate) struct Envelope {
    pub batch_id: Uuid,
    device_id: Uuid,
    #[serde(default)]
    hostname: String,
    #[serde(default)]
    buckets: BTreeMap<String, Box<RawValue>>,
    pub events: Vec<Box<RawValue>>,
    #[serde(default)]
    deletions: Vec<Deletion>,
}

/// Why some events of a batch are refused; the batch is stored not at all.
pub(crate) struct Rejection {
    pub status: StatusCode,
    pub message: String,
    pub rejected: Vec<usize>,
}

/// Checks every event; invalid ones make a 400, otherwise "poison" ones (fault settings) a 422.
/// Both lists are reported together so a client can isolate every bad event in one round.
pub(crate) fn validate(
    envelope: Envelope,
    is_poison: impl Fn(&UpEvent) -> bool,
) -> Result<IncomingBatch, Rejection> {
    let mut buckets = BTreeMap::new();
    let mut bad_buckets = BTreeMap::new();
    for (id, meta) in envelope.buckets {
        match serde_json::from_str::<BucketMeta>(meta.get()) {
            Ok(meta) => {
                buckets.insert(id, meta);
            }
            Err(e) => {
                bad_buckets.insert(id, e.to_string());
            }
        }
    }
    let mut events = Vec::with_capacity(envelope.events.len());
    let mut invalid: Vec<(usize, String)> = Vec::new();
    let mut poisoned = Vec::new();
    for (i, raw) in envelope.events.into_iter().enumerate() {
        let event = match serde_json::from_str::<UpEvent>(raw.get()) {
            Ok(event) => event,
            Err(e) => {
                invalid.push((i, format!("not an event: {e}")));
                continue;
            }
        };
        let problem = if event.bucket_id.trim().is_empty() {
            Some("empty bucket_id".to_string())
        } else if let Some(e) = bad_buckets.get(&event.bucket_id) {
            Some(format!(
                "bad metadata for bucket {:?}: {e}",
                event.bucket_id
            ))
        } else if !buckets.contains_key(&event.bucket_id) {
            Some(format!("bucket {:?} missing from buckets", event.bucket_id))
        } else if chrono::DateTime::parse_from_rfc3339(&event.timestamp).is_err() {
            Some(format!("unparsable timestamp {:?}", event.timestamp))
        } else if !event.duration.is_finite() || event.duration < 0.0 {
            Some(format!("bad duration {}", event.duration))
        } else if event.hash.is_empty() {
            Some("empty hash".to_string())
        } else {
            None
        };
        if let Some(problem) = problem {
            invalid.push((i, problem));
        } else if is_poison(&event) {
            poisoned.push(i);
        }
        events.push(event);
    }
    if let Some((first, why)) = invalid.first() {
        let mut rejected: Vec<usize> = invalid.iter().map(|(i, _)| *i).chain(poisoned).collect();
        rejected.sort_unstable();
        return Err(Rejection {
            status: StatusCode::BAD_REQUEST,
            message: format!(
                "{} invalid event(s); first: event {first}: {why}",
                invalid.len()
            ),
            rejected,
        });
    }
    if !poisoned.is_empty() {
        return Err(Rejection {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: format!(
                "{} event(s) refused by the reject_* fault settings",
                poisoned.len()
            ),
            rejected: poisoned,
        });
    }
    Ok(IncomingBatch {
        batch_id: envelope.batch_id,
        device_id: envelope.device_id,
        hostname: envelope.hostname,
        buckets,
        events,
        deletions: envelope.deletions,
    })
}
