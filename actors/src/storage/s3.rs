//! The S3 backend: any S3-compatible store through `rust-s3`.
//!
//! # Transfers
//! Big files move in parts of [`S3Params::part_size`] so memory stays bounded (two parts) and
//! every HTTP request finishes within [`S3Params::timeout`], however big the file:
//! - **upload:** up to [`S3Params::multipart_threshold`] one PUT; above, a multipart upload
//!   whose next part is read and hashed (on a blocking thread) while the current one uploads.
//!   The crate's own `put_object_stream` is not used: its part size and parallelism are fixed
//!   (up to ten 8 MiB parts in flight) and it cannot hash what it reads.
//! - **download:** a HEAD for the size, then ranged GETs, written to a temporary file next to
//!   the destination and renamed at the end.
//!
//! # Integrity
//! Single-PUT objects carry their SHA-256 as `x-amz-meta-sha256`; reads check it and fail with
//! [`StorageError::Corrupt`] on a mismatch. Multipart objects have no checksum metadata (the
//! hash is only known after the last part) and are read unchecked.
//!
//! # Errors and retries
//! rust-s3 retries idempotent requests once on a connection error or a 5xx (a one-second
//! pause); what still fails maps to [`StorageError`]: connection failures and 5xx to
//! `Unavailable`, timeouts to `Timeout` (both retryable), 401/403 and signature errors to
//! `Denied`, 404 to `NotFound` (or `Config` for a missing bucket).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use http::{HeaderMap, HeaderValue};
use s3::creds::Credentials;
use s3::error::S3Error;
use s3::serde_types::{ObjectIdentifier, Part};
use s3::{Bucket, BucketConfiguration, Region};
use sha2::{Digest, Sha256};

use super::{blocking, temp_sibling, BlobInfo, S3Params, StorageError};

/// Metadata header holding a single-PUT object's SHA-256 (hex).
const SHA_HEADER: &str = "x-amz-meta-sha256";
/// The same, as rust-s3 reports it in `HeadObjectResult::metadata`.
const SHA_META: &str = "sha256";
const OCTET_STREAM: &str = "application/octet-stream";
/// S3's smallest part (all but the last).
const MIN_PART_SIZE: usize = 5 * 1024 * 1024;
/// S3's biggest part.
const MAX_PART_SIZE: usize = 5 * 1024 * 1024 * 1024;

/// A bucket on an S3-compatible store. Cheap to clone (shares the HTTP client).
#[derive(Clone)]
pub struct S3Store {
    bucket: Box<Bucket>,
    endpoint: String,
    multipart_threshold: u64,
    part_size: usize,
}

impl std::fmt::Debug for S3Store {
    // By hand: the derived one would print the credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket.name())
            .field("path_style", &self.bucket.is_path_style())
            .field("multipart_threshold", &self.multipart_threshold)
            .field("part_size", &self.part_size)
            .finish()
    }
}

impl S3Store {
    /// Checks the parameters and builds the client; no network traffic.
    pub(crate) fn new(params: &S3Params) -> Result<Self, StorageError> {
        check_params(params)?;
        let endpoint = params.endpoint.trim_end_matches('/').to_owned();
        let credentials = Credentials::new(
            Some(&params.access_key),
            Some(&params.secret_key),
            None,
            None,
            None,
        )
        .map_err(|e| StorageError::Config(format!("credentials: {e}")))?;
        let region = Region::Custom {
            region: params.region.clone(),
            endpoint: endpoint.clone(),
        };
        let config = |e: S3Error| StorageError::Config(format!("S3 client: {e}"));
        let mut bucket = Bucket::new(&params.bucket, region, credentials).map_err(config)?;
        if params.path_style {
            bucket = bucket.with_path_style();
        }
        let bucket = bucket
            .with_request_timeout(params.timeout)
            .map_err(config)?;
        Ok(S3Store {
            bucket,
            endpoint,
            multipart_threshold: params.multipart_threshold,
            part_size: params.part_size,
        })
    }

    /// `http://host:port/bucket`, for [`super::Storage::describe`].
    pub(crate) fn location(&self) -> String {
        format!("{}/{}", self.endpoint, self.bucket.name())
    }

