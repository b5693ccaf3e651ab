//! Where the login's tokens live between runs: the OS keyring, or a plain-text 0600 file.
//!
//! The keyring is preferred because a refresh token is a long-lived credential, and the OS
//! keyring encrypts it at rest and ties it to the user's session. It is not always there
//! (headless Linux has no Secret Service; "org.freedesktop.secrets was not provided"), and when
//! it is there it can hang: a locked collection waits for a password prompt that may never be
//! shown (cli/cli #8954, #11005). So:
//!
//! * every keyring call runs on its own thread under a timeout ([`DEFAULT_KEYRING_TIMEOUT`]) and
//!   a timeout is reported as [`StoreError::Unavailable`] with what to do, never a hang;
//! * `token_storage = "auto"` falls back to the file, and says so where the user looks — like
//!   gh's "Authentication credentials saved in plain text" — in one short line: at login and in
//!   `--status` ([`TokenStore::describe`]), not before every command's output (issue 10: a
//!   600-character warning was). The full reason is a debug line (`--verbose`);
//!   `"keyring"` refuses the fallback;
//! * the file is written atomically (temp file, fsync, rename), so a crash mid-save leaves the
//!   old tokens or the new ones, never a torn file that would log the user out.
//!
//! Secrets never reach an error or a log line: errors carry the keyring's or the OS's reason and
//! JSON error positions, never stored bytes.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::config::TokenStorage;

use super::tokens::{Account, StoredTokens};

/// How long one keyring call may take before the keyring counts as unavailable. gh uses 3 s; a
/// little more here because the first call also connects to D-Bus and opens a session.
pub const DEFAULT_KEYRING_TIMEOUT: Duration = Duration::from_secs(5);

/// Windows Credential Manager refuses a secret over 2560 bytes (`CRED_MAX_CREDENTIAL_BLOB_SIZE`).
/// The secret is stored as UTF-8 bytes (`set_secret`, not `set_password`, which the Windows store
/// would encode as UTF-16 and so halve the room), and above this many bytes the `id_token` is
/// left out: it is the largest field, and nothing after login needs it (the subject and username
/// it carried are already copied into [`StoredTokens`]). The same rule applies on every platform
/// so a stored entry looks the same everywhere.
pub const KEYRING_SECRET_BUDGET: usize = 2500;

/// Why the tokens could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No usable OS keyring: none running, locked, refused, or not answering in time. `reason`
    /// says which and what the user can do.
    #[error("OS keyring unavailable: {reason}")]
    Unavailable { reason: String },
    #[error("token file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The stored value is not tokens we wrote (hand-edited, truncated by another tool, or an
    /// older format). The caller treats it as logged out and says so; `detail` never quotes it.
    #[error("stored tokens are unreadable ({detail}); treating this as logged out")]
    Corrupt { detail: String },
}

/// Where a [`TokenStore`] keeps the tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageKind {
    Keyring,
    File,
}

/// The tokens of one [`Account`], in the OS keyring or in `<data_dir>/tokens/<account>.json`.
#[derive(Debug, Clone)]
pub struct TokenStore {
    account: Account,
    kind: StorageKind,
    /// The file backend's path; also known for a keyring store, to migrate a leftover file.
    path: PathBuf,
    timeout: Duration,
    /// Why `auto` fell back to the file: no keyring answered, and this is what it said.
    fallback: Option<String>,
}

impl TokenStore {
    /// Opens the store `setting` asks for, with the default keyring timeout. See
    /// [`TokenStore::open_with_timeout`].
    pub async fn open(
        setting: TokenStorage,
        account: Account,
        data_dir: &Path,
    ) -> Result<TokenStore, StoreError> {
        Self::open_with_timeout(setting, account, data_dir, DEFAULT_KEYRING_TIMEOUT).await
    }

