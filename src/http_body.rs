//! Reading an HTTP answer's body with a ceiling, for every body that comes from outside: the
//! upstream's answers, aw-server's, and the identity provider's (discovery, token, userinfo,
//! revocation).
//!
//! `reqwest::Response::bytes()` collects whatever the peer sends: a broken or hostile peer that
//! streams an endless chunked body (or announces a huge `Content-Length`) makes the process
//! allocate until it is killed — 1.8 GB in 6 s against `/api/0/info` (issue 11). Here reading
//! stops at the limit and drops the connection, so an answer costs at most its limit in memory.
//! Time is bounded by each client's own request timeout.

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

/// Reads at most `limit` bytes of the body. An announced `Content-Length` above the limit is
/// believed, and nothing is read; otherwise the body is read as it comes, and reading stops at
/// the limit.
pub async fn read_prefix(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Prefix, reqwest::Error> {
    let announced = response
        .headers()
        .get(reqwest::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|announced| announced > limit as u64) {
        return Ok(Prefix {
            bytes: Vec::new(),
            complete: false,
        });
    }
    let mut bytes = Vec::new();
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

/// The whole body, or [`BodyError::TooLarge`] when it is longer than `limit` bytes.
pub async fn read_capped(response: reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    let prefix = read_prefix(response, limit).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    use std::pin::Pin;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use hyper::body::{Body, Bytes, Frame};

    const CHUNK: usize = 64 * 1024;

    /// A body that never ends (chunks of `x`), counting what was taken from it.
    struct EndlessBody {
        taken: Arc<AtomicU64>,
    }

    impl Body for EndlessBody {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.taken.fetch_add(CHUNK as u64, Ordering::Relaxed);
            Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; CHUNK])))))
        }
    }

    fn endless() -> (reqwest::Response, Arc<AtomicU64>) {
        let taken = Arc::new(AtomicU64::new(0));
        let body = reqwest::Body::wrap(EndlessBody {
            taken: taken.clone(),
        });
        (hyper::Response::new(body).into(), taken)
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
    async fn a_prefix_keeps_the_first_bytes() {
        let (response, _) = endless();
        let prefix = read_prefix(response, 1000).await.expect("prefix");
        assert!(!prefix.complete);
        assert_eq!(prefix.bytes, vec![b'x'; 1000]);
    }

    #[tokio::test]
    async fn a_body_within_the_limit_is_read_whole_and_an_announced_oversize_not_at_all() {
        let response: reqwest::Response = hyper::Response::new("hello").into();
        assert_eq!(read_capped(response, 5).await.expect("fits"), b"hello");
        let response: reqwest::Response = hyper::Response::new("hello!").into();
        assert!(matches!(
            read_capped(response, 5).await,
            Err(BodyError::TooLarge { limit: 5 })
        ));
        let (_, taken) = endless();
        let mut announced = hyper::Response::new(reqwest::Body::wrap(EndlessBody {
            taken: taken.clone(),
        }));
        announced.headers_mut().insert(
            hyper::header::CONTENT_LENGTH,
            hyper::header::HeaderValue::from_static("10000000000"),
        );
        let prefix = read_prefix(announced.into(), 1024).await.expect("prefix");
        assert!(!prefix.complete && prefix.bytes.is_empty());
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
