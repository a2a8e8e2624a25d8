//! The Downloader against a real HTTP server on 127.0.0.1 ([`MediaServer`]) and the real
//! yt-dlp from `.venv-test`: fixture files, redirects, the address guard, limits, timeouts,
//! non-media answers, and yt-dlp's generic extractor and `--load-info-json`.
//!
//! YouTube itself cannot be reached here; its bot-check refusal is the one thing simulated, by
//! a shell script standing in for yt-dlp.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ytcaption_actors::download::{
    download, download_info_json, DownloadError, DownloadParams, MediaKind, Via,
};
use ytcaption_actors::net::NetGuard;
use ytcaption_tests::media_server::{percent_encode, MediaServer, HUGE_LEN};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixtures() -> PathBuf {
    let dir = repo().join("tests/fixtures/generated");
    assert!(
        dir.join("weather_festival.wav").is_file(),
        "test audio is missing: run `make fixtures` (tests/fixtures/make.sh)"
    );
    dir
}

fn ytdlp() -> PathBuf {
    let path = repo().join(".venv-test/bin/yt-dlp");
    assert!(
        path.is_file(),
        "{} is missing: create the test venv (.venv-test) with yt-dlp",
        path.display()
    );
    path
}

fn server() -> MediaServer {
    MediaServer::start(&fixtures())
}

/// Loopback allowlisted (the server lives there), everything routed directly.
fn local_params() -> DownloadParams {
    DownloadParams {
        guard: NetGuard::new(&["127.0.0.1/32".to_string()]).unwrap(),
        ytdlp_path: ytdlp(),
        ytdlp_hosts: Vec::new(),
        ..DownloadParams::default()
    }
}

/// The same, with 127.0.0.1 links routed to yt-dlp.
fn ytdlp_params() -> DownloadParams {
    DownloadParams {
        ytdlp_hosts: vec!["127.0.0.1".to_string()],
        ..local_params()
    }
}

async fn fails(url: &str, dest: &Path, params: &DownloadParams) -> DownloadError {
    match download(url, dest, params).await {
        Ok(done) => panic!("{url} downloaded: {done:?}"),
        Err(e) => e,
    }
}

/// The names in a directory, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A failed download leaves nothing behind: no file, no `.part`, no yt-dlp leftovers.
fn assert_clean(dir: &Path) {
    assert_eq!(listing(dir), Vec::<String>::new(), "leftovers in {dir:?}");
}

#[tokio::test]
async fn fixture_files_download_byte_for_byte_and_sniff() {
    let server = server();
    let tmp = tempfile::tempdir().unwrap();
    for (name, kind) in [
        ("weather_festival.wav", MediaKind::Wav),
        ("weather_festival.mp3", MediaKind::Mp3),
        ("weather_festival.m4a", MediaKind::Mp4),
        ("weather_festival.opus.webm", MediaKind::Webm),
        ("weather_festival.flac", MediaKind::Flac),
        ("weather_festival.ogg", MediaKind::Ogg),
    ] {
        let dest = tmp.path().join(format!("{name}.media"));
        let url = server.url(&format!("/files/{name}"));
        let done = download(&url, &dest, &local_params()).await.unwrap();
        let original = std::fs::read(fixtures().join(name)).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), original, "{name}");
        assert_eq!(done.bytes, original.len() as u64);
        assert_eq!(done.kind, kind, "{name}");
        assert_eq!(done.path, dest);
        assert_eq!(done.final_url, url);
        assert_eq!(done.via, Via::Http);
    }
    // Only the destinations: no `.part` files.
    assert!(listing(tmp.path()).iter().all(|n| n.ends_with(".media")));
}

#[tokio::test]
async fn downloads_run_concurrently() {
    let server = server();
    let tmp = tempfile::tempdir().unwrap();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let url = server.url("/files/weather_festival.mp3");
        let dest = tmp.path().join(format!("m{i}.mp3"));
        tasks.push(tokio::spawn(async move {
            download(&url, &dest, &local_params()).await
        }));
    }
    for task in tasks {
        let done = task.await.unwrap().unwrap();
        assert_eq!(done.kind, MediaKind::Mp3);
        assert_eq!(done.bytes, 196_484);
    }
    assert_eq!(server.hits("/files/weather_festival.mp3"), 8);
}

