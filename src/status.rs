//! status (stub).
