//! The job model: what a client asks for ([`JobSpec`]), the saga's durable [`Event`]s, and the
//! [`JobState`] folded from them.
//!
//! A job's state is never written directly: the JobManager appends events, and the state is
//! `events.fold(JobState::new, JobState::apply)`. The node keeps the folded state next to the
//! events only as a cache for reads; replaying the events always gives the same state.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Format;

/// A job's id: 12 hex digits of milliseconds since the epoch, then 12 random hex digits, so
/// ids sort by creation time (cursor pagination walks them in order) and never collide in
/// practice (48 random bits per millisecond).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(String);

impl JobId {
    pub const LEN: usize = 24;

    /// A fresh id for a job created at `now_ms`, with 48 bits of `random`.
    pub fn new(now_ms: u64, random: u64) -> JobId {
        JobId(format!(
            "{:012x}{:012x}",
            now_ms & 0xffff_ffff_ffff,
            random & 0xffff_ffff_ffff
        ))
    }

    /// Parses a client-supplied id; `None` unless it is exactly 24 lowercase hex digits, so a
    /// malformed id can be answered with 404 before it reaches storage keys or the database.
    pub fn parse(text: &str) -> Option<JobId> {
        let ok = text.len() == Self::LEN
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        ok.then(|| JobId(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The creation time encoded in the id.
    pub fn created_ms(&self) -> u64 {
        u64::from_str_radix(&self.0[..12], 16).unwrap_or(0)
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a job's media comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A direct media URL or a page yt-dlp understands (YouTube and others).
    Url { url: String },
    /// A file uploaded with the request, already in storage under `key`.
    Upload {
        key: String,
        filename: String,
        bytes: u64,
    },
}

/// Transcribe in the spoken language, or translate into English.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    #[default]
    Transcribe,
    Translate,
}

impl Task {
    pub fn as_str(self) -> &'static str {
        match self {
            Task::Transcribe => "transcribe",
            Task::Translate => "translate",
        }
    }
}

/// A task name other than `transcribe` or `translate`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown task {0:?}: expected transcribe or translate")]
pub struct UnknownTask(pub String);

impl std::str::FromStr for Task {
    type Err = UnknownTask;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "transcribe" => Ok(Task::Transcribe),
            "translate" => Ok(Task::Translate),
            other => Err(UnknownTask(other.to_owned())),
        }
    }
}

/// What a client asked for. Immutable once accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub source: Source,
    /// An ISO 639-1 code, or `None` to detect it.
    #[serde(default)]
    pub language: Option<String>,
    #[serde(default)]
    pub task: Task,
    /// A model name from the models directory, or `None` for the node's default.
    #[serde(default)]
    pub model: Option<String>,
    /// Formats stored when the job completes (any other is rendered on request).
    pub formats: Vec<Format>,
    #[serde(default)]
    pub webhook_url: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub prompt: Option<String>,
    #[serde(default = "yes")]
    pub word_timestamps: bool,
    /// The API key id that submitted the job (`anonymous` without keys).
    pub owner: String,
}

impl JobSpec {
    /// The notification channels the client asked for, in delivery order.
    pub fn channels(&self) -> Vec<Channel> {
        let mut out = Vec::new();
        if self.webhook_url.is_some() {
            out.push(Channel::Webhook);
        }
        if self.email.is_some() {
            out.push(Channel::Email);
        }
        out
    }
}

fn yes() -> bool {
    true
}

/// The saga's steps, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Download,
    Transcribe,
    Store,
    Notify,
}

impl Step {
    pub const ALL: [Step; 4] = [Step::Download, Step::Transcribe, Step::Store, Step::Notify];

