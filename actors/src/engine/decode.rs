//! Decoding one 30-second window: Whisper's logit rules, greedy or sampled token choice, and
//! the temperature fallback that escapes repetition loops.
//!
//! The rules follow openai-whisper's `decoding.py`: suppress blank at the first step, suppress
//! the model's non-speech and special tokens, and the timestamp rules (timestamps come in
//! pairs, never decrease, the first one is at most 1 s, and a timestamp is forced whenever
//! timestamps together are more likely than any text token).

use std::io::Write as _;

use super::model::{AudioContext, SpecialTokens, WhisperModel};
use super::tokenizer::Tokenizer;
use super::EngineError;

/// The first timestamp of a window may be at most this far in (openai-whisper's default).
const MAX_INITIAL_TIMESTAMP_INDEX: u32 = 50;

/// A window only has to decode up to the end of its audible part when the model itself
/// thinks it holds speech (no-speech probability below this); noise must be free to end.
const FORCE_CONTINUE_MAX_NO_SPEECH: f64 = 0.5;
/// Prompt tokens fed to the decoder per call. Base fp32, batches of two windows after the
/// previous window's text, 106 s clip: all at once measured 559 MB peak RSS, 32 at a time
/// 520 MB, 16 at a time 512 MB (16 costs 3% more decoder time than 32; a window without a
/// prompt 506 MB).
const PREFILL_TOKENS: usize = 32;

/// Thresholds that decide whether a window is decoded again at a higher temperature.
#[derive(Debug, Clone)]
pub struct FallbackPolicy {
    pub temperatures: Vec<f32>,
    pub compression_ratio_threshold: Option<f64>,
    pub logprob_threshold: Option<f64>,
    pub no_speech_threshold: Option<f64>,
}

impl Default for FallbackPolicy {
    fn default() -> Self {
        FallbackPolicy {
            temperatures: vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
            compression_ratio_threshold: Some(2.4),
            logprob_threshold: Some(-1.0),
            no_speech_threshold: Some(0.6),
        }
    }
}

/// The outcome of decoding one window.
#[derive(Debug, Clone)]
pub struct WindowResult {
    /// Sampled tokens, text and timestamps, without the final end-of-text.
    pub tokens: Vec<u32>,
    /// Probability of each token in `tokens` when it was chosen.
    pub token_probs: Vec<f32>,
    pub avg_logprob: f64,
    pub no_speech_prob: f64,
    pub temperature: f64,
    pub compression_ratio: f64,
}

/// A small deterministic generator for sampling at temperature > 0 (splitmix64), so a run
/// can be repeated exactly.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// zlib compression ratio of the text, Whisper's repetition detector.
pub fn compression_ratio(text: &str) -> f64 {
    if text.is_empty() {
        return 0.0;
    }
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    let compressed = encoder
        .write_all(text.as_bytes())
        .and_then(|()| encoder.finish())
        .map(|bytes| bytes.len())
        .unwrap_or(text.len());
    text.len() as f64 / compressed.max(1) as f64
}

fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return vec![f32::NEG_INFINITY; logits.len()];
    }
    let sum: f32 = logits.iter().map(|x| (x - max).exp()).sum();
    let log_sum = max + sum.ln();
    logits.iter().map(|x| x - log_sum).collect()
}

fn log_sum_exp(values: &[f32]) -> f32 {
    let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return max;
    }
    max + values.iter().map(|x| (x - max).exp()).sum::<f32>().ln()
}

/// The logit rules, fixed for one model and one decoding configuration.
#[derive(Debug, Clone)]
pub struct LogitRules {
    suppress: Vec<u32>,
    suppress_at_begin: Vec<u32>,
    tokens: SpecialTokens,
    with_timestamps: bool,
}

