//! Config, paths, logging and the instance lock, exercised the way the daemon uses them: with
//! the real base directories redirected into a temp dir through `HOME` and `XDG_*`.
//!
//! Environment variables are process-global, and this module shares its test binary with every
//! other integration test, whose threads read the environment (and start processes that inherit
//! it) at any time. So a test never changes the environment of that process: [`Isolated::enter`]
//! re-runs the test alone in a child process (this same binary, `--exact`, one test thread)
//! with `HOME` and `XDG_*` pointing into a temp dir, and only there are they set. Logging
//! installs a process-global subscriber and the lock must be seen from another process, so
//! those run in a further child: the `child` test with a role in `CHILD_ROLE_ENV` (without that
//! variable, `child` does nothing).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};

use chrono::Timelike as _;

use aw_sync_samay::config::{self, Config, ConfigError};
use aw_sync_samay::lock::{InstanceLock, LockError};
use aw_sync_samay::{logging, paths};

static ENV: Mutex<()> = Mutex::new(());

/// Set in the child process a test re-runs itself in ([`Isolated::enter`]).
const ISOLATED_ENV: &str = "AW_SYNC_SAMAY_TEST_ISOLATED";

const CHILD_ROLE_ENV: &str = "AW_SYNC_SAMAY_TEST_CHILD_ROLE";
const CHILD_PATH_ENV: &str = "AW_SYNC_SAMAY_TEST_CHILD_PATH";

/// A temp home with XDG dirs inside it, set in this process's environment for as long as the
/// returned guard lives.
struct Isolated {
    _env: MutexGuard<'static, ()>,
    root: tempfile::TempDir,
}

impl Isolated {
    /// In the test's own child process: the isolation, set in the environment there. In the
    /// shared test process: runs the calling test alone in a child process, asserts that it
    /// ran and passed, and returns `None` — the caller returns at once.
    fn enter() -> Option<Self> {
        let name = std::thread::current().name().map(str::to_string);
        let in_child = std::env::var_os(ISOLATED_ENV).is_some();
        // libtest names each test's thread after the test; a run on the main thread (one test
        // thread) is alone in its process, where setting the environment is safe.
        let name = match name {
            Some(name) if !in_child && name != "main" => name,
            _ => return Some(Self::new()),
        };
        let exe = std::env::current_exe().expect("current_exe");
        let out = Command::new(exe)
            .args(["--exact", &name, "--nocapture", "--test-threads=1"])
            .env(ISOLATED_ENV, "1")
            .output()
            .expect("run the test in its own process");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stdout.contains("test result: ok. 1 passed"),
            "{name} in its own process ({}):\n{stdout}\n{stderr}",
            out.status
        );
        None
    }

    fn new() -> Self {
        // A test that panicked while holding the lock leaves it poisoned; the env it set is
        // overwritten below anyway.
        let env = ENV.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let root = tempfile::tempdir().expect("tempdir");
        for (var, sub) in [
            ("HOME", "home"),
            ("XDG_CONFIG_HOME", "config"),
            ("XDG_DATA_HOME", "data"),
            ("XDG_CACHE_HOME", "cache"),
        ] {
            std::env::set_var(var, root.path().join(sub));
        }
        Self { _env: env, root }
    }

    fn dir(&self, sub: &str) -> PathBuf {
        self.root.path().join(sub)
    }

    /// Sets the child's environment to this isolation explicitly, not by inheritance, so the
    /// child sees it even if another test changes the parent's environment meanwhile.
    fn child(&self, role: &str, path: &Path) -> Command {
        let exe = std::env::current_exe().expect("current_exe");
        let mut cmd = Command::new(exe);
        cmd.args([
            "--exact",
            &samay_testkit::harness_name(module_path!(), "child"),
        ])
        .args(["--nocapture", "--test-threads=1"])
        .env(CHILD_ROLE_ENV, role)
        .env(CHILD_PATH_ENV, path)
        .env("HOME", self.dir("home"))
        .env("XDG_CONFIG_HOME", self.dir("config"))
        .env("XDG_DATA_HOME", self.dir("data"))
        .env("XDG_CACHE_HOME", self.dir("cache"))
        .env_remove("RUST_LOG")
        .env_remove("LOG_LEVEL");
        cmd
    }
}

