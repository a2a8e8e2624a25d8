//! A converted Whisper model on disk (`manifest.json`, `encoder.onnx`, `decoder.onnx`,
//! `embeddings.f16`, `tokenizer.json`, `config.json`) and the ONNX Runtime sessions that run
//! it.
//!
//! The graphs follow the contract written by `deploy/model/ct2_to_onnx.py` (manifest format
//! 4; `l` runs over the decoder layers, `H` heads of `hd` dimensions):
//! - encoder: `mel [B, n_mels, 3000]` -> `cross_k_l [B, H, hd, 1500]`, `cross_v_l [B, H,
//!   1500, hd]` (every decoder layer's cross-attention keys, transposed, and values, computed
//!   once per window in the layout the decoder multiplies with);
//! - `embeddings.f16`: the token embedding table, raw little-endian fp16 `[V, D]`. Rows are
//!   read from the file as tokens need them ([`TokenTable`]), so the table never sits in
//!   memory (the decoder graph holds only the output projection's copy);
//! - decoder: `embeds f32 [B, n, D]` (the tokens' rows), `offset i64 [1]`, `self_k_l`,
//!   `self_v_l [B, H, C, hd]`, `cross_k_l`, `cross_v_l` -> `logits [B, V]` (last position),
//!   `new_k_l`, `new_v_l [B, H, n, hd]` (the `n` new positions only) and `cross_qk [B,
//!   H_align, n, 1500]` (raw attention scores of the alignment heads, for word timings).
//!
//! The self-attention cache ([`KvCache`]) is a fixed buffer of `C` positions per layer,
//! allocated once per decode: the graph reads its first `offset` positions in place and
//! masks the rest, and [`WhisperModel::decode`] copies the new keys and values into it. Every
//! step of a window thus has the same shapes and copies only its own `n` positions (a cache
//! grown by concatenation was copied whole on every step, and ONNX Runtime saw a new shape
//! each time: the decoder step measured about a quarter slower).
//!
//! Per-layer tensors are separate inputs so that a decoder step never copies the audio
//! context: each step reads it in place.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor};
use serde::Deserialize;

use super::EngineError;

/// Where `make model` puts the ONNX Runtime library, relative to the models directory.
pub const ORT_LIB_SUBDIR: &str = "onnxruntime";
/// The graph contract this engine runs (manifest `format`).
pub const GRAPH_FORMAT: u32 = 4;
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
        if manifest.format != GRAPH_FORMAT {
            return Err(EngineError::ModelFile {
                path,
                reason: format!(
                    "the model was converted for graph format {} but this ytcaption needs {GRAPH_FORMAT}: {INSTALL_HINT} again (or re-import it)",
                    manifest.format
                ),
            });
        }
        Ok(manifest)
    }

    /// One line about the model's shape and precision, for `model list`.
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
    /// `self_k_0, self_v_0, self_k_1, ...`: decoder cache inputs, in [`KvCache`] order.
    cache_inputs: Vec<String>,
    /// `new_k_0, new_v_0, ...`: the matching decoder outputs.
    cache_outputs: Vec<String>,
    /// `cross_k_0, cross_v_0, ...`: encoder outputs and decoder inputs, in [`AudioContext`] order.
    cross_names: Vec<String>,
    tokens: TokenTable,
    pub manifest: Manifest,
}

/// The token embedding table, read row by row from `embeddings.f16` (see the module doc).
/// Reading a few rows per step from the page cache costs microseconds; holding the table
/// cost 53 MB of resident memory for base, and memory-mapping it did not help (readahead
/// made most of it resident within a hundred lookups).
#[derive(Debug)]
struct TokenTable {
    file: std::fs::File,
    path: PathBuf,
    rows: usize,
    width: usize,
}

