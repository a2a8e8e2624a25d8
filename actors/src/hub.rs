//! Live job updates for watchers (the `/events` stream, `--wait` clients, the synchronous
//! OpenAI-compatible endpoints): every durable state change and the transcriber's progress.
//!
//! Nothing here is durable or needed for correctness: a watcher that lags behind is told so
//! and re-reads the state from the job log.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::broadcast;
use ytcaption_protocol::{JobId, JobState};

/// Updates buffered per watcher before it counts as lagging.
const CHANNEL_CAPACITY: usize = 64;

/// One update about a job.
#[derive(Debug, Clone)]
pub enum Update {
    /// The job's state after a durable event.
    State(Arc<JobState>),
    /// Progress of the running step, 0..=100.
    Progress { percent: f32 },
}

/// Per-job broadcast channels, created when someone watches, dropped when nobody does.
#[derive(Debug, Default)]
pub struct Hub {
    channels: Mutex<HashMap<JobId, broadcast::Sender<Update>>>,
    progress: Mutex<HashMap<JobId, f32>>,
}

impl Hub {
    /// Watches a job's updates from now on.
    pub fn subscribe(&self, id: &JobId) -> broadcast::Receiver<Update> {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        channels
            .entry(id.clone())
            .or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0)
            .subscribe()
    }

    fn send(&self, id: &JobId, update: Update) {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(sender) = channels.get(id) {
            if sender.send(update).is_err() {
                channels.remove(id);
            }
        }
    }

    /// Called by the job log after each durable change.
    pub fn publish_state(&self, state: JobState) {
        if state.is_terminal() {
            self.progress
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&state.id);
        }
        let id = state.id.clone();
        self.send(&id, Update::State(Arc::new(state)));
    }

    /// Called by workers while a step runs.
    pub fn publish_progress(&self, id: &JobId, percent: f32) {
        let percent = percent.clamp(0.0, 100.0);
        self.progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.clone(), percent);
        self.send(id, Update::Progress { percent });
    }

    /// The last progress reported for a running job.
    pub fn progress(&self, id: &JobId) -> Option<f32> {
        self.progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .copied()
    }

    /// Number of jobs being watched (a gauge).
    pub fn watched(&self) -> usize {
        self.channels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}
