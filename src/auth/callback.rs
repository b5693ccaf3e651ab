//! The browser callback: loopback listener, deep link, paste-back (stub).
