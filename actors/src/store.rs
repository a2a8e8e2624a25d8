//! The job log: every saga event, appended to sled and flushed to disk before anyone is told
//! it happened.
//!
//! # Layout (one sled tree, so one batch is atomic)
//! - `e/<job id>/<seq: u64 BE>` -> one [`Event`] (JSON)
//! - `j/<job id>` -> the [`JobState`] folded from those events (JSON): a cache for reads
//! - `i/<owner>\0<idempotency key>` -> the job id and when the key was first used
//!
//! # Group commit
//! One writer thread owns every write. It takes all waiting requests (up to
//! [`MAX_BATCH`]), folds their events into the states, writes them in one atomic batch, calls
//! `flush` (fsync) once, and only then answers each request and publishes the new states. A
//! caller that gets `Ok` knows its event survives `kill -9`; a thousand concurrent
//! submissions cost a handful of fsyncs, not a thousand.

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread;

use tokio::sync::oneshot;
use ytcaption_protocol::cluster::{Replicate, ReplicateAnswer};
use ytcaption_protocol::{Event, JobId, JobState, Stage};

use crate::hub::Hub;
use crate::metrics::Metrics;

/// Requests folded into one batch and one fsync at most.
pub const MAX_BATCH: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("job database error: {0}")]
    Db(#[from] sled::Error),
    #[error("job database holds an unreadable record {key}: {error}")]
    Corrupt { key: String, error: String },
    #[error("no such job")]
    NotFound,
    #[error("the job log is busy: too many writes waiting")]
    Busy,
    #[error("the job log is shut down")]
    Closed,
    /// Another node owns the job now (a higher epoch): this node must stop driving it.
    #[error("node {owner} owns this job now (epoch {epoch})")]
    Fenced { owner: String, epoch: u64 },
    /// The cluster has other live nodes but none took a copy of the job.
    #[error("no other node took a copy of the job: {0}")]
    Unreplicated(String),
}

/// Copies each durable change of a job this node owns to other nodes (the cluster).
pub trait Replicator: Send + Sync + std::fmt::Debug {
    /// Called after `state` is on this node's disk; `tombstone` when its events were dropped.
    /// With `insist`, keeps trying while live peers exist (a change the owner acts on next);
    /// without, answers `Unreplicated` at once (a submission the client can retry).
    fn replicate<'a>(
        &'a self,
        state: &'a JobState,
        tombstone: Option<&'a Event>,
        insist: bool,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StoreError>> + Send + 'a>>;
}

/// The answer to a submission.
#[derive(Debug, Clone)]
pub struct Submitted {
    pub state: JobState,
    /// False when the idempotency key matched an earlier job, returned instead.
    pub created: bool,
}

enum Op {
    Submit {
        state: Box<JobState>,
        spec_event: Box<Event>,
        idempotency: Option<(String, String)>,
        idempotency_ttl_ms: u64,
        reply: oneshot::Sender<Result<Submitted, StoreError>>,
    },
    Append {
        id: JobId,
        events: Vec<Event>,
        reply: oneshot::Sender<Result<JobState, StoreError>>,
    },
    /// Stop after flushing what came before; answered once the writer let go of the database.
    Shutdown(oneshot::Sender<()>),
    /// A copy of a job owned elsewhere (see [`Store::adopt`]).
    Adopt {
        copy: Box<Replicate>,
        reply: oneshot::Sender<Result<ReplicateAnswer, StoreError>>,
    },
    /// Drops a job's events and leaves its state, with the tombstone folded in.
    Tombstone {
        id: JobId,
        event: Event,
        reply: oneshot::Sender<Result<JobState, StoreError>>,
    },
}

/// A handle to the job log; cheap to clone.
#[derive(Clone)]
pub struct Store {
    tree: sled::Tree,
    db: sled::Db,
    writer: SyncSender<Op>,
    active: Arc<ActiveByOwner>,
    replicator: Arc<std::sync::OnceLock<Arc<dyn Replicator>>>,
}

/// Unfinished jobs per owner (for the concurrent-job quota), kept by the writer as states
/// change so that checking a quota never scans the log.
#[derive(Debug, Default)]
struct ActiveByOwner(std::sync::Mutex<HashMap<String, usize>>);

