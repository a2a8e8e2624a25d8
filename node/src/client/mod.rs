//! The command-line client of a node: `ytcaption submit` and `ytcaption jobs ...`.
//!
//! # Layout
//! - [`api`]: blocking HTTP calls and their errors.
//! - [`multipart`]: the upload body, streamed from the file.
//! - [`sse`]: the event-stream reader `--wait` follows.

pub mod api;
pub mod multipart;
pub mod sse;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use api::{Api, ClientError};

/// Reconnections of `--wait` to the event stream before giving up (the node may restart).
const MAX_RECONNECTS: u32 = 60;

/// Where the node is and how to authenticate.
#[derive(Debug, Clone, clap::Args)]
pub struct Connection {
    /// The node's base URL.
    #[arg(
        long,
        env = "YTCAPTION_SERVER",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    server: String,
    /// API key (sent as a bearer token).
    #[arg(long, env = "YTCAPTION_API_KEY", hide_env_values = true, global = true)]
    api_key: Option<String>,
}

impl Connection {
    fn api(&self) -> Api {
        Api::new(&self.server, self.api_key.clone())
    }
}

#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    /// An http(s) URL (a media file or a page yt-dlp understands), or a local file to upload.
    input: String,
    #[command(flatten)]
    connection: Connection,
    /// Transcript format printed with --wait: txt, srt, vtt or json.
    #[arg(long, default_value = "txt")]
    format: String,
    /// Spoken language (ISO 639-1, e.g. en), or auto.
    #[arg(long)]
    language: Option<String>,
    /// Model installed on the node (default: the node's).
    #[arg(long)]
    model: Option<String>,
    /// transcribe, or translate into English.
    #[arg(long)]
    task: Option<String>,
    /// Call this URL when the job ends.
    #[arg(long)]
    webhook_url: Option<String>,
    /// Email this address when the job ends.
    #[arg(long)]
    email: Option<String>,
    /// Submitting again with the same key returns the first job instead of a new one.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Follow the job and print its transcript when done.
    #[arg(long)]
    wait: bool,
    /// With --wait: write the transcript to this file instead of standard output.
    #[arg(long, short, requires = "wait")]
    output: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct JobsArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: JobsCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum JobsCommand {
    /// List jobs, newest first.
    List {
        /// Only jobs in this state (accepted, downloading, ..., completed, failed, cancelled).
        #[arg(long)]
        state: Option<String>,
        /// At most this many jobs (1-200).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Continue after this cursor (printed by the previous page).
        #[arg(long)]
        cursor: Option<String>,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one job (JSON).
    Show { id: String },
    /// Cancel a queued or running job.
    Cancel { id: String },
    /// Run a failed or cancelled job again.
    Retry { id: String },
    /// Delete a finished job and its files (cancels a running one).
    Delete { id: String },
}

#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum AdminCommand {
    /// The node's supervision tree, queues and cluster membership (JSON).
    Status,
    /// Stop placing work on a cluster node and hand the jobs it owns to the others.
    Drain { node: String },
    /// Place work on a drained node again.
    Undrain { node: String },
}

/// `ytcaption admin ...` (admin API key).
pub fn admin(args: AdminArgs) -> anyhow::Result<()> {
    let api = args.connection.api();
    match args.command {
        AdminCommand::Status => print_json(&api.get_json("/v1/admin/status")?),
        AdminCommand::Drain { node } => {
            print_json(&api.post_empty(&format!("/v1/admin/nodes/{}/drain", path_segment(&node)))?)
        }
        AdminCommand::Undrain { node } => print_json(
            &api.post_empty(&format!("/v1/admin/nodes/{}/undrain", path_segment(&node)))?,
        ),
    }
}

/// `ytcaption submit`.
pub fn submit(args: SubmitArgs) -> anyhow::Result<()> {
    let api = args.connection.api();
    let view = send(&api, &args)?;
    let id = field(&view, "id")?;
    eprintln!("job {id}: {}", view["state"].as_str().unwrap_or("?"));
    if !args.wait {
        println!("{id}");
        return Ok(());
    }
    let last = follow(&api, &id)?;
    match last["state"].as_str() {
        Some("completed") => {
            let transcript = api.transcript(&id, &args.format)?;
            write_output(args.output.as_deref(), &transcript)
        }
        Some("failed") => {
            let code = last["error"]["code"].as_str().unwrap_or("job.failed");
            let message = last["error"]["message"]
                .as_str()
                .unwrap_or("no reason given");
            anyhow::bail!("job {id} failed: {message} ({code})")
        }
        Some(state) => anyhow::bail!("job {id} ended {state}"),
        None => anyhow::bail!("job {id}: the node sent a view without a state"),
    }
}

fn send(api: &Api, args: &SubmitArgs) -> Result<Value, ClientError> {
    let key = args.idempotency_key.as_deref();
    let optional = [
        ("language", &args.language),
        ("model", &args.model),
        ("task", &args.task),
        ("webhook_url", &args.webhook_url),
        ("email", &args.email),
    ];
    let is_url = ["http://", "https://"].iter().any(|scheme| {
        args.input
            .get(..scheme.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
    });
    if is_url {
        let mut body = json!({ "url": args.input });
        for (name, value) in optional {
            if let Some(value) = value {
                body[name] = json!(value);
            }
        }
        return api.submit_json(&body, key);
    }
    let path = Path::new(&args.input);
    if !path.is_file() {
        return Err(ClientError::Input(format!(
            "{} is neither an http(s) URL nor a file",
            args.input
        )));
    }
    let fields: Vec<(&str, String)> = optional
        .iter()
        .filter_map(|(name, value)| value.as_ref().map(|v| (*name, v.clone())))
        .collect();
    api.submit_file(path, &fields, key)
}

fn field(view: &Value, name: &str) -> Result<String, ClientError> {
    view[name]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| ClientError::Protocol(format!("no {name:?} in {view}")))
}