    /// Creates the bucket if a listing says it is missing, then checks it answers.
    pub(crate) async fn ensure_bucket(&self) -> Result<(), StorageError> {
        match self.probe().await {
            Ok(()) => return Ok(()),
            Err(S3Error::HttpFailWithBody(404, _)) => {}
            Err(e) => return Err(self.error(e, None)),
        }
        let credentials = self
            .bucket
            .credentials()
            .await
            .map_err(|e| self.error(e, None))?;
        let (name, region) = (self.bucket.name(), self.bucket.region());
        let config = BucketConfiguration::default();
        let created = if self.bucket.is_path_style() {
            Bucket::create_with_path_style(&name, region, credentials, config).await
        } else {
            Bucket::create(&name, region, credentials, config).await
        };
        match created {
            Ok(response) if (200..300).contains(&response.response_code) => {
                tracing::info!(bucket = %self.location(), "created bucket");
            }
            Ok(response) => {
                let status = response.response_code;
                return Err(self.error(
                    S3Error::HttpFailWithBody(status, response.response_text),
                    None,
                ));
            }
            // Created meanwhile by another node: fine.
            Err(S3Error::HttpFailWithBody(409, _)) => {}
            Err(e) => return Err(self.error(e, None)),
        }
        self.health().await
    }

    pub(crate) async fn health(&self) -> Result<(), StorageError> {
        self.probe().await.map_err(|e| self.error(e, None))
    }

    /// A one-key listing: proves reachability, credentials and the bucket in one request.
    async fn probe(&self) -> Result<(), S3Error> {
        self.bucket
            .list_page(String::new(), None, None, None, Some(1))
            .await
            .map(|_| ())
    }

    pub(crate) async fn put_bytes(
        &self,
        key: &str,
        bytes: Vec<u8>,
        content_type: &str,
    ) -> Result<BlobInfo, StorageError> {
        let (bytes, hasher) = hash_chunk(bytes, Sha256::new()).await?;
        let sha256 = hex::encode(hasher.finalize());
        self.put_single(key, &bytes, content_type_or_default(content_type), &sha256)
            .await?;
        Ok(BlobInfo {
            key: key.to_owned(),
            size: bytes.len() as u64,
            sha256,
        })
    }

    pub(crate) async fn put_file(&self, key: &str, path: &Path) -> Result<BlobInfo, StorageError> {
        let source = path.to_owned();
        let (file, size) = blocking(move || {
            let file = File::open(&source)
                .map_err(|e| StorageError::io(format!("opening {}", source.display()), e))?;
            let size = file
                .metadata()
                .map_err(|e| StorageError::io(format!("reading {}", source.display()), e))?
                .len();
            Ok((file, size))
        })
        .await?;
        if size > self.multipart_threshold {
            return self.put_multipart(key, file).await;
        }
        // Small enough to hold: read it (bounded, in case it grew meanwhile) and PUT.
        let limit = self.multipart_threshold;
        let (bytes, hasher) = blocking(move || {
            let mut bytes = Vec::new();
            file.take(limit.saturating_add(1))
                .read_to_end(&mut bytes)
                .map_err(|e| StorageError::io("reading the file to upload", e))?;
            if bytes.len() as u64 > limit {
                // Uploading a prefix would silently truncate it; a retry takes the multipart path.
                return Err(StorageError::io(
                    "reading the file to upload",
                    std::io::Error::other("the file grew while it was being uploaded"),
                ));
            }
            let mut hasher = Sha256::new();
            hasher.update(&bytes);
            Ok((bytes, hasher))
        })
        .await?;
        let sha256 = hex::encode(hasher.finalize());
        self.put_single(key, &bytes, OCTET_STREAM, &sha256).await?;
        Ok(BlobInfo {
            key: key.to_owned(),
            size: bytes.len() as u64,
            sha256,
        })
    }

    async fn put_single(
        &self,
        key: &str,
        bytes: &[u8],
        content_type: &str,
        sha256: &str,
    ) -> Result<(), StorageError> {
        let mut headers = HeaderMap::new();
        let value = HeaderValue::from_str(sha256)
            .map_err(|e| StorageError::Config(format!("checksum header: {e}")))?;
        headers.insert(SHA_HEADER, value);
        self.bucket
            .put_object_with_content_type_and_headers(key, bytes, content_type, Some(headers))
            .await
            .map_err(|e| self.error(e, Some(key)))?;
        Ok(())
    }

