"""Layers whose weights stay in the GGUF file's own block types (quantize="gguf", what "auto"
picks for a GGUF on CPU): no second rounding, and a 4.5-bit file stays 4.5 bits in memory.

A weight is a read-only view of the file's bytes (qwq.weights: StoredTensor), or for Q5_0 and
Q8_0 the same bytes rearranged once (ggml.computed; the file's pages then dropped), one part per
stored tensor: a fused q|k|v or gate|up holds each part in its own type (llama.cpp's Q4_K_M
mixes Q4_K and Q6_K), and each part runs on its type's kernel (qwq/kernels/ggml.cpp, layouts in ggml.py) against
int8 activation blocks, as llama.cpp pairs them. Types without a kernel (F16, BF16, F32, the
2-3 bit K-quants) are dequantized once into the activation dtype.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize
from torch import nn

from qwq.kernels import ggml

if TYPE_CHECKING:  # a type only: qwq.weights imports qwq.model.layout
    from qwq.stored import StoredTensor


def _dequantize_other(stored: StoredTensor) -> torch.Tensor:
    """A type without a kernel, as float32: floats as they are, the 2-3 bit K-quants through
    the gguf package's decoder (once, at load)."""
    if stored.data.dtype != torch.uint8:
        return stored.data.float()
    values = gguf_dequantize(stored.data.numpy(), GGMLQuantizationType[stored.qtype])
    return torch.from_numpy(np.asarray(values, dtype=np.float32)).view(stored.shape)


# Bytes of Q5_0 and Q8_0 a model rearranges at load (ggml.computed), at most. The copy is cheap
# for what these types fill in a K-quant mix (the demo GGUF's 0.3 GB: its output and its
# 896-wide layers), not for a whole Q8_0 or Q5_0 file: copying a 7B Q8_0 file's 7.5 GB took its
# load from 1.2 s to 11-13 s on a 24 GB machine (page faults into memory the page cache holds),
# against llama.cpp's 1.8 s. Such files compute from the mapping as filed (the same numbers).
REARRANGE_BUDGET = 1 << 30


def rearranging_fits(stored: Iterable[StoredTensor]) -> bool:
    """Whether these tensors' Q5_0 and Q8_0 bytes fit REARRANGE_BUDGET."""
    return sum(s.data.nbytes for s in stored if s.qtype in ggml.LAYOUTS) <= REARRANGE_BUDGET


class _Part(nn.Module):
    """One stored tensor's rows of a fused weight, computed in its own format."""

    def __init__(self, stored: StoredTensor, dtype: torch.dtype, rearrange: bool):
        super().__init__()
        self.qtype = stored.qtype
        self.out_features, self.in_features = stored.shape
        self.native = stored.qtype in ggml.TYPES
        if self.native:
            raw, t = ggml.computed(stored.data, stored.qtype) if rearrange \
                else (stored.data, ggml.ggml_type(stored.qtype))
            if raw is not stored.data and stored.drop_pages is not None:
                stored.drop_pages()  # the copy serves this layer; a tied table refaults its rows
            self.qtype = t.name
            self.register_buffer("raw", raw, persistent=False)
        else:
            self.register_buffer("weight", _dequantize_other(stored).to(dtype),
                                 persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.native:
            return F.linear(x, self.weight)
        return ggml.linear(x, self.raw, self.qtype, None, self.out_features)

    def nbytes(self) -> int:
        t = self.raw if self.native else self.weight
        return t.numel() * t.element_size()


class GGMLLinear(nn.Module):
    """y = x W^T + b, W the concatenation of its parts' rows, each in its stored type (Q5_0 and
    Q8_0 rearranged at load unless `rearrange` is False: see REARRANGE_BUDGET). When
    every part has a kernel, one call computes them all (a decode step makes ~170 of these
    calls on the 0.5B model: per-part Python, the concatenation and each part's fork/join of
    threads weighed as much as a fifth of the step). The bias is added to the rounded product
    in the activation dtype, as the layers always have."""

    def __init__(self, parts: list[StoredTensor], bias: torch.Tensor | None, dtype: torch.dtype,
                 rearrange: bool = True):
        super().__init__()
        widths = {p.shape[1] for p in parts}
        if len(widths) != 1:
            raise ValueError(f"parts of one linear take different input widths: {widths}")
        self.parts = nn.ModuleList(_Part(p, dtype, rearrange) for p in parts)
        self.in_features = widths.pop()
        self.out_features = sum(p.out_features for p in self.parts)
        self.bias = None if bias is None else nn.Parameter(bias.to(dtype), requires_grad=False)
        self._kernel: ggml.LinearParts | None = None

    def _apply(self, fn, recurse=True):
        self._kernel = None  # it holds the buffers as they were
        return super()._apply(fn, recurse)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._kernel is None and all(p.native for p in self.parts):
            self._kernel = ggml.LinearParts([p.raw for p in self.parts],
                                            [p.qtype for p in self.parts])
        if self._kernel is not None:
            y = self._kernel(x)
            return y if self.bias is None else y.add_(self.bias)
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).contiguous()
        outs = [part(x2) for part in self.parts]
        y = outs[0] if len(outs) == 1 else torch.cat(outs, -1)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*shape[:-1], self.out_features)

    def nbytes(self) -> int:
        return sum(p.nbytes() for p in self.parts)

    def kernel_parts(self) -> tuple[list[torch.Tensor], list[int]] | None:
        """The stored tensors and their ggml type ids, as ggml.cpp's kernels take them, or None
        where a part has no kernel."""
        if not all(p.native for p in self.parts):
            return None
        return [p.raw for p in self.parts], [ggml.ggml_type(p.qtype).id for p in self.parts]


class GGMLEmbedding(nn.Module):
    """The token table in its stored type: only the rows looked up are dequantized (QwQ-32B's
    table is 1.56 GB in 16 bits, 0.45 GB as Q4_K)."""

    def __init__(self, stored: StoredTensor, dtype: torch.dtype,
                 device: torch.device | str | None = None):
        super().__init__()
        self.qtype, self.dtype = stored.qtype, dtype
        self.num_embeddings, self.embedding_dim = stored.shape
        # the type id ggml_rows takes for this table, once checked; False: ggml.rows' torch path
        self._kernel_type: int | bool | None = None
        if stored.qtype in ggml.TYPES:  # on a GPU: a copy of the blocks (ggml.rows is torch there)
            raw = stored.data if device is None else stored.data.to(device)
            self.register_buffer("raw", raw, persistent=False)
        else:  # a float table (or a type without a kernel) is held as one
            self.register_buffer("raw", _dequantize_other(stored).to(device, dtype),
                                 persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.raw.dtype != torch.uint8:
            return F.embedding(ids, self.raw)
        if self._kernel_type is None:  # ggml.rows' checks, once (~30 us of every decode step)
            t = ggml.ggml_type(self.qtype)
            self._kernel_type = t.id if ggml.rows_kernel_takes(self.raw, t) \
                and self.raw.is_contiguous() else False
        if self._kernel_type is not False and ids.dtype == torch.long:
            return torch.ops.qwq.ggml_rows(self.raw, self._kernel_type, ids, self.dtype)
        return ggml.rows(self.raw, self.qtype, ids, self.dtype)

    def _apply(self, fn, recurse=True):
        self._kernel_type = None  # a move may take the table off the CPU
        return super()._apply(fn, recurse)
