//! Storage: where the job saga keeps media and transcripts, behind one API with two backends.
//!
//! - [`LocalStore`] (the default): a content-addressed directory. Blobs live once under
//!   `cas/<2 hex>/<sha256>`; each key is a hard link to its blob under `keys/<key>`, so two jobs
//!   with the same media share one copy and the engine can read a blob in place
//!   ([`Storage::local_path`]).
//! - [`S3Store`]: any S3-compatible object store (SeaweedFS, Garage, AWS) through `rust-s3`,
//!   streamed in bounded parts so a 2 GB media file never sits in memory.
//!
//! The enum [`Storage`] dispatches to the backend; callers never see which one they hold except
//! through [`Storage::local_path`] (an optimisation) and [`Storage::describe`] (for logs).
//!
//! # Clusters
//! With local storage every node has its own store. Once the cluster is up it attaches
//! [`peers::BlobPeers`] ([`Storage::attach_peers`]); from then on a read of a blob missing here
//! (`get_bytes`, `get_to_file`, `exists`, [`Storage::ensure_local`]) first fetches it from the
//! peers into the local store. S3 needs none of it: every node reads the same bucket.
//!
//! # Keys
//! A key is one or more segments of `[A-Za-z0-9._-]` joined by `/`: no empty, `.` or `..`
//! segment, no leading or trailing `/`, at most [`MAX_KEY_LEN`] bytes. The same rule holds for
//! both backends, so a key that works locally works on S3 and can never escape the local root.
//! Typical keys: `jobs/<id>/media`, `jobs/<id>/transcript.json`, `uploads/<id>`.
//!
//! # Errors
//! Every failure is a [`StorageError`] with a stable [`code`](StorageError::code) and a
//! [`retryable`](StorageError::retryable) hint: the saga retries an unreachable store, not a bad
//! key or a missing blob.

mod local;
pub mod peers;
mod s3;

pub use local::LocalStore;
pub use s3::S3Store;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Longest accepted key, in bytes.
pub const MAX_KEY_LEN: usize = 512;

/// What a put stored: the key, its size and the SHA-256 of its content (lowercase hex).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobInfo {
    pub key: String,
    pub size: u64,
    pub sha256: String,
}

/// Everything a failed storage operation can report.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// No blob under this key.
    #[error("no blob under key {0:?}")]
    NotFound(String),
    /// The key (or prefix) breaks the key rules (see the module doc).
    #[error(
        "invalid storage key {0:?}: segments of [A-Za-z0-9._-] separated by '/', at most 512 bytes"
    )]
    BadKey(String),
    /// The blob is bigger than the caller accepts.
    #[error("blob {key:?} has {size} bytes, more than the limit of {limit}")]
    TooLarge { key: String, size: u64, limit: u64 },
    /// The key collides with another key's directory in the local layout (`a` next to `a/b`).
    #[error(
        "key {0:?} collides with an existing key's path (a key cannot also be a prefix directory)"
    )]
    Conflict(String),
    /// A local file-system operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The store cannot be reached or answered with a server error: try again later.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The store did not answer in time.
    #[error("storage timed out: {0}")]
    Timeout(String),
    /// The store refused the credentials or the operation.
    #[error("storage access denied: {0}")]
    Denied(String),
    /// The content read back does not match the checksum recorded when it was stored.
    #[error("blob {key:?} is corrupt: expected sha256 {expected}, read {actual}")]
    Corrupt {
        key: String,
        expected: String,
        actual: String,
    },
    /// The storage configuration is unusable (bad endpoint, bucket name, missing bucket...).
    #[error("storage misconfigured: {0}")]
    Config(String),
    /// The store rejected the request for a reason the client cannot fix by retrying.
    #[error("storage rejected the request (HTTP {status}): {message}")]
    Rejected { status: u16, message: String },
}

