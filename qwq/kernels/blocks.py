"""Block formats for the kernels in blocks.cpp, packed from float weights, and the same product
in plain torch.

q5_0: GGUF Q5_0's values, 5-bit weights in blocks of 32 with one fp16 scale (5.5 bits a
weight). Packing follows llama.cpp's rounding (scale = the block's largest-magnitude value /
-16), so a Q5_0 tensor dequantized and packed again gives back its own values and scales: the
GGUF's bits run as they were shipped.
q8_0: GGUF Q8_0, 8-bit weights in blocks of 32 with one fp16 scale (8.5 bits).
Both take activations rounded to int8 per block of 32 (GGUF's Q8_0). See blocks.cpp for the
layout: values are stored unsigned (u = value + offset) and interleaved within 128-input groups.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

GROUP = 128  # inputs per group: four blocks of 32
_BIT = torch.arange(8, dtype=torch.uint8)


def _interleave(v: torch.Tensor) -> torch.Tensor:
    """(..., groups, 4 blocks, 32) -> (..., groups, 128): word 4t + b is block b's word t."""
    s = v.shape
    return v.reshape(*s[:-2], 4, 8, 4).transpose(-3, -2).reshape(*s[:-2], GROUP)


def _deinterleave(v: torch.Tensor) -> torch.Tensor:
    s = v.shape
    return v.reshape(*s[:-1], 8, 4, 4).transpose(-3, -2).reshape(*s[:-1], 4, 32)


def _q5_round(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    d = w.gather(-1, w.abs().argmax(-1, keepdim=True)).div_(-16)
    inv = torch.where(d != 0, 1 / d, torch.zeros_like(d))
    return w.mul_(inv).add_(16.5).floor_().clamp_(0, 31).to(torch.uint8), d


def _q8_round(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    d = w.abs().amax(-1, keepdim=True).div_(127)
    inv = torch.where(d != 0, 1 / d, torch.zeros_like(d))
    return w.mul_(inv).round_().clamp_(-127, 127).add_(128).to(torch.uint8), d


def _q5_bytes(u: torch.Tensor) -> torch.Tensor:
    """(rows, groups, 128) values -> (rows, groups, 80): nibbles, then the fifth bits."""
    rows, groups = u.shape[:2]
    nibbles = (u[..., :64] & 15) | ((u[..., 64:] & 15) << 4)
    fifth = ((u >> 4).view(rows, groups, 16, 8) << _BIT.to(u.device)).sum(-1, dtype=torch.uint8)
    return torch.cat([nibbles, fifth], -1)


def _q5_values(data: torch.Tensor) -> torch.Tensor:
    nibbles, fifth = data[..., :64], data[..., 64:80]
    u = torch.cat([nibbles & 15, nibbles >> 4], -1)
    return u | ((fifth[..., None] >> _BIT.to(data.device)) & 1).flatten(-2) << 4


@dataclass(frozen=True)
class BlockFormat:
    name: str
    group_bytes: int  # one row's 128 inputs: values, then 4 fp16 scales
    offset: int  # stored u means (u - offset) * scale
    _round: object
    _to_bytes: object
    _from_bytes: object

    @property
    def bits(self) -> float:
        return self.group_bytes * 8 / GROUP

    def pack(self, weight: torch.Tensor, slab: int = 4096) -> torch.Tensor:
        """(out, in) float weights -> (ceil(out / 4), in / 128 * 4 * group_bytes) uint8: tiles
        of 4 rows x 128 inputs, row by row within a tile (see blocks.cpp)."""
        n, k = weight.shape
        if k % GROUP:
            raise ValueError(f"{self.name} needs in_features divisible by {GROUP}, got {k}")
        groups = k // GROUP
        out = torch.zeros(-(-n // 4), groups * 4 * self.group_bytes, dtype=torch.uint8,
                          device=weight.device)
        for r in range(0, n, slab):  # slab % 4 == 0
            w = weight[r:r + slab].to(torch.float32, copy=True).view(-1, k // 32, 32)
            rows = w.shape[0]
            u, d = self._round(w)
            u = _interleave(u.view(rows, groups, 4, 32))
            scales = d.view(rows, groups, 4).to(torch.float16).view(torch.uint8)
            g = torch.cat([self._to_bytes(u), scales], -1)
            g = torch.cat([g, g.new_zeros(-rows % 4, groups, self.group_bytes)])
            out[r // 4:r // 4 + g.shape[0] // 4] = g.view(-1, 4, groups, self.group_bytes) \
                .transpose(1, 2).reshape(-1, out.shape[1])
        return out

    def dequantize(self, packed: torch.Tensor, out_features: int, in_features: int
                   ) -> torch.Tensor:
        """Packed tiles -> (out, in) float32."""
        groups = in_features // GROUP
        g = packed.view(-1, groups, 4, self.group_bytes).transpose(1, 2) \
            .reshape(-1, groups, self.group_bytes)[:out_features]
        values = _deinterleave(self._from_bytes(g)).float().sub_(self.offset)
        scales = g[..., -8:].contiguous().view(torch.float16).float()
        return values.mul_(scales[..., None]).view(out_features, in_features)


Q5_0 = BlockFormat("q5_0", 88, 16, _q5_round, _q5_bytes, _q5_values)
Q8_0 = BlockFormat("q8_0", 136, 128, _q8_round, lambda u: u, lambda data: data[..., :GROUP])
FORMATS = {f.name: f for f in (Q5_0, Q8_0)}


def quantize_activations(x: torch.Tensor) -> torch.Tensor:
    """Rows rounded to int8 per block of 32 and scaled back, as the kernels see them."""
    m, k = x.shape
    b = x.float().view(m, k // 32, 32)
    peak = b.abs().amax(-1, keepdim=True)
    inv = torch.where(peak > 0, 127 / peak, torch.zeros_like(peak))
    return (b * inv).round_().mul_(peak / 127).view(m, k)


def linear(fmt: BlockFormat, x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None,
           out_features: int, slab: int = 1024) -> torch.Tensor:
    """The kernels' product in plain torch (float32 sums): for devices and CPUs without the
    kernels, and the reference they are tested against."""
    k = x.shape[-1]
    xq = quantize_activations(x)
    y = torch.cat([xq @ fmt.dequantize(packed[q:q + slab], min(4 * slab, out_features - 4 * q),
                                       k).T
                   for q in range(0, packed.shape[0], slab)], 1)
    if bias is not None:
        y += bias.float()
    return y.to(x.dtype)