    /// Multipart upload; aborted (best effort) when a part fails so the store frees the parts.
    async fn put_multipart(&self, key: &str, file: File) -> Result<BlobInfo, StorageError> {
        let upload = self
            .bucket
            .initiate_multipart_upload(key, OCTET_STREAM)
            .await
            .map_err(|e| self.error(e, Some(key)))?;
        let upload_id = upload.upload_id;
        let uploaded = match self.upload_parts(key, &upload_id, file).await {
            Ok(uploaded) => uploaded,
            Err(e) => {
                self.abort(key, &upload_id).await;
                return Err(e);
            }
        };
        let (parts, size, sha256) = uploaded;
        if let Err(e) = self
            .bucket
            .complete_multipart_upload(key, &upload_id, parts)
            .await
        {
            self.abort(key, &upload_id).await;
            return Err(self.error(e, Some(key)));
        }
        Ok(BlobInfo {
            key: key.to_owned(),
            size,
            sha256,
        })
    }

    /// Uploads the parts, reading and hashing part n+1 while part n is in flight. Returns the
    /// parts, the total size and the content's SHA-256.
    async fn upload_parts(
        &self,
        key: &str,
        upload_id: &str,
        file: File,
    ) -> Result<(Vec<Part>, u64, String), StorageError> {
        let part_size = self.part_size;
        let (mut file, mut hasher, mut chunk) = read_part(file, Sha256::new(), part_size).await?;
        let mut parts = Vec::new();
        let mut size = 0u64;
        while !chunk.is_empty() {
            size += chunk.len() as u64;
            let number = u32::try_from(parts.len() + 1)
                .map_err(|_| StorageError::Config("too many parts".into()))?;
            let last = chunk.len() < part_size;
            let upload =
                self.bucket
                    .put_multipart_chunk(chunk, key, number, upload_id, OCTET_STREAM);
            if last {
                parts.push(upload.await.map_err(|e| self.error(e, Some(key)))?);
                break;
            }
            let (uploaded, next) = tokio::join!(upload, read_part(file, hasher, part_size));
            parts.push(uploaded.map_err(|e| self.error(e, Some(key)))?);
            (file, hasher, chunk) = next?;
        }
        if parts.is_empty() {
            return Err(StorageError::io(
                format!("uploading {key}"),
                std::io::Error::other("the file became empty while it was being uploaded"),
            ));
        }
        Ok((parts, size, hex::encode(hasher.finalize())))
    }

    async fn abort(&self, key: &str, upload_id: &str) {
        if let Err(e) = self.bucket.abort_upload(key, upload_id).await {
            tracing::warn!(key, error = %e, "could not abort a failed multipart upload");
        }
    }

    pub(crate) async fn get_bytes(
        &self,
        key: &str,
        max_bytes: u64,
    ) -> Result<Vec<u8>, StorageError> {
        let head = self.head(key).await?;
        let too_large = |size| StorageError::TooLarge {
            key: key.to_owned(),
            size,
            limit: max_bytes,
        };
        if head.size > max_bytes {
            return Err(too_large(head.size));
        }
        let response = self
            .bucket
            .get_object(key)
            .await
            .map_err(|e| self.error(e, Some(key)))?;
        let bytes = response.to_vec();
        // Replaced by a bigger object since the HEAD.
        if bytes.len() as u64 > max_bytes {
            return Err(too_large(bytes.len() as u64));
        }
        let (bytes, hasher) = hash_chunk(bytes, Sha256::new()).await?;
        check_sha(key, head.sha256.as_deref(), hasher)?;
        Ok(bytes)
    }