impl TokenTable {
    fn open(path: PathBuf, rows: usize, width: usize) -> Result<TokenTable, EngineError> {
        let bad = |reason: String| EngineError::ModelFile {
            path: path.clone(),
            reason,
        };
        let file = std::fs::File::open(&path).map_err(|e| bad(format!("cannot open: {e}")))?;
        let len = file
            .metadata()
            .map_err(|e| bad(format!("cannot read: {e}")))?
            .len();
        let want = (rows * width * 2) as u64;
        if len != want {
            return Err(bad(format!(
                "{len} bytes, expected {want} ({rows} x {width} fp16)"
            )));
        }
        Ok(TokenTable {
            file,
            path,
            rows,
            width,
        })
    }

    /// The rows of `tokens`, as f32, one after another.
    fn lookup(&self, tokens: &[i64]) -> Result<Vec<f32>, EngineError> {
        use std::os::unix::fs::FileExt;
        let mut out = Vec::with_capacity(tokens.len() * self.width);
        let mut row = vec![0u8; self.width * 2];
        for &token in tokens {
            let index = usize::try_from(token)
                .ok()
                .filter(|&index| index < self.rows)
                .ok_or_else(|| {
                    EngineError::Runtime(format!(
                        "token {token} is outside the vocabulary ({} entries)",
                        self.rows
                    ))
                })?;
            self.file
                .read_exact_at(&mut row, (index * self.width * 2) as u64)
                .map_err(|e| EngineError::ModelFile {
                    path: self.path.clone(),
                    reason: format!("cannot read token {token}: {e}"),
                })?;
            out.extend(
                row.chunks_exact(2)
                    .map(|half| f16_to_f32(u16::from_le_bytes([half[0], half[1]]))),
            );
        }
        Ok(out)
    }
}

/// IEEE 754 binary16 to binary32 (exact: every half value is a float).
fn f16_to_f32(half: u16) -> f32 {
    let sign = u32::from(half >> 15) << 31;
    let exponent = u32::from((half >> 10) & 0x1f);
    let mantissa = u32::from(half & 0x3ff);
    let bits = match (exponent, mantissa) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: shift the mantissa up until its leading one is the implicit bit.
            let shift = mantissa.leading_zeros() - 21;
            let exponent = 127 - 15 + 1 - shift;
            sign | (exponent << 23) | (((mantissa << shift) & 0x3ff) << 13)
        }
        (0x1f, _) => sign | 0x7f80_0000 | (mantissa << 13),
        _ => sign | ((exponent + 127 - 15) << 23) | (mantissa << 13),
    };
    f32::from_bits(bits)
}

impl std::fmt::Debug for WhisperModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhisperModel")
            .field("name", &self.manifest.name)
            .finish()
    }
}

/// Per-window audio context: every decoder layer's cross-attention keys and values
/// (`cross_k_0, cross_v_0, cross_k_1, ...`), batch axis first.
#[derive(Debug)]
pub struct AudioContext {
    cross: Vec<DynValue>,
    pub batch: usize,
}

impl AudioContext {
    /// The encoder's outputs (`cross_k_0, cross_v_0, ...`, each flattened), for inspection.
    pub fn values(&self) -> Result<Vec<&[f32]>, EngineError> {
        self.cross
            .iter()
            .map(|value| {
                value
                    .try_extract_tensor::<f32>()
                    .map(|(_, data)| data)
                    .map_err(ort_error("encoder output"))
            })
            .collect()
    }
}

/// The decoder's self-attention cache for a batch of sequences (`k_0, v_0, k_1, ...`): per
/// layer a `[B, H, capacity, hd]` buffer whose first `len` positions are filled.
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<Tensor<f32>>,
    pub len: usize,
    pub capacity: usize,
    /// `B * H`: the rows of `capacity` positions in each buffer.
    rows: usize,
    head_dim: usize,
}

/// What one decoder call returns.
#[derive(Debug)]
pub struct DecoderOutput {
    /// `[B, V]` logits of the last position.
    pub logits: Vec<f32>,
    /// `[B, H_align, n, 1500]` raw cross-attention scores, when asked for.
    pub cross_qk: Option<Vec<f32>>,
}

