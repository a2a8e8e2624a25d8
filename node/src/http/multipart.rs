//! `multipart/form-data` uploads: the file part streams to a spool file (never whole in
//! memory), text parts are collected, every size is bounded while reading, and a stalled
//! client is cut off after an idle timeout.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use http::StatusCode;
use tokio::io::AsyncWriteExt;

use super::problem::Problem;

/// Limits of one form.
#[derive(Debug, Clone)]
pub struct FormLimits {
    /// Largest file part, in bytes.
    pub max_file_bytes: u64,
    /// Largest text part, in bytes.
    pub max_field_bytes: usize,
    /// Most text parts.
    pub max_fields: usize,
    /// Longest wait for the next piece of the body.
    pub idle_timeout: Duration,
}

impl Default for FormLimits {
    fn default() -> Self {
        FormLimits {
            max_file_bytes: 2 << 30,
            max_field_bytes: 64 << 10,
            max_fields: 64,
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// Why a form could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FormError {
    #[error("multipart/form-data needs a boundary parameter")]
    NoBoundary,
    #[error("malformed multipart body: {0}")]
    Malformed(String),
    #[error("the file is larger than the limit of {limit} bytes")]
    FileTooLarge { limit: u64 },
    #[error("form field {name:?} is larger than the limit of {limit} bytes")]
    FieldTooLarge { name: String, limit: usize },
    #[error("more than {limit} form fields")]
    TooManyFields { limit: usize },
    #[error("part {name:?} carries a file; the media goes in the part named \"{expected}\"")]
    UnexpectedFile {
        name: String,
        expected: &'static str,
    },
    #[error("more than one file part")]
    DuplicateFile,
    #[error("the client sent nothing for {0:?}")]
    Timeout(Duration),
    #[error("cannot stage the upload: {0}")]
    Spool(std::io::Error),
}

impl FormError {
    pub fn code(&self) -> &'static str {
        match self {
            FormError::NoBoundary => "form.no_boundary",
            FormError::Malformed(_) => "form.malformed",
            FormError::FileTooLarge { .. } => "form.file_too_large",
            FormError::FieldTooLarge { .. } => "form.field_too_large",
            FormError::TooManyFields { .. } => "form.too_many_fields",
            FormError::UnexpectedFile { .. } => "form.unexpected_file",
            FormError::DuplicateFile => "form.duplicate_file",
            FormError::Timeout(_) => "form.timeout",
            FormError::Spool(_) => "form.spool",
        }
    }

    /// The node's own trouble (a full disk) or a slow network, not the form's content.
    pub fn retryable(&self) -> bool {
        matches!(self, FormError::Spool(_) | FormError::Timeout(_))
    }

    pub fn status(&self) -> StatusCode {
        match self {
            FormError::NoBoundary | FormError::Malformed(_) | FormError::TooManyFields { .. } => {
                StatusCode::BAD_REQUEST
            }
            FormError::FileTooLarge { .. } | FormError::FieldTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            FormError::UnexpectedFile { .. } | FormError::DuplicateFile => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            FormError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            FormError::Spool(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl From<FormError> for Problem {
    fn from(error: FormError) -> Problem {
        let status = error.status();
        let detail = match &error {
            // The spool path is the node's business.
            FormError::Spool(_) => "cannot stage the upload on the node; retry later".to_owned(),
            other => other.to_string(),
        };
        // A slow client (408) retries on its own terms; a full spool is worth a Retry-After.
        let node_trouble = error.retryable() && status == StatusCode::SERVICE_UNAVAILABLE;
        Problem::from_error(status, error.code(), detail, node_trouble)
    }
}

/// A file in the spool, removed when dropped unless [`SpoolFile::remove`] already did.
#[derive(Debug)]
pub struct SpoolFile {
    path: PathBuf,
    removed: bool,
}

impl SpoolFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Deletes the file off the async threads.
    pub async fn remove(mut self) {
        self.removed = true;
        let _ = tokio::fs::remove_file(&self.path).await;
    }
}

impl Drop for SpoolFile {
    fn drop(&mut self) {
        if !self.removed {
            // Only on early exits (a dropped request): one unlink, cheap enough inline.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The file part of a form.
#[derive(Debug)]
pub struct Upload {
    pub file: SpoolFile,
    /// The client's file name, as sent (sanitize before showing it).
    pub filename: Option<String>,
    pub bytes: u64,
}

/// A parsed form: text parts in order, and the file part if any.
#[derive(Debug, Default)]
pub struct Form {
    pub fields: Vec<(String, String)>,
    pub upload: Option<Upload>,
}

impl Form {
    /// The last value of a text part (a later part overrides an earlier one).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .rev()
            .find(|(field, _)| field == name)
            .map(|(_, value)| value.as_str())
    }

    /// Every value of a repeated text part, in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.fields
            .iter()
            .filter(|(field, _)| field == name)
            .map(|(_, value)| value.as_str())
            .collect()
    }
}

/// The boundary of a `multipart/form-data` content type.
pub fn boundary(content_type: &str) -> Result<String, FormError> {
    multer::parse_boundary(content_type).map_err(|_| FormError::NoBoundary)
}

fn from_multer(error: multer::Error, limits: &FormLimits) -> FormError {
    match error {
        multer::Error::StreamSizeExceeded { .. } => FormError::FileTooLarge {
            limit: limits.max_file_bytes,
        },
        multer::Error::FieldSizeExceeded { field_name, .. } => FormError::FieldTooLarge {
            name: field_name.unwrap_or_default(),
            limit: limits.max_field_bytes,
        },
        multer::Error::StreamReadFailed(cause) => {
            FormError::Malformed(format!("the request body could not be read: {cause}"))
        }
        other => FormError::Malformed(other.to_string()),
    }
}

async fn idle<T>(
    limits: &FormLimits,
    future: impl std::future::Future<Output = Result<T, multer::Error>>,
) -> Result<T, FormError> {
    match tokio::time::timeout(limits.idle_timeout, future).await {
        Ok(result) => result.map_err(|error| from_multer(error, limits)),
        Err(_) => Err(FormError::Timeout(limits.idle_timeout)),
    }
}

/// At most this much of an oversized part is read and dropped before answering 413.
const DRAIN_BYTES: u64 = 16 << 20;

/// Reads and drops the rest of an oversized part (bounded by [`DRAIN_BYTES`] and the idle
/// timeout), so the client can finish sending and read the 413. Closing a connection with
/// unread data makes the kernel reset it, and the client would see a broken pipe instead of
/// the answer.
async fn drain(field: &mut multer::Field<'_>, limits: &FormLimits) {
    let mut left = DRAIN_BYTES;
    while left > 0 {
        match tokio::time::timeout(limits.idle_timeout, field.chunk()).await {
            Ok(Ok(Some(chunk))) => left = left.saturating_sub(chunk.len() as u64),
            _ => break,
        }
    }
}

/// Reads a form from `body`. The part named `file_field` (or any part with a file name) is
/// the upload, written to `dest`; every other part is text.
pub async fn read_form<S, E>(
    body: S,
    boundary: String,
    file_field: &'static str,
    dest: PathBuf,
    limits: &FormLimits,
) -> Result<Form, FormError>
where
    S: Stream<Item = Result<Bytes, E>> + Send,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // The whole body may hold the file, the text parts and their headers; the file limit
    // itself is enforced per byte below, with its own error.
    let envelope = (limits.max_fields as u64 + 2) * (limits.max_field_bytes as u64 + 4096);
    let constraints = multer::Constraints::new().size_limit(
        multer::SizeLimit::new().whole_stream(limits.max_file_bytes.saturating_add(envelope)),
    );
    let mut multipart = multer::Multipart::with_constraints(body, boundary, constraints);
    let mut form = Form::default();
    while let Some(mut field) = idle(limits, multipart.next_field()).await? {
        let name = field
            .name()
            .ok_or_else(|| FormError::Malformed("a part has no name".into()))?
            .to_owned();
        let filename = field.file_name().map(str::to_owned);
        if name == file_field {
            if form.upload.is_some() {
                return Err(FormError::DuplicateFile);
            }
            let bytes = write_part(&mut field, &dest, limits).await?;
            form.upload = Some(Upload {
                file: SpoolFile {
                    path: dest.clone(),
                    removed: false,
                },
                filename,
                bytes,
            });
            continue;
        }
        if filename.is_some() {
            return Err(FormError::UnexpectedFile {
                name,
                expected: file_field,
            });
        }
        if form.fields.len() >= limits.max_fields {
            return Err(FormError::TooManyFields {
                limit: limits.max_fields,
            });
        }
        let value = read_text(&mut field, &name, limits).await?;
        form.fields.push((name, value));
    }
    Ok(form)
}

async fn read_text(
    field: &mut multer::Field<'_>,
    name: &str,
    limits: &FormLimits,
) -> Result<String, FormError> {
    let mut value = Vec::new();
    while let Some(chunk) = idle(limits, field.chunk()).await? {
        if value.len() + chunk.len() > limits.max_field_bytes {
            return Err(FormError::FieldTooLarge {
                name: name.to_owned(),
                limit: limits.max_field_bytes,
            });
        }
        value.extend_from_slice(&chunk);
    }
    String::from_utf8(value)
        .map_err(|_| FormError::Malformed(format!("form field {name:?} is not UTF-8")))
}

/// Streams one part into `dest`; the file is removed again on any error.
async fn write_part(
    field: &mut multer::Field<'_>,
    dest: &Path,
    limits: &FormLimits,
) -> Result<u64, FormError> {
    let file = tokio::fs::File::create(dest)
        .await
        .map_err(FormError::Spool)?;
    // Removes the partial file on every early return below.
    let guard = SpoolFile {
        path: dest.to_path_buf(),
        removed: false,
    };
    let mut writer = tokio::io::BufWriter::with_capacity(256 << 10, file);
    let mut bytes: u64 = 0;
    while let Some(chunk) = idle(limits, field.chunk()).await? {
        bytes += chunk.len() as u64;
        if bytes > limits.max_file_bytes {
            drain(field, limits).await;
            return Err(FormError::FileTooLarge {
                limit: limits.max_file_bytes,
            });
        }
        writer.write_all(&chunk).await.map_err(FormError::Spool)?;
    }
    writer.flush().await.map_err(FormError::Spool)?;
    writer
        .into_inner()
        .sync_all()
        .await
        .map_err(FormError::Spool)?;
    // The caller owns the file from here on.
    let mut guard = guard;
    guard.removed = true;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{stream, StreamExt};

    const BOUNDARY: &str = "XyZ-boundary";

    fn part(name: &str, filename: Option<&str>, body: &[u8]) -> Vec<u8> {
        let mut out = format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"");
        if let Some(filename) = filename {
            out.push_str(&format!(
                "; filename=\"{filename}\"\r\nContent-Type: audio/wav"
            ));
        }
        out.push_str("\r\n\r\n");
        let mut out = out.into_bytes();
        out.extend_from_slice(body);
        out.extend_from_slice(b"\r\n");
        out
    }

    fn body(parts: &[Vec<u8>]) -> Vec<u8> {
        let mut out: Vec<u8> = parts.concat();
        out.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
        out
    }

    /// The body in small chunks, as a network would deliver it.
    fn chunked(
        bytes: Vec<u8>,
    ) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
        let chunks: Vec<Result<Bytes, std::io::Error>> = bytes
            .chunks(7)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        stream::iter(chunks)
    }

    fn limits() -> FormLimits {
        FormLimits {
            max_file_bytes: 1000,
            max_field_bytes: 16,
            max_fields: 3,
            idle_timeout: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn the_file_streams_to_the_spool_and_fields_are_collected() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("upload");
        let audio: Vec<u8> = (0..=255u8).cycle().take(900).collect();
        let raw = body(&[
            part("language", None, b"en"),
            part("file", Some("talk.wav"), &audio),
            part("formats", None, b"srt"),
            part("formats", None, b"vtt"),
        ]);
        let form = read_form(
            chunked(raw),
            BOUNDARY.into(),
            "file",
            dest.clone(),
            &limits(),
        )
        .await
        .unwrap();
        assert_eq!(form.get("language"), Some("en"));
        assert_eq!(form.all("formats"), vec!["srt", "vtt"]);
        let upload = form.upload.unwrap();
        assert_eq!(upload.bytes, 900);
        assert_eq!(upload.filename.as_deref(), Some("talk.wav"));
        assert_eq!(std::fs::read(&dest).unwrap(), audio);
        upload.file.remove().await;
        assert!(!dest.exists());
    }

    #[tokio::test]
    async fn an_oversized_file_is_413_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("upload");
        let raw = body(&[part("file", Some("big.wav"), &[7u8; 1001])]);
        let error = read_form(
            chunked(raw),
            BOUNDARY.into(),
            "file",
            dest.clone(),
            &limits(),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(error, FormError::FileTooLarge { limit: 1000 }),
            "{error}"
        );
        assert_eq!(Problem::from(error).status, 413);
        assert!(!dest.exists());
    }

    #[tokio::test]
    async fn a_dropped_upload_removes_its_spool_file() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("upload");
        let raw = body(&[part("file", Some("a.wav"), b"RIFF")]);
        let form = read_form(
            chunked(raw),
            BOUNDARY.into(),
            "file",
            dest.clone(),
            &limits(),
        )
        .await
        .unwrap();
        assert!(dest.exists());
        drop(form);
        assert!(!dest.exists());
    }

    #[tokio::test]
    async fn field_limits_and_structure_errors() {
        let dir = tempfile::tempdir().unwrap();
        let cases: Vec<(Vec<u8>, &str, u16)> = vec![
            (
                body(&[part("prompt", None, &[b'p'; 17])]),
                "form.field_too_large",
                413,
            ),
            (
                body(&[
                    part("a", None, b"1"),
                    part("b", None, b"2"),
                    part("c", None, b"3"),
                    part("d", None, b"4"),
                ]),
                "form.too_many_fields",
                400,
            ),
            (
                body(&[part("audio", Some("a.wav"), b"RIFF")]),
                "form.unexpected_file",
                422,
            ),
            (
                body(&[
                    part("file", Some("a.wav"), b"RIFF"),
                    part("file", Some("b.wav"), b"RIFF"),
                ]),
                "form.duplicate_file",
                422,
            ),
            (
                body(&[part("language", None, &[0xff, 0xfe])]),
                "form.malformed",
                400,
            ),
            (
                b"--XyZ-boundary\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nunterminated"
                    .to_vec(),
                "form.malformed",
                400,
            ),
        ];
        for (raw, code, status) in cases {
            let dest = dir.path().join("upload");
            let error = read_form(
                chunked(raw),
                BOUNDARY.into(),
                "file",
                dest.clone(),
                &limits(),
            )
            .await
            .unwrap_err();
            assert_eq!(error.code(), code, "{error}");
            assert_eq!(Problem::from(error).status.as_u16(), status);
            assert!(!dest.exists(), "{code} left a spool file");
        }
    }

    #[tokio::test]
    async fn a_stalled_client_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let start = part("file", Some("a.wav"), b"");
        let head = start[..start.len() - 2].to_vec();
        let stalled =
            stream::iter(vec![Ok::<_, std::io::Error>(Bytes::from(head))]).chain(stream::pending());
        let limits = FormLimits {
            idle_timeout: Duration::from_millis(50),
            ..limits()
        };
        let dest = dir.path().join("upload");
        let error = read_form(
            Box::pin(stalled),
            BOUNDARY.into(),
            "file",
            dest.clone(),
            &limits,
        )
        .await
        .unwrap_err();
        assert_eq!(error.code(), "form.timeout");
        assert_eq!(Problem::from(error).status, 408);
        assert!(!dest.exists());
    }

    #[test]
    fn boundaries_come_from_the_content_type() {
        assert_eq!(
            boundary("multipart/form-data; boundary=abc").unwrap(),
            "abc"
        );
        assert_eq!(
            boundary("multipart/form-data").unwrap_err().code(),
            "form.no_boundary"
        );
    }
}
