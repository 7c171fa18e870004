"""AWQ checkpoints (AutoAWQ's GEMM layout, as Qwen publishes QwQ-32B-Preview-AWQ).

config.json's quantization_config says {"quant_method": "awq", "bits": 4, "group_size": G,
"zero_point": true, "version": "gemm"}. Each quantized linear stores, instead of `weight`:

- qweight: int32 (in, out / 8), eight 4-bit values along the output dimension per word;
- qzeros: int32 (in / G, out / 8), the groups' zero points, packed the same way;
- scales: float16 (in / G, out).

Within a word, the nibble at bits 4p..4p+3 holds output column AWQ_ORDER[p] of its eight, so
column k sits at nibble UNPACK[k]. The weight is (q - zero) * scale, groups running along the
input dimension; qwq yields it under the linear's `weight` name and shape (out, in), one tensor
at a time, and --quantize packs it like any other weight (`auto` on CPU: as a 4-6 bit GGUF).
As int4 (`auto` on GPUs) the codes themselves are taken (group_codes): (q - z) * s is
tinygemm's (q - 8) * s + (8 - z) * s, at AWQ's own group size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from qwq.errors import CheckpointError
from qwq.kernels.blocks import BlockScales
from qwq.stored import GroupCodes

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble p holds column AWQ_ORDER[p]
UNPACK = tuple(AWQ_ORDER.index(k) for k in range(8))  # column k sits at nibble UNPACK[k]
PARTS = ("qweight", "qzeros", "scales")


@dataclass(frozen=True)
class AWQConfig:
    bits: int
    group_size: int

    @staticmethod
    def from_hf(config: dict[str, Any], source: str) -> AWQConfig | None:
        """The AWQ settings of a config.json, None without a quantization_config; an error
        naming the field for any quantization qwq cannot read."""
        q = config.get("quantization_config")
        if q is None:
            return None
        if not isinstance(q, dict):
            raise CheckpointError(f"{source}: quantization_config is not a JSON object")
        method = str(q.get("quant_method", "")).lower()
        if method != "awq":
            raise CheckpointError(
                f"{source}: quantization_config.quant_method={q.get('quant_method')!r} is not "
                "supported; qwq reads AWQ (4-bit, GEMM layout) and float checkpoints, and "
                "quantizes itself with --quantize")
        bits, group = q.get("bits", q.get("w_bit")), q.get("group_size", q.get("q_group_size"))
        version = str(q.get("version", "gemm")).lower()
        if bits != 4:
            raise CheckpointError(f"{source}: AWQ bits={bits!r}; qwq reads 4-bit AWQ")
        if version != "gemm":
            raise CheckpointError(f"{source}: AWQ version={version!r}; qwq reads the GEMM "
                                  "layout (AutoAWQ's default, and Qwen's)")
        if q.get("zero_point", True) is not True:
            raise CheckpointError(f"{source}: AWQ without zero points is not supported")
        if type(group) is not int or group <= 0 or group % 8:
            raise CheckpointError(f"{source}: AWQ group_size={group!r} is not a positive "
                                  "multiple of 8")
        return AWQConfig(bits, group)

    def weight_shapes(self, shapes: dict[str, tuple[tuple[int, ...], str]], source: str
                      ) -> dict[str, tuple[int, int]]:
        """prefix.weight -> (out, in) for each complete, consistent qweight/qzeros/scales
        triple in `shapes` (name -> (shape, dtype)); an error naming the first bad one."""
        out: dict[str, tuple[int, int]] = {}
        for name, (shape, dtype) in shapes.items():
            if not name.endswith(".qweight"):
                continue
            prefix = name[: -len(".qweight")]
            missing = [p for p in PARTS if f"{prefix}.{p}" not in shapes]
            if missing:
                raise CheckpointError(f"{source}: {prefix} has qweight but no "
                                      f"{', '.join(missing)}")
            if len(shape) != 2:
                raise CheckpointError(f"{source}: {name} has shape {shape}; want (in, out/8)")
            k, n = shape[0], shape[1] * 8
            if prefix + ".weight" in shapes:
                raise CheckpointError(f"{source}: {prefix} has both a float weight and AWQ "
                                      "qweight")
            want = {"qweight": ((k, n // 8), ("I32",)),
                    "qzeros": ((k // self.group_size, n // 8), ("I32",)),
                    "scales": ((k // self.group_size, n), ("F16", "BF16", "F32"))}
            if k % self.group_size:
                raise CheckpointError(f"{source}: {name}: {k} inputs are not a multiple of "
                                      f"group_size {self.group_size}")
            for part, (want_shape, dtypes) in want.items():
                got_shape, got_dtype = shapes[f"{prefix}.{part}"]
                if tuple(got_shape) != want_shape or got_dtype not in dtypes:
                    raise CheckpointError(
                        f"{source}: {prefix}.{part} is {got_dtype} {tuple(got_shape)}; an AWQ "
                        f"linear of {k} inputs and {n} outputs needs {'/'.join(dtypes)} "
                        f"{want_shape}")
            out[prefix + ".weight"] = (n, k)
        stray = sorted(n for n in shapes if n.endswith((".qzeros", ".scales"))
                       and n.rpartition(".")[0] + ".weight" not in out)
        if stray:
            raise CheckpointError(f"{source}: {stray[0]} belongs to no qweight")
        return out


def packed_names(weights) -> set[str]:
    """The qweight/qzeros/scales tensors behind these linears' weight names."""
    return {f"{w[: -len('.weight')]}.{part}" for w in weights for part in PARTS}


