//! Pieces of the catch-up benchmark: the acknowledging upstream and the faithfulness check, the
//! process runner, the aw-server-rust stand-in and the upstream servers as processes, and the
//! old read pattern.

pub mod faithful;
pub mod legacy;
pub mod run;
pub mod servers;
pub mod source;
pub mod upstream;
