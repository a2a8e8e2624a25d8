//! The Whisper engine: audio in, [`Transcript`] out, on ONNX Runtime, on the CPU.
//!
//! Data path: [`audio::AudioSource`] streams 16 kHz mono samples; the seek loop in
//! [`Engine::transcribe`] keeps only the current 30-second window (plus a few samples of
//! context) in memory, turns it into log-mel ([`mel`]), encodes it once ([`model`]) and decodes
//! it ([`decode`]) token by token with the KV cache; [`align`] adds word timings. Memory is
//! therefore bounded by one window, whatever the length of the file.
//!
//! The sequential seek loop (`batch_size` 1) is openai-whisper's `transcribe()`: windows start
//! where the last complete segment ended, previous text conditions the next window, silent
//! windows are skipped by the no-speech probability, and repetition loops fall back to higher
//! temperatures. By default, audio longer than one window is instead cut at quiet points into
//! 20-30 s windows decoded `batch_size` at a time, each batch conditioned on the text of the
//! window before it; the rest of the rules are the same.

pub mod align;
pub mod audio;
pub mod chunk;
pub mod decode;
pub mod mel;
pub mod model;
pub mod tokenizer;

use std::path::{Path, PathBuf};
use std::time::Instant;

use ytcaption_protocol::transcript::TRANSCRIPT_VERSION;
use ytcaption_protocol::{Segment, Transcript, Word};

use self::audio::{AudioError, AudioSource};
use self::decode::{FallbackPolicy, LogitRules, Rng, WindowDecoder, WindowResult};
use self::mel::{MelFrontEnd, HOP_LENGTH, N_FFT, N_FRAMES, N_SAMPLES, SAMPLE_RATE};
use self::model::{Manifest, WhisperModel, INSTALL_HINT};
use self::tokenizer::Tokenizer;

/// Seconds per timestamp token.
const TIME_PRECISION: f64 = 0.02;
/// Mel frames per timestamp token.
const INPUT_STRIDE: usize = 2;
/// Restart conditioning when a window needed a temperature above this (openai-whisper).
const PROMPT_RESET_TEMPERATURE: f64 = 0.5;
/// A batched window must keep decoding until its timestamps reach this close to the end of
/// the speech in it.
const SPEECH_END_SLACK_SECONDS: f64 = 1.5;
/// Above this no-speech probability a window is skipped whatever its text's probability.
const NO_SPEECH_CERTAIN: f64 = 0.8;
/// Windows decoded side by side by default.
pub const DEFAULT_BATCH_SIZE: usize = 2;
/// Batched windows are cut at the quietest point between this and 30 s.
const MIN_CHUNK_SAMPLES: usize = 20 * SAMPLE_RATE;

/// Everything that can go wrong in the engine, each with a message meant for a user.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("model {name:?} is not installed in {dir}: {INSTALL_HINT}, or import one with `ytcaption model import CT2_DIR --name {name}`")]
    ModelNotFound { name: String, dir: PathBuf },
    #[error("model file {path}: {reason}")]
    ModelFile { path: PathBuf, reason: String },
    #[error("ONNX Runtime library not found: {0}; {INSTALL_HINT} or set ORT_DYLIB_PATH")]
    RuntimeMissing(String),
    #[error("inference failed: {0}")]
    Runtime(String),
    #[error(transparent)]
    Audio(#[from] AudioError),
    #[error("{0}")]
    InvalidOption(String),
    #[error("the audio holds no samples")]
    NoAudio,
    #[error("transcription cancelled")]
    Cancelled,
}

/// `transcribe` keeps the spoken language; `translate` renders it in English.
pub use ytcaption_protocol::Task;

