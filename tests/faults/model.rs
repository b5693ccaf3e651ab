//! Model-based property test of the read positions, counts and dedupe (issues 5 and 9).
//!
//! proptest generates sequences of what happens around a running sync — inserts, heartbeats that
//! extend the newest event, back-dated inserts inside the lookback and at random depths (up to
//! a month back, older than any lookback), deletions at any depth, aw-server restarts and
//! outages, a replaced aw-server database, upstream faults, process crashes mid-cycle, sync
//! cycles — and plays them against the real engine (in-process, with the aw-server double —
//! aw-server-rust's semantics: counts ignore ranges, so deep changes are found through sums of
//! durations — as its source and the real dev upstream). A small model follows what the
//! upstream must end up holding:
//!
//! * every event aw-server holds is a list of versions (a heartbeat that grows it adds one);
//!   after a successful cycle its latest version is **required** upstream — unless it lies
//!   deeper than `lookback` below the newest data and has no duration (a sum of durations
//!   cannot see it), or, between the same two cycles, the bucket had a deletion (which may
//!   leave aw-server's count and its bucket listing as they were) or a heartbeat grew an event
//!   the listing does not show (neither the newest nor ending last); those **may** be there
//!   until the verification;
//! * a deleted event **may** stay upstream until a full verification, and every event of a
//!   replaced database may stay with any version it had, under the generation its database
//!   was read in (`generation << 40 | id`).
//!
//! Checked after every cycle (completed, failed or crashed): everything upstream is a version
//! the model knows under a generation the engine registered for that database, and no key went
//! back to an older version. After every successful cycle and after the final one (upstream
//! healthy, aw-server up): every required version is upstream, exactly (hash, timestamp,
//! duration, data). Then a full verification (`--verify`) must leave the upstream holding
//! exactly aw-server's events — every latest version, no deleted one; one more cycle must send
//! nothing, and without crashes or lost answers the upstream must never have seen a
//! duplicate.
//!
//! `PROPTEST_CASES` overrides the number of cases (64 by default).

mod expected;
mod harness;
mod ops;
mod property;
