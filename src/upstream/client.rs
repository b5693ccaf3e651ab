//! HTTP client for the upstream batch API (`docs/upstream-api.md`).
//!
//! One call is one attempt: the engine owns retries, backoff, token refresh and batch splitting,
//! so this module's job is to turn every possible answer into an [`UpstreamError`] variant that
//! tells the engine which of those to do. Nothing here trusts the upstream: bodies are read with a
//! bound, `rejected` indexes are range-checked, and redirects are not followed (a redirect would
//! either drop the bearer token or send it somewhere we did not configure).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use flate2::write::DeflateEncoder;
use flate2::{Compression, CrcWriter};
use reqwest::header::{
    HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER,
};
use reqwest::{redirect, StatusCode};
use url::Url;

use super::batch::BatchBody;
use super::contract::{BatchResponse, ErrorResponse, MeResponse, BATCH_PATH, HEALTH_PATH, ME_PATH};
use crate::auth::AccessToken;
use crate::memory::BufferPool;
use crate::printable::printable;
use crate::retry::{transient_status, Transient};

/// Header carrying the batch id, so a backend can answer a replay without parsing the body.
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// The most of an answer's body we read. Real answers are tiny; a misconfigured proxy may send
/// an HTML page, and a hostile one an endless stream.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// The most of an upstream's error text we keep in an error message (logs, `--status`).
const MAX_MESSAGE_CHARS: usize = 300;
/// Connect timeout cap: a dead host should fail fast even when the request timeout is generous.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a batch was not delivered, shaped by what the caller should do next.
///
/// Messages never contain the bearer token: it is not formatted anywhere here, and text coming
/// from the upstream is scrubbed of it in case a backend echoes the `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// No HTTP answer: connect error, reset, closed connection, timeout. Retry with backoff; the
    /// batch may or may not have been stored, which the `Idempotency-Key` makes harmless.
    #[error("upstream unreachable: {0}")]
    Network(String),
    /// 401: the token is missing, wrong or expired. Refresh the token once, then give up.
    #[error("upstream refused the token (401)")]
    Unauthorized,
    /// 408, 429, 5xx except 501: the upstream is overloaded or broken for now. Retry, waiting at
    /// least `retry_after` when the upstream said so.
    #[error("upstream answered {status}; retry later{}", fmt_retry_after(.retry_after))]
    Retryable {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// 413: the body is too large. Split the batch.
    #[error("upstream refused the batch as too large (413); split it")]
    TooLarge,
    /// 400/422: the upstream refuses the batch and stored nothing of it. `rejected` holds the
    /// in-range indexes into `events` of the events it blames (deduplicated, sorted), or `None`
    /// when it named none: isolate those events and resend the rest.
    #[error("upstream rejected the batch ({status}): {message}")]
    Rejected {
        status: u16,
        message: String,
        rejected: Option<Vec<usize>>,
    },
    /// Any other 4xx, 501, or a redirect: retrying the same request will not help; a human must
    /// look (wrong base_url, wrong API version, ...).
    #[error("upstream answered {status}: {message}")]
    Fatal { status: u16, message: String },
    /// A 2xx whose body is not a `BatchResponse` (a proxy's page, a truncated body). The batch
    /// may have been stored; retry, and the `Idempotency-Key` makes that harmless.
    #[error("upstream answered 2xx with an unreadable body: {0}")]
    Malformed(String),
    /// The client could not be built (bad base_url, TLS backend failure). Not a delivery
    /// outcome: only [`UpstreamClient::new`] returns it.
    #[error("upstream client configuration: {0}")]
    Config(String),
}

fn fmt_retry_after(retry_after: &Option<Duration>) -> String {
    match retry_after {
        Some(d) => format!(" (Retry-After {}s)", d.as_secs()),
        None => String::new(),
    }
}

impl UpstreamError {
    /// Whether sending the same batch again later can succeed as is (after a backoff).
    /// `Unauthorized` and `TooLarge` are not: they need a new token or a split first.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Network(_) | Self::Retryable { .. } | Self::Malformed(_)
        )
    }

    /// The wait the upstream asked for (429/503 `Retry-After`), if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Retryable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The HTTP status behind the error, when there was an answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Unauthorized => Some(401),
            Self::TooLarge => Some(413),
            Self::Retryable { status, .. }
            | Self::Rejected { status, .. }
            | Self::Fatal { status, .. } => Some(*status),
            Self::Network(_) | Self::Malformed(_) | Self::Config(_) => None,
        }
    }
}

