//! State (stub).
