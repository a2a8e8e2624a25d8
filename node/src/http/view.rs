//! The one JSON view of a job, used by every endpoint and the event stream, so a client sees
//! the same shape everywhere.

use serde_json::{json, Map, Value};
use ytcaption_protocol::{Format, JobState, Source, Stage, StepOutput};

use ytcaption_protocol::time::rfc3339_ms;

/// Overall progress in percent: a coarse value per stage, and within transcription (the long
/// step) the transcriber's own progress scaled into 10..90. `None` for failed and cancelled
/// jobs, whose progress means nothing.
pub fn overall_progress(stage: Stage, step_percent: Option<f32>) -> Option<f64> {
    let percent = match stage {
        Stage::Accepted => 0.0,
        Stage::Downloading => 5.0,
        Stage::Transcribing => {
            10.0 + 0.8 * f64::from(step_percent.unwrap_or(0.0).clamp(0.0, 100.0))
        }
        Stage::Storing => 92.0,
        Stage::Notifying => 97.0,
        Stage::Completed => 100.0,
        Stage::Failed | Stage::Cancelled => return None,
    };
    Some((percent * 10.0).round() / 10.0)
}

/// Whether the transcript can be fetched.
pub fn transcript_ready(job: &JobState) -> bool {
    matches!(job.stage, Stage::Completed | Stage::Notifying) && job.transcript_key().is_some()
}

/// The job's absolute URL.
pub fn job_url(base_url: &str, job: &JobState) -> String {
    format!("{base_url}/v1/jobs/{}", job.id)
}

fn source(job: &JobState) -> Value {
    let mut value = match &job.spec.source {
        Source::Url { url } => json!({ "kind": "url", "url": url }),
        Source::Upload {
            filename, bytes, ..
        } => json!({ "kind": "upload", "filename": filename, "bytes": bytes }),
    };
    if let Some(StepOutput::Downloaded {
        title: Some(title), ..
    }) = job.outputs.get(&ytcaption_protocol::Step::Download)
    {
        value["title"] = json!(title);
    }
    value
}

fn links(job: &JobState, base_url: &str) -> Value {
    let url = job_url(base_url, job);
    let mut links = json!({ "self": url, "events": format!("{url}/events") });
    if transcript_ready(job) {
        let transcript: Map<String, Value> = Format::ALL
            .iter()
            .map(|format| {
                (
                    format.extension().to_owned(),
                    json!(format!("{url}/transcript?format={}", format.extension())),
                )
            })
            .collect();
        links["transcript"] = Value::Object(transcript);
    }
    links
}

