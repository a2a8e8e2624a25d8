//! The peer cluster: membership, failure detection, job-log replication and takeover.
//!
//! Every node runs a `ractor_cluster` [`NodeServer`] (transport, cookie handshake, process
//! groups) and, on top of it, what ractor_cluster leaves out:
//!
//! - **Membership.** A dial loop connects to the seeds and (with `discover`) to every member a
//!   peer reports, with capped exponential backoff per address and never while a dial to that
//!   address is still in its handshake window; so a restarted node rejoins by itself and any
//!   one seed leads to a full mesh. Mesh building never relies on ractor's transitive mode,
//!   which would dial the addresses peers *listen* on instead of the ones they advertise.
//! - **Failure detection.** A closed session marks its member down at once (a crash is seen
//!   within milliseconds). Every `heartbeat_interval` each peer's [`Peer`] actor is pinged;
//!   no answer for `suspect_after` makes it suspect (no new work), for `down_after` down: its
//!   session is closed, so its workers leave the process groups and steps in flight there fail
//!   and are placed elsewhere.
//! - **Replication.** The owner of a job copies its whole log to `replication_factor - 1`
//!   live peers, ranked by rendezvous hashing, after every durable change and before the
//!   submission is acknowledged ([`Replicator`]). A copy carries the owner's epoch; a node
//!   holding a higher one refuses, which fences an owner that was presumed dead.
//! - **Takeover.** When a member is down, each node looks at the unfinished jobs it holds a
//!   copy of whose owner that was; the live node ranked first for a job (rendezvous) takes it
//!   over: it gathers the freshest copy from the live peers, records itself as owner with the
//!   next epoch, and resumes the saga from the last completed step.
//! - **Drain.** A draining node takes no new work and hands each job it owns to its successor.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::node::NodeServerSessionInformation;
use ractor_cluster::{
    NodeEventSubscription, NodeServer, NodeServerMessage, NodeSessionMessage, RactorClusterMessage,
};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use ytcaption_protocol::cluster::{
    JobCopy, JobOp, OpError, PeerAnswer, PeerInfo, PeerRequest, Replicate, ReplicateAnswer,
    RoleLoad,
};
use ytcaption_protocol::{wire, Event, JobId, JobState};

use crate::job_manager::{current_job_manager, JobError, JobManagerMsg};
use crate::metrics::Metrics;
use crate::saga::now_ms;
use crate::storage::peers::{PeerDirectory, PeerEndpoint};
use crate::storage::Storage;
use crate::store::{Replicator, Store, StoreError};
use crate::worker::WorkerShared;

/// The reason code of a step refused because a newer owner drives its job.
pub const STALE_EPOCH: &str = "cluster.stale_epoch";
/// Concurrent requests from peers being handled at once; more are refused (the peer retries).
const MAX_PEER_REQUESTS: usize = 1024;

fn peer_group(name: &str) -> String {
    format!("ytcaption.peer/{name}")
}

/// The cluster's settings, from the `cluster` section of the configuration.
#[derive(Debug, Clone)]
pub struct ClusterParams {
    pub name: String,
    pub listen: SocketAddr,
    pub advertise: String,
    pub http_url: String,
    pub seeds: Vec<String>,
    pub cookie: String,
    pub discover: bool,
    pub replication_factor: usize,
    pub heartbeat_interval: Duration,
    pub suspect_after: Duration,
    pub down_after: Duration,
    pub reconnect_base: Duration,
    pub reconnect_cap: Duration,
    pub call_timeout: Duration,
    pub max_queued: usize,
    pub max_in_flight_per_peer: usize,
    /// Worker roles (process-group names) this node runs, with their worker counts.
    pub workers: Vec<(&'static str, u32)>,
    /// TLS for cluster links; `None`: plain TCP.
    pub tls: Option<ClusterTls>,
}

/// TLS for cluster links: what this node accepts with and dials with.
#[derive(Clone)]
pub struct ClusterTls {
    acceptor: tokio_rustls::TlsAcceptor,
    connector: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterTls")
    }
}

impl ClusterTls {
    /// Loads this node's certificate chain and key and the CA peers' certificates chain to
    /// (PEM files).
    pub fn from_files(
        cert: &std::path::Path,
        key: &std::path::Path,
        ca: &std::path::Path,
    ) -> Result<ClusterTls, ClusterError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let read_certs =
            |path: &std::path::Path| -> Result<Vec<CertificateDer<'static>>, ClusterError> {
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                    .map_err(|e| ClusterError(format!("{}: {e}", path.display())))?;
                if certs.is_empty() {
                    return Err(ClusterError(format!("{}: no certificate", path.display())));
                }
                Ok(certs)
            };
        let chain = read_certs(cert)?;
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| ClusterError(format!("{}: {e}", key.display())))?;
        let mut roots = rustls::RootCertStore::empty();
        for ca_cert in read_certs(ca)? {
            roots
                .add(ca_cert)
                .map_err(|e| ClusterError(format!("{}: {e}", ca.display())))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ClusterError(format!("TLS: {e}")))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| ClusterError(format!("{}: {e}", cert.display())))?;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ClusterError(format!("TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(ClusterTls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
            connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    Alive,
    Suspect,
    Down,
}

impl MemberState {
    fn as_str(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Down => "down",
        }
    }
}

/// What this node knows of one peer.
#[derive(Debug, Clone, Serialize)]
pub struct Member {
    pub name: String,
    pub state: MemberState,
    /// When the state last changed (ms since the epoch).
    pub since_ms: u64,
    /// The last heartbeat answer.
    pub last_heard_ms: u64,
    pub cluster_addr: String,
    pub http_url: String,
    pub draining: bool,
    pub workers: Vec<RoleLoad>,
    pub owned_active: u64,
    pub started_ms: u64,
    /// Why it was last marked down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub down_reason: Option<String>,
}

#[derive(Debug)]
struct Session {
    name: String,
    actor: ActorRef<NodeSessionMessage>,
    peer_addr: String,
    connection_string: String,
}

#[derive(Debug, Default)]
struct Dial {
    /// A dial started and its handshake may still be running until then.
    busy_until_ms: u64,
    /// No dial before then (backoff).
    next_ms: u64,
    failures: u32,
}

#[derive(Debug, Default)]
struct View {
    members: BTreeMap<String, Member>,
    sessions: HashMap<u64, Session>,
    /// Sessions authenticated but not ready yet, by session id: the peer's short name.
    pending: HashMap<u64, String>,
    dials: HashMap<String, Dial>,
    /// Member addresses peers told us about.
    heard_of: HashMap<String, String>,
    /// The node each dialled address led to (a proxy's address differs from what the node
    /// advertises), so a connected node is not dialled again through another address.
    dialled: HashMap<String, String>,
    /// The dial target each resolved address came from (learned by the dial task), to fill
    /// `dialled` from the sessions those dials opened.
    dial_targets: HashMap<String, String>,
    /// Sessions found ready but never announced at the last reconcile (see
    /// [`Cluster::adopt_unannounced`]), by session id.
    unannounced: HashSet<u64>,
    /// When this node last lost its last live peer.
    isolated_since_ms: Option<u64>,
    /// When this node last went from a minority back to a majority (see [`quorum`]).
    majority_since_ms: u64,
    minority: bool,
    /// When the heartbeat last ticked (a long gap: this process was frozen).
    last_tick_ms: u64,
}

impl View {
    /// See [`Cluster::has_quorum`].
    fn has_quorum(&self) -> bool {
        let alive = self
            .members
            .values()
            .filter(|m| m.state == MemberState::Alive)
            .count();
        quorum(self.members.len(), alive)
    }

