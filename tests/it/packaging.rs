//! The packaging files are valid for the tools that read them: the systemd user unit for
//! systemd (`systemd-analyze verify`), the launchd agent for an XML plist reader (`xmllint`),
//! the aw-qt snippet for a TOML parser, and `scripts/install.sh` for bash — and the installer
//! really installs the binary and registers the deep-link handler, in a throwaway HOME; the
//! release binary's layout script (`packaging/linux/hot-text.ld`) for both linkers.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn packaging(rel: &str) -> PathBuf {
    root().join("packaging").join(rel)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Whether `tool` is an executable on PATH.
fn on_path(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir| dir.join(tool).is_file())
}

fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ---------------------------------------------------------------------------------------------
// systemd user unit

const UNIT: &str = "aw-sync-samay.service";

/// `systemd-analyze verify --user` on `unit_text`, in a fake HOME whose
/// `~/.local/bin/aw-sync-samay` exists (verify checks that ExecStart is executable) and with a
/// private runtime dir (`--user` needs one; there is no user session in a test).
fn systemd_verify(unit_text: &str) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    let bin = home.join(".local/bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_aw-sync-samay"),
        bin.join("aw-sync-samay"),
    )
    .expect("symlink the binary");
    let runtime = dir.path().join("runtime");
    std::fs::create_dir_all(&runtime).expect("runtime dir");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let units = dir.path().join("units");
    std::fs::create_dir_all(&units).expect("units dir");
    let path = units.join(UNIT);
    std::fs::write(&path, unit_text).expect("write unit");
    Command::new("systemd-analyze")
        .args(["verify", "--user"])
        .arg(&path)
        .env("HOME", &home)
        .env("XDG_RUNTIME_DIR", &runtime)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .stdin(Stdio::null())
        .output()
        .expect("run systemd-analyze")
}

