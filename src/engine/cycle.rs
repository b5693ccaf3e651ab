//! One complete sync: the [`Engine`] reads every bucket ([`super::scan`]) into the queue,
//! the uploader ([`super::upload`]) delivers and records, and the cycle reports what happened.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::destination;
use super::{queue, scan, upload};
use super::{CycleError, Metrics, ScanError, ScanStats, Settings, UploadError, UploadStats};
use super::{Verify, OWN_BUCKET_PREFIX};
use crate::auth::TokenSource;
use crate::clock::Clock;
use crate::privacy;
use crate::privacy::Redaction;
use crate::source::{AwClient, Bucket, SourceError};
use crate::state::{BucketState, DestId, DestKey, StateError, Store};
use crate::upstream::contract::BucketMeta;
use crate::upstream::BatchSink;

/// The meta key of the last background verification step.
const LAST_VERIFY: &str = "last_verify";

/// What one cycle did.
#[derive(Debug, Clone, Default)]
pub struct CycleReport {
    pub buckets: BTreeMap<String, ScanStats>,
    /// Buckets left out by `include_buckets` / `exclude_buckets`.
    pub excluded: Vec<String>,
    /// Buckets read again from the start because their filter settings changed.
    pub rescanned: Vec<String>,
    pub upload: UploadStats,
    /// What the background verification did this cycle.
    pub verify: Verify,
    /// What the pull did (`sync.pull`); `None` when it is off.
    pub pull: Option<Box<crate::pull::PullStats>>,
    pub elapsed: Duration,
}

impl CycleReport {
    pub fn read(&self) -> u64 {
        self.buckets.values().map(|s| s.read).sum()
    }
    pub fn queued(&self) -> u64 {
        self.buckets.values().map(|s| s.queued).sum()
    }
    pub fn verified(&self) -> u64 {
        self.buckets.values().map(|s| s.verified).sum()
    }
}

/// Everything a cycle needs, shared by the daemon loop, `--once` and the tests.
pub struct Engine {
    pub source: AwClient,
    pub upstream: Arc<dyn BatchSink>,
    pub tokens: Arc<dyn TokenSource>,
    pub store: Arc<Store>,
    pub settings: Settings,
    pub hostname: String,
    pub metrics: Arc<Metrics>,
    /// Where the data goes: what the state's records belong to ([`destination`]).
    pub destination: destination::Destination,
    pub clock: Arc<dyn Clock>,
}

impl Engine {
    /// An engine for `--once --dry-run`: its cycle reads, filters and redacts as a real one, but
    /// hands the batches to `sink` and records nothing in `store`. Needs no upstream and no
    /// token (the sink never looks at the placeholder one).
    pub fn dry_run(
        source: AwClient,
        store: Arc<Store>,
        mut settings: Settings,
        hostname: String,
        sink: Arc<crate::upstream::dry_run::DryRunSink>,
        destination: DestKey,
    ) -> Engine {
        settings.dry_run = true;
        Engine {
            source,
            upstream: sink,
            tokens: Arc::new(crate::auth::StaticToken::new(
                crate::auth::AccessToken::new("dry-run"),
                "dry run (nothing is sent)",
            )),
            store,
            settings,
            hostname,
            metrics: Default::default(),
            destination: destination.into(),
            clock: Arc::new(crate::clock::SystemClock),
        }
    }

    /// One complete sync: every bucket read, everything new delivered, positions moved.
    pub async fn run_cycle(&self) -> Result<CycleReport, CycleError> {
        self.run_cycle_verifying(self.settings.verify_all).await
    }

    /// [`Engine::run_cycle`], verifying the whole history with `full` (`--once --verify`, here
    /// or asked of the daemon).
    pub async fn run_cycle_verifying(&self, full: bool) -> Result<CycleReport, CycleError> {
        let started = Instant::now();
        let result = self.cycle(full).await;
        if !self.settings.dry_run {
            let record = result.as_ref().err().map(|e| e.to_string());
            let store = Arc::clone(&self.store);
            // Best effort: a failure to record the outcome must not hide the outcome itself.
            let _ =
                tokio::task::spawn_blocking(move || store.record_cycle(record.as_deref())).await;
        }
        result.map(|mut r| {
            r.elapsed = started.elapsed();
            r
        })
    }

