//! Word-level timestamps: cross-attention of the alignment heads, normalised and median
//! filtered, then aligned to the audio frames by dynamic time warping (openai-whisper's
//! `timing.py`, step for step).

use super::model::{AudioContext, WhisperModel};
use super::tokenizer::Tokenizer;
use super::EngineError;

/// Audio frames (of the encoder's 20 ms resolution) per second.
const TOKENS_PER_SECOND: f64 = 50.0;
const MEDIAN_FILTER_WIDTH: usize = 7;
const PREPEND_PUNCTUATION: &str = "\"'“¿([{-";
const APPEND_PUNCTUATION: &str = "\"'.。,，!！?？:：”)]}、";
const ASCII_PUNCTUATION: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";
/// Languages written without spaces between words.
const UNSPACED_LANGUAGES: [&str; 6] = ["zh", "ja", "th", "lo", "my", "yue"];

/// One aligned word, times relative to the window start.
#[derive(Debug, Clone, PartialEq)]
pub struct WordTiming {
    pub word: String,
    pub tokens: Vec<u32>,
    pub start: f64,
    pub end: f64,
    pub probability: f64,
}

/// Dynamic time warping over a cost matrix `[rows][cols]`; returns the path as
/// (row indices, column indices), from (0, 0) to (rows - 1, cols - 1).
pub fn dtw(cost: &[Vec<f32>]) -> (Vec<usize>, Vec<usize>) {
    let rows = cost.len();
    let cols = cost.first().map_or(0, Vec::len);
    if rows == 0 || cols == 0 {
        return (Vec::new(), Vec::new());
    }
    let width = cols + 1;
    let mut total = vec![f32::INFINITY; (rows + 1) * width];
    let mut trace = vec![0u8; (rows + 1) * width];
    total[0] = 0.0;
    for j in 1..=cols {
        for i in 1..=rows {
            let diagonal = total[(i - 1) * width + j - 1];
            let up = total[(i - 1) * width + j];
            let left = total[i * width + j - 1];
            let (best, step) = if diagonal < up && diagonal < left {
                (diagonal, 0)
            } else if up < diagonal && up < left {
                (up, 1)
            } else {
                (left, 2)
            };
            total[i * width + j] = cost[i - 1][j - 1] + best;
            trace[i * width + j] = step;
        }
    }
    let (mut i, mut j) = (rows, cols);
    let (mut text, mut time) = (Vec::new(), Vec::new());
    while i > 0 || j > 0 {
        text.push(i.saturating_sub(1));
        time.push(j.saturating_sub(1));
        let step = if i == 0 {
            2
        } else if j == 0 {
            1
        } else {
            trace[i * width + j]
        };
        match step {
            0 => {
                i -= 1;
                j -= 1;
            }
            1 => i -= 1,
            _ => j -= 1,
        }
    }
    text.reverse();
    time.reverse();
    (text, time)
}

/// Median filter along a row with reflect padding; rows not longer than half the width are
/// returned unchanged (as openai-whisper does).
fn median_filter(row: &mut [f32], width: usize) {
    let pad = width / 2;
    if row.len() <= pad {
        return;
    }
    let at = |i: isize| -> f32 {
        let n = row.len() as isize;
        let reflected = if i < 0 {
            -i
        } else if i >= n {
            2 * (n - 1) - i
        } else {
            i
        };
        row[reflected.clamp(0, n - 1) as usize]
    };
    let mut window = vec![0f32; width];
    let filtered: Vec<f32> = (0..row.len() as isize)
        .map(|centre| {
            for (k, slot) in window.iter_mut().enumerate() {
                *slot = at(centre - pad as isize + k as isize);
            }
            window.sort_by(f32::total_cmp);
            window[pad]
        })
        .collect();
    row.copy_from_slice(&filtered);
}

