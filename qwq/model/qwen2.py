"""The Qwen2 network (QwQ-32B-Preview, Qwen2, Qwen2.5): pre-norm decoder, GQA with q/k/v bias,
SwiGLU MLP, RMSNorm, RoPE. Tokens of all sequences in a step are one flat batch of T tokens.

Projections are fused (q|k|v and gate|up) so a decode step reads each weight in one matmul;
`load_weights` takes HF names and fills the fused matrices.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from qwq.config import ModelConfig
from qwq.errors import CheckpointError
from qwq.kernels import fused_layers_take
from qwq.kernels.blocks import BlockScales
from qwq.model.attention import AttentionMetadata, KVCache, paged_attention
from qwq.model.rope import RotaryEmbedding, apply_rope_prepared, rope_factors


def fused(x: torch.Tensor) -> bool:
    """Whether qwq's fused CPU kernels take this (tokens, features) activation."""
    return x.dim() == 2 and fused_layers_take(x)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fused(x):
            return torch.ops.qwq.rms_norm(x.contiguous(), self.weight, self.eps)
        if x.dtype == torch.float32:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        # as the reference: normalize in float32, round, then scale
        return self.weight * F.rms_norm(x.float(), self.weight.shape, None, self.eps).to(x.dtype)

    def add(self, x: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x + delta, this norm of it): the residual add and the next norm in one pass."""
        if fused(x):
            return torch.ops.qwq.add_rms_norm(x, delta.contiguous(), self.weight, self.eps)
        x = x + delta
        return x, self(x)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = (cfg.num_attention_heads,
                                                    cfg.num_key_value_heads, cfg.head_dim)
        self.q_size, self.kv_size = self.heads * self.head_dim, self.kv_heads * self.head_dim
        self.qkv_proj = nn.Linear(cfg.hidden_size, self.q_size + 2 * self.kv_size, bias=True)
        self.o_proj = nn.Linear(self.q_size, cfg.hidden_size, bias=False)
        self.scale = self.head_dim ** -0.5

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                meta: AttentionMetadata, k_cache: torch.Tensor, v_cache: torch.Tensor,
                block_size: int) -> torch.Tensor:
        # cos, sin come from rope_factors. q and k sit side by side in the fused output, so
        # one rope call covers both heads' sets (fewer ops on the decode path)
        T, qk_size = x.shape[0], self.q_size + self.kv_size
        qkv = self.qkv_proj(x)
        qk = apply_rope_prepared(qkv[:, :qk_size].view(T, -1, self.head_dim), cos, sin)
        q, k = qk.split([self.heads, self.kv_heads], dim=1)
        v = qkv[:, qk_size:].view(T, self.kv_heads, self.head_dim)
        o = paged_attention(q, k, v, k_cache, v_cache, meta, block_size, self.scale)
        return self.o_proj(o.reshape(T, self.q_size))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.inter = cfg.intermediate_size
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * self.inter, bias=False)
        self.down_proj = nn.Linear(self.inter, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)
        if fused(gate_up):
            return self.down_proj(torch.ops.qwq.silu_mul(gate_up))
        gate, up = gate_up.split(self.inter, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)


def _embedding(vocab: int, hidden: int) -> nn.Embedding:
    # nn.Embedding's normal_ init on the meta device goes through torch._refs, which imports
    # torch._dynamo (and triton): ~140 MiB resident for a process that never compiles
    weight = torch.empty(vocab, hidden)
    if weight.device.type != "meta":
        nn.init.normal_(weight)
    return nn.Embedding(vocab, hidden, _weight=weight)


class Qwen2Model(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = _embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.rotary = RotaryEmbedding(config)

    def forward(self, input_ids: torch.Tensor, meta: AttentionMetadata,
                kv: KVCache) -> torch.Tensor:
        """input_ids: (T,). Returns float32 logits (B, vocab) at meta.logits_indices."""
        x = self.embed_tokens(input_ids)
        cos, sin = rope_factors(*self.rotary.cos_sin(meta.positions, max(meta.context_lens)),
                                x.dtype)
        h = self.layers[0].input_layernorm(x)
        for i, layer in enumerate(self.layers):
            x, h = layer.post_attention_layernorm.add(
                x, layer.self_attn(h, cos, sin, meta, kv.k[i], kv.v[i], kv.block_size))
            delta = layer.mlp(h)
            if i + 1 < len(self.layers):  # the add and the next layer's norm in one pass
                x, h = self.layers[i + 1].input_layernorm.add(x, delta)
            else:
                x = x + delta
        x = self.norm(x[meta.logits_indices])
        return self.lm_head(x).float()

    def load_weights(self, tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Fill the model from HF-named tensors, checking every name and shape."""
        expected = set(hf_weight_names(self.config))
        seen: set[str] = set()
        for name, tensor in tensors:
            if isinstance(tensor, BlockScales):
                if name not in expected or not name.endswith("proj.weight"):
                    raise CheckpointError(f"block scales for {name!r}, which is no projection")
                self._hint_in(name, tensor)
                continue
            if name not in expected:
                if name == "lm_head.weight" and self.config.tie_word_embeddings:
                    continue
                if re.search(r"rotary_emb\.inv_freq$", name):
                    continue
                raise CheckpointError(f"unexpected tensor {name!r} for this Qwen2 config")
            self._copy_in(name, tensor)
            seen.add(name)
        missing = sorted(expected - seen)
        if missing:
            raise CheckpointError(f"checkpoint lacks {len(missing)} tensors, e.g. {missing[:4]}")

    def _hint_in(self, name: str, hint: BlockScales) -> None:
        """A linear's group scales from the checkpoint (AWQ), kept beside the fused weight for
        quantize_model, which packs q5_0/q8_0 blocks on them."""
        module, _, rows = _fused_module(self, name)
        want = (rows.stop - rows.start, module.in_features // hint.group)
        if module.in_features % hint.group or tuple(hint.scales.shape) != want:
            raise CheckpointError(f"block scales of {name!r} have shape "
                                  f"{tuple(hint.scales.shape)}, expected {want}")
        held = module.__dict__.get("block_scales")
        if held is None or held.group != hint.group:  # NaN: rows without scales round as usual
            held = module.__dict__["block_scales"] = BlockScales(torch.full(
                (module.out_features, want[1]), float("nan"), dtype=torch.float16), hint.group)
        held.scales[rows] = hint.scales.to(torch.float16)

    def _copy_in(self, name: str, tensor: torch.Tensor) -> None:
        target, rows = _fused_target(self, name)
        if tuple(tensor.shape) != (rows.stop - rows.start, *target.shape[1:]):
            raise CheckpointError(f"tensor {name!r} has shape {tuple(tensor.shape)}, expected "
                                  f"{(rows.stop - rows.start, *target.shape[1:])}")
        with torch.no_grad():
            target[rows].copy_(tensor)


def hf_weight_names(cfg: ModelConfig) -> list[str]:
    names = ["model.embed_tokens.weight", "model.norm.weight"]
    if not cfg.tie_word_embeddings:
        names.append("lm_head.weight")
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        names += [p + "input_layernorm.weight", p + "post_attention_layernorm.weight",
                  p + "self_attn.o_proj.weight", p + "mlp.down_proj.weight",
                  p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"]
        names += [p + f"self_attn.{x}_proj.{w}" for x in "qkv" for w in ("weight", "bias")]
    return names


def _fused_target(model: Qwen2Model, name: str) -> tuple[torch.Tensor, slice]:
    """The parameter an HF tensor lands in, and which rows of it."""
    module, kind, rows = _fused_module(model, name)
    return getattr(module, kind).data, rows


def _fused_module(model: Qwen2Model, name: str) -> tuple[nn.Module, str, slice]:
    """The module an HF tensor lands in, its attribute, and which rows of it."""
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", name)
    if not m:
        module = {"model.embed_tokens.weight": model.embed_tokens,
                  "model.norm.weight": model.norm, "lm_head.weight": model.lm_head}[name]
        return module, "weight", slice(0, module.weight.shape[0])
    layer, rest = model.layers[int(m.group(1))], m.group(2)
    attn, mlp = layer.self_attn, layer.mlp
    q, kv, inter = attn.q_size, attn.kv_size, mlp.inter
    fused = {
        "self_attn.q_proj": (attn.qkv_proj, slice(0, q)),
        "self_attn.k_proj": (attn.qkv_proj, slice(q, q + kv)),
        "self_attn.v_proj": (attn.qkv_proj, slice(q + kv, q + 2 * kv)),
        "mlp.gate_proj": (mlp.gate_up_proj, slice(0, inter)),
        "mlp.up_proj": (mlp.gate_up_proj, slice(inter, 2 * inter)),
    }
    module_name, _, kind = rest.rpartition(".")
    if module_name in fused:
        module, rows = fused[module_name]
        return module, kind, rows
    module = layer.get_submodule(module_name)
    return module, kind, slice(0, getattr(module, kind).shape[0])
