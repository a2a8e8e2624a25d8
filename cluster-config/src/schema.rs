//! The configuration schema: every section of `ytcaption.toml` as a plain struct whose
//! `Default` is the built-in default. Every struct refuses unknown fields (a typo must not be
//! silently ignored) and fills missing ones from its default.
//!
//! Durations are `std::time::Duration` written as `"30s"`; sizes are [`Size`] written as
//! `"2GiB"` (see [`crate::units`]). Secrets (S3 secret key, SMTP password, webhook secret) are
//! redacted from `Debug` output so a logged config never leaks them.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::units::serde_duration as dur;
use crate::units::Size;

const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

const fn mins(n: u64) -> Duration {
    Duration::from_secs(n * 60)
}

const fn hours(n: u64) -> Duration {
    Duration::from_secs(n * 3_600)
}

/// Shown instead of a secret in `Debug` output.
fn redacted(secret: &Option<String>) -> Option<&'static str> {
    secret.as_ref().map(|_| "<redacted>")
}

/// The whole node configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// This node's name in logs, metrics and job records.
    pub node_name: String,
    /// Data directory; `None` = `YTCAPTION_DATA_DIR`, XDG data home, `~/.local/share/ytcaption`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// Models directory; `None` = `YTCAPTION_MODELS_DIR`, else `<data_dir>/models`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub models_dir: Option<PathBuf>,
    pub http: Http,
    pub auth: Auth,
    pub jobs: Jobs,
    pub transcriber: Transcriber,
    pub downloader: Downloader,
    pub storage: Storage,
    pub notify: Notify,
    pub supervisor: Supervisor,
    pub cluster: Cluster,
    pub log: Log,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            node_name: "node-1".to_string(),
            data_dir: None,
            models_dir: None,
            http: Http::default(),
            auth: Auth::default(),
            jobs: Jobs::default(),
            transcriber: Transcriber::default(),
            downloader: Downloader::default(),
            storage: Storage::default(),
            notify: Notify::default(),
            supervisor: Supervisor::default(),
            cluster: Cluster::default(),
            log: Log::default(),
        }
    }
}

/// The HTTP API server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    /// Address and port to bind.
    pub listen: SocketAddr,
    /// Base URL for links handed to clients; `None` = `http://<listen>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    /// Largest upload body.
    pub max_body: Size,
    /// Largest JSON request body.
    pub max_json_body: Size,
    /// Largest total size of the request headers.
    pub max_header_bytes: usize,
    /// Most simultaneous client connections.
    pub max_connections: usize,
    /// Deadline for a non-streaming request.
    #[serde(with = "dur")]
    pub request_timeout: Duration,
    /// Deadline for the OpenAI-compatible synchronous endpoints, which wait for the transcript.
    #[serde(with = "dur")]
    pub sync_timeout: Duration,
}

impl Default for Http {
    fn default() -> Http {
        Http {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)),
            public_url: None,
            max_body: Size::gib(2),
            max_json_body: Size::mib(1),
            max_header_bytes: 16 * 1024,
            max_connections: 1024,
            request_timeout: secs(30),
            sync_timeout: hours(1),
        }
    }
}

/// API keys and anonymous access.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    /// Accepted API keys, stored as hashes only.
    pub keys: Vec<ApiKey>,
    /// Whether requests from 127.0.0.1/::1 without a key are accepted (as a plain user).
    pub allow_anonymous_loopback: bool,
}

impl Default for Auth {
    fn default() -> Auth {
        Auth {
            keys: Vec::new(),
            allow_anonymous_loopback: true,
        }
    }
}

/// What an API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Submit and read its own jobs.
    #[default]
    User,
    /// Everything, including other keys' jobs and the admin endpoints.
    Admin,
}

/// One API key: an id for logs and quotas, and the SHA-256 of the secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiKey {
    /// Name of the key in logs, metrics and job ownership; unique.
    pub id: String,
    /// `sha256:<64 lowercase hex>` of the key, see [`crate::hash_api_key`].
    pub hash: String,
    pub role: Role,
    /// Requests per minute allowed for this key.
    pub rate_per_minute: u32,
    /// Jobs this key may have queued or running at once.
    pub max_concurrent_jobs: u32,
}