    /// Notes which node a dial target leads to, from a session our dial opened that got as
    /// far as learning the peer's name: the session that survives between two nodes may be
    /// the one the peer dialled, whose addresses are not the target, and without this the
    /// target would be dialled again every backoff period for ever (each dial a new session
    /// the peer must refuse or, when its random connection id wins the duplicate election,
    /// one that replaces the working session).
    fn learn_dialled(&mut self, session: &NodeServerSessionInformation) {
        if session.is_server {
            return;
        }
        let Some(name) = session.peer_name.as_ref() else {
            return;
        };
        if let Some(target) = self.dial_targets.get(&session.peer_addr).cloned() {
            self.dialled
                .insert(target, short_name(&name.name).to_owned());
        }
    }

    /// Whether a session to `name` is ready or authenticated.
    fn connected_to(&self, name: &str) -> bool {
        self.sessions
            .values()
            .map(|session| &session.name)
            .chain(self.pending.values())
            .any(|other| other == name)
    }

    /// Notes a move between the minority and the majority side after a membership change.
    fn note_majority(&mut self, now: u64) {
        let minority = !self.has_quorum();
        if self.minority && !minority {
            self.majority_since_ms = now;
        }
        self.minority = minority;
    }
}

/// The cluster as one node sees it; shared by the saga, the JobManager, the HTTP layer.
#[derive(Debug)]
pub struct Cluster {
    params: ClusterParams,
    started_ms: u64,
    server: ActorRef<NodeServerMessage>,
    view: Mutex<View>,
    draining: AtomicBool,
    store: Store,
    storage: Storage,
    metrics: Arc<Metrics>,
    workers: Arc<WorkerShared>,
    /// Fired when a member goes down or comes back (takeover, placement).
    changed: Notify,
    /// True once the node has met a peer, or waited long enough for one: until then, jobs
    /// this node owned before a restart are not resumed (a newer owner may exist).
    settled: watch::Sender<bool>,
    requests: Arc<Semaphore>,
}

impl Member {
    /// A member first met (its session ready) at `now`.
    fn met(name: &str, now: u64) -> Member {
        Member {
            name: name.to_owned(),
            state: MemberState::Alive,
            since_ms: now,
            last_heard_ms: now,
            cluster_addr: String::new(),
            http_url: String::new(),
            draining: false,
            workers: Vec::new(),
            owned_active: 0,
            started_ms: 0,
            down_reason: None,
        }
    }
}

/// Why the cluster could not start.
#[derive(Debug, thiserror::Error)]
#[error("cluster: {0}")]
pub struct ClusterError(String);

#[derive(Debug)]
enum SessionEvent {
    /// Authenticated, not ready yet: ractor_cluster closes a duplicate older session to the
    /// same node right after this, before the new one is ready.
    Authenticated(NodeServerSessionInformation),
    Ready(NodeServerSessionInformation),
    Down(NodeServerSessionInformation),
}

struct Subscription(mpsc::UnboundedSender<SessionEvent>);

impl NodeEventSubscription for Subscription {
    fn node_session_opened(&self, _session: NodeServerSessionInformation) {}

    fn node_session_disconnected(&self, session: NodeServerSessionInformation) {
        let _ = self.0.send(SessionEvent::Down(session));
    }

    fn node_session_authenticated(&self, session: NodeServerSessionInformation) {
        let _ = self.0.send(SessionEvent::Authenticated(session));
    }

    fn node_session_ready(&self, session: NodeServerSessionInformation) {
        let _ = self.0.send(SessionEvent::Ready(session));
    }
}

/// A closed session makes its member down only if no new session to it is up this soon
/// after (the peer may have closed it as a duplicate of one still authenticating here).
const SESSION_CLOSE_GRACE: Duration = Duration::from_millis(300);

/// Members down this long are forgotten: they no longer count towards the majority.
const FORGET_DOWN_AFTER_MS: u64 = 10 * 60 * 1000;
/// How often sessions are reconciled with the node server's (see
/// [`Cluster::adopt_unannounced`]).
const RECONCILE_EVERY: Duration = Duration::from_secs(2);
/// The node server and a session actor answer at once unless the process is starved.
const RECONCILE_CALL_TIMEOUT: Duration = Duration::from_secs(1);
/// Resolved dial addresses remembered; a churning DNS answer cannot grow the map for ever.
const MAX_DIAL_TARGETS: usize = 1024;

/// Whether a node that knows `peers` other members and sees `alive` of them is among a
/// majority (always, with fewer than two peers).
fn quorum(peers: usize, alive: usize) -> bool {
    peers < 2 || (alive + 1) * 2 > peers + 1
}

/// Rendezvous (highest random weight) score of `node` for `job`.
fn score(job: &JobId, node: &str) -> u64 {
    let digest = Sha256::new()
        .chain_update(job.as_str())
        .chain_update([0u8])
        .chain_update(node)
        .finalize();
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(bytes)
}

/// `nodes` ordered by rendezvous score for `job`, best first.
pub fn rank<'a>(job: &JobId, nodes: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let mut ranked: Vec<(u64, &str)> = nodes.into_iter().map(|n| (score(job, n), n)).collect();
    ranked.sort_by(|a, b| b.cmp(a));
    ranked.into_iter().map(|(_, n)| n).collect()
}

fn lock(view: &Mutex<View>) -> MutexGuard<'_, View> {
    view.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The node name in a ractor `name@host` string.
fn short_name(full: &str) -> &str {
    full.split_once('@').map_or(full, |(name, _)| name)
}

