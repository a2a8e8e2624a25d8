//! Downloads through yt-dlp, for sites whose links are pages rather than files.
//!
//! yt-dlp runs as a child process (`kill_on_drop`, bounded by
//! [`DownloadParams::ytdlp_timeout`]) with no user configuration, one item (no playlists),
//! the best audio-only format (else the best combined one), yt-dlp's own size limit and a
//! `--match-filters` duration limit (media of unknown duration pass it: their length is
//! only known once decoded; live streams are refused). It writes next to `dest` under a
//! temporary name, reports the final file and metadata through `--print-to-file`, and the file
//! is checked (size, [`sniff`]) and renamed to `dest`.
//!
//! **Network guard:** the link's host is resolved and checked against the
//! [`NetGuard`](crate::net::NetGuard) before yt-dlp starts (for an info JSON, every media URL's
//! host). yt-dlp then does its own HTTP: the redirects and CDN URLs it follows inside are **not**
//! re-checked, so only route trusted sites to it.
//!
//! Failures are classified from yt-dlp's output, since its exit status is 1 for everything:
//! YouTube's bot check, unavailable or private media, the size and duration filters (reported
//! on stdout with exit status 0), timeouts, a missing binary.

use std::collections::{BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

use super::sniff::{describe_non_media, sniff};
use super::{
    read_head, remove_quietly, with_suffix, DownloadError, DownloadParams, Downloaded, Via,
};
use crate::net::{self, Target};

/// Lines of yt-dlp output kept for classifying failures.
const TAIL_LINES: usize = 64;
/// Longest output line kept; the rest of a longer line is dropped.
const MAX_LINE: usize = 2048;
/// Largest info JSON accepted (real YouTube ones are a few megabytes at most).
const MAX_INFO_JSON: u64 = 64 * 1024 * 1024;
/// Distinct hosts an info JSON may point at; each is resolved and checked.
const MAX_INFO_JSON_HOSTS: usize = 32;

/// What yt-dlp downloads: a page URL, or a saved info JSON.
enum Input<'a> {
    Url(&'a str),
    InfoJson(&'a Path),
}

/// Downloads a page link with yt-dlp, best audio first.
pub(super) async fn download_url(
    target: &Target,
    dest: &Path,
    params: &DownloadParams,
) -> Result<Downloaded, DownloadError> {
    net::resolve_checked(&target.host, target.port, &params.guard).await?;
    let url = target.uri.to_string();
    run(Input::Url(&url), "bestaudio/best", dest, params, &url).await
}

/// Downloads `format` (a yt-dlp format selector such as `140` or `bestaudio`) of the media a
/// saved info JSON describes (`yt-dlp -j` output, or hand-made), with `--load-info-json`. For
/// operators re-running a download without extraction, and for offline tests.
pub async fn download_info_json(
    info_json: &Path,
    format: &str,
    dest: &Path,
    params: &DownloadParams,
) -> Result<Downloaded, DownloadError> {
    let info = read_info_json(info_json).await?;
    for (host, port) in info_json_hosts(&info, info_json)? {
        net::resolve_checked(&host, port, &params.guard).await?;
    }
    if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| DownloadError::io(dir, e))?;
    }
    let fallback_url = info
        .get("webpage_url")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string();
    run(
        Input::InfoJson(info_json),
        format,
        dest,
        params,
        &fallback_url,
    )
    .await
}

/// Reads and parses an info JSON, bounded in size.
async fn read_info_json(path: &Path) -> Result<serde_json::Value, DownloadError> {
    let bad = |reason: String| DownloadError::BadInfoJson {
        path: path.to_path_buf(),
        reason,
    };
    let meta = tokio::fs::metadata(path)
        .await
        .map_err(|e| bad(e.to_string()))?;
    if meta.len() > MAX_INFO_JSON {
        return Err(bad(format!("larger than {MAX_INFO_JSON} bytes")));
    }
    let text = tokio::fs::read(path)
        .await
        .map_err(|e| bad(e.to_string()))?;
    let value: serde_json::Value = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
    if !value.is_object() {
        return Err(bad("not a JSON object".into()));
    }
    Ok(value)
}