impl Default for ApiKey {
    fn default() -> ApiKey {
        ApiKey {
            id: String::new(),
            hash: String::new(),
            role: Role::User,
            rate_per_minute: 600,
            max_concurrent_jobs: 100,
        }
    }
}

/// The job manager: queue bounds, retention, retries and per-step limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Jobs {
    /// Most jobs waiting to run; more are refused with 429.
    pub max_queued: usize,
    /// Most jobs running at once.
    pub max_active: usize,
    /// How long an `Idempotency-Key` is remembered.
    #[serde(with = "dur")]
    pub idempotency_ttl: Duration,
    /// How long finished jobs and their transcripts are kept.
    #[serde(with = "dur")]
    pub retention: Duration,
    /// How often expired jobs are swept.
    #[serde(with = "dur")]
    pub sweep_interval: Duration,
    pub retry: Retry,
    pub download: Step,
    pub transcribe: Step,
    /// Transcription deadline per second of audio (on top of `transcribe.timeout` as a cap).
    pub transcribe_timeout_per_audio_second: f64,
    /// Smallest transcription deadline, however short the audio.
    #[serde(with = "dur")]
    pub transcribe_timeout_min: Duration,
    pub store: Step,
    pub notify: Step,
    /// Keep downloaded media after the job finishes (for debugging).
    pub keep_media: bool,
}

impl Default for Jobs {
    fn default() -> Jobs {
        Jobs {
            max_queued: 100_000,
            max_active: 64,
            idempotency_ttl: hours(24),
            retention: hours(168),
            sweep_interval: mins(1),
            retry: Retry::default(),
            download: Step::new(5, mins(30)),
            transcribe: Step::new(3, mins(30)),
            transcribe_timeout_per_audio_second: 2.0,
            transcribe_timeout_min: mins(5),
            store: Step::new(10, mins(5)),
            notify: Step::new(20, mins(1)),
            keep_media: false,
        }
    }
}

/// Exponential backoff between attempts of a job step: `min(cap, base * factor^n)`,
/// then spread by ±`jitter` (a fraction) so retries do not stampede.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retry {
    #[serde(with = "dur")]
    pub base: Duration,
    pub factor: f64,
    #[serde(with = "dur")]
    pub cap: Duration,
    pub jitter: f64,
}

impl Default for Retry {
    fn default() -> Retry {
        Retry {
            base: secs(1),
            factor: 2.0,
            cap: secs(100),
            jitter: 0.2,
        }
    }
}

/// Limits of one job step: how many attempts, and the deadline of each attempt.
///
/// `Step::default()` is only a fallback for a step table that omits a field when deserialized
/// directly; [`crate::Config::load`] merges onto the per-step defaults of [`Jobs::default`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Step {
    pub attempts: u32,
    #[serde(with = "dur")]
    pub timeout: Duration,
}

impl Step {
    /// A step with `attempts` tries of at most `timeout` each.
    pub const fn new(attempts: u32, timeout: Duration) -> Step {
        Step { attempts, timeout }
    }
}

impl Default for Step {
    fn default() -> Step {
        Step::new(3, mins(30))
    }
}

/// The speech-to-text workers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Transcriber {
    /// Parallel transcriptions; 0 = max(1, cores / threads).
    pub workers: usize,
    /// Inference threads per worker; 0 = all cores.
    pub threads: usize,
    /// Model name, as installed by `ytcaption model import`.
    pub model: String,
    /// Load the model at start-up instead of on the first job.
    pub preload: bool,
    /// Audio windows decoded together.
    pub batch_size: usize,
    /// Produce per-word timings.
    pub word_timestamps: bool,
    /// Longest audio accepted.
    #[serde(with = "dur")]
    pub max_duration: Duration,
    /// Audio longer than this is cut at quiet points into chunks that idle Transcribers
    /// across the cluster transcribe side by side; `0s` never splits.
    #[serde(with = "dur")]
    pub split_above: Duration,
    /// Longest chunk aimed at. Chunks come in a multiple of the cluster's Transcribers, so
    /// they may be shorter (never below 10 s); each cut lands within a quarter of the aim.
    #[serde(with = "dur")]
    pub split_chunk: Duration,
    /// Audio added on each side of a chunk, so that no word at a seam is cut; what falls in
    /// the overlap is kept from the chunk it belongs to.
    #[serde(with = "dur")]
    pub split_overlap: Duration,
}

