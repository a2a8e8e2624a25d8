//! Telling clients their job is done: signed webhooks and plain-text email.
//!
//! # Layout
//! - [`webhook`]: the webhook body, its HMAC signature (`Ytcaption-Signature`), the stable
//!   delivery id, and the delivery policy: what a response means ([`webhook::classify`]) and when
//!   to retry or give up ([`webhook::RetryPolicy`]). Pure functions; the HTTP request itself is
//!   made by the outbound transport.
//! - [`email`]: the SMTP [`email::Mailer`] (built once, pooled connections) and the job
//!   notification message ([`email::job_email`]).
//!
//! Both paths are at-least-once: a retried notification carries the same delivery id (webhooks)
//! or Message-ID (email) so the receiving end can recognise a repeat.

pub mod email;
pub mod webhook;

/// RFC 3339 UTC with second precision (`2023-11-14T22:13:20Z`): the form webhook bodies and
/// emails carry.
pub use ytcaption_protocol::time::rfc3339_utc;
