//! Checks of client-supplied values, before anything is stored or started. Each failure is a
//! [`ValidationError`] naming the field, with a stable code; the API answers it with 422
//! (semantically invalid) or, for a malformed header, 400.
//!
//! The URL check is deliberately syntactic: whether a host may be reached (private networks,
//! redirects) is the downloader's and notifier's business at the time they connect.

use std::net::Ipv6Addr;

use http::StatusCode;
use ytcaption_protocol::{Format, Task};

use super::languages;
use super::problem::Problem;

/// Longest URL accepted (media and webhook).
pub const MAX_URL_LEN: usize = 2048;
/// Longest prompt accepted, in bytes (Whisper uses at most 224 tokens of it anyway).
pub const MAX_PROMPT_BYTES: usize = 4096;
/// Longest model name accepted.
pub const MAX_MODEL_NAME: usize = 64;
/// Longest `Idempotency-Key` accepted.
pub const MAX_IDEMPOTENCY_KEY: usize = 255;
/// Longest upload file name kept.
pub const MAX_FILENAME_CHARS: usize = 200;

/// A client-supplied value that cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// The request field (`url`, `webhook_url`, `formats`...).
    pub field: &'static str,
    code: &'static str,
    pub message: String,
}

impl ValidationError {
    pub fn new(field: &'static str, code: &'static str, message: impl Into<String>) -> Self {
        ValidationError {
            field,
            code,
            message: message.into(),
        }
    }

    /// Stable machine-readable reason, e.g. `validation.url`.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// Never: the client has to change the request.
    pub fn retryable(&self) -> bool {
        false
    }

    /// 400 for a malformed header, 422 for a field.
    pub fn status(&self) -> StatusCode {
        if self.code == "request.idempotency_key" {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::UNPROCESSABLE_ENTITY
        }
    }
}

impl From<ValidationError> for Problem {
    fn from(error: ValidationError) -> Problem {
        Problem::from_error(
            error.status(),
            error.code(),
            error.to_string(),
            error.retryable(),
        )
    }
}

/// Characters never allowed anywhere in a URL we accept (clients percent-encode them).
fn bad_url_char(c: char) -> bool {
    !c.is_ascii() || c.is_ascii_control() || c.is_ascii_whitespace() || "\"<>\\`".contains(c)
}

/// Checks that `text` is an absolute `http` or `https` URL with a plausible host.
pub fn http_url(
    field: &'static str,
    code: &'static str,
    text: &str,
) -> Result<(), ValidationError> {
    let fail = |message: String| Err(ValidationError::new(field, code, message));
    if text.is_empty() {
        return fail("must not be empty".into());
    }
    if text.len() > MAX_URL_LEN {
        return fail(format!("longer than {MAX_URL_LEN} characters"));
    }
    if let Some(c) = text.chars().find(|c| bad_url_char(*c)) {
        return fail(format!(
            "contains {c:?}; spaces, quotes and non-ASCII characters must be percent-encoded"
        ));
    }
    let Some((scheme, rest)) = text.split_once("://") else {
        return fail("not an absolute URL (expected http://... or https://...)".into());
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return fail(format!(
            "scheme {scheme:?} is not supported: use http or https"
        ));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return fail("credentials in URLs are not accepted".into());
    }
    match check_authority(authority) {
        Ok(()) => Ok(()),
        Err(message) => fail(message),
    }
}

/// `host[:port]` or `[v6][:port]`.
fn check_authority(authority: &str) -> Result<(), String> {
    if authority.is_empty() {
        return Err("the URL has no host".into());
    }
    let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
        let (v6, after) = inner
            .split_once(']')
            .ok_or_else(|| "unterminated IPv6 address".to_string())?;
        v6.parse::<Ipv6Addr>()
            .map_err(|_| format!("{v6:?} is not an IPv6 address"))?;
        match after {
            "" => (None, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (None, Some(port)),
                None => return Err("garbage after the IPv6 address".into()),
            },
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(authority), None),
        }
    };
    if let Some(host) = host {
        check_host(host)?;
    }
    if let Some(port) = port {
        let valid = !port.is_empty()
            && port.len() <= 5
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u16>().is_ok_and(|p| p != 0);
        if !valid {
            return Err(format!("port {port:?} is not a number from 1 to 65535"));
        }
    }
    Ok(())
}

