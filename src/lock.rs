//! One aw-sync-samay per aw-server: two instances syncing the same server would race on the
//! state database's cursors and upload the same events twice.
//!
//! The lock is an OS file lock (`flock` on Unix, `LockFileEx` on Windows) on a file named after
//! the host and port ([`crate::paths::lock_file`]). The OS drops it when the process dies, even
//! on `kill -9` or a power cut, so a stale lock file never blocks a restart — the file's mere
//! existence means nothing, and it is deliberately never deleted (deleting it would let a second
//! instance lock a fresh file while the first still holds the old one).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use fs4::fs_std::FileExt;

/// Held for the life of the daemon; dropping it closes the file, which releases the lock.
#[derive(Debug)]
pub struct InstanceLock {
    _file: File,
    path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock: the caller should exit (aw-qt counts a quick exit as a
    /// crash, but a second instance must not run).
    #[error("another aw-sync-samay{} is already running for this aw-server (lock {})", pid.map(|p| format!(" (PID {p})")).unwrap_or_default(), path.display())]
    AlreadyRunning {
        path: PathBuf,
        /// The holder's PID, as it wrote it into the file (`None`: unreadable).
        pid: Option<u32>,
    },
    #[error("cannot open the lock file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl InstanceLock {
    /// Takes the lock without waiting, creating the file (and its directory) if needed, and
    /// writes our PID into it for humans wondering which process holds it.
    pub fn acquire(path: &Path) -> Result<InstanceLock, LockError> {
        let io_err = |source| LockError::Io {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io_err)?;
        }
        // No truncate on open: the file may belong to the running instance, whose PID it shows.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io_err)?;
        let free = match FileExt::try_lock_exclusive(&file) {
            Ok(free) => free,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            Err(e) => return Err(io_err(e)),
        };
        if !free {
            return Err(LockError::AlreadyRunning {
                path: path.to_owned(),
                pid: holder_pid(&mut file),
            });
        }
        // The PID is informational: failing to write it must not cost us the lock we hold.
        let _ = file
            .set_len(0)
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .and_then(|()| file.flush());
        Ok(InstanceLock {
            _file: file,
            path: path.to_owned(),
        })
    }

    /// The lock file, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The PID the holder wrote into the lock file (read through our own handle: the lock is
/// advisory, reading is allowed).
fn holder_pid(file: &mut File) -> Option<u32> {
    use std::io::{Read, Seek};
    let mut text = String::new();
    file.seek(io::SeekFrom::Start(0)).ok()?;
    file.take(64).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// Test support: retries `attempt` for up to two seconds until it gives `Some`. An `flock`
/// belongs to the open file, not to the process: a child that another test forks while our
/// file is open holds a copy of the descriptor until it execs (close-on-exec), and with it the
/// lock, for a moment after we drop ours. Tests run as parallel threads of one process and some
/// spawn children, so "released on drop" can come a few milliseconds late, never not at all (CI
/// saw the prune test fail on exactly this once). The bound keeps a real leak failing.
#[cfg(test)]
pub(crate) fn once_forks_have_exec_d<T>(mut attempt: impl FnMut() -> Option<T>) -> Option<T> {
    for _ in 0..200 {
        if let Some(done) = attempt() {
            return Some(done);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_acquire_fails_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir
            .path()
            .join("locks")
            .join("aw-sync-samay-at-127.0.0.1-on-5600");

        let first = InstanceLock::acquire(&path).expect("first acquire");
        assert_eq!(first.path(), path);
        let pid = std::fs::read_to_string(&path).expect("read pid");
        assert_eq!(pid.trim(), std::process::id().to_string());

        match InstanceLock::acquire(&path) {
            Err(LockError::AlreadyRunning { path: p, pid }) => {
                assert_eq!(p, path);
                assert_eq!(
                    pid,
                    Some(std::process::id()),
                    "the refusal names the holder"
                );
            }
            other => panic!("expected AlreadyRunning, got {other:?}"),
        }
        // the failed attempt must not have wiped the holder's PID
        let pid = std::fs::read_to_string(&path).expect("read pid");
        assert_eq!(pid.trim(), std::process::id().to_string());

        drop(first);
        let again = once_forks_have_exec_d(|| InstanceLock::acquire(&path).ok())
            .expect("acquire after drop");
        drop(again);
    }

    #[test]
    fn message_names_the_lock() {
        let err = LockError::AlreadyRunning {
            path: PathBuf::from("/x/lock"),
            pid: Some(4242),
        };
        assert_eq!(
            err.to_string(),
            "another aw-sync-samay (PID 4242) is already running for this aw-server (lock /x/lock)"
        );
    }
}
