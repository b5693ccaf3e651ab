//! The shared helpers of aw-sync-samay's integration tests (`tests/it`, `tests/faults`) and of its
//! benchmark (`benches/catchup.rs`): the real peers (Python aw-server, oidc-provider, the dev
//! upstream), the rig that wires an engine between them, the real binary in an isolated home,
//! hostile peers for the hardening tests, and a proxy that holds a real peer's requests. A
//! dev-dependency only (never published, never in a shipped binary).

use std::path::PathBuf;

pub mod awserver;
pub mod bin;
pub mod callback;
pub mod daemon;
pub mod devserver;
pub mod exact;
pub mod hostile;
pub mod issuer;
pub mod login_cli;
pub mod oidc;
pub mod postgres;
pub mod procfs;
pub mod proxy;
pub mod rig;
pub mod server;
pub mod tray;

/// The repository's root (the `aw-sync-samay` package): where `.peers/` and `peers/` are.
pub fn repo_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// A binary of the workspace that cargo built into the same profile directory as the running
/// test or benchmark (`target/<profile>/deps/<test>-<hash>` runs; `target/<profile>/<name>` is
/// the binary). `CARGO_BIN_EXE_*` exists only when compiling the package's own tests, not this
/// crate; `cargo test` builds the root package's `aw-sync-samay` for its integration tests, and
/// scripts/bench.sh builds `samay-aw-double` and `samay-dev-server` before the benchmark.
pub fn built_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("a test runs from target/<profile>/deps");
    let path = profile_dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "{} is missing: build it first (cargo build -p <its package>, or scripts/bench.sh)",
        path.display()
    );
    path
}

/// An event of the aw-server double as the sidecar reads it from aw-server. The double has its
/// own type (it shares no code with the client it stands in for); the JSON is the same.
pub fn source_event(e: &samay_aw_double::Event) -> aw_sync_samay::source::Event {
    aw_sync_samay::source::Event {
        id: e.id,
        timestamp: e.timestamp,
        duration: e.duration,
        data: e.data.clone(),
    }
}

/// A client for the double, as the sidecar builds one for aw-server.
pub fn double_client(
    double: &samay_aw_double::AwDouble,
) -> Result<aw_sync_samay::source::AwClient, aw_sync_samay::source::SourceError> {
    let addr = double.addr();
    aw_sync_samay::source::AwClient::new(&addr.ip().to_string(), addr.port())
}

/// The name the test harness knows a test by, for a test that runs its own binary again with
/// `--exact <name>`: `module` (the caller's `module_path!()`, e.g. `it::keyring`) without the
/// crate, then `test`. The integration tests are modules of one binary, so a bare function name
/// matches nothing.
pub fn harness_name(module: &str, test: &str) -> String {
    match module.split_once("::") {
        Some((_crate, path)) => format!("{path}::{test}"),
        None => test.to_string(),
    }
}
