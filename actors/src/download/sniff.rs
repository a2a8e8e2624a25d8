//! Recognising media by its first bytes, whatever the server's `Content-Type` claims.
//!
//! A link that answers with a web page, a JSON error or an image is the client's mistake, and
//! should fail now with a clear reason rather than later in the decoder. [`sniff`] looks only
//! at container and stream signatures; it does not prove a file decodes.

/// How many leading bytes [`sniff`] wants to see; fewer work for short files.
pub const SNIFF_LEN: usize = 4096;

/// A media container or stream format recognised by its signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaKind {
    /// RIFF/WAVE, RF64 or BW64.
    Wav,
    /// MPEG audio: an ID3v2 tag or an MPEG audio frame header.
    Mp3,
    Flac,
    /// Ogg (Vorbis, Opus, FLAC in Ogg).
    Ogg,
    /// ISO base media: mp4, m4a, mov, 3gp.
    Mp4,
    /// Matroska whose DocType is `webm`.
    Webm,
    /// Other Matroska (mkv, mka).
    Matroska,
    /// Raw AAC in ADTS frames.
    Aac,
    /// AMR narrow- or wide-band.
    Amr,
    /// AIFF or AIFF-C.
    Aiff,
    /// Core Audio Format.
    Caf,
    /// ASF (wma, wmv).
    Asf,
    /// RIFF/AVI.
    Avi,
    Flv,
    /// MPEG transport stream.
    MpegTs,
    /// MPEG program stream.
    MpegPs,
    /// Sun/NeXT `.au`.
    Au,
}

impl MediaKind {
    /// A stable lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            MediaKind::Wav => "wav",
            MediaKind::Mp3 => "mp3",
            MediaKind::Flac => "flac",
            MediaKind::Ogg => "ogg",
            MediaKind::Mp4 => "mp4",
            MediaKind::Webm => "webm",
            MediaKind::Matroska => "matroska",
            MediaKind::Aac => "aac",
            MediaKind::Amr => "amr",
            MediaKind::Aiff => "aiff",
            MediaKind::Caf => "caf",
            MediaKind::Asf => "asf",
            MediaKind::Avi => "avi",
            MediaKind::Flv => "flv",
            MediaKind::MpegTs => "mpegts",
            MediaKind::MpegPs => "mpegps",
            MediaKind::Au => "au",
        }
    }

    /// The usual file extension.
    pub fn extension(self) -> &'static str {
        match self {
            MediaKind::Matroska => "mkv",
            MediaKind::MpegTs => "ts",
            MediaKind::MpegPs => "mpg",
            MediaKind::Asf => "wma",
            other => other.as_str(),
        }
    }
}