#[tokio::test]
async fn five_redirects_are_followed_six_are_refused() {
    let server = server();
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("media");
    let done = download(
        &server.url("/redirect/5/weather_festival.wav"),
        &dest,
        &local_params(),
    )
    .await
    .unwrap();
    assert_eq!(done.kind, MediaKind::Wav);
    assert_eq!(
        done.final_url,
        server.url("/redirect/0/weather_festival.wav")
    );
    assert_eq!(server.hits("/redirect/"), 6);

    let dir = tempfile::tempdir().unwrap();
    let err = fails(
        &server.url("/redirect/6/weather_festival.wav"),
        &dir.path().join("media"),
        &local_params(),
    )
    .await;
    assert_eq!(err.code(), "download.too_many_redirects", "{err}");
    assert!(!err.retryable());
    assert_clean(dir.path());
    // Six more requests were made (hops 6..1); the seventh, the file itself, never was.
    assert_eq!(server.hits("/redirect/"), 12);
    assert_eq!(server.hits("/redirect/0/"), 1);
}

#[tokio::test]
async fn absolute_redirects_work_and_are_checked_on_every_hop() {
    let server = server();
    let tmp = tempfile::tempdir().unwrap();
    let target = server.url("/files/weather_festival.ogg");
    let url = server.url(&format!("/redirect-to?u={}&s=307", percent_encode(&target)));
    let done = download(&url, &tmp.path().join("a"), &local_params())
        .await
        .unwrap();
    assert_eq!(done.final_url, target);
    assert_eq!(done.kind, MediaKind::Ogg);

    for forbidden in [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/media.mp3",
        "http://[::1]:9/media.mp3",
        "http://192.168.1.1:8080/x",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let url = server.url(&format!("/redirect-to?u={}", percent_encode(forbidden)));
        let started = Instant::now();
        let err = fails(&url, &dir.path().join("media"), &local_params()).await;
        // Refused by the guard, not by a failed or timed-out connection attempt.
        assert_eq!(err.code(), "net.forbidden_address", "{forbidden}: {err}");
        assert!(!err.retryable());
        assert!(started.elapsed() < Duration::from_secs(3), "{forbidden}");
        assert_clean(dir.path());
    }
}

#[tokio::test]
async fn loopback_without_allowlist_is_refused_before_connecting() {
    let server = server();
    let tmp = tempfile::tempdir().unwrap();
    let params = DownloadParams {
        guard: NetGuard::default(),
        ytdlp_hosts: Vec::new(),
        ..DownloadParams::default()
    };
    let err = fails(
        &server.url("/files/weather_festival.wav"),
        &tmp.path().join("media"),
        &params,
    )
    .await;
    assert_eq!(err.code(), "net.forbidden_address", "{err}");
    assert!(err.to_string().contains("127.0.0.1"), "{err}");
    assert!(server.requests().is_empty(), "the server was contacted");
    assert_clean(tmp.path());
}

#[tokio::test]
async fn error_statuses_are_specific() {
    let server = server();
    let tmp = tempfile::tempdir().unwrap();
    for (path, status, retryable) in [
        ("/files/no-such-file.mp3", 404, false),
        ("/status/410", 410, false),
        ("/status/403", 403, false),
        ("/status/429", 429, true),
        ("/status/500", 500, true),
        ("/status/503", 503, true),
    ] {
        let err = fails(
            &server.url(path),
            &tmp.path().join("media"),
            &local_params(),
        )
        .await;
        assert_eq!(err.code(), "download.http_status", "{path}");
        assert!(
            matches!(err, DownloadError::HttpStatus { status: s, .. } if s == status),
            "{path}: {err}"
        );
        assert_eq!(err.retryable(), retryable, "{path}");
        assert!(err.to_string().contains(&status.to_string()));
    }
    assert_clean(tmp.path());
}

