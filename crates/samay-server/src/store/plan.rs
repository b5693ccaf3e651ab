//! What a batch does to the stored events, worked out once in Rust for both stores: given the
//! stored hash of every key the batch names, it counts accepted, duplicate and deleted events
//! exactly as `docs/upstream-api.md` says (the same key twice in a batch is processed in order,
//! deletions after events) and gives every key whose stored state changes one new sequence
//! number of the user's change feed. The stores only read the hashes and write the result.

use std::collections::{BTreeMap, HashMap};

use samay_api::{BatchResponse, UpEvent};

use super::IncomingBatch;

/// (bucket_id, event_id): an event's key within one (user, device).
pub(crate) type Key = (String, i64);

/// A key's stored state after the batch.
#[derive(Debug)]
pub(crate) enum Final<'a> {
    /// The current version is this event. `new_row`: the key has no stored row (never stored,
    /// or deleted since), so the row is inserted with `add_versions` versions; otherwise the
    /// stored row is updated and `add_versions` added to its count.
    Stored {
        event: &'a UpEvent,
        start_us: i64,
        add_versions: i64,
        new_row: bool,
    },
    /// Deleted: a tombstone, and the stored row (if `existed`) goes.
    Deleted,
}

#[derive(Debug)]
pub(crate) struct Write<'a> {
    pub key: Key,
    pub seq: i64,
    pub state: Final<'a>,
}

#[derive(Debug, Default)]
pub(crate) struct BucketCounts {
    pub versions_replaced: i64,
    pub duplicates: i64,
}

#[derive(Debug)]
pub(crate) struct Plan<'a> {
    pub answer: BatchResponse,
    /// In seq order.
    pub writes: Vec<Write<'a>>,
    pub buckets: BTreeMap<&'a str, BucketCounts>,
    /// The user's seq after the batch.
    pub last_seq: i64,
}

impl Plan<'_> {
    /// The buckets whose counters change (a catch-up's batches have none: no write of the
    /// bucket's row, which would be a new row version each batch).
    pub fn counted(&self) -> impl Iterator<Item = (&str, &BucketCounts)> {
        self.buckets
            .iter()
            .filter(|(_, c)| c.versions_replaced != 0 || c.duplicates != 0)
            .map(|(b, c)| (*b, c))
    }

    pub fn replaced(&self) -> u64 {
        self.buckets
            .values()
            .map(|c| c.versions_replaced.max(0) as u64)
            .sum()
    }
}

/// Event start in microseconds since the epoch; the batch was validated, so it parses (0 if
/// someone bypassed validation: only range deletes look at it).
pub(crate) fn start_us(timestamp: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(timestamp).map_or(0, |t| t.timestamp_micros())
}

/// The keys whose stored hash the plan needs.
pub(crate) fn keys(batch: &IncomingBatch) -> Vec<Key> {
    let mut keys: Vec<Key> = batch
        .events
        .iter()
        .map(|e| (e.bucket_id.clone(), e.event_id))
        .chain(
            batch
                .deletions
                .iter()
                .map(|d| (d.bucket_id.clone(), d.event_id)),
        )
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// How far apart two event ids of one bucket may be and still be read in one range scan
/// ([`runs`]): ids 1, 3, 4, 6 are one run. A bucket's ids in aw-server interleave with the
/// other buckets' (one id sequence for all), so a catch-up batch has gaps; a stored row in a
/// gap is read for nothing, at most `RUN_GAP - 1` of them per key.
const RUN_GAP: i64 = 16;

/// The keys as runs of close event ids within a bucket: `(bucket_id, first, last)`. `keys`
/// sorted (as [`keys`] gives them). A store reads the stored hashes by run, not key by key.
pub(crate) fn runs(keys: &[Key]) -> Vec<(&str, i64, i64)> {
    let mut runs: Vec<(&str, i64, i64)> = Vec::new();
    for (bucket, id) in keys {
        match runs.last_mut() {
            Some((b, _, last)) if *b == bucket.as_str() && id.saturating_sub(*last) <= RUN_GAP => {
                *last = *id;
            }
            _ => runs.push((bucket.as_str(), *id, *id)),
        }
    }
    runs
}

struct Slot<'a> {
    existed: bool,
    current: Option<Current<'a>>,
    changed: bool,
    add_versions: i64,
}

