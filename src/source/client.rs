//! Typed async client for aw-server's REST API.
//!
//! Shaped like aw-client-rust's current (unpublished) async API so the two stay easy to compare,
//! but with typed errors: the sync engine must tell "aw-server is down, retry later" apart from
//! "this bucket was deleted" and from "the server sent something we do not understand", and it
//! must never panic on anything that came over the wire.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use super::model::{Bucket, Event, ServerInfo};
use super::raw_page::{RawPage, KEPT_PAGE_BUFFERS};
use crate::http_body::BodyError;
use crate::memory::BufferPool;
use crate::printable::printable;

/// aw-server is local: if it cannot accept a connection within this, it is down or wedged.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Python aw-server reads ~6.7k events/s, so a large page can legitimately take tens of seconds.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How much of an error body to keep: Python aw-server in `--testing` answers a 500 with a whole
/// Werkzeug debugger page, which would otherwise flood the log.
const BODY_SNIPPET_CHARS: usize = 200;
/// The most of a small answer that is read (`/info`, a count, a deletion): they are tens of
/// bytes; an endless body there grew memory to 1.8 GB in 6 s (issue 11).
pub const MAX_SMALL_ANSWER: usize = 1024 * 1024;
/// The most of a bucket list or a page of events that is read. A page of `sync.page_size`
/// (default 1000) events is typically under a megabyte; one beyond this means the events are
/// huge or the page too large (`sync.page_size`), and is refused rather than buffered.
pub const MAX_DATA_ANSWER: usize = 256 * 1024 * 1024;
/// The most of an error answer that is read: enough for the snippet in the message.
const MAX_ERROR_ANSWER: usize = 64 * 1024;

/// Why a call to aw-server failed, typed so the caller can choose between retrying later,
/// forgetting a bucket, and reporting a bug.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// No answer: connection refused, reset or timed out. aw-server is probably not running
    /// (yet); retry later. The message names the URL once and the cause ("connection refused"),
    /// not reqwest's "error sending request for url (…)", which repeats the URL and hides why.
    #[error("no answer from aw-server at {url} ({})", short_cause(source))]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// Something answers on aw-server's port, but not as aw-server: `GET /api/0/info` got a 4xx
    /// or a body that is not aw-server's. Another program has the port (or `--port` is wrong);
    /// retrying will not help.
    #[error("the server at {url} is not aw-server ({detail}): is another program using this port? Pass --port with aw-server's port (or --testing for 5666)")]
    NotAwServer { url: String, detail: String },
    /// The bucket does not exist (any more): it was deleted, possibly mid-run, or the database
    /// was replaced.
    #[error("bucket {0:?} does not exist on aw-server")]
    BucketNotFound(String),
    /// An HTTP error status other than a missing bucket.
    #[error("aw-server answered {status} for {url}: {body}")]
    Status {
        status: u16,
        url: String,
        /// The start of the response body, truncated to about 200 characters.
        body: String,
    },
    /// A success status whose body is not the JSON we expect (a proxy page, a different server
    /// on the port, a format change).
    #[error("aw-server sent an unexpected body for {url}: {detail}")]
    Malformed { url: String, detail: String },
    /// The answer is longer than the most read for it ([`MAX_SMALL_ANSWER`],
    /// [`MAX_DATA_ANSWER`]); reading stopped there. Asking again gets the same; for a page of
    /// events, a smaller `limit` may fit.
    #[error("aw-server's answer for {url} is larger than {}, the most read; stopped reading it (for event pages: lower sync.page_size)", crate::http_body::describe_size(*.limit))]
    TooLarge { url: String, limit: usize },
    /// The client could not be built from the given host/port (or the TLS backend failed to
    /// initialise); retrying will not help.
    #[error("invalid aw-server client configuration: {detail}")]
    InvalidConfig { detail: String },
}

impl SourceError {
    /// Whether the same request may succeed later without anything changing on our side.
    ///
    /// Plain 500s are not transient: on both servers they come from a bug or a broken database
    /// and repeat deterministically. 502/503/504 (a proxy or a starting server) and 408/429 are.
    pub fn is_transient(&self) -> bool {
        match self {
            SourceError::Unreachable { .. } => true,
            SourceError::Status { status, .. } => matches!(status, 408 | 429 | 502 | 503 | 504),
            SourceError::BucketNotFound(_)
            | SourceError::NotAwServer { .. }
            | SourceError::Malformed { .. }
            | SourceError::TooLarge { .. }
            | SourceError::InvalidConfig { .. } => false,
        }
    }
}

/// The HTTP client for aw-server, keeping at most `idle` connections between requests.
fn http_client(idle: usize) -> Result<reqwest::Client, SourceError> {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(idle)
        .pool_idle_timeout(None)
        // aw-server is always local; an HTTP(S)_PROXY meant for the upstream must not capture
        // loopback traffic.
        .no_proxy()
        // aw-server is reached over plain HTTP only (`AwClient::new` makes `http://` URLs):
        // no certificates to trust. Loading the built-in ones cost every client built, and a
        // cycle builds one for its reads.
        .tls_built_in_root_certs(false)
        .user_agent(concat!("aw-sync-samay/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| SourceError::InvalidConfig {
            detail: format!("building the HTTP client: {e}"),
        })
}

