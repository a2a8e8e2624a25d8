//! Bad input never panics and never leaves a partial output: each case gets one clear error
//! line and a non-zero exit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// Runs a transcription that must fail; returns its one error line.
fn fails(
    input: &Path,
    extra: &[&str],
    configure: impl FnOnce(&mut std::process::Command),
) -> String {
    let out_dir = tempfile::tempdir().unwrap();
    let output = out_dir.path().join("out.srt");
    let mut args = vec![
        "transcribe",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    for (flag, default) in [("--model", "tiny.en"), ("--threads", "1")] {
        if !extra.contains(&flag) {
            args.extend_from_slice(&[flag, default]);
        }
    }
    let run = ytcaption_with(&args, configure);
    assert!(!run.success, "{} should fail: {run:?}", input.display());
    assert!(
        !run.stderr.contains("panicked"),
        "panic on {}: {}",
        input.display(),
        run.stderr
    );
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "want one error line for {}, got: {}",
        input.display(),
        run.stderr
    );
    assert!(lines[0].starts_with("error: "), "{}", lines[0]);
    let left: Vec<PathBuf> = std::fs::read_dir(out_dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "partial output left behind: {left:?}");
    lines[0].to_lowercase()
}

fn assert_mentions(line: &str, words: &[&str]) {
    assert!(
        words.iter().any(|w| line.contains(w)),
        "{line:?} should mention one of {words:?}"
    );
}

#[test]
fn broken_media_gets_a_specific_error() {
    let bad = fixtures().join("bad");
    let cases: [(&str, &[&str]); 6] = [
        ("empty.mp3", &["empty"]),
        ("text.mp3", &["not an audio or video file"]),
        ("truncated.mp3", &["truncated", "corrupt"]),
        ("header_only.wav", &["no audio"]),
        ("rate0.wav", &["sample rate"]),
        ("rate_huge.wav", &["sample rate"]),
    ];
    for (name, words) in cases {
        let line = fails(&bad.join(name), &[], |_| {});
        assert_mentions(&line, words);
    }
}

#[test]
fn missing_paths_and_directories_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let line = fails(&dir.path().join("nope.wav"), &[], |_| {});
    assert_mentions(&line, &["not found", "no such file"]);
    let line = fails(dir.path(), &[], |_| {});
    assert_mentions(&line, &["directory"]);
}

#[test]
fn bad_options_fail_before_any_work() {
    let clip = fixture("beckett.wav");
    let line = fails(&clip, &["--format", "docx"], |_| {});
    assert_mentions(&line, &["unknown transcript format"]);
    let line = fails(&clip, &["--task", "summarise"], |_| {});
    assert_mentions(&line, &["unknown task"]);
    let line = fails(&clip, &["--threads", "0"], |_| {});
    assert_mentions(&line, &["--threads"]);
}

#[test]
fn a_missing_model_names_the_install_command() {
    let clip = fixture("beckett.wav");
    let line = fails(&clip, &["--model", "large-v9"], |_| {});
    assert_mentions(&line, &["make model"]);
    let empty = tempfile::tempdir().unwrap();
    let line = fails(&clip, &[], |c| {
        c.env("YTCAPTION_MODELS_DIR", empty.path());
    });
    assert_mentions(&line, &["make model"]);
}

#[test]
fn a_missing_runtime_library_is_reported_not_panicked() {
    let clip = fixture("beckett.wav");
    let line = fails(&clip, &[], |c| {
        c.env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so");
    });
    assert_mentions(&line, &["ort_dylib_path"]);
}

#[test]
fn a_corrupt_model_file_is_named() {
    let clip = fixture("beckett.wav");
    let models = ytcaption_tests::node::models_dir();
    let copy = tempfile::tempdir().unwrap();
    let model = copy.path().join("tiny.en");
    std::fs::create_dir(&model).unwrap();
    for entry in std::fs::read_dir(models.join("tiny.en")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, model.join(path.file_name().unwrap())).unwrap();
    }
    // Keep the first megabyte of the decoder only.
    let decoder = model.join("decoder.onnx");
    let bytes = std::fs::read(&decoder).unwrap();
    std::fs::write(&decoder, &bytes[..1 << 20]).unwrap();
    let line = fails(&clip, &["--model", model.to_str().unwrap()], |_| {});
    assert_mentions(&line, &["decoder.onnx"]);
    assert_mentions(&line, &["corrupt"]);

    // A token table cut short is named too, with what it should hold.
    std::fs::write(&decoder, &bytes).unwrap();
    let table = model.join("embeddings.f16");
    let rows = std::fs::read(&table).unwrap();
    std::fs::write(&table, &rows[..rows.len() - 2]).unwrap();
    let line = fails(&clip, &["--model", model.to_str().unwrap()], |_| {});
    assert_mentions(&line, &["embeddings.f16"]);
    assert_mentions(&line, &["expected"]);
}
