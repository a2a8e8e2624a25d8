//! Email notifications over SMTP: the [`Mailer`] (one per process, pooled connections) and the
//! plain-text message telling a client their job finished ([`job_email`]).
//!
//! Errors say whether trying again can help: a malformed address or a permanent 5xx refusal
//! will fail the same way forever, while a 4xx reply, a refused connection or a timeout is the
//! mail server's passing trouble. Each message carries a Message-ID derived from the job, so a
//! resend after an ambiguous failure (the server accepted but the reply was lost) is
//! recognisable as the same message by the recipient's mail system.

use std::fmt;
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use sha2::{Digest, Sha256};

use super::webhook::{JobOutcome, WebhookBody, WebhookEvent};

/// How the connection to the SMTP server is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SmtpSecurity {
    /// Plain text: only for a relay on the same host or a trusted network.
    #[default]
    None,
    /// Plain connection upgraded with STARTTLS, which is required: a server that does not offer
    /// it gets nothing (no downgrade). Usually port 587.
    StartTls,
    /// TLS from the first byte (SMTPS). Usually port 465.
    Tls,
}

/// Where and how to send mail.
#[derive(Clone)]
pub struct SmtpParams {
    pub host: String,
    pub port: u16,
    pub security: SmtpSecurity,
    /// Both or neither of `username` and `password`; only over TLS.
    pub username: Option<String>,
    pub password: Option<String>,
    /// The sender, `addr@example.com` or `Name <addr@example.com>`.
    pub from: String,
    /// Limit for connecting and for each SMTP command.
    pub timeout: Duration,
    /// Limit for one whole [`Mailer::send`], connection included.
    pub send_timeout: Duration,
    /// PEM certificates trusted besides the public roots, for a relay with a private CA.
    pub extra_root_pem: Option<Vec<u8>>,
    /// Most connections kept open to the server.
    pub pool_size: u32,
    /// Largest subject plus body accepted by [`Mailer::send`], bytes.
    pub max_message_bytes: usize,
}

impl Default for SmtpParams {
    fn default() -> Self {
        SmtpParams {
            host: "localhost".to_owned(),
            port: 25,
            security: SmtpSecurity::None,
            username: None,
            password: None,
            from: "ytcaption <ytcaption@localhost>".to_owned(),
            timeout: Duration::from_secs(30),
            send_timeout: Duration::from_secs(120),
            extra_root_pem: None,
            pool_size: 4,
            max_message_bytes: 1 << 20,
        }
    }
}

/// Hides the password: params end up in logs.
impl fmt::Debug for SmtpParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpParams")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("from", &self.from)
            .field("timeout", &self.timeout)
            .field("send_timeout", &self.send_timeout)
            .field(
                "extra_root_pem",
                &self.extra_root_pem.as_ref().map(Vec::len),
            )
            .field("pool_size", &self.pool_size)
            .field("max_message_bytes", &self.max_message_bytes)
            .finish()
    }
}

/// Why a mail was not sent (or the mailer not built).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    /// The [`SmtpParams`] cannot work: fix the configuration.
    #[error("email configuration: {0}")]
    Config(String),
    #[error("invalid email address {address:?}: {reason}")]
    BadAddress { address: String, reason: String },
    /// The message itself is unacceptable (bad Message-ID, too large).
    #[error("invalid email message: {0}")]
    BadMessage(String),
    /// The server could not take the mail now: 4xx reply, refused connection, timeout.
    #[error("mail server unavailable: {0}")]
    Unavailable(String),
    /// The TLS handshake failed (untrusted certificate, name mismatch, no common protocol).
    #[error("TLS with the mail server failed: {0}")]
    Tls(String),
    /// The server lacks something we require (STARTTLS, a usable AUTH mechanism).
    #[error("mail server protocol problem: {0}")]
    Protocol(String),
    /// A permanent (5xx) refusal: bad recipient, policy, authentication failure.
    #[error("mail rejected: {0}")]
    Rejected(String),
}

impl EmailError {
    /// Stable machine-readable reason.
    pub fn code(&self) -> &'static str {
        match self {
            EmailError::Config(_) => "email.config",
            EmailError::BadAddress { .. } => "email.bad_address",
            EmailError::BadMessage(_) => "email.bad_message",
            EmailError::Unavailable(_) => "email.unavailable",
            EmailError::Tls(_) => "email.tls",
            EmailError::Protocol(_) => "email.protocol",
            EmailError::Rejected(_) => "email.rejected",
        }
    }

    /// Whether sending the same mail later may succeed. Server-side trouble (even a TLS or
    /// protocol mismatch an operator can fix) is retryable; the client's address, our message
    /// and a permanent refusal are not.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            EmailError::Unavailable(_) | EmailError::Tls(_) | EmailError::Protocol(_)
        )
    }
}