#[tokio::test]
async fn size_limits_hold_with_and_without_content_length() {
    let server = server();
    let tmp = tempfile::tempdir().unwrap();
    let small = DownloadParams {
        max_bytes: 10_000,
        ..local_params()
    };
    // Known length: refused from the header.
    let err = fails(
        &server.url("/files/weather_festival.wav"),
        &tmp.path().join("media"),
        &small,
    )
    .await;
    assert_eq!(err.code(), "download.too_large", "{err}");
    assert!(matches!(
        err,
        DownloadError::TooLarge {
            size: Some(391_084),
            ..
        }
    ));
    assert!(!err.retryable());

    // 10 GB announced: refused at once under the default 2 GiB limit.
    let started = Instant::now();
    let err = fails(
        &server.url("/huge"),
        &tmp.path().join("media"),
        &local_params(),
    )
    .await;
    assert!(
        matches!(err, DownloadError::TooLarge { size: Some(s), .. } if s == HUGE_LEN),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    // No length, no end: stopped while streaming, past the limit.
    let limited = DownloadParams {
        max_bytes: 1_000_000,
        ..local_params()
    };
    let err = fails(&server.url("/endless"), &tmp.path().join("media"), &limited).await;
    assert!(
        matches!(err, DownloadError::TooLarge { size: None, .. }),
        "{err}"
    );
    assert_clean(tmp.path());
}

#[tokio::test]
async fn a_stalled_body_times_out() {
    let server = server();
    let tmp = tempfile::tempdir().unwrap();
    let mut params = local_params();
    params.net.read_timeout = Duration::from_millis(800);
    let started = Instant::now();
    let err = fails(&server.url("/slow"), &tmp.path().join("media"), &params).await;
    assert_eq!(err.code(), "net.timeout", "{err}");
    assert!(err.retryable());
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_clean(tmp.path());

    // The overall limit cuts a transfer that keeps trickling.
    let mut params = local_params();
    params.max_bytes = u64::MAX;
    params.net.total_timeout = Duration::from_millis(1500);
    let started = Instant::now();
    let err = fails(&server.url("/endless"), &tmp.path().join("media"), &params).await;
    assert_eq!(err.code(), "net.timeout", "{err}");
    assert!(err.to_string().contains("overall"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_clean(tmp.path());
}

#[tokio::test]
async fn pages_are_not_media_whatever_the_content_type() {
    let server = server();
    let tmp = tempfile::tempdir().unwrap();
    for path in ["/html", "/lie/song.mp3"] {
        let err = fails(
            &server.url(path),
            &tmp.path().join("media"),
            &local_params(),
        )
        .await;
        assert_eq!(err.code(), "download.not_media", "{path}: {err}");
        assert!(!err.retryable());
        assert!(err.to_string().contains("HTML"), "{err}");
    }
    let err = fails(
        &server.url("/files/weather_festival.txt"),
        &tmp.path().join("media"),
        &local_params(),
    )
    .await;
    assert_eq!(err.code(), "download.not_media");
    let err = fails(
        &server.url("/empty"),
        &tmp.path().join("media"),
        &local_params(),
    )
    .await;
    assert_eq!(err.code(), "download.empty", "{err}");
    assert!(!err.retryable());
    assert_clean(tmp.path());
}

#[tokio::test]
async fn bad_links_are_refused_without_a_request() {
    let server = server();
    let tmp = tempfile::tempdir().unwrap();
    let with_credentials = format!("http://user:secret@{}/files/a.wav", server.addr());
    for url in [
        with_credentials.as_str(),
        "ftp://example.com/a.mp3",
        "file:///etc/passwd",
        "no scheme",
    ] {
        let err = fails(url, &tmp.path().join("media"), &local_params()).await;
        assert_eq!(err.code(), "download.bad_url", "{url}: {err}");
        assert!(!err.retryable());
    }
    assert!(server.requests().is_empty());
}

#[test]
fn media_server_keeps_connections_alive_and_records_bodies() {
    use std::io::{Read, Write};
    let server = server();
    let mut conn = std::net::TcpStream::connect(server.addr()).unwrap();
    conn.write_all(
        b"POST /sink/hook HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
          POST /sink/hook HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
          3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n\
          GET /status/404 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert_eq!(answer.matches("HTTP/1.1 200 OK").count(), 2, "{answer}");
    assert!(answer.contains("HTTP/1.1 404 Not Found"), "{answer}");
    let requests = server.requests();
    assert_eq!(requests.len(), 3);
    assert_eq!(requests[0].body, b"hello");
    assert_eq!(requests[1].body, b"abcde");
    assert_eq!(requests[1].header("transfer-encoding"), Some("chunked"));
}

// ---- yt-dlp (the real one, offline) ----

#[tokio::test]
async fn ytdlp_generic_extractor_downloads_served_media() {
    let server = server();
    let tmp = tempfile::tempdir().unwrap();
    for (name, kind) in [
        ("weather_festival.mp4", MediaKind::Mp4),
        ("weather_festival.opus.webm", MediaKind::Webm),
    ] {
        let dest = tmp.path().join(format!("{name}.media"));
        let url = server.url(&format!("/files/{name}"));
        let done = download(&url, &dest, &ytdlp_params()).await.unwrap();
        assert_eq!(
            done.via,
            Via::YtDlp {
                extractor: Some("generic".into())
            }
        );
        assert_eq!(done.kind, kind);
        let original = std::fs::read(fixtures().join(name)).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), original, "{name}");
        assert_eq!(done.bytes, original.len() as u64);
        assert_eq!(done.final_url, url);
        assert!(done.title.is_some());
    }
    // Only the two destinations: no report, no `.part`, no yt-dlp temporary names.
    assert_eq!(listing(tmp.path()).len(), 2, "{:?}", listing(tmp.path()));
}

#[tokio::test]
async fn ytdlp_failures_are_classified() {
    let server = server();
    let tmp = tempfile::tempdir().unwrap();
    let err = fails(
        &server.url("/files/no-such-file.mp4"),
        &tmp.path().join("media"),
        &ytdlp_params(),
    )
    .await;
    assert_eq!(err.code(), "download.unavailable", "{err}");
    assert!(!err.retryable());

    let err = fails(
        &server.url("/html"),
        &tmp.path().join("media"),
        &ytdlp_params(),
    )
    .await;
    assert_eq!(err.code(), "download.ytdlp_failed", "{err}");
    assert!(err.to_string().contains("Unsupported URL"), "{err}");
    assert!(!err.retryable());

    let small = DownloadParams {
        max_bytes: 1000,
        ..ytdlp_params()
    };
    let err = fails(
        &server.url("/files/weather_festival.mp4"),
        &tmp.path().join("media"),
        &small,
    )
    .await;
    assert_eq!(err.code(), "download.too_large", "{err}");

    let impatient = DownloadParams {
        ytdlp_timeout: Duration::from_secs(3),
        ..ytdlp_params()
    };
    let started = Instant::now();
    let err = fails(&server.url("/slow"), &tmp.path().join("media"), &impatient).await;
    assert_eq!(err.code(), "download.timeout", "{err}");
    assert!(err.retryable());
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_clean(tmp.path());
}

#[tokio::test]
async fn ytdlp_links_pass_the_guard_first() {
    let server = server();
    let tmp = tempfile::tempdir().unwrap();
    let params = DownloadParams {
        guard: NetGuard::default(),
        ytdlp_path: PathBuf::from("/nonexistent/yt-dlp"),
        ..ytdlp_params()
    };
    let err = fails(
        &server.url("/files/weather_festival.mp4"),
        &tmp.path().join("media"),
        &params,
    )
    .await;
    // The guard answered; yt-dlp (here missing) was never started.
    assert_eq!(err.code(), "net.forbidden_address", "{err}");
    assert!(server.requests().is_empty());
}

/// A hand-made YouTube info JSON whose two audio formats live on the media server.
fn youtube_info_json(server: &MediaServer, dir: &Path, duration: f64) -> PathBuf {
    let info = serde_json::json!({
        "id": "dQw4w9WgXcQ",
        "title": "Weather festival",
        "duration": duration,
        "extractor": "youtube",
        "extractor_key": "Youtube",
        "webpage_url": "https://www.youtube.com/watch?v=dQw4w9WgXcQ",
        "formats": [
            {
                "format_id": "140", "ext": "m4a", "acodec": "mp4a.40.2", "vcodec": "none",
                "abr": 129.5, "protocol": "https",
                "url": server.url("/files/weather_festival.m4a"),
            },
            {
                "format_id": "251", "ext": "webm", "acodec": "opus", "vcodec": "none",
                "abr": 135.0, "protocol": "https",
                "url": server.url("/files/weather_festival.opus.webm"),
            },
        ],
    });
    let path = dir.join("info.json");
    std::fs::write(&path, serde_json::to_vec(&info).unwrap()).unwrap();
    path
}

#[tokio::test]
async fn info_json_downloads_the_chosen_youtube_format() {
    let server = server();
    let json_dir = tempfile::tempdir().unwrap();
    let info = youtube_info_json(&server, json_dir.path(), 12.0);
    let tmp = tempfile::tempdir().unwrap();

    let dest = tmp.path().join("m4a");
    let done = download_info_json(&info, "140", &dest, &local_params())
        .await
        .unwrap();
    assert_eq!(done.kind, MediaKind::Mp4);
    assert_eq!(done.title.as_deref(), Some("Weather festival"));
    assert_eq!(done.duration_s, Some(12.0));
    assert_eq!(
        done.final_url,
        "https://www.youtube.com/watch?v=dQw4w9WgXcQ"
    );
    assert_eq!(
        done.via,
        Via::YtDlp {
            extractor: Some("youtube".into())
        }
    );
    assert!(done.bytes > 100_000);
    assert!(server.hits("/files/weather_festival.m4a") >= 1);
    assert_eq!(server.hits("/files/weather_festival.opus.webm"), 0);

    let done = download_info_json(&info, "251", &tmp.path().join("webm"), &local_params())
        .await
        .unwrap();
    assert_eq!(done.kind, MediaKind::Webm);
    assert_eq!(listing(tmp.path()), vec!["m4a", "webm"]);
}

#[tokio::test]
async fn info_json_limits_and_guard() {
    let server = server();
    let json_dir = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let info = youtube_info_json(&server, json_dir.path(), 7.5 * 3600.0);
    let err = download_info_json(&info, "140", &tmp.path().join("m"), &local_params())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "download.too_long", "{err}");
    assert!(!err.retryable());

    let info = youtube_info_json(&server, json_dir.path(), 12.0);
    let small = DownloadParams {
        max_bytes: 50_000,
        ..local_params()
    };
    let err = download_info_json(&info, "140", &tmp.path().join("m"), &small)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "download.too_large", "{err}");

    let unguarded = DownloadParams {
        guard: NetGuard::default(),
        ..local_params()
    };
    let err = download_info_json(&info, "140", &tmp.path().join("m"), &unguarded)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "net.forbidden_address", "{err}");

    std::fs::write(json_dir.path().join("bad.json"), b"{not json").unwrap();
    let err = download_info_json(
        &json_dir.path().join("bad.json"),
        "140",
        &tmp.path().join("m"),
        &local_params(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), "download.bad_info_json", "{err}");
    assert_clean(tmp.path());
}

