//! The faults and the random schedule. Each fault runs its whole course (inject, hold,
//! revert) before the next starts, so at most one is active at a time, except permanent
//! losses, of which at most `replication_factor - 1` are allowed in a run.

use std::time::Duration;

use crate::proxy::Mode;
use crate::rng::Rng;
use crate::world::{Health, World};

/// Every kind of fault, with its name on the command line and in the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// SIGKILL, then a restart on the same data after a while.
    KillRestart,
    /// SIGKILL for good.
    Lose,
    /// SIGSTOP for a while, then SIGCONT.
    Pause,
    /// Every link of one node cut (or blackholed), then healed.
    Isolate,
    /// The links between two nodes cut, the rest of the mesh intact.
    Partition,
    /// Both links of a pair delayed.
    SlowLink,
    /// Every node SIGKILLed and restarted together.
    RestartAll,
    /// Garbage bytes to a node's cluster port.
    Garbage,
    SmtpOutage,
    WebhookOutage,
}

pub const ALL: [Kind; 10] = [
    Kind::KillRestart,
    Kind::Lose,
    Kind::Pause,
    Kind::Isolate,
    Kind::Partition,
    Kind::SlowLink,
    Kind::RestartAll,
    Kind::Garbage,
    Kind::SmtpOutage,
    Kind::WebhookOutage,
];

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::KillRestart => "kill",
            Kind::Lose => "lose",
            Kind::Pause => "pause",
            Kind::Isolate => "isolate",
            Kind::Partition => "partition",
            Kind::SlowLink => "slow-link",
            Kind::RestartAll => "restart-all",
            Kind::Garbage => "garbage",
            Kind::SmtpOutage => "smtp-outage",
            Kind::WebhookOutage => "webhook-outage",
        }
    }

    fn default_weight(self) -> u32 {
        match self {
            Kind::KillRestart => 4,
            Kind::Pause | Kind::Isolate => 2,
            Kind::Lose
            | Kind::Partition
            | Kind::SlowLink
            | Kind::RestartAll
            | Kind::Garbage
            | Kind::SmtpOutage
            | Kind::WebhookOutage => 1,
        }
    }
}

/// Weights per kind, from `kill=4,pause=2,...` over the defaults (`0` disables a kind).
pub fn parse_weights(text: Option<&str>) -> Result<Vec<u32>, String> {
    let mut weights: Vec<u32> = ALL.iter().map(|k| k.default_weight()).collect();
    for item in text
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
    {
        let (name, weight) = item
            .split_once('=')
            .ok_or_else(|| format!("weight {item:?}: expected name=number"))?;
        let index = ALL
            .iter()
            .position(|k| k.name() == name.trim())
            .ok_or_else(|| {
                format!(
                    "unknown fault {name:?}; known: {}",
                    ALL.map(Kind::name).join(", ")
                )
            })?;
        weights[index] = weight
            .trim()
            .parse()
            .map_err(|_| format!("weight {item:?}: not a number"))?;
    }
    if weights.iter().all(|&w| w == 0) {
        return Err("every fault weight is 0".into());
    }
    Ok(weights)
}

fn secs(rng: &mut Rng, lo: u64, hi: u64) -> Duration {
    Duration::from_millis(rng.range(lo * 1000, hi * 1000))
}

