//! The JobManager: accepts jobs, starts a saga driver for each (at most `max_active` at once;
//! the rest wait, durably, in the `accepted` state), and handles cancel, retry, delete and
//! the retention sweep.
//!
//! It is the single point through which jobs enter and leave, so idempotency and the queue
//! limit have one place to be decided. It never waits on the disk inside its handler: the
//! job log's group commit answers the client directly.
//!
//! The set of jobs with a running driver lives outside the actor ([`Drivers`]), so a
//! restarted JobManager picks up exactly the jobs that have none, from the log.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::watch;
use ytcaption_protocol::{Event, JobId, JobState};

use crate::saga::{self, now_ms, SagaContext};
use crate::store::{StoreError, Submitted};

/// The process group of JobManagers.
pub const ROLE: &str = "job_manager";

/// Why a submission was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SubmitError {
    #[error("the queue is full ({0} jobs waiting or running); retry later")]
    QueueFull(usize),
    /// The whole cluster holds `cluster.max_queued` unfinished jobs.
    #[error("the cluster is full ({0} jobs waiting or running across its nodes); retry later")]
    ClusterFull(usize),
    #[error("{0}")]
    Store(String),
}

/// Why an operation on a job was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JobError {
    #[error("no such job")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Store(String),
}

impl From<StoreError> for JobError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound => JobError::NotFound,
            other => JobError::Store(other.to_string()),
        }
    }
}

#[derive(ractor_cluster::RactorMessage)]
pub enum JobManagerMsg {
    Submit(
        Box<JobState>,
        Option<String>,
        RpcReplyPort<Result<Submitted, SubmitError>>,
    ),
    /// A job is durable (or resumed): start its driver when a slot is free.
    Start(JobId),
    /// A driver ended.
    Finished(JobId),
    Cancel(JobId, RpcReplyPort<Result<JobState, JobError>>),
    Retry(JobId, RpcReplyPort<Result<JobState, JobError>>),
    Delete(JobId, RpcReplyPort<Result<JobState, JobError>>),
    /// Retention: delete finished jobs past their TTL; forget old idempotency keys.
    Sweep,
}

impl std::fmt::Debug for JobManagerMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JobManagerMsg::Submit(state, ..) => write!(f, "Submit({})", state.id),
            JobManagerMsg::Start(id) => write!(f, "Start({id})"),
            JobManagerMsg::Finished(id) => write!(f, "Finished({id})"),
            JobManagerMsg::Cancel(id, _) => write!(f, "Cancel({id})"),
            JobManagerMsg::Retry(id, _) => write!(f, "Retry({id})"),
            JobManagerMsg::Delete(id, _) => write!(f, "Delete({id})"),
            JobManagerMsg::Sweep => f.write_str("Sweep"),
        }
    }
}

/// Jobs with a running driver; shared across JobManager restarts.
#[derive(Debug, Default)]
pub struct Drivers {
    running: Mutex<HashSet<JobId>>,
}

impl Drivers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<JobId>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn count(&self) -> usize {
        self.lock().len()
    }
}

/// The JobManager's limits.
#[derive(Debug, Clone)]
pub struct JobManagerParams {
    pub max_active: usize,
    pub max_queued: usize,
    pub idempotency_ttl: Duration,
    pub retention: Duration,
}

#[derive(Debug)]
pub struct JobManagerArgs {
    pub saga: Arc<SagaContext>,
    pub drivers: Arc<Drivers>,
    pub params: JobManagerParams,
    /// Flips to true at shutdown: drivers stop at their next safe point.
    pub shutdown: watch::Receiver<bool>,
}

#[derive(Debug)]
pub struct JobManager;

#[derive(Debug)]
pub struct JobManagerState {
    args: JobManagerArgs,
    waiting: VecDeque<JobId>,
    /// Ids in `waiting` (or starting), to refuse duplicates.
    known: HashSet<JobId>,
    /// Submissions accepted by this actor but not yet answered by the log.
    pending: Arc<std::sync::atomic::AtomicUsize>,
}