/// One plain-text mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    /// The recipient, `addr@example.com` or `Name <addr@example.com>`.
    pub to: String,
    pub subject: String,
    pub text_body: String,
    /// The `Message-ID` header, `<left@right>`: stable per job and event, so a resend is
    /// recognisably the same message.
    pub message_id: String,
}

/// Sends mail through one SMTP server. Build it once (inside a tokio runtime) and share it:
/// it keeps a pool of open connections.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    host: String,
    port: u16,
    security: SmtpSecurity,
    send_timeout: Duration,
    max_message_bytes: usize,
}

impl fmt::Debug for Mailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mailer")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

impl Mailer {
    /// Checks `params` and builds the transport; connects nothing yet.
    ///
    /// Must run inside a tokio runtime: the connection pool starts a cleanup task.
    pub fn new(params: SmtpParams) -> Result<Mailer, EmailError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(EmailError::Config(
                "Mailer::new must be called inside a tokio runtime".to_owned(),
            ));
        }
        let from = params
            .from
            .parse::<Mailbox>()
            .map_err(|e| EmailError::Config(format!("from address {:?}: {e}", params.from)))?;
        let credentials = credentials(&params)?;
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&params.host)
            .port(params.port)
            .timeout(Some(params.timeout))
            .pool_config(PoolConfig::new().max_size(params.pool_size.max(1)));
        // What `starttls_relay` / `relay` set up, with our port and trust roots.
        builder = match params.security {
            SmtpSecurity::None => builder,
            SmtpSecurity::StartTls => builder.tls(Tls::Required(tls_parameters(&params)?)),
            SmtpSecurity::Tls => builder.tls(Tls::Wrapper(tls_parameters(&params)?)),
        };
        if let Some(credentials) = credentials {
            builder = builder.credentials(credentials);
        }
        Ok(Mailer {
            transport: builder.build(),
            from,
            host: params.host,
            port: params.port,
            security: params.security,
            send_timeout: params.send_timeout,
            max_message_bytes: params.max_message_bytes,
        })
    }

    /// Sends `msg`, all within `send_timeout`.
    pub async fn send(&self, msg: &Email) -> Result<(), EmailError> {
        let message = self.build_message(msg)?;
        match tokio::time::timeout(self.send_timeout, self.transport.send(message)).await {
            Err(_) => Err(EmailError::Unavailable(format!(
                "no answer from {}:{} within {:?}",
                self.host, self.port, self.send_timeout
            ))),
            Ok(Err(err)) => Err(smtp_error(&err)),
            Ok(Ok(_)) => {
                tracing::debug!(message_id = %msg.message_id, "mail accepted by the server");
                Ok(())
            }
        }
    }

    /// Connects and greets the server (TLS and AUTH included) without sending anything: a
    /// startup check that the configuration works.
    pub async fn check(&self) -> Result<(), EmailError> {
        match tokio::time::timeout(self.send_timeout, self.transport.test_connection()).await {
            Err(_) => Err(EmailError::Unavailable(format!(
                "no answer from {}:{} within {:?}",
                self.host, self.port, self.send_timeout
            ))),
            Ok(Err(err)) => Err(smtp_error(&err)),
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => Err(EmailError::Unavailable(
                "the server did not answer NOOP".to_owned(),
            )),
        }
    }

    fn build_message(&self, msg: &Email) -> Result<Message, EmailError> {
        let to = msg
            .to
            .parse::<Mailbox>()
            .map_err(|e| EmailError::BadAddress {
                address: msg.to.clone(),
                reason: e.to_string(),
            })?;
        check_message_id(&msg.message_id)?;
        let size = msg.subject.len() + msg.text_body.len();
        if size > self.max_message_bytes {
            return Err(EmailError::BadMessage(format!(
                "{size} bytes of subject and body, more than the {} allowed",
                self.max_message_bytes
            )));
        }
        Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(one_line(&msg.subject))
            .message_id(Some(msg.message_id.clone()))
            .date_now()
            .header(ContentType::TEXT_PLAIN)
            .body(msg.text_body.clone())
            .map_err(|e| EmailError::BadMessage(e.to_string()))
    }
}