/// A client for one aw-server. Cheap to clone: clones share the connection pool.
#[derive(Debug, Clone)]
pub struct AwClient {
    http: reqwest::Client,
    /// The client a cycle reads with (pages, counts, the bucket list, events by id): like
    /// `http`, but keeping one connection from a read to the next, built when a cycle first
    /// reads and dropped with the connection by [`AwClient::release_pages`] (shared by
    /// clones). An idle cycle's dozen reads each made and closed a connection before: a
    /// seventh of its CPU time in perf, mostly in the kernel.
    ///
    /// A 1M-event catch-up reads a page of a megabyte about 200 times, each on a new
    /// connection before: a connect and an accept per page, each transfer starting from TCP's
    /// initial window. Kept, over 16 catch-ups of each build in four alternating runs
    /// (`benches/catchup.rs`): 4.05 s mean wall time against 4.27 s, 1.17–2.18× the floor
    /// (median 1.50×) against 1.33–1.82× (median 1.59×); peak RSS 1.0 MiB higher on average
    /// (21.8–23.5 against 20.7–23.3 MiB).
    reads_http: Arc<Mutex<Option<reqwest::Client>>>,
    /// `http://host:port`, no trailing slash.
    base_url: String,
    api_key: Option<String>,
    /// Buffers of read pages, for the next pages (shared by clones; [`RawPage`]).
    page_buffers: BufferPool,
}

impl AwClient {
    /// `host` is used as is in the URL and therefore in the `Host` header: aw-server-rust
    /// answers 400 unless that is `127.0.0.1` or `localhost`, so pass one of those.
    pub fn new(host: &str, port: u16) -> Result<Self, SourceError> {
        if host.is_empty() || host.contains(['/', '?', '#', '@', ' ']) {
            return Err(SourceError::InvalidConfig {
                detail: format!("{host:?} is not a host name or address"),
            });
        }
        // A bare IPv6 address must be bracketed in a URL.
        let authority = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let base_url = format!("http://{authority}");
        url::Url::parse(&base_url).map_err(|e| SourceError::InvalidConfig {
            detail: format!("{base_url}: {e}"),
        })?;
        // No connection is kept between cycles. Python aw-server closes every connection
        // after its answer anyway (`Connection: close`); aw-server-rust (Rocket) keeps one open
        // for 5 s and then closes it, which would wake the idle daemon once per cycle, and a
        // pool with an idle timeout runs a reaper timer as long as it lives (issue 5: no
        // wakeups between cycles). Within a cycle its reads share one kept connection
        // (`reads_http`, released when the daemon goes idle); writes go on a new one each.
        let http = http_client(0)?;
        Ok(AwClient {
            http,
            reads_http: Arc::default(),
            base_url,
            api_key: None,
            page_buffers: BufferPool::new(KEPT_PAGE_BUFFERS),
        })
    }

