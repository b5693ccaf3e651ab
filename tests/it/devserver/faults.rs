//! Every injected fault surfacing as the error variant the engine decides on.

use std::time::Duration;

use aw_sync_samay::upstream::contract::BatchResponse;
use aw_sync_samay::upstream::{UpstreamClient, UpstreamError};
use samay_server::FaultReport;
use samay_testkit::devserver::{all_stored_events, start_dev_server};
use serde_json::json;
use uuid::Uuid;

use super::support::*;

#[tokio::test]
async fn fail_500_is_retryable_and_then_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_dev_server(dir.path()).await;
    server.faults().update(|f| f.fail_500 = 2);
    let b = three(Uuid::new_v4());
    for _ in 0..2 {
        let err = client(&server).send_batch(&token(), &b).await.unwrap_err();
        assert!(
            matches!(
                err,
                UpstreamError::Retryable {
                    status: 500,
                    retry_after: None
                }
            ),
            "{err:?}"
        );
        assert!(err.is_retryable());
    }
    assert_eq!(
        client(&server)
            .send_batch(&token(), &b)
            .await
            .unwrap()
            .accepted,
        3
    );
    assert_eq!(server.faults().counters().requests_received, 3);
}

#[tokio::test]
async fn fail_429_carries_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_dev_server(dir.path()).await;
    server.faults().update(|f| {
        f.fail_429 = 1;
        f.retry_after_secs = 7;
    });
    let err = client(&server)
        .send_batch(&token(), &three(Uuid::new_v4()))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        UpstreamError::Retryable {
            status: 429,
            retry_after: Some(Duration::from_secs(7))
        }
    );
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
}

#[tokio::test]
async fn drop_before_store_is_a_network_error_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_dev_server(dir.path()).await;
    server.faults().update(|f| f.drop_before_store = 1);
    let b = three(Uuid::new_v4());
    let err = client(&server).send_batch(&token(), &b).await.unwrap_err();
    assert!(matches!(err, UpstreamError::Network(_)), "{err:?}");
    assert!(all_stored_events(&server).await.is_empty());
    assert_eq!(server.faults().counters().batches_stored, 0);
    // The retry goes through.
    assert_eq!(
        client(&server)
            .send_batch(&token(), &b)
            .await
            .unwrap()
            .accepted,
        3
    );
}

#[tokio::test]
async fn drop_after_store_is_a_network_error_but_the_batch_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_dev_server(dir.path()).await;
    server.faults().update(|f| f.drop_after_store = 1);
    let b = three(Uuid::new_v4());
    let err = client(&server).send_batch(&token(), &b).await.unwrap_err();
    assert!(matches!(err, UpstreamError::Network(_)), "{err:?}");
    assert_eq!(all_stored_events(&server).await.len(), 3);
    // The engine's retry of the same batch id gets the original answer.
    let answer = client(&server).send_batch(&token(), &b).await.unwrap();
    assert_eq!(
        answer,
        BatchResponse {
            accepted: 3,
            duplicates: 0,
            deleted: 0
        }
    );
    assert_eq!(server.faults().counters().batches_stored, 1);
}

#[tokio::test]
async fn slower_than_the_client_timeout_is_a_network_error() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_dev_server(dir.path()).await;
    server.faults().update(|f| f.slow_ms = 2000);
    let impatient =
        UpstreamClient::new(&server.base_url(), Duration::from_millis(300), true).unwrap();
    let err = impatient
        .send_batch(&token(), &three(Uuid::new_v4()))
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamError::Network(_)), "{err:?}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn garbage_answer_is_malformed_after_storing() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_dev_server(dir.path()).await;
    server.faults().update(|f| f.garbage_answers = 1);
    let err = client(&server)
        .send_batch(&token(), &three(Uuid::new_v4()))
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamError::Malformed(_)), "{err:?}");
    assert!(err.is_retryable());
    assert_eq!(all_stored_events(&server).await.len(), 3);
}

#[tokio::test]
async fn faults_can_be_driven_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_dev_server(dir.path()).await;
    let report = faults_over_http(&server, json!({"fail_429": 1, "retry_after_secs": 3})).await;
    assert_eq!(
        (report.settings.fail_429, report.settings.retry_after_secs),
        (1, 3)
    );
    let err = client(&server)
        .send_batch(&token(), &three(Uuid::new_v4()))
        .await
        .unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_secs(3)));

    let report = faults_over_http(&server, json!({"drop_after_store": 1})).await;
    assert_eq!(report.settings.fail_429, 0, "consumed");
    let err = client(&server)
        .send_batch(&token(), &three(Uuid::new_v4()))
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamError::Network(_)), "{err:?}");

    let http = reqwest::Client::new();
    let report: FaultReport = http
        .get(format!("{}/v1/_faults", server.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            report.counters.requests_received,
            report.counters.batches_stored
        ),
        (2, 1)
    );

    let unknown = http
        .post(format!("{}/v1/_faults", server.base_url()))
        .json(&json!({"fail_5000": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 400);

    faults_over_http(&server, json!({"slow_ms": 5})).await;
    let cleared = http
        .delete(format!("{}/v1/_faults", server.base_url()))
        .send()
        .await
        .unwrap();
    let cleared: FaultReport = cleared.json().await.unwrap();
    assert_eq!(cleared.settings, Default::default());
}
