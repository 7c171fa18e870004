"""A Hugging Face model directory: config.json plus safetensors weights, single or sharded.

Each shard's header is parsed and checked here, against the file's size, before safetensors
memory-maps anything: a truncated download then fails at open time with the file named.
Pickle weights (*.bin, *.pt, ...) are refused: unpickling runs arbitrary code.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from qwq.config import ModelConfig
from qwq.errors import CheckpointError, UnsafeCheckpointError
from qwq.weights import awq as awq_format
from qwq.weights.awq import AWQConfig
from qwq.weights.checkpoint import Backend, Checkpoint, check_tensor_set

if TYPE_CHECKING:  # types only
    from qwq.kernels.blocks import BlockScales
    from qwq.stored import GroupCodes

MAX_HEADER = 100_000_000  # the safetensors format's own cap on the JSON header
MAX_JSON_FILE = 50_000_000  # config.json, index.json, generation_config.json
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
DTYPES = {"BF16": (torch.bfloat16, 2), "F16": (torch.float16, 2), "F32": (torch.float32, 4),
          "I32": (torch.int32, 4)}  # I32: AWQ's packed weights and zeros, nothing else


@dataclass(frozen=True)
class TensorEntry:
    file: Path
    dtype: str
    shape: tuple[int, ...]
    begin: int  # byte offset into the data area after the header


def _fail(source: Any, what: str) -> CheckpointError:
    return CheckpointError(f"{source}: {what}")


def _no_dup_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate keys in a JSON object")
    return out


def _parse_json(raw: bytes, source: Any, what: str) -> Any:
    try:
        return json.loads(raw, object_pairs_hook=_no_dup_keys)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise _fail(source, f"{what} is not valid JSON ({str(e)[:120]})") from None


def parse_safetensors_header(buf: bytes, file_size: int, source: Any = "<bytes>"
                             ) -> dict[str, tuple[str, tuple[int, ...], int, int]]:
    """name -> (dtype, shape, begin, end), from the first bytes of a file of file_size bytes.

    buf must hold at least the 8-byte length and the header it announces (or the whole file).
    """
    if file_size < 8 or len(buf) < 8:
        raise _fail(source, f"truncated: {file_size} bytes, too short for a safetensors header")
    (n,) = struct.unpack_from("<Q", buf, 0)
    if n > MAX_HEADER or n < 2:
        raise _fail(source, f"header length {n} is not sane (2 .. {MAX_HEADER} bytes)")
    if 8 + n > file_size or 8 + n > len(buf):
        raise _fail(source, f"truncated: header claims {n} bytes, file has {file_size - 8}")
    header = _parse_json(bytes(buf[8:8 + n]), source, "the header")
    if not isinstance(header, dict):
        raise _fail(source, "the header is not a JSON object")
    meta = header.pop("__metadata__", None)
    if meta is not None and not (isinstance(meta, dict) and all(
            isinstance(v, str) for v in meta.values())):
        raise _fail(source, "__metadata__ must map strings to strings")
    entries = {name: _check_entry(source, name, e) for name, e in header.items()}
    _check_layout(source, entries, file_size - 8 - n)
    return entries


def _check_entry(source: Any, name: str, e: Any) -> tuple[str, tuple[int, ...], int, int]:
    if not isinstance(e, dict) or set(e) != {"dtype", "shape", "data_offsets"}:
        raise _fail(source, f"tensor {name!r}: entry must hold exactly dtype, shape, data_offsets")
    dtype, shape, offs = e["dtype"], e["shape"], e["data_offsets"]
    if dtype not in DTYPES:
        raise _fail(source, f"tensor {name!r} has dtype {dtype!r}; qwq reads "
                            f"{', '.join(DTYPES)} (of quantized checkpoints, AWQ)")
    if not isinstance(shape, list) or len(shape) > 8 or not all(
            type(d) is int and 0 <= d < 1 << 40 for d in shape):
        raise _fail(source, f"tensor {name!r} has a bad shape {str(shape)[:80]}")
    if not (isinstance(offs, list) and len(offs) == 2
            and all(type(o) is int and o >= 0 for o in offs) and offs[0] <= offs[1]):
        raise _fail(source, f"tensor {name!r} has bad data_offsets {str(offs)[:80]}")
    numel = 1
    for d in shape:
        numel *= d
    if offs[1] - offs[0] != numel * DTYPES[dtype][1]:
        raise _fail(source, f"tensor {name!r}: {offs[1] - offs[0]} bytes stored, but dtype "
                            f"{dtype} x shape {shape} needs {numel * DTYPES[dtype][1]}")
    return dtype, tuple(shape), offs[0], offs[1]


def _check_layout(source: Any, entries: dict, data_size: int) -> None:
    """Tensors must tile the data area exactly: no overlap, no gap, nothing past the end."""
    pos = 0
    for name, (_, _, begin, end) in sorted(entries.items(), key=lambda kv: kv[1][2:]):
        if end > data_size:
            raise _fail(source, f"truncated: tensor {name!r} ends at byte {end} of the data "
                                f"area, which holds only {data_size} bytes")
        if begin != pos:
            raise _fail(source, f"tensor {name!r} starts at {begin}, expected {pos} "
                                "(overlapping or gapped data)")
        pos = end
    if pos != data_size:
        raise _fail(source, f"{data_size - pos} stray bytes after the last tensor")


def read_shard_header(path: Path) -> dict[str, TensorEntry]:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) == 8:
            (n,) = struct.unpack("<Q", head)
            if n <= min(MAX_HEADER, size - 8):  # else the parser names the problem
                head += f.read(n)
    entries = parse_safetensors_header(head, size, path)
    return {name: TensorEntry(path, d, s, b) for name, (d, s, b, _) in entries.items()}


def _read_json_file(path: Path) -> Any:
    if path.stat().st_size > MAX_JSON_FILE:
        raise _fail(path, "file is too large for a JSON config")
    return _parse_json(path.read_bytes(), path, path.name)


def read_config(d: Path) -> tuple[ModelConfig, AWQConfig | None]:
    """config.json: the model's config, and its AWQ settings where it has them."""
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        raise _fail(d, "no config.json: not a Hugging Face model directory")
    cfg = _read_json_file(cfg_path)
    if not isinstance(cfg, dict):
        raise _fail(cfg_path, "is not a JSON object")
    if "auto_map" in cfg:
        raise UnsafeCheckpointError(
            f"{cfg_path}: asks for remote code (auto_map); qwq never runs code shipped with a "
            "checkpoint and supports Qwen2ForCausalLM natively: remove auto_map to load it")
    awq = AWQConfig.from_hf(cfg, str(cfg_path))
    try:
        config = ModelConfig.from_hf_dict(cfg, source=str(cfg_path))
        config.context_length  # noqa: B018 - evaluates rope_scaling now, not mid-serving
        return config, awq
    except (TypeError, ValueError, AttributeError, ZeroDivisionError, OverflowError) as e:
        raise _fail(cfg_path, f"bad field value ({e})") from None


