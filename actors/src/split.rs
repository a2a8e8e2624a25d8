//! Long media across the cluster: a Transcriber given a file longer than
//! `transcriber.split_above` cuts it at quiet points into chunks of about
//! `transcriber.split_chunk` (with `split_overlap` of audio added on each side), hands chunks
//! to idle Transcribers anywhere in the cluster, transcribes the rest itself, and merges the
//! pieces into one transcript with global timestamps.
//!
//! - **Where chunks go.** Only to a Transcriber whose node reports it idle, through the
//!   node's [`Placement`](crate::saga::Placement) (live, non-draining nodes, at most
//!   `max_in_flight_per_peer` per peer). The splitting worker never waits for one: what is
//!   not handed out it transcribes itself, so a busy cluster degrades to one node's speed and
//!   never deadlocks.
//! - **What travels.** A chunk request is the job's own [`StepRequest`] with a
//!   [`ChunkRange`]: the chunk's worker reads the media from storage (a peer's blob for local
//!   storage, the bucket for S3), decodes only its stretch, and answers with the chunk's
//!   transcript as JSON (tens of KB), never audio.
//! - **Failures.** A chunk whose worker is lost, late or fails is put back and transcribed
//!   here. A refusal for a stale epoch ends the whole step: a newer owner drives the job.
//!   Chunks are not durable on their own: if the splitting worker's node dies, the step runs
//!   again from the start (an attempt forgiven like any lost to the cluster).
//! - **Seams.** Each chunk owns the audio from its cut to the next; of what was transcribed
//!   in the overlap, a word (or, without word timings, a segment) is kept only by the chunk
//!   that owns its midpoint. Cuts are at the quietest 200 ms, so words rarely straddle one.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use ractor::ActorCell;
use ytcaption_protocol::job::ChunkRun;
use ytcaption_protocol::wire::{ChunkRange, StepFailure, StepRequest};
use ytcaption_protocol::{Segment, StepOutput, Transcript};

use crate::engine::audio::{AudioSource, SAMPLE_RATE};
use crate::engine::{chunk, EngineError};
use crate::saga::{call_worker, Lease};
use crate::transcriber::{engine_failure, TranscribeWork, ROLE};

/// When and how long media is split (`[transcriber]` `split_*`).
#[derive(Debug, Clone)]
pub struct SplitParams {
    /// Split audio longer than this; zero never splits.
    pub above: Duration,
    /// Length aimed at for each chunk.
    pub chunk: Duration,
    /// Audio added on each side of a chunk.
    pub overlap: Duration,
}

/// One chunk: the stretch transcribed (with overlap) and the stretch it owns, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Piece {
    pub range: ChunkRange,
    pub owns: (f64, f64),
}

/// How a long file is cut.
#[derive(Debug, Clone)]
pub struct Plan {
    pub pieces: Vec<Piece>,
    /// The file's length in seconds.
    pub duration: f64,
}

/// How long to wait before looking for an idle Transcriber again.
const PLACE_POLL: Duration = Duration::from_millis(250);

/// The cut of `media` when it should be split: long enough, and another Transcriber exists
/// somewhere to share it with. `None` transcribes it whole.
pub(crate) async fn plan(
    work: &TranscribeWork,
    request: &StepRequest,
    media: &Path,
) -> Result<Option<Plan>, StepFailure> {
    let params = work.params.split.clone();
    let transcribers = ractor::pg::get_members(&ROLE.to_owned()).len();
    if params.above.is_zero() || transcribers < 2 {
        return Ok(None);
    }
    let max_duration = work.params.max_duration;
    let media_path = media.to_path_buf();
    let task = tokio::task::spawn_blocking(move || -> Result<Option<Plan>, EngineError> {
        let mut source = AudioSource::open(&media_path)?;
        // Unknown or too long: the whole-file path says why, as it always has.
        let Some(seconds) = source.duration_hint() else {
            return Ok(None);
        };
        if seconds <= params.above.as_secs_f64() || seconds > max_duration.as_secs_f64() {
            return Ok(None);
        }
        let seconds = chunk_seconds(seconds, params.chunk.as_secs_f64(), transcribers);
        let cuts = chunk::plan_splits(&mut source, (seconds * f64::from(SAMPLE_RATE)) as usize)?;
        Ok(pieces(&cuts, params.overlap))
    });
    let planned = task.await.map_err(|join| {
        StepFailure::transient(
            "engine.panic",
            format!("planning the chunks failed: {join}"),
        )
    })?;
    let plan = planned.map_err(|error| engine_failure(&error, media))?;
    if let Some(plan) = &plan {
        tracing::info!(
            job_id = %request.job_id,
            chunks = plan.pieces.len(),
            duration_s = plan.duration,
            "splitting long media across the cluster"
        );
    }
    Ok(plan)
}

