#!/usr/bin/env python3
"""Convert a CTranslate2 Whisper model directory into the two ONNX graphs ytcaption runs.

    ct2_to_onnx.py SRC_CT2_DIR OUT_DIR --name NAME [--int8]

SRC_CT2_DIR holds model.bin, config.json and tokenizer.json, the layout of every
faster-whisper model (tiny ... large-v3), so users can bring models they already have.
Only numpy and onnx are needed (plus onnxruntime for --int8): no torch, no ctranslate2.

OUT_DIR receives encoder.onnx, decoder.onnx, embeddings.f16, tokenizer.json, config.json
and manifest.json. The I/O contract the Rust engine relies on:

  (manifest "format": 4; l = 0 .. L-1 over decoder layers, H heads of hd = D/H)
  encoder  mel f32 [B, n_mels, 3000] -> cross_k_l f32 [B, H, hd, 1500] (keys, transposed)
                                        cross_v_l f32 [B, H, 1500, hd]
           (cross-attention K/V of every decoder layer, computed once per window, in
           the layout the decoder multiplies with: no per-token slicing or transposing)
  embeddings.f16: the token embedding table, raw little-endian fp16 [n_vocab, D], row-major:
           the caller looks up the rows of its tokens itself (reading them from the file,
           so the table never sits in memory).
  decoder  embeds f32 [B, n, D] (token embeddings), offset i64 [1],
           self_k_l/self_v_l f32 [B, H, C, hd],
           cross_k_l, cross_v_l
           -> logits f32 [B, V] (last position only), new_k_l/new_v_l [B, H, n, hd] (the n
              new positions only), cross_qk f32 [B, H_align, n, 1500] (pre-softmax
              q.k/sqrt(hd) of the alignment heads, in manifest order)
  The self-attention cache is a fixed buffer of C positions (1 <= C <= n_text_ctx, and
  offset + n <= C) of which the first `offset` are filled; the caller copies new_k/new_v
  into it at [offset, offset + n) after each call. An empty cache is offset 0, so the prompt uses the
  same graph.

Weights stay fp16 on disk and are Cast to fp32 in-graph; --int8 makes the linear layers
int8: the encoder's with one scale per activation row and per output column
(Graph.linear_int8_rows), the decoder's through onnxruntime's quantize_dynamic (positional
tables and convolutions stay fp16). The tied embedding table is the largest
tensor; see build_decoder for how each variant keeps a single run-time copy of it.
Graphs use com.microsoft CPU ops (FusedMatMul, MultiHeadAttention; MatMulIntegerToFloat and
DynamicQuantizeMatMul for --int8),
which every standard onnxruntime build has (contrib ops; not minimal builds).

Memory: measured with deploy/model/mem_probe.py (peak RSS of a full greedy decode).
"""

import argparse
import hashlib
import json
import os
import shutil
import struct
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REVISION = 2  # manifest "revision", see main
OPSET = 17  # first opset with LayerNormalization; every onnxruntime >= 1.14 runs it
LN_EPS = 1e-5
# A single protobuf file cannot exceed 2 GiB; large-v3 in fp32 (the --int8 input) would.
EXTERNAL_DATA_BYTES = 1_500_000_000


def die(msg):
    print(f"ct2_to_onnx: error: {msg}", file=sys.stderr)
    sys.exit(1)


# ---------------------------------------------------------------------------
# CTranslate2 model.bin reader
# ---------------------------------------------------------------------------

# CTranslate2's DataType enum, in file order.
CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}


