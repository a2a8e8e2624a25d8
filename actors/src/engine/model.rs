//! A converted Whisper model on disk (`manifest.json`, `encoder.onnx`, `decoder.onnx`,
//! `tokenizer.json`, `config.json`) and the ONNX Runtime sessions that run it.
//!
//! The graphs follow the contract written by `deploy/model/ct2_to_onnx.py`:
//! - encoder: `mel [B, n_mels, 3000]` -> `cross_k`, `cross_v [L, B, 1500, D]` (every decoder
//!   layer's cross-attention keys and values, computed once per window);
//! - decoder: `tokens i64 [B, n]`, `self_k`, `self_v [L, B, past, D]`, `cross_k`, `cross_v` ->
//!   `logits [B, V]` (last position), `new_k`, `new_v [L, B, past + n, D]` and `cross_qk
//!   [B, H_align, n, 1500]` (raw attention scores of the alignment heads, for word timings).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::{DynValue, Tensor};
use serde::Deserialize;

use super::EngineError;

/// Where `make model` puts the ONNX Runtime library, relative to the models directory.
pub const ORT_LIB_SUBDIR: &str = "onnxruntime";
/// The command that installs the default models and the runtime.
pub const INSTALL_HINT: &str = "run `make model` in the ytcaption checkout";

/// Special token ids of a model's vocabulary.
#[derive(Debug, Clone, Deserialize)]
pub struct SpecialTokens {
    pub eot: u32,
    pub sot: u32,
    pub translate: u32,
    pub transcribe: u32,
    pub sot_lm: u32,
    pub sot_prev: u32,
    pub no_speech: u32,
    pub no_timestamps: u32,
    pub timestamp_begin: u32,
}

/// `manifest.json`: what the converter wrote about a model.
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub name: String,
    #[serde(default)]
    pub source: String,
    pub precision: String,
    pub n_mels: usize,
    pub n_audio_ctx: usize,
    pub n_audio_state: usize,
    pub n_audio_layer: usize,
    pub n_audio_head: usize,
    pub n_text_ctx: usize,
    pub n_text_state: usize,
    pub n_text_layer: usize,
    pub n_text_head: usize,
    pub n_vocab: usize,
    pub multilingual: bool,
    pub alignment_heads: Vec<(usize, usize)>,
    pub suppress_ids: Vec<u32>,
    pub suppress_ids_begin: Vec<u32>,
    pub tokens: SpecialTokens,
    /// Language code and its token id, in vocabulary order.
    pub languages: Vec<(String, u32)>,
    /// sha256 of every file of the model.
    pub files: std::collections::BTreeMap<String, String>,
}

impl Manifest {
    pub fn load(model_dir: &Path) -> Result<Self, EngineError> {
        let path = model_dir.join("manifest.json");
        let text = std::fs::read_to_string(&path).map_err(|e| EngineError::ModelFile {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let manifest: Manifest =
            serde_json::from_str(&text).map_err(|e| EngineError::ModelFile {
                path: path.clone(),
                reason: format!("not a ytcaption model manifest: {e}"),
            })?;
        if manifest.format != 1 {
            return Err(EngineError::ModelFile {
                path,
                reason: format!("manifest format {} is not supported", manifest.format),
            });
        }
        Ok(manifest)
    }

    /// Approximate parameter count, for `model list`.
    pub fn describe(&self) -> String {
        format!(
            "{} layers+{} layers, d={}, {} mels, {}, {}",
            self.n_audio_layer,
            self.n_text_layer,
            self.n_audio_state,
            self.n_mels,
            if self.multilingual {
                "multilingual"
            } else {
                "English-only"
            },
            self.precision
        )
    }
}

fn ort_error(context: &str) -> impl Fn(ort::Error<()>) -> EngineError + '_ {
    move |e| EngineError::Runtime(format!("{context}: {e}"))
}

/// The ONNX Runtime library: `ORT_DYLIB_PATH`, else `<models dir>/onnxruntime/libonnxruntime.so*`.
pub fn find_runtime_library(models_dir: &Path) -> Result<PathBuf, EngineError> {
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(EngineError::RuntimeMissing(format!(
                "ORT_DYLIB_PATH points to {}, which is not a file",
                path.display()
            )))
        };
    }
    let dir = models_dir.join(ORT_LIB_SUBDIR);
    let mut candidates: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .filter(|path| {
                    path.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("libonnxruntime.so"))
                })
                .collect()
        })
        .unwrap_or_default();
    candidates.sort();
    candidates.pop().ok_or_else(|| {
        EngineError::RuntimeMissing(format!(
            "no ONNX Runtime library in {} and ORT_DYLIB_PATH is not set",
            dir.display()
        ))
    })
}