/// Draws a fault the cluster can take now and runs it to the end.
pub fn random_fault(world: &World, rng: &mut Rng, weights: &[u32]) {
    let up = world.up();
    if up.is_empty() {
        std::thread::sleep(Duration::from_secs(1));
        return;
    }
    let mut weights = weights.to_vec();
    // A permanent loss only while fewer than RF-1 are lost and two nodes would remain.
    if world.lost() + 1 >= world.replication_factor || up.len() <= 2 {
        weights[1] = 0;
    }
    if up.len() < 2 {
        weights.iter_mut().take(6).for_each(|w| *w = 0);
    }
    if weights.iter().all(|&w| w == 0) {
        std::thread::sleep(Duration::from_secs(1));
        return;
    }
    let kind = ALL[rng.weighted(&weights)];
    let target = up[rng.index(up.len().max(1))];
    let other = {
        let others: Vec<usize> = up.iter().copied().filter(|&j| j != target).collect();
        others
            .get(rng.index(others.len().max(1)))
            .copied()
            .unwrap_or(target)
    };
    let name = world.names[target].clone();
    match kind {
        Kind::KillRestart => {
            let down_for = secs(rng, 1, 5);
            kill_restart(world, target, down_for);
        }
        Kind::Lose => {
            let record = world.record("lose", &name, "SIGKILL, never restarted");
            world.lose(target);
            world.measure_detection(target, record, Duration::from_secs(5));
        }
        Kind::Pause => pause(world, target, secs(rng, 3, 7)),
        Kind::Isolate => {
            let mode = if rng.chance(0.5) {
                Mode::Cut
            } else {
                Mode::Blackhole
            };
            isolate(world, target, mode, secs(rng, 3, 8));
        }
        Kind::Partition => {
            let hold = secs(rng, 3, 8);
            world.record(
                "partition",
                &format!("{name}|{}", world.names[other]),
                &format!("links cut for {hold:?}, the rest of the mesh intact"),
            );
            world.set_pair(target, other, Mode::Cut);
            std::thread::sleep(hold);
            world.set_pair(target, other, Mode::Pass);
        }
        Kind::SlowLink => {
            let delay = Duration::from_millis(rng.range(50, 400));
            let hold = secs(rng, 4, 10);
            world.record(
                "slow-link",
                &format!("{name}|{}", world.names[other]),
                &format!("{delay:?} per chunk for {hold:?}"),
            );
            world.set_pair(target, other, Mode::Delay(delay));
            std::thread::sleep(hold);
            world.set_pair(target, other, Mode::Pass);
        }
        Kind::RestartAll => restart_all(world),
        Kind::Garbage => {
            world.record("garbage", &name, "garbage bytes to the cluster port");
            world.garbage(target, rng.next_u64());
        }
        Kind::SmtpOutage => outage(world, false, secs(rng, 3, 8)),
        Kind::WebhookOutage => outage(world, true, secs(rng, 3, 8)),
    }
}

pub fn kill_restart(world: &World, target: usize, down_for: Duration) {
    let record = world.record(
        "kill",
        &world.names[target],
        &format!("SIGKILL, restart after {down_for:?}"),
    );
    world.kill(target);
    world.measure_detection(target, record, down_for.max(Duration::from_secs(3)));
    std::thread::sleep(down_for.saturating_sub(Duration::from_millis(500)));
    world.restart(target);
    world.say(&format!("{} restarted", world.names[target]));
}

pub fn pause(world: &World, target: usize, hold: Duration) {
    let record = world.record(
        "pause",
        &world.names[target],
        &format!("SIGSTOP for {hold:?}"),
    );
    world.stop(target);
    world.measure_detection(target, record, hold);
    let elapsed =
        Duration::from_secs_f64(world.started.elapsed().as_secs_f64() - world_t(world, record));
    std::thread::sleep(hold.saturating_sub(elapsed));
    if world.health(target) == Health::Stopped {
        world.cont(target);
    }
}

pub fn isolate(world: &World, target: usize, mode: Mode, hold: Duration) {
    let how = if mode == Mode::Cut {
        "cut"
    } else {
        "blackholed"
    };
    let record = world.record(
        "isolate",
        &world.names[target],
        &format!("every link {how} for {hold:?}"),
    );
    world.isolate(target, mode);
    world.measure_detection(target, record, hold);
    let elapsed =
        Duration::from_secs_f64(world.started.elapsed().as_secs_f64() - world_t(world, record));
    std::thread::sleep(hold.saturating_sub(elapsed));
    world.isolate(target, Mode::Pass);
}

pub fn restart_all(world: &World) {
    let up = world.up();
    world.record(
        "restart-all",
        "all",
        &format!("SIGKILL and restart {} nodes together", up.len()),
    );
    for &i in &up {
        world.kill(i);
    }
    world.restart_many(&up);
    world.say("every node restarted");
}

/// A receiver outage: the webhook receiver (503s) or the SMTP sink (gone).
pub fn outage(world: &World, webhook: bool, hold: Duration) {
    if webhook {
        world.record("webhook-outage", "receiver", &format!("503 for {hold:?}"));
        world.webhook_outage(true);
        std::thread::sleep(hold);
        world.webhook_outage(false);
    } else {
        world.record("smtp-outage", "smtp", &format!("sink down for {hold:?}"));
        world.smtp_outage(true);
        std::thread::sleep(hold);
        world.smtp_outage(false);
    }
}

fn world_t(world: &World, record: usize) -> f64 {
    crate::world::lock(&world.faults)[record].t_s
}