    pub(crate) async fn get_to_file(&self, key: &str, dest: &Path) -> Result<u64, StorageError> {
        let head = self.head(key).await?;
        let temp = TempPath(temp_sibling(dest)?);
        let temp_path = temp.0.clone();
        let file = blocking(move || {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&temp_path)
                .map_err(|e| StorageError::io(format!("creating {}", temp_path.display()), e))
        })
        .await?;
        let (file, hasher) = self.download_ranges(key, head.size, file).await?;
        check_sha(key, head.sha256.as_deref(), hasher)?;
        let (from, to) = (temp.0.clone(), dest.to_owned());
        blocking(move || {
            file.sync_all()
                .map_err(|e| StorageError::io(format!("syncing {}", from.display()), e))?;
            std::fs::rename(&from, &to)
                .map_err(|e| StorageError::io(format!("renaming to {}", to.display()), e))
        })
        .await?;
        temp.disarm();
        Ok(head.size)
    }

    /// Fetches `size` bytes in ranges of `part_size` into `file`, writing and hashing range n
    /// on a blocking thread while range n+1 downloads.
    async fn download_ranges(
        &self,
        key: &str,
        size: u64,
        file: File,
    ) -> Result<(File, Sha256), StorageError> {
        let mut state = (file, Sha256::new());
        if size == 0 {
            return Ok(state);
        }
        let mut offset = 0u64;
        let mut data = self.fetch_range(key, offset, size).await?;
        loop {
            offset += data.len() as u64;
            let write = write_chunk(state, data);
            if offset >= size {
                return write.await;
            }
            let (written, next) = tokio::join!(write, self.fetch_range(key, offset, size));
            state = written?;
            data = next?;
        }
    }

    /// One ranged GET of up to `part_size` bytes from `offset`, checked for length.
    async fn fetch_range(
        &self,
        key: &str,
        offset: u64,
        size: u64,
    ) -> Result<Vec<u8>, StorageError> {
        let end = size.min(offset + self.part_size as u64) - 1;
        let response = self
            .bucket
            .get_object_range(key, offset, Some(end))
            .await
            .map_err(|e| self.error(e, Some(key)))?;
        let bytes = response.to_vec();
        let expected = end - offset + 1;
        if bytes.len() as u64 != expected {
            return Err(StorageError::Unavailable(format!(
                "{key}: asked for {expected} bytes at {offset}, got {} (object replaced during the download?)",
                bytes.len()
            )));
        }
        Ok(bytes)
    }

    pub(crate) async fn exists(&self, key: &str) -> Result<bool, StorageError> {
        match self.head(key).await {
            Ok(_) => Ok(true),
            Err(StorageError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub(crate) async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match self.bucket.delete_object(key).await {
            Ok(_) => Ok(()),
            Err(e) => match self.error(e, Some(key)) {
                StorageError::NotFound(_) => Ok(()),
                other => Err(other),
            },
        }
    }

    pub(crate) async fn delete_prefix(&self, prefix: &str) -> Result<u64, StorageError> {
        let keys = self.list(prefix).await?;
        if keys.is_empty() {
            return Ok(0);
        }
        let wanted = keys.len();
        let objects: Vec<ObjectIdentifier> = keys.into_iter().map(ObjectIdentifier::new).collect();
        let result = self
            .bucket
            .delete_objects(objects)
            .await
            .map_err(|e| self.error(e, None))?;
        if let Some(first) = result.errors.first() {
            let message = format!(
                "{} of {wanted} deletes under {prefix:?} failed, first {}: {} {}",
                result.errors.len(),
                first.key,
                first.code,
                first.message
            );
            return Err(if first.code == "AccessDenied" {
                StorageError::Denied(message)
            } else {
                StorageError::Unavailable(message)
            });
        }
        Ok(result.deleted.len() as u64)
    }

    pub(crate) async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let pages = self
            .bucket
            .list(prefix.to_owned(), None)
            .await
            .map_err(|e| self.error(e, None))?;
        let mut keys: Vec<String> = pages
            .into_iter()
            .flat_map(|page| page.contents)
            .map(|object| object.key)
            .collect();
        keys.sort();
        Ok(keys)
    }

    async fn head(&self, key: &str) -> Result<Head, StorageError> {
        let (head, _) = self
            .bucket
            .head_object(key)
            .await
            .map_err(|e| self.error(e, Some(key)))?;
        let size = head
            .content_length
            .and_then(|length| u64::try_from(length).ok())
            .ok_or_else(|| {
                StorageError::Unavailable(format!("{key}: the store sent no valid Content-Length"))
            })?;
        let sha256 = head
            .metadata
            .and_then(|mut metadata| metadata.remove(SHA_META))
            .filter(|sha| sha.len() == 64);
        Ok(Head { size, sha256 })
    }

    /// Maps a rust-s3 error to the store-independent one; `key` names the object for `NotFound`.
    fn error(&self, err: S3Error, key: Option<&str>) -> StorageError {
        match err {
            S3Error::HttpFailWithBody(status, body) => self.status_error(status, &body, key),
            S3Error::HttpFail => {
                StorageError::Unavailable("the store answered with an error".into())
            }
            S3Error::Reqwest(e) if e.is_timeout() => {
                StorageError::Timeout(format!("{}: {}", self.location(), error_chain(&e)))
            }
            S3Error::Reqwest(e) => {
                StorageError::Unavailable(format!("{}: {}", self.location(), error_chain(&e)))
            }
            S3Error::Io(e) => StorageError::io(format!("transfer with {}", self.location()), e),
            e @ (S3Error::Credentials(_) | S3Error::Region(_) | S3Error::UrlParse(_)) => {
                StorageError::Config(e.to_string())
            }
            // Unparsable answers: a proxy's error page, a server mid-restart.
            other => {
                StorageError::Unavailable(format!("unexpected answer from the store: {other}"))
            }
        }
    }

    fn status_error(&self, status: u16, body: &str, key: Option<&str>) -> StorageError {
        let code = xml_field(body, "Code").unwrap_or_default();
        let message = xml_field(body, "Message").unwrap_or_default();
        let detail = format!("HTTP {status} {code} {message}").trim().to_owned();
        match (status, code) {
            (404, "NoSuchBucket") => StorageError::Config(format!(
                "bucket {} does not exist (set create_bucket or create it)",
                self.location()
            )),
            (404, _) => StorageError::NotFound(key.unwrap_or_default().to_owned()),
            (401 | 403, _)
            | (
                400,
                "InvalidAccessKeyId"
                | "SignatureDoesNotMatch"
                | "AuthorizationHeaderMalformed"
                | "InvalidToken"
                | "ExpiredToken",
            ) => StorageError::Denied(format!("{}: {detail}", self.location())),
            (408 | 429 | 500..=599, _) => {
                StorageError::Unavailable(format!("{}: {detail}", self.location()))
            }
            _ => StorageError::Rejected {
                status,
                message: format!("{code} {message}").trim().to_owned(),
            },
        }
    }
}

