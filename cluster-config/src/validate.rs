//! Semantic checks on a parsed [`Config`]. Every check runs and records its problem with the
//! key path, so one run reports everything wrong; nothing here stops at the first error.

use std::collections::HashMap;
use std::time::Duration;

use crate::error::{ConfigErrors, ConfigIssue};
use crate::keys::parse_key_hash;
use crate::net::Cidr;
use crate::schema::{
    Auth, Backend, Cluster, Config, Downloader, Http, Jobs, Log, Notify, Retry, Smtp, Step,
    Storage, Supervisor, Transcriber,
};

/// Shortest accepted webhook signing secret; shorter ones are guessable.
pub const MIN_WEBHOOK_SECRET_LEN: usize = 16;

/// Collects problems as the checks run.
#[derive(Debug, Default)]
struct Checker {
    issues: Vec<ConfigIssue>,
}

impl Checker {
    fn fail(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.issues.push(ConfigIssue::Invalid {
            path: path.into(),
            message: message.into(),
        });
    }

    fn positive_duration(&mut self, path: &str, value: Duration) {
        if value.is_zero() {
            self.fail(path, "must be longer than zero");
        }
    }

    fn positive(&mut self, path: &str, value: u64) {
        if value == 0 {
            self.fail(path, "must be greater than zero");
        }
    }

    fn not_empty(&mut self, path: &str, value: &str) {
        if value.trim().is_empty() {
            self.fail(path, "must not be empty");
        }
    }

    /// Names that end up in logs, metric labels and file names.
    fn name(&mut self, path: &str, value: &str) {
        if value.is_empty() {
            self.fail(path, "must not be empty");
        } else if value.len() > 64 || !value.chars().all(is_name_char) {
            self.fail(path, "must be 1-64 characters of A-Z a-z 0-9 . _ -");
        }
    }

    fn http_url(&mut self, path: &str, value: &str) {
        if !is_http_url(value) {
            self.fail(path, format!("`{value}` is not an http:// or https:// URL"));
        }
    }

    fn cidrs(&mut self, path: &str, values: &[String]) {
        for (i, value) in values.iter().enumerate() {
            if let Err(e) = value.parse::<Cidr>() {
                self.fail(format!("{path}[{i}]"), e.to_string());
            }
        }
    }

    /// Both or neither of a credential pair.
    fn paired(&mut self, path: &str, a: (&str, bool), b: (&str, bool)) {
        if a.1 != b.1 {
            let (set, missing) = if a.1 { (a.0, b.0) } else { (b.0, a.0) };
            self.fail(
                format!("{path}.{missing}"),
                format!("required when {path}.{set} is set"),
            );
        }
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// `http://` or `https://` followed by a non-empty host and no whitespace.
fn is_http_url(value: &str) -> bool {
    let rest = value
        .strip_prefix("https://")
        .or_else(|| value.strip_prefix("http://"));
    match rest {
        Some(rest) => {
            let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
            !authority.is_empty()
                && !authority.starts_with(':')
                && !value.chars().any(char::is_whitespace)
        }
        None => false,
    }
}

/// `user@example.com` or `Name <user@example.com>`.
fn is_mail_address(value: &str) -> bool {
    let value = value.trim();
    let addr = match (value.find('<'), value.strip_suffix('>')) {
        (Some(open), Some(inner)) => &inner[open + 1..],
        (None, None) => value,
        _ => return false,
    };
    match addr.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !addr
                    .chars()
                    .any(|c| c.is_whitespace() || c == '<' || c == '>')
        }
        None => false,
    }
}

/// A DNS name such as `youtube.com`: dot-separated labels of letters, digits and hyphens.
fn is_hostname(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 253
        && value.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// S3 bucket naming rules: 3-63 of lowercase letters, digits, `.` and `-`, alphanumeric ends.
fn is_bucket_name(value: &str) -> bool {
    (3..=63).contains(&value.len())
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
        && value.starts_with(|c: char| c.is_ascii_alphanumeric())
        && value.ends_with(|c: char| c.is_ascii_alphanumeric())
}

const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// `level` or `target=level` directives, comma-separated. A bare word that is not a level is
/// refused even though `tracing` reads it as a target: it is almost always a misspelt level.
fn is_log_filter(value: &str) -> bool {
    let is_level = |s: &str| LEVELS.contains(&s.trim().to_ascii_lowercase().as_str());
    !value.trim().is_empty()
        && value
            .split(',')
            .all(|directive| match directive.split_once('=') {
                Some((target, level)) => {
                    !target.trim().is_empty()
                        && target
                            .trim()
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '-'))
                        && is_level(level)
                }
                None => is_level(directive),
            })
}