    /// Frees the page buffers and the connection kept for reading. Call when going idle:
    /// nothing is left open that aw-server could close, waking the daemon. Pages being read
    /// keep their connection until they are read.
    pub fn release_pages(&self) {
        self.page_buffers.clear();
        *self.reads_http.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// A GET over the kept connection (pages, and every other read of a cycle). A kept
    /// connection can be closed by aw-server just as the request goes out (aw-server-rust
    /// closes one idle for 5 s, e.g. while the upload catches up): the request is sent once
    /// more, on a new connection, unless it timed out or the connection could not even be made
    /// (then aw-server is not there). Only reads: a write sent twice could be applied twice.
    async fn send_get(&self, url: &str) -> Result<reqwest::Response, SourceError> {
        let http = self.reads_http()?;
        match self.authorized(http.request(Method::GET, url)).send().await {
            Err(e) if !e.is_timeout() && !e.is_connect() => {
                tracing::debug!(
                    url,
                    "the kept connection failed ({e}); once more on a new one"
                );
                self.send(self.authorized(http.request(Method::GET, url)), url)
                    .await
            }
            sent => sent.map_err(|source| unreachable(url, source)),
        }
    }

    /// The client a cycle reads with, built again after a release.
    fn reads_http(&self) -> Result<reqwest::Client, SourceError> {
        let mut slot = self.reads_http.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(http) = slot.as_ref() {
            return Ok(http.clone());
        }
        // One idle connection, and no idle timeout (whose reaper timer would tick as long as
        // the client lives): the release drops it instead.
        let http = http_client(1)?;
        *slot = Some(http.clone());
        Ok(http)
    }

    /// aw-server-rust with `[auth] api_key` set refuses every endpoint but `/info` without
    /// `Authorization: Bearer <key>`; Python aw-server ignores the header.
    pub fn with_api_key(mut self, key: Option<String>) -> Self {
        self.api_key = key.filter(|k| !k.is_empty());
        self
    }

    /// `http://host:port`, for messages.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `GET /api/0/info`. Also the cheapest "is it up" probe, and the one that tells aw-server
    /// from another program on its port: both aw-servers answer it 200 with their info (even
    /// aw-server-rust with an API key), so a 4xx or a body that is not their info means the
    /// port belongs to something else ([`SourceError::NotAwServer`]). A 5xx stays a `Status`:
    /// that may be aw-server in trouble.
    pub async fn info(&self) -> Result<ServerInfo, SourceError> {
        let url = self.url(&["info"], &[]);
        let not_aw_server = |detail: String| SourceError::NotAwServer {
            url: self.base_url.clone(),
            detail,
        };
        let response = self.send_get(&url).await?;
        let status = response.status();
        if !status.is_success() {
            let bytes = read_error_body(response, &url).await?;
            if status.is_client_error() || status.is_redirection() {
                return Err(not_aw_server(format!("GET /api/0/info answered {status}")));
            }
            return Err(status_error(status, &url, &bytes));
        }
        let bytes = read_body(response, &url, MAX_SMALL_ANSWER).await?;
        serde_json::from_slice(&bytes).map_err(|_| {
            not_aw_server(format!(
                "GET /api/0/info answered something else than aw-server's info: \"{}\"",
                snippet(&bytes, 60)
            ))
        })
    }

    /// `GET /api/0/buckets/`, keyed by bucket id.
    pub async fn get_buckets(&self) -> Result<BTreeMap<String, Bucket>, SourceError> {
        // The trailing slash matters: Python aw-server redirects `/buckets` to `/buckets/`.
        let url = format!("{}/api/0/buckets/", self.base_url);
        let bytes = self.get_ok(&url, None, MAX_DATA_ANSWER).await?;
        parse(&url, &bytes)
    }

    /// `GET /api/0/buckets/{id}/events`, newest first. Both servers return only events that
    /// overlap `[start, end]`, **clipped** to it: never store a returned event as the original
    /// when a bound was given (see `get_event` for the unclipped row). `limit: None` means all.
    pub async fn get_events(
        &self,
        bucket_id: &str,
        start: Option<DateTime<Utc>>,
        end: Option<DateTime<Utc>>,
        limit: Option<u64>,
    ) -> Result<Vec<Event>, SourceError> {
        self.get_events_as(bucket_id, start, end, limit).await
    }

    /// [`AwClient::get_events`] into any event type: the scan reads [`PageEvent`](super::PageEvent)s, which keep
    /// each event's data as text.
    pub async fn get_events_as<T: DeserializeOwned>(
        &self,
        bucket_id: &str,
        start: Option<DateTime<Utc>>,
        end: Option<DateTime<Utc>>,
        limit: Option<u64>,
    ) -> Result<Vec<T>, SourceError> {
        self.get_events_raw(bucket_id, start, end, limit)
            .await?
            .parse_as()
    }

    /// [`AwClient::get_events`] as sent, not parsed yet ([`RawPage`]).
    pub async fn get_events_raw(
        &self,
        bucket_id: &str,
        start: Option<DateTime<Utc>>,
        end: Option<DateTime<Utc>>,
        limit: Option<u64>,
    ) -> Result<RawPage, SourceError> {
        let start = start.map(format_timestamp);
        let end = end.map(format_timestamp);
        let limit = limit.map(|l| l.to_string());
        let mut query: Vec<(&str, &str)> = Vec::with_capacity(3);
        if let Some(s) = &start {
            query.push(("start", s));
        }
        if let Some(e) = &end {
            query.push(("end", e));
        }
        if let Some(l) = &limit {
            query.push(("limit", l));
        }
        let url = self.url(&["buckets", bucket_id, "events"], &query);
        let response = self.send_get(&url).await?;
        let status = response.status();
        if !status.is_success() {
            let bytes = read_error_body(response, &url).await?;
            return Err(error_answer(status, &url, Some(bucket_id), &bytes));
        }
        let buffer = self.page_buffers.take();
        let bytes = read_body_into(response, &url, MAX_DATA_ANSWER, buffer).await?;
        Ok(RawPage::new(url, bytes, Some(self.page_buffers.clone())))
    }

    /// One event by id, unclipped. `Ok(None)` when the bucket exists but the event does not.
    ///
    /// Python aw-server answers a missing event with 404 and body `null`, and a missing bucket
    /// with 404 and "There's no bucket named ..."; the body tells the two apart.
    /// aw-server-rust (at least up to 59eaae3) answers a missing event with **500** and an
    /// internal error message. That could not be verified here, so it is reported as
    /// `SourceError::Status { status: 500, .. }` rather than guessed to be `None`.
    pub async fn get_event(&self, bucket_id: &str, id: i64) -> Result<Option<Event>, SourceError> {
        self.get_event_as(bucket_id, id).await
    }

    /// [`AwClient::get_event`] into any event type: a [`PageEvent`](super::PageEvent) keeps the
    /// data as text, so an event whose data nests deeper than serde_json parses into a map is
    /// still read (and can be quarantined by the caller) instead of failing the request.
    pub async fn get_event_as<T: DeserializeOwned>(
        &self,
        bucket_id: &str,
        id: i64,
    ) -> Result<Option<T>, SourceError> {
        let url = self.url(&["buckets", bucket_id, "events", &id.to_string()], &[]);
        let response = self.send_get(&url).await?;
        let status = response.status();
        if !status.is_success() {
            let bytes = read_error_body(response, &url).await?;
            if status == StatusCode::NOT_FOUND {
                if says_no_such_bucket(&bytes) {
                    return Err(SourceError::BucketNotFound(bucket_id.to_owned()));
                }
                return Ok(None);
            }
            return Err(status_error(status, &url, &bytes));
        }
        let bytes = read_body(response, &url, MAX_DATA_ANSWER).await?;
        // A 200 with `null` is what "absent" would look like if a server stopped using 404.
        parse::<Option<T>>(&url, &bytes)
    }

    /// `GET /api/0/buckets/{id}/events/count`: every event in the bucket.
    pub async fn event_count(&self, bucket_id: &str) -> Result<u64, SourceError> {
        self.event_count_in(bucket_id, None).await
    }

    /// `GET .../events/count` with `start`/`end` when `range` is given. Python aw-server counts
    /// the events overlapping the range (with its 24 h pre-filter); aw-server-rust ignores the
    /// range and counts the whole bucket.
    pub async fn event_count_in(
        &self,
        bucket_id: &str,
        range: Option<(DateTime<Utc>, DateTime<Utc>)>,
    ) -> Result<u64, SourceError> {
        let bounds = range.map(|(s, e)| (format_timestamp(s), format_timestamp(e)));
        let query: Vec<(&str, &str)> = match &bounds {
            Some((s, e)) => vec![("start", s), ("end", e)],
            None => Vec::new(),
        };
        let url = self.url(&["buckets", bucket_id, "events", "count"], &query);
        let bytes = self.get_ok(&url, Some(bucket_id), MAX_SMALL_ANSWER).await?;
        parse(&url, &bytes)
    }

    /// `POST /api/0/query/` computing `sum_durations(query_bucket(bucket))` for each period in
    /// one request: the clipped durations of the events overlapping each, in seconds.
    /// aw-server-rust answers it; Python aw-server 0.12 fails to serialise the result (500).
    pub async fn sum_durations(
        &self,
        bucket_id: &str,
        periods: &[(DateTime<Utc>, DateTime<Utc>)],
    ) -> Result<Vec<f64>, SourceError> {
        let url = format!("{}/api/0/query/", self.base_url);
        // The query language's strings have no documented escapes: an id that would need one
        // is not asked about (the caller falls back to reading).
        if bucket_id.contains(['"', '\\', '\n', '\r']) {
            return Err(SourceError::Malformed {
                url,
                detail: format!("bucket id {bucket_id:?} cannot be quoted in a query"),
            });
        }
        let body = serde_json::json!({
            "query": [format!("events = query_bucket(\"{bucket_id}\");"), "RETURN = sum_durations(events);"],
            "timeperiods": periods
                .iter()
                .map(|(s, e)| format!("{}/{}", format_timestamp(*s), format_timestamp(*e)))
                .collect::<Vec<_>>(),
        });
        let bytes = self
            .send_ok(
                self.request(Method::POST, &url).json(&body),
                &url,
                None,
                MAX_SMALL_ANSWER,
            )
            .await?;
        let sums: Vec<f64> = parse(&url, &bytes)?;
        if sums.len() != periods.len() {
            return Err(SourceError::Malformed {
                url,
                detail: format!("{} results for {} timeperiods", sums.len(), periods.len()),
            });
        }
        Ok(sums)
    }

    /// `POST /api/0/buckets/{id}`. Returns `true` if created, `false` if it already existed
    /// (both servers answer 304 then, and leave the existing bucket untouched).
    pub async fn create_bucket(
        &self,
        bucket_id: &str,
        bucket_type: &str,
        client: &str,
        hostname: &str,
    ) -> Result<bool, SourceError> {
        #[derive(Serialize)]
        struct NewBucket<'a> {
            id: &'a str,
            #[serde(rename = "type")]
            bucket_type: &'a str,
            client: &'a str,
            hostname: &'a str,
        }
        let url = self.url(&["buckets", bucket_id], &[]);
        let body = NewBucket {
            id: bucket_id,
            bucket_type,
            client,
            hostname,
        };
        let response = self
            .send(self.request(Method::POST, &url).json(&body), &url)
            .await?;
        let status = response.status();
        if status == StatusCode::NOT_MODIFIED {
            return Ok(false);
        }
        if !status.is_success() {
            let bytes = read_error_body(response, &url).await?;
            return Err(status_error(status, &url, &bytes));
        }
        read_body(response, &url, MAX_SMALL_ANSWER).await?;
        Ok(true)
    }

