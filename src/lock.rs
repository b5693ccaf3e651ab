//! lock (stub).