impl Config {
    /// Checks every value and returns all problems found, each with its key path.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut c = Checker::default();
        c.name("node_name", &self.node_name);
        for (path, dir) in [
            ("data_dir", &self.data_dir),
            ("models_dir", &self.models_dir),
        ] {
            if dir.as_ref().is_some_and(|d| d.as_os_str().is_empty()) {
                c.fail(path, "must not be empty (leave it out for the default)");
            }
        }
        check_http(&mut c, &self.http, &self.auth);
        check_auth(&mut c, &self.auth);
        check_jobs(&mut c, &self.jobs);
        check_transcriber(&mut c, &self.transcriber);
        check_downloader(&mut c, &self.downloader);
        check_storage(&mut c, &self.storage);
        check_notify(&mut c, &self.notify);
        check_supervisor(&mut c, &self.supervisor);
        check_cluster(&mut c, &self.cluster);
        check_log(&mut c, &self.log);
        ConfigErrors::check(c.issues)
    }
}

fn check_http(c: &mut Checker, http: &Http, auth: &Auth) {
    if !http.listen.ip().is_loopback() && auth.keys.is_empty() {
        c.fail(
            "http.listen",
            format!(
                "binding {} without API keys is refused; add [[auth.keys]] or listen on 127.0.0.1",
                http.listen
            ),
        );
    }
    if !auth.allow_anonymous_loopback && auth.keys.is_empty() {
        c.fail(
            "auth.allow_anonymous_loopback",
            "false with no [[auth.keys]] would refuse every request; add a key or allow anonymous access on loopback",
        );
    }
    if let Some(url) = &http.public_url {
        c.http_url("http.public_url", url);
    }
    c.positive("http.max_body", http.max_body.get());
    c.positive("http.max_json_body", http.max_json_body.get());
    if http.max_json_body > http.max_body {
        c.fail("http.max_json_body", "must not exceed http.max_body");
    }
    c.positive("http.max_header_bytes", http.max_header_bytes as u64);
    c.positive("http.max_connections", http.max_connections as u64);
    c.positive_duration("http.request_timeout", http.request_timeout);
    c.positive_duration("http.sync_timeout", http.sync_timeout);
}

fn check_auth(c: &mut Checker, auth: &Auth) {
    let mut ids: HashMap<&str, usize> = HashMap::new();
    let mut hashes: HashMap<[u8; 32], usize> = HashMap::new();
    for (i, key) in auth.keys.iter().enumerate() {
        let path = format!("auth.keys[{i}]");
        c.name(&format!("{path}.id"), &key.id);
        if let Some(first) = ids.insert(&key.id, i).filter(|_| !key.id.is_empty()) {
            c.fail(
                format!("{path}.id"),
                format!("duplicate key id \"{}\" (also auth.keys[{first}])", key.id),
            );
        }
        match parse_key_hash(&key.hash) {
            None => c.fail(format!("{path}.hash"), "must be sha256:<64 hex>"),
            Some(digest) => {
                if let Some(first) = hashes.insert(digest, i) {
                    c.fail(
                        format!("{path}.hash"),
                        format!("same key as auth.keys[{first}]"),
                    );
                }
            }
        }
        c.positive(
            &format!("{path}.rate_per_minute"),
            key.rate_per_minute.into(),
        );
        c.positive(
            &format!("{path}.max_concurrent_jobs"),
            key.max_concurrent_jobs.into(),
        );
    }
}

fn check_step(c: &mut Checker, path: &str, step: &Step) {
    c.positive(&format!("{path}.attempts"), step.attempts.into());
    c.positive_duration(&format!("{path}.timeout"), step.timeout);
}

fn check_retry(c: &mut Checker, retry: &Retry) {
    c.positive_duration("jobs.retry.base", retry.base);
    if retry.cap < retry.base {
        c.fail("jobs.retry.cap", "must not be shorter than jobs.retry.base");
    }
    if !(retry.factor.is_finite() && retry.factor >= 1.0) {
        c.fail(
            "jobs.retry.factor",
            "must be at least 1 (delays never shrink)",
        );
    }
    if !(0.0..=1.0).contains(&retry.jitter) {
        c.fail("jobs.retry.jitter", "must be between 0 and 1 (a fraction)");
    }
}

