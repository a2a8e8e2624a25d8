//! Blobs from other nodes: in a cluster of nodes with local storage, each node keeps its own
//! blob store, so a step running on one node may need a blob (the media, a transcript) another
//! node wrote. [`BlobPeers`] fetches it from the peers a [`PeerDirectory`] names and stores it
//! in the local store, as if it had been put here.
//!
//! # Wire
//! `GET {http_url}/internal/v1/blobs/{key}` on a peer's HTTP port, with the header
//! [`AUTH_HEADER`]: `t=<unix seconds>,v1=<hex HMAC-SHA256(cookie, "<t>.<key>")>`, the cluster
//! cookie as the secret. It is the webhook signature scheme ([`crate::notify::webhook`]) with the
//! key as the signed body, so both share one implementation; the peer checks it with [`verify`]
//! and a tolerance of [`SIGNATURE_TOLERANCE_S`]. The answer is 200 with the blob's bytes, 404
//! when the peer does not hold it, 403 for a bad signature.
//!
//! # Bounds
//! The body is streamed into a file in the local store's `tmp/` (never whole in memory),
//! hashed on the way, refused past [`BlobPeers`]' byte limit, then published with the store's
//! ordinary commit (content-addressed, fsync, rename): a reader never sees a partial blob and
//! a failed transfer leaves nothing. Each peer gets a connect timeout and the whole transfer a
//! deadline.
//!
//! Peers are cluster members from the configuration, not client input, and usually sit on
//! private or loopback addresses: the outbound client runs with a guard that allows every
//! address (the SSRF guard protects client-supplied URLs, which never reach this module).

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, StatusCode};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::local::LocalStore;
use super::{validate_key, StorageError};
use crate::net::{self, BodyReader, NetError, NetGuard, NetParams};
use crate::notify::webhook::{self, SignatureError};

/// The header carrying a blob request's signature.
pub const AUTH_HEADER: &str = "ytcaption-cluster-auth";

/// The path prefix of the blob endpoint; the key follows it.
pub const BLOB_PATH: &str = "/internal/v1/blobs/";

/// How far a request's timestamp may be from the serving node's clock, either way.
pub const SIGNATURE_TOLERANCE_S: u64 = 300;

/// Bound on each TCP connect to a peer (and never more than the whole transfer's timeout).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A peer that may hold blobs: its node name (for logs) and the base URL of its HTTP API,
/// e.g. `http://10.0.0.2:8081`, without a trailing slash; empty while not known yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerEndpoint {
    pub node: String,
    pub http_url: String,
}

/// Who to ask for a missing blob: the live peers, in preference order. The cluster implements
/// it from its membership; [`StaticPeers`] is a fixed list.
pub trait PeerDirectory: Send + Sync + std::fmt::Debug {
    fn blob_peers(&self) -> Vec<PeerEndpoint>;
}

/// A fixed list of peers (tests, static deployments).
#[derive(Debug, Clone, Default)]
pub struct StaticPeers(pub Vec<PeerEndpoint>);

impl PeerDirectory for StaticPeers {
    fn blob_peers(&self) -> Vec<PeerEndpoint> {
        self.0.clone()
    }
}

/// The [`AUTH_HEADER`] value for a request for `key` at `now_s` (unix seconds).
pub fn sign(secret: &[u8], key: &str, now_s: u64) -> String {
    webhook::sign(secret, now_s, key.as_bytes())
}

