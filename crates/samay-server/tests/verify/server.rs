//! The `samay-server` binary with `--issuer` and `--audience`: the test issuer's access tokens
//! are the users (issuer-qualified, isolated from each other), bad tokens are 401 with their
//! reason counted in `/metrics`, and an issuer that cannot be reached is 503 (retry), not 401.

use std::process::{Child, Command};

use reqwest::StatusCode;
use samay_testkit::issuer::{unix_now, AUDIENCE};
use serde_json::{json, Value};

use super::standard_issuer;

/// A `samay-server` process accepting the tokens of `issuer`; killed when dropped.
struct Server {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(issuer: &str) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let db = format!("sqlite://{}", dir.path().join("samay.sqlite").display());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_samay-server"));
        cmd.args(["--bind", "127.0.0.1:0", "--database-url", &db])
            .args(["--issuer", issuer, "--audience", AUDIENCE])
            .env_remove("SAMAY_ISSUER")
            .env_remove("SAMAY_STATIC_TOKENS")
            .env_remove("SAMAY_INTROSPECTION_CLIENT_ID")
            .env_remove("SAMAY_INTROSPECTION_CLIENT_SECRET");
        let (child, base) = samay_testkit::server::spawn_listening(cmd);
        Server {
            child,
            base,
            _dir: dir,
        }
    }

    async fn get(&self, path: &str, token: &str) -> (StatusCode, Option<String>, Value) {
        let response = reqwest::Client::new()
            .get(format!("{}/{path}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        let body = response.json().await.unwrap_or(Value::Null);
        (status, retry_after, body)
    }

    async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn batch(device: &str, bucket: &str) -> Value {
    json!({
        "batch_id": uuid::Uuid::new_v4(),
        "device_id": device,
        "user_id": "whatever the body says",
        "hostname": "host",
        "sync_timestamp": "2026-12-06T10:00:00Z",
        "buckets": {bucket: {"type": "currentwindow", "client": "aw-watcher-window", "hostname": "host", "created": null}},
        "events": [{"bucket_id": bucket, "event_id": 1, "hash": "00112233445566778899aabbccddeeff",
                    "timestamp": "2026-12-06T09:00:00Z", "duration": 1.5, "data": {"app": "a"}}],
    })
}

#[tokio::test]
async fn the_server_accepts_its_issuers_tokens_and_keeps_users_apart() {
    let issuer = standard_issuer().await;
    let server = Server::start(&issuer.issuer());
    let alice = issuer.sign("ec-1", &issuer.claims("alice"));
    let bob = issuer.sign("rsa-1", &issuer.claims("bob"));

    let (status, _, me) = server.get("v1/me", &alice).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me, json!({"user": format!("{}#alice", issuer.issuer())}));

    let device = uuid::Uuid::new_v4().to_string();
    let answer = reqwest::Client::new()
        .post(format!(
            "{}/v1/events/batch",
            server.base.trim_end_matches('/')
        ))
        .bearer_auth(&alice)
        .json(&batch(&device, "aw-watcher-window_host"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let (_, _, devices) = server.get("v1/devices", &alice).await;
    assert_eq!(
        devices["devices"][0]["device_id"],
        json!(device),
        "{devices}"
    );
    // Bob's token (another subject of the same issuer) sees none of it.
    let (status, _, devices) = server.get("v1/devices", &bob).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(devices, json!({"devices": []}));
    let (_, _, changes) = server.get("v1/changes?after=0&limit=10", &bob).await;
    assert_eq!(changes["changes"], json!([]), "{changes}");

    // Bad tokens: 401, each reason counted (a token that is no JWT is opaque: refused without
    // introspection credentials).
    let expired = issuer.sign(
        "ec-1",
        &json!({"iss": issuer.issuer(), "aud": AUDIENCE, "sub": "alice", "exp": unix_now() - 3600}),
    );
    let wrong_audience = issuer.sign(
        "ec-1",
        &json!({"iss": issuer.issuer(), "aud": "https://other.example", "sub": "alice", "exp": unix_now() + 300}),
    );
    for (token, reason) in [
        (expired, "expired"),
        (wrong_audience, "bad_audience"),
        ("not-a-jwt".to_string(), "opaque_not_supported"),
    ] {
        let (status, _, _) = server.get("v1/me", &token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{reason}");
        let metrics = server.metrics().await;
        assert!(
            metrics.contains(&format!(
                "samay_auth_failures_total{{reason=\"{reason}\"}} 1"
            )),
            "{reason} counted:\n{metrics}"
        );
    }
}

#[tokio::test]
async fn an_issuer_that_cannot_be_reached_is_a_retry_not_a_refusal() {
    let issuer = standard_issuer().await;
    let token = issuer.sign("ec-1", &issuer.claims("alice"));
    // The same issuer name, but nothing listens there any more.
    let name = issuer.issuer();
    drop(issuer);
    let server = Server::start(&name);
    let (status, retry_after, _) = server.get("v1/me", &token).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(retry_after.is_some(), "503 says when to retry");
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("samay_auth_failures_total{reason=\"issuer_unavailable\"} 1"),
        "{metrics}"
    );
}