impl Transient for UpstreamError {
    fn is_transient(&self) -> bool {
        self.is_retryable()
    }

    fn retry_after(&self) -> Option<Duration> {
        UpstreamError::retry_after(self)
    }
}

/// Speaks the batch API to one upstream. Cheap to clone (clones share the connections).
///
/// Connections are kept for as long as they are used — the batches of a cycle share one — and
/// [`UpstreamClient::release_connections`] drops them when the daemon goes idle (issue 5: no
/// wakeups between cycles). Kept across the gap, an idle connection would wake the daemon when
/// the upstream closes it at its keep-alive timeout (nginx: 75 s; the dev server: 30 s), send
/// keep-alive probes over the network, and be the stale connection the next cycle trips on. A
/// cycle with uploads makes one new connection, as it did when the pool's 60 s idle timeout
/// (shorter than the 5 min interval) closed it; an idle cycle makes none.
#[derive(Debug, Clone)]
pub struct UpstreamClient {
    /// Built at first use after a release; `None` while idle.
    http: Arc<Mutex<Option<reqwest::Client>>>,
    timeout: Duration,
    batch_url: Url,
    health_url: Url,
    me_url: Url,
    /// `base_url` as the directory the API paths are joined under (the pull's feed, [`feed`]).
    base: Url,
    gzip: bool,
    /// The size of the last request body, to size the next one in one allocation (see
    /// [`encode_body`]). Shared by clones; a hint only, so relaxed ordering is enough.
    last_body_len: Arc<AtomicUsize>,
    /// The compressor of the last body, kept for the next (see [`Gzip`]); dropped when going
    /// idle.
    gzip_state: Arc<Mutex<Gzip>>,
    /// Body buffers hyper is done with, for the next bodies (see [`PooledBody`]); emptied when
    /// going idle.
    bodies: BufferPool,
}

mod feed;

impl UpstreamClient {
    /// `base_url` may end with `/` or not; the API paths are joined under it, so
    /// `https://x/api` posts to `https://x/api/v1/events/batch`. `timeout` bounds a whole
    /// request (connect, send, answer). `gzip` compresses request bodies.
    pub fn new(base_url: &str, timeout: Duration, gzip: bool) -> Result<Self, UpstreamError> {
        let base = base_url_dir(base_url)?;
        let batch_url = join(&base, BATCH_PATH)?;
        let health_url = join(&base, HEALTH_PATH)?;
        let me_url = join(&base, ME_PATH)?;
        // Built now, so a configuration the TLS backend refuses fails at start-up.
        let http = http_client(timeout)?;
        Ok(Self {
            http: Arc::new(Mutex::new(Some(http))),
            timeout,
            batch_url,
            health_url,
            me_url,
            base,
            gzip,
            last_body_len: Arc::new(AtomicUsize::new(0)),
            gzip_state: Arc::default(),
            bodies: BufferPool::new(KEPT_BODIES),
        })
    }

    /// Drops the connections (and the TLS setup) and the compressor: the next request starts
    /// afresh. Call when going idle. Requests in flight keep theirs until they finish.
    pub fn release_connections(&self) {
        *self.http.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.gzip_state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .release();
        self.bodies.clear();
    }

    /// The HTTP client, built again after a release.
    fn http(&self) -> Result<reqwest::Client, UpstreamError> {
        let mut slot = self.http.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(http) = slot.as_ref() {
            return Ok(http.clone());
        }
        let http = http_client(self.timeout)?;
        *slot = Some(http.clone());
        Ok(http)
    }

    /// Where batches go.
    pub fn batch_url(&self) -> &Url {
        &self.batch_url
    }

    /// Where health checks go.
    pub fn health_url(&self) -> &Url {
        &self.health_url
    }

