//! logging (stub).