def read_ct2(path):
    """Return {name: ndarray} for every variable (aliases resolved) plus the spec name."""
    with open(path, "rb") as f:
        buf = f.read()
    pos = 0

    def take(fmt):
        nonlocal pos
        vals = struct.unpack_from(fmt, buf, pos)
        pos += struct.calcsize(fmt)
        return vals[0] if len(vals) == 1 else vals

    def string():
        nonlocal pos
        n = take("<H")  # length includes the trailing NUL
        s = buf[pos:pos + n - 1].decode("utf-8")
        pos += n
        return s

    version = take("<I")
    if version < 5 or version > 6:
        die(f"{path}: CTranslate2 binary version {version} is not supported (need 5 or 6); "
            "re-convert it with a current ct2-transformers-converter")
    spec = string()
    take("<I")  # spec revision: the variable names below have been stable across revisions
    if spec != "WhisperSpec":
        die(f"{path}: this is a {spec!r} model, not a Whisper model")
    variables = {}
    for _ in range(take("<I")):
        name = string()
        rank = take("<B")
        dims = [take("<I") for _ in range(rank)]
        dtype = CT2_DTYPES.get(take("<B"))
        nbytes = take("<I")
        raw = buf[pos:pos + nbytes]
        pos += nbytes
        if dtype is None:
            die(f"{path}: variable {name} has an unknown dtype")
        if dtype == "bfloat16":
            arr = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(raw, dtype)
        variables[name] = arr.reshape(dims)
    for _ in range(take("<I")):
        alias, target = string(), string()
        variables[alias] = variables[target]
    if pos != len(buf):
        die(f"{path}: {len(buf) - pos} trailing bytes; the file is truncated or not a CT2 model")
    return variables


class Weights:
    """Float access to CT2 variables, undoing CT2's int8 row quantization when present."""

    def __init__(self, variables):
        self.v = variables

    def __contains__(self, name):
        return name in self.v

    def get(self, name):
        if name not in self.v:
            die(f"model.bin has no variable {name}; is this a complete Whisper model?")
        arr = self.v[name]
        scale = self.v.get(name + "_scale")
        if arr.dtype == np.int8 and scale is not None:
            # CT2 stores int8 weights as round(w * scale) with one scale per output row.
            return arr.astype(np.float32) / scale.astype(np.float32).reshape(-1, 1)
        if arr.dtype not in (np.float16, np.float32):
            die(f"variable {name} has dtype {arr.dtype}, which this converter cannot read")
        return arr

    def scalar(self, name):
        return int(self.v[name].reshape(-1)[0])


# ---------------------------------------------------------------------------
# Graph building
# ---------------------------------------------------------------------------

