//! ytcaption's actors. For now: the Transcriber and the Whisper engine it owns.
//!
//! # Layout
//! - [`engine`]: Whisper on ONNX Runtime: audio decode, log-mel front end, tokenizer, model
//!   loading, greedy decoding with Whisper's rules, word alignment.
//! - [`transcriber`]: the Transcriber, the one owner of a loaded engine in a process.
//! - [`notify`]: job notifications: signed webhooks (body, signature, delivery policy) and
//!   email over SMTP.

pub mod engine;
pub mod notify;
pub mod transcriber;