    /// `POST /api/0/buckets/{id}/events`. Ids are stripped first: a POSTed event that carries
    /// an `id` REPLACES that row on both servers, even a row in another bucket.
    pub async fn insert_events(
        &self,
        bucket_id: &str,
        events: &[Event],
    ) -> Result<(), SourceError> {
        let url = self.url(&["buckets", bucket_id, "events"], &[]);
        let body: Vec<NewEvent<'_>> = events.iter().map(NewEvent::from).collect();
        // Python answers `null`, aw-server-rust the inserted events: neither is needed.
        self.send_ok(
            self.request(Method::POST, &url).json(&body),
            &url,
            Some(bucket_id),
            MAX_DATA_ANSWER,
        )
        .await?;
        Ok(())
    }

    /// `POST /api/0/buckets/{id}/heartbeat?pulsetime=S`. Returns the stored event: the merged
    /// one (same id, longer duration) when the server merged, else the newly inserted one.
    /// The id is stripped for the same reason as in `insert_events`.
    pub async fn heartbeat(
        &self,
        bucket_id: &str,
        event: &Event,
        pulsetime: f64,
    ) -> Result<Event, SourceError> {
        let pulsetime = pulsetime.to_string();
        let url = self.url(
            &["buckets", bucket_id, "heartbeat"],
            &[("pulsetime", &pulsetime)],
        );
        let bytes = self
            .send_ok(
                self.request(Method::POST, &url)
                    .json(&NewEvent::from(event)),
                &url,
                Some(bucket_id),
                MAX_DATA_ANSWER,
            )
            .await?;
        parse(&url, &bytes)
    }

