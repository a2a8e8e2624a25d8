//! ytcaption's actors. For now: the Transcriber and the Whisper engine it owns.
//!
//! # Layout
//! - [`engine`]: Whisper on ONNX Runtime: audio decode, log-mel front end, tokenizer, model
//!   loading, greedy decoding with Whisper's rules, word alignment.
//! - [`transcriber`]: the Transcriber, the one owner of a loaded engine in a process.
//! - [`storage`]: where jobs keep media and transcripts: a local content-addressed directory or
//!   an S3 bucket, behind one API.

pub mod engine;
pub mod storage;
pub mod transcriber;
