//! Benchmarks helpers.