enum Current<'a> {
    Db(&'a str),
    New(&'a UpEvent),
}

/// `stored`: the stored hash of each key of [`keys`] that has a row. `seq`: the user's seq
/// before the batch.
pub(crate) fn plan<'a>(
    batch: &'a IncomingBatch,
    stored: &'a HashMap<Key, String>,
    seq: i64,
) -> Plan<'a> {
    let mut answer = BatchResponse {
        accepted: 0,
        duplicates: 0,
        deleted: 0,
    };
    let mut buckets: BTreeMap<&str, BucketCounts> = BTreeMap::new();
    let mut slots: HashMap<Key, Slot<'a>> = HashMap::new();
    let mut touched: Vec<Key> = Vec::new();
    for event in &batch.events {
        let key = (event.bucket_id.clone(), event.event_id);
        let s = slot(&mut slots, stored, &key);
        let current_hash = match &s.current {
            Some(Current::Db(h)) => Some(*h),
            Some(Current::New(e)) => Some(e.hash.as_str()),
            None => None,
        };
        let counts = buckets.entry(event.bucket_id.as_str()).or_default();
        match current_hash {
            Some(h) if h == event.hash => {
                answer.duplicates += 1;
                counts.duplicates += 1;
            }
            Some(_) => {
                answer.accepted += 1;
                counts.versions_replaced += 1;
                s.add_versions += 1;
                s.current = Some(Current::New(event));
                mark(s, &key, &mut touched);
            }
            None => {
                answer.accepted += 1;
                // Stored anew: one version, whatever the key had before a deletion.
                s.add_versions = 1;
                s.current = Some(Current::New(event));
                mark(s, &key, &mut touched);
            }
        }
    }
    for d in &batch.deletions {
        let key = (d.bucket_id.clone(), d.event_id);
        let s = slot(&mut slots, stored, &key);
        if s.current.is_some() {
            answer.deleted += 1;
            s.current = None;
            mark(s, &key, &mut touched);
        }
    }
    let mut next = seq;
    let mut writes = Vec::with_capacity(touched.len());
    for key in touched {
        let Some(s) = slots.remove(&key) else {
            continue;
        };
        let state = match s.current {
            Some(Current::New(event)) => Final::Stored {
                event,
                start_us: start_us(&event.timestamp),
                add_versions: s.add_versions,
                new_row: !s.existed,
            },
            // Changed and back to the stored row cannot happen (a change sets New or None).
            Some(Current::Db(_)) => continue,
            // Stored and deleted within this batch: nothing stored changes.
            None if !s.existed => continue,
            None => Final::Deleted,
        };
        next += 1;
        writes.push(Write {
            key,
            seq: next,
            state,
        });
    }
    Plan {
        answer,
        writes,
        buckets,
        last_seq: next,
    }
}

/// The key's slot, made from the stored hash on first sight.
fn slot<'s, 'a>(
    slots: &'s mut HashMap<Key, Slot<'a>>,
    stored: &'a HashMap<Key, String>,
    key: &Key,
) -> &'s mut Slot<'a> {
    slots.entry(key.clone()).or_insert_with(|| {
        let hash = stored.get(key);
        Slot {
            existed: hash.is_some(),
            current: hash.map(|h| Current::Db(h.as_str())),
            changed: false,
            add_versions: 0,
        }
    })
}