    /// Opens the store: `Keyring` probes the keyring and fails when it does not answer; `File`
    /// uses the file; `Auto` probes the keyring and falls back to the file with a warning.
    ///
    /// The probe is a read of this account's entry ("no entry" means the keyring works), because
    /// only a real call shows a locked or missing keyring; creating an entry checks nothing.
    /// When the keyring works and a tokens file is left from an earlier fallback, the newer of
    /// the two wins (see [`TokenStore::absorb_leftover_file`]).
    pub async fn open_with_timeout(
        setting: TokenStorage,
        account: Account,
        data_dir: &Path,
        timeout: Duration,
    ) -> Result<TokenStore, StoreError> {
        let path = data_dir
            .join("tokens")
            .join(format!("{}.json", file_stem(&account)));
        let mut store = TokenStore {
            account,
            kind: StorageKind::File,
            path,
            timeout,
            fallback: None,
        };
        if setting == TokenStorage::File {
            return Ok(store);
        }
        match store.keyring(|entry| entry.get_secret()).await {
            Ok(in_keyring) => {
                store.kind = StorageKind::Keyring;
                store.absorb_leftover_file(in_keyring.as_deref()).await;
                Ok(store)
            }
            Err(StoreError::Unavailable { reason }) if setting == TokenStorage::Auto => {
                // Every command opens the store: the user is told in `describe` (login,
                // `--status`), and the reason is here for `--verbose`.
                tracing::debug!(
                    "tokens stored in plain text at {}: no OS keyring available ({reason}); \
                     set auth.token_storage = \"keyring\" to refuse this",
                    store.path.display()
                );
                store.fallback = Some(reason);
                Ok(store)
            }
            Err(e) => Err(e),
        }
    }

    /// The stored tokens; `None` when there are none (never logged in, or logged out).
    pub async fn load(&self) -> Result<Option<StoredTokens>, StoreError> {
        match self.kind {
            StorageKind::Keyring => {
                let bytes = self.keyring(|entry| entry.get_secret()).await?;
                bytes.map(|b| parse_tokens(&b)).transpose()
            }
            StorageKind::File => {
                let path = self.path.clone();
                blocking(move || file_load(&path)).await
            }
        }
    }

    /// Stores `tokens`, replacing what was there. In the keyring, the `id_token` is left out
    /// when keeping it would exceed [`KEYRING_SECRET_BUDGET`].
    pub async fn save(&self, tokens: &StoredTokens) -> Result<(), StoreError> {
        match self.kind {
            StorageKind::Keyring => {
                let secret = keyring_secret(tokens)?;
                self.keyring(move |entry| entry.set_secret(secret.as_bytes()))
                    .await?
                    .ok_or_else(|| StoreError::Unavailable {
                        reason: "the keyring lost the entry while it was being written".into(),
                    })
            }
            StorageKind::File => {
                let json = serde_json::to_vec_pretty(tokens).map_err(|e| StoreError::Corrupt {
                    detail: format!("could not serialize the tokens: {}", json_error(&e)),
                })?;
                let path = self.path.clone();
                blocking(move || file_save(&path, &json)).await
            }
        }
    }

    /// Removes the stored tokens; `true` when there were some.
    pub async fn delete(&self) -> Result<bool, StoreError> {
        match self.kind {
            StorageKind::Keyring => Ok(self
                .keyring(|entry| entry.delete_credential())
                .await?
                .is_some()),
            StorageKind::File => {
                let path = self.path.clone();
                blocking(move || file_delete(&path)).await
            }
        }
    }

    /// Where the tokens live, for `--login` and `--status`: one line, which for `auto`'s
    /// fallback says that no keyring answered and how to refuse the file.
    pub fn describe(&self) -> String {
        let mode = if cfg!(unix) { ", mode 0600" } else { "" };
        match (self.kind, &self.fallback) {
            (StorageKind::Keyring, _) => format!("OS keyring ({})", keyring_name()),
            (StorageKind::File, None) => {
                format!("file {} (plain text{mode})", self.path.display())
            }
            (StorageKind::File, Some(_)) => format!(
                "file {} (plain text{mode}: no OS keyring answered; --verbose says why, \
                 auth.token_storage = \"keyring\" refuses the file)",
                self.path.display()
            ),
        }
    }