    /// `DELETE /api/0/buckets/{id}/events/{event_id}`. Deleting an id that does not exist is
    /// not an error on Python aw-server (it answers `{"success": 0}`).
    pub async fn delete_event(&self, bucket_id: &str, id: i64) -> Result<(), SourceError> {
        let url = self.url(&["buckets", bucket_id, "events", &id.to_string()], &[]);
        self.delete(&url, bucket_id).await
    }

    /// `DELETE /api/0/buckets/{id}?force=1`: outside testing mode both servers refuse without
    /// `force`.
    pub async fn delete_bucket(&self, bucket_id: &str) -> Result<(), SourceError> {
        let url = self.url(&["buckets", bucket_id], &[("force", "1")]);
        self.delete(&url, bucket_id).await
    }

    async fn delete(&self, url: &str, bucket_id: &str) -> Result<(), SourceError> {
        let request = self.request(Method::DELETE, url);
        self.send_ok(request, url, Some(bucket_id), MAX_SMALL_ANSWER)
            .await?;
        Ok(())
    }

    pub(super) fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> String {
        let mut url = format!("{}/api/0", self.base_url);
        for segment in segments {
            url.push('/');
            push_path_segment(&mut url, segment);
        }
        if !query.is_empty() {
            url.push('?');
            url.push_str(
                &url::form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(query)
                    .finish(),
            );
        }
        url
    }

    pub(super) fn request(&self, method: Method, url: &str) -> RequestBuilder {
        self.authorized(self.http.request(method, url))
    }

    fn authorized(&self, builder: RequestBuilder) -> RequestBuilder {
        match &self.api_key {
            Some(key) => builder.bearer_auth(key),
            None => builder,
        }
    }

    async fn send(
        &self,
        builder: RequestBuilder,
        url: &str,
    ) -> Result<reqwest::Response, SourceError> {
        builder
            .send()
            .await
            .map_err(|source| unreachable(url, source))
    }

    /// Sends, requires a 2xx and returns the whole body, of at most `limit` bytes. A 404 on a
    /// bucket-scoped endpoint (`bucket` is set) is `BucketNotFound`.
    pub(super) async fn send_ok(
        &self,
        builder: RequestBuilder,
        url: &str,
        bucket: Option<&str>,
        limit: usize,
    ) -> Result<Vec<u8>, SourceError> {
        let response = self.send(builder, url).await?;
        ok_body(response, url, bucket, limit).await
    }

    /// [`AwClient::send_ok`] of a GET, over the kept connection ([`AwClient::send_get`]).
    async fn get_ok(
        &self,
        url: &str,
        bucket: Option<&str>,
        limit: usize,
    ) -> Result<Vec<u8>, SourceError> {
        let response = self.send_get(url).await?;
        ok_body(response, url, bucket, limit).await
    }
}

/// The whole body of a 2xx answer, of at most `limit` bytes; otherwise the error it says.
async fn ok_body(
    response: reqwest::Response,
    url: &str,
    bucket: Option<&str>,
    limit: usize,
) -> Result<Vec<u8>, SourceError> {
    let status = response.status();
    if status.is_success() {
        return read_body(response, url, limit).await;
    }
    let bytes = read_error_body(response, url).await?;
    Err(error_answer(status, url, bucket, &bytes))
}

