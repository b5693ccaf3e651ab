//! Issue 11, point 6: under umask 022, when the daemon ran first, the data directory was 0755,
//! `state.sqlite` 0644 (it holds the redaction key and quarantined events in full) and the log
//! files 0644. Whatever command runs first, the real binary now leaves the data and log
//! directories 0700 and every file in them 0600 — the database's `-wal` and `-shm` included.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use chrono::Utc;
use samay_aw_double::{AwDouble, AwDoubleConfig};

use samay_testkit::bin::{isolated_command, sync_command, write_config};
use samay_testkit::daemon::Daemon;
use samay_testkit::devserver::{start_dev_server, TEST_TOKEN};

/// The umask most systems give a user: without care, new files are 0644 and directories 0755.
fn under_umask_022(cmd: &mut Command) -> &mut Command {
    // SAFETY: umask is async-signal-safe and touches only the child's own mask.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0o022);
            Ok(())
        })
    }
}

async fn aw_double_with_an_event() -> AwDouble {
    let double = AwDouble::spawn(AwDoubleConfig::default())
        .await
        .expect("double");
    double
        .create_bucket("aw-watcher-window_h", "currentwindow", "c", "h")
        .expect("bucket");
    let mut data = serde_json::Map::new();
    data.insert("app".into(), "x".into());
    double
        .insert(
            "aw-watcher-window_h",
            &[samay_aw_double::Event::new(
                Utc::now() - chrono::Duration::minutes(5),
                1.0,
                data,
            )],
        )
        .expect("insert");
    double
}

fn data_dir(home: &Path) -> PathBuf {
    home.join("data/activitywatch/aw-sync-samay")
}

fn log_dir(home: &Path) -> PathBuf {
    home.join("cache/activitywatch/log/aw-sync-samay")
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// `dir` is 0700 and everything below it is 0700 (directories) or 0600 (files); returns the
/// files seen.
fn assert_private_tree(dir: &Path) -> Vec<String> {
    assert_eq!(mode(dir), 0o700, "{}", dir.display());
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("list") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files.extend(assert_private_tree(&path));
        } else {
            assert_eq!(mode(&path), 0o600, "{}", path.display());
            files.push(
                path.file_name()
                    .expect("name")
                    .to_string_lossy()
                    .into_owned(),
            );
        }
    }
    files
}

/// The data and log directories and all in them are private. `running`: the process still
/// has the database open, so SQLite's `-wal` and `-shm` exist (a clean exit removes them).
fn assert_state_and_logs_private(home: &Path, running: bool) {
    let files = assert_private_tree(&data_dir(home));
    let expected: &[&str] = if running {
        &["state.sqlite", "state.sqlite-wal", "state.sqlite-shm"]
    } else {
        &["state.sqlite"]
    };
    for name in expected {
        assert!(files.iter().any(|f| f == name), "{name} in {files:?}");
    }
    let logs = assert_private_tree(&log_dir(home));
    assert!(logs.iter().any(|f| f.ends_with(".log")), "{logs:?}");
}

/// Runs `cmd` under umask 022 to its end; it must succeed. Returns its stdout.
async fn run_ok(mut cmd: Command) -> String {
    under_umask_022(&mut cmd);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("task")
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A fresh home, aw-server with an event and a dev upstream: the command syncing between them
/// (no mode yet), and what must stay alive while it runs.
struct Setup {
    home: tempfile::TempDir,
    aw: AwDouble,
    _dev: samay_server::DevServer,
    config: PathBuf,
}

impl Setup {
    async fn new() -> Setup {
        let aw = aw_double_with_an_event().await;
        let home = tempfile::tempdir().expect("tempdir");
        let dev = start_dev_server(home.path()).await;
        let config = write_config(home.path(), &dev.base_url(), "");
        Setup {
            home,
            aw,
            _dev: dev,
            config,
        }
    }

    fn command(&self) -> Command {
        sync_command(self.home.path(), self.aw.port(), &self.config, TEST_TOKEN)
    }

    fn once(&self) -> Command {
        let mut cmd = self.command();
        cmd.arg("--once");
        cmd
    }
}

#[tokio::test]
async fn once_run_first_leaves_state_and_logs_private() {
    let setup = Setup::new().await;
    run_ok(setup.once()).await;
    assert_state_and_logs_private(setup.home.path(), false);
}

#[tokio::test]
async fn the_daemon_run_first_leaves_state_and_logs_private() {
    let setup = Setup::new().await;
    let mut cmd = setup.command();
    let home = setup.home.path();
    let mut daemon = Daemon::spawn(under_umask_022(&mut cmd), &home.join("out"));
    daemon.wait_for("sync cycle done").await;
    assert_state_and_logs_private(home, true);
    daemon.stop_with("TERM").await;
    assert_state_and_logs_private(home, false);
}

/// `--dev --once` first: its embedded upstream's database (every event, the ID-token key) and
/// the tokens of its login are in the data directory too.
#[tokio::test]
async fn dev_once_run_first_leaves_its_upstream_database_and_tokens_private() {
    let aw = aw_double_with_an_event().await;
    let home = tempfile::tempdir().expect("tempdir");
    let mut cmd = isolated_command(home.path());
    cmd.args(["--dev", "--once", "--port", &aw.port().to_string()]);
    run_ok(cmd).await;
    assert_state_and_logs_private(home.path(), false);
    let files = assert_private_tree(&data_dir(home.path()));
    assert!(
        files.iter().any(|f| f == "dev-upstream.sqlite"),
        "{files:?}"
    );
    assert!(
        files.iter().any(|f| f.ends_with(".json")),
        "tokens: {files:?}"
    );
}

/// Files an older version (or another tool) left readable by others are tightened on the next
/// run, their contents kept.
#[tokio::test]
async fn state_and_logs_left_world_readable_are_tightened() {
    let setup = Setup::new().await;
    let home = setup.home.path();
    run_ok(setup.once()).await;
    for dir in [data_dir(home), log_dir(home)] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        for entry in std::fs::read_dir(&dir).expect("list") {
            let path = entry.expect("entry").path();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        }
    }
    let stdout = run_ok(setup.once()).await;
    assert_state_and_logs_private(home, false);
    // The state survived: the second run found the event delivered.
    assert!(stdout.contains("0 delivered"), "{stdout}");
}
