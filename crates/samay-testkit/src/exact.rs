//! The upstream holds exactly what the in-memory aw-server double holds: each (bucket, event
//! id) once, with the hash the sync computes for it, and its timestamp, duration and data.

use std::collections::HashMap;

use aw_sync_samay::state::{event_hash, hash_hex};
use chrono::{DateTime, Utc};
use samay_aw_double::AwDouble;
use samay_server::DevServer;

/// Asserts the dev upstream holds exactly the events of `buckets` in `double` (one device,
/// generation 0, so upstream ids are aw ids) and nothing else; returns how many it compared.
pub async fn assert_upstream_holds_exactly(
    double: &AwDouble,
    dev: &DevServer,
    buckets: &[String],
) -> usize {
    let all = dev.stored_events(None, None).await.expect("read upstream");
    let mut upstream: HashMap<(String, i64), _> = HashMap::with_capacity(all.len());
    for e in all {
        let key = (e.bucket_id.clone(), e.event_id);
        assert!(
            upstream.insert(key.clone(), e).is_none(),
            "{key:?} is held twice upstream (two devices?)"
        );
    }
    let mut compared = 0;
    for bucket in buckets {
        for s in double.events(bucket).expect("read the double") {
            let id = s.id.expect("the double gives ids");
            let u = upstream
                .remove(&(bucket.clone(), id))
                .unwrap_or_else(|| panic!("{bucket}/{id} never reached the upstream"));
            let (hash, _) = event_hash(&crate::source_event(&s)).expect("representable event");
            assert_eq!(u.hash, hash_hex(&hash), "{bucket}/{id}: hash");
            let ts: DateTime<Utc> = u.timestamp.parse().expect("upstream timestamp");
            assert_eq!(ts, s.timestamp, "{bucket}/{id}: timestamp");
            assert!(
                (u.duration - s.duration).abs() < 1e-6,
                "{bucket}/{id}: duration {} upstream {}",
                s.duration,
                u.duration
            );
            assert_eq!(u.data, s.data, "{bucket}/{id}: data");
            compared += 1;
        }
    }
    let extra: Vec<_> = upstream.keys().take(5).collect();
    assert!(
        upstream.is_empty(),
        "{} events upstream that the source does not have, e.g. {extra:?}",
        upstream.len()
    );
    compared
}
