//! samay-dev-server (stub).
