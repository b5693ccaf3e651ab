//! The upstream servers the benchmark syncs into as their own processes (their CPU time is
//! theirs), and its HTTP client.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use samay_testkit::awserver;
use serde_json::Value;

use super::run;

/// An HTTP client that never goes through a proxy (everything here is loopback).
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// `samay-dev-server` as its own process, with its SQLite store in `work`.
pub struct DevServer {
    child: Child,
    pub base_url: String,
    pub name: &'static str,
}

impl Drop for DevServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl DevServer {
    pub fn start(work: &Path, name: &str) -> anyhow::Result<DevServer> {
        let dir = work.join(name);
        std::fs::create_dir_all(&dir)?;
        let mut cmd = Command::new(samay_testkit::built_binary("samay-dev-server"));
        cmd.arg("--db")
            .arg(dir.join("dev.sqlite"))
            .arg("--token")
            .arg(run::TOKEN);
        Self::spawn(cmd, &dir, "samay-dev-server")
    }

    /// `samay-server` (not the dev server) on the PostgreSQL database `url`, accepting the
    /// benchmark's token.
    pub fn start_postgres(work: &Path, name: &str, url: &str) -> anyhow::Result<DevServer> {
        let dir = work.join(name);
        std::fs::create_dir_all(&dir)?;
        let mut cmd = Command::new(samay_testkit::built_binary("samay-server"));
        cmd.arg("--database-url")
            .arg(url)
            .env("SAMAY_STATIC_TOKENS", format!("bench={}", run::TOKEN));
        Self::spawn(cmd, &dir, "samay-server on PostgreSQL")
    }

    fn spawn(mut cmd: Command, dir: &Path, name: &'static str) -> anyhow::Result<DevServer> {
        let port = awserver::free_port();
        let child = cmd
            .arg("--bind")
            .arg(format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("server.log"))?)
            .spawn()
            .context("start the upstream server")?;
        let base_url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "the upstream server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(DevServer {
            child,
            base_url,
            name,
        })
    }

    /// Events held: for all devices (the dev server's `/v1/inspect`), or the benchmark's
    /// user's (`GET v1/devices`: samay-server has no inspection); both list devices with
    /// their buckets' event counts.
    pub async fn held(&self) -> anyhow::Result<u64> {
        let path = if self.name == "samay-dev-server" {
            "v1/inspect"
        } else {
            "v1/devices"
        };
        let v: Value = http()
            .get(format!("{}/{path}", self.base_url))
            .bearer_auth(run::TOKEN)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let mut total = 0;
        for d in v["devices"].as_array().context("devices")? {
            for b in d["buckets"].as_array().context("buckets")? {
                total += b["events"].as_u64().context("events")?;
            }
        }
        Ok(total)
    }
}
