"""GGUF files (llama.cpp's format): a bounded header parser, the Qwen2 config, HF names.

The whole header is parsed here, by a reader that checks every count, length and offset
against the bytes that remain before it allocates or reads anything: crafted GGUF headers
have caused overflows and huge allocations in other loaders. The gguf package is then used
only for its dequantization kernels, on byte ranges this parser has already bounded.
"""

from __future__ import annotations

import contextlib
import functools
import math
import mmap
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from qwq.config import ModelConfig
from qwq.errors import CheckpointError
from qwq.model.layout import expected_shapes
from qwq.stored import StoredTensor
from qwq.weights.checkpoint import Backend, Checkpoint, check_tensor_set

MAX_TENSORS = 1_000_000
MAX_KVS = 1_000_000
# items in all metadata arrays together: Qwen's tokens, types and merges are 455k; decoded
# Python lists take ~10x the file's bytes, so this caps the memory a forged header can claim
MAX_ARRAY_ITEMS = 1 << 23
MAX_KEY = 1 << 16
MAX_STRING = 1 << 26  # a chat template is a few kB; this is generous
MAX_DEPTH = 3  # arrays of arrays: none in practice, bounded anyway
MAX_ELEMENTS = 1 << 40
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
                   "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")

_SCALARS = {GGUFValueType.UINT8: "B", GGUFValueType.INT8: "b", GGUFValueType.UINT16: "H",
            GGUFValueType.INT16: "h", GGUFValueType.UINT32: "I", GGUFValueType.INT32: "i",
            GGUFValueType.FLOAT32: "f", GGUFValueType.BOOL: "?", GGUFValueType.UINT64: "Q",
            GGUFValueType.INT64: "q", GGUFValueType.FLOAT64: "d"}
# fewest bytes one array item of each type can take, to bound a count before reading it
_MIN_ITEM = {**{t: struct.calcsize("<" + c) for t, c in _SCALARS.items()},
             GGUFValueType.STRING: 8, GGUFValueType.ARRAY: 12}
_MIN_KV = 8 + 4 + 1  # key length, value type, smallest value
_MIN_TENSOR_INFO = 8 + 4 + 8 + 4 + 8  # name length, n_dims, one dim, type, offset


@dataclass(frozen=True)
class TensorInfo:
    name: str  # the GGUF name
    qtype: GGMLQuantizationType
    dims: tuple[int, ...]  # GGUF order: dims[0] is the contiguous one (HF's last)
    offset: int  # absolute, in the file
    nbytes: int

    @property
    def hf_shape(self) -> tuple[int, ...]:
        return tuple(reversed(self.dims))


@dataclass
class GGUFHeader:
    version: int
    metadata: dict[str, Any]
    tensors: dict[str, TensorInfo]
    data_start: int
    alignment: int


class _Reader:
    """Reads a buffer front to back; every read is checked against what remains."""

    def __init__(self, buf: Any, size: int, source: Any):
        self.buf, self.size, self.source, self.pos = buf, size, source, 0
        self.items_left = MAX_ARRAY_ITEMS

    def fail(self, what: str) -> CheckpointError:
        return CheckpointError(f"{self.source}: {what} (at byte {self.pos} of {self.size})")

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or n > self.size - self.pos:
            raise self.fail(f"truncated: {what} needs {n} bytes, only "
                            f"{self.size - self.pos} remain")
        # a bytes copy (bounded by the check above), so no view pins a mapped file open
        data = self.buf[self.pos:self.pos + n]
        self.pos += n
        return data

    def scalar(self, code: str, what: str) -> Any:
        return struct.unpack("<" + code, self.take(struct.calcsize(code), what))[0]

    def count(self, what: str, limit: int, min_item: int) -> int:
        """A u64 count, checked against the cap and against the bytes left to hold it."""
        n = self.scalar("Q", what)
        if n > limit or n * min_item > self.size - self.pos:
            raise self.fail(f"{what} is {n}: absurd for a file of {self.size} bytes")
        return n

    def string(self, what: str, limit: int = MAX_STRING) -> str:
        n = self.count(f"length of {what}", limit, 1)
        try:
            return str(self.take(n, what), "utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not valid UTF-8") from None

    def value(self, vtype: int, what: str, depth: int = 0) -> Any:
        if vtype == GGUFValueType.STRING:
            return self.string(what)
        if vtype == GGUFValueType.FLOAT32:  # 1e-6, not 9.99999997e-07: the float32's shortest form
            return float(str(np.float32(self.scalar("f", what))))
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[GGUFValueType(vtype)], what)
        if vtype != GGUFValueType.ARRAY:
            raise self.fail(f"{what} has unknown value type {vtype}")
        if depth >= MAX_DEPTH:
            raise self.fail(f"{what} nests arrays deeper than {MAX_DEPTH}")
        itype = self.scalar("I", f"item type of {what}")
        if itype not in _MIN_ITEM:
            raise self.fail(f"{what} has unknown array item type {itype}")
        n = self.count(f"array length of {what}", self.items_left,
                       _MIN_ITEM[GGUFValueType(itype)])
        self.items_left -= n
        if itype in _SCALARS and itype != GGUFValueType.BOOL:
            dt = np.dtype("<" + _SCALARS[GGUFValueType(itype)])
            return np.frombuffer(self.take(n * dt.itemsize, what), dt).tolist()
        return [self.value(itype, what, depth + 1) for _ in range(n)]