    /// Why `auto` keeps the tokens in the file: what the keyring said (`None`: it did not fall
    /// back).
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback.as_deref()
    }

    pub fn kind(&self) -> StorageKind {
        self.kind
    }

    /// The tokens file, when that is where the tokens live.
    pub fn file_path(&self) -> Option<&Path> {
        (self.kind == StorageKind::File).then_some(self.path.as_path())
    }

    /// Settles a tokens file left by an earlier `auto` fallback now that the keyring works. The
    /// newer tokens (by `obtained_at`) win: the file's are moved into the keyring when the
    /// keyring has none or older ones (a login during a keyring outage must not be shadowed by
    /// the stale entry, whose rotated refresh token the provider may have revoked), and the file
    /// is removed either way so no plain-text secret lingers. Failures only warn: the file
    /// stays, and the user can still log in again.
    async fn absorb_leftover_file(&self, in_keyring: Option<&[u8]>) {
        let path = self.path.clone();
        let from_file = match blocking(move || file_load(&path)).await {
            Ok(Some(tokens)) => tokens,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!("left the old tokens file alone: {e}");
                return;
            }
        };
        let keyring_obtained = in_keyring
            .and_then(|bytes| parse_tokens(bytes).ok())
            .map(|t| t.obtained_at);
        let file_is_newer = keyring_obtained.map_or(true, |k| from_file.obtained_at > k);
        if file_is_newer {
            if let Err(e) = self.save(&from_file).await {
                tracing::warn!(
                    "could not move the tokens from {} into the OS keyring: {e}",
                    self.path.display()
                );
                return;
            }
        }
        let path = self.path.clone();
        match blocking(move || file_delete(&path)).await {
            Ok(_) if file_is_newer => tracing::info!(
                "moved the tokens from the plain-text file {} into the OS keyring",
                self.path.display()
            ),
            Ok(_) => tracing::info!(
                "removed the plain-text file {}: the OS keyring holds newer tokens",
                self.path.display()
            ),
            Err(e) => tracing::warn!("could not remove the old plain-text tokens: {e}"),
        }
    }

    /// Runs `op` on this account's keyring entry off the async runtime, under the timeout.
    /// `Ok(None)` is the keyring's "no entry".
    async fn keyring<T, F>(&self, op: F) -> Result<Option<T>, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&keyring::Entry) -> keyring::Result<T> + Send + 'static,
    {
        let user = self.account.key();
        let result = call_with_timeout(&KEYRING_CALLS_STUCK, self.timeout, move || {
            let entry = keyring::Entry::new(Account::SERVICE, &user)?;
            op(&entry)
        })
        .await?;
        match result {
            Ok(value) => Ok(Some(value)),
            Err(keyring::Error::NoEntry) => Ok(None),
            Err(e) => Err(keyring_error(e)),
        }
    }
}

/// The file name stem for an account: its key made filesystem-safe and short, plus a hash of
/// the exact key so two issuers that sanitize alike (`https://a/b` vs `https_//a_b`) never share
/// a file.
fn file_stem(account: &Account) -> String {
    let key = account.key();
    let readable: String = key
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_' => c,
            _ => '_',
        })
        .take(80)
        .collect();
    let hash = blake3::hash(key.as_bytes()).to_hex();
    format!("{readable}-{}", &hash.as_str()[..12])
}

/// The compact JSON put in the keyring; see [`KEYRING_SECRET_BUDGET`] for the `id_token` rule.
fn keyring_secret(tokens: &StoredTokens) -> Result<String, StoreError> {
    let serialize = |t: &StoredTokens| {
        serde_json::to_string(t).map_err(|e| StoreError::Corrupt {
            detail: format!("could not serialize the tokens: {}", json_error(&e)),
        })
    };
    let full = serialize(tokens)?;
    if full.len() <= KEYRING_SECRET_BUDGET || tokens.id_token.is_none() {
        return Ok(full);
    }
    tracing::debug!(
        "tokens are {} bytes; leaving the id_token out of the keyring entry (limit {})",
        full.len(),
        KEYRING_SECRET_BUDGET
    );
    let mut compact = tokens.clone();
    compact.id_token = None;
    serialize(&compact)
}

fn parse_tokens(bytes: &[u8]) -> Result<StoredTokens, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        detail: format!(
            "not the tokens JSON this program writes: {}",
            json_error(&e)
        ),
    })
}

/// A JSON error without its message: serde_json quotes offending values ("invalid type: string
/// \"…\"") and a value here may be a token.
fn json_error(e: &serde_json::Error) -> String {
    let kind = match e.classify() {
        serde_json::error::Category::Io => "I/O error",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "missing or mistyped field",
        serde_json::error::Category::Eof => "unexpected end",
    };
    format!("{kind} at line {}, column {}", e.line(), e.column())
}

