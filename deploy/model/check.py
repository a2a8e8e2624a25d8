#!/usr/bin/env python3
"""Prove a converted model directory works, independently of the Rust engine.

    check.py MODEL_DIR WAV_16k_MONO [--language CODE]

Runs encoder.onnx + decoder.onnx with onnxruntime on the first 30 s of the WAV
(mel from mel_ref.py), greedy-decodes without timestamps and prints the text on
stdout. Before decoding it checks the decoder contract on the real prompt:
  - cross_qk has shape [1, len(alignment_heads), n, 1500];
  - feeding the prompt at once (empty cache) and token by token through the fixed-size
    cache gives the same logits and the same cache (int8: the same next token, since
    dynamic quantization scales activations per tensor, i.e. per call).
Diagnostics go to stderr; exit status 1 on a failed check.
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import onnxruntime as ort

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mel_ref  # noqa: E402

TOL = 2e-3  # fp32 reassociation between the two feeding orders; real bugs show up as O(1)


def die(msg):
    print(f"check: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def byte_decoder():
    # GPT-2 byte-level BPE spells each byte as a printable unicode character.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


class Model:
    def __init__(self, model_dir):
        with open(os.path.join(model_dir, "manifest.json")) as f:
            self.m = json.load(f)
        with open(os.path.join(model_dir, "tokenizer.json"), encoding="utf-8") as f:
            vocab = json.load(f)["model"]["vocab"]
        self.id_to_token = {i: t for t, i in vocab.items()}
        self.bytes_of = byte_decoder()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 2
        load = lambda f: ort.InferenceSession(os.path.join(model_dir, f), opts,
                                              providers=["CPUExecutionProvider"])
        self.encoder, self.decoder = load("encoder.onnx"), load("decoder.onnx")
        m = self.m
        self.layers = m["n_text_layer"]
        heads = m["n_text_head"]
        hd = m["n_text_state"] // heads
        # Token embeddings are looked up here, in embeddings.f16 (graph format 4).
        self.table = np.fromfile(os.path.join(model_dir, "embeddings.f16"), dtype="<f2").reshape(
            m["n_vocab"], m["n_text_state"])
        # The cache is a fixed buffer: room for the longest sequence.
        self.capacity = m["n_text_ctx"] // 2
        zero = np.zeros((1, heads, self.capacity, hd), np.float32)
        self.empty = (0, {f"self_{kv}_{i}": zero for i in range(self.layers) for kv in "kv"})

    def encode(self, mel):
        names = [o.name for o in self.encoder.get_outputs()]
        return dict(zip(names, self.encoder.run(None, {"mel": mel})))

    def decode_step(self, tokens, cache, cross):
        """One decoder call; returns its outputs by name plus "cache", the next step's cache
        as (filled positions, buffers)."""
        offset, buffers = cache
        names = [o.name for o in self.decoder.get_outputs()]
        out = dict(zip(names, self.decoder.run(
            None, {"embeds": self.table[np.array([tokens], np.int64)].astype(np.float32),
                   "offset": np.array([offset], np.int64),
                   **buffers, **cross})))
        end = offset + len(tokens)
        if end > self.capacity:
            die(f"sequence longer than the cache ({self.capacity})")
        nxt = {}
        for i in range(self.layers):
            for kv in "kv":
                buf = buffers[f"self_{kv}_{i}"].copy()
                buf[:, :, offset:end] = out[f"new_{kv}_{i}"]
                nxt[f"self_{kv}_{i}"] = buf
        out["cache"] = (end, nxt)
        return out

    def text(self, ids):
        eot = self.m["tokens"]["eot"]
        data = b"".join(bytes(self.bytes_of[c] for c in self.id_to_token[i]) for i in ids if i < eot)
        return data.decode("utf-8", errors="replace")


def check_contract(model, prompt, cross):
    m = model.m
    whole = model.decode_step(prompt, model.empty, cross)
    want = (1, len(m["alignment_heads"]), len(prompt), m["n_audio_ctx"])
    if whole["cross_qk"].shape != want:
        die(f"cross_qk shape {whole['cross_qk'].shape}, expected {want}")
    if whole["logits"].shape != (1, m["n_vocab"]):
        die(f"logits shape {whole['logits'].shape}, expected (1, {m['n_vocab']})")
    cache = model.empty
    for t in prompt:
        step = model.decode_step([t], cache, cross)
        cache = step["cache"]
        if step["cross_qk"].shape != want[:2] + (1, want[3]):
            die(f"single-token cross_qk shape {step['cross_qk'].shape}")
    d_logits = np.abs(step["logits"] - whole["logits"]).max()
    filled = cache[0]
    d_cache = max(np.abs(cache[1][name][:, :, :filled] - whole["cache"][1][name][:, :, :filled]).max()
                  for name in cache[1])
    # The last row of cross_qk must agree too: it is what word timestamps are built from.
    d_qk = np.abs(step["cross_qk"][:, :, 0] - whole["cross_qk"][:, :, -1]).max()
    print(f"check: cross_qk {whole['cross_qk'].shape}; prompt at once vs cached: "
          f"logits {d_logits:.2e}, cache {d_cache:.2e}, cross_qk {d_qk:.2e}", file=sys.stderr)
    if m["precision"] == "int8":
        # Dynamic quantization picks one activation scale per tensor, so n tokens at once and
        # one at a time quantize differently: only the decision has to agree. The fp16 variant
        # (same graph builder) is the exact test of the cache and mask.
        if step["logits"].argmax() != whole["logits"].argmax():
            die("int8: cached and uncached decoding pick different tokens")
    elif max(d_logits, d_cache, d_qk) > TOL:
        die("cached and uncached decoding disagree; the cache or causal mask is wrong")
    return whole


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir")
    ap.add_argument("wav")
    ap.add_argument("--language", help="language code for multilingual models (default: detect)")
    args = ap.parse_args()

    model = Model(args.model_dir)
    m, tok = model.m, model.m["tokens"]
    mel = mel_ref.log_mel(mel_ref.read_wav(args.wav), m["n_mels"])[None]
    t0 = time.perf_counter()
    cross = model.encode(mel)
    t_enc = time.perf_counter() - t0
    heads, T = m["n_text_head"], m["n_audio_ctx"]
    hd = m["n_text_state"] // heads
    for i in range(m["n_text_layer"]):
        for name, want in ((f"cross_k_{i}", (1, heads, hd, T)), (f"cross_v_{i}", (1, heads, T, hd))):
            if cross.get(name) is None or cross[name].shape != want:
                die(f"encoder output {name} is missing or not {want}")

    prompt = [tok["sot"]]
    if m["multilingual"]:
        langs = dict(m["languages"])
        if args.language:
            if args.language not in langs:
                die(f"unknown language {args.language!r}; see 'languages' in manifest.json")
            lang = args.language
        else:
            logits = model.decode_step(prompt, model.empty, cross)["logits"][0]
            lang = max(langs, key=lambda c: logits[langs[c]])
        print(f"check: language {lang}", file=sys.stderr)
        prompt += [langs[lang], tok["transcribe"]]
    prompt += [tok["no_timestamps"]]

    out = check_contract(model, prompt, cross)
    suppress = np.zeros(m["n_vocab"], bool)
    suppress[m["suppress_ids"]] = True
    suppress[tok["no_timestamps"]:] = True  # no timestamp tokens in no-timestamp mode
    begin = suppress.copy()
    begin[m["suppress_ids_begin"]] = True

    ids, t0 = [], time.perf_counter()
    while len(ids) < m["n_text_ctx"] // 2:
        logits = np.where(begin if not ids else suppress, -np.inf, out["logits"][0])
        nxt = int(np.argmax(logits))
        if nxt == tok["eot"]:
            break
        ids.append(nxt)
        out = model.decode_step([nxt], out["cache"], cross)
    t_dec = time.perf_counter() - t0
    print(f"check: encoder {t_enc * 1000:.0f} ms, decoder {t_dec * 1000 / max(len(ids), 1):.1f} ms/token, "
          f"{len(ids)} tokens", file=sys.stderr)
    print(model.text(ids).strip())


if __name__ == "__main__":
    main()
