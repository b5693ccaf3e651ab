//! Pieces of the catch-up benchmark: the acknowledging upstream, the process runner, the
//! aw-server-rust stand-in as a process, and the old read pattern.

pub mod legacy;
pub mod run;
pub mod source;
pub mod upstream;
