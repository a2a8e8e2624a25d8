//! The client workload: jobs submitted through random nodes' HTTP ingress the way a real
//! client does it (an `Idempotency-Key` per job, retries on connection errors and 429/503 at
//! the same node, since keys are per node), a mix of clips, formats and lengths, and bad
//! inputs that must fail cleanly. Each job carries its client key in its media URL
//! (`?k=`), its webhook path (`/sink/<key>`) and its email address (`job-<key>@…`), so the
//! oracle can tie everything that arrives back to one submission.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use ytcaption_protocol::time::now_ms;

use crate::rng::Rng;
use crate::world::{lock, World};

/// Good clips: (file under the fixtures directory, weight). The known text is the file's
/// stem (`weather_festival.mp3` -> `weather_festival.txt`).
const GOOD: &[(&str, u32)] = &[
    ("news_espeak.wav", 3),
    ("cooking_espeak.wav", 2),
    ("podcast_espeak.wav", 2),
    ("science_festival.wav", 2),
    ("market_festival.wav", 2),
    ("weather_festival.wav", 1),
    ("weather_festival.mp3", 1),
    ("weather_festival.flac", 1),
    ("weather_festival.m4a", 1),
    ("weather_festival.ogg", 1),
    ("weather_festival.opus.webm", 1),
    ("weather_festival.mp4", 1),
    ("long.wav", 1),
];

/// Inputs that must end `failed` with a `media.*` code.
const BAD: &[&str] = &[
    "bad/text.mp3",
    "bad/empty.mp3",
    "bad/truncated.mp3",
    "bad/rate0.wav",
    "bad/header_only.wav",
];

/// What the oracle expects of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Completed, with a transcript close to this clip's known text.
    Completed { text: String },
    /// Failed with a `media.*` error.
    Failed,
}

/// How a job is submitted.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub file: String,
    pub expect: Expect,
    /// Milliseconds the media server waits before answering the download.
    pub download_delay_ms: u64,
    /// The webhook receiver takes [`crate::world::SLOW_HOOK`] to answer this job's hook.
    pub slow_hook: bool,
    /// The client cancels the job this long after its 202, at a random node.
    pub cancel_after_ms: Option<u64>,
}

impl JobSpec {
    pub fn new(file: &str) -> JobSpec {
        let expect = if file.starts_with("bad/") {
            Expect::Failed
        } else {
            let stem = file.split('.').next().unwrap_or(file);
            Expect::Completed {
                text: stem.to_owned(),
            }
        };
        JobSpec {
            file: file.to_owned(),
            expect,
            download_delay_ms: 0,
            slow_hook: false,
            cancel_after_ms: None,
        }
    }

    /// A random job: ~15% bad inputs, the rest drawn from the clips by weight.
    pub fn random(rng: &mut Rng) -> JobSpec {
        if rng.chance(0.15) {
            return JobSpec::new(BAD[rng.index(BAD.len())]);
        }
        let weights: Vec<u32> = GOOD.iter().map(|(_, w)| *w).collect();
        JobSpec::new(GOOD[rng.weighted(&weights)].0)
    }
}

/// One submission and what became of it.
#[derive(Debug, Clone)]
pub struct Job {
    /// The client's idempotency key.
    pub key: String,
    /// A name scenarios use.
    pub label: String,
    pub spec: JobSpec,
    /// The node it was submitted to.
    pub node: usize,
    /// The id from the 202, if acknowledged.
    pub id: Option<String>,
    pub acked_ms: Option<u64>,
    /// First time the tracker saw it terminal.
    pub terminal_ms: Option<u64>,
    pub attempts: u32,
    /// Why it was never acknowledged.
    pub rejected: Option<String>,
    /// What the client's cancel got, when it sent one.
    pub cancel: Option<CancelAnswer>,
}

/// The answer to a client's `POST /v1/jobs/{id}/cancel`.
#[derive(Debug, Clone)]
pub struct CancelAnswer {
    /// 202 (cancel requested), 409 (the job had finished), or `None`: no answer in time.
    pub status: Option<u16>,
    pub node: usize,
    pub at_ms: u64,
}

/// Every job of the run.
#[derive(Debug, Default)]
pub struct Jobs(pub Mutex<Vec<Job>>);

impl Jobs {
    pub fn snapshot(&self) -> Vec<Job> {
        lock(&self.0).clone()
    }

    pub fn id_of(&self, label: &str) -> Option<String> {
        lock(&self.0)
            .iter()
            .find(|job| job.label == label)
            .and_then(|job| job.id.clone())
    }
}

