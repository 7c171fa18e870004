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
blocks, on qwq's own AVX-512 VNNI kernels (qwq/kernels); a GGUF's Q5_0 tensors run with their
own bits. Under q5_0 the head is q8_0: GGUFs ship it as Q8_0, and the logits are what sampling
sees.
A decode step reads every weight once, so bytes per weight set the speed limit.
"""

from __future__ import annotations

import torch
from torch import nn

from qwq.errors import QwQError
from qwq.kernels import blocks, kernels_available
from qwq.model.ggml_linear import GGMLLinear

QUANT_MODES = ("none", "gguf", "int8", "w8a8", "int4", "q5_0", "q8_0")

# "auto" on CPU computes a GGUF as shipped ("gguf": each tensor in its own block type, on
# qwq/kernels/ggml.cpp where it builds, torch elsewhere): no second rounding, and a 4.5-bit
# file stays 4.5 bits in memory. On GPUs, 8-bit weights (int8); 4-bit GGUFs and AWQ there, and
# AWQ directories on CPU, keep their former formats below until they get kernels of their own.
# AWQ4: a 4-bit AWQ directory's linears (qwq.weights.awq), taken like a 4-bit GGUF
_GGUF_LOW_BIT = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q2_K", "Q3_K", "Q6_K",
                 "AWQ4")
_GGUF_QUANTIZED = _GGUF_LOW_BIT + ("Q8_0", "Q8_K")


def auto_quantization(weight_types: dict[str, str], dtype: torch.dtype,
                      device: torch.device | str = "cpu", sharded: bool = False) -> str:
    """quantize="auto": a GGUF as shipped on CPU; otherwise the checkpoint's own precision
    (Checkpoint.weight_types: GGUF types, AWQ) mapped to a fast kernel, none for float
    checkpoints or float32 runs (the kernels take 16-bit activations). sharded: a
    tensor-parallel rank, whose slices of a tensor are loaded as floats and packed again."""
    if not weight_types or dtype == torch.float32:
        return "none"
    cpu = torch.device(device).type == "cpu"
    layer_types = [t for n, t in weight_types.items() if n.endswith("proj.weight")]
    if cpu and layer_types and "AWQ4" not in layer_types and not sharded:
        return "gguf"
    eight_bit = "w8a8" if cpu else "int8"
    low_bit = "q5_0" if cpu and kernels_available() else eight_bit
    modes = [low_bit if t in _GGUF_LOW_BIT else eight_bit if t in _GGUF_QUANTIZED else "none"
             for t in layer_types]
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


class Int4Linear(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype,
                 group_size: int = 128):
        super().__init__()
        n, k = weight.shape
        g = int4_group_size(k, group_size)
        w = weight.float().view(n, k // g, g)
        lo, hi = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
        scale = ((hi - lo) / 15.0).clamp(min=1e-8)
        q = torch.round((w - lo) / scale).clamp(0, 15).to(torch.int32).view(n, k)
        # the kernel computes (q - 8) * scale + zero
        zero = lo + 8 * scale
        self.cuda_kernel = weight.is_cuda
        if self.cuda_kernel:
            packed = torch.ops.aten._convert_weight_to_int4pack(
                (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8), 8)
        else:
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        self.register_buffer("packed", packed)
        sz = torch.cat([scale, zero], -1).view(n, k // g, 2).transpose(0, 1).contiguous()
        self.register_buffer("scales_zeros", sz.to(dtype))
        self.bias = None if bias is None else nn.Parameter(bias.to(dtype), requires_grad=False)
        self.group_size, self.out_features, self.in_features = g, n, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if self.cuda_kernel:
            y = torch.ops.aten._weight_int4pack_mm(x2, self.packed, self.group_size,
                                                   self.scales_zeros)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.packed, self.group_size,
                                                           self.scales_zeros)
        y = y.view(*shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias


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


def quantize_linear(linear: nn.Linear, mode: str, dtype: torch.dtype) -> nn.Module:
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
                           getattr(linear, "block_scales", None))
    return linear


def quantize_model(model: nn.Module, mode: str, head_mode: str | None = None) -> nn.Module:
    """Swap every projection (and the output head) for its quantized form, in place."""
    if mode not in QUANT_MODES or (head_mode or mode) not in QUANT_MODES:
        raise QwQError(f"quantize={mode!r} is not supported; choose one of "
                       f"{', '.join(QUANT_MODES)}")
    try:
        return _quantize_model(model, mode, head_mode)
    finally:
        for module in model.modules():  # the checkpoint's scale hints (load_weights) are spent
            module.__dict__.pop("block_scales", None)


def _quantize_model(model: nn.Module, mode: str, head_mode: str | None) -> nn.Module:
    if mode == "gguf":
        if not isinstance(model.lm_head, GGMLLinear):
            raise QwQError("quantize='gguf' computes a GGUF file's tensors as stored; this "
                           "model was not loaded from a GGUF (choose q5_0, q8_0, int8, int4)")
        return model
    if mode == "none":
        return model
    dtype = model.embed_tokens.weight.dtype
    if dtype == torch.float32:
        raise QwQError("quantized kernels take bfloat16 or float16 activations; use "
                       "dtype='bfloat16' with quantize")
    for layer in model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        attn.qkv_proj = quantize_linear(attn.qkv_proj, mode, dtype)
        # Under w8a8 only q|k|v, gate|up and the head take int8 activations. down_proj's input
        # (silu(gate) * up) carries outliers: on the demo model a quarter of its rows peak above
        # 25x their rms, and per-token int8 loses them (+9% perplexity on short texts). And
        # o_proj and down_proj are the row-parallel layers of tensor parallelism, where each
        # rank sees a slice of a token: a per-token scale would depend on the split.
        # (q5_0 and q8_0 scale activations per block of 32, which neither concern reaches.)
        row_mode = "int8" if mode == "w8a8" else mode
        attn.o_proj = quantize_linear(attn.o_proj, row_mode, dtype)
        mlp.gate_up_proj = quantize_linear(mlp.gate_up_proj, mode, dtype)
        mlp.down_proj = quantize_linear(mlp.down_proj, row_mode, dtype)
    if not model.config.tie_word_embeddings:
        if head_mode is None and mode == "q5_0":
            head_mode = "q8_0"
        model.lm_head = quantize_linear(model.lm_head, head_mode or mode, dtype)
    return model