    pub fn as_str(self) -> &'static str {
        match self {
            Step::Download => "download",
            Step::Transcribe => "transcribe",
            Step::Store => "store",
            Step::Notify => "notify",
        }
    }

    /// The stage a job is in while this step runs.
    pub fn stage(self) -> Stage {
        match self {
            Step::Download => Stage::Downloading,
            Step::Transcribe => Stage::Transcribing,
            Step::Store => Stage::Storing,
            Step::Notify => Stage::Notifying,
        }
    }

    fn next(self) -> Option<Step> {
        match self {
            Step::Download => Some(Step::Transcribe),
            Step::Transcribe => Some(Step::Store),
            Step::Store => Some(Step::Notify),
            Step::Notify => None,
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a job is: one of the saga's stages or a terminal state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Accepted,
    Downloading,
    Transcribing,
    Storing,
    Notifying,
    Completed,
    Failed,
    Cancelled,
}

impl Stage {
    pub const ALL: [Stage; 8] = [
        Stage::Accepted,
        Stage::Downloading,
        Stage::Transcribing,
        Stage::Storing,
        Stage::Notifying,
        Stage::Completed,
        Stage::Failed,
        Stage::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Accepted => "accepted",
            Stage::Downloading => "downloading",
            Stage::Transcribing => "transcribing",
            Stage::Storing => "storing",
            Stage::Notifying => "notifying",
            Stage::Completed => "completed",
            Stage::Failed => "failed",
            Stage::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|stage| stage.as_str() == text)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Stage::Completed | Stage::Failed | Stage::Cancelled)
    }
}

/// Why a step or a job failed: a stable machine-readable code (`download.http_status`,
/// `media.no_audio`, ...) and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    pub code: String,
    pub message: String,
}

impl Reason {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Reason {
        Reason {
            code: code.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// A notification channel of the notify step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Webhook,
    Email,
}

/// What a step produced; recorded in its success event so that a resumed saga never redoes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepOutput {
    Downloaded {
        media_key: String,
        bytes: u64,
        #[serde(default)]
        title: Option<String>,
    },
    Transcribed {
        transcript_key: String,
        duration_s: f64,
        language: String,
        engine_ms: u64,
        segments: u64,
        /// Long media split across the cluster: where each chunk was transcribed.
        #[serde(default)]
        chunks: Vec<ChunkRun>,
    },
    Stored {
        /// Format -> storage key.
        formats: BTreeMap<Format, String>,
    },
    Notified,
    /// One chunk of a long file, transcribed for the Transcriber that split it (never in a
    /// job's log): the transcript as JSON, timed from the chunk's start.
    Chunk {
        transcript_json: String,
    },
}

/// One chunk of a long file that was split across the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkRun {
    /// The node whose Transcriber transcribed it.
    pub node: String,
    /// The stretch it contributed, in seconds of the media.
    pub start_s: f64,
    pub end_s: f64,
    /// Milliseconds from handing it out to its transcript (media fetch included).
    pub ms: u64,
}

/// One durable fact about a job. Times are milliseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    Accepted {
        spec: JobSpec,
        at: u64,
    },
    StepStarted {
        step: Step,
        attempt: u32,
        at: u64,
        /// The node whose worker runs this attempt.
        #[serde(default)]
        node: Option<String>,
    },
    StepSucceeded {
        step: Step,
        output: StepOutput,
        at: u64,
    },
    /// An attempt failed; `retry_at` is when the next attempt may start, `None` when the
    /// failure is final (a `Failed` event follows).
    StepFailed {
        step: Step,
        attempt: u32,
        reason: Reason,
        retry_at: Option<u64>,
        at: u64,
    },
    /// One notification was delivered: after a crash it is never sent again.
    Delivered {
        channel: Channel,
        attempt: u32,
        at: u64,
    },
    /// One notification could not be delivered within its retry window.
    GaveUp {
        channel: Channel,
        reason: Reason,
        at: u64,
    },
    Failed {
        reason: Reason,
        at: u64,
    },
    CancelRequested {
        at: u64,
    },
    Cancelled {
        at: u64,
    },
    Completed {
        at: u64,
    },
    /// A client asked to run a failed or cancelled job again from its first unfinished step.
    RetryRequested {
        at: u64,
    },
    /// The job's data was removed (retention or `DELETE`); only this tombstone remains.
    Deleted {
        at: u64,
        why: String,
    },
    /// The output of `step` is gone (the node that held it was lost): run it again.
    Invalidated {
        step: Step,
        at: u64,
    },
    /// `node` drives the job from now on, with fencing token `epoch` (higher than any before):
    /// written at acceptance (epoch 1), at a takeover after the owner was lost, and at a
    /// hand-over (drain).
    Owner {
        node: String,
        epoch: u64,
        at: u64,
    },
}

