"""Writing a Hugging Face directory (config.json and safetensors shards) from a checkpoint or
a state dict."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from qwq.config import ModelConfig
from qwq.weights.checkpoint import Checkpoint


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