impl LogitRules {
    pub fn new(model: &WhisperModel, with_timestamps: bool) -> Self {
        let manifest = &model.manifest;
        let t = &manifest.tokens;
        let mut suppress = manifest.suppress_ids.clone();
        suppress.extend([
            t.transcribe,
            t.translate,
            t.sot,
            t.sot_prev,
            t.sot_lm,
            t.no_speech,
        ]);
        suppress.sort_unstable();
        suppress.dedup();
        let mut suppress_at_begin = manifest.suppress_ids_begin.clone();
        suppress_at_begin.push(t.eot);
        LogitRules {
            suppress,
            suppress_at_begin,
            tokens: t.clone(),
            with_timestamps,
        }
    }

    /// Applies every rule to one sequence's logits, given the tokens it sampled so far.
    pub fn apply(&self, logits: &mut [f32], sampled: &[u32]) {
        let mut mask = |range: std::ops::Range<usize>| {
            let end = range.end.min(logits.len());
            for value in &mut logits[range.start.min(end)..end] {
                *value = f32::NEG_INFINITY;
            }
        };
        if sampled.is_empty() {
            for id in &self.suppress_at_begin {
                mask(*id as usize..*id as usize + 1);
            }
        }
        for id in &self.suppress {
            mask(*id as usize..*id as usize + 1);
        }
        if !self.with_timestamps {
            return;
        }
        let begin = self.tokens.timestamp_begin;
        let eot = self.tokens.eot as usize;
        let tb = begin as usize;
        mask(self.tokens.no_timestamps as usize..self.tokens.no_timestamps as usize + 1);

        let is_ts = |t: &u32| *t >= begin;
        let last_was_timestamp = sampled.last().is_some_and(is_ts);
        let penultimate_was_timestamp = sampled.len() < 2 || is_ts(&sampled[sampled.len() - 2]);
        if last_was_timestamp {
            if penultimate_was_timestamp {
                mask(tb..usize::MAX);
            } else {
                mask(0..eot);
            }
        }
        if let Some(last) = sampled.iter().rev().find(|t| is_ts(t)) {
            // Timestamps never decrease, and a segment has a non-zero length.
            let floor = if last_was_timestamp && !penultimate_was_timestamp {
                *last
            } else {
                *last + 1
            };
            mask(tb..floor as usize);
        }
        if sampled.is_empty() {
            mask(0..tb);
            mask(tb + MAX_INITIAL_TIMESTAMP_INDEX as usize + 1..usize::MAX);
        }
        // Timestamps together more likely than the best text token: force a timestamp. The
        // softmax normaliser cancels, so compare in logit space without allocating.
        if logits.len() > tb {
            let timestamp_mass = log_sum_exp(&logits[tb..]);
            let best_text = logits[..tb]
                .iter()
                .copied()
                .fold(f32::NEG_INFINITY, f32::max);
            if timestamp_mass > best_text {
                for value in &mut logits[..tb] {
                    *value = f32::NEG_INFINITY;
                }
            }
        }
    }
}

/// Masks end-of-text while a window that has produced text has not yet reached timestamp
/// index `until` (the end of its audible part), unless nothing else is allowed.
fn forbid_early_end(row: &mut [f32], sampled: &[u32], until: u32, t: &SpecialTokens) {
    let has_text = sampled.iter().any(|x| *x < t.eot);
    let last_time = sampled
        .iter()
        .rev()
        .find(|x| **x >= t.timestamp_begin)
        .map_or(0, |x| x - t.timestamp_begin);
    let eot = t.eot as usize;
    if has_text && last_time < until && eot < row.len() {
        let saved = row[eot];
        row[eot] = f32::NEG_INFINITY;
        if row.iter().all(|x| !x.is_finite()) {
            row[eot] = saved;
        }
    }
}

