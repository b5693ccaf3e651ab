//! The upstream side: the batch API contract and the HTTP client that speaks it.

pub mod batch;
pub mod client;
/// The wire types and paths, in their own crate (crates/samay-api) because the server speaks them too.
pub use samay_api as contract;
pub mod dry_run;
pub mod health;

pub use client::{UpstreamClient, UpstreamError};

use crate::auth::{AccessToken, BoxFuture};
use batch::Batch;
use contract::{BatchResponse, ChangesResponse, DevicesResponse};

/// Where the uploader sends batches. [`UpstreamClient`] is the real one; the engine's tests
/// put a scripted fake here to inject faults under paused time.
pub trait BatchSink: Send + Sync {
    /// One attempt; retry policy is the caller's.
    fn send_batch<'a>(
        &'a self,
        token: &'a AccessToken,
        batch: &'a Batch,
    ) -> BoxFuture<'a, Result<BatchResponse, UpstreamError>>;

    /// The account `token` authenticates at this upstream (`GET v1/me`); `None` when the
    /// upstream cannot say (no such endpoint; sinks that are no upstream).
    fn whoami<'a>(
        &'a self,
        _token: &'a AccessToken,
    ) -> BoxFuture<'a, Result<Option<String>, UpstreamError>> {
        Box::pin(async { Ok(None) })
    }

    /// `GET v1/changes` (the pull, issue 14). A sink that is no upstream has no feed.
    fn changes<'a>(
        &'a self,
        _token: &'a AccessToken,
        _after: i64,
        _limit: usize,
    ) -> BoxFuture<'a, Result<ChangesResponse, UpstreamError>> {
        Box::pin(async { Err(no_feed()) })
    }

    /// `GET v1/devices` (the pull, and `--status`'s suggestion to turn it on).
    fn devices<'a>(
        &'a self,
        _token: &'a AccessToken,
    ) -> BoxFuture<'a, Result<DevicesResponse, UpstreamError>> {
        Box::pin(async { Err(no_feed()) })
    }
}

fn no_feed() -> UpstreamError {
    UpstreamError::Fatal {
        status: 501,
        message: "this sink has no change feed".into(),
    }
}

impl BatchSink for UpstreamClient {
    fn send_batch<'a>(
        &'a self,
        token: &'a AccessToken,
        batch: &'a Batch,
    ) -> BoxFuture<'a, Result<BatchResponse, UpstreamError>> {
        Box::pin(UpstreamClient::send_batch(self, token, batch))
    }

    fn whoami<'a>(
        &'a self,
        token: &'a AccessToken,
    ) -> BoxFuture<'a, Result<Option<String>, UpstreamError>> {
        Box::pin(UpstreamClient::whoami(self, token))
    }

    fn changes<'a>(
        &'a self,
        token: &'a AccessToken,
        after: i64,
        limit: usize,
    ) -> BoxFuture<'a, Result<ChangesResponse, UpstreamError>> {
        Box::pin(UpstreamClient::changes(self, token, after, limit))
    }

    fn devices<'a>(
        &'a self,
        token: &'a AccessToken,
    ) -> BoxFuture<'a, Result<DevicesResponse, UpstreamError>> {
        Box::pin(UpstreamClient::devices(self, token))
    }
}
