//! The job saga: download -> transcribe -> store -> notify, driven step by step from the job
//! log.
//!
//! One driver task runs per active job. Each turn it reads the job's state from the log (the
//! fold of its events), decides the next move from that state alone, records the move as an
//! event *before* acting on it, and records the outcome after. Because the state decides
//! everything, a driver that starts after a crash, a restart or a retry request continues
//! from the last completed step; a step that was running when the node died counts as one
//! failed attempt and runs again (steps are idempotent, keyed by job id and step: same
//! storage keys, same notification ids).
//!
//! Failures: a retryable failure waits `base * factor^(attempt-1)` (capped, with jitter) and
//! tries again, up to the step's attempt limit; a permanent one (bad input) fails the job at
//! once with the worker's reason code. "No worker available" (all of a role's workers backing
//! off after failures) is not an attempt: the driver just waits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ractor::{ActorCell, ActorId, ActorRef};
use tokio::sync::{watch, Notify};
use ytcaption_protocol::wire::{StepReply, StepRequest};
use ytcaption_protocol::{Event, JobId, JobState, Reason, Step};

use crate::cluster::Cluster;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
use crate::worker::WorkerMsg;

/// The reason code a cancelled job's notifications carry.
pub const CANCELLED: &str = "job.cancelled";

/// Attempts and timeout of one step.
#[derive(Debug, Clone, Copy)]
pub struct StepLimits {
    pub attempts: u32,
    pub timeout: Duration,
}

/// Retry backoff: `base * factor^(attempt-1)`, capped, +/- `jitter` (a fraction).
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub factor: f64,
    pub cap: Duration,
    pub jitter: f64,
}

impl Backoff {
    pub fn delay(&self, attempt: u32, random: u64) -> Duration {
        let exponent = attempt.saturating_sub(1).min(30) as i32;
        let raw = self.base.as_secs_f64() * self.factor.powi(exponent);
        let capped = raw.min(self.cap.as_secs_f64());
        // random in [0, 1) -> a factor in [1 - jitter, 1 + jitter)
        let unit = (random >> 11) as f64 / (1u64 << 53) as f64;
        let spread = 1.0 + self.jitter * (2.0 * unit - 1.0);
        Duration::from_secs_f64((capped * spread).max(0.0))
    }
}

/// The saga's limits, from the `jobs` section of the configuration.
#[derive(Debug, Clone)]
pub struct SagaParams {
    pub download: StepLimits,
    pub transcribe: StepLimits,
    pub store: StepLimits,
    pub notify: StepLimits,
    pub backoff: Backoff,
    /// Notifications are retried until this long after the notify step first started.
    pub notify_give_up_after: Duration,
}

impl SagaParams {
    fn limits(&self, step: Step) -> StepLimits {
        match step {
            Step::Download => self.download,
            Step::Transcribe => self.transcribe,
            Step::Store => self.store,
            Step::Notify => self.notify,
        }
    }
}

/// The process-group name of the workers that run `step`.
pub fn role(step: Step) -> &'static str {
    match step {
        Step::Download => crate::downloader::ROLE,
        Step::Transcribe => crate::transcriber::ROLE,
        Step::Store => crate::storer::ROLE,
        Step::Notify => crate::notifier::ROLE,
    }
}

/// Picks an idle worker of a role: at most one step in flight per worker (and at most
/// `max_in_flight_per_peer` on one peer), so steps queue in their (durable) job, never in a
/// worker's mailbox. In a cluster the candidates are every live, non-draining node's workers,
/// ranked: the node that holds the step's input first, then this node, then the peer with
/// the most idle workers of the role (from its last heartbeat).
#[derive(Debug, Default)]
pub struct Placement {
    busy: Mutex<Busy>,
    freed: Notify,
    cluster: std::sync::OnceLock<Arc<Cluster>>,
}

#[derive(Debug, Default)]
struct Busy {
    workers: HashMap<ActorId, usize>,
    nodes: HashMap<String, usize>,
}

/// A worker reserved for one step; released on drop.
#[derive(Debug)]
pub struct Lease {
    placement: Arc<Placement>,
    id: ActorId,
    pub actor: ActorRef<WorkerMsg>,
    /// The worker's node (empty without a cluster).
    pub node: String,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut busy = self.placement.lock();
        if let Some(count) = busy.workers.get_mut(&self.id) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                busy.workers.remove(&self.id);
            }
        }
        if let Some(count) = busy.nodes.get_mut(&self.node) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                busy.nodes.remove(&self.node);
            }
        }
        drop(busy);
        self.placement.freed.notify_waiters();
    }
}