impl Event {
    pub fn at(&self) -> u64 {
        match self {
            Event::Accepted { at, .. }
            | Event::StepStarted { at, .. }
            | Event::StepSucceeded { at, .. }
            | Event::StepFailed { at, .. }
            | Event::Delivered { at, .. }
            | Event::GaveUp { at, .. }
            | Event::Failed { at, .. }
            | Event::CancelRequested { at }
            | Event::Cancelled { at }
            | Event::Completed { at }
            | Event::RetryRequested { at }
            | Event::Deleted { at, .. }
            | Event::Owner { at, .. }
            | Event::Invalidated { at, .. } => *at,
        }
    }

    /// A short name for logs and the event stream.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Accepted { .. } => "accepted",
            Event::StepStarted { .. } => "step_started",
            Event::StepSucceeded { .. } => "step_succeeded",
            Event::StepFailed { .. } => "step_failed",
            Event::Delivered { .. } => "delivered",
            Event::GaveUp { .. } => "gave_up",
            Event::Failed { .. } => "failed",
            Event::CancelRequested { .. } => "cancel_requested",
            Event::Cancelled { .. } => "cancelled",
            Event::Completed { .. } => "completed",
            Event::RetryRequested { .. } => "retry_requested",
            Event::Deleted { .. } => "deleted",
            Event::Owner { .. } => "owner",
            Event::Invalidated { .. } => "invalidated",
        }
    }
}

/// The state of one job: the fold of its events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobState {
    pub id: JobId,
    pub spec: JobSpec,
    pub stage: Stage,
    pub created_at: u64,
    pub updated_at: u64,
    pub finished_at: Option<u64>,
    /// Attempts of each step in the current run (reset by a retry request).
    pub attempts: BTreeMap<Step, u32>,
    /// When the running step's current attempt started.
    pub step_started_at: Option<u64>,
    /// Milliseconds each completed step took (its successful attempt).
    pub timings: BTreeMap<Step, u64>,
    pub outputs: BTreeMap<Step, StepOutput>,
    /// The last step failure (while retrying) or the final one.
    pub error: Option<Reason>,
    pub next_retry_at: Option<u64>,
    pub delivered: Vec<Channel>,
    pub gave_up: Vec<Channel>,
    /// A step failed for good: the job tells its webhook and email, then ends `failed`.
    #[serde(default)]
    pub failing: Option<Reason>,
    pub cancel_requested: bool,
    pub deleted: bool,
    /// Number of events folded so far: the next event's sequence number.
    pub events: u64,
    /// The node that drives the job (`None`: a single node without a cluster).
    #[serde(default)]
    pub owner_node: Option<String>,
    /// The owner's fencing token: raised by every change of owner.
    #[serde(default)]
    pub epoch: u64,
    /// Where each step's latest attempt ran.
    #[serde(default)]
    pub ran_on: BTreeMap<Step, String>,
    /// The step whose attempt is running (started, no outcome yet).
    #[serde(default)]
    pub open_step: Option<Step>,
    /// Attempts lost to the cluster (a node died with the step or its input) rather than
    /// failed: they do not count against the step's attempt limit, up to [`MAX_LOST`].
    #[serde(default)]
    pub lost: u32,
    /// Of each step's attempts, those lost to the cluster (attempt numbers still only grow).
    #[serde(default)]
    pub forgiven: BTreeMap<Step, u32>,
}

/// Attempts a job may lose to node failures without counting them (then they count, so a
/// medium that kills nodes still ends).
pub const MAX_LOST: u32 = 10;

/// Failure codes of attempts lost to the cluster, not to the step itself. A worker's
/// `cluster.stale_epoch` refusal answers a request sent under an older owner: the job either
/// moved on to this node at a newer epoch (the step runs again under it) or to another node
/// (the driver learns it is fenced at its next append), never a reason to fail the job.
pub const LOST_CODES: [&str; 3] = ["step.worker_lost", "step.input_lost", "cluster.stale_epoch"];

impl JobState {
    /// Whether the job's blobs should go: cancelled (or being cancelled) or deleted.
    pub fn blobs_unwanted(&self) -> bool {
        self.cancel_requested || self.deleted || self.stage == Stage::Cancelled
    }

