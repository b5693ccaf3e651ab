//! Faults: the database stopped and started under ingest, the server killed with -9 in the
//! middle of a batch, SIGTERM while a request is in flight.

use std::io::{Read, Write};

use reqwest::StatusCode;
use samay_server::DatabaseUrl;
use samay_testkit::postgres::PgCluster;
use uuid::Uuid;

use crate::common::{
    assert_whole_or_nothing, batch, event, fold, spawn, unlimited, Client, Process, ALICE,
};

/// PostgreSQL goes down (connections cut) while batches stream in: every batch is answered
/// 200 or a retryable 503, none is half stored, and after the restart the resent batches
/// complete the data exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_mid_ingest_is_retryable_and_never_partial() {
    let cluster = PgCluster::start();
    let server = spawn(DatabaseUrl::Postgres(cluster.database()), unlimited()).await;
    let client = Client::new(&server.base_url(), ALICE);
    let device = Uuid::new_v4();
    let batches: Vec<_> = (0..40)
        .map(|n| {
            let events = (0..200)
                .map(|i| event("w", n * 1000 + i, "h", "2024-05-01T10:00:00Z"))
                .collect();
            batch(device, events, vec![])
        })
        .collect();
    let mut failed = Vec::new();
    let mut stored = 0;
    for (n, b) in batches.iter().enumerate() {
        if n == 10 {
            // Mid-ingest: the previous batch is answered, the next ones hit a dead database.
            cluster.stop_server();
        }
        if n == 12 {
            cluster.start_server();
        }
        let (status, body) = client.post_batch(b).await;
        match status {
            StatusCode::OK => stored += 1,
            StatusCode::SERVICE_UNAVAILABLE => failed.push(b),
            other => panic!("batch {n}: {other} {body}: a database outage must be a 503"),
        }
    }
    assert!(
        !failed.is_empty(),
        "batches sent while the database was down fail"
    );
    assert!(stored >= 10);
    let health = reqwest::get(format!("{}/v1/health", server.base_url()))
        .await
        .unwrap();
    assert_eq!(
        health.status(),
        StatusCode::OK,
        "healthy again after the restart"
    );
    // Nothing half stored: each batch's events are all there or none are.
    let (feed, _) = client.feed_from(0, 5000).await;
    assert_whole_or_nothing(&failed, &fold(&feed));
    for b in &failed {
        let (status, body) = client.post_batch(b).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (feed, _) = client.feed_from(0, 5000).await;
    assert_eq!(
        fold(&feed).len(),
        40 * 200,
        "every event stored exactly once"
    );
    server.shutdown().await;
}

/// While the database is down, health says so (503).
#[tokio::test]
async fn health_is_503_while_the_database_is_down() {
    let cluster = PgCluster::start();
    let server = spawn(DatabaseUrl::Postgres(cluster.database()), unlimited()).await;
    let url = format!("{}/v1/health", server.base_url());
    assert_eq!(reqwest::get(&url).await.unwrap().status(), StatusCode::OK);
    cluster.stop_server();
    assert_eq!(
        reqwest::get(&url).await.unwrap().status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    cluster.start_server();
    assert_eq!(reqwest::get(&url).await.unwrap().status(), StatusCode::OK);
}

/// kill -9 of the server while it stores large batches: afterwards each batch is stored
/// completely or not at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_batch_leaves_nothing_half_stored() {
    let url = samay_testkit::postgres::shared().database();
    let mut proc = Process::start(&["--database-url", &url], &[]);
    let client = Client::new(&proc.base, ALICE);
    let device = Uuid::new_v4();
    let batches: Vec<_> = (0..6)
        .map(|n| {
            let events = (0..5000)
                .map(|i| event("w", n * 10_000 + i, "h", "2024-05-01T10:00:00Z"))
                .collect();
            batch(device, events, vec![])
        })
        .collect();
    let sending: Vec<_> = batches
        .iter()
        .cloned()
        .map(|b| {
            let client = client.clone();
            tokio::spawn(async move { client.post_batch(&b).await })
        })
        .collect();
    // Kill as soon as the first batch is answered: the others are in flight.
    let mut sending = sending.into_iter();
    let first = sending.next().unwrap().await.unwrap();
    assert_eq!(first.0, StatusCode::OK, "{}", first.1);
    proc.kill9();
    for s in sending {
        let _ = s.await;
    }
    let after = Process::start(&["--database-url", &url], &[]);
    let (feed, _) = Client::new(&after.base, ALICE).feed_from(0, 10_000).await;
    let have = fold(&feed);
    assert_whole_or_nothing(&batches.iter().collect::<Vec<_>>(), &have);
    assert!(have.len() >= 5000);
}

/// SIGTERM while a batch is being received: the request completes (200), then the process
/// exits 0.
#[test]
fn sigterm_drains_an_in_flight_request() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("s.sqlite").display());
    let mut proc = Process::start(&["--database-url", &db], &[]);
    let addr = proc.base.trim_start_matches("http://").to_string();
    let body = serde_json::to_vec(&batch(
        Uuid::new_v4(),
        vec![event("w", 1, "h", "2024-05-01T10:00:00Z")],
        vec![],
    ))
    .unwrap();
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "POST /v1/events/batch HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {ALICE}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    )
    .unwrap();
    // The server asks for the body only once the handler runs: the request is in flight.
    let mut buf = [0u8; 25];
    stream.read_exact(&mut buf).unwrap();
    assert!(
        buf.starts_with(b"HTTP/1.1 100 Continue"),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
    let pid = proc.child.id() as i32;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    stream.write_all(&body).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.contains("\r\n\r\n"), "{answer:?}");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    let status = proc.child.wait().unwrap();
    assert!(status.success(), "{status}");
}
