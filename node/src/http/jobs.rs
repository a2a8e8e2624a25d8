//! `/v1/jobs`: submit (JSON or an upload), list, show, cancel, delete, retry, fetch the
//! transcript, and follow a job's events.

use http::{header, HeaderMap, HeaderValue, Request, StatusCode};
use http_body_util::{BodyDataStream, BodyExt, Limited};
use serde::Deserialize;
use serde_json::json;
use ytcaption_actors::job_manager::{JobError, SubmitError};
use ytcaption_actors::store::{ListFilter, StoreError};
use ytcaption_protocol::job::media_key;
use ytcaption_protocol::{Format, JobId, JobSpec, JobState, Source, Stage};

use super::auth::Principal;
use super::multipart::{self, Form, Upload};
use super::problem::Problem;
use super::service::{App, Call, ReqBody};
use super::validate::{self, ValidationError};
use super::view::job_view;
use super::{empty, json, sse, Response};
use ytcaption_protocol::time::now_ms;

/// Default and largest page of `GET /v1/jobs`.
pub const DEFAULT_PAGE: usize = 50;
pub const MAX_PAGE: usize = 200;

/// The fields of a job request, as JSON or as form parts.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobFields {
    pub url: Option<String>,
    pub language: Option<String>,
    pub task: Option<String>,
    pub model: Option<String>,
    pub formats: Option<Vec<String>>,
    pub webhook_url: Option<String>,
    pub email: Option<String>,
    pub prompt: Option<String>,
    pub word_timestamps: Option<bool>,
}

/// Form parts a job upload may carry besides `file`.
const FORM_FIELDS: [&str; 10] = [
    "url",
    "language",
    "task",
    "model",
    "formats",
    "formats[]",
    "webhook_url",
    "email",
    "prompt",
    "word_timestamps",
];

impl JobFields {
    /// The fields of a form; `formats` may repeat and each value may be comma-separated.
    pub fn from_form(form: &Form) -> Result<JobFields, Problem> {
        if let Some((name, _)) = form
            .fields
            .iter()
            .find(|(name, _)| !FORM_FIELDS.contains(&name.as_str()))
        {
            return Err(Problem::unprocessable(
                "form.unknown_field",
                format!(
                    "unknown form field {name:?}; known: file, {}",
                    FORM_FIELDS.join(", ")
                ),
            ));
        }
        let text = |name: &str| form.get(name).map(str::to_owned);
        let formats: Vec<String> = form
            .all("formats")
            .into_iter()
            .chain(form.all("formats[]"))
            .flat_map(|value| value.split(','))
            .map(|name| name.trim().to_owned())
            .filter(|name| !name.is_empty())
            .collect();
        let word_timestamps = form
            .get("word_timestamps")
            .map(|value| validate::boolean("word_timestamps", value))
            .transpose()?;
        Ok(JobFields {
            url: text("url"),
            language: text("language"),
            task: text("task"),
            model: text("model"),
            formats: (!formats.is_empty()).then_some(formats),
            webhook_url: text("webhook_url"),
            email: text("email"),
            prompt: text("prompt"),
            word_timestamps,
        })
    }
}

