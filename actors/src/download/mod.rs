//! The Downloader: fetches a client's media link to a local file, safely.
//!
//! [`download`] validates the URL (http or https, a host, no credentials), then routes it:
//! - hosts in [`DownloadParams::ytdlp_hosts`] (YouTube, Vimeo, SoundCloud…, subdomains
//!   included) go to **yt-dlp**, which knows how to find the audio behind a page
//!   ([`ytdlp`]);
//! - everything else is fetched **directly** over HTTP ([`http`]), following redirects by hand
//!   so that every hop passes the [`NetGuard`](crate::net::NetGuard) again.
//!
//! Both paths bound size, duration (where known) and time, write through a temporary name
//! renamed into place only on success, and check the result's first bytes with [`sniff`]:
//! a web page or an image served as `audio/mpeg` is refused as `download.not_media`.

pub mod http;
pub mod sniff;
pub mod ytdlp;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::net::{self, NetError, NetGuard, NetParams, Target};

pub use sniff::{describe_non_media, sniff, MediaKind, SNIFF_LEN};
pub use ytdlp::download_info_json;

/// Limits and settings for downloads.
#[derive(Debug, Clone)]
pub struct DownloadParams {
    /// The largest file accepted, in bytes.
    pub max_bytes: u64,
    /// The longest media accepted, in seconds. Enforced where the duration is known before
    /// downloading (yt-dlp's metadata); a direct file's duration is only known once decoded.
    pub max_duration_s: u64,
    /// Redirects followed by direct downloads.
    pub max_redirects: u8,
    /// Timeouts for direct downloads. `total_timeout` bounds the whole transfer.
    pub net: NetParams,
    /// Which addresses downloads may reach.
    pub guard: NetGuard,
    /// The yt-dlp executable: a path, or a name looked up in `PATH`.
    pub ytdlp_path: PathBuf,
    /// Bound on one yt-dlp run, extraction and download together.
    pub ytdlp_timeout: Duration,
    /// A Netscape cookies file handed to yt-dlp (YouTube's bot check wants a signed-in session).
    pub cookies_file: Option<PathBuf>,
    /// Hosts whose links go to yt-dlp; their subdomains match too.
    pub ytdlp_hosts: Vec<String>,
}

/// Sites whose links are pages, not files: yt-dlp extracts the media behind them.
pub const DEFAULT_YTDLP_HOSTS: &[&str] = &[
    "youtube.com",
    "youtu.be",
    "youtube-nocookie.com",
    "vimeo.com",
    "soundcloud.com",
    "dailymotion.com",
    "dai.ly",
    "twitch.tv",
    "x.com",
    "twitter.com",
    "tiktok.com",
    "facebook.com",
    "fb.watch",
    "instagram.com",
    "reddit.com",
    "bandcamp.com",
    "mixcloud.com",
    "bilibili.com",
    "rumble.com",
    "ted.com",
    "archive.org",
];

impl Default for DownloadParams {
    fn default() -> Self {
        DownloadParams {
            max_bytes: 2 * 1024 * 1024 * 1024,
            max_duration_s: 6 * 3600,
            max_redirects: 5,
            net: NetParams {
                total_timeout: Duration::from_secs(30 * 60),
                ..NetParams::default()
            },
            guard: NetGuard::default(),
            ytdlp_path: PathBuf::from("yt-dlp"),
            ytdlp_timeout: Duration::from_secs(30 * 60),
            cookies_file: None,
            ytdlp_hosts: DEFAULT_YTDLP_HOSTS.iter().map(|h| h.to_string()).collect(),
        }
    }
}

/// How a file was fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// A direct HTTP(S) transfer.
    Http,
    /// yt-dlp, with the extractor it used (`youtube`, `generic`…).
    YtDlp { extractor: Option<String> },
}

