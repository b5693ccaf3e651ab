//! The upstream side: the batch API contract and the HTTP client that speaks it.

pub mod client;
pub mod contract;

pub use client::{UpstreamClient, UpstreamError};