impl Placement {
    fn lock(&self) -> std::sync::MutexGuard<'_, Busy> {
        self.busy.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Places steps on the whole cluster from now on.
    pub fn set_cluster(&self, cluster: Arc<Cluster>) {
        let _ = self.cluster.set(cluster);
    }

    fn try_acquire(
        self: &Arc<Self>,
        role: &str,
        prefer: Option<&str>,
        idle_only: bool,
    ) -> Option<Lease> {
        let cluster = self.cluster.get();
        let members = match cluster {
            Some(_) => ractor::pg::get_members(&role.to_owned()),
            None => ractor::pg::get_local_members(&role.to_owned()),
        };
        let mut busy = self.lock();
        let mut best: Option<((bool, bool, u32), ActorCell, String)> = None;
        for cell in members {
            if busy.workers.contains_key(&cell.get_id()) {
                continue;
            }
            let (node, rank) = match cluster {
                None => (String::new(), (false, true, 0)),
                Some(cluster) => {
                    let Some(node) = cluster.node_of(&cell) else {
                        continue;
                    };
                    let Some(idle) = cluster
                        .placeable(&node, role)
                        .filter(|idle| !idle_only || *idle > 0)
                    else {
                        continue;
                    };
                    let limit = cluster.params().max_in_flight_per_peer;
                    if node != cluster.name()
                        && busy.nodes.get(&node).copied().unwrap_or(0) >= limit
                    {
                        continue;
                    }
                    let rank = (prefer == Some(node.as_str()), node == cluster.name(), idle);
                    (node, rank)
                }
            };
            if best.as_ref().is_none_or(|(top, ..)| rank > *top) {
                best = Some((rank, cell, node));
            }
        }
        let (_, cell, node) = best?;
        busy.workers.insert(cell.get_id(), 1);
        *busy.nodes.entry(node.clone()).or_insert(0) += 1;
        Some(Lease {
            placement: self.clone(),
            id: cell.get_id(),
            actor: ActorRef::from(cell),
            node,
        })
    }

    /// Waits for an idle worker of `role` (on `prefer`'s node if it has one); `None` if
    /// `cancel` fires first.
    pub async fn acquire(
        self: &Arc<Self>,
        role: &str,
        prefer: Option<&str>,
        cancel: &mut watch::Receiver<bool>,
    ) -> Option<Lease> {
        loop {
            let freed = self.freed.notified();
            if let Some(lease) = self.try_acquire(role, prefer, false) {
                return Some(lease);
            }
            if *cancel.borrow() {
                return None;
            }
            // Members also come back by restarts and joins, which do not notify: poll as well.
            tokio::select! {
                () = freed => {}
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = cancel.changed() => {}
            }
        }
    }

    /// A worker of `role` that is idle now (by its node's last report), for work that can
    /// as well be done by the caller: `None` rather than waiting.
    pub fn try_idle(self: &Arc<Self>, role: &str) -> Option<Lease> {
        self.try_acquire(role, None, true)
    }

    /// Marks `worker` (on this node) busy until the lease is dropped, so that this node
    /// places nothing else on it meanwhile.
    pub fn reserve(self: &Arc<Self>, worker: &ActorCell) -> Lease {
        let node = self
            .cluster
            .get()
            .map(|cluster| cluster.name().to_owned())
            .unwrap_or_default();
        let mut busy = self.lock();
        *busy.workers.entry(worker.get_id()).or_insert(0) += 1;
        *busy.nodes.entry(node.clone()).or_insert(0) += 1;
        Lease {
            placement: self.clone(),
            id: worker.get_id(),
            actor: ActorRef::from(worker.clone()),
            node,
        }
    }

    /// Steps in flight (a gauge).
    pub fn in_flight(&self) -> usize {
        self.lock().workers.values().sum()
    }
}

/// Everything a driver needs; shared by all drivers of a node.
#[derive(Debug)]
pub struct SagaContext {
    pub store: Store,
    pub hub: Arc<Hub>,
    pub params: SagaParams,
    pub placement: Arc<Placement>,
    pub metrics: Arc<Metrics>,
    /// This node's name (job owners are node names).
    pub node: String,
    pub cluster: Option<Arc<Cluster>>,
}

