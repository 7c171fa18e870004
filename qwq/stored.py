"""A tensor as its checkpoint stores it, for layers that compute in the stored format."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class StoredTensor:
    """data: a read-only-in-practice view of the file's bytes (a copy-on-write mapping: the
    file is never written); (rows, row_bytes) uint8 for block types, (rows, cols) floats for
    F32/F16/BF16. qtype: the GGML type name (Q4_K, Q6_K, F16, ...). shape: the HF shape.
    drop_pages: for a layer that keeps a copy of data rather than data, unmaps the file's pages
    under it from this process (they count as its resident memory once touched); None where
    data is not a file mapping."""

    data: torch.Tensor
    qtype: str
    shape: tuple[int, ...]
    drop_pages: Callable[[], None] | None = None


@dataclass(frozen=True)
class GroupCodes:
    """A weight as 4-bit codes on an affine grid per group of `group` inputs, in torch's
    tinygemm convention (torch.ops.aten._weight_int4pack_mm): w = (q - 8) * scale + zero.
    q: (rows, cols) uint8 of 0..15; scale, zero: (rows, cols // group) float32. AWQ's
    (q - z) * s and GGUF's Q4_0 / Q4_1 / Q4_K blocks are exactly this (qwq.weights.awq,
    qwq.kernels.ggml.group_codes)."""

    q: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    group: int

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.q.shape)

    def dequantize(self) -> torch.Tensor:
        """(rows, cols) float32: the values the codes stand for."""
        rows, cols = self.q.shape
        q = self.q.float().view(rows, cols // self.group, self.group) - 8
        return (q * self.scale[..., None] + self.zero[..., None]).view(rows, cols)
