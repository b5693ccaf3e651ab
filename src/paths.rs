//! paths (stub).