/// The distinct `(host, port)` pairs of every media URL in an info JSON: the top-level `url`
/// and each format's `url`, `manifest_url` and `fragment_base_url`. Non-http(s) URLs refuse
/// the file.
fn info_json_hosts(
    info: &serde_json::Value,
    path: &Path,
) -> Result<BTreeSet<(String, u16)>, DownloadError> {
    let bad = |reason: String| DownloadError::BadInfoJson {
        path: path.to_path_buf(),
        reason,
    };
    let mut objects = vec![info];
    for list in ["formats", "requested_formats"] {
        if let Some(items) = info.get(list).and_then(|v| v.as_array()) {
            objects.extend(items);
        }
    }
    let mut hosts = BTreeSet::new();
    for object in objects {
        for key in ["url", "manifest_url", "fragment_base_url"] {
            let Some(url) = object.get(key).and_then(|v| v.as_str()) else {
                continue;
            };
            let target = net::parse_url(url).map_err(|e| bad(format!("{key}: {e}")))?;
            hosts.insert((target.host, target.port));
        }
    }
    if hosts.is_empty() {
        return Err(bad("no media URLs (formats[].url)".into()));
    }
    if hosts.len() > MAX_INFO_JSON_HOSTS {
        return Err(bad(format!(
            "media URLs on more than {MAX_INFO_JSON_HOSTS} hosts"
        )));
    }
    Ok(hosts)
}

/// The files of one run: yt-dlp's output template and its report, beside `dest`.
struct RunFiles {
    /// File-name prefix every file of the run starts with, for cleanup.
    prefix: String,
    dir: PathBuf,
    template: String,
    report: PathBuf,
}

impl RunFiles {
    fn new(dest: &Path) -> RunFiles {
        let stem = with_suffix(dest, ".ytdlp");
        let prefix = stem
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let dir = dest
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        // yt-dlp expands `%` in both the output template and the report path.
        let escaped = stem.to_string_lossy().replace('%', "%%");
        RunFiles {
            prefix,
            dir,
            template: format!("{escaped}.%(ext)s"),
            report: with_suffix(&stem, ".report.json"),
        }
    }

    /// The report path as yt-dlp's `--print-to-file` reads it (a template).
    fn report_template(&self) -> String {
        self.report.to_string_lossy().replace('%', "%%")
    }

    /// Removes every file of the run (media, `.part`, report) except `keep`.
    async fn cleanup(&self, keep: Option<&Path>) {
        let Ok(mut entries) = tokio::fs::read_dir(&self.dir).await else {
            return;
        };
        while let Ok(Some(entry)) = entries.next_entry().await {
            let path = entry.path();
            let ours = entry
                .file_name()
                .to_string_lossy()
                .starts_with(&self.prefix);
            if ours && Some(path.as_path()) != keep {
                remove_quietly(&path).await;
            }
        }
    }
}

