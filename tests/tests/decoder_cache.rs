//! The decoder's fixed-size self-attention cache (graph format 3), on the real tiny.en model
//! and real speech: decoding token by token through the cache must give what decoding the
//! whole sequence at once gives, for every sequence of a batch, and a full cache is an error.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use ytcaption_actors::engine::audio::decode_all;
use ytcaption_actors::engine::mel::{MelFrontEnd, N_FRAMES};
use ytcaption_actors::engine::model::{find_runtime_library, AudioContext, WhisperModel};
use ytcaption_actors::engine::tokenizer::Tokenizer;

/// fp32 reassociation between the two feeding orders; a wrong mask or a key written to the
/// wrong position shows up as differences of order 1.
const TOLERANCE: f32 = 2e-3;

fn load() -> (WhisperModel, Tokenizer) {
    let models = ytcaption_tests::node::models_dir();
    let dir = models.join("tiny.en");
    let library = find_runtime_library(&models).expect("run `make model`");
    let model = WhisperModel::load(&dir, &library, 1).expect("tiny.en: run `make model`");
    let tokenizer = Tokenizer::load(&dir.join("tokenizer.json")).unwrap();
    (model, tokenizer)
}

fn first_window_mel(model: &WhisperModel, clip: &str) -> Vec<f32> {
    let samples = decode_all(&fixture(clip)).unwrap();
    let n_mels = model.manifest.n_mels;
    let mut mel = vec![0f32; n_mels * N_FRAMES];
    MelFrontEnd::new(n_mels).window(&[], &samples, true, N_FRAMES, &mut mel);
    mel
}

/// `<|startoftranscript|><|notimestamps|>` and the clip's own words, as the decoder sees them.
fn sequence(model: &WhisperModel, tokenizer: &Tokenizer, text: &str) -> Vec<i64> {
    let t = &model.manifest.tokens;
    [t.sot, t.no_timestamps]
        .into_iter()
        .chain(tokenizer.encode(&format!(" {text}")))
        .map(i64::from)
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0
}

/// Logits after feeding `tokens` (one row per sequence) through a cache of `capacity`
/// positions, `step` tokens per call, then one more token, so that what the calls wrote into
/// the cache is read back.
fn feed(
    model: &WhisperModel,
    audio: &AudioContext,
    rows: &[Vec<i64>],
    capacity: usize,
    step: usize,
    then: i64,
) -> (Vec<f32>, Vec<f32>) {
    let len = rows[0].len();
    let mut cache = model.empty_cache(rows.len(), capacity).unwrap();
    let mut logits = Vec::new();
    let mut at = 0;
    while at < len {
        let end = (at + step).min(len);
        let tokens: Vec<i64> = rows.iter().flat_map(|r| r[at..end].to_vec()).collect();
        logits = model
            .decode(audio, &mut cache, &tokens, false)
            .unwrap()
            .logits;
        at = end;
    }
    assert_eq!(cache.len, len);
    let next = model
        .decode(audio, &mut cache, &vec![then; rows.len()], false)
        .unwrap()
        .logits;
    (logits, next)
}

#[test]
fn token_by_token_through_the_cache_matches_the_whole_sequence_at_once() {
    let (model, tokenizer) = load();
    let clip = "podcast_espeak";
    let audio = model
        .encode(first_window_mel(&model, &format!("{clip}.wav")), 1)
        .unwrap();
    let tokens = sequence(&model, &tokenizer, &expected_text(clip));
    let words = tokens.len() - 2;
    // Score the clip's words up to a point, then check what follows.
    let cut = 2 + words / 2;
    let (prefix, following) = (&tokens[..cut], tokens[cut]);

    let (whole, whole_next) = feed(&model, &audio, &[prefix.to_vec()], cut + 1, cut, following);
    let (single, single_next) = feed(&model, &audio, &[prefix.to_vec()], 224, 1, following);
    let (threes, threes_next) = feed(&model, &audio, &[prefix.to_vec()], 448, 3, following);
    for (name, logits) in [("one at a time", &single), ("three at a time", &threes)] {
        let d = max_diff(&whole, logits);
        eprintln!("{name}: max abs logit difference {d:e}");
        assert!(d <= TOLERANCE, "{name}: logits differ by {d}");
    }
    for (name, logits) in [
        ("one at a time", &single_next),
        ("three at a time", &threes_next),
    ] {
        let d = max_diff(&whole_next, logits);
        assert!(d <= TOLERANCE, "{name}, next token: logits differ by {d}");
    }
    // The decoder is not guessing: after the clip's own words it predicts the next one.
    assert_eq!(
        argmax(&whole_next) as i64,
        tokens[cut + 1],
        "the model should predict the clip's next word"
    );
}

#[test]
fn each_sequence_of_a_batch_reads_its_own_cache() {
    let (model, tokenizer) = load();
    let clips = ["podcast_espeak", "news_espeak"];
    let mels: Vec<Vec<f32>> = clips
        .iter()
        .map(|c| first_window_mel(&model, &format!("{c}.wav")))
        .collect();
    let batch = model.encode_each(mels.clone()).unwrap();
    let rows: Vec<Vec<i64>> = clips
        .iter()
        .map(|c| sequence(&model, &tokenizer, &expected_text(c))[..8].to_vec())
        .collect();
    let vocab = model.manifest.n_vocab;
    let eot = i64::from(model.manifest.tokens.eot);
    let (_, batched) = feed(&model, &batch, &rows, 224, 1, eot);
    for (k, mel) in mels.into_iter().enumerate() {
        let alone = model.encode(mel, 1).unwrap();
        let (_, single) = feed(&model, &alone, &rows[k..=k], 224, 1, eot);
        let d = max_diff(&batched[k * vocab..(k + 1) * vocab], &single);
        eprintln!(
            "{}: batched vs alone, max abs logit difference {d:e}",
            clips[k]
        );
        assert!(d <= TOLERANCE, "{}: batched logits differ by {d}", clips[k]);
    }
}

#[test]
fn a_full_cache_is_an_error_not_a_panic() {
    let (model, _) = load();
    let audio = model
        .encode(first_window_mel(&model, "beckett.wav"), 1)
        .unwrap();
    let sot = i64::from(model.manifest.tokens.sot);
    let mut cache = model.empty_cache(1, 2).unwrap();
    model
        .decode(&audio, &mut cache, &[sot, sot], false)
        .unwrap();
    let err = model
        .decode(&audio, &mut cache, &[sot], false)
        .expect_err("a third token does not fit a cache of two");
    assert!(err.to_string().contains("cache"), "{err}");
    assert_eq!(cache.len, 2, "a refused call leaves the cache as it was");
}
