//! Whisper's log-mel front end, one 30-second window at a time.
//!
//! Matches openai-whisper's `log_mel_spectrogram` + `pad_or_trim`: STFT with n_fft 400, hop 160,
//! periodic Hann window and centre reflect padding at the start of the audio; |X|^2; a Slaney
//! mel filterbank (librosa `htk=False, norm="slaney"`, built in f64 so no asset file is needed);
//! `log10(max(x, 1e-10))`, clamped to `max - 8`, then `(x + 4) / 4`.
//!
//! One difference, on purpose: openai-whisper clamps with the maximum of the *whole* file, which
//! needs the whole file in memory. Here the maximum is the window's own, so memory stays bounded
//! for any length. For a single window the two are identical.

use std::sync::Arc;

use realfft::num_complex::Complex32;
use realfft::{RealFftPlanner, RealToComplex};

pub const SAMPLE_RATE: usize = 16_000;
pub const N_FFT: usize = 400;
pub const HOP_LENGTH: usize = 160;
/// Samples in one 30-second window.
pub const N_SAMPLES: usize = 30 * SAMPLE_RATE;
/// Mel frames in one window.
pub const N_FRAMES: usize = N_SAMPLES / HOP_LENGTH;
const N_BINS: usize = N_FFT / 2 + 1;

/// One mel filter: its first non-zero FFT bin and its weights from there on.
struct Filter {
    first_bin: usize,
    weights: Vec<f32>,
}

/// The front end for one model's number of mel bands (80, or 128 for large-v3).
pub struct MelFrontEnd {
    n_mels: usize,
    filters: Vec<Filter>,
    window: Vec<f32>,
    fft: Arc<dyn RealToComplex<f32>>,
}

impl std::fmt::Debug for MelFrontEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MelFrontEnd")
            .field("n_mels", &self.n_mels)
            .finish()
    }
}

impl MelFrontEnd {
    pub fn new(n_mels: usize) -> Self {
        let window = (0..N_FFT)
            .map(|n| {
                let phase = 2.0 * std::f64::consts::PI * n as f64 / N_FFT as f64;
                (0.5 - 0.5 * phase.cos()) as f32
            })
            .collect();
        let fft = RealFftPlanner::<f32>::new().plan_fft_forward(N_FFT);
        let filters = slaney_filterbank(n_mels)
            .into_iter()
            .map(|row| {
                let first_bin = row.iter().position(|w| *w > 0.0).unwrap_or(0);
                let last_bin = row.iter().rposition(|w| *w > 0.0).unwrap_or(0);
                Filter {
                    first_bin,
                    weights: row[first_bin..=last_bin.max(first_bin)]
                        .iter()
                        .map(|w| *w as f32)
                        .collect(),
                }
            })
            .collect();
        MelFrontEnd {
            n_mels,
            filters,
            window,
            fft,
        }
    }

    pub fn n_mels(&self) -> usize {
        self.n_mels
    }

