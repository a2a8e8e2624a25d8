//! Webhooks: the JSON body, its signature, and the delivery policy (what a response means and
//! when to try again). The HTTP transport that sends the request lives elsewhere; everything
//! here is pure so it can be tested without a network.
//!
//! # Signature scheme
//!
//! Every webhook request carries these headers:
//!
//! | Header                | Value                                                         |
//! |-----------------------|---------------------------------------------------------------|
//! | `Ytcaption-Signature` | `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>` |
//! | `Ytcaption-Delivery`  | the delivery id: one per job and event, the same on retries   |
//! | `Idempotency-Key`     | the delivery id again, under the name generic receivers know  |
//! | `Ytcaption-Event`     | `job.completed` or `job.failed`                               |
//!
//! The signed string is the decimal timestamp, a `.`, then the exact request body bytes.
//! Signing the timestamp with the body lets a receiver reject replays: it checks the HMAC, then
//! that `t` is within a few minutes of its own clock ([`verify`] takes that tolerance).
//!
//! While a secret is being rotated the sender signs with both the old and the new secret and
//! sends several `v1=` entries (`t=…,v1=<new>,v1=<old>`); a receiver accepts the request when
//! any entry matches the secret it holds. Unknown schemes (say a future `v2=`) are ignored, so
//! the header can grow without breaking existing receivers.
//!
//! Receivers should compare in constant time (as [`verify`] does) and deduplicate on
//! `Ytcaption-Delivery`: a request whose response was lost is sent again with the same id.
//!
//! # Delivery policy
//!
//! [`classify`] maps one attempt's outcome to a [`Verdict`]: 2xx is delivered; 408, 429, 5xx
//! and network errors are worth retrying; redirects and other 4xx are final (a webhook URL that
//! redirects or refuses us needs its owner's attention, not more traffic). [`RetryPolicy`] then
//! spaces the retries out (capped exponential backoff with jitter) and decides when to give up.

use std::collections::BTreeMap;
use std::time::Duration;

use hmac::digest::generic_array::GenericArray;
use hmac::digest::{Digest, KeyInit};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Header carrying `t=…,v1=…`.
pub const SIGNATURE_HEADER: &str = "Ytcaption-Signature";
/// Header carrying the delivery id.
pub const DELIVERY_HEADER: &str = "Ytcaption-Delivery";
/// The delivery id again, under the name generic idempotent receivers look for.
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";
/// Header carrying the event name.
pub const EVENT_HEADER: &str = "Ytcaption-Event";

/// The longest `Ytcaption-Signature` value [`verify`] parses; longer is malformed.
pub const MAX_SIGNATURE_HEADER_LEN: usize = 4096;
/// The most `v1=` entries [`verify`] tries; more is malformed (bounds the HMAC work).
pub const MAX_SIGNATURES: usize = 8;
/// The longest wait a receiver's `Retry-After` can impose on us.
pub const RETRY_AFTER_CAP: Duration = Duration::from_secs(3600);

type HmacSha256 = Hmac<Sha256>;

/// SHA-256's block size: HMAC keys are hashed down or zero-padded to it.
const SHA256_BLOCK: usize = 64;

// ---------------------------------------------------------------------------------------------
// Signing
// ---------------------------------------------------------------------------------------------

/// An HMAC-SHA256 keyed with `secret`.
///
/// HMAC accepts keys of any length (RFC 2104: longer ones are hashed, shorter ones zero-padded
/// to the block size). Doing that step here gives a block-sized key, so building the MAC cannot
/// fail and needs no `unwrap`.
fn mac(secret: &[u8]) -> HmacSha256 {
    let mut block = [0u8; SHA256_BLOCK];
    if secret.len() > SHA256_BLOCK {
        let digest = Sha256::digest(secret);
        block[..digest.len()].copy_from_slice(&digest);
    } else {
        block[..secret.len()].copy_from_slice(secret);
    }
    <HmacSha256 as KeyInit>::new(GenericArray::from_slice(&block))
}

