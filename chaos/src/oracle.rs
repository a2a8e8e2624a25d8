//! The oracle: once faults have stopped, the network has healed and a quiet period has
//! passed, it checks every acknowledged job against the invariants and builds the report.
//!
//! Invariants (a broken one is a *violation* and makes the run exit non-zero):
//! - every acknowledged job is terminal, `completed` for a good clip (transcript within the
//!   WER threshold of the known text) and `failed` with a `media.*` code for a bad input;
//! - every up node reports the same final state for it;
//! - exactly one webhook delivery (distinct `Ytcaption-Delivery` ids), validly signed and
//!   naming the job and its final state, and exactly one email (distinct Message-IDs);
//! - no node lists a job nobody submitted, or two jobs for one client key.
//!
//! Same-id redeliveries (one delivery id or Message-ID received twice) are at-least-once
//! delivery, which the receiver can drop: they are counted and reported, not violations.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{json, Value};

use crate::workload::{Expect, Job};
use crate::world::{lock, FaultRecord, World};

/// What the oracle found.
#[derive(Debug, Default)]
pub struct Verdict {
    pub violations: Vec<String>,
    pub notes: Vec<String>,
    pub counts: BTreeMap<&'static str, usize>,
    pub detection_ms: Vec<u64>,
    /// Owner changes by kind, each measured from the detection of the fault that caused it
    /// (from the fault itself when not measured).
    pub owner_changes: BTreeMap<OwnerChange, Vec<u64>>,
    pub latency_ms: Vec<u64>,
    pub jobs: Vec<Value>,
}

/// Why a job's owner changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum OwnerChange {
    /// The owner was cut off from every other node (killed, stopped, isolated) while no more
    /// nodes were out than the cluster tolerates: the takeover the target is about.
    Takeover,
    /// Any owner change while more nodes were out than the cluster tolerates (every node
    /// restarted, or a node lost for good plus one more cut off in a cluster of three): the
    /// survivors are a minority, or a pair once the lost node is forgotten, and act by the
    /// rules for those.
    BeyondTolerance,
    /// A partition or slow link between the owner and one node, the owner still reachable by
    /// the rest.
    Partition,
    /// The owner was reachable by every node: a spurious takeover.
    OwnerUp,
}

impl OwnerChange {
    pub const ALL: [OwnerChange; 4] = [
        OwnerChange::Takeover,
        OwnerChange::BeyondTolerance,
        OwnerChange::Partition,
        OwnerChange::OwnerUp,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OwnerChange::Takeover => "takeover",
            OwnerChange::BeyondTolerance => "beyond_tolerance",
            OwnerChange::Partition => "partition",
            OwnerChange::OwnerUp => "owner_up",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            OwnerChange::Takeover => "takeover time (from detection)",
            OwnerChange::BeyondTolerance => "takeover, more out than tolerated",
            OwnerChange::Partition => "owner change after a partition",
            OwnerChange::OwnerUp => "owner change, owner up (spurious)",
        }
    }
}

/// How long blobs a cancelled job left may take to go (a node that was down at the cancel is
/// purged when it is back).
const ORPHAN_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// How long after an outage ends its node's peers may still see it down.
const OWNER_BACK_GRACE_MS: u64 = 2_000;

fn owner_change_class(
    world: &World,
    cause: Option<&FaultRecord>,
    owner_cut_off: bool,
    at: u64,
) -> OwnerChange {
    // Every node cut off at that moment (the owner, the taker, one lost for good), or all
    // of them restarted together.
    let tolerated = world.len().saturating_sub(1) / 2;
    let everyone = cause.is_some_and(|f| f.target == "all");
    if everyone || world.out_at(at, OWNER_BACK_GRACE_MS) > tolerated {
        return OwnerChange::BeyondTolerance;
    }
    if owner_cut_off {
        OwnerChange::Takeover
    } else if cause.is_some_and(|f| matches!(f.kind.as_str(), "partition" | "slow-link")) {
        OwnerChange::Partition
    } else {
        OwnerChange::OwnerUp
    }
}

