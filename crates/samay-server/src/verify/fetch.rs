//! Bounded HTTP to issuers: every call has a deadline and a size cap, because an issuer (or
//! whatever answers at its address) may be slow, endless or huge, and a verification waits on it.

use std::time::Duration;

use serde_json::Value;
use url::Url;

/// Why a call to an issuer failed. All of them mean "the issuer is unavailable right now".
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    #[error("{url}: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url}: no answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("{url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: answer larger than {cap} bytes")]
    TooLarge { url: String, cap: usize },
    #[error("{url}: not a JSON object ({reason})")]
    NotJson { url: String, reason: String },
}

/// The limits of one call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// The whole exchange, connect to last body byte.
    pub timeout: Duration,
    pub max_bytes: usize,
}

/// Sends `request` and reads a JSON object of at most `limits.max_bytes`, all within
/// `limits.timeout` (a body that trickles forever hits the deadline, one that floods hits the
/// cap as soon as it passes it: memory stays bounded either way).
pub(crate) async fn json_object(
    request: reqwest::RequestBuilder,
    url: &Url,
    limits: Limits,
) -> Result<serde_json::Map<String, Value>, FetchError> {
    let shown = display_url(url);
    let exchange = async {
        let mut response = request
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|source| FetchError::Http {
                url: shown.clone(),
                source,
            })?;
        let status = response.status();
        if !status.is_success() {
            return Err(FetchError::Status {
                url: shown.clone(),
                status: status.as_u16(),
            });
        }
        if response
            .content_length()
            .is_some_and(|len| len > limits.max_bytes as u64)
        {
            return Err(FetchError::TooLarge {
                url: shown.clone(),
                cap: limits.max_bytes,
            });
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|source| FetchError::Http {
            url: shown.clone(),
            source,
        })? {
            if body.len() + chunk.len() > limits.max_bytes {
                return Err(FetchError::TooLarge {
                    url: shown.clone(),
                    cap: limits.max_bytes,
                });
            }
            body.extend_from_slice(&chunk);
        }
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Err(FetchError::NotJson {
                url: shown.clone(),
                reason: "not an object".into(),
            }),
            Err(e) => Err(FetchError::NotJson {
                url: shown.clone(),
                reason: e.to_string(),
            }),
        }
    };
    // Our own deadline rather than only the client's: the caller's reqwest::Client may have
    // none, and a timeout here also covers the body loop.
    match tokio::time::timeout(limits.timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(FetchError::Timeout {
            url: shown,
            timeout: limits.timeout,
        }),
    }
}

/// The URL for messages: no query (there is none in what we call, but never echo one).
fn display_url(url: &Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.set_fragment(None);
    let _ = shown.set_password(None);
    shown.to_string()
}
