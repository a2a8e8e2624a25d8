//! Scripted scenarios: `chaos/scenarios/<name>/scenario`, one step a line (`#` comments).
//!
//! ```text
//! nodes 3                          # cluster size (before any step; default 3)
//! storage s3                       # local (default) or s3
//! args --seed 7 --jobs 15 ...      # instead of steps: a random run with these options
//! submit LABEL FILE [at nK] [delay MS] [slowhook]
//! jobs N                           # N random jobs at random nodes
//! cancel LABEL                     # the client cancels the job at a random up node
//! wait LABEL STATE [TIMEOUT]       # until the job is in STATE (or past it); `terminal`
//! kill T | lose T | restart T|dead|all | restart-all | garbage T
//! pause T DUR | isolate T DUR [blackhole] | partition T T DUR | slow T T MS DUR
//! flap T COUNT DUR                 # COUNT times: links cut for DUR, healed for DUR
//! smtp-outage DUR | webhook-outage DUR | sleep DUR
//! ```
//! A target `T` is a node name (`n2`) or `owner:LABEL`, the node owning that job now.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::faults;
use crate::proxy::Mode;
use crate::rng::parse_duration;
use crate::workload::{self, JobSpec, Jobs};
use crate::world::{Health, World};

/// A parsed scenario file.
#[derive(Debug, Default)]
pub struct Script {
    pub nodes: Option<usize>,
    pub storage: Option<String>,
    /// `args ...`: options of a random run (a kept regression seed).
    pub args: Option<Vec<String>>,
    /// `(line number, words)` of each step.
    pub steps: Vec<(usize, Vec<String>)>,
}

impl Script {
    pub fn load(path: &Path) -> Result<Script, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading scenario {}: {e}", path.display()))?;
        let mut script = Script::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            let words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
            match words.first().map(String::as_str) {
                None => {}
                Some("nodes") => {
                    script.nodes = Some(
                        words
                            .get(1)
                            .and_then(|w| w.parse().ok())
                            .ok_or(format!("line {}: nodes N", n + 1))?,
                    );
                }
                Some("storage") => script.storage = words.get(1).cloned(),
                Some("args") => script.args = Some(words[1..].to_vec()),
                Some(_) => script.steps.push((n + 1, words)),
            }
        }
        Ok(script)
    }
}