impl Verdict {
    fn count(&mut self, name: &'static str) {
        *self.counts.entry(name).or_default() += 1;
    }
}

/// p50 and p99 of `values` (nearest rank), `None` when empty.
pub fn percentiles(values: &[u64]) -> Option<(u64, u64)> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let rank = |p: usize| sorted[((sorted.len() * p).div_ceil(100)).saturating_sub(1)];
    Some((rank(50), rank(99)))
}

/// The client key in a media URL's query (`k=`).
fn key_of_url(url: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("k=").map(str::to_owned))
}

/// Runs every check over `jobs`.
pub fn check(world: &World, jobs: &[Job], wer_threshold: f64) -> Verdict {
    let mut verdict = Verdict::default();
    let faults = lock(&world.faults).clone();
    verdict.detection_ms = faults.iter().filter_map(|f| f.detection_ms).collect();
    let hooks = lock(&world.hooks.hooks).clone();
    let mails = world.mails();
    let up = world.up();
    let converge_by = std::time::Instant::now() + CONVERGENCE;

    for job in jobs {
        verdict.count("submitted");
        let Some(id) = job.id.clone() else {
            verdict.count("not acknowledged");
            verdict.jobs.push(json!({
                "key": job.key, "label": job.label, "file": job.spec.file,
                "node": world.names[job.node], "acknowledged": false, "why": job.rejected,
            }));
            continue;
        };
        verdict.count("acknowledged");
        let mut problems: Vec<String> = Vec::new();
        // Final state at every up node.
        let views = converged_views(world, &up, &id, converge_by);
        let states: Vec<String> = views
            .iter()
            .map(|(i, v)| format!("{}={}", world.names[*i], v["state"].as_str().unwrap_or("?")))
            .collect();
        // The authoritative view: the owner's own (highest epoch), else any.
        let view = views
            .iter()
            .filter(|(i, v)| v["placement"]["owner_node"] == world.names[*i].as_str())
            .max_by_key(|(_, v)| v["placement"]["epoch"].as_u64())
            .or(views.first())
            .map(|(_, v)| v.clone())
            .unwrap_or(Value::Null);
        let state = view["state"].as_str().unwrap_or("missing").to_owned();
        if views.len() < up.len() {
            problems.push(format!(
                "only {} of {} up nodes know it",
                views.len(),
                up.len()
            ));
        }
        if views.iter().any(|(_, v)| v["state"] != view["state"]) {
            verdict.count("stale copies");
            problems.push(format!(
                "nodes still disagree on its state {}s after the quiet period: {}",
                CONVERGENCE.as_secs(),
                states.join(" ")
            ));
        }
        let mut wer = None;
        let cancel_status = job.cancel.as_ref().and_then(|c| c.status);
        if state == "cancelled" {
            if job.cancel.is_none() {
                problems.push("cancelled, but the client never cancelled it".into());
            } else if cancel_status == Some(409) {
                problems.push("cancelled, though its cancel was refused as too late (409)".into());
            }
            // A cancelled job leaves nothing behind on any node (or in the bucket), once the
            // purges of nodes that were down at the cancel have caught up.
            let give_up = std::time::Instant::now() + ORPHAN_WAIT;
            let leftovers = loop {
                match world.blobs_of(&id) {
                    Ok(left) if !left.is_empty() && std::time::Instant::now() < give_up => {
                        std::thread::sleep(std::time::Duration::from_secs(1));
                    }
                    other => break other,
                }
            };
            match leftovers {
                Ok(left) if left.is_empty() => {}
                Ok(left) => {
                    verdict.count("orphaned blobs after a cancel");
                    problems.push(format!("blobs left after its cancel: {left:?}"));
                }
                Err(error) => problems.push(format!("cannot list its blobs: {error}")),
            }
        } else if cancel_status == Some(202) {
            // Accepted while a last step was finishing: the job may still end as it would
            // have.
            verdict.count("cancelled too late (finished)");
        }
        match &job.spec.expect {
            _ if state == "cancelled" => {}
            Expect::Completed { text } => {
                if state == "completed" {
                    // The blob listing must see a completed job's transcript, or the orphan
                    // check above would be blind.
                    match world.blobs_of(&id) {
                        Ok(keys) if keys.iter().any(|k| k.contains("/transcript.")) => {}
                        Ok(keys) => problems.push(format!(
                            "completed, but the blob listing finds no transcript: {keys:?}"
                        )),
                        Err(error) => problems.push(format!("cannot list its blobs: {error}")),
                    }
                    let transcript = up.iter().find_map(|&i| {
                        let url = format!("{}/v1/jobs/{id}/transcript?format=txt", world.urls[i]);
                        ureq::get(&url)
                            .timeout(std::time::Duration::from_secs(10))
                            .call()
                            .ok()
                            .and_then(|r| r.into_string().ok())
                    });
                    match transcript {
                        Some(transcript) => {
                            let rate = ytcaption_tests::text::wer(
                                &ytcaption_tests::text::expected_text(text),
                                &transcript,
                            );
                            wer = Some(rate);
                            // Long media cut into chunks that several nodes transcribed.
                            let chunks = view["placement"]["chunks"].as_array();
                            let nodes: HashSet<&str> = chunks
                                .into_iter()
                                .flatten()
                                .filter_map(|chunk| chunk["node"].as_str())
                                .collect();
                            if nodes.len() > 1 {
                                verdict.count("completed split across nodes");
                            }
                            if rate > wer_threshold {
                                problems
                                    .push(format!("transcript WER {rate:.2} > {wer_threshold}"));
                            }
                        }
                        None => problems.push("completed but no node serves its transcript".into()),
                    }
                } else if state == "missing" || !crate::workload::terminal(&state) {
                    problems.push(format!("lost: {state} after the quiet period"));
                    verdict.count("lost");
                } else {
                    problems.push(format!(
                        "ended {state} ({}), expected completed",
                        view["error"]["code"].as_str().unwrap_or("-")
                    ));
                }
            }
            Expect::Failed => {
                let code = view["error"]["code"].as_str().unwrap_or_default();
                // An empty body, or text posing as media, is refused by the downloader
                // before decoding.
                let clean = code.starts_with("media.")
                    || matches!(code, "download.empty" | "download.not_media");
                if state != "failed" || !clean {
                    if !crate::workload::terminal(&state) {
                        verdict.count("lost");
                    }
                    problems.push(format!(
                        "ended {state} ({code}), expected failed with media.*"
                    ));
                }
            }
        }
        // Notifications.
        let mine: Vec<_> = hooks.iter().filter(|h| h.key == job.key).collect();
        let deliveries: HashSet<&str> = mine.iter().map(|h| h.delivery.as_str()).collect();
        let hook_redeliveries = mine.len() - deliveries.len();
        if deliveries.len() != 1 {
            problems.push(format!(
                "{} distinct webhook deliveries (ids {:?})",
                deliveries.len(),
                deliveries
            ));
        }
        if deliveries.len() > 1 {
            verdict.count("duplicated (webhook)");
        }
        if hook_redeliveries > 0 {
            verdict.count("webhook redelivered (same id)");
        }
        for hook in &mine {
            if !hook.signature_ok {
                problems.push(format!("webhook {} has a bad signature", hook.delivery));
            }
            if hook.job_id != id || hook.status != state {
                problems.push(format!(
                    "webhook {} says job {} {}, the job is {id} {state}",
                    hook.delivery, hook.job_id, hook.status
                ));
            }
        }
        let address = format!("job-{}@example.com", job.key);
        let my_mails: Vec<_> = mails
            .iter()
            .filter(|m| m.to.iter().any(|to| to.contains(&address)))
            .collect();
        let message_ids: HashSet<&str> = my_mails.iter().map(|m| m.message_id.as_str()).collect();
        let mail_redeliveries = my_mails.len() - message_ids.len();
        if message_ids.len() != 1 {
            problems.push(format!("{} distinct emails", message_ids.len()));
        }
        if message_ids.len() > 1 {
            verdict.count("duplicated (email)");
        }
        if mail_redeliveries > 0 {
            verdict.count("email redelivered (same id)");
        }
        // Takeovers, from the job's history.
        let mut takeovers = Vec::new();
        let history_path = format!("/v1/jobs/{id}/history");
        let history = view["placement"]["owner_node"]
            .as_str()
            .and_then(|owner| world.index(owner))
            .filter(|owner| up.contains(owner))
            .and_then(|owner| world.get(owner, &history_path))
            .or_else(|| world.get_any(&history_path));
        if let Some((200, history)) = &history {
            let mut previous = world.names[job.node].clone();
            for event in history["events"].as_array().into_iter().flatten() {
                let owner = &event["event"]["owner"];
                let (Some(node), Some(epoch), Some(at)) = (
                    owner["node"].as_str(),
                    owner["epoch"].as_u64(),
                    owner["at"].as_u64(),
                ) else {
                    continue;
                };
                if epoch >= 2 && node != previous {
                    let cause = faults.iter().rfind(|f| {
                        f.at_ms <= at
                            && (f.target == "all" || f.target.split('|').any(|t| t == previous))
                    });
                    let owner_cut_off = world
                        .index(&previous)
                        .is_some_and(|i| world.outage_at(i, at, OWNER_BACK_GRACE_MS).is_some());
                    let class = owner_change_class(world, cause, owner_cut_off, at);
                    let from = cause.map_or(at, |fault| {
                        fault.detected_at_ms.unwrap_or(fault.at_ms).min(at)
                    });
                    takeovers.push(json!({
                        "from": previous, "to": node, "epoch": epoch,
                        "after_fault": cause.map(|f| f.kind.as_str()),
                        "class": class.as_str(), "ms": at - from,
                    }));
                    verdict
                        .owner_changes
                        .entry(class)
                        .or_default()
                        .push(at - from);
                }
                previous = node.to_owned();
            }
        }
        // A step attempt started twice (same step and attempt number) ran twice at once.
        if let Some((200, history)) = &history {
            let mut seen: HashMap<(String, u64), Vec<String>> = HashMap::new();
            for event in history["events"].as_array().into_iter().flatten() {
                let started = &event["event"]["step_started"];
                if let (Some(step), Some(attempt)) =
                    (started["step"].as_str(), started["attempt"].as_u64())
                {
                    seen.entry((step.to_owned(), attempt))
                        .or_default()
                        .push(started["node"].as_str().unwrap_or("?").to_owned());
                }
            }
            let mut twice: Vec<String> = seen
                .into_iter()
                .filter(|(_, nodes)| nodes.len() > 1)
                .map(|((step, attempt), nodes)| format!("{step} attempt {attempt} on {nodes:?}"))
                .collect();
            twice.sort();
            if !twice.is_empty() {
                verdict.count("steps started twice");
                problems.push(format!("step attempts started twice: {}", twice.join("; ")));
            }
        }
        let latency = job
            .terminal_ms
            .zip(job.acked_ms)
            .map(|(done, acked)| done.saturating_sub(acked));
        if let Some(latency) = latency {
            verdict.latency_ms.push(latency);
        }
        if problems.is_empty() {
            verdict.count(match job.spec.expect {
                _ if state == "cancelled" => "cancelled by the client",
                Expect::Completed { .. } => "completed",
                Expect::Failed => "failed as expected",
            });
        } else {
            verdict.count("jobs with a violation");
            for problem in &problems {
                verdict.violations.push(format!(
                    "job {} {id} ({}): {problem}",
                    job.label, job.spec.file
                ));
            }
        }
        verdict.jobs.push(json!({
            "key": job.key, "label": job.label, "file": job.spec.file, "id": id,
            "node": world.names[job.node], "acknowledged": true, "attempts": job.attempts,
            "state": state, "states": states, "error": view["error"]["code"],
            "owner": view["placement"]["owner_node"], "epoch": view["placement"]["epoch"],
            "ran_on": view["placement"]["ran_on"],
            "wer": wer, "latency_ms": latency,
            "cancel": job.cancel.as_ref().map(|c| json!({
                "status": c.status, "node": world.names[c.node], "at_ms": c.at_ms,
            })),
            "webhooks": mine.len(), "webhook_deliveries": deliveries.len(),
            "webhook_log": mine.iter().map(|h| json!({"delivery": h.delivery, "at_ms": h.at_ms})).collect::<Vec<_>>(),
            "emails": my_mails.len(), "email_ids": message_ids.len(),
            "takeovers": takeovers, "problems": problems,
            "history": if problems.is_empty() { Value::Null } else { history.map(|(_, h)| h).unwrap_or(Value::Null) },
        }));
    }
    check_listings(world, jobs, &mut verdict);
    verdict
}

