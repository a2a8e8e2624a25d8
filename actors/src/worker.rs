//! The one actor shape shared by the Downloader, Transcriber, Storage and Notifier: a worker
//! that joins its role's process group, runs one saga step at a time, and answers with a
//! [`StepReply`].
//!
//! A worker holds no saga state: everything it needs is in the [`StepRequest`], and what it
//! produced goes back in the reply. When a step fails because a *dependency* is broken (not
//! because the input is bad), the worker answers first and then fails on purpose, so its
//! supervisor restarts it with backoff (see [`crate::supervisor`]); while it is down its role
//! has one member fewer and the saga waits instead of hammering the dependency.

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, PoisonError};

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorClusterMessage;
use ytcaption_protocol::wire::{self, StepFailure, StepReply, StepRequest};
use ytcaption_protocol::JobId;

use crate::metrics::Metrics;

/// A message to a worker, local or on another node. Payloads are versioned
/// [`ytcaption_protocol::wire`] bytes: a `StepRequest` in, a `StepReply` out; a job id in, a
/// `Result<u64, String>` out for `Purge`. A payload that does not decode is refused with a
/// counted error (ractor itself would drop it silently).
#[derive(RactorClusterMessage)]
pub enum WorkerMsg {
    /// Run one step and reply.
    #[rpc]
    Run(Vec<u8>, RpcReplyPort<Vec<u8>>),
    /// Remove everything stored for a job (cancellation, retention, `DELETE`). Storage only;
    /// other workers answer `Ok` at once.
    #[rpc]
    Purge(String, RpcReplyPort<Vec<u8>>),
}

impl std::fmt::Debug for WorkerMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WorkerMsg::Run(request, _) => write!(f, "Run({} bytes)", request.len()),
            WorkerMsg::Purge(id, _) => write!(f, "Purge({id})"),
        }
    }
}

/// What the workers of one node share: fencing tokens and load counters.
#[derive(Debug)]
pub struct WorkerShared {
    /// The highest epoch seen per job: a request from an older owner is refused.
    fences: Mutex<HashMap<JobId, u64>>,
    /// Busy workers per role.
    busy: Mutex<HashMap<&'static str, u32>>,
    pub metrics: Arc<Metrics>,
}

/// Fencing entries kept at most (oldest forgotten first is not needed: a full map is cleared,
/// and the owner's own log fences it again at its next replication).
const MAX_FENCES: usize = 100_000;

impl WorkerShared {
    pub fn new(metrics: Arc<Metrics>) -> WorkerShared {
        WorkerShared {
            fences: Mutex::new(HashMap::new()),
            busy: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// Records `epoch` for `job`; false if a newer owner was already seen.
    pub fn admit(&self, job: &JobId, epoch: u64) -> bool {
        let mut fences = self.fences.lock().unwrap_or_else(PoisonError::into_inner);
        let seen = fences.get(job).copied().unwrap_or(0);
        if epoch < seen {
            return false;
        }
        if fences.len() >= MAX_FENCES && !fences.contains_key(job) {
            fences.clear();
        }
        fences.insert(job.clone(), epoch);
        true
    }

    pub fn busy(&self, role: &str) -> u32 {
        let busy = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
        busy.get(role).copied().unwrap_or(0)
    }

    fn mark(&self, role: &'static str, delta: i32) {
        let mut busy = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
        let count = busy.entry(role).or_insert(0);
        *count = count.saturating_add_signed(delta);
    }
}

/// Encodes a reply; a reply that cannot be encoded becomes an encodable failure.
fn encode_reply(reply: &StepReply) -> Vec<u8> {
    wire::encode(reply).unwrap_or_else(|error| {
        let failed = StepReply {
            job_id: reply.job_id.clone(),
            step: reply.step,
            result: Err(StepFailure::transient(error.code(), error.to_string())),
            deliveries: Vec::new(),
        };
        wire::encode(&failed).unwrap_or_default()
    })
}

/// The result of one step, and whether the worker should fail afterwards.
#[derive(Debug)]
pub struct Outcome {
    pub reply: StepReply,
    /// A dependency is broken: fail the actor after replying, so the supervisor backs off.
    pub dependency_down: Option<String>,
}

impl Outcome {
    pub fn new(reply: StepReply) -> Outcome {
        Outcome {
            reply,
            dependency_down: None,
        }
    }
}

/// What a worker does; one implementation per role.
pub trait Work: Send + Sync + 'static {
    /// The process group of this role.
    const ROLE: &'static str;

    /// Runs one step; `me` is the worker actor running it.
    fn run(&self, request: StepRequest, me: ActorCell) -> impl Future<Output = Outcome> + Send;

    fn purge(&self, _job: JobId) -> impl Future<Output = Result<u64, String>> + Send {
        async { Ok(0) }
    }
}

/// The actor around a [`Work`].
pub struct Worker<W>(PhantomData<fn() -> W>);

impl<W> Worker<W> {
    pub fn new() -> Self {
        Worker(PhantomData)
    }
}

impl<W> Default for Worker<W> {
    fn default() -> Self {
        Self::new()
    }
}

impl<W> std::fmt::Debug for Worker<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Worker")
    }
}

impl<W: Work> Actor for Worker<W> {
    type Msg = WorkerMsg;
    type State = (Arc<W>, Arc<WorkerShared>);
    type Arguments = (Arc<W>, Arc<WorkerShared>);

    async fn pre_start(
        &self,
        myself: ActorRef<WorkerMsg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        ractor::pg::join(W::ROLE.to_owned(), vec![myself.get_cell()]);
        Ok(args)
    }

    async fn handle(
        &self,
        myself: ActorRef<WorkerMsg>,
        message: WorkerMsg,
        (work, shared): &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            WorkerMsg::Run(bytes, reply) => {
                let request: StepRequest = match wire::decode(&bytes) {
                    Ok(request) => request,
                    Err(error) => {
                        shared.metrics.wire_error(error.code());
                        tracing::warn!(%error, role = W::ROLE, "refused a step request that does not decode");
                        // An empty answer does not decode either: the caller counts it as a
                        // lost attempt and places the step again.
                        let _ = reply.send(Vec::new());
                        return Ok(());
                    }
                };
                if !shared.admit(&request.job_id, request.epoch) {
                    tracing::warn!(job_id = %request.job_id, epoch = request.epoch, "refused a step from a stale owner");
                    let refused = StepReply {
                        job_id: request.job_id,
                        step: request.step,
                        result: Err(StepFailure::permanent(
                            crate::cluster::STALE_EPOCH,
                            "a newer owner drives this job",
                        )),
                        deliveries: Vec::new(),
                    };
                    let _ = reply.send(encode_reply(&refused));
                    return Ok(());
                }
                let span = tracing::info_span!("step", job_id = %request.job_id, step = %request.step, attempt = request.attempt);
                shared.mark(W::ROLE, 1);
                let outcome =
                    tracing::Instrument::instrument(work.run(request, myself.get_cell()), span)
                        .await;
                shared.mark(W::ROLE, -1);
                // The caller may have timed out and gone: nothing to do about a closed port.
                let _ = reply.send(encode_reply(&outcome.reply));
                if let Some(reason) = outcome.dependency_down {
                    return Err(format!("{} dependency down: {reason}", W::ROLE).into());
                }
            }
            WorkerMsg::Purge(job, reply) => {
                let result = match JobId::parse(&job) {
                    Some(job) => work.purge(job).await,
                    None => Err(format!("`{job}` is not a job id")),
                };
                let _ = reply.send(wire::encode(&result).unwrap_or_default());
            }
        }
        Ok(())
    }
}