/// Splits tokens (ending with end-of-text) into words and their tokens.
pub fn split_words(
    tokenizer: &Tokenizer,
    tokens: &[u32],
    eot: u32,
    language: &str,
) -> Vec<(String, Vec<u32>)> {
    let groups = tokenizer.split_on_unicode(tokens);
    if UNSPACED_LANGUAGES.contains(&language) {
        return groups;
    }
    let mut words: Vec<(String, Vec<u32>)> = Vec::new();
    for (text, ids) in groups {
        let special = ids.first().is_some_and(|id| *id >= eot);
        let with_space = text.starts_with(' ');
        let punctuation = ASCII_PUNCTUATION.contains(text.trim());
        match words.last_mut() {
            Some(last) if !(special || with_space || punctuation) => {
                last.0.push_str(&text);
                last.1.extend(ids);
            }
            _ => words.push((text, ids)),
        }
    }
    words
}

/// Attaches leading punctuation to the next word and trailing punctuation to the previous.
fn merge_punctuation(words: &mut [WordTiming]) {
    if words.len() < 2 {
        return;
    }
    let (mut i, mut j) = (words.len() as isize - 2, words.len() - 1);
    while i >= 0 {
        let iu = i as usize;
        let previous = &words[iu];
        if previous.word.starts_with(' ')
            && PREPEND_PUNCTUATION.contains(previous.word.trim())
            && !previous.word.trim().is_empty()
        {
            let (word, tokens) = (previous.word.clone(), previous.tokens.clone());
            words[j].word.insert_str(0, &word);
            words[j].tokens.splice(0..0, tokens);
            words[iu].word.clear();
            words[iu].tokens.clear();
        } else {
            j = iu;
        }
        i -= 1;
    }
    let (mut i, mut j) = (0, 1);
    while j < words.len() {
        let following = &words[j];
        if !words[i].word.ends_with(' ')
            && !following.word.is_empty()
            && APPEND_PUNCTUATION.contains(following.word.as_str())
        {
            let (word, tokens) = (following.word.clone(), following.tokens.clone());
            words[i].word.push_str(&word);
            words[i].tokens.extend(tokens);
            words[j].word.clear();
            words[j].tokens.clear();
        } else {
            i = j;
        }
        j += 1;
    }
}

/// Caps words that swallowed a pause at a sentence end (openai-whisper's heuristic).
fn truncate_long_words(words: &mut [WordTiming]) {
    let mut durations: Vec<f64> = words
        .iter()
        .map(|w| w.end - w.start)
        .filter(|d| *d > 0.0)
        .collect();
    if durations.is_empty() {
        return;
    }
    durations.sort_by(f64::total_cmp);
    let n = durations.len();
    let median = if n % 2 == 1 {
        durations[n / 2]
    } else {
        (durations[n / 2 - 1] + durations[n / 2]) / 2.0
    };
    let max_duration = median.min(0.7) * 2.0;
    let sentence_end = |w: &str| !w.is_empty() && ".。!！?？".contains(w);
    for i in 1..words.len() {
        if words[i].end - words[i].start > max_duration {
            if sentence_end(&words[i].word) {
                words[i].end = words[i].start + max_duration;
            } else if sentence_end(&words[i - 1].word) {
                words[i].start = words[i].end - max_duration;
            }
        }
    }
}

/// One window's text to align.
#[derive(Debug, Clone)]
pub struct AlignItem {
    /// The window's text tokens (no timestamps).
    pub text_tokens: Vec<u32>,
    /// Probability of each text token when it was decoded.
    pub token_probs: Vec<f32>,
    /// The window's length in mel frames (10 ms each).
    pub num_frames: usize,
}