impl Default for Transcriber {
    fn default() -> Transcriber {
        Transcriber {
            workers: 0,
            threads: 0,
            model: crate::DEFAULT_MODEL.to_string(),
            preload: true,
            batch_size: 2,
            word_timestamps: true,
            max_duration: hours(6),
            split_above: mins(10),
            split_chunk: mins(2),
            split_overlap: secs(1),
        }
    }
}

impl Transcriber {
    /// Threads per worker on a machine with `cores` cores (`threads`, or all cores when 0).
    pub fn threads_for(&self, cores: usize) -> usize {
        match self.threads {
            0 => cores.max(1),
            n => n,
        }
    }

    /// Workers on a machine with `cores` cores (`workers`, or cores / threads when 0).
    pub fn workers_for(&self, cores: usize) -> usize {
        match self.workers {
            0 => (cores / self.threads_for(cores)).max(1),
            n => n,
        }
    }
}

/// Media download: direct HTTP and yt-dlp.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Downloader {
    /// Parallel downloads.
    pub workers: usize,
    /// Largest media file.
    pub max_bytes: Size,
    /// Longest media accepted (checked from metadata when available).
    #[serde(with = "dur")]
    pub max_duration: Duration,
    #[serde(with = "dur")]
    pub connect_timeout: Duration,
    /// Longest silence while reading a response body.
    #[serde(with = "dur")]
    pub read_timeout: Duration,
    pub max_redirects: u8,
    /// Private/loopback networks (CIDRs) that URLs may nevertheless point to.
    pub allow_private: Vec<String>,
    /// The yt-dlp program, a path or a name looked up in `PATH`.
    pub ytdlp_path: PathBuf,
    /// Deadline of one yt-dlp run.
    #[serde(with = "dur")]
    pub ytdlp_timeout: Duration,
    /// Netscape cookies file handed to yt-dlp.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cookies_file: Option<PathBuf>,
    /// Hosts (and their subdomains) fetched through yt-dlp rather than plain HTTP.
    pub ytdlp_hosts: Vec<String>,
}

/// Sites handed to yt-dlp by default.
pub const DEFAULT_YTDLP_HOSTS: [&str; 9] = [
    "youtube.com",
    "youtu.be",
    "vimeo.com",
    "soundcloud.com",
    "dailymotion.com",
    "twitch.tv",
    "x.com",
    "twitter.com",
    "tiktok.com",
];

impl Default for Downloader {
    fn default() -> Downloader {
        Downloader {
            workers: 4,
            max_bytes: Size::gib(2),
            max_duration: hours(6),
            connect_timeout: secs(10),
            read_timeout: secs(60),
            max_redirects: 5,
            allow_private: Vec::new(),
            ytdlp_path: PathBuf::from("yt-dlp"),
            ytdlp_timeout: mins(30),
            cookies_file: None,
            ytdlp_hosts: DEFAULT_YTDLP_HOSTS.iter().map(|h| h.to_string()).collect(),
        }
    }
}

/// Where transcripts (and kept media) are stored.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Storage {
    pub backend: Backend,
    pub local: Local,
    pub s3: S3,
}

/// Blob store kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Files under `storage.local.path`.
    #[default]
    Local,
    /// An S3-compatible object store.
    S3,
}

/// The local blob store.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Local {
    /// Directory of blobs; `None` = `<data_dir>/blobs`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
}

/// An S3-compatible object store.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3 {
    /// `http(s)://host:port`; required when `backend = "s3"`.
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_key: Option<String>,
    /// Path-style URLs (`endpoint/bucket/key`), as most self-hosted stores need.
    pub path_style: bool,
    /// Create the bucket at start-up when it is missing.
    pub create_bucket: bool,
    /// Deadline of one request.
    #[serde(with = "dur")]
    pub timeout: Duration,
}

impl Default for S3 {
    fn default() -> S3 {
        S3 {
            endpoint: String::new(),
            region: "us-east-1".to_string(),
            bucket: "ytcaption".to_string(),
            access_key: None,
            secret_key: None,
            path_style: true,
            create_bucket: true,
            timeout: secs(60),
        }
    }
}

