//! Direct HTTP(S) downloads: redirects followed by hand, a streamed body bounded in size and
//! time, written to `dest.part` and renamed into place once it proves to be media.
//!
//! Each redirect hop is a fresh [`net::request`], so the guard sees every address the chain
//! leads to: a public page redirecting to `http://169.254.169.254/` is refused before any
//! connection to it.

use std::path::Path;

use http::header::{CONTENT_LENGTH, LOCATION};
use http::{Method, Response, StatusCode};
use hyper::body::Incoming;
use tokio::io::AsyncWriteExt;

use super::sniff::{describe_non_media, sniff, MediaKind, SNIFF_LEN};
use super::{remove_quietly, with_suffix, DownloadError, DownloadParams, Downloaded, Via};
use crate::net::{self, BodyReader, Target};

/// Write buffer for the destination file: few, large writes.
const WRITE_BUFFER: usize = 256 * 1024;

/// Downloads `target` to `dest` directly, following redirects.
pub(super) async fn download_direct(
    target: Target,
    dest: &Path,
    params: &DownloadParams,
) -> Result<Downloaded, DownloadError> {
    let (final_url, response) = follow_redirects(target, params).await?;
    let status = response.status();
    if !status.is_success() {
        return Err(DownloadError::HttpStatus {
            status: status.as_u16(),
            url: final_url,
        });
    }
    if let Some(length) = content_length(&response) {
        if length > params.max_bytes {
            return Err(DownloadError::TooLarge {
                limit: params.max_bytes,
                size: Some(length),
            });
        }
    }
    let (_, mut body) = BodyReader::new(response, &params.net);
    let part = with_suffix(dest, ".part");
    let (bytes, kind) = match stream_to_file(&mut body, &part, params.max_bytes).await {
        Ok(done) => done,
        Err(e) => {
            remove_quietly(&part).await;
            return Err(e);
        }
    };
    if let Err(e) = tokio::fs::rename(&part, dest).await {
        remove_quietly(&part).await;
        return Err(DownloadError::io(dest, e));
    }
    Ok(Downloaded {
        path: dest.to_path_buf(),
        bytes,
        kind,
        final_url,
        title: None,
        duration_s: None,
        via: Via::Http,
    })
}

/// Requests `target`, and each `Location` it redirects to, up to `max_redirects` hops.
/// Returns the final URL and its (non-redirect) response.
async fn follow_redirects(
    mut target: Target,
    params: &DownloadParams,
) -> Result<(String, Response<Incoming>), DownloadError> {
    let mut hops = 0u8;
    loop {
        let url = target.uri.to_string();
        let response = net::request(
            Method::GET,
            &url,
            &[("accept", "*/*")],
            bytes::Bytes::new(),
            &params.guard,
            &params.net,
        )
        .await?;
        if !is_redirect(response.status()) {
            return Ok((url, response));
        }
        if hops >= params.max_redirects {
            return Err(DownloadError::TooManyRedirects {
                limit: params.max_redirects,
            });
        }
        hops += 1;
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| DownloadError::BadRedirect {
                location: String::new(),
                reason: format!("HTTP {} without a readable Location", response.status()),
            })?
            .to_string();
        // Dropping the response closes its connection; the next hop starts afresh.
        drop(response);
        let next = resolve_location(&target, &location);
        target = net::parse_url(&next).map_err(|e| DownloadError::BadRedirect {
            location: net::truncate(&location, 200),
            reason: e.to_string(),
        })?;
        tracing::debug!(hop = hops, to = %target.uri, "following a redirect");
    }
}

fn is_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