/// The process-wide ONNX Runtime environment; the library is loaded once.
fn environment(library: &Path) -> Result<Environment, EngineError> {
    static ENV: OnceLock<Result<Environment, String>> = OnceLock::new();
    ENV.get_or_init(|| {
        ort::init_from(library)
            .map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", library.display()))?
            .with_name("ytcaption")
            .with_telemetry(false)
            .build()
            .map_err(|e| format!("cannot start ONNX Runtime: {e}"))
    })
    .clone()
    .map_err(EngineError::RuntimeMissing)
}

/// Encoder and decoder sessions. Each sits behind a mutex because a session run needs `&mut`;
/// windows of one file go through them one batch at a time anyway.
pub struct WhisperModel {
    encoder: Mutex<Session>,
    decoder: Mutex<Session>,
    pub manifest: Manifest,
}

impl std::fmt::Debug for WhisperModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhisperModel")
            .field("name", &self.manifest.name)
            .finish()
    }
}

/// Per-window audio context: the decoder's cross-attention keys and values.
#[derive(Debug)]
pub struct AudioContext {
    cross_k: DynValue,
    cross_v: DynValue,
    pub batch: usize,
}

/// The decoder's self-attention cache for a batch of sequences.
#[derive(Debug)]
pub struct KvCache {
    k: DynValue,
    v: DynValue,
    pub len: usize,
}

/// What one decoder call returns.
#[derive(Debug)]
pub struct DecoderOutput {
    /// `[B, V]` logits of the last position.
    pub logits: Vec<f32>,
    /// `[B, H_align, n, 1500]` raw cross-attention scores, when asked for.
    pub cross_qk: Option<Vec<f32>>,
}

impl WhisperModel {
    pub fn load(model_dir: &Path, library: &Path, threads: usize) -> Result<Self, EngineError> {
        let manifest = Manifest::load(model_dir)?;
        let env = environment(library)?;
        let open = |file: &str| -> Result<Session, EngineError> {
            let path = model_dir.join(file);
            if !path.is_file() {
                return Err(EngineError::ModelFile {
                    path,
                    reason: "missing".into(),
                });
            }
            let corrupt = |e: ort::Error<_>| EngineError::ModelFile {
                path: path.clone(),
                reason: format!("corrupt or unreadable ONNX graph: {e}"),
            };
            let builder = Session::builder(&env).map_err(ort_error("session builder"))?;
            let mut builder = builder
                .with_optimization_level(GraphOptimizationLevel::All)
                .and_then(|b| b.with_intra_threads(threads.max(1)))
                .and_then(|b| b.with_inter_threads(1))
                // Spinning workers burn the cores other work (and other windows) need; on a
                // busy machine they made every decoder step several times slower.
                .and_then(|b| b.with_intra_op_spinning(false))
                .map_err(|e| EngineError::Runtime(format!("session options: {e}")))?;
            builder.commit_from_file(&path).map_err(corrupt)
        };
        Ok(WhisperModel {
            encoder: Mutex::new(open("encoder.onnx")?),
            decoder: Mutex::new(open("decoder.onnx")?),
            manifest,
        })
    }