/// Checks an [`AUTH_HEADER`] value for `key`: a `t=` timestamp within `tolerance_s` of `now_s`
/// and a `v1=` HMAC of `"<t>.<key>"` under `secret` (compared in constant time). The error is
/// a short reason, fit for a 403 answer.
pub fn verify(
    secret: &[u8],
    key: &str,
    header: &str,
    now_s: u64,
    tolerance_s: u64,
) -> Result<(), &'static str> {
    webhook::verify(secret, header, key.as_bytes(), now_s, tolerance_s).map_err(|e| match e {
        SignatureError::Malformed(why) => why,
        SignatureError::MissingTimestamp => "no t= timestamp",
        SignatureError::MissingSignature => "no v1= signature",
        SignatureError::Mismatch => "signature does not match",
        SignatureError::OutsideTolerance { .. } => "timestamp too far from the node's clock",
    })
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// Fetches missing blobs from peers into a local store. `Debug` hides the secret.
pub struct BlobPeers {
    secret: Vec<u8>,
    directory: Arc<dyn PeerDirectory>,
    timeout: Duration,
    max_bytes: u64,
}

impl std::fmt::Debug for BlobPeers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobPeers")
            .field("secret", &"<redacted>")
            .field("directory", &self.directory)
            .field("timeout", &self.timeout)
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

/// One peer's answer.
enum Outcome {
    Stored,
    Missing,
}

impl BlobPeers {
    /// `secret`: the cluster cookie. `timeout`: the whole transfer from one peer, connecting
    /// included. `max_bytes`: the largest blob accepted.
    pub fn new(
        secret: impl Into<Vec<u8>>,
        directory: Arc<dyn PeerDirectory>,
        timeout: Duration,
        max_bytes: u64,
    ) -> BlobPeers {
        BlobPeers {
            secret: secret.into(),
            directory,
            timeout,
            max_bytes,
        }
    }

    /// Asks each peer in turn for `key` and stores the first copy found in `local`.
    ///
    /// `Ok(true)`: stored. `Ok(false)`: every peer answered that it has no such blob (or there
    /// are no peers). A peer that fails (unreachable, timeout, a 5xx, a refused signature) is
    /// skipped; when no peer had the blob and at least one failed, the answer is a retryable
    /// [`StorageError::Unavailable`] rather than `Ok(false)`: the failed peer may hold it.
    /// A blob over the byte limit is [`StorageError::TooLarge`] at once (every copy has the
    /// same content), and nothing of it is left behind.
    pub async fn fetch(&self, key: &str, local: &LocalStore) -> Result<bool, StorageError> {
        validate_key(key)?;
        let mut failed: Option<String> = None;
        for peer in self.directory.blob_peers() {
            match self.fetch_from(&peer, key, local).await {
                Ok(Outcome::Stored) => {
                    tracing::debug!(key, peer = %peer.node, "blob fetched from a peer");
                    return Ok(true);
                }
                Ok(Outcome::Missing) => {}
                Err(PeerFailure::Final(error)) => return Err(error),
                Err(PeerFailure::Skip(reason)) => {
                    tracing::debug!(key, peer = %peer.node, %reason, "blob fetch failed; next peer");
                    failed = Some(format!("{}: {reason}", peer.node));
                }
            }
        }
        match failed {
            None => Ok(false),
            Some(last) => Err(StorageError::Unavailable(format!(
                "no reachable peer had blob {key:?} (last failure: {last})"
            ))),
        }
    }

