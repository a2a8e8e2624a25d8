//! Who is asking, and whether they may: `Authorization: Bearer <key>` against the configured
//! keys (stored hashed), roles, and a per-key token bucket.
//!
//! Without configured keys every request is the anonymous admin (owner `anonymous`); the
//! configuration only allows that on a loopback address.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::HeaderValue;
use ytcaption_config::{ApiKey, Auth, Role};
use ytcaption_protocol::JobState;

use super::problem::Problem;

/// Owner of jobs submitted without API keys.
pub const ANONYMOUS: &str = "anonymous";

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The key id, or [`ANONYMOUS`]; jobs are owned by it.
    pub owner: String,
    pub role: Role,
    /// Limits of the key; `None` for the anonymous admin (unlimited).
    pub limits: Option<KeyLimits>,
}

/// What one key may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyLimits {
    pub rate_per_minute: u32,
    pub max_concurrent_jobs: u32,
}

impl Principal {
    pub fn anonymous() -> Principal {
        Principal {
            owner: ANONYMOUS.to_owned(),
            role: Role::Admin,
            limits: None,
        }
    }

    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Admins see every job; users only their own.
    pub fn can_see(&self, job: &JobState) -> bool {
        self.is_admin() || job.spec.owner == self.owner
    }

    /// Refuses non-admins with 403.
    pub fn require_admin(&self) -> Result<(), Problem> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(Problem::forbidden("this endpoint needs an admin key"))
        }
    }
}

/// Why a request could not be authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("an API key is required: send Authorization: Bearer <key>")]
    Missing,
    #[error("the Authorization header must be \"Bearer <key>\"")]
    Malformed,
    #[error("the API key is not valid")]
    Unknown,
    #[error("this node has no API keys and anonymous access is disabled (auth.allow_anonymous_loopback)")]
    Disabled,
}

impl AuthError {
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "auth.missing_key",
            AuthError::Malformed => "auth.malformed",
            AuthError::Unknown => "auth.bad_key",
            AuthError::Disabled => "auth.disabled",
        }
    }

    pub fn retryable(&self) -> bool {
        false
    }
}

impl From<AuthError> for Problem {
    fn from(error: AuthError) -> Problem {
        let problem = Problem::unauthorized(error.code(), error.to_string());
        if error.retryable() {
            problem.retry_after(super::problem::RETRY_AFTER_SECONDS)
        } else {
            problem
        }
    }
}

/// Matches presented keys against the configured ones.
#[derive(Debug, Clone)]
pub struct Authenticator {
    keys: Vec<ApiKey>,
    /// Whether, without keys, requests act as the anonymous admin (else they are refused).
    anonymous: bool,
}

impl Authenticator {
    pub fn new(auth: &Auth) -> Authenticator {
        Authenticator {
            keys: auth.keys.clone(),
            anonymous: auth.allow_anonymous_loopback,
        }
    }

    /// True when no keys are configured and anonymous access is allowed: everyone is the
    /// anonymous admin.
    pub fn is_open(&self) -> bool {
        self.keys.is_empty() && self.anonymous
    }

    /// The caller of a request with this `Authorization` header.
    pub fn authenticate(&self, header: Option<&HeaderValue>) -> Result<Principal, AuthError> {
        if self.is_open() {
            return Ok(Principal::anonymous());
        }
        if self.keys.is_empty() {
            return Err(AuthError::Disabled);
        }
        let header = header.ok_or(AuthError::Missing)?;
        let text = header.to_str().map_err(|_| AuthError::Malformed)?;
        let (scheme, key) = text.split_once(' ').ok_or(AuthError::Malformed)?;
        let key = key.trim();
        if !scheme.eq_ignore_ascii_case("bearer") || key.is_empty() {
            return Err(AuthError::Malformed);
        }
        // Every key is compared (in constant time each), so the answer time does not tell
        // which position in the list matched.
        let mut found = None;
        for candidate in &self.keys {
            if candidate.matches(key) && found.is_none() {
                found = Some(candidate);
            }
        }
        let key = found.ok_or(AuthError::Unknown)?;
        Ok(Principal {
            owner: key.id.clone(),
            role: key.role,
            limits: Some(KeyLimits {
                rate_per_minute: key.rate_per_minute,
                max_concurrent_jobs: key.max_concurrent_jobs,
            }),
        })
    }
}

