//! The `ytcaption` binary. `main` only parses the command line and reports errors as one line
//! with a non-zero exit; each command lives in its own module.
//!
//! # Layout
//! - [`transcribe`]: `ytcaption transcribe`, the engine on one file.
//! - [`models`]: `ytcaption model list|import`.

mod models;
mod transcribe;

use std::path::PathBuf;
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
}

/// Where the data and models live, resolved once.
#[derive(Debug)]
pub struct Dirs {
    pub models: PathBuf,
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let data = ytcaption_config::data_dir(cli.data_dir.as_deref())?;
    let dirs = Dirs {
        models: ytcaption_config::models_dir(cli.models_dir.as_deref(), &data),
    };
    match cli.command {
        Command::Transcribe(args) => transcribe::run(&dirs, args),
        Command::Model(command) => models::run(&dirs, command),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
