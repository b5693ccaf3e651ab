//! The engine against the ways its peers can *talk*: a token the upstream stops accepting (401 →
//! one refresh), aw-server-rust's timestamp format next to Python's, and aw-server answers that
//! are not what the engine expects.
//!
//! Python aw-server and the dev upstream are the real ones (crates/samay-testkit). aw-server-rust
//! cannot run here, so its wire format comes from [`RustFormatStub`]: a deliberately small,
//! fault-injection-style double that serves events *copied out of a real Python aw-server* the
//! way aw-server-rust prints them, and that can be told to answer garbage.

mod malformed;
mod refresh;
mod stub;
mod timestamps;
