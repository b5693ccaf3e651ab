//! One pull: check the local copies, sweep what an interrupted pull left, then apply the feed
//! page by page (see the module docs of [`super`] for the rules).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Map, Value};

use super::copies::{self, NewCopy};
use super::{distinct_origin, local_bucket_id, PullError, PullSettings, PullStats};
use crate::auth::{AccessToken, TokenSource};
use crate::source::{AwClient, Bucket, Event, SourceError};
use crate::state::{CopyPrint, DestId, Mapped, PullBucket, PullPage, StateError, Store};
use crate::upstream::contract::{BucketInfo, Change, ChangesResponse};
use crate::upstream::{BatchSink, UpstreamError};

/// Reads of copies look this far around them: Python aw-server keeps milliseconds.
pub(super) const SLACK: TimeDelta = TimeDelta::seconds(1);

/// Everything one pull needs.
pub struct Puller<'a> {
    pub source: &'a AwClient,
    /// aw-server's host name and bucket listing as the cycle read them before its push: the
    /// pull does not ask again, so a cycle with nothing new costs the pull one feed request
    /// and no request to aw-server. A pulled bucket deleted during the push shows up in the
    /// next cycle's listing (a write into it fails this cycle, and is made again then).
    pub local_host: &'a str,
    pub listing: &'a BTreeMap<String, Bucket>,
    pub upstream: &'a dyn BatchSink,
    pub tokens: &'a dyn TokenSource,
    pub store: &'a Arc<Store>,
    pub dest: DestId,
    pub settings: &'a PullSettings,
    /// How old an interrupted pull's pending insert is ([`super::sweep`]).
    pub clock: &'a dyn crate::clock::Clock,
}

/// A version to copy: (upstream event id, hash, the copy).
type Copy = (i64, String, NewCopy);
/// (row, local bucket, local id, upstream event id, hash, event)
type Replace = (i64, String, i64, i64, String, Event);

/// What one page's entries ask of aw-server.
#[derive(Default)]
struct Plan {
    /// (row, local bucket, local id, upstream event id)
    deletes: Vec<(i64, String, i64, i64)>,
    replaces: Vec<Replace>,
    /// per row: (local bucket, [(upstream event id, hash, event)])
    inserts: BTreeMap<i64, (String, Vec<Copy>)>,
}

impl Plan {
    /// A replacement whose copy is gone: copied again as a new event.
    fn insert_anew(&mut self, r: Replace) -> Result<(), PullError> {
        let (row, bucket, _, event_id, hash, event) = r;
        let copy = NewCopy::from_event(&event)
            .map_err(|e| PullError::Inconsistent(format!("an event's data: {e}")))?;
        self.inserts
            .entry(row)
            .or_insert_with(|| (bucket, Vec::new()))
            .1
            .push((event_id, hash, copy));
        Ok(())
    }
}

/// A page written into aw-server and not yet recorded: recorded while the next page is
/// written, or before it when the next page touches what this one wrote.
struct Unrecorded {
    record: PullPage,
    /// (row, upstream event id) of every event it wrote or deleted.
    touched: HashSet<(i64, i64)>,
}

impl Unrecorded {
    fn of(record: PullPage) -> Unrecorded {
        let touched = record
            .upserts
            .iter()
            .map(|m| (m.row, m.event_id))
            .chain(record.deletes.iter().copied())
            .collect();
        Unrecorded { record, touched }
    }
}

/// A page whose inserts travel to aw-server in a task of their own while the next page is
/// planned (its mappings read, its copies found): aw-server then inserts page after page with
/// no gap for the sidecar's work between them (issue 14: the 1M pull's target was idle half
/// the time). Its deletions and replacements are made before.
struct Inserting {
    record: PullPage,
    /// What it writes or deletes, known before its inserts are answered.
    touched: HashSet<(i64, i64)>,
    /// Per bucket: its row and the (upstream event id, hash) of each copy.
    keys: Vec<(i64, Vec<(i64, String)>)>,
    /// The task inserting the copies, bucket after bucket as before (aw-server takes one
    /// bucket's list at a time); it hands each bucket's copies back with aw-server's answer,
    /// and stops at the first error.
    task: InsertTask,
}