fn check_host(host: &str) -> Result<(), String> {
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || host.len() > 253 {
        return Err("the URL has no valid host".into());
    }
    for label in host.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(format!("{host:?} is not a valid host name"));
        }
    }
    Ok(())
}

/// The media URL of a job.
pub fn media_url(text: &str) -> Result<(), ValidationError> {
    http_url("url", "validation.url", text)
}

/// A webhook URL.
pub fn webhook_url(text: &str) -> Result<(), ValidationError> {
    http_url("webhook_url", "validation.webhook_url", text)
}

/// A plain `local@domain.tld` address (no comments, no quoted local parts, no IP literals:
/// enough for notifications, strict enough to catch typos).
pub fn email(text: &str) -> Result<(), ValidationError> {
    let fail = |message: &str| Err(ValidationError::new("email", "validation.email", message));
    if text.len() > 254 {
        return fail("longer than 254 characters");
    }
    let Some((local, domain)) = text.split_once('@') else {
        return fail("not an email address (no @)");
    };
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_{|}~.-".contains(c));
    if !local_ok {
        return fail("the part before @ is not a valid mailbox name");
    }
    let labels: Vec<&str> = domain.split('.').collect();
    let labels_ok = labels.len() >= 2
        && labels.iter().all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        && labels
            .last()
            .is_some_and(|tld| !tld.bytes().all(|b| b.is_ascii_digit()));
    if !labels_ok {
        return fail("the domain is not valid (expected something like example.com)");
    }
    Ok(())
}

/// A spoken language: `auto` (or nothing) to detect it, else a code Whisper knows.
pub fn language(text: Option<&str>) -> Result<Option<String>, ValidationError> {
    let Some(text) = text.filter(|t| !t.is_empty() && *t != "auto") else {
        return Ok(None);
    };
    let fail = |message: String| {
        Err(ValidationError::new(
            "language",
            "validation.language",
            message,
        ))
    };
    let syntax = (2..=3).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_lowercase());
    if !syntax {
        return fail(format!(
            "{text:?} is not a language code: use 2-3 lowercase letters (ISO 639-1, e.g. \"en\") or \"auto\""
        ));
    }
    if languages::name(text).is_none() {
        return fail(format!("{text:?} is not a language Whisper knows"));
    }
    Ok(Some(text.to_owned()))
}

/// Whether `name` is a syntactically valid model name: it names a directory inside the
/// models directory, so no separators and no leading dot (no `..`, no hidden directories).
pub fn is_model_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_MODEL_NAME
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// A model name, or nothing for the node's default.
pub fn model(text: Option<&str>) -> Result<Option<String>, ValidationError> {
    match text.filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(name) if is_model_name(name) => Ok(Some(name.to_owned())),
        Some(name) => Err(ValidationError::new(
            "model",
            "validation.model",
            format!(
                "{name:?} is not a model name: up to {MAX_MODEL_NAME} letters, digits, '.', '_' or '-', not starting with '.'"
            ),
        )),
    }
}

pub fn task(text: Option<&str>) -> Result<Task, ValidationError> {
    match text.filter(|t| !t.is_empty()) {
        None | Some("transcribe") => Ok(Task::Transcribe),
        Some("translate") => Ok(Task::Translate),
        Some(other) => Err(ValidationError::new(
            "task",
            "validation.task",
            format!("{other:?} is not a task: use transcribe or translate"),
        )),
    }
}

/// Output formats, deduplicated in the order given; `None` means the default set.
pub fn formats(names: Option<&[String]>) -> Result<Vec<Format>, ValidationError> {
    let Some(names) = names else {
        return Ok(Format::ALL.to_vec());
    };
    let mut out = Vec::new();
    for name in names {
        let format: Format = name
            .parse()
            .map_err(|error: ytcaption_protocol::UnknownFormat| {
                ValidationError::new("formats", "validation.format", error.to_string())
            })?;
        if !out.contains(&format) {
            out.push(format);
        }
    }
    if out.is_empty() {
        return Err(ValidationError::new(
            "formats",
            "validation.format",
            "must name at least one of txt, srt, vtt, json (or be left out)",
        ));
    }
    Ok(out)
}

