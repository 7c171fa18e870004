"""Block formats for the kernels in blocks.cpp, packed from float weights, and the same product
in plain torch.

q5_0: GGUF Q5_0's values, 5-bit weights in blocks of 32 with one fp16 scale (5.5 bits a
weight). Packing follows llama.cpp's rounding (scale = the block's largest-magnitude value /
-16), so a Q5_0 tensor dequantized and packed again gives back its own values and scales: the
GGUF's bits run as they were shipped.
q8_0: GGUF Q8_0, 8-bit weights in blocks of 32 with one fp16 scale (8.5 bits).
Both take activations rounded to int8 per block of 32 (GGUF's Q8_0). See blocks.cpp for the
layout: values are stored unsigned (u = value + offset) and interleaved within spans of up to
512 inputs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

GROUP = 128  # inputs per group: four blocks of 32
_BIT = torch.arange(8, dtype=torch.uint8)


def spans(groups: int) -> list[int]:
    """Groups per span along a row: 4 while at least 4 remain, then 2, then 1 (blocks.cpp)."""
    out = []
    while groups:
        out.append(4 if groups >= 4 else 2 if groups >= 2 else 1)
        groups -= out[-1]
    return out


@functools.cache
def lane_order(k: int) -> torch.Tensor:
    """Position p of a row in lane order -> its input index: in a span of S groups, 32-bit lane
    j of vector i holds block j % 4S's word i * 4/S + j / 4S."""
    parts, start = [], 0
    for s in spans(k // GROUP):
        i, j, byte = torch.arange(2 * s)[:, None, None], torch.arange(16)[:, None], torch.arange(4)
        word = i * (4 // s) + j // (4 * s)
        parts.append((start + 32 * (j % (4 * s)) + 4 * word + byte).flatten())
        start += s * GROUP
    return torch.cat(parts)


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
class BlockScales:
    """Scales a checkpoint's weight already sits on (an AWQ linear's group scales): (out,
    in / group) float16, NaN where none. It travels beside the weight (Checkpoint.iter_tensors
    with block_scales=True), is held per fused projection in Qwen2Model.pending_scales
    (load_weights) and reaches BlockFormat.pack through quantize_model; a type of its own, so
    no tensor of a checkpoint can pass for it."""

    scales: torch.Tensor
    group: int

    def per_block(self, rows: slice) -> torch.Tensor:
        """(rows, in / 32) float32: each block of 32 inputs' scale."""
        return self.scales[rows].float().repeat_interleave(self.group // 32, dim=1)


@dataclass(frozen=True)
class BlockFormat:
    name: str
    group_bytes: int  # bytes per row per 128 inputs; a span of S groups holds its values,
    # then its 4S fp16 scales
    offset: int  # stored u means (u - offset) * scale
    _round: object
    _to_bytes: object
    _from_bytes: object

    @property
    def bits(self) -> float:
        return self.group_bytes * 8 / GROUP

    def pack(self, weight: torch.Tensor, slab: int = 4096,
             scales: BlockScales | None = None) -> torch.Tensor:
        """(out, in) float weights -> (ceil(out / 4), in / 128 * 4 * group_bytes) uint8: tiles
        of 4 rows, each span's 4 rows in turn (see blocks.cpp).

        scales: the grid the weights already sit on (an AWQ checkpoint's). A block that is on
        its grid and within the format's range keeps that scale, so it packs exactly, without
        a second rounding; any other block rounds as usual."""
        n, k = weight.shape
        if k % GROUP:
            raise ValueError(f"{self.name} needs in_features divisible by {GROUP}, got {k}")
        groups = k // GROUP
        order = lane_order(k).to(weight.device)
        out = torch.zeros(-(-n // 4), groups * 4 * self.group_bytes, dtype=torch.uint8,
                          device=weight.device)
        for r in range(0, n, slab):  # slab % 4 == 0
            w = weight[r:r + slab].to(torch.float32, copy=True).view(-1, k // 32, 32)
            rows = w.shape[0]
            given = None if scales is None else scales.per_block(slice(r, r + slab)).to(w.device)
            orig = w.clone() if given is not None else None  # _round scales w in place
            u, d = self._round(w)
            if given is not None:
                u, d = self._on_grid(orig, u, d, given)
            values = self._to_bytes(u.view(rows, k)[:, order].view(rows, groups, GROUP))
            packed_scales = d.view(rows, k // 32).to(torch.float16).view(torch.uint8)
            pad = -rows % 4
            g0, col = 0, 0
            for s in spans(groups):
                piece = torch.cat([values[:, g0:g0 + s].flatten(1),
                                   packed_scales[:, 8 * g0:8 * (g0 + s)]], 1)
                piece = torch.cat([piece, piece.new_zeros(pad, piece.shape[1])])
                width = 4 * piece.shape[1]
                out[r // 4:r // 4 + piece.shape[0] // 4, col:col + width] = piece.view(-1, width)
                g0, col = g0 + s, col + width
        return out

    def _on_grid(self, w: torch.Tensor, u: torch.Tensor, d: torch.Tensor, given: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """u, d with each block that sits on its given scale's grid rounded on it instead.
        w: the (rows, blocks, 32) weights; u, d: the format's own rounding of them."""
        given = given.view(*d.shape)
        use = given.isfinite() & (given != 0)
        steps = w.div_(torch.where(use, given, torch.ones_like(given)))
        on_grid = steps.round()
        lo, hi = (0, 31) if self.offset == 16 else (1, 255)
        # a 16-bit rounding of k * scale (|k| <= 127) is within 0.25 of k; off the grid, or
        # past the format's range, the given scale would be a worse rounding: keep the format's
        fits = ((steps - on_grid).abs() <= 0.25) & (on_grid >= lo - self.offset) \
            & (on_grid <= hi - self.offset)
        use &= fits.all(-1, keepdim=True)
        u_grid = on_grid.add_(self.offset).clamp_(lo, hi).to(torch.uint8)
        return torch.where(use, u_grid, u), torch.where(use, given, d)

    def dequantize(self, packed: torch.Tensor, out_features: int, in_features: int
                   ) -> torch.Tensor:
        """Packed tiles -> (out, in) float32."""
        vb = self.group_bytes - 8  # a group's values; its 4 scales are 8 bytes
        values, scales, col = [], [], 0
        for s in spans(in_features // GROUP):
            width = 4 * s * self.group_bytes
            piece = packed[:, col:col + width].reshape(-1, s * self.group_bytes)[:out_features]
            values.append(self._from_bytes(piece[:, :s * vb].reshape(-1, s, vb)).flatten(1))
            scales.append(piece[:, s * vb:].contiguous().view(torch.float16).float())
            col += width
        lane = torch.cat(values, 1)
        natural = torch.empty_like(lane)
        natural[:, lane_order(in_features).to(lane.device)] = lane
        w = natural.float().sub_(self.offset).view(out_features, -1, 32)
        return w.mul_(torch.cat(scales, 1)[..., None]).view(out_features, in_features)


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