    /// Log-mel of the 30-second window that starts at `samples[0]`, written to `out` as
    /// `[n_mels, N_FRAMES]` row-major. `samples` may be shorter than a window (the rest is
    /// silence) or longer (the excess only feeds the last frames' right context).
    /// `at_audio_start` selects reflect padding on the left (true at the very start of the
    /// audio); otherwise the window must be preceded by `before`, the up to `N_FFT / 2` samples
    /// just before it. Frames from `content_frames` on are set to 0, as openai-whisper's
    /// `pad_or_trim` does to the last, partial window of a file.
    pub fn window(
        &self,
        before: &[f32],
        samples: &[f32],
        at_audio_start: bool,
        content_frames: usize,
        out: &mut [f32],
    ) {
        debug_assert_eq!(out.len(), self.n_mels * N_FRAMES);
        let half = N_FFT / 2;
        // Sample at offset `i` relative to the window start, with Whisper's padding rules.
        let sample_at = |i: isize| -> f32 {
            if i >= 0 {
                let i = i as usize;
                if i < samples.len().min(N_SAMPLES + half) {
                    samples[i]
                } else {
                    0.0
                }
            } else if at_audio_start {
                // Reflect about sample 0 (numpy "reflect": x[-k] = x[k]).
                samples.get((-i) as usize).copied().unwrap_or(0.0)
            } else {
                let back = (-i) as usize;
                before
                    .len()
                    .checked_sub(back)
                    .map_or(0.0, |index| before[index])
            }
        };

        let mut frame = self.fft.make_input_vec();
        let mut spectrum: Vec<Complex32> = self.fft.make_output_vec();
        let mut scratch = self.fft.make_scratch_vec();
        let mut power = vec![0f32; N_BINS];
        let mut max_log = f32::NEG_INFINITY;
        for t in 0..N_FRAMES {
            let centre = (t * HOP_LENGTH) as isize;
            for (n, value) in frame.iter_mut().enumerate() {
                *value = sample_at(centre - half as isize + n as isize) * self.window[n];
            }
            // Sizes come from make_*_vec, so process cannot fail.
            let _ = self
                .fft
                .process_with_scratch(&mut frame, &mut spectrum, &mut scratch);
            for (p, c) in power.iter_mut().zip(&spectrum) {
                *p = c.norm_sqr();
            }
            for (m, filter) in self.filters.iter().enumerate() {
                let energy: f32 = filter
                    .weights
                    .iter()
                    .zip(&power[filter.first_bin..])
                    .map(|(w, p)| w * p)
                    .sum();
                // Out-of-range input (a damaged float WAV decodes to samples near f32::MAX) makes
                // the power overflow to inf, or NaN via inf - inf in the FFT: keep it finite.
                // `max` first, not `clamp`: it also turns NaN into the floor.
                #[allow(clippy::manual_clamp)]
                let log = energy.max(1e-10).min(f32::MAX).log10();
                max_log = max_log.max(log);
                out[m * N_FRAMES + t] = log;
            }
        }
        let floor = max_log - 8.0;
        for row in out.chunks_exact_mut(N_FRAMES) {
            for (t, value) in row.iter_mut().enumerate() {
                *value = if t < content_frames {
                    (value.max(floor) + 4.0) / 4.0
                } else {
                    0.0
                };
            }
        }
    }
}

/// Slaney's mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above.
const F_SP: f64 = 200.0 / 3.0;
const MIN_LOG_HZ: f64 = 1000.0;
const MIN_LOG_MEL: f64 = MIN_LOG_HZ / F_SP;

fn log_step() -> f64 {
    6.4f64.ln() / 27.0
}

fn hz_to_mel(hz: f64) -> f64 {
    if hz >= MIN_LOG_HZ {
        MIN_LOG_MEL + (hz / MIN_LOG_HZ).ln() / log_step()
    } else {
        hz / F_SP
    }
}

fn mel_to_hz(mel: f64) -> f64 {
    if mel >= MIN_LOG_MEL {
        MIN_LOG_HZ * (log_step() * (mel - MIN_LOG_MEL)).exp()
    } else {
        F_SP * mel
    }
}

