//! Streaming audio decoding: any audio or video file in, 16 kHz mono `f32` samples out.
//!
//! [`AudioSource::open`] checks the path, sniffs the content and picks a backend:
//!
//! * **symphonia** (pure Rust) for WAV, MP3, M4A/MP4 with AAC, FLAC and Ogg/Vorbis. The container
//!   is recognised by its content; the file extension is only a hint. Channels are averaged to
//!   mono and the signal is resampled to [`SAMPLE_RATE`] with rubato (an FFT resampler when the
//!   rate ratio is small, a windowed-sinc resampler otherwise; nothing is done at 16 kHz),
//!   chunk by chunk as packets are decoded.
//! * **ffmpeg** (a child process) for everything else that looks like media: Opus/WebM, MKV, MP4
//!   with codecs symphonia lacks, or files symphonia's probe rejects. The command is
//!   `ffmpeg -nostdin -hide_banner -loglevel error -i file:PATH -vn -map 0:a:0 -f f32le -ac 1
//!   -ar 16000 pipe:1`; stdout is streamed, stderr is kept (bounded) for the error message, and
//!   the child is killed and reaped when the [`AudioSource`] is dropped. The binary is `ffmpeg`
//!   from `PATH`, or the path in the `YTCAPTION_FFMPEG` environment variable.
//!
//! Memory stays bounded whatever the file length: an [`AudioSource`] holds at most one decoded
//! packet, one resampler chunk and the samples the caller asked for ([`decode_all`] is the
//! deliberate exception). Opening decodes the first packets, so empty, truncated and undecodable
//! files fail in `open`, before any expensive work starts.
//!
//! # Errors and damaged files
//!
//! Every failure is an [`AudioError`] whose `Display` is one specific, lowercase line meant for
//! users. Nothing derived from the input panics here; symphonia itself is called under
//! `catch_unwind`, so a panic inside a demuxer or decoder on hostile data becomes
//! [`AudioError::Corrupt`].
//!
//! Truncation policy: a file cut short mid-stream (an interrupted download, very common for MP3s
//! on the web) ends where the demuxer hits end-of-file, and the audio decoded up to that point is
//! returned (a `tracing` warning is logged when the container declared a longer duration). But if
//! less than 0.1 s of audio decodes before the stream ends and the container did not declare it
//! that short, the file is reported as [`AudioError::Corrupt`]; a valid container whose audio
//! track is empty is [`AudioError::NoSamples`]. A packet that fails to decode is skipped (one bad
//! frame is an audible glitch, not a reason to lose an hour of transcript), but more than
//! 16 failures in a row end decoding with [`AudioError::Corrupt`], which says how many seconds
//! had been decoded.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::thread::JoinHandle;

use rubato::{
    FftFixedIn, SincFixedIn, SincInterpolationParameters, SincInterpolationType, VecResampler,
    WindowFunction,
};
use symphonia::core::audio::{AudioBuffer, AudioBufferRef};
use symphonia::core::codecs::{Decoder, DecoderOptions, CODEC_TYPE_NULL};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::{FormatOptions, FormatReader, Track};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

/// The sample rate of everything an [`AudioSource`] yields.
pub const SAMPLE_RATE: u32 = 16_000;
/// Lowest input sample rate accepted; anything below is a broken header.
pub const MIN_SAMPLE_RATE: u32 = 1_000;
/// Highest input sample rate accepted; anything above is a broken header.
pub const MAX_SAMPLE_RATE: u32 = 768_000;
/// Environment variable naming the ffmpeg binary to use instead of `ffmpeg` from `PATH`.
pub const FFMPEG_ENV: &str = "YTCAPTION_FFMPEG";

/// Less audio than this (0.1 s at 16 kHz), when the container promised more, is a damaged file.
const MIN_DECODED_SAMPLES: u64 = SAMPLE_RATE as u64 / 10;
/// Consecutive undecodable packets tolerated before giving up.
const MAX_CONSECUTIVE_ERRORS: u32 = 16;
/// How much of ffmpeg's stderr is kept for error messages.
const STDERR_CAP: usize = 16 * 1024;
/// How many bytes of the file are read to sniff its type.
const SNIFF_LEN: usize = 4096;
/// Bytes read from ffmpeg's stdout at a time.
const PIPE_CHUNK: usize = 64 * 1024;

/// Why a file could not be decoded. `Display` is one lowercase line meant for users.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    /// The path does not exist.
    #[error("file not found: {}", .0.display())]
    NotFound(PathBuf),
    /// The path is a directory.
    #[error("is a directory, not an audio or video file: {}", .0.display())]
    IsDirectory(PathBuf),
    /// The file has 0 bytes.
    #[error("file is empty (0 bytes): {}", .0.display())]
    EmptyFile(PathBuf),
    /// The content is not a recognisable audio or video container (text, an image, ...).
    #[error("not an audio or video file: {}", .0.display())]
    NotMedia(PathBuf),
    /// A media container without any audio stream (a silent video, for instance).
    #[error("no audio track in {}", .0.display())]
    NoAudioTrack(PathBuf),
    /// The audio stream uses a codec neither backend can decode.
    #[error("unsupported audio codec in {}: {codec}", path.display())]
    UnsupportedCodec {
        /// The file.
        path: PathBuf,
        /// The codec, as far as it is known.
        codec: String,
    },
    /// Damaged data: decoding stopped early, or too little decoded before the file ended.
    #[error("corrupt or truncated media {}: decoding failed after {after_secs:.1} s: {detail}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Seconds of audio decoded before the failure.
        after_secs: f64,
        /// What went wrong.
        detail: String,
    },
    /// A valid container whose audio track holds no samples.
    #[error("no audio samples in {} (the audio track is empty)", .0.display())]
    NoSamples(PathBuf),
    /// The header claims a sample rate no real recording has.
    #[error("absurd sample rate of {rate} Hz in {} (expected {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz); the header is corrupt", path.display())]
    BadSampleRate {
        /// The file.
        path: PathBuf,
        /// The rate from the header.
        rate: u64,
    },
    /// The file needs ffmpeg, which could not be started.
    #[error("ffmpeg is needed to decode {} ({why}) but could not be run as `{}`: install it (`apt-get install ffmpeg`) or set {FFMPEG_ENV} to its path", path.display(), ffmpeg.display())]
    NeedsFfmpeg {
        /// The file.
        path: PathBuf,
        /// The ffmpeg binary that was tried.
        ffmpeg: PathBuf,
        /// Why the built-in decoder could not handle the file.
        why: String,
    },
    /// ffmpeg ran but failed.
    #[error("ffmpeg could not decode {}: {message}", path.display())]
    FfmpegFailed {
        /// The file.
        path: PathBuf,
        /// ffmpeg's first stderr line, or its exit status.
        message: String,
    },
    /// The resampler rejected its configuration or input (a bug, not a property of the file).
    #[error("resampling {} to 16 kHz failed: {detail}", path.display())]
    Resample {
        /// The file.
        path: PathBuf,
        /// The resampler's message.
        detail: String,
    },
    /// Reading the file (or ffmpeg's output) failed.
    #[error("i/o error reading {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl AudioError {
    /// A stable reason code for job failures (`media.*`).
    pub fn code(&self) -> &'static str {
        match self {
            AudioError::NotFound(_) => "media.not_found",
            AudioError::IsDirectory(_) | AudioError::NotMedia(_) => "media.not_media",
            AudioError::EmptyFile(_) => "media.empty",
            AudioError::NoAudioTrack(_) => "media.no_audio_track",
            AudioError::UnsupportedCodec { .. } => "media.unsupported_codec",
            AudioError::Corrupt { .. } => "media.corrupt",
            AudioError::NoSamples(_) => "media.no_samples",
            AudioError::BadSampleRate { .. } => "media.bad_sample_rate",
            AudioError::NeedsFfmpeg { .. } => "media.needs_ffmpeg",
            AudioError::FfmpegFailed { .. } => "media.ffmpeg_failed",
            AudioError::Resample { .. } => "media.resample",
            AudioError::Io { .. } => "media.io",
        }
    }

    /// True for problems of this machine (a missing ffmpeg, an i/o error) rather than of the file.
    pub fn retryable(&self) -> bool {
        matches!(self, AudioError::NeedsFfmpeg { .. } | AudioError::Io { .. })
    }
}

