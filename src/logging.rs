//! Logging to stderr and to a per-run file in aw-core's log directory, in aw-core's format, so
//! that aw-qt's crash dialog (which shows the newest log file whose name contains the module
//! name) shows ours, and so our lines read like the other modules' lines.
//!
//! Logging must never be the reason the daemon stops: if the file cannot be created, the
//! daemon says so on stderr and logs to stderr only.
//!
//! **Which file.** A daemon run ([`LogKind::Daemon`]) writes a new file named as aw-core names
//! them; the newest [`KEEP_LOG_FILES`] of those are kept. One-shot commands (`--once`, dry runs;
//! [`LogKind::OneShot`]) append to one file, `commands[-testing].log`, rotated at
//! [`ONE_SHOT_MAX_BYTES`]: a day of `--once` from cron must not push the daemon's log out of
//! the ten, and aw-qt's crash dialog (the newest file whose name contains the module name) must
//! keep showing the daemon's. **Never a file in use:** every process holds a shared lock on its
//! log file while it runs, and pruning skips any file it cannot lock exclusively — the running
//! daemon's log survives however many runs came after it (on Windows an open file cannot be
//! deleted anyway).

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::paths;

/// How many daemon log files of one variant (normal or testing) are kept; older ones are
/// deleted at start-up, unless a process still has them open. Each daemon run writes one file,
/// so this is "the last 10 daemon runs".
pub const KEEP_LOG_FILES: usize = 10;

/// The one-shot commands' log is moved to `<name>.1` (replacing the older one) when it is this
/// big at a command's start: aw-core's 10 MB rotation, with one backup.
pub const ONE_SHOT_MAX_BYTES: u64 = 10 * 1024 * 1024;

/// Which log file a process writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogKind {
    /// A new file per run, `aw-sync-samay_[testing_]<time>.log`; the newest
    /// [`KEEP_LOG_FILES`] are kept.
    Daemon,
    /// Appended to [`one_shot_log_name`]; never counts toward the daemon's files.
    OneShot,
}

/// `commands.log` (`commands-testing.log`): the one-shot commands' log. Without the module's
/// name, so aw-qt's crash dialog never picks it instead of the daemon's.
pub fn one_shot_log_name(testing: bool) -> &'static str {
    if testing {
        "commands-testing.log"
    } else {
        "commands.log"
    }
}

/// Lines queued for the log file's writer thread, at most. tracing-appender's default, 128,000,
/// allocates (and touches) 4 MB for the queue up front — a quarter of an idle daemon's memory
/// (issue 5). The thread writes as lines come, so only a stalled disk fills the queue; lines
/// beyond it are dropped from the file (never from stderr) rather than blocking the sync.
pub const LOG_FILE_QUEUE_LINES: usize = 4096;

/// aw-core's variable for the log level (`DEBUG`, `INFO`, `WARNING`, ...).
pub const LOG_LEVEL_ENV: &str = "LOG_LEVEL";
/// tracing's usual variable; full directives (`aw_sync_samay::engine=trace`), so it wins.
pub const RUST_LOG_ENV: &str = "RUST_LOG";

/// Keeps the file writer's background thread alive; dropping it flushes the file. Hold it for
/// the life of `main`.
#[must_use = "dropping the guard stops writing the log file"]
pub struct LogGuard {
    _worker: Option<tracing_appender::non_blocking::WorkerGuard>,
    file: Option<PathBuf>,
}

impl LogGuard {
    /// The file this run logs to, if any (for `--status` and for telling the user).
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }
}

