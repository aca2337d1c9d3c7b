//! Shared harness for the end-to-end tests (filled in with the broker).
