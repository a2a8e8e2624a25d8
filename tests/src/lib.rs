//! Shared helpers for the integration and end-to-end tests.
//!
//! - [`seaweed`]: a real SeaweedFS S3 server per test (`SeaweedFs::start()`), for anything
//!   that stores blobs in S3.
//!
//! Helpers used only by the binary's end-to-end tests live in `tests/tests/common`.

pub mod seaweed;