/// A present, non-empty value (forms send empty strings for untouched inputs).
fn given(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

/// Checks every field and builds the spec of a job with `source`.
pub fn build_spec(
    fields: &JobFields,
    source: Source,
    owner: &str,
) -> Result<JobSpec, ValidationError> {
    let webhook_url = given(&fields.webhook_url).map(str::to_owned);
    if let Some(url) = &webhook_url {
        validate::webhook_url(url)?;
    }
    let email = given(&fields.email).map(str::to_owned);
    if let Some(address) = &email {
        validate::email(address)?;
    }
    Ok(JobSpec {
        source,
        language: validate::language(given(&fields.language))?,
        task: validate::task(given(&fields.task))?,
        model: validate::model(given(&fields.model))?,
        formats: validate::formats(fields.formats.as_deref())?,
        webhook_url,
        email,
        prompt: validate::prompt(fields.prompt.as_deref())?,
        word_timestamps: fields.word_timestamps.unwrap_or(true),
        owner: owner.to_owned(),
    })
}

/// The source of a request: a URL or the upload, exactly one.
fn choose_source(
    fields: &JobFields,
    upload: Option<&Upload>,
    id: &JobId,
) -> Result<Source, Problem> {
    match (given(&fields.url), upload) {
        (Some(_), Some(_)) => Err(Problem::unprocessable(
            "validation.source",
            "send either a url or a file, not both",
        )),
        (None, None) => Err(Problem::unprocessable(
            "validation.source",
            "a job needs a url (JSON or form field) or an uploaded file (form part \"file\")",
        )),
        (Some(url), None) => {
            validate::media_url(url)?;
            Ok(Source::Url {
                url: url.to_owned(),
            })
        }
        (None, Some(upload)) if upload.bytes == 0 => Err(Problem::unprocessable(
            "validation.empty_file",
            "the uploaded file is empty",
        )),
        (None, Some(upload)) => Ok(Source::Upload {
            key: media_key(id),
            filename: validate::filename(upload.filename.as_deref()),
            bytes: upload.bytes,
        }),
    }
}

/// What a request body is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyKind {
    Json,
    /// `multipart/form-data` with its boundary.
    Multipart(String),
}

/// The body kind from `Content-Type`; 415 for anything else.
pub fn body_kind(headers: &HeaderMap, allow_json: bool) -> Result<BodyKind, Problem> {
    let expected = if allow_json {
        "application/json or multipart/form-data"
    } else {
        "multipart/form-data"
    };
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(Problem::unsupported_media_type(format!(
            "no Content-Type: send {expected}"
        )));
    };
    let text = value.to_str().unwrap_or_default();
    let essence = text
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" if allow_json => Ok(BodyKind::Json),
        "multipart/form-data" => multipart::boundary(text)
            .map(BodyKind::Multipart)
            .map_err(Problem::from),
        _ => Err(Problem::unsupported_media_type(format!(
            "Content-Type {text:?} is not supported: send {expected}"
        ))),
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Reads and drops up to 16 MiB of a body being refused (for one second at most), so that a
/// client still sending can finish and read the answer: closing on unread data makes the
/// kernel reset the connection, and the client would see a broken pipe instead of the 413.
async fn drain(mut body: ReqBody) {
    let mut left: u64 = 16 << 20;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
    while left > 0 {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                let len = frame.data_ref().map_or(0, |data| data.len() as u64);
                left = left.saturating_sub(len);
            }
            _ => break,
        }
    }
}

