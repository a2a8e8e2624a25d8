//! Errors as HTTP answers: RFC 7807 `application/problem+json` documents, or the
//! `{"error": {...}}` shape the OpenAI SDKs expect on the OpenAI-compatible routes.
//!
//! Every refusal the API makes is a [`Problem`]: a status, a stable machine-readable `code`
//! (`validation.url`, `auth.bad_key`, ...) and a sentence for people. Client mistakes map to
//! 4xx; only a bug or a broken dependency gives 5xx.

use std::borrow::Cow;
use std::fmt;

use http::{header, HeaderValue, StatusCode};
use serde_json::json;

use super::{full, Response};

/// `Retry-After` of errors that are the node's transient trouble.
pub const RETRY_AFTER_SECONDS: u64 = 5;

/// How errors are written on a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// RFC 7807 `application/problem+json`.
    Problem,
    /// OpenAI's `{"error": {"message", "type", "code"}}`.
    OpenAi,
}

/// One refusal: what went wrong, for machines (`code`) and for people (`detail`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub status: StatusCode,
    /// Stable reason code, e.g. `validation.url`.
    pub code: Cow<'static, str>,
    pub detail: String,
    /// Seconds after which a retry may succeed (429, 503).
    pub retry_after: Option<u64>,
    /// The methods a path accepts (405).
    pub allow: Option<String>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.detail)
    }
}

impl std::error::Error for Problem {}

impl Problem {
    pub fn new(
        status: StatusCode,
        code: impl Into<Cow<'static, str>>,
        detail: impl Into<String>,
    ) -> Problem {
        Problem {
            status,
            code: code.into(),
            detail: detail.into(),
            retry_after: None,
            allow: None,
        }
    }