def parse_gguf_header(buf: Any, source: Any = "<bytes>") -> GGUFHeader:
    """Parse and validate the GGUF header of buf: the whole file, as bytes or an mmap."""
    r = _Reader(buf, len(buf), source)
    if bytes(r.take(4, "magic")) != b"GGUF":
        raise r.fail("not a GGUF file (magic is not 'GGUF')")
    version = r.scalar("I", "version")
    if version not in (2, 3):
        raise r.fail(f"GGUF version {version} is not supported (2 or 3; big-endian files "
                     "are not supported either)")
    n_tensors = r.count("tensor_count", MAX_TENSORS, _MIN_TENSOR_INFO)
    n_kvs = r.count("kv_count", MAX_KVS, _MIN_KV)
    metadata: dict[str, Any] = {}
    for _ in range(n_kvs):
        key = r.string("metadata key", MAX_KEY)
        shown = f"metadata key {_show(key)}"
        if key in metadata:
            raise r.fail(f"{shown} appears twice")
        metadata[key] = r.value(r.scalar("I", f"type of {shown}"), shown)
    infos = [_tensor_info(r) for _ in range(n_tensors)]
    alignment = metadata.get("general.alignment", 32)
    if type(alignment) is not int or not 0 < alignment <= 1 << 16 or alignment & (alignment - 1):
        raise r.fail(f"general.alignment {alignment!r} is not a power of two")
    data_start = -(-r.pos // alignment) * alignment
    tensors = _place_tensors(r, infos, data_start, alignment)
    return GGUFHeader(version, metadata, tensors, data_start, alignment)


def _show(name: str) -> str:
    """A name from the file as it may appear in an error: quoted, escaped, short."""
    return repr(name if len(name) <= 80 else name[:80] + "...")


def _tensor_info(r: _Reader) -> tuple[str, int, tuple[int, ...], int]:
    raw_name = r.string("tensor name", 1024)
    name = _show(raw_name)
    n_dims = r.scalar("I", f"n_dims of tensor {name}")
    if not 1 <= n_dims <= 4:
        raise r.fail(f"tensor {name} has {n_dims} dimensions (1 to 4 allowed)")
    dims = tuple(r.scalar("Q", f"dims of tensor {name}") for _ in range(n_dims))
    if min(dims) <= 0 or math.prod(dims) > MAX_ELEMENTS:
        raise r.fail(f"tensor {name} has absurd dims {dims}")
    qtype = r.scalar("I", f"type of tensor {name}")
    known = qtype in GGMLQuantizationType._value2member_map_
    type_name = GGMLQuantizationType(qtype).name if known else f"unknown type {qtype}"
    if type_name not in SUPPORTED_TYPES:
        raise r.fail(f"tensor {name} has GGML type {type_name}; qwq dequantizes "
                     f"{', '.join(SUPPORTED_TYPES)}")
    block = GGML_QUANT_SIZES[GGMLQuantizationType(qtype)][0]
    if dims[0] % block:
        raise r.fail(f"tensor {name}: row of {dims[0]} is not a multiple of the "
                     f"{type_name} block size {block}")
    return raw_name, qtype, dims, r.scalar("Q", f"data offset of tensor {name}")


def _place_tensors(r: _Reader, infos: list, data_start: int, alignment: int
                   ) -> dict[str, TensorInfo]:
    """Each tensor's bytes must be aligned, inside the file, and not overlap another's."""
    tensors: dict[str, TensorInfo] = {}
    for name, qtype, dims, offset in infos:
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(qtype)]
        nbytes = math.prod(dims) // block * type_size
        if name in tensors:
            raise r.fail(f"tensor {_show(name)} appears twice")
        if offset % alignment:
            raise r.fail(f"tensor {_show(name)}: data offset {offset} is not aligned to "
                         f"{alignment}")
        if data_start + offset + nbytes > r.size:
            raise r.fail(f"tensor {_show(name)}: data [{data_start + offset}, "
                         f"{data_start + offset + nbytes}) runs past the end of the file")
        tensors[name] = TensorInfo(name, GGMLQuantizationType(qtype), dims,
                                   data_start + offset, nbytes)
    end = 0
    for t in sorted(tensors.values(), key=lambda t: t.offset):
        if t.offset < end:
            raise r.fail(f"tensor {_show(t.name)}: data overlaps the previous tensor's")
        end = t.offset + t.nbytes
    return tensors


