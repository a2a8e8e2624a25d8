//! One ytcaption node: builds the supervision tree from the configuration and is the facade the
//! HTTP layer talks to.
//!
//! ```text
//! root Supervisor (one-for-one, backoff, intensity)
//! ├── job-manager          JobManager: admission, drivers, cancel/retry/delete, retention
//! ├── downloader-1..N      Worker<DownloadWork>    pg group "downloader"
//! ├── transcriber-1..M     Worker<TranscribeWork>  pg group "transcriber"
//! ├── storage-1..K         Worker<StoreWork>       pg group "storage"
//! └── notifier-1..L        Worker<NotifyWork>      pg group "notifier"
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorRef};
use tokio::sync::{broadcast, watch};
use ytcaption_config::Config;
use ytcaption_protocol::{Format, JobId, JobState, Stage};

use crate::cluster::{Cluster, ClusterParams};
use crate::download::DownloadParams;
use crate::downloader::DownloadWork;
use crate::hub::{Hub, Update};
use crate::job_manager::{
    Drivers, JobError, JobManager, JobManagerArgs, JobManagerMsg, JobManagerParams, SubmitError,
};
use crate::metrics::Metrics;
use crate::notifier::{NotifyParams, NotifyWork};
use crate::saga::{Backoff, Placement, SagaContext, SagaParams, StepLimits};
use crate::storage::{S3Params, Storage};
use crate::store::{ListFilter, Store, StoreError, Submitted};
use crate::storer::StoreWork;
use crate::supervisor::{
    ChildSpec, Policy, SpawnFn, Supervisor, SupervisorArgs, SupervisorMsg, SupervisorStatus,
};
use crate::transcriber::{Engines, TranscribeWork, TranscriberParams};
use crate::worker::{Work, Worker, WorkerShared};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create {path}: {error}")]
    Dir {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("job log: {0}")]
    Store(#[from] StoreError),
    #[error("storage: {0}")]
    Storage(String),
    #[error("{0}")]
    Config(String),
    #[error("actor system: {0}")]
    Actors(String),
}

/// Readiness, as `/readyz` reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub model_loaded: bool,
    pub storage: Result<(), String>,
    pub job_log: bool,
    pub unavailable: Vec<String>,
}

/// A running node; cheap to clone.
#[derive(Clone, Debug)]
pub struct Node {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: Config,
    store: Store,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    storage: Storage,
    engines: Arc<Engines>,
    status: Arc<SupervisorStatus>,
    drivers: Arc<Drivers>,
    placement: Arc<Placement>,
    cluster: Option<Arc<Cluster>>,
    supervisor: ActorRef<SupervisorMsg>,
    shutdown: watch::Sender<bool>,
    /// Upload staging area.
    spool: PathBuf,
}

fn create_dir(path: &std::path::Path) -> Result<(), StartError> {
    std::fs::create_dir_all(path).map_err(|error| StartError::Dir {
        path: path.to_path_buf(),
        error,
    })
}

