//! The pull's reads of the upstream (issue 14): `GET v1/changes` and `GET v1/devices`, with
//! the same answer handling as a batch (bounded bodies, typed errors, the token scrubbed from
//! anything the upstream says).

use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION};

use super::{bearer, join, network, snippet, Answer, UpstreamClient, UpstreamError};
use crate::auth::AccessToken;
use crate::upstream::contract::{ChangesResponse, DevicesResponse, CHANGES_PATH, DEVICES_PATH};

/// The most of a feed page or device list read: a page of 10 000 changes with large data is
/// tens of megabytes at most; more means a wrong server.
const MAX_FEED_ANSWER: usize = 64 * 1024 * 1024;

impl UpstreamClient {
    /// `GET v1/changes?after=SEQ&limit=N`: the account's changes after `after`, in seq order.
    pub async fn changes(
        &self,
        token: &AccessToken,
        after: i64,
        limit: usize,
    ) -> Result<ChangesResponse, UpstreamError> {
        let mut url = join(&self.base, CHANGES_PATH)?;
        url.query_pairs_mut()
            .append_pair("after", &after.to_string())
            .append_pair("limit", &limit.to_string());
        let page: ChangesResponse = self.get_json(url, token, CHANGES_PATH).await?;
        // A feed that goes backwards would make the pull loop forever on the same page.
        if page.next < after || (!page.changes.is_empty() && page.next <= after) {
            return Err(UpstreamError::Malformed(format!(
                "GET {CHANGES_PATH} after {after} answered next = {}",
                page.next
            )));
        }
        Ok(page)
    }

    /// `GET v1/devices`: the account's devices and their buckets' metadata.
    pub async fn devices(&self, token: &AccessToken) -> Result<DevicesResponse, UpstreamError> {
        let url = join(&self.base, DEVICES_PATH)?;
        self.get_json(url, token, DEVICES_PATH).await
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: url::Url,
        token: &AccessToken,
        what: &str,
    ) -> Result<T, UpstreamError> {
        let response = self
            .http()?
            .get(url)
            .header(AUTHORIZATION, bearer(token)?)
            .header(ACCEPT, HeaderValue::from_static("application/json"))
            .send()
            .await
            .map_err(network)?;
        let status = response.status();
        if !status.is_success() {
            return Err(Answer::read(response).await?.classify(0, token));
        }
        let body = crate::http_body::read_prefix(response, MAX_FEED_ANSWER)
            .await
            .map_err(network)?;
        if !body.complete {
            return Err(UpstreamError::Malformed(format!(
                "GET {what}: the answer is larger than {}, the most read",
                crate::http_body::describe_size(MAX_FEED_ANSWER)
            )));
        }
        serde_json::from_slice(&body.bytes).map_err(|e| {
            UpstreamError::Malformed(format!(
                "GET {what}: {e}; body: {}",
                snippet(&body.bytes, token)
            ))
        })
    }
}
