//! The one actor shape shared by the Downloader, Transcriber, Storage and Notifier: a worker
//! that joins its role's process group, runs one saga step at a time, and answers with a
//! [`StepReply`].
//!
//! A worker holds no saga state: everything it needs is in the [`StepRequest`], and what it
//! produced goes back in the reply. When a step fails because a *dependency* is broken (not
//! because the input is bad), the worker answers first and then fails on purpose, so its
//! supervisor restarts it with backoff (see [`crate::supervisor`]); while it is down its role
//! has one member fewer and the saga waits instead of hammering the dependency.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ytcaption_protocol::wire::{StepReply, StepRequest};
use ytcaption_protocol::JobId;

/// A message to a worker.
pub enum WorkerMsg {
    /// Run one step and reply.
    Run(Box<StepRequest>, RpcReplyPort<StepReply>),
    /// Remove everything stored for a job (cancellation, retention, `DELETE`). Storage only;
    /// other workers answer `Ok` at once.
    Purge(JobId, RpcReplyPort<Result<u64, String>>),
}

impl std::fmt::Debug for WorkerMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WorkerMsg::Run(request, _) => write!(f, "Run({} {})", request.job_id, request.step),
            WorkerMsg::Purge(id, _) => write!(f, "Purge({id})"),
        }
    }
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

    fn run(&self, request: StepRequest) -> impl Future<Output = Outcome> + Send;

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
    type State = Arc<W>;
    type Arguments = Arc<W>;

    async fn pre_start(
        &self,
        myself: ActorRef<WorkerMsg>,
        work: Arc<W>,
    ) -> Result<Arc<W>, ActorProcessingErr> {
        ractor::pg::join(W::ROLE.to_owned(), vec![myself.get_cell()]);
        Ok(work)
    }

    async fn handle(
        &self,
        _myself: ActorRef<WorkerMsg>,
        message: WorkerMsg,
        work: &mut Arc<W>,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            WorkerMsg::Run(request, reply) => {
                let span = tracing::info_span!("step", job_id = %request.job_id, step = %request.step, attempt = request.attempt);
                let outcome = tracing::Instrument::instrument(work.run(*request), span).await;
                // The caller may have timed out and gone: nothing to do about a closed port.
                let _ = reply.send(outcome.reply);
                if let Some(reason) = outcome.dependency_down {
                    return Err(format!("{} dependency down: {reason}", W::ROLE).into());
                }
            }
            WorkerMsg::Purge(job, reply) => {
                let _ = reply.send(work.purge(job).await);
            }
        }
        Ok(())
    }
}
