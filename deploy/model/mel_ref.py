#!/usr/bin/env python3
"""Reference Whisper log-mel spectrogram in plain numpy, for checking the Rust front end.

    mel_ref.py WAV_16k_MONO OUT [--n-mels 80|128] [--raw | --npy]

Reads a 16 kHz mono 16-bit PCM WAV (the `wave` module; convert anything else first,
e.g. `sox in.wav -r 16000 -c 1 -b 16 out.wav`) and writes the first 30 s window as
float32 [n_mels, 3000], row-major (mel bin major, frame minor).

Output format: raw little-endian float32 with no header (n_mels * 3000 * 4 bytes), so
the Rust test needs no npy parser. `--npy` (or an OUT ending in .npy) writes a .npy
instead; `--raw` forces raw even for a .npy name.

The pipeline is openai-whisper's: samples / 32768, pad/trim to 480000, STFT with
n_fft 400, hop 160, periodic Hann, centre reflect padding, last frame dropped
(3000 frames), power |X|^2, Slaney mel filterbank (librosa htk=False,
norm="slaney"), log10(max(x, 1e-10)), clamp to max - 8, (x + 4) / 4.
Everything is computed in float64 so this is a reference, not a twin of an f32 port.
"""

import argparse
import sys
import wave

import numpy as np

SAMPLE_RATE = 16000
N_FFT = 400
HOP = 160
N_SAMPLES = 30 * SAMPLE_RATE
N_FRAMES = N_SAMPLES // HOP


def die(msg):
    print(f"mel_ref: error: {msg}", file=sys.stderr)
    sys.exit(1)


def read_wav(path):
    try:
        w = wave.open(path, "rb")
    except (wave.Error, EOFError) as e:
        die(f"{path}: not a PCM WAV ({e}); convert with: sox IN -r 16000 -c 1 -b 16 OUT.wav")
    with w:
        if (w.getframerate(), w.getnchannels(), w.getsampwidth()) != (SAMPLE_RATE, 1, 2):
            die(f"{path}: {w.getframerate()} Hz, {w.getnchannels()} ch, {8 * w.getsampwidth()} bit; "
                "need 16 kHz mono 16-bit: sox IN -r 16000 -c 1 -b 16 OUT.wav")
        data = w.readframes(w.getnframes())
    return np.frombuffer(data, "<i2").astype(np.float64) / 32768.0


def hz_to_mel(f):
    # Slaney: linear below 1 kHz (200/3 Hz per mel), logarithmic above.
    f = np.asarray(f, np.float64)
    lin = f / (200.0 / 3)
    logstep = np.log(6.4) / 27.0
    return np.where(f >= 1000.0, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / logstep, lin)


def mel_to_hz(m):
    m = np.asarray(m, np.float64)
    logstep = np.log(6.4) / 27.0
    return np.where(m >= 15.0, 1000.0 * np.exp(logstep * (m - 15.0)), m * (200.0 / 3))


def mel_filters(n_mels):
    """librosa.filters.mel(sr=16000, n_fft=400, n_mels, htk=False, norm='slaney'), in f64."""
    fft_freqs = np.linspace(0.0, SAMPLE_RATE / 2, 1 + N_FFT // 2)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(SAMPLE_RATE / 2), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    return weights * (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]


def log_mel(audio, n_mels=80):
    audio = np.asarray(audio, np.float64)[:N_SAMPLES]
    audio = np.pad(audio, (0, N_SAMPLES - len(audio)))
    padded = np.pad(audio, (N_FFT // 2, N_FFT // 2), mode="reflect")
    n = np.arange(N_FFT)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / N_FFT)  # periodic Hann, as torch.hann_window
    idx = np.arange(N_FRAMES)[:, None] * HOP + n[None, :]  # the 3001st frame is never built
    spec = np.fft.rfft(padded[idx] * window, axis=1)
    power = spec.real ** 2 + spec.imag ** 2  # [3000, 201]
    mel = mel_filters(n_mels) @ power.T
    log_spec = np.log10(np.maximum(mel, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).astype(np.float32)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("wav")
    ap.add_argument("out")
    ap.add_argument("--n-mels", type=int, default=80, choices=(80, 128))
    fmt = ap.add_mutually_exclusive_group()
    fmt.add_argument("--raw", action="store_true", help="raw little-endian f32 (default)")
    fmt.add_argument("--npy", action="store_true", help="numpy .npy file")
    args = ap.parse_args()
    mel = log_mel(read_wav(args.wav), args.n_mels)
    if args.npy or (args.out.endswith(".npy") and not args.raw):
        np.save(args.out, mel)
    else:
        mel.astype("<f4").tofile(args.out)


if __name__ == "__main__":
    main()
