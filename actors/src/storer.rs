//! The Storage worker: runs the store step (renders the requested formats from the JSON
//! transcript and stores each; drops the media unless it is kept) and purges a job's blobs on
//! cancel, retention and `DELETE`.

use std::collections::BTreeMap;

use ractor::ActorCell;
use ytcaption_protocol::job::{job_prefix, transcript_key};
use ytcaption_protocol::wire::{StepFailure, StepReply, StepRequest};
use ytcaption_protocol::{Format, JobId, Step, StepOutput, Transcript};

use crate::storage::{Storage, StorageError};
use crate::worker::{Outcome, Work};

/// The process group of Storage workers.
pub const ROLE: &str = "storage";

/// The largest JSON transcript read back (a 10-hour file with words is ~30 MB).
const MAX_TRANSCRIPT_BYTES: u64 = 256 << 20;

#[derive(Debug)]
pub struct StoreWork {
    pub storage: Storage,
    /// Keep the media after transcription (otherwise it is deleted by the store step).
    pub keep_media: bool,
}

fn failure(error: &StorageError) -> StepFailure {
    error.step_failure()
}

impl StoreWork {
    async fn store(&self, request: &StepRequest) -> Result<StepOutput, StepFailure> {
        let Some(StepOutput::Transcribed {
            transcript_key: json_key,
            ..
        }) = request.input(Step::Transcribe)
        else {
            return Err(StepFailure::permanent(
                "saga.missing_input",
                "store ran before transcribe",
            ));
        };
        let json = self
            .storage
            .get_bytes(json_key, MAX_TRANSCRIPT_BYTES)
            .await
            .map_err(|error| failure(&error))?;
        let transcript: Transcript = serde_json::from_slice(&json).map_err(|error| {
            StepFailure::permanent("storage.corrupt_transcript", error.to_string())
        })?;
        let mut formats = BTreeMap::new();
        formats.insert(Format::Json, json_key.clone());
        for format in &request.spec.formats {
            if *format == Format::Json {
                continue;
            }
            let key = transcript_key(&request.job_id, *format);
            self.storage
                .put_bytes(
                    &key,
                    format.render(&transcript).into_bytes(),
                    format.content_type(),
                )
                .await
                .map_err(|error| failure(&error))?;
            formats.insert(*format, key);
        }
        if !self.keep_media {
            if let Some(StepOutput::Downloaded { media_key, .. }) = request.input(Step::Download) {
                self.storage
                    .delete(media_key)
                    .await
                    .map_err(|error| failure(&error))?;
            }
        }
        Ok(StepOutput::Stored { formats })
    }
}

impl Work for StoreWork {
    const ROLE: &'static str = ROLE;

    async fn run(&self, request: StepRequest, _me: ActorCell) -> Outcome {
        let result = self.store(&request).await;
        let dependency_down = match &result {
            Err(failure) if failure.retryable => Some(failure.reason.to_string()),
            _ => None,
        };
        Outcome {
            reply: StepReply {
                job_id: request.job_id.clone(),
                step: Step::Store,
                result,
                deliveries: Vec::new(),
            },
            dependency_down,
        }
    }

    async fn purge(&self, job: JobId) -> Result<u64, String> {
        self.storage
            .delete_prefix(&job_prefix(&job))
            .await
            .map_err(|error| error.to_string())
    }
}
