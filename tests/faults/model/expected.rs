//! The model: every version aw-server served, what the upstream must hold and what it may.

use std::collections::{BTreeMap, HashMap};

use aw_sync_samay::state::hash::duration_to_ns;
use aw_sync_samay::state::{event_hash, hash_hex, GENERATION_SHIFT};
use chrono::{DateTime, Utc};
use samay_aw_double::Event;
use samay_server::StoredEvent;
use samay_testkit::source_event;
use serde_json::{Map, Value};

use super::ops::*;

/// One version of an event, as aw-server served it.
#[derive(Debug, Clone)]
pub(super) struct Version {
    pub(super) start_ns: i64,
    pub(super) duration_ns: i64,
    pub(super) data: Map<String, Value>,
    pub(super) hash: String,
    /// Deeper than `lookback` below the newest data when it appeared: found through the
    /// count, not by the pass from the top.
    pub(super) deep: bool,
    /// How many cycles had succeeded when it appeared.
    pub(super) interval: u64,
}

impl Version {
    pub(super) fn matches(&self, up: &StoredEvent) -> bool {
        let Ok(ts) = up.timestamp.parse::<DateTime<Utc>>() else {
            return false;
        };
        ts.timestamp_nanos_opt() == Some(self.start_ns)
            && duration_to_ns(up.duration) == Some(self.duration_ns)
            && up.data == self.data
            && up.hash == self.hash
    }
}

#[derive(Debug, Default)]
pub(super) struct ModelEvent {
    pub(super) versions: Vec<Version>,
    pub(super) deleted: bool,
    /// Deleted after a batch may have been stored without the engine knowing (a crash, a lost
    /// answer): the upstream may hold a copy the state never learnt of, which no verification
    /// can find, so it may stay.
    pub(super) deleted_unknowable: bool,
}

/// What the upstream must (and may) hold.
#[derive(Default)]
pub(super) struct Model {
    /// Which aw-server database is current; bumped by [`Op::ReplaceAwDatabase`].
    pub(super) epoch: usize,
    /// (epoch, bucket, aw-server id) → the event's versions.
    pub(super) events: BTreeMap<(usize, String, i64), ModelEvent>,
    /// The database each (bucket, generation) the engine registered was read from. A
    /// generation is recorded right after the cycle that made it, while the epoch is the one
    /// it was made in.
    pub(super) gen_epoch: HashMap<(String, u32), usize>,
    /// The newest start aw-server held when the last successful cycle ended (the engine's
    /// newest data is at most this), per bucket, in this epoch.
    pub(super) top: HashMap<String, i64>,
    /// Successful cycles so far.
    pub(super) ok_cycles: u64,
    /// (bucket, [`Model::ok_cycles`] at the time) of every deletion: a deletion and an insert
    /// between the same two cycles can leave the count and the bucket listing unchanged.
    pub(super) deletions: std::collections::HashSet<(String, u64)>,
    /// (bucket, [`Model::ok_cycles`]) of every heartbeat that grew an event the bucket listing
    /// does not show: neither the newest event nor ending after every other.
    pub(super) hidden: std::collections::HashSet<(String, u64)>,
    /// The highest version index seen upstream per (bucket, upstream id).
    pub(super) seen: HashMap<(String, i64), usize>,
    /// A batch may have been stored without the engine knowing (crash, lost answer): the
    /// upstream may count duplicates.
    pub(super) ambiguous: bool,
}

impl Model {
    /// Whether the sync promises this version after a successful cycle (see the module doc).
    pub(super) fn required(&self, bucket: &str, v: &Version) -> bool {
        let key = (bucket.to_string(), v.interval);
        let clean = !self.deletions.contains(&key) && !self.hidden.contains(&key);
        clean && (!v.deep || v.duration_ns > 0)
    }

    /// Records the version aw-server now serves for `id`, unless it is the latest one already.
    pub(super) fn observe(&mut self, bucket: &str, e: &Event) {
        let id = e.id.expect("served events have ids");
        let (hash, span) = event_hash(&source_event(e)).expect("representable");
        let deep = self
            .top
            .get(bucket)
            .is_some_and(|&t| span.start_ns < t - LOOKBACK_S * 1_000_000_000);
        let v = Version {
            start_ns: span.start_ns,
            duration_ns: span.duration_ns,
            data: e.data.clone(),
            hash: hash_hex(&hash),
            deep,
            interval: self.ok_cycles,
        };
        let entry = self
            .events
            .entry((self.epoch, bucket.to_string(), id))
            .or_default();
        assert!(
            !entry.deleted,
            "model: a deleted id came back: {bucket} {id}"
        );
        if entry.versions.last().map(|l| &l.hash) != Some(&v.hash) {
            entry.versions.push(v);
        }
    }