/// One key's bucket: `tokens` left as of `at`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Per-key token buckets. A bucket holds up to `rate_per_minute` tokens and refills at
/// `rate_per_minute / 60` tokens a second; each request takes one. So a key may burst up to
/// a minute's allowance, and sustain exactly its rate.
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// Buckets kept before idle full ones are dropped (bounds memory with many keys).
const MAX_BUCKETS: usize = 10_000;

impl RateLimiter {
    /// Takes one token from `key`'s bucket at time `now`; `Err(wait)` when empty, with the
    /// time until the next token.
    pub fn check(&self, key: &str, rate_per_minute: u32, now: Instant) -> Result<(), Duration> {
        let capacity = f64::from(rate_per_minute.max(1));
        let per_second = capacity / 60.0;
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(key) {
            // Full buckets carry no state worth keeping: forget them.
            buckets.retain(|_, bucket| {
                bucket.tokens + now.saturating_duration_since(bucket.at).as_secs_f64() * per_second
                    < capacity
            });
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: capacity,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_second).min(capacity);
        bucket.at = now.max(bucket.at);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / per_second))
        }
    }

    /// Applies the caller's limit: 429 with `Retry-After` (whole seconds, rounded up) when
    /// the bucket is empty. The anonymous admin is not limited.
    pub fn admit(&self, principal: &Principal, now: Instant) -> Result<(), Problem> {
        let Some(limits) = principal.limits else {
            return Ok(());
        };
        self.check(&principal.owner, limits.rate_per_minute, now)
            .map_err(|wait| {
                let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                Problem::too_many(
                    "rate.limited",
                    format!(
                        "rate limit of {} requests per minute reached; retry in {seconds} s",
                        limits.rate_per_minute
                    ),
                    seconds,
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ytcaption_config::hash_api_key;

    fn keys() -> Authenticator {
        Authenticator::new(&Auth {
            keys: vec![
                ApiKey {
                    id: "alice".into(),
                    hash: hash_api_key("alice-secret"),
                    role: Role::User,
                    rate_per_minute: 60,
                    max_concurrent_jobs: 2,
                },
                ApiKey {
                    id: "ops".into(),
                    hash: hash_api_key("ops-secret"),
                    role: Role::Admin,
                    rate_per_minute: 600,
                    max_concurrent_jobs: 100,
                },
            ],
            ..Auth::default()
        })
    }

    fn header(text: &str) -> HeaderValue {
        HeaderValue::from_str(text).unwrap()
    }

    #[test]
    fn bearer_keys_resolve_to_their_id_and_role() {
        let auth = keys();
        let alice = auth
            .authenticate(Some(&header("Bearer alice-secret")))
            .unwrap();
        assert_eq!(alice.owner, "alice");
        assert!(!alice.is_admin());
        assert_eq!(alice.limits.unwrap().max_concurrent_jobs, 2);
        let ops = auth
            .authenticate(Some(&header("bearer ops-secret")))
            .unwrap();
        assert!(ops.is_admin());
        assert!(ops.require_admin().is_ok());
        assert_eq!(alice.require_admin().unwrap_err().status, 403);
    }

    #[test]
    fn missing_malformed_and_wrong_keys_are_401_with_distinct_codes() {
        let auth = keys();
        assert_eq!(auth.authenticate(None), Err(AuthError::Missing));
        for bad in ["alice-secret", "Basic YWxpY2U6eA==", "Bearer ", "Bearer"] {
            assert_eq!(
                auth.authenticate(Some(&header(bad))),
                Err(AuthError::Malformed),
                "{bad}"
            );
        }
        assert_eq!(
            auth.authenticate(Some(&header("Bearer alice-secreT"))),
            Err(AuthError::Unknown)
        );
        let problem = Problem::from(AuthError::Unknown);
        assert_eq!(
            (problem.status.as_u16(), problem.code.as_ref()),
            (401, "auth.bad_key")
        );
    }

    #[test]
    fn without_keys_everyone_is_the_anonymous_admin() {
        let auth = Authenticator::new(&Auth::default());
        assert!(auth.is_open());
        let principal = auth.authenticate(Some(&header("Bearer whatever"))).unwrap();
        assert_eq!(principal, Principal::anonymous());
        assert_eq!(principal.owner, ANONYMOUS);
        assert!(principal.is_admin());
        let closed = Authenticator::new(&Auth {
            allow_anonymous_loopback: false,
            ..Auth::default()
        });
        assert!(!closed.is_open());
        assert_eq!(closed.authenticate(None), Err(AuthError::Disabled));
        assert_eq!(Problem::from(AuthError::Disabled).status, 401);
    }

    #[test]
    fn users_see_only_their_jobs() {
        use ytcaption_protocol::{Format, JobId, JobSpec, Source, Task};
        let job = JobState::new(
            JobId::new(1, 2),
            JobSpec {
                source: Source::Url {
                    url: "https://example.com/a.mp3".into(),
                },
                language: None,
                task: Task::Transcribe,
                model: None,
                formats: vec![Format::Txt],
                webhook_url: None,
                email: None,
                prompt: None,
                word_timestamps: true,
                owner: "alice".into(),
            },
            1,
        );
        let auth = keys();
        let alice = auth
            .authenticate(Some(&header("Bearer alice-secret")))
            .unwrap();
        let ops = auth
            .authenticate(Some(&header("Bearer ops-secret")))
            .unwrap();
        let bob = Principal {
            owner: "bob".into(),
            ..alice.clone()
        };
        assert!(alice.can_see(&job));
        assert!(ops.can_see(&job));
        assert!(!bob.can_see(&job));
    }

    #[test]
    fn the_bucket_allows_a_burst_then_refills_at_the_rate() {
        let limiter = RateLimiter::default();
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.check("k", 3, start), Ok(()));
        }
        // Empty: 3 per minute is one token every 20 s.
        let wait = limiter.check("k", 3, start).unwrap_err();
        assert!((19.9..=20.0).contains(&wait.as_secs_f64()), "{wait:?}");
        // Another key has its own bucket.
        assert_eq!(limiter.check("other", 3, start), Ok(()));
        // 10 s later half a token is back: still refused, 10 s to go.
        let wait = limiter
            .check("k", 3, start + Duration::from_secs(10))
            .unwrap_err();
        assert!((9.9..=10.0).contains(&wait.as_secs_f64()), "{wait:?}");
        assert_eq!(
            limiter.check("k", 3, start + Duration::from_secs(20)),
            Ok(())
        );
        // A long pause refills only up to the capacity.
        let later = start + Duration::from_secs(3600);
        for _ in 0..3 {
            assert_eq!(limiter.check("k", 3, later), Ok(()));
        }
        assert!(limiter.check("k", 3, later).is_err());
    }

    #[test]
    fn admit_answers_429_with_retry_after_and_spares_the_anonymous_admin() {
        let limiter = RateLimiter::default();
        let now = Instant::now();
        let principal = Principal {
            owner: "alice".into(),
            role: Role::User,
            limits: Some(KeyLimits {
                rate_per_minute: 1,
                max_concurrent_jobs: 1,
            }),
        };
        assert!(limiter.admit(&principal, now).is_ok());
        let problem = limiter.admit(&principal, now).unwrap_err();
        assert_eq!(problem.status, 429);
        assert_eq!(problem.retry_after, Some(60));
        for _ in 0..1000 {
            assert!(limiter.admit(&Principal::anonymous(), now).is_ok());
        }
    }
}
