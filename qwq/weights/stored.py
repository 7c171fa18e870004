"""A tensor as its checkpoint stores it, for layers that compute in the stored format."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class StoredTensor:
    """data: a read-only-in-practice view of the file's bytes (a copy-on-write mapping: the
    file is never written); (rows, row_bytes) uint8 for block types, (rows, cols) floats for
    F32/F16/BF16. qtype: the GGML type name (Q4_K, Q6_K, F16, ...). shape: the HF shape."""

    data: torch.Tensor
    qtype: str
    shape: tuple[int, ...]