/// A non-2xx answer: a 404 on a bucket-scoped endpoint (`bucket` is set) is `BucketNotFound`.
fn error_answer(status: StatusCode, url: &str, bucket: Option<&str>, body: &[u8]) -> SourceError {
    match bucket {
        Some(id) if status == StatusCode::NOT_FOUND => SourceError::BucketNotFound(id.to_owned()),
        _ => status_error(status, url, body),
    }
}

/// An event as POSTed: never with an id (see `insert_events`).
#[derive(Serialize)]
struct NewEvent<'a> {
    timestamp: &'a DateTime<Utc>,
    duration: f64,
    data: &'a Map<String, Value>,
}

impl<'a> From<&'a Event> for NewEvent<'a> {
    fn from(e: &'a Event) -> Self {
        NewEvent {
            timestamp: &e.timestamp,
            duration: e.duration,
            data: &e.data,
        }
    }
}

/// RFC 3339 in UTC with `Z` and microseconds, truncated. `Z` because an unencoded `+00:00`
/// turns into a space and is refused; microseconds because that is Python aw-server's
/// precision (it truncates further, to milliseconds, when storing).
pub(crate) fn format_timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Percent-encodes everything but RFC 3986 unreserved characters, so a bucket id is always one
/// path segment. `.` and `..` are encoded too: left bare, they would be resolved as dot
/// segments and address another resource.
fn push_path_segment(out: &mut String, segment: &str) {
    let dots_only = !segment.is_empty() && segment.bytes().all(|b| b == b'.');
    for b in segment.bytes() {
        let unreserved = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~' | b'.');
        if unreserved && !(dots_only && b == b'.') {
            out.push(b as char);
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// Why a request got no answer, in a few words: "connection refused", "timed out",
/// "connection reset", else the innermost error's own words (without a URL, which the message
/// around it names).
pub fn short_cause(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    if e.is_timeout() {
        return "timed out".into();
    }
    let mut innermost: Option<&(dyn std::error::Error + 'static)> = None;
    let mut next = e.source();
    while let Some(err) = next {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            match io.kind() {
                ConnectionRefused => return "connection refused".into(),
                ConnectionReset => return "connection reset".into(),
                ConnectionAborted => return "connection aborted".into(),
                TimedOut => return "timed out".into(),
                _ => {}
            }
        }
        innermost = Some(err);
        next = err.source();
    }
    match innermost {
        Some(err) => err.to_string(),
        None => e.to_string(),
    }
}

fn unreachable(url: &str, source: reqwest::Error) -> SourceError {
    SourceError::Unreachable {
        url: url.to_owned(),
        source,
    }
}

/// The whole body, at most `limit` bytes ([`crate::http_body`]), then parsed with `from_slice`
/// (the fastest path for large pages). A body that stops mid-way means the connection broke
/// (server killed): that is the same situation as not reaching it at all.
async fn read_body(
    response: reqwest::Response,
    url: &str,
    limit: usize,
) -> Result<Vec<u8>, SourceError> {
    read_body_into(response, url, limit, Vec::new()).await
}

/// [`read_body`] into `buffer` (its capacity reused).
async fn read_body_into(
    response: reqwest::Response,
    url: &str,
    limit: usize,
    buffer: Vec<u8>,
) -> Result<Vec<u8>, SourceError> {
    crate::http_body::read_capped_into(response, limit, buffer)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge { limit } => SourceError::TooLarge {
                url: url.to_owned(),
                limit,
            },
            BodyError::Read(e) => unreachable(url, e),
        })
}

/// The start of an error answer: enough to classify it and quote it.
async fn read_error_body(response: reqwest::Response, url: &str) -> Result<Vec<u8>, SourceError> {
    crate::http_body::read_prefix(response, MAX_ERROR_ANSWER)
        .await
        .map(|prefix| prefix.bytes)
        .map_err(|e| unreachable(url, e))
}

fn status_error(status: StatusCode, url: &str, body: &[u8]) -> SourceError {
    SourceError::Status {
        status: status.as_u16(),
        url: url.to_owned(),
        body: snippet(body, BODY_SNIPPET_CHARS),
    }
}

/// The first `max` characters of a body, lossily decoded, with an ellipsis when cut, through
/// the printable filter: it is quoted in messages that reach the terminal and the log.
/// At most `max` characters of `body` as shown: cut after escaping, since one control byte
/// becomes up to ten characters (`\u{10ffff}`) and a body of them would otherwise make a
/// message many times longer than meant.
fn snippet(body: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(body);
    let shown = printable(text.trim());
    match shown.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &shown[..cut]),
        None => shown.into_owned(),
    }
}

/// Whether a 404 body says the *bucket* is missing (as opposed to an event in it).
/// Python: "There's no bucket named X"; aw-server-rust: "The requested bucket 'X' does not
/// exist" (its newer missing-event message says "...does not exist in bucket", which must
/// not match).
fn says_no_such_bucket(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(body).to_ascii_lowercase();
    text.contains("no bucket named") || text.contains("requested bucket")
}

