"""Checkpoints: a Hugging Face directory of safetensors or a GGUF file, behind one interface.

`open_checkpoint` validates everything it can before any tensor is read (headers, config,
shard sizes, the tensor set the config implies), so a bad checkpoint fails fast with a
CheckpointError that names the file and the problem. `Checkpoint.iter_tensors` then yields
tensors under their Hugging Face names and shapes, whatever the file format.
"""

from __future__ import annotations

import os
from pathlib import Path

from qwq.errors import CheckpointError
from qwq.model.layout import expected_shapes
from qwq.weights.checkpoint import Checkpoint, check_tensor_set
from qwq.weights.gguf_file import open_gguf
from qwq.weights.safetensors_dir import open_safetensors_dir
from qwq.weights.save import save_safetensors_dir

__all__ = ["Checkpoint", "check_tensor_set", "expected_shapes", "open_checkpoint",
           "save_safetensors_dir"]


def open_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Open a Hugging Face directory or a .gguf file, validated before any tensor is read."""
    p = Path(path).expanduser()
    if p.is_dir():
        return open_safetensors_dir(p)
    if p.is_file():
        with open(p, "rb") as f:
            magic = f.read(4)
        if magic == b"GGUF" or p.suffix.lower() == ".gguf":
            return open_gguf(p)
        if p.suffix == ".safetensors":
            raise CheckpointError(f"{p}: pass the directory that holds this file and its "
                                  "config.json, not the .safetensors file itself")
        raise CheckpointError(f"{p}: neither a GGUF file nor a Hugging Face model directory")
    raise CheckpointError(f"checkpoint path {p} does not exist")
