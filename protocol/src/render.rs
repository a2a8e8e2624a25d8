//! Renderers: a [`Transcript`] as plain text, SubRip (SRT), WebVTT or JSON.

use std::fmt::Write as _;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::transcript::{Segment, Transcript};

/// An output format a transcript can be rendered in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Txt,
    Srt,
    Vtt,
    Json,
}

/// A format name that is not one of txt, srt, vtt, json.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown transcript format {0:?}: expected one of txt, srt, vtt, json")]
pub struct UnknownFormat(pub String);

impl Format {
    pub const ALL: [Format; 4] = [Format::Txt, Format::Srt, Format::Vtt, Format::Json];

    /// The usual file extension, also the name accepted by [`FromStr`].
    pub fn extension(self) -> &'static str {
        match self {
            Format::Txt => "txt",
            Format::Srt => "srt",
            Format::Vtt => "vtt",
            Format::Json => "json",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Txt => "text/plain; charset=utf-8",
            Format::Srt => "application/x-subrip; charset=utf-8",
            Format::Vtt => "text/vtt; charset=utf-8",
            Format::Json => "application/json",
        }
    }

    /// Renders `transcript` in this format.
    pub fn render(self, transcript: &Transcript) -> String {
        match self {
            Format::Txt => render_txt(transcript),
            Format::Srt => render_srt(transcript),
            Format::Vtt => render_vtt(transcript),
            Format::Json => render_json(transcript),
        }
    }
}

impl FromStr for Format {
    type Err = UnknownFormat;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Format::ALL
            .into_iter()
            .find(|format| format.extension().eq_ignore_ascii_case(name))
            .ok_or_else(|| UnknownFormat(name.to_owned()))
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.extension())
    }
}

/// Segments that carry text; captions never show empty cues.
fn spoken(transcript: &Transcript) -> impl Iterator<Item = &Segment> {
    transcript
        .segments
        .iter()
        .filter(|segment| !segment.text.trim().is_empty())
}

fn render_txt(transcript: &Transcript) -> String {
    let mut out = String::new();
    for segment in spoken(transcript) {
        out.push_str(segment.text.trim());
        out.push('\n');
    }
    out
}

/// `HH:MM:SS<sep>mmm`, clamping negative times to zero.
fn timestamp(seconds: f64, separator: char) -> String {
    let total_ms = (seconds.max(0.0) * 1000.0).round() as u64;
    let (hours, rest) = (total_ms / 3_600_000, total_ms % 3_600_000);
    let (minutes, rest) = (rest / 60_000, rest % 60_000);
    let (secs, ms) = (rest / 1000, rest % 1000);
    format!("{hours:02}:{minutes:02}:{secs:02}{separator}{ms:03}")
}

/// Cue text may not contain a blank line (it would end the cue) nor, in VTT, the `-->` marker.
fn cue_text(text: &str) -> String {
    text.trim()
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
        .replace("-->", "->")
}

/// Cue bounds that players accept: end strictly after start.
fn cue_bounds(segment: &Segment) -> (f64, f64) {
    let start = segment.start.max(0.0);
    (start, segment.end.max(start + 0.001))
}

fn render_srt(transcript: &Transcript) -> String {
    let mut out = String::new();
    for (index, segment) in spoken(transcript).enumerate() {
        let (start, end) = cue_bounds(segment);
        let _ = write!(
            out,
            "{}\n{} --> {}\n{}\n\n",
            index + 1,
            timestamp(start, ','),
            timestamp(end, ','),
            cue_text(&segment.text)
        );
    }
    out
}

fn render_vtt(transcript: &Transcript) -> String {
    let mut out = String::from("WEBVTT\n\n");
    for segment in spoken(transcript) {
        let (start, end) = cue_bounds(segment);
        let _ = write!(
            out,
            "{} --> {}\n{}\n\n",
            timestamp(start, '.'),
            timestamp(end, '.'),
            cue_text(&segment.text)
        );
    }
    out
}