/// The MAC over the signed string `"<timestamp>.<body>"`, ready to finalize or verify.
fn signed_payload_mac(secret: &[u8], timestamp: u64, body: &[u8]) -> HmacSha256 {
    let mut mac = mac(secret);
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The hex `v1` signature of `body` sent at `timestamp`.
fn v1(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    hex::encode(
        signed_payload_mac(secret, timestamp, body)
            .finalize()
            .into_bytes(),
    )
}

/// The `Ytcaption-Signature` header value: `t=<timestamp>,v1=<hex hmac>`.
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    sign_with_all(&[secret], timestamp, body)
}

/// The header value signed with each of `secrets` in turn (`t=…,v1=…,v1=…`), for the
/// overlap period of a secret rotation: receivers holding either secret accept it.
pub fn sign_with_all(secrets: &[&[u8]], timestamp: u64, body: &[u8]) -> String {
    let mut header = format!("t={timestamp}");
    for secret in secrets {
        header.push_str(",v1=");
        header.push_str(&v1(secret, timestamp, body));
    }
    header
}

/// Why [`verify`] refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("malformed signature header: {0}")]
    Malformed(&'static str),
    #[error("signature header has no t= timestamp")]
    MissingTimestamp,
    #[error("signature header has no v1= signature")]
    MissingSignature,
    #[error("no v1 signature matches the body and timestamp")]
    Mismatch,
    #[error("signature timestamp {timestamp} is more than {tolerance_s} s away from now ({now})")]
    OutsideTolerance {
        timestamp: u64,
        now: u64,
        tolerance_s: u64,
    },
}

impl SignatureError {
    /// Stable machine-readable reason.
    pub fn code(&self) -> &'static str {
        match self {
            SignatureError::Malformed(_) => "webhook.signature_malformed",
            SignatureError::MissingTimestamp => "webhook.signature_no_timestamp",
            SignatureError::MissingSignature => "webhook.signature_missing",
            SignatureError::Mismatch => "webhook.signature_mismatch",
            SignatureError::OutsideTolerance { .. } => "webhook.signature_expired",
        }
    }

    /// Never: the same request fails the same way every time.
    pub fn retryable(&self) -> bool {
        false
    }
}

/// The parts of a signature header that matter: the timestamp and the `v1` entries.
#[derive(Debug)]
struct ParsedSignature<'a> {
    timestamp: u64,
    v1: Vec<&'a str>,
}

fn parse_signature_header(header: &str) -> Result<ParsedSignature<'_>, SignatureError> {
    if header.len() > MAX_SIGNATURE_HEADER_LEN {
        return Err(SignatureError::Malformed("header too long"));
    }
    let mut timestamp = None;
    let mut v1 = Vec::new();
    for item in header.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (key, value) = item
            .split_once('=')
            .ok_or(SignatureError::Malformed("entry without '='"))?;
        match key.trim() {
            "t" => {
                let t = value
                    .trim()
                    .parse::<u64>()
                    .map_err(|_| SignatureError::Malformed("t is not a unix time in seconds"))?;
                if timestamp.replace(t).is_some() {
                    return Err(SignatureError::Malformed("more than one t"));
                }
            }
            "v1" => {
                if v1.len() == MAX_SIGNATURES {
                    return Err(SignatureError::Malformed("too many v1 entries"));
                }
                v1.push(value.trim());
            }
            // Other schemes are for other receivers; ignoring them keeps the header extensible.
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::MissingTimestamp)?;
    if v1.is_empty() {
        return Err(SignatureError::MissingSignature);
    }
    Ok(ParsedSignature { timestamp, v1 })
}