/// The job's view at every up node that has it; while they disagree, polls again for up
/// `deadline` (replication is asynchronous) before returning what it sees.
fn converged_views(
    world: &World,
    up: &[usize],
    id: &str,
    deadline: std::time::Instant,
) -> Vec<(usize, Value)> {
    loop {
        let views: Vec<(usize, Value)> = up
            .iter()
            .filter_map(|&i| match world.get(i, &format!("/v1/jobs/{id}")) {
                Some((200, view)) => Some((i, view)),
                _ => None,
            })
            .collect();
        let agree =
            views.len() == up.len() && views.iter().all(|(_, v)| v["state"] == views[0].1["state"]);
        if agree || std::time::Instant::now() > deadline {
            return views;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// How long, from the start of the checks, the views of a job may still disagree.
const CONVERGENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// Lists the jobs of every up node: none unknown, none twice for one key.
fn check_listings(world: &World, jobs: &[Job], verdict: &mut Verdict) {
    let by_key: HashMap<&str, &Job> = jobs.iter().map(|j| (j.key.as_str(), j)).collect();
    let mut ids_by_key: HashMap<String, HashSet<String>> = HashMap::new();
    for i in world.up() {
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let path = match &cursor {
                Some(cursor) => format!("/v1/jobs?limit=200&cursor={cursor}"),
                None => "/v1/jobs?limit=200".to_owned(),
            };
            let Some((200, page)) = world.get(i, &path) else {
                verdict
                    .violations
                    .push(format!("{} did not list its jobs", world.names[i]));
                break;
            };
            for listed in page["jobs"].as_array().into_iter().flatten() {
                let id = listed["id"].as_str().unwrap_or_default().to_owned();
                let url = listed["source"]["url"].as_str().unwrap_or_default();
                match key_of_url(url) {
                    Some(key) if by_key.contains_key(key.as_str()) => {
                        ids_by_key.entry(key).or_default().insert(id);
                    }
                    _ => verdict.violations.push(format!(
                        "{} lists job {id} ({url}) that nobody submitted",
                        world.names[i]
                    )),
                }
            }
            cursor = page["next_cursor"].as_str().map(str::to_owned);
            pages += 1;
            if cursor.is_none() || pages > 1000 {
                break;
            }
        }
    }
    for (key, ids) in ids_by_key {
        let job = by_key[key.as_str()];
        match &job.id {
            Some(acked) => {
                let extra: Vec<_> = ids.iter().filter(|id| *id != acked).collect();
                if !extra.is_empty() {
                    verdict.count("duplicated (job)");
                    verdict.violations.push(format!(
                        "job {} (key {key}) acknowledged as {acked} but also exists as {extra:?}",
                        job.label
                    ));
                }
            }
            None => {
                verdict.notes.push(format!(
                    "job {} (key {key}) was never acknowledged but exists as {ids:?}",
                    job.label
                ));
            }
        }
    }
}