impl Cluster {
    /// Starts the node server, the peer actor and the background loops.
    pub async fn start(
        params: ClusterParams,
        store: Store,
        storage: Storage,
        metrics: Arc<Metrics>,
        workers: Arc<WorkerShared>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let host = params
            .advertise
            .rsplit_once(':')
            .map_or(params.advertise.as_str(), |(host, _)| host)
            .to_owned();
        let server = NodeServer::new(
            params.listen.port(),
            params.cookie.clone(),
            params.name.clone(),
            host,
            params
                .tls
                .as_ref()
                .map(|tls| ractor_cluster::IncomingEncryptionMode::Tls(tls.acceptor.clone())),
            Some(ractor_cluster::node::NodeConnectionMode::Isolated),
        )
        .with_listen_addr(params.listen.ip())
        .with_max_inbound_frame_size((wire::MAX_MESSAGE_BYTES as u64) * 2);
        let (server, _) = Actor::spawn(Some("cluster-node-server".into()), server, ())
            .await
            .map_err(|error| ClusterError(format!("node server: {error}")))?;
        let (events, mut incoming) = mpsc::unbounded_channel();
        server
            .cast(NodeServerMessage::SubscribeToEvents {
                id: "ytcaption-membership".into(),
                subscription: Box::new(Subscription(events)),
            })
            .map_err(|error| ClusterError(format!("subscribe: {error}")))?;
        let cluster = Arc::new(Cluster {
            started_ms: now_ms(),
            server,
            view: Mutex::default(),
            draining: AtomicBool::new(false),
            store: store.clone(),
            storage,
            metrics,
            workers,
            changed: Notify::new(),
            settled: watch::channel(params.seeds.is_empty()).0,
            requests: Arc::new(Semaphore::new(MAX_PEER_REQUESTS)),
            params,
        });
        let (_peer, _) = Actor::spawn(
            Some(format!("peer-{}", cluster.params.name)),
            Peer,
            cluster.clone(),
        )
        .await
        .map_err(|error| ClusterError(format!("peer actor: {error}")))?;
        store.set_replicator(cluster.clone());

        let sessions = cluster.clone();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    event = incoming.recv() => match event {
                        Some(event) => sessions.session_event(event),
                        None => break,
                    },
                    _ = stop.changed() => break,
                }
            }
        });
        let ticker = cluster.clone();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(ticker.params.heartbeat_interval);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = interval.tick() => ticker.tick(),
                    _ = stop.changed() => break,
                }
            }
        });
        let reconciler = cluster.clone();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(RECONCILE_EVERY);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = interval.tick() => reconciler.adopt_unannounced().await,
                    _ = stop.changed() => break,
                }
            }
        });
        let settle = cluster.clone();
        tokio::spawn(async move {
            // Met a peer, or waited for one as long as a peer takes to be declared down.
            let deadline = tokio::time::Instant::now() + settle.params.down_after * 2;
            loop {
                if settle.alive_peers() > 0 || tokio::time::Instant::now() >= deadline {
                    let _ = settle.settled.send(true);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let takeover = cluster.clone();
        let mut stop = shutdown;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = takeover.changed.notified() => {}
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => break,
                }
                if *takeover.settled.borrow() {
                    takeover.take_over_orphans().await;
                }
            }
        });
        tracing::info!(
            node = %cluster.params.name,
            listen = %cluster.params.listen,
            advertise = %cluster.params.advertise,
            seeds = ?cluster.params.seeds,
            "cluster started"
        );
        Ok(cluster)
    }

    pub fn name(&self) -> &str {
        &self.params.name
    }

    pub fn params(&self) -> &ClusterParams {
        &self.params
    }

    /// Resolves once start-up may resume the jobs this node owned.
    pub async fn wait_settled(&self) {
        let mut settled = self.settled.subscribe();
        let _ = settled.wait_for(|done| *done).await;
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Starts or stops draining this node; draining hands every job it owns over.
    pub fn set_draining(self: &Arc<Self>, on: bool) {
        let was = self.draining.swap(on, Ordering::Relaxed);
        tracing::info!(draining = on, "drain state changed");
        if on && !was {
            let cluster = self.clone();
            tokio::spawn(async move { cluster.hand_over_all().await });
        }
    }

    fn info(&self) -> PeerInfo {
        let view = lock(&self.view);
        PeerInfo {
            name: self.params.name.clone(),
            cluster_addr: self.params.advertise.clone(),
            http_url: self.params.http_url.clone(),
            draining: self.draining(),
            workers: self
                .params
                .workers
                .iter()
                .map(|(role, total)| RoleLoad {
                    role: (*role).to_owned(),
                    idle: total.saturating_sub(self.workers.busy(role)),
                    total: *total,
                })
                .collect(),
            owned_active: (self.metrics.active_jobs.get() + self.metrics.queue_depth.get()).max(0)
                as u64,
            members: view
                .members
                .values()
                .filter(|member| member.state != MemberState::Down)
                .map(|member| (member.name.clone(), member.cluster_addr.clone()))
                .collect(),
            started_ms: self.started_ms,
        }
    }

    /// Members, for the admin endpoint.
    pub fn members(&self) -> Vec<Member> {
        lock(&self.view).members.values().cloned().collect()
    }

    /// The admin view of the cluster.
    pub fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "node": self.params.name,
            "advertise": self.params.advertise,
            "draining": self.draining(),
            "replication_factor": self.params.replication_factor,
            "members": self.members(),
        })
    }

    /// True unless this node is on the minority side of a cluster of three or more: it sees
    /// a majority of the members it knows (itself included) alive. In a pair there is no
    /// majority to be had, and each side carries on alone.
    pub fn has_quorum(&self) -> bool {
        lock(&self.view).has_quorum()
    }

    /// Peers that answer heartbeats.
    pub fn alive_peers(&self) -> usize {
        lock(&self.view)
            .members
            .values()
            .filter(|member| member.state == MemberState::Alive)
            .count()
    }

    fn alive_names(&self, include_draining: bool) -> Vec<String> {
        lock(&self.view)
            .members
            .values()
            .filter(|member| {
                member.state == MemberState::Alive && (include_draining || !member.draining)
            })
            .map(|member| member.name.clone())
            .collect()
    }

    /// Members seen down now (they may hold blob copies a purge cannot reach).
    pub fn down_names(&self) -> Vec<String> {
        lock(&self.view)
            .members
            .values()
            .filter(|member| member.state == MemberState::Down)
            .map(|member| member.name.clone())
            .collect()
    }

    /// Whether blobs live on each node (local storage) rather than in one shared bucket.
    pub fn local_blobs(&self) -> bool {
        matches!(self.storage, Storage::Local(..))
    }

    /// The name of the node an actor runs on (`None`: a session we know nothing of).
    pub fn node_of(&self, cell: &ActorCell) -> Option<String> {
        let id = cell.get_id();
        if id.is_local() {
            return Some(self.params.name.clone());
        }
        lock(&self.view)
            .sessions
            .get(&id.node())
            .map(|session| session.name.clone())
    }

    /// Whether new work may go to `node`, and its idle workers of `role` as last reported.
    pub fn placeable(&self, node: &str, role: &str) -> Option<u32> {
        if node == self.params.name {
            let total = self
                .params
                .workers
                .iter()
                .find(|(r, _)| *r == role)
                .map_or(0, |(_, total)| *total);
            return (!self.draining()).then(|| total.saturating_sub(self.workers.busy(role)));
        }
        let view = lock(&self.view);
        let member = view.members.get(node)?;
        if member.state != MemberState::Alive || member.draining {
            return None;
        }
        Some(
            member
                .workers
                .iter()
                .find(|load| load.role == role)
                .map_or(0, |load| load.idle),
        )
    }

    /// Jobs waiting or running across the cluster, as last reported (this node: now).
    pub fn cluster_queued(&self) -> usize {
        let mine = (self.metrics.active_jobs.get() + self.metrics.queue_depth.get()).max(0) as u64;
        let others: u64 = lock(&self.view)
            .members
            .values()
            .filter(|member| member.state != MemberState::Down)
            .map(|member| member.owned_active)
            .sum();
        (mine + others) as usize
    }

    pub fn max_queued(&self) -> usize {
        self.params.max_queued
    }

    // ---- membership ------------------------------------------------------------------------

    fn session_event(self: &Arc<Self>, event: SessionEvent) {
        let now = now_ms();
        let mut view = lock(&self.view);
        match &event {
            SessionEvent::Authenticated(session)
            | SessionEvent::Ready(session)
            | SessionEvent::Down(session) => view.learn_dialled(session),
        }
        match event {
            SessionEvent::Authenticated(session) => {
                if let Some(name) = session.peer_name.as_ref() {
                    view.pending
                        .insert(session.node_id, short_name(&name.name).to_owned());
                }
                return;
            }
            SessionEvent::Ready(session) => {
                view.pending.remove(&session.node_id);
                let Some(name) = session.peer_name.as_ref() else {
                    return;
                };
                let full = name.name.clone();
                let name_short = short_name(&full).to_owned();
                let connection_string = name.connection_string.clone();
                tracing::info!(peer = %name_short, addr = %session.peer_addr, "cluster session ready");
                for dial in view
                    .dials
                    .iter_mut()
                    .filter(|(addr, _)| **addr == session.peer_addr || **addr == connection_string)
                {
                    dial.1.failures = 0;
                    dial.1.busy_until_ms = 0;
                }
                view.sessions.insert(
                    session.node_id,
                    Session {
                        name: name_short.clone(),
                        actor: session.actor.clone(),
                        peer_addr: session.peer_addr.clone(),
                        connection_string,
                    },
                );
                let member = view
                    .members
                    .entry(name_short.clone())
                    .or_insert_with(|| Member::met(&name_short, now));
                member.last_heard_ms = now;
                if member.state != MemberState::Alive {
                    member.state = MemberState::Alive;
                    member.since_ms = now;
                    member.down_reason = None;
                }
                view.isolated_since_ms = None;
            }
            SessionEvent::Down(session) => {
                let pending = view.pending.remove(&session.node_id);
                let Some(closed) = view
                    .sessions
                    .remove(&session.node_id)
                    .map(|closed| closed.name)
                    .or(pending)
                else {
                    return;
                };
                // Another session to the same node may still be open, or about to be ready
                // (simultaneous dials: the older session is closed as a duplicate).
                if view.connected_to(&closed) {
                    tracing::debug!(peer = %closed, "cluster session replaced");
                    return;
                }
                // Suspect at once (no new work goes there), down unless a new session is up
                // within the grace: the peer may have closed this one as a duplicate of one
                // our dial is still authenticating.
                tracing::warn!(peer = %closed, "cluster session closed");
                if let Some(member) = view.members.get_mut(&closed) {
                    if member.state == MemberState::Alive {
                        member.state = MemberState::Suspect;
                        member.since_ms = now;
                    }
                }
                let cluster = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(SESSION_CLOSE_GRACE).await;
                    let now = now_ms();
                    {
                        let mut view = lock(&cluster.view);
                        if view.connected_to(&closed) {
                            return;
                        }
                        cluster.mark_down(&mut view, &closed, "connection closed", now);
                        view.note_majority(now);
                    }
                    cluster.publish_members();
                    cluster.changed.notify_waiters();
                });
            }
        }
        view.note_majority(now);
        drop(view);
        self.publish_members();
        self.changed.notify_waiters();
    }

    fn mark_down(&self, view: &mut View, name: &str, reason: &str, now: u64) {
        let Some(member) = view.members.get_mut(name) else {
            return;
        };
        if member.state == MemberState::Down {
            return;
        }
        let silent_ms = now.saturating_sub(member.last_heard_ms);
        member.state = MemberState::Down;
        member.since_ms = now;
        member.down_reason = Some(reason.to_owned());
        self.metrics
            .detection_seconds
            .observe(silent_ms as f64 / 1000.0);
        tracing::warn!(peer = %name, reason, silent_ms, "cluster member down");
        if !view
            .members
            .values()
            .any(|member| member.state != MemberState::Down)
        {
            view.isolated_since_ms = Some(now);
        }
    }

    fn publish_members(&self) {
        let view = lock(&self.view);
        for state in [MemberState::Alive, MemberState::Suspect, MemberState::Down] {
            let count = view.members.values().filter(|m| m.state == state).count();
            self.metrics
                .members
                .with_label_values(&[state.as_str()])
                .set(count as i64);
        }
    }

    /// One heartbeat period: ping, judge silence, dial what is missing.
    fn tick(self: &Arc<Self>) {
        let now = now_ms();
        let suspect = self.params.suspect_after.as_millis() as u64;
        let down = self.params.down_after.as_millis() as u64;
        let mut to_close = Vec::new();
        let mut to_ping = Vec::new();
        let mut changed = false;
        {
            let mut view = lock(&self.view);
            // A node that was itself frozen (SIGSTOP, a VM pause, swapping) heard nothing
            // meanwhile: that silence is its own, so its peers get a fresh window instead of
            // being declared down on resume (a resumed node took over a live peer's jobs).
            let gap = now.saturating_sub(view.last_tick_ms);
            let stalled_after =
                (down / 2).max(4 * self.params.heartbeat_interval.as_millis() as u64);
            if view.last_tick_ms != 0 && gap > stalled_after {
                tracing::warn!(
                    gap_ms = gap,
                    "this node was frozen; peers get a fresh heartbeat window"
                );
                for member in view.members.values_mut() {
                    if member.state != MemberState::Down {
                        member.last_heard_ms = now;
                    }
                }
            }
            view.last_tick_ms = now;
            let names: Vec<String> = view.members.keys().cloned().collect();
            for name in names {
                let Some(member) = view.members.get(&name) else {
                    continue;
                };
                if member.state == MemberState::Down {
                    continue;
                }
                let silent = now.saturating_sub(member.last_heard_ms);
                if silent > down {
                    to_close.extend(
                        view.sessions
                            .iter()
                            .filter(|(_, s)| s.name == name)
                            .map(|(sid, s)| (*sid, s.actor.clone())),
                    );
                    self.mark_down(&mut view, &name, "no heartbeat answer", now);
                    changed = true;
                    continue;
                }
                if silent > suspect && member.state == MemberState::Alive {
                    if let Some(member) = view.members.get_mut(&name) {
                        member.state = MemberState::Suspect;
                        member.since_ms = now;
                        tracing::warn!(peer = %name, silent_ms = silent, "cluster member suspect");
                        changed = true;
                    }
                }
                to_ping.push(name);
            }
            for (sid, _) in &to_close {
                view.sessions.remove(sid);
            }
            let before = view.members.len();
            view.members.retain(|_, member| {
                member.state != MemberState::Down
                    || now.saturating_sub(member.since_ms) < FORGET_DOWN_AFTER_MS
            });
            changed |= view.members.len() != before;
            view.note_majority(now);
        }
        for (_, actor) in to_close {
            actor.stop(Some("heartbeat timeout".into()));
        }
        if changed {
            self.publish_members();
            self.changed.notify_waiters();
        }
        let info = self.info();
        for name in to_ping {
            let Some(peer) = self.peer_actor(&name) else {
                continue;
            };
            let cluster = self.clone();
            let info = info.clone();
            tokio::spawn(async move {
                let timeout = cluster.params.down_after;
                if let Some(PeerAnswer::Pong(theirs)) =
                    call_peer(&peer, &PeerRequest::Ping(info), timeout, &cluster.metrics).await
                {
                    cluster.heard(theirs);
                }
            });
        }
        self.dial_missing(now);
    }

    /// A heartbeat answer or a ping: the peer is alive, with this load.
    fn heard(self: &Arc<Self>, info: PeerInfo) {
        let now = now_ms();
        let mut came_back = false;
        {
            let mut view = lock(&self.view);
            for (name, addr) in &info.members {
                if *name != self.params.name {
                    view.heard_of.insert(name.clone(), addr.clone());
                }
            }
            view.heard_of
                .insert(info.name.clone(), info.cluster_addr.clone());
            let connected = view.sessions.values().any(|s| s.name == info.name);
            let Some(member) = view.members.get_mut(&info.name) else {
                return;
            };
            if !connected {
                return;
            }
            member.last_heard_ms = now;
            if member.state != MemberState::Alive {
                tracing::info!(peer = %info.name, "cluster member alive again");
                member.state = MemberState::Alive;
                member.since_ms = now;
                member.down_reason = None;
                came_back = true;
            }
            member.cluster_addr = info.cluster_addr;
            member.http_url = info.http_url;
            member.draining = info.draining;
            member.workers = info.workers;
            member.owned_active = info.owned_active;
            member.started_ms = info.started_ms;
            if came_back {
                view.note_majority(now);
            }
        }
        if came_back {
            self.publish_members();
            self.changed.notify_waiters();
        }
    }

    /// Adopts sessions the node server holds ready but never announced. ractor_cluster sends
    /// its ready notice only for the session its duplicate election prefers at that moment,
    /// so a session that became ready while a duplicate was still being decided can be the
    /// one left and stay unannounced: the peer then counts this node alive (its pings are
    /// answered over that session) while this node never lists the peer, and the mesh never
    /// forms (seen once in CI, for 30 s). A session seen so at two reconciles in a row (not
    /// one in the middle of an election) is taken as ready.
    async fn adopt_unannounced(self: &Arc<Self>) {
        let sessions = match self
            .server
            .call(NodeServerMessage::GetSessions, Some(RECONCILE_CALL_TIMEOUT))
            .await
        {
            Ok(ractor::rpc::CallResult::Success(sessions)) => sessions,
            _ => return,
        };
        let mut unannounced = HashSet::new();
        for session in sessions.into_values() {
            if session.peer_name.is_none()
                || lock(&self.view).sessions.contains_key(&session.node_id)
            {
                continue;
            }
            let ready = matches!(
                session
                    .actor
                    .call(
                        NodeSessionMessage::GetReadyState,
                        Some(RECONCILE_CALL_TIMEOUT)
                    )
                    .await,
                Ok(ractor::rpc::CallResult::Success(true))
            );
            if !ready {
                continue;
            }
            let seen_before = lock(&self.view).unannounced.contains(&session.node_id);
            unannounced.insert(session.node_id);
            if seen_before {
                let peer = session
                    .peer_name
                    .as_ref()
                    .map(|name| short_name(&name.name).to_owned());
                tracing::warn!(peer = ?peer, addr = %session.peer_addr, "cluster session ready but never announced; adopted");
                self.session_event(SessionEvent::Ready(session));
            }
        }
        lock(&self.view).unannounced = unannounced;
    }

    fn dial_missing(self: &Arc<Self>, now: u64) {
        let mut targets: Vec<String> = self.params.seeds.clone();
        let mut view = lock(&self.view);
        if self.params.discover {
            targets.extend(view.heard_of.values().cloned());
        }
        targets.sort();
        targets.dedup();
        let connected: HashSet<String> = view
            .sessions
            .values()
            .flat_map(|s| [s.peer_addr.clone(), s.connection_string.clone()])
            .chain(
                view.members
                    .values()
                    .filter(|m| m.state != MemberState::Down)
                    .map(|m| m.cluster_addr.clone()),
            )
            .collect();
        let handshake = (self.params.down_after.as_millis() as u64).max(1000);
        for target in targets {
            let reached = view
                .dialled
                .get(&target)
                .is_some_and(|name| view.connected_to(name));
            if target == self.params.advertise || connected.contains(&target) || reached {
                continue;
            }
            let dial = view.dials.entry(target.clone()).or_default();
            if now < dial.busy_until_ms || now < dial.next_ms {
                continue;
            }
            // The previous dial's handshake window passed without a session: back off.
            if dial.busy_until_ms != 0 {
                dial.failures = dial.failures.saturating_add(1);
            }
            let backoff = (self.params.reconnect_base.as_millis() as u64)
                .saturating_mul(1 << dial.failures.min(16))
                .min(self.params.reconnect_cap.as_millis() as u64);
            dial.busy_until_ms = now + handshake;
            dial.next_ms = now + backoff;
            let server = self.server.clone();
            let tls = self.params.tls.clone();
            let cluster = self.clone();
            tokio::spawn(async move {
                let connect = async {
                    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&target)
                        .await
                        .map(Iterator::collect)
                        .unwrap_or_default();
                    {
                        let mut view = lock(&cluster.view);
                        if view.dial_targets.len() + addrs.len() > MAX_DIAL_TARGETS {
                            view.dial_targets.clear();
                        }
                        for addr in &addrs {
                            view.dial_targets.insert(addr.to_string(), target.clone());
                        }
                    }
                    let host = target
                        .rsplit_once(':')
                        .map_or(target.as_str(), |(host, _)| host)
                        .trim_matches(|c| c == '[' || c == ']')
                        .to_owned();
                    for addr in addrs {
                        let connected = match &tls {
                            None => ractor_cluster::client_connect(&server, addr).await,
                            Some(tls) => {
                                let Ok(name) =
                                    rustls::pki_types::ServerName::try_from(host.clone())
                                else {
                                    tracing::warn!(%target, "not a TLS server name");
                                    return false;
                                };
                                ractor_cluster::client_connect_enc(
                                    &server,
                                    addr,
                                    tls.connector.clone(),
                                    name,
                                )
                                .await
                            }
                        };
                        match connected {
                            Ok(()) => return true,
                            Err(error) => tracing::debug!(%target, %error, "cluster dial failed"),
                        }
                    }
                    false
                };
                match tokio::time::timeout(Duration::from_secs(2), connect).await {
                    Ok(true) => tracing::debug!(%target, "cluster dial connected"),
                    _ => tracing::debug!(%target, "cluster dial failed"),
                }
            });
        }
    }

    fn peer_actor(&self, name: &str) -> Option<ActorRef<PeerMsg>> {
        ractor::pg::get_members(&peer_group(name))
            .into_iter()
            .find(|cell| !cell.get_id().is_local())
            .map(ActorRef::from)
    }

    async fn ask(&self, name: &str, request: &PeerRequest) -> Option<PeerAnswer> {
        let peer = self.peer_actor(name)?;
        call_peer(&peer, request, self.params.call_timeout, &self.metrics).await
    }

    // ---- jobs across nodes -----------------------------------------------------------------

    /// The freshest copy of a job among live peers (highest epoch, then longest log).
    pub async fn lookup(&self, id: &JobId) -> Option<JobCopy> {
        let names = self.alive_names(true);
        let asks = names.iter().map(|name| async move {
            match self.ask(name, &PeerRequest::Lookup(id.clone())).await {
                Some(PeerAnswer::Found(Some(copy))) => Some(*copy),
                _ => None,
            }
        });
        futures_util::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .max_by_key(|copy| (copy.state.epoch, copy.state.events))
    }

    /// Runs a cancel, retry or delete at the job's owner.
    pub async fn forward(&self, owner: &str, id: &JobId, op: JobOp) -> Result<JobState, JobError> {
        match self.ask(owner, &PeerRequest::Forward(id.clone(), op)).await {
            Some(PeerAnswer::Done(Ok(state))) => Ok(*state),
            Some(PeerAnswer::Done(Err(OpError::NotFound))) => Err(JobError::NotFound),
            Some(PeerAnswer::Done(Err(OpError::Conflict(message)))) => {
                Err(JobError::Conflict(message))
            }
            Some(PeerAnswer::Done(Err(OpError::Unavailable(message)))) => {
                Err(JobError::Store(message))
            }
            _ => Err(JobError::Store(format!(
                "the job's owner {owner} did not answer; retry"
            ))),
        }
    }

    /// Asks `node` to start or stop draining.
    pub async fn drain(self: &Arc<Self>, node: &str, on: bool) -> Result<(), String> {
        if node == self.params.name {
            self.set_draining(on);
            return Ok(());
        }
        match self.ask(node, &PeerRequest::Drain(on)).await {
            Some(PeerAnswer::Draining(now)) if now == on => Ok(()),
            _ => Err(format!("node {node} did not answer")),
        }
    }

    async fn push(&self, name: &str, copy: Replicate) -> Option<ReplicateAnswer> {
        match self.ask(name, &PeerRequest::Replicate(copy)).await {
            Some(PeerAnswer::Replicated(answer)) => Some(answer),
            _ => None,
        }
    }

    async fn replicate_owned(
        &self,
        state: &JobState,
        tombstone: Option<&Event>,
        insist: bool,
    ) -> Result<(), StoreError> {
        loop {
            match self.replicate_once(state, tombstone).await {
                // Live peers exist but none answered: a change the owner is about to act on
                // waits (it may be the one cut off, about to learn it was fenced); the view
                // catches up within `down_after`, and then the majority rule decides.
                Err(StoreError::Unreplicated(error)) if insist && self.alive_peers() > 0 => {
                    tracing::debug!(job_id = %state.id, %error, "replication retried");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => return other,
            }
        }
    }

    async fn replicate_once(
        &self,
        state: &JobState,
        tombstone: Option<&Event>,
    ) -> Result<(), StoreError> {
        let want = self.params.replication_factor.saturating_sub(1);
        if want == 0 || state.owner_node.as_deref() != Some(self.name()) {
            return Ok(());
        }
        let events = match tombstone {
            Some(_) => Vec::new(),
            None => self.store.events(&state.id)?,
        };
        let copy = Replicate {
            job_id: state.id.clone(),
            epoch: state.epoch,
            events,
            tombstone: tombstone.cloned(),
        };
        // A node on the minority side of a cluster of three or more changes nothing: the
        // majority takes its jobs over. It waits until it is back among a majority (or
        // learns it was fenced). A node that just lost its only peer waits a little before
        // going on alone: it may be the one cut off (or just resumed from a pause).
        let grace = self.params.down_after.as_millis() as u64 * 2;
        loop {
            if !self.has_quorum() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            let alive = self.alive_names(true);
            if !alive.is_empty() {
                break;
            }
            let isolated_since = lock(&self.view).isolated_since_ms;
            match isolated_since {
                Some(since) if now_ms().saturating_sub(since) < grace => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                _ => return Ok(()),
            }
        }
        let alive = self.alive_names(true);
        let ranked = rank(&state.id, alive.iter().map(String::as_str));
        let mut stored = 0;
        let mut last_error = String::from("no answer");
        for name in ranked {
            if stored == want {
                break;
            }
            match self.push(name, copy.clone()).await {
                Some(ReplicateAnswer::Stored) => {
                    stored += 1;
                    self.metrics
                        .replications
                        .with_label_values(&["stored"])
                        .inc();
                }
                Some(ReplicateAnswer::Stale { owner, epoch }) => {
                    self.metrics
                        .replications
                        .with_label_values(&["stale"])
                        .inc();
                    tracing::warn!(job_id = %state.id, %owner, epoch, "fenced: a newer owner drives this job");
                    self.adopt_from(name, &state.id).await;
                    return Err(StoreError::Fenced { owner, epoch });
                }
                Some(ReplicateAnswer::Failed(error)) => {
                    self.metrics
                        .replications
                        .with_label_values(&["failed"])
                        .inc();
                    last_error = format!("{name}: {error}");
                }
                None => {
                    self.metrics
                        .replications
                        .with_label_values(&["no_answer"])
                        .inc();
                    last_error = format!("{name} did not answer");
                }
            }
        }
        if stored == 0 {
            return Err(StoreError::Unreplicated(last_error));
        }
        Ok(())
    }

    /// Replaces this node's copy of a job with a peer's newer one.
    async fn adopt_from(&self, name: &str, id: &JobId) {
        if let Some(PeerAnswer::Found(Some(copy))) =
            self.ask(name, &PeerRequest::Lookup(id.clone())).await
        {
            if copy.events.is_empty() {
                return;
            }
            if let Err(error) = self.store.adopt((*copy).into()).await {
                tracing::warn!(job_id = %id, %error, "could not adopt the newer copy");
            }
        }
    }

    /// Takes over the unfinished jobs whose owner is down and for which this node ranks first.
    async fn take_over_orphans(self: &Arc<Self>) {
        if self.draining() {
            return;
        }
        let (down, known, alive) = {
            let view = lock(&self.view);
            let down: HashSet<String> = view
                .members
                .values()
                .filter(|m| m.state == MemberState::Down)
                .map(|m| m.name.clone())
                .collect();
            let known: HashSet<String> = view.members.keys().cloned().collect();
            let alive = view
                .members
                .values()
                .filter(|m| m.state == MemberState::Alive)
                .count();
            (down, known, alive)
        };
        // On the minority side of a cluster of three or more: the others decide.
        if !quorum(known.len(), alive) {
            return;
        }
        // Back from the minority side (this node was cut off): what it saw go down meanwhile
        // may be alive, its session not redialled yet. Let the dial loops catch up first.
        let majority_since = lock(&self.view).majority_since_ms;
        if now_ms().saturating_sub(majority_since) < self.params.down_after.as_millis() as u64 {
            return;
        }
        let orphan_grace = self.params.down_after.as_millis() as u64 * 5 + 10_000;
        let never_seen_is_down = now_ms().saturating_sub(self.started_ms) > orphan_grace;
        let me = self.name().to_owned();
        let jobs = match self.store.all_states(|job| {
            !job.is_terminal()
                && job.owner_node.as_ref().is_some_and(|owner| {
                    *owner != me
                        && (down.contains(owner) || (!known.contains(owner) && never_seen_is_down))
                })
        }) {
            Ok(jobs) => jobs,
            Err(error) => {
                tracing::warn!(%error, "takeover: cannot read the job log");
                return;
            }
        };
        if jobs.is_empty() {
            return;
        }
        let mut candidates = self.alive_names(false);
        candidates.push(me.clone());
        for job in jobs {
            let first = rank(&job.id, candidates.iter().map(String::as_str))
                .first()
                .map(|name| (*name).to_owned());
            match first {
                Some(first) if first == me => self.take_over(job, "owner down").await,
                // The node that should take over may hold no copy (membership moved since
                // the owner chose its replicas): give it ours; it takes over at its next scan.
                Some(first) => {
                    if let Ok(events) = self.store.events(&job.id) {
                        let copy = Replicate {
                            job_id: job.id.clone(),
                            epoch: job.epoch,
                            events,
                            tombstone: None,
                        };
                        let _ = self.push(&first, copy).await;
                    }
                }
                None => {}
            }
        }
    }

    /// Whether `owner` is still down (or unknown) in this node's view, with this node among a
    /// majority: checked again just before a takeover is written.
    fn owner_still_lost(&self, owner: Option<&str>) -> bool {
        let view = lock(&self.view);
        view.has_quorum()
            && owner.is_none_or(|owner| {
                view.members
                    .get(owner)
                    .is_none_or(|m| m.state == MemberState::Down)
            })
    }

    /// Makes this node the owner of `job` with the next epoch, from the freshest copy.
    async fn take_over(self: &Arc<Self>, job: JobState, why: &str) {
        let id = job.id.clone();
        let mut epoch = job.epoch;
        if let Some(copy) = self.lookup(&id).await {
            let newer = (copy.state.epoch, copy.state.events) > (job.epoch, job.events);
            if copy.state.epoch > job.epoch {
                // Someone already took it over; keep its copy and let it drive.
                if copy.state.owner_node.as_deref() != job.owner_node.as_deref() {
                    let _ = self.store.adopt(copy.into()).await;
                    return;
                }
            }
            epoch = epoch.max(copy.state.epoch);
            if newer && !copy.events.is_empty() {
                let _ = self.store.adopt(copy.into()).await;
            }
        }
        // The lookup took a round trip: the owner may be back (a replaced session, a restart).
        if !self.owner_still_lost(job.owner_node.as_deref()) {
            tracing::info!(job_id = %id, from = ?job.owner_node, "takeover dropped: the owner is back");
            return;
        }
        let event = Event::Owner {
            node: self.name().to_owned(),
            epoch: epoch + 1,
            at: now_ms(),
        };
        match self.store.append(&id, vec![event]).await {
            Ok(_) => {
                self.metrics.takeovers.inc();
                tracing::warn!(job_id = %id, from = ?job.owner_node, epoch = epoch + 1, why, "took over job");
                if let Some(manager) = current_job_manager() {
                    let _ = manager.cast(JobManagerMsg::Start(id));
                }
            }
            Err(error) => tracing::warn!(job_id = %id, %error, "takeover failed; retried later"),
        }
    }

    /// Draining: hands every unfinished job this node owns to its successor.
    async fn hand_over_all(self: &Arc<Self>) {
        let me = self.name().to_owned();
        let jobs = match self
            .store
            .all_states(|job| !job.is_terminal() && job.owner_node.as_deref() == Some(me.as_str()))
        {
            Ok(jobs) => jobs,
            Err(error) => {
                tracing::warn!(%error, "drain: cannot read the job log");
                return;
            }
        };
        for job in jobs {
            if !self.draining() {
                break;
            }
            let candidates = self.alive_names(false);
            let Some(next) = rank(&job.id, candidates.iter().map(String::as_str))
                .first()
                .map(|name| (*name).to_owned())
            else {
                tracing::warn!("drain: no live node to hand jobs to");
                return;
            };
            let mut events = match self.store.events(&job.id) {
                Ok(events) => events,
                Err(_) => continue,
            };
            events.push(Event::Owner {
                node: next.clone(),
                epoch: job.epoch + 1,
                at: now_ms(),
            });
            let copy = Replicate {
                job_id: job.id.clone(),
                epoch: job.epoch + 1,
                events,
                tombstone: None,
            };
            match self.push(&next, copy.clone()).await {
                Some(ReplicateAnswer::Stored) => {
                    // Our own copy learns the new owner too: the local driver stops.
                    let _ = self.store.adopt(copy).await;
                    tracing::info!(job_id = %job.id, to = %next, "drain: job handed over");
                }
                other => {
                    tracing::warn!(job_id = %job.id, to = %next, answer = ?other, "drain: hand-over failed")
                }
            }
        }
    }

    /// Handles one request from a peer.
    async fn answer(self: &Arc<Self>, request: PeerRequest) -> PeerAnswer {
        match request {
            PeerRequest::Ping(info) => {
                self.heard(info);
                PeerAnswer::Pong(self.info())
            }
            PeerRequest::Replicate(copy) => {
                let id = copy.job_id.clone();
                match self.store.adopt(copy).await {
                    Ok(answer) => {
                        if answer == ReplicateAnswer::Stored {
                            // An upload exists nowhere else: hold a copy before saying so.
                            if let Err(error) = self.copy_blobs(&id, true).await {
                                return PeerAnswer::Replicated(ReplicateAnswer::Failed(
                                    error.to_string(),
                                ));
                            }
                            self.start_if_mine(&id);
                            let cluster = self.clone();
                            tokio::spawn(async move {
                                let _ = cluster.copy_blobs(&id, false).await;
                            });
                        }
                        PeerAnswer::Replicated(answer)
                    }
                    Err(error) => {
                        PeerAnswer::Replicated(ReplicateAnswer::Failed(error.to_string()))
                    }
                }
            }
            PeerRequest::Lookup(id) => {
                let found = match self.store.get(&id) {
                    Ok(Some(state)) => {
                        let events = self.store.events(&id).unwrap_or_default();
                        Some(Box::new(JobCopy { state, events }))
                    }
                    _ => None,
                };
                PeerAnswer::Found(found)
            }
            PeerRequest::Forward(id, op) => PeerAnswer::Done(forward_local(&id, op).await),
            PeerRequest::Drain(on) => {
                self.set_draining(on);
                PeerAnswer::Draining(on)
            }
        }
    }

    /// The owner's copy of a job's stored transcripts (see [`Cluster::copy_blobs`]), taken
    /// before the job notifies: the transcripts then outlive the node that stored them.
    pub async fn hold_stored_blobs(&self, id: &JobId) -> Result<(), BlobCopyError> {
        self.copy_blobs(id, false).await
    }

    /// With local storage, keeps this node's own copy of a job's blobs: the upload
    /// (`uploads_only`), or the transcripts once stored. S3 needs nothing (shared bucket).
    async fn copy_blobs(&self, id: &JobId, uploads_only: bool) -> Result<(), BlobCopyError> {
        if !matches!(self.storage, Storage::Local(..)) {
            return Ok(());
        }
        let Ok(Some(state)) = self.store.get(id) else {
            return Ok(());
        };
        if state.deleted || state.stage == ytcaption_protocol::Stage::Cancelled {
            return Ok(());
        }
        let keys: Vec<String> = if uploads_only {
            match &state.spec.source {
                ytcaption_protocol::Source::Upload { key, .. } => vec![key.clone()],
                ytcaption_protocol::Source::Url { .. } => Vec::new(),
            }
        } else {
            state
                .stored_formats()
                .map(|formats| formats.values().cloned().collect())
                .unwrap_or_default()
        };
        let mut copied = Vec::new();
        let mut result = Ok(());
        for key in keys {
            match self.storage.ensure_local(&key).await {
                Ok(true) => copied.push(key),
                Ok(false) => {
                    result = Err(BlobCopyError::Lost(key));
                    break;
                }
                Err(error) => {
                    result = Err(BlobCopyError::Unavailable(format!(
                        "copying {key}: {error}"
                    )));
                    break;
                }
            }
        }
        // A cancel or delete that purged this node while the copy ran would leave the copy
        // behind: look again, and remove it.
        let gone = self
            .store
            .get(id)
            .ok()
            .flatten()
            .is_none_or(|state| state.blobs_unwanted());
        if gone {
            for key in copied {
                if let Err(error) = self.storage.delete(&key).await {
                    tracing::warn!(job_id = %id, %key, %error, "could not remove a copy made during a cancel");
                }
            }
        }
        result
    }

    /// A copy handed to this node names it as owner: drive it.
    fn start_if_mine(&self, id: &JobId) {
        if let Ok(Some(state)) = self.store.get(id) {
            if !state.is_terminal() && state.owner_node.as_deref() == Some(self.name()) {
                self.metrics.takeovers.inc();
                if let Some(manager) = current_job_manager() {
                    let _ = manager.cast(JobManagerMsg::Start(id.clone()));
                }
            }
        }
    }
}

