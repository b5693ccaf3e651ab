//! The read pattern of the scan before issue 9, replayed request for request against a fresh
//! state, so the benchmark can check the aw-server-rust stand-in against the figures measured
//! on the real aw-server-rust for exactly that pattern (issue 9: 1,564 range queries of at most
//! 1,000 events plus 2,050 fetches by id cost it 20.8 s of CPU for 1M events).
//!
//! What the old scan sent, per bucket: one `limit=1` read of the newest event, then `end=probe`
//! `limit=1` probes back in doubling steps from one day until nothing is older; then forward
//! windows `[a, a + width)` (one day at first; halved after more than two pages of events,
//! doubled after less than half a page), each read newest first with `start=a`, `end=edge`,
//! `limit=1000`, the edge moving to the oldest start of each full page; and a fetch by id of
//! every returned copy that may be clipped (starting at or before the window start, or ending
//! within 2 µs of the page's end). This replays those requests and reads the answers only as
//! far as the next request depends on them.

use chrono::{DateTime, Utc};

use aw_sync_samay::source::{AwClient, EventSource, PageEvent, PageQuery};

const SECOND: i64 = 1_000_000_000;
const DAY: i64 = 86_400 * SECOND;
const PAGE: usize = 1000;
const LOOKBACK: i64 = 3600 * SECOND;

/// Requests the pattern made.
#[derive(Debug, Default, Clone, Copy)]
pub struct Replayed {
    pub ranges: u64,
    pub fetches: u64,
    pub events: u64,
}

fn floor_us(ns: i64) -> i64 {
    ns - ns.rem_euclid(1_000)
}

fn start_ns(e: &PageEvent) -> i64 {
    e.timestamp.timestamp_nanos_opt().unwrap_or(i64::MIN)
}

fn end_ns(e: &PageEvent) -> i64 {
    start_ns(e).saturating_add((e.duration * 1e9).round() as i64)
}

pub async fn replay(
    client: &AwClient,
    buckets: &[String],
    now: DateTime<Utc>,
) -> anyhow::Result<Replayed> {
    let mut r = Replayed::default();
    let t0 = floor_us(now.timestamp_nanos_opt().unwrap_or(i64::MAX));
    for bucket in buckets {
        let page = |start: Option<i64>, end: Option<i64>, limit: usize| {
            client.page(
                bucket,
                PageQuery {
                    start,
                    end,
                    limit: limit as u64,
                },
            )
        };
        // `earliest`: the newest event, then probes back.
        r.ranges += 1;
        let newest = page(None, None, 1).await?;
        let Some(first) = newest.first() else {
            continue;
        };
        let mut oldest_seen = start_ns(first);
        let mut step = DAY;
        let mut lo = None;
        for _ in 0..64 {
            let probe = floor_us(oldest_seen.saturating_sub(step));
            r.ranges += 1;
            match page(None, Some(probe), 1).await?.first() {
                None => {
                    lo = Some(probe);
                    break;
                }
                Some(e) => oldest_seen = start_ns(e),
            }
            step = step.saturating_mul(2);
        }
        let mut a = lo.unwrap_or(floor_us(oldest_seen.saturating_sub(step)));
        let mut width = DAY;
        let open_span = (2 * LOOKBACK).max(DAY);
        loop {
            let open = t0.saturating_sub(a) <= open_span || a.saturating_add(width) >= t0;
            let b = (!open).then(|| a + width);
            let mut end_q = b;
            let mut limit = PAGE;
            let mut edge_ids: Vec<i64> = Vec::new();
            let mut returned = 0usize;
            loop {
                r.ranges += 1;
                let events = page(Some(a), end_q, limit).await?;
                returned += events.len();
                r.events += events.len() as u64;
                let full = events.len() >= limit;
                let min_start = events.iter().map(start_ns).min();
                let page_edge: Vec<i64> = events
                    .iter()
                    .filter(|e| Some(start_ns(e)) == min_start)
                    .filter_map(|e| e.id)
                    .collect();
                for e in &events {
                    let (s, id) = (start_ns(e), e.id.unwrap_or(-1));
                    if end_q == Some(s) && edge_ids.contains(&id) {
                        continue;
                    }
                    if b.is_some_and(|b| s >= b) {
                        continue;
                    }
                    let clipped_start = s <= a;
                    let clipped_end = end_q.is_some_and(|q| end_ns(e) >= q - 2_000);
                    if clipped_start || clipped_end {
                        r.fetches += 1;
                        client.event(bucket, id).await?;
                    }
                }
                match (full, min_start) {
                    (true, Some(edge)) if end_q == Some(edge) => {
                        limit *= 2;
                        edge_ids.extend(page_edge);
                    }
                    (true, Some(edge)) => {
                        end_q = Some(edge);
                        limit = PAGE;
                        edge_ids = page_edge;
                    }
                    _ => break,
                }
            }
            if !open {
                if returned > 2 * PAGE {
                    width = (width / 2).max(SECOND);
                } else if returned < PAGE / 2 {
                    width = width.saturating_mul(2).min(30 * DAY);
                }
            }
            match b {
                Some(b) => a = b,
                None => break,
            }
        }
    }
    Ok(r)
}
