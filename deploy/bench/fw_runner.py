"""One faster-whisper transcription in a fresh process, for deploy/bench/bench.py.

    fw_runner.py MODEL_DIR AUDIO --compute-type int8|float32 --threads N [--language en]
                 [--word-timestamps]

Prints one JSON object on stdout: import, load and transcription wall seconds, the encoder
and decoder seconds (timed around WhisperModel.encode and generate_with_fallback, the same
boundaries as ytcaption's --stats), the decoded token count (final tokens of each window plus
its end-of-text token, as ytcaption counts them), the window count and the text.
Decoding is greedy (beam_size=1, best_of=1) with faster-whisper's default temperature
fallback list (0.0, 0.2, ... 1.0), VAD off, condition_on_previous_text=True.
"""

import argparse
import json
import sys
import time

started = time.perf_counter()
from faster_whisper import WhisperModel  # noqa: E402  (import time is measured)

imported = time.perf_counter()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model_dir")
    p.add_argument("audio")
    p.add_argument("--compute-type", required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--language", default="en")
    p.add_argument("--word-timestamps", action="store_true")
    a = p.parse_args()

    t0 = time.perf_counter()
    model = WhisperModel(
        a.model_dir,
        device="cpu",
        compute_type=a.compute_type,
        cpu_threads=a.threads,
        num_workers=1,
        local_files_only=True,
    )
    load = time.perf_counter() - t0

    stats = {"encoder": 0.0, "decoder": 0.0, "windows": 0, "tokens": 0}
    encode, generate = model.encode, model.generate_with_fallback

    def timed_encode(*args, **kwargs):
        t = time.perf_counter()
        out = encode(*args, **kwargs)
        stats["encoder"] += time.perf_counter() - t
        stats["windows"] += 1
        return out

    def timed_generate(*args, **kwargs):
        t = time.perf_counter()
        out = generate(*args, **kwargs)
        stats["decoder"] += time.perf_counter() - t
        stats["tokens"] += len(out[0].sequences_ids[0]) + 1
        return out

    model.encode, model.generate_with_fallback = timed_encode, timed_generate

    t0 = time.perf_counter()
    segments, info = model.transcribe(
        a.audio,
        language=a.language,
        task="transcribe",
        beam_size=1,
        best_of=1,
        condition_on_previous_text=True,
        word_timestamps=a.word_timestamps,
        vad_filter=False,
    )
    text = "".join(s.text for s in segments).strip()  # the generator does the work
    wall = time.perf_counter() - t0

    json.dump(
        {
            "import_s": imported - started,
            "load_s": load,
            "wall_s": wall,
            "encoder_s": stats["encoder"],
            "decoder_s": stats["decoder"],
            "windows": stats["windows"],
            "tokens": stats["tokens"],
            "audio_s": info.duration,
            "text": text,
        },
        sys.stdout,
    )
    print()


if __name__ == "__main__":
    main()