impl SagaContext {
    /// True when this node drives `job` (a job without an owner predates the cluster).
    pub fn owns(&self, job: &JobState) -> bool {
        job.owner_node
            .as_deref()
            .is_none_or(|owner| owner == self.node)
    }
}

pub use ytcaption_protocol::time::now_ms;

pub fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // Without OS randomness, fall back to the clock: jitter and ids only need spread.
    if getrandom::fill(&mut bytes).is_err() {
        return now_ms().wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    u64::from_le_bytes(bytes)
}

/// Runs a job until it is finished or `cancel` stops it (node shutdown); the state left in the
/// log is always one a later driver can resume from.
pub async fn drive(ctx: Arc<SagaContext>, id: JobId, mut cancel: watch::Receiver<bool>) {
    let span = tracing::info_span!("job", job_id = %id);
    let _ = tracing::Instrument::instrument(
        async {
            if let Err(error) = close_interrupted(&ctx, &id).await {
                tracing::warn!(%error, "could not close an interrupted attempt");
            }
            loop {
                match turn(&ctx, &id, &mut cancel).await {
                    Ok(Turn::Continue) => {}
                    Ok(Turn::Done) => break,
                    Ok(Turn::Stopped) => {
                        tracing::info!("driver stopped; the job resumes at the next start");
                        break;
                    }
                    Err(StoreError::Fenced { owner, epoch }) => {
                        tracing::warn!(%owner, epoch, "another node owns the job now; driver stops");
                        break;
                    }
                    Err(error) => {
                        // The log is unwritable: stop; the job resumes from the log later.
                        tracing::error!(%error, "job log error; driver stops");
                        break;
                    }
                }
            }
        },
        span,
    )
    .await;
}

/// An attempt the log shows running (started, no outcome) when a driver starts was cut short
/// by a restart of this node (a crash, a kill, a shutdown mid-step): a driver's own attempts
/// always end in an outcome or a shutdown, and an attempt lost with a change of owner is
/// closed by the `Owner` event. It is closed here as lost to the cluster, so it is placed
/// again at once and, like an attempt lost with a peer, does not count against the step's
/// limit (up to `MAX_LOST` per job; a medium that kills its node still ends).
async fn close_interrupted(ctx: &SagaContext, id: &JobId) -> Result<(), StoreError> {
    let Some(state) = ctx.store.get(id)? else {
        return Ok(());
    };
    let Some(step) = state.open_step else {
        return Ok(());
    };
    if state.is_terminal() || !ctx.owns(&state) {
        return Ok(());
    }
    let at = now_ms();
    tracing::warn!(%step, attempt = state.attempt(step), "an attempt cut short by a restart of this node is closed as lost");
    let event = Event::StepFailed {
        step,
        attempt: state.attempt(step),
        reason: Reason::new(
            "step.worker_lost",
            format!("this node restarted while the {step} attempt ran"),
        ),
        retry_at: Some(at),
        at,
    };
    append(ctx, id, vec![event]).await.map(drop)
}

enum Turn {
    Continue,
    Done,
    /// Shutdown asked the driver to stop.
    Stopped,
}

async fn append(ctx: &SagaContext, id: &JobId, events: Vec<Event>) -> Result<JobState, StoreError> {
    for event in &events {
        ctx.metrics.observe_event(event);
    }
    ctx.store.append(id, events).await
}

/// The turn after a wait that shutdown (`cancel`) may have cut short.
fn after_wait(cancel: &watch::Receiver<bool>) -> Turn {
    if *cancel.borrow() {
        Turn::Stopped
    } else {
        Turn::Continue
    }
}

/// Sleeps until `at_ms`, or until cancel fires (then returns false).
async fn sleep_until(at_ms: u64, cancel: &mut watch::Receiver<bool>) -> bool {
    let wait = at_ms.saturating_sub(now_ms());
    if wait == 0 {
        return !*cancel.borrow();
    }
    tokio::select! {
        () = tokio::time::sleep(Duration::from_millis(wait)) => !*cancel.borrow(),
        _ = cancel.changed() => false,
    }
}