fn credentials(params: &SmtpParams) -> Result<Option<Credentials>, EmailError> {
    match (&params.username, &params.password) {
        (None, None) => Ok(None),
        (Some(_), None) | (None, Some(_)) => Err(EmailError::Config(
            "SMTP username and password go together".to_owned(),
        )),
        (Some(_), Some(_)) if params.security == SmtpSecurity::None => Err(EmailError::Config(
            "refusing to send SMTP credentials without TLS: set security to StartTls or Tls"
                .to_owned(),
        )),
        (Some(user), Some(password)) => Ok(Some(Credentials::new(user.clone(), password.clone()))),
    }
}

/// TLS settings validating the server's certificate for `host` against the public roots and
/// any extra ones.
fn tls_parameters(params: &SmtpParams) -> Result<TlsParameters, EmailError> {
    let mut builder = TlsParameters::builder(params.host.clone());
    if let Some(pem) = &params.extra_root_pem {
        let certificate = Certificate::from_pem(pem)
            .map_err(|e| EmailError::Config(format!("extra_root_pem: {e}")))?;
        builder = builder.add_root_certificate(certificate);
    }
    builder
        .build_rustls()
        .map_err(|e| EmailError::Config(format!("TLS setup for {}: {e}", params.host)))
}

/// Maps lettre's error to ours by what it means for a retry.
fn smtp_error(err: &lettre::transport::smtp::Error) -> EmailError {
    let text = err.to_string();
    if err.is_permanent() {
        EmailError::Rejected(text)
    } else if err.is_transient() || err.is_timeout() {
        EmailError::Unavailable(text)
    } else if err.is_tls() || caused_by_tls(err) {
        EmailError::Tls(text)
    } else if err.is_client() {
        EmailError::Protocol(text)
    } else {
        // Connection, network, unparsable reply, shut-down transport.
        EmailError::Unavailable(text)
    }
}

/// Whether a rustls error is somewhere in the chain. lettre reports a failed handshake as a
/// connection error wrapping an `io::Error` that wraps the rustls error; `io::Error::source`
/// skips the wrapped error itself, hence the look through `get_ref`.
fn caused_by_tls(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(current) = next {
        if current.is::<rustls::Error>() {
            return true;
        }
        if let Some(inner) = current
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            if caused_by_tls(inner) {
                return true;
            }
        }
        next = current.source();
    }
    false
}

/// The longest Message-ID accepted (RFC 5322 caps a line at 998 characters).
const MAX_MESSAGE_ID_LEN: usize = 250;

/// Accepts `<left@right>` made of visible ASCII, no brackets or spaces inside: anything else
/// could break or inject headers.
fn check_message_id(id: &str) -> Result<(), EmailError> {
    let bad = |why: &str| Err(EmailError::BadMessage(format!("Message-ID {id:?}: {why}")));
    if id.len() > MAX_MESSAGE_ID_LEN {
        return bad("too long");
    }
    let Some(inner) = id.strip_prefix('<').and_then(|s| s.strip_suffix('>')) else {
        return bad("must be enclosed in <>");
    };
    let Some((left, right)) = inner.split_once('@') else {
        return bad("must be left@right");
    };
    let visible = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_graphic() && !matches!(b, b'<' | b'>' | b'@'))
    };
    if !visible(left) || !visible(right) {
        return bad("only visible ASCII, one @, no brackets");
    }
    Ok(())
}

/// `text` with control characters (line breaks included) turned into spaces: a subject is one
/// line.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The Message-ID of the mail about `event` for `job_id`: the same for every resend.
///
/// Job ids made only of letters, digits, `-` and `_` appear as they are (readable in mail
/// logs); anything else is replaced, with a hash of the real id appended so that distinct ids
/// stay distinct.
pub fn job_message_id(job_id: &str, event: WebhookEvent) -> String {
    const MAX_READABLE: usize = 64;
    let clean = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    let mut left: String = job_id
        .chars()
        .take(MAX_READABLE)
        .map(|c| if clean(c) { c } else { '_' })
        .collect();
    if left.is_empty() || job_id.len() > MAX_READABLE || !job_id.chars().all(clean) {
        let digest = hex::encode(Sha256::digest(job_id.as_bytes()));
        left.push('.');
        left.push_str(&digest[..16]);
    }
    format!("<{left}.{}@ytcaption>", event.as_str())
}

/// The plain-text notification for a finished job, addressed to `to`.
pub fn job_email(body: &WebhookBody, to: &str) -> Email {
    let subject = match body.status {
        JobOutcome::Completed => format!("Transcript ready: {}", body.job_id),
        JobOutcome::Failed => format!("Transcription failed: {}", body.job_id),
        JobOutcome::Cancelled => format!("Transcription cancelled: {}", body.job_id),
    };
    Email {
        to: to.to_owned(),
        subject,
        text_body: job_email_text(body),
        message_id: job_message_id(&body.job_id, body.event),
    }
}

