//! A real SMTP server for tests: aiosmtpd from `<repo>/.venv-test`, storing mail in a Maildir.
//!
//! ```no_run
//! use ytcaption_tests::smtp::SmtpSink;
//! let sink = SmtpSink::start(); // 127.0.0.1 on a free port
//! // ... send mail to 127.0.0.1:sink.port() ...
//! let mails = sink.wait_for(1, std::time::Duration::from_secs(10));
//! assert_eq!(mails[0].subject, "Transcript ready: job-1");
//! ```
//!
//! Each sink is its own process on its own port with its own temporary Maildir, so tests can
//! run in parallel; the process is killed when the sink is dropped (and exits by itself when
//! the test process dies: it watches its stdin). [`SinkOptions`] add STARTTLS or implicit TLS
//! (with a fresh private CA, see [`crate::tls`]) and AUTH with one login.
//!
//! The handler (`smtp_sink.py`, written next to the Maildir at start) also answers recipients
//! `reject…@…` with a permanent 550 and `tempfail…@…` with a transient 451.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use crate::tls::TestCert;

/// The handler module, imported by aiosmtpd through `-c`.
const HANDLER_SOURCE: &str = include_str!("smtp_sink.py");
const HANDLER_MODULE: &str = "ytcaption_smtp_sink";

/// How long a sink may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Attempts at finding a port nobody grabs between our probe and the server's bind.
const PORT_ATTEMPTS: usize = 5;

/// How clients reach the sink.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SinkTls {
    /// Plain SMTP.
    #[default]
    None,
    /// STARTTLS offered and required before MAIL.
    StartTls,
    /// TLS from the first byte (SMTPS).
    Implicit,
}

/// What the sink offers besides plain SMTP.
#[derive(Debug, Clone, Default)]
pub struct SinkOptions {
    pub tls: SinkTls,
    /// `(user, password)`: AUTH accepts exactly this login and MAIL needs it. aiosmtpd offers
    /// AUTH only after STARTTLS, so this requires [`SinkTls::StartTls`].
    pub auth: Option<(String, String)>,
}

/// A running aiosmtpd; killed on drop.
#[derive(Debug)]
pub struct SmtpSink {
    child: Child,
    /// Kept open: the server exits when it closes.
    _stdin: Option<ChildStdin>,
    port: u16,
    dir: tempfile::TempDir,
    cert: Option<TestCert>,
}

impl SmtpSink {
    /// Plain SMTP on 127.0.0.1, a free port.
    pub fn start() -> SmtpSink {
        SmtpSink::start_with(SinkOptions::default())
    }

