//! ytcaption's shared types.
//!
//! # Layout
//! - [`transcript`]: the [`Transcript`] model (language, duration, segments, words) that the engine
//!   produces and every later layer stores, serves and sends.
//! - [`render`]: the output formats (txt, srt, vtt, json) rendered from a [`Transcript`].
//!
//! This is the only crate whose types will cross the wire between nodes; keep them versioned
//! (see [`transcript::TRANSCRIPT_VERSION`]).

pub mod render;
pub mod transcript;

pub use render::{Format, UnknownFormat};
pub use transcript::{Segment, Transcript, Word};