async fn turn(
    ctx: &Arc<SagaContext>,
    id: &JobId,
    cancel: &mut watch::Receiver<bool>,
) -> Result<Turn, StoreError> {
    let Some(state) = ctx.store.get(id)? else {
        return Ok(Turn::Done);
    };
    if state.is_terminal() || !ctx.owns(&state) {
        return Ok(Turn::Done);
    }
    if *cancel.borrow() {
        return Ok(Turn::Stopped);
    }
    // A cancelled job removes what it stored, tells its webhook and email, and ends cancelled.
    if state.cancel_requested {
        compensate(ctx, &state, cancel).await;
        if !state.notification_pending()
            || state.attempt(Step::Notify) >= ctx.params.notify.attempts
        {
            append(ctx, id, vec![Event::Cancelled { at: now_ms() }]).await?;
            return Ok(Turn::Done);
        }
    }
    // A job whose step failed for good still tells its webhook and email, then ends failed.
    let step = match &state.failing {
        _ if state.cancel_requested => Step::Notify,
        Some(reason) if !state.notification_pending() => {
            let reason = reason.clone();
            append(
                ctx,
                id,
                vec![Event::Failed {
                    reason,
                    at: now_ms(),
                }],
            )
            .await?;
            return Ok(Turn::Done);
        }
        Some(_) => Step::Notify,
        None => match state.next_step() {
            Some(step) => step,
            None => {
                append(ctx, id, vec![Event::Completed { at: now_ms() }]).await?;
                return Ok(Turn::Done);
            }
        },
    };
    if step == Step::Notify && state.failing.is_none() && !state.cancel_requested {
        if let Some(turn) = hold_stored_blobs(ctx, &state, cancel).await? {
            return Ok(turn);
        }
    }
    if let Some(at) = state.next_retry_at {
        if !sleep_until(at, cancel).await {
            return Ok(after_wait(cancel));
        }
    }
    let limits = ctx.params.limits(step);
    let attempt = state.attempt(step) + 1;
    if state.counted_attempts(step) + 1 > limits.attempts {
        return exhausted(ctx, &state, step, limits.attempts).await;
    }
    // The node that made the step's input has it at hand (local storage).
    let prefer = match step {
        Step::Transcribe => state.ran_on.get(&Step::Download),
        Step::Store => state.ran_on.get(&Step::Transcribe),
        _ => None,
    };
    let Some(lease) = ctx
        .placement
        .acquire(role(step), prefer.map(String::as_str), cancel)
        .await
    else {
        return Ok(Turn::Stopped);
    };
    // Listening from before the check below: a cancel appended in between is not missed.
    let updates = ctx.hub.subscribe(id);
    // The job may have been cancelled (or handed over) while it waited for a worker.
    if ctx.store.get(id)?.is_some_and(|now| {
        (now.cancel_requested && !state.cancel_requested) || now.is_terminal() || !ctx.owns(&now)
    }) {
        return Ok(Turn::Continue);
    }
    // This turn runs a cancelled job's own notification, which its cancel must not interrupt.
    let notifying_cancel = state.cancel_requested;
    let started = now_ms();
    let state = append(
        ctx,
        id,
        vec![Event::StepStarted {
            step,
            attempt,
            at: started,
            node: (!lease.node.is_empty()).then(|| lease.node.clone()),
        }],
    )
    .await?;
    // Transcription also stops itself earlier, in proportion to the audio's duration.
    let deadline = started + limits.timeout.as_millis() as u64;
    let give_up_at = match step {
        Step::Notify => Some(give_up_at(ctx, id, started)?),
        _ => None,
    };
    let request = StepRequest {
        job_id: id.clone(),
        epoch: state.epoch,
        step,
        attempt,
        spec: state.spec.clone(),
        inputs: state
            .outputs
            .iter()
            .map(|(step, output)| (*step, output.clone()))
            .collect(),
        delivered: state.delivered.clone(),
        deadline_ms: deadline,
        give_up_at_ms: give_up_at,
        max_attempts: limits.attempts,
        failure: if state.cancel_requested {
            Some(Reason::new(CANCELLED, "the job was cancelled"))
        } else {
            state.failing.clone()
        },
        chunk: None,
    };
    let timeout = Duration::from_millis(deadline.saturating_sub(started)) + Duration::from_secs(5);
    // Its own task: a call abandoned on cancel is still waited for (see `purge_after`).
    let mut call = {
        let (actor, metrics) = (lease.actor.clone(), ctx.metrics.clone());
        tokio::spawn(async move { call_worker(&actor, &request, timeout, &metrics).await })
    };
    let watch_cancel = async {
        if notifying_cancel {
            std::future::pending::<()>().await;
        }
        watch_for_cancel(ctx, id, updates).await;
    };
    let reply = tokio::select! {
        reply = &mut call => Some(reply.unwrap_or_else(|error| {
            failed_reply(id, step, "step.worker_lost", format!("the {step} call ended: {error}"))
        })),
        () = watch_cancel => {
            purge_after(ctx, id, call, cancel.clone());
            None
        }
        _ = cancel.changed() => {
            call.abort();
            None
        }
    };
    drop(lease);
    let Some(reply) = reply else {
        // Cancelled or shutting down mid-step. On cancel the next turn compensates; on
        // shutdown the attempt stays open and is closed as lost when the job resumes.
        return Ok(after_wait(cancel));
    };
    ctx.metrics
        .observe_step(step, reply.result.is_ok(), now_ms().saturating_sub(started));
    record(ctx, id, step, attempt, reply).await?;
    Ok(Turn::Continue)
}