/// The whole JSON body, at most `max_json_body` bytes (413 past it), within the request
/// timeout.
async fn read_json(app: &App, headers: &HeaderMap, body: ReqBody) -> Result<bytes::Bytes, Problem> {
    let limit = app.params.max_json_body;
    let too_large = || {
        Problem::too_large(
            "request.too_large",
            format!("the JSON body is larger than {limit} bytes"),
        )
    };
    if content_length(headers).is_some_and(|length| length > limit) {
        drain(body).await;
        return Err(too_large());
    }
    let limit_usize = usize::try_from(limit).unwrap_or(usize::MAX);
    let collect = Limited::new(body, limit_usize).collect();
    match tokio::time::timeout(app.params.request_timeout, collect).await {
        Err(_) => Err(Problem::timeout(
            "request.timeout",
            "the request body did not arrive in time",
        )),
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(error)) => Err(Problem::bad_request(
            "request.body",
            format!("the request body could not be read: {error}"),
        )),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// Parses a JSON job request: 400 for broken JSON, 422 for the wrong shape.
pub fn parse_job_json(bytes: &[u8]) -> Result<JobFields, Problem> {
    serde_json::from_slice(bytes).map_err(|error| {
        if error.is_data() {
            Problem::unprocessable(
                "validation.body",
                format!("the request does not fit the schema: {error}"),
            )
        } else {
            Problem::bad_request("request.json", format!("malformed JSON: {error}"))
        }
    })
}

/// Receives a multipart form, its file part streamed into the spool as `<id>.upload`.
pub(super) async fn receive_form(
    app: &App,
    headers: &HeaderMap,
    body: ReqBody,
    boundary: String,
    id: &JobId,
) -> Result<Form, Problem> {
    let limits = &app.params.form;
    let envelope = (limits.max_fields as u64 + 2) * (limits.max_field_bytes as u64 + 4096);
    if content_length(headers)
        .is_some_and(|length| length > limits.max_file_bytes.saturating_add(envelope))
    {
        drain(body).await;
        return Err(Problem::too_large(
            "form.file_too_large",
            format!(
                "the upload is larger than the limit of {} bytes",
                limits.max_file_bytes
            ),
        ));
    }
    let dest = app.node.spool().join(format!("{id}.upload"));
    Ok(multipart::read_form(BodyDataStream::new(body), boundary, "file", dest, limits).await?)
}

/// Moves an upload from the spool into storage as the job's media.
pub(super) async fn store_upload(app: &App, id: &JobId, upload: Upload) -> Result<(), Problem> {
    let result = app
        .node
        .storage()
        .put_file(&media_key(id), upload.file.path())
        .await;
    upload.file.remove().await;
    result.map(|_| ()).map_err(|error| {
        tracing::error!(job_id = %id, %error, "storing an upload failed");
        Problem::unavailable(
            "storage.unavailable",
            format!("the upload could not be stored: {error}"),
            5,
        )
    })
}

/// Removes an upload that did not become a job (best effort: retention would not find it).
pub(super) async fn discard_upload(app: &App, id: &JobId) {
    if let Err(error) = app.node.storage().delete(&media_key(id)).await {
        tracing::warn!(job_id = %id, %error, "could not remove an unused upload");
    }
}

/// 429 when the caller already has `max_concurrent_jobs` jobs queued or running.
pub(super) async fn check_quota(app: &App, principal: &Principal) -> Result<(), Problem> {
    let Some(limits) = principal.limits else {
        return Ok(());
    };
    let node = app.node.clone();
    let owner = principal.owner.clone();
    // A scan of the job log: off the async threads.
    let active = tokio::task::spawn_blocking(move || node.active_jobs_of(&owner))
        .await
        .map_err(|_| Problem::internal())?;
    if active >= limits.max_concurrent_jobs as usize {
        return Err(Problem::too_many(
            "quota.concurrent_jobs",
            format!(
                "{active} jobs are queued or running for this key (limit {}); retry when one finishes",
                limits.max_concurrent_jobs
            ),
            app.params.busy_retry_after,
        ));
    }
    Ok(())
}

pub(super) fn submit_problem(error: SubmitError, retry_after: u64) -> Problem {
    match error {
        SubmitError::QueueFull(_) => {
            Problem::unavailable("queue.full", error.to_string(), retry_after)
        }
        SubmitError::ClusterFull(_) => {
            Problem::too_many("cluster.queue_full", error.to_string(), retry_after)
        }
        SubmitError::Store(message) => {
            Problem::unavailable("store.unavailable", message, retry_after)
        }
    }
}

pub(super) fn store_problem(error: StoreError) -> Problem {
    tracing::error!(%error, "job log read failed");
    Problem::unavailable(
        "store.unavailable",
        "the job log cannot be read right now; retry",
        5,
    )
}

fn job_problem(error: JobError) -> Problem {
    match error {
        JobError::NotFound => Problem::job_not_found(),
        JobError::Conflict(message) => Problem::conflict("job.conflict", message),
        JobError::Store(message) => {
            tracing::error!(%message, "job operation failed");
            Problem::unavailable("store.unavailable", message, 5)
        }
    }
}

/// The `Idempotency-Key` header, checked.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    headers
        .get("idempotency-key")
        .map(|value| validate::idempotency_key(value.as_bytes()).map_err(Problem::from))
        .transpose()
}

