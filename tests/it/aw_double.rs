//! The aw-server double against the real Python aw-server 0.12: each conformance check is
//! written once against [`Backend`] and runs on the double in memory, on the double over
//! SQLite (aw-server-rust's storage) and on Python aw-server (`<check>::double`,
//! `<check>::double_sqlite`, `<check>::python`). Where the servers differ, the check asserts
//! each one's behaviour explicitly (the double follows aw-server-rust; see
//! `src/awdouble/mod.rs`).

mod backend;
mod conformance;
mod engine;
