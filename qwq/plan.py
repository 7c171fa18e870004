"""Memory planning from a config alone: weights per rank, KV-cache tokens that fit, and how
many sequences of a given context run at once. Works for QwQ-32B-Preview without weights."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qwq.config import ModelConfig
from qwq.kernels.blocks import FORMATS
from qwq.model.kv_quant import kv_storage_dtype, row_bytes

GIB = 1 << 30
# bytes per weight of each format, scales included (int4: a bf16 scale and zero per 128;
# q5_0/q8_0: an fp16 scale per 32)
BYTES_PER_WEIGHT = {"none": 2.0, "int8": 1.0 + 2 / 4096, "w8a8": 1.0 + 4 / 4096,
                    "int4": 0.5 + 4 / 128, **{f.name: f.bits / 8 for f in FORMATS.values()}}


@dataclass
class Plan:
    params: int
    weights_per_rank: float  # bytes
    kv_bytes_per_token_per_rank: int
    kv_tokens: int
    max_seqs: int
    context: int
    kv_cache_dtype: str = "auto"


def param_counts(cfg: ModelConfig) -> tuple[int, int, int]:
    """(embedding, output head, everything in the decoder layers incl. norms)."""
    h, kv = cfg.hidden_size, cfg.num_key_value_heads * cfg.head_dim
    q = cfg.num_attention_heads * cfg.head_dim
    attn = h * q + q + 2 * (h * kv + kv) + q * h
    mlp = 3 * h * cfg.intermediate_size
    layer = attn + mlp + 2 * h
    embed = cfg.vocab_size * h
    head = 0 if cfg.tie_word_embeddings else embed
    return embed, head, cfg.num_hidden_layers * layer + h


def plan(cfg: ModelConfig, gpus: int, gpu_memory: float, quantize: str = "none",
         context: int | None = None, utilization: float = 0.9,
         reserve: float = 2 * GIB, kv_cache_dtype: str = "auto") -> Plan:
    """gpu_memory in bytes per GPU; reserve: activations and workspace per GPU;
    kv_cache_dtype as the engine takes it (auto: the checkpoint's 16 bits)."""
    embed, head, layers = param_counts(cfg)
    per_weight = BYTES_PER_WEIGHT[quantize]
    # the embedding is a lookup table and stays 16-bit; projections and head take the format
    weights = embed * 2 + (head + layers) * per_weight
    per_rank = weights / gpus
    kv_heads_per_rank = max(1, cfg.num_key_value_heads // gpus)
    kv_dtype = kv_storage_dtype(kv_cache_dtype, torch.bfloat16)
    kv_token = 2 * cfg.num_hidden_layers * kv_heads_per_rank * row_bytes(cfg.head_dim, kv_dtype)
    free = gpu_memory * utilization - per_rank - reserve
    tokens = max(0, int(free // kv_token))
    ctx = context or cfg.max_position_embeddings
    return Plan(embed + head + layers, per_rank, kv_token, tokens, tokens // ctx, ctx,
                kv_cache_dtype)


def parse_size(text: str) -> float:
    """'80GB' (decimal, as GPUs are sold), '24GiB' (binary), or plain bytes."""
    t = text.strip().upper()
    binary = t.endswith("IB")
    t = t.removesuffix("B").removesuffix("I")
    base = 1024 if binary else 1000
    units = {"K": base, "M": base ** 2, "G": base ** 3, "T": base ** 4}
    return float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)


def describe(p: Plan, gpus: int, quantize: str) -> str:
    return "\n".join([
        f"parameters:           {p.params / 1e9:.2f} B",
        f"weights per GPU:      {p.weights_per_rank / 1e9:.2f} GB ({quantize}, {gpus} GPU(s))",
        f"KV cache per token:   {p.kv_bytes_per_token_per_rank / 1024:.0f} KiB per GPU "
        f"({p.kv_cache_dtype})",
        f"KV tokens that fit:   {p.kv_tokens:,}",
        f"sequences at {p.context:,} tokens: {p.max_seqs}",
    ])
