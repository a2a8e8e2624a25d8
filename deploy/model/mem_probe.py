#!/usr/bin/env python3
"""Peak-RSS and speed probe for a converted model, one configuration per fresh process.

    mem_probe.py MODEL_DIR WAV [--threads N] [--arena 0|1] [--pattern 0|1]
                 [--opt disable|basic|extended|all] [--config KEY=VALUE ...] [--steps N]
    mem_probe.py MODEL_DIR WAV --sweep [--repeat R]     (runs the configurations below)

One run: load encoder + decoder with the given session options, encode the first 30 s
window, then greedy-decode --steps tokens (EOT suppressed so every configuration does the
same work; the text up to the first EOT is reported as a correctness check). Prints one
JSON line: RSS high-water marks (VmHWM, MB) after imports, after each session load, after
the encoder run and at the end, plus encoder ms and decoder ms/token.

Numbers are for the Python process: subtract "base" (interpreter + numpy + onnxruntime
import) to compare with the Rust binary, which adds its own ~20-40 MB instead.
"""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def hwm_rss():
    """(VmHWM, VmRSS) of this process in MB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmHWM:", "VmRSS:")):
                k, v = line.split(":")
                out[k] = int(v.split()[0]) / 1024
    return round(out["VmHWM"], 1), round(out["VmRSS"], 1)


def run_one(args):
    import numpy as np
    import onnxruntime as ort
    sys.path.insert(0, HERE)
    import mel_ref

    with open(os.path.join(args.model_dir, "manifest.json")) as f:
        m = json.load(f)
    mel = mel_ref.log_mel(mel_ref.read_wav(args.wav), m["n_mels"])[None].astype(np.float32)
    rep = {"base": hwm_rss()[1]}

    def opts():
        o = ort.SessionOptions()
        o.intra_op_num_threads = args.threads
        o.inter_op_num_threads = 1
        o.enable_cpu_mem_arena = bool(args.arena)
        o.enable_mem_pattern = bool(args.pattern)
        o.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[args.opt]
        for kv in args.config:
            k, v = kv.split("=", 1)
            o.add_session_config_entry(k, v)
        return o

    if args.env_arena is not None:
        # One arena shared by both sessions (they run one after the other, so the decoder
        # reuses the encoder's freed blocks); 1 = kSameAsRequested, 0 = kNextPowerOfTwo.
        mi = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(mi, ort.OrtArenaCfg(0, args.env_arena, -1, -1))
        args.config.append("session.use_env_allocators=1")

    t0 = time.perf_counter()
    enc = ort.InferenceSession(os.path.join(args.model_dir, "encoder.onnx"), opts(),
                               providers=["CPUExecutionProvider"])
    rep["enc_load"] = hwm_rss()[0]
    dec = ort.InferenceSession(os.path.join(args.model_dir, "decoder.onnx"), opts(),
                               providers=["CPUExecutionProvider"])
    rep["load_s"] = round(time.perf_counter() - t0, 2)
    rep["dec_load"], rep["rss_loaded"] = hwm_rss()

    t0 = time.perf_counter()
    cross = dict(zip([o.name for o in enc.get_outputs()], enc.run(None, {"mel": mel})))
    rep["enc_ms"] = round((time.perf_counter() - t0) * 1000)
    rep["enc_run"] = hwm_rss()[0]

    tok = m["tokens"]
    prompt = [tok["sot"]]
    if m["multilingual"]:
        prompt += [dict(m["languages"])["en"], tok["transcribe"]]
    prompt += [tok["no_timestamps"]]
    suppress = np.zeros(m["n_vocab"], bool)
    suppress[m["suppress_ids"]] = True
    suppress[tok["no_timestamps"]:] = True
    # Graph format 4: token rows read from embeddings.f16 as needed (memory-mapped, so only
    # the rows touched count), a fixed cache buffer per layer, filled up to `offset`.
    table = np.memmap(os.path.join(args.model_dir, "embeddings.f16"), dtype="<f2", mode="r",
                      shape=(m["n_vocab"], m["n_text_state"]))
    layers, heads = m["n_text_layer"], m["n_text_head"]
    capacity = min(m["n_text_ctx"], len(prompt) + args.steps + 1)
    cache = {f"self_{kv}_{i}": np.zeros((1, heads, capacity, m["n_text_state"] // heads), np.float32)
             for i in range(layers) for kv in "kv"}
    out_names = [o.name for o in dec.get_outputs()]
    ids, text_end, t0, offset, tokens = [], None, None, 0, prompt
    logits_log = []
    for step in range(args.steps + 1):
        feed = {"embeds": np.asarray(table[np.array([tokens], np.int64)], np.float32),
                "offset": np.array([offset], np.int64),
                **cache, **cross}
        out = dict(zip(out_names, dec.run(None, feed)))
        for name, buf in cache.items():
            buf[:, :, offset:offset + len(tokens)] = out[name.replace("self_", "new_")]
        offset += len(tokens)
        if step == 0:
            t0 = time.perf_counter()  # time the cached single-token steps only
            c0 = time.process_time()
        lg = np.where(suppress, -np.inf, out["logits"][0])
        if text_end is None and int(np.argmax(lg)) == tok["eot"]:
            text_end = len(ids)
        if args.dump_logits and text_end is None:
            logits_log.append(out["logits"][0].copy())
        lg[tok["eot"]] = -np.inf
        nxt = int(np.argmax(lg))
        ids.append(nxt)
        tokens = [nxt]
    rep["dec_ms_tok"] = round((time.perf_counter() - t0) * 1000 / args.steps, 2)
    # CPU time is steadier than wall time on a shared machine (compare at --threads 1).
    rep["dec_cpu_ms_tok"] = round((time.process_time() - c0) * 1000 / args.steps, 2)
    rep["peak"], rep["rss_end"] = hwm_rss()
    rep["tokens"] = ids[:text_end if text_end is not None else len(ids)]
    if args.dump_logits:
        np.save(args.dump_logits, np.stack(logits_log))
    print(json.dumps(rep))


SWEEP = [
    ("default", []),
    ("arena0", ["--arena", "0"]),
    ("pattern0", ["--pattern", "0"]),
    ("arena0+pattern0", ["--arena", "0", "--pattern", "0"]),
    ("noprepack", ["--config", "session.disable_prepacking=1"]),
    ("envalloc", ["--config", "session.use_env_allocators=1"]),
    ("bytes_directly", ["--config", "session.use_ort_model_bytes_directly=1"]),
    ("envarena-same", ["--env-arena", "1"]),
    ("envarena-pow2", ["--env-arena", "0"]),
    ("envarena-same+noprepack", ["--env-arena", "1", "--config", "session.disable_prepacking=1"]),
    ("arena0+noprepack", ["--arena", "0", "--config", "session.disable_prepacking=1"]),
    ("opt=basic", ["--opt", "basic"]),
    ("opt=extended", ["--opt", "extended"]),
    ("threads=1", ["--threads", "1"]),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir")
    ap.add_argument("wav")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--arena", type=int, default=1)
    ap.add_argument("--pattern", type=int, default=1)
    ap.add_argument("--opt", default="all", choices=["disable", "basic", "extended", "all"])
    ap.add_argument("--config", action="append", default=[], help="session config KEY=VALUE")
    ap.add_argument("--env-arena", type=int, choices=[0, 1],
                    help="register a shared CPU arena (extend strategy 0 or 1) and use it")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--dump-logits", help="save the logits of the text steps to this .npy")
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--only", help="comma-separated subset of sweep names")
    args = ap.parse_args()
    if not args.sweep:
        return run_one(args)
    only = set(args.only.split(",")) if args.only else None
    for r in range(args.repeat):  # interleaved, so machine noise hits every config alike
        for name, extra in SWEEP:
            if only and name not in only:
                continue
            cmd = [sys.executable, __file__, args.model_dir, args.wav, "--steps", str(args.steps),
                   "--threads", str(args.threads), *extra]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                print(f"{name}: FAILED\n{out.stderr}", file=sys.stderr)
                continue
            rep = json.loads(out.stdout.strip().splitlines()[-1])
            rep.pop("tokens")
            print(json.dumps({"cfg": name, **rep}), flush=True)


if __name__ == "__main__":
    main()