/// Why a node could not take its own copy of a job's blobs.
#[derive(Debug, thiserror::Error)]
pub enum BlobCopyError {
    /// Every live node answered that it has no such blob: it went with a node that is gone.
    #[error("no live node holds {0}")]
    Lost(String),
    /// A peer that may hold it did not answer (unreachable, timeout, an error).
    #[error("{0}")]
    Unavailable(String),
}

/// Runs a forwarded operation through this node's JobManager.
async fn forward_local(id: &JobId, op: JobOp) -> Result<Box<JobState>, OpError> {
    let manager = current_job_manager()
        .ok_or_else(|| OpError::Unavailable("the job manager is restarting".into()))?;
    let id = id.clone();
    let result = manager
        .call(
            |reply| match op {
                JobOp::Cancel => JobManagerMsg::Cancel(id, reply),
                JobOp::Retry => JobManagerMsg::Retry(id, reply),
                JobOp::Delete => JobManagerMsg::Delete(id, reply),
            },
            Some(Duration::from_secs(30)),
        )
        .await;
    match result {
        Ok(ractor::rpc::CallResult::Success(Ok(state))) => Ok(Box::new(state)),
        Ok(ractor::rpc::CallResult::Success(Err(JobError::NotFound))) => Err(OpError::NotFound),
        Ok(ractor::rpc::CallResult::Success(Err(JobError::Conflict(message)))) => {
            Err(OpError::Conflict(message))
        }
        Ok(ractor::rpc::CallResult::Success(Err(JobError::Store(message)))) => {
            Err(OpError::Unavailable(message))
        }
        _ => Err(OpError::Unavailable(
            "the job manager did not answer".into(),
        )),
    }
}