impl StorageError {
    /// A stable, machine-readable reason, e.g. `"storage.not_found"`.
    pub fn code(&self) -> &'static str {
        match self {
            StorageError::NotFound(_) => "storage.not_found",
            StorageError::BadKey(_) => "storage.bad_key",
            StorageError::TooLarge { .. } => "storage.too_large",
            StorageError::Conflict(_) => "storage.conflict",
            StorageError::Io { .. } => "storage.io",
            StorageError::Unavailable(_) => "storage.unavailable",
            StorageError::Timeout(_) => "storage.timeout",
            StorageError::Denied(_) => "storage.denied",
            StorageError::Corrupt { .. } => "storage.corrupt",
            StorageError::Config(_) => "storage.config",
            StorageError::Rejected { .. } => "storage.rejected",
        }
    }

    /// Whether the same call may succeed later: transient infrastructure trouble (network,
    /// server errors, timeouts, local I/O such as a full disk) is; bad input, missing blobs,
    /// denied credentials and corrupt content are not.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            StorageError::Io { .. } | StorageError::Unavailable(_) | StorageError::Timeout(_)
        )
    }

    /// The saga step failure this error becomes: its code, message and retry hint.
    pub(crate) fn step_failure(&self) -> ytcaption_protocol::wire::StepFailure {
        ytcaption_protocol::wire::StepFailure {
            reason: ytcaption_protocol::Reason::new(self.code(), self.to_string()),
            retryable: self.retryable(),
        }
    }

    /// An [`StorageError::Io`] with what was being done.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        StorageError::Io {
            context: context.into(),
            source,
        }
    }
}

/// How to reach an S3-compatible store. `Debug` hides the secret key.
#[derive(Clone)]
pub struct S3Params {
    /// Base URL, e.g. `http://127.0.0.1:8333` (no bucket in it).
    pub endpoint: String,
    /// Signing region; must match the server's own (Garage checks it).
    pub region: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
    /// `http://host/bucket/key` URLs instead of `http://bucket.host/key`; self-hosted stores
    /// need it.
    pub path_style: bool,
    /// Create the bucket at start when it is missing.
    pub create_bucket: bool,
    /// Limit for each HTTP request (one part of a big transfer, not the whole transfer).
    pub timeout: Duration,
    /// Files bigger than this are uploaded in parts.
    pub multipart_threshold: u64,
    /// Size of each uploaded or downloaded part; S3 needs at least 5 MiB for all but the last.
    pub part_size: usize,
}

impl Default for S3Params {
    fn default() -> Self {
        S3Params {
            endpoint: "http://127.0.0.1:8333".to_owned(),
            region: "us-east-1".to_owned(),
            bucket: "ytcaption".to_owned(),
            access_key: String::new(),
            secret_key: String::new(),
            path_style: true,
            create_bucket: false,
            timeout: Duration::from_secs(60),
            multipart_threshold: 16 * 1024 * 1024,
            part_size: 8 * 1024 * 1024,
        }
    }
}

impl std::fmt::Debug for S3Params {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Params")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .field("path_style", &self.path_style)
            .field("create_bucket", &self.create_bucket)
            .field("timeout", &self.timeout)
            .field("multipart_threshold", &self.multipart_threshold)
            .field("part_size", &self.part_size)
            .finish()
    }
}

/// A blob store: a local content-addressed directory or an S3 bucket. Cheap to clone.
#[derive(Clone, Debug)]
pub enum Storage {
    Local(LocalStore),
    S3(S3Store),
}

impl Storage {
    /// Opens (creating if needed) a local store under `root`, and sweeps leftovers of crashed
    /// writes older than an hour. Blocking: call it at start-up, not from a hot async path.
    pub fn local(root: PathBuf) -> Result<Self, StorageError> {
        LocalStore::open(root).map(Storage::Local)
    }