    /// The state after the `Accepted` event.
    pub fn new(id: JobId, spec: JobSpec, at: u64) -> JobState {
        JobState {
            id,
            spec,
            stage: Stage::Accepted,
            created_at: at,
            updated_at: at,
            finished_at: None,
            attempts: BTreeMap::new(),
            step_started_at: None,
            timings: BTreeMap::new(),
            outputs: BTreeMap::new(),
            error: None,
            next_retry_at: None,
            delivered: Vec::new(),
            gave_up: Vec::new(),
            failing: None,
            cancel_requested: false,
            deleted: false,
            events: 1,
            owner_node: None,
            epoch: 0,
            ran_on: BTreeMap::new(),
            open_step: None,
            lost: 0,
            forgiven: BTreeMap::new(),
        }
    }

    /// Gives back an attempt lost to the cluster (see [`MAX_LOST`]).
    fn forgive(&mut self, step: Step) {
        if self.lost < MAX_LOST {
            self.lost += 1;
            *self.forgiven.entry(step).or_insert(0) += 1;
        }
    }

    /// Attempts of `step` that count against its limit (the current run's, less the lost).
    pub fn counted_attempts(&self, step: Step) -> u32 {
        self.attempt(step)
            .saturating_sub(self.forgiven.get(&step).copied().unwrap_or(0))
    }

    /// Folds a whole log; `None` unless it starts with `Accepted`.
    pub fn replay(id: JobId, events: &[Event]) -> Option<JobState> {
        let (first, rest) = events.split_first()?;
        let Event::Accepted { spec, at } = first else {
            return None;
        };
        let mut state = JobState::new(id, spec.clone(), *at);
        for event in rest {
            state.apply(event);
        }
        Some(state)
    }

    /// Folds one more event into the state. Events that make no sense in the current state
    /// (a late step result after a cancel, say) change nothing but the event count, so a
    /// replay never fails.
    pub fn apply(&mut self, event: &Event) {
        self.events += 1;
        self.updated_at = self.updated_at.max(event.at());
        if self.deleted {
            return;
        }
        let terminal = self.stage.is_terminal();
        match event {
            Event::Accepted { .. } => {}
            Event::StepStarted {
                step,
                attempt,
                at,
                node,
            } if !terminal => {
                if let Some(node) = node {
                    self.ran_on.insert(*step, node.clone());
                }
                self.open_step = Some(*step);
                self.stage = step.stage();
                self.attempts.insert(*step, *attempt);
                self.step_started_at = Some(*at);
                self.next_retry_at = None;
            }
            Event::StepSucceeded { step, output, at } if !terminal => {
                self.open_step = None;
                if let Some(started) = self.step_started_at.take() {
                    self.timings.insert(*step, at.saturating_sub(started));
                }
                self.outputs.insert(*step, output.clone());
                self.error = None;
            }
            Event::StepFailed {
                step,
                reason,
                retry_at,
                ..
            } if !terminal => {
                self.open_step = None;
                if LOST_CODES.contains(&reason.code.as_str()) {
                    self.forgive(*step);
                }
                self.step_started_at = None;
                self.error = Some(reason.clone());
                self.next_retry_at = *retry_at;
                if retry_at.is_none() && self.failing.is_none() {
                    self.failing = Some(reason.clone());
                    self.stage = Stage::Notifying;
                }
            }
            Event::Delivered { channel, .. } if !self.delivered.contains(channel) => {
                self.delivered.push(*channel);
            }
            Event::GaveUp { channel, .. } if !self.gave_up.contains(channel) => {
                self.gave_up.push(*channel);
            }
            Event::Failed { reason, at } if !terminal => {
                self.stage = Stage::Failed;
                self.error = Some(reason.clone());
                self.finish(*at);
            }
            // Once the outcome is settled only the notifications remain: a cancel then would
            // remove the transcript they announce, or tell the receivers a second time.
            Event::CancelRequested { .. } if !terminal && !self.outcome_settled() => {
                self.cancel_requested = true;
            }
            Event::Cancelled { at } if !terminal => {
                self.stage = Stage::Cancelled;
                self.finish(*at);
            }
            Event::Completed { at } if !terminal => {
                self.stage = Stage::Completed;
                self.error = None;
                self.finish(*at);
            }
            Event::RetryRequested { .. }
                if matches!(self.stage, Stage::Failed | Stage::Cancelled) =>
            {
                // A new run: its notifications are new ones. A cancel removed everything the
                // job had stored, so a cancelled job starts again from the download.
                if self.stage == Stage::Cancelled {
                    self.outputs.clear();
                    self.timings.clear();
                }
                self.outputs.remove(&Step::Notify);
                self.delivered.clear();
                self.gave_up.clear();
                self.stage = self.resume_stage();
                self.attempts.clear();
                self.forgiven.clear();
                self.error = None;
                self.finished_at = None;
                self.failing = None;
                self.cancel_requested = false;
                self.next_retry_at = None;
            }
            Event::Deleted { at, .. } => {
                self.deleted = true;
                self.finished_at.get_or_insert(*at);
            }
            Event::Invalidated { step, .. } if !terminal => {
                self.outputs.remove(step);
                self.timings.remove(step);
                self.ran_on.remove(step);
            }
            Event::Owner { node, epoch, .. } if *epoch >= self.epoch => {
                // A new owner: the attempt running under the old one was lost with it.
                if *epoch > self.epoch && self.epoch > 0 && !terminal {
                    if let Some(step) = self.open_step.take() {
                        self.forgive(step);
                        self.step_started_at = None;
                    }
                }
                self.owner_node = Some(node.clone());
                self.epoch = *epoch;
            }
            _ => {}
        }
    }