type InsertTask =
    tokio::task::JoinHandle<Vec<(Vec<NewCopy>, Result<Option<Vec<i64>>, SourceError>)>>;

pub(super) async fn db<T: Send + 'static>(
    store: &Arc<Store>,
    f: impl FnOnce(&Store) -> Result<T, StateError> + Send + 'static,
) -> Result<T, PullError> {
    let store = Arc::clone(store);
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|e| StateError::Task(e.to_string()))?
        .map_err(PullError::State)
}

fn created_text(b: &Bucket) -> Option<String> {
    b.created
        .map(|c| c.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
}

impl Puller<'_> {
    pub async fn run(&self) -> Result<PullStats, PullError> {
        let mut stats = PullStats::default();
        let dest = self.dest;
        let listing = self.listing;
        let restart = self.check_local_copies(listing).await?;
        let fingerprint = self.settings.fingerprint();
        let feed = db(self.store, move |s| s.pull_feed(dest)).await?;
        if restart || feed.selection != fingerprint {
            if feed.seq > 0 {
                tracing::info!(
                    "the pulled devices' selection changed, or a local copy is gone: reading the change feed again from the start (what this aw-server holds is not written again)"
                );
            }
            let fp = fingerprint.clone();
            db(self.store, move |s| s.pull_restart(dest, &fp)).await?;
        }
        let swept = self.sweep().await?;
        stats.swept = swept.deleted;
        stats.writes += swept.deleted;

        let mut rows: HashMap<(String, String), PullBucket> =
            db(self.store, move |s| s.pull_buckets(dest))
                .await?
                .into_iter()
                .map(|b| ((b.device_id.clone(), b.bucket_id.clone()), b))
                .collect();
        let mut local: HashSet<String> = listing.keys().cloned().collect();
        let unpulled = db(self.store, move |s| s.pull_unpulled(dest)).await?;
        let mut token = self.tokens.token().await?;
        let mut devices: Option<HashMap<String, (String, Vec<BucketInfo>)>> = None;
        let mut after = db(self.store, move |s| s.pull_feed(dest)).await?.seq;
        let own = self.store.device_id().to_string();
        let mut fetched = None;
        let mut last: Option<Unrecorded> = None;
        let mut inserting: Option<Inserting> = None;
        loop {
            let page = match fetched.take() {
                Some(page) => page,
                None => self.changes(&mut token, after).await?,
            };
            if page.changes.is_empty() {
                self.settle(&mut inserting, &mut last, &mut stats, &rows)
                    .await?;
                self.commit(&mut last).await?;
                let done = PullPage {
                    next: after,
                    caught_up: true,
                    ..PullPage::default()
                };
                db(self.store, move |s| s.pull_commit(dest, &done)).await?;
                break;
            }
            // After a full page the next one is asked for while this one is written, so the
            // upstream's work overlaps aw-server's; pages are still written one after the
            // other, each recorded in order (while the next is written, see below). A failed
            // read ahead is asked again in order (a 401 then refreshes the token).
            let ahead =
                (page.changes.len() >= self.settings.page).then(|| (token.clone(), page.next));
            let read_ahead = async {
                match &ahead {
                    Some((t, next)) => self
                        .upstream
                        .changes(t, *next, self.settings.page)
                        .await
                        .ok(),
                    None => None,
                }
            };
            let apply = async {
                let mut plan = Plan::default();
                let mut record = PullPage {
                    next: page.next,
                    ..PullPage::default()
                };
                let mut wanted: BTreeMap<i64, Vec<&Change>> = BTreeMap::new();
                let mut fresh = false;
                for change in &page.changes {
                    stats.changes += 1;
                    if change.device_id == own || unpulled.contains(&change.device_id) {
                        stats.skipped += 1;
                        continue;
                    }
                    let key = (change.device_id.clone(), change.bucket_id.clone());
                    let row = match rows.get(&key) {
                        Some(b) => Some(b.row),
                        None if change.deleted => None,
                        None => {
                            // A device or bucket that appeared after the list was read: read it
                            // again (once a page), else its events would be passed over for good.
                            let listed = devices.as_ref().is_some_and(|d| {
                                d.get(&change.device_id).is_some_and(|(_, buckets)| {
                                    buckets.iter().any(|b| b.bucket_id == change.bucket_id)
                                })
                            });
                            if !listed && !fresh {
                                devices = Some(self.devices(&mut token).await?);
                                fresh = true;
                            }
                            let known = devices.as_ref().and_then(|d| d.get(&change.device_id));
                            match known {
                                Some((hostname, buckets)) => {
                                    self.new_bucket(
                                        change,
                                        hostname,
                                        buckets,
                                        (self.local_host, &mut local, &mut rows),
                                        &mut stats,
                                    )
                                    .await?
                                }
                                None => None,
                            }
                        }
                    };
                    let listed = devices
                        .as_ref()
                        .and_then(|d| d.get(&change.device_id))
                        .map(|(h, _)| h.as_str())
                        .unwrap_or("");
                    let known = rows.get(&key);
                    let names = [
                        listed,
                        known.map_or("", |b| b.device_host.as_str()),
                        known.map_or("", |b| b.origin.as_str()),
                    ];
                    match row {
                        Some(row) if self.settings.selects(&change.device_id, &names) => {
                            wanted.entry(row).or_default().push(change);
                            record.devices.insert(change.device_id.clone(), change.seq);
                        }
                        _ => stats.skipped += 1,
                    }
                }
                // What this page reads of the mappings must include the previous page's.
                let touches = |touched: &HashSet<(i64, i64)>| {
                    wanted.iter().any(|(row, changes)| {
                        changes
                            .iter()
                            .any(|c| touched.contains(&(*row, c.event_id)))
                    })
                };
                if inserting.as_ref().is_some_and(|i| touches(&i.touched)) {
                    self.settle(&mut inserting, &mut last, &mut stats, &rows)
                        .await?;
                }
                if last.as_ref().is_some_and(|l| touches(&l.touched)) {
                    self.commit(&mut last).await?;
                }
                let by_row: HashMap<i64, &PullBucket> = rows.values().map(|b| (b.row, b)).collect();
                for (row, changes) in wanted {
                    let Some(bucket) = by_row.get(&row) else {
                        continue;
                    };
                    let ids: Vec<i64> = changes.iter().map(|c| c.event_id).collect();
                    let mapped = db(self.store, move |s| s.pull_mapped(row, &ids)).await?;
                    for change in changes {
                        let held = mapped.get(&change.event_id);
                        if change.deleted {
                            match held {
                                Some((local_id, _)) => plan.deletes.push((
                                    row,
                                    bucket.local_bucket.clone(),
                                    *local_id,
                                    change.event_id,
                                )),
                                None => stats.skipped += 1,
                            }
                            continue;
                        }
                        let hash = change.hash.clone().unwrap_or_default();
                        let malformed = || {
                            tracing::warn!(
                                seq = change.seq,
                                "a feed entry without a readable event; skipped"
                            );
                        };
                        match held {
                            Some((_, h)) if *h == hash => stats.skipped += 1,
                            Some((local_id, _)) => match event_of(change) {
                                Some(event) => plan.replaces.push((
                                    row,
                                    bucket.local_bucket.clone(),
                                    *local_id,
                                    change.event_id,
                                    hash,
                                    event,
                                )),
                                None => {
                                    malformed();
                                    stats.skipped += 1;
                                }
                            },
                            None => match NewCopy::of(change) {
                                Some(copy) => plan
                                    .inserts
                                    .entry(row)
                                    .or_insert_with(|| (bucket.local_bucket.clone(), Vec::new()))
                                    .1
                                    .push((change.event_id, hash, copy)),
                                None => {
                                    malformed();
                                    stats.skipped += 1;
                                }
                            },
                        }
                    }
                }
                // Replacements and tombstones find Python's copies by reads sized by the
                // mappings (`copies::find`): the previous page's must be in them.
                if !(plan.deletes.is_empty() && plan.replaces.is_empty()) {
                    self.settle(&mut inserting, &mut last, &mut stats, &rows)
                        .await?;
                    self.commit(&mut last).await?;
                }
                let replaces = self.prepare(&mut plan).await?;
                self.write(&mut plan, replaces, &mut record, &mut stats, &by_row)
                    .await?;
                // The page before is recorded while this one's inserts travel: the state's
                // work leaves aw-server's critical path. Both inserts are pending until
                // recorded, so a crash in between sweeps both and applies both pages again.
                self.settle(&mut inserting, &mut last, &mut stats, &rows)
                    .await?;
                self.record_pending(&plan, &mut record).await?;
                inserting = Some(self.start_inserts(plan, record));
                self.commit(&mut last).await?;
                after = page.next;
                stats.seq = after;
                tracing::info!(
                    seq = after,
                    read = stats.changes,
                    inserted = stats.inserted,
                    replaced = stats.replaced,
                    deleted = stats.deleted,
                    "pull: applied a page of the change feed"
                );
                Ok::<(), PullError>(())
            };
            let (applied, next) = tokio::join!(apply, read_ahead);
            if let Err(e) = applied {
                // What was written is recorded: the next cycle does not sweep and write it again.
                self.settle(&mut inserting, &mut last, &mut stats, &rows)
                    .await?;
                self.commit(&mut last).await?;
                return Err(e);
            }
            fetched = next;
        }
        if swept.waiting > 0 {
            // An interrupted pull's insert may have landed while this one ran: its events are
            // found again and deleted now, not a cycle later.
            let again = self.sweep().await?;
            stats.swept += again.deleted;
            stats.writes += again.deleted;
        }
        stats.seq = after;
        Ok(stats)
    }

    /// The feed page after `after`, refreshing the token once on a 401.
    async fn changes(
        &self,
        token: &mut AccessToken,
        after: i64,
    ) -> Result<ChangesResponse, PullError> {
        match self
            .upstream
            .changes(token, after, self.settings.page)
            .await
        {
            Err(UpstreamError::Unauthorized) => {
                *token = self.tokens.refresh(token).await?;
                Ok(self
                    .upstream
                    .changes(token, after, self.settings.page)
                    .await?)
            }
            other => Ok(other?),
        }
    }

    /// The other devices: id → (host name, buckets).
    async fn devices(
        &self,
        token: &mut AccessToken,
    ) -> Result<HashMap<String, (String, Vec<BucketInfo>)>, PullError> {
        let list = match self.upstream.devices(token).await {
            Err(UpstreamError::Unauthorized) => {
                *token = self.tokens.refresh(token).await?;
                self.upstream.devices(token).await?
            }
            other => other?,
        };
        Ok(list
            .devices
            .into_iter()
            .map(|d| (d.device_id, (d.hostname, d.buckets)))
            .collect())
    }

    /// Makes the local bucket for another device's bucket, recorded before it is created. `None`
    /// when the device is not selected, the upstream has no metadata for it, or a bucket of that
    /// name exists that the pull did not make (left alone, reported).
    async fn new_bucket(
        &self,
        change: &Change,
        device_host: &str,
        buckets: &[BucketInfo],
        (local_host, local, rows): (
            &str,
            &mut HashSet<String>,
            &mut HashMap<(String, String), PullBucket>,
        ),
        stats: &mut PullStats,
    ) -> Result<Option<i64>, PullError> {
        let Some(meta) = buckets.iter().find(|b| b.bucket_id == change.bucket_id) else {
            return Ok(None);
        };
        if !self
            .settings
            .selects(&change.device_id, &[device_host, &meta.hostname])
        {
            return Ok(None);
        }
        let hostname = if meta.hostname.is_empty() {
            device_host
        } else {
            &meta.hostname
        };
        // The origin this device already has for that host name, else the name itself unless
        // this machine or another device has it.
        let origin = rows
            .values()
            .find(|b| b.device_id == change.device_id && origin_host(&b.origin, hostname))
            .map(|b| b.origin.clone())
            .unwrap_or_else(|| {
                let taken = hostname == local_host
                    || rows
                        .values()
                        .any(|b| b.origin == hostname && b.device_id != change.device_id);
                if taken {
                    distinct_origin(hostname, &change.device_id)
                } else {
                    hostname.to_string()
                }
            });
        let name = local_bucket_id(&change.bucket_id, &origin);
        if stats.conflicts.contains(&name) {
            return Ok(None);
        }
        if local.contains(&name) {
            tracing::warn!(bucket = %name, "a bucket of this name exists in aw-server and was not made by the pull: left alone, that device's bucket is not pulled");
            stats.conflicts.push(name);
            return Ok(None);
        }
        let (dest, device, bucket_id, n, o, host) = (
            self.dest,
            change.device_id.clone(),
            change.bucket_id.clone(),
            name.clone(),
            origin.clone(),
            device_host.to_string(),
        );
        let row = db(self.store, move |s| {
            s.pull_add_bucket(dest, (&device, &host), &bucket_id, &n, &o)
        })
        .await?;
        self.source
            .create_bucket(&name, &meta.bucket_type, &meta.client, &origin)
            .await?;
        stats.writes += 1;
        local.insert(name.clone());
        tracing::info!(bucket = %name, "pull: made a bucket for another device's events");
        rows.insert(
            (change.device_id.clone(), change.bucket_id.clone()),
            PullBucket {
                row,
                device_id: change.device_id.clone(),
                bucket_id: change.bucket_id.clone(),
                local_bucket: name,
                origin,
                created: None,
                device_host: device_host.to_string(),
            },
        );
        Ok(Some(row))
    }

    /// Compares the local buckets the pull made with aw-server's listing: one that is gone or
    /// was made again (another `created`: a new database) holds none of what the mappings say,
    /// so it is forgotten and the feed read again from the start. Returns whether to restart.
    async fn check_local_copies(
        &self,
        listing: &BTreeMap<String, Bucket>,
    ) -> Result<bool, PullError> {
        let dest = self.dest;
        let rows = db(self.store, move |s| s.pull_buckets(dest)).await?;
        let mut gone = Vec::new();
        for b in rows {
            match listing.get(&b.local_bucket) {
                None => gone.push(b.row),
                Some(l) => match (b.created.as_deref(), created_text(l)) {
                    (None, Some(c)) => {
                        db(self.store, move |s| s.pull_set_created(b.row, &c)).await?;
                    }
                    (Some(a), Some(c)) if a != c => gone.push(b.row),
                    _ => {}
                },
            }
        }
        if gone.is_empty() {
            return Ok(false);
        }
        tracing::warn!(
            buckets = gone.len(),
            "pulled buckets are gone from aw-server (deleted, or a new database): they are made again"
        );
        db(self.store, move |s| s.pull_forget_buckets(&gone)).await?;
        Ok(true)
    }

    /// Finds the local ids the mappings do not know (copies written into Python aw-server) of
    /// the page's replacements and tombstones. A copy not found is gone: its tombstone deletes
    /// nothing, its new version is copied again as a new event.
    async fn find_copies(&self, plan: &mut Plan) -> Result<(), PullError> {
        let mut unknown: BTreeMap<i64, (String, Vec<i64>)> = BTreeMap::new();
        for (row, bucket, local_id, event_id) in &plan.deletes {
            if *local_id == 0 {
                let e = unknown
                    .entry(*row)
                    .or_insert_with(|| (bucket.clone(), Vec::new()));
                e.1.push(*event_id);
            }
        }
        for r in &plan.replaces {
            if r.2 == 0 {
                let e = unknown
                    .entry(r.0)
                    .or_insert_with(|| (r.1.clone(), Vec::new()));
                e.1.push(r.3);
            }
        }
        let mut found: HashMap<(i64, i64), i64> = HashMap::new();
        for (row, (bucket, ids)) in unknown {
            let ids = copies::find(self.source, self.store, (row, &bucket), ids).await?;
            found.extend(
                ids.into_iter()
                    .map(|(event_id, local)| ((row, event_id), local)),
            );
        }
        for d in &mut plan.deletes {
            if d.2 == 0 {
                d.2 = found.get(&(d.0, d.3)).copied().unwrap_or(0);
            }
        }
        for r in std::mem::take(&mut plan.replaces) {
            match r.2 {
                0 => match found.get(&(r.0, r.3)) {
                    Some(local) => plan.replaces.push((r.0, r.1, *local, r.3, r.4, r.5)),
                    None => plan.insert_anew(r)?,
                },
                _ => plan.replaces.push(r),
            }
        }
        Ok(())
    }

    /// Records a page written into aw-server (none: nothing to do).
    async fn commit(&self, page: &mut Option<Unrecorded>) -> Result<(), PullError> {
        let Some(page) = page.take() else {
            return Ok(());
        };
        let dest = self.dest;
        db(self.store, move |s| s.pull_commit(dest, &page.record)).await
    }

    /// Readies a page's plan for [`Self::write`]: the copies' local ids found, the
    /// replacements checked. Returns the replacements to make.
    async fn prepare(&self, plan: &mut Plan) -> Result<Vec<Replace>, PullError> {
        self.find_copies(plan).await?;
        // A replacement only for an event read from that very bucket just now: a POST with an
        // id replaces that row in whatever bucket it is.
        let mut replaces = Vec::new();
        for r in std::mem::take(&mut plan.replaces) {
            match self.source.get_event(&r.1, r.2).await {
                Ok(Some(_)) => replaces.push(r),
                // Gone (the user deleted the copy) or aw-server-rust's 500 for a missing id:
                // copied again as a new event.
                Ok(None) | Err(SourceError::Status { status: 500, .. }) => plan.insert_anew(r)?,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(replaces)
    }

    /// Records a page's inserts as pending, just before they are sent (recorded earlier, a
    /// sidecar killed before sending them left a pending insert that never lands, watched for
    /// ten minutes).
    async fn record_pending(&self, plan: &Plan, record: &mut PullPage) -> Result<(), PullError> {
        let spans: Vec<(i64, i64, i64, i64)> = plan
            .inserts
            .iter()
            .filter_map(|(row, (_, events))| {
                let start = events.iter().map(|e| e.2.timestamp).min()?;
                let end = events.iter().map(|e| e.2.end()).max()?;
                Some((
                    *row,
                    start.timestamp_nanos_opt()?,
                    end.timestamp_nanos_opt()?,
                    events.len() as i64,
                ))
            })
            .collect();
        if !spans.is_empty() {
            let sent_at = self.clock.now().timestamp();
            record.pending = db(self.store, move |s| s.pull_add_pending(&spans, sent_at)).await?;
        }
        Ok(())
    }

    /// Makes a page's deletions and replacements in aw-server and fills `record` with what to
    /// commit; its inserts are left in `plan` ([`Self::start_inserts`]).
    async fn write(
        &self,
        plan: &mut Plan,
        replaces: Vec<Replace>,
        record: &mut PullPage,
        stats: &mut PullStats,
        by_row: &HashMap<i64, &PullBucket>,
    ) -> Result<(), PullError> {
        for (row, bucket, local_id, event_id) in std::mem::take(&mut plan.deletes) {
            // 0: a copy never found (gone already); only the mapping goes.
            if local_id != 0 {
                match self.source.delete_event(&bucket, local_id).await {
                    Ok(()) | Err(SourceError::BucketNotFound(_)) => {}
                    Err(e) => return Err(e.into()),
                }
                stats.writes += 1;
            }
            stats.deleted += 1;
            count(stats, by_row, row, 1);
            record.deletes.push((row, event_id));
        }
        for (row, bucket, local_id, event_id, hash, event) in replaces {
            self.source.replace_event(&bucket, local_id, &event).await?;
            stats.writes += 1;
            stats.replaced += 1;
            count(stats, by_row, row, 1);
            record
                .upserts
                .push(mapped(row, event_id, local_id, hash, event.timestamp, None));
        }
        Ok(())
    }

    /// Sends a page's inserts in a task of their own, bucket after bucket.
    fn start_inserts(&self, plan: Plan, record: PullPage) -> Inserting {
        let Unrecorded {
            record,
            mut touched,
        } = Unrecorded::of(record);
        let mut keys = Vec::with_capacity(plan.inserts.len());
        let mut lists = Vec::with_capacity(plan.inserts.len());
        for (row, (bucket, events)) in plan.inserts {
            let (row_keys, plain): (Vec<(i64, String)>, Vec<NewCopy>) = events
                .into_iter()
                .map(|(event_id, hash, event)| ((event_id, hash), event))
                .unzip();
            touched.extend(row_keys.iter().map(|(event_id, _)| (row, *event_id)));
            keys.push((row, row_keys));
            lists.push((bucket, plain));
        }
        let source = self.source.clone();
        let task = tokio::spawn(async move {
            let mut answers = Vec::with_capacity(lists.len());
            for (bucket, plain) in lists {
                let ids = source.insert_events_ids(&bucket, &plain).await;
                let failed = ids.is_err();
                answers.push((plain, ids));
                if failed {
                    break;
                }
            }
            answers
        });
        Inserting {
            record,
            touched,
            keys,
            task,
        }
    }

    /// Waits for the page whose inserts are travelling and makes it the page to record next
    /// (`last`, recorded first when there is one).
    async fn settle(
        &self,
        inserting: &mut Option<Inserting>,
        last: &mut Option<Unrecorded>,
        stats: &mut PullStats,
        rows: &HashMap<(String, String), PullBucket>,
    ) -> Result<(), PullError> {
        let Some(Inserting {
            mut record,
            keys,
            task,
            ..
        }) = inserting.take()
        else {
            return Ok(());
        };
        self.commit(last).await?;
        let by_row: HashMap<i64, &PullBucket> = rows.values().map(|b| (b.row, b)).collect();
        let answers = task
            .await
            .map_err(|e| PullError::Inconsistent(format!("the inserts' task: {e}")))?;
        for ((row, keys), (plain, ids)) in keys.into_iter().zip(answers) {
            let ids = ids?;
            stats.writes += 1;
            stats.inserted += plain.len() as u64;
            count(stats, &by_row, row, plain.len() as u64);
            // aw-server-rust answers the new ids; Python aw-server answers `null`: its copies
            // are recorded by their print, found when needed (see `copies`).
            for (i, ((event_id, hash), event)) in keys.into_iter().zip(&plain).enumerate() {
                let (local_id, print) = match ids.as_ref().and_then(|ids| ids.get(i)) {
                    Some(id) => (*id, None),
                    None => (0, Some(event.print())),
                };
                record.upserts.push(mapped(
                    row,
                    event_id,
                    local_id,
                    hash,
                    event.timestamp,
                    print,
                ));
            }
        }
        *last = Some(Unrecorded::of(record));
        Ok(())
    }
}

/// Whether `origin` was made for `hostname` (itself, or it with a device id's start).
fn origin_host(origin: &str, hostname: &str) -> bool {
    origin == hostname
        || origin
            .strip_prefix(hostname)
            .is_some_and(|rest| rest.len() == 9 && rest.starts_with('-'))
}

fn mapped(
    row: i64,
    event_id: i64,
    local_id: i64,
    hash: String,
    start: DateTime<Utc>,
    print: Option<CopyPrint>,
) -> Mapped {
    Mapped {
        row,
        event_id,
        local_id,
        hash,
        start_ns: start.timestamp_nanos_opt().unwrap_or(0),
        print,
    }
}

/// Adds `n` writes to the count of the bucket's origin (once per insert, not per event: the
/// key is a string).
fn count(stats: &mut PullStats, by_row: &HashMap<i64, &PullBucket>, row: i64, n: u64) {
    if let Some(b) = by_row.get(&row) {
        *stats.per_device.entry(b.origin.clone()).or_default() += n;
    }
}

/// The event a feed entry carries; `None` when it is malformed.
fn event_of(change: &Change) -> Option<Event> {
    let timestamp = DateTime::parse_from_rfc3339(change.timestamp.as_deref()?)
        .ok()?
        .with_timezone(&Utc);
    let duration = change.duration.filter(|d| d.is_finite() && *d >= 0.0)?;
    let data: Map<String, Value> = match &change.data {
        Some(raw) => serde_json::from_str(raw.get()).ok()?,
        None => Map::new(),
    };
    Some(Event {
        id: None,
        timestamp,
        duration,
        data,
    })
}