/// A finished download.
#[derive(Debug, Clone)]
pub struct Downloaded {
    /// Where the media now is: the `dest` passed in.
    pub path: PathBuf,
    pub bytes: u64,
    pub kind: MediaKind,
    /// The URL after redirects (direct) or the page yt-dlp reports.
    pub final_url: String,
    pub title: Option<String>,
    pub duration_s: Option<f64>,
    pub via: Via,
}

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("bad URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error(transparent)]
    Net(NetError),
    #[error("more than {limit} redirects")]
    TooManyRedirects { limit: u8 },
    #[error("bad redirect to {location:?}: {reason}")]
    BadRedirect { location: String, reason: String },
    #[error("the server answered HTTP {status} for {url}")]
    HttpStatus { status: u16, url: String },
    #[error("the media is larger than the {limit}-byte limit{}", size_note(*.size))]
    TooLarge { limit: u64, size: Option<u64> },
    #[error("the media is longer than the {limit_s} s limit{}", duration_note(*.duration_s))]
    TooLong {
        limit_s: u64,
        duration_s: Option<f64>,
    },
    #[error("the link does not lead to audio or video: it serves {what}")]
    NotMedia { what: &'static str },
    #[error("the link serves an empty file")]
    Empty,
    #[error("file error on {path}: {source}", path = .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "yt-dlp is not available at {path:?} ({reason}); install it (`pip install yt-dlp`) or \
         set the config key ytdlp_path to its location"
    )]
    YtdlpMissing { path: PathBuf, reason: String },
    #[error(
        "YouTube asks to sign in to confirm this is not a bot; give yt-dlp a cookies file \
         from a signed-in browser session (config key cookies_file). yt-dlp said: {line}"
    )]
    YoutubeBotCheck { line: String },
    #[error("the media is unavailable: {line}")]
    Unavailable { line: String },
    #[error("timed out after {after:?}")]
    Timeout { after: Duration },
    #[error("yt-dlp failed (exit status {status}): {line}")]
    YtdlpFailed {
        status: String,
        line: String,
        retryable: bool,
    },
    #[error("bad info JSON {path}: {reason}", path = .path.display())]
    BadInfoJson { path: PathBuf, reason: String },
}

fn size_note(size: Option<u64>) -> String {
    size.map(|s| format!(" ({s} bytes)")).unwrap_or_default()
}

fn duration_note(duration: Option<f64>) -> String {
    duration.map(|d| format!(" ({d:.0} s)")).unwrap_or_default()
}

impl From<NetError> for DownloadError {
    fn from(e: NetError) -> Self {
        DownloadError::Net(e)
    }
}

impl DownloadError {
    /// A stable machine-readable reason; network failures keep their `net.*` code.
    pub fn code(&self) -> &'static str {
        match self {
            DownloadError::BadUrl { .. } => "download.bad_url",
            DownloadError::Net(e) => e.code(),
            DownloadError::TooManyRedirects { .. } => "download.too_many_redirects",
            DownloadError::BadRedirect { .. } => "download.bad_redirect",
            DownloadError::HttpStatus { .. } => "download.http_status",
            DownloadError::TooLarge { .. } => "download.too_large",
            DownloadError::TooLong { .. } => "download.too_long",
            DownloadError::NotMedia { .. } => "download.not_media",
            DownloadError::Empty => "download.empty",
            DownloadError::Io { .. } => "download.io",
            DownloadError::YtdlpMissing { .. } => "download.ytdlp_missing",
            DownloadError::YoutubeBotCheck { .. } => "download.youtube_bot_check",
            DownloadError::Unavailable { .. } => "download.unavailable",
            DownloadError::Timeout { .. } => "download.timeout",
            DownloadError::YtdlpFailed { .. } => "download.ytdlp_failed",
            DownloadError::BadInfoJson { .. } => "download.bad_info_json",
        }
    }

    /// Whether trying again later may succeed: server trouble and timeouts yes; the link's
    /// own problems (missing, too big, not media) and configuration problems no.
    pub fn retryable(&self) -> bool {
        match self {
            DownloadError::Net(e) => e.retryable(),
            DownloadError::HttpStatus { status, .. } => {
                matches!(status, 408 | 425 | 429) || (500..600).contains(status)
            }
            DownloadError::Io { .. } | DownloadError::Timeout { .. } => true,
            DownloadError::YtdlpFailed { retryable, .. } => *retryable,
            DownloadError::BadUrl { .. }
            | DownloadError::TooManyRedirects { .. }
            | DownloadError::BadRedirect { .. }
            | DownloadError::TooLarge { .. }
            | DownloadError::TooLong { .. }
            | DownloadError::NotMedia { .. }
            | DownloadError::Empty
            | DownloadError::YtdlpMissing { .. }
            | DownloadError::YoutubeBotCheck { .. }
            | DownloadError::Unavailable { .. }
            | DownloadError::BadInfoJson { .. } => false,
        }
    }

    fn io(path: &Path, source: std::io::Error) -> Self {
        DownloadError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Validates a client's link: http or https, a host, no credentials, a sane length.
pub fn validate_url(url: &str) -> Result<Target, DownloadError> {
    net::parse_url(url).map_err(|e| match e {
        NetError::BadUrl { url, reason } => DownloadError::BadUrl { url, reason },
        other => DownloadError::Net(other),
    })
}

/// Whether `host` is one of `hosts` or a subdomain of one (`m.youtube.com` matches
/// `youtube.com`; `notyoutube.com` does not).
pub fn is_ytdlp_host(host: &str, hosts: &[String]) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    hosts.iter().any(|h| {
        let h = h.trim_end_matches('.').to_ascii_lowercase();
        !h.is_empty()
            && (host == h
                || host
                    .strip_suffix(h.as_str())
                    .is_some_and(|prefix| prefix.ends_with('.')))
    })
}

