//! `Config::load` end to end: real files on disk, environment maps, every error path.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ytcaption_config::{
    hash_api_key, Backend, Config, ConfigErrors, ConfigIssue, LogFormat, Size, SmtpSecurity,
};

/// A config file in a per-test directory under the system temp dir, removed on drop.
struct TempFile {
    dir: PathBuf,
    path: PathBuf,
}

impl TempFile {
    fn new(name: &str, text: &str) -> TempFile {
        let dir =
            std::env::temp_dir().join(format!("ytcaption-config-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        let path = dir.join("ytcaption.toml");
        std::fs::write(&path, text).expect("write config file");
        TempFile { dir, path }
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn load(text: &str, pairs: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
    Config::load_str("test.toml", text, env(pairs))
}

#[test]
fn no_file_and_no_env_gives_valid_defaults() {
    let config = Config::load(None, env(&[("PATH", "/bin"), ("HOME", "/h")])).unwrap();
    assert_eq!(config, Config::default());
    assert_eq!(config.validate(), Ok(()));
    assert_eq!(config.http.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(config.jobs.retention, Duration::from_secs(7 * 24 * 3600));
    assert_eq!(config.http.max_body, Size::gib(2));
}

#[test]
fn file_overrides_defaults_and_env_overrides_file() {
    let file = TempFile::new(
        "precedence",
        r#"
node_name = "from-file"

[http]
listen = "127.0.0.1:7000"
max_body = "25MiB"
request_timeout = "45s"

[jobs.store]
attempts = 4

[log]
format = "json"
"#,
    );
    let config = Config::load(
        Some(file.path()),
        env(&[
            ("YTCAPTION_HTTP__LISTEN", "127.0.0.1:9000"),
            ("YTCAPTION_JOBS__RETRY__FACTOR", "3"),
            ("YTCAPTION_STORAGE__S3__ENDPOINT", "http://127.0.0.1:8333"),
            ("YTCAPTION_STORAGE__BACKEND", "s3"),
            ("YTCAPTION_DATA_DIR", "/srv/ytcaption"),
            ("YTCAPTION_DOWNLOADER__YTDLP_HOSTS", "youtube.com,vimeo.com"),
            ("YTCAPTION_FFMPEG", "/usr/bin/ffmpeg"),
            ("YTCAPTION_NOTIFY__SMTP__HOST", "127.0.0.1"),
            ("YTCAPTION_NOTIFY__SMTP__PORT", "2525"),
            ("YTCAPTION_NOTIFY__SMTP__SECURITY", "none"),
            ("YTCAPTION_NOTIFY__SMTP__FROM", "yt@example.com"),
        ]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // env beats file
    assert_eq!(
        config.http.listen,
        "127.0.0.1:9000".parse::<SocketAddr>().unwrap()
    );
    // file beats defaults
    assert_eq!(config.node_name, "from-file");
    assert_eq!(config.http.max_body, Size::mib(25));
    assert_eq!(config.http.request_timeout, Duration::from_secs(45));
    assert_eq!(config.log.format, LogFormat::Json);
    // a partial step table keeps that step's own default timeout (5m), not a generic one
    assert_eq!(config.jobs.store.attempts, 4);
    assert_eq!(config.jobs.store.timeout, Duration::from_secs(300));
    // untouched keys keep their defaults
    assert_eq!(config.http.max_json_body, Size::mib(1));
    assert_eq!(config.jobs.notify.timeout, Duration::from_secs(60));
    // env only
    assert_eq!(config.jobs.retry.factor, 3.0);
    assert_eq!(config.storage.backend, Backend::S3);
    assert_eq!(config.storage.s3.endpoint, "http://127.0.0.1:8333");
    assert_eq!(config.data_dir, Some(PathBuf::from("/srv/ytcaption")));
    assert_eq!(config.downloader.ytdlp_hosts, ["youtube.com", "vimeo.com"]);
    let smtp = config
        .notify
        .smtp
        .expect("smtp section created from the environment");
    assert_eq!((smtp.host.as_str(), smtp.port), ("127.0.0.1", 2525));
    assert_eq!(smtp.security, SmtpSecurity::None);
    assert_eq!(smtp.timeout, Duration::from_secs(30));
}

#[test]
fn unknown_field_in_file_is_named_with_its_line() {
    let err = load(
        "[http]\nlisten = \"127.0.0.1:1\"\nmax_bodyy = \"1MiB\"\n",
        &[],
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("test.toml:3:1: unknown field `max_bodyy`"),
        "{text}"
    );
    assert!(
        text.contains("`max_body`"),
        "lists the valid fields: {text}"
    );
    assert_eq!(err.issues()[0].code(), "config.parse");

    let err = load("nodename = \"x\"\n", &[]).unwrap_err();
    assert!(
        err.to_string().contains("unknown field `nodename`"),
        "{err}"
    );
}

#[test]
fn bad_toml_reports_file_and_line() {
    let file = TempFile::new(
        "syntax",
        "[http]\nlisten = \"127.0.0.1:1\"\n\n[jobs\nmax_active = 2\n",
    );
    let err = Config::load(Some(file.path()), Vec::new()).unwrap_err();
    let text = err.to_string();
    let location = format!("{}:4:", file.path().display());
    assert!(text.starts_with(&location), "{text}");
    assert_eq!(text.lines().count(), 1, "one line per error: {text}");

    let err = load("[http]\nmax_body = \"2 parsecs\"\n", &[]).unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("test.toml:2:"), "{text}");
    assert!(text.contains("unknown unit `parsecs`"), "{text}");

    let err = load("[jobs]\nretention = 3600\n", &[]).unwrap_err();
    assert!(err.to_string().contains("\"3600s\""), "{err}");
}

#[test]
fn missing_file_is_a_read_error() {
    let err = Config::load(Some(Path::new("/nonexistent/ytcaption.toml")), Vec::new()).unwrap_err();
    assert!(
        matches!(&err.issues()[0], ConfigIssue::Read { file, .. } if file == "/nonexistent/ytcaption.toml")
    );
    assert_eq!(err.issues()[0].code(), "config.read");
}

#[test]
fn unknown_env_key_is_an_error() {
    let err = load("", &[("YTCAPTION_HTTP__LISTN", "127.0.0.1:1")]).unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("YTCAPTION_HTTP__LISTN: unknown config key `http.listn`"),
        "{text}"
    );
    assert_eq!(err.issues()[0].code(), "config.env_key");

    let err = load("", &[("YTCAPTION_HTTP_LISTEN", "127.0.0.1:1")]).unwrap_err();
    assert!(
        err.to_string()
            .contains("did you mean YTCAPTION_HTTP__LISTEN?"),
        "{err}"
    );

    // Non-config tool variables and foreign variables are ignored.
    let config = load(
        "",
        &[
            ("YTCAPTION_BIN", "/usr/bin/ytcaption"),
            ("YTCAPTION_CONVERTER", "x"),
            ("OTHER__THING", "1"),
        ],
    )
    .unwrap();
    assert_eq!(config, Config::default());
}

#[test]
fn bad_env_values_name_their_variable() {
    let err = load(
        "",
        &[
            ("YTCAPTION_HTTP__LISTEN", "not-an-address"),
            ("YTCAPTION_HTTP__MAX_CONNECTIONS", "lots"),
            ("YTCAPTION_JOBS__KEEP_MEDIA", "true"),
        ],
    )
    .unwrap_err();
    let vars: Vec<&str> = err
        .issues()
        .iter()
        .map(|issue| match issue {
            ConfigIssue::EnvValue { var, .. } => var.as_str(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        vars,
        ["YTCAPTION_HTTP__LISTEN", "YTCAPTION_HTTP__MAX_CONNECTIONS"]
    );
    let text = err.to_string();
    assert!(
        text.contains("YTCAPTION_HTTP__LISTEN (http.listen): "),
        "{text}"
    );
}

#[test]
fn several_errors_are_reported_together() {
    let keys = format!(
        r#"
[[auth.keys]]
id = "ops"
hash = "{}"

[[auth.keys]]
id = "ci"
hash = "sha256:nothex"

[[auth.keys]]
id = "ops"
hash = "{}"
"#,
        hash_api_key("one"),
        hash_api_key("two")
    );
    let text = format!(
        "{keys}
[http]
listen = \"0.0.0.0:8080\"
public_url = \"captions.example.com\"
max_json_body = \"0\"

[storage]
backend = \"s3\"

[jobs.retry]
factor = 0.5
jitter = -0.1

[notify.smtp]
host = \"mail.example.com\"
from = \"nobody\"
"
    );
    let err = load(&text, &[("YTCAPTION_SUPERVISOR__BACKOFF_BASE", "0s")]).unwrap_err();
    let shown = err.to_string();
    let expected = [
        "http.public_url: `captions.example.com` is not an http:// or https:// URL",
        "http.max_json_body: must be greater than zero",
        "auth.keys[1].hash: must be sha256:<64 hex>",
        "auth.keys[2].id: duplicate key id \"ops\" (also auth.keys[0])",
        "jobs.retry.factor: must be at least 1",
        "jobs.retry.jitter: must be between 0 and 1",
        "storage.s3.endpoint: required when storage.backend = \"s3\"",
        "notify.smtp.from: `nobody` is not an address",
        "supervisor.backoff_base: must be longer than zero",
    ];
    for line in expected {
        assert!(shown.contains(line), "missing {line:?} in:\n{shown}");
    }
    // Keys exist, so the public bind is accepted.
    assert!(!shown.contains("http.listen"), "{shown}");
    assert_eq!(err.issues().len(), expected.len(), "{shown}");
    assert_eq!(shown.lines().count(), expected.len());
    assert!(err.issues().iter().all(|i| i.code() == "config.invalid"));
}

#[test]
fn public_bind_without_keys_is_refused_at_load() {
    let err = load("", &[("YTCAPTION_HTTP__LISTEN", "0.0.0.0:8080")]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "http.listen: binding 0.0.0.0:8080 without API keys is refused; \
         add [[auth.keys]] or listen on 127.0.0.1"
    );
}

#[test]
fn parse_and_env_key_errors_are_reported_together() {
    let err = load(
        "[http]\nbogus = 1\n",
        &[("YTCAPTION_NOPE__X", "1"), ("YTCAPTION_AUTH__KEYS", "a,b")],
    )
    .unwrap_err();
    let codes: Vec<&str> = err.issues().iter().map(ConfigIssue::code).collect();
    assert_eq!(
        codes,
        ["config.parse", "config.env_key", "config.env_key"],
        "{err}"
    );
}

#[test]
fn api_keys_from_the_file_match_their_secret() {
    let text = format!(
        "[[auth.keys]]\nid = \"ops\"\nrole = \"admin\"\nhash = \"{}\"\n",
        hash_api_key("correct horse")
    );
    let config = load(&text, &[]).unwrap();
    let key = &config.auth.keys[0];
    assert!(key.matches("correct horse"));
    assert!(!key.matches("correct horse "));
    assert_eq!(key.role, ytcaption_config::Role::Admin);
    assert_eq!(key.max_concurrent_jobs, 100);
}

#[test]
fn serialized_config_loads_back_identically() {
    let mut config = Config {
        node_name: "edge-7".into(),
        ..Config::default()
    };
    config.http.max_body = Size::bytes(3_000_123);
    config.supervisor.backoff_base = Duration::from_millis(250);
    config.auth.keys.push(ytcaption_config::ApiKey {
        id: "k".into(),
        hash: hash_api_key("k"),
        ..Default::default()
    });
    let text = toml::to_string(&config).unwrap();
    assert_eq!(load(&text, &[]).unwrap(), config);
}