fn keyring_name() -> &'static str {
    if cfg!(target_os = "macos") {
        "macOS Keychain"
    } else if cfg!(windows) {
        "Windows Credential Manager"
    } else {
        "Secret Service"
    }
}

/// What the user can do about an unusable keyring, per platform.
fn keyring_hint() -> &'static str {
    if cfg!(target_os = "macos") {
        "unlock the login keychain, or set auth.token_storage = \"file\" to keep the tokens in a \
         0600 file instead"
    } else if cfg!(windows) {
        "check that Credential Manager works for this user, or set auth.token_storage = \"file\" \
         to keep the tokens in a file instead"
    } else {
        "start and unlock a Secret Service keyring (log in to the desktop session, or run \
         `gnome-keyring-daemon --unlock`), or set auth.token_storage = \"file\" to keep the \
         tokens in a 0600 file instead"
    }
}

/// Maps a keyring error (other than "no entry") to a [`StoreError`]. Deliberately uses the
/// errors' `Display`, never `Debug`: the `Debug` of `BadEncoding`/`BadDataFormat` holds the
/// stored bytes.
fn keyring_error(e: keyring::Error) -> StoreError {
    let unavailable = |what: String| StoreError::Unavailable {
        reason: format!("{what}; {}", keyring_hint()),
    };
    match e {
        keyring::Error::NoStorageAccess(err) => {
            unavailable(format!("the keyring is locked or refused access ({err})"))
        }
        keyring::Error::PlatformFailure(err) => unavailable(format!("the keyring failed ({err})")),
        // keyring 4 initializes its store once per process and, when that fails, every
        // `Entry::new` says only "no default store": the cause is in `store_status`.
        keyring::Error::NoDefaultStore => match keyring::Entry::store_status() {
            Err(cause) => unavailable(format!("no keyring could be opened ({cause})")),
            Ok(()) => unavailable("no keyring store is set up".into()),
        },
        keyring::Error::BadEncoding(_) | keyring::Error::BadDataFormat(..) => StoreError::Corrupt {
            detail: "the keyring entry is not readable data".into(),
        },
        keyring::Error::TooLong(field, limit) => unavailable(format!(
            "the tokens are too long for this keyring ({field} is over its limit of {limit})"
        )),
        keyring::Error::Ambiguous(entries) => unavailable(format!(
            "{} keyring entries match service \"{}\" and this account; remove the extra ones \
             (e.g. `secret-tool clear service {}`)",
            entries.len(),
            Account::SERVICE,
            Account::SERVICE
        )),
        other => unavailable(format!("the keyring failed ({other})")),
    }
}

/// Keyring calls that timed out and are still blocked on their threads. While one is, the
/// keyring (which serializes calls behind one connection) would block the next call too, so new
/// calls fail at once instead of piling up threads.
static KEYRING_CALLS_STUCK: AtomicUsize = AtomicUsize::new(0);

const RUNNING: u8 = 0;
const DONE: u8 = 1;
const ABANDONED: u8 = 2;

/// Runs a blocking `call` on a new thread and waits for it at most `timeout`.
///
/// A plain thread rather than `tokio::task::spawn_blocking`: a runtime waits for its blocking
/// tasks when it shuts down, so one keyring call stuck on a locked collection would hang the
/// program's exit. An abandoned thread is counted in `stuck` until it returns; while any is,
/// calls fail at once (see [`KEYRING_CALLS_STUCK`]).
async fn call_with_timeout<T, F>(
    stuck: &'static AtomicUsize,
    timeout: Duration,
    call: F,
) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    if stuck.load(Ordering::SeqCst) > 0 {
        return Err(StoreError::Unavailable {
            reason: format!(
                "an earlier keyring call has not returned yet (the keyring may be locked and \
                 waiting for a password prompt); {}",
                keyring_hint()
            ),
        });
    }
    let state = Arc::new(AtomicU8::new(RUNNING));
    let thread_state = state.clone();
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("keyring-call".into())
        .spawn(move || {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(call));
            let _ = tx.send(result);
            if thread_state
                .compare_exchange(RUNNING, DONE, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
            {
                stuck.fetch_sub(1, Ordering::SeqCst);
            }
        });
    if let Err(e) = spawned {
        return Err(StoreError::Unavailable {
            reason: format!("could not start a thread for the keyring call ({e})"),
        });
    }
    match tokio::time::timeout(timeout, &mut rx).await {
        Ok(result) => finished(result.ok()),
        Err(_elapsed) => {
            stuck.fetch_add(1, Ordering::SeqCst);
            if state
                .compare_exchange(RUNNING, ABANDONED, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
            {
                // It finished between the timeout and now: use the answer after all.
                stuck.fetch_sub(1, Ordering::SeqCst);
                return finished(rx.try_recv().ok());
            }
            Err(StoreError::Unavailable {
                reason: format!(
                    "the keyring did not answer within {:.1} s (it may be locked and waiting \
                     for a password prompt that cannot be shown); {}",
                    timeout.as_secs_f64(),
                    keyring_hint()
                ),
            })
        }
    }
}