    /// Connects to an S3 bucket. Only touches the network when `params.create_bucket` is set
    /// (then it creates the bucket if missing and checks it answers); otherwise an unreachable
    /// store shows up at the first operation or [`Storage::health`].
    pub async fn s3(params: S3Params) -> Result<Self, StorageError> {
        let store = S3Store::new(&params)?;
        if params.create_bucket {
            store.ensure_bucket().await?;
        }
        Ok(Storage::S3(store))
    }

    /// Stores the file at `path` under `key`, streaming it (never whole in memory) and hashing
    /// it on the way.
    pub async fn put_file(&self, key: &str, path: &Path) -> Result<BlobInfo, StorageError> {
        validate_key(key)?;
        match self {
            Storage::Local(store) => {
                let (store, key, path) = (store.clone(), key.to_owned(), path.to_owned());
                blocking(move || store.put_file(&key, &path)).await
            }
            Storage::S3(store) => store.put_file(key, path).await,
        }
    }

    /// Stores `bytes` under `key`. `content_type` is kept by S3 (served on download); the local
    /// store ignores it.
    pub async fn put_bytes(
        &self,
        key: &str,
        bytes: Vec<u8>,
        content_type: &str,
    ) -> Result<BlobInfo, StorageError> {
        validate_key(key)?;
        match self {
            Storage::Local(store) => {
                let (store, key) = (store.clone(), key.to_owned());
                blocking(move || store.put_bytes(&key, &bytes)).await
            }
            Storage::S3(store) => store.put_bytes(key, bytes, content_type).await,
        }
    }

    /// Reads a whole blob into memory; [`StorageError::TooLarge`] when it has more than
    /// `max_bytes`, checked before reading it.
    pub async fn get_bytes(&self, key: &str, max_bytes: u64) -> Result<Vec<u8>, StorageError> {
        validate_key(key)?;
        match self {
            Storage::Local(store) => {
                local_or_peers(store, key, move |store, key| {
                    store.get_bytes(key, max_bytes)
                })
                .await
            }
            Storage::S3(store) => store.get_bytes(key, max_bytes).await,
        }
    }

    /// Copies a blob to `dest` and returns its size. Written to a temporary file next to
    /// `dest` and renamed at the end, so `dest` is either absent or complete.
    pub async fn get_to_file(&self, key: &str, dest: &Path) -> Result<u64, StorageError> {
        validate_key(key)?;
        match self {
            Storage::Local(store) => {
                let dest = dest.to_owned();
                local_or_peers(store, key, move |store, key| store.get_to_file(key, &dest)).await
            }
            Storage::S3(store) => store.get_to_file(key, dest).await,
        }
    }

    /// Attaches the peers a local store fetches missing blobs from (see the module doc). Takes
    /// effect in every clone of this value, those made before included. `false` when peers
    /// were attached already (the first stay) or the backend is S3 (nothing to fetch).
    pub fn attach_peers(&self, peers: Arc<peers::BlobPeers>) -> bool {
        match self {
            Storage::Local(store) => store.attach_peers(peers),
            Storage::S3(_) => false,
        }
    }

    /// Makes sure the blob is in the local store, fetching it from attached peers when it is
    /// missing, so [`Storage::local_path`] can find it. `Ok(false)`: no copy here or on any
    /// peer. Always `Ok(true)` for S3 (nothing is local; read it through the other methods).
    pub async fn ensure_local(&self, key: &str) -> Result<bool, StorageError> {
        validate_key(key)?;
        match self {
            Storage::Local(store) => {
                let (local, key_owned) = (store.clone(), key.to_owned());
                if blocking(move || local.exists(&key_owned)).await? {
                    return Ok(true);
                }
                store.fetch_from_peers(key).await
            }
            Storage::S3(_) => Ok(true),
        }
    }

    /// For the local store, a path where the blob can be read in place (no copy) if it exists;
    /// `None` for S3, for a bad key or a missing blob. The file must be treated as read-only:
    /// it is shared by every key with the same content.
    pub fn local_path(&self, key: &str) -> Option<PathBuf> {
        match self {
            Storage::Local(store) => store.local_path(key),
            Storage::S3(_) => None,
        }
    }

