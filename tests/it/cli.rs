//! The real `aw-sync-samay` binary, run the way a user (or aw-qt) runs it: each test has its own
//! HOME and XDG directories, and where it needs them its own Python aw-server and dev upstream.
//! Every wait is bounded; the only timing asserted is the 2 s stop rule for signals.

mod config;
mod daemon;
mod once;
mod output;
mod support;
