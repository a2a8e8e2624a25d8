//! ytcaption's shared types.
//!
//! # Layout
//! - [`transcript`]: the [`Transcript`] model (language, duration, segments, words) that the engine
//!   produces and every later layer stores, serves and sends.
//! - [`render`]: the output formats (txt, srt, vtt, json) rendered from a [`Transcript`].
//! - [`job`]: the job model: [`JobSpec`], the saga's [`Event`]s and the [`JobState`] folded from
//!   them.
//! - [`time`]: epoch milliseconds and RFC 3339 text, without a calendar dependency.
//! - [`wire`]: the versioned messages a JobManager and its workers exchange.
//! - [`cluster`]: what nodes tell each other (heartbeats, job-log replication, lookups).
//!
//! This is the only crate whose types cross the wire between nodes; keep them versioned
//! (see [`transcript::TRANSCRIPT_VERSION`] and [`wire::WIRE_VERSION`]).

pub mod cluster;
pub mod job;
pub mod render;
pub mod time;
pub mod transcript;
pub mod wire;

pub use job::{
    Channel, Event, JobId, JobSpec, JobState, Reason, Source, Stage, Step, StepOutput, Task,
};
pub use render::{Format, UnknownFormat};
pub use transcript::{Segment, Transcript, Word};
