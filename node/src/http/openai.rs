//! OpenAI-compatible `POST /v1/audio/transcriptions` and `/v1/audio/translations`, so the
//! official SDKs and tools built on them work against a node.
//!
//! Each request runs as an ordinary durable job (upload source, no notifications); the handler
//! waits for it to end and answers in the requested `response_format`. A client that hangs up
//! cancels its job: nobody is left to read the answer.

use std::time::Duration;

use http::{Request, StatusCode};
use serde_json::{json, Value};
use tokio::sync::broadcast;
use ytcaption_actors::hub::Update;
use ytcaption_actors::node::Node;
use ytcaption_protocol::job::media_key;
use ytcaption_protocol::{Format, JobId, JobSpec, JobState, Source, Stage, Task, Transcript};

use super::jobs::{
    body_kind, check_quota, discard_upload, model_installed, receive_form, store_upload,
    submit_problem, BodyKind,
};
use super::languages;
use super::multipart::Form;
use super::problem::Problem;
use super::routes::Route;
use super::service::{App, Call, ReqBody};
use super::validate::{self, ValidationError};
use super::{full, json, Response};
use ytcaption_protocol::time::now_ms;

/// The answer formats OpenAI defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFormat {
    Json,
    Text,
    Srt,
    Vtt,
    VerboseJson,
}

impl ResponseFormat {
    fn parse(text: Option<&str>) -> Result<ResponseFormat, ValidationError> {
        match text.filter(|t| !t.is_empty()) {
            None | Some("json") => Ok(ResponseFormat::Json),
            Some("text") => Ok(ResponseFormat::Text),
            Some("srt") => Ok(ResponseFormat::Srt),
            Some("vtt") => Ok(ResponseFormat::Vtt),
            Some("verbose_json") => Ok(ResponseFormat::VerboseJson),
            Some(other) => Err(ValidationError::new(
                "response_format",
                "validation.response_format",
                format!("{other:?} is not one of json, text, srt, verbose_json, vtt"),
            )),
        }
    }
}

/// The options of one OpenAI request.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub task: Task,
    /// The requested model name, as sent (mapped to an installed one later).
    pub model: Option<String>,
    pub language: Option<String>,
    pub prompt: Option<String>,
    pub response_format: ResponseFormat,
    /// Word timings in `verbose_json`.
    pub words: bool,
    /// Segments in `verbose_json` (the default granularity).
    pub segments: bool,
}

impl Options {
    /// Reads the form's fields. Unknown fields are ignored: the SDKs send some we do not use.
    pub fn from_form(form: &Form, task: Task) -> Result<Options, ValidationError> {
        if let Some(value) = form.get("temperature").filter(|t| !t.is_empty()) {
            let ok = value.parse::<f64>().is_ok_and(|t| (0.0..=1.0).contains(&t));
            if !ok {
                return Err(ValidationError::new(
                    "temperature",
                    "validation.temperature",
                    format!("{value:?} is not a number from 0 to 1"),
                ));
            }
        }
        let mut granularities = form.all("timestamp_granularities[]");
        granularities.extend(form.all("timestamp_granularities"));
        for value in &granularities {
            if !matches!(*value, "word" | "segment") {
                return Err(ValidationError::new(
                    "timestamp_granularities[]",
                    "validation.timestamp_granularities",
                    format!("{value:?} is not word or segment"),
                ));
            }
        }
        let words = granularities.contains(&"word");
        let segments = granularities.is_empty() || granularities.contains(&"segment");
        // Translations are always into English: a given source language still helps decoding.
        Ok(Options {
            task,
            model: form
                .get("model")
                .filter(|m| !m.is_empty())
                .map(str::to_owned),
            language: validate::language(form.get("language"))?,
            prompt: validate::prompt(form.get("prompt"))?,
            response_format: ResponseFormat::parse(form.get("response_format"))?,
            words,
            segments,
        })
    }
}

