//! Is `sync.base_url` an aw-sync-samay upstream, and does it answer? `GET {base_url}/v1/health`
//! (docs/upstream-api.md) classified for people: a 404 (or another 3xx/4xx) means the URL
//! points at something else — a web site, the API's parent path, another service — which no
//! retry fixes, so `--once` fails with exit 1 and `--status` says "not an aw-sync-samay
//! upstream"; no answer or a 5xx is an outage (exit 2).
//!
//! `--once` asks before syncing: without it, a cycle with nothing new to send never talks to
//! the upstream and would exit 0 against a wrong URL.

use super::{UpstreamClient, UpstreamError};

/// Why the upstream is not usable now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HealthError {
    /// Something answered, but not as an aw-sync-samay upstream.
    #[error("{url} is not an aw-sync-samay upstream (it answered {status}): check sync.base_url (it is the URL under which v1/health and v1/events/batch live)")]
    NotAnUpstream { url: String, status: u16 },
    /// No answer, or the upstream is failing for now.
    #[error("the upstream at {url} is not answering: {why}")]
    Unreachable { url: String, why: String },
}

impl HealthError {
    /// What is wrong, without the URL (for a line that shows it already).
    pub fn short(&self) -> String {
        match self {
            HealthError::NotAnUpstream { status, .. } => {
                format!("not an aw-sync-samay upstream: v1/health answered {status}")
            }
            HealthError::Unreachable { why, .. } => why.clone(),
        }
    }

    /// The exit code of a `--once` or `--status` that found this ([`crate::exit`]).
    pub fn exit_code(&self) -> u8 {
        match self {
            HealthError::NotAnUpstream { .. } => crate::exit::USER_MUST_ACT,
            HealthError::Unreachable { .. } => crate::exit::UNREACHABLE,
        }
    }
}

/// Asks `v1/health` once.
pub async fn check(upstream: &UpstreamClient) -> Result<(), HealthError> {
    let url = upstream.health_url().to_string();
    match upstream.health().await {
        Ok(()) => Ok(()),
        Err(e) => Err(classify(url, e)),
    }
}

fn classify(url: String, e: UpstreamError) -> HealthError {
    match e {
        // 401/403 on an unauthenticated endpoint, 404, 405, a redirect: not the API.
        UpstreamError::Fatal { status, .. } if (300..500).contains(&status) => {
            HealthError::NotAnUpstream { url, status }
        }
        UpstreamError::Unauthorized => HealthError::NotAnUpstream { url, status: 401 },
        UpstreamError::TooLarge => HealthError::NotAnUpstream { url, status: 413 },
        UpstreamError::Rejected { status, .. } => HealthError::NotAnUpstream { url, status },
        other => HealthError::Unreachable {
            url,
            why: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_404_is_not_an_upstream_and_an_outage_is_unreachable() {
        let url = "http://x/v1/health".to_string();
        let not = classify(
            url.clone(),
            UpstreamError::Fatal {
                status: 404,
                message: "Not Found".into(),
            },
        );
        assert_eq!(not.exit_code(), crate::exit::USER_MUST_ACT);
        assert!(
            not.to_string().contains("not an aw-sync-samay upstream"),
            "{not}"
        );
        let down = classify(
            url.clone(),
            UpstreamError::Network("connection refused".into()),
        );
        assert_eq!(down.exit_code(), crate::exit::UNREACHABLE);
        let busy = classify(
            url,
            UpstreamError::Retryable {
                status: 503,
                retry_after: None,
            },
        );
        assert_eq!(busy.exit_code(), crate::exit::UNREACHABLE);
    }
}