/// A child spec that spawns `count` workers of one kind sharing `work` (none when the node
/// does not run the role).
fn workers<W: Work>(
    prefix: &str,
    count: usize,
    work: Arc<W>,
    shared: &Arc<WorkerShared>,
) -> Vec<ChildSpec> {
    (1..=count)
        .map(|index| {
            let name = format!("{prefix}-{index}");
            let work = work.clone();
            let shared = shared.clone();
            let actor_name = name.clone();
            let spawn: SpawnFn = Arc::new(move |supervisor| {
                let args = (work.clone(), shared.clone());
                let actor_name = actor_name.clone();
                Box::pin(async move {
                    let (actor, _) =
                        Actor::spawn_linked(Some(actor_name), Worker::<W>::new(), args, supervisor)
                            .await?;
                    Ok(actor.get_cell())
                })
            });
            ChildSpec {
                name,
                role: W::ROLE,
                spawn,
            }
        })
        .collect()
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

impl Node {
    /// Opens the job log and storage, starts the supervision tree, and resumes unfinished jobs.
    pub async fn start(config: Config) -> Result<Node, StartError> {
        let data_dir = config
            .data_dir()
            .map_err(|error| StartError::Config(error.to_string()))?;
        let spool = data_dir.join("spool");
        create_dir(&data_dir)?;
        // Spool files belong to steps that died with the last process: they restart anyway.
        let _ = std::fs::remove_dir_all(&spool);
        create_dir(&spool)?;

        let metrics = Arc::new(Metrics::new());
        let hub = Arc::new(Hub::default());
        let store = Store::open(
            &data_dir.join("jobs.db"),
            16 * 1024,
            hub.clone(),
            metrics.clone(),
        )?;
        let storage = open_storage(&config).await?;
        let jobs = &config.jobs;
        let step = |limits: &ytcaption_config::Step| StepLimits {
            attempts: limits.attempts.max(1),
            timeout: limits.timeout,
        };
        let placement = Arc::new(Placement::default());
        let worker_shared = Arc::new(WorkerShared::new(metrics.clone()));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let counts = worker_counts(&config);
        let cluster = match cluster_params(&config, &counts)? {
            Some(params) => {
                let cookie = params.cookie.clone();
                let cluster = Cluster::start(
                    params,
                    store.clone(),
                    storage.clone(),
                    metrics.clone(),
                    worker_shared.clone(),
                    shutdown_rx.clone(),
                )
                .await
                .map_err(|error| StartError::Actors(error.to_string()))?;
                placement.set_cluster(cluster.clone());
                // Local storage: a blob another node wrote is fetched from it when missing here.
                storage.attach_peers(Arc::new(crate::storage::peers::BlobPeers::new(
                    cookie,
                    cluster.clone(),
                    Duration::from_secs(600),
                    config.downloader.max_bytes.0,
                )));
                Some(cluster)
            }
            None => None,
        };
        let saga = Arc::new(SagaContext {
            store: store.clone(),
            hub: hub.clone(),
            params: SagaParams {
                download: step(&jobs.download),
                transcribe: step(&jobs.transcribe),
                store: step(&jobs.store),
                notify: step(&jobs.notify),
                backoff: Backoff {
                    base: jobs.retry.base,
                    factor: jobs.retry.factor,
                    cap: jobs.retry.cap,
                    jitter: jobs.retry.jitter,
                },
                notify_give_up_after: config.notify.webhook_give_up_after,
            },
            placement: placement.clone(),
            metrics: metrics.clone(),
            node: config.node_name.clone(),
            cluster: cluster.clone(),
        });

        let threads = config.transcriber_threads(cores());
        let models_dir = config
            .models_dir()
            .map_err(|error| StartError::Config(error.to_string()))?;
        let engines = Arc::new(Engines::new(models_dir, threads));
        let transcribe = Arc::new(TranscribeWork {
            engines: engines.clone(),
            placement: placement.clone(),
            storage: storage.clone(),
            hub: hub.clone(),
            metrics: metrics.clone(),
            params: TranscriberParams {
                default_model: config.transcriber.model.clone(),
                batch_size: config.transcriber.batch_size.max(1),
                per_audio_second: jobs.transcribe_timeout_per_audio_second,
                min_timeout: jobs.transcribe_timeout_min,
                max_duration: config.transcriber.max_duration,
                spool: spool.clone(),
                split: crate::split::SplitParams {
                    above: config.transcriber.split_above,
                    chunk: config.transcriber.split_chunk,
                    overlap: config.transcriber.split_overlap,
                },
            },
        });
        let download = Arc::new(DownloadWork {
            params: download_params(&config)?,
            storage: storage.clone(),
            metrics: metrics.clone(),
            spool: spool.clone(),
        });
        let store_work = Arc::new(StoreWork {
            storage: storage.clone(),
            keep_media: jobs.keep_media,
        });
        let notify = Arc::new(
            NotifyWork::new(notify_params(&config)?, metrics.clone())
                .map_err(|error| StartError::Config(error.to_string()))?,
        );

        let drivers = Arc::new(Drivers::default());
        let manager_args = {
            let saga = saga.clone();
            let drivers = drivers.clone();
            let params = JobManagerParams {
                max_active: jobs.max_active.max(1),
                max_queued: jobs.max_queued.max(1),
                idempotency_ttl: jobs.idempotency_ttl,
                retention: jobs.retention,
            };
            move || JobManagerArgs {
                saga: saga.clone(),
                drivers: drivers.clone(),
                params: params.clone(),
                shutdown: shutdown_rx.clone(),
            }
        };
        let manager_spawn: SpawnFn = Arc::new(move |supervisor| {
            let args = manager_args();
            Box::pin(async move {
                let (actor, _) =
                    Actor::spawn_linked(Some("job-manager".into()), JobManager, args, supervisor)
                        .await?;
                Ok(actor.get_cell())
            })
        });
        let mut children = vec![ChildSpec {
            name: "job-manager".into(),
            role: crate::job_manager::ROLE,
            spawn: manager_spawn,
        }];
        children.extend(workers("downloader", counts[0], download, &worker_shared));
        children.extend(workers(
            "transcriber",
            counts[1],
            transcribe,
            &worker_shared,
        ));
        children.extend(workers("storage", counts[2], store_work, &worker_shared));
        children.extend(workers("notifier", counts[3], notify, &worker_shared));

        let status = Arc::new(SupervisorStatus::default());
        let restart_metrics = metrics.clone();
        let sup = &config.supervisor;
        let (supervisor, _) = Actor::spawn(
            Some("supervisor".into()),
            Supervisor,
            SupervisorArgs {
                children,
                policy: Policy {
                    max_restarts: sup.max_restarts.max(1),
                    within: sup.within,
                    backoff_base: sup.backoff_base,
                    backoff_cap: sup.backoff_cap,
                    cooldown: sup.cooldown,
                },
                status: status.clone(),
                on_restart: Some(Arc::new(move |child: &ChildSpec, _reason: &str| {
                    restart_metrics
                        .restarts
                        .with_label_values(&[&child.name, child.role])
                        .inc();
                })),
            },
        )
        .await
        .map_err(|error| StartError::Actors(error.to_string()))?;

        let node = Node {
            inner: Arc::new(Inner {
                config,
                store,
                hub,
                metrics,
                storage,
                engines,
                status,
                drivers,
                placement,
                cluster,
                supervisor,
                shutdown,
                spool,
            }),
        };
        node.spawn_background();
        Ok(node)
    }

    /// The periodic retention sweep and the model preload.
    fn spawn_background(&self) {
        let interval = self
            .inner
            .config
            .jobs
            .sweep_interval
            .max(Duration::from_secs(1));
        let mut shutdown = self.inner.shutdown.subscribe();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {
                        if let Some(manager) = job_manager() {
                            let _ = manager.cast(JobManagerMsg::Sweep);
                        }
                    }
                    _ = shutdown.changed() => break,
                }
            }
        });
        if self.inner.config.transcriber.preload {
            let engines = self.inner.engines.clone();
            let model = self.inner.config.transcriber.model.clone();
            tokio::task::spawn_blocking(move || match engines.get(&model) {
                Ok(_) => tracing::info!(model, "model loaded"),
                Err(error) => tracing::error!(model, %error, "model preload failed"),
            });
        }
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn storage(&self) -> &Storage {
        &self.inner.storage
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Where uploads are staged before they go to storage.
    pub fn spool(&self) -> &std::path::Path {
        &self.inner.spool
    }

    /// A fresh job id.
    pub fn new_job_id(&self) -> JobId {
        JobId::new(crate::saga::now_ms(), crate::saga::random_u64())
    }

    async fn call_manager<T: Send + 'static>(
        &self,
        build: impl FnOnce(ractor::RpcReplyPort<T>) -> JobManagerMsg,
    ) -> Option<T> {
        let manager = job_manager()?;
        match manager.call(build, Some(Duration::from_secs(30))).await {
            Ok(ractor::rpc::CallResult::Success(value)) => Some(value),
            _ => None,
        }
    }

    /// Accepts a job durably. `job.id` must come from [`Node::new_job_id`].
    pub async fn submit(
        &self,
        mut job: JobState,
        idempotency_key: Option<String>,
    ) -> Result<Submitted, SubmitError> {
        if let Some(cluster) = &self.inner.cluster {
            if !cluster.has_quorum() {
                return Err(SubmitError::Store(
                    "this node is cut off from most of its cluster; submit to another node or retry"
                        .into(),
                ));
            }
            let queued = cluster.cluster_queued();
            if queued >= cluster.max_queued() {
                return Err(SubmitError::ClusterFull(queued));
            }
            job.apply(&ytcaption_protocol::Event::Owner {
                node: cluster.name().to_owned(),
                epoch: 1,
                at: job.created_at,
            });
        }
        self.call_manager(|reply| JobManagerMsg::Submit(Box::new(job), idempotency_key, reply))
            .await
            .unwrap_or_else(|| {
                Err(SubmitError::Store(
                    "the job manager is restarting; retry".into(),
                ))
            })
    }

    /// A job from this node's log or, in a cluster, from the live peers that hold a copy.
    /// A copy of a job another node owns may be behind (this node left the replica set):
    /// the freshest copy among the live peers wins, and replaces the local one.
    pub async fn job(&self, id: &JobId) -> Result<Option<JobState>, StoreError> {
        let local = self.inner.store.get(id)?;
        let mine = local.as_ref().is_some_and(|job| {
            self.inner.cluster.as_ref().is_none_or(|cluster| {
                job.owner_node
                    .as_deref()
                    .is_none_or(|o| o == cluster.name())
            })
        });
        if mine {
            return Ok(local.filter(|job| !job.deleted));
        }
        let remote = self.remote_copy(id).await;
        let best = match (local, remote) {
            (Some(local), Some(remote))
                if (remote.state.epoch, remote.state.events) > (local.epoch, local.events) =>
            {
                self.refresh(remote.clone());
                Some(remote.state)
            }
            (Some(local), _) => Some(local),
            (None, remote) => remote.map(|copy| copy.state),
        };
        Ok(best.filter(|job| !job.deleted))
    }

    /// Replaces this node's copy of a job with a fresher one (in the background).
    fn refresh(&self, copy: ytcaption_protocol::cluster::JobCopy) {
        if copy.events.is_empty() {
            return;
        }
        let store = self.inner.store.clone();
        tokio::spawn(async move {
            if let Err(error) = store.adopt(copy.into()).await {
                tracing::debug!(%error, "could not refresh a job copy");
            }
        });
    }

    /// This node's copy only (no network): for hot paths that already read the job.
    pub fn local_job(&self, id: &JobId) -> Result<Option<JobState>, StoreError> {
        Ok(self.inner.store.get(id)?.filter(|job| !job.deleted))
    }

    async fn remote_copy(&self, id: &JobId) -> Option<ytcaption_protocol::cluster::JobCopy> {
        match &self.inner.cluster {
            Some(cluster) => cluster.lookup(id).await,
            None => None,
        }
    }

    pub async fn events(&self, id: &JobId) -> Result<Vec<ytcaption_protocol::Event>, StoreError> {
        // The same freshness rule as `job`: a copy owned elsewhere is checked against peers.
        if let Some(job) = self.inner.store.get(id)? {
            let owner_elsewhere = match (&self.inner.cluster, &job.owner_node) {
                (Some(cluster), Some(owner)) => owner != cluster.name(),
                _ => false,
            };
            if !owner_elsewhere {
                return self.inner.store.events(id);
            }
            if let Some(copy) = self.remote_copy(id).await {
                if (copy.state.epoch, copy.state.events) > (job.epoch, job.events) {
                    return Ok(copy.events);
                }
            }
            return self.inner.store.events(id);
        }
        Ok(self
            .remote_copy(id)
            .await
            .map(|copy| copy.events)
            .unwrap_or_default())
    }

    /// The cluster, when this node is part of one.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.inner.cluster.as_ref()
    }

    /// Stops (or resumes) placing work on `node`; draining hands its jobs over.
    pub async fn drain(&self, node: &str, on: bool) -> Result<(), String> {
        match &self.inner.cluster {
            Some(cluster) => cluster.drain(node, on).await,
            None => Err("this node is not part of a cluster".into()),
        }
    }

    pub fn list(&self, filter: &ListFilter) -> Result<(Vec<JobState>, Option<JobId>), StoreError> {
        self.inner.store.list(filter)
    }

    /// Jobs of `owner` not finished yet (for the concurrent-job quota).
    pub fn active_jobs_of(&self, owner: &str) -> usize {
        self.inner.store.active_jobs_of(owner)
    }

    /// Asks the JobManager to change a job; a restarting JobManager is a retryable error.
    async fn job_op(
        &self,
        build: impl FnOnce(ractor::RpcReplyPort<Result<JobState, JobError>>) -> JobManagerMsg,
    ) -> Result<JobState, JobError> {
        self.call_manager(build).await.unwrap_or_else(|| {
            Err(JobError::Store(
                "the job manager is restarting; retry".into(),
            ))
        })
    }

    /// The node that must run an operation on `id`: `None` for this one.
    async fn owner_elsewhere(&self, id: &JobId) -> Result<Option<String>, JobError> {
        let Some(cluster) = &self.inner.cluster else {
            return Ok(None);
        };
        let owner = match self.inner.store.get(id)? {
            Some(job) => job.owner_node,
            None => match cluster.lookup(id).await {
                Some(copy) => copy.state.owner_node,
                None => return Err(JobError::NotFound),
            },
        };
        Ok(owner.filter(|owner| owner != cluster.name()))
    }

    async fn op(
        &self,
        id: &JobId,
        op: ytcaption_protocol::cluster::JobOp,
        build: impl FnOnce(ractor::RpcReplyPort<Result<JobState, JobError>>) -> JobManagerMsg,
    ) -> Result<JobState, JobError> {
        if let (Some(owner), Some(cluster)) = (self.owner_elsewhere(id).await?, &self.inner.cluster)
        {
            return cluster.forward(&owner, id, op).await;
        }
        self.job_op(build).await
    }

    pub async fn cancel(&self, id: &JobId) -> Result<JobState, JobError> {
        use ytcaption_protocol::cluster::JobOp;
        self.op(id, JobOp::Cancel, |reply| {
            JobManagerMsg::Cancel(id.clone(), reply)
        })
        .await
    }

    pub async fn retry(&self, id: &JobId) -> Result<JobState, JobError> {
        use ytcaption_protocol::cluster::JobOp;
        self.op(id, JobOp::Retry, |reply| {
            JobManagerMsg::Retry(id.clone(), reply)
        })
        .await
    }

    /// Cancels a running job, or deletes a finished one's data.
    pub async fn delete(&self, id: &JobId) -> Result<JobState, JobError> {
        use ytcaption_protocol::cluster::JobOp;
        self.op(id, JobOp::Delete, |reply| {
            JobManagerMsg::Delete(id.clone(), reply)
        })
        .await
    }

    /// A completed job's transcript in `format` (stored, or rendered from the JSON one).
    pub async fn transcript(&self, job: &JobState, format: Format) -> Result<Vec<u8>, JobError> {
        if job.stage != Stage::Completed && job.stage != Stage::Notifying {
            return Err(JobError::Conflict(format!(
                "the transcript is not ready: the job is {}",
                job.stage.as_str()
            )));
        }
        let stored = job
            .stored_formats()
            .and_then(|formats| formats.get(&format));
        let max = 256 << 20;
        if let Some(key) = stored {
            return self
                .inner
                .storage
                .get_bytes(key, max)
                .await
                .map_err(|error| JobError::Store(error.to_string()));
        }
        let key = job
            .transcript_key()
            .ok_or_else(|| JobError::Conflict("the job has no transcript".into()))?;
        let json = self
            .inner
            .storage
            .get_bytes(key, max)
            .await
            .map_err(|error| JobError::Store(error.to_string()))?;
        let transcript: ytcaption_protocol::Transcript = serde_json::from_slice(&json)
            .map_err(|error| JobError::Store(format!("stored transcript unreadable: {error}")))?;
        Ok(format.render(&transcript).into_bytes())
    }

    pub fn subscribe(&self, id: &JobId) -> broadcast::Receiver<Update> {
        self.inner.hub.subscribe(id)
    }

    pub fn progress(&self, id: &JobId) -> Option<f32> {
        self.inner.hub.progress(id)
    }

    pub async fn readiness(&self) -> Readiness {
        let model_loaded = self
            .inner
            .engines
            .is_loaded(&self.inner.config.transcriber.model)
            || !self.inner.config.transcriber.preload;
        let storage = self
            .inner
            .storage
            .health()
            .await
            .map_err(|error| error.to_string());
        let job_log = self.inner.store.healthy();
        let unavailable: Vec<String> = self
            .inner
            .status
            .snapshot()
            .into_iter()
            .filter(|child| child.state != crate::supervisor::ChildState::Running)
            .map(|child| child.name)
            .collect();
        Readiness {
            ready: model_loaded
                && storage.is_ok()
                && job_log
                && !unavailable.iter().any(|name| name == "job-manager"),
            model_loaded,
            storage,
            job_log,
            unavailable,
        }
    }

    /// The supervision tree and queues, for the admin endpoint.
    pub fn admin_status(&self) -> serde_json::Value {
        serde_json::json!({
            "node": self.inner.config.node_name,
            "children": self.inner.status.snapshot(),
            "active_jobs": self.inner.drivers.count(),
            "steps_in_flight": self.inner.placement.in_flight(),
            "watchers": self.inner.hub.watched(),
            "storage": self.inner.storage.describe(),
            "cluster": self.inner.cluster.as_ref().map(|cluster| cluster.status()),
        })
    }

    /// Graceful stop: drivers stop at their next safe point (a running step's attempt is
    /// redone after restart), the supervision tree stops, the job log is flushed.
    pub async fn shutdown(&self, grace: Duration) {
        let _ = self.inner.shutdown.send(true);
        let deadline = tokio::time::Instant::now() + grace;
        while self.inner.drivers.count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = self
            .inner
            .supervisor
            .stop_and_wait(Some("shutdown".into()), Some(Duration::from_secs(10)))
            .await;
        if let Err(error) = self.inner.store.flush() {
            tracing::error!(%error, "final flush of the job log failed");
        }
    }
}