fn check_jobs(c: &mut Checker, jobs: &Jobs) {
    c.positive("jobs.max_queued", jobs.max_queued as u64);
    c.positive("jobs.max_active", jobs.max_active as u64);
    c.positive_duration("jobs.idempotency_ttl", jobs.idempotency_ttl);
    c.positive_duration("jobs.retention", jobs.retention);
    c.positive_duration("jobs.sweep_interval", jobs.sweep_interval);
    check_retry(c, &jobs.retry);
    check_step(c, "jobs.download", &jobs.download);
    check_step(c, "jobs.transcribe", &jobs.transcribe);
    check_step(c, "jobs.store", &jobs.store);
    check_step(c, "jobs.notify", &jobs.notify);
    let per_second = jobs.transcribe_timeout_per_audio_second;
    if !(per_second.is_finite() && per_second > 0.0) {
        c.fail(
            "jobs.transcribe_timeout_per_audio_second",
            "must be a number greater than zero",
        );
    }
    c.positive_duration("jobs.transcribe_timeout_min", jobs.transcribe_timeout_min);
}

fn check_transcriber(c: &mut Checker, t: &Transcriber) {
    c.name("transcriber.model", &t.model);
    c.positive("transcriber.batch_size", t.batch_size as u64);
    c.positive_duration("transcriber.max_duration", t.max_duration);
    if t.split_chunk < Duration::from_secs(10) {
        c.fail("transcriber.split_chunk", "must be at least 10s");
    }
    if t.split_overlap * 4 > t.split_chunk {
        c.fail(
            "transcriber.split_overlap",
            "must be at most a quarter of transcriber.split_chunk",
        );
    }
}

fn check_downloader(c: &mut Checker, d: &Downloader) {
    c.positive("downloader.workers", d.workers as u64);
    c.positive("downloader.max_bytes", d.max_bytes.get());
    c.positive_duration("downloader.max_duration", d.max_duration);
    c.positive_duration("downloader.connect_timeout", d.connect_timeout);
    c.positive_duration("downloader.read_timeout", d.read_timeout);
    c.positive_duration("downloader.ytdlp_timeout", d.ytdlp_timeout);
    c.cidrs("downloader.allow_private", &d.allow_private);
    if d.ytdlp_path.as_os_str().is_empty() {
        c.fail("downloader.ytdlp_path", "must not be empty");
    }
    if d.cookies_file
        .as_ref()
        .is_some_and(|p| p.as_os_str().is_empty())
    {
        c.fail(
            "downloader.cookies_file",
            "must not be empty (leave it out for none)",
        );
    }
    for (i, host) in d.ytdlp_hosts.iter().enumerate() {
        if !is_hostname(host) {
            c.fail(
                format!("downloader.ytdlp_hosts[{i}]"),
                format!("`{host}` is not a host name such as youtube.com"),
            );
        }
    }
}

fn check_storage(c: &mut Checker, s: &Storage) {
    if s.local
        .path
        .as_ref()
        .is_some_and(|p| p.as_os_str().is_empty())
    {
        c.fail(
            "storage.local.path",
            "must not be empty (leave it out for the default)",
        );
    }
    let s3 = &s.s3;
    if s.backend == Backend::S3 && s3.endpoint.trim().is_empty() {
        c.fail(
            "storage.s3.endpoint",
            "required when storage.backend = \"s3\"",
        );
    } else if !s3.endpoint.is_empty() {
        c.http_url("storage.s3.endpoint", &s3.endpoint);
    }
    c.not_empty("storage.s3.region", &s3.region);
    if !is_bucket_name(&s3.bucket) {
        c.fail(
            "storage.s3.bucket",
            "must be 3-63 characters of a-z 0-9 . - starting and ending with a letter or digit",
        );
    }
    c.paired(
        "storage.s3",
        ("access_key", s3.access_key.is_some()),
        ("secret_key", s3.secret_key.is_some()),
    );
    c.positive_duration("storage.s3.timeout", s3.timeout);
}

fn check_notify(c: &mut Checker, n: &Notify) {
    if let Some(secret) = &n.webhook_secret {
        if secret.len() < MIN_WEBHOOK_SECRET_LEN {
            c.fail(
                "notify.webhook_secret",
                format!("must be at least {MIN_WEBHOOK_SECRET_LEN} characters"),
            );
        }
    }
    c.positive_duration("notify.webhook_timeout", n.webhook_timeout);
    c.positive_duration("notify.webhook_give_up_after", n.webhook_give_up_after);
    c.positive("notify.webhook_max_attempts", n.webhook_max_attempts.into());
    c.cidrs("notify.allow_private", &n.allow_private);
    if let Some(smtp) = &n.smtp {
        check_smtp(c, smtp);
    }
}

