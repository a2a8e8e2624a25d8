//! Messages that ask a worker actor (Downloader, Transcriber, Storage, Notifier) to run one saga
//! step, and their answers. Today they travel between actors of one node; the cluster sends the
//! same types between nodes, encoded with [`encode`] and checked with [`decode`].
//!
//! # Versioning
//! Every encoded message starts with a 4-byte magic and a little-endian `u16` version. A
//! payload from a newer node, an older incompatible one, or garbage is refused with a
//! [`WireError`], never a panic: `decode` is total.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::job::{JobId, JobSpec, Reason, Step, StepOutput};

/// The version this build writes and the newest it reads.
/// Version 2 added [`StepRequest::chunk`].
pub const WIRE_VERSION: u16 = 2;
/// The oldest version this build still reads.
pub const MIN_WIRE_VERSION: u16 = 2;
const MAGIC: &[u8; 4] = b"ytc\x01";
/// No single message may exceed this (ractor closes a whole session past 16 MiB).
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// "Run this step of this job": everything a worker needs, so that it holds no saga state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRequest {
    pub job_id: JobId,
    /// The owner's epoch (fencing token for the cluster; always 1 on a single node).
    pub epoch: u64,
    pub step: Step,
    pub attempt: u32,
    pub spec: JobSpec,
    /// Outputs of the steps already done (the download's media key for transcription, ...).
    pub inputs: Vec<(Step, StepOutput)>,
    /// Notify step only: channels already delivered, never to be sent again.
    #[serde(default)]
    pub delivered: Vec<crate::job::Channel>,
    /// The step's deadline, milliseconds since the epoch.
    pub deadline_ms: u64,
    /// Notify step only: past this time a channel that still fails is given up.
    #[serde(default)]
    pub give_up_at_ms: Option<u64>,
    /// The step's attempt limit: the last attempt gives up on what still fails.
    pub max_attempts: u32,
    /// Notify step only: the job failed for this reason (tell that instead of success).
    #[serde(default)]
    pub failure: Option<Reason>,
    /// Transcribe step only: transcribe just this stretch of the media, for the Transcriber
    /// that split a long file across the cluster. The answer is a [`StepOutput::Chunk`].
    #[serde(default)]
    pub chunk: Option<ChunkRange>,
}

/// A stretch of a job's media, in milliseconds from its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRange {
    pub index: u32,
    pub start_ms: u64,
    pub end_ms: u64,
}

impl StepRequest {
    pub fn input(&self, step: Step) -> Option<&StepOutput> {
        self.inputs
            .iter()
            .find(|(done, _)| *done == step)
            .map(|(_, output)| output)
    }
}

/// How an attempt failed, and whether trying again can help.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepFailure {
    pub reason: Reason,
    /// A transient problem (a dependency down, a timeout): the saga retries with backoff.
    /// Otherwise the input is bad and the job fails now.
    pub retryable: bool,
}

impl StepFailure {
    pub fn permanent(code: impl Into<String>, message: impl Into<String>) -> StepFailure {
        StepFailure {
            reason: Reason::new(code, message),
            retryable: false,
        }
    }

    pub fn transient(code: impl Into<String>, message: impl Into<String>) -> StepFailure {
        StepFailure {
            reason: Reason::new(code, message),
            retryable: true,
        }
    }
}

/// A worker's answer to a [`StepRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepReply {
    pub job_id: JobId,
    pub step: Step,
    pub result: Result<StepOutput, StepFailure>,
    /// Notify step only: channels delivered by this attempt (and a final per-channel give-up).
    #[serde(default)]
    pub deliveries: Vec<Delivery>,
}

/// What happened to one notification channel in a notify attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub channel: crate::job::Channel,
    pub delivered: bool,
    /// Set when the channel will not be tried again.
    pub gave_up: Option<Reason>,
}

/// Why bytes could not be decoded into a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("not a ytcaption message (bad magic)")]
    BadMagic,
    #[error("message version {got} is not supported (this node reads {min}..={max})")]
    Version { got: u16, min: u16, max: u16 },
    #[error("message of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("malformed message: {0}")]
    Malformed(String),
}

