"""Qwen2's checkpoint layout, the one table of it: every tensor's Hugging Face name and shape,
which projections run fused, which carry a bias, and how tensor parallelism splits each.

The network (qwen2.py) builds its fused matrices from it, the checkpoint readers check a file's
tensor set against it, and sharding (qwq/distributed/shard.py) reads its split. Only the GGUF
reader knows GGUF's own names (weights/gguf_file.py), and maps them onto these.
"""

from __future__ import annotations

from collections.abc import Iterator

from qwq.config import ModelConfig

# A layer's fused projections and the checkpoint tensors each holds, in row order: q|k|v and
# gate|up run as one matrix each, so a decode step reads them in one pass.
PROJECTIONS = {
    "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "self_attn.o_proj": ("self_attn.o_proj",),
    "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
    "mlp.down_proj": ("mlp.down_proj",),
}
BIASED = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")  # Qwen2: q, k, v only
NORMS = ("input_layernorm", "post_attention_layernorm")
# Tensor parallelism: these take a slice of their inputs (dimension 1) and all-reduce their
# partial sums; every other projection takes a slice of its output rows (dimension 0).
ROW_PARALLEL = ("self_attn.o_proj", "mlp.down_proj")


def layer_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """A layer's tensors (names after `model.layers.N.`) and their shapes."""
    h, hd, inter = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    out_in = {"self_attn.q_proj": (q, h), "self_attn.k_proj": (kv, h),
              "self_attn.v_proj": (kv, h), "self_attn.o_proj": (h, q),
              "mlp.gate_proj": (inter, h), "mlp.up_proj": (inter, h),
              "mlp.down_proj": (h, inter)}
    shapes = {f"{norm}.weight": (h,) for norm in NORMS}
    for parts in PROJECTIONS.values():
        for part in parts:
            shapes[f"{part}.weight"] = out_in[part]
            if part in BIASED:
                shapes[f"{part}.bias"] = out_in[part][:1]
    return shapes


def iter_shapes(cfg: ModelConfig) -> Iterator[tuple[str, tuple[int, ...]]]:
    """Every tensor of a checkpoint of this config, lazily (a forged layer count in a file's
    config must cost nothing before the first missing tensor is found)."""
    h = cfg.hidden_size
    yield "model.embed_tokens.weight", (cfg.vocab_size, h)
    yield "model.norm.weight", (h,)
    if not cfg.tie_word_embeddings:
        yield "lm_head.weight", (cfg.vocab_size, h)
    per_layer = layer_shapes(cfg)
    for i in range(cfg.num_hidden_layers):
        for name, shape in per_layer.items():
            yield f"model.layers.{i}.{name}", shape


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a Qwen2 checkpoint of this config must hold, with its HF shape."""
    return dict(iter_shapes(cfg))


def hf_weight_names(cfg: ModelConfig) -> list[str]:
    return [name for name, _ in iter_shapes(cfg)]


def split_dim(name: str) -> int | None:
    """The dimension tensor parallelism splits this HF tensor along; None: every rank holds
    it whole (norms; the embedding and head are split by vocabulary rows in shard.py)."""
    module = name.removeprefix("model.layers.").partition(".")[2].rpartition(".")[0]
    if any(module in parts for parts in PROJECTIONS.values()):
        return 1 if module in ROW_PARALLEL else 0
    return None
