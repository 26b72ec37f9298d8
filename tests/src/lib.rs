//! Shared helpers for the integration tests live here as they are needed.