    pub fn start_with(options: SinkOptions) -> SmtpSink {
        assert!(
            options.auth.is_none() || options.tls == SinkTls::StartTls,
            "SmtpSink: aiosmtpd offers AUTH only after STARTTLS; use SinkTls::StartTls with auth"
        );
        let python = venv_python();
        let dir = tempfile::Builder::new()
            .prefix("ytcaption-smtp-")
            .tempdir()
            .unwrap_or_else(|e| panic!("SmtpSink: temporary directory: {e}"));
        let handler = dir.path().join(format!("{HANDLER_MODULE}.py"));
        std::fs::write(&handler, HANDLER_SOURCE)
            .unwrap_or_else(|e| panic!("SmtpSink: writing {}: {e}", handler.display()));
        let cert = (options.tls != SinkTls::None).then(|| {
            let tls_dir = dir.path().join("tls");
            std::fs::create_dir(&tls_dir)
                .unwrap_or_else(|e| panic!("SmtpSink: {}: {e}", tls_dir.display()));
            TestCert::generate(&tls_dir)
        });
        let mut failures = Vec::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = crate::node::free_port();
            let mut child = spawn(&python, dir.path(), port, &options, cert.as_ref());
            match wait_until_serving(&mut child, port, dir.path()) {
                Ok(()) => {
                    let stdin = child.stdin.take();
                    return SmtpSink {
                        child,
                        _stdin: stdin,
                        port,
                        dir,
                        cert,
                    };
                }
                Err(why) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let lost_race = why.contains("Address already in use");
                    failures.push(format!("port {port}: {why}"));
                    if !lost_race {
                        break;
                    }
                }
            }
        }
        panic!("SmtpSink: aiosmtpd did not start:\n{}", failures.join("\n"))
    }

    /// Plain SMTP on `port` (a sink that comes back where an earlier one was, after an
    /// outage); retries the bind for a few seconds while the old socket lingers.
    pub fn start_on(port: u16) -> SmtpSink {
        let options = SinkOptions::default();
        let python = venv_python();
        let dir = tempfile::Builder::new()
            .prefix("ytcaption-smtp-")
            .tempdir()
            .unwrap_or_else(|e| panic!("SmtpSink: temporary directory: {e}"));
        let handler = dir.path().join(format!("{HANDLER_MODULE}.py"));
        std::fs::write(&handler, HANDLER_SOURCE)
            .unwrap_or_else(|e| panic!("SmtpSink: writing {}: {e}", handler.display()));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let mut child = spawn(&python, dir.path(), port, &options, None);
            match wait_until_serving(&mut child, port, dir.path()) {
                Ok(()) => {
                    let stdin = child.stdin.take();
                    return SmtpSink {
                        child,
                        _stdin: stdin,
                        port,
                        dir,
                        cert: None,
                    };
                }
                Err(why) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    assert!(
                        std::time::Instant::now() < deadline,
                        "SmtpSink: aiosmtpd did not start on port {port}: {why}"
                    );
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }

    /// Kills the server (an outage) and keeps the Maildir: [`Self::messages`] still reads
    /// what arrived before.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The CA that signed the server's certificate (PEM), when TLS is on: what a client must
    /// trust.
    pub fn ca_pem(&self) -> Option<&[u8]> {
        self.cert.as_ref().map(|c| c.ca_pem.as_slice())
    }

    /// The Maildir the messages land in (`new/` holds them).
    pub fn maildir(&self) -> PathBuf {
        self.dir.path().join("maildir")
    }

    /// What aiosmtpd printed so far (errors, tracebacks): for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("aiosmtpd.log")).unwrap_or_default()
    }

    /// Every message received so far, oldest first.
    pub fn messages(&self) -> Vec<ParsedMail> {
        let new = self.maildir().join("new");
        let entries = std::fs::read_dir(&new)
            .unwrap_or_else(|e| panic!("SmtpSink: reading {}: {e}", new.display()));
        let mut files: Vec<PathBuf> = entries
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.is_file())
            .collect();
        files.sort_by_key(|path| maildir_order(path));
        files
            .into_iter()
            .map(|path| {
                let raw = std::fs::read(&path)
                    .unwrap_or_else(|e| panic!("SmtpSink: reading {}: {e}", path.display()));
                let mut mail = ParsedMail::parse(&String::from_utf8_lossy(&raw));
                mail.file = path;
                mail
            })
            .collect()
    }

    /// Waits until at least `n` messages arrived and returns them all; panics (with what did
    /// arrive and the server's log) after `timeout`.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<ParsedMail> {
        let deadline = Instant::now() + timeout;
        loop {
            let messages = self.messages();
            if messages.len() >= n {
                return messages;
            }
            if Instant::now() >= deadline {
                let subjects: Vec<&str> = messages.iter().map(|m| m.subject.as_str()).collect();
                panic!(
                    "SmtpSink: {} of {n} messages after {timeout:?} (subjects {subjects:?}); log:\n{}",
                    messages.len(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Forgets the messages received so far.
    pub fn clear(&self) {
        for mail in self.messages() {
            let _ = std::fs::remove_file(&mail.file);
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `<repo>/.venv-test/bin/python`, or a panic saying how to get it.
fn venv_python() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = repo.join(".venv-test/bin/python");
    let has_aiosmtpd = repo.join(".venv-test/bin/aiosmtpd").is_file();
    assert!(
        python.is_file() && has_aiosmtpd,
        "aiosmtpd is missing from {}: run `make test-env`",
        repo.join(".venv-test").display()
    );
    python
}

fn spawn(
    python: &Path,
    dir: &Path,
    port: u16,
    options: &SinkOptions,
    cert: Option<&TestCert>,
) -> Child {
    let log_path = dir.join("aiosmtpd.log");
    let log = std::fs::File::create(&log_path)
        .unwrap_or_else(|e| panic!("SmtpSink: {}: {e}", log_path.display()));
    let log_too = log
        .try_clone()
        .unwrap_or_else(|e| panic!("SmtpSink: {}: {e}", log_path.display()));
    let mut command = Command::new(python);
    command
        // -d logs "Server is listening on …" once bound: the readiness signal.
        .args(["-m", "aiosmtpd", "-n", "-d", "-l"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-c", &format!("{HANDLER_MODULE}.SinkMailbox")])
        .current_dir(dir)
        .env("PYTHONPATH", dir)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("YTC_SMTP_WATCH_STDIN", "1")
        .stdin(Stdio::piped())
        .stdout(log)
        .stderr(log_too);
    if let Some(cert) = cert {
        let flags = match options.tls {
            SinkTls::Implicit => ["--smtpscert", "--smtpskey"],
            _ => ["--tlscert", "--tlskey"],
        };
        command
            .arg(flags[0])
            .arg(&cert.cert_path)
            .arg(flags[1])
            .arg(&cert.key_path);
    }
    match &options.auth {
        Some((user, password)) => command
            .env("YTC_SMTP_USER", user)
            .env("YTC_SMTP_PASSWORD", password),
        None => command
            .env_remove("YTC_SMTP_USER")
            .env_remove("YTC_SMTP_PASSWORD"),
    };
    // The handler's argument comes last: the Maildir.
    command.arg(dir.join("maildir"));
    command
        .spawn()
        .unwrap_or_else(|e| panic!("SmtpSink: starting {}: {e}", python.display()))
}

/// Waits until this very child has bound `port` (aiosmtpd logs "Server is listening on
/// host:port" at `-d`, after the bind) and accepts connections. Going by the child's own log
/// rather than a connection probe means another process that won the port cannot pass for it.
fn wait_until_serving(child: &mut Child, port: u16, dir: &Path) -> Result<(), String> {
    let log = || std::fs::read_to_string(dir.join("aiosmtpd.log")).unwrap_or_default();
    let listening = format!("Server is listening on 127.0.0.1:{port}");
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited with {status}: {}", log()));
        }
        if log().contains(&listening)
            && TcpStream::connect_timeout(&address, Duration::from_millis(500)).is_ok()
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("not serving after {START_TIMEOUT:?}: {}", log()));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Sort key of a Maildir file name `<secs>.M<usecs>P<pid>Q<count>.<host>`: the names do not
/// sort as strings (microseconds are not zero-padded), but seconds then the per-process
/// counter give arrival order.
fn maildir_order(path: &Path) -> (u64, u64, String) {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let secs = name
        .split('.')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(u64::MAX);
    let counter = name
        .split_once('Q')
        .map(|(_, rest)| {
            rest.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .and_then(|digits| digits.parse().ok())
        .unwrap_or(u64::MAX);
    (secs, counter, name)
}

/// One received message, decoded enough for assertions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedMail {
    /// Envelope recipients (RCPT TO), from the sink's `X-RcptTo`.
    pub to: Vec<String>,
    /// Envelope sender (MAIL FROM), from the sink's `X-MailFrom`.
    pub from: String,
    /// The Subject header, RFC 2047 encoded words decoded.
    pub subject: String,
    /// The body with its Content-Transfer-Encoding undone, `\n` line ends.
    pub body: String,
    /// The Message-ID header as sent, `<…>` included.
    pub message_id: String,
    /// All headers in order, unfolded, values raw.
    pub headers: Vec<(String, String)>,
    /// The whole stored message.
    pub raw: String,
    /// Where the sink stored it.
    pub file: PathBuf,
}

impl ParsedMail {
    /// Parses a stored message (header block, blank line, body).
    pub fn parse(raw: &str) -> ParsedMail {
        let text = raw.replace("\r\n", "\n");
        let (head, body) = text.split_once("\n\n").unwrap_or((text.as_str(), ""));
        let headers = parse_headers(head);
        let mut mail = ParsedMail {
            headers,
            raw: raw.to_owned(),
            ..ParsedMail::default()
        };
        mail.to = mail
            .header("X-RcptTo")
            .map(|v| v.split(',').map(|a| a.trim().to_owned()).collect())
            .unwrap_or_default();
        mail.from = mail.header("X-MailFrom").unwrap_or_default().to_owned();
        mail.subject = decode_encoded_words(mail.header("Subject").unwrap_or_default());
        mail.message_id = mail.header("Message-ID").unwrap_or_default().to_owned();
        let encoding = mail
            .header("Content-Transfer-Encoding")
            .unwrap_or("7bit")
            .to_ascii_lowercase();
        mail.body = match encoding.as_str() {
            "quoted-printable" => {
                String::from_utf8_lossy(&decode_quoted_printable(body)).into_owned()
            }
            "base64" => String::from_utf8_lossy(&decode_base64(body)).into_owned(),
            _ => body.to_owned(),
        }
        .replace("\r\n", "\n");
        mail
    }

    /// The first header called `name` (case-insensitive), unfolded.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Header lines with continuation lines (leading whitespace) joined to the one before.
fn parse_headers(head: &str) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in head.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = headers.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    headers
}

/// Decodes RFC 2047 `=?charset?B|Q?…?=` words (UTF-8 and ASCII charsets); whitespace between
/// two encoded words disappears, as the RFC says.
pub fn decode_encoded_words(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    let mut last_was_word = false;
    while let Some(start) = rest.find("=?") {
        let (before, candidate) = rest.split_at(start);
        let Some((decoded, used)) = decode_one_word(candidate) else {
            out.push_str(before);
            out.push_str("=?");
            rest = &candidate[2..];
            last_was_word = false;
            continue;
        };
        if !(last_was_word && before.trim().is_empty()) {
            out.push_str(before);
        }
        out.push_str(&decoded);
        rest = &candidate[used..];
        last_was_word = true;
    }
    out.push_str(rest);
    out
}

/// One encoded word at the start of `s`: the text and how many bytes it took.
fn decode_one_word(s: &str) -> Option<(String, usize)> {
    let body = s.strip_prefix("=?")?;
    let (charset, after_charset) = body.split_once('?')?;
    let (encoding, after_encoding) = after_charset.split_once('?')?;
    let end = after_encoding.find("?=")?;
    let text = &after_encoding[..end];
    let charset = charset.to_ascii_lowercase();
    if !matches!(charset.as_str(), "utf-8" | "us-ascii") {
        return None;
    }
    let bytes = match encoding {
        "B" | "b" => decode_base64(text),
        "Q" | "q" => decode_quoted_printable(&text.replace('_', " ")),
        _ => return None,
    };
    let used = 2 + charset.len() + 1 + encoding.len() + 1 + end + 2;
    Some((String::from_utf8_lossy(&bytes).into_owned(), used))
}

/// Quoted-printable: `=XX` bytes, `=` at a line end joins lines.
pub fn decode_quoted_printable(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'=' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let next = &bytes[i + 1..];
        if next.starts_with(b"\r\n") {
            i += 3;
        } else if next.starts_with(b"\n") {
            i += 2;
        } else if let Some(byte) = next
            .get(..2)
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            out.push(byte);
            i += 3;
        } else {
            out.push(b'=');
            i += 1;
        }
    }
    out
}

/// Standard base64, whitespace ignored, stops at padding or anything outside the alphabet.
pub fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut buffer = 0u32;
    let mut bits = 0;
    for c in text.bytes().filter(|c| !c.is_ascii_whitespace()) {
        let Some(v) = value(c) else { break };
        buffer = (buffer << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_transfer_encodings() {
        assert_eq!(decode_base64("aGVsbG8gd29y\r\nbGQ="), b"hello world");
        assert_eq!(decode_base64("w6k="), "é".as_bytes());
        assert_eq!(
            decode_quoted_printable("caf=C3=A9 =\nlong=3D line\n"),
            "café long= line\n".as_bytes()
        );
        assert_eq!(decode_quoted_printable("a=\r\nb=ZZ="), b"ab=ZZ=");
    }

    #[test]
    fn decodes_encoded_words() {
        assert_eq!(decode_encoded_words("plain"), "plain");
        assert_eq!(decode_encoded_words("=?utf-8?b?Y2Fmw6k=?="), "café");
        assert_eq!(
            decode_encoded_words("=?UTF-8?Q?caf=C3=A9_ok?= =?utf-8?q?_more?= end"),
            "café ok more end"
        );
        assert_eq!(decode_encoded_words("a =?x?y"), "a =?x?y");
        assert_eq!(decode_encoded_words("=?latin1?q?x?="), "=?latin1?q?x?=");
    }

    #[test]
    fn parses_a_stored_message() {
        let raw = "Subject: Transcript\n ready: j1\nMessage-ID: <j1@ytcaption>\n\
                   Content-Transfer-Encoding: quoted-printable\nX-MailFrom: a@b.c\n\
                   X-RcptTo: x@y.z, w@y.z\n\nJob j1 =\nis done=2E\n";
        let mail = ParsedMail::parse(raw);
        assert_eq!(mail.subject, "Transcript ready: j1");
        assert_eq!(mail.message_id, "<j1@ytcaption>");
        assert_eq!(mail.from, "a@b.c");
        assert_eq!(mail.to, ["x@y.z", "w@y.z"]);
        assert_eq!(mail.body, "Job j1 is done.\n");
        assert_eq!(mail.header("message-id"), Some("<j1@ytcaption>"));
    }

    #[test]
    fn maildir_names_sort_by_arrival() {
        let mut names = [
            "1700000001.M5P1Q1.h",
            "1700000000.M999999P1Q10.h",
            "1700000000.M12P1Q9.h",
        ]
        .map(PathBuf::from);
        names.sort_by_key(|p| maildir_order(p));
        assert_eq!(
            names.map(|p| p.to_string_lossy().into_owned()),
            [
                "1700000000.M12P1Q9.h",
                "1700000000.M999999P1Q10.h",
                "1700000001.M5P1Q1.h"
            ]
        );
    }
}