impl PeerDirectory for Cluster {
    /// Every member not down, including those met moments ago whose HTTP address has not
    /// come with a heartbeat yet (an empty `http_url`): the fetch cannot ask them, so a blob
    /// missing from every other peer is "not reachable yet", not "gone". (After a restart a
    /// step placed on a fresh node read a media blob its holder had, as lost, five times in
    /// 100 ms, and the job failed `step.input_lost`.)
    fn blob_peers(&self) -> Vec<PeerEndpoint> {
        let view = lock(&self.view);
        view.members
            .values()
            .filter(|member| member.state != MemberState::Down)
            .map(|member| PeerEndpoint {
                node: member.name.clone(),
                http_url: member.http_url.clone(),
            })
            .collect()
    }
}

impl Replicator for Cluster {
    fn replicate<'a>(
        &'a self,
        state: &'a JobState,
        tombstone: Option<&'a Event>,
        insist: bool,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StoreError>> + Send + 'a>>
    {
        Box::pin(self.replicate_owned(state, tombstone, insist))
    }
}

/// Calls a peer with a versioned request; `None` on timeout, a lost peer or a bad answer.
async fn call_peer(
    peer: &ActorRef<PeerMsg>,
    request: &PeerRequest,
    timeout: Duration,
    metrics: &Metrics,
) -> Option<PeerAnswer> {
    let bytes = wire::encode(request).ok()?;
    match peer
        .call(|reply| PeerMsg::Request(bytes, reply), Some(timeout))
        .await
    {
        Ok(ractor::rpc::CallResult::Success(answer)) => match wire::decode(&answer) {
            Ok(answer) => Some(answer),
            Err(error) => {
                metrics.wire_error(error.code());
                tracing::warn!(%error, "a peer's answer does not decode");
                None
            }
        },
        _ => None,
    }
}

