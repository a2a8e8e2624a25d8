//! `ytcaption model list` and `ytcaption model import`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;
use clap::Subcommand;
use ytcaption_actors::engine::list_models;

use crate::Dirs;

/// The checkout this binary was built from: where the converter script and its venv live.
const SOURCE_ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// List installed models.
    List,
    /// Convert a CTranslate2 Whisper model directory (any faster-whisper model) into the
    /// models directory.
    Import {
        /// The CTranslate2 directory (model.bin, config.json, tokenizer.json).
        dir: PathBuf,
        /// Name to install it under.
        #[arg(long)]
        name: String,
        /// Also build an int8 variant, named NAME-int8.
        #[arg(long)]
        int8: bool,
    },
}

pub fn run(dirs: &Dirs, command: ModelCommand) -> anyhow::Result<()> {
    match command {
        ModelCommand::List => list(&dirs.models),
        ModelCommand::Import { dir, name, int8 } => import(&dirs.models, &dir, &name, int8),
    }
}

fn list(models_dir: &Path) -> anyhow::Result<()> {
    let models = list_models(models_dir);
    if models.is_empty() {
        println!(
            "no models in {} (run `make model` to install base and tiny.en)",
            models_dir.display()
        );
        return Ok(());
    }
    println!("models in {}:", models_dir.display());
    for (path, manifest) in models {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match manifest {
            Ok(manifest) => println!("  {name:<16} {}", manifest.describe()),
            Err(error) => println!("  {name:<16} unusable: {error}"),
        }
    }
    Ok(())
}

fn import(models_dir: &Path, source: &Path, name: &str, int8: bool) -> anyhow::Result<()> {
    anyhow::ensure!(
        source.join("model.bin").is_file() && source.join("config.json").is_file(),
        "{} is not a CTranslate2 Whisper directory (it needs model.bin, config.json and tokenizer.json)",
        source.display()
    );
    anyhow::ensure!(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)),
        "model name {name:?} may only use letters, digits, '.', '_' and '-'"
    );
    let root = Path::new(SOURCE_ROOT);
    let script = std::env::var_os("YTCAPTION_CONVERTER")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("deploy/model/ct2_to_onnx.py"));
    let venv_python = root.join(".venv/bin/python");
    anyhow::ensure!(
        script.is_file() && venv_python.is_file(),
        "the converter needs the ytcaption checkout's venv: run `make model` in {} first",
        root.display()
    );
    std::fs::create_dir_all(models_dir)
        .with_context(|| format!("cannot create {}", models_dir.display()))?;
    let mut variants = vec![(name.to_owned(), false)];
    if int8 {
        variants.push((format!("{name}-int8"), true));
    }
    for (variant, quantize) in variants {
        let out = models_dir.join(&variant);
        let mut command = Command::new(&venv_python);
        command
            .arg(&script)
            .arg(source)
            .arg(&out)
            .arg("--name")
            .arg(&variant);
        if quantize {
            command.arg("--int8");
        }
        let status = command.status().context("cannot run the converter")?;
        anyhow::ensure!(status.success(), "converting {} failed", source.display());
        println!("installed {variant} in {}", out.display());
    }
    Ok(())
}
