//! Files and directories only this user may read, whatever the umask and whichever command runs
//! first: the data directory (the state database holds the redaction key and quarantined events
//! in full; the token file lives there), the log directory and its files, the dev server's
//! database (its ID-token signing key and every synced event).
//!
//! Directories are made 0700 and files 0600 when created, and tightened when they exist with
//! wider permissions (made by an older version, or by a tool under umask 022). SQLite creates a
//! database's `-wal` and `-shm` files with the mode of the database file itself, so a database
//! created 0600 here keeps all three private. Elsewhere than Unix the files live in the user's
//! profile, which only the user can open; nothing is changed there.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// Mode of a private directory.
pub const DIR_MODE: u32 = 0o700;
/// Mode of a private file.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` with any missing parents (each 0700), and makes `dir` itself 0700. Existing
/// parents are left as they are: they may be shared (`~/.local/share`).
///
/// An existing `dir` that is shared is left as it is too: one with the sticky bit (`/tmp`, where
/// everyone makes their own files) or owned by another user. A database put there by choice
/// (`--db /tmp/x.sqlite`) is still private, its file 0600; tightening the directory made `/tmp`
/// 0700 when the server ran as root, and every other program's temporary files unreachable.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(DIR_MODE);
    }
    builder.create(dir)?;
    if !is_shared(dir)? {
        tighten(dir, DIR_MODE)?;
    }
    Ok(())
}

/// Whether a directory is shared with others on purpose: sticky, or not this user's.
fn is_shared(dir: &Path) -> io::Result<bool> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata(dir)?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        Ok(meta.mode() & 0o1000 != 0 || meta.uid() != me)
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(false)
    }
}

/// Takes group and other permissions away from `path` (to `mode`) when it has any. Returns the
/// mode it had when it was changed; `None` when there was nothing to change or no such file.
pub fn tighten(path: &Path, mode: u32) -> io::Result<Option<u32>> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let old = match std::fs::metadata(path) {
            Ok(meta) => meta.permissions().mode() & 0o7777,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if old & 0o077 == 0 {
            return Ok(None);
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        Ok(Some(old))
    }
    #[cfg(not(unix))]
    {
        let _ = (path, mode);
        Ok(None)
    }
}

/// Prepares a SQLite database at `path` to be private before SQLite opens it: its directory
/// 0700, the file created 0600 (empty: SQLite initialises an empty file as a new database), and
/// an existing file, `-wal` and `-shm` tightened to 0600.
pub fn private_database(path: &Path) -> io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        private_dir(dir)?;
    }
    drop(open_private(path, false)?);
    for suffix in ["-wal", "-shm"] {
        tighten(&sibling(path, suffix), FILE_MODE)?;
    }
    Ok(())
}

/// Opens `path` for appending, created 0600 (tightened when it existed wider): a log file.
pub fn append_private(path: &Path) -> io::Result<File> {
    open_private(path, true)
}

fn open_private(path: &Path, append: bool) -> io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.create(true);
    if append {
        options.append(true);
    } else {
        options.write(true).truncate(false);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(FILE_MODE);
    }
    let file = options.open(path)?;
    tighten(path, FILE_MODE)?;
    Ok(file)
}

/// `state.sqlite` → `state.sqlite-wal`.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777
    }

    #[test]
    fn a_new_database_and_its_wal_and_shm_are_private_and_its_directory_too() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("a").join("b");
        let db = dir.join("x.sqlite");
        private_database(&db).expect("prepared");
        let conn = rusqlite::Connection::open(&db).expect("opens");
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; CREATE TABLE t (x); INSERT INTO t VALUES (1);",
        )
        .expect("writes");
        for path in [db.clone(), sibling(&db, "-wal"), sibling(&db, "-shm")] {
            assert_eq!(mode(&path), 0o600, "{}", path.display());
        }
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&tmp.path().join("a")), 0o700);
    }

    #[test]
    fn existing_wide_files_and_directories_are_tightened_and_contents_kept() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("d");
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let db = dir.join("x.sqlite");
        for path in [db.clone(), sibling(&db, "-wal"), sibling(&db, "-shm")] {
            std::fs::write(&path, "kept").expect("write");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        }
        private_database(&db).expect("prepared");
        for path in [db.clone(), sibling(&db, "-wal"), sibling(&db, "-shm")] {
            assert_eq!(mode(&path), 0o600, "{}", path.display());
            assert_eq!(std::fs::read_to_string(&path).expect("read"), "kept");
        }
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(
            tighten(&db, FILE_MODE).expect("tighten"),
            None,
            "nothing left to do"
        );
    }

    #[test]
    fn a_shared_directory_is_left_as_it_is_and_the_database_in_it_still_private() {
        let tmp = tempfile::tempdir().expect("tempdir");
        // Like /tmp: world-writable and sticky.
        let shared = tmp.path().join("shared");
        std::fs::create_dir(&shared).expect("mkdir");
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        let db = shared.join("x.sqlite");
        private_database(&db).expect("prepared");
        let full = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o7777;
        assert_eq!(full(&shared), 0o1777, "the shared directory is untouched");
        assert_eq!(mode(&db), 0o600);
        // A directory of our own below it is still made private.
        let own = shared.join("own").join("x.sqlite");
        private_database(&own).expect("prepared");
        assert_eq!(mode(&shared.join("own")), 0o700);
        assert_eq!(full(&shared), 0o1777);
    }

    #[test]
    fn log_files_append_privately() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let log = tmp.path().join("a.log");
        std::fs::write(&log, "first\n").expect("write");
        std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        use std::io::Write as _;
        append_private(&log)
            .expect("opens")
            .write_all(b"second\n")
            .expect("appends");
        assert_eq!(mode(&log), 0o600);
        assert_eq!(
            std::fs::read_to_string(&log).expect("read"),
            "first\nsecond\n"
        );
    }
}
