//! The Downloader: runs the download step. A URL is fetched (directly, or through yt-dlp for
//! sites like YouTube) into a spool directory and put into storage under the job's media
//! key; an upload is already in storage and passes straight through.

use std::path::PathBuf;

use ractor::ActorCell;
use ytcaption_protocol::wire::{StepFailure, StepReply, StepRequest};
use ytcaption_protocol::{Reason, Source, Step, StepOutput};

use crate::download::{self, DownloadParams};
use crate::metrics::Metrics;
use crate::storage::Storage;
use crate::worker::{Outcome, Work};
use std::sync::Arc;

/// The process group of Downloader workers.
pub const ROLE: &str = "downloader";

#[derive(Debug)]
pub struct DownloadWork {
    pub params: DownloadParams,
    pub storage: Storage,
    pub metrics: Arc<Metrics>,
    /// Downloads land here before they go to storage.
    pub spool: PathBuf,
}

impl DownloadWork {
    async fn fetch(&self, request: &StepRequest, url: &str) -> Result<StepOutput, StepFailure> {
        let dir = self.spool.join(format!("{}.download", request.job_id));
        let result = self.fetch_into(request, url, &dir).await;
        // The spool copy is temporary whatever happened.
        let _ = tokio::fs::remove_dir_all(&dir).await;
        result
    }

    async fn fetch_into(
        &self,
        request: &StepRequest,
        url: &str,
        dir: &std::path::Path,
    ) -> Result<StepOutput, StepFailure> {
        tokio::fs::create_dir_all(dir).await.map_err(|error| {
            StepFailure::transient(
                "download.spool",
                format!("cannot create the spool directory: {error}"),
            )
        })?;
        let downloaded = download::download(url, &dir.join("media"), &self.params)
            .await
            .map_err(|error| StepFailure {
                reason: Reason::new(error.code(), error.to_string()),
                retryable: error.retryable(),
            })?;
        self.metrics.download_bytes.inc_by(downloaded.bytes);
        let key = ytcaption_protocol::job::media_key(&request.job_id);
        self.storage
            .put_file(&key, &downloaded.path)
            .await
            .map_err(|error| StepFailure {
                reason: Reason::new(error.code(), error.to_string()),
                retryable: error.retryable(),
            })?;
        Ok(StepOutput::Downloaded {
            media_key: key,
            bytes: downloaded.bytes,
            title: downloaded.title,
        })
    }
}

impl Work for DownloadWork {
    const ROLE: &'static str = ROLE;

    async fn run(&self, request: StepRequest, _me: ActorCell) -> Outcome {
        let result = match &request.spec.source {
            Source::Upload { key, bytes, .. } => Ok(StepOutput::Downloaded {
                media_key: key.clone(),
                bytes: *bytes,
                title: None,
            }),
            Source::Url { url } => self.fetch(&request, url).await,
        };
        let dependency_down = match &result {
            Err(failure) if failure.retryable && failure.reason.code.starts_with("storage.") => {
                Some(failure.reason.to_string())
            }
            _ => None,
        };
        Outcome {
            reply: StepReply {
                job_id: request.job_id.clone(),
                step: Step::Download,
                result,
                deliveries: Vec::new(),
            },
            dependency_down,
        }
    }
}
