"""ytcaption vs faster-whisper: speed, peak memory and word error rate. Run it through
deploy/bench/transcribe.sh, which prepares the venv, the CTranslate2 directories and the binary.

Every measurement is a fresh process under /usr/bin/time -v (peak RSS of the whole process).
Runs are interleaved: for each repetition, for each clip, model and precision, ytcaption then
faster-whisper, so that machine noise (other builds on a shared box) hits both alike; the
reported figure is the median over repetitions.
"""

import argparse
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
FIXTURES = REPO / "tests" / "fixtures" / "generated"
BECKETT_TEXT = "Ever tried. Ever failed. No matter. Try again. Fail again. Fail better."

# ytcaption model suffix and faster-whisper compute_type per precision.
PRECISIONS = {
    "fp32": ("", "float32"),  # ONNX fp16 weights computed in fp32 vs CT2 float32
    "int8": ("-int8", "int8"),
}
SHORT_MIN, SHORT_MAX = 20.0, 29.5  # a single 30 s window, with room to spare
GAP_S = 0.5


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- clips ---------------------------------------------------------------------------------


def duration(wav: Path) -> float:
    return float(subprocess.check_output(["soxi", "-D", str(wav)], text=True))


def fixture_clips() -> dict:
    """name -> (wav, text) for every generated fixture with its expected text."""
    out = {}
    if FIXTURES.is_dir():
        for wav in sorted(FIXTURES.glob("*.wav")):
            txt = wav.with_suffix(".txt")
            if txt.is_file():
                out[wav.stem] = (wav, txt.read_text().strip())
            elif wav.stem == "beckett":
                out["beckett"] = (wav, BECKETT_TEXT)
    sample = onnx_models_dir() / "samples" / "beckett.wav"  # left by deploy/model/install.sh
    if "beckett" not in out and sample.is_file():
        out["beckett"] = (sample, BECKETT_TEXT)
    return out


def synthesise(name: str, text: str, engine: str, clipdir: Path) -> Path:
    """Fallback when tests/fixtures/generated is missing: one sentence-per-chunk clip."""
    wav = clipdir / f"{name}.wav"
    if wav.is_file():
        return wav
    parts = []
    for i, sentence in enumerate(s for s in re.split(r"(?<=[.!?])\s+", text) if s):
        raw = clipdir / f".{name}.{i}.raw.wav"
        if engine == "festival" and shutil.which("text2wave"):
            subprocess.run(
                ["text2wave", "-eval", "(voice_cmu_us_slt_arctic_hts)", "-o", str(raw)],
                input=sentence, text=True, check=True, capture_output=True,
            )
        else:
            subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(raw), sentence],
                           check=True, capture_output=True)
        part = clipdir / f".{name}.{i}.wav"
        subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(part),
                        "pad", "0", str(GAP_S)], check=True)
        raw.unlink()
        parts.append(part)
    subprocess.run(["sox", *map(str, parts), str(wav)], check=True)
    for p in parts:
        p.unlink()
    return wav


def own_clips(clipdir: Path) -> dict:
    """Clips from tests/fixtures/clips.txt, synthesised here (only if make.sh left none)."""
    spec = REPO / "tests" / "fixtures" / "clips.txt"
    lines = {}
    for line in spec.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, engine, text = line.split("|", 2)
        lines.setdefault(name, (engine, []))[1].append(text.strip())
    out = {}
    for name, (engine, texts) in lines.items():
        text = " ".join(texts)
        out[name] = (synthesise(name, text, engine, clipdir), text)
    return out


def concat(name: str, picked: list, clipdir: Path) -> tuple:
    wav = clipdir / f"{name}.wav"
    parts = []
    for i, (src, _) in enumerate(picked):
        part = clipdir / f".{name}.{i}.wav"
        subprocess.run(["sox", str(src), "-r", "16000", "-c", "1", "-b", "16", str(part),
                        "pad", "0", str(GAP_S)], check=True)
        parts.append(part)
    subprocess.run(["sox", *map(str, parts), str(wav)], check=True)
    for p in parts:
        p.unlink()
    return wav, " ".join(t for _, t in picked)


