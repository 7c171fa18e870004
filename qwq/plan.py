"""Memory planning from a config alone: weights per rank, KV-cache tokens that fit, and how
many sequences of a given context run at once. Works for QwQ-32B-Preview without weights."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qwq.config import ModelConfig
from qwq.kernels.blocks import FORMATS
from qwq.model.kv_quant import kv_storage_dtype, row_bytes
from qwq.model.quant import DEFAULT_HEADS

GIB = 1 << 30
# bytes per weight of each format, scales included (int4: a bf16 scale and zero per 128;
# q5_0/q8_0: an fp16 scale per 32)
BYTES_PER_WEIGHT = {"none": 2.0, "int8": 1.0 + 2 / 4096, "w8a8": 1.0 + 4 / 4096,
                    "int4": 0.5 + 4 / 128, **{f.name: f.bits / 8 for f in FORMATS.values()}}
# Memory torch holds on a GPU before any tensor (CUDA context, cuBLAS workspace, allocator
# slack), and the share of what is left after loading that the engine gives the KV cache
# (models.num_kv_blocks: 85%; the other 15% holds a step's activations).
CUDA_RESERVE = 0.75 * GIB
KV_SHARE = 0.85


@dataclass(frozen=True)
class Setup:
    """Bytes per weight of the decoder layers, the output head and the token table."""

    layers: float
    head: float
    table: float = 2.0  # a lookup table, kept 16-bit


def setup_of(quantize: str) -> Setup:
    """A --quantize mode (the head in its default format: int8 under int4, q8_0 under q5_0),
    or a 4-bit checkpoint on a GPU (qwq.model.quant.load_int4):
      awq: AWQ's codes at its groups of 128 (int4's bytes), the 16-bit head rounded to int8;
      q4_k_m: a 4-bit GGUF: every projection int4 at groups of 32 (Q4_K's codes exactly, the
        Q6_K ones re-rounded), 5 bits a weight with the bf16 scale and zero; the head int8;
        the token table kept in its Q4_K blocks (4.5 bits)."""
    int8 = BYTES_PER_WEIGHT["int8"]
    if quantize == "awq":
        return Setup(BYTES_PER_WEIGHT["int4"], int8)
    if quantize == "q4_k_m":
        return Setup(0.5 + 4 / 32, int8, 4.5 / 8)
    return Setup(BYTES_PER_WEIGHT[quantize],
                 BYTES_PER_WEIGHT[DEFAULT_HEADS.get(quantize, quantize)])


PLAN_SETUPS = ("awq", "q4_k_m")  # beside the quantize modes


@dataclass
class Plan:
    params: int
    weights_per_rank: float  # bytes
    kv_bytes_per_token_per_rank: int
    kv_tokens: int
    max_seqs: int
    context: int
    kv_cache_dtype: str = "auto"
    fits: bool = True  # the weights and the reserve fit in the GPU's memory


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
         context: int | None = None, kv_share: float = KV_SHARE,
         reserve: float = CUDA_RESERVE, kv_cache_dtype: str = "auto") -> Plan:
    """gpu_memory in bytes per GPU; quantize: a mode or a PLAN_SETUPS name; reserve: what
    torch holds per GPU before any tensor; kv_share: the cache's share of the memory left
    after the weights, as the engine sizes it; kv_cache_dtype as the engine takes it (auto:
    the checkpoint's 16 bits)."""
    embed, head, layers = param_counts(cfg)
    s = setup_of(quantize)
    weights = embed * s.table + head * s.head + layers * s.layers
    per_rank = weights / gpus
    kv_heads_per_rank = max(1, cfg.num_key_value_heads // gpus)
    kv_dtype = kv_storage_dtype(kv_cache_dtype, torch.bfloat16)
    kv_token = 2 * cfg.num_hidden_layers * kv_heads_per_rank * row_bytes(cfg.head_dim, kv_dtype)
    free = max(0.0, gpu_memory - reserve - per_rank)
    tokens = int(free * kv_share // kv_token)
    ctx = context or cfg.max_position_embeddings
    return Plan(embed + head + layers, per_rank, kv_token, tokens, tokens // ctx, ctx,
                kv_cache_dtype, per_rank + reserve <= gpu_memory)


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
        f"KV tokens that fit:   {p.kv_tokens:,}"
        + ("" if p.fits else " (the weights alone do not fit)"),
        f"sequences at {p.context:,} tokens: {p.max_seqs}",
    ])
