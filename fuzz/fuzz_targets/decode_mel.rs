//! Fuzz target for the decode + mel path: arbitrary bytes as an audio file, through
//! `AudioSource::open`/`read` (symphonia demuxers and decoders, downmix, rubato resampling) and
//! then the Whisper log-mel front end.
//!
//! Errors are fine; a panic that escapes `AudioSource`, a crash, a hang or a non-finite mel value
//! is a bug. Only the in-process Rust decoders are in scope: `YTCAPTION_FFMPEG` points at a binary
//! that does not exist, so the ffmpeg fallback fails fast instead of spawning a process.
//!
//! Panics: libfuzzer-sys installs a panic hook that aborts *before* unwinding, which would make
//! the `catch_unwind` around symphonia in `audio.rs` useless here and report panics production
//! survives. So `init` replaces that hook: a panic is logged once per source location and then
//! unwinds normally. One that `audio.rs` catches becomes an `AudioError`; one that escapes reaches
//! libfuzzer-sys's own `catch_unwind`, which aborts, and libFuzzer saves the input as a crash.
//! Set `YTCAPTION_FUZZ_STRICT_PANICS=1` to abort on every panic, caught or not (to collect
//! inputs for panics inside symphonia that `audio.rs` already contains).
#![no_main]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use ytcaption_actors::engine::audio::{AudioSource, FFMPEG_ENV, SAMPLE_RATE};
use ytcaption_actors::engine::mel::{MelFrontEnd, N_FRAMES};

/// At most this many 16 kHz samples are read per input (2 s), to keep every run short.
const MAX_SAMPLES: usize = 2 * SAMPLE_RATE as usize;
/// Samples requested per `read` call (small, so the streaming path is exercised too).
const READ_CHUNK: usize = 4096;

struct State {
    path: PathBuf,
    front: MelFrontEnd,
}

static STATE: OnceLock<State> = OnceLock::new();

/// Runs once, single-threaded, before the first input.
fn init() {
    std::env::set_var(FFMPEG_ENV, "/nonexistent/ffmpeg");
    let strict = std::env::var_os("YTCAPTION_FUZZ_STRICT_PANICS").is_some_and(|v| v == "1");
    // Drop libfuzzer-sys's abort-before-unwind hook; the second take returns std's default hook.
    drop(std::panic::take_hook());
    let default_hook = std::panic::take_hook();
    static SEEN: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    std::panic::set_hook(Box::new(move |info| {
        if strict {
            default_hook(info);
            std::process::abort();
        }
        let at = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let first = SEEN.lock().map(|mut s| s.insert(at.clone())).unwrap_or(true);
        if first {
            eprintln!("[decode_mel] panic (new location, unwinding): {info}");
        }
    }));
    let _ = STATE.set(State {
        path: std::env::temp_dir().join(format!("ytcaption-fuzz-{}.bin", std::process::id())),
        front: MelFrontEnd::new(80),
    });
}

fuzz_target!(init: init(), |data: &[u8]| {
    let Some(st) = STATE.get() else { return };
    if std::fs::write(&st.path, data).is_err() {
        return;
    }
    let Ok(mut source) = AudioSource::open(&st.path) else {
        return;
    };
    assert_eq!(source.backend(), "symphonia", "ffmpeg must not be used while fuzzing");
    let mut samples = Vec::with_capacity(MAX_SAMPLES);
    while samples.len() < MAX_SAMPLES {
        let want = READ_CHUNK.min(MAX_SAMPLES - samples.len());
        match source.read(&mut samples, want) {
            Ok(0) | Err(_) => break,
            Ok(n) => assert!(n <= want, "read returned {n} > max {want}"),
        }
    }
    assert!(samples.len() <= MAX_SAMPLES);
    if samples.is_empty() {
        return;
    }
    let content_frames = (samples.len() / 160).min(N_FRAMES);
    let mut out = vec![0f32; 80 * N_FRAMES];
    st.front.window(&[], &samples, true, content_frames, &mut out);
    if let Some(i) = out.iter().position(|v| !v.is_finite()) {
        let max_abs = samples.iter().fold(0f32, |m, s| m.max(s.abs()));
        panic!(
            "non-finite mel value {} at band {} frame {} ({} samples, max |sample| {max_abs})",
            out[i],
            i / N_FRAMES,
            i % N_FRAMES,
            samples.len()
        );
    }
});