def resolve_clips(names: list, clipdir: Path) -> dict:
    clipdir.mkdir(parents=True, exist_ok=True)
    available = fixture_clips()
    if "long" not in available or len(available) < 3:
        log(f"note: {FIXTURES} is incomplete (run tests/fixtures/make.sh); "
            f"synthesising clips into {clipdir}")
        available = {**own_clips(clipdir), **available}
    singles = {n: v for n, v in available.items()
               if n != "long" and n != "beckett" and not n.startswith(("noise", "silence"))}
    out = {}
    for name in names:
        if name == "short":
            # A single window: an existing 20-29.5 s clip, else fixture clips joined with sox.
            one = [n for n, (w, _) in singles.items() if SHORT_MIN <= duration(w) <= SHORT_MAX]
            if one:
                wav, text = singles[one[0]]
                src = one[0]
            else:
                picked, total = [], 0.0
                for n, (w, t) in sorted(singles.items()):
                    d = duration(w) + GAP_S
                    if total + d <= SHORT_MAX:
                        picked.append((n, (w, t)))
                        total += d
                    if total >= SHORT_MIN:
                        break
                if total < SHORT_MIN:
                    sys.exit(f"bench.py: cannot make a {SHORT_MIN:.0f}-{SHORT_MAX:.0f} s clip")
                wav, text = concat("short", [v for _, v in picked], clipdir)
                src = " + ".join(n for n, _ in picked)
        elif name in available:
            wav, text = available[name]
            src = name
        elif Path(name).is_file() and Path(name).with_suffix(".txt").is_file():
            wav, text = Path(name).resolve(), Path(name).with_suffix(".txt").read_text().strip()
            src = name
            name = wav.stem
        else:
            sys.exit(f"bench.py: unknown clip {name!r}: use short, long, a fixture name "
                     f"({', '.join(sorted(available))}) or a WAV with a .txt beside it")
        out[name] = {"wav": str(wav), "text": text, "source": src, "seconds": duration(wav)}
    return out


# --- scoring -------------------------------------------------------------------------------


def words(text: str) -> list:
    text = re.sub(r"[-\u2010-\u2015/]", " ", text.lower())
    text = re.sub(r"[^\w\s]", "", text)
    return text.split()


def wer(ref: str, hyp: str) -> float:
    r, h = words(ref), words(hyp)
    prev = list(range(len(h) + 1))
    for i, rw in enumerate(r, 1):
        cur = [i] + [0] * len(h)
        for j, hw in enumerate(h, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (rw != hw))
        prev = cur
    return prev[-1] / max(len(r), 1)


# --- runs ----------------------------------------------------------------------------------

STATS_RE = re.compile(
    r"audio ([\d.]+) s, wall ([\d.]+) s, real-time factor [\d.]+x, windows (\d+), tokens (\d+), "
    r"encoder ([\d.]+) s, decoder ([\d.]+) s"
)
RSS_RE = re.compile(r"Maximum resident set size \(kbytes\): (\d+)")


def timed(cmd: list) -> tuple:
    """Runs cmd under /usr/bin/time -v: (stdout, stderr, process wall s, peak RSS MB)."""
    t = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        sys.exit(f"bench.py: failed ({p.returncode}): {shlex.join(cmd)}\n{p.stderr[-3000:]}")
    m = RSS_RE.search(p.stderr)
    return p.stdout, p.stderr, wall, (int(m.group(1)) / 1024 if m else float("nan"))


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def onnx_models_dir() -> Path:
    """Where the ytcaption binary looks for models (same rule as deploy/model/install.sh)."""
    if os.environ.get("YTCAPTION_MODELS_DIR"):
        return Path(os.environ["YTCAPTION_MODELS_DIR"])
    if os.environ.get("YTCAPTION_DATA_DIR"):
        return Path(os.environ["YTCAPTION_DATA_DIR"]) / "models"
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "ytcaption" / "models"