    /// Whether this cycle takes a step of the background verification. The first cycle only
    /// starts the clock: a catch-up has just read everything.
    async fn verify_plan(&self, now: DateTime<Utc>, full: bool) -> Result<Verify, CycleError> {
        let s = &self.settings;
        if full {
            return Ok(Verify::Full);
        }
        if s.verify_batch == 0 || s.dry_run {
            return Ok(Verify::Off);
        }
        let last = self.blocking(|store| store.meta(LAST_VERIFY)).await?;
        let due = match last.as_deref().map(DateTime::parse_from_rfc3339) {
            Some(Ok(t)) => {
                let since = now.signed_duration_since(t.with_timezone(&Utc));
                // A clock that stepped back counts as due: waiting for it to catch up could
                // take forever.
                since < chrono::TimeDelta::zero()
                    || since.to_std().is_ok_and(|d| d >= s.verify_interval)
            }
            _ => false,
        };
        Ok(if due {
            Verify::Step(s.verify_batch)
        } else {
            Verify::Off
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StateError> + Send + 'static,
    ) -> Result<T, CycleError> {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| CycleError::State(StateError::Task(e.to_string())))?
            .map_err(CycleError::State)
    }

    /// What a failure to read aw-server means for the cycle (and what the user is told).
    fn source_failed(&self, source: SourceError) -> CycleError {
        match source {
            SourceError::Unreachable { .. } => CycleError::SourceDown {
                url: self.source.base_url().to_string(),
                source,
            },
            SourceError::NotAwServer { .. } => CycleError::NotAwServer(source),
            source => CycleError::Source(source),
        }
    }

    /// The state of `bucket` at the destination (`dest`; registered when `write`), read again
    /// from the start when its privacy filters changed since it was last synced (said in
    /// `report`).
    async fn bucket_state(
        &self,
        bucket: &Bucket,
        device: &Option<String>,
        (dest, write): (Option<DestId>, bool),
        redaction: &Redaction,
        report: &mut CycleReport,
    ) -> Result<BucketState, CycleError> {
        let start_from_ns = self
            .settings
            .start_from
            .and_then(|s| s.timestamp_nanos_opt());
        let fingerprint = privacy::fingerprint(redaction, start_from_ns);
        let (mut state, reset) = {
            let bucket = bucket.clone();
            let device = device.clone();
            let unfiltered = privacy::unfiltered_fingerprint();
            self.blocking(move |store| {
                let state = match dest.filter(|_| write) {
                    Some(dest) => store.bucket_state(dest, &bucket, device.as_deref())?,
                    None => store.peek_bucket_state(dest, &bucket, device.as_deref())?,
                };
                let reset =
                    store.filter_fingerprint(state.row, &fingerprint, &unfiltered, write)?;
                Ok((state, reset))
            })
            .await?
        };
        if reset && (state.top_ns.is_some() || state.pass.is_some()) {
            tracing::info!(bucket = %bucket.id, "the privacy filters of this bucket changed: reading it again from the start (what the upstream holds unchanged is not re-sent)");
            report.rescanned.push(bucket.id.clone());
        }
        if reset {
            state.top_ns = None;
            state.top_limit = None;
            state.pass = None;
            state.listing_fp = None;
            state.count = None;
        }
        if state.replaced {
            tracing::warn!(bucket = %bucket.id, generation = state.generation,
                "bucket was replaced in aw-server (new database or recreated bucket): its ids start over, so its events are uploaded under a new generation and nothing uploaded before is overwritten");
        }
        Ok(state)
    }

    /// The verification clock, after a successful cycle: started by the first one, moved by
    /// each step.
    async fn move_verify_clock(
        &self,
        now: DateTime<Utc>,
        verify: Verify,
    ) -> Result<(), CycleError> {
        if self.settings.verify_batch == 0 || matches!(verify, Verify::Full) {
            return Ok(());
        }
        let started = self
            .blocking(|store| store.meta(LAST_VERIFY))
            .await?
            .is_some();
        if matches!(verify, Verify::Step(_)) || !started {
            let stamp = now.to_rfc3339();
            self.blocking(move |store| store.set_meta(LAST_VERIFY, &stamp))
                .await?;
        }
        Ok(())
    }

    async fn cycle(&self, full: bool) -> Result<CycleReport, CycleError> {
        let down = |e| self.source_failed(e);
        let info = self.source.info().await.map_err(down)?;
        let buckets = self.source.get_buckets().await.map_err(down)?;
        let token = self.tokens.token().await.map_err(CycleError::Auth)?;
        let now = self.clock.now();
        let write = !self.settings.dry_run;
        let (key, token) = self.destination_for(token).await?;
        let resync = write && self.destination.take_resync();
        let dest = self
            .blocking(move |store| {
                let dest = store.destination(&key, write)?;
                if let (Some(id), true) = (dest, resync) {
                    let forgot = store.forget_destination(id)?;
                    tracing::info!(upstream = %key.base_url, account = %key.label, forgot,
                        "--resync: forgot what this destination acknowledged; sending everything again");
                }
                Ok(dest)
            })
            .await
            .inspect_err(|_| {
                // Not forgotten: the next cycle tries the resync again.
                if resync {
                    self.destination.ask_resync();
                }
            })?;
        let verify = self.verify_plan(now, full).await?;

        let inflight = Arc::new(queue::InFlight::default());
        let (in_flight, queue_room) = upload_shape(&self.settings);
        let (tx, rx) = queue::queue(queue_room);
        let uploader = upload::Uploader {
            upstream: Arc::clone(&self.upstream),
            tokens: Arc::clone(&self.tokens),
            store: Arc::clone(&self.store),
            inflight: Arc::clone(&inflight),
            buckets: Arc::new(bucket_metas(buckets.values())),
            device_id: self.store.device_id(),
            hostname: self.hostname.clone(),
            batch_size: self.settings.batch_size,
            max_retries: self.settings.max_retries,
            retry: self.settings.retry,
            linger: self.settings.linger,
            metrics: Arc::clone(&self.metrics),
            dry_run: self.settings.dry_run,
            clock: Arc::clone(&self.clock),
            in_flight,
        };
        let upload_task = AbortOnDrop(tokio::spawn(uploader.run(rx, token)));

        let mut report = CycleReport {
            verify,
            ..CycleReport::default()
        };
        let mut scan_error = None;
        let start_from_ns = self
            .settings
            .start_from
            .and_then(|s| s.timestamp_nanos_opt());
        let caps = Mutex::new(scan::Caps::default());
        {
            let scanner = scan::Scanner {
                source: &self.source,
                store: &self.store,
                inflight: &inflight,
                metrics: &self.metrics,
                tx: &tx,
                page_size: self.settings.page_size,
                catchup_page: self.settings.catchup_page,
                lookback_ns: i64::try_from(self.settings.lookback.as_nanos()).unwrap_or(i64::MAX),
                start_from_ns,
                redaction_key: self.store.redaction_key(),
                verify,
                caps: &caps,
            };
            for bucket in buckets.values() {
                // Another device's events (imported by the pull or by aw-sync): that device
                // pushes them itself.
                if bucket.id.starts_with(OWN_BUCKET_PREFIX)
                    || crate::pull::is_pulled_bucket(&bucket.id)
                {
                    continue;
                }
                // Never registered in the state: re-including it later finds no position and
                // reads it whole.
                if !self.settings.privacy.includes(&bucket.id) {
                    report.excluded.push(bucket.id.clone());
                    continue;
                }
                let redaction = self
                    .settings
                    .privacy
                    .redaction(&bucket.id, &bucket.bucket_type);
                let state = self
                    .bucket_state(
                        bucket,
                        &info.device_id,
                        (dest, write),
                        &redaction,
                        &mut report,
                    )
                    .await?;
                match scanner.scan(bucket, &state, &redaction).await {
                    Ok(stats) => {
                        report.buckets.insert(bucket.id.clone(), stats);
                    }
                    Err(ScanError::Source(SourceError::BucketNotFound(_))) => {
                        tracing::warn!(bucket = %bucket.id, "bucket was deleted during the sync; skipped");
                    }
                    Err(ScanError::UploaderGone) => break,
                    // aw-server gone, or our own state failing: no other bucket can do better.
                    Err(e @ ScanError::Source(SourceError::Unreachable { .. }))
                    | Err(e @ ScanError::State(_)) => {
                        scan_error = Some(e);
                        break;
                    }
                    // Something wrong with this bucket only (a 500 on it, an unparsable event):
                    // the others still sync, and the cycle reports the failure.
                    Err(e) => {
                        tracing::error!(bucket = %bucket.id, "reading the bucket failed: {e}");
                        scan_error.get_or_insert(e);
                    }
                }
            }
        }
        drop(tx);
        let upload = upload_task.join().await;
        let report = match (upload, scan_error) {
            (Err(e), _) => return Err(e),
            (Ok(_), Some(ScanError::Source(e))) => return Err(down(e)),
            (Ok(_), Some(ScanError::State(e))) => return Err(CycleError::State(e)),
            (Ok(_), Some(e)) => return Err(CycleError::Scan(e)),
            (Ok(stats), None) => CycleReport {
                upload: stats,
                ..report
            },
        };
        if write {
            self.move_verify_clock(now, verify).await?;
        }
        let mut report = report;
        if let (true, Some(dest)) = (write && self.settings.pull.enabled, dest) {
            report.pull = Some(Box::new(self.pull(dest, &info.hostname, &buckets).await?));
        } else if write {
            if let Ok(token) = self.tokens.token().await {
                crate::pull::note_other_devices(self.upstream.as_ref(), &token, &self.store, now)
                    .await;
            }
        }
        Ok(report)
    }

    /// The pull (issue 14), after the push: the other devices' events into this aw-server.
    async fn pull(
        &self,
        dest: DestId,
        local_host: &str,
        listing: &BTreeMap<String, Bucket>,
    ) -> Result<crate::pull::PullStats, CycleError> {
        let puller = crate::pull::Puller {
            source: &self.source,
            local_host,
            listing,
            upstream: self.upstream.as_ref(),
            tokens: self.tokens.as_ref(),
            store: &self.store,
            dest,
            settings: &self.settings.pull,
            clock: self.clock.as_ref(),
        };
        puller.run().await.map_err(|e| match e {
            crate::pull::PullError::Auth(e) => CycleError::Auth(e),
            crate::pull::PullError::Source(e) => self.source_failed(e),
            e => CycleError::Pull(e),
        })
    }
}

/// Aborts the uploader when a cycle is cancelled (shutdown), so nothing outlives it.
/// How many batches may be on the wire at once, and how many events the queue holds.
///
/// Held at once: the queue's events, the batches on the wire, and the next batch, filled while
/// they travel (it waits for room before it goes): together `offline_queue_size`, or two
/// batches and an event when that is less. The queue keeps at least a batch of it where it can
/// (three batches or more, which [`Settings`] makes sure of), or the reader would hand over a
/// few events at a time. A dry run's
/// sink answers at once, and its samples are the first events in read order: one batch at a
/// time.
fn upload_shape(s: &Settings) -> (usize, usize) {
    let batch = s.batch_size.max(1);
    let batches = s.queue_size / batch;
    let in_flight = if s.dry_run {
        1
    } else {
        s.upload_concurrency
            .clamp(1, batches.saturating_sub(2).max(1))
    };
    let queue = s.queue_size.saturating_sub((in_flight + 1) * batch).max(1);
    (in_flight, queue)
}

struct AbortOnDrop(tokio::task::JoinHandle<Result<UploadStats, UploadError>>);

impl AbortOnDrop {
    async fn join(mut self) -> Result<UploadStats, CycleError> {
        let handle = &mut self.0;
        match handle.await {
            Ok(r) => r.map_err(CycleError::from),
            Err(e) => Err(CycleError::State(StateError::Task(e.to_string()))),
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the upstream is told about each bucket a batch has events of.
fn bucket_metas<'a>(buckets: impl Iterator<Item = &'a Bucket>) -> BTreeMap<String, BucketMeta> {
    buckets
        .map(|b| {
            (
                b.id.clone(),
                BucketMeta {
                    bucket_type: b.bucket_type.clone(),
                    client: b.client.clone(),
                    hostname: b.hostname.clone(),
                    created: b
                        .created
                        .map(|c| c.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever the three keys say, the events held at once (the queue, the batches on the
    /// wire, the one filling) stay within `offline_queue_size` (two batches and an event when
    /// it is smaller), at least one batch travels, never more than `upload_concurrency`, and
    /// the queue keeps a batch of room whenever the size allows it.
    #[test]
    fn the_upload_shape_keeps_within_the_offline_queue() {
        let mut s = Settings::from_config(&crate::config::SyncConfig::default());
        for batch in [1, 7, 100, 500] {
            for batches in 1..12 {
                for extra in [0, 1, batch / 2] {
                    for concurrency in 1..=16 {
                        s.batch_size = batch;
                        s.queue_size = batches * batch + extra;
                        s.upload_concurrency = concurrency;
                        let (in_flight, queue) = upload_shape(&s);
                        let held = queue + (in_flight + 1) * batch;
                        let case = format!("{batch} {} {concurrency}", s.queue_size);
                        assert!((1..=concurrency).contains(&in_flight), "{case}");
                        assert!(held <= s.queue_size.max(2 * batch + 1), "{case}: {held}");
                        if batches >= 3 {
                            assert!(queue >= batch, "{case}: {queue}");
                        }
                    }
                }
            }
        }
        s.batch_size = 500;
        s.queue_size = 4000;
        s.upload_concurrency = 3;
        assert_eq!(upload_shape(&s), (3, 2000));
        // A batch of half the offline queue or more: the queue is raised to three batches, so
        // a whole batch queues while one travels and one fills.
        for batch_size in [1000, 2000, 5000] {
            let config = crate::config::SyncConfig {
                batch_size,
                ..Default::default()
            };
            let settings = Settings::from_config(&config);
            assert_eq!(settings.queue_size, 3 * batch_size);
            assert_eq!(upload_shape(&settings), (1, batch_size));
        }
        s.dry_run = true;
        assert_eq!(upload_shape(&s).0, 1, "a dry run sends one batch at a time");
    }
}