/// Runs the steps; an `Err` is a step that could not be carried out (reported as a
/// violation: a scenario that cannot reach its fault point says something too).
pub fn run(world: &World, jobs: &Jobs, script: &Script, seed: u64) -> Result<(), String> {
    let mut rng = crate::rng::Rng::new(seed);
    for (line, words) in &script.steps {
        let at = |i: usize| words.get(i).map(String::as_str).unwrap_or_default();
        let duration = |i: usize| parse_duration(at(i)).map_err(|e| format!("line {line}: {e}"));
        let target =
            |i: usize| resolve(world, jobs, at(i)).map_err(|e| format!("line {line}: {e}"));
        world.say(&format!("step {line}: {}", words.join(" ")));
        match at(0) {
            "submit" => {
                let mut spec = JobSpec::new(at(2));
                let mut node = 0;
                let mut i = 3;
                while i < words.len() {
                    match at(i) {
                        "at" => {
                            node = target(i + 1)?;
                            i += 1;
                        }
                        "delay" => {
                            spec.download_delay_ms = at(i + 1)
                                .parse()
                                .map_err(|_| format!("line {line}: delay MS"))?;
                            i += 1;
                        }
                        "slowhook" => spec.slow_hook = true,
                        other => return Err(format!("line {line}: unknown option {other}")),
                    }
                    i += 1;
                }
                workload::submit(
                    world,
                    jobs,
                    &format!("s{seed:x}-{}", at(1)),
                    at(1),
                    spec,
                    node,
                );
            }
            "jobs" => {
                let count: usize = at(1).parse().map_err(|_| format!("line {line}: jobs N"))?;
                for k in 0..count {
                    let spec = JobSpec::random(&mut rng);
                    let up = world.up();
                    let Some(&node) = up.get(rng.index(up.len())) else {
                        return Err(format!("line {line}: no node is up to submit to"));
                    };
                    let label = format!("{line}.{k}");
                    workload::submit(
                        world,
                        jobs,
                        &format!("s{seed:x}-{label}"),
                        &label,
                        spec,
                        node,
                    );
                }
            }
            "cancel" => workload::cancel(world, jobs, at(1), &mut rng),
            "wait" => {
                let timeout = if words.len() > 3 {
                    duration(3)?
                } else {
                    Duration::from_secs(90)
                };
                wait_state(world, jobs, at(1), at(2), timeout)
                    .map_err(|e| format!("line {line}: {e}"))?;
            }
            "kill" => {
                let i = target(1)?;
                let record = world.record("kill", &world.names[i], "SIGKILL (scripted)");
                world.kill(i);
                world.measure_detection(i, record, Duration::from_secs(4));
            }
            "lose" => {
                let i = target(1)?;
                let record = world.record("lose", &world.names[i], "SIGKILL, never restarted");
                world.lose(i);
                world.measure_detection(i, record, Duration::from_secs(4));
            }
            "restart" => {
                let which: Vec<usize> = match at(1) {
                    "dead" | "all" => (0..world.len())
                        .filter(|&i| world.health(i) == Health::Killed)
                        .collect(),
                    _ => vec![target(1)?],
                };
                world.restart_many(&which);
            }
            "restart-all" => faults::restart_all(world),
            "garbage" => {
                let i = target(1)?;
                world.record(
                    "garbage",
                    &world.names[i],
                    "garbage bytes to the cluster port",
                );
                world.garbage(i, seed);
            }
            "pause" => faults::pause(world, target(1)?, duration(2)?),
            "isolate" => {
                let mode = if at(3) == "blackhole" {
                    Mode::Blackhole
                } else {
                    Mode::Cut
                };
                faults::isolate(world, target(1)?, mode, duration(2)?);
            }
            "partition" | "slow" => {
                let (a, b) = (target(1)?, target(2)?);
                let (mode, hold, detail) = if at(0) == "slow" {
                    let ms: u64 = at(3)
                        .parse()
                        .map_err(|_| format!("line {line}: slow A B MS DUR"))?;
                    let hold = duration(4)?;
                    (
                        Mode::Delay(Duration::from_millis(ms)),
                        hold,
                        format!("{ms} ms per chunk for {hold:?}"),
                    )
                } else {
                    let hold = duration(3)?;
                    (Mode::Cut, hold, format!("links cut for {hold:?}"))
                };
                let kind = if at(0) == "slow" {
                    "slow-link"
                } else {
                    "partition"
                };
                world.record(
                    kind,
                    &format!("{}|{}", world.names[a], world.names[b]),
                    &detail,
                );
                world.set_pair(a, b, mode);
                std::thread::sleep(hold);
                world.set_pair(a, b, Mode::Pass);
            }
            "flap" => {
                let i = target(1)?;
                let count: usize = at(2)
                    .parse()
                    .map_err(|_| format!("line {line}: flap T COUNT DUR"))?;
                let hold = duration(3)?;
                for _ in 0..count {
                    world.record(
                        "isolate",
                        &world.names[i],
                        &format!("flap: links cut for {hold:?}"),
                    );
                    world.isolate(i, Mode::Cut);
                    std::thread::sleep(hold);
                    world.isolate(i, Mode::Pass);
                    std::thread::sleep(hold);
                }
            }
            "smtp-outage" => faults::outage(world, false, duration(1)?),
            "webhook-outage" => faults::outage(world, true, duration(1)?),
            "sleep" => std::thread::sleep(duration(1)?),
            other => return Err(format!("line {line}: unknown step {other:?}")),
        }
    }
    Ok(())
}

/// `nK` or `owner:LABEL`.
fn resolve(world: &World, jobs: &Jobs, target: &str) -> Result<usize, String> {
    if let Some(label) = target.strip_prefix("owner:") {
        let id = jobs
            .id_of(label)
            .ok_or(format!("no acknowledged job {label}"))?;
        return world
            .owner_of(&id)
            .ok_or(format!("no node reports the owner of {label} ({id})"));
    }
    world.index(target).ok_or(format!("no node {target:?}"))
}

const ORDER: [&str; 6] = [
    "accepted",
    "downloading",
    "transcribing",
    "storing",
    "notifying",
    "completed",
];

/// Polls until the job is in `state`; returns early (with a note) if it is already past it.
fn wait_state(
    world: &World,
    jobs: &Jobs,
    label: &str,
    state: &str,
    timeout: Duration,
) -> Result<(), String> {
    let id = jobs
        .id_of(label)
        .ok_or(format!("no acknowledged job {label}"))?;
    let wanted = ORDER.iter().position(|s| *s == state);
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        // The owner's view: other copies may lag.
        let view = world
            .owner_of(&id)
            .and_then(|owner| match world.get(owner, &format!("/v1/jobs/{id}")) {
                Some((200, view)) => Some(view),
                _ => None,
            })
            .or_else(|| world.job(&id));
        if let Some(view) = view {
            last = view["state"].as_str().unwrap_or_default().to_owned();
            if last == state || (state == "terminal" && workload::terminal(&last)) {
                return Ok(());
            }
            if workload::terminal(&last) && state != "completed" {
                return Err(format!("job {label} ended {last} before it was {state}"));
            }
            let now = ORDER.iter().position(|s| *s == last);
            if let (Some(wanted), Some(now)) = (wanted, now) {
                if now > wanted {
                    world.say(&format!("job {label} is already {last}, past {state}"));
                    return Ok(());
                }
            }
        }
        std::thread::sleep(Duration::from_millis(40));
    }
    Err(format!(
        "job {label} not {state} within {timeout:?} (last seen {last:?})"
    ))
}
