//! Pieces of the catch-up benchmark: the acknowledging upstream and the process runner.

pub mod run;
pub mod upstream;
