//! Whether the upstream received exactly what the source holds: read back after the clock
//! stops.

use std::collections::HashMap;

use anyhow::{bail, ensure, Context};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use aw_sync_samay::source::Event;

use super::servers::http;
use super::upstream::AckUpstream;

/// Every source event arrived exactly once, with its timestamp and duration within 1 µs and its
/// data equal.
pub async fn verify(
    port: u16,
    buckets: &[String],
    ack: &AckUpstream,
    n: usize,
) -> anyhow::Result<String> {
    let batches = ack.batches()?;
    // (bucket, event id) → (timestamp ns, duration s, data) as the upstream received it.
    type Received = HashMap<(String, i64), (i64, f64, Map<String, Value>)>;
    let mut got: Received = HashMap::with_capacity(n);
    let mut resent = 0u64;
    for batch in batches {
        for e in batch.events {
            let ts = DateTime::parse_from_rfc3339(&e.timestamp)
                .context("upstream timestamp")?
                .with_timezone(&Utc)
                .timestamp_nanos_opt()
                .context("timestamp range")?;
            let data = e.data_map().context("upstream data")?;
            if got
                .insert((e.bucket_id, e.event_id), (ts, e.duration, data))
                .is_some()
            {
                resent += 1;
            }
        }
    }
    let client = http();
    let (mut matched, mut max_dt, mut max_dd) = (0u64, 0i64, 0f64);
    for b in buckets {
        let events: Vec<Event> = client
            .get(format!(
                "http://127.0.0.1:{port}/api/0/buckets/{b}/events?limit=-1"
            ))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        for ev in events {
            let id = ev.id.context("source event without id")?;
            let Some((ts, dur, data)) = got.remove(&(b.clone(), id)) else {
                bail!("{b}/{id} never reached the upstream");
            };
            let dt = (ts - ev.timestamp.timestamp_nanos_opt().context("range")?).abs();
            let dd = (dur - ev.duration).abs();
            ensure!(dt <= 1_000, "{b}/{id}: timestamp off by {dt} ns");
            ensure!(dd <= 1e-6, "{b}/{id}: duration off by {dd} s");
            ensure!(data == ev.data, "{b}/{id}: data differs");
            max_dt = max_dt.max(dt);
            max_dd = max_dd.max(dd);
            matched += 1;
        }
    }
    ensure!(
        got.is_empty(),
        "{} events upstream that the source does not have",
        got.len()
    );
    ensure!(matched == n as u64, "matched {matched} of {n}");
    Ok(format!(
        "{matched}/{n} events, each once ({resent} re-sent), max |Δ timestamp| {max_dt} ns, max |Δ duration| {:.0} ns, data equal",
        max_dd * 1e9
    ))
}