/// 422 unless the model is installed (only names that passed [`validate::model`] get here).
pub(super) async fn ensure_model(app: &App, model: Option<&str>) -> Result<(), Problem> {
    let Some(name) = model else {
        return Ok(());
    };
    if model_installed(app, name).await {
        Ok(())
    } else {
        Err(Problem::unprocessable(
            "validation.model_not_installed",
            format!("model {name:?} is not installed on this node"),
        ))
    }
}

/// Whether `name` (a valid model name) is installed in the models directory.
pub(super) async fn model_installed(app: &App, name: &str) -> bool {
    validate::is_model_name(name)
        && tokio::fs::metadata(app.models_dir.join(name).join("manifest.json"))
            .await
            .is_ok_and(|meta| meta.is_file())
}

/// A job's view with its live progress.
pub(super) fn view(app: &App, job: &JobState) -> serde_json::Value {
    job_view(job, app.node.progress(&job.id), &app.base_url)
}

fn view_response(app: &App, status: StatusCode, job: &JobState) -> Response {
    let mut response = json(status, &view(app, job));
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/jobs/{}", job.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// `POST /v1/jobs`.
pub async fn create(
    app: &App,
    call: &Call,
    request: Request<ReqBody>,
) -> Result<Response, Problem> {
    check_quota(app, &call.principal).await?;
    let idempotency = idempotency_key(request.headers())?;
    let (parts, body) = request.into_parts();
    let kind = body_kind(&parts.headers, true)?;
    let id = app.node.new_job_id();
    let (fields, upload) = match kind {
        BodyKind::Json => (
            parse_job_json(&read_json(app, &parts.headers, body).await?)?,
            None,
        ),
        BodyKind::Multipart(boundary) => {
            let form = receive_form(app, &parts.headers, body, boundary, &id).await?;
            (JobFields::from_form(&form)?, form.upload)
        }
    };
    let source = choose_source(&fields, upload.as_ref(), &id)?;
    let spec = build_spec(&fields, source, &call.principal.owner)?;
    ensure_model(app, spec.model.as_deref()).await?;
    let uploaded = upload.is_some();
    if let Some(upload) = upload {
        store_upload(app, &id, upload).await?;
    }
    let job = JobState::new(id.clone(), spec, now_ms());
    match app.node.submit(job, idempotency).await {
        Ok(submitted) => {
            if !submitted.created && uploaded {
                discard_upload(app, &id).await;
            }
            let status = if submitted.created {
                StatusCode::ACCEPTED
            } else {
                StatusCode::OK
            };
            if submitted.created {
                tracing::info!(job_id = %submitted.state.id, owner = %call.principal.owner, "job accepted");
            }
            Ok(view_response(app, status, &submitted.state))
        }
        Err(error) => {
            if uploaded {
                discard_upload(app, &id).await;
            }
            Err(submit_problem(error, app.params.busy_retry_after))
        }
    }
}

/// The job of the call's `{id}`, if the caller may see it; 404 otherwise (unknown, malformed,
/// deleted and other users' jobs look the same).
async fn visible_job(app: &App, call: &Call) -> Result<JobState, Problem> {
    let id = call
        .id
        .as_deref()
        .and_then(JobId::parse)
        .ok_or_else(Problem::job_not_found)?;
    match app.node.job(&id).await {
        Ok(Some(job)) if call.principal.can_see(&job) => Ok(job),
        Ok(_) => Err(Problem::job_not_found()),
        Err(error) => Err(store_problem(error)),
    }
}

/// `GET /v1/jobs`.
pub async fn list(app: &App, call: &Call, query: Option<&str>) -> Result<Response, Problem> {
    let params = super::query::parse(query)?;
    super::query::only(&params, &["state", "limit", "cursor", "owner"])?;
    let mut filter = ListFilter {
        limit: DEFAULT_PAGE,
        ..ListFilter::default()
    };
    for (name, value) in &params {
        match name.as_str() {
            "state" => {
                filter.stage = Some(Stage::parse(value).ok_or_else(|| {
                    let states: Vec<&str> = Stage::ALL.iter().map(|s| s.as_str()).collect();
                    Problem::unprocessable(
                        "validation.state",
                        format!("unknown state {value:?}; one of {}", states.join(", ")),
                    )
                })?);
            }
            "limit" => {
                filter.limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| {
                        Problem::unprocessable(
                            "validation.limit",
                            format!("limit must be a number from 1 to {MAX_PAGE}"),
                        )
                    })?;
            }
            "cursor" => {
                filter.before = Some(JobId::parse(value).ok_or_else(|| {
                    Problem::unprocessable(
                        "validation.cursor",
                        "cursor is not one this API handed out",
                    )
                })?);
            }
            "owner" => {
                call.principal.require_admin()?;
                filter.owner = Some(value.clone());
            }
            _ => {}
        }
    }
    if !call.principal.is_admin() {
        filter.owner = Some(call.principal.owner.clone());
    }
    let (jobs, next) = app.node.list(&filter).map_err(store_problem)?;
    let views: Vec<serde_json::Value> = jobs.iter().map(|job| view(app, job)).collect();
    Ok(json(
        StatusCode::OK,
        &json!({ "jobs": views, "next_cursor": next.map(|id| id.to_string()) }),
    ))
}