fn check_smtp(c: &mut Checker, smtp: &Smtp) {
    if !is_hostname(&smtp.host) && smtp.host.parse::<std::net::IpAddr>().is_err() {
        c.fail("notify.smtp.host", "must be a host name or IP address");
    }
    c.positive("notify.smtp.port", smtp.port.into());
    if !is_mail_address(&smtp.from) {
        c.fail(
            "notify.smtp.from",
            format!(
                "`{}` is not an address such as ytcaption@example.com or \"Name <addr@example.com>\"",
                smtp.from
            ),
        );
    }
    c.paired(
        "notify.smtp",
        ("username", smtp.username.is_some()),
        ("password", smtp.password.is_some()),
    );
    c.positive_duration("notify.smtp.timeout", smtp.timeout);
}

fn check_cluster(c: &mut Checker, k: &Cluster) {
    for (path, value) in [
        ("cluster.heartbeat_interval", k.heartbeat_interval),
        ("cluster.suspect_after", k.suspect_after),
        ("cluster.down_after", k.down_after),
        ("cluster.reconnect_base", k.reconnect_base),
        ("cluster.call_timeout", k.call_timeout),
    ] {
        c.positive_duration(path, value);
    }
    if k.suspect_after < k.heartbeat_interval {
        c.fail(
            "cluster.suspect_after",
            "must not be shorter than cluster.heartbeat_interval",
        );
    }
    if k.down_after < k.suspect_after {
        c.fail(
            "cluster.down_after",
            "must not be shorter than cluster.suspect_after",
        );
    }
    if k.reconnect_cap < k.reconnect_base {
        c.fail(
            "cluster.reconnect_cap",
            "must not be shorter than cluster.reconnect_base",
        );
    }
    c.positive(
        "cluster.replication_factor",
        u64::from(k.replication_factor),
    );
    c.positive("cluster.max_queued", k.max_queued as u64);
    c.positive(
        "cluster.max_in_flight_per_peer",
        k.max_in_flight_per_peer as u64,
    );
    for (index, seed) in k.seeds.iter().enumerate() {
        if !seed.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        }) {
            c.fail(
                format!("cluster.seeds[{index}]"),
                format!("`{seed}` is not host:port"),
            );
        }
    }
    if let Some(advertise) = &k.advertise {
        if !advertise
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        {
            c.fail(
                "cluster.advertise",
                format!("`{advertise}` is not host:port"),
            );
        }
    }
    if k.enabled() && k.cookie.as_deref().is_none_or(str::is_empty) {
        c.fail(
            "cluster.cookie",
            "is required with cluster.listen (set YTCAPTION_CLUSTER__COOKIE)",
        );
    }
    if !k.enabled() && !k.seeds.is_empty() {
        c.fail("cluster.seeds", "needs cluster.listen");
    }
    let tls = [&k.tls_cert, &k.tls_key, &k.tls_ca];
    if tls.iter().any(|p| p.is_some()) && !tls.iter().all(|p| p.is_some()) {
        c.fail(
            "cluster.tls_cert",
            "cluster TLS needs tls_cert, tls_key and tls_ca together",
        );
    }
}

fn check_supervisor(c: &mut Checker, s: &Supervisor) {
    c.positive_duration("supervisor.within", s.within);
    c.positive_duration("supervisor.backoff_base", s.backoff_base);
    if s.backoff_cap < s.backoff_base {
        c.fail(
            "supervisor.backoff_cap",
            "must not be shorter than supervisor.backoff_base",
        );
    }
    c.positive_duration("supervisor.cooldown", s.cooldown);
}

