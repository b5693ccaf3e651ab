//! The pull's writes into aw-server (issue 14, [`crate::pull`]): inserts that say which ids
//! the server gave, and the replacement of one event in place.

use reqwest::Method;
use serde::{Deserialize, Serialize};

use super::client::{AwClient, SourceError, MAX_DATA_ANSWER};
use super::model::Event;

impl AwClient {
    /// `POST /api/0/buckets/{id}/events` of events without ids (any shape that serializes as
    /// aw-server's event without an `id`: the pull sends another device's data text as it
    /// came), in one request. Returns the ids the server gave them, in order, when it says:
    /// aw-server-rust answers the inserted events; Python aw-server 0.12 answers `null` for a
    /// list (its storage cannot tell), and then the caller finds them by reading the bucket back.
    pub async fn insert_events_ids<E: Serialize + Sync>(
        &self,
        bucket_id: &str,
        events: &[E],
    ) -> Result<Option<Vec<i64>>, SourceError> {
        #[derive(Deserialize)]
        struct Inserted {
            id: Option<i64>,
        }
        let bytes = self.post_events(bucket_id, events).await?;
        let ids = serde_json::from_slice::<Option<Vec<Inserted>>>(&bytes)
            .ok()
            .flatten()
            .and_then(|list| list.into_iter().map(|e| e.id).collect::<Option<Vec<_>>>())
            .filter(|ids| ids.len() == events.len());
        Ok(ids)
    }

    /// Replaces event `id` of `bucket_id` with `event` (same id): a POST of the event carrying
    /// the id. Both servers replace the row with that id **whatever bucket it is in**, so the
    /// caller must have just read `id` from `bucket_id` (the pull fetches it by id first).
    pub async fn replace_event(
        &self,
        bucket_id: &str,
        id: i64,
        event: &Event,
    ) -> Result<(), SourceError> {
        let body = [Event {
            id: Some(id),
            ..event.clone()
        }];
        self.post_events(bucket_id, &body).await.map(|_| ())
    }

    async fn post_events<E: Serialize + Sync>(
        &self,
        bucket_id: &str,
        body: &[E],
    ) -> Result<Vec<u8>, SourceError> {
        let url = self.url(&["buckets", bucket_id, "events"], &[]);
        self.send_ok(
            self.request(Method::POST, &url).json(body),
            &url,
            Some(bucket_id),
            MAX_DATA_ANSWER,
        )
        .await
    }
}