    pub(super) fn current_gen(&self, bucket: &str) -> Option<u32> {
        self.gen_epoch
            .iter()
            .filter(|((b, _), e)| b == bucket && **e == self.epoch)
            .map(|((_, g), _)| *g)
            .max()
    }

    /// Everything upstream is a version the model knows, under a generation registered for its
    /// database, and no key went back to an older version. With `complete` (after a successful
    /// cycle), every required version is there too.
    /// With `strict` (after a full verification): every latest version, deep or not, and no
    /// deleted event of the current database.
    pub(super) fn check(
        &mut self,
        upstream: &[StoredEvent],
        complete: bool,
        strict: bool,
    ) -> Result<(), String> {
        let mut held: HashMap<(String, i64), &StoredEvent> = HashMap::new();
        for up in upstream {
            let gen = u32::try_from(up.event_id >> GENERATION_SHIFT).unwrap_or(u32::MAX);
            let aw_id = up.event_id & ((1i64 << GENERATION_SHIFT) - 1);
            let Some(&epoch) = self.gen_epoch.get(&(up.bucket_id.clone(), gen)) else {
                return Err(format!(
                    "upstream holds {} event {} under generation {gen}, which the engine never registered",
                    up.bucket_id, up.event_id
                ));
            };
            let Some(ev) = self.events.get(&(epoch, up.bucket_id.clone(), aw_id)) else {
                return Err(format!(
                    "upstream holds {} event {} (epoch {epoch}, aw id {aw_id}), which aw-server never had: {up:?}",
                    up.bucket_id, up.event_id
                ));
            };
            let Some(idx) = ev.versions.iter().rposition(|v| v.matches(up)) else {
                return Err(format!(
                    "upstream holds a version of {} event {} that aw-server never served: {up:?}\nversions: {:#?}",
                    up.bucket_id, up.event_id, ev.versions
                ));
            };
            let key = (up.bucket_id.clone(), up.event_id);
            if let Some(&before) = self.seen.get(&key) {
                if idx < before {
                    return Err(format!(
                        "{} event {}: version {before} upstream was replaced by the older version {idx}",
                        up.bucket_id, up.event_id
                    ));
                }
            }
            self.seen.insert(key.clone(), idx);
            held.insert(key, up);
        }
        if !complete {
            return Ok(());
        }
        for ((epoch, bucket, id), ev) in &self.events {
            let Some(latest) = ev.versions.last() else {
                continue;
            };
            if *epoch != self.epoch || ev.deleted || !(strict || self.required(bucket, latest)) {
                continue;
            }
            let Some(gen) = self.current_gen(bucket) else {
                return Err(format!(
                    "{bucket}: the cycle succeeded but the engine registered no generation for the current database"
                ));
            };
            let up_id = (i64::from(gen) << GENERATION_SHIFT) | id;
            match held.get(&(bucket.clone(), up_id)) {
                None => {
                    return Err(format!(
                        "{bucket} event {id} (upstream id {up_id}) is missing upstream; latest version {latest:?}"
                    ))
                }
                Some(up) if !latest.matches(up) => {
                    return Err(format!(
                        "{bucket} event {id}: upstream holds {up:?}, not the latest version {latest:?}"
                    ))
                }
                Some(_) => {}
            }
        }
        if strict {
            for ((epoch, bucket, id), ev) in &self.events {
                let Some(gen) = self.current_gen(bucket) else {
                    continue;
                };
                let up_id = (i64::from(gen) << GENERATION_SHIFT) | id;
                if *epoch == self.epoch
                    && ev.deleted
                    && !ev.deleted_unknowable
                    && held.contains_key(&(bucket.clone(), up_id))
                {
                    return Err(format!(
                        "{bucket} event {id} was deleted in aw-server but is still upstream after a full verification"
                    ));
                }
            }
        }
        Ok(())
    }
}
