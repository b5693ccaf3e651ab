//! Reading an HTTP answer's body with a ceiling, for every body that comes from outside: the
//! upstream's answers, aw-server's, and the identity provider's (discovery, token, userinfo,
//! revocation).
//!
//! `reqwest::Response::bytes()` collects whatever the peer sends: a broken or hostile peer that
//! streams an endless chunked body (or announces a huge `Content-Length`) makes the process
//! allocate until it is killed — 1.8 GB in 6 s against `/api/0/info` (issue 11). Here reading
//! stops at the limit and drops the connection, so an answer costs at most its limit in memory.
//! Time is bounded by each client's own request timeout.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

/// An answer's first bytes, and whether that was all of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefix {
    pub bytes: Vec<u8>,
    /// `false`: the peer had more than the limit to send; the rest was not read.
    pub complete: bool,
}

/// Why a body was not read whole.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// More than `limit` bytes: refused without reading the rest. Asking again gets the same.
    #[error("the answer is larger than {}, the most accepted; stopped reading it", describe_size(*.limit))]
    TooLarge { limit: usize },
    /// The connection broke or timed out while the body was read.
    #[error(transparent)]
    Read(#[from] reqwest::Error),
}

/// The most [`read_prefix`] reserves up front on the strength of a `Content-Length`.
const MAX_PREALLOCATION: usize = 16 * 1024 * 1024;

/// Reads at most `limit` bytes of the body, as it comes; reading stops at the limit. (An
/// announced `Content-Length` only sizes the buffer: the first bytes are wanted either way.)
pub async fn read_prefix(
    response: reqwest::Response,
    limit: usize,
) -> Result<Prefix, reqwest::Error> {
    read_prefix_into(response, limit, Vec::new()).await
}