impl ActiveByOwner {
    fn change(&self, owner: &str, was_active: bool, is_active: bool) {
        if was_active == is_active {
            return;
        }
        let mut counts = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = counts.entry(owner.to_owned()).or_default();
        if is_active {
            *count += 1;
        } else {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(owner);
            }
        }
    }

    fn get(&self, owner: &str) -> usize {
        let counts = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        counts.get(owner).copied().unwrap_or(0)
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

/// A page of a job listing.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub owner: Option<String>,
    pub stage: Option<Stage>,
    /// Return jobs older than this id (ids sort by creation time; newest first).
    pub before: Option<JobId>,
    pub limit: usize,
}

impl Store {
    /// Opens (or creates) the log at `dir`. `queue` bounds the writes waiting for the writer.
    pub fn open(
        dir: &Path,
        queue: usize,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
    ) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(16 << 20)
            .mode(sled::Mode::HighThroughput)
            .open()?;
        let tree = db.open_tree("jobs")?;
        let active = Arc::new(ActiveByOwner::default());
        for entry in tree.scan_prefix(b"j/") {
            let (key, value) = entry?;
            let state: JobState = decode(&key, &value)?;
            metrics.transition(None, visible_stage(&state));
            active.change(&state.spec.owner, false, !state.is_terminal());
        }
        let (writer, requests) = mpsc::sync_channel(queue.max(1));
        let thread_tree = tree.clone();
        let thread_db = db.clone();
        let observers = Observers {
            hub,
            metrics,
            active: active.clone(),
        };
        thread::Builder::new()
            .name("job-log".into())
            .spawn(move || write_loop(thread_db, thread_tree, requests, observers))
            .map_err(sled::Error::Io)?;
        Ok(Store {
            tree,
            db,
            writer,
            active,
            replicator: Arc::default(),
        })
    }

    /// Sets who copies every later change to other nodes (once; the cluster, at start).
    pub fn set_replicator(&self, replicator: Arc<dyn Replicator>) {
        let _ = self.replicator.set(replicator);
    }

    async fn replicate(
        &self,
        state: &JobState,
        tombstone: Option<&Event>,
        insist: bool,
    ) -> Result<(), StoreError> {
        match self.replicator.get() {
            Some(replicator) => replicator.replicate(state, tombstone, insist).await,
            None => Ok(()),
        }
    }

    /// After a change that is already durable here: a fenced owner must stop; a copy that
    /// reached no peer is logged, and the next change sends the whole log again.
    async fn replicate_after_write(
        &self,
        state: &JobState,
        tombstone: Option<&Event>,
    ) -> Result<(), StoreError> {
        match self.replicate(state, tombstone, true).await {
            Err(StoreError::Unreplicated(error)) => {
                tracing::warn!(job_id = %state.id, %error, "change not replicated yet");
                Ok(())
            }
            other => other,
        }
    }

    /// Keeps a copy of a job owned by another node, unless this node knows a newer owner.
    /// A copy with a higher epoch replaces the local one; one with the same epoch extends it.
    pub async fn adopt(&self, copy: Replicate) -> Result<ReplicateAnswer, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Op::Adopt {
            copy: Box::new(copy),
            reply,
        })?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    fn send(&self, op: Op) -> Result<(), StoreError> {
        self.writer.try_send(op).map_err(|error| match error {
            TrySendError::Full(_) => StoreError::Busy,
            TrySendError::Disconnected(_) => StoreError::Closed,
        })
    }

    /// Records a new job durably. With an idempotency key seen within `ttl_ms` for the same
    /// owner, returns the earlier job and records nothing.
    pub async fn submit(
        &self,
        state: JobState,
        idempotency: Option<(String, String)>,
        ttl_ms: u64,
    ) -> Result<Submitted, StoreError> {
        let (reply, answer) = oneshot::channel();
        let spec_event = Event::Accepted {
            spec: state.spec.clone(),
            at: state.created_at,
        };
        self.send(Op::Submit {
            state: Box::new(state),
            spec_event: Box::new(spec_event),
            idempotency,
            idempotency_ttl_ms: ttl_ms,
            reply,
        })?;
        let submitted = answer.await.map_err(|_| StoreError::Closed)??;
        // Also for a repeated idempotency key: the first answer may have missed its replica.
        self.replicate(&submitted.state, None, false).await?;
        Ok(submitted)
    }

    /// Appends events to a job durably and returns the new state.
    pub async fn append(&self, id: &JobId, events: Vec<Event>) -> Result<JobState, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Op::Append {
            id: id.clone(),
            events,
            reply,
        })?;
        let state = answer.await.map_err(|_| StoreError::Closed)??;
        self.replicate_after_write(&state, None).await?;
        Ok(state)
    }

    /// Removes a job's event history, keeping only its state with `event` (a `Deleted`) folded in.
    pub async fn tombstone(&self, id: &JobId, event: Event) -> Result<JobState, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Op::Tombstone {
            id: id.clone(),
            event: event.clone(),
            reply,
        })?;
        let state = answer.await.map_err(|_| StoreError::Closed)??;
        self.replicate_after_write(&state, Some(&event)).await?;
        Ok(state)
    }

    pub fn get(&self, id: &JobId) -> Result<Option<JobState>, StoreError> {
        read_state(&self.tree, id)
    }

    /// A job's events in order.
    pub fn events(&self, id: &JobId) -> Result<Vec<Event>, StoreError> {
        let prefix = event_prefix(id);
        self.tree
            .scan_prefix(&prefix)
            .map(|entry| {
                let (key, value) = entry?;
                decode(&key, &value)
            })
            .collect()
    }

    /// Jobs newest first, filtered, at most `filter.limit`; the second value is the cursor of
    /// the next page.
    pub fn list(&self, filter: &ListFilter) -> Result<(Vec<JobState>, Option<JobId>), StoreError> {
        let end = match &filter.before {
            Some(id) => state_key(id),
            None => b"j0".to_vec(), // '0' follows '/': past every `j/` key
        };
        let mut jobs = Vec::new();
        for entry in self.tree.range(b"j/".to_vec()..end).rev() {
            let (key, value) = entry?;
            let state: JobState = decode(&key, &value)?;
            if state.deleted
                || filter
                    .owner
                    .as_ref()
                    .is_some_and(|owner| *owner != state.spec.owner)
                || filter.stage.is_some_and(|stage| stage != state.stage)
            {
                continue;
            }
            if jobs.len() == filter.limit {
                let cursor = jobs.last().map(|last: &JobState| last.id.clone());
                return Ok((jobs, cursor));
            }
            jobs.push(state);
        }
        Ok((jobs, None))
    }

    /// Unfinished jobs of `owner`, from a counter (no scan).
    pub fn active_jobs_of(&self, owner: &str) -> usize {
        self.active.get(owner)
    }

    /// Every job that is not finished: the ones to resume at start.
    pub fn unfinished(&self) -> Result<Vec<JobState>, StoreError> {
        self.all_states(|state| !state.is_terminal())
    }

    /// Every job matching `keep`.
    pub fn all_states(
        &self,
        keep: impl Fn(&JobState) -> bool,
    ) -> Result<Vec<JobState>, StoreError> {
        let mut out = Vec::new();
        for entry in self.tree.scan_prefix(b"j/") {
            let (key, value) = entry?;
            let state: JobState = decode(&key, &value)?;
            if keep(&state) {
                out.push(state);
            }
        }
        Ok(out)
    }

    /// Forgets idempotency keys older than `ttl_ms`; returns how many.
    pub fn expire_idempotency_keys(&self, now_ms: u64, ttl_ms: u64) -> Result<usize, StoreError> {
        let mut removed = 0;
        for entry in self.tree.scan_prefix(b"i/") {
            let (key, value) = entry?;
            let record: IdempotencyRecord = decode(&key, &value)?;
            if now_ms.saturating_sub(record.at) > ttl_ms {
                self.tree.remove(key)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Stops the writer after the writes already queued, and closes this handle. The database
    /// is released once every other clone is dropped too.
    pub async fn close(self) {
        let (reply, done) = oneshot::channel();
        if self.writer.send(Op::Shutdown(reply)).is_ok() {
            let _ = done.await;
        }
    }

    /// Flushes everything to disk (shutdown).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// True when the database answers (readiness).
    pub fn healthy(&self) -> bool {
        self.tree.get(b"health").is_ok()
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct IdempotencyRecord {
    job: JobId,
    at: u64,
}

fn event_prefix(id: &JobId) -> Vec<u8> {
    format!("e/{id}/").into_bytes()
}

fn event_key(id: &JobId, seq: u64) -> Vec<u8> {
    let mut key = event_prefix(id);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn state_key(id: &JobId) -> Vec<u8> {
    format!("j/{id}").into_bytes()
}

fn idempotency_key(owner: &str, key: &str) -> Vec<u8> {
    format!("i/{owner}\0{key}").into_bytes()
}

fn decode<T: serde::de::DeserializeOwned>(key: &[u8], value: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(value).map_err(|error| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        error: error.to_string(),
    })
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain data types cannot fail (no maps with non-string keys).
    serde_json::to_vec(value).unwrap_or_default()
}

fn read_state(tree: &sled::Tree, id: &JobId) -> Result<Option<JobState>, StoreError> {
    let key = state_key(id);
    tree.get(&key)?
        .map(|value| decode(&key, &value))
        .transpose()
}

/// What one batch will answer once it is on disk.
enum Answer {
    Submitted(
        oneshot::Sender<Result<Submitted, StoreError>>,
        Result<Submitted, StoreError>,
    ),
    State(
        oneshot::Sender<Result<JobState, StoreError>>,
        Result<JobState, StoreError>,
    ),
    Adopted(
        oneshot::Sender<Result<ReplicateAnswer, StoreError>>,
        Result<ReplicateAnswer, StoreError>,
    ),
    Closed(oneshot::Sender<()>),
}

/// The writer thread: batch, write, fsync, answer, publish; until every [`Store`] is dropped.
/// Who hears about each durable change.
struct Observers {
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    active: Arc<ActiveByOwner>,
}

fn write_loop(db: sled::Db, tree: sled::Tree, requests: Receiver<Op>, observers: Observers) {
    let mut stopped = None;
    while let Ok(first) = requests.recv() {
        let mut ops = vec![first];
        while ops.len() < MAX_BATCH {
            match requests.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        if let Some(index) = ops.iter().position(|op| matches!(op, Op::Shutdown(_))) {
            // Writes queued after the shutdown request are refused (their senders see Closed).
            ops.truncate(index + 1);
            if let Some(Op::Shutdown(reply)) = ops.pop() {
                stopped = Some(reply);
            }
        }
        let mut batch = Batch {
            tree: &tree,
            writes: sled::Batch::default(),
            states: HashMap::new(),
            before: HashMap::new(),
            keys: HashMap::new(),
            dirty: false,
        };
        let answers: Vec<Answer> = ops.into_iter().map(|op| batch.apply(op)).collect();
        let before = std::mem::take(&mut batch.before);
        let changed: Vec<JobState> = batch.states.values().cloned().collect();
        let written = if batch.dirty {
            tree.apply_batch(batch.writes)
                .and_then(|()| db.flush().map(drop))
                .map_err(|error| error.to_string())
        } else {
            Ok(())
        };
        // Observers first: whoever gets an answer sees counters and watchers up to date.
        if written.is_ok() {
            for state in changed {
                let from = before.get(&state.id).copied().flatten();
                observers.metrics.transition(from, visible_stage(&state));
                let was_active = from.is_some_and(|stage| !stage.is_terminal());
                observers
                    .active
                    .change(&state.spec.owner, was_active, !state.is_terminal());
                observers.hub.publish_state(state);
            }
        } else {
            tracing::error!(error = ?written, "job log write failed");
        }
        for answer in answers {
            match (answer, &written) {
                (Answer::Submitted(reply, result), Ok(())) => drop(reply.send(result)),
                (Answer::State(reply, result), Ok(())) => drop(reply.send(result)),
                (Answer::Submitted(reply, _), Err(error)) => {
                    drop(reply.send(Err(write_error(error))))
                }
                (Answer::State(reply, _), Err(error)) => drop(reply.send(Err(write_error(error)))),
                (Answer::Adopted(reply, result), Ok(())) => drop(reply.send(result)),
                (Answer::Adopted(reply, _), Err(error)) => {
                    drop(reply.send(Err(write_error(error))))
                }
                (Answer::Closed(reply), _) => drop(reply.send(())),
            }
        }
        if stopped.is_some() {
            break;
        }
    }
    let _ = db.flush();
    drop((tree, db));
    if let Some(reply) = stopped {
        let _ = reply.send(());
    }
}

/// The stage a job counts under in the gauge; deleted jobs count nowhere.
fn visible_stage(state: &JobState) -> Option<Stage> {
    (!state.deleted).then_some(state.stage)
}

fn write_error(error: &str) -> StoreError {
    StoreError::Db(sled::Error::Unsupported(format!(
        "batch write failed: {error}"
    )))
}

/// One group-commit batch being assembled: the states it changes, by job.
struct Batch<'a> {
    tree: &'a sled::Tree,
    writes: sled::Batch,
    states: HashMap<JobId, JobState>,
    /// Each changed job's stage before this batch (`None`: new), for the jobs-by-state gauge.
    before: HashMap<JobId, Option<Stage>>,
    /// Idempotency keys claimed earlier in this batch.
    keys: HashMap<Vec<u8>, JobId>,
    dirty: bool,
}

impl Batch<'_> {
    fn apply(&mut self, op: Op) -> Answer {
        match op {
            Op::Submit {
                state,
                spec_event,
                idempotency,
                idempotency_ttl_ms,
                reply,
            } => Answer::Submitted(
                reply,
                self.submit(*state, *spec_event, idempotency, idempotency_ttl_ms),
            ),
            Op::Append { id, events, reply } => Answer::State(reply, self.append(&id, events)),
            Op::Tombstone { id, event, reply } => Answer::State(reply, self.tombstone(&id, event)),
            Op::Adopt { copy, reply } => Answer::Adopted(reply, self.adopt(*copy)),
            // The write loop takes shutdown requests out before applying a batch.
            Op::Shutdown(reply) => Answer::Closed(reply),
        }
    }

    fn current(&mut self, id: &JobId) -> Result<JobState, StoreError> {
        if let Some(state) = self.states.get(id) {
            return Ok(state.clone());
        }
        let state = read_state(self.tree, id)?.ok_or(StoreError::NotFound)?;
        self.before.insert(id.clone(), visible_stage(&state));
        Ok(state)
    }

    fn submit(
        &mut self,
        state: JobState,
        accepted: Event,
        idempotency: Option<(String, String)>,
        ttl_ms: u64,
    ) -> Result<Submitted, StoreError> {
        if let Some((owner, key)) = &idempotency {
            let record_key = idempotency_key(owner, key);
            let earlier = match self.keys.get(&record_key) {
                Some(id) => Some(id.clone()),
                None => match self.tree.get(&record_key)? {
                    Some(value) => {
                        let record: IdempotencyRecord = decode(&record_key, &value)?;
                        (state.created_at.saturating_sub(record.at) <= ttl_ms).then_some(record.job)
                    }
                    None => None,
                },
            };
            if let Some(id) = earlier {
                if let Ok(state) = self.current(&id) {
                    return Ok(Submitted {
                        state,
                        created: false,
                    });
                }
            }
            self.keys.insert(record_key.clone(), state.id.clone());
            self.writes.insert(
                record_key,
                encode(&IdempotencyRecord {
                    job: state.id.clone(),
                    at: state.created_at,
                }),
            );
        }
        self.writes
            .insert(event_key(&state.id, 0), encode(&accepted));
        // In a cluster the owner and its epoch are the second event.
        if let Some(node) = &state.owner_node {
            let owner = Event::Owner {
                node: node.clone(),
                epoch: state.epoch,
                at: state.created_at,
            };
            self.writes.insert(event_key(&state.id, 1), encode(&owner));
        }
        self.writes.insert(state_key(&state.id), encode(&state));
        self.dirty = true;
        self.states.insert(state.id.clone(), state.clone());
        Ok(Submitted {
            state,
            created: true,
        })
    }

    fn append(&mut self, id: &JobId, events: Vec<Event>) -> Result<JobState, StoreError> {
        let mut state = self.current(id)?;
        if state.deleted {
            return Err(StoreError::NotFound);
        }
        for event in &events {
            self.writes
                .insert(event_key(id, state.events), encode(event));
            state.apply(event);
        }
        self.writes.insert(state_key(id), encode(&state));
        self.dirty = true;
        self.states.insert(id.clone(), state.clone());
        Ok(state)
    }

    fn adopt(&mut self, copy: Replicate) -> Result<ReplicateAnswer, StoreError> {
        let id = &copy.job_id;
        let local = match self.current(id) {
            Ok(state) => Some(state),
            Err(StoreError::NotFound) => None,
            Err(error) => return Err(error),
        };
        if let Some(local) = &local {
            if local.epoch > copy.epoch {
                return Ok(ReplicateAnswer::Stale {
                    owner: local.owner_node.clone().unwrap_or_default(),
                    epoch: local.epoch,
                });
            }
            let behind = local.epoch < copy.epoch || local.events < copy.events.len() as u64;
            if local.deleted || (!behind && copy.tombstone.is_none()) {
                return Ok(ReplicateAnswer::Stored);
            }
        }
        let state = match (&copy.tombstone, local) {
            (Some(_), None) => return Ok(ReplicateAnswer::Stored),
            (Some(tombstone), Some(mut state)) => {
                state.apply(tombstone);
                state
            }
            (None, _) => match JobState::replay(id.clone(), &copy.events) {
                Some(state) => state,
                None => {
                    return Ok(ReplicateAnswer::Failed(
                        "the copy does not start with its acceptance".into(),
                    ))
                }
            },
        };
        for entry in self.tree.scan_prefix(event_prefix(id)) {
            let (key, _) = entry?;
            self.writes.remove(key);
        }
        if copy.tombstone.is_none() {
            for (seq, event) in copy.events.iter().enumerate() {
                self.writes.insert(event_key(id, seq as u64), encode(event));
            }
        }
        self.writes.insert(state_key(id), encode(&state));
        self.dirty = true;
        self.states.insert(id.clone(), state);
        Ok(ReplicateAnswer::Stored)
    }

    fn tombstone(&mut self, id: &JobId, event: Event) -> Result<JobState, StoreError> {
        let mut state = self.current(id)?;
        for entry in self.tree.scan_prefix(event_prefix(id)) {
            let (key, _) = entry?;
            self.writes.remove(key);
        }
        state.apply(&event);
        self.writes.insert(state_key(id), encode(&state));
        self.dirty = true;
        self.states.insert(id.clone(), state.clone());
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ytcaption_protocol::{Format, JobSpec, Reason, Source, Step, StepOutput, Task};

    fn state(n: u64, owner: &str) -> JobState {
        let spec = JobSpec {
            source: Source::Url {
                url: format!("https://example.com/{n}.mp3"),
            },
            language: None,
            task: Task::Transcribe,
            model: None,
            formats: vec![Format::Txt],
            webhook_url: None,
            email: None,
            prompt: None,
            word_timestamps: true,
            owner: owner.into(),
        };
        JobState::new(JobId::new(1_000 + n, n), spec, 1_000 + n)
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn events_survive_reopen_and_fold_to_the_cached_state() {
        let dir = tempfile::tempdir().unwrap();
        let job = state(1, "a");
        runtime().block_on(async {
            let store =
                Store::open(dir.path(), 16, Arc::new(Hub::default()), Arc::default()).unwrap();
            store.submit(job.clone(), None, 0).await.unwrap();
            store
                .append(
                    &job.id,
                    vec![
                        Event::StepStarted {
                            step: Step::Download,
                            attempt: 1,
                            at: 2_000,
                            node: None,
                        },
                        Event::StepSucceeded {
                            step: Step::Download,
                            output: StepOutput::Downloaded {
                                media_key: "m".into(),
                                bytes: 1,
                                title: None,
                            },
                            at: 2_500,
                        },
                    ],
                )
                .await
                .unwrap();
            store.close().await;
        });
        // Reopen: the state is there, and equals the fold of the events.
        runtime().block_on(async {
            let store =
                Store::open(dir.path(), 16, Arc::new(Hub::default()), Arc::default()).unwrap();
            let cached = store.get(&job.id).unwrap().unwrap();
            let events = store.events(&job.id).unwrap();
            assert_eq!(events.len(), 3);
            let Event::Accepted { spec, at } = &events[0] else {
                panic!("first event is not Accepted: {:?}", events[0]);
            };
            let mut folded = JobState::new(job.id.clone(), spec.clone(), *at);
            events[1..].iter().for_each(|event| folded.apply(event));
            assert_eq!(folded, cached);
            assert_eq!(cached.next_step(), Some(Step::Transcribe));
            assert_eq!(store.unfinished().unwrap().len(), 1);
        });
    }

    #[test]
    fn idempotency_keys_return_the_first_job_even_within_one_batch() {
        let dir = tempfile::tempdir().unwrap();
        runtime().block_on(async {
            let store =
                Store::open(dir.path(), 64, Arc::new(Hub::default()), Arc::default()).unwrap();
            let key = Some(("alice".to_owned(), "k1".to_owned()));
            let (first, second) = tokio::join!(
                store.submit(state(1, "alice"), key.clone(), 60_000),
                store.submit(state(2, "alice"), key.clone(), 60_000)
            );
            let (first, second) = (first.unwrap(), second.unwrap());
            assert!(first.created);
            assert!(!second.created);
            assert_eq!(first.state.id, second.state.id);
            // Another owner's identical key is another job.
            let other = store
                .submit(state(3, "bob"), Some(("bob".into(), "k1".into())), 60_000)
                .await
                .unwrap();
            assert!(other.created);
            // Expired keys no longer match.
            let late = store
                .submit(state(200_000, "alice"), key, 1_000)
                .await
                .unwrap();
            assert!(late.created);
        });
    }

    #[test]
    fn listing_pages_newest_first_and_filters() {
        let dir = tempfile::tempdir().unwrap();
        runtime().block_on(async {
            let store =
                Store::open(dir.path(), 64, Arc::new(Hub::default()), Arc::default()).unwrap();
            for n in 0..5 {
                let owner = if n % 2 == 0 { "a" } else { "b" };
                store.submit(state(n, owner), None, 0).await.unwrap();
            }
            let failed = state(1, "b").id;
            store
                .append(
                    &failed,
                    vec![Event::Failed {
                        reason: Reason::new("x", "y"),
                        at: 9_999,
                    }],
                )
                .await
                .unwrap();
            // Quota counters follow the states without scanning.
            assert_eq!(store.active_jobs_of("a"), 3);
            assert_eq!(store.active_jobs_of("b"), 1);
            assert_eq!(store.active_jobs_of("nobody"), 0);
            let mut filter = ListFilter {
                limit: 2,
                ..ListFilter::default()
            };
            let (page, cursor) = store.list(&filter).unwrap();
            assert_eq!(page.len(), 2);
            assert_eq!(page[0].id, state(4, "a").id);
            filter.before = cursor;
            let (page, _) = store.list(&filter).unwrap();
            assert_eq!(page[0].id, state(2, "a").id);
            let only_a = ListFilter {
                owner: Some("a".into()),
                limit: 10,
                ..ListFilter::default()
            };
            assert_eq!(store.list(&only_a).unwrap().0.len(), 3);
            let only_failed = ListFilter {
                stage: Some(Stage::Failed),
                limit: 10,
                ..ListFilter::default()
            };
            assert_eq!(store.list(&only_failed).unwrap().0[0].id, failed);
            // Tombstones drop the history and hide the job.
            store
                .tombstone(
                    &failed,
                    Event::Deleted {
                        at: 10_000,
                        why: "request".into(),
                    },
                )
                .await
                .unwrap();
            assert!(store.events(&failed).unwrap().is_empty());
            assert!(store.get(&failed).unwrap().unwrap().deleted);
            assert!(store.list(&only_failed).unwrap().0.is_empty());
            assert!(matches!(
                store
                    .append(&failed, vec![Event::Completed { at: 1 }])
                    .await,
                Err(StoreError::NotFound)
            ));
        });
    }
}
