//! The fault suite of docs/reliability.md (scripts/faults.sh): kill -9 during syncs, a week
//! offline, every upstream fault, the model-based property test and the property tests of every
//! parser of outside input. Its own binary so it can be run alone; the rest is `tests/it`.

mod crash;
mod fault_upstream;
mod fuzz_parsers;
mod model;
mod offline;
