"""Checkpoints: a Hugging Face directory of safetensors or a GGUF file, behind one interface.

`open_checkpoint` validates everything it can before any tensor is read (headers, config,
shard sizes, the tensor set the config implies), so a bad checkpoint fails fast with a
CheckpointError that names the file and the problem. `Checkpoint.iter_tensors` then yields
tensors under their Hugging Face names and shapes, whatever the file format.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from qwq.config import ModelConfig
from qwq.errors import CheckpointError
from qwq.model.layout import expected_shapes, iter_shapes
from qwq.weights.stored import StoredTensor

__all__ = ["Checkpoint", "check_tensor_set", "expected_shapes", "open_checkpoint",
           "save_safetensors_dir"]


class _Backend(Protocol):
    """What a file format provides: its tensors by HF name (GGUF adds metadata and raw)."""

    def names(self) -> list[str]: ...
    def load(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor: ...
    def load_slice(self, name: str, dim: int, start: int, stop: int) -> torch.Tensor: ...


@dataclass
class Checkpoint:
    path: Path
    format: str  # "safetensors" | "gguf"
    config: ModelConfig
    generation_config: dict = field(default_factory=dict)
    _backend: _Backend | None = field(default=None, repr=False)

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
        hints = getattr(self._backend, "block_scales", None) if block_scales else None
        for name in _progress(wanted, f"loading {self.path.name}"):
            yield name, self._backend.load(name, dtype)
            scales = hints(name) if hints else None
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
        if self.format != "gguf":
            return {}
        return {name: t.qtype.name for name, t in self._backend.by_hf.items()}

    def weight_types(self) -> dict[str, str]:
        """How each quantized tensor is stored: GGML type names for GGUF, "AWQ4" for an AWQ
        directory's linears; {} for float checkpoints. quantize="auto" reads this."""
        if self.format == "gguf":
            return self.gguf_types()
        return dict.fromkeys(getattr(self._backend, "weights", {}), "AWQ4")

    def gguf_metadata(self) -> dict[str, Any]:
        """Decoded GGUF key-values (tokenizer.ggml.*, chat template, ...); {} for safetensors."""
        return dict(self._backend.metadata) if self.format == "gguf" else {}

    def stored(self, name: str) -> StoredTensor:
        """One tensor as the file stores it (a GGUF's blocks, in place), for layers that
        compute in the stored format (quantize="gguf")."""
        if self.format != "gguf":
            raise CheckpointError(f"{self.path}: tensors in their stored block format need a "
                                  f"GGUF file; this is a {self.format} checkpoint")
        return self._backend.stored(name)

    def raw_gguf_tensor(self, name: str) -> tuple[Any, str, tuple[int, ...]]:
        """(numpy data as stored, GGML type name, HF shape) of one tensor of a GGUF file."""
        if self.format != "gguf":
            raise CheckpointError(f"{self.path}: raw_gguf_tensor needs a GGUF checkpoint")
        return self._backend.raw(name)


def _progress(items: list[str], desc: str) -> Iterable[str]:
    """A tqdm bar on stderr, only for people watching a terminal."""
    quiet = os.environ.get("QWQ_NO_PROGRESS") == "1" or not sys.stderr.isatty()
    if quiet:
        return items
    from tqdm import tqdm
    return tqdm(items, desc=desc, unit="tensor", file=sys.stderr, leave=False)


def open_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Open a Hugging Face directory or a .gguf file, validated before any tensor is read."""
    p = Path(path).expanduser()
    if p.is_dir():
        from qwq.weights.safetensors_dir import open_safetensors_dir
        return open_safetensors_dir(p)
    if p.is_file():
        with open(p, "rb") as f:
            magic = f.read(4)
        if magic == b"GGUF" or p.suffix.lower() == ".gguf":
            from qwq.weights.gguf_file import open_gguf
            return open_gguf(p)
        if p.suffix == ".safetensors":
            raise CheckpointError(f"{p}: pass the directory that holds this file and its "
                                  "config.json, not the .safetensors file itself")
        raise CheckpointError(f"{p}: neither a GGUF file nor a Hugging Face model directory")
    raise CheckpointError(f"checkpoint path {p} does not exist")


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


def _pairs(source: Any, dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(source, Checkpoint):
        yield from source.iter_tensors(dtype=dtype)
    else:
        items = source.items() if isinstance(source, Mapping) else source
        for name, tensor in items:
            yield name, tensor.to(dtype)


class _ShardWriter:
    """Writes shards as they fill, so only one shard is ever held in memory."""

    def __init__(self, out: Path, shard_size_bytes: int | None):
        self.out, self.limit = out, shard_size_bytes
        self.current: dict[str, torch.Tensor] = {}
        self.current_bytes = 0
        self.parts: list[tuple[Path, list[str]]] = []
        self.total = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        if self.limit and self.current and self.current_bytes + nbytes > self.limit:
            self.flush()
        self.current[name] = tensor
        self.current_bytes += nbytes
        self.total += nbytes

    def flush(self) -> None:
        from safetensors.torch import save_file
        part = self.out / f".model-{len(self.parts) + 1:05d}.safetensors.part"
        save_file(self.current, str(part), metadata={"format": "pt"})
        self.parts.append((part, list(self.current)))
        self.current, self.current_bytes = {}, 0

    def finish(self) -> None:
        """Name the shards, now that their count is known, and index them when several."""
        self.flush()
        if len(self.parts) == 1:
            os.replace(self.parts[0][0], self.out / "model.safetensors")
            return
        weight_map: dict[str, str] = {}
        for i, (part, names) in enumerate(self.parts, start=1):
            final = f"model-{i:05d}-of-{len(self.parts):05d}.safetensors"
            os.replace(part, self.out / final)
            weight_map.update({n: final for n in names})
        index = {"metadata": {"total_size": self.total}, "weight_map": weight_map}
        (self.out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def save_safetensors_dir(ckpt_or_state: Checkpoint | Mapping[str, torch.Tensor]
                         | Iterable[tuple[str, torch.Tensor]], config: ModelConfig,
                         out_dir: str | os.PathLike, dtype: torch.dtype = torch.bfloat16,
                         shard_size_bytes: int | None = None) -> Path:
    """Write a Hugging Face directory: config.json and model.safetensors, or shards of at
    most shard_size_bytes each with model.safetensors.index.json. Returns the directory."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    writer = _ShardWriter(out, shard_size_bytes)
    for name, tensor in _pairs(ckpt_or_state, dtype):
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        # a private contiguous copy: safetensors refuses views that share storage
        writer.add(name, tensor.detach().to("cpu").contiguous().clone())
    writer.finish()
    hf = config.to_hf_dict()
    hf["torch_dtype"] = str(dtype).removeprefix("torch.")
    (out / "config.json").write_text(json.dumps(hf, indent=2))
    gen = ckpt_or_state.generation_config if isinstance(ckpt_or_state, Checkpoint) else {}
    if gen:
        (out / "generation_config.json").write_text(json.dumps(gen, indent=2))
    return out
