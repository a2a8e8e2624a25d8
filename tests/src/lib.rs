//! Shared helpers for the end-to-end tests. Per-binary helpers live in `tests/tests/common`;
//! harnesses several test binaries reuse (real servers on 127.0.0.1) live here.

pub mod media_server;