/// The message every node's [`Peer`] actor takes: a versioned [`PeerRequest`] in, a
/// [`PeerAnswer`] out.
#[derive(RactorClusterMessage)]
pub enum PeerMsg {
    #[rpc]
    Request(Vec<u8>, RpcReplyPort<Vec<u8>>),
}

impl std::fmt::Debug for PeerMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerMsg::Request(bytes, _) => write!(f, "Request({} bytes)", bytes.len()),
        }
    }
}

/// The actor peers talk to: one per node, in the process group `ytcaption.peer/<name>`. It
/// answers each request on its own task (bounded), so a slow one never blocks heartbeats.
#[derive(Debug)]
pub struct Peer;

impl Actor for Peer {
    type Msg = PeerMsg;
    type State = Arc<Cluster>;
    type Arguments = Arc<Cluster>;

    async fn pre_start(
        &self,
        myself: ActorRef<PeerMsg>,
        cluster: Arc<Cluster>,
    ) -> Result<Arc<Cluster>, ActorProcessingErr> {
        ractor::pg::join(peer_group(cluster.name()), vec![myself.get_cell()]);
        Ok(cluster)
    }

    async fn handle(
        &self,
        _myself: ActorRef<PeerMsg>,
        message: PeerMsg,
        cluster: &mut Arc<Cluster>,
    ) -> Result<(), ActorProcessingErr> {
        let PeerMsg::Request(bytes, reply) = message;
        let request: PeerRequest = match wire::decode(&bytes) {
            Ok(request) => request,
            Err(error) => {
                cluster.metrics.wire_error(error.code());
                tracing::warn!(%error, "refused a cluster request that does not decode");
                let refused = PeerAnswer::Refused(error.to_string());
                let _ = reply.send(wire::encode(&refused).unwrap_or_default());
                return Ok(());
            }
        };
        let Ok(permit) = cluster.requests.clone().try_acquire_owned() else {
            let refused = PeerAnswer::Refused("too many requests in flight".into());
            let _ = reply.send(wire::encode(&refused).unwrap_or_default());
            return Ok(());
        };
        let cluster = cluster.clone();
        tokio::spawn(async move {
            let answer = cluster.answer(request).await;
            let _ = reply.send(wire::encode(&answer).unwrap_or_default());
            drop(permit);
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_ranking_is_stable_and_spreads_jobs() {
        let nodes = ["a", "b", "c"];
        let mut firsts = HashMap::new();
        for n in 0..300u64 {
            let job = JobId::new(1_000 + n, n * 7919);
            let ranked = rank(&job, nodes);
            assert_eq!(ranked, rank(&job, nodes), "same input, same ranking");
            assert_eq!(ranked.len(), 3);
            // Removing a node keeps the relative order of the others.
            let without_first: Vec<&str> = ranked[1..].to_vec();
            let rest: Vec<&str> = nodes.iter().copied().filter(|n| *n != ranked[0]).collect();
            assert_eq!(rank(&job, rest), without_first);
            *firsts.entry(ranked[0]).or_insert(0) += 1;
        }
        for node in nodes {
            let share = firsts.get(node).copied().unwrap_or(0);
            assert!(
                (60..=140).contains(&share),
                "{node} ranks first for {share} of 300 jobs"
            );
        }
    }

    #[test]
    fn a_majority_is_needed_from_three_members_on() {
        // Alone, or in a pair: always.
        assert!(quorum(0, 0));
        assert!(quorum(1, 0));
        // Three nodes: one peer alive is a majority (2 of 3), none is not.
        assert!(quorum(2, 1));
        assert!(!quorum(2, 0));
        // Four: 2 of 4 is not a majority, 3 of 4 is.
        assert!(!quorum(3, 1));
        assert!(quorum(3, 2));
        // Five: 3 of 5.
        assert!(quorum(4, 2));
        assert!(!quorum(4, 1));
    }

    #[test]
    fn coming_back_from_the_minority_side_is_noted() {
        let mut view = View::default();
        for name in ["a", "b"] {
            view.members.insert(name.into(), Member::met(name, 1));
        }
        view.note_majority(10);
        assert_eq!(view.majority_since_ms, 0, "never in a minority");
        // Both peers down: alone among three, a minority.
        for member in view.members.values_mut() {
            member.state = MemberState::Down;
        }
        view.note_majority(20);
        assert!(view.minority);
        // One back: a majority again, since then.
        if let Some(a) = view.members.get_mut("a") {
            a.state = MemberState::Alive;
        }
        view.note_majority(30);
        assert!(!view.minority);
        assert_eq!(view.majority_since_ms, 30);
        // Later changes on the majority side keep the time.
        view.note_majority(40);
        assert_eq!(view.majority_since_ms, 30);
    }

    #[test]
    fn short_names_drop_the_host() {
        assert_eq!(short_name("node-1@127.0.0.1"), "node-1");
        assert_eq!(short_name("node-1"), "node-1");
    }
}