/// One format given as a query or form value.
pub fn format(field: &'static str, name: &str) -> Result<Format, ValidationError> {
    name.parse()
        .map_err(|error: ytcaption_protocol::UnknownFormat| {
            ValidationError::new(field, "validation.format", error.to_string())
        })
}

pub fn prompt(text: Option<&str>) -> Result<Option<String>, ValidationError> {
    match text.filter(|t| !t.trim().is_empty()) {
        None => Ok(None),
        Some(prompt) if prompt.len() <= MAX_PROMPT_BYTES => Ok(Some(prompt.to_owned())),
        Some(_) => Err(ValidationError::new(
            "prompt",
            "validation.prompt",
            format!("longer than {MAX_PROMPT_BYTES} bytes"),
        )),
    }
}

/// An `Idempotency-Key` header: 1 to 255 visible ASCII characters.
pub fn idempotency_key(value: &[u8]) -> Result<String, ValidationError> {
    let ok = !value.is_empty()
        && value.len() <= MAX_IDEMPOTENCY_KEY
        && value.iter().all(|b| (0x21..=0x7e).contains(b));
    if !ok {
        return Err(ValidationError::new(
            "Idempotency-Key",
            "request.idempotency_key",
            format!("must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"),
        ));
    }
    Ok(String::from_utf8_lossy(value).into_owned())
}

/// A boolean form or query value.
pub fn boolean(field: &'static str, text: &str) -> Result<bool, ValidationError> {
    match text {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        other => Err(ValidationError::new(
            field,
            "validation.boolean",
            format!("{other:?} is not true or false"),
        )),
    }
}