impl JobManagerState {
    fn queued(&self) -> usize {
        self.waiting.len()
            + self.args.drivers.count()
            + self.pending.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn publish_gauges(&self) {
        let metrics = &self.args.saga.metrics;
        metrics.queue_depth.set(self.waiting.len() as i64);
        metrics.active_jobs.set(self.args.drivers.count() as i64);
    }

    fn start_or_queue(&mut self, myself: &ActorRef<JobManagerMsg>, id: JobId, force: bool) {
        if self.args.drivers.lock().contains(&id) {
            return;
        }
        if !force && self.args.drivers.count() >= self.args.params.max_active {
            if self.known.insert(id.clone()) {
                self.waiting.push_back(id);
            }
            return;
        }
        self.known.remove(&id);
        self.args.drivers.lock().insert(id.clone());
        self.args.saga.metrics.drivers_started.inc();
        let ctx = self.args.saga.clone();
        let shutdown = self.args.shutdown.clone();
        let drivers = self.args.drivers.clone();
        let fallback = myself.clone();
        tokio::spawn(async move {
            saga::drive(ctx, id.clone(), shutdown).await;
            // The set is shared, so the slot is freed even if the JobManager that started this
            // driver has been restarted since; the current one is told to fill it.
            drivers.lock().remove(&id);
            let manager = current_job_manager().unwrap_or(fallback);
            let _ = manager.cast(JobManagerMsg::Finished(id));
        });
    }

    fn start_waiting(&mut self, myself: &ActorRef<JobManagerMsg>) {
        while self.args.drivers.count() < self.args.params.max_active {
            let Some(id) = self.waiting.pop_front() else {
                break;
            };
            self.start_or_queue(myself, id, false);
        }
    }
}

impl Actor for JobManager {
    type Msg = JobManagerMsg;
    type State = JobManagerState;
    type Arguments = JobManagerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<JobManagerMsg>,
        args: JobManagerArgs,
    ) -> Result<JobManagerState, ActorProcessingErr> {
        ractor::pg::join(ROLE.to_owned(), vec![myself.get_cell()]);
        let mut unfinished = args.saga.store.unfinished()?;
        // Copies of jobs other nodes own are theirs to drive (or to take over, see cluster).
        unfinished.retain(|job| args.saga.owns(job));
        unfinished.sort_by(|a, b| a.id.cmp(&b.id));
        if let Some(cluster) = args.saga.cluster.clone() {
            // After a restart a newer owner may exist: meet the peers before resuming.
            let me = myself.clone();
            tokio::spawn(async move {
                cluster.wait_settled().await;
                for job in unfinished {
                    let _ = me.cast(JobManagerMsg::Start(job.id));
                }
            });
            unfinished = Vec::new();
        }
        let mut state = JobManagerState {
            args,
            waiting: VecDeque::new(),
            known: HashSet::new(),
            pending: Arc::default(),
        };
        if !unfinished.is_empty() {
            tracing::info!(jobs = unfinished.len(), "resuming unfinished jobs");
        }
        for job in unfinished {
            state.start_or_queue(&myself, job.id, false);
        }
        state.publish_gauges();
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<JobManagerMsg>,
        message: JobManagerMsg,
        state: &mut JobManagerState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            JobManagerMsg::Submit(job, key, reply) => {
                let queued = state.queued();
                if queued >= state.args.params.max_queued {
                    let _ = reply.send(Err(SubmitError::QueueFull(queued)));
                    return Ok(());
                }
                let store = state.args.saga.store.clone();
                let ttl = state.args.params.idempotency_ttl.as_millis() as u64;
                let idempotency = key.map(|key| (job.spec.owner.clone(), key));
                let id = job.id.clone();
                let pending = state.pending.clone();
                pending.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::spawn(async move {
                    let result = store.submit(*job, idempotency, ttl).await;
                    pending.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                    let result = match result {
                        Ok(submitted) => {
                            // Also for a repeated key: an earlier answer may have been an error
                            // (no replica) after the job was already durable here.
                            let _ = myself.cast(JobManagerMsg::Start(submitted.state.id.clone()));
                            Ok(submitted)
                        }
                        Err(StoreError::Unreplicated(error)) => {
                            // Durable here but on no other node: the client is told to retry
                            // (its idempotency key finds this job); the job runs meanwhile.
                            let _ = myself.cast(JobManagerMsg::Start(id));
                            Err(SubmitError::Store(format!("no other node took a copy of the job yet ({error}); retry with the same Idempotency-Key")))
                        }
                        Err(StoreError::Busy) => Err(SubmitError::QueueFull(0)),
                        Err(error) => Err(SubmitError::Store(error.to_string())),
                    };
                    let _ = reply.send(result);
                });
            }
            JobManagerMsg::Start(id) => state.start_or_queue(&myself, id, false),
            JobManagerMsg::Finished(id) => {
                // The driver's task already left the set. Removing the id here too dropped
                // the entry of a driver started meanwhile (a takeover's Start), and the next
                // line started a second one: two drivers appended the same attempt (chaos).
                //
                // A job can be retried while its old driver was finishing: look again, if
                // the job is still this node's to drive. (A driver stops when another node
                // owns the job; restarting it regardless spun a driver per job in a loop
                // until the job ended elsewhere.)
                if let Ok(Some(job)) = state.args.saga.store.get(&id) {
                    if !job.is_terminal()
                        && state.args.saga.owns(&job)
                        && !*state.args.shutdown.borrow()
                    {
                        state.start_or_queue(&myself, id, false);
                    }
                }
                state.start_waiting(&myself);
            }
            JobManagerMsg::Cancel(id, reply) => {
                let result = cancel(state, &id).await;
                if result.is_ok() && state.known.contains(&id) {
                    // Waiting for a slot: start it now so the cancel completes promptly.
                    state.waiting.retain(|waiting| *waiting != id);
                    state.start_or_queue(&myself, id, true);
                }
                let _ = reply.send(result);
            }
            JobManagerMsg::Retry(id, reply) => {
                let result = retry(state, &id).await;
                if result.is_ok() {
                    state.start_or_queue(&myself, id, false);
                }
                let _ = reply.send(result);
            }
            JobManagerMsg::Delete(id, reply) => {
                let ctx = state.args.saga.clone();
                let job = match ctx.store.get(&id) {
                    Ok(Some(job)) if !job.deleted => job,
                    Ok(_) => {
                        let _ = reply.send(Err(JobError::NotFound));
                        return Ok(());
                    }
                    Err(error) => {
                        let _ = reply.send(Err(error.into()));
                        return Ok(());
                    }
                };
                if !job.is_terminal() {
                    let result = cancel(state, &id).await;
                    if result.is_ok() && state.known.contains(&id) {
                        state.waiting.retain(|waiting| *waiting != id);
                        state.start_or_queue(&myself, id, true);
                    }
                    let _ = reply.send(result);
                    return Ok(());
                }
                let shutdown = state.args.shutdown.clone();
                tokio::spawn(async move {
                    let _ = reply.send(delete(&ctx, &id, "request", shutdown).await);
                });
            }
            JobManagerMsg::Sweep => {
                let ctx = state.args.saga.clone();
                let params = state.args.params.clone();
                let shutdown = state.args.shutdown.clone();
                tokio::spawn(async move { sweep(ctx, params, shutdown).await });
            }
        }
        state.publish_gauges();
        Ok(())
    }
}