/// The view of `job`; `step_progress` is the transcriber's last report (from the hub),
/// `base_url` the node's public URL without a trailing slash.
pub fn job_view(job: &JobState, step_progress: Option<f32>, base_url: &str) -> Value {
    let spec = &job.spec;
    let attempts: Map<String, Value> = job
        .attempts
        .iter()
        .map(|(step, n)| (step.as_str().to_owned(), json!(n)))
        .collect();
    let timings: Map<String, Value> = job
        .timings
        .iter()
        .map(|(step, ms)| (step.as_str().to_owned(), json!(ms)))
        .collect();
    let (language, duration, engine_ms, chunks) =
        match job.outputs.get(&ytcaption_protocol::Step::Transcribe) {
            Some(StepOutput::Transcribed {
                language,
                duration_s,
                engine_ms,
                chunks,
                ..
            }) => (
                Some(language.clone()),
                Some(*duration_s),
                Some(*engine_ms),
                chunks.as_slice(),
            ),
            _ => (None, None, None, &[][..]),
        };
    // Long media split across the cluster: which node transcribed which stretch.
    let chunks: Vec<Value> = chunks
        .iter()
        .map(|chunk| json!({"node": chunk.node, "start": chunk.start_s, "end": chunk.end_s, "ms": chunk.ms}))
        .collect();
    // Accepted to finished: end-to-end time on the server's clock.
    let elapsed_ms = job.finished_at.map(|at| at.saturating_sub(job.created_at));
    let channel = |c: &ytcaption_protocol::Channel| match c {
        ytcaption_protocol::Channel::Webhook => "webhook",
        ytcaption_protocol::Channel::Email => "email",
    };
    json!({
        "id": job.id.as_str(),
        "state": job.stage.as_str(),
        "stage": job.stage.as_str(),
        "progress": overall_progress(job.stage, step_progress),
        "created_at": rfc3339_ms(job.created_at),
        "updated_at": rfc3339_ms(job.updated_at),
        "finished_at": job.finished_at.map(rfc3339_ms),
        "cancel_requested": job.cancel_requested,
        "next_retry_at": job.next_retry_at.map(rfc3339_ms),
        "attempts": attempts,
        "timings_ms": timings,
        "error": job.error.as_ref().map(|reason| json!({ "code": reason.code, "message": reason.message })),
        "source": source(job),
        "options": {
            "language": spec.language,
            "task": spec.task.as_str(),
            "model": spec.model,
            "formats": spec.formats.iter().map(|f| f.extension()).collect::<Vec<_>>(),
            "word_timestamps": spec.word_timestamps,
            "prompt": spec.prompt,
        },
        "webhook_url": spec.webhook_url,
        "email": spec.email,
        "notifications": {
            "delivered": job.delivered.iter().map(channel).collect::<Vec<_>>(),
            "gave_up": job.gave_up.iter().map(channel).collect::<Vec<_>>(),
        },
        "owner": spec.owner,
        "duration_s": duration,
        "language": language,
        "engine_ms": engine_ms,
        "elapsed_ms": elapsed_ms,
        "links": links(job, base_url),
        // In a cluster: the node that drives the job, its fencing epoch, where each step ran.
        "placement": job.owner_node.as_ref().map(|node| json!({
            "owner_node": node,
            "epoch": job.epoch,
            "ran_on": job.ran_on.iter().map(|(step, node)| (step.as_str().to_owned(), json!(node))).collect::<serde_json::Map<_, _>>(),
            "chunks": chunks,
        })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ytcaption_protocol::{Event, JobId, JobSpec, Reason, Step, Task};

    fn job(source: Source) -> JobState {
        JobState::new(
            JobId::new(1_709_296_496_789, 0xabc),
            JobSpec {
                source,
                language: Some("en".into()),
                task: Task::Translate,
                model: Some("base".into()),
                formats: vec![Format::Srt, Format::Txt],
                webhook_url: Some("https://hooks.example.com/x".into()),
                email: None,
                prompt: None,
                word_timestamps: false,
                owner: "alice".into(),
            },
            1_709_296_496_789,
        )
    }

    #[test]
    fn a_new_job_shows_its_request_and_links() {
        let job = job(Source::Url {
            url: "https://example.com/a.mp3".into(),
        });
        let view = job_view(&job, None, "http://127.0.0.1:8080");
        assert_eq!(view["id"], job.id.as_str());
        assert_eq!(view["state"], "accepted");
        assert_eq!(view["progress"], 0.0);
        assert_eq!(view["created_at"], "2024-03-01T12:34:56.789Z");
        assert_eq!(view["finished_at"], Value::Null);
        assert_eq!(view["error"], Value::Null);
        assert_eq!(
            view["source"],
            json!({"kind": "url", "url": "https://example.com/a.mp3"})
        );
        assert_eq!(view["options"]["task"], "translate");
        assert_eq!(view["options"]["formats"], json!(["srt", "txt"]));
        assert_eq!(view["options"]["word_timestamps"], false);
        assert_eq!(view["webhook_url"], "https://hooks.example.com/x");
        let url = format!("http://127.0.0.1:8080/v1/jobs/{}", job.id);
        assert_eq!(view["links"]["self"], url);
        assert_eq!(view["links"]["events"], format!("{url}/events"));
        assert!(view["links"].get("transcript").is_none());
    }

    #[test]
    fn a_completed_job_shows_results_timings_and_transcript_links() {
        let mut job = job(Source::Upload {
            key: "jobs/x/media".into(),
            filename: "talk.wav".into(),
            bytes: 1234,
        });
        let events = [
            Event::StepStarted {
                step: Step::Download,
                attempt: 1,
                at: 1_709_296_497_000,
                node: None,
            },
            Event::StepSucceeded {
                step: Step::Download,
                output: StepOutput::Downloaded {
                    media_key: "k".into(),
                    bytes: 1234,
                    title: Some("A talk".into()),
                },
                at: 1_709_296_497_250,
            },
            Event::StepStarted {
                step: Step::Transcribe,
                attempt: 1,
                at: 1_709_296_497_300,
                node: None,
            },
            Event::StepFailed {
                step: Step::Transcribe,
                attempt: 1,
                reason: Reason::new("engine.runtime", "boom"),
                retry_at: Some(1_709_296_498_000),
                at: 1_709_296_497_400,
            },
            Event::StepStarted {
                step: Step::Transcribe,
                attempt: 2,
                at: 1_709_296_498_000,
                node: None,
            },
            Event::StepSucceeded {
                step: Step::Transcribe,
                output: StepOutput::Transcribed {
                    transcript_key: "jobs/x/transcript.json".into(),
                    duration_s: 12.5,
                    language: "en".into(),
                    engine_ms: 900,
                    segments: 3,
                    chunks: Vec::new(),
                },
                at: 1_709_296_499_000,
            },
            Event::Completed {
                at: 1_709_296_500_000,
            },
        ];
        for event in &events {
            job.apply(event);
        }
        let view = job_view(&job, Some(50.0), "https://yt.example.com");
        assert_eq!(view["state"], "completed");
        assert_eq!(view["progress"], 100.0);
        assert_eq!(view["finished_at"], "2024-03-01T12:35:00.000Z");
        assert_eq!(view["attempts"], json!({"download": 1, "transcribe": 2}));
        assert_eq!(
            view["timings_ms"],
            json!({"download": 250, "transcribe": 1000})
        );
        assert_eq!(view["error"], Value::Null);
        assert_eq!(view["duration_s"], 12.5);
        assert_eq!(view["language"], "en");
        assert_eq!(
            view["source"],
            json!({"kind": "upload", "filename": "talk.wav", "bytes": 1234, "title": "A talk"})
        );
        let srt = view["links"]["transcript"]["srt"].as_str().unwrap();
        assert_eq!(
            srt,
            format!(
                "https://yt.example.com/v1/jobs/{}/transcript?format=srt",
                job.id
            )
        );
        assert_eq!(view["links"]["transcript"].as_object().unwrap().len(), 4);
    }

    #[test]
    fn a_failed_job_shows_its_reason() {
        let mut job = job(Source::Url {
            url: "https://example.com/a.mp3".into(),
        });
        job.apply(&Event::Failed {
            reason: Reason::new("download.http_status", "HTTP 404"),
            at: 1_709_296_500_000,
        });
        let view = job_view(&job, None, "http://h");
        assert_eq!(view["state"], "failed");
        assert_eq!(view["progress"], Value::Null);
        assert_eq!(
            view["error"],
            json!({"code": "download.http_status", "message": "HTTP 404"})
        );
    }

    #[test]
    fn progress_is_monotonic_along_the_saga() {
        let mut last = -1.0;
        let steps = [
            (Stage::Accepted, None),
            (Stage::Downloading, None),
            (Stage::Transcribing, None),
            (Stage::Transcribing, Some(50.0)),
            (Stage::Transcribing, Some(100.0)),
            (Stage::Storing, None),
            (Stage::Notifying, None),
            (Stage::Completed, None),
        ];
        for (stage, step) in steps {
            let percent = overall_progress(stage, step).unwrap();
            assert!(percent > last, "{stage:?} {step:?}: {percent} after {last}");
            last = percent;
        }
        assert_eq!(
            overall_progress(Stage::Transcribing, Some(50.0)),
            Some(50.0)
        );
        assert_eq!(
            overall_progress(Stage::Transcribing, Some(500.0)),
            Some(90.0)
        );
        assert_eq!(overall_progress(Stage::Cancelled, None), None);
    }
}
