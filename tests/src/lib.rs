//! Reusable harnesses for the integration and end-to-end tests: real servers on 127.0.0.1.
//! Helpers specific to the binary's end-to-end tests live in `tests/tests/common`.
//!
//! - [`media_server`]: an HTTP server for media files, redirects, stalls and lies; also a
//!   webhook sink that records what it received.
//! - [`cluster`]: several real nodes meshed on 127.0.0.1 ([`cluster::TestCluster`]).
//! - [`node`]: a real `ytcaption serve` process ([`node::NodeProcess`]) and HTTP helpers.
//! - [`ports`]: free ports on 127.0.0.1 below the kernel's ephemeral range.
//! - [`seaweed`]: a real SeaweedFS S3 server per test (`SeaweedFs::start()`), for anything
//!   that stores blobs in S3.
//! - [`smtp`]: aiosmtpd as a Maildir sink ([`smtp::SmtpSink`]), with optional STARTTLS/SMTPS
//!   and AUTH, and a parser for what it received.
//! - [`text`]: the known text of the generated clips and word error rate.
//! - [`tls`]: a throwaway CA and server certificate for test servers.

pub mod cluster;
pub mod media_server;
pub mod node;
pub mod ports;
pub mod seaweed;
pub mod smtp;
pub mod text;
pub mod tls;
