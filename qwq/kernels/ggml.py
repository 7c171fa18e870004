"""GGUF block formats as llama.cpp ships them, computed on the file's own bytes.

A quantized tensor is (rows, row_bytes) uint8: each row a run of blocks exactly as they lie in
the file, so a read-only view of an mmap serves as the weight. The exceptions: Q5_0 and Q8_0 are
rearranged once at load (`computed`): Q5_0 of whole groups of 16 rows into Q5_0x16, the rows
interleaved; other Q5_0 and Q8_0 into Q5_0x4 and Q8_0x4, the same bytes in an order the
kernels decode without permutes. ggml.cpp's kernels (the op
torch.ops.qwq.ggml_linear) read those bytes directly; this module holds each format's layout, its
dequantization in plain torch, the int8 activation rounding llama.cpp pairs with it, and the
kernels' product in torch (`linear_reference`): the fallback where the kernels don't build and the
reference tests hold them to.

Activations are rounded as llama.cpp's CPU backend rounds them, so products come out as its do up
to float summation order:
  32-input blocks (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) take Q8_0 blocks of 32 (x86 quantize_row_q8_0:
    q = round-half-even(x * 127 / amax), scale amax / 127 rounded to fp16);
  K-quants (Q4_K, Q5_K, Q6_K) take Q8_K blocks of 256 (quantize_row_q8_K_ref: the scale is
    1 / iscale with iscale = -127 / the block's value of largest magnitude, a float).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from qwq.kernels import kernels_available
from qwq.stored import GroupCodes

_BIT8 = torch.arange(8, dtype=torch.uint8)


def _shifts(bits: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """(len(bits), 1) uint8 shift counts on `like`'s device (the decoders run on GPUs too:
    a CPU tensor of more than one value does not broadcast against a CUDA one)."""
    return torch.tensor(bits, dtype=torch.uint8, device=like.device)[:, None]


def _f16(b: torch.Tensor, at: int) -> torch.Tensor:
    """The fp16 at byte `at` of each block (n, block_bytes) as float32, (n, 1)."""
    return b[:, at:at + 2].contiguous().view(torch.float16).float()


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """(n, 16) packed bytes -> (n, 32): input j in byte j's low nibble, input 16 + j in its high."""
    return torch.cat([qs & 15, qs >> 4], -1)


def _bits32(qh: torch.Tensor) -> torch.Tensor:
    """(n, 4) bytes of a little-endian uint32 -> (n, 32): bit i."""
    return ((qh[:, :, None] >> _BIT8.to(qh.device)) & 1).flatten(1)


def _q4_0(b: torch.Tensor) -> torch.Tensor:
    return _f16(b, 0) * (_nibbles(b[:, 2:]).float() - 8)


def _q4_1(b: torch.Tensor) -> torch.Tensor:
    return _f16(b, 0) * _nibbles(b[:, 4:]).float() + _f16(b, 2)


def _q5_0(b: torch.Tensor) -> torch.Tensor:
    q = _nibbles(b[:, 6:]) | (_bits32(b[:, 2:6]) << 4)
    return _f16(b, 0) * (q.float() - 16)


# qwq's load-time layouts (ggml_formats.h): a chunk of four blocks rearranged, byte i of the
# chunk being byte ORDER[i] of the four blocks as filed. Q5_0x4: the nibbles of blocks 0-3, the
# low halves of their fifth bits, the high halves, the scales (block: d at 0, fifth bits at 2,
# nibbles at 6). Q8_0x4: values 0-15 of blocks 0-3, values 16-31, the scales (d at 0, values
# at 2).
def _chunk_order(block_bytes: int, fields: tuple[tuple[int, int], ...]) -> torch.Tensor:
    return torch.tensor([block_bytes * b + at + i for at, n in fields
                         for b in range(4) for i in range(n)])


_ORDERS = {"Q5_0": _chunk_order(22, ((6, 16), (2, 2), (4, 2), (0, 2))),
           "Q8_0": _chunk_order(34, ((2, 16), (18, 16), (0, 2)))}


def _as_filed(name: str, values: Callable[[torch.Tensor], torch.Tensor]
              ) -> Callable[[torch.Tensor], torch.Tensor]:
    """The values of a rearranged chunk (n, 4 * block_bytes): its blocks put back as filed."""
    back = torch.argsort(_ORDERS[name])

    def chunk_values(b: torch.Tensor) -> torch.Tensor:
        return values(b[:, back.to(b.device)].reshape(4 * b.shape[0], -1)).view(-1, 128)
    return chunk_values