/// Checks a `Ytcaption-Signature` header against `body` and `secret`.
///
/// Passes when any `v1` entry is the HMAC of `"<t>.<body>"` (compared in constant time) and `t`
/// is within `tolerance_s` seconds of `now`, either way (clocks drift both ways). The signature
/// is checked before the time, so a forged header always reads as a mismatch.
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: u64,
    tolerance_s: u64,
) -> Result<(), SignatureError> {
    let parsed = parse_signature_header(header)?;
    let expected = signed_payload_mac(secret, parsed.timestamp, body);
    let matched = parsed.v1.iter().any(|candidate| {
        // An entry that is not hex cannot match; other entries may still.
        hex::decode(candidate)
            .map(|bytes| expected.clone().verify_slice(&bytes).is_ok())
            .unwrap_or(false)
    });
    if !matched {
        return Err(SignatureError::Mismatch);
    }
    if parsed.timestamp.abs_diff(now) > tolerance_s {
        return Err(SignatureError::OutsideTolerance {
            timestamp: parsed.timestamp,
            now,
            tolerance_s,
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Body and headers
// ---------------------------------------------------------------------------------------------

/// What happened, as named in `Ytcaption-Event` and the body's `event` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WebhookEvent {
    #[serde(rename = "job.completed")]
    JobCompleted,
    /// The job ended without a transcript: it failed or was cancelled (see `status`).
    #[serde(rename = "job.failed")]
    JobFailed,
}

impl WebhookEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookEvent::JobCompleted => "job.completed",
            WebhookEvent::JobFailed => "job.failed",
        }
    }

    /// The event announcing a job that ended with `status`.
    pub fn for_status(status: JobOutcome) -> WebhookEvent {
        match status {
            JobOutcome::Completed => WebhookEvent::JobCompleted,
            JobOutcome::Failed | JobOutcome::Cancelled => WebhookEvent::JobFailed,
        }
    }
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobOutcome {
    Completed,
    Failed,
    Cancelled,
}

impl JobOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            JobOutcome::Completed => "completed",
            JobOutcome::Failed => "failed",
            JobOutcome::Cancelled => "cancelled",
        }
    }
}

/// Why a job failed: the same stable reason code the API reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookError {
    pub code: String,
    pub message: String,
}

/// Where to fetch the job and its transcript.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookLinks {
    /// The job's status URL.
    pub job: String,
    /// Transcript download URL per format (`"srt"`, `"vtt"`, `"json"`, …); empty on failure.
    pub transcript: BTreeMap<String, String>,
}

/// The JSON body of a webhook. Field names are part of the public contract: add fields, never
/// rename or remove them. Absent optional values are sent as `null` so the shape is constant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookBody {
    pub event: WebhookEvent,
    pub job_id: String,
    pub status: JobOutcome,
    pub error: Option<WebhookError>,
    pub links: WebhookLinks,
    /// RFC 3339 UTC, e.g. `2024-05-01T12:00:00Z` (see [`super::rfc3339_utc`]).
    pub created_at: String,
    /// RFC 3339 UTC.
    pub finished_at: String,
    /// Length of the audio, seconds.
    pub duration_s: Option<f64>,
    /// Detected or requested language (ISO 639-1).
    pub language: Option<String>,
}

impl WebhookBody {
    /// The exact bytes to sign and send.
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }
}

/// The delivery id of `event` for `job_id`: derived, not random, so every retry (even after a
/// restart) carries the same id and receivers can deduplicate on it.
pub fn delivery_id(job_id: &str, event: WebhookEvent) -> String {
    let mut hasher = Sha256::new();
    hasher.update(job_id.as_bytes());
    hasher.update([0u8]);
    hasher.update(event.as_str().as_bytes());
    let digest = hex::encode(hasher.finalize());
    format!("dlv_{}", &digest[..32])
}

/// Every header of a webhook request but the transport's own (Host, Content-Length,
/// User-Agent): content type, signature, delivery id (twice) and event.
pub fn webhook_headers(
    secret: &[u8],
    delivery_id: &str,
    event: WebhookEvent,
    timestamp: u64,
    body: &[u8],
) -> [(&'static str, String); 5] {
    [
        ("Content-Type", "application/json".to_owned()),
        (SIGNATURE_HEADER, sign(secret, timestamp, body)),
        (DELIVERY_HEADER, delivery_id.to_owned()),
        (IDEMPOTENCY_HEADER, delivery_id.to_owned()),
        (EVENT_HEADER, event.as_str().to_owned()),
    ]
}

// ---------------------------------------------------------------------------------------------
// Delivery policy
// ---------------------------------------------------------------------------------------------

/// What one delivery attempt's outcome means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    Delivered,
    /// Try again; `after` is the receiver's `Retry-After`, when it gave one.
    Retry {
        #[serde(rename = "after_ms", with = "opt_duration_ms")]
        after: Option<Duration>,
    },
    GiveUp,
}