    fn finish(&mut self, at: u64) {
        self.open_step = None;
        self.finished_at = Some(at);
        self.step_started_at = None;
        self.next_retry_at = None;
    }

    /// The stage shown for a job that will next run [`Self::next_step`].
    fn resume_stage(&self) -> Stage {
        if self.outputs.is_empty() {
            Stage::Accepted
        } else {
            self.next_step().map_or(Stage::Notifying, Step::stage)
        }
    }

    pub fn is_terminal(&self) -> bool {
        self.stage.is_terminal() || self.deleted
    }

    /// Whether the job's outcome is settled (its transcript stored, or a step failed for good)
    /// and only its notifications remain. A cancel is refused from then on.
    pub fn outcome_settled(&self) -> bool {
        self.failing.is_some() || self.outputs.contains_key(&Step::Store)
    }

    /// True while a requested notification channel is neither delivered nor given up.
    pub fn notification_pending(&self) -> bool {
        self.spec
            .channels()
            .iter()
            .any(|channel| !self.delivered.contains(channel) && !self.gave_up.contains(channel))
    }

    /// The first step without a recorded output: where the saga resumes.
    pub fn next_step(&self) -> Option<Step> {
        let mut step = Some(Step::Download);
        while let Some(current) = step {
            if !self.outputs.contains_key(&current) {
                return Some(current);
            }
            step = current.next();
        }
        None
    }

    /// The current attempt number of `step` (0 before its first attempt).
    pub fn attempt(&self, step: Step) -> u32 {
        self.attempts.get(&step).copied().unwrap_or(0)
    }

    /// The storage key of the media, once downloaded.
    pub fn media_key(&self) -> Option<&str> {
        match self.outputs.get(&Step::Download) {
            Some(StepOutput::Downloaded { media_key, .. }) => Some(media_key),
            _ => None,
        }
    }

    /// The storage key of the JSON transcript, once transcribed.
    pub fn transcript_key(&self) -> Option<&str> {
        match self.outputs.get(&Step::Transcribe) {
            Some(StepOutput::Transcribed { transcript_key, .. }) => Some(transcript_key),
            _ => None,
        }
    }

    /// The audio duration, once transcribed.
    pub fn duration_s(&self) -> Option<f64> {
        match self.outputs.get(&Step::Transcribe) {
            Some(StepOutput::Transcribed { duration_s, .. }) => Some(*duration_s),
            _ => None,
        }
    }

    /// The stored formats and their keys, once stored.
    pub fn stored_formats(&self) -> Option<&BTreeMap<Format, String>> {
        match self.outputs.get(&Step::Store) {
            Some(StepOutput::Stored { formats }) => Some(formats),
            _ => None,
        }
    }
}

/// Storage keys of a job's blobs. Everything a job stores lives under [`job_prefix`], so
/// deleting a job is one prefix delete.
pub fn job_prefix(id: &JobId) -> String {
    format!("jobs/{id}/")
}

pub fn media_key(id: &JobId) -> String {
    format!("jobs/{id}/media")
}

