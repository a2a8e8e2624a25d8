//! The transcript model: what a transcription produces, independent of any output format.

use serde::{Deserialize, Serialize};

/// Bumped whenever a field changes meaning or a required field is added.
pub const TRANSCRIPT_VERSION: u32 = 1;

/// A whole transcript of one media file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transcript {
    /// Schema version of this value ([`TRANSCRIPT_VERSION`]).
    pub version: u32,
    /// ISO 639-1 code of the spoken language (detected or given).
    pub language: String,
    /// `transcribe` or `translate`.
    pub task: String,
    /// Name of the model that produced it.
    pub model: String,
    /// Length of the audio in seconds.
    pub duration: f64,
    pub segments: Vec<Segment>,
}

/// One caption-sized stretch of speech.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    /// Seconds from the start of the audio.
    pub start: f64,
    pub end: f64,
    /// The text, with Whisper's leading space trimmed.
    pub text: String,
    /// Mean log-probability of the segment's tokens.
    pub avg_logprob: f64,
    /// Probability that the window held no speech.
    pub no_speech_prob: f64,
    /// Temperature the window was finally decoded at (0 unless a fallback happened).
    pub temperature: f64,
    /// Compression ratio of the window's text (repetition shows as a high ratio).
    pub compression_ratio: f64,
    /// Word-level timings; empty when word timestamps were not computed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub words: Vec<Word>,
}

/// One word with its timing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Word {
    pub start: f64,
    pub end: f64,
    /// The word as it appears in the text, with its leading space trimmed.
    pub word: String,
    /// Mean probability of the word's tokens.
    pub probability: f64,
}

impl Transcript {
    /// The plain text of the whole transcript: segments joined by single spaces.
    pub fn text(&self) -> String {
        let mut text = String::new();
        for segment in &self.segments {
            let piece = segment.text.trim();
            if piece.is_empty() {
                continue;
            }
            if !text.is_empty() {
                text.push(' ');
            }
            text.push_str(piece);
        }
        text
    }

    /// All words of all segments, in order.
    pub fn words(&self) -> impl Iterator<Item = &Word> {
        self.segments
            .iter()
            .flat_map(|segment| segment.words.iter())
    }
}