/// Picks the next token: the most likely at temperature 0, else a sample. Returns the token
/// and its log-probability under the (rule-filtered) distribution.
fn choose(logits: &[f32], temperature: f32, rng: &mut Rng) -> (u32, f32) {
    let normaliser = log_sum_exp(logits);
    let token = if temperature <= 0.0 {
        logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(i, _)| i)
    } else {
        let scaled: Vec<f32> = logits.iter().map(|l| l / temperature).collect();
        let scaled = log_softmax(&scaled);
        let mut target = rng.next_f64();
        let mut pick = scaled
            .iter()
            .rposition(|l| l.is_finite())
            .unwrap_or_default();
        for (i, l) in scaled.iter().enumerate() {
            target -= f64::from(l.exp());
            if target <= 0.0 {
                pick = i;
                break;
            }
        }
        pick
    };
    let logprob = logits
        .get(token)
        .map_or(f32::NEG_INFINITY, |l| l - normaliser);
    (token as u32, logprob)
}

/// Everything a window decode needs besides the audio.
#[derive(Debug)]
pub struct WindowDecoder<'a> {
    pub model: &'a WhisperModel,
    pub rules: LogitRules,
    /// `<|startoftranscript|>` then language and task tokens (and `<|notimestamps|>` if off).
    pub sot_sequence: Vec<u32>,
    pub tokenizer: &'a Tokenizer,
}

