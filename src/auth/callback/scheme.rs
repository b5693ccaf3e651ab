//! `--register-scheme`: makes the OS start `aw-sync-samay --callback <url>` for the deep-link
//! scheme. On Linux that is a hidden desktop entry in the user's `applications` directory plus
//! `xdg-mime default`; on macOS and Windows the scheme belongs to the installer (the app
//! bundle's `Info.plist`, a registry key), see `packaging/`.

use std::path::{Path, PathBuf};

#[cfg(all(unix, not(target_os = "macos")))]
/// The desktop entry's file name (also what `xdg-mime` is told is the handler).
pub const DESKTOP_FILE: &str = "aw-sync-samay-callback.desktop";

/// What `register_scheme` did, for the user.
#[derive(Debug, Clone, Default)]
pub struct Registration {
    /// Files written.
    pub files: Vec<PathBuf>,
    /// One line per step taken or skipped (tools run, tools missing and what to do instead).
    pub steps: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SchemeError {
    #[error("invalid `auth.deep_link_uri` {uri:?}: {reason}")]
    BadUri { uri: String, reason: String },
    #[error("the program path {} cannot be put in a desktop entry: {reason}", path.display())]
    BadExe { path: PathBuf, reason: String },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot find the data directory: {0}")]
    Paths(#[from] crate::paths::PathsError),
    #[error("{0}")]
    Unsupported(&'static str),
}

#[cfg(all(unix, not(target_os = "macos")))]
/// The scheme of `scheme_uri` (`samay` of `samay://callback`), refusing schemes that belong to
/// browsers or the network: registering ourselves for `https` would be a disaster.
fn scheme_of(scheme_uri: &str) -> Result<String, SchemeError> {
    let bad = |reason: &str| SchemeError::BadUri {
        uri: scheme_uri.to_string(),
        reason: reason.to_string(),
    };
    let url = url::Url::parse(scheme_uri).map_err(|e| bad(&format!("not a URL ({e})")))?;
    let scheme = url.scheme();
    if matches!(
        scheme,
        "http" | "https" | "file" | "ftp" | "data" | "javascript" | "mailto" | "ws" | "wss"
    ) {
        return Err(bad("not a private-use scheme"));
    }
    Ok(scheme.to_string())
}

#[cfg(all(unix, not(target_os = "macos")))]
/// `Exec=` value for `exe`: quoted per the Desktop Entry spec (inside quotes `"`, `` ` ``, `$`,
/// `\` take a backslash, `%` is doubled), then the string-value escaping that doubles every
/// backslash again.
fn exec_line(exe: &Path) -> Result<String, SchemeError> {
    let bad = |reason: &str| SchemeError::BadExe {
        path: exe.to_path_buf(),
        reason: reason.to_string(),
    };
    let text = exe.to_str().ok_or_else(|| bad("it is not valid UTF-8"))?;
    if !exe.is_absolute() {
        return Err(bad("it must be absolute"));
    }
    if text.chars().any(char::is_control) {
        return Err(bad("it contains control characters"));
    }
    let mut quoted = String::from("\"");
    for c in text.chars() {
        match c {
            '"' | '`' | '$' | '\\' => {
                quoted.push('\\');
                quoted.push(c);
            }
            '%' => quoted.push_str("%%"),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    Ok(format!("{} --callback %u", quoted.replace('\\', "\\\\")))
}

#[cfg(all(unix, not(target_os = "macos")))]
/// The hidden desktop entry that hands `<scheme>:` URLs to `exe --callback`.
pub fn desktop_entry(scheme_uri: &str, exe: &Path) -> Result<String, SchemeError> {
    let scheme = scheme_of(scheme_uri)?;
    Ok(format!(
        "[Desktop Entry]\n\
Type=Application\n\
Name=aw-sync-samay sign-in\n\
Comment=Finishes an aw-sync-samay browser sign-in\n\
Exec={}\n\
Terminal=false\n\
NoDisplay=true\n\
MimeType=x-scheme-handler/{scheme};\n",
        exec_line(exe)?
    ))
}

/// Registers `exe --callback %u` as the handler of `scheme_uri`'s scheme for this user.
///
/// Linux: writes `<XDG_DATA_HOME>/applications/aw-sync-samay-callback.desktop`, then runs
/// `xdg-mime default` and `update-desktop-database` when they are installed; what was run or
/// skipped is in [`Registration::steps`]. A failing tool is reported there, not as an error,
/// because the file alone already works for most desktops after the next login.
///
/// macOS and Windows: an error saying where the installer does it (`packaging/`).
pub fn register_scheme(scheme_uri: &str, exe: &Path) -> Result<Registration, SchemeError> {
    #[cfg(all(unix, not(target_os = "macos")))]
    {
        let base = directories::BaseDirs::new().ok_or(crate::paths::PathsError::NoHomeDir)?;
        register_in(&base.data_dir().join("applications"), scheme_uri, exe)
    }
    #[cfg(target_os = "macos")]
    {
        let _ = (scheme_uri, exe);
        Err(SchemeError::Unsupported(
            "on macOS the URL scheme is declared by the app bundle's Info.plist (CFBundleURLTypes, see packaging/macos); there is nothing to register at run time",
        ))
    }
    #[cfg(windows)]
    {
        let _ = (scheme_uri, exe);
        Err(SchemeError::Unsupported(
            "on Windows the installer registers the scheme under HKCU\\Software\\Classes (see packaging/windows/register-scheme.reg)",
        ))
    }
}

#[cfg(all(unix, not(target_os = "macos")))]
fn register_in(apps: &Path, scheme_uri: &str, exe: &Path) -> Result<Registration, SchemeError> {
    let scheme = scheme_of(scheme_uri)?;
    let entry = desktop_entry(scheme_uri, exe)?;
    let path = apps.join(DESKTOP_FILE);
    let write_err = |source| SchemeError::Write {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(apps).map_err(write_err)?;
    // Written aside and renamed, so a desktop never reads half a file.
    let tmp = apps.join(format!(".{DESKTOP_FILE}.tmp"));
    std::fs::write(&tmp, entry).map_err(write_err)?;
    std::fs::rename(&tmp, &path).map_err(write_err)?;

    let mut done = Registration {
        files: vec![path.clone()],
        steps: vec![format!("wrote {}", path.display())],
    };
    let mime = format!("x-scheme-handler/{scheme}");
    done.steps
        .push(run_tool("xdg-mime", &["default", DESKTOP_FILE, &mime]));
    let apps_arg = apps.to_string_lossy();
    done.steps
        .push(run_tool("update-desktop-database", &[apps_arg.as_ref()]));
    Ok(done)
}

#[cfg(all(unix, not(target_os = "macos")))]
fn run_tool(tool: &str, args: &[&str]) -> String {
    let Some(program) = find_in_path(tool) else {
        return format!(
            "{tool} is not installed; skipped (the desktop entry is picked up at the next login)"
        );
    };
    let line = format!("{tool} {}", args.join(" "));
    match std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => format!("ran `{line}`"),
        Ok(out) => format!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => format!("could not run `{line}`: {e}"),
    }
}

#[cfg(all(unix, not(target_os = "macos")))]
fn find_in_path(tool: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_is_quoted_per_the_desktop_entry_spec() {
        let line = exec_line(Path::new("/opt/my apps/a\"b$c%d\\e")).expect("valid");
        assert_eq!(line, r#""/opt/my apps/a\\"b\\$c%%d\\\\e" --callback %u"#);
        assert!(exec_line(Path::new("relative/aw")).is_err());
        assert!(exec_line(Path::new("/bin/a\nb")).is_err());
    }

    #[test]
    fn web_schemes_are_refused() {
        assert!(desktop_entry("https://example.com/cb", Path::new("/bin/x")).is_err());
        let entry = desktop_entry("app.samay:/callback", Path::new("/bin/x")).expect("ok");
        assert!(entry.contains("MimeType=x-scheme-handler/app.samay;\n"));
    }
}