/// An answer parsed, or [`SourceError::Malformed`] saying where and what came instead.
pub(super) fn parse<T: DeserializeOwned>(url: &str, bytes: &[u8]) -> Result<T, SourceError> {
    // Checked as UTF-8 once, in one pass, instead of string by string and event by event
    // (serde_json re-checks each string and each event's data when it reads bytes: 2 % of a
    // 1M-event catch-up's CPU, perf). A body that is not UTF-8 is read as bytes, so serde says
    // where it goes wrong, as before.
    let parsed = match std::str::from_utf8(bytes) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(bytes),
    };
    parsed.map_err(|e| SourceError::Malformed {
        url: url.to_owned(),
        // serde's message carries line and column; the snippet shows what came instead.
        detail: format!(
            "{}; body starts with {:?}",
            serde_message(&e),
            snippet(bytes, 80)
        ),
    })
}

/// serde's message, capped: it quotes a mistyped string value whole, and a window title where
/// a number belongs must not turn into a log line of thousands of characters. The position is
/// kept when the cut removed it.
fn serde_message(e: &serde_json::Error) -> String {
    const MAX_CHARS: usize = 200;
    let text = e.to_string();
    match text.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => format!(
            "{}… at line {} column {}",
            printable(&text[..cut]),
            e.line(),
            e.column()
        ),
        None => printable(&text).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeDelta, TimeZone};

    /// Control bytes are shown escaped, and the escaped text is what is capped (a fuzz case:
    /// 60 control characters made a 265-character "not aw-server" detail).
    #[test]
    fn a_snippet_is_capped_as_shown() {
        let body = vec![0x01u8; 500];
        let shown = snippet(&body, 60);
        assert_eq!(shown.chars().count(), 61, "{shown}");
        assert!(
            shown.starts_with("\\u{1}") && shown.ends_with('…'),
            "{shown}"
        );
        assert_eq!(snippet(b"  short  ", 60), "short");
    }

    #[test]
    fn timestamps_are_utc_z_with_truncated_microseconds() {
        let t = Utc
            .with_ymd_and_hms(2024, 1, 1, 12, 0, 0)
            .single()
            .expect("valid")
            + TimeDelta::nanoseconds(123_456_999);
        assert_eq!(format_timestamp(t), "2024-01-01T12:00:00.123456Z");
        let whole = Utc
            .with_ymd_and_hms(2024, 1, 1, 12, 0, 0)
            .single()
            .expect("valid");
        assert_eq!(format_timestamp(whole), "2024-01-01T12:00:00.000000Z");
    }

    #[test]
    fn bucket_ids_become_one_path_segment() {
        let c = AwClient::new("127.0.0.1", 5600).expect("client");
        assert_eq!(
            c.url(&["buckets", "aw-watcher-window_my.host-1", "events"], &[]),
            "http://127.0.0.1:5600/api/0/buckets/aw-watcher-window_my.host-1/events"
        );
        assert_eq!(
            c.url(&["buckets", "a/b c?d#e%f"], &[]),
            "http://127.0.0.1:5600/api/0/buckets/a%2Fb%20c%3Fd%23e%25f"
        );
        assert_eq!(
            c.url(&["buckets", ".."], &[]),
            "http://127.0.0.1:5600/api/0/buckets/%2E%2E"
        );
        assert_eq!(
            c.url(&["buckets", "ü"], &[]),
            "http://127.0.0.1:5600/api/0/buckets/%C3%BC"
        );
    }

    #[test]
    fn query_values_are_encoded() {
        let c = AwClient::new("localhost", 5666).expect("client");
        assert_eq!(
            c.url(&["x"], &[("start", "2024-01-01T12:00:00.000000+00:00")]),
            "http://localhost:5666/api/0/x?start=2024-01-01T12%3A00%3A00.000000%2B00%3A00"
        );
    }

    #[test]
    fn ipv6_hosts_are_bracketed_and_bad_hosts_refused() {
        let c = AwClient::new("::1", 5600).expect("client");
        assert_eq!(c.base_url(), "http://[::1]:5600");
        assert!(matches!(
            AwClient::new("evil.com/x", 1),
            Err(SourceError::InvalidConfig { .. })
        ));
        assert!(matches!(
            AwClient::new("", 1),
            Err(SourceError::InvalidConfig { .. })
        ));
    }

    #[test]
    fn snippets_are_truncated_on_char_boundaries() {
        let body = "é".repeat(500);
        let s = snippet(body.as_bytes(), 200);
        assert_eq!(s.chars().count(), 201);
        assert!(s.ends_with('…'));
        assert_eq!(snippet(b"short", 200), "short");
    }

    #[test]
    fn missing_bucket_bodies_are_told_from_missing_event_bodies() {
        assert!(says_no_such_bucket(
            br#"{"message": "There's no bucket named b1. You have requested this URI"}"#
        ));
        assert!(says_no_such_bucket(
            br#"{"message":"The requested bucket 'b1' does not exist"}"#
        ));
        assert!(!says_no_such_bucket(b"null"));
        assert!(!says_no_such_bucket(
            br#"{"message":"The requested event '5' does not exist in bucket 'b1'"}"#
        ));
    }

    #[test]
    fn transient_classification() {
        let status = |s| SourceError::Status {
            status: s,
            url: String::new(),
            body: String::new(),
        };
        assert!(status(503).is_transient());
        assert!(!status(500).is_transient());
        assert!(!status(400).is_transient());
        assert!(!SourceError::BucketNotFound("b".into()).is_transient());
    }

    #[test]
    fn malformed_bodies_report_serde_position() {
        let err = parse::<Vec<Event>>("u", b"[{\"id\": 1,}]").expect_err("malformed");
        match err {
            SourceError::Malformed { detail, .. } => {
                assert!(detail.contains("line 1 column"), "{detail}");
            }
            other => panic!("expected Malformed, got {other:?}"),
        }
    }
}