class Graph:
    def __init__(self, fp32_linears, store_fp32=False, int8_rows=False):
        self.nodes, self.inits, self.count = [], [], 0
        self.fp32_linears = fp32_linears  # for quantize_dynamic, which reads fp32 MatMul weights
        self.int8_rows = int8_rows  # linears quantized here, per activation row (linear_int8_rows)
        self.quantized_rows = {}  # activation name -> (uint8 rows, row scales), see quantize_rows
        self.store_fp32 = store_fp32  # every float weight fp32 on disk: no fp16 copy at run time
        self.consts = {}
        self.ms_domain = False

    def fresh(self, hint):
        self.count += 1
        return f"{hint}_{self.count}"

    def op(self, op_type, inputs, outputs=1, name_hint=None, **attrs):
        hint = name_hint or op_type.lower()
        outs = [self.fresh(hint) for _ in range(outputs)] if isinstance(outputs, int) else outputs
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=self.fresh(op_type), **attrs))
        return outs[0] if len(outs) == 1 else outs

    def const(self, value, dtype):
        # Small constants are deduplicated so the graph stays readable in Netron.
        arr = np.array(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self.consts:
            name = self.fresh("const")
            self.inits.append(numpy_helper.from_array(arr, name))
            self.consts[key] = name
        return self.consts[key]

    def i64(self, value):
        return self.const(value, np.int64)

    def f32(self, value):
        return self.const(value, np.float32)

    def weight(self, arr, name, fp32=False):
        """Add a float tensor; fp16 on disk with an in-graph Cast unless fp32 is asked for."""
        if fp32 or self.store_fp32:
            self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr, np.float32), name))
            return name
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr, np.float16), name))
        return self.op("Cast", [name], name_hint=name + "_f32", to=TensorProto.FLOAT)

    def quantize_rows(self, x, k):
        """x f32 [B, T, k] -> (uint8 [B*T, k], zero point 128, and f32 scales [B*T, 1]):
        each row symmetrically on its own absolute maximum. Done once per activation (the six
        cross-attention linears of base all read the encoder output)."""
        cache = self.quantized_rows
        if x not in cache:
            x2 = self.op("Reshape", [x, self.i64([-1, k])])
            absmax = self.op("ReduceMax", [self.op("Abs", [x2])], axes=[-1], keepdims=1)
            s_x = self.op("Div", [self.op("Max", [absmax, self.f32(1e-8)]), self.f32(127.0)])
            s1 = self.op("Reshape", [s_x, self.i64([-1])])
            zp = self.op("Expand", [self.const(128, np.uint8), self.op("Shape", [s1])])
            cache[x] = (self.op("QuantizeLinear", [x2, s1, zp], axis=0), s_x)
        return cache[x]

    def linear_int8_rows(self, x, w, prefix):
        """int8 linear with one scale per activation row and one per output column, as
        CTranslate2 quantizes. onnxruntime's quantize_dynamic scales a whole [B*1500, D]
        activation at once: its base encoder output was 22% off fp32 (relative L2 over the
        cross K/V on a speech window), this 7%, for about 5% more encoder time. The integer
        product is u8 x s8 (zero point 128), which MLAS runs fast; s8 x s8 measured 12x slower."""
        wt = w.get(prefix + "/weight").T.astype(np.float32)  # [in, out]
        k, n = wt.shape
        s_w = np.maximum(np.abs(wt).max(axis=0), 1e-8) / 127.0
        wq = np.clip(np.rint(wt / s_w), -127, 127).astype(np.int8)
        wq_name = prefix + "/weight_q"
        self.inits.append(numpy_helper.from_array(wq, wq_name))
        xq, s_x = self.quantize_rows(x, k)
        self.ms_domain = True
        y = self.fresh("mmi2f")
        self.nodes.append(helper.make_node(
            "MatMulIntegerToFloat", [xq, wq_name, self.f32(1.0), self.f32(s_w),
                                     self.const(128, np.uint8)], [y],
            name=self.fresh("MatMulIntegerToFloat"), domain="com.microsoft"))
        b = self.weight(w.get(prefix + "/bias"), prefix + "/bias")
        y = self.op("Add", [self.op("Mul", [y, s_x]), b])
        shape = self.op("Concat", [self.op("Slice", [self.op("Shape", [x]), self.i64([0]), self.i64([2])]),
                                   self.i64([n])], axis=0)
        return self.op("Reshape", [y, shape])

    def linear(self, x, w, prefix):
        if self.int8_rows:
            return self.linear_int8_rows(x, w, prefix)
        # MatMul against W^T stored [in, out]; quantize_dynamic only recognises MatMul
        # with a constant right-hand side, and 3-D activations rule out Gemm here.
        wt = self.weight(w.get(prefix + "/weight").T, prefix + "/weight_t", fp32=self.fp32_linears)
        b = self.weight(w.get(prefix + "/bias"), prefix + "/bias")
        return self.op("Add", [self.op("MatMul", [x, wt]), b])

    def layer_norm(self, x, w, prefix):
        g = self.weight(w.get(prefix + "/gamma"), prefix + "/gamma")
        b = self.weight(w.get(prefix + "/beta"), prefix + "/beta")
        return self.op("LayerNormalization", [x, g, b], axis=-1, epsilon=LN_EPS)

    def gelu(self, x):
        # Exact erf GELU as Whisper trains it; onnxruntime fuses this exact pattern.
        e = self.op("Erf", [self.op("Div", [x, self.f32(np.sqrt(2.0))])])
        return self.op("Mul", [self.op("Mul", [x, self.op("Add", [e, self.f32(1.0)])]), self.f32(0.5)])

    def matmul_bt(self, a, b, hint):
        """a @ b^T as one com.microsoft FusedMatMul: no Transpose node, no transposed copy."""
        self.ms_domain = True
        out = self.fresh(hint)
        self.nodes.append(helper.make_node("FusedMatMul", [a, b], [out], name=self.fresh("FusedMatMul"),
                                           domain="com.microsoft", transB=1, alpha=1.0))
        return out

    def split_last(self, x, d, parts):
        return self.op("Split", [x, self.i64([d] * parts)], outputs=parts, axis=-1)

    def self_attention(self, q, k, v, heads):
        """Unmasked multi-head attention on [B, T, D] tensors: onnxruntime's fused
        MultiHeadAttention, which never materialises the [B, H, T, T] scores (the encoder's
        would be 72 MB per layer for 8 heads). Against a head-by-head MatMul/Softmax graph it
        measured the same encoder output (max abs difference 9e-5), up to 7% faster and
        30-50 MB lower peak memory on base."""
        self.ms_domain = True
        out = self.fresh("mha")
        self.nodes.append(helper.make_node("MultiHeadAttention", [q, k, v], [out], name=self.fresh("MHA"),
                                           domain="com.microsoft", num_heads=heads))
        return out

    def model(self, inputs, outputs, name):
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.inits)
        opsets = [helper.make_opsetid("", OPSET)]
        if self.ms_domain:
            opsets.append(helper.make_opsetid("com.microsoft", 1))
        m = helper.make_model(graph, opset_imports=opsets,
                              producer_name="ytcaption ct2_to_onnx")
        m.ir_version = 8  # readable by onnxruntime >= 1.10
        return m