fn mark(s: &mut Slot<'_>, key: &Key, touched: &mut Vec<Key>) {
    if !s.changed {
        s.changed = true;
        touched.push(key.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use samay_api::{BucketMeta, Deletion};
    use serde_json::value::RawValue;

    fn ev(bucket: &str, id: i64, hash: &str) -> UpEvent {
        UpEvent {
            bucket_id: bucket.into(),
            event_id: id,
            hash: hash.into(),
            timestamp: "2024-05-01T10:00:00Z".into(),
            duration: 1.0,
            data: RawValue::from_string("{}".into()).unwrap(),
        }
    }

    fn batch(events: Vec<UpEvent>, deletions: Vec<Deletion>) -> IncomingBatch {
        let meta = BucketMeta {
            bucket_type: "t".into(),
            client: "c".into(),
            hostname: "h".into(),
            created: None,
        };
        IncomingBatch {
            batch_id: uuid::Uuid::new_v4(),
            device_id: uuid::Uuid::new_v4(),
            hostname: "h".into(),
            buckets: [("b".to_string(), meta)].into_iter().collect(),
            events,
            deletions,
        }
    }

    #[test]
    fn counts_and_sequences_follow_the_contract() {
        let stored: HashMap<Key, String> = [
            (("b".into(), 1), "h1".into()),
            (("b".into(), 2), "h2".into()),
        ]
        .into_iter()
        .collect();
        let b = batch(
            vec![
                ev("b", 1, "h1"), // duplicate of the stored version
                ev("b", 2, "x"),  // replaces
                ev("b", 3, "n"),  // new
                ev("b", 3, "n"),  // duplicate within the batch
                ev("b", 3, "m"),  // replaces the batch's own version
                ev("b", 4, "gone"),
            ],
            vec![
                Deletion {
                    bucket_id: "b".into(),
                    event_id: 1,
                },
                Deletion {
                    bucket_id: "b".into(),
                    event_id: 4,
                },
                Deletion {
                    bucket_id: "b".into(),
                    event_id: 99,
                },
            ],
        );
        let p = plan(&b, &stored, 10);
        assert_eq!(
            p.answer,
            BatchResponse {
                accepted: 4,
                duplicates: 2,
                deleted: 2
            }
        );
        // 2 (replaced), 3 (new, final "m"), 1 (deleted); 4 came and went: no write.
        let seqs: Vec<(i64, i64)> = p.writes.iter().map(|w| (w.key.1, w.seq)).collect();
        assert_eq!(seqs, vec![(2, 11), (3, 12), (1, 13)]);
        assert_eq!(p.last_seq, 13);
        assert!(matches!(
            p.writes[1].state,
            Final::Stored { event, add_versions: 2, new_row: true, .. } if event.hash == "m"
        ));
        assert!(matches!(p.writes[2].state, Final::Deleted));
        assert_eq!(p.buckets["b"].versions_replaced, 2);
        assert_eq!(p.buckets["b"].duplicates, 2);
    }

    #[test]
    fn runs_join_close_ids_of_one_bucket() {
        let keys: Vec<Key> = [
            ("a", 1),
            ("a", 3),
            ("a", 19),
            ("a", 36),
            ("b", 37),
            ("b", i64::MAX),
        ]
        .into_iter()
        .map(|(b, id)| (b.to_string(), id))
        .collect();
        assert_eq!(
            runs(&keys),
            vec![
                ("a", 1, 19),
                ("a", 36, 36),
                ("b", 37, 37),
                ("b", i64::MAX, i64::MAX)
            ]
        );
        let far: Vec<Key> = vec![("a".into(), i64::MIN), ("a".into(), i64::MAX)];
        assert_eq!(runs(&far).len(), 2, "no overflow between far ids");
        assert!(runs(&[]).is_empty());
    }

    #[test]
    fn a_pure_resend_changes_nothing() {
        let stored: HashMap<Key, String> = [(("b".into(), 1), "h1".into())].into_iter().collect();
        let b = batch(vec![ev("b", 1, "h1")], vec![]);
        let p = plan(&b, &stored, 5);
        assert!(p.writes.is_empty());
        assert_eq!(p.last_seq, 5);
    }
}