    /// Whether a blob is stored under `key`; with local storage and attached peers, a blob
    /// missing here is fetched from them first (see [`Storage::ensure_local`]).
    pub async fn exists(&self, key: &str) -> Result<bool, StorageError> {
        match self {
            Storage::Local(_) => self.ensure_local(key).await,
            Storage::S3(store) => {
                validate_key(key)?;
                store.exists(key).await
            }
        }
    }

    /// Removes a blob; a missing one is not an error (deletes are retried by the saga).
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        validate_key(key)?;
        match self {
            Storage::Local(store) => {
                let (store, key) = (store.clone(), key.to_owned());
                blocking(move || store.delete(&key)).await
            }
            Storage::S3(store) => store.delete(key).await,
        }
    }

    /// Removes every blob whose key starts with `prefix` and returns how many. The prefix must
    /// not be empty: wiping the whole store is never what a caller meant.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<u64, StorageError> {
        if prefix.is_empty() {
            return Err(StorageError::BadKey(String::new()));
        }
        validate_prefix(prefix)?;
        match self {
            Storage::Local(store) => {
                let (store, prefix) = (store.clone(), prefix.to_owned());
                blocking(move || store.delete_prefix(&prefix)).await
            }
            Storage::S3(store) => store.delete_prefix(prefix).await,
        }
    }

    /// Keys starting with `prefix` (a plain string prefix, as in S3: `jobs/1` also matches
    /// `jobs/10/media`; end it with `/` for one "directory"), sorted.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        validate_prefix(prefix)?;
        match self {
            Storage::Local(store) => {
                let (store, prefix) = (store.clone(), prefix.to_owned());
                blocking(move || store.list(&prefix)).await
            }
            Storage::S3(store) => store.list(prefix).await,
        }
    }

    /// A cheap check that the store is usable, for readiness probes: the local directories are
    /// writable, or the bucket answers a one-key listing with these credentials.
    pub async fn health(&self) -> Result<(), StorageError> {
        match self {
            Storage::Local(store) => {
                let store = store.clone();
                blocking(move || store.health()).await
            }
            Storage::S3(store) => store.health().await,
        }
    }

    /// Where the blobs are, for logs: `local:/path` or `s3:http://host:port/bucket`.
    pub fn describe(&self) -> String {
        match self {
            Storage::Local(store) => format!("local:{}", store.root().display()),
            Storage::S3(store) => format!("s3:{}", store.location()),
        }
    }
}

/// Runs a read of the local store; when the blob is missing and the peers have it, fetches it
/// and runs the read again.
async fn local_or_peers<T, F>(store: &LocalStore, key: &str, read: F) -> Result<T, StorageError>
where
    T: Send + 'static,
    F: Fn(&LocalStore, &str) -> Result<T, StorageError> + Clone + Send + 'static,
{
    let attempt = || {
        let (store, key, read) = (store.clone(), key.to_owned(), read.clone());
        blocking(move || read(&store, &key))
    };
    match attempt().await {
        Err(StorageError::NotFound(_)) if store.fetch_from_peers(key).await? => attempt().await,
        outcome => outcome,
    }
}

/// Runs blocking file-system work off the async executor.
async fn blocking<T, F>(work: F) -> Result<T, StorageError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StorageError> + Send + 'static,
{
    tokio::task::spawn_blocking(work).await.map_err(|join| {
        StorageError::io(
            "storage worker thread failed",
            std::io::Error::other(join.to_string()),
        )
    })?
}

/// Checks a key against the rules in the module doc.
pub fn validate_key(key: &str) -> Result<(), StorageError> {
    let bad = || StorageError::BadKey(key.to_owned());
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(bad());
    }
    if key.split('/').all(valid_segment) {
        Ok(())
    } else {
        Err(bad())
    }
}