    /// Sends one batch, once. A `200` with a `BatchResponse` is the only success; see
    /// [`UpstreamError`] for what each failure asks of the caller.
    pub async fn send_batch(
        &self,
        token: &AccessToken,
        batch: &impl BatchBody,
    ) -> Result<BatchResponse, UpstreamError> {
        let hint = self.last_body_len.load(Ordering::Relaxed);
        let gzip = self.gzip.then_some(&*self.gzip_state);
        let body = encode_body(batch, gzip, hint, self.bodies.take()).map_err(|e| {
            UpstreamError::Fatal {
                // Writing into memory only fails on a failing Serialize impl (none exists in the
                // contract types) or allocation: a bug, not a condition to retry.
                status: 0,
                message: format!("cannot encode batch: {e}"),
            }
        })?;
        self.last_body_len.store(body.len(), Ordering::Relaxed);
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(AUTHORIZATION, bearer(token)?);
        let key = HeaderValue::from_str(&batch.batch_id().to_string()).map_err(|e| {
            UpstreamError::Fatal {
                status: 0,
                message: format!("batch id header: {e}"),
            }
        })?;
        headers.insert(IDEMPOTENCY_KEY, key);
        if self.gzip {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }

        let response = self
            .http()?
            .post(self.batch_url.clone())
            .headers(headers)
            .body(bytes::Bytes::from_owner(PooledBody {
                bytes: body,
                pool: self.bodies.clone(),
            }))
            .send()
            .await
            .map_err(network)?;
        Answer::read(response)
            .await?
            .batch_outcome(batch.event_count(), token)
    }

    /// `GET {base_url}/v1/me` with the token: the account it authenticates, or `None` when the
    /// upstream has no such endpoint (404). A 401 is `Unauthorized` (refresh, or log in again);
    /// a 2xx without a non-empty `user` is `Malformed`.
    pub async fn whoami(&self, token: &AccessToken) -> Result<Option<String>, UpstreamError> {
        let response = self
            .http()?
            .get(self.me_url.clone())
            .header(AUTHORIZATION, bearer(token)?)
            .header(ACCEPT, HeaderValue::from_static("application/json"))
            .send()
            .await
            .map_err(network)?;
        let answer = Answer::read(response).await?;
        tracing::debug!(url = %self.me_url, status = %answer.status, "asked the upstream whose token this is");
        // 404: no such route; 405: an upstream that routes `v1/*` but not this method. Both
        // mean "this upstream does not implement v1/me", not a fault to retry.
        if matches!(
            answer.status,
            StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED
        ) {
            return Ok(None);
        }
        if !answer.status.is_success() {
            return Err(answer.classify(0, token));
        }
        match serde_json::from_slice::<MeResponse>(&answer.body) {
            Ok(me) if answer.complete && !me.user.trim().is_empty() => Ok(Some(me.user)),
            _ => Err(UpstreamError::Malformed(format!(
                "GET {ME_PATH} answered without a user: {}",
                snippet(&answer.body, token)
            ))),
        }
    }

    /// `GET {base_url}/v1/health` without a token. `Ok` on any 2xx; anything else is classified
    /// like a batch answer, so a 404 (wrong base_url) shows up as `Fatal` rather than "healthy".
    pub async fn health(&self) -> Result<(), UpstreamError> {
        let response = self
            .http()?
            .get(self.health_url.clone())
            .send()
            .await
            .map_err(network)?;
        let answer = Answer::read(response).await?;
        if answer.status.is_success() {
            return Ok(());
        }
        Err(answer.classify(0, &AccessToken::new("")))
    }
}

/// The HTTP client of an [`UpstreamClient`].
fn http_client(timeout: Duration) -> Result<reqwest::Client, UpstreamError> {
    reqwest::Client::builder()
        .redirect(redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout.min(MAX_CONNECT_TIMEOUT))
        // No idle timeout: with one, hyper's pool runs a reaper timer every `timeout` for as
        // long as the client lives, waking an idle daemon; connections are released between
        // cycles instead (see `UpstreamClient`). One that dies silently within a cycle (a NAT
        // entry expiring, a network change) fails its request as `Network`, which is retried on
        // a new connection with the same Idempotency-Key.
        .pool_idle_timeout(None)
        .tcp_keepalive(Duration::from_secs(60))
        .user_agent(concat!("aw-sync-samay/", env!("CARGO_PKG_VERSION")))
        .use_rustls_tls()
        .build()
        .map_err(|e| UpstreamError::Config(error_chain(&e)))
}

/// What the client keeps of an answer: enough to classify it, the body bounded.
struct Answer {
    status: StatusCode,
    retry_after: Option<Duration>,
    location: Option<String>,
    /// At most [`MAX_ANSWER_BYTES`] of the body.
    body: Vec<u8>,
    /// The body was no longer than that.
    complete: bool,
}