/// Classifies one attempt: `status` is the HTTP status, `None` for a network error or timeout;
/// `retry_after_header` is the raw `Retry-After` value, if any.
///
/// Redirects are final: following them would let a webhook URL bounce signed bodies anywhere.
/// `Retry-After` is honoured in its delta-seconds form, capped at [`RETRY_AFTER_CAP`]; the
/// HTTP-date form is ignored (the backoff applies) since clocks of the two ends may disagree.
pub fn classify(status: Option<u16>, retry_after_header: Option<&str>) -> Verdict {
    match status {
        Some(200..=299) => Verdict::Delivered,
        None => Verdict::Retry { after: None },
        Some(408 | 429 | 500..=599) => Verdict::Retry {
            after: retry_after_header.and_then(parse_retry_after),
        },
        Some(_) => Verdict::GiveUp,
    }
}

/// A `Retry-After` in delta-seconds, capped; `None` for any other form.
fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // All digits: only overflow can fail the parse, and that is "very long", i.e. the cap.
    let seconds = value.parse::<u64>().unwrap_or(u64::MAX);
    Some(Duration::from_secs(seconds).min(RETRY_AFTER_CAP))
}

/// How the backoff is randomised, so receivers recovering from an outage are not hit by every
/// sender at the same instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Jitter {
    /// Uniform in `[0, d]`: spreads best, but a retry can come almost at once.
    Full,
    /// Uniform in `[d/2, d]`: keeps at least half the backoff.
    Equal,
}

/// When to retry a webhook and when to stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delay after the first failed attempt (before jitter).
    pub base: Duration,
    /// Growth of the delay per attempt.
    pub factor: u32,
    /// Longest delay between two attempts (before jitter).
    pub cap: Duration,
    /// Stop once this long has passed since the first attempt.
    pub give_up_after: Duration,
    /// Stop after this many attempts in all.
    pub max_attempts: u32,
    pub jitter: Jitter,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_secs(1),
            factor: 2,
            cap: Duration::from_secs(300),
            give_up_after: Duration::from_secs(24 * 3600),
            max_attempts: 20,
            jitter: Jitter::Equal,
        }
    }
}

impl RetryPolicy {
    /// The backoff before jitter after `attempt` attempts (1 = the first one failed):
    /// `base * factor^(attempt - 1)`, capped (overflow reads as "past the cap").
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1);
        self.factor
            .max(1)
            .checked_pow(exponent)
            .and_then(|multiplier| self.base.checked_mul(multiplier))
            .map_or(self.cap, |delay| delay.min(self.cap))
    }

    /// The wait before the next attempt after `attempt` attempts, jittered with `rng` (any
    /// uniformly random `u64`; passed in so the policy stays deterministic under test).
    pub fn next_delay(&self, attempt: u32, rng: u64) -> Duration {
        let nanos = u64::try_from(self.backoff(attempt).as_nanos()).unwrap_or(u64::MAX);
        let jittered = match self.jitter {
            Jitter::Full => uniform_up_to(nanos, rng),
            Jitter::Equal => {
                let half = nanos / 2;
                half + uniform_up_to(nanos - half, rng)
            }
        };
        Duration::from_nanos(jittered)
    }

    /// The wait before the next attempt: the receiver's `Retry-After` when it sent one (it knows
    /// its own load), the jittered backoff otherwise.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>, rng: u64) -> Duration {
        retry_after.unwrap_or_else(|| self.next_delay(attempt, rng))
    }

    /// Whether to stop after `attempt` attempts, the first made at `first_attempt_at_ms` and
    /// now being `now_ms` (both unix milliseconds, as in [`DeliveryRecord::at_ms`]).
    pub fn exhausted(&self, attempt: u32, first_attempt_at_ms: u64, now_ms: u64) -> bool {
        let elapsed = Duration::from_millis(now_ms.saturating_sub(first_attempt_at_ms));
        attempt >= self.max_attempts || elapsed >= self.give_up_after
    }

    /// The whole decision after an attempt: [`Verdict::Delivered`] and [`Verdict::GiveUp`] stand;
    /// a retry becomes [`Verdict::GiveUp`] once the policy is exhausted, or else carries the
    /// wait before the next attempt in `after` (always `Some`).
    pub fn decide(
        &self,
        verdict: Verdict,
        attempt: u32,
        first_attempt_at_ms: u64,
        now_ms: u64,
        rng: u64,
    ) -> Verdict {
        match verdict {
            Verdict::Retry { .. } if self.exhausted(attempt, first_attempt_at_ms, now_ms) => {
                Verdict::GiveUp
            }
            Verdict::Retry { after } => Verdict::Retry {
                after: Some(self.delay(attempt, after, rng)),
            },
            other => other,
        }
    }
}

