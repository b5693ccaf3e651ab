//! What the sidecar (aw-sync-samay) and its server (samay-server) both need and neither owns:
//! the filter every piece of remote text passes before a terminal or a log ([`printable`]), and
//! files only this user may read ([`private_fs`]). Its own crate so the server does not depend on
//! the sidecar.

pub mod printable;
pub mod private_fs;

/// Cases for the property tests in `#[cfg(test)]` modules: `default`, or more when
/// `PROPTEST_CASES` asks for more (long fuzzing runs; see `scripts/fuzz.sh`). Never fewer, so a
/// stray small value cannot quietly weaken CI's run. Test-only (feature `testing`).
#[cfg(any(test, feature = "testing"))]
pub fn proptest_config(default: u32) -> proptest::test_runner::Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .map_or(default, |asked| asked.max(default));
    proptest::test_runner::Config {
        cases,
        ..proptest::test_runner::Config::default()
    }
}
