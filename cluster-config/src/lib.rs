//! ytcaption configuration: one TOML file, `YTCAPTION_*` environment overrides and built-in
//! defaults, parsed and validated as a whole before any port is bound.
//!
//! # Layout
//! - [`schema`]: the [`Config`] structs; `Default` is the built-in default of every key.
//! - [`load`]: [`Config::load`]: defaults, then the file, then the environment, merged into one
//!   TOML tree and deserialized once, then [`Config::validate`].
//! - [`validate`]: the semantic checks, all run, all reported ([`ConfigErrors`]).
//! - [`units`]: `"30s"` durations and `"2GiB"` sizes.
//! - [`keys`]: API key hashing and constant-time matching.
//! - [`net`]: CIDR blocks for the `allow_private` lists.
//! - [`dirs`]: data and models directories (also used by the CLI without a config file).
//!
//! `deploy/config/ytcaption.example.toml` lists every key with its default; tests keep it in
//! step with the schema.

pub mod dirs;
pub mod error;
pub mod keys;
pub mod load;
pub mod net;
mod resolve;
pub mod schema;
pub mod units;
pub mod validate;

pub use dirs::{data_dir, models_dir, ConfigError, DATA_DIR_ENV, MODELS_DIR_ENV};
pub use error::{ConfigErrors, ConfigIssue};
pub use keys::hash_api_key;
pub use load::{ENV_PREFIX, NON_CONFIG_ENV};
pub use net::{Cidr, CidrError};
pub use schema::{
    ApiKey, Auth, Backend, Cluster, Config, Downloader, Http, Jobs, Local, Log, LogFormat, Notify,
    Retry, Role, Smtp, SmtpSecurity, Step, Storage, Supervisor, Transcriber, WorkerRole, S3,
};
pub use units::{Size, UnitError};

/// The model used when none is named.
pub const DEFAULT_MODEL: &str = "base";