/// A forward-only stream of 16 kHz mono f32 samples decoded from a file; memory stays bounded whatever the file length.
#[derive(Debug)]
pub struct AudioSource {
    backend: Backend,
    duration: Option<f64>,
    /// Set once `read` has returned an error: later reads return 0.
    failed: bool,
    /// Samples still to hand out when the source is [`clipped`](AudioSource::clip).
    remaining: Option<usize>,
}

#[derive(Debug)]
enum Backend {
    Symphonia(Box<SymphoniaStream>),
    Ffmpeg(Box<FfmpegStream>),
}

impl AudioSource {
    /// Opens `path`, sniffs its content, picks a backend and decodes the first packets.
    pub fn open(path: &Path) -> Result<AudioSource, AudioError> {
        open_with_ffmpeg(path, &ffmpeg_from_env())
    }

    /// Duration in seconds if the container says (for progress bars); None if unknown.
    pub fn duration_hint(&self) -> Option<f64> {
        self.duration
    }

    /// Appends up to `max` samples to `out`; returns how many were appended; 0 means end of stream.
    ///
    /// `max == 0` appends nothing and returns 0 without reading. After an error, later calls
    /// return 0.
    pub fn read(&mut self, out: &mut Vec<f32>, max: usize) -> Result<usize, AudioError> {
        let max = self.remaining.map_or(max, |remaining| remaining.min(max));
        if max == 0 || self.failed {
            return Ok(0);
        }
        let result = match &mut self.backend {
            Backend::Symphonia(s) => s.read(out, max),
            Backend::Ffmpeg(f) => f.read(out, max),
        };
        match &result {
            Ok(n) => {
                if let Some(remaining) = &mut self.remaining {
                    *remaining -= n;
                }
            }
            Err(_) => self.failed = true,
        }
        result
    }

    /// Only the samples from `start` to `end` (16 kHz sample indices): what comes before is
    /// decoded and dropped, in bounded pieces. A clip past the end of the stream is empty.
    pub fn clip(mut self, start: usize, end: usize) -> Result<AudioSource, AudioError> {
        let mut scratch = Vec::with_capacity(1 << 16);
        let mut skipped = 0;
        while skipped < start {
            scratch.clear();
            let n = self.read(&mut scratch, (start - skipped).min(1 << 16))?;
            if n == 0 {
                break;
            }
            skipped += n;
        }
        let len = end.saturating_sub(start);
        self.remaining = Some(len);
        self.duration = self.duration.map(|total| {
            (total - start as f64 / f64::from(SAMPLE_RATE))
                .clamp(0.0, len as f64 / f64::from(SAMPLE_RATE))
        });
        Ok(self)
    }

    /// Which decoder is used: "symphonia" or "ffmpeg".
    pub fn backend(&self) -> &'static str {
        match self.backend {
            Backend::Symphonia(_) => "symphonia",
            Backend::Ffmpeg(_) => "ffmpeg",
        }
    }

    /// Samples decoded but not yet handed out (for tests of the memory bound).
    #[cfg(test)]
    fn buffered(&self) -> usize {
        match &self.backend {
            Backend::Symphonia(s) => s.pending.len() + s.resampler.in_buf.len(),
            Backend::Ffmpeg(f) => f.carry.len() / 4,
        }
    }
}

/// Convenience for tests and short clips: decode everything.
pub fn decode_all(path: &Path) -> Result<Vec<f32>, AudioError> {
    let mut source = AudioSource::open(path)?;
    let mut out = Vec::with_capacity(
        source
            .duration_hint()
            .map(|d| (d.clamp(0.0, 4.0 * 3600.0) * f64::from(SAMPLE_RATE)) as usize + 1024)
            .unwrap_or(0),
    );
    while source.read(&mut out, 1 << 16)? > 0 {}
    Ok(out)
}

/// The ffmpeg binary: `$YTCAPTION_FFMPEG` if set and non-empty, else `ffmpeg` from `PATH`.
fn ffmpeg_from_env() -> PathBuf {
    std::env::var_os(FFMPEG_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("ffmpeg"))
}

/// [`AudioSource::open`] with an explicit ffmpeg binary (the environment is not consulted).
pub(crate) fn open_with_ffmpeg(path: &Path, ffmpeg: &Path) -> Result<AudioSource, AudioError> {
    let io_err = |source: io::Error| AudioError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(AudioError::NotFound(path.to_path_buf()))
        }
        Err(e) => return Err(io_err(e)),
    };
    if meta.is_dir() {
        return Err(AudioError::IsDirectory(path.to_path_buf()));
    }
    if meta.len() == 0 {
        return Err(AudioError::EmptyFile(path.to_path_buf()));
    }
    let mut file = File::open(path).map_err(io_err)?;
    let head = read_head(&mut file).map_err(io_err)?;
    if head.is_empty() {
        return Err(AudioError::EmptyFile(path.to_path_buf()));
    }
    if let Some(rate) = wav_sample_rate(&head) {
        check_rate(path, u64::from(rate))?;
    }
    file.seek(SeekFrom::Start(0)).map_err(io_err)?;

    let fallback = match SymphoniaStream::open(path, file, &head)? {
        Opened::Ready(stream, duration) => {
            return Ok(AudioSource {
                backend: Backend::Symphonia(stream),
                duration,
                failed: false,
                remaining: None,
            })
        }
        Opened::Fallback(f) => f,
    };
    tracing::debug!(path = %path.display(), why = %fallback.why, "falling back to ffmpeg");

    let sniffed = sniff(&head);
    if sniffed == Sniff::Text {
        return Err(AudioError::NotMedia(path.to_path_buf()));
    }
    let worth_trying = sniffed == Sniff::Media || has_media_extension(path);
    match FfmpegStream::open(path, ffmpeg) {
        Ok(stream) => {
            let duration = ffprobe_duration(ffmpeg, path);
            Ok(AudioSource {
                backend: Backend::Ffmpeg(stream),
                duration,
                failed: false,
                remaining: None,
            })
        }
        Err(FfmpegOpenError::NotRunnable) => Err(match fallback.if_no_ffmpeg {
            Some(e) => e,
            None if worth_trying => AudioError::NeedsFfmpeg {
                path: path.to_path_buf(),
                ffmpeg: ffmpeg.to_path_buf(),
                why: fallback.why,
            },
            None => AudioError::NotMedia(path.to_path_buf()),
        }),
        Err(FfmpegOpenError::Failed(e)) => Err(e),
    }
}

fn check_rate(path: &Path, rate: u64) -> Result<u32, AudioError> {
    if rate < u64::from(MIN_SAMPLE_RATE) || rate > u64::from(MAX_SAMPLE_RATE) {
        return Err(AudioError::BadSampleRate {
            path: path.to_path_buf(),
            rate,
        });
    }
    u32::try_from(rate).map_err(|_| AudioError::BadSampleRate {
        path: path.to_path_buf(),
        rate,
    })
}

fn read_head(file: &mut File) -> io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(SNIFF_LEN);
    file.by_ref()
        .take(SNIFF_LEN as u64)
        .read_to_end(&mut head)?;
    Ok(head)
}

