//! The aw-server-rust stand-in as its own process: `samay-aw-double --storage sqlite` (its
//! schema, index and statements), so the CPU time it spends serving a read pattern can be
//! measured from outside, as a real aw-server's would be.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

pub struct SqliteDouble {
    child: Child,
    pub port: u16,
}

impl Drop for SqliteDouble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl SqliteDouble {
    /// Starts the double on a free port with `events` synthetic events (seed 42, a week ending
    /// a minute ago) in a database file under `work`, and waits until it serves.
    pub fn start(work: &Path, name: &str, events: usize) -> anyhow::Result<SqliteDouble> {
        SqliteDouble::start_spanning(work, name, events, 7)
    }

    /// [`SqliteDouble::start`] with the events spread over `days` instead of a week.
    pub fn start_spanning(
        work: &Path,
        name: &str,
        events: usize,
        days: u32,
    ) -> anyhow::Result<SqliteDouble> {
        let db = work.join(format!("{name}.sqlite"));
        let _ = std::fs::remove_file(&db);
        let mut child = Command::new(samay_testkit::built_binary("samay-aw-double"))
            .args(["--storage", "sqlite", "--port", "0", "--seed", "42"])
            .arg("--db")
            .arg(&db)
            .arg("--events")
            .arg(events.to_string())
            .arg("--hostname")
            .arg("synthetic")
            .arg("--span-days")
            .arg(days.to_string())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(work.join(format!("{name}.log")))?)
            .spawn()
            .context("start samay-aw-double")?;
        let stdout = child.stdout.take().context("double's stdout")?;
        // The one line on stdout is its URL, printed once the data is loaded.
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let port = line.trim().rsplit(':').next().and_then(|p| p.parse().ok());
        let Some(port) = port else {
            let _ = child.kill();
            bail!("samay-aw-double printed {line:?}, not its URL");
        };
        Ok(SqliteDouble { child, port })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The CPU time it has spent so far.
    pub fn cpu(&self) -> Duration {
        samay_testkit::procfs::process_cpu(self.pid()).unwrap_or_default()
    }

    /// The requests it has answered so far (it counts them; `None` if it cannot be asked).
    pub async fn requests(&self) -> Option<u64> {
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .ok()?
            .get(format!("http://127.0.0.1:{}/_double/requests", self.port))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()
    }
}