def dims_of(w):
    """Read the architecture from the tensors themselves, so any model size works."""
    def count_layers(side):
        n = 0
        while f"{side}/layer_{n}/ffn/linear_0/weight" in w:
            n += 1
        return n

    conv1 = w.get("encoder/conv1/weight")
    emb = w.get("decoder/embeddings/weight")
    d = dict(
        n_mels=int(conv1.shape[1]),
        n_audio_ctx=int(w.get("encoder/position_encodings/encodings").shape[0]),
        n_audio_state=int(conv1.shape[0]),
        n_audio_layer=count_layers("encoder"),
        n_audio_head=w.scalar("encoder/num_heads"),
        n_text_ctx=int(w.get("decoder/position_encodings/encodings").shape[0]),
        n_text_state=int(emb.shape[1]),
        n_text_layer=count_layers("decoder"),
        n_text_head=w.scalar("decoder/num_heads"),
        n_vocab=int(emb.shape[0]),
    )
    if d["n_audio_ctx"] != 1500:
        die(f"encoder context is {d['n_audio_ctx']}, expected 1500 (30 s windows)")
    if d["n_audio_state"] != d["n_text_state"]:
        die("encoder and decoder widths differ; this is not a standard Whisper model")
    if "decoder/scale_embeddings" in w and w.scalar("decoder/scale_embeddings"):
        die("decoder/scale_embeddings is set; Whisper models never scale embeddings")
    if "decoder/activation" in w and w.scalar("decoder/activation") != 3:
        die("activation is not exact GELU (CT2 id 3); this is not a Whisper model")
    return d


def build_encoder(w, dims, alignment, int8, store_fp32):
    # int8: every linear here reads 1500 rows per window, so per-row scales pay off. The
    # decoder reads one row per window and step; it keeps quantize_dynamic (per-row there
    # measured slower and no more accurate).
    g = Graph(False, store_fp32 and not int8, int8_rows=int8)
    d, h = dims["n_audio_state"], dims["n_audio_head"]
    x = g.op("Conv", ["mel", g.weight(w.get("encoder/conv1/weight"), "encoder/conv1/weight"),
                      g.weight(w.get("encoder/conv1/bias"), "encoder/conv1/bias")],
             kernel_shape=[3], pads=[1, 1])
    x = g.gelu(x)
    x = g.op("Conv", [x, g.weight(w.get("encoder/conv2/weight"), "encoder/conv2/weight"),
                      g.weight(w.get("encoder/conv2/bias"), "encoder/conv2/bias")],
             kernel_shape=[3], pads=[1, 1], strides=[2])
    x = g.gelu(x)
    x = g.op("Transpose", [x], perm=[0, 2, 1])
    x = g.op("Add", [x, g.weight(w.get("encoder/position_encodings/encodings"), "encoder/pos")])
    for i in range(dims["n_audio_layer"]):
        p = f"encoder/layer_{i}"
        hn = g.layer_norm(x, w, p + "/self_attention/layer_norm")
        q, k, v = g.split_last(g.linear(hn, w, p + "/self_attention/linear_0"), d, 3)
        a = g.self_attention(q, k, v, h)
        x = g.op("Add", [x, g.linear(a, w, p + "/self_attention/linear_1")])
        hn = g.layer_norm(x, w, p + "/ffn/layer_norm")
        f = g.linear(g.gelu(g.linear(hn, w, p + "/ffn/linear_0")), w, p + "/ffn/linear_1")
        x = g.op("Add", [x, f])
    xa = g.layer_norm(x, w, "encoder/layer_norm")
    # Cross-attention keys and values of every decoder layer, split into heads once here in
    # the layout the decoder multiplies with directly (K already transposed), one output per
    # layer: the decoder then never slices or transposes them on its per-token steps.
    L, T, hd = dims["n_text_layer"], dims["n_audio_ctx"], d // dims["n_text_head"]
    ht = dims["n_text_head"]
    for i in range(L):
        k, v = g.split_last(g.linear(xa, w, f"decoder/layer_{i}/attention/linear_1"), d, 2)
        shape = g.i64([0, 0, ht, hd])
        g.op("Transpose", [g.op("Reshape", [k, shape])], outputs=[f"cross_k_{i}"], perm=[0, 2, 3, 1])
        g.op("Transpose", [g.op("Reshape", [v, shape])], outputs=[f"cross_v_{i}"], perm=[0, 2, 1, 3])

    inputs = [helper.make_tensor_value_info("mel", TensorProto.FLOAT, ["batch", dims["n_mels"], 2 * T])]
    outputs = []
    for i in range(L):
        outputs.append(helper.make_tensor_value_info(f"cross_k_{i}", TensorProto.FLOAT, ["batch", ht, hd, T]))
        outputs.append(helper.make_tensor_value_info(f"cross_v_{i}", TensorProto.FLOAT, ["batch", ht, T, hd]))
    return g.model(inputs, outputs, "whisper_encoder")