impl std::fmt::Display for MediaKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The media format `head` (a file's first bytes, ideally [`SNIFF_LEN`] of them) starts with,
/// or `None` when it is not recognisably media.
pub fn sniff(head: &[u8]) -> Option<MediaKind> {
    if head.starts_with(b"ID3") {
        return Some(after_id3(head));
    }
    sniff_container(head).or_else(|| sniff_stream(head))
}

/// Formats with an unambiguous magic number.
fn sniff_container(head: &[u8]) -> Option<MediaKind> {
    let at = |offset: usize, magic: &[u8]| head.get(offset..offset + magic.len()) == Some(magic);
    let riff = at(0, b"RIFF");
    if (riff || at(0, b"RF64") || at(0, b"BW64")) && at(8, b"WAVE") {
        return Some(MediaKind::Wav);
    }
    if riff && at(8, b"AVI ") {
        return Some(MediaKind::Avi);
    }
    if at(0, b"fLaC") {
        return Some(MediaKind::Flac);
    }
    if at(0, b"OggS") {
        return Some(MediaKind::Ogg);
    }
    if [b"ftyp", b"moov", b"mdat", b"wide"]
        .iter()
        .any(|m| at(4, *m))
    {
        return Some(MediaKind::Mp4);
    }
    if at(0, &[0x1a, 0x45, 0xdf, 0xa3]) {
        return Some(matroska_kind(head));
    }
    if at(0, b"#!AMR") {
        return Some(MediaKind::Amr);
    }
    if at(0, b"FORM") && (at(8, b"AIFF") || at(8, b"AIFC")) {
        return Some(MediaKind::Aiff);
    }
    if at(0, b"caff") {
        return Some(MediaKind::Caf);
    }
    if at(0, &[0x30, 0x26, 0xb2, 0x75, 0x8e, 0x66, 0xcf, 0x11]) {
        return Some(MediaKind::Asf);
    }
    if at(0, b"FLV\x01") {
        return Some(MediaKind::Flv);
    }
    if at(0, b".snd") {
        return Some(MediaKind::Au);
    }
    if at(0, &[0x00, 0x00, 0x01, 0xba]) {
        return Some(MediaKind::MpegPs);
    }
    if is_mpeg_ts(head) {
        return Some(MediaKind::MpegTs);
    }
    None
}

/// Headerless streams: AAC ADTS and MPEG audio frames, told apart by the layer bits.
fn sniff_stream(head: &[u8]) -> Option<MediaKind> {
    if is_adts(head) {
        return Some(MediaKind::Aac);
    }
    if let Some(header) = MpegHeader::parse(head) {
        // Two bytes of sync are weak evidence; when the sample holds more than one frame's
        // worth of bytes, insist on a second header of the same stream.
        if head.len() < 2048 || has_second_frame(head, header) {
            return Some(MediaKind::Mp3);
        }
    }
    None
}

/// What follows an ID3v2 tag: FLAC and AAC are sometimes tagged too. A tag too big for the
/// sample (cover art) is taken as MP3, by far the common case.
fn after_id3(head: &[u8]) -> MediaKind {
    let Some(size) = id3_size(head) else {
        return MediaKind::Mp3;
    };
    match head.get(size..) {
        Some(rest) if rest.len() >= 4 => sniff_container(rest)
            .or_else(|| is_adts(rest).then_some(MediaKind::Aac))
            .unwrap_or(MediaKind::Mp3),
        _ => MediaKind::Mp3,
    }
}

/// The total length of a leading ID3v2 tag (header, syncsafe size, optional footer).
fn id3_size(head: &[u8]) -> Option<usize> {
    let bytes = head.get(6..10)?;
    if bytes.iter().any(|b| b & 0x80 != 0) {
        return None;
    }
    let size = bytes
        .iter()
        .fold(0usize, |acc, b| (acc << 7) | usize::from(*b));
    let footer = if head.get(5)? & 0x10 != 0 { 10 } else { 0 };
    Some(10 + size + footer)
}

/// `webm` when the EBML header's DocType says so, else generic Matroska.
fn matroska_kind(head: &[u8]) -> MediaKind {
    let window = &head[..head.len().min(64)];
    if window.windows(4).any(|w| w == b"webm") {
        MediaKind::Webm
    } else {
        MediaKind::Matroska
    }
}

/// Transport stream packets are 188 bytes, each starting with the sync byte 0x47.
fn is_mpeg_ts(head: &[u8]) -> bool {
    head.len() >= 188 * 3 && (0..3).all(|i| head[i * 188] == 0x47)
}

/// An ADTS header: 12 sync bits, then layer bits 00 (MPEG audio uses non-zero layers), a valid
/// sampling index and a frame length of at least the header.
fn is_adts(head: &[u8]) -> bool {
    let Some(h) = head.get(..7) else {
        return false;
    };
    let sync = h[0] == 0xff && h[1] & 0xf6 == 0xf0;
    let sampling_index = (h[2] >> 2) & 0x0f;
    let frame_len =
        (usize::from(h[3] & 0x03) << 11) | (usize::from(h[4]) << 3) | usize::from(h[5] >> 5);
    sync && sampling_index < 13 && frame_len >= 7
}

/// The fields of an MPEG audio frame header that identify a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MpegHeader {
    version: u8,
    layer: u8,
    sample_rate: u8,
}

impl MpegHeader {
    /// A valid header at the start of `bytes`: 11 sync bits, no reserved version, layer,
    /// bitrate or sample rate.
    fn parse(bytes: &[u8]) -> Option<MpegHeader> {
        let h = bytes.get(..4)?;
        let version = (h[1] >> 3) & 0x03;
        let layer = (h[1] >> 1) & 0x03;
        let bitrate = h[2] >> 4;
        let sample_rate = (h[2] >> 2) & 0x03;
        let valid = h[0] == 0xff
            && h[1] & 0xe0 == 0xe0
            && version != 0b01
            && layer != 0b00
            && bitrate != 0x0f
            && sample_rate != 0b11;
        valid.then_some(MpegHeader {
            version,
            layer,
            sample_rate,
        })
    }
}

/// Whether another header of the same stream follows the first somewhere in the sample.
fn has_second_frame(head: &[u8], first: MpegHeader) -> bool {
    (4..head.len().saturating_sub(3)).any(|i| MpegHeader::parse(&head[i..]) == Some(first))
}