impl fmt::Debug for S3 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("access_key", &self.access_key)
            .field("secret_key", &redacted(&self.secret_key))
            .field("path_style", &self.path_style)
            .field("create_bucket", &self.create_bucket)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Completion notifications: webhooks and e-mail.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Notify {
    /// HMAC key signing webhook bodies; `None` = unsigned webhooks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_secret: Option<String>,
    /// Deadline of one webhook delivery attempt.
    #[serde(with = "dur")]
    pub webhook_timeout: Duration,
    /// Stop retrying a webhook this long after the first attempt.
    #[serde(with = "dur")]
    pub webhook_give_up_after: Duration,
    pub webhook_max_attempts: u32,
    /// Private/loopback networks (CIDRs) that webhook URLs may nevertheless point to.
    pub allow_private: Vec<String>,
    /// E-mail delivery; `None` = e-mail notifications are refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smtp: Option<Smtp>,
}

impl Default for Notify {
    fn default() -> Notify {
        Notify {
            webhook_secret: None,
            webhook_timeout: secs(10),
            webhook_give_up_after: hours(24),
            webhook_max_attempts: 20,
            allow_private: Vec::new(),
            smtp: None,
        }
    }
}

impl fmt::Debug for Notify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notify")
            .field("webhook_secret", &redacted(&self.webhook_secret))
            .field("webhook_timeout", &self.webhook_timeout)
            .field("webhook_give_up_after", &self.webhook_give_up_after)
            .field("webhook_max_attempts", &self.webhook_max_attempts)
            .field("allow_private", &self.allow_private)
            .field("smtp", &self.smtp)
            .finish()
    }
}

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// Plain text; only for a relay on the same host or a trusted network.
    None,
    /// Upgrade with STARTTLS, refusing servers that cannot.
    #[default]
    Starttls,
    /// TLS from the first byte (usually port 465).
    Tls,
}

/// The SMTP server used for e-mail notifications.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Smtp {
    pub host: String,
    pub port: u16,
    pub security: SmtpSecurity,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Sender, `addr@example.com` or `Name <addr@example.com>`.
    pub from: String,
    /// Deadline of one delivery.
    #[serde(with = "dur")]
    pub timeout: Duration,
}

impl Default for Smtp {
    fn default() -> Smtp {
        Smtp {
            host: String::new(),
            port: 25,
            security: SmtpSecurity::default(),
            username: None,
            password: None,
            from: String::new(),
            timeout: secs(30),
        }
    }
}

impl fmt::Debug for Smtp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Smtp")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("username", &self.username)
            .field("password", &redacted(&self.password))
            .field("from", &self.from)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Restart policy for crashed actors: at most `max_restarts` within `within`, with backoff
/// from `backoff_base` doubling up to `backoff_cap`; past the limit the actor rests for
/// `cooldown` before trying again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Supervisor {
    pub max_restarts: u32,
    #[serde(with = "dur")]
    pub within: Duration,
    #[serde(with = "dur")]
    pub backoff_base: Duration,
    #[serde(with = "dur")]
    pub backoff_cap: Duration,
    #[serde(with = "dur")]
    pub cooldown: Duration,
}

impl Default for Supervisor {
    fn default() -> Supervisor {
        Supervisor {
            max_restarts: 5,
            within: secs(60),
            backoff_base: Duration::from_millis(100),
            backoff_cap: secs(30),
            cooldown: secs(60),
        }
    }
}

/// A worker role a node can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerRole {
    Download,
    Transcribe,
    Store,
    Notify,
}

impl WorkerRole {
    pub const ALL: [WorkerRole; 4] = [
        WorkerRole::Download,
        WorkerRole::Transcribe,
        WorkerRole::Store,
        WorkerRole::Notify,
    ];
}

