//! A real `ytcaption serve` process for end-to-end tests: [`NodeProcess::start`] runs the
//! binary with a config file, a fresh data directory and a free port on 127.0.0.1, waits until
//! `/readyz` answers 200, and kills it on drop. [`NodeProcess::kill9`] and
//! [`NodeProcess::restart`] test durability; [`NodeProcess::terminate`] the graceful stop.
//!
//! ```no_run
//! use ytcaption_tests::node::{NodeProcess, Reply};
//! let node = NodeProcess::start("[jobs]\nmax_active = 2\n");
//! let reply = Reply::of(ureq::get(&format!("{}/healthz", node.base_url())).call());
//! assert_eq!(reply.status, 200);
//! ```
//!
//! # What the harness sets
//! Through the environment (which beats the file): `YTCAPTION_DATA_DIR` (a temp dir),
//! `YTCAPTION_MODELS_DIR` (the models `make model` installed), `YTCAPTION_HTTP__LISTEN`
//! (a free port) and `YTCAPTION_TRANSCRIBER__MODEL=tiny.en` (fast). Override any of them with
//! [`NodeProcess::start_with_env`].
//!
//! The binary is `$YTCAPTION_BIN`, else `ytcaption` next to the test executable's directory
//! (`target/release/ytcaption`). A watchdog shell kills the node if the test process dies
//! without unwinding.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// A running node.
#[derive(Debug)]
pub struct NodeProcess {
    dir: tempfile::TempDir,
    port: u16,
    env: Vec<(String, String)>,
    binary: PathBuf,
    process: Option<(Child, Child)>,
}

