//! Start the real dev server for an integration test and read back what it stored.

use std::path::Path;

use samay_server::{
    self as devserver, BucketSummary, DevServer, DevServerConfig, Inspect, OidcConfig, StoredEvent,
};

/// The bearer token [`start_dev_server`] accepts.
pub const TEST_TOKEN: &str = "test-token";

/// A dev server on `127.0.0.1:0` with its database in `dir`, accepting [`TEST_TOKEN`].
pub async fn start_dev_server(dir: &Path) -> DevServer {
    devserver::spawn(DevServerConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        db_path: dir.join("samay-dev-server.sqlite"),
        tokens: vec![TEST_TOKEN.to_string()],
    })
    .await
    .expect("dev server starts")
}

/// A dev server on `127.0.0.1:0` with its database in `dir`, accepting the access tokens that
/// the OpenID provider `issuer` issued (checked at its userinfo endpoint): the upstream of the
/// login tests.
pub async fn start_for_issuer(dir: &Path, issuer: &str) -> DevServer {
    devserver::spawn_with(
        DevServerConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            db_path: dir.join("upstream.sqlite"),
            ..Default::default()
        },
        OidcConfig {
            external_issuer: Some(issuer.parse().expect("issuer URL")),
            ..Default::default()
        },
    )
    .await
    .expect("dev server starts")
}

/// Every stored event of `bucket` (any device), ordered by device and event_id.
pub async fn stored_events(server: &DevServer, bucket: &str) -> Vec<StoredEvent> {
    server
        .stored_events(None, Some(bucket))
        .await
        .expect("read stored events")
}

/// Every stored event, all buckets and devices.
pub async fn all_stored_events(server: &DevServer) -> Vec<StoredEvent> {
    server
        .stored_events(None, None)
        .await
        .expect("read stored events")
}

/// The `/v1/inspect` summary.
pub async fn stats(server: &DevServer) -> Inspect {
    server.inspect().await.expect("inspect")
}

/// Counters of `bucket`, summed over devices (`None` if no device has it).
pub async fn bucket_stats(server: &DevServer, bucket: &str) -> Option<BucketSummary> {
    let inspect = stats(server).await;
    let mut found: Option<BucketSummary> = None;
    for b in inspect
        .devices
        .iter()
        .flat_map(|d| d.buckets.iter())
        .filter(|b| b.bucket_id == bucket)
    {
        match &mut found {
            None => found = Some(b.clone()),
            Some(sum) => {
                sum.events += b.events;
                sum.versions_replaced += b.versions_replaced;
                sum.duplicates += b.duplicates;
            }
        }
    }
    found
}