impl Answer {
    async fn read(response: reqwest::Response) -> Result<Answer, UpstreamError> {
        let header = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let retry_after =
            header(RETRY_AFTER).and_then(|v| parse_retry_after(&v, SystemTime::now()));
        let location = header(reqwest::header::LOCATION);
        let status = response.status();
        let body = crate::http_body::read_prefix(response, MAX_ANSWER_BYTES)
            .await
            .map_err(network)?;
        Ok(Answer {
            status,
            retry_after,
            location,
            body: body.bytes,
            complete: body.complete,
        })
    }

    /// What an answer to a batch of `events` events means: the `BatchResponse` of a 2xx, else
    /// the error that tells the caller what to do.
    fn batch_outcome(
        &self,
        events: usize,
        token: &AccessToken,
    ) -> Result<BatchResponse, UpstreamError> {
        if self.status.is_success() {
            if !self.complete {
                // Not even a start to parse: a real answer is a few dozen bytes.
                return Err(UpstreamError::Malformed(format!(
                    "the answer is larger than {}, the most read",
                    crate::http_body::describe_size(MAX_ANSWER_BYTES)
                )));
            }
            return serde_json::from_slice::<BatchResponse>(&self.body).map_err(|e| {
                // serde quotes a mistyped string whole: `"accepted": "Bearer <token>"` from a
                // backend echoing the header would otherwise put the token in the log.
                UpstreamError::Malformed(format!(
                    "{}; body: {}",
                    truncate(&scrub(&e.to_string(), token)),
                    snippet(&self.body, token)
                ))
            });
        }
        Err(self.classify(events, token))
    }

    fn classify(&self, events: usize, token: &AccessToken) -> UpstreamError {
        classify(
            self.status,
            self.retry_after,
            self.location.as_deref(),
            &self.body,
            events,
            token,
        )
    }
}

/// What [`UpstreamClient::send_batch`] makes of an answer (status, `Retry-After` and
/// `Location` header values, body) to a batch of `events` events, without a socket: the entry
/// point of the property tests and the `upstream_answer` fuzz target. `None` when `status` is
/// not an HTTP status code (the HTTP stack never hands one over). The body is taken whole;
/// the client reads at most 1 MiB of a real answer.
#[doc(hidden)]
pub fn batch_outcome(
    status: u16,
    retry_after: Option<&str>,
    location: Option<&str>,
    body: &[u8],
    events: usize,
    token: &AccessToken,
) -> Option<Result<BatchResponse, UpstreamError>> {
    let answer = Answer {
        status: StatusCode::from_u16(status).ok()?,
        retry_after: retry_after.and_then(|v| parse_retry_after(v, SystemTime::now())),
        location: location.map(str::to_owned),
        body: body.to_vec(),
        complete: true,
    };
    Some(answer.batch_outcome(events, token))
}

/// Parses `base_url` as the directory the API paths live under (a trailing `/` is added, because
/// `Url::join` would otherwise replace the last path segment).
fn base_url_dir(base_url: &str) -> Result<Url, UpstreamError> {
    let trimmed = base_url.trim();
    let with_slash = if trimmed.ends_with('/') {
        trimmed.to_string()
    } else {
        format!("{trimmed}/")
    };
    let url = Url::parse(&with_slash)
        .map_err(|e| UpstreamError::Config(format!("base_url {trimmed:?}: {e}")))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(UpstreamError::Config(format!(
            "base_url {trimmed:?}: scheme must be http or https"
        )));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(UpstreamError::Config(format!(
            "base_url {trimmed:?}: must not have a query or fragment"
        )));
    }
    Ok(url)
}

fn join(base: &Url, path: &str) -> Result<Url, UpstreamError> {
    base.join(path)
        .map_err(|e| UpstreamError::Config(format!("joining {path}: {e}")))
}

/// The `Authorization` value, marked sensitive so reqwest/hyper never print it. A token that is
/// not a valid header value can never be accepted; answering `Unauthorized` lets the token source
/// replace it (or tell the user to log in again) instead of wedging the queue.
fn bearer(token: &AccessToken) -> Result<HeaderValue, UpstreamError> {
    let mut value = HeaderValue::from_str(&format!("Bearer {}", token.secret()))
        .map_err(|_| UpstreamError::Unauthorized)?;
    value.set_sensitive(true);
    Ok(value)
}