def read_gguf_header(path: Path) -> GGUFHeader:
    size = path.stat().st_size
    if size < 24:
        raise CheckpointError(f"{path}: truncated: {size} bytes is too short for a GGUF header")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        return parse_gguf_header(mm, path)


# ---- Qwen2 config and Hugging Face names -------------------------------------------------

_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    **{f"attn_{x}.{w}": f"self_attn.{x}_proj.{w}" for x in "qkv" for w in ("weight", "bias")},
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight",
                 "output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}
_BLOCK = re.compile(r"blk\.(\d+)\.(.+)")


def hf_name(gguf_name: str) -> str | None:
    """The Hugging Face name of a GGUF tensor; None for tensors Qwen2 does not use.

    llama.cpp runs Qwen2 with NeoX-style rope, so q/k need no row permutation (unlike llama).
    """
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    m = _BLOCK.fullmatch(gguf_name)
    if m and m.group(2) in _LAYER_NAMES:
        return f"model.layers.{int(m.group(1))}.{_LAYER_NAMES[m.group(2)]}"
    return None


def _get(meta: dict, key: str, kind: type, source: Any, default: Any = None,
         low: float = 1) -> Any:
    """A metadata value of the right type and at least low (ModelConfig divides by some)."""
    if key not in meta:
        if default is None:
            raise CheckpointError(f"{source}: metadata key {key} is missing")
        return default
    value = meta[key]
    if kind is float and type(value) is int:
        value = float(value)
    if type(value) is not kind or not low <= value < (1 << 31):
        raise CheckpointError(f"{source}: metadata key {key} is {_show(str(value))}, "
                              f"not a {kind.__name__} in range")
    return value


def config_from_gguf(meta: dict, tensors: dict[str, TensorInfo], source: Any) -> ModelConfig:
    arch = meta.get("general.architecture")
    if arch != "qwen2":
        raise CheckpointError(f"{source}: general.architecture is {_show(str(arch))}; qwq runs "
                              "GGUF files of architecture 'qwen2' (QwQ, Qwen2, Qwen2.5 and "
                              "their fine-tunes)")
    if "token_embd.weight" not in tensors:
        raise CheckpointError(f"{source}: tensor token_embd.weight is missing")
    a = "qwen2."
    heads = _get(meta, a + "attention.head_count", int, source)
    return ModelConfig(
        vocab_size=tensors["token_embd.weight"].dims[-1],
        hidden_size=_get(meta, a + "embedding_length", int, source),
        intermediate_size=_get(meta, a + "feed_forward_length", int, source),
        num_hidden_layers=_get(meta, a + "block_count", int, source),
        num_attention_heads=heads,
        num_key_value_heads=_get(meta, a + "attention.head_count_kv", int, source, heads),
        rms_norm_eps=_get(meta, a + "attention.layer_norm_rms_epsilon", float, source, 1e-6,
                          low=0.0),
        rope_theta=_get(meta, a + "rope.freq_base", float, source, 10000.0),
        max_position_embeddings=_get(meta, a + "context_length", int, source, 32768),
        tie_word_embeddings="output.weight" not in tensors,
        rope_scaling=_rope_scaling(meta, source),
        bos_token_id=_optional_id(meta, "tokenizer.ggml.bos_token_id", source),
        eos_token_ids=tuple(i for i in [_optional_id(meta, "tokenizer.ggml.eos_token_id",
                                                     source)] if i is not None),
        head_dim=_get(meta, a + "attention.key_length", int, source, 0),
    )


def _optional_id(meta: dict, key: str, source: Any) -> int | None:
    return _get(meta, key, int, source, low=0) if key in meta else None