def build_decoder(w, dims, alignment, int8, store_fp32):
    g = Graph(int8, store_fp32 and not int8)
    d, h, L = dims["n_text_state"], dims["n_text_head"], dims["n_text_layer"]
    T, V = dims["n_audio_ctx"], dims["n_vocab"]

    # Scalar indices everywhere: Gather with a 1-element vector index would keep an axis.
    hd = d // h
    past = g.op("Squeeze", ["offset", g.i64([0])], name_hint="past")
    n = g.op("Gather", [g.op("Shape", ["embeds"]), g.i64(1)], axis=0, name_hint="n")
    cap = g.op("Gather", [g.op("Shape", ["self_k_0"]), g.i64(2)], axis=0, name_hint="capacity")
    end = g.op("Add", [past, n], name_hint="end")

    # The tied embedding table is the largest tensor of the model (V x D). The graph keeps it
    # only for the output projection; token embeddings come in as `embeds`, looked up by the
    # caller in embeddings.f16 (written next to the graphs), so no copy of the table is held
    # for the lookup (53 MB of resident memory for base):
    #  - int8: one int8 copy, transposed [D, V], with one scale per vocabulary entry; the
    #    projection is a DynamicQuantizeMatMul on it (per-column scales).
    #  - fp32 on disk: the Gemm's fp32 table.
    #  - fp16 on disk: the fp16 table, Cast for the Gemm; the Cast is constant-folded at load
    #    and the fp16 initializer, used by nothing else, is dropped.
    emb_w = w.get("decoder/embeddings/weight")
    if int8:
        e = np.asarray(emb_w, np.float32)
        scale = np.abs(e).max(axis=1) / 127.0
        scale[scale == 0] = 1.0
        q = np.clip(np.rint(e / scale[:, None]), -127, 127).astype(np.int8)
        g.inits.append(numpy_helper.from_array(np.ascontiguousarray(q.T), "decoder/embeddings/weight_qt"))
        g.inits.append(numpy_helper.from_array(scale.astype(np.float32), "decoder/embeddings/scale"))
    else:
        emb = g.weight(emb_w, "decoder/embeddings/weight")
    pos_table = g.weight(w.get("decoder/position_encodings/encodings"), "decoder/pos")
    pos = g.op("Slice", [pos_table, g.op("Unsqueeze", [past, g.i64([0])]),
                         g.op("Unsqueeze", [end, g.i64([0])]), g.i64([0])])
    x = g.op("Add", ["embeds", pos])

    # The cache is a fixed buffer of `capacity` positions of which the first `offset` hold
    # keys/values; the rest is masked. Attention is split into that past part and the n new
    # positions, so no step copies the cache (a Concat would copy all of it, every step) and
    # every step of a window has the same shapes. The caller writes new_k/new_v into the
    # buffer at [offset, offset + n).
    past_mask = g.op("Where", [g.op("Less", [g.op("Range", [g.i64(0), cap, g.i64(1)]), past]),
                               g.f32(0.0), g.f32(-np.inf)], name_hint="past_mask")  # [capacity]
    rows = g.op("Unsqueeze", [g.op("Range", [g.i64(0), n, g.i64(1)]), g.i64([1])])
    cols = g.op("Unsqueeze", [g.op("Range", [g.i64(0), n, g.i64(1)]), g.i64([0])])
    new_mask = g.op("Where", [g.op("Greater", [cols, rows]), g.f32(-np.inf), g.f32(0.0)],
                    name_hint="new_mask")  # [n, n], causal
    parts = g.op("Concat", [g.op("Unsqueeze", [cap, g.i64([0])]), g.op("Unsqueeze", [n, g.i64([0])])], axis=0)

    scores = []
    split = g.i64([0, 0, h, hd])
    for i in range(L):
        p = f"decoder/layer_{i}"
        hn = g.layer_norm(x, w, p + "/self_attention/layer_norm")
        q, k, v = g.split_last(g.linear(hn, w, p + "/self_attention/linear_0"), d, 3)
        qh = g.op("Transpose", [g.op("Reshape", [q, split])], perm=[0, 2, 1, 3])
        g.op("Transpose", [g.op("Reshape", [k, split])], outputs=[f"new_k_{i}"], perm=[0, 2, 1, 3])
        g.op("Transpose", [g.op("Reshape", [v, split])], outputs=[f"new_v_{i}"], perm=[0, 2, 1, 3])
        # openai-whisper scales q and k by hd^-0.25 each; one 1/sqrt(hd) on q is the same.
        qh = g.op("Mul", [qh, g.f32(1.0 / np.sqrt(hd))])
        s_past = g.op("Add", [g.matmul_bt(qh, f"self_k_{i}", "self_qk"), past_mask])  # [B, H, n, capacity]
        s_new = g.op("Add", [g.matmul_bt(qh, f"new_k_{i}", "self_qk"), new_mask])  # [B, H, n, n]
        probs = g.op("Softmax", [g.op("Concat", [s_past, s_new], axis=-1)], axis=-1)
        p_past, p_new = g.op("Split", [probs, parts], outputs=2, axis=-1)
        a = g.op("Add", [g.op("MatMul", [p_past, f"self_v_{i}"]), g.op("MatMul", [p_new, f"new_v_{i}"])])
        a = g.op("Reshape", [g.op("Transpose", [a], perm=[0, 2, 1, 3]), g.i64([0, 0, d])])
        x = g.op("Add", [x, g.linear(a, w, p + "/self_attention/linear_1")])

        hn = g.layer_norm(x, w, p + "/attention/layer_norm")
        q = g.linear(hn, w, p + "/attention/linear_0")
        qh = g.op("Transpose", [g.op("Reshape", [q, split])], perm=[0, 2, 1, 3])
        qh = g.op("Mul", [qh, g.f32(1.0 / np.sqrt(hd))])
        s_ = g.op("MatMul", [qh, f"cross_k_{i}"], name_hint="qk")  # [B, H, n, T]
        # Take this layer's alignment heads right away, so its full score tensor can be
        # freed before the next layer instead of living until the end of the graph.
        for order, (layer, head) in enumerate(alignment):
            if layer == i:
                picked = g.op("Gather", [s_, g.i64(head)], axis=1)  # [B, n, T]
                scores.append((order, g.op("Unsqueeze", [picked, g.i64([1])])))
        a = g.op("MatMul", [g.op("Softmax", [s_], axis=-1), f"cross_v_{i}"])  # [B, H, n, hd]
        a = g.op("Reshape", [g.op("Transpose", [a], perm=[0, 2, 1, 3]), g.i64([0, 0, d])])
        x = g.op("Add", [x, g.linear(a, w, p + "/attention/linear_2")])

        hn = g.layer_norm(x, w, p + "/ffn/layer_norm")
        f = g.linear(g.gelu(g.linear(hn, w, p + "/ffn/linear_0")), w, p + "/ffn/linear_1")
        x = g.op("Add", [x, f])

    heads = [head for _, head in sorted(scores)]
    g.op("Concat", heads, outputs=["cross_qk"], axis=1)

    # Only the last position's logits are ever needed; projecting just it saves n-1 rows
    # of the largest matmul in the model.
    last = g.op("Gather", [x, g.i64(-1)], axis=1, name_hint="last")
    last = g.layer_norm(last, w, "decoder/layer_norm")
    if int8:
        g.ms_domain = True
        g.nodes.append(helper.make_node(
            "DynamicQuantizeMatMul", [last, "decoder/embeddings/weight_qt", "decoder/embeddings/scale"],
            ["logits"], name="projection", domain="com.microsoft"))
    else:
        g.op("Gemm", [last, emb], outputs=["logits"], transB=1)

    f32 = lambda name, shape: helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)
    inputs = [f32("embeds", ["batch", "n", d]),
              helper.make_tensor_value_info("offset", TensorProto.INT64, [1])]
    outputs = [f32("logits", ["batch", V])]
    for i in range(L):
        inputs += [f32(f"self_k_{i}", ["batch", h, "capacity", hd]),
                   f32(f"self_v_{i}", ["batch", h, "capacity", hd])]
        outputs += [f32(f"new_k_{i}", ["batch", h, "n", hd]), f32(f"new_v_{i}", ["batch", h, "n", hd])]
    for i in range(L):
        inputs += [f32(f"cross_k_{i}", ["batch", h, hd, T]), f32(f"cross_v_{i}", ["batch", h, T, hd])]
    outputs.append(f32("cross_qk", ["batch", len(alignment), "n", T]))
    return g.model(inputs, outputs, "whisper_decoder")


