//! A one-for-one supervisor with capped exponential backoff and a restart intensity: ractor
//! links children to parents but has no restart strategies of its own.
//!
//! # What it does
//! When a child fails (a panic, or a handler returning `Err`), only that child is restarted,
//! after `base * 2^(n-1)` capped at `cap`, where `n` counts its failures within the last
//! `within`. Once a child has failed `max_restarts` times within `within` (the restart
//! intensity), its capability is marked **unavailable** for `cooldown`: nothing restarts it
//! until the cool-down ends, then it gets one fresh start.
//!
//! # The circuit breaker it replaces
//! | circuit breaker | here |
//! |---|---|
//! | closed (calls flow) | the child runs and is in its role's process group |
//! | a failure is counted | the child fails and leaves its group; the supervisor counts it |
//! | open (calls refused) | backoff or cool-down: the role has no member, so the saga waits |
//! | half-open (one trial call) | the restarted child takes the next step; failing again re-opens with a longer delay |
//! | reset | failures age out of the `within` window |
//!
//! Workers fail on purpose when a dependency is broken (S3 unreachable, SMTP refusing, yt-dlp
//! missing): they answer the step with a retryable failure, then return `Err` so that their
//! supervisor backs them off. The saga does not count "no worker available" as an attempt; it
//! waits and retries, and never hammers a dependency faster than the backoff allows.
//!
//! The state of every child (running, restarting, unavailable; restart counts; last failure)
//! is shared through [`SupervisorStatus`] for the admin endpoint and metrics.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SpawnErr, SupervisionEvent};
use serde::Serialize;

/// Starts one child, linked to the given supervisor.
pub type SpawnFn = Arc<
    dyn Fn(ActorCell) -> Pin<Box<dyn Future<Output = Result<ActorCell, SpawnErr>> + Send>>
        + Send
        + Sync,
>;

/// A child the supervisor keeps alive.
#[derive(Clone)]
pub struct ChildSpec {
    /// Unique among the supervisor's children (also the actor's registered name).
    pub name: String,
    /// The capability the child provides: its role's process-group name.
    pub role: &'static str,
    pub spawn: SpawnFn,
}

impl std::fmt::Debug for ChildSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildSpec")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// Restart policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub max_restarts: u32,
    pub within: Duration,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    pub cooldown: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_restarts: 5,
            within: Duration::from_secs(60),
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_secs(30),
            cooldown: Duration::from_secs(60),
        }
    }
}

impl Policy {
    /// The delay before restarting a child that failed `failures` times within the window.
    pub fn backoff(&self, failures: u32) -> Duration {
        let exponent = failures.saturating_sub(1).min(20);
        self.backoff_base
            .saturating_mul(1 << exponent)
            .min(self.backoff_cap)
    }
}

/// What a child is doing, as the admin endpoint shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChildState {
    Running,
    /// Failed; restarts after its backoff.
    Restarting,
    /// Failed too often: left down for the cool-down (the circuit is open).
    Unavailable,
    Stopped,
}

/// One child's observable status.
#[derive(Debug, Clone, Serialize)]
pub struct ChildStatus {
    pub name: String,
    pub role: String,
    pub state: ChildState,
    pub restarts: u64,
    pub last_failure: Option<String>,
    /// Milliseconds since the epoch.
    pub last_failure_at: Option<u64>,
    /// When the next restart happens (backoff or cool-down), milliseconds since the epoch.
    pub restart_at: Option<u64>,
}

/// The status of every supervised child, shared with the admin endpoint and metrics.
#[derive(Debug, Default)]
pub struct SupervisorStatus {
    children: Mutex<BTreeMap<String, ChildStatus>>,
}

impl SupervisorStatus {
    pub fn snapshot(&self) -> Vec<ChildStatus> {
        self.lock().values().cloned().collect()
    }

    /// False while every child of `role` is restarting or unavailable.
    pub fn available(&self, role: &str) -> bool {
        self.lock()
            .values()
            .any(|child| child.role == role && child.state == ChildState::Running)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, ChildStatus>> {
        self.children.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn update(&self, name: &str, change: impl FnOnce(&mut ChildStatus)) {
        if let Some(child) = self.lock().get_mut(name) {
            change(child);
        }
    }
}

#[derive(ractor_cluster::RactorMessage)]
pub enum SupervisorMsg {
    /// Start (or restart) a child by name; sent to itself after a backoff.
    Start(String),
}

impl std::fmt::Debug for SupervisorMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SupervisorMsg::Start(name) => write!(f, "Start({name})"),
        }
    }
}