impl WireError {
    pub fn code(&self) -> &'static str {
        match self {
            WireError::BadMagic => "wire.bad_magic",
            WireError::Version { .. } => "wire.version",
            WireError::TooLarge(_) => "wire.too_large",
            WireError::Malformed(_) => "wire.malformed",
        }
    }
}

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_MESSAGE_BYTES>()
}

/// Encodes `message` with the current version header.
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&WIRE_VERSION.to_le_bytes());
    let body = bincode::serde::encode_to_vec(message, bincode_config())
        .map_err(|error| WireError::Malformed(error.to_string()))?;
    if body.len() > MAX_MESSAGE_BYTES {
        return Err(WireError::TooLarge(body.len()));
    }
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes a message, refusing garbage, other versions, trailing bytes and oversize input.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    if bytes.len() > MAX_MESSAGE_BYTES + 6 {
        return Err(WireError::TooLarge(bytes.len()));
    }
    let (magic, rest) = bytes.split_at_checked(4).ok_or(WireError::BadMagic)?;
    if magic != MAGIC {
        return Err(WireError::BadMagic);
    }
    let (version, body) = rest
        .split_at_checked(2)
        .ok_or_else(|| WireError::Malformed("truncated header".into()))?;
    let version = u16::from_le_bytes([version[0], version[1]]);
    if !(MIN_WIRE_VERSION..=WIRE_VERSION).contains(&version) {
        return Err(WireError::Version {
            got: version,
            min: MIN_WIRE_VERSION,
            max: WIRE_VERSION,
        });
    }
    let (message, used) = bincode::serde::decode_from_slice(body, bincode_config())
        .map_err(|error| WireError::Malformed(error.to_string()))?;
    if used != body.len() {
        return Err(WireError::Malformed(format!(
            "{} trailing bytes",
            body.len() - used
        )));
    }
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{Source, Task};
    use crate::Format;

    fn request() -> StepRequest {
        StepRequest {
            job_id: JobId::new(7, 9),
            epoch: 1,
            step: Step::Transcribe,
            attempt: 2,
            spec: JobSpec {
                source: Source::Url {
                    url: "https://example.com/x.wav".into(),
                },
                language: Some("en".into()),
                task: Task::Translate,
                model: None,
                formats: vec![Format::Vtt, Format::Json],
                webhook_url: None,
                email: Some("a@example.com".into()),
                prompt: None,
                word_timestamps: false,
                owner: "k1".into(),
            },
            inputs: vec![(
                Step::Download,
                StepOutput::Downloaded {
                    media_key: "jobs/x/media".into(),
                    bytes: 3,
                    title: Some("t".into()),
                },
            )],
            delivered: vec![],
            deadline_ms: 123,
            give_up_at_ms: None,
            max_attempts: 3,
            failure: None,
            chunk: Some(ChunkRange {
                index: 1,
                start_ms: 599_000,
                end_ms: 901_500,
            }),
        }
    }

    #[test]
    fn round_trip() {
        let bytes = encode(&request()).unwrap();
        let back: StepRequest = decode(&bytes).unwrap();
        assert_eq!(back, request());
    }

    #[test]
    fn garbage_other_versions_and_truncation_are_errors_not_panics() {
        let good = encode(&request()).unwrap();
        assert_eq!(decode::<StepRequest>(b"").unwrap_err(), WireError::BadMagic);
        assert_eq!(
            decode::<StepRequest>(b"GET / HTTP/1.1\r\n").unwrap_err(),
            WireError::BadMagic
        );
        let mut newer = good.clone();
        newer[4..6].copy_from_slice(&(WIRE_VERSION + 1).to_le_bytes());
        assert!(matches!(
            decode::<StepRequest>(&newer),
            Err(WireError::Version { .. })
        ));
        let mut older = good.clone();
        older[4..6].copy_from_slice(&0u16.to_le_bytes());
        assert_eq!(
            decode::<StepRequest>(&older).unwrap_err().code(),
            "wire.version"
        );
        for cut in [5, 7, good.len() / 2, good.len() - 1] {
            assert!(decode::<StepRequest>(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(decode::<StepRequest>(&trailing).is_err());
        // Random bytes after a valid header.
        let mut state = 0x1234_5678_u64;
        for _ in 0..500 {
            let mut bytes = good[..6].to_vec();
            for _ in 0..(state % 300) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                bytes.push(state as u8);
            }
            let _ = decode::<StepRequest>(&bytes);
        }
    }
}
