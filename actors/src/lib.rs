//! ytcaption's actors: the node's supervision tree, the job saga, and the workers it drives.
//!
//! # Layout
//! - [`engine`]: Whisper on ONNX Runtime: audio decode, log-mel front end, tokenizer, model
//!   loading, greedy decoding with Whisper's rules, word alignment.
//! - [`transcriber`]: the Transcriber, the one owner of a loaded engine in a process.
//! - [`store`]: the durable job log (sled, group commit).
//! - [`hub`]: live job updates for watchers.

pub mod downloader;
pub mod engine;
pub mod hub;
pub mod job_manager;
pub mod metrics;
pub mod node;
pub mod saga;
pub mod store;
pub mod storer;
pub mod supervisor;
pub mod transcriber;
pub mod worker;
