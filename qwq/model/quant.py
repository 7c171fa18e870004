"""Quantized linear layers on kernels torch already ships.

int8: one scale per output row, torch's _weight_int8pack_mm (activations stay 16-bit).
w8a8: the same int8 weights; activations are rounded to int8 with one scale per token and the
product runs on integer dot products (torch._int_mm: oneDNN, VNNI where the CPU has it):
prefill 2-3x faster than int8's, decode slightly faster (the same bytes). o_proj, down_proj and
single tokens with outliers keep 16-bit activations (see quantize_model, OUTLIER_RATIO). CPU
only: CUDA's int8 matmul wants more than 16 rows, so there it is int8.
int4: asymmetric, a scale and zero per group of `group_size` inputs, torch's tinygemm int4
kernel (_weight_int4pack_mm_for_cpu on CPU, _weight_int4pack_mm on CUDA).
gguf: a GGUF's tensors in their own block types (qwq/model/ggml_linear.py).
q5_0, q8_0: GGUF's Q5_0 and Q8_0 blocks (5.5 and 8.5 bits a weight) against int8 activation
blocks, on qwq's own kernels (qwq/kernels: AVX-512 VNNI, or AVX2); a GGUF's Q5_0 tensors run with their
own bits. Under q5_0 the head is q8_0: GGUFs ship it as Q8_0, and the logits are what sampling
sees.
A decode step reads every weight once, so bytes per weight set the speed limit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from qwq.errors import QwQError
from qwq.kernels import blocks, ggml, kernels_available
from qwq.model.ggml_linear import GGMLEmbedding, GGMLLinear, _dequantize_other
from qwq.model.layout import PROJECTIONS
from qwq.stored import GroupCodes, StoredTensor

if TYPE_CHECKING:  # a type only: the network quantize_model swaps layers in
    from qwq.model.qwen2 import Qwen2Model

QUANT_MODES = ("none", "gguf", "int8", "w8a8", "int4", "q5_0", "q8_0")

# "auto" on CPU computes a GGUF as shipped ("gguf": each tensor in its own block type, on
# qwq/kernels/ggml.cpp where it builds, torch elsewhere): no second rounding, and a 4.5-bit
# file stays 4.5 bits in memory; AWQ directories there pack into q5_0 on their own scales.
# On GPUs, 4-bit checkpoints (AWQ, GGUFs mostly of 4-bit or smaller types) run as int4 on
# torch's tinygemm kernel, loaded from their own codes (load_int4); 5-8 bit GGUFs as int8.
# AWQ4: a 4-bit AWQ directory's linears (qwq.weights.awq), taken like a 4-bit GGUF
_GGUF_LOW_BIT = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q2_K", "Q3_K", "Q6_K",
                 "AWQ4")
_GGUF_QUANTIZED = _GGUF_LOW_BIT + ("Q8_0", "Q8_K")
# the types that become int4 on a GPU: 4 bits or fewer (Q2_K/Q3_K are re-rounded to int4 at
# groups of 32; int8 would double them)
_INT4_TYPES = ("Q4_0", "Q4_1", "Q4_K", "Q2_K", "Q3_K", "AWQ4")


def auto_quantization(weight_types: dict[str, str], dtype: torch.dtype,
                      device: torch.device | str = "cpu", sharded: bool = False) -> str:
    """quantize="auto": a GGUF as shipped on CPU where qwq's kernels run; otherwise the
    checkpoint's own precision (Checkpoint.weight_types: GGUF types, AWQ) mapped to a fast
    kernel, none for float checkpoints or float32 runs (the kernels take 16-bit activations).
    sharded: a tensor-parallel rank, whose slices of a tensor are loaded as floats and packed
    again (never int4 there: that would round a 4-bit slice a second time). Without the kernels
    (a CPU with neither AVX-512 VNNI nor AVX2, or no compiler) a GGUF's blocks would be
    dequantized in torch on every call: 0.7 tok/s on the demo GGUF where w8a8 decodes 16."""
    if not weight_types or dtype == torch.float32:
        return "none"
    cpu = torch.device(device).type == "cpu"
    layer_types = [t for n, t in weight_types.items() if n.endswith("proj.weight")]
    if cpu and layer_types and "AWQ4" not in layer_types and not sharded \
            and kernels_available():
        return "gguf"
    eight_bit = "w8a8" if cpu else "int8"
    low_bit = "q5_0" if cpu and kernels_available() else eight_bit
    modes = ["int4" if not cpu and not sharded and t in _INT4_TYPES
             else low_bit if t in _GGUF_LOW_BIT else eight_bit if t in _GGUF_QUANTIZED
             else "none" for t in layer_types]
    return max(set(modes), key=modes.count) if modes else "none"


# A token whose largest activation exceeds this many times its rms keeps 16-bit activations
# under w8a8. Attention-sink tokens (the first of a text, a few others) reach 20-70x; per-token
# int8 rounds away everything else in them, and every later token attends to them. On the demo
# model 0.2% of rows cross it; without the fallback a 64-token text loses 4.5% perplexity.
OUTLIER_RATIO = 20.0


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Symmetric int8 with one float32 scale per row (token): (int8 rows, (rows, 1) scales,
    (rows,) mask of outlier rows, see OUTLIER_RATIO)."""
    x = x.to(torch.float32, copy=True)  # divided in place below
    peak = x.abs().amax(-1, keepdim=True)
    # peak / rms > r  <=>  peak > r * ||x|| / sqrt(k)
    outliers = (peak > torch.linalg.vector_norm(x, dim=-1, keepdim=True)
                .mul_(OUTLIER_RATIO / x.shape[-1] ** 0.5)).squeeze(-1)
    scale = peak.clamp_(min=1e-8).div_(127.0)
    return x.div_(scale).round_().to(torch.int8), scale, outliers


