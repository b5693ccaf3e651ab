//! samay-server over HTTP, on both stores: the API suite (one body, SQLite and a real
//! PostgreSQL cluster), several server processes on one PostgreSQL database, faults (database
//! outage, kill -9, SIGTERM), and the binary's configuration.

mod api;
mod binary;
mod common;
mod concurrency;
mod outage;