def ytcaption_cmd(a, model: str, wav: str) -> list:
    cmd = [a.bin, "transcribe", wav, "--model", model, "--language", "en", "--format", "json",
           "--threads", str(a.threads), "--stats"]
    return cmd if a.word_timestamps else cmd + ["--no-word-timestamps"]


def fw_cmd(a, model: str, compute: str, wav: str) -> list:
    cmd = [sys.executable, str(HERE / "fw_runner.py"), str(Path(a.ct2) / model), wav,
           "--compute-type", compute, "--threads", str(a.threads), "--language", "en"]
    return cmd + ["--word-timestamps"] if a.word_timestamps else cmd


def run_ytcaption(a, model: str, clip: dict) -> dict:
    out, err, proc, rss = timed(ytcaption_cmd(a, model, clip["wav"]))
    m = STATS_RE.search(err)
    if not m:
        sys.exit(f"bench.py: no --stats line from ytcaption:\n{err[-2000:]}")
    audio, wall, windows, tokens, enc, dec = m.groups()
    text = json.loads(out)["text"]
    return {"engine": "ytcaption", "model": model, "wall_s": float(wall), "proc_s": proc,
            # No separate figure from the CLI: start-up (runtime + sessions + audio open).
            "load_s": proc - float(wall), "encoder_s": float(enc), "decoder_s": float(dec),
            "windows": int(windows), "tokens": int(tokens), "rss_mb": rss, "text": text,
            "wer": wer(clip["text"], text)}


def run_fw(a, model: str, compute: str, clip: dict) -> dict:
    out, _, proc, rss = timed(fw_cmd(a, model, compute, clip["wav"]))
    r = json.loads(out.strip().splitlines()[-1])
    return {"engine": "faster-whisper", "model": f"{model} {compute}", "wall_s": r["wall_s"],
            "proc_s": proc, "load_s": r["load_s"], "import_s": r["import_s"],
            "encoder_s": r["encoder_s"], "decoder_s": r["decoder_s"], "windows": r["windows"],
            "tokens": r["tokens"], "rss_mb": rss, "text": r["text"],
            "wer": wer(clip["text"], r["text"])}


def summarise(runs: list, seconds: float) -> dict:
    med = lambda k: statistics.median(r[k] for r in runs)  # noqa: E731
    s = {k: med(k) for k in ("wall_s", "proc_s", "load_s", "encoder_s", "decoder_s", "rss_mb",
                             "tokens", "windows", "wer")}
    s["rtf"] = seconds / s["wall_s"]
    s["wall_by_rep"] = [r["wall_s"] for r in runs]
    s["ms_per_token"] = 1000 * s["decoder_s"] / max(s["tokens"], 1)
    s["wall_all_s"] = [round(r["wall_s"], 3) for r in runs]
    s["wer_all"] = sorted({round(r["wer"], 4) for r in runs})
    s["text"] = runs[-1]["text"]
    if "import_s" in runs[0]:
        s["import_s"] = med("import_s")
    return s


# --- report --------------------------------------------------------------------------------


def fmt_row(label: str, s: dict) -> str:
    return (f"  {label:<24} {s['rtf']:6.1f}x {s['wall_s']:7.2f} {s['encoder_s']:7.2f} "
            f"{s['decoder_s']:7.2f} {s['ms_per_token']:7.1f} {s['tokens']:6.0f} "
            f"{s['load_s']:6.2f} {s['proc_s']:7.2f} {s['rss_mb']:7.0f} {100 * s['wer']:6.1f}%")


