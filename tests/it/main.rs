//! The integration tests of aw-sync-samay in one binary (one module per former test file), so
//! the library is linked once instead of once per file. The slow fault suite is the other
//! binary, `tests/faults` (scripts/faults.sh). Shared helpers: crates/samay-testkit.

mod aw_double;
mod awqt;
mod callback;
mod callback_hostile;
mod cli;
mod config_cli;
mod deep_data;
mod destinations;
mod device_login;
mod devserver;
mod devserver_local;
mod devserver_oidc;
mod engine;
mod engine_formats;
mod hostile_peers;
mod idle;
mod keyring;
mod login;
mod login_edges;
mod oidc_peer;
mod own_upstream;
mod packaging;
mod privacy;
mod private_files;
mod progress;
mod pull;
mod pull_race;
mod remote_text;
mod source_client;
mod status_cli;
mod sync_now;
mod tray;