/// `prefix_k_0, prefix_v_0, prefix_k_1, ...` for `layers` layers.
fn per_layer_names(prefix: &str, layers: usize) -> Vec<String> {
    (0..layers)
        .flat_map(|l| [format!("{prefix}_k_{l}"), format!("{prefix}_v_{l}")])
        .collect()
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
            let option = |e: ort::Error<_>| EngineError::Runtime(format!("session options: {e}"));
            let mut builder = Session::builder(&env)
                .map_err(ort_error("session builder"))?
                .with_optimization_level(GraphOptimizationLevel::All)
                .map_err(option)?
                // Memory patterns plan for fixed shapes; the decoder's change every step, and
                // without them peak memory measured 50-90 MB lower at the same speed.
                .with_memory_pattern(false)
                .map_err(option)?
                .with_intra_threads(threads.max(1))
                .map_err(option)?
                .with_inter_threads(1)
                .map_err(option)?
                // Spinning workers burn the cores other work (and other windows) need; on a
                // busy machine they made every decoder step several times slower.
                .with_intra_op_spinning(false)
                .map_err(option)?;
            if file == "decoder.onnx" {
                // The fusion folds the query's 1/sqrt(hd) scale into the cross-attention
                // q.K MatMul as a FusedMatMul, which has no fast path for one query row: per
                // step it took 275 us per layer against 136 us for the plain MatMul (base fp32,
                // 2 threads; the whole step 11.3 -> 10.2 ms of kernel time). The scale is 1/8
                // (every Whisper size has 64-wide heads), so only the kernels' summation order
                // differs: fp32 transcripts came out identical, int8 ones differ by a comma.
                builder = builder
                    .with_disabled_optimizers("MatMulScaleFusion")
                    .map_err(option)?;
            }
            builder.commit_from_file(&path).map_err(corrupt)
        };
        let layers = manifest.n_text_layer;
        Ok(WhisperModel {
            encoder: Mutex::new(open("encoder.onnx")?),
            decoder: Mutex::new(open("decoder.onnx")?),
            cache_inputs: per_layer_names("self", layers),
            cache_outputs: per_layer_names("new", layers),
            cross_names: per_layer_names("cross", layers),
            tokens: TokenTable::open(
                model_dir.join("embeddings.f16"),
                manifest.n_vocab,
                manifest.n_text_state,
            )?,
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
        let cross = self
            .cross_names
            .iter()
            .map(|name| {
                outputs
                    .remove(name)
                    .ok_or_else(|| EngineError::Runtime(format!("encoder has no output {name}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(AudioContext { cross, batch })
    }

    /// Encodes windows one at a time (the encoder's activations grow with the batch, so this
    /// keeps peak memory at one window's: one batched run of 4 base windows peaked 95 MB
    /// higher, for a 2% faster encoder) and stacks the results along the batch axis for a
    /// batched decode.
    pub fn encode_each(&self, mut mels: Vec<Vec<f32>>) -> Result<AudioContext, EngineError> {
        let batch = mels.len();
        if batch == 1 {
            if let Some(mel) = mels.pop() {
                return self.encode(mel, 1);
            }
        }
        let mut stacked: Vec<(Vec<i64>, Vec<f32>)> = Vec::new();
        for mel in mels {
            let one = self.encode(mel, 1)?;
            for (i, value) in one.cross.iter().enumerate() {
                let (shape, data) = value
                    .try_extract_tensor::<f32>()
                    .map_err(ort_error("encoder output"))?;
                if stacked.len() <= i {
                    let mut dims: Vec<i64> = shape.iter().copied().collect();
                    if let Some(first) = dims.first_mut() {
                        *first = batch as i64;
                    }
                    stacked.push((dims, Vec::with_capacity(data.len() * batch)));
                }
                stacked[i].1.extend_from_slice(data);
            }
        }
        let cross = stacked
            .into_iter()
            .map(|(dims, data)| -> Result<DynValue, EngineError> {
                Ok(Tensor::from_array((dims, data))
                    .map_err(ort_error("stacked encoder output"))?
                    .into_dyn())
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(AudioContext { cross, batch })
    }

    /// An empty self-attention cache for `batch` sequences of up to `capacity` tokens
    /// (clamped to 1 ..= the model's text context).
    pub fn empty_cache(&self, batch: usize, capacity: usize) -> Result<KvCache, EngineError> {
        let heads = self.manifest.n_text_head.max(1);
        let head_dim = self.manifest.n_text_state / heads;
        let capacity = capacity.clamp(1, self.manifest.n_text_ctx.max(1));
        let shape = [batch, heads, capacity, head_dim];
        let layers = self
            .cache_inputs
            .iter()
            .map(|_| {
                // Zeroed pages come from the kernel lazily: an unused tail costs no memory.
                Tensor::from_array((shape, vec![0f32; batch * heads * capacity * head_dim]))
                    .map_err(ort_error("cache"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(KvCache {
            layers,
            len: 0,
            capacity,
            rows: batch * heads,
            head_dim,
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
        if cache.len + n > cache.capacity || batch * self.manifest.n_text_head != cache.rows {
            return Err(EngineError::Runtime(format!(
                "decoder cache of {} positions ({} filled, {} rows) cannot take {n} more tokens for {batch} sequences",
                cache.capacity, cache.len, cache.rows
            )));
        }
        let width = self.manifest.n_text_state;
        let embeds = Tensor::from_array(([batch, n, width], self.tokens.lookup(tokens)?))
            .map_err(ort_error("decoder embeddings"))?;
        let offset = Tensor::from_array(([1usize], vec![cache.len as i64]))
            .map_err(ort_error("decoder offset"))?;
        let mut inputs: Vec<(std::borrow::Cow<'_, str>, SessionInputValue<'_>)> =
            Vec::with_capacity(2 + self.cache_inputs.len() + self.cross_names.len());
        inputs.push(("embeds".into(), embeds.into()));
        inputs.push(("offset".into(), offset.into()));
        for (name, value) in self.cache_inputs.iter().zip(&cache.layers) {
            inputs.push((name.as_str().into(), value.into()));
        }
        for (name, value) in self.cross_names.iter().zip(&audio.cross) {
            inputs.push((name.as_str().into(), value.into()));
        }
        let mut session = self
            .decoder
            .lock()
            .map_err(|_| EngineError::Runtime("decoder session poisoned".into()))?;
        let outputs = session.run(inputs).map_err(ort_error("decoder"))?;
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
        // Each buffer row (one sequence's head) takes its n new positions at `len`.
        let row_new = n * cache.head_dim;
        let row_cap = cache.capacity * cache.head_dim;
        let at = cache.len * cache.head_dim;
        for (buffer, name) in cache.layers.iter_mut().zip(&self.cache_outputs) {
            let new = outputs
                .get(name)
                .ok_or_else(|| missing(name))?
                .try_extract_tensor::<f32>()
                .map_err(ort_error("decoder cache output"))?
                .1;
            let (_, buffer) = buffer.extract_tensor_mut();
            if new.len() != cache.rows * row_new || buffer.len() != cache.rows * row_cap {
                return Err(EngineError::Runtime(format!(
                    "decoder output {name} has {} values, expected {}",
                    new.len(),
                    cache.rows * row_new
                )));
            }
            for (dst, src) in buffer
                .chunks_exact_mut(row_cap)
                .zip(new.chunks_exact(row_new))
            {
                dst[at..at + row_new].copy_from_slice(src);
            }
        }
        cache.len += n;
        Ok(DecoderOutput { logits, cross_qk })
    }
}

#[cfg(test)]
mod tests {
    use super::f16_to_f32;

    #[test]
    fn half_floats_convert_exactly() {
        // Normal values, both signs, the largest finite one and the smallest normal one.
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0400), 2f32.powi(-14));
        // Subnormals: the smallest, the largest, one in between.
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x03ff), 1023.0 * 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x0200), 2f32.powi(-15));
        // Zeros, infinities, NaN.
        assert_eq!(f16_to_f32(0x0000).to_bits(), 0);
        assert_eq!(f16_to_f32(0x8000).to_bits(), 0x8000_0000);
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
        assert_eq!(f16_to_f32(0xfc00), f32::NEG_INFINITY);
        assert!(f16_to_f32(0x7e00).is_nan());
    }
}