HEADER = (f"  {'engine':<24} {'RTF':>7} {'wall s':>7} {'enc s':>7} {'dec s':>7} {'ms/tok':>7} "
          f"{'tokens':>6} {'load s':>6} {'proc s':>7} {'RSS MB':>7} {'WER':>7}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--bin", required=True)
    p.add_argument("--ct2", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--command", default="")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--models", default="base tiny.en")
    p.add_argument("--precisions", default="fp32 int8")
    p.add_argument("--clips", default="short long")
    p.add_argument("--word-timestamps", action="store_true")
    a = p.parse_args()
    if a.reps < 1:
        sys.exit("bench.py: --reps must be at least 1")
    models, precisions = a.models.split(), a.precisions.split()
    for pr in precisions:
        if pr not in PRECISIONS:
            sys.exit(f"bench.py: unknown precision {pr!r} (fp32, int8)")
    out = Path(a.out)
    clips = resolve_clips(a.clips.split(), out / "clips")
    started = time.time()

    # Page cache: read every model file once so that the first repetition is no cold load.
    onnx = onnx_models_dir()
    for m in models:
        files = list((Path(a.ct2) / m).glob("*"))
        for pr in precisions:
            files += list((onnx / (m + PRECISIONS[pr][0])).glob("*"))
        for path in files:
            with open(path, "rb") as fh:
                while fh.read(1 << 24):
                    pass

    configs = [(c, m, pr) for c in clips for m in models for pr in precisions]
    runs = {cfg: {"ytcaption": [], "faster-whisper": []} for cfg in configs}
    n, total = 0, a.reps * len(configs) * 2
    for rep in range(a.reps):
        for cfg in configs:
            c, m, pr = cfg
            suffix, compute = PRECISIONS[pr]
            for engine in ("ytcaption", "faster-whisper"):
                n += 1
                log(f"[{n}/{total}] rep {rep + 1}: {engine} {m} {pr} on {c}")
                r = (run_ytcaption(a, m + suffix, clips[c]) if engine == "ytcaption"
                     else run_fw(a, m, compute, clips[c]))
                r["rep"] = rep
                runs[cfg][engine].append(r)

    results, lines = [], []
    lines.append(f"ytcaption vs faster-whisper 1.2.1 (CTranslate2, same weights), "
                 f"{a.threads} threads, median of {a.reps} interleaved runs, "
                 f"{'with' if a.word_timestamps else 'no'} word timestamps")
    lines.append("RTF = audio s / transcription wall s (model load excluded; audio decoding "
                 "included). load s: faster-whisper = WhisperModel(); ytcaption = process wall "
                 "- transcription wall (no separate figure). proc s: whole process. "
                 "WER: lowercase, no punctuation, word Levenshtein.")
    for c, info in clips.items():
        lines.append(f"clip {c}: {info['seconds']:.1f} s ({info['source']})")
    for cfg in configs:
        c, m, pr = cfg
        secs = clips[c]["seconds"]
        y = summarise(runs[cfg]["ytcaption"], secs)
        f = summarise(runs[cfg]["faster-whisper"], secs)
        ratio = y["rtf"] / f["rtf"]
        # Each repetition's ytcaption run and faster-whisper run are back to back: their ratio
        # cancels most of the load from other work on the machine.
        paired = statistics.median(fw_ / yw_ for yw_, fw_ in zip(y["wall_by_rep"], f["wall_by_rep"]))
        suffix, compute = PRECISIONS[pr]
        lines.append("")
        lines.append(f"== {m} {pr} on {c} ({secs:.1f} s, {y['windows']:.0f} window(s)): "
                     f"ytcaption {m}{suffix} vs faster-whisper compute_type={compute}")
        lines.append(HEADER)
        lines.append(fmt_row("ytcaption", y))
        lines.append(fmt_row("faster-whisper", f))
        lines.append(f"  throughput ytcaption / faster-whisper: {ratio:.2f}x (median of per-rep "
                     f"ratios {paired:.2f}x)   "
                     f"(encoder {f['encoder_s'] / max(y['encoder_s'], 1e-9):.2f}x, "
                     f"decoder ms/token {f['ms_per_token'] / max(y['ms_per_token'], 1e-9):.2f}x, "
                     f"RSS {y['rss_mb'] / f['rss_mb']:.2f} of faster-whisper's)")
        for label, s in (("ytcaption", y), ("faster-whisper", f)):
            if len(s["wer_all"]) > 1:
                lines.append(f"  note: {label} WER varied across runs: {s['wer_all']}")
        results.append({"clip": c, "model": m, "precision": pr, "audio_s": secs,
                        "ytcaption_model": m + suffix, "faster_whisper_compute_type": compute,
                        "throughput_ratio": ratio, "paired_ratio": paired, "ytcaption": y, "faster_whisper": f})

    lines.append("")
    lines.append(f"  {'summary':<34} {'yt RTF':>7} {'fw RTF':>7} {'ratio':>6} {'paired':>6} "
                 f"{'yt RSS':>7} "
                 f"{'fw RSS':>7} {'yt WER':>7} {'fw WER':>7}")
    for r in results:
        y, f = r["ytcaption"], r["faster_whisper"]
        lines.append(f"  {r['model'] + ' ' + r['precision'] + ' ' + r['clip']:<34} "
                     f"{y['rtf']:6.1f}x {f['rtf']:6.1f}x {r['throughput_ratio']:5.2f}x "
                     f"{r['paired_ratio']:5.2f}x "
                     f"{y['rss_mb']:7.0f} {f['rss_mb']:7.0f} {100 * y['wer']:6.1f}% "
                     f"{100 * f['wer']:6.1f}%")
    audio = sum(r["audio_s"] for r in results)
    yw = sum(r["ytcaption"]["wall_s"] for r in results)
    fw = sum(r["faster_whisper"]["wall_s"] for r in results)
    lines.append(f"TOTAL: {audio:.1f} s of audio per engine; ytcaption {yw:.1f} s "
                 f"({audio / yw:.1f}x real time), faster-whisper {fw:.1f} s "
                 f"({audio / fw:.1f}x real time); throughput ratio {fw / yw:.2f}x; "
                 f"bench took {time.time() - started:.0f} s")
    c0, m0, p0 = configs[0]
    lines.append(f"command: {a.command or 'deploy/bench/transcribe.sh'}")
    lines.append(f"  per run, e.g.: /usr/bin/time -v "
                 f"{shlex.join(ytcaption_cmd(a, m0 + PRECISIONS[p0][0], clips[c0]['wav']))}")
    lines.append(f"             and /usr/bin/time -v "
                 f"{shlex.join(fw_cmd(a, m0, PRECISIONS[p0][1], clips[c0]['wav']))}")
    report = "\n".join(lines)
    print(report)

    doc = {
        "command": a.command,
        "settings": {"reps": a.reps, "threads": a.threads, "models": models,
                     "precisions": precisions, "word_timestamps": a.word_timestamps,
                     "faster_whisper": {"version": "1.2.1", "beam_size": 1, "best_of": 1,
                                        "temperature": "default fallback 0.0..1.0",
                                        "vad_filter": False,
                                        "condition_on_previous_text": True}},
        "ytcaption_binary": {"path": a.bin, "sha256": sha256(a.bin),
                             "built": time.strftime("%Y-%m-%d %H:%M:%S",
                                                    time.localtime(os.path.getmtime(a.bin)))},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "loadavg_end": os.getloadavg()},
        "clips": clips,
        "results": results,
        "runs": [dict(r, clip=c, precision=pr) for (c, m, pr), e in runs.items()
                 for rs in e.values() for r in rs],
        "total": {"audio_s": audio, "ytcaption_wall_s": yw, "faster_whisper_wall_s": fw,
                  "throughput_ratio": fw / yw},
        "report": report,
    }
    (out / "results.json").write_text(json.dumps(doc, indent=1) + "\n")
    log(f"wrote {out / 'results.json'}")


if __name__ == "__main__":
    main()
