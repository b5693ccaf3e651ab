//! Typed async client for aw-server's REST API (stub: filled in by the source work).
pub struct AwClient;
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("unreachable")]
    Unreachable,
}