/// The binary under test.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("YTCAPTION_BIN") {
        return PathBuf::from(path);
    }
    // target/<profile>/deps/<test exe> -> target/<profile>/ytcaption
    let exe = std::env::current_exe().expect("the test executable's path");
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable lives in target/<profile>/deps")
        .join("ytcaption");
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --release -p ytcaption` (make test does)",
        path.display()
    );
    path
}

/// The models directory `make model` installs into.
pub fn models_dir() -> PathBuf {
    let data = ytcaption_config::data_dir(None).expect("a data directory (HOME is set)");
    ytcaption_config::models_dir(None, &data)
}

/// A port nobody listens on right now, for a server started later on 127.0.0.1 (from
/// 10000-19999; SeaweedFS draws from 20000-31999; see [`crate::ports`]).
pub fn free_port() -> u16 {
    crate::ports::reserve(10_000..20_000, 0)
}

impl NodeProcess {
    /// Starts a node with `config_toml` as its config file.
    pub fn start(config_toml: &str) -> NodeProcess {
        NodeProcess::start_with_env(config_toml, &[])
    }

    /// Like [`NodeProcess::start`], with more (or overriding) environment variables.
    pub fn start_with_env(config_toml: &str, env: &[(&str, &str)]) -> NodeProcess {
        let mut node = NodeProcess::spawn(config_toml, env);
        node.wait_ready();
        node
    }

    /// Spawns the node without waiting for it to become ready (to test start-up failures).
    pub fn spawn(config_toml: &str, env: &[(&str, &str)]) -> NodeProcess {
        let dir = tempfile::tempdir().expect("a temp dir for the node");
        std::fs::write(dir.path().join("config.toml"), config_toml).expect("writing the config");
        let port = free_port();
        let mut vars: Vec<(String, String)> = vec![
            (
                "YTCAPTION_DATA_DIR".into(),
                dir.path().join("data").display().to_string(),
            ),
            (
                "YTCAPTION_MODELS_DIR".into(),
                models_dir().display().to_string(),
            ),
            ("YTCAPTION_HTTP__LISTEN".into(), format!("127.0.0.1:{port}")),
            ("YTCAPTION_TRANSCRIBER__MODEL".into(), "tiny.en".into()),
            ("RUST_LOG".into(), "info".into()),
        ];
        for (name, value) in env {
            vars.retain(|(existing, _)| existing != name);
            vars.push(((*name).to_owned(), (*value).to_owned()));
        }
        let mut node = NodeProcess {
            dir,
            port,
            env: vars,
            binary: binary(),
            process: None,
        };
        node.launch();
        node
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `base_url` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url())
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Everything the node wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("node.log")
    }

    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("creating the node log");
        let mut command = Command::new(&self.binary);
        command
            .arg("serve")
            .arg("--config")
            .arg(self.dir.path().join("config.toml"))
            .arg("--shutdown-grace")
            .arg("10")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning the log handle"))
            .stderr(log);
        for (name, value) in &self.env {
            command.env(name, value);
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("could not run {}: {e}", self.binary.display()));
        let watchdog = spawn_watchdog(child.id());
        self.process = Some((child, watchdog));
    }

    /// The exit status, if the node has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        let (child, _) = self.process.as_mut()?;
        child.try_wait().ok().flatten()
    }

    /// Polls `/readyz` until it answers 200; panics with the log if the node exits or the
    /// deadline passes.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let url = self.url("/readyz");
        loop {
            if let Some(status) = self.try_wait() {
                panic!(
                    "the node exited during start-up ({status}); log:\n{}",
                    self.log()
                );
            }
            if let Ok(response) = ureq::get(&url).timeout(Duration::from_secs(2)).call() {
                if response.status() == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the node was not ready within {STARTUP_TIMEOUT:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the process to exit (at most `timeout`); `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to the node process.
    pub fn signal(&self, signal: &str) {
        if let Some((child, _)) = &self.process {
            let pid = child.id().to_string();
            let _ = Command::new("kill")
                .args([&format!("-{signal}"), &pid])
                .status();
        }
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(&mut self) {
        if let Some((mut child, mut watchdog)) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }

    /// SIGTERM, then waits up to `timeout` for the graceful stop; the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let (child, _) = self.process.as_ref()?;
        let pid = child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let status = self.wait_exit(timeout);
        if status.is_some() {
            if let Some((_, mut watchdog)) = self.process.take() {
                let _ = watchdog.kill();
                let _ = watchdog.wait();
            }
        }
        status
    }

    /// Starts the node again on the same data directory and port, and waits until ready.
    pub fn restart(&mut self) {
        self.kill9();
        self.launch();
        self.wait_ready();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A shell that kills `pid` when this process's end of its stdin pipe closes: however the
/// test process ends, the node does not outlive it.
fn spawn_watchdog(pid: u32) -> Child {
    Command::new("sh")
        .arg("-c")
        .arg("read -r _ignored; kill -KILL \"$0\" 2>/dev/null")
        .arg(pid.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting the node watchdog shell")
}

/// An HTTP answer, whatever its status.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// Header names in lower case.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Reply {
    /// The answer of a ureq call; panics on transport errors.
    pub fn of(result: Result<ureq::Response, ureq::Error>) -> Reply {
        let response = match result {
            Ok(response) => response,
            Err(ureq::Error::Status(_, response)) => response,
            Err(ureq::Error::Transport(error)) => panic!("request failed: {error}"),
        };
        let status = response.status();
        let headers = response
            .headers_names()
            .into_iter()
            .filter_map(|name| {
                let value = response.header(&name)?.to_owned();
                Some((name.to_ascii_lowercase(), value))
            })
            .collect();
        let mut body = Vec::new();
        response
            .into_reader()
            .take(512 << 20)
            .read_to_end(&mut body)
            .expect("reading the body");
        Reply {
            status,
            headers,
            body,
        }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body otherwise.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

/// A `multipart/form-data` body: `(content type, bytes)`. `file` is `(part name, file name,
/// bytes)`.
pub fn multipart(fields: &[(&str, &str)], file: Option<(&str, &str, &[u8])>) -> (String, Vec<u8>) {
    let boundary = "ytcaption-test-boundary-7d1f0c";
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
                .as_bytes(),
        );
    }
    if let Some((name, filename, bytes)) = file {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub name: String,
    pub data: String,
}

/// Reads a whole event stream (until the server closes it); comments are skipped.
pub fn read_sse(reader: impl Read) -> Vec<SseEvent> {
    let mut events = Vec::new();
    let mut name = None;
    let mut data: Vec<String> = Vec::new();
    for line in BufReader::new(reader).lines() {
        let Ok(line) = line else { break };
        if line.is_empty() {
            if !data.is_empty() {
                events.push(SseEvent {
                    name: name.take().unwrap_or_else(|| "message".to_owned()),
                    data: data.join("\n"),
                });
                data.clear();
            }
            continue;
        }
        if let Some(value) = line.strip_prefix("event:") {
            name = Some(value.trim_start().to_owned());
        } else if let Some(value) = line.strip_prefix("data:") {
            data.push(value.strip_prefix(' ').unwrap_or(value).to_owned());
        }
    }
    events
}

/// The configuration the node-process tests and the chaos harness share: one small transcriber, fast retries,
/// webhooks signed with `webhook_secret`, email to the sink on `smtp_port`, private addresses
/// allowed (media and hooks are on 127.0.0.1); `extra` is appended (more sections).
pub fn node_config(webhook_secret: &str, smtp_port: u16, extra: &str) -> String {
    format!(
        r#"
[transcriber]
workers = 1
threads = 1

[downloader]
allow_private = ["127.0.0.1/32"]

[jobs.retry]
base = "100ms"
cap = "500ms"

[notify]
webhook_secret = "{webhook_secret}"
allow_private = ["127.0.0.1/32"]

[notify.smtp]
host = "127.0.0.1"
port = {smtp_port}
security = "none"
from = "ytcaption <ytcaption@example.com>"

{extra}
"#
    )
}
