//! The upstream side: the batch API contract and the HTTP client that speaks it.

pub mod client;
/// The wire types and paths, in their own crate (crates/samay-api) because the server speaks them too.
pub use samay_api as contract;
pub mod dry_run;
pub mod health;

pub use client::{UpstreamClient, UpstreamError};

use crate::auth::{AccessToken, BoxFuture};
use contract::{BatchRequest, BatchResponse};

/// Where the uploader sends batches. [`UpstreamClient`] is the real one; the engine's tests
/// put a scripted fake here to inject faults under paused time.
pub trait BatchSink: Send + Sync {
    /// One attempt; retry policy is the caller's.
    fn send_batch<'a>(
        &'a self,
        token: &'a AccessToken,
        batch: &'a BatchRequest,
    ) -> BoxFuture<'a, Result<BatchResponse, UpstreamError>>;

    /// The account `token` authenticates at this upstream (`GET v1/me`); `None` when the
    /// upstream cannot say (no such endpoint; sinks that are no upstream).
    fn whoami<'a>(
        &'a self,
        _token: &'a AccessToken,
    ) -> BoxFuture<'a, Result<Option<String>, UpstreamError>> {
        Box::pin(async { Ok(None) })
    }
}

impl BatchSink for UpstreamClient {
    fn send_batch<'a>(
        &'a self,
        token: &'a AccessToken,
        batch: &'a BatchRequest,
    ) -> BoxFuture<'a, Result<BatchResponse, UpstreamError>> {
        Box::pin(UpstreamClient::send_batch(self, token, batch))
    }

    fn whoami<'a>(
        &'a self,
        token: &'a AccessToken,
    ) -> BoxFuture<'a, Result<Option<String>, UpstreamError>> {
        Box::pin(UpstreamClient::whoami(self, token))
    }
}
