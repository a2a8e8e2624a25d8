//! Shared helpers for the end-to-end tests: where things are, how to run the real binary, and
//! word error rate.
//!
//! The tests run `target/release/ytcaption` (or `$YTCAPTION_BIN`) on audio made by
//! `tests/fixtures/make.sh`, with the models `make model` installed. `make test` prepares all
//! three; a missing piece fails the test with the command that provides it.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

// Not every test binary uses every helper.
#[allow(unused_imports)]
pub use ytcaption_tests::text::{expected_text, fixture, fixtures, normalise, wer, word_errors};

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Names of the single-window clips listed in `tests/fixtures/clips.txt` (`name|engine|text`).
pub fn single_window_clips() -> Vec<String> {
    let list = std::fs::read_to_string(repo().join("tests/fixtures/clips.txt")).unwrap();
    list.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split('|').next())
        .map(str::to_owned)
        // Lines sharing a name are paragraphs of one clip; `long` is the multi-window one.
        .fold(Vec::new(), |mut names: Vec<String>, name| {
            if name != "long" && !names.contains(&name) {
                names.push(name);
            }
            names
        })
}

pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("YTCAPTION_BIN") {
        return PathBuf::from(path);
    }
    // target/<profile>/deps/<test exe> -> target/<profile>/ytcaption
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join("ytcaption");
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --release -p ytcaption` (make test does)",
        path.display()
    );
    path
}

/// Result of one run of the binary.
#[derive(Debug)]
pub struct Run {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(output: Output) -> Self {
        Run {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// Runs `ytcaption ARGS` with one inference thread (tests run side by side on few cores).
pub fn ytcaption(args: &[&str]) -> Run {
    ytcaption_with(args, |_| {})
}

pub fn ytcaption_with(args: &[&str], configure: impl FnOnce(&mut Command)) -> Run {
    let mut command = Command::new(binary());
    command.args(args).env_remove("ORT_DYLIB_PATH");
    configure(&mut command);
    command.output().expect("cannot start ytcaption").into()
}

/// Transcribes a file to JSON with the given model and extra flags.
pub fn transcribe_json(path: &Path, model: &str, extra: &[&str]) -> serde_json::Value {
    let path = path.to_str().unwrap();
    let mut args = vec![
        "transcribe",
        path,
        "--model",
        model,
        "--format",
        "json",
        "--threads",
        "1",
    ];
    args.extend_from_slice(extra);
    let run = ytcaption(&args);
    assert!(run.success, "transcribe {path} failed: {}", run.stderr);
    serde_json::from_str(&run.stdout).unwrap()
}

/// Checks the invariants every transcript must hold: segments and words in order, inside
/// the audio, words inside their segment.
pub fn assert_well_timed(transcript: &serde_json::Value) {
    let duration = transcript["duration"].as_f64().unwrap();
    let mut last_start = 0.0;
    for segment in transcript["segments"].as_array().unwrap() {
        let (start, end) = (
            segment["start"].as_f64().unwrap(),
            segment["end"].as_f64().unwrap(),
        );
        assert!(
            start >= last_start - 1e-6,
            "segments out of order at {start}: {transcript}"
        );
        assert!(start <= end, "segment ends before it starts: {segment}");
        assert!(
            end <= duration + 0.05,
            "segment ends after the audio ({duration} s): {segment}"
        );
        last_start = start;
        let mut last_word_end = start;
        for word in segment["words"].as_array().into_iter().flatten() {
            let (ws, we) = (
                word["start"].as_f64().unwrap(),
                word["end"].as_f64().unwrap(),
            );
            assert!(
                ws <= we && ws >= last_word_end - 1e-6,
                "word out of order: {word} in {segment}"
            );
            assert!(
                ws >= start - 1e-6 && we <= end + 1e-6,
                "word outside its segment: {word} in {segment}"
            );
            last_word_end = we;
        }
    }
}

/// Status and JSON body of a response, whether ureq calls it an error or not.
pub fn response(result: Result<ureq::Response, ureq::Error>) -> (u16, serde_json::Value) {
    let response = match result {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(error) => panic!("request failed: {error}"),
    };
    let status = response.status();
    let text = response.into_string().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

/// The webhook deliveries the media server received for `path`.
pub fn hooks(
    server: &ytcaption_tests::media_server::MediaServer,
    path: &str,
) -> Vec<ytcaption_tests::media_server::RecordedRequest> {
    server
        .requests()
        .into_iter()
        .filter(|request| request.method == "POST" && request.path() == path)
        .collect()
}
