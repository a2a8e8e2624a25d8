//! The Transcriber: runs the transcribe step on the Whisper [`Engine`].
//!
//! Models are loaded once per process and shared by every Transcriber worker ([`Engines`]);
//! a worker fetches the job's media from storage (or reads it in place from local storage),
//! transcribes it on a blocking thread, and stores the JSON transcript under the job's key.
//! The other formats are rendered from it by the Storage worker.
//!
//! Deadlines: the step stops itself at `max(min, duration * per_audio_second)` after it
//! started (the duration read from the file's header), and at the saga's deadline.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ractor::ActorCell;
use ytcaption_protocol::wire::{ChunkRange, StepFailure, StepReply, StepRequest};
use ytcaption_protocol::{Format, Step, StepOutput, Transcript};

use crate::engine::audio::{AudioSource, SAMPLE_RATE};
use crate::engine::model::find_runtime_library;
use crate::engine::{resolve_model, Engine, EngineError, Progress, Stats, TranscribeOptions};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::storage::{Storage, StorageError};
use crate::worker::{Outcome, Work};

/// The process group of Transcriber workers.
pub const ROLE: &str = "transcriber";

/// Loaded models, shared by all Transcriber workers of a process.
#[derive(Debug)]
pub struct Engines {
    models_dir: PathBuf,
    threads: usize,
    loaded: Mutex<HashMap<String, Arc<Engine>>>,
}

impl Engines {
    pub fn new(models_dir: PathBuf, threads: usize) -> Engines {
        Engines {
            models_dir,
            threads,
            loaded: Mutex::new(HashMap::new()),
        }
    }

    pub fn models_dir(&self) -> &Path {
        &self.models_dir
    }

