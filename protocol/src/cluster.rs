//! Messages between the nodes of a cluster (heartbeats, job-log replication, lookups and
//! forwarded operations). They travel as `Vec<u8>` inside ractor messages, encoded with
//! [`crate::wire::encode`] and checked with [`crate::wire::decode`], so an old, newer or
//! garbage payload is a counted error and never a panic.

use serde::{Deserialize, Serialize};

use crate::job::{Event, JobId, JobState};

/// What a node tells its peers in every heartbeat (and answers to theirs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerInfo {
    pub name: String,
    /// `host:port` of its cluster listener, as peers should dial it.
    pub cluster_addr: String,
    /// Base URL of its HTTP API (internal blob transfers, redirects).
    pub http_url: String,
    /// A draining node takes no new work and hands its jobs over.
    pub draining: bool,
    /// Idle workers per role (`download`, `transcribe`, `store`, `notify`) and their total.
    pub workers: Vec<RoleLoad>,
    /// Unfinished jobs this node owns (waiting or running).
    pub owned_active: u64,
    /// Members it knows of, `(name, cluster_addr)`: a node that hears of a member it is not
    /// connected to dials it, so any one seed leads to a full mesh.
    pub members: Vec<(String, String)>,
    /// When the process started (ms since the epoch): a restart shows as a new value.
    pub started_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoleLoad {
    pub role: String,
    pub idle: u32,
    pub total: u32,
}

/// "Keep this copy of a job's log": sent by the owner after each durable change, with the
/// whole log (a few kilobytes), so a replica that missed changes catches up in one message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Replicate {
    pub job_id: JobId,
    /// The owner's epoch; a replica holding a higher one refuses.
    pub epoch: u64,
    pub events: Vec<Event>,
    /// Set when the owner deleted the job's data: the replica drops its events too.
    pub tombstone: Option<Event>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ReplicateAnswer {
    /// The copy is on the replica's disk.
    Stored,
    /// The replica knows a newer owner: the sender must stop driving the job.
    Stale { owner: String, epoch: u64 },
    /// The replica could not write it (its job log is failing).
    Failed(String),
}

/// A job as one node knows it: its folded state and, unless tombstoned, its events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobCopy {
    pub state: JobState,
    pub events: Vec<Event>,
}

impl From<JobCopy> for Replicate {
    /// A copy to keep, as the node holding `copy` has it.
    fn from(copy: JobCopy) -> Replicate {
        Replicate {
            job_id: copy.state.id,
            epoch: copy.state.epoch,
            events: copy.events,
            tombstone: None,
        }
    }
}

/// An operation forwarded to a job's owner (or, for drain, to a node).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobOp {
    Cancel,
    Retry,
    Delete,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PeerRequest {
    Ping(PeerInfo),
    Replicate(Replicate),
    Lookup(JobId),
    Forward(JobId, JobOp),
    /// Stop or resume placing work on the receiving node; draining also hands its jobs over.
    Drain(bool),
}

/// Why a forwarded operation failed (mirrors the owner's error kinds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpError {
    NotFound,
    Conflict(String),
    Unavailable(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PeerAnswer {
    Pong(PeerInfo),
    Replicated(ReplicateAnswer),
    Found(Option<Box<JobCopy>>),
    Done(Result<Box<JobState>, OpError>),
    Draining(bool),
    /// The request did not decode or is not understood by this node's version.
    Refused(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{JobSpec, Source, Step, Task};
    use crate::wire::{decode, encode, WireError};
    use crate::Format;

    fn events() -> Vec<Event> {
        let spec = JobSpec {
            source: Source::Url {
                url: "https://example.com/a.mp3".into(),
            },
            language: None,
            task: Task::Transcribe,
            model: None,
            formats: vec![Format::Srt],
            webhook_url: Some("https://hooks.example.com/x".into()),
            email: None,
            prompt: Some("names".into()),
            word_timestamps: true,
            owner: "k".into(),
        };
        vec![
            Event::Accepted { spec, at: 5 },
            Event::Owner {
                node: "a".into(),
                epoch: 1,
                at: 5,
            },
            Event::StepStarted {
                step: Step::Download,
                attempt: 1,
                at: 6,
                node: Some("b".into()),
            },
        ]
    }

    #[test]
    fn every_request_and_answer_round_trips() {
        let id = JobId::new(5, 1);
        let events = events();
        let state = JobState::replay(id.clone(), &events).expect("starts with accepted");
        assert_eq!(state.owner_node.as_deref(), Some("a"));
        assert_eq!(state.epoch, 1);
        assert_eq!(
            state.ran_on.get(&Step::Download).map(String::as_str),
            Some("b")
        );
        let requests = vec![
            PeerRequest::Ping(PeerInfo {
                name: "a".into(),
                cluster_addr: "127.0.0.1:7100".into(),
                http_url: "http://127.0.0.1:8080".into(),
                draining: false,
                workers: vec![RoleLoad {
                    role: "transcriber".into(),
                    idle: 1,
                    total: 2,
                }],
                owned_active: 3,
                members: vec![("b".into(), "127.0.0.1:7101".into())],
                started_ms: 9,
            }),
            PeerRequest::Replicate(Replicate {
                job_id: id.clone(),
                epoch: 1,
                events: events.clone(),
                tombstone: None,
            }),
            PeerRequest::Lookup(id.clone()),
            PeerRequest::Forward(id.clone(), JobOp::Cancel),
            PeerRequest::Drain(true),
        ];
        for request in requests {
            let bytes = encode(&request).unwrap();
            assert_eq!(decode::<PeerRequest>(&bytes).unwrap(), request);
        }
        let answers = vec![
            PeerAnswer::Replicated(ReplicateAnswer::Stale {
                owner: "c".into(),
                epoch: 4,
            }),
            PeerAnswer::Found(Some(Box::new(JobCopy {
                state: state.clone(),
                events,
            }))),
            PeerAnswer::Done(Err(OpError::Conflict("no".into()))),
            PeerAnswer::Done(Ok(Box::new(state))),
        ];
        for answer in answers {
            let bytes = encode(&answer).unwrap();
            assert_eq!(decode::<PeerAnswer>(&bytes).unwrap(), answer);
        }
    }

    #[test]
    fn garbage_and_other_versions_are_errors() {
        assert_eq!(
            decode::<PeerRequest>(b"\x00\x01garbage").unwrap_err(),
            WireError::BadMagic
        );
        let mut bytes = encode(&PeerRequest::Drain(false)).unwrap();
        bytes[4] = 99;
        assert!(matches!(
            decode::<PeerRequest>(&bytes),
            Err(WireError::Version { got: 99, .. })
        ));
        let mut bytes = encode(&PeerRequest::Drain(false)).unwrap();
        bytes[6] = 250; // no such variant
        assert!(matches!(
            decode::<PeerRequest>(&bytes),
            Err(WireError::Malformed(_))
        ));
    }
}
