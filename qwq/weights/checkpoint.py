"""A checkpoint behind one interface, whatever its format: its config, its tensors under their
Hugging Face names and shapes, and the check of its tensor set against the config."""

from __future__ import annotations

import os
import sys
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from qwq.config import ModelConfig
from qwq.errors import CheckpointError
from qwq.model.layout import iter_shapes
from qwq.stored import GroupCodes, StoredTensor

if TYPE_CHECKING:  # a type only: the packer's, built by qwq.weights.awq
    from qwq.kernels.blocks import BlockScales


class Backend(ABC):
    """What a file format provides, the one interface Checkpoint reads it through: its tensors
    by HF name (names, load, load_slice: every format's), and what only some formats store,
    each with a default for the formats that lack it: no tensor types, no metadata, no codes
    or grids (None), and stored / raw refused by name. safetensors_dir.SafetensorsBackend
    (AWQBackend) and gguf_file.GGUFBackend implement it."""

    format: ClassVar[str]  # "safetensors" | "gguf"
    path: Path  # the directory or file, for errors

    @abstractmethod
    def names(self) -> list[str]:
        """HF names of every tensor, in the order they stream."""

    @abstractmethod
    def load(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """One tensor, whole, HF-shaped, in `dtype` (None: as stored)."""

    @abstractmethod
    def load_slice(self, name: str, dim: int, start: int, stop: int) -> torch.Tensor:
        """Rows (dim 0) or columns (dim 1) [start, stop) of one tensor."""

    def ggml_types(self) -> dict[str, str]:
        """HF name -> GGML type name of each tensor (a GGUF's); {} for other formats."""
        return {}

    def weight_types(self) -> dict[str, str]:
        """HF name -> how each quantized tensor is stored; {} for float checkpoints."""
        return {}

    def metadata(self) -> dict[str, Any]:
        """The file's key-values (a GGUF's); {} for other formats."""
        return {}

    def stored(self, name: str) -> StoredTensor:
        """One tensor in the file's own blocks, in place; only a GGUF stores blocks."""
        raise CheckpointError(f"{self.path}: tensors in their stored block format need a "
                              f"GGUF file; this is a {self.format} checkpoint")

    def raw(self, name: str) -> tuple[Any, str, tuple[int, ...]]:
        """(numpy data as stored, GGML type name, HF shape); only a GGUF's."""
        raise CheckpointError(f"{self.path}: raw_gguf_tensor needs a GGUF checkpoint")

    def group_codes(self, name: str) -> GroupCodes | None:
        """A linear's 4-bit codes and group parameters as stored (AWQ's); None for any other
        tensor or format."""
        return None

    def block_scales(self, name: str) -> BlockScales | None:
        """The grid a weight is stored on, for the block packer (AWQ's group scales); None
        for any other tensor or format."""
        return None


@dataclass
class Checkpoint:
    path: Path
    format: str  # "safetensors" | "gguf": the backend's
    config: ModelConfig
    generation_config: dict = field(default_factory=dict)
    _backend: Backend | None = field(default=None, repr=False)

    def tensor_names(self) -> list[str]:
        """Hugging Face names of every tensor, in the order iter_tensors yields them."""
        return list(self._backend.names())

    def iter_tensors(self, dtype: torch.dtype | None = None,
                     names: Iterable[str] | None = None, block_scales: bool = False
                     ) -> Iterator[tuple[str, torch.Tensor]]:
        """(HF name, tensor) pairs; dtype None keeps the stored dtype (float32 for GGUF).
        block_scales: after each weight stored on a grid (AWQ), (name, BlockScales) with its
        scales, for packing on that grid (Qwen2Model.load_weights takes both)."""
        wanted = self.tensor_names() if names is None else list(names)
        unknown = sorted(set(wanted) - set(self.tensor_names()))
        if unknown:
            raise CheckpointError(f"{self.path}: no tensors named {unknown[:4]}")
        for name in _progress(wanted, f"loading {self.path.name}"):
            yield name, self._backend.load(name, dtype)
            scales = self._backend.block_scales(name) if block_scales else None
            if scales is not None:
                yield name, scales

    def load(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """One tensor, whole, in `dtype` (None: as stored; float32 for GGUF blocks)."""
        if name not in self.tensor_names():
            raise CheckpointError(f"{self.path}: no tensor named {name!r}")
        return self._backend.load(name, dtype)

    def load_slice(self, name: str, dim: int, start: int, stop: int,
                   dtype: torch.dtype | None = None) -> torch.Tensor:
        """Rows (dim 0) or columns (dim 1) [start, stop) of one tensor, reading only those
        bytes where the format allows (a rank's shard for tensor parallelism)."""
        if name not in self.tensor_names():
            raise CheckpointError(f"{self.path}: no tensor named {name!r}")
        tensor = self._backend.load_slice(name, dim, start, stop)
        return tensor if dtype is None else tensor.to(dtype)

    def gguf_types(self) -> dict[str, str]:
        """HF name -> GGML type name (Q5_0, Q8_0, F32, ...) of each tensor; {} for safetensors."""
        return self._backend.ggml_types()

    def weight_types(self) -> dict[str, str]:
        """How each quantized tensor is stored: GGML type names for GGUF, "AWQ4" for an AWQ
        directory's linears; {} for float checkpoints. quantize="auto" reads this."""
        return self._backend.weight_types()

    def group_codes(self, name: str) -> GroupCodes | None:
        """An AWQ linear's 4-bit codes and group parameters as stored (GroupCodes), None for
        any other tensor (GGUF blocks: stored() and qwq.kernels.ggml.group_codes)."""
        return self._backend.group_codes(name)

    def gguf_metadata(self) -> dict[str, Any]:
        """Decoded GGUF key-values (tokenizer.ggml.*, chat template, ...); {} for safetensors."""
        return dict(self._backend.metadata())

    def stored(self, name: str) -> StoredTensor:
        """One tensor as the file stores it (a GGUF's blocks, in place), for layers that
        compute in the stored format (quantize="gguf"); an error for other formats."""
        return self._backend.stored(name)

    def raw_gguf_tensor(self, name: str) -> tuple[Any, str, tuple[int, ...]]:
        """(numpy data as stored, GGML type name, HF shape) of one tensor of a GGUF file."""
        return self._backend.raw(name)


def _progress(items: list[str], desc: str) -> Iterable[str]:
    """A tqdm bar on stderr, only for people watching a terminal."""
    quiet = os.environ.get("QWQ_NO_PROGRESS") == "1" or not sys.stderr.isatty()
    if quiet:
        return items
    from tqdm import tqdm
    return tqdm(items, desc=desc, unit="tensor", file=sys.stderr, leave=False)


def check_tensor_set(source: str, cfg: ModelConfig, have: Mapping[str, tuple[int, ...]]) -> None:
    """Fail now, not halfway through loading, when a tensor is missing or misshapen."""
    missing: list[str] = []
    # lazy walk that stops early: a forged layer count must not cost time or memory
    for name, shape in iter_shapes(cfg):
        if name not in have:
            missing.append(name)
            if len(missing) == 5:
                break
        elif tuple(have[name]) != shape:
            raise CheckpointError(f"{source}: tensor {name} has shape {tuple(have[name])}, "
                                  f"the config implies {shape}")
    if missing:
        raise CheckpointError(f"{source}: tensors the config implies are missing, "
                              f"e.g. {missing}")