/// With local storage in a cluster, the owner takes its own copy of the stored transcripts
/// before the job tells anyone it is done, so they outlive the node that stored them (the
/// chaos harness lost a completed job's transcript with that node). A transcript no live node
/// holds any more is stored again (and transcribed again if its input went too); one that
/// cannot be copied yet is tried again in a second. `None`: go on to the notify step.
async fn hold_stored_blobs(
    ctx: &SagaContext,
    state: &JobState,
    cancel: &mut watch::Receiver<bool>,
) -> Result<Option<Turn>, StoreError> {
    let Some(cluster) = &ctx.cluster else {
        return Ok(None);
    };
    match cluster.hold_stored_blobs(&state.id).await {
        Ok(()) => Ok(None),
        Err(crate::cluster::BlobCopyError::Lost(key)) => {
            tracing::warn!(%key, "a stored transcript went with the node that held it; storing it again");
            let event = Event::Invalidated {
                step: Step::Store,
                at: now_ms(),
            };
            append(ctx, &state.id, vec![event]).await?;
            Ok(Some(Turn::Continue))
        }
        Err(error) => {
            tracing::warn!(%error, "cannot copy the stored transcript yet; retrying");
            sleep_until(now_ms() + 1_000, cancel).await;
            Ok(Some(after_wait(cancel)))
        }
    }
}

/// A step abandoned because its job was cancelled may still write blobs at its worker (media
/// being downloaded, a transcript being stored) after the cancel purged the job's blobs:
/// once the worker answers, or the call times out, they are purged again, unless the job
/// was retried meanwhile.
fn purge_after(
    ctx: &Arc<SagaContext>,
    id: &JobId,
    call: tokio::task::JoinHandle<StepReply>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (ctx, id) = (ctx.clone(), id.clone());
    tokio::spawn(async move {
        let _ = call.await;
        if !purge_wanted(&ctx, &id) {
            return;
        }
        match purge(&ctx, &id, &mut shutdown).await {
            Ok(0) => {}
            Ok(removed) => {
                tracing::info!(job_id = %id, removed, "cancel: removed blobs a late step wrote")
            }
            Err(error) => {
                tracing::warn!(job_id = %id, %error, "cancel: could not remove a late step's blobs")
            }
        }
    });
}

/// Sends a step to a worker and waits at most `timeout` for its answer; a worker that is
/// lost, late or answers garbage gives a failed reply with the reason.
pub async fn call_worker(
    worker: &ActorRef<WorkerMsg>,
    request: &StepRequest,
    timeout: Duration,
    metrics: &Metrics,
) -> StepReply {
    let (id, step) = (&request.job_id, request.step);
    let bytes = match ytcaption_protocol::wire::encode(request) {
        Ok(bytes) => bytes,
        Err(error) => return failed_reply(id, step, error.code(), error.to_string()),
    };
    match worker
        .call(|reply| WorkerMsg::Run(bytes, reply), Some(timeout))
        .await
    {
        Ok(ractor::rpc::CallResult::Success(bytes)) => {
            match ytcaption_protocol::wire::decode::<StepReply>(&bytes) {
                Ok(reply) => reply,
                Err(error) => {
                    metrics.wire_error(error.code());
                    failed_reply(
                        id,
                        step,
                        "step.bad_reply",
                        format!("the {step} worker's answer does not decode: {error}"),
                    )
                }
            }
        }
        Ok(ractor::rpc::CallResult::Timeout) => failed_reply(
            id,
            step,
            "step.timeout",
            format!("{step} did not finish within {} s", timeout.as_secs()),
        ),
        Ok(ractor::rpc::CallResult::SenderError) | Err(_) => failed_reply(
            id,
            step,
            "step.worker_lost",
            format!("the {step} worker stopped before answering"),
        ),
    }
}