fn is_terminal(state: &str) -> bool {
    matches!(state, "completed" | "failed" | "cancelled")
}

/// Follows the job's events with a progress bar until it ends; returns its last view.
/// Reconnects when the stream breaks (the events restart with the current state).
fn follow(api: &Api, id: &str) -> anyhow::Result<Value> {
    let bar = ProgressBar::new(100);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg:14} [{bar:40}] {pos:>3}% {elapsed_precise}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let mut failures = 0;
    loop {
        let mut last: Option<Value> = None;
        let result = api.events(id).and_then(|reader| {
            sse::read_events(reader, |event| on_event(&bar, &event, &mut last))
                .map_err(ClientError::from)
        });
        if let Some(view) = last.filter(|v| v["state"].as_str().is_some_and(is_terminal)) {
            bar.finish_and_clear();
            return Ok(view);
        }
        match result {
            Err(error) if error.code() == "job.not_found" => {
                bar.abandon();
                anyhow::bail!("job {id} no longer exists (deleted?)");
            }
            Err(error) if !error.retryable() => {
                bar.abandon();
                return Err(error.into());
            }
            _ => {
                failures += 1;
                if failures > MAX_RECONNECTS {
                    bar.abandon();
                    anyhow::bail!("lost the event stream of job {id} too many times");
                }
                bar.set_message("reconnecting");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// Updates the bar from one event; false once the job ended.
fn on_event(bar: &ProgressBar, event: &sse::Event, last: &mut Option<Value>) -> bool {
    let Ok(data) = serde_json::from_str::<Value>(&event.data) else {
        return true;
    };
    if let Some(percent) = data["percent"]
        .as_f64()
        .or_else(|| data["progress"].as_f64())
    {
        bar.set_position(percent.clamp(0.0, 100.0) as u64);
    }
    if event.name == "state" {
        let state = data["state"].as_str().unwrap_or("?").to_owned();
        bar.set_message(state.clone());
        *last = Some(data);
        return !is_terminal(&state);
    }
    true
}

/// Prints the transcript, or writes it atomically (a temp file renamed into place).
fn write_output(output: Option<&Path>, bytes: &[u8]) -> anyhow::Result<()> {
    let Some(path) = output else {
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(bytes)?;
        if !bytes.ends_with(b"\n") {
            stdout.write_all(b"\n")?;
        }
        return Ok(stdout.flush()?);
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut temp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    temp.write_all(bytes)?;
    temp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// `ytcaption jobs ...`.
pub fn jobs(args: JobsArgs) -> anyhow::Result<()> {
    let api = args.connection.api();
    match args.command {
        JobsCommand::List {
            state,
            limit,
            cursor,
            json,
        } => {
            let limit = limit.to_string();
            let mut query = vec![("limit", limit.as_str())];
            if let Some(state) = &state {
                query.push(("state", state));
            }
            if let Some(cursor) = &cursor {
                query.push(("cursor", cursor));
            }
            let page = api.get_json_query("/v1/jobs", &query)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&page)?);
            } else {
                print_table(&page);
            }
            Ok(())
        }
        JobsCommand::Show { id } => {
            print_json(&api.get_json(&format!("/v1/jobs/{}", path_segment(&id)))?)
        }
        JobsCommand::Cancel { id } => {
            print_json(&api.post_empty(&format!("/v1/jobs/{}/cancel", path_segment(&id)))?)
        }
        JobsCommand::Retry { id } => {
            print_json(&api.post_empty(&format!("/v1/jobs/{}/retry", path_segment(&id)))?)
        }
        JobsCommand::Delete { id } => match api
            .delete(&format!("/v1/jobs/{}", path_segment(&id)))?
        {
            Some(view) => {
                eprintln!("job {id} was running: cancelling it (delete it again once it ended)");
                print_json(&view)
            }
            None => {
                eprintln!("job {id} deleted");
                Ok(())
            }
        },
    }
}

/// An id as typed, made safe to put in a path (the node answers 404 to anything malformed).
fn path_segment(id: &str) -> String {
    id.chars().filter(|c| c.is_ascii_alphanumeric()).collect()
}

fn print_json(value: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn print_table(page: &Value) {
    let empty = Vec::new();
    let jobs = page["jobs"].as_array().unwrap_or(&empty);
    if jobs.is_empty() {
        println!("no jobs");
    }
    for job in jobs {
        let source = &job["source"];
        let what = source["url"]
            .as_str()
            .or_else(|| source["filename"].as_str())
            .unwrap_or("");
        let progress = job["progress"]
            .as_f64()
            .map_or_else(|| "-".to_owned(), |p| format!("{p:.0}%"));
        println!(
            "{}  {:<12} {:>5}  {}  {}",
            job["id"].as_str().unwrap_or("?"),
            job["state"].as_str().unwrap_or("?"),
            progress,
            job["created_at"].as_str().unwrap_or(""),
            what
        );
    }
    if let Some(cursor) = page["next_cursor"].as_str() {
        eprintln!("more: --cursor {cursor}");
    }
}