/// How to transcribe one file.
#[derive(Debug, Clone)]
pub struct TranscribeOptions {
    /// ISO 639-1 code, or `None` to detect it (multilingual models) / English (`.en` models).
    pub language: Option<String>,
    pub task: Task,
    /// Text that primes the first window (names, spelling, style).
    pub initial_prompt: Option<String>,
    pub word_timestamps: bool,
    /// Feed each window's text to the next as a prompt.
    pub condition_on_previous_text: bool,
    pub fallback: FallbackPolicy,
    /// Seed for sampling at temperature > 0.
    pub seed: u64,
    /// Windows decoded side by side for audio longer than one window; 1 selects
    /// openai-whisper's sequential seek loop (each window conditioned on the last).
    pub batch_size: usize,
    /// Set to stop between windows with [`EngineError::Cancelled`].
    pub cancel: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl TranscribeOptions {
    fn check_cancelled(&self) -> Result<(), EngineError> {
        match &self.cancel {
            Some(flag) if flag.load(std::sync::atomic::Ordering::Relaxed) => {
                Err(EngineError::Cancelled)
            }
            _ => Ok(()),
        }
    }
}

impl Default for TranscribeOptions {
    fn default() -> Self {
        TranscribeOptions {
            language: None,
            task: Task::Transcribe,
            initial_prompt: None,
            word_timestamps: true,
            condition_on_previous_text: true,
            fallback: FallbackPolicy::default(),
            seed: 0,
            batch_size: DEFAULT_BATCH_SIZE,
            cancel: None,
        }
    }
}

/// Where a transcription is, for progress bars and job status.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Seconds of audio done.
    pub done: f64,
    /// Total seconds, if known.
    pub total: Option<f64>,
}

/// Figures about one transcription, for benchmarks and metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    pub windows: usize,
    /// Windows decoded after a prompt (earlier text, or the initial prompt).
    pub conditioned_windows: usize,
    pub decoded_tokens: usize,
    pub encode_seconds: f64,
    pub decode_seconds: f64,
    pub total_seconds: f64,
}

/// A loaded model, ready to transcribe. Load once per process and share it (`Arc<Engine>`):
/// sessions are internally locked, so concurrent callers take turns per window.
#[derive(Debug)]
pub struct Engine {
    model: WhisperModel,
    tokenizer: Tokenizer,
    mel: MelFrontEnd,
}

/// Resolves `--model NAME|DIR`: a directory holding a `manifest.json`, else a name in the
/// models directory.
pub fn resolve_model(spec: &str, models_dir: &Path) -> Result<PathBuf, EngineError> {
    let as_path = Path::new(spec);
    if as_path.join("manifest.json").is_file() {
        return Ok(as_path.to_path_buf());
    }
    let named = models_dir.join(spec);
    if named.join("manifest.json").is_file() {
        return Ok(named);
    }
    if as_path.is_dir() {
        return Err(EngineError::ModelFile {
            path: as_path.join("manifest.json"),
            reason: "missing: this directory is not a converted ytcaption model (use `ytcaption model import`)".into(),
        });
    }
    Err(EngineError::ModelNotFound {
        name: spec.to_owned(),
        dir: models_dir.to_path_buf(),
    })
}

