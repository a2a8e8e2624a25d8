//! `ytcaption transcribe INPUT`: one file through the engine, printed or written atomically.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use ytcaption_actors::engine::audio::AudioSource;
use ytcaption_actors::engine::model::find_runtime_library;
use ytcaption_actors::engine::{resolve_model, Engine, Progress, Task, TranscribeOptions};
use ytcaption_protocol::Format;

use crate::Dirs;

/// Files shorter than this get no progress bar.
const PROGRESS_BAR_MIN_SECONDS: f64 = 60.0;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The audio or video file.
    input: PathBuf,
    /// Model name in the models directory, or a model directory.
    #[arg(long, default_value = ytcaption_config::DEFAULT_MODEL)]
    model: String,
    /// Spoken language: `auto` to detect it, or an ISO 639-1 code such as `en`.
    #[arg(long, default_value = "auto")]
    language: String,
    /// `transcribe`, or `translate` into English.
    #[arg(long, default_value = "transcribe")]
    task: String,
    /// Output format: txt, srt, vtt or json.
    #[arg(long, default_value = "txt")]
    format: String,
    /// Write to this file instead of standard output (atomically: no partial file on error).
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// ONNX Runtime intra-op threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Text that primes the first window: names, spelling, style.
    #[arg(long)]
    prompt: Option<String>,
    /// Windows decoded side by side on audio longer than 30 s; 1 = one at a time, each
    /// conditioned on the text before it (slower, openai-whisper's behaviour).
    #[arg(long, default_value_t = ytcaption_actors::engine::DEFAULT_BATCH_SIZE)]
    batch_size: usize,
    /// Skip word-level timestamps (a little faster).
    #[arg(long)]
    no_word_timestamps: bool,
    /// Print timing figures to standard error when done.
    #[arg(long)]
    stats: bool,
}

pub fn run(dirs: &Dirs, args: Args) -> anyhow::Result<()> {
    // Check everything the user typed before the (slow) model load.
    let format: Format = args.format.parse()?;
    let task: Task = args.task.parse()?;
    let language = match args.language.as_str() {
        "auto" | "" => None,
        code => Some(code.to_ascii_lowercase()),
    };
    if let Some(threads) = args.threads {
        anyhow::ensure!(
            (1..=256).contains(&threads),
            "--threads must be between 1 and 256"
        );
    }
    anyhow::ensure!(
        (1..=32).contains(&args.batch_size),
        "--batch-size must be between 1 and 32"
    );
    if let Some(output) = &args.output {
        check_output_dir(output)?;
    }
    let source = AudioSource::open(&args.input)
        .with_context(|| format!("cannot read {}", args.input.display()))?;

    let model_dir = resolve_model(&args.model, &dirs.models)?;
    let library = find_runtime_library(&dirs.models)?;
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    let engine = Engine::load(&model_dir, &library, threads)?;

    let options = TranscribeOptions {
        language,
        task,
        initial_prompt: args.prompt,
        word_timestamps: !args.no_word_timestamps,
        batch_size: args.batch_size,
        ..TranscribeOptions::default()
    };
    let bar = source
        .duration_hint()
        .filter(|seconds| *seconds >= PROGRESS_BAR_MIN_SECONDS)
        .map(progress_bar);
    let mut on_progress = |p: Progress| {
        if let Some(bar) = &bar {
            bar.set_position(p.done as u64);
        }
    };
    let (transcript, stats) = engine
        .transcribe(source, &options, &mut on_progress)
        .with_context(|| format!("cannot transcribe {}", args.input.display()))?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if args.stats {
        eprintln!(
            "audio {:.1} s, wall {:.2} s, real-time factor {:.1}x, windows {}, tokens {}, encoder {:.2} s, decoder {:.2} s ({:.1} ms/token)",
            transcript.duration,
            stats.total_seconds,
            transcript.duration / stats.total_seconds.max(1e-9),
            stats.windows,
            stats.decoded_tokens,
            stats.encode_seconds,
            stats.decode_seconds,
            1000.0 * stats.decode_seconds / stats.decoded_tokens.max(1) as f64
        );
    }
    let rendered = format.render(&transcript);
    match &args.output {
        Some(path) => write_atomically(path, rendered.as_bytes()),
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(rendered.as_bytes())
                .and_then(|()| stdout.flush())
                .context("cannot write to standard output")
        }
    }
}

fn progress_bar(total_seconds: f64) -> ProgressBar {
    let bar = ProgressBar::new(total_seconds.ceil() as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} s audio (eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}

fn check_output_dir(output: &Path) -> anyhow::Result<()> {
    let parent = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    anyhow::ensure!(
        parent.is_dir(),
        "output directory {} does not exist",
        parent.display()
    );
    anyhow::ensure!(
        !output.is_dir(),
        "output {} is a directory",
        output.display()
    );
    Ok(())
}

/// Writes to a temporary file beside `path`, then renames it into place.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = parent.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let result = std::fs::write(&temp, bytes).and_then(|()| std::fs::rename(&temp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result.with_context(|| format!("cannot write {}", path.display()))
}