/// [`read_prefix`] into `buffer` (emptied first, its capacity kept): a caller reading many
/// large answers one after the other reuses one allocation instead of a fresh mapping each.
pub async fn read_prefix_into(
    mut response: reqwest::Response,
    limit: usize,
    mut buffer: Vec<u8>,
) -> Result<Prefix, reqwest::Error> {
    // Sized once from `Content-Length` (believed up to a bound: the body may stop short):
    // growing by doubling copied every megabyte-sized page several times over.
    let announced = response
        .content_length()
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(0);
    buffer.clear();
    // Exact: `reserve` would double a kept buffer a little too small for this answer.
    buffer.reserve_exact(announced.min(limit).min(MAX_PREALLOCATION));
    let mut bytes = buffer;
    while let Some(chunk) = response.chunk().await? {
        let room = limit - bytes.len();
        if chunk.len() > room {
            bytes.extend_from_slice(&chunk[..room]);
            return Ok(Prefix {
                bytes,
                complete: false,
            });
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(Prefix {
        bytes,
        complete: true,
    })
}

/// The whole body, or [`BodyError::TooLarge`] when it is longer than `limit` bytes. An
/// announced `Content-Length` above the limit is believed, and nothing is read.
pub async fn read_capped(response: reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    read_capped_into(response, limit, Vec::new()).await
}

/// [`read_capped`] into `buffer` (see [`read_prefix_into`]).
pub async fn read_capped_into(
    response: reqwest::Response,
    limit: usize,
    buffer: Vec<u8>,
) -> Result<Vec<u8>, BodyError> {
    let announced = response
        .headers()
        .get(reqwest::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|announced| announced > limit as u64) {
        return Err(BodyError::TooLarge { limit });
    }
    let prefix = read_prefix_into(response, limit, buffer).await?;
    if prefix.complete {
        Ok(prefix.bytes)
    } else {
        Err(BodyError::TooLarge { limit })
    }
}

/// `1 MiB`, `256 MiB`, `64 KiB`, else bytes: limits are written as powers of two.
pub fn describe_size(bytes: usize) -> String {
    const KIB: usize = 1024;
    const MIB: usize = 1024 * KIB;
    if bytes >= MIB && bytes % MIB == 0 {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= KIB && bytes % KIB == 0 {
        format!("{} KiB", bytes / KIB)
    } else {
        format!("{bytes} bytes")
    }
}

/// [`read_capped`] over a body made of `chunks`, announcing `announced` as its
/// `Content-Length` when given, without a socket: the entry point of the property tests and
/// the `http_body` fuzz target. Also returns how many bytes were taken from the body — what a
/// peer managed to make us hold.
#[doc(hidden)]
pub async fn read_chunks(
    chunks: Vec<Vec<u8>>,
    announced: Option<u64>,
    limit: usize,
) -> (Result<Vec<u8>, BodyError>, u64) {
    let (response, taken) = response_of(chunks.into_iter(), announced);
    let result = read_capped(response, limit).await;
    (result, taken.load(Ordering::Relaxed))
}

/// A response whose body is `chunks`, counting the bytes taken from it.
fn response_of<I>(chunks: I, announced: Option<u64>) -> (reqwest::Response, Arc<AtomicU64>)
where
    I: Iterator<Item = Vec<u8>> + Send + Sync + Unpin + 'static,
{
    let taken = Arc::new(AtomicU64::new(0));
    let body = reqwest::Body::wrap(Chunks {
        chunks,
        taken: taken.clone(),
    });
    let mut response = hyper::Response::new(body);
    if let Some(n) = announced {
        response
            .headers_mut()
            .insert(reqwest::header::CONTENT_LENGTH, n.into());
    }
    (response.into(), taken)
}

/// A body of the given chunks, counting what was taken.
struct Chunks<I> {
    chunks: I,
    taken: Arc<AtomicU64>,
}

impl<I: Iterator<Item = Vec<u8>> + Unpin> hyper::body::Body for Chunks<I> {
    type Data = hyper::body::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        Poll::Ready(this.chunks.next().map(|chunk| {
            this.taken.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            Ok(hyper::body::Frame::data(chunk.into()))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: usize = 64 * 1024;

    fn endless() -> (reqwest::Response, Arc<AtomicU64>) {
        response_of(std::iter::repeat(vec![b'x'; CHUNK]), None)
    }

    #[tokio::test]
    async fn an_endless_body_ends_in_too_large_having_taken_the_limit_and_one_chunk() {
        let (response, taken) = endless();
        let err = read_capped(response, 1024 * 1024)
            .await
            .expect_err("endless");
        assert!(
            matches!(err, BodyError::TooLarge { limit } if limit == 1024 * 1024),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "the answer is larger than 1 MiB, the most accepted; stopped reading it"
        );
        assert!(taken.load(Ordering::Relaxed) <= (1024 * 1024 + CHUNK) as u64);
    }

    #[tokio::test]
    async fn a_body_read_into_a_kept_buffer_reuses_its_memory_and_nothing_of_its_content() {
        let mut buffer = Vec::with_capacity(4 * CHUNK);
        buffer.extend_from_slice(b"an earlier page");
        let at = buffer.as_ptr();
        let (response, _) = response_of(vec![vec![b'a'; CHUNK], vec![b'b'; 10]].into_iter(), None);
        let body = read_capped_into(response, usize::MAX, buffer)
            .await
            .expect("body");
        assert_eq!(body.len(), CHUNK + 10);
        assert!(body[..CHUNK].iter().all(|&b| b == b'a') && body[CHUNK..] == [b'b'; 10]);
        assert_eq!(body.as_ptr(), at, "the same allocation");
        // Too large for the limit: refused all the same.
        let (response, _) = response_of(vec![vec![b'a'; CHUNK]].into_iter(), None);
        let err = read_capped_into(response, 10, body)
            .await
            .expect_err("limit");
        assert!(matches!(err, BodyError::TooLarge { limit: 10 }), "{err:?}");
    }

    #[tokio::test]
    async fn a_prefix_keeps_the_first_bytes() {
        let (response, _) = endless();
        let prefix = read_prefix(response, 1000).await.expect("prefix");
        assert!(!prefix.complete);
        assert_eq!(prefix.bytes, vec![b'x'; 1000]);
    }

    #[tokio::test]
    async fn a_body_within_the_limit_is_read_whole_and_an_announced_oversize_not_at_all() {
        let (fits, _) = read_chunks(vec![b"hel".to_vec(), b"lo".to_vec()], None, 5).await;
        assert_eq!(fits.expect("fits"), b"hello");
        let (over, _) = read_chunks(vec![b"hello!".to_vec()], None, 5).await;
        assert!(matches!(over, Err(BodyError::TooLarge { limit: 5 })));
        let (response, taken) =
            response_of(std::iter::repeat(vec![b'x'; CHUNK]), Some(10_000_000_000));
        assert!(matches!(
            read_capped(response, 1024).await,
            Err(BodyError::TooLarge { limit: 1024 })
        ));
        assert_eq!(taken.load(Ordering::Relaxed), 0, "nothing read");
    }

    #[test]
    fn sizes_read_as_written() {
        assert_eq!(describe_size(1024 * 1024), "1 MiB");
        assert_eq!(describe_size(256 * 1024 * 1024), "256 MiB");
        assert_eq!(describe_size(64 * 1024), "64 KiB");
        assert_eq!(describe_size(1000), "1000 bytes");
    }
}