/// `GET /v1/jobs/{id}`.
pub async fn get(app: &App, call: &Call) -> Result<Response, Problem> {
    let job = visible_job(app, call).await?;
    Ok(view_response(app, StatusCode::OK, &job))
}

/// `DELETE /v1/jobs/{id}`: a running job is cancelled (202, its view); a finished one is
/// deleted with its files (204).
pub async fn delete(app: &App, call: &Call) -> Result<Response, Problem> {
    let job = visible_job(app, call).await?;
    let state = app.node.delete(&job.id).await.map_err(job_problem)?;
    if state.deleted {
        tracing::info!(job_id = %job.id, "job deleted");
        Ok(empty(StatusCode::NO_CONTENT))
    } else {
        Ok(view_response(app, StatusCode::ACCEPTED, &state))
    }
}

/// `POST /v1/jobs/{id}/cancel`: 202 with the view; 409 for a finished job, or one whose
/// outcome is settled and which is only sending its notifications.
pub async fn cancel(app: &App, call: &Call) -> Result<Response, Problem> {
    let job = visible_job(app, call).await?;
    let state = app.node.cancel(&job.id).await.map_err(job_problem)?;
    Ok(view_response(app, StatusCode::ACCEPTED, &state))
}

/// `POST /v1/jobs/{id}/retry`: 202 with the view; 409 unless failed or cancelled.
pub async fn retry(app: &App, call: &Call) -> Result<Response, Problem> {
    let job = visible_job(app, call).await?;
    if !matches!(job.stage, Stage::Failed | Stage::Cancelled) {
        return Err(Problem::conflict(
            "job.conflict",
            format!(
                "only failed or cancelled jobs can be retried; this one is {}",
                job.stage.as_str()
            ),
        ));
    }
    check_quota(app, &call.principal).await?;
    let state = app.node.retry(&job.id).await.map_err(job_problem)?;
    Ok(view_response(app, StatusCode::ACCEPTED, &state))
}

/// `GET /v1/jobs/{id}/history`: the job's saga timeline, every durable event in order (the
/// same log the job's state is folded from): steps and attempts with their reasons, and each
/// notification channel's delivery.
pub async fn history(app: &App, call: &Call) -> Result<Response, Problem> {
    let job = visible_job(app, call).await?;
    let events = app.node.events(&job.id).await.map_err(|error| {
        tracing::error!(%error, "job log read failed");
        Problem::internal()
    })?;
    let events: Vec<serde_json::Value> = events
        .iter()
        .enumerate()
        .map(|(seq, event)| {
            serde_json::json!({
                "seq": seq,
                "type": event.name(),
                "at": ytcaption_protocol::time::rfc3339_ms(event.at()),
                "event": event,
            })
        })
        .collect();
    Ok(super::json(
        StatusCode::OK,
        &serde_json::json!({ "job_id": job.id.as_str(), "events": events }),
    ))
}