/// The answer of a keyring call's thread; `None` (the thread died without answering) or a panic
/// in the keyring library is reported as unavailable, never re-raised.
fn finished<T>(result: Option<std::thread::Result<T>>) -> Result<T, StoreError> {
    match result {
        Some(Ok(value)) => Ok(value),
        Some(Err(_)) | None => Err(StoreError::Unavailable {
            reason: format!("the keyring library crashed; {}", keyring_hint()),
        }),
    }
}

/// File I/O off the async runtime: fsync can take a while on a busy disk.
async fn blocking<T, F>(f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Io {
            path: PathBuf::new(),
            source: std::io::Error::other(format!("token file task failed: {e}")),
        })?
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

fn file_load(path: &Path) -> Result<Option<StoredTokens>, StoreError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(path)(e)),
    };
    tighten_permissions(path);
    parse_tokens(&bytes).map(Some)
}

/// A tokens file readable by others (copied around, restored from a backup) is made private
/// again, with a warning, rather than refused: refusing would only log the user out.
fn tighten_permissions(path: &Path) {
    match crate::private_fs::tighten(path, crate::private_fs::FILE_MODE) {
        Ok(None) => {}
        Ok(Some(mode)) => tracing::warn!(
            "{} was readable by others (mode {mode:o}); changed it to 0600",
            path.display()
        ),
        Err(e) => tracing::warn!(
            "{} may be readable by others and could not be made private: {e}",
            path.display()
        ),
    }
}

/// Creates the tokens directory private to the user (0700 on Unix), tightening it when it
/// already exists looser.
fn ensure_private_dir(dir: &Path) -> Result<(), StoreError> {
    crate::private_fs::private_dir(dir).map_err(io_error(dir))
}