/// Every installed model in the models directory, by name.
pub fn list_models(models_dir: &Path) -> Vec<(PathBuf, Result<Manifest, EngineError>)> {
    let mut found: Vec<(PathBuf, Result<Manifest, EngineError>)> = std::fs::read_dir(models_dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .filter(|path| path.join("manifest.json").is_file())
                .map(|path| {
                    let manifest = Manifest::load(&path);
                    (path, manifest)
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

/// The samples of the file from the current seek position on, with a little history.
struct SampleWindow {
    source: AudioSource,
    /// Samples from absolute index `start` on.
    buffer: Vec<f32>,
    start: usize,
    /// Up to `N_FFT / 2` samples just before `start`.
    history: Vec<f32>,
    ended: bool,
}

impl SampleWindow {
    /// Makes sure the buffer holds a whole window plus the STFT's right context from `from`
    /// (or everything up to the end of the audio).
    fn fill(&mut self, from: usize) -> Result<(), EngineError> {
        let wanted = from + N_SAMPLES + N_FFT / 2;
        while !self.ended && self.start + self.buffer.len() < wanted {
            let need = wanted - (self.start + self.buffer.len());
            if self.source.read(&mut self.buffer, need.max(SAMPLE_RATE))? == 0 {
                self.ended = true;
            }
        }
        Ok(())
    }

    /// Forgets samples before `from`, keeping the STFT's left context.
    fn advance(&mut self, from: usize) {
        let drop = from.saturating_sub(self.start).min(self.buffer.len());
        if drop == 0 {
            return;
        }
        let half = N_FFT / 2;
        if drop >= half {
            self.history.clear();
        } else {
            let stale = (self.history.len() + drop).saturating_sub(half);
            self.history.drain(..stale.min(self.history.len()));
        }
        self.history
            .extend_from_slice(&self.buffer[drop.saturating_sub(half)..drop]);
        self.buffer.drain(..drop);
        self.start += drop;
    }

    /// Samples of the window starting at `from`, and how many frames of it are audio.
    fn window(&self, from: usize) -> (&[f32], &[f32], usize) {
        let offset = from.saturating_sub(self.start).min(self.buffer.len());
        let samples = &self.buffer[offset..];
        let available = samples.len();
        let content_frames = if self.ended {
            (available / HOP_LENGTH).min(N_FRAMES)
        } else {
            N_FRAMES
        };
        (&self.history, samples, content_frames)
    }
}

impl Engine {
    /// Loads a converted model. `threads` is ONNX Runtime's intra-op thread count.
    pub fn load(
        model_dir: &Path,
        runtime_library: &Path,
        threads: usize,
    ) -> Result<Self, EngineError> {
        let model = WhisperModel::load(model_dir, runtime_library, threads)?;
        let tokenizer = Tokenizer::load(&model_dir.join("tokenizer.json"))?;
        let mel = MelFrontEnd::new(model.manifest.n_mels);
        Ok(Engine {
            model,
            tokenizer,
            mel,
        })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.model.manifest
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    fn language_token(&self, code: &str) -> Result<u32, EngineError> {
        self.manifest()
            .languages
            .iter()
            .find(|(name, _)| name == code)
            .map(|(_, id)| *id)
            .ok_or_else(|| {
                EngineError::InvalidOption(format!(
                    "language {code:?} is not known to model {}",
                    self.manifest().name
                ))
            })
    }

    /// The most likely language of a window, from the logits after `<|startoftranscript|>`.
    fn detect_language(&self, audio: &model::AudioContext) -> Result<String, EngineError> {
        let mut cache = self.model.empty_cache(audio.batch, 1)?;
        let sot = i64::from(self.manifest().tokens.sot);
        let logits = self
            .model
            .decode(audio, &mut cache, &vec![sot; audio.batch], false)?
            .logits;
        self.manifest()
            .languages
            .iter()
            .max_by(|a, b| {
                let la = logits
                    .get(a.1 as usize)
                    .copied()
                    .unwrap_or(f32::NEG_INFINITY);
                let lb = logits
                    .get(b.1 as usize)
                    .copied()
                    .unwrap_or(f32::NEG_INFINITY);
                la.total_cmp(&lb)
            })
            .map(|(code, _)| code.clone())
            .ok_or_else(|| EngineError::Runtime("model lists no languages".into()))
    }

    /// Transcribes a whole file. `progress` is called after every window.
    pub fn transcribe(
        &self,
        source: AudioSource,
        options: &TranscribeOptions,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(Transcript, Stats), EngineError> {
        let started = Instant::now();
        let manifest = self.manifest();
        if options.task == Task::Translate && !manifest.multilingual {
            return Err(EngineError::InvalidOption(format!(
                "model {} is English-only and cannot translate; use a multilingual model such as base",
                manifest.name
            )));
        }
        if let Some(code) = &options.language {
            if manifest.multilingual {
                self.language_token(code)?;
            } else if code != "en" {
                return Err(EngineError::InvalidOption(format!(
                    "model {} is English-only; language {code:?} needs a multilingual model",
                    manifest.name
                )));
            }
        }
        if options.batch_size == 0 {
            return Err(EngineError::InvalidOption(
                "batch size must be at least 1".into(),
            ));
        }
        let total = source.duration_hint();
        let mut window = SampleWindow {
            source,
            buffer: Vec::with_capacity(N_SAMPLES + SAMPLE_RATE),
            start: 0,
            history: Vec::new(),
            ended: false,
        };
        window.fill(0)?;
        let mut run = RunState {
            language: if manifest.multilingual {
                options.language.clone()
            } else {
                Some("en".into())
            },
            prompt: options
                .initial_prompt
                .as_deref()
                .map(|prompt| self.tokenizer.encode(&format!(" {}", prompt.trim())))
                .unwrap_or_default(),
            segments: Vec::new(),
            stats: Stats::default(),
            rng: Rng::new(options.seed),
            total,
        };
        // Audio longer than one window is cut at quiet points and decoded in batches, unless
        // asked for one window at a time (which conditions each window on the last one).
        let samples = if !window.ended && options.batch_size > 1 {
            self.transcribe_batched(&mut window, options, &mut run, progress)?
        } else {
            self.transcribe_sequential(&mut window, options, &mut run, progress)?
        };
        if samples == 0 {
            return Err(EngineError::NoAudio);
        }
        let mut stats = run.stats;
        stats.total_seconds = started.elapsed().as_secs_f64();
        Ok((
            Transcript {
                version: TRANSCRIPT_VERSION,
                language: run.language.unwrap_or_else(|| "en".into()),
                task: options.task.as_str().into(),
                model: manifest.name.clone(),
                duration: samples as f64 / SAMPLE_RATE as f64,
                segments: run.segments,
            },
            stats,
        ))
    }

    /// `<|startoftranscript|>`, and for multilingual models the language and task tokens;
    /// detects the language on `audio`'s first window when it is not known yet.
    fn sot_sequence(
        &self,
        audio: &model::AudioContext,
        options: &TranscribeOptions,
        run: &mut RunState,
    ) -> Result<(Vec<u32>, String), EngineError> {
        let special = &self.manifest().tokens;
        let code = match &run.language {
            Some(code) => code.clone(),
            None => {
                let detected = self.detect_language(audio)?;
                run.language = Some(detected.clone());
                detected
            }
        };
        let mut sequence = vec![special.sot];
        if self.manifest().multilingual {
            sequence.push(self.language_token(&code)?);
            sequence.push(match options.task {
                Task::Transcribe => special.transcribe,
                Task::Translate => special.translate,
            });
        }
        Ok((sequence, code))
    }

    /// The decoder for the windows of `audio`, with their start-of-transcript sequence, and
    /// the language (detected here on the first window if not known yet).
    fn window_decoder(
        &self,
        audio: &model::AudioContext,
        options: &TranscribeOptions,
        run: &mut RunState,
        rules: &LogitRules,
    ) -> Result<(WindowDecoder<'_>, String), EngineError> {
        let (sot_sequence, code) = self.sot_sequence(audio, options, run)?;
        let decoder = WindowDecoder {
            model: &self.model,
            rules: rules.clone(),
            sot_sequence,
            tokenizer: &self.tokenizer,
        };
        Ok((decoder, code))
    }

    /// Whether a window's text may prompt the next window: conditioning is on and the window
    /// did not need a high temperature (its text would steer the next one astray).
    fn conditions_next(result: &WindowResult, options: &TranscribeOptions) -> bool {
        options.condition_on_previous_text && result.temperature <= PROMPT_RESET_TEMPERATURE
    }

    /// openai-whisper's rule (probably no speech and improbable text), plus: a window the
    /// model is nearly sure holds no speech is skipped even when its text looks probable,
    /// because that text is a hallucination on noise (fluent, repetitive, confident).
    fn skip_as_silent(result: &WindowResult, policy: &FallbackPolicy) -> bool {
        let Some(threshold) = policy.no_speech_threshold else {
            return false;
        };
        let improbable = !policy
            .logprob_threshold
            .is_some_and(|limit| result.avg_logprob > limit);
        result.no_speech_prob > threshold && improbable || result.no_speech_prob > NO_SPEECH_CERTAIN
    }

    /// openai-whisper's seek loop: one window at a time, each starting where the last
    /// complete segment ended, each conditioned on the text before it. Returns the number of
    /// samples in the file.
    fn transcribe_sequential(
        &self,
        window: &mut SampleWindow,
        options: &TranscribeOptions,
        run: &mut RunState,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<usize, EngineError> {
        let rules = LogitRules::new(&self.model, true);
        let mut all_tokens = run.prompt.clone();
        let mut prompt_reset_since = 0usize;
        let mut mel = vec![0f32; self.manifest().n_mels * N_FRAMES];
        let mut seek = 0usize; // in mel frames
        loop {
            let from = seek * HOP_LENGTH;
            window.advance(from);
            window.fill(from)?;
            let (history, samples, segment_frames) = window.window(from);
            if segment_frames == 0 {
                break;
            }
            if chunk::is_silent(&samples[..(segment_frames * HOP_LENGTH).min(samples.len())]) {
                seek += segment_frames;
                continue;
            }
            self.mel
                .window(history, samples, seek == 0, segment_frames, &mut mel);
            let time_offset = (seek * HOP_LENGTH) as f64 / SAMPLE_RATE as f64;
            let segment_duration = segment_frames as f64 * HOP_LENGTH as f64 / SAMPLE_RATE as f64;

            let audio = timed(&mut run.stats.encode_seconds, || {
                self.model.encode(mel.clone(), 1)
            })?;
            run.stats.windows += 1;
            let (decoder, code) = self.window_decoder(&audio, options, run, &rules)?;
            let sot_sequence = &decoder.sot_sequence;
            let decode_start = Instant::now();
            let prompt = &all_tokens[prompt_reset_since.min(all_tokens.len())..];
            run.stats.conditioned_windows += usize::from(!prompt.is_empty());
            let result = decoder
                .decode_with_fallback(&audio, prompt, &[None], &options.fallback, &mut run.rng)?
                .pop()
                .ok_or_else(|| EngineError::Runtime("decoder returned no sequence".into()))?;
            run.stats.decode_seconds += decode_start.elapsed().as_secs_f64();
            run.stats.decoded_tokens += result.tokens.len() + 1;

            if Self::skip_as_silent(&result, &options.fallback) {
                seek += segment_frames;
            } else {
                let (mut window_segments, advance, single_timestamp_ending) = self.split_segments(
                    &result,
                    time_offset,
                    segment_frames,
                    segment_duration,
                    false,
                );
                let previous_seek = seek;
                seek += advance;
                if options.word_timestamps && !window_segments.is_empty() {
                    let (item, counts) = self.align_item(&result, &window_segments, segment_frames);
                    let timings = align::align_batch(
                        &self.model,
                        &self.tokenizer,
                        &audio,
                        sot_sequence,
                        std::slice::from_ref(&item),
                        &code,
                    )?
                    .pop()
                    .unwrap_or_default();
                    let window_end = time_offset + segment_duration;
                    let last_end = apply_word_timings(
                        &mut window_segments,
                        &timings,
                        &counts,
                        time_offset,
                        window_end,
                    );
                    // Resume right after the last word when the window did not end cleanly.
                    if !single_timestamp_ending {
                        if let Some(end) = last_end.filter(|end| *end > time_offset) {
                            seek = ((end * SAMPLE_RATE as f64 / HOP_LENGTH as f64).round()
                                as usize)
                                .max(previous_seek + 1);
                        }
                    }
                }
                for (segment, tokens) in window_segments {
                    if !has_words(&segment.text) {
                        continue;
                    }
                    all_tokens.extend(tokens);
                    run.segments.push(segment);
                }
                if !Self::conditions_next(&result, options) {
                    prompt_reset_since = all_tokens.len();
                }
            }
            progress(Progress {
                done: (seek * HOP_LENGTH) as f64 / SAMPLE_RATE as f64,
                total: run.total,
            });
            options.check_cancelled()?;
        }
        Ok(window.start + window.buffer.len())
    }

    /// Long audio: cut into windows of 20-30 s at the quietest point, encode each, then decode
    /// `batch_size` windows side by side (the decoder's cost per step is dominated by reading
    /// its weights, which the batch shares). The windows of a batch share one prompt: the
    /// text of the last window before the batch (with `condition_on_previous_text`), so only
    /// the first has its own predecessor's text. Returns the number of samples in the file.
    fn transcribe_batched(
        &self,
        window: &mut SampleWindow,
        options: &TranscribeOptions,
        run: &mut RunState,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<usize, EngineError> {
        let rules = LogitRules::new(&self.model, true);
        let n_mels = self.manifest().n_mels;
        let mut chunk_start = 0usize; // absolute sample index
                                      // Every window of a batch is conditioned on the text of the last window before the
                                      // batch (its true predecessor for the first window, one further back for the others).
        let mut prompt = run.prompt.clone();
        loop {
            // Cut up to batch_size chunks and compute their log-mel while the samples are here.
            let mut chunks: Vec<(usize, usize)> = Vec::new();
            let mut mels = Vec::new();
            let mut speech_until = Vec::new();
            while chunks.len() < options.batch_size {
                window.advance(chunk_start);
                window.fill(chunk_start)?;
                let (history, samples, _) = window.window(chunk_start);
                let len = if window.ended && samples.len() <= N_SAMPLES {
                    samples.len()
                } else {
                    chunk::find_cut(samples, MIN_CHUNK_SAMPLES, N_SAMPLES)
                };
                if len < HOP_LENGTH {
                    break;
                }
                if chunk::is_silent(&samples[..len]) {
                    chunk_start += len;
                    continue;
                }
                let mut mel = vec![0f32; n_mels * N_FRAMES];
                self.mel.window(
                    history,
                    &samples[..len],
                    chunk_start == 0,
                    len / HOP_LENGTH,
                    &mut mel,
                );
                mels.push(mel);
                speech_until.push(chunk::speech_end(&samples[..len]).and_then(|end| {
                    let seconds = end as f64 / SAMPLE_RATE as f64 - SPEECH_END_SLACK_SECONDS;
                    (seconds > 0.0).then(|| (seconds / TIME_PRECISION) as u32)
                }));
                chunks.push((chunk_start, len));
                chunk_start += len;
            }
            if chunks.is_empty() {
                break;
            }

            let audio = timed(&mut run.stats.encode_seconds, || {
                self.model.encode_each(mels)
            })?;
            run.stats.windows += chunks.len();
            if !prompt.is_empty() {
                run.stats.conditioned_windows += chunks.len();
            }
            let (decoder, code) = self.window_decoder(&audio, options, run, &rules)?;
            let sot_sequence = &decoder.sot_sequence;
            let decode_start = Instant::now();
            let results = decoder.decode_with_fallback(
                &audio,
                &prompt,
                &speech_until,
                &options.fallback,
                &mut run.rng,
            )?;
            run.stats.decode_seconds += decode_start.elapsed().as_secs_f64();
            run.stats.decoded_tokens += results.iter().map(|r| r.tokens.len() + 1).sum::<usize>();

            let mut per_chunk = Vec::new();
            for (result, (start, len)) in results.iter().zip(&chunks) {
                tracing::debug!(
                    chunk_start = start,
                    chunk_len = len,
                    tokens = result.tokens.len(),
                    temperature = result.temperature,
                    "decoded window"
                );
                let frames = len / HOP_LENGTH;
                let offset = *start as f64 / SAMPLE_RATE as f64;
                let duration = *len as f64 / SAMPLE_RATE as f64;
                let segments = if Self::skip_as_silent(result, &options.fallback) {
                    Vec::new()
                } else {
                    self.split_segments(result, offset, frames, duration, true)
                        .0
                };
                per_chunk.push(segments);
            }
            if options.word_timestamps {
                let (align_items, counts): (Vec<align::AlignItem>, Vec<Vec<usize>>) = results
                    .iter()
                    .zip(&per_chunk)
                    .zip(&chunks)
                    .map(|((result, segments), (_, len))| {
                        self.align_item(result, segments, len / HOP_LENGTH)
                    })
                    .unzip();
                let timings = align::align_batch(
                    &self.model,
                    &self.tokenizer,
                    &audio,
                    sot_sequence,
                    &align_items,
                    &code,
                )?;
                for (((segments, counts), timings), (start, len)) in
                    per_chunk.iter_mut().zip(&counts).zip(&timings).zip(&chunks)
                {
                    let offset = *start as f64 / SAMPLE_RATE as f64;
                    let end = (*start + *len) as f64 / SAMPLE_RATE as f64;
                    apply_word_timings(segments, timings, counts, offset, end);
                }
            }
            if let (Some(last), Some(segments)) = (results.last(), per_chunk.last()) {
                prompt = if Self::conditions_next(last, options) {
                    segments
                        .iter()
                        .filter(|(segment, _)| has_words(&segment.text))
                        .flat_map(|(_, tokens)| tokens.iter().copied())
                        .collect()
                } else {
                    Vec::new()
                };
            }
            for segments in per_chunk {
                run.segments.extend(
                    segments
                        .into_iter()
                        .map(|(segment, _)| segment)
                        .filter(|segment| has_words(&segment.text)),
                );
            }
            progress(Progress {
                done: chunk_start as f64 / SAMPLE_RATE as f64,
                total: run.total,
            });
            options.check_cancelled()?;
        }
        Ok(chunk_start.max(window.start + window.buffer.len()))
    }

    /// The text tokens (and their probabilities) of a window's segments, for alignment, and
    /// how many text tokens each segment has.
    fn align_item(
        &self,
        result: &WindowResult,
        segments: &[(Segment, Vec<u32>)],
        num_frames: usize,
    ) -> (align::AlignItem, Vec<usize>) {
        let eot = self.manifest().tokens.eot;
        let mut item = align::AlignItem {
            text_tokens: Vec::new(),
            token_probs: Vec::new(),
            num_frames,
        };
        let mut counts = Vec::new();
        // Segments are consecutive slices of result.tokens, so positions line up.
        let mut position = 0usize;
        for (_, tokens) in segments {
            let mut count = 0;
            for token in tokens {
                if *token < eot {
                    item.text_tokens.push(*token);
                    item.token_probs
                        .push(result.token_probs.get(position).copied().unwrap_or(0.0));
                    count += 1;
                }
                position += 1;
            }
            counts.push(count);
        }
        (item, counts)
    }

    /// Cuts a window's tokens into segments at timestamp pairs. Returns the segments with
    /// their tokens, how many frames to advance, and whether the window ended on a single
    /// timestamp (meaning: the speech ran to the end of the window). With `whole_window`, text
    /// after the last complete segment becomes a segment that runs to the window's end
    /// (batched windows are never re-read); otherwise it is left for the next window.
    fn split_segments(
        &self,
        result: &WindowResult,
        time_offset: f64,
        segment_frames: usize,
        segment_duration: f64,
        whole_window: bool,
    ) -> (Vec<(Segment, Vec<u32>)>, usize, bool) {
        let tb = self.manifest().tokens.timestamp_begin;
        let tokens = &result.tokens;
        let is_ts: Vec<bool> = tokens.iter().map(|t| *t >= tb).collect();
        let n = tokens.len();
        let single_timestamp_ending = n >= 2 && !is_ts[n - 2] && is_ts[n - 1] || n == 1 && is_ts[0];
        let consecutive: Vec<usize> = (1..n).filter(|i| is_ts[*i - 1] && is_ts[*i]).collect();
        let make = |slice: &[u32], start: f64, end: f64| -> (Segment, Vec<u32>) {
            let text_tokens: Vec<u32> = slice
                .iter()
                .copied()
                .filter(|t| *t < self.manifest().tokens.eot)
                .collect();
            (
                Segment {
                    start,
                    end,
                    text: self.tokenizer.decode(&text_tokens).trim().to_owned(),
                    avg_logprob: result.avg_logprob,
                    no_speech_prob: result.no_speech_prob,
                    temperature: result.temperature,
                    compression_ratio: result.compression_ratio,
                    words: Vec::new(),
                },
                slice.to_vec(),
            )
        };
        let mut segments = Vec::new();
        if !consecutive.is_empty() {
            let mut slices = consecutive;
            if single_timestamp_ending {
                slices.push(n);
            }
            let mut last_slice = 0;
            for current in slices {
                let slice = &tokens[last_slice..current];
                if let (Some(first), Some(last)) = (slice.first(), slice.last()) {
                    // Timestamps past the audio (into the window's padding) are clamped to it.
                    let at = |t: &u32| {
                        time_offset
                            + (f64::from(t.saturating_sub(tb)) * TIME_PRECISION)
                                .min(segment_duration)
                    };
                    let (start, end) = (at(first), at(last));
                    segments.push(make(slice, start, end));
                }
                last_slice = current;
            }
            let tail = &tokens[last_slice.min(n)..];
            if whole_window && !single_timestamp_ending && tail.iter().any(|t| *t < tb) {
                let start = tokens[last_slice - 1].saturating_sub(tb);
                let start = time_offset + (f64::from(start) * TIME_PRECISION).min(segment_duration);
                segments.push(make(tail, start, time_offset + segment_duration));
            }
            let advance = if single_timestamp_ending {
                segment_frames
            } else {
                let last_ts = tokens[last_slice - 1].saturating_sub(tb) as usize;
                (last_ts * INPUT_STRIDE).max(1)
            };
            (segments, advance, single_timestamp_ending)
        } else {
            let mut duration = segment_duration;
            if let Some(last) = tokens.iter().rev().find(|t| **t >= tb) {
                if *last != tb {
                    duration = (f64::from(last - tb) * TIME_PRECISION).min(segment_duration);
                }
            }
            segments.push(make(tokens, time_offset, time_offset + duration));
            (segments, segment_frames, single_timestamp_ending)
        }
    }
}

/// Runs `work`, adding its wall time to `seconds`.
fn timed<T>(seconds: &mut f64, work: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let result = work();
    *seconds += start.elapsed().as_secs_f64();
    result
}

/// Whether a segment's text has anything but punctuation and spaces ("...", "-" are what
/// Whisper writes for non-speech).
fn has_words(text: &str) -> bool {
    text.chars().any(char::is_alphanumeric)
}

/// Per-transcription state shared by both loops.
struct RunState {
    language: Option<String>,
    /// Tokens of the initial prompt.
    prompt: Vec<u32>,
    segments: Vec<Segment>,
    stats: Stats,
    rng: Rng,
    total: Option<f64>,
}

/// Stores aligned words in their segments (in order, by token count) and snaps each
/// segment to its words. Returns the end of the last word.
fn apply_word_timings(
    segments: &mut [(Segment, Vec<u32>)],
    timings: &[align::WordTiming],
    counts: &[usize],
    time_offset: f64,
    window_end: f64,
) -> Option<f64> {
    let mut index = 0;
    let mut last_end = None;
    let round = |t: f64| ((time_offset + t).min(window_end) * 100.0).round() / 100.0;
    for ((segment, _), count) in segments.iter_mut().zip(counts) {
        let mut saved = 0;
        let mut words = Vec::new();
        while index < timings.len() && saved < *count {
            let timing = &timings[index];
            if !timing.word.is_empty() {
                words.push(Word {
                    start: round(timing.start),
                    end: round(timing.end),
                    word: timing.word.trim().to_owned(),
                    probability: timing.probability,
                });
            }
            saved += timing.tokens.len();
            index += 1;
        }
        if let (Some(first), Some(last)) = (words.first(), words.last()) {
            segment.start = first.start;
            segment.end = last.end.max(first.start);
            last_end = Some(last.end);
        }
        segment.words = words;
    }
    last_end
}