/// The request body of `batch`: its JSON, gzipped when `gzip` is given, in one buffer
/// allocated at about the size of the last body (`hint`).
///
/// Why not `serde_json::to_vec` then gzip: a batch of a thousand events is about a megabyte of
/// JSON, so `to_vec` grew its buffer four or five times, each step past glibc's mmap threshold a
/// fresh mapping whose pages the kernel faults in and zeroes — on the 1M-event catch-up that was
/// two thirds of the sync's `mmap` calls and most of its system time, for a buffer that gzip
/// then read once more. Streaming the JSON through a small buffered writer into the encoder
/// makes no JSON buffer at all, and consecutive batches are of similar size, so the output
/// rarely grows.
///
/// `out` is a buffer to write into (emptied first): one an earlier body left behind
/// ([`PooledBody`]), or a new one.
fn encode_body(
    batch: &impl BatchBody,
    gzip: Option<&Mutex<Gzip>>,
    hint: usize,
    mut out: Vec<u8>,
) -> std::io::Result<Vec<u8>> {
    let capacity = hint.saturating_add(hint / 8).saturating_add(4096);
    out.clear();
    out.reserve(capacity);
    let Some(gzip) = gzip else {
        batch.write_json(&mut out)?;
        return Ok(out);
    };
    let mut gzip = gzip.lock().unwrap_or_else(|p| p.into_inner());
    gzip.encode(out, |w| batch.write_json(w))
}

/// How many request bodies' buffers are kept ([`BufferPool`]): one being written while one is
/// on the wire, as the uploader keeps them by default.
const KEPT_BODIES: usize = 2;

/// A request body that gives its buffer back to the client when hyper drops it.
///
/// Why: a batch's body is a few hundred kilobytes, past the mmap threshold, so each new one was
/// memory the kernel faulted in and zeroed, and each freed one went back to it — on the
/// 1M-event catch-up 5 % of the sync's CPU (perf: the page faults of writing the JSON, its
/// copies, the unmapping), for 2,000 buffers of the same size.
struct PooledBody {
    bytes: Vec<u8>,
    pool: BufferPool,
}

impl AsRef<[u8]> for PooledBody {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.bytes));
    }
}

/// A gzip encoder kept from one body to the next.
///
/// Why: a deflate stream needs about 330 KiB of tables (window, hash chains, symbol buffer),
/// allocated and zeroed when an encoder is made. Each allocation is past glibc's mmap threshold,
/// so a new encoder per batch was a fresh mapping faulted in page by page and unmapped again —
/// on the 1M-event catch-up (2,000 batches) a third of the sync's page faults. Resetting one
/// encoder keeps its tables. The gzip member around the deflate stream is RFC 1952's fixed
/// header and its CRC-32 + length trailer, as `flate2::write::GzEncoder` writes them.
#[derive(Default)]
pub(crate) struct Gzip {
    encoder: Option<DeflateEncoder<Vec<u8>>>,
}

impl std::fmt::Debug for Gzip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gzip")
            .field("kept", &self.encoder.is_some())
            .finish()
    }
}

/// RFC 1952: magic, CM = deflate, no flags, no mtime, XFL = fastest, OS unknown (what
/// `GzEncoder` writes for [`Compression::fast`]).
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 4, 0xff];

impl Gzip {
    /// `out` with one gzip member appended whose content is what `write` writes.
    fn encode(
        &mut self,
        mut out: Vec<u8>,
        write: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
    ) -> std::io::Result<Vec<u8>> {
        out.extend_from_slice(&GZIP_HEADER);
        // Taken out while in use: a failure below leaves no half-written stream behind.
        let mut encoder = match self.encoder.take() {
            Some(mut e) => {
                e.reset(out)?;
                e
            }
            None => DeflateEncoder::new(out, Compression::fast()),
        };
        let mut crc = CrcWriter::new(&mut encoder);
        {
            // serde_json writes a few bytes at a time; the encoder wants them in blocks.
            // `into_inner`, not `flush`: a flush would reach the encoder, which would end its
            // block there (a sync flush) instead of letting the stream's end do it.
            let mut buffered = std::io::BufWriter::with_capacity(64 * 1024, &mut crc);
            write(&mut buffered)?;
            buffered.into_inner().map_err(|e| e.into_error())?;
        }
        let (sum, amount) = (crc.crc().sum(), crc.crc().amount());
        // Finishes the stream into `out` and parks an empty buffer in the encoder.
        let mut out = encoder.reset(Vec::new())?;
        out.extend_from_slice(&sum.to_le_bytes());
        out.extend_from_slice(&amount.to_le_bytes());
        self.encoder = Some(encoder);
        Ok(out)
    }