/// Installs the global subscriber: stderr always, plus a file in `log_dir` (see [`LogKind`]).
/// Level: info, debug for this crate with `verbose`; `LOG_LEVEL` or `RUST_LOG` override both. A
/// daemon also deletes this variant's daemon logs beyond the newest [`KEEP_LOG_FILES`] (never
/// one in use). Panics go to the log file too, since aw-qt's crash dialog shows the file, not
/// stderr.
///
/// Fails only if a global subscriber is already installed.
pub fn init(
    testing: bool,
    verbose: bool,
    log_dir: Option<&Path>,
    kind: LogKind,
) -> anyhow::Result<LogGuard> {
    let mut warnings = Vec::new();
    let (directives, filter_warnings) = filter_directives(
        verbose,
        std::env::var(LOG_LEVEL_ENV).ok().as_deref(),
        std::env::var(RUST_LOG_ENV).ok().as_deref(),
    );
    warnings.extend(filter_warnings);
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"));

    let mut file = None;
    if let Some(dir) = log_dir {
        let now = chrono::Local::now().naive_local();
        let name = match kind {
            LogKind::Daemon => paths::log_file_name(testing, now),
            LogKind::OneShot => {
                rotate_if_large(&dir.join(one_shot_log_name(testing)), ONE_SHOT_MAX_BYTES);
                one_shot_log_name(testing).to_string()
            }
        };
        match open_log_file(dir, &name) {
            Ok(mut opened) => {
                if kind == LogKind::OneShot {
                    mark_run_start(&mut opened.0);
                }
                file = Some(opened)
            }
            Err(e) => warnings.push(format!(
                "cannot create a log file in {}: {e}; logging to stderr only",
                dir.display()
            )),
        }
    }

    let (file_layer, worker, file_path) = match file {
        Some((handle, path)) => {
            let (writer, worker) = tracing_appender::non_blocking::NonBlockingBuilder::default()
                .buffered_lines_limit(LOG_FILE_QUEUE_LINES)
                .finish(handle);
            let layer = tracing_subscriber::fmt::layer()
                .event_format(AwFormat)
                .with_ansi(false)
                .with_writer(writer);
            (Some(layer), Some(worker), Some(path))
        }
        None => (None, None, None),
    };
    // Above any live display (spinner, progress table): a line never runs into one.
    let stderr_layer = tracing_subscriber::fmt::layer()
        .event_format(AwFormat)
        .with_ansi(false)
        .with_writer(crate::term::StderrAboveLive);

    tracing_subscriber::registry()
        .with(filter)
        .with(stderr_layer)
        .with(file_layer)
        .try_init()?;

    for warning in warnings {
        tracing::warn!("{warning}");
    }
    if let Some(dir) = log_dir.filter(|_| file_path.is_some() && kind == LogKind::Daemon) {
        match prune_logs(dir, testing, KEEP_LOG_FILES) {
            Ok(_) => {}
            Err(e) => tracing::warn!("cannot prune old logs in {}: {e}", dir.display()),
        }
    }
    install_panic_hook();

    Ok(LogGuard {
        _worker: worker,
        file: file_path,
    })
}

/// Panics are otherwise printed to stderr only, which aw-qt does not keep.
fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!("{info}");
        previous(info);
    }));
}

/// Appends (a restart within the same second reuses the name; it must not truncate the
/// previous run's lines), and marks the file as in use for as long as it is open. The directory
/// is 0700 and the file 0600 whatever the umask: the log names buckets, hosts and the signed-in
/// user.
fn open_log_file(dir: &Path, name: &str) -> io::Result<(File, PathBuf)> {
    crate::private_fs::private_dir(dir)?;
    let path = dir.join(name);
    let file = crate::private_fs::append_private(&path)?;
    mark_in_use(&file);
    Ok((file, path))
}

/// In the one-shot log, shared by every command: a line that says which command's lines follow
/// (file only: stderr shows the user their own command's lines anyway).
fn mark_run_start(file: &mut File) {
    use std::io::Write as _;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let _ = writeln!(
        file,
        "{} [INFO ]: ---- {} {} (PID {}) ----",
        chrono::Local::now().format("%Y-%m-%d %H:%M:%S,%3f"),
        paths::MODULE,
        args.join(" "),
        std::process::id()
    );
}

/// A shared lock held as long as the file is open (the writer thread owns it): pruning, which
/// needs an exclusive one, leaves the file alone. Unix only: on Windows a shared lock would
/// forbid our own writes, and an open file cannot be deleted there anyway. Best effort: a file
/// system without locks only loses this protection.
fn mark_in_use(file: &File) {
    #[cfg(unix)]
    {
        let _ = fs4::fs_std::FileExt::try_lock_shared(file);
    }
    #[cfg(not(unix))]
    let _ = file;
}

