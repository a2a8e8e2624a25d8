//! A real HTTP/1.1 server on 127.0.0.1 for end-to-end tests: media files, redirects, error
//! statuses and misbehaving responses, plus a recorder of every request it receives (for
//! webhook receivers).
//!
//! Plain std threads, one per connection, so it runs beside any async runtime. Keep-alive and
//! `Connection: close` are honoured; request bodies with `Content-Length` or chunked encoding
//! are read and recorded. Dropping the server stops it: the listener closes and open
//! connections end within a fraction of a second.
//!
//! Routes (GET and HEAD; any method is recorded):
//! - `/files/<name>`: a file from the served directory, with its `Content-Length`;
//! - `/redirect/<n>/<name>`: `n` relative redirects, then the file itself;
//! - `/redirect-to?u=<url-encoded URL>[&s=<status>]`: one redirect to any URL (302 default);
//! - `/status/<code>`: that status with a short text body;
//! - `/html`: a web page; `/lie/<name>`: a web page labelled `audio/mpeg`;
//! - `/huge`: `Content-Length` of 10 GB, then a WAV header and zeros while the client reads;
//! - `/endless`: chunked WAV that never ends; `/slow`: headers and a WAV header, then silence;
//! - `/empty`: `200` with an empty body; `/sink/<anything>`: `200 ok` (a webhook receiver).
//!
//! [`MediaServer::start_with`] adds a handler consulted before these routes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often blocked reads wake up to check for shutdown.
const POLL: Duration = Duration::from_millis(100);
/// An idle keep-alive connection is closed after this long.
const IDLE: Duration = Duration::from_secs(30);
/// `/slow` stalls this long at most.
const STALL: Duration = Duration::from_secs(120);
/// Largest request head and body accepted.
const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 16 * 1024 * 1024;
/// The length `/huge` announces: 10 GB.
pub const HUGE_LEN: u64 = 10_000_000_000;

/// A request as received.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    /// The request target: path and query.
    pub target: String,
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub peer: SocketAddr,
}

impl RecordedRequest {
    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }

    /// A decoded query parameter.
    pub fn query(&self, key: &str) -> Option<String> {
        let query = self.target.split_once('?')?.1;
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k) == key).then(|| percent_decode(v))
        })
    }
}

/// A response a custom handler returns.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status,
            headers: vec![("Content-Type".into(), content_type.into())],
            body: body.into(),
        }
    }

    pub fn text(status: u16, body: &str) -> Reply {
        Reply::new(status, "text/plain; charset=utf-8", body)
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// A custom route: `Some` answers the request, `None` falls through to the built-in routes.
pub type Handler = dyn Fn(&RecordedRequest) -> Option<Reply> + Send + Sync;

struct Shared {
    dir: PathBuf,
    stop: AtomicBool,
    requests: Mutex<Vec<RecordedRequest>>,
    handler: Option<Box<Handler>>,
}

/// The running server; dropping it stops it.
pub struct MediaServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for MediaServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaServer")
            .field("addr", &self.addr)
            .field("dir", &self.shared.dir)
            .finish()
    }
}

impl MediaServer {
    /// Starts serving `dir` on a random port of 127.0.0.1.
    pub fn start(dir: &Path) -> MediaServer {
        Self::spawn(dir, None)
    }

    /// Like [`MediaServer::start`], with `handler` consulted before the built-in routes.
    pub fn start_with(
        dir: &Path,
        handler: impl Fn(&RecordedRequest) -> Option<Reply> + Send + Sync + 'static,
    ) -> MediaServer {
        Self::spawn(dir, Some(Box::new(handler)))
    }