/// A short description of what a non-media sample looks like, for error messages.
pub fn describe_non_media(head: &[u8]) -> &'static str {
    let text = head.strip_prefix(b"\xef\xbb\xbf").unwrap_or(head);
    let start = text
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .map_or(&[][..], |i| &text[i..]);
    let lower: Vec<u8> = start.iter().take(64).map(u8::to_ascii_lowercase).collect();
    let starts = |magic: &[u8]| lower.starts_with(magic);
    if starts(b"<!doctype html") || starts(b"<html") || starts(b"<head") || starts(b"<body") {
        "an HTML page"
    } else if starts(b"<?xml") || starts(b"<") {
        "markup (HTML or XML)"
    } else if starts(b"{") || starts(b"[") {
        "JSON"
    } else if head.starts_with(b"\x89PNG") {
        "a PNG image"
    } else if head.starts_with(&[0xff, 0xd8, 0xff]) {
        "a JPEG image"
    } else if head.starts_with(b"GIF8") {
        "a GIF image"
    } else if head.starts_with(b"RIFF") && head.get(8..12) == Some(b"WEBP") {
        "a WebP image"
    } else if head.starts_with(b"%PDF") {
        "a PDF document"
    } else if head.starts_with(b"PK\x03\x04") {
        "a ZIP archive"
    } else if head.starts_with(&[0x1f, 0x8b]) {
        "gzip data"
    } else if std::str::from_utf8(head).is_ok() {
        "text"
    } else {
        "unrecognised binary data"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::path::PathBuf;

    fn fixture_head(name: &str) -> Vec<u8> {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/generated")
            .join(name);
        let mut head = Vec::new();
        std::fs::File::open(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run `make fixtures`)", path.display()))
            .take(SNIFF_LEN as u64)
            .read_to_end(&mut head)
            .unwrap();
        head
    }

    #[test]
    fn sniffs_real_fixture_files() {
        for (name, kind) in [
            ("weather_festival.wav", MediaKind::Wav),
            ("weather_festival.mp3", MediaKind::Mp3),
            ("weather_festival.flac", MediaKind::Flac),
            ("weather_festival.ogg", MediaKind::Ogg),
            ("weather_festival.m4a", MediaKind::Mp4),
            ("weather_festival.mp4", MediaKind::Mp4),
            ("weather_festival.opus.webm", MediaKind::Webm),
        ] {
            assert_eq!(sniff(&fixture_head(name)), Some(kind), "{name}");
        }
    }

    #[test]
    fn mp3_without_id3_is_found_by_frame_sync() {
        let head = fixture_head("weather_festival.mp3");
        let start = id3_size(&head).filter(|s| *s < head.len());
        if let Some(start) = start {
            // The fixture is tagged: its audio right after the tag must sniff on its own.
            let frames = &head[start..];
            assert_eq!(sniff_stream(frames), Some(MediaKind::Mp3));
        }
        // A hand-made MPEG-1 Layer III 128 kbit/s 44.1 kHz stream, two frames of 417 bytes.
        let mut stream = vec![0u8; 417 * 6];
        for frame in stream.chunks_mut(417) {
            frame[..4].copy_from_slice(&[0xff, 0xfb, 0x90, 0x64]);
        }
        assert_eq!(sniff(&stream), Some(MediaKind::Mp3));
        // The same sync in a long sample with no second header is not enough.
        let mut lone = vec![b'a'; 4096];
        lone[..4].copy_from_slice(&[0xff, 0xfb, 0x90, 0x64]);
        assert_eq!(sniff(&lone), None);
    }

    #[test]
    fn small_signatures() {
        let mut wav = b"RIFF\x24\x00\x00\x00WAVEfmt ".to_vec();
        wav.resize(44, 0);
        assert_eq!(sniff(&wav), Some(MediaKind::Wav));
        assert_eq!(sniff(b"#!AMR\n\x3c"), Some(MediaKind::Amr));
        assert_eq!(
            sniff(b"FORM\x00\x00\x10\x00AIFFCOMM"),
            Some(MediaKind::Aiff)
        );
        assert_eq!(
            sniff(&[0xff, 0xf1, 0x50, 0x80, 0x02, 0x1f, 0xfc]),
            Some(MediaKind::Aac)
        );
        assert_eq!(
            sniff(&[0x1a, 0x45, 0xdf, 0xa3, 0x9f, 0x42, 0x82, 0x88, b'm', b'a', b't']),
            Some(MediaKind::Matroska)
        );
        assert_eq!(sniff(b"\x00\x00\x00\x20ftypM4A "), Some(MediaKind::Mp4));
        assert_eq!(
            sniff(b"ID3\x03\x00\x00\x00\x00\x00\x05zzzzzfLaC"),
            Some(MediaKind::Flac)
        );
        assert_eq!(
            sniff(b"ID3\x03\x00\x00\x00\x00\x7f\x7f"),
            Some(MediaKind::Mp3)
        );
    }

    #[test]
    fn rejects_pages_json_images_and_text() {
        let png = [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13];
        let jpeg = [0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10, b'J', b'F', b'I', b'F'];
        let cases: [(&[u8], &str); 8] = [
            (
                b"<!DOCTYPE html><html><body>hi</body></html>",
                "an HTML page",
            ),
            (b"\n  <html lang=\"en\">", "an HTML page"),
            (b"{\"error\": \"not found\"}", "JSON"),
            (b"[1, 2, 3]", "JSON"),
            (&png, "a PNG image"),
            (&jpeg, "a JPEG image"),
            (b"GIF89a\x01\x00", "a GIF image"),
            (b"just some words", "text"),
        ];
        for (head, what) in cases {
            assert_eq!(sniff(head), None, "{what}");
            assert_eq!(describe_non_media(head), what);
        }
        assert_eq!(sniff(b""), None);
        assert_eq!(sniff(b"R"), None);
        assert_eq!(sniff(b"RIFF\x00\x00\x00\x00WEBPVP8 "), None);
        assert_eq!(describe_non_media(b"%PDF-1.7"), "a PDF document");
    }
}
