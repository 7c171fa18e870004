"""The KV cache's storage formats: 16-bit values, or 8-bit codes with a scale per row.

A cache row is one token's keys (or values) for one KV head: head_dim numbers. Quantized, a
row holds head_dim one-byte codes followed by its float16 scale (two more bytes), and
x ~= code * scale with scale = max|x| / the largest code. Codes and scale share the row, as
GGUF's q8_0 blocks keep theirs together: the cache stays one tensor per layer and K/V, so
writes, gathers and the decode kernel move whole rows, and a row is read in one pass.

  int8: codes -127..127. On CPUs the decode kernel (qwq/kernels/layers.cpp) reads them.
  fp8:  float8 e4m3fn codes (largest 448), the format GPUs compute in; also readable on CPU.
Either halves the cache: (head_dim + 2) bytes a row against 2 * head_dim.
"""

from __future__ import annotations

import torch

from qwq.errors import QwQError

KV_CACHE_DTYPES = ("auto", "bfloat16", "fp8", "int8")
# the largest code of each quantized storage dtype
LARGEST_CODE = {torch.int8: 127.0, torch.float8_e4m3fn: 448.0}
SCALE_DTYPE = torch.float16
SCALE_BYTES = 2
SMALLEST_SCALE = 2.0 ** -14


def kv_storage_dtype(name: str, model_dtype: torch.dtype) -> torch.dtype:
    """The cache tensor's dtype for a kv_cache_dtype setting ('auto': the model's dtype)."""
    if name not in KV_CACHE_DTYPES:
        raise QwQError(f"kv_cache_dtype={name!r} is not known; choose "
                       f"{', '.join(KV_CACHE_DTYPES)}")
    return {"auto": model_dtype, "bfloat16": torch.bfloat16, "fp8": torch.float8_e4m3fn,
            "int8": torch.int8}[name]


def is_quantized(dtype: torch.dtype) -> bool:
    return dtype in LARGEST_CODE


def row_width(head_dim: int, dtype: torch.dtype) -> int:
    """Elements of dtype in one cache row: head_dim values, or head_dim codes and the scale."""
    return head_dim + SCALE_BYTES if is_quantized(dtype) else head_dim


def row_bytes(head_dim: int, dtype: torch.dtype) -> int:
    return row_width(head_dim, dtype) * torch.empty((), dtype=dtype).element_size()


def quantize(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(..., D) values -> (..., D + 2) rows of dtype: D codes, then the float16 scale's bytes."""
    x = x.float()
    largest = LARGEST_CODE[dtype]
    # at least float16's smallest normal number, 2^-14: a subnormal scale would lose its own
    # precision, and rows that small (zeros too) are then kept within 2^-15 of their values
    scale = (x.abs().amax(-1, keepdim=True) / largest).clamp_min(SMALLEST_SCALE).to(SCALE_DTYPE)
    # divide by the scale as stored, so that code * scale is what a read gives back
    codes = x / scale.float()
    if dtype == torch.int8:
        codes = codes.round_()
    codes = codes.clamp_(-largest, largest).to(dtype)
    return torch.cat([codes.view(torch.uint8), scale.view(torch.uint8)], -1).view(dtype)


def dequantize(rows: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """(..., D + 2) quantized rows -> (..., D) values in out_dtype."""
    head_dim = rows.shape[-1] - SCALE_BYTES
    scale = rows[..., head_dim:].view(SCALE_DTYPE).float()
    return (rows[..., :head_dim].float() * scale).to(out_dtype)


def write(cache: torch.Tensor, slots: torch.Tensor, x: torch.Tensor) -> None:
    """cache[slots] = x (T, KVH, D), quantized when the cache is."""
    if is_quantized(cache.dtype):
        # as bytes: torch's CPU index_copy_ has no float8 kernel
        cache.view(torch.uint8).index_copy_(0, slots, quantize(x, cache.dtype).view(torch.uint8))
    else:
        cache.index_copy_(0, slots, x.to(cache.dtype))


def values(rows: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Rows read from a cache, as (..., head_dim) values in dtype."""
    return dequantize(rows, dtype) if is_quantized(rows.dtype) else rows.to(dtype)