/// The supervisor actor; its arguments are the children and the policy.
#[derive(Debug)]
pub struct Supervisor;

pub type RestartHook = Arc<dyn Fn(&ChildSpec, &str) + Send + Sync>;

pub struct SupervisorArgs {
    pub children: Vec<ChildSpec>,
    pub policy: Policy,
    pub status: Arc<SupervisorStatus>,
    /// Called on every failure with the reason (metrics).
    pub on_restart: Option<RestartHook>,
}

impl std::fmt::Debug for SupervisorArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupervisorArgs")
            .field("children", &self.children)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

pub struct SupervisorState {
    specs: HashMap<String, ChildSpec>,
    running: HashMap<ActorId, String>,
    failures: HashMap<String, VecDeque<Instant>>,
    policy: Policy,
    status: Arc<SupervisorStatus>,
    on_restart: Option<RestartHook>,
}

impl std::fmt::Debug for SupervisorState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupervisorState")
            .field("running", &self.running)
            .finish_non_exhaustive()
    }
}

use ytcaption_protocol::time::now_ms;

impl SupervisorState {
    async fn start(&mut self, myself: &ActorRef<SupervisorMsg>, name: &str) {
        let Some(spec) = self.specs.get(name).cloned() else {
            return;
        };
        if self.running.values().any(|running| running == name) {
            return;
        }
        match (spec.spawn)(myself.get_cell()).await {
            Ok(cell) => {
                self.running.insert(cell.get_id(), name.to_owned());
                self.status.update(name, |child| {
                    child.state = ChildState::Running;
                    child.restart_at = None;
                });
                tracing::info!(child = name, role = spec.role, "child started");
            }
            Err(error) => {
                // A start that fails counts as a failure: it backs off like one.
                self.failed(myself, name, &format!("start failed: {error}"));
            }
        }
    }

