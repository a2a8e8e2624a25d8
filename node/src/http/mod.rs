//! The node's HTTP API: a hyper 1 HTTP/1.1 server in front of [`ytcaption_actors::node::Node`].
//!
//! # Layout
//! - [`server`]: the accept loop, connection limit and graceful shutdown.
//! - [`service`]: one request: route lookup, auth, rate limit, dispatch, panic catching,
//!   metrics and the access log.
//! - [`routes`]: the route table (also checked against `openapi.json` by a test).
//! - [`jobs`], [`openai`], [`sse`]: the handlers; [`internal`]: node-to-node blob transfer.
//! - [`view`]: the one JSON view of a job.
//! - [`auth`]: API keys, roles and the per-key token bucket.
//! - [`multipart`]: streaming uploads into the spool with size limits.
//! - [`validate`]: checks of client-supplied values; [`languages`]: the language codes
//!   Whisper knows.
//! - [`query`]: query strings.
//! - [`problem`]: errors as RFC 7807 documents (or OpenAI error bodies).

pub mod auth;
pub mod internal;
pub mod jobs;
pub mod languages;
pub mod multipart;
pub mod openai;
pub mod problem;
pub mod query;
pub mod routes;
pub mod server;
pub mod service;
pub mod sse;
pub mod validate;
pub mod view;

use std::convert::Infallible;

use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use http_body_util::{BodyExt, Full};

/// Every response body: a whole buffer or a stream (SSE), boxed.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;
pub type Response = hyper::Response<Body>;

/// A response with a complete body.
pub fn full(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response {
    let mut response = hyper::Response::new(Full::new(body.into()).boxed_unsync());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A JSON response.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response {
    full(status, "application/json", value.to_string())
}

/// A response without a body (204).
pub fn empty(status: StatusCode) -> Response {
    let mut response = hyper::Response::new(Full::new(Bytes::new()).boxed_unsync());
    *response.status_mut() = status;
    response
}