/// librosa.filters.mel(sr=16000, n_fft=400, n_mels, htk=False, norm="slaney"), in f64.
fn slaney_filterbank(n_mels: usize) -> Vec<Vec<f64>> {
    let nyquist = SAMPLE_RATE as f64 / 2.0;
    let fft_freqs: Vec<f64> = (0..N_BINS)
        .map(|k| k as f64 * nyquist / (N_BINS - 1) as f64)
        .collect();
    let (mel_min, mel_max) = (hz_to_mel(0.0), hz_to_mel(nyquist));
    let mel_points: Vec<f64> = (0..n_mels + 2)
        .map(|i| mel_to_hz(mel_min + (mel_max - mel_min) * i as f64 / (n_mels + 1) as f64))
        .collect();
    (0..n_mels)
        .map(|i| {
            let (left, centre, right) = (mel_points[i], mel_points[i + 1], mel_points[i + 2]);
            let enorm = 2.0 / (right - left);
            fft_freqs
                .iter()
                .map(|&f| {
                    let lower = (f - left) / (centre - left);
                    let upper = (right - f) / (right - centre);
                    lower.min(upper).max(0.0) * enorm
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filterbank_matches_librosa_shape_and_normalisation() {
        let bank = slaney_filterbank(80);
        assert_eq!(bank.len(), 80);
        // Slaney normalisation makes every triangle's area (in Hz) equal to 1.
        let bin_hz = 8000.0 / 200.0;
        for row in &bank {
            let area: f64 = row.iter().sum::<f64>() * bin_hz;
            assert!((0.5..1.5).contains(&area), "area {area}");
        }
        // The first filter rises from 0 Hz and peaks at bin 1 (40 Hz); values are checked
        // against numpy in tests/tests/mel.rs.
        let peak = bank[0]
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0;
        assert_eq!(peak, 1);
        assert_eq!(bank[0][0], 0.0);
    }

    /// Found by fuzz/fuzz_targets/decode_mel.rs: a 16 kHz IEEE-float WAV whose data chunk was
    /// shifted by one byte decodes to samples up to ~3.3e38; the power spectrum overflowed to inf
    /// (or NaN) and every output value became inf. These are that file's largest samples.
    #[test]
    fn huge_finite_samples_give_finite_output() {
        let front = MelFrontEnd::new(80);
        let mut out = vec![0f32; 80 * N_FRAMES];
        let mut samples: Vec<f32> = (0..3200)
            .map(|n| 0.05 * (2.0 * std::f32::consts::PI * 440.0 * n as f32 / 16_000.0).sin())
            .collect();
        for (i, v) in [
            (292, 2.963_472_4e26),
            (355, 1.728_502e38),
            (427, 1.635_333e38),
            (444, 9.982_772e37),
            (450, 3.316_254_5e38),
            (451, -f32::MAX),
            (452, f32::MAX),
        ] {
            samples[i] = v;
        }
        front.window(&[], &samples, true, samples.len() / HOP_LENGTH, &mut out);
        assert!(out.iter().all(|v| v.is_finite()));
        front.window(&samples[..N_FFT / 2], &samples, false, N_FRAMES, &mut out);
        assert!(out.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn silence_is_flat_and_a_tone_lights_its_band() {
        let front = MelFrontEnd::new(80);
        let mut out = vec![0f32; 80 * N_FRAMES];
        front.window(&[], &[], true, N_FRAMES, &mut out);
        assert!(out.iter().all(|v| (*v - out[0]).abs() < 1e-6));

        let tone: Vec<f32> = (0..SAMPLE_RATE * 2)
            .map(|n| (2.0 * std::f32::consts::PI * 1000.0 * n as f32 / SAMPLE_RATE as f32).sin())
            .collect();
        front.window(&[], &tone, true, N_FRAMES, &mut out);
        let frame = 50;
        let column: Vec<f32> = (0..80).map(|m| out[m * N_FRAMES + frame]).collect();
        let loudest = column
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(m, _)| m)
            .unwrap();
        let (lo, hi) = (mel_to_hz(loudest as f64), mel_to_hz(loudest as f64 + 2.0));
        let centre = mel_to_hz(
            hz_to_mel(0.0) + (hz_to_mel(8000.0) - hz_to_mel(0.0)) * (loudest + 1) as f64 / 81.0,
        );
        assert!(
            (centre - 1000.0).abs() < 120.0,
            "band {loudest} ({lo}-{hi} Hz)"
        );
        // After the tone ends (2 s = frame 200) the log-mel sits at the floor.
        assert!(out[loudest * N_FRAMES + 400] < out[loudest * N_FRAMES + frame] - 1.0);
    }
}
