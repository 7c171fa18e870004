"""The Qwen2 network (QwQ-32B-Preview, Qwen2, Qwen2.5): pre-norm decoder, GQA with q/k/v bias,
SwiGLU MLP, RMSNorm, RoPE. Tokens of all sequences in a step are one flat batch of T tokens.

Projections are fused (q|k|v and gate|up) so a decode step reads each weight in one matmul;
`load_weights` takes HF names and fills the fused matrices.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from qwq.config import ModelConfig
from qwq.errors import CheckpointError
from qwq.kernels import fused_layers_take
from qwq.kernels.blocks import BlockScales
from qwq.model.attention import AttentionMetadata, KVCache, paged_attention
from qwq.model.ggml_linear import GGMLEmbedding, GGMLLinear, rearranging_fits
from qwq.model.layout import BIASED, NORMS, PROJECTIONS, hf_weight_names, layer_shapes
from qwq.model.rope import RotaryEmbedding, apply_rope_prepared

if TYPE_CHECKING:  # a type only: qwq.weights imports qwq.model.layout
    from qwq.stored import StoredTensor


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

    def ggml_decode_args(self) -> tuple[tuple, tuple] | None:
        """What DecodeLayers (qwq/kernels/decoder.cpp) takes of this layer, found once per
        model: every projection part's stored tensor, its type, the parts of q|k|v, o, gate|up
        and down, the input norm's weight, q|k|v's bias, the post-attention norm's weight and
        eps; then attention's scale and heads. None unless each projection is a GGMLLinear with
        kernels for all its parts, q|k|v with its bias and the others without."""
        attn, mlp = self.self_attn, self.mlp
        projs = [attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj]
        if not all(isinstance(p, GGMLLinear) for p in projs) or attn.qkv_proj.bias is None \
                or any(p.bias is not None for p in projs[1:]):
            return None
        found = [p.kernel_parts() for p in projs]
        if any(f is None for f in found):
            return None
        weights = ([w for ws, _ in found for w in ws], [t for _, ts in found for t in ts],
                   [len(ws) for ws, _ in found])
        return ((*weights, self.input_layernorm.weight, attn.qkv_proj.bias,
                 self.post_attention_layernorm.weight, self.post_attention_layernorm.eps),
                (attn.scale, attn.heads, attn.kv_heads))


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
        # the grids the checkpoint stores projections on (AWQ's group scales), by fused
        # module name ("layers.0.self_attn.qkv_proj"): load_weights fills it, quantize_model
        # packs q5_0/q8_0 blocks on them and empties it
        self.pending_scales: dict[str, BlockScales] = {}
        # the layers, norms and head as one kernel call steps them
        # (torch.classes.qwq.DecodeLayers, made once); False: not every layer can
        self._ggml_layers: torch.ScriptObject | bool | None = None
        self._fused_head = False  # whether that call applies lm_head too

    def forward(self, input_ids: torch.Tensor, meta: AttentionMetadata,
                kv: KVCache) -> torch.Tensor:
        """input_ids: (T,). Returns float32 logits (B, vocab) at meta.logits_indices."""
        x = self.embed_tokens(input_ids)
        fused = self._decode_layers(x, meta, kv)
        if fused is not None:
            # every layer, rope's lookups, the norms and the head in one kernel call, the same
            # numbers as the loop below (decoder.cpp): a decode step of a small model spent a
            # fifth of its time in that loop's calls, and each small op between the weights'
            # streams costs ~10-30 us (they evict the interpreter's and torch's own data)
            cos, sin = self.rotary.factor_tables(max(meta.context_lens), x.dtype, x.device)
            out = fused.step(x, meta.positions, cos, sin, kv.k, kv.v, meta.slot_mapping,
                             meta.block_tables, meta.context_lens_t, kv.block_size,
                             meta.logits_indices)
            return out if self._fused_head else self.lm_head(out.float())
        cos, sin = self.rotary.factors(meta.positions, max(meta.context_lens), x.dtype)
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
        if isinstance(self.lm_head, GGMLLinear):  # its float32 sums as they are, as llama.cpp's
            return self.lm_head(x.float())        # (16-bit logits step by 0.125 near 20)
        return self.lm_head(x).float()

    def _decode_layers(self, x: torch.Tensor, meta: AttentionMetadata, kv: KVCache):
        """The layers as one kernel call takes them (a DecodeLayers, stepped with the step's
        tensors), when this step can take that path: one new token per sequence, the kernels,
        every projection on them, a cache of float or int8 rows. It is made once (a module
        move, _apply, forgets it)."""
        if not (meta.decode_only and fused(x) and x.is_contiguous()) \
                or kv.k.dtype == torch.float8_e4m3fn \
                or self.config.head_dim % 32 or self.config.head_dim > 256:
            return None
        if self._ggml_layers is None:
            found = [layer.ggml_decode_args() for layer in self.layers]
            self._ggml_layers = False
            # (one eps for every norm: the call uses one)
            if all(f is not None for f in found) and len({f[1] for f in found}) == 1 \
                    and {f[0][-1] for f in found} | {layer.input_layernorm.eps
                                                     for layer in self.layers} \
                    == {self.norm.eps}:
                ws, types, parts, inputs, biases, posts, eps = zip(*(f[0] for f in found))
                head = self.lm_head.kernel_parts() \
                    if isinstance(self.lm_head, GGMLLinear) and self.lm_head.bias is None \
                    else None
                self._fused_head = head is not None
                self._ggml_layers = torch.classes.qwq.DecodeLayers(
                    [w for each in ws for w in each], [t for each in types for t in each],
                    [n for each in parts for n in each], list(inputs), list(biases),
                    list(posts), self.norm.weight, *(head or ([], [])), eps[0],
                    *found[0][1])
        return None if self._ggml_layers is False else self._ggml_layers

    def _apply(self, fn, recurse=True):
        self._ggml_layers = None  # they hold the buffers as they were
        return super()._apply(fn, recurse)

    @property
    def dtype(self) -> torch.dtype:
        """The activation dtype (the norms are always held in it)."""
        return self.norm.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.norm.weight.device

    def load_linears(self, linear: Callable[[list[str], torch.Tensor | None], nn.Module],
                     load: Callable[[str], torch.Tensor], dtype: torch.dtype,
                     device: torch.device | str = "cpu") -> None:
        """Build the decoder layers of a network made on the meta device one projection at a
        time, with no float copy of the model: linear(HF names of a fused projection's parts,
        its bias on `device` or None) makes each one; norms, a few MB, load as `dtype` on
        `device`. The embedding and the head are the caller's (load_stored, load_int4)."""
        for i, layer in enumerate(self.layers):
            p = f"model.layers.{i}."
            for fused_name, parts in PROJECTIONS.items():
                biases = [p + part + ".bias" for part in parts if part in BIASED]
                bias = torch.cat([load(b) for b in biases]).to(device) if biases else None
                layer.set_submodule(fused_name, linear([p + part + ".weight" for part in parts],
                                                       bias))
            for norm in NORMS:
                _materialize(getattr(layer, norm), load(p + norm + ".weight").to(device), dtype)
        _materialize(self.norm, load("model.norm.weight").to(device), dtype)

    def load_stored(self, stored: Callable[[str], StoredTensor],
                    load: Callable[[str], torch.Tensor], dtype: torch.dtype) -> None:
        """Build the model on the checkpoint's stored blocks (quantize="gguf"), from a network
        made on the meta device: every projection, the head and the token table keep their
        file types (views of the file, nothing dequantized in bulk); norms and biases, a few
        MB, load as `dtype`. stored(name) / load(name): one HF-named tensor."""
        cfg = self.config
        head = "model.embed_tokens.weight" if cfg.tie_word_embeddings else "lm_head.weight"
        computed = [n for n in hf_weight_names(cfg) if n.endswith("proj.weight")] + [head]
        rearrange = rearranging_fits(stored(n) for n in computed)  # decided for the whole model
        self.load_linears(lambda names, bias: GGMLLinear([stored(n) for n in names], bias, dtype,
                                                         rearrange), load, dtype)
        table = stored("model.embed_tokens.weight")
        self.embed_tokens = GGMLEmbedding(table, dtype)
        self.lm_head = GGMLLinear([stored(head)], None, dtype, rearrange)

    def load_weights(self, tensors: Iterable[tuple[str, torch.Tensor | BlockScales]]) -> None:
        """Fill the model from HF-named tensors, checking every name and shape; a projection's
        BlockScales (Checkpoint.iter_tensors with block_scales=True) go to pending_scales."""
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
        """A linear's group scales from the checkpoint (AWQ), held in pending_scales under the
        fused module's name (its rows of them) for quantize_model, which packs q5_0/q8_0
        blocks on them."""
        path, _, rows = _fused_path(self, name)
        module = self.get_submodule(path)
        want = (rows.stop - rows.start, module.in_features // hint.group)
        if module.in_features % hint.group or tuple(hint.scales.shape) != want:
            raise CheckpointError(f"block scales of {name!r} have shape "
                                  f"{tuple(hint.scales.shape)}, expected {want}")
        held = self.pending_scales.get(path)
        if held is None or held.group != hint.group:  # NaN: rows without scales round as usual
            held = self.pending_scales[path] = BlockScales(torch.full(
                (module.out_features, want[1]), float("nan"), dtype=torch.float16), hint.group)
        held.scales[rows] = hint.scales.to(torch.float16)

    def _copy_in(self, name: str, tensor: torch.Tensor) -> None:
        target, rows = _fused_target(self, name)
        if tuple(tensor.shape) != (rows.stop - rows.start, *target.shape[1:]):
            raise CheckpointError(f"tensor {name!r} has shape {tuple(tensor.shape)}, expected "
                                  f"{(rows.stop - rows.start, *target.shape[1:])}")
        with torch.no_grad():
            target[rows].copy_(tensor)


def _materialize(norm: RMSNorm, weight: torch.Tensor, dtype: torch.dtype) -> None:
    if tuple(weight.shape) != tuple(norm.weight.shape):
        raise CheckpointError(f"norm weight has shape {tuple(weight.shape)}, expected "
                              f"{tuple(norm.weight.shape)}")
    norm.weight = nn.Parameter(weight.to(dtype), requires_grad=False)


def _fused_target(model: Qwen2Model, name: str) -> tuple[torch.Tensor, slice]:
    """The parameter an HF tensor lands in, and which rows of it."""
    path, kind, rows = _fused_path(model, name)
    return getattr(model.get_submodule(path), kind).data, rows


_GLOBAL_MODULES = {"model.embed_tokens.weight": "embed_tokens", "model.norm.weight": "norm",
                   "lm_head.weight": "lm_head"}


def _fused_path(model: Qwen2Model, name: str) -> tuple[str, str, slice]:
    """The module an HF tensor lands in (its name in the model), its attribute, and which
    rows of it."""
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", name)
    if not m:
        path = _GLOBAL_MODULES[name]
        return path, "weight", slice(0, model.get_submodule(path).weight.shape[0])
    layer = f"layers.{int(m.group(1))}."
    module_name, _, kind = m.group(2).rpartition(".")
    shapes = layer_shapes(model.config)
    for fused_name, parts in PROJECTIONS.items():
        if module_name in parts:
            start = sum(shapes[f"{p}.weight"][0] for p in parts[:parts.index(module_name)])
            rows = slice(start, start + shapes[f"{module_name}.weight"][0])
            return layer + fused_name, kind, rows
    path = layer + module_name
    return path, kind, slice(0, getattr(model.get_submodule(path), kind).shape[0])