/// Writes the file atomically: a new 0600 temp file in the same directory, fsync, rename over
/// the old one, fsync the directory. A crash at any point leaves either the old tokens or the
/// new ones; a refresh token rotated by the provider is only usable if it survives.
fn file_save(path: &Path, json: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().ok_or_else(|| StoreError::Io {
        path: path.to_owned(),
        source: std::io::Error::other("the tokens file has no directory"),
    })?;
    ensure_private_dir(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    let result = write_new_private(&tmp, json)
        .and_then(|()| std::fs::rename(&tmp, path).map_err(io_error(path)))
        .and_then(|()| sync_dir(dir));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn write_new_private(tmp: &Path, json: &[u8]) -> Result<(), StoreError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(tmp).map_err(io_error(tmp))?;
    file.write_all(json)
        .and_then(|()| file.sync_all())
        .map_err(io_error(tmp))
}

/// Makes the rename durable: on Unix the directory entry is only on disk after the directory is
/// synced. Windows has no directory handles to sync; its rename is durable enough there.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error(dir))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

fn file_delete(path: &Path) -> Result<bool, StoreError> {
    match std::fs::remove_file(path) {
        Ok(()) => {
            if let Some(dir) = path.parent() {
                sync_dir(dir)?;
            }
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_error(path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn account() -> Account {
        Account {
            issuer: "https://idp.example.com/realms/a b".into(),
            client_id: "aw-sync".into(),
        }
    }

    fn tokens(access: &str) -> StoredTokens {
        StoredTokens {
            access_token: access.into(),
            refresh_token: Some("RT-SECRET".into()),
            expires_at: Some(Utc::now()),
            scope: Some("openid offline_access".into()),
            id_token: Some("ID-SECRET".into()),
            subject: Some("alice".into()),
            username: Some("alice@example.com".into()),
            issuer: account().issuer,
            client_id: account().client_id,
            obtained_at: Utc::now(),
        }
    }

    async fn file_store(dir: &Path) -> TokenStore {
        TokenStore::open(TokenStorage::File, account(), dir)
            .await
            .expect("file store opens")
    }

    #[tokio::test]
    async fn load_of_nothing_is_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = file_store(dir.path()).await;
        assert_eq!(store.kind(), StorageKind::File);
        assert!(store.load().await.expect("load").is_none());
        // Opening and loading create nothing.
        assert!(!dir.path().join("tokens").exists());
    }

    #[tokio::test]
    async fn file_lives_in_tokens_dir_with_a_safe_unique_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = file_store(dir.path()).await;
        let path = store.file_path().expect("file store has a path").to_owned();
        assert_eq!(path.parent(), Some(dir.path().join("tokens").as_path()));
        let name = path.file_name().and_then(|n| n.to_str()).expect("utf-8");
        assert!(name.ends_with(".json"), "{name}");
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)),
            "{name}"
        );
        let other = Account {
            issuer: "https_//idp.example.com/realms/a_b".into(),
            client_id: "aw-sync".into(),
        };
        assert_ne!(file_stem(&account()), file_stem(&other));
        assert!(store.describe().contains(&path.display().to_string()));
        assert!(store.describe().contains("plain text"));
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn file_is_0600_and_dir_0700() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = file_store(dir.path()).await;
        store.save(&tokens("AT-1")).await.expect("save");
        let path = store.file_path().expect("path");
        let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode(path), 0o600);
        assert_eq!(mode(&dir.path().join("tokens")), 0o700);

        // A file and dir loosened by hand are tightened again.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        std::fs::set_permissions(
            dir.path().join("tokens"),
            std::fs::Permissions::from_mode(0o755),
        )
        .expect("chmod");
        assert!(store.load().await.expect("load").is_some());
        assert_eq!(mode(path), 0o600);
        store.save(&tokens("AT-2")).await.expect("save");
        assert_eq!(mode(&dir.path().join("tokens")), 0o700);
        assert_eq!(mode(path), 0o600);
    }

    #[tokio::test]
    async fn save_overwrites_atomically_and_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = file_store(dir.path()).await;
        let first = tokens("AT-1");
        store.save(&first).await.expect("save");
        assert_eq!(store.load().await.expect("load"), Some(first));

        // A temp file left by a crash mid-save does not disturb the stored tokens.
        let tokens_dir = dir.path().join("tokens");
        let stale = tokens_dir.join(".stale.tmp");
        std::fs::write(&stale, b"{\"access_to").expect("write stale");

        let second = tokens("AT-2");
        store.save(&second).await.expect("overwrite");
        assert_eq!(store.load().await.expect("load"), Some(second.clone()));

        // The overwrite replaced the file (a rename, so a new inode) instead of rewriting it
        // in place, and left no temp file of its own.
        let names: Vec<String> = std::fs::read_dir(&tokens_dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names.iter().any(|n| n == ".stale.tmp"));

        // What is on disk is complete JSON for the new tokens.
        let on_disk: StoredTokens =
            serde_json::from_slice(&std::fs::read(store.file_path().expect("path")).expect("read"))
                .expect("complete JSON");
        assert_eq!(on_disk, second);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn overwrite_is_a_rename_not_an_in_place_write() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = file_store(dir.path()).await;
        store.save(&tokens("AT-1")).await.expect("save");
        let path = store.file_path().expect("path").to_owned();
        // Hold the old file open: an in-place rewrite would change what this handle reads.
        let old_ino = std::fs::metadata(&path).expect("meta").ino();
        let old_handle_bytes = std::fs::read(&path).expect("read");
        let old = std::fs::File::open(&path).expect("open");
        store.save(&tokens("AT-2")).await.expect("save");
        let new_ino = std::fs::metadata(&path).expect("meta").ino();
        assert_ne!(
            old_ino, new_ino,
            "the new tokens replace the file by rename"
        );
        let mut still_old = Vec::new();
        std::io::Read::read_to_end(&mut &old, &mut still_old).expect("read old handle");
        assert_eq!(
            still_old, old_handle_bytes,
            "the old file was never modified"
        );
    }

    #[tokio::test]
    async fn corrupt_file_is_corrupt_and_never_quoted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = file_store(dir.path()).await;
        store.save(&tokens("AT-1")).await.expect("save");
        let path = store.file_path().expect("path").to_owned();
        for garbage in [
            &b"not json at all"[..],
            b"{\"access_token\": \"AT-SECRET\", \"refr",
            b"\"AT-SECRET\"",
            b"",
            &[0xff, 0xfe, 0x00],
        ] {
            std::fs::write(&path, garbage).expect("write garbage");
            match store.load().await {
                Err(e @ StoreError::Corrupt { .. }) => {
                    let text = e.to_string();
                    assert!(!text.contains("SECRET"), "{text}");
                    assert!(text.contains("logged out"), "{text}");
                }
                other => panic!("expected Corrupt for {garbage:?}, got {other:?}"),
            }
        }
        // A corrupt file can still be replaced by a login, and removed by a logout.
        store
            .save(&tokens("AT-3"))
            .await
            .expect("save over garbage");
        assert_eq!(
            store.load().await.expect("load").map(|t| t.access_token),
            Some("AT-3".into())
        );
    }

    #[tokio::test]
    async fn delete_is_true_then_false() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = file_store(dir.path()).await;
        assert!(!store.delete().await.expect("delete nothing"));
        store.save(&tokens("AT-1")).await.expect("save");
        assert!(store.delete().await.expect("delete"));
        assert!(!store.delete().await.expect("delete again"));
        assert!(store.load().await.expect("load").is_none());
        assert!(!store.file_path().expect("path").exists());
    }

    #[test]
    fn keyring_secret_drops_id_token_only_when_too_long() {
        let small = tokens("AT");
        let secret = keyring_secret(&small).expect("serializes");
        assert!(!secret.contains('\n'), "compact JSON");
        let back: StoredTokens = serde_json::from_str(&secret).expect("parses");
        assert_eq!(back, small);

        let mut big = tokens(&"A".repeat(1200));
        big.id_token = Some("I".repeat(1500));
        let secret = keyring_secret(&big).expect("serializes");
        assert!(secret.len() <= KEYRING_SECRET_BUDGET, "{}", secret.len());
        let back: StoredTokens = serde_json::from_str(&secret).expect("parses");
        assert_eq!(back.id_token, None);
        assert_eq!(back.access_token, big.access_token);
        assert_eq!(back.refresh_token, big.refresh_token);
    }

    static TEST_STUCK: AtomicUsize = AtomicUsize::new(0);

    /// The timeout mechanism itself, with a call that blocks like a locked keyring (the real
    /// locked Secret Service is in tests/it/keyring.rs).
    #[tokio::test]
    async fn a_blocked_call_times_out_then_fails_fast_until_it_returns() {
        let start = std::time::Instant::now();
        let err = call_with_timeout(&TEST_STUCK, Duration::from_millis(100), || {
            std::thread::sleep(Duration::from_millis(500));
            1
        })
        .await
        .expect_err("times out");
        let elapsed = start.elapsed();
        assert!(elapsed < Duration::from_millis(400), "{elapsed:?}");
        assert!(
            err.to_string().contains("did not answer within 0.1 s"),
            "{err}"
        );
        assert!(err.to_string().contains("token_storage"), "{err}");

        // While the first call is still blocked, the next fails at once without a new thread.
        let start = std::time::Instant::now();
        let err = call_with_timeout(&TEST_STUCK, Duration::from_secs(5), || 2)
            .await
            .expect_err("fails fast");
        assert!(start.elapsed() < Duration::from_millis(50));
        assert!(err.to_string().contains("has not returned yet"), "{err}");

        // Once it returns, calls work again.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(TEST_STUCK.load(Ordering::SeqCst), 0);
        let value = call_with_timeout(&TEST_STUCK, Duration::from_secs(5), || 3)
            .await
            .expect("works again");
        assert_eq!(value, 3);
    }

    #[tokio::test]
    async fn a_panicking_call_is_unavailable_not_a_panic() {
        static STUCK: AtomicUsize = AtomicUsize::new(0);
        let err = call_with_timeout(&STUCK, Duration::from_secs(5), || -> u8 {
            panic!("boom in the keyring library")
        })
        .await
        .expect_err("panic becomes an error");
        assert!(matches!(err, StoreError::Unavailable { .. }), "{err}");
    }
}