fn u16_le(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_le(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The sample rate from a RIFF/WAVE `fmt ` chunk, if it lies within `head`. Checked before
/// symphonia sees the file, which would panic on a rate of 0.
fn wav_sample_rate(head: &[u8]) -> Option<u32> {
    if !(head.starts_with(b"RIFF") || head.starts_with(b"RF64")) || head.get(8..12)? != b"WAVE" {
        return None;
    }
    let mut at = 12usize;
    while at + 8 <= head.len() {
        let id = head.get(at..at + 4)?;
        let len = u32_le(head, at + 4)? as usize;
        if id == b"fmt " {
            let _format_tag = u16_le(head, at + 8)?;
            return u32_le(head, at + 12);
        }
        at = at.checked_add(8)?.checked_add(len)?.checked_add(len & 1)?;
    }
    None
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Sniff {
    /// A known audio/video container signature.
    Media,
    /// Printable text (a subtitle, HTML page, JSON, ...).
    Text,
    /// Binary data of unknown type.
    Unknown,
}

/// Decides whether the first bytes of a file look like media before handing it to ffmpeg.
fn sniff(head: &[u8]) -> Sniff {
    let at = |off: usize, magic: &[u8]| head.get(off..off + magic.len()) == Some(magic);
    let media = at(0, b"\x1a\x45\xdf\xa3") // Matroska / WebM
        || at(4, b"ftyp") || at(4, b"moov") || at(4, b"mdat") || at(4, b"free") || at(4, b"wide")
        || at(0, b"OggS") || at(0, b"fLaC") || at(0, b"ID3") || at(0, b"RIFF") || at(0, b"RF64")
        || at(0, b"BW64") || at(0, b"FORM") || at(0, b"caff") || at(0, b".snd")
        || at(0, b"MAC ") || at(0, b"wvpk") || at(0, b"TTA1") || at(0, b"#!AMR") || at(0, b"FLV")
        || at(0, b"\x30\x26\xb2\x75\x8e\x66\xcf\x11") // ASF: WMA / WMV
        || at(0, b"\x00\x00\x01\xba") || at(0, b"\x00\x00\x01\xb3") // MPEG program / video stream
        || at(0, b"\x0b\x77") // AC-3
        || at(0, b"\x7f\xfe\x80\x01") // DTS
        || at(0, b".RMF") || at(0, b"MThd")
        || (head.len() > 376 && head[0] == 0x47 && head[188] == 0x47 && head[376] == 0x47) // MPEG-TS
        || (head.len() >= 2 && head[0] == 0xff && head[1] & 0xe0 == 0xe0); // MPEG audio / ADTS sync
    if media {
        return Sniff::Media;
    }
    let text = match std::str::from_utf8(head) {
        Ok(s) => Some(s),
        // A multi-byte character cut at the end of the sniffed block is still text.
        Err(e) if e.error_len().is_none() => std::str::from_utf8(&head[..e.valid_up_to()]).ok(),
        Err(_) => None,
    };
    match text {
        Some(s)
            if s.chars()
                .all(|c| !c.is_control() || matches!(c, '\n' | '\r' | '\t' | '\x0c')) =>
        {
            Sniff::Text
        }
        _ => Sniff::Unknown,
    }
}

/// Signatures of formats symphonia decodes completely (MP3, WAV, FLAC): if its probe runs out of
/// file on one of these, the file is truncated and ffmpeg cannot do better.
fn symphonia_native(head: &[u8]) -> bool {
    head.starts_with(b"ID3")
        || head.starts_with(b"fLaC")
        || (head.starts_with(b"RIFF") && head.get(8..12) == Some(b"WAVE"))
        || (head.len() >= 2 && head[0] == 0xff && head[1] & 0xe0 == 0xe0)
}

fn has_media_extension(path: &Path) -> bool {
    const EXTS: &[&str] = &[
        "3gp", "aac", "ac3", "aif", "aiff", "amr", "ape", "asf", "avi", "caf", "dts", "f4a", "f4v",
        "flac", "flv", "m2ts", "m4a", "m4b", "m4v", "mka", "mkv", "mov", "mp2", "mp3", "mp4",
        "mpeg", "mpg", "mts", "oga", "ogg", "ogv", "opus", "ra", "rm", "spx", "ts", "tta", "wav",
        "weba", "webm", "wma", "wmv", "wv",
    ];
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| EXTS.iter().any(|x| x.eq_ignore_ascii_case(e)))
        .unwrap_or(false)
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    let what = p
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string());
    format!("the decoder crashed on malformed data ({what})")
}

// ---------------------------------------------------------------------------------------------
// symphonia backend
// ---------------------------------------------------------------------------------------------

/// Why symphonia cannot handle a file, and what to report if ffmpeg is not there to try instead.
struct Fallback {
    why: String,
    if_no_ffmpeg: Option<AudioError>,
}

enum Opened {
    Ready(Box<SymphoniaStream>, Option<f64>),
    Fallback(Fallback),
}

struct SymphoniaStream {
    path: PathBuf,
    format: Box<dyn FormatReader>,
    decoder: Box<dyn Decoder>,
    track_id: u32,
    /// Frames the container declares for the track, if it does.
    declared_frames: Option<u64>,
    /// Conversion target for decoded packets (planar f32).
    conv: Option<AudioBuffer<f32>>,
    resampler: Resample,
    /// 16 kHz samples ready to hand out.
    pending: VecDeque<f32>,
    /// Input frames decoded, at the input rate, over the whole stream.
    frames_in: u64,
    /// Seconds decoded, over the whole stream (survives resampler rebuilds).
    secs_done: f64,
    consecutive_errors: u32,
    total_errors: u64,
    last_error: Option<String>,
    input_done: bool,
}

impl std::fmt::Debug for SymphoniaStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SymphoniaStream")
            .field("path", &self.path)
            .field("track_id", &self.track_id)
            .field("in_rate", &self.resampler.in_rate)
            .field("frames_in", &self.frames_in)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

fn pick_track(tracks: &[Track]) -> Option<&Track> {
    tracks
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
}

fn codec_name(codec: symphonia::core::codecs::CodecType) -> String {
    symphonia::default::get_codecs()
        .get_codec(codec)
        .map(|d| d.short_name.to_string())
        .unwrap_or_else(|| format!("{codec}"))
}

impl SymphoniaStream {
    fn open(path: &Path, file: File, head: &[u8]) -> Result<Opened, AudioError> {
        let corrupt = |detail: String| AudioError::Corrupt {
            path: path.to_path_buf(),
            after_secs: 0.0,
            detail,
        };
        let mut hint = Hint::new();
        if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
            hint.with_extension(ext);
        }
        let mss = MediaSourceStream::new(Box::new(file), Default::default());
        let format_opts = FormatOptions {
            enable_gapless: true,
            ..Default::default()
        };
        let probed = catch_unwind(AssertUnwindSafe(|| {
            symphonia::default::get_probe().format(
                &hint,
                mss,
                &format_opts,
                &MetadataOptions::default(),
            )
        }));
        let format = match probed {
            Ok(Ok(p)) => p.format,
            Ok(Err(SymError::IoError(e))) if e.kind() == io::ErrorKind::UnexpectedEof => {
                // The probe ran out of file: either headers cut short, or no format it knows.
                if symphonia_native(head) {
                    return Err(corrupt(
                        "the file ends before the first complete audio frame".into(),
                    ));
                }
                return Ok(Opened::Fallback(Fallback {
                    why: "the container is not supported by the built-in decoder".into(),
                    if_no_ffmpeg: None,
                }));
            }
            Ok(Err(SymError::IoError(e))) => {
                return Err(AudioError::Io {
                    path: path.to_path_buf(),
                    source: e,
                })
            }
            Ok(Err(e @ (SymError::DecodeError(_) | SymError::LimitError(_)))) => {
                return Ok(Opened::Fallback(Fallback {
                    why: format!("the built-in demuxer rejected it: {e}"),
                    if_no_ffmpeg: Some(corrupt(e.to_string())),
                }))
            }
            Ok(Err(e)) => {
                return Ok(Opened::Fallback(Fallback {
                    why: format!("the container is not supported by the built-in decoder ({e})"),
                    if_no_ffmpeg: None,
                }))
            }
            Err(p) => {
                let msg = panic_message(p.as_ref());
                return Ok(Opened::Fallback(Fallback {
                    why: msg.clone(),
                    if_no_ffmpeg: Some(corrupt(msg)),
                }));
            }
        };

        let Some(track) = pick_track(format.tracks()) else {
            let no_tracks = format.tracks().is_empty();
            return Ok(Opened::Fallback(Fallback {
                why: "no audio track the built-in decoder supports".into(),
                if_no_ffmpeg: no_tracks.then(|| AudioError::NoAudioTrack(path.to_path_buf())),
            }));
        };
        let params = track.codec_params.clone();
        let track_id = track.id;
        if let Some(rate) = params.sample_rate {
            check_rate(path, u64::from(rate))?;
        }
        let made = catch_unwind(AssertUnwindSafe(|| {
            symphonia::default::get_codecs().make(&params, &DecoderOptions::default())
        }));
        let decoder = match made {
            Ok(Ok(d)) => d,
            Ok(Err(SymError::Unsupported(what))) => {
                return Ok(Opened::Fallback(Fallback {
                    why: format!(
                        "codec {} is not built in ({what})",
                        codec_name(params.codec)
                    ),
                    if_no_ffmpeg: None,
                }))
            }
            Ok(Err(e)) => {
                return Ok(Opened::Fallback(Fallback {
                    why: format!(
                        "the built-in {} decoder failed: {e}",
                        codec_name(params.codec)
                    ),
                    if_no_ffmpeg: Some(corrupt(e.to_string())),
                }))
            }
            Err(p) => {
                let msg = panic_message(p.as_ref());
                return Ok(Opened::Fallback(Fallback {
                    why: msg.clone(),
                    if_no_ffmpeg: Some(corrupt(msg)),
                }));
            }
        };

        let duration = match (params.n_frames, params.sample_rate, params.time_base) {
            (Some(n), Some(rate), _) if rate > 0 => Some(n as f64 / f64::from(rate)),
            (Some(n), _, Some(tb)) => {
                let t = tb.calc_time(n);
                Some(t.seconds as f64 + t.frac)
            }
            _ => None,
        };
        let in_rate = params.sample_rate.unwrap_or(SAMPLE_RATE);
        let mut stream = Box::new(SymphoniaStream {
            path: path.to_path_buf(),
            format,
            decoder,
            track_id,
            declared_frames: params.n_frames,
            conv: None,
            resampler: Resample::new(path, in_rate)?,
            pending: VecDeque::new(),
            frames_in: 0,
            secs_done: 0.0,
            consecutive_errors: 0,
            total_errors: 0,
            last_error: None,
            input_done: false,
        });
        // Decode until the first samples come out, so broken files fail here.
        stream.fill(1)?;
        Ok(Opened::Ready(stream, duration))
    }

    fn read(&mut self, out: &mut Vec<f32>, max: usize) -> Result<usize, AudioError> {
        self.fill(max)?;
        let n = max.min(self.pending.len());
        out.extend(self.pending.drain(..n));
        Ok(n)
    }

    /// Decodes until `want` samples are pending or the stream is finished.
    fn fill(&mut self, want: usize) -> Result<(), AudioError> {
        while self.pending.len() < want && !self.input_done {
            if !self.decode_packet()? {
                self.input_done = true;
                self.resampler.finish(&mut self.pending)?;
                self.check_end()?;
            }
        }
        Ok(())
    }

    fn secs(&self) -> f64 {
        self.secs_done + self.resampler.secs_in()
    }

    fn corrupt(&self, detail: impl Into<String>) -> AudioError {
        AudioError::Corrupt {
            path: self.path.clone(),
            after_secs: self.secs(),
            detail: detail.into(),
        }
    }

    /// Counts a bad packet; errors out when too many came in a row.
    fn bad_packet(&mut self, what: String) -> Result<(), AudioError> {
        self.consecutive_errors += 1;
        self.total_errors += 1;
        tracing::debug!(path = %self.path.display(), error = %what, "skipping undecodable packet");
        if self.consecutive_errors > MAX_CONSECUTIVE_ERRORS {
            return Err(self.corrupt(format!(
                "{} bad packets in a row, last: {what}",
                self.consecutive_errors
            )));
        }
        self.last_error = Some(what);
        Ok(())
    }

    /// Rebuilds the decoder after the demuxer asked for a reset (a chained stream).
    fn reset_decoder(&mut self) -> Result<(), AudioError> {
        let Some(track) = pick_track(self.format.tracks()) else {
            return Err(self.corrupt("the stream changed and has no decodable audio track"));
        };
        let params = track.codec_params.clone();
        self.track_id = track.id;
        let made = catch_unwind(AssertUnwindSafe(|| {
            symphonia::default::get_codecs().make(&params, &DecoderOptions::default())
        }));
        match made {
            Ok(Ok(d)) => {
                self.decoder = d;
                Ok(())
            }
            Ok(Err(e)) => Err(self.corrupt(format!("the stream changed codec: {e}"))),
            Err(p) => Err(self.corrupt(panic_message(p.as_ref()))),
        }
    }

    /// Decodes one packet of our track into the resampler. Returns false at end of stream.
    fn decode_packet(&mut self) -> Result<bool, AudioError> {
        loop {
            let next = catch_unwind(AssertUnwindSafe(|| self.format.next_packet()));
            let packet = match next {
                Ok(Ok(p)) => p,
                Ok(Err(SymError::IoError(e))) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Ok(false)
                }
                Ok(Err(SymError::ResetRequired)) => {
                    self.reset_decoder()?;
                    continue;
                }
                Ok(Err(SymError::DecodeError(m))) => {
                    self.bad_packet(format!("malformed container data: {m}"))?;
                    continue;
                }
                Ok(Err(SymError::IoError(e))) => {
                    return Err(AudioError::Io {
                        path: self.path.clone(),
                        source: e,
                    })
                }
                Ok(Err(e)) => return Err(self.corrupt(e.to_string())),
                Err(p) => return Err(self.corrupt(panic_message(p.as_ref()))),
            };
            if packet.track_id() != self.track_id {
                continue;
            }
            let conv = &mut self.conv;
            let decoder = &mut self.decoder;
            let decoded = catch_unwind(AssertUnwindSafe(|| {
                decoder.decode(&packet).map(|buf| downmix(&buf, conv))
            }));
            match decoded {
                Ok(Ok((rate, mono))) => {
                    self.consecutive_errors = 0;
                    if mono.is_empty() {
                        continue;
                    }
                    let rate = check_rate(&self.path, u64::from(rate))?;
                    if rate != self.resampler.in_rate {
                        // Mid-stream rate change (chained streams): flush and start over.
                        self.secs_done += self.resampler.secs_in();
                        self.resampler.finish(&mut self.pending)?;
                        self.resampler = Resample::new(&self.path, rate)?;
                    }
                    self.frames_in += mono.len() as u64;
                    self.resampler.push(&mono, &mut self.pending)?;
                    return Ok(true);
                }
                Ok(Err(SymError::DecodeError(m))) => self.bad_packet(m.to_string())?,
                Ok(Err(SymError::IoError(e))) => self.bad_packet(e.to_string())?,
                Ok(Err(SymError::ResetRequired)) => self.reset_decoder()?,
                Ok(Err(SymError::Unsupported(what))) => {
                    return Err(AudioError::UnsupportedCodec {
                        path: self.path.clone(),
                        codec: format!("{what} (after {:.1} s)", self.secs()),
                    })
                }
                Ok(Err(e)) => return Err(self.corrupt(e.to_string())),
                Err(p) => return Err(self.corrupt(panic_message(p.as_ref()))),
            }
        }
    }

    /// Applies the truncation policy once the demuxer reached end of file.
    fn check_end(&self) -> Result<(), AudioError> {
        let secs = self.secs();
        let declared = self.declared_frames;
        if self.frames_in == 0 {
            if let Some(last) = &self.last_error {
                return Err(self.corrupt(format!("no packet decoded ({last})")));
            }
            if declared.unwrap_or(0) == 0 {
                return Err(AudioError::NoSamples(self.path.clone()));
            }
            return Err(self.corrupt("the file ends before the first complete audio frame"));
        }
        let short_of_declared = declared.is_some_and(|d| self.frames_in < d);
        let out_samples = (secs * f64::from(SAMPLE_RATE)) as u64;
        if out_samples < MIN_DECODED_SAMPLES && (declared.is_none() || short_of_declared) {
            return Err(self.corrupt(format!("the stream ends after only {secs:.3} s of audio")));
        }
        if let Some(d) = declared {
            if (self.frames_in as f64) < d as f64 * 0.95 {
                tracing::warn!(
                    path = %self.path.display(),
                    decoded_secs = secs,
                    "file is truncated: decoded {} of {} declared frames",
                    self.frames_in,
                    d
                );
            }
        }
        Ok(())
    }
}