/// What a HEAD tells before a download.
struct Head {
    size: u64,
    sha256: Option<String>,
}

fn check_params(params: &S3Params) -> Result<(), StorageError> {
    let bad = |what: String| Err(StorageError::Config(what));
    let endpoint = params.endpoint.trim_end_matches('/');
    let host = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"));
    match host {
        Some(host) if !host.is_empty() && !host.contains('/') => {}
        _ => {
            return bad(format!(
                "endpoint {endpoint:?} must be http(s)://host[:port]"
            ))
        }
    }
    if !valid_bucket_name(&params.bucket) {
        return bad(format!(
            "bucket name {:?} must be 3-63 characters of a-z, 0-9, '.', '-'",
            params.bucket
        ));
    }
    if params.access_key.is_empty() || params.secret_key.is_empty() {
        return bad("access key and secret key must be set".into());
    }
    if params.region.is_empty() {
        return bad("region must be set".into());
    }
    if params.timeout.is_zero() {
        return bad("timeout must be above zero".into());
    }
    if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&params.part_size) {
        return bad(format!(
            "part_size {} must be between 5 MiB and 5 GiB",
            params.part_size
        ));
    }
    Ok(())
}

fn valid_bucket_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (3..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-'))
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// A caller's content type if it is a sane header value, else octet-stream.
fn content_type_or_default(content_type: &str) -> &str {
    let sane = !content_type.is_empty()
        && content_type.len() <= 255
        && content_type
            .bytes()
            .all(|b| b.is_ascii_graphic() || b == b' ');
    if sane {
        content_type
    } else {
        OCTET_STREAM
    }
}

/// The text of `<field>...</field>` in an S3 error body.
fn xml_field<'a>(body: &'a str, field: &str) -> Option<&'a str> {
    let open = format!("<{field}>");
    let start = body.find(&open)? + open.len();
    let end = body[start..].find("</")? + start;
    Some(body[start..end].trim())
}

/// An error with its causes ("error sending request: ...: Connection refused").
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn check_sha(key: &str, expected: Option<&str>, hasher: Sha256) -> Result<(), StorageError> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let actual = hex::encode(hasher.finalize());
    if actual.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(StorageError::Corrupt {
            key: key.to_owned(),
            expected: expected.to_owned(),
            actual,
        })
    }
}

/// Hashes a buffer on a blocking thread (megabytes take milliseconds of CPU).
async fn hash_chunk(bytes: Vec<u8>, mut hasher: Sha256) -> Result<(Vec<u8>, Sha256), StorageError> {
    blocking(move || {
        hasher.update(&bytes);
        Ok((bytes, hasher))
    })
    .await
}

