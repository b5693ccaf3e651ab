//! Token storage: OS keyring or 0600 file (stub).