def quantize_weight_rows(weight: torch.Tensor, slab: int = 4096
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 with one float32 scale per output row, a slab of rows at a time (float32
    temporaries of a 150K-row head would be 2 GB)."""
    q = torch.empty(weight.shape, dtype=torch.int8, device=weight.device)
    scale = torch.empty(weight.shape[0], dtype=torch.float32, device=weight.device)
    for r in range(0, weight.shape[0], slab):
        w = weight[r:r + slab].to(torch.float32, copy=True)  # divided in place below
        s = w.abs().amax(dim=1).div_(127.0).clamp_(min=1e-8)
        q[r:r + slab] = w.div_(s[:, None]).round_().clamp_(-127, 127)
        scale[r:r + slab] = s
    return q, scale


class Int8Linear(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype,
                 int8_activations: bool = False):
        super().__init__()
        self.int8_activations = int8_activations and not weight.is_cuda
        q, scale = quantize_weight_rows(weight)
        self.register_buffer("weight", q)
        # int8 activations are rescaled in float32, weight-only int8 in the activation dtype
        self.register_buffer("scale", scale.to(torch.float32 if self.int8_activations
                                               else dtype))
        self.bias = None if bias is None else nn.Parameter(bias.to(dtype), requires_grad=False)
        self.out_features, self.in_features = weight.shape

    @classmethod
    def from_rows(cls, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                  dtype: torch.dtype) -> Int8Linear:
        """Weight-only int8 from rows rounded already (quantize_weight_rows, a slab at a
        time: load_int4's head never exists whole in floats)."""
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.int8_activations = False
        layer.register_buffer("weight", q)
        layer.register_buffer("scale", scale.to(dtype))
        layer.bias = None if bias is None else nn.Parameter(bias.to(q.device, dtype),
                                                            requires_grad=False)
        layer.out_features, layer.in_features = q.shape
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if self.int8_activations:
            xq, xs, outliers = quantize_rows(x2)
            acc = torch._int_mm(xq, self.weight.t())
            # int32 -> float32 in the same memory (an elementwise copy over identical strides):
            # a prefill chunk's gate|up product is 20 MB, and one copy fewer is that much less
            # heap held at the peak
            y = acc.view(torch.float32).copy_(acc).mul_(xs).mul_(self.scale).to(x.dtype)
            if outliers.any():
                rows = outliers.nonzero().squeeze(1)
                y[rows] = torch.ops.aten._weight_int8pack_mm(x2[rows], self.weight,
                                                             self.scale.to(x.dtype))
        else:
            # one kernel at every row count: a sequence's tokens then get the same numbers
            # alone or in any batch (a bf16 matmul on the converted weight is 2.4x faster for
            # prefill, but rounds twice, and greedy answers drifted with the batch)
            y = torch.ops.aten._weight_int8pack_mm(x2, self.weight, self.scale)
        y = y.view(*shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias


def int4_group_size(in_features: int, preferred: int = 128) -> int:
    for g in (preferred, 128, 64, 32):
        if in_features % g == 0:
            return g
    raise QwQError(f"int4 needs in_features divisible by 32, got {in_features}")


def round_codes(weight: torch.Tensor, group: int) -> GroupCodes:
    """A float weight rounded to asymmetric int4, a scale and zero per group of `group`
    inputs (lowest value at code 0, highest at 15), as GroupCodes."""
    n, k = weight.shape
    w = weight.float().view(n, k // group, group)
    lo, hi = w.amin(-1), w.amax(-1)
    scale = ((hi - lo) / 15.0).clamp(min=1e-8)
    q = torch.round((w - lo[..., None]) / scale[..., None]).clamp(0, 15).to(torch.uint8)
    return GroupCodes(q.view(n, k), scale, lo + 8 * scale, group)  # zero: the value at 8


INT4_GROUPS = (32, 64, 128, 256)  # the group sizes tinygemm takes


class Int4Linear(nn.Module):
    """torch's tinygemm int4 kernel: y = x W^T + b, W = (q - 8) * scale + zero per group of
    inputs, scale and zero in the activation dtype (bfloat16 on CUDA, which takes no other)."""

    def __init__(self, weight: torch.Tensor | None, bias: torch.Tensor | None,
                 dtype: torch.dtype, group_size: int = 128):
        super().__init__()
        if weight is not None:  # a float weight, rounded here (from_codes: codes as they are)
            self._pack([round_codes(weight, int4_group_size(weight.shape[1], group_size))],
                       bias, dtype, weight.device)

    @classmethod
    def from_codes(cls, parts: list[GroupCodes], bias: torch.Tensor | None,
                   dtype: torch.dtype, device: torch.device | str | None = None
                   ) -> Int4Linear:
        """The exact constructor: the parts' codes as they are (no second rounding), their
        rows stacked (a fused q|k|v or gate|up); scale and zero are only rounded to `dtype`,
        as the kernel requires. All parts share one group size."""
        layer = cls(None, None, dtype)
        layer._pack(parts, bias, dtype, device if device is not None else parts[0].q.device)
        return layer

    def _pack(self, parts: list[GroupCodes], bias: torch.Tensor | None, dtype: torch.dtype,
              device: torch.device | str) -> None:
        groups, widths = {p.group for p in parts}, {p.q.shape[1] for p in parts}
        if len(groups) != 1 or len(widths) != 1:
            raise QwQError(f"int4 parts of one linear differ in group size {sorted(groups)} or "
                           f"inputs {sorted(widths)}")
        g, k = groups.pop(), widths.pop()
        if g not in INT4_GROUPS or k % g:
            raise QwQError(f"int4 takes groups of {', '.join(map(str, INT4_GROUPS))} inputs "
                           f"dividing in_features; got {g} for {k}")
        device = torch.device(device)
        q = torch.cat([p.q.to(device) for p in parts]) if len(parts) > 1 else parts[0].q.to(device)
        n = q.shape[0]
        self.cuda_kernel = device.type == "cuda"
        if self.cuda_kernel:
            if dtype != torch.bfloat16:
                raise QwQError("int4 on CUDA runs in bfloat16 (tinygemm takes no other "
                               "activation dtype); use dtype='bfloat16'")
            # (n, k / 2) bytes, even inputs in the high nibble (as gpt-fast packs them); k-tiles
            # of 16 inputs go 8 to a 16-byte load where k allows (QwQ's widths all do)
            pairs = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8).contiguous()
            del q
            inner = next(t for t in (8, 4, 2) if k % (16 * t) == 0)
            packed = torch.ops.aten._convert_weight_to_int4pack(pairs, inner)
            del pairs
        else:
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 1)
            del q
        self.register_buffer("packed", packed)
        scale = torch.cat([p.scale.to(device, torch.float32) for p in parts])
        zero = torch.cat([p.zero.to(device, torch.float32) for p in parts])
        # (k / g, n, 2): each group's scale and zero side by side
        sz = torch.stack([scale, zero], -1).transpose(0, 1).contiguous()
        self.register_buffer("scales_zeros", sz.to(dtype))
        self.bias = None if bias is None else nn.Parameter(bias.to(device, dtype),
                                                           requires_grad=False)
        self.group_size, self.out_features, self.in_features = g, n, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if self.cuda_kernel:  # tinygemm takes a contiguous bf16 matrix
            y = torch.ops.aten._weight_int4pack_mm(x2.contiguous(), self.packed,
                                                   self.group_size, self.scales_zeros)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.packed, self.group_size,
                                                           self.scales_zeros)
        y = y.view(*shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias

    def dequantized(self) -> torch.Tensor:
        """(out, in) in the activation dtype: the weight the kernel multiplies by, read back
        through the kernel itself (x = the identity). For tests; memory in in_features^2."""
        eye = torch.eye(self.in_features, dtype=self.scales_zeros.dtype,
                        device=self.packed.device)
        bias, self.bias = self.bias, None
        try:
            return self(eye).t().contiguous()
        finally:
            self.bias = bias


class BlockLinear(nn.Module):
    """q5_0 or q8_0 weights (qwq/kernels/blocks.py); the kernel where it is built, torch
    elsewhere."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype,
                 fmt: blocks.BlockFormat, block_scales: blocks.BlockScales | None = None):
        super().__init__()
        self.fmt = fmt
        self.register_buffer("packed", fmt.pack(weight, scales=block_scales))
        self.bias = None if bias is None else nn.Parameter(bias.to(dtype), requires_grad=False)
        self.out_features, self.in_features = weight.shape
        self.kernel = getattr(torch.ops.qwq, f"{fmt.name}_linear") \
            if not weight.is_cuda and kernels_available() else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).contiguous()
        if self.kernel is not None:
            y = self.kernel(x2, self.packed, self.bias, self.out_features)
        else:
            y = blocks.linear(self.fmt, x2, self.packed, self.bias, self.out_features)
        return y.view(*shape[:-1], self.out_features)


def quantize_linear(linear: nn.Module, mode: str, dtype: torch.dtype,
                    block_scales: blocks.BlockScales | None = None) -> nn.Module:
    """The linear in `mode`; block_scales: the grid its weight is stored on (an AWQ
    checkpoint's), which q5_0/q8_0 pack on (other modes ignore it)."""
    if not isinstance(linear, nn.Linear):  # built in its format already (load_int4)
        return linear
    bias = None if linear.bias is None else linear.bias.data
    if mode in blocks.FORMATS and linear.in_features % blocks.GROUP:
        # a tensor-parallel shard (or an odd model) whose inputs don't fill whole groups
        mode = "w8a8" if not linear.weight.is_cuda else "int8"
    if mode in ("int8", "w8a8"):
        return Int8Linear(linear.weight.data, bias, dtype, int8_activations=mode == "w8a8")
    if mode == "int4":
        return Int4Linear(linear.weight.data, bias, dtype)
    if mode in blocks.FORMATS:
        return BlockLinear(linear.weight.data, bias, dtype, blocks.FORMATS[mode],
                           block_scales)
    return linear


# The head's format where it differs from the layers': the logits are what sampling sees.
# Under int4 the head is int8 per row (QwQ-32B: 0.78 GB against 0.41 GB at int4), as GGUFs
# ship it at 6-8 bits and AWQ checkpoints in 16.
DEFAULT_HEADS = {"q5_0": "q8_0", "int4": "int8"}


def quantize_model(model: Qwen2Model, mode: str, head_mode: str | None = None) -> Qwen2Model:
    """Swap every projection (and the output head) for its quantized form, in place; q5_0 and
    q8_0 pack each projection on the checkpoint's grid where model.pending_scales holds one."""
    if mode not in QUANT_MODES or (head_mode or mode) not in QUANT_MODES:
        raise QwQError(f"quantize={mode!r} is not supported; choose one of "
                       f"{', '.join(QUANT_MODES)}")
    try:
        return _quantize_model(model, mode, head_mode)
    finally:
        model.pending_scales.clear()  # the checkpoint's grids (load_weights) are spent


def _quantize_model(model: Qwen2Model, mode: str, head_mode: str | None) -> Qwen2Model:
    if mode == "gguf":
        if not isinstance(model.lm_head, GGMLLinear):
            raise QwQError("quantize='gguf' computes a GGUF file's tensors as stored; this "
                           "model was not loaded from a GGUF (choose q5_0, q8_0, int8, int4)")
        return model
    if mode == "none":
        return model
    dtype = model.norm.weight.dtype  # the activation dtype (the token table may be blocks)
    if dtype == torch.float32:
        raise QwQError("quantized kernels take bfloat16 or float16 activations; use "
                       "dtype='bfloat16' with quantize")
    for i, layer in enumerate(model.layers):
        attn, mlp = layer.self_attn, layer.mlp
        grid = {part: model.pending_scales.get(f"layers.{i}.{part}") for part in PROJECTIONS}
        attn.qkv_proj = quantize_linear(attn.qkv_proj, mode, dtype, grid["self_attn.qkv_proj"])
        # Under w8a8 only q|k|v, gate|up and the head take int8 activations. down_proj's input
        # (silu(gate) * up) carries outliers: on the demo model a quarter of its rows peak above
        # 25x their rms, and per-token int8 loses them (+9% perplexity on short texts). And
        # o_proj and down_proj are the row-parallel layers of tensor parallelism, where each
        # rank sees a slice of a token: a per-token scale would depend on the split.
        # (q5_0 and q8_0 scale activations per block of 32, which neither concern reaches.)
        row_mode = "int8" if mode == "w8a8" else mode
        attn.o_proj = quantize_linear(attn.o_proj, row_mode, dtype, grid["self_attn.o_proj"])
        mlp.gate_up_proj = quantize_linear(mlp.gate_up_proj, mode, dtype,
                                           grid["mlp.gate_up_proj"])
        mlp.down_proj = quantize_linear(mlp.down_proj, row_mode, dtype, grid["mlp.down_proj"])
    if not model.config.tie_word_embeddings:
        if head_mode is None:
            head_mode = DEFAULT_HEADS.get(mode)
        model.lm_head = quantize_linear(model.lm_head, head_mode or mode, dtype)
    return model


# ---- int4 from a checkpoint's own codes ------------------------------------------------------
#
# A 4-bit checkpoint becomes Int4Linear layers tensor by tensor (no float copy of the model):
# AWQ's codes at its own group size, GGUF's Q4_0 / Q4_1 / Q4_K blocks at groups of 32, exactly
# (only scale and zero are rounded to bf16, as the kernel takes them). A Q4_K_M file mixes in
# other types: Q6_K for half the layers' attn_v and ffn_down (32 of QwQ-32B's 64: 4.70 G
# weights) and the output head, sometimes Q5_0/Q8_0. Those projections are re-rounded to int4
# at groups of 32 (5 bits a weight with a bf16 scale and zero: 2.94 GB) rather than int8 per
# row (4.70 GB). QwQ-32B Q4_K_M is then 20.72 GB: 16.57 GB of Q4_K layers at groups of 32,
# 2.94 GB re-rounded, the head int8 0.78 GB, the token table kept in its Q4_K blocks 0.44 GB.
# On a 24 GiB card that leaves 3.6 GB of KV cache, 13,759 tokens in bf16 (27,094 in fp8;
# qwq plan); with int8 rows it would be 22.48 GB and 2.1 GB, 8,039 tokens, and on a card of
# 24e9 bytes 2,301 against 8,020. Groups of 32 keep most of Q6_K's precision where 128 would
# not (and share the Q4_K parts' grid, so a fused q|k|v or gate|up stays one kernel call).
_GGUF_INT4_GROUP = 32


def stored_codes(stored: StoredTensor, device: torch.device | str = "cpu",
                 group: int = _GGUF_INT4_GROUP) -> GroupCodes:
    """A GGUF tensor as int4 GroupCodes on `device`: Q4_0 / Q4_1 / Q4_K exactly (group 32),
    any other type dequantized and re-rounded (round_codes at `group`), a slab of rows at a
    time (float32 temporaries of a whole 27648-wide matrix would be gigabytes)."""
    rows, cols = stored.shape
    exact = stored.qtype in ggml.INT4_EXACT
    g = _GGUF_INT4_GROUP if exact else group
    q = torch.empty((rows, cols), dtype=torch.uint8, device=device)
    scale = torch.empty((rows, cols // g), dtype=torch.float32, device=device)
    zero = torch.empty_like(scale)
    slab = max(1, (1 << 22) // cols)
    for r in range(0, rows, slab):
        part = stored.data[r:r + slab]
        if exact:
            c = ggml.group_codes(part.to(device), stored.qtype)
        else:
            if stored.qtype in ggml.TYPES:
                w = ggml.dequantize(part.to(device), stored.qtype)
            else:
                w = _dequantize_other(StoredTensor(part, stored.qtype, (part.shape[0], cols)))
            c = round_codes(w.to(device), g)
        q[r:r + slab], scale[r:r + slab], zero[r:r + slab] = c.q, c.scale, c.zero
    return GroupCodes(q, scale, zero, g)


def int4_source(ckpt) -> bool:
    """Whether quantize="int4" loads this checkpoint from its own codes (load_int4): an AWQ
    directory or a GGUF file; float checkpoints are rounded after loading (quantize_model)."""
    return ckpt.format == "gguf" or "AWQ4" in ckpt.weight_types().values()


def _int4_linear(ckpt, names: list[str], bias: torch.Tensor | None, dtype: torch.dtype,
                 device: torch.device) -> Int4Linear:
    if ckpt.format == "gguf":
        codes = [stored_codes(ckpt.stored(n), device) for n in names]
    else:
        codes = [ckpt.group_codes(n) for n in names]  # AWQ; None for a float tensor
    group = next((c.group for c in codes if c is not None), None)
    if group is not None and group not in INT4_GROUPS:  # an AWQ group tinygemm lacks (16, 512):
        k = codes[0].q.shape[1]                          # the one case rounded a second time
        group = int4_group_size(k, min(INT4_GROUPS, key=lambda g: abs(g - group)))
        codes = [c if c is None else round_codes(c.dequantize(), group) for c in codes]
    for i, n in enumerate(names):  # float parts: rounded on the others' grid
        if codes[i] is None:
            w = ckpt.load(n, torch.float32).to(device)
            codes[i] = round_codes(w, group or int4_group_size(w.shape[1]))
            del w
    return Int4Linear.from_codes(codes, bias, dtype, device)


def load_int4(model, ckpt, dtype: torch.dtype, device: torch.device,
              head_mode: str | None = None) -> None:
    """Fill a Qwen2Model made on the meta device from an AWQ directory or a GGUF as int4,
    one tensor at a time: projections from their own codes (see above), the head in
    head_mode (default int8; a tied head shares the float token table), the token table as
    the file holds it (a GGUF's blocks; AWQ's 16 bits)."""
    device = torch.device(device)
    model.load_linears(lambda names, bias: _int4_linear(ckpt, names, bias, dtype, device),
                       lambda n: ckpt.load(n, dtype), dtype, device)
    cfg, table = model.config, "model.embed_tokens.weight"
    if ckpt.format == "gguf" and not cfg.tie_word_embeddings:
        model.embed_tokens = GGMLEmbedding(ckpt.stored(table), dtype, device)
    else:
        model.embed_tokens = nn.Embedding.from_pretrained(ckpt.load(table, dtype).to(device),
                                                          freeze=True)
    head_mode = head_mode or DEFAULT_HEADS["int4"]
    if cfg.tie_word_embeddings:
        model.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False, device="meta")
        model.lm_head.weight = model.embed_tokens.weight
    elif head_mode == "int4":
        model.lm_head = _int4_linear(ckpt, ["lm_head.weight"], None, dtype, device)
    elif head_mode == "int8":  # rows read and rounded a slab at a time, from float32
        q = torch.empty((cfg.vocab_size, cfg.hidden_size), dtype=torch.int8, device=device)
        scale = torch.empty(cfg.vocab_size, dtype=torch.float32, device=device)
        for r in range(0, cfg.vocab_size, 8192):
            stop = min(r + 8192, cfg.vocab_size)
            rows = ckpt.load_slice("lm_head.weight", 0, r, stop, torch.float32).to(device)
            q[r:stop], scale[r:stop] = quantize_weight_rows(rows)
            del rows
        model.lm_head = Int8Linear.from_rows(q, scale, None, dtype)
    else:  # another format: rounded on the CPU from the 16-bit head, then moved
        head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False, device="meta")
        head.weight = nn.Parameter(ckpt.load("lm_head.weight", dtype), requires_grad=False)
        model.lm_head = quantize_linear(head, head_mode, dtype).to(device)
        del head
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the loading temporaries' cached blocks, for the KV cache
