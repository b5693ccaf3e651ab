//! Property tests ("fuzzing" with proptest) of every public entry point that parses outside
//! input: the config file, aw-server's answers, the upstream's answers, the token endpoint's
//! answers and the stored tokens, and the login callback on each of its channels (loopback
//! HTTP, paste-back, deep link, `--callback`). The private helpers behind them have their own
//! properties in their modules; `fuzz/` holds the cargo-fuzz targets for the same entry points.
//!
//! Each generator mixes arbitrary bytes or text with structure-aware input (valid documents with
//! one field mutated, extreme numbers, deep nesting, invalid UTF-8, duplicate parameters), and
//! each property says what must hold: no panic, a typed error for malformed input, a round trip
//! for valid input, and no secret in any message. Case counts are set per test so the whole file
//! stays well under a minute on a loaded 2-core machine; `PROPTEST_CASES=N` raises every one of
//! them to at least N for long runs (`scripts/fuzz.sh`). Everything talks only to 127.0.0.1.

mod aw_server;
mod callback;
mod config;
mod support;
mod tokens;
mod upstream;