    async fn fetch_from(
        &self,
        peer: &PeerEndpoint,
        key: &str,
        local: &LocalStore,
    ) -> Result<Outcome, PeerFailure> {
        if peer.http_url.is_empty() {
            return Err(PeerFailure::Skip("its address is not known yet".into()));
        }
        let url = format!("{}{BLOB_PATH}{key}", peer.http_url.trim_end_matches('/'));
        let auth = sign(&self.secret, key, unix_now());
        let params = self.net_params();
        let response = net::request(
            Method::GET,
            &url,
            &[(AUTH_HEADER, &auth)],
            Bytes::new(),
            peer_guard(),
            &params,
        )
        .await
        .map_err(PeerFailure::net)?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(Outcome::Missing),
            status => return Err(PeerFailure::Skip(format!("HTTP {status}"))),
        }
        let announced = response
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        if let Some(size) = announced.filter(|size| *size > self.max_bytes) {
            return Err(PeerFailure::Final(self.too_large(key, size)));
        }
        let (_, mut body) = BodyReader::new(response, &params);
        let temp = local.temp_file("peer-");
        let context = || format!("writing {}", temp.path().display());
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(temp.path())
            .await
            .map_err(|e| PeerFailure::Final(StorageError::io(context(), e)))?;
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        while let Some(chunk) = body.next_chunk().await.map_err(PeerFailure::net)? {
            size += chunk.len() as u64;
            if size > self.max_bytes {
                // `temp` drops here: the partial file goes with it.
                return Err(PeerFailure::Final(self.too_large(key, size)));
            }
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(|e| PeerFailure::Final(StorageError::io(context(), e)))?;
        }
        file.flush()
            .await
            .map_err(|e| PeerFailure::Final(StorageError::io(context(), e)))?;
        drop(file);
        let sha256 = hex::encode(hasher.finalize());
        let (store, key) = (local.clone(), key.to_owned());
        super::blocking(move || store.commit_temp(&key, temp, sha256, size))
            .await
            .map_err(PeerFailure::Final)?;
        Ok(Outcome::Stored)
    }

    fn net_params(&self) -> NetParams {
        NetParams {
            connect_timeout: CONNECT_TIMEOUT.min(self.timeout),
            read_timeout: self.timeout,
            total_timeout: self.timeout,
            ..NetParams::default()
        }
    }

    fn too_large(&self, key: &str, size: u64) -> StorageError {
        StorageError::TooLarge {
            key: key.to_owned(),
            size,
            limit: self.max_bytes,
        }
    }
}

/// Why one peer gave no blob: try the next one, or stop (local trouble, a blob over the limit).
enum PeerFailure {
    Skip(String),
    Final(StorageError),
}

impl PeerFailure {
    fn net(error: NetError) -> PeerFailure {
        PeerFailure::Skip(error.to_string())
    }
}