pub fn transcript_key(id: &JobId, format: Format) -> String {
    format!("jobs/{id}/transcript.{}", format.extension())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> JobSpec {
        JobSpec {
            source: Source::Url {
                url: "https://example.com/a.mp3".into(),
            },
            language: None,
            task: Task::Transcribe,
            model: None,
            formats: vec![Format::Srt],
            webhook_url: None,
            email: None,
            prompt: None,
            word_timestamps: true,
            owner: "anonymous".into(),
        }
    }

    fn downloaded() -> StepOutput {
        StepOutput::Downloaded {
            media_key: "jobs/x/media".into(),
            bytes: 10,
            title: None,
        }
    }

    #[test]
    fn ids_sort_by_time_and_parse_strictly() {
        let a = JobId::new(1_000, 0xffff_ffff_ffff);
        let b = JobId::new(1_001, 0);
        assert!(a < b);
        assert_eq!(a.created_ms(), 1_000);
        assert_eq!(JobId::parse(a.as_str()), Some(a));
        assert_eq!(JobId::parse("../../etc/passwd"), None);
        assert_eq!(JobId::parse("00000000000A000000000000"), None);
        assert_eq!(JobId::parse(""), None);
    }

    #[test]
    fn the_fold_walks_the_saga_and_resumes_at_the_first_missing_output() {
        let mut state = JobState::new(JobId::new(1, 2), spec(), 10);
        assert_eq!(state.next_step(), Some(Step::Download));
        state.apply(&Event::StepStarted {
            step: Step::Download,
            attempt: 1,
            at: 20,
            node: None,
        });
        assert_eq!(state.stage, Stage::Downloading);
        state.apply(&Event::StepSucceeded {
            step: Step::Download,
            output: downloaded(),
            at: 50,
        });
        assert_eq!(state.timings[&Step::Download], 30);
        assert_eq!(state.next_step(), Some(Step::Transcribe));
        assert_eq!(state.media_key(), Some("jobs/x/media"));
        state.apply(&Event::StepFailed {
            step: Step::Transcribe,
            attempt: 1,
            reason: Reason::new("x.y", "boom"),
            retry_at: Some(99),
            at: 60,
        });
        assert_eq!(state.next_retry_at, Some(99));
        assert_eq!(state.error.as_ref().map(|r| r.code.as_str()), Some("x.y"));
        state.apply(&Event::Failed {
            reason: Reason::new("x.y", "boom"),
            at: 70,
        });
        assert!(state.is_terminal());
        // A late success after the terminal event changes nothing.
        state.apply(&Event::StepSucceeded {
            step: Step::Transcribe,
            output: StepOutput::Notified,
            at: 80,
        });
        assert_eq!(state.next_step(), Some(Step::Transcribe));
        state.apply(&Event::RetryRequested { at: 90 });
        assert_eq!(state.stage, Stage::Transcribing);
        assert!(!state.is_terminal());
        assert_eq!(state.attempt(Step::Transcribe), 0);
        assert_eq!(state.events, 7);
    }

    #[test]
    fn a_cancel_after_the_outcome_is_settled_changes_nothing() {
        let mut state = JobState::new(JobId::new(1, 2), spec(), 10);
        let mut running = state.clone();
        running.apply(&Event::CancelRequested { at: 11 });
        assert!(running.cancel_requested, "a running job takes a cancel");
        let mut stored = state.clone();
        for (step, output) in [
            (Step::Download, downloaded()),
            (
                Step::Store,
                StepOutput::Stored {
                    formats: BTreeMap::new(),
                },
            ),
        ] {
            stored.apply(&Event::StepSucceeded {
                step,
                output,
                at: 20,
            });
        }
        assert!(stored.outcome_settled());
        stored.apply(&Event::CancelRequested { at: 30 });
        assert!(!stored.cancel_requested, "the transcript is stored");
        state.apply(&Event::StepFailed {
            step: Step::Download,
            attempt: 1,
            reason: Reason::new("media.unsupported", "not audio"),
            retry_at: None,
            at: 40,
        });
        assert!(state.outcome_settled());
        state.apply(&Event::CancelRequested { at: 50 });
        assert!(!state.cancel_requested, "the job is failing");
    }

    #[test]
    fn events_round_trip_through_json() {
        let event = Event::Accepted {
            spec: spec(),
            at: 5,
        };
        let text = serde_json::to_string(&event).unwrap();
        assert!(text.starts_with("{\"accepted\":"), "{text}");
        let back: Event = serde_json::from_str(&text).unwrap();
        assert_eq!(back, event);
    }
}