def _rope_scaling(meta: dict, source: Any) -> dict[str, Any] | None:
    kind = meta.get("qwen2.rope.scaling.type")
    if kind in (None, "none"):
        return None
    if kind not in ("yarn", "linear"):
        raise CheckpointError(f"{source}: rope scaling type {_show(str(kind))} is not "
                              "supported (yarn, linear)")
    out: dict[str, Any] = {"type": kind, "rope_type": kind, "factor": _get(
        meta, "qwen2.rope.scaling.factor", float, source, low=1.0)}
    if "qwen2.rope.scaling.original_context_length" in meta:
        out["original_max_position_embeddings"] = _get(
            meta, "qwen2.rope.scaling.original_context_length", int, source)
    return out


# ---- tensor data -------------------------------------------------------------------------

class GGUFBackend(Backend):
    """A GGUF file's tensors: dequantized (load), as stored (stored, raw), their GGML types
    and the file's metadata."""

    format = "gguf"

    def __init__(self, path: Path, header: GGUFHeader):
        self.path, self.header = path, header
        self.by_hf: dict[str, TensorInfo] = {}
        for t in header.tensors.values():
            h = hf_name(t.name)
            if h in self.by_hf:  # e.g. blk.1 and blk.01
                raise CheckpointError(f"{path}: tensors {_show(self.by_hf[h].name)} and "
                                      f"{_show(t.name)} both map to {h}")
            if h is not None:
                self.by_hf[h] = t
        self._map: mmap.mmap | None = None
        self._data: np.ndarray | None = None
        self._cow: mmap.mmap | None = None  # the map stored() views: pages stay shared

    def names(self) -> list[str]:
        return list(self.by_hf)

    def ggml_types(self) -> dict[str, str]:
        return {name: t.qtype.name for name, t in self.by_hf.items()}

    def weight_types(self) -> dict[str, str]:
        """Every tensor's GGML type (F32 and F16 included: quantize="auto" reads the
        projections')."""
        return self.ggml_types()

    def metadata(self) -> dict[str, Any]:
        return self.header.metadata

    def raw(self, name: str) -> tuple[np.ndarray, str, tuple[int, ...]]:
        if name not in self.by_hf:
            raise CheckpointError(f"{self.path}: no tensor named {name}")
        t = self.by_hf[name]
        if self._data is None:  # mapped once, read-only; pages load on first touch
            with open(self.path, "rb") as f:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            self._data = np.frombuffer(self._map, dtype=np.uint8)
        raw = self._data[t.offset:t.offset + t.nbytes]
        if t.qtype in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            dt = np.float32 if t.qtype == GGMLQuantizationType.F32 else np.float16
            return raw.view(dt).reshape(t.hf_shape), t.qtype.name, t.hf_shape
        row_bytes = t.nbytes // int(np.prod(t.hf_shape[:-1], dtype=np.int64))
        return raw.reshape(-1, row_bytes), t.qtype.name, t.hf_shape

    def stored(self, name: str) -> StoredTensor:
        """The tensor's bytes in place, as a torch view of a private (copy-on-write) mapping
        of the file: nothing is read until used, clean pages are shared with the page cache
        (the kernel can drop and re-read them under memory pressure, as llama.cpp's mmap),
        and nothing can write to the file."""
        if name not in self.by_hf:
            raise CheckpointError(f"{self.path}: no tensor named {name}")
        t = self.by_hf[name]
        if self._cow is None:
            with open(self.path, "rb") as f:
                self._cow = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
            if hasattr(mmap, "MADV_HUGEPAGE"):
                # the weights stream through every decode step: asked for 2 MB folios, the
                # kernel's readahead maps the demo GGUF's pages 99.8% in huge pages where it
                # mapped 91% unasked (Linux 6.18, ext4), fewer TLB walks on each step
                with contextlib.suppress(OSError):  # a kernel without THP: plain pages
                    self._cow.madvise(mmap.MADV_HUGEPAGE)
        data = torch.frombuffer(self._cow, dtype=torch.uint8, count=t.nbytes, offset=t.offset)
        shape = t.hf_shape
        if t.qtype.name in _FLOAT_TYPES:
            data = data.view(_FLOAT_TYPES[t.qtype.name]).view(shape)
        else:
            data = data.view(-1, t.nbytes // math.prod(shape[:-1]))
        return StoredTensor(data, t.qtype.name, shape,
                            functools.partial(self._drop_pages, name, self._cow))

    def _drop_pages(self, name: str, mapping: mmap.mmap | None = None) -> None:
        """Unmap the pages of a tensor already converted or copied: mapped file pages count as
        this process's resident memory until then (the whole file, by the end of a load). The
        pages were only read, so a later touch (a neighbour sharing an edge page) reads the file
        again."""
        mapping = mapping if mapping is not None else self._map
        t = self.by_hf[name]
        start = t.offset // mmap.PAGESIZE * mmap.PAGESIZE
        if mapping is not None and hasattr(mapping, "madvise"):
            mapping.madvise(mmap.MADV_DONTNEED, start, t.offset + t.nbytes - start)

    def load(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        out = self._load(name, dtype)
        self._drop_pages(name)
        return out

    def load_slice(self, name: str, dim: int, start: int, stop: int) -> torch.Tensor:
        out = self._load_slice(name, dim, start, stop)
        self._drop_pages(name)
        return out

    def _load(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """HF-shaped tensor in `dtype` (None: float32); quantized types go through gguf's
        dequantizers a slab of rows at a time, straight into the result, so loading a large
        matrix (the 150K-row embedding) needs no float32 copy of it."""
        from gguf.quants import dequantize
        data, _, shape = self.raw(name)
        qtype = self.by_hf[name].qtype
        dtype = dtype or torch.float32
        if qtype in (GGMLQuantizationType.F32, GGMLQuantizationType.F16) or len(shape) == 1:
            # np.array: a private copy, the map is read-only and shared
            out = np.array(data) if qtype == GGMLQuantizationType.F32 else dequantize(data, qtype)
            return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)
                                    .reshape(shape)).to(dtype)
        return _dequantize_slabs(data, qtype, shape[1], torch.empty(shape, dtype=dtype))

    def _load_slice(self, name: str, dim: int, start: int, stop: int) -> torch.Tensor:
        """Rows or columns [start, stop) as float32. Rows are whole blocks, so only their bytes
        are dequantized; columns too when the cut falls on block boundaries, else the rows are
        dequantized a slab at a time and cut."""
        data, _, shape = self.raw(name)
        qtype = self.by_hf[name].qtype
        if len(shape) == 1:  # biases and norms: small
            return self._load(name)[start:stop]
        if qtype in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            part = data[start:stop] if dim == 0 else data[:, start:stop]
            return torch.from_numpy(np.array(part, dtype=np.float32))
        rows, cols = shape
        if dim == 0:
            out = torch.empty((stop - start, cols), dtype=torch.float32)
            return _dequantize_slabs(data[start:stop], qtype, cols, out)
        out = torch.empty((rows, stop - start), dtype=torch.float32)
        block, type_size = GGML_QUANT_SIZES[qtype]
        if start % block == 0 and stop % block == 0:
            part = data[:, start // block * type_size: stop // block * type_size]
            return _dequantize_slabs(part, qtype, stop - start, out)
        return _dequantize_slabs(data, qtype, cols, out, columns=slice(start, stop))


_FLOAT_TYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def _dequantize_slabs(data: np.ndarray, qtype: GGMLQuantizationType, width: int,
                      out: torch.Tensor, columns: slice = slice(None)) -> torch.Tensor:
    """Dequantize rows of blocks (`width` values each) into `out`, keeping `columns`, a slab of
    ~4M values at a time: gguf's dequantizers make several float32 temporaries of their input,
    which for a whole 150K-row matrix would be gigabytes."""
    from gguf.quants import dequantize
    slab = max(1, (4 << 20) // width)
    for r in range(0, data.shape[0], slab):
        part = dequantize(np.ascontiguousarray(data[r:r + slab]), qtype)
        out[r:r + slab] = torch.from_numpy(np.asarray(part, dtype=np.float32)
                                           .reshape(-1, width)[:, columns])
    return out


def open_gguf(path: Path):
    header = read_gguf_header(path)
    config = config_from_gguf(header.metadata, header.tensors, path)
    backend = GGUFBackend(path, header)
    check_tensor_set(str(path), config, {n: t.hf_shape for n, t in backend.by_hf.items()})
    extra = sorted(set(backend.by_hf) - set(expected_shapes(config)))  # bounded: set passed
    if extra:
        raise CheckpointError(f"{path}: tensors {extra[:4]} do not belong to a "
                              f"{config.num_hidden_layers}-layer qwen2 model")
    return Checkpoint(path, backend.format, config, {}, backend)