/// Allows every address: peers come from the cluster configuration and live on private or
/// loopback networks (see the module doc).
fn peer_guard() -> &'static NetGuard {
    static GUARD: OnceLock<NetGuard> = OnceLock::new();
    GUARD.get_or_init(|| {
        NetGuard::new(&["0.0.0.0/0".to_owned(), "::/0".to_owned()]).unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::convert::Infallible;

    use http_body_util::{BodyExt, Full, StreamBody};
    use hyper::body::Frame;
    use hyper_util::rt::TokioIo;

    use crate::storage::Storage;

    const SECRET: &[u8] = b"cluster-cookie";
    const KEY: &str = "jobs/0123abcd/media";

    #[test]
    fn signatures_verify_for_their_key_secret_and_time() {
        let now = 1_700_000_000;
        let header = sign(SECRET, KEY, now);
        assert!(header.starts_with("t=1700000000,v1="), "{header}");
        assert_eq!(verify(SECRET, KEY, &header, now, 300), Ok(()));
        assert_eq!(verify(SECRET, KEY, &header, now + 300, 300), Ok(()));
        assert_eq!(verify(SECRET, KEY, &header, now - 300, 300), Ok(()));
        // Another key, another secret.
        assert!(verify(SECRET, "jobs/0123abcd/transcript.json", &header, now, 300).is_err());
        assert!(verify(b"other", KEY, &header, now, 300).is_err());
        // Stale or from the future.
        assert!(verify(SECRET, KEY, &header, now + 301, 300).is_err());
        assert!(verify(SECRET, KEY, &header, now - 301, 300).is_err());
        // A moved timestamp breaks the MAC.
        let moved = header.replace("t=1700000000", "t=1700000001");
        assert!(verify(SECRET, KEY, &moved, now, 300).is_err());
    }

    #[test]
    fn garbage_headers_are_refused_not_panics() {
        let now = 1_700_000_000;
        for header in [
            "",
            "garbage",
            "t=",
            "t=soon,v1=00",
            "t=-1,v1=00",
            "v1=00",
            "t=1700000000",
            "t=1700000000,v1=",
            "t=1700000000,v1=zz",
            "t=1700000000,v1=é",
            ",,,",
        ] {
            let reason = verify(SECRET, KEY, header, now, 300).unwrap_err();
            assert!(!reason.is_empty(), "{header:?}");
        }
    }

    /// A peer serving `blobs` over HTTP, checking signatures; `chunked` sends bodies without a
    /// content length, in small pieces. Returns its base URL.
    async fn peer(blobs: HashMap<String, Vec<u8>>, chunked: bool) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let blobs = Arc::new(blobs);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let blobs = blobs.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let blobs = blobs.clone();
                        async move { Ok::<_, Infallible>(answer(&blobs, chunked, request)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        url
    }

    type TestBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

    fn answer(
        blobs: &HashMap<String, Vec<u8>>,
        chunked: bool,
        request: http::Request<hyper::body::Incoming>,
    ) -> http::Response<TestBody> {
        let status = |code: u16| {
            http::Response::builder()
                .status(code)
                .body(Full::new(Bytes::new()).boxed_unsync())
                .unwrap()
        };
        let Some(key) = request.uri().path().strip_prefix(BLOB_PATH) else {
            return status(404);
        };
        let header = request
            .headers()
            .get(AUTH_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if verify(SECRET, key, header, unix_now(), SIGNATURE_TOLERANCE_S).is_err() {
            return status(403);
        }
        let Some(bytes) = blobs.get(key) else {
            return status(404);
        };
        let body = if chunked {
            let frames: Vec<Result<Frame<Bytes>, Infallible>> = bytes
                .chunks(1000)
                .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
                .collect();
            StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
        } else {
            Full::new(Bytes::from(bytes.clone())).boxed_unsync()
        };
        http::Response::builder().status(200).body(body).unwrap()
    }

    fn endpoint(node: &str, http_url: &str) -> PeerEndpoint {
        PeerEndpoint {
            node: node.into(),
            http_url: http_url.into(),
        }
    }

    fn blob_peers(peers: Vec<PeerEndpoint>, max_bytes: u64) -> BlobPeers {
        BlobPeers::new(
            SECRET,
            Arc::new(StaticPeers(peers)),
            Duration::from_secs(10),
            max_bytes,
        )
    }

    fn local() -> (tempfile::TempDir, LocalStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path().join("store")).unwrap();
        (dir, store)
    }

    fn leftovers(dir: &tempfile::TempDir) -> Vec<std::path::PathBuf> {
        let tmp = dir.path().join("store/tmp");
        std::fs::read_dir(tmp)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    }

    fn media(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test]
    async fn a_fetched_blob_lands_in_the_local_store() {
        let content = media(300_000);
        let url = peer(HashMap::from([(KEY.to_owned(), content.clone())]), true).await;
        let (dir, store) = local();
        let peers = blob_peers(vec![endpoint("b", &url)], 1 << 20);
        assert!(peers.fetch(KEY, &store).await.unwrap());
        assert_eq!(store.get_bytes(KEY, 1 << 20).unwrap(), content);
        assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));
        // Missing everywhere: false, nothing stored.
        assert!(!peers.fetch("jobs/other/media", &store).await.unwrap());
        assert!(!store.exists("jobs/other/media").unwrap());
    }

    #[tokio::test]
    async fn a_404_falls_through_to_the_next_peer() {
        let empty = peer(HashMap::new(), false).await;
        let holder = peer(HashMap::from([(KEY.to_owned(), b"bytes".to_vec())]), false).await;
        let (_dir, store) = local();
        let peers = blob_peers(vec![endpoint("a", &empty), endpoint("b", &holder)], 100);
        assert!(peers.fetch(KEY, &store).await.unwrap());
        assert_eq!(store.get_bytes(KEY, 100).unwrap(), b"bytes");
    }

    #[tokio::test]
    async fn failing_peers_are_skipped_and_reported_retryable() {
        // A closed port and a peer with another secret (403), then the holder.
        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", listener.local_addr().unwrap())
        };
        let holder = peer(HashMap::from([(KEY.to_owned(), b"bytes".to_vec())]), false).await;
        let (_dir, store) = local();
        let wrong_secret = BlobPeers::new(
            b"not the cookie".to_vec(),
            Arc::new(StaticPeers(vec![endpoint("b", &holder)])),
            Duration::from_secs(10),
            100,
        );
        let err = wrong_secret.fetch(KEY, &store).await.unwrap_err();
        assert_eq!(err.code(), "storage.unavailable", "{err}");
        assert!(err.retryable());
        assert!(!store.exists(KEY).unwrap());

        let peers = blob_peers(vec![endpoint("a", &closed), endpoint("b", &holder)], 100);
        assert!(peers.fetch(KEY, &store).await.unwrap());
        assert_eq!(store.get_bytes(KEY, 100).unwrap(), b"bytes");
        // No peers: nothing to ask.
        assert!(!blob_peers(vec![], 100).fetch(KEY, &store).await.unwrap());
        // A peer whose address is not known yet may hold it: not reachable, never "missing".
        let empty = peer(HashMap::new(), false).await;
        let err = blob_peers(vec![endpoint("a", &empty), endpoint("c", "")], 100)
            .fetch("jobs/other/media", &store)
            .await
            .unwrap_err();
        assert_eq!(err.code(), "storage.unavailable", "{err}");
        assert!(
            err.to_string().contains("c: its address is not known yet"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn an_oversized_blob_is_refused_and_leaves_nothing() {
        for chunked in [false, true] {
            let url = peer(HashMap::from([(KEY.to_owned(), media(10_000))]), chunked).await;
            let (dir, store) = local();
            let peers = blob_peers(vec![endpoint("b", &url)], 9_999);
            let err = peers.fetch(KEY, &store).await.unwrap_err();
            assert_eq!(err.code(), "storage.too_large", "chunked={chunked}: {err}");
            assert!(!store.exists(KEY).unwrap());
            assert!(store.list("").unwrap().is_empty());
            assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));
        }
    }

    #[tokio::test]
    async fn storage_reads_fetch_missing_blobs_from_attached_peers() {
        let content = media(5_000);
        let url = peer(
            HashMap::from([
                (KEY.to_owned(), content.clone()),
                ("jobs/0123abcd/transcript.json".to_owned(), b"{}".to_vec()),
                ("jobs/x/a".to_owned(), b"a".to_vec()),
            ]),
            false,
        )
        .await;
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::local(dir.path().join("s")).unwrap();
        // A clone made before the peers are attached sees them too.
        let clone = storage.clone();
        assert!(!clone.ensure_local(KEY).await.unwrap());
        assert!(storage.attach_peers(Arc::new(blob_peers(vec![endpoint("b", &url)], 1 << 20))));
        assert!(!storage.attach_peers(Arc::new(blob_peers(vec![], 1))));

        assert_eq!(clone.local_path(KEY), None);
        assert!(clone.ensure_local(KEY).await.unwrap());
        let path = clone.local_path(KEY).unwrap();
        assert_eq!(std::fs::read(path).unwrap(), content);

        assert_eq!(
            clone
                .get_bytes("jobs/0123abcd/transcript.json", 10)
                .await
                .unwrap(),
            b"{}"
        );
        let dest = dir.path().join("copy");
        assert_eq!(clone.get_to_file("jobs/x/a", &dest).await.unwrap(), 1);
        assert_eq!(std::fs::read(&dest).unwrap(), b"a");
        assert!(!clone.exists("jobs/none/media").await.unwrap());
        assert_eq!(
            clone
                .get_bytes("jobs/none/media", 10)
                .await
                .unwrap_err()
                .code(),
            "storage.not_found"
        );
    }
}