/// Aligns the words of every window of `audio` (one item per window, in batch order) in one
/// decoder pass: each row is `sot_sequence, <|notimestamps|>, text, <|endoftext|>`, padded at
/// the end with end-of-text (harmless: attention is causal).
pub fn align_batch(
    model: &WhisperModel,
    tokenizer: &Tokenizer,
    audio: &AudioContext,
    sot_sequence: &[u32],
    items: &[AlignItem],
    language: &str,
) -> Result<Vec<Vec<WordTiming>>, EngineError> {
    let special = &model.manifest.tokens;
    let row = |item: &AlignItem| -> Vec<i64> {
        let mut tokens: Vec<i64> = sot_sequence.iter().map(|t| i64::from(*t)).collect();
        tokens.push(i64::from(special.no_timestamps));
        tokens.extend(item.text_tokens.iter().map(|t| i64::from(*t)));
        tokens.push(i64::from(special.eot));
        tokens
    };
    let rows: Vec<Vec<i64>> = items.iter().map(row).collect();
    let width = rows.iter().map(Vec::len).max().unwrap_or(0);
    if items.len() != audio.batch
        || width > model.manifest.n_text_ctx
        || items.iter().all(|item| item.text_tokens.is_empty())
    {
        return Ok(vec![Vec::new(); items.len()]);
    }
    let mut tokens = Vec::with_capacity(width * rows.len());
    for row in &rows {
        tokens.extend_from_slice(row);
        tokens.resize(tokens.len() + width - row.len(), i64::from(special.eot));
    }
    let mut cache = model.empty_cache(audio.batch, width)?;
    let qk = model
        .decode(audio, &mut cache, &tokens, true)?
        .cross_qk
        .unwrap_or_default();
    let per_item = qk.len() / items.len().max(1);
    items
        .iter()
        .zip(&rows)
        .enumerate()
        .map(|(b, (item, row))| {
            let scores = &qk[b * per_item..(b + 1) * per_item];
            words_from_scores(
                model,
                tokenizer,
                scores,
                width,
                row.len(),
                sot_sequence.len(),
                item,
                language,
            )
        })
        .collect()
}