/// Property tests of what the client makes of aw-server's bodies; the model types are fuzzed
/// through their public entry points in `tests/faults/fuzz_parsers.rs`.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(crate::proptest_config(256))]

        #[test]
        fn snippets_are_capped_prefixes_of_the_printable_trimmed_body(
            body in proptest::collection::vec(any::<u8>(), 0..600),
            max in 0usize..250,
        ) {
            let s = snippet(&body, max);
            let text = String::from_utf8_lossy(&body);
            let text = text.trim();
            prop_assert!(!s.chars().any(char::is_control), "{:?}", s);
            prop_assert!(s.chars().count() <= max + 1, "{:?}", s);
            let shown = printable(text).into_owned();
            if shown.chars().count() > max {
                let head: String = shown.chars().take(max).collect();
                prop_assert_eq!(s, format!("{}…", head));
            } else {
                prop_assert_eq!(s, shown);
            }
        }

        #[test]
        fn any_body_parses_or_is_malformed_with_a_short_excerpt(
            body in proptest::collection::vec(any::<u8>(), 0..2000),
        ) {
            for result in [
                parse::<Vec<Event>>("u", &body).map(|_| ()),
                parse::<BTreeMap<String, Bucket>>("u", &body).map(|_| ()),
                parse::<ServerInfo>("u", &body).map(|_| ()),
                parse::<Option<Event>>("u", &body).map(|_| ()),
                parse::<u64>("u", &body).map(|_| ()),
            ] {
                match result {
                    Ok(()) => {}
                    Err(SourceError::Malformed { detail, .. }) => {
                        // serde's capped message and an 80-character excerpt (each character
                        // at most 10 once escaped), never the whole body.
                        prop_assert!(detail.chars().count() < 260 + 810, "{}", detail.len());
                    }
                    Err(other) => prop_assert!(false, "not Malformed: {other:?}"),
                }
            }
        }

    }

    proptest! {
        // Long generated strings: fewer cases keep it quick.
        #![proptest_config(crate::proptest_config(32))]

        #[test]
        fn a_mistyped_long_value_is_not_quoted_whole(
            value in "[a-z]{500,3000}",
            shape in 0usize..4,
        ) {
            // serde quotes a mistyped string in its message: a 3000-character title where a
            // number belongs would otherwise land whole in the log line.
            let body = match shape {
                0 => format!(r#"["{value}"]"#),
                1 => format!(r#"[{{"timestamp":"{value}","duration":1,"data":{{}}}}]"#),
                2 => format!(r#"[{{"timestamp":"2024-01-01T00:00:00Z","duration":"{value}","data":{{}}}}]"#),
                _ => format!(r#"[{{"timestamp":"2024-01-01T00:00:00Z","duration":1,"data":"{value}"}}]"#),
            };
            match parse::<Vec<Event>>("u", body.as_bytes()) {
                Err(SourceError::Malformed { detail, .. }) => {
                    prop_assert!(detail.chars().count() < 260 + 810, "{} chars", detail.chars().count());
                    prop_assert!(detail.contains(" at line 1 column "), "{}", detail);
                }
                other => prop_assert!(false, "not Malformed: {other:?}"),
            }
        }

    }

    proptest! {
        #![proptest_config(crate::proptest_config(256))]

        #[test]
        fn a_404_names_a_missing_bucket_only_when_it_says_so(
            prefix in "[ -~]{0,30}",
            suffix in "[ -~]{0,30}",
            id in "[a-z0-9_-]{1,12}",
        ) {
            let python = format!("{prefix}There's no bucket named {id}{suffix}");
            let rust = format!("{prefix}The requested bucket '{id}' does not exist{suffix}");
            prop_assert!(says_no_such_bucket(python.as_bytes()));
            prop_assert!(says_no_such_bucket(rust.as_bytes()));
            let event = format!("The requested event '{id}' does not exist in bucket '{id}'");
            prop_assert!(!says_no_such_bucket(event.as_bytes()));
        }
    }
}
