//! Cutting long audio into windows at quiet points, so windows can be decoded side by side
//! (batched) instead of one after another.

use super::audio::{AudioError, AudioSource};
use super::mel::SAMPLE_RATE;

/// Energy is measured over frames of this many samples (20 ms).
const FRAME: usize = SAMPLE_RATE / 50;
/// The cut is placed at the centre of the quietest stretch this long (200 ms).
const QUIET_SPAN_FRAMES: usize = 10;

/// Where to end a chunk that starts at `samples[0]`: the quietest point between `min_len`
/// and `max_len` samples in (or `samples.len()` if that is shorter than `max_len`).
pub fn find_cut(samples: &[f32], min_len: usize, max_len: usize) -> usize {
    if samples.len() <= max_len {
        return samples.len();
    }
    let energy: Vec<f32> = samples[..max_len]
        .chunks(FRAME)
        .map(|frame| frame.iter().map(|x| x * x).sum::<f32>())
        .collect();
    quiet_point(&energy, min_len / FRAME, max_len / FRAME)
        .map_or(max_len, |frame| (frame * FRAME).min(max_len))
}

/// The frame in the middle of the quietest stretch of `energy` (per 20 ms frame) that lies
/// between frames `first` and `end`; `None` if that range is too short.
fn quiet_point(energy: &[f32], first: usize, end: usize) -> Option<usize> {
    let last = end.min(energy.len()).saturating_sub(QUIET_SPAN_FRAMES);
    if first >= last {
        return None;
    }
    // Sliding sums over QUIET_SPAN_FRAMES frames.
    let sums: Vec<f32> = (first..=last)
        .map(|start| energy[start..start + QUIET_SPAN_FRAMES].iter().sum())
        .collect();
    let quietest = sums.iter().copied().fold(f32::INFINITY, f32::min);
    // Of the stretch of (nearly) equally quiet spans around the last quietest one, cut in the
    // middle: both neighbours then get some silence at their edge, and neither starts with a
    // word right at its first frame (which Whisper tends to garble).
    let tolerance = quietest * 1.5 + 1e-6;
    let best = sums.iter().rposition(|sum| *sum <= quietest).unwrap_or(0);
    let mut run_start = best;
    while run_start > 0 && sums[run_start - 1] <= tolerance {
        run_start -= 1;
    }
    let mut run_end = best;
    while run_end + 1 < sums.len() && sums[run_end + 1] <= tolerance {
        run_end += 1;
    }
    Some(first + (run_start + run_end) / 2 + QUIET_SPAN_FRAMES / 2)
}

/// Splits a whole stream into stretches of about `target` samples, for transcription side by
/// side: as many as the stream holds whole targets (at least one), each cut at the quietest
/// point within a quarter of a target around its even share, so the count is what was
/// planned. Streams the audio and keeps one number per 20 ms (1.4 MB for two hours).
/// Returns the sample ranges, which cover the stream end to end.
pub fn plan_splits(
    source: &mut AudioSource,
    target: usize,
) -> Result<Vec<(usize, usize)>, AudioError> {
    let mut energy = Vec::new();
    let mut buffer = Vec::with_capacity(1 << 16);
    let (mut sum, mut in_frame, mut total) = (0f32, 0usize, 0usize);
    loop {
        buffer.clear();
        let n = source.read(&mut buffer, 1 << 16)?;
        if n == 0 {
            break;
        }
        total += n;
        for x in &buffer {
            sum += x * x;
            in_frame += 1;
            if in_frame == FRAME {
                energy.push(sum);
                (sum, in_frame) = (0.0, 0);
            }
        }
    }
    let target = (target / FRAME).max(QUIET_SPAN_FRAMES * 4);
    let count = ((energy.len() as f64 / target as f64).round() as usize).max(1);
    let share = energy.len() as f64 / count as f64;
    let mut ranges = Vec::with_capacity(count);
    let mut start = 0;
    for i in 1..count {
        let ideal = (i as f64 * share) as usize;
        let cut = quiet_point(
            &energy,
            (ideal.saturating_sub(target / 4)).max(start + target / 2),
            ideal + target / 4,
        )
        .unwrap_or(ideal)
        .max(start + 1);
        ranges.push((start * FRAME, cut * FRAME));
        start = cut;
    }
    ranges.push((start * FRAME, total));
    Ok(ranges)
}