/// Converts a decoded packet to planar f32 and averages its channels. Returns (rate, mono).
fn downmix(buf: &AudioBufferRef<'_>, conv: &mut Option<AudioBuffer<f32>>) -> (u32, Vec<f32>) {
    let spec = *buf.spec();
    let channels = spec.channels.count();
    let frames = buf.frames();
    if channels == 0 || frames == 0 {
        return (spec.rate, Vec::new());
    }
    let reuse = conv
        .as_ref()
        .is_some_and(|c| c.spec() == &spec && c.capacity() >= buf.capacity());
    if !reuse {
        *conv = Some(AudioBuffer::new(buf.capacity() as u64, spec));
    }
    let mut mono = vec![0.0f32; frames];
    if let Some(c) = conv.as_mut() {
        buf.convert(c);
        for plane in c.planes().planes().iter() {
            for (m, s) in mono.iter_mut().zip(plane.iter()) {
                *m += *s;
            }
        }
    }
    let scale = 1.0 / channels as f32;
    for m in &mut mono {
        *m = if m.is_finite() { *m * scale } else { 0.0 };
    }
    (spec.rate, mono)
}

// ---------------------------------------------------------------------------------------------
// Resampling
// ---------------------------------------------------------------------------------------------

/// Streaming mono resampler to 16 kHz; a pass-through when the input is already 16 kHz.
struct Resample {
    path: PathBuf,
    in_rate: u32,
    inner: Option<Box<dyn VecResampler<f32>>>,
    in_buf: Vec<f32>,
    chunk_in: Vec<Vec<f32>>,
    chunk_out: Vec<Vec<f32>>,
    frames_in: u64,
    frames_out: u64,
    /// Leading output frames still to drop (the resampler's delay).
    delay_left: usize,
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl Resample {
    fn new(path: &Path, in_rate: u32) -> Result<Resample, AudioError> {
        let err = |e: rubato::ResamplerConstructionError| AudioError::Resample {
            path: path.to_path_buf(),
            detail: e.to_string(),
        };
        let inner: Option<Box<dyn VecResampler<f32>>> = if in_rate == SAMPLE_RATE {
            None
        } else if in_rate / gcd(in_rate, SAMPLE_RATE) <= 2048 {
            // Exact rational ratio with a small FFT: fast and high quality.
            Some(Box::new(
                FftFixedIn::<f32>::new(in_rate as usize, SAMPLE_RATE as usize, 1024, 2, 1)
                    .map_err(err)?,
            ))
        } else {
            // Odd rates (44101 Hz, ...) would need huge FFTs: use a windowed sinc.
            let params = SincInterpolationParameters {
                sinc_len: 128,
                f_cutoff: rubato::calculate_cutoff(128, WindowFunction::BlackmanHarris2),
                interpolation: SincInterpolationType::Cubic,
                oversampling_factor: 256,
                window: WindowFunction::BlackmanHarris2,
            };
            Some(Box::new(
                SincFixedIn::<f32>::new(
                    f64::from(SAMPLE_RATE) / f64::from(in_rate),
                    1.0,
                    params,
                    1024,
                    1,
                )
                .map_err(err)?,
            ))
        };
        let (chunk_in, chunk_out, delay_left) = match &inner {
            Some(r) => (
                vec![Vec::new()],
                r.output_buffer_allocate(true),
                r.output_delay(),
            ),
            None => (Vec::new(), Vec::new(), 0),
        };
        Ok(Resample {
            path: path.to_path_buf(),
            in_rate,
            inner,
            in_buf: Vec::new(),
            chunk_in,
            chunk_out,
            frames_in: 0,
            frames_out: 0,
            delay_left,
        })
    }

    fn secs_in(&self) -> f64 {
        self.frames_in as f64 / f64::from(self.in_rate)
    }

    fn err(&self, e: rubato::ResampleError) -> AudioError {
        AudioError::Resample {
            path: self.path.clone(),
            detail: e.to_string(),
        }
    }

    fn emit(&mut self, produced: usize, out: &mut VecDeque<f32>) {
        let Some(samples) = self.chunk_out.first().and_then(|c| c.get(..produced)) else {
            return;
        };
        let skip = self.delay_left.min(samples.len());
        self.delay_left -= skip;
        let samples = &samples[skip..];
        self.frames_out += samples.len() as u64;
        out.extend(samples.iter().copied());
    }

    fn push(&mut self, mono: &[f32], out: &mut VecDeque<f32>) -> Result<(), AudioError> {
        self.frames_in += mono.len() as u64;
        let Some(_) = &self.inner else {
            self.frames_out += mono.len() as u64;
            out.extend(mono.iter().copied());
            return Ok(());
        };
        self.in_buf.extend_from_slice(mono);
        loop {
            let Some(inner) = self.inner.as_mut() else {
                return Ok(());
            };
            let need = inner.input_frames_next();
            if self.in_buf.len() < need || need == 0 {
                return Ok(());
            }
            if let Some(c) = self.chunk_in.first_mut() {
                c.clear();
                c.extend(self.in_buf.drain(..need));
            }
            let result = inner.process_into_buffer(&self.chunk_in, &mut self.chunk_out, None);
            let (_, produced) = result.map_err(|e| self.err(e))?;
            self.emit(produced, out);
        }
    }

    /// Flushes the remaining input and the filter tail; trims to the exact expected length.
    fn finish(&mut self, out: &mut VecDeque<f32>) -> Result<(), AudioError> {
        if self.inner.is_none() {
            return Ok(());
        }
        let expected = (self.frames_in * u64::from(SAMPLE_RATE)).div_ceil(u64::from(self.in_rate));
        if !self.in_buf.is_empty() {
            if let Some(c) = self.chunk_in.first_mut() {
                c.clear();
                c.append(&mut self.in_buf);
            }
            if let Some(inner) = self.inner.as_mut() {
                let result = inner.process_partial_into_buffer(
                    Some(&self.chunk_in),
                    &mut self.chunk_out,
                    None,
                );
                let (_, produced) = result.map_err(|e| self.err(e))?;
                self.emit(produced, out);
            }
        }
        // Zero-filled calls push the filter's delay out; bounded in case of a surprise.
        let mut rounds = 0;
        while self.frames_out < expected && rounds < 64 {
            rounds += 1;
            let Some(inner) = self.inner.as_mut() else {
                break;
            };
            let result = inner.process_partial_into_buffer(None, &mut self.chunk_out, None);
            let (_, produced) = result.map_err(|e| self.err(e))?;
            self.emit(produced, out);
        }
        if self.frames_out > expected {
            let excess = usize::try_from(self.frames_out - expected).unwrap_or(usize::MAX);
            out.truncate(out.len().saturating_sub(excess));
            self.frames_out = expected;
        }
        self.inner = None;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// ffmpeg backend
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct FfmpegStream {
    path: PathBuf,
    child: Child,
    stdout: Option<ChildStdout>,
    stderr: Option<JoinHandle<Vec<u8>>>,
    /// Bytes of an incomplete f32 from the last read.
    carry: Vec<u8>,
    buf: Vec<u8>,
    /// Bytes received from ffmpeg so far.
    bytes: u64,
    reaped: bool,
}

enum FfmpegOpenError {
    /// ffmpeg could not be started at all.
    NotRunnable,
    /// ffmpeg started but the file cannot be decoded.
    Failed(AudioError),
}

impl FfmpegStream {
    fn open(path: &Path, ffmpeg: &Path) -> Result<Box<FfmpegStream>, FfmpegOpenError> {
        // `file:` stops ffmpeg from reading names like `concat:...` or `http://...` as protocols.
        let mut input = OsString::from("file:");
        input.push(path.as_os_str());
        let spawned = Command::new(ffmpeg)
            .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-i"])
            .arg(&input)
            .args([
                "-vn", "-map", "0:a:0", "-f", "f32le", "-ac", "1", "-ar", "16000", "pipe:1",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(ffmpeg = %ffmpeg.display(), error = %e, "cannot run ffmpeg");
                return Err(FfmpegOpenError::NotRunnable);
            }
        };
        let stdout = child.stdout.take();
        let stderr = child.stderr.take().map(|mut err| {
            std::thread::spawn(move || {
                let mut kept = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    match err.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let room = STDERR_CAP.saturating_sub(kept.len());
                            kept.extend_from_slice(&chunk[..n.min(room)]);
                        }
                    }
                }
                kept
            })
        });
        let mut stream = Box::new(FfmpegStream {
            path: path.to_path_buf(),
            child,
            stdout,
            stderr,
            carry: Vec::new(),
            buf: vec![0u8; PIPE_CHUNK],
            bytes: 0,
            reaped: false,
        });
        // Wait for the first sample (or failure) so errors surface in `open`.
        while stream.carry.len() < 4 {
            if !stream.pull(1).map_err(FfmpegOpenError::Failed)? {
                break;
            }
        }
        Ok(stream)
    }