def weight_files(d: Path) -> list[Path]:
    """The shard files, from the index when there is one; pickle-only directories refused."""
    index = d / "model.safetensors.index.json"
    if index.is_file():
        return [d / name for name in sorted(set(_index_map(index).values()))]
    if (d / "model.safetensors").is_file():
        return [d / "model.safetensors"]
    found = sorted(d.glob("*.safetensors"))
    if found:
        return found
    pickles = sorted(p.name for p in d.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise UnsafeCheckpointError(
            f"{d}: holds only pickle weights ({', '.join(pickles[:3])}); pickle is refused "
            "because loading it runs arbitrary code. Convert the model to safetensors "
            "(e.g. transformers' save_pretrained(safe_serialization=True)) and retry")
    raise _fail(d, "no model.safetensors, sharded index or *.safetensors weights")


def _index_map(index: Path) -> dict[str, str]:
    """The index's weight_map (tensor name -> shard file name), validated."""
    data = _read_json_file(index)
    wm = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(wm, dict) or not wm:
        raise _fail(index, "has no weight_map")
    for name, shard in wm.items():
        # a shard name is a bare file name: a path in it could read outside the directory
        if not isinstance(shard, str) or Path(shard).name != shard or \
                not shard.endswith(".safetensors"):
            raise _fail(index, f"tensor {name!r} maps to a bad shard name {str(shard)[:80]!r}")
        if not (index.parent / shard).is_file():
            raise _fail(index, f"lists shard {shard}, which does not exist")
    return wm


class SafetensorsBackend(Backend):
    """A directory's float tensors: only the common interface (no types, metadata or blocks)."""

    format = "safetensors"

    def __init__(self, path: Path, entries: dict[str, TensorEntry]):
        self.path, self.entries = path, entries
        self._order = sorted(entries, key=lambda n: (str(entries[n].file), entries[n].begin))
        self._handles: dict[Path, Any] = {}

    def names(self) -> list[str]:
        return self._order

    def _handle(self, name: str) -> Any:
        from safetensors import safe_open
        entry = self.entries[name]
        if entry.file not in self._handles:  # memory-mapped; one handle per shard
            self._handles[entry.file] = safe_open(str(entry.file), framework="pt")
        return self._handles[entry.file]

    def load(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        tensor = self._handle(name).get_tensor(name)
        return tensor if dtype is None else tensor.to(dtype)

    def load_slice(self, name: str, dim: int, start: int, stop: int) -> torch.Tensor:
        """Only the slice's bytes are read (safetensors' get_slice)."""
        part = self._handle(name).get_slice(name)
        return part[start:stop] if dim == 0 else part[:, start:stop]


class AWQBackend(SafetensorsBackend):
    """An AWQ directory's tensors: each qweight/qzeros/scales triple appears as the linear's
    `weight`, dequantized when loaded (qwq.weights.awq)."""

    def __init__(self, path: Path, entries: dict[str, TensorEntry], awq: AWQConfig,
                 weights: dict[str, tuple[int, int]]):
        super().__init__(path, entries)
        self.awq, self.weights = awq, weights
        packed = awq_format.packed_names(weights)
        # each weight where its qweight was: tensors stream in file order
        self._order = [n[: -len("qweight")] + "weight" if n.endswith(".qweight") else n
                       for n in self._order if n not in packed or n.endswith(".qweight")]

    def load(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        if name not in self.weights:
            return super().load(name, dtype)
        prefix = name[: -len(".weight")]
        parts = [super(AWQBackend, self).load(f"{prefix}.{p}") for p in awq_format.PARTS]
        return awq_format.dequantize(*parts, self.awq.group_size,
                                     dtype or parts[2].dtype)

    def weight_types(self) -> dict[str, str]:
        """Each AWQ linear as "AWQ4" (quantize="auto" takes it like a 4-bit GGUF)."""
        return dict.fromkeys(self.weights, "AWQ4")

    def group_codes(self, name: str) -> GroupCodes | None:
        """An AWQ linear's own codes and group parameters (GroupCodes), else None."""
        if name not in self.weights:
            return None
        prefix = name[: -len(".weight")]
        parts = [super(AWQBackend, self).load(f"{prefix}.{p}") for p in awq_format.PARTS]
        return awq_format.group_codes(*parts, self.awq.group_size)

    def block_scales(self, name: str) -> BlockScales | None:
        """An AWQ linear's group scales for the block packer (BlockScales), else None."""
        if name not in self.weights:
            return None
        scales = super().load(f"{name[: -len('.weight')]}.scales")
        return awq_format.block_scales(scales, self.awq.group_size)

    def load_slice(self, name: str, dim: int, start: int, stop: int) -> torch.Tensor:
        if name not in self.weights:
            return super().load_slice(name, dim, start, stop)
        w = self.load(name, torch.float32)  # the caller rounds the slice to its dtype once
        return w[start:stop] if dim == 0 else w[:, start:stop]


def open_safetensors_dir(d: Path):

    config, awq = read_config(d)
    entries: dict[str, TensorEntry] = {}
    for shard in sorted(set(weight_files(d))):
        for name, entry in read_shard_header(shard).items():
            if name in entries:
                raise _fail(shard, f"tensor {name!r} also appears in {entries[name].file.name}")
            entries[name] = entry
    _check_index_agrees(d, entries)
    shapes = {n: e.shape for n, e in entries.items()}
    weights = awq.weight_shapes({n: (e.shape, e.dtype) for n, e in entries.items()},
                                str(d)) if awq else {}
    packed = awq_format.packed_names(weights)
    stray = sorted(n for n, e in entries.items() if e.dtype == "I32" and n not in packed)
    if stray:
        raise _fail(d, f"int32 tensors {stray[:3]} are not AWQ-packed weights of a config.json "
                       "that says quant_method awq; qwq reads float tensors otherwise (an "
                       "AutoAWQ export with quant_config.json: copy it into config.json as "
                       "quantization_config)")
    shapes = {n: s for n, s in shapes.items() if n not in packed} | weights
    check_tensor_set(str(d), config, shapes)
    gen_path = d / "generation_config.json"
    gen = _read_json_file(gen_path) if gen_path.is_file() else {}
    if not isinstance(gen, dict):
        raise _fail(gen_path, "is not a JSON object")
    backend = AWQBackend(d, entries, awq, weights) if weights else \
        SafetensorsBackend(d, entries)
    return Checkpoint(d, backend.format, config, gen, backend)


def _check_index_agrees(d: Path, entries: dict[str, TensorEntry]) -> None:
    index = d / "model.safetensors.index.json"
    if not index.is_file():
        return
    for name, shard in _index_map(index).items():
        if name not in entries or entries[name].file.name != shard:
            raise _fail(index, f"says tensor {name!r} is in {shard}, but that shard lacks it")
