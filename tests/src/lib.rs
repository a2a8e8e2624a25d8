//! Reusable harnesses for the integration and end-to-end tests: real servers on 127.0.0.1.
//! Helpers specific to the binary's end-to-end tests live in `tests/tests/common`.
//!
//! - [`seaweed`]: a real SeaweedFS S3 server per test (`SeaweedFs::start()`), for anything
//!   that stores blobs in S3.
//! - [`smtp`]: aiosmtpd as a Maildir sink ([`smtp::SmtpSink`]), with optional STARTTLS/SMTPS
//!   and AUTH, and a parser for what it received.
//! - [`tls`]: a throwaway CA and server certificate for test servers.
//! - [`node`]: a real `ytcaption serve` process ([`node::NodeProcess`]) and HTTP helpers.

pub mod node;
pub mod seaweed;
pub mod smtp;
pub mod tls;