/// The chunk length aimed at for `seconds` of audio: at most about `longest`, and as many
/// chunks as a multiple of the cluster's `transcribers`, so that each ends up with about the
/// same share (10 min on 3 Transcribers: 6 chunks of 100 s rather than 5 of 120 s, of which
/// one node would do two while another did one).
fn chunk_seconds(seconds: f64, longest: f64, transcribers: usize) -> f64 {
    let transcribers = transcribers.max(1);
    let count = ((seconds / longest).ceil() as usize).max(transcribers);
    let even = seconds / count.div_ceil(transcribers).saturating_mul(transcribers) as f64;
    // Never below 10 s: shorter chunks cost more in seams and start-up than they save.
    even.max(MIN_CHUNK_SECONDS.min(longest))
}

const MIN_CHUNK_SECONDS: f64 = 10.0;

/// Chunks from sample ranges that cover the file; `None` for fewer than two.
fn pieces(cuts: &[(usize, usize)], overlap: Duration) -> Option<Plan> {
    if cuts.len() < 2 {
        return None;
    }
    let rate = f64::from(SAMPLE_RATE);
    let total = cuts.last().map_or(0, |(_, end)| *end);
    let overlap = (overlap.as_secs_f64() * rate) as usize;
    let ms = |sample: usize| (sample as u64 * 1000) / u64::from(SAMPLE_RATE);
    let last = cuts.len() - 1;
    let pieces = cuts
        .iter()
        .enumerate()
        .map(|(index, &(start, end))| Piece {
            range: ChunkRange {
                index: index as u32,
                start_ms: ms(start.saturating_sub(overlap)),
                end_ms: ms((end + overlap).min(total)),
            },
            owns: (
                if index == 0 {
                    f64::NEG_INFINITY
                } else {
                    start as f64 / rate
                },
                if index == last {
                    f64::INFINITY
                } else {
                    end as f64 / rate
                },
            ),
        })
        .collect();
    Some(Plan {
        pieces,
        duration: total as f64 / rate,
    })
}

/// Transcribes the chunks of `plan` here and on idle Transcribers elsewhere, and merges them;
/// also says where each chunk ran. `me` is the worker running the step: it is kept out of
/// this node's placement meanwhile.
pub(crate) async fn run(
    work: &TranscribeWork,
    request: &StepRequest,
    media: &Path,
    me: ActorCell,
    plan: Plan,
) -> Result<(Transcript, Vec<ChunkRun>), StepFailure> {
    let me = work.placement.reserve(&me);
    let chunks = Chunks {
        queue: Mutex::new((0..plan.pieces.len()).collect()),
        done: Mutex::new(vec![None; plan.pieces.len()]),
        local_idle: AtomicBool::new(false),
    };
    let started = Instant::now();
    loop {
        chunks.local_idle.store(false, Ordering::SeqCst);
        let local = async {
            while let Some(index) = chunks.next_local() {
                let piece = plan.pieces[index];
                let started = Instant::now();
                let (transcript, _) = work
                    .transcribe_local(request, media, Some(piece.range))
                    .await?;
                let done = Done {
                    transcript,
                    node: me.node.clone(),
                    ms: started.elapsed().as_millis() as u64,
                };
                chunks.finish(work, request, index, done);
            }
            chunks.local_idle.store(true, Ordering::SeqCst);
            Ok(())
        };
        let remote = hand_out(work, request, &plan, &chunks);
        tokio::try_join!(local, remote)?;
        // Chunks put back by failed peers after this node ran out of work: go round again.
        if chunks.queue().is_empty() {
            break;
        }
    }
    let (parts, runs): (Vec<Transcript>, Vec<(String, u64)>) = chunks
        .done
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner)
        .into_iter()
        .flatten()
        .map(|done| (done.transcript, (done.node, done.ms)))
        .unzip();
    if parts.len() != plan.pieces.len() {
        return Err(StepFailure::transient(
            "engine.split",
            "a chunk of the media was not transcribed",
        ));
    }
    tracing::info!(
        job_id = %request.job_id,
        chunks = parts.len(),
        seconds = started.elapsed().as_secs_f64(),
        "split transcription merged"
    );
    let runs = plan
        .pieces
        .iter()
        .zip(runs)
        .map(|(piece, (node, ms))| ChunkRun {
            node,
            start_s: piece.owns.0.max(0.0),
            end_s: piece.owns.1.min(plan.duration),
            ms,
        })
        .collect();
    Ok((merge(&plan, parts), runs))
}

