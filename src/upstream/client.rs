//! HTTP client for the upstream batch API (stub).
pub struct UpstreamClient;
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("network")]
    Network,
}