#[derive(Serialize)]
struct JsonView<'a> {
    text: String,
    #[serde(flatten)]
    transcript: &'a Transcript,
}

fn render_json(transcript: &Transcript) -> String {
    let view = JsonView {
        text: transcript.text(),
        transcript,
    };
    // Serializing plain structs of strings and finite numbers cannot fail; NaN would become null.
    let mut json = serde_json::to_string_pretty(&view).unwrap_or_else(|_| String::from("{}"));
    json.push('\n');
    json
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transcript::{Word, TRANSCRIPT_VERSION};

    fn sample() -> Transcript {
        let segment = |start: f64, end: f64, text: &str| Segment {
            start,
            end,
            text: text.to_owned(),
            avg_logprob: -0.2,
            no_speech_prob: 0.01,
            temperature: 0.0,
            compression_ratio: 1.2,
            words: vec![Word {
                start,
                end,
                word: text.split_whitespace().next().unwrap_or("").to_owned(),
                probability: 0.9,
            }],
        };
        Transcript {
            version: TRANSCRIPT_VERSION,
            language: "en".into(),
            task: "transcribe".into(),
            model: "test".into(),
            duration: 3725.5,
            segments: vec![
                segment(0.0, 2.5, " Hello there."),
                segment(2.5, 2.5, "   "),
                segment(3661.042, 3662.0, " An hour --> later.\n\nSecond line"),
            ],
        }
    }

    #[test]
    fn timestamps_carry_hours_minutes_and_rounded_milliseconds() {
        assert_eq!(timestamp(3661.0425, ','), "01:01:01,043");
        assert_eq!(timestamp(-1.0, '.'), "00:00:00.000");
        assert_eq!(timestamp(59.9996, '.'), "00:01:00.000");
    }

    #[test]
    fn srt_numbers_cues_skips_empty_segments_and_keeps_cues_intact() {
        let srt = Format::Srt.render(&sample());
        let cues: Vec<&str> = srt.trim_end().split("\n\n").collect();
        assert_eq!(cues.len(), 2, "{srt}");
        assert_eq!(cues[0], "1\n00:00:00,000 --> 00:00:02,500\nHello there.");
        assert_eq!(
            cues[1],
            "2\n01:01:01,042 --> 01:01:02,000\nAn hour -> later.\nSecond line"
        );
    }

    #[test]
    fn vtt_has_header_and_dot_separated_times() {
        let vtt = Format::Vtt.render(&sample());
        assert!(vtt.starts_with("WEBVTT\n\n00:00:00.000 --> 00:00:02.500\nHello there.\n\n"));
        assert!(!vtt.contains("-->  later"));
    }

    #[test]
    fn zero_length_cue_gets_a_positive_duration() {
        let mut transcript = sample();
        transcript.segments[0].end = 0.0;
        let srt = Format::Srt.render(&transcript);
        assert!(srt.contains("00:00:00,000 --> 00:00:00,001"), "{srt}");
    }

    #[test]
    fn json_round_trips_and_carries_the_full_text() {
        let transcript = sample();
        let json = Format::Json.render(&transcript);
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            value["text"],
            "Hello there. An hour --> later.\n\nSecond line"
        );
        let back: Transcript = serde_json::from_value(value).unwrap();
        assert_eq!(back, transcript);
    }

    #[test]
    fn txt_is_one_line_per_spoken_segment() {
        assert_eq!(
            Format::Txt.render(&sample()),
            "Hello there.\nAn hour --> later.\n\nSecond line\n"
        );
    }

    #[test]
    fn format_names_parse_case_insensitively_and_reject_others() {
        assert_eq!("SRT".parse::<Format>().unwrap(), Format::Srt);
        let err = "docx".parse::<Format>().unwrap_err();
        assert!(err.to_string().contains("docx"));
    }
}