impl WindowDecoder<'_> {
    /// Decodes every window of `audio` in lock-step, all after the same `prompt`. The
    /// decoder reads its weights once per step for the whole batch, so a batch of windows
    /// costs little more than one.
    ///
    /// `speech_until[k]` is, for window `k`, the timestamp index up to which the audio holds
    /// speech: once a window has produced text, it may not end before its last timestamp
    /// reaches that point. (Whisper stops early near a window's end, leaving the last
    /// sentence for the next window; windows of a batch have no next window.)
    pub fn decode_batch(
        &self,
        audio: &AudioContext,
        prompt: &[u32],
        speech_until: &[Option<u32>],
        temperature: f32,
        rng: &mut Rng,
    ) -> Result<Vec<WindowResult>, EngineError> {
        let manifest = &self.model.manifest;
        let t = &manifest.tokens;
        let n_ctx = manifest.n_text_ctx;
        let vocab = manifest.n_vocab;
        let batch = audio.batch;
        let repeat = |tokens: &[i64]| -> Vec<i64> {
            (0..batch).flat_map(|_| tokens.iter().copied()).collect()
        };

        // Feed everything up to <|startoftranscript|> first: the logits there give the
        // no-speech probability (and the language, elsewhere).
        let mut prefix: Vec<i64> = Vec::new();
        if !prompt.is_empty() {
            let keep = (n_ctx / 2).saturating_sub(1);
            prefix.push(i64::from(t.sot_prev));
            prefix.extend(
                prompt[prompt.len().saturating_sub(keep)..]
                    .iter()
                    .map(|x| i64::from(*x)),
            );
        }
        prefix.push(i64::from(self.sot_sequence[0]));
        let rest: Vec<i64> = self.sot_sequence[1..]
            .iter()
            .map(|x| i64::from(*x))
            .collect();
        let sample_len = n_ctx / 2;
        // Room for the prefix, the rest of the start sequence and every sampled token.
        let mut cache = self
            .model
            .empty_cache(batch, prefix.len() + rest.len() + sample_len)?;
        // In pieces: a call's intermediates grow with its token count (the cross-attention
        // scores alone are B x H x n x 1500 floats), and the runtime's arena keeps its peak.
        let mut at_sot = None;
        for piece in prefix.chunks(PREFILL_TOKENS) {
            at_sot = Some(
                self.model
                    .decode(audio, &mut cache, &repeat(piece), false)?,
            );
        }
        // The prefix always holds <|startoftranscript|>.
        let at_sot = at_sot.ok_or_else(|| EngineError::Runtime("empty decoder prefix".into()))?;
        let no_speech: Vec<f64> = at_sot
            .logits
            .chunks_exact(vocab)
            .map(|row| {
                log_softmax(row)
                    .get(t.no_speech as usize)
                    .map_or(0.0, |l| f64::from(l.exp()))
            })
            .collect();
        let mut logits = if rest.is_empty() {
            at_sot.logits
        } else {
            self.model
                .decode(audio, &mut cache, &repeat(&rest), false)?
                .logits
        };

        let mut sampled: Vec<Vec<u32>> = vec![Vec::new(); batch];
        let mut token_probs: Vec<Vec<f32>> = vec![Vec::new(); batch];
        let mut sum_logprob = vec![0f64; batch];
        let mut finished = vec![false; batch];
        let mut next = vec![i64::from(t.eot); batch];
        for _ in 0..sample_len {
            for (k, row) in logits.chunks_exact_mut(vocab).enumerate() {
                if finished[k] {
                    continue;
                }
                self.rules.apply(row, &sampled[k]);
                let speech_likely = no_speech
                    .get(k)
                    .is_some_and(|p| *p < FORCE_CONTINUE_MAX_NO_SPEECH);
                if let Some(until) = speech_until
                    .get(k)
                    .copied()
                    .flatten()
                    .filter(|_| speech_likely)
                {
                    forbid_early_end(row, &sampled[k], until, t);
                }
                let (token, logprob) = choose(row, temperature, rng);
                sum_logprob[k] += f64::from(logprob);
                if token == t.eot {
                    finished[k] = true;
                    continue;
                }
                sampled[k].push(token);
                token_probs[k].push(logprob.exp());
                next[k] = i64::from(token);
            }
            if finished.iter().all(|f| *f) || cache.len + 1 > cache.capacity {
                break;
            }
            // Finished sequences keep feeding end-of-text; their outputs are ignored.
            for (k, token) in next.iter_mut().enumerate() {
                if finished[k] {
                    *token = i64::from(t.eot);
                }
            }
            logits = self.model.decode(audio, &mut cache, &next, false)?.logits;
        }
        Ok((0..batch)
            .map(|k| {
                let text_tokens: Vec<u32> =
                    sampled[k].iter().copied().filter(|x| *x < t.eot).collect();
                let text = self.tokenizer.decode(&text_tokens);
                WindowResult {
                    avg_logprob: sum_logprob[k] / (sampled[k].len() + 1) as f64,
                    compression_ratio: compression_ratio(&text),
                    tokens: std::mem::take(&mut sampled[k]),
                    token_probs: std::mem::take(&mut token_probs[k]),
                    no_speech_prob: no_speech.get(k).copied().unwrap_or(0.0),
                    temperature: f64::from(temperature),
                }
            })
            .collect())
    }

    /// Whether a result should be decoded again at a higher temperature.
    pub fn needs_fallback(result: &WindowResult, policy: &FallbackPolicy) -> bool {
        let too_repetitive = policy
            .compression_ratio_threshold
            .is_some_and(|limit| result.compression_ratio > limit);
        let too_improbable = policy
            .logprob_threshold
            .is_some_and(|limit| result.avg_logprob < limit);
        let silent = policy
            .no_speech_threshold
            .is_some_and(|limit| result.no_speech_prob > limit)
            && too_improbable;
        !silent && (too_repetitive || too_improbable)
    }

    /// Decodes with the fallback policy: every window at the first temperature, then the
    /// batch again at each higher temperature while some window still looks like a
    /// repetition loop (high compression ratio) or improbable text, unless it is probably
    /// silent. Each window keeps its first acceptable result, else the last one tried. A
    /// batched step costs about what a single one does, so the whole batch is redone.
    pub fn decode_with_fallback(
        &self,
        audio: &AudioContext,
        prompt: &[u32],
        speech_until: &[Option<u32>],
        policy: &FallbackPolicy,
        rng: &mut Rng,
    ) -> Result<Vec<WindowResult>, EngineError> {
        let mut temperatures = policy.temperatures.iter();
        let first = temperatures
            .next()
            .ok_or_else(|| EngineError::InvalidOption("no temperatures to decode with".into()))?;
        let mut results = self.decode_batch(audio, prompt, speech_until, *first, rng)?;
        for temperature in temperatures {
            let pending: Vec<usize> = (0..results.len())
                .filter(|k| Self::needs_fallback(&results[*k], policy))
                .collect();
            if pending.is_empty() {
                break;
            }
            let mut retry = self.decode_batch(audio, prompt, speech_until, *temperature, rng)?;
            for k in pending {
                std::mem::swap(&mut results[k], &mut retry[k]);
            }
        }
        Ok(results)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(with_timestamps: bool) -> LogitRules {
        // As LogitRules::new builds it: the model's list plus the special tokens.
        LogitRules {
            suppress: vec![3, 11, 12, 13, 14, 15, 16],
            suppress_at_begin: vec![1, 10],
            tokens: SpecialTokens {
                eot: 10,
                sot: 11,
                translate: 12,
                transcribe: 13,
                sot_lm: 14,
                sot_prev: 15,
                no_speech: 16,
                no_timestamps: 17,
                timestamp_begin: 20,
            },
            with_timestamps,
        }
    }

    fn allowed(logits: &[f32]) -> Vec<usize> {
        logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, _)| i)
            .collect()
    }

    #[test]
    fn first_step_must_be_an_early_timestamp() {
        let mut logits = vec![0.0f32; 20 + 100];
        rules(true).apply(&mut logits, &[]);
        let ids = allowed(&logits);
        assert_eq!(ids.first(), Some(&20));
        assert_eq!(ids.last(), Some(&(20 + 50)));
    }

    #[test]
    fn timestamps_pair_up_and_never_go_back() {
        let r = rules(true);
        // After text then a single timestamp: either text is forbidden (must close the
        // pair with another timestamp or end), timestamps before 25 forbidden.
        let mut logits = vec![0.0f32; 120];
        r.apply(&mut logits, &[20, 5, 25]);
        let ids = allowed(&logits);
        assert!(ids.iter().all(|i| *i == 10 || *i >= 25), "{ids:?}");
        // After a pair of timestamps the next token is text or end.
        let mut logits = vec![0.0f32; 120];
        logits[5] = 5.0;
        r.apply(&mut logits, &[20, 5, 25, 25]);
        assert!(allowed(&logits).iter().all(|i| *i < 20));
    }

    #[test]
    fn timestamp_mass_beats_the_best_text_token() {
        let mut logits = vec![-10.0f32; 120];
        logits[5] = 1.0;
        for value in &mut logits[20..120] {
            *value = 0.0;
        }
        rules(true).apply(&mut logits, &[20, 5]);
        assert!(allowed(&logits).iter().all(|i| *i >= 20));
    }

    #[test]
    fn suppressed_and_blank_tokens_are_masked() {
        let mut logits = vec![0.0f32; 120];
        rules(false).apply(&mut logits, &[]);
        let ids = allowed(&logits);
        for banned in [1, 3, 10, 11, 12, 13, 14, 15, 16] {
            assert!(!ids.contains(&banned), "{banned}");
        }
        let mut logits = vec![0.0f32; 120];
        rules(false).apply(&mut logits, &[5]);
        assert!(
            allowed(&logits).contains(&10),
            "end allowed after the first token"
        );
    }

    #[test]
    fn greedy_picks_the_maximum_and_sampling_respects_masks() {
        let mut rng = Rng::new(7);
        let logits = [0.0, 3.0, f32::NEG_INFINITY, 1.0];
        assert_eq!(choose(&logits, 0.0, &mut rng).0, 1);
        for _ in 0..200 {
            assert_ne!(choose(&logits, 1.0, &mut rng).0, 2);
        }
    }

    #[test]
    fn repetition_compresses_well() {
        let varied = "the quick brown fox jumps over the lazy dog";
        let looped = "thank you. ".repeat(40);
        assert!(compression_ratio(varied) < 1.5);
        assert!(compression_ratio(&looped) > 2.4);
    }
}