fn content_length(response: &Response<Incoming>) -> Option<u64> {
    response
        .headers()
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The absolute URL a `Location` value points to from `base` (RFC 3986 §5.2, for the forms
/// servers send: absolute, scheme-relative, absolute-path and relative-path references).
fn resolve_location(base: &Target, location: &str) -> String {
    let location = location.trim();
    let location = location.split('#').next().unwrap_or_default();
    let scheme = if base.https { "https" } else { "http" };
    let authority = base
        .uri
        .authority()
        .map_or(base.host.as_str(), |a| a.as_str());
    if has_scheme(location) {
        return location.to_string();
    }
    if let Some(rest) = location.strip_prefix("//") {
        return format!("{scheme}://{rest}");
    }
    let base_path = base.uri.path();
    let (path, query) = if location.is_empty() {
        (base_path.to_string(), base.uri.query().map(str::to_string))
    } else if let Some(query) = location.strip_prefix('?') {
        (base_path.to_string(), Some(query.to_string()))
    } else {
        let (path, query) = match location.split_once('?') {
            Some((p, q)) => (p, Some(q.to_string())),
            None => (location, None),
        };
        let merged = if path.starts_with('/') {
            path.to_string()
        } else {
            let dir = &base_path[..base_path.rfind('/').map_or(0, |i| i + 1)];
            format!("{}{path}", if dir.is_empty() { "/" } else { dir })
        };
        (remove_dot_segments(&merged), query)
    };
    match query {
        Some(q) => format!("{scheme}://{authority}{path}?{q}"),
        None => format!("{scheme}://{authority}{path}"),
    }
}

/// Whether a reference starts with `scheme:` (letters, digits, `+-.`, then a colon).
fn has_scheme(reference: &str) -> bool {
    match reference.split_once(':') {
        Some((scheme, _)) => {
            scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        }
        None => false,
    }
}

/// Resolves `.` and `..` segments of an absolute path.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match *segment {
            "." => {
                if last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if last {
                    out.push("");
                }
            }
            other => out.push(other),
        }
    }
    format!("/{}", out.join("/"))
}

/// Streams the body into `part`: stops past `max_bytes`, checks the first [`SNIFF_LEN`] bytes
/// as soon as they are in (so a multi-gigabyte web page stops early), refuses an empty body.
async fn stream_to_file(
    body: &mut BodyReader,
    part: &Path,
    max_bytes: u64,
) -> Result<(u64, MediaKind), DownloadError> {
    let file = tokio::fs::File::create(part)
        .await
        .map_err(|e| DownloadError::io(part, e))?;
    let mut out = tokio::io::BufWriter::with_capacity(WRITE_BUFFER, file);
    let mut head: Vec<u8> = Vec::with_capacity(SNIFF_LEN);
    let mut kind = None;
    let mut total = 0u64;
    while let Some(chunk) = body.next_chunk().await? {
        total += chunk.len() as u64;
        if total > max_bytes {
            return Err(DownloadError::TooLarge {
                limit: max_bytes,
                size: None,
            });
        }
        if kind.is_none() {
            let take = (SNIFF_LEN - head.len()).min(chunk.len());
            head.extend_from_slice(&chunk[..take]);
            if head.len() == SNIFF_LEN {
                kind = Some(check_media(&head)?);
            }
        }
        out.write_all(&chunk)
            .await
            .map_err(|e| DownloadError::io(part, e))?;
    }
    if total == 0 {
        return Err(DownloadError::Empty);
    }
    let kind = match kind {
        Some(kind) => kind,
        None => check_media(&head)?,
    };
    out.flush().await.map_err(|e| DownloadError::io(part, e))?;
    out.get_ref()
        .sync_all()
        .await
        .map_err(|e| DownloadError::io(part, e))?;
    Ok((total, kind))
}

fn check_media(head: &[u8]) -> Result<MediaKind, DownloadError> {
    sniff(head).ok_or_else(|| DownloadError::NotMedia {
        what: describe_non_media(head),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(url: &str) -> Target {
        net::parse_url(url).unwrap()
    }

    #[test]
    fn resolves_every_location_form() {
        let b = base("http://h.example:8080/a/b/c?x=1");
        for (location, want) in [
            ("https://other.example/z", "https://other.example/z"),
            ("//cdn.example/f.mp3", "http://cdn.example/f.mp3"),
            ("/root.mp3", "http://h.example:8080/root.mp3"),
            ("d.mp3", "http://h.example:8080/a/b/d.mp3"),
            ("../d.mp3?q=2", "http://h.example:8080/a/d.mp3?q=2"),
            ("./", "http://h.example:8080/a/b/"),
            ("../../../../up", "http://h.example:8080/up"),
            ("?y=2", "http://h.example:8080/a/b/c?y=2"),
            ("/p#frag", "http://h.example:8080/p"),
            ("", "http://h.example:8080/a/b/c?x=1"),
        ] {
            assert_eq!(resolve_location(&b, location), want, "{location:?}");
        }
        assert_eq!(
            resolve_location(&base("http://[::1]:81/x"), "y"),
            "http://[::1]:81/y"
        );
    }

    #[test]
    fn scheme_detection() {
        assert!(has_scheme("http://x"));
        assert!(has_scheme("ftp://x"));
        assert!(!has_scheme("/a:b"));
        assert!(!has_scheme("a/b:c"));
        assert!(!has_scheme("1abc:x"));
    }
}