use crate::job_manager::current_job_manager as job_manager;

async fn open_storage(config: &Config) -> Result<Storage, StartError> {
    match config.storage.backend {
        ytcaption_config::Backend::Local => {
            let dir = config
                .blob_dir()
                .map_err(|error| StartError::Config(error.to_string()))?;
            Storage::local(dir).map_err(|error| StartError::Storage(error.to_string()))
        }
        ytcaption_config::Backend::S3 => {
            let s3 = &config.storage.s3;
            Storage::s3(S3Params {
                endpoint: s3.endpoint.clone(),
                region: s3.region.clone(),
                bucket: s3.bucket.clone(),
                access_key: s3.access_key.clone().unwrap_or_default(),
                secret_key: s3.secret_key.clone().unwrap_or_default(),
                path_style: s3.path_style,
                create_bucket: s3.create_bucket,
                timeout: s3.timeout,
                ..S3Params::default()
            })
            .await
            .map_err(|error| StartError::Storage(error.to_string()))
        }
    }
}

/// Workers per role on this node: download, transcribe, store, notify (0 when the node does
/// not run the role).
fn worker_counts(config: &Config) -> [usize; 4] {
    use ytcaption_config::WorkerRole;
    let runs = |role| !config.cluster.enabled() || config.cluster.runs(role);
    let count = |role, n: usize| if runs(role) { n.max(1) } else { 0 };
    [
        count(WorkerRole::Download, config.downloader.workers),
        count(WorkerRole::Transcribe, config.transcriber_workers(cores())),
        count(WorkerRole::Store, 4),
        count(WorkerRole::Notify, 4),
    ]
}