/// The chunks still to do (handed out from the back, done here from the front) and the
/// transcripts of those done.
struct Chunks {
    queue: Mutex<VecDeque<usize>>,
    done: Mutex<Vec<Option<Done>>>,
    /// This node found the queue empty: a chunk put back after that waits for the next round.
    local_idle: AtomicBool,
}

/// A transcribed chunk: its transcript, the node that made it, and how long that took.
#[derive(Debug, Clone)]
struct Done {
    transcript: Transcript,
    node: String,
    ms: u64,
}

impl Chunks {
    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<usize>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn next_local(&self) -> Option<usize> {
        self.queue().pop_front()
    }

    fn finish(&self, work: &TranscribeWork, request: &StepRequest, index: usize, chunk: Done) {
        tracing::debug!(job_id = %request.job_id, index, node = chunk.node, ms = chunk.ms, "chunk transcribed");
        let mut done = self.done.lock().unwrap_or_else(PoisonError::into_inner);
        done[index] = Some(chunk);
        let finished = done.iter().filter(|part| part.is_some()).count();
        let percent = finished as f32 * 100.0 / done.len() as f32;
        drop(done);
        work.hub.publish_progress(&request.job_id, percent);
    }
}

/// Hands chunks to idle Transcribers until every answer is in and either none is left or
/// this node has stopped taking chunks (it takes what is left in the next round). A chunk
/// that fails elsewhere goes back to the front of the queue, for this node.
async fn hand_out(
    work: &TranscribeWork,
    request: &StepRequest,
    plan: &Plan,
    chunks: &Chunks,
) -> Result<(), StepFailure> {
    let mut calls = FuturesUnordered::new();
    loop {
        loop {
            let waiting = !chunks.queue().is_empty();
            let Some(lease) = waiting.then(|| work.placement.try_idle(ROLE)).flatten() else {
                break;
            };
            let next = chunks.queue().pop_back();
            let Some(index) = next else {
                break;
            };
            calls.push(call_chunk(work, request, plan.pieces[index], lease));
        }
        let settled = chunks.queue().is_empty() || chunks.local_idle.load(Ordering::SeqCst);
        if calls.is_empty() && settled {
            return Ok(());
        }
        tokio::select! {
            Some((index, node, ms, result)) = calls.next(), if !calls.is_empty() => {
                match result {
                    Ok(transcript) => chunks.finish(work, request, index, Done { transcript, node, ms }),
                    Err(failure) if failure.reason.code == crate::cluster::STALE_EPOCH => {
                        return Err(failure);
                    }
                    Err(failure) => {
                        tracing::warn!(
                            job_id = %request.job_id,
                            index,
                            node,
                            reason = %failure.reason,
                            "a chunk failed elsewhere; transcribing it here"
                        );
                        chunks.queue().push_front(index);
                    }
                }
            }
            () = tokio::time::sleep(PLACE_POLL) => {}
        }
    }
}