/// The command line: no config files, one item, bounded size, duration filter, our output
/// names; options in `--name=value` form so no value can pass for an option.
fn command(input: &Input<'_>, format: &str, files: &RunFiles, params: &DownloadParams) -> Command {
    let mut cmd = Command::new(&params.ytdlp_path);
    cmd.arg("--no-config")
        .arg("--no-playlist")
        .arg("--no-progress")
        .arg("--no-mtime")
        .arg("--no-cache-dir")
        .arg(format!("--format={format}"))
        .arg(format!("--max-filesize={}", params.max_bytes))
        .arg(format!(
            "--match-filters=!is_live & duration <=? {}",
            params.max_duration_s
        ))
        .arg(format!(
            "--socket-timeout={}",
            params.net.read_timeout.as_secs().max(1)
        ))
        .arg(format!("--output={}", files.template))
        .arg("--print-to-file")
        .arg("after_move:%(.{filepath,title,duration,webpage_url,extractor})j")
        .arg(files.report_template());
    if let Some(cookies) = &params.cookies_file {
        let mut arg = std::ffi::OsString::from("--cookies=");
        arg.push(cookies);
        cmd.arg(arg);
    }
    match input {
        Input::Url(url) => {
            cmd.arg("--").arg(url);
        }
        Input::InfoJson(path) => {
            let mut arg = std::ffi::OsString::from("--load-info-json=");
            arg.push(path);
            cmd.arg(arg);
        }
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Runs yt-dlp, classifies its outcome, and moves the checked result to `dest`.
async fn run(
    input: Input<'_>,
    format: &str,
    dest: &Path,
    params: &DownloadParams,
    fallback_url: &str,
) -> Result<Downloaded, DownloadError> {
    let files = RunFiles::new(dest);
    files.cleanup(None).await;
    let result = match run_process(&input, format, &files, params).await {
        Ok(()) => finish(&files, dest, params, fallback_url).await,
        Err(e) => Err(e),
    };
    files
        .cleanup(result.as_ref().ok().map(|d| d.path.as_path()))
        .await;
    result
}

/// Spawns yt-dlp and waits for it within the timeout; `Ok` when it exited cleanly without
/// reporting a known failure.
async fn run_process(
    input: &Input<'_>,
    format: &str,
    files: &RunFiles,
    params: &DownloadParams,
) -> Result<(), DownloadError> {
    let mut child =
        command(input, format, files, params)
            .spawn()
            .map_err(|e| DownloadError::YtdlpMissing {
                path: params.ytdlp_path.clone(),
                reason: e.to_string(),
            })?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let waited = tokio::time::timeout(params.ytdlp_timeout, async {
        let (out, err, status) = tokio::join!(tail(stdout), tail(stderr), child.wait());
        (out, err, status)
    })
    .await;
    let Ok((out, err, status)) = waited else {
        // kill_on_drop would do it too; kill now so the files can be cleaned up.
        let _ = child.kill().await;
        return Err(DownloadError::Timeout {
            after: params.ytdlp_timeout,
        });
    };
    let status = status.map_err(|e| DownloadError::YtdlpFailed {
        status: "unknown".into(),
        line: e.to_string(),
        retryable: true,
    })?;
    classify(status, &out, &err, params)
}

/// Reads a child's output to the end, keeping its last [`TAIL_LINES`] lines, each cut to
/// [`MAX_LINE`] bytes.
async fn tail<R: AsyncRead + Unpin>(reader: Option<R>) -> Vec<String> {
    let Some(mut reader) = reader else {
        return Vec::new();
    };
    let mut lines: VecDeque<String> = VecDeque::new();
    let mut current: Vec<u8> = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &byte in &buf[..n] {
            if byte == b'\n' || byte == b'\r' {
                push(&mut current, &mut lines);
            } else if current.len() < MAX_LINE {
                current.push(byte);
            }
        }
    }
    push(&mut current, &mut lines);
    lines.into()
}

/// Ends the current line: keeps it (if not blank) and drops the oldest beyond [`TAIL_LINES`].
fn push(line: &mut Vec<u8>, lines: &mut VecDeque<String>) {
    let text = String::from_utf8_lossy(line).trim_end().to_string();
    line.clear();
    if !text.is_empty() {
        if lines.len() == TAIL_LINES {
            lines.pop_front();
        }
        lines.push_back(text);
    }
}

/// Maps yt-dlp's exit status and output to an error, most specific first.
fn classify(
    status: ExitStatus,
    stdout: &[String],
    stderr: &[String],
    params: &DownloadParams,
) -> Result<(), DownloadError> {
    let find = |lines: &[String], needles: &[&str]| {
        lines
            .iter()
            .find(|l| {
                let lower = l.to_lowercase();
                needles.iter().any(|n| lower.contains(n))
            })
            .cloned()
    };
    if let Some(line) = find(stderr, &["not a bot"]) {
        return Err(DownloadError::YoutubeBotCheck { line });
    }
    if let Some(line) = find(stderr, UNAVAILABLE) {
        return Err(DownloadError::Unavailable { line });
    }
    let all: Vec<String> = stdout.iter().chain(stderr).cloned().collect();
    if find(&all, &["does not pass filter"]).is_some() {
        return Err(DownloadError::TooLong {
            limit_s: params.max_duration_s,
            duration_s: None,
        });
    }
    if find(&all, &["larger than max-filesize"]).is_some() {
        return Err(DownloadError::TooLarge {
            limit: params.max_bytes,
            size: None,
        });
    }
    if status.success() {
        return Ok(());
    }
    let line = stderr
        .iter()
        .rev()
        .find(|l| l.starts_with("ERROR:"))
        .or_else(|| stderr.last())
        .cloned()
        .unwrap_or_else(|| "no error output".into());
    let retryable = !PERMANENT.iter().any(|p| line.contains(p));
    Err(DownloadError::YtdlpFailed {
        status: status.to_string(),
        line,
        retryable,
    })
}

/// Lower-case fragments of yt-dlp errors meaning the media cannot be had.
const UNAVAILABLE: &[&str] = &[
    "video unavailable",
    "this video is unavailable",
    "private video",
    "this video is private",
    "has been removed",
    "account associated with this video has been terminated",
    "not available in your country",
    "members-only",
    "join this channel",
    "sign in to confirm your age",
    "this live event will begin",
    "premieres in",
    "http error 404",
    "http error 410",
];

/// Fragments of other yt-dlp errors that a retry will not fix.
const PERMANENT: &[&str] = &[
    "Unsupported URL",
    "Requested format is not available",
    "HTTP Error 400",
    "HTTP Error 401",
    "HTTP Error 403",
    "is not a valid URL",
];

/// What `--print-to-file after_move:…` wrote.
#[derive(Debug, serde::Deserialize)]
struct Report {
    filepath: Option<PathBuf>,
    title: Option<String>,
    duration: Option<f64>,
    webpage_url: Option<String>,
    extractor: Option<String>,
}

/// Checks the file yt-dlp reported (ours, within limits, media) and renames it to `dest`.
async fn finish(
    files: &RunFiles,
    dest: &Path,
    params: &DownloadParams,
    fallback_url: &str,
) -> Result<Downloaded, DownloadError> {
    let report = read_report(files).await?;
    let ours = |p: &PathBuf| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(&files.prefix))
    };
    let Some(file) = report.filepath.filter(ours) else {
        return Err(DownloadError::YtdlpFailed {
            status: "0".into(),
            line: "yt-dlp finished without reporting a downloaded file".into(),
            retryable: true,
        });
    };
    if let Some(duration) = report.duration {
        if duration > params.max_duration_s as f64 {
            return Err(DownloadError::TooLong {
                limit_s: params.max_duration_s,
                duration_s: Some(duration),
            });
        }
    }
    let bytes = tokio::fs::metadata(&file)
        .await
        .map_err(|e| DownloadError::io(&file, e))?
        .len();
    if bytes > params.max_bytes {
        return Err(DownloadError::TooLarge {
            limit: params.max_bytes,
            size: Some(bytes),
        });
    }
    if bytes == 0 {
        return Err(DownloadError::Empty);
    }
    let head = read_head(&file).await?;
    let kind = sniff(&head).ok_or_else(|| DownloadError::NotMedia {
        what: describe_non_media(&head),
    })?;
    tokio::fs::rename(&file, dest)
        .await
        .map_err(|e| DownloadError::io(dest, e))?;
    Ok(Downloaded {
        path: dest.to_path_buf(),
        bytes,
        kind,
        final_url: report
            .webpage_url
            .unwrap_or_else(|| fallback_url.to_string()),
        title: report.title,
        duration_s: report.duration,
        via: Via::YtDlp {
            extractor: report.extractor,
        },
    })
}