/// A step used up its attempts. For notify, the channels still pending are given up and the
/// job ends as it would have (a failed notification does not undo a transcript); any other
/// step fails the job with its last error.
async fn exhausted(
    ctx: &SagaContext,
    state: &JobState,
    step: Step,
    attempts: u32,
) -> Result<Turn, StoreError> {
    let at = now_ms();
    let last = state
        .error
        .clone()
        .unwrap_or_else(|| Reason::new("step.attempts_exhausted", format!("{step} failed")));
    let reason = Reason::new(
        last.code,
        format!("{} (gave up after {attempts} attempts)", last.message),
    );
    if step != Step::Notify {
        let event = Event::StepFailed {
            step,
            attempt: attempts,
            reason,
            retry_at: None,
            at,
        };
        append(ctx, &state.id, vec![event]).await?;
        return Ok(Turn::Continue);
    }
    let mut events: Vec<Event> = state
        .spec
        .channels()
        .into_iter()
        .filter(|channel| !state.delivered.contains(channel) && !state.gave_up.contains(channel))
        .map(|channel| Event::GaveUp {
            channel,
            reason: reason.clone(),
            at,
        })
        .collect();
    events.push(match &state.failing {
        Some(failure) => Event::Failed {
            reason: failure.clone(),
            at,
        },
        None => Event::Completed { at },
    });
    append(ctx, &state.id, events).await?;
    Ok(Turn::Done)
}

/// Resolves when `updates` (the job's) bring a cancel request or a terminal state.
async fn watch_for_cancel(
    ctx: &SagaContext,
    id: &JobId,
    mut updates: tokio::sync::broadcast::Receiver<crate::hub::Update>,
) {
    loop {
        match updates.recv().await {
            Ok(crate::hub::Update::State(state))
                if state.cancel_requested || state.is_terminal() =>
            {
                return
            }
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                if ctx
                    .store
                    .get(id)
                    .ok()
                    .flatten()
                    .is_some_and(|state| state.cancel_requested)
                {
                    return;
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                std::future::pending::<()>().await
            }
        }
    }
}

fn failed_reply(id: &JobId, step: Step, code: &str, message: String) -> StepReply {
    StepReply {
        job_id: id.clone(),
        step,
        result: Err(ytcaption_protocol::wire::StepFailure::transient(
            code, message,
        )),
        deliveries: Vec::new(),
    }
}

/// When the notifier stops retrying a channel: `notify_give_up_after` past the notify step's
/// first attempt.
fn give_up_at(ctx: &SagaContext, id: &JobId, started: u64) -> Result<u64, StoreError> {
    let first = ctx
        .store
        .events(id)?
        .iter()
        .find_map(|event| match event {
            Event::StepStarted {
                step: Step::Notify,
                at,
                ..
            } => Some(*at),
            _ => None,
        })
        .unwrap_or(started);
    Ok(first + ctx.params.notify_give_up_after.as_millis() as u64)
}