fn run(mut cmd: Command) -> (Output, String, String) {
    let out = cmd.output().expect("run child");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

/// Not a test of its own: the body of the child processes the tests below start.
#[test]
fn child() {
    let Ok(role) = std::env::var(CHILD_ROLE_ENV) else {
        return;
    };
    let path = PathBuf::from(std::env::var_os(CHILD_PATH_ENV).expect("child path"));
    match role.as_str() {
        "log" => {
            let guard =
                logging::init(false, false, Some(&path), logging::LogKind::Daemon).expect("init");
            tracing::info!(bucket = "aw-watcher-afk_host", "hello from the child");
            tracing::debug!("debug is off by default");
            println!(
                "LOGFILE={}",
                guard.file().map(Path::display).expect("a file")
            );
            drop(guard);
        }
        "log-unwritable" => {
            let guard = logging::init(true, false, Some(&path), logging::LogKind::Daemon)
                .expect("init must not fail");
            assert!(guard.file().is_none());
            tracing::warn!("still logging to stderr");
            drop(guard);
        }
        "lock-hold" => {
            use std::io::Write as _;
            let _lock = InstanceLock::acquire(&path).expect("holder acquires");
            println!("LOCK=held");
            std::io::stdout().flush().expect("flush");
            // until the parent kills us; the bound only matters if the parent dies first
            std::thread::sleep(std::time::Duration::from_secs(60));
        }
        "lock" => match InstanceLock::acquire(&path) {
            Ok(_) => println!("LOCK=acquired"),
            Err(e @ LockError::AlreadyRunning { .. }) => println!("LOCK=busy: {e}"),
            Err(e) => println!("LOCK=error: {e}"),
        },
        other => panic!("unknown child role {other}"),
    }
}

// ---------------------------------------------------------------------------------- config ---

#[test]
fn first_run_writes_a_commented_file_that_parses_to_defaults() {
    let Some(iso) = Isolated::enter() else {
        return;
    };
    let path = paths::config_file(false).expect("config path");
    assert_eq!(
        path,
        iso.dir("config")
            .join("activitywatch/aw-sync-samay/aw-sync-samay.toml")
    );
    assert!(!path.exists());

    let loaded = config::load(&path).expect("first load");
    assert!(loaded.created);
    assert_eq!(loaded.config, Config::default());
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    assert_eq!(loaded.path, path);

    let text = std::fs::read_to_string(&path).expect("written");
    // every key is there, commented out, with its default and a line saying what it is
    for line in [
        "# batch_size = 500",
        "# base_url = \"\"",
        "# sync_interval = 300",
        "# gzip = \"auto\"",
        "# enabled = true",
        "# Events per upload batch (1-10000).",
        "[sync]",
        "[auth]",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    // no key is active
    for line in text.lines() {
        assert!(
            line.is_empty() || line.starts_with('#') || line.starts_with('['),
            "uncommented line {line:?}"
        );
    }

    let again = config::load(&path).expect("second load");
    assert!(!again.created);
    assert_eq!(again.config, Config::default());
    assert_eq!(std::fs::read_to_string(&path).expect("read"), text);
}

#[test]
fn testing_has_its_own_config_file() {
    let Some(iso) = Isolated::enter() else {
        return;
    };
    let path = paths::config_file(true).expect("config path");
    assert_eq!(
        path,
        iso.dir("config")
            .join("activitywatch/aw-sync-samay/aw-sync-samay-testing.toml")
    );
    assert!(config::load(&path).expect("load").created);
}

#[test]
fn user_values_override_defaults_and_missing_keys_take_defaults() {
    let Some(iso) = Isolated::enter() else {
        return;
    };
    let path = iso.dir("my.toml");
    std::fs::write(
        &path,
        "[sync]\nbase_url = \"https://sync.example.com\"\nbatch_size = 50\ngzip = false\n\n[auth]\nscopes = [\"openid\"]\n",
    )
    .expect("write");
    let loaded = config::load(&path).expect("load");
    assert!(!loaded.created);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let mut expected = Config::default();
    expected.sync.base_url = "https://sync.example.com".into();
    expected.sync.batch_size = 50;
    expected.sync.gzip = aw_sync_samay::config::Gzip::Never;
    expected.auth.scopes = vec!["openid".into()];
    assert_eq!(loaded.config, expected);
}

#[test]
fn bad_value_names_file_line_column_key_and_expected_type() {
    let Some(iso) = Isolated::enter() else {
        return;
    };
    let path = iso.dir("aw-sync-samay.toml");
    std::fs::write(&path, "[sync]\nbase_url = \"\"\nbatch_size =   \"lots\"\n").expect("write");
    let err = config::load(&path).expect_err("a string for an integer");
    let msg = err.to_string();
    assert!(msg.contains("aw-sync-samay.toml:3:16:"), "{msg}");
    assert!(msg.contains("`sync.batch_size`"), "{msg}");
    assert!(msg.contains("expected a non-negative integer"), "{msg}");
    assert!(msg.contains("(default: 500)"), "{msg}");
    assert!(!msg.contains('\n'), "one line: {msg}");
    match err {
        ConfigError::Parse {
            line, column, key, ..
        } => {
            assert_eq!((line, column), (3, 16));
            assert_eq!(key.as_deref(), Some("sync.batch_size"));
        }
        other => panic!("expected Parse, got {other:?}"),
    }

    std::fs::write(&path, "[sync]\nsync_interval = -5\n").expect("write");
    let msg = config::load(&path).expect_err("negative").to_string();
    assert!(msg.contains("aw-sync-samay.toml:2:17:"), "{msg}");
    assert!(msg.contains("`sync.sync_interval`"), "{msg}");

    std::fs::write(&path, "[auth]\nenabled = \"yes\"\n").expect("write");
    let msg = config::load(&path)
        .expect_err("string for bool")
        .to_string();
    assert!(msg.contains(":2:11:"), "{msg}");
    assert!(msg.contains("`auth.enabled`"), "{msg}");
    assert!(msg.contains("boolean"), "{msg}");
}

#[test]
fn malformed_toml_names_line_and_column() {
    let Some(iso) = Isolated::enter() else {
        return;
    };
    let path = iso.dir("aw-sync-samay.toml");
    std::fs::write(&path, "[sync]\nbatch_size = 5\nbase_url = https://x\n").expect("write");
    let err = config::load(&path).expect_err("unquoted string");
    let msg = err.to_string();
    assert!(msg.contains("aw-sync-samay.toml:3:"), "{msg}");
    assert!(msg.contains("invalid TOML"), "{msg}");
    assert!(!msg.contains('\n'), "one line: {msg}");
}

/// Issue 10: `exclude_bucket` for `exclude_buckets`, or a `[synk]` section, was only a warning,
/// so a privacy filter silently did nothing. Keys and sections meant for aw-sync-samay are
/// errors at their place, with the key they were probably meant to be; names that cannot be
/// ours (another tool's table) are warnings.
#[test]
fn unknown_keys_of_ours_are_errors_with_did_you_mean_and_foreign_names_warnings() {
    let Some(iso) = Isolated::enter() else {
        return;
    };
    let path = iso.dir("aw-sync-samay.toml");
    let cases = [
        (
            "[sync]\nbatch_size = 7\nexclude_bucket = [\"aw-watcher-afk_*\"]\n",
            ":3:1: unknown key `sync.exclude_bucket`: did you mean `sync.exclude_buckets`?",
        ),
        (
            "[synk]\nexclude_buckets = [\"aw-watcher-afk_*\"]\n",
            ":1:2: unknown key `synk`: did you mean [sync]?",
        ),
        (
            "[auth]\nclientid = \"x\"\n",
            ":2:1: unknown key `auth.clientid`: did you mean `auth.client_id`?",
        ),
        (
            "base_url = \"https://sync.example.org\"\n[sync]\n",
            ":1:1: unknown key `base_url`: `base_url` belongs under [sync]",
        ),
        (
            "[sync]\ndrop = [\"title\"]\n",
            "unknown key `sync.drop`: `drop` belongs to a redaction rule",
        ),
    ];
    for (text, want) in cases {
        std::fs::write(&path, text).expect("write");
        let err = config::load(&path).expect_err(text);
        assert!(matches!(err, ConfigError::UnknownKey { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.starts_with(&path.display().to_string()),
            "file first: {msg}"
        );
        assert!(msg.contains(want), "{msg}\n  wanted: {want}");
        assert!(!msg.contains('\n'), "one line: {msg}");
    }

    std::fs::write(&path, "[sync]\nbatch_size = 7\n\n[tool.other]\nx = 1\n").expect("write");
    let loaded = config::load(&path).expect("a foreign table is not an error");
    assert_eq!(loaded.config.sync.batch_size, 7);
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    assert!(
        loaded.warnings[0].contains(":4:2: `tool` is not a setting of aw-sync-samay"),
        "{:?}",
        loaded.warnings
    );
    assert!(loaded.warnings[0].contains("(ignored)"));
}

#[test]
fn plain_http_is_refused_except_to_loopback() {
    let Some(iso) = Isolated::enter() else {
        return;
    };
    let path = iso.dir("aw-sync-samay.toml");
    std::fs::write(&path, "[sync]\nbase_url = \"http://sync.example.com\"\n").expect("write");
    let err = config::load(&path).expect_err("http to another host");
    let msg = err.to_string();
    assert!(msg.contains("`sync.base_url`"), "{msg}");
    assert!(msg.contains("use https://"), "{msg}");
    assert!(msg.contains("aw-sync-samay.toml:2:1:"), "{msg}");

    for ok in [
        "http://localhost:8080",
        "http://127.0.0.1:9000/api",
        "http://[::1]:8080",
        "https://sync.example.com",
    ] {
        std::fs::write(&path, format!("[sync]\nbase_url = \"{ok}\"\n")).expect("write");
        let loaded = config::load(&path).unwrap_or_else(|e| panic!("{ok}: {e}"));
        assert_eq!(loaded.config.sync.base_url, ok);
    }
}

#[test]
fn out_of_range_values_name_the_key() {
    let Some(iso) = Isolated::enter() else {
        return;
    };
    let path = iso.dir("aw-sync-samay.toml");
    std::fs::write(&path, "[sync]\nbatch_size = 2000\n").expect("write");
    // offline_queue_size keeps its default (2000): fine
    config::load(&path).expect("2000 <= 2000");

    std::fs::write(&path, "[sync]\nbatch_size = 5000\n").expect("write");
    let msg = config::load(&path).expect_err("queue < batch").to_string();
    assert!(msg.contains("`sync.offline_queue_size`"), "{msg}");

    std::fs::write(&path, "[sync]\n\nlookback = 9999999\n").expect("write");
    let msg = config::load(&path).expect_err("lookback").to_string();
    assert!(
        msg.contains("aw-sync-samay.toml:3:1: invalid `sync.lookback`"),
        "{msg}"
    );
}

// ----------------------------------------------------------------------------------- paths ---

#[test]
fn directories_follow_activitywatch_layout() {
    let Some(iso) = Isolated::enter() else {
        return;
    };
    assert_eq!(
        paths::data_dir().expect("data"),
        iso.dir("data").join("activitywatch/aw-sync-samay")
    );
    assert_eq!(
        paths::state_db(true).expect("state"),
        iso.dir("data")
            .join("activitywatch/aw-sync-samay/state-testing.sqlite")
    );
    assert_eq!(
        paths::cache_dir().expect("cache"),
        iso.dir("cache").join("activitywatch/aw-sync-samay")
    );
    assert_eq!(
        paths::lock_file("127.0.0.1", 5600).expect("lock"),
        iso.dir("cache")
            .join("activitywatch/client_locks/aw-sync-samay-at-127.0.0.1-on-5600")
    );
    #[cfg(target_os = "linux")]
    assert_eq!(
        paths::log_dir().expect("log"),
        iso.dir("cache").join("activitywatch/log/aw-sync-samay")
    );
}

#[test]
fn aw_server_port_comes_from_aw_server_rust_config() {
    let Some(iso) = Isolated::enter() else {
        return;
    };
    assert_eq!(paths::aw_server_port(false), 5600);
    assert_eq!(paths::aw_server_port(true), 5666);

    let dir = iso.dir("config").join("activitywatch/aw-server-rust");
    std::fs::create_dir_all(&dir).expect("mkdir");
    assert_eq!(
        paths::aw_server_config_file(false).expect("path"),
        dir.join("config.toml")
    );
    std::fs::write(
        dir.join("config.toml"),
        "address = \"127.0.0.1\"\nport = 5601\n",
    )
    .expect("write");
    assert_eq!(paths::aw_server_port(false), 5601);
    assert_eq!(
        paths::aw_server_port(true),
        5666,
        "testing reads its own file"
    );

    std::fs::write(dir.join("config-testing.toml"), "port = 5667\n").expect("write");
    assert_eq!(paths::aw_server_port(true), 5667);

    // a broken aw-server config falls back to the default, never fails
    std::fs::write(dir.join("config.toml"), "port = \n").expect("write");
    assert_eq!(paths::aw_server_port(false), 5600);
    std::fs::write(dir.join("config.toml"), "port = \"5601\"\n").expect("write");
    assert_eq!(paths::aw_server_port(false), 5600);
}

#[test]
fn log_file_name_has_aw_core_format() {
    let now = chrono::Local::now().naive_local();
    for (testing, prefix) in [(false, "aw-sync-samay_"), (true, "aw-sync-samay_testing_")] {
        let name = paths::log_file_name(testing, now);
        let stamp = name
            .strip_prefix(prefix)
            .and_then(|s| s.strip_suffix(".log"))
            .unwrap_or_else(|| panic!("{name}"));
        let parsed = chrono::NaiveDateTime::parse_from_str(stamp, "%Y-%m-%dT%H-%M-%S")
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(parsed, now.with_nanosecond(0).expect("valid"));
        // aw-qt looks for the module name (and "testing") in the file name
        assert!(name.contains("aw-sync-samay"));
        assert_eq!(name.contains("testing"), testing);
    }
}

// --------------------------------------------------------------------------------- logging ---

#[test]
fn logging_writes_an_aw_core_style_file_and_prunes_old_ones() {
    let Some(iso) = Isolated::enter() else {
        return;
    };
    let log_dir = paths::log_dir().expect("log dir");
    std::fs::create_dir_all(&log_dir).expect("mkdir");
    // 12 older runs, and a testing run that must survive the pruning of normal runs
    for day in 1..=12 {
        let name = format!("aw-sync-samay_2020-01-{day:02}T00-00-00.log");
        std::fs::write(log_dir.join(name), "old\n").expect("write");
    }
    std::fs::write(
        log_dir.join("aw-sync-samay_testing_2020-01-01T00-00-00.log"),
        "old\n",
    )
    .expect("write");

    let (out, stdout, stderr) = run(iso.child("log", &log_dir));
    assert!(out.status.success(), "{stdout}\n{stderr}");

    // libtest prints "test child ... " in front of the child's first line
    let file = stdout
        .lines()
        .find_map(|l| l.split_once("LOGFILE=").map(|(_, p)| p))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no LOGFILE in {stdout}"));
    assert_eq!(file.parent(), Some(log_dir.as_path()));
    let text = std::fs::read_to_string(&file).expect("log file");
    let line = text
        .lines()
        .find(|l| l.contains("hello from the child"))
        .unwrap_or_else(|| panic!("message not in log file:\n{text}"));
    // `2024-03-07 09:05:01,123 [INFO ]: message  (target)`
    let (stamp, rest) = line.split_at(23);
    chrono::NaiveDateTime::parse_from_str(stamp, "%Y-%m-%d %H:%M:%S,%3f")
        .unwrap_or_else(|e| panic!("{stamp:?}: {e}"));
    assert!(rest.starts_with(" [INFO ]: hello from the child"), "{line}");
    assert!(rest.contains("bucket=\"aw-watcher-afk_host\""), "{line}");
    // The target is the module that logged (`it::config_cli`).
    assert!(rest.ends_with(&format!("  ({})", module_path!())), "{line}");
    assert!(!text.contains('\u{1b}'), "ANSI escape in the file:\n{text}");
    assert!(!text.contains("debug is off"), "{text}");
    assert!(stderr.contains("[INFO ]: hello from the child"), "{stderr}");

    let mut normal: Vec<String> = std::fs::read_dir(&log_dir)
        .expect("read dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| !n.contains("testing"))
        .collect();
    normal.sort();
    assert_eq!(normal.len(), logging::KEEP_LOG_FILES, "{normal:?}");
    assert!(normal.contains(&"aw-sync-samay_2020-01-12T00-00-00.log".to_owned()));
    assert!(!normal.contains(&"aw-sync-samay_2020-01-03T00-00-00.log".to_owned()));
    assert!(log_dir
        .join("aw-sync-samay_testing_2020-01-01T00-00-00.log")
        .exists());
}

#[test]
fn logging_without_a_writable_dir_warns_and_uses_stderr() {
    let Some(iso) = Isolated::enter() else {
        return;
    };
    let blocker = iso.dir("not-a-dir");
    std::fs::write(&blocker, "x").expect("write");
    let (out, stdout, stderr) = run(iso.child("log-unwritable", &blocker.join("logs")));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("cannot create a log file"), "{stderr}");
    assert!(stderr.contains("still logging to stderr"), "{stderr}");
}

// ------------------------------------------------------------------------------------ lock ---

#[test]
fn one_instance_per_aw_server_across_processes() {
    let Some(iso) = Isolated::enter() else {
        return;
    };
    let path = paths::lock_file("127.0.0.1", 5600).expect("lock path");
    let held = InstanceLock::acquire(&path).expect("parent acquires");

    // same process, second handle: refused too
    assert!(matches!(
        InstanceLock::acquire(&path),
        Err(LockError::AlreadyRunning { .. })
    ));

    let (out, stdout, stderr) = run(iso.child("lock", &path));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!(
            "LOCK=busy: another aw-sync-samay (PID {}) is already running for this aw-server",
            std::process::id()
        )),
        "{stdout}\n{stderr}"
    );

    // another port is another aw-server
    let other = paths::lock_file("127.0.0.1", 5666).expect("lock path");
    let (_, stdout, _) = run(iso.child("lock", &other));
    assert!(stdout.contains("LOCK=acquired"), "{stdout}");

    drop(held);
    // Free once any child another test forked while `held` was open has exec'd: an `flock`
    // belongs to the open file, and such a child holds a copy of the descriptor until its exec
    // closes it (see `lock::once_forks_have_exec_d`). Bounded, so a lock that stays held fails.
    let mut stdout = String::new();
    for _ in 0..40 {
        stdout = run(iso.child("lock", &path)).1;
        if !stdout.contains("LOCK=busy") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(stdout.contains("LOCK=acquired"), "{stdout}");
}

#[test]
fn lock_is_released_when_the_holder_is_killed() {
    use std::io::BufRead as _;

    let Some(iso) = Isolated::enter() else {
        return;
    };
    let path = paths::lock_file("127.0.0.1", 5601).expect("lock path");
    let mut holder = iso
        .child("lock-hold", &path)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn holder");
    let stdout = holder.stdout.take().expect("piped stdout");
    let held = std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.contains("LOCK=held"));
    if !held {
        let _ = holder.kill();
        panic!("the holder did not take the lock");
    }
    assert!(matches!(
        InstanceLock::acquire(&path),
        Err(LockError::AlreadyRunning { .. })
    ));

    holder.kill().expect("kill -9 the holder");
    holder.wait().expect("reap");
    let lock = InstanceLock::acquire(&path).expect("released by the OS");
    assert_eq!(
        std::fs::read_to_string(lock.path()).expect("pid").trim(),
        std::process::id().to_string()
    );
}