/// The peer cluster. Off while `listen` is unset: the node runs alone.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cluster {
    /// Cluster port (`ip:port`). Unset: no cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// `host:port` other nodes dial to reach this one; unset = `listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    /// Nodes to dial at start and whenever they are not connected: `host:port` each; a DNS name
    /// stands for every address it resolves to (a Kubernetes headless service).
    pub seeds: Vec<String>,
    /// Shared secret: the cluster handshake and internal blob transfers. Required with `listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// Also dial the members other nodes report (full mesh from any seed). Off: seeds only.
    pub discover: bool,
    /// Worker roles this node runs; a node without `transcribe` hands every transcription to
    /// its peers.
    pub roles: Vec<WorkerRole>,
    /// Nodes that hold each job's log (the owner included) before it is acknowledged.
    pub replication_factor: u32,
    #[serde(with = "dur")]
    pub heartbeat_interval: Duration,
    /// No heartbeat answer for this long: suspect (no new work placed there).
    #[serde(with = "dur")]
    pub suspect_after: Duration,
    /// No heartbeat answer for this long: down (connection closed, its jobs taken over).
    #[serde(with = "dur")]
    pub down_after: Duration,
    #[serde(with = "dur")]
    pub reconnect_base: Duration,
    #[serde(with = "dur")]
    pub reconnect_cap: Duration,
    /// Timeout of control calls between nodes (replication, lookups, forwarded operations).
    #[serde(with = "dur")]
    pub call_timeout: Duration,
    /// Jobs waiting or running in the whole cluster past which submissions get 429.
    pub max_queued: usize,
    /// Steps this node's owners have in flight on any one peer.
    pub max_in_flight_per_peer: usize,
    /// TLS for cluster links: this node's certificate chain and key (PEM). Set both on every
    /// node, with `tls_ca`; unset: plain TCP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// The CA (PEM) that signed the nodes' certificates, trusted when dialling a peer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,
}

impl Default for Cluster {
    fn default() -> Cluster {
        Cluster {
            listen: None,
            advertise: None,
            seeds: Vec::new(),
            cookie: None,
            discover: true,
            roles: WorkerRole::ALL.to_vec(),
            replication_factor: 2,
            heartbeat_interval: Duration::from_millis(200),
            suspect_after: Duration::from_millis(1000),
            down_after: Duration::from_millis(2000),
            reconnect_base: Duration::from_millis(100),
            reconnect_cap: secs(5),
            call_timeout: secs(5),
            max_queued: 50_000,
            max_in_flight_per_peer: 64,
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
        }
    }
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("listen", &self.listen)
            .field("advertise", &self.advertise)
            .field("seeds", &self.seeds)
            .field("cookie", &redacted(&self.cookie))
            .field("discover", &self.discover)
            .field("roles", &self.roles)
            .field("replication_factor", &self.replication_factor)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("suspect_after", &self.suspect_after)
            .field("down_after", &self.down_after)
            .field("reconnect_base", &self.reconnect_base)
            .field("reconnect_cap", &self.reconnect_cap)
            .field("call_timeout", &self.call_timeout)
            .field("max_queued", &self.max_queued)
            .field("max_in_flight_per_peer", &self.max_in_flight_per_peer)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("tls_ca", &self.tls_ca)
            .finish()
    }
}

impl Cluster {
    pub fn enabled(&self) -> bool {
        self.listen.is_some()
    }

    pub fn runs(&self, role: WorkerRole) -> bool {
        self.roles.contains(&role)
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One readable line per event.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    pub format: LogFormat,
    /// `tracing` filter: a level (`info`) or `target=level` directives, comma-separated.
    pub level: String,
}

impl Default for Log {
    fn default() -> Log {
        Log {
            format: LogFormat::Human,
            level: "info".to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_redacts_secrets() {
        let mut config = Config::default();
        config.storage.s3.secret_key = Some("s3-very-secret".into());
        config.notify.webhook_secret = Some("hook-very-secret".into());
        config.cluster.cookie = Some("cookie-very-secret".into());
        config.notify.smtp = Some(Smtp {
            password: Some("smtp-very-secret".into()),
            ..Smtp::default()
        });
        let text = format!("{config:?}");
        assert!(!text.contains("very-secret"), "{text}");
        assert_eq!(text.matches("<redacted>").count(), 4, "{text}");
    }

    #[test]
    fn auto_workers_and_threads_follow_the_core_count() {
        let mut t = Transcriber::default();
        assert_eq!((t.threads_for(8), t.workers_for(8)), (8, 1));
        assert_eq!((t.threads_for(0), t.workers_for(0)), (1, 1));
        t.threads = 2;
        assert_eq!((t.threads_for(8), t.workers_for(8)), (2, 4));
        assert_eq!(t.workers_for(1), 1);
        t.workers = 3;
        assert_eq!(t.workers_for(64), 3);
    }
}