def unpack(packed: torch.Tensor) -> torch.Tensor:
    """int32 (rows, cols / 8) -> int (rows, cols) of 0..15, in column order."""
    shifts = torch.tensor([4 * p for p in UNPACK], dtype=torch.int32)
    return ((packed.unsqueeze(-1) >> shifts) & 0xF).flatten(-2)


def pack(values: torch.Tensor) -> torch.Tensor:
    """The inverse of unpack: int (rows, cols) of 0..15 -> int32 (rows, cols / 8)."""
    v = values.to(torch.int64).view(values.shape[0], -1, 8)
    word = torch.zeros(v.shape[:2], dtype=torch.int64)
    for p, k in enumerate(AWQ_ORDER):
        word |= v[..., k] << (4 * p)
    return torch.where(word >= 1 << 31, word - (1 << 32), word).to(torch.int32)


def dequantize(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
               group_size: int, dtype: torch.dtype) -> torch.Tensor:
    """The linear's weight, (out, in), in `dtype` (computed in float32, rounded once)."""
    k, n = qweight.shape[0], qweight.shape[1] * 8
    w = unpack(qweight).float().view(k // group_size, group_size, n)  # groups along inputs
    w -= unpack(qzeros).float()[:, None]
    w *= scales.float()[:, None]
    return w.view(k, n).t().to(dtype).contiguous()


def block_scales(scales: torch.Tensor, group_size: int):
    """The group scales as the block packer takes them (qwq.kernels.blocks.BlockScales),
    (out, in / G) float16; None unless 32 divides G."""
    if group_size % 32:
        return None
    return BlockScales(scales.t().to(torch.float16).contiguous(), group_size)


def group_codes(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
                group_size: int):
    """The linear as GroupCodes (qwq.stored), (out, in), with no rounding: AWQ's
    (q - z) * s is tinygemm's (q - 8) * scale + zero with scale = s and zero = (8 - z) * s
    (exact in float32: s is 16-bit, z an integer below 16), at AWQ's own group size."""
    q = unpack(qweight).t().to(torch.uint8).contiguous()
    s = scales.float().t().contiguous()
    zero = (8 - unpack(qzeros).t().float()) * s
    return GroupCodes(q, s, zero, group_size)