/// The name an upload is shown under: its last path component, without control characters,
/// at most [`MAX_FILENAME_CHARS`] characters; `upload` when nothing is left.
pub fn filename(raw: Option<&str>) -> String {
    let last = raw
        .unwrap_or_default()
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or_default();
    let clean: String = last
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_FILENAME_CHARS)
        .collect();
    let clean = clean.trim();
    if clean.is_empty() || clean == "." || clean == ".." {
        "upload".to_owned()
    } else {
        clean.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_urls_must_be_absolute_http_with_a_host() {
        for good in [
            "https://www.youtube.com/watch?v=dQw4w9WgXcQ",
            "http://127.0.0.1:8000/a.mp3",
            "HTTPS://Example.COM",
            "http://[::1]:9000/x?y=1#z",
            "http://media_host.internal./clip.wav",
            "https://example.com/a%20b.mp3",
        ] {
            assert_eq!(media_url(good), Ok(()), "{good}");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        for (bad, says) in [
            ("", "empty"),
            ("ftp://example.com/a.mp3", "scheme \"ftp\""),
            ("file:///etc/passwd", "scheme \"file\""),
            ("javascript:alert(1)", "not an absolute URL"),
            ("example.com/a.mp3", "not an absolute URL"),
            ("https://", "no host"),
            ("https:///path", "no host"),
            ("https://exa mple.com", "percent-encoded"),
            ("https://example.com/é", "percent-encoded"),
            ("https://user:pw@example.com/", "credentials"),
            ("https://example.com:0/", "port"),
            ("https://example.com:99999/", "port"),
            ("https://example.com:/", "port"),
            ("https://[::1/", "IPv6"),
            ("https://[zz::1]/", "IPv6"),
            ("https://-bad.com/", "host"),
            ("https://a..b/", "host"),
            (long.as_str(), "longer than"),
        ] {
            let error = media_url(bad).unwrap_err();
            assert_eq!(error.code(), "validation.url");
            assert!(error.message.contains(says), "{bad}: {error}");
            assert!(!error.retryable());
            assert_eq!(Problem::from(error).status, 422);
        }
        assert_eq!(
            webhook_url("gopher://x").unwrap_err().code(),
            "validation.webhook_url"
        );
    }

    #[test]
    fn emails_need_a_mailbox_and_a_domain() {
        for good in [
            "a@example.com",
            "first.last+tag@mail.example.co.uk",
            "x_y-z@a-b.io",
        ] {
            assert_eq!(email(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "plain",
            "@example.com",
            "a@",
            "a@localhost",
            "a@@example.com",
            "a b@example.com",
            ".a@example.com",
            "a..b@example.com",
            "a@-example.com",
            "a@example..com",
            "a@1.2.3.4",
            "a@example.com\r\nBcc: victim@example.com",
        ] {
            assert_eq!(
                email(bad).unwrap_err().code(),
                "validation.email",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn languages_are_known_codes_or_auto() {
        assert_eq!(language(None), Ok(None));
        assert_eq!(language(Some("auto")), Ok(None));
        assert_eq!(language(Some("")), Ok(None));
        assert_eq!(language(Some("en")), Ok(Some("en".into())));
        assert_eq!(language(Some("haw")), Ok(Some("haw".into())));
        for bad in ["EN", "english", "e", "en-US", "zz", "xyz", "../"] {
            assert_eq!(
                language(Some(bad)).unwrap_err().code(),
                "validation.language",
                "{bad}"
            );
        }
    }

    #[test]
    fn model_names_cannot_escape_the_models_directory() {
        assert_eq!(model(Some("base")), Ok(Some("base".into())));
        assert_eq!(
            model(Some("tiny.en-int8_v2")),
            Ok(Some("tiny.en-int8_v2".into()))
        );
        assert_eq!(model(None), Ok(None));
        for bad in [
            "..",
            ".hidden",
            "a/b",
            "../etc",
            "a b",
            "ä",
            &"x".repeat(65),
        ] {
            assert!(model(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn formats_default_dedupe_and_reject_unknown_names() {
        assert_eq!(formats(None).unwrap(), Format::ALL.to_vec());
        let names = ["srt", "SRT", "vtt"].map(String::from);
        assert_eq!(
            formats(Some(&names)).unwrap(),
            vec![Format::Srt, Format::Vtt]
        );
        assert_eq!(
            formats(Some(&["docx".to_string()])).unwrap_err().code(),
            "validation.format"
        );
        assert!(formats(Some(&[])).is_err());
        assert_eq!(format("format", "txt"), Ok(Format::Txt));
    }

    #[test]
    fn tasks_prompts_and_booleans() {
        assert_eq!(task(None), Ok(Task::Transcribe));
        assert_eq!(task(Some("translate")), Ok(Task::Translate));
        assert_eq!(
            task(Some("summarize")).unwrap_err().code(),
            "validation.task"
        );
        assert_eq!(prompt(Some("  ")), Ok(None));
        assert_eq!(prompt(Some("Names: Ada")), Ok(Some("Names: Ada".into())));
        assert!(prompt(Some(&"x".repeat(MAX_PROMPT_BYTES + 1))).is_err());
        assert_eq!(boolean("w", "false"), Ok(false));
        assert_eq!(boolean("w", "1"), Ok(true));
        assert!(boolean("w", "maybe").is_err());
    }

    #[test]
    fn idempotency_keys_are_visible_ascii_and_bounded() {
        assert_eq!(idempotency_key(b"order-42"), Ok("order-42".into()));
        assert!(idempotency_key(&[b'k'; MAX_IDEMPOTENCY_KEY]).is_ok());
        for bad in [
            &b""[..],
            b"has space",
            b"tab\t",
            "ü".as_bytes(),
            &[b'k'; 256],
        ] {
            let error = idempotency_key(bad).unwrap_err();
            assert_eq!(error.status(), StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn filenames_keep_only_the_last_component() {
        assert_eq!(filename(Some("talk.mp3")), "talk.mp3");
        assert_eq!(filename(Some("../../etc/passwd")), "passwd");
        assert_eq!(filename(Some("C:\\Users\\me\\a.wav")), "a.wav");
        assert_eq!(filename(Some("a\u{0}b\nc.wav")), "abc.wav");
        assert_eq!(filename(Some("dir/")), "upload");
        assert_eq!(filename(Some("..")), "upload");
        assert_eq!(filename(None), "upload");
        assert_eq!(
            filename(Some(&"é".repeat(500))).chars().count(),
            MAX_FILENAME_CHARS
        );
    }
}