/// Whether a failed job's reason is the client's fault (its media or options).
pub fn failure_status(code: &str) -> StatusCode {
    match code {
        "media.io" | "media.needs_ffmpeg" | "media.ffmpeg_failed" | "media.resample" => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
        code if code.starts_with("media.") => StatusCode::BAD_REQUEST,
        code if code.starts_with("request.")
            || code.starts_with("model.")
            || code.starts_with("validation.") =>
        {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The answer of a completed transcription in `format`.
pub fn render(transcript: &Transcript, options: &Options) -> Response {
    match options.response_format {
        ResponseFormat::Json => json(StatusCode::OK, &json!({ "text": transcript.text() })),
        ResponseFormat::Text => full(
            StatusCode::OK,
            Format::Txt.content_type(),
            format!("{}\n", transcript.text()),
        ),
        ResponseFormat::Srt => full(
            StatusCode::OK,
            Format::Srt.content_type(),
            Format::Srt.render(transcript),
        ),
        ResponseFormat::Vtt => full(
            StatusCode::OK,
            Format::Vtt.content_type(),
            Format::Vtt.render(transcript),
        ),
        ResponseFormat::VerboseJson => json(StatusCode::OK, &verbose_json(transcript, options)),
    }
}

/// OpenAI's `verbose_json`: the language by name, segments with OpenAI's fields (`seek` in
/// 10 ms frames, no token ids), words when asked for.
pub fn verbose_json(transcript: &Transcript, options: &Options) -> Value {
    let mut value = json!({
        "task": options.task.as_str(),
        "language": languages::name(&transcript.language).unwrap_or(&transcript.language),
        "duration": transcript.duration,
        "text": transcript.text(),
    });
    if options.segments {
        let segments: Vec<Value> = transcript
            .segments
            .iter()
            .enumerate()
            .map(|(id, segment)| {
                json!({
                    "id": id,
                    "seek": (segment.start * 100.0).floor().max(0.0) as u64,
                    "start": segment.start,
                    "end": segment.end,
                    "text": segment.text,
                    "tokens": [],
                    "temperature": segment.temperature,
                    "avg_logprob": segment.avg_logprob,
                    "compression_ratio": segment.compression_ratio,
                    "no_speech_prob": segment.no_speech_prob,
                })
            })
            .collect();
        value["segments"] = Value::Array(segments);
    }
    if options.words {
        let words: Vec<Value> = transcript
            .words()
            .map(|word| json!({ "word": word.word, "start": word.start, "end": word.end }))
            .collect();
        value["words"] = Value::Array(words);
    }
    value
}

/// Cancels the job when dropped, unless disarmed: a dropped handler means the client left.
struct CancelOnDrop {
    node: Option<Node>,
    id: JobId,
}

impl CancelOnDrop {
    fn disarm(mut self) {
        self.node = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let (Some(node), Ok(runtime)) = (self.node.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let id = self.id.clone();
        runtime.spawn(async move {
            match node.cancel(&id).await {
                Ok(_) => tracing::info!(job_id = %id, "client left: synchronous job cancelled"),
                Err(error) => tracing::debug!(job_id = %id, %error, "cancel after client left"),
            }
        });
    }
}

/// Waits until the job is terminal; `Ok(None)` past `timeout`.
async fn wait_terminal(
    node: &Node,
    mut updates: broadcast::Receiver<Update>,
    mut current: JobState,
    timeout: Duration,
) -> Result<Option<JobState>, Problem> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if current.is_terminal() {
            return Ok(Some(current));
        }
        match tokio::time::timeout_at(deadline, updates.recv()).await {
            Err(_) => return Ok(None),
            Ok(Ok(Update::State(job))) => current = (*job).clone(),
            Ok(Ok(Update::Progress { .. })) => {}
            Ok(Err(error)) => {
                if matches!(error, broadcast::error::RecvError::Closed) {
                    updates = node.subscribe(&current.id);
                }
                current = match node.local_job(&current.id) {
                    Ok(Some(job)) => job,
                    Ok(None) => {
                        return Err(Problem::conflict(
                            "job.deleted",
                            "the job was deleted while running",
                        ))
                    }
                    Err(error) => return Err(super::jobs::store_problem(error)),
                };
            }
        }
    }
}

/// The answer for a job that ended.
async fn answer(app: &App, job: &JobState, options: &Options) -> Result<Response, Problem> {
    match job.stage {
        Stage::Completed => {
            let bytes = app
                .node
                .transcript(job, Format::Json)
                .await
                .map_err(|error| {
                    Problem::unavailable("storage.unavailable", error.to_string(), 5)
                })?;
            let transcript: Transcript = serde_json::from_slice(&bytes).map_err(|error| {
                tracing::error!(job_id = %job.id, %error, "stored transcript unreadable");
                Problem::internal()
            })?;
            Ok(render(&transcript, options))
        }
        Stage::Cancelled => Err(Problem::conflict("job.cancelled", "the job was cancelled")),
        _ => {
            let (code, message) = job.error.as_ref().map_or_else(
                || ("job.failed".to_owned(), "the job failed".to_owned()),
                |reason| (reason.code.clone(), reason.message.clone()),
            );
            Err(Problem::new(failure_status(&code), code, message))
        }
    }
}

/// Maps the requested model: a locally installed one is used, anything else (`whisper-1`,
/// `gpt-4o-transcribe`...) means the node's default.
async fn local_model(app: &App, requested: Option<&str>) -> Option<String> {
    let name = requested?;
    model_installed(app, name).await.then(|| name.to_owned())
}

/// Both routes.
pub async fn transcribe(
    app: &App,
    call: &Call,
    request: Request<ReqBody>,
) -> Result<Response, Problem> {
    let task = if call.route == Route::AudioTranslations {
        Task::Translate
    } else {
        Task::Transcribe
    };
    check_quota(app, &call.principal).await?;
    let (parts, body) = request.into_parts();
    let BodyKind::Multipart(boundary) = body_kind(&parts.headers, false)? else {
        return Err(Problem::unsupported_media_type("send multipart/form-data"));
    };
    let id = app.node.new_job_id();
    let form = receive_form(app, &parts.headers, body, boundary, &id).await?;
    let options = Options::from_form(&form, task)?;
    let Some(upload) = form.upload else {
        return Err(Problem::bad_request(
            "form.missing_file",
            "the form has no file part: send the audio as \"file\"",
        ));
    };
    if upload.bytes == 0 {
        return Err(Problem::bad_request(
            "validation.empty_file",
            "the uploaded file is empty",
        ));
    }
    let spec = JobSpec {
        source: Source::Upload {
            key: media_key(&id),
            filename: validate::filename(upload.filename.as_deref()),
            bytes: upload.bytes,
        },
        language: options.language.clone(),
        task,
        model: local_model(app, options.model.as_deref()).await,
        formats: vec![Format::Json],
        webhook_url: None,
        email: None,
        prompt: options.prompt.clone(),
        word_timestamps: options.words,
        owner: call.principal.owner.clone(),
    };
    // Subscribe before the job exists: no update can be missed.
    let updates = app.node.subscribe(&id);
    store_upload(app, &id, upload).await?;
    let submitted = match app
        .node
        .submit(JobState::new(id.clone(), spec, now_ms()), None)
        .await
    {
        Ok(submitted) => submitted,
        Err(error) => {
            discard_upload(app, &id).await;
            return Err(submit_problem(error, app.params.busy_retry_after));
        }
    };
    let guard = CancelOnDrop {
        node: Some(app.node.clone()),
        id: id.clone(),
    };
    let timeout = app.params.sync_timeout;
    let ended = wait_terminal(&app.node, updates, submitted.state, timeout).await;
    guard.disarm();
    match ended? {
        Some(job) => answer(app, &job, &options).await,
        None => Err(Problem::new(
            StatusCode::GATEWAY_TIMEOUT,
            "sync.timeout",
            format!(
                "the transcription did not finish within {} s; it continues as job {id}: GET /v1/jobs/{id}",
                timeout.as_secs()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use ytcaption_protocol::{Segment, Word};

    fn form(fields: &[(&str, &str)]) -> Form {
        Form {
            fields: fields
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            upload: None,
        }
    }

    fn transcript() -> Transcript {
        Transcript {
            version: 1,
            language: "en".into(),
            task: "transcribe".into(),
            model: "base".into(),
            duration: 4.5,
            segments: vec![
                Segment {
                    start: 0.0,
                    end: 2.0,
                    text: "Hello there.".into(),
                    avg_logprob: -0.2,
                    no_speech_prob: 0.01,
                    temperature: 0.0,
                    compression_ratio: 1.1,
                    words: vec![
                        Word {
                            start: 0.0,
                            end: 0.5,
                            word: "Hello".into(),
                            probability: 0.9,
                        },
                        Word {
                            start: 0.6,
                            end: 1.0,
                            word: "there.".into(),
                            probability: 0.8,
                        },
                    ],
                },
                Segment {
                    start: 2.5,
                    end: 4.0,
                    text: "General Kenobi.".into(),
                    avg_logprob: -0.3,
                    no_speech_prob: 0.02,
                    temperature: 0.2,
                    compression_ratio: 1.2,
                    words: vec![],
                },
            ],
        }
    }

    #[test]
    fn options_default_like_openai() {
        let options =
            Options::from_form(&form(&[("model", "whisper-1")]), Task::Transcribe).unwrap();
        assert_eq!(options.response_format, ResponseFormat::Json);
        assert_eq!(options.model.as_deref(), Some("whisper-1"));
        assert!(options.segments && !options.words);
        assert_eq!(options.language, None);
    }

    #[test]
    fn options_are_checked() {
        let options = Options::from_form(
            &form(&[
                ("response_format", "verbose_json"),
                ("timestamp_granularities[]", "word"),
                ("temperature", "0.2"),
                ("language", "de"),
                ("stream", "false"),
            ]),
            Task::Transcribe,
        )
        .unwrap();
        assert!(options.words && !options.segments);
        assert_eq!(options.language.as_deref(), Some("de"));
        for (field, value, code) in [
            ("response_format", "docx", "validation.response_format"),
            ("temperature", "7", "validation.temperature"),
            ("temperature", "warm", "validation.temperature"),
            (
                "timestamp_granularities[]",
                "char",
                "validation.timestamp_granularities",
            ),
            ("language", "english", "validation.language"),
        ] {
            let error = Options::from_form(&form(&[(field, value)]), Task::Transcribe).unwrap_err();
            assert_eq!(error.code(), code, "{field}={value}");
        }
    }

    #[test]
    fn failures_blame_the_media_or_the_node() {
        assert_eq!(failure_status("media.corrupt"), StatusCode::BAD_REQUEST);
        assert_eq!(
            failure_status("media.no_audio_track"),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            failure_status("request.invalid_option"),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(
            failure_status("media.io"),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            failure_status("engine.runtime"),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            failure_status("storage.unavailable"),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn verbose_json_has_openai_fields() {
        let options = Options {
            task: Task::Transcribe,
            model: None,
            language: None,
            prompt: None,
            response_format: ResponseFormat::VerboseJson,
            words: true,
            segments: true,
        };
        let value = verbose_json(&transcript(), &options);
        assert_eq!(value["task"], "transcribe");
        assert_eq!(value["language"], "english");
        assert_eq!(value["duration"], 4.5);
        assert_eq!(value["text"], "Hello there. General Kenobi.");
        let second = &value["segments"][1];
        assert_eq!(second["id"], 1);
        assert_eq!(second["seek"], 250);
        assert_eq!(second["tokens"], json!([]));
        assert_eq!(second["temperature"], 0.2);
        for field in [
            "start",
            "end",
            "text",
            "avg_logprob",
            "compression_ratio",
            "no_speech_prob",
        ] {
            assert!(!second[field].is_null(), "{field}");
        }
        assert_eq!(
            value["words"],
            json!([
                {"word": "Hello", "start": 0.0, "end": 0.5},
                {"word": "there.", "start": 0.6, "end": 1.0},
            ])
        );
        let plain = verbose_json(
            &transcript(),
            &Options {
                words: false,
                ..options
            },
        );
        assert!(plain.get("words").is_none());
    }

    #[tokio::test]
    async fn each_format_renders_with_its_content_type() {
        let base = Options {
            task: Task::Transcribe,
            model: None,
            language: None,
            prompt: None,
            response_format: ResponseFormat::Json,
            words: false,
            segments: true,
        };
        let cases = [
            (
                ResponseFormat::Json,
                "application/json",
                "{\"text\":\"Hello there. General Kenobi.\"}",
            ),
            (
                ResponseFormat::Text,
                "text/plain; charset=utf-8",
                "Hello there. General Kenobi.\n",
            ),
            (
                ResponseFormat::Srt,
                "application/x-subrip; charset=utf-8",
                "1\n00:00:00,000 --> 00:00:02,000\nHello there.",
            ),
            (ResponseFormat::Vtt, "text/vtt; charset=utf-8", "WEBVTT"),
        ];
        for (format, content_type, starts) in cases {
            let response = render(
                &transcript(),
                &Options {
                    response_format: format,
                    ..base.clone()
                },
            );
            assert_eq!(response.headers()[http::header::CONTENT_TYPE], content_type);
            let body = response.into_body().collect().await.unwrap().to_bytes();
            let text = String::from_utf8(body.to_vec()).unwrap();
            assert!(text.starts_with(starts), "{format:?}: {text}");
        }
    }
}