/// The running JobManager of this node (it may have been restarted since a driver started).
pub fn current_job_manager() -> Option<ActorRef<JobManagerMsg>> {
    ractor::pg::get_local_members(&ROLE.to_owned())
        .into_iter()
        .next()
        .map(ActorRef::from)
}

async fn cancel(state: &JobManagerState, id: &JobId) -> Result<JobState, JobError> {
    let store = &state.args.saga.store;
    let job = store
        .get(id)?
        .filter(|job| !job.deleted)
        .ok_or(JobError::NotFound)?;
    if !state.args.saga.owns(&job) {
        return Err(JobError::Store(format!(
            "node {} owns this job now; retry",
            job.owner_node.as_deref().unwrap_or("?")
        )));
    }
    if job.is_terminal() {
        return Err(JobError::Conflict(format!(
            "the job is already {}",
            job.stage.as_str()
        )));
    }
    // The fold ignores a cancel that lands once the outcome is settled, even one that raced
    // the step that settled it: the appended state says whether it took.
    let job = if job.cancel_requested || job.outcome_settled() {
        job
    } else {
        store
            .append(id, vec![Event::CancelRequested { at: now_ms() }])
            .await?
    };
    if job.cancel_requested {
        return Ok(job);
    }
    Err(JobError::Conflict(if job.failing.is_some() {
        "the job has failed and is sending its notifications; it can no longer be cancelled".into()
    } else {
        "the job's transcript is stored and it is sending its notifications; it can no longer be \
         cancelled (delete it once it has finished)"
            .into()
    }))
}

