//! The Rust log-mel front end against an independent numpy implementation
//! (`deploy/model/mel_ref.py`, run in the project venv).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::*;
use ytcaption_actors::engine::audio::decode_all;
use ytcaption_actors::engine::mel::{MelFrontEnd, N_FRAMES};

fn reference_mel(wav: &std::path::Path, n_mels: usize) -> Vec<f32> {
    let out = tempfile::NamedTempFile::new().unwrap();
    let python = repo().join(".venv/bin/python");
    assert!(
        python.is_file(),
        "the project venv is missing: run `make model`"
    );
    let status = Command::new(python)
        .arg(repo().join("deploy/model/mel_ref.py"))
        .arg(wav)
        .arg(out.path())
        .args(["--n-mels", &n_mels.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::read(out.path())
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[test]
fn log_mel_matches_numpy_within_1e_4() {
    let clips: Vec<std::path::PathBuf> = std::iter::once(fixture("beckett.wav"))
        .chain(
            single_window_clips()
                .iter()
                .take(2)
                .map(|name| fixture(&format!("{name}.wav"))),
        )
        .collect();
    for wav in clips {
        for n_mels in [80, 128] {
            let samples = decode_all(&wav).unwrap();
            let front = MelFrontEnd::new(n_mels);
            let mut ours = vec![0f32; n_mels * N_FRAMES];
            front.window(&[], &samples, true, N_FRAMES, &mut ours);
            let theirs = reference_mel(&wav, n_mels);
            assert_eq!(ours.len(), theirs.len());
            let max_diff = ours
                .iter()
                .zip(&theirs)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            eprintln!(
                "{} ({n_mels} mels): max abs diff {max_diff:e}",
                wav.display()
            );
            assert!(
                max_diff <= 1e-4,
                "{}: max abs diff {max_diff}",
                wav.display()
            );
        }
    }
}