    /// Reads one chunk of ffmpeg's output into `carry`. Returns false at end of output.
    fn pull(&mut self, samples_wanted: usize) -> Result<bool, AudioError> {
        let Some(stdout) = self.stdout.as_mut() else {
            return Ok(false);
        };
        let want = samples_wanted.saturating_mul(4).clamp(4, PIPE_CHUNK);
        loop {
            match stdout.read(&mut self.buf[..want]) {
                Ok(0) => {
                    self.stdout = None;
                    self.finish()?;
                    return Ok(false);
                }
                Ok(n) => {
                    self.carry.extend_from_slice(&self.buf[..n]);
                    self.bytes += n as u64;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(AudioError::Io {
                        path: self.path.clone(),
                        source: e,
                    })
                }
            }
        }
    }

    fn read(&mut self, out: &mut Vec<f32>, max: usize) -> Result<usize, AudioError> {
        let mut appended = 0;
        loop {
            let whole = (self.carry.len() / 4).min(max - appended);
            out.extend(
                self.carry[..whole * 4]
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .map(|s| if s.is_finite() { s } else { 0.0 }),
            );
            self.carry.drain(..whole * 4);
            appended += whole;
            if appended == max || !self.pull(max - appended)? {
                return Ok(appended);
            }
        }
    }

