//! Node-to-node endpoints, outside the public API: `GET /internal/v1/blobs/{key...}` hands a
//! blob of this node's local store to a peer that lacks it (see
//! [`ytcaption_actors::storage::peers`], the client side).
//!
//! No API key here: the request carries [`AUTH_HEADER`], an HMAC of the key and a timestamp
//! under the cluster cookie. Without a cluster (or a cookie) the route does not exist (404), as
//! with S3 storage, where peers read the bucket themselves. The blob is streamed from its file
//! in the store, never read whole.

use std::convert::Infallible;

use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderValue, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::io::AsyncReadExt;
use ytcaption_actors::storage::peers::{
    unix_now, verify, AUTH_HEADER, BLOB_PATH, SIGNATURE_TOLERANCE_S,
};
use ytcaption_actors::storage::{validate_key, Storage};

use super::problem::Problem;
use super::service::{App, Call};
use super::{Body, Response};

/// Size of each read of a streamed file.
const CHUNK: usize = 256 * 1024;

/// The cluster cookie, the key of internal request signatures. `Debug` hides it.
#[derive(Clone)]
pub struct ClusterSecret(Vec<u8>);

impl ClusterSecret {
    /// The cookie when the cluster is on and has one; `None` turns the internal routes off.
    pub fn from_config(config: &ytcaption_config::Config) -> Option<ClusterSecret> {
        let cookie = config.cluster.cookie.as_deref()?;
        (config.cluster.enabled() && !cookie.is_empty())
            .then(|| ClusterSecret(cookie.as_bytes().to_vec()))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(<redacted>)")
    }
}

/// `GET /internal/v1/blobs/{key...}`.
pub async fn blob(app: &App, call: &Call, headers: &HeaderMap) -> Result<Response, Problem> {
    let key = call.id.as_deref().unwrap_or_default();
    let storage = app.node.storage();
    let secret = match storage {
        Storage::Local(_) => app.cluster_secret.as_ref().map(ClusterSecret::as_bytes),
        Storage::S3(_) => None,
    };
    authorize(secret, key, headers.get(AUTH_HEADER), unix_now())?;
    if validate_key(key).is_err() {
        return Err(Problem::bad_request(
            "storage.bad_key",
            "not a storage key: segments of [A-Za-z0-9._-] separated by '/'",
        ));
    }
    let not_found = || Problem::new(StatusCode::NOT_FOUND, "blob.not_found", "no such blob");
    let path = storage.local_path(key).ok_or_else(not_found)?;
    // The key may have been deleted since: then it is missing. Once open, the content is fixed
    // (a replacement renames a new file over the name; this handle keeps the old one).
    let file = tokio::fs::File::open(&path).await.map_err(|error| {
        if error.kind() == std::io::ErrorKind::NotFound {
            not_found()
        } else {
            tracing::warn!(key, %error, "cannot open a blob for a peer");
            Problem::internal()
        }
    })?;
    let size = file
        .metadata()
        .await
        .map_err(|error| {
            tracing::warn!(key, %error, "cannot read the size of a blob for a peer");
            Problem::internal()
        })?
        .len();
    let mut response = hyper::Response::new(file_body(file, size));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    Ok(response)
}

/// Checks the request's signature. `secret` is `None` when this node serves no blobs (no
/// cluster, no cookie, or S3 storage): the route then answers 404 as if it did not exist.
fn authorize(
    secret: Option<&[u8]>,
    key: &str,
    header: Option<&HeaderValue>,
    now_s: u64,
) -> Result<(), Problem> {
    let Some(secret) = secret else {
        return Err(Problem::route_not_found(&format!("{BLOB_PATH}{key}")));
    };
    let refuse = |reason: &str| {
        Problem::new(
            StatusCode::FORBIDDEN,
            "cluster.bad_signature",
            format!("the {AUTH_HEADER} header is refused: {reason}"),
        )
    };
    let header = header.ok_or_else(|| refuse("missing"))?;
    let header = header.to_str().map_err(|_| refuse("not ASCII"))?;
    verify(secret, key, header, now_s, SIGNATURE_TOLERANCE_S).map_err(refuse)
}