fn cluster_params(
    config: &Config,
    counts: &[usize; 4],
) -> Result<Option<ClusterParams>, StartError> {
    let c = &config.cluster;
    let Some(listen) = c.listen else {
        return Ok(None);
    };
    let http_url = match &config.http.public_url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => {
            let addr = config.http.listen;
            let host = if addr.ip().is_unspecified() {
                "127.0.0.1".to_owned()
            } else {
                addr.ip().to_string()
            };
            format!("http://{host}:{}", addr.port())
        }
    };
    let roles = [
        crate::downloader::ROLE,
        crate::transcriber::ROLE,
        crate::storer::ROLE,
        crate::notifier::ROLE,
    ];
    let tls = match (&c.tls_cert, &c.tls_key, &c.tls_ca) {
        (Some(cert), Some(key), Some(ca)) => Some(
            crate::cluster::ClusterTls::from_files(cert, key, ca)
                .map_err(|error| StartError::Config(error.to_string()))?,
        ),
        _ => None,
    };
    Ok(Some(ClusterParams {
        tls,
        name: config.node_name.clone(),
        listen,
        advertise: c.advertise.clone().unwrap_or_else(|| listen.to_string()),
        http_url,
        seeds: c.seeds.clone(),
        cookie: c.cookie.clone().unwrap_or_default(),
        discover: c.discover,
        replication_factor: c.replication_factor.max(1) as usize,
        heartbeat_interval: c.heartbeat_interval,
        suspect_after: c.suspect_after,
        down_after: c.down_after,
        reconnect_base: c.reconnect_base,
        reconnect_cap: c.reconnect_cap,
        call_timeout: c.call_timeout,
        max_queued: c.max_queued,
        max_in_flight_per_peer: c.max_in_flight_per_peer.max(1),
        workers: roles
            .into_iter()
            .zip(counts.iter())
            .filter(|(_, count)| **count > 0)
            .map(|(role, count)| (role, *count as u32))
            .collect(),
    }))
}

