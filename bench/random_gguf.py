"""Write a GGUF of a real model's shape with random weights, in one of llama.cpp's type mixes:
what speed and memory are measured on when the real file cannot be downloaded here.

    python bench/random_gguf.py --shape qwq-32b --mix q4_k_m --out /tmp/qwq32b-q4_k_m.gguf
    python bench/random_gguf.py --shape qwen2.5-7b --mix q8_0 --out /tmp/qwen7b-q8_0.gguf

Block bytes are random with small finite scales (every block decodes to finite weights); the
tokenizer fields are copied from the demo GGUF (the same tokenizer as QwQ), its token list
padded to the vocabulary as Qwen's own GGUFs are. Tensors are written one at a time, so a
20 GB file needs no more than one tensor in memory.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFWriter

from qwq.kernels.ggml import random_blocks
from qwq.weights.gguf_file import read_gguf_header

SHAPES = {  # layers, hidden, intermediate, heads, kv heads, vocab, context
    "qwq-32b": (64, 5120, 27648, 40, 8, 152064, 32768),
    "qwen2.5-7b": (28, 3584, 18944, 28, 4, 152064, 32768),
    "tiny": (2, 256, 512, 4, 2, 151936, 4096),
    "small": (4, 1024, 2816, 8, 2, 151936, 4096),  # the load-memory tests' (~240 MiB)
}
Q = GGMLQuantizationType


def more_bits(layer: int, layers: int) -> bool:
    """llama.cpp's use_more_bits: the layers its _M mixes give attn_v and ffn_down more bits
    (the first and last eighths, and every third layer between)."""
    return layer < layers // 8 or layer >= 7 * layers // 8 or (layer - layers // 8) % 3 == 2


def tensor_type(mix: str, name: str, layer: int, layers: int) -> GGMLQuantizationType:
    if name.endswith(("norm.weight", ".bias")):
        return Q.F32
    if mix == "q8_0":
        return Q.Q8_0
    if mix == "q4_0":
        return Q.Q6_K if name == "output.weight" else Q.Q4_0
    low, high = {"q4_k_m": (Q.Q4_K, Q.Q6_K), "q5_k_m": (Q.Q5_K, Q.Q6_K)}[mix]
    if name == "output.weight":
        return Q.Q6_K
    if name.endswith(("attn_v.weight", "ffn_down.weight")) and more_bits(layer, layers):
        return high
    return low


def tensors(shape: str) -> list[tuple[str, tuple[int, ...], int]]:
    """(GGUF name, HF shape, layer) of every tensor, in file order."""
    layers, h, inter, heads, kv_heads, vocab, _ = SHAPES[shape]
    hd = h // heads
    out = [("token_embd.weight", (vocab, h), -1)]
    for i in range(layers):
        b = f"blk.{i}."
        out += [(b + "attn_norm.weight", (h,), i), (b + "attn_q.weight", (h, h), i),
                (b + "attn_q.bias", (h,), i), (b + "attn_k.weight", (kv_heads * hd, h), i),
                (b + "attn_k.bias", (kv_heads * hd,), i),
                (b + "attn_v.weight", (kv_heads * hd, h), i),
                (b + "attn_v.bias", (kv_heads * hd,), i), (b + "attn_output.weight", (h, h), i),
                (b + "ffn_norm.weight", (h,), i), (b + "ffn_gate.weight", (inter, h), i),
                (b + "ffn_up.weight", (inter, h), i), (b + "ffn_down.weight", (h, inter), i)]
    out += [("output_norm.weight", (h,), -1), ("output.weight", (vocab, h), -1)]
    return out


def data(name: str, shape: tuple[int, ...], qtype: GGMLQuantizationType,
         gen: torch.Generator) -> np.ndarray:
    if qtype == Q.F32:  # norms near 1, biases small
        base = 1.0 if name.endswith("norm.weight") else 0.0
        return (torch.randn(shape, generator=gen) * 0.02 + base).numpy()
    return random_blocks(qtype.name, shape[0], shape[1], gen).numpy()


def copy_tokenizer(writer: GGUFWriter, demo: Path, vocab: int) -> None:
    meta = read_gguf_header(demo).metadata
    for key, value in meta.items():
        if not key.startswith("tokenizer."):
            continue
        if key == "tokenizer.ggml.tokens":
            value = list(value) + [f"[PAD{i}]" for i in range(len(value), vocab)]
        elif key == "tokenizer.ggml.token_type":
            value = list(value) + [5] * (vocab - len(value))  # 5: unused
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        else:
            writer.add_array(key, list(value))


def write(out: Path, shape: str, mix: str, seed: int = 0) -> int:
    """Write the file; its size in bytes."""
    from qwq.demo import demo_model_path
    layers, h, inter, heads, kv_heads, vocab, ctx = SHAPES[shape]
    writer = GGUFWriter(str(out), "qwen2")
    writer.add_name(f"random {shape} {mix}")
    writer.add_context_length(ctx)
    writer.add_embedding_length(h)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(inter)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(1_000_000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(1)
    copy_tokenizer(writer, demo_model_path(), vocab)
    plan = [(n, s, tensor_type(mix, n, i, layers)) for n, s, i in tensors(shape)]
    for name, s, qtype in plan:
        nbytes = _nbytes(s, qtype)
        if qtype == Q.F32:
            writer.add_tensor_info(name, s, np.dtype(np.float32), nbytes, raw_dtype=qtype)
        else:  # block types are described by their bytes: (rows, bytes per row)
            writer.add_tensor_info(name, (s[0], nbytes // s[0]), np.dtype(np.uint8), nbytes,
                                   raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    gen = torch.Generator().manual_seed(seed)
    for name, s, qtype in plan:
        writer.write_tensor_data(data(name, s, qtype, gen))
    writer.close()
    return out.stat().st_size


def _nbytes(shape: tuple[int, ...], qtype: GGMLQuantizationType) -> int:
    from gguf.constants import GGML_QUANT_SIZES
    block, size = GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape)) // block * size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=list(SHAPES), default="qwq-32b")
    ap.add_argument("--mix", choices=["q4_k_m", "q5_k_m", "q8_0", "q4_0"], default="q4_k_m")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t = time.perf_counter()
    size = write(args.out, args.shape, args.mix, args.seed)
    print(f"{args.out}: {size / 1e9:.2f} GB in {time.perf_counter() - t:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