    /// Records a failure and schedules the restart after the backoff or cool-down.
    fn failed(&mut self, myself: &ActorRef<SupervisorMsg>, name: &str, reason: &str) {
        let now = Instant::now();
        let window = self.policy.within;
        let recent = self.failures.entry(name.to_owned()).or_default();
        recent.push_back(now);
        while recent
            .front()
            .is_some_and(|first| now.duration_since(*first) > window)
        {
            recent.pop_front();
        }
        let count = recent.len() as u32;
        let (state, delay) = if count >= self.policy.max_restarts {
            recent.clear();
            (ChildState::Unavailable, self.policy.cooldown)
        } else {
            (ChildState::Restarting, self.policy.backoff(count))
        };
        let at = now_ms();
        self.status.update(name, |child| {
            child.state = state;
            child.restarts += 1;
            child.last_failure = Some(reason.chars().take(500).collect());
            child.last_failure_at = Some(at);
            child.restart_at = Some(at + delay.as_millis() as u64);
        });
        if let (Some(hook), Some(spec)) = (&self.on_restart, self.specs.get(name)) {
            hook(spec, reason);
        }
        tracing::warn!(
            child = name,
            failures = count,
            ?state,
            delay_ms = delay.as_millis() as u64,
            reason,
            "child failed"
        );
        myself.send_after(delay, {
            let name = name.to_owned();
            move || SupervisorMsg::Start(name)
        });
    }
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut state = SupervisorState {
            specs: HashMap::new(),
            running: HashMap::new(),
            failures: HashMap::new(),
            policy: args.policy,
            status: args.status,
            on_restart: args.on_restart,
        };
        for spec in &args.children {
            state.status.lock().insert(
                spec.name.clone(),
                ChildStatus {
                    name: spec.name.clone(),
                    role: spec.role.to_owned(),
                    state: ChildState::Restarting,
                    restarts: 0,
                    last_failure: None,
                    last_failure_at: None,
                    restart_at: None,
                },
            );
            state.specs.insert(spec.name.clone(), spec.clone());
        }
        for spec in args.children {
            state.start(&myself, &spec.name).await;
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::Start(name) => state.start(&myself, &name).await,
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, reason) = match event {
            SupervisionEvent::ActorFailed(cell, error) => (cell, error.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "stopped".to_owned()))
            }
            _ => return Ok(()),
        };
        if let Some(name) = state.running.remove(&cell.get_id()) {
            state.failed(&myself, &name, &reason);
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        for name in state.specs.keys() {
            state
                .status
                .update(name, |child| child.state = ChildState::Stopped);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Fails every message it gets; counts its starts.
    struct Flaky;

    impl Actor for Flaky {
        type Msg = ();
        type State = ();
        type Arguments = Arc<AtomicU32>;

        async fn pre_start(
            &self,
            myself: ActorRef<()>,
            starts: Arc<AtomicU32>,
        ) -> Result<(), ActorProcessingErr> {
            starts.fetch_add(1, Ordering::SeqCst);
            ractor::pg::join("flaky".into(), vec![myself.get_cell()]);
            Ok(())
        }

        async fn handle(
            &self,
            _myself: ActorRef<()>,
            _message: (),
            _state: &mut (),
        ) -> Result<(), ActorProcessingErr> {
            Err("dependency down".into())
        }
    }

    fn spec(starts: Arc<AtomicU32>) -> ChildSpec {
        ChildSpec {
            name: "flaky-1".into(),
            role: "flaky",
            spawn: Arc::new(move |supervisor| {
                let starts = starts.clone();
                Box::pin(async move {
                    let (actor, _) =
                        Actor::spawn_linked(Some("flaky-1".into()), Flaky, starts, supervisor)
                            .await?;
                    Ok(actor.get_cell())
                })
            }),
        }
    }

    async fn fail_current() {
        let members = ractor::pg::get_members(&"flaky".to_string());
        let member = members.first().expect("a running flaky child");
        ActorRef::<()>::from(member.clone()).cast(()).unwrap();
    }

    async fn wait_for(condition: impl Fn() -> bool) {
        for _ in 0..400 {
            if condition() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("condition not reached");
    }

    #[tokio::test]
    async fn restarts_back_off_then_the_capability_is_unavailable_for_the_cooldown() {
        let starts = Arc::new(AtomicU32::new(0));
        let status = Arc::new(SupervisorStatus::default());
        let policy = Policy {
            max_restarts: 3,
            within: Duration::from_secs(10),
            backoff_base: Duration::from_millis(20),
            backoff_cap: Duration::from_millis(50),
            cooldown: Duration::from_millis(400),
        };
        let (supervisor, _) = Actor::spawn(
            None,
            Supervisor,
            SupervisorArgs {
                children: vec![spec(starts.clone())],
                policy,
                status: status.clone(),
                on_restart: None,
            },
        )
        .await
        .unwrap();
        assert_eq!(starts.load(Ordering::SeqCst), 1);
        assert!(status.available("flaky"));

        // Two failures: restarted each time after a short backoff.
        for expected in 2..=3 {
            fail_current().await;
            wait_for(|| starts.load(Ordering::SeqCst) == expected).await;
            wait_for(|| status.available("flaky")).await;
        }
        let child = &status.snapshot()[0];
        assert_eq!(child.restarts, 2);
        assert_eq!(child.last_failure.as_deref(), Some("dependency down"));

        // The third failure within the window trips the intensity: unavailable, no restart
        // until the cool-down has passed.
        fail_current().await;
        wait_for(|| status.snapshot()[0].state == ChildState::Unavailable).await;
        let tripped = Instant::now();
        assert!(!status.available("flaky"));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            starts.load(Ordering::SeqCst),
            3,
            "restarted during the cool-down"
        );
        wait_for(|| starts.load(Ordering::SeqCst) == 4).await;
        assert!(tripped.elapsed() >= Duration::from_millis(350));
        wait_for(|| status.available("flaky")).await;
        supervisor.stop(None);
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let policy = Policy::default();
        assert_eq!(policy.backoff(1), Duration::from_millis(100));
        assert_eq!(policy.backoff(2), Duration::from_millis(200));
        assert_eq!(policy.backoff(4), Duration::from_millis(800));
        assert_eq!(policy.backoff(40), Duration::from_secs(30));
    }
}
