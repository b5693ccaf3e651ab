//! The ActivityWatch side: a small typed async client for aw-server's REST API.
//!
//! crates.io only has aw-client-rust 0.1.0 (reqwest 0.10, blocking, no start/end/limit), so this
//! module is shaped like aw-client-rust's current (unpublished) API instead of depending on it.

mod client;
pub mod model;

pub use client::{AwClient, SourceError, MAX_DATA_ANSWER, MAX_SMALL_ANSWER};
pub use model::{object_to_raw, Bucket, Event, PageEvent, ServerInfo};