/// A body streaming `len` bytes of `file`, one bounded read at a time. A read error or a file
/// shorter than `len` ends the body early; the client sees a response shorter than its
/// `Content-Length` and discards it.
fn file_body(file: tokio::fs::File, len: u64) -> Body {
    let chunks = futures_util::stream::unfold((file, len), |(mut file, left)| async move {
        if left == 0 {
            return None;
        }
        let want = usize::try_from(left).map_or(CHUNK, |left| left.min(CHUNK));
        let mut buffer = BytesMut::zeroed(want);
        match file.read(&mut buffer).await {
            Ok(0) => {
                tracing::warn!(left, "a blob file ended before its size");
                None
            }
            Ok(read) => {
                buffer.truncate(read);
                let frame: Result<Frame<Bytes>, Infallible> = Ok(Frame::data(buffer.freeze()));
                Some((frame, (file, left - read as u64)))
            }
            Err(error) => {
                tracing::warn!(%error, "reading a blob file for a peer failed");
                None
            }
        }
    });
    StreamBody::new(chunks).boxed_unsync()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ytcaption_actors::storage::peers::sign;

    const SECRET: &[u8] = b"cookie";
    const KEY: &str = "jobs/0123abcd/media";

    #[test]
    fn only_a_valid_signature_passes() {
        let now = 1_700_000_000;
        let good = HeaderValue::from_str(&sign(SECRET, KEY, now)).unwrap();
        assert_eq!(authorize(Some(SECRET), KEY, Some(&good), now), Ok(()));
        let no_cluster = authorize(None, KEY, Some(&good), now).unwrap_err();
        assert_eq!(no_cluster.status, StatusCode::NOT_FOUND);
        for (header, secret, key, at) in [
            (None, SECRET, KEY, now),
            (Some(good.clone()), b"other".as_slice(), KEY, now),
            (
                Some(good.clone()),
                SECRET,
                "jobs/0123abcd/transcript.json",
                now,
            ),
            (
                Some(good.clone()),
                SECRET,
                KEY,
                now + SIGNATURE_TOLERANCE_S + 1,
            ),
            (
                Some(HeaderValue::from_static("t=x,v1=00")),
                SECRET,
                KEY,
                now,
            ),
            (
                Some(HeaderValue::from_bytes(b"t=\xff").unwrap()),
                SECRET,
                KEY,
                now,
            ),
        ] {
            let refused = authorize(Some(secret), key, header.as_ref(), at).unwrap_err();
            assert_eq!(refused.status, StatusCode::FORBIDDEN, "{header:?}");
            assert_eq!(refused.code, "cluster.bad_signature");
        }
    }

    #[test]
    fn the_secret_needs_a_cluster_and_a_cookie_and_stays_hidden() {
        let mut config = ytcaption_config::Config::default();
        config.cluster.cookie = Some("sekrit-cookie".into());
        assert!(ClusterSecret::from_config(&config).is_none(), "no cluster");
        config.cluster.listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 7000)));
        let secret = ClusterSecret::from_config(&config).unwrap();
        assert_eq!(secret.as_bytes(), b"sekrit-cookie");
        assert!(!format!("{secret:?}").contains("sekrit"));
        config.cluster.cookie = Some(String::new());
        assert!(
            ClusterSecret::from_config(&config).is_none(),
            "empty cookie"
        );
    }

    #[tokio::test]
    async fn a_file_streams_whole_in_bounded_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let content: Vec<u8> = (0..CHUNK * 2 + 17).map(|i| (i % 253) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        let mut body = file_body(
            tokio::fs::File::open(&path).await.unwrap(),
            content.len() as u64,
        );
        let mut streamed = Vec::new();
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            assert!(data.len() <= CHUNK);
            streamed.extend_from_slice(&data);
        }
        assert_eq!(streamed, content);
        // Never more than the announced length, even if the file grew.
        let short = file_body(tokio::fs::File::open(&path).await.unwrap(), 10);
        assert_eq!(short.collect().await.unwrap().to_bytes().len(), 10);
    }
}