/// `[section]` → `key=value` lines of a unit file (comments and blanks dropped).
fn unit_keys(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_string();
        } else if let Some((k, v)) = line.split_once('=') {
            out.push((section.clone(), k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

#[test]
fn systemd_unit_has_the_keys_the_daemon_needs() {
    let text = read(&packaging(&format!("linux/{UNIT}")));
    let keys = unit_keys(&text);
    let has = |section: &str, key: &str, value: &str| {
        keys.iter()
            .any(|(s, k, v)| s == section && k == key && v == value)
    };
    assert!(has("Service", "ExecStart", "%h/.local/bin/aw-sync-samay"));
    assert!(has("Service", "Restart", "on-failure"));
    assert!(has("Unit", "After", "default.target"));
    assert!(has("Install", "WantedBy", "default.target"));
    // No argument, like aw-qt: the daemon's defaults are what a service needs.
    assert!(!keys
        .iter()
        .any(|(_, k, v)| k == "ExecStart" && v.contains(" --")));
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    if !on_path("systemd-analyze") {
        eprintln!("systemd-analyze not installed (scripts/install-peers.sh installs it): only the key check ran");
        return;
    }
    let text = read(&packaging(&format!("linux/{UNIT}")));
    let out = systemd_verify(&text);
    assert!(
        out.status.success() && text_is_clean(&out),
        "systemd-analyze verify:\n{}",
        output_text(&out)
    );
    // The check is not vacuous: a misspelt key and a missing program are reported.
    let bad = text.replace("Restart=on-failure", "Restrat=on-failure");
    let out = systemd_verify(&bad);
    assert!(
        output_text(&out).contains("Unknown key"),
        "a typo should be reported:\n{}",
        output_text(&out)
    );
    let bad = text.replace("/.local/bin/aw-sync-samay", "/.local/bin/nope");
    let out = systemd_verify(&bad);
    assert!(!out.status.success(), "a missing program should fail");
}

/// Nothing on stdout/stderr: verify prints warnings (unknown keys, bad values) but exits 0.
fn text_is_clean(out: &Output) -> bool {
    output_text(out).trim().is_empty()
}

// ---------------------------------------------------------------------------------------------
// launchd agent

const PLIST: &str = "macos/net.activitywatch.aw-sync-samay.plist";

fn xmllint(args: &[&str], file: &Path) -> Output {
    assert!(
        on_path("xmllint"),
        "xmllint is missing: run scripts/install-peers.sh (Debian package libxml2-utils)"
    );
    Command::new("xmllint")
        .args(args)
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .expect("run xmllint")
}

/// The plist element that follows `<key>name</key>` at the top level, as XML text.
fn plist_value(file: &Path, key: &str) -> String {
    let xpath = format!("/plist/dict/key[text()='{key}']/following-sibling::*[1]");
    let out = xmllint(&["--xpath", &xpath], file);
    assert!(
        out.status.success(),
        "no {key} in the plist: {}",
        output_text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn launchd_agent_is_well_formed_and_restarts_only_on_failure() {
    let path = packaging(PLIST);
    let out = xmllint(&["--noout"], &path);
    assert!(
        out.status.success(),
        "xmllint --noout:\n{}",
        output_text(&out)
    );

    assert!(
        plist_value(&path, "Label").contains("<string>net.activitywatch.aw-sync-samay</string>")
    );
    assert_eq!(plist_value(&path, "RunAtLoad").trim(), "<true/>");
    let keep = plist_value(&path, "KeepAlive");
    assert!(
        keep.contains("<key>SuccessfulExit</key>") && keep.contains("<false/>"),
        "KeepAlive must restart after a failure only: {keep}"
    );
    let program = plist_value(&path, "ProgramArguments");
    assert!(
        program.contains("exec \"$HOME/.local/bin/aw-sync-samay\""),
        "{program}"
    );

    // The check is not vacuous: a broken file is refused.
    let dir = tempfile::tempdir().expect("tempdir");
    let broken = dir.path().join("broken.plist");
    std::fs::write(
        &broken,
        read(&path).replace("</dict>\n</plist>", "</plist>"),
    )
    .expect("write");
    assert!(!xmllint(&["--noout"], &broken).status.success());
}

// ---------------------------------------------------------------------------------------------
// aw-qt snippet

#[test]
fn aw_qt_snippet_autostarts_the_module_in_both_modes_and_keeps_the_defaults() {
    let text = read(&packaging("aw-qt.toml"));
    let table: toml::Table = toml::from_str(&text).expect("aw-qt.toml is valid TOML");
    for section in ["aw-qt", "aw-qt-testing"] {
        let modules: Vec<&str> = table
            .get(section)
            .and_then(|s| s.get("autostart_modules"))
            .and_then(|m| m.as_array())
            .unwrap_or_else(|| panic!("[{section}] autostart_modules is missing"))
            .iter()
            .map(|v| v.as_str().expect("module names are strings"))
            .collect();
        // autostart_modules replaces aw-qt's default list: the defaults must stay in it.
        for module in [
            "aw-server",
            "aw-watcher-afk",
            "aw-watcher-window",
            "aw-sync-samay",
        ] {
            assert!(modules.contains(&module), "[{section}] lacks {module}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Windows startup entry (no PowerShell here: its content is checked, not run)

#[test]
fn windows_startup_script_makes_a_startup_shortcut_and_can_remove_it() {
    let text = read(&packaging("windows/install-startup.ps1"));
    assert!(text.contains("GetFolderPath('Startup')"));
    assert!(text.contains("aw-sync-samay.lnk"));
    assert!(text.contains("WScript.Shell"));
    assert!(text.contains("[switch]$Remove"));
}

// ---------------------------------------------------------------------------------------------
// scripts/install.sh

fn install_sh() -> PathBuf {
    root().join("scripts/install.sh")
}

#[test]
fn install_sh_is_valid_bash() {
    let out = Command::new("bash")
        .arg("-n")
        .arg(install_sh())
        .output()
        .expect("run bash -n");
    assert!(out.status.success(), "bash -n:\n{}", output_text(&out));
}

/// install.sh in a throwaway HOME (XDG dirs inside), with `PATH` = `path_dirs` + the system's.
fn run_install(home: &Path, path_dirs: &[&Path], args: &[&str]) -> Output {
    let system_path = std::env::var_os("PATH").unwrap_or_default();
    let path = std::env::join_paths(
        path_dirs
            .iter()
            .map(|p| p.to_path_buf())
            .chain(std::env::split_paths(&system_path)),
    )
    .expect("PATH");
    Command::new("bash")
        .arg(install_sh())
        .args([
            "--no-build",
            "--binary",
            env!("CARGO_BIN_EXE_aw-sync-samay"),
        ])
        .args(args)
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_DATA_HOME", home.join("data"))
        .env("XDG_CACHE_HOME", home.join("cache"))
        .env("PATH", path)
        .env_remove("XDG_RUNTIME_DIR")
        .stdin(Stdio::null())
        .output()
        .expect("run install.sh")
}

fn assert_installed(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let meta =
        std::fs::metadata(path).unwrap_or_else(|e| panic!("{} not installed: {e}", path.display()));
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o755,
        "{}",
        path.display()
    );
    let built = std::fs::metadata(env!("CARGO_BIN_EXE_aw-sync-samay")).expect("built binary");
    assert_eq!(meta.len(), built.len(), "a complete copy");
    let version = Command::new(path)
        .arg("--version")
        .output()
        .expect("run the installed binary");
    assert!(
        String::from_utf8_lossy(&version.stdout).starts_with("aw-sync-samay "),
        "{}",
        output_text(&version)
    );
}

#[test]
fn install_sh_installs_into_a_prefix_says_when_it_is_not_on_path_and_registers_the_handler() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    let prefix = dir.path().join("prefix");
    let out = run_install(
        &home,
        &[],
        &["--prefix", prefix.to_str().expect("utf-8 path")],
    );
    let said = output_text(&out);
    assert!(out.status.success(), "install.sh:\n{said}");
    let bin_dir = prefix.join("bin");
    assert_installed(&bin_dir.join("aw-sync-samay"));
    assert!(
        said.contains("is not on PATH"),
        "aw-qt can't find it: the user must be told:\n{said}"
    );
    // The deep-link handler, registered by the installed binary, in this HOME only.
    let desktop = home.join("data/applications/aw-sync-samay-callback.desktop");
    let entry = read(&desktop);
    assert!(
        entry.contains(&bin_dir.join("aw-sync-samay").display().to_string()),
        "the handler runs the installed binary:\n{entry}"
    );
    // No leftover temporary copy.
    let names: Vec<_> = std::fs::read_dir(&bin_dir)
        .expect("bin dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");

    // On PATH: it says aw-qt will find it.
    let out = run_install(
        &home,
        &[&bin_dir],
        &[
            "--prefix",
            prefix.to_str().expect("utf-8 path"),
            "--no-register-scheme",
        ],
    );
    assert!(out.status.success(), "install.sh:\n{}", output_text(&out));
    assert!(
        output_text(&out).contains("is on PATH"),
        "{}",
        output_text(&out)
    );
}

#[test]
fn install_sh_installs_next_to_aw_qt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    let aw_qt = dir.path().join("activitywatch");
    std::fs::create_dir_all(&aw_qt).expect("aw-qt dir");
    std::fs::write(aw_qt.join("aw-qt"), "#!/bin/sh\n").expect("fake aw-qt");
    let out = run_install(
        &home,
        &[],
        &[
            "--aw-qt-dir",
            aw_qt.to_str().expect("utf-8 path"),
            "--no-register-scheme",
        ],
    );
    assert!(out.status.success(), "install.sh:\n{}", output_text(&out));
    assert_installed(&aw_qt.join("aw-sync-samay"));
    assert!(
        !output_text(&out).contains("not on PATH"),
        "{}",
        output_text(&out)
    );
    assert!(!home.join(".local/bin/aw-sync-samay").exists());

    let out = run_install(&home, &[], &["--bogus"]);
    assert!(!out.status.success());
    assert!(output_text(&out).contains("unknown option --bogus"));
}

// ---------------------------------------------------------------------------------------------
// The release binary's code layout (packaging/build.rs, packaging/linux/hot-text.ld)

const HOT_TEXT: &str = "linux/hot-text.ld";

/// The layout script names what a catch-up runs: a list written from a run that never reached
/// the sync (or cut short) would leave its code cold again, and only the benchmark's peak RSS
/// would say so.
#[test]
fn the_hot_text_list_names_the_catch_ups_code() {
    let text = read(&packaging(HOT_TEXT));
    let patterns: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("*("))
        .collect();
    assert!(
        patterns.len() > 1000,
        "only {} patterns in {HOT_TEXT}",
        patterns.len()
    );
    // `*(.text.NAME* .text.unlikely.NAME*)`, NAME of a symbol's characters only.
    let name_chars = |n: &str| {
        !n.is_empty()
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_$.*".contains(&b))
    };
    for pattern in &patterns {
        let inner = pattern
            .strip_prefix("*(.text.")
            .and_then(|p| p.strip_suffix("*)"));
        let well_formed = inner
            .and_then(|p| p.split_once("* .text.unlikely."))
            .is_some_and(|(a, b)| a == b && name_chars(a));
        assert!(well_formed, "malformed pattern {pattern:?}");
    }
    for (what, needle) in [
        ("the page parser", "8raw_page7RawPage5parse17h*"),
        ("the range query", "6source6client8AwClient"),
        ("the batch writer", "8upstream5batch"),
        ("SQLite's statement loop", ".text.sqlite3VdbeExec*"),
        ("SQLite's B-tree insert", ".text.sqlite3BtreeInsert*"),
        ("tokio's worker", "5tokio7runtime9scheduler"),
    ] {
        assert!(
            text.contains(needle),
            "{HOT_TEXT} names no function of {what} ({needle})"
        );
    }
}

/// The directory of the linker rustc uses on Linux (its own LLD, behind a `gcc-ld` wrapper), if
/// this toolchain ships it.
fn rust_lld_dir() -> Option<PathBuf> {
    let out = Command::new(std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()))
        .args(["--print", "sysroot"])
        .output()
        .ok()?;
    let sysroot = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    let dir = sysroot
        .join("lib/rustlib")
        .join(format!("{}-unknown-linux-gnu", std::env::consts::ARCH))
        .join("bin/gcc-ld");
    dir.join("ld.lld").is_file().then_some(dir)
}

/// Both linkers a Linux build uses read the script as an addition to their default layout and
/// place what it names — by name or in its cold form (`.text.unlikely.`) — in `.text.hot`,
/// ahead of `.text`, where everything else stays: a C program whose functions carry names
/// from the list, linked the way rustc links (gcc driving LLD) and with GNU ld.
#[test]
fn the_hot_text_script_places_the_named_functions_together_with_both_linkers() {
    assert!(
        on_path("gcc") && on_path("objdump"),
        "gcc and objdump are needed (Debian packages gcc and binutils)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let source = dir.path().join("main.c");
    std::fs::write(
        &source,
        "int sqlite3VdbeExec(int x) { return x * 3 + 1; }\n\
         __attribute__((cold, noinline)) int sqlite3VdbeHalt(int x) { return x * 7 + 3; }\n\
         __attribute__((noinline)) int not_in_the_list(int x) { return x * 5 + 2; }\n\
         int main(int argc, char **argv) {\n\
             (void)argv;\n\
             return sqlite3VdbeExec(argc) + sqlite3VdbeHalt(argc) + not_in_the_list(argc);\n\
         }\n",
    )
    .expect("write main.c");
    let script = packaging(HOT_TEXT);
    let mut linkers: Vec<(&str, Vec<String>)> = vec![("GNU ld", vec!["-fuse-ld=bfd".into()])];
    if let Some(lld) = rust_lld_dir() {
        linkers.push((
            "rustc's LLD",
            vec![format!("-B{}", lld.display()), "-fuse-ld=lld".into()],
        ));
    }
    for (linker, flags) in linkers {
        let exe = dir
            .path()
            .join(format!("main-{}", linker.replace([' ', '\''], "_")));
        let out = Command::new("gcc")
            .args(["-O1", "-ffunction-sections", "-o"])
            .arg(&exe)
            .arg(&source)
            .args(&flags)
            .arg(format!("-Wl,-T,{}", script.display()))
            .output()
            .expect("run gcc");
        assert!(
            out.status.success(),
            "{linker}: link failed:\n{}",
            output_text(&out)
        );
        let out = Command::new("objdump")
            .arg("-t")
            .arg(&exe)
            .output()
            .expect("objdump");
        let table = String::from_utf8_lossy(&out.stdout).into_owned();
        let section_of = |name: &str| {
            table
                .lines()
                .find(|l| l.split_whitespace().last() == Some(name))
                .and_then(|l| l.split_whitespace().find(|w| w.starts_with(".text")))
                .map(str::to_owned)
        };
        assert_eq!(
            section_of("sqlite3VdbeExec").as_deref(),
            Some(".text.hot"),
            "{linker}"
        );
        assert_eq!(
            section_of("sqlite3VdbeHalt").as_deref(),
            Some(".text.hot"),
            "{linker}: a cold function the list names"
        );
        assert_eq!(
            section_of("not_in_the_list").as_deref(),
            Some(".text"),
            "{linker}"
        );
        // With no arguments argc is 1: 4 + 10 + 7.
        let run = Command::new(&exe).output().expect("run the linked program");
        assert_eq!(run.status.code(), Some(21), "{linker}: the program runs");
    }
}
