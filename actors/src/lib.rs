//! ytcaption's actors: the node's supervision tree, the job saga, and the workers it drives.
//!
//! # Layout
//! - [`node`]: one node: builds the supervision tree from the configuration; the facade the
//!   HTTP layer calls.
//! - [`supervisor`]: one-for-one restarts with backoff and restart intensity.
//! - [`job_manager`]: admission, saga drivers, cancel/retry/delete, retention.
//! - [`saga`]: the step-by-step driver of one job, from the job log.
//! - [`store`]: the durable job log (sled, group commit).
//! - [`worker`]: the actor shape shared by the four workers:
//!   [`downloader`], [`transcriber`], [`storer`] (the Storage worker) and [`notifier`].
//! - Libraries the workers use: [`engine`] (Whisper on ONNX Runtime), [`download`] and
//!   [`net`] (guarded outbound HTTP, yt-dlp), [`storage`] (local content-addressed or S3),
//!   [`notify`] (signed webhooks, email).
//! - [`hub`]: live job updates for watchers; [`metrics`]: Prometheus metrics.

pub mod cluster;
pub mod download;
pub mod downloader;
pub mod engine;
pub mod hub;
pub mod job_manager;
pub mod metrics;
pub mod net;
pub mod node;
pub mod notifier;
pub mod notify;
pub mod saga;
pub mod split;
pub mod storage;
pub mod store;
pub mod storer;
pub mod supervisor;
pub mod transcriber;
pub mod worker;