/// Writes a step's outcome: success, a retry, or the job's failure.
async fn record(
    ctx: &SagaContext,
    id: &JobId,
    step: Step,
    attempt: u32,
    reply: StepReply,
) -> Result<(), StoreError> {
    let at = now_ms();
    let mut events: Vec<Event> = reply
        .deliveries
        .iter()
        .filter_map(|delivery| {
            if delivery.delivered {
                Some(Event::Delivered {
                    channel: delivery.channel,
                    attempt,
                    at,
                })
            } else {
                delivery.gave_up.clone().map(|reason| Event::GaveUp {
                    channel: delivery.channel,
                    reason,
                    at,
                })
            }
        })
        .collect();
    match reply.result {
        Ok(output) => events.push(Event::StepSucceeded { step, output, at }),
        Err(failure) => {
            let limits = ctx.params.limits(step);
            // The input a step read is gone with the node that held it (local storage): run
            // the step that made it again, then this one. Attempts lost to the cluster (this,
            // or a worker's node dying) do not count, up to MAX_LOST per job.
            let lost_input = match step {
                Step::Transcribe => Some(Step::Download),
                Step::Store => Some(Step::Transcribe),
                _ => None,
            }
            .filter(|_| failure.reason.code == "storage.not_found" && ctx.cluster.is_some());
            let before = ctx.store.get(id)?;
            let lost_before = before.as_ref().map_or(0, |state| state.lost);
            let counted = before
                .as_ref()
                .map_or(attempt, |state| state.counted_attempts(step));
            let forgiven = lost_before < ytcaption_protocol::job::MAX_LOST;
            if let (Some(input), true) = (lost_input, forgiven) {
                tracing::warn!(%step, %input, reason = %failure.reason, "step input lost; redoing the step that made it");
                events.push(Event::StepFailed {
                    step,
                    attempt,
                    reason: Reason::new("step.input_lost", failure.reason.message),
                    retry_at: Some(at),
                    at,
                });
                events.push(Event::Invalidated { step: input, at });
                return append(ctx, id, events).await.map(drop);
            }
            // A lost attempt is placed again at once (backoff of a first retry); a failed
            // one backs off by its attempt number, while attempts remain.
            let lost = ytcaption_protocol::job::LOST_CODES.contains(&failure.reason.code.as_str())
                && forgiven;
            if lost || (failure.retryable && counted < limits.attempts) {
                let delay = ctx
                    .params
                    .backoff
                    .delay(if lost { 1 } else { attempt }, random_u64());
                tracing::warn!(%step, attempt, lost, reason = %failure.reason, delay_ms = delay.as_millis() as u64, "step failed; retrying");
                events.push(Event::StepFailed {
                    step,
                    attempt,
                    reason: failure.reason,
                    retry_at: Some(at + delay.as_millis() as u64),
                    at,
                });
            } else {
                // Final: the fold marks the job failing; the next turn notifies, then fails it.
                tracing::warn!(%step, attempt, reason = %failure.reason, "step failed; job fails");
                events.push(Event::StepFailed {
                    step,
                    attempt,
                    reason: failure.reason,
                    retry_at: None,
                    at,
                });
            }
        }
    }
    append(ctx, id, events).await.map(drop)
}

/// Removes what a cancelled job stored (media, partial transcripts). Temp files belong to the
/// worker that made them and are removed when its step ends.
async fn compensate(ctx: &Arc<SagaContext>, state: &JobState, cancel: &mut watch::Receiver<bool>) {
    if let Err(error) = purge(ctx, &state.id, cancel).await {
        tracing::warn!(%error, "cancel: could not remove the job's blobs; the retention sweep retries");
    }
}

/// Deletes every blob of a job through a Storage worker: in a cluster, one on every node
/// (with local storage each node holds its own copies; with S3 the later ones find nothing
/// left). A node whose worker fails, or that is down now (local storage), is tried again in
/// the background for up to [`PURGE_RETRY_FOR`]; the answer is an error only when a
/// reachable worker failed.
pub async fn purge(
    ctx: &Arc<SagaContext>,
    id: &JobId,
    cancel: &mut watch::Receiver<bool>,
) -> Result<u64, String> {
    if let Some(cluster) = &ctx.cluster {
        let (removed, failed) = purge_on_nodes(ctx, cluster, id, None).await;
        let mut pending: std::collections::HashSet<String> =
            failed.iter().map(|(node, _)| node.clone()).collect();
        if cluster.local_blobs() {
            pending.extend(cluster.down_names());
        }
        if !pending.is_empty() {
            retry_purge(ctx, id, pending);
        }
        return match failed.first() {
            None => Ok(removed),
            Some((node, error)) => Err(format!("{node}: {error}")),
        };
    }
    let Some(lease) = ctx
        .placement
        .acquire(crate::storer::ROLE, None, cancel)
        .await
    else {
        return Err("shutting down".into());
    };
    call_purge(ctx, &lease.actor, id).await
}

/// How long a purge keeps trying the nodes it could not reach.
const PURGE_RETRY_FOR: Duration = Duration::from_secs(600);

