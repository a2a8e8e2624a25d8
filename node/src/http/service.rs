//! One request, start to end: route lookup, authentication and rate limit for `/v1` (the
//! `/internal/` routes check the cluster signature themselves instead), the handler (with a
//! timeout, and a panic turned into a 500 instead of a dead connection task), then metrics and
//! the access log.

use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt;
use http::{header, HeaderValue, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::json;
use tokio::sync::watch;
use ytcaption_actors::node::Node;
use ytcaption_config::Config;

use super::auth::{Authenticator, Principal, RateLimiter};
use super::internal::ClusterSecret;
use super::multipart::FormLimits;
use super::problem::{Flavor, Problem};
use super::routes::{lookup, Lookup, Route};
use super::{full, internal, jobs, openai, Response};

/// The OpenAPI document served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// The API's limits, from the configuration.
#[derive(Debug, Clone)]
pub struct ApiParams {
    /// Largest JSON request body.
    pub max_json_body: u64,
    /// Upload limits (the file limit is `http.max_body`).
    pub form: FormLimits,
    /// Deadline of ordinary handlers (not uploads, streams or synchronous transcriptions).
    pub request_timeout: Duration,
    /// How long the OpenAI-compatible endpoints wait for their job.
    pub sync_timeout: Duration,
    /// Interval of SSE keep-alive comments.
    pub keep_alive: Duration,
    /// `Retry-After` of a refused submission (quota, full queue).
    pub busy_retry_after: u64,
}

impl Default for ApiParams {
    fn default() -> Self {
        ApiParams {
            max_json_body: 1 << 20,
            form: FormLimits::default(),
            request_timeout: Duration::from_secs(30),
            sync_timeout: Duration::from_secs(3600),
            keep_alive: super::sse::KEEP_ALIVE,
            busy_retry_after: 5,
        }
    }
}

impl ApiParams {
    pub fn from_config(config: &Config) -> ApiParams {
        let http = &config.http;
        ApiParams {
            max_json_body: http.max_json_body.get(),
            form: FormLimits {
                max_file_bytes: http.max_body.get(),
                idle_timeout: http.request_timeout,
                ..FormLimits::default()
            },
            request_timeout: http.request_timeout,
            sync_timeout: http.sync_timeout,
            ..ApiParams::default()
        }
    }
}

/// Everything a handler may use; shared by all connections.
#[derive(Debug)]
pub struct App {
    pub node: Node,
    pub auth: Authenticator,
    pub limiter: RateLimiter,
    pub params: ApiParams,
    /// Absolute base of links handed out (`http.public_url`), without a trailing slash.
    pub base_url: String,
    /// Where installed models live (to check a requested model exists).
    pub models_dir: PathBuf,
    /// Flips to true at shutdown (ends event streams).
    pub shutdown: watch::Receiver<bool>,
    /// The cluster cookie signing node-to-node requests; `None` without a cluster (the
    /// `/internal/` routes then answer 404).
    pub cluster_secret: Option<ClusterSecret>,
}

/// What a handler gets besides the request.
#[derive(Debug, Clone)]
pub struct Call {
    pub route: Route,
    /// The raw `{id}` path segment.
    pub id: Option<String>,
    pub principal: Principal,
}

/// Errors of request bodies, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body that could not be read (the connection broke, a protocol error). A
/// concrete type rather than [`BoxError`]: boxed trait objects in handler futures defeat the
/// compiler's proof that those futures are `Send`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BodyError(String);

/// The request body handlers see: whatever the server got (hyper's `Incoming`, or a test
/// body), boxed once at the edge so handlers are not generic.
pub type ReqBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BodyError>;

/// Serves one request. Never fails: every outcome, a handler panic included, is a response.
pub async fn handle<B>(app: Arc<App>, request: Request<B>) -> Result<Response, Infallible>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let request = request.map(|body| {
        body.map_err(|error| BodyError(error.into().to_string()))
            .boxed_unsync()
    });
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let (label, flavor, outcome) = match lookup(&method, &path) {
        Lookup::NotFound => (
            "unmatched",
            Flavor::Problem,
            Err(Problem::route_not_found(&path)),
        ),
        Lookup::MethodNotAllowed(allow) => (
            "unmatched",
            Flavor::Problem,
            Err(Problem::method_not_allowed(allow)),
        ),
        Lookup::Found { route, id } => {
            let flavor = if route.is_openai() {
                Flavor::OpenAi
            } else {
                Flavor::Problem
            };
            let outcome = catch_panics(route.label(), serve(&app, route, id, request)).await;
            (route.label(), flavor, outcome)
        }
    };
    let response = outcome.unwrap_or_else(|problem| problem.into_response(flavor));
    let status = response.status();
    let elapsed = started.elapsed();
    let metrics = app.node.metrics();
    metrics
        .http_requests
        .with_label_values(&[label, status.as_str()])
        .inc();
    metrics
        .http_seconds
        .with_label_values(&[label])
        .observe(elapsed.as_secs_f64());
    tracing::info!(
        target: "ytcaption::http",
        %method,
        %path,
        route = label,
        status = status.as_u16(),
        ms = elapsed.as_secs_f64() * 1000.0,
        "request"
    );
    Ok(response)
}

/// Runs a handler; a panic becomes a logged 500 instead of a dropped connection (and never
/// takes the node down: each connection is its own task).
pub async fn catch_panics(
    label: &'static str,
    handler: impl std::future::Future<Output = Result<Response, Problem>>,
) -> Result<Response, Problem> {
    AssertUnwindSafe(handler)
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(route = label, panic = %message, "handler panicked");
            Err(Problem::internal())
        })
}