async fn retry(state: &JobManagerState, id: &JobId) -> Result<JobState, JobError> {
    let store = &state.args.saga.store;
    let job = store
        .get(id)?
        .filter(|job| !job.deleted)
        .ok_or(JobError::NotFound)?;
    if !state.args.saga.owns(&job) {
        return Err(JobError::Store(format!(
            "node {} owns this job now; retry",
            job.owner_node.as_deref().unwrap_or("?")
        )));
    }
    if !matches!(
        job.stage,
        ytcaption_protocol::Stage::Failed | ytcaption_protocol::Stage::Cancelled
    ) {
        return Err(JobError::Conflict(format!(
            "only failed or cancelled jobs can be retried; this one is {}",
            job.stage.as_str()
        )));
    }
    if job.stage == ytcaption_protocol::Stage::Cancelled
        && matches!(job.spec.source, ytcaption_protocol::Source::Upload { .. })
    {
        return Err(JobError::Conflict(
            "the uploaded media was deleted when the job was cancelled; submit the file again"
                .into(),
        ));
    }
    Ok(store
        .append(id, vec![Event::RetryRequested { at: now_ms() }])
        .await?)
}

/// Removes a finished job's blobs, then its history (a tombstone remains).
async fn delete(
    ctx: &Arc<SagaContext>,
    id: &JobId,
    why: &str,
    mut shutdown: watch::Receiver<bool>,
) -> Result<JobState, JobError> {
    saga::purge(ctx, id, &mut shutdown)
        .await
        .map_err(|error| JobError::Store(format!("could not delete the job's files: {error}")))?;
    Ok(ctx
        .store
        .tombstone(
            id,
            Event::Deleted {
                at: now_ms(),
                why: why.to_owned(),
            },
        )
        .await?)
}

async fn sweep(ctx: Arc<SagaContext>, params: JobManagerParams, shutdown: watch::Receiver<bool>) {
    let now = now_ms();
    let retention = params.retention.as_millis() as u64;
    let expired = ctx.store.all_states(|job| {
        !job.deleted
            && job.is_terminal()
            && job
                .finished_at
                .is_some_and(|at| now.saturating_sub(at) > retention)
    });
    match expired {
        Ok(jobs) => {
            for job in jobs {
                match delete(&ctx, &job.id, "retention", shutdown.clone()).await {
                    Ok(_) => tracing::info!(job_id = %job.id, "retention: job deleted"),
                    Err(error) => {
                        tracing::warn!(job_id = %job.id, %error, "retention: delete failed; next sweep retries")
                    }
                }
            }
        }
        Err(error) => tracing::warn!(%error, "retention sweep could not read the job log"),
    }
    if let Err(error) = ctx
        .store
        .expire_idempotency_keys(now, params.idempotency_ttl.as_millis() as u64)
    {
        tracing::warn!(%error, "could not expire idempotency keys");
    }
}