    fn spawn(dir: &Path, handler: Option<Box<Handler>>) -> MediaServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            stop: AtomicBool::new(false),
            requests: Mutex::new(Vec::new()),
            handler,
        });
        let accept_shared = shared.clone();
        let accept = std::thread::Builder::new()
            .name("media-server-accept".into())
            .spawn(move || accept_loop(listener, accept_shared))
            .unwrap();
        MediaServer {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:<port>` + `path` (a leading `/` is added if missing).
    pub fn url(&self, path: &str) -> String {
        let slash = if path.starts_with('/') { "" } else { "/" };
        format!("http://{}{slash}{path}", self.addr)
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// How many requests had a path starting with `prefix`.
    pub fn hits(&self, prefix: &str) -> usize {
        self.shared
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path().starts_with(prefix))
            .count()
    }
}

impl Drop for MediaServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else { continue };
        let shared = shared.clone();
        let _ = std::thread::Builder::new()
            .name("media-server-conn".into())
            .spawn(move || {
                let _ = serve_connection(stream, &shared);
            });
    }
}

/// A connection with its read buffer; reads poll so that shutdown is noticed.
struct Conn<'a> {
    stream: TcpStream,
    buf: Vec<u8>,
    shared: &'a Shared,
}

impl Conn<'_> {
    /// Reads more bytes into the buffer; `Ok(false)` at end of stream, stop or idle timeout.
    fn fill(&mut self) -> io::Result<bool> {
        let started = Instant::now();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if self.shared.stop.load(Ordering::SeqCst) || started.elapsed() > IDLE {
                return Ok(false);
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(true);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Takes `n` bytes from the buffer, reading more as needed.
    fn take(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill()? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// Takes one CRLF-terminated line (without the CRLF).
    fn line(&mut self) -> io::Result<String> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                let line = self.take(i + 2)?;
                return Ok(String::from_utf8_lossy(&line[..i]).into_owned());
            }
            if self.buf.len() > MAX_HEAD || !self.fill()? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// The next request, or `None` when the client is done.
    fn request(&mut self) -> io::Result<Option<RecordedRequest>> {
        let head = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break self.take(i + 4)?;
            }
            if self.buf.len() > MAX_HEAD {
                return Err(io::ErrorKind::InvalidData.into());
            }
            if !self.fill()? {
                return Ok(None);
            }
        };
        let head = String::from_utf8_lossy(&head).into_owned();
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap_or_default().split_whitespace();
        let method = first.next().unwrap_or_default().to_string();
        let target = first.next().unwrap_or("/").to_string();
        let version = first.next().unwrap_or("HTTP/1.1").to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            .collect();
        let mut request = RecordedRequest {
            method,
            target,
            version,
            headers,
            body: Vec::new(),
            peer: self.stream.peer_addr()?,
        };
        request.body = self.body(&request)?;
        Ok(Some(request))
    }

    fn body(&mut self, request: &RecordedRequest) -> io::Result<Vec<u8>> {
        let chunked = request
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        if !chunked {
            let length: usize = request
                .header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if length > MAX_BODY {
                return Err(io::ErrorKind::InvalidData.into());
            }
            return self.take(length);
        }
        let mut body = Vec::new();
        loop {
            let size_line = self.line()?;
            let size_hex = size_line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_hex, 16)
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
            if size == 0 {
                // Trailers, up to the empty line.
                while !self.line()?.is_empty() {}
                return Ok(body);
            }
            if body.len() + size > MAX_BODY {
                return Err(io::ErrorKind::InvalidData.into());
            }
            body.extend(self.take(size)?);
            self.take(2)?;
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn serve_connection(stream: TcpStream, shared: &Shared) -> io::Result<()> {
    stream.set_read_timeout(Some(POLL))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let _ = stream.set_nodelay(true);
    let mut conn = Conn {
        stream,
        buf: Vec::new(),
        shared,
    };
    while let Some(request) = conn.request()? {
        shared.requests.lock().unwrap().push(request.clone());
        let keep_alive = wants_keep_alive(&request);
        let reusable = respond(&mut conn.stream, &request, shared, keep_alive)?;
        if !(keep_alive && reusable) {
            break;
        }
    }
    let _ = conn.stream.shutdown(Shutdown::Both);
    Ok(())
}

/// HTTP/1.1 keeps the connection unless told to close; HTTP/1.0 only when asked.
fn wants_keep_alive(request: &RecordedRequest) -> bool {
    let connection = request
        .header("connection")
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    if request.version == "HTTP/1.0" {
        connection.contains("keep-alive")
    } else {
        !connection.contains("close")
    }
}

/// Answers one request. Returns whether the connection can carry another one.
fn respond(
    out: &mut TcpStream,
    request: &RecordedRequest,
    shared: &Shared,
    keep_alive: bool,
) -> io::Result<bool> {
    let head_only = request.method.eq_ignore_ascii_case("HEAD");
    if let Some(reply) = shared.handler.as_ref().and_then(|h| h(request)) {
        send(out, &reply, head_only, keep_alive)?;
        return Ok(true);
    }
    let path = request.path().to_string();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["files", name] => serve_file(out, shared, name, head_only, keep_alive),
        ["redirect", n, name] => match n.parse::<u32>() {
            Ok(0) => serve_file(out, shared, name, head_only, keep_alive),
            Ok(n) => {
                let location = format!("/redirect/{}/{name}", n - 1);
                send(out, &redirect(302, &location), head_only, keep_alive)?;
                Ok(true)
            }
            Err(_) => simple(out, 400, "bad hop count", head_only, keep_alive),
        },
        ["redirect-to"] => match request.query("u") {
            Some(location) => {
                let status = request
                    .query("s")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(302);
                send(out, &redirect(status, &location), head_only, keep_alive)?;
                Ok(true)
            }
            None => simple(out, 400, "missing u", head_only, keep_alive),
        },
        ["status", code] => match code.parse::<u16>() {
            Ok(code) if (200..600).contains(&code) => simple(
                out,
                code,
                &format!("status {code}\n"),
                head_only,
                keep_alive,
            ),
            _ => simple(out, 400, "bad status", head_only, keep_alive),
        },
        ["html"] => {
            send(
                out,
                &Reply::new(200, "text/html; charset=utf-8", WEB_PAGE),
                head_only,
                keep_alive,
            )?;
            Ok(true)
        }
        ["lie", _] => {
            send(
                out,
                &Reply::new(200, "audio/mpeg", WEB_PAGE),
                head_only,
                keep_alive,
            )?;
            Ok(true)
        }
        ["empty"] => {
            send(
                out,
                &Reply::new(200, "audio/mpeg", Vec::new()),
                head_only,
                keep_alive,
            )?;
            Ok(true)
        }
        ["sink", ..] => simple(out, 200, "ok", head_only, keep_alive),
        ["huge"] => stream_huge(out, shared, head_only),
        ["endless"] => stream_endless(out, shared, head_only),
        ["slow"] => stall(out, shared),
        _ => simple(out, 404, "not found\n", head_only, keep_alive),
    }
}

const WEB_PAGE: &str = "<!DOCTYPE html>\n<html><head><title>Not audio</title></head>\
    <body><h1>A web page</h1><p>This is a page about audio, not audio.</p></body></html>\n";

fn redirect(status: u16, location: &str) -> Reply {
    Reply::text(status, "redirecting\n").header("Location", location)
}

fn simple(
    out: &mut TcpStream,
    status: u16,
    body: &str,
    head_only: bool,
    keep_alive: bool,
) -> io::Result<bool> {
    send(out, &Reply::text(status, body), head_only, keep_alive)?;
    Ok(true)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        410 => "Gone",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Writes a status line and headers; `Content-Length` is the caller's business.
fn write_head(
    out: &mut TcpStream,
    status: u16,
    headers: &[(String, String)],
    keep_alive: bool,
) -> io::Result<()> {
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !keep_alive {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())
}

fn send(out: &mut TcpStream, reply: &Reply, head_only: bool, keep_alive: bool) -> io::Result<()> {
    let mut headers = reply.headers.clone();
    if !headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("content-length"))
    {
        headers.push(("Content-Length".into(), reply.body.len().to_string()));
    }
    write_head(out, reply.status, &headers, keep_alive)?;
    if !head_only {
        out.write_all(&reply.body)?;
    }
    out.flush()
}

fn content_type(name: &str) -> &'static str {
    let lower = name.to_ascii_lowercase();
    let ext = lower.rsplit('.').next().unwrap_or_default();
    match ext {
        "wav" => "audio/wav",
        "mp3" => "audio/mpeg",
        "m4a" => "audio/mp4",
        "mp4" => "video/mp4",
        "webm" if lower.contains(".opus.") => "audio/webm",
        "webm" => "video/webm",
        "flac" => "audio/flac",
        "ogg" | "opus" => "audio/ogg",
        "json" => "application/json",
        "html" => "text/html; charset=utf-8",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// Serves a file of the served directory; names with path separators are refused.
fn serve_file(
    out: &mut TcpStream,
    shared: &Shared,
    name: &str,
    head_only: bool,
    keep_alive: bool,
) -> io::Result<bool> {
    let name = percent_decode(name);
    if name.is_empty() || name.contains('/') || name.contains('\\') || name.starts_with('.') {
        return simple(out, 400, "bad file name\n", head_only, keep_alive);
    }
    let path = shared.dir.join(&name);
    let Ok(mut file) = File::open(&path) else {
        return simple(out, 404, "no such file\n", head_only, keep_alive);
    };
    let length = file.metadata()?.len();
    let headers = vec![
        ("Content-Type".to_string(), content_type(&name).to_string()),
        ("Content-Length".to_string(), length.to_string()),
    ];
    write_head(out, 200, &headers, keep_alive)?;
    if !head_only {
        io::copy(&mut file, out)?;
    }
    out.flush()?;
    Ok(true)
}

/// A 44-byte WAV header for 16 kHz mono 16-bit PCM of `data_len` bytes.
pub fn wav_header(data_len: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(44);
    h.extend_from_slice(b"RIFF");
    h.extend_from_slice(&data_len.saturating_add(36).to_le_bytes());
    h.extend_from_slice(b"WAVEfmt ");
    h.extend_from_slice(&16u32.to_le_bytes());
    h.extend_from_slice(&1u16.to_le_bytes()); // PCM
    h.extend_from_slice(&1u16.to_le_bytes()); // mono
    h.extend_from_slice(&16_000u32.to_le_bytes());
    h.extend_from_slice(&32_000u32.to_le_bytes()); // byte rate
    h.extend_from_slice(&2u16.to_le_bytes()); // block align
    h.extend_from_slice(&16u16.to_le_bytes());
    h.extend_from_slice(b"data");
    h.extend_from_slice(&data_len.to_le_bytes());
    h
}

/// Announces 10 GB, then writes a WAV header and zeros for as long as the client reads.
fn stream_huge(out: &mut TcpStream, shared: &Shared, head_only: bool) -> io::Result<bool> {
    let headers = vec![
        ("Content-Type".to_string(), "audio/wav".to_string()),
        ("Content-Length".to_string(), HUGE_LEN.to_string()),
    ];
    write_head(out, 200, &headers, false)?;
    if head_only {
        return Ok(false);
    }
    out.write_all(&wav_header(u32::MAX - 36))?;
    let zeros = vec![0u8; 64 * 1024];
    let mut sent = 44u64;
    while !shared.stop.load(Ordering::SeqCst) && sent < HUGE_LEN {
        out.write_all(&zeros)?;
        sent += zeros.len() as u64;
    }
    Ok(false)
}

/// A chunked WAV stream that never ends (until the client leaves or the server stops).
fn stream_endless(out: &mut TcpStream, shared: &Shared, head_only: bool) -> io::Result<bool> {
    let headers = vec![
        ("Content-Type".to_string(), "audio/wav".to_string()),
        ("Transfer-Encoding".to_string(), "chunked".to_string()),
    ];
    write_head(out, 200, &headers, false)?;
    if head_only {
        return Ok(false);
    }
    let mut chunk = wav_header(u32::MAX - 36);
    chunk.resize(64 * 1024, 0);
    while !shared.stop.load(Ordering::SeqCst) {
        write!(out, "{:x}\r\n", chunk.len())?;
        out.write_all(&chunk)?;
        out.write_all(b"\r\n")?;
        chunk.iter_mut().for_each(|b| *b = 0);
    }
    Ok(false)
}

/// Sends headers and the start of a WAV file, then nothing.
fn stall(out: &mut TcpStream, shared: &Shared) -> io::Result<bool> {
    let headers = vec![
        ("Content-Type".to_string(), "audio/wav".to_string()),
        ("Content-Length".to_string(), "1000000".to_string()),
    ];
    write_head(out, 200, &headers, false)?;
    out.write_all(&wav_header(1_000_000 - 44))?;
    out.flush()?;
    let started = Instant::now();
    while !shared.stop.load(Ordering::SeqCst) && started.elapsed() < STALL {
        std::thread::sleep(POLL);
    }
    Ok(false)
}

/// Decodes `%XX` escapes and `+` (as a space), leaving malformed escapes as they are.
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Encodes everything but unreserved characters, for building `/redirect-to?u=` links.
pub fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