/// Purges `id` through one storage worker per node (only the nodes in `only`, if given).
/// Returns what was removed and the nodes whose worker failed, with why.
async fn purge_on_nodes(
    ctx: &SagaContext,
    cluster: &Cluster,
    id: &JobId,
    only: Option<&std::collections::HashSet<String>>,
) -> (u64, Vec<(String, String)>) {
    let mut nodes = std::collections::HashSet::new();
    let mut removed = 0;
    let mut failed = Vec::new();
    for cell in ractor::pg::get_members(&crate::storer::ROLE.to_owned()) {
        let Some(node) = cluster.node_of(&cell) else {
            continue;
        };
        if only.is_some_and(|only| !only.contains(&node)) || !nodes.insert(node.clone()) {
            continue;
        }
        match call_purge(ctx, &ActorRef::from(cell), id).await {
            Ok(n) => removed += n,
            Err(error) => failed.push((node, error)),
        }
    }
    (removed, failed)
}

/// Keeps purging `id` on the `pending` nodes (failed, or down) until each has answered, the
/// job is no longer cancelled or deleted (a retry), or [`PURGE_RETRY_FOR`] has passed.
fn retry_purge(ctx: &Arc<SagaContext>, id: &JobId, mut pending: std::collections::HashSet<String>) {
    let Some(cluster) = ctx.cluster.clone() else {
        return;
    };
    let (ctx, id) = (ctx.clone(), id.clone());
    tokio::spawn(async move {
        let give_up = tokio::time::Instant::now() + PURGE_RETRY_FOR;
        let mut wait = Duration::from_millis(500);
        while !pending.is_empty() && tokio::time::Instant::now() < give_up {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(5));
            if !purge_wanted(&ctx, &id) {
                return;
            }
            let reachable: std::collections::HashSet<String> =
                ractor::pg::get_members(&crate::storer::ROLE.to_owned())
                    .iter()
                    .filter_map(|cell| cluster.node_of(cell))
                    .filter(|node| pending.contains(node))
                    .collect();
            if reachable.is_empty() {
                continue;
            }
            let (removed, failed) = purge_on_nodes(&ctx, &cluster, &id, Some(&reachable)).await;
            for node in &reachable {
                if !failed.iter().any(|(failed, _)| failed == node) {
                    pending.remove(node);
                }
            }
            if removed > 0 {
                tracing::info!(job_id = %id, removed, "purge: removed blobs on a node back since");
            }
        }
        if !pending.is_empty() {
            tracing::warn!(job_id = %id, nodes = ?pending, "purge: gave up on these nodes; their retention sweep removes the blobs");
        }
    });
}

/// Whether the job's blobs should go: cancelled, deleted, or gone from the log.
fn purge_wanted(ctx: &SagaContext, id: &JobId) -> bool {
    ctx.store
        .get(id)
        .ok()
        .flatten()
        .is_none_or(|state| state.blobs_unwanted())
}

async fn call_purge(
    ctx: &SagaContext,
    actor: &ActorRef<WorkerMsg>,
    id: &JobId,
) -> Result<u64, String> {
    match actor
        .call(
            |reply| WorkerMsg::Purge(id.to_string(), reply),
            Some(ctx.params.store.timeout),
        )
        .await
    {
        Ok(ractor::rpc::CallResult::Success(bytes)) => {
            ytcaption_protocol::wire::decode::<Result<u64, String>>(&bytes)
                .map_err(|error| format!("the storage worker's answer does not decode: {error}"))?
        }
        Ok(_) | Err(_) => Err("the storage worker did not answer".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let backoff = Backoff {
            base: Duration::from_secs(1),
            factor: 2.0,
            cap: Duration::from_secs(100),
            jitter: 0.2,
        };
        let middle = 1u64 << 63; // unit = 0.5: no jitter
        assert_eq!(backoff.delay(1, middle), Duration::from_secs(1));
        assert_eq!(backoff.delay(3, middle), Duration::from_secs(4));
        assert_eq!(backoff.delay(30, middle), Duration::from_secs(100));
        let low = backoff.delay(3, 0);
        let high = backoff.delay(3, u64::MAX);
        assert!(
            low >= Duration::from_secs_f64(3.19) && low < Duration::from_secs(4),
            "{low:?}"
        );
        assert!(
            high > Duration::from_secs(4) && high <= Duration::from_secs_f64(4.81),
            "{high:?}"
        );
    }
}
