//! The `ytcaption` binary. `main` only parses the command line and reports errors as one line
//! with a non-zero exit; each command lives in its own module.
//!
//! # Layout
//! - [`transcribe`]: `ytcaption transcribe`, the engine on one file.
//! - [`models`]: `ytcaption model list|import`.
//! - [`serve`]: `ytcaption serve`, a node: the job system behind the HTTP API in [`http`].
//! - [`client`]: `ytcaption submit` and `ytcaption jobs`, the API's command-line client.

mod client;
mod http;
mod models;
mod serve;
mod transcribe;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Self-hosted transcription: media in, transcripts and captions out.
#[derive(Debug, Parser)]
#[command(name = "ytcaption", version, about)]
struct Cli {
    /// Data directory (default: $XDG_DATA_HOME/ytcaption or ~/.local/share/ytcaption).
    #[arg(long, global = true, env = "YTCAPTION_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Models directory (default: <data dir>/models).
    #[arg(long, global = true, env = "YTCAPTION_MODELS_DIR")]
    models_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Transcribe an audio or video file.
    Transcribe(transcribe::Args),
    /// Manage installed models.
    #[command(subcommand)]
    Model(models::ModelCommand),
    /// Run a node: the HTTP API in front of the durable job system.
    Serve(serve::Args),
    /// Submit a job to a node (a URL, or a local file to upload).
    Submit(client::SubmitArgs),
    /// List, show, cancel, retry or delete a node's jobs.
    Jobs(client::JobsArgs),
    /// Operate the node or cluster: status, drain, undrain (admin API key).
    Admin(client::AdminArgs),
}

/// Where the data and models live, resolved once.
#[derive(Debug)]
pub struct Dirs {
    pub models: PathBuf,
}

/// The directories of the local commands (the node reads them from its configuration).
fn local_dirs(data_dir: Option<&Path>, models_dir: Option<&Path>) -> anyhow::Result<Dirs> {
    let data = ytcaption_config::data_dir(data_dir)?;
    Ok(Dirs {
        models: ytcaption_config::models_dir(models_dir, &data),
    })
}

fn main() -> ExitCode {
    let Cli {
        data_dir,
        models_dir,
        command,
    } = Cli::parse();
    let result = match command {
        // The node has its own exit statuses (2 for a bad configuration).
        Command::Serve(args) => {
            return serve::run(
                serve::DirOverrides {
                    data_dir,
                    models_dir,
                },
                args,
            )
        }
        Command::Transcribe(args) => local_dirs(data_dir.as_deref(), models_dir.as_deref())
            .and_then(|dirs| transcribe::run(&dirs, args)),
        Command::Model(command) => local_dirs(data_dir.as_deref(), models_dir.as_deref())
            .and_then(|dirs| models::run(&dirs, command)),
        Command::Submit(args) => client::submit(args),
        Command::Jobs(args) => client::jobs(args),
        Command::Admin(args) => client::admin(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