/// Asks the worker of `lease` for one chunk.
async fn call_chunk(
    work: &TranscribeWork,
    request: &StepRequest,
    piece: Piece,
    lease: Lease,
) -> (usize, String, u64, Result<Transcript, StepFailure>) {
    let started = Instant::now();
    let mut chunk_request = request.clone();
    chunk_request.chunk = Some(piece.range);
    let timeout = Duration::from_millis(request.deadline_ms.saturating_sub(crate::saga::now_ms()))
        + Duration::from_secs(5);
    let reply = call_worker(&lease.actor, &chunk_request, timeout, &work.metrics).await;
    let result = match reply.result {
        Ok(StepOutput::Chunk { transcript_json }) => serde_json::from_str(&transcript_json)
            .map_err(|error| {
                StepFailure::transient("step.bad_reply", format!("chunk transcript: {error}"))
            }),
        Ok(other) => Err(StepFailure::transient(
            "step.bad_reply",
            format!("a chunk was answered with {other:?}"),
        )),
        Err(failure) => Err(failure),
    };
    let ms = started.elapsed().as_millis() as u64;
    (piece.range.index as usize, lease.node.clone(), ms, result)
}

/// One transcript from the chunks' transcripts (in order, each timed from its chunk's start):
/// times made global, and of the overlaps only what each chunk owns.
pub fn merge(plan: &Plan, parts: Vec<Transcript>) -> Transcript {
    let mut segments = Vec::new();
    // Seconds of kept speech per language: the transcript's language is the main one.
    let mut languages: Vec<(String, f64)> = Vec::new();
    let first = parts.first().cloned();
    for (piece, part) in plan.pieces.iter().zip(parts) {
        let offset = piece.range.start_ms as f64 / 1000.0;
        let owned = |start: f64, end: f64| {
            let middle = (start + end) / 2.0;
            middle >= piece.owns.0 && middle < piece.owns.1
        };
        for mut segment in part.segments {
            shift(&mut segment, offset);
            if segment.words.is_empty() {
                if !owned(segment.start, segment.end) {
                    continue;
                }
            } else {
                let all = segment.words.len();
                segment.words.retain(|word| owned(word.start, word.end));
                let (Some(first), Some(last)) = (segment.words.first(), segment.words.last())
                else {
                    continue;
                };
                if segment.words.len() < all {
                    segment.start = first.start;
                    segment.end = last.end;
                    segment.text = segment
                        .words
                        .iter()
                        .map(|word| word.word.as_str())
                        .collect::<Vec<_>>()
                        .join(" ");
                }
            }
            let spoken = segment.end - segment.start;
            match languages
                .iter_mut()
                .find(|(code, _)| *code == part.language)
            {
                Some((_, seconds)) => *seconds += spoken,
                None => languages.push((part.language.clone(), spoken)),
            }
            segments.push(segment);
        }
    }
    let language = languages
        .into_iter()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(code, _)| code);
    let first = first.unwrap_or_else(|| Transcript {
        version: ytcaption_protocol::transcript::TRANSCRIPT_VERSION,
        language: String::new(),
        task: String::new(),
        model: String::new(),
        duration: 0.0,
        segments: Vec::new(),
    });
    Transcript {
        language: language.unwrap_or(first.language),
        duration: plan.duration,
        segments,
        ..first
    }
}

