//! The node's actor system in-process: a real job through the real saga (supervisor,
//! JobManager, workers, sled job log, local storage, the real model), then a restart on the
//! same data directory.

mod common;

use std::time::Duration;

use ytcaption_actors::hub::Update;
use ytcaption_actors::node::Node;
use ytcaption_config::Config;
use ytcaption_protocol::{Format, JobSpec, JobState, Source, Stage, Task};

fn config(data: &std::path::Path) -> Config {
    let mut config = Config::default();
    config.data_dir = Some(data.to_path_buf());
    // The models `make model` installed, wherever this machine keeps them.
    let home = ytcaption_config::data_dir(None).unwrap();
    config.models_dir = Some(ytcaption_config::models_dir(None, &home));
    config.transcriber.model = "tiny.en".into();
    config.transcriber.preload = false;
    config.jobs.retry.base = Duration::from_millis(50);
    config.jobs.retry.cap = Duration::from_millis(200);
    config
}

fn spec(source: Source) -> JobSpec {
    JobSpec {
        source,
        language: None,
        task: Task::Transcribe,
        model: None,
        formats: vec![Format::Srt, Format::Txt],
        webhook_url: None,
        email: None,
        prompt: None,
        word_timestamps: true,
        owner: "anonymous".into(),
    }
}

async fn wait_terminal(node: &Node, job: &JobState) -> JobState {
    let mut updates = node.subscribe(&job.id);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let state = node.job(&job.id).unwrap().unwrap();
        if state.is_terminal() {
            return state;
        }
        match tokio::time::timeout_at(deadline, updates.recv()).await {
            Ok(Ok(Update::State(state))) if state.is_terminal() => return (*state).clone(),
            Ok(_) => {}
            Err(_) => panic!("job did not finish: {state:?}"),
        }
    }
}

async fn upload(node: &Node, name: &str) -> JobState {
    let id = node.new_job_id();
    let key = ytcaption_protocol::job::media_key(&id);
    let path = common::fixture(name);
    let info = node.storage().put_file(&key, &path).await.unwrap();
    let source = Source::Upload {
        key,
        filename: name.into(),
        bytes: info.size,
    };
    JobState::new(id, spec(source), ytcaption_actors::saga::now_ms())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uploaded_file_is_transcribed_stored_and_survives_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(config(data.path())).await.unwrap();
    let job = upload(&node, "weather_festival.wav").await;
    let submitted = node
        .submit(job.clone(), Some("key-1".into()))
        .await
        .unwrap();
    assert!(submitted.created);
    // The same idempotency key returns the same job.
    let again = node
        .submit(
            upload(&node, "weather_festival.wav").await,
            Some("key-1".into()),
        )
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!(again.state.id, job.id);

    let done = wait_terminal(&node, &job).await;
    assert_eq!(done.stage, Stage::Completed, "{done:?}");
    let text = String::from_utf8(node.transcript(&done, Format::Txt).await.unwrap()).unwrap();
    let expected = common::expected_text("weather_festival");
    let wer = common::wer(&expected, &text);
    assert!(wer < 0.15, "wer {wer}: {text}");
    let srt = String::from_utf8(node.transcript(&done, Format::Srt).await.unwrap()).unwrap();
    assert!(srt.starts_with("1\n00:00:"), "{srt}");
    // VTT was not stored, but renders from the JSON transcript.
    let vtt = String::from_utf8(node.transcript(&done, Format::Vtt).await.unwrap()).unwrap();
    assert!(vtt.starts_with("WEBVTT"), "{vtt}");
    // The media is gone after transcription; the transcripts stay.
    let key = ytcaption_protocol::job::media_key(&job.id);
    assert!(!node.storage().exists(&key).await.unwrap());
    let events = node.events(&job.id).unwrap();
    let names: Vec<&str> = events.iter().map(|event| event.name()).collect();
    assert_eq!(names.first(), Some(&"accepted"));
    assert_eq!(names.last(), Some(&"completed"));

    node.shutdown(Duration::from_secs(5)).await;
    drop(node);
    tokio::time::sleep(Duration::from_millis(300)).await;
}