/// Checks a listing prefix: empty, or a key's beginning. Every segment but the last must be a
/// valid segment; the last may be partial (`jobs/ab` matches `jobs/abc/...`) or empty (`jobs/`).
pub fn validate_prefix(prefix: &str) -> Result<(), StorageError> {
    if prefix.is_empty() {
        return Ok(());
    }
    let bad = || StorageError::BadKey(prefix.to_owned());
    if prefix.len() > MAX_KEY_LEN {
        return Err(bad());
    }
    let segments: Vec<&str> = prefix.split('/').collect();
    let (last, whole) = segments.split_last().ok_or_else(bad)?;
    let last_ok = last.is_empty() || valid_segment(last);
    if last_ok && whole.iter().all(|segment| valid_segment(segment)) {
        Ok(())
    } else {
        Err(bad())
    }
}

fn valid_segment(segment: &str) -> bool {
    !segment.is_empty()
        && segment != "."
        && segment != ".."
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A name no other writer in this or another process picks at the same time: pid, clock and a
/// process-wide counter.
pub(crate) fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}-{nanos:x}-{count}", std::process::id())
}

/// The temporary file `get_to_file` writes before renaming it to `dest`: in the same directory
/// (a rename across file systems is not atomic), hidden, unique.
pub(crate) fn temp_sibling(dest: &Path) -> Result<PathBuf, StorageError> {
    let name = dest
        .file_name()
        .ok_or_else(|| {
            StorageError::io(
                format!("destination {} has no file name", dest.display()),
                std::io::Error::from(std::io::ErrorKind::InvalidInput),
            )
        })?
        .to_string_lossy();
    let parent = match dest.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    };
    Ok(parent.join(unique_name(&format!(".{name}.part-"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typical_keys_are_valid() {
        for key in [
            "jobs/0f3a/media",
            "jobs/0f3a/transcript.json",
            "jobs/0f3a/transcript.srt",
            "uploads/abc-DEF_123",
            "a",
            "..a",
            "a..b/c",
        ] {
            assert!(validate_key(key).is_ok(), "{key}");
        }
    }

    #[test]
    fn bad_keys_are_rejected() {
        let long = "a".repeat(MAX_KEY_LEN + 1);
        for key in [
            "",
            "/jobs/1",
            "jobs/1/",
            "jobs//1",
            ".",
            "..",
            "jobs/../etc/passwd",
            "jobs/./x",
            "jobs/1 2",
            "jobs\\1",
            "jobs/é",
            "jobs/1\0",
            "jobs/%2e%2e",
            long.as_str(),
        ] {
            let err = validate_key(key).unwrap_err();
            assert_eq!(err.code(), "storage.bad_key", "{key:?}");
            assert!(!err.retryable());
        }
        assert!(validate_key(&"a".repeat(MAX_KEY_LEN)).is_ok());
    }

    #[test]
    fn prefixes_may_end_open() {
        for prefix in ["", "jobs/", "jobs/1", "jobs/12/", "j"] {
            assert!(validate_prefix(prefix).is_ok(), "{prefix:?}");
        }
        for prefix in ["/", "/jobs", "jobs//", "../", "jobs/../", "jobs/..", "a b"] {
            assert!(validate_prefix(prefix).is_err(), "{prefix:?}");
        }
    }

    #[test]
    fn codes_and_retry_hints() {
        let unavailable = StorageError::Unavailable("down".into());
        assert_eq!(unavailable.code(), "storage.unavailable");
        assert!(unavailable.retryable());
        let denied = StorageError::Denied("no".into());
        assert_eq!(denied.code(), "storage.denied");
        assert!(!denied.retryable());
        assert!(!StorageError::NotFound("k".into()).retryable());
    }

    #[test]
    fn params_debug_hides_the_secret() {
        let params = S3Params {
            secret_key: "hunter2-secret".into(),
            ..S3Params::default()
        };
        let shown = format!("{params:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn unique_names_differ() {
        assert_ne!(unique_name("t-"), unique_name("t-"));
    }
}