fn job_email_text(body: &WebhookBody) -> String {
    let mut text = match body.status {
        JobOutcome::Completed => format!("Your transcription job {} is done.\n", body.job_id),
        JobOutcome::Failed => format!("Your transcription job {} failed.\n", body.job_id),
        JobOutcome::Cancelled => {
            format!("Your transcription job {} was cancelled.\n", body.job_id)
        }
    };
    if let Some(error) = &body.error {
        text.push_str(&format!("\nReason: {} ({})\n", error.message, error.code));
    }
    if !body.links.transcript.is_empty() {
        text.push_str("\nDownload the transcript:\n");
        for (format, url) in &body.links.transcript {
            text.push_str(&format!("  {format}: {url}\n"));
        }
    }
    text.push_str(&format!("\nJob status: {}\n\n", body.links.job));
    if let Some(language) = &body.language {
        text.push_str(&format!("Language: {language}\n"));
    }
    if let Some(duration) = body.duration_s {
        text.push_str(&format!("Audio length: {}\n", human_duration(duration)));
    }
    text.push_str(&format!(
        "Submitted: {}\nFinished: {}\n\n-- \nSent by ytcaption. Message {}\n",
        body.created_at,
        body.finished_at,
        job_message_id(&body.job_id, body.event)
    ));
    text
}