/// Authentication and rate limit for `/v1`, then the handler.
async fn serve(
    app: &App,
    route: Route,
    id: Option<String>,
    request: Request<ReqBody>,
) -> Result<Response, Problem> {
    let principal = if route.is_api() {
        let principal = app
            .auth
            .authenticate(request.headers().get(header::AUTHORIZATION))?;
        app.limiter.admit(&principal, Instant::now())?;
        principal
    } else {
        Principal::anonymous()
    };
    let call = Call {
        route,
        id,
        principal,
    };
    match route {
        // Long by nature: they bound themselves (idle timeouts, sync_timeout).
        Route::CreateJob => jobs::create(app, &call, request).await,
        Route::AudioTranscriptions | Route::AudioTranslations => {
            openai::transcribe(app, &call, request).await
        }
        _ => {
            let deadline = app.params.request_timeout;
            tokio::time::timeout(deadline, quick(app, &call, request))
                .await
                .unwrap_or_else(|_| {
                    Err(Problem::unavailable(
                        "request.timeout",
                        format!("the node did not answer within {deadline:?}; retry"),
                        app.params.busy_retry_after,
                    ))
                })
        }
    }
}

/// Handlers that answer promptly.
async fn quick(app: &App, call: &Call, request: Request<ReqBody>) -> Result<Response, Problem> {
    match call.route {
        Route::Healthz => Ok(full(StatusCode::OK, "text/plain; charset=utf-8", "ok\n")),
        Route::Readyz => Ok(readiness(app).await),
        Route::Metrics => Ok(full(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            app.node.metrics().render(),
        )),
        Route::OpenApi => Ok(full(StatusCode::OK, "application/json", OPENAPI)),
        Route::AdminStatus => {
            call.principal.require_admin()?;
            Ok(super::json(StatusCode::OK, &app.node.admin_status()))
        }
        Route::DrainNode | Route::UndrainNode => {
            call.principal.require_admin()?;
            let on = call.route == Route::DrainNode;
            let node = call.id.clone().unwrap_or_default();
            if node.is_empty()
                || node.len() > 64
                || !node
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return Err(Problem::bad_request(
                    "cluster.bad_node",
                    "`node` is not a node name",
                ));
            }
            match app.node.drain(&node, on).await {
                Ok(()) => Ok(super::json(
                    StatusCode::OK,
                    &serde_json::json!({ "node": node, "draining": on }),
                )),
                Err(reason) => Err(Problem::unavailable("cluster.unavailable", reason, 1)),
            }
        }
        Route::ListJobs => jobs::list(app, call, request.uri().query()).await,
        Route::GetJob => jobs::get(app, call).await,
        Route::DeleteJob => jobs::delete(app, call).await,
        Route::CancelJob => jobs::cancel(app, call).await,
        Route::RetryJob => jobs::retry(app, call).await,
        Route::Transcript => jobs::transcript(app, call, request.uri().query()).await,
        Route::Events => jobs::events(app, call).await,
        Route::History => jobs::history(app, call).await,
        // Answers once the head is ready; the body streams after, outside this deadline.
        Route::InternalBlob => internal::blob(app, call, request.headers()).await,
        Route::CreateJob | Route::AudioTranscriptions | Route::AudioTranslations => {
            Err(Problem::internal())
        }
    }
}

/// `/readyz`: 200 when the node can take and run jobs, else 503; the body says what is wrong.
async fn readiness(app: &App) -> Response {
    let readiness = app.node.readiness().await;
    let body = json!({
        "ready": readiness.ready,
        "model_loaded": readiness.model_loaded,
        "storage": match &readiness.storage {
            Ok(()) => "ok".to_owned(),
            Err(error) => error.clone(),
        },
        "job_log": readiness.job_log,
        "unavailable": readiness.unavailable,
    });
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut response = super::json(status, &body);
    if !readiness.ready {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_handler_becomes_a_500_problem() {
        let outcome = catch_panics("GET /boom", async {
            let items: Vec<u8> = Vec::new();
            // An out-of-bounds index: the kind of bug this guards against.
            let _ = items[usize::from(items.is_empty())];
            Ok(full(StatusCode::OK, "text/plain", "unreachable"))
        })
        .await;
        let problem = outcome.expect_err("the panic is caught");
        assert_eq!(problem.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(problem.code, "internal");
        let fine = catch_panics("GET /ok", async {
            Ok(full(StatusCode::OK, "text/plain", "ok"))
        })
        .await;
        assert_eq!(fine.expect("no panic").status(), StatusCode::OK);
        let refused = catch_panics("GET /no", async { Err(Problem::forbidden("no")) }).await;
        assert_eq!(
            refused.expect_err("a refusal").status,
            StatusCode::FORBIDDEN
        );
    }

    #[test]
    fn params_follow_the_configuration() {
        let mut config = Config::default();
        config.http.max_json_body = ytcaption_config::Size::kib(4);
        config.http.max_body = ytcaption_config::Size::mib(8);
        config.http.request_timeout = Duration::from_secs(7);
        let params = ApiParams::from_config(&config);
        assert_eq!(params.max_json_body, 4096);
        assert_eq!(params.form.max_file_bytes, 8 << 20);
        assert_eq!(params.form.idle_timeout, Duration::from_secs(7));
        assert_eq!(params.request_timeout, Duration::from_secs(7));
    }
}