fn check_log(c: &mut Checker, log: &Log) {
    if !is_log_filter(&log.level) {
        c.fail(
            "log.level",
            format!(
                "`{}` is not a level (trace, debug, info, warn, error, off) or target=level list",
                log.level
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::hash_api_key;
    use crate::schema::{ApiKey, SmtpSecurity};
    use crate::units::Size;

    fn paths(config: &Config) -> Vec<String> {
        match config.validate() {
            Ok(()) => Vec::new(),
            Err(errors) => errors
                .issues()
                .iter()
                .filter_map(|i| i.path().map(str::to_string))
                .collect(),
        }
    }

    fn key(id: &str, secret: &str) -> ApiKey {
        ApiKey {
            id: id.into(),
            hash: hash_api_key(secret),
            ..ApiKey::default()
        }
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(Config::default().validate(), Ok(()));
    }

    #[test]
    fn every_problem_is_reported_together() {
        let mut config = Config::default();
        config.http.max_body = Size(0);
        config.http.request_timeout = Duration::ZERO;
        config.storage.backend = Backend::S3;
        config.jobs.retry.factor = 0.5;
        config.jobs.retry.jitter = 1.5;
        config.auth.keys = vec![key("a", "x"), key("a", "y"), key("b", "x")];
        config.auth.keys[1].hash = "sha256:abc".into();
        let errors = config.validate().unwrap_err();
        let text = errors.to_string();
        for expected in [
            "http.max_body: must be greater than zero",
            "http.request_timeout: must be longer than zero",
            "storage.s3.endpoint: required when storage.backend = \"s3\"",
            "jobs.retry.factor: must be at least 1",
            "jobs.retry.jitter: must be between 0 and 1",
            "auth.keys[1].id: duplicate key id \"a\" (also auth.keys[0])",
            "auth.keys[1].hash: must be sha256:<64 hex>",
            "auth.keys[2].hash: same key as auth.keys[0]",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        assert_eq!(text.lines().count(), errors.issues().len());
        // max_json_body (1MiB) now exceeds max_body (0) too.
        assert_eq!(errors.issues().len(), 9, "{text}");
    }

    #[test]
    fn public_bind_needs_api_keys() {
        let mut config = Config::default();
        config.http.listen = "0.0.0.0:8080".parse().unwrap();
        let text = config.validate().unwrap_err().to_string();
        assert_eq!(
            text,
            "http.listen: binding 0.0.0.0:8080 without API keys is refused; \
             add [[auth.keys]] or listen on 127.0.0.1"
        );
        config.auth.keys.push(key("ops", "k"));
        assert_eq!(config.validate(), Ok(()));
        config.auth.keys.clear();
        config.http.listen = "[::1]:8080".parse().unwrap();
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn anonymous_access_off_needs_a_key() {
        let mut config = Config::default();
        config.auth.allow_anonymous_loopback = false;
        let text = config.validate().unwrap_err().to_string();
        assert!(
            text.starts_with("auth.allow_anonymous_loopback: "),
            "{text}"
        );
        config.auth.keys.push(key("ops", "k"));
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn urls_addresses_and_hosts_are_checked() {
        let mut config = Config::default();
        config.http.public_url = Some("ftp://example.com".into());
        config.storage.s3.endpoint = "localhost:8333".into();
        config
            .downloader
            .ytdlp_hosts
            .push("https://youtube.com".into());
        config.downloader.allow_private = vec!["10.0.0.0/8".into(), "10.0.0.0/99".into()];
        config.notify.smtp = Some(Smtp {
            host: "mail.example.com".into(),
            from: "not an address".into(),
            username: Some("u".into()),
            security: SmtpSecurity::None,
            ..Smtp::default()
        });
        assert_eq!(
            paths(&config),
            [
                "http.public_url",
                "downloader.allow_private[1]",
                "downloader.ytdlp_hosts[9]",
                "storage.s3.endpoint",
                "notify.smtp.from",
                "notify.smtp.password",
            ]
        );
    }

    #[test]
    fn helper_predicates() {
        for ok in [
            "http://a",
            "https://captions.example.com/base",
            "http://127.0.0.1:8080",
        ] {
            assert!(is_http_url(ok), "{ok}");
        }
        for bad in ["", "http://", "https://:80", "example.com", "http://a b"] {
            assert!(!is_http_url(bad), "{bad}");
        }
        for ok in ["a@b.c", "Captions <noreply@example.com>", "x@localhost"] {
            assert!(is_mail_address(ok), "{ok}");
        }
        for bad in ["", "a@", "@b", "a@b@c", "Name <a@b", "a b@c", "a@.b"] {
            assert!(!is_mail_address(bad), "{bad}");
        }
        for ok in ["info", "WARN", "ytcaption=debug,info", "hyper::proto=warn"] {
            assert!(is_log_filter(ok), "{ok}");
        }
        for bad in ["", "inf", "ytcaption=loud", "=info", "info,"] {
            assert!(!is_log_filter(bad), "{bad}");
        }
        assert!(is_bucket_name("ytcaption-2.eu"));
        assert!(!is_bucket_name("Yt"));
        assert!(!is_bucket_name("-bucket"));
    }

    #[test]
    fn step_supervisor_and_secret_limits() {
        let mut config = Config::default();
        config.jobs.notify.attempts = 0;
        config.supervisor.backoff_cap = Duration::from_millis(1);
        config.notify.webhook_secret = Some("short".into());
        config.transcriber.model = "../etc".into();
        assert_eq!(
            paths(&config),
            [
                "jobs.notify.attempts",
                "transcriber.model",
                "notify.webhook_secret",
                "supervisor.backoff_cap",
            ]
        );
    }
}