fn download_params(config: &Config) -> Result<DownloadParams, StartError> {
    let d = &config.downloader;
    let guard = crate::net::NetGuard::new(&d.allow_private)
        .map_err(|error| StartError::Config(format!("downloader.allow_private: {error}")))?;
    Ok(DownloadParams {
        max_bytes: d.max_bytes.0,
        max_duration_s: d.max_duration.as_secs(),
        max_redirects: d.max_redirects,
        net: crate::net::NetParams {
            connect_timeout: d.connect_timeout,
            read_timeout: d.read_timeout,
            ..crate::net::NetParams::default()
        },
        guard,
        ytdlp_path: d.ytdlp_path.clone(),
        ytdlp_timeout: d.ytdlp_timeout,
        cookies_file: d.cookies_file.clone(),
        ytdlp_hosts: d.ytdlp_hosts.clone(),
    })
}

fn notify_params(config: &Config) -> Result<NotifyParams, StartError> {
    let n = &config.notify;
    let guard = crate::net::NetGuard::new(&n.allow_private)
        .map_err(|error| StartError::Config(format!("notify.allow_private: {error}")))?;
    Ok(NotifyParams {
        webhook_secret: n.webhook_secret.clone().unwrap_or_default(),
        webhook_timeout: n.webhook_timeout,
        guard,
        smtp: n.smtp.clone(),
        public_url: config.public_url(),
    })
}