/// `3725.4` → `1 h 2 min 5 s`; short clips keep a decimal (`4.2 s`).
fn human_duration(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "unknown".to_owned();
    }
    if seconds < 60.0 {
        return format!("{seconds:.1} s");
    }
    // Saturating float-to-int conversion; a transcript longer than u64 seconds is not a concern.
    let total = seconds.round() as u64;
    let (h, m, s) = (total / 3600, total % 3600 / 60, total % 60);
    if h > 0 {
        format!("{h} h {m} min {s} s")
    } else {
        format!("{m} min {s} s")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::notify::webhook::{WebhookError, WebhookLinks};

    fn completed() -> WebhookBody {
        WebhookBody {
            event: WebhookEvent::JobCompleted,
            job_id: "job_7f3a".into(),
            status: JobOutcome::Completed,
            error: None,
            links: WebhookLinks {
                job: "https://cap.example/v1/jobs/job_7f3a".into(),
                transcript: BTreeMap::from([
                    ("srt".into(), "https://cap.example/t/job_7f3a.srt".into()),
                    ("txt".into(), "https://cap.example/t/job_7f3a.txt".into()),
                ]),
            },
            created_at: "2023-11-14T22:13:20Z".into(),
            finished_at: "2023-11-14T22:15:00Z".into(),
            duration_s: Some(3725.4),
            language: Some("en".into()),
        }
    }

    #[test]
    fn completed_job_email() {
        let email = job_email(&completed(), "client@example.com");
        assert_eq!(email.to, "client@example.com");
        assert_eq!(email.subject, "Transcript ready: job_7f3a");
        assert_eq!(email.message_id, "<job_7f3a.job.completed@ytcaption>");
        let text = &email.text_body;
        assert!(text.contains("job_7f3a is done"), "{text}");
        assert!(text.contains("  srt: https://cap.example/t/job_7f3a.srt\n"));
        assert!(text.contains("  txt: https://cap.example/t/job_7f3a.txt\n"));
        assert!(text.contains("Job status: https://cap.example/v1/jobs/job_7f3a"));
        assert!(text.contains("Language: en\n"));
        assert!(text.contains("Audio length: 1 h 2 min 5 s\n"));
        assert!(!text.contains("Reason"));
    }

    #[test]
    fn failed_job_email() {
        let mut body = completed();
        body.event = WebhookEvent::JobFailed;
        body.status = JobOutcome::Failed;
        body.links.transcript.clear();
        body.error = Some(WebhookError {
            code: "download.too_large".into(),
            message: "the media is larger than 2 GiB".into(),
        });
        body.duration_s = None;
        let email = job_email(&body, "c@example.com");
        assert_eq!(email.subject, "Transcription failed: job_7f3a");
        assert_eq!(email.message_id, "<job_7f3a.job.failed@ytcaption>");
        assert!(email
            .text_body
            .contains("Reason: the media is larger than 2 GiB (download.too_large)"));
        assert!(!email.text_body.contains("Download the transcript"));
        assert!(!email.text_body.contains("Audio length"));

        body.status = JobOutcome::Cancelled;
        assert_eq!(
            job_email(&body, "c@example.com").subject,
            "Transcription cancelled: job_7f3a"
        );
    }

    #[test]
    fn message_ids_are_valid_and_distinct() {
        let ids = [
            job_message_id("plain-id_1", WebhookEvent::JobCompleted),
            job_message_id("a b", WebhookEvent::JobCompleted),
            job_message_id("a_b", WebhookEvent::JobCompleted),
            job_message_id("a>b\r\nBcc: x@y", WebhookEvent::JobCompleted),
            job_message_id("", WebhookEvent::JobCompleted),
            job_message_id(&"x".repeat(500), WebhookEvent::JobCompleted),
            job_message_id(&"x".repeat(501), WebhookEvent::JobCompleted),
            job_message_id("plain-id_1", WebhookEvent::JobFailed),
        ];
        for id in &ids {
            check_message_id(id).unwrap_or_else(|e| panic!("{id}: {e}"));
        }
        let unique: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len(), "{ids:?}");
        assert_eq!(ids[0], "<plain-id_1.job.completed@ytcaption>");
    }

    #[test]
    fn message_id_check() {
        for bad in [
            "",
            "abc@def",
            "<abc>",
            "<@def>",
            "<abc@>",
            "<a b@c>",
            "<a@b@c>",
            "<a@b>\r\nBcc: x@y",
            "<a\r\n@b>",
            "<é@b>",
        ] {
            let err = check_message_id(bad).unwrap_err();
            assert_eq!(err.code(), "email.bad_message", "{bad:?}");
            assert!(!err.retryable());
        }
        assert!(check_message_id(&format!("<{}@b>", "a".repeat(300))).is_err());
        check_message_id("<job.completed.x_1@ytcaption>").unwrap();
    }

    #[test]
    fn subject_is_one_line() {
        assert_eq!(one_line("a\r\nBcc: b\tc"), "a  Bcc: b c");
    }

    #[test]
    fn human_durations() {
        assert_eq!(human_duration(4.24), "4.2 s");
        assert_eq!(human_duration(61.0), "1 min 1 s");
        assert_eq!(human_duration(3600.0), "1 h 0 min 0 s");
        assert_eq!(human_duration(f64::NAN), "unknown");
        assert_eq!(human_duration(-1.0), "unknown");
        assert!(!human_duration(f64::MAX).is_empty());
    }

    #[test]
    fn params_debug_hides_password() {
        let params = SmtpParams {
            username: Some("user".into()),
            password: Some("hunter2".into()),
            ..SmtpParams::default()
        };
        let shown = format!("{params:?}");
        assert!(
            shown.contains("user") && !shown.contains("hunter2"),
            "{shown}"
        );
    }

    #[test]
    fn mailer_needs_a_runtime() {
        let err = Mailer::new(SmtpParams::default()).unwrap_err();
        assert_eq!(err.code(), "email.config");
    }

    #[tokio::test]
    async fn bad_params_are_config_errors() {
        let cases = [
            SmtpParams {
                from: "not an address".into(),
                ..SmtpParams::default()
            },
            SmtpParams {
                username: Some("u".into()),
                ..SmtpParams::default()
            },
            SmtpParams {
                username: Some("u".into()),
                password: Some("p".into()),
                ..SmtpParams::default()
            },
            SmtpParams {
                security: SmtpSecurity::StartTls,
                extra_root_pem: Some(
                    b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n".to_vec(),
                ),
                ..SmtpParams::default()
            },
        ];
        for params in cases {
            let shown = format!("{params:?}");
            let err = Mailer::new(params).unwrap_err();
            assert_eq!(err.code(), "email.config", "{shown}: {err}");
            assert!(!err.retryable());
        }
        Mailer::new(SmtpParams::default()).unwrap();
    }

    #[tokio::test]
    async fn bad_recipients_fail_before_connecting() {
        // Nothing listens on port 1; an address error must come before any connection attempt.
        let mailer = Mailer::new(SmtpParams {
            host: "127.0.0.1".into(),
            port: 1,
            ..SmtpParams::default()
        })
        .unwrap();
        for to in [
            "",
            "no-at-sign",
            "two@@example.com",
            "a@b\r\nBcc: x@y",
            "<unclosed@example.com",
        ] {
            let mut email = job_email(&completed(), to);
            email.to = to.to_owned();
            let err = mailer.send(&email).await.unwrap_err();
            assert_eq!(err.code(), "email.bad_address", "{to:?}: {err}");
            assert!(!err.retryable());
        }
        let mut huge = job_email(&completed(), "a@example.com");
        huge.text_body = "x".repeat((1 << 20) + 1);
        assert_eq!(
            mailer.send(&huge).await.unwrap_err().code(),
            "email.bad_message"
        );
    }
}