    fn release(&mut self) {
        self.encoder = None;
    }
}

fn network(e: reqwest::Error) -> UpstreamError {
    UpstreamError::Network(error_chain(&e.without_url()))
}

/// "outer: inner: innermost", because reqwest's own message ("error sending request") hides
/// the useful part (connection refused, closed before message completed, timed out).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Maps a non-2xx answer to the caller's next step.
fn classify(
    status: StatusCode,
    retry_after: Option<Duration>,
    location: Option<&str>,
    body: &[u8],
    n_events: usize,
    token: &AccessToken,
) -> UpstreamError {
    let code = status.as_u16();
    let parsed: Option<ErrorResponse> = serde_json::from_slice(body).ok();
    let message = match &parsed {
        Some(e) if !e.error.is_empty() => truncate(&scrub(&e.error, token)),
        _ => snippet(body, token),
    };
    match code {
        401 => UpstreamError::Unauthorized,
        413 => UpstreamError::TooLarge,
        _ if transient_status(code) => UpstreamError::Retryable {
            status: code,
            retry_after,
        },
        501 => UpstreamError::Fatal {
            status: code,
            message,
        },
        400 | 422 => {
            let rejected = parsed.and_then(|e| e.rejected).map(|mut idx| {
                idx.retain(|&i| i < n_events);
                idx.sort_unstable();
                idx.dedup();
                idx
            });
            UpstreamError::Rejected {
                status: code,
                message,
                rejected: rejected.filter(|v| !v.is_empty()),
            }
        }
        300..=399 => UpstreamError::Fatal {
            status: code,
            message: format!(
                "redirect to {} not followed; fix base_url",
                location
                    .map(|l| truncate(&scrub(l, token)))
                    .unwrap_or_else(|| "?".into())
            ),
        },
        _ => UpstreamError::Fatal {
            status: code,
            message,
        },
    }
}

/// The upstream's body as text for an error message: lossy UTF-8, token scrubbed, truncated.
fn snippet(body: &[u8], token: &AccessToken) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(4 * MAX_MESSAGE_CHARS)]);
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".to_string();
    }
    truncate(&scrub(text, token))
}

fn scrub(text: &str, token: &AccessToken) -> String {
    let secret = token.secret();
    if secret.len() >= 4 && text.contains(secret) {
        text.replace(secret, "<redacted>")
    } else {
        text.to_string()
    }
}

/// The upstream's text as it may be shown: at most [`MAX_MESSAGE_CHARS`] characters, through
/// the printable filter (it reaches the terminal, the log and `--status`).
fn truncate(text: &str) -> String {
    match text.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((cut, _)) => format!("{}…", printable(&text[..cut])),
        None => printable(text).into_owned(),
    }
}