/// Submits `spec` at node `node` as a client would; records the job (acknowledged or not).
pub fn submit(world: &World, jobs: &Jobs, key: &str, label: &str, spec: JobSpec, node: usize) {
    let mut query = format!("k={key}");
    if spec.download_delay_ms > 0 {
        query.push_str(&format!("&delay={}", spec.download_delay_ms));
    }
    let hook = if spec.slow_hook {
        format!("/sink/slow/{key}")
    } else {
        format!("/sink/{key}")
    };
    let body = json!({
        "url": world.media.url(&match spec.file.strip_prefix("bad/") {
            Some(name) => format!("/bad/{name}?{query}"),
            None => format!("/files/{}?{query}", spec.file),
        }),
        "webhook_url": world.media.url(&hook),
        "email": format!("job-{key}@example.com"),
        "formats": ["txt"],
    });
    let url = format!("{}/v1/jobs", world.urls[node]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut backoff = Duration::from_millis(200);
    let mut attempts = 0;
    let (id, rejected) = loop {
        attempts += 1;
        let result = ureq::post(&url)
            .set("Idempotency-Key", key)
            .timeout(Duration::from_secs(15))
            .send_json(body.clone());
        let retry_why = match result {
            Ok(response) => {
                let status = response.status();
                let reply: Value = response.into_json().unwrap_or(Value::Null);
                match reply["id"].as_str() {
                    Some(id) if status == 202 || status == 200 => {
                        break (Some(id.to_owned()), None)
                    }
                    _ => break (None, Some(format!("{status} without an id: {reply}"))),
                }
            }
            Err(ureq::Error::Status(status @ (429 | 502 | 503 | 504), _)) => format!("{status}"),
            Err(ureq::Error::Status(status, response)) => {
                let text = response.into_string().unwrap_or_default();
                break (None, Some(format!("{status}: {text}")));
            }
            Err(ureq::Error::Transport(error)) => error.to_string(),
        };
        if Instant::now() > deadline {
            break (
                None,
                Some(format!("gave up after {attempts} attempts: {retry_why}")),
            );
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(2));
    };
    let acked_ms = id.as_ref().map(|_| now_ms());
    match (&id, &rejected) {
        (Some(id), _) => world.say(&format!(
            "job {label} ({}) acknowledged by {} as {id}",
            spec.file, world.names[node]
        )),
        (None, Some(why)) => world.say(&format!("job {label} not acknowledged: {why}")),
        _ => {}
    }
    lock(&jobs.0).push(Job {
        key: key.to_owned(),
        label: label.to_owned(),
        spec,
        node,
        id,
        acked_ms,
        terminal_ms: None,
        attempts,
        rejected,
        cancel: None,
    });
}

/// Cancels the job labelled `label` as a client would: at a random up node, retrying other
/// nodes on connection errors, 404 (a node the job has not reached yet) and 5xx, for up to a
/// minute. Records the answer on the job.
pub fn cancel(world: &World, jobs: &Jobs, label: &str, rng: &mut Rng) {
    let Some(id) = jobs.id_of(label) else {
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut answer = None;
    let mut node = 0;
    while Instant::now() < deadline {
        let up = world.up();
        if up.is_empty() {
            std::thread::sleep(Duration::from_millis(500));
            continue;
        }
        node = up[rng.index(up.len())];
        let url = format!("{}/v1/jobs/{id}/cancel", world.urls[node]);
        match ureq::post(&url).timeout(Duration::from_secs(15)).call() {
            Ok(response) => {
                answer = Some(response.status());
                break;
            }
            Err(ureq::Error::Status(409, _)) => {
                answer = Some(409);
                break;
            }
            Err(ureq::Error::Status(404 | 429 | 500..=599, _) | ureq::Error::Transport(_)) => {}
            Err(ureq::Error::Status(status, response)) => {
                let text = response.into_string().unwrap_or_default();
                world.say(&format!("cancel of {label} refused: {status} {text}"));
                answer = Some(status);
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    world.say(&format!(
        "cancel of job {label} at {}: {}",
        world.names[node],
        answer.map_or("no answer".to_owned(), |status| status.to_string())
    ));
    for job in lock(&jobs.0).iter_mut() {
        if job.label == label {
            job.cancel = Some(CancelAnswer {
                status: answer,
                node,
                at_ms: now_ms(),
            });
        }
    }
}

pub fn terminal(state: &str) -> bool {
    matches!(state, "completed" | "failed" | "cancelled")
}

/// One pass of the tracker: notes when each acknowledged job is first seen terminal.
pub fn track(world: &World, jobs: &Jobs) {
    let pending: Vec<String> = lock(&jobs.0)
        .iter()
        .filter(|job| job.terminal_ms.is_none())
        .filter_map(|job| job.id.clone())
        .collect();
    for id in pending {
        // Any node that reports it terminal counts: a stale copy elsewhere is the oracle's
        // business, not a reason to wait.
        let seen_terminal = world.up().into_iter().any(|i| {
            matches!(world.get(i, &format!("/v1/jobs/{id}")),
                Some((200, view)) if terminal(view["state"].as_str().unwrap_or_default()))
        });
        if seen_terminal {
            let now = now_ms();
            for job in lock(&jobs.0).iter_mut() {
                if job.id.as_deref() == Some(id.as_str()) && job.terminal_ms.is_none() {
                    job.terminal_ms = Some(now);
                }
            }
        }
    }
}

/// Whether every acknowledged job has been seen terminal.
pub fn all_terminal(jobs: &Jobs) -> bool {
    lock(&jobs.0)
        .iter()
        .all(|job| job.id.is_none() || job.terminal_ms.is_some())
}
