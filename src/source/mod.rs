//! The ActivityWatch side: a small typed async client for aw-server's REST API.
//!
//! crates.io only has aw-client-rust 0.1.0 (reqwest 0.10, blocking, no start/end/limit), so this
//! module is shaped like aw-client-rust's current (unpublished) API instead of depending on it.

mod client;
pub mod model;
mod raw_page;
mod write;

pub use client::{short_cause, AwClient, SourceError, MAX_DATA_ANSWER, MAX_SMALL_ANSWER};
pub use model::{object_to_raw, Bucket, BucketSpan, Event, PageEvent, ServerInfo};
pub(crate) use raw_page::string_end as json_string_end;
pub use raw_page::{RawPage, Tail};

use crate::auth::BoxFuture;

/// One range read: events overlapping `[start, end]` (nanoseconds; `None`: unbounded), newest
/// first, at most `limit`. The scan passes whole microseconds: both servers take them, and
/// Python aw-server keeps no more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageQuery {
    pub start: Option<i64>,
    pub end: Option<i64>,
    pub limit: u64,
}

/// What the scan reads from aw-server — the twin of [`crate::upstream::BatchSink`] on the
/// source side. [`AwClient`] is the real one; the scan's unit tests put a scripted source here.
pub trait EventSource: Send + Sync {
    /// Events overlapping the range, newest first, clipped to it (see [`AwClient::get_events`]),
    /// as sent: the scan reads a page's last events before it parses the rest. The answer
    /// owns what it needs (`'static`): the scan reads each page in a task of its own, so the
    /// next page travels and aw-server answers it while this one is processed.
    fn page_raw(
        &self,
        bucket: &str,
        query: PageQuery,
    ) -> BoxFuture<'static, Result<RawPage, SourceError>>;

    /// This source as an owned handle: a page's reading task asks for the next page itself,
    /// as soon as the page's last events say which that is, without waiting for the scan.
    fn owned(&self) -> std::sync::Arc<dyn EventSource>;

    /// [`EventSource::page_raw`], parsed.
    fn page<'a>(
        &'a self,
        bucket: &'a str,
        query: PageQuery,
    ) -> BoxFuture<'a, Result<Vec<PageEvent>, SourceError>> {
        Box::pin(async move { self.page_raw(bucket, query).await?.parse() })
    }

    /// One event, unclipped; `None` when the bucket has no such event. Its data stays text,
    /// as in a page, so an event nested too deep to parse is still read (and quarantined).
    fn event<'a>(
        &'a self,
        bucket: &'a str,
        id: i64,
    ) -> BoxFuture<'a, Result<Option<PageEvent>, SourceError>>;

    /// `GET .../events/count`, over `range` when given (Python aw-server honours it,
    /// aw-server-rust counts the whole bucket whatever the request says).
    fn count<'a>(
        &'a self,
        bucket: &'a str,
        range: Option<(i64, i64)>,
    ) -> BoxFuture<'a, Result<u64, SourceError>>;

    /// The query API's `sum_durations(query_bucket(bucket))` for each `[start, end]`, in one
    /// request; seconds.
    fn sum_durations<'a>(
        &'a self,
        bucket: &'a str,
        periods: &'a [(i64, i64)],
    ) -> BoxFuture<'a, Result<Vec<f64>, SourceError>>;
}

fn at(ns: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::<chrono::Utc>::from_timestamp_nanos(ns)
}

impl EventSource for AwClient {
    fn page_raw(
        &self,
        bucket: &str,
        q: PageQuery,
    ) -> BoxFuture<'static, Result<RawPage, SourceError>> {
        // A clone shares the connection pool and the page buffers.
        let client = self.clone();
        let bucket = bucket.to_owned();
        Box::pin(async move {
            client
                .get_events_raw(&bucket, q.start.map(at), q.end.map(at), Some(q.limit))
                .await
        })
    }

    fn owned(&self) -> std::sync::Arc<dyn EventSource> {
        // A clone shares the connection pool and the page buffers.
        std::sync::Arc::new(self.clone())
    }

    fn event<'a>(
        &'a self,
        bucket: &'a str,
        id: i64,
    ) -> BoxFuture<'a, Result<Option<PageEvent>, SourceError>> {
        Box::pin(self.get_event_as(bucket, id))
    }

    fn count<'a>(
        &'a self,
        bucket: &'a str,
        range: Option<(i64, i64)>,
    ) -> BoxFuture<'a, Result<u64, SourceError>> {
        Box::pin(self.event_count_in(bucket, range.map(|(s, e)| (at(s), at(e)))))
    }

    fn sum_durations<'a>(
        &'a self,
        bucket: &'a str,
        periods: &'a [(i64, i64)],
    ) -> BoxFuture<'a, Result<Vec<f64>, SourceError>> {
        Box::pin(async move {
            let periods: Vec<_> = periods.iter().map(|&(s, e)| (at(s), at(e))).collect();
            self.sum_durations(bucket, &periods).await
        })
    }
}