# Q5_0x16 (ggml.cpp: group_tokens): rows interleaved sixteen at a time. Per group of 16 rows and
# block of 32 inputs, 352 bytes: the rows' fp16 scales; eight 64-bit masks, mask u's bit 4r + i
# the fifth bit of row r's input _X16_BASE[u] + i; four vectors of nibbles, vector m's byte
# 4r + i being byte 4m + i of row r's nibbles.
_X16_BASE = (0, 16, 4, 20, 8, 24, 12, 28)
_X16_INPUTS = torch.tensor([b + i for b in _X16_BASE for i in range(4)])  # mask bit order


def _x16_groups(raw: torch.Tensor) -> torch.Tensor:
    """(rows, row_bytes) -> (groups, blocks, 16 rows, 22 bytes of a Q5_0 block as filed)."""
    if raw.shape[0] % 16:
        raise ValueError(f"Q5_0x16 holds rows in groups of 16; got {raw.shape[0]} rows")
    return raw.reshape(raw.shape[0] // 16, 16, -1, 22).transpose(1, 2)


def _interleave_q5_0(raw: torch.Tensor) -> torch.Tensor:
    """Q5_0 rows as filed (rows a multiple of 16) -> Q5_0x16 (ggml_interleave_q5_0 in torch)."""
    b = _x16_groups(raw)  # (G, nb, 16, 22)
    g, nb = b.shape[:2]
    qh = _bits32(b[..., 2:6].reshape(-1, 4)).view(g, nb, 16, 32)[..., _X16_INPUTS]
    masks = qh.view(g, nb, 16, 8, 4).transpose(2, 3).reshape(g, nb, 8, 8, 8)  # (u, byte, bit)
    mask_bytes = (masks << _BIT8.to(raw.device)).sum(-1, dtype=torch.uint8)
    qs = b[..., 6:].reshape(g, nb, 16, 4, 4).transpose(2, 3)  # (m, r, i)
    out = torch.cat([b[..., :2].reshape(g, nb, 32), mask_bytes.reshape(g, nb, 64),
                     qs.reshape(g, nb, 256)], -1)
    return out.reshape(raw.shape)


def _deinterleave_q5_0(raw: torch.Tensor) -> torch.Tensor:
    """Q5_0x16 -> its rows as filed (the inverse of _interleave_q5_0)."""
    g, nb = raw.shape[0] // 16, raw.shape[1] // 22
    blk = raw.reshape(g, nb, 352)
    bits = ((blk[..., 32:96, None] >> _BIT8.to(raw.device)) & 1).view(g, nb, 8, 16, 4)
    qh_bits = torch.empty(g, nb, 16, 32, dtype=torch.uint8, device=raw.device)
    qh_bits[..., _X16_INPUTS] = bits.transpose(2, 3).reshape(g, nb, 16, 32)
    qh = (qh_bits.view(g, nb, 16, 4, 8) << _BIT8.to(raw.device)).sum(-1, dtype=torch.uint8)
    qs = blk[..., 96:].reshape(g, nb, 4, 16, 4).transpose(2, 3).reshape(g, nb, 16, 16)
    file = torch.cat([blk[..., :32].reshape(g, nb, 16, 2), qh, qs], -1)  # (G, nb, 16, 22)
    return file.transpose(1, 2).reshape(raw.shape)


def _q5_1(b: torch.Tensor) -> torch.Tensor:
    q = _nibbles(b[:, 8:]) | (_bits32(b[:, 4:8]) << 4)
    return _f16(b, 0) * q.float() + _f16(b, 2)


def _q8_0(b: torch.Tensor) -> torch.Tensor:
    return _f16(b, 0) * b[:, 2:].contiguous().view(torch.int8).float()


def _scales_mins_k4(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K's 12 bytes of 6-bit scales and mins -> (n, 8) each. Bytes 0-3 hold scales 0-3,
    bytes 4-7 mins 0-3 (low 6 bits); bytes 8-11 the low 4 bits of scales 4-7 (low nibble) and
    mins 4-7 (high nibble), whose top 2 bits are the top bits of bytes 0-3 and 4-7."""
    sc, mn, lo = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    scales = torch.cat([sc & 63, (lo & 15) | ((sc >> 2) & 48)], -1)
    mins = torch.cat([mn & 63, (lo >> 4) | ((mn >> 2) & 48)], -1)
    return scales, mins


def _k4(b: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Q4_K/Q5_K: d * scale_j * q - dmin * min_j over sub-blocks j of 32; q (n, 8, 32)."""
    scales, mins = _scales_mins_k4(b[:, 4:16])
    d = (_f16(b, 0) * scales.float())[..., None]
    dm = (_f16(b, 2) * mins.float())[..., None]
    return (d * q.float() - dm).flatten(1)


def _low_high(qs: torch.Tensor) -> torch.Tensor:
    """(n, 128) bytes -> (n, 8, 32): 32 bytes a piece, the low nibbles then the high of each."""
    pieces = qs.reshape(-1, 4, 1, 32) >> _shifts((0, 4), qs)
    return (pieces & 15).view(-1, 8, 32)


def _q4_k(b: torch.Tensor) -> torch.Tensor:
    return _k4(b, _low_high(b[:, 16:144]))


def _q5_k(b: torch.Tensor) -> torch.Tensor:
    # sub-block j's fifth bits are bit j of the 32 qh bytes
    high = (b[:, None, 16:48] >> _BIT8.to(b.device)[:, None]) & 1
    return _k4(b, _low_high(b[:, 48:176]) | (high << 4))


def _q6_k(b: torch.Tensor) -> torch.Tensor:
    # per half of 128: ql's 64 bytes give inputs 0-63 (low nibbles) and 64-127 (high); qh's 32
    # bytes give bits 4-5 of inputs l, l + 32, l + 64, l + 96 from their bit pairs 0-1 .. 6-7
    ql = (b[:, :128].reshape(-1, 2, 1, 64) >> _shifts((0, 4), b)) & 15
    qh = (b[:, 128:192].reshape(-1, 2, 1, 32)
          >> _shifts((0, 2, 4, 6), b)) & 3
    q = (ql.reshape(-1, 16, 16) | (qh.reshape(-1, 16, 16) << 4)).float() - 32
    scales = b[:, 192:208].contiguous().view(torch.int8).float()
    return ((_f16(b, 208) * scales)[..., None] * q).flatten(1)


@dataclass(frozen=True)
class GGMLType:
    name: str
    id: int  # ggml's enum value, as gguf.GGMLQuantizationType numbers it
    block: int  # inputs per block
    block_bytes: int
    scale_offsets: tuple[int, ...]  # where each block's fp16 scales sit (d; dmin or m)
    _values: Callable[[torch.Tensor], torch.Tensor]  # (n, block_bytes) -> (n, block) float32
    # rows interleaved this many at a time (Q5_0x16), their blocks as filed by _as_filed
    group_rows: int = 1
    _as_filed: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def activation_block(self) -> int:
        """Inputs per int8 activation block: Q8_K's 256 for K-quants, Q8_0's 32 otherwise."""
        return 256 if self.block == 256 else 32

    def row_bytes(self, cols: int) -> int:
        if cols % self.block:
            raise ValueError(f"{self.name} rows hold whole blocks of {self.block} inputs; "
                             f"got {cols} inputs")
        return cols // self.block * self.block_bytes

    def cols(self, row_bytes: int) -> int:
        if row_bytes % self.block_bytes:
            raise ValueError(f"{self.name} rows hold whole blocks of {self.block_bytes} bytes; "
                             f"got rows of {row_bytes} bytes")
        return row_bytes // self.block_bytes * self.block


TYPES = {t.name: t for t in (
    GGMLType("Q4_0", 2, 32, 18, (0,), _q4_0),
    GGMLType("Q4_1", 3, 32, 20, (0, 2), _q4_1),
    GGMLType("Q5_0", 6, 32, 22, (0,), _q5_0),
    GGMLType("Q5_1", 7, 32, 24, (0, 2), _q5_1),
    GGMLType("Q8_0", 8, 32, 34, (0,), _q8_0),
    GGMLType("Q4_K", 12, 256, 144, (0, 2), _q4_k),
    GGMLType("Q5_K", 13, 256, 176, (0, 2), _q5_k),
    GGMLType("Q6_K", 14, 256, 210, (208,), _q6_k),
)}
# qwq's layouts of Q5_0 and Q8_0 (named for the four blocks a chunk holds), never a file's
LAYOUTS = {"Q5_0": GGMLType("Q5_0x4", 1006, 128, 88, (80, 82, 84, 86),
                            _as_filed("Q5_0", _q5_0)),
           "Q8_0": GGMLType("Q8_0x4", 1008, 128, 136, (128, 130, 132, 134),
                            _as_filed("Q8_0", _q8_0))}
# Q5_0 of whole groups of 16 rows: every row's blocks interleaved with its group's (a new
# tensor of the same size)
INTERLEAVED = {"Q5_0": GGMLType("Q5_0x16", 1016, 32, 22, (), _q5_0, 16, _deinterleave_q5_0)}
_LAYOUT_NAMES = {t.name for t in (*LAYOUTS.values(), *INTERLEAVED.values())}
TYPES.update({t.name: t for t in (*LAYOUTS.values(), *INTERLEAVED.values())})
_BY_ID = {t.id: t for t in TYPES.values()}


def ggml_type(t: GGMLType | str | int) -> GGMLType:
    """A type by itself, its name ("Q4_K") or its ggml id (12; gguf.GGMLQuantizationType too)."""
    if isinstance(t, GGMLType):
        return t
    found = TYPES.get(t) if isinstance(t, str) else _BY_ID.get(int(t))
    if found is None:
        name = getattr(t, "name", t)
        raise ValueError(f"GGML type {name} has no qwq kernel; supported: {', '.join(TYPES)}")
    return found


def _check_raw(raw: torch.Tensor, t: GGMLType) -> int:
    """raw's input count per row, after checking it is (rows, whole blocks) of bytes."""
    if raw.dtype != torch.uint8 or raw.dim() != 2:
        raise ValueError(f"{t.name} weights must be a 2-D uint8 tensor of block bytes, got "
                         f"{raw.dtype} {tuple(raw.shape)}")
    return t.cols(raw.shape[1])


def dequantize(raw: torch.Tensor, t: GGMLType | str | int) -> torch.Tensor:
    """(rows, row_bytes) block bytes -> (rows, cols) float32, as gguf and llama.cpp decode them."""
    t = ggml_type(t)
    cols = _check_raw(raw, t)
    if t._as_filed is not None:
        raw = t._as_filed(raw)
    blocks = raw.reshape(-1, t.block_bytes)
    return t._values(blocks).view(raw.shape[0], cols)


def rows(raw: torch.Tensor, t: GGMLType | str | int, ids: torch.Tensor,
         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The rows `ids` of a quantized table (an embedding), dequantized to dtype: ids.shape +
    (cols,). On CPU with the kernels one C++ call (ggml_rows.cpp: the same floats)."""
    t = ggml_type(t)
    cols = _check_raw(raw, t)
    if t.group_rows > 1:
        raise ValueError(f"{t.name} interleaves its rows: a table's rows are looked up as filed")
    if rows_kernel_takes(raw, t):
        return torch.ops.qwq.ggml_rows(raw.contiguous(), t.id, ids.long(), dtype)
    return dequantize(raw[ids.reshape(-1)], t).view(*ids.shape, cols).to(dtype)


def rows_kernel_takes(raw: torch.Tensor, t: GGMLType) -> bool:
    """Whether ggml_rows (ggml_rows.cpp) looks up this table's rows (contiguous, and the ids
    int64): a CPU table filed as ggml files it, with the kernels built."""
    return raw.device.type == "cpu" and t.name not in _LAYOUT_NAMES and kernels_available()


def computed(raw: torch.Tensor, t: GGMLType | str | int) -> tuple[torch.Tensor, GGMLType]:
    """A stored tensor in the layout the kernels compute it in, where they run: Q5_0 of whole
    groups of 16 rows becomes Q5_0x16, its rows interleaved; other Q5_0 and Q8_0 whose rows hold
    whole chunks of four blocks become Q5_0x4 and Q8_0x4, the same bytes rearranged (each a new
    tensor of the same size and the same values); every other type is `raw` itself."""
    t = ggml_type(t)
    grouped = INTERLEAVED.get(t.name)
    if grouped is not None and raw.shape[0] % grouped.group_rows == 0 and raw.shape[0] \
            and raw.device.type == "cpu" and kernels_available():
        _check_raw(raw, t)
        return torch.ops.qwq.ggml_interleave_q5_0(raw), grouped
    layout = LAYOUTS.get(t.name)
    if layout is None or _check_raw(raw, t) % layout.block or raw.device.type != "cpu" \
            or not kernels_available():
        return raw, t
    return torch.ops.qwq.ggml_shuffle_chunks(raw, _ORDERS[t.name].tolist()), layout


def _over(c: float, t: torch.Tensor) -> torch.Tensor:
    """c / t rounded once, as C's float division (torch's `c / t` is reciprocal(t) * c)."""
    return torch.full_like(t, c) / t


def quantize_activations(x: torch.Tensor, t: GGMLType | str | int
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """(m, k) activations -> (q, d): q (m, k) float32 holding the int8 values, d (m, k / block)
    the float32 scales, as llama.cpp rounds activations for weights of type t (see the module
    docstring). q * d per block is what the kernels multiply the weights by."""
    t = ggml_type(t)
    m, k = x.shape
    b = x.float().view(m, -1, t.activation_block)
    if t.activation_block == 32:
        amax = b.abs().amax(-1)
        d = (amax / 127).to(torch.float16).float()
        inv = torch.where(amax != 0, _over(127, amax), torch.zeros_like(amax))
        return (b * inv[..., None]).round_().view(m, k), d
    peak = b.gather(-1, b.abs().argmax(-1, keepdim=True)).squeeze(-1)  # first of largest |x|
    iscale = torch.where(peak != 0, _over(-127, peak), torch.zeros_like(peak))
    d = torch.where(peak != 0, _over(1, iscale), torch.zeros_like(peak))
    return (iscale[..., None] * b).round_().clamp_(max=127).view(m, k), d


def _check_linear(x: torch.Tensor, raw: torch.Tensor, t: GGMLType, out_features: int) -> None:
    cols = _check_raw(raw, t)
    if x.shape[-1] != cols:
        raise ValueError(f"{t.name} weights take {cols} inputs; x has {x.shape[-1]}")
    if raw.shape[0] != out_features:
        raise ValueError(f"{t.name} weights hold {raw.shape[0]} rows; out_features is "
                         f"{out_features}")


def linear_reference(x: torch.Tensor, raw: torch.Tensor, t: GGMLType | str | int,
                     bias: torch.Tensor | None, out_features: int) -> torch.Tensor:
    """x (m, k) times the dequantized rows of raw, on int8-rounded activations, in float32, then
    in x's dtype: the kernels' product in plain torch."""
    t = ggml_type(t)
    _check_linear(x, raw, t, out_features)
    y = _product_f32(x, raw, t)
    if bias is not None:
        y += bias.float()
    return y.to(x.dtype)


def _product_f32(x: torch.Tensor, raw: torch.Tensor, t: GGMLType) -> torch.Tensor:
    m, k = x.shape
    q, d = quantize_activations(x, t)
    xq = (q.view(m, -1, t.activation_block) * d[..., None]).view(m, k)
    slab = max(16, 2 ** 24 // k // 16 * 16)  # rows dequantized at a time: 64 MB of float32
    # (whole groups of Q5_0x16's interleaved rows)
    return torch.cat([xq @ dequantize(raw[r:r + slab], t).T
                      for r in range(0, raw.shape[0], slab)], 1)


def linear(x: torch.Tensor, raw: torch.Tensor, t: GGMLType | str | int,
           bias: torch.Tensor | None, out_features: int) -> torch.Tensor:
    """x (..., k) times raw's rows: torch.ops.qwq.ggml_linear where qwq's kernels are built (x86
    with AVX-512 VNNI), linear_reference elsewhere."""
    t = ggml_type(t)
    _check_linear(x.reshape(-1, x.shape[-1]), raw, t, out_features)
    return LinearParts([raw], [t], bias)(x)


class LinearParts:
    """x times the concatenated rows of several stored tensors, each in its own type (a fused
    q|k|v or gate|up), plus a bias: one kernel call writes every part's columns, rounding x
    once per type, with the checks done here, once, rather than on every call."""

    def __init__(self, raws: list[torch.Tensor], types: list[GGMLType | str | int],
                 bias: torch.Tensor | None = None):
        self.raws, self.types = list(raws), [ggml_type(t) for t in types]
        if not self.raws or len(self.raws) != len(self.types):
            raise ValueError("one GGML type per stored tensor, and at least one tensor")
        widths = {_check_raw(r, t) for r, t in zip(self.raws, self.types)}
        if len(widths) != 1:
            raise ValueError(f"parts of one linear take different input widths: {widths}")
        self.in_features = widths.pop()
        self.out_features = sum(r.shape[0] for r in self.raws)
        if bias is not None and bias.shape != (self.out_features,):
            raise ValueError(f"bias must be ({self.out_features},), got {tuple(bias.shape)}")
        self.bias = bias
        self.ids = [t.id for t in self.types]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        if x2.shape[1] != self.in_features:
            raise ValueError(f"these weights take {self.in_features} inputs; x has "
                             f"{x2.shape[1]}")
        if x.device.type == "cpu" and kernels_available():
            y = torch.ops.qwq.ggml_linear_parts(x2.contiguous(), self.raws, self.ids, self.bias,
                                                self.out_features)
        else:
            y = torch.cat([_product_f32(x2, r, t) for r, t in zip(self.raws, self.types)], -1)
            if self.bias is not None:
                y += self.bias.float()
            y = y.to(x.dtype)
        return y.view(*x.shape[:-1], self.out_features)


# The 4-bit types whose values are exactly tinygemm's int4 grid at groups of 32 inputs:
# Q4_0 d * (q - 8); Q4_1 d * q + m; Q4_K per sub-block of 32, d * sc * q - dmin * m.
INT4_EXACT = ("Q4_0", "Q4_1", "Q4_K")


def group_codes(raw: torch.Tensor, t: GGMLType | str | int):
    """(rows, row_bytes) Q4_0 / Q4_1 / Q4_K blocks -> their GroupCodes (qwq.stored) at
    groups of 32, w = (q - 8) * scale + zero, on raw's device, with no rounding: the codes are
    the file's nibbles, scale and zero float32 products of its fp16 and 6-bit fields
    (Q4_0: scale d, zero 0; Q4_1: scale d, zero m + 8d; Q4_K: scale d * sc_j, zero
    8 d sc_j - dmin m_j)."""
    t = ggml_type(t)
    if t.name not in INT4_EXACT:
        raise ValueError(f"{t.name} is not a 4-bit grid of groups of 32; exact int4 codes "
                         f"come from {', '.join(INT4_EXACT)}")
    rows, cols = raw.shape[0], _check_raw(raw, t)
    b = raw.reshape(-1, t.block_bytes)
    if t.name == "Q4_K":
        scales, mins = _scales_mins_k4(b[:, 4:16])
        q = _low_high(b[:, 16:144])  # (n, 8, 32)
        scale = _f16(b, 0) * scales.float()
        zero = 8 * scale - _f16(b, 2) * mins.float()
    else:
        q = _nibbles(b[:, 2:] if t.name == "Q4_0" else b[:, 4:])
        scale = _f16(b, 0)
        zero = torch.zeros_like(scale) if t.name == "Q4_0" else _f16(b, 2) + 8 * scale
    return GroupCodes(q.reshape(rows, cols), scale.reshape(rows, -1), zero.reshape(rows, -1), 32)


def random_blocks(t: GGMLType | str | int, rows: int, cols: int,
                  generator: torch.Generator | None = None, scale: float = 2 ** -10
                  ) -> torch.Tensor:
    """(rows, row_bytes) of valid random blocks: random quant bits and 6-bit scales, and fp16
    d/dmin uniform in [-scale, scale] (small and finite), for tests and benchmarks."""
    t = ggml_type(t)
    if t.group_rows > 1:  # the file type's random blocks, interleaved
        return _interleave_q5_0(random_blocks("Q5_0", rows, cols, generator, scale))
    n = rows * (t.row_bytes(cols) // t.block_bytes)
    b = torch.randint(0, 256, (n, t.block_bytes), dtype=torch.uint8, generator=generator)
    for at in t.scale_offsets:
        s = (torch.rand(n, generator=generator) * 2 - 1) * scale
        b[:, at:at + 2] = s.to(torch.float16).view(torch.uint8).view(n, 2)
    return b.view(rows, -1)