/// `GET /v1/jobs/{id}/transcript?format=`: the transcript (JSON by default); 409 until the
/// job completed.
pub async fn transcript(app: &App, call: &Call, query: Option<&str>) -> Result<Response, Problem> {
    let params = super::query::parse(query)?;
    super::query::only(&params, &["format"])?;
    let job = visible_job(app, call).await?;
    let format = match params.iter().rev().find(|(name, _)| name == "format") {
        Some((_, name)) => validate::format("format", name)?,
        None => Format::Json,
    };
    if !super::view::transcript_ready(&job) {
        return Err(Problem::conflict(
            "job.not_completed",
            format!(
                "the transcript is not ready: the job is {}",
                job.stage.as_str()
            ),
        ));
    }
    let bytes = app
        .node
        .transcript(&job, format)
        .await
        .map_err(job_problem)?;
    let mut response = super::full(StatusCode::OK, format.content_type(), bytes);
    let disposition = format!("inline; filename=\"{}.{}\"", job.id, format.extension());
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        response
            .headers_mut()
            .insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

/// `GET /v1/jobs/{id}/events`: Server-Sent Events until the job ends.
pub async fn events(app: &App, call: &Call) -> Result<Response, Problem> {
    let id = call
        .id
        .as_deref()
        .and_then(JobId::parse)
        .ok_or_else(Problem::job_not_found)?;
    // Subscribe first: a change between reading the state and subscribing would be lost.
    let updates = app.node.subscribe(&id);
    let first = visible_job(app, call).await?;
    let (tx, body) = sse::channel(32);
    let follow = sse::Follow {
        node: app.node.clone(),
        updates,
        first,
        base_url: app.base_url.clone(),
        keep_alive: app.params.keep_alive,
        shutdown: app.shutdown.clone(),
    };
    tokio::spawn(sse::follow(follow, tx));
    let mut response = hyper::Response::new(body.boxed_unsync());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tells nginx-style proxies not to buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_requests_parse_with_400_for_syntax_and_422_for_shape() {
        let fields = parse_job_json(
            br#"{"url":"https://e.com/a.mp3","formats":["srt"],"word_timestamps":false}"#,
        )
        .unwrap();
        assert_eq!(fields.url.as_deref(), Some("https://e.com/a.mp3"));
        assert_eq!(fields.word_timestamps, Some(false));
        assert_eq!(parse_job_json(b"{\"url\":").unwrap_err().status, 400);
        assert_eq!(parse_job_json(b"not json").unwrap_err().status, 400);
        assert_eq!(parse_job_json(br#"{"url": 5}"#).unwrap_err().status, 422);
        let unknown = parse_job_json(br#"{"url":"https://e.com","colour":"red"}"#).unwrap_err();
        assert_eq!(unknown.status, 422);
        assert!(unknown.detail.contains("colour"), "{}", unknown.detail);
    }

    #[test]
    fn specs_default_and_validate_every_field() {
        let fields = JobFields {
            url: Some("https://e.com/a.mp3".into()),
            language: Some("auto".into()),
            email: Some(" ".into()),
            ..JobFields::default()
        };
        let source = Source::Url {
            url: "https://e.com/a.mp3".into(),
        };
        let spec = build_spec(&fields, source.clone(), "alice").unwrap();
        assert_eq!(spec.formats, Format::ALL.to_vec());
        assert_eq!(spec.language, None);
        assert_eq!(spec.email, None);
        assert!(spec.word_timestamps);
        assert_eq!(spec.owner, "alice");
        let bad = [
            (
                JobFields {
                    webhook_url: Some("ftp://x".into()),
                    ..JobFields::default()
                },
                "validation.webhook_url",
            ),
            (
                JobFields {
                    email: Some("nope".into()),
                    ..JobFields::default()
                },
                "validation.email",
            ),
            (
                JobFields {
                    language: Some("EN".into()),
                    ..JobFields::default()
                },
                "validation.language",
            ),
            (
                JobFields {
                    model: Some("../x".into()),
                    ..JobFields::default()
                },
                "validation.model",
            ),
            (
                JobFields {
                    task: Some("dance".into()),
                    ..JobFields::default()
                },
                "validation.task",
            ),
            (
                JobFields {
                    formats: Some(vec!["doc".into()]),
                    ..JobFields::default()
                },
                "validation.format",
            ),
        ];
        for (fields, code) in bad {
            assert_eq!(
                build_spec(&fields, source.clone(), "a").unwrap_err().code(),
                code
            );
        }
    }

    #[test]
    fn exactly_one_source() {
        let id = JobId::new(1, 1);
        let none = JobFields::default();
        assert_eq!(
            choose_source(&none, None, &id).unwrap_err().code,
            "validation.source"
        );
        let url = JobFields {
            url: Some("http://e.com/a".into()),
            ..JobFields::default()
        };
        assert_eq!(
            choose_source(&url, None, &id).unwrap(),
            Source::Url {
                url: "http://e.com/a".into()
            }
        );
        let bad_url = JobFields {
            url: Some("ftp://e.com/a".into()),
            ..JobFields::default()
        };
        assert_eq!(choose_source(&bad_url, None, &id).unwrap_err().status, 422);
    }

    #[test]
    fn forms_map_to_fields_and_refuse_unknown_parts() {
        let form = Form {
            fields: vec![
                ("formats".into(), "srt, vtt".into()),
                ("formats[]".into(), "txt".into()),
                ("word_timestamps".into(), "false".into()),
                ("language".into(), "de".into()),
            ],
            upload: None,
        };
        let fields = JobFields::from_form(&form).unwrap();
        assert_eq!(fields.formats.unwrap(), vec!["srt", "vtt", "txt"]);
        assert_eq!(fields.word_timestamps, Some(false));
        assert_eq!(fields.language.as_deref(), Some("de"));
        let form = Form {
            fields: vec![("colour".into(), "red".into())],
            upload: None,
        };
        assert_eq!(
            JobFields::from_form(&form).unwrap_err().code,
            "form.unknown_field"
        );
        let form = Form {
            fields: vec![("word_timestamps".into(), "perhaps".into())],
            upload: None,
        };
        assert_eq!(JobFields::from_form(&form).unwrap_err().status, 422);
    }

    #[test]
    fn content_types_select_the_parser() {
        let mut headers = HeaderMap::new();
        assert_eq!(body_kind(&headers, true).unwrap_err().status, 415);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        assert_eq!(body_kind(&headers, true).unwrap(), BodyKind::Json);
        assert_eq!(body_kind(&headers, false).unwrap_err().status, 415);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("multipart/form-data; boundary=xy"),
        );
        assert_eq!(
            body_kind(&headers, false).unwrap(),
            BodyKind::Multipart("xy".into())
        );
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("multipart/form-data"),
        );
        assert_eq!(body_kind(&headers, true).unwrap_err().status, 400);
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert_eq!(
            body_kind(&headers, true).unwrap_err().code,
            "request.content_type"
        );
    }

    #[test]
    fn submit_errors_are_503_with_retry_after() {
        let problem = submit_problem(SubmitError::QueueFull(10), 5);
        assert_eq!(
            (problem.status.as_u16(), problem.retry_after),
            (503, Some(5))
        );
        assert_eq!(problem.code, "queue.full");
        assert_eq!(job_problem(JobError::NotFound).status, 404);
        assert_eq!(job_problem(JobError::Conflict("x".into())).status, 409);
        assert_eq!(job_problem(JobError::Store("x".into())).status, 503);
    }
}