    /// True once `name` is loaded.
    pub fn is_loaded(&self, name: &str) -> bool {
        self.lock().contains_key(name)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Engine>>> {
        self.loaded.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The engine for a model name from the models directory, loading it on first use.
    /// Blocking: call from a blocking thread.
    pub fn get(&self, name: &str) -> Result<Arc<Engine>, EngineError> {
        if let Some(engine) = self.lock().get(name) {
            return Ok(engine.clone());
        }
        if !valid_model_name(name) {
            return Err(EngineError::InvalidOption(format!(
                "invalid model name {name:?}: use a name from `ytcaption model list`"
            )));
        }
        let dir = resolve_model(name, &self.models_dir)?;
        let runtime = find_runtime_library(&self.models_dir)?;
        let engine = Arc::new(Engine::load(&dir, &runtime, self.threads)?);
        // Two workers may load the same model at once; keep the first.
        Ok(self.lock().entry(name.to_owned()).or_insert(engine).clone())
    }
}

/// A model name as clients may give it: never a path.
pub fn valid_model_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// The Transcriber's settings.
#[derive(Debug, Clone)]
pub struct TranscriberParams {
    pub default_model: String,
    pub batch_size: usize,
    pub per_audio_second: f64,
    pub min_timeout: Duration,
    pub max_duration: Duration,
    /// Where media fetched from remote storage is kept during a step.
    pub spool: PathBuf,
    /// Long media is split across the cluster (see [`crate::split`]).
    pub split: crate::split::SplitParams,
}

/// The transcribe step.
#[derive(Debug)]
pub struct TranscribeWork {
    pub engines: Arc<Engines>,
    /// Where idle Transcribers for the chunks of a long file are found.
    pub placement: Arc<crate::saga::Placement>,
    pub storage: Storage,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    pub params: TranscriberParams,
}

fn reply(request: &StepRequest, result: Result<StepOutput, StepFailure>) -> StepReply {
    StepReply {
        job_id: request.job_id.clone(),
        step: Step::Transcribe,
        result,
        deliveries: Vec::new(),
    }
}

/// A failure's reason code and retryability, from an engine error. Paths of temp files are
/// not the client's business: messages name "the media" instead.
pub(crate) fn engine_failure(error: &EngineError, media: &Path) -> StepFailure {
    let message = error
        .to_string()
        .replace(&media.display().to_string(), "the media");
    match error {
        EngineError::Audio(audio) => StepFailure {
            reason: ytcaption_protocol::Reason::new(audio.code(), message),
            retryable: audio.retryable(),
        },
        EngineError::NoAudio => StepFailure::permanent("media.no_samples", message),
        EngineError::InvalidOption(_) => StepFailure::permanent("request.invalid_option", message),
        EngineError::ModelNotFound { .. } | EngineError::ModelFile { .. } => {
            StepFailure::permanent("model.not_found", message)
        }
        EngineError::RuntimeMissing(_) => StepFailure::transient("engine.runtime_missing", message),
        EngineError::Runtime(_) => StepFailure::transient("engine.runtime", message),
        EngineError::Cancelled => {
            StepFailure::transient("step.timeout", "transcription ran past its deadline")
        }
    }
}

impl TranscribeWork {
    /// The media as a local file: in place for local storage (fetched from a peer first when
    /// another node stored it), else fetched into the spool. The second value is a temp copy
    /// to remove afterwards.
    async fn local_media(
        &self,
        request: &StepRequest,
    ) -> Result<(PathBuf, Option<PathBuf>), StepFailure> {
        let Some(StepOutput::Downloaded { media_key, .. }) = request.input(Step::Download) else {
            return Err(StepFailure::permanent(
                "saga.missing_input",
                "transcribe ran before download",
            ));
        };
        let present = self
            .storage
            .ensure_local(media_key)
            .await
            .map_err(|error| error.step_failure())?;
        if !present {
            return Err(StorageError::NotFound(media_key.to_string()).step_failure());
        }
        if let Some(path) = self.storage.local_path(media_key) {
            return Ok((path, None));
        }
        // Chunks of one job may run side by side on one node: one spool file each.
        let name = match request.chunk {
            Some(chunk) => format!("{}.{}.media", request.job_id, chunk.index),
            None => format!("{}.media", request.job_id),
        };
        let dest = self.params.spool.join(name);
        self.storage
            .get_to_file(media_key, &dest)
            .await
            .map_err(|error| error.step_failure())?;
        Ok((dest.clone(), Some(dest)))
    }

    async fn transcribe(
        &self,
        request: &StepRequest,
        me: ActorCell,
    ) -> Result<StepOutput, StepFailure> {
        let (media, temp) = self.local_media(request).await?;
        let result = match request.chunk {
            Some(chunk) => self.transcribe_chunk(request, &media, chunk).await,
            None => self.transcribe_whole(request, &media, me).await,
        };
        if let Some(temp) = temp {
            let _ = tokio::fs::remove_file(temp).await;
        }
        result
    }

    /// One chunk of a long file, for the Transcriber that split it.
    async fn transcribe_chunk(
        &self,
        request: &StepRequest,
        media: &Path,
        chunk: ChunkRange,
    ) -> Result<StepOutput, StepFailure> {
        let (transcript, _) = self.transcribe_local(request, media, Some(chunk)).await?;
        let transcript_json = serde_json::to_string(&transcript).map_err(|error| {
            StepFailure::transient("engine.output", format!("transcript to JSON: {error}"))
        })?;
        Ok(StepOutput::Chunk { transcript_json })
    }

    /// The whole file: here, or split into chunks across the cluster when it is long and
    /// another Transcriber exists.
    async fn transcribe_whole(
        &self,
        request: &StepRequest,
        media: &Path,
        me: ActorCell,
    ) -> Result<StepOutput, StepFailure> {
        let started = Instant::now();
        let split = crate::split::plan(self, request, media).await?;
        let (transcript, engine_seconds, chunks) = match split {
            Some(plan) => {
                let (transcript, chunks) =
                    crate::split::run(self, request, media, me, plan).await?;
                (transcript, started.elapsed().as_secs_f64(), chunks)
            }
            None => {
                let (transcript, stats) = self.transcribe_local(request, media, None).await?;
                (transcript, stats.total_seconds, Vec::new())
            }
        };
        let key = ytcaption_protocol::job::transcript_key(&request.job_id, Format::Json);
        let body = Format::Json.render(&transcript).into_bytes();
        self.storage
            .put_bytes(&key, body, Format::Json.content_type())
            .await
            .map_err(|error| error.step_failure())?;
        if transcript.duration > 0.0 {
            self.metrics
                .realtime_factor
                .observe(engine_seconds / transcript.duration);
            self.metrics
                .audio_seconds
                .inc_by(transcript.duration as u64);
        }
        Ok(StepOutput::Transcribed {
            transcript_key: key,
            duration_s: transcript.duration,
            language: transcript.language.clone(),
            engine_ms: (engine_seconds * 1000.0) as u64,
            segments: transcript.segments.len() as u64,
            chunks,
        })
    }

    /// Transcribes `media` (only `chunk` of it, if given) on this node, on a blocking thread.
    /// Progress is published for whole files only.
    pub(crate) async fn transcribe_local(
        &self,
        request: &StepRequest,
        media: &Path,
        chunk: Option<ChunkRange>,
    ) -> Result<(Transcript, Stats), StepFailure> {
        let spec = &request.spec;
        let model = spec
            .model
            .clone()
            .unwrap_or_else(|| self.params.default_model.clone());
        let cancel = Arc::new(AtomicBool::new(false));
        let options = TranscribeOptions {
            language: spec.language.clone(),
            task: spec.task,
            initial_prompt: spec.prompt.clone(),
            word_timestamps: spec.word_timestamps,
            batch_size: self.params.batch_size,
            cancel: Some(cancel.clone()),
            ..TranscribeOptions::default()
        };
        let engines = self.engines.clone();
        let hub = self.hub.clone();
        let id = request.job_id.clone();
        let media_path = media.to_path_buf();
        let media = media.to_path_buf();
        let params = self.params.clone();
        let saga_deadline = request.deadline_ms;
        let task = tokio::task::spawn_blocking(move || {
            let engine = engines.get(&model)?;
            let mut source = AudioSource::open(&media)?;
            if let Some(seconds) = source.duration_hint() {
                if seconds > params.max_duration.as_secs_f64() {
                    return Err(EngineError::InvalidOption(format!(
                        "the media lasts {:.0} s, longer than this node's limit of {} s",
                        seconds,
                        params.max_duration.as_secs()
                    )));
                }
            }
            if let Some(chunk) = chunk {
                // Ranges come from peers: no overflow on absurd ones (they clip to nothing).
                let sample = |ms: u64| (ms.saturating_mul(u64::from(SAMPLE_RATE)) / 1000) as usize;
                source = source.clip(sample(chunk.start_ms), sample(chunk.end_ms))?;
            }
            let started = Instant::now();
            let limit = source.duration_hint().map(|seconds| {
                params
                    .min_timeout
                    .max(Duration::from_secs_f64(seconds * params.per_audio_second))
            });
            let mut report = |progress: Progress| {
                if let Some(total) = progress.total.filter(|total| *total > 0.0) {
                    if chunk.is_none() {
                        hub.publish_progress(&id, (progress.done / total * 100.0) as f32);
                    }
                }
                let late = limit.is_some_and(|limit| started.elapsed() > limit)
                    || crate::saga::now_ms() > saga_deadline;
                if late {
                    cancel.store(true, Ordering::Relaxed);
                }
            };
            engine.transcribe(source, &options, &mut report)
        });
        match task.await {
            Ok(result) => result.map_err(|error| engine_failure(&error, &media_path)),
            Err(join) => Err(StepFailure::transient(
                "engine.panic",
                format!("the transcription thread failed: {join}"),
            )),
        }
    }
}

impl Work for TranscribeWork {
    const ROLE: &'static str = ROLE;

    async fn run(&self, request: StepRequest, me: ActorCell) -> Outcome {
        let result = self.transcribe(&request, me).await;
        let dependency_down = match &result {
            Err(failure) if failure.retryable && failure.reason.code.starts_with("storage.") => {
                Some(failure.reason.to_string())
            }
            _ => None,
        };
        Outcome {
            reply: reply(&request, result),
            dependency_down,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_are_names_not_paths() {
        assert!(valid_model_name("base"));
        assert!(valid_model_name("tiny.en-int8"));
        for bad in ["", "../base", "/etc", ".hidden", "a/b", "a b"] {
            assert!(!valid_model_name(bad), "{bad}");
        }
    }
}