fn shift(segment: &mut Segment, offset: f64) {
    segment.start += offset;
    segment.end += offset;
    for word in &mut segment.words {
        word.start += offset;
        word.end += offset;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ytcaption_protocol::Word;

    fn segment(start: f64, words: &[(&str, f64, f64)]) -> Segment {
        Segment {
            start,
            end: words.last().map_or(start + 1.0, |w| w.2),
            text: words.iter().map(|w| w.0).collect::<Vec<_>>().join(" "),
            avg_logprob: -0.2,
            no_speech_prob: 0.01,
            temperature: 0.0,
            compression_ratio: 1.2,
            words: words
                .iter()
                .map(|&(word, start, end)| Word {
                    start,
                    end,
                    word: word.into(),
                    probability: 0.9,
                })
                .collect(),
        }
    }

    fn transcript(language: &str, segments: Vec<Segment>) -> Transcript {
        Transcript {
            version: 1,
            language: language.into(),
            task: "transcribe".into(),
            model: "tiny.en".into(),
            duration: 0.0,
            segments,
        }
    }

    fn two_chunk_plan() -> Plan {
        // Cut at 100 s, one second of overlap on each side.
        pieces(
            &[
                (0, 100 * SAMPLE_RATE as usize),
                (100 * SAMPLE_RATE as usize, 190 * SAMPLE_RATE as usize),
            ],
            Duration::from_secs(1),
        )
        .unwrap()
    }

    #[test]
    fn chunks_come_in_multiples_of_the_transcribers_and_stay_under_the_longest() {
        assert_eq!(chunk_seconds(600.0, 120.0, 3), 100.0);
        assert_eq!(chunk_seconds(600.0, 120.0, 2), 100.0);
        assert_eq!(chunk_seconds(600.0, 120.0, 5), 120.0);
        assert_eq!(chunk_seconds(100.0, 30.0, 3), 100.0 / 6.0);
        assert_eq!(chunk_seconds(7200.0, 120.0, 4), 120.0);
        assert_eq!(chunk_seconds(700.0, 120.0, 0), 700.0 / 6.0);
        assert_eq!(chunk_seconds(100.0, 30.0, 20), 10.0, "never below 10 s");
    }

    #[test]
    fn pieces_overlap_and_own_the_stretch_up_to_the_next_cut() {
        let plan = two_chunk_plan();
        assert_eq!(plan.duration, 190.0);
        assert_eq!(plan.pieces[0].range.start_ms, 0);
        assert_eq!(plan.pieces[0].range.end_ms, 101_000);
        assert_eq!(plan.pieces[1].range.start_ms, 99_000);
        assert_eq!(
            plan.pieces[1].range.end_ms, 190_000,
            "no overlap past the end"
        );
        assert_eq!(plan.pieces[0].owns.1, 100.0);
        assert_eq!(plan.pieces[1].owns.0, 100.0);
        assert!(pieces(&[(0, 16_000)], Duration::from_secs(1)).is_none());
    }

    #[test]
    fn merging_shifts_times_and_keeps_each_overlapped_word_once() {
        let plan = two_chunk_plan();
        // Chunk 0 heard "seam" (99.6-100.3 s, midpoint 99.95: chunk 0's) and the start of
        // "next" (100.5-100.9 s, chunk 1's); chunk 1 (starting at 99 s) heard both again.
        let first = transcript(
            "en",
            vec![
                segment(1.0, &[("hello", 1.0, 1.5), ("world.", 1.6, 2.0)]),
                segment(
                    99.0,
                    &[
                        ("the", 99.0, 99.4),
                        ("seam", 99.6, 100.3),
                        ("next", 100.5, 100.9),
                    ],
                ),
            ],
        );
        let second = transcript(
            "en",
            vec![
                segment(
                    0.5,
                    &[("seam", 0.6, 1.3), ("next", 1.5, 1.9), ("word.", 2.0, 2.4)],
                ),
                segment(50.0, &[("later", 50.0, 50.5)]),
            ],
        );
        let merged = merge(&plan, vec![first, second]);
        let words: Vec<&str> = merged
            .segments
            .iter()
            .flat_map(|s| s.words.iter().map(|w| w.word.as_str()))
            .collect();
        assert_eq!(
            words,
            ["hello", "world.", "the", "seam", "next", "word.", "later"]
        );
        assert_eq!(merged.segments[1].text, "the seam");
        assert_eq!(merged.segments[1].end, 100.3);
        assert_eq!(merged.segments[2].text, "next word.");
        assert!((merged.segments[2].start - 100.5).abs() < 1e-9);
        assert!((merged.segments[3].start - 149.0).abs() < 1e-9);
        assert_eq!(merged.duration, 190.0);
        let mut times: Vec<f64> = merged.segments.iter().map(|s| s.start).collect();
        times.dedup();
        assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");
    }

    #[test]
    fn without_word_timings_a_segment_goes_to_the_chunk_that_owns_its_middle() {
        let plan = two_chunk_plan();
        let bare = |start: f64, end: f64, text: &str| Segment {
            words: Vec::new(),
            end,
            text: text.into(),
            ..segment(start, &[])
        };
        let first = transcript("en", vec![bare(98.0, 99.8, "a"), bare(99.9, 100.8, "b")]);
        let second = transcript("de", vec![bare(0.9, 1.8, "b"), bare(2.0, 80.0, "c")]);
        let merged = merge(&plan, vec![first, second]);
        let texts: Vec<&str> = merged.segments.iter().map(|s| s.text.as_str()).collect();
        assert_eq!(texts, ["a", "b", "c"]);
        assert_eq!(merged.language, "de", "the language spoken longest");
    }
}