# ---------------------------------------------------------------------------
# Manifest
# ---------------------------------------------------------------------------

def special_tokens(tokenizer, n_vocab):
    by_content = {t["content"]: t["id"] for t in tokenizer.get("added_tokens", [])}

    def need(*names):
        for name in names:
            if name in by_content:
                return by_content[name]
        die(f"tokenizer.json has no {' or '.join(names)} token; is it a Whisper tokenizer?")

    tokens = {
        "eot": need("<|endoftext|>"),
        "sot": need("<|startoftranscript|>"),
        "translate": need("<|translate|>"),
        "transcribe": need("<|transcribe|>"),
        "sot_lm": need("<|startoflm|>"),
        "sot_prev": need("<|startofprev|>"),
        # Older vocabularies call it <|nocaptions|>, large-v3 and later <|nospeech|>.
        "no_speech": need("<|nospeech|>", "<|nocaptions|>"),
        "no_timestamps": need("<|notimestamps|>"),
    }
    tokens["timestamp_begin"] = tokens["no_timestamps"] + 1
    if tokens["timestamp_begin"] + 1501 != n_vocab:
        die(f"tokenizer.json does not match model.bin: {n_vocab} logits, but timestamps "
            f"start at {tokens['timestamp_begin']}")
    # Language tokens sit between <|startoftranscript|> and <|translate|>, in vocabulary order.
    languages = sorted((tid, c[2:-2]) for c, tid in by_content.items()
                       if tokens["sot"] < tid < tokens["translate"])
    return tokens, [[code, tid] for tid, code in languages]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save(model, path):
    big = sum(len(t.raw_data) for t in model.graph.initializer) > EXTERNAL_DATA_BYTES
    if big:
        onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=os.path.basename(path) + ".data")
    else:
        onnx.save_model(model, path)
    onnx.checker.check_model(path)
    return big


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="CTranslate2 Whisper directory (model.bin, config.json, tokenizer.json)")
    ap.add_argument("out", help="output directory (created; existing files are overwritten)")
    ap.add_argument("--name", required=True, help="model name recorded in manifest.json")
    ap.add_argument("--int8", action="store_true", help="quantize linear layers to int8")
    ap.add_argument("--store", choices=["fp16", "fp32"], default="fp16",
                    help="on-disk precision of the float weights (without --int8); fp32 doubles the files "
                         "and measured ~45 MB *higher* peak RSS for base, so fp16 is the default")
    args = ap.parse_args()

    for f in ("model.bin", "config.json", "tokenizer.json"):
        if not os.path.isfile(os.path.join(args.src, f)):
            die(f"{args.src} has no {f}; point it at a CTranslate2 (faster-whisper) model directory")
    with open(os.path.join(args.src, "config.json")) as f:
        config = json.load(f)
    with open(os.path.join(args.src, "tokenizer.json"), encoding="utf-8") as f:
        tokenizer = json.load(f)

    w = Weights(read_ct2(os.path.join(args.src, "model.bin")))
    dims = dims_of(w)
    alignment = [[int(l), int(h)] for l, h in config.get("alignment_heads") or []]
    if not alignment:
        # openai-whisper's default: every head of the upper half of the decoder.
        alignment = [[l, h] for l in range(dims["n_text_layer"] // 2, dims["n_text_layer"])
                     for h in range(dims["n_text_head"])]
    for l, h in alignment:
        if not (0 <= l < dims["n_text_layer"] and 0 <= h < dims["n_text_head"]):
            die(f"alignment head [{l}, {h}] in config.json is outside the model")
    tokens, languages = special_tokens(tokenizer, dims["n_vocab"])
    multilingual = dims["n_vocab"] >= 51865
    if not multilingual:
        languages = []  # .en vocabularies list language tokens the model never learned

    os.makedirs(args.out, exist_ok=True)
    files = {}
    for part, build in (("encoder", build_encoder), ("decoder", build_decoder)):
        path = os.path.join(args.out, part + ".onnx")
        model = build(w, dims, alignment, int8=args.int8, store_fp32=args.store == "fp32")
        if not args.int8 or part == "encoder":  # the int8 encoder is quantized as it is built
            big = save(model, path)
        else:
            import logging
            from onnxruntime.quantization import QuantType, quantize_dynamic
            # Its "consider pre-processing" advice targets static quantization; keep logs clean.
            logging.getLogger().setLevel(logging.ERROR)
            tmp = path + ".fp32.onnx"
            big = save(model, tmp)
            del model
            quantize_dynamic(tmp, path, weight_type=QuantType.QInt8,
                             op_types_to_quantize=["MatMul", "Gemm"], use_external_data_format=big,
                             # onnx shape inference cannot type com.microsoft outputs.
                             extra_options={"DefaultTensorType": TensorProto.FLOAT})
            for leftover in (tmp, tmp + ".data"):
                if os.path.exists(leftover):
                    os.remove(leftover)
        files[part + ".onnx"] = sha256(path)
        if big:
            files[part + ".onnx.data"] = sha256(path + ".data")
        print(f"  {part}.onnx: {os.path.getsize(path) / 1e6:.1f} MB", file=sys.stderr)

    for f in ("tokenizer.json", "config.json"):
        shutil.copyfile(os.path.join(args.src, f), os.path.join(args.out, f))
        files[f] = sha256(os.path.join(args.out, f))
    table = os.path.join(args.out, "embeddings.f16")
    np.ascontiguousarray(w.get("decoder/embeddings/weight"), dtype="<f2").tofile(table)
    files["embeddings.f16"] = sha256(table)

    eot = tokens["eot"]
    space = tokenizer["model"]["vocab"].get("\u0120")  # byte-level BPE spelling of " "
    manifest = {
        "format": 4,
        # Converter changes that keep the graph contract (the binary runs either); install.sh
        # converts models of an older revision again. 2: int8 encoders per-row.
        "revision": REVISION,
        "name": args.name,
        "source": "ct2",
        "precision": "int8" if args.int8 else "fp16",
        **dims,
        "multilingual": multilingual,
        "alignment_heads": alignment,
        # Every faster-whisper config carries both lists; the fallbacks mirror openai-whisper's
        # always-suppressed specials and its blank-start rule.
        "suppress_ids": config.get("suppress_ids") or [
            tokens[k] for k in ("translate", "transcribe", "sot", "sot_prev", "sot_lm", "no_speech")],
        "suppress_ids_begin": config.get("suppress_ids_begin") or [t for t in (space, eot) if t is not None],
        "tokens": tokens,
        "languages": languages,
        "files": files,
    }
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        # One key per line, values compact: readable and diff-friendly without 500-line id lists.
        f.write("{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in manifest.items())
                + "\n}\n")


if __name__ == "__main__":
    main()
