//! Blocking calls to a node's API, with errors turned into one readable line (the problem's
//! `detail` and `code` when the node sent one).

use std::io::{BufReader, Read};
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::multipart;

/// Largest transcript or JSON answer read into memory.
const MAX_ANSWER: u64 = 256 << 20;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The node answered with an error status.
    #[error("{detail} ({code}, HTTP {status})")]
    Status {
        status: u16,
        code: String,
        detail: String,
    },
    #[error("cannot reach {server}: {reason}")]
    Transport { server: String, reason: String },
    /// The command line names something unusable.
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("unexpected answer from the node: {0}")]
    Protocol(String),
}

impl ClientError {
    pub fn code(&self) -> &str {
        match self {
            ClientError::Status { code, .. } => code,
            ClientError::Transport { .. } => "client.transport",
            ClientError::Input(_) => "client.input",
            ClientError::Io(_) => "client.io",
            ClientError::Protocol(_) => "client.protocol",
        }
    }

    /// Worth trying again: the node was unreachable or said so.
    pub fn retryable(&self) -> bool {
        match self {
            ClientError::Status { status, .. } => matches!(status, 429 | 502 | 503 | 504),
            ClientError::Transport { .. } => true,
            ClientError::Input(_) | ClientError::Io(_) | ClientError::Protocol(_) => false,
        }
    }
}

/// A node's API.
#[derive(Debug)]
pub struct Api {
    agent: ureq::Agent,
    server: String,
    key: Option<String>,
}

impl Api {
    pub fn new(server: &str, key: Option<String>) -> Api {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(10))
            // Event streams send a keep-alive every 15 s.
            .timeout_read(Duration::from_secs(60))
            .build();
        Api {
            agent,
            server: server.trim_end_matches('/').to_owned(),
            key: key.filter(|k| !k.is_empty()),
        }
    }

    fn request(&self, method: &str, path: &str) -> ureq::Request {
        let request = self
            .agent
            .request(method, &format!("{}{path}", self.server));
        match &self.key {
            Some(key) => request.set("Authorization", &format!("Bearer {key}")),
            None => request,
        }
    }

    fn check(
        &self,
        result: Result<ureq::Response, ureq::Error>,
    ) -> Result<ureq::Response, ClientError> {
        match result {
            Ok(response) => Ok(response),
            Err(ureq::Error::Status(status, response)) => Err(problem(status, response)),
            Err(ureq::Error::Transport(transport)) => Err(ClientError::Transport {
                server: self.server.clone(),
                reason: transport.to_string(),
            }),
        }
    }

    fn json(&self, response: ureq::Response) -> Result<Value, ClientError> {
        let bytes = read_all(response)?;
        serde_json::from_slice(&bytes).map_err(|error| ClientError::Protocol(error.to_string()))
    }

    /// `POST /v1/jobs` with a JSON body.
    pub fn submit_json(
        &self,
        body: &Value,
        idempotency_key: Option<&str>,
    ) -> Result<Value, ClientError> {
        let mut request = self.request("POST", "/v1/jobs");
        if let Some(key) = idempotency_key {
            request = request.set("Idempotency-Key", key);
        }
        let response = self.check(request.send_json(body))?;
        self.json(response)
    }

    /// `POST /v1/jobs` uploading `path` with text `fields`.
    pub fn submit_file(
        &self,
        path: &Path,
        fields: &[(&str, String)],
        idempotency_key: Option<&str>,
    ) -> Result<Value, ClientError> {
        let file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        let filename = path
            .file_name()
            .map_or_else(|| "upload".to_owned(), |n| n.to_string_lossy().into_owned());
        let body =
            multipart::Body::new(multipart::random_boundary(), fields, "file", &filename, len);
        let mut request = self
            .request("POST", "/v1/jobs")
            .set("Content-Type", &body.content_type())
            .set("Content-Length", &body.content_length().to_string());
        if let Some(key) = idempotency_key {
            request = request.set("Idempotency-Key", key);
        }
        let response = self.check(request.send(body.reader(BufReader::new(file))))?;
        self.json(response)
    }

    pub fn get_json(&self, path: &str) -> Result<Value, ClientError> {
        self.get_json_query(path, &[])
    }

    /// A GET with query parameters (encoded by ureq).
    pub fn get_json_query(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, ClientError> {
        let request = query
            .iter()
            .fold(self.request("GET", path), |request, (name, value)| {
                request.query(name, value)
            });
        let response = self.check(request.call())?;
        self.json(response)
    }

    /// A POST without a body (cancel, retry); the job view.
    pub fn post_empty(&self, path: &str) -> Result<Value, ClientError> {
        let response = self.check(self.request("POST", path).call())?;
        self.json(response)
    }

    /// `DELETE`; the job view when the job was only cancelled, `None` when deleted.
    pub fn delete(&self, path: &str) -> Result<Option<Value>, ClientError> {
        let response = self.check(self.request("DELETE", path).call())?;
        if response.status() == 204 {
            return Ok(None);
        }
        self.json(response).map(Some)
    }

    /// The transcript of a completed job.
    pub fn transcript(&self, id: &str, format: &str) -> Result<Vec<u8>, ClientError> {
        let response = self.check(
            self.request("GET", &format!("/v1/jobs/{id}/transcript"))
                .query("format", format)
                .call(),
        )?;
        read_all(response)
    }

    /// The job's event stream.
    pub fn events(&self, id: &str) -> Result<impl std::io::BufRead, ClientError> {
        let response = self.check(
            self.request("GET", &format!("/v1/jobs/{id}/events"))
                .set("Accept", "text/event-stream")
                .call(),
        )?;
        Ok(BufReader::new(response.into_reader()))
    }
}

fn read_all(response: ureq::Response) -> Result<Vec<u8>, ClientError> {
    let mut bytes = Vec::new();
    response
        .into_reader()
        .take(MAX_ANSWER)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The error of an error answer: the problem document's fields, or the raw status.
fn problem(status: u16, response: ureq::Response) -> ClientError {
    let body = read_all(response).unwrap_or_default();
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let field = |name: &str| {
        parsed
            .as_ref()
            .and_then(|v| {
                v.get(name)
                    .or_else(|| v.get("error").and_then(|e| e.get(name)))
            })
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    ClientError::Status {
        status,
        code: field("code").unwrap_or_else(|| "http.error".to_owned()),
        detail: field("detail")
            .or_else(|| field("message"))
            .unwrap_or_else(|| {
                String::from_utf8_lossy(&body)
                    .trim()
                    .chars()
                    .take(300)
                    .collect()
            }),
    }
}
