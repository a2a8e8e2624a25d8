//! The Transcriber: owns the process's one loaded [`Engine`] and runs transcriptions on it.
//!
//! For now a plain struct shared behind an `Arc`; the actor wrapper (mailbox, pool,
//! supervision) arrives with the node. Transcription is blocking CPU work: callers on an async
//! runtime must run it on a blocking thread.

use std::path::Path;
use std::sync::Arc;

use ytcaption_protocol::Transcript;

use crate::engine::audio::AudioSource;
use crate::engine::{Engine, EngineError, Progress, Stats, TranscribeOptions};

/// A handle to a loaded engine; cheap to clone.
#[derive(Debug, Clone)]
pub struct Transcriber {
    engine: Arc<Engine>,
}

impl Transcriber {
    pub fn new(engine: Engine) -> Self {
        Transcriber {
            engine: Arc::new(engine),
        }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Decodes and transcribes a media file.
    pub fn transcribe_file(
        &self,
        path: &Path,
        options: &TranscribeOptions,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(Transcript, Stats), EngineError> {
        let source = AudioSource::open(path)?;
        self.engine.transcribe(source, options, progress)
    }
}