    /// Runs the encoder on `batch` windows of log-mel (`[batch, n_mels, 3000]` flattened).
    pub fn encode(&self, mel: Vec<f32>, batch: usize) -> Result<AudioContext, EngineError> {
        let n_mels = self.manifest.n_mels;
        let frames = mel.len() / (batch * n_mels).max(1);
        let input = Tensor::from_array(([batch, n_mels, frames], mel))
            .map_err(ort_error("encoder input"))?;
        let mut session = self
            .encoder
            .lock()
            .map_err(|_| EngineError::Runtime("encoder session poisoned".into()))?;
        let mut outputs = session
            .run(ort::inputs!["mel" => input])
            .map_err(ort_error("encoder"))?;
        let take = |outputs: &mut ort::session::SessionOutputs<'_>, name: &str| {
            outputs
                .remove(name)
                .ok_or_else(|| EngineError::Runtime(format!("encoder has no output {name}")))
        };
        let cross_k = take(&mut outputs, "cross_k")?;
        let cross_v = take(&mut outputs, "cross_v")?;
        Ok(AudioContext {
            cross_k,
            cross_v,
            batch,
        })
    }

    /// Encodes windows one at a time (the encoder's attention activations grow with the
    /// batch, so this keeps peak memory at one window's) and stacks the results along the
    /// batch axis for a batched decode.
    pub fn encode_each(&self, mut mels: Vec<Vec<f32>>) -> Result<AudioContext, EngineError> {
        let batch = mels.len();
        if batch == 1 {
            if let Some(mel) = mels.pop() {
                return self.encode(mel, 1);
            }
        }
        let (layers, ctx, state) = (
            self.manifest.n_text_layer,
            self.manifest.n_audio_ctx,
            self.manifest.n_text_state,
        );
        let per_layer = ctx * state;
        let mut keys = vec![0f32; layers * batch * per_layer];
        let mut values = vec![0f32; layers * batch * per_layer];
        for (b, mel) in mels.into_iter().enumerate() {
            let one = self.encode(mel, 1)?;
            for (source, target) in [(&one.cross_k, &mut keys), (&one.cross_v, &mut values)] {
                let (_, data) = source
                    .try_extract_tensor::<f32>()
                    .map_err(ort_error("encoder output"))?;
                if data.len() != layers * per_layer {
                    return Err(EngineError::Runtime(format!(
                        "encoder output has {} values, expected {}",
                        data.len(),
                        layers * per_layer
                    )));
                }
                for l in 0..layers {
                    let to = (l * batch + b) * per_layer;
                    target[to..to + per_layer]
                        .copy_from_slice(&data[l * per_layer..(l + 1) * per_layer]);
                }
            }
        }
        let shape = [layers, batch, ctx, state];
        let stack = |data: Vec<f32>| -> Result<DynValue, EngineError> {
            Ok(Tensor::from_array((shape, data))
                .map_err(ort_error("stacked encoder output"))?
                .into_dyn())
        };
        Ok(AudioContext {
            cross_k: stack(keys)?,
            cross_v: stack(values)?,
            batch,
        })
    }

    /// An empty self-attention cache for `batch` sequences.
    pub fn empty_cache(&self, batch: usize) -> Result<KvCache, EngineError> {
        let shape = [self.manifest.n_text_layer, batch, 0, self.manifest.n_text_state];
        let empty = || -> Result<DynValue, EngineError> {
            Ok(Tensor::from_array((shape, Vec::<f32>::new()))
                .map_err(ort_error("empty cache"))?
                .into_dyn())
        };
        Ok(KvCache {
            k: empty()?,
            v: empty()?,
            len: 0,
        })
    }

    /// Feeds `tokens` (`[batch, n]` row-major) after `cache`, which it extends in place.
    pub fn decode(
        &self,
        audio: &AudioContext,
        cache: &mut KvCache,
        tokens: &[i64],
        want_cross_qk: bool,
    ) -> Result<DecoderOutput, EngineError> {
        let batch = audio.batch;
        let n = tokens.len() / batch.max(1);
        let tokens = Tensor::from_array(([batch, n], tokens.to_vec()))
            .map_err(ort_error("decoder tokens"))?;
        let mut session = self
            .decoder
            .lock()
            .map_err(|_| EngineError::Runtime("decoder session poisoned".into()))?;
        let mut outputs = session
            .run(ort::inputs![
                "tokens" => tokens,
                "self_k" => &cache.k,
                "self_v" => &cache.v,
                "cross_k" => &audio.cross_k,
                "cross_v" => &audio.cross_v,
            ])
            .map_err(ort_error("decoder"))?;
        let missing = |name: &str| EngineError::Runtime(format!("decoder has no output {name}"));
        let logits = outputs
            .get("logits")
            .ok_or_else(|| missing("logits"))?
            .try_extract_tensor::<f32>()
            .map_err(ort_error("decoder logits"))?
            .1
            .to_vec();
        let cross_qk = if want_cross_qk {
            Some(
                outputs
                    .get("cross_qk")
                    .ok_or_else(|| missing("cross_qk"))?
                    .try_extract_tensor::<f32>()
                    .map_err(ort_error("decoder cross_qk"))?
                    .1
                    .to_vec(),
            )
        } else {
            None
        };
        cache.k = outputs.remove("new_k").ok_or_else(|| missing("new_k"))?;
        cache.v = outputs.remove("new_v").ok_or_else(|| missing("new_v"))?;
        cache.len += n;
        Ok(DecoderOutput { logits, cross_qk })
    }
}