/// Word timings of one window from its raw cross-attention scores `[H, width, ctx]`, of which
/// the first `n` token rows are real.
#[allow(clippy::too_many_arguments)]
fn words_from_scores(
    model: &WhisperModel,
    tokenizer: &Tokenizer,
    qk: &[f32],
    width: usize,
    n: usize,
    sot_len: usize,
    item: &AlignItem,
    language: &str,
) -> Result<Vec<WordTiming>, EngineError> {
    let special = &model.manifest.tokens;
    let (text_tokens, token_probs) = (&item.text_tokens, &item.token_probs);
    let ctx = model.manifest.n_audio_ctx;
    let heads = qk.len() / (width * ctx).max(1);
    let frames = (item.num_frames / 2).clamp(1, ctx);
    if heads == 0 || text_tokens.is_empty() {
        return Ok(Vec::new());
    }

    // Per head: softmax over frames, standardise over tokens, median filter over frames.
    let mut matrix = vec![vec![0f32; frames]; n];
    for h in 0..heads {
        let mut weights: Vec<Vec<f32>> = (0..n)
            .map(|i| {
                let row = &qk[(h * width + i) * ctx..(h * width + i) * ctx + frames];
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let exps: Vec<f32> = row.iter().map(|x| (x - max).exp()).collect();
                let sum: f32 = exps.iter().sum();
                exps.into_iter().map(|e| e / sum).collect()
            })
            .collect();
        for f in 0..frames {
            let mean = weights.iter().map(|row| row[f]).sum::<f32>() / n as f32;
            let var = weights
                .iter()
                .map(|row| (row[f] - mean).powi(2))
                .sum::<f32>()
                / n as f32;
            let std = var.sqrt().max(1e-10);
            for row in &mut weights {
                row[f] = (row[f] - mean) / std;
            }
        }
        for (row, acc) in weights.iter_mut().zip(&mut matrix) {
            median_filter(row, MEDIAN_FILTER_WIDTH);
            for (a, w) in acc.iter_mut().zip(row.iter()) {
                *a += w / heads as f32;
            }
        }
    }
    let cost: Vec<Vec<f32>> = matrix[sot_len..n - 1]
        .iter()
        .map(|row| row.iter().map(|x| -x).collect())
        .collect();
    let (text_indices, time_indices) = dtw(&cost);

    let mut with_eot = text_tokens.to_vec();
    with_eot.push(special.eot);
    let words = split_words(tokenizer, &with_eot, special.eot, language);
    if words.len() <= 1 {
        return Ok(Vec::new());
    }
    let mut jump_times = Vec::new();
    for k in 0..text_indices.len() {
        if k == 0 || text_indices[k] != text_indices[k - 1] {
            jump_times.push(time_indices[k] as f64 / TOKENS_PER_SECOND);
        }
    }
    let time_at = |index: usize| {
        jump_times
            .get(index)
            .or(jump_times.last())
            .copied()
            .unwrap_or(0.0)
    };
    let mut timings = Vec::new();
    let mut boundary = 0usize;
    for (word, ids) in &words[..words.len() - 1] {
        let next = boundary + ids.len();
        let probs = &token_probs[boundary.min(token_probs.len())..next.min(token_probs.len())];
        let probability = if probs.is_empty() {
            0.0
        } else {
            probs.iter().map(|p| f64::from(*p)).sum::<f64>() / probs.len() as f64
        };
        timings.push(WordTiming {
            word: word.clone(),
            tokens: ids.clone(),
            start: time_at(boundary),
            end: time_at(next),
            probability,
        });
        boundary = next;
    }
    truncate_long_words(&mut timings);
    merge_punctuation(&mut timings);
    Ok(timings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(word: &str, start: f64, end: f64) -> WordTiming {
        WordTiming {
            word: word.into(),
            tokens: vec![word.len() as u32],
            start,
            end,
            probability: 1.0,
        }
    }

    #[test]
    fn dtw_follows_the_cheap_diagonal() {
        // Cheap cells on a staircase: rows 0,1,2 map to columns {0,1}, {2,3}, {4,5}.
        let cost: Vec<Vec<f32>> = (0..3)
            .map(|i| (0..6).map(|j| if j / 2 == i { 0.0 } else { 1.0 }).collect())
            .collect();
        let (text, time) = dtw(&cost);
        assert_eq!(text, vec![0, 0, 1, 1, 2, 2]);
        assert_eq!(time, vec![0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn median_filter_removes_a_spike_and_keeps_edges() {
        let mut row = vec![1.0, 1.0, 1.0, 9.0, 1.0, 1.0, 1.0, 1.0];
        median_filter(&mut row, 7);
        assert!(row.iter().all(|x| *x == 1.0), "{row:?}");
        let mut short = vec![3.0, 1.0];
        median_filter(&mut short, 7);
        assert_eq!(short, vec![3.0, 1.0]);
    }

    #[test]
    fn punctuation_joins_its_neighbours() {
        let mut words = vec![
            timing(" \"", 0.0, 0.1),
            timing(" Hello", 0.1, 0.5),
            timing(",", 0.5, 0.6),
            timing(" world", 0.6, 1.0),
            timing(".\"", 1.0, 1.1),
        ];
        merge_punctuation(&mut words);
        let texts: Vec<&str> = words
            .iter()
            .map(|w| w.word.as_str())
            .filter(|w| !w.is_empty())
            .collect();
        assert_eq!(texts, vec![" \" Hello,", " world", ".\""]);
        let mut words = vec![timing(" end", 0.0, 0.4), timing(".", 0.4, 0.5)];
        merge_punctuation(&mut words);
        assert_eq!(words[0].word, " end.");
        assert_eq!(words[0].tokens.len(), 2);
    }

    #[test]
    fn a_word_swallowing_a_pause_after_a_sentence_end_is_cut() {
        let mut words = vec![
            timing(" one", 0.0, 0.3),
            timing(".", 0.3, 0.3),
            timing(" two", 0.3, 3.0),
            timing(" three", 3.0, 3.3),
        ];
        truncate_long_words(&mut words);
        assert!((words[2].start - 2.4).abs() < 1e-9, "{:?}", words[2]);
    }
}