    /// Reaps ffmpeg at end of output and turns its exit status and stderr into an error.
    fn finish(&mut self) -> Result<(), AudioError> {
        let status = self.child.wait().map_err(|e| AudioError::Io {
            path: self.path.clone(),
            source: e,
        })?;
        self.reaped = true;
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let stderr = String::from_utf8_lossy(&stderr);
        let samples = self.bytes / 4;
        if !status.success() || samples == 0 {
            if let Some(e) = classify_ffmpeg(&self.path, &stderr, samples) {
                return Err(e);
            }
            if !status.success() {
                return Err(AudioError::FfmpegFailed {
                    path: self.path.clone(),
                    message: format!("ffmpeg exited with {status}"),
                });
            }
            return Err(AudioError::NoSamples(self.path.clone()));
        }
        if !stderr.trim().is_empty() {
            tracing::warn!(path = %self.path.display(), stderr = %first_line(&stderr), "ffmpeg reported errors while decoding");
        }
        Ok(())
    }
}

impl Drop for FfmpegStream {
    fn drop(&mut self) {
        if !self.reaped {
            // Errors mean it already exited; wait() reaps it either way.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        self.stdout = None;
        if let Some(h) = self.stderr.take() {
            let _ = h.join();
        }
    }
}

/// ffmpeg's first meaningful stderr line, without the `[demuxer @ 0x...]` prefix.
fn first_line(stderr: &str) -> String {
    let line = stderr
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let line = match (line.starts_with('['), line.find("] ")) {
        (true, Some(end)) => &line[end + 2..],
        _ => line,
    };
    line.chars().take(300).collect()
}

fn classify_ffmpeg(path: &Path, stderr: &str, samples: u64) -> Option<AudioError> {
    let path = path.to_path_buf();
    if stderr.contains("matches no streams") || stderr.contains("does not contain any stream") {
        return Some(AudioError::NoAudioTrack(path));
    }
    if samples == 0 && stderr.contains("Invalid data found when processing input") {
        return Some(AudioError::NotMedia(path));
    }
    if stderr.contains("Decoder (codec") || stderr.contains("Unsupported codec") {
        return Some(AudioError::UnsupportedCodec {
            path,
            codec: first_line(stderr),
        });
    }
    let line = first_line(stderr);
    (!line.is_empty()).then_some(AudioError::FfmpegFailed {
        path,
        message: line,
    })
}

/// Asks ffprobe (next to the ffmpeg binary) for the container duration; None on any failure.
fn ffprobe_duration(ffmpeg: &Path, path: &Path) -> Option<f64> {
    let name = ffmpeg.file_name()?.to_str()?;
    let probe = ffmpeg.with_file_name(name.replacen("ffmpeg", "ffprobe", 1));
    if probe == ffmpeg {
        return None;
    }
    let mut input = OsString::from("file:");
    input.push(path.as_os_str());
    let output = Command::new(probe)
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "default=nw=1:nk=1",
        ])
        .arg(&input)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let secs: f64 = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .ok()?;
    (secs.is_finite() && secs > 0.0).then_some(secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn have(tool: &str) -> bool {
        Command::new(tool)
            .arg("-version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    }

    /// Runs ffmpeg quietly; returns false (test skips) when ffmpeg is missing.
    fn ffmpeg(args: &[&str]) -> bool {
        if !have("ffmpeg") {
            eprintln!("ffmpeg not installed: skipping");
            return false;
        }
        let status = Command::new("ffmpeg")
            .args(["-y", "-nostdin", "-hide_banner", "-loglevel", "error"])
            .args(args)
            .status()
            .unwrap();
        assert!(status.success(), "ffmpeg {args:?} failed");
        true
    }

    fn p(path: &Path) -> &str {
        path.to_str().unwrap()
    }

    /// A 3 s 440 Hz sine, mono 44.1 kHz, encoded to `name` with extra ffmpeg output args.
    fn sine(dir: &Path, name: &str, extra: &[&str]) -> Option<PathBuf> {
        let out = dir.join(name);
        let mut args = vec![
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=44100:duration=3",
        ];
        args.extend_from_slice(extra);
        args.push(p(&out));
        ffmpeg(&args).then_some(out)
    }

    /// Frequency from zero crossings over the middle three quarters (encoders leave a quiet,
    /// noisy ramp at both ends).
    fn frequency(s: &[f32]) -> f64 {
        let mid = &s[s.len() / 8..s.len() * 7 / 8];
        let crossings = mid
            .windows(2)
            .filter(|w| (w[0] < 0.0) != (w[1] < 0.0))
            .count();
        crossings as f64 / 2.0 / (mid.len() as f64 / f64::from(SAMPLE_RATE))
    }

    fn wav_bytes(rate: u32, channels: u16, samples: &[i16]) -> Vec<u8> {
        let data_len = (samples.len() * 2) as u32;
        let mut b = Vec::new();
        b.extend_from_slice(b"RIFF");
        b.extend_from_slice(&(36 + data_len).to_le_bytes());
        b.extend_from_slice(b"WAVEfmt ");
        b.extend_from_slice(&16u32.to_le_bytes());
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&channels.to_le_bytes());
        b.extend_from_slice(&rate.to_le_bytes());
        b.extend_from_slice(&rate.wrapping_mul(2 * u32::from(channels)).to_le_bytes());
        b.extend_from_slice(&(2 * channels).to_le_bytes());
        b.extend_from_slice(&16u16.to_le_bytes());
        b.extend_from_slice(b"data");
        b.extend_from_slice(&data_len.to_le_bytes());
        for s in samples {
            b.extend_from_slice(&s.to_le_bytes());
        }
        b
    }

    fn assert_len(samples: &[f32], secs: f64, tol: f64) {
        let want = secs * f64::from(SAMPLE_RATE);
        let got = samples.len() as f64;
        assert!(
            (got - want).abs() <= want * tol,
            "got {got} samples, want {want} ±{tol}"
        );
    }

    #[test]
    fn wav_44k_stereo_resamples_to_16k() {
        let dir = tempfile::tempdir().unwrap();
        let Some(path) = sine(dir.path(), "s.wav", &["-ac", "2"]) else {
            return;
        };
        let src = AudioSource::open(&path).unwrap();
        assert_eq!(src.backend(), "symphonia");
        let hint = src.duration_hint().unwrap();
        assert!((hint - 3.0).abs() < 0.01, "{hint}");
        let s = decode_all(&path).unwrap();
        assert_len(&s, 3.0, 0.01);
        // 440 Hz: two zero crossings per period.
        let freq = frequency(&s);
        assert!((freq - 440.0).abs() < 440.0 * 0.02, "frequency {freq}");
        let peak = s.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        assert!(peak > 0.05 && peak <= 1.01, "peak {peak}");
    }

    #[test]
    fn wav_16k_passes_through_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.wav");
        let samples: Vec<i16> = (0..16_000).map(|i| ((i % 100) * 100) as i16).collect();
        std::fs::write(&path, wav_bytes(16_000, 1, &samples)).unwrap();
        let s = decode_all(&path).unwrap();
        assert_eq!(s.len(), 16_000);
        assert!((s[50] - 5000.0 / 32768.0).abs() < 1e-6);
    }

    #[test]
    fn a_clip_hands_out_exactly_its_stretch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ramp.wav");
        // Sample n holds n / 8 (so positions can be read back), 10 s.
        let samples: Vec<i16> = (0..160_000).map(|i| (i / 8) as i16).collect();
        std::fs::write(&path, wav_bytes(16_000, 1, &samples)).unwrap();
        let mut clip = AudioSource::open(&path)
            .unwrap()
            .clip(100_003, 120_003)
            .unwrap();
        assert!((clip.duration_hint().unwrap() - 1.25).abs() < 1e-9);
        let mut out = Vec::new();
        while clip.read(&mut out, 7_000).unwrap() > 0 {}
        assert_eq!(out.len(), 20_000);
        assert_eq!((out[0] * 32768.0).round() as i32, 100_003 / 8);
        assert_eq!((out[19_999] * 32768.0).round() as i32, 120_002 / 8);
        // A clip past the end is empty, not an error.
        let mut late = AudioSource::open(&path)
            .unwrap()
            .clip(200_000, 210_000)
            .unwrap();
        assert_eq!(late.read(&mut out, 1000).unwrap(), 0);
    }

    #[test]
    fn long_audio_is_split_at_its_pauses_end_to_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("talk.wav");
        // 100 s of tone with a 0.5 s pause every 7 s.
        let rate = 16_000usize;
        let samples: Vec<i16> = (0..100 * rate)
            .map(|i| {
                let in_pause = i % (7 * rate) >= 6 * rate + rate / 4
                    && i % (7 * rate) < 6 * rate + 3 * rate / 4;
                if in_pause {
                    0
                } else {
                    ((i as f64 * 0.2).sin() * 8_000.0) as i16
                }
            })
            .collect();
        std::fs::write(&path, wav_bytes(16_000, 1, &samples)).unwrap();
        let mut source = AudioSource::open(&path).unwrap();
        let ranges = crate::engine::chunk::plan_splits(&mut source, 20 * rate).unwrap();
        assert_eq!(ranges.first().unwrap().0, 0);
        assert_eq!(ranges.last().unwrap().1, 100 * rate);
        assert!(ranges.len() >= 4 && ranges.len() <= 6, "{ranges:?}");
        for pair in ranges.windows(2) {
            assert_eq!(pair[0].1, pair[1].0, "ranges are contiguous");
            let cut = pair[0].1 % (7 * rate);
            assert!(
                (6 * rate + rate / 4..6 * rate + 3 * rate / 4).contains(&cut),
                "cut at {} s is not in a pause",
                pair[0].1 as f64 / rate as f64
            );
        }
        for (start, end) in &ranges[..ranges.len() - 1] {
            let len = end - start;
            assert!((15 * rate..=25 * rate).contains(&len), "{ranges:?}");
        }
    }

    #[test]
    fn odd_rate_uses_sinc_and_keeps_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("odd.wav");
        let rate = 44_101u32;
        let samples: Vec<i16> = (0..rate * 2)
            .map(|i| {
                ((i as f64 * 2.0 * std::f64::consts::PI * 300.0 / f64::from(rate)).sin() * 10_000.0)
                    as i16
            })
            .collect();
        std::fs::write(&path, wav_bytes(rate, 1, &samples)).unwrap();
        let s = decode_all(&path).unwrap();
        assert_len(&s, 2.0, 0.001);
        let freq = frequency(&s);
        assert!((freq - 300.0).abs() < 6.0, "frequency {freq}");
    }

    #[test]
    fn compressed_formats_decode_with_symphonia() {
        let dir = tempfile::tempdir().unwrap();
        let cases: &[(&str, &[&str])] = &[
            ("s.mp3", &["-c:a", "libmp3lame", "-b:a", "64k"]),
            ("s.m4a", &["-c:a", "aac", "-b:a", "64k"]),
            ("s.flac", &["-c:a", "flac"]),
            ("s.ogg", &["-c:a", "libvorbis"]),
        ];
        for (name, args) in cases {
            let Some(path) = sine(dir.path(), name, args) else {
                return;
            };
            let mut src = AudioSource::open(&path).unwrap();
            assert_eq!(src.backend(), "symphonia", "{name}");
            let mut s = Vec::new();
            while src.read(&mut s, 777).unwrap() > 0 {
                assert!(
                    src.buffered() < 64 * 1024,
                    "{name}: {} buffered",
                    src.buffered()
                );
            }
            assert_len(&s, 3.0, 0.03);
            let freq = frequency(&s);
            assert!(
                (freq - 440.0).abs() < 440.0 * 0.03,
                "{name}: frequency {freq}"
            );
        }
    }

    #[test]
    fn mp4_with_video_decodes() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("v.mp4");
        let ok = ffmpeg(&[
            "-f",
            "lavfi",
            "-i",
            "color=c=black:s=320x240:r=25",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=44100:duration=3",
            "-c:v",
            "libx264",
            "-c:a",
            "aac",
            "-shortest",
            p(&out),
        ]);
        if !ok {
            return;
        }
        let src = AudioSource::open(&out).unwrap();
        assert_eq!(src.backend(), "symphonia");
        drop(src);
        let s = decode_all(&out).unwrap();
        assert_len(&s, 3.0, 0.05);
    }

    #[test]
    fn opus_webm_uses_ffmpeg() {
        let dir = tempfile::tempdir().unwrap();
        let Some(path) = sine(dir.path(), "s.webm", &["-c:a", "libopus"]) else {
            return;
        };
        let mut src = AudioSource::open(&path).unwrap();
        assert_eq!(src.backend(), "ffmpeg");
        let hint = src.duration_hint();
        assert!(hint.is_some_and(|d| (d - 3.0).abs() < 0.1), "{hint:?}");
        let mut s = Vec::new();
        while src.read(&mut s, 1000).unwrap() > 0 {}
        assert_len(&s, 3.0, 0.02);
        let freq = frequency(&s);
        assert!((freq - 440.0).abs() < 440.0 * 0.03, "frequency {freq}");
    }

    #[test]
    fn dropping_an_ffmpeg_stream_early_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        let Some(path) = sine(dir.path(), "s.webm", &["-c:a", "libopus"]) else {
            return;
        };
        let mut src = AudioSource::open(&path).unwrap();
        let mut s = Vec::new();
        assert_eq!(src.read(&mut s, 10).unwrap(), 10);
        drop(src);
    }

    #[test]
    fn video_without_audio_is_no_audio_track() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("silent.mp4");
        let ok = ffmpeg(&[
            "-f",
            "lavfi",
            "-i",
            "color=c=black:s=64x64:r=25:d=1",
            "-c:v",
            "libx264",
            p(&out),
        ]);
        if !ok {
            return;
        }
        let e = AudioSource::open(&out).unwrap_err();
        assert!(matches!(e, AudioError::NoAudioTrack(_)), "{e}");
    }

    #[test]
    fn missing_ffmpeg_is_explained() {
        let dir = tempfile::tempdir().unwrap();
        let Some(path) = sine(dir.path(), "s.webm", &["-c:a", "libopus"]) else {
            return;
        };
        let e = open_with_ffmpeg(&path, Path::new("/nonexistent/ffmpeg")).unwrap_err();
        assert!(matches!(e, AudioError::NeedsFfmpeg { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("ffmpeg") && msg.contains("apt-get install ffmpeg"),
            "{msg}"
        );
    }

    #[test]
    fn missing_path() {
        let e = AudioSource::open(Path::new("/nonexistent/dir/x.mp3")).unwrap_err();
        assert!(matches!(e, AudioError::NotFound(_)), "{e}");
        assert!(e.to_string().starts_with("file not found"));
    }

    #[test]
    fn directory() {
        let dir = tempfile::tempdir().unwrap();
        let e = AudioSource::open(dir.path()).unwrap_err();
        assert!(matches!(e, AudioError::IsDirectory(_)), "{e}");
    }

    #[test]
    fn empty_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.mp3");
        std::fs::write(&path, b"").unwrap();
        let e = AudioSource::open(&path).unwrap_err();
        assert!(matches!(e, AudioError::EmptyFile(_)), "{e}");
    }

    #[test]
    fn text_renamed_mp3() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("text.mp3");
        std::fs::write(
            &path,
            "These are the lyrics, not the song.\nSecond line.\n".repeat(20),
        )
        .unwrap();
        let e = AudioSource::open(&path).unwrap_err();
        assert!(matches!(e, AudioError::NotMedia(_)), "{e}");
        // The same without ffmpeg: still not media, not "needs ffmpeg".
        let e = open_with_ffmpeg(&path, Path::new("/nonexistent/ffmpeg")).unwrap_err();
        assert!(matches!(e, AudioError::NotMedia(_)), "{e}");
    }

    #[test]
    fn random_binary_is_not_media() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob.bin");
        let bytes: Vec<u8> = (0..5000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(&path, bytes).unwrap();
        let e = AudioSource::open(&path).unwrap_err();
        assert!(
            matches!(e, AudioError::NotMedia(_) | AudioError::FfmpegFailed { .. }),
            "{e}"
        );
    }

    #[test]
    fn header_only_wav_has_no_samples() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.wav");
        let bytes = wav_bytes(16_000, 1, &[]);
        assert_eq!(bytes.len(), 44);
        std::fs::write(&path, bytes).unwrap();
        let e = AudioSource::open(&path).unwrap_err();
        assert!(matches!(e, AudioError::NoSamples(_)), "{e}");
    }

    #[test]
    fn absurd_sample_rates() {
        let dir = tempfile::tempdir().unwrap();
        let samples = vec![100i16; 1600];
        for rate in [0u32, 1, 999, 768_001, 4_000_000_000] {
            let path = dir.path().join(format!("r{rate}.wav"));
            std::fs::write(&path, wav_bytes(rate, 1, &samples)).unwrap();
            let e = AudioSource::open(&path).unwrap_err();
            assert!(matches!(e, AudioError::BadSampleRate { .. }), "{rate}: {e}");
        }
        // The limits themselves are fine.
        let path = dir.path().join("ok.wav");
        std::fs::write(&path, wav_bytes(1000, 1, &vec![100i16; 1000])).unwrap();
        assert_len(&decode_all(&path).unwrap(), 1.0, 0.01);
    }

    #[test]
    fn truncated_mp3() {
        let dir = tempfile::tempdir().unwrap();
        let Some(path) = sine(dir.path(), "s.mp3", &["-c:a", "libmp3lame", "-b:a", "64k"]) else {
            return;
        };
        let full = std::fs::read(&path).unwrap();
        // Cut to 300 bytes: nothing decodable.
        let tiny = dir.path().join("tiny.mp3");
        std::fs::write(&tiny, &full[..300]).unwrap();
        let e = AudioSource::open(&tiny).unwrap_err();
        assert!(matches!(e, AudioError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("decoding failed after 0.0 s"), "{e}");
        // Cut mid-stream: what is there decodes.
        let half = dir.path().join("half.mp3");
        std::fs::write(&half, &full[..full.len() / 2 + 77]).unwrap();
        let s = decode_all(&half).unwrap();
        assert!(s.len() > 16_000 && s.len() < 32_000, "{}", s.len());
    }

    #[test]
    fn garbage_mid_stream_is_skipped_but_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let Some(path) = sine(dir.path(), "s.flac", &["-c:a", "flac"]) else {
            return;
        };
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        // Overwrite a stretch in the middle with noise.
        for (i, b) in bytes[n / 2..n / 2 + 200].iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37);
        }
        let damaged = dir.path().join("damaged.flac");
        std::fs::write(&damaged, &bytes).unwrap();
        let s = decode_all(&damaged).unwrap();
        assert!(s.len() > 16_000 * 2, "{}", s.len());
    }

    #[test]
    fn messages_are_one_lowercase_line() {
        let errs = [
            AudioError::NotFound("a".into()),
            AudioError::Corrupt {
                path: "a".into(),
                after_secs: 1.25,
                detail: "x".into(),
            },
            AudioError::NeedsFfmpeg {
                path: "a".into(),
                ffmpeg: "ffmpeg".into(),
                why: "y".into(),
            },
        ];
        for e in errs {
            let m = e.to_string();
            assert!(!m.contains('\n'));
            assert!(m.chars().next().unwrap().is_lowercase(), "{m}");
        }
        let m = AudioError::Corrupt {
            path: "a".into(),
            after_secs: 1.25,
            detail: "x".into(),
        }
        .to_string();
        assert!(
            m.contains("decoding failed after 1.2 s") || m.contains("decoding failed after 1.3 s"),
            "{m}"
        );
    }
}
