#!/usr/bin/env bash
# Recreates the seed corpus for the `decode_mel` fuzz target: tiny (~0.2 s) real files in every
# container/codec the in-process (symphonia) backend handles. Needs ffmpeg (and optionally sox).
# Usage: fuzz/seed.sh            (writes fuzz/corpus/decode_mel; the directory is gitignored)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/corpus/decode_mel"
mkdir -p "$out"
ff() { ffmpeg -nostdin -hide_banner -loglevel error -y "$@"; }
# 0.2 s of a 440 Hz tone plus a little noise, so every codec has something to code.
src=(-f lavfi -i "sine=frequency=440:sample_rate=44100:duration=0.2" -f lavfi -i "anoisesrc=d=0.2:c=pink:r=44100:a=0.05" -filter_complex amix=inputs=2:duration=shortest)
ff "${src[@]}" -ar 8000 -ac 1 -c:a pcm_u8 "$out/u8_8k_mono.wav"
ff "${src[@]}" -ar 16000 -ac 1 -c:a pcm_s16le "$out/s16_16k_mono.wav"
ff "${src[@]}" -ar 44100 -ac 2 -c:a pcm_s16le "$out/s16_44k_stereo.wav"
ff "${src[@]}" -ar 22050 -ac 1 -c:a pcm_s24le "$out/s24_22k_mono.wav"
ff "${src[@]}" -ar 16000 -ac 1 -c:a pcm_f32le "$out/f32_16k_mono.wav"
ff "${src[@]}" -ar 8000 -ac 1 -c:a pcm_mulaw "$out/mulaw_8k.wav"
ff "${src[@]}" -ar 8000 -ac 1 -c:a adpcm_ima_wav "$out/adpcm_ima_8k.wav"
ff "${src[@]}" -ar 8000 -ac 1 -c:a adpcm_ms "$out/adpcm_ms_8k.wav"
ff "${src[@]}" -ar 22050 -ac 1 -c:a libmp3lame -b:a 32k "$out/mono_22k.mp3"
ff "${src[@]}" -ar 44100 -ac 2 -c:a libmp3lame -b:a 64k -id3v2_version 3 -metadata title=t "$out/stereo_44k_id3.mp3"
ff "${src[@]}" -ar 16000 -ac 1 -c:a flac "$out/mono_16k.flac"
ff "${src[@]}" -ar 44100 -ac 2 -sample_fmt s32 -c:a flac "$out/stereo_44k_24.flac"
ff "${src[@]}" -ar 22050 -ac 1 -c:a libvorbis -q:a 0 "$out/mono_22k.ogg" 2>/dev/null \
  || ff "${src[@]}" -ar 22050 -ac 2 -c:a vorbis -strict -2 "$out/stereo_22k.ogg"
ff "${src[@]}" -ar 22050 -ac 1 -c:a aac -b:a 24k "$out/mono_22k.m4a"
ff "${src[@]}" -ar 16000 -ac 1 -c:a aac -b:a 24k -f adts "$out/mono_16k.aac"
if command -v sox >/dev/null; then
  sox -n -r 11025 -b 8 -c 1 "$out/sox_u8_11k.wav" synth 0.2 sine 300
  sox -n -r 16000 -b 16 -c 2 "$out/sox_s16_16k_stereo.wav" synth 0.2 sine 500 sine 700
fi
ls -l "$out"