/// Whether no process has `path` open as its log (none holds [`mark_in_use`]'s lock). The
/// check takes an exclusive lock, released when the returned handle drops: keep it while
/// deleting, so no process starts logging to the file in between.
fn lock_unused(path: &Path) -> Option<File> {
    let file = File::open(path).ok()?;
    #[cfg(unix)]
    {
        match fs4::fs_std::FileExt::try_lock_exclusive(&file) {
            Ok(true) => Some(file),
            _ => None,
        }
    }
    #[cfg(not(unix))]
    Some(file)
}

/// Moves `path` to `<path>.1` when it is at least `max` bytes and nobody is writing it (a
/// one-shot command still running keeps it; the next start rotates it).
fn rotate_if_large(path: &Path, max: u64) {
    if std::fs::metadata(path).map_or(true, |m| m.len() < max) {
        return;
    }
    if let Some(_unused) = lock_unused(path) {
        let mut backup = path.as_os_str().to_owned();
        backup.push(".1");
        let _ = std::fs::rename(path, backup);
    }
}

/// The newest daemon log of this variant in `dir` (the last run's, or the running one's).
pub fn newest_daemon_log(dir: &Path, testing: bool) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| is_own_log(name, testing))
        .max()
        .map(|name| dir.join(name))
}

/// The filter directives and any warnings about unusable overrides. `RUST_LOG` (directives)
/// wins over `LOG_LEVEL` (a level name, aw-core style), which wins over `--verbose`.
fn filter_directives(
    verbose: bool,
    log_level: Option<&str>,
    rust_log: Option<&str>,
) -> (String, Vec<String>) {
    let mut warnings = Vec::new();
    if let Some(rust_log) = rust_log.map(str::trim).filter(|s| !s.is_empty()) {
        match EnvFilter::try_new(rust_log) {
            Ok(_) => return (rust_log.to_owned(), warnings),
            Err(e) => warnings.push(format!("ignoring {RUST_LOG_ENV}={rust_log:?}: {e}")),
        }
    }
    if let Some(level) = log_level.map(str::trim).filter(|s| !s.is_empty()) {
        match level.to_ascii_lowercase().as_str() {
            l @ ("trace" | "debug" | "info" | "warn" | "error" | "off") => {
                return (l.to_owned(), warnings)
            }
            "warning" => return ("warn".to_owned(), warnings),
            "critical" | "fatal" => return ("error".to_owned(), warnings),
            _ => warnings.push(format!(
                "ignoring {LOG_LEVEL_ENV}={level:?}: expected DEBUG, INFO, WARNING or ERROR"
            )),
        }
    }
    // Debug for our own code only: dependencies' debug output (hyper, rustls) would drown it.
    let directives = if verbose {
        "info,aw_sync_samay=debug,samay_dev_server=debug"
    } else {
        "info"
    };
    (directives.to_owned(), warnings)
}

/// Is `name` one of this variant's log files? Testing files also start with the normal prefix
/// (`aw-sync-samay_testing_…`), so the timestamp must follow the prefix directly.
fn is_own_log(name: &str, testing: bool) -> bool {
    name.strip_prefix(&paths::log_file_prefix(testing))
        .is_some_and(|rest| {
            rest.starts_with(|c: char| c.is_ascii_digit()) && rest.ends_with(".log")
        })
}

/// Deletes this variant's daemon log files in `dir` beyond the newest `keep`, returning the
/// deleted paths, and makes the kept ones private (0600: an older version wrote them under the
/// umask). Newest by name: the names carry the start time in a sortable format. Other files
/// (the other variant's logs, the one-shot log) are never touched, nor is a file another
/// process has open (see [`mark_in_use`]): the running daemon's log outlives any number of
/// later runs.
pub fn prune_logs(dir: &Path, testing: bool, keep: usize) -> io::Result<Vec<PathBuf>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|entry| entry.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| is_own_log(name, testing))
        .collect();
    names.sort_unstable_by(|a, b| b.cmp(a));
    for name in names.iter().take(keep) {
        crate::private_fs::tighten(&dir.join(name), crate::private_fs::FILE_MODE)?;
    }
    let mut removed = Vec::new();
    for name in names.into_iter().skip(keep) {
        let path = dir.join(name);
        let Some(_unused) = lock_unused(&path) else {
            tracing::debug!(log = %path.display(), "kept: another process is writing it");
            continue;
        };
        match std::fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            // One that cannot go (Windows: open elsewhere) stays; the others still go.
            Err(e) => tracing::debug!(log = %path.display(), "kept: {e}"),
        }
    }
    Ok(removed)
}