    /// 400: the request cannot be parsed (bad JSON, broken multipart, bad header).
    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, code, detail)
    }

    pub fn unauthorized(code: &'static str, detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::UNAUTHORIZED, code, detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::FORBIDDEN, "auth.forbidden", detail)
    }

    /// 404 for a job: unknown, malformed id, deleted, or someone else's (indistinguishable on
    /// purpose, so ids of other users' jobs cannot be probed).
    pub fn job_not_found() -> Problem {
        Problem::new(StatusCode::NOT_FOUND, "job.not_found", "no such job")
    }

    pub fn route_not_found(path: &str) -> Problem {
        Problem::new(
            StatusCode::NOT_FOUND,
            "route.not_found",
            format!("no route {path}"),
        )
    }

    pub fn method_not_allowed(allow: String) -> Problem {
        Problem {
            allow: Some(allow.clone()),
            ..Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "route.method_not_allowed",
                format!("this path accepts {allow}"),
            )
        }
    }

    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::CONFLICT, code, detail)
    }

    pub fn too_large(code: &'static str, detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::PAYLOAD_TOO_LARGE, code, detail)
    }

    pub fn unsupported_media_type(detail: impl Into<String>) -> Problem {
        Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "request.content_type",
            detail,
        )
    }

    /// 422: well-formed but not acceptable (a bad URL scheme, an unknown format...).
    pub fn unprocessable(code: impl Into<Cow<'static, str>>, detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail)
    }

    pub fn too_many(code: &'static str, detail: impl Into<String>, retry_after: u64) -> Problem {
        Problem::new(StatusCode::TOO_MANY_REQUESTS, code, detail).retry_after(retry_after)
    }

    pub fn unavailable(code: &'static str, detail: impl Into<String>, retry_after: u64) -> Problem {
        Problem::new(StatusCode::SERVICE_UNAVAILABLE, code, detail).retry_after(retry_after)
    }

    pub fn timeout(code: &'static str, detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::REQUEST_TIMEOUT, code, detail)
    }

    /// 500: a bug. The detail never carries internals (paths, panic messages): they are logged.
    pub fn internal() -> Problem {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; it has been logged",
        )
    }

    /// A typed error as a problem; a retryable one (the node's trouble, not the request's)
    /// tells the client when to come back.
    pub fn from_error(
        status: StatusCode,
        code: &'static str,
        detail: impl Into<String>,
        retryable: bool,
    ) -> Problem {
        let problem = Problem::new(status, code, detail);
        if retryable {
            problem.retry_after(RETRY_AFTER_SECONDS)
        } else {
            problem
        }
    }

    pub fn retry_after(mut self, seconds: u64) -> Problem {
        self.retry_after = Some(seconds.max(1));
        self
    }

    /// The human title of the status (`Not Found`).
    pub fn title(&self) -> &'static str {
        self.status.canonical_reason().unwrap_or("Error")
    }

    /// The RFC 7807 document.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "type": format!("urn:ytcaption:problem:{}", self.code),
            "title": self.title(),
            "status": self.status.as_u16(),
            "detail": self.detail,
            "code": self.code,
        })
    }

    /// The OpenAI error document; `type` follows OpenAI's families.
    pub fn to_openai_json(&self) -> serde_json::Value {
        let kind = match self.status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::FORBIDDEN => "permission_error",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            status if status.is_server_error() => "server_error",
            _ => "invalid_request_error",
        };
        json!({
            "error": {
                "message": self.detail,
                "type": kind,
                "param": null,
                "code": self.code,
            }
        })
    }

    /// The HTTP answer in the route's flavor, with `Retry-After`, `Allow` and
    /// `WWW-Authenticate` where they apply.
    pub fn into_response(self, flavor: Flavor) -> Response {
        let (body, content_type) = match flavor {
            Flavor::Problem => (self.to_json(), "application/problem+json"),
            Flavor::OpenAi => (self.to_openai_json(), "application/json"),
        };
        let mut response = full(self.status, content_type, body.to_string());
        let headers = response.headers_mut();
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Some(allow) = self
            .allow
            .as_deref()
            .and_then(|a| HeaderValue::from_str(a).ok())
        {
            headers.insert(header::ALLOW, allow);
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"ytcaption\""),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_json(response: Response) -> serde_json::Value {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn problem_documents_follow_rfc_7807() {
        let problem = Problem::unprocessable("validation.url", "url must be http or https");
        let response = problem.into_response(Flavor::Problem);
        assert_eq!(response.status(), 422);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let body = body_json(response).await;
        assert_eq!(body["status"], 422);
        assert_eq!(body["title"], "Unprocessable Entity");
        assert_eq!(body["code"], "validation.url");
        assert_eq!(body["type"], "urn:ytcaption:problem:validation.url");
        assert_eq!(body["detail"], "url must be http or https");
    }

    #[tokio::test]
    async fn rate_limits_carry_retry_after_and_401_a_challenge() {
        let response =
            Problem::too_many("rate.limited", "slow down", 7).into_response(Flavor::Problem);
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()[header::RETRY_AFTER], "7");
        let response =
            Problem::unauthorized("auth.missing_key", "no key").into_response(Flavor::Problem);
        assert!(response.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .starts_with("Bearer"));
        let response =
            Problem::method_not_allowed("GET, DELETE".into()).into_response(Flavor::Problem);
        assert_eq!(response.status(), 405);
        assert_eq!(response.headers()[header::ALLOW], "GET, DELETE");
        // A zero Retry-After would invite a busy loop.
        assert_eq!(
            Problem::unavailable("queue.full", "x", 0).retry_after,
            Some(1)
        );
    }

    #[tokio::test]
    async fn openai_routes_get_openai_error_bodies() {
        let cases = [
            (
                Problem::bad_request("media.corrupt", "bad file"),
                "invalid_request_error",
            ),
            (
                Problem::unauthorized("auth.bad_key", "bad key"),
                "authentication_error",
            ),
            (
                Problem::too_many("rate.limited", "slow", 1),
                "rate_limit_error",
            ),
            (Problem::internal(), "server_error"),
        ];
        for (problem, kind) in cases {
            let code = problem.code.clone();
            let response = problem.into_response(Flavor::OpenAi);
            assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
            let body = body_json(response).await;
            assert_eq!(body["error"]["type"], kind);
            assert_eq!(body["error"]["code"], code.as_ref());
            assert!(body["error"]["message"].is_string());
        }
    }

    #[test]
    fn internal_errors_reveal_nothing() {
        let problem = Problem::internal();
        assert_eq!(problem.status, 500);
        assert!(!problem.detail.contains('/'));
    }
}