/// Reads up to `part_size` bytes (fewer only at the end of the file) and hashes them.
async fn read_part(
    file: File,
    mut hasher: Sha256,
    part_size: usize,
) -> Result<(File, Sha256, Vec<u8>), StorageError> {
    blocking(move || {
        let mut chunk = Vec::with_capacity(part_size);
        (&file)
            .take(part_size as u64)
            .read_to_end(&mut chunk)
            .map_err(|e| StorageError::io("reading the file to upload", e))?;
        hasher.update(&chunk);
        Ok((file, hasher, chunk))
    })
    .await
}

/// Appends a downloaded range to the file and hashes it.
async fn write_chunk(
    (mut file, mut hasher): (File, Sha256),
    data: Vec<u8>,
) -> Result<(File, Sha256), StorageError> {
    blocking(move || {
        file.write_all(&data)
            .map_err(|e| StorageError::io("writing the downloaded blob", e))?;
        hasher.update(&data);
        Ok((file, hasher))
    })
    .await
}

/// A temp file removed on drop unless disarmed (a failed or cancelled download leaves nothing).
struct TempPath(PathBuf);

impl TempPath {
    fn disarm(self) {
        std::mem::forget(self);
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        // One unlink; rare (failure path) and quick enough for the executor thread.
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn params() -> S3Params {
        S3Params {
            access_key: "ak".into(),
            secret_key: "sk".into(),
            ..S3Params::default()
        }
    }

    #[test]
    fn params_are_checked() {
        assert!(S3Store::new(&params()).is_ok());
        let cases = [
            S3Params {
                endpoint: "127.0.0.1:8333".into(),
                ..params()
            },
            S3Params {
                endpoint: "http://".into(),
                ..params()
            },
            S3Params {
                endpoint: "http://host/bucket".into(),
                ..params()
            },
            S3Params {
                bucket: "Upper".into(),
                ..params()
            },
            S3Params {
                bucket: "ab".into(),
                ..params()
            },
            S3Params {
                bucket: "-ab".into(),
                ..params()
            },
            S3Params {
                access_key: String::new(),
                ..params()
            },
            S3Params {
                timeout: Duration::ZERO,
                ..params()
            },
            S3Params {
                part_size: 1024,
                ..params()
            },
        ];
        for case in cases {
            let err = S3Store::new(&case).unwrap_err();
            assert_eq!(err.code(), "storage.config", "{case:?}");
            assert!(!err.retryable());
        }
    }

    #[test]
    fn location_and_debug_hide_credentials() {
        let store = S3Store::new(&S3Params {
            endpoint: "http://127.0.0.1:9000/".into(),
            bucket: "media".into(),
            secret_key: "very-secret".into(),
            ..params()
        })
        .unwrap();
        assert_eq!(store.location(), "http://127.0.0.1:9000/media");
        let shown = format!("{store:?}");
        assert!(!shown.contains("very-secret"), "{shown}");
    }

    #[test]
    fn status_codes_map_to_errors() {
        let store = S3Store::new(&params()).unwrap();
        let body = |code: &str| format!("<Error><Code>{code}</Code><Message>m</Message></Error>");
        let map = |status, code: &str| store.status_error(status, &body(code), Some("k")).code();
        assert_eq!(map(404, "NoSuchKey"), "storage.not_found");
        assert_eq!(map(404, "NoSuchBucket"), "storage.config");
        assert_eq!(map(403, "AccessDenied"), "storage.denied");
        assert_eq!(map(403, "SignatureDoesNotMatch"), "storage.denied");
        assert_eq!(map(400, "InvalidAccessKeyId"), "storage.denied");
        assert_eq!(map(503, "SlowDown"), "storage.unavailable");
        assert_eq!(map(500, "InternalError"), "storage.unavailable");
        assert_eq!(map(400, "InvalidArgument"), "storage.rejected");
        assert!(store.status_error(503, "", None).retryable());
    }

    #[test]
    fn xml_fields_and_content_types() {
        assert_eq!(xml_field("<E><Code>X</Code></E>", "Code"), Some("X"));
        assert_eq!(xml_field("", "Code"), None);
        assert_eq!(
            content_type_or_default("application/json"),
            "application/json"
        );
        assert_eq!(content_type_or_default("bad\nvalue"), OCTET_STREAM);
        assert_eq!(content_type_or_default(""), OCTET_STREAM);
    }
}
