//! Opening the system browser (RFC 8252 §8.12: never an embedded web view) — or knowing when not
//! to. Launching a browser over SSH opens it on the remote machine's screen (or fails quietly),
//! and on a Linux box with no display there is nothing to open it on; in both cases the caller
//! should print the URL instead of pretending (the gh/gcloud complaints in the notes). `$BROWSER`
//! always wins, as the user's explicit choice (and the tests' way to play the user).

use std::ffi::OsString;
use std::fmt;

use url::Url;

/// What happened when asked to open the browser. Never an error: the caller prints the URL in
/// every case and only words it differently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrowserOutcome {
    /// A browser was started (it may still fail to show the page; the URL is printed anyway).
    Opened,
    /// Not attempted, and why.
    Skipped(SkipReason),
    /// Attempted and failed.
    Failed(String),
}

impl BrowserOutcome {
    pub fn opened(&self) -> bool {
        matches!(self, BrowserOutcome::Opened)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// SSH_CONNECTION or SSH_TTY is set: a browser would open on the remote side.
    Ssh,
    /// Linux/BSD without DISPLAY or WAYLAND_DISPLAY (and not WSL).
    NoDisplay,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SkipReason::Ssh => "this is an SSH session, so a browser would open on the remote machine (set BROWSER to override)",
            SkipReason::NoDisplay => "there is no graphical display (neither DISPLAY nor WAYLAND_DISPLAY is set)",
        })
    }
}

impl fmt::Display for BrowserOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BrowserOutcome::Opened => f.write_str("opened the browser"),
            BrowserOutcome::Skipped(why) => write!(f, "did not open a browser: {why}"),
            BrowserOutcome::Failed(why) => write!(f, "could not open a browser: {why}"),
        }
    }
}

/// Why no browser can be opened in this process's environment (`None`: one can). The login
/// then signs in with a code on another device, or asks for the address to be pasted back.
pub fn reason_not_to_open() -> Option<SkipReason> {
    let env = |key: &str| std::env::var_os(key);
    skip_reason(&env, cfg!(all(unix, not(target_os = "macos"))), is_wsl())
}

/// Opens `url` in the user's browser unless that is pointless (see [`SkipReason`]). May block
/// briefly while the launcher starts (and for as long as a text-mode `$BROWSER` runs); call it
/// from `spawn_blocking` on an async runtime.
pub fn open(url: &Url) -> BrowserOutcome {
    if let Some(why) = reason_not_to_open() {
        tracing::info!("not opening a browser: {why}");
        return BrowserOutcome::Skipped(why);
    }
    // A launcher bug must not take the login down with it.
    match std::panic::catch_unwind(|| webbrowser::open(url.as_str())) {
        Ok(Ok(())) => BrowserOutcome::Opened,
        Ok(Err(e)) => BrowserOutcome::Failed(e.to_string()),
        Err(_) => BrowserOutcome::Failed("the browser launcher crashed".into()),
    }
}

/// The decision, apart from the process environment so it can be tested.
fn skip_reason(
    env: &dyn Fn(&str) -> Option<OsString>,
    needs_display: bool,
    wsl: bool,
) -> Option<SkipReason> {
    let set = |key: &str| env(key).is_some_and(|v| !v.is_empty());
    if set("BROWSER") {
        return None;
    }
    if set("SSH_CONNECTION") || set("SSH_TTY") {
        return Some(SkipReason::Ssh);
    }
    // WSL has no DISPLAY but opens the Windows browser (webbrowser uses wslview/cmd.exe).
    if needs_display && !wsl && !set("DISPLAY") && !set("WAYLAND_DISPLAY") {
        return Some(SkipReason::NoDisplay);
    }
    None
}

fn is_wsl() -> bool {
    if !cfg!(target_os = "linux") {
        return false;
    }
    std::env::var_os("WSL_DISTRO_NAME").is_some_and(|v| !v.is_empty())
        || std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .is_ok_and(|r| r.to_ascii_lowercase().contains("microsoft"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<OsString> {
        move |key| {
            pairs
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn decides_when_to_skip() {
        let desktop = env_of(&[("DISPLAY", ":0")]);
        assert_eq!(skip_reason(&desktop, true, false), None);
        let wayland = env_of(&[("WAYLAND_DISPLAY", "wayland-0")]);
        assert_eq!(skip_reason(&wayland, true, false), None);
        let headless = env_of(&[]);
        assert_eq!(
            skip_reason(&headless, true, false),
            Some(SkipReason::NoDisplay)
        );
        assert_eq!(skip_reason(&headless, true, true), None, "WSL");
        assert_eq!(skip_reason(&headless, false, false), None, "macOS/Windows");
        let ssh = env_of(&[("SSH_CONNECTION", "1 2 3 4"), ("DISPLAY", "localhost:10")]);
        assert_eq!(skip_reason(&ssh, true, false), Some(SkipReason::Ssh));
        let ssh_browser = env_of(&[("SSH_TTY", "/dev/pts/1"), ("BROWSER", "w3m")]);
        assert_eq!(skip_reason(&ssh_browser, true, false), None);
        let headless_browser = env_of(&[("BROWSER", "/bin/echo")]);
        assert_eq!(skip_reason(&headless_browser, true, false), None);
        let empty = env_of(&[("SSH_TTY", ""), ("DISPLAY", ":1")]);
        assert_eq!(skip_reason(&empty, true, false), None, "empty means unset");
    }
}
