//! Why a cycle ended early, typed so the daemon and `--once` decide from the variant.

use super::{ScanError, UploadError};
use crate::auth::AuthError;
use crate::source::SourceError;
use crate::state::StateError;
use crate::upstream::UpstreamError;

/// Why a cycle ended early. The daemon decides from the variant: every one of them means "try
/// again later", and none of them stops the process.
#[derive(Debug, thiserror::Error)]
pub enum CycleError {
    #[error("{source}: start ActivityWatch (aw-qt or aw-server), or pass --port or --testing if it listens elsewhere")]
    SourceDown { url: String, source: SourceError },
    /// Another program answers on aw-server's port (its message says what to do).
    #[error(transparent)]
    NotAwServer(SourceError),
    #[error("reading aw-server failed: {0} (see aw-server's log; nothing is lost, the next sync resumes where this one stopped)")]
    Source(SourceError),
    #[error(transparent)]
    Auth(AuthError),
    #[error("the upstream did not take the events: {0} (check the network and sync.base_url; nothing is lost, the next sync resumes where this one stopped)")]
    Upstream(UpstreamError),
    #[error(transparent)]
    State(StateError),
    #[error(transparent)]
    Scan(ScanError),
    #[error("pulling the other devices' events failed: {0} (nothing is lost: the next sync resumes where this one stopped)")]
    Pull(crate::pull::PullError),
}

impl CycleError {
    /// Waiting for the user (a login), not for a fault to pass.
    pub fn needs_login(&self) -> bool {
        matches!(self, CycleError::Auth(_))
    }

    /// The exit code of a `--once` that ended with this ([`crate::exit`]): the user must act
    /// (log in, fix the port or `sync.base_url`) or it is a fault that passes by itself.
    pub fn exit_code(&self) -> u8 {
        match self {
            CycleError::Auth(_) | CycleError::NotAwServer(_) => crate::exit::USER_MUST_ACT,
            // A 3xx/4xx the upstream will answer again: the wrong URL or API, not an outage.
            CycleError::Upstream(UpstreamError::Fatal { .. } | UpstreamError::Config(_)) => {
                crate::exit::USER_MUST_ACT
            }
            _ => crate::exit::UNREACHABLE,
        }
    }
}

impl From<UploadError> for CycleError {
    fn from(e: UploadError) -> Self {
        match e {
            UploadError::Auth(e) => CycleError::Auth(e),
            UploadError::Upstream(e) => CycleError::Upstream(e),
            UploadError::State(e) => CycleError::State(e),
        }
    }
}