/// `Retry-After` as delta-seconds or an HTTP-date (RFC 9110 §10.2.3), relative to `now`.
/// A date in the past means "now" (zero); anything unparsable is ignored (`None`) so the
/// caller falls back to its own backoff.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Digits only, so a parse failure can only be overflow: treat as "very long".
        return Some(Duration::from_secs(
            value.parse::<u64>().unwrap_or(u64::MAX),
        ));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MAX_KEPT_BUFFER;

    fn batch_of(n: usize) -> super::super::contract::BatchRequest {
        let events = (0..n)
            .map(|i| super::super::contract::UpEvent {
                bucket_id: "aw-watcher-window_host".into(),
                event_id: i as i64,
                hash: format!("{i:032x}"),
                timestamp: "2026-12-01T10:00:00.123456789Z".into(),
                duration: i as f64 / 7.0,
                data: serde_json::value::RawValue::from_string(format!(
                    r#"{{"app":"a\u00e9\n{i}","title":"t"}}"#
                ))
                .unwrap(),
            })
            .collect();
        super::super::contract::BatchRequest {
            batch_id: uuid::Uuid::nil(),
            device_id: uuid::Uuid::nil(),
            user_id: Some("u".into()),
            hostname: "host".into(),
            sync_timestamp: "2026-12-01T10:00:00Z".into(),
            buckets: Default::default(),
            events,
            deletions: Vec::new(),
        }
    }

    /// The streamed body is the batch's JSON exactly (gunzipped when gzip), whatever the size
    /// hint: a hint far too small or far too large changes the allocation, never the bytes, and
    /// the buffered writer's last block reaches the encoder.
    #[test]
    fn the_streamed_body_is_the_batch_json_whatever_the_hint() {
        use std::io::{Read, Write};
        // One kept encoder across batches of every size, as the uploader uses it: each body
        // is byte for byte what a fresh `GzEncoder` writes, and decodes (CRC and length
        // checked) to the batch's JSON.
        let kept = Mutex::new(Gzip::default());
        for n in [0, 1, 3000, 0, 2] {
            let batch = batch_of(n);
            let json = serde_json::to_vec(&batch).unwrap();
            for hint in [0, 10, json.len(), 10 * json.len()] {
                assert_eq!(
                    encode_body(&batch, None, hint, b"stale".to_vec()).unwrap(),
                    json,
                    "plain, {n} events, hint {hint}"
                );
                let gz = encode_body(&batch, Some(&kept), hint, Vec::new()).unwrap();
                // Nothing of the previous batch leaks into the next: a kept encoder writes
                // what a new one writes, behind the header `GzEncoder` writes.
                let new = encode_body(
                    &batch,
                    Some(&Mutex::new(Gzip::default())),
                    hint,
                    vec![7; 99],
                )
                .unwrap();
                assert_eq!(gz, new, "{n} events, hint {hint}");
                let mut reference = flate2::write::GzEncoder::new(Vec::new(), Compression::fast());
                reference.write_all(&json).unwrap();
                assert_eq!(gz[..10], reference.finish().unwrap()[..10], "gzip header");
                let mut back = Vec::new();
                flate2::read::GzDecoder::new(&gz[..])
                    .read_to_end(&mut back)
                    .unwrap();
                assert_eq!(back, json, "gzip, {n} events, hint {hint}");
                assert!(n < 1000 || gz.len() < json.len() / 2, "gzip compresses");
            }
            if n == 3000 {
                kept.lock().unwrap().release();
            }
        }
    }

    #[test]
    fn a_bodys_buffer_goes_back_to_the_pool_up_to_the_kept_number() {
        let pool = BufferPool::new(KEPT_BODIES);
        let body = |n: usize| {
            bytes::Bytes::from_owner(PooledBody {
                bytes: vec![1; n],
                pool: pool.clone(),
            })
        };
        let sent: Vec<bytes::Bytes> = (0..KEPT_BODIES + 2).map(|_| body(64)).collect();
        assert!(pool.kept_sizes().is_empty(), "kept while hyper holds them");
        drop(body(MAX_KEPT_BUFFER + 1));
        assert!(pool.kept_sizes().is_empty(), "a huge buffer is not kept");
        drop(sent);
        let kept = pool.kept_sizes();
        assert_eq!(kept.len(), KEPT_BODIES);
        assert!(kept
            .iter()
            .all(|&(_, cap)| (64..=MAX_KEPT_BUFFER).contains(&cap)));
    }

    #[test]
    fn retry_after_seconds() {
        let now = SystemTime::now();
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn retry_after_http_date_future_and_past() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let future = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(
            parse_retry_after(&future, now),
            Some(Duration::from_secs(90))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
    }

    #[test]
    fn retry_after_garbage_is_ignored() {
        let now = SystemTime::now();
        for bad in [
            "",
            "soon",
            "-5",
            "1.5",
            "12s",
            "Mon, 32 Foo 2020 99:99:99 GMT",
        ] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn base_url_joining() {
        let cases = [
            ("https://x/api", "https://x/api/v1/events/batch"),
            ("https://x/api/", "https://x/api/v1/events/batch"),
            ("https://x", "https://x/v1/events/batch"),
            ("https://x/", "https://x/v1/events/batch"),
            (
                "http://127.0.0.1:5680",
                "http://127.0.0.1:5680/v1/events/batch",
            ),
        ];
        for (base, want) in cases {
            let client = UpstreamClient::new(base, Duration::from_secs(1), true).expect(base);
            assert_eq!(client.batch_url().as_str(), want, "{base}");
        }
        let client = UpstreamClient::new("https://x/api", Duration::from_secs(1), true).unwrap();
        assert_eq!(client.health_url().as_str(), "https://x/api/v1/health");
    }

    #[test]
    fn bad_base_urls_are_config_errors() {
        for bad in ["", "not a url", "ftp://x/", "https://x/api?q=1"] {
            assert!(
                matches!(
                    UpstreamClient::new(bad, Duration::from_secs(1), true),
                    Err(UpstreamError::Config(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn classification() {
        let t = AccessToken::new("sekrit-token");
        let c = |code: u16, body: &str, n: usize| {
            classify(
                StatusCode::from_u16(code).unwrap(),
                None,
                None,
                body.as_bytes(),
                n,
                &t,
            )
        };
        assert_eq!(c(401, "", 1), UpstreamError::Unauthorized);
        assert_eq!(c(413, "", 1), UpstreamError::TooLarge);
        assert!(matches!(
            c(503, "", 1),
            UpstreamError::Retryable { status: 503, .. }
        ));
        assert!(matches!(
            c(408, "", 1),
            UpstreamError::Retryable { status: 408, .. }
        ));
        assert!(matches!(
            c(501, "", 1),
            UpstreamError::Fatal { status: 501, .. }
        ));
        assert!(matches!(
            c(404, "", 1),
            UpstreamError::Fatal { status: 404, .. }
        ));
        assert!(matches!(
            c(302, "", 1),
            UpstreamError::Fatal { status: 302, .. }
        ));
        // Out-of-range and duplicate indexes are dropped; none left means "no blame".
        assert_eq!(
            c(422, r#"{"error":"bad","rejected":[7,1,1,99]}"#, 3),
            UpstreamError::Rejected {
                status: 422,
                message: "bad".into(),
                rejected: Some(vec![1])
            }
        );
        assert_eq!(
            c(400, r#"{"error":"bad","rejected":[99]}"#, 3),
            UpstreamError::Rejected {
                status: 400,
                message: "bad".into(),
                rejected: None
            }
        );
        // An echoed token never reaches the message.
        let e = c(400, "token sekrit-token is bad", 3);
        assert!(!e.to_string().contains("sekrit-token"), "{e}");
    }

    /// Fuzzing found it: serde quotes a mistyped string in its error, and that part of a
    /// `Malformed` message was not scrubbed, so a 2xx body echoing the token in a number's
    /// place put the token in the log.
    #[test]
    fn a_mistyped_field_echoing_the_token_is_scrubbed() {
        let token = AccessToken::new("sekrit-token");
        for body in [
            r#"{"accepted":"Bearer sekrit-token","duplicates":0}"#,
            r#"{"accepted":0,"duplicates":"sekrit-token"}"#,
        ] {
            let e = batch_outcome(200, None, None, body.as_bytes(), 1, &token)
                .expect("a status")
                .expect_err("malformed");
            assert!(matches!(e, UpstreamError::Malformed(_)), "{e:?}");
            assert!(!format!("{e} {e:?}").contains("sekrit-token"), "{e}");
        }
    }

    /// Issue 11: an upstream `error` of "\e[2J\e]0;pwned\a" reached stderr and the log raw.
    #[test]
    fn the_upstreams_words_are_printable() {
        let token = AccessToken::new("sekrit-token");
        let evil = r#"{"error":"\u001b[2J\u001b]0;pwned\u0007"}"#;
        for (status, body, location) in [
            (400, evil, None),
            (500, "\u{1b}[2J raw \u{7}", None),
            (302, "", Some("\u{1b}]0;pwned\u{7}")),
            (200, "{\"accepted\":\"\u{1b}[2J\"}", None),
        ] {
            let e = batch_outcome(status, None, location, body.as_bytes(), 1, &token)
                .expect("a status")
                .expect_err("an error");
            let text = e.to_string();
            assert!(!text.chars().any(char::is_control), "{status}: {text:?}");
        }
        let e = batch_outcome(422, None, None, evil.as_bytes(), 1, &token)
            .expect("a status")
            .expect_err("rejected");
        assert_eq!(
            e.to_string(),
            "upstream rejected the batch (422): \\u{1b}[2J\\u{1b}]0;pwned\\u{7}"
        );
    }
}