/// Frames quieter than this fraction of the chunk's loud frames (90th percentile) count
/// as silence.
const SPEECH_LEVEL: f32 = 0.1;

/// Below this RMS (-60 dBFS) in every 20 ms frame, a window is silent: it is not decoded at
/// all (Whisper hallucinates on digital silence).
const SILENCE_RMS: f32 = 1e-3;

/// Whether no 20 ms frame of `samples` rises above -60 dBFS.
pub fn is_silent(samples: &[f32]) -> bool {
    samples.chunks(FRAME).all(|frame| {
        (frame.iter().map(|x| x * x).sum::<f32>() / frame.len() as f32).sqrt() < SILENCE_RMS
    })
}

/// The sample index at which the last audible stretch of `samples` ends, if any.
pub fn speech_end(samples: &[f32]) -> Option<usize> {
    let rms: Vec<f32> = samples
        .chunks(FRAME)
        .map(|frame| (frame.iter().map(|x| x * x).sum::<f32>() / frame.len() as f32).sqrt())
        .collect();
    let mut sorted = rms.clone();
    sorted.sort_by(f32::total_cmp);
    let loud = *sorted.get(sorted.len() * 9 / 10)?;
    if loud <= 1e-4 {
        return None;
    }
    rms.iter()
        .rposition(|level| *level > loud * SPEECH_LEVEL)
        .map(|frame| ((frame + 1) * FRAME).min(samples.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_in_the_pause_between_two_loud_stretches() {
        let second = SAMPLE_RATE;
        let mut samples: Vec<f32> = (0..40 * second).map(|n| (n as f32 * 0.3).sin()).collect();
        // Silence from 24.0 to 24.6 s.
        for x in &mut samples[24 * second..24 * second + 6 * second / 10] {
            *x = 0.0;
        }
        let cut = find_cut(&samples, 20 * second, 30 * second);
        assert!(
            (24 * second..24 * second + 6 * second / 10).contains(&cut),
            "cut at {cut}"
        );
    }

    #[test]
    fn speech_end_is_the_end_of_the_last_loud_stretch() {
        let second = SAMPLE_RATE;
        let mut samples: Vec<f32> = (0..10 * second)
            .map(|n| 0.3 * (n as f32 * 0.3).sin())
            .collect();
        for x in &mut samples[7 * second..] {
            *x *= 0.001;
        }
        let end = speech_end(&samples).unwrap();
        assert!((7 * second..7 * second + FRAME + 1).contains(&end), "{end}");
        assert_eq!(speech_end(&vec![0.0; second]), None);
        assert!(is_silent(&vec![1e-4; second]));
        let mut blip = vec![0.0; second];
        blip[second / 2] = 0.5;
        assert!(!is_silent(&blip), "one loud frame is enough to decode");
    }

    #[test]
    fn short_audio_is_one_chunk_and_uniform_audio_cuts_in_range() {
        let samples = vec![0.5f32; 10 * SAMPLE_RATE];
        assert_eq!(
            find_cut(&samples, 20 * SAMPLE_RATE, 30 * SAMPLE_RATE),
            samples.len()
        );
        let samples = vec![0.5f32; 40 * SAMPLE_RATE];
        let cut = find_cut(&samples, 20 * SAMPLE_RATE, 30 * SAMPLE_RATE);
        assert!(
            (20 * SAMPLE_RATE..=30 * SAMPLE_RATE).contains(&cut),
            "{cut}"
        );
    }
}