/// aw-core's `%(asctime)s [%(levelname)-5s]: %(message)s  (%(name)s:%(lineno)s)`, with the
/// tracing target for the logger name and span context before the message; the message
/// printable ([`crate::printable`]), one line.
struct AwFormat;

impl<S, N> FormatEvent<S, N> for AwFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        // The message and its fields carry text from outside (an upstream's error, a bucket
        // id, a user name): the line is assembled first and written through the printable
        // filter, so no escape sequence reaches a terminal and no `\n` forges a log line.
        let mut line = String::new();
        let mut body = Writer::new(&mut line);
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                write!(body, "{}", span.name())?;
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<N>>() {
                    if !fields.is_empty() {
                        write!(body, "{{{fields}}}")?;
                    }
                }
                write!(body, ": ")?;
            }
        }
        ctx.field_format().format_fields(body.by_ref(), event)?;
        writeln!(
            writer,
            "{} [{:<5}]: {}  ({})",
            chrono::Local::now().format("%Y-%m-%d %H:%M:%S,%3f"),
            meta.level().as_str(),
            crate::printable::printable(&line),
            meta.target()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_precedence() {
        assert_eq!(filter_directives(false, None, None).0, "info");
        assert!(filter_directives(true, None, None)
            .0
            .contains("aw_sync_samay=debug"));
        assert_eq!(filter_directives(true, Some("WARNING"), None).0, "warn");
        assert_eq!(filter_directives(false, Some("DEBUG"), None).0, "debug");
        assert_eq!(filter_directives(false, Some("critical"), None).0, "error");
        assert_eq!(
            filter_directives(false, Some("DEBUG"), Some("aw_sync_samay=trace")).0,
            "aw_sync_samay=trace"
        );
        // empty variables are as good as unset
        assert_eq!(filter_directives(false, Some(""), Some(" ")).0, "info");
    }

    #[test]
    fn bad_overrides_warn_and_fall_back() {
        let (directives, warnings) = filter_directives(false, Some("loud"), None);
        assert_eq!(directives, "info");
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("LOG_LEVEL"), "{warnings:?}");

        let (directives, warnings) = filter_directives(false, Some("debug"), Some("a=[=bad"));
        assert_eq!(directives, "debug");
        assert!(warnings[0].contains("RUST_LOG"), "{warnings:?}");
    }

    #[test]
    fn own_logs_are_told_apart() {
        assert!(is_own_log("aw-sync-samay_2024-01-01T00-00-00.log", false));
        assert!(!is_own_log(
            "aw-sync-samay_testing_2024-01-01T00-00-00.log",
            false
        ));
        assert!(is_own_log(
            "aw-sync-samay_testing_2024-01-01T00-00-00.log",
            true
        ));
        assert!(!is_own_log("aw-sync-samay_2024-01-01T00-00-00.log", true));
        assert!(!is_own_log("aw-sync-samay_2024-01-01T00-00-00.txt", false));
        assert!(!is_own_log("aw-watcher-afk_2024-01-01T00-00-00.log", false));
    }

    #[test]
    fn prune_keeps_newest_of_the_variant() {
        let dir = tempfile::tempdir().expect("tempdir");
        let name = |testing: bool, day: u32| {
            let now = chrono::NaiveDate::from_ymd_opt(2024, 1, day)
                .and_then(|d| d.and_hms_opt(12, 0, 0))
                .expect("date");
            paths::log_file_name(testing, now)
        };
        for day in 1..=13 {
            std::fs::write(dir.path().join(name(false, day)), "x").expect("write");
        }
        for day in 1..=3 {
            std::fs::write(dir.path().join(name(true, day)), "x").expect("write");
        }
        std::fs::write(dir.path().join("notes.txt"), "x").expect("write");

        let removed = prune_logs(dir.path(), false, 10).expect("prune");
        assert_eq!(removed.len(), 3);
        for day in 1..=3 {
            assert!(!dir.path().join(name(false, day)).exists(), "day {day}");
            assert!(
                dir.path().join(name(true, day)).exists(),
                "testing day {day}"
            );
        }
        for day in 4..=13 {
            assert!(dir.path().join(name(false, day)).exists(), "day {day}");
        }
        assert!(dir.path().join("notes.txt").exists());
    }

    /// A log another process has open (here: opened as a writer opens it) is never pruned,
    /// however old; once closed, it goes.
    #[cfg(unix)]
    #[test]
    fn prune_never_deletes_a_log_in_use() {
        let dir = tempfile::tempdir().expect("tempdir");
        let name = |day: u32| {
            let now = chrono::NaiveDate::from_ymd_opt(2024, 1, day)
                .and_then(|d| d.and_hms_opt(12, 0, 0))
                .expect("date");
            paths::log_file_name(false, now)
        };
        let (running, path) = open_log_file(dir.path(), &name(1)).expect("the daemon's log");
        for day in 2..=12 {
            std::fs::write(dir.path().join(name(day)), "x").expect("write");
        }
        let removed = prune_logs(dir.path(), false, 10).expect("prune");
        assert!(path.exists(), "the oldest, but in use");
        assert_eq!(
            removed,
            vec![dir.path().join(name(2))],
            "the next oldest goes instead"
        );
        drop(running);
        let removed = crate::lock::once_forks_have_exec_d(|| {
            let removed = prune_logs(dir.path(), false, 10).expect("prune");
            (!removed.is_empty()).then_some(removed)
        });
        assert_eq!(removed, Some(vec![path]), "closed, it goes");
    }

    #[test]
    fn the_one_shot_log_rotates_when_large_and_unused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(one_shot_log_name(false));
        std::fs::write(&path, "0123456789").expect("write");
        rotate_if_large(&path, 100);
        assert!(path.exists(), "small: stays");
        rotate_if_large(&path, 10);
        assert!(!path.exists());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("commands.log.1")).expect("backup"),
            "0123456789"
        );
        assert!(!is_own_log(one_shot_log_name(false), false));
        assert!(
            !one_shot_log_name(true).contains(paths::MODULE),
            "aw-qt never shows it"
        );
    }

    #[test]
    fn open_log_file_fails_cleanly_when_dir_is_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let not_a_dir = dir.path().join("file");
        std::fs::write(&not_a_dir, "x").expect("write");
        assert!(open_log_file(&not_a_dir.join("logs"), "a.log").is_err());
    }

    /// Issue 11: an upstream's `error` of "\e[2J\e]0;pwned\a" was written raw to stderr and
    /// the log. Every line goes through the printable filter, fields and message alike.
    #[test]
    fn log_lines_are_printable_and_one_line_each() {
        #[derive(Clone, Default)]
        struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl io::Write for Buffer {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.0
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let sink = buffer.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .event_format(AwFormat)
                .with_ansi(false)
                .with_writer(move || sink.clone()),
        );
        let evil = "\u{1b}[2J\u{1b}]0;pwned\u{7}\n2026-01-01 00:00:00,000 [INFO ]: forged";
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("bucket", id = %evil);
            let _in = span.enter();
            tracing::warn!(detail = %evil, "upstream said {evil}");
        });
        let text = String::from_utf8(buffer.0.lock().expect("lock").clone()).expect("utf-8");
        assert_eq!(text.lines().count(), 1, "{text:?}");
        assert!(
            !text.trim_end_matches('\n').chars().any(char::is_control),
            "{text:?}"
        );
        // The span's and the event's fields, and the message (tracing itself escapes a
        // message's ESC as `\x1b`; whatever it leaves goes through the filter).
        assert_eq!(text.matches("pwned").count(), 3, "{text}");
        assert_eq!(
            text.matches("\\u{1b}[2J\\u{1b}]0;pwned\\u{7}\\u{a}")
                .count(),
            2,
            "{text}"
        );
    }
}