/// Downloads the media behind `url` to `dest` (its directory is created if needed). On error
/// nothing is left at `dest` or beside it.
pub async fn download(
    url: &str,
    dest: &Path,
    params: &DownloadParams,
) -> Result<Downloaded, DownloadError> {
    let target = validate_url(url)?;
    if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| DownloadError::io(dir, e))?;
    }
    if is_ytdlp_host(&target.host, &params.ytdlp_hosts) {
        tracing::debug!(url = %target.uri, "downloading with yt-dlp");
        ytdlp::download_url(&target, dest, params).await
    } else {
        tracing::debug!(url = %target.uri, "downloading directly");
        http::download_direct(target, dest, params).await
    }
}

/// Reads up to [`SNIFF_LEN`] leading bytes of a file, off the async threads.
async fn read_head(path: &Path) -> Result<Vec<u8>, DownloadError> {
    use tokio::io::AsyncReadExt;
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| DownloadError::io(path, e))?;
    let mut head = Vec::with_capacity(SNIFF_LEN);
    file.take(SNIFF_LEN as u64)
        .read_to_end(&mut head)
        .await
        .map_err(|e| DownloadError::io(path, e))?;
    Ok(head)
}

/// Removes a file, ignoring a missing one: cleanup after a failed download.
async fn remove_quietly(path: &Path) {
    if let Err(e) = tokio::fs::remove_file(path).await {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove a partial download");
        }
    }
}

/// `path` with `suffix` appended to its file name (`a/b.mp3` + `.part` = `a/b.mp3.part`).
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ytdlp_hosts_match_domains_and_subdomains_only() {
        let hosts = DownloadParams::default().ytdlp_hosts;
        for yes in [
            "youtube.com",
            "www.youtube.com",
            "m.youtube.com",
            "music.youtube.com",
            "YOUTU.BE",
            "youtube.com.",
            "player.vimeo.com",
            "x.com",
        ] {
            assert!(is_ytdlp_host(yes, &hosts), "{yes}");
        }
        for no in [
            "notyoutube.com",
            "youtube.com.evil.net",
            "example.com",
            "ax.com",
        ] {
            assert!(!is_ytdlp_host(no, &hosts), "{no}");
        }
        assert!(!is_ytdlp_host("example.com", &[String::new()]));
    }

    #[test]
    fn validate_url_codes() {
        for (url, code) in [
            ("ftp://example.com/a.mp3", "download.bad_url"),
            ("http://user:pass@example.com/a.mp3", "download.bad_url"),
            ("not a url", "download.bad_url"),
        ] {
            let err = validate_url(url).unwrap_err();
            assert_eq!(err.code(), code, "{url}");
            assert!(!err.retryable());
        }
        assert!(validate_url("https://example.com/a.mp3").is_ok());
    }

    #[test]
    fn status_retryability() {
        let status = |s| DownloadError::HttpStatus {
            status: s,
            url: String::new(),
        };
        for s in [404, 410, 403, 400] {
            assert!(!status(s).retryable(), "{s}");
        }
        for s in [429, 500, 502, 503] {
            assert!(status(s).retryable(), "{s}");
        }
        assert_eq!(status(404).code(), "download.http_status");
    }

    #[test]
    fn suffix_keeps_the_whole_name() {
        assert_eq!(
            with_suffix(Path::new("/tmp/a.b.mp3"), ".part"),
            PathBuf::from("/tmp/a.b.mp3.part")
        );
    }
}