/// A value in `[0, max]` from a uniformly random `rng` (the modulo bias is negligible here).
fn uniform_up_to(max: u64, rng: u64) -> u64 {
    match max.checked_add(1) {
        Some(span) => rng % span,
        None => rng,
    }
}

/// One line of a job's webhook delivery log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    /// 1 for the first attempt.
    pub attempt: u32,
    /// When the attempt was made, unix milliseconds.
    pub at_ms: u64,
    /// The HTTP status, `None` when no response came.
    pub status: Option<u16>,
    /// What went wrong, when something did (network error text, a truncated response body).
    pub error: Option<String>,
    pub verdict: Verdict,
}

/// `Option<Duration>` as whole milliseconds (or `null`) in JSON.
mod opt_duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => s.serialize_some(&u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"whsec_test_secret";
    const BODY: &[u8] = br#"{"event":"job.completed","job_id":"j1"}"#;

    #[test]
    fn hmac_matches_rfc4231_vectors() {
        // Test case 2 (short key) and 6 (key longer than the block, hashed first).
        let short = mac(b"Jefe").chain_update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(short.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let long = mac(&[0xaa; 131])
            .chain_update(b"Test Using Larger Than Block-Size Key - Hash Key First");
        assert_eq!(
            hex::encode(long.finalize().into_bytes()),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn sign_has_the_documented_shape() {
        let header = sign(SECRET, 1_700_000_000, BODY);
        let (t, v1) = header.split_once(',').unwrap();
        assert_eq!(t, "t=1700000000");
        let hex_sig = v1.strip_prefix("v1=").unwrap();
        assert_eq!(hex_sig.len(), 64);
        // Independently computed over "<t>.<body>".
        let mut expected = <HmacSha256 as Mac>::new_from_slice(SECRET).unwrap();
        expected.update(b"1700000000.");
        expected.update(BODY);
        assert_eq!(hex_sig, hex::encode(expected.finalize().into_bytes()));
    }

    #[test]
    fn sign_verify_roundtrip() {
        let header = sign(SECRET, 1_700_000_000, BODY);
        assert_eq!(verify(SECRET, &header, BODY, 1_700_000_000, 300), Ok(()));
        assert_eq!(verify(SECRET, &header, BODY, 1_700_000_100, 300), Ok(()));
    }

    #[test]
    fn tampered_body_is_rejected() {
        let header = sign(SECRET, 1_700_000_000, BODY);
        let tampered = br#"{"event":"job.completed","job_id":"j2"}"#;
        assert_eq!(
            verify(SECRET, &header, tampered, 1_700_000_000, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(SECRET, &header, b"", 1_700_000_000, 300),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn tampered_timestamp_is_rejected() {
        let header = sign(SECRET, 1_700_000_000, BODY);
        let moved = header.replace("t=1700000000", "t=1700000001");
        assert_eq!(
            verify(SECRET, &moved, BODY, 1_700_000_000, 300),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn wrong_secret_is_rejected() {
        let header = sign(b"another secret", 1_700_000_000, BODY);
        let err = verify(SECRET, &header, BODY, 1_700_000_000, 300).unwrap_err();
        assert_eq!(err, SignatureError::Mismatch);
        assert_eq!(err.code(), "webhook.signature_mismatch");
        assert!(!err.retryable());
    }

    #[test]
    fn tolerance_window_applies_both_ways() {
        let t = 1_700_000_000;
        let header = sign(SECRET, t, BODY);
        assert_eq!(verify(SECRET, &header, BODY, t + 300, 300), Ok(()));
        assert_eq!(verify(SECRET, &header, BODY, t - 300, 300), Ok(()));
        let late = verify(SECRET, &header, BODY, t + 301, 300).unwrap_err();
        assert_eq!(
            late,
            SignatureError::OutsideTolerance {
                timestamp: t,
                now: t + 301,
                tolerance_s: 300
            }
        );
        assert_eq!(late.code(), "webhook.signature_expired");
        assert!(verify(SECRET, &header, BODY, t - 301, 300).is_err());
        // Tolerance zero: only the exact second.
        assert_eq!(verify(SECRET, &header, BODY, t, 0), Ok(()));
        assert!(verify(SECRET, &header, BODY, t + 1, 0).is_err());
    }

    #[test]
    fn rotation_accepts_any_matching_v1() {
        let old: &[u8] = b"old secret";
        let new: &[u8] = b"new secret";
        let header = sign_with_all(&[new, old], 1_700_000_000, BODY);
        assert_eq!(header.matches("v1=").count(), 2);
        assert_eq!(verify(old, &header, BODY, 1_700_000_000, 300), Ok(()));
        assert_eq!(verify(new, &header, BODY, 1_700_000_000, 300), Ok(()));
        assert_eq!(
            verify(b"third", &header, BODY, 1_700_000_000, 300),
            Err(SignatureError::Mismatch)
        );
        // Garbage and unknown schemes next to a good entry do not hide it.
        let v1 = v1(old, 1_700_000_000, BODY);
        let messy = format!(" t=1700000000 , v0=abc, v1=zz-not-hex, v1=00, v1={v1} ,v2=x");
        assert_eq!(verify(old, &messy, BODY, 1_700_000_000, 300), Ok(()));
    }

    #[test]
    fn malformed_headers_are_errors_not_panics() {
        let now = 1_700_000_000;
        let cases: &[(&str, &str)] = &[
            ("", "webhook.signature_no_timestamp"),
            ("v1=abcd", "webhook.signature_no_timestamp"),
            ("t=1700000000", "webhook.signature_missing"),
            ("t=1700000000,v0=abcd", "webhook.signature_missing"),
            ("t=soon,v1=abcd", "webhook.signature_malformed"),
            ("t=-5,v1=abcd", "webhook.signature_malformed"),
            ("t=1,t=2,v1=abcd", "webhook.signature_malformed"),
            ("t=1700000000,garbage", "webhook.signature_malformed"),
            ("t=1700000000,v1=", "webhook.signature_mismatch"),
            ("t=1700000000,v1=é", "webhook.signature_mismatch"),
        ];
        for (header, code) in cases {
            let err = verify(SECRET, header, BODY, now, 300).unwrap_err();
            assert_eq!(err.code(), *code, "header {header:?}");
        }
        let many = format!("t=1{}", ",v1=00".repeat(MAX_SIGNATURES + 1));
        assert_eq!(
            verify(SECRET, &many, BODY, now, 300).unwrap_err().code(),
            "webhook.signature_malformed"
        );
        let long = format!("t=1,v1={}", "a".repeat(MAX_SIGNATURE_HEADER_LEN));
        assert_eq!(
            verify(SECRET, &long, BODY, now, 300).unwrap_err().code(),
            "webhook.signature_malformed"
        );
    }

    #[test]
    fn headers_carry_stable_delivery_id() {
        let id = delivery_id("job-42", WebhookEvent::JobCompleted);
        assert_eq!(id, delivery_id("job-42", WebhookEvent::JobCompleted));
        assert_ne!(id, delivery_id("job-42", WebhookEvent::JobFailed));
        assert_ne!(id, delivery_id("job-43", WebhookEvent::JobCompleted));
        assert!(id.starts_with("dlv_") && id.len() == 36);

        let headers = webhook_headers(SECRET, &id, WebhookEvent::JobFailed, 1_700_000_000, BODY);
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        assert_eq!(get("Ytcaption-Delivery"), id);
        assert_eq!(get("Idempotency-Key"), id);
        assert_eq!(get("Ytcaption-Event"), "job.failed");
        assert_eq!(get("Content-Type"), "application/json");
        verify(SECRET, &get("Ytcaption-Signature"), BODY, 1_700_000_000, 0).unwrap();
    }

    fn sample_body() -> WebhookBody {
        WebhookBody {
            event: WebhookEvent::JobFailed,
            job_id: "j-1".into(),
            status: JobOutcome::Cancelled,
            error: Some(WebhookError {
                code: "job.cancelled".into(),
                message: "cancelled by the client".into(),
            }),
            links: WebhookLinks {
                job: "https://cap.example/v1/jobs/j-1".into(),
                transcript: BTreeMap::new(),
            },
            created_at: "2023-11-14T22:13:20Z".into(),
            finished_at: "2023-11-14T22:14:00Z".into(),
            duration_s: None,
            language: None,
        }
    }

    #[test]
    fn body_field_names_are_stable() {
        let json: serde_json::Value =
            serde_json::from_slice(&sample_body().to_json().unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "event": "job.failed",
                "job_id": "j-1",
                "status": "cancelled",
                "error": {"code": "job.cancelled", "message": "cancelled by the client"},
                "links": {"job": "https://cap.example/v1/jobs/j-1", "transcript": {}},
                "created_at": "2023-11-14T22:13:20Z",
                "finished_at": "2023-11-14T22:14:00Z",
                "duration_s": null,
                "language": null
            })
        );
        let back: WebhookBody = serde_json::from_value(json).unwrap();
        assert_eq!(back, sample_body());
        assert_eq!(
            WebhookEvent::for_status(JobOutcome::Completed),
            WebhookEvent::JobCompleted
        );
        assert_eq!(
            WebhookEvent::for_status(JobOutcome::Cancelled),
            WebhookEvent::JobFailed
        );
    }

    #[test]
    fn classify_table() {
        let retry = |after: Option<u64>| Verdict::Retry {
            after: after.map(Duration::from_secs),
        };
        let cases: &[(Option<u16>, Option<&str>, Verdict)] = &[
            (Some(200), None, Verdict::Delivered),
            (Some(201), None, Verdict::Delivered),
            (Some(204), Some("30"), Verdict::Delivered),
            (Some(299), None, Verdict::Delivered),
            (None, None, retry(None)),
            (None, Some("30"), retry(None)),
            (Some(408), None, retry(None)),
            (Some(429), Some("30"), retry(Some(30))),
            (Some(429), Some(" 7 "), retry(Some(7))),
            (Some(429), Some("0"), retry(Some(0))),
            (Some(503), Some("120"), retry(Some(120))),
            (Some(503), Some("999999"), retry(Some(3600))),
            (
                Some(503),
                Some("99999999999999999999999"),
                retry(Some(3600)),
            ),
            (
                Some(503),
                Some("Wed, 21 Oct 2015 07:28:00 GMT"),
                retry(None),
            ),
            (Some(503), Some("-5"), retry(None)),
            (Some(503), Some(""), retry(None)),
            (Some(500), None, retry(None)),
            (Some(599), None, retry(None)),
            (Some(301), None, Verdict::GiveUp),
            (Some(302), Some("5"), Verdict::GiveUp),
            (Some(307), None, Verdict::GiveUp),
            (Some(400), None, Verdict::GiveUp),
            (Some(401), None, Verdict::GiveUp),
            (Some(404), Some("5"), Verdict::GiveUp),
            (Some(410), None, Verdict::GiveUp),
            (Some(100), None, Verdict::GiveUp),
            (Some(600), None, Verdict::GiveUp),
        ];
        for (status, retry_after, expected) in cases {
            assert_eq!(
                classify(*status, *retry_after),
                *expected,
                "status {status:?}, Retry-After {retry_after:?}"
            );
        }
    }

    #[test]
    fn backoff_grows_then_caps() {
        let policy = RetryPolicy::default();
        let secs: Vec<u64> = (1..=12).map(|a| policy.backoff(a).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(policy.backoff(0), Duration::from_secs(1));
        // Huge attempt counts overflow the multiplication: still the cap, no panic.
        assert_eq!(policy.backoff(u32::MAX), policy.cap);
        let huge = RetryPolicy {
            base: Duration::MAX,
            cap: Duration::MAX,
            ..RetryPolicy::default()
        };
        assert_eq!(huge.backoff(3), Duration::MAX);
        let _ = huge.next_delay(3, u64::MAX);
    }

    #[test]
    fn jitter_stays_in_its_band() {
        let equal = RetryPolicy::default();
        let full = RetryPolicy {
            jitter: Jitter::Full,
            ..RetryPolicy::default()
        };
        for attempt in 1..=15 {
            let d = equal.backoff(attempt);
            for rng in [0, 1, 12_345, 987_654_321_987, u64::MAX / 3, u64::MAX] {
                let e = equal.next_delay(attempt, rng);
                assert!(
                    e >= d / 2 && e <= d,
                    "equal {attempt} {rng}: {e:?} vs {d:?}"
                );
                let f = full.next_delay(attempt, rng);
                assert!(f <= d, "full {attempt} {rng}: {f:?} vs {d:?}");
            }
        }
        // Different random inputs really spread the delays.
        let spread: std::collections::HashSet<Duration> = (0..50u64)
            .map(|i| equal.next_delay(8, i.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
            .collect();
        assert!(spread.len() > 40);
        assert_eq!(full.next_delay(5, 0), Duration::ZERO);
        assert_eq!(equal.next_delay(5, 0), Duration::from_secs(8));
    }

    #[test]
    fn gives_up_on_attempts_or_age() {
        let policy = RetryPolicy::default();
        let start = 1_700_000_000_000;
        assert!(!policy.exhausted(1, start, start));
        assert!(!policy.exhausted(19, start, start + 3_600_000));
        assert!(policy.exhausted(20, start, start + 3_600_000));
        let day = 24 * 3_600_000;
        assert!(!policy.exhausted(3, start, start + day - 1));
        assert!(policy.exhausted(3, start, start + day));
        // A clock that went backwards is not "exhausted".
        assert!(!policy.exhausted(3, start, start - 10_000));
    }

    #[test]
    fn decide_combines_verdict_and_policy() {
        let policy = RetryPolicy::default();
        let start = 1_700_000_000_000;
        assert_eq!(
            policy.decide(Verdict::Delivered, 20, start, start, 0),
            Verdict::Delivered
        );
        assert_eq!(
            policy.decide(Verdict::GiveUp, 1, start, start, 0),
            Verdict::GiveUp
        );
        assert_eq!(
            policy.decide(Verdict::Retry { after: None }, 3, start, start, 0),
            Verdict::Retry {
                after: Some(Duration::from_secs(2))
            }
        );
        let told = Verdict::Retry {
            after: Some(Duration::from_secs(42)),
        };
        assert_eq!(policy.decide(told, 3, start, start, 0), told);
        assert_eq!(policy.decide(told, 20, start, start, 0), Verdict::GiveUp);
    }

    #[test]
    fn delivery_record_serialises() {
        let record = DeliveryRecord {
            attempt: 2,
            at_ms: 1_700_000_000_123,
            status: Some(503),
            error: None,
            verdict: Verdict::Retry {
                after: Some(Duration::from_millis(1500)),
            },
        };
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "attempt": 2, "at_ms": 1_700_000_000_123u64, "status": 503, "error": null,
                "verdict": {"verdict": "retry", "after_ms": 1500}
            })
        );
        assert_eq!(
            serde_json::from_value::<DeliveryRecord>(json).unwrap(),
            record
        );
        let gave_up = serde_json::to_value(Verdict::GiveUp).unwrap();
        assert_eq!(gave_up, serde_json::json!({"verdict": "give_up"}));
    }
}