/// Parses the report: one JSON object per line; the last one is the item downloaded.
async fn read_report(files: &RunFiles) -> Result<Report, DownloadError> {
    let missing = || DownloadError::YtdlpFailed {
        status: "0".into(),
        line: "yt-dlp finished without downloading anything".into(),
        retryable: true,
    };
    let text = match tokio::fs::read_to_string(&files.report).await {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(missing()),
        Err(e) => return Err(DownloadError::io(&files.report, e)),
    };
    let line = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .ok_or_else(missing)?;
    serde_json::from_str(line).map_err(|e| DownloadError::YtdlpFailed {
        status: "0".into(),
        line: format!("unreadable yt-dlp report: {e}"),
        retryable: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn lines(text: &[&str]) -> Vec<String> {
        text.iter().map(|s| s.to_string()).collect()
    }

    fn classify_code(code: i32, stdout: &[&str], stderr: &[&str]) -> Option<&'static str> {
        let status = ExitStatus::from_raw(code << 8);
        classify(
            status,
            &lines(stdout),
            &lines(stderr),
            &DownloadParams::default(),
        )
        .err()
        .map(|e| e.code())
    }

    #[test]
    fn classifies_yt_dlp_output() {
        let bot = "ERROR: [youtube] dQw4w9WgXcQ: Sign in to confirm you\u{2019}re not a bot. \
                   Use --cookies-from-browser or --cookies for the authentication.";
        assert_eq!(
            classify_code(1, &[], &[bot]),
            Some("download.youtube_bot_check")
        );
        assert_eq!(
            classify_code(
                1,
                &[],
                &["ERROR: [youtube] x: Private video. Sign in if you've been granted access"]
            ),
            Some("download.unavailable")
        );
        assert_eq!(
            classify_code(
                0,
                &["[download] T does not pass filter (duration <=? 10), skipping .."],
                &[]
            ),
            Some("download.too_long")
        );
        assert_eq!(
            classify_code(
                0,
                &["[download] File is larger than max-filesize (9 bytes > 1 bytes). Aborting."],
                &[]
            ),
            Some("download.too_large")
        );
        assert_eq!(classify_code(0, &["[info] ok"], &[]), None);
        let err = classify(
            ExitStatus::from_raw(1 << 8),
            &[],
            &lines(&[
                "WARNING: a",
                "ERROR: Unsupported URL: http://x/",
                "trailing noise",
            ]),
            &DownloadParams::default(),
        )
        .unwrap_err();
        assert_eq!(err.code(), "download.ytdlp_failed");
        assert!(err.to_string().contains("Unsupported URL"), "{err}");
        assert!(!err.retryable());
        let err = classify(
            ExitStatus::from_raw(1 << 8),
            &[],
            &lines(&[
                "ERROR: [generic] x: Unable to download webpage: [Errno 111] Connection refused",
            ]),
            &DownloadParams::default(),
        )
        .unwrap_err();
        assert!(err.retryable());
    }

    #[tokio::test]
    async fn tail_keeps_the_last_lines_and_cuts_long_ones() {
        let mut text = String::new();
        for i in 0..100 {
            text.push_str(&format!("line {i}\r\n"));
        }
        text.push_str(&"x".repeat(10_000));
        let kept = tail(Some(text.as_bytes())).await;
        assert_eq!(kept.len(), TAIL_LINES);
        assert_eq!(kept[0], format!("line {}", 100 - TAIL_LINES + 1));
        assert_eq!(kept.last().unwrap().len(), MAX_LINE);
    }

    #[test]
    fn info_json_hosts_are_collected_and_checked() {
        let info = serde_json::json!({
            "url": "https://a.example/x",
            "formats": [
                {"url": "https://b.example:8443/y"},
                {"url": "https://a.example/z", "manifest_url": "http://c.example/m.m3u8"},
            ],
        });
        let hosts = info_json_hosts(&info, Path::new("i.json")).unwrap();
        let hosts: Vec<_> = hosts.into_iter().collect();
        assert_eq!(
            hosts,
            vec![
                ("a.example".to_string(), 443),
                ("b.example".to_string(), 8443),
                ("c.example".to_string(), 80),
            ]
        );
        let bad = serde_json::json!({"formats": [{"url": "file:///etc/passwd"}]});
        let err = info_json_hosts(&bad, Path::new("i.json")).unwrap_err();
        assert_eq!(err.code(), "download.bad_info_json");
        let none = serde_json::json!({"title": "x"});
        assert!(info_json_hosts(&none, Path::new("i.json")).is_err());
    }

    #[test]
    fn run_files_escape_percent() {
        let files = RunFiles::new(Path::new("/tmp/j%1/media"));
        assert_eq!(files.template, "/tmp/j%%1/media.ytdlp.%(ext)s");
        assert_eq!(files.prefix, "media.ytdlp");
        assert_eq!(files.dir, PathBuf::from("/tmp/j%1"));
        assert_eq!(files.report_template(), "/tmp/j%%1/media.ytdlp.report.json");
    }
}
