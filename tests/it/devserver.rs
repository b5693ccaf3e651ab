//! The real `UpstreamClient` against the real dev server on loopback: the contract's semantics
//! (keys, versions, duplicates, idempotency, all-or-nothing) and every injected fault surfacing
//! as the error variant the engine decides on.

mod contract;
mod faults;
mod server;
mod support;