#[tokio::test]
async fn missing_ytdlp_names_the_fix() {
    let server = server();
    let tmp = tempfile::tempdir().unwrap();
    let params = DownloadParams {
        ytdlp_path: tmp.path().join("no-yt-dlp-here"),
        ..ytdlp_params()
    };
    let err = fails(
        &server.url("/files/weather_festival.mp4"),
        &tmp.path().join("media"),
        &params,
    )
    .await;
    assert_eq!(err.code(), "download.ytdlp_missing", "{err}");
    assert!(!err.retryable());
    let message = err.to_string();
    assert!(message.contains("pip install yt-dlp"), "{message}");
    assert!(message.contains("ytdlp_path"), "{message}");
}

/// The one stand-in: YouTube's bot check, which cannot be provoked offline. The script also
/// records its arguments so the cookies option can be checked.
#[tokio::test]
async fn youtube_bot_check_suggests_cookies() {
    use std::os::unix::fs::PermissionsExt;
    let server = server();
    let tools = tempfile::tempdir().unwrap();
    let args_file = tools.path().join("args.txt");
    let script = tools.path().join("yt-dlp");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             printf '%s\\n' \"$@\" > '{}'\n\
             echo '[youtube] Extracting URL: https://www.youtube.com/watch?v=dQw4w9WgXcQ'\n\
             echo \"ERROR: [youtube] dQw4w9WgXcQ: Sign in to confirm you\u{2019}re not a bot. \
             Use --cookies-from-browser or --cookies for the authentication. See  \
             https://github.com/yt-dlp/yt-dlp/wiki/FAQ#how-do-i-pass-cookies-to-yt-dlp  for how \
             to manually pass cookies.\" >&2\n\
             exit 1\n",
            args_file.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cookies = tools.path().join("cookies.txt");
    std::fs::write(&cookies, "# Netscape HTTP Cookie File\n").unwrap();
    let params = DownloadParams {
        ytdlp_path: script,
        cookies_file: Some(cookies.clone()),
        ..ytdlp_params()
    };
    let tmp = tempfile::tempdir().unwrap();
    let err = fails(
        &server.url("/watch?v=dQw4w9WgXcQ"),
        &tmp.path().join("media"),
        &params,
    )
    .await;
    assert_eq!(err.code(), "download.youtube_bot_check", "{err}");
    assert!(!err.retryable());
    assert!(err.to_string().contains("cookies"), "{err}");
    let args = std::fs::read_to_string(&args_file).unwrap();
    let args: Vec<&str> = args.lines().collect();
    assert!(
        args.contains(&format!("--cookies={}", cookies.display()).as_str()),
        "{args:?}"
    );
    for flag in ["--no-config", "--no-playlist", "--format=bestaudio/best"] {
        assert!(args.contains(&flag), "{flag} missing from {args:?}");
    }
    assert!(args.contains(&"--match-filters=!is_live & duration <=? 21600"));
    assert!(args.contains(&format!("--max-filesize={}", 2u64 << 30).as_str()));
    assert_eq!(
        args.last(),
        Some(&server.url("/watch?v=dQw4w9WgXcQ").as_str())
    );
    assert_clean(tmp.path());
}
